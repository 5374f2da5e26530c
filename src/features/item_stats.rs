//! Per-item counters that events update: total interactions and a
//! time-decayed "trending" score. The trainer builds them by replaying the
//! log; the bundle ships the snapshot; the server keeps updating it with
//! live events through the same `apply`.

use super::user_state::decay;
use serde::{Deserialize, Serialize};

/// Half-life of the trending score, seconds (three days).
pub const TRENDING_HALF_LIFE_S: f64 = 3.0 * 86_400.0;

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemStats {
    /// Sum of event strengths ever seen.
    pub count: f32,
    /// Decayed strength, valid at `trending_ts`.
    pub trending: f32,
    pub trending_ts: i64,
}

impl ItemStats {
    pub fn apply(&mut self, ts: i64, strength: f32) {
        self.count += strength;
        if ts >= self.trending_ts {
            self.trending =
                self.trending * decay(ts - self.trending_ts, TRENDING_HALF_LIFE_S) + strength;
            self.trending_ts = ts;
        } else {
            self.trending += strength * decay(self.trending_ts - ts, TRENDING_HALF_LIFE_S);
        }
    }

    /// Adds the counters `other` holds, kept from a disjoint set of events
    /// (another node's): counts add, and both trending scores are brought
    /// to the later of their two times. Merging per-node counters gives
    /// what applying all their events in one place gives (up to float
    /// rounding), which is how every node counts the events other nodes
    /// accepted (`node::item_counts`).
    pub fn merge(&mut self, other: &ItemStats) {
        if other.count == 0.0 && other.trending == 0.0 {
            return;
        }
        self.count += other.count;
        if other.trending_ts >= self.trending_ts {
            self.trending = self.trending
                * decay(other.trending_ts - self.trending_ts, TRENDING_HALF_LIFE_S)
                + other.trending;
            self.trending_ts = other.trending_ts;
        } else {
            self.trending +=
                other.trending * decay(self.trending_ts - other.trending_ts, TRENDING_HALF_LIFE_S);
        }
    }

    /// Trending score as seen at `now`. Asking about a time before the last
    /// update returns the last value: counters never run backwards.
    pub fn trending_at(&self, now: i64) -> f32 {
        if self.count == 0.0 {
            return 0.0;
        }
        self.trending * decay(now - self.trending_ts, TRENDING_HALF_LIFE_S)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trending_decays_and_order_does_not_matter() {
        let h = TRENDING_HALF_LIFE_S as i64;
        let mut a = ItemStats::default();
        a.apply(0, 1.0);
        a.apply(h, 1.0);
        assert!((a.trending_at(h) - 1.5).abs() < 1e-6);
        assert!((a.trending_at(2 * h) - 0.75).abs() < 1e-6);
        let mut b = ItemStats::default();
        b.apply(h, 1.0);
        b.apply(0, 1.0);
        assert!((a.trending_at(3 * h) - b.trending_at(3 * h)).abs() < 1e-6);
        assert_eq!(a.count, 2.0);
        assert_eq!(ItemStats::default().trending_at(5), 0.0);
    }

    #[test]
    fn merging_split_counters_equals_applying_every_event_in_one_place() {
        let h = TRENDING_HALF_LIFE_S as i64;
        let events: Vec<(i64, f32)> = (0..40)
            .map(|i| ((i * 7919) % 11 * h / 3, 1.0 + (i % 4) as f32))
            .collect();
        let mut whole = ItemStats::default();
        for &(ts, s) in &events {
            whole.apply(ts, s);
        }
        // three nodes each count every third event, then merge in two orders
        let parts: Vec<ItemStats> = (0..3)
            .map(|n| {
                let mut p = ItemStats::default();
                for &(ts, s) in events.iter().skip(n).step_by(3) {
                    p.apply(ts, s);
                }
                p
            })
            .collect();
        for order in [[0, 1, 2], [2, 0, 1]] {
            let mut merged = ItemStats::default();
            for i in order {
                merged.merge(&parts[i]);
            }
            assert_eq!(merged.count, whole.count);
            assert_eq!(merged.trending_ts, whole.trending_ts);
            let (a, b) = (merged.trending_at(4 * h), whole.trending_at(4 * h));
            assert!((a - b).abs() < 1e-4 * b, "{a} vs {b}");
        }
        // merging nothing changes nothing
        let mut same = whole;
        same.merge(&ItemStats::default());
        assert_eq!(same, whole);
    }
}
