//! The last step of ranking: diversity (maximal marginal relevance) and an
//! exploration share. A recommender that only ever shows its top guesses
//! never learns whether it was wrong, so a configurable fraction of slots
//! goes to items from just below the top, drawn with a per-request seed so
//! the same request always gets the same answer.

use super::error::RerankConfigError;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RerankConfig {
    /// MMR trade-off in [0, 1): 0 = pure relevance.
    pub diversity: f32,
    /// Fraction of the k slots given to exploration, in [0, 1).
    pub exploration: f32,
    /// Exploration items are drawn from ranks k .. k + explore_pool.
    pub explore_pool: usize,
}

impl Default for RerankConfig {
    fn default() -> Self {
        RerankConfig {
            diversity: 0.0,
            exploration: 0.0,
            explore_pool: 50,
        }
    }
}

impl RerankConfig {
    pub fn validate(&self) -> Result<(), RerankConfigError> {
        if !(0.0..1.0).contains(&self.diversity) {
            return Err(RerankConfigError::Diversity(self.diversity));
        }
        if !(0.0..1.0).contains(&self.exploration) {
            return Err(RerankConfigError::Exploration(self.exploration));
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Ranked {
    /// Index into the scored input.
    pub index: usize,
    pub score: f32,
    pub explored: bool,
}

/// Picks `k` of `scores` (any order). `sim(a, b)` is the similarity of
/// inputs a and b in [0, 1] (only called when diversity > 0).
pub fn rerank(
    scores: &[f32],
    k: usize,
    cfg: &RerankConfig,
    sim: &dyn Fn(usize, usize) -> f32,
    seed: u64,
) -> Vec<Ranked> {
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let k = k.min(order.len());
    let n_explore = ((k as f32) * cfg.exploration).floor() as usize;
    let n_exploit = k - n_explore;

    // relevance normalised to [0, 1] over the pool MMR looks at
    let pool = &order[..order.len().min(k.max(1) * 3)];
    let picked: Vec<usize> = if cfg.diversity > 0.0 && !pool.is_empty() {
        mmr(scores, pool, n_exploit, cfg.diversity, sim)
    } else {
        order[..n_exploit].to_vec()
    };
    let mut out: Vec<Ranked> = picked
        .iter()
        .map(|&i| Ranked {
            index: i,
            score: scores[i],
            explored: false,
        })
        .collect();

    if n_explore > 0 {
        let mut rng = Rng::new(seed);
        let rest: Vec<usize> = order
            .iter()
            .copied()
            .filter(|i| !picked.contains(i))
            .take(cfg.explore_pool.max(n_explore))
            .collect();
        let mut rest = rest;
        rng.shuffle(&mut rest);
        for &i in rest.iter().take(n_explore) {
            // exploration slots are spread over the list, never the first
            let pos = 1 + rng.usize_below(out.len().max(1));
            out.insert(
                pos.min(out.len()),
                Ranked {
                    index: i,
                    score: scores[i],
                    explored: true,
                },
            );
        }
    }
    out
}

fn mmr(
    scores: &[f32],
    pool: &[usize],
    n: usize,
    lambda: f32,
    sim: &dyn Fn(usize, usize) -> f32,
) -> Vec<usize> {
    let hi = scores[pool[0]];
    let lo = scores[*pool.last().expect("pool is not empty")];
    let span = if hi > lo { hi - lo } else { 1.0 };
    let rel = |i: usize| (scores[i] - lo) / span;
    let mut chosen: Vec<usize> = Vec::with_capacity(n);
    let mut max_sim = vec![0f32; pool.len()];
    let mut used = vec![false; pool.len()];
    while chosen.len() < n.min(pool.len()) {
        let mut best = None;
        let mut best_v = f32::NEG_INFINITY;
        for (p, &i) in pool.iter().enumerate() {
            if used[p] {
                continue;
            }
            let v = (1.0 - lambda) * rel(i) - lambda * max_sim[p];
            if v > best_v {
                best_v = v;
                best = Some(p);
            }
        }
        let Some(p) = best else { break };
        used[p] = true;
        let i = pool[p];
        chosen.push(i);
        for (q, &j) in pool.iter().enumerate() {
            if !used[q] {
                max_sim[q] = max_sim[q].max(sim(i, j));
            }
        }
    }
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pure_relevance_is_a_sort() {
        let got = rerank(
            &[0.1, 0.9, 0.5],
            2,
            &RerankConfig::default(),
            &|_, _| 0.0,
            1,
        );
        assert_eq!(got.iter().map(|r| r.index).collect::<Vec<_>>(), vec![1, 2]);
        assert!(got.iter().all(|r| !r.explored));
    }

    #[test]
    fn diversity_skips_near_duplicates() {
        // 0 and 1 are twins; 2 is different and slightly less relevant
        let scores = [1.0, 0.99, 0.9, 0.0];
        let sim = |a: usize, b: usize| {
            if a.min(b) == 0 && a.max(b) == 1 {
                1.0
            } else {
                0.0
            }
        };
        let cfg = RerankConfig {
            diversity: 0.5,
            ..Default::default()
        };
        let got: Vec<usize> = rerank(&scores, 2, &cfg, &sim, 1)
            .iter()
            .map(|r| r.index)
            .collect();
        assert_eq!(got, vec![0, 2]);
    }

    #[test]
    fn exploration_is_seeded_and_bounded() {
        let scores: Vec<f32> = (0..100).map(|i| 100.0 - i as f32).collect();
        let cfg = RerankConfig {
            diversity: 0.0,
            exploration: 0.2,
            explore_pool: 20,
        };
        let a = rerank(&scores, 10, &cfg, &|_, _| 0.0, 7);
        let b = rerank(&scores, 10, &cfg, &|_, _| 0.0, 7);
        assert_eq!(a, b);
        assert_eq!(a.len(), 10);
        let explored: Vec<&Ranked> = a.iter().filter(|r| r.explored).collect();
        assert_eq!(explored.len(), 2);
        // explored items come from just below the top 8 and never take slot 0
        assert!(explored.iter().all(|r| (8..28).contains(&r.index)));
        assert!(!a[0].explored);
        let c = rerank(&scores, 10, &cfg, &|_, _| 0.0, 8);
        assert_ne!(a, c);
        assert!(RerankConfig {
            exploration: 1.0,
            ..cfg
        }
        .validate()
        .is_err());
        let bad = RerankConfig {
            diversity: 1.5,
            ..cfg
        };
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "diversity must be in [0, 1), got 1.5"
        );
    }
}
