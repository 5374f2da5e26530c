//! Streaming CSV output of the generator: `interactions.csv`, `items.csv`,
//! `users.csv` with header rows, in a directory.
//!
//! Owns: the file layout and the streaming pipeline. Must not touch: the
//! model (`model::World` draws every row; this file only formats them).
//!
//! Memory stays bounded at any size: users are processed in batches (rayon
//! over blocks of users, each block formatted into one byte buffer), and a
//! writer thread drains at most two batches behind. Files are written under
//! temporary names and renamed only when all three are complete, so a
//! directory never holds a half-written data set under the final names.
//!
//! Row order: `interactions.csv` is ordered by user, then time (not
//! globally by time; `ingest` canonicalizes on load). `items.csv` and
//! `users.csv` are in id order.

use super::model::{SeenSet, World};
use super::names::{self, push_id};
use super::{gender_name, GenError, GenParams, GenSummary};
use indicatif::ProgressBar;
use rayon::prelude::*;
use std::fs::{self, File};
use std::io::{self, BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

pub const INTERACTIONS_FILE: &str = "interactions.csv";
pub const ITEMS_FILE: &str = "items.csv";
pub const USERS_FILE: &str = "users.csv";

/// A block (one rayon task, one buffer) ends after this many users or
/// budgeted events, whichever comes first; only a single user with more
/// events makes a bigger block.
const USERS_PER_BLOCK: u64 = 1024;
const EVENTS_PER_BLOCK: u64 = 65_536;
/// Blocks per batch handed to the writer; with two batches queued this
/// bounds buffered output to about 3 x 16 x 65k rows (~130 MB).
const BLOCKS_PER_BATCH: usize = 16;

fn io_error<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> GenError + 'a {
    move |source| GenError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Writes the three CSV files into `dir` (created if needed), replacing
/// earlier ones. `progress`, when given, gets its length set to the
/// requested interactions and advances as users are generated.
pub fn write_csv(
    p: &GenParams,
    dir: &Path,
    progress: Option<&ProgressBar>,
) -> Result<GenSummary, GenError> {
    p.validate()?;
    fs::create_dir_all(dir).map_err(io_error("create directory", dir))?;
    let world = World::build(p);

    let finals = [ITEMS_FILE, USERS_FILE, INTERACTIONS_FILE].map(|name| dir.join(name));
    let partials = [ITEMS_FILE, USERS_FILE, INTERACTIONS_FILE]
        .map(|name| dir.join(format!(".{name}.{}.partial", std::process::id())));

    let written = write_items(p, &world, &partials[0])
        .and_then(|()| write_users(p, &world, &partials[1]))
        .and_then(|()| write_interactions(p, &world, &partials[2], progress));
    let (interactions, skipped) = match written {
        Ok(counts) => counts,
        Err(e) => {
            for partial in &partials {
                // Best effort: the original error is the one worth reporting.
                let _ = fs::remove_file(partial);
            }
            return Err(e);
        }
    };
    for (k, (partial, done)) in partials.iter().zip(&finals).enumerate() {
        if let Err(source) = fs::rename(partial, done) {
            for later in &partials[k..] {
                let _ = fs::remove_file(later);
            }
            return Err(io_error("rename into place", done)(source));
        }
    }
    if let Some(pb) = progress {
        pb.finish();
    }
    Ok(GenSummary {
        dir: dir.to_path_buf(),
        users: p.users,
        items: p.items,
        new_items: (0..world.n_items() as u32)
            .filter(|&i| world.created_at(i) >= world.start)
            .count() as u64,
        interactions,
        skipped,
        start: world.start,
        end: world.end,
        fingerprint: p.fingerprint(),
    })
}

fn create(path: &Path) -> Result<BufWriter<File>, GenError> {
    let file = File::create(path).map_err(io_error("create", path))?;
    Ok(BufWriter::with_capacity(1 << 20, file))
}

/// Flushes and syncs so the rename that follows publishes complete data.
fn finish(w: BufWriter<File>, path: &Path) -> Result<(), GenError> {
    let file = w
        .into_inner()
        .map_err(|e| io_error("write", path)(e.into_error()))?;
    file.sync_all().map_err(io_error("sync", path))
}

fn write_items(p: &GenParams, world: &World, path: &Path) -> Result<(), GenError> {
    let category_names = names::category_names(p.categories);
    let width = names::id_width(p.items);
    let mut out = csv::Writer::from_writer(create(path)?);
    let werr = |e: csv::Error| io_error("write", path)(e.into());
    out.write_record(["item_id", "title", "categories", "created_at"])
        .map_err(werr)?;
    for i in 0..world.n_items() as u32 {
        let categories: Vec<&str> = world
            .item_categories(i)
            .iter()
            .map(|&c| category_names[c as usize].as_str())
            .collect();
        out.write_record([
            names::format_id(b'i', i as u64, width).as_str(),
            world.item_title(i).as_str(),
            categories.join("|").as_str(),
            world.created_at(i).to_string().as_str(),
        ])
        .map_err(werr)?;
    }
    let inner = out
        .into_inner()
        .map_err(|e| io_error("write", path)(e.into_error()))?;
    finish(inner, path)
}

fn write_users(p: &GenParams, world: &World, path: &Path) -> Result<(), GenError> {
    let width = names::id_width(p.users);
    let mut out = csv::Writer::from_writer(create(path)?);
    let werr = |e: csv::Error| io_error("write", path)(e.into());
    out.write_record(["user_id", "age", "gender", "occupation"])
        .map_err(werr)?;
    for u in 0..world.n_users() as u32 {
        let profile = world.profile(u);
        out.write_record([
            names::format_id(b'u', u as u64, width).as_str(),
            profile.age.to_string().as_str(),
            gender_name(profile.gender),
            names::OCCUPATIONS[profile.occupation as usize],
        ])
        .map_err(werr)?;
    }
    let inner = out
        .into_inner()
        .map_err(|e| io_error("write", path)(e.into_error()))?;
    finish(inner, path)
}

/// End (exclusive) of the block of users starting at `start`.
fn block_end(world: &World, start: u64, users: u64) -> u64 {
    let mut end = start;
    let mut events = 0;
    while end < users && end - start < USERS_PER_BLOCK && events < EVENTS_PER_BLOCK {
        events += world.budget_of(end..end + 1);
        end += 1;
    }
    end
}

/// One block of users' rows, formatted; returns (bytes, written, skipped).
fn format_block(
    world: &World,
    users: std::ops::Range<u64>,
    widths: (usize, usize),
) -> (Vec<u8>, u64, u64) {
    let (user_width, item_width) = widths;
    let mut events = Vec::new();
    let mut seen = SeenSet::default();
    // ~40 bytes a row at benchmark id widths; avoids regrowth copies.
    let mut buf = Vec::with_capacity(world.budget_of(users.clone()) as usize * 40);
    let mut written = 0;
    let mut skipped = 0;
    for u in users {
        events.clear();
        skipped += world.user_events(u as u32, &mut events, &mut seen);
        written += events.len() as u64;
        for e in &events {
            push_id(&mut buf, b'u', u, user_width);
            buf.push(b',');
            push_id(&mut buf, b'i', e.item as u64, item_width);
            // Writing into a Vec cannot fail.
            let _ = write!(buf, ",{},{},", e.ts, e.kind.as_str());
            push_weight(&mut buf, e.value);
            buf.push(b'\n');
        }
    }
    (buf, written, skipped)
}

/// Whole weights (all default weights are) as integers: float formatting
/// is a visible share of the run time at benchmark sizes.
fn push_weight(buf: &mut Vec<u8>, value: f32) {
    if value.fract() == 0.0 && value.abs() < 1e9 {
        let _ = write!(buf, "{}", value as i64);
    } else {
        let _ = write!(buf, "{value}");
    }
}

fn write_interactions(
    p: &GenParams,
    world: &World,
    path: &Path,
    progress: Option<&ProgressBar>,
) -> Result<(u64, u64), GenError> {
    let mut out = create(path)?;
    out.write_all(b"user_id,item_id,timestamp,kind,weight\n")
        .map_err(io_error("write", path))?;
    if let Some(pb) = progress {
        pb.set_length(p.interactions);
    }
    let widths = (names::id_width(p.users), names::id_width(p.items));
    let owned_path: PathBuf = path.to_path_buf();

    std::thread::scope(|scope| {
        let (tx, rx) = mpsc::sync_channel::<Vec<Vec<u8>>>(2);
        let writer = scope.spawn(move || -> Result<(), GenError> {
            for batch in rx {
                for block in batch {
                    out.write_all(&block)
                        .map_err(io_error("write", &owned_path))?;
                }
            }
            finish(out, &owned_path)
        });

        let mut written = 0;
        let mut skipped = 0;
        let mut next_user = 0;
        while next_user < p.users {
            let mut ranges = Vec::with_capacity(BLOCKS_PER_BATCH);
            while ranges.len() < BLOCKS_PER_BATCH && next_user < p.users {
                let end = block_end(world, next_user, p.users);
                ranges.push(next_user..end);
                next_user = end;
            }
            let blocks: Vec<(Vec<u8>, u64, u64)> = ranges
                .into_par_iter()
                .map(|users| format_block(world, users, widths))
                .collect();
            let mut bufs = Vec::with_capacity(blocks.len());
            for (buf, w, s) in blocks {
                written += w;
                skipped += s;
                bufs.push(buf);
            }
            if let Some(pb) = progress {
                pb.set_position(written + skipped);
            }
            if tx.send(bufs).is_err() {
                // The writer stopped early; its join below carries the error.
                break;
            }
        }
        drop(tx);
        let result = writer
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic));
        result.map(|()| (written, skipped))
    })
}
