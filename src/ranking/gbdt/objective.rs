//! Objectives: per-row gradients/hessians of the loss at the current
//! scores, and the metrics early stopping watches.
//!
//! Owns: LambdaMART lambdas (NDCG@k-weighted pairs), logistic gradients,
//! NDCG@k and log-loss. Must not touch: trees, binning.
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

/// Fills `grad`/`hess` (one per row) for the current `scores`.
pub(crate) fn gradients(
    objective: Objective,
    scores: &[f32],
    labels: &[f32],
    offsets: &[usize],
    grad: &mut [f32],
    hess: &mut [f32],
) {
    match objective {
        Objective::LambdaRank { ndcg_at } => {
            let grad_parts = split_by_groups(grad, offsets);
            let hess_parts = split_by_groups(hess, offsets);
            grad_parts
                .into_par_iter()
                .zip(hess_parts)
                .zip(offsets.par_windows(2))
                .for_each(|((g, h), bounds)| {
                    let rows = bounds[0]..bounds[1];
                    lambda_gradients(&scores[rows.clone()], &labels[rows], ndcg_at, g, h);
                });
        }
        Objective::Logistic => {
            grad.par_iter_mut()
                .zip(hess.par_iter_mut())
                .zip(scores.par_iter().zip(labels.par_iter()))
                .for_each(|((g, h), (&s, &y))| {
                    let p = sigmoid(s as f64);
                    *g = (p - y as f64) as f32;
                    // A floor keeps leaves of saturated rows finite.
                    *h = (p * (1.0 - p)).max(1e-16) as f32;
                });
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

/// Relevance gain of a graded label (labels are validated to [0, 31]).
fn gain(label: f32) -> f64 {
    (label as f64).exp2() - 1.0
}

/// NDCG position discount of 0-based `rank`.
fn discount(rank: usize) -> f64 {
    1.0 / ((rank + 2) as f64).log2()
}

/// Row indices of a group ordered by descending score; ties keep the
/// lower index first so the order is deterministic.
fn order_by_score(scores: &[f32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_unstable_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    order
}

/// DCG@k of the best possible ordering of `labels`.
fn ideal_dcg(labels: &[f32], k: usize) -> f64 {
    let mut sorted: Vec<f32> = labels.to_vec();
    sorted.sort_unstable_by(|a, b| b.total_cmp(a));
    sorted
        .iter()
        .take(k)
        .enumerate()
        .map(|(rank, &l)| gain(l) * discount(rank))
        .sum()
}

/// LambdaMART gradients of one query group. Every pair (i, j) with
/// label_i > label_j where at least one sits in the current top k
/// contributes lambda = rho * |delta NDCG@k| with rho = 1 / (1 + e^(s_i -
/// s_j)): i is pushed up, j down. |delta NDCG@k| is what swapping the two
/// positions would change, using a discount of 0 beyond rank k and dividing
/// by the ideal DCG@k. A group with no positive (ideal DCG 0) or with all
/// labels equal has no such pairs and gets zero gradients.
pub(crate) fn lambda_gradients(
    scores: &[f32],
    labels: &[f32],
    k: usize,
    grad: &mut [f32],
    hess: &mut [f32],
) {
    grad.fill(0.0);
    hess.fill(0.0);
    let ideal = ideal_dcg(labels, k);
    if ideal <= 0.0 {
        return;
    }
    let order = order_by_score(scores);
    let n = order.len();
    let top = k.min(n);
    let rank_discount = |rank: usize| if rank < k { discount(rank) } else { 0.0 };
    let mut g = vec![0.0f64; n];
    let mut h = vec![0.0f64; n];
    for (r1, &a) in order.iter().enumerate().take(top) {
        let d1 = rank_discount(r1);
        for (r2, &b) in order.iter().enumerate().skip(r1 + 1) {
            if labels[a] == labels[b] {
                continue;
            }
            let (hi, lo) = if labels[a] > labels[b] {
                (a, b)
            } else {
                (b, a)
            };
            let delta =
                (gain(labels[hi]) - gain(labels[lo])) * (d1 - rank_discount(r2)).abs() / ideal;
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
/// positive label (nothing to rank).
pub(crate) fn ndcg(scores: &[f32], labels: &[f32], k: usize) -> Option<f64> {
    let ideal = ideal_dcg(labels, k);
    if ideal <= 0.0 {
        return None;
    }
    let dcg: f64 = order_by_score(scores)
        .iter()
        .take(k)
        .enumerate()
        .map(|(rank, &i)| gain(labels[i]) * discount(rank))
        .sum();
    Some(dcg / ideal)
}

/// The objective's metric over a whole set: mean NDCG@k over groups with a
/// positive (0 if none has one), or mean log-loss over rows.
pub(crate) fn metric(
    objective: Objective,
    scores: &[f32],
    labels: &[f32],
    offsets: &[usize],
) -> f64 {
    match objective {
        Objective::LambdaRank { ndcg_at } => {
            let per_group: Vec<Option<f64>> = offsets
                .par_windows(2)
                .map(|b| ndcg(&scores[b[0]..b[1]], &labels[b[0]..b[1]], ndcg_at))
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
                .zip(labels.par_iter())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ndcg_is_one_for_the_ideal_order_and_less_otherwise() {
        let labels = [0.0, 1.0, 0.0, 2.0];
        assert_eq!(ndcg(&[0.0, 1.0, -1.0, 2.0], &labels, 10), Some(1.0));
        // Hand computed: order by score -> labels [0, 1, 0, 2].
        let dcg = 1.0 / 3f64.log2() + 3.0 / 5f64.log2();
        let ideal = 3.0 + 1.0 / 3f64.log2();
        let got = ndcg(&[4.0, 3.0, 2.0, 1.0], &labels, 10).expect("has positives");
        assert!((got - dcg / ideal).abs() < 1e-12);
        // @1: top item has label 0.
        assert_eq!(ndcg(&[4.0, 3.0, 2.0, 1.0], &labels, 1), Some(0.0));
        assert_eq!(ndcg(&[1.0, 2.0], &[0.0, 0.0], 10), None);
    }

    #[test]
    fn lambdas_push_positives_up_and_sum_to_zero() {
        let scores = [0.5, 0.2, 0.9, -0.3, 0.0];
        let labels = [0.0, 1.0, 0.0, 2.0, 0.0];
        let mut g = [0.0; 5];
        let mut h = [0.0; 5];
        lambda_gradients(&scores, &labels, 3, &mut g, &mut h);
        assert!(g[1] < 0.0 && g[3] < 0.0, "{g:?}");
        assert!(g[0] > 0.0 && g[2] > 0.0, "{g:?}");
        assert!(g.iter().map(|&x| x as f64).sum::<f64>().abs() < 1e-6);
        assert!(h.iter().all(|&x| x >= 0.0));
    }

    #[test]
    fn lambda_matches_hand_computed_pair() {
        // Two rows: the positive ranked second. Swapping changes NDCG@2 by
        // (1/log2(2) - 1/log2(3)) * gain(1) / ideal(1).
        let scores = [1.0f32, 0.0];
        let labels = [0.0, 1.0];
        let mut g = [0.0; 2];
        let mut h = [0.0; 2];
        lambda_gradients(&scores, &labels, 2, &mut g, &mut h);
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
        let scores = [3.0f32, 2.0, 1.0];
        let labels = [0.0, 0.0, 1.0];
        let mut g = [0.0; 3];
        let mut h = [0.0; 3];
        lambda_gradients(&scores, &labels, 1, &mut g, &mut h);
        assert_eq!(g[1], 0.0);
        assert!(g[0] > 0.0 && g[2] < 0.0);
    }

    #[test]
    fn groups_without_a_positive_or_a_negative_are_silent() {
        let mut g = [9.0; 3];
        let mut h = [9.0; 3];
        lambda_gradients(&[0.1, 0.2, 0.3], &[0.0; 3], 10, &mut g, &mut h);
        assert_eq!((g, h), ([0.0; 3], [0.0; 3]));
        lambda_gradients(&[0.1, 0.2, 0.3], &[1.0; 3], 10, &mut g, &mut h);
        assert_eq!((g, h), ([0.0; 3], [0.0; 3]));
    }

    #[test]
    fn logistic_gradients_and_logloss() {
        let scores = [0.0f32, 2.0];
        let labels = [1.0, 0.0];
        let mut g = [0.0; 2];
        let mut h = [0.0; 2];
        gradients(
            Objective::Logistic,
            &scores,
            &labels,
            &[0, 2],
            &mut g,
            &mut h,
        );
        assert!((g[0] + 0.5).abs() < 1e-7 && (h[0] - 0.25).abs() < 1e-7);
        let p = sigmoid(2.0);
        assert!((g[1] as f64 - p).abs() < 1e-6);
        let ll = metric(Objective::Logistic, &scores, &labels, &[0, 2]);
        let expected = (-(0.5f64.ln()) - (1.0 - p).ln()) / 2.0;
        assert!((ll - expected).abs() < 1e-9);
    }

    #[test]
    fn mean_ndcg_skips_groups_without_positives() {
        let obj = Objective::LambdaRank { ndcg_at: 10 };
        let scores = [1.0, 0.0, 1.0, 0.0];
        let labels = [1.0, 0.0, 0.0, 0.0];
        assert_eq!(metric(obj, &scores, &labels, &[0, 2, 4]), 1.0);
        assert_eq!(group_offsets(&[2, 2], 4), vec![0, 2, 4]);
        assert_eq!(group_offsets(&[], 3), vec![0, 3]);
    }
}
