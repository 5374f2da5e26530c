//! The offline pipeline: fit every recall model on a set of interactions,
//! build ranker training rows from what recall actually returns, train the
//! ranker, and answer "recommend for user u" offline with the same pure
//! functions the server uses (features, local recall paths, merge,
//! scoring, rerank). Evaluation and `funnel train` are both built on it.

use super::als::{self, AlsModel, AlsParams};
use super::itemcf::{self, ItemCfParams};
use super::popularity::{build_lists, replay_item_stats, ItemFacts, ItemLists};
use crate::bundle::manifest::IndexParams;
use crate::bundle::reader::LoadedShard;
use crate::dataset::split::temporal_holdout;
use crate::dataset::Interaction;
use crate::features::{
    event_strength, Demographics, ItemInput, ItemStats, RecallPath, RequestContext, StateParams,
    UserFeatures, UserState, FEATURE_NAMES, N_FEATURES,
};
use crate::matrix::Matrix;
use crate::progress::Progress;
use crate::ranking::gbdt::{self, GbdtParams};
use crate::ranking::rerank::{rerank, RerankConfig};
use crate::ranking::score::{feature_rows, Cascade, ItemSource, Ranker};
use crate::recall::{
    local_paths, merge, top_by_score, Candidate, CfIndex, KeyLists, PathResult, RecallConfig,
};
use crate::shard::ShardIndex;
use crate::sparse::Csr;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Everything that shapes what the pipeline learns and serves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineParams {
    pub als: AlsParams,
    pub itemcf: ItemCfParams,
    pub recall: RecallConfig,
    pub gbdt: GbdtParams,
    pub rerank: RerankConfig,
    /// Two-phase scoring of the candidates (the server's `[ranking]
    /// cascade` has the same default).
    pub cascade: Cascade,
    pub state: StateParams,
    /// Length of the popular and fresh lists.
    pub lists_len: usize,
    /// Length of each category's list for the rules path.
    pub per_category: usize,
    /// Fraction of ranker query groups held out for early stopping.
    pub ranker_valid_fraction: f64,
    /// At most this many holdout requests train the ranker (a seeded
    /// sample when there are more): ranking rows grow with requests times
    /// candidates, and beyond a few tens of thousands of query groups the
    /// ranker stops improving while memory keeps growing.
    pub ranker_max_requests: usize,
    /// From this many items the ANN path of the pipeline's requests (ranker
    /// rows, evaluation) searches an HNSW index instead of scanning every
    /// item. An exact scan of a million 64-d items per request made ranker
    /// rows 3239 s of a 3879 s training run; the index costs one build and
    /// answers the way the shards do when serving. Below it (ml-100k, the
    /// evaluation protocol) the scan is exact and cheap. Default 50 000.
    pub ann_index_min_items: usize,
    pub seed: u64,
}

impl Default for PipelineParams {
    fn default() -> Self {
        PipelineParams {
            als: AlsParams::default(),
            itemcf: ItemCfParams::default(),
            recall: RecallConfig::default(),
            gbdt: default_ranker_params(),
            rerank: RerankConfig::default(),
            cascade: Cascade::default(),
            state: StateParams::default(),
            lists_len: 500,
            per_category: 200,
            ranker_valid_fraction: 0.1,
            ranker_max_requests: 20_000,
            ann_index_min_items: 50_000,
            seed: 42,
        }
    }
}

/// The ranker's defaults: pointwise logistic loss proved steadier than
/// LambdaRank when the ranker is trained on one holdout and applied on the
/// next (validation NDCG@10 on ml-100k 0.239 vs 0.215), and larger leaves
/// keep it from memorising users.
pub fn default_ranker_params() -> GbdtParams {
    GbdtParams {
        objective: gbdt::Objective::Logistic,
        min_data_in_leaf: 100,
        ..GbdtParams::default()
    }
}

/// The interactions to fit on, with dense user and item indices.
#[derive(Clone, Copy)]
pub struct FitInput<'a> {
    pub n_users: usize,
    /// Time-ordered.
    pub interactions: &'a [Interaction],
    pub item_keys: &'a [u64],
    pub item_categories: &'a [Vec<u16>],
    pub item_created: &'a [Option<i64>],
    pub demographics: &'a [Demographics],
    pub n_categories: usize,
    /// Whether items without interactions (but with a known creation time)
    /// can be recommended. The evaluation protocol says no; production yes.
    pub include_cold_items: bool,
}

impl FitInput<'_> {
    pub fn n_items(&self) -> usize {
        self.item_keys.len()
    }

    /// The same input over another subset of interactions.
    pub fn with_interactions<'b>(&self, interactions: &'b [Interaction]) -> FitInput<'b>
    where
        Self: 'b,
    {
        FitInput {
            interactions,
            ..*self
        }
    }
}

/// All fitted recall-side models plus the replayed user and item state.
pub struct FittedModels {
    pub item_keys: Vec<u64>,
    key_to_idx: HashMap<u64, u32>,
    pub item_categories: Vec<Vec<u16>>,
    pub item_created: Vec<Option<i64>>,
    pub item_stats: Vec<ItemStats>,
    /// Items recall may propose at all.
    pub in_catalog: Vec<bool>,
    pub als: AlsModel,
    item_norms: Vec<f32>,
    pub cf: CfIndex,
    pub lists: ItemLists,
    pub key_lists: KeyLists,
    pub user_states: Vec<UserState>,
    /// Time of the last interaction fitted on.
    pub as_of: i64,
    pub state_params: StateParams,
    /// `Y^T Y` of the ALS item factors as fitted (cold rows still zero).
    pub item_gram: Vec<f32>,
    /// Mean vector per category over items with interactions.
    pub category_centroids: Vec<Vec<f32>>,
    /// Cold catalogue items whose vector was folded from their categories.
    pub cold_folded: usize,
    /// HNSW over the item vectors for catalogues too large to scan per
    /// request (`PipelineParams::ann_index_min_items`); `None` means
    /// `ann_path` is exact.
    ann_index: Option<ShardIndex>,
}

/// The trainer's ANN index over all item vectors, built like a bundle's
/// shard indexes (default HNSW parameters) on every core. (A threaded
/// build is equally good but not the same graph twice, so the ranker's
/// candidates on such catalogues can differ slightly between runs.)
fn trainer_ann_index(keys: &[u64], vectors: &Matrix) -> Result<ShardIndex, String> {
    let params = IndexParams::default();
    let threads = crate::bundle::threads_per_shard(0, 1);
    let loaded = LoadedShard::build(0, keys.to_vec(), vectors.clone(), &params, threads)
        .map_err(|e| format!("building the trainer's ANN index: {e}"))?;
    Ok(ShardIndex::from_loaded(
        loaded,
        params.expansion_search as usize,
    ))
}

/// Replays `log` (time-ordered) through `UserState::apply`, the code the
/// server runs per event. With `cuts`, user u's state stops at events with
/// ts <= cuts[u] (point-in-time): what a request at that moment would see.
pub fn replay_user_states(
    inp: &FitInput,
    log: &[Interaction],
    params: &StateParams,
    cuts: Option<&HashMap<u32, i64>>,
) -> Vec<UserState> {
    let mut states: Vec<UserState> = inp
        .demographics
        .iter()
        .map(|d| UserState::new(*d))
        .collect();
    states.resize(inp.n_users, UserState::default());
    for x in log {
        if let Some(c) = cuts {
            match c.get(&x.user) {
                Some(&t) if x.ts <= t => {}
                _ => continue,
            }
        }
        let i = x.item as usize;
        states[x.user as usize].apply(
            inp.item_keys[i],
            &inp.item_categories[i],
            x.ts,
            x.kind,
            x.value,
            params,
        );
    }
    states
}

/// Fits ALS, item-CF, item stats and lists, and replays user state.
pub fn fit_models(
    inp: &FitInput,
    p: &PipelineParams,
    progress: &Progress,
) -> Result<FittedModels, String> {
    let n_items = inp.n_items();
    let xs = inp.interactions;
    if xs.is_empty() {
        return Err("no interactions to fit on".into());
    }
    let as_of = xs.iter().map(|x| x.ts).max().unwrap_or(0);

    // users' state, replayed event by event through the serving code
    let step = progress.step("user state", xs.len() as u64);
    let user_states = replay_user_states(inp, xs, &p.state, None);
    step.inc(xs.len() as u64);
    step.done();

    let step = progress.step("item stats", 1);
    let item_stats = replay_item_stats(n_items, xs);
    let mut first_seen: Vec<Option<i64>> = vec![None; n_items];
    for x in xs {
        let f = &mut first_seen[x.item as usize];
        *f = Some(f.map_or(x.ts, |t| t.min(x.ts)));
    }
    let available: Vec<Option<i64>> = (0..n_items)
        .map(|i| inp.item_created[i].or(first_seen[i]))
        .collect();
    let lists = build_lists(
        &ItemFacts {
            stats: &item_stats,
            available_at: &available,
            categories: inp.item_categories,
            n_categories: inp.n_categories,
        },
        as_of,
        p.lists_len,
        p.per_category,
    );
    let in_catalog: Vec<bool> = (0..n_items)
        .map(|i| {
            item_stats[i].count > 0.0
                || (inp.include_cold_items && available[i].is_some_and(|t| t <= as_of))
        })
        .collect();
    let keys = |v: &[u32]| {
        v.iter()
            .map(|&i| inp.item_keys[i as usize])
            .collect::<Vec<u64>>()
    };
    let key_lists = KeyLists {
        popular: keys(&lists.popular),
        fresh: keys(&lists.fresh),
        by_category: lists.by_category.iter().map(|l| keys(l)).collect(),
    };
    step.inc(1);
    step.done();

    // ALS on summed event strengths (binary for deduplicated ratings)
    let triples: Vec<(u32, u32, f32)> = xs
        .iter()
        .map(|x| (x.user, x.item, event_strength(x.kind, x.value)))
        .collect();
    let matrix = Csr::from_triples(inp.n_users, n_items, &triples);
    let step = progress.step("als", p.als.iterations as u64);
    let mut als = als::fit(&matrix, &p.als, &mut |_| step.inc(1)).map_err(|e| e.to_string())?;
    step.done();
    // Y^T Y of the fitted factors, before cold rows are filled in: what a
    // serving node folds users in with, so fold-in solves the system ALS did.
    let item_gram = crate::linalg::gram_matrix(&als.item_factors);
    // Cold catalogue items (no interaction fitted on) get the mean vector of
    // their categories, so the ANN path can find them and the ranker's
    // vector features see what serving will see for them.
    let warm: Vec<bool> = item_stats.iter().map(|s| s.count > 0.0).collect();
    let category_centroids = crate::features::category_centroids(
        &als.item_factors,
        inp.item_categories,
        inp.n_categories,
        &warm,
    );
    let cold_folded = crate::features::fold_cold_rows(
        &mut als.item_factors,
        inp.item_categories,
        &warm,
        &category_centroids,
    );
    let item_norms: Vec<f32> = (0..n_items)
        .map(|i| {
            als.item_factors
                .row(i)
                .iter()
                .map(|v| v * v)
                .sum::<f32>()
                .sqrt()
        })
        .collect();

    let step = progress.step("item-cf", 1);
    let mut user_items: Vec<Vec<u32>> = vec![Vec::new(); inp.n_users];
    let mut seen = std::collections::HashSet::new();
    for x in xs {
        if seen.insert((x.user, x.item)) {
            user_items[x.user as usize].push(x.item);
        }
    }
    let cf = CfIndex::new(
        inp.item_keys.to_vec(),
        itemcf::fit(&user_items, n_items, &p.itemcf),
    )?;
    step.inc(1);
    step.done();

    let ann_index = if n_items >= p.ann_index_min_items {
        let step = progress.step("ann-index", 1);
        let index = trainer_ann_index(inp.item_keys, &als.item_factors)?;
        step.inc(1);
        step.done();
        Some(index)
    } else {
        None
    };

    Ok(FittedModels {
        item_keys: inp.item_keys.to_vec(),
        key_to_idx: inp
            .item_keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect(),
        item_categories: inp.item_categories.to_vec(),
        item_created: inp.item_created.to_vec(),
        item_stats,
        in_catalog,
        als,
        item_norms,
        cf,
        lists,
        key_lists,
        user_states,
        as_of,
        state_params: p.state,
        item_gram,
        category_centroids,
        cold_folded,
        ann_index,
    })
}

impl ItemSource for FittedModels {
    fn item_input(&self, key: u64) -> Option<ItemInput<'_>> {
        let i = *self.key_to_idx.get(&key)? as usize;
        Some(ItemInput {
            key,
            stats: self.item_stats[i],
            created_at: self.item_created[i],
            categories: &self.item_categories[i],
            vector: Some(self.als.item_factors.row(i)),
        })
    }
}

impl FittedModels {
    pub fn idx(&self, key: u64) -> Option<u32> {
        self.key_to_idx.get(&key).copied()
    }

    pub fn n_items(&self) -> usize {
        self.item_keys.len()
    }

    /// A user's request context: right after their last known event.
    pub fn default_context(&self, user: u32) -> RequestContext {
        RequestContext::at(
            self.user_states[user as usize]
                .last_ts
                .unwrap_or(self.as_of),
        )
    }

    /// Per-request user features from the user's state at the end of the
    /// fitted data.
    pub fn prepare_user(&self, user: u32, ctx: &RequestContext) -> UserFeatures<'_> {
        self.prepare_with_state(user, &self.user_states[user as usize], ctx)
    }

    /// Per-request user features from a given state of the user.
    pub fn prepare_with_state<'a>(
        &'a self,
        user: u32,
        state: &'a UserState,
        ctx: &RequestContext,
    ) -> UserFeatures<'a> {
        let last_cats: &[u16] = state
            .recent
            .back()
            .and_then(|r| self.idx(r.item))
            .map_or(&[], |i| &self.item_categories[i as usize]);
        UserFeatures::prepare(
            state,
            Some(self.als.user_factors.row(user as usize)),
            last_cats,
            ctx,
            &self.cf,
            &self.state_params,
        )
    }

    /// Whether recall may propose `key` to a user in `state`: in the
    /// catalogue and not seen.
    pub fn allowed(&self, state: &UserState, key: u64) -> bool {
        self.idx(key).is_some_and(|i| self.in_catalog[i as usize]) && !state.has_seen(key)
    }

    /// Embedding search: exact (what the shards approximate online), or
    /// over the HNSW index for large catalogues (`ann_index_min_items`).
    pub fn ann_path(
        &self,
        user: u32,
        k: usize,
        allow: &(dyn Fn(u64) -> bool + Sync),
    ) -> PathResult {
        let u = self.als.user_factors.row(user as usize);
        if let Some(index) = &self.ann_index {
            // an index error leaves the path empty, as a failed shard would
            let items = index.search_where(u, k, allow).unwrap_or_default();
            return PathResult {
                path: RecallPath::Ann,
                items,
            };
        }
        let scores = (0..self.n_items()).map(|i| {
            (
                self.item_keys[i],
                crate::linalg::dot(u, self.als.item_factors.row(i)),
            )
        });
        PathResult {
            path: RecallPath::Ann,
            items: top_by_score(scores, k, allow),
        }
    }

    /// Every recall path, merged, for a user in `state`.
    pub fn candidates(
        &self,
        user: u32,
        state: &UserState,
        uf: &UserFeatures,
        cfg: &RecallConfig,
    ) -> Vec<Candidate> {
        let allow = |key: u64| self.allowed(state, key);
        let mut paths = vec![self.ann_path(user, cfg.ann_k, &allow)];
        paths.extend(local_paths(uf, &self.key_lists, None, cfg, &allow));
        merge(&paths, &cfg.merge)
    }

    /// Cosine similarity of two items' embeddings, clamped to [0, 1].
    pub fn item_similarity(&self, a: u64, b: u64) -> f32 {
        match (self.idx(a), self.idx(b)) {
            (Some(a), Some(b)) => {
                let (na, nb) = (self.item_norms[a as usize], self.item_norms[b as usize]);
                if na == 0.0 || nb == 0.0 {
                    return 0.0;
                }
                let d = crate::linalg::dot(
                    self.als.item_factors.row(a as usize),
                    self.als.item_factors.row(b as usize),
                );
                (d / (na * nb)).clamp(0.0, 1.0)
            }
            _ => 0.0,
        }
    }

    /// The full pipeline for one user: recall, features, ranker, rerank.
    pub fn recommend(
        &self,
        ranker: &Ranker,
        user: u32,
        ctx: &RequestContext,
        k: usize,
        p: &PipelineParams,
        seed: u64,
    ) -> Vec<u64> {
        let state = &self.user_states[user as usize];
        let uf = self.prepare_with_state(user, state, ctx);
        let cands = self.candidates(user, state, &uf, &p.recall);
        let (rows, kept) = feature_rows(&uf, &cands, self);
        let mut scores = vec![0f32; kept.len()];
        if ranker.score_rows(&rows, &mut scores, p.cascade).is_err() {
            return Vec::new();
        }
        let keys: Vec<u64> = kept.iter().map(|&i| cands[i].key).collect();
        let sim = |a: usize, b: usize| self.item_similarity(keys[a], keys[b]);
        rerank(&scores, k, &p.rerank, &sim, seed)
            .into_iter()
            .map(|r| keys[r.index])
            .collect()
    }
}

/// One labelled request for ranker training: who, when, and which items
/// (keys) they went on to interact with.
#[derive(Debug, Clone)]
pub struct LabelledRequest {
    pub user: u32,
    pub ctx: RequestContext,
    pub targets: Vec<u64>,
}

/// Ranker training rows: one query group per request, candidates from the
/// recall paths, label 1 for candidates the user interacted with next.
#[derive(Debug, Clone, Default)]
pub struct RankerExamples {
    pub rows: Vec<f32>,
    pub labels: Vec<f32>,
    pub groups: Vec<u32>,
    /// Requests whose candidates held at least one target (only those are kept).
    pub requests_kept: usize,
    pub requests_total: usize,
    /// Mean fraction of targets recall found (capped at the budget).
    pub candidate_recall: f64,
}

/// Builds ranker rows point-in-time: each request sees its user's state
/// replayed from `inp.interactions` up to the request time, never later
/// events. `models` are the fitted artefacts (embeddings, neighbours, item
/// counters) the request is served with.
pub fn ranker_examples(
    models: &FittedModels,
    inp: &FitInput,
    requests: &[LabelledRequest],
    cfg: &RecallConfig,
) -> RankerExamples {
    let cuts: HashMap<u32, i64> = requests.iter().map(|r| (r.user, r.ctx.now)).collect();
    let states = replay_user_states(inp, inp.interactions, &models.state_params, Some(&cuts));
    let per: Vec<(Vec<f32>, Vec<f32>, f64)> = requests
        .par_iter()
        .map(|r| {
            let state = &states[r.user as usize];
            let uf = models.prepare_with_state(r.user, state, &r.ctx);
            let cands = models.candidates(r.user, state, &uf, cfg);
            let (rows, kept) = feature_rows(&uf, &cands, models);
            let mut targets = r.targets.clone();
            targets.sort_unstable();
            let labels: Vec<f32> = kept
                .iter()
                .map(|&i| {
                    if targets.binary_search(&cands[i].key).is_ok() {
                        1.0
                    } else {
                        0.0
                    }
                })
                .collect();
            let hits = labels.iter().filter(|&&l| l > 0.0).count();
            let denom = targets.len().min(cfg.merge.budget).max(1);
            (rows, labels, hits as f64 / denom as f64)
        })
        .collect();
    let mut ex = RankerExamples {
        requests_total: requests.len(),
        ..Default::default()
    };
    let mut recall_sum = 0.0;
    for (rows, labels, rec) in per {
        recall_sum += rec;
        if labels.iter().any(|&l| l > 0.0) && labels.contains(&0.0) {
            ex.rows.extend_from_slice(&rows);
            ex.groups.push(labels.len() as u32);
            ex.labels.extend_from_slice(&labels);
            ex.requests_kept += 1;
        }
    }
    ex.candidate_recall = recall_sum / requests.len().max(1) as f64;
    ex
}

/// Requests for ranker training from a per-user temporal holdout of
/// `fit_models`' input: context = right after the last kept event.
pub fn holdout_requests(
    models: &FittedModels,
    heldout: &[Vec<Interaction>],
) -> Vec<LabelledRequest> {
    heldout
        .iter()
        .filter_map(|h| {
            let user = h.first()?.user;
            let targets: Vec<u64> = h
                .iter()
                .filter(|x| models.in_catalog[x.item as usize])
                .map(|x| models.item_keys[x.item as usize])
                .collect();
            if targets.is_empty() || models.user_states[user as usize].last_ts.is_none() {
                return None;
            }
            Some(LabelledRequest {
                user,
                ctx: models.default_context(user),
                targets,
            })
        })
        .collect()
}

/// What ranker training reports.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct RankerReport {
    pub requests_total: usize,
    pub train_groups: usize,
    pub valid_groups: usize,
    pub rows: usize,
    pub candidate_recall: f64,
    pub best_iteration: usize,
    pub valid_ndcg: f64,
    pub seconds: f64,
}

/// Trains the ranker from labelled requests, holding out a seeded fraction
/// of requests for early stopping.
pub fn train_ranker(
    models: &FittedModels,
    inp: &FitInput,
    requests: &[LabelledRequest],
    p: &PipelineParams,
    progress: &Progress,
) -> Result<(Ranker, RankerReport), String> {
    let t0 = std::time::Instant::now();
    let step = progress.step("ranker rows", 1);
    let (mut train_req, mut valid_req) = (Vec::new(), Vec::new());
    for r in requests {
        let mut rng = crate::rng::Rng::derive(p.seed, r.user as u64);
        if rng.f64() < p.ranker_valid_fraction {
            valid_req.push(r.clone());
        } else {
            train_req.push(r.clone());
        }
    }
    let train = ranker_examples(models, inp, &train_req, &p.recall);
    let valid = ranker_examples(models, inp, &valid_req, &p.recall);
    step.inc(1);
    step.done();
    if train.groups.is_empty() {
        return Err(
            "no training request had a target among its recalled candidates; \
                    the data is too small or too sparse to train a ranker"
                .into(),
        );
    }
    let names: Vec<String> = FEATURE_NAMES.iter().map(|s| s.to_string()).collect();
    let tr = gbdt::Dataset {
        features: &train.rows,
        n_features: N_FEATURES,
        labels: &train.labels,
        groups: &train.groups,
        feature_names: &names,
    };
    let va = gbdt::Dataset {
        features: &valid.rows,
        n_features: N_FEATURES,
        labels: &valid.labels,
        groups: &valid.groups,
        feature_names: &names,
    };
    let step = progress.step("ranker", p.gbdt.trees as u64);
    let mut last_valid = 0.0;
    let model = gbdt::train(
        &tr,
        (!valid.groups.is_empty()).then_some(&va),
        &p.gbdt,
        &mut |r| {
            step.inc(1);
            if let Some(v) = r.valid_metric {
                last_valid = v;
            }
        },
    )
    .map_err(|e| e.to_string())?;
    step.done();
    let report = RankerReport {
        requests_total: requests.len(),
        train_groups: train.groups.len(),
        valid_groups: valid.groups.len(),
        rows: train.labels.len(),
        candidate_recall: train.candidate_recall,
        best_iteration: model.best_iteration().unwrap_or(model.n_trees()),
        valid_ndcg: last_valid,
        seconds: t0.elapsed().as_secs_f64(),
    };
    Ok((Ranker::Gbdt(model), report))
}

/// The per-user temporal holdout inside some fitting data, with models
/// fitted on the kept part: what ranker training needs. Built once, it
/// trains any number of ranker variants.
pub struct Holdout {
    fit: Vec<Interaction>,
    pub models: FittedModels,
    pub requests: Vec<LabelledRequest>,
}

impl Holdout {
    /// Splits `input`'s interactions per user in time (the protocol's
    /// holdout rule) and fits models on the first part. Users with fewer
    /// than `min_events` interactions keep them all for fitting.
    pub fn new(
        input: &FitInput,
        p: &PipelineParams,
        min_events: usize,
        progress: &Progress,
    ) -> Result<Self, String> {
        let mut per_user: Vec<Vec<Interaction>> = vec![Vec::new(); input.n_users];
        for x in input.interactions {
            per_user[x.user as usize].push(*x);
        }
        let (fit_lists, held_lists) = temporal_holdout(&per_user);
        let mut fit: Vec<Interaction> = Vec::with_capacity(input.interactions.len());
        let mut held: Vec<Vec<Interaction>> = Vec::new();
        for ((all, f), h) in per_user.iter().zip(fit_lists).zip(held_lists) {
            if all.len() >= min_events.max(2) {
                fit.extend(f);
                held.push(h);
            } else {
                fit.extend_from_slice(all);
            }
        }
        fit.sort_by_key(|x| (x.ts, x.user, x.item));
        let models = fit_models(&input.with_interactions(&fit), p, progress)?;
        let mut requests = holdout_requests(&models, &held);
        if requests.len() > p.ranker_max_requests {
            let mut rng = crate::rng::Rng::derive(p.seed, 0x7a11_c0de);
            rng.shuffle(&mut requests);
            requests.truncate(p.ranker_max_requests);
            // Keep the user order so the sample trains like the full set would.
            requests.sort_by_key(|r| r.user);
        }
        Ok(Holdout {
            fit,
            models,
            requests,
        })
    }

    /// Trains a ranker on the held-out interactions.
    pub fn train(
        &self,
        input: &FitInput,
        p: &PipelineParams,
        progress: &Progress,
    ) -> Result<(Ranker, RankerReport), String> {
        train_ranker(
            &self.models,
            &input.with_interactions(&self.fit),
            &self.requests,
            p,
            progress,
        )
    }
}

/// `Holdout::new` then `Holdout::train`.
pub fn ranker_from_holdout(
    input: &FitInput,
    p: &PipelineParams,
    min_events: usize,
    progress: &Progress,
) -> Result<(Ranker, RankerReport), String> {
    Holdout::new(input, p, min_events, progress)?.train(input, p, progress)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::{Dataset, EventKind};
    use crate::gen::{generate, GenParams};
    use crate::ids::item_key;

    fn small() -> Dataset {
        generate(&GenParams {
            users: 300,
            items: 200,
            interactions: 12_000,
            ..GenParams::default()
        })
        .expect("generator accepts small parameters")
    }

    fn quick_params() -> PipelineParams {
        let mut p = PipelineParams::default();
        p.als.factors = 16;
        p.als.iterations = 5;
        p.gbdt.trees = 20;
        p
    }

    struct Owned {
        keys: Vec<u64>,
        cats: Vec<Vec<u16>>,
        created: Vec<Option<i64>>,
        demo: Vec<Demographics>,
    }

    fn owned(ds: &Dataset) -> Owned {
        Owned {
            keys: ds.items.ids().iter().map(|id| item_key(id)).collect(),
            cats: ds.item_meta.iter().map(|m| m.categories.clone()).collect(),
            created: ds.item_meta.iter().map(|m| m.created_at).collect(),
            demo: ds.user_meta.iter().map(Demographics::from).collect(),
        }
    }

    fn input<'a>(ds: &Dataset, o: &'a Owned, log: &'a [Interaction]) -> FitInput<'a> {
        FitInput {
            n_users: ds.users.len(),
            interactions: log,
            item_keys: &o.keys,
            item_categories: &o.cats,
            item_created: &o.created,
            demographics: &o.demo,
            n_categories: ds.categories.len(),
            include_cold_items: true,
        }
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|x| x.to_bits()).collect()
    }

    #[test]
    fn large_catalogues_search_an_index_that_finds_what_the_exact_scan_finds() {
        let ds = generate(&GenParams {
            users: 200,
            items: 3000,
            interactions: 20_000,
            ..GenParams::default()
        })
        .unwrap();
        let o = owned(&ds);
        let log = ds.interactions.clone();
        let exact_p = quick_params();
        let exact = fit_models(&input(&ds, &o, &log), &exact_p, &Progress::hidden()).unwrap();
        assert!(
            exact.ann_index.is_none(),
            "3000 items are scanned exactly by default"
        );
        let indexed_p = PipelineParams {
            ann_index_min_items: 1000,
            ..quick_params()
        };
        let indexed = fit_models(&input(&ds, &o, &log), &indexed_p, &Progress::hidden()).unwrap();
        assert!(indexed.ann_index.is_some());
        // same seed, same factors: only the search differs
        assert_eq!(
            bits(exact.als.item_factors.row(7)),
            bits(indexed.als.item_factors.row(7))
        );
        let skip = o.keys[0];
        let allow = move |k: u64| k != skip;
        let (mut found, mut total) = (0usize, 0usize);
        for user in 0..50 {
            let want = exact.ann_path(user, 50, &allow).items;
            let got = indexed.ann_path(user, 50, &allow).items;
            assert!(got.iter().all(|(k, _)| *k != skip), "the filter applies");
            assert_eq!(got.len(), 50);
            total += want.len();
            found += want
                .iter()
                .filter(|w| got.iter().any(|g| g.0 == w.0))
                .count();
        }
        let recall = found as f64 / total as f64;
        assert!(recall >= 0.9, "index recall@50 vs exact {recall:.3}");
    }

    #[test]
    fn cold_items_get_the_mean_of_their_category_centroids() {
        let ds = small();
        let o = owned(&ds);
        // hold back every interaction with two categorised items: they stay
        // in the catalogue, cold
        let cold: Vec<u32> = (0..o.keys.len() as u32)
            .filter(|&i| !o.cats[i as usize].is_empty())
            .take(2)
            .collect();
        let log: Vec<Interaction> = ds
            .interactions
            .iter()
            .filter(|x| !cold.contains(&x.item))
            .cloned()
            .collect();
        let m = fit_models(&input(&ds, &o, &log), &quick_params(), &Progress::hidden()).unwrap();
        let warm = items_with_events(&log);
        let dim = m.als.item_factors.cols();
        let foldable = (0..o.keys.len() as u32)
            .filter(|i| !warm.contains(i))
            .filter(|&i| {
                crate::features::fold_categories(&m.category_centroids, &o.cats[i as usize], dim)
                    .is_some()
            })
            .count();
        assert!(foldable >= cold.len());
        assert_eq!(m.cold_folded, foldable);
        for &i in &cold {
            let want = crate::features::fold_categories(
                &m.category_centroids,
                &o.cats[i as usize],
                m.als.item_factors.cols(),
            )
            .unwrap();
            assert_eq!(m.als.item_factors.row(i as usize), want.as_slice());
            assert!(want.iter().any(|&v| v != 0.0));
            assert!(m.in_catalog[i as usize]);
        }
        // the gram is the fitted factors' (cold rows zero), not the folded ones
        let mut fitted = m.als.item_factors.clone();
        for &i in &cold {
            fitted.row_mut(i as usize).fill(0.0);
        }
        let want = crate::linalg::gram_matrix(&fitted);
        let close = m
            .item_gram
            .iter()
            .zip(&want)
            .all(|(a, b)| (a - b).abs() <= 1e-3 * (1.0 + b.abs()));
        assert!(close, "item_gram must leave the folded rows out");
    }

    fn items_with_events(log: &[Interaction]) -> std::collections::HashSet<u32> {
        log.iter().map(|x| x.item).collect()
    }

    #[test]
    fn training_rows_are_point_in_time() {
        let ds = small();
        let o = owned(&ds);
        let p = quick_params();
        let log = ds.interactions.clone();
        let models = fit_models(&input(&ds, &o, &log), &p, &Progress::hidden()).unwrap();
        // requests at the median event time of a few active users
        let mid = log[log.len() / 2].ts;
        let users: Vec<u32> = (0..ds.users.len() as u32)
            .filter(|&u| {
                log.iter().any(|x| x.user == u && x.ts <= mid)
                    && log.iter().any(|x| x.user == u && x.ts > mid)
            })
            .take(20)
            .collect();
        assert!(
            users.len() >= 5,
            "the generated log has users active on both sides of t"
        );
        let requests: Vec<LabelledRequest> = users
            .iter()
            .map(|&u| LabelledRequest {
                user: u,
                ctx: RequestContext::at(mid),
                targets: log
                    .iter()
                    .filter(|x| x.user == u && x.ts > mid)
                    .map(|x| o.keys[x.item as usize])
                    .collect(),
            })
            .collect();
        let base = ranker_examples(&models, &input(&ds, &o, &log), &requests, &p.recall);
        assert!(!base.rows.is_empty());

        // events after t, for the same users and others, change nothing
        let mut later = log.clone();
        for (n, &u) in users.iter().enumerate() {
            later.push(Interaction {
                user: u,
                item: (n % 200) as u32,
                ts: mid + 1 + n as i64,
                kind: EventKind::Purchase,
                value: 6.0,
            });
        }
        later.push(Interaction {
            user: 0,
            item: 3,
            ts: mid + 100,
            kind: EventKind::Click,
            value: 2.0,
        });
        later.sort_by_key(|x| (x.ts, x.user, x.item));
        let after = ranker_examples(&models, &input(&ds, &o, &later), &requests, &p.recall);
        assert_eq!(bits(&base.rows), bits(&after.rows));
        assert_eq!(base.labels, after.labels);

        // control: one event before t for a requesting user does change its rows
        let mut earlier = log.clone();
        let unseen = (0..200u32)
            .find(|&i| !log.iter().any(|x| x.user == users[0] && x.item == i))
            .unwrap();
        earlier.push(Interaction {
            user: users[0],
            item: unseen,
            ts: mid - 1,
            kind: EventKind::Purchase,
            value: 6.0,
        });
        earlier.sort_by_key(|x| (x.ts, x.user, x.item));
        let before = ranker_examples(&models, &input(&ds, &o, &earlier), &requests, &p.recall);
        assert_ne!(bits(&base.rows), bits(&before.rows));
    }

    #[test]
    fn ranker_learns_and_recommendations_exclude_seen_items() {
        let ds = small();
        let o = owned(&ds);
        let p = quick_params();
        let inp = input(&ds, &o, &ds.interactions);
        let (ranker, report) = ranker_from_holdout(&inp, &p, 3, &Progress::hidden()).unwrap();
        assert!(report.train_groups > 50, "{report:?}");
        assert!(matches!(ranker, Ranker::Gbdt(_)));
        let models = fit_models(&inp, &p, &Progress::hidden()).unwrap();
        for u in 0..20u32 {
            let recs = models.recommend(&ranker, u, &models.default_context(u), 10, &p, 7);
            assert_eq!(recs.len(), 10);
            let state = &models.user_states[u as usize];
            assert!(recs.iter().all(|k| !state.has_seen(*k)));
            let mut dedup = recs.clone();
            dedup.sort_unstable();
            dedup.dedup();
            assert_eq!(dedup.len(), 10);
        }
    }
}
