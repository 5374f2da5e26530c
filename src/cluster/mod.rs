//! The cluster control plane: a Raft group (openraft) that replicates the
//! control state of a funnel serving cluster — members, the shard map,
//! model versions, the realtime item catalog and settings. Queries never go
//! through Raft; the data plane watches the applied state instead.
//!
//! Owns: the replicated state and its rules (`state`), replica placement
//! plans (`placement`), the shard-transfer queue and its steps (`moves`),
//! durable Raft storage on redb (`log_store`, `state_machine`), the vote
//! fence of a node whose storage started empty (`vote_fence`), the gRPC
//! transport with fault injection (`network`, `service`, `fault`,
//! `peer_channel`; mTLS settings come from the top-level `tls`) and the
//! node handle (`node`). Must not touch: shard
//! data, model bundles or the public API; those watch `RaftNode::subscribe`
//! and read `RaftNode::state`.

pub mod error;
pub mod fault;
pub mod log_reversion;
pub mod log_store;
pub mod moves;
pub mod network;
pub mod node;
pub mod peer_channel;
pub mod placement;
pub mod service;
pub mod state;
pub mod state_machine;
pub mod types;
pub mod vote_fence;

pub use error::{from_status, to_status, ClusterError};
pub use fault::{Delay, FaultInjector, FaultRules, InjectedFault};
pub use log_store::LogStore;
pub use moves::{Phase, Transfer};
pub use node::{propose_via, ClusterStatus, RaftNode, RaftSettings};
pub use peer_channel::PeerChannel;
pub use placement::{
    initial_placement, plan_drain, plan_rebalance, skew, Move, PlacementError, Skew,
};
pub use state::{
    CatalogChange, ClusterState, ClusterView, Command, CommandResult, ItemRecord, MapKind, MapOp,
    ModelRef, NodeInfo, NodeStatus, Replica, ReplicaState, ShardMap, StateSummary,
};
pub use state_machine::{StateHandle, StateMachineStore};
pub use types::{NodeId, TypeConfig};
