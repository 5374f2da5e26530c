//! A real cluster of real `funnel serve` processes on 127.0.0.1: config
//! writing, start, SIGKILL, SIGSTOP/SIGCONT, restart, and the calls the
//! harness makes to look at it (Control.Status, the cluster view,
//! ShardData.Digest/Search, HTTP recommend and upsert, `funnel admin`).
//!
//! Owns: the node processes, their config files, data directories and log
//! files, and the tokio runtime every harness task runs on.
//! Must not touch: the fault schedule or the history (`faults.rs` decides
//! what to do to a node, `history.rs` records it).

use funnel::cluster::{ClusterView, ReplicaState};
use funnel::http_client::{build_client, send_json, ErrorKind, HttpClient};
use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::StatusRequest;
use funnel::proto::data::shard_data_client::ShardDataClient;
use funnel::proto::data::{ShardDigestRequest, ShardSearchRequest};
use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Why the harness could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{0}")]
    Binary(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    #[error("funnel admin {args}: {message}")]
    Admin { args: String, message: String },
    #[error("{0}")]
    Other(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    let what = what.into();
    move |source| HarnessError::Io { what, source }
}

/// The `funnel` executable: `FUNNEL_BIN`, else `target/<profile>/funnel`
/// next to the running test or chaos binary.
pub fn funnel_bin() -> Result<PathBuf, HarnessError> {
    const BUILD: &str = "build it with `cargo build --bin funnel --features failpoints` \
         (or point FUNNEL_BIN at a funnel executable)";
    if let Some(p) = std::env::var_os("FUNNEL_BIN") {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(HarnessError::Binary(format!(
                "FUNNEL_BIN={} is not a file; {BUILD}",
                p.display()
            )))
        };
    }
    let exe = std::env::current_exe().map_err(io("locating the running executable"))?;
    // target/<profile>/deps/ci-HASH (tests) or target/<profile>/chaos (the binary)
    let mut candidates = Vec::new();
    for dir in exe.ancestors().skip(1).take(2) {
        candidates.push(dir.join(format!("funnel{}", std::env::consts::EXE_SUFFIX)));
    }
    candidates.into_iter().find(|p| p.is_file()).ok_or_else(|| {
        HarnessError::Binary(format!(
            "no funnel executable next to {}; {BUILD}",
            exe.display()
        ))
    })
}

/// Trains a small seeded bundle (400 users, 300 items, 16 factors) into
/// `out`: seconds, and every node of a run serves it.
pub fn small_bundle(out: &Path, seed: u64, shards: u32) -> Result<PathBuf, HarnessError> {
    use funnel::gen::{generate, GenParams};
    use funnel::training::pipeline::PipelineParams;
    use funnel::training::trainer::{train, TrainOptions};
    let ds = generate(&GenParams {
        users: 400,
        items: 300,
        interactions: 16_000,
        seed,
        ..GenParams::default()
    })
    .map_err(|e| HarnessError::Other(format!("generating the training data: {e}")))?;
    let mut params = PipelineParams::default();
    params.als.factors = DIM as usize;
    params.als.iterations = 6;
    params.gbdt.trees = 40;
    train(
        &ds,
        &TrainOptions {
            out: out.to_path_buf(),
            force: true,
            shards,
            params,
            index: Default::default(),
            index_threads: 0,
            model_version: Some(format!("chaos-seed-{seed}")),
            progress: false,
            metrics: serde_json::Value::Null,
        },
    )
    .map_err(|e| HarnessError::Other(format!("training the chaos bundle: {e}")))?;
    Ok(out.to_path_buf())
}

/// Embedding dimension of the chaos bundle.
pub const DIM: u32 = 16;
/// Users in the chaos bundle (u000000..u000399).
pub const USERS: u32 = 400;
/// The admin token every chaos node is configured with.
pub const ADMIN_TOKEN: &str = "chaos-admin-token";

/// The shape of a chaos cluster.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// Nodes 1..=voters form the cluster (node 1 bootstraps).
    pub voters: u64,
    /// Nodes voters+1..=voters+spares are configured but not started; they
    /// join with `funnel admin add-node`.
    pub spares: u64,
    pub shards: u32,
    pub replication: u32,
    /// Raft log entries between snapshots (`cluster.snapshot_every`).
    pub snapshot_every: u64,
    /// Node i uses ports base_port + 3(i-1) .. + 2.
    pub base_port: u16,
    /// `cluster.fault_injection`: the FaultInjection service is served.
    pub fault_injection: bool,
    /// `FUNNEL_FAILPOINTS` for a node at its next start: node -> spec.
    pub failpoints: BTreeMap<u64, String>,
}

impl Default for ClusterSpec {
    fn default() -> Self {
        ClusterSpec {
            voters: 3,
            spares: 0,
            shards: 6,
            replication: 2,
            snapshot_every: 5000,
            base_port: 20000,
            fault_injection: false,
            failpoints: BTreeMap::new(),
        }
    }
}

/// One node: its addresses, files and (when running) process.
#[derive(Debug)]
pub struct Node {
    pub id: u64,
    pub http: String,
    pub grpc: String,
    pub internal: String,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

impl Node {
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    pub fn paused(&self) -> bool {
        self.paused
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }
}

/// A running chaos cluster. Every process is SIGKILLed when it is dropped.
pub struct Cluster {
    pub spec: ClusterSpec,
    pub bin: PathBuf,
    pub dir: PathBuf,
    pub bundle: PathBuf,
    pub nodes: Vec<Node>,
    pub rt: Arc<tokio::runtime::Runtime>,
    http: HttpClient,
}

impl Cluster {
    /// Writes the configs of every node (voters and spares) under `dir`;
    /// starts nothing.
    pub fn new(spec: ClusterSpec, dir: &Path, bundle: &Path) -> Result<Cluster, HarnessError> {
        let bin = funnel_bin()?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(io("starting the harness runtime"))?;
        let http = rt.block_on(async { build_client(64, Duration::from_secs(5)) });
        let total = spec.voters + spec.spares;
        let port = |id: u64, k: u16| spec.base_port + 3 * (id as u16 - 1) + k;
        // nodes of another run on these ports would talk Raft to this
        // cluster's nodes: refuse to start instead
        for id in 1..=total {
            for k in 0..3 {
                let p = port(id, k);
                if let Err(e) = std::net::TcpListener::bind(("127.0.0.1", p)) {
                    return Err(HarnessError::Other(format!(
                        "port {p} (node {id}) is not free ({e}): another chaos run or test uses \
                         ports {}..{}; pick another --base-port",
                        spec.base_port,
                        port(total, 2)
                    )));
                }
            }
        }
        let addr = |p: u16| format!("127.0.0.1:{p}");
        let members: Vec<String> = (1..=spec.voters)
            .map(|id| {
                format!(
                    "  {{ id = {id}, internal = \"{}\", http = \"{}\", grpc = \"{}\" }},",
                    addr(port(id, 2)),
                    addr(port(id, 0)),
                    addr(port(id, 1))
                )
            })
            .collect();
        let mut nodes = Vec::new();
        for id in 1..=total {
            let data_dir = dir.join(format!("node-{id}"));
            let config = dir.join(format!("node{id}.toml"));
            let members = if id <= spec.voters {
                format!("members = [\n{}\n]", members.join("\n"))
            } else {
                String::new()
            };
            let text = format!(
                r#"[node]
id = {id}
data_dir = "{data}"
bundle = "{bundle}"

[api]
http = "{http}"
grpc = "{grpc}"
admin_token = "{ADMIN_TOKEN}"

[cluster]
internal = "{internal}"
bootstrap = {boot}
shards = {shards}
replication = {replication}
heartbeat_ms = 100
election_timeout_min_ms = 300
election_timeout_max_ms = 600
snapshot_every = {snapshot_every}
{fault_injection}{members}
"#,
                data = data_dir.display(),
                bundle = bundle.display(),
                http = addr(port(id, 0)),
                grpc = addr(port(id, 1)),
                internal = addr(port(id, 2)),
                boot = id == 1,
                shards = spec.shards,
                replication = spec.replication,
                snapshot_every = spec.snapshot_every,
                fault_injection = if spec.fault_injection {
                    "fault_injection = true\n"
                } else {
                    ""
                },
            );
            std::fs::write(&config, text).map_err(io(format!("writing {}", config.display())))?;
            nodes.push(Node {
                id,
                http: addr(port(id, 0)),
                grpc: addr(port(id, 1)),
                internal: addr(port(id, 2)),
                config,
                data_dir,
                log: dir.join(format!("node{id}.log")),
                child: None,
                paused: false,
            });
        }
        Ok(Cluster {
            spec,
            bin,
            dir: dir.to_path_buf(),
            bundle: bundle.to_path_buf(),
            nodes,
            rt: Arc::new(rt),
            http,
        })
    }

    pub fn node(&self, id: u64) -> &Node {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: u64) -> &mut Node {
        &mut self.nodes[(id - 1) as usize]
    }

    /// Ids of the nodes whose process runs (paused or not).
    pub fn running(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running())
            .map(|n| n.id)
            .collect()
    }

    /// Ids of the nodes running and not paused.
    pub fn live(&self) -> Vec<u64> {
        self.nodes
            .iter()
            .filter(|n| n.running() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Starts node `id`'s process (stdout and stderr appended to its log);
    /// does not wait for it to serve.
    pub fn start(&mut self, id: u64) -> Result<(), HarnessError> {
        if self.node(id).running() {
            return Ok(());
        }
        let failpoints = self.spec.failpoints.get(&id).cloned();
        let bin = self.bin.clone();
        let node = self.node_mut(id);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .map_err(io(format!("opening {}", node.log.display())))?;
        let err = log
            .try_clone()
            .map_err(io(format!("opening {}", node.log.display())))?;
        let mut cmd = Command::new(&bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&node.config)
            .env("RUST_LOG", "warn,openraft=off")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(err));
        match failpoints {
            Some(fp) => cmd.env("FUNNEL_FAILPOINTS", fp),
            None => cmd.env_remove("FUNNEL_FAILPOINTS"),
        };
        let child = cmd
            .spawn()
            .map_err(io(format!("starting {} serve", bin.display())))?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Waits until node `id` answers /readyz with 200 and a recommend with
    /// coverage 1.
    pub fn wait_serving(&mut self, id: u64, timeout: Duration) -> Result<(), HarnessError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            if let Some(status) = self.exited(id) {
                return Err(HarnessError::Other(format!(
                    "node {id} exited ({status}) while starting; see {}",
                    self.node(id).log.display()
                )));
            }
            if self.full_coverage(id) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Timeout(
            timeout,
            format!(
                "node {id} never served with full coverage; see {}",
                self.node(id).log.display()
            ),
        ))
    }

    /// The exit status of node `id` if its process ended on its own (it is
    /// then marked not running).
    pub fn exited(&mut self, id: u64) -> Option<std::process::ExitStatus> {
        let node = self.node_mut(id);
        let status = node.child.as_mut()?.try_wait().ok()??;
        node.child = None;
        node.paused = false;
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, id: u64) {
        let node = self.node_mut(id);
        if let Some(mut c) = node.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        node.paused = false;
    }

    /// SIGTERM (a graceful stop, as an orchestrator does it), reaped; a
    /// process still running after `grace` is SIGKILLed. True when it exited
    /// within the grace period.
    pub fn stop(&mut self, id: u64, grace: Duration) -> bool {
        if self.signal(id, libc::SIGTERM).is_err() {
            return false;
        }
        let t0 = Instant::now();
        while t0.elapsed() < grace {
            if self.exited(id).is_some() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.kill(id);
        false
    }

    fn signal(&mut self, id: u64, sig: libc::c_int) -> Result<(), HarnessError> {
        let pid = self
            .node(id)
            .pid()
            .ok_or_else(|| HarnessError::Other(format!("node {id} is not running")))?;
        // SAFETY: kill(2) with a pid of a child this harness started and has
        // not reaped (so the pid cannot have been reused).
        let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
        if rc != 0 {
            return Err(HarnessError::Io {
                what: format!("signalling node {id} (pid {pid})"),
                source: std::io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: u64) -> Result<(), HarnessError> {
        self.signal(id, libc::SIGSTOP)?;
        self.node_mut(id).paused = true;
        Ok(())
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<(), HarnessError> {
        self.signal(id, libc::SIGCONT)?;
        self.node_mut(id).paused = false;
        Ok(())
    }

    /// Every process SIGKILLed.
    pub fn shutdown(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if self.node(id).paused {
                let _ = self.resume(id);
            }
            self.kill(id);
        }
    }

    /// The text of every node's log: (node, text).
    pub fn logs(&self) -> Vec<(u64, String)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                std::fs::read(&n.log)
                    .ok()
                    .map(|b| (n.id, String::from_utf8_lossy(&b).into_owned()))
            })
            .collect()
    }

    // --- looking at the cluster ------------------------------------------

    /// Node `id`'s Control.Status (not linearizable), within `timeout`.
    pub fn status(
        &self,
        id: u64,
        timeout: Duration,
    ) -> Option<funnel::proto::control::StatusResponse> {
        let addr = format!("http://{}", self.node(id).internal);
        self.rt.block_on(status_at(addr, timeout))
    }

    /// The leader as the first live node that knows one sees it: (id, term).
    pub fn leader(&self) -> Option<(u64, u64)> {
        self.live().into_iter().find_map(|id| {
            let s = self.status(id, Duration::from_millis(500))?;
            Some((s.leader_id?, s.term))
        })
    }

    /// Waits until the leader reports `count` Raft voters: a new cluster
    /// forms from node 1 alone and promotes the other members once they
    /// caught up, so a node may serve before it votes.
    pub fn wait_voters(&self, count: usize, timeout: Duration) -> Result<(), HarnessError> {
        let t0 = Instant::now();
        let mut last = Vec::new();
        while t0.elapsed() < timeout {
            if let Some((leader, _)) = self.leader() {
                if let Some(s) = self.status(leader, Duration::from_millis(500)) {
                    if s.voters.len() == count {
                        return Ok(());
                    }
                    last = s.voters;
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Timeout(
            timeout,
            format!("the cluster never reached {count} Raft voters (last seen {last:?})"),
        ))
    }

    /// Waits for a leader every live node agrees on.
    pub fn wait_leader(&self, timeout: Duration) -> Result<(u64, u64), HarnessError> {
        let t0 = Instant::now();
        while t0.elapsed() < timeout {
            let seen: Vec<Option<u64>> = self
                .live()
                .into_iter()
                .map(|id| {
                    self.status(id, Duration::from_millis(500))
                        .and_then(|s| s.leader_id)
                })
                .collect();
            if let Some(Some(l)) = seen.first() {
                if seen.iter().all(|s| *s == Some(*l)) {
                    if let Some(s) = self.status(*l, Duration::from_millis(500)) {
                        return Ok((*l, s.term));
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(HarnessError::Timeout(
            timeout,
            "the live nodes never agreed on a leader".into(),
        ))
    }

    /// The cluster view as node `id` has it.
    pub fn view(&self, id: u64) -> Option<ClusterView> {
        let addr = self.node(id).internal.clone();
        self.rt.block_on(async move {
            tokio::time::timeout(Duration::from_secs(3), funnel::admin::fetch_view(&addr))
                .await
                .ok()?
                .ok()
                .flatten()
                .map(|(_, v)| v)
        })
    }

    /// The view from any live node.
    pub fn any_view(&self) -> Option<ClusterView> {
        self.live().into_iter().find_map(|id| self.view(id))
    }

    /// Digest of every copy the shard map places: shard -> [(node, digest)].
    pub fn digests(&self, view: &ClusterView) -> BTreeMap<u32, Vec<(u64, String)>> {
        let mut out: BTreeMap<u32, Vec<(u64, String)>> = BTreeMap::new();
        for (shard, node) in placed_copies(view) {
            let Some(info) = view.nodes.get(&node) else {
                continue;
            };
            let addr = format!("http://{}", info.internal);
            let d = self.rt.block_on(async move {
                let mut c =
                    tokio::time::timeout(Duration::from_secs(2), ShardDataClient::connect(addr))
                        .await
                        .ok()?
                        .ok()?;
                let mut req = tonic::Request::new(ShardDigestRequest { shard });
                req.set_timeout(Duration::from_secs(3));
                c.digest(req).await.ok().map(|r| r.into_inner().digest)
            });
            if let Some(d) = d {
                out.entry(shard).or_default().push((node, d));
            }
        }
        out
    }

    /// For each copy the map places: which of `keys` (item keys of items of
    /// that shard) it holds. (shard, node) -> held keys; a copy that did not
    /// answer is absent.
    pub fn held_keys(
        &self,
        view: &ClusterView,
        keys_by_shard: &BTreeMap<u32, Vec<u64>>,
    ) -> BTreeMap<(u32, u64), Vec<u64>> {
        let mut out = BTreeMap::new();
        for (shard, node) in placed_copies(view) {
            let (Some(info), Some(keys)) = (view.nodes.get(&node), keys_by_shard.get(&shard))
            else {
                continue;
            };
            let addr = format!("http://{}", info.internal);
            let keys = keys.clone();
            let held = self.rt.block_on(async move {
                let mut c =
                    tokio::time::timeout(Duration::from_secs(2), ShardDataClient::connect(addr))
                        .await
                        .ok()?
                        .ok()?;
                // k = 1 over a zero query: the answer that matters is the
                // vectors of the fetched keys this copy holds
                let mut req = tonic::Request::new(ShardSearchRequest {
                    shard,
                    model_version: String::new(),
                    query: vec![0.0; DIM as usize],
                    k: 1,
                    exclude: Vec::new(),
                    filter_categories: false,
                    categories: Vec::new(),
                    fetch: keys,
                });
                req.set_timeout(Duration::from_secs(5));
                c.search(req).await.ok().map(|r| r.into_inner().vector_keys)
            });
            if let Some(held) = held {
                out.insert((shard, node), held);
            }
        }
        out
    }

    /// POST `body` to node `id`'s HTTP `path`.
    pub fn post(
        &self,
        id: u64,
        path: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), ErrorKind> {
        let uri: hyper::Uri = format!("http://{}{path}", self.node(id).http)
            .parse()
            .map_err(|_| ErrorKind::BadResponse)?;
        let (status, bytes) = self.rt.block_on(send_json(
            &self.http,
            uri,
            Some(body.to_string().into()),
            None,
            timeout,
        ))?;
        let v = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        Ok((status.as_u16(), v))
    }

    /// True when node `id` answers a recommend with 200 and coverage 1.
    pub fn full_coverage(&self, id: u64) -> bool {
        let body = serde_json::json!({"user_id": "u000001", "k": 10, "deadline_ms": 1000});
        matches!(
            self.post(id, "/v1/recommend", body, Duration::from_secs(3)),
            Ok((200, v)) if v["coverage"].as_f64() == Some(1.0)
        )
    }

    /// Replaces node `id`'s transport fault rules (FaultInjection.SetFaults;
    /// empty rules heal). Needs `fault_injection` in the spec.
    pub fn set_faults(
        &self,
        id: u64,
        rules: funnel::proto::ops::FaultRules,
    ) -> Result<(), HarnessError> {
        use funnel::proto::ops::fault_injection_client::FaultInjectionClient;
        let addr = format!("http://{}", self.node(id).internal);
        self.rt.block_on(async move {
            let ch = tonic::transport::Endpoint::from_shared(addr.clone())
                .map_err(|e| HarnessError::Other(format!("{addr}: {e}")))?
                .connect_timeout(Duration::from_secs(2))
                .timeout(Duration::from_secs(5))
                .connect()
                .await
                .map_err(|e| HarnessError::Other(format!("connecting to {addr}: {e}")))?;
            let mut req = tonic::Request::new(rules);
            funnel::auth::attach(&mut req, ADMIN_TOKEN)
                .map_err(|e| HarnessError::Other(format!("admin token: {e}")))?;
            FaultInjectionClient::new(ch)
                .set_faults(req)
                .await
                .map_err(|s| {
                    HarnessError::Other(format!(
                        "node {id} refused the fault rules ({:?}): {}",
                        s.code(),
                        s.message()
                    ))
                })?;
            Ok(())
        })
    }

    /// `funnel admin --addr <node id's internal> --token T ARGS...`: stdout,
    /// or its stderr as the error.
    pub fn admin(&self, id: u64, args: &[&str]) -> Result<String, HarnessError> {
        let out = Command::new(&self.bin)
            .args(["admin", "--addr", &self.node(id).internal])
            .args(["--token", ADMIN_TOKEN])
            .args(args)
            .output()
            .map_err(io("running funnel admin"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(HarnessError::Admin {
                args: args.join(" "),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Control.Status of the node at `addr` (http://HOST:PORT) within `timeout`.
pub async fn status_at(
    addr: String,
    timeout: Duration,
) -> Option<funnel::proto::control::StatusResponse> {
    tokio::time::timeout(timeout, async move {
        let mut c = ControlClient::connect(addr).await.ok()?;
        let mut req = tonic::Request::new(StatusRequest {
            linearizable: false,
        });
        req.set_timeout(timeout);
        c.status(req).await.ok().map(|r| r.into_inner())
    })
    .await
    .ok()
    .flatten()
}

/// (shard, node) of every copy the view's shard map places.
pub fn placed_copies(view: &ClusterView) -> Vec<(u32, u64)> {
    view.shard_map
        .as_ref()
        .map(|m| {
            m.replicas
                .iter()
                .enumerate()
                .flat_map(|(s, rs)| rs.iter().map(move |r| (s as u32, r.node)))
                .collect()
        })
        .unwrap_or_default()
}

/// Every replica Active and no transfer queued.
pub fn settled(v: &ClusterView) -> bool {
    v.transfers.is_empty()
        && v.shard_map.as_ref().is_some_and(|m| {
            m.replicas
                .iter()
                .all(|rs| !rs.is_empty() && rs.iter().all(|r| r.state == ReplicaState::Active))
        })
}
