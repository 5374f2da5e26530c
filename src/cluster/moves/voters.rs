//! The Raft voter rule: how many members vote (`voter_target`), which ones
//! should (`desired_voters`), which learners have caught up enough to be
//! promoted (`caught_up`), and the voter set to move to now
//! (`next_voters`).
//!
//! Must not touch: Raft itself (the leader's driver applies the change),
//! the network or clocks: these are pure functions of the membership,
//! the members' statuses and the replication progress they are given.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::state::{NodeInfo, NodeStatus};
use crate::cluster::types::NodeId;

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
