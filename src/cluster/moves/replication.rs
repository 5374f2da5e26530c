//! Replication planners: `plan_replication` (the adds and drops that give
//! every shard a new replica count) and `plan_dead_replacement` (moving
//! the copies of members the leader has not reached for too long onto live
//! nodes). Both only plan; the transfers they return go through the queue
//! and its admission rules like any other.
//!
//! Must not touch: Raft, the network, clocks (the caller says which
//! members count as dead) or the state: plans are pure functions of the
//! map, the members and the queue they are given.

use std::collections::{BTreeMap, BTreeSet};

use super::queue::{projected, Transfer};
use crate::cluster::state::{NodeInfo, NodeStatus, Replica, ReplicaState, ShardMap};
use crate::cluster::types::NodeId;

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

/// Setting: "true" or "false", whether the leader balances a skewed
/// placement by itself once the cluster is settled and whole (default: the
/// leader's `cluster.auto_rebalance`).
pub const SETTING_AUTO_REBALANCE: &str = "cluster.auto_rebalance";

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
