//! The test side of the shared test kit (`testkit/`): the kit's calls in
//! the shape funnel's integration tests use them. Here a failure is a
//! panic with a message (the kit returns `KitError`), the `funnel` binary
//! is the one Cargo built for these tests (`CARGO_BIN_EXE_funnel`), and
//! test-only assertions live (`expect_three_voters`, `ClusterLoad`).
//! Everything else (processes, configs, HTTP and gRPC calls, digests) is
//! the kit's: add shared behaviour there, not here.
// each test uses a part of it
#![allow(dead_code, unused_imports)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use testkit::http::item_ids;
pub use testkit::layout::{members_list, Member, NodePorts};
pub use testkit::observe::{digests_converged, eventually, Copies};

/// The `funnel` executable Cargo built for these tests.
pub fn funnel_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_funnel"))
}

/// Trains a small bundle from generated data (seeded), model version
/// `test-seed-{seed}`.
pub fn small_bundle(out: &Path, seed: u64, shards: u32) -> PathBuf {
    testkit::bundle::small_bundle(out, seed, shards, &format!("test-seed-{seed}"))
        .unwrap_or_else(|e| panic!("the small bundle trains: {e}"))
}

/// A `funnel serve` child process, killed (SIGKILL) when dropped; its
/// addresses and data directory are the kit's `NodeProc` fields.
pub struct NodeProc(testkit::process::NodeProc);

impl NodeProc {
    /// Starts `funnel serve` and waits until it prints its addresses.
    pub fn start(
        bundle: Option<&Path>,
        data_dir: &Path,
        extra: &[&str],
        env: &[(&str, &str)],
    ) -> NodeProc {
        let p = testkit::process::NodeProc::start(funnel_bin(), bundle, data_dir, extra, env);
        NodeProc(p.unwrap_or_else(|e| panic!("{e}")))
    }

    /// Starts `funnel serve --config FILE` with nothing overridden.
    pub fn start_config(config: &Path, data_dir: &Path) -> NodeProc {
        let p = testkit::process::NodeProc::start_config(funnel_bin(), config, data_dir);
        NodeProc(p.unwrap_or_else(|e| panic!("{e}")))
    }
}

impl std::ops::Deref for NodeProc {
    type Target = testkit::process::NodeProc;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for NodeProc {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

/// A blocking JSON client for tests (60 s per request, a broken pooled
/// connection retried once).
pub struct Http(testkit::http::Http);

impl Default for Http {
    fn default() -> Self {
        let http = testkit::http::Http::new(Default::default());
        Http(http.expect("the HTTP client starts"))
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
    pub fn try_call(
        &self,
        url: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, serde_json::Value), String> {
        self.0.call(url, body, token).map_err(|e| e.to_string())
    }

    pub fn post(&self, url: &str, body: serde_json::Value) -> (u16, serde_json::Value) {
        self.call(url, Some(body.to_string()), None)
    }

    pub fn get(&self, url: &str) -> (u16, serde_json::Value) {
        self.call(url, None, None)
    }
}

/// `testkit::observe::shard_digests`: shard -> [(node, digest)] over what
/// the nodes at `nodes` (id, HOST:PORT) answer for.
pub fn shard_digests(
    nodes: &[(u64, String)],
    shards: u32,
) -> std::collections::BTreeMap<u32, Vec<(u64, String)>> {
    testkit::observe::shard_digests(nodes, shards).expect("a tokio runtime starts")
}

/// Writes `dir/node{id}.toml` for a test cluster node (fast elections:
/// heartbeat 100 ms, election timeout 250–500 ms, R = 2; node 1
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
    testkit::layout::NodeConfig {
        ports: me,
        bundle,
        shards,
        replication: 2,
        api_extra,
        cluster_extra,
    }
    .write(dir)
    .expect("the test directory is writable")
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
    testkit::layout::write_members(dir, nodes, bundle, shards, api_extra, cluster_extra)
        .expect("the test directory is writable")
}

/// A small runtime for the cluster tests' gRPC calls.
pub fn rt() -> tokio::runtime::Runtime {
    testkit::observe::runtime(1).expect("a tokio runtime starts")
}

/// Whether `node_http` answers a recommend with every shard covered.
pub fn full_coverage(http: &Http, node_http: &str) -> bool {
    testkit::http::full_coverage(&http.0, node_http)
}

/// One recommend request (k 10, 1 s deadline): the JSON answer, or the
/// status and body of a refusal.
pub fn recommend(http: &Http, node_http: &str, user: &str) -> Result<serde_json::Value, String> {
    testkit::http::recommend(&http.0, node_http, user).map_err(|e| e.to_string())
}

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
    testkit::observe::copies_with(rt, v, tls, None)
}

/// Waits (30 s) until every copy the shard map seen from `internal` places
/// (`want_copies` per shard, or the map's replication) answers with the
/// same digest and holds `base`'s items of its shard plus every
/// acknowledged upsert hashing there. An upsert in `unsure` was refused
/// with an outcome the cluster could not know (its leader died after
/// taking it), so it may or may not be there.
pub fn assert_items_converged(
    rt: &tokio::runtime::Runtime,
    internal: &str,
    base: &std::collections::BTreeMap<u32, u64>,
    acked: &[String],
    unsure: &[String],
    want_copies: Option<usize>,
) {
    use funnel::ids::{item_key, shard_of};
    use std::collections::{BTreeMap, BTreeSet};
    let shards = base.len() as u32;
    let acked: BTreeSet<&String> = acked.iter().collect();
    let mut least = base.clone();
    for id in &acked {
        *least.entry(shard_of(item_key(id), shards)).or_default() += 1;
    }
    let mut maybe: BTreeMap<u32, u64> = BTreeMap::new();
    for id in unsure.iter().collect::<BTreeSet<_>>() {
        if !acked.contains(id) {
            *maybe.entry(shard_of(item_key(id), shards)).or_default() += 1;
        }
    }
    let mut last = Copies::new();
    let ok = eventually(Duration::from_secs(30), || {
        let Some((_, v)) = rt
            .block_on(funnel::admin::fetch_view(internal))
            .ok()
            .flatten()
        else {
            return false;
        };
        last = copies(rt, &v);
        let want = want_copies
            .unwrap_or_else(|| v.shard_map.as_ref().map_or(0, |m| m.replication as usize));
        last.len() == shards as usize
            && last.iter().all(|(s, cs)| {
                let low = least.get(s).copied().unwrap_or(0);
                let high = low + maybe.get(s).copied().unwrap_or(0);
                cs.len() == want
                    && cs
                        .iter()
                        .all(|(_, items, d)| *d == cs[0].2 && (low..=high).contains(items))
            })
    });
    assert!(
        ok,
        "shard copies did not converge to the expected items {least:?} (plus up to {maybe:?} refused with an unknown outcome): {last:?}"
    );
}

/// Upserts one item (16-dimensional vector, no categories) through a
/// node's HTTP API: Ok once acknowledged, else the status and body.
pub fn upsert_item(http: &Http, node_http: &str, id: &str) -> Result<(), String> {
    testkit::http::upsert_item(&http.0, node_http, id, 16).map_err(|e| e.to_string())
}

/// Waits until the node at `internal` (HOST:PORT) reports a leader and
/// exactly `voters` as Raft voters (`testkit::observe::wait_voters`).
pub fn wait_voters(
    rt: &tokio::runtime::Runtime,
    internal: &str,
    voters: &[u64],
    timeout: Duration,
) -> bool {
    testkit::observe::wait_voters(rt, internal, voters, timeout).is_ok()
}

/// Panics unless the cluster seen from `internal` promotes nodes 1, 2 and 3
/// to voters within a minute (a node may serve while still a learner, so
/// fault tests wait for this before killing or cutting anything off).
pub fn expect_three_voters(rt: &tokio::runtime::Runtime, internal: &str) {
    if let Err(e) = testkit::observe::wait_voters(rt, internal, &[1, 2, 3], Duration::from_secs(60))
    {
        panic!("the cluster never promoted all three members to voters: {e}");
    }
}

/// The value of one series in a node's /metrics, e.g.
/// `funnel_shard_searches_served_total{via="batch"}` (0 when absent: a
/// labelled series appears only once it has a value). Panics unless
/// /metrics answers 200.
pub fn metric_value(http: &Http, node_http: &str, series: &str) -> f64 {
    testkit::http::metric_value(&http.0, node_http, series)
        .unwrap_or_else(|e| panic!("/metrics of {node_http}: {e}"))
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

/// An upsert the cluster did not acknowledge.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// When the refusal came back.
    pub at: Instant,
    pub item_id: String,
    /// Target node, status and body (or the client error).
    pub message: String,
}

/// Acknowledged upsert ids, and the refusals.
type UpsertOutcomes = (Vec<String>, Vec<Refusal>);

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
                    Ok((s, v)) => failed.push(Refusal {
                        at: Instant::now(),
                        message: format!("{target} {id}: {s} {v}"),
                        item_id: id,
                    }),
                    Err(e) => failed.push(Refusal {
                        at: Instant::now(),
                        message: format!("{target} {id}: {e}"),
                        item_id: id,
                    }),
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
    /// and some upsert was acknowledged. Answers the refused upserts.
    pub fn finish(self, phase: &str) -> Vec<Refusal> {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let (n, failures) = self.recommends.join().unwrap();
        let (ok, failed) = self.upserts.join().unwrap();
        println!(
            "{phase}: {n} recommends, {} upserts acknowledged, {} refused {:?}",
            ok.len(),
            failed.len(),
            failed
                .iter()
                .take(2)
                .map(|r| &r.message)
                .collect::<Vec<_>>()
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

/// `funnel admin --addr ADDR ARGS...`: its stdout; panics with its stderr
/// on failure.
pub fn admin(addr: &str, args: &[&str]) -> String {
    let out = std::process::Command::new(funnel_bin())
        .args(["admin", "--addr", addr])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("running funnel admin {args:?}: {e}"));
    assert!(
        out.status.success(),
        "funnel admin {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).to_string()
}

/// A cluster of `nodes` with users partitioned: writes their configs (the
/// bundle, `shards` shards, `partitions` user partitions of `copies` copies
/// each, then `cluster_extra` lines), starts every node, and waits (within
/// `limit`) until every partition has its Active copies and every node
/// serves with full coverage. Answers the members, their processes (in
/// member order) and the partition map.
#[allow(clippy::too_many_arguments)]
pub fn start_partitioned(
    dir: &Path,
    nodes: &[NodePorts],
    bundle: &Path,
    shards: u32,
    (partitions, copies): (u32, usize),
    cluster_extra: &str,
    rt: &tokio::runtime::Runtime,
    limit: Duration,
) -> (Vec<Member>, Vec<NodeProc>, funnel::cluster::ShardMap) {
    let extra = format!(
        "{}\nuser_partitions = {partitions}\nuser_replication = {copies}\n{cluster_extra}",
        members_list(nodes)
    );
    let members = write_members(dir, nodes, Some(bundle), shards, "", &extra);
    let procs: Vec<NodeProc> = members
        .iter()
        .map(|m| NodeProc::start_config(&m.config, &m.data_dir))
        .collect();
    let map = wait_partitions_active(rt, &members[0].internal, copies, limit);
    assert_eq!(map.shards, partitions);
    let http = Http::default();
    for m in &members {
        assert!(
            eventually(limit, || full_coverage(&http, &m.http)),
            "node {} never served with full coverage",
            m.id
        );
    }
    (members, procs, map)
}

/// Waits (at most `limit`) until the user partition map seen by the node
/// at `internal` has exactly `copies` Active copies of every partition,
/// and answers it; panics with the last map seen otherwise.
pub fn wait_partitions_active(
    rt: &tokio::runtime::Runtime,
    internal: &str,
    copies: usize,
    limit: Duration,
) -> funnel::cluster::ShardMap {
    let mut map = None;
    let placed = eventually(limit, || {
        map = rt
            .block_on(funnel::admin::fetch_view(internal))
            .ok()
            .flatten()
            .and_then(|(_, v)| v.partition_map);
        map.as_ref().is_some_and(|m| {
            m.replicas.iter().all(|rs| {
                rs.len() == copies
                    && rs
                        .iter()
                        .all(|r| r.state == funnel::cluster::ReplicaState::Active)
            })
        })
    });
    assert!(
        placed,
        "the user partition map never placed {copies} Active copies per partition: {map:?}"
    );
    map.expect("a map was seen")
}
