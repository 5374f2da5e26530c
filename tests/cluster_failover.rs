//! A real three-node cluster: three `funnel serve` processes on 127.0.0.1
//! forming a Raft group, 12 shards with 2 replicas each, queried over
//! HTTP while nodes are killed with SIGKILL and restarted.
//!
//! What must hold: an event accepted by one node is in the user's state
//! on every node; with any one node dead, every request to a live node
//! still answers with coverage 1 (the other replica serves); when the Raft
//! leader dies a new one is elected and catalogue writes work again; a
//! restarted node rejoins and its shard copies converge with their peers
//! (equal digests), including writes it missed while it was down.

mod support;

use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::StatusRequest;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    digests_converged, eventually, full_coverage, members_list, recommend, shard_digests,
    small_bundle, write_members, Http, Member, NodePorts, NodeProc,
};

const SHARDS: u32 = 12;

/// Nodes 1..=`n` on `NodePorts::layout(n, base)`; each test has its own
/// `base`.
fn write_configs(dir: &Path, bundle: &Path, n: u64, base: u16) -> Vec<Member> {
    let nodes = NodePorts::layout(n, base);
    let members = members_list(&nodes);
    write_members(dir, &nodes, Some(bundle), SHARDS, "", &members)
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// The leader as node `internal` sees it.
fn leader_seen_by(rt: &tokio::runtime::Runtime, internal: &str) -> Option<u64> {
    rt.block_on(async {
        let mut c = ControlClient::connect(format!("http://{internal}"))
            .await
            .ok()?;
        let s = c
            .status(StatusRequest {
                linearizable: false,
            })
            .await
            .ok()?
            .into_inner();
        s.leader_id
    })
}

/// Digest of every shard copy on the live nodes: shard -> [(node, digest)].
fn digests(live: &[&Member]) -> BTreeMap<u32, Vec<(u64, String)>> {
    let nodes: Vec<(u64, String)> = live.iter().map(|m| (m.id, m.internal.clone())).collect();
    shard_digests(&nodes, SHARDS)
}

/// Steady load against `targets` until `stop`; returns (requests, failures
/// with reasons, worst latency).
fn load(
    targets: Vec<String>,
    stop: Arc<AtomicBool>,
) -> std::thread::JoinHandle<(usize, Vec<String>, Duration)> {
    std::thread::spawn(move || {
        let http = Http::default();
        let (mut n, mut failures, mut worst) = (0usize, Vec::new(), Duration::ZERO);
        while !stop.load(Ordering::SeqCst) {
            let target = &targets[n % targets.len()];
            let user = format!("u{:06}", n % 300);
            let t0 = Instant::now();
            match recommend(&http, target, &user) {
                Ok(v) if v["coverage"].as_f64() == Some(1.0) => {}
                Ok(v) => failures.push(format!(
                    "{target}: coverage {} ({})",
                    v["coverage"], v["degraded"]
                )),
                Err(e) => failures.push(format!("{target}: {e}")),
            }
            worst = worst.max(t0.elapsed());
            n += 1;
            std::thread::sleep(Duration::from_millis(10));
        }
        (n, failures, worst)
    })
}

#[test]
fn three_nodes_survive_kills_and_converge_after_restart() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 11, SHARDS);
    let members = write_configs(tmp.path(), &bundle, 3, 22200);
    let mut procs: Vec<Option<NodeProc>> = members
        .iter()
        .map(|m| Some(NodeProc::start_config(&m.config, &m.data_dir)))
        .collect();
    let http = Http::default();
    let rt = rt();
    for m in &members {
        assert!(
            eventually(Duration::from_secs(60), || full_coverage(&http, &m.http)),
            "node {} never served with every shard covered",
            m.id
        );
    }
    support::expect_three_voters(&rt, &members[0].internal);

    // each node holds 8 of the 12 shards and the other 4 live on both of
    // its peers: a coordinator asks one peer for all four in one
    // SearchBatch (replica::batch) rather than in four RPCs
    let batched: f64 = members
        .iter()
        .map(|m| {
            support::metric_value(
                &http,
                &m.http,
                "funnel_shard_searches_served_total{via=\"batch\"}",
            )
        })
        .sum();
    assert!(
        batched >= 4.0,
        "no shard searches were served in batches ({batched})"
    );

    // the operator's view, from any node's internal address
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["admin", "--addr", &members[1].internal, "status", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        v["view"]["nodes"].as_object().map(|o| o.len()),
        Some(3),
        "{v}"
    );
    assert_eq!(v["view"]["shard_map"]["shards"], SHARDS, "{v}");
    let roles: Vec<&str> = v["members"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["role"].as_str())
        .collect();
    assert_eq!(
        roles.iter().filter(|r| **r == "Leader").count(),
        1,
        "{roles:?}"
    );
    assert_eq!(roles.len(), 3, "{v}");

    // a publish on one node is a cluster-wide rollout (tests/cluster_rollout.rs);
    // the version every node already serves just becomes the active one
    let (s, v) = http.post(
        &format!("http://{}/v1/admin/publish", members[2].http),
        json!({"bundle": bundle.display().to_string()}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_version"], "test-seed-11", "{v}");

    // an event accepted by one node reaches the user's state on the others
    let before: Vec<u64> = members
        .iter()
        .map(|m| {
            let (s, v) = http.get(&format!("http://{}/v1/users/u000001", m.http));
            assert_eq!(s, 200, "{v}");
            v["events"].as_u64().unwrap_or(0)
        })
        .collect();
    let (s, v) = http.post(
        &format!("http://{}/v1/events", members[0].http),
        json!({"events": [{"user_id": "u000001", "item_id": "i000007", "kind": "click"}]}),
    );
    assert_eq!(s, 200, "{v}");
    for (m, b) in members.iter().zip(&before) {
        let (_, v) = http.get(&format!("http://{}/v1/users/u000001", m.http));
        assert_eq!(v["events"].as_u64(), Some(b + 1), "node {}: {v}", m.id);
        assert_eq!(v["recent"][0]["item_id"], "i000007", "node {}: {v}", m.id);
    }

    // --- kill -9 a follower under load -----------------------------------
    let leader = leader_seen_by(&rt, &members[0].internal).expect("a leader is known");
    let victim = members.iter().find(|m| m.id != leader).unwrap().id;
    let survivors: Vec<String> = members
        .iter()
        .filter(|m| m.id != victim)
        .map(|m| m.http.clone())
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load_thread = load(survivors, stop.clone());
    std::thread::sleep(Duration::from_millis(700));
    procs[(victim - 1) as usize].as_mut().unwrap().kill9();
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    let (n, failures, worst) = load_thread.join().unwrap();
    println!("follower {victim} killed: {n} requests, worst latency {worst:?}");
    assert!(n > 50, "the load ran ({n} requests)");
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );

    // a write while the node is down: it must catch up on restart
    let writer = members.iter().find(|m| m.id != victim).unwrap();
    let (s, v) = http.post(
        &format!("http://{}/v1/items", writer.http),
        json!({"items": [{"item_id": "while-down", "vector": vec![0.1f32; 16], "categories": []}]}),
    );
    assert_eq!(s, 200, "{v}");

    // --- restart it: it rejoins and its copies converge ---------------------
    let vm = &members[(victim - 1) as usize];
    procs[(victim - 1) as usize] = Some(NodeProc::start_config(&vm.config, &vm.data_dir));
    assert!(
        eventually(Duration::from_secs(60), || full_coverage(&http, &vm.http)),
        "the restarted node never served with full coverage"
    );
    let all: Vec<&Member> = members.iter().collect();
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = digests(&all);
            digests_converged(&last, SHARDS, 2)
        }),
        "replicas did not converge: {last:?}"
    );

    // --- kill -9 the leader under load --------------------------------------
    let leader = leader_seen_by(&rt, &members[0].internal)
        .or_else(|| leader_seen_by(&rt, &members[1].internal))
        .expect("a leader is known");
    let rest: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load_thread = load(rest.iter().map(|m| m.http.clone()).collect(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));
    let killed_at = Instant::now();
    procs[(leader - 1) as usize].as_mut().unwrap().kill9();
    let new_leader = Mutex::new(None);
    assert!(
        eventually(Duration::from_secs(10), || {
            let l = leader_seen_by(&rt, &rest[0].internal);
            *new_leader.lock().unwrap() = l;
            l.is_some_and(|l| l != leader)
        }),
        "no new leader after the leader was killed"
    );
    let elected = killed_at.elapsed();
    // a catalogue write through a survivor succeeds again
    let mut wrote = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            let (s, _) = http.post(
                &format!("http://{}/v1/items", rest[1].http),
                json!({"items": [{"item_id": "after-failover", "vector": vec![0.2f32; 16], "categories": []}]}),
            );
            if s == 200 {
                wrote = Some(killed_at.elapsed());
            }
            s == 200
        }),
        "catalogue writes never worked again after the leader was killed"
    );
    std::thread::sleep(Duration::from_millis(500));
    stop.store(true, Ordering::SeqCst);
    let (n, failures, worst) = load_thread.join().unwrap();
    println!(
        "leader {leader} killed: new leader {:?} seen after {elected:?}, first write acknowledged after {:?}; {n} requests, worst latency {worst:?}",
        new_leader.lock().unwrap(),
        wrote.unwrap()
    );
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    // the survivors agree on every shard they both hold
    let d = digests(&rest);
    for (shard, copies) in &d {
        assert!(
            copies.iter().all(|(_, x)| *x == copies[0].1),
            "shard {shard} copies differ: {copies:?}"
        );
    }
}

/// Sends `signal` (e.g. "STOP", "CONT") to a node process.
fn signal(p: &NodeProc, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{signal}"), &p.pid().to_string()])
        .status()
        .expect("kill(1) runs");
    assert!(status.success(), "kill -{signal} failed");
}

/// Linearizable status from node `internal`: Ok only if that node could
/// confirm its leadership with a quorum at the time of the read.
fn linearizable_status(
    rt: &tokio::runtime::Runtime,
    internal: &str,
) -> Result<funnel::proto::control::StatusResponse, String> {
    rt.block_on(async {
        let mut c = ControlClient::connect(format!("http://{internal}"))
            .await
            .map_err(|e| e.to_string())?;
        let mut req = tonic::Request::new(StatusRequest { linearizable: true });
        req.set_timeout(Duration::from_secs(2));
        c.status(req)
            .await
            .map(|r| r.into_inner())
            .map_err(|s| s.message().to_string())
    })
}

/// SIGSTOP the Raft leader for longer than the election timeout, then
/// SIGCONT. While it is frozen the other two elect a leader, take writes
/// and keep answering with full coverage (requests that reach a frozen
/// replica hang, so hedging must carry them). Once resumed, the old leader
/// never serves a linearizable read as if it still led (its term is stale),
/// and the cluster settles: one leader all three agree on, copies equal.
#[test]
fn a_paused_leader_is_replaced_and_the_cluster_settles_after_it_resumes() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 13, SHARDS);
    let members = write_configs(tmp.path(), &bundle, 3, 22250);
    let procs: Vec<NodeProc> = members
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let http = Http::default();
    let rt = rt();
    for m in &members {
        assert!(
            eventually(Duration::from_secs(60), || full_coverage(&http, &m.http)),
            "node {} never served with every shard covered",
            m.id
        );
    }
    support::expect_three_voters(&rt, &members[0].internal);
    let old = leader_seen_by(&rt, &members[0].internal).expect("a leader is known");
    let old_term = linearizable_status(&rt, &members[(old - 1) as usize].internal)
        .expect("the leader serves a linearizable read")
        .term;
    let rest: Vec<&Member> = members.iter().filter(|m| m.id != old).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let load_thread = load(rest.iter().map(|m| m.http.clone()).collect(), stop.clone());
    std::thread::sleep(Duration::from_millis(500));

    let paused_at = Instant::now();
    signal(&procs[(old - 1) as usize], "STOP");
    let mut new_leader = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            new_leader = leader_seen_by(&rt, &rest[0].internal).filter(|&l| l != old);
            new_leader.is_some()
        }),
        "no new leader while the old one was paused"
    );
    let elected = paused_at.elapsed();
    let new_leader = new_leader.unwrap();
    let (s, v) = http.post(
        &format!("http://{}/v1/items", rest[1].http),
        json!({"items": [{"item_id": "while-paused", "vector": vec![0.3f32; 16], "categories": []}]}),
    );
    assert_eq!(s, 200, "a write while the old leader is paused: {v}");
    // stay paused well past the election timeout (600 ms)
    std::thread::sleep(Duration::from_secs(2));
    let paused_for = paused_at.elapsed();
    signal(&procs[(old - 1) as usize], "CONT");

    // the resumed node must not answer a linearizable read as leader of its old term
    let resumed_at = Instant::now();
    let old_internal = &members[(old - 1) as usize].internal;
    while resumed_at.elapsed() < Duration::from_secs(2) {
        if let Ok(s) = linearizable_status(&rt, old_internal) {
            // a read it may serve is one it confirmed in a later term
            assert!(
                s.term > old_term,
                "the resumed old leader served a linearizable read in its stale term {old_term}: {s:?}"
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }

    // it settles: all three see one leader in one term, and the write is everywhere
    let mut seen = Vec::new();
    assert!(
        eventually(Duration::from_secs(20), || {
            seen = members
                .iter()
                .map(|m| leader_seen_by(&rt, &m.internal))
                .collect();
            seen.iter().all(|l| l.is_some() && *l == seen[0])
        }),
        "the nodes never agreed on a leader after the resume: {seen:?}"
    );
    stop.store(true, Ordering::SeqCst);
    let (n, failures, worst) = load_thread.join().unwrap();
    let all: Vec<&Member> = members.iter().collect();
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = digests(&all);
            digests_converged(&last, SHARDS, 2)
        }),
        "replicas did not converge after the resume: {last:?}"
    );
    println!(
        "leader {old} paused for {paused_for:?}: new leader {new_leader} seen after {elected:?}; \
         {n} requests to the others, worst latency {worst:?}; settled on {:?}",
        seen[0]
    );
    assert!(n > 50, "the load ran ({n} requests)");
    assert!(
        failures.is_empty(),
        "{} of {n} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
}
