//! A serving node: the shared core every front end (gRPC, HTTP, the demo)
//! calls, one method per operation. It owns the actors (shards, user-state
//! partitions, rank workers, coordinators, the event sink) and the current
//! model version, which `publish` swaps atomically: a request holds one
//! version from start to end.
//!
//! Owns: wiring, validation at the edge, the per-operation flows for
//! events, items and model swaps. Must not touch: wire formats (`api`),
//! the recommend flow itself (`coordinator`).

mod event_sink;
pub mod types;
pub mod validate;

use crate::catalog::Catalog;
use crate::config::NodeConfig;
use crate::coordinator::{
    CoordinatorActor, LocalShard, Recommend, RecommendEnv, Serving, ShardClient,
};
use crate::eventlog::LogEvent;
use crate::features::event_strength;
use crate::ids::{item_key, shard_of, user_key};
use crate::model::ServingModel;
use crate::ranking::worker::{start_rank_workers, RankWorker};
use crate::shard::{start_shard, Delete, ShardActor, ShardIndex, Upsert};
use crate::telemetry::metrics::metrics;
use crate::userstate::{AppliedEvent, ApplyEvents, GetUser, SeedUsers, UserStateActor};
use actix::{Actor, Addr, Arbiter};
use event_sink::{start_event_sink, Append, EventSink, Flush, NextSeq, SyncDue};
use futures::future::join_all;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use types::*;

/// A handle to the node; cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    serving: RwLock<Option<Arc<Serving>>>,
    /// The shard actors of the current version, for upserts and deletes.
    shard_actors: RwLock<Vec<Addr<ShardActor>>>,
    users: Arc<Vec<Addr<UserStateActor>>>,
    rank: Addr<RankWorker>,
    events: Addr<EventSink>,
    coordinators: Vec<Addr<CoordinatorActor>>,
    next_coordinator: AtomicUsize,
    requests: AtomicU64,
    /// One model swap at a time.
    swap: tokio::sync::Mutex<()>,
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Node {
    /// Starts the node's actors; call inside an actix `System`. Loads
    /// `config.node.bundle` when one is configured.
    pub async fn start(config: NodeConfig) -> anyhow::Result<Node> {
        let data_dir = PathBuf::from(&config.node.data_dir);
        std::fs::create_dir_all(&data_dir).map_err(|e| {
            anyhow::anyhow!("cannot create node.data_dir {}: {e}", data_dir.display())
        })?;
        let (events, recovery) =
            start_event_sink(&data_dir.join("events"), config.events.log_options()).map_err(
                |e| {
                    anyhow::anyhow!(
                        "opening the event log in {}: {e}",
                        data_dir.join("events").display()
                    )
                },
            )?;
        tracing::info!(%recovery, "event log open");
        let partitions = config.events.user_partitions.max(1);
        let state_params = crate::features::StateParams::default();
        let users: Vec<Addr<UserStateActor>> = (0..partitions)
            .map(|p| {
                let arb = Arbiter::new();
                UserStateActor::start_in_arbiter(&arb.handle(), move |_| {
                    UserStateActor::new(p as u32, state_params)
                })
            })
            .collect();
        let rank = start_rank_workers(config.ranking.workers);
        let n_coord = std::thread::available_parallelism()
            .map_or(2, |n| n.get())
            .clamp(1, 8);
        let coordinators = (0..n_coord)
            .map(|_| {
                let arb = Arbiter::new();
                CoordinatorActor::start_in_arbiter(&arb.handle(), |_| CoordinatorActor)
            })
            .collect();
        let node = Node {
            inner: Arc::new(Inner {
                serving: RwLock::new(None),
                shard_actors: RwLock::new(Vec::new()),
                users: Arc::new(users),
                rank,
                events: events.clone(),
                coordinators,
                next_coordinator: AtomicUsize::new(0),
                requests: AtomicU64::new(0),
                swap: tokio::sync::Mutex::new(()),
                config,
            }),
        };
        // the interval fsync policy needs a clock
        let sink = events;
        actix::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
            loop {
                tick.tick().await;
                if sink.send(SyncDue).await.is_err() {
                    break;
                }
            }
        });
        if let Some(dir) = node.inner.config.node.bundle_dir().map(Path::to_path_buf) {
            let before = ServingMark::read(&node.mark_path());
            let version = node
                .publish(dir)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            // events acknowledged since this version went live are in the
            // log, not in the bundle: replay them into user state
            if let Some(mark) = before.filter(|m| m.model_version == version) {
                let n = node
                    .replay_log(mark.log_seq)
                    .await
                    .map_err(|e| anyhow::anyhow!("{e}"))?;
                ServingMark {
                    model_version: version,
                    log_seq: mark.log_seq,
                }
                .write(&node.mark_path())
                .map_err(|e| anyhow::anyhow!("{e}"))?;
                tracing::info!(
                    events = n,
                    from_seq = mark.log_seq,
                    "replayed the event log into user state"
                );
            }
        }
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    fn current(&self) -> Result<Arc<Serving>, ServiceError> {
        self.inner
            .serving
            .read()
            .ok()
            .and_then(|s| s.clone())
            .ok_or_else(|| {
                ServiceError::Unavailable(
                    "no model is loaded yet; publish a bundle (funnel admin publish DIR)".into(),
                )
            })
    }

    pub fn model_version(&self) -> Option<String> {
        self.current().ok().map(|s| s.model.version.clone())
    }

    fn request_id(&self) -> String {
        let n = self.inner.requests.fetch_add(1, Ordering::Relaxed);
        format!(
            "{:x}-{:x}",
            self.inner.config.node.id,
            (now_unix() as u64) << 20 | (n & 0xF_FFFF)
        )
    }

    pub async fn recommend(&self, q: RecommendQuery) -> Result<Recommendation, ServiceError> {
        let t0 = std::time::Instant::now();
        let req = validate::recommend(q, &self.inner.config.api)?;
        let serving = self.current()?;
        let request_id = req.request_id.clone().unwrap_or_else(|| self.request_id());
        let c = &self.inner.config;
        let env = RecommendEnv {
            serving,
            users: self.inner.users.clone(),
            rank: self.inner.rank.clone(),
            recall: c.recall.clone(),
            rerank: c.rerank,
            budget: c.budget,
            batch_rows: c.ranking.batch_rows,
        };
        let i = self.inner.next_coordinator.fetch_add(1, Ordering::Relaxed)
            % self.inner.coordinators.len();
        let r = self.inner.coordinators[i]
            .send(Recommend {
                env,
                req,
                request_id,
            })
            .await
            .map_err(|e| ServiceError::Unavailable(format!("coordinator unavailable: {e}")))?;
        metrics()
            .request_seconds
            .with_label_values(&["recommend"])
            .observe(t0.elapsed().as_secs_f64());
        r
    }

    /// Appends events durably, then applies them to user state and item
    /// counters; answers once the user's next request will see them.
    pub async fn ingest_events(&self, events: Vec<EventIn>) -> Result<u32, ServiceError> {
        let valid = validate::events(events, &self.inner.config.api, now_unix())?;
        // refuse before logging: applying needs a model's catalogue
        self.current()?;
        let log: Vec<LogEvent> = valid
            .iter()
            .map(|e| LogEvent {
                seq: 0,
                ts: e.timestamp,
                user_id: e.user_id.clone(),
                item_id: e.item_id.clone(),
                kind: e.kind,
                weight: e.weight,
                device: e.device.clone(),
            })
            .collect();
        self.inner
            .events
            .send(Append(log.clone()))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("event log unavailable: {e}")))?
            .map_err(|e| ServiceError::Internal(format!("event log append failed: {e}")))?;
        for e in &log {
            metrics().events.with_label_values(&[e.kind.as_str()]).inc();
        }
        self.apply_logged(&log).await?;
        Ok(log.len() as u32)
    }

    pub async fn upsert_items(&self, items: Vec<ItemIn>) -> Result<u32, ServiceError> {
        let serving = self.current()?;
        let model = &serving.model;
        let valid = validate::items(items, model.dimension, &self.inner.config.api, now_unix())?;
        // fold vectors first: a batch either applies whole or not at all
        let mut ready = Vec::with_capacity(valid.len());
        for (i, it) in valid.into_iter().enumerate() {
            let vector = if it.vector.is_empty() {
                let cats = serving.catalog.intern_categories(&it.categories);
                model.fold_item(&cats).ok_or_else(|| {
                    ServiceError::InvalidArgument(format!(
                        "items[{i}]: none of its categories is known to the model, so no vector can be folded in; send a vector"
                    ))
                })?
            } else {
                it.vector.clone()
            };
            ready.push((it, vector));
        }
        let shards = self.shard_actors();
        let n_shards = shards.len() as u32;
        let mut by_shard: Vec<Vec<(u64, Vec<f32>)>> = vec![Vec::new(); shards.len()];
        for (it, v) in &ready {
            let key = item_key(&it.item_id);
            if n_shards > 0 {
                by_shard[shard_of(key, n_shards) as usize].push((key, v.clone()));
            }
        }
        for (s, batch) in by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
        {
            shards[s]
                .send(Upsert { items: batch })
                .await
                .map_err(|e| ServiceError::Unavailable(format!("shard {s} unavailable: {e}")))?
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        for (it, v) in ready.iter() {
            serving.catalog.upsert(
                &it.item_id,
                v.clone(),
                &it.categories,
                it.title.clone(),
                it.created_at,
            );
        }
        Ok(ready.len() as u32)
    }

    pub async fn delete_items(&self, ids: Vec<String>) -> Result<u32, ServiceError> {
        validate::item_ids(&ids, &self.inner.config.api)?;
        let serving = self.current()?;
        let shards = self.shard_actors();
        let n_shards = shards.len() as u32;
        let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); shards.len()];
        let mut deleted = 0;
        for id in &ids {
            let key = item_key(id);
            if serving.catalog.delete(key) {
                deleted += 1;
            }
            if n_shards > 0 {
                by_shard[shard_of(key, n_shards) as usize].push(key);
            }
        }
        for (s, keys) in by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
        {
            shards[s]
                .send(Delete { keys })
                .await
                .map_err(|e| ServiceError::Unavailable(format!("shard {s} unavailable: {e}")))?
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        Ok(deleted)
    }

    pub async fn get_user(&self, user_id: String) -> Result<UserView, ServiceError> {
        crate::ids::validate_id(&user_id)
            .map_err(|e| ServiceError::InvalidArgument(format!("user_id: {e}")))?;
        let serving = self.current()?;
        let p = shard_of(user_key(&user_id), self.inner.users.len() as u32) as usize;
        let state = self.inner.users[p]
            .send(GetUser(user_id.clone()))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("user partition unavailable: {e}")))?;
        let has_vector = serving.model.user_vector(&user_id).is_some();
        let Some(state) = state else {
            return Ok(UserView {
                user_id,
                known: has_vector,
                events: 0,
                recent: vec![],
                tastes: vec![],
                has_vector,
            });
        };
        let cat = &serving.catalog;
        let recent = state
            .recent
            .iter()
            .rev()
            .map(|r| RecentItem {
                item_id: cat
                    .external_id(r.item)
                    .unwrap_or_else(|| format!("{:#x}", r.item)),
                kind: r.kind.as_str().into(),
                timestamp: r.ts,
            })
            .collect();
        let mut tastes: Vec<CategoryTaste> = state
            .taste_at(now_unix().max(state.taste_ts), &serving.model.params.state)
            .into_iter()
            .map(|(c, w)| CategoryTaste {
                category: cat.category_name(c).unwrap_or_else(|| c.to_string()),
                weight: w,
            })
            .collect();
        tastes.sort_by(|a, b| b.weight.total_cmp(&a.weight));
        Ok(UserView {
            user_id,
            known: true,
            events: state.events,
            recent,
            tastes,
            has_vector,
        })
    }

    pub fn health(&self) -> HealthView {
        match self.current() {
            Ok(s) => HealthView {
                status: "serving".into(),
                node_id: self.inner.config.node.id,
                model_version: s.model.version.clone(),
                shards_local: s.shards.len() as u32,
                shards_total: s.model.shard_count,
            },
            Err(_) => HealthView {
                status: "loading".into(),
                node_id: self.inner.config.node.id,
                model_version: String::new(),
                shards_local: 0,
                shards_total: 0,
            },
        }
    }

    fn shard_actors(&self) -> Vec<Addr<ShardActor>> {
        self.inner
            .shard_actors
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// Loads a bundle in the background and switches to it atomically;
    /// requests in flight finish on the version they started with.
    pub async fn publish(&self, dir: PathBuf) -> Result<String, ServiceError> {
        let _one_at_a_time = self.inner.swap.lock().await;
        let threads = self.inner.config.shards.search_threads;
        let ef = self.inner.config.shards.expansion_search;
        let loaded = load_version(dir.clone(), ef).await?;
        let (model, user_states, indexes) = loaded;
        let model = Arc::new(model);
        let catalog = Arc::new(match self.current() {
            Ok(old) => old.catalog.carry_over(model.clone()),
            Err(_) => Catalog::new(model.clone()),
        });
        let actors: Vec<Addr<ShardActor>> = indexes
            .into_iter()
            .map(|ix| start_shard(ix, threads))
            .collect();
        // items upserted since training move to the new version's shards
        let carried = catalog.upserted_items();
        let n = actors.len() as u32;
        let mut by_shard: Vec<Vec<(u64, Vec<f32>)>> = vec![Vec::new(); actors.len()];
        for it in carried
            .iter()
            .filter(|it| it.vector.len() == model.dimension)
        {
            by_shard[shard_of(it.key, n.max(1)) as usize].push((it.key, it.vector.clone()));
        }
        for (s, b) in by_shard
            .into_iter()
            .enumerate()
            .filter(|(_, b)| !b.is_empty())
        {
            let _ = actors[s].send(Upsert { items: b }).await;
        }
        // seed user state for users the node does not track yet
        let parts = self.inner.users.len() as u32;
        let mut seeds: Vec<Vec<(String, crate::features::UserState)>> =
            vec![Vec::new(); parts as usize];
        for (id, s) in user_states {
            seeds[shard_of(user_key(&id), parts) as usize].push((id, s));
        }
        for (p, s) in seeds.into_iter().enumerate() {
            let _ = self.inner.users[p].send(SeedUsers(s)).await;
        }
        let shards: Vec<Arc<dyn ShardClient>> = actors
            .iter()
            .enumerate()
            .map(|(s, a)| {
                Arc::new(LocalShard {
                    shard: s as u32,
                    addr: a.clone(),
                    catalog: catalog.clone(),
                }) as Arc<dyn ShardClient>
            })
            .collect();
        let version = model.version.clone();
        let serving = Arc::new(Serving {
            model,
            catalog,
            shards,
        });
        if let (Ok(mut cur), Ok(mut sa)) =
            (self.inner.serving.write(), self.inner.shard_actors.write())
        {
            *cur = Some(serving);
            *sa = actors;
        }
        // remember from which log position this version's state is live
        let seq = self.inner.events.send(NextSeq).await.unwrap_or(0);
        if let Err(e) = (ServingMark {
            model_version: version.clone(),
            log_seq: seq,
        })
        .write(&self.mark_path())
        {
            tracing::warn!(error = %e, "cannot record the serving mark; a restart will not replay the event log");
        }
        tracing::info!(version = %version, dir = %dir.display(), "model version active");
        Ok(version)
    }

    fn mark_path(&self) -> PathBuf {
        self.inner.config.node.data_dir.join("serving.json")
    }

    /// Applies logged events with seq >= `from` to user state and item
    /// counters (after a restart). Answers how many were applied.
    async fn replay_log(&self, from: u64) -> Result<usize, ServiceError> {
        let dir = self.inner.config.node.data_dir.join("events");
        let events = tokio::task::spawn_blocking(move || -> Result<Vec<LogEvent>, String> {
            let mut out = Vec::new();
            for e in crate::eventlog::EventLogReader::open(&dir).map_err(|e| e.to_string())? {
                let e = e.map_err(|e| e.to_string())?;
                if e.seq >= from {
                    out.push(e);
                }
            }
            Ok(out)
        })
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?
        .map_err(|e| ServiceError::Internal(format!("reading the event log: {e}")))?;
        let n = events.len();
        for chunk in events.chunks(1000) {
            self.apply_logged(chunk).await?;
        }
        Ok(n)
    }

    /// Applies events that are already durable to user state and counters.
    async fn apply_logged(&self, events: &[LogEvent]) -> Result<(), ServiceError> {
        let serving = self.current()?;
        let parts = self.inner.users.len() as u32;
        let mut by_part: Vec<Vec<AppliedEvent>> = vec![Vec::new(); parts as usize];
        for e in events {
            let key = item_key(&e.item_id);
            serving
                .catalog
                .record_event(key, e.ts, event_strength(e.kind, e.weight));
            by_part[shard_of(user_key(&e.user_id), parts) as usize].push(AppliedEvent {
                user_id: e.user_id.clone(),
                item_key: key,
                categories: serving.catalog.categories_of(key),
                ts: e.ts,
                kind: e.kind,
                weight: e.weight,
            });
        }
        let sends = by_part
            .into_iter()
            .enumerate()
            .filter(|(_, v)| !v.is_empty())
            .map(|(p, v)| self.inner.users[p].send(ApplyEvents(v)));
        for r in join_all(sends).await {
            r.map_err(|e| {
                ServiceError::Internal(format!(
                    "events are logged but a user partition is unavailable: {e}"
                ))
            })?;
        }
        Ok(())
    }

    /// Flushes the event log; call on shutdown.
    pub async fn flush(&self) -> Result<(), String> {
        self.inner
            .events
            .send(Flush)
            .await
            .map_err(|e| e.to_string())?
    }
}

type LoadedVersion = (
    ServingModel,
    Vec<(String, crate::features::UserState)>,
    Vec<ShardIndex>,
);

/// Reads and verifies a bundle and every shard off the async threads.
async fn load_version(
    dir: PathBuf,
    expansion_search: usize,
) -> Result<LoadedVersion, ServiceError> {
    tokio::task::spawn_blocking(move || load_version_blocking(&dir, expansion_search))
        .await
        .map_err(|e| ServiceError::Internal(format!("model loading task failed: {e}")))?
}

fn load_version_blocking(
    dir: &Path,
    expansion_search: usize,
) -> Result<LoadedVersion, ServiceError> {
    let precondition = |e: String| {
        ServiceError::FailedPrecondition(format!("cannot load bundle {}: {e}", dir.display()))
    };
    let loaded = ServingModel::load(dir).map_err(|e| precondition(e.to_string()))?;
    let bundle = crate::bundle::Bundle::open(dir, &crate::bundle::OpenCheck::default())
        .map_err(|e| precondition(e.to_string()))?;
    let mut indexes = Vec::new();
    for s in 0..loaded.model.shard_count {
        let shard = bundle
            .load_shard(s)
            .map_err(|e| precondition(e.to_string()))?;
        indexes.push(ShardIndex::from_loaded(shard, expansion_search));
    }
    Ok((loaded.model, loaded.user_states, indexes))
}

/// `data_dir/serving.json`: which model version is live and the first
/// event-log seq it has not seen (events from there are replayed into user
/// state after a restart).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ServingMark {
    model_version: String,
    log_seq: u64,
}

impl ServingMark {
    fn read(path: &Path) -> Option<ServingMark> {
        let text = std::fs::read_to_string(path).ok()?;
        match serde_json::from_str(&text) {
            Ok(m) => Some(m),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "ignoring an unreadable serving mark");
                None
            }
        }
    }

    /// Atomic: temp file, fsync, rename, fsync the directory.
    fn write(&self, path: &Path) -> std::io::Result<()> {
        use std::io::Write;
        let tmp = path.with_extension("json.tmp");
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(serde_json::to_string(self).unwrap_or_default().as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    }
}
