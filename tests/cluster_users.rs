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
//! - Each node keeps the states of the users of its own partitions only
//!   (its `funnel_user_states` gauge counts exactly the bundle's users
//!   there), and a partition moved to another node arrives whole: the
//!   user's event count on the new copy is the old one plus every event
//!   acknowledged during the move, none lost and none counted twice, and
//!   the old node lets the partition's users go.
//!
//! - With `events.ack = all`, an event acknowledged through a node without
//!   a copy of its user is counted on every copy by then; a frozen copy
//!   gets events refused, naming it, until it is counted down, then
//!   catches up; a copy whose process is gone is not waited for.
//!
//! Ports 23000-23099 only (fixed, so they do not collide with other test
//! files).

mod support;

use funnel::cluster::{ClusterView, ReplicaState};
use funnel::ids::user_partition;
use serde_json::json;
use std::time::{Duration, Instant};
use support::{
    admin, eventually, metric_value, recommend, rt, small_bundle, start_partitioned, Http,
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
    let rt = rt();
    let http = Http::default();
    let (members, procs, map) =
        start_users(tmp.path(), &bundle, &NodePorts::layout(3, 23000), 1, &rt);
    let mut procs: Vec<Option<NodeProc>> = procs.into_iter().map(Some).collect();
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

/// Three nodes on `nodes` serving `bundle` (`SHARDS` shards), users in
/// `PARTITIONS` partitions of `copies` copies, no re-replication of a dead
/// node's copies: `support::start_partitioned`.
fn start_users(
    dir: &std::path::Path,
    bundle: &std::path::Path,
    nodes: &[NodePorts],
    copies: usize,
    rt: &tokio::runtime::Runtime,
) -> (
    Vec<support::Member>,
    Vec<NodeProc>,
    funnel::cluster::ShardMap,
) {
    start_partitioned(
        dir,
        nodes,
        bundle,
        SHARDS,
        (PARTITIONS, copies),
        "replace_dead_after = 0",
        rt,
        Duration::from_secs(90),
    )
}

/// The number of events `GET /v1/users/ID` on `node_http` reports.
fn user_events(http: &Http, node_http: &str, user: &str) -> Option<u64> {
    let (s, v) = http.get(&format!("http://{node_http}/v1/users/{user}"));
    (s == 200).then(|| v["events"].as_u64()).flatten()
}

#[test]
fn each_node_keeps_its_own_partitions_and_a_moved_partition_arrives_whole() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 29, SHARDS);
    let bundle_users = funnel::bundle::Bundle::open(
        &bundle,
        &funnel::bundle::OpenCheck {
            feature_schema_hash: None,
        },
    )
    .and_then(|b| b.users())
    .expect("the bundle's user table")
    .0
    .ids;
    let rt = rt();
    let http = Http::default();
    let (members, _procs, map) =
        start_users(tmp.path(), &bundle, &NodePorts::layout(3, 23050), 1, &rt);
    // each node holds exactly the bundle's users of its own partitions
    let users_on = |map: &funnel::cluster::ShardMap, node: u64| {
        bundle_users
            .iter()
            .filter(|u| map.replica(user_partition(u, PARTITIONS), node).is_some())
            .count() as f64
    };
    for m in &members {
        let want = users_on(&map, m.id);
        assert!(want > 0.0 && want < bundle_users.len() as f64);
        let mut held = 0.0;
        assert!(
            eventually(Duration::from_secs(20), || {
                held = metric_value(&http, &m.http, "funnel_user_states");
                held == want
            }),
            "node {} holds {held} user states, its partitions have {want} of the bundle's {} users",
            m.id,
            bundle_users.len()
        );
    }

    // a user on node 2 moves to node 3 while node 1 takes events for it
    let user = bundle_users
        .iter()
        .find(|u| map.replica(user_partition(u, PARTITIONS), 2).is_some())
        .expect("some user lives on node 2")
        .clone();
    let partition = user_partition(&user, PARTITIONS);
    let before = user_events(&http, &members[0].http, &user).expect("node 1 reads the user");
    let items = support::item_ids(&recommend(&http, &members[0].http, &user).expect("recommends"));
    assert!(items.len() >= 3, "{items:?}");
    // events well before the move: node 3 holds no copy then, so its pulls
    // read past them, and only the load's fetch from the origin (node 1)
    // brings them (a pull answers only events older than 2 s)
    let early = 4u64;
    for i in 0..early as usize {
        let (s, body) = http.post(
            &format!("http://{}/v1/events", members[0].http),
            json!({"events": [{"user_id": user, "item_id": items[i % items.len()], "kind": "view"}]}),
        );
        assert_eq!(s, 200, "{body}");
    }
    std::thread::sleep(Duration::from_secs(4));
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sender = {
        let (stop, user, node, items) = (
            stop.clone(),
            user.clone(),
            members[0].http.clone(),
            items.clone(),
        );
        std::thread::spawn(move || {
            let http = Http::default();
            let mut acked = 0u64;
            let mut i = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let (s, _) = http.post(
                    &format!("http://{node}/v1/events"),
                    json!({"events": [{"user_id": user, "item_id": items[i % items.len()], "kind": "view"}]}),
                );
                if s == 200 {
                    acked += 1;
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            acked
        })
    };
    std::thread::sleep(Duration::from_millis(300));
    let p = partition.to_string();
    admin(
        &members[0].internal,
        &[
            "move-shard",
            "--user-partition",
            &p,
            "--from",
            "2",
            "--to",
            "3",
        ],
    );
    let mut moved = None;
    assert!(
        eventually(Duration::from_secs(60), || {
            moved = view(&rt, &members[0].internal).and_then(|v| v.partition_map);
            moved.as_ref().is_some_and(|m| {
                let copies = &m.replicas[partition as usize];
                copies.len() == 1 && copies[0].node == 3 && copies[0].state == ReplicaState::Active
            })
        }),
        "user partition {partition} never moved to node 3: {moved:?}"
    );
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let acked = sender.join().expect("the sender thread");
    assert!(
        acked > 5,
        "only {acked} events were acknowledged during the move"
    );
    // node 3 reads its own new copy: every acknowledged event, once
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            seen = user_events(&http, &members[2].http, &user);
            seen == Some(before + early + acked)
        }),
        "node 3's copy counts {seen:?} events for {user}, expected {before} + {early} + {acked} acknowledged"
    );
    // and node 2 let the partition's users go
    let moved = moved.unwrap();
    for m in &members[1..] {
        let want = users_on(&moved, m.id);
        let mut held = 0.0;
        assert!(
            eventually(Duration::from_secs(20), || {
                held = metric_value(&http, &m.http, "funnel_user_states");
                held == want
            }),
            "node {} holds {held} user states after the move, its partitions have {want}",
            m.id
        );
    }
}

/// `events.ack = all` (the default): an event acknowledged by a node that
/// holds no copy of its user is already counted on every copy when the
/// answer arrives. A copy that is frozen (SIGSTOP: its port accepts and
/// never answers) gets the events refused as not confirmed, naming it,
/// until the data plane counts it down; from then on they are acknowledged
/// without it, and it catches up once it runs again. A copy whose process
/// is gone is not waited for at all.
#[test]
fn an_acknowledged_event_is_on_every_live_copy_and_a_frozen_copy_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 31, SHARDS);
    let rt = rt();
    let http = Http::default();
    let (members, mut procs, map) =
        start_users(tmp.path(), &bundle, &NodePorts::packed(3, 23080), 2, &rt);
    // a user whose copies are on nodes 2 and 3, not on node 1
    let user = (1..500)
        .map(|i| format!("u{i:06}"))
        .find(|u| map.replica(user_partition(u, PARTITIONS), 1).is_none())
        .expect("some user is not on node 1");
    let items = support::item_ids(&recommend(&http, &members[0].http, &user).expect("recommends"));
    assert!(!items.is_empty());
    let send = |http: &Http, i: usize| {
        http.post(
            &format!("http://{}/v1/events", members[0].http),
            json!({"events": [{"user_id": user, "item_id": items[i % items.len()], "kind": "view"}]}),
        )
    };
    let base = user_events(&http, &members[1].http, &user).expect("node 2 reads its copy");
    assert_eq!(user_events(&http, &members[2].http, &user), Some(base));
    for i in 0..5u64 {
        let (s, v) = send(&http, i as usize);
        assert_eq!(s, 200, "{v}");
        // no waiting: the acknowledgement came after both copies had it
        for m in &members[1..] {
            assert_eq!(
                user_events(&http, &m.http, &user),
                Some(base + i + 1),
                "node {}'s copy right after event {i} was acknowledged",
                m.id
            );
        }
    }

    // node 3 freezes: refused (naming it) until it is counted down
    procs[2].process.pause().expect("SIGSTOP node 3");
    let frozen_at = Instant::now();
    let (mut refused, mut sent, mut acked_after) = (Vec::new(), 5u64, None);
    while frozen_at.elapsed() < Duration::from_secs(20) {
        let (s, v) = send(&http, sent as usize);
        sent += 1;
        if s == 200 {
            acked_after = Some(frozen_at.elapsed());
            break;
        }
        assert_eq!(s, 503, "{v}");
        refused.push(
            v["error"]["message"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        );
    }
    let acked_after = acked_after.expect("events were never acknowledged with node 3 frozen");
    println!(
        "node 3 frozen: {} events refused, the first acknowledged after {acked_after:?}",
        refused.len()
    );
    assert!(
        !refused.is_empty(),
        "an event was acknowledged without the frozen live copy"
    );
    assert!(
        refused
            .iter()
            .all(|m| m.contains("[3]") && m.contains("events.ack = all")),
        "{refused:?}"
    );
    // node 2 has every event sent, refused ones too (durable on node 1
    // and forwarded; only the promise of every copy was broken)
    assert_eq!(
        user_events(&http, &members[1].http, &user),
        Some(base + sent)
    );

    // node 3 runs again and catches up on everything it missed
    procs[2].process.resume().expect("SIGCONT node 3");
    let mut seen = None;
    assert!(
        eventually(Duration::from_secs(45), || {
            seen = user_events(&http, &members[2].http, &user);
            seen == Some(base + sent)
        }),
        "node 3 counts {seen:?} events after it resumed, expected {}",
        base + sent
    );

    // node 3's process is gone: not waited for
    procs[2].kill9();
    let t0 = Instant::now();
    let (s, v) = send(&http, sent as usize);
    assert_eq!(s, 200, "{v}");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "an event waited {:?} for a copy whose process is gone",
        t0.elapsed()
    );
    assert_eq!(
        user_events(&http, &members[1].http, &user),
        Some(base + sent + 1)
    );
}
