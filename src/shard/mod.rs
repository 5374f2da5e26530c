//! Shards: one replica of one item shard — its usearch index and the item
//! vectors — answering filtered top-k queries and applying upserts and
//! deletes in the order they arrive.
//!
//! Owns: `ShardIndex` (the data and its operations, plain code), `Graph`
//! (the walkable copy of the HNSW graph searches use), `ShardActor` (the
//! one thread that applies a copy's writes in order), `SearchPool` (the
//! node's search threads, shared by every shard) and `ShardHandle` (how the
//! node reaches a copy: writes to the actor, reads on the pool), and how a
//! top-k splits over shards (`per_shard_k`).
//! Must not touch: users, ranking, the catalogue's attributes (filters come
//! in as predicates built by the caller).

mod actor;
mod graph;
mod half;
mod handle;
mod huge;
mod index;
mod keyed_vectors;
mod messages;
mod pool;
pub mod quality;

pub use actor::ShardActor;
pub use handle::{start_shard, SearchError, ShardHandle};
pub use index::{ShardError, ShardIndex, ShardStats};
pub use keyed_vectors::{KeyedVectors, LayoutError, VectorTable};
pub use messages::{Delete, Digest, KeepFn, Search, SearchFilter, SearchResult, Stats, Upsert};
pub use pool::{PoolGone, SearchPool};

/// How many hits to ask each of `n_shards` shards for so that the merged
/// best `ann_k` is nearly the global best `ann_k`. Items spread evenly over
/// shards by hash, so a shard holds about `ann_k / n_shards` of the true
/// top; half again plus a constant covers the binomial spread without
/// making every shard search for the full `ann_k`.
pub fn per_shard_k(ann_k: usize, n_shards: usize) -> usize {
    if n_shards <= 1 {
        ann_k
    } else {
        ((ann_k * 3).div_ceil(2 * n_shards) + 10).min(ann_k)
    }
}

#[cfg(test)]
mod tests {
    use super::per_shard_k;

    #[test]
    fn per_shard_k_covers_the_spread_and_never_exceeds_ann_k() {
        assert_eq!(per_shard_k(200, 1), 200);
        assert_eq!(per_shard_k(200, 8), 48);
        assert_eq!(per_shard_k(200, 12), 35);
        assert_eq!(per_shard_k(200, 2), 160);
        assert_eq!(per_shard_k(5, 2), 5);
        assert!((1..64).all(|s| per_shard_k(200, s) * s >= 200));
    }
}
