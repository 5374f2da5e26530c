//! Gradient histograms and split search.
//!
//! Owns: per-bin gradient/hessian/count sums for the rows of one leaf,
//! histogram subtraction (sibling = parent - child), and the best split of
//! one feature's histogram including the learned direction for NaN. Must
//! not touch: row partitioning or tree layout (that is `tree`).
//!
//! Sums are f64 and every feature's histogram is filled by one task in row
//! order, so results do not depend on how many threads run.

use super::binning::BinnedData;
use rayon::prelude::*;

/// Slots per feature: up to 255 value bins + the NaN bin.
pub(crate) const HIST_STRIDE: usize = 256;

/// Gradient statistics of a set of rows.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub(crate) struct Sums {
    pub grad: f64,
    pub hess: f64,
    pub count: u32,
}

impl Sums {
    fn add(&mut self, other: &Sums) {
        self.grad += other.grad;
        self.hess += other.hess;
        self.count += other.count;
    }

    fn minus(&self, other: &Sums) -> Sums {
        Sums {
            grad: self.grad - other.grad,
            hess: self.hess - other.hess,
            count: self.count - other.count,
        }
    }
}

/// One leaf's histograms for all features, `HIST_STRIDE` slots each.
/// Features not sampled for the current tree are left stale and never read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Histogram {
    slots: Vec<Sums>,
}

impl Histogram {
    pub(crate) fn new(n_features: usize) -> Self {
        Histogram {
            slots: vec![Sums::default(); n_features * HIST_STRIDE],
        }
    }

    pub(crate) fn feature(&self, feature: usize) -> &[Sums] {
        &self.slots[feature * HIST_STRIDE..(feature + 1) * HIST_STRIDE]
    }

    /// Fills the histograms of the `used` features from the leaf's rows.
    /// `ordered_gh[i]` is the (gradient, hessian) of `rows[i]`, gathered
    /// once so each feature pass reads it sequentially.
    pub(crate) fn build(
        &mut self,
        binned: &BinnedData,
        rows: &[u32],
        ordered_gh: &[(f32, f32)],
        used: &[bool],
    ) {
        debug_assert_eq!(rows.len(), ordered_gh.len());
        self.slots
            .par_chunks_mut(HIST_STRIDE)
            .enumerate()
            .filter(|(f, _)| used[*f])
            .for_each(|(f, hist)| {
                // As an array a u8 bin index needs no bounds check.
                let hist: &mut [Sums; HIST_STRIDE] = hist
                    .try_into()
                    .expect("par_chunks_mut yields HIST_STRIDE slots per feature");
                hist.fill(Sums::default());
                let column = binned.column(f);
                for (&row, &(g, h)) in rows.iter().zip(ordered_gh) {
                    let slot = &mut hist[column[row as usize] as usize];
                    slot.grad += g as f64;
                    slot.hess += h as f64;
                    slot.count += 1;
                }
            });
    }

    /// Turns this parent histogram into the sibling of `child`, which must
    /// hold a subset of the parent's rows.
    pub(crate) fn subtract(&mut self, child: &Histogram, used: &[bool]) {
        self.slots
            .par_chunks_mut(HIST_STRIDE)
            .zip(child.slots.par_chunks(HIST_STRIDE))
            .enumerate()
            .filter(|(f, _)| used[*f])
            .for_each(|(_, (parent, child))| {
                for (p, c) in parent.iter_mut().zip(child) {
                    *p = p.minus(c);
                }
            });
    }
}

/// Constraints and regularisation that decide whether a split is allowed
/// and how much it gains.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SplitRules {
    pub min_data_in_leaf: u32,
    pub min_sum_hessian: f64,
    pub lambda_l2: f64,
    pub min_split_gain: f64,
}

impl SplitRules {
    /// Newton-step loss reduction score of a leaf, G^2 / (H + lambda).
    fn leaf_score(&self, s: &Sums) -> f64 {
        let denom = s.hess + self.lambda_l2;
        if denom > 0.0 {
            s.grad * s.grad / denom
        } else {
            0.0
        }
    }

    /// Whether a leaf with these sums may become a child of a split.
    fn child_ok(&self, s: &Sums) -> bool {
        s.count >= self.min_data_in_leaf.max(1) && s.hess >= self.min_sum_hessian
    }

    /// Whether a leaf is big enough that some split could satisfy both
    /// children.
    pub(crate) fn may_split(&self, s: &Sums) -> bool {
        s.count >= 2 * self.min_data_in_leaf.max(1) && s.hess >= 2.0 * self.min_sum_hessian
    }
}

/// A chosen split: value bins `0..=last_left_bin` go left, NaN goes left
/// iff `nan_left`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Split {
    pub feature: usize,
    pub last_left_bin: usize,
    pub nan_left: bool,
    pub gain: f64,
    pub left: Sums,
    pub right: Sums,
}

/// Best split of one feature's histogram, or None when no split satisfies
/// the rules with positive gain above `min_split_gain`. Ties keep the first
/// candidate in scan order (NaN right before NaN left, bins ascending) so
/// the result is deterministic.
pub(crate) fn best_split_of_feature(
    feature: usize,
    hist: &[Sums],
    n_value_bins: usize,
    total: &Sums,
    rules: &SplitRules,
) -> Option<Split> {
    let nan = hist[n_value_bins];
    let parent_score = rules.leaf_score(total);
    let mut best: Option<Split> = None;
    let nan_sides: &[bool] = if nan.count > 0 {
        &[false, true]
    } else {
        &[false]
    };
    for &nan_left in nan_sides {
        let mut left = if nan_left { nan } else { Sums::default() };
        for (bin, slot) in hist[..n_value_bins].iter().enumerate() {
            left.add(slot);
            if left.count == 0 {
                continue;
            }
            let right = total.minus(&left);
            if right.count == 0 {
                break;
            }
            if !rules.child_ok(&left) || !rules.child_ok(&right) {
                continue;
            }
            let gain = rules.leaf_score(&left) + rules.leaf_score(&right) - parent_score;
            if gain > rules.min_split_gain && best.is_none_or(|b| gain > b.gain) {
                best = Some(Split {
                    feature,
                    last_left_bin: bin,
                    // With no NaN rows here the direction is untrained:
                    // send future NaNs where most of this leaf's rows went.
                    nan_left: if nan.count > 0 {
                        nan_left
                    } else {
                        left.count >= right.count
                    },
                    gain,
                    left,
                    right,
                });
            }
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn rules() -> SplitRules {
        SplitRules {
            min_data_in_leaf: 1,
            min_sum_hessian: 0.0,
            lambda_l2: 0.0,
            min_split_gain: 0.0,
        }
    }

    /// Random bins and gradients that are multiples of 1/8, so every f64
    /// sum is exact and subtraction must match a direct build bit for bit.
    fn random_problem(rows: usize, features: usize, seed: u64) -> (BinnedData, Vec<(f32, f32)>) {
        let mut rng = Rng::new(seed);
        let bins: Vec<u8> = (0..rows * features).map(|_| rng.below(20) as u8).collect();
        let gh = (0..rows)
            .map(|_| {
                (
                    (rng.below(33) as f32 - 16.0) / 8.0,
                    rng.below(9) as f32 / 8.0,
                )
            })
            .collect();
        (BinnedData::from_columns(rows, bins), gh)
    }

    fn direct(binned: &BinnedData, rows: &[u32], gh: &[(f32, f32)], d: usize) -> Histogram {
        let ordered: Vec<(f32, f32)> = rows.iter().map(|&r| gh[r as usize]).collect();
        let mut h = Histogram::new(d);
        h.build(binned, rows, &ordered, &vec![true; d]);
        h
    }

    #[test]
    fn sibling_by_subtraction_equals_direct_build() {
        let (n, d) = (500, 4);
        let (binned, gh) = random_problem(n, d, 11);
        let all: Vec<u32> = (0..n as u32).collect();
        let mut rng = Rng::new(5);
        let (small, large): (Vec<u32>, Vec<u32>) = all.iter().partition(|_| rng.f64() < 0.3);
        let mut sibling = direct(&binned, &all, &gh, d);
        let small_hist = direct(&binned, &small, &gh, d);
        sibling.subtract(&small_hist, &vec![true; d]);
        let large_direct = direct(&binned, &large, &gh, d);
        assert_eq!(sibling, large_direct);
        // And with arbitrary (non-dyadic) gradients they agree closely,
        // counts exactly.
        let gh2: Vec<(f32, f32)> = (0..n).map(|_| (rng.normal() as f32, rng.f32())).collect();
        let mut sib2 = direct(&binned, &all, &gh2, d);
        sib2.subtract(&direct(&binned, &small, &gh2, d), &vec![true; d]);
        let large2 = direct(&binned, &large, &gh2, d);
        for (a, b) in sib2.slots.iter().zip(&large2.slots) {
            assert_eq!(a.count, b.count);
            assert!((a.grad - b.grad).abs() < 1e-9 && (a.hess - b.hess).abs() < 1e-9);
        }
    }

    #[test]
    fn unused_features_are_not_built() {
        let (binned, gh) = random_problem(50, 3, 2);
        let rows: Vec<u32> = (0..50).collect();
        let mut h = Histogram::new(3);
        h.build(&binned, &rows, &gh, &[true, false, true]);
        assert!(h.feature(1).iter().all(|s| s.count == 0));
        assert_eq!(h.feature(0).iter().map(|s| s.count).sum::<u32>(), 50);
    }

    fn sums(grad: f64, hess: f64, count: u32) -> Sums {
        Sums { grad, hess, count }
    }

    #[test]
    fn split_separates_opposite_gradients_at_the_right_bin() {
        // Bins 0,1 want to go up (negative gradient), bins 2,3 down.
        let mut hist = vec![Sums::default(); HIST_STRIDE];
        hist[0] = sums(-4.0, 2.0, 2);
        hist[1] = sums(-4.0, 2.0, 2);
        hist[2] = sums(4.0, 2.0, 2);
        hist[3] = sums(4.0, 2.0, 2);
        let total = sums(0.0, 8.0, 8);
        let s = best_split_of_feature(7, &hist, 4, &total, &rules()).expect("a split");
        assert_eq!((s.feature, s.last_left_bin), (7, 1));
        // 64/4 + 64/4 - 0
        assert!((s.gain - 32.0).abs() < 1e-12);
        assert_eq!(s.left, sums(-8.0, 4.0, 4));
    }

    #[test]
    fn nan_rows_pick_the_side_that_helps() {
        // Values in bin 0 want down, bin 1 wants up, NaN rows want up too:
        // NaN must go with bin 1 (right).
        let mut hist = vec![Sums::default(); HIST_STRIDE];
        hist[0] = sums(6.0, 3.0, 3);
        hist[1] = sums(-3.0, 3.0, 3);
        hist[2] = sums(-3.0, 3.0, 3); // NaN bin of a 2-value-bin feature
        let total = sums(0.0, 9.0, 9);
        let s = best_split_of_feature(0, &hist, 2, &total, &rules()).expect("a split");
        assert_eq!(s.last_left_bin, 0);
        assert!(!s.nan_left);
        assert_eq!(s.right, sums(-6.0, 6.0, 6));
        // Mirror: NaN wants what bin 0 wants -> NaN left.
        hist[2] = sums(3.0, 3.0, 3);
        let total = sums(6.0, 9.0, 9);
        let s = best_split_of_feature(0, &hist, 2, &total, &rules()).expect("a split");
        assert!(s.nan_left);
    }

    #[test]
    fn present_vs_missing_split_on_a_constant_feature() {
        let mut hist = vec![Sums::default(); HIST_STRIDE];
        hist[0] = sums(5.0, 5.0, 5);
        hist[1] = sums(-5.0, 5.0, 5);
        let total = sums(0.0, 10.0, 10);
        let s = best_split_of_feature(0, &hist, 1, &total, &rules()).expect("a split");
        assert_eq!((s.last_left_bin, s.nan_left), (0, false));
    }

    #[test]
    fn rules_block_small_children_and_useless_splits() {
        let mut hist = vec![Sums::default(); HIST_STRIDE];
        hist[0] = sums(-4.0, 1.0, 1);
        hist[1] = sums(4.0, 9.0, 9);
        let total = sums(0.0, 10.0, 10);
        let strict = SplitRules {
            min_data_in_leaf: 2,
            ..rules()
        };
        assert!(best_split_of_feature(0, &hist, 2, &total, &strict).is_none());
        assert!(best_split_of_feature(0, &hist, 2, &total, &rules()).is_some());
        // Same gradient everywhere: nothing to gain.
        hist[0] = sums(1.0, 1.0, 5);
        hist[1] = sums(1.0, 1.0, 5);
        let total = sums(2.0, 2.0, 10);
        assert!(best_split_of_feature(0, &hist, 2, &total, &rules()).is_none());
    }
}
