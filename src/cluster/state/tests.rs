//! Unit tests of the state rules: every command's checks, the catalogue
//! overlay, digests, determinism and membership entries.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::cluster::types::{LogId, Membership, NodeId};
use crate::ids::{item_key, shard_of};

fn info(id: NodeId) -> NodeInfo {
    NodeInfo::new(
        id,
        format!("10.0.0.{id}:7000"),
        format!("10.0.0.{id}:8080"),
        "",
    )
}

/// Applies `cmd` and asserts it was applied (not rejected).
fn ok(state: &mut ClusterState, index: u64, cmd: Command) -> CommandResult {
    let r = state.apply_command(index, cmd.clone());
    assert!(
        !matches!(r, CommandResult::Rejected(_)),
        "{cmd:?} was rejected: {r:?}"
    );
    r
}

/// Asserts `cmd` is rejected with a message containing `needle` and
/// that the state did not change at all.
fn rejected(state: &mut ClusterState, cmd: Command, needle: &str) {
    let before = state.clone();
    match state.apply_command(99, cmd.clone()) {
        CommandResult::Rejected(msg) => {
            assert!(
                msg.contains(needle),
                "{cmd:?}: message {msg:?} lacks {needle:?}"
            );
            assert!(
                msg.starts_with(cmd.kind()),
                "message should name the command: {msg}"
            );
        }
        other => panic!("{cmd:?} was not rejected: {other:?}"),
    }
    assert_eq!(*state, before, "a rejected {cmd:?} changed the state");
}

fn with_nodes(ids: &[NodeId]) -> ClusterState {
    let mut s = ClusterState::default();
    for &id in ids {
        ok(&mut s, id, Command::RegisterNode(info(id)));
    }
    s
}

/// Nodes 1..=4 and a 2-shard map: shard 0 on {1,2}, shard 1 on {2,3}, all Active.
fn with_shards() -> ClusterState {
    let mut s = with_nodes(&[1, 2, 3, 4]);
    ok(
        &mut s,
        10,
        Command::InitShards {
            shards: 2,
            replication: 2,
            placement: vec![vec![1, 2], vec![2, 3]],
        },
    );
    for (shard, node) in [(0, 1), (0, 2), (1, 2), (1, 3)] {
        ok(
            &mut s,
            11,
            Command::SetReplicaState {
                shard,
                node,
                state: ReplicaState::Active,
            },
        );
    }
    s
}

fn item(id: &str, vector: Vec<f32>) -> ItemRecord {
    ItemRecord {
        id: id.to_string(),
        vector,
        categories: vec!["c1".into()],
        title: Some(format!("title {id}")),
        created_at: 1_700_000_000,
    }
}

fn model(version: &str, source: NodeId) -> ModelRef {
    ModelRef {
        version: version.into(),
        bundle_path: format!("/bundles/{version}"),
        source_node: source,
    }
}

fn set_status(id: NodeId, status: NodeStatus) -> Command {
    Command::SetNodeStatus { id, status }
}

#[test]
fn register_node_rules() {
    let mut s = with_nodes(&[1]);
    rejected(
        &mut s,
        Command::RegisterNode(NodeInfo::new(2, "", "", "")),
        "internal address is empty",
    );
    rejected(
        &mut s,
        Command::RegisterNode(NodeInfo::new(2, "nohost", "", "")),
        "not host:port",
    );
    rejected(
        &mut s,
        Command::RegisterNode(NodeInfo::new(2, "h:1", "h:0", "")),
        "not host:port",
    );
    rejected(
        &mut s,
        Command::RegisterNode(NodeInfo::new(2, "10.0.0.1:7000", "", "")),
        "node 1 already uses internal address",
    );
    let mut removed = info(2);
    removed.status = NodeStatus::Removed;
    rejected(
        &mut s,
        Command::RegisterNode(removed),
        "cannot be registered as Removed",
    );
    rejected(
        &mut s,
        Command::RegisterNode(NodeInfo::new(1, "10.9.9.9:7000", "", "")),
        "cannot change",
    );
    let mut draining = info(1);
    draining.status = NodeStatus::Draining;
    rejected(&mut s, Command::RegisterNode(draining), "SetNodeStatus");

    // Updating public addresses of a known node is fine.
    ok(
        &mut s,
        2,
        Command::RegisterNode(NodeInfo::new(1, "10.0.0.1:7000", "pub:80", "pub:90")),
    );
    assert_eq!(s.nodes[&1].http, "pub:80");
    ok(&mut s, 3, set_status(1, NodeStatus::Removed));
    rejected(&mut s, Command::RegisterNode(info(1)), "never reused");
    // A removed node's address may be taken over by a new node.
    ok(
        &mut s,
        4,
        Command::RegisterNode(NodeInfo::new(5, "10.0.0.1:7000", "", "")),
    );
}

#[test]
fn node_status_rules() {
    let mut s = with_shards();
    rejected(
        &mut s,
        set_status(9, NodeStatus::Draining),
        "node 9 is unknown",
    );
    rejected(
        &mut s,
        set_status(1, NodeStatus::Removed),
        "still holds replicas of shards [0]",
    );
    ok(&mut s, 20, Command::StageModel(model("v1", 4)));
    rejected(
        &mut s,
        set_status(4, NodeStatus::Removed),
        "source of staged model v1",
    );
    ok(&mut s, 21, Command::StageModel(model("v2", 1)));
    ok(
        &mut s,
        22,
        Command::ReportLoaded {
            node: 4,
            version: "v2".into(),
        },
    );
    ok(&mut s, 23, set_status(4, NodeStatus::Removed));
    assert!(
        !s.models.loaded.contains_key(&4),
        "a removed node's load report is forgotten"
    );
    rejected(
        &mut s,
        set_status(4, NodeStatus::Active),
        "removal is final",
    );
    ok(&mut s, 24, set_status(4, NodeStatus::Removed));
    ok(&mut s, 25, set_status(1, NodeStatus::Draining));
    ok(&mut s, 26, set_status(1, NodeStatus::Active));
}

#[test]
fn init_shards_rules() {
    let mut s = with_nodes(&[1, 2, 3]);
    let init = |shards, replication, placement: Vec<Vec<NodeId>>| Command::InitShards {
        shards,
        replication,
        placement,
    };
    rejected(&mut s, init(0, 1, vec![]), "shard count 0");
    rejected(&mut s, init(MAX_SHARDS + 1, 1, vec![]), "outside");
    rejected(&mut s, init(1, 0, vec![vec![]]), "replication 0");
    rejected(
        &mut s,
        init(1, 4, vec![vec![1, 2, 3, 4]]),
        "needs that many Active nodes but there are 3",
    );
    rejected(
        &mut s,
        init(2, 1, vec![vec![1]]),
        "placement lists 1 shards but there are 2",
    );
    rejected(
        &mut s,
        init(1, 2, vec![vec![1]]),
        "placed on 1 nodes but replication = 2",
    );
    rejected(&mut s, init(1, 2, vec![vec![1, 1]]), "lists node 1 twice");
    rejected(&mut s, init(1, 2, vec![vec![1, 7]]), "node 7 is unknown");
    ok(&mut s, 5, set_status(3, NodeStatus::Draining));
    rejected(&mut s, init(1, 2, vec![vec![1, 3]]), "node 3 is Draining");
    rejected(&mut s, init(1, 3, vec![vec![1, 2, 3]]), "there are 2");
    ok(&mut s, 6, set_status(3, NodeStatus::Active));

    ok(&mut s, 7, init(2, 2, vec![vec![1, 2], vec![3, 1]]));
    let map = s.shard_map.clone().unwrap();
    assert_eq!(map.shards, 2);
    assert!(map
        .replicas
        .iter()
        .flatten()
        .all(|r| r.state == ReplicaState::Loading));
    assert_eq!(map.shards_on(1), vec![0, 1]);
    rejected(
        &mut s,
        init(2, 2, vec![vec![1, 2], vec![3, 1]]),
        "already exists",
    );
}

#[test]
fn replica_rules() {
    let mut s = with_nodes(&[1, 2]);
    let add = |shard, node, state| Command::AddReplica { shard, node, state };
    rejected(
        &mut s,
        add(0, 1, ReplicaState::Loading),
        "run InitShards first",
    );

    let mut s = with_shards();
    rejected(
        &mut s,
        add(2, 4, ReplicaState::Loading),
        "shard 2 does not exist",
    );
    rejected(&mut s, add(0, 4, ReplicaState::Draining), "never Draining");
    rejected(
        &mut s,
        add(0, 1, ReplicaState::Loading),
        "already holds a replica of shard 0",
    );
    rejected(
        &mut s,
        add(0, 9, ReplicaState::Loading),
        "node 9 is unknown",
    );
    ok(&mut s, 30, set_status(4, NodeStatus::Draining));
    rejected(
        &mut s,
        add(0, 4, ReplicaState::Loading),
        "only Active nodes",
    );
    ok(&mut s, 31, set_status(4, NodeStatus::Active));
    ok(&mut s, 32, add(0, 4, ReplicaState::Loading));

    let set = |shard, node, state| Command::SetReplicaState { shard, node, state };
    rejected(
        &mut s,
        set(0, 3, ReplicaState::Active),
        "holds no replica of shard 0",
    );
    rejected(
        &mut s,
        set(0, 1, ReplicaState::Loading),
        "never goes back to Loading",
    );
    rejected(&mut s, set(0, 4, ReplicaState::Draining), "still Loading");
    ok(&mut s, 33, set_status(4, NodeStatus::Draining));
    rejected(
        &mut s,
        set(0, 4, ReplicaState::Active),
        "cannot become Active",
    );
    ok(&mut s, 34, set_status(4, NodeStatus::Active));
    ok(&mut s, 35, set(0, 4, ReplicaState::Active));
    ok(&mut s, 36, set(0, 1, ReplicaState::Draining));
    ok(&mut s, 37, set(0, 2, ReplicaState::Draining));
    rejected(
        &mut s,
        set(0, 4, ReplicaState::Draining),
        "no Active replica",
    );
    // Draining -> Active cancels a drain.
    ok(&mut s, 38, set(0, 2, ReplicaState::Active));

    let drop = |shard, node| Command::DropReplica { shard, node };
    rejected(&mut s, drop(0, 3), "holds no replica");
    ok(&mut s, 39, drop(0, 1)); // Draining, while 2 and 4 are Active
    ok(&mut s, 40, drop(0, 2)); // Active, 4 still Active
    rejected(&mut s, drop(0, 4), "no Active replica left");
    ok(&mut s, 41, add(0, 3, ReplicaState::Loading));
    ok(&mut s, 42, drop(0, 3)); // Loading replicas can always go
    assert_eq!(
        s.shard_map.as_ref().unwrap().replicas_of(0).unwrap(),
        &[Replica {
            node: 4,
            state: ReplicaState::Active
        }]
    );
}

#[test]
fn model_rollout_rules() {
    let mut s = with_shards();
    let stage = |v: &str, src| Command::StageModel(model(v, src));
    let report = |node, v: &str| Command::ReportLoaded {
        node,
        version: v.into(),
    };
    let activate = |v: &str, force| Command::ActivateModel {
        version: v.into(),
        force,
    };
    rejected(&mut s, stage("", 1), "model version is empty");
    rejected(
        &mut s,
        Command::StageModel(ModelRef {
            version: "v1".into(),
            bundle_path: String::new(),
            source_node: 1,
        }),
        "bundle_path is empty",
    );
    rejected(&mut s, stage("v1", 9), "source node 9 is unknown");
    rejected(&mut s, report(1, "v1"), "neither staged nor active");
    rejected(&mut s, activate("v1", false), "nothing is");

    ok(&mut s, 50, stage("v1", 1));
    rejected(&mut s, report(9, "v1"), "node 9 is unknown");
    rejected(&mut s, activate("v0", false), "staged is v1");
    ok(&mut s, 51, report(1, "v1"));
    ok(&mut s, 52, report(2, "v1"));
    rejected(&mut s, activate("v1", false), "nodes [3]");
    ok(&mut s, 53, report(3, "v1"));
    // Node 4 holds no replica, so it need not report.
    ok(&mut s, 54, activate("v1", false));
    assert_eq!(s.models.active.as_ref().unwrap().version, "v1");
    assert!(s.models.staged.is_none());
    // A retried activation of the active version is a no-op, not an error.
    let before = s.clone();
    assert_eq!(
        s.apply_command(55, activate("v1", false)),
        CommandResult::Ok
    );
    assert_eq!(s, before);
    rejected(&mut s, stage("v1", 1), "already active");
    // Reporting the active version (e.g. after a restart) is accepted.
    ok(&mut s, 56, report(2, "v1"));

    ok(&mut s, 57, stage("v2", 2));
    ok(&mut s, 58, report(1, "v2"));
    rejected(&mut s, activate("v2", false), "nodes [2, 3]");
    ok(&mut s, 59, activate("v2", true));
    assert_eq!(s.models.active.as_ref().unwrap().version, "v2");

    ok(&mut s, 60, stage("v3", 4));
    ok(&mut s, 61, set_status(4, NodeStatus::Draining));
    ok(&mut s, 62, stage("v4", 1));
    ok(&mut s, 63, set_status(4, NodeStatus::Removed));
    rejected(&mut s, stage("v5", 4), "was removed");
    rejected(&mut s, report(4, "v4"), "was removed");
}

#[test]
fn upsert_rules() {
    let mut s = ClusterState::default();
    let up = |items: Vec<ItemRecord>| Command::UpsertItems(items);
    rejected(&mut s, up(vec![]), "no items");
    let too_many: Vec<ItemRecord> = (0..=MAX_ITEMS_PER_COMMAND)
        .map(|i| item(&i.to_string(), vec![1.0]))
        .collect();
    rejected(&mut s, up(too_many), "split into batches");
    rejected(&mut s, up(vec![item("", vec![1.0])]), "id is empty");
    rejected(
        &mut s,
        up(vec![item("a\nb", vec![1.0])]),
        "control character",
    );
    rejected(
        &mut s,
        up(vec![item("a", vec![1.0]), item("a", vec![2.0])]),
        "item a is listed twice",
    );
    rejected(&mut s, up(vec![item("a", vec![])]), "vector of length 0");
    rejected(
        &mut s,
        up(vec![item("a", vec![0.0; MAX_VECTOR_DIM + 1])]),
        "vector of length",
    );
    rejected(
        &mut s,
        up(vec![item("a", vec![1.0, f32::NAN])]),
        "non-finite vector value at position 1",
    );
    rejected(
        &mut s,
        up(vec![item("a", vec![f32::INFINITY])]),
        "non-finite",
    );
    rejected(
        &mut s,
        up(vec![item("a", vec![1.0, 2.0]), item("b", vec![1.0])]),
        "item b has dimension 1 but the catalog uses 2",
    );
    let mut many_cats = item("a", vec![1.0]);
    many_cats.categories = (0..=MAX_CATEGORIES_PER_ITEM)
        .map(|i| i.to_string())
        .collect();
    rejected(&mut s, up(vec![many_cats]), "categories");
    let mut bad_title = item("a", vec![1.0]);
    bad_title.title = Some("x\u{7}".into());
    rejected(&mut s, up(vec![bad_title]), "title");

    assert_eq!(
        ok(
            &mut s,
            70,
            up(vec![item("a", vec![1.0, 2.0]), item("b", vec![3.0, 4.0])])
        ),
        CommandResult::Items {
            applied: 2,
            index: 70
        }
    );
    rejected(&mut s, up(vec![item("c", vec![1.0])]), "catalog uses 2");
    // Once the overlay is empty again a new dimension may start.
    ok(
        &mut s,
        71,
        Command::DeleteItems(vec!["a".into(), "b".into()]),
    );
    ok(&mut s, 72, up(vec![item("c", vec![1.0, 2.0, 3.0])]));
    assert_eq!(s.catalog.dimension(), Some(3));
}

#[test]
fn delete_and_setting_rules() {
    let mut s = ClusterState::default();
    rejected(&mut s, Command::DeleteItems(vec![]), "no item ids");
    rejected(
        &mut s,
        Command::DeleteItems(vec!["a".into(), "a".into()]),
        "item a is listed twice",
    );
    rejected(
        &mut s,
        Command::DeleteItems(vec![String::new()]),
        "id is empty",
    );
    // Deleting an id the overlay never saw records a tombstone (it may be in the bundle).
    assert_eq!(
        ok(&mut s, 5, Command::DeleteItems(vec!["bundle-item".into()])),
        CommandResult::Items {
            applied: 1,
            index: 5
        }
    );
    assert_eq!(s.catalog.deleted_at("bundle-item"), Some(5));

    let set = |k: &str, v: &str| Command::SetSetting {
        key: k.into(),
        value: v.into(),
    };
    rejected(&mut s, set("", "x"), "setting key must be");
    rejected(&mut s, set("a b", "x"), "may only use");
    rejected(
        &mut s,
        set("k", &"x".repeat(MAX_SETTING_VALUE_LEN + 1)),
        "longer than",
    );
    ok(&mut s, 6, set("ranking.max_k", "100"));
    assert_eq!(s.settings["ranking.max_k"], "100");
    ok(&mut s, 7, set("ranking.max_k", ""));
    assert!(s.settings.is_empty(), "an empty value removes the key");
}

#[test]
fn catalog_changes_come_back_in_log_order_once_per_id() {
    let mut s = ClusterState::default();
    ok(
        &mut s,
        3,
        Command::UpsertItems(vec![item("a", vec![1.0]), item("b", vec![2.0])]),
    );
    ok(&mut s, 5, Command::UpsertItems(vec![item("c", vec![3.0])]));
    ok(&mut s, 8, Command::DeleteItems(vec!["b".into()]));
    ok(&mut s, 9, Command::UpsertItems(vec![item("a", vec![9.0])]));

    let all: Vec<(u64, String, bool)> = s
        .catalog
        .changed_since(0)
        .map(|c| {
            (
                c.index(),
                c.id().to_string(),
                matches!(c, CatalogChange::Upsert { .. }),
            )
        })
        .collect();
    assert_eq!(
        all,
        vec![
            (5, "c".into(), true),
            (8, "b".into(), false),
            (9, "a".into(), true)
        ],
        "each id appears once, at its latest write"
    );
    let since5: Vec<u64> = s.catalog.changed_since(5).map(|c| c.index()).collect();
    assert_eq!(since5, vec![8, 9]);
    assert_eq!(s.catalog.changed_since(9).count(), 0);
    assert_eq!(s.catalog.changed_since(u64::MAX).count(), 0);
    match s.catalog.changed_since(8).next() {
        Some(CatalogChange::Upsert { item, index: 9 }) => assert_eq!(item.vector, vec![9.0]),
        other => panic!("unexpected {other:?}"),
    }
    // Re-upserting a deleted id lifts the tombstone.
    ok(&mut s, 10, Command::UpsertItems(vec![item("b", vec![4.0])]));
    assert_eq!(s.catalog.deleted_at("b"), None);
    assert_eq!(s.catalog.get("b").map(|(_, i)| i), Some(10));
    assert_eq!(s.catalog.last_index(), Some(10));
    assert_eq!(s.catalog.changed_since(0).count(), 3);
}

#[test]
fn shards_partition_the_catalog() {
    let mut s = ClusterState::default();
    let items: Vec<ItemRecord> = (0..200)
        .map(|i| item(&format!("item-{i}"), vec![i as f32]))
        .collect();
    ok(&mut s, 1, Command::UpsertItems(items));
    let shards = 4;
    let mut seen = BTreeSet::new();
    for shard in 0..shards {
        for it in s.catalog.items_for_shard(shard, shards) {
            assert_eq!(shard_of(item_key(&it.id), shards), shard);
            assert!(seen.insert(it.id.clone()), "{} in two shards", it.id);
        }
        assert!(
            s.catalog.items_for_shard(shard, shards).count() > 20,
            "hash spreads items"
        );
    }
    assert_eq!(seen.len(), 200);
}

#[test]
fn shard_digests_depend_on_content_not_history() {
    let shards = 3;
    let mut a = ClusterState::default();
    ok(
        &mut a,
        1,
        Command::UpsertItems(vec![item("x", vec![1.0, 0.5])]),
    );
    ok(
        &mut a,
        2,
        Command::UpsertItems(vec![item("y", vec![2.0, 0.5])]),
    );
    ok(
        &mut a,
        3,
        Command::UpsertItems(vec![item("x", vec![1.5, 0.5])]),
    );
    ok(&mut a, 4, Command::DeleteItems(vec!["z".into()]));
    let mut b = ClusterState::default();
    ok(&mut b, 10, Command::DeleteItems(vec!["z".into()]));
    ok(
        &mut b,
        11,
        Command::UpsertItems(vec![item("y", vec![2.0, 0.5]), item("x", vec![1.5, 0.5])]),
    );
    for shard in 0..shards {
        assert_eq!(
            a.digest_shard(shard, shards),
            b.digest_shard(shard, shards),
            "shard {shard}"
        );
    }

    let shard_of_x = shard_of(item_key("x"), shards);
    let before = a.digest_shard(shard_of_x, shards);
    ok(
        &mut a,
        5,
        Command::UpsertItems(vec![item("x", vec![1.5, 0.25])]),
    );
    assert_ne!(
        a.digest_shard(shard_of_x, shards),
        before,
        "a vector change must change the digest"
    );

    let shard_of_w = shard_of(item_key("w"), shards);
    let before = a.digest_shard(shard_of_w, shards);
    ok(&mut a, 6, Command::DeleteItems(vec!["w".into()]));
    assert_ne!(
        a.digest_shard(shard_of_w, shards),
        before,
        "a tombstone must change the digest"
    );
    let untouched: Vec<u32> = (0..shards)
        .filter(|&s| s != shard_of_w && s != shard_of_x)
        .collect();
    for shard in untouched {
        assert_eq!(a.digest_shard(shard, shards), b.digest_shard(shard, shards));
    }
}

#[test]
fn same_log_gives_same_state() {
    let log = [
        Command::RegisterNode(info(1)),
        Command::RegisterNode(info(2)),
        Command::InitShards {
            shards: 1,
            replication: 2,
            placement: vec![vec![1, 2]],
        },
        Command::UpsertItems(vec![item("a", vec![1.0])]),
        Command::SetSetting {
            key: "k".into(),
            value: "v".into(),
        },
        Command::DropReplica { shard: 5, node: 1 },
    ];
    let run = || {
        let mut s = ClusterState::default();
        let results: Vec<CommandResult> = log
            .iter()
            .enumerate()
            .map(|(i, c)| s.apply_command(i as u64, c.clone()))
            .collect();
        (s, results)
    };
    let (s1, r1) = run();
    let (s2, r2) = run();
    assert_eq!(r1, r2);
    assert_eq!(s1.digest(), s2.digest());
    assert!(matches!(r1.last(), Some(CommandResult::Rejected(_))));
    let summary = s1.summary();
    assert_eq!(
        (summary.nodes, summary.shards, summary.replication),
        (2, 1, 2)
    );
    assert_eq!(summary.catalog_items, 1);
}

#[test]
fn membership_registers_unknown_members() {
    let mut s = with_nodes(&[1]);
    s.nodes.get_mut(&1).unwrap().http = "kept:1".into();
    let mut members = BTreeMap::new();
    members.insert(1, info(1));
    let mut two = info(2);
    two.status = NodeStatus::Removed; // ignored: status of record lives in the state
    members.insert(2, two);
    let voters: BTreeSet<NodeId> = [1, 2].into_iter().collect();
    let membership = Membership::new(vec![voters], members);
    let log_id = LogId::new(openraft::CommittedLeaderId::new(1, 1), 4);
    s.apply_membership(log_id, membership);
    assert_eq!(s.nodes[&2].status, NodeStatus::Active);
    assert_eq!(s.nodes[&2].internal, "10.0.0.2:7000");
    assert_eq!(
        s.nodes[&1].http, "kept:1",
        "known nodes keep their registered info"
    );
    assert_eq!(s.membership.log_id(), &Some(log_id));
}

/// What `Command::is_idempotent` promises, the write path's retry after a
/// lost leader relies on: a second application leaves the catalogue, the
/// settings and the answer as the first did. A command left out of it is
/// refused the second time, so a retry would report a change that was made
/// as a failure.
#[test]
fn idempotent_commands_applied_twice_equal_applied_once() {
    let shards = 3;
    let twice = [
        Command::UpsertItems(vec![item("x", vec![1.0, 0.5]), item("y", vec![2.0, 0.5])]),
        Command::DeleteItems(vec!["x".into(), "never-there".into()]),
        Command::SetSetting {
            key: "transfers.max_concurrent".into(),
            value: "2".into(),
        },
    ];
    for cmd in twice {
        assert!(cmd.is_idempotent(), "{cmd:?}");
        let mut once = with_shards();
        let first = ok(&mut once, 100, cmd.clone());
        let mut again = once.clone();
        let second = ok(&mut again, 101, cmd.clone());
        assert_eq!(
            std::mem::discriminant(&first),
            std::mem::discriminant(&second),
            "{cmd:?}"
        );
        if let (CommandResult::Items { applied: a, .. }, CommandResult::Items { applied: b, .. }) =
            (&first, &second)
        {
            assert_eq!(a, b, "{cmd:?}");
        }
        for shard in 0..shards {
            assert_eq!(
                once.digest_shard(shard, shards),
                again.digest_shard(shard, shards),
                "{cmd:?} shard {shard}"
            );
        }
        assert_eq!(once.settings, again.settings, "{cmd:?}");
    }
    let mut s = with_shards();
    let add = Command::AddReplica {
        shard: 0,
        node: 3,
        state: ReplicaState::Loading,
    };
    assert!(!add.is_idempotent());
    ok(&mut s, 100, add.clone());
    rejected(&mut s, add, "");
}
