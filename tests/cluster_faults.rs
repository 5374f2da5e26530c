//! Transport faults and crash failpoints in a real three-node cluster
//! (`funnel serve` processes on 127.0.0.1, ports 21000–21099, 12 shards,
//! R = 2), set at run time over the `FaultInjection` gRPC service.
//!
//! What must hold: with one node isolated (the same rules on every node),
//! the majority elects a leader, commits writes and answers
//! recommendations with every shard covered (R = 2) or says which shard is
//! missing; the isolated node refuses a write with an error within its
//! timeout instead of hanging; after the rules are cleared the node
//! catches up and every replica and the replicated state converge. The
//! service is refused unless `cluster.fault_injection = true`, and refuses
//! invalid rules. With the `failpoints` feature: a node armed with
//! `FUNNEL_FAILPOINTS=raft-apply=...` exits with code 86 and the marker
//! line, and restarted without it loses no acknowledged write.

mod support;

use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::StatusRequest;
use funnel::proto::ops::fault_injection_client::FaultInjectionClient;
use funnel::proto::ops::{FaultRules, LinkDrop, NodeGroup};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, Instant};
use support::{
    digests_converged, eventually, full_coverage, members_list, recommend, rt, shard_digests,
    small_bundle, write_members, write_node_config, Http, Member, NodePorts, NodeProc,
};

const SHARDS: u32 = 12;

/// Three members on fixed ports from `base` (http base+id, grpc base+10+id,
/// internal base+20+id), with `cluster_extra` in every config.
fn write_configs(dir: &Path, bundle: &Path, base: u16, cluster_extra: &str) -> Vec<Member> {
    let nodes = NodePorts::layout(3, base);
    let extra = format!("{cluster_extra}\n{}", members_list(&nodes));
    write_members(dir, &nodes, Some(bundle), SHARDS, "", &extra)
}

fn set_faults(
    rt: &tokio::runtime::Runtime,
    internal: &str,
    rules: FaultRules,
) -> Result<bool, tonic::Status> {
    rt.block_on(async {
        let mut c = FaultInjectionClient::connect(format!("http://{internal}"))
            .await
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        Ok(c.set_faults(rules).await?.into_inner().active)
    })
}

/// (role, leader, last applied index, catalogue items, state digest).
type NodeStatus = (String, Option<u64>, Option<u64>, u64, String);

/// The status node `internal` reports.
fn status(rt: &tokio::runtime::Runtime, internal: &str) -> Option<NodeStatus> {
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
        let st = s.state.unwrap_or_default();
        Some((
            s.role,
            s.leader_id,
            s.last_applied_index,
            st.catalog_items,
            st.state_digest,
        ))
    })
}

/// True when every node answers the same applied index and state digest.
fn states_converged(rt: &tokio::runtime::Runtime, members: &[Member]) -> bool {
    let all: Vec<_> = members.iter().map(|m| status(rt, &m.internal)).collect();
    all.iter().all(|s| s.is_some())
        && all
            .iter()
            .all(|s| s.as_ref().map(|s| (s.2, &s.4)) == all[0].as_ref().map(|s| (s.2, &s.4)))
}

fn digests(members: &[Member]) -> BTreeMap<u32, Vec<(u64, String)>> {
    let nodes: Vec<(u64, String)> = members.iter().map(|m| (m.id, m.internal.clone())).collect();
    shard_digests(&nodes, SHARDS)
}

fn admin_faults(internal: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["admin", "--addr", internal, "faults"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn an_isolated_node_cannot_commit_and_the_majority_serves_until_healed() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 21, SHARDS);
    let members = write_configs(tmp.path(), &bundle, 21000, "fault_injection = true");
    let _procs: Vec<NodeProc> = members
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
    let leader = status(&rt, &members[0].internal)
        .and_then(|s| s.1)
        .expect("a leader is known");
    // isolate the leader: the majority must elect another one
    let victim = &members[(leader - 1) as usize];
    let majority: Vec<&Member> = members.iter().filter(|m| m.id != leader).collect();

    // invalid rules are refused and change nothing
    let bad = FaultRules {
        drop: vec![LinkDrop {
            to: 2,
            probability: 1.5,
        }],
        ..Default::default()
    };
    let e = set_faults(&rt, &members[0].internal, bad).unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("1.5"), "{}", e.message());
    assert!(full_coverage(&http, &members[0].http));

    // the same rules on every node: over gRPC, and through the CLI for one
    let isolate = FaultRules {
        isolate: vec![NodeGroup {
            nodes: vec![victim.id],
        }],
        ..Default::default()
    };
    let t0 = Instant::now();
    for m in &members[..2] {
        assert!(set_faults(&rt, &m.internal, isolate.clone()).unwrap());
    }
    let out = admin_faults(
        &members[2].internal,
        &["set", "--isolate", &victim.id.to_string()],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("node 3: fault rules set"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );

    // the majority elects a new leader and commits writes
    let mut new_leader = None;
    assert!(
        eventually(Duration::from_secs(15), || {
            new_leader = status(&rt, &majority[0].internal).and_then(|s| s.1);
            new_leader.is_some_and(|l| l != victim.id)
        }),
        "the majority elected no new leader: {new_leader:?}"
    );
    let elected = t0.elapsed();
    let mut write_err = String::new();
    assert!(
        eventually(Duration::from_secs(15), || {
            match support::upsert_item(&http, &majority[1].http, "during-partition") {
                Ok(()) => true,
                Err(e) => {
                    write_err = e;
                    false
                }
            }
        }),
        "no write committed on the majority: {write_err}"
    );

    // recommendations through the majority: every shard has a replica there
    let (mut full, mut partial, mut n) = (0, Vec::new(), 0);
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        for m in &majority {
            let v = recommend(&http, &m.http, &format!("u{:06}", n % 300)).unwrap_or_else(|e| {
                panic!("node {} failed a request while partitioned: {e}", m.id)
            });
            n += 1;
            if v["coverage"].as_f64() == Some(1.0) {
                full += 1;
            } else {
                // a missing shard must be named, never silently dropped
                assert!(
                    v["degraded"].as_array().is_some_and(|d| !d.is_empty()),
                    "coverage {} without a reason: {v}",
                    v["coverage"]
                );
                partial.push(v["degraded"].to_string());
            }
        }
    }
    println!(
        "isolated node {}: new leader {new_leader:?} after {elected:?}; {n} recommendations on the majority, {full} with coverage 1, {} partial {:?}",
        victim.id,
        partial.len(),
        &partial[..partial.len().min(3)]
    );
    assert!(
        full > 0 && full * 10 >= n * 9,
        "{full} of {n} fully covered"
    );

    // the isolated node refuses a write with an error, within its timeout
    let t0 = Instant::now();
    let r = support::upsert_item(&http, &victim.http, "on-the-island");
    let took = t0.elapsed();
    println!("write on the isolated node: {r:?} after {took:?}");
    assert!(r.is_err(), "the isolated node committed a write");
    assert!(took < Duration::from_secs(12), "took {took:?}");

    // heal: the node catches up, everything converges
    for m in &members[1..] {
        assert!(!set_faults(&rt, &m.internal, FaultRules::default()).unwrap());
    }
    let out = admin_faults(&members[0].internal, &["clear"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("cleared"));
    let healed = Instant::now();
    assert!(
        eventually(Duration::from_secs(30), || full_coverage(
            &http,
            &victim.http
        )),
        "the healed node never served with full coverage"
    );
    assert!(
        eventually(Duration::from_secs(30), || support::upsert_item(
            &http,
            &victim.http,
            "after-heal"
        )
        .is_ok()),
        "writes through the healed node never worked"
    );
    assert!(
        eventually(Duration::from_secs(30), || states_converged(&rt, &members)),
        "the replicated state did not converge"
    );
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = digests(&members);
            digests_converged(&last, SHARDS, 2)
        }),
        "replicas did not converge: {last:?}"
    );
    println!("healed: converged {:?} after clearing", healed.elapsed());
}

#[test]
fn the_fault_service_is_refused_unless_enabled() {
    let tmp = tempfile::tempdir().unwrap();
    let me = NodePorts {
        id: 1,
        host: std::net::Ipv4Addr::LOCALHOST,
        http: 21081,
        grpc: 21082,
        internal: 21083,
    };
    let (config, data_dir) =
        write_node_config(tmp.path(), &me, None, SHARDS, "", &members_list(&[me]));
    let _node = NodeProc::start(
        None,
        &data_dir,
        &["--config", config.to_str().unwrap()],
        &[("FUNNEL_CLUSTER__REPLICATION", "1")],
    );
    let rt = rt();
    let internal = format!("127.0.0.1:{}", me.internal);
    let mut last = None;
    assert!(
        eventually(Duration::from_secs(30), || {
            last = Some(set_faults(&rt, &internal, FaultRules::default()));
            matches!(&last, Some(Err(e)) if e.code() == tonic::Code::FailedPrecondition)
        }),
        "expected FailedPrecondition, got {last:?}"
    );
    let Some(Err(e)) = last else { unreachable!() };
    assert!(
        e.message().contains("fault_injection = true"),
        "{}",
        e.message()
    );
    let out = admin_faults(&internal, &["set", "--drop", "0:0.5"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("FailedPrecondition"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A child process killed (SIGKILL) and reaped when dropped.
#[cfg(feature = "failpoints")]
struct Reaped(std::process::Child);

#[cfg(feature = "failpoints")]
impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A `funnel serve --config` child with its stderr in a file, that may
/// exit before it serves (a failpoint). Returns the child and whether it
/// reported serving.
#[cfg(feature = "failpoints")]
fn spawn_capturing(config: &Path, stderr: &Path, env: &[(&str, &str)]) -> (Reaped, bool) {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["serve", "--config"])
        .arg(config)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn,openraft=off")
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(stderr).unwrap())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut child = Reaped(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if line.starts_with("funnel serving:") {
                let _ = tx.send(());
            }
        }
    });
    let until = Instant::now() + Duration::from_secs(120);
    while Instant::now() < until {
        if rx.recv_timeout(Duration::from_millis(100)).is_ok() {
            return (child, true);
        }
        if matches!(child.0.try_wait(), Ok(Some(_))) {
            return (child, false);
        }
    }
    drop(child);
    panic!("funnel serve neither served nor exited within 120 s");
}

#[cfg(feature = "failpoints")]
#[test]
fn a_crash_in_raft_apply_exits_86_and_loses_no_acknowledged_write() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 23, SHARDS);
    let members = write_configs(tmp.path(), &bundle, 21040, "");
    let _procs: Vec<NodeProc> = members[..2]
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let http = Http::default();
    let rt = rt();
    let third = &members[2];
    let stderr = tmp.path().join("node3.stderr");
    let (child, _) = spawn_capturing(&third.config, &stderr, &[]);
    for m in &members {
        assert!(
            eventually(Duration::from_secs(60), || full_coverage(&http, &m.http)),
            "node {} never served with every shard covered",
            m.id
        );
    }
    support::expect_three_voters(&rt, &members[0].internal);
    let base = status(&rt, &members[0].internal).unwrap().3;
    // restart node 3 armed: the replay at start passes, a later apply crashes
    drop(child);
    let (mut child, served) = spawn_capturing(
        &third.config,
        &stderr,
        &[("FUNNEL_FAILPOINTS", "raft-apply=1*off->return")],
    );
    // writes through the majority until node 3 dies applying one
    let mut acked = Vec::new();
    let mut attempted = 0;
    let until = Instant::now() + Duration::from_secs(60);
    let exit = loop {
        if let Ok(Some(code)) = child.0.try_wait() {
            break code;
        }
        assert!(Instant::now() < until, "node 3 never hit the failpoint");
        let id = format!("crash-{attempted}");
        attempted += 1;
        if support::upsert_item(&http, &members[0].http, &id).is_ok() {
            acked.push(id);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(&stderr).unwrap();
    println!(
        "node 3 (served before crashing: {served}) exited with {exit:?} after {} acknowledged writes",
        acked.len()
    );
    assert_eq!(exit.code(), Some(86), "stderr: {err}");
    assert!(
        err.contains("funnel: failpoint raft-apply fired: exiting to simulate a crash"),
        "{err}"
    );
    assert!(!err.contains("panicked"), "{err}");
    // a few more writes while it is down
    for i in 0..3 {
        let id = format!("while-down-{i}");
        attempted += 1;
        support::upsert_item(&http, &members[1].http, &id).unwrap();
        acked.push(id);
    }

    // restarted without the failpoint it recovers and has every write
    let (_child, served) = spawn_capturing(&third.config, &stderr, &[]);
    assert!(served, "node 3 did not start again");
    assert!(
        eventually(Duration::from_secs(60), || full_coverage(
            &http,
            &third.http
        )),
        "the restarted node never served with full coverage"
    );
    assert!(
        eventually(Duration::from_secs(30), || states_converged(&rt, &members)),
        "the replicated state did not converge"
    );
    let items = status(&rt, &third.internal).unwrap().3;
    assert!(
        items >= base + acked.len() as u64 && items <= base + attempted,
        "node 3 has {items} items; {base} before, {} acknowledged, {attempted} attempted",
        acked.len()
    );
    let mut last = BTreeMap::new();
    assert!(
        eventually(Duration::from_secs(30), || {
            last = digests(&members);
            digests_converged(&last, SHARDS, 2)
        }),
        "replicas did not converge: {last:?}"
    );
}

/// `funnel serve` refuses to start when `FUNNEL_FAILPOINTS` asks for
/// something this binary cannot do: any failpoint in a build without the
/// feature, an unknown name in a build with it.
#[test]
fn serve_refuses_failpoints_it_cannot_honour() {
    let tmp = tempfile::tempdir().unwrap();
    let (spec, want) = if cfg!(feature = "failpoints") {
        ("raft-aply=return", "unknown failpoint `raft-aply`")
    } else {
        (
            "raft-apply=return",
            "built without the `failpoints` feature: build with --features failpoints",
        )
    };
    let stderr = tmp.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["serve", "--data-dir"])
        .arg(tmp.path().join("data"))
        .args(["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .env("FUNNEL_FAILPOINTS", spec)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&stderr).unwrap())
        .spawn()
        .unwrap();
    let mut exit = None;
    let done = eventually(Duration::from_secs(30), || {
        exit = child.try_wait().ok().flatten();
        exit.is_some()
    });
    if !done {
        let _ = child.kill();
    }
    let _ = child.wait();
    let err = std::fs::read_to_string(&stderr).unwrap();
    assert!(
        done,
        "funnel serve started despite FUNNEL_FAILPOINTS={spec}"
    );
    assert!(exit.is_some_and(|e| !e.success()), "{exit:?}: {err}");
    assert!(err.contains(want), "{err}");
}
