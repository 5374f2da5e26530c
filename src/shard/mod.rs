//! Shards: one replica of one item shard — its usearch index and the item
//! vectors — answering filtered top-k queries and applying upserts and
//! deletes in the order they arrive.
//!
//! Owns: `ShardIndex` (the data and its operations, plain code), `Graph`
//! (the walkable copy of the HNSW graph searches use), `ShardActor` (the
//! one thread that applies a copy's writes in order), `SearchPool` (the
//! node's search threads, shared by every shard) and `ShardHandle` (how the
//! node reaches a copy: writes to the actor, reads on the pool).
//! Must not touch: users, ranking, the catalogue's attributes (filters come
//! in as predicates built by the caller).

mod actor;
mod graph;
mod half;
mod handle;
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
