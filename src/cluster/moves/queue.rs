//! The transfer queue: `Transfer`, `Phase` (read off the shard map, never
//! stored), the projected map once the queue has run, the admission rules
//! `ClusterState` applies to `QueueTransfers`, `DrainNode`,
//! `SetReplication` and `CancelTransfers`, and `next_steps`, the pure step
//! function the leader's driver follows (see the `moves` module for the
//! steps of a transfer).
//!
//! Must not touch: Raft, the network, clocks (the caller says which drains
//! waited long enough) or randomness: the admission rules run inside the
//! state machine and must be deterministic.

use std::collections::BTreeSet;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::cluster::placement::Move;
use crate::cluster::state::{
    ClusterState, Command, MapKind, MapOp, NodeStatus, Replica, ReplicaState, ShardMap,
    MAX_REPLICATION, MAX_SHARDS,
};
use crate::cluster::types::NodeId;

/// Most transfers one command may queue (every replica of the largest
/// cluster moving once).
pub const MAX_TRANSFERS_PER_COMMAND: usize = (MAX_SHARDS * MAX_REPLICATION) as usize;

/// Setting: most transfers in flight at once (default: the leader's
/// `cluster.max_concurrent_transfers`).
pub const SETTING_MAX_CONCURRENT: &str = "transfers.max_concurrent";
/// Setting: how long a Draining replica keeps answering before it is
/// dropped, in milliseconds (default `DEFAULT_DRAIN_GRACE_MS`).
pub const SETTING_DRAIN_GRACE_MS: &str = "transfers.drain_grace_ms";
/// Long enough for every coordinator to apply the Draining state and
/// rebuild its replica sets, and for queries already sent to finish.
pub const DEFAULT_DRAIN_GRACE_MS: u64 = 2000;

/// One queued change to a shard's replicas: a move (`from` and `to`), an
/// added copy (`to` only) or a dropped copy (`from` only). The same type
/// queues user partition copies (`ClusterState::partition_transfers`,
/// where `shard` is the partition): which queue it sits in says which.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Transfer {
    pub shard: u32,
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
}

impl Transfer {
    pub fn add(shard: u32, to: NodeId) -> Self {
        Transfer {
            shard,
            from: None,
            to: Some(to),
        }
    }

    pub fn remove(shard: u32, from: NodeId) -> Self {
        Transfer {
            shard,
            from: Some(from),
            to: None,
        }
    }

    fn nodes(&self) -> impl Iterator<Item = NodeId> {
        self.from.into_iter().chain(self.to)
    }
}

impl From<Move> for Transfer {
    fn from(m: Move) -> Self {
        Transfer {
            shard: m.shard,
            from: Some(m.from),
            to: Some(m.to),
        }
    }
}

impl Transfer {
    /// The transfer in words, naming its unit as `kind` does ("user
    /// partition 3 node 1 -> node 2").
    pub fn describe(&self, kind: MapKind) -> String {
        let s = self.shard;
        match (self.from, self.to) {
            (Some(a), Some(b)) => format!("{kind} {s} node {a} -> node {b}"),
            (None, Some(b)) => format!("{kind} {s} add a copy on node {b}"),
            (Some(a), None) => format!("{kind} {s} drop the copy on node {a}"),
            (None, None) => format!("{kind} {s} (no-op)"),
        }
    }
}

/// A shard transfer in words (`describe` for other kinds).
impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe(MapKind::Shards))
    }
}

/// Where a transfer stands, read off the shard map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Phase {
    /// Waiting for a free transfer slot.
    Queued,
    /// The target copy is loading.
    Loading,
    /// The target serves; the source is next to drain (or drop).
    Switching,
    /// The source answers no new queries and will be dropped.
    Draining,
    /// Nothing left to do.
    Done,
    /// The map went somewhere this transfer cannot follow (e.g. someone
    /// drained the target); the driver cancels it.
    Stuck,
}

impl Phase {
    pub fn in_flight(self) -> bool {
        matches!(self, Phase::Loading | Phase::Switching | Phase::Draining)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

/// The phase of `t` in `map`.
pub fn phase(map: &ShardMap, t: &Transfer) -> Phase {
    let state_on = |n: Option<NodeId>| n.and_then(|n| map.replica(t.shard, n)).map(|r| r.state);
    let (from, to) = (state_on(t.from), state_on(t.to));
    let target_ready = match (t.to, to) {
        (None, _) => true,
        (Some(_), None) => return Phase::Queued,
        (Some(_), Some(ReplicaState::Loading)) => return Phase::Loading,
        (Some(_), Some(ReplicaState::Active)) => false,
        (Some(_), Some(ReplicaState::Draining)) => return Phase::Stuck,
    };
    match from {
        None => Phase::Done,
        Some(ReplicaState::Draining) => Phase::Draining,
        Some(ReplicaState::Active) if target_ready && t.to.is_none() => Phase::Queued,
        Some(_) => Phase::Switching,
    }
}

/// `map` as it will be once every transfer in `queue` is done: sources
/// gone, targets present (as Active).
pub fn projected(map: &ShardMap, queue: &[Transfer]) -> ShardMap {
    let mut out = map.clone();
    for t in queue {
        let Some(rs) = out.replicas.get_mut(t.shard as usize) else {
            continue;
        };
        if let Some(from) = t.from {
            rs.retain(|r| r.node != from);
        }
        if let Some(to) = t.to {
            if !rs.iter().any(|r| r.node == to) {
                rs.push(Replica {
                    node: to,
                    state: ReplicaState::Active,
                });
            }
        }
    }
    out
}

/// (shard, node) pairs a queued transfer is working on; another transfer
/// may not touch them until it is done.
fn busy_pairs(queue: &[Transfer]) -> BTreeSet<(u32, NodeId)> {
    queue
        .iter()
        .flat_map(|t| t.nodes().map(move |n| (t.shard, n)))
        .collect()
}

impl ClusterState {
    /// Checks that `new` can join the transfer queue; on success returns the
    /// projected map with the queue and `new` done.
    pub(in crate::cluster) fn check_transfers(
        &self,
        kind: MapKind,
        new: &[Transfer],
    ) -> Result<ShardMap, String> {
        let map = self
            .map(kind)
            .ok_or_else(|| format!("{} does not exist yet; nothing to move", kind.map_name()))?;
        if new.len() > MAX_TRANSFERS_PER_COMMAND {
            return Err(format!(
                "{} transfers in one command; the limit is {MAX_TRANSFERS_PER_COMMAND}",
                new.len()
            ));
        }
        let queue = self.queue(kind);
        let mut busy = busy_pairs(queue);
        let mut proj = projected(map, queue);
        for t in new {
            let s = t.shard;
            if s >= map.shards {
                return Err(format!(
                    "{kind} {s} does not exist ({kind}s 0..{})",
                    map.shards
                ));
            }
            if t.from.is_none() && t.to.is_none() {
                return Err(format!(
                    "transfer of {kind} {s} names neither a source nor a target"
                ));
            }
            if t.from.is_some() && t.from == t.to {
                return Err(format!(
                    "{kind} {s}: source and target are both node {}; pick another target",
                    t.to.unwrap_or_default()
                ));
            }
            for n in t.nodes() {
                if !busy.insert((s, n)) {
                    return Err(format!(
                        "{kind} {s} on node {n} already has a pending transfer; wait for it \
                         (funnel admin status) or cancel it (funnel admin cancel-moves)"
                    ));
                }
            }
            if let Some(from) = t.from {
                if proj.replica(s, from).is_none() {
                    return Err(format!("node {from} holds no replica of {kind} {s}"));
                }
            }
            if let Some(to) = t.to {
                self.check_can_host(to)?;
                if proj.replica(s, to).is_some() {
                    return Err(format!(
                        "node {to} already holds a replica of {kind} {s}; replicas of a {kind} live on distinct nodes"
                    ));
                }
            } else if proj.replicas_of(s).map_or(0, |r| r.len()) <= 1 {
                return Err(format!(
                    "dropping node {}'s copy would leave {kind} {s} without replicas",
                    t.from.unwrap_or_default()
                ));
            }
            proj = projected(&proj, std::slice::from_ref(t));
        }
        Ok(proj)
    }

    /// `SetReplication`: `replication` must fit the Active nodes and the
    /// transfers must bring every shard to exactly that many copies.
    pub(in crate::cluster) fn check_set_replication(
        &self,
        kind: MapKind,
        replication: u32,
        transfers: &[Transfer],
    ) -> Result<(), String> {
        if replication == 0 || replication > MAX_REPLICATION {
            return Err(format!(
                "replication {replication} is outside 1..={MAX_REPLICATION}"
            ));
        }
        let active = self.active_node_ids().len();
        if replication as usize > active {
            return Err(format!(
                "replication {replication} needs that many Active nodes but there are {active}; add nodes first"
            ));
        }
        let proj = self.check_transfers(kind, transfers)?;
        for (s, rs) in proj.replicas.iter().enumerate() {
            if rs.len() != replication as usize {
                return Err(format!(
                    "after these transfers {kind} {s} would have {} copies, not {replication}; plan again from the current state",
                    rs.len()
                ));
            }
        }
        Ok(())
    }

    /// `DrainNode`: the node must be live and the transfers must take every
    /// shard replica off it (its user partition copies leave through their
    /// own queue, `Command::Partitions`).
    pub(in crate::cluster) fn check_drain_node(
        &self,
        id: NodeId,
        transfers: &[Transfer],
    ) -> Result<(), String> {
        match self.nodes.get(&id).map(|n| n.status) {
            None => return Err(format!("node {id} is unknown")),
            Some(NodeStatus::Removed) => return Err(format!("node {id} was already removed")),
            Some(_) => {}
        }
        if transfers.iter().any(|t| t.to == Some(id)) {
            return Err(format!(
                "a transfer moves a replica onto node {id}, which is being drained"
            ));
        }
        let proj = self.check_transfers(MapKind::Shards, transfers)?;
        let left = proj.shards_on(id);
        if !left.is_empty() {
            return Err(format!(
                "node {id} would still hold shards {left:?} after these transfers; plan the drain again from the current state"
            ));
        }
        Ok(())
    }

    /// `CancelTransfers`: each must be queued.
    pub(in crate::cluster) fn check_cancel_transfers(
        &self,
        kind: MapKind,
        cancel: &[Transfer],
    ) -> Result<(), String> {
        if cancel.is_empty() {
            return Err("no transfers given".to_string());
        }
        for t in cancel {
            if !self.queue(kind).contains(t) {
                return Err(format!("{} is not queued", t.describe(kind)));
            }
        }
        Ok(())
    }

    /// The transfer queue of the map of `kind`.
    pub fn queue(&self, kind: MapKind) -> &[Transfer] {
        match kind {
            MapKind::Shards => &self.transfers,
            MapKind::UserPartitions => &self.partition_transfers,
        }
    }

    pub(in crate::cluster) fn queue_mut(&mut self, kind: MapKind) -> &mut Vec<Transfer> {
        match kind {
            MapKind::Shards => &mut self.transfers,
            MapKind::UserPartitions => &mut self.partition_transfers,
        }
    }

    /// Drops finished transfers from the queues. Runs after every change of
    /// a map, so each queue holds exactly the unfinished ones.
    pub(in crate::cluster) fn retire_transfers(&mut self) {
        if let Some(map) = &self.shard_map {
            self.transfers.retain(|t| phase(map, t) != Phase::Done);
        }
        if let Some(map) = &self.partition_map {
            self.partition_transfers
                .retain(|t| phase(map, t) != Phase::Done);
        }
    }

    /// Every queued transfer of the map of `kind` with its phase, in queue
    /// order.
    pub fn transfer_phases(&self, kind: MapKind) -> Vec<(Transfer, Phase)> {
        let Some(map) = self.map(kind) else {
            return Vec::new();
        };
        self.queue(kind)
            .iter()
            .map(|t| (*t, phase(map, t)))
            .collect()
    }
}

/// The commands that advance the queue one step, in queue order: at most
/// `max_in_flight` transfers run at once; a Draining source is dropped once
/// `drained(shard, node)` says it waited long enough; stuck transfers are
/// cancelled. Each command is re-validated when applied, so proposing a
/// step twice (e.g. after a leader change) is harmless.
pub fn next_steps(
    kind: MapKind,
    map: &ShardMap,
    queue: &[Transfer],
    max_in_flight: usize,
    drained: impl Fn(u32, NodeId) -> bool,
) -> Vec<Command> {
    let phases: Vec<Phase> = queue.iter().map(|t| phase(map, t)).collect();
    let mut in_flight = phases.iter().filter(|p| p.in_flight()).count();
    let mut steps = Vec::new();
    let mut stuck = Vec::new();
    for (t, p) in queue.iter().zip(phases) {
        let shard = t.shard;
        match p {
            Phase::Queued if in_flight < max_in_flight => match (t.to, t.from) {
                (Some(to), _) => {
                    in_flight += 1;
                    steps.push(MapOp::AddReplica {
                        shard,
                        node: to,
                        state: ReplicaState::Loading,
                    });
                }
                (None, Some(from)) => {
                    // a drop-only transfer starts by draining, which needs
                    // another Active copy to keep the shard served
                    let others = map
                        .replicas_of(shard)
                        .unwrap_or(&[])
                        .iter()
                        .any(|r| r.node != from && r.state == ReplicaState::Active);
                    if others {
                        in_flight += 1;
                        steps.push(MapOp::SetReplicaState {
                            shard,
                            node: from,
                            state: ReplicaState::Draining,
                        });
                    }
                }
                (None, None) => {}
            },
            Phase::Switching => {
                let Some(from) = t.from else { continue };
                match map.replica(shard, from).map(|r| r.state) {
                    // a copy still loading serves nothing: drop it outright
                    Some(ReplicaState::Loading) => {
                        steps.push(MapOp::DropReplica { shard, node: from })
                    }
                    Some(_) => steps.push(MapOp::SetReplicaState {
                        shard,
                        node: from,
                        state: ReplicaState::Draining,
                    }),
                    None => {}
                }
            }
            Phase::Draining => {
                if let Some(from) = t.from {
                    if drained(shard, from) {
                        steps.push(MapOp::DropReplica { shard, node: from });
                    }
                }
            }
            Phase::Stuck => stuck.push(*t),
            Phase::Queued | Phase::Loading | Phase::Done => {}
        }
    }
    if !stuck.is_empty() {
        steps.push(MapOp::CancelTransfers(stuck));
    }
    steps
        .into_iter()
        .map(|op| Command::for_map(kind, op))
        .collect()
}
