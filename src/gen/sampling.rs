//! Weighted sampling over running sums for the generator: draws in
//! proportion to weights (`sample_in`, `sample_cum`), the guide-table
//! search that makes those picks O(1) on large tables, and `TimeTable`,
//! popularity-weighted picks among the items that exist at a given time.
//! Must not touch: the generative model's parameters or its streams (the
//! caller passes the `Rng`).

use crate::rng::Rng;

/// A set of items for popularity-weighted picks among those that exist at
/// time t. Items created before the log ("catalogue" items, available to
/// every event) come first, most popular first; items created during the
/// log follow in creation order. So the available set is always a prefix
/// found by a search over the late items only, and a pick in the catalogue
/// part uses a guide table (cutpoint method: expected O(1) probes). Plain
/// binary search over a million running sums costs ~20 cache misses per
/// pick, which dominated generation time at benchmark sizes.
#[derive(Debug, Default)]
pub(super) struct TimeTable {
    items: Vec<u32>,
    cum: Vec<f64>,
    /// Number of catalogue items at the front of `items`.
    early: usize,
    /// Creation times of `items[early..]`, ascending.
    late_created: Vec<i64>,
    /// `guide[j]` = first index whose running sum exceeds j/len of the
    /// catalogue part's total weight.
    guide: Vec<u32>,
}

impl TimeTable {
    /// `log_start`: items created before it are available to every event.
    pub(super) fn build(
        items: Vec<u32>,
        created_of: &[i64],
        weight_of: &[f64],
        log_start: i64,
    ) -> Self {
        let (mut early, mut late): (Vec<u32>, Vec<u32>) = items
            .into_iter()
            .partition(|&i| created_of[i as usize] < log_start);
        // Heaviest first keeps the hot part of the table in a few cache lines.
        early.sort_by(|&a, &b| {
            weight_of[b as usize]
                .total_cmp(&weight_of[a as usize])
                .then(a.cmp(&b))
        });
        late.sort_by_key(|&i| (created_of[i as usize], i));
        let late_created = late.iter().map(|&i| created_of[i as usize]).collect();
        let n_early = early.len();
        let mut items = early;
        items.extend(late);
        let cum = running_sum(items.iter().map(|&i| weight_of[i as usize]));
        let guide = build_guide(&cum[..n_early]);
        TimeTable {
            items,
            cum,
            early: n_early,
            late_created,
            guide,
        }
    }

    /// Length of the prefix of items created at or before `ts` (`ts` must
    /// not precede the log start; events never do).
    pub(super) fn available(&self, ts: i64) -> usize {
        self.early + self.late_created.partition_point(|&c| c <= ts)
    }

    pub(super) fn sample_available(&self, ts: i64, rng: &mut Rng) -> Option<u32> {
        let hi = self.available(ts);
        if hi == 0 {
            return None;
        }
        let x = rng.f64() * self.cum[hi - 1];
        let k = if self.early > 0 && x < self.cum[self.early - 1] {
            guided_search(&self.cum[..self.early], &self.guide, x)
        } else {
            self.early + self.cum[self.early..hi].partition_point(|&c| c <= x)
        };
        Some(self.items[k.min(hi - 1)])
    }

    pub(super) fn sample_uniform_available(&self, ts: i64, rng: &mut Rng) -> Option<u32> {
        let hi = self.available(ts);
        (hi > 0).then(|| self.items[rng.usize_below(hi)])
    }

    /// A popularity-weighted pick among items created during the log
    /// within [from, to].
    pub(super) fn sample_created_between(&self, from: i64, to: i64, rng: &mut Rng) -> Option<u32> {
        let lo = self.early + self.late_created.partition_point(|&c| c < from);
        let hi = self.early + self.late_created.partition_point(|&c| c <= to);
        sample_in(&self.cum, lo, hi, rng).map(|k| self.items[k])
    }
}

pub(super) fn build_guide(cum: &[f64]) -> Vec<u32> {
    let Some(&total) = cum.last() else {
        return Vec::new();
    };
    let n = cum.len();
    let mut guide = Vec::with_capacity(n);
    let mut k = 0;
    for j in 0..n {
        let threshold = total * j as f64 / n as f64;
        while k + 1 < n && cum[k] <= threshold {
            k += 1;
        }
        guide.push(k as u32);
    }
    guide
}

/// First index whose running sum exceeds `x` (x < total), starting from the
/// guide entry for x's quantile.
pub(super) fn guided_search(cum: &[f64], guide: &[u32], x: f64) -> usize {
    let n = cum.len();
    let total = cum[n - 1];
    let j = ((x / total * n as f64) as usize).min(n - 1);
    let mut k = guide[j] as usize;
    // Float rounding of j may land one quantile high; step back if so.
    while k > 0 && cum[k - 1] > x {
        k -= 1;
    }
    while k + 1 < n && cum[k] <= x {
        k += 1;
    }
    k
}

pub(super) fn running_sum(weights: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut total = 0.0;
    weights
        .map(|w| {
            total += w;
            total
        })
        .collect()
}

/// Index in [lo, hi) drawn in proportion to the weights whose running sums
/// are `cum`; None for an empty range.
pub(super) fn sample_in(cum: &[f64], lo: usize, hi: usize, rng: &mut Rng) -> Option<usize> {
    if lo >= hi {
        return None;
    }
    let base = if lo == 0 { 0.0 } else { cum[lo - 1] };
    let x = base + rng.f64() * (cum[hi - 1] - base);
    let k = lo + cum[lo..hi].partition_point(|&c| c <= x);
    Some(k.min(hi - 1))
}

pub(super) fn sample_cum(cum: &[f64], rng: &mut Rng) -> usize {
    sample_in(cum, 0, cum.len(), rng).expect("cumulative tables are never empty")
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn sample_in_respects_range_and_weights() {
        let cum = running_sum([1.0, 0.0, 3.0, 6.0].into_iter());
        let mut rng = Rng::new(3);
        let mut counts = [0u32; 4];
        for _ in 0..20_000 {
            counts[sample_in(&cum, 1, 4, &mut rng).expect("non-empty")] += 1;
        }
        assert_eq!(counts[0], 0);
        assert_eq!(counts[1], 0);
        let ratio = counts[3] as f64 / counts[2] as f64;
        assert!((ratio - 2.0).abs() < 0.15, "{ratio}");
        assert_eq!(sample_in(&cum, 2, 2, &mut rng), None);
    }

    #[test]
    fn time_table_only_offers_created_items() {
        // items 1 and 3 predate the log start (6); 0 and 2 arrive during it
        let created = [10, 0, 20, 5];
        let weight = [1.0, 1.0, 100.0, 1.0];
        let t = TimeTable::build(vec![0, 1, 2, 3], &created, &weight, 6);
        let mut rng = Rng::new(9);
        let mut offered = HashSet::new();
        for _ in 0..1000 {
            let i = t.sample_available(12, &mut rng).expect("some exist");
            assert!(created[i as usize] <= 12);
            offered.insert(i);
            let u = t
                .sample_uniform_available(12, &mut rng)
                .expect("some exist");
            assert!(created[u as usize] <= 12);
            let f = t.sample_created_between(6, 12, &mut rng).expect("one fits");
            assert_eq!(f, 0);
        }
        assert_eq!(offered.len(), 3);
        assert_eq!(t.sample_created_between(11, 19, &mut rng), None);
    }

    #[test]
    fn guided_search_equals_binary_search() {
        let mut rng = Rng::new(4);
        let weights: Vec<f64> = (0..500)
            .map(|k| ((k + 1) as f64).powf(-1.05) * (0.5 + rng.f64()))
            .collect();
        let cum = running_sum(weights.into_iter());
        let guide = build_guide(&cum);
        let total = cum[cum.len() - 1];
        for _ in 0..20_000 {
            let x = rng.f64() * total;
            let expected = cum.partition_point(|&c| c <= x).min(cum.len() - 1);
            assert_eq!(guided_search(&cum, &guide, x), expected, "x = {x}");
        }
    }
}
