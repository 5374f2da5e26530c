//! Seeded synthetic interaction data (`funnel gen`, and the built-in demo
//! data set): realistic enough that a good recommender measurably beats
//! popularity, fast enough for benchmark-sized logs.
//!
//! Owns: `GenParams`, `generate` (an in-memory `Dataset`), `write_csv`
//! (streaming CSV files, any size), `GenError`, `GenSummary`. Must not
//! touch: ingestion (the CSV files are read back by `ingest` like any user
//! data), training, or the CLI wiring (the lead's `main.rs`).
//!
//! # The model
//! Everything is drawn from streams derived from the seed per item and per
//! user (`Rng::derive`), so output is identical for any thread count.
//!
//! **Catalogue.** Items belong to one of `--clusters` latent taste
//! clusters; cluster sizes fall off as (c+1)^-0.8 (a few mainstream
//! clusters, many niches). An item's latent vector is its cluster's centroid
//! plus noise; the noise is one coordinate along the cluster's own axis, so
//! "latently close" means "nearby in the cluster's sorted order" and
//! neighbour lookups are array slices. Base popularity is a Zipf law,
//! (rank+1)^-1.05 over a random global rank, so the top 10% of items take a
//! large share. Items have 1-3 categories leaning to two "home" categories
//! of their cluster, and a word-list title. Most items predate the log
//! (created up to a year before `--start`); `--new-item-fraction` of them
//! are created uniformly during the last 20% of the span and carry a 2x
//! popularity boost.
//!
//! **Users.** Activity is log-normal (sigma 1): many light users and a few
//! heavy ones; every user gets at least 5 events when the total allows, at
//! most half the catalogue, and the budgets sum exactly to
//! `--interactions`. Taste is a mixture over 1-3 clusters (drawn by cluster
//! size, strongest weight 0.55-0.85), plus a personal niche position in each.
//! Age (15-75), gender and occupation lean mildly on the primary cluster.
//! A user joins somewhere in the first half of the span; events come in
//! sessions (2-8 events on average, ~75 s apart) at uniform times after it.
//!
//! **Each event** picks an item by one of these paths:
//! - with p = 0.5 (0.2 at a session's first event), an item latently close
//!   to the user's previous one (same cluster, nearby position), weighted by
//!   popularity — what item-to-item CF and recency features can learn;
//! - else with p = 0.1 a globally popular item;
//! - else with p = 0.1, once new items exist, a new item of a taste cluster
//!   created within the last week (at most 1/8 of the span) — what a
//!   "fresh" recall path can learn;
//! - else a taste cluster from the mixture, then either (half the time) a
//!   popularity-weighted item near the user's niche position or a
//!   popularity-weighted item of the whole cluster.
//!
//! Only items with `created_at <= ts` are ever chosen, and a user never gets
//! the same item twice: a proposal that fails either test is redrawn; after
//! 16 failed proposals a few uniform picks (in a taste cluster, or anywhere)
//! reach the unseen tail, and only then is the event skipped (counted in the
//! summary; none are skipped at the default or benchmark sizes).
//! Kinds are mostly views, then clicks, likes and rare purchases, with more
//! likes and purchases on items of the user's own tastes; the value is
//! `EventKind::default_weight`.

mod model;
mod names;
mod params;
mod sampling;
mod write;

#[cfg(test)]
mod tests;

pub use params::{
    GenParams, MAX_CATEGORIES, MAX_CLUSTERS, MAX_DAYS, MAX_INTERACTIONS, MAX_ITEMS,
    MAX_NEW_ITEM_FRACTION, MAX_START, MAX_USERS,
};
pub use write::{write_csv, INTERACTIONS_FILE, ITEMS_FILE, USERS_FILE};

use crate::dataset::{Dataset, Gender, Interaction, ItemMeta, UserMeta};
use crate::ids::IdMap;
use model::{SeenSet, World};
use rayon::prelude::*;
use std::path::PathBuf;

/// Why data could not be generated or written.
#[derive(Debug, thiserror::Error)]
pub enum GenError {
    #[error("{flag} {value} is out of range; use a value in {accepted}")]
    OutOfRange {
        flag: &'static str,
        value: String,
        accepted: String,
    },
    #[error(
        "--interactions {interactions} cannot be placed without repeating a (user, item) pair: \
         a user gets at most half the catalogue, so at most {capacity} fit; \
         raise --users or --items, or lower --interactions"
    )]
    TooDense { interactions: u64, capacity: u64 },
    #[error(
        "cannot {action} {}: {source}; check that the directory is writable and has free space",
        path.display()
    )]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `write_csv` produced.
#[derive(Debug, Clone, PartialEq)]
pub struct GenSummary {
    pub dir: PathBuf,
    pub users: u64,
    pub items: u64,
    /// Items created during the log (the late arrivals).
    pub new_items: u64,
    /// Interactions written.
    pub interactions: u64,
    /// Requested interactions that could not be placed (user out of
    /// distinct, already-created items); `interactions + skipped` is the
    /// requested count.
    pub skipped: u64,
    /// The log's time span, [start, end) in Unix seconds.
    pub start: i64,
    pub end: i64,
    /// Same as `Dataset::fingerprint` of `generate` with these parameters.
    pub fingerprint: String,
}

/// The name `generate` gives its data set.
pub fn dataset_name(p: &GenParams) -> String {
    format!("synthetic(seed={})", p.seed)
}

fn gender_name(g: Gender) -> &'static str {
    match g {
        Gender::Female => "female",
        Gender::Male => "male",
        Gender::Other => "other",
    }
}

/// Generates the data set in memory, canonicalized (ids are fixed-width, so
/// dense index k is the k-th id, e.g. item "i000123" has index 123). The
/// rows equal those `write_csv` writes for the same parameters.
pub fn generate(p: &GenParams) -> Result<Dataset, GenError> {
    p.validate()?;
    let world = World::build(p);
    let per_user: Vec<Vec<Interaction>> = (0..world.n_users() as u32)
        .into_par_iter()
        .map_init(SeenSet::default, |seen, u| {
            let mut events = Vec::new();
            world.user_events(u, &mut events, seen);
            events
        })
        .collect();
    let interactions: Vec<Interaction> = per_user.into_iter().flatten().collect();

    let user_width = names::id_width(p.users);
    let item_width = names::id_width(p.items);
    let users = IdMap::from_ids((0..p.users).map(|u| names::format_id(b'u', u, user_width)));
    let items = IdMap::from_ids((0..p.items).map(|i| names::format_id(b'i', i, item_width)));
    let item_meta = (0..world.n_items() as u32)
        .map(|i| ItemMeta {
            title: Some(world.item_title(i)),
            categories: world.item_categories(i),
            created_at: Some(world.created_at(i)),
        })
        .collect();
    let user_meta = (0..world.n_users() as u32)
        .map(|u| {
            let profile = world.profile(u);
            UserMeta {
                age: Some(profile.age),
                gender: Some(profile.gender),
                occupation: Some(profile.occupation),
            }
        })
        .collect();
    let dataset = Dataset {
        name: dataset_name(p),
        users,
        items,
        interactions,
        item_meta,
        user_meta,
        categories: names::category_names(p.categories),
        occupations: names::OCCUPATIONS.iter().map(|s| s.to_string()).collect(),
        fingerprint: p.fingerprint(),
        bad_rows: Vec::new(),
    };
    Ok(dataset.canonicalize())
}
