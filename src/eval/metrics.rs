//! Ranking metrics of the evaluation protocol at K = 10 and 20, and the
//! full-ranking top-K selection with the protocol's tie-break.

use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

pub const KS: [usize; 2] = [10, 20];
pub const MAX_K: usize = 20;

/// Means over evaluated users (and catalogue coverage).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Metrics {
    #[serde(rename = "recall@10")]
    pub recall10: f64,
    #[serde(rename = "recall@20")]
    pub recall20: f64,
    #[serde(rename = "ndcg@10")]
    pub ndcg10: f64,
    #[serde(rename = "ndcg@20")]
    pub ndcg20: f64,
    #[serde(rename = "hr@10")]
    pub hr10: f64,
    #[serde(rename = "hr@20")]
    pub hr20: f64,
    #[serde(rename = "coverage@10")]
    pub coverage10: f64,
    #[serde(rename = "coverage@20")]
    pub coverage20: f64,
    pub users: usize,
}

/// Scores one ranked list against a target set (sorted ascending).
/// Returns (recall, ndcg, hit) at `k`.
pub fn user_metrics(ranked: &[u32], targets: &[u32], k: usize) -> (f64, f64, f64) {
    let denom = k.min(targets.len());
    if denom == 0 {
        return (0.0, 0.0, 0.0);
    }
    let mut hits = 0usize;
    let mut dcg = 0.0;
    for (r, item) in ranked.iter().take(k).enumerate() {
        if targets.binary_search(item).is_ok() {
            hits += 1;
            dcg += 1.0 / ((r + 2) as f64).log2();
        }
    }
    let idcg: f64 = (0..denom).map(|r| 1.0 / ((r + 2) as f64).log2()).sum();
    (
        hits as f64 / denom as f64,
        dcg / idcg,
        if hits > 0 { 1.0 } else { 0.0 },
    )
}

/// Protocol metrics over all evaluated users. `ranked[u]` is user u's list
/// (best first, at least `MAX_K` long where possible), `targets[u]` their
/// sorted target set, `n_catalog` the number of items in training.
pub fn evaluate(ranked: &[Vec<u32>], targets: &[Vec<u32>], n_catalog: usize) -> Metrics {
    assert_eq!(
        ranked.len(),
        targets.len(),
        "one ranked list per evaluated user"
    );
    let n = targets.len();
    let mut m = Metrics {
        users: n,
        ..Default::default()
    };
    if n == 0 {
        return m;
    }
    let mut covered = [
        std::collections::HashSet::new(),
        std::collections::HashSet::new(),
    ];
    for (list, t) in ranked.iter().zip(targets) {
        let (r10, n10, h10) = user_metrics(list, t, 10);
        let (r20, n20, h20) = user_metrics(list, t, 20);
        m.recall10 += r10;
        m.ndcg10 += n10;
        m.hr10 += h10;
        m.recall20 += r20;
        m.ndcg20 += n20;
        m.hr20 += h20;
        for (ki, &k) in KS.iter().enumerate() {
            covered[ki].extend(list.iter().take(k).copied());
        }
    }
    let nf = n as f64;
    m.recall10 /= nf;
    m.ndcg10 /= nf;
    m.hr10 /= nf;
    m.recall20 /= nf;
    m.ndcg20 /= nf;
    m.hr20 /= nf;
    let cat = n_catalog.max(1) as f64;
    m.coverage10 = covered[0].len() as f64 / cat;
    m.coverage20 = covered[1].len() as f64 / cat;
    m
}

/// Fraction of a user's targets found in a candidate set, with the
/// denominator capped at the set's budget: recall@budget.
pub fn candidate_recall(candidates: &[u32], targets: &[u32], budget: usize) -> f64 {
    let denom = budget.min(targets.len());
    if denom == 0 {
        return 0.0;
    }
    let hits = candidates
        .iter()
        .take(budget)
        .filter(|c| targets.binary_search(c).is_ok())
        .count();
    hits as f64 / denom as f64
}

/// Protocol ordering: higher score first, ties to the lower item index.
pub fn rank_order(a: (f32, u32), b: (f32, u32)) -> Ordering {
    b.0.partial_cmp(&a.0)
        .unwrap_or(Ordering::Equal)
        .then(a.1.cmp(&b.1))
}

/// Top-`k` items by score over the full catalogue, skipping items that are
/// not in the catalogue, items in `exclude` (sorted), and non-finite
/// scores (a model that cannot score an item ranks nothing there).
pub fn top_k(scores: &[f32], k: usize, exclude: &[u32], catalog: &[bool]) -> Vec<u32> {
    let mut best: Vec<(f32, u32)> = Vec::with_capacity(k + 1);
    for (i, &s) in scores.iter().enumerate() {
        let i = i as u32;
        if !s.is_finite() || !catalog[i as usize] {
            continue;
        }
        if best.len() == k && rank_order((s, i), best[k - 1]) != Ordering::Less {
            continue;
        }
        if exclude.binary_search(&i).is_ok() {
            continue;
        }
        let pos = best.partition_point(|&b| rank_order(b, (s, i)) == Ordering::Less);
        best.insert(pos, (s, i));
        best.truncate(k);
    }
    best.into_iter().map(|(_, i)| i).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn hand_computed_user_metrics() {
        // targets {2, 7}; hits at ranks 1 and 3
        let ranked = [2, 5, 7, 9];
        let (r, n, h) = user_metrics(&ranked, &[2, 7], 10);
        assert!(close(r, 1.0));
        let dcg = 1.0 + 1.0 / 4f64.log2();
        let idcg = 1.0 + 1.0 / 3f64.log2();
        assert!(close(n, dcg / idcg));
        assert!(close(h, 1.0));
        // K smaller than |T|: denominator is K
        let (r, n, _) = user_metrics(&[1, 2], &[1, 2, 3, 4], 2);
        assert!(close(r, 1.0) && close(n, 1.0));
        // a miss
        assert_eq!(user_metrics(&[1, 2], &[3], 10), (0.0, 0.0, 0.0));
        // a single hit at rank 2: ndcg = 1/log2(3)
        let (_, n, _) = user_metrics(&[9, 3], &[3], 10);
        assert!(close(n, 1.0 / 3f64.log2()));
    }

    #[test]
    fn mean_and_coverage() {
        let ranked = vec![vec![1, 2], vec![2, 3]];
        let targets = vec![vec![1], vec![4]];
        let m = evaluate(&ranked, &targets, 8);
        assert!(close(m.recall10, 0.5));
        assert!(close(m.hr20, 0.5));
        assert!(close(m.ndcg10, 0.5));
        assert!(close(m.coverage10, 3.0 / 8.0));
        assert_eq!(m.users, 2);
    }

    #[test]
    fn top_k_ties_exclusions_and_catalogue() {
        let scores = [0.5, 0.9, 0.9, f32::NEG_INFINITY, 0.1, 0.9, f32::NAN];
        let catalog = [true, true, true, true, true, false, true];
        // ties at 0.9 break to the lower index; 5 is not in the catalogue
        assert_eq!(top_k(&scores, 3, &[], &catalog), vec![1, 2, 0]);
        assert_eq!(top_k(&scores, 3, &[1], &catalog), vec![2, 0, 4]);
        // non-finite scores are never ranked, so a list may be short
        assert_eq!(top_k(&scores, 10, &[], &catalog), vec![1, 2, 0, 4]);
    }

    #[test]
    fn candidate_recall_caps_denominator() {
        assert!(close(
            candidate_recall(&[1, 2, 3], &[1, 3, 5], 200),
            2.0 / 3.0
        ));
        assert!(close(candidate_recall(&[1, 2, 3], &[1, 2, 3], 2), 1.0));
    }
}
