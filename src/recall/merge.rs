//! Merging recall paths: dedup, per-path minimum and maximum quotas within
//! a total budget, and provenance (every path that found an item, at what
//! rank), which the ranker uses as features.

use crate::features::{RecallPath, RecallProvenance};
use crate::ids::{KeyMap, KeySet};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathQuota {
    /// Slots this path is guaranteed (if it has that many new items).
    pub min: usize,
    /// Most items this path may contribute.
    pub max: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MergeConfig {
    /// Total candidates after the merge.
    pub budget: usize,
    /// Indexed by `RecallPath as usize`.
    pub quotas: [PathQuota; 5],
}

impl Default for MergeConfig {
    fn default() -> Self {
        let q = |min, max| PathQuota { min, max };
        MergeConfig {
            budget: 300,
            // ann, itemcf, popular, fresh, rules
            quotas: [q(100, 300), q(100, 300), q(20, 100), q(10, 50), q(10, 100)],
        }
    }
}

/// One path's answer, best first.
#[derive(Debug, Clone, PartialEq)]
pub struct PathResult {
    pub path: RecallPath,
    pub items: Vec<(u64, f32)>,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub key: u64,
    pub prov: RecallProvenance,
}

/// Merges path results into at most `cfg.budget` unique candidates. First
/// every path gets its minimum, in path order; then paths take turns, best
/// remaining item first, until the budget is spent or each path is
/// exhausted or at its maximum.
pub fn merge(paths: &[PathResult], cfg: &MergeConfig) -> Vec<Candidate> {
    let mut prov: KeyMap<RecallProvenance> = KeyMap::default();
    for p in paths {
        for (rank, &(key, score)) in p.items.iter().enumerate() {
            let e = prov.entry(key).or_default();
            e.set(p.path, rank as u32);
            if p.path == RecallPath::ItemCf && e.itemcf_score.is_none() {
                e.itemcf_score = Some(score);
            }
        }
    }
    let mut taken: Vec<u64> = Vec::with_capacity(cfg.budget);
    let mut is_taken = KeySet::with_capacity_and_hasher(cfg.budget * 2, Default::default());
    let mut count = vec![0usize; paths.len()];
    let mut next = vec![0usize; paths.len()];
    let quota = |p: &PathResult| cfg.quotas[p.path as usize];

    // take path i's next untaken item; false when it has none left
    let mut take_next = |i: usize, taken: &mut Vec<u64>, count: &mut Vec<usize>| -> bool {
        let items = &paths[i].items;
        while next[i] < items.len() {
            let key = items[next[i]].0;
            next[i] += 1;
            if is_taken.insert(key) {
                taken.push(key);
                count[i] += 1;
                return true;
            }
        }
        false
    };

    for i in 0..paths.len() {
        let min = quota(&paths[i]).min.min(quota(&paths[i]).max);
        while count[i] < min && taken.len() < cfg.budget && take_next(i, &mut taken, &mut count) {}
    }
    let mut progress = true;
    while taken.len() < cfg.budget && progress {
        progress = false;
        for i in 0..paths.len() {
            if taken.len() >= cfg.budget {
                break;
            }
            if count[i] < quota(&paths[i]).max && take_next(i, &mut taken, &mut count) {
                progress = true;
            }
        }
    }
    taken
        .into_iter()
        .map(|key| Candidate {
            key,
            prov: prov[&key],
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path(p: RecallPath, keys: &[u64]) -> PathResult {
        PathResult {
            path: p,
            items: keys.iter().map(|&k| (k, 1.0)).collect(),
        }
    }

    fn cfg(budget: usize, quotas: [(usize, usize); 5]) -> MergeConfig {
        MergeConfig {
            budget,
            quotas: quotas.map(|(min, max)| PathQuota { min, max }),
        }
    }

    #[test]
    fn dedup_with_provenance_of_every_path() {
        let paths = [
            path(RecallPath::Ann, &[1, 2, 3]),
            path(RecallPath::ItemCf, &[3, 4]),
        ];
        let got = merge(&paths, &cfg(10, [(0, 10); 5]));
        let keys: Vec<u64> = got.iter().map(|c| c.key).collect();
        assert_eq!(keys, vec![1, 3, 2, 4]);
        let c3 = got.iter().find(|c| c.key == 3).unwrap();
        assert_eq!(c3.prov.rank[RecallPath::Ann as usize], Some(2));
        assert_eq!(c3.prov.rank[RecallPath::ItemCf as usize], Some(0));
        assert_eq!(c3.prov.itemcf_score, Some(1.0));
    }

    #[test]
    fn minimums_are_honoured_before_round_robin_and_maximums_cap() {
        let ann: Vec<u64> = (100..200).collect();
        let paths = [
            path(RecallPath::Ann, &ann),
            path(RecallPath::Popular, &[1, 2, 3, 4, 5]),
            path(RecallPath::Fresh, &[7, 8, 9]),
        ];
        let mut c = cfg(6, [(0, 10); 5]);
        c.quotas[RecallPath::Fresh as usize] = PathQuota { min: 2, max: 2 };
        c.quotas[RecallPath::Popular as usize] = PathQuota { min: 1, max: 10 };
        let keys: Vec<u64> = merge(&paths, &c).iter().map(|x| x.key).collect();
        // mins: popular 1, fresh 7 8; then round robin ann/popular (fresh at max)
        assert_eq!(keys, vec![1, 7, 8, 100, 2, 101]);
    }

    #[test]
    fn budget_bounds_and_empty_paths() {
        let paths = [path(RecallPath::Ann, &[]), path(RecallPath::Rules, &[5, 6])];
        assert_eq!(merge(&paths, &cfg(1, [(3, 3); 5])).len(), 1);
        assert!(merge(&[], &MergeConfig::default()).is_empty());
    }
}
