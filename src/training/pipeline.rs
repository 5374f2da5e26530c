//! The offline pipeline: fit every recall model on a set of interactions,
//! build ranker training rows from what recall actually returns, train the
//! ranker, and answer "recommend for user u" offline with the same pure
//! functions the server uses (features, local recall paths, merge,
//! scoring, rerank). Evaluation and `funnel train` are both built on it.

use super::als::{self, AlsModel, AlsParams};
use super::itemcf::{self, ItemCfParams};
use super::popularity::{build_lists, replay_item_stats, ItemFacts, ItemLists};
use crate::dataset::Interaction;
use crate::eval::split::temporal_holdout;
use crate::features::{
    event_strength, Demographics, ItemInput, ItemStats, RecallPath, RequestContext, StateParams,
    UserFeatures, UserState, FEATURE_NAMES, N_FEATURES,
};
use crate::progress::Progress;
use crate::ranking::gbdt::{self, GbdtParams};
use crate::ranking::rerank::{rerank, RerankConfig};
use crate::ranking::score::{feature_rows, ItemSource, Ranker};
use crate::recall::{
    local_paths, merge, top_by_score, Candidate, CfIndex, KeyLists, PathResult, RecallConfig,
};
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
    pub state: StateParams,
    /// Length of the popular and fresh lists.
    pub lists_len: usize,
    /// Length of each category's list for the rules path.
    pub per_category: usize,
    /// Fraction of ranker query groups held out for early stopping.
    pub ranker_valid_fraction: f64,
    pub seed: u64,
}

impl Default for PipelineParams {
    fn default() -> Self {
        PipelineParams {
            als: AlsParams::default(),
            itemcf: ItemCfParams::default(),
            recall: RecallConfig::default(),
            gbdt: GbdtParams::default(),
            rerank: RerankConfig::default(),
            state: StateParams::default(),
            lists_len: 500,
            per_category: 200,
            ranker_valid_fraction: 0.1,
            seed: 42,
        }
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
    let mut user_states: Vec<UserState> = inp
        .demographics
        .iter()
        .map(|d| UserState::new(*d))
        .collect();
    user_states.resize(inp.n_users, UserState::default());
    for x in xs {
        let cats = &inp.item_categories[x.item as usize];
        user_states[x.user as usize].apply(
            inp.item_keys[x.item as usize],
            cats,
            x.ts,
            x.kind,
            x.value,
            &p.state,
        );
    }
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
    let als = als::fit(&matrix, &p.als, &mut |_| step.inc(1)).map_err(|e| e.to_string())?;
    step.done();
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

    pub fn prepare_user(&self, user: u32, ctx: &RequestContext) -> UserFeatures<'_> {
        let state = &self.user_states[user as usize];
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

    /// Whether recall may propose `key` to `user`: in the catalogue and not seen.
    pub fn allowed(&self, user: u32, key: u64) -> bool {
        self.idx(key).is_some_and(|i| self.in_catalog[i as usize])
            && !self.user_states[user as usize].has_seen(key)
    }

    /// Exact embedding search (what the shards approximate online).
    pub fn ann_path(&self, user: u32, k: usize, allow: &dyn Fn(u64) -> bool) -> PathResult {
        let u = self.als.user_factors.row(user as usize);
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

    /// Every recall path, merged.
    pub fn candidates(&self, user: u32, uf: &UserFeatures, cfg: &RecallConfig) -> Vec<Candidate> {
        let allow = |key: u64| self.allowed(user, key);
        let mut paths = vec![self.ann_path(user, cfg.ann_k, &allow)];
        paths.extend(local_paths(uf, &self.key_lists, cfg, &allow));
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
        let uf = self.prepare_user(user, ctx);
        let cands = self.candidates(user, &uf, &p.recall);
        let (rows, kept) = feature_rows(&uf, &cands, self);
        let mut scores = vec![0f32; kept.len()];
        if ranker.score_rows(&rows, &mut scores).is_err() {
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

pub fn ranker_examples(
    models: &FittedModels,
    requests: &[LabelledRequest],
    cfg: &RecallConfig,
) -> RankerExamples {
    let per: Vec<(Vec<f32>, Vec<f32>, f64)> = requests
        .par_iter()
        .map(|r| {
            let uf = models.prepare_user(r.user, &r.ctx);
            let cands = models.candidates(r.user, &uf, cfg);
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
        if labels.iter().any(|&l| l > 0.0) && labels.iter().any(|&l| l == 0.0) {
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
    let train = ranker_examples(models, &train_req, &p.recall);
    let valid = ranker_examples(models, &valid_req, &p.recall);
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

/// Splits `input`'s interactions per user in time (the protocol's holdout
/// rule), fits models on the first part, and trains the ranker on the
/// held-out part. Users with fewer than `min_events` interactions keep them
/// all for fitting.
pub fn ranker_from_holdout(
    input: &FitInput,
    p: &PipelineParams,
    min_events: usize,
    progress: &Progress,
) -> Result<(Ranker, RankerReport), String> {
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
    let requests = holdout_requests(&models, &held);
    train_ranker(&models, &requests, p, progress)
}
