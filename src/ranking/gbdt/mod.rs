//! Gradient-boosted decision trees for the ranking stage: LambdaMART
//! (pairwise, NDCG@k-weighted) and logistic objectives, our own
//! implementation.
//!
//! Owns: training parameters, the training-data view, the boosting loop
//! (`train`), the serialisable model (`GbdtModel`) and its fast scoring.
//! Must not touch: feature computation (rows arrive already computed, NaN =
//! missing), files (callers serialise the model with serde), the clock
//! beyond reporting progress.
//!
//! Layout: `binning` turns raw f32 columns into u8 bins, `histogram` sums
//! gradients per bin and finds splits, `tree` grows one tree leaf-wise,
//! `objective` holds the LambdaRank/logistic gradients and metrics,
//! `train` is the boosting loop, `model` the frozen trees, `scoring` the
//! cache-friendly layout `predict_*` walks.

mod binning;
mod histogram;
mod model;
mod objective;
mod scoring;
mod train;
mod tree;

#[cfg(test)]
mod tests;

pub use model::GbdtModel;
pub use train::train;

use serde::{Deserialize, Serialize};

/// What the trees are fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Objective {
    /// LambdaMART: pairwise within each query group, each pair weighted by
    /// how much swapping it would change NDCG@`ndcg_at`. Labels are graded
    /// relevances in [0, 31] (gain 2^label - 1). Validation metric: mean
    /// NDCG@`ndcg_at` over groups that have at least one positive label.
    LambdaRank { ndcg_at: usize },
    /// Binary log-loss on labels in [0, 1]; scores are log-odds.
    /// Validation metric: mean log-loss (lower is better).
    Logistic,
}

impl Objective {
    /// Short metric name for progress output, e.g. `ndcg@10` or `logloss`.
    pub fn metric_name(&self) -> String {
        match self {
            Objective::LambdaRank { ndcg_at } => format!("ndcg@{ndcg_at}"),
            Objective::Logistic => "logloss".to_string(),
        }
    }

    /// Whether a larger validation metric means a better model.
    pub fn higher_is_better(&self) -> bool {
        matches!(self, Objective::LambdaRank { .. })
    }
}

/// Training parameters. `Default` gives values that work on typical
/// ranking data (groups of tens to hundreds of candidates, dozens of
/// features, 1e4..1e6 rows); tune `trees`/`learning_rate` together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GbdtParams {
    /// Default `LambdaRank { ndcg_at: 10 }`: the stage is judged on NDCG@10.
    pub objective: Objective,
    /// Maximum boosting rounds (one tree each). Default 300.
    pub trees: usize,
    /// Shrinkage applied to every leaf value. Default 0.05.
    pub learning_rate: f64,
    /// Maximum depth of a leaf (root = depth 0); 0 = only `max_leaves`
    /// limits the tree. Default 6.
    pub max_depth: usize,
    /// Leaves per tree; trees grow best-first (leaf-wise) until this many.
    /// Default 31.
    pub max_leaves: usize,
    /// A split is rejected if either child would get fewer rows. Default 20.
    pub min_data_in_leaf: usize,
    /// A split is rejected if either child's hessian sum is below this.
    /// Default 1e-3.
    pub min_sum_hessian: f64,
    /// L2 penalty on leaf values (added to every hessian sum). Default 1.0,
    /// which keeps LambdaRank leaves with tiny hessians from exploding.
    pub lambda_l2: f64,
    /// Minimum loss reduction for a split. Default 0.
    pub min_split_gain: f64,
    /// Fraction of features each tree may split on (sampled per tree).
    /// Default 1.0.
    pub feature_fraction: f64,
    /// Fraction of rows each tree is fitted on (sampled per tree).
    /// Default 1.0.
    pub bagging_fraction: f64,
    /// Value bins per feature (one more bin is always kept for NaN); at
    /// most 255 so a bin fits a byte. Default 255.
    pub max_bins: usize,
    /// Stop when the validation metric has not improved for this many
    /// rounds and keep the best round's trees; 0 = never stop early (all
    /// trees kept). Ignored without a validation set. Default 30.
    pub early_stopping_rounds: usize,
    /// Seeds binning samples, bagging and feature sampling. Default 42.
    pub seed: u64,
    /// Worker threads; 0 = one per core. The model does not depend on it.
    /// Default 0.
    pub threads: usize,
}

impl Default for GbdtParams {
    fn default() -> Self {
        GbdtParams {
            objective: Objective::LambdaRank { ndcg_at: 10 },
            trees: 300,
            learning_rate: 0.05,
            max_depth: 6,
            max_leaves: 31,
            min_data_in_leaf: 20,
            min_sum_hessian: 1e-3,
            lambda_l2: 1.0,
            min_split_gain: 0.0,
            feature_fraction: 1.0,
            bagging_fraction: 1.0,
            max_bins: 255,
            early_stopping_rounds: 30,
            seed: 42,
            threads: 0,
        }
    }
}

/// A borrowed training or validation set.
#[derive(Debug, Clone, Copy)]
pub struct Dataset<'a> {
    /// Row-major `rows x n_features` values; NaN means missing.
    pub features: &'a [f32],
    pub n_features: usize,
    /// One label per row (relevance grade for LambdaRank, 0/1 for logistic).
    pub labels: &'a [f32],
    /// Sizes of consecutive query groups, summing to the row count.
    /// Required for LambdaRank; may be empty for logistic.
    pub groups: &'a [u32],
    /// One name per feature, or empty for `f0`, `f1`, ...
    pub feature_names: &'a [String],
}

impl Dataset<'_> {
    /// Rows implied by `features.len() / n_features` (0 when n_features is 0).
    pub fn rows(&self) -> usize {
        self.features
            .len()
            .checked_div(self.n_features)
            .unwrap_or(0)
    }

    pub(crate) fn row(&self, index: usize) -> &[f32] {
        &self.features[index * self.n_features..(index + 1) * self.n_features]
    }
}

/// Progress of one boosting round, passed to `train`'s callback.
#[derive(Debug, Clone, PartialEq)]
pub struct RoundStats {
    /// 0-based round index (= number of trees before this one).
    pub iteration: usize,
    /// Objective metric on the training set after this round.
    pub train_metric: f64,
    /// Objective metric on the validation set, when one was given.
    pub valid_metric: Option<f64>,
    /// Leaves in this round's tree.
    pub leaves: usize,
}

/// Everything that can go wrong in training or scoring, each telling the
/// caller what to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GbdtError {
    #[error("the {set} set has no rows; pass at least one row")]
    EmptyData { set: &'static str },
    #[error("n_features is 0; every row needs at least one feature")]
    NoFeatures,
    #[error("the {set} set has {values} feature values, not a multiple of n_features = {n_features}; pass row-major rows x n_features values")]
    RaggedFeatures {
        set: &'static str,
        values: usize,
        n_features: usize,
    },
    #[error("the {set} set has {labels} labels for {rows} rows; pass exactly one label per row")]
    LabelCountMismatch {
        set: &'static str,
        labels: usize,
        rows: usize,
    },
    #[error("the {set} set's group sizes sum to {sum} but it has {rows} rows; group sizes must cover every row exactly once")]
    GroupsMismatch {
        set: &'static str,
        sum: u64,
        rows: usize,
    },
    #[error("the {set} set has no query groups; LambdaRank needs group sizes (use Logistic for ungrouped data)")]
    MissingGroups { set: &'static str },
    #[error(
        "the {set} set has a non-finite label {value} at row {row}; labels must be finite numbers"
    )]
    NonFiniteLabel {
        set: &'static str,
        row: usize,
        value: f32,
    },
    #[error("the {set} set has label {value} at row {row}, outside [{min}, {max}] which {objective} needs")]
    LabelOutOfRange {
        set: &'static str,
        row: usize,
        value: f32,
        min: f32,
        max: f32,
        objective: &'static str,
    },
    #[error("{names} feature names for {n_features} features; pass one name per feature or none")]
    FeatureNameCount { names: usize, n_features: usize },
    #[error("validation rows have {valid} features but training rows have {train}; both sets need the same columns")]
    ValidWidthMismatch { train: usize, valid: usize },
    #[error("parameter {name} = {value} is invalid: expected {expected}")]
    InvalidParam {
        name: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("could not start {threads} training threads: {reason}; try fewer threads")]
    ThreadPool { threads: usize, reason: String },
    #[error("rows have {got} features but the model was trained on {expected}; compute the same feature columns as at training time")]
    WidthMismatch { expected: usize, got: usize },
    #[error("{values} feature values do not make {rows} rows of {n_features} (the output length); pass rows.len() == out.len() * n_features")]
    BatchShape {
        values: usize,
        rows: usize,
        n_features: usize,
    },
    #[error("model is corrupt: {reason}; retrain it or load an intact copy")]
    CorruptModel { reason: String },
}
