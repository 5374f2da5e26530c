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
}
