//! The openraft type configuration of funnel's control plane and short
//! aliases for the openraft types the other cluster files use.
//!
//! Owns: `TypeConfig` (which application types openraft carries) and the
//! aliases. Must not touch: storage, network or state logic.

use std::io::Cursor;

use super::state::{Command, CommandResult, NodeInfo};

/// Raft node id. Stable for the life of a node's data directory.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Application types carried by funnel's Raft group: log entries hold a
    /// `Command`, applying one yields a `CommandResult`, membership entries
    /// carry each member's `NodeInfo` (so the network layer knows addresses),
    /// and snapshots travel as in-memory byte buffers (chunked by openraft).
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type EntryPayload = openraft::EntryPayload<TypeConfig>;
pub type Vote = openraft::Vote<NodeId>;
pub type Membership = openraft::Membership<NodeId, NodeInfo>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, NodeInfo>;
