//! Mutual TLS between cluster nodes on a real cluster: three `funnel
//! serve` processes (6 shards, 2 copies each) whose internal ports run
//! mTLS with certificates from a throwaway CA made in the test (rcgen).
//!
//! What must hold: the cluster forms and settles over TLS; recommendations
//! through every node cover every shard (fan-out to remote copies works);
//! upserts through followers reach every copy; `funnel admin status` with
//! the TLS flags (or their environment variables) reports the cluster.
//! The internal port refuses what the CA did not sign: a plaintext `funnel
//! admin` call fails saying to pass the TLS flags, raw gRPC clients with no
//! certificate, a foreign CA's certificate or no TLS at all fail; a node
//! whose whole PKI is foreign cannot join and the cluster keeps serving; a
//! node whose certificate the cluster's CA did not sign refuses to start.
//!
//! Ports 22100-22199 only (fixed, so they do not collide with other test
//! files).

mod support;

#[path = "support/pki.rs"]
mod pki;

use funnel::cluster::{ClusterView, ReplicaState};
use funnel::config::TlsFiles;
use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::StatusRequest;
use funnel::tls::{NodeTls, ADMIN_FLAGS};
use pki::{tls_section, TestCa};
use rcgen::ExtendedKeyUsagePurpose;
use serde_json::json;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;
use support::{
    eventually, members_list, recommend, rt, small_bundle, write_node_config, Http, NodePorts,
    NodeProc,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const SHARDS: u32 = 6;
const DIM: usize = 16;
const BASE: u16 = 22100;

fn ports(id: u64) -> NodePorts {
    NodePorts {
        id,
        host: std::net::Ipv4Addr::LOCALHOST,
        http: BASE + id as u16,
        grpc: BASE + 10 + id as u16,
        internal: BASE + 20 + id as u16,
    }
}

fn internal(id: u64) -> String {
    format!("127.0.0.1:{}", ports(id).internal)
}

/// `funnel admin --addr ADDR ARGS` with extra environment; (success,
/// stdout, stderr).
fn admin(addr: &str, args: &[&str], env: &[(&str, &Path)]) -> (bool, String, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"));
    cmd.args(["admin", "--addr", addr]).args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().expect("funnel runs");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

fn tls_flags(f: &TlsFiles) -> Vec<String> {
    vec![
        "--tls-ca".into(),
        f.ca.display().to_string(),
        "--tls-cert".into(),
        f.cert.display().to_string(),
        "--tls-key".into(),
        f.key.display().to_string(),
    ]
}

fn view(rt: &tokio::runtime::Runtime, addr: &str, tls: &NodeTls) -> Option<ClusterView> {
    rt.block_on(funnel::admin::fetch_view_over(addr, Some(tls)))
        .ok()
        .flatten()
        .map(|(_, v)| v)
}

/// Three members, every shard with 2 Active copies, nothing queued.
fn settled(v: &ClusterView) -> bool {
    v.nodes.len() == 3
        && v.transfers.is_empty()
        && v.shard_map.as_ref().is_some_and(|m| {
            m.replicas
                .iter()
                .all(|rs| rs.len() == 2 && rs.iter().all(|r| r.state == ReplicaState::Active))
        })
}

/// Items in the catalogue (one copy per shard) when every shard's copies
/// agree; `None` while they differ or a copy does not answer.
fn converged_items(c: &BTreeMap<u32, Vec<(u64, u64, String)>>) -> Option<u64> {
    let agree = c.len() == SHARDS as usize
        && c.values()
            .all(|v| v.len() == 2 && v.iter().all(|(_, n, d)| (*n, d) == (v[0].1, &v[0].2)));
    agree.then(|| c.values().map(|v| v[0].1).sum())
}

/// Control.Status on node 1's internal port with a raw tonic client.
fn raw_status(rt: &tokio::runtime::Runtime, tls: Option<ClientTlsConfig>) -> Result<u64, String> {
    let scheme = if tls.is_some() { "https" } else { "http" };
    rt.block_on(async {
        let mut ep = Endpoint::from_shared(format!("{scheme}://{}", internal(1)))
            .map_err(|e| e.to_string())?
            .connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(5));
        if let Some(tls) = tls {
            ep = ep.tls_config(tls).map_err(|e| e.to_string())?;
        }
        let ch = ep.connect().await.map_err(|e| format!("connect: {e:?}"))?;
        ControlClient::new(ch)
            .status(StatusRequest {
                linearizable: false,
            })
            .await
            .map(|r| r.into_inner().node_id)
            .map_err(|s| format!("{s:?}"))
    })
}

fn client_tls(ca: &Path, identity: Option<&TlsFiles>) -> ClientTlsConfig {
    let read = |p: &Path| std::fs::read(p).unwrap();
    let mut c = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .timeout(Duration::from_secs(2));
    if let Some(f) = identity {
        c = c.identity(Identity::from_pem(read(&f.cert), read(&f.key)));
    }
    c
}

#[test]
fn a_cluster_runs_over_mutual_tls_and_refuses_what_its_ca_did_not_sign() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let bundle = small_bundle(&d.join("bundle"), 11, SHARDS);
    let ca = TestCa::new(d, "cluster");
    let foreign_ca = TestCa::new(d, "foreign");
    // what an operator holds: a client-only certificate from the cluster CA
    let operator = ca.issue("operator", &[], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let operator_tls = NodeTls::load(&operator, ADMIN_FLAGS, None).expect("operator files load");

    let nodes: Vec<NodePorts> = (1..=3).map(ports).collect();
    let mut procs: Vec<NodeProc> = nodes
        .iter()
        .map(|me| {
            let files = ca.node(&format!("node{}", me.id), &["127.0.0.1"]);
            let extra = format!("{}\n{}", members_list(&nodes), tls_section(&files));
            let (config, data_dir) = write_node_config(d, me, Some(&bundle), SHARDS, "", &extra);
            NodeProc::start_config(&config, &data_dir)
        })
        .collect();
    let rt = rt();

    // the cluster forms and settles: Raft, registration and shard loading
    // all went over TLS
    let formed = eventually(Duration::from_secs(180), || {
        view(&rt, &internal(1), &operator_tls).is_some_and(|v| settled(&v))
    });
    assert!(
        formed,
        "the cluster did not settle over mTLS: {:?}",
        view(&rt, &internal(1), &operator_tls)
    );

    // every node answers with every shard: each holds 4 of 6 shards, so
    // each answer needed a remote search over TLS
    let http = Http::default();
    for n in 0..30 {
        let node = &procs[n % 3];
        let v = recommend(&http, &node.http.to_string(), &format!("u{:06}", n * 7))
            .unwrap_or_else(|e| panic!("recommend via {}: {e}", node.http));
        assert_eq!(v["coverage"].as_f64(), Some(1.0), "{v}");
        assert_eq!(v["degraded"], json!([]), "{v}");
    }

    // upserts through the followers are forwarded to the leader and reach
    // every copy of their shard
    let before = {
        let v = view(&rt, &internal(1), &operator_tls).unwrap();
        converged_items(&support::copies_with(&rt, &v, Some(&operator_tls)))
            .expect("copies agree before upserts")
    };
    let upserts = 12u64;
    for n in 0..upserts {
        let target = &procs[1 + (n as usize % 2)];
        let vector: Vec<f32> = (0..DIM)
            .map(|i| ((n as usize * 5 + i) % 11) as f32 / 11.0)
            .collect();
        let body = json!({"items": [{"item_id": format!("tls-item-{n}"), "vector": vector, "categories": []}]});
        let (status, reply) = http.call(
            &format!("http://{}/v1/items", target.http),
            Some(body.to_string()),
            None,
        );
        assert_eq!(status, 200, "upsert via {}: {reply}", target.http);
    }
    let reached = eventually(Duration::from_secs(30), || {
        let v = view(&rt, &internal(1), &operator_tls).unwrap();
        converged_items(&support::copies_with(&rt, &v, Some(&operator_tls)))
            == Some(before + upserts)
    });
    assert!(reached, "upserted items did not reach every copy");

    // the operator tool with the TLS flags, and with their variables
    let flags = tls_flags(&operator);
    let mut args: Vec<&str> = flags.iter().map(String::as_str).collect();
    args.push("status");
    let (ok, out, err) = admin(&internal(2), &args, &[]);
    assert!(ok, "admin status with TLS flags failed: {err}");
    assert!(out.contains("leader node"), "{out}");
    assert!(!out.contains("UNREACHABLE"), "{out}");
    let (ok, out, err) = admin(
        &internal(3),
        &["status", "--json"],
        &[
            ("FUNNEL_ADMIN_TLS_CA", &operator.ca),
            ("FUNNEL_ADMIN_TLS_CERT", &operator.cert),
            ("FUNNEL_ADMIN_TLS_KEY", &operator.key),
        ],
    );
    assert!(ok, "admin status with TLS variables failed: {err}");
    let report: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(report["members"].as_array().map(Vec::len), Some(3), "{out}");

    // plaintext admin: refused, saying what to pass
    let (ok, _, err) = admin(&internal(1), &["status"], &[]);
    assert!(!ok, "plaintext admin status must fail against a TLS port");
    assert!(
        err.contains("mutual TLS") && err.contains("--tls-ca"),
        "the error should say to pass the TLS flags: {err}"
    );
    println!("plaintext admin status: {}", err.trim());
    // a cluster change too, before it changes anything
    let (ok, _, err) = admin(&internal(1), &["set-setting", "x.test", "1"], &[]);
    assert!(!ok && err.contains("--tls-ca"), "{err}");

    // raw clients: only a certificate from the cluster's CA gets in
    assert_eq!(
        raw_status(&rt, Some(client_tls(&ca.ca_pem, Some(&operator)))),
        Ok(1)
    );
    let no_cert = raw_status(&rt, Some(client_tls(&ca.ca_pem, None)));
    assert!(no_cert.is_err(), "a client without a certificate got in");
    let foreign_client =
        foreign_ca.issue("intruder", &[], vec![ExtendedKeyUsagePurpose::ClientAuth]);
    let foreign = raw_status(&rt, Some(client_tls(&ca.ca_pem, Some(&foreign_client))));
    assert!(
        foreign.is_err(),
        "a client with a foreign certificate got in"
    );
    let plain = raw_status(&rt, None);
    assert!(plain.is_err(), "a plaintext client got in");
    println!("refused: no cert: {no_cert:?}\nforeign cert: {foreign:?}\nplaintext: {plain:?}");

    // a node with a whole foreign PKI (its CA, its certificate) starts
    // but cannot join: the members refuse its certificate and it refuses
    // theirs
    let me4 = ports(4);
    let files4 = foreign_ca.node("node4", &["127.0.0.1"]);
    let extra4 = format!("join = \"{}\"\n{}", internal(1), tls_section(&files4));
    let (config4, data4) = write_node_config(d, &me4, None, SHARDS, "", &extra4);
    procs.push(NodeProc::start_config(&config4, &data4));
    // a few join attempts (every 2 s)
    std::thread::sleep(Duration::from_secs(7));
    assert!(
        procs[3].process.try_exit().is_none(),
        "node 4 should keep running (and keep asking)"
    );
    let v = view(&rt, &internal(1), &operator_tls).expect("the cluster answers");
    assert_eq!(
        v.nodes.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3],
        "node 4 must stay out"
    );
    assert!(settled(&v), "{v:?}");
    for n in 0..9 {
        let node = &procs[n % 3];
        let v = recommend(&http, &node.http.to_string(), &format!("u{:06}", n * 13))
            .unwrap_or_else(|e| panic!("recommend via {} with node 4 knocking: {e}", node.http));
        assert_eq!(v["coverage"].as_f64(), Some(1.0), "{v}");
    }

    // a node whose certificate the cluster's CA did not sign refuses to
    // start, naming the key and the file
    let me5 = ports(5);
    let mut files5 = foreign_ca.node("node5", &["127.0.0.1"]);
    files5.ca = ca.ca_pem.clone();
    let extra5 = format!("join = \"{}\"\n{}", internal(1), tls_section(&files5));
    let (config5, _) = write_node_config(d, &me5, None, SHARDS, "", &extra5);
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["serve", "--config"])
        .arg(&config5)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "node 5 started: {err}");
    assert!(
        err.contains("cluster.tls.cert")
            && err.contains(&files5.cert.display().to_string())
            && err.contains("not accepted as a client certificate"),
        "{err}"
    );
    println!("node 5: {}", err.trim());
}
