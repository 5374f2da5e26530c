//! The user partition map: the same rules as the shard map, its own queue,
//! and the log and snapshot formats written before it existed still read.

use super::*;
use crate::cluster::moves::{next_steps, Transfer};

fn node(id: NodeId) -> NodeInfo {
    NodeInfo::new(id, format!("10.0.0.{id}:7000"), "", "")
}

fn apply(s: &mut ClusterState, cmd: Command) -> CommandResult {
    let index = s.last_applied.map_or(1, |l| l.index + 1);
    s.apply_command(index, cmd)
}

fn three_nodes_with_partitions() -> ClusterState {
    let mut s = ClusterState::default();
    for id in 1..=3 {
        assert_eq!(
            apply(&mut s, Command::RegisterNode(node(id))),
            CommandResult::Ok
        );
    }
    let placement = crate::cluster::initial_placement(8, 2, &[1, 2, 3]).unwrap();
    let init = Command::Partitions(MapOp::Init {
        count: 8,
        replication: 2,
        placement,
    });
    assert_eq!(apply(&mut s, init), CommandResult::Ok);
    s
}

#[test]
fn the_partition_map_is_created_once_with_active_copies_beside_the_shard_map() {
    let mut s = three_nodes_with_partitions();
    let pm = s.partition_map.clone().expect("created");
    assert_eq!((pm.shards, pm.replication), (8, 2));
    assert!(pm
        .replicas
        .iter()
        .flatten()
        .all(|r| r.state == ReplicaState::Active));
    assert!(s.shard_map.is_none(), "the shard map is a different map");
    assert_eq!(s.summary().user_partitions, 8);
    let again = Command::Partitions(MapOp::Init {
        count: 8,
        replication: 2,
        placement: vec![vec![1, 2]; 8],
    });
    let before = s.clone();
    match apply(&mut s, again) {
        CommandResult::Rejected(m) => assert!(
            m.starts_with("Partitions(Init) rejected: the user partition map already exists"),
            "{m}"
        ),
        other => panic!("a second map was accepted: {other:?}"),
    }
    assert_eq!(s, before);
    // a shard command names shards, a partition command partitions
    let shard_cmd = Command::AddReplica {
        shard: 0,
        node: 1,
        state: ReplicaState::Loading,
    };
    match apply(&mut s, shard_cmd) {
        CommandResult::Rejected(m) => assert!(m.contains("the shard map does not exist"), "{m}"),
        other => panic!("{other:?}"),
    }
    let part_cmd = Command::Partitions(MapOp::AddReplica {
        shard: 9,
        node: 1,
        state: ReplicaState::Loading,
    });
    match apply(&mut s, part_cmd) {
        CommandResult::Rejected(m) => {
            assert!(m.contains("user partition 9 does not exist"), "{m}")
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_partition_copy_moves_through_its_own_queue_and_blocks_removal_while_held() {
    let mut s = three_nodes_with_partitions();
    let pm = s.partition_map.clone().unwrap();
    // a partition on node 1 but not on node 3
    let p = (0..8u32)
        .find(|&p| pm.replica(p, 1).is_some() && pm.replica(p, 3).is_none())
        .unwrap();
    let t = Transfer {
        shard: p,
        from: Some(1),
        to: Some(3),
    };
    let queue = Command::Partitions(MapOp::QueueTransfers(vec![t]));
    assert_eq!(apply(&mut s, queue), CommandResult::Ok);
    assert_eq!(s.partition_transfers, vec![t]);
    assert!(s.transfers.is_empty(), "the shard queue is untouched");
    // the same step function drives it, in partition commands
    let mut rounds = 0;
    while !s.partition_transfers.is_empty() {
        let map = s.partition_map.clone().unwrap();
        let steps = next_steps(
            MapKind::UserPartitions,
            &map,
            &s.partition_transfers,
            2,
            |_, _| true,
        );
        assert!(
            !steps.is_empty(),
            "stalled at {:?}",
            s.transfer_phases(MapKind::UserPartitions)
        );
        for step in steps {
            assert!(matches!(step, Command::Partitions(_)), "{step:?}");
            // the copy on node 3 loads, then serves; node 1's drains, then goes
            if let Command::Partitions(MapOp::AddReplica { node, state, .. }) = &step {
                assert_eq!((*node, *state), (3, ReplicaState::Loading));
            }
            assert_eq!(apply(&mut s, step), CommandResult::Ok);
        }
        if s.partition_map
            .as_ref()
            .unwrap()
            .replica(p, 3)
            .map(|r| r.state)
            == Some(ReplicaState::Loading)
        {
            let activate = Command::Partitions(MapOp::SetReplicaState {
                shard: p,
                node: 3,
                state: ReplicaState::Active,
            });
            assert_eq!(apply(&mut s, activate), CommandResult::Ok);
        }
        rounds += 1;
        assert!(rounds < 10, "the move never finished");
    }
    let pm = s.partition_map.clone().unwrap();
    assert!(pm.replica(p, 1).is_none() && pm.replica(p, 3).is_some());
    // node 2 still holds partitions: it cannot be removed
    assert_eq!(
        apply(
            &mut s,
            Command::SetNodeStatus {
                id: 2,
                status: NodeStatus::Draining
            }
        ),
        CommandResult::Ok
    );
    match apply(
        &mut s,
        Command::SetNodeStatus {
            id: 2,
            status: NodeStatus::Removed,
        },
    ) {
        CommandResult::Rejected(m) => {
            assert!(m.contains("still holds replicas of user partitions"), "{m}")
        }
        other => panic!("removed while holding partitions: {other:?}"),
    }
}

#[test]
fn shard_commands_keep_their_log_encoding() {
    // Raft logs written before user partitions hold these bytes; the
    // variants ahead of `Partitions` must keep their indices and fields
    let cmd = Command::AddReplica {
        shard: 1,
        node: 2,
        state: ReplicaState::Active,
    };
    assert_eq!(postcard::to_stdvec(&cmd).unwrap(), vec![3, 1, 2, 1]);
    let cancel = Command::CancelTransfers(vec![Transfer {
        shard: 5,
        from: Some(1),
        to: None,
    }]);
    assert_eq!(
        postcard::to_stdvec(&cancel).unwrap(),
        vec![15, 1, 5, 1, 1, 0]
    );
}

#[test]
fn a_snapshot_written_before_partitions_decodes_without_them() {
    let mut s = ClusterState::default();
    apply(&mut s, Command::RegisterNode(node(1)));
    apply(
        &mut s,
        Command::InitShards {
            shards: 2,
            replication: 1,
            placement: vec![vec![1], vec![1]],
        },
    );
    // the old layout: the same fields up to `transfers`, nothing after
    let body = postcard::to_stdvec(&(
        &s.last_applied,
        &s.membership,
        &s.nodes,
        &s.shard_map,
        &s.models,
        &s.catalog,
        &s.settings,
        &s.transfers,
    ))
    .unwrap();
    let mut data = b"FNLSTAT1".to_vec();
    data.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    data.extend_from_slice(&body);
    let decoded = crate::cluster::state_machine::decode_state(&data).expect("old snapshot reads");
    assert_eq!(decoded, s);
    assert!(decoded.partition_map.is_none());
    // and the current layout round-trips with the map
    let s = three_nodes_with_partitions();
    let data = crate::cluster::state_machine::encode_state(&s).unwrap();
    assert_eq!(
        crate::cluster::state_machine::decode_state(&data).unwrap(),
        s
    );
    // a damaged body is still an error, not a silent legacy decode
    let mut bad = crate::cluster::state_machine::encode_state(&s).unwrap();
    bad.truncate(bad.len() - 3);
    assert!(crate::cluster::state_machine::decode_state(&bad).is_err());
}
