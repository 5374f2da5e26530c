//! `funnel admin`: operator commands against a running node. On a single
//! node they go over the HTTP API (`/v1/admin/...`, `/readyz`); given a
//! cluster node's internal address they use the internal gRPC API:
//! `Control.View` for status, `Admin.Publish` for a cluster-wide rollout,
//! and `cluster_ops` to change the cluster (add/remove nodes, transfers);
//! `faults` sets a node's transport fault rules (tests only).
//!
//! The internal port of a cluster running mTLS (`[cluster.tls]`) takes
//! only clients with a certificate signed by the cluster's CA: the
//! `--tls-*` flags give one (`NodeTls`, passed as `tls` here), and a
//! plaintext call that reaches such a port fails with a message saying so.

pub mod cluster_ops;
pub mod faults;

use crate::cluster::{MapKind, ReplicaState};
use crate::http_client::{build_client, send_json};
use crate::tls::{error_chain, internal_endpoint, speaks_tls, NodeTls};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

pub enum AdminOp {
    Publish(PathBuf),
    Status { json: bool },
}

/// Base URL from "HOST:PORT" or a URL.
pub fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

pub fn run_http(addr: &str, token: &str, op: AdminOp) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = build_client(1, Duration::from_secs(5));
        let base = base_url(addr);
        let (uri, body, timeout) = match &op {
            AdminOp::Publish(dir) => {
                // the node resolves the path on its own filesystem
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                let body = serde_json::json!({ "bundle": abs.display().to_string() }).to_string();
                (
                    format!("{base}/v1/admin/publish"),
                    Some(Bytes::from(body)),
                    Duration::from_secs(600),
                )
            }
            AdminOp::Status { .. } => (format!("{base}/readyz"), None, Duration::from_secs(5)),
        };
        let uri = uri
            .parse()
            .with_context(|| format!("--addr {addr} does not form a valid URL"))?;
        let (status, bytes) = send_json(&client, uri, body, Some(token), timeout)
            .await
            .map_err(|k| anyhow!("request to {base} failed: {}", k.label()))?;
        let text = String::from_utf8_lossy(&bytes).to_string();
        match op {
            AdminOp::Status { json: true } => Ok(format!("{text}\n")),
            AdminOp::Status { json: false } => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                Ok(format!(
                    "node {} {}: model {} ({} of {} shards local)\n",
                    v["node_id"],
                    v["status"].as_str().unwrap_or("?"),
                    v["model_version"].as_str().unwrap_or("-"),
                    v["shards_local"],
                    v["shards_total"]
                ))
            }
            AdminOp::Publish(_) if status.is_success() => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                Ok(format!(
                    "now serving {}\n",
                    v["model_version"].as_str().unwrap_or("?")
                ))
            }
            AdminOp::Publish(_) => bail!("publish failed (HTTP {}): {text}", status.as_u16()),
        }
    })
}

/// How `funnel admin publish` rolls a bundle out to a cluster.
#[derive(Debug, Clone, Default)]
pub struct PublishOptions {
    /// Activate without waiting for every replica holder; replaces a
    /// version still being rolled out.
    pub force: bool,
    /// How long to wait, in all: for a cluster that cannot take the publish
    /// yet (still forming: no shard map or no leader) and then for the
    /// activation. Zero: neither.
    pub wait: Duration,
    /// Publish only when the cluster has no active model yet; otherwise
    /// say what it serves and succeed. For a job that gives a new cluster
    /// its first model and may run again later (`docker compose up` on an
    /// existing cluster) without rolling back what an operator published
    /// since.
    pub if_none_active: bool,
}

/// The model version a single node serves (its `/readyz`), if any.
pub fn served_version(addr: &str, token: &str) -> Result<Option<String>> {
    let text = run_http(addr, token, AdminOp::Status { json: true })?;
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .with_context(|| format!("{addr}/readyz did not answer JSON: {}", text.trim()))?;
    Ok(v["model_version"]
        .as_str()
        .filter(|m| !m.is_empty() && v["status"] == "serving")
        .map(String::from))
}

/// Publishes over the internal gRPC API (`Admin.Publish`) and, unless
/// `opts.wait` is zero, waits until the cluster activated the version.
/// `None` when `addr` does not speak the cluster protocol (then use HTTP).
pub fn cluster_publish(
    addr: &str,
    token: &str,
    tls: Option<&NodeTls>,
    bundle: &std::path::Path,
    opts: &PublishOptions,
) -> Result<Option<String>> {
    use crate::proto::ops::admin_client::AdminClient;
    use crate::proto::ops::PublishRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let until = std::time::Instant::now() + opts.wait;
        // only a cluster node answers the view; anything else is HTTP
        let view = match cluster_view(addr, tls).await {
            Ok(view) => view,
            Err(e) => {
                return match tls_mismatch(addr, tls, &format!("{e:#}")).await {
                    Some(explained) => Err(explained),
                    None => Ok(None),
                }
            }
        };
        if let (true, Some(a)) = (opts.if_none_active, &view.models.active) {
            return Ok(Some(format!(
                "the cluster already serves {} (published from {} on node {}); not publishing {} (--if-none-active)\n",
                a.version,
                a.bundle_path,
                a.source_node,
                bundle.display()
            )));
        }
        // checking a large bundle on the node takes a while
        let ch = internal_endpoint(addr, tls, Duration::from_millis(700))?
            .timeout(Duration::from_secs(600))
            .connect()
            .await
            .map_err(|e| anyhow!("connecting to {addr}: {}", error_chain(&e)))?;
        // the node resolves the path on its own filesystem
        let abs = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        let mut last = String::new();
        let r = loop {
            let mut req = tonic::Request::new(PublishRequest {
                bundle: abs.display().to_string(),
                force: opts.force,
            });
            crate::auth::attach(&mut req, token).map_err(|e| anyhow!("--token: {e}"))?;
            match AdminClient::new(ch.clone()).publish(req).await {
                Ok(r) => break r.into_inner(),
                // the cluster cannot take it yet (forming, electing a
                // leader): worth waiting for; anything else will not change
                Err(s)
                    if s.code() == tonic::Code::Unavailable
                        && std::time::Instant::now() < until =>
                {
                    if s.message() != last {
                        eprintln!("{addr} cannot take the publish yet, retrying: {}", s.message());
                        last = s.message().to_string();
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(s) => bail!(
                    "publish refused by {addr} ({:?}): {}",
                    s.code(),
                    s.message()
                ),
            }
        };
        if r.already_active {
            return Ok(Some(format!(
                "{} is already active on the cluster (published from node {}); nothing to do\n",
                r.model_version, r.source_node
            )));
        }
        let mut out = format!(
            "staged {} (source node {}, previous {})\n",
            r.model_version,
            r.source_node,
            if r.previous_version.is_empty() {
                "none"
            } else {
                &r.previous_version
            }
        );
        if opts.wait.is_zero() {
            out.push_str("not waiting; follow the rollout with funnel admin status\n");
            return Ok(Some(out));
        }
        let mut last = String::new();
        loop {
            if let Ok(view) = cluster_view(addr, tls).await {
                if view
                    .models
                    .active
                    .as_ref()
                    .is_some_and(|a| a.version == r.model_version)
                {
                    out.push_str(&format!("active on the cluster: {}\n", r.model_version));
                    return Ok(Some(out));
                }
                let line = rollout_line(&view);
                if line != last {
                    eprintln!("{line}");
                    last = line;
                }
            }
            if std::time::Instant::now() >= until {
                bail!(
                    "{}version {} is staged but not active after {} s: {last}",
                    out,
                    r.model_version,
                    opts.wait.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// The replicated view as `addr` sees it.
async fn cluster_view(addr: &str, tls: Option<&NodeTls>) -> Result<crate::cluster::ClusterView> {
    use crate::proto::control::StatusRequest;
    let mut c = control_client(addr, tls).await?;
    let r = c
        .view(StatusRequest {
            linearizable: false,
        })
        .await
        .map_err(|s| anyhow!("{addr}: {}", status_text(&s)))?
        .into_inner();
    decode_view(addr, &r)
}

/// A status's message with the transport error under it (a refused TLS
/// handshake says why only there).
pub fn status_text(s: &tonic::Status) -> String {
    match std::error::Error::source(s) {
        Some(cause) => format!("{}: {}", s.message(), error_chain(cause)),
        None => s.message().to_string(),
    }
}

/// What to tell an operator whose plaintext call reached a TLS-only port.
pub fn needs_tls_message(addr: &str) -> String {
    format!(
        "{addr} serves its internal port over mutual TLS ([cluster.tls]) and refuses plaintext \
         calls; pass --tls-ca, --tls-cert and --tls-key (or FUNNEL_ADMIN_TLS_CA, \
         FUNNEL_ADMIN_TLS_CERT, FUNNEL_ADMIN_TLS_KEY) with a certificate signed by the \
         cluster's CA"
    )
}

/// After a call to `addr` failed with `failure`: the error to report when
/// TLS explains it — with `tls` given, the TLS call itself failed (no
/// falling back to plaintext HTTP); without, the port turns out to want
/// TLS. `None`: TLS has nothing to do with it.
async fn tls_mismatch(addr: &str, tls: Option<&NodeTls>, failure: &str) -> Option<anyhow::Error> {
    if tls.is_some() {
        return Some(anyhow!(
            "{addr} over TLS: {failure}; check that --tls-ca is the CA that signed the \
             cluster's certificates, that --tls-cert is signed by it, and that the address \
             is a node's internal address (cluster.internal) whose host is in its certificate"
        ));
    }
    speaks_tls(addr, Duration::from_secs(1))
        .await
        .then(|| anyhow!(needs_tls_message(addr)))
}

fn decode_view(
    addr: &str,
    r: &crate::proto::control::ViewResponse,
) -> Result<crate::cluster::ClusterView> {
    if r.format != crate::proto::control::PayloadFormat::Postcard as i32 {
        bail!("{addr} sent the view in an unknown format {}", r.format);
    }
    postcard::from_bytes(&r.view)
        .map_err(|e| anyhow!("{addr} sent a view that does not decode: {e}"))
}

/// One line on the rollout: active, staged, and which nodes loaded what.
pub fn rollout_line(v: &crate::cluster::ClusterView) -> String {
    let model = |m: &Option<crate::cluster::ModelRef>| {
        m.as_ref().map_or("-".to_string(), |m| m.version.clone())
    };
    let loaded: Vec<String> = v
        .models
        .loaded
        .iter()
        .map(|(n, ver)| format!("{n}:{ver}"))
        .collect();
    let mut line = format!(
        "models: active {}, staged {}; loaded on nodes [{}]",
        model(&v.models.active),
        model(&v.models.staged),
        loaded.join(" ")
    );
    if let Some(staged) = &v.models.staged {
        let waiting: Vec<String> = v
            .shard_map
            .as_ref()
            .map(|m| m.nodes_with_replicas())
            .unwrap_or_default()
            .into_iter()
            .filter(|n| v.models.loaded.get(n) != Some(&staged.version))
            .map(|n| n.to_string())
            .collect();
        line.push_str(&format!(
            "; waiting for nodes [{}] (source node {})",
            waiting.join(" "),
            staged.source_node
        ));
    }
    line
}

/// What `funnel admin status` shows of a cluster: the answering node's
/// status and view, and each member's own report (or why it gave none).
#[derive(Debug, Clone, serde::Serialize)]
pub struct ClusterReport {
    pub asked: String,
    pub status: crate::cluster::ClusterStatus,
    pub view: crate::cluster::ClusterView,
    pub members: Vec<MemberReport>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct MemberReport {
    pub id: u64,
    pub role: Option<String>,
    pub term: Option<u64>,
    pub apply_lag: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// The member refuses votes (its Raft storage started empty and no
    /// leader has brought it up to date yet).
    pub vote_fenced: Option<bool>,
    pub error: Option<String>,
}

async fn control_client(
    addr: &str,
    tls: Option<&NodeTls>,
) -> Result<crate::proto::control::control_client::ControlClient<tonic::transport::Channel>> {
    let ep =
        internal_endpoint(addr, tls, Duration::from_millis(700))?.timeout(Duration::from_secs(3));
    let ch = ep
        .connect()
        .await
        .map_err(|e| anyhow!("connecting to {addr}: {}", error_chain(&e)))?;
    Ok(crate::proto::control::control_client::ControlClient::new(
        ch,
    ))
}

/// The status and cluster view of the node at `addr` (its internal
/// address), over plaintext. `None` when `addr` does not speak the cluster
/// protocol (e.g. a single node's HTTP address).
pub async fn fetch_view(
    addr: &str,
) -> Result<Option<(crate::cluster::ClusterStatus, crate::cluster::ClusterView)>> {
    fetch_view_over(addr, None).await
}

/// `fetch_view` over mTLS with `tls`. A call that TLS explains (the port
/// wants TLS, or the TLS call was refused) is an error saying so, never
/// `None`.
pub async fn fetch_view_over(
    addr: &str,
    tls: Option<&NodeTls>,
) -> Result<Option<(crate::cluster::ClusterStatus, crate::cluster::ClusterView)>> {
    use crate::proto::control::StatusRequest;
    let mut c = match control_client(addr, tls).await {
        Ok(c) => c,
        Err(e) => {
            return match tls_mismatch(addr, tls, &format!("{e:#}")).await {
                Some(explained) => Err(explained),
                None => Ok(None),
            }
        }
    };
    let r = match c
        .view(StatusRequest {
            linearizable: false,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) => {
            if let Some(explained) = tls_mismatch(addr, tls, &status_text(&s)).await {
                return Err(explained);
            }
            match s.code() {
                tonic::Code::Unimplemented => return Ok(None),
                // an HTTP/1 server answering a gRPC call
                tonic::Code::Unknown | tonic::Code::Internal => return Ok(None),
                _ => bail!("{addr}: {}", status_text(&s)),
            }
        }
    };
    let view = decode_view(addr, &r)?;
    let status: crate::cluster::ClusterStatus = r
        .status
        .ok_or_else(|| anyhow!("{addr} sent a view without status"))?
        .try_into()
        .map_err(|e| anyhow!("{addr}: {e}"))?;
    Ok(Some((status, view)))
}

/// Asks `addr` (a node's internal cluster address) for the cluster view,
/// then every member for its own status (over mTLS with `tls`). `None`
/// when `addr` does not speak the cluster protocol (e.g. a single node's
/// HTTP address).
pub fn cluster_report(addr: &str, tls: Option<&NodeTls>) -> Result<Option<ClusterReport>> {
    use crate::proto::control::StatusRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let Some((status, view)) = fetch_view_over(addr, tls).await? else {
            return Ok(None);
        };
        let mut members = Vec::new();
        for (id, info) in &view.nodes {
            let one = async {
                let mut c = control_client(&info.internal, tls).await?;
                let s = c
                    .status(StatusRequest {
                        linearizable: false,
                    })
                    .await
                    .map_err(|s| anyhow!("{}", status_text(&s)))?;
                anyhow::Ok(s.into_inner())
            };
            members.push(match one.await {
                Ok(s) => MemberReport {
                    id: *id,
                    role: Some(s.role),
                    term: Some(s.term),
                    apply_lag: Some(s.apply_lag),
                    last_applied_index: s.last_applied_index,
                    vote_fenced: Some(s.vote_fenced),
                    error: None,
                },
                Err(e) => MemberReport {
                    id: *id,
                    role: None,
                    term: None,
                    apply_lag: None,
                    last_applied_index: None,
                    vote_fenced: None,
                    error: Some(format!("unreachable: {e:#}")),
                },
            });
        }
        Ok(Some(ClusterReport {
            asked: addr.to_string(),
            status,
            view,
            members,
        }))
    })
}

/// The status line that flags an uneven placement (None: balanced).
/// `auto` is the `cluster.auto_rebalance` setting, when one is set.
fn skew_line(
    map: &crate::cluster::ShardMap,
    nodes: &std::collections::BTreeMap<u64, crate::cluster::NodeInfo>,
    auto: Option<&str>,
) -> Option<String> {
    let sk = crate::cluster::skew(map, nodes).filter(|s| !s.balanced())?;
    let stranded = match sk.stranded {
        0 => String::new(),
        n => format!(", {n} sit on nodes that are not active"),
    };
    Some(format!(
        "placement SKEWED: active nodes hold {} to {} replicas{stranded}; \
         `funnel admin rebalance` evens it out (auto_rebalance: {})",
        sk.fewest,
        sk.most,
        auto.unwrap_or("the leader's cluster.auto_rebalance")
    ))
}

/// The operator's table of a cluster.
pub fn render_cluster(r: &ClusterReport) -> String {
    use std::fmt::Write;
    let v = &r.view;
    let mut out = String::new();
    let leader = r
        .status
        .leader
        .map_or("none".to_string(), |l| format!("node {l}"));
    let _ = writeln!(
        out,
        "cluster (asked {}): leader {leader}, term {}, applied index {}",
        r.asked,
        r.status.term,
        r.status
            .last_applied_index
            .map_or("-".into(), |i| i.to_string())
    );
    let _ = writeln!(out, "{}", rollout_line(v));
    let _ = writeln!(
        out,
        "catalogue overlay {} items, {} deleted",
        v.summary.catalog_items, v.summary.catalog_deleted
    );
    let _ = writeln!(
        out,
        "\n{:<5} {:<10} {:<6} {:<9} {:<22} {:<22} {:<22} {:<8} {:<8} partitions",
        "node", "role", "term", "applylag", "internal", "http", "grpc", "status", "replicas"
    );
    for (id, info) in &v.nodes {
        let m = r.members.iter().find(|m| m.id == *id);
        let role = m
            .and_then(|m| m.role.clone())
            .unwrap_or_else(|| "UNREACHABLE".into());
        let term = m.and_then(|m| m.term).map_or("-".into(), |t| t.to_string());
        let lag = m
            .and_then(|m| m.apply_lag)
            .map_or("-".into(), |t| t.to_string());
        let reps = v.shard_map.as_ref().map_or(0, |sm| sm.shards_on(*id).len());
        let parts = v
            .partition_map
            .as_ref()
            .map_or(0, |pm| pm.shards_on(*id).len());
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:<6} {:<9} {:<22} {:<22} {:<22} {:<8} {reps:<8} {parts}",
            id, role, term, lag, info.internal, info.http, info.grpc, info.status
        );
    }
    for m in r.members.iter().filter(|m| m.vote_fenced == Some(true)) {
        let _ = writeln!(
            out,
            "node {} does not vote: its Raft storage started empty and no leader has brought it up to date yet (if it lost its data directory, see {})",
            m.id,
            crate::cluster::vote_fence::PROCEDURE
        );
    }
    match &v.shard_map {
        None => {
            let _ = writeln!(out, "\nno shard map yet");
        }
        Some(sm) => {
            let _ = writeln!(out, "\nshards: {} x {} replicas", sm.shards, sm.replication);
            let auto = v
                .settings
                .get(crate::cluster::moves::SETTING_AUTO_REBALANCE)
                .map(String::as_str);
            if let Some(line) = skew_line(sm, &v.nodes, auto) {
                let _ = writeln!(out, "{line}");
            }
            for (s, reps) in sm.replicas.iter().enumerate() {
                let list: Vec<String> = reps
                    .iter()
                    .map(|r| format!("{}:{}", r.node, r.state))
                    .collect();
                let _ = writeln!(out, "  shard {s:<4} {}", list.join("  "));
            }
        }
    }
    partitions_section(&mut out, v);
    if v.transfers.is_empty() && v.partition_transfers.is_empty() {
        let _ = writeln!(out, "\nno shard transfers queued");
    } else {
        let limit = v
            .settings
            .get(crate::cluster::moves::SETTING_MAX_CONCURRENT)
            .map_or(
                "the leader's cluster.max_concurrent_transfers".to_string(),
                |n| n.clone(),
            );
        let _ = writeln!(
            out,
            "\nshard transfers: {} queued, at most {limit} at once",
            v.transfers.len()
        );
        for (t, phase) in &v.transfers {
            let _ = writeln!(out, "  {:<40} {phase}", t.to_string());
        }
        for (t, phase) in &v.partition_transfers {
            let _ = writeln!(out, "  {:<40} {phase}", t.describe(MapKind::UserPartitions));
        }
    }
    out
}

/// The user partition map: counts per node, a skew warning, and only the
/// partitions with a copy that is not Active (64 lines of "Active" would
/// bury them).
fn partitions_section(out: &mut String, v: &crate::cluster::ClusterView) {
    use std::fmt::Write;
    let Some(pm) = &v.partition_map else {
        let _ = writeln!(out, "\nno user partition map yet");
        return;
    };
    let per_node: Vec<String> = pm
        .replica_counts()
        .iter()
        .map(|(n, c)| format!("node {n}: {c}"))
        .collect();
    let _ = writeln!(
        out,
        "\nuser partitions: {} x {} copies ({})",
        pm.shards,
        pm.replication,
        per_node.join(", ")
    );
    let auto = v
        .settings
        .get(crate::cluster::moves::SETTING_AUTO_REBALANCE)
        .map(String::as_str);
    if let Some(line) = skew_line(pm, &v.nodes, auto) {
        let _ = writeln!(out, "{line}");
    }
    for (p, reps) in pm.replicas.iter().enumerate() {
        if reps.iter().all(|r| r.state == ReplicaState::Active) {
            continue;
        }
        let list: Vec<String> = reps
            .iter()
            .map(|r| format!("{}:{}", r.node, r.state))
            .collect();
        let _ = writeln!(out, "  user partition {p:<4} {}", list.join("  "));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{initial_placement, NodeInfo, ReplicaState, ShardMap};
    use std::collections::BTreeMap;

    fn map(placement: Vec<Vec<u64>>) -> ShardMap {
        ShardMap::from_placement(placement, 2, ReplicaState::Active)
    }

    #[test]
    fn status_flags_a_skewed_placement_and_only_that() {
        let nodes: BTreeMap<u64, NodeInfo> = (1..=3)
            .map(|id| (id, NodeInfo::new(id, format!("h{id}:1"), "", "")))
            .collect();
        let even = map(initial_placement(12, 2, &[1, 2, 3]).unwrap());
        assert_eq!(skew_line(&even, &nodes, None), None);
        // node 1 came back from a long cut: its copies went to 2 and 3
        let uneven = map((0..12).map(|_| vec![2, 3]).collect());
        let line = skew_line(&uneven, &nodes, Some("false")).expect("flagged");
        assert_eq!(
            line,
            "placement SKEWED: active nodes hold 0 to 12 replicas; \
             `funnel admin rebalance` evens it out (auto_rebalance: false)"
        );
    }
}
