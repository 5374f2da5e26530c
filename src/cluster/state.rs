//! The replicated control state of a funnel cluster and the rules for
//! changing it.
//!
//! Owns: `ClusterState` (members, shard map, model versions, the realtime
//! item catalog overlay, settings, the queue of shard transfers, whose
//! rules live in `moves`), the `Command`s that change it, and
//! `ClusterState::apply_command`, which validates every command against the
//! current state and either applies it whole or rejects it with the state
//! unchanged. Must not touch: Raft, storage, the network, clocks or
//! randomness: every node applies the same log to the same state, so this
//! code has to be a pure, deterministic function of (state, command, index).
//! That is also why all maps are `BTreeMap` (iteration order is part of the
//! result, e.g. of rejection messages and digests).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::moves::Transfer;
use super::types::{LogId, Membership, NodeId, StoredMembership};
use crate::ids::{item_key, shard_of, validate_id};

/// Most shards a cluster may be created with (the shard count is fixed for
/// the cluster's life, and every node keeps per-shard state).
pub const MAX_SHARDS: u32 = 4096;
/// Most replicas per shard.
pub const MAX_REPLICATION: u32 = 16;
/// Most items (or ids) in one `UpsertItems` / `DeleteItems` command; bigger
/// batches must be split so a single log entry stays well below the
/// transport's message limit.
pub const MAX_ITEMS_PER_COMMAND: usize = 10_000;
/// Longest item vector accepted in the overlay.
pub const MAX_VECTOR_DIM: usize = 4096;
/// Most categories on one item.
pub const MAX_CATEGORIES_PER_ITEM: usize = 256;
/// Longest item title or category name, in bytes.
pub const MAX_TEXT_LEN: usize = 1024;
/// Longest setting key, in bytes.
pub const MAX_SETTING_KEY_LEN: usize = 128;
/// Longest setting value, in bytes.
pub const MAX_SETTING_VALUE_LEN: usize = 4096;
/// Longest node address, in bytes.
pub const MAX_ADDR_LEN: usize = 256;

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

/// Life cycle of one shard replica: `Loading` (being built, not queried),
/// `Active` (queried), `Draining` (still answers, about to be dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ReplicaState {
    Loading,
    Active,
    Draining,
}

impl fmt::Display for ReplicaState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ReplicaState::Loading => "Loading",
            ReplicaState::Active => "Active",
            ReplicaState::Draining => "Draining",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: NodeId,
    pub state: ReplicaState,
}

/// Which nodes hold which shard. `replication` is the target replica count;
/// during a move a shard briefly has one more.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub shards: u32,
    pub replication: u32,
    /// Index = shard id.
    pub replicas: Vec<Vec<Replica>>,
}

impl ShardMap {
    /// The replicas of `shard`, or `None` for an unknown shard.
    pub fn replicas_of(&self, shard: u32) -> Option<&[Replica]> {
        self.replicas.get(shard as usize).map(|v| v.as_slice())
    }

    /// The replica of `shard` on `node`, if any.
    pub fn replica(&self, shard: u32, node: NodeId) -> Option<&Replica> {
        self.replicas_of(shard)?.iter().find(|r| r.node == node)
    }

    /// Shards with a replica (in any state) on `node`, ascending.
    pub fn shards_on(&self, node: NodeId) -> Vec<u32> {
        (0..self.shards)
            .filter(|&s| self.replica(s, node).is_some())
            .collect()
    }

    /// Replicas (any state) per node, for every node holding at least one.
    pub fn replica_counts(&self) -> BTreeMap<NodeId, usize> {
        let mut counts = BTreeMap::new();
        for replica in self.replicas.iter().flatten() {
            *counts.entry(replica.node).or_insert(0) += 1;
        }
        counts
    }

    /// Every node holding at least one replica.
    pub fn nodes_with_replicas(&self) -> BTreeSet<NodeId> {
        self.replicas.iter().flatten().map(|r| r.node).collect()
    }

    fn active_replicas(&self, shard: u32) -> usize {
        self.replicas_of(shard)
            .map(|rs| {
                rs.iter()
                    .filter(|r| r.state == ReplicaState::Active)
                    .count()
            })
            .unwrap_or(0)
    }
}

/// A model bundle version and where nodes can fetch it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelRef {
    pub version: String,
    pub bundle_path: String,
    pub source_node: NodeId,
}

/// Two-phase rollout state: `staged` is being loaded, `active` is served;
/// `loaded` is the version each node last reported as loaded.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ModelVersions {
    pub active: Option<ModelRef>,
    pub staged: Option<ModelRef>,
    pub loaded: BTreeMap<NodeId, String>,
}

/// One item of the realtime catalog overlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub categories: Vec<String>,
    pub title: Option<String>,
    pub created_at: i64,
}

/// The realtime item overlay on top of the active bundle: upserts and
/// deletes in log order. Every id appears under exactly one log index in
/// `by_index` (that of its latest write), which keeps `by_index` as small as
/// the overlay and makes `changed_since` return each id once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    items: BTreeMap<String, (ItemRecord, u64)>,
    /// Tombstones: id -> log index of the delete. Kept because the item may
    /// live in the bundle, which the overlay must keep hiding.
    deleted: BTreeMap<String, u64>,
    by_index: BTreeMap<u64, Vec<String>>,
}

/// One overlay change, as a replica replays it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CatalogChange<'a> {
    Upsert { index: u64, item: &'a ItemRecord },
    Delete { index: u64, id: &'a str },
}

impl CatalogChange<'_> {
    pub fn index(&self) -> u64 {
        match self {
            CatalogChange::Upsert { index, .. } | CatalogChange::Delete { index, .. } => *index,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            CatalogChange::Upsert { item, .. } => &item.id,
            CatalogChange::Delete { id, .. } => id,
        }
    }
}

impl Catalog {
    /// The overlay item `id` and the log index that wrote it.
    pub fn get(&self, id: &str) -> Option<(&ItemRecord, u64)> {
        self.items.get(id).map(|(item, index)| (item, *index))
    }

    /// The log index of the delete of `id`, if the overlay hides it.
    pub fn deleted_at(&self, id: &str) -> Option<u64> {
        self.deleted.get(id).copied()
    }

    /// Number of live overlay items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of tombstones.
    pub fn deleted_len(&self) -> usize {
        self.deleted.len()
    }

    /// Vector dimension of the overlay (all live items share it).
    pub fn dimension(&self) -> Option<usize> {
        self.items
            .values()
            .next()
            .map(|(item, _)| item.vector.len())
    }

    /// Log index of the latest overlay write still visible.
    pub fn last_index(&self) -> Option<u64> {
        self.by_index.keys().next_back().copied()
    }

    /// Every change written after log index `index`, in log order; within
    /// one index, in the order the command listed them. A replica that has
    /// reconciled up to `index` replays exactly these.
    pub fn changed_since(&self, index: u64) -> impl Iterator<Item = CatalogChange<'_>> + '_ {
        self.by_index
            .range((Bound::Excluded(index), Bound::Unbounded))
            .flat_map(move |(&at, ids)| {
                ids.iter().map(move |id| match self.items.get(id) {
                    Some((item, written)) if *written == at => {
                        CatalogChange::Upsert { index: at, item }
                    }
                    _ => CatalogChange::Delete { index: at, id },
                })
            })
    }

    /// Live overlay items whose id hashes to `shard` of `shards`, in id order.
    pub fn items_for_shard(
        &self,
        shard: u32,
        shards: u32,
    ) -> impl Iterator<Item = &ItemRecord> + '_ {
        self.items
            .values()
            .map(|(item, _)| item)
            .filter(move |item| shards > 0 && shard_of(item_key(&item.id), shards) == shard)
    }

    /// Tombstoned ids that hash to `shard` of `shards`, in id order.
    pub fn deleted_for_shard(&self, shard: u32, shards: u32) -> impl Iterator<Item = &str> + '_ {
        self.deleted
            .keys()
            .map(|id| id.as_str())
            .filter(move |id| shards > 0 && shard_of(item_key(id), shards) == shard)
    }

    fn forget_index_of(&mut self, id: &str, index: u64) {
        if let Some(ids) = self.by_index.get_mut(&index) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.by_index.remove(&index);
            }
        }
    }

    fn upsert(&mut self, item: ItemRecord, index: u64) {
        if let Some((_, old)) = self.items.get(&item.id) {
            let old = *old;
            self.forget_index_of(&item.id, old);
        }
        if let Some(old) = self.deleted.remove(&item.id) {
            self.forget_index_of(&item.id, old);
        }
        self.by_index
            .entry(index)
            .or_default()
            .push(item.id.clone());
        self.items.insert(item.id.clone(), (item, index));
    }

    fn delete(&mut self, id: String, index: u64) {
        if let Some((_, old)) = self.items.remove(&id) {
            self.forget_index_of(&id, old);
        }
        if let Some(old) = self.deleted.get(&id).copied() {
            self.forget_index_of(&id, old);
        }
        self.by_index.entry(index).or_default().push(id.clone());
        self.deleted.insert(id, index);
    }
}

/// The whole replicated control state.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterState {
    pub last_applied: Option<LogId>,
    pub membership: StoredMembership,
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub shard_map: Option<ShardMap>,
    pub models: ModelVersions,
    pub catalog: Catalog,
    pub settings: BTreeMap<String, String>,
    /// Queued shard transfers, oldest first (see `moves`).
    pub transfers: Vec<Transfer>,
}

/// What an operator sees of the state: everything but the item catalogue.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ClusterView {
    pub nodes: BTreeMap<NodeId, NodeInfo>,
    pub shard_map: Option<ShardMap>,
    pub models: ModelVersions,
    pub settings: BTreeMap<String, String>,
    pub summary: StateSummary,
    /// Queued shard transfers with their phase.
    pub transfers: Vec<(Transfer, super::moves::Phase)>,
}

impl ClusterState {
    pub fn view(&self) -> ClusterView {
        ClusterView {
            nodes: self.nodes.clone(),
            shard_map: self.shard_map.clone(),
            models: self.models.clone(),
            settings: self.settings.clone(),
            summary: self.summary(),
            transfers: self.transfer_phases(),
        }
    }
}

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
        }
    }

    /// Commands that change the model, the members or the shard layout:
    /// when the cluster has an admin token, a forwarded one must carry it.
    /// Catalogue writes are the public API's (its own auth applies).
    pub fn needs_admin(&self) -> bool {
        !matches!(self, Command::UpsertItems(_) | Command::DeleteItems(_))
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

/// Counts and versions for status pages.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StateSummary {
    pub last_applied_index: Option<u64>,
    pub nodes: u32,
    pub active_nodes: u32,
    pub shards: u32,
    pub replication: u32,
    pub active_version: Option<String>,
    pub staged_version: Option<String>,
    pub catalog_items: u64,
    pub catalog_deleted: u64,
    pub catalog_last_index: Option<u64>,
    pub settings: u32,
}

type Verdict = Result<(), String>;

impl ClusterState {
    /// Applies one committed command written at log `index`. A rejected
    /// command leaves the state exactly as it was.
    pub fn apply_command(&mut self, index: u64, command: Command) -> CommandResult {
        let verdict = match &command {
            Command::RegisterNode(info) => self.check_register(info),
            Command::SetNodeStatus { id, status } => self.check_node_status(*id, *status),
            Command::InitShards {
                shards,
                replication,
                placement,
            } => self.check_init_shards(*shards, *replication, placement),
            Command::AddReplica { shard, node, state } => {
                self.check_add_replica(*shard, *node, *state)
            }
            Command::SetReplicaState { shard, node, state } => {
                self.check_replica_state(*shard, *node, *state)
            }
            Command::DropReplica { shard, node } => self.check_drop_replica(*shard, *node),
            Command::StageModel(model) => self.check_stage(model),
            Command::ReportLoaded { node, version } => self.check_report_loaded(*node, version),
            Command::ActivateModel { version, force } => self.check_activate(version, *force),
            Command::UpsertItems(items) => self.check_upsert(items),
            Command::DeleteItems(ids) => check_delete(ids),
            Command::SetSetting { key, value } => check_setting(key, value),
            Command::QueueTransfers(t) => self.check_transfers(t).map(|_| ()),
            Command::DrainNode { id, transfers } => self.check_drain_node(*id, transfers),
            Command::SetReplication {
                replication,
                transfers,
            } => self.check_set_replication(*replication, transfers),
            Command::CancelTransfers(t) => self.check_cancel_transfers(t),
        };
        if let Err(reason) = verdict {
            return CommandResult::Rejected(format!("{} rejected: {reason}", command.kind()));
        }
        let result = self.mutate(index, command);
        self.retire_transfers();
        result
    }

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

    /// blake3 (hex) over the overlay entries of `shard` (live items and
    /// tombstones) in id order. Log indexes are left out: two replicas agree
    /// when they expose the same items, however they got there.
    pub fn digest_shard(&self, shard: u32, shards: u32) -> String {
        let mut entries: BTreeMap<&str, Option<&ItemRecord>> = BTreeMap::new();
        for item in self.catalog.items_for_shard(shard, shards) {
            entries.insert(&item.id, Some(item));
        }
        for id in self.catalog.deleted_for_shard(shard, shards) {
            entries.insert(id, None);
        }
        let mut h = blake3::Hasher::new();
        h.update(b"funnel.catalog.shard.v1\0");
        for (id, entry) in entries {
            hash_str(&mut h, id);
            match entry {
                None => {
                    h.update(&[0]);
                }
                Some(item) => {
                    h.update(&[1]);
                    h.update(&(item.vector.len() as u64).to_le_bytes());
                    for x in &item.vector {
                        h.update(&x.to_le_bytes());
                    }
                    h.update(&(item.categories.len() as u64).to_le_bytes());
                    for c in &item.categories {
                        hash_str(&mut h, c);
                    }
                    match &item.title {
                        None => h.update(&[0]),
                        Some(t) => {
                            h.update(&[1]);
                            hash_str(&mut h, t);
                            &mut h
                        }
                    };
                    h.update(&item.created_at.to_le_bytes());
                }
            }
        }
        h.finalize().to_hex().to_string()
    }

    /// blake3 (hex) of the whole state, for comparing replicas of the state
    /// machine in tests and status pages.
    pub fn digest(&self) -> String {
        // postcard output is deterministic here: every map is a BTreeMap.
        match postcard::to_stdvec(self) {
            Ok(bytes) => blake3::hash(&bytes).to_hex().to_string(),
            Err(e) => format!("unencodable state: {e}"),
        }
    }

    pub fn summary(&self) -> StateSummary {
        StateSummary {
            last_applied_index: self.last_applied.map(|l| l.index),
            nodes: self.nodes.len() as u32,
            active_nodes: self
                .nodes
                .values()
                .filter(|n| n.status == NodeStatus::Active)
                .count() as u32,
            shards: self.shard_map.as_ref().map_or(0, |m| m.shards),
            replication: self.shard_map.as_ref().map_or(0, |m| m.replication),
            active_version: self.models.active.as_ref().map(|m| m.version.clone()),
            staged_version: self.models.staged.as_ref().map(|m| m.version.clone()),
            catalog_items: self.catalog.len() as u64,
            catalog_deleted: self.catalog.deleted_len() as u64,
            catalog_last_index: self.catalog.last_index(),
            settings: self.settings.len() as u32,
        }
    }

    /// Ids of the nodes with status `Active`, ascending.
    pub fn active_node_ids(&self) -> Vec<NodeId> {
        self.nodes
            .values()
            .filter(|n| n.status == NodeStatus::Active)
            .map(|n| n.id)
            .collect()
    }

    /// Nodes holding replicas that have not reported `version` loaded: the
    /// leader activates a staged version (without force) when this is empty.
    pub fn not_loaded(&self, version: &str) -> Vec<NodeId> {
        let holders = self
            .shard_map
            .as_ref()
            .map(|m| m.nodes_with_replicas())
            .unwrap_or_default();
        holders
            .into_iter()
            .filter(|n| self.models.loaded.get(n).map(String::as_str) != Some(version))
            .collect()
    }

    fn node_status(&self, id: NodeId) -> Option<NodeStatus> {
        self.nodes.get(&id).map(|n| n.status)
    }

    fn check_register(&self, info: &NodeInfo) -> Verdict {
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

    fn check_node_status(&self, id: NodeId, status: NodeStatus) -> Verdict {
        let current = self
            .node_status(id)
            .ok_or_else(|| format!("node {id} is unknown; register it first"))?;
        if current == NodeStatus::Removed && status != NodeStatus::Removed {
            return Err(format!("node {id} was removed; removal is final"));
        }
        if status == NodeStatus::Removed && current != NodeStatus::Removed {
            if let Some(map) = &self.shard_map {
                let held = map.shards_on(id);
                if !held.is_empty() {
                    return Err(format!(
                        "node {id} still holds replicas of shards {held:?}; drain it (plan_drain) and drop them first"
                    ));
                }
            }
            if let Some(t) = self
                .transfers
                .iter()
                .find(|t| t.from == Some(id) || t.to == Some(id))
            {
                return Err(format!(
                    "node {id} is part of the queued transfer ({t}); wait for it or cancel it first"
                ));
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

    fn check_init_shards(
        &self,
        shards: u32,
        replication: u32,
        placement: &[Vec<NodeId>],
    ) -> Verdict {
        if let Some(map) = &self.shard_map {
            return Err(format!(
                "the shard map already exists ({} shards x {} replicas); the shard count is fixed at creation",
                map.shards, map.replication
            ));
        }
        if shards == 0 || shards > MAX_SHARDS {
            return Err(format!("shard count {shards} is outside 1..={MAX_SHARDS}"));
        }
        if replication == 0 || replication > MAX_REPLICATION {
            return Err(format!(
                "replication {replication} is outside 1..={MAX_REPLICATION}"
            ));
        }
        let active = self.active_node_ids();
        if replication as usize > active.len() {
            return Err(format!(
                "replication {replication} needs that many Active nodes but there are {}; add nodes or lower it",
                active.len()
            ));
        }
        if placement.len() != shards as usize {
            return Err(format!(
                "placement lists {} shards but shards = {shards}",
                placement.len()
            ));
        }
        for (shard, nodes) in placement.iter().enumerate() {
            if nodes.len() != replication as usize {
                return Err(format!(
                    "shard {shard} is placed on {} nodes but replication = {replication}",
                    nodes.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for &node in nodes {
                if !seen.insert(node) {
                    return Err(format!(
                        "shard {shard} lists node {node} twice; replicas need distinct nodes"
                    ));
                }
                self.check_can_host(node)?;
            }
        }
        Ok(())
    }

    /// A node can receive a new replica only while it is known and Active.
    pub(super) fn check_can_host(&self, node: NodeId) -> Verdict {
        match self.node_status(node) {
            None => Err(format!("node {node} is unknown; register it first")),
            Some(NodeStatus::Active) => Ok(()),
            Some(status) => Err(format!(
                "node {node} is {status}; only Active nodes take new replicas"
            )),
        }
    }

    fn shard_map_for(&self, shard: u32) -> Result<&ShardMap, String> {
        let map = self
            .shard_map
            .as_ref()
            .ok_or_else(|| "the shard map does not exist yet; run InitShards first".to_string())?;
        if shard >= map.shards {
            return Err(format!(
                "shard {shard} does not exist (shards 0..{})",
                map.shards
            ));
        }
        Ok(map)
    }

    fn check_add_replica(&self, shard: u32, node: NodeId, state: ReplicaState) -> Verdict {
        let map = self.shard_map_for(shard)?;
        if state == ReplicaState::Draining {
            return Err("a new replica starts Loading (or Active), never Draining".to_string());
        }
        if map.replica(shard, node).is_some() {
            return Err(format!(
                "node {node} already holds a replica of shard {shard}"
            ));
        }
        self.check_can_host(node)
    }

    fn check_replica_state(&self, shard: u32, node: NodeId, state: ReplicaState) -> Verdict {
        let map = self.shard_map_for(shard)?;
        let replica = map
            .replica(shard, node)
            .ok_or_else(|| format!("node {node} holds no replica of shard {shard}"))?;
        match (replica.state, state) {
            (from, to) if from == to => Ok(()),
            (_, ReplicaState::Loading) => Err(format!(
                "the replica of shard {shard} on node {node} is {}; a replica never goes back to Loading \
                 (drop it and add it again)",
                replica.state
            )),
            (ReplicaState::Loading, ReplicaState::Draining) => Err(format!(
                "the replica of shard {shard} on node {node} is still Loading and serves nothing; drop it instead"
            )),
            (_, ReplicaState::Active) => match self.node_status(node) {
                Some(NodeStatus::Active) => Ok(()),
                Some(status) => Err(format!(
                    "node {node} is {status}; its replicas cannot become Active (set the node Active first)"
                )),
                None => Err(format!("node {node} is unknown")),
            },
            (ReplicaState::Active, ReplicaState::Draining) => {
                if map.active_replicas(shard) <= 1 {
                    Err(format!(
                        "shard {shard} would have no Active replica; add and activate another replica first"
                    ))
                } else {
                    Ok(())
                }
            }
            // (Draining, Draining) and (Loading, Loading) are caught by the first arm.
            (from, to) => Err(format!("replica state change {from} -> {to} is not allowed")),
        }
    }

    fn check_drop_replica(&self, shard: u32, node: NodeId) -> Verdict {
        let map = self.shard_map_for(shard)?;
        let replica = map
            .replica(shard, node)
            .ok_or_else(|| format!("node {node} holds no replica of shard {shard}"))?;
        if replica.state == ReplicaState::Loading {
            return Ok(());
        }
        let other_active = map
            .replicas_of(shard)
            .unwrap_or(&[])
            .iter()
            .filter(|r| r.node != node && r.state == ReplicaState::Active)
            .count();
        if other_active == 0 {
            return Err(format!(
                "shard {shard} would have no Active replica left; add and activate another replica first"
            ));
        }
        Ok(())
    }

    fn check_stage(&self, model: &ModelRef) -> Verdict {
        check_version(&model.version)?;
        if model.bundle_path.is_empty() {
            return Err(
                "bundle_path is empty; give the path of the bundle on the source node".to_string(),
            );
        }
        match self.node_status(model.source_node) {
            None => {
                return Err(format!(
                    "source node {} is unknown; register it first",
                    model.source_node
                ))
            }
            Some(NodeStatus::Removed) => {
                return Err(format!(
                    "source node {} was removed; stage from a live node",
                    model.source_node
                ))
            }
            Some(_) => {}
        }
        if self
            .models
            .active
            .as_ref()
            .is_some_and(|a| a.version == model.version)
        {
            return Err(format!("version {} is already active", model.version));
        }
        Ok(())
    }

    fn check_report_loaded(&self, node: NodeId, version: &str) -> Verdict {
        match self.node_status(node) {
            None => return Err(format!("node {node} is unknown; register it first")),
            Some(NodeStatus::Removed) => return Err(format!("node {node} was removed")),
            Some(_) => {}
        }
        let staged = self
            .models
            .staged
            .as_ref()
            .is_some_and(|m| m.version == version);
        let active = self
            .models
            .active
            .as_ref()
            .is_some_and(|m| m.version == version);
        if !staged && !active {
            return Err(format!(
                "version {version} is neither staged nor active; stage it before reporting it loaded"
            ));
        }
        Ok(())
    }

    fn check_activate(&self, version: &str, force: bool) -> Verdict {
        if self
            .models
            .active
            .as_ref()
            .is_some_and(|m| m.version == version)
        {
            // Retried activation: already done.
            return Ok(());
        }
        match &self.models.staged {
            None => {
                return Err(format!(
                    "version {version} is not staged (nothing is); stage it first"
                ))
            }
            Some(staged) if staged.version != version => {
                return Err(format!(
                    "version {version} is not staged (staged is {}); stage it first",
                    staged.version
                ))
            }
            Some(_) => {}
        }
        if force {
            return Ok(());
        }
        let missing = self.not_loaded(version);
        if !missing.is_empty() {
            return Err(format!(
                "version {version} is not loaded on nodes {missing:?} that hold replicas; \
                 wait for their ReportLoaded or activate with force"
            ));
        }
        Ok(())
    }

    fn check_upsert(&self, items: &[ItemRecord]) -> Verdict {
        if items.is_empty() {
            return Err("no items given".to_string());
        }
        if items.len() > MAX_ITEMS_PER_COMMAND {
            return Err(format!(
                "{} items in one command; split into batches of at most {MAX_ITEMS_PER_COMMAND}",
                items.len()
            ));
        }
        let mut dim = self.catalog.dimension();
        let mut seen = BTreeSet::new();
        for item in items {
            validate_id(&item.id).map_err(|e| format!("item id {:?}: {e}", item.id))?;
            if !seen.insert(item.id.as_str()) {
                return Err(format!("item {} is listed twice", item.id));
            }
            if item.vector.is_empty() || item.vector.len() > MAX_VECTOR_DIM {
                return Err(format!(
                    "item {} has a vector of length {}; it must be 1..={MAX_VECTOR_DIM}",
                    item.id,
                    item.vector.len()
                ));
            }
            if let Some(pos) = item.vector.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "item {} has a non-finite vector value at position {pos}",
                    item.id
                ));
            }
            match dim {
                None => dim = Some(item.vector.len()),
                Some(d) if d != item.vector.len() => {
                    return Err(format!(
                        "item {} has dimension {} but the catalog uses {d}",
                        item.id,
                        item.vector.len()
                    ))
                }
                Some(_) => {}
            }
            if item.categories.len() > MAX_CATEGORIES_PER_ITEM {
                return Err(format!(
                    "item {} has {} categories; the limit is {MAX_CATEGORIES_PER_ITEM}",
                    item.id,
                    item.categories.len()
                ));
            }
            for c in &item.categories {
                check_text(&format!("item {} category", item.id), c)?;
            }
            if let Some(title) = &item.title {
                check_text(&format!("item {} title", item.id), title)?;
            }
        }
        Ok(())
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
            Command::InitShards {
                shards,
                replication,
                placement,
            } => {
                let replicas = placement
                    .into_iter()
                    .map(|nodes| {
                        nodes
                            .into_iter()
                            .map(|node| Replica {
                                node,
                                state: ReplicaState::Loading,
                            })
                            .collect()
                    })
                    .collect();
                self.shard_map = Some(ShardMap {
                    shards,
                    replication,
                    replicas,
                });
            }
            Command::AddReplica { shard, node, state } => {
                if let Some(rs) = self.replicas_mut(shard) {
                    rs.push(Replica { node, state });
                }
            }
            Command::SetReplicaState { shard, node, state } => {
                if let Some(r) = self
                    .replicas_mut(shard)
                    .and_then(|rs| rs.iter_mut().find(|r| r.node == node))
                {
                    r.state = state;
                }
            }
            Command::DropReplica { shard, node } => {
                if let Some(rs) = self.replicas_mut(shard) {
                    rs.retain(|r| r.node != node);
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
            Command::QueueTransfers(transfers) => self.transfers.extend(transfers),
            Command::DrainNode { id, transfers } => {
                if let Some(node) = self.nodes.get_mut(&id) {
                    node.status = NodeStatus::Draining;
                }
                self.transfers.extend(transfers);
            }
            Command::SetReplication {
                replication,
                transfers,
            } => {
                if let Some(map) = self.shard_map.as_mut() {
                    map.replication = replication;
                }
                self.transfers.extend(transfers);
            }
            Command::CancelTransfers(cancel) => self.transfers.retain(|t| !cancel.contains(t)),
        }
        CommandResult::Ok
    }

    fn replicas_mut(&mut self, shard: u32) -> Option<&mut Vec<Replica>> {
        self.shard_map.as_mut()?.replicas.get_mut(shard as usize)
    }
}

fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}

fn check_addr(what: &str, addr: &str, required: bool) -> Verdict {
    if addr.is_empty() {
        return if required {
            Err(format!("{what} address is empty; give host:port"))
        } else {
            Ok(())
        };
    }
    if addr.len() > MAX_ADDR_LEN {
        return Err(format!(
            "{what} address is longer than {MAX_ADDR_LEN} bytes"
        ));
    }
    let port_ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !port_ok {
        return Err(format!("{what} address {addr:?} is not host:port"));
    }
    Ok(())
}

fn check_version(version: &str) -> Verdict {
    if version.is_empty() {
        return Err("model version is empty".to_string());
    }
    check_text("model version", version)
}

fn check_text(what: &str, text: &str) -> Verdict {
    if text.len() > MAX_TEXT_LEN {
        return Err(format!("{what} is longer than {MAX_TEXT_LEN} bytes"));
    }
    if text.chars().any(|c| c.is_control()) {
        return Err(format!("{what} {text:?} contains a control character"));
    }
    Ok(())
}

fn check_delete(ids: &[String]) -> Verdict {
    if ids.is_empty() {
        return Err("no item ids given".to_string());
    }
    if ids.len() > MAX_ITEMS_PER_COMMAND {
        return Err(format!(
            "{} ids in one command; split into batches of at most {MAX_ITEMS_PER_COMMAND}",
            ids.len()
        ));
    }
    let mut seen = BTreeSet::new();
    for id in ids {
        validate_id(id).map_err(|e| format!("item id {id:?}: {e}"))?;
        if !seen.insert(id.as_str()) {
            return Err(format!("item {id} is listed twice"));
        }
    }
    Ok(())
}

fn check_setting(key: &str, value: &str) -> Verdict {
    if key.is_empty() || key.len() > MAX_SETTING_KEY_LEN {
        return Err(format!(
            "setting key must be 1..={MAX_SETTING_KEY_LEN} bytes"
        ));
    }
    if !key
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
    {
        return Err(format!(
            "setting key {key:?} may only use ASCII letters, digits, '.', '_' and '-'"
        ));
    }
    if value.len() > MAX_SETTING_VALUE_LEN {
        return Err(format!(
            "setting value is longer than {MAX_SETTING_VALUE_LEN} bytes"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::types::{LogId, Membership};

    fn info(id: NodeId) -> NodeInfo {
        NodeInfo::new(
            id,
            format!("10.0.0.{id}:7000"),
            format!("10.0.0.{id}:8080"),
            "",
        )
    }

    /// Applies `cmd` and asserts it was applied (not rejected).
    fn ok(state: &mut ClusterState, index: u64, cmd: Command) -> CommandResult {
        let r = state.apply_command(index, cmd.clone());
        assert!(
            !matches!(r, CommandResult::Rejected(_)),
            "{cmd:?} was rejected: {r:?}"
        );
        r
    }

    /// Asserts `cmd` is rejected with a message containing `needle` and
    /// that the state did not change at all.
    fn rejected(state: &mut ClusterState, cmd: Command, needle: &str) {
        let before = state.clone();
        match state.apply_command(99, cmd.clone()) {
            CommandResult::Rejected(msg) => {
                assert!(
                    msg.contains(needle),
                    "{cmd:?}: message {msg:?} lacks {needle:?}"
                );
                assert!(
                    msg.starts_with(cmd.kind()),
                    "message should name the command: {msg}"
                );
            }
            other => panic!("{cmd:?} was not rejected: {other:?}"),
        }
        assert_eq!(*state, before, "a rejected {cmd:?} changed the state");
    }

    fn with_nodes(ids: &[NodeId]) -> ClusterState {
        let mut s = ClusterState::default();
        for &id in ids {
            ok(&mut s, id, Command::RegisterNode(info(id)));
        }
        s
    }

    /// Nodes 1..=4 and a 2-shard map: shard 0 on {1,2}, shard 1 on {2,3}, all Active.
    fn with_shards() -> ClusterState {
        let mut s = with_nodes(&[1, 2, 3, 4]);
        ok(
            &mut s,
            10,
            Command::InitShards {
                shards: 2,
                replication: 2,
                placement: vec![vec![1, 2], vec![2, 3]],
            },
        );
        for (shard, node) in [(0, 1), (0, 2), (1, 2), (1, 3)] {
            ok(
                &mut s,
                11,
                Command::SetReplicaState {
                    shard,
                    node,
                    state: ReplicaState::Active,
                },
            );
        }
        s
    }

    fn item(id: &str, vector: Vec<f32>) -> ItemRecord {
        ItemRecord {
            id: id.to_string(),
            vector,
            categories: vec!["c1".into()],
            title: Some(format!("title {id}")),
            created_at: 1_700_000_000,
        }
    }

    fn model(version: &str, source: NodeId) -> ModelRef {
        ModelRef {
            version: version.into(),
            bundle_path: format!("/bundles/{version}"),
            source_node: source,
        }
    }

    fn set_status(id: NodeId, status: NodeStatus) -> Command {
        Command::SetNodeStatus { id, status }
    }

    #[test]
    fn register_node_rules() {
        let mut s = with_nodes(&[1]);
        rejected(
            &mut s,
            Command::RegisterNode(NodeInfo::new(2, "", "", "")),
            "internal address is empty",
        );
        rejected(
            &mut s,
            Command::RegisterNode(NodeInfo::new(2, "nohost", "", "")),
            "not host:port",
        );
        rejected(
            &mut s,
            Command::RegisterNode(NodeInfo::new(2, "h:1", "h:0", "")),
            "not host:port",
        );
        rejected(
            &mut s,
            Command::RegisterNode(NodeInfo::new(2, "10.0.0.1:7000", "", "")),
            "node 1 already uses internal address",
        );
        let mut removed = info(2);
        removed.status = NodeStatus::Removed;
        rejected(
            &mut s,
            Command::RegisterNode(removed),
            "cannot be registered as Removed",
        );
        rejected(
            &mut s,
            Command::RegisterNode(NodeInfo::new(1, "10.9.9.9:7000", "", "")),
            "cannot change",
        );
        let mut draining = info(1);
        draining.status = NodeStatus::Draining;
        rejected(&mut s, Command::RegisterNode(draining), "SetNodeStatus");

        // Updating public addresses of a known node is fine.
        ok(
            &mut s,
            2,
            Command::RegisterNode(NodeInfo::new(1, "10.0.0.1:7000", "pub:80", "pub:90")),
        );
        assert_eq!(s.nodes[&1].http, "pub:80");
        ok(&mut s, 3, set_status(1, NodeStatus::Removed));
        rejected(&mut s, Command::RegisterNode(info(1)), "never reused");
        // A removed node's address may be taken over by a new node.
        ok(
            &mut s,
            4,
            Command::RegisterNode(NodeInfo::new(5, "10.0.0.1:7000", "", "")),
        );
    }

    #[test]
    fn node_status_rules() {
        let mut s = with_shards();
        rejected(
            &mut s,
            set_status(9, NodeStatus::Draining),
            "node 9 is unknown",
        );
        rejected(
            &mut s,
            set_status(1, NodeStatus::Removed),
            "still holds replicas of shards [0]",
        );
        ok(&mut s, 20, Command::StageModel(model("v1", 4)));
        rejected(
            &mut s,
            set_status(4, NodeStatus::Removed),
            "source of staged model v1",
        );
        ok(&mut s, 21, Command::StageModel(model("v2", 1)));
        ok(
            &mut s,
            22,
            Command::ReportLoaded {
                node: 4,
                version: "v2".into(),
            },
        );
        ok(&mut s, 23, set_status(4, NodeStatus::Removed));
        assert!(
            !s.models.loaded.contains_key(&4),
            "a removed node's load report is forgotten"
        );
        rejected(
            &mut s,
            set_status(4, NodeStatus::Active),
            "removal is final",
        );
        ok(&mut s, 24, set_status(4, NodeStatus::Removed));
        ok(&mut s, 25, set_status(1, NodeStatus::Draining));
        ok(&mut s, 26, set_status(1, NodeStatus::Active));
    }

    #[test]
    fn init_shards_rules() {
        let mut s = with_nodes(&[1, 2, 3]);
        let init = |shards, replication, placement: Vec<Vec<NodeId>>| Command::InitShards {
            shards,
            replication,
            placement,
        };
        rejected(&mut s, init(0, 1, vec![]), "shard count 0");
        rejected(&mut s, init(MAX_SHARDS + 1, 1, vec![]), "outside");
        rejected(&mut s, init(1, 0, vec![vec![]]), "replication 0");
        rejected(
            &mut s,
            init(1, 4, vec![vec![1, 2, 3, 4]]),
            "needs that many Active nodes but there are 3",
        );
        rejected(
            &mut s,
            init(2, 1, vec![vec![1]]),
            "placement lists 1 shards but shards = 2",
        );
        rejected(
            &mut s,
            init(1, 2, vec![vec![1]]),
            "placed on 1 nodes but replication = 2",
        );
        rejected(&mut s, init(1, 2, vec![vec![1, 1]]), "lists node 1 twice");
        rejected(&mut s, init(1, 2, vec![vec![1, 7]]), "node 7 is unknown");
        ok(&mut s, 5, set_status(3, NodeStatus::Draining));
        rejected(&mut s, init(1, 2, vec![vec![1, 3]]), "node 3 is Draining");
        rejected(&mut s, init(1, 3, vec![vec![1, 2, 3]]), "there are 2");
        ok(&mut s, 6, set_status(3, NodeStatus::Active));

        ok(&mut s, 7, init(2, 2, vec![vec![1, 2], vec![3, 1]]));
        let map = s.shard_map.clone().unwrap();
        assert_eq!(map.shards, 2);
        assert!(map
            .replicas
            .iter()
            .flatten()
            .all(|r| r.state == ReplicaState::Loading));
        assert_eq!(map.shards_on(1), vec![0, 1]);
        rejected(
            &mut s,
            init(2, 2, vec![vec![1, 2], vec![3, 1]]),
            "already exists",
        );
    }

    #[test]
    fn replica_rules() {
        let mut s = with_nodes(&[1, 2]);
        let add = |shard, node, state| Command::AddReplica { shard, node, state };
        rejected(
            &mut s,
            add(0, 1, ReplicaState::Loading),
            "run InitShards first",
        );

        let mut s = with_shards();
        rejected(
            &mut s,
            add(2, 4, ReplicaState::Loading),
            "shard 2 does not exist",
        );
        rejected(&mut s, add(0, 4, ReplicaState::Draining), "never Draining");
        rejected(
            &mut s,
            add(0, 1, ReplicaState::Loading),
            "already holds a replica of shard 0",
        );
        rejected(
            &mut s,
            add(0, 9, ReplicaState::Loading),
            "node 9 is unknown",
        );
        ok(&mut s, 30, set_status(4, NodeStatus::Draining));
        rejected(
            &mut s,
            add(0, 4, ReplicaState::Loading),
            "only Active nodes",
        );
        ok(&mut s, 31, set_status(4, NodeStatus::Active));
        ok(&mut s, 32, add(0, 4, ReplicaState::Loading));

        let set = |shard, node, state| Command::SetReplicaState { shard, node, state };
        rejected(
            &mut s,
            set(0, 3, ReplicaState::Active),
            "holds no replica of shard 0",
        );
        rejected(
            &mut s,
            set(0, 1, ReplicaState::Loading),
            "never goes back to Loading",
        );
        rejected(&mut s, set(0, 4, ReplicaState::Draining), "still Loading");
        ok(&mut s, 33, set_status(4, NodeStatus::Draining));
        rejected(
            &mut s,
            set(0, 4, ReplicaState::Active),
            "cannot become Active",
        );
        ok(&mut s, 34, set_status(4, NodeStatus::Active));
        ok(&mut s, 35, set(0, 4, ReplicaState::Active));
        ok(&mut s, 36, set(0, 1, ReplicaState::Draining));
        ok(&mut s, 37, set(0, 2, ReplicaState::Draining));
        rejected(
            &mut s,
            set(0, 4, ReplicaState::Draining),
            "no Active replica",
        );
        // Draining -> Active cancels a drain.
        ok(&mut s, 38, set(0, 2, ReplicaState::Active));

        let drop = |shard, node| Command::DropReplica { shard, node };
        rejected(&mut s, drop(0, 3), "holds no replica");
        ok(&mut s, 39, drop(0, 1)); // Draining, while 2 and 4 are Active
        ok(&mut s, 40, drop(0, 2)); // Active, 4 still Active
        rejected(&mut s, drop(0, 4), "no Active replica left");
        ok(&mut s, 41, add(0, 3, ReplicaState::Loading));
        ok(&mut s, 42, drop(0, 3)); // Loading replicas can always go
        assert_eq!(
            s.shard_map.as_ref().unwrap().replicas_of(0).unwrap(),
            &[Replica {
                node: 4,
                state: ReplicaState::Active
            }]
        );
    }

    #[test]
    fn model_rollout_rules() {
        let mut s = with_shards();
        let stage = |v: &str, src| Command::StageModel(model(v, src));
        let report = |node, v: &str| Command::ReportLoaded {
            node,
            version: v.into(),
        };
        let activate = |v: &str, force| Command::ActivateModel {
            version: v.into(),
            force,
        };
        rejected(&mut s, stage("", 1), "model version is empty");
        rejected(
            &mut s,
            Command::StageModel(ModelRef {
                version: "v1".into(),
                bundle_path: String::new(),
                source_node: 1,
            }),
            "bundle_path is empty",
        );
        rejected(&mut s, stage("v1", 9), "source node 9 is unknown");
        rejected(&mut s, report(1, "v1"), "neither staged nor active");
        rejected(&mut s, activate("v1", false), "nothing is");

        ok(&mut s, 50, stage("v1", 1));
        rejected(&mut s, report(9, "v1"), "node 9 is unknown");
        rejected(&mut s, activate("v0", false), "staged is v1");
        ok(&mut s, 51, report(1, "v1"));
        ok(&mut s, 52, report(2, "v1"));
        rejected(&mut s, activate("v1", false), "nodes [3]");
        ok(&mut s, 53, report(3, "v1"));
        // Node 4 holds no replica, so it need not report.
        ok(&mut s, 54, activate("v1", false));
        assert_eq!(s.models.active.as_ref().unwrap().version, "v1");
        assert!(s.models.staged.is_none());
        // A retried activation of the active version is a no-op, not an error.
        let before = s.clone();
        assert_eq!(
            s.apply_command(55, activate("v1", false)),
            CommandResult::Ok
        );
        assert_eq!(s, before);
        rejected(&mut s, stage("v1", 1), "already active");
        // Reporting the active version (e.g. after a restart) is accepted.
        ok(&mut s, 56, report(2, "v1"));

        ok(&mut s, 57, stage("v2", 2));
        ok(&mut s, 58, report(1, "v2"));
        rejected(&mut s, activate("v2", false), "nodes [2, 3]");
        ok(&mut s, 59, activate("v2", true));
        assert_eq!(s.models.active.as_ref().unwrap().version, "v2");

        ok(&mut s, 60, stage("v3", 4));
        ok(&mut s, 61, set_status(4, NodeStatus::Draining));
        ok(&mut s, 62, stage("v4", 1));
        ok(&mut s, 63, set_status(4, NodeStatus::Removed));
        rejected(&mut s, stage("v5", 4), "was removed");
        rejected(&mut s, report(4, "v4"), "was removed");
    }

    #[test]
    fn upsert_rules() {
        let mut s = ClusterState::default();
        let up = |items: Vec<ItemRecord>| Command::UpsertItems(items);
        rejected(&mut s, up(vec![]), "no items");
        let too_many: Vec<ItemRecord> = (0..=MAX_ITEMS_PER_COMMAND)
            .map(|i| item(&i.to_string(), vec![1.0]))
            .collect();
        rejected(&mut s, up(too_many), "split into batches");
        rejected(&mut s, up(vec![item("", vec![1.0])]), "id is empty");
        rejected(
            &mut s,
            up(vec![item("a\nb", vec![1.0])]),
            "control character",
        );
        rejected(
            &mut s,
            up(vec![item("a", vec![1.0]), item("a", vec![2.0])]),
            "item a is listed twice",
        );
        rejected(&mut s, up(vec![item("a", vec![])]), "vector of length 0");
        rejected(
            &mut s,
            up(vec![item("a", vec![0.0; MAX_VECTOR_DIM + 1])]),
            "vector of length",
        );
        rejected(
            &mut s,
            up(vec![item("a", vec![1.0, f32::NAN])]),
            "non-finite vector value at position 1",
        );
        rejected(
            &mut s,
            up(vec![item("a", vec![f32::INFINITY])]),
            "non-finite",
        );
        rejected(
            &mut s,
            up(vec![item("a", vec![1.0, 2.0]), item("b", vec![1.0])]),
            "item b has dimension 1 but the catalog uses 2",
        );
        let mut many_cats = item("a", vec![1.0]);
        many_cats.categories = (0..=MAX_CATEGORIES_PER_ITEM)
            .map(|i| i.to_string())
            .collect();
        rejected(&mut s, up(vec![many_cats]), "categories");
        let mut bad_title = item("a", vec![1.0]);
        bad_title.title = Some("x\u{7}".into());
        rejected(&mut s, up(vec![bad_title]), "title");

        assert_eq!(
            ok(
                &mut s,
                70,
                up(vec![item("a", vec![1.0, 2.0]), item("b", vec![3.0, 4.0])])
            ),
            CommandResult::Items {
                applied: 2,
                index: 70
            }
        );
        rejected(&mut s, up(vec![item("c", vec![1.0])]), "catalog uses 2");
        // Once the overlay is empty again a new dimension may start.
        ok(
            &mut s,
            71,
            Command::DeleteItems(vec!["a".into(), "b".into()]),
        );
        ok(&mut s, 72, up(vec![item("c", vec![1.0, 2.0, 3.0])]));
        assert_eq!(s.catalog.dimension(), Some(3));
    }

    #[test]
    fn delete_and_setting_rules() {
        let mut s = ClusterState::default();
        rejected(&mut s, Command::DeleteItems(vec![]), "no item ids");
        rejected(
            &mut s,
            Command::DeleteItems(vec!["a".into(), "a".into()]),
            "item a is listed twice",
        );
        rejected(
            &mut s,
            Command::DeleteItems(vec![String::new()]),
            "id is empty",
        );
        // Deleting an id the overlay never saw records a tombstone (it may be in the bundle).
        assert_eq!(
            ok(&mut s, 5, Command::DeleteItems(vec!["bundle-item".into()])),
            CommandResult::Items {
                applied: 1,
                index: 5
            }
        );
        assert_eq!(s.catalog.deleted_at("bundle-item"), Some(5));

        let set = |k: &str, v: &str| Command::SetSetting {
            key: k.into(),
            value: v.into(),
        };
        rejected(&mut s, set("", "x"), "setting key must be");
        rejected(&mut s, set("a b", "x"), "may only use");
        rejected(
            &mut s,
            set("k", &"x".repeat(MAX_SETTING_VALUE_LEN + 1)),
            "longer than",
        );
        ok(&mut s, 6, set("ranking.max_k", "100"));
        assert_eq!(s.settings["ranking.max_k"], "100");
        ok(&mut s, 7, set("ranking.max_k", ""));
        assert!(s.settings.is_empty(), "an empty value removes the key");
    }

    #[test]
    fn catalog_changes_come_back_in_log_order_once_per_id() {
        let mut s = ClusterState::default();
        ok(
            &mut s,
            3,
            Command::UpsertItems(vec![item("a", vec![1.0]), item("b", vec![2.0])]),
        );
        ok(&mut s, 5, Command::UpsertItems(vec![item("c", vec![3.0])]));
        ok(&mut s, 8, Command::DeleteItems(vec!["b".into()]));
        ok(&mut s, 9, Command::UpsertItems(vec![item("a", vec![9.0])]));

        let all: Vec<(u64, String, bool)> = s
            .catalog
            .changed_since(0)
            .map(|c| {
                (
                    c.index(),
                    c.id().to_string(),
                    matches!(c, CatalogChange::Upsert { .. }),
                )
            })
            .collect();
        assert_eq!(
            all,
            vec![
                (5, "c".into(), true),
                (8, "b".into(), false),
                (9, "a".into(), true)
            ],
            "each id appears once, at its latest write"
        );
        let since5: Vec<u64> = s.catalog.changed_since(5).map(|c| c.index()).collect();
        assert_eq!(since5, vec![8, 9]);
        assert_eq!(s.catalog.changed_since(9).count(), 0);
        assert_eq!(s.catalog.changed_since(u64::MAX).count(), 0);
        match s.catalog.changed_since(8).next() {
            Some(CatalogChange::Upsert { item, index: 9 }) => assert_eq!(item.vector, vec![9.0]),
            other => panic!("unexpected {other:?}"),
        }
        // Re-upserting a deleted id lifts the tombstone.
        ok(&mut s, 10, Command::UpsertItems(vec![item("b", vec![4.0])]));
        assert_eq!(s.catalog.deleted_at("b"), None);
        assert_eq!(s.catalog.get("b").map(|(_, i)| i), Some(10));
        assert_eq!(s.catalog.last_index(), Some(10));
        assert_eq!(s.catalog.changed_since(0).count(), 3);
    }

    #[test]
    fn shards_partition_the_catalog() {
        let mut s = ClusterState::default();
        let items: Vec<ItemRecord> = (0..200)
            .map(|i| item(&format!("item-{i}"), vec![i as f32]))
            .collect();
        ok(&mut s, 1, Command::UpsertItems(items));
        let shards = 4;
        let mut seen = BTreeSet::new();
        for shard in 0..shards {
            for it in s.catalog.items_for_shard(shard, shards) {
                assert_eq!(shard_of(item_key(&it.id), shards), shard);
                assert!(seen.insert(it.id.clone()), "{} in two shards", it.id);
            }
            assert!(
                s.catalog.items_for_shard(shard, shards).count() > 20,
                "hash spreads items"
            );
        }
        assert_eq!(seen.len(), 200);
    }

    #[test]
    fn shard_digests_depend_on_content_not_history() {
        let shards = 3;
        let mut a = ClusterState::default();
        ok(
            &mut a,
            1,
            Command::UpsertItems(vec![item("x", vec![1.0, 0.5])]),
        );
        ok(
            &mut a,
            2,
            Command::UpsertItems(vec![item("y", vec![2.0, 0.5])]),
        );
        ok(
            &mut a,
            3,
            Command::UpsertItems(vec![item("x", vec![1.5, 0.5])]),
        );
        ok(&mut a, 4, Command::DeleteItems(vec!["z".into()]));
        let mut b = ClusterState::default();
        ok(&mut b, 10, Command::DeleteItems(vec!["z".into()]));
        ok(
            &mut b,
            11,
            Command::UpsertItems(vec![item("y", vec![2.0, 0.5]), item("x", vec![1.5, 0.5])]),
        );
        for shard in 0..shards {
            assert_eq!(
                a.digest_shard(shard, shards),
                b.digest_shard(shard, shards),
                "shard {shard}"
            );
        }

        let shard_of_x = shard_of(item_key("x"), shards);
        let before = a.digest_shard(shard_of_x, shards);
        ok(
            &mut a,
            5,
            Command::UpsertItems(vec![item("x", vec![1.5, 0.25])]),
        );
        assert_ne!(
            a.digest_shard(shard_of_x, shards),
            before,
            "a vector change must change the digest"
        );

        let shard_of_w = shard_of(item_key("w"), shards);
        let before = a.digest_shard(shard_of_w, shards);
        ok(&mut a, 6, Command::DeleteItems(vec!["w".into()]));
        assert_ne!(
            a.digest_shard(shard_of_w, shards),
            before,
            "a tombstone must change the digest"
        );
        let untouched: Vec<u32> = (0..shards)
            .filter(|&s| s != shard_of_w && s != shard_of_x)
            .collect();
        for shard in untouched {
            assert_eq!(a.digest_shard(shard, shards), b.digest_shard(shard, shards));
        }
    }

    #[test]
    fn same_log_gives_same_state() {
        let log = [
            Command::RegisterNode(info(1)),
            Command::RegisterNode(info(2)),
            Command::InitShards {
                shards: 1,
                replication: 2,
                placement: vec![vec![1, 2]],
            },
            Command::UpsertItems(vec![item("a", vec![1.0])]),
            Command::SetSetting {
                key: "k".into(),
                value: "v".into(),
            },
            Command::DropReplica { shard: 5, node: 1 },
        ];
        let run = || {
            let mut s = ClusterState::default();
            let results: Vec<CommandResult> = log
                .iter()
                .enumerate()
                .map(|(i, c)| s.apply_command(i as u64, c.clone()))
                .collect();
            (s, results)
        };
        let (s1, r1) = run();
        let (s2, r2) = run();
        assert_eq!(r1, r2);
        assert_eq!(s1.digest(), s2.digest());
        assert!(matches!(r1.last(), Some(CommandResult::Rejected(_))));
        let summary = s1.summary();
        assert_eq!(
            (summary.nodes, summary.shards, summary.replication),
            (2, 1, 2)
        );
        assert_eq!(summary.catalog_items, 1);
    }

    #[test]
    fn membership_registers_unknown_members() {
        let mut s = with_nodes(&[1]);
        s.nodes.get_mut(&1).unwrap().http = "kept:1".into();
        let mut members = BTreeMap::new();
        members.insert(1, info(1));
        let mut two = info(2);
        two.status = NodeStatus::Removed; // ignored: status of record lives in the state
        members.insert(2, two);
        let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
        let membership = Membership::new(vec![voters], members);
        let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 4);
        s.apply_membership(log_id, membership);
        assert_eq!(s.nodes[&2].status, NodeStatus::Active);
        assert_eq!(s.nodes[&2].internal, "10.0.0.2:7000");
        assert_eq!(
            s.nodes[&1].http, "kept:1",
            "known nodes keep their registered info"
        );
        assert_eq!(s.membership.log_id(), &Some(log_id));
    }
}
