//! A serving node: the shared core every front end (gRPC, HTTP, the demo)
//! calls, one method per operation. `Node` is the composition root: `start`
//! builds the parts and the methods here are the operations, validating at
//! the edge and delegating to the parts:
//!
//! - `events` (`EventPipeline`): the event logs, dedup of forwarded events,
//!   ingest, forwarding to peers, replay after a restart, flush, and the
//!   user state actors it writes (seeding, loading and dropping the user
//!   partitions this node holds, `held_users`);
//! - `model_host` (`ModelHost`): the served version and the versions beside
//!   it, loading bundles and shards, the swap, the serving mark;
//! - `catalog_apply`: item upserts and deletes into shards and catalogue,
//!   and the cluster's committed catalogue changes in log order;
//! - `peer`: shard searches and digests answered for other nodes, and the
//!   shard clients a version is served through;
//! - `rollout`: the cluster-wide two-phase rollout step and staging a
//!   publish.
//!
//! `Node` itself holds the config, the cluster link (set once), the user
//! state routes (the local partitions' readers, or a copy elsewhere, for
//! requests), the rank workers and the request counter. The
//! flows that span parts stay here: a model swap (`publish`, `switch_to`,
//! `rehost_shards`) holds `ModelHost`'s swap lock, builds the shard clients
//! (`peer`), installs the version (`ModelHost`) and, on the first load
//! after a restart, replays the event logs (`EventPipeline`).
//!
//! Owns: wiring, validation at the edge, the per-operation flows for
//! events, items and model swaps. Must not touch: wire formats (`api`),
//! the recommend flow itself (`coordinator`).

pub mod bundle_fetch;
mod catalog_apply;
pub mod catchup;
mod event_ack;
mod event_forward;
mod event_sink;
pub use event_sink::SinkError;
mod events;
mod held_users;
pub use held_users::PartitionSet;
pub mod item_counts;
mod member;
pub use member::{start_cluster, JoinError};
mod model_host;
mod partition_fetch;
mod peer;
mod recent_events;
pub mod rollout;
mod user_routes;

use crate::cluster::{Command, ItemRecord};
use crate::config::NodeConfig;
use crate::control::service_error;
use crate::control::ClusterLink;
use crate::coordinator::{RecommendEnv, Serving};
use crate::ids::item_key;
use crate::ranking::worker::{start_rank_workers, RankWorker};
use crate::routing::SearchSpec;
use crate::service::types::*;
use crate::service::validate;
use crate::shard::SearchPool;
use crate::telemetry::metrics::metrics;
use crate::userstate::{UserReader, UserStateActor};
use actix::{Actor, Addr, Arbiter};
use events::{EventLogs, EventPipeline};
use model_host::{ModelHost, Prepared, ServingMark, Standby};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

/// `Node::attach_cluster` on a node that already joined one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the node is already part of a cluster")]
pub struct AlreadyInCluster;

/// A handle to the node; cheap to clone, shared by every front end.
#[derive(Clone)]
pub struct Node {
    inner: Arc<Inner>,
}

struct Inner {
    config: NodeConfig,
    /// Set once when the node runs in a cluster.
    cluster: OnceLock<Arc<ClusterLink>>,
    /// Where requests read user states: these partitions' readers, or a
    /// copy of the user's partition on another node.
    user_routing: user_routes::UserRouting,
    rank: Addr<RankWorker>,
    requests: AtomicU64,
    /// The event logs, ingest, forwarding and replay.
    events: EventPipeline,
    /// The served version, the versions beside it and the swap.
    host: ModelHost,
}

/// How long `GetUser` waits for a copy of the user's partition elsewhere.
const USER_READ_WAIT: std::time::Duration = std::time::Duration::from_secs(2);

/// How long a catalogue write waits for this node to apply it after the
/// cluster committed it.
const CATALOG_APPLY_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

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
        let logs = EventLogs::open(&config, &data_dir)?;
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
        let users = Arc::new(users);
        let node = Node {
            inner: Arc::new(Inner {
                cluster: OnceLock::new(),
                events: EventPipeline::new(logs, users, Arc::default(), &config),
                host: ModelHost::new(search_pool, config.shards, &config.node.data_dir),
                user_routing: user_routes::UserRouting::new(Arc::new(user_readers)),
                rank,
                requests: AtomicU64::new(0),
                config,
            }),
        };
        node.inner.events.start_sync_ticks(matches!(
            node.inner.config.events.fsync,
            crate::eventlog::FsyncPolicy::IntervalMs(_)
        ));
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
        self.inner.host.serving()
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
            return ServiceError::unavailable(
                "no model is loaded yet; publish one: funnel admin --addr HTTP_ADDR publish BUNDLE_DIR",
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
        ServiceError::unavailable(msg)
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
            users: self.inner.user_routing.current(),
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
        let span = tracing::info_span!("recommend", request_id = %request_id, user = %req.user_id);
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
    ///
    /// Runs on a task of its own: once an event is logged it is applied and
    /// forwarded even if the client hangs up meanwhile (a dropped request
    /// future would leave it logged but unapplied until a restart).
    pub async fn ingest_events(&self, events: Vec<EventIn>) -> Result<u32, ServiceError> {
        let node = self.clone();
        let task = tokio::spawn(async move {
            let log = node
                .inner
                .events
                .ingest_client(events, &|| node.current())
                .await?;
            if let Some(link) = node.cluster() {
                node.inner.events.forward(link, &log).await?;
            }
            Ok(log.len() as u32)
        });
        task.await
            .map_err(|e| ServiceError::internal_from("the event ingest task failed", e))?
    }

    /// Events node `origin` accepted and forwarded (or that this node
    /// fetched from it to catch up): logged in the forwarded-event log and
    /// applied here, not forwarded again. An event whose (origin, seq) was
    /// applied already is skipped; answers how many were new.
    pub async fn ingest_forwarded_events(
        &self,
        origin: u64,
        origin_log: u64,
        events: Vec<crate::proto::data::ForwardedEvent>,
    ) -> Result<u32, ServiceError> {
        // on a task of its own: the sender gives up after its timeout and
        // drops the request, and a dropped future between claiming the
        // events' (origin, seq) and applying them lost them for good (the
        // claims made catch-up skip them; found by the chaos event-count
        // check with a paused node)
        let node = self.clone();
        let task = tokio::spawn(async move {
            node.inner
                .events
                .ingest_forwarded(node.cluster(), origin, origin_log, events, &|| {
                    node.current()
                })
                .await
        });
        task.await
            .map_err(|e| ServiceError::internal_from("the forwarded-event task failed", e))?
    }

    /// Identity of this node's own event log, sent with its events.
    pub fn event_log_id(&self) -> u64 {
        self.inner.events.event_log_id()
    }

    /// Which forwarded events were applied here (`catchup`).
    pub(crate) fn origins(&self) -> &catchup::Origins {
        self.inner.events.origins()
    }

    /// Events this node accepted from clients with seq > `after` whose
    /// user `keep` selects (None: all), at most `max` of them and `scan`
    /// read, for a peer catching up (`ShardData.FetchEvents`).
    pub async fn client_events_after(
        &self,
        after: u64,
        max: usize,
        scan: usize,
        keep: Option<PartitionSet>,
    ) -> Result<catchup::Scanned, ServiceError> {
        self.inner
            .events
            .client_events_after(after, max, scan, keep)
            .await
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
        catalog_apply::apply_upserts(&self.inner.host, &serving, &records).await?;
        Ok(n)
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
        catalog_apply::apply_deletes(&self.inner.host, &serving, &ids).await
    }

    pub async fn get_user(&self, user_id: String) -> Result<UserView, ServiceError> {
        crate::ids::validate_id(&user_id)
            .map_err(|e| ServiceError::InvalidArgument(format!("user_id: {e}")))?;
        let serving = self.current()?;
        let states = self.inner.user_routing.current();
        let deadline = std::time::Instant::now() + USER_READ_WAIT;
        let state = states
            .get(&user_id, deadline, &self.request_id())
            .await
            .map_err(|e| ServiceError::unavailable(format!("{e}; ask again shortly")))?;
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

    pub fn get_item(&self, item_id: String) -> Result<ItemView, ServiceError> {
        crate::ids::validate_id(&item_id)
            .map_err(|e| ServiceError::InvalidArgument(format!("item_id: {e}")))?;
        let serving = self.current()?;
        let cat = &serving.catalog;
        let key = item_key(&item_id);
        let facts = cat.facts(key);
        let stats = facts
            .as_ref()
            .map(|f| f.stats)
            .or_else(|| cat.stats_of(key))
            .unwrap_or_default();
        Ok(ItemView {
            item_id,
            known: facts.is_some(),
            categories: facts
                .as_ref()
                .map(|f| {
                    f.categories
                        .iter()
                        .map(|&c| cat.category_name(c).unwrap_or_else(|| c.to_string()))
                        .collect()
                })
                .unwrap_or_default(),
            created_at: facts.as_ref().and_then(|f| f.created_at).unwrap_or(0),
            interactions: stats.count,
            trending: stats.trending_at(now_unix()),
        })
    }

    pub fn health(&self) -> HealthView {
        match self.serving() {
            Some(s) => HealthView {
                status: "serving".into(),
                node_id: self.inner.config.node.id,
                model_version: s.model.version.clone(),
                shards_local: self.inner.host.shard_actors().len() as u32,
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

    /// The shards this node holds a loaded copy of.
    pub fn local_shards(&self) -> Vec<u32> {
        self.inner.host.shard_actors().keys().copied().collect()
    }

    /// Joins a cluster: from now on the shard map decides which shards this
    /// node loads, and catalogue writes go through Raft.
    pub fn attach_cluster(&self, link: Arc<ClusterLink>) -> Result<(), AlreadyInCluster> {
        self.inner.cluster.set(link).map_err(|_| AlreadyInCluster)
    }

    pub fn cluster(&self) -> Option<&Arc<ClusterLink>> {
        self.inner.cluster.get()
    }

    /// The bundle directory of the version being served.
    pub fn current_bundle_dir(&self) -> Option<PathBuf> {
        self.inner.host.bundle_dir()
    }

    /// A prepared or retired version this node still holds.
    pub fn standby(&self, version: &str) -> Option<Arc<Standby>> {
        self.inner.host.standby(version)
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

    /// Follows the user partition map: points user-state reads at the
    /// copies it places, drops the states of partitions no longer held
    /// here and loads the ones newly placed here (`held_users`). Cheap when
    /// nothing moved.
    pub async fn follow_partition_map(&self) -> Result<(), ServiceError> {
        let Some(link) = self.inner.cluster.get() else {
            return Ok(());
        };
        self.inner.user_routing.follow_map(link);
        let want = {
            let st = link.raft.state();
            let st = st.read();
            st.partition_map
                .as_ref()
                .map(|m| (m.shards, m.shards_on(link.id()).into_iter().collect()))
        };
        let Some((count, want)) = want else {
            return Ok(());
        };
        if self.inner.events.holds(count, &want) {
            return Ok(());
        }
        // no version switch while partitions load: it would seed and
        // replay under a different serving mark
        let _one_at_a_time = self.inner.host.one_at_a_time().await;
        let serving = self.serving();
        let events = &self.inner.events;
        let begun = events
            .begin_partitions(
                count,
                &want,
                serving.clone().map(|s| (s, self.inner.host.read_mark())),
            )
            .await?;
        let (Some(load), Some(serving)) = (begun, serving) else {
            return Ok(());
        };
        let version = serving.model.version.clone();
        match self.fetch_partition_events(link, &load, &version).await {
            Ok(fetched) => {
                tracing::info!(partitions = ?load.partitions, fetched, "fetched the other origins' events of loading user partitions");
                events.finish_partitions(load, &serving).await.map(|_| ())
            }
            Err(e) => {
                events.abandon(load).await;
                Err(e)
            }
        }
    }

    /// This node's serving mark of `version`, for a peer that reads its
    /// logs from there (`what` starts there); FailedPrecondition when it
    /// does not serve that version.
    fn mark_of(&self, version: &str, what: &str) -> Result<ServingMark, ServiceError> {
        self.inner
            .host
            .read_mark()
            .filter(|m| m.model_version == version)
            .ok_or_else(|| {
                ServiceError::failed_precondition(format!(
                    "node {} does not serve model version {version} (it serves {}), so it cannot tell where that version's {what}; ask again once it does",
                    self.inner.config.node.id,
                    self.model_version().unwrap_or_else(|| "none".into())
                ))
            })
    }

    /// The user partitions whose state is complete here, once a model is
    /// served (None before, or when no partition map is known).
    pub fn loaded_partitions(&self) -> Option<Vec<u32>> {
        self.serving()?;
        self.inner.events.live_partitions()
    }

    /// A peer's `GetUserState`: the user's state from this node's copy of
    /// `partition` (refused when this node holds none).
    pub fn user_state_for_peer(
        &self,
        user_id: &str,
        partition: u32,
    ) -> Result<Option<Arc<crate::features::UserState>>, ServiceError> {
        // a node that serves no model has not seeded nor replayed its copy
        self.current()?;
        let states = self.inner.user_routing.current();
        user_routes::answer(self.inner.cluster.get(), &states, user_id, partition)
    }

    /// Rebuilds the shard clients of the current version after the shard
    /// map changed without changing what this node hosts.
    pub fn rebuild_shard_clients(&self) -> Result<(), ServiceError> {
        let cur = self.current()?;
        peer::rebuild_shard_clients(&self.inner.host, self.cluster(), &cur)
    }

    /// Applies the catalogue changes Raft committed since the last call,
    /// in log order, to this node's shards and catalogue.
    pub async fn apply_cluster_catalog(&self) -> Result<(), ServiceError> {
        let Some(link) = self.inner.cluster.get() else {
            return Ok(());
        };
        let serving = self.current()?;
        catalog_apply::apply_committed(&self.inner.host, link, &serving).await
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
        peer::search(&self.inner.host, me, &serving, shard, model_version, spec).await
    }

    /// The digest of this node's copy of `shard`.
    pub async fn local_shard_digest(
        &self,
        shard: u32,
    ) -> Result<crate::proto::data::ShardDigestResponse, ServiceError> {
        let serving = self.current()?;
        let me = self.inner.config.node.id;
        peer::digest(&self.inner.host, &self.inner.cluster, me, &serving, shard).await
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
        let _one_at_a_time = self.inner.host.one_at_a_time().await;
        let prepared = self.prepare(dir).await?;
        self.switch_to(prepared).await
    }

    /// Loads the bundle in `dir` beside the served version: the model,
    /// this node's shards (started as actors) and the catalogue overlay
    /// carried over. Nothing is served from it until `switch_to`.
    async fn prepare(&self, dir: PathBuf) -> Result<Prepared, ServiceError> {
        let hosted = self.hosted_shards();
        let keep_user = self.inner.events.user_filter();
        self.inner.host.prepare(dir, hosted, keep_user).await
    }

    /// Serves `p` from now on; the version served before is retired (kept
    /// for `RETIRED_GRACE`). The caller holds the model host's swap lock.
    async fn switch_to(&self, p: Prepared) -> Result<String, ServiceError> {
        let host = &self.inner.host;
        let Prepared {
            standby,
            user_states,
        } = p;
        // peers keep finding this version here until it is served
        let _switching = model_host::SwitchingTo::new(host, &standby);
        // catalogue changes applied since `prepare` ride along: carry again
        let catalog = host.carry_catalog(&standby.model, &standby.actors).await;
        // seed user state for users the node does not track yet, in the
        // user partitions it holds
        self.inner.events.seed(user_states).await;
        let shards =
            peer::shard_clients(self.cluster(), &standby.model, &catalog, &standby.actors)?;
        let version = standby.version.clone();
        let dir = standby.dir.clone();
        let serving = Arc::new(Serving {
            model: standby.model.clone(),
            catalog: catalog.clone(),
            shards,
        });
        // read before installing: from here on events are applied as they
        // arrive, so a replay after a restart stops here
        let upto = self.inner.events.positions().await;
        let first_load = host.install(serving, &standby)?;
        // remember from which log positions this version's state is live;
        // the first load after a restart of the version that was live
        // replays what the logs hold since then (single node and cluster)
        let before = if first_load {
            host.read_mark().filter(|m| m.model_version == version)
        } else {
            None
        };
        let mark = match before {
            Some(m) => {
                self.inner
                    .events
                    .replay_logs(&m, upto, &|| self.current())
                    .await?;
                m
            }
            // from the positions before the install: an event logged
            // between them and now was applied live and must be replayed
            // after a restart too
            None => ServingMark {
                model_version: version.clone(),
                log_seq: upto.own,
                peer_log_seq: upto.peers,
            },
        };
        host.write_mark(&mark);
        tracing::info!(node_id = self.inner.config.node.id, version = %version, dir = %dir.display(), "model version active");
        Ok(version)
    }

    /// Brings the shards this node hosts for the served version to `want`
    /// without reloading the model or the shards that stay (a shard move
    /// adds or drops one copy): loads each added shard from `dir` (the
    /// served version's files, see `dir_with_shards`), puts the catalogue overlay into it as `prepare`
    /// does, and stops routing to the dropped ones. Nothing changes when
    /// loading fails; the caller can fall back to a full `publish`.
    pub async fn rehost_shards(&self, want: &[u32], dir: PathBuf) -> Result<(), ServiceError> {
        let host = &self.inner.host;
        let _one_at_a_time = host.one_at_a_time().await;
        let cur = self.current()?;
        let next = host.load_added_shards(&cur, want, dir).await?;
        let shards = peer::shard_clients(self.cluster(), &cur.model, &cur.catalog, &next)?;
        let serving = Arc::new(Serving {
            model: cur.model.clone(),
            catalog: cur.catalog.clone(),
            shards,
        });
        host.install_shards(serving, next)
    }

    /// Flushes the event log; call on shutdown.
    pub async fn flush(&self) -> Result<(), SinkError> {
        self.inner.events.flush().await
    }
}
