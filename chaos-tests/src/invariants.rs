//! The invariants a chaos run must keep, as pure functions over the recorded
//! history and what the harness observed of the cluster after the heal.
//!
//! Owns: the checks and their violation messages.
//! Must not touch: processes or the network; the scenario runner gathers
//! [`FinalObservations`] and passes them in, so every checker can be fed a
//! crafted history in the unit tests below and shown to fail.

use crate::history::{History, OpKind, Outcome};
use serde::Serialize;
use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Violation {
    pub invariant: &'static str,
    pub detail: String,
}

impl std::fmt::Display for Violation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.invariant, self.detail)
    }
}

fn violation(invariant: &'static str, detail: String) -> Violation {
    Violation { invariant, detail }
}

/// What the harness saw of the cluster after every fault was healed.
#[derive(Debug, Clone, Serialize)]
pub struct FinalObservations {
    /// Item id -> the nodes whose copy of the item's shard were asked, and
    /// whether that copy holds the item. Every copy the shard map places.
    pub items: BTreeMap<String, Vec<(u64, bool)>>,
    /// Shard -> [(node, digest)] over every copy the shard map places.
    pub digests: BTreeMap<u32, Vec<(u64, String)>>,
    pub shards: u32,
    /// Copies each shard should have (the map's replication factor).
    pub replication: usize,
    /// (node, log text) of every node's stdout and stderr over the run.
    pub logs: Vec<(u64, String)>,
    /// After the heal: a fresh upsert, then reading it back from every copy
    /// and a recommend on every node. `Err` says which step failed.
    pub fresh_write_and_read: Result<(), String>,
    /// The heal itself (restart, resume, clear the network faults, wait
    /// for every node to serve): `Err` says what did not come back.
    pub heal: Result<(), String>,
    /// (node, exit status) of members that exited without the harness
    /// stopping them.
    pub unexpected_exits: Vec<(u64, String)>,
    /// User id -> what each copy of the user's partition counts.
    pub user_events: BTreeMap<String, UserEventsSeen>,
}

/// One user's event count before the run (the bundle's) and on each copy
/// of its user partition after the heal (None: that copy did not answer).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UserEventsSeen {
    pub base: u64,
    pub copies: Vec<(u64, Option<u64>)>,
}

impl Default for FinalObservations {
    fn default() -> Self {
        FinalObservations {
            items: BTreeMap::new(),
            digests: BTreeMap::new(),
            shards: 0,
            replication: 0,
            logs: Vec::new(),
            fresh_write_and_read: Err("not attempted".into()),
            heal: Err("not attempted".into()),
            unexpected_exits: Vec::new(),
            user_events: BTreeMap::new(),
        }
    }
}

/// No acknowledged event is lost and none is counted twice: after the heal
/// every copy of a user's partition counts at least the bundle's events
/// plus the acknowledged ones, and at most plus every one sent (an event
/// whose answer was lost may still have been applied).
pub fn no_acknowledged_event_lost(h: &History, f: &FinalObservations) -> Vec<Violation> {
    const NAME: &str = "no acknowledged event lost or counted twice";
    let mut out = Vec::new();
    for (user, (acked, sent)) in h.events_by_user() {
        let Some(seen) = f.user_events.get(&user) else {
            if acked > 0 {
                out.push(violation(
                    NAME,
                    format!("user {user}: {acked} events acknowledged but no copy was read"),
                ));
            }
            continue;
        };
        if seen.copies.is_empty() && acked > 0 {
            out.push(violation(
                NAME,
                format!("user {user}: {acked} events acknowledged but its partition has no copy"),
            ));
        }
        let (lo, hi) = (seen.base + acked, seen.base + sent);
        for (node, count) in &seen.copies {
            match count {
                Some(c) if (lo..=hi).contains(c) => {}
                Some(c) => out.push(violation(
                    NAME,
                    format!(
                        "user {user} on node {node}: {c} events, expected {lo}..={hi} ({} before the run, {acked} acknowledged of {sent} sent)",
                        seen.base
                    ),
                )),
                None => out.push(violation(
                    NAME,
                    format!("user {user}: node {node} holds a copy but did not answer"),
                )),
            }
        }
    }
    out
}

/// No acknowledged upsert is lost: every copy of its shard holds it.
pub fn no_acknowledged_write_lost(h: &History, f: &FinalObservations) -> Vec<Violation> {
    let mut out = Vec::new();
    for id in h.acknowledged_items() {
        match f.items.get(id) {
            None => out.push(violation(
                "no acknowledged write lost",
                format!("item {id} was acknowledged but never read back"),
            )),
            Some(copies) if copies.is_empty() => out.push(violation(
                "no acknowledged write lost",
                format!("item {id} was acknowledged but no copy of its shard answered"),
            )),
            Some(copies) => {
                let missing: Vec<u64> = copies.iter().filter(|c| !c.1).map(|c| c.0).collect();
                if !missing.is_empty() {
                    out.push(violation(
                        "no acknowledged write lost",
                        format!("item {id} was acknowledged but is missing on node(s) {missing:?}"),
                    ));
                }
            }
        }
    }
    out
}

/// Every shard has `replication` copies after the heal and they are equal.
pub fn replica_digests_equal(f: &FinalObservations) -> Vec<Violation> {
    let mut out = Vec::new();
    for shard in 0..f.shards {
        let copies = f.digests.get(&shard).map(Vec::as_slice).unwrap_or(&[]);
        if copies.len() != f.replication {
            out.push(violation(
                "replica digests equal after heal",
                format!(
                    "shard {shard} has {} answering copies, want {}: {copies:?}",
                    copies.len(),
                    f.replication
                ),
            ));
        } else if copies.iter().any(|c| c.1 != copies[0].1) {
            out.push(violation(
                "replica digests equal after heal",
                format!("shard {shard} copies differ: {copies:?}"),
            ));
        }
    }
    out
}

/// At most one leader per term: no two nodes claim to lead the same term,
/// and no two nodes name different leaders for the same term.
pub fn at_most_one_leader_per_term(h: &History) -> Vec<Violation> {
    let mut leaders: BTreeMap<u64, BTreeSet<u64>> = BTreeMap::new();
    for o in &h.leaders {
        if o.role == "Leader" {
            leaders.entry(o.term).or_default().insert(o.node);
        }
        if let Some(l) = o.leader {
            // a node reports the leader of its current term
            leaders.entry(o.term).or_default().insert(l);
        }
    }
    leaders
        .into_iter()
        .filter(|(_, nodes)| nodes.len() > 1)
        .map(|(term, nodes)| {
            violation(
                "at most one leader per term",
                format!("term {term} had leaders {nodes:?}"),
            )
        })
        .collect()
}

/// Every recommend is answered before its deadline (plus `slack` for the
/// client and the loaded machine), with 200: full, or coverage < 1 with
/// reasons; never a hang or a 5xx. Requests to a node a fault made
/// unreachable (killed, paused) while they were in flight are exempt.
pub fn recommends_answered_by_deadline(h: &History, slack: Duration) -> Vec<Violation> {
    let mut out = Vec::new();
    for op in h.ops.iter().filter(|o| o.kind == OpKind::Recommend) {
        let exempt = h
            .faults
            .iter()
            .any(|f| f.unreachable.contains(&op.node) && f.overlaps(op.start, op.end));
        if exempt {
            continue;
        }
        let deadline = op.deadline.unwrap_or(Duration::from_secs(1));
        let at = format!("node {} at {:.3}s", op.node, op.start.as_secs_f64());
        match &op.outcome {
            Outcome::Ok(_) => {
                if op.latency() > deadline + slack {
                    out.push(violation(
                        "recommend answered before its deadline",
                        format!(
                            "{at}: answered after {:?}, deadline {deadline:?}",
                            op.latency()
                        ),
                    ));
                }
                let coverage = op.coverage.unwrap_or(0.0);
                if coverage < 1.0 && op.degraded.is_empty() {
                    out.push(violation(
                        "recommend answered before its deadline",
                        format!("{at}: coverage {coverage} without a degraded reason"),
                    ));
                }
            }
            other => out.push(violation(
                "recommend answered before its deadline",
                format!("{at}: {other:?} after {:?}", op.latency()),
            )),
        }
    }
    out
}

/// No node panicked.
pub fn no_panics(f: &FinalObservations) -> Vec<Violation> {
    f.logs
        .iter()
        .filter_map(|(node, log)| {
            log.lines().find(|l| l.contains("panicked at")).map(|l| {
                violation(
                    "no panic in any node log",
                    format!("node {node}: {}", l.trim()),
                )
            })
        })
        .collect()
}

/// The cluster came back whole when the faults ended.
pub fn healed(f: &FinalObservations) -> Vec<Violation> {
    match &f.heal {
        Ok(()) => Vec::new(),
        Err(e) => vec![violation("the cluster heals after the faults", e.clone())],
    }
}

/// No node's process ended unless the harness ended it.
pub fn no_node_exited_by_itself(f: &FinalObservations) -> Vec<Violation> {
    f.unexpected_exits
        .iter()
        .map(|(node, status)| {
            violation(
                "no node exits by itself",
                format!("node {node} exited on its own ({status}); see its log"),
            )
        })
        .collect()
}

/// After the heal a fresh write and a read both succeed.
pub fn fresh_write_and_read_after_heal(f: &FinalObservations) -> Vec<Violation> {
    match &f.fresh_write_and_read {
        Ok(()) => Vec::new(),
        Err(e) => vec![violation("fresh write and read after heal", e.clone())],
    }
}

/// Every invariant, in a fixed order.
pub fn check_all(h: &History, f: &FinalObservations, slack: Duration) -> Vec<Violation> {
    let mut out = no_acknowledged_write_lost(h, f);
    out.extend(no_acknowledged_event_lost(h, f));
    out.extend(replica_digests_equal(f));
    out.extend(at_most_one_leader_per_term(h));
    out.extend(recommends_answered_by_deadline(h, slack));
    out.extend(no_panics(f));
    out.extend(fresh_write_and_read_after_heal(f));
    out.extend(healed(f));
    out.extend(no_node_exited_by_itself(f));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{FaultWindow, LeaderObs, OpRecord};

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn op(kind: OpKind, node: u64, start: u64, end: u64, outcome: Outcome) -> OpRecord {
        OpRecord {
            kind,
            node,
            start: ms(start),
            end: ms(end),
            outcome,
            deadline: (kind == OpKind::Recommend).then(|| ms(1000)),
            coverage: (kind == OpKind::Recommend).then_some(1.0),
            degraded: Vec::new(),
            item: None,
            user: None,
        }
    }

    fn upsert(id: &str, outcome: Outcome) -> OpRecord {
        let mut o = op(OpKind::Upsert, 1, 0, 10, outcome);
        o.item = Some(id.into());
        o
    }

    fn obs(node: u64, term: u64, role: &str, leader: Option<u64>) -> LeaderObs {
        LeaderObs {
            at: ms(0),
            node,
            term,
            role: role.into(),
            leader,
        }
    }

    fn healthy_final() -> FinalObservations {
        FinalObservations {
            shards: 2,
            replication: 2,
            digests: [
                (0, vec![(1, "a".into()), (2, "a".into())]),
                (1, vec![(2, "b".into()), (3, "b".into())]),
            ]
            .into(),
            fresh_write_and_read: Ok(()),
            heal: Ok(()),
            ..Default::default()
        }
    }

    #[test]
    fn a_failed_heal_and_a_node_that_died_on_its_own_are_violations() {
        let h = History::default();
        assert!(check_all(&h, &healthy_final(), ms(100)).is_empty());
        let f = FinalObservations {
            heal: Err("node 2 did not serve again within 120 s".into()),
            unexpected_exits: vec![(3, "signal: 6 (SIGABRT)".into())],
            ..healthy_final()
        };
        let v = check_all(&h, &f, ms(100));
        let names: Vec<&str> = v.iter().map(|v| v.invariant).collect();
        assert_eq!(
            names,
            [
                "the cluster heals after the faults",
                "no node exits by itself"
            ]
        );
        assert!(v[1].detail.contains("node 3") && v[1].detail.contains("SIGABRT"));
    }

    fn event(user: &str, outcome: Outcome) -> OpRecord {
        let mut o = op(OpKind::Event, 1, 0, 10, outcome);
        o.user = Some(user.into());
        o
    }

    #[test]
    fn a_lost_or_doubled_event_on_any_copy_is_caught() {
        let h = History {
            ops: vec![
                event("a", Outcome::Ok(200)),
                event("a", Outcome::Ok(200)),
                event("a", Outcome::Timeout),
                event("b", Outcome::Ok(200)),
                event("c", Outcome::Ok(200)),
            ],
            ..Default::default()
        };
        let seen = |base, copies: &[(u64, Option<u64>)]| UserEventsSeen {
            base,
            copies: copies.to_vec(),
        };
        // a: 10 before, 2 acknowledged of 3 sent: 12 and 13 both hold
        let mut f = healthy_final();
        f.user_events = [
            ("a".to_string(), seen(10, &[(1, Some(12)), (2, Some(13))])),
            ("b".to_string(), seen(0, &[(2, Some(1)), (3, Some(1))])),
            ("c".to_string(), seen(5, &[(1, Some(6))])),
        ]
        .into();
        assert!(no_acknowledged_event_lost(&h, &f).is_empty());
        // lost on one copy, doubled on another, a copy silent, a user unread
        f.user_events = [
            ("a".to_string(), seen(10, &[(1, Some(11)), (2, Some(14))])),
            ("b".to_string(), seen(0, &[(2, None)])),
        ]
        .into();
        let v = no_acknowledged_event_lost(&h, &f);
        let details: Vec<&str> = v.iter().map(|v| v.detail.as_str()).collect();
        assert_eq!(v.len(), 4, "{details:#?}");
        assert!(details[0].contains("node 1: 11 events, expected 12..=13"));
        assert!(details[1].contains("node 2: 14 events"));
        assert!(details[2].contains("user b: node 2"));
        assert!(details[3].contains("user c"));
    }

    #[test]
    fn a_lost_acknowledged_write_is_caught_and_an_unacknowledged_one_is_not() {
        let h = History {
            ops: vec![
                upsert("kept", Outcome::Ok(200)),
                upsert("lost", Outcome::Ok(200)),
                upsert("never-read", Outcome::Ok(200)),
                upsert("refused", Outcome::Http(503)),
            ],
            ..Default::default()
        };
        let mut f = healthy_final();
        f.items.insert("kept".into(), vec![(1, true), (2, true)]);
        f.items.insert("lost".into(), vec![(1, true), (2, false)]);
        f.items
            .insert("refused".into(), vec![(1, false), (2, false)]);
        let v = no_acknowledged_write_lost(&h, &f);
        assert_eq!(v.len(), 2, "{v:?}");
        assert!(v[0].detail.contains("lost") && v[0].detail.contains("[2]"));
        assert!(v[1].detail.contains("never-read"));
        f.items.insert("lost".into(), vec![(1, true), (2, true)]);
        f.items.insert("never-read".into(), vec![(3, true)]);
        assert!(no_acknowledged_write_lost(&h, &f).is_empty());
    }

    #[test]
    fn unequal_or_missing_copies_are_caught() {
        let mut f = healthy_final();
        assert!(replica_digests_equal(&f).is_empty());
        f.digests.insert(1, vec![(2, "b".into()), (3, "c".into())]);
        let v = replica_digests_equal(&f);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("shard 1 copies differ"));
        f.digests.insert(1, vec![(2, "b".into())]);
        assert!(replica_digests_equal(&f)[0]
            .detail
            .contains("1 answering copies"));
        f.digests.remove(&1);
        assert_eq!(replica_digests_equal(&f).len(), 1);
    }

    #[test]
    fn two_leaders_in_one_term_are_caught() {
        let mut h = History {
            leaders: vec![
                obs(1, 3, "Leader", Some(1)),
                obs(2, 3, "Follower", Some(1)),
                obs(2, 4, "Leader", Some(2)),
                obs(3, 4, "Follower", None),
            ],
            ..Default::default()
        };
        assert!(at_most_one_leader_per_term(&h).is_empty());
        // two nodes claim term 4
        h.leaders.push(obs(3, 4, "Leader", Some(3)));
        let v = at_most_one_leader_per_term(&h);
        assert_eq!(v.len(), 1);
        assert!(v[0].detail.contains("term 4") && v[0].detail.contains("{2, 3}"));
        // a follower naming a different leader for a term is caught too
        h.leaders.pop();
        h.leaders.push(obs(1, 3, "Follower", Some(3)));
        assert!(at_most_one_leader_per_term(&h)[0].detail.contains("term 3"));
    }

    #[test]
    fn late_failed_or_unexplained_recommends_are_caught_unless_their_node_was_faulted() {
        let mut degraded = op(OpKind::Recommend, 1, 0, 900, Outcome::Ok(200));
        degraded.coverage = Some(0.5);
        degraded.degraded = vec!["shard 3 unavailable".into()];
        let mut h = History {
            ops: vec![
                op(OpKind::Recommend, 1, 0, 100, Outcome::Ok(200)),
                degraded.clone(),
                // writes are not held to a deadline
                op(OpKind::Upsert, 1, 0, 9000, Outcome::Http(503)),
            ],
            ..Default::default()
        };
        assert!(recommends_answered_by_deadline(&h, ms(500)).is_empty());
        h.ops
            .push(op(OpKind::Recommend, 2, 0, 1600, Outcome::Ok(200)));
        h.ops
            .push(op(OpKind::Recommend, 2, 0, 200, Outcome::Http(500)));
        h.ops
            .push(op(OpKind::Recommend, 3, 5000, 8000, Outcome::Timeout));
        let mut unexplained = degraded;
        unexplained.degraded.clear();
        h.ops.push(unexplained);
        let v = recommends_answered_by_deadline(&h, ms(500));
        assert_eq!(v.len(), 4, "{v:?}");
        assert!(v[0].detail.contains("answered after"));
        assert!(v[1].detail.contains("Http(500)"));
        assert!(v[2].detail.contains("Timeout"));
        assert!(v[3].detail.contains("without a degraded reason"));
        // node 3 was paused while its request hung: exempt
        h.faults.push(FaultWindow {
            name: "pause 3".into(),
            unreachable: vec![3],
            start: ms(6000),
            end: Some(ms(7000)),
            old_leader: None,
        });
        assert_eq!(recommends_answered_by_deadline(&h, ms(500)).len(), 3);
    }

    #[test]
    fn a_panic_line_in_a_log_is_caught() {
        let mut f = healthy_final();
        f.logs = vec![(1, "WARN something slow\n".into())];
        assert!(no_panics(&f).is_empty());
        f.logs.push((
            2,
            "ok\nthread 'actix-rt' panicked at src/x.rs:1:2:\nboom\n".into(),
        ));
        let v = no_panics(&f);
        assert_eq!(v.len(), 1);
        assert!(v[0]
            .detail
            .starts_with("node 2: thread 'actix-rt' panicked at"));
    }

    #[test]
    fn a_failed_fresh_write_after_heal_is_caught_and_check_all_collects_everything() {
        let mut f = healthy_final();
        assert!(check_all(&History::default(), &f, ms(500)).is_empty());
        f.fresh_write_and_read = Err("upsert via node 1: 503".into());
        let v = fresh_write_and_read_after_heal(&f);
        assert_eq!(v[0].detail, "upsert via node 1: 503");
        f.logs = vec![(1, "panicked at x".into())];
        assert_eq!(check_all(&History::default(), &f, ms(500)).len(), 2);
    }
}
