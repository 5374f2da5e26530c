//! The coordinator: one request's fan-out, merge and deadline. Any node
//! coordinates: it reads user state from the user's partition, runs the
//! local recall paths, fans the ANN query out to every shard (local actor
//! or remote node), merges with quotas, scores on the rank workers and
//! reranks.
//!
//! Owns: the request flow and its deadline accounting (`recommend`), the
//! shard client abstraction, and `CoordinatorActor`. Must not touch: how
//! features, recall paths, merge or scoring work (it calls the plain
//! functions in `features`, `recall`, `ranking`).

mod actor;
mod recommend;
mod shards;

pub use actor::{CoordinatorActor, Recommend};
pub use recommend::{per_shard_k, recommend, RecommendEnv, Serving};
pub use shards::{
    search_filter, CallContext, LocalShard, SearchSpec, ShardCallError, ShardClient, VectorsResult,
};
