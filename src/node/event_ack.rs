//! What an event acknowledgement waits for (`events.ack`): which nodes hold
//! copies of the user partitions a batch touches, and, as the forwards
//! answer, whether the batch can be acknowledged, must still wait, or must
//! be refused. Pure: the forwarding (`events::forward_events`) feeds it the
//! answers and the peers the data plane counts as down.
//!
//! - `one`: every partition of the batch has its events durable on at least
//!   one of its copies (this node's own append counts when it holds one).
//! - `all`: on every copy that is not down, and on at least one copy.
//!
//! A copy that is down (`routing::health`: failed calls in a row, until a
//! probe hears from it) is not waited for; it catches up from this node's
//! log when it answers again (`catchup`). A copy that fails or misses the
//! deadline makes an `all` batch refused: the events are durable on this
//! node and reach that copy by catch-up, but the client was promised every
//! live copy, so it hears that they were not confirmed.
//!
//! Owns: `AckPlan`, `Verdict`, `verdict`. Must not touch: the network, the
//! clock or the partition map's rules.

use crate::cluster::ShardMap;
use crate::config::EventAck;
use std::collections::{BTreeMap, BTreeSet};

/// Per user partition a batch touches, the nodes holding a copy of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckPlan {
    copies: BTreeMap<u32, Vec<u64>>,
}

impl AckPlan {
    /// The copies of the partitions of `users` per `map`; without a map
    /// every member (`members`, this node included) holds every user.
    pub fn new<'a>(
        map: Option<&ShardMap>,
        members: &[u64],
        users: impl IntoIterator<Item = &'a str>,
    ) -> AckPlan {
        let mut copies = BTreeMap::new();
        for user in users {
            match map {
                Some(m) if m.shards > 0 => {
                    let p = crate::ids::user_partition(user, m.shards);
                    copies.entry(p).or_insert_with(|| {
                        m.replicas
                            .get(p as usize)
                            .map(|rs| rs.iter().map(|r| r.node).collect())
                            .unwrap_or_default()
                    });
                }
                _ => {
                    copies.entry(0).or_insert_with(|| members.to_vec());
                }
            }
        }
        AckPlan { copies }
    }

    /// The other nodes whose answer the acknowledgement may wait for.
    #[cfg(test)]
    fn remote_copies(&self, me: u64) -> BTreeSet<u64> {
        self.copies
            .values()
            .flatten()
            .copied()
            .filter(|&n| n != me)
            .collect()
    }
}

/// Which other nodes are sent which events (by index in `users`, one
/// user per event): each goes to the nodes holding a copy of its user's
/// partition per `map` (Loading copies too, so a copy being filled misses
/// nothing new), other than `me`; without a map, every member holds every
/// user. The other nodes get the events later, by catch-up (`catchup`).
pub fn recipients<'a>(
    map: Option<&ShardMap>,
    members: &[u64],
    me: u64,
    users: impl IntoIterator<Item = &'a str>,
) -> BTreeMap<u64, Vec<usize>> {
    let mut out: BTreeMap<u64, Vec<usize>> = BTreeMap::new();
    for (i, user) in users.into_iter().enumerate() {
        let nodes: Vec<u64> = match map {
            Some(m) if m.shards > 0 => m
                .replicas
                .get(crate::ids::user_partition(user, m.shards) as usize)
                .map(|rs| rs.iter().map(|r| r.node).collect())
                .unwrap_or_default(),
            _ => members.to_vec(),
        };
        for n in nodes.into_iter().filter(|&n| n != me) {
            out.entry(n).or_default().push(i);
        }
    }
    out
}

/// Whether a batch can be acknowledged yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Ack,
    Wait,
    /// Why it cannot be, for the client.
    Refuse(String),
}

/// What the answers so far (`confirmed`, `failed`) and the peers counted
/// down decide for `plan` under `mode`, on node `me`. `deadline_passed`:
/// nothing more will be waited for, so a copy that has not answered is a
/// failed one.
pub fn verdict(
    mode: EventAck,
    plan: &AckPlan,
    me: u64,
    confirmed: &BTreeSet<u64>,
    failed: &BTreeSet<u64>,
    down: &BTreeSet<u64>,
    deadline_passed: bool,
) -> Verdict {
    let has = |n: u64| n == me || confirmed.contains(&n);
    let mut waiting = false;
    for (p, copies) in &plan.copies {
        let durable = copies.iter().any(|&n| has(n));
        let pending: Vec<u64> = copies
            .iter()
            .copied()
            .filter(|n| !has(*n) && !failed.contains(n) && !down.contains(n))
            .collect();
        let missed: Vec<u64> = copies
            .iter()
            .copied()
            .filter(|n| failed.contains(n) && !down.contains(n))
            .chain(pending.iter().copied().filter(|_| deadline_passed))
            .collect();
        let done = match mode {
            EventAck::One => durable,
            EventAck::All => durable && pending.is_empty() && missed.is_empty(),
        };
        if done {
            continue;
        }
        let hopeless = match mode {
            EventAck::One => pending.is_empty() || deadline_passed,
            EventAck::All => !missed.is_empty() || pending.is_empty(),
        };
        if !hopeless {
            waiting = true;
            continue;
        }
        let why = if copies.is_empty() {
            format!("user partition {p} has no copy in the partition map")
        } else if missed.is_empty() {
            format!("no live copy of user partition {p} (copies on nodes {copies:?}, all down) took them")
        } else {
            format!("node(s) {missed:?} holding user partition {p} did not confirm them")
        };
        return Verdict::Refuse(why);
    }
    if waiting {
        Verdict::Wait
    } else {
        Verdict::Ack
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{Replica, ReplicaState};

    fn set(v: &[u64]) -> BTreeSet<u64> {
        v.iter().copied().collect()
    }

    /// `verdict` with the confirmed, failed and down nodes as slices.
    fn decide(
        mode: EventAck,
        plan: &AckPlan,
        me: u64,
        [ok, bad, down]: [&[u64]; 3],
        late: bool,
    ) -> Verdict {
        verdict(mode, plan, me, &set(ok), &set(bad), &set(down), late)
    }

    /// 4 partitions, partition p on nodes {p % 3 + 1, (p + 1) % 3 + 1}.
    fn map() -> ShardMap {
        ShardMap {
            shards: 4,
            replication: 2,
            replicas: (0..4u64)
                .map(|p| {
                    [p % 3 + 1, (p + 1) % 3 + 1]
                        .into_iter()
                        .map(|node| Replica {
                            node,
                            state: ReplicaState::Active,
                        })
                        .collect()
                })
                .collect(),
        }
    }

    /// A user of partition `p` (of 4).
    fn user_in(p: u32) -> String {
        (0..)
            .map(|i| format!("u{i}"))
            .find(|u| crate::ids::user_partition(u, 4) == p)
            .unwrap()
    }

    #[test]
    fn each_event_goes_to_the_other_copies_of_its_partition_only() {
        // partition 0 on {1, 2}, 1 on {2, 3}, 2 on {3, 1}
        let users = [user_in(0), user_in(1), user_in(2), user_in(0)];
        let by_node = recipients(
            Some(&map()),
            &[1, 2, 3],
            1,
            users.iter().map(String::as_str),
        );
        let want: BTreeMap<u64, Vec<usize>> = [(2, vec![0, 1, 3]), (3, vec![1, 2])].into();
        assert_eq!(by_node, want);
        // a batch of node 1's own partition 0 goes to 2 alone
        let only = recipients(Some(&map()), &[1, 2, 3], 1, [users[0].as_str()]);
        assert_eq!(only, [(2, vec![0])].into());
        // no map: everyone else gets everything
        let all = recipients(None, &[1, 2, 3], 2, users.iter().map(String::as_str));
        assert_eq!(all, [(1, vec![0, 1, 2, 3]), (3, vec![0, 1, 2, 3])].into());
    }

    #[test]
    fn the_plan_names_the_copies_of_the_partitions_a_batch_touches() {
        let (a, b) = (user_in(0), user_in(1));
        let plan = AckPlan::new(
            Some(&map()),
            &[1, 2, 3],
            [a.as_str(), b.as_str(), a.as_str()],
        );
        // partition 0 on {1, 2}, partition 1 on {2, 3}
        assert_eq!(plan.remote_copies(2), set(&[1, 3]));
        assert_eq!(plan.remote_copies(1), set(&[2, 3]));
        let only_a = AckPlan::new(Some(&map()), &[1, 2, 3], [a.as_str()]);
        assert_eq!(only_a.remote_copies(3), set(&[1, 2]));
        let no_map = AckPlan::new(None, &[1, 2, 3], [a.as_str()]);
        assert_eq!(no_map.remote_copies(1), set(&[2, 3]));
    }

    #[test]
    fn all_waits_for_every_live_copy_and_refuses_a_missing_one() {
        let u = user_in(0); // copies on 1 and 2
        let plan = AckPlan::new(Some(&map()), &[1, 2, 3], [u.as_str()]);
        let v = |me, ok: &[u64], bad: &[u64], down: &[u64], late| {
            decide(EventAck::All, &plan, me, [ok, bad, down], late)
        };
        // on copy 1: waits for 2, acks once 2 confirms
        assert_eq!(v(1, &[], &[], &[], false), Verdict::Wait);
        assert_eq!(v(1, &[2], &[], &[], false), Verdict::Ack);
        // a non-copy (3) waits for both copies
        assert_eq!(v(3, &[2], &[], &[], false), Verdict::Wait);
        assert_eq!(v(3, &[1, 2], &[], &[], false), Verdict::Ack);
        // copy 2 failed: refused, naming it
        match v(1, &[], &[2], &[], false) {
            Verdict::Refuse(why) => {
                assert!(why.contains("[2]") && why.contains("partition 0"), "{why}")
            }
            other => panic!("{other:?}"),
        }
        // no answer by the deadline is a failure too
        assert!(matches!(v(1, &[], &[], &[], true), Verdict::Refuse(_)));
        // a copy counted down is not waited for ...
        assert_eq!(v(1, &[], &[], &[2], false), Verdict::Ack);
        assert_eq!(v(3, &[1], &[], &[2], false), Verdict::Ack);
        // ... but some copy must have them
        match v(3, &[], &[], &[1, 2], false) {
            Verdict::Refuse(why) => assert!(why.contains("no live copy"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn one_acks_on_the_first_durable_copy() {
        let (a, b) = (user_in(0), user_in(1)); // {1, 2} and {2, 3}
        let plan = AckPlan::new(Some(&map()), &[1, 2, 3], [a.as_str(), b.as_str()]);
        let v = |me, ok: &[u64], bad: &[u64], down: &[u64], late| {
            decide(EventAck::One, &plan, me, [ok, bad, down], late)
        };
        // node 2 holds both partitions: its own append is enough
        assert_eq!(v(2, &[], &[], &[], false), Verdict::Ack);
        // node 1 holds partition 0 only: waits for a copy of partition 1
        assert_eq!(v(1, &[], &[], &[], false), Verdict::Wait);
        assert_eq!(v(1, &[3], &[2], &[], false), Verdict::Ack);
        // every copy of partition 1 failed or is down: refused
        assert!(matches!(v(1, &[], &[2, 3], &[], false), Verdict::Refuse(_)));
        assert!(matches!(v(1, &[], &[2], &[3], false), Verdict::Refuse(_)));
        assert!(matches!(v(1, &[], &[], &[], true), Verdict::Refuse(_)));
    }
}
