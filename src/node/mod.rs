//! A serving node: the shared core every front end (gRPC, HTTP, the demo)
//! calls, one method per operation. It owns the actors (shards, user-state
//! partitions, rank workers, coordinators, the event sink) and the current
//! model version, which `publish` swaps atomically: a request holds one
//! version from start to end.
//!
//! Owns: wiring, validation at the edge, the per-operation flows for
//! events, items and model swaps. Must not touch: wire formats (`api`),
//! the recommend flow itself (`coordinator`).

pub mod bundle_fetch;
pub mod catchup;
pub mod cluster_link;
mod event_sink;
pub mod formation;
pub mod liveness;
mod moves;
pub mod rollout;

use crate::catalog::Catalog;
use crate::cluster::{Command, ItemRecord};
use crate::config::{NodeConfig, ShardSearchEngine, ShardsConfig};
use crate::coordinator::{RecommendEnv, Serving};
use crate::eventlog::LogEvent;
use crate::features::event_strength;
use crate::ids::{item_key, shard_of, user_key};
use crate::model::ServingModel;
use crate::ranking::worker::{start_rank_workers, RankWorker};
use crate::routing::{
    fitting_map, replica_sets, CallContext, LocalShard, RemoteShard, SearchSpec, ShardClient,
};
use crate::service::types::*;
use crate::service::validate;
use crate::shard::{Delete, Digest, SearchPool, ShardHandle, ShardIndex, Stats, Upsert};
use crate::telemetry::metrics::metrics;
use crate::userstate::{AppliedEvent, ApplyEvents, UserReader, UserStateActor};
use actix::{Actor, Addr, Arbiter};
use cluster_link::service_error;
use cluster_link::ClusterLink;
use event_sink::{start_event_sink, Append, EventSink, Flush, SyncDue};
use futures::future::join_all;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};

/// A handle to the node; cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    serving: RwLock<Option<Arc<Serving>>>,
    /// The shard actors this node hosts for the current version, by shard.
    shard_actors: RwLock<BTreeMap<u32, ShardHandle>>,
    /// The threads every local shard search runs on.
    search_pool: SearchPool,
    /// The bundle directory of the current version.
    bundle_dir: RwLock<Option<PathBuf>>,
    /// Set once when the node runs in a cluster.
    cluster: OnceLock<Arc<ClusterLink>>,
    /// One actor per user partition: the only writer of its states.
    users: Arc<Vec<Addr<UserStateActor>>>,
    /// The same partitions, read by requests without a message.
    user_readers: Arc<Vec<UserReader>>,
    rank: Addr<RankWorker>,
    events: Addr<EventSink>,
    /// In a cluster: the log of events other nodes accepted and forwarded
    /// here (`<data_dir>/events-peers/`), so `events` holds only what this
    /// node accepted from clients — the log peers catch up from.
    peer_events: Option<Addr<EventSink>>,
    /// Which forwarded events (by origin node and seq) were applied here.
    origins: catchup::Origins,
    /// Identity of this node's own event log (`catchup::log_id`).
    event_log_id: u64,
    requests: AtomicU64,
    /// One model swap at a time.
    swap: tokio::sync::Mutex<()>,
    /// Versions loaded beside the served one (staged, or just retired).
    versions: std::sync::Mutex<rollout::Versions>,
}

/// How long a catalogue write waits for this node to apply it after the
/// cluster committed it.
const CATALOG_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// How long an event ingest waits for the other nodes to take the events
/// before answering anyway (they are durable here already).
const FORWARD_WAIT: std::time::Duration = std::time::Duration::from_millis(500);

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
        let peer_events = if config.is_cluster() {
            let dir = data_dir.join("events-peers");
            let (sink, recovery) = start_event_sink(&dir, config.events.log_options())
                .map_err(|e| anyhow::anyhow!("opening the event log in {}: {e}", dir.display()))?;
            tracing::info!(%recovery, "forwarded-event log open");
            Some(sink)
        } else {
            None
        };
        let origins = catchup::Origins::load(data_dir.join("event_origins.json"));
        // only a cluster node's events travel to peers
        let event_log_id = if config.is_cluster() {
            catchup::log_id(&data_dir).map_err(|e| {
                anyhow::anyhow!("writing {}: {e}", data_dir.join("event_log_id").display())
            })?
        } else {
            0
        };
        let partitions = config.events.user_partitions.max(1);
        let state_params = crate::features::StateParams::default();
        let (users, user_readers): (Vec<Addr<UserStateActor>>, Vec<UserReader>) = (0..partitions)
            .map(|p| {
                let arb = Arbiter::new();
                let (actor, reader) = UserStateActor::new(p as u32, state_params);
                (
                    UserStateActor::start_in_arbiter(&arb.handle(), move |_| actor),
                    reader,
                )
            })
            .unzip();
        let rank = start_rank_workers(config.ranking.workers);
        let search_pool = SearchPool::new(config.shards.search_threads)
            .map_err(|e| anyhow::anyhow!("starting the search threads: {e}"))?;
        let node = Node {
            inner: Arc::new(Inner {
                serving: RwLock::new(None),
                shard_actors: RwLock::new(BTreeMap::new()),
                search_pool,
                bundle_dir: RwLock::new(None),
                cluster: OnceLock::new(),
                users: Arc::new(users),
                user_readers: Arc::new(user_readers),
                rank,
                events: events.clone(),
                peer_events: peer_events.clone(),
                origins,
                event_log_id,
                requests: AtomicU64::new(0),
                swap: tokio::sync::Mutex::new(()),
                versions: std::sync::Mutex::new(rollout::Versions::default()),
                config,
            }),
        };
        // the interval fsync policy needs a clock; the others do not, and an
        // idle tick 100 times a second woke three threads each time (about
        // 2% of a core per node, measured on a 0.4-core node)
        let sink = events;
        let interval = matches!(
            node.inner.config.events.fsync,
            crate::eventlog::FsyncPolicy::IntervalMs(_)
        );
        actix::spawn(async move {
            if !interval {
                return;
            }
            let mut tick = tokio::time::interval(std::time::Duration::from_millis(10));
            loop {
                tick.tick().await;
                if sink.send(SyncDue).await.is_err() {
                    break;
                }
                if let Some(peers) = &peer_events {
                    if peers.send(SyncDue).await.is_err() {
                        break;
                    }
                }
            }
        });
        // in a cluster the control loop loads the bundle once the shard map
        // says which shards are this node's
        let single = !node.inner.config.is_cluster();
        if let Some(dir) = node
            .inner
            .config
            .node
            .bundle_dir()
            .filter(|_| single)
            .map(Path::to_path_buf)
        {
            // a restart of the version that was live replays the event log
            // into user state (`switch_to`)
            node.publish(dir)
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
        }
        Ok(node)
    }

    pub fn config(&self) -> &NodeConfig {
        &self.inner.config
    }

    /// The version being served, if any.
    fn serving(&self) -> Option<Arc<Serving>> {
        self.inner.serving.read().ok().and_then(|s| s.clone())
    }

    fn current(&self) -> Result<Arc<Serving>, ServiceError> {
        self.serving().ok_or_else(|| self.not_serving())
    }

    /// Why this node serves nothing, for the client and the operator: a
    /// cluster that never had a model needs a publish, one that is rolling
    /// its first model out or whose model this node is still loading only
    /// needs a moment (and other nodes may answer meanwhile).
    fn not_serving(&self) -> ServiceError {
        let Some(link) = self.inner.cluster.get() else {
            return ServiceError::Unavailable(
                "no model is loaded yet; publish one: funnel admin --addr HTTP_ADDR publish BUNDLE_DIR"
                    .into(),
            );
        };
        let (active, staged) = {
            let st = link.raft.state();
            let st = st.read();
            (
                st.models.active.as_ref().map(|m| m.version.clone()),
                st.models.staged.as_ref().map(|m| m.version.clone()),
            )
        };
        let msg = match (active, staged) {
            (Some(v), _) => format!(
                "this node has not loaded the cluster's model {v} yet; ready nodes answer meanwhile (see /readyz; the node's log says why if loading fails)"
            ),
            (None, Some(v)) => format!(
                "no model is active yet; {v} is being rolled out (funnel admin --addr INTERNAL_ADDR status shows which nodes have loaded it)"
            ),
            (None, None) => "no model is active yet; publish one with funnel admin --addr INTERNAL_ADDR publish BUNDLE_DIR".to_string(),
        };
        ServiceError::Unavailable(msg)
    }

    pub fn model_version(&self) -> Option<String> {
        self.serving().map(|s| s.model.version.clone())
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
            users: self.inner.user_readers.clone(),
            rank: self.inner.rank.clone(),
            recall: c.recall.clone(),
            rerank: c.rerank,
            budget: c.budget,
            batch_rows: c.ranking.batch_rows,
            cascade: c.ranking.cascade,
        };
        // run on the caller's thread: a hop to another thread per request
        // costs two wakeups and bought nothing (every request was its own
        // future there too)
        let span = tracing::debug_span!("recommend", request_id = %request_id, user = %req.user_id);
        let r = tracing::Instrument::instrument(
            crate::coordinator::recommend(env, req, request_id),
            span,
        )
        .await;
        metrics()
            .request_seconds
            .with_label_values(&["recommend"])
            .observe(t0.elapsed().as_secs_f64());
        r
    }

    /// Appends events durably, then applies them to user state and item
    /// counters; answers once the user's next request will see them. In a
    /// cluster the events also go to every other node (each holds every
    /// user partition), waiting briefly so a request that lands on another
    /// node behind the load balancer sees them too.
    pub async fn ingest_events(&self, events: Vec<EventIn>) -> Result<u32, ServiceError> {
        let log = self.ingest(events, &self.inner.events).await?;
        if let Some(link) = self.inner.cluster.get() {
            link.forward_events(&log, self.inner.event_log_id, FORWARD_WAIT)
                .await;
        }
        Ok(log.len() as u32)
    }

    /// Events node `origin` accepted and forwarded (or that this node
    /// fetched from it to catch up): logged in the forwarded-event log and
    /// applied here, not forwarded again. An event whose (origin, seq) was
    /// applied already is skipped; answers how many were new.
    pub async fn ingest_forwarded_events(
        &self,
        origin: u64,
        origin_log: u64,
        events: Vec<crate::cluster::proto::ForwardedEvent>,
    ) -> Result<u32, ServiceError> {
        // refuse before claiming: a claimed event must get applied
        self.current()?;
        if let Some(link) = self.inner.cluster.get() {
            let known = {
                let st = link.raft.state();
                let st = st.read();
                st.nodes.contains_key(&origin)
            };
            if !known || origin == self.inner.config.node.id {
                return Err(ServiceError::InvalidArgument(format!(
                    "events forwarded from node {origin}, which is not another member of this cluster"
                )));
            }
        }
        let mut claimed = Vec::new();
        let fresh: Vec<EventIn> = events
            .into_iter()
            .filter(|e| {
                // seq 0: a sender that does not number its events
                let new =
                    e.origin_seq == 0 || self.inner.origins.claim(origin, origin_log, e.origin_seq);
                if new && e.origin_seq > 0 {
                    claimed.push(e.origin_seq);
                }
                new
            })
            .map(|e| EventIn {
                user_id: e.user_id,
                item_id: e.item_id,
                kind: e.kind,
                weight: e.weight,
                timestamp: e.timestamp,
                device: e.device,
            })
            .collect();
        if fresh.is_empty() {
            return Ok(0);
        }
        let sink = self
            .inner
            .peer_events
            .as_ref()
            .unwrap_or(&self.inner.events);
        match self.ingest(fresh, sink).await {
            Ok(log) => {
                // the claims are made durable before the sender hears back:
                // a restart replays the peers' log and must not also fetch
                // these again (only a crash between the two writes can
                // still count this batch twice)
                let node = self.clone();
                match tokio::task::spawn_blocking(move || node.inner.origins.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::warn!(error = %e, "cannot record which forwarded events were applied")
                    }
                    Err(e) => tracing::warn!(error = %e, "recording forwarded events stopped"),
                }
                Ok(log.len() as u32)
            }
            // events this node refuses now it will refuse on every retry:
            // they stay claimed, so a catch-up moves past them
            Err(e @ (ServiceError::InvalidArgument(_) | ServiceError::ResourceExhausted(_))) => {
                tracing::warn!(origin, events = claimed.len(), error = %e, "forwarded events refused; skipping them");
                Err(e)
            }
            Err(e) => {
                self.inner.origins.release(origin, &claimed);
                Err(e)
            }
        }
    }

    /// Identity of this node's own event log, sent with its events.
    pub fn event_log_id(&self) -> u64 {
        self.inner.event_log_id
    }

    /// Which forwarded events were applied here (`catchup`).
    pub(crate) fn origins(&self) -> &catchup::Origins {
        &self.inner.origins
    }

    /// Events this node accepted from clients with seq > `after` (at most
    /// `max`), for a peer catching up (`ShardData.FetchEvents`).
    pub async fn client_events_after(
        &self,
        after: u64,
        max: usize,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        let dir = self.inner.config.node.data_dir.join("events");
        tokio::task::spawn_blocking(move || catchup::read_client_events(&dir, after, max))
            .await
            .map_err(|e| ServiceError::Internal(e.to_string()))?
            .map_err(|e| ServiceError::Internal(format!("reading the event log: {e}")))
    }

    async fn ingest(
        &self,
        events: Vec<EventIn>,
        sink: &Addr<EventSink>,
    ) -> Result<Vec<LogEvent>, ServiceError> {
        let valid = validate::events(events, &self.inner.config.api, now_unix())?;
        // refuse before logging: applying needs a model's catalogue
        self.current()?;
        let mut log: Vec<LogEvent> = valid
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
        let (first, _) = sink
            .send(Append(log.clone()))
            .await
            .map_err(|e| ServiceError::Unavailable(format!("event log unavailable: {e}")))?
            .map_err(|e| ServiceError::Internal(format!("event log append failed: {e}")))?;
        // the writer numbered its copy the same way: consecutive from first
        for (i, e) in log.iter_mut().enumerate() {
            e.seq = first + i as u64;
        }
        for e in &log {
            metrics().events.with_label_values(&[e.kind.as_str()]).inc();
        }
        self.apply_logged(&log).await?;
        Ok(log)
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
        let records: Vec<ItemRecord> = ready
            .into_iter()
            .map(|(it, vector)| ItemRecord {
                id: it.item_id,
                vector,
                categories: it.categories,
                title: it.title,
                created_at: it.created_at,
            })
            .collect();
        let n = records.len() as u32;
        if let Some(link) = self.inner.cluster.get() {
            // acknowledged once committed by a quorum and applied here
            let (_, index) = link
                .raft
                .write_indexed(Command::UpsertItems(records))
                .await
                .map_err(service_error)?;
            link.wait_catalog(index, CATALOG_APPLY_WAIT).await?;
            return Ok(n);
        }
        self.apply_upserts(&serving, &records).await?;
        Ok(n)
    }

    /// Puts items into this node's shards and catalogue.
    async fn apply_upserts(
        &self,
        serving: &Serving,
        records: &[ItemRecord],
    ) -> Result<(), ServiceError> {
        let shards = self.shard_actors();
        let n_shards = serving.model.shard_count.max(1);
        let mut by_shard: BTreeMap<u32, Vec<(u64, Vec<f32>)>> = BTreeMap::new();
        for r in records {
            if r.vector.len() != serving.model.dimension {
                continue;
            }
            let key = item_key(&r.id);
            let s = shard_of(key, n_shards);
            if shards.contains_key(&s) {
                by_shard.entry(s).or_default().push((key, r.vector.clone()));
            }
        }
        for (s, batch) in by_shard {
            shards[&s]
                .send(Upsert { items: batch })
                .await
                .map_err(|e| ServiceError::Unavailable(format!("shard {s} unavailable: {e}")))?
                .map_err(|e| ServiceError::Internal(e.to_string()))?;
        }
        for r in records {
            serving.catalog.upsert(
                &r.id,
                r.vector.clone(),
                &r.categories,
                r.title.clone(),
                r.created_at,
            );
        }
        Ok(())
    }

    pub async fn delete_items(&self, ids: Vec<String>) -> Result<u32, ServiceError> {
        validate::item_ids(&ids, &self.inner.config.api)?;
        let serving = self.current()?;
        if let Some(link) = self.inner.cluster.get() {
            let known = ids
                .iter()
                .filter(|id| serving.catalog.contains(item_key(id)))
                .count() as u32;
            let (_, index) = link
                .raft
                .write_indexed(Command::DeleteItems(ids))
                .await
                .map_err(service_error)?;
            link.wait_catalog(index, CATALOG_APPLY_WAIT).await?;
            return Ok(known);
        }
        self.apply_deletes(&serving, &ids).await
    }

    /// Removes items from this node's shards and catalogue; answers how
    /// many existed.
    async fn apply_deletes(&self, serving: &Serving, ids: &[String]) -> Result<u32, ServiceError> {
        let shards = self.shard_actors();
        let n_shards = serving.model.shard_count.max(1);
        let mut by_shard: BTreeMap<u32, Vec<u64>> = BTreeMap::new();
        let mut deleted = 0;
        for id in ids {
            let key = item_key(id);
            if serving.catalog.delete(key) {
                deleted += 1;
            }
            let s = shard_of(key, n_shards);
            if shards.contains_key(&s) {
                by_shard.entry(s).or_default().push(key);
            }
        }
        for (s, keys) in by_shard {
            shards[&s]
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
        let state = self.inner.user_readers[p].get(&user_id);
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
        match self.serving() {
            Some(s) => HealthView {
                status: "serving".into(),
                node_id: self.inner.config.node.id,
                model_version: s.model.version.clone(),
                shards_local: self.shard_actors().len() as u32,
                shards_total: s.model.shard_count,
            },
            None => HealthView {
                status: "loading".into(),
                node_id: self.inner.config.node.id,
                model_version: String::new(),
                shards_local: 0,
                shards_total: 0,
            },
        }
    }

    fn shard_actors(&self) -> BTreeMap<u32, ShardHandle> {
        self.inner
            .shard_actors
            .read()
            .map(|s| s.clone())
            .unwrap_or_default()
    }

    /// The shards this node holds a loaded copy of.
    pub fn local_shards(&self) -> Vec<u32> {
        self.shard_actors().keys().copied().collect()
    }

    /// Joins a cluster: from now on the shard map decides which shards this
    /// node loads, and catalogue writes go through Raft.
    pub fn attach_cluster(&self, link: Arc<ClusterLink>) -> Result<(), String> {
        self.inner
            .cluster
            .set(link)
            .map_err(|_| "the node is already part of a cluster".to_string())
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.inner.cluster.get()
    }

    /// The bundle directory of the version being served.
    pub fn current_bundle_dir(&self) -> Option<PathBuf> {
        self.inner.bundle_dir.read().ok().and_then(|d| d.clone())
    }

    /// The shards this node hosts: all of them on a single node; in a
    /// cluster, those the shard map places here (any replica state).
    fn hosted_shards(&self) -> Option<Vec<u32>> {
        let link = self.inner.cluster.get()?;
        let st = link.raft.state();
        let st = st.read();
        Some(
            st.shard_map
                .as_ref()
                .map(|m| m.shards_on(link.id()))
                .unwrap_or_default(),
        )
    }

    /// One client per shard: the local actor on a single node; in a
    /// cluster, the shard's queryable replicas (local actor or remote node).
    fn shard_clients(
        &self,
        model: &ServingModel,
        catalog: &Arc<Catalog>,
        actors: &BTreeMap<u32, ShardHandle>,
    ) -> Result<Vec<Arc<dyn ShardClient>>, ServiceError> {
        let local = |s: u32, a: &ShardHandle| LocalShard {
            shard: s,
            handle: a.clone(),
            catalog: catalog.clone(),
        };
        let Some(link) = self.inner.cluster.get() else {
            return Ok(actors
                .iter()
                .map(|(&s, a)| Arc::new(local(s, a)) as Arc<dyn ShardClient>)
                .collect());
        };
        let st = link.raft.state();
        let st = st.read();
        let map = fitting_map(st.shard_map.as_ref(), model.shard_count)?;
        let version: Arc<str> = Arc::from(model.version.as_str());
        let own = |s: u32| {
            actors
                .get(&s)
                .map(|a| Arc::new(local(s, a)) as Arc<dyn ShardClient>)
        };
        let remote = |s: u32, node: u64, addr: &str| {
            let ch = link.channel(node, addr)?;
            Ok(Arc::new(RemoteShard::new(
                s,
                node,
                version.clone(),
                ch,
                link.max_message_bytes(),
                addr,
                link.tls().cloned(),
            )) as Arc<dyn ShardClient>)
        };
        let clients = replica_sets(map, link.id(), &st.nodes, &own, &remote, &link.book)
            .into_iter()
            .map(|set| Arc::new(set) as Arc<dyn ShardClient>)
            .collect();
        Ok(clients)
    }

    /// Rebuilds the shard clients of the current version after the shard
    /// map changed without changing what this node hosts.
    pub fn rebuild_shard_clients(&self) -> Result<(), ServiceError> {
        let cur = self.current()?;
        let shards = self.shard_clients(&cur.model, &cur.catalog, &self.shard_actors())?;
        let next = Arc::new(Serving {
            model: cur.model.clone(),
            catalog: cur.catalog.clone(),
            shards,
        });
        if let Ok(mut s) = self.inner.serving.write() {
            *s = Some(next);
        }
        Ok(())
    }

    /// Applies the catalogue changes Raft committed since the last call,
    /// in log order, to this node's shards and catalogue.
    pub async fn apply_cluster_catalog(&self) -> Result<(), ServiceError> {
        let Some(link) = self.inner.cluster.get() else {
            return Ok(());
        };
        let serving = self.current()?;
        let from = link.catalog_applied();
        enum Change {
            Upsert(ItemRecord),
            Delete(String),
        }
        let (changes, upto) = {
            let st = link.raft.state();
            let st = st.read();
            let changes: Vec<Change> = st
                .catalog
                .changed_since(from)
                .map(|c| match c {
                    crate::cluster::CatalogChange::Upsert { item, .. } => {
                        Change::Upsert(item.clone())
                    }
                    crate::cluster::CatalogChange::Delete { id, .. } => {
                        Change::Delete(id.to_string())
                    }
                })
                .collect();
            (changes, st.last_applied.map_or(0, |l| l.index))
        };
        // consecutive runs of one kind go together; order across kinds is kept
        let mut i = 0;
        while i < changes.len() {
            let is_upsert = matches!(changes[i], Change::Upsert(_));
            let mut j = i;
            while j < changes.len() && matches!(changes[j], Change::Upsert(_)) == is_upsert {
                j += 1;
            }
            if is_upsert {
                let recs: Vec<ItemRecord> = changes[i..j]
                    .iter()
                    .filter_map(|c| match c {
                        Change::Upsert(r) => Some(r.clone()),
                        Change::Delete(_) => None,
                    })
                    .collect();
                self.apply_upserts(&serving, &recs).await?;
            } else {
                let ids: Vec<String> = changes[i..j]
                    .iter()
                    .filter_map(|c| match c {
                        Change::Delete(id) => Some(id.clone()),
                        Change::Upsert(_) => None,
                    })
                    .collect();
                self.apply_deletes(&serving, &ids).await?;
            }
            i = j;
        }
        link.set_catalog_applied(upto);
        Ok(())
    }

    /// Searches one of this node's shard copies for another node's
    /// coordinator, in the model version the coordinator serves: the
    /// current one, or a staged or just-retired one this node still holds
    /// (so a request stays on one version while nodes switch). Refuses
    /// (FailedPrecondition, so the caller tries another replica) a shard or
    /// version this node does not hold. Answers the version used.
    pub async fn local_shard_search(
        &self,
        shard: u32,
        model_version: &str,
        spec: SearchSpec,
    ) -> Result<(crate::shard::SearchResult, String), ServiceError> {
        let serving = self.current()?;
        let me = self.inner.config.node.id;
        let (version, catalog, actors) =
            if model_version.is_empty() || model_version == serving.model.version {
                (
                    serving.model.version.clone(),
                    serving.catalog.clone(),
                    self.shard_actors(),
                )
            } else if let Some(s) = self.standby(model_version) {
                (s.version.clone(), s.catalog.clone(), s.actors.clone())
            } else {
                return Err(ServiceError::FailedPrecondition(format!(
                    "node {me} serves model {}, not {model_version}",
                    serving.model.version
                )));
            };
        let Some(handle) = actors.get(&shard).cloned() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {me} does not hold shard {shard} of model {version}"
            )));
        };
        let result = LocalShard {
            shard,
            handle,
            catalog,
        }
        .search(spec, CallContext::default())
        .await
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
        Ok((result, version))
    }

    /// The digest of this node's copy of `shard`.
    pub async fn local_shard_digest(
        &self,
        shard: u32,
    ) -> Result<crate::cluster::proto::ShardDigestResponse, ServiceError> {
        let serving = self.current()?;
        let me = self.inner.config.node.id;
        let Some(addr) = self.shard_actors().get(&shard).cloned() else {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {me} does not hold shard {shard}"
            )));
        };
        let unavailable = |e: actix::MailboxError| {
            ServiceError::Unavailable(format!("shard {shard} unavailable: {e}"))
        };
        let digest = addr.send(Digest).await.map_err(unavailable)?;
        let stats = addr.send(Stats).await.map_err(unavailable)?;
        Ok(crate::cluster::proto::ShardDigestResponse {
            shard,
            node_id: me,
            model_version: serving.model.version.clone(),
            items: stats.items as u64,
            digest,
            applied_index: self.inner.cluster.get().map_or(0, |l| l.catalog_applied()),
        })
    }

    /// An operator's publish. On a single node: `publish`. In a cluster
    /// every node must switch together: the bundle is staged for a
    /// two-phase rollout (`rollout`), and the answer comes once this node
    /// serves it (or an error says how far it got).
    pub async fn publish_requested(&self, dir: PathBuf) -> Result<String, ServiceError> {
        if self.inner.cluster.get().is_some() {
            let staged = self.publish_cluster(dir, false).await?;
            self.wait_serving(&staged.version, rollout::HTTP_PUBLISH_WAIT)
                .await?;
            return Ok(staged.version);
        }
        self.publish(dir).await
    }

    /// Loads a bundle in the background and switches to it atomically;
    /// requests in flight finish on the version they started with. In a
    /// cluster only the shards the map places here are loaded.
    pub async fn publish(&self, dir: PathBuf) -> Result<String, ServiceError> {
        let _one_at_a_time = self.inner.swap.lock().await;
        let prepared = self.prepare(dir).await?;
        self.switch_to(prepared).await
    }

    fn mark_path(&self) -> PathBuf {
        self.inner.config.node.data_dir.join("serving.json")
    }

    /// After a restart, applies what the event logs hold since `mark` was
    /// taken to user state and item counters: this node's own log from
    /// `log_seq` and, in a cluster, the log of events forwarded by peers
    /// from `peer_log_seq` (the bundle holds neither).
    async fn replay_logs(&self, mark: &ServingMark) -> Result<usize, ServiceError> {
        let mut n = self.replay_log("events", mark.log_seq).await?;
        if self.inner.peer_events.is_some() {
            n += self.replay_log("events-peers", mark.peer_log_seq).await?;
        }
        tracing::info!(
            events = n,
            from_seq = mark.log_seq,
            from_peer_seq = mark.peer_log_seq,
            "replayed the event logs into user state"
        );
        Ok(n)
    }

    /// Applies the events of `<data_dir>/<log>` with seq >= `from`.
    async fn replay_log(&self, log: &str, from: u64) -> Result<usize, ServiceError> {
        let dir = self.inner.config.node.data_dir.join(log);
        if !dir.exists() {
            return Ok(0);
        }
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
        .map_err(|e| ServiceError::Internal(format!("reading the event log {log}: {e}")))?;
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
        if let Some(peers) = &self.inner.peer_events {
            peers.send(Flush).await.map_err(|e| e.to_string())??;
        }
        if let Err(e) = self.inner.origins.flush() {
            tracing::warn!(error = %e, "cannot record which forwarded events were applied");
        }
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
    search: ShardsConfig,
    hosted: Option<Vec<u32>>,
) -> Result<LoadedVersion, ServiceError> {
    tokio::task::spawn_blocking(move || load_version_blocking(&dir, search, hosted))
        .await
        .map_err(|e| ServiceError::Internal(format!("model loading task failed: {e}")))?
}

fn load_version_blocking(
    dir: &Path,
    search: ShardsConfig,
    hosted: Option<Vec<u32>>,
) -> Result<LoadedVersion, ServiceError> {
    let precondition = |e: String| {
        ServiceError::FailedPrecondition(format!("cannot load bundle {}: {e}", dir.display()))
    };
    let loaded = ServingModel::load(dir).map_err(|e| precondition(e.to_string()))?;
    let bundle = crate::bundle::Bundle::open(dir, &crate::bundle::OpenCheck::default())
        .map_err(|e| precondition(e.to_string()))?;
    let mut indexes = Vec::new();
    let shards = hosted.unwrap_or_else(|| (0..loaded.model.shard_count).collect());
    for s in shards {
        if s >= loaded.model.shard_count {
            return Err(precondition(format!(
                "the cluster places shard {s} here but the bundle has only {} shards; train with the cluster's shard count",
                loaded.model.shard_count
            )));
        }
        let shard = bundle
            .load_shard(s)
            .map_err(|e| precondition(e.to_string()))?;
        indexes.push(shard_index(shard, search));
    }
    Ok((loaded.model, loaded.user_states, indexes))
}

/// Loads shards `shards` of the bundle in `dir` (the served version's, of
/// `shard_count` shards), checked as a full load checks them.
fn load_shards_blocking(
    dir: &Path,
    search: ShardsConfig,
    shard_count: u32,
    shards: &[u32],
) -> Result<Vec<ShardIndex>, ServiceError> {
    if shards.is_empty() {
        return Ok(Vec::new());
    }
    let precondition = |e: String| {
        ServiceError::FailedPrecondition(format!("cannot load bundle {}: {e}", dir.display()))
    };
    let bundle = crate::bundle::Bundle::open(dir, &crate::bundle::OpenCheck::default())
        .map_err(|e| precondition(e.to_string()))?;
    let mut out = Vec::with_capacity(shards.len());
    for &s in shards {
        if s >= shard_count {
            return Err(precondition(format!(
                "the cluster places shard {s} here but the bundle has only {shard_count} shards"
            )));
        }
        let shard = bundle
            .load_shard(s)
            .map_err(|e| precondition(e.to_string()))?;
        out.push(shard_index(shard, search));
    }
    Ok(out)
}

/// A loaded shard, searched as `[shards]` says.
fn shard_index(shard: crate::bundle::LoadedShard, search: ShardsConfig) -> ShardIndex {
    let mut index = ShardIndex::from_loaded(shard, search.expansion_search);
    if search.search == ShardSearchEngine::Usearch {
        index.search_through_usearch();
    }
    index
}

/// `data_dir/serving.json`: which model version is live and the first
/// event-log seq it has not seen (events from there are replayed into user
/// state after a restart).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
struct ServingMark {
    model_version: String,
    log_seq: u64,
    /// The same for `<data_dir>/events-peers/` (cluster nodes; absent in
    /// marks written before that log existed).
    #[serde(default)]
    peer_log_seq: u64,
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

/// Routing refusals as the service reports them.
impl From<crate::routing::RoutingError> for ServiceError {
    fn from(e: crate::routing::RoutingError) -> Self {
        use crate::routing::RoutingError::*;
        match e {
            NoShardMap => ServiceError::Unavailable(e.to_string()),
            ShardCount { .. } => ServiceError::FailedPrecondition(e.to_string()),
        }
    }
}
