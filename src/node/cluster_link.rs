//! A node as a member of a cluster: its Raft handle, the channels to its
//! peers, and the control loop that turns the replicated state into local
//! action (register members, create the shard map, load this node's
//! shards, apply catalogue changes in log order).
//!
//! Owns: starting the Raft node with the data-plane service beside it
//! (over mTLS when `[cluster.tls]` is set, for the server and every peer
//! channel made here), starting the bootstrap node's formation task
//! (`node::formation` decides when to form), and reconciling the node with
//! the applied cluster state.
//! Must not touch: the Raft rules (`cluster::state`) or request handling
//! (the node's operations call into this only to read the shard map and to
//! propose writes).

use super::Node;
use crate::cluster::{
    initial_placement, ClusterError, ClusterState, Command, FaultInjector, NodeInfo, PeerChannel,
    PlacementError, RaftNode, RaftSettings, ReplicaState,
};
use crate::config::NodeConfig;
use crate::routing::HealthBook;
use crate::service::types::ServiceError;
use crate::telemetry::failure_log::StepFailures;
use crate::tls::{self, NodeTls};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;
use tracing::Instrument;

/// Why one control-loop step (reconcile, rollout) did not finish; the
/// loop logs it and tries again on the next applied index or tick.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("no [cluster] section")]
    NoClusterConfig,
    /// A Raft write or membership change failed (no leader, refused,
    /// unreachable).
    #[error(transparent)]
    Cluster(#[from] ClusterError),
    /// A local operation (fetching or loading a bundle, applying the
    /// catalogue) failed.
    #[error(transparent)]
    Service(#[from] ServiceError),
    /// The configured shard map cannot be placed on the members.
    #[error(transparent)]
    Placement(#[from] PlacementError),
}

/// Why no channel to a peer could be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A thread panicked while holding the channel table.
    #[error("peer channel table poisoned")]
    Poisoned,
    /// The peer's address (or this node's TLS identity) does not make an
    /// endpoint; the text says which.
    #[error("{0}")]
    Endpoint(String),
}

pub struct ClusterLink {
    pub raft: RaftNode,
    pub book: HealthBook,
    channels: Mutex<HashMap<u64, (String, Channel)>>,
    max_message_bytes: usize,
    /// Highest Raft log index whose catalogue changes this node applied.
    catalog_applied: AtomicU64,
    applied_tx: watch::Sender<u64>,
    /// The leader's view of which members answer (`node::liveness`).
    pub liveness: super::liveness::Liveness,
}

/// (shard, node, state) of every replica: when it changes, the node
/// rebuilds its shard clients.
pub type ReplicaSignature = Vec<(u32, u64, ReplicaState)>;

pub fn replica_signature(state: &ClusterState) -> ReplicaSignature {
    let Some(map) = &state.shard_map else {
        return Vec::new();
    };
    let mut sig = Vec::new();
    for (s, reps) in map.replicas.iter().enumerate() {
        for r in reps {
            sig.push((s as u32, r.node, r.state));
        }
    }
    sig
}

impl ClusterLink {
    pub fn id(&self) -> u64 {
        self.raft.id()
    }

    /// A channel to node `id` at `addr`, reused while the address holds.
    /// Every request on it consults this node's fault rules.
    pub fn channel(&self, id: u64, addr: &str) -> Result<PeerChannel, ChannelError> {
        let mut m = self.channels.lock().map_err(|_| ChannelError::Poisoned)?;
        let ch = match m.get(&id) {
            Some((a, ch)) if a == addr => ch.clone(),
            _ => {
                let ch = crate::routing::remote::peer_channel(addr, self.raft.tls())
                    .map_err(ChannelError::Endpoint)?;
                m.insert(id, (addr.to_string(), ch.clone()));
                ch
            }
        };
        Ok(PeerChannel::new(
            ch,
            self.raft.faults().clone(),
            self.id(),
            Some(id),
        ))
    }

    /// This node's TLS identity for internal calls (None: plain TCP).
    pub fn tls(&self) -> Option<&crate::tls::NodeTls> {
        self.raft.tls()
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    pub fn catalog_applied(&self) -> u64 {
        self.catalog_applied.load(Ordering::SeqCst)
    }

    pub(super) fn set_catalog_applied(&self, index: u64) {
        self.catalog_applied.fetch_max(index, Ordering::SeqCst);
        let _ = self.applied_tx.send(self.catalog_applied());
    }

    /// Waits until this node applied the catalogue up to `index`.
    pub async fn wait_catalog(&self, index: u64, timeout: Duration) -> Result<(), ServiceError> {
        let mut rx = self.applied_tx.subscribe();
        let ok = tokio::time::timeout(timeout, rx.wait_for(|&applied| applied >= index))
            .await
            .is_ok_and(|r| r.is_ok());
        match ok {
            true => Ok(()),
            false => Err(ServiceError::unavailable(format!(
                "the write is committed (log index {index}) but this node has not applied it within {} ms; it will",
                timeout.as_millis()
            ))),
        }
    }

    /// Sends events this node accepted to every other live member, in
    /// parallel, waiting at most `wait`. A member that misses them is
    /// logged and counted; the events stay durable in this node's log.
    /// `node_log_id` identifies this node's event log (`catchup::log_id`).
    pub async fn forward_events(
        &self,
        events: &[crate::eventlog::LogEvent],
        node_log_id: u64,
        wait: Duration,
    ) {
        use crate::cluster::NodeStatus;
        use crate::proto::data::shard_data_client::ShardDataClient;
        use crate::proto::data::ForwardEventsRequest;
        if events.is_empty() {
            return;
        }
        let peers: Vec<(u64, String)> = {
            let st = self.raft.state();
            let st = st.read();
            st.nodes
                .values()
                .filter(|n| n.id != self.id() && n.status != NodeStatus::Removed)
                .map(|n| (n.id, n.internal.clone()))
                .collect()
        };
        let body = ForwardEventsRequest {
            origin_node: self.id(),
            origin_log: node_log_id,
            events: events.iter().map(super::catchup::to_wire).collect(),
        };
        let sends = peers.into_iter().filter_map(|(id, addr)| {
            let ch = self.channel(id, &addr).ok()?;
            let mut client = ShardDataClient::new(ch)
                .max_decoding_message_size(self.max_message_bytes)
                .max_encoding_message_size(self.max_message_bytes);
            let mut req = tonic::Request::new(body.clone());
            req.set_timeout(wait);
            Some(async move { (id, client.forward_events(req).await) })
        });
        let results = match tokio::time::timeout(wait, futures::future::join_all(sends)).await {
            Ok(r) => r,
            Err(_) => {
                tracing::warn!("forwarding events to peers timed out");
                crate::telemetry::metrics::metrics()
                    .errors
                    .with_label_values(&["forward_events"])
                    .inc();
                return;
            }
        };
        for (id, r) in results {
            if let Err(s) = r {
                tracing::warn!(node = id, error = %s.message(), "a peer did not take forwarded events");
                crate::telemetry::metrics::metrics()
                    .errors
                    .with_label_values(&["forward_events"])
                    .inc();
            }
        }
    }

    pub fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.raft.id())
    }
}

/// Maps a control-plane error to the service error a client sees.
pub fn service_error(e: ClusterError) -> ServiceError {
    match e {
        ClusterError::Rejected(r) => ServiceError::failed_precondition(r),
        ClusterError::TooLarge { .. } => ServiceError::ResourceExhausted(e.to_string()),
        ClusterError::Unauthenticated(m) => ServiceError::Unauthenticated(m),
        other => ServiceError::unavailable_from("cluster", other),
    }
}

/// Starts Raft for `node` (with the data-plane service on the same port),
/// bootstraps when configured, attaches the link to the node and spawns
/// the control loop. Returns the link.
pub async fn start_cluster(
    node: Node,
    config: &NodeConfig,
    shutdown: watch::Receiver<bool>,
    internal_services: impl FnOnce(
        tonic::service::Routes,
        &FaultInjector,
        usize,
    ) -> tonic::service::Routes,
) -> anyhow::Result<Arc<ClusterLink>> {
    let cc = config
        .cluster
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("no [cluster] section"))?;
    let me = config.node.id;
    let mut settings = RaftSettings::new(me, cc.internal.clone(), config.node.data_dir.clone());
    settings.heartbeat_ms = cc.heartbeat_ms;
    settings.election_timeout_min_ms = cc.election_timeout_min_ms;
    settings.election_timeout_max_ms = cc.election_timeout_max_ms;
    settings.snapshot_every = cc.snapshot_every;
    settings.max_message_bytes = config.api.max_message_bytes.max(64 << 20);
    // Raft and admin calls answer within a few election rounds or not at all
    settings.request_timeout_ms = 5_000;
    settings.admin_token = config.api.admin_token.clone();
    // validated with the config; loaded again here to hold the identity
    settings.tls = cc
        .tls()
        .map(|files| NodeTls::load(files, tls::CONFIG_KEYS, None))
        .transpose()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    // one rule set per process, shared by Raft, forwarding and the data
    // plane; settable over gRPC only with cluster.fault_injection
    let faults = FaultInjector::new(me);
    settings.faults = faults.clone();
    if let Some(m) = config.this_member() {
        settings.advertise_addr = Some(m.internal.clone());
    }
    let max = settings.max_message_bytes;
    let raft = RaftNode::start_with_services(settings, shutdown.clone(), move |routes| {
        internal_services(routes, &faults, max)
    })
    .await
    .map_err(|e| anyhow::anyhow!("starting Raft on cluster.internal {}: {e}", cc.internal))?;
    let (applied_tx, _) = watch::channel(0);
    let link = Arc::new(ClusterLink {
        raft,
        book: HealthBook::default(),
        channels: Mutex::new(HashMap::new()),
        max_message_bytes: max,
        catalog_applied: AtomicU64::new(0),
        applied_tx,
        liveness: Default::default(),
    });
    node.attach_cluster(link.clone())?;
    if cc.bootstrap {
        // a group of this node alone, formed in the background: members
        // that are not up yet must not hold up this node's start
        let me_info = match config.this_member() {
            Some(m) => NodeInfo::new(me, &m.internal, &m.http, &m.grpc),
            None => link
                .raft
                .node_info(config.api.http.clone(), config.api.grpc.clone()),
        };
        let peers: Vec<(u64, String)> = cc
            .members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.internal.clone()))
            .collect();
        tokio::spawn(
            super::formation::run(link.clone(), me_info, peers, shutdown.clone()).in_current_span(),
        );
    }
    if !cc.join.is_empty() && !cc.bootstrap {
        let info = match config.this_member() {
            Some(m) => NodeInfo::new(me, &m.internal, &m.http, &m.grpc),
            None => link
                .raft
                .node_info(config.api.http.clone(), config.api.grpc.clone()),
        };
        tokio::spawn(
            super::moves::join_cluster(link.clone(), info, cc.join.clone(), shutdown.clone())
                .in_current_span(),
        );
    }
    tokio::spawn(super::liveness::watch(link.clone(), shutdown.clone()).in_current_span());
    // on the actix system: applying events talks to the user-state actors
    {
        let (n, l, s) = (node.clone(), link.clone(), shutdown.clone());
        actix::spawn(async move { super::catchup::run(n, l, s).await }.in_current_span());
    }
    let cfg = config.clone();
    let l = link.clone();
    // on the actix system: reconciling starts shard actors
    actix::spawn(async move { control_loop(node, l, cfg, shutdown).await }.in_current_span());
    Ok(link)
}

/// Reconciles this node with the applied cluster state: on every applied
/// index (and every half second, to retry what failed).
async fn control_loop(
    node: Node,
    link: Arc<ClusterLink>,
    config: NodeConfig,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut applied = link.raft.subscribe();
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let mut built: Option<(ReplicaSignature, String)> = None;
    let mut mover = super::moves::MoveDriver::default();
    // retried every tick: logged at warn only when they keep failing
    let mut reconcile_log = StepFailures::new("reconcile");
    let mut rollout_log = StepFailures::new("rollout");
    let mut moves_log = StepFailures::new("transfers and membership");
    loop {
        tokio::select! {
            _ = shutdown.wait_for(|s| *s) => return,
            r = applied.changed() => if r.is_err() { return },
            _ = tick.tick() => {}
        }
        match reconcile(&node, &link, &config, &mut built, &mut rollout_log).await {
            Ok(()) => reconcile_log.succeeded(),
            Err(e) => reconcile_log.failed(&e),
        };
        if let Some(cc) = config.cluster.as_ref() {
            match super::moves::drive(&link, cc, &mut mover).await {
                Ok(()) => moves_log.succeeded(),
                Err(e) => moves_log.failed(&e),
            };
        }
    }
}

async fn reconcile(
    node: &Node,
    link: &Arc<ClusterLink>,
    config: &NodeConfig,
    built: &mut Option<(ReplicaSignature, String)>,
    rollout_log: &mut StepFailures,
) -> Result<(), StepError> {
    let cc = config.cluster.as_ref().ok_or(StepError::NoClusterConfig)?;
    let (sig, has_map, missing) = {
        let st = link.raft.state();
        let st = st.read();
        let missing: Vec<NodeInfo> = cc
            .members
            .iter()
            .filter(|m| !st.nodes.contains_key(&m.id))
            .map(|m| NodeInfo::new(m.id, &m.internal, &m.http, &m.grpc))
            .collect();
        (replica_signature(&st), st.shard_map.is_some(), missing)
    };
    if link.is_leader() {
        for info in missing.iter() {
            link.raft.write(Command::RegisterNode(info.clone())).await?;
        }
        if !has_map && missing.is_empty() {
            let mut ids: Vec<u64> = cc.members.iter().map(|m| m.id).collect();
            ids.sort_unstable();
            let placement = initial_placement(cc.shards, cc.replication, &ids)?;
            link.raft
                .write(Command::InitShards {
                    shards: cc.shards,
                    replication: cc.replication,
                    placement,
                })
                .await?;
            tracing::info!(
                shards = cc.shards,
                replication = cc.replication,
                "shard map created"
            );
        }
    }
    if !has_map {
        return Ok(());
    }
    // a rollout that cannot progress right now (no leader, a peer down)
    // must not hold up the catalogue or the shard map
    match super::rollout::step(node, link, config).await {
        Ok(_) => rollout_log.succeeded(),
        Err(e) => rollout_log.failed(&e),
    };
    // load (or rebuild) this node's shards when the map or the model moved
    let dir = match node.current_bundle_dir() {
        Some(d) => Some(d),
        None => super::rollout::first_bundle_dir(node, link, config).await?,
    };
    if let Some(dir) = dir {
        let dir_s = dir.display().to_string();
        let stale = built.as_ref().is_none_or(|(s, d)| *s != sig || *d != dir_s);
        if stale {
            // compared with what is loaded, not with the last build: a
            // rollout switch (`rollout::step`) may have loaded it already
            let mine: Vec<u32> = sig
                .iter()
                .filter(|r| r.1 == link.id())
                .map(|r| r.0)
                .collect();
            let local_changed = node.local_shards() != mine;
            if node.model_version().is_none() {
                node.publish(dir.clone()).await?;
            } else if local_changed {
                // a move adds or drops a copy: load (or unload) just those,
                // from a directory that holds the added shards' files (a
                // node that fetched only its own shards gets the new ones
                // from a peer first)
                let from = super::rollout::dir_with_shards(node, link, config, &mine, &dir).await;
                if let Err(e) = node.rehost_shards(&mine, from).await {
                    tracing::warn!(error = %e, "loading only the changed shards failed; reloading the bundle");
                    node.publish(dir.clone()).await?;
                }
            } else {
                node.rebuild_shard_clients()?;
            }
            *built = Some((sig, dir_s));
        }
    }
    node.apply_cluster_catalog().await?;
    // shards loaded here are ready to be queried by the other nodes
    let loaded = node.local_shards();
    let ready: Vec<u32> = built
        .as_ref()
        .map(|(sig, _)| {
            sig.iter()
                .filter(|r| r.1 == link.id() && r.2 == ReplicaState::Loading)
                .map(|r| r.0)
                .filter(|s| loaded.contains(s))
                .collect()
        })
        .unwrap_or_default();
    for shard in ready {
        link.raft
            .write(Command::SetReplicaState {
                shard,
                node: link.id(),
                state: ReplicaState::Active,
            })
            .await?;
        tracing::info!(shard, "shard replica loaded and active");
    }
    Ok(())
}
