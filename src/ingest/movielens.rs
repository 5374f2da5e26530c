//! The MovieLens-100K directory layout: `u.data` (ratings, required),
//! `u.item`, `u.genre`, `u.user`, `u.occupation` (optional). The metadata
//! files are Latin-1 and are decoded byte by byte, so they never fail on
//! encoding; `u.data` is plain ASCII numbers and must be UTF-8.
//!
//! Ids are kept as the strings in the files; nothing assumes they are dense.

use super::builder::Builder;
use super::error::{IngestError, RowFault};
use super::table::{cell_f32, cell_id, cell_time, parse_age, Cell};
use super::time::parse_movielens_date;
use super::{Fingerprint, TimeUnit};
use crate::dataset::{EventKind, Gender};
use std::collections::HashSet;
use std::fs;
use std::io;
use std::path::Path;

/// Genre names of MovieLens-100K in flag order, for directories without
/// `u.genre`.
pub const STANDARD_GENRES: [&str; 19] = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children's",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
];

/// Fields of a `u.item` row before the genre flags.
const ITEM_FIXED_FIELDS: usize = 5;

/// Whether `dir` looks like a MovieLens-100K directory.
pub(crate) fn is_movielens_dir(dir: &Path) -> bool {
    dir.join("u.data").is_file()
}

/// Reads the directory into `b`, adding each file to `fp` in a fixed order.
pub(crate) fn load(dir: &Path, b: &mut Builder, fp: &mut Fingerprint) -> Result<(), IngestError> {
    load_ratings(&dir.join("u.data"), b, fp)?;
    let genre_path = dir.join("u.genre");
    let genres = match read_optional(&genre_path, "u.genre", fp)? {
        Some(bytes) => load_genres(&genre_path, &bytes, b)?,
        None => STANDARD_GENRES.iter().map(|s| s.to_string()).collect(),
    };
    let category_of_genre = b
        .category_indices(&genres)
        .map_err(|fault| IngestError::from_fault(genre_path.clone(), 0, fault))?;
    let item_path = dir.join("u.item");
    if let Some(bytes) = read_optional(&item_path, "u.item", fp)? {
        load_items(&item_path, &bytes, &genres, &category_of_genre, b)?;
    }
    let occupation_path = dir.join("u.occupation");
    if let Some(bytes) = read_optional(&occupation_path, "u.occupation", fp)? {
        // Seeds the vocabulary so occupation indices follow the file.
        for (line, raw) in numbered_lines(&bytes) {
            let name = latin1(raw);
            let name = name.trim();
            if !name.is_empty() {
                b.occupation(name).map_err(|fault| {
                    IngestError::from_fault(occupation_path.clone(), line, fault)
                })?;
            }
        }
    }
    let user_path = dir.join("u.user");
    if let Some(bytes) = read_optional(&user_path, "u.user", fp)? {
        load_users(&user_path, &bytes, b)?;
    }
    Ok(())
}

fn read_optional(
    path: &Path,
    role: &str,
    fp: &mut Fingerprint,
) -> Result<Option<Vec<u8>>, IngestError> {
    match fs::read(path) {
        Ok(bytes) => {
            fp.add(role, blake3::hash(&bytes));
            Ok(Some(bytes))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(IngestError::io(path, e)),
    }
}

/// Lines with 1-based numbers, without `\r\n` / `\n`.
fn numbered_lines(bytes: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    bytes.split(|&c| c == b'\n').enumerate().map(|(i, l)| {
        let l = l.strip_suffix(b"\r").unwrap_or(l);
        (i as u64 + 1, l)
    })
}

fn is_blank(line: &[u8]) -> bool {
    line.iter().all(|c| c.is_ascii_whitespace())
}

/// Latin-1 maps each byte to the code point of the same value.
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&c| char::from(c)).collect()
}

fn load_ratings(path: &Path, b: &mut Builder, fp: &mut Fingerprint) -> Result<(), IngestError> {
    let bytes = fs::read(path).map_err(|e| IngestError::io(path, e))?;
    fp.add("u.data", blake3::hash(&bytes));
    for (line, raw) in numbered_lines(&bytes) {
        if is_blank(raw) {
            continue;
        }
        let text = std::str::from_utf8(raw).map_err(|_| IngestError::NotUtf8 {
            file: path.to_path_buf(),
            line,
        })?;
        match parse_rating(text) {
            Ok((user, item, rating, ts)) => {
                b.add_interaction(user, item, ts, EventKind::Rate, rating);
            }
            Err(fault) => b.reject(path, line, fault)?,
        }
    }
    b.end_of_file()
}

/// `user \t item \t rating \t unix-seconds`.
fn parse_rating(text: &str) -> Result<(&str, &str, f32, i64), RowFault> {
    let fields: Vec<&str> = text.split('\t').collect();
    let [user, item, rating, ts] = fields[..] else {
        return Err(RowFault::FieldCount {
            expected: 4,
            found: fields.len(),
        });
    };
    let (user, item) = (user.trim(), item.trim());
    cell_id(Cell::Text(user), "user id")?;
    cell_id(Cell::Text(item), "item id")?;
    let rating = cell_f32(Cell::Text(rating), "rating")?.ok_or(RowFault::Missing {
        column: "rating".into(),
    })?;
    let ts =
        cell_time(Cell::Text(ts), "timestamp", TimeUnit::Seconds)?.ok_or(RowFault::Missing {
            column: "timestamp".into(),
        })?;
    Ok((user, item, rating, ts))
}

/// `name|index` lines; indices must run 0, 1, 2, ... in some order.
fn load_genres(path: &Path, bytes: &[u8], b: &mut Builder) -> Result<Vec<String>, IngestError> {
    let mut by_index: Vec<(usize, String, u64)> = Vec::new();
    for (line, raw) in numbered_lines(bytes) {
        if is_blank(raw) {
            continue;
        }
        let text = latin1(raw);
        let Some((name, index)) = text.rsplit_once('|') else {
            let fault = RowFault::FieldCount {
                expected: 2,
                found: 1,
            };
            b.reject(path, line, fault)?;
            continue;
        };
        match index.trim().parse::<usize>() {
            Ok(i) => by_index.push((i, name.trim().to_string(), line)),
            Err(_) => {
                let fault = RowFault::BadNumber {
                    column: "genre index".into(),
                    value: index.to_string(),
                };
                b.reject(path, line, fault)?;
            }
        }
    }
    b.end_of_file()?;
    by_index.sort_by_key(|(i, _, _)| *i);
    let mut genres = Vec::with_capacity(by_index.len());
    for (position, (index, name, line)) in by_index.into_iter().enumerate() {
        if index != position {
            // Genre flags are positional, so a gap would shift every flag
            // after it onto the wrong genre: not something to skip.
            return Err(IngestError::BadRow {
                file: path.to_path_buf(),
                line,
                fault: RowFault::Other(format!(
                    "genre index {index} where {position} was expected; indices must run \
                     0, 1, 2, ... without gaps or repeats"
                )),
            });
        }
        genres.push(name);
    }
    Ok(genres)
}

/// `id|title|release date|video release date|url|flag*genres`.
fn load_items(
    path: &Path,
    bytes: &[u8],
    genres: &[String],
    category_of_genre: &[u16],
    b: &mut Builder,
) -> Result<(), IngestError> {
    let expected = ITEM_FIXED_FIELDS + genres.len();
    let mut seen = HashSet::new();
    for (line, raw) in numbered_lines(bytes) {
        if is_blank(raw) {
            continue;
        }
        let text = latin1(raw);
        let fields: Vec<&str> = text.split('|').collect();
        match parse_item(&fields, expected, genres, category_of_genre) {
            Ok(item) => {
                if !seen.insert(item.id.to_string()) {
                    let fault = RowFault::Other(format!(
                        "movie id {:?} appears more than once in this file",
                        item.id
                    ));
                    b.reject(path, line, fault)?;
                    continue;
                }
                let (_, meta) = b.item_meta(item.id);
                meta.title = item.title.map(str::to_string);
                meta.created_at = item.created_at;
                meta.categories = item.categories;
            }
            Err(fault) => b.reject(path, line, fault)?,
        }
    }
    b.end_of_file()
}

struct ParsedItem<'a> {
    id: &'a str,
    title: Option<&'a str>,
    created_at: Option<i64>,
    categories: Vec<u16>,
}

fn parse_item<'a>(
    fields: &[&'a str],
    expected: usize,
    genres: &[String],
    category_of_genre: &[u16],
) -> Result<ParsedItem<'a>, RowFault> {
    if fields.len() != expected {
        return Err(RowFault::FieldCount {
            expected,
            found: fields.len(),
        });
    }
    let id = fields[0].trim();
    cell_id(Cell::Text(id), "movie id")?;
    let title = Some(fields[1].trim()).filter(|t| !t.is_empty());
    let date = fields[2].trim();
    let created_at = if date.is_empty() {
        None
    } else {
        let parsed = parse_movielens_date(date).ok_or_else(|| RowFault::BadTimestamp {
            column: "release date".into(),
            value: date.to_string(),
        })?;
        Some(parsed)
    };
    let mut categories = Vec::new();
    for (g, flag) in fields[ITEM_FIXED_FIELDS..].iter().enumerate() {
        match flag.trim() {
            "1" => categories.push(category_of_genre[g]),
            "0" => {}
            other => {
                return Err(RowFault::BadNumber {
                    column: format!("genre flag {}", genres[g]),
                    value: other.to_string(),
                })
            }
        }
    }
    categories.sort_unstable();
    categories.dedup();
    Ok(ParsedItem {
        id,
        title,
        created_at,
        categories,
    })
}

/// `id|age|gender|occupation|zip`.
fn load_users(path: &Path, bytes: &[u8], b: &mut Builder) -> Result<(), IngestError> {
    let mut seen = HashSet::new();
    for (line, raw) in numbered_lines(bytes) {
        if is_blank(raw) {
            continue;
        }
        let text = latin1(raw);
        let fields: Vec<&str> = text.split('|').collect();
        let user = match parse_user(&fields) {
            Ok(user) => user,
            Err(fault) => {
                b.reject(path, line, fault)?;
                continue;
            }
        };
        if !seen.insert(user.id.to_string()) {
            let fault = RowFault::Other(format!(
                "user id {:?} appears more than once in this file",
                user.id
            ));
            b.reject(path, line, fault)?;
            continue;
        }
        let occupation = match user.occupation.map(|o| b.occupation(o)).transpose() {
            Ok(o) => o,
            Err(fault) => {
                b.reject(path, line, fault)?;
                continue;
            }
        };
        let (_, meta) = b.user_meta(user.id);
        meta.age = user.age;
        meta.gender = user.gender;
        meta.occupation = occupation;
    }
    b.end_of_file()
}

struct ParsedUser<'a> {
    id: &'a str,
    age: Option<u16>,
    gender: Option<Gender>,
    occupation: Option<&'a str>,
}

fn parse_user<'a>(fields: &[&'a str]) -> Result<ParsedUser<'a>, RowFault> {
    let [id, age, gender, occupation, _zip] = fields[..] else {
        return Err(RowFault::FieldCount {
            expected: 5,
            found: fields.len(),
        });
    };
    let id = id.trim();
    cell_id(Cell::Text(id), "user id")?;
    Ok(ParsedUser {
        id,
        age: parse_age(Cell::Text(age), "age")?,
        gender: Gender::parse(gender),
        occupation: Some(occupation.trim()).filter(|o| !o.is_empty()),
    })
}
