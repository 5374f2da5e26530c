//! The trained model: flattened trees, scoring, integrity checks, serde.
//!
//! Owns: `GbdtModel`, its tree layout and `predict_*`, `validate`. Must not
//! touch: training (the trainer hands over finished trees), files.
//!
//! Layout per tree: `nodes` (internal nodes, root at 0) and `leaf_values`.
//! A child reference >= 0 is a node index, < 0 is `!leaf_index`. Children
//! always come after their parent, which `validate` checks: with indices
//! in range, that guarantees every walk ends at a leaf without looping or
//! reading out of bounds. Deserialisation runs `validate`, so a
//! `GbdtModel` that exists is safe to score.

use super::scoring::Scorer;
use super::{GbdtError, Objective};
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Bumped when the serialised layout changes incompatibly.
const FORMAT_VERSION: u32 = 1;

/// Keeps 2 x n_features (the scoring layout's column space) within u32.
const MAX_FEATURES: u32 = 1 << 30;

/// A split node.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub(crate) struct Node {
    pub feature: u32,
    /// Go left when `value <= threshold`.
    pub threshold: f32,
    /// Where NaN (missing) values go.
    pub default_left: bool,
    pub left: i32,
    pub right: i32,
    /// Loss reduction of this split, for feature importance.
    pub gain: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct Tree {
    pub nodes: Vec<Node>,
    pub leaf_values: Vec<f32>,
}

impl Tree {
    /// Encodes leaf `index` as a child reference.
    pub(crate) fn leaf_ref(index: usize) -> i32 {
        !(index as i32)
    }

    #[inline]
    pub(crate) fn predict(&self, row: &[f32]) -> f32 {
        if self.nodes.is_empty() {
            return self.leaf_values[0];
        }
        let mut at = 0usize;
        loop {
            let node = &self.nodes[at];
            // A short row reads as missing rather than panicking; the batch
            // API rejects wrong widths before getting here.
            let value = row.get(node.feature as usize).copied().unwrap_or(f32::NAN);
            let go_left = if value.is_nan() {
                node.default_left
            } else {
                value <= node.threshold
            };
            let child = if go_left { node.left } else { node.right };
            if child < 0 {
                return self.leaf_values[!child as usize];
            }
            at = child as usize;
        }
    }

    fn validate(&self, tree: usize, n_features: usize) -> Result<(), GbdtError> {
        let corrupt =
            |reason: String| -> Result<(), GbdtError> { Err(GbdtError::CorruptModel { reason }) };
        if self.leaf_values.is_empty() {
            return corrupt(format!("tree {tree} has no leaves"));
        }
        if self.leaf_values.len() != self.nodes.len() + 1 {
            return corrupt(format!(
                "tree {tree} has {} nodes but {} leaves (a binary tree has nodes + 1)",
                self.nodes.len(),
                self.leaf_values.len()
            ));
        }
        if let Some(i) = self.leaf_values.iter().position(|v| !v.is_finite()) {
            return corrupt(format!(
                "tree {tree} leaf {i} has non-finite value {}",
                self.leaf_values[i]
            ));
        }
        let mut referenced_nodes = vec![false; self.nodes.len()];
        let mut referenced_leaves = vec![false; self.leaf_values.len()];
        if let Some(first) = referenced_nodes.first_mut() {
            *first = true;
        }
        for (at, node) in self.nodes.iter().enumerate() {
            if node.feature as usize >= n_features {
                return corrupt(format!(
                    "tree {tree} node {at} splits on feature {} but the model has {n_features}",
                    node.feature
                ));
            }
            if node.threshold.is_nan() {
                return corrupt(format!("tree {tree} node {at} has a NaN threshold"));
            }
            if !node.gain.is_finite() {
                return corrupt(format!("tree {tree} node {at} has non-finite gain"));
            }
            for child in [node.left, node.right] {
                if child < 0 {
                    let leaf = !child as usize;
                    if leaf >= self.leaf_values.len() {
                        return corrupt(format!(
                            "tree {tree} node {at} points to leaf {leaf} of {}",
                            self.leaf_values.len()
                        ));
                    }
                    if std::mem::replace(&mut referenced_leaves[leaf], true) {
                        return corrupt(format!("tree {tree} leaf {leaf} has two parents"));
                    }
                } else {
                    let child = child as usize;
                    if child <= at || child >= self.nodes.len() {
                        return corrupt(format!(
                            "tree {tree} node {at} points to node {child}; children must come after their parent and within {} nodes",
                            self.nodes.len()
                        ));
                    }
                    if std::mem::replace(&mut referenced_nodes[child], true) {
                        return corrupt(format!("tree {tree} node {child} has two parents"));
                    }
                }
            }
        }
        // Counting nodes + 1 leaves, each referenced once and every child
        // after its parent, makes the nodes one tree rooted at 0.
        Ok(())
    }
}

/// A trained GBDT: `score = base_score + sum of tree outputs`. For the
/// logistic objective the score is log-odds (see `probability`); for
/// LambdaRank only the order of scores within a request means anything.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "UncheckedModel")]
pub struct GbdtModel {
    format_version: u32,
    objective: Objective,
    n_features: u32,
    feature_names: Vec<String>,
    base_score: f32,
    /// 0-based round with the best validation metric, when there was a
    /// validation set.
    best_iteration: Option<u32>,
    trees: Vec<Tree>,
    /// Scoring layout derived from `trees`; rebuilt on load, never stored.
    #[serde(skip)]
    scorer: Scorer,
}

/// The serialised form before `validate` has vouched for it.
#[derive(Deserialize)]
struct UncheckedModel {
    format_version: u32,
    objective: Objective,
    n_features: u32,
    feature_names: Vec<String>,
    base_score: f32,
    best_iteration: Option<u32>,
    trees: Vec<Tree>,
}

impl TryFrom<UncheckedModel> for GbdtModel {
    type Error = GbdtError;

    fn try_from(raw: UncheckedModel) -> Result<Self, GbdtError> {
        let model = GbdtModel {
            format_version: raw.format_version,
            objective: raw.objective,
            n_features: raw.n_features,
            feature_names: raw.feature_names,
            base_score: raw.base_score,
            best_iteration: raw.best_iteration,
            trees: raw.trees,
            scorer: Scorer::default(),
        };
        model.checked()
    }
}

impl GbdtModel {
    pub(crate) fn new(
        objective: Objective,
        feature_names: Vec<String>,
        base_score: f32,
        best_iteration: Option<u32>,
        trees: Vec<Tree>,
    ) -> Result<Self, GbdtError> {
        GbdtModel {
            format_version: FORMAT_VERSION,
            objective,
            n_features: feature_names.len() as u32,
            feature_names,
            base_score,
            best_iteration,
            trees,
            scorer: Scorer::default(),
        }
        .checked()
    }

    /// Validates, then builds the scoring layout (which relies on the
    /// structure `validate` guarantees).
    fn checked(mut self) -> Result<Self, GbdtError> {
        self.validate()?;
        self.scorer = Scorer::new(&self.trees, self.n_features());
        Ok(self)
    }

    pub fn n_features(&self) -> usize {
        self.n_features as usize
    }

    pub fn feature_names(&self) -> &[String] {
        &self.feature_names
    }

    pub fn objective(&self) -> Objective {
        self.objective
    }

    /// Trees in the model (after early stopping: the best round's + 1).
    pub fn n_trees(&self) -> usize {
        self.trees.len()
    }

    /// The 0-based round with the best validation metric, if training had
    /// a validation set. With early stopping the model keeps exactly the
    /// trees up to and including it.
    pub fn best_iteration(&self) -> Option<usize> {
        self.best_iteration.map(|i| i as usize)
    }

    /// Score before any tree (log-odds of the mean label for logistic).
    pub fn base_score(&self) -> f32 {
        self.base_score
    }

    /// Total split gain per feature (indexed like `feature_names`).
    pub fn feature_importance_gain(&self) -> Vec<f64> {
        let mut gain = vec![0.0; self.n_features()];
        for node in self.trees.iter().flat_map(|t| &t.nodes) {
            gain[node.feature as usize] += node.gain as f64;
        }
        gain
    }

    /// Scores one row. Never panics: a row shorter than `n_features` reads
    /// the absent features as missing (NaN) and extra values are ignored;
    /// use `predict_batch` to have wrong widths rejected. For a request's
    /// candidates prefer `predict_batch`: walking eight rows at once makes
    /// it about twice as fast per row.
    pub fn predict_row(&self, row: &[f32]) -> f32 {
        if self.scorer.supported() && row.len() >= self.n_features() {
            return self.scorer.score_row(self.base_score, row);
        }
        self.predict_row_plain(row)
    }

    /// Walks the stored trees directly; the fallback for rows the fast
    /// layout cannot take (short rows, more than 2048 features).
    fn predict_row_plain(&self, row: &[f32]) -> f32 {
        let mut score = self.base_score;
        for tree in &self.trees {
            score += tree.predict(row);
        }
        score
    }

    /// Scores `out.len()` row-major rows of `n_features` values into `out`.
    /// Allocation-free (its scratch is 16 KiB of stack). Errors when `n_features` differs from the model's
    /// or `rows` does not hold exactly `out.len()` rows. Gives bit-identical
    /// scores to `predict_row`.
    pub fn predict_batch(
        &self,
        rows: &[f32],
        n_features: usize,
        out: &mut [f32],
    ) -> Result<(), GbdtError> {
        self.check_batch(rows, n_features, out.len())?;
        out.fill(self.base_score);
        self.add_trees(rows, n_features, 0..usize::MAX, out)
    }

    /// Adds the outputs of the trees in `trees` (clamped to the model's) to
    /// `out`, which holds the base score or the sum of the trees before
    /// `trees.start`. Running `0..a` then `a..` on the same `out` gives the
    /// bits `predict_batch` gives: every row sums its trees in order. This
    /// is what lets a ranking cascade score all candidates with the first
    /// trees and only the best of them with the rest. Errors as
    /// `predict_batch` does, leaving `out` unchanged.
    pub fn add_trees(
        &self,
        rows: &[f32],
        n_features: usize,
        trees: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), GbdtError> {
        self.check_batch(rows, n_features, out.len())?;
        let end = trees.end.min(self.trees.len());
        let trees = trees.start.min(end)..end;
        if self.scorer.supported() {
            self.scorer.add_trees(rows, trees, out);
        } else {
            // n_features == 0 reads no value: an empty row walks every tree
            let empty: [f32; 0] = [];
            let rows: Box<dyn Iterator<Item = &[f32]>> = if n_features == 0 {
                Box::new(std::iter::repeat(&empty[..]))
            } else {
                Box::new(rows.chunks_exact(n_features))
            };
            for (row, score) in rows.zip(out.iter_mut()) {
                for tree in &self.trees[trees.clone()] {
                    *score += tree.predict(row);
                }
            }
        }
        Ok(())
    }

    fn check_batch(&self, rows: &[f32], n_features: usize, n_rows: usize) -> Result<(), GbdtError> {
        if n_features != self.n_features() {
            return Err(GbdtError::WidthMismatch {
                expected: self.n_features(),
                got: n_features,
            });
        }
        if Some(rows.len()) != n_rows.checked_mul(n_features) {
            return Err(GbdtError::BatchShape {
                values: rows.len(),
                rows: n_rows,
                n_features,
            });
        }
        Ok(())
    }

    /// Logistic objective: the probability of a positive label for a score
    /// from `predict_*`.
    pub fn probability(score: f32) -> f32 {
        1.0 / (1.0 + (-score).exp())
    }

    /// Checks that scoring can neither index out of bounds nor loop and
    /// that all numbers are usable. Run automatically on deserialisation.
    pub fn validate(&self) -> Result<(), GbdtError> {
        let corrupt = |reason: String| GbdtError::CorruptModel { reason };
        if self.format_version != FORMAT_VERSION {
            return Err(corrupt(format!(
                "format version {} is not the supported {FORMAT_VERSION}",
                self.format_version
            )));
        }
        if self.n_features > MAX_FEATURES {
            return Err(corrupt(format!(
                "{} features is more than the supported {MAX_FEATURES}",
                self.n_features
            )));
        }
        if self.feature_names.len() != self.n_features() {
            return Err(corrupt(format!(
                "{} feature names for {} features",
                self.feature_names.len(),
                self.n_features
            )));
        }
        if !self.base_score.is_finite() {
            return Err(corrupt(format!(
                "base score {} is not finite",
                self.base_score
            )));
        }
        if let Objective::LambdaRank { ndcg_at: 0 } = self.objective {
            return Err(corrupt("LambdaRank objective with ndcg_at = 0".into()));
        }
        let mut total_nodes = 0usize;
        for (i, tree) in self.trees.iter().enumerate() {
            tree.validate(i, self.n_features())?;
            total_nodes += tree.nodes.len() + tree.leaf_values.len();
        }
        if total_nodes >= u32::MAX as usize {
            return Err(corrupt(format!(
                "{total_nodes} nodes is more than 2^32 - 1"
            )));
        }
        Ok(())
    }

    /// The plain per-tree walk, the reference the fast layout must match.
    #[cfg(test)]
    pub(crate) fn predict_row_reference(&self, row: &[f32]) -> f32 {
        self.predict_row_plain(row)
    }

    #[cfg(test)]
    pub(crate) fn trees_mut(&mut self) -> &mut Vec<Tree> {
        &mut self.trees
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(feature: u32, threshold: f32, default_left: bool, left: i32, right: i32) -> Node {
        Node {
            feature,
            threshold,
            default_left,
            left,
            right,
            gain: 1.0,
        }
    }

    /// x0 <= 0.5 ? (x1 <= 2 ? 1 : 2) : 3, NaN in x0 goes right, in x1 left.
    fn small_model() -> GbdtModel {
        let tree = Tree {
            nodes: vec![
                node(0, 0.5, false, 1, Tree::leaf_ref(2)),
                node(1, 2.0, true, Tree::leaf_ref(0), Tree::leaf_ref(1)),
            ],
            leaf_values: vec![1.0, 2.0, 3.0],
        };
        let constant = Tree {
            nodes: vec![],
            leaf_values: vec![0.25],
        };
        GbdtModel::new(
            Objective::Logistic,
            vec!["a".into(), "b".into()],
            0.5,
            None,
            vec![tree, constant],
        )
        .expect("hand-built model is valid")
    }

    #[test]
    fn predict_walks_thresholds_and_missing_directions() {
        let m = small_model();
        assert_eq!(m.predict_row(&[0.5, 2.0]), 0.5 + 1.0 + 0.25);
        assert_eq!(m.predict_row(&[0.0, 2.5]), 0.5 + 2.0 + 0.25);
        assert_eq!(m.predict_row(&[0.6, 0.0]), 0.5 + 3.0 + 0.25);
        assert_eq!(m.predict_row(&[f32::NAN, 0.0]), 0.5 + 3.0 + 0.25);
        assert_eq!(m.predict_row(&[0.0, f32::NAN]), 0.5 + 1.0 + 0.25);
        // Short row: x1 missing -> default left.
        assert_eq!(m.predict_row(&[0.0]), 0.5 + 1.0 + 0.25);
        assert_eq!(m.predict_row(&[]), 0.5 + 3.0 + 0.25);
        assert_eq!(m.feature_importance_gain(), vec![1.0, 1.0]);
    }

    #[test]
    fn batch_matches_rows_and_rejects_bad_shapes() {
        let m = small_model();
        let rows: Vec<f32> = (0..200).map(|i| (i % 7) as f32 * 0.3).collect();
        let mut out = vec![0.0; 100];
        m.predict_batch(&rows, 2, &mut out)
            .expect("well-shaped batch");
        for (i, &s) in out.iter().enumerate() {
            assert_eq!(s, m.predict_row(&rows[2 * i..2 * i + 2]));
        }
        assert!(matches!(
            m.predict_batch(&rows, 4, &mut out[..50]),
            Err(GbdtError::WidthMismatch {
                expected: 2,
                got: 4
            })
        ));
        assert!(matches!(
            m.predict_batch(&rows[..199], 2, &mut out),
            Err(GbdtError::BatchShape { .. })
        ));
    }

    #[test]
    fn very_wide_models_fall_back_to_the_plain_walk() {
        // 3000 features do not fit the scoring buffer; results must not
        // change.
        let d = 3000;
        let tree = Tree {
            nodes: vec![
                node(2999, 0.0, false, 1, Tree::leaf_ref(2)),
                node(7, 1.0, true, Tree::leaf_ref(0), Tree::leaf_ref(1)),
            ],
            leaf_values: vec![1.0, 2.0, 3.0],
        };
        let names = (0..d).map(|i| format!("f{i}")).collect();
        let m = GbdtModel::new(Objective::Logistic, names, 0.0, None, vec![tree])
            .expect("valid wide model");
        let mut rows = vec![0.5f32; 3 * d];
        rows[d - 1] = -1.0; // row 0: left at the root, x7 = 0.5 -> leaf 0
        rows[d + 7] = f32::NAN; // row 1: x2999 = 0.5 -> right -> leaf 2
        rows[3 * d - 1] = f32::NAN; // row 2: missing goes right -> leaf 2
        let mut out = [0.0; 3];
        m.predict_batch(&rows, d, &mut out).expect("right width");
        assert_eq!(out, [1.0, 3.0, 3.0]);
        assert_eq!(m.predict_row(&rows[..d]), 1.0);
    }

    #[test]
    fn validate_accepts_good_and_rejects_each_corruption() {
        assert_eq!(small_model().validate(), Ok(()));
        type Corruption = (&'static str, Box<dyn Fn(&mut GbdtModel)>);
        let cases: Vec<Corruption> = vec![
            (
                "child out of range",
                Box::new(|m| m.trees_mut()[0].nodes[0].left = 7),
            ),
            (
                "leaf out of range",
                Box::new(|m| m.trees_mut()[0].nodes[1].right = Tree::leaf_ref(9)),
            ),
            ("cycle", Box::new(|m| m.trees_mut()[0].nodes[1].left = 0)),
            (
                "self loop",
                Box::new(|m| m.trees_mut()[0].nodes[0].left = 0),
            ),
            (
                "NaN leaf",
                Box::new(|m| m.trees_mut()[0].leaf_values[1] = f32::NAN),
            ),
            (
                "infinite leaf",
                Box::new(|m| m.trees_mut()[1].leaf_values[0] = f32::INFINITY),
            ),
            (
                "feature out of range",
                Box::new(|m| m.trees_mut()[0].nodes[1].feature = 2),
            ),
            (
                "shared leaf",
                Box::new(|m| m.trees_mut()[0].nodes[1].right = Tree::leaf_ref(0)),
            ),
            (
                "no leaves",
                Box::new(|m| m.trees_mut()[1].leaf_values.clear()),
            ),
            (
                "NaN threshold",
                Box::new(|m| m.trees_mut()[0].nodes[0].threshold = f32::NAN),
            ),
            ("base score", Box::new(|m| m.base_score = f32::NAN)),
            (
                "names",
                Box::new(|m| {
                    m.feature_names.pop();
                }),
            ),
            ("version", Box::new(|m| m.format_version = 99)),
        ];
        for (what, corrupt) in cases {
            let mut m = small_model();
            corrupt(&mut m);
            assert!(
                matches!(m.validate(), Err(GbdtError::CorruptModel { .. })),
                "{what} was accepted"
            );
        }
    }

    #[test]
    fn deserialising_a_corrupt_model_fails_instead_of_scoring() {
        let good = serde_json::to_value(small_model()).expect("serialise");
        let mut bad = good.clone();
        bad["trees"][0]["nodes"][0]["right"] = serde_json::json!(5);
        let err = serde_json::from_value::<GbdtModel>(bad).expect_err("corrupt accepted");
        assert!(err.to_string().contains("corrupt"), "{err}");
        let back: GbdtModel = serde_json::from_value(good).expect("intact model loads");
        assert_eq!(back, small_model());
    }
}
