//! The shape of a serving node's configuration: one struct per TOML section,
//! each with the documented defaults (a single node on 127.0.0.1).
//!
//! Owns: the section types, their defaults and small accessors that turn
//! settings into the types other modules take (`EventLogOptions`, stage
//! deadlines). Must not touch: files, the environment or validation rules
//! (see `config::env` and `config::validate`).
//!
//! Every struct has `#[serde(default, deny_unknown_fields)]`: a section may
//! name any subset of its keys, and a misspelt key is an error instead of a
//! silently ignored setting.

use crate::eventlog::{EventLogOptions, FsyncPolicy};
use crate::ranking::rerank::RerankConfig;
use crate::ranking::score::Cascade;
use crate::recall::RecallConfig;
pub use crate::telemetry::TelemetryConfig;
pub use crate::tls::TlsFiles;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Everything a serving node reads at start.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeConfig {
    pub node: NodeSection,
    pub api: ApiConfig,
    pub recall: RecallConfig,
    pub budget: StageBudget,
    pub ranking: RankingConfig,
    pub rerank: RerankConfig,
    pub events: EventsConfig,
    pub shards: ShardsConfig,
    /// Span export over OTLP; off unless `otlp_endpoint` is set.
    pub telemetry: TelemetryConfig,
    /// `None` (no `[cluster]` section): a single node that owns every shard.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterConfig>,
}

impl NodeConfig {
    pub fn is_cluster(&self) -> bool {
        self.cluster.is_some()
    }

    /// This node's entry in `cluster.members`, when it has one.
    pub fn this_member(&self) -> Option<&ClusterMember> {
        self.cluster
            .as_ref()?
            .members
            .iter()
            .find(|m| m.id == self.node.id)
    }
}

/// `[node]`: who this node is and where it keeps its files.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NodeSection {
    pub id: u64,
    /// Event log, raft log and shard cache live under this directory.
    pub data_dir: PathBuf,
    /// Bundle directory to load at start; empty = wait for a publish.
    pub bundle: PathBuf,
}

impl Default for NodeSection {
    fn default() -> Self {
        NodeSection {
            id: 1,
            data_dir: PathBuf::from("funnel-data/node-1"),
            bundle: PathBuf::new(),
        }
    }
}

impl NodeSection {
    /// The bundle to load at start, or `None` to wait for a publish.
    pub fn bundle_dir(&self) -> Option<&Path> {
        if self.bundle.as_os_str().is_empty() {
            None
        } else {
            Some(&self.bundle)
        }
    }
}

/// `[api]`: the public HTTP and gRPC endpoints and their limits.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    /// HOST:PORT to bind the HTTP API to (port 0 = any free port).
    pub http: String,
    /// HOST:PORT to bind the gRPC API to (port 0 = any free port).
    pub grpc: String,
    pub default_k: usize,
    pub max_k: usize,
    /// Most events or items in one ingest/upsert request.
    pub max_batch: usize,
    /// Body limit for both gRPC messages and HTTP requests.
    pub max_message_bytes: usize,
    pub default_deadline_ms: u64,
    pub max_deadline_ms: u64,
    /// When non-empty, admin operations must present this token.
    pub admin_token: String,
    pub http_workers: usize,
}

impl Default for ApiConfig {
    fn default() -> Self {
        ApiConfig {
            http: "127.0.0.1:8080".into(),
            grpc: "127.0.0.1:50051".into(),
            default_k: 10,
            max_k: 200,
            max_batch: 1000,
            max_message_bytes: 4 * 1024 * 1024,
            default_deadline_ms: 50,
            max_deadline_ms: 2000,
            admin_token: String::new(),
            http_workers: 2,
        }
    }
}

impl ApiConfig {
    /// The deadline for a request that asked for `requested_ms` (or nothing),
    /// capped at `max_deadline_ms` so one client cannot hold workers forever.
    pub fn deadline(&self, requested_ms: Option<u64>) -> Duration {
        let ms = requested_ms
            .filter(|&ms| ms > 0)
            .unwrap_or(self.default_deadline_ms)
            .min(self.max_deadline_ms);
        Duration::from_millis(ms)
    }
}

/// `[budget]`: the share of a request's deadline each stage may use.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StageBudget {
    pub user: f64,
    pub recall: f64,
    pub rank: f64,
    pub rerank: f64,
}

impl Default for StageBudget {
    fn default() -> Self {
        StageBudget {
            user: 0.1,
            recall: 0.5,
            rank: 0.3,
            rerank: 0.1,
        }
    }
}

/// Per-stage time limits cut from one request deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StageDeadlines {
    pub user: Duration,
    pub recall: Duration,
    pub rank: Duration,
    pub rerank: Duration,
}

impl StageBudget {
    pub fn split(&self, deadline: Duration) -> StageDeadlines {
        StageDeadlines {
            user: deadline.mul_f64(self.user),
            recall: deadline.mul_f64(self.recall),
            rank: deadline.mul_f64(self.rank),
            rerank: deadline.mul_f64(self.rerank),
        }
    }
}

/// `[ranking]`: the scoring stage's worker pool.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RankingConfig {
    /// RankWorker threads.
    pub workers: usize,
    /// Candidates scored per batch.
    pub batch_rows: usize,
    /// Two-phase scoring; the default matches the trainer's and the
    /// offline evaluation's (`PipelineParams::cascade`), so the server
    /// ranks as `funnel eval` measured.
    pub cascade: Cascade,
}

impl Default for RankingConfig {
    fn default() -> Self {
        RankingConfig {
            workers: 2,
            batch_rows: 512,
            cascade: Cascade::default(),
        }
    }
}

/// `[events]`: the node's event log and user-state partitions.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub fsync: FsyncPolicy,
    pub segment_bytes: u64,
    /// User-state partitions on a single node.
    pub user_partitions: usize,
    /// What acknowledging accepted events waits for in a cluster: `all`
    /// (durable on every live copy of their user partitions) or `one`
    /// (on at least one copy).
    pub ack: EventAck,
    /// How long an acknowledgement waits for the copies `ack` names before
    /// the events are refused as not confirmed.
    pub ack_timeout_ms: u64,
}

/// `events.ack`: which copies of a user partition must hold an event
/// (logged and fsynced per `events.fsync`) before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventAck {
    /// At least one copy.
    One,
    /// Every copy that is not down, and at least one.
    #[default]
    All,
}

impl EventAck {
    pub fn as_str(self) -> &'static str {
        match self {
            EventAck::One => "one",
            EventAck::All => "all",
        }
    }
}

impl Default for EventsConfig {
    fn default() -> Self {
        let log = EventLogOptions::default();
        EventsConfig {
            fsync: log.fsync,
            segment_bytes: log.segment_bytes,
            user_partitions: 8,
            ack: EventAck::All,
            ack_timeout_ms: 1000,
        }
    }
}

impl EventsConfig {
    pub fn log_options(&self) -> EventLogOptions {
        EventLogOptions {
            fsync: self.fsync,
            segment_bytes: self.segment_bytes,
        }
    }
}

/// `[shards]`: how this node searches the ANN shards it holds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ShardsConfig {
    /// Threads of the node's search pool, shared by every shard copy (also
    /// the usearch search slots reserved); small shards are searched on the
    /// request's own thread (`shard::handle::INLINE_MAX_ITEMS`).
    pub search_threads: usize,
    /// usearch `ef` at query time; 0 uses the bundle's (its manifest's
    /// `index.expansion_search`, chosen at training with the recall check
    /// of `funnel bundle ann-recall`).
    pub expansion_search: usize,
    /// Which search answers: `walk` (funnel's walk of a flat copy of the
    /// HNSW graph, the default and the faster) or `usearch` (the library's
    /// own filtered search of the same index, no copy kept: a fallback,
    /// and the reference serving measurements compare the walk with).
    pub search: ShardSearchEngine,
}

/// `shards.search`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardSearchEngine {
    #[default]
    Walk,
    Usearch,
}

impl Default for ShardsConfig {
    fn default() -> Self {
        ShardsConfig {
            search_threads: 2,
            expansion_search: 0,
            search: ShardSearchEngine::Walk,
        }
    }
}

/// `[cluster]`: present only on nodes that are part of a cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClusterConfig {
    /// HOST:PORT this node binds for internal gRPC (raft, shard search).
    pub internal: String,
    /// True on exactly one seed node at first start: it initialises raft.
    pub bootstrap: bool,
    /// internal HOST:PORT of an existing member to ask for admission when
    /// this node is not one of the bootstrap members (empty: do not ask;
    /// an operator runs `funnel admin add-node` instead).
    pub join: String,
    /// Every node of the cluster, with the addresses the others reach it at.
    pub members: Vec<ClusterMember>,
    /// Number of item shards (S), fixed when the cluster is created.
    pub shards: u32,
    /// Copies of each shard (R).
    pub replication: u32,
    /// User partitions (P), fixed when the cluster is created: a user's
    /// realtime state lives in partition `ids::user_partition(user, P)`.
    pub user_partitions: u32,
    /// Copies of each user partition, capped at the number of members
    /// when the map is created (`funnel admin set-replication
    /// --user-partitions` changes it later).
    pub user_replication: u32,
    pub heartbeat_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Raft log entries between snapshots.
    pub snapshot_every: u64,
    /// How long a write (item upserts and deletes, publish, membership)
    /// through this node may take before it is answered with 503: when
    /// this node cannot reach the leader, or leads without a quorum, the
    /// client hears so instead of waiting. 0 = twice
    /// `election_timeout_max_ms`, at least 1000 ms (`write_timeout`).
    pub write_timeout_ms: u64,
    /// Shard copies this node sends or receives at once.
    pub max_concurrent_transfers: usize,
    /// Seconds a member may stay unreachable from the Raft leader before
    /// the leader re-places its shard copies on live nodes; 0 = never. The
    /// cluster setting `cluster.replace_dead_after` overrides it.
    pub replace_dead_after: u64,
    /// The leader balances a skewed placement by itself (as `funnel admin
    /// rebalance` does, at most `max_concurrent_transfers` at once) once
    /// every member answers, every copy is Active and nothing is queued,
    /// for 10 s: after a member that was cut off or down for longer than
    /// `replace_dead_after` returns, or after a node joins. The cluster
    /// setting `cluster.auto_rebalance` overrides it.
    pub auto_rebalance: bool,
    /// Where a node gets the files of a staged model bundle (see
    /// `FetchBundles`).
    pub fetch_bundles: FetchBundles,
    /// mTLS between nodes: all three paths or none.
    pub tls: TlsFiles,
    /// Serve the `FaultInjection` gRPC service (transport faults set at run
    /// time, with the admin token). For tests only: off by default.
    pub fault_injection: bool,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig {
            internal: "127.0.0.1:7001".into(),
            bootstrap: false,
            join: String::new(),
            members: Vec::new(),
            shards: 12,
            replication: 2,
            user_partitions: 64,
            user_replication: 2,
            heartbeat_ms: 100,
            election_timeout_min_ms: 250,
            election_timeout_max_ms: 500,
            snapshot_every: 5000,
            write_timeout_ms: 0,
            max_concurrent_transfers: 2,
            replace_dead_after: 30,
            auto_rebalance: true,
            fetch_bundles: FetchBundles::IfMissing,
            tls: TlsFiles::default(),
            fault_injection: false,
        }
    }
}

impl ClusterConfig {
    /// `write_timeout_ms`, resolved: the configured value, or twice the
    /// longest election timeout (one election can finish inside it) and
    /// at least a second.
    pub fn write_timeout(&self) -> std::time::Duration {
        let ms = match self.write_timeout_ms {
            0 => self.election_timeout_max_ms.saturating_mul(2).max(1000),
            ms => ms,
        };
        std::time::Duration::from_millis(ms)
    }

    /// The TLS files, when mTLS is configured (validation ensures all three
    /// are set or none).
    pub fn tls(&self) -> Option<&TlsFiles> {
        if self.tls.is_empty() {
            None
        } else {
            Some(&self.tls)
        }
    }
}

/// `cluster.fetch_bundles`: how a node finds the files of a staged bundle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FetchBundles {
    /// Use the bundle path the publisher gave when it exists here and
    /// passes the manifest checksums (a shared filesystem); otherwise copy
    /// the files from the source node.
    IfMissing,
    /// Always copy the files from the source node into
    /// `<data_dir>/bundles/<version>/` (what separate machines do; lets a
    /// test on one machine exercise fetching).
    Always,
}

/// One entry of `cluster.members`: addresses other nodes and clients use
/// to reach node `id` (which may differ from the addresses it binds, e.g.
/// `node2:7001` in containers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterMember {
    pub id: u64,
    pub internal: String,
    pub http: String,
    pub grpc: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_deadline_defaults_and_is_capped() {
        let api = ApiConfig {
            default_deadline_ms: 50,
            max_deadline_ms: 2000,
            ..ApiConfig::default()
        };
        assert_eq!(api.deadline(None), Duration::from_millis(50));
        assert_eq!(api.deadline(Some(0)), Duration::from_millis(50));
        assert_eq!(api.deadline(Some(10)), Duration::from_millis(10));
        assert_eq!(api.deadline(Some(60_000)), Duration::from_millis(2000));
    }

    #[test]
    fn stage_budget_splits_the_deadline_by_share() {
        let b = StageBudget {
            user: 0.125,
            recall: 0.5,
            rank: 0.25,
            rerank: 0.125,
        };
        // shares that are exact in binary, so no rounding is involved
        let d = b.split(Duration::from_millis(200));
        assert_eq!(d.user, Duration::from_millis(25));
        assert_eq!(d.recall, Duration::from_millis(100));
        assert_eq!(d.rank, Duration::from_millis(50));
        assert_eq!(d.rerank, Duration::from_millis(25));
    }

    #[test]
    fn event_settings_become_log_options() {
        let e = EventsConfig {
            fsync: FsyncPolicy::Never,
            segment_bytes: 1 << 20,
            user_partitions: 3,
            ..EventsConfig::default()
        };
        let o = e.log_options();
        assert_eq!((o.fsync, o.segment_bytes), (FsyncPolicy::Never, 1 << 20));
    }

    #[test]
    fn event_ack_reads_one_or_all_and_refuses_anything_else() {
        let read = |text: &str| toml::from_str::<EventsConfig>(text);
        assert_eq!(read("").unwrap().ack, EventAck::All);
        assert_eq!(read("ack = \"one\"").unwrap().ack, EventAck::One);
        assert_eq!(read("ack = \"all\"").unwrap().ack, EventAck::All);
        let err = read("ack = \"two\"").unwrap_err().to_string();
        assert!(err.contains("`one`") && err.contains("`all`"), "{err}");
    }
}
