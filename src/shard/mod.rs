//! Shards: one replica of one item shard — its usearch index and the item
//! vectors — answering filtered top-k queries and applying upserts and
//! deletes in the order they arrive.
//!
//! Owns: `ShardIndex` (the data and its operations, plain code), `Graph`
//! (the walkable copy of the HNSW graph searches use) and
//! `ShardActor` (an actix sync actor serving it from a few threads).
//! Must not touch: users, ranking, the catalogue's attributes (filters come
//! in as predicates built by the caller).

mod actor;
mod graph;
mod half;
mod index;
mod keyed_vectors;
mod messages;
pub mod quality;

pub use actor::{start_shard, ShardActor};
pub use index::{ShardError, ShardIndex, ShardStats};
pub use keyed_vectors::{KeyedVectors, LayoutError, VectorTable};
pub use messages::{
    Delete, Digest, GetVectors, KeepFn, Search, SearchFilter, SearchResult, Stats, Upsert,
};
