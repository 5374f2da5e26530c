//! The control plane's drivers: the code that acts on the replicated
//! cluster state, beside the rules it acts by (`cluster`). `cluster` says
//! what is allowed and what comes next (commands, checks, placement and
//! move planners, voter rules); this module runs it: it starts Raft for a
//! node (`link`), forms a new cluster (`formation`), probes members
//! (`liveness`), carries transfers and membership forward (`moves`) and
//! reconciles the node with the applied state (`reconcile`).
//!
//! The node is reached only through `reconcile::LocalNode`, which `node`
//! implements, so the dependencies run one way: node -> control -> cluster.
//!
//! Owns: the background tasks of a cluster member and the peer channels.
//! Must not touch: the Raft state machine and its rules (`cluster`), the
//! event pipeline and its catch-up (`node`), request handling.

pub mod formation;
pub mod link;
pub mod liveness;
pub mod moves;
pub mod reconcile;

pub use link::{service_error, ClusterLink, StartError};
pub use reconcile::{LocalNode, StepError};

use crate::cluster::NodeInfo;
use crate::config::NodeConfig;
use std::sync::Arc;
use tokio::sync::watch;
use tracing::Instrument;

/// Why no channel to a peer could be made.
#[derive(Debug, thiserror::Error)]
pub enum ChannelError {
    /// A thread panicked while holding the channel table.
    #[error("peer channel table poisoned")]
    Poisoned,
    /// The peer's address (or this node's TLS identity) does not make an
    /// endpoint.
    #[error("peer {0}")]
    Endpoint(#[from] crate::tls::TlsError),
}

/// Starts a member's background tasks: formation on the bootstrap node,
/// joining through `cluster.join`, the liveness probes (every member while
/// leading, down peers always) and the reconciler. Every task stops when
/// `shutdown` turns true. Call it on the actix system (the reconciler
/// starts shard actors).
pub fn spawn_drivers<N: LocalNode>(
    node: N,
    link: Arc<ClusterLink>,
    config: &NodeConfig,
    shutdown: watch::Receiver<bool>,
) {
    let Some(cc) = config.cluster.as_ref() else {
        return;
    };
    let me = link.id();
    let me_info = || match config.this_member() {
        Some(m) => NodeInfo::new(me, &m.internal, &m.http, &m.grpc),
        None => link
            .raft
            .node_info(config.api.http.clone(), config.api.grpc.clone()),
    };
    if cc.bootstrap {
        // a group of this node alone, formed in the background: members
        // that are not up yet must not hold up this node's start
        let peers: Vec<(u64, String)> = cc
            .members
            .iter()
            .filter(|m| m.id != me)
            .map(|m| (m.id, m.internal.clone()))
            .collect();
        tokio::spawn(
            formation::run(link.clone(), me_info(), peers, shutdown.clone()).in_current_span(),
        );
    } else if !cc.join.is_empty() {
        tokio::spawn(
            moves::join_cluster(link.clone(), me_info(), cc.join.clone(), shutdown.clone())
                .in_current_span(),
        );
    }
    tokio::spawn(liveness::watch(link.clone(), shutdown.clone()).in_current_span());
    let cfg = config.clone();
    actix::spawn(reconcile::control_loop(node, link, cfg, shutdown).in_current_span());
}
