//! A voter that lost its data directory must not help elect a leader that
//! lacks acknowledged writes (`cluster::vote_fence`). Three real `funnel
//! serve` processes on 127.0.0.1, ports 22000–22099, 6 shards, R = 2,
//! transport faults set over the `FaultInjection` gRPC service.
//!
//! The scenario, with A the leader and B, V the followers: B is cut off;
//! an item upsert is acknowledged (committed on A and V only); V is killed
//! (SIGKILL), its data directory wiped and it is started again under its
//! old id; A is killed; B is let back in. B's log lacks the acknowledged
//! entry, V's log is empty: before the fence V voted for B and B led a
//! cluster without the item. What must hold: while A is down no leader
//! emerges without the item (V refuses votes and says so in its status);
//! once A is back a leader emerges, every node holds the item, V catches
//! up and votes again, and writes work.

mod support;

use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::{StatusRequest, StatusResponse};
use funnel::proto::ops::fault_injection_client::FaultInjectionClient;
use funnel::proto::ops::{FaultRules, NodeGroup};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{
    eventually, members_list, recommend, rt, small_bundle, write_members, Http, Member, NodePorts,
    NodeProc,
};

const SHARDS: u32 = 6;
const BASE: u16 = 22000;

/// Nodes 1..=3 on http BASE+id, grpc BASE+10+id, internal BASE+20+id.
fn write_configs(dir: &Path, bundle: &Path) -> Vec<Member> {
    let nodes: Vec<NodePorts> = (1..=3u16)
        .map(|id| NodePorts {
            id: id.into(),
            host: std::net::Ipv4Addr::LOCALHOST,
            http: BASE + id,
            grpc: BASE + 10 + id,
            internal: BASE + 20 + id,
        })
        .collect();
    // no re-placement of a dead node's copies: this is about Raft alone
    let extra = format!(
        "fault_injection = true\nreplace_dead_after = 0\n{}",
        members_list(&nodes)
    );
    write_members(dir, &nodes, Some(bundle), SHARDS, "", &extra)
}

fn status(rt: &tokio::runtime::Runtime, internal: &str) -> Option<StatusResponse> {
    rt.block_on(async {
        let mut c = ControlClient::connect(format!("http://{internal}"))
            .await
            .ok()?;
        let req = StatusRequest {
            linearizable: false,
        };
        Some(c.status(req).await.ok()?.into_inner())
    })
}

fn catalog_items(s: &StatusResponse) -> u64 {
    s.state.as_ref().map_or(0, |st| st.catalog_items)
}

fn set_faults(rt: &tokio::runtime::Runtime, internal: &str, rules: FaultRules) {
    rt.block_on(async {
        let mut c = FaultInjectionClient::connect(format!("http://{internal}"))
            .await
            .expect("the fault service answers");
        c.set_faults(rules).await.expect("fault rules accepted");
    })
}

fn isolate(id: u64) -> FaultRules {
    FaultRules {
        isolate: vec![NodeGroup { nodes: vec![id] }],
        ..Default::default()
    }
}

#[test]
fn a_wiped_voter_does_not_elect_a_leader_without_acknowledged_writes() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 53, SHARDS);
    let members = write_configs(tmp.path(), &bundle);
    let http = Http::default();
    let rt = rt();
    let mut procs: Vec<Option<NodeProc>> = members
        .iter()
        .map(|m| Some(NodeProc::start_config(&m.config, &m.data_dir)))
        .collect();

    // a brand-new cluster forms without any blank node voting: node 1
    // alone, then the others as learners, promoted once caught up
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(90), || {
            last = status(&rt, &members[0].internal);
            last.as_ref().is_some_and(|s| {
                s.leader_id.is_some() && s.voters == [1, 2, 3] && s.learners.is_empty()
            })
        }),
        "the cluster never formed with voters 1, 2, 3: {last:?}"
    );
    for m in &members {
        assert!(
            eventually(Duration::from_secs(60), || recommend(
                &http, &m.http, "u000001"
            )
            .is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))),
            "node {} never served with every shard covered",
            m.id
        );
        assert!(
            eventually(Duration::from_secs(10), || status(&rt, &m.internal)
                .is_some_and(|s| !s.vote_fenced)),
            "node {} still refuses votes after joining",
            m.id
        );
    }
    // writes through every node, so the leader has seen each follower
    // match a real log
    for (i, m) in members.iter().enumerate() {
        support::upsert_item(&http, &m.http, &format!("before-{i}"))
            .expect("a write before the faults");
    }

    let a = status(&rt, &members[0].internal)
        .and_then(|s| s.leader_id)
        .expect("a leader is known");
    let followers: Vec<u64> = (1..=3).filter(|&id| id != a).collect();
    // V never bootstraps (node 1 is always the lower follower or A)
    let (b, v) = (followers[0], followers[1]);
    let m = |id: u64| &members[id as usize - 1];
    println!("leader A = {a}, cut-off B = {b}, wiped V = {v}");

    // cut B off (the same rules on every node)
    for mem in &members {
        set_faults(&rt, &mem.internal, isolate(b));
    }
    let before = catalog_items(&status(&rt, &m(a).internal).expect("A answers"));
    // acknowledged: committed on A and V, not on B
    let mut err = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            match support::upsert_item(&http, &m(a).http, "acked-while-b-was-cut-off") {
                Ok(()) => true,
                Err(e) => {
                    err = e;
                    false
                }
            }
        }),
        "the upsert through A was never acknowledged: {err}"
    );
    let acked = catalog_items(&status(&rt, &m(a).internal).expect("A answers"));
    assert_eq!(acked, before + 1, "the acknowledged item is counted on A");
    assert!(
        eventually(Duration::from_secs(10), || status(&rt, &m(v).internal)
            .is_some_and(|s| catalog_items(&s) == acked)),
        "V never applied the acknowledged item"
    );
    let b_items = catalog_items(&status(&rt, &m(b).internal).expect("B answers"));
    assert!(b_items < acked, "B got the item although it was cut off");

    // V loses its disk and comes back blank under its old id
    procs[v as usize - 1].take().expect("V runs").kill9();
    std::fs::remove_dir_all(&m(v).data_dir).unwrap();
    std::fs::create_dir_all(&m(v).data_dir).unwrap();
    procs[v as usize - 1] = Some(NodeProc::start_config(&m(v).config, &m(v).data_dir));
    set_faults(&rt, &m(v).internal, isolate(b));
    let mut vs = None;
    assert!(
        eventually(Duration::from_secs(10), || {
            vs = status(&rt, &m(v).internal);
            vs.as_ref().is_some_and(|s| s.vote_fenced)
        }),
        "the blank V does not report that it refuses votes: {vs:?}"
    );
    // time for A to try to replicate to it (and fence it off)
    std::thread::sleep(Duration::from_secs(2));

    // A dies; B is let back in
    procs[a as usize - 1].take().expect("A runs").kill9();
    for id in [b, v] {
        set_faults(&rt, &m(id).internal, FaultRules::default());
    }

    // many election timeouts (250-500 ms): no leader without the item
    let watch_until = Instant::now() + Duration::from_secs(12);
    let mut elections_seen = 0;
    while Instant::now() < watch_until {
        for id in [b, v] {
            let Some(s) = status(&rt, &m(id).internal) else {
                continue;
            };
            if id == b && s.role == "Candidate" {
                elections_seen += 1;
            }
            if s.role == "Leader" {
                // a leader must hold the acknowledged item (applied soon
                // after it leads)
                let has_item = eventually(Duration::from_secs(5), || {
                    status(&rt, &m(id).internal).is_some_and(|s| catalog_items(&s) >= acked)
                });
                assert!(
                    has_item,
                    "node {id} leads without the acknowledged item (B = {b}, V = {v}): {s:?}"
                );
            }
            if id == v {
                assert!(s.vote_fenced, "V stopped refusing votes while blank: {s:?}");
            }
        }
        std::thread::sleep(Duration::from_millis(150));
    }
    println!("while A was down: B was seen campaigning {elections_seen} times, no leader without the item");

    // A comes back: the cluster recovers with the item everywhere
    procs[a as usize - 1] = Some(NodeProc::start_config(&m(a).config, &m(a).data_dir));
    let mut seen = Vec::new();
    assert!(
        eventually(Duration::from_secs(60), || {
            seen = members
                .iter()
                .map(|mem| status(&rt, &mem.internal))
                .collect();
            let leaders: Vec<Option<u64>> = seen
                .iter()
                .map(|s| s.as_ref().and_then(|s| s.leader_id))
                .collect();
            leaders[0].is_some()
                && leaders.iter().all(|l| *l == leaders[0])
                && seen
                    .iter()
                    .all(|s| s.as_ref().is_some_and(|s| catalog_items(s) >= acked))
        }),
        "the cluster did not recover with the acknowledged item on every node: {seen:?}"
    );
    assert!(
        eventually(Duration::from_secs(30), || status(&rt, &m(v).internal)
            .is_some_and(|s| !s.vote_fenced)),
        "V never caught up and voted again"
    );
    assert!(
        eventually(Duration::from_secs(30), || support::upsert_item(
            &http,
            &m(v).http,
            "after-recovery"
        )
        .is_ok()),
        "writes never worked again after the recovery"
    );
    drop(procs);
}
