//! Shard transfers: the replicated queue of replica moves, adds and drops
//! that operators ask for (`move-shard`, `rebalance`, `set-replication`,
//! `remove-node --drain`), the rules that admit them, and the pure step
//! function the leader's driver follows to carry them out.
//!
//! A transfer never stops queries. Its steps, each a separate Raft command
//! re-validated by the state machine:
//!
//! 1. `AddReplica(to, Loading)`: the target loads the shard (not queried yet);
//! 2. the target catches up with the catalogue and marks itself `Active`
//!    (`node::cluster_link`), coordinators start querying it;
//! 3. `SetReplicaState(from, Draining)`: coordinators stop sending new
//!    queries to the old copy, which still answers the ones in flight;
//! 4. after a grace period, `DropReplica(from)`: the old node unloads it.
//!
//! The phase of a transfer is derived from the shard map, never stored, so
//! a new leader picks up where the old one stopped. A transfer leaves the
//! queue when the map shows it done (see `ClusterState::retire_transfers`).
//!
//! Owns: `Transfer`, `Phase`, admission checks of new transfers, the
//! projected map (the map once the queue has run), the step function, the
//! replication planner and the Raft voter rule (who votes, and when a
//! learner is ready to). Must not touch: Raft, the
//! network, clocks (the caller says which drains waited long enough).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use serde::{Deserialize, Serialize};

use super::placement::Move;
use super::state::{
    ClusterState, Command, NodeInfo, NodeStatus, Replica, ReplicaState, ShardMap, MAX_REPLICATION,
    MAX_SHARDS,
};
use super::types::NodeId;

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
/// added copy (`to` only) or a dropped copy (`from` only).
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

impl fmt::Display for Transfer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.from, self.to) {
            (Some(a), Some(b)) => write!(f, "shard {} node {a} -> node {b}", self.shard),
            (None, Some(b)) => write!(f, "shard {} add a copy on node {b}", self.shard),
            (Some(a), None) => write!(f, "shard {} drop the copy on node {a}", self.shard),
            (None, None) => write!(f, "shard {} (no-op)", self.shard),
        }
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
    pub(super) fn check_transfers(&self, new: &[Transfer]) -> Result<ShardMap, String> {
        let map = self
            .shard_map
            .as_ref()
            .ok_or_else(|| "the shard map does not exist yet; nothing to move".to_string())?;
        if new.len() > MAX_TRANSFERS_PER_COMMAND {
            return Err(format!(
                "{} transfers in one command; the limit is {MAX_TRANSFERS_PER_COMMAND}",
                new.len()
            ));
        }
        let mut busy = busy_pairs(&self.transfers);
        let mut proj = projected(map, &self.transfers);
        for t in new {
            let s = t.shard;
            if s >= map.shards {
                return Err(format!(
                    "shard {s} does not exist (shards 0..{})",
                    map.shards
                ));
            }
            if t.from.is_none() && t.to.is_none() {
                return Err(format!(
                    "transfer of shard {s} names neither a source nor a target"
                ));
            }
            if t.from.is_some() && t.from == t.to {
                return Err(format!(
                    "shard {s}: source and target are both node {}; pick another target",
                    t.to.unwrap_or_default()
                ));
            }
            for n in t.nodes() {
                if !busy.insert((s, n)) {
                    return Err(format!(
                        "shard {s} on node {n} already has a pending transfer; wait for it \
                         (funnel admin status) or cancel it (funnel admin cancel-moves)"
                    ));
                }
            }
            if let Some(from) = t.from {
                if proj.replica(s, from).is_none() {
                    return Err(format!("node {from} holds no replica of shard {s}"));
                }
            }
            if let Some(to) = t.to {
                self.check_can_host(to)?;
                if proj.replica(s, to).is_some() {
                    return Err(format!(
                        "node {to} already holds a replica of shard {s}; replicas of a shard live on distinct nodes"
                    ));
                }
            } else if proj.replicas_of(s).map_or(0, |r| r.len()) <= 1 {
                return Err(format!(
                    "dropping node {}'s copy would leave shard {s} without replicas",
                    t.from.unwrap_or_default()
                ));
            }
            proj = projected(&proj, std::slice::from_ref(t));
        }
        Ok(proj)
    }

    /// `SetReplication`: `replication` must fit the Active nodes and the
    /// transfers must bring every shard to exactly that many copies.
    pub(super) fn check_set_replication(
        &self,
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
        let proj = self.check_transfers(transfers)?;
        for (s, rs) in proj.replicas.iter().enumerate() {
            if rs.len() != replication as usize {
                return Err(format!(
                    "after these transfers shard {s} would have {} copies, not {replication}; plan again from the current state",
                    rs.len()
                ));
            }
        }
        Ok(())
    }

    /// `DrainNode`: the node must be live and the transfers must take every
    /// replica off it.
    pub(super) fn check_drain_node(
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
        let proj = self.check_transfers(transfers)?;
        let left = proj.shards_on(id);
        if !left.is_empty() {
            return Err(format!(
                "node {id} would still hold shards {left:?} after these transfers; plan the drain again from the current state"
            ));
        }
        Ok(())
    }

    /// `CancelTransfers`: each must be queued.
    pub(super) fn check_cancel_transfers(&self, cancel: &[Transfer]) -> Result<(), String> {
        if cancel.is_empty() {
            return Err("no transfers given".to_string());
        }
        for t in cancel {
            if !self.transfers.contains(t) {
                return Err(format!("{t} is not queued"));
            }
        }
        Ok(())
    }

    /// Drops finished transfers from the queue. Runs after every change of
    /// the shard map, so the queue holds exactly the unfinished ones.
    pub(super) fn retire_transfers(&mut self) {
        if let Some(map) = &self.shard_map {
            self.transfers.retain(|t| phase(map, t) != Phase::Done);
        }
    }

    /// Every queued transfer with its phase, in queue order.
    pub fn transfer_phases(&self) -> Vec<(Transfer, Phase)> {
        let Some(map) = &self.shard_map else {
            return Vec::new();
        };
        self.transfers.iter().map(|t| (*t, phase(map, t))).collect()
    }
}

/// The commands that advance the queue one step, in queue order: at most
/// `max_in_flight` transfers run at once; a Draining source is dropped once
/// `drained(shard, node)` says it waited long enough; stuck transfers are
/// cancelled. Each command is re-validated when applied, so proposing a
/// step twice (e.g. after a leader change) is harmless.
pub fn next_steps(
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
                    steps.push(Command::AddReplica {
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
                        steps.push(Command::SetReplicaState {
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
                        steps.push(Command::DropReplica { shard, node: from })
                    }
                    Some(_) => steps.push(Command::SetReplicaState {
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
                        steps.push(Command::DropReplica { shard, node: from });
                    }
                }
            }
            Phase::Stuck => stuck.push(*t),
            Phase::Queued | Phase::Loading | Phase::Done => {}
        }
    }
    if !stuck.is_empty() {
        steps.push(Command::CancelTransfers(stuck));
    }
    steps
}

/// Plans the adds and drops that give every shard exactly `replication`
/// copies on distinct nodes. Adds go to the Active node with the fewest
/// replicas that lacks the shard; drops take first copies on nodes that are
/// not Active, then copies on the fullest nodes (ties: highest id). Counts
/// include the transfers planned so far, so the result stays balanced.
pub fn plan_replication(
    map: &ShardMap,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    replication: u32,
) -> Result<Vec<Transfer>, String> {
    let active: Vec<NodeId> = nodes
        .values()
        .filter(|n| n.status == NodeStatus::Active)
        .map(|n| n.id)
        .collect();
    if replication == 0 || replication as usize > active.len() {
        return Err(format!(
            "replication {replication} must be between 1 and the number of Active nodes ({})",
            active.len()
        ));
    }
    let want = replication as usize;
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    for (n, c) in map.replica_counts() {
        *load.entry(n).or_insert(0) += c;
    }
    let is_active = |n: NodeId| active.contains(&n);
    let mut plan = Vec::new();
    for (s, rs) in map.replicas.iter().enumerate() {
        let shard = s as u32;
        let mut holders: Vec<NodeId> = rs.iter().map(|r| r.node).collect();
        while holders.len() < want {
            let to = active
                .iter()
                .copied()
                .filter(|n| !holders.contains(n))
                .min_by_key(|n| (load[n], *n))
                .ok_or_else(|| format!("shard {shard} has no Active node left to take a copy"))?;
            holders.push(to);
            *load.entry(to).or_insert(0) += 1;
            plan.push(Transfer::add(shard, to));
        }
        while holders.len() > want {
            let (i, from) = holders
                .iter()
                .copied()
                .enumerate()
                .max_by_key(|&(_, n)| (!is_active(n), load.get(&n).copied().unwrap_or(0), n))
                .unwrap_or((0, holders[0]));
            holders.remove(i);
            if let Some(c) = load.get_mut(&from) {
                *c = c.saturating_sub(1);
            }
            plan.push(Transfer::remove(shard, from));
        }
    }
    Ok(plan)
}

/// Setting: seconds a member may stay unreachable from the leader before
/// its replicas are re-placed on live nodes; 0 = never (default: the
/// leader's `cluster.replace_dead_after`).
pub const SETTING_REPLACE_DEAD_AFTER: &str = "cluster.replace_dead_after";

/// What the leader does about members it has not reached for longer than
/// `cluster.replace_dead_after` (see `plan_dead_replacement`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadPlan {
    /// Queued transfers onto a dead node: they can never finish.
    pub cancel: Vec<Transfer>,
    /// (shard, dead node) copies still Active while another live copy is
    /// Active: marked Draining so coordinators stop trying them.
    pub drain: Vec<(u32, NodeId)>,
    /// Moves of dead nodes' copies onto live nodes.
    pub transfers: Vec<Transfer>,
    /// Shards with a copy on a dead node and no live node left to take a
    /// copy (every live Active node already holds one).
    pub unplaceable: Vec<u32>,
}

impl DeadPlan {
    pub fn is_empty(&self) -> bool {
        self.cancel.is_empty() && self.drain.is_empty() && self.transfers.is_empty()
    }
}

/// Plans the re-replication of every shard copy held by a node in `dead`:
/// each such copy moves (`Transfer { from: dead, to: live }`) to the live
/// Active node with the fewest copies (ties: lowest id) that lacks the
/// shard, so the ordinary transfer steps add and activate the new copy and
/// then drop the dead one. Shards with another transfer queued are left for
/// a later round (the admission rules refuse overlapping transfers);
/// transfers onto dead nodes are cancelled first. Applying the result twice
/// is harmless: once the copies moved there is nothing left to plan.
pub fn plan_dead_replacement(
    map: &ShardMap,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    queue: &[Transfer],
    dead: &BTreeSet<NodeId>,
) -> DeadPlan {
    let mut plan = DeadPlan::default();
    if dead.is_empty() {
        return plan;
    }
    let (cancel, keep): (Vec<Transfer>, Vec<Transfer>) = queue
        .iter()
        .partition(|t| t.to.is_some_and(|n| dead.contains(&n)));
    plan.cancel = cancel;
    let busy: BTreeSet<u32> = keep.iter().map(|t| t.shard).collect();
    let live: Vec<NodeId> = nodes
        .values()
        .filter(|n| n.status == NodeStatus::Active && !dead.contains(&n.id))
        .map(|n| n.id)
        .collect();
    let mut load: BTreeMap<NodeId, usize> = live.iter().map(|&n| (n, 0)).collect();
    for (n, c) in projected(map, &keep).replica_counts() {
        if let Some(l) = load.get_mut(&n) {
            *l += c;
        }
    }
    for (s, rs) in map.replicas.iter().enumerate() {
        let shard = s as u32;
        let on_dead: Vec<&Replica> = rs.iter().filter(|r| dead.contains(&r.node)).collect();
        if on_dead.is_empty() {
            continue;
        }
        let live_active = rs
            .iter()
            .filter(|r| !dead.contains(&r.node) && r.state == ReplicaState::Active)
            .count();
        if live_active > 0 {
            plan.drain.extend(
                on_dead
                    .iter()
                    .filter(|r| r.state == ReplicaState::Active)
                    .map(|r| (shard, r.node)),
            );
        }
        if busy.contains(&shard) {
            continue;
        }
        let mut holders: BTreeSet<NodeId> = rs.iter().map(|r| r.node).collect();
        for r in on_dead {
            let to = live
                .iter()
                .copied()
                .filter(|n| !holders.contains(n))
                .min_by_key(|n| (load[n], *n));
            match to {
                Some(to) => {
                    holders.insert(to);
                    *load.entry(to).or_insert(0) += 1;
                    plan.transfers.push(Transfer {
                        shard,
                        from: Some(r.node),
                        to: Some(to),
                    });
                }
                None => {
                    if !plan.unplaceable.contains(&shard) {
                        plan.unplaceable.push(shard);
                    }
                }
            }
        }
    }
    plan
}

/// Target number of Raft voters for `members` live members: 5 once there
/// are 5, else 3 once there are 3, else all of them. Odd counts tolerate
/// as many failures as the next even count at lower cost; beyond 5, more
/// voters only slow commits, so further nodes stay learners.
pub fn voter_target(members: usize) -> usize {
    match members {
        n if n >= 5 => 5,
        n if n >= 3 => 3,
        n => n,
    }
}

/// The voter set the leader should move to, given the current voters and
/// learners and the members' statuses: keep Active voters, demote voters
/// that are Draining or Removed, promote Active learners (lowest id first)
/// up to `voter_target`, and demote the highest ids (never `leader`) above
/// it. Never returns an empty set; returns `voters` unchanged when nothing
/// should change.
pub fn desired_voters(
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    leader: NodeId,
) -> BTreeSet<NodeId> {
    // a member the state does not know yet is kept as it is
    let live = |n: &NodeId| nodes.get(n).is_none_or(|i| i.status == NodeStatus::Active);
    let members = voters.iter().chain(learners).filter(|n| live(n)).count();
    let target = voter_target(members);
    let mut out: BTreeSet<NodeId> = voters.iter().copied().filter(|n| live(n)).collect();
    for l in learners.iter().filter(|n| live(n)) {
        if out.len() >= target {
            break;
        }
        out.insert(*l);
    }
    while out.len() > target {
        let Some(&drop) = out.iter().rev().find(|&&n| n != leader) else {
            break;
        };
        out.remove(&drop);
    }
    if out.is_empty() {
        return voters.clone();
    }
    out
}

/// The members whose log the leader has seen reach `bar` (the leader's
/// last applied index), from `matched` (openraft's replication progress:
/// member -> highest matched index). Only these learners may become
/// voters: a voter that is down or far behind adds nothing to a quorum
/// but its absence, and one still catching up from empty storage refuses
/// votes (`cluster::vote_fence`).
pub fn caught_up(matched: &BTreeMap<NodeId, Option<u64>>, bar: Option<u64>) -> BTreeSet<NodeId> {
    matched
        .iter()
        .filter(|(_, m)| match (m, bar) {
            (Some(m), Some(bar)) => *m >= bar,
            (Some(_), None) => true,
            (None, _) => false,
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The voter set to move to now: `desired_voters`, except that a learner
/// is promoted only once it is in `ready` (`caught_up`). While a learner
/// the rule wants is still behind, the ready ones are promoted as far as
/// the rule allows, but no voter is dropped: a replacement must be ready
/// before the voter it replaces goes, and a member that never comes up
/// must not hold up the others (a cluster forming from one node grows as
/// its members arrive).
pub fn next_voters(
    voters: &BTreeSet<NodeId>,
    learners: &BTreeSet<NodeId>,
    nodes: &BTreeMap<NodeId, NodeInfo>,
    leader: NodeId,
    ready: &BTreeSet<NodeId>,
) -> BTreeSet<NodeId> {
    let want = desired_voters(voters, learners, nodes, leader);
    if want.iter().all(|n| voters.contains(n) || ready.contains(n)) {
        return want;
    }
    let ready_learners: BTreeSet<NodeId> = learners.intersection(ready).copied().collect();
    let partial = desired_voters(voters, &ready_learners, nodes, leader);
    if voters.is_subset(&partial) {
        partial
    } else {
        voters.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::placement::{initial_placement, plan_drain, plan_rebalance};
    use crate::cluster::state::CommandResult;

    fn info(id: NodeId) -> NodeInfo {
        NodeInfo::new(id, format!("10.0.0.{id}:7000"), "", "")
    }

    /// A state with Active nodes `ids` and `shards` x `replication`
    /// replicas, all Active, placed by `initial_placement`.
    fn cluster(ids: &[NodeId], shards: u32, replication: u32) -> ClusterState {
        let mut st = ClusterState::default();
        let mut index = 1;
        for &id in ids {
            ok(&mut st, index, Command::RegisterNode(info(id)));
            index += 1;
        }
        let placement = initial_placement(shards, replication, ids).unwrap();
        ok(
            &mut st,
            index,
            Command::InitShards {
                shards,
                replication,
                placement: placement.clone(),
            },
        );
        for (s, nodes) in placement.iter().enumerate() {
            for &node in nodes {
                ok(
                    &mut st,
                    index,
                    Command::SetReplicaState {
                        shard: s as u32,
                        node,
                        state: ReplicaState::Active,
                    },
                );
            }
        }
        st
    }

    fn ok(st: &mut ClusterState, index: u64, cmd: Command) {
        let r = st.apply_command(index, cmd.clone());
        assert!(!matches!(r, CommandResult::Rejected(_)), "{cmd:?}: {r:?}");
    }

    fn rejected(st: &mut ClusterState, cmd: Command, needle: &str) {
        let before = st.clone();
        match st.apply_command(99, cmd.clone()) {
            CommandResult::Rejected(why) => assert!(why.contains(needle), "{cmd:?}: {why}"),
            other => panic!("{cmd:?} was applied: {other:?}"),
        }
        assert_eq!(*st, before, "a rejected command changed the state");
    }

    /// Runs the driver to completion as the leader would: every step is
    /// applied, targets "load" at once (Loading -> Active) and drains count
    /// as waited out. Asserts the shard is never left without an Active
    /// copy and no node ever holds two copies of one shard.
    fn drive(st: &mut ClusterState, max_in_flight: usize) -> usize {
        let mut rounds = 0;
        while !st.transfers.is_empty() {
            rounds += 1;
            assert!(
                rounds < 1000,
                "the queue does not drain: {:?}",
                st.transfers
            );
            let map = st.shard_map.clone().unwrap();
            let in_flight = st
                .transfer_phases()
                .iter()
                .filter(|(_, p)| p.in_flight())
                .count();
            assert!(in_flight <= max_in_flight, "{in_flight} in flight");
            let steps = next_steps(&map, &st.transfers, max_in_flight, |_, _| true);
            for cmd in steps {
                ok(st, 100 + rounds as u64, cmd);
            }
            // what every target node does by itself: finish loading
            let loading: Vec<(u32, NodeId)> = st
                .shard_map
                .as_ref()
                .unwrap()
                .replicas
                .iter()
                .enumerate()
                .flat_map(|(s, rs)| {
                    rs.iter()
                        .filter(|r| r.state == ReplicaState::Loading)
                        .map(move |r| (s as u32, r.node))
                })
                .collect();
            for (shard, node) in loading {
                ok(
                    st,
                    100,
                    Command::SetReplicaState {
                        shard,
                        node,
                        state: ReplicaState::Active,
                    },
                );
            }
            let map = st.shard_map.as_ref().unwrap();
            for (s, rs) in map.replicas.iter().enumerate() {
                assert!(
                    rs.iter().any(|r| r.state == ReplicaState::Active),
                    "shard {s} lost its last Active copy: {rs:?}"
                );
                let distinct: BTreeSet<_> = rs.iter().map(|r| r.node).collect();
                assert_eq!(distinct.len(), rs.len(), "shard {s}: {rs:?}");
            }
        }
        rounds
    }

    #[test]
    fn a_move_goes_through_loading_active_draining_dropped() {
        let mut st = cluster(&[1, 2, 3], 3, 2);
        // initial_placement(3, 2, [1,2,3]): shard 0 on 1,2
        let t = Transfer {
            shard: 0,
            from: Some(1),
            to: Some(3),
        };
        ok(&mut st, 10, Command::QueueTransfers(vec![t]));
        fn map_of(st: &ClusterState) -> ShardMap {
            st.shard_map.clone().unwrap()
        }
        assert_eq!(phase(&map_of(&st), &t), Phase::Queued);

        let steps = next_steps(&map_of(&st), &st.transfers, 1, |_, _| false);
        assert_eq!(
            steps,
            vec![Command::AddReplica {
                shard: 0,
                node: 3,
                state: ReplicaState::Loading
            }]
        );
        ok(&mut st, 11, steps[0].clone());
        assert_eq!(phase(&map_of(&st), &t), Phase::Loading);
        assert!(
            next_steps(&map_of(&st), &st.transfers, 1, |_, _| true).is_empty(),
            "nothing to do while the target loads"
        );

        ok(
            &mut st,
            12,
            Command::SetReplicaState {
                shard: 0,
                node: 3,
                state: ReplicaState::Active,
            },
        );
        assert_eq!(phase(&map_of(&st), &t), Phase::Switching);
        let steps = next_steps(&map_of(&st), &st.transfers, 1, |_, _| false);
        assert_eq!(
            steps,
            vec![Command::SetReplicaState {
                shard: 0,
                node: 1,
                state: ReplicaState::Draining
            }]
        );
        ok(&mut st, 13, steps[0].clone());
        assert_eq!(phase(&map_of(&st), &t), Phase::Draining);
        assert!(
            next_steps(&map_of(&st), &st.transfers, 1, |_, _| false).is_empty(),
            "the drop waits for the grace period"
        );
        let steps = next_steps(&map_of(&st), &st.transfers, 1, |s, n| (s, n) == (0, 1));
        assert_eq!(steps, vec![Command::DropReplica { shard: 0, node: 1 }]);
        ok(&mut st, 14, steps[0].clone());
        assert!(
            st.transfers.is_empty(),
            "a finished transfer leaves the queue"
        );
        let holders: Vec<NodeId> = map_of(&st).replicas[0].iter().map(|r| r.node).collect();
        assert_eq!(holders, vec![2, 3]);
    }

    #[test]
    fn queued_transfers_are_validated() {
        let mut st = cluster(&[1, 2, 3], 3, 2);
        let mv = |shard, from, to| Transfer {
            shard,
            from: Some(from),
            to: Some(to),
        };
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(7, 1, 3)]),
            "shard 7 does not exist",
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(0, 3, 1)]),
            "node 3 holds no replica of shard 0",
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(0, 1, 2)]),
            "already holds a replica",
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(0, 1, 9)]),
            "node 9 is unknown",
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(0, 1, 1)]),
            "source and target are both",
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![Transfer {
                shard: 0,
                from: None,
                to: None,
            }]),
            "neither a source nor a target",
        );
        ok(&mut st, 10, Command::QueueTransfers(vec![mv(0, 1, 3)]));
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(0, 3, 1)]),
            "already has a pending transfer",
        );
        // a Draining node takes no new replicas
        ok(
            &mut st,
            11,
            Command::SetNodeStatus {
                id: 2,
                status: NodeStatus::Draining,
            },
        );
        rejected(
            &mut st,
            Command::QueueTransfers(vec![mv(2, 3, 2)]),
            "only Active nodes take new replicas",
        );
        // dropping the last copy is refused
        let mut single = cluster(&[1, 2], 2, 1);
        rejected(
            &mut single,
            Command::QueueTransfers(vec![Transfer::remove(0, 1)]),
            "without replicas",
        );
        rejected(
            &mut st,
            Command::CancelTransfers(vec![mv(1, 2, 1)]),
            "is not queued",
        );
        ok(&mut st, 12, Command::CancelTransfers(vec![mv(0, 1, 3)]));
        assert!(st.transfers.is_empty());
    }

    #[test]
    fn a_rebalance_after_adding_a_node_runs_to_a_balanced_map() {
        let mut st = cluster(&[1, 2, 3], 12, 2);
        ok(&mut st, 50, Command::RegisterNode(info(4)));
        let plan = plan_rebalance(st.shard_map.as_ref().unwrap(), &st.nodes, usize::MAX);
        assert_eq!(
            plan.len(),
            6,
            "24 replicas over 4 nodes: 2 moves off each old node"
        );
        let transfers: Vec<Transfer> = plan.into_iter().map(Transfer::from).collect();
        ok(&mut st, 51, Command::QueueTransfers(transfers));
        drive(&mut st, 2);
        let counts = st.shard_map.as_ref().unwrap().replica_counts();
        assert_eq!(
            counts.values().copied().collect::<Vec<_>>(),
            vec![6, 6, 6, 6]
        );
        let map = st.shard_map.as_ref().unwrap();
        assert!(map
            .replicas
            .iter()
            .flatten()
            .all(|r| r.state == ReplicaState::Active));
    }

    #[test]
    fn draining_a_node_empties_it_and_then_it_can_be_removed() {
        let mut st = cluster(&[1, 2, 3, 4], 8, 2);
        let mut draining = st.nodes.clone();
        draining.get_mut(&2).unwrap().status = NodeStatus::Draining;
        let plan = plan_drain(st.shard_map.as_ref().unwrap(), &draining, 2).unwrap();
        let transfers: Vec<Transfer> = plan.into_iter().map(Transfer::from).collect();
        rejected(
            &mut st,
            Command::DrainNode {
                id: 2,
                transfers: transfers[1..].to_vec(),
            },
            "would still hold shards",
        );
        ok(&mut st, 60, Command::DrainNode { id: 2, transfers });
        assert_eq!(st.nodes[&2].status, NodeStatus::Draining);
        rejected(
            &mut st,
            Command::SetNodeStatus {
                id: 2,
                status: NodeStatus::Removed,
            },
            "still holds replicas",
        );
        drive(&mut st, 3);
        assert!(st.shard_map.as_ref().unwrap().shards_on(2).is_empty());
        ok(
            &mut st,
            61,
            Command::SetNodeStatus {
                id: 2,
                status: NodeStatus::Removed,
            },
        );
    }

    #[test]
    fn set_replication_adds_and_drops_copies_on_distinct_nodes() {
        let mut st = cluster(&[1, 2, 3, 4], 6, 2);
        let map = st.shard_map.clone().unwrap();
        rejected(
            &mut st,
            Command::SetReplication {
                replication: 5,
                transfers: Vec::new(),
            },
            "needs that many Active nodes",
        );
        rejected(
            &mut st,
            Command::SetReplication {
                replication: 3,
                transfers: Vec::new(),
            },
            "would have 2 copies, not 3",
        );
        let up = plan_replication(&map, &st.nodes, 3).unwrap();
        assert_eq!(up.len(), 6);
        ok(
            &mut st,
            70,
            Command::SetReplication {
                replication: 3,
                transfers: up,
            },
        );
        drive(&mut st, 2);
        let map = st.shard_map.clone().unwrap();
        assert_eq!(map.replication, 3);
        assert!(map.replicas.iter().all(|rs| rs.len() == 3));
        let counts: Vec<usize> = map.replica_counts().values().copied().collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );

        let down = plan_replication(&map, &st.nodes, 1).unwrap();
        assert_eq!(down.len(), 12);
        ok(
            &mut st,
            71,
            Command::SetReplication {
                replication: 1,
                transfers: down,
            },
        );
        drive(&mut st, 4);
        let map = st.shard_map.clone().unwrap();
        assert!(map.replicas.iter().all(|rs| rs.len() == 1));
        let counts: Vec<usize> = map.replica_counts().values().copied().collect();
        assert!(
            counts.iter().max().unwrap() - counts.iter().min().unwrap() <= 1,
            "{counts:?}"
        );
    }

    #[test]
    fn stuck_transfers_are_cancelled() {
        let mut st = cluster(&[1, 2, 3], 3, 2);
        let t = Transfer {
            shard: 0,
            from: Some(1),
            to: Some(3),
        };
        ok(&mut st, 10, Command::QueueTransfers(vec![t]));
        ok(
            &mut st,
            11,
            Command::AddReplica {
                shard: 0,
                node: 3,
                state: ReplicaState::Active,
            },
        );
        // an operator drains the target by hand
        ok(
            &mut st,
            12,
            Command::SetReplicaState {
                shard: 0,
                node: 3,
                state: ReplicaState::Draining,
            },
        );
        let map = st.shard_map.clone().unwrap();
        assert_eq!(phase(&map, &t), Phase::Stuck);
        let steps = next_steps(&map, &st.transfers, 2, |_, _| true);
        assert_eq!(steps, vec![Command::CancelTransfers(vec![t])]);
    }

    /// Members `ids`, those in `draining` Draining, the rest Active.
    fn nodes(ids: &[NodeId], draining: &[NodeId]) -> BTreeMap<NodeId, NodeInfo> {
        ids.iter()
            .map(|&id| {
                let mut i = info(id);
                if draining.contains(&id) {
                    i.status = NodeStatus::Draining;
                }
                (id, i)
            })
            .collect()
    }

    fn set(v: &[NodeId]) -> BTreeSet<NodeId> {
        v.iter().copied().collect()
    }

    #[test]
    fn voters_follow_the_three_or_five_rule() {
        // a 4th node stays a learner
        assert_eq!(
            desired_voters(&set(&[1, 2, 3]), &set(&[4]), &nodes(&[1, 2, 3, 4], &[]), 1),
            set(&[1, 2, 3])
        );
        // the 5th promotes both learners
        assert_eq!(
            desired_voters(
                &set(&[1, 2, 3]),
                &set(&[4, 5]),
                &nodes(&[1, 2, 3, 4, 5], &[]),
                1
            ),
            set(&[1, 2, 3, 4, 5])
        );
        // a 6th stays a learner
        assert_eq!(
            desired_voters(
                &set(&[1, 2, 3, 4, 5]),
                &set(&[6]),
                &nodes(&[1, 2, 3, 4, 5, 6], &[]),
                1
            ),
            set(&[1, 2, 3, 4, 5])
        );
        // a draining voter is replaced by a learner
        assert_eq!(
            desired_voters(&set(&[1, 2, 3]), &set(&[4]), &nodes(&[1, 2, 3, 4], &[2]), 1),
            set(&[1, 3, 4])
        );
        // 5 voters, one draining, no learner: down to 3, keeping the leader
        assert_eq!(
            desired_voters(
                &set(&[1, 2, 3, 4, 5]),
                &set(&[]),
                &nodes(&[1, 2, 3, 4, 5], &[3]),
                5
            ),
            set(&[1, 2, 5])
        );
        // one or two nodes: all of them vote
        assert_eq!(
            desired_voters(&set(&[1]), &set(&[2]), &nodes(&[1, 2], &[]), 1),
            set(&[1, 2])
        );
        assert_eq!(voter_target(4), 3);
        assert_eq!(voter_target(7), 5);
    }

    #[test]
    fn learners_are_promoted_only_once_caught_up() {
        let matched = BTreeMap::from([(1, Some(40)), (2, Some(40)), (3, Some(7)), (4, None)]);
        assert_eq!(caught_up(&matched, Some(40)), set(&[1, 2]));
        assert_eq!(caught_up(&matched, None), set(&[1, 2, 3]));
        // a cluster forming from node 1: node 2 is ready, node 3 is not up
        // yet; node 2 is promoted without waiting for node 3
        let all3 = nodes(&[1, 2, 3], &[]);
        assert_eq!(
            next_voters(&set(&[1]), &set(&[2, 3]), &all3, 1, &set(&[1, 2])),
            set(&[1, 2])
        );
        // then node 3 catches up
        assert_eq!(
            next_voters(&set(&[1, 2]), &set(&[3]), &all3, 1, &set(&[1, 2, 3])),
            set(&[1, 2, 3])
        );
        // nobody ready: nothing changes
        assert_eq!(
            next_voters(&set(&[1]), &set(&[2, 3]), &all3, 1, &set(&[1])),
            set(&[1])
        );
        // a draining voter is not dropped before its replacement is ready
        let four = nodes(&[1, 2, 3, 4], &[2]);
        assert_eq!(
            next_voters(&set(&[1, 2, 3]), &set(&[4]), &four, 1, &set(&[1, 2, 3])),
            set(&[1, 2, 3])
        );
        assert_eq!(
            next_voters(&set(&[1, 2, 3]), &set(&[4]), &four, 1, &set(&[1, 2, 3, 4])),
            set(&[1, 3, 4])
        );
        // demotions that need no learner go ahead
        assert_eq!(
            next_voters(
                &set(&[1, 2, 3, 4, 5]),
                &set(&[]),
                &nodes(&[1, 2, 3, 4, 5], &[3]),
                5,
                &set(&[])
            ),
            set(&[1, 2, 5])
        );
    }

    #[test]
    fn dead_node_copies_move_to_live_nodes_and_the_queue_drains() {
        let mut st = cluster(&[1, 2, 3], 6, 2);
        let dead = BTreeSet::from([3]);
        let map = st.shard_map.clone().unwrap();
        let on3 = map.shards_on(3);
        assert!(!on3.is_empty());
        let plan = plan_dead_replacement(&map, &st.nodes, &st.transfers, &dead);
        assert!(
            plan.cancel.is_empty() && plan.unplaceable.is_empty(),
            "{plan:?}"
        );
        // every copy on node 3 moves to the live node that lacks the shard
        assert_eq!(plan.transfers.len(), on3.len(), "{plan:?}");
        for t in &plan.transfers {
            assert_eq!(t.from, Some(3));
            let to = t.to.unwrap();
            assert!(to != 3 && map.replica(t.shard, to).is_none(), "{t}");
        }
        // the dead copies are drained at once: the other copy is Active
        assert_eq!(plan.drain, on3.iter().map(|&s| (s, 3)).collect::<Vec<_>>());
        for (shard, node) in plan.drain.clone() {
            ok(
                &mut st,
                50,
                Command::SetReplicaState {
                    shard,
                    node,
                    state: ReplicaState::Draining,
                },
            );
        }
        ok(&mut st, 51, Command::QueueTransfers(plan.transfers.clone()));
        drive(&mut st, 2);
        let map = st.shard_map.clone().unwrap();
        assert!(map.shards_on(3).is_empty(), "{map:?}");
        for rs in &map.replicas {
            assert_eq!(rs.len(), 2);
            assert!(rs
                .iter()
                .all(|r| r.state == ReplicaState::Active && r.node != 3));
        }
        // nothing left to do: planning again is a no-op
        let again = plan_dead_replacement(&map, &st.nodes, &st.transfers, &dead);
        assert!(again.is_empty(), "{again:?}");
    }

    #[test]
    fn dead_node_planning_cancels_transfers_onto_it_and_skips_busy_shards() {
        let mut st = cluster(&[1, 2, 3, 4], 4, 2);
        let map = st.shard_map.clone().unwrap();
        // a shard not on 4 starts moving onto 4, which then dies
        let s = (0..4).find(|&s| map.replica(s, 4).is_none()).unwrap();
        let from = map.replicas_of(s).unwrap()[0].node;
        let onto4 = Transfer {
            shard: s,
            from: Some(from),
            to: Some(4),
        };
        ok(&mut st, 40, Command::QueueTransfers(vec![onto4]));
        ok(
            &mut st,
            41,
            Command::AddReplica {
                shard: s,
                node: 4,
                state: ReplicaState::Loading,
            },
        );
        let dead = BTreeSet::from([4]);
        let map = st.shard_map.clone().unwrap();
        let plan = plan_dead_replacement(&map, &st.nodes, &st.transfers, &dead);
        assert_eq!(plan.cancel, vec![onto4]);
        // the Loading copy on 4 is re-placed too (and never drained: it
        // serves nothing)
        assert!(plan
            .transfers
            .iter()
            .any(|t| t.shard == s && t.from == Some(4)));
        assert!(!plan.drain.contains(&(s, 4)));
        ok(&mut st, 42, Command::CancelTransfers(plan.cancel.clone()));
        ok(&mut st, 43, Command::QueueTransfers(plan.transfers.clone()));
        drive(&mut st, 2);
        let map = st.shard_map.clone().unwrap();
        assert!(map.shards_on(4).is_empty(), "{map:?}");
        assert!(map.replicas.iter().all(|rs| rs.len() >= 2));
        // with only as many live nodes as copies, there is nowhere to go
        let st2 = cluster(&[1, 2], 2, 2);
        let m2 = st2.shard_map.clone().unwrap();
        let p2 = plan_dead_replacement(&m2, &st2.nodes, &[], &BTreeSet::from([2]));
        assert!(p2.transfers.is_empty());
        assert_eq!(p2.unplaceable, vec![0, 1]);
        // no dead node: nothing to do
        assert!(plan_dead_replacement(&m2, &st2.nodes, &[], &BTreeSet::new()).is_empty());
    }
}
