//! Messages a shard actor answers.

use super::index::{ShardError, ShardStats};
use super::keyed_vectors::KeyedVectors;
use crate::ids::KeySet;
use actix::Message;
use std::sync::Arc;

/// Allows or refuses an item key (category filters and other rules).
pub type KeepFn = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Which items a search may return: all but the excluded keys, the deleted
/// keys and what `predicate` refuses. Kept as data rather than one closure
/// so the shard can turn the few excluded keys into graph slots once per
/// search and skip key lookups altogether when nothing else filters (the
/// common case: the walk then checks a bit and a short sorted list).
#[derive(Clone, Default)]
pub struct SearchFilter {
    /// Keys never to return (seen, excluded by the request), sorted.
    pub exclude: Arc<Vec<u64>>,
    /// The catalogue's deleted keys as of the search's start.
    pub deleted: Arc<KeySet>,
    /// Any further rule on the key (None: no rule).
    pub predicate: Option<KeepFn>,
}

impl SearchFilter {
    /// Whether the rules beyond `exclude` need the item's key.
    pub fn checks_keys(&self) -> bool {
        !self.deleted.is_empty() || self.predicate.is_some()
    }

    /// The rules beyond `exclude`.
    pub fn allows_beyond_exclude(&self, key: u64) -> bool {
        !self.deleted.contains(&key) && self.predicate.as_ref().is_none_or(|p| p(key))
    }

    /// Every rule, for one key.
    pub fn allows(&self, key: u64) -> bool {
        self.exclude.binary_search(&key).is_err() && self.allows_beyond_exclude(key)
    }
}

/// Filtered top-k by inner product, plus the vectors of `fetch` keys that
/// live on this shard (other recall paths' candidates need them for
/// features), in one round trip.
pub struct Search {
    pub query: Arc<[f32]>,
    pub k: usize,
    pub filter: SearchFilter,
    pub fetch: Arc<[u64]>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchResult {
    pub shard: u32,
    pub hits: Vec<(u64, f32)>,
    /// Vectors of the hits and of the fetched keys found here.
    pub vectors: KeyedVectors,
    /// CPU time the search took on the shard's thread.
    pub cpu_micros: u64,
}

impl Message for Search {
    type Result = Result<SearchResult, ShardError>;
}

pub struct Upsert {
    pub items: Vec<(u64, Vec<f32>)>,
}

impl Message for Upsert {
    type Result = Result<(), ShardError>;
}

pub struct Delete {
    pub keys: Vec<u64>,
}

impl Message for Delete {
    type Result = Result<usize, ShardError>;
}

pub struct Stats;

impl Message for Stats {
    type Result = ShardStats;
}

pub struct Digest;

impl Message for Digest {
    type Result = String;
}
