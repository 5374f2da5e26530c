//! Unit tests of the transfer queue, its driver, the replication and
//! dead-node planners and the voter rule.

use crate::cluster::MapKind;
use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::cluster::placement::{initial_placement, plan_drain, plan_rebalance};
use crate::cluster::state::{
    ClusterState, Command, CommandResult, NodeInfo, NodeStatus, ReplicaState, ShardMap,
};
use crate::cluster::types::NodeId;

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
            .transfer_phases(MapKind::Shards)
            .iter()
            .filter(|(_, p)| p.in_flight())
            .count();
        assert!(in_flight <= max_in_flight, "{in_flight} in flight");
        let steps = next_steps(
            MapKind::Shards,
            &map,
            &st.transfers,
            max_in_flight,
            |_, _| true,
        );
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

    let steps = next_steps(MapKind::Shards, &map_of(&st), &st.transfers, 1, |_, _| {
        false
    });
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
        next_steps(MapKind::Shards, &map_of(&st), &st.transfers, 1, |_, _| true).is_empty(),
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
    let steps = next_steps(MapKind::Shards, &map_of(&st), &st.transfers, 1, |_, _| {
        false
    });
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
        next_steps(MapKind::Shards, &map_of(&st), &st.transfers, 1, |_, _| {
            false
        })
        .is_empty(),
        "the drop waits for the grace period"
    );
    let steps = next_steps(MapKind::Shards, &map_of(&st), &st.transfers, 1, |s, n| {
        (s, n) == (0, 1)
    });
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
    let steps = next_steps(MapKind::Shards, &map, &st.transfers, 2, |_, _| true);
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
