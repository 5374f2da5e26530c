//! Shared fixtures for the tests that run real `funnel serve` processes:
//! a small trained bundle, a node process on OS-assigned ports, and a JSON
//! client.
#![allow(dead_code)]

use funnel::gen::{generate, GenParams};
use funnel::http_client::{build_client, send_json, HttpClient};
use funnel::training::pipeline::PipelineParams;
use funnel::training::trainer::{train, TrainOptions};
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn quick_params() -> PipelineParams {
    let mut p = PipelineParams::default();
    p.als.factors = 16;
    p.als.iterations = 6;
    p.gbdt.trees = 40;
    p
}

/// Trains a small bundle from generated data (seeded).
pub fn small_bundle(out: &Path, seed: u64, shards: u32) -> PathBuf {
    let ds = generate(&GenParams {
        users: 400,
        items: 300,
        interactions: 16_000,
        seed,
        ..GenParams::default()
    })
    .unwrap();
    train(
        &ds,
        &TrainOptions {
            out: out.to_path_buf(),
            force: true,
            shards,
            params: quick_params(),
            index: Default::default(),
            index_threads: 0,
            model_version: Some(format!("test-seed-{seed}")),
            progress: false,
            metrics: serde_json::Value::Null,
        },
    )
    .unwrap();
    out.to_path_buf()
}

/// A `funnel serve` child process, killed (SIGKILL) when dropped.
pub struct NodeProc {
    pub child: Child,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub data_dir: PathBuf,
}

impl NodeProc {
    /// Starts `funnel serve` and waits until it prints its addresses.
    pub fn start(
        bundle: Option<&Path>,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProc {
        let mut args: Vec<std::ffi::OsString> = vec!["--data-dir".into(), data_dir.into()];
        args.extend(
            ["--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"]
                .iter()
                .map(Into::into),
        );
        if let Some(b) = bundle {
            args.push("--bundle".into());
            args.push(b.into());
        }
        args.extend(extra.iter().map(Into::into));
        Self::spawn(&args, data_dir, env)
    }

    /// Starts `funnel serve --config FILE` with nothing overridden.
    pub fn start_config(config: &Path, data_dir: &Path) -> NodeProc {
        Self::spawn(&["--config".into(), config.into()], data_dir, &[])
    }

    fn spawn(args: &[std::ffi::OsString], data_dir: &Path, env: &[(&str, &str)]) -> NodeProc {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_funnel"));
        cmd.arg("serve").args(args);
        cmd.envs(env.iter().copied())
            .env("RUST_LOG", "warn,openraft=off")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let mut child = cmd.spawn().expect("funnel binary starts");
        let stdout = child.stdout.take().expect("stdout is piped");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if line.starts_with("funnel serving:") {
                    let _ = tx.send(line);
                }
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .unwrap_or_else(|e| {
                if e == std::sync::mpsc::RecvTimeoutError::Disconnected {
                    // stdout closed: the process ended (its stderr is above)
                    let status = child.wait().map(|s| s.to_string());
                    panic!(
                        "funnel serve {args:?} exited before reporting its addresses: {status:?}"
                    )
                }
                let _ = child.kill();
                panic!("funnel serve did not report its addresses within 120 s")
            });
        let field = |name: &str| -> SocketAddr {
            let v = line
                .split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .expect("address field present");
            v.trim_start_matches("http://")
                .parse()
                .expect("address parses")
        };
        NodeProc {
            http: field("http="),
            grpc: field("grpc="),
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// A blocking JSON client for tests.
pub struct Http {
    rt: tokio::runtime::Runtime,
    client: HttpClient,
}

impl Default for Http {
    fn default() -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let client = rt.block_on(async { build_client(4, Duration::from_secs(10)) });
        Http { rt, client }
    }
}

impl Http {
    pub fn call(
        &self,
        url: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> (u16, serde_json::Value) {
        self.try_call(url, body, token)
            .unwrap_or_else(|e| panic!("{url}: {e}"))
    }

    /// Like `call`, but a request that gets no HTTP answer is an `Err`.
    /// A connection that breaks is retried once on a fresh one: the pool
    /// may hand out a keep-alive connection the server just closed.
    pub fn try_call(
        &self,
        url: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), String> {
        let send = || {
            self.rt.block_on(send_json(
                &self.client,
                url.parse().unwrap(),
                body.clone().map(Into::into),
                token,
                Duration::from_secs(60),
            ))
        };
        let (status, bytes) = match send() {
            Err(funnel::http_client::ErrorKind::Transport) => send(),
            other => other,
        }
        .map_err(|k| k.label())?;
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::String(
            String::from_utf8_lossy(&bytes).into(),
        ));
        Ok((status.as_u16(), v))
    }

    pub fn post(&self, url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(url, Some(body.to_string()), None)
    }

    pub fn get(&self, url: &str) -> (u16, serde_json::Value) {
        self.call(url, None, None)
    }
}

pub fn item_ids(resp: &serde_json::Value) -> Vec<String> {
    resp["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `f` until it is true or `timeout` passes.
pub fn eventually(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Digest of every shard copy that the nodes at `internal` addresses
/// (id, HOST:PORT) answer for, from the ShardData.Digest RPC:
/// shard -> [(node, digest)]. A node that is down or does not hold a shard
/// is simply absent from that shard's list.
pub fn shard_digests(
    nodes: &[(u64, String)],
    shards: u32,
) -> std::collections::BTreeMap<u32, Vec<(u64, String)>> {
    use funnel::proto::data::shard_data_client::ShardDataClient;
    use funnel::proto::data::ShardDigestRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut out: std::collections::BTreeMap<u32, Vec<(u64, String)>> = Default::default();
    rt.block_on(async {
        for (id, internal) in nodes {
            let Ok(mut c) = ShardDataClient::connect(format!("http://{internal}")).await else {
                continue;
            };
            for shard in 0..shards {
                if let Ok(d) = c.digest(ShardDigestRequest { shard }).await {
                    out.entry(shard)
                        .or_default()
                        .push((*id, d.into_inner().digest));
                }
            }
        }
    });
    out
}

/// True when every one of `shards` shards has exactly `copies` copies and
/// they all have the same digest.
pub fn digests_converged(
    d: &std::collections::BTreeMap<u32, Vec<(u64, String)>>,
    shards: u32,
    copies: usize,
) -> bool {
    d.len() == shards as usize
        && d.values()
            .all(|v| v.len() == copies && v.iter().all(|(_, x)| *x == v[0].1))
}

/// Ports of one node of a test cluster on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct NodePorts {
    pub id: u64,
    pub http: u16,
    pub grpc: u16,
    pub internal: u16,
}

impl NodePorts {
    /// Nodes 1..=`n` on fixed ports from `base`: http `base + id`, grpc
    /// `base + 10 + id`, internal `base + 20 + id` (so `n` <= 9). Fixed
    /// ports below the kernel's ephemeral range: a port picked by binding
    /// port 0 and letting go of it could be taken by the nodes' own
    /// outgoing connections before the node binds it.
    pub fn layout(n: u64, base: u16) -> Vec<NodePorts> {
        assert!(n <= 9, "the layout has room for nine nodes");
        (1..=n)
            .map(|id| NodePorts {
                id,
                http: base + id as u16,
                grpc: base + 10 + id as u16,
                internal: base + 20 + id as u16,
            })
            .collect()
    }

    /// Its entry in a `members = [...]` list.
    pub fn member_line(&self) -> String {
        format!(
            "  {{ id = {}, internal = \"127.0.0.1:{}\", http = \"127.0.0.1:{}\", grpc = \"127.0.0.1:{}\" }},",
            self.id, self.internal, self.http, self.grpc
        )
    }
}

/// `members = [...]` listing `nodes`.
pub fn members_list(nodes: &[NodePorts]) -> String {
    let lines: Vec<String> = nodes.iter().map(NodePorts::member_line).collect();
    format!("members = [\n{}\n]", lines.join("\n"))
}

/// Writes `dir/node{id}.toml` for a test cluster node (fast elections:
/// heartbeat 100 ms, election timeout 300–600 ms, R = 2; node 1
/// bootstraps) and returns (config, data_dir). `api_extra` and
/// `cluster_extra` are extra TOML lines for those sections (e.g. a token,
/// `members = [...]`, `join = ...`).
pub fn write_node_config(
    dir: &Path,
    me: &NodePorts,
    bundle: Option<&Path>,
    shards: u32,
    api_extra: &str,
    cluster_extra: &str,
) -> (PathBuf, PathBuf) {
    let id = me.id;
    let data_dir = dir.join(format!("node-{id}"));
    let config = dir.join(format!("node{id}.toml"));
    let text = format!(
        r#"[node]
id = {id}
data_dir = "{data}"
bundle = "{bundle}"

[api]
http = "127.0.0.1:{h}"
grpc = "127.0.0.1:{g}"
{api_extra}

[cluster]
internal = "127.0.0.1:{r}"
bootstrap = {boot}
shards = {shards}
replication = 2
heartbeat_ms = 100
election_timeout_min_ms = 300
election_timeout_max_ms = 600
{cluster_extra}
"#,
        data = data_dir.display(),
        bundle = bundle.map_or(String::new(), |b| b.display().to_string()),
        h = me.http,
        g = me.grpc,
        r = me.internal,
        boot = id == 1,
    );
    std::fs::write(&config, text).expect("the test directory is writable");
    (config, data_dir)
}

/// A small runtime for the cluster tests' gRPC calls.
pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap()
}

/// One recommend request (k 10, 1 s deadline): the JSON answer, or the
/// status and body of a refusal.
/// Whether `node_http` answers a recommend with every shard covered.
pub fn full_coverage(http: &Http, node_http: &str) -> bool {
    recommend(http, node_http, "u000001").is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))
}

pub fn recommend(http: &Http, node_http: &str, user: &str) -> Result<serde_json::Value, String> {
    let (s, v) = http.try_call(
        &format!("http://{node_http}/v1/recommend"),
        Some(serde_json::json!({"user_id": user, "k": 10, "deadline_ms": 1000}).to_string()),
        None,
    )?;
    if s == 200 {
        Ok(v)
    } else {
        Err(format!("{s}: {v}"))
    }
}

/// shard -> [(node, items, digest)] over the copies the map places.
pub type Copies = std::collections::BTreeMap<u32, Vec<(u64, u64, String)>>;

/// Items and digest of every copy `v`'s shard map places, asked of the
/// node holding it (a node that does not answer is left out).
pub fn copies(rt: &tokio::runtime::Runtime, v: &funnel::cluster::ClusterView) -> Copies {
    copies_with(rt, v, None)
}

/// `copies`, reaching the nodes over mutual TLS with `tls`.
pub fn copies_with(
    rt: &tokio::runtime::Runtime,
    v: &funnel::cluster::ClusterView,
    tls: Option<&funnel::tls::NodeTls>,
) -> Copies {
    use funnel::proto::data::shard_data_client::ShardDataClient;
    use funnel::proto::data::ShardDigestRequest;
    let mut out = Copies::new();
    let Some(map) = &v.shard_map else {
        return out;
    };
    rt.block_on(async {
        for (s, rs) in map.replicas.iter().enumerate() {
            for r in rs {
                let Some(info) = v.nodes.get(&r.node) else {
                    continue;
                };
                let Ok(ep) =
                    funnel::tls::internal_endpoint(&info.internal, tls, Duration::from_secs(2))
                else {
                    continue;
                };
                let Ok(ch) = ep.connect().await else {
                    continue;
                };
                let req = ShardDigestRequest { shard: s as u32 };
                if let Ok(d) = ShardDataClient::new(ch).digest(req).await {
                    let d = d.into_inner();
                    out.entry(s as u32)
                        .or_default()
                        .push((r.node, d.items, d.digest));
                }
            }
        }
    });
    out
}

/// Upserts one item (16-dimensional vector, no categories) through a
/// node's HTTP API: Ok once acknowledged, else the status and body.
pub fn upsert_item(http: &Http, node_http: &str, id: &str) -> Result<(), String> {
    let (s, v) = http.try_call(
        &format!("http://{node_http}/v1/items"),
        Some(
            serde_json::json!({"items": [{"item_id": id, "vector": vec![0.1f32; 16], "categories": []}]})
                .to_string(),
        ),
        None,
    )?;
    if s == 200 {
        Ok(())
    } else {
        Err(format!("{s}: {v}"))
    }
}

/// Waits until the node at `internal` (HOST:PORT) reports a leader and
/// exactly `voters` as Raft voters. A new cluster forms from its bootstrap
/// node alone and promotes the other members once they caught up, so a
/// test that kills or cuts off a node waits for this first.
pub fn wait_voters(
    rt: &tokio::runtime::Runtime,
    internal: &str,
    voters: &[u64],
    timeout: Duration,
) -> bool {
    use funnel::proto::control::control_client::ControlClient;
    use funnel::proto::control::StatusRequest;
    eventually(timeout, || {
        rt.block_on(async {
            let Ok(mut c) = ControlClient::connect(format!("http://{internal}")).await else {
                return false;
            };
            let req = StatusRequest {
                linearizable: false,
            };
            c.status(req).await.is_ok_and(|s| {
                let s = s.into_inner();
                s.leader_id.is_some() && s.voters == voters
            })
        })
    })
}

/// A member of a multi-process test cluster: its config file and data
/// directory, and the addresses the tests talk to.
pub struct Member {
    pub id: u64,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub http: String,
    pub internal: String,
}

/// Writes one config per node of `nodes` (`write_node_config` with the same
/// bundle, shard count, `[api]` and `[cluster]` extra lines for each).
pub fn write_members(
    dir: &Path,
    nodes: &[NodePorts],
    bundle: Option<&Path>,
    shards: u32,
    api_extra: &str,
    cluster_extra: &str,
) -> Vec<Member> {
    nodes
        .iter()
        .map(|me| {
            let (config, data_dir) =
                write_node_config(dir, me, bundle, shards, api_extra, cluster_extra);
            Member {
                id: me.id,
                config,
                data_dir,
                http: format!("127.0.0.1:{}", me.http),
                internal: format!("127.0.0.1:{}", me.internal),
            }
        })
        .collect()
}

/// Panics unless the cluster seen from `internal` promotes nodes 1, 2 and 3
/// to voters within a minute (a node may serve while still a learner, so
/// fault tests wait for this before killing or cutting anything off).
pub fn expect_three_voters(rt: &tokio::runtime::Runtime, internal: &str) {
    assert!(
        wait_voters(rt, internal, &[1, 2, 3], Duration::from_secs(60)),
        "the cluster never promoted all three members to voters"
    );
}

/// The value of one series in a node's /metrics, e.g.
/// `funnel_shard_searches_served_total{via="batch"}` (0 when absent: a
/// labelled series appears only once it has a value).
pub fn metric_value(http: &Http, node_http: &str, series: &str) -> f64 {
    let (s, m) = http.call(&format!("http://{node_http}/metrics"), None, None);
    assert_eq!(s, 200, "/metrics of {node_http}");
    m.as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// Background load on a cluster while an operation runs: recommends
/// round-robin over `targets` every 5 ms (each must answer with full
/// coverage) and an item upsert every 40 ms (ids `{prefix}-00000` and on,
/// each pushed to `acked` once acknowledged).
pub struct ClusterLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    recommends: std::thread::JoinHandle<(usize, Vec<String>)>,
    upserts: std::thread::JoinHandle<UpsertOutcomes>,
}

/// Acknowledged upsert ids, and refusals with when they were answered.
type UpsertOutcomes = (Vec<String>, Vec<(Instant, String)>);

impl ClusterLoad {
    pub fn start(
        targets: Vec<String>,
        prefix: &'static str,
        dim: usize,
        acked: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    ) -> ClusterLoad {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (s, t) = (stop.clone(), targets.clone());
        let recommends = std::thread::spawn(move || {
            let http = Http::default();
            let (mut n, mut failures) = (0usize, Vec::new());
            while !s.load(Ordering::SeqCst) {
                let target = &t[n % t.len()];
                match recommend(&http, target, &format!("u{:06}", n % 300)) {
                    Ok(v) if v["coverage"].as_f64() == Some(1.0) => {}
                    Ok(v) => failures.push(format!(
                        "{target}: coverage {} ({})",
                        v["coverage"], v["degraded"]
                    )),
                    Err(e) => failures.push(format!("{target}: {e}")),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (n, failures)
        });
        let s = stop.clone();
        let upserts = std::thread::spawn(move || {
            let http = Http::default();
            let (mut ok, mut failed) = (Vec::new(), Vec::new());
            let mut n = 0usize;
            while !s.load(Ordering::SeqCst) {
                let id = format!("{prefix}-{n:05}");
                let vector: Vec<f32> = (0..dim).map(|d| ((n * 7 + d) % 13) as f32 / 13.0).collect();
                let target = &targets[n % targets.len()];
                let body = serde_json::json!({"items": [{"item_id": id, "vector": vector, "categories": []}]});
                match http.try_call(
                    &format!("http://{target}/v1/items"),
                    Some(body.to_string()),
                    None,
                ) {
                    Ok((200, _)) => {
                        acked.lock().unwrap().push(id.clone());
                        ok.push(id);
                    }
                    Ok((s, v)) => failed.push((Instant::now(), format!("{target} {id}: {s} {v}"))),
                    Err(e) => failed.push((Instant::now(), format!("{target} {id}: {e}"))),
                }
                n += 1;
                std::thread::sleep(Duration::from_millis(40));
            }
            (ok, failed)
        });
        ClusterLoad {
            stop,
            recommends,
            upserts,
        }
    }

    /// Stops the load; asserts it ran, no recommend failed or was degraded
    /// and some upsert was acknowledged. Answers the refused upserts with
    /// when each refusal came.
    pub fn finish(self, phase: &str) -> Vec<(Instant, String)> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (n, failures) = self.recommends.join().unwrap();
        let (ok, failed) = self.upserts.join().unwrap();
        println!(
            "{phase}: {n} recommends, {} upserts acknowledged, {} refused {:?}",
            ok.len(),
            failed.len(),
            failed.iter().take(2).map(|(_, m)| m).collect::<Vec<_>>()
        );
        assert!(n > 50, "{phase}: the load ran ({n} requests)");
        assert!(
            failures.is_empty(),
            "{phase}: {} of {n} recommend requests failed or were degraded: {:?}",
            failures.len(),
            &failures[..failures.len().min(5)]
        );
        assert!(!ok.is_empty(), "{phase}: no upsert was acknowledged");
        failed
    }
}
