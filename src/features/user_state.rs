//! Realtime per-user state, updated event by event. The trainer replays the
//! log through `UserState::apply`; the server calls the same function when
//! an event arrives, so the state a request sees is the state a training
//! row saw.

use crate::dataset::{EventKind, Gender, UserMeta};
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;

/// Knobs of the state update. Part of the feature schema hash: changing one
/// changes what features mean.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct StateParams {
    /// How many most recent distinct items the state remembers.
    pub recent_len: usize,
    /// Half-life of per-category taste, seconds.
    pub taste_half_life_s: f64,
    /// Cap on the remembered set of seen items (oldest forgotten first), so
    /// very heavy users cannot grow state without bound.
    pub max_seen: usize,
}

impl Default for StateParams {
    fn default() -> Self {
        StateParams {
            recent_len: 30,
            taste_half_life_s: 14.0 * 86_400.0,
            max_seen: 5_000,
        }
    }
}

/// How much an event says about interest, from its kind and logged value.
/// A rating counts as one interaction whatever its value: the evaluation
/// protocol treats every rating as a positive.
pub fn event_strength(kind: EventKind, value: f32) -> f32 {
    match kind {
        EventKind::Rate => 1.0,
        _ if value.is_finite() && value > 0.0 => value,
        _ => kind.default_weight(),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RecentEvent {
    pub item: u64,
    pub ts: i64,
    pub kind: EventKind,
    pub strength: f32,
}

/// Static user attributes, when the input has them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Demographics {
    pub age: Option<u16>,
    pub gender: Option<Gender>,
    pub occupation: Option<u16>,
}

impl From<&UserMeta> for Demographics {
    fn from(m: &UserMeta) -> Self {
        Demographics {
            age: m.age,
            gender: m.gender,
            occupation: m.occupation,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserState {
    pub events: u32,
    pub strength_sum: f32,
    pub first_ts: Option<i64>,
    pub last_ts: Option<i64>,
    /// Most recent distinct items, oldest first.
    pub recent: VecDeque<RecentEvent>,
    /// Items the user has interacted with (sorted keys), for the seen-filter.
    seen: Vec<u64>,
    /// Insertion order of `seen`, to forget the oldest past `max_seen`.
    seen_order: VecDeque<u64>,
    /// Decayed interest per category, all decayed to `taste_ts`.
    pub taste: Vec<(u16, f32)>,
    pub taste_ts: i64,
    pub demographics: Demographics,
}

impl UserState {
    /// Bytes this state holds: the struct and what its collections
    /// allocated (for the user store's memory gauge).
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<UserState>()
            + self.recent.capacity() * std::mem::size_of::<RecentEvent>()
            + (self.seen.capacity() + self.seen_order.capacity()) * std::mem::size_of::<u64>()
            + self.taste.capacity() * std::mem::size_of::<(u16, f32)>()
    }

    pub fn new(demographics: Demographics) -> Self {
        UserState {
            demographics,
            ..Default::default()
        }
    }

    /// Applies one event. `categories` are the item's categories. Events
    /// may arrive slightly out of order online; the state stays consistent
    /// (recent stays sorted by time, decay never runs backwards).
    pub fn apply(
        &mut self,
        item: u64,
        categories: &[u16],
        ts: i64,
        kind: EventKind,
        value: f32,
        p: &StateParams,
    ) {
        let strength = event_strength(kind, value);
        self.events = self.events.saturating_add(1);
        self.strength_sum += strength;
        self.first_ts = Some(self.first_ts.map_or(ts, |f| f.min(ts)));
        self.last_ts = Some(self.last_ts.map_or(ts, |l| l.max(ts)));

        // recent: one entry per item, the latest occurrence wins
        if let Some(pos) = self.recent.iter().position(|r| r.item == item) {
            let old = self.recent.remove(pos).expect("position is in range");
            if old.ts > ts {
                // a late duplicate of an item already seen later: keep the later one
                self.recent.insert(pos, old);
                self.touch_taste(categories, ts, strength, p);
                return;
            }
        }
        let ev = RecentEvent {
            item,
            ts,
            kind,
            strength,
        };
        let at = self
            .recent
            .iter()
            .rposition(|r| r.ts <= ts)
            .map_or(0, |i| i + 1);
        self.recent.insert(at, ev);
        while self.recent.len() > p.recent_len {
            self.recent.pop_front();
        }

        if let Err(at) = self.seen.binary_search(&item) {
            self.seen.insert(at, item);
            self.seen_order.push_back(item);
            while self.seen_order.len() > p.max_seen {
                if let Some(old) = self.seen_order.pop_front() {
                    if let Ok(i) = self.seen.binary_search(&old) {
                        self.seen.remove(i);
                    }
                }
            }
        }
        self.touch_taste(categories, ts, strength, p);
    }

    fn touch_taste(&mut self, categories: &[u16], ts: i64, strength: f32, p: &StateParams) {
        if ts > self.taste_ts {
            let f = decay(ts - self.taste_ts, p.taste_half_life_s);
            for t in &mut self.taste {
                t.1 *= f;
            }
            self.taste_ts = ts;
        }
        // an event older than taste_ts counts with its own decay
        let w = strength * decay(self.taste_ts - ts, p.taste_half_life_s);
        for &c in categories {
            match self.taste.iter_mut().find(|t| t.0 == c) {
                Some(t) => t.1 += w,
                None => self.taste.push((c, w)),
            }
        }
        self.taste.sort_by_key(|t| t.0);
    }

    pub fn has_seen(&self, item: u64) -> bool {
        self.seen.binary_search(&item).is_ok()
    }

    /// Seen items, sorted by key.
    pub fn seen(&self) -> &[u64] {
        &self.seen
    }

    /// Taste per category decayed to `now`, normalised to sum 1 (empty when
    /// the user has no categorised events).
    pub fn taste_at(&self, now: i64, p: &StateParams) -> Vec<(u16, f32)> {
        let f = if now > self.taste_ts {
            decay(now - self.taste_ts, p.taste_half_life_s)
        } else {
            1.0
        };
        let total: f32 = self.taste.iter().map(|t| t.1 * f).sum();
        if total <= 0.0 || !total.is_finite() {
            return Vec::new();
        }
        self.taste
            .iter()
            .map(|&(c, v)| (c, v * f / total))
            .collect()
    }
}

/// 0.5 ^ (dt / half_life); dt <= 0 gives 1.
pub(crate) fn decay(dt: i64, half_life_s: f64) -> f32 {
    if dt <= 0 || half_life_s <= 0.0 {
        return 1.0;
    }
    (-(dt as f64) * std::f64::consts::LN_2 / half_life_s).exp() as f32
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p() -> StateParams {
        StateParams {
            recent_len: 3,
            taste_half_life_s: 100.0,
            max_seen: 4,
        }
    }

    #[test]
    fn recent_keeps_latest_distinct_items_in_time_order() {
        let mut s = UserState::default();
        for (item, ts) in [(1, 10), (2, 20), (1, 30), (3, 25), (4, 40)] {
            s.apply(item, &[], ts, EventKind::View, 1.0, &p());
        }
        let items: Vec<u64> = s.recent.iter().map(|r| r.item).collect();
        // 1 moved to its later time; 3 arrived late but is ordered by time; cap 3
        assert_eq!(items, vec![3, 1, 4]);
        assert_eq!(s.events, 5);
        assert_eq!((s.first_ts, s.last_ts), (Some(10), Some(40)));
        assert!(s.has_seen(2) && s.has_seen(4) && !s.has_seen(9));
    }

    #[test]
    fn seen_forgets_oldest_past_cap() {
        let mut s = UserState::default();
        for i in 1..=6u64 {
            s.apply(i, &[], i as i64, EventKind::View, 1.0, &p());
        }
        assert_eq!(s.seen(), &[3, 4, 5, 6]);
    }

    #[test]
    fn taste_decays_with_half_life() {
        let mut s = UserState::default();
        s.apply(1, &[0], 0, EventKind::Click, 2.0, &p());
        s.apply(2, &[1], 100, EventKind::Click, 2.0, &p());
        // category 0 has halved once by t=100
        let t = s.taste_at(100, &p());
        assert_eq!(t.len(), 2);
        assert!((t[0].1 - 1.0 / 3.0).abs() < 1e-5, "{t:?}");
        assert!((t[1].1 - 2.0 / 3.0).abs() < 1e-5);
        // a late event counts with its own decay
        let mut late = s.clone();
        late.apply(3, &[0], 0, EventKind::Click, 2.0, &p());
        let t = late.taste_at(100, &p());
        assert!((t[0].1 - 0.5).abs() < 1e-5, "{t:?}");
    }

    #[test]
    fn strength_rules() {
        assert_eq!(event_strength(EventKind::Rate, 5.0), 1.0);
        assert_eq!(event_strength(EventKind::Purchase, 0.0), 6.0);
        assert_eq!(event_strength(EventKind::Click, 3.5), 3.5);
        assert_eq!(event_strength(EventKind::View, f32::NAN), 1.0);
    }
}
