//! `RaftNode`: one member of the control plane — openraft, its durable
//! storage and the cluster gRPC server (Raft + Control services) — and the
//! operations the rest of funnel uses: bootstrap, membership changes,
//! writes (forwarded to the leader when needed), status and read access to
//! the applied state.
//!
//! Owns: the node's life cycle (start, serve, shut down), openraft's
//! configuration, write routing and status. Must not touch: the rules of the
//! state (`state/`), storage formats, or the data plane, which only
//! watches `subscribe()` and reads `state()`.
//!
//! Files: this one holds `RaftNode` and its life cycle; `settings` the
//! node's settings and openraft's configuration; `shared` the state the
//! services and the handle share, with the write path and status;
//! `propose` proposing from outside the Raft group.

mod propose;
mod settings;
mod shared;

pub use propose::propose_via;
pub use settings::RaftSettings;
pub use shared::ClusterStatus;
pub(crate) use shared::NodeCore;

use crate::telemetry::node_span::InNodeSpan;
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tracing::Instrument;

use openraft::error::{ClientWriteError, Fatal, InitializeError, RaftError};
use openraft::ChangeMembers;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::cluster::error::{from_status, ClusterError};
use crate::cluster::fault::FaultInjector;
use crate::cluster::log_store::{LogStore, LOG_FILE};
use crate::cluster::network::{Channels, NetworkFactory};
use crate::cluster::service::{ControlService, RaftService};
use crate::cluster::state::{Command, CommandResult, NodeInfo};
use crate::cluster::state_machine::{StateHandle, StateMachineStore};
use crate::cluster::types::{NodeId, Raft, RaftMetrics};
use crate::cluster::vote_fence::VoteFence;
use crate::proto::control as proto;
use crate::tls::NodeTls;

/// Shutdown machinery shared by `RaftNode::shutdown` and the external
/// shutdown watcher.
struct Lifecycle {
    raft: Raft,
    stop_server: watch::Sender<bool>,
    server: Mutex<Option<JoinHandle<()>>>,
    /// Kept to know when openraft has released the log file.
    log_store: Mutex<Option<LogStore>>,
    /// Holds a log handle too; released at shutdown.
    fence: VoteFence,
    done: tokio::sync::Mutex<bool>,
}

impl Lifecycle {
    async fn shutdown(&self) {
        let mut done = self.done.lock().await;
        if *done {
            return;
        }
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft core did not stop cleanly");
        }
        self.stop_server.send_replace(true);
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut handle) = server {
            // Graceful shutdown waits for open connections; peers reconnect
            // elsewhere, so do not wait for ever.
            if tokio::time::timeout(Duration::from_secs(5), &mut handle)
                .await
                .is_err()
            {
                handle.abort();
            }
        }
        // openraft's replication tasks hold clones of the log store; the
        // file stays locked until the last one is gone, and a restart in the
        // same process must be able to open it again.
        self.fence.release();
        let store = self
            .log_store
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(store) = store {
            let give_up = Instant::now() + Duration::from_secs(5);
            while store.handle_count() > 1 && Instant::now() < give_up {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        *done = true;
    }
}

/// A running Raft node. Dropping the handle does not stop the node; call
/// `shutdown` (or flip the shutdown watch given to `start`).
pub struct RaftNode {
    core: Arc<NodeCore>,
    lifecycle: Arc<Lifecycle>,
    advertised: String,
    local_addr: SocketAddr,
}

impl RaftNode {
    /// Opens the node's Raft files under `<data_dir>/raft/` (creating them
    /// on first start), starts openraft and serves the Raft and Control
    /// services on `internal_addr`. The node stops when `shutdown` becomes
    /// true or `RaftNode::shutdown` is called.
    pub async fn start(
        settings: RaftSettings,
        shutdown: watch::Receiver<bool>,
    ) -> Result<RaftNode, ClusterError> {
        Self::start_with_services(settings, shutdown, |routes| routes).await
    }

    /// Like `start`, serving more services (the data plane's) on the same
    /// internal port: `extra` adds them to the Raft and Control routes.
    pub async fn start_with_services(
        settings: RaftSettings,
        mut shutdown: watch::Receiver<bool>,
        extra: impl FnOnce(tonic::service::Routes) -> tonic::service::Routes,
    ) -> Result<RaftNode, ClusterError> {
        let mut config = settings.raft_config()?;
        let raft_dir = settings.data_dir.join("raft");
        std::fs::create_dir_all(&raft_dir).map_err(|e| {
            ClusterError::storage(&raft_dir, format!("cannot create directory: {e}"))
        })?;
        let state_machine = StateMachineStore::open(raft_dir.join("snapshots"))?;
        let log_store = LogStore::open(raft_dir.join(LOG_FILE))?
            .with_purge_guard(state_machine.snapshot_watermark());
        let state = state_machine.handle();
        let fence = VoteFence::open(
            settings.node_id,
            log_store.clone(),
            state_machine.snapshot_log_id().as_ref(),
        )?;
        // a fenced node must not campaign either: with a partial log it
        // could win against a lagging majority just as its vote could
        config.enable_elect = !fence.is_armed();
        let config = Arc::new(config);

        // TLS settings are checked before anything binds
        let mut server = tonic::transport::Server::builder();
        if let Some(tls) = &settings.tls {
            server = server.tls_config(tls.server_config()).map_err(|e| {
                ClusterError::Config(format!(
                    "cluster.tls: the internal server cannot use the TLS settings ({tls:?}): {}",
                    crate::tls::error_chain(&e)
                ))
            })?;
        }

        let listener = tokio::net::TcpListener::bind(&settings.internal_addr)
            .await
            .map_err(|e| ClusterError::Bind {
                addr: settings.internal_addr.clone(),
                reason: e.to_string(),
            })?;
        let local_addr = listener.local_addr().map_err(|e| ClusterError::Bind {
            addr: settings.internal_addr.clone(),
            reason: e.to_string(),
        })?;
        let advertised = settings
            .advertise_addr
            .clone()
            .unwrap_or_else(|| local_addr.to_string());

        let channels = Channels::new(
            settings.node_id,
            settings.faults.clone(),
            Duration::from_millis(settings.connect_timeout_ms),
            settings.max_message_bytes,
            settings.tls.clone(),
        );
        let network = NetworkFactory::new(settings.node_id, channels.clone());
        let raft = Raft::new(
            settings.node_id,
            config,
            network,
            log_store.clone(),
            state_machine,
        )
        .await
        .map_err(|e| match e {
            Fatal::StorageError(s) => ClusterError::storage(raft_dir.join(LOG_FILE), s),
            other => ClusterError::Raft(other.to_string()),
        })?;

        fence.attach(raft.clone());
        let core = Arc::new(NodeCore {
            id: settings.node_id,
            raft: raft.clone(),
            state,
            channels,
            settings: settings.clone(),
            fence: fence.clone(),
        });

        let max = settings.max_message_bytes;
        let raft_service =
            proto::raft_server::RaftServer::new(RaftService::new(raft.clone(), fence.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
        let control_service =
            proto::control_server::ControlServer::new(ControlService::new(core.clone()))
                .max_decoding_message_size(max)
                .max_encoding_message_size(max);
        let (stop_server, mut stop_rx) = watch::channel(false);
        // the caller's span (a node's root span): tonic runs each
        // connection on a task of its own, which would not inherit it
        let span = tracing::Span::current();
        let routes = extra(
            tonic::service::Routes::new(InNodeSpan::new(raft_service, span.clone()))
                .add_service(InNodeSpan::new(control_service, span)),
        );
        let server = server.add_routes(routes).serve_with_incoming_shutdown(
            nodelay_incoming(listener),
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        );
        let node_id = settings.node_id;
        let server = tokio::spawn(
            async move {
                if let Err(e) = server.await {
                    tracing::error!(node = node_id, error = %e, "cluster gRPC server failed");
                }
            }
            .in_current_span(),
        );

        let lifecycle = Arc::new(Lifecycle {
            raft,
            stop_server,
            server: Mutex::new(Some(server)),
            log_store: Mutex::new(Some(log_store)),
            fence,
            done: tokio::sync::Mutex::new(false),
        });
        let watcher = lifecycle.clone();
        tokio::spawn(
            async move {
                // A dropped sender means nobody can ask for shutdown any
                // more; the node then runs until `RaftNode::shutdown`.
                if shutdown.wait_for(|stop| *stop).await.is_ok() {
                    watcher.shutdown().await;
                }
            }
            .in_current_span(),
        );

        tracing::info!(node = node_id, addr = %advertised, "raft node started");
        Ok(RaftNode {
            core,
            lifecycle,
            advertised,
            local_addr,
        })
    }

    pub fn id(&self) -> NodeId {
        self.core.id
    }

    /// True once this node holds Raft state — a log entry (including the
    /// founding membership `initialize` writes), a snapshot, or a vote a
    /// leader made it record — or has stopped. Asked of openraft's core,
    /// not its metrics: those read empty until the core has loaded the
    /// storage.
    pub async fn has_raft_state(&self) -> bool {
        self.core.raft.is_initialized().await.unwrap_or(true)
    }

    /// True while this node refuses votes (`cluster::vote_fence`).
    pub fn vote_fenced(&self) -> bool {
        self.core.fence.is_armed()
    }

    /// This node's transport fault rules (inactive unless set; see
    /// `cluster.fault_injection`).
    pub fn faults(&self) -> &FaultInjector {
        &self.core.settings.faults
    }

    /// The admin token this node presents on proposals it makes for itself
    /// (e.g. asking to join) and requires on admin writes.
    pub fn admin_token(&self) -> &str {
        self.core.admin_token()
    }

    /// This node's mTLS identity (`[cluster.tls]`), for clients of the
    /// internal port it creates outside `Channels`; `None`: plaintext.
    pub fn tls(&self) -> Option<&NodeTls> {
        self.core.settings.tls.as_ref()
    }

    /// The address peers use for this node (host:port).
    pub fn internal_addr(&self) -> &str {
        &self.advertised
    }

    /// The socket the cluster server is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's `NodeInfo` with the given public addresses.
    pub fn node_info(&self, http: impl Into<String>, grpc: impl Into<String>) -> NodeInfo {
        NodeInfo::new(self.core.id, self.advertised.clone(), http, grpc)
    }

    /// Bootstraps a new cluster with `members` as voters. Does nothing (and
    /// succeeds) when this node already has Raft state, so every node may
    /// call it at start-up. When it does initialise, this node's vote fence
    /// is lifted: the caller declares that no cluster of these members
    /// exists yet, so there is nothing this node could have lost. Never
    /// call it for a node that lost its data directory (`control::formation`
    /// checks the other members first).
    pub async fn initialize(
        &self,
        members: BTreeMap<NodeId, NodeInfo>,
    ) -> Result<(), ClusterError> {
        match self.core.raft.initialize(members).await {
            Ok(()) => {
                self.core.fence.lift("it initialised a new cluster").await;
                Ok(())
            }
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
            Err(RaftError::APIError(InitializeError::NotInMembers(e))) => {
                Err(ClusterError::Membership(e.to_string()))
            }
            Err(RaftError::Fatal(f)) => Err(NodeCore::fatal(f)),
        }
    }

    /// Adds (or updates) a learner. With `blocking`, waits until it caught
    /// up with the leader's log. Must run on the leader.
    pub async fn add_learner(
        &self,
        id: NodeId,
        info: NodeInfo,
        blocking: bool,
    ) -> Result<(), ClusterError> {
        let call = self.core.raft.add_learner(id, info, blocking);
        // waiting for a learner to catch up may take a snapshot's transfer
        let budget = match blocking {
            true => self.core.settings.request_timeout(),
            false => self.core.settings.write_timeout(),
        };
        self.membership_call("adding a learner", budget, call).await
    }

    /// Makes `voters` the voter set (joint consensus). Voters that leave
    /// stay as learners. Must run on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let call = self.core.raft.change_membership(voters, true);
        let budget = self.core.settings.write_timeout();
        self.membership_call("changing membership", budget, call)
            .await
    }

    /// Removes learners from the membership entirely. A node that is still
    /// a voter is refused (`Membership` error): demote it with
    /// `change_membership` first. Must run on the leader.
    pub async fn remove_nodes(&self, ids: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let call = self
            .core
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false);
        let budget = self.core.settings.write_timeout();
        self.membership_call("removing nodes", budget, call).await
    }

    async fn membership_call<F>(
        &self,
        what: &str,
        budget: Duration,
        call: F,
    ) -> Result<(), ClusterError>
    where
        F: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<super::types::TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
            >,
        >,
    {
        match tokio::time::timeout(budget, call).await {
            Err(_) => Err(ClusterError::Timeout {
                what: what.to_string(),
                after_ms: budget.as_millis() as u64,
            }),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.core.forward_error(f))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Membership(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(NodeCore::fatal(f)),
        }
    }

    /// Applies `command` through Raft from any node: proposed here when this
    /// node leads, otherwise forwarded to the leader. Returns once the
    /// command is committed and applied on this node. A command the state
    /// refuses is `Err(ClusterError::Rejected)`; without a known leader the
    /// error is `NoLeader` (retry shortly).
    pub async fn write(&self, command: Command) -> Result<CommandResult, ClusterError> {
        match self.core.write(command).await?.0 {
            CommandResult::Rejected(reason) => Err(ClusterError::Rejected(reason)),
            other => Ok(other),
        }
    }

    /// Proposes `command` only while this node leads, never forwarding it:
    /// for the leader's own decisions (transfer steps, re-placements,
    /// membership), made from its view of the cluster. A leader cut off
    /// from its quorum decides from a stale view; forwarded to the new
    /// leader once it heals, such a decision would be applied there. Here
    /// it fails instead (`NotLeader`, or a timeout while the entry cannot
    /// commit) and the new leader decides again from its own view.
    ///
    /// Its budget is the request timeout, not the (client-facing) write
    /// timeout: the control loop has no client waiting, and a step given up
    /// while it still commits is one the next round finds done.
    pub async fn write_as_leader(&self, command: Command) -> Result<CommandResult, ClusterError> {
        let deadline = tokio::time::Instant::now() + self.core.settings.request_timeout();
        let (result, index) = self.core.propose_as_leader(command, deadline).await?;
        self.core.wait_applied(index, deadline).await?;
        match result {
            CommandResult::Rejected(reason) => Err(ClusterError::Rejected(reason)),
            other => Ok(other),
        }
    }

    /// Like `write`, also returning the log index of the command.
    pub async fn write_indexed(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), ClusterError> {
        match self.core.write(command).await? {
            (CommandResult::Rejected(reason), _) => Err(ClusterError::Rejected(reason)),
            ok => Ok(ok),
        }
    }

    /// This node's view of the cluster. With `linearizable`, only a leader
    /// that a quorum still follows answers (others: `NotLeader`, `NoQuorum`).
    pub async fn status(&self, linearizable: bool) -> Result<ClusterStatus, ClusterError> {
        self.core.status(linearizable).await
    }

    /// Asks the node at `address` for its status over Control.Status.
    pub async fn remote_status(
        &self,
        address: &str,
        linearizable: bool,
    ) -> Result<ClusterStatus, ClusterError> {
        let target = {
            let metrics = self.core.raft.metrics();
            let m = metrics.borrow();
            let found = m
                .membership_config
                .membership()
                .nodes()
                .find(|(_, n)| n.internal == address)
                .map(|(id, _)| *id);
            found
        };
        let mut client = self.core.channels.control_client(target, address)?;
        let budget = self.core.settings.request_timeout();
        let mut request = tonic::Request::new(proto::StatusRequest { linearizable });
        request.set_timeout(budget);
        match tokio::time::timeout(budget, client.status(request)).await {
            Err(_) => Err(ClusterError::Timeout {
                what: format!("status of {address}"),
                after_ms: budget.as_millis() as u64,
            }),
            Ok(Err(status)) => Err(from_status(&status, address)),
            Ok(Ok(reply)) => reply.into_inner().try_into(),
        }
    }

    /// Read access to the applied state.
    pub fn state(&self) -> StateHandle {
        self.core.state.clone()
    }

    /// Watch of the last applied log index.
    pub fn subscribe(&self) -> watch::Receiver<Option<u64>> {
        self.core.state.subscribe()
    }

    /// openraft's metrics watch (role, term, leader, log indexes).
    pub fn metrics(&self) -> watch::Receiver<RaftMetrics> {
        self.core.raft.metrics()
    }

    /// The openraft handle, for operations this type does not wrap.
    pub fn raft(&self) -> &Raft {
        &self.core.raft
    }

    /// Waits until this node knows a leader; returns its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<NodeId, ClusterError> {
        let mut rx = self.core.raft.metrics();
        let found = rx.wait_for(|m| m.current_leader.is_some());
        let outcome = tokio::time::timeout(timeout, found)
            .await
            .map(|r| r.map(|m| m.current_leader));
        match outcome {
            Ok(Ok(leader)) => leader.ok_or(ClusterError::NoLeader),
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::NoLeader),
        }
    }

    /// Waits until this node applied log index `index`.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ClusterError> {
        self.core
            .wait_applied(index, Instant::now() + timeout)
            .await
    }

    /// Stops openraft and the server and releases the data directory.
    /// Idempotent.
    pub async fn shutdown(&self) {
        self.lifecycle.shutdown().await;
    }
}

/// Accepted connections with Nagle's algorithm off. tonic sets TCP_NODELAY
/// only on listeners it binds itself; on a listener handed in (ours: bound
/// first so a busy port is a clear error) its answers would sit in the
/// kernel waiting for the peer's delayed ACK, about 40 ms, whenever a
/// response went out in more than one segment: remote shard searches then
/// missed the recall deadline on an idle cluster.
pub fn nodelay_incoming(
    listener: tokio::net::TcpListener,
) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests;
