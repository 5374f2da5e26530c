//! A tiny stand-in for the funnel serving API, for `funnel bench` tests.
//!
//! It answers `/v1/recommend` with canned JSON after a configurable delay,
//! can stall, fail, time out or send garbage on chosen requests, answers
//! `/v1/events`, and exports CPU counters on `/metrics` that grow by a fixed
//! amount per answered request — and it counts everything it did, so tests
//! compare the generator's figures with the server's own truth.

#![allow(dead_code)]

use actix_web::{web, App, HttpResponse, HttpServer};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What the server does; request n is the n-th recommend it receives (0-based).
#[derive(Debug, Clone)]
pub struct Behaviour {
    pub delay: Duration,
    /// Every n-th request (n % every == 0) answers 503 with an error body.
    pub fail_every: Option<u64>,
    /// Every n-th request (not failed) answers 200 with a non-JSON body.
    pub garbage_every: Option<u64>,
    /// Every n-th request (neither failed nor garbage) sleeps `slow_delay`.
    pub slow_every: Option<u64>,
    pub slow_delay: Duration,
    /// Request n starts a stall: every request in progress until it ends
    /// waits for its end (a whole-process pause, like a GC or a swap storm).
    pub stall_at: Option<u64>,
    pub stall: Duration,
    /// Odd requests report coverage 0.5 and a degraded reason.
    pub partial_odd: bool,
    /// Every n-th successful answer has no items.
    pub empty_every: Option<u64>,
    /// CPU seconds per answered request: (total, ann, ranking); `None`
    /// makes `/metrics` answer 404.
    pub cpu_per_request: Option<(f64, f64, f64)>,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            delay: Duration::from_millis(1),
            fail_every: None,
            garbage_every: None,
            slow_every: None,
            slow_delay: Duration::ZERO,
            stall_at: None,
            stall: Duration::ZERO,
            partial_odd: false,
            empty_every: None,
            cpu_per_request: Some((0.002, 0.0005, 0.001)),
        }
    }
}

pub const CPU_BASE_SECONDS: f64 = 5.0;
pub const STAGES: [(&str, f64); 2] = [("recall", 800.0), ("rank", 400.0)];

/// What the server did, counted as it did it.
#[derive(Default)]
pub struct Counts {
    pub recommends: AtomicU64,
    /// Answers of any kind (drives the CPU counters).
    pub answered: AtomicU64,
    pub ok: AtomicU64,
    pub failed_503: AtomicU64,
    pub garbage: AtomicU64,
    pub slow: AtomicU64,
    pub partial: AtomicU64,
    pub empty: AtomicU64,
    pub events: AtomicU64,
    /// Bodies that were not the API's request shape.
    pub malformed: AtomicU64,
    /// Arrival time of every recommend, for schedule checks.
    pub arrivals: Mutex<Vec<Instant>>,
    /// Coverage values of successful answers, summed in thousandths.
    pub coverage_milli: AtomicU64,
}

pub struct TestServer {
    pub url: String,
    pub counts: Arc<Counts>,
}

impl TestServer {
    pub fn get(&self, c: impl Fn(&Counts) -> &AtomicU64) -> u64 {
        c(&self.counts).load(Ordering::SeqCst)
    }
}

struct State {
    behaviour: Behaviour,
    counts: Arc<Counts>,
    stall_until: Mutex<Option<Instant>>,
}

fn json(status: u16, body: serde_json::Value) -> HttpResponse {
    HttpResponse::build(actix_web::http::StatusCode::from_u16(status).expect("valid test status"))
        .content_type("application/json")
        .body(body.to_string())
}

async fn recommend(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let (b, c) = (&state.behaviour, &state.counts);
    let n = c.recommends.fetch_add(1, Ordering::SeqCst);
    c.arrivals.lock().unwrap().push(Instant::now());
    let well_formed = serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .is_some_and(|v| v["user_id"].is_string() && v["k"].is_u64());
    if !well_formed {
        c.malformed.fetch_add(1, Ordering::SeqCst);
    }
    if b.stall_at == Some(n) {
        *state.stall_until.lock().unwrap() = Some(Instant::now() + b.stall);
    }
    let stall_end = *state.stall_until.lock().unwrap();
    if let Some(end) = stall_end {
        let now = Instant::now();
        if end > now {
            actix_rt::time::sleep(end - now).await;
        }
    }
    actix_rt::time::sleep(b.delay).await;
    let hits = |every: Option<u64>| every.is_some_and(|e| n % e == 0);
    let response = if hits(b.fail_every) {
        c.failed_503.fetch_add(1, Ordering::SeqCst);
        json(
            503,
            serde_json::json!({"error":{"code":"unavailable","message":"test shed"}}),
        )
    } else if hits(b.garbage_every) {
        c.garbage.fetch_add(1, Ordering::SeqCst);
        HttpResponse::Ok().body("<html>proxy error</html>")
    } else {
        if hits(b.slow_every) {
            c.slow.fetch_add(1, Ordering::SeqCst);
            actix_rt::time::sleep(b.slow_delay).await;
        }
        let partial = b.partial_odd && n % 2 == 1;
        let coverage = if partial { 0.5 } else { 1.0 };
        let ok = c.ok.fetch_add(1, Ordering::SeqCst);
        let empty = b.empty_every.is_some_and(|e| ok % e == 0);
        if partial {
            c.partial.fetch_add(1, Ordering::SeqCst);
        }
        if empty {
            c.empty.fetch_add(1, Ordering::SeqCst);
        }
        c.coverage_milli
            .fetch_add((coverage * 1000.0) as u64, Ordering::SeqCst);
        let items = if empty {
            serde_json::json!([])
        } else {
            serde_json::json!([
                {"item_id":"i000001","score":0.9,"sources":["ann"],"exploration":false},
                {"item_id":"i000002","score":0.5,"sources":["itemcf"],"exploration":true}
            ])
        };
        let degraded = if partial {
            serde_json::json!(["shard_timeout:1"])
        } else {
            serde_json::json!([])
        };
        let timings: Vec<serde_json::Value> = STAGES
            .iter()
            .map(|(s, m)| serde_json::json!({"stage": s, "micros": m}))
            .collect();
        json(
            200,
            serde_json::json!({"items": items, "model_version":"v1", "coverage": coverage,
                "degraded": degraded, "timings": timings, "request_id":"x"}),
        )
    };
    c.answered.fetch_add(1, Ordering::SeqCst);
    response
}

async fn events(state: web::Data<State>, body: web::Bytes) -> HttpResponse {
    let c = &state.counts;
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&body).ok();
    let n = parsed
        .as_ref()
        .and_then(|v| v["events"].as_array())
        .filter(|events| {
            events.iter().all(|e| {
                e["user_id"].is_string() && e["item_id"].is_string() && e["kind"] == "click"
            })
        })
        .map_or(0, |events| events.len() as u64);
    if n == 0 {
        c.malformed.fetch_add(1, Ordering::SeqCst);
    }
    c.events.fetch_add(n, Ordering::SeqCst);
    c.answered.fetch_add(1, Ordering::SeqCst);
    json(200, serde_json::json!({ "accepted": n }))
}

async fn metrics(state: web::Data<State>) -> HttpResponse {
    let Some((total, ann, ranking)) = state.behaviour.cpu_per_request else {
        return HttpResponse::NotFound().body("no metrics here");
    };
    let n = state.counts.answered.load(Ordering::SeqCst) as f64;
    let text = format!(
        "# TYPE process_cpu_seconds_total counter\n\
         process_cpu_seconds_total {}\n\
         # TYPE funnel_cpu_seconds_total counter\n\
         funnel_cpu_seconds_total{{stage=\"ann\"}} {}\n\
         funnel_cpu_seconds_total{{stage=\"ranking\"}} {}\n\
         funnel_requests_total{{endpoint=\"all\"}} {}\n",
        CPU_BASE_SECONDS + total * n,
        ann * n,
        ranking * n,
        n
    );
    HttpResponse::Ok()
        .content_type("text/plain; version=0.0.4")
        .body(text)
}

/// Starts a server on 127.0.0.1:0 in its own thread; it lives until the test
/// process exits.
pub fn start(behaviour: Behaviour) -> TestServer {
    let counts = Arc::new(Counts::default());
    let state = web::Data::new(State {
        behaviour,
        counts: Arc::clone(&counts),
        stall_until: Mutex::new(None),
    });
    let (tx, rx) = std::sync::mpsc::channel::<SocketAddr>();
    std::thread::spawn(move || {
        actix_rt::System::new().block_on(async move {
            let server = HttpServer::new(move || {
                App::new()
                    .app_data(state.clone())
                    .route("/v1/recommend", web::post().to(recommend))
                    .route("/v1/events", web::post().to(events))
                    .route("/metrics", web::get().to(metrics))
            })
            .workers(2)
            .bind(("127.0.0.1", 0))
            .expect("bind a free local port");
            tx.send(server.addrs()[0])
                .expect("the test waits for the address");
            server.run().await.expect("test server runs");
        });
    });
    let addr = rx.recv().expect("the server thread sends its address");
    TestServer {
        url: format!("http://{addr}"),
        counts,
    }
}

/// A URL where nothing listens: a port that was just free.
pub fn closed_url() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    let addr = listener.local_addr().expect("bound socket has an address");
    drop(listener);
    format!("http://{addr}")
}
