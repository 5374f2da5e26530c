//! Commands: `Command` (a change to the control state, as it travels
//! through the Raft log), `CommandResult`, and `ClusterState::apply_command`,
//! which runs the command's check (in the file of its aggregate) and, only
//! if it passes, applies the whole command; a rejected command leaves the
//! state exactly as it was.
//!
//! Must not touch: Raft, storage, the network, clocks or randomness (see
//! the `state` module: a pure, deterministic function of (state, command,
//! index), with `BTreeMap`s only). `Command` and `CommandResult` are part
//! of the Raft log format: their variants and fields keep their order.

use serde::{Deserialize, Serialize};

use super::checks::{check_delete, check_setting};
use super::{
    ClusterState, ItemRecord, MapKind, ModelRef, NodeInfo, NodeStatus, Replica, ReplicaState,
    ShardMap,
};
use crate::cluster::moves::Transfer;
use crate::cluster::types::NodeId;

/// A change to the control state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// Add a node or update its public addresses.
    RegisterNode(NodeInfo),
    SetNodeStatus {
        id: NodeId,
        status: NodeStatus,
    },
    /// Create the shard map. The proposer computes `placement` (see
    /// `placement::initial_placement`), so applying stays a pure check.
    InitShards {
        shards: u32,
        replication: u32,
        placement: Vec<Vec<NodeId>>,
    },
    AddReplica {
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    },
    SetReplicaState {
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    },
    DropReplica {
        shard: u32,
        node: NodeId,
    },
    StageModel(ModelRef),
    ReportLoaded {
        node: NodeId,
        version: String,
    },
    ActivateModel {
        version: String,
        force: bool,
    },
    UpsertItems(Vec<ItemRecord>),
    DeleteItems(Vec<String>),
    /// Set a cluster setting; an empty value removes the key.
    SetSetting {
        key: String,
        value: String,
    },
    /// Queue shard transfers (moves, adds, drops); the leader carries them
    /// out step by step (`moves::next_steps`).
    QueueTransfers(Vec<Transfer>),
    /// Mark a node Draining and queue the transfers that empty it; the
    /// leader removes it from Raft and marks it Removed once it is empty.
    DrainNode {
        id: NodeId,
        transfers: Vec<Transfer>,
    },
    /// Change the target replica count and queue the adds and drops that
    /// reach it. The proposer plans (`moves::plan_replication`).
    SetReplication {
        replication: u32,
        transfers: Vec<Transfer>,
    },
    /// Stop driving queued transfers; replicas stay as they are.
    CancelTransfers(Vec<Transfer>),
    /// A change to the user partition map or its transfer queue. The shard
    /// commands above keep their own variants (and log encoding); both go
    /// through the same rules (`MapOp`).
    Partitions(MapOp),
}

/// A change to one placement map (`MapKind`) or its transfer queue. The
/// shard map's changes travel as the shard variants of `Command`
/// (`Command::for_map`), the user partition map's as `Command::Partitions`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MapOp {
    /// Create the map: `count` units fixed for the cluster's life, each
    /// placed on `replication` nodes (the proposer computes `placement`,
    /// `placement::initial_placement`, so applying stays a pure check).
    /// Shard copies start Loading; user partition copies start Active.
    Init {
        count: u32,
        replication: u32,
        placement: Vec<Vec<NodeId>>,
    },
    AddReplica {
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    },
    SetReplicaState {
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    },
    DropReplica {
        shard: u32,
        node: NodeId,
    },
    QueueTransfers(Vec<Transfer>),
    SetReplication {
        replication: u32,
        transfers: Vec<Transfer>,
    },
    CancelTransfers(Vec<Transfer>),
}

impl Command {
    /// Short name for logs and metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::RegisterNode(_) => "RegisterNode",
            Command::SetNodeStatus { .. } => "SetNodeStatus",
            Command::InitShards { .. } => "InitShards",
            Command::AddReplica { .. } => "AddReplica",
            Command::SetReplicaState { .. } => "SetReplicaState",
            Command::DropReplica { .. } => "DropReplica",
            Command::StageModel(_) => "StageModel",
            Command::ReportLoaded { .. } => "ReportLoaded",
            Command::ActivateModel { .. } => "ActivateModel",
            Command::UpsertItems(_) => "UpsertItems",
            Command::DeleteItems(_) => "DeleteItems",
            Command::SetSetting { .. } => "SetSetting",
            Command::QueueTransfers(_) => "QueueTransfers",
            Command::DrainNode { .. } => "DrainNode",
            Command::SetReplication { .. } => "SetReplication",
            Command::CancelTransfers(_) => "CancelTransfers",
            Command::Partitions(op) => match op {
                MapOp::Init { .. } => "Partitions(Init)",
                MapOp::AddReplica { .. } => "Partitions(AddReplica)",
                MapOp::SetReplicaState { .. } => "Partitions(SetReplicaState)",
                MapOp::DropReplica { .. } => "Partitions(DropReplica)",
                MapOp::QueueTransfers(_) => "Partitions(QueueTransfers)",
                MapOp::SetReplication { .. } => "Partitions(SetReplication)",
                MapOp::CancelTransfers(_) => "Partitions(CancelTransfers)",
            },
        }
    }

    /// The command carrying `op` for the map of `kind`: a shard variant for
    /// the shard map (its log encoding predates user partitions),
    /// `Partitions` for the user partition map.
    pub fn for_map(kind: MapKind, op: MapOp) -> Command {
        match kind {
            MapKind::UserPartitions => Command::Partitions(op),
            MapKind::Shards => match op {
                MapOp::Init {
                    count,
                    replication,
                    placement,
                } => Command::InitShards {
                    shards: count,
                    replication,
                    placement,
                },
                MapOp::AddReplica { shard, node, state } => {
                    Command::AddReplica { shard, node, state }
                }
                MapOp::SetReplicaState { shard, node, state } => {
                    Command::SetReplicaState { shard, node, state }
                }
                MapOp::DropReplica { shard, node } => Command::DropReplica { shard, node },
                MapOp::QueueTransfers(t) => Command::QueueTransfers(t),
                MapOp::SetReplication {
                    replication,
                    transfers,
                } => Command::SetReplication {
                    replication,
                    transfers,
                },
                MapOp::CancelTransfers(t) => Command::CancelTransfers(t),
            },
        }
    }

    /// The inverse of `for_map`: the map change this command is, or the
    /// command itself when it is not one.
    fn into_map_op(self) -> Result<(MapKind, MapOp), Command> {
        let op = match self {
            Command::Partitions(op) => return Ok((MapKind::UserPartitions, op)),
            Command::InitShards {
                shards,
                replication,
                placement,
            } => MapOp::Init {
                count: shards,
                replication,
                placement,
            },
            Command::AddReplica { shard, node, state } => MapOp::AddReplica { shard, node, state },
            Command::SetReplicaState { shard, node, state } => {
                MapOp::SetReplicaState { shard, node, state }
            }
            Command::DropReplica { shard, node } => MapOp::DropReplica { shard, node },
            Command::QueueTransfers(t) => MapOp::QueueTransfers(t),
            Command::SetReplication {
                replication,
                transfers,
            } => MapOp::SetReplication {
                replication,
                transfers,
            },
            Command::CancelTransfers(t) => MapOp::CancelTransfers(t),
            other => return Err(other),
        };
        Ok((MapKind::Shards, op))
    }

    /// Commands that change the model, the members or the shard layout:
    /// when the cluster has an admin token, a forwarded one must carry it.
    /// Catalogue writes are the public API's (its own auth applies).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, Command::UpsertItems(_) | Command::DeleteItems(_))
    }

    /// Commands whose second application leaves the state and the answer
    /// as the first did (an upsert or delete by id, a setting's value): a
    /// write whose leader went away mid-request may send them again, since
    /// whether the first attempt committed cannot be known. Every other
    /// command may be rejected the second time ("replica exists"), which
    /// would report a failure for a change that was made.
    pub fn is_idempotent(&self) -> bool {
        matches!(
            self,
            Command::UpsertItems(_) | Command::DeleteItems(_) | Command::SetSetting { .. }
        )
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Ok,
    /// The command made no sense against the state; nothing changed.
    Rejected(String),
    /// Catalog write: how many ids it touched and the log index it got
    /// (a replica that reached this index has the change).
    Items {
        applied: u32,
        index: u64,
    },
}

impl ClusterState {
    /// Applies one committed command written at log `index`. A rejected
    /// command leaves the state exactly as it was.
    pub fn apply_command(&mut self, index: u64, command: Command) -> CommandResult {
        let name = command.kind();
        let command = match command.into_map_op() {
            Ok((kind, op)) => {
                if let Err(reason) = self.check_map_op(kind, &op) {
                    return CommandResult::Rejected(format!("{name} rejected: {reason}"));
                }
                self.mutate_map(kind, op);
                self.retire_transfers();
                return CommandResult::Ok;
            }
            Err(command) => command,
        };
        let verdict = match &command {
            Command::RegisterNode(info) => self.check_register(info),
            Command::SetNodeStatus { id, status } => self.check_node_status(*id, *status),
            Command::StageModel(model) => self.check_stage(model),
            Command::ReportLoaded { node, version } => self.check_report_loaded(*node, version),
            Command::ActivateModel { version, force } => self.check_activate(version, *force),
            Command::UpsertItems(items) => self.check_upsert(items),
            Command::DeleteItems(ids) => check_delete(ids),
            Command::SetSetting { key, value } => check_setting(key, value),
            Command::DrainNode { id, transfers } => self.check_drain_node(*id, transfers),
            // map changes were handled above
            _ => Ok(()),
        };
        if let Err(reason) = verdict {
            return CommandResult::Rejected(format!("{name} rejected: {reason}"));
        }
        let result = self.mutate(index, command);
        self.retire_transfers();
        result
    }

    fn check_map_op(&self, kind: MapKind, op: &MapOp) -> Result<(), String> {
        match op {
            MapOp::Init {
                count,
                replication,
                placement,
            } => self.check_init_map(kind, *count, *replication, placement),
            MapOp::AddReplica { shard, node, state } => {
                self.check_add_replica(kind, *shard, *node, *state)
            }
            MapOp::SetReplicaState { shard, node, state } => {
                self.check_replica_state(kind, *shard, *node, *state)
            }
            MapOp::DropReplica { shard, node } => self.check_drop_replica(kind, *shard, *node),
            MapOp::QueueTransfers(t) => self.check_transfers(kind, t).map(|_| ()),
            MapOp::SetReplication {
                replication,
                transfers,
            } => self.check_set_replication(kind, *replication, transfers),
            MapOp::CancelTransfers(t) => self.check_cancel_transfers(kind, t),
        }
    }

    /// Applies a map change that passed its check.
    fn mutate_map(&mut self, kind: MapKind, op: MapOp) {
        match op {
            MapOp::Init {
                count: _,
                replication,
                placement,
            } => {
                // a shard copy loads its index first; a new user partition
                // has nothing to load (the cluster's users were on every
                // node until now, or there are none yet)
                let state = match kind {
                    MapKind::Shards => ReplicaState::Loading,
                    MapKind::UserPartitions => ReplicaState::Active,
                };
                // the check made sure `count` is the placement's length
                let map = ShardMap::from_placement(placement, replication, state);
                match kind {
                    MapKind::Shards => self.shard_map = Some(map),
                    MapKind::UserPartitions => self.partition_map = Some(map),
                }
            }
            MapOp::AddReplica { shard, node, state } => {
                if let Some(rs) = self.replicas_mut(kind, shard) {
                    rs.push(Replica { node, state });
                }
            }
            MapOp::SetReplicaState { shard, node, state } => {
                if let Some(r) = self
                    .replicas_mut(kind, shard)
                    .and_then(|rs| rs.iter_mut().find(|r| r.node == node))
                {
                    r.state = state;
                }
            }
            MapOp::DropReplica { shard, node } => {
                if let Some(rs) = self.replicas_mut(kind, shard) {
                    rs.retain(|r| r.node != node);
                }
            }
            MapOp::QueueTransfers(transfers) => self.queue_mut(kind).extend(transfers),
            MapOp::SetReplication {
                replication,
                transfers,
            } => {
                if let Some(map) = self.map_mut(kind) {
                    map.replication = replication;
                }
                self.queue_mut(kind).extend(transfers);
            }
            MapOp::CancelTransfers(cancel) => self.queue_mut(kind).retain(|t| !cancel.contains(t)),
        }
    }

    /// Applies a command that passed its check.
    fn mutate(&mut self, index: u64, command: Command) -> CommandResult {
        match command {
            Command::RegisterNode(info) => {
                let status = self.node_status(info.id).unwrap_or(info.status);
                self.nodes.insert(info.id, NodeInfo { status, ..info });
            }
            Command::SetNodeStatus { id, status } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.status = status;
                }
                if status == NodeStatus::Removed {
                    self.models.loaded.remove(&id);
                }
            }
            Command::StageModel(model) => self.models.staged = Some(model),
            Command::ReportLoaded { node, version } => {
                self.models.loaded.insert(node, version);
            }
            Command::ActivateModel { version, .. } => {
                if self
                    .models
                    .staged
                    .as_ref()
                    .is_some_and(|m| m.version == version)
                {
                    self.models.active = self.models.staged.take();
                }
            }
            Command::UpsertItems(items) => {
                let applied = items.len() as u32;
                for item in items {
                    self.catalog.upsert(item, index);
                }
                return CommandResult::Items { applied, index };
            }
            Command::DeleteItems(ids) => {
                let applied = ids.len() as u32;
                for id in ids {
                    self.catalog.delete(id, index);
                }
                return CommandResult::Items { applied, index };
            }
            Command::SetSetting { key, value } => {
                if value.is_empty() {
                    self.settings.remove(&key);
                } else {
                    self.settings.insert(key, value);
                }
            }
            Command::DrainNode { id, transfers } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.status = NodeStatus::Draining;
                }
                self.transfers.extend(transfers);
            }
            // map changes never reach here (`apply_command`)
            Command::InitShards { .. }
            | Command::AddReplica { .. }
            | Command::SetReplicaState { .. }
            | Command::DropReplica { .. }
            | Command::QueueTransfers(_)
            | Command::SetReplication { .. }
            | Command::CancelTransfers(_)
            | Command::Partitions(_) => {}
        }
        CommandResult::Ok
    }
}
