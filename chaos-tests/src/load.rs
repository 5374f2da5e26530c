//! Open-loop client load: recommends, events and item upserts at fixed
//! rates, each sent to a node picked (seeded) from the current routing set,
//! each recorded with its result. Also the status poller that records
//! every node's (term, role, leader) a few times a second.
//!
//! Open loop: a request is sent on its schedule whether or not earlier ones
//! answered, so a stalled cluster shows up as latency and timeouts instead
//! of as fewer requests.
//!
//! Owns: the request schedule, the request bodies, the routing set (the
//! nodes a load balancer with health checks would send to).
//! Must not touch: processes (the fault layer updates the routing set).

use crate::cluster::{status_at, DIM, USERS};
use crate::history::{LeaderObs, OpKind, OpRecord, Outcome, Recorder};
use funnel::http_client::{build_client, send_json, ErrorKind, HttpClient};
use funnel::rng::Rng;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::task::JoinHandle;

/// Rates and limits of the client load.
#[derive(Debug, Clone)]
pub struct LoadSpec {
    pub recommends_per_s: f64,
    pub events_per_s: f64,
    pub upserts_per_s: f64,
    /// The deadline each recommend carries.
    pub deadline: Duration,
    /// How long past the deadline the client waits before calling it a hang.
    pub hang_after: Duration,
    /// Client timeout for events and upserts.
    pub write_timeout: Duration,
}

impl Default for LoadSpec {
    fn default() -> Self {
        LoadSpec {
            recommends_per_s: 40.0,
            events_per_s: 10.0,
            upserts_per_s: 8.0,
            deadline: Duration::from_millis(1000),
            hang_after: Duration::from_secs(3),
            write_timeout: Duration::from_secs(10),
        }
    }
}

/// The nodes clients send to: node -> HTTP address. The fault layer takes
/// a node out when it kills or pauses it and puts it back once it serves.
#[derive(Clone, Default)]
pub struct Routing(Arc<Mutex<BTreeMap<u64, String>>>);

impl Routing {
    pub fn set(&self, id: u64, http: String) {
        self.lock().insert(id, http);
    }

    pub fn remove(&self, id: u64) {
        self.lock().remove(&id);
    }

    pub fn nodes(&self) -> Vec<(u64, String)> {
        self.lock().iter().map(|(k, v)| (*k, v.clone())).collect()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, String>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A running load; `stop` waits for every request in flight.
pub struct Load {
    stop: Arc<AtomicBool>,
    tickers: Vec<JoinHandle<Vec<JoinHandle<()>>>>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Load {
    /// Starts the three request streams. `seed` fixes every choice (target
    /// node, user, item, vector); `prefix` makes upserted ids unique per run.
    pub fn start(
        rt: Arc<tokio::runtime::Runtime>,
        spec: LoadSpec,
        routing: Routing,
        rec: Recorder,
        seed: u64,
        prefix: String,
    ) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let client = rt.block_on(async { build_client(256, Duration::from_secs(5)) });
        let streams = [
            (OpKind::Recommend, spec.recommends_per_s, 1u64),
            (OpKind::Event, spec.events_per_s, 2),
            (OpKind::Upsert, spec.upserts_per_s, 3),
        ];
        let tickers = streams
            .into_iter()
            .filter(|(_, rate, _)| *rate > 0.0)
            .map(|(kind, rate, stream)| {
                let ctx = StreamCtx {
                    kind,
                    spec: spec.clone(),
                    routing: routing.clone(),
                    rec: rec.clone(),
                    client: client.clone(),
                    prefix: prefix.clone(),
                };
                let stop = stop.clone();
                rt.spawn(ticker(
                    ctx,
                    Duration::from_secs_f64(1.0 / rate),
                    Rng::derive(seed, stream),
                    stop,
                ))
            })
            .collect();
        Load { stop, tickers, rt }
    }

    /// Stops sending and waits for the requests in flight to end.
    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        self.rt.block_on(async {
            for t in self.tickers {
                if let Ok(inflight) = t.await {
                    for r in inflight {
                        let _ = r.await;
                    }
                }
            }
        });
    }
}

#[derive(Clone)]
struct StreamCtx {
    kind: OpKind,
    spec: LoadSpec,
    routing: Routing,
    rec: Recorder,
    client: HttpClient,
    prefix: String,
}

async fn ticker(
    ctx: StreamCtx,
    period: Duration,
    mut rng: Rng,
    stop: Arc<AtomicBool>,
) -> Vec<JoinHandle<()>> {
    let mut tick = tokio::time::interval(period);
    // open loop: a late tick is sent late, not skipped or bunched
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut inflight: Vec<JoinHandle<()>> = Vec::new();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        tick.tick().await;
        // the random draws happen whether or not a node is routable, so the
        // sequence of choices depends on the seed alone
        let pick = rng.next_u64();
        let user = rng.below(USERS as u64);
        let item = rng.below(300);
        let vector: Vec<f32> = (0..DIM).map(|_| rng.f32() * 2.0 - 1.0).collect();
        n += 1;
        let nodes = ctx.routing.nodes();
        if nodes.is_empty() {
            continue;
        }
        let (node, http) = nodes[(pick % nodes.len() as u64) as usize].clone();
        let event_user = (ctx.kind == OpKind::Event).then(|| format!("u{user:06}"));
        let (path, body, item_id, timeout, deadline) = match ctx.kind {
            OpKind::Recommend => (
                "/v1/recommend",
                serde_json::json!({
                    "user_id": format!("u{user:06}"),
                    "k": 10,
                    "deadline_ms": ctx.spec.deadline.as_millis() as u64,
                }),
                None,
                ctx.spec.deadline + ctx.spec.hang_after,
                Some(ctx.spec.deadline),
            ),
            OpKind::Event => (
                "/v1/events",
                serde_json::json!({"events": [{
                    "user_id": format!("u{user:06}"),
                    "item_id": format!("i{item:06}"),
                    "kind": "click",
                }]}),
                None,
                ctx.spec.write_timeout,
                None,
            ),
            OpKind::Upsert => {
                let id = format!("{}-{n}", ctx.prefix);
                (
                    "/v1/items",
                    serde_json::json!({"items": [{"item_id": id, "vector": vector, "categories": []}]}),
                    Some(id),
                    ctx.spec.write_timeout,
                    None,
                )
            }
        };
        let ctx = ctx.clone();
        inflight.push(tokio::spawn(async move {
            let start = ctx.rec.now();
            let result = match format!("http://{http}{path}").parse() {
                Ok(uri) => {
                    send_json(
                        &ctx.client,
                        uri,
                        Some(body.to_string().into()),
                        None,
                        timeout,
                    )
                    .await
                }
                Err(_) => Err(ErrorKind::BadResponse),
            };
            let end = ctx.rec.now();
            let mut op = OpRecord {
                kind: ctx.kind,
                node,
                start,
                end,
                outcome: Outcome::BadResponse,
                deadline,
                coverage: None,
                degraded: Vec::new(),
                item: item_id,
                user: event_user,
            };
            op.outcome = match result {
                Ok((status, bytes)) if status.is_success() => {
                    if ctx.kind == OpKind::Recommend {
                        match serde_json::from_slice::<serde_json::Value>(&bytes) {
                            Ok(v) => {
                                op.coverage = v["coverage"].as_f64();
                                op.degraded = degraded_reasons(&v["degraded"]);
                                Outcome::Ok(status.as_u16())
                            }
                            Err(_) => Outcome::BadResponse,
                        }
                    } else {
                        Outcome::Ok(status.as_u16())
                    }
                }
                Ok((status, _)) => Outcome::Http(status.as_u16()),
                Err(ErrorKind::Http(s)) => Outcome::Http(s),
                Err(ErrorKind::Timeout) => Outcome::Timeout,
                Err(ErrorKind::Connect) => Outcome::Connect,
                Err(ErrorKind::Transport) => Outcome::Transport,
                Err(_) => Outcome::BadResponse,
            };
            ctx.rec.op(op);
        }));
        inflight.retain(|h| !h.is_finished());
    }
    inflight
}

/// The `degraded` field of a recommend answer as strings (it is a list of
/// reasons; anything else non-null is kept as its JSON text).
fn degraded_reasons(v: &serde_json::Value) -> Vec<String> {
    match v {
        serde_json::Value::Null => Vec::new(),
        serde_json::Value::Array(a) => a
            .iter()
            .map(|x| x.as_str().map_or_else(|| x.to_string(), String::from))
            .collect(),
        other => vec![other.to_string()],
    }
}

/// Polls every node's Control.Status every `period`, recording (node,
/// term, role, leader), until stopped.
pub struct Poller {
    stop: Arc<AtomicBool>,
    task: JoinHandle<()>,
    rt: Arc<tokio::runtime::Runtime>,
}

impl Poller {
    /// `nodes`: (id, internal address) of every node that may run.
    pub fn start(
        rt: Arc<tokio::runtime::Runtime>,
        nodes: Vec<(u64, String)>,
        rec: Recorder,
        period: Duration,
    ) -> Poller {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = rt.spawn(async move {
            while !s.load(Ordering::SeqCst) {
                let polls = nodes.iter().map(|(id, internal)| {
                    let rec = rec.clone();
                    let (id, addr) = (*id, format!("http://{internal}"));
                    async move {
                        // a down or paused node simply does not answer
                        if let Some(st) = status_at(addr, Duration::from_millis(400)).await {
                            rec.leader(LeaderObs {
                                at: rec.now(),
                                node: id,
                                term: st.term,
                                role: st.role,
                                leader: st.leader_id,
                            });
                        }
                    }
                });
                futures_join_all(polls).await;
                tokio::time::sleep(period).await;
            }
        });
        Poller { stop, task, rt }
    }

    pub fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.rt.block_on(self.task);
    }
}

/// Runs the futures concurrently and waits for all (without pulling in the
/// futures crate for one function).
async fn futures_join_all<F: std::future::Future<Output = ()> + Send + 'static>(
    fs: impl Iterator<Item = F>,
) {
    let handles: Vec<JoinHandle<()>> = fs.map(tokio::spawn).collect();
    for h in handles {
        let _ = h.await;
    }
}
