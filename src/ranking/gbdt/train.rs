//! The boosting loop: input checks, binning, per-round gradients, tree
//! growth, score updates, metrics, early stopping.
//!
//! Owns: `train` and parameter/data validation. Must not touch: the
//! internals of split search or the model layout beyond handing trees
//! over.
//!
//! Determinism: every random choice comes from `Rng::derive(seed, round)`
//! streams, and every parallel step writes disjoint outputs or reduces in a
//! fixed order, so the model is bit-identical for any `threads`.

use super::binning::{bin_all, fit_all};
use super::histogram::SplitRules;
use super::model::{GbdtModel, Tree};
use super::objective::Targets;
use super::scoring::Scorer;
use super::tree::{grow_tree, GrowInput, GrowScratch};
use super::{Dataset, GbdtError, GbdtParams, Objective, RoundStats};
use crate::rng::Rng;
use rayon::prelude::*;

/// Trains a model on `train`, watching `valid` (if any) for early stopping,
/// and calls `on_round` after every boosting round on the caller's thread.
///
/// Training ends after `params.trees` rounds, when the validation metric
/// has not improved for `params.early_stopping_rounds` rounds (the model
/// then keeps only the trees up to the best round), or when no leaf of a
/// new tree can be split under the rules (nothing left to learn).
pub fn train(
    train: &Dataset,
    valid: Option<&Dataset>,
    params: &GbdtParams,
    on_round: &mut dyn FnMut(RoundStats),
) -> Result<GbdtModel, GbdtError> {
    check_params(params)?;
    check_dataset("training", train, params.objective)?;
    if let Some(v) = valid {
        check_dataset("validation", v, params.objective)?;
        if v.n_features != train.n_features {
            return Err(GbdtError::ValidWidthMismatch {
                train: train.n_features,
                valid: v.n_features,
            });
        }
    }
    let feature_names: Vec<String> = if train.feature_names.is_empty() {
        (0..train.n_features).map(|i| format!("f{i}")).collect()
    } else if train.feature_names.len() == train.n_features {
        train.feature_names.to_vec()
    } else {
        return Err(GbdtError::FeatureNameCount {
            names: train.feature_names.len(),
            n_features: train.n_features,
        });
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .build()
        .map_err(|e| GbdtError::ThreadPool {
            threads: params.threads,
            reason: e.to_string(),
        })?;
    // Each parallel step runs inside `pool`; the loop itself stays on the
    // caller's thread so `on_round` need not be Send.
    let booster = pool.install(|| Booster::new(train, params));
    booster.run(&pool, train, valid, params, feature_names, on_round)
}

/// Training state that lives across rounds.
struct Booster {
    bins: Vec<super::binning::FeatureBins>,
    binned: super::binning::BinnedData,
    base_score: f32,
}

impl Booster {
    fn new(train: &Dataset, params: &GbdtParams) -> Self {
        let bins = fit_all(
            train.features,
            train.n_features,
            params.max_bins,
            params.seed,
        );
        let binned = bin_all(train.features, train.n_features, &bins);
        Booster {
            bins,
            binned,
            base_score: base_score(params.objective, train.labels),
        }
    }

    fn run(
        self,
        pool: &rayon::ThreadPool,
        train: &Dataset,
        valid: Option<&Dataset>,
        params: &GbdtParams,
        feature_names: Vec<String>,
        on_round: &mut dyn FnMut(RoundStats),
    ) -> Result<GbdtModel, GbdtError> {
        let n = train.rows();
        let d = train.n_features;
        let mut scores = vec![self.base_score; n];
        let mut valid_scores = vec![self.base_score; valid.map_or(0, |v| v.rows())];
        let mut grad = vec![0.0f32; n];
        let mut hess = vec![0.0f32; n];
        let mut scratch = GrowScratch::default();
        let mut trees: Vec<Tree> = Vec::new();
        let (train_targets, valid_targets) = pool.install(|| {
            (
                Targets::new(params.objective, train.labels, train.groups),
                valid.map(|v| Targets::new(params.objective, v.labels, v.groups)),
            )
        });
        // (round, metric) of the best validation round so far.
        let mut best: Option<(usize, f64)> = None;
        let higher_is_better = params.objective.higher_is_better();
        let rules = SplitRules {
            min_data_in_leaf: params.min_data_in_leaf.min(u32::MAX as usize) as u32,
            min_sum_hessian: params.min_sum_hessian,
            lambda_l2: params.lambda_l2,
            min_split_gain: params.min_split_gain,
        };

        for round in 0..params.trees {
            pool.install(|| train_targets.gradients(&scores, &mut grad, &mut hess));
            let rows = sample_rows(n, params.bagging_fraction, params.seed, round);
            let used = sample_features(d, params.feature_fraction, params.seed, round);
            let input = GrowInput {
                binned: &self.binned,
                bins: &self.bins,
                grad: &grad,
                hess: &hess,
                used: &used,
                rules,
                max_leaves: params.max_leaves,
                max_depth: params.max_depth,
                learning_rate: params.learning_rate,
            };
            let tree = pool.install(|| grow_tree(&input, rows, &mut scratch));
            if tree.nodes.is_empty() {
                break;
            }
            let (train_metric, valid_metric) = pool.install(|| {
                add_tree_scores(&tree, train, &mut scores);
                if let Some(v) = valid {
                    add_tree_scores(&tree, v, &mut valid_scores);
                }
                let train_metric = train_targets.metric(&scores);
                let valid_metric = valid_targets.as_ref().map(|t| t.metric(&valid_scores));
                (train_metric, valid_metric)
            });
            let leaves = tree.leaf_values.len();
            trees.push(tree);
            on_round(RoundStats {
                iteration: round,
                train_metric,
                valid_metric,
                leaves,
            });
            if let Some(metric) = valid_metric {
                let improved = match best {
                    None => true,
                    Some((_, b)) if higher_is_better => metric > b,
                    Some((_, b)) => metric < b,
                };
                if improved {
                    best = Some((round, metric));
                } else if let Some((best_round, _)) = best {
                    if params.early_stopping_rounds > 0
                        && round - best_round >= params.early_stopping_rounds
                    {
                        break;
                    }
                }
            }
        }
        if let Some((best_round, _)) = best {
            if params.early_stopping_rounds > 0 {
                trees.truncate(best_round + 1);
            }
        }
        // Trees come from our own grower, so a validation failure here is
        // a bug; reporting it beats handing out a model that misbehaves.
        GbdtModel::new(
            params.objective,
            feature_names,
            self.base_score,
            best.map(|(round, _)| round as u32),
            trees,
        )
    }
}

/// Adds one tree's output to every row's running score with the same
/// scoring code `GbdtModel::predict_*` uses, so a trained model reproduces
/// the training-time scores exactly.
fn add_tree_scores(tree: &Tree, data: &Dataset, scores: &mut [f32]) {
    const CHUNK_ROWS: usize = 2048;
    let d = data.n_features;
    let scorer = Scorer::new(std::slice::from_ref(tree), d);
    if scorer.supported() {
        scores
            .par_chunks_mut(CHUNK_ROWS)
            .zip(data.features.par_chunks(CHUNK_ROWS * d))
            .for_each(|(s, rows)| scorer.score_rows(rows, s));
    } else {
        scores
            .par_iter_mut()
            .enumerate()
            .with_min_len(1024)
            .for_each(|(r, s)| *s += tree.predict(data.row(r)));
    }
}

/// Starting score: log-odds of the mean label for logistic (so the first
/// trees fit deviations, not the prior); 0 for LambdaRank, where only
/// order within a group matters.
fn base_score(objective: Objective, labels: &[f32]) -> f32 {
    match objective {
        Objective::LambdaRank { .. } => 0.0,
        Objective::Logistic => {
            let mean = labels.iter().map(|&y| y as f64).sum::<f64>() / labels.len() as f64;
            let p = mean.clamp(1e-6, 1.0 - 1e-6);
            (p / (1.0 - p)).ln() as f32
        }
    }
}

/// This round's rows (ascending): all of them, or each with probability
/// `fraction` (never none).
fn sample_rows(n: usize, fraction: f64, seed: u64, round: usize) -> Vec<u32> {
    if fraction >= 1.0 {
        return (0..n as u32).collect();
    }
    let mut rng = Rng::derive(seed ^ 0xBA66_1A6E, round as u64);
    let rows: Vec<u32> = (0..n as u32).filter(|_| rng.f64() < fraction).collect();
    if rows.is_empty() {
        (0..n as u32).collect()
    } else {
        rows
    }
}

/// This round's usable features: round(d * fraction) of them, at least 1.
fn sample_features(d: usize, fraction: f64, seed: u64, round: usize) -> Vec<bool> {
    if fraction >= 1.0 {
        return vec![true; d];
    }
    let keep = ((d as f64 * fraction).round() as usize).clamp(1, d);
    let mut order: Vec<usize> = (0..d).collect();
    Rng::derive(seed ^ 0xFEA7_05E1, round as u64).shuffle(&mut order);
    let mut used = vec![false; d];
    for &f in &order[..keep] {
        used[f] = true;
    }
    used
}

fn check_params(p: &GbdtParams) -> Result<(), GbdtError> {
    fn bad(name: &'static str, value: impl ToString, expected: &'static str) -> GbdtError {
        GbdtError::InvalidParam {
            name,
            value: value.to_string(),
            expected,
        }
    }
    let fraction_ok = |f: f64| f > 0.0 && f <= 1.0;
    let non_negative = |x: f64| x.is_finite() && x >= 0.0;
    if p.trees == 0 {
        return Err(bad("trees", p.trees, "at least 1"));
    }
    if !(p.learning_rate.is_finite() && p.learning_rate > 0.0) {
        return Err(bad("learning_rate", p.learning_rate, "a finite number > 0"));
    }
    if p.max_leaves < 2 {
        return Err(bad("max_leaves", p.max_leaves, "at least 2"));
    }
    if !(2..=255).contains(&p.max_bins) {
        return Err(bad("max_bins", p.max_bins, "2..=255"));
    }
    if !non_negative(p.min_sum_hessian) {
        return Err(bad(
            "min_sum_hessian",
            p.min_sum_hessian,
            "a finite number >= 0",
        ));
    }
    if !non_negative(p.lambda_l2) {
        return Err(bad("lambda_l2", p.lambda_l2, "a finite number >= 0"));
    }
    if !non_negative(p.min_split_gain) {
        return Err(bad(
            "min_split_gain",
            p.min_split_gain,
            "a finite number >= 0",
        ));
    }
    if !fraction_ok(p.feature_fraction) {
        return Err(bad("feature_fraction", p.feature_fraction, "in (0, 1]"));
    }
    if !fraction_ok(p.bagging_fraction) {
        return Err(bad("bagging_fraction", p.bagging_fraction, "in (0, 1]"));
    }
    if let Objective::LambdaRank { ndcg_at: 0 } = p.objective {
        return Err(bad("objective.ndcg_at", 0, "at least 1"));
    }
    Ok(())
}

fn check_dataset(set: &'static str, data: &Dataset, objective: Objective) -> Result<(), GbdtError> {
    if data.n_features == 0 {
        return Err(GbdtError::NoFeatures);
    }
    if data.features.len() % data.n_features != 0 {
        return Err(GbdtError::RaggedFeatures {
            set,
            values: data.features.len(),
            n_features: data.n_features,
        });
    }
    let rows = data.rows();
    if rows == 0 {
        return Err(GbdtError::EmptyData { set });
    }
    if rows > u32::MAX as usize {
        return Err(GbdtError::InvalidParam {
            name: "rows",
            value: rows.to_string(),
            expected: "at most 2^32 - 1 rows per set",
        });
    }
    if data.labels.len() != rows {
        return Err(GbdtError::LabelCountMismatch {
            set,
            labels: data.labels.len(),
            rows,
        });
    }
    if data.groups.is_empty() {
        if matches!(objective, Objective::LambdaRank { .. }) {
            return Err(GbdtError::MissingGroups { set });
        }
    } else {
        let sum: u64 = data.groups.iter().map(|&g| g as u64).sum();
        if sum != rows as u64 {
            return Err(GbdtError::GroupsMismatch { set, sum, rows });
        }
    }
    let (min, max, name) = match objective {
        Objective::LambdaRank { .. } => (0.0, 31.0, "LambdaRank (relevance grades)"),
        Objective::Logistic => (0.0, 1.0, "the logistic objective"),
    };
    for (row, &value) in data.labels.iter().enumerate() {
        if !value.is_finite() {
            return Err(GbdtError::NonFiniteLabel { set, row, value });
        }
        if !(min..=max).contains(&value) {
            return Err(GbdtError::LabelOutOfRange {
                set,
                row,
                value,
                min,
                max,
                objective: name,
            });
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data<'a>(
        features: &'a [f32],
        d: usize,
        labels: &'a [f32],
        groups: &'a [u32],
    ) -> Dataset<'a> {
        Dataset {
            features,
            n_features: d,
            labels,
            groups,
            feature_names: &[],
        }
    }

    fn err(train_set: &Dataset, params: &GbdtParams) -> GbdtError {
        super::train(train_set, None, params, &mut |_| {}).expect_err("should be rejected")
    }

    #[test]
    fn bad_inputs_are_rejected_with_distinct_errors() {
        let p = GbdtParams::default();
        let f = [0.0f32; 8];
        let l = [0.0f32, 1.0, 0.0, 1.0];
        assert_eq!(
            err(&data(&[], 2, &[], &[]), &p),
            GbdtError::EmptyData { set: "training" }
        );
        assert_eq!(err(&data(&f, 0, &l, &[4]), &p), GbdtError::NoFeatures);
        assert!(matches!(
            err(&data(&f, 3, &l, &[4]), &p),
            GbdtError::RaggedFeatures { .. }
        ));
        assert!(matches!(
            err(&data(&f, 2, &l[..3], &[4]), &p),
            GbdtError::LabelCountMismatch {
                labels: 3,
                rows: 4,
                ..
            }
        ));
        assert!(matches!(
            err(&data(&f, 2, &l, &[2, 1]), &p),
            GbdtError::GroupsMismatch {
                sum: 3,
                rows: 4,
                ..
            }
        ));
        assert!(matches!(
            err(&data(&f, 2, &l, &[]), &p),
            GbdtError::MissingGroups { .. }
        ));
        let nan_labels = [0.0, f32::NAN, 0.0, 0.0];
        assert!(matches!(
            err(&data(&f, 2, &nan_labels, &[4]), &p),
            GbdtError::NonFiniteLabel { row: 1, .. }
        ));
        let logistic = GbdtParams {
            objective: Objective::Logistic,
            ..GbdtParams::default()
        };
        let graded = [0.0, 2.0, 0.0, 0.0];
        assert!(matches!(
            err(&data(&f, 2, &graded, &[]), &logistic),
            GbdtError::LabelOutOfRange { row: 1, .. }
        ));
        let names = vec!["only one".to_string()];
        let mut named = data(&f, 2, &l, &[4]);
        named.feature_names = &names;
        assert!(matches!(
            err(&named, &p),
            GbdtError::FeatureNameCount { names: 1, .. }
        ));
        let valid = data(&f[..6], 3, &l[..2], &[2]);
        assert!(matches!(
            super::train(&data(&f, 2, &l, &[4]), Some(&valid), &p, &mut |_| {}),
            Err(GbdtError::ValidWidthMismatch { train: 2, valid: 3 })
        ));
    }

    #[test]
    fn bad_params_name_the_parameter() {
        let f = [0.0f32; 8];
        let l = [0.0f32, 1.0, 0.0, 1.0];
        let d = data(&f, 2, &l, &[4]);
        let cases = [
            (
                "trees",
                GbdtParams {
                    trees: 0,
                    ..Default::default()
                },
            ),
            (
                "learning_rate",
                GbdtParams {
                    learning_rate: f64::NAN,
                    ..Default::default()
                },
            ),
            (
                "max_leaves",
                GbdtParams {
                    max_leaves: 1,
                    ..Default::default()
                },
            ),
            (
                "max_bins",
                GbdtParams {
                    max_bins: 256,
                    ..Default::default()
                },
            ),
            (
                "lambda_l2",
                GbdtParams {
                    lambda_l2: -1.0,
                    ..Default::default()
                },
            ),
            (
                "bagging_fraction",
                GbdtParams {
                    bagging_fraction: 0.0,
                    ..Default::default()
                },
            ),
            (
                "feature_fraction",
                GbdtParams {
                    feature_fraction: 1.5,
                    ..Default::default()
                },
            ),
            (
                "objective.ndcg_at",
                GbdtParams {
                    objective: Objective::LambdaRank { ndcg_at: 0 },
                    ..Default::default()
                },
            ),
        ];
        for (name, params) in cases {
            match err(&d, &params) {
                GbdtError::InvalidParam { name: got, .. } => assert_eq!(got, name),
                other => panic!("{name}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn sampling_is_seeded_and_respects_fractions() {
        assert_eq!(sample_rows(10, 1.0, 1, 0), (0..10).collect::<Vec<u32>>());
        let a = sample_rows(10_000, 0.5, 7, 3);
        assert_eq!(a, sample_rows(10_000, 0.5, 7, 3));
        assert_ne!(a, sample_rows(10_000, 0.5, 7, 4));
        assert!(a.len() > 4_500 && a.len() < 5_500);
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        let used = sample_features(10, 0.3, 7, 0);
        assert_eq!(used.iter().filter(|&&u| u).count(), 3);
        assert_eq!(
            sample_features(3, 0.01, 7, 0)
                .iter()
                .filter(|&&u| u)
                .count(),
            1
        );
    }

    #[test]
    fn logistic_base_score_is_prior_log_odds() {
        let labels = [1.0, 0.0, 0.0, 0.0];
        let b = base_score(Objective::Logistic, &labels);
        assert!((b - (1.0f32 / 3.0).ln()).abs() < 1e-6);
        assert_eq!(
            base_score(Objective::LambdaRank { ndcg_at: 5 }, &labels),
            0.0
        );
    }
}
