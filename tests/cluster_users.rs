//! User partitions on a real cluster: three `funnel serve` processes with
//! one copy of each user partition (`user_replication = 1`), so most users
//! live on another node than the one a request reaches.
//!
//! - A recommend and a `GET /v1/users` for a user whose partition is on
//!   node 2 alone, sent to node 1, read the state from node 2 (node 1's
//!   `funnel_user_state_reads_total{source="remote"}` grows) and see a click
//!   that node 3 accepted.
//! - With node 2 killed, node 1 still answers that user's recommends within
//!   the deadline, saying the user state was unavailable.
//!
//! Ports 23000-23099 only (fixed, so they do not collide with other test
//! files).

mod support;

use funnel::cluster::{ClusterView, ReplicaState};
use funnel::ids::user_partition;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{
    eventually, members_list, metric_value, recommend, rt, small_bundle, write_members, Http,
    NodePorts, NodeProc,
};

const SHARDS: u32 = 4;
const PARTITIONS: u32 = 16;

fn view(rt: &tokio::runtime::Runtime, internal: &str) -> Option<ClusterView> {
    rt.block_on(funnel::admin::fetch_view(internal))
        .ok()
        .flatten()
        .map(|(_, v)| v)
}

#[test]
fn requests_read_a_user_from_the_node_holding_its_partition() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 23, SHARDS);
    let nodes = NodePorts::layout(3, 23000);
    let extra = format!(
        "{}\nuser_partitions = {PARTITIONS}\nuser_replication = 1\nreplace_dead_after = 0",
        members_list(&nodes)
    );
    let members = write_members(tmp.path(), &nodes, Some(&bundle), SHARDS, "", &extra);
    let mut procs: Vec<Option<NodeProc>> = members
        .iter()
        .map(|m| Some(NodeProc::start_config(&m.config, &m.data_dir)))
        .collect();
    let rt = rt();
    let http = Http::default();
    let mut map = None;
    assert!(
        eventually(Duration::from_secs(90), || {
            map = view(&rt, &members[0].internal).and_then(|v| v.partition_map);
            map.as_ref().is_some_and(|m| {
                m.replicas
                    .iter()
                    .all(|rs| rs.len() == 1 && rs[0].state == ReplicaState::Active)
            })
        }),
        "the user partition map never placed one Active copy per partition: {map:?}"
    );
    let map = map.unwrap();
    assert_eq!(map.shards, PARTITIONS);
    for m in &members {
        assert!(
            eventually(Duration::from_secs(60), || recommend(
                &http, &m.http, "u000001"
            )
            .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
            "node {} never served",
            m.id
        );
    }
    // a user of the bundle whose partition only node 2 holds
    let user = (1..500)
        .map(|i| format!("u{i:06}"))
        .find(|u| map.replica(user_partition(u, PARTITIONS), 2).is_some())
        .expect("some user lives on node 2");
    let rec = recommend(&http, &members[2].http, &user).expect("node 3 recommends");
    let clicked = support::item_ids(&rec)
        .first()
        .cloned()
        .expect("a recommendation");
    let (s, v) = http.post(
        &format!("http://{}/v1/events", members[2].http),
        json!({"events": [{"user_id": user, "item_id": clicked, "kind": "click"}]}),
    );
    assert_eq!(s, 200, "{v}");

    let remote_reads = |http: &Http| {
        metric_value(
            http,
            &members[0].http,
            "funnel_user_state_reads_total{source=\"remote\"}",
        )
    };
    let before = remote_reads(&http);
    // node 1 reads the user from node 2: the click is there, and filtered
    assert!(
        eventually(Duration::from_secs(10), || {
            let (s, v) = http.get(&format!("http://{}/v1/users/{user}", members[0].http));
            s == 200
                && v["recent"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|e| e["item_id"] == clicked.as_str()))
        }),
        "node 1 never showed the click node 3 accepted"
    );
    let r = recommend(&http, &members[0].http, &user).expect("node 1 recommends");
    assert!(
        !support::item_ids(&r).contains(&clicked),
        "node 1 recommends the item the user just clicked: {r}"
    );
    assert_eq!(r["degraded"].as_array().map_or(0, |d| d.len()), 0, "{r}");
    let after = remote_reads(&http);
    assert!(
        after >= before + 2.0,
        "node 1 read the user {} times from another node, expected 2 (before {before}, after {after})",
        after - before
    );
    // a user node 1 holds itself is read locally
    let local_user = (1..500)
        .map(|i| format!("u{i:06}"))
        .find(|u| map.replica(user_partition(u, PARTITIONS), 1).is_some())
        .expect("some user lives on node 1");
    let local_before = metric_value(
        &http,
        &members[0].http,
        "funnel_user_state_reads_total{source=\"local\"}",
    );
    recommend(&http, &members[0].http, &local_user).expect("node 1 recommends");
    assert_eq!(remote_reads(&http), after, "a local user was read remotely");
    assert!(
        metric_value(
            &http,
            &members[0].http,
            "funnel_user_state_reads_total{source=\"local\"}"
        ) > local_before
    );

    // the node says how many users it holds and what they take
    let held = metric_value(&http, &members[0].http, "funnel_user_states");
    let bytes = metric_value(&http, &members[0].http, "funnel_user_state_bytes");
    assert!(
        held >= 1.0 && bytes > held * 100.0,
        "{held} users, {bytes} bytes"
    );

    // the only copy is gone: node 1 still answers in time, and says why
    // the user's state may be stale
    procs[1].take().expect("node 2 runs").kill9();
    let t0 = Instant::now();
    let (s, r) = http.post(
        &format!("http://{}/v1/recommend", members[0].http),
        json!({"user_id": user, "k": 5, "deadline_ms": 200}),
    );
    let took = t0.elapsed();
    assert_eq!(s, 200, "{r}");
    let degraded: Vec<String> = r["degraded"]
        .as_array()
        .map(|d| d.iter().map(|x| x.to_string()).collect())
        .unwrap_or_default();
    assert!(degraded.iter().any(|d| d.contains("user state")), "{r}");
    assert!(
        took < Duration::from_millis(1500),
        "the recommend took {took:?} with the user's only copy down"
    );
    for p in procs.iter_mut().flatten() {
        p.kill9();
    }
}
