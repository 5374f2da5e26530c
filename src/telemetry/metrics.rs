//! The Prometheus metrics funnel exports on /metrics.

use prometheus::{
    CounterVec, Encoder, Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts,
    Registry, TextEncoder,
};
use std::sync::OnceLock;

pub struct Metrics {
    pub registry: Registry,
    /// End-to-end latency per API operation.
    pub request_seconds: HistogramVec,
    /// Latency per recommend stage.
    pub stage_seconds: HistogramVec,
    /// Candidates each recall path contributed.
    pub path_candidates: HistogramVec,
    pub coverage: Histogram,
    pub degraded: IntCounterVec,
    pub errors: IntCounterVec,
    pub requests: IntCounterVec,
    pub cpu_seconds: CounterVec,
    pub process_cpu_seconds: Gauge,
    pub events: IntCounterVec,
    /// Second requests sent to another replica because the first was slow.
    pub hedged_requests: prometheus::IntCounter,
    /// Hedges the budget refused (`routing::HedgeBudget`).
    pub hedges_refused: prometheus::IntCounter,
    /// Searches this node answered for other nodes' coordinators, by how
    /// they came: alone (`search`) or in a `SearchBatch` (`batch`).
    pub shard_searches_served: IntCounterVec,
    /// Calls to a remote shard replica, by outcome.
    pub replica_calls: IntCounterVec,
    /// Bundle file bytes this node copied from peers, by where they came
    /// from: over the network (`fetched`) or from the `.part` file an
    /// interrupted earlier fetch left (`resumed`).
    pub bundle_fetch_bytes: IntCounterVec,
    /// 1 while this node refuses Raft votes because its storage started
    /// empty and no leader has brought it up to date (`cluster::vote_fence`).
    pub raft_vote_fenced: prometheus::IntGauge,
    /// Peers this node's data plane counts as down (`routing::NodeHealth`):
    /// their shard copies are skipped until they answer a probe.
    pub peers_down: prometheus::IntGauge,
    /// Where requests read their user's realtime state: this node's copy
    /// of the partition (`local`), a copy on another node (`remote`), or
    /// nowhere in time (`failed`: the request used what this node has).
    pub user_state_reads: IntCounterVec,
    /// Users whose realtime state this node holds, and the bytes those
    /// states hold (`UserState::footprint`, ids and map slots included).
    pub user_states: prometheus::IntGauge,
    pub user_state_bytes: prometheus::IntGauge,
}

const LATENCY_BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05,
    0.075, 0.1, 0.25, 0.5, 1.0, 2.5,
];

fn build() -> Metrics {
    let registry = Registry::new();
    let h = |name: &str, help: &str, labels: &[&str], buckets: &[f64]| {
        let v = HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("metric definition is valid");
        registry
            .register(Box::new(v.clone()))
            .expect("metric registered once");
        v
    };
    let c = |name: &str, help: &str, labels: &[&str]| {
        let v =
            IntCounterVec::new(Opts::new(name, help), labels).expect("metric definition is valid");
        registry
            .register(Box::new(v.clone()))
            .expect("metric registered once");
        v
    };
    let request_seconds = h(
        "funnel_request_duration_seconds",
        "API request latency",
        &["op"],
        LATENCY_BUCKETS,
    );
    let stage_seconds = h(
        "funnel_stage_duration_seconds",
        "Recommend stage latency",
        &["stage"],
        LATENCY_BUCKETS,
    );
    let path_candidates = h(
        "funnel_recall_candidates",
        "Candidates per recall path per request",
        &["path"],
        &[0.0, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 400.0],
    );
    let coverage = Histogram::with_opts(
        HistogramOpts::new(
            "funnel_coverage",
            "Fraction of shards that answered in time",
        )
        .buckets(vec![0.25, 0.5, 0.75, 0.9, 0.99, 1.0]),
    )
    .expect("metric definition is valid");
    registry
        .register(Box::new(coverage.clone()))
        .expect("metric registered once");
    let degraded = c(
        "funnel_degraded_total",
        "Requests answered degraded, by reason",
        &["reason"],
    );
    let errors = c("funnel_errors_total", "Errors by kind", &["kind"]);
    let requests = c(
        "funnel_requests_total",
        "API requests by operation and outcome",
        &["op", "outcome"],
    );
    let cpu_seconds = CounterVec::new(
        Opts::new("funnel_cpu_seconds_total", "CPU time by stage"),
        &["stage"],
    )
    .expect("metric definition is valid");
    registry
        .register(Box::new(cpu_seconds.clone()))
        .expect("metric registered once");
    let process_cpu_seconds =
        Gauge::new("process_cpu_seconds_total", "Total CPU time of the process")
            .expect("metric definition is valid");
    registry
        .register(Box::new(process_cpu_seconds.clone()))
        .expect("metric registered once");
    let events = c("funnel_events_total", "Events ingested by kind", &["kind"]);
    let int_counter = |name: &str, help: &str| {
        let m = prometheus::IntCounter::new(name, help).expect("metric definition is valid");
        registry
            .register(Box::new(m.clone()))
            .expect("metric registered once");
        m
    };
    let hedged_requests = int_counter(
        "funnel_hedged_requests_total",
        "Hedged second requests to another shard replica",
    );
    let hedges_refused = int_counter(
        "funnel_hedges_refused_total",
        "Hedges not sent because the hedge budget was spent",
    );
    let replica_calls = c(
        "funnel_replica_calls_total",
        "Shard replica calls by outcome",
        &["outcome"],
    );
    let shard_searches_served = c(
        "funnel_shard_searches_served_total",
        "Shard searches answered for other nodes, alone or in a batch",
        &["via"],
    );
    let bundle_fetch_bytes = c(
        "funnel_bundle_fetch_bytes_total",
        "Bundle file bytes copied from peers: fetched over the network or resumed from an interrupted fetch",
        &["source"],
    );
    let gauge = |name: &str, help: &str| {
        let g = prometheus::IntGauge::new(name, help).expect("metric definition is valid");
        registry
            .register(Box::new(g.clone()))
            .expect("metric registered once");
        g
    };
    let raft_vote_fenced = gauge(
        "funnel_raft_vote_fenced",
        "1 while this node refuses Raft votes: its storage started empty and no leader has brought it up to date",
    );
    let peers_down = gauge(
        "funnel_peers_down",
        "Peers whose shard copies this node skips: they stopped answering, until they answer a probe",
    );
    let user_state_reads = c(
        "funnel_user_state_reads_total",
        "Where requests read their user's realtime state: local partition copy, remote copy, or failed",
        &["source"],
    );
    let user_states = gauge(
        "funnel_user_states",
        "Users whose realtime state this node holds",
    );
    let user_state_bytes = gauge(
        "funnel_user_state_bytes",
        "Bytes the realtime user states on this node hold (an estimate from what they allocated)",
    );
    Metrics {
        user_states,
        user_state_bytes,
        user_state_reads,
        raft_vote_fenced,
        peers_down,
        hedged_requests,
        hedges_refused,
        shard_searches_served,
        replica_calls,
        bundle_fetch_bytes,
        registry,
        request_seconds,
        stage_seconds,
        path_candidates,
        coverage,
        degraded,
        errors,
        requests,
        cpu_seconds,
        process_cpu_seconds,
        events,
    }
}

/// The process-wide metrics.
pub fn metrics() -> &'static Metrics {
    static M: OnceLock<Metrics> = OnceLock::new();
    M.get_or_init(build)
}

pub fn record_cpu(stage: &str, micros: u64) {
    crate::telemetry::cpu::note_recorded(micros);
    metrics()
        .cpu_seconds
        .with_label_values(&[stage])
        .inc_by(micros as f64 / 1e6);
}

/// CPU seconds recorded for `stage` so far.
pub fn cpu_seconds(stage: &str) -> f64 {
    metrics().cpu_seconds.with_label_values(&[stage]).get()
}

/// Prometheus text exposition of every metric.
pub fn render() -> String {
    let m = metrics();
    m.process_cpu_seconds
        .set(super::cpu::process_cpu_micros() as f64 / 1e6);
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&m.registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}
