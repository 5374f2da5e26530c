//! The replicated control state of a funnel cluster and the rules for
//! changing it.
//!
//! Owns: `ClusterState` (members, shard map, user partition map, model
//! versions, the realtime item catalog overlay, settings, the queues of
//! shard and partition transfers, whose rules live in `moves`), the `Command`s that change it, and
//! `ClusterState::apply_command`, which validates every command against the
//! current state and either applies it whole or rejects it with the state
//! unchanged. Must not touch: Raft, storage, the network, clocks or
//! randomness: every node applies the same log to the same state, so this
//! code has to be a pure, deterministic function of (state, command, index).
//! That is also why all maps are `BTreeMap` (iteration order is part of the
//! result, e.g. of rejection messages and digests).
//!
//! The state is split by aggregate, one file each; every file keeps the
//! rules above. Each file holds its types and the `ClusterState` checks
//! and accessors that concern them:
//!
//! - this file: the limits (`MAX_*`), `ClusterState`, `ClusterView`,
//!   `StateSummary` and the whole-state digest;
//! - `command`: `Command`, `CommandResult` and `apply_command`, which runs
//!   a command's check and then applies it;
//! - `checks`: the stateless field checks (addresses, text, item ids,
//!   settings);
//! - `members`: `NodeInfo`, `NodeStatus`, the member rules and Raft
//!   membership entries;
//! - `shard_map`: `MapKind`, `Replica`, `ReplicaState`, `ShardMap` and the
//!   replica rules, for both maps (item shards and user partitions);
//! - `models`: `ModelRef`, `ModelVersions` and the rollout rules;
//! - `catalog`: the realtime item overlay (`ItemRecord`, `Catalog`,
//!   `CatalogChange`), its upsert rules and per-shard digests.
//!
//! The rules of the transfer queue live in `cluster::moves`.

mod catalog;
mod checks;
mod command;
mod members;
mod models;
#[cfg(test)]
mod partition_tests;
mod shard_map;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::moves::Transfer;
use super::types::{LogId, NodeId, StoredMembership};

pub use catalog::{Catalog, CatalogChange, ItemRecord};
pub use command::{Command, CommandResult, MapOp};
pub use members::{NodeInfo, NodeStatus};
pub use models::{ModelRef, ModelVersions};
pub use shard_map::{MapKind, Replica, ReplicaState, ShardMap};

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
    /// Which nodes hold which user partition (`MapKind::UserPartitions`).
    /// Added after the fields above: the snapshot format keeps their order,
    /// and a snapshot written before them decodes through `LegacyState`.
    pub partition_map: Option<ShardMap>,
    /// Queued user partition transfers, oldest first.
    pub partition_transfers: Vec<Transfer>,
}

/// The state as snapshots written before user partitions encoded it
/// (`state_machine` falls back to it).
#[derive(Deserialize)]
pub(in crate::cluster) struct LegacyState {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    nodes: BTreeMap<NodeId, NodeInfo>,
    shard_map: Option<ShardMap>,
    models: ModelVersions,
    catalog: Catalog,
    settings: BTreeMap<String, String>,
    transfers: Vec<Transfer>,
}

impl From<LegacyState> for ClusterState {
    fn from(l: LegacyState) -> Self {
        ClusterState {
            last_applied: l.last_applied,
            membership: l.membership,
            nodes: l.nodes,
            shard_map: l.shard_map,
            models: l.models,
            catalog: l.catalog,
            settings: l.settings,
            transfers: l.transfers,
            partition_map: None,
            partition_transfers: Vec::new(),
        }
    }
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
    pub partition_map: Option<ShardMap>,
    /// Queued user partition transfers with their phase.
    pub partition_transfers: Vec<(Transfer, super::moves::Phase)>,
}

impl ClusterState {
    pub fn view(&self) -> ClusterView {
        ClusterView {
            nodes: self.nodes.clone(),
            shard_map: self.shard_map.clone(),
            models: self.models.clone(),
            settings: self.settings.clone(),
            summary: self.summary(),
            transfers: self.transfer_phases(MapKind::Shards),
            partition_map: self.partition_map.clone(),
            partition_transfers: self.transfer_phases(MapKind::UserPartitions),
        }
    }
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
    pub user_partitions: u32,
    pub user_replication: u32,
}

impl ClusterState {
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
            user_partitions: self.partition_map.as_ref().map_or(0, |m| m.shards),
            user_replication: self.partition_map.as_ref().map_or(0, |m| m.replication),
        }
    }
}
