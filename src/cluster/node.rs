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

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{
    CheckIsLeaderError, ClientWriteError, Fatal, ForwardToLeader, InitializeError, RaftError,
};
use openraft::{ChangeMembers, Config, ServerState, SnapshotPolicy};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::error::{from_status, ClusterError};
use super::fault::FaultInjector;
use super::log_store::{LogStore, LOG_FILE};
use super::network::{decode_payload, encode_payload, Channels, NetworkFactory};
use super::service::{ControlService, RaftService};
use super::state::{Command, CommandResult, NodeInfo, StateSummary};
use super::state_machine::{StateHandle, StateMachineStore};
use super::types::{NodeId, Raft, RaftMetrics};
use super::vote_fence::VoteFence;
// the cluster speaks the control plane only
use crate::proto::control as proto;
use crate::proto::control::PayloadFormat;
use crate::tls::{internal_endpoint, NodeTls};

/// How many times a write follows a changing leader before giving up.
const WRITE_ATTEMPTS: usize = 3;

/// Settings of one Raft node.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub node_id: NodeId,
    /// Address the cluster gRPC server binds (port 0 = OS-assigned).
    pub internal_addr: String,
    /// Address other nodes use to reach this one; default: the bound address.
    /// Needed when binding a wildcard such as 0.0.0.0.
    pub advertise_addr: Option<String>,
    /// Raft files live in `<data_dir>/raft/`.
    pub data_dir: PathBuf,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot (and compact the log) every this many applied entries.
    pub snapshot_every: u64,
    /// Largest gRPC message sent or accepted. Snapshots travel in chunks of
    /// a quarter of this; one command may use at most half.
    pub max_message_bytes: usize,
    pub connect_timeout_ms: u64,
    /// Budget of `write`, `status(true)` and membership calls.
    pub request_timeout_ms: u64,
    /// Transport faults for tests; inactive unless rules are set.
    pub faults: FaultInjector,
    /// `api.admin_token`: when set, forwarded writes of admin commands
    /// (`Command::needs_admin`) must carry it; this node sends it with
    /// every write it forwards (all members share the token).
    pub admin_token: String,
    /// `[cluster.tls]`: the internal server requires client certificates
    /// signed by its CA and every peer client presents this identity;
    /// `None`: plaintext.
    pub tls: Option<NodeTls>,
}

impl RaftSettings {
    /// Defaults for a LAN cluster: heartbeat 150 ms, elections after
    /// 750–1500 ms of silence, a snapshot every 5000 entries, 64 MiB
    /// messages.
    pub fn new(
        node_id: NodeId,
        internal_addr: impl Into<String>,
        data_dir: impl Into<PathBuf>,
    ) -> Self {
        Self {
            node_id,
            internal_addr: internal_addr.into(),
            advertise_addr: None,
            data_dir: data_dir.into(),
            heartbeat_ms: 150,
            election_timeout_min_ms: 750,
            election_timeout_max_ms: 1500,
            snapshot_every: 5000,
            max_message_bytes: 64 << 20,
            connect_timeout_ms: 1000,
            request_timeout_ms: 10_000,
            faults: FaultInjector::default(),
            admin_token: String::new(),
            tls: None,
        }
    }

    /// Checks the settings and builds openraft's configuration.
    pub fn raft_config(&self) -> Result<Config, ClusterError> {
        if self.heartbeat_ms == 0 || self.heartbeat_ms >= self.election_timeout_min_ms {
            return Err(ClusterError::Config(format!(
                "heartbeat_ms ({}) must be above 0 and below election_timeout_min_ms ({})",
                self.heartbeat_ms, self.election_timeout_min_ms
            )));
        }
        if self.election_timeout_min_ms >= self.election_timeout_max_ms {
            return Err(ClusterError::Config(format!(
                "election_timeout_min_ms ({}) must be below election_timeout_max_ms ({})",
                self.election_timeout_min_ms, self.election_timeout_max_ms
            )));
        }
        if self.snapshot_every == 0 {
            return Err(ClusterError::Config(
                "snapshot_every must be at least 1".to_string(),
            ));
        }
        if self.max_message_bytes < 64 * 1024 {
            return Err(ClusterError::Config(format!(
                "max_message_bytes ({}) must be at least 65536",
                self.max_message_bytes
            )));
        }
        let config = Config {
            cluster_name: "funnel".to_string(),
            heartbeat_interval: self.heartbeat_ms,
            election_timeout_min: self.election_timeout_min_ms,
            election_timeout_max: self.election_timeout_max_ms,
            // One snapshot chunk per RPC; generous because chunks are large.
            install_snapshot_timeout: self.request_timeout_ms.max(self.election_timeout_max_ms),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every),
            snapshot_max_chunk_size: (self.max_message_bytes / 4) as u64,
            // Keep a short tail after each snapshot so a follower that is
            // slightly behind catches up from the log, not a snapshot.
            max_in_snapshot_log_to_keep: self.snapshot_every.min(100),
            ..Default::default()
        };
        config
            .validate()
            .map_err(|e| ClusterError::Config(format!("openraft refused the configuration: {e}")))
    }

    fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub id: NodeId,
    /// "Leader", "Follower", "Candidate", "Learner" or "Shutdown".
    pub role: String,
    pub term: u64,
    pub leader: Option<NodeId>,
    pub leader_addr: Option<String>,
    pub voters: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub last_log_index: Option<u64>,
    pub last_applied_index: Option<u64>,
    /// Entries in the local log not applied yet.
    pub apply_lag: u64,
    pub state: StateSummary,
    /// blake3 of the whole applied state.
    pub state_digest: String,
    /// For linearizable status: the index the answer is valid at.
    pub read_index: Option<u64>,
    /// This node refuses votes: its Raft storage started empty and no
    /// leader has brought it up to date yet (`cluster::vote_fence`).
    #[serde(default)]
    pub vote_fenced: bool,
}

/// Proposes `command` through the node at `address` (any member: it
/// forwards to the leader) over Control.Propose, for callers outside the
/// Raft group (the admin tool, a node asking to join). `origin` names the
/// caller in the receiver's log (0 = an operator); `tls` is the caller's
/// identity when the cluster runs mTLS. A refused command is
/// `Err(ClusterError::Rejected)`.
pub async fn propose_via(
    address: &str,
    command: &Command,
    origin: NodeId,
    token: &str,
    tls: Option<&NodeTls>,
    timeout: Duration,
) -> Result<(CommandResult, u64), ClusterError> {
    let transport = |reason: String| ClusterError::Transport {
        target: address.to_string(),
        reason,
    };
    let channel = internal_endpoint(address, tls, Duration::from_secs(2))
        .map_err(|e| transport(e.to_string()))?
        .connect()
        .await
        .map_err(|e| transport(crate::tls::error_chain(&e)))?;
    let mut client = proto::control_client::ControlClient::new(channel);
    let mut request = tonic::Request::new(proto::WriteRequest {
        format: PayloadFormat::Postcard as i32,
        command: encode_payload(command)?,
        origin_node: origin,
    });
    request.set_timeout(timeout);
    crate::auth::attach(&mut request, token).map_err(ClusterError::Unauthenticated)?;
    let reply = match tokio::time::timeout(timeout, client.propose(request)).await {
        Err(_) => {
            return Err(ClusterError::Timeout {
                what: format!("proposing {} through {address}", command.kind()),
                after_ms: timeout.as_millis() as u64,
            })
        }
        Ok(Err(status)) => return Err(from_status(&status, address)),
        Ok(Ok(reply)) => reply.into_inner(),
    };
    let result: CommandResult = decode_payload(reply.format, &reply.result, "proposal result")?;
    match result {
        CommandResult::Rejected(reason) => Err(ClusterError::Rejected(reason)),
        ok => Ok((ok, reply.log_index)),
    }
}

/// Everything the services and the handle share.
pub(crate) struct NodeCore {
    id: NodeId,
    raft: Raft,
    state: StateHandle,
    channels: Channels,
    settings: RaftSettings,
    fence: VoteFence,
}

impl NodeCore {
    /// The admin token forwarded admin writes must carry (empty: none).
    pub(crate) fn admin_token(&self) -> &str {
        &self.settings.admin_token
    }

    pub(crate) fn state_handle(&self) -> &StateHandle {
        &self.state
    }

    fn metrics(&self) -> RaftMetrics {
        self.raft.metrics().borrow().clone()
    }

    fn address_of(&self, node: NodeId) -> Option<String> {
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&node)
            .map(|n| n.internal.clone())
    }

    fn not_leader(&self, leader: Option<NodeId>) -> ClusterError {
        match leader {
            Some(leader) if leader != self.id => ClusterError::NotLeader {
                node: self.id,
                leader,
                address: self.address_of(leader).unwrap_or_default(),
            },
            _ => ClusterError::NoLeader,
        }
    }

    fn forward_error(&self, f: ForwardToLeader<NodeId, NodeInfo>) -> ClusterError {
        match (f.leader_id, f.leader_node) {
            (Some(leader), Some(node)) if leader != self.id => ClusterError::NotLeader {
                node: self.id,
                leader,
                address: node.internal,
            },
            (leader, _) => self.not_leader(leader),
        }
    }

    fn fatal(f: Fatal<NodeId>) -> ClusterError {
        match f {
            Fatal::Stopped => ClusterError::ShuttingDown,
            other => ClusterError::Raft(other.to_string()),
        }
    }

    fn check_size(&self, command: &Command) -> Result<(), ClusterError> {
        let bytes = encode_payload(command)?.len();
        let limit = self.settings.max_message_bytes / 2;
        if bytes > limit {
            return Err(ClusterError::TooLarge { bytes, limit });
        }
        Ok(())
    }

    /// Proposes `command` on this node, which must be the leader. Returns
    /// the apply result and the log index.
    pub(crate) async fn propose_as_leader(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), ClusterError> {
        self.check_size(&command)?;
        let budget = self.settings.request_timeout();
        match tokio::time::timeout(budget, self.raft.client_write(command)).await {
            Err(_) => Err(ClusterError::Timeout {
                what: "committing the command".to_string(),
                after_ms: budget.as_millis() as u64,
            }),
            Ok(Ok(resp)) => Ok((resp.data, resp.log_id.index)),
            Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                Err(self.forward_error(f))
            }
            Ok(Err(RaftError::APIError(ClientWriteError::ChangeMembershipError(e)))) => {
                Err(ClusterError::Membership(e.to_string()))
            }
            Ok(Err(RaftError::Fatal(f))) => Err(Self::fatal(f)),
        }
    }

    /// Sends `command` to the leader at `address` over Control.ForwardWrite.
    async fn forward(
        &self,
        leader: NodeId,
        address: &str,
        command: &Command,
        deadline: Instant,
    ) -> Result<(CommandResult, u64), ClusterError> {
        let mut client = self.channels.control_client(Some(leader), address)?;
        let mut request = tonic::Request::new(proto::WriteRequest {
            format: PayloadFormat::Postcard as i32,
            command: encode_payload(command)?,
            origin_node: self.id,
        });
        request.set_timeout(deadline.saturating_duration_since(Instant::now()));
        crate::auth::attach(&mut request, &self.settings.admin_token)
            .map_err(ClusterError::Config)?;
        let reply = match tokio::time::timeout_at(deadline, client.forward_write(request)).await {
            Err(_) => {
                return Err(ClusterError::Timeout {
                    what: format!("forwarding the command to leader {leader} at {address}"),
                    after_ms: self.settings.request_timeout_ms,
                })
            }
            Ok(Err(status)) => return Err(from_status(&status, address)),
            Ok(Ok(reply)) => reply.into_inner(),
        };
        let result: CommandResult =
            decode_payload(reply.format, &reply.result, "forwarded write result")?;
        Ok((result, reply.log_index))
    }

    /// Writes through the leader, wherever it is, and waits until this node
    /// has applied the entry too (so a caller reads its own write here).
    pub(crate) async fn write(
        &self,
        command: Command,
    ) -> Result<(CommandResult, u64), ClusterError> {
        self.check_size(&command)?;
        let deadline = Instant::now() + self.settings.request_timeout();
        let mut last_err = ClusterError::NoLeader;
        for attempt in 0..WRITE_ATTEMPTS {
            if attempt > 0 {
                // Give a changing leadership a heartbeat to settle.
                tokio::time::sleep(Duration::from_millis(self.settings.heartbeat_ms)).await;
                if Instant::now() >= deadline {
                    break;
                }
            }
            let leader = self.raft.current_leader().await;
            let outcome = match leader {
                None => return Err(ClusterError::NoLeader),
                Some(leader) if leader == self.id => self.propose_as_leader(command.clone()).await,
                Some(leader) => match self.address_of(leader) {
                    None => Err(ClusterError::NoLeader),
                    Some(address) => self.forward(leader, &address, &command, deadline).await,
                },
            };
            match outcome {
                Ok((result, index)) => {
                    self.wait_applied(index, deadline).await?;
                    return Ok((result, index));
                }
                Err(e @ (ClusterError::NotLeader { .. } | ClusterError::NoLeader)) => last_err = e,
                Err(e) => return Err(e),
            }
        }
        Err(last_err)
    }

    async fn wait_applied(&self, index: u64, deadline: Instant) -> Result<(), ClusterError> {
        let mut rx = self.state.subscribe();
        let reached = rx.wait_for(|applied| applied.is_some_and(|a| a >= index));
        let outcome = tokio::time::timeout_at(deadline, reached)
            .await
            .map(|r| r.map(|_| ()));
        match outcome {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(ClusterError::ShuttingDown),
            Err(_) => Err(ClusterError::Timeout {
                what: format!("applying committed entry {index} on node {}", self.id),
                after_ms: self.settings.request_timeout_ms,
            }),
        }
    }

    /// This node's view; with `linearizable` the leader first confirms its
    /// leadership with a quorum and waits until it applied the read index.
    pub(crate) async fn status(&self, linearizable: bool) -> Result<ClusterStatus, ClusterError> {
        let mut read_index = None;
        if linearizable {
            let budget = self.settings.request_timeout();
            match tokio::time::timeout(budget, self.raft.ensure_linearizable()).await {
                Err(_) => {
                    return Err(ClusterError::Timeout {
                        what: "confirming leadership".to_string(),
                        after_ms: budget.as_millis() as u64,
                    })
                }
                Ok(Ok(read_log_id)) => read_index = read_log_id.map(|l| l.index),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    return Err(self.forward_error(f))
                }
                Ok(Err(RaftError::APIError(CheckIsLeaderError::QuorumNotEnough(q)))) => {
                    return Err(ClusterError::NoQuorum(format!(
                        "only {:?} answered in membership {}",
                        q.got, q.cluster
                    )))
                }
                Ok(Err(RaftError::Fatal(f))) => return Err(Self::fatal(f)),
            }
        }
        let m = self.metrics();
        let membership = m.membership_config.membership();
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        let leader_addr = m
            .current_leader
            .and_then(|l| membership.get_node(&l).map(|n| n.internal.clone()));
        let last_applied_index = m.last_applied.map(|l| l.index);
        let apply_lag = match (m.last_log_index, last_applied_index) {
            (Some(log), Some(applied)) => log.saturating_sub(applied),
            _ => 0,
        };
        let (summary, digest) = {
            let state = self.state.read();
            (state.summary(), state.digest())
        };
        Ok(ClusterStatus {
            id: self.id,
            role: role_name(m.state).to_string(),
            term: m.current_term,
            leader: m.current_leader,
            leader_addr,
            voters,
            learners,
            last_log_index: m.last_log_index,
            last_applied_index,
            apply_lag,
            state: summary,
            state_digest: digest,
            read_index,
            vote_fenced: self.fence.is_armed(),
        })
    }
}

fn role_name(state: ServerState) -> &'static str {
    match state {
        ServerState::Leader => "Leader",
        ServerState::Follower => "Follower",
        ServerState::Candidate => "Candidate",
        ServerState::Learner => "Learner",
        ServerState::Shutdown => "Shutdown",
    }
}

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
        let routes = extra(tonic::service::Routes::new(raft_service).add_service(control_service));
        let server = server.add_routes(routes).serve_with_incoming_shutdown(
            nodelay_incoming(listener),
            async move {
                let _ = stop_rx.wait_for(|stop| *stop).await;
            },
        );
        let node_id = settings.node_id;
        let server = tokio::spawn(async move {
            if let Err(e) = server.await {
                tracing::error!(node = node_id, error = %e, "cluster gRPC server failed");
            }
        });

        let lifecycle = Arc::new(Lifecycle {
            raft,
            stop_server,
            server: Mutex::new(Some(server)),
            log_store: Mutex::new(Some(log_store)),
            fence,
            done: tokio::sync::Mutex::new(false),
        });
        let watcher = lifecycle.clone();
        tokio::spawn(async move {
            // A dropped sender means nobody can ask for shutdown any more;
            // the node then runs until `RaftNode::shutdown`.
            if shutdown.wait_for(|stop| *stop).await.is_ok() {
                watcher.shutdown().await;
            }
        });

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
    /// call it for a node that lost its data directory (`node::formation`
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
        self.membership_call("adding a learner", call).await
    }

    /// Makes `voters` the voter set (joint consensus). Voters that leave
    /// stay as learners. Must run on the leader.
    pub async fn change_membership(&self, voters: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let call = self.core.raft.change_membership(voters, true);
        self.membership_call("changing membership", call).await
    }

    /// Removes learners from the membership entirely. A node that is still
    /// a voter is refused (`Membership` error): demote it with
    /// `change_membership` first. Must run on the leader.
    pub async fn remove_nodes(&self, ids: BTreeSet<NodeId>) -> Result<(), ClusterError> {
        let call = self
            .core
            .raft
            .change_membership(ChangeMembers::RemoveNodes(ids), false);
        self.membership_call("removing nodes", call).await
    }

    async fn membership_call<F>(&self, what: &str, call: F) -> Result<(), ClusterError>
    where
        F: std::future::Future<
            Output = Result<
                openraft::raft::ClientWriteResponse<super::types::TypeConfig>,
                RaftError<NodeId, ClientWriteError<NodeId, NodeInfo>>,
            >,
        >,
    {
        let budget = self.core.settings.request_timeout();
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
mod tests {
    use super::*;
    use futures::StreamExt;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // what a plain accept gives: Nagle on (the fault this function fixes)
        let plain = tokio::net::TcpStream::connect(addr).await.unwrap();
        let (accepted, _) = listener.accept().await.unwrap();
        assert!(!accepted.nodelay().unwrap());
        drop((plain, accepted));

        let mut incoming = nodelay_incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.unwrap();
        let stream = incoming.next().await.unwrap().unwrap();
        assert!(stream.nodelay().unwrap());
    }
}
