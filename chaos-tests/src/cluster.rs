//! A real cluster of real `funnel serve` processes on 127.0.0.1: the chaos
//! shape of it (voters and spares, failpoints, fault injection, an admin
//! token, a log file per node), start, SIGKILL, SIGTERM, SIGSTOP/SIGCONT,
//! restart, and the calls the harness makes to look at it (Control.Status,
//! the cluster view, ShardData.Digest/Search, HTTP recommend and upsert,
//! `funnel admin`). Processes, ports, config text, the HTTP client and the
//! status/view/digest calls are the shared test kit's (`testkit`); this
//! module keeps what only the chaos runs need.
//!
//! Owns: the node processes, their config files, data directories and log
//! files, and the tokio runtime every harness task runs on.
//! Must not touch: the fault schedule or the history (`faults.rs` decides
//! what to do to a node, `history.rs` records it).

use funnel::cluster::ClusterView;
use funnel::proto::data::shard_data_client::ShardDataClient;
use funnel::proto::data::ShardSearchRequest;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};
use testkit::http::{Http, HttpOptions};
use testkit::layout::{local, members_list, taken_port, NodeConfig, NodePorts};
use testkit::process::{ServeCommand, ServeProcess};

pub use testkit::bundle::{DIM, USERS};
pub use testkit::observe::{placed_copies, settled, status_at};
pub use testkit::process::funnel_bin;
/// Why the harness could not do what it was asked (the kit's error).
pub use testkit::KitError as HarnessError;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    testkit::error::io(what)
}

/// Trains the small seeded bundle (400 users, 300 items, 16 factors),
/// model `chaos-seed-{seed}`, into `out`: seconds, and every node of a run
/// serves it.
pub fn small_bundle(out: &Path, seed: u64, shards: u32) -> Result<PathBuf, HarnessError> {
    testkit::bundle::small_bundle(out, seed, shards, &format!("chaos-seed-{seed}"))
}

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
    process: Option<ServeProcess>,
}

impl Node {
    pub fn running(&self) -> bool {
        self.process.is_some()
    }

    pub fn paused(&self) -> bool {
        self.process.as_ref().is_some_and(ServeProcess::paused)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ServeProcess::pid)
    }

    fn process(&mut self) -> Result<&mut ServeProcess, HarnessError> {
        let id = self.id;
        self.process
            .as_mut()
            .ok_or_else(|| HarnessError::Other(format!("node {id} is not running")))
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
    http: Http,
}

/// How long a `full_coverage` recommend may take.
const COVERAGE_TIMEOUT: Duration = Duration::from_secs(3);

impl Cluster {
    /// Writes the configs of every node (voters and spares) under `dir`;
    /// starts nothing.
    pub fn new(spec: ClusterSpec, dir: &Path, bundle: &Path) -> Result<Cluster, HarnessError> {
        let bin = funnel_bin()?;
        let rt = Arc::new(
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .map_err(io("starting the harness runtime"))?,
        );
        let http = Http::on(
            rt.clone(),
            HttpOptions {
                pool: 64,
                connect_timeout: Duration::from_secs(5),
                timeout: COVERAGE_TIMEOUT,
                retry_broken_connection: false,
            },
        );
        let total = spec.voters + spec.spares;
        let ports = NodePorts::packed(total, spec.base_port);
        // nodes of another run on these ports would talk Raft to this
        // cluster's nodes: refuse to start instead
        if let Some((id, p, e)) = taken_port(&ports) {
            return Err(HarnessError::Other(format!(
                "port {p} (node {id}) is not free ({e}): another chaos run or test uses \
                 ports {}..{}; pick another --base-port",
                spec.base_port,
                ports.last().map_or(spec.base_port, |n| n.internal)
            )));
        }
        let members = members_list(&ports[..spec.voters as usize]);
        let api_extra = format!("admin_token = \"{ADMIN_TOKEN}\"");
        let mut nodes = Vec::new();
        for me in &ports {
            // the scenarios place shards by hand (moves, add-node, drain):
            // the leader must not rebalance behind their back
            let cluster_extra = format!(
                "snapshot_every = {}\nauto_rebalance = false\n{}{}",
                spec.snapshot_every,
                if spec.fault_injection {
                    "fault_injection = true\n"
                } else {
                    ""
                },
                if me.id <= spec.voters { &members } else { "" },
            );
            let (config, data_dir) = NodeConfig {
                ports: me,
                bundle: Some(bundle),
                shards: spec.shards,
                replication: spec.replication,
                api_extra: &api_extra,
                cluster_extra: &cluster_extra,
            }
            .write(dir)?;
            nodes.push(Node {
                id: me.id,
                http: local(me.http),
                grpc: local(me.grpc),
                internal: local(me.internal),
                config,
                data_dir,
                log: dir.join(format!("node{}.log", me.id)),
                process: None,
            });
        }
        Ok(Cluster {
            spec,
            bin,
            dir: dir.to_path_buf(),
            bundle: bundle.to_path_buf(),
            nodes,
            rt,
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
            .filter(|n| n.running() && !n.paused())
            .map(|n| n.id)
            .collect()
    }

    /// Starts node `id`'s process (stdout and stderr appended to its log,
    /// `FUNNEL_FAILPOINTS` from the spec); does not wait for it to serve.
    pub fn start(&mut self, id: u64) -> Result<(), HarnessError> {
        if self.node(id).running() {
            return Ok(());
        }
        let failpoints = self.spec.failpoints.get(&id).cloned();
        let mut cmd = ServeCommand::new(&self.bin).args([
            "--config".into(),
            self.node(id).config.clone().into_os_string(),
        ]);
        cmd = match failpoints {
            Some(fp) => cmd.env("FUNNEL_FAILPOINTS", &fp),
            None => cmd.env_remove("FUNNEL_FAILPOINTS"),
        };
        let process = cmd.spawn_logged(&self.node(id).log)?;
        self.node_mut(id).process = Some(process);
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
        let status = node.process.as_mut()?.try_exit()?;
        node.process = None;
        Some(status)
    }

    /// SIGKILL and reap.
    pub fn kill(&mut self, id: u64) {
        if let Some(mut p) = self.node_mut(id).process.take() {
            p.kill();
        }
    }

    /// SIGTERM (a graceful stop, as an orchestrator does it), reaped; a
    /// process still running after `grace` is SIGKILLed. True when it exited
    /// within the grace period.
    pub fn stop(&mut self, id: u64, grace: Duration) -> bool {
        self.node_mut(id)
            .process
            .take()
            .is_some_and(|p| p.stop(grace))
    }

    /// SIGSTOP: the process freezes with its sockets open.
    pub fn pause(&mut self, id: u64) -> Result<(), HarnessError> {
        self.node_mut(id).process()?.pause()
    }

    /// SIGCONT.
    pub fn resume(&mut self, id: u64) -> Result<(), HarnessError> {
        self.node_mut(id).process()?.resume()
    }

    /// Every process SIGKILLed.
    pub fn shutdown(&mut self) {
        for id in 1..=self.nodes.len() as u64 {
            if self.node(id).paused() {
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
        testkit::observe::view(&self.rt, &self.node(id).internal, Duration::from_secs(3))
    }

    /// The view from any live node.
    pub fn any_view(&self) -> Option<ClusterView> {
        self.live().into_iter().find_map(|id| self.view(id))
    }

    /// Digest of every copy the shard map places: shard -> [(node, digest)].
    pub fn digests(&self, view: &ClusterView) -> testkit::observe::Digests {
        // a frozen node must not hold the harness: every call has a bound
        testkit::observe::copies_with(&self.rt, view, None, Some(Duration::from_secs(3)))
            .into_iter()
            .map(|(shard, copies)| {
                let digests = copies.into_iter().map(|(node, _, d)| (node, d)).collect();
                (shard, digests)
            })
            .collect()
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

    /// POST `body` to node `id`'s HTTP `path` within `timeout`.
    pub fn post(
        &self,
        id: u64,
        path: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), HarnessError> {
        let url = format!("http://{}{path}", self.node(id).http);
        self.http
            .call_within(&url, Some(body.to_string()), None, timeout)
    }

    /// GET node `id`'s HTTP `path` within `timeout`.
    pub fn get(
        &self,
        id: u64,
        path: &str,
        timeout: Duration,
    ) -> Result<(u16, serde_json::Value), HarnessError> {
        let url = format!("http://{}{path}", self.node(id).http);
        self.http.call_within(&url, None, None, timeout)
    }

    /// True when node `id` answers a recommend with 200 and coverage 1
    /// (within 3 s).
    pub fn full_coverage(&self, id: u64) -> bool {
        testkit::http::full_coverage(&self.http, &self.node(id).http)
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
