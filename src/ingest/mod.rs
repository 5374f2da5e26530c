//! Reading interaction logs into a `Dataset`: MovieLens-100K directories,
//! CSV/TSV and Parquet files (plus optional item/user attribute files), and
//! funnel's own event log.
//!
//! Owns: input formats, column mapping, malformed-row policy
//! (`--max-bad-rows`), and the input fingerprint. Must not touch: training,
//! evaluation, or the event log's on-disk format (that is `eventlog`).
//!
//! Rules worth knowing:
//! - Ids are strings everywhere (integers in Parquet become their decimal
//!   text) and must pass `ids::validate_id`; cells are trimmed.
//! - A row with a rating is a `rate` event valued at the rating; other rows
//!   take their kind from `--kind-col` (default view) and their value from
//!   `--weight-col` (default: the kind's default weight).
//! - Items and users named only in attribute files are still added (a
//!   catalog item nobody has touched yet can be recommended by content).
//!   Attribute files override what MovieLens metadata said; an id twice in
//!   one attribute file is a bad row.
//! - Delimited files use `--delimiter` when given, else `\t` for .tsv/.tab,
//!   `,` for .csv, and otherwise the interactions' delimiter.
//! - One `--max-bad-rows` budget covers all input files. With 0, the first
//!   malformed row is the error; otherwise bad rows are counted to the end of
//!   the file and more than N is the error.
//! - The fingerprint is blake3 over (role, blake3 of the file's bytes) for
//!   every input file in a fixed order: the same bytes give the same
//!   fingerprint wherever the files live.

mod args;
mod builder;
mod delimited;
mod error;
mod log_input;
mod movielens;
mod parquet;
mod table;
mod time;

pub use args::{DataArgs, DataFormat, TimeUnit};
pub use error::{IngestError, RowFault};
pub use movielens::STANDARD_GENRES;

use crate::dataset::Dataset;
use builder::Builder;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use table::{InteractionColumns, ItemAttrColumns, Table, UserAttrColumns};

/// Reads the input described by `args` into a canonical dataset (see
/// `Dataset::canonicalize`), with one metadata record per user and item,
/// the input fingerprint, a name, and any tolerated bad rows.
pub fn load(args: &DataArgs) -> Result<Dataset, IngestError> {
    let expanded = expand_generated_dir(args);
    let args = expanded.as_ref().unwrap_or(args);
    check_args(args)?;
    let input = resolve_input(args)?;
    if !matches!(input.format, Resolved::Table(_)) {
        refuse_column_flags(args, &input)?;
    }
    let mut b = Builder::new(args.max_bad_rows);
    let mut fp = Fingerprint::new();
    let interactions_file = match input.format {
        Resolved::Movielens => {
            movielens::load(&input.path, &mut b, &mut fp)?;
            input.path.join("u.data")
        }
        Resolved::Eventlog => {
            log_input::load(&input.path, &mut b, &mut fp)?;
            input.path.clone()
        }
        Resolved::Table(delimiter) => {
            let table = Table::open(&input.path, delimiter.map(|d| d as u8))?;
            load_interactions(table, args, &mut b, &mut fp)?;
            input.path.clone()
        }
    };
    if b.ds.interactions.is_empty() {
        return Err(IngestError::Empty {
            file: interactions_file,
        });
    }
    let fallback_delimiter = match input.format {
        Resolved::Table(d) => d,
        _ => None,
    };
    if let Some(path) = &args.item_attrs {
        let table = Table::open(path, attr_delimiter(path, args, fallback_delimiter))?;
        load_item_attrs(table, args, &mut b, &mut fp)?;
    }
    if let Some(path) = &args.user_attrs {
        let table = Table::open(path, attr_delimiter(path, args, fallback_delimiter))?;
        load_user_attrs(table, args, &mut b, &mut fp)?;
    }
    let mut ds = b.ds;
    ds.name = input.name;
    ds.fingerprint = fp.finish();
    ds.fill_meta();
    Ok(ds.canonicalize())
}

/// Combines per-file digests into the dataset fingerprint.
pub(crate) struct Fingerprint(blake3::Hasher);

impl Fingerprint {
    fn new() -> Self {
        let mut h = blake3::Hasher::new();
        h.update(b"funnel.ingest.v1\0");
        Fingerprint(h)
    }

    /// Adds one input file under a role name that does not depend on where
    /// the file lives.
    pub(crate) fn add(&mut self, role: &str, digest: blake3::Hash) {
        self.0.update(&(role.len() as u64).to_le_bytes());
        self.0.update(role.as_bytes());
        self.0.update(digest.as_bytes());
    }

    fn finish(self) -> String {
        self.0.finalize().to_hex().to_string()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Resolved {
    Movielens,
    Eventlog,
    /// A table file: `Some(delimiter)` for text, `None` for Parquet.
    Table(Option<char>),
}

struct Input {
    path: PathBuf,
    format: Resolved,
    name: String,
}

fn invalid(flag: &'static str, reason: String) -> IngestError {
    IngestError::InvalidArgument { flag, reason }
}

/// Refuses flag combinations that would otherwise be silently ignored.
fn check_args(a: &DataArgs) -> Result<(), IngestError> {
    if let Some(c) = a.delimiter {
        if !c.is_ascii() || c == '"' || c == '\n' || c == '\r' {
            return Err(invalid(
                "--delimiter",
                format!("{c:?} cannot separate fields; pass one ASCII character such as ';'"),
            ));
        }
    }
    if a.category_sep.as_deref() == Some("") {
        return Err(invalid(
            "--category-sep",
            "the separator is empty; pass e.g. --category-sep '|'".into(),
        ));
    }
    let needs = |file: &Option<PathBuf>, file_flag: &'static str, cols: &[(&'static str, bool)]| {
        if file.is_some() {
            return Ok(());
        }
        match cols.iter().find(|(_, given)| *given) {
            Some((flag, _)) => Err(invalid(
                flag,
                format!("it names a column of {file_flag}, which is not given; pass {file_flag} FILE or drop {flag}"),
            )),
            None => Ok(()),
        }
    };
    needs(
        &a.item_attrs,
        "--item-attrs",
        &[
            ("--item-attr-id-col", a.item_attr_id_col.is_some()),
            ("--category-col", a.category_col.is_some()),
            ("--category-sep", a.category_sep.is_some()),
            ("--title-col", a.title_col.is_some()),
            ("--created-col", a.created_col.is_some()),
        ],
    )?;
    needs(
        &a.user_attrs,
        "--user-attrs",
        &[
            ("--user-attr-id-col", a.user_attr_id_col.is_some()),
            ("--age-col", a.age_col.is_some()),
            ("--gender-col", a.gender_col.is_some()),
            ("--occupation-col", a.occupation_col.is_some()),
        ],
    )
}

/// A directory written by `funnel gen` (interactions.csv beside items.csv
/// and users.csv) reads as those three CSV files with the generator's
/// column names, so `--data DIR` is all it takes.
fn expand_generated_dir(a: &DataArgs) -> Option<DataArgs> {
    let dir = a.data.as_ref()?;
    let file = dir.join(GENERATED_INTERACTIONS);
    if a.interactions.is_some() || !file.is_file() || a.format != DataFormat::Auto {
        return None;
    }
    let mut e = a.clone();
    e.data = Some(file);
    e.kind_col = e.kind_col.or(Some("kind".into()));
    e.weight_col = e.weight_col.or(Some("weight".into()));
    for (slot, name) in [(&mut e.item_attrs, "items.csv"), (&mut e.user_attrs, "users.csv")] {
        if slot.is_none() && dir.join(name).is_file() {
            *slot = Some(dir.join(name));
        }
    }
    Some(e)
}

/// The interactions file in a `funnel gen` output directory.
pub const GENERATED_INTERACTIONS: &str = "interactions.csv";

/// MovieLens and event logs have fixed fields; a column flag given for them
/// would be silently ignored, which hides a mistake.
fn refuse_column_flags(a: &DataArgs, input: &Input) -> Result<(), IngestError> {
    let given = [
        ("--user-col", a.user_col.is_some()),
        ("--item-col", a.item_col.is_some()),
        ("--time-col", a.time_col.is_some()),
        ("--rating-col", a.rating_col.is_some()),
        ("--weight-col", a.weight_col.is_some()),
        ("--kind-col", a.kind_col.is_some()),
    ];
    match given.into_iter().find(|(_, g)| *g) {
        Some((flag, _)) => Err(invalid(
            flag,
            format!(
                "it names a column of a csv/tsv/parquet file, but {} is read as {}, whose \
                 fields are fixed; drop {flag}",
                input.path.display(),
                match input.format {
                    Resolved::Movielens => "MovieLens",
                    _ => "an event log",
                }
            ),
        )),
        None => Ok(()),
    }
}

fn resolve_input(a: &DataArgs) -> Result<Input, IngestError> {
    let path = match (&a.data, &a.interactions) {
        (Some(d), Some(i)) if d != i => {
            return Err(invalid(
                "--interactions",
                format!(
                    "both --data {} and --interactions {} name the input; pass only one",
                    d.display(),
                    i.display()
                ),
            ))
        }
        (Some(p), _) | (None, Some(p)) => p.clone(),
        (None, None) => return Err(IngestError::NoInput),
    };
    let is_dir = std::fs::metadata(&path)
        .map_err(|e| IngestError::io(&path, e))?
        .is_dir();
    let format = match a.format {
        DataFormat::Auto => detect(&path, is_dir)?,
        f => f,
    };
    let wants_dir = matches!(format, DataFormat::Movielens | DataFormat::Eventlog);
    if wants_dir != is_dir {
        let reason = if wants_dir {
            format!(
                "--format {} reads a directory, but {} is a file; pass the directory with --data",
                format.as_str(),
                path.display()
            )
        } else {
            format!(
                "--format {} reads a file, but {} is a directory; pass the file with \
                 --interactions FILE",
                format.as_str(),
                path.display()
            )
        };
        return Err(invalid("--format", reason));
    }
    let resolved = match format {
        DataFormat::Movielens => Resolved::Movielens,
        DataFormat::Eventlog => Resolved::Eventlog,
        DataFormat::Csv => Resolved::Table(Some(a.delimiter.unwrap_or(','))),
        DataFormat::Tsv => Resolved::Table(Some(a.delimiter.unwrap_or('\t'))),
        DataFormat::Parquet => Resolved::Table(None),
        DataFormat::Auto => unreachable!("detect never answers auto"),
    };
    Ok(Input {
        name: dataset_name(&path, is_dir),
        path,
        format: resolved,
    })
}

fn extension(path: &Path) -> String {
    path.extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default()
}

fn detect(path: &Path, is_dir: bool) -> Result<DataFormat, IngestError> {
    if is_dir {
        if movielens::is_movielens_dir(path) {
            return Ok(DataFormat::Movielens);
        }
        if log_input::is_eventlog_dir(path) {
            return Ok(DataFormat::Eventlog);
        }
        return Err(IngestError::UnknownFormat {
            path: path.to_path_buf(),
            reason: "the directory holds neither u.data (MovieLens) nor events-*.log segments \
                     (event log); for a csv/tsv/parquet file pass the file itself with \
                     --interactions FILE"
                .into(),
        });
    }
    match extension(path).as_str() {
        "csv" => Ok(DataFormat::Csv),
        "tsv" | "tab" => Ok(DataFormat::Tsv),
        "parquet" | "pq" => Ok(DataFormat::Parquet),
        other => Err(IngestError::UnknownFormat {
            path: path.to_path_buf(),
            reason: format!("the extension {other:?} is not .csv, .tsv or .parquet"),
        }),
    }
}

/// The last component for a directory ("ml-100k"), else the path as given.
fn dataset_name(path: &Path, is_dir: bool) -> String {
    if is_dir {
        let absolute = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
        if let Some(name) = absolute.file_name() {
            return name.to_string_lossy().into_owned();
        }
    }
    path.display().to_string()
}

/// `None` for Parquet, else the delimiter byte; see the module doc.
fn attr_delimiter(path: &Path, a: &DataArgs, fallback: Option<char>) -> Option<u8> {
    let by_extension = match extension(path).as_str() {
        "parquet" | "pq" => return None,
        "tsv" | "tab" => Some('\t'),
        "csv" => Some(','),
        _ => None,
    };
    let d = a.delimiter.or(by_extension).or(fallback).unwrap_or(',');
    Some(d as u8)
}

fn load_interactions(
    table: Table,
    args: &DataArgs,
    b: &mut Builder,
    fp: &mut Fingerprint,
) -> Result<(), IngestError> {
    let cols = InteractionColumns::resolve(&table, args)?;
    let file = table.path().to_path_buf();
    let digest = table.for_each_row(&cols.needed(), &mut |line, row| match row.and_then(|r| {
        let p = cols.parse(r)?;
        b.add_interaction(&p.user, &p.item, p.ts, p.kind, p.value);
        Ok(())
    }) {
        Ok(()) => Ok(()),
        Err(fault) => b.reject(&file, line, fault),
    })?;
    b.end_of_file()?;
    fp.add("interactions", digest);
    Ok(())
}

fn load_item_attrs(
    table: Table,
    args: &DataArgs,
    b: &mut Builder,
    fp: &mut Fingerprint,
) -> Result<(), IngestError> {
    let cols = ItemAttrColumns::resolve(&table, args)?;
    let file = table.path().to_path_buf();
    let mut seen = HashSet::new();
    let digest = table.for_each_row(&cols.needed(), &mut |line, row| {
        let applied = row.and_then(|r| {
            let p = cols.parse(r)?;
            let categories = match &p.categories {
                Some(names) => Some(b.categories(names)?),
                None => None,
            };
            let (index, meta) = b.item_meta(&p.id);
            if !seen.insert(index) {
                return Err(RowFault::Other(format!(
                    "item id {:?} appears more than once in this file",
                    p.id
                )));
            }
            if let Some(t) = p.title {
                meta.title = Some(t.into_owned());
            }
            if let Some(c) = categories {
                meta.categories = c;
            }
            if p.created_at.is_some() {
                meta.created_at = p.created_at;
            }
            Ok(())
        });
        match applied {
            Ok(()) => Ok(()),
            Err(fault) => b.reject(&file, line, fault),
        }
    })?;
    b.end_of_file()?;
    fp.add("item-attrs", digest);
    Ok(())
}

fn load_user_attrs(
    table: Table,
    args: &DataArgs,
    b: &mut Builder,
    fp: &mut Fingerprint,
) -> Result<(), IngestError> {
    let cols = UserAttrColumns::resolve(&table, args)?;
    let file = table.path().to_path_buf();
    let mut seen = HashSet::new();
    let digest = table.for_each_row(&cols.needed(), &mut |line, row| {
        let applied = row.and_then(|r| {
            let p = cols.parse(r)?;
            let occupation = match &p.occupation {
                Some(o) => Some(b.occupation(o)?),
                None => None,
            };
            let (index, meta) = b.user_meta(&p.id);
            if !seen.insert(index) {
                return Err(RowFault::Other(format!(
                    "user id {:?} appears more than once in this file",
                    p.id
                )));
            }
            if p.age.is_some() {
                meta.age = p.age;
            }
            if p.gender.is_some() {
                meta.gender = p.gender;
            }
            if occupation.is_some() {
                meta.occupation = occupation;
            }
            Ok(())
        });
        match applied {
            Ok(()) => Ok(()),
            Err(fault) => b.reject(&file, line, fault),
        }
    })?;
    b.end_of_file()?;
    fp.add("user-attrs", digest);
    Ok(())
}

#[cfg(test)]
mod tests;
