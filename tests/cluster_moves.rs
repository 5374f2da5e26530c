//! Shard moves on a real cluster: three `funnel serve` processes (6 shards,
//! 2 replicas each) under continuous recommend load and item upserts, then
//! `funnel admin move-shard`, a 4th node joined with `funnel admin
//! add-node` and `funnel admin rebalance`, `funnel admin remove-node
//! --drain` of a learner and of a voter, a node joining through
//! `cluster.join`, and `funnel admin set-replication 3`.
//!
//! What must hold: no recommend request fails and every answer has
//! coverage 1 throughout; every acknowledged upsert is in every copy of its
//! shard afterwards and a deleted bundle item stays deleted in a moved
//! copy; the copies of each shard have equal digests; a drained node ends
//! up holding nothing, out of Raft, marked Removed, and a learner takes a
//! drained voter's vote.
//!
//! Ports 17200-17299 only (fixed, so they do not collide with other test
//! files, which use OS-assigned ports).

mod support;

use funnel::cluster::{ClusterView, NodeStatus, ReplicaState};
use funnel::ids::{item_key, shard_of};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{
    assert_items_converged, copies, eventually, members_list, recommend, rt, small_bundle,
    write_node_config, ClusterLoad, Http, NodePorts, NodeProc,
};

const SHARDS: u32 = 6;
const DIM: usize = 16;

struct Member {
    id: u64,
    config: PathBuf,
    data_dir: PathBuf,
    http: String,
    grpc: String,
    internal: String,
}

fn ports(id: u64) -> (u16, u16, u16) {
    let i = id as u16;
    (17210 + i, 17230 + i, 17250 + i)
}

/// Configs for nodes 1..=3 (the bootstrap members), node 4, which is in no
/// member list and is admitted with `funnel admin add-node`, and node 5,
/// which asks node 2 to admit it (`cluster.join`).
fn write_configs(dir: &Path, bundle: &Path) -> Vec<Member> {
    let node = |id: u64| {
        let (http, grpc, internal) = ports(id);
        NodePorts {
            id,
            host: std::net::Ipv4Addr::LOCALHOST,
            http,
            grpc,
            internal,
        }
    };
    let founders: Vec<NodePorts> = (1..=3).map(node).collect();
    let (_, _, join_port) = ports(2);
    (1..=5)
        .map(|id| {
            let me = node(id);
            // the operator rebalances here (`funnel admin rebalance`): the
            // leader must not balance on its own first
            let cluster_extra = match id {
                1..=3 => members_list(&founders),
                5 => format!("join = \"127.0.0.1:{join_port}\""),
                _ => String::new(),
            } + "\nauto_rebalance = false";
            let (config, data_dir) =
                write_node_config(dir, &me, Some(bundle), SHARDS, "", &cluster_extra);
            Member {
                id,
                config,
                data_dir,
                http: format!("127.0.0.1:{}", me.http),
                grpc: format!("127.0.0.1:{}", me.grpc),
                internal: format!("127.0.0.1:{}", me.internal),
            }
        })
        .collect()
}

/// `funnel admin --addr ADDR ARGS...`; panics with its stderr on failure.
fn admin(addr: &str, args: &[&str]) -> String {
    let out = admin_raw(addr, args);
    assert!(
        out.status.success(),
        "funnel admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

fn admin_raw(addr: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["admin", "--addr", addr])
        .args(args)
        .output()
        .unwrap()
}

fn view(rt: &tokio::runtime::Runtime, internal: &str) -> Option<ClusterView> {
    rt.block_on(funnel::admin::fetch_view(internal))
        .ok()
        .flatten()
        .map(|(_, v)| v)
}

/// Every replica Active and no transfer queued.
fn settled(v: &ClusterView) -> bool {
    v.transfers.is_empty()
        && v.shard_map.as_ref().is_some_and(|m| {
            m.replicas
                .iter()
                .all(|rs| !rs.is_empty() && rs.iter().all(|r| r.state == ReplicaState::Active))
        })
}

/// Every user partition copy Active, none queued, each partition on as many
/// nodes as its map says.
fn partitions_settled(v: &ClusterView) -> bool {
    v.partition_transfers.is_empty()
        && v.partition_map.as_ref().is_some_and(|m| {
            m.replicas.iter().all(|rs| {
                rs.len() == m.replication as usize
                    && rs.iter().all(|r| r.state == ReplicaState::Active)
            })
        })
}

#[test]
fn shards_move_rebalance_and_drain_under_load() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 23, SHARDS);
    let members = write_configs(tmp.path(), &bundle);
    let mut procs: Vec<NodeProc> = members[..3]
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let http = Http::default();
    let rt = rt();
    let entry = &members[1].internal; // admin commands go to a node that need not lead
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, entry)
            .is_some_and(|v| settled(&v))),
        "the cluster never placed and activated every replica"
    );
    for m in &members[..3] {
        assert!(
            eventually(Duration::from_secs(60), || recommend(
                &http, &m.http, "u000001"
            )
            .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
            "node {} never served with every shard covered",
            m.id
        );
    }
    // items per shard in the bundle, before any upsert
    let v0 = view(&rt, entry).unwrap();
    let base: BTreeMap<u32, u64> = copies(&rt, &v0)
        .into_iter()
        .map(|(s, cs)| (s, cs[0].1))
        .collect();
    assert_eq!(base.len(), SHARDS as usize, "{base:?}");
    let mut base = base;
    // a bundle item of shard 0 (the shard moved below) is deleted: the new
    // copy, loaded fresh from the bundle, must not bring it back
    let doomed = (0..100)
        .flat_map(|u| {
            recommend(&http, &members[0].http, &format!("u{u:06}"))
                .map(|v| support::item_ids(&v))
                .unwrap_or_default()
        })
        .find(|id| shard_of(item_key(id), SHARDS) == 0)
        .expect("some recommended bundle item lives in shard 0");
    let (s, v) = http.post(
        &format!("http://{}/v1/items/delete", members[0].http),
        json!({ "item_ids": [doomed] }),
    );
    assert_eq!((s, v["deleted"].as_u64()), (200, Some(1)), "{v}");
    *base.get_mut(&0).unwrap() -= 1;
    let acked = Arc::new(Mutex::new(Vec::new()));
    let front: Vec<String> = members[..3].iter().map(|m| m.http.clone()).collect();

    // --- bad requests are refused with a reason and change nothing -------
    let map0 = v0.shard_map.clone().unwrap();
    let holder = map0.replicas[0][0].node;
    let other_holder = map0.replicas[0][1].node;
    let out = admin_raw(
        entry,
        &[
            "move-shard",
            "--shard",
            "0",
            "--from",
            &holder.to_string(),
            "--to",
            &other_holder.to_string(),
        ],
    );
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already holds a replica of shard 0"), "{err}");
    let out = admin_raw(
        entry,
        &["move-shard", "--shard", "99", "--from", "1", "--to", "2"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("shard 99 does not exist"));
    let out = admin_raw(entry, &["remove-node", "2"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("--drain"));
    assert_eq!(view(&rt, entry).unwrap().shard_map, Some(map0.clone()));

    // --- move one shard under load ---------------------------------------
    let load = ClusterLoad::start(front.clone(), "moved-item", DIM, acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    let spare = (1..=3u64)
        .find(|n| map0.replica(0, *n).is_none())
        .expect("with 3 nodes and R=2 one node lacks shard 0");
    let out = admin(
        entry,
        &[
            "move-shard",
            "--shard",
            "0",
            "--from",
            &holder.to_string(),
            "--to",
            &spare.to_string(),
        ],
    );
    assert!(out.contains("queued"), "{out}");
    assert!(
        eventually(Duration::from_secs(60), || view(&rt, entry).is_some_and(
            |v| {
                settled(&v) && {
                    let m = v.shard_map.unwrap();
                    m.replica(0, spare).is_some() && m.replica(0, holder).is_none()
                }
            }
        )),
        "shard 0 never finished moving from node {holder} to node {spare}"
    );
    std::thread::sleep(Duration::from_millis(500));
    let refused = load.finish("move-shard");
    assert!(
        refused.is_empty(),
        "upserts refused during the move: {refused:?}"
    );
    assert_items_converged(&rt, entry, &base, &acked.lock().unwrap(), &[], None);

    // --- a 4th node joins with add-node; rebalance gives it replicas ------
    let m4 = &members[3];
    procs.push(NodeProc::start_config(&m4.config, &m4.data_dir));
    let out = admin(
        entry,
        &[
            "add-node",
            "--id",
            "4",
            "--internal",
            &m4.internal,
            "--http",
            &m4.http,
            "--grpc",
            &m4.grpc,
        ],
    );
    assert!(out.contains("learner"), "{out}");
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = admin(entry, &["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            v["status"]["learners"]
                .as_array()
                .is_some_and(|l| l.iter().any(|x| x == 4))
                && v["members"]
                    .as_array()
                    .is_some_and(|ms| ms.iter().any(|m| m["id"] == 4 && m["role"] == "Learner"))
        }),
        "node 4 never became a Raft learner (3 voters is the target below 5 nodes)"
    );
    assert!(
        eventually(Duration::from_secs(60), || recommend(
            &http, &m4.http, "u000002"
        )
        .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
        "node 4 never served (as a coordinator over remote shards)"
    );

    let plan = admin(entry, &["rebalance", "--dry-run", "--json"]);
    let plan: serde_json::Value = serde_json::from_str(&plan).unwrap();
    assert_eq!(plan["applied"], false, "{plan}");
    let planned = plan["transfers"].as_array().unwrap().len();
    // 12 replicas over 4 nodes: 3 each, so 3 must move to node 4
    assert_eq!(planned, 3, "{plan}");
    assert!(plan["transfers"]
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["to"] == 4));
    assert!(
        view(&rt, entry).unwrap().transfers.is_empty(),
        "a dry run queued something"
    );

    let load = ClusterLoad::start(front.clone(), "moved-item", DIM, acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    let out = admin(entry, &["rebalance", "--max-concurrent", "2", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["transfers"].as_array().map(|t| t.len()), Some(3), "{r}");
    // the user partitions (64 x 2 on nodes 1-3) spread onto node 4 too
    let partition_moves = r["partition_transfers"].as_array().map_or(0, |t| t.len());
    assert!(partition_moves >= 30, "{r}");
    let status = admin(entry, &["status"]);
    assert!(
        status.contains("shard transfers") || status.contains("no shard transfers queued"),
        "{status}"
    );
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, entry).is_some_and(
            |v| {
                settled(&v)
                    && v.shard_map
                        .unwrap()
                        .replica_counts()
                        .values()
                        .all(|&c| c == 3)
            }
        )),
        "the rebalance never finished with 3 replicas per node: {:?}",
        view(&rt, entry).map(|v| (v.shard_map, v.transfers))
    );
    assert!(
        eventually(Duration::from_secs(120), || view(&rt, entry).is_some_and(
            |v| partitions_settled(&v)
                && v.partition_map
                    .unwrap()
                    .replica_counts()
                    .values()
                    .all(|&c| c == 32)
        )),
        "the user partitions never spread to 32 copies per node: {:?}",
        view(&rt, entry).map(|v| (v.partition_map, v.partition_transfers))
    );
    std::thread::sleep(Duration::from_millis(500));
    let refused = load.finish("rebalance");
    assert!(
        refused.is_empty(),
        "upserts refused during the rebalance: {refused:?}"
    );
    assert_items_converged(&rt, entry, &base, &acked.lock().unwrap(), &[], None);
    let out = admin(entry, &["rebalance", "--dry-run"]);
    assert!(out.contains("balanced; nothing to move"), "{out}");

    // --- drain node 4 away again -----------------------------------------
    let load = ClusterLoad::start(front.clone(), "moved-item", DIM, acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    let out = admin(entry, &["remove-node", "--drain", "4", "--json"]);
    let r: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(r["transfers"].as_array().map(|t| t.len()), Some(3), "{r}");
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, entry).is_some_and(
            |v| {
                settled(&v)
                    && v.nodes
                        .get(&4)
                        .is_some_and(|n| n.status == NodeStatus::Removed)
                    && partitions_settled(&v)
                    && v.shard_map.unwrap().shards_on(4).is_empty()
                    && v.partition_map.unwrap().shards_on(4).is_empty()
            }
        )),
        "node 4 was never drained and removed: {:?}",
        view(&rt, entry).map(|v| (v.nodes, v.shard_map, v.transfers, v.partition_transfers))
    );
    let s = admin(entry, &["status", "--json"]);
    let sv: serde_json::Value = serde_json::from_str(&s).unwrap();
    let in_raft = |key: &str| {
        sv["status"][key]
            .as_array()
            .is_some_and(|l| l.iter().any(|x| x == 4))
    };
    assert!(!in_raft("learners") && !in_raft("voters"), "{sv}");
    std::thread::sleep(Duration::from_millis(500));
    let refused = load.finish("remove-node --drain");
    assert!(
        refused.is_empty(),
        "upserts refused during the drain: {refused:?}"
    );
    assert_items_converged(&rt, entry, &base, &acked.lock().unwrap(), &[], None);

    // --- a node whose config names a member to join through -------------
    let m5 = &members[4];
    procs.push(NodeProc::start_config(&m5.config, &m5.data_dir));
    assert!(
        eventually(Duration::from_secs(60), || {
            let s = admin(entry, &["status", "--json"]);
            let v: serde_json::Value = serde_json::from_str(&s).unwrap_or_default();
            v["view"]["nodes"]["5"]["internal"] == m5.internal.as_str()
                && v["view"]["nodes"]["5"]["http"] == m5.http.as_str()
                && v["status"]["learners"]
                    .as_array()
                    .is_some_and(|l| l.iter().any(|x| x == 5))
        }),
        "node 5 (cluster.join) was never registered and added as a learner"
    );

    // --- drain a voter: a learner takes its vote, node 5 its replicas -----
    let front: Vec<String> = members[..2].iter().map(|m| m.http.clone()).collect();
    let load = ClusterLoad::start(front, "moved-item", DIM, acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    admin(entry, &["remove-node", "--drain", "3"]);
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, entry).is_some_and(
            |v| {
                settled(&v)
                    && v.nodes
                        .get(&3)
                        .is_some_and(|n| n.status == NodeStatus::Removed)
            }
        )),
        "node 3 was never drained and removed: {:?}",
        view(&rt, entry).map(|v| (v.nodes, v.shard_map, v.transfers))
    );
    let s = admin(entry, &["status", "--json"]);
    let sv: serde_json::Value = serde_json::from_str(&s).unwrap();
    let ids = |key: &str| -> Vec<u64> {
        let mut v: Vec<u64> = sv["status"][key]
            .as_array()
            .map(|l| l.iter().filter_map(|x| x.as_u64()).collect())
            .unwrap_or_default();
        v.sort_unstable();
        v
    };
    assert_eq!(ids("voters"), vec![1, 2, 5], "{sv}");
    assert_eq!(ids("learners"), Vec::<u64>::new(), "{sv}");
    std::thread::sleep(Duration::from_millis(500));
    let refused = load.finish("remove-node --drain (a voter)");
    assert!(
        refused.is_empty(),
        "upserts refused during the drain: {refused:?}"
    );
    assert_items_converged(&rt, entry, &base, &acked.lock().unwrap(), &[], None);

    // --- set-replication: every shard on all three remaining nodes --------
    let out = admin_raw(entry, &["set-replication", "4"]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("Active nodes"),
        "{out:?}"
    );
    let front: Vec<String> = members[..2].iter().map(|m| m.http.clone()).collect();
    let load = ClusterLoad::start(front, "moved-item", DIM, acked.clone());
    std::thread::sleep(Duration::from_millis(500));
    let out = admin(entry, &["set-replication", "3"]);
    assert!(out.contains("6 copies queued"), "{out}");
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, entry).is_some_and(
            |v| {
                settled(&v)
                    && v.shard_map.is_some_and(|m| {
                        m.replication == 3 && m.replicas.iter().all(|r| r.len() == 3)
                    })
            }
        )),
        "replication never reached 3: {:?}",
        view(&rt, entry).map(|v| (v.shard_map, v.transfers))
    );
    std::thread::sleep(Duration::from_millis(500));
    let refused = load.finish("set-replication 3");
    assert!(
        refused.is_empty(),
        "upserts refused while adding copies: {refused:?}"
    );
    assert_items_converged(&rt, entry, &base, &acked.lock().unwrap(), &[], None);
    drop(procs);
}
