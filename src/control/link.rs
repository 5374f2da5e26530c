//! A node as a member of a cluster: its Raft handle, the channels to its
//! peers (reused while a peer's address holds, each call passing through
//! the fault rules), the replica health book the routing layer reads, and
//! the catalogue-applied watermark writers wait on.
//!
//! Owns: starting the Raft node with the internal services beside it (over
//! mTLS when `[cluster.tls]` is set, for the server and every peer channel
//! made here), the peer channel table, mapping a control-plane error to the
//! service error a client sees.
//! Must not touch: the Raft rules (`cluster`), what the node does with the
//! replicated state (`control::reconcile`), request handling.

use super::ChannelError;
use crate::cluster::{ClusterError, FaultInjector, PeerChannel, RaftNode, RaftSettings};
use crate::config::NodeConfig;
use crate::routing::HealthBook;
use crate::service::types::ServiceError;
use crate::tls::{self, NodeTls, TlsError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;
use tonic::transport::Channel;

/// Why the node could not join its cluster at start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("no [cluster] section")]
    NoClusterConfig,
    #[error("[cluster.tls]: {0}")]
    Tls(#[from] TlsError),
    #[error("starting Raft on cluster.internal {addr}: {source}")]
    Raft {
        addr: String,
        #[source]
        source: ClusterError,
    },
}

pub struct ClusterLink {
    pub raft: RaftNode,
    pub book: HealthBook,
    channels: Mutex<HashMap<u64, (String, Channel)>>,
    max_message_bytes: usize,
    /// Highest Raft log index whose catalogue changes this node applied.
    catalog_applied: AtomicU64,
    applied_tx: watch::Sender<u64>,
    /// The leader's view of which members answer (`control::liveness`).
    pub liveness: super::liveness::Liveness,
}

impl ClusterLink {
    /// Starts Raft (with the internal services the caller adds on the same
    /// port). The caller attaches the link to its node and starts the
    /// drivers (`control::spawn_drivers`).
    pub async fn start(
        config: &NodeConfig,
        shutdown: watch::Receiver<bool>,
        internal_services: impl FnOnce(
            tonic::service::Routes,
            &FaultInjector,
            usize,
        ) -> tonic::service::Routes,
    ) -> Result<Arc<ClusterLink>, StartError> {
        let cc = config.cluster.as_ref().ok_or(StartError::NoClusterConfig)?;
        let me = config.node.id;
        let mut settings = RaftSettings::new(me, cc.internal.clone(), config.node.data_dir.clone());
        settings.heartbeat_ms = cc.heartbeat_ms;
        settings.election_timeout_min_ms = cc.election_timeout_min_ms;
        settings.election_timeout_max_ms = cc.election_timeout_max_ms;
        settings.snapshot_every = cc.snapshot_every;
        settings.max_message_bytes = config.api.max_message_bytes.max(64 << 20);
        // Raft and admin calls answer within a few election rounds or not at all
        settings.request_timeout_ms = 5_000;
        settings.write_timeout_ms = cc.write_timeout().as_millis() as u64;
        settings.admin_token = config.api.admin_token.clone();
        // validated with the config; loaded again here to hold the identity
        settings.tls = cc
            .tls()
            .map(|files| NodeTls::load(files, tls::CONFIG_KEYS, None))
            .transpose()?;
        // one rule set per process, shared by Raft, forwarding and the data
        // plane; settable over gRPC only with cluster.fault_injection
        let faults = FaultInjector::new(me);
        settings.faults = faults.clone();
        if let Some(m) = config.this_member() {
            settings.advertise_addr = Some(m.internal.clone());
        }
        let max = settings.max_message_bytes;
        let raft = RaftNode::start_with_services(settings, shutdown, move |routes| {
            internal_services(routes, &faults, max)
        })
        .await
        .map_err(|source| StartError::Raft {
            addr: cc.internal.clone(),
            source,
        })?;
        let (applied_tx, _) = watch::channel(0);
        Ok(Arc::new(ClusterLink {
            raft,
            book: HealthBook::default(),
            channels: Mutex::new(HashMap::new()),
            max_message_bytes: max,
            catalog_applied: AtomicU64::new(0),
            applied_tx,
            liveness: Default::default(),
        }))
    }

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
                let ch = crate::routing::remote::peer_channel(addr, self.raft.tls())?;
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
    pub fn tls(&self) -> Option<&NodeTls> {
        self.raft.tls()
    }

    pub fn max_message_bytes(&self) -> usize {
        self.max_message_bytes
    }

    pub fn catalog_applied(&self) -> u64 {
        self.catalog_applied.load(Ordering::SeqCst)
    }

    /// Called by the catalogue applier only, after it applied `index`.
    pub fn set_catalog_applied(&self, index: u64) {
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

    /// Every other member that has not been removed: (id, internal
    /// address), from the applied state.
    pub fn peers(&self) -> Vec<(u64, String)> {
        let st = self.raft.state();
        let st = st.read();
        st.nodes
            .values()
            .filter(|n| n.id != self.id() && n.status != crate::cluster::NodeStatus::Removed)
            .map(|n| (n.id, n.internal.clone()))
            .collect()
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
