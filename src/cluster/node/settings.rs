//! `RaftSettings`: one node's identity, addresses, timings and limits, and
//! the openraft `Config` derived from them. Must not touch: running state.

use std::path::PathBuf;
use std::time::Duration;

use openraft::{Config, SnapshotPolicy};

use crate::cluster::error::ClusterError;
use crate::cluster::fault::FaultInjector;
use crate::cluster::types::NodeId;
use crate::tls::NodeTls;

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
    /// Budget of `status(true)` and other calls that are not writes.
    pub request_timeout_ms: u64,
    /// Budget of a write (proposed here or forwarded to the leader) and of
    /// a membership change; 0 = twice `election_timeout_max_ms`, at least
    /// 1000 ms. A node cut off from the leader, or a leader without a
    /// quorum, answers within it instead of hanging.
    pub write_timeout_ms: u64,
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
            write_timeout_ms: 0,
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

    pub(super) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub(super) fn write_timeout(&self) -> Duration {
        Duration::from_millis(match self.write_timeout_ms {
            0 => self.election_timeout_max_ms.saturating_mul(2).max(1000),
            ms => ms,
        })
    }
}
