//! Popularity, trending and freshness: item counters built by replaying
//! the log through `features::ItemStats`, and the ranked lists the popular,
//! fresh and category-rule recall paths read.

use crate::dataset::Interaction;
use crate::features::{event_strength, ItemStats};
use serde::{Deserialize, Serialize};

/// Replays interactions (any order; time order is the natural one) into
/// per-item counters.
pub fn replay_item_stats(n_items: usize, interactions: &[Interaction]) -> Vec<ItemStats> {
    let mut stats = vec![ItemStats::default(); n_items];
    for x in interactions {
        stats[x.item as usize].apply(x.ts, event_strength(x.kind, x.value));
    }
    stats
}

/// Ranked item lists (dense indices) as of `as_of`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemLists {
    pub as_of: i64,
    /// Trending and all-time popular, interleaved, no duplicates.
    pub popular: Vec<u32>,
    /// Newest available items first.
    pub fresh: Vec<u32>,
    /// Per category: its items by trending score.
    pub by_category: Vec<Vec<u32>>,
}

/// What the lists need to know about each item.
pub struct ItemFacts<'a> {
    pub stats: &'a [ItemStats],
    /// When each item became available: `created_at` or, failing that, its
    /// first interaction; None = unknown.
    pub available_at: &'a [Option<i64>],
    pub categories: &'a [Vec<u16>],
    pub n_categories: usize,
}

pub fn build_lists(f: &ItemFacts, as_of: i64, len: usize, per_category: usize) -> ItemLists {
    let n = f.stats.len();
    let by = |key: &dyn Fn(usize) -> f32| -> Vec<u32> {
        let mut v: Vec<u32> = (0..n as u32)
            .filter(|&i| f.stats[i as usize].count > 0.0)
            .collect();
        v.sort_by(|&a, &b| key(b as usize).total_cmp(&key(a as usize)).then(a.cmp(&b)));
        v
    };
    let trend = by(&|i| f.stats[i].trending_at(as_of));
    let count = by(&|i| f.stats[i].count);
    let mut popular = Vec::with_capacity(len);
    let mut seen = std::collections::HashSet::new();
    for (a, b) in trend.iter().zip(count.iter()) {
        for &i in [a, b] {
            if popular.len() < len && seen.insert(i) {
                popular.push(i);
            }
        }
    }
    let mut fresh: Vec<u32> = (0..n as u32)
        .filter(|&i| f.available_at[i as usize].is_some_and(|t| t <= as_of))
        .collect();
    fresh.sort_by(|&a, &b| {
        f.available_at[b as usize]
            .cmp(&f.available_at[a as usize])
            .then(a.cmp(&b))
    });
    fresh.truncate(len);
    let mut by_category = vec![Vec::new(); f.n_categories];
    for &i in &trend {
        for &c in &f.categories[i as usize] {
            if let Some(list) = by_category.get_mut(c as usize) {
                if list.len() < per_category {
                    list.push(i);
                }
            }
        }
    }
    ItemLists {
        as_of,
        popular,
        fresh,
        by_category,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataset::EventKind;

    #[test]
    fn lists_from_a_small_log() {
        let x = |item, ts| Interaction {
            user: 0,
            item,
            ts,
            kind: EventKind::View,
            value: 1.0,
        };
        let day = 86_400;
        // item 0: 3 old events; item 1: 1 recent; item 2: 2 mid; item 3: none
        let log = [
            x(0, 0),
            x(0, 1),
            x(0, 2),
            x(2, 10 * day),
            x(2, 10 * day),
            x(1, 20 * day),
        ];
        let stats = replay_item_stats(4, &log);
        assert_eq!(stats[0].count, 3.0);
        let available = [Some(0), Some(19 * day), None, Some(30 * day)];
        let cats = vec![vec![0], vec![0, 1], vec![1], vec![1]];
        let f = ItemFacts {
            stats: &stats,
            available_at: &available,
            categories: &cats,
            n_categories: 2,
        };
        let l = build_lists(&f, 20 * day, 10, 10);
        // trending at day 20: item 1 (fresh event) > item 2 > item 0; count: 0 > 2 > 1
        assert_eq!(l.popular, vec![1, 0, 2]);
        // item 3 is not yet available; item 2 has no known availability
        assert_eq!(l.fresh, vec![1, 0]);
        assert_eq!(l.by_category, vec![vec![1, 0], vec![1, 2]]);
    }
}
