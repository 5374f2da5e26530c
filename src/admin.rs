//! `funnel admin`: operator commands against a running node. On a single
//! node they go over the HTTP API (`/v1/admin/...`, `/readyz`); given a
//! cluster node's internal address they use the internal gRPC API:
//! `Control.View` for status, `Admin.Publish` for a cluster-wide rollout,
//! and `cluster_ops` to change the cluster (add/remove nodes, transfers);
//! `faults` sets a node's transport fault rules (tests only).

pub mod cluster_ops;
pub mod faults;

use crate::bench::client::{build_client, send_json};
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

/// Publishes over the internal gRPC API (`Admin.Publish`) and, unless
/// `wait` is zero, waits until the cluster activated the version. `None`
/// when `addr` does not speak the cluster protocol (then use HTTP).
pub fn cluster_publish(
    addr: &str,
    token: &str,
    bundle: &std::path::Path,
    force: bool,
    wait: Duration,
) -> Result<Option<String>> {
    use crate::cluster::proto::admin_client::AdminClient;
    use crate::cluster::proto::PublishRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        // only a cluster node answers the view; anything else is HTTP
        if cluster_view(addr).await.is_err() {
            return Ok(None);
        }
        // checking a large bundle on the node takes a while
        let ch = tonic::transport::Endpoint::from_shared(base_url(addr))?
            .connect_timeout(Duration::from_millis(700))
            .timeout(Duration::from_secs(600))
            .connect()
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        // the node resolves the path on its own filesystem
        let abs = std::fs::canonicalize(bundle).unwrap_or_else(|_| bundle.to_path_buf());
        let mut req = tonic::Request::new(PublishRequest {
            bundle: abs.display().to_string(),
            force,
        });
        crate::auth::attach(&mut req, token).map_err(|e| anyhow!("--token: {e}"))?;
        let r = AdminClient::new(ch)
            .publish(req)
            .await
            .map_err(|s| {
                anyhow!(
                    "publish refused by {addr} ({:?}): {}",
                    s.code(),
                    s.message()
                )
            })?
            .into_inner();
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
        if wait.is_zero() {
            out.push_str("not waiting; follow the rollout with funnel admin status\n");
            return Ok(Some(out));
        }
        let until = std::time::Instant::now() + wait;
        let mut last = String::new();
        loop {
            if let Ok(view) = cluster_view(addr).await {
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
                    wait.as_secs()
                );
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    })
}

/// The replicated view as `addr` sees it.
async fn cluster_view(addr: &str) -> Result<crate::cluster::ClusterView> {
    use crate::cluster::proto::StatusRequest;
    let mut c = control_client(addr).await?;
    let r = c
        .view(StatusRequest {
            linearizable: false,
        })
        .await
        .map_err(|s| anyhow!("{addr}: {}", s.message()))?
        .into_inner();
    decode_view(addr, &r)
}

fn decode_view(
    addr: &str,
    r: &crate::cluster::proto::ViewResponse,
) -> Result<crate::cluster::ClusterView> {
    if r.format != crate::cluster::proto::PayloadFormat::Postcard as i32 {
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
) -> Result<crate::cluster::proto::control_client::ControlClient<tonic::transport::Channel>> {
    let ep = tonic::transport::Endpoint::from_shared(base_url(addr))?
        .connect_timeout(Duration::from_millis(700))
        .timeout(Duration::from_secs(3));
    let ch = ep.connect().await?;
    Ok(crate::cluster::proto::control_client::ControlClient::new(
        ch,
    ))
}

/// The status and cluster view of the node at `addr` (its internal
/// address). `None` when `addr` does not speak the cluster protocol (e.g. a
/// single node's HTTP address).
pub async fn fetch_view(
    addr: &str,
) -> Result<Option<(crate::cluster::ClusterStatus, crate::cluster::ClusterView)>> {
    use crate::cluster::proto::StatusRequest;
    let Ok(mut c) = control_client(addr).await else {
        return Ok(None);
    };
    let r = match c
        .view(StatusRequest {
            linearizable: false,
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s) if s.code() == tonic::Code::Unimplemented => return Ok(None),
        Err(s) if s.code() == tonic::Code::Unknown || s.code() == tonic::Code::Internal => {
            // an HTTP/1 server answering a gRPC call
            return Ok(None);
        }
        Err(s) => bail!("{addr}: {}", s.message()),
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
/// then every member for its own status. `None` when `addr` does not
/// speak the cluster protocol (e.g. a single node's HTTP address).
pub fn cluster_report(addr: &str) -> Result<Option<ClusterReport>> {
    use crate::cluster::proto::StatusRequest;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let Some((status, view)) = fetch_view(addr).await? else {
            return Ok(None);
        };
        let mut members = Vec::new();
        for (id, info) in &view.nodes {
            let one = async {
                let mut c = control_client(&info.internal).await?;
                let s = c
                    .status(StatusRequest {
                        linearizable: false,
                    })
                    .await?;
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
                    error: Some(format!("unreachable: {e}")),
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
        "\n{:<5} {:<10} {:<6} {:<9} {:<22} {:<22} {:<22} {:<8} replicas",
        "node", "role", "term", "applylag", "internal", "http", "grpc", "status"
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
        let _ = writeln!(
            out,
            "{:<5} {:<10} {:<6} {:<9} {:<22} {:<22} {:<22} {:<8} {reps}",
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
            for (s, reps) in sm.replicas.iter().enumerate() {
                let list: Vec<String> = reps
                    .iter()
                    .map(|r| format!("{}:{}", r.node, r.state))
                    .collect();
                let _ = writeln!(out, "  shard {s:<4} {}", list.join("  "));
            }
        }
    }
    if v.transfers.is_empty() {
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
    }
    out
}
