//! Routing: which copy of a shard a request asks, and how it reaches it.
//!
//! Owns: the shard client trait and what a call carries (`client`), this
//! node's own copies (`local`), the gRPC client of a copy on another node
//! (`remote`), per-node health and latency tracking (`health`), the replica
//! choice and hedging policy (`set`, a `ShardClient` over several copies),
//! which copies one request asks first (`plan`: local, then fewest nodes),
//! one request's searches gathered per node into one RPC (`batch`), what a
//! call carries besides its body (`metadata`: deadline, request id), and
//! building one replica set per shard from the cluster's shard map
//! (`build`), and where a request reads its user's realtime state
//! (`user_state`: this node's partition copy or another's). Must not touch: which node holds which shard (the cluster's
//! Raft state decides), how a shard searches (`shard`) or what a request
//! does with the answers (`coordinator`).

pub mod batch;
pub mod build;
pub mod client;
pub mod health;
pub mod local;
pub mod metadata;
pub mod plan;
pub mod remote;
pub mod set;
pub mod user_state;

pub use batch::CallBatch;
pub use build::{fitting_map, replica_sets, RoutingError};
pub use client::{
    CallContext, CopyFailure, SearchSpec, ShardCallError, ShardClient, VectorsResult,
};
pub use health::{HealthBook, HedgeBudget, LatencyTracker, NodeHealth};
pub use local::{search_filter, LocalShard};
pub use plan::{plan_copies, CopyInfo, CopyPlan};
pub use remote::RemoteShard;
pub use set::{ReplicaSet, ReplicaTarget};
pub use user_state::{RemoteCopy, UserReadError, UserRoutes, UserStates};
