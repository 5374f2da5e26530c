//! The offline pipeline: fit every recall model on a set of interactions,
//! build ranker training rows from what recall actually returns, train the
//! ranker, and answer "recommend for user u" offline with the same pure
//! functions the server uses (features, local recall paths, merge,
//! scoring, rerank). Evaluation and `funnel train` are both built on it.
//!
//! Files: this one holds the parameters and fitting the recall models;
//! `serve` answers requests offline from fitted models; `ranker` builds
//! point-in-time ranker rows and trains the ranker on a holdout.

mod ranker;
mod serve;

pub use ranker::{
    holdout_requests, ranker_examples, ranker_from_holdout, train_ranker, Holdout, LabelledRequest,
    RankerExamples, RankerReport,
};

use crate::bundle::manifest::IndexParams;
use crate::bundle::reader::LoadedShard;
use crate::dataset::Interaction;
use crate::features::{event_strength, Demographics, ItemStats, StateParams, UserState};
use crate::matrix::Matrix;
use crate::progress::Progress;
use crate::ranking::gbdt::{self, GbdtParams};
use crate::ranking::rerank::RerankConfig;
use crate::ranking::score::Cascade;
use crate::recall::{CfIndex, KeyLists, RecallConfig};
use crate::shard::ShardIndex;
use crate::sparse::Csr;
use crate::training::als::{self, AlsModel, AlsParams};
use crate::training::itemcf::{self, ItemCfParams};
use crate::training::popularity::{build_lists, replay_item_stats, ItemFacts, ItemLists};
use crate::training::TrainError;
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
fn trainer_ann_index(keys: &[u64], vectors: &Matrix) -> Result<ShardIndex, TrainError> {
    let params = IndexParams::default();
    let threads = crate::bundle::threads_per_shard(0, 1);
    let loaded = LoadedShard::build(0, keys.to_vec(), vectors.clone(), &params, threads)
        .map_err(TrainError::AnnIndex)?;
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
) -> Result<FittedModels, TrainError> {
    let n_items = inp.n_items();
    let xs = inp.interactions;
    if xs.is_empty() {
        return Err(TrainError::NoInteractions);
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
    let mut als = als::fit(&matrix, &p.als, &mut |_| step.inc(1))?;
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

#[cfg(test)]
mod tests;
