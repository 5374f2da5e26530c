//! Messages a shard actor answers.

use super::index::{ShardError, ShardStats};
use super::keyed_vectors::KeyedVectors;
use actix::Message;
use std::sync::Arc;

/// Allows or refuses an item key (seen items, exclusions, filters).
pub type KeepFn = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// Filtered top-k by inner product, plus the vectors of `fetch` keys that
/// live on this shard (other recall paths' candidates need them for
/// features), in one round trip.
pub struct Search {
    pub query: Arc<[f32]>,
    pub k: usize,
    pub keep: KeepFn,
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

/// Vectors of the given keys that live on this shard.
pub struct GetVectors {
    pub keys: Arc<[u64]>,
}

impl Message for GetVectors {
    type Result = KeyedVectors;
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
