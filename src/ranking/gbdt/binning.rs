//! Quantile binning: each feature's values are mapped to at most 255 value
//! bins plus one NaN bin, so a row's feature fits a byte and split search
//! only looks at bin boundaries.
//!
//! Owns: cut-point fitting (`FeatureBins::fit`), the bin of a value, the
//! column-major binned matrix. Must not touch: gradients, trees.
//!
//! The one invariant that matters: a value's bin is the number of cuts
//! strictly below it, so `bin(v) <= b` exactly when `v <= cuts[b]`. The
//! model stores `cuts[b]` as its threshold and predicts with `v <=
//! threshold`, which routes every finite value exactly as training did,
//! whatever rounding went into choosing the cuts.

use crate::rng::Rng;
use rayon::prelude::*;

/// Rows sampled per feature to fit cut points; quantiles of a 200k sample
/// are as good as those of the full column and sorting stays cheap.
pub(crate) const BIN_SAMPLE_ROWS: usize = 200_000;

/// Cut points of one feature.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FeatureBins {
    /// Strictly increasing, finite.
    cuts: Vec<f32>,
}

impl FeatureBins {
    /// Fits at most `max_bins` value bins to `values` (NaN and infinities
    /// are ignored for fitting; infinities still land in the first/last
    /// bin by comparison). Each distinct value gets its own bin when there
    /// are few enough; otherwise bins hold roughly equal row counts, with
    /// a heavy value (e.g. many zeros) getting a bin to itself.
    pub(crate) fn fit(values: &mut Vec<f32>, max_bins: usize) -> Self {
        values.retain(|v| v.is_finite());
        values.sort_unstable_by(f32::total_cmp);
        let mut distinct: Vec<(f32, usize)> = Vec::new();
        for &v in values.iter() {
            match distinct.last_mut() {
                // -0.0 and 0.0 compare equal and must share a bin.
                Some((last, count)) if *last == v => *count += 1,
                _ => distinct.push((v, 1)),
            }
        }
        let mut cuts = Vec::new();
        if distinct.len() <= max_bins {
            for pair in distinct.windows(2) {
                cuts.push(cut_between(pair[0].0, pair[1].0));
            }
        } else {
            let mut remaining_rows = values.len() as f64;
            let mut remaining_bins = max_bins as f64;
            let mut target = remaining_rows / remaining_bins;
            let mut in_bin = 0.0;
            for i in 0..distinct.len() - 1 {
                in_bin += distinct[i].1 as f64;
                if in_bin >= target {
                    cuts.push(cut_between(distinct[i].0, distinct[i + 1].0));
                    remaining_rows -= in_bin;
                    remaining_bins -= 1.0;
                    in_bin = 0.0;
                    if remaining_bins <= 1.0 {
                        break;
                    }
                    target = remaining_rows / remaining_bins;
                }
            }
        }
        debug_assert!(cuts.windows(2).all(|w| w[0] < w[1]));
        FeatureBins { cuts }
    }

    /// Value bins (the NaN bin comes after them).
    pub(crate) fn n_value_bins(&self) -> usize {
        self.cuts.len() + 1
    }

    /// Index of the NaN bin.
    pub(crate) fn nan_bin(&self) -> usize {
        self.cuts.len() + 1
    }

    pub(crate) fn bin_of(&self, value: f32) -> u8 {
        let bin = if value.is_nan() {
            self.nan_bin()
        } else {
            self.cuts.partition_point(|&c| c < value)
        };
        // fit() caps value bins at max_bins <= 255, so bins are 0..=255.
        bin as u8
    }

    /// Threshold for "value bins 0..=last_left_bin go left". When every
    /// value bin goes left (a present-vs-missing split) there is no cut, and
    /// f32::MAX stands in: all finite values go left, +inf goes right.
    pub(crate) fn threshold(&self, last_left_bin: usize) -> f32 {
        self.cuts.get(last_left_bin).copied().unwrap_or(f32::MAX)
    }
}

/// A cut c with lo <= c < hi, near their midpoint. Falls back to `lo` when
/// the midpoint rounds up to `hi` (adjacent floats).
fn cut_between(lo: f32, hi: f32) -> f32 {
    let mid = ((lo as f64 + hi as f64) * 0.5) as f32;
    if mid >= lo && mid < hi {
        mid
    } else {
        lo
    }
}

/// The training rows' bins, column-major so that building one feature's
/// histogram reads one contiguous column.
#[derive(Debug, Clone)]
pub(crate) struct BinnedData {
    rows: usize,
    bins: Vec<u8>,
}

impl BinnedData {
    pub(crate) fn column(&self, feature: usize) -> &[u8] {
        &self.bins[feature * self.rows..(feature + 1) * self.rows]
    }

    #[cfg(test)]
    pub(crate) fn from_columns(rows: usize, bins: Vec<u8>) -> Self {
        assert_eq!(bins.len() % rows.max(1), 0, "test columns must be whole");
        BinnedData { rows, bins }
    }
}

/// Fits cut points for every feature on (a seeded sample of) the rows of
/// row-major `features`, in parallel over features.
pub(crate) fn fit_all(
    features: &[f32],
    n_features: usize,
    max_bins: usize,
    seed: u64,
) -> Vec<FeatureBins> {
    let rows = features.len() / n_features;
    let sample: Vec<usize> = if rows > BIN_SAMPLE_ROWS {
        let mut all: Vec<usize> = (0..rows).collect();
        // Partial Fisher-Yates: the first BIN_SAMPLE_ROWS entries are a
        // uniform sample; sorted again for cache-friendly reads.
        let mut rng = Rng::derive(seed, 0xB1A5);
        for i in 0..BIN_SAMPLE_ROWS {
            let j = i + rng.usize_below(rows - i);
            all.swap(i, j);
        }
        all.truncate(BIN_SAMPLE_ROWS);
        all.sort_unstable();
        all
    } else {
        (0..rows).collect()
    };
    (0..n_features)
        .into_par_iter()
        .map(|f| {
            let mut values: Vec<f32> = sample
                .iter()
                .map(|&r| features[r * n_features + f])
                .collect();
            FeatureBins::fit(&mut values, max_bins)
        })
        .collect()
}

/// Bins every row of row-major `features` with the fitted cut points.
pub(crate) fn bin_all(features: &[f32], n_features: usize, bins: &[FeatureBins]) -> BinnedData {
    let rows = features.len() / n_features;
    let mut out = vec![0u8; rows * n_features];
    if rows > 0 {
        out.par_chunks_mut(rows)
            .enumerate()
            .for_each(|(f, column)| {
                for (r, slot) in column.iter_mut().enumerate() {
                    *slot = bins[f].bin_of(features[r * n_features + f]);
                }
            });
    }
    BinnedData { rows, bins: out }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn few_distinct_values_get_one_bin_each_and_nan_its_own() {
        let mut values = vec![3.0, 1.0, 2.0, 1.0, f32::NAN, 3.0];
        let bins = FeatureBins::fit(&mut values, 255);
        assert_eq!(bins.n_value_bins(), 3);
        assert_eq!(bins.bin_of(1.0), 0);
        assert_eq!(bins.bin_of(2.0), 1);
        assert_eq!(bins.bin_of(3.0), 2);
        assert_eq!(bins.bin_of(f32::NAN), 3);
        // Unseen values fall between by comparison.
        assert_eq!(bins.bin_of(-100.0), 0);
        assert_eq!(bins.bin_of(100.0), 2);
        assert_eq!(bins.bin_of(f32::INFINITY), 2);
        assert_eq!(bins.bin_of(f32::NEG_INFINITY), 0);
    }

    #[test]
    fn bin_order_matches_threshold_comparison_for_every_cut() {
        // Adjacent floats force the midpoint fallback; the invariant
        // bin(v) <= b <=> v <= threshold(b) must hold regardless.
        let a = 1.0f32;
        let b = f32::from_bits(a.to_bits() + 1);
        let mut rng = Rng::new(3);
        let mut values: Vec<f32> = (0..5000).map(|_| rng.normal() as f32).collect();
        values.extend([a, b, 0.0, -0.0]);
        let probe = values.clone();
        let bins = FeatureBins::fit(&mut values, 64);
        assert!(bins.n_value_bins() <= 64);
        for &v in &probe {
            for last_left in 0..bins.n_value_bins() - 1 {
                assert_eq!(
                    (bins.bin_of(v) as usize) <= last_left,
                    v <= bins.threshold(last_left),
                    "value {v} cut {last_left}"
                );
            }
        }
        assert_ne!(bins.bin_of(0.0), bins.bin_of(1.0));
        assert_eq!(bins.bin_of(0.0), bins.bin_of(-0.0));
    }

    #[test]
    fn quantile_bins_hold_similar_counts_and_heavy_values_stand_alone() {
        let mut rng = Rng::new(9);
        // 40% zeros then a continuous spread.
        let mut values: Vec<f32> = (0..10_000)
            .map(|i| if i % 5 < 2 { 0.0 } else { rng.f32() + 0.5 })
            .collect();
        let probe = values.clone();
        let bins = FeatureBins::fit(&mut values, 16);
        assert!(bins.n_value_bins() <= 16 && bins.n_value_bins() >= 12);
        let mut counts = vec![0usize; bins.n_value_bins()];
        for &v in &probe {
            counts[bins.bin_of(v) as usize] += 1;
        }
        let zero_bin = bins.bin_of(0.0) as usize;
        assert_eq!(counts[zero_bin], 4000, "zeros share one bin, alone");
        let rest: Vec<usize> = (0..counts.len())
            .filter(|&b| b != zero_bin)
            .map(|b| counts[b])
            .collect();
        let mean = 6000.0 / rest.len() as f64;
        for &c in &rest {
            assert!(
                (c as f64) < 2.0 * mean && (c as f64) > 0.4 * mean,
                "{counts:?}"
            );
        }
    }

    #[test]
    fn constant_and_all_nan_features_have_one_value_bin() {
        let mut constant = vec![2.5; 10];
        assert_eq!(FeatureBins::fit(&mut constant, 255).n_value_bins(), 1);
        let mut missing = vec![f32::NAN; 10];
        let bins = FeatureBins::fit(&mut missing, 255);
        assert_eq!(bins.n_value_bins(), 1);
        assert_eq!(bins.bin_of(f32::NAN), 1);
        assert_eq!(bins.threshold(0), f32::MAX);
    }

    #[test]
    fn bin_all_is_column_major() {
        // 3 rows x 2 features, row-major.
        let features = [1.0, 10.0, 2.0, f32::NAN, 3.0, 30.0];
        let fitted = fit_all(&features, 2, 255, 1);
        let binned = bin_all(&features, 2, &fitted);
        assert_eq!(binned.column(0), &[0, 1, 2]);
        assert_eq!(binned.column(1), &[0, 2, 1]);
    }
}
