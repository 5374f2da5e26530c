//! Looking at a running cluster over its internal gRPC port: Raft status
//! and voters, the cluster view and its placement, shard copy digests and
//! whether they converged; and the polling loop the waits use.
//!
//! Owns: read-only calls to Control and ShardData. Must not touch: the
//! processes (`process`) or the public HTTP API (`http`).

use crate::KitError;
use funnel::cluster::{ClusterView, ReplicaState};
use funnel::proto::control::control_client::ControlClient;
use funnel::proto::control::{StatusRequest, StatusResponse};
use funnel::proto::data::shard_data_client::ShardDataClient;
use funnel::proto::data::ShardDigestRequest;
use funnel::tls::NodeTls;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio::runtime::Runtime;

/// A runtime for blocking callers' gRPC calls, with `workers` threads.
pub fn runtime(workers: usize) -> Result<Runtime, KitError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .enable_all()
        .build()
        .map_err(crate::error::io("starting a tokio runtime"))
}

/// Polls `f` every 50 ms until it is true (true) or `timeout` passes
/// (false).
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

/// Control.Status (not linearizable) of the node at `addr`
/// (http://HOST:PORT) within `timeout`.
pub async fn status_at(addr: String, timeout: Duration) -> Option<StatusResponse> {
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

/// How long one status probe of `wait_voters` may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

/// Waits until the node at `internal` (HOST:PORT) reports a leader and
/// exactly `voters` as Raft voters. A new cluster forms from its bootstrap
/// node alone and promotes the other members once they caught up, so a
/// test that kills or cuts off a node waits for this first.
pub fn wait_voters(
    rt: &Runtime,
    internal: &str,
    voters: &[u64],
    timeout: Duration,
) -> Result<(), KitError> {
    let mut last = None;
    let reached = eventually(timeout, || {
        let s = rt.block_on(status_at(format!("http://{internal}"), PROBE_TIMEOUT));
        let done = s
            .as_ref()
            .is_some_and(|s| s.leader_id.is_some() && s.voters == voters);
        last = s.map(|s| (s.leader_id, s.voters));
        done
    });
    if reached {
        return Ok(());
    }
    Err(KitError::Timeout(
        timeout,
        format!("{internal} never reported a leader and voters {voters:?} (last seen (leader, voters) {last:?})"),
    ))
}

/// The cluster view as the node at `internal` (HOST:PORT) has it, within
/// `timeout`; `None` when it does not answer.
pub fn view(rt: &Runtime, internal: &str, timeout: Duration) -> Option<ClusterView> {
    rt.block_on(async {
        tokio::time::timeout(timeout, funnel::admin::fetch_view(internal))
            .await
            .ok()?
            .ok()
            .flatten()
            .map(|(_, v)| v)
    })
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

/// Shard -> [(node, digest)].
pub type Digests = BTreeMap<u32, Vec<(u64, String)>>;

/// Digest of every shard copy that the nodes at `internal` addresses
/// (id, HOST:PORT) answer for, from ShardData.Digest: shard -> [(node,
/// digest)]. A node that is down or does not hold a shard is simply absent
/// from that shard's list.
pub fn shard_digests(nodes: &[(u64, String)], shards: u32) -> Result<Digests, KitError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(crate::error::io("starting a tokio runtime"))?;
    let mut out = Digests::new();
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
    Ok(out)
}

/// True when every one of `shards` shards has exactly `copies` copies and
/// they all have the same digest.
pub fn digests_converged(d: &Digests, shards: u32, copies: usize) -> bool {
    d.len() == shards as usize
        && d.values()
            .all(|v| v.len() == copies && v.iter().all(|(_, x)| *x == v[0].1))
}

/// Shard -> [(node, items, digest)] over the copies the map places.
pub type Copies = BTreeMap<u32, Vec<(u64, u64, String)>>;

/// How long connecting to a copy may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Items and digest of every copy `v`'s shard map places, asked of the
/// node holding it over mutual TLS with `tls` (plaintext without); a node
/// that does not answer (within `timeout` a call, when given) is left out.
pub fn copies_with(
    rt: &Runtime,
    v: &ClusterView,
    tls: Option<&NodeTls>,
    timeout: Option<Duration>,
) -> Copies {
    let mut out = Copies::new();
    rt.block_on(async {
        for (shard, node) in placed_copies(v) {
            let Some(info) = v.nodes.get(&node) else {
                continue;
            };
            let Ok(ep) = funnel::tls::internal_endpoint(&info.internal, tls, CONNECT_TIMEOUT)
            else {
                continue;
            };
            let connect = async {
                match timeout {
                    // the connect timeout bounds TCP only: a frozen node
                    // accepts and never answers
                    Some(_) => tokio::time::timeout(CONNECT_TIMEOUT, ep.connect())
                        .await
                        .ok()?
                        .ok(),
                    None => ep.connect().await.ok(),
                }
            };
            let Some(ch) = connect.await else {
                continue;
            };
            let mut req = tonic::Request::new(ShardDigestRequest { shard });
            if let Some(t) = timeout {
                req.set_timeout(t);
            }
            if let Ok(d) = ShardDataClient::new(ch).digest(req).await {
                let d = d.into_inner();
                out.entry(shard)
                    .or_default()
                    .push((node, d.items, d.digest));
            }
        }
    });
    out
}
