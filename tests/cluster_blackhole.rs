//! A node cut off at the network level (issue 19): three `funnel serve`
//! processes, each in a network namespace of its own on a bridge; the Raft
//! leader is cut off from the two others by nftables rules in its own
//! namespace, so packets between them vanish (no error, no reset) while
//! clients still reach every node.
//!
//! What must hold during the cut: the two others elect a new leader; a
//! write sent to the cut-off node is answered with 503 and a reason within
//! its write timeout instead of hanging; recommends to the cut-off node
//! stop waiting for the peers it cannot reach (after a first moment they
//! report the unreachable shards as "no live replica", not as deadlines),
//! and the other two nodes answer with full coverage and take writes. A
//! follower cut off the same way answers a write with 503 naming the leader
//! it cannot reach.
//! The cut outlasts `replace_dead_after` (3 s here), so the new leader
//! re-places the cut-off node's copies. After the heal the node rejoins: it
//! follows the new leader, takes writes again, the leader balances the
//! placement by itself (`cluster.auto_rebalance`: every node holds
//! S x R / N copies +-1 again) and no recommend to any node fails
//! meanwhile.
//!
//! Needs root, `ip` and `nft` (CI installs them and sets
//! FUNNEL_REQUIRE_NETNS=1, so there it runs or fails; elsewhere it says
//! why it cannot run). `FUNNEL_BLACKHOLE_CUTS=N` repeats the cut N times
//! and prints the election times (median and worst) for BENCHMARKS.md.

mod support;

use serde_json::{json, Value};
use std::path::Path;
use std::time::{Duration, Instant};
use support::{expect_three_voters, members_list, write_members, Http, Member, NodePorts};
use testkit::netns::{self, NetLab};
use testkit::process::{NodeProc, ServeCommand};

const SHARDS: u32 = 12;

/// The leader as the node at `internal` sees it (None: no leader, or no
/// answer within half a second).
fn leader_seen_by(rt: &tokio::runtime::Runtime, internal: &str) -> Option<u64> {
    let status =
        testkit::observe::status_at(format!("http://{internal}"), Duration::from_millis(500));
    rt.block_on(status)?.leader_id
}

/// One recommend with the default deadline (50 ms): (status, answer,
/// latency).
fn recommend(http: &Http, node: &Member, user: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let (status, body) = http.post(
        &format!("http://{}/v1/recommend", node.http),
        json!({"user_id": user, "k": 10}),
    );
    (status, body, t0.elapsed())
}

fn upsert(http: &Http, node: &Member, id: &str) -> (u16, Value, Duration) {
    let t0 = Instant::now();
    let (status, body) = http.post(
        &format!("http://{}/v1/items", node.http),
        json!({"items": [{"item_id": id, "vector": vec![0.1f32; 16], "categories": []}]}),
    );
    (status, body, t0.elapsed())
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get((v.len() * 99 / 100).min(v.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

fn start_node(lab: &NetLab, m: &Member) -> NodeProc {
    ServeCommand::in_netns(&lab.ns(m.id), support::funnel_bin())
        .args(["--config".into(), m.config.clone().into_os_string()])
        .spawn_reporting(&m.data_dir)
        .unwrap_or_else(|e| panic!("node {} starts in its namespace: {e}", m.id))
}

fn eventually(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    assert!(testkit::observe::eventually(timeout, f), "{what}");
}

/// What one cut measured.
struct Cut {
    election: Duration,
    write_answer: Duration,
    p99_before: Duration,
    p99_during: Duration,
    /// From the heal until every node holds S x R / N copies +-1.
    balanced: Duration,
}

/// Cuts the leader off, checks everything the module doc lists, heals, and
/// waits until the cluster is whole again.
fn one_cut(rt: &tokio::runtime::Runtime, lab: &NetLab, members: &[Member], round: usize) -> Cut {
    let http = Http::default();
    let leader = leader_seen_by(rt, &members[0].internal).expect("a leader before the cut");
    let cut = &members[leader as usize - 1];
    let others: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();
    let other_ids: Vec<u64> = others.iter().map(|m| m.id).collect();

    let mut before = Vec::new();
    for i in 0..100 {
        let (status, body, took) = recommend(&http, cut, &format!("u{:06}", i % 300));
        assert_eq!(status, 200, "{body}");
        before.push(took);
    }

    lab.cut_off(leader, &other_ids).expect("the cut is set");
    let t_cut = Instant::now();

    // recommends to the cut-off node from the cut on, every 40 ms for 4 s:
    // (time since the cut, status, answer, latency)
    let load_target = cut.clone();
    let load = std::thread::spawn(move || {
        let http = Http::default();
        let mut out = Vec::new();
        let mut i = 0;
        while t_cut.elapsed() < Duration::from_secs(4) {
            let at = t_cut.elapsed();
            let (status, body, took) = recommend(&http, &load_target, &format!("u{:06}", i % 300));
            out.push((at, status, body, took));
            i += 1;
            std::thread::sleep(Duration::from_millis(40));
        }
        out
    });

    // watched from the cut on, beside the write below: when the other two
    // agree on a new leader among themselves
    let watch: Vec<String> = others.iter().map(|m| m.internal.clone()).collect();
    let elected = std::thread::spawn(move || {
        let rt = support::rt();
        while t_cut.elapsed() < Duration::from_secs(30) {
            let seen: Vec<u64> = watch
                .iter()
                .filter_map(|addr| leader_seen_by(&rt, addr))
                .collect();
            if seen.len() == 2 && seen[0] != leader && seen[1] == seen[0] {
                return Some(t_cut.elapsed());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    });

    // a write to the cut-off node: 503 with a reason, within its write
    // timeout (1.2 s here) rather than never
    let (status, body, write_answer) = upsert(&http, cut, &format!("cut-{round}"));
    assert_eq!(status, 503, "a write to the cut-off leader: {body}");
    let reason = body["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        reason.contains("quorum") || reason.contains("leader"),
        "the 503 says why: {body}"
    );
    assert!(
        write_answer < Duration::from_millis(3_000),
        "a write to the cut-off node took {write_answer:?}"
    );
    let election = elected
        .join()
        .expect("the election watch ends")
        .expect("the two connected nodes elect a new leader within 30 s");

    // the cut-off node answers from its own copies; once it counts its
    // peers down (a few cut-off calls over a quarter second), unreachable
    // shards are skipped at once instead of waited for
    let mut during = Vec::new();
    for (at, status, body, took) in load.join().expect("the load thread ends") {
        assert_eq!(status, 200, "the cut-off node still answers: {body}");
        let coverage = body["coverage"].as_f64().unwrap_or(1.0);
        assert!(coverage < 1.0, "it cannot reach every shard: {body}");
        if at < Duration::from_millis(1_500) {
            continue;
        }
        let reasons: Vec<String> = body["degraded"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|r| r.as_str())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default();
        assert!(
            reasons.iter().all(|r| !r.ends_with(": deadline")),
            "{at:?} after the cut a shard is still waited for: {reasons:?}"
        );
        assert!(
            reasons.iter().any(|r| r.contains("no live replica")),
            "the unreachable shards are named: {reasons:?}"
        );
        during.push(took);
    }
    assert!(during.len() > 10, "enough requests after the first moment");

    // the connected side serves everything and takes writes
    for m in &others {
        eventually(
            &format!("node {} answers with full coverage during the cut", m.id),
            Duration::from_secs(10),
            || recommend(&http, m, "u000001").1["coverage"].as_f64() == Some(1.0),
        );
    }
    let (status, body, _) = upsert(&http, others[0], &format!("majority-{round}"));
    assert_eq!(status, 200, "a write to the connected side: {body}");

    // a cut longer than replace_dead_after (3 s here): the new leader
    // re-places the cut-off node's copies on the connected side
    eventually(
        "the new leader re-places the cut-off node's copies",
        Duration::from_secs(30),
        || {
            testkit::observe::view(rt, &others[0].internal, Duration::from_secs(2)).is_some_and(
                |v| {
                    testkit::observe::settled(&v)
                        && v.shard_map
                            .as_ref()
                            .is_some_and(|m| m.shards_on(leader).is_empty())
                },
            )
        },
    );

    // recommends to every node from the heal until the placement is
    // balanced again: none may fail
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = {
        let stop = stop.clone();
        let targets: Vec<Member> = members.to_vec();
        std::thread::spawn(move || {
            let http = Http::default();
            let (mut sent, mut failed) = (0usize, Vec::new());
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let m = &targets[sent % targets.len()];
                let (status, body, _) = recommend(&http, m, &format!("u{:06}", sent % 300));
                if status != 200 {
                    failed.push(format!("node {}: {status} {body}", m.id));
                }
                sent += 1;
                std::thread::sleep(Duration::from_millis(20));
            }
            (sent, failed)
        })
    };
    lab.heal(leader).expect("the cut is removed");
    let t_heal = Instant::now();
    eventually(
        "the healed node follows the new leader",
        Duration::from_secs(30),
        || {
            let l = leader_seen_by(rt, &cut.internal);
            l.is_some() && l == leader_seen_by(rt, &others[0].internal)
        },
    );
    eventually(
        "the healed node takes writes again",
        Duration::from_secs(30),
        || upsert(&http, cut, &format!("healed-{round}")).0 == 200,
    );
    // the leader balances the placement by itself (cluster.auto_rebalance)
    let per_node = (SHARDS * 2) as usize / members.len();
    let mut balanced = None;
    let mut last = String::new();
    let even = testkit::observe::eventually(Duration::from_secs(90), || {
        let Some(v) = testkit::observe::view(rt, &others[0].internal, Duration::from_secs(2))
        else {
            return false;
        };
        let held: Vec<(u64, usize)> = members
            .iter()
            .map(|n| {
                (
                    n.id,
                    v.shard_map.as_ref().map_or(0, |m| m.shards_on(n.id).len()),
                )
            })
            .collect();
        last = format!(
            "copies per node {held:?}, settled {}, {} transfers queued",
            testkit::observe::settled(&v),
            v.transfers.len()
        );
        let even =
            testkit::observe::settled(&v) && held.iter().all(|(_, n)| n.abs_diff(per_node) <= 1);
        if even {
            balanced = Some(t_heal.elapsed());
        }
        even
    });
    assert!(
        even,
        "every node holds S x R / N = {per_node} copies +-1 again, without an operator; last seen: {last}"
    );
    eventually(
        "the healed node answers with full coverage again",
        Duration::from_secs(30),
        || recommend(&http, cut, "u000002").1["coverage"].as_f64() == Some(1.0),
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (sent, failed) = load.join().expect("the load thread ends");
    assert!(
        failed.is_empty(),
        "{} of {sent} recommends failed after the heal: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    Cut {
        election,
        write_answer,
        balanced: balanced.unwrap_or_default(),
        p99_before: p99(before),
        p99_during: p99(during),
    }
}

#[test]
fn a_black_holed_leader_fails_fast_and_the_rest_elect_and_serve() {
    if let Err(why) = netns::available() {
        if std::env::var_os("FUNNEL_REQUIRE_NETNS").is_some() {
            panic!("FUNNEL_REQUIRE_NETNS is set, but this machine cannot run the test: {why}");
        }
        eprintln!(
            "SKIPPED a_black_holed_leader_fails_fast_and_the_rest_elect_and_serve: {why}; \
             run it as root with iproute2 and nftables (CI does)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let bundle = support::small_bundle(&tmp.path().join("bundle"), 19, SHARDS);
    let lab = NetLab::create("bh", 77, &[1, 2, 3]).expect("the namespaces are made");
    let mut nodes = NodePorts::layout(3, 7100);
    for n in &mut nodes {
        n.host = lab.addr(n.id);
    }
    let members = write_members(
        tmp.path(),
        &nodes,
        Some(Path::new(&bundle)),
        SHARDS,
        "",
        &format!("{}\nreplace_dead_after = 3", members_list(&nodes)),
    );
    let _procs: Vec<NodeProc> = members.iter().map(|m| start_node(&lab, m)).collect();
    let rt = support::rt();
    expect_three_voters(&rt, &members[0].internal);
    let http = Http::default();
    for m in &members {
        eventually(
            &format!("node {} answers with full coverage", m.id),
            Duration::from_secs(60),
            || recommend(&http, m, "u000001").1["coverage"].as_f64() == Some(1.0),
        );
    }

    let rounds: usize = std::env::var("FUNNEL_BLACKHOLE_CUTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1)
        .max(1);
    let mut elections = Vec::new();
    for round in 0..rounds {
        let c = one_cut(&rt, &lab, &members, round);
        println!(
            "cut {round}: new leader after {:?}; write to the cut-off node answered in {:?}; \
             recommends to it p99 {:?} before, {:?} during (after the first 1.5 s); \
             placement balanced {:?} after the heal",
            c.election, c.write_answer, c.p99_before, c.p99_during, c.balanced
        );
        elections.push(c.election);
    }
    elections.sort();
    println!(
        "{rounds} cuts: new leader median {:?}, worst {:?}",
        elections[elections.len() / 2],
        elections[elections.len() - 1]
    );

    // a follower cut off: it still knows the leader, and a write sent to it
    // is answered with 503 naming that leader instead of waiting on a
    // forward that never arrives
    let leader = leader_seen_by(&rt, &members[0].internal).expect("a leader");
    let follower = members.iter().find(|m| m.id != leader).expect("a follower");
    let rest: Vec<u64> = members
        .iter()
        .map(|m| m.id)
        .filter(|&id| id != follower.id)
        .collect();
    lab.cut_off(follower.id, &rest).expect("the cut is set");
    let (status, body, took) = upsert(&http, follower, "follower-cut");
    lab.heal(follower.id).expect("the cut is removed");
    assert_eq!(status, 503, "a write to a cut-off follower: {body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(
        message.contains(&format!("leader {leader}")) && message.contains("outcome is unknown"),
        "the 503 names the leader it could not reach and that the outcome is unknown: {body}"
    );
    assert!(
        took < Duration::from_millis(3_000),
        "answered after {took:?}"
    );
    println!("a write to a cut-off follower answered 503 in {took:?}: {message}");
    eventually(
        "the follower takes writes again after the heal",
        Duration::from_secs(30),
        || upsert(&http, follower, "follower-healed").0 == 200,
    );
}
