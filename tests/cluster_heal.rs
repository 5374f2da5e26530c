//! Self-healing on a real cluster: three `funnel serve` processes (6
//! shards, 2 replicas each) under continuous recommend load and item
//! upserts.
//!
//! - `dead_node_shards_are_re_replicated`: kill -9 one node with
//!   `cluster.replace_dead_after = 3`; the leader re-places its copies on
//!   the live nodes. Measures the time from the kill until every shard has
//!   2 Active copies on live nodes. The node then comes back holding
//!   nothing, and `funnel admin rebalance` gives it copies again.
//! - `leader_killed_in_the_middle_of_a_move`: two queued moves between the
//!   followers (one at a time); the leader is killed while one is in
//!   flight; the new leader finishes them.
//!
//! What must hold in both: no recommend request fails and every answer has
//! coverage 1; every acknowledged upsert is in every copy of its shard; the
//! copies of each shard have equal digests.
//!
//! Ports 17400-17553 only (base + 1..23 per test) (fixed, so they do not collide with other test
//! files).

mod support;

use funnel::cluster::{ClusterStatus, ClusterView, ReplicaState};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    admin, assert_items_converged, copies, eventually, members_list, recommend, rt, small_bundle,
    write_members, ClusterLoad, Http, Member, NodePorts, NodeProc,
};

const SHARDS: u32 = 6;
const DIM: usize = 16;

/// Configs of nodes 1..=3 on ports `base + 1..`, `base + 11..`, `base + 21..`.
fn write_configs(dir: &Path, bundle: &Path, base: u16, cluster_extra: &str) -> Vec<Member> {
    let nodes = NodePorts::layout(3, base);
    let extra = format!("{}\n{cluster_extra}", members_list(&nodes));
    write_members(dir, &nodes, Some(bundle), SHARDS, "", &extra)
}

fn status_view(
    rt: &tokio::runtime::Runtime,
    internal: &str,
) -> Option<(ClusterStatus, ClusterView)> {
    rt.block_on(funnel::admin::fetch_view(internal))
        .ok()
        .flatten()
}

fn view(rt: &tokio::runtime::Runtime, internal: &str) -> Option<ClusterView> {
    status_view(rt, internal).map(|(_, v)| v)
}

/// Every replica Active, `copies` per shard, no transfer queued.
fn settled(v: &ClusterView, copies: usize) -> bool {
    v.transfers.is_empty()
        && v.shard_map.as_ref().is_some_and(|m| {
            m.replicas
                .iter()
                .all(|rs| rs.len() == copies && rs.iter().all(|r| r.state == ReplicaState::Active))
        })
}

/// Items per shard of the bundle, read off the settled cluster.
fn base_items(rt: &tokio::runtime::Runtime, internal: &str) -> BTreeMap<u32, u64> {
    let v = view(rt, internal).unwrap();
    let base: BTreeMap<u32, u64> = copies(rt, &v)
        .into_iter()
        .map(|(s, cs)| (s, cs[0].1))
        .collect();
    assert_eq!(base.len(), SHARDS as usize, "{base:?}");
    base
}

/// Starts nodes 1..=3 and waits until every shard is placed and served.
fn start_cluster(
    members: &[Member],
    rt: &tokio::runtime::Runtime,
    http: &Http,
) -> Vec<Option<NodeProc>> {
    let procs: Vec<Option<NodeProc>> = members
        .iter()
        .map(|m| Some(NodeProc::start_config(&m.config, &m.data_dir)))
        .collect();
    assert!(
        eventually(Duration::from_secs(90), || view(rt, &members[1].internal)
            .is_some_and(|v| settled(&v, 2))),
        "the cluster never placed and activated every replica"
    );
    for m in members {
        assert!(
            eventually(Duration::from_secs(60), || recommend(
                http, &m.http, "u000001"
            )
            .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
            "node {} never served with every shard covered",
            m.id
        );
    }
    support::expect_three_voters(rt, &members[0].internal);
    procs
}

fn leader(rt: &tokio::runtime::Runtime, members: &[&Member]) -> Option<u64> {
    members
        .iter()
        .find_map(|m| status_view(rt, &m.internal).and_then(|(s, _)| s.leader))
}

#[test]
fn dead_node_shards_are_re_replicated() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 31, SHARDS);
    // the operator rebalances here: the leader must not on its own. The
    // write timeout is raised from its 1 s default: this test asks that a
    // follower's death refuses no upsert, and on a 2-core box running two
    // of these clusters at once a commit once took longer than 1 s (the
    // leader timed out with an unknown outcome; a full local suite run,
    // 2026-12-07), which says nothing about failing over
    let members = write_configs(
        tmp.path(),
        &bundle,
        17400,
        "replace_dead_after = 3\nauto_rebalance = false\nwrite_timeout_ms = 3000",
    );
    let http = Http::default();
    let rt = rt();
    let mut procs = start_cluster(&members, &rt, &http);
    let base = base_items(&rt, &members[0].internal);

    // kill a follower (the highest id that does not lead)
    let lead = leader(&rt, &members.iter().collect::<Vec<_>>()).expect("a leader is known");
    let victim = members.iter().rev().find(|m| m.id != lead).unwrap();
    let live: Vec<&Member> = members.iter().filter(|m| m.id != victim.id).collect();
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = ClusterLoad::start(
        live.iter().map(|m| m.http.clone()).collect(),
        "heal-item",
        DIM,
        acked.clone(),
    );
    std::thread::sleep(Duration::from_secs(1));
    procs[victim.id as usize - 1]
        .take()
        .expect("the victim runs")
        .kill9();
    let killed = Instant::now();
    let on_live = |v: &ClusterView| {
        v.shard_map.as_ref().is_some_and(|m| {
            m.replicas.iter().all(|rs| {
                rs.iter()
                    .filter(|r| r.node != victim.id && r.state == ReplicaState::Active)
                    .count()
                    >= 2
            })
        })
    };
    let mut last = None;
    let healed = eventually(Duration::from_secs(60), || {
        last = view(&rt, &live[0].internal);
        last.as_ref().is_some_and(on_live)
    });
    let took = killed.elapsed();
    assert!(
        healed,
        "60 s after node {} died, not every shard had 2 Active copies on live nodes: {:?}",
        victim.id,
        last.map(|v| v.shard_map)
    );
    println!(
        "FIGURE: every shard back to R=2 Active copies on live nodes {:.2} s after kill -9 of node {} (replace_dead_after = 3 s)",
        took.as_secs_f64(),
        victim.id
    );
    // the dead node's entries leave the map once the drain grace passed
    assert!(
        eventually(Duration::from_secs(30), || view(&rt, &live[0].internal)
            .is_some_and(|v| settled(&v, 2)
                && v.shard_map
                    .as_ref()
                    .is_some_and(|m| m.shards_on(victim.id).is_empty()))),
        "the dead node's copies were not dropped"
    );
    std::thread::sleep(Duration::from_secs(1));
    let refused = load.finish("kill -9 and re-replication");
    assert!(refused.is_empty(), "{} upserts refused", refused.len());
    let acked_now = acked.lock().unwrap().clone();
    assert_items_converged(&rt, &live[0].internal, &base, &acked_now, &[], Some(2));

    // the node comes back: it catches up from Raft and holds nothing
    procs[victim.id as usize - 1] = Some(NodeProc::start_config(&victim.config, &victim.data_dir));
    assert!(
        eventually(Duration::from_secs(60), || recommend(
            &http,
            &victim.http,
            "u000002"
        )
        .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
        "the restarted node never served with every shard covered"
    );
    // its own state catches up from Raft: the map holds nothing of it
    let nothing_on_victim = |v: &ClusterView| {
        v.shard_map
            .as_ref()
            .is_some_and(|m| m.shards_on(victim.id).is_empty())
    };
    assert!(
        eventually(Duration::from_secs(30), || view(&rt, &victim.internal)
            .is_some_and(|v| nothing_on_victim(&v))),
        "the restarted node's view never caught up: {:?}",
        view(&rt, &victim.internal).map(|v| v.shard_map)
    );
    std::thread::sleep(Duration::from_secs(2));
    let v = view(&rt, &live[0].internal).expect("a live node answers");
    assert!(
        nothing_on_victim(&v) && settled(&v, 2),
        "the restarted node got copies back without a rebalance: {:?}",
        v.shard_map
    );
    // a rebalance puts it back to work; no copy is below R meanwhile
    let acked2 = Arc::new(Mutex::new(acked_now.clone()));
    let load = ClusterLoad::start(
        members.iter().map(|m| m.http.clone()).collect(),
        "heal-item-2",
        DIM,
        acked2.clone(),
    );
    admin(&live[0].internal, &["rebalance"]);
    assert!(
        eventually(Duration::from_secs(90), || view(&rt, &live[0].internal)
            .is_some_and(|v| settled(&v, 2)
                && !v
                    .shard_map
                    .as_ref()
                    .is_some_and(|m| m.shards_on(victim.id).is_empty()))),
        "the rebalance did not give the returned node copies"
    );
    std::thread::sleep(Duration::from_secs(1));
    let refused = load.finish("rebalance onto the returned node");
    assert!(refused.is_empty(), "{} upserts refused", refused.len());
    let acked_all = acked2.lock().unwrap().clone();
    assert_items_converged(&rt, &live[0].internal, &base, &acked_all, &[], Some(2));
}

#[test]
fn leader_killed_in_the_middle_of_a_move() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 37, SHARDS);
    // no automatic re-replication or balancing here: this is about the
    // transfer queue (the moves below skew the placement on purpose, and
    // auto_rebalance would move copies back once they finished)
    let members = write_configs(
        tmp.path(),
        &bundle,
        17450,
        "replace_dead_after = 0\nauto_rebalance = false",
    );
    let http = Http::default();
    let rt = rt();
    let mut procs = start_cluster(&members, &rt, &http);
    let base = base_items(&rt, &members[0].internal);
    let lead = leader(&rt, &members.iter().collect::<Vec<_>>()).expect("a leader is known");
    let followers: Vec<&Member> = members.iter().filter(|m| m.id != lead).collect();
    let (a, b) = (followers[0], followers[1]);
    // the shards on a but not on b move a -> b, one at a time
    let v = view(&rt, &a.internal).unwrap();
    let map = v.shard_map.clone().unwrap();
    let moving: Vec<u32> = (0..SHARDS)
        .filter(|&s| map.replica(s, a.id).is_some() && map.replica(s, b.id).is_none())
        .collect();
    assert!(!moving.is_empty(), "{map:?}");
    admin(
        &a.internal,
        &["set-setting", "transfers.max_concurrent", "1"],
    );
    let acked = Arc::new(Mutex::new(Vec::new()));
    let load = ClusterLoad::start(
        followers.iter().map(|m| m.http.clone()).collect(),
        "leader-move-item",
        DIM,
        acked.clone(),
    );
    std::thread::sleep(Duration::from_millis(500));
    for s in &moving {
        admin(
            &a.internal,
            &[
                "move-shard",
                "--shard",
                &s.to_string(),
                "--from",
                &a.id.to_string(),
                "--to",
                &b.id.to_string(),
            ],
        );
    }
    // kill the leader while a transfer is in flight (Loading if we catch it)
    let mut seen = None;
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(30) {
        if let Some(v) = view(&rt, &a.internal) {
            if let Some((t, p)) = v.transfers.iter().find(|(_, p)| p.in_flight()) {
                seen = Some((*t, *p));
                if *p == funnel::cluster::Phase::Loading || t0.elapsed() > Duration::from_secs(5) {
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let (t, p) = seen.expect("a transfer was seen in flight");
    procs[lead as usize - 1]
        .take()
        .expect("the leader runs")
        .kill9();
    let killed = Instant::now();
    println!("killed leader node {lead} while {t} was {p:?}");
    // a new leader finishes the queue
    let finished = eventually(Duration::from_secs(60), || {
        view(&rt, &a.internal).is_some_and(|v| {
            settled(&v, 2)
                && v.shard_map.as_ref().is_some_and(|m| {
                    moving
                        .iter()
                        .all(|&s| m.replica(s, b.id).is_some() && m.replica(s, a.id).is_none())
                })
        })
    });
    let after = view(&rt, &a.internal);
    assert!(
        finished,
        "the new leader did not finish the moves: {:?}",
        after.map(|v| (v.transfers, v.shard_map))
    );
    let mut new_lead = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            new_lead = leader(&rt, &followers);
            new_lead.is_some_and(|l| l != lead)
        }),
        "no new leader among the survivors: last seen {new_lead:?}, statuses {:?}",
        followers
            .iter()
            .map(|m| status_view(&rt, &m.internal).map(|(s, _)| (s.id, s.role, s.term, s.leader)))
            .collect::<Vec<_>>()
    );
    let done = killed.elapsed();
    std::thread::sleep(Duration::from_secs(1));
    let refusals = load.finish("leader killed mid-move");
    let refused: Vec<Instant> = refusals.iter().map(|r| r.at).collect();
    // upserts are refused only while there is no leader to commit them
    let last_refused = refused
        .iter()
        .filter(|&&at| at >= killed)
        .map(|&at| at.duration_since(killed))
        .max();
    println!(
        "leader killed mid-move: moves finished {:.2} s after the kill; {} upserts refused before the kill, last refusal after it at {:?}",
        done.as_secs_f64(),
        refused.iter().filter(|&&at| at < killed).count(),
        last_refused
    );
    assert!(
        refused.iter().all(|&at| at >= killed),
        "upserts were refused before the leader was killed"
    );
    assert!(
        last_refused.is_none_or(|d| d < Duration::from_secs(5)),
        "upserts were still refused {last_refused:?} after the leader was killed"
    );
    // the old leader comes back; every copy converges
    let old = &members[lead as usize - 1];
    procs[lead as usize - 1] = Some(NodeProc::start_config(&old.config, &old.data_dir));
    // an upsert refused because the leader died under it may have
    // committed before it died (the node retries an idempotent write with
    // the next leader, but only until its write timeout)
    let acked_now = acked.lock().unwrap().clone();
    let unsure: Vec<String> = refusals.into_iter().map(|r| r.item_id).collect();
    assert_items_converged(&rt, &a.internal, &base, &acked_now, &unsure, Some(2));
}

#[test]
fn a_restarted_member_catches_up_on_events_it_missed() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 41, SHARDS);
    // every node holds every user partition, so node 3's own copy of the
    // user (not another node's) is what its restart must bring back
    let members = write_configs(
        tmp.path(),
        &bundle,
        17480,
        "replace_dead_after = 0\nuser_replication = 3",
    );
    let http = Http::default();
    let rt = rt();
    let mut procs = start_cluster(&members, &rt, &http);
    let user = "u000123";
    let events_of = |m: &Member| -> Option<u64> {
        let (s, v) = http.get(&format!("http://{}/v1/users/{user}", m.http));
        (s == 200).then(|| v["events"].as_u64().unwrap_or(0))
    };
    let before = events_of(&members[2]).expect("node 3 answers GetUser");
    // an item the user will click while node 3 is down: the first one node 3
    // recommends now (so a recommendation that still holds it is stale)
    let rec = recommend(&http, &members[2].http, user).expect("node 3 recommends");
    let ids = support::item_ids(&rec);
    let clicked: Vec<String> = ids.iter().take(2).cloned().collect();
    assert_eq!(clicked.len(), 2, "{rec}");
    // clicks node 3 applied before it stops: one it received itself (its
    // own event log) and one forwarded by node 2 (its peers' log); its
    // restart must replay both, the bundle holds neither
    let earlier: Vec<String> = ids.iter().skip(2).take(2).cloned().collect();
    assert_eq!(earlier.len(), 2, "{rec}");
    for (m, item) in [(&members[2], &earlier[0]), (&members[1], &earlier[1])] {
        let (s, v) = http.post(
            &format!("http://{}/v1/events", m.http),
            json!({"events": [{"user_id": user, "item_id": item, "kind": "click"}]}),
        );
        assert_eq!(s, 200, "{v}");
    }
    assert!(
        eventually(Duration::from_secs(10), || events_of(&members[2])
            .is_some_and(|n| n >= before + 2)),
        "node 3 never applied the two earlier clicks"
    );
    let before = before + 2;
    let clicked: Vec<String> = clicked.into_iter().chain(earlier).collect();

    procs[2].take().expect("node 3 runs").kill9();
    for item in &clicked[..2] {
        let (s, v) = http.post(
            &format!("http://{}/v1/events", members[0].http),
            json!({"events": [{"user_id": user, "item_id": item, "kind": "click"}]}),
        );
        assert_eq!(s, 200, "{v}");
    }
    let on_node1 = events_of(&members[0]).unwrap();
    assert!(
        on_node1 >= before + 2,
        "node 1 has {on_node1}, before {before}"
    );

    let restarted = Instant::now();
    procs[2] = Some(NodeProc::start_config(
        &members[2].config,
        &members[2].data_dir,
    ));
    let mut last = None;
    let caught_up = eventually(Duration::from_secs(60), || {
        last = events_of(&members[2]);
        last.is_some_and(|n| n >= before + 2)
    });
    assert!(
        caught_up,
        "node 3 lost the clicks it applied or never saw those it missed: {last:?} events, wanted {}",
        before + 2
    );
    // and counted each once: the replay of its own logs stops where live
    // applying began, and the catch-up skips what the replay had
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        events_of(&members[2]),
        Some(before + 2),
        "node 3 counted an event twice after its restart"
    );
    println!(
        "node 3 showed the missed clicks {:.2} s after its restart began",
        restarted.elapsed().as_secs_f64()
    );
    let (_, v) = http.get(&format!("http://{}/v1/users/{user}", members[2].http));
    let recent: Vec<String> = v["recent"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| e["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    for item in &clicked {
        assert!(
            recent.contains(item),
            "node 3's recent events lack {item}: {v}"
        );
    }
    // the clicked items are filtered from node 3's recommendations
    assert!(
        eventually(Duration::from_secs(30), || recommend(
            &http,
            &members[2].http,
            user
        )
        .is_ok_and(|r| {
            let ids = support::item_ids(&r);
            !ids.is_empty() && clicked.iter().all(|c| !ids.contains(c))
        })),
        "node 3 still recommends an item the user clicked while it was down"
    );
    // applied once: a second sweep or forwards do not count them again
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(events_of(&members[2]), events_of(&members[0]));
}

/// A follower restarted under its old id with an empty data directory (a
/// lost volume). openraft's leader asserts that a follower's log never goes
/// backwards (a panic with debug assertions, a wrong view of the follower
/// without); the network layer (`cluster::log_reversion`) reports such a
/// node unreachable instead, so the leader stays leader and writes keep
/// committing on the other two.
#[test]
fn a_node_back_with_an_empty_data_directory_does_not_stop_the_leader() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 43, SHARDS);
    let members = write_configs(tmp.path(), &bundle, 17530, "replace_dead_after = 0");
    let http = Http::default();
    let rt = rt();
    let mut procs = start_cluster(&members, &rt, &http);
    let all: Vec<&Member> = members.iter().collect();
    let leader_id = leader(&rt, &all).expect("the cluster has a leader");
    let upsert = |target: &str, id: &str| -> (u16, serde_json::Value) {
        let vector: Vec<f32> = (0..DIM).map(|d| (d % 5) as f32 / 5.0).collect();
        http.post(
            &format!("http://{target}/v1/items"),
            json!({"items": [{"item_id": id, "vector": vector, "categories": []}]}),
        )
    };
    // writes first, so the leader has seen every follower match a real log
    for (i, m) in members.iter().enumerate() {
        let (s, v) = upsert(&m.http, &format!("before-{i}"));
        assert_eq!(s, 200, "{v}");
    }
    // the victim: a follower that does not bootstrap (node 1 would start a
    // new cluster of its own from an empty directory)
    let victim = members
        .iter()
        .position(|m| m.id != leader_id && m.id != 1)
        .expect("a follower other than node 1");
    procs[victim].take().expect("victim runs").kill9();
    std::fs::remove_dir_all(&members[victim].data_dir).unwrap();
    std::fs::create_dir_all(&members[victim].data_dir).unwrap();
    procs[victim] = Some(NodeProc::start_config(
        &members[victim].config,
        &members[victim].data_dir,
    ));
    // time for the leader to replicate to it (and, unguarded, to trip)
    std::thread::sleep(Duration::from_secs(4));
    let others: Vec<&Member> = members
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != victim)
        .map(|(_, m)| m)
        .collect();
    for (i, m) in others.iter().enumerate() {
        for j in 0..3 {
            let (s, v) = upsert(&m.http, &format!("after-{i}-{j}"));
            assert_eq!(s, 200, "a write through node {} after the wipe: {v}", m.id);
        }
    }
    assert_eq!(
        leader(&rt, &others),
        Some(leader_id),
        "the leader changed or stopped after a follower came back empty"
    );
    drop(procs);
}
