//! One recommend request, end to end, under its deadline: user state,
//! recall fan-out, merge, ranking (`ranking::PoolScoring`), rerank, each a
//! stage function here. Every stage gets a share of the budget (time a
//! stage leaves unused passes to the next); a stage that runs out returns
//! what it has and says so in `degraded` (`service::types::Degraded`), and
//! a late shard is reported, never awaited.

use crate::catalog::{Catalog, ItemFacts};
use crate::config::StageBudget;
use crate::features::{
    Device, ItemInput, RecallPath, RequestContext, UserFeatures, UserState, N_FEATURES,
};
use crate::ids::KeyMap;
use crate::ids::{item_key, shard_of, user_key};
use crate::model::ServingModel;
use crate::ranking::rerank::{rerank, RerankConfig};
use crate::ranking::score::{feature_rows, Cascade, ItemSource, Ranker};
use crate::ranking::worker::RankWorker;
use crate::ranking::PoolScoring;
use crate::recall::{local_paths, merge, Candidate, PathResult, RecallConfig};
use crate::routing::{CallBatch, CallContext, SearchSpec, ShardClient, UserStates};
use crate::service::types::{Degraded, Recommendation, RecommendedItem, ServiceError, StageTiming};
use crate::service::validate::ValidRecommend;
use crate::shard::{per_shard_k, KeyedVectors, VectorTable};
use crate::telemetry::metrics::metrics;
use actix::Addr;
use futures::future::join_all;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// One model version's serving state: everything a request reads.
pub struct Serving {
    pub model: Arc<ServingModel>,
    pub catalog: Arc<Catalog>,
    /// One client per shard id.
    pub shards: Vec<Arc<dyn ShardClient>>,
}

/// What a coordinator needs besides the request.
#[derive(Clone)]
pub struct RecommendEnv {
    pub serving: Arc<Serving>,
    /// Where the user's realtime state is read (this node's partition
    /// copy, or another node's).
    pub users: Arc<UserStates>,
    pub rank: Addr<RankWorker>,
    pub recall: RecallConfig,
    pub rerank: RerankConfig,
    pub budget: StageBudget,
    pub batch_rows: usize,
    pub cascade: Cascade,
}

/// The features' view of the request's candidates.
struct CandidateItems {
    facts: KeyMap<ItemFacts>,
    vectors: VectorTable,
}

impl ItemSource for CandidateItems {
    fn item_input(&self, key: u64) -> Option<ItemInput<'_>> {
        let f = self.facts.get(&key)?;
        Some(f.input(self.vectors.get(key)))
    }
}

struct Clock {
    t0: Instant,
    total: Duration,
    budget: StageBudget,
    timings: Vec<StageTiming>,
    last: Instant,
}

impl Clock {
    /// The absolute deadline of the stage whose cumulative share ends at `share`.
    fn until(&self, share: f64) -> Instant {
        self.t0 + self.total.mul_f64(share.clamp(0.0, 1.0))
    }

    fn lap(&mut self, stage: &str) {
        let now = Instant::now();
        let d = now - self.last;
        metrics()
            .stage_seconds
            .with_label_values(&[stage])
            .observe(d.as_secs_f64());
        self.timings.push(StageTiming {
            stage: stage.into(),
            micros: d.as_micros().min(u32::MAX as u128) as u32,
        });
        self.last = now;
    }
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub async fn recommend(
    env: RecommendEnv,
    req: ValidRecommend,
    request_id: String,
) -> Result<Recommendation, ServiceError> {
    let t0 = Instant::now();
    let mut clock = Clock {
        t0,
        total: Duration::from_millis(req.deadline_ms as u64),
        budget: env.budget,
        timings: Vec::with_capacity(6),
        last: t0,
    };
    let b = clock.budget;
    let (user_end, recall_end, rank_end) = (b.user, b.user + b.recall, b.user + b.recall + b.rank);
    let serving = env.serving.clone();
    let model = &serving.model;
    let catalog = &serving.catalog;
    let mut degraded: Vec<Degraded> = Vec::new();

    let UserStage {
        state,
        vector,
        vectors,
    } = user_stage(
        &env,
        &req,
        &request_id,
        clock.until(user_end),
        &mut degraded,
    )
    .await;
    clock.lap("user");

    let now = req.timestamp.unwrap_or_else(now_unix);
    let ctx = RequestContext {
        now,
        device: Device::parse(&req.device),
    };
    let last_cats = state
        .recent
        .back()
        .map(|r| catalog.categories_of(r.item))
        .unwrap_or_default();
    let uf = UserFeatures::prepare(
        &state,
        vector.as_deref(),
        &last_cats,
        &ctx,
        &model.cf,
        &model.params.state,
    );
    let recall = RecallInput {
        uf: &uf,
        state: &state,
        query: vector.as_deref(),
        vectors,
    };
    let recalled = recall_stage(
        &env,
        &req,
        &request_id,
        recall,
        clock.until(recall_end),
        &mut degraded,
    )
    .await;
    clock.lap("recall");

    // --- rank: features here, scoring on the worker pool
    let items = CandidateItems {
        facts: catalog.facts_of(recalled.candidates.iter().map(|c| c.key)),
        vectors: recalled.vectors,
    };
    let (rows, kept) = feature_rows(&uf, &recalled.candidates, &items);
    let scores = rank_stage(
        &env,
        &model.ranker,
        rows,
        clock.until(rank_end),
        &mut degraded,
    )
    .await;
    clock.lap("rank");

    // --- rerank: diversity and exploration, seeded per request
    let kept_cands: Vec<&Candidate> = kept.iter().map(|&i| &recalled.candidates[i]).collect();
    let sim = |a: usize, b: usize| similarity(&items, kept_cands[a].key, kept_cands[b].key);
    let seed = req.seed.unwrap_or_else(|| user_key(&request_id));
    let ranked = rerank(&scores, req.k, &env.rerank, &sim, seed);
    let out: Vec<RecommendedItem> = ranked
        .iter()
        .filter_map(|r| {
            let c = kept_cands[r.index];
            Some(RecommendedItem {
                item_id: catalog.external_id(c.key)?,
                score: r.score,
                sources: c.prov.paths().map(|p| p.as_str().to_string()).collect(),
                exploration: r.explored,
            })
        })
        .collect();
    clock.lap("rerank");
    let total = t0.elapsed();
    clock.timings.push(StageTiming {
        stage: "total".into(),
        micros: total.as_micros().min(u32::MAX as u128) as u32,
    });
    metrics().coverage.observe(recalled.coverage);
    for d in &degraded {
        metrics().degraded.with_label_values(&[d.label()]).inc();
    }
    Ok(Recommendation {
        items: out,
        model_version: model.version.clone(),
        coverage: recalled.coverage,
        degraded,
        timings: clock.timings,
        request_id,
    })
}

/// What the user stage found: realtime state, and a vector (the model's,
/// or folded in from the state) with the vectors it was folded from.
struct UserStage {
    state: Arc<UserState>,
    vector: Option<Vec<f32>>,
    vectors: VectorTable,
}

/// The user's realtime state and a vector to query the shards with.
async fn user_stage(
    env: &RecommendEnv,
    req: &ValidRecommend,
    request_id: &str,
    until: Instant,
    degraded: &mut Vec<Degraded>,
) -> UserStage {
    let serving = &env.serving;
    let state: Arc<UserState> = match env.users.get(&req.user_id, until, request_id).await {
        Ok(state) => state.unwrap_or_default(),
        Err(e) => {
            // this node's own copy of the user, if any, beats none
            degraded.push(Degraded::UserStateUnavailable(e.to_string()));
            env.users.local(&req.user_id).unwrap_or_default()
        }
    };
    let mut vector = serving.model.user_vector(&req.user_id).map(|v| v.to_vec());
    let mut vectors = VectorTable::default();
    if vector.is_none() && !state.recent.is_empty() {
        // a user the model never saw: fold a vector in from what they did
        let keys: Vec<u64> = state.recent.iter().map(|r| r.item).collect();
        let (got, _, _) = fetch_vectors(&serving.shards, &keys, until, request_id).await;
        got.into_iter().for_each(|v| vectors.absorb(v));
        vector = fold_in(&serving.model, &state, &vectors);
        if vector.is_none() {
            degraded.push(Degraded::NoUserVector);
        }
    }
    UserStage {
        state,
        vector,
        vectors,
    }
}

/// What recall found: merged candidates, the vectors known for them, and
/// the share of shards that answered.
struct Recalled {
    candidates: Vec<Candidate>,
    vectors: VectorTable,
    coverage: f64,
}

/// What recall starts from: the user's features and state, the query
/// vector, and the vectors the user stage already fetched.
struct RecallInput<'a> {
    uf: &'a UserFeatures<'a>,
    state: &'a UserState,
    query: Option<&'a [f32]>,
    vectors: VectorTable,
}

/// Local paths first (cheap), then the ANN fan-out, which also brings back
/// the vectors of every local candidate; then the merge with quotas.
async fn recall_stage(
    env: &RecommendEnv,
    req: &ValidRecommend,
    request_id: &str,
    input: RecallInput<'_>,
    until: Instant,
    degraded: &mut Vec<Degraded>,
) -> Recalled {
    let serving = &env.serving;
    let catalog = &serving.catalog;
    let RecallInput {
        uf,
        state,
        query,
        mut vectors,
    } = input;
    let mut exclude: Vec<u64> = state.seen().to_vec();
    exclude.extend(req.exclude.iter().map(|id| item_key(id)));
    exclude.sort_unstable();
    exclude.dedup();
    let wanted: Option<Vec<u16>> = (!req.categories.is_empty()).then(|| {
        req.categories
            .iter()
            .filter_map(|c| catalog.category_index(c))
            .collect()
    });
    let fresh = catalog.fresh_list();
    let mut paths = {
        // one read lock for every key the local paths check
        let live = catalog.live_view();
        let allow = |key: u64| -> bool {
            // every key the local paths offer comes from the catalogue's lists
            exclude.binary_search(&key).is_err() && live.allows_listed(key, wanted.as_deref())
        };
        local_paths(
            uf,
            &serving.model.lists,
            Some(fresh.as_ref()),
            &env.recall,
            &allow,
        )
    };
    let mut coverage = 1.0;
    if let Some(q) = query {
        let fetch: Vec<u64> = paths
            .iter()
            .flat_map(|p| p.items.iter().map(|x| x.0))
            .filter(|&k| !vectors.contains(k))
            .collect();
        let n_shards = serving.shards.len().max(1);
        let spec = SearchSpec {
            query: Arc::from(q),
            k: per_shard_k(env.recall.ann_k, n_shards),
            exclude: Arc::new(exclude),
            categories: wanted.map(Arc::new),
            fetch: Arc::from(fetch.as_slice()),
        };
        let (mut hits, got, answered) =
            ann_fan_out(&serving.shards, spec, until, request_id, degraded).await;
        coverage = answered as f64 / n_shards as f64;
        got.into_iter().for_each(|v| vectors.absorb(v));
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        hits.truncate(env.recall.ann_k);
        paths.insert(
            0,
            PathResult {
                path: RecallPath::Ann,
                items: hits,
            },
        );
    } else if !serving.shards.is_empty() {
        // no query vector: the candidates still need vectors for features
        let keys: Vec<u64> = paths
            .iter()
            .flat_map(|p| p.items.iter().map(|x| x.0))
            .collect();
        let (got, answered, n) = fetch_vectors(&serving.shards, &keys, until, request_id).await;
        coverage = answered as f64 / n.max(1) as f64;
        got.into_iter().for_each(|v| vectors.absorb(v));
    }
    for p in &paths {
        metrics()
            .path_candidates
            .with_label_values(&[p.path.as_str()])
            .observe(p.items.len() as f64);
    }
    Recalled {
        candidates: merge(&paths, &env.recall.merge),
        vectors,
        coverage,
    }
}

/// ALS fold-in from the user's recent items that have vectors.
fn fold_in(model: &ServingModel, state: &UserState, vectors: &VectorTable) -> Option<Vec<f32>> {
    let gram = model.gram.as_ref()?;
    let items: Vec<(&[f32], f32)> = state
        .recent
        .iter()
        .filter_map(|r| vectors.get(r.item).map(|v| (v, r.strength)))
        .collect();
    if items.is_empty() {
        return None;
    }
    let als = &model.params.als;
    crate::training::als::fold_in_from_vectors(gram, als.regularization, als.alpha, &items).ok()
}

/// Vectors of `keys` from the shards that hold them; (vectors, shards that
/// answered, shards asked).
pub(super) async fn fetch_vectors(
    shards: &[Arc<dyn ShardClient>],
    keys: &[u64],
    until: Instant,
    request_id: &str,
) -> (Vec<KeyedVectors>, usize, usize) {
    let n = shards.len() as u32;
    if n == 0 || keys.is_empty() {
        return (Vec::new(), 0, 0);
    }
    let mut by_shard: HashMap<u32, Vec<u64>> = HashMap::new();
    for &k in keys {
        by_shard.entry(shard_of(k, n)).or_default().push(k);
    }
    let asked = by_shard.len();
    // each shard's fetch goes out on its own (no batch, no plan), but
    // carries the request's deadline and id like its searches do
    let ctx = CallContext {
        deadline: Some(until),
        batch: None,
        plan: None,
        request_id: Some(Arc::from(request_id)),
    };
    let calls = by_shard.into_iter().map(|(s, ks)| {
        let client = shards[s as usize].clone();
        let ctx = ctx.clone();
        async move {
            let keys = Arc::from(ks.as_slice());
            tokio::time::timeout_at(until.into(), client.vectors(keys, ctx)).await
        }
    });
    let mut out = Vec::new();
    let mut answered = 0;
    for r in join_all(calls).await {
        if let Ok(Ok(v)) = r {
            answered += 1;
            out.push(v);
        }
    }
    (out, answered, asked)
}

/// The copies this request asks first: local, then as few other nodes as
/// cover the rest (`routing::plan_copies`); None on a single node.
fn plan_request(shards: &[Arc<dyn ShardClient>]) -> Option<Arc<crate::routing::CopyPlan>> {
    static SALT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut copies: Vec<Vec<crate::routing::CopyInfo>> = vec![Vec::new(); shards.len()];
    for s in shards {
        if let Some(slot) = copies.get_mut(s.shard() as usize) {
            *slot = s.copies();
        }
    }
    if copies.iter().all(|c| c.is_empty()) {
        return None;
    }
    let salt = SALT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    crate::routing::plan_copies(&copies, salt).map(Arc::new)
}

/// Searches every shard at once; returns (hits, vectors, shards answered).
async fn ann_fan_out(
    shards: &[Arc<dyn ShardClient>],
    spec: SearchSpec,
    until: Instant,
    request_id: &str,
    degraded: &mut Vec<Degraded>,
) -> (Vec<(u64, f32)>, Vec<KeyedVectors>, usize) {
    let batch = CallBatch::new();
    let ctx = CallContext {
        deadline: Some(until),
        batch: Some(batch.clone()),
        plan: plan_request(shards),
        request_id: Some(Arc::from(request_id)),
    };
    let specs = spec.split_by_shard(shards.len() as u32);
    let calls = shards.iter().map(|c| {
        let c = c.clone();
        let spec = specs.get(c.shard() as usize).unwrap_or(&spec).clone();
        let ctx = ctx.clone();
        async move {
            (
                c.shard(),
                tokio::time::timeout_at(until.into(), c.search(spec, ctx)).await,
            )
        }
    });
    let mut hits = Vec::new();
    let mut vectors = Vec::new();
    let mut answered = 0;
    // The first poll starts every shard's first call; remote ones only
    // queue in the batch, which then goes out as one RPC per node.
    let mut all = std::pin::pin!(join_all(calls));
    let first = futures::poll!(all.as_mut());
    batch.send();
    let results = match first {
        std::task::Poll::Ready(r) => r,
        std::task::Poll::Pending => all.await,
    };
    for (shard, r) in results {
        match r {
            Ok(Ok(res)) => {
                answered += 1;
                hits.extend(res.hits);
                vectors.push(res.vectors);
            }
            Ok(Err(e)) => degraded.push(Degraded::ShardFailed(e)),
            Err(_) => degraded.push(Degraded::ShardDeadline { shard }),
        }
    }
    (hits, vectors, answered)
}

/// Scores the rows (`ranking::PoolScoring`: this thread for one batch, the
/// worker pool for more); when scoring fails or misses the deadline, falls
/// back to rank fusion computed here (cheap) and says so.
async fn rank_stage(
    env: &RecommendEnv,
    ranker: &Arc<Ranker>,
    rows: Vec<f32>,
    until: Instant,
    degraded: &mut Vec<Degraded>,
) -> Vec<f32> {
    // the fallback order is computed before the rows leave for a worker
    // (five rank features per row: cheaper than keeping a copy of the rows)
    let mut fallback = vec![0f32; rows.len() / N_FEATURES];
    if Ranker::RankFusion
        .score_rows(&rows, &mut fallback, Cascade::OFF)
        .is_err()
    {
        fallback.fill(0.0);
    }
    let pool = PoolScoring {
        workers: &env.rank,
        batch_rows: env.batch_rows,
        cascade: env.cascade,
    };
    match pool.score(ranker, rows, until).await {
        Ok(scores) => scores,
        Err(e) => {
            degraded.push(Degraded::RankFallback(e));
            fallback
        }
    }
}

/// Similarity for diversity: embedding cosine when both vectors are
/// known, else category overlap.
fn similarity(items: &CandidateItems, a: u64, b: u64) -> f32 {
    if let (Some(x), Some(y)) = (items.vectors.get(a), items.vectors.get(b)) {
        let d = crate::linalg::dot(x, y);
        let n = crate::linalg::norm(x) * crate::linalg::norm(y);
        return if n > 0.0 {
            (d / n).clamp(0.0, 1.0)
        } else {
            0.0
        };
    }
    match (items.facts.get(&a), items.facts.get(&b)) {
        (Some(x), Some(y)) if !x.categories.is_empty() && !y.categories.is_empty() => {
            let shared = x
                .categories
                .iter()
                .filter(|c| y.categories.contains(c))
                .count();
            let union = x.categories.len() + y.categories.len() - shared;
            shared as f32 / union as f32
        }
        _ => 0.0,
    }
}
