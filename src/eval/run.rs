//! `funnel eval`: every recall path alone, the merged candidate set, and
//! the ranked pipeline, under the protocol. Hyper-parameters are chosen on
//! the validation phase; the test phase is touched once, with the chosen
//! values, and that is the figure reported.

use super::metrics::{evaluate, top_k, user_metrics, Metrics};
use crate::dataset::split::{protocol_splits, Split, SplitError, SplitStats, Variant};
use crate::dataset::Dataset;
use crate::features::Demographics;
use crate::ids::item_key;
use crate::progress::Progress;
use crate::ranking::gbdt::{GbdtParams, Objective};
use crate::ranking::score::Ranker;
use crate::training::als::AlsParams;
use crate::training::itemcf::ItemCfParams;
use crate::training::pipeline::{
    fit_models, holdout_requests, train_ranker, FitInput, FittedModels, Holdout, PipelineParams,
    RankerReport,
};
use crate::training::TrainError;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// Cut-offs of the per-path recall curves in the report.
pub const CURVE_KS: [usize; 6] = [10, 20, 50, 100, 200, 300];

/// Why an evaluation run failed.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// The dataset does not fit the protocol.
    #[error(transparent)]
    Split(#[from] SplitError),
    /// Fitting a model or the ranker, or writing the exported bundle,
    /// failed.
    #[error(transparent)]
    Training(#[from] TrainError),
    /// The export directory or its request file could not be written.
    #[error("{action} {}: {source}", path.display())]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Json(#[from] serde_json::Error),
}

/// How much of the hyper-parameter space to search on validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Search {
    /// No search: the given parameters as they are.
    None,
    /// A small grid over ALS and item-CF (the default).
    Small,
}

#[derive(Debug, Clone)]
pub struct EvalOptions {
    pub variant: Variant,
    pub params: PipelineParams,
    pub search: Search,
    pub progress: bool,
    /// Also write the test phase's models as a servable bundle
    /// (`DIR/bundle`) with the evaluation requests (`DIR/requests.json`), so
    /// the same evaluation can be run through a server.
    pub export: Option<std::path::PathBuf>,
}

/// One evaluation request as a client would send it to a server.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedRequest {
    pub user_id: String,
    pub timestamp: i64,
    pub targets: Vec<String>,
}

/// `DIR/requests.json`: the requests and the figures `funnel eval` got.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExportedEval {
    pub n_catalog: usize,
    pub requests: Vec<ExportedRequest>,
    pub pipeline: Metrics,
    pub rerank: crate::ranking::rerank::RerankConfig,
}

/// One model's (or path's) test-phase row.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ModelRow {
    pub model: String,
    pub params: serde_json::Value,
    #[serde(flatten)]
    pub metrics: Metrics,
    /// The validation NDCG@10 that chose these parameters.
    pub val_ndcg10: Option<f64>,
    pub train_seconds: f64,
    pub score_seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CandidateRecall {
    pub budget: usize,
    /// Mean over evaluated users of hits / min(budget, |T|).
    pub recall: f64,
    pub mean_candidates: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Curve {
    pub model: String,
    /// (K, recall@K)
    pub points: Vec<(usize, f64)>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct EvalReport {
    pub dataset: String,
    pub fingerprint: String,
    pub variant: String,
    pub users_counted: usize,
    pub split: SplitSummary,
    pub rows: Vec<ModelRow>,
    pub candidates: CandidateRecall,
    pub curves: Vec<Curve>,
    pub chosen: PipelineParams,
    pub ranker: RankerReport,
    pub grid: Vec<GridPoint>,
    pub seconds: f64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SplitSummary {
    pub val: SplitStats,
    pub test: SplitStats,
}

/// A validation-phase grid point.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GridPoint {
    pub model: String,
    pub params: serde_json::Value,
    pub val_ndcg10: f64,
}

/// Dense arrays of the split's items and users for `FitInput`.
struct SplitData {
    keys: Vec<u64>,
    categories: Vec<Vec<u16>>,
    created: Vec<Option<i64>>,
    demographics: Vec<Demographics>,
    n_categories: usize,
}

impl SplitData {
    fn new(ds: &Dataset, s: &Split) -> Self {
        SplitData {
            keys: s
                .item_ds
                .iter()
                .map(|&i| item_key(ds.items.external(i)))
                .collect(),
            categories: s
                .item_ds
                .iter()
                .map(|&i| ds.item_meta[i as usize].categories.clone())
                .collect(),
            created: s
                .item_ds
                .iter()
                .map(|&i| ds.item_meta[i as usize].created_at)
                .collect(),
            demographics: s
                .user_ds
                .iter()
                .map(|&u| Demographics::from(&ds.user_meta[u as usize]))
                .collect(),
            n_categories: ds.categories.len(),
        }
    }

    fn input<'a>(&'a self, s: &'a Split) -> FitInput<'a> {
        FitInput {
            n_users: s.n_users,
            interactions: &s.train,
            item_keys: &self.keys,
            item_categories: &self.categories,
            item_created: &self.created,
            demographics: &self.demographics,
            n_categories: self.n_categories,
            include_cold_items: false,
        }
    }
}

/// Ranked lists (local item indices, best first) for every evaluated user.
fn lists_for(s: &Split, f: &(dyn Fn(u32) -> Vec<u32> + Sync)) -> Vec<Vec<u32>> {
    s.eval_users.par_iter().map(|&u| f(u)).collect()
}

fn timed<T>(f: impl FnOnce() -> T) -> (T, f64) {
    let t = Instant::now();
    let v = f();
    (v, t.elapsed().as_secs_f64())
}

fn exclude_of(s: &Split, u: u32) -> &[u32] {
    s.train_matrix.row_indices(u as usize)
}

fn ann_lists(m: &FittedModels, s: &Split, k: usize) -> Vec<Vec<u32>> {
    lists_for(s, &|u| {
        let uv = m.als.user_factors.row(u as usize);
        let scores: Vec<f32> = (0..s.n_items)
            .map(|i| crate::linalg::dot(uv, m.als.item_factors.row(i)))
            .collect();
        top_k(&scores, k, exclude_of(s, u), &s.catalog)
    })
}

fn itemcf_lists(m: &FittedModels, s: &Split, k: usize) -> Vec<Vec<u32>> {
    lists_for(s, &|u| {
        let uf = m.prepare_user(u, &m.default_context(u));
        let mut scores = vec![f32::NEG_INFINITY; s.n_items];
        for (key, sc) in uf.cf_candidates() {
            if let Some(i) = m.idx(key) {
                scores[i as usize] = sc;
            }
        }
        top_k(&scores, k, exclude_of(s, u), &s.catalog)
    })
}

fn popular_lists(m: &FittedModels, s: &Split, k: usize) -> Vec<Vec<u32>> {
    // the path's own order: position in the popular list
    let mut scores = vec![f32::NEG_INFINITY; s.n_items];
    for (r, &i) in m.lists.popular.iter().enumerate() {
        scores[i as usize] = -(r as f32);
    }
    lists_for(s, &|u| top_k(&scores, k, exclude_of(s, u), &s.catalog))
}

fn pipeline_lists(
    m: &FittedModels,
    ranker: &Ranker,
    s: &Split,
    p: &PipelineParams,
    k: usize,
) -> Vec<Vec<u32>> {
    lists_for(s, &|u| {
        m.recommend(ranker, u, &m.default_context(u), k, p, p.seed ^ u as u64)
            .into_iter()
            .filter_map(|key| m.idx(key))
            .collect()
    })
}

fn candidate_lists(m: &FittedModels, s: &Split, p: &PipelineParams) -> Vec<Vec<u32>> {
    lists_for(s, &|u| {
        let uf = m.prepare_user(u, &m.default_context(u));
        let mut c: Vec<u32> = m
            .candidates(u, &m.user_states[u as usize], &uf, &p.recall)
            .iter()
            .filter_map(|c| m.idx(c.key))
            .collect();
        c.sort_unstable();
        c
    })
}

fn curve(model: &str, lists: &[Vec<u32>], s: &Split) -> Curve {
    let points = CURVE_KS
        .iter()
        .map(|&k| {
            let sum: f64 = lists
                .iter()
                .zip(&s.targets)
                .map(|(l, t)| user_metrics(l, t, k).0)
                .sum();
            (k, sum / s.targets.len().max(1) as f64)
        })
        .collect();
    Curve {
        model: model.into(),
        points,
    }
}

/// Ranker parameters tried on validation: the given ones, and under
/// `Search::Small` both objectives with two leaf sizes.
fn ranker_variants(base: &GbdtParams, search: Search) -> Vec<GbdtParams> {
    match search {
        Search::None => vec![base.clone()],
        Search::Small => {
            let mut v = vec![base.clone()];
            for objective in [Objective::Logistic, Objective::LambdaRank { ndcg_at: 10 }] {
                for min_data_in_leaf in [20, 100] {
                    let g = GbdtParams {
                        objective,
                        min_data_in_leaf,
                        ..base.clone()
                    };
                    if !v.contains(&g) {
                        v.push(g);
                    }
                }
            }
            v
        }
    }
}

/// The validation grid: ALS and item-CF, each judged alone by NDCG@10.
fn search_grid(
    inp: &FitInput,
    s: &Split,
    base: &PipelineParams,
    grid: &mut Vec<GridPoint>,
    progress: &Progress,
) -> Result<PipelineParams, EvalError> {
    let mut best = base.clone();
    let mut best_score = f64::NEG_INFINITY;
    for factors in [64, 128] {
        for regularization in [1.0, 10.0, 30.0] {
            for alpha in [1.0, 4.0] {
                let mut p = best.clone();
                p.als = AlsParams {
                    factors,
                    regularization,
                    alpha,
                    ..base.als.clone()
                };
                let m = fit_models(inp, &p, &Progress::hidden())?;
                let ndcg = evaluate(&ann_lists(&m, s, 20), &s.targets, s.n_catalog()).ndcg10;
                grid.push(GridPoint {
                    model: "ann".into(),
                    params: serde_json::json!(p.als),
                    val_ndcg10: ndcg,
                });
                if ndcg > best_score {
                    best_score = ndcg;
                    best = p;
                }
            }
        }
    }
    let step = progress.step("itemcf grid", 6);
    let mut best_cf = f64::NEG_INFINITY;
    let mut chosen_cf = best.itemcf;
    for neighbours in [50, 100, 200] {
        for shrink in [0.0, 10.0] {
            let mut p = best.clone();
            p.itemcf = ItemCfParams {
                neighbours,
                shrink,
                ..base.itemcf
            };
            let m = fit_models(inp, &p, &Progress::hidden())?;
            let ndcg = evaluate(&itemcf_lists(&m, s, 20), &s.targets, s.n_catalog()).ndcg10;
            grid.push(GridPoint {
                model: "itemcf".into(),
                params: serde_json::json!(p.itemcf),
                val_ndcg10: ndcg,
            });
            if ndcg > best_cf {
                best_cf = ndcg;
                chosen_cf = p.itemcf;
            }
            step.inc(1);
        }
    }
    step.done();
    best.itemcf = chosen_cf;
    Ok(best)
}

pub fn run(ds: &Dataset, opts: &EvalOptions) -> Result<EvalReport, EvalError> {
    let t0 = Instant::now();
    let progress = Progress::new(opts.progress);
    let splits = protocol_splits(ds, opts.variant)?;
    // models only know items the protocol can rank
    let (val, test) = (
        &splits.val.restrict_to_catalog(),
        &splits.test.restrict_to_catalog(),
    );
    let val_data = SplitData::new(ds, val);
    let test_data = SplitData::new(ds, test);
    let val_in = val_data.input(val);
    let test_in = test_data.input(test);

    // 1. choose parameters on validation
    let mut grid = Vec::new();
    let chosen = match opts.search {
        Search::None => opts.params.clone(),
        Search::Small => {
            let step = progress.step("validation grid", 1);
            let c = search_grid(&val_in, val, &opts.params, &mut grid, &progress)?;
            step.done();
            c
        }
    };
    // 2. validation pipeline: its ranker learns from a holdout inside
    // val-train; the ranker's own parameters are chosen here too
    let val_models = fit_models(&val_in, &chosen, &progress)?;
    let inner = Holdout::new(&val_in, &chosen, 2, &progress)?;
    let mut chosen = chosen;
    let mut val_pipe: Option<Metrics> = None;
    for gbdt in ranker_variants(&chosen.gbdt, opts.search) {
        let mut p = chosen.clone();
        p.gbdt = gbdt;
        let (ranker, _) = inner.train(&val_in, &p, &progress)?;
        let m = evaluate(
            &pipeline_lists(&val_models, &ranker, val, &p, 20),
            &val.targets,
            val.n_catalog(),
        );
        grid.push(GridPoint {
            model: "ranker".into(),
            params: serde_json::json!(p.gbdt),
            val_ndcg10: m.ndcg10,
        });
        if val_pipe.as_ref().is_none_or(|b| m.ndcg10 > b.ndcg10) {
            val_pipe = Some(m);
            chosen = p;
        }
    }
    let val_pipe = val_pipe.unwrap_or_default();

    let val_best = |model: &str| {
        grid.iter()
            .filter(|g| g.model == model)
            .map(|g| g.val_ndcg10)
            .fold(None, |a: Option<f64>, v| Some(a.map_or(v, |a| a.max(v))))
    };

    // 3. test: models on test-train; the ranker learns from the val phase
    let (test_models, fit_s) = timed(|| fit_models(&test_in, &chosen, &progress));
    let test_models = test_models?;
    let (ranker_out, ranker_s) = timed(|| {
        let req = holdout_requests(&val_models, &val.heldout);
        train_ranker(&val_models, &val_in, &req, &chosen, &progress)
    });
    let (test_ranker, ranker_report) = ranker_out?;

    let step = progress.step("test scoring", 5);
    let n_cat = test.n_catalog();
    let mut rows = Vec::new();
    let mut curves = Vec::new();
    let k_max = *CURVE_KS.iter().max().unwrap_or(&20);
    let (pop, pop_s) = timed(|| popular_lists(&test_models, test, k_max));
    rows.push(ModelRow {
        model: "popular".into(),
        params: serde_json::json!({"list": "trending + all-time, interleaved"}),
        metrics: evaluate(&pop, &test.targets, n_cat),
        val_ndcg10: None,
        train_seconds: 0.0,
        score_seconds: pop_s,
    });
    curves.push(curve("popular", &pop, test));
    step.inc(1);
    let (cf, cf_s) = timed(|| itemcf_lists(&test_models, test, k_max));
    rows.push(ModelRow {
        model: "itemcf".into(),
        params: serde_json::json!(chosen.itemcf),
        metrics: evaluate(&cf, &test.targets, n_cat),
        val_ndcg10: val_best("itemcf"),
        train_seconds: 0.0,
        score_seconds: cf_s,
    });
    curves.push(curve("itemcf", &cf, test));
    step.inc(1);
    let (ann, ann_s) = timed(|| ann_lists(&test_models, test, k_max));
    rows.push(ModelRow {
        model: "ann".into(),
        params: serde_json::json!(chosen.als),
        metrics: evaluate(&ann, &test.targets, n_cat),
        val_ndcg10: val_best("ann"),
        train_seconds: 0.0,
        score_seconds: ann_s,
    });
    curves.push(curve("ann", &ann, test));
    step.inc(1);
    let cands = candidate_lists(&test_models, test, &chosen);
    let budget = chosen.recall.merge.budget;
    let cand_recall = cands
        .iter()
        .zip(&test.targets)
        .map(|(c, t)| {
            let hits = t.iter().filter(|x| c.binary_search(x).is_ok()).count();
            hits as f64 / t.len().min(budget).max(1) as f64
        })
        .sum::<f64>()
        / test.targets.len().max(1) as f64;
    let mean_candidates =
        cands.iter().map(|c| c.len()).sum::<usize>() as f64 / cands.len().max(1) as f64;
    step.inc(1);
    let (pipe, pipe_s) = timed(|| pipeline_lists(&test_models, &test_ranker, test, &chosen, k_max));
    rows.push(ModelRow {
        model: "pipeline".into(),
        params: serde_json::json!({"ranker": test_ranker.kind(), "candidates": budget, "rerank": chosen.rerank}),
        metrics: evaluate(&pipe, &test.targets, n_cat),
        val_ndcg10: Some(val_pipe.ndcg10),
        train_seconds: fit_s + ranker_s,
        score_seconds: pipe_s,
    });
    curves.push(curve("pipeline", &pipe, test));
    step.inc(1);
    step.done();

    if let Some(dir) = &opts.export {
        let pipeline = rows
            .iter()
            .find(|r| r.model == "pipeline")
            .map(|r| r.metrics.clone())
            .unwrap_or_default();
        export(
            ds,
            test,
            &test_models,
            &test_ranker,
            &ranker_report,
            &chosen,
            pipeline,
            dir,
        )?;
    }

    Ok(EvalReport {
        dataset: ds.name.clone(),
        fingerprint: ds.fingerprint.clone(),
        variant: opts.variant.name(),
        users_counted: test.targets.len(),
        split: SplitSummary {
            val: val.stats.clone(),
            test: test.stats.clone(),
        },
        rows,
        candidates: CandidateRecall {
            budget,
            recall: cand_recall,
            mean_candidates,
        },
        curves,
        chosen,
        ranker: ranker_report,
        grid,
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Writes the test phase's models as a bundle plus the evaluation requests.
#[allow(clippy::too_many_arguments)]
fn export(
    ds: &Dataset,
    test: &Split,
    models: &FittedModels,
    ranker: &Ranker,
    report: &RankerReport,
    p: &PipelineParams,
    pipeline: Metrics,
    dir: &std::path::Path,
) -> Result<(), EvalError> {
    use crate::training::trainer::{write_bundle, BundleSource, TrainOptions};
    std::fs::create_dir_all(dir).map_err(|source| EvalError::Io {
        action: "creating",
        path: dir.to_path_buf(),
        source,
    })?;
    let src = BundleSource {
        item_ids: test
            .item_ds
            .iter()
            .map(|&i| ds.items.external(i).to_string())
            .collect(),
        titles: test
            .item_ds
            .iter()
            .map(|&i| ds.item_meta[i as usize].title.clone())
            .collect(),
        categories: test
            .item_ds
            .iter()
            .map(|&i| ds.item_meta[i as usize].categories.clone())
            .collect(),
        created_at: test
            .item_ds
            .iter()
            .map(|&i| ds.item_meta[i as usize].created_at)
            .collect(),
        category_names: ds.categories.clone(),
        user_ids: test
            .user_ds
            .iter()
            .map(|&u| ds.users.external(u).to_string())
            .collect(),
        occupation_names: ds.occupations.clone(),
        fingerprint: ds.fingerprint.clone(),
    };
    let opts = TrainOptions {
        out: dir.join("bundle"),
        force: true,
        shards: 1,
        params: p.clone(),
        index: Default::default(),
        index_threads: 0,
        model_version: Some(format!("eval-{}", ds.fingerprint.get(..8).unwrap_or("0"))),
        progress: false,
        metrics: serde_json::json!({ "pipeline": pipeline }),
    };
    write_bundle(&src, models, ranker, report, &opts)?;
    let requests = test
        .eval_users
        .iter()
        .zip(&test.targets)
        .map(|(&u, t)| ExportedRequest {
            user_id: src.user_ids[u as usize].clone(),
            timestamp: models.default_context(u).now,
            targets: t
                .iter()
                .map(|&i| src.item_ids[i as usize].clone())
                .collect(),
        })
        .collect();
    let out = ExportedEval {
        n_catalog: test.n_catalog(),
        requests,
        pipeline,
        rerank: p.rerank,
    };
    let text = serde_json::to_string(&out)?;
    let path = dir.join("requests.json");
    std::fs::write(&path, text).map_err(|source| EvalError::Io {
        action: "writing",
        path,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{generate, GenParams};

    #[test]
    fn pipeline_beats_popularity_on_planted_data() {
        let ds = generate(&GenParams {
            users: 400,
            items: 250,
            interactions: 20_000,
            ..GenParams::default()
        })
        .unwrap();
        let mut params = PipelineParams::default();
        params.als.factors = 16;
        params.als.iterations = 6;
        params.gbdt.trees = 40;
        let r = run(
            &ds,
            &EvalOptions {
                variant: Variant::All,
                params,
                search: Search::None,
                progress: false,
                export: None,
            },
        )
        .unwrap();
        let row = |m: &str| {
            r.rows
                .iter()
                .find(|x| x.model == m)
                .unwrap()
                .metrics
                .clone()
        };
        let (pop, pipe, ann, cf) = (row("popular"), row("pipeline"), row("ann"), row("itemcf"));
        assert_eq!(pipe.users, r.users_counted);
        assert!(r.users_counted > 300, "{}", r.users_counted);
        assert!(
            pipe.ndcg10 > pop.ndcg10 * 1.2,
            "pipeline {} vs popular {}",
            pipe.ndcg10,
            pop.ndcg10
        );
        assert!(ann.ndcg10 > pop.ndcg10 && cf.ndcg10 > pop.ndcg10);
        // the candidate set holds more of the targets than any 20-item list
        assert!(r.candidates.recall > pipe.recall20);
        for m in [&pop, &pipe, &ann, &cf] {
            assert!(
                (0.0..=1.0).contains(&m.ndcg10)
                    && m.hr20 >= m.hr10
                    && m.recall20 >= m.recall10 * 0.99
            );
        }
        // the report renders
        assert!(crate::eval::report::table(&r).contains("pipeline"));
        assert!(crate::eval::report::html(&r).contains("<svg"));
    }
}
