//! The placement maps: `MapKind`, `Replica`, `ReplicaState`, `ShardMap`
//! (which nodes hold which unit, in which state) and the replica rules of
//! `ClusterState`: creating a map, adding, re-stating and dropping replicas
//! so that a unit never loses its last Active copy. Two maps use these
//! rules: the item shards' and the user partitions' (`MapKind`); a user
//! partition is placed, moved and drained exactly like a shard.
//!
//! Must not touch: Raft, storage, the network, clocks or randomness (see
//! the `state` module: a pure, deterministic function of the log, with
//! `BTreeMap`s only); nor the transfer queue, whose rules live in
//! `cluster::moves`.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::checks::Verdict;
use super::{ClusterState, NodeStatus, MAX_REPLICATION, MAX_SHARDS};
use crate::cluster::types::NodeId;

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

/// What a map places: item shards (the catalogue's vectors, split by item
/// key) or user partitions (realtime user state, split by user key,
/// `ids::user_partition`).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub enum MapKind {
    #[default]
    Shards,
    UserPartitions,
}

impl MapKind {
    /// Both kinds, in the order status pages list them.
    pub const ALL: [MapKind; 2] = [MapKind::Shards, MapKind::UserPartitions];

    /// `UserPartitions` when a command's `--user-partition(s)` flag is set.
    pub fn of_flag(user_partitions: bool) -> MapKind {
        if user_partitions {
            MapKind::UserPartitions
        } else {
            MapKind::Shards
        }
    }

    /// The noun for one unit, for messages ("shard 3", "user partition 3").
    pub fn unit(self) -> &'static str {
        match self {
            MapKind::Shards => "shard",
            MapKind::UserPartitions => "user partition",
        }
    }

    /// The name of the map, for messages.
    pub fn map_name(self) -> &'static str {
        match self {
            MapKind::Shards => "the shard map",
            MapKind::UserPartitions => "the user partition map",
        }
    }

    /// The command that creates the map.
    fn init_command(self) -> &'static str {
        match self {
            MapKind::Shards => "InitShards",
            MapKind::UserPartitions => "Partitions(Init)",
        }
    }
}

impl fmt::Display for MapKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.unit())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Replica {
    pub node: NodeId,
    pub state: ReplicaState,
}

/// Which nodes hold which unit: item shards, or user partitions in
/// `ClusterState::partition_map` (the fields keep the shard names for
/// both). `replication` is the target replica count; during a move a unit
/// briefly has one more. Part of the snapshot format: fields keep their
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardMap {
    pub shards: u32,
    pub replication: u32,
    /// Index = shard id.
    pub replicas: Vec<Vec<Replica>>,
}

impl ShardMap {
    /// A map with one entry per element of `placement` (the nodes of that
    /// unit's copies), every copy in `state`.
    pub fn from_placement(
        placement: Vec<Vec<NodeId>>,
        replication: u32,
        state: ReplicaState,
    ) -> ShardMap {
        ShardMap {
            shards: placement.len() as u32,
            replication,
            replicas: placement
                .into_iter()
                .map(|nodes| {
                    nodes
                        .into_iter()
                        .map(|node| Replica { node, state })
                        .collect()
                })
                .collect(),
        }
    }

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

impl ClusterState {
    pub(super) fn check_init_map(
        &self,
        kind: MapKind,
        shards: u32,
        replication: u32,
        placement: &[Vec<NodeId>],
    ) -> Verdict {
        if let Some(map) = self.map(kind) {
            return Err(format!(
                "{} already exists ({} {kind}s x {} replicas); the {kind} count is fixed at creation",
                kind.map_name(),
                map.shards,
                map.replication
            ));
        }
        if shards == 0 || shards > MAX_SHARDS {
            return Err(format!("{kind} count {shards} is outside 1..={MAX_SHARDS}"));
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
                "placement lists {} {kind}s but there are {shards}",
                placement.len()
            ));
        }
        for (shard, nodes) in placement.iter().enumerate() {
            if nodes.len() != replication as usize {
                return Err(format!(
                    "{kind} {shard} is placed on {} nodes but replication = {replication}",
                    nodes.len()
                ));
            }
            let mut seen = BTreeSet::new();
            for &node in nodes {
                if !seen.insert(node) {
                    return Err(format!(
                        "{kind} {shard} lists node {node} twice; replicas need distinct nodes"
                    ));
                }
                self.check_can_host(node)?;
            }
        }
        Ok(())
    }

    /// The map of `kind`, if it was created.
    pub fn map(&self, kind: MapKind) -> Option<&ShardMap> {
        match kind {
            MapKind::Shards => self.shard_map.as_ref(),
            MapKind::UserPartitions => self.partition_map.as_ref(),
        }
    }

    pub(in crate::cluster) fn map_mut(&mut self, kind: MapKind) -> Option<&mut ShardMap> {
        match kind {
            MapKind::Shards => self.shard_map.as_mut(),
            MapKind::UserPartitions => self.partition_map.as_mut(),
        }
    }

    /// The map of `kind`, checked to hold `shard`.
    fn map_for(&self, kind: MapKind, shard: u32) -> Result<&ShardMap, String> {
        let map = self.map(kind).ok_or_else(|| {
            format!(
                "{} does not exist yet; run {} first",
                kind.map_name(),
                kind.init_command()
            )
        })?;
        if shard >= map.shards {
            return Err(format!(
                "{kind} {shard} does not exist ({kind}s 0..{})",
                map.shards
            ));
        }
        Ok(map)
    }

    pub(super) fn check_add_replica(
        &self,
        kind: MapKind,
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    ) -> Verdict {
        let map = self.map_for(kind, shard)?;
        if state == ReplicaState::Draining {
            return Err("a new replica starts Loading (or Active), never Draining".to_string());
        }
        if map.replica(shard, node).is_some() {
            return Err(format!(
                "node {node} already holds a replica of {kind} {shard}"
            ));
        }
        self.check_can_host(node)
    }

    pub(super) fn check_replica_state(
        &self,
        kind: MapKind,
        shard: u32,
        node: NodeId,
        state: ReplicaState,
    ) -> Verdict {
        let map = self.map_for(kind, shard)?;
        let replica = map
            .replica(shard, node)
            .ok_or_else(|| format!("node {node} holds no replica of {kind} {shard}"))?;
        match (replica.state, state) {
            (from, to) if from == to => Ok(()),
            (_, ReplicaState::Loading) => Err(format!(
                "the replica of {kind} {shard} on node {node} is {}; a replica never goes back to Loading \
                 (drop it and add it again)",
                replica.state
            )),
            (ReplicaState::Loading, ReplicaState::Draining) => Err(format!(
                "the replica of {kind} {shard} on node {node} is still Loading and serves nothing; drop it instead"
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
                        "{kind} {shard} would have no Active replica; add and activate another replica first"
                    ))
                } else {
                    Ok(())
                }
            }
            // (Draining, Draining) and (Loading, Loading) are caught by the first arm.
            (from, to) => Err(format!("replica state change {from} -> {to} is not allowed")),
        }
    }

    pub(super) fn check_drop_replica(&self, kind: MapKind, shard: u32, node: NodeId) -> Verdict {
        let map = self.map_for(kind, shard)?;
        let replica = map
            .replica(shard, node)
            .ok_or_else(|| format!("node {node} holds no replica of {kind} {shard}"))?;
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
                "{kind} {shard} would have no Active replica left; add and activate another replica first"
            ));
        }
        Ok(())
    }

    pub(super) fn replicas_mut(&mut self, kind: MapKind, shard: u32) -> Option<&mut Vec<Replica>> {
        self.map_mut(kind)?.replicas.get_mut(shard as usize)
    }
}
