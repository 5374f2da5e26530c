//! Cluster members: `NodeInfo` (also openraft's `Node` type), `NodeStatus`
//! and the member rules of `ClusterState`: registering a node, changing its
//! status, which nodes may take a new replica, and recording Raft
//! membership entries.
//!
//! Must not touch: Raft, storage, the network, clocks or randomness (see
//! the `state` module: a pure, deterministic function of the log, with
//! `BTreeMap`s only). The shard map, models and transfer queue are only
//! read here, to refuse removing a node that is still in use.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::checks::{check_addr, Verdict};
use super::ClusterState;
use crate::cluster::types::{LogId, Membership, NodeId, StoredMembership};

/// A cluster member as the control plane knows it. This is also openraft's
/// `Node` type, so Raft membership entries carry it; the `status` inside a
/// membership entry is ignored (the status of record lives in
/// `ClusterState::nodes`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    pub id: NodeId,
    /// host:port of the node's cluster gRPC server (Raft + Control).
    pub internal: String,
    /// host:port of the public HTTP API (may be empty).
    pub http: String,
    /// host:port of the public gRPC API (may be empty).
    pub grpc: String,
    pub status: NodeStatus,
}

impl NodeInfo {
    /// An `Active` node with the given addresses.
    pub fn new(
        id: NodeId,
        internal: impl Into<String>,
        http: impl Into<String>,
        grpc: impl Into<String>,
    ) -> Self {
        Self {
            id,
            internal: internal.into(),
            http: http.into(),
            grpc: grpc.into(),
            status: NodeStatus::Active,
        }
    }
}

/// Life cycle of a node: `Active` nodes take new replicas, `Draining` nodes
/// keep serving but get no new replicas, `Removed` is final.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum NodeStatus {
    #[default]
    Active,
    Draining,
    Removed,
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            NodeStatus::Active => "Active",
            NodeStatus::Draining => "Draining",
            NodeStatus::Removed => "Removed",
        })
    }
}

impl ClusterState {
    /// Records a membership entry. Members the state has never seen are
    /// registered as `Active` with the addresses the membership carries, so
    /// every Raft member is a known node without a separate command.
    pub fn apply_membership(&mut self, log_id: LogId, membership: Membership) {
        for (id, info) in membership.nodes() {
            self.nodes.entry(*id).or_insert_with(|| NodeInfo {
                id: *id,
                status: NodeStatus::Active,
                ..info.clone()
            });
        }
        self.membership = StoredMembership::new(Some(log_id), membership);
    }

    /// Ids of the nodes with status `Active`, ascending.
    pub fn active_node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.status == NodeStatus::Active)
            .map(|n| n.id)
            .collect()
    }

    pub(super) fn node_status(&self, id: NodeId) -> Option<NodeStatus> {
        self.nodes.get(&id).map(|n| n.status)
    }

    pub(super) fn check_register(&self, info: &NodeInfo) -> Verdict {
        check_addr("internal", &info.internal, true)?;
        check_addr("http", &info.http, false)?;
        check_addr("grpc", &info.grpc, false)?;
        if let Some(other) = self.nodes.values().find(|n| {
            n.id != info.id && n.status != NodeStatus::Removed && n.internal == info.internal
        }) {
            return Err(format!(
                "node {} already uses internal address {}; give every node its own address",
                other.id, info.internal
            ));
        }
        match self.nodes.get(&info.id) {
            None if info.status == NodeStatus::Removed => Err(format!(
                "node {} cannot be registered as Removed; register it as Active",
                info.id
            )),
            None => Ok(()),
            Some(known) if known.status == NodeStatus::Removed => Err(format!(
                "node {} was removed; a removed id is never reused, start the node with a new id",
                info.id
            )),
            Some(known) if known.internal != info.internal => Err(format!(
                "node {} has internal address {} and Raft membership uses it; it cannot change to {} \
                 (re-add the node as a learner with the new address instead)",
                info.id, known.internal, info.internal
            )),
            Some(known) if known.status != info.status => Err(format!(
                "node {} is {}; change its status with SetNodeStatus, not RegisterNode",
                info.id, known.status
            )),
            Some(_) => Ok(()),
        }
    }

    pub(super) fn check_node_status(&self, id: NodeId, status: NodeStatus) -> Verdict {
        let current = self
            .node_status(id)
            .ok_or_else(|| format!("node {id} is unknown; register it first"))?;
        if current == NodeStatus::Removed && status != NodeStatus::Removed {
            return Err(format!("node {id} was removed; removal is final"));
        }
        if status == NodeStatus::Removed && current != NodeStatus::Removed {
            for kind in super::MapKind::ALL {
                let held = self.map(kind).map(|m| m.shards_on(id)).unwrap_or_default();
                if !held.is_empty() {
                    return Err(format!(
                        "node {id} still holds replicas of {kind}s {held:?}; drain it (plan_drain) and drop them first"
                    ));
                }
            }
            for kind in super::MapKind::ALL {
                if let Some(t) = self
                    .queue(kind)
                    .iter()
                    .find(|t| t.from == Some(id) || t.to == Some(id))
                {
                    return Err(format!(
                        "node {id} is part of the queued transfer ({}); wait for it or cancel it first",
                        t.describe(kind)
                    ));
                }
            }
            if let Some(staged) = &self.models.staged {
                if staged.source_node == id {
                    return Err(format!(
                        "node {id} is the source of staged model {}; stage the model from another node first",
                        staged.version
                    ));
                }
            }
        }
        Ok(())
    }

    /// A node can receive a new replica only while it is known and Active.
    pub(in crate::cluster) fn check_can_host(&self, node: NodeId) -> Verdict {
        match self.node_status(node) {
            None => Err(format!("node {node} is unknown; register it first")),
            Some(NodeStatus::Active) => Ok(()),
            Some(status) => Err(format!(
                "node {node} is {status}; only Active nodes take new replicas"
            )),
        }
    }
}
