//! Objectives: per-row gradients/hessians of the loss at the current
//! scores, and the metrics early stopping watches.
//!
//! Owns: LambdaMART lambdas (NDCG@k-weighted pairs), logistic gradients,
//! NDCG@k and log-loss, and what they precompute from the labels. Must not
//! touch: trees, binning.
//!
//! Work is split by query group (LambdaRank) or row (logistic); each task
//! writes only its own rows and metric sums are reduced in group order, so
//! results are identical for any thread count.

use super::Objective;
use rayon::prelude::*;

/// Row offsets of query groups: group g is rows `offsets[g]..offsets[g+1]`.
/// An empty `groups` means one group holding every row.
pub(crate) fn group_offsets(groups: &[u32], rows: usize) -> Vec<usize> {
    if groups.is_empty() {
        return vec![0, rows];
    }
    let mut offsets = Vec::with_capacity(groups.len() + 1);
    let mut at = 0usize;
    offsets.push(0);
    for &size in groups {
        at += size as usize;
        offsets.push(at);
    }
    offsets
}

/// A set's labels with what every round needs from them, computed once:
/// per-row gains, per-group inverse ideal DCG@k, the discount table.
pub(crate) struct Targets<'a> {
    objective: Objective,
    labels: &'a [f32],
    offsets: Vec<usize>,
    /// LambdaRank: 2^label - 1 per row.
    gains: Vec<f64>,
    /// LambdaRank: 1 / ideal DCG@k per group; 0 for a group without a
    /// positive label (nothing to rank).
    inv_ideal: Vec<f64>,
    /// LambdaRank: 1 / log2(rank + 2) for the ranks inside the top k.
    discounts: Vec<f64>,
}

impl<'a> Targets<'a> {
    /// `labels` must already be checked (finite, in the objective's range)
    /// and `groups` must sum to the row count.
    pub(crate) fn new(objective: Objective, labels: &'a [f32], groups: &[u32]) -> Self {
        let offsets = group_offsets(groups, labels.len());
        let mut targets = Targets {
            objective,
            labels,
            offsets,
            gains: Vec::new(),
            inv_ideal: Vec::new(),
            discounts: Vec::new(),
        };
        if let Objective::LambdaRank { ndcg_at } = objective {
            let largest = targets
                .offsets
                .windows(2)
                .map(|b| b[1] - b[0])
                .max()
                .unwrap_or(0);
            targets.discounts = (0..ndcg_at.min(largest))
                .map(|rank| 1.0 / ((rank + 2) as f64).log2())
                .collect();
            targets.gains = labels.iter().map(|&l| (l as f64).exp2() - 1.0).collect();
            targets.inv_ideal = targets
                .offsets
                .windows(2)
                .map(|b| {
                    let ideal = ideal_dcg(&targets.gains[b[0]..b[1]], &targets.discounts);
                    if ideal > 0.0 {
                        1.0 / ideal
                    } else {
                        0.0
                    }
                })
                .collect();
        }
        targets
    }

    /// Fills `grad`/`hess` (one per row) for the current `scores`.
    pub(crate) fn gradients(&self, scores: &[f32], grad: &mut [f32], hess: &mut [f32]) {
        match self.objective {
            Objective::LambdaRank { .. } => {
                let grad_parts = split_by_groups(grad, &self.offsets);
                let hess_parts = split_by_groups(hess, &self.offsets);
                grad_parts
                    .into_par_iter()
                    .zip(hess_parts)
                    .zip(self.offsets.par_windows(2))
                    .zip(self.inv_ideal.par_iter())
                    .for_each(|(((g, h), b), &inv_ideal)| {
                        lambda_gradients(
                            &scores[b[0]..b[1]],
                            &self.gains[b[0]..b[1]],
                            inv_ideal,
                            &self.discounts,
                            g,
                            h,
                        );
                    });
            }
            Objective::Logistic => {
                grad.par_iter_mut()
                    .zip(hess.par_iter_mut())
                    .zip(scores.par_iter().zip(self.labels.par_iter()))
                    .for_each(|((g, h), (&s, &y))| {
                        let p = sigmoid(s as f64);
                        *g = (p - y as f64) as f32;
                        // A floor keeps leaves of saturated rows finite.
                        *h = (p * (1.0 - p)).max(1e-16) as f32;
                    });
            }
        }
    }

    /// The objective's metric: mean NDCG@k over groups with a positive (0
    /// if none has one), or mean log-loss over rows.
    pub(crate) fn metric(&self, scores: &[f32]) -> f64 {
        match self.objective {
            Objective::LambdaRank { .. } => {
                let per_group: Vec<Option<f64>> = self
                    .offsets
                    .par_windows(2)
                    .zip(self.inv_ideal.par_iter())
                    .map(|(b, &inv_ideal)| {
                        ndcg(
                            &scores[b[0]..b[1]],
                            &self.gains[b[0]..b[1]],
                            inv_ideal,
                            &self.discounts,
                        )
                    })
                    .collect();
                let (sum, count) = per_group
                    .iter()
                    .flatten()
                    .fold((0.0, 0usize), |(s, c), v| (s + v, c + 1));
                if count == 0 {
                    0.0
                } else {
                    sum / count as f64
                }
            }
            Objective::Logistic => {
                let losses: Vec<f64> = scores
                    .par_iter()
                    .zip(self.labels.par_iter())
                    .map(|(&s, &y)| {
                        let p = sigmoid(s as f64).clamp(1e-15, 1.0 - 1e-15);
                        let y = y as f64;
                        -(y * p.ln() + (1.0 - y) * (1.0 - p).ln())
                    })
                    .collect();
                losses.iter().sum::<f64>() / losses.len().max(1) as f64
            }
        }
    }
}

fn split_by_groups<'a>(mut rest: &'a mut [f32], offsets: &[usize]) -> Vec<&'a mut [f32]> {
    let mut parts = Vec::with_capacity(offsets.len().saturating_sub(1));
    for bounds in offsets.windows(2) {
        let (part, tail) = rest.split_at_mut(bounds[1] - bounds[0]);
        parts.push(part);
        rest = tail;
    }
    parts
}

pub(crate) fn sigmoid(x: f64) -> f64 {
    1.0 / (1.0 + (-x).exp())
}

/// DCG@k of the best possible ordering (k = discounts.len()).
fn ideal_dcg(gains: &[f64], discounts: &[f64]) -> f64 {
    let mut sorted = gains.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    sorted.iter().zip(discounts).map(|(g, d)| g * d).sum()
}

/// A group's row indices by descending score, ties by ascending index (so
/// the order is deterministic). Sorted as packed u64 keys: the high half
/// orders scores descending, the low half is the index.
fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut keys: Vec<u64> = scores
        .iter()
        .enumerate()
        .map(|(i, &s)| {
            let bits = s.to_bits();
            // IEEE total order as unsigned ascending, then reversed.
            let ascending = if bits >> 31 == 1 {
                !bits
            } else {
                bits | 1 << 31
            };
            ((!ascending as u64) << 32) | i as u64
        })
        .collect();
    keys.sort_unstable();
    keys.iter().map(|&k| (k & 0xFFFF_FFFF) as usize).collect()
}

/// LambdaMART gradients of one query group. Every pair (i, j) with
/// label_i > label_j where at least one sits in the current top k
/// contributes lambda = rho * |delta NDCG@k| with rho = 1 / (1 + e^(s_i -
/// s_j)): i is pushed up, j down. |delta NDCG@k| is what swapping the two
/// positions would change, using a discount of 0 beyond rank k and the
/// group's ideal DCG@k as normaliser. A group with no positive
/// (`inv_ideal` 0) or with all labels equal has no such pairs and gets
/// zero gradients.
fn lambda_gradients(
    scores: &[f32],
    gains: &[f64],
    inv_ideal: f64,
    discounts: &[f64],
    grad: &mut [f32],
    hess: &mut [f32],
) {
    grad.fill(0.0);
    hess.fill(0.0);
    if inv_ideal == 0.0 {
        return;
    }
    let order = order_by_score(scores);
    let n = order.len();
    let top = discounts.len().min(n);
    let discount = |rank: usize| if rank < top { discounts[rank] } else { 0.0 };
    let mut g = vec![0.0f64; n];
    let mut h = vec![0.0f64; n];
    for (r1, &a) in order.iter().enumerate().take(top) {
        let d1 = discounts[r1];
        for (r2, &b) in order.iter().enumerate().skip(r1 + 1) {
            if gains[a] == gains[b] {
                continue;
            }
            let (hi, lo) = if gains[a] > gains[b] { (a, b) } else { (b, a) };
            let delta = (gains[hi] - gains[lo]) * (d1 - discount(r2)) * inv_ideal;
            let rho = sigmoid(-(scores[hi] as f64 - scores[lo] as f64));
            let lambda = rho * delta;
            g[hi] -= lambda;
            g[lo] += lambda;
            let curvature = rho * (1.0 - rho) * delta;
            h[hi] += curvature;
            h[lo] += curvature;
        }
    }
    for i in 0..n {
        grad[i] = g[i] as f32;
        hess[i] = h[i] as f32;
    }
}

/// NDCG@k of one group under `scores`, or None when the group has no
/// positive label.
fn ndcg(scores: &[f32], gains: &[f64], inv_ideal: f64, discounts: &[f64]) -> Option<f64> {
    if inv_ideal == 0.0 {
        return None;
    }
    let dcg: f64 = order_by_score(scores)
        .iter()
        .zip(discounts)
        .map(|(&i, d)| gains[i] * d)
        .sum();
    Some(dcg * inv_ideal)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rank(k: usize) -> Objective {
        Objective::LambdaRank { ndcg_at: k }
    }

    /// Gradients of a single group.
    fn lambdas(scores: &[f32], labels: &[f32], k: usize) -> (Vec<f32>, Vec<f32>) {
        let t = Targets::new(rank(k), labels, &[labels.len() as u32]);
        let mut g = vec![9.0; labels.len()];
        let mut h = vec![9.0; labels.len()];
        t.gradients(scores, &mut g, &mut h);
        (g, h)
    }

    fn ndcg_of(scores: &[f32], labels: &[f32], k: usize) -> f64 {
        Targets::new(rank(k), labels, &[labels.len() as u32]).metric(scores)
    }

    #[test]
    fn ndcg_is_one_for_the_ideal_order_and_less_otherwise() {
        let labels = [0.0, 1.0, 0.0, 2.0];
        assert_eq!(ndcg_of(&[0.0, 1.0, -1.0, 2.0], &labels, 10), 1.0);
        // Hand computed: order by score -> labels [0, 1, 0, 2].
        let dcg = 1.0 / 3f64.log2() + 3.0 / 5f64.log2();
        let ideal = 3.0 + 1.0 / 3f64.log2();
        let got = ndcg_of(&[4.0, 3.0, 2.0, 1.0], &labels, 10);
        assert!((got - dcg / ideal).abs() < 1e-12);
        // @1: top item has label 0.
        assert_eq!(ndcg_of(&[4.0, 3.0, 2.0, 1.0], &labels, 1), 0.0);
        // Ties keep the lower index first: [0 (label 1), 1 (label 0)].
        assert_eq!(ndcg_of(&[0.5, 0.5], &[1.0, 0.0], 1), 1.0);
        assert_eq!(ndcg_of(&[0.5, 0.5], &[0.0, 1.0], 1), 0.0);
    }

    #[test]
    fn score_order_is_descending_with_negative_and_zero_scores() {
        let order = order_by_score(&[-1.0, 2.5, 0.0, -0.0, 2.5, -7.0, 1e-30]);
        assert_eq!(order, vec![1, 4, 6, 2, 3, 0, 5]);
    }

    #[test]
    fn lambdas_push_positives_up_and_sum_to_zero() {
        let (g, h) = lambdas(&[0.5, 0.2, 0.9, -0.3, 0.0], &[0.0, 1.0, 0.0, 2.0, 0.0], 3);
        assert!(g[1] < 0.0 && g[3] < 0.0, "{g:?}");
        assert!(g[0] > 0.0 && g[2] > 0.0, "{g:?}");
        assert!(g.iter().map(|&x| x as f64).sum::<f64>().abs() < 1e-6);
        assert!(h.iter().all(|&x| x >= 0.0));
    }

    #[test]
    fn lambda_matches_hand_computed_pair() {
        // Two rows: the positive ranked second. Swapping changes NDCG@2 by
        // (1/log2(2) - 1/log2(3)) * gain(1) / ideal(1).
        let (g, h) = lambdas(&[1.0, 0.0], &[0.0, 1.0], 2);
        let delta = 1.0 - 1.0 / 3f64.log2();
        let rho = 1.0 / (1.0 + (-1.0f64).exp());
        assert!((g[1] as f64 + rho * delta).abs() < 1e-6);
        assert!((g[0] as f64 - rho * delta).abs() < 1e-6);
        assert!((h[0] as f64 - rho * (1.0 - rho) * delta).abs() < 1e-6);
    }

    #[test]
    fn pairs_entirely_below_k_do_not_contribute() {
        // k = 1: only pairs involving rank 0 count. Ranks 1 and 2 hold a
        // mis-ordered pair (label 0 above label 1) that must be ignored,
        // but the positive at rank 2 still gains against rank 0's negative.
        let (g, _) = lambdas(&[3.0, 2.0, 1.0], &[0.0, 0.0, 1.0], 1);
        assert_eq!(g[1], 0.0);
        assert!(g[0] > 0.0 && g[2] < 0.0);
    }

    #[test]
    fn groups_without_a_positive_or_a_negative_are_silent() {
        assert_eq!(
            lambdas(&[0.1, 0.2, 0.3], &[0.0; 3], 10),
            (vec![0.0; 3], vec![0.0; 3])
        );
        assert_eq!(
            lambdas(&[0.1, 0.2, 0.3], &[1.0; 3], 10),
            (vec![0.0; 3], vec![0.0; 3])
        );
    }

    #[test]
    fn groups_are_independent() {
        // The same group twice, side by side, gets the same gradients as
        // alone.
        let scores = [0.3, 0.1, 0.2, 0.3, 0.1, 0.2];
        let labels = [0.0, 1.0, 0.0, 0.0, 1.0, 0.0];
        let t = Targets::new(rank(2), &labels, &[3, 3]);
        let mut g = vec![0.0; 6];
        let mut h = vec![0.0; 6];
        t.gradients(&scores, &mut g, &mut h);
        let (alone, _) = lambdas(&scores[..3], &labels[..3], 2);
        assert_eq!(&g[..3], &alone[..]);
        assert_eq!(&g[3..], &alone[..]);
    }

    #[test]
    fn logistic_gradients_and_logloss() {
        let scores = [0.0f32, 2.0];
        let labels = [1.0, 0.0];
        let t = Targets::new(Objective::Logistic, &labels, &[]);
        let mut g = [0.0; 2];
        let mut h = [0.0; 2];
        t.gradients(&scores, &mut g, &mut h);
        assert!((g[0] + 0.5).abs() < 1e-7 && (h[0] - 0.25).abs() < 1e-7);
        let p = sigmoid(2.0);
        assert!((g[1] as f64 - p).abs() < 1e-6);
        let expected = (-(0.5f64.ln()) - (1.0 - p).ln()) / 2.0;
        assert!((t.metric(&scores) - expected).abs() < 1e-9);
    }

    #[test]
    fn mean_ndcg_skips_groups_without_positives() {
        let scores = [1.0, 0.0, 1.0, 0.0];
        let labels = [1.0, 0.0, 0.0, 0.0];
        assert_eq!(
            Targets::new(rank(10), &labels, &[2, 2]).metric(&scores),
            1.0
        );
        assert_eq!(
            Targets::new(rank(10), &[0.0; 4], &[2, 2]).metric(&scores),
            0.0
        );
        assert_eq!(group_offsets(&[2, 2], 4), vec![0, 2, 4]);
        assert_eq!(group_offsets(&[], 3), vec![0, 3]);
    }
}
