//! `funnel bench` against a real local HTTP server: schedule, error kinds,
//! coordinated omission, coverage aggregation, CPU per request, bad input.
//!
//! Timing bounds here are schedule sanity checks with wide margins (the
//! machine is shared); speed itself is never asserted.

mod bench_support;

use bench_support::{closed_url, start, Behaviour, Counts, STAGES};
use funnel::bench::{run, BenchArgs, BenchReport};
use std::time::Duration;

fn args(target: &str, extra: &[&str]) -> BenchArgs {
    let mut argv = vec!["bench", "--target", target];
    argv.extend_from_slice(extra);
    BenchArgs::try_parse_from(argv).expect("test arguments parse")
}

async fn bench(target: &str, extra: &[&str]) -> BenchReport {
    run(&args(target, extra)).await.expect("the benchmark runs")
}

fn error_count(report: &BenchReport, kind: &str) -> u64 {
    report.errors.get(kind).copied().unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_loop_keeps_the_asked_rate_and_skips_the_warmup() {
    let server = start(Behaviour::default());
    let report = bench(
        &server.url,
        &["--qps", "200", "--duration", "2", "--warmup", "0.5"],
    )
    .await;
    // The schedule is exact by construction: 200/s over 2 s.
    assert_eq!(report.requests.scheduled, 400);
    assert!(
        (380..=400).contains(&report.requests.sent),
        "{:?}",
        report.requests
    );
    assert!((190.0..=210.0).contains(&report.requests.achieved_qps));
    assert_eq!(
        report.recommend.ok, report.requests.sent,
        "{:?}",
        report.errors
    );
    // The server also saw the 100 warm-up requests, which are not reported.
    assert_eq!(server.get(|c| &c.recommends), 500);
    assert_eq!(
        server.get(|c| &c.malformed),
        0,
        "request bodies have the API shape"
    );
    // Requests were spread over the time, not sent in a burst: the server saw
    // them over ~2.5 s, and about half in each half of that span.
    let arrivals = server.counts.arrivals.lock().unwrap().clone();
    let span = (*arrivals.last().unwrap() - arrivals[0]).as_secs_f64();
    assert!((2.2..=3.5).contains(&span), "span {span}");
    let middle = arrivals[0] + Duration::from_secs_f64(span / 2.0);
    let first_half = arrivals.iter().filter(|t| **t < middle).count();
    assert!((175..=325).contains(&first_half), "{first_half}");
    assert!(report.server_cpu.per_request.is_some());
    let table = report.to_table();
    assert!(table.contains("recommend, from intended send"), "{table}");
    let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
    assert_eq!(json["requests"]["scheduled"], 400);
    assert_eq!(json["args"]["qps"], 200.0);
    assert!(json["machine"]["nproc"].as_u64().unwrap() >= 1);
    assert!(json["started_at"].as_str().unwrap().ends_with('Z'));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_classified_by_kind_exactly_as_the_server_answered() {
    let server = start(Behaviour {
        fail_every: Some(5),
        garbage_every: Some(7),
        slow_every: Some(11),
        slow_delay: Duration::from_millis(600),
        ..Behaviour::default()
    });
    let report = bench(
        &server.url,
        &[
            "--qps",
            "100",
            "--duration",
            "1.5",
            "--warmup",
            "0",
            "--timeout-ms",
            "200",
        ],
    )
    .await;
    let served = |f: fn(&Counts) -> &std::sync::atomic::AtomicU64| server.get(f);
    assert_eq!(report.requests.scheduled, 150);
    assert_eq!(error_count(&report, "http_503"), served(|c| &c.failed_503));
    assert_eq!(error_count(&report, "bad_response"), served(|c| &c.garbage));
    assert_eq!(error_count(&report, "timeout"), served(|c| &c.slow));
    assert!(served(|c| &c.failed_503) >= 25 && served(|c| &c.slow) >= 5);
    assert_eq!(
        report.server_error_codes.get("unavailable").copied(),
        Some(served(|c| &c.failed_503))
    );
    // Slow answers arrive after the timeout (the server may not even finish
    // them once the client hangs up), so everything else is a success.
    let quick = served(|c| &c.recommends)
        - served(|c| &c.failed_503)
        - served(|c| &c.garbage)
        - served(|c| &c.slow);
    assert_eq!(report.recommend.ok, quick);
    assert_eq!(report.requests.errors + report.requests.ok, 150);
    // Failed requests are in the all-outcomes latency; timeouts are there
    // with at least the timeout.
    assert_eq!(report.recommend.latency_all_outcomes.count, 150);
    assert!(report.recommend.latency_all_outcomes.max_us >= 200_000);
    assert!(report.warnings.iter().any(|w| w.contains("failed")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_port_is_a_connect_error_for_every_request() {
    let url = closed_url();
    let report = bench(&url, &["--qps", "50", "--duration", "0.4", "--warmup", "0"]).await;
    assert_eq!(report.requests.scheduled, 20);
    assert_eq!(error_count(&report, "connect"), 20, "{:?}", report.errors);
    assert_eq!(report.recommend.ok, 0);
    let cpu = report.server_cpu.unavailable.as_deref().unwrap();
    assert!(
        cpu.starts_with("server CPU counters not available"),
        "{cpu}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_connection_limit_are_refused_not_delayed() {
    let server = start(Behaviour {
        delay: Duration::from_millis(200),
        ..Behaviour::default()
    });
    let report = bench(
        &server.url,
        &[
            "--qps",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--connections",
            "2",
        ],
    )
    .await;
    let overload = error_count(&report, "client_overload");
    assert_eq!(
        report.requests.scheduled, 100,
        "the schedule did not slow down"
    );
    assert_eq!(report.requests.sent + overload, 100);
    // Two slots of 200 ms over 1 s: about 10 sent, certainly under half.
    assert!(overload >= 50, "{:?}", report.requests);
    assert_eq!(server.get(|c| &c.recommends), report.requests.sent);
    assert!(report.warnings.iter().any(|w| w.contains("--connections")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_stall_shows_in_latency_from_the_intended_time() {
    let server = start(Behaviour {
        stall_at: Some(100),
        stall: Duration::from_millis(300),
        ..Behaviour::default()
    });
    let report = bench(
        &server.url,
        &["--qps", "200", "--duration", "2", "--warmup", "0"],
    )
    .await;
    let (latency, service) = (&report.recommend.latency, &report.recommend.service);
    assert_eq!(report.recommend.ok, 400, "{:?}", report.errors);
    // The request that hit the stall waited >= 300 ms; the ~60 due during it
    // waited for its end, so the top 1% all show most of the stall.
    assert!(latency.max_us >= 295_000, "{latency:?}");
    assert!(latency.p99_us >= 200_000, "{latency:?}");
    // Everything else was quick: the stall is not smeared over the median.
    assert!(service.p50_us < 100_000, "{service:?}");
    assert!(latency.p50_us < 100_000, "{latency:?}");
}

#[test]
fn a_generator_stall_is_not_hidden_by_measuring_from_the_actual_send() {
    // A single-threaded runtime: blocking it for 300 ms stops the scheduler,
    // like a GC pause or a descheduled load generator. The requests due in
    // that time go out late, all at once, and are answered quickly.
    let server = start(Behaviour::default());
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let report = runtime.block_on(async {
        tokio::spawn(async {
            tokio::time::sleep(Duration::from_millis(700)).await;
            std::thread::sleep(Duration::from_millis(300));
        });
        bench(
            &server.url,
            &["--qps", "200", "--duration", "2", "--warmup", "0"],
        )
        .await
    });
    let (latency, service) = (&report.recommend.latency, &report.recommend.service);
    assert_eq!(report.recommend.ok, 400, "{:?}", report.errors);
    assert!(latency.max_us >= 290_000, "{latency:?}");
    assert!(report.send_lag.max_us >= 250_000, "{:?}", report.send_lag);
    // ~60 requests were due during the stall, waiting up to 300 ms from
    // their intended time: more than the top 1%.
    assert!(latency.p99_us >= 200_000, "{latency:?}");
    // Measured from the actual send, the stall all but vanishes: only a
    // request already in flight when the runtime froze (at most one or two
    // at 5 ms spacing) carries it.
    assert!(service.p99_us < 100_000, "{service:?}");
    assert!(report.warnings.iter().any(|w| w.contains("sent late")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coverage_degraded_reasons_and_stage_timings_are_aggregated() {
    let server = start(Behaviour {
        partial_odd: true,
        empty_every: Some(4),
        ..Behaviour::default()
    });
    let report = bench(
        &server.url,
        &["--qps", "100", "--duration", "1", "--warmup", "0"],
    )
    .await;
    let ok = server.get(|c| &c.ok);
    let partial = server.get(|c| &c.partial);
    assert_eq!(report.recommend.ok, ok);
    let server_mean = server.get(|c| &c.coverage_milli) as f64 / 1000.0 / ok as f64;
    let mean = report.recommend.coverage_mean.unwrap();
    assert!((mean - server_mean).abs() < 1e-9, "{mean} vs {server_mean}");
    assert!(
        (mean - 0.75).abs() < 0.01,
        "half the answers have 0.5: {mean}"
    );
    let below = report.recommend.coverage_below_one_fraction;
    assert!((below - partial as f64 / ok as f64).abs() < 1e-12);
    assert_eq!(report.recommend.degraded_top.len(), 1);
    assert_eq!(report.recommend.degraded_top[0].reason, "shard_timeout:1");
    assert_eq!(report.recommend.degraded_top[0].count, partial);
    let zero = report.recommend.zero_items_fraction;
    assert!((zero - server.get(|c| &c.empty) as f64 / ok as f64).abs() < 1e-12);
    let stages: Vec<(String, f64)> = report
        .recommend
        .server_stage_means
        .iter()
        .map(|s| (s.stage.clone(), s.mean_us))
        .collect();
    let expected: Vec<(String, f64)> = STAGES.iter().map(|(s, m)| (s.to_string(), *m)).collect();
    assert_eq!(stages, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_per_request_comes_from_the_metrics_deltas() {
    // 2 ms total, 0.5 ms ann, 1 ms ranking per answered request.
    let server = start(Behaviour::default());
    let report = bench(
        &server.url,
        &["--qps", "100", "--duration", "1", "--warmup", "0"],
    )
    .await;
    let cpu = report
        .server_cpu
        .per_request
        .as_ref()
        .expect("counters exported");
    assert_eq!(cpu.requests, 100);
    assert_eq!(cpu.server_counted_requests, Some(100.0));
    let close = |a: f64, b: f64| (a - b).abs() < 1e-3;
    assert!(close(cpu.total_us, 2000.0), "{cpu:?}");
    assert!(close(cpu.ann_us.unwrap(), 500.0), "{cpu:?}");
    assert!(close(cpu.ranking_us.unwrap(), 1000.0), "{cpu:?}");
    assert!(close(cpu.other_us.unwrap(), 500.0), "{cpu:?}");
    assert!(report.to_table().contains("server CPU per request"));

    let bare = start(Behaviour {
        cpu_per_request: None,
        ..Behaviour::default()
    });
    let report = bench(
        &bare.url,
        &["--qps", "50", "--duration", "0.2", "--warmup", "0"],
    )
    .await;
    assert!(report.server_cpu.per_request.is_none());
    let why = report.server_cpu.unavailable.as_deref().unwrap();
    assert!(
        why.starts_with("server CPU counters not available"),
        "{why}"
    );
    assert!(why.contains("404"), "{why}");
    assert!(report
        .to_table()
        .contains("server CPU counters not available"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn several_targets_share_the_load_round_robin_and_events_mix_in() {
    let a = start(Behaviour::default());
    let b = start(Behaviour::default());
    let targets = format!("{},{}", a.url, b.url);
    let report = bench(
        &targets,
        &[
            "--qps",
            "100",
            "--duration",
            "1",
            "--warmup",
            "0",
            "--events-fraction",
            "0.3",
            "--items",
            "synthetic:50",
        ],
    )
    .await;
    let per_server = |s: &bench_support::TestServer| s.get(|c| &c.answered);
    assert_eq!(per_server(&a), 50);
    assert_eq!(per_server(&b), 50);
    let events = a.get(|c| &c.events) + b.get(|c| &c.events);
    assert_eq!(report.events.ok, events);
    assert_eq!(report.events.accepted, events);
    assert!((15..=45).contains(&events), "about 30% of 100: {events}");
    assert_eq!(report.recommend.ok + report.events.ok, 100);
    assert_eq!(a.get(|c| &c.malformed) + b.get(|c| &c.malformed), 0);
    let cpu = report.server_cpu.per_request.as_ref().unwrap();
    assert_eq!(cpu.requests, 100);
    assert!((cpu.total_us - 2000.0).abs() < 1e-3, "{cpu:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_fails_before_any_load_with_a_clear_message() {
    let err = run(&args("localhost:8080", &["--qps", "10", "--duration", "1"]))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("--target") && err.contains("http://"), "{err}");
    let server = start(Behaviour::default());
    let err = run(&args(
        &server.url,
        &["--qps", "10", "--duration", "1", "--users", "synthetic:x"],
    ))
    .await
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("--users") && err.contains("synthetic:N"),
        "{err}"
    );
    assert_eq!(server.get(|c| &c.recommends), 0);
}
