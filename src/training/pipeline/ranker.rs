//! Ranker training: labelled requests from a per-user temporal holdout,
//! point-in-time training rows built from what recall returns, and the
//! GBDT fit on them. Must not touch: recall models' fitting beyond calling
//! `fit_models`.

use super::{fit_models, replay_user_states, FitInput, FittedModels, PipelineParams};
use crate::dataset::split::temporal_holdout;
use crate::dataset::Interaction;
use crate::features::{RequestContext, FEATURE_NAMES, N_FEATURES};
use crate::progress::Progress;
use crate::ranking::gbdt;
use crate::ranking::score::{feature_rows, Ranker};
use crate::recall::RecallConfig;
use crate::training::TrainError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

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
) -> Result<(Ranker, RankerReport), TrainError> {
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
        return Err(TrainError::NoRankerGroups);
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
    )?;
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
    ) -> Result<Self, TrainError> {
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
    ) -> Result<(Ranker, RankerReport), TrainError> {
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
) -> Result<(Ranker, RankerReport), TrainError> {
    Holdout::new(input, p, min_events, progress)?.train(input, p, progress)
}
