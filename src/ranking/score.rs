//! Scoring candidates: feature rows from the shared feature module, then
//! the bundle's ranker (or, for a bundle without one, a rank-fusion of the
//! recall paths computed from the same rows).

use super::gbdt::GbdtModel;
use crate::features::{ItemInput, UserFeatures, N_FEATURES};
use crate::recall::Candidate;
use serde::{Deserialize, Serialize};

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

impl Ranker {
    pub fn kind(&self) -> &'static str {
        match self {
            Ranker::Gbdt(_) => "gbdt",
            Ranker::RankFusion => "rank-fusion",
        }
    }

    /// Scores row-major feature rows (`N_FEATURES` each) into `out`.
    pub fn score_rows(&self, rows: &[f32], out: &mut [f32]) -> Result<(), String> {
        if rows.len() != out.len() * N_FEATURES {
            return Err(format!(
                "{} feature values for {} rows of {N_FEATURES}",
                rows.len(),
                out.len()
            ));
        }
        match self {
            Ranker::Gbdt(m) => m
                .predict_batch(rows, N_FEATURES, out)
                .map_err(|e| e.to_string()),
            Ranker::RankFusion => {
                for (row, o) in rows.chunks_exact(N_FEATURES).zip(out.iter_mut()) {
                    *o = row[FIRST_RANK_FEATURE..FIRST_RANK_FEATURE + 5]
                        .iter()
                        .filter(|r| !r.is_nan())
                        .map(|r| 1.0 / (RRF_K + r))
                        .sum();
                }
                Ok(())
            }
        }
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
        Ranker::RankFusion.score_rows(&rows, &mut out).unwrap();
        assert!(out[1] > out[0]);
        assert!((out[0] - 1.0 / 60.0).abs() < 1e-7);
        assert!(Ranker::RankFusion.score_rows(&rows[1..], &mut out).is_err());
    }
}
