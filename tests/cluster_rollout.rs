//! Cluster-wide two-phase model rollout on three real `funnel serve`
//! processes (4 shards, 2 replicas each, admin token set, bundle files
//! always fetched from the source node as on separate machines).
//!
//! What must hold: a publish without the token, or of a bundle with the
//! wrong shard count, is refused and changes nothing; a publish of v2 on
//! one node makes every node load its shards of v2 (the others fetching
//! the files, checksummed, into their data dir; a corrupted local copy is
//! repaired; a half-fetched file is resumed where it stopped, a corrupted
//! half-fetched one fetched again; a copy of a version nothing needs any
//! more is deleted), the leader activates it and every node serves v2; under
//! continuous recommend load during the rollout no request fails or loses
//! coverage, each reports v1 or v2, and once every node switched only v2; `admin status` shows who loaded
//! what; bad internal requests are rejected cleanly; a shard then moved
//! onto a node whose copy holds only its own shards is fetched from a peer
//! and served.
//!
//! A second cluster starts with no bundle at all: it waits until one is
//! published (requests meanwhile say so), here over HTTP on one node, which
//! goes through the same rollout; publishing the active bundle again is a
//! no-op, the same version from another path is refused, and
//! `--if-none-active` leaves the model alone; a node restarted afterwards
//! serves the cluster's active version, not its (empty) configured bundle.
//!
//! Ports: 127.0.0.1:17100-17159 (unique to this file).

mod support;

use funnel::cluster::{Command, ModelRef};
use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::{PayloadFormat, WriteRequest};
use funnel::proto::data::bundle_files_client::BundleFilesClient;
use funnel::proto::data::FetchBundleFileRequest;
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::{
    eventually, members_list, small_bundle, write_members, Http, Member, NodePorts, NodeProc,
};

const SHARDS: u32 = 4;
const TOKEN: &str = "rollout-test-token";
const V1: &str = "test-seed-1";
const V2: &str = "test-seed-2";

/// Configs of three nodes on ports `base`..`base + 29`.
fn write_configs(dir: &Path, base: u16, bundle: Option<&Path>, fetch: &str) -> Vec<Member> {
    let nodes = NodePorts::layout(3, base);
    let cluster_extra = format!("fetch_bundles = \"{fetch}\"\n{}", members_list(&nodes));
    let api_extra = format!("admin_token = \"{TOKEN}\"");
    write_members(dir, &nodes, bundle, SHARDS, &api_extra, &cluster_extra)
}

fn admin(addr: &str, token: Option<&str>, args: &[&str]) -> Output {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"));
    cmd.arg("admin").arg("--addr").arg(addr);
    cmd.env_remove("FUNNEL_ADMIN_TOKEN");
    if let Some(t) = token {
        cmd.env("FUNNEL_ADMIN_TOKEN", t);
    }
    cmd.args(args).output().expect("funnel admin runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// The cluster view as `funnel admin status --json` prints it.
fn status_json(internal: &str) -> serde_json::Value {
    let o = admin(internal, None, &["status", "--json"]);
    assert!(o.status.success(), "admin status: {}", text(&o));
    serde_json::from_slice(&o.stdout).expect("status --json is JSON")
}

fn serving_version(http: &Http, m: &Member) -> Option<String> {
    let (s, v) = http
        .try_call(&format!("http://{}/readyz", m.http), None, None)
        .ok()?;
    (s == 200).then(|| v["model_version"].as_str().unwrap_or("").to_string())
}

/// One recommend answer under load.
struct Sample {
    started: Instant,
    result: Result<(String, f64), String>,
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn publish_rolls_a_new_version_out_to_every_node_without_failed_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = small_bundle(&tmp.path().join("v1"), 1, SHARDS);
    let v2 = small_bundle(&tmp.path().join("v2"), 2, SHARDS);
    let wrong = small_bundle(&tmp.path().join("wrong"), 3, SHARDS - 1);
    let members = write_configs(tmp.path(), 17100, Some(&v1), "always");
    let _procs: Vec<NodeProc> = members
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let http = Http::default();
    assert!(
        eventually(Duration::from_secs(90), || members.iter().all(|m| {
            serving_version(&http, m).as_deref() == Some(V1)
                && recommend(&http, &m.http, "u000001").is_ok_and(|(_, c)| c == 1.0)
        })),
        "the cluster did not come up serving {V1} with full coverage"
    );

    // the token is enforced: nothing is staged without it
    let o = admin(
        &members[1].internal,
        None,
        &["publish", v2.to_str().unwrap(), "--wait-secs", "0"],
    );
    assert!(!o.status.success(), "a publish without the token must fail");
    assert!(text(&o).contains("Unauthenticated"), "{}", text(&o));
    let o = admin(
        &members[1].internal,
        Some("wrong-token"),
        &["publish", v2.to_str().unwrap(), "--wait-secs", "0"],
    );
    assert!(!o.status.success(), "a wrong token must fail: {}", text(&o));
    // a forwarded admin write without the token is refused by the leader too
    let rt = rt();
    let stage = Command::StageModel(ModelRef {
        version: V2.into(),
        bundle_path: v2.display().to_string(),
        source_node: 2,
    });
    let forwarded = rt.block_on(async {
        let mut c = ControlClient::connect(format!("http://{}", members[0].internal))
            .await
            .unwrap();
        c.forward_write(WriteRequest {
            format: PayloadFormat::Postcard as i32,
            command: funnel::cluster::network::encode_payload(&stage).unwrap(),
            origin_node: 99,
        })
        .await
    });
    assert_eq!(
        forwarded
            .expect_err("a token-less StageModel must be refused")
            .code(),
        tonic::Code::Unauthenticated
    );

    // a bundle with the wrong shard count is refused and changes nothing
    let o = admin(
        &members[1].internal,
        Some(TOKEN),
        &["publish", wrong.to_str().unwrap(), "--wait-secs", "0"],
    );
    assert!(!o.status.success(), "a 3-shard bundle must be refused");
    assert!(text(&o).contains("--shards 4"), "{}", text(&o));
    let o = admin(
        &members[1].internal,
        Some(TOKEN),
        &["publish", "/no/such/bundle", "--wait-secs", "0"],
    );
    assert!(!o.status.success(), "a missing path must be refused");
    assert!(text(&o).contains("not a usable bundle"), "{}", text(&o));
    let st = status_json(&members[0].internal);
    assert!(st["view"]["models"]["staged"].is_null(), "{st}");
    assert!(st["view"]["models"]["active"].is_null(), "{st}");

    // node 3 already has a copy of v2 whose items.bin is corrupted: it must
    // notice (checksums) and fetch the bad file again
    let stale = members[2].data_dir.join("bundles").join(V2);
    copy_tree(&v2, &stale);
    let mut items = std::fs::read(stale.join("items.bin")).unwrap();
    items[10] ^= 0xff;
    std::fs::write(stale.join("items.bin"), items).unwrap();

    // node 1 was interrupted in an earlier fetch of v2: half of items.bin
    // arrived intact, and a shared file's partial copy is corrupted. It
    // must ask only for the rest of the first and, when the second's
    // checksum fails, fetch that one again from the start.
    let half_done = members[0].data_dir.join("bundles").join(V2);
    let items = std::fs::read(v2.join("items.bin")).unwrap();
    let resumed_bytes = items.len() / 2;
    std::fs::create_dir_all(&half_done).unwrap();
    std::fs::write(half_done.join("items.bin.part"), &items[..resumed_bytes]).unwrap();
    let shared = walk(&v2)
        .into_iter()
        .map(|p| p.strip_prefix(&v2).unwrap().to_path_buf())
        .find(|rel| {
            !rel.starts_with("shards")
                && rel != Path::new("items.bin")
                && rel != Path::new("manifest.json")
                && std::fs::metadata(v2.join(rel)).unwrap().len() > 1
        })
        .expect("the bundle has a shared file besides items.bin");
    let mut garbled = std::fs::read(v2.join(&shared)).unwrap();
    garbled.truncate(garbled.len() / 2);
    garbled[0] ^= 0xff;
    let garbled_part = half_done.join(format!("{}.part", shared.display()));
    std::fs::create_dir_all(garbled_part.parent().unwrap()).unwrap();
    std::fs::write(&garbled_part, &garbled).unwrap();
    // and holds a copy of a version the cluster no longer has: swept away
    let old_copy = members[0].data_dir.join("bundles").join("test-seed-0");
    copy_tree(&v1, &old_copy);

    // continuous load on every node during the rollout
    let stop = Arc::new(AtomicBool::new(false));
    let samples: Arc<Mutex<Vec<Sample>>> = Arc::default();
    let loaders: Vec<_> = members
        .iter()
        .map(|m| {
            let (stop, samples, addr) = (stop.clone(), samples.clone(), m.http.clone());
            std::thread::spawn(move || {
                let http = Http::default();
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    let user = format!("u{:06}", 1 + i % 300);
                    let started = Instant::now();
                    let result = recommend(&http, &addr, &user);
                    samples.lock().unwrap().push(Sample { started, result });
                    i += 1;
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));

    let o = admin(
        &members[1].internal,
        Some(TOKEN),
        &["publish", v2.to_str().unwrap(), "--wait-secs", "120"],
    );
    assert!(o.status.success(), "publish of v2: {}", text(&o));
    assert!(
        text(&o).contains(&format!("active on the cluster: {V2}")),
        "{}",
        text(&o)
    );
    assert!(
        eventually(Duration::from_secs(30), || members
            .iter()
            .all(|m| serving_version(&http, m).as_deref() == Some(V2))),
        "not every node switched to {V2}"
    );
    let all_switched = Instant::now();
    std::thread::sleep(Duration::from_millis(1500));
    stop.store(true, Ordering::Relaxed);
    for l in loaders {
        l.join().unwrap();
    }

    let samples = samples.lock().unwrap();
    assert!(samples.len() > 30, "too little load: {}", samples.len());
    let failed: Vec<&String> = samples
        .iter()
        .filter_map(|s| s.result.as_ref().err())
        .collect();
    assert!(
        failed.is_empty(),
        "{} failed requests, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    let mut seen_v1 = 0;
    for s in samples.iter() {
        let (version, coverage) = s.result.as_ref().unwrap();
        assert!(
            version == V1 || version == V2,
            "unexpected version {version}"
        );
        assert_eq!(
            *coverage, 1.0,
            "a request lost coverage during the rollout ({version})"
        );
        if version == V1 {
            seen_v1 += 1;
        }
        if s.started > all_switched {
            assert_eq!(
                version, V2,
                "a request after every node switched used {version}"
            );
        }
    }
    assert!(seen_v1 > 0, "the load did not overlap the rollout");
    assert!(
        samples.iter().any(|s| s.started > all_switched),
        "no request after the switch"
    );

    // status: v2 active, every node reported it loaded
    let st = status_json(&members[2].internal);
    let models = &st["view"]["models"];
    assert_eq!(models["active"]["version"], V2, "{st}");
    assert_eq!(models["active"]["source_node"], 2, "{st}");
    assert!(models["staged"].is_null(), "{st}");
    for id in ["1", "2", "3"] {
        assert_eq!(models["loaded"][id], V2, "node {id} in {st}");
    }
    let o = admin(&members[0].internal, None, &["status"]);
    assert!(text(&o).contains(&format!("active {V2}")), "{}", text(&o));

    // node 1 fetched exactly the shards it hosts, node 3 repaired its copy;
    // node 2 is the source
    assert_eq!(
        std::fs::read(stale.join("items.bin")).unwrap(),
        std::fs::read(v2.join("items.bin")).unwrap(),
        "node 3 must replace the corrupted file"
    );
    assert!(
        !old_copy.exists(),
        "node 1 must delete its copy of a version that is neither staged, active nor retired"
    );
    // node 1 resumed items.bin (only its interrupted half counts as
    // resumed: the garbled part was discarded) and both files are whole
    for rel in [Path::new("items.bin"), shared.as_path()] {
        assert_eq!(
            std::fs::read(half_done.join(rel)).unwrap(),
            std::fs::read(v2.join(rel)).unwrap(),
            "node 1's {} must equal the source's",
            rel.display()
        );
    }
    assert_eq!(
        support::metric_value(
            &http,
            &members[0].http,
            "funnel_bundle_fetch_bytes_total{source=\"resumed\"}"
        ),
        resumed_bytes as f64,
        "node 1 must reuse exactly the intact half of items.bin"
    );
    assert!(
        support::metric_value(
            &http,
            &members[0].http,
            "funnel_bundle_fetch_bytes_total{source=\"fetched\"}"
        ) > 0.0
    );
    let map = &st["view"]["shard_map"]["replicas"];
    for m in &members {
        let copy = m.data_dir.join("bundles").join(V2);
        if m.id == 2 {
            assert!(
                !copy.exists(),
                "the source node must not copy its own bundle"
            );
            continue;
        }
        assert!(
            copy.join("manifest.json").is_file(),
            "node {} has no copy",
            m.id
        );
        // node 3's copy was seeded with every shard above
        for s in (0..SHARDS).filter(|_| m.id == 1) {
            let hosts = map[s as usize]
                .as_array()
                .unwrap()
                .iter()
                .any(|r| r["node"] == m.id);
            let dir = copy.join(format!("shards/shard-{s:04}"));
            assert_eq!(
                dir.join("index.usearch").is_file(),
                hosts,
                "node {} shard {s}: fetched files must match what it hosts",
                m.id
            );
        }
        let parts = walk(&copy)
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "part"))
            .count();
        assert_eq!(parts, 0, "no temporary files are left behind");
    }

    // bad internal requests are rejected cleanly
    rt.block_on(async {
        let mut c = BundleFilesClient::connect(format!("http://{}", members[1].internal))
            .await
            .unwrap();
        let fetch = |version: &str, path: &str| {
            let req = FetchBundleFileRequest {
                version: version.into(),
                path: path.into(),
                offset: 0,
            };
            let mut c = c.clone();
            async move { c.fetch_bundle_file(req).await.map(|_| ()) }
        };
        let e = fetch(V2, "../../../../etc/passwd").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = fetch(V2, "/etc/passwd").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
        let e = fetch("no-such-version", "manifest.json").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let e = fetch(V2, "not/in/the/manifest.bin").await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound, "{e:?}");
        let mut ok = c
            .fetch_bundle_file(FetchBundleFileRequest {
                version: V2.into(),
                path: "manifest.json".into(),
                offset: 0,
            })
            .await
            .expect("the manifest is served")
            .into_inner();
        let first = ok.message().await.unwrap().expect("one chunk at least");
        assert!(!first.data.is_empty() && first.total_bytes > 0);
    });
    // the publisher's path is what the source serves: same manifest bytes
    let served = std::fs::read(v2.join("manifest.json")).unwrap();
    let copied = std::fs::read(
        members[0]
            .data_dir
            .join("bundles")
            .join(V2)
            .join("manifest.json"),
    )
    .unwrap();
    assert_eq!(served, copied);
    // the recommend answers keep working on v2 with the token-free API
    let (version, coverage) = recommend(&http, &members[0].http, "u000002").unwrap();
    assert_eq!((version.as_str(), coverage), (V2, 1.0));

    // a shard moved onto node 1, whose copy of v2 holds only the shards it
    // hosted: it fetches the new shard's files from a peer and serves it
    let hosts = |st: &serde_json::Value, s: u32| -> Vec<(u64, String)> {
        st["view"]["shard_map"]["replicas"][s as usize]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| {
                (
                    r["node"].as_u64().unwrap(),
                    r["state"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    };
    let st = status_json(&members[0].internal);
    let shard = (0..SHARDS)
        .find(|&s| hosts(&st, s).iter().all(|(n, _)| *n != 1))
        .expect("with 4 shards x 2 copies on 3 nodes, node 1 lacks a shard");
    let from = hosts(&st, shard)[0].0.to_string();
    let shard_dir = members[0]
        .data_dir
        .join("bundles")
        .join(V2)
        .join(format!("shards/shard-{shard:04}"));
    assert!(!shard_dir.join("index.usearch").exists());
    let o = admin(
        &members[1].internal,
        Some(TOKEN),
        &[
            "move-shard",
            "--shard",
            &shard.to_string(),
            "--from",
            &from,
            "--to",
            "1",
        ],
    );
    assert!(o.status.success(), "move-shard: {}", text(&o));
    assert!(
        eventually(Duration::from_secs(60), || {
            let h = hosts(&status_json(&members[0].internal), shard);
            h.iter().any(|(n, s)| *n == 1 && s == "Active")
                && h.iter().all(|(n, _)| n.to_string() != from)
        }),
        "shard {shard} did not move from node {from} to node 1: {}",
        status_json(&members[0].internal)
    );
    assert!(
        shard_dir.join("index.usearch").is_file(),
        "node 1 fetched the moved shard's files into its copy"
    );
    for m in &members {
        let (version, coverage) = recommend(&http, &m.http, "u000003").unwrap();
        assert_eq!((version.as_str(), coverage), (V2, 1.0), "node {}", m.id);
    }
}

#[test]
fn a_cluster_without_a_bundle_waits_for_a_publish_and_restarts_on_the_active_version() {
    let tmp = tempfile::tempdir().unwrap();
    let v1 = small_bundle(&tmp.path().join("v1"), 1, SHARDS);
    let members = write_configs(tmp.path(), 17130, None, "if-missing");
    let mut procs: Vec<NodeProc> = members
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let http = Http::default();
    // formed, but nothing to serve yet
    assert!(
        eventually(Duration::from_secs(60), || {
            let st = status_json(&members[0].internal);
            !st["view"]["shard_map"].is_null()
        }),
        "the cluster did not form"
    );
    for m in &members {
        let (s, v) = http.call(&format!("http://{}/readyz", m.http), None, None);
        assert_eq!(s, 503, "node {} must wait for a bundle: {v}", m.id);
        assert_eq!(v["status"], "loading");
    }
    // a request before any publish says what to do
    let (s, v) = http.call(
        &format!("http://{}/v1/recommend", members[0].http),
        Some(json!({"user_id": "u000001", "k": 5}).to_string()),
        None,
    );
    assert_eq!(s, 503, "{v}");
    let msg = v["error"]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("no model is active yet") && msg.contains("funnel admin --addr"),
        "{v}"
    );
    // HTTP publish on a cluster node: token enforced, then a cluster-wide rollout
    let url = format!("http://{}/v1/admin/publish", members[2].http);
    let body = json!({ "bundle": v1.display().to_string() }).to_string();
    let (s, _) = http.call(&url, Some(body.clone()), None);
    assert_eq!(s, 401);
    let (s, v) = http.call(&url, Some(body), Some(TOKEN));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model_version"], V1);
    assert!(
        eventually(Duration::from_secs(30), || members.iter().all(|m| {
            serving_version(&http, m).as_deref() == Some(V1)
                && recommend(&http, &m.http, "u000003").is_ok_and(|(_, c)| c == 1.0)
        })),
        "not every node serves {V1} with full coverage after the publish"
    );
    let st = status_json(&members[0].internal);
    assert_eq!(st["view"]["models"]["active"]["version"], V1, "{st}");
    assert_eq!(st["view"]["models"]["active"]["source_node"], 3, "{st}");
    // nodes read the shared path: nothing was copied
    for m in &members {
        assert!(!m.data_dir.join("bundles").exists(), "node {} copied", m.id);
    }

    // publishing the active bundle again (a deploy job run twice) is a
    // no-op; the same version from another path is refused
    let bundle = v1.display().to_string();
    let o = admin(&members[0].internal, Some(TOKEN), &["publish", &bundle]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("already active"), "{}", text(&o));
    let copy = tmp.path().join("v1-copy");
    copy_tree(&v1, &copy);
    let o = admin(
        &members[0].internal,
        Some(TOKEN),
        &["publish", &copy.display().to_string()],
    );
    assert!(!o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("new --model-version"), "{}", text(&o));
    // --if-none-active leaves a cluster that has a model alone
    let v2 = small_bundle(&tmp.path().join("v2"), 2, SHARDS);
    let o = admin(
        &members[1].internal,
        Some(TOKEN),
        &["publish", "--if-none-active", &v2.display().to_string()],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains(&format!("already serves {V1}")),
        "{}",
        text(&o)
    );
    let st = status_json(&members[0].internal);
    assert_eq!(st["view"]["models"]["active"]["version"], V1, "{st}");
    assert!(st["view"]["models"]["staged"].is_null(), "{st}");

    // a restarted node comes back on the active version
    let rt = support::rt();
    support::expect_three_voters(&rt, &members[0].internal);
    procs[0].kill9();
    procs[0] = NodeProc::start_config(&members[0].config, &members[0].data_dir);
    assert!(
        eventually(Duration::from_secs(60), || {
            serving_version(&http, &members[0]).as_deref() == Some(V1)
                && recommend(&http, &members[0].http, "u000004").is_ok_and(|(_, c)| c == 1.0)
        }),
        "the restarted node does not serve the active version {V1}"
    );
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            copy_tree(&p, &to.join(e.file_name()));
        } else {
            std::fs::copy(&p, to.join(e.file_name())).unwrap();
        }
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}

/// (model_version, coverage) of one recommend call.
fn recommend(http: &Http, node_http: &str, user: &str) -> Result<(String, f64), String> {
    let (s, v) = http.try_call(
        &format!("http://{node_http}/v1/recommend"),
        Some(json!({"user_id": user, "k": 10, "deadline_ms": 2000}).to_string()),
        None,
    )?;
    if s != 200 {
        return Err(format!("{s}: {v}"));
    }
    Ok((
        v["model_version"].as_str().unwrap_or("").to_string(),
        v["coverage"].as_f64().unwrap_or(0.0),
    ))
}
