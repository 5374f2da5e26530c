//! Growing one regression tree on gradients, best-first (leaf-wise).
//!
//! Owns: the row partition of the tree being grown, the choice of which
//! leaf to split next, histogram bookkeeping (build the smaller child,
//! derive the larger by subtraction), and Newton leaf values. Must not
//! touch: gradients (given), the boosting loop, serialisation.

use super::binning::{BinnedData, FeatureBins};
use super::histogram::{best_split_of_feature, Histogram, Split, SplitRules, Sums};
use super::model::{Node, Tree};
use rayon::prelude::*;

/// Everything fixed while growing one tree.
pub(crate) struct GrowInput<'a> {
    pub binned: &'a BinnedData,
    pub bins: &'a [FeatureBins],
    pub grad: &'a [f32],
    pub hess: &'a [f32],
    /// Features this tree may split on.
    pub used: &'a [bool],
    pub rules: SplitRules,
    pub max_leaves: usize,
    /// 0 = unlimited.
    pub max_depth: usize,
    pub learning_rate: f64,
}

/// Reusable buffers across trees, so boosting does not reallocate
/// histograms every round.
#[derive(Default)]
pub(crate) struct GrowScratch {
    free_histograms: Vec<Histogram>,
    ordered_gh: Vec<(f32, f32)>,
    right_rows: Vec<u32>,
}

impl GrowScratch {
    fn histogram(&mut self, n_features: usize) -> Histogram {
        self.free_histograms
            .pop()
            .unwrap_or_else(|| Histogram::new(n_features))
    }

    fn release(&mut self, hist: Option<Histogram>) {
        if let Some(h) = hist {
            self.free_histograms.push(h);
        }
    }
}

struct Leaf {
    /// Rows of this leaf are `rows[start..end]`.
    start: usize,
    end: usize,
    sums: Sums,
    depth: usize,
    /// Kept only while this leaf may still be split.
    hist: Option<Histogram>,
    best: Option<Split>,
    /// The node whose child this leaf is, and whether it is the left one.
    parent: Option<(usize, bool)>,
}

/// Grows one tree on `rows` (the sampled training rows, any order) and
/// returns it with shrunken leaf values. A tree with a single leaf means no
/// split satisfied the rules.
pub(crate) fn grow_tree(input: &GrowInput, mut rows: Vec<u32>, scratch: &mut GrowScratch) -> Tree {
    let n_features = input.bins.len();
    let mut root_sums = Sums::default();
    for &r in &rows {
        root_sums.grad += input.grad[r as usize] as f64;
        root_sums.hess += input.hess[r as usize] as f64;
    }
    root_sums.count = rows.len() as u32;

    let mut root = Leaf {
        start: 0,
        end: rows.len(),
        sums: root_sums,
        depth: 0,
        hist: None,
        best: None,
        parent: None,
    };
    if can_split(input, &root) {
        let mut hist = scratch.histogram(n_features);
        build(input, &rows, &mut hist, scratch);
        root.best = find_best_split(input, &hist, &root.sums);
        root.hist = Some(hist);
    }
    let mut leaves = vec![root];
    let mut nodes: Vec<Node> = Vec::new();

    while leaves.len() < input.max_leaves {
        // Highest gain first; ties go to the older leaf for determinism.
        let Some(chosen) = leaves
            .iter()
            .enumerate()
            .filter_map(|(i, l)| l.best.map(|b| (i, b.gain)))
            .fold(None, |acc: Option<(usize, f64)>, (i, g)| match acc {
                Some((_, best)) if best >= g => acc,
                _ => Some((i, g)),
            })
            .map(|(i, _)| i)
        else {
            break;
        };
        let split = leaves[chosen]
            .best
            .take()
            .expect("chosen leaf was selected for having a split");
        let parent_hist = leaves[chosen].hist.take();
        let (start, end, depth, parent) = {
            let l = &leaves[chosen];
            (l.start, l.end, l.depth, l.parent)
        };
        let mid = partition(
            input,
            &split,
            &mut rows[start..end],
            &mut scratch.right_rows,
        ) + start;

        let node_index = nodes.len();
        let right_leaf = leaves.len();
        nodes.push(Node {
            feature: split.feature as u32,
            threshold: input.bins[split.feature].threshold(split.last_left_bin),
            default_left: split.nan_left,
            left: Tree::leaf_ref(chosen),
            right: Tree::leaf_ref(right_leaf),
            gain: split.gain as f32,
        });
        if let Some((p, is_left)) = parent {
            if is_left {
                nodes[p].left = node_index as i32;
            } else {
                nodes[p].right = node_index as i32;
            }
        }

        let mut left = Leaf {
            start,
            end: mid,
            sums: split.left,
            depth: depth + 1,
            hist: None,
            best: None,
            parent: Some((node_index, true)),
        };
        let mut right = Leaf {
            start: mid,
            end,
            sums: split.right,
            depth: depth + 1,
            hist: None,
            best: None,
            parent: Some((node_index, false)),
        };
        let left_is_smaller = mid - start <= end - mid;
        let (small, large) = if left_is_smaller {
            (&mut left, &mut right)
        } else {
            (&mut right, &mut left)
        };
        // After this split there are leaves.len() + 1 leaves; children
        // are only worth a histogram if another split can still happen.
        let room = leaves.len() + 1 < input.max_leaves;
        let small_may = room && can_split(input, small);
        let large_may = room && can_split(input, large);
        if small_may || large_may {
            let mut small_hist = scratch.histogram(n_features);
            build(
                input,
                &rows[small.start..small.end],
                &mut small_hist,
                scratch,
            );
            if large_may {
                let mut large_hist = parent_hist.expect("a split leaf kept its histogram");
                large_hist.subtract(&small_hist, input.used);
                large.best = find_best_split(input, &large_hist, &large.sums);
                large.hist = Some(large_hist);
            } else {
                scratch.release(parent_hist);
            }
            if small_may {
                small.best = find_best_split(input, &small_hist, &small.sums);
                small.hist = Some(small_hist);
            } else {
                scratch.release(Some(small_hist));
            }
        } else {
            scratch.release(parent_hist);
        }
        // A leaf without a usable split will never need its histogram.
        for leaf in [&mut left, &mut right] {
            if leaf.best.is_none() {
                scratch.release(leaf.hist.take());
            }
        }
        leaves[chosen] = left;
        leaves.push(right);
    }

    let leaf_values = leaves
        .iter()
        .map(|l| leaf_value(&l.sums, input.rules.lambda_l2, input.learning_rate))
        .collect();
    for leaf in &mut leaves {
        scratch.release(leaf.hist.take());
    }
    Tree { nodes, leaf_values }
}

fn can_split(input: &GrowInput, leaf: &Leaf) -> bool {
    (input.max_depth == 0 || leaf.depth < input.max_depth) && input.rules.may_split(&leaf.sums)
}

/// Newton step -G / (H + lambda), shrunk by the learning rate.
pub(crate) fn leaf_value(sums: &Sums, lambda_l2: f64, learning_rate: f64) -> f32 {
    let denom = sums.hess + lambda_l2;
    if denom > 0.0 {
        (-sums.grad / denom * learning_rate) as f32
    } else {
        0.0
    }
}

fn build(input: &GrowInput, rows: &[u32], hist: &mut Histogram, scratch: &mut GrowScratch) {
    scratch.ordered_gh.clear();
    scratch.ordered_gh.extend(
        rows.iter()
            .map(|&r| (input.grad[r as usize], input.hess[r as usize])),
    );
    hist.build(input.binned, rows, &scratch.ordered_gh, input.used);
}

/// Best split over the usable features; features are searched in parallel
/// and the winner is picked in feature order (first of equal gains).
fn find_best_split(input: &GrowInput, hist: &Histogram, sums: &Sums) -> Option<Split> {
    let per_feature: Vec<Option<Split>> = (0..input.bins.len())
        .into_par_iter()
        .map(|f| {
            if !input.used[f] {
                return None;
            }
            best_split_of_feature(
                f,
                hist.feature(f),
                input.bins[f].n_value_bins(),
                sums,
                &input.rules,
            )
        })
        .collect();
    per_feature
        .into_iter()
        .flatten()
        .fold(None, |best: Option<Split>, s| match best {
            Some(b) if b.gain >= s.gain => Some(b),
            _ => Some(s),
        })
}

/// Stable in-place partition of a leaf's rows by the split; returns how
/// many went left. Stability keeps rows ascending, which keeps histogram
/// building cache-friendly and the result independent of scheduling.
fn partition(
    input: &GrowInput,
    split: &Split,
    rows: &mut [u32],
    right_rows: &mut Vec<u32>,
) -> usize {
    let column = input.binned.column(split.feature);
    let nan_bin = input.bins[split.feature].nan_bin();
    right_rows.clear();
    let mut left = 0;
    for i in 0..rows.len() {
        let r = rows[i];
        let bin = column[r as usize] as usize;
        let go_left = if bin == nan_bin {
            split.nan_left
        } else {
            bin <= split.last_left_bin
        };
        if go_left {
            rows[left] = r;
            left += 1;
        } else {
            right_rows.push(r);
        }
    }
    rows[left..].copy_from_slice(right_rows);
    left
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ranking::gbdt::binning::{bin_all, fit_all};

    fn rules(min_data: u32) -> SplitRules {
        SplitRules {
            min_data_in_leaf: min_data,
            min_sum_hessian: 0.0,
            lambda_l2: 0.0,
            min_split_gain: 0.0,
        }
    }

    /// Squared-error gradients (score 0) for a target, so leaf values
    /// become leaf means of the target.
    fn fit_target(
        features: &[f32],
        d: usize,
        target: &[f32],
        max_leaves: usize,
        max_depth: usize,
    ) -> Tree {
        let bins = fit_all(features, d, 255, 1);
        let binned = bin_all(features, d, &bins);
        let grad: Vec<f32> = target.iter().map(|t| -t).collect();
        let hess = vec![1.0; target.len()];
        let used = vec![true; d];
        let input = GrowInput {
            binned: &binned,
            bins: &bins,
            grad: &grad,
            hess: &hess,
            used: &used,
            rules: rules(1),
            max_leaves,
            max_depth,
            learning_rate: 1.0,
        };
        let rows = (0..target.len() as u32).collect();
        grow_tree(&input, rows, &mut GrowScratch::default())
    }

    #[test]
    fn recovers_a_step_function_exactly() {
        // y = 5 when x0 > 0.5 else -1; x1 is noise.
        let n = 200;
        let mut features = Vec::new();
        let mut target = Vec::new();
        for i in 0..n {
            let x0 = i as f32 / n as f32;
            features.extend([x0, ((i * 7919) % 13) as f32]);
            target.push(if x0 > 0.5 { 5.0 } else { -1.0 });
        }
        let tree = fit_target(&features, 2, &target, 2, 0);
        assert_eq!(tree.nodes.len(), 1);
        assert_eq!(tree.nodes[0].feature, 0);
        for i in 0..n {
            let got = tree.predict(&features[2 * i..2 * i + 2]);
            assert!((got - target[i]).abs() < 1e-6, "row {i}: {got}");
        }
    }

    #[test]
    fn learns_an_interaction_and_respects_leaf_and_depth_limits() {
        // y = 1 iff x0 > 0.5 and x1 > 0.5: needs depth 2, 3 leaves.
        let mut features = Vec::new();
        let mut target = Vec::new();
        for i in 0..20 {
            for j in 0..20 {
                let (x0, x1) = (i as f32 / 20.0, j as f32 / 20.0);
                features.extend([x0, x1]);
                target.push(if x0 > 0.5 && x1 > 0.5 { 1.0 } else { 0.0 });
            }
        }
        let tree = fit_target(&features, 2, &target, 8, 0);
        for (i, &t) in target.iter().enumerate() {
            assert!((tree.predict(&features[2 * i..2 * i + 2]) - t).abs() < 1e-6);
        }
        assert!(tree.leaf_values.len() <= 8);
        let stump = fit_target(&features, 2, &target, 8, 1);
        assert_eq!(stump.leaf_values.len(), 2, "depth 1 allows one split");
        let limited = fit_target(&features, 2, &target, 2, 0);
        assert_eq!(limited.leaf_values.len(), 2);
    }

    #[test]
    fn missing_values_follow_the_learned_direction() {
        // NaN rows behave like the high group.
        let mut features = Vec::new();
        let mut target = Vec::new();
        for i in 0..300 {
            let x = match i % 3 {
                0 => f32::NAN,
                1 => 0.2,
                _ => 0.8,
            };
            features.push(x);
            target.push(if x.is_nan() || x > 0.5 { 2.0 } else { 0.0 });
        }
        let tree = fit_target(&features, 1, &target, 4, 0);
        assert!((tree.predict(&[f32::NAN]) - 2.0).abs() < 1e-6);
        assert!((tree.predict(&[0.2]) - 0.0).abs() < 1e-6);
        assert!((tree.predict(&[0.9]) - 2.0).abs() < 1e-6);
    }

    #[test]
    fn no_split_when_rules_forbid_it() {
        let features = [0.0f32, 1.0, 2.0, 3.0];
        let target = [0.0f32, 0.0, 1.0, 1.0];
        let bins = fit_all(&features, 1, 255, 1);
        let binned = bin_all(&features, 1, &bins);
        let grad: Vec<f32> = target.iter().map(|t| -t).collect();
        let hess = vec![1.0; 4];
        let input = GrowInput {
            binned: &binned,
            bins: &bins,
            grad: &grad,
            hess: &hess,
            used: &[true],
            rules: rules(3),
            max_leaves: 31,
            max_depth: 0,
            learning_rate: 0.5,
        };
        let tree = grow_tree(&input, vec![0, 1, 2, 3], &mut GrowScratch::default());
        assert!(tree.nodes.is_empty());
        assert_eq!(tree.leaf_values, vec![0.25]);
    }

    #[test]
    fn grown_trees_pass_model_validation() {
        let mut rng = crate::rng::Rng::new(4);
        let d = 5;
        let features: Vec<f32> = (0..2000 * d)
            .map(|_| if rng.f64() < 0.1 { f32::NAN } else { rng.f32() })
            .collect();
        let target: Vec<f32> = (0..2000)
            .map(|i| {
                let x = features[i * d];
                (if x.is_nan() { 1.0 } else { 3.0 * x }) + rng.normal() as f32
            })
            .collect();
        let tree = fit_target(&features, d, &target, 31, 0);
        assert_eq!(tree.leaf_values.len(), 31);
        let model = super::super::GbdtModel::new(
            super::super::Objective::Logistic,
            (0..d).map(|i| format!("f{i}")).collect(),
            0.0,
            None,
            vec![tree],
        );
        assert!(model.is_ok(), "{model:?}");
    }
}
