//! `funnel bench scaleout`: does a cluster's capacity grow with its nodes?
//!
//! For each node count it starts a local cluster of `funnel serve`
//! processes on this machine, each held to the same CPU share by a cgroup
//! quota (equal small hosts on one box), publishes the bundle, and searches
//! for capacity: the highest open-loop rate whose run has p99 within the
//! target and no errors (`capacity.rs`). It reports capacity against one
//! node, CPU per request per node split into ANN / ranking / RPC / other,
//! the nodes' throttling, and the load generator's own CPU, saying when the
//! generator rather than the cluster was the limit.
//!
//! Owns: the sequence (sizes, runs, verdicts) and the report. Must not
//! touch: how a node serves (it only starts `funnel serve` processes and
//! reads their /metrics) or how load is generated (`bench::run_blocking`).

pub mod capacity;
pub mod cgroup;
pub mod cluster;
pub mod memory;

use self::capacity::{judge, CapacitySearch, RunFigures, SearchPlan, Verdict};
use self::cgroup::{CpuGroups, CpuShare, Throttling};
use self::cluster::{node_configs, LocalCluster};
use crate::bench::server_stats::CpuPerRequest;
use anyhow::{bail, Context, Result};
use serde::Serialize;
use std::fmt::Write as _;
use std::path::PathBuf;

/// `funnel bench scaleout`.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct ScaleoutArgs {
    /// Bundle every size serves (trained with the shard count clusters
    /// use: the bundle's own).
    #[arg(long)]
    pub bundle: PathBuf,
    /// Node counts to measure, in order (the first is the reference).
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    pub nodes: Vec<u16>,
    /// CPU share of every node process, in cores (cgroup quota; the
    /// period is the shortest the kernel takes with a 1 ms quota).
    #[arg(long, default_value_t = 0.4)]
    pub cpu: f64,
    /// Run without CPU quotas (no root needed): the nodes then share the
    /// machine's cores and the figures do not describe equal small hosts.
    #[arg(long)]
    pub no_cpu_limit: bool,
    /// p99 target, milliseconds from each request's intended send time.
    #[arg(long, default_value_t = 25.0)]
    pub p99_ms: f64,
    /// Also fail a run whose mean coverage (share of shards answering in
    /// time) is below this, e.g. 0.99; 0 counts degraded answers as
    /// answers.
    #[arg(long, default_value_t = 0.0)]
    pub min_coverage: f64,
    /// Copies of each shard in a cluster (at most the node count).
    #[arg(long, default_value_t = 2)]
    pub replication: u32,
    /// Copies of each user partition, one cluster per value for every size
    /// above 1 (e.g. `3,2,1` on 3 nodes: every user local, then 1/3, then
    /// 2/3 of them read from another node); empty: the config's default.
    #[arg(long, value_delimiter = ',')]
    pub user_replication: Vec<u32>,
    /// Seconds measured per run.
    #[arg(long, default_value_t = 20.0)]
    pub duration: f64,
    /// Seconds of load before each run's measurement.
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// First rate tried on the first size; later sizes start from the
    /// first's capacity times their node count, times 0.7.
    #[arg(long, default_value_t = 50.0)]
    pub start_qps: f64,
    /// Factor between stepped rates.
    #[arg(long, default_value_t = 1.5)]
    pub growth: f64,
    /// Bisection runs after the first failure.
    #[arg(long, default_value_t = 3)]
    pub refine: usize,
    /// Run exactly these rates on every size instead of searching (a quick
    /// functional check).
    #[arg(long, value_delimiter = ',')]
    pub qps: Vec<f64>,
    /// User ids to ask for (as `funnel bench --users`).
    #[arg(long, default_value = "synthetic:1000")]
    pub users: String,
    /// Share of requests that post one click event instead of asking for
    /// recommendations (as `funnel bench --events-fraction`); 1 measures
    /// event ingest alone. The p99 target applies to every kind sent.
    #[arg(long, default_value_t = 0.0)]
    pub events_fraction: f64,
    /// Item ids the click events name (as `funnel bench --items`).
    #[arg(long, default_value = "synthetic:1000")]
    pub items: String,
    /// `events.ack` of every node of a cluster: `all` or `one`.
    #[arg(long, value_enum, default_value_t = AckArg::All)]
    pub event_ack: AckArg,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// First port: node i listens on BASE+i (http), BASE+100+i (grpc),
    /// BASE+200+i (internal).
    #[arg(long, default_value_t = 17000)]
    pub base_port: u16,
    /// Working directory for node configs, data and logs (replaced).
    #[arg(long, default_value = "funnel-scaleout")]
    pub dir: PathBuf,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

/// `--event-ack`: the nodes' `events.ack`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum AckArg {
    One,
    All,
}

impl From<AckArg> for crate::config::EventAck {
    fn from(a: AckArg) -> Self {
        match a {
            AckArg::One => crate::config::EventAck::One,
            AckArg::All => crate::config::EventAck::All,
        }
    }
}

/// One node's part of a run.
#[derive(Debug, Clone, Serialize)]
pub struct NodeRun {
    pub node: u16,
    /// This node's CPU over every request of the run (the nodes add up).
    pub cpu_per_request: Option<CpuPerRequest>,
    /// Share of the quota periods in which the node was throttled.
    pub throttled_fraction: Option<f64>,
    pub throttled_ms: Option<f64>,
}

/// One run at one rate.
#[derive(Debug, Clone, Serialize)]
pub struct Run {
    pub qps: f64,
    pub figures: RunFigures,
    pub p50_ms: Option<f64>,
    pub verdict: Verdict,
    pub coverage_mean: Option<f64>,
    /// CPU per request over all nodes.
    pub cpu_per_request: Option<CpuPerRequest>,
    pub nodes: Vec<NodeRun>,
    /// Share of user-state reads another node's copy served.
    pub remote_user_reads: Option<f64>,
    /// Cores the load generator used while it ran.
    pub generator_cores: f64,
    /// Set when the generator, not the cluster, may have set the limit.
    pub generator_limit: Option<String>,
}

/// One cluster size.
#[derive(Debug, Clone, Serialize)]
pub struct SizeResult {
    pub nodes: u16,
    pub replication: u32,
    /// Copies of each user partition (None: one node, or the default).
    pub user_replication: Option<u32>,
    pub capacity_qps: Option<f64>,
    /// capacity / the first size's capacity.
    pub vs_first: Option<f64>,
    /// What each node held once it served, before any load.
    pub memory: Vec<memory::NodeMemory>,
    pub runs: Vec<Run>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScaleoutReport {
    pub args: ScaleoutArgs,
    pub machine: crate::bench::report::Machine,
    pub shards: u32,
    pub share: Option<CpuShare>,
    pub controller: Option<String>,
    pub started_at: String,
    pub sizes: Vec<SizeResult>,
}

/// Checks the arguments before anything starts.
fn check(args: &ScaleoutArgs) -> Result<()> {
    if args.nodes.is_empty() || args.nodes.contains(&0) {
        bail!("--nodes needs one or more node counts of at least 1, e.g. --nodes 1,3");
    }
    if args.nodes.iter().any(|&n| n > 50) {
        bail!("--nodes: at most 50 nodes on one machine");
    }
    // written as "not positive" so that NaN is refused too
    let positive = |x: f64| x.is_finite() && x > 0.0;
    if !positive(args.p99_ms)
        || !positive(args.duration)
        || args.warmup.is_nan()
        || args.warmup < 0.0
    {
        bail!("--p99-ms and --duration must be positive and --warmup not negative");
    }
    if !(0.0..=1.0).contains(&args.min_coverage) {
        bail!("--min-coverage is a share of shards: between 0 and 1 (e.g. 0.99)");
    }
    if !(args.growth.is_finite() && args.growth > 1.0) {
        bail!("--growth must be above 1 (e.g. 1.5)");
    }
    if args.qps.iter().any(|&q| !positive(q)) || !positive(args.start_qps) {
        bail!("rates (--qps, --start-qps) must be positive");
    }
    if args.replication == 0 || args.user_replication.contains(&0) {
        bail!("--replication and --user-replication must be at least 1");
    }
    if !(0.0..=1.0).contains(&args.events_fraction) {
        bail!("--events-fraction is a share of requests: between 0 and 1 (1 = events only)");
    }
    Ok(())
}

pub fn run_scaleout(args: &ScaleoutArgs) -> Result<ScaleoutReport> {
    check(args)?;
    let bundle = std::path::absolute(&args.bundle)
        .with_context(|| format!("resolving {}", args.bundle.display()))?;
    let opened = crate::bundle::Bundle::open(&bundle, &crate::bundle::OpenCheck::default())
        .with_context(|| format!("opening the bundle {}", bundle.display()))?;
    let shards = opened.manifest().shard_count;
    drop(opened);
    let share = if args.no_cpu_limit {
        None
    } else {
        Some(CpuShare::new(args.cpu)?)
    };
    let exe = std::env::current_exe().context("finding the funnel executable")?;
    let mut report = ScaleoutReport {
        args: args.clone(),
        machine: crate::bench::report::Machine::detect(),
        shards,
        share,
        controller: None,
        started_at: crate::bench::report::rfc3339_utc(crate::bench::report::unix_seconds(
            std::time::SystemTime::now(),
        )),
        sizes: Vec::new(),
    };
    let mut first_capacity: Option<f64> = None;
    let variants: Vec<Option<u32>> = if args.user_replication.is_empty() {
        vec![None]
    } else {
        args.user_replication.iter().map(|&u| Some(u)).collect()
    };
    let runs_of: Vec<(u16, Option<u32>)> = args
        .nodes
        .iter()
        .flat_map(|&n| {
            let vs = if n > 1 { variants.clone() } else { vec![None] };
            vs.into_iter().map(move |u| (n, u))
        })
        .collect();
    for (n, user_replication) in runs_of {
        let dir = args.dir.join(format!(
            "nodes-{n}{}",
            user_replication.map_or(String::new(), |u| format!("-ur{u}"))
        ));
        if dir.exists() {
            std::fs::remove_dir_all(&dir).with_context(|| format!("clearing {}", dir.display()))?;
        }
        let groups = match share {
            Some(s) => Some(CpuGroups::create(s, n as usize)?),
            None => None,
        };
        if let Some(g) = &groups {
            report.controller = Some(format!("{:?}", g.controller()));
        }
        let mut configs = node_configs(n, args.base_port, &dir, &bundle, shards, args.replication);
        if let Some(u) = user_replication {
            for c in configs.iter_mut().filter_map(|c| c.cluster.as_mut()) {
                c.user_replication = u;
            }
        }
        for c in &mut configs {
            c.events.ack = args.event_ack.into();
        }
        let replication = configs[0].cluster.as_ref().map_or(1, |c| c.replication);
        eprintln!(
            "scaleout: starting {n} node(s){} in {}",
            share.map_or(String::new(), |s| format!(
                " at {:.2} core each (quota {} us per {} us)",
                s.cores, s.quota_us, s.period_us
            )),
            dir.display()
        );
        let mut cluster = LocalCluster::start(&exe, configs, groups, &dir, &bundle)?;
        let memory = memory::settled_memory(&cluster, std::time::Duration::from_secs(120));
        let mut runs = Vec::new();
        let capacity = if args.qps.is_empty() {
            let start = first_capacity
                .map(|c| c * n as f64 / args.nodes[0] as f64 * 0.7)
                .unwrap_or(args.start_qps);
            let mut search = CapacitySearch::new(SearchPlan {
                start,
                growth: args.growth,
                refine: args.refine,
                ..SearchPlan::default()
            });
            while let Some(qps) = search.next() {
                let run = one_run(args, &mut cluster, n, qps)?;
                search.record(qps, run.verdict.passed);
                runs.push(run);
            }
            search.capacity()
        } else {
            for &qps in &args.qps {
                runs.push(one_run(args, &mut cluster, n, qps)?);
            }
            runs.iter()
                .filter(|r| r.verdict.passed)
                .map(|r| r.qps)
                .max_by(f64::total_cmp)
        };
        cluster.stop();
        drop(cluster);
        if first_capacity.is_none() && report.sizes.is_empty() {
            first_capacity = capacity;
        }
        report.sizes.push(SizeResult {
            nodes: n,
            replication,
            user_replication,
            capacity_qps: capacity,
            vs_first: match (capacity, first_capacity) {
                (Some(c), Some(f)) if f > 0.0 => Some(c / f),
                _ => None,
            },
            memory,
            runs,
        });
    }
    Ok(report)
}

/// User + system CPU seconds of this process (the load generator).
fn own_cpu_seconds() -> f64 {
    crate::telemetry::cpu::process_cpu_micros() as f64 / 1e6
}

fn one_run(args: &ScaleoutArgs, cluster: &mut LocalCluster, n: u16, qps: f64) -> Result<Run> {
    let bench = crate::bench::BenchArgs::try_parse_from([
        "bench".to_string(),
        "--target".into(),
        cluster.targets().join(","),
        "--qps".into(),
        format!("{qps}"),
        "--duration".into(),
        format!("{}", args.duration),
        "--warmup".into(),
        format!("{}", args.warmup),
        "--users".into(),
        args.users.clone(),
        "--items".into(),
        args.items.clone(),
        "--events-fraction".into(),
        format!("{}", args.events_fraction),
        "--threads".into(),
        format!("{}", args.threads),
    ])
    .map_err(|e| anyhow::anyhow!("building the load: {e}"))?;
    let throttle_before: Vec<Throttling> = (0..n as usize)
        .map(|i| {
            cluster
                .groups
                .as_ref()
                .map(|g| g.throttling(i))
                .unwrap_or_default()
        })
        .collect();
    let (cpu0, t0) = (own_cpu_seconds(), std::time::Instant::now());
    let r = crate::bench::run_blocking(&bench)?;
    let generator_cores = (own_cpu_seconds() - cpu0) / t0.elapsed().as_secs_f64().max(1e-9);
    cluster.ensure_alive()?;
    // the target holds for every kind of request the run sent; p50 is
    // the recommends' (the events' when only events were sent)
    let lat = match r.recommend.latency.count {
        0 => &r.events.latency,
        _ => &r.recommend.latency,
    };
    let p99_ms = [&r.recommend.latency, &r.events.latency]
        .into_iter()
        .filter(|l| l.count > 0)
        .map(|l| l.p99_us as f64 / 1000.0)
        .reduce(f64::max);
    let figures = RunFigures {
        due: r.requests.scheduled,
        sent: r.requests.sent,
        errors: r.requests.errors,
        p99_ms,
        coverage: r.recommend.coverage_mean,
    };
    let verdict = judge(&figures, args.p99_ms, args.min_coverage);
    let cores = std::thread::available_parallelism().map_or(1, |c| c.get()) as f64;
    let left = cores
        - cluster
            .groups
            .as_ref()
            .map_or(cores, |g| g.share.cores * n as f64);
    // requests the generator held back because too many were in flight
    // mean slow answers (the cluster's limit) unless the generator itself
    // was short of CPU, which these checks catch
    let generator_limit = if !verdict.passed && left > 0.0 && generator_cores > 0.9 * left {
        Some(format!(
            "the generator used {generator_cores:.2} of the {left:.2} cores the nodes leave free"
        ))
    } else if !verdict.passed && r.send_lag.p99_us as f64 / 1000.0 > args.p99_ms / 2.0 {
        Some(format!(
            "requests left the generator late (send lag p99 {:.1} ms)",
            r.send_lag.p99_us as f64 / 1000.0
        ))
    } else {
        None
    };
    let nodes = (0..n as usize)
        .map(|i| {
            let t = cluster
                .groups
                .as_ref()
                .map(|g| g.throttling(i).since(&throttle_before[i]));
            NodeRun {
                node: i as u16 + 1,
                cpu_per_request: r.server_cpu.per_target.get(i).cloned(),
                throttled_fraction: t
                    .filter(|t| t.periods > 0)
                    .map(|t| t.throttled_periods as f64 / t.periods as f64),
                throttled_ms: t.map(|t| t.throttled_us as f64 / 1000.0),
            }
        })
        .collect();
    let run = Run {
        qps,
        figures,
        p50_ms: (lat.count > 0).then_some(lat.p50_us as f64 / 1000.0),
        verdict,
        coverage_mean: r.recommend.coverage_mean,
        cpu_per_request: r.server_cpu.per_request.clone(),
        nodes,
        remote_user_reads: r.server_cpu.remote_user_reads,
        generator_cores,
        generator_limit,
    };
    eprintln!(
        "scaleout: {n} node(s) at {qps:.1}/s: {} ({}){}",
        if run.verdict.passed { "pass" } else { "fail" },
        run.verdict.reason,
        run.cpu_per_request
            .as_ref()
            .map_or(String::new(), |c| format!(
                ", CPU {:.0} us/request",
                c.total_us
            ))
    );
    Ok(run)
}

impl ScaleoutReport {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\": \"{e}\"}}"))
    }

    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "funnel bench scaleout  {}  bundle {} ({} shards)",
            self.started_at,
            self.args.bundle.display(),
            self.shards
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}",
            self.machine.nproc, self.machine.cpu_model
        );
        let _ = writeln!(
            out,
            "share:   {}",
            match &self.share {
                Some(s) => format!(
                    "{:.3} core per node (quota {} us / period {} us, {})",
                    s.cores,
                    s.quota_us,
                    s.period_us,
                    self.controller.as_deref().unwrap_or("?")
                ),
                None => "none (--no-cpu-limit: nodes share the machine)".into(),
            }
        );
        if self.args.events_fraction > 0.0 {
            let _ = writeln!(
                out,
                "load:    {:.0}% click events (events.ack = {:?}), the rest recommends",
                self.args.events_fraction * 100.0,
                self.args.event_ack
            );
        }
        let _ = writeln!(
            out,
            "target:  p99 <= {} ms from intended send, no errors{}; {} s runs after {} s warm-up\n",
            self.args.p99_ms,
            if self.args.min_coverage > 0.0 {
                format!(", coverage >= {}", self.args.min_coverage)
            } else {
                String::new()
            },
            self.args.duration,
            self.args.warmup
        );
        let _ = writeln!(
            out,
            "{:>5} {:>3} {:>3} {:>10} {:>8} {:>7}   {:>9} {:>9} {:>9} {:>9} {:>9}",
            "nodes",
            "R",
            "UR",
            "capacity",
            "vs first",
            "remote",
            "CPU/req",
            "ann",
            "ranking",
            "rpc",
            "other"
        );
        for s in &self.sizes {
            let at = s
                .capacity_qps
                .and_then(|c| s.runs.iter().find(|r| r.qps == c));
            let cpu = at.and_then(|r| r.cpu_per_request.as_ref());
            let f = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0} us"));
            let _ = writeln!(
                out,
                "{:>5} {:>3} {:>3} {:>10} {:>8} {:>7}   {:>9} {:>9} {:>9} {:>9} {:>9}",
                s.nodes,
                s.replication,
                s.user_replication.map_or("-".into(), |u| u.to_string()),
                s.capacity_qps
                    .map_or("none".into(), |c| format!("{c:.1}/s")),
                s.vs_first.map_or("-".into(), |v| format!("{v:.2}x")),
                at.and_then(|r| r.remote_user_reads)
                    .map_or("-".into(), |x| format!("{:.0}%", x * 100.0)),
                f(cpu.map(|c| c.total_us)),
                f(cpu.and_then(|c| c.ann_us)),
                f(cpu.and_then(|c| c.ranking_us)),
                f(cpu.and_then(|c| c.rpc_us)),
                f(cpu.and_then(|c| c.other_us)),
            );
        }
        for s in &self.sizes {
            let _ = writeln!(
                out,
                "\n{} node(s){}, memory before load:",
                s.nodes,
                s.user_replication
                    .map_or(String::new(), |u| format!(", user replication {u}"))
            );
            let mib = |b: f64| format!("{:.1} MiB", b / (1024.0 * 1024.0));
            for m in &s.memory {
                let _ = writeln!(
                    out,
                    "  node {}: {} user states, {} by the store's estimate, RSS {}",
                    m.node,
                    m.user_states.map_or("?".into(), |u| format!("{u:.0}")),
                    m.user_state_bytes.map_or("?".into(), mib),
                    m.rss_bytes.map_or("?".into(), |b| mib(b as f64)),
                );
            }
        }
        for s in &self.sizes {
            let _ = writeln!(
                out,
                "\n{} node(s){}, runs:",
                s.nodes,
                s.user_replication.map_or(String::new(), |u| format!(
                    ", {u} cop(ies) per user partition"
                ))
            );
            for r in &s.runs {
                let _ = writeln!(
                    out,
                    "  {:>8.1}/s  {}  {}{}  p50 {}  coverage {}  generator {:.2} cores{}",
                    r.qps,
                    if r.verdict.passed { "pass" } else { "FAIL" },
                    r.verdict.reason,
                    r.cpu_per_request
                        .as_ref()
                        .map_or(String::new(), |c| format!("  CPU {:.0} us/req", c.total_us)),
                    r.p50_ms.map_or("-".into(), |p| format!("{p:.1} ms")),
                    r.coverage_mean.map_or("-".into(), |c| format!("{c:.4}")),
                    r.generator_cores,
                    r.generator_limit
                        .as_ref()
                        .map_or(String::new(), |g| format!("  [generator-limited? {g}]")),
                );
                for nr in &r.nodes {
                    if let Some(c) = &nr.cpu_per_request {
                        let o = |v: Option<f64>| v.map_or("-".to_string(), |x| format!("{x:.0}"));
                        let _ = writeln!(
                            out,
                            "      node {}: {:.0} us/req (ann {}, ranking {}, rpc {}, other {}){}",
                            nr.node,
                            c.total_us,
                            o(c.ann_us),
                            o(c.ranking_us),
                            o(c.rpc_us),
                            o(c.other_us),
                            nr.throttled_fraction.map_or(String::new(), |t| format!(
                                ", throttled in {:.1}% of periods",
                                t * 100.0
                            ))
                        );
                    }
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args() -> ScaleoutArgs {
        ScaleoutArgs {
            bundle: "b".into(),
            nodes: vec![1, 3],
            cpu: 0.4,
            no_cpu_limit: false,
            p99_ms: 25.0,
            min_coverage: 0.0,
            replication: 2,
            user_replication: vec![],
            duration: 20.0,
            warmup: 5.0,
            start_qps: 50.0,
            growth: 1.5,
            refine: 3,
            qps: vec![],
            users: "synthetic:10".into(),
            events_fraction: 0.0,
            items: "synthetic:10".into(),
            event_ack: AckArg::All,
            threads: 2,
            base_port: 17000,
            dir: "d".into(),
            json: false,
        }
    }

    #[test]
    fn bad_arguments_are_refused_with_what_to_do() {
        assert!(check(&args()).is_ok());
        let e = check(&ScaleoutArgs {
            nodes: vec![0],
            ..args()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--nodes"), "{e}");
        assert!(check(&ScaleoutArgs {
            growth: 1.0,
            ..args()
        })
        .is_err());
        assert!(check(&ScaleoutArgs {
            qps: vec![10.0, -1.0],
            ..args()
        })
        .is_err());
        assert!(check(&ScaleoutArgs {
            p99_ms: f64::NAN,
            ..args()
        })
        .is_err());
        assert!(check(&ScaleoutArgs {
            min_coverage: 1.5,
            ..args()
        })
        .is_err());
        assert!(check(&ScaleoutArgs {
            user_replication: vec![2, 0],
            ..args()
        })
        .is_err());
        let e = check(&ScaleoutArgs {
            events_fraction: 1.5,
            ..args()
        })
        .unwrap_err();
        assert!(e.to_string().contains("--events-fraction"), "{e}");
    }
}
