//! Scoring candidates: feature rows from the shared feature module, then
//! the bundle's ranker (or, for a bundle without one, a rank-fusion of the
//! recall paths computed from the same rows).

use super::error::RankError;
use super::gbdt::GbdtModel;
use crate::features::{ItemInput, UserFeatures, N_FEATURES};
use crate::recall::Candidate;
use serde::{Deserialize, Serialize};
use std::ops::Range;

/// Looks up what the features need about an item.
pub trait ItemSource {
    fn item_input(&self, key: u64) -> Option<ItemInput<'_>>;
}

/// Index of the first recall-rank feature (`r_ann_rank`) in the row.
const FIRST_RANK_FEATURE: usize = 20;
/// Reciprocal-rank-fusion constant: damps the difference between the top
/// few ranks of each path.
const RRF_K: f32 = 60.0;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum Ranker {
    /// Gradient-boosted trees over the feature schema.
    Gbdt(GbdtModel),
    /// No trained ranker: sum over paths of 1 / (RRF_K + rank).
    RankFusion,
}

/// Two-phase scoring (first phase / second phase, as multi-phase ranking
/// engines call it). Every candidate is scored with the ranker's first
/// `first_trees` trees; only the best `keep` by that partial score get the
/// remaining trees. A boosted model's score is a sum over its trees, so the
/// kept candidates' scores are exactly the full model's, and most of the
/// cost (candidates x trees) is spent where the top of the list is decided.
/// The rest keep their first-phase order, below every kept candidate.
/// `first_trees = 0` or `keep = 0` scores every tree on every row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Cascade {
    pub first_trees: usize,
    pub keep: usize,
}

impl Default for Cascade {
    /// Measured on ml-100k (BENCHMARKS.md §1): NDCG@10 0.2526 against
    /// 0.2520 with every tree on every one of 300 candidates, for about a
    /// quarter of the tree walks.
    fn default() -> Self {
        Cascade {
            first_trees: 20,
            keep: 60,
        }
    }
}

impl Cascade {
    pub const OFF: Cascade = Cascade {
        first_trees: 0,
        keep: 0,
    };
}

/// The tree ranges of the two phases, when a cascade applies to `n_rows`
/// rows of a model with `n_trees` trees.
pub fn cascade_phases(
    cascade: Cascade,
    n_trees: usize,
    n_rows: usize,
) -> Option<(Range<usize>, Range<usize>)> {
    let on = cascade.first_trees > 0 && cascade.keep > 0;
    (on && n_rows > cascade.keep && n_trees > cascade.first_trees)
        .then_some((0..cascade.first_trees, cascade.first_trees..n_trees))
}

/// Indices (ascending) of the `keep` best first-phase scores; ties go to
/// the earlier row, so the choice is deterministic.
pub fn second_phase_rows(first: &[f32], keep: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..first.len()).collect();
    let by_score = |a: &usize, b: &usize| first[*b].total_cmp(&first[*a]).then(a.cmp(b));
    if keep < order.len() {
        order.select_nth_unstable_by(keep, by_score);
        order.truncate(keep);
    }
    order.sort_unstable();
    order
}

/// The feature rows of `picked` rows, in that order.
pub fn gather_rows(rows: &[f32], picked: &[usize]) -> Vec<f32> {
    let mut out = Vec::with_capacity(picked.len() * N_FEATURES);
    for &i in picked {
        out.extend_from_slice(&rows[i * N_FEATURES..(i + 1) * N_FEATURES]);
    }
    out
}

/// Final scores: kept rows take their full scores (`second`, in `kept`
/// order); the others keep their first-phase order, shifted to sit below
/// the lowest kept score.
pub fn finish_cascade(scores: &mut [f32], kept: &[usize], second: &[f32]) {
    let mut is_kept = vec![false; scores.len()];
    for (&i, &s) in kept.iter().zip(second) {
        scores[i] = s;
        is_kept[i] = true;
    }
    let floor = second.iter().copied().fold(f32::INFINITY, f32::min);
    let top_dropped = scores
        .iter()
        .zip(&is_kept)
        .filter(|(_, k)| !**k)
        .map(|(s, _)| *s)
        .fold(f32::NEG_INFINITY, f32::max);
    if !floor.is_finite() || !top_dropped.is_finite() {
        return;
    }
    for (s, _) in scores.iter_mut().zip(&is_kept).filter(|(_, k)| !**k) {
        *s = floor - 1.0 - (top_dropped - *s);
    }
}

impl Ranker {
    pub fn kind(&self) -> &'static str {
        match self {
            Ranker::Gbdt(_) => "gbdt",
            Ranker::RankFusion => "rank-fusion",
        }
    }

    /// Trees in the model (rank fusion counts as one).
    pub fn n_trees(&self) -> usize {
        match self {
            Ranker::Gbdt(m) => m.n_trees(),
            Ranker::RankFusion => 1,
        }
    }

    /// What a row's score starts from before any tree.
    pub fn initial_score(&self) -> f32 {
        match self {
            Ranker::Gbdt(m) => m.base_score(),
            Ranker::RankFusion => 0.0,
        }
    }

    /// Adds the outputs of the trees in `trees` to `out`, which holds
    /// `initial_score` or the sum of the trees before `trees.start`, for
    /// row-major feature rows (`N_FEATURES` each). Rank fusion is its one
    /// "tree" 0.
    pub fn add_trees(
        &self,
        rows: &[f32],
        trees: Range<usize>,
        out: &mut [f32],
    ) -> Result<(), RankError> {
        if rows.len() != out.len() * N_FEATURES {
            return Err(RankError::RowShape {
                values: rows.len(),
                rows: out.len(),
            });
        }
        match self {
            Ranker::Gbdt(m) => Ok(m.add_trees(rows, N_FEATURES, trees, out)?),
            Ranker::RankFusion if trees.contains(&0) => {
                for (row, o) in rows.chunks_exact(N_FEATURES).zip(out.iter_mut()) {
                    *o += row[FIRST_RANK_FEATURE..FIRST_RANK_FEATURE + 5]
                        .iter()
                        .filter(|r| !r.is_nan())
                        .map(|r| 1.0 / (RRF_K + r))
                        .sum::<f32>();
                }
                Ok(())
            }
            Ranker::RankFusion => Ok(()),
        }
    }

    /// Scores row-major feature rows (`N_FEATURES` each) into `out`, in two
    /// phases when `cascade` applies. `pool::score_within` runs the same
    /// steps split across the rank worker pool; this is the one-thread form
    /// the trainer, the offline evaluation and one batch on a worker use.
    pub fn score_rows(
        &self,
        rows: &[f32],
        out: &mut [f32],
        cascade: Cascade,
    ) -> Result<(), RankError> {
        out.fill(self.initial_score());
        let Some((first, rest)) = cascade_phases(cascade, self.n_trees(), out.len()) else {
            return self.add_trees(rows, 0..usize::MAX, out);
        };
        self.add_trees(rows, first, out)?;
        let kept = second_phase_rows(out, cascade.keep);
        let mut second: Vec<f32> = kept.iter().map(|&i| out[i]).collect();
        self.add_trees(&gather_rows(rows, &kept), rest, &mut second)?;
        finish_cascade(out, &kept, &second);
        Ok(())
    }
}

/// Feature rows for the candidates that `items` knows; returns the rows and
/// the indices (into `candidates`) they belong to.
pub fn feature_rows(
    uf: &UserFeatures,
    candidates: &[Candidate],
    items: &dyn ItemSource,
) -> (Vec<f32>, Vec<usize>) {
    let mut rows = vec![0f32; candidates.len() * N_FEATURES];
    let mut kept = Vec::with_capacity(candidates.len());
    for (i, c) in candidates.iter().enumerate() {
        if let Some(item) = items.item_input(c.key) {
            let at = kept.len() * N_FEATURES;
            uf.extract(&item, &c.prov, &mut rows[at..at + N_FEATURES]);
            kept.push(i);
        }
    }
    rows.truncate(kept.len() * N_FEATURES);
    (rows, kept)
}

/// A ranker over the real feature width, trained on `n` random rows whose
/// label follows two of the features, and those rows (for tests of
/// scoring, which need a model with real trees).
#[cfg(test)]
pub(crate) fn trained_test_ranker(seed: u64, n: usize, trees: usize) -> (Ranker, Vec<f32>) {
    use crate::ranking::gbdt::{train, Dataset, GbdtParams};
    let mut rng = crate::rng::Rng::new(seed);
    let rows: Vec<f32> = (0..n * N_FEATURES).map(|_| rng.f32()).collect();
    let labels: Vec<f32> = rows
        .chunks(N_FEATURES)
        .map(|r| (r[3] + 0.5 * r[7] > 0.8) as u8 as f32)
        .collect();
    let groups = vec![40u32; n / 40];
    let data = Dataset {
        features: &rows[..groups.len() * 40 * N_FEATURES],
        n_features: N_FEATURES,
        labels: &labels[..groups.len() * 40],
        groups: &groups,
        feature_names: &[],
    };
    let params = GbdtParams {
        trees,
        early_stopping_rounds: 0,
        threads: 1,
        ..GbdtParams::default()
    };
    let model = train(&data, None, &params, &mut |_| {}).expect("training on valid rows");
    (Ranker::Gbdt(model), rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rank_fusion_prefers_items_found_early_by_more_paths() {
        let mut a = vec![f32::NAN; N_FEATURES];
        let mut b = vec![f32::NAN; N_FEATURES];
        a[FIRST_RANK_FEATURE] = 0.0; // ann rank 0
        b[FIRST_RANK_FEATURE] = 0.0;
        b[FIRST_RANK_FEATURE + 1] = 3.0; // and itemcf rank 3
        let rows: Vec<f32> = a.into_iter().chain(b).collect();
        let mut out = [0f32; 2];
        Ranker::RankFusion
            .score_rows(&rows, &mut out, Cascade::default())
            .unwrap();
        assert!(out[1] > out[0]);
        assert!((out[0] - 1.0 / 60.0).abs() < 1e-7);
        assert_eq!(
            Ranker::RankFusion.score_rows(&rows[1..], &mut out, Cascade::OFF),
            Err(RankError::RowShape {
                values: 2 * N_FEATURES - 1,
                rows: 2
            })
        );
    }

    #[test]
    fn second_phase_keeps_the_best_first_phase_rows_in_row_order() {
        let first = [0.5, 2.0, -1.0, 2.0, 3.0, 0.0];
        assert_eq!(second_phase_rows(&first, 3), vec![1, 3, 4]);
        // a tie at the cut goes to the earlier row
        assert_eq!(second_phase_rows(&first, 2), vec![1, 4]);
        assert_eq!(second_phase_rows(&first, 10), vec![0, 1, 2, 3, 4, 5]);
        assert!(second_phase_rows(&[], 3).is_empty());
    }

    #[test]
    fn cascade_gives_kept_rows_their_full_score_and_ranks_the_rest_below() {
        let (ranker, rows) = trained_test_ranker(5, 400, 30);
        assert_eq!(ranker.n_trees(), 30);

        let request = &rows[..50 * N_FEATURES];
        let mut full = vec![0.0; 50];
        ranker.score_rows(request, &mut full, Cascade::OFF).unwrap();
        let cascade = Cascade {
            first_trees: 5,
            keep: 12,
        };
        let mut two_phase = vec![0.0; 50];
        ranker.score_rows(request, &mut two_phase, cascade).unwrap();

        let mut first = vec![ranker.initial_score(); 50];
        ranker.add_trees(request, 0..5, &mut first).unwrap();
        let kept = second_phase_rows(&first, 12);
        assert_eq!(kept.len(), 12);
        let floor = kept
            .iter()
            .map(|&i| two_phase[i])
            .fold(f32::INFINITY, f32::min);
        for i in 0..50 {
            if kept.contains(&i) {
                assert_eq!(two_phase[i].to_bits(), full[i].to_bits(), "row {i}");
            } else {
                assert!(
                    two_phase[i] < floor,
                    "row {i} was cut but ranks above a kept row"
                );
                for j in (0..50).filter(|j| !kept.contains(j)) {
                    // cut rows keep their first-phase order
                    assert_eq!(first[i] < first[j], two_phase[i] < two_phase[j]);
                }
            }
        }
        // fewer rows than `keep`: every tree on every row
        let mut small = vec![0.0; 10];
        ranker
            .score_rows(&request[..10 * N_FEATURES], &mut small, cascade)
            .unwrap();
        assert_eq!(small, full[..10]);
    }
}
