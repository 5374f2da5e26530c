//! `funnel bench`: an open-loop load generator for the serving HTTP API that
//! reports latency honestly.
//!
//! Owns: the run itself — scheduling requests at fixed intended times,
//! handing them to the HTTP client without ever waiting for earlier ones,
//! collecting samples, scraping `/metrics` around the measured window, and
//! assembling the report. Must not touch: the server's code or state beyond
//! its public HTTP API.
//!
//! Why open loop: a closed-loop client (send, wait, send) stops sending while
//! the server stalls, so the stall hits one request in the figures instead of
//! every request that real users would have sent during it ("coordinated
//! omission"). Here request i is due at t0 + offset(i) whatever happens, and
//! latency is measured from that intended time; when more than
//! --connections requests are pending, a due request is counted as a
//! `client_overload` error rather than delayed.

pub mod args;
pub mod client;
pub mod idspec;
pub mod record;
pub mod report;
pub mod scaleout;
pub mod schedule;
pub mod server_stats;

pub use args::{Arrival, BenchArgs, BenchError, Plan};
pub use report::BenchReport;

use client::{ErrorKind, HttpClient, Outcome};
use record::{CallKind, Recorder, Sample};
use report::{RunFacts, ServerCpu};
use schedule::{Call, Schedule, TrafficMix};
use server_stats::{cpu_counters, cpu_per_request, CpuCounters, TargetWindow};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{mpsc, Semaphore};
use tokio::time::Instant;

/// Head start between planning and the first request, so request 0 is not
/// already late when the scheduler reaches it.
const START_LEAD: Duration = Duration::from_millis(20);

/// What every request task shares.
struct Shared {
    plan: Plan,
    client: HttpClient,
}

/// Builds a runtime with `--threads` workers and runs the benchmark on it.
/// This is the entry point for the synchronous `funnel` CLI.
pub fn run_blocking(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.threads)
        .enable_all()
        .thread_name("funnel-bench")
        .build()
        .map_err(BenchError::Runtime)?;
    runtime.block_on(run(args))
}

/// Runs the benchmark on the current tokio runtime (`--threads` is only
/// honoured by `run_blocking`). The caller's task runs the scheduler; request
/// tasks are spawned onto the runtime.
pub async fn run(args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let plan = Plan::from_args(args)?;
    let started = SystemTime::now();
    let client = client::build_client(plan.connections, plan.timeout);
    let shared = Arc::new(Shared { plan, client });
    let plan = &shared.plan;

    // The "before" scrape belongs at the start of the measured window; with
    // no warm-up that is before the first request, so it runs before t0.
    let early_before = if plan.warmup.is_zero() {
        Some(scrape_all(&shared).await)
    } else {
        None
    };
    let t0 = Instant::now() + START_LEAD;
    let before_scrape = {
        let shared = Arc::clone(&shared);
        let measure_from = t0 + plan.warmup;
        tokio::spawn(async move {
            match early_before {
                Some(counters) => counters,
                None => {
                    tokio::time::sleep_until(measure_from).await;
                    scrape_all(&shared).await
                }
            }
        })
    };

    let (tx, mut rx) = mpsc::unbounded_channel::<Sample>();
    let targets = plan.targets.len();
    let collector = tokio::spawn(async move {
        let mut recorder = Recorder::new(targets);
        while let Some(sample) = rx.recv().await {
            recorder.record(&sample);
        }
        recorder
    });

    let schedule_end = drive_schedule(&shared, t0, tx).await;
    let recorder = collector
        .await
        .map_err(|e| anyhow::anyhow!("the sample collector stopped: {e}"))?;
    let drain_seconds = schedule_end.elapsed().as_secs_f64();

    let before = before_scrape
        .await
        .map_err(|e| anyhow::anyhow!("the metrics scrape task stopped: {e}"))?;
    let after = scrape_all(&shared).await;
    let server_cpu = server_cpu(plan, &before, &after, &recorder.answered_by_target);

    let facts = RunFacts {
        // args_os: a non-UTF-8 argument must not panic the report.
        command_line: std::env::args_os()
            .map(|a| a.to_string_lossy().into_owned())
            .collect(),
        started,
        args: args.clone(),
        users: plan.users.len(),
        items: plan.items.len(),
        measured_seconds: plan.duration.as_secs_f64(),
        drain_seconds,
        server_cpu,
    };
    Ok(BenchReport::assemble(facts, &recorder))
}

/// Sends every request of the schedule at its intended time; returns when
/// the last one has been handed off (not answered). Samples of the measured
/// window go to `tx`; the channel closes once every request task is done.
async fn drive_schedule(
    shared: &Arc<Shared>,
    t0: Instant,
    tx: mpsc::UnboundedSender<Sample>,
) -> Instant {
    let plan = &shared.plan;
    let horizon = plan.warmup + plan.duration;
    let in_flight = Arc::new(Semaphore::new(plan.connections));
    let mut mix = TrafficMix::new(
        plan.seed,
        plan.users.len(),
        plan.items.len(),
        plan.events_fraction,
    );
    for (index, offset) in Schedule::new(plan.arrival, plan.qps, horizon, plan.seed) {
        let intended = t0 + offset;
        tokio::time::sleep_until(intended).await;
        let call = mix.next_call();
        let measured = offset >= plan.warmup;
        let target = (index % plan.targets.len() as u64) as usize;
        let call_kind = match call {
            Call::Recommend { .. } => CallKind::Recommend,
            Call::Event { .. } => CallKind::Event,
        };
        let Ok(permit) = Arc::clone(&in_flight).try_acquire_owned() else {
            if measured {
                // Never sent: no send time, no service time; the latency is 0
                // because nothing was measured (it is only an error count).
                let _ = tx.send(Sample {
                    target,
                    call: call_kind,
                    send_lag: None,
                    latency: Duration::ZERO,
                    service: None,
                    outcome: Outcome::Failed {
                        kind: ErrorKind::ClientOverload,
                        server_code: None,
                    },
                });
            }
            continue;
        };
        let shared = Arc::clone(shared);
        let tx = tx.clone();
        tokio::spawn(async move {
            let sent = Instant::now();
            let outcome = send(&shared, index, target, call).await;
            let done = Instant::now();
            drop(permit);
            if measured {
                let _ = tx.send(Sample {
                    target,
                    call: call_kind,
                    send_lag: Some(sent.saturating_duration_since(intended)),
                    latency: done.saturating_duration_since(intended),
                    service: Some(done.saturating_duration_since(sent)),
                    outcome,
                });
            }
        });
    }
    Instant::now()
}

async fn send(shared: &Shared, index: u64, target: usize, call: Call) -> Outcome {
    let plan = &shared.plan;
    let target = &plan.targets[target];
    match call {
        Call::Recommend { user } => {
            let request_id = format!("bench-{}-{index}", plan.seed);
            let body =
                client::recommend_body(&plan.users[user], plan.k, plan.deadline_ms, &request_id);
            client::recommend(
                &shared.client,
                target.uri("/v1/recommend"),
                body,
                plan.timeout,
            )
            .await
        }
        Call::Event { user, item } => {
            let now = report::unix_seconds(SystemTime::now());
            let body = client::click_event_body(&plan.users[user], &plan.items[item], now);
            client::post_events(&shared.client, target.uri("/v1/events"), body, plan.timeout).await
        }
    }
}

/// CPU counters of every target, or why a target's could not be read.
async fn scrape_all(shared: &Shared) -> Vec<Result<CpuCounters, client::ScrapeError>> {
    let scrapes = shared.plan.targets.iter().map(|t| async {
        let text =
            client::fetch_metrics(&shared.client, t.uri("/metrics"), shared.plan.timeout).await?;
        Ok(cpu_counters(&server_stats::parse_exposition(&text)))
    });
    futures::future::join_all(scrapes).await
}

fn server_cpu(
    plan: &Plan,
    before: &[Result<CpuCounters, client::ScrapeError>],
    after: &[Result<CpuCounters, client::ScrapeError>],
    answered: &[u64],
) -> ServerCpu {
    let unavailable = |reason: String| ServerCpu {
        per_request: None,
        per_target: Vec::new(),
        unavailable: Some(reason),
        remote_user_reads: None,
    };
    let mut windows = Vec::with_capacity(plan.targets.len());
    for ((b, a), completed) in before.iter().zip(after).zip(answered) {
        match (b, a) {
            (Ok(before), Ok(after)) => windows.push(TargetWindow {
                before: *before,
                after: *after,
                completed: *completed,
            }),
            (Err(e), _) | (_, Err(e)) => {
                return unavailable(format!(
                    "server CPU counters not available: cannot scrape metrics: {e}"
                ))
            }
        }
    }
    let names: Vec<String> = plan.targets.iter().map(|t| t.given.clone()).collect();
    match cpu_per_request(&names, &windows) {
        Ok(c) => ServerCpu {
            per_target: names
                .iter()
                .zip(&windows)
                .filter_map(|(n, w)| {
                    // one target's counters over all of the run's responses
                    let all = TargetWindow {
                        completed: c.requests,
                        ..*w
                    };
                    cpu_per_request(std::slice::from_ref(n), &[all]).ok()
                })
                .collect(),
            per_request: Some(c),
            unavailable: None,
            remote_user_reads: server_stats::remote_user_read_share(&windows),
        },
        Err(e) => unavailable(e.to_string()),
    }
}
