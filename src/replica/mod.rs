//! Replicas of a shard as the coordinator sees them: which copy to ask,
//! when to hedge to a second one, and how to reach a copy on another node.
//!
//! Owns: per-node health and latency tracking (`health`), the replica
//! choice and hedging policy (`set`, a `ShardClient` over several copies),
//! which copies one request asks first (`plan`: local, then fewest nodes),
//! the gRPC client of a remote copy (`remote`), and one request's searches
//! gathered per node into one RPC (`batch`). Must not touch: which
//! node holds which shard (the cluster's shard map decides; `node` builds
//! replica sets from it) or how a shard searches (`shard`).

pub mod batch;
pub mod health;
pub mod plan;
pub mod remote;
pub mod set;

pub use batch::CallBatch;
pub use health::{HealthBook, HedgeBudget, LatencyTracker, NodeHealth};
pub use plan::{plan_copies, CopyInfo, CopyPlan};
pub use remote::RemoteShard;
pub use set::{ReplicaSet, ReplicaTarget};
