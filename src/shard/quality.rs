//! ANN quality: how much of the exact top-k a sharded approximate search
//! finds, measured the way the coordinator queries (each shard asked for
//! `per_shard_k`, the answers merged, the best `k` kept).
//!
//! Plain code over `ShardIndex`es; `funnel bundle ann-recall` runs it on a
//! bundle so an operator can check an index before serving it.

use super::{SearchFilter, ShardError, ShardIndex};
use rayon::prelude::*;
use serde::Serialize;
use std::collections::HashSet;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct RecallCheck {
    pub queries: usize,
    pub items: usize,
    pub shards: usize,
    pub k: usize,
    pub per_shard_k: usize,
    /// Mean over queries of |ANN top-k ∩ exact top-k| / |exact top-k|, for
    /// the search serving runs (funnel's walk of the graph).
    pub recall: f64,
    /// The worst single query.
    pub min_recall: f64,
    /// Warm time of one query's approximate search over every shard,
    /// shards one after another on one thread: the best of
    /// `TIMED_PASSES` back-to-back passes over all queries, after one
    /// untimed pass.
    pub ann_ms_per_query: f64,
    /// The same queries through usearch's own search of the same index at
    /// the same ef, measured the same way (the reference for the walk).
    pub usearch_recall: f64,
    pub usearch_ms_per_query: f64,
    /// Cold time of one query's approximate search: one pass over
    /// queries never searched before (as serving sees them: every request
    /// a different user), shards one after another on one thread.
    pub ann_cold_ms_per_query: f64,
    /// The same for usearch's own search, over another set of unseen
    /// queries (so neither path runs on caches the other warmed).
    pub usearch_cold_ms_per_query: f64,
    /// Unseen queries timed per path in the cold pass.
    pub cold_queries: usize,
    /// Mean time of one query's exact scan (all shards, in parallel).
    pub exact_ms_per_query: f64,
}

/// Timed passes over the queries; the fastest one is reported (the others
/// include whatever else the machine was doing).
pub const TIMED_PASSES: usize = 3;

/// Top-`k` keys by dot product, best first, ties by key.
fn top_k(mut scored: Vec<(u64, f32)>, k: usize) -> Vec<(u64, f32)> {
    scored.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    scored.truncate(k);
    scored
}

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// The exact top-`k` over every shard by scanning all vectors.
pub fn exact_top_k(indexes: &[ShardIndex], query: &[f32], k: usize) -> Vec<(u64, f32)> {
    let scored = indexes
        .par_iter()
        .flat_map_iter(|ix| {
            let mut part: Vec<(u64, f32)> =
                ix.items().map(|(key, v)| (key, dot(query, v))).collect();
            part = top_k(part, k);
            part.into_iter()
        })
        .collect();
    top_k(scored, k)
}

/// One shard's unfiltered search: funnel's walk or usearch's own.
pub type ShardSearch = fn(&ShardIndex, &[f32], usize) -> Result<Vec<(u64, f32)>, ShardError>;

fn walk(ix: &ShardIndex, q: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
    ix.search(q, k, &SearchFilter::default())
}

fn library(ix: &ShardIndex, q: &[f32], k: usize) -> Result<Vec<(u64, f32)>, ShardError> {
    ix.search_usearch(q, k, &|_| true)
}

/// The approximate top-`k`: each shard's best `per_shard_k`, merged.
pub fn ann_top_k(
    indexes: &[ShardIndex],
    query: &[f32],
    k: usize,
    per_shard_k: usize,
) -> Result<Vec<(u64, f32)>, ShardError> {
    sharded_top_k(indexes, walk, query, k, per_shard_k)
}

fn sharded_top_k(
    indexes: &[ShardIndex],
    search: ShardSearch,
    query: &[f32],
    k: usize,
    per_shard_k: usize,
) -> Result<Vec<(u64, f32)>, ShardError> {
    let mut all = Vec::new();
    for ix in indexes {
        all.extend(search(ix, query, per_shard_k)?);
    }
    Ok(top_k(all, k))
}

/// Recall against `truth` and warm time per query of one search path.
struct Measured {
    recall: f64,
    min_recall: f64,
    ms_per_query: f64,
}

fn measure(
    indexes: &[ShardIndex],
    search: ShardSearch,
    queries: &[Vec<f32>],
    truth: &[HashSet<u64>],
    k: usize,
    per_shard_k: usize,
) -> Result<Measured, ShardError> {
    // the untimed pass: warms caches and the thread's scratch, and its
    // answers are the ones scored (the timed passes repeat them exactly)
    let mut sum = 0.0;
    let mut min = f64::INFINITY;
    let mut counted = 0usize;
    for (q, want) in queries.iter().zip(truth) {
        let got = sharded_top_k(indexes, search, q, k, per_shard_k)?;
        if want.is_empty() {
            continue;
        }
        let r = got.iter().filter(|x| want.contains(&x.0)).count() as f64 / want.len() as f64;
        sum += r;
        min = min.min(r);
        counted += 1;
    }
    let mut best = f64::INFINITY;
    for _ in 0..TIMED_PASSES {
        let t = Instant::now();
        for q in queries {
            std::hint::black_box(sharded_top_k(indexes, search, q, k, per_shard_k)?);
        }
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(Measured {
        recall: if counted == 0 {
            0.0
        } else {
            sum / counted as f64
        },
        min_recall: if counted == 0 { 0.0 } else { min },
        ms_per_query: if queries.is_empty() {
            0.0
        } else {
            best * 1000.0 / queries.len() as f64
        },
    })
}

/// Time per query of one pass over `queries`, each searched once.
fn time_once(
    indexes: &[ShardIndex],
    search: ShardSearch,
    queries: &[Vec<f32>],
    k: usize,
    per_shard_k: usize,
) -> Result<f64, ShardError> {
    if queries.is_empty() {
        return Ok(0.0);
    }
    let t = Instant::now();
    for q in queries {
        std::hint::black_box(sharded_top_k(indexes, search, q, k, per_shard_k)?);
    }
    Ok(t.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64)
}

/// Measures recall@k of the sharded ANN search against the exact scan, and
/// its warm single-thread time, for funnel's walk and for usearch's own
/// search of the same indexes; then each path's cold time over its own
/// half of `unseen` (queries not among `queries`).
pub fn ann_recall(
    indexes: &[ShardIndex],
    queries: &[Vec<f32>],
    unseen: &[Vec<f32>],
    k: usize,
    per_shard_k: usize,
) -> Result<RecallCheck, ShardError> {
    let t = Instant::now();
    let truth: Vec<HashSet<u64>> = queries
        .iter()
        .map(|q| {
            exact_top_k(indexes, q, k)
                .into_iter()
                .map(|x| x.0)
                .collect()
        })
        .collect();
    let exact_s = t.elapsed().as_secs_f64();
    let walked = measure(indexes, walk, queries, &truth, k, per_shard_k)?;
    let lib = measure(indexes, library, queries, &truth, k, per_shard_k)?;
    let (cold_walk, cold_lib) = unseen.split_at(unseen.len() / 2);
    let ann_cold = time_once(indexes, walk, cold_walk, k, per_shard_k)?;
    let lib_cold = time_once(
        indexes,
        library,
        &cold_lib[..cold_walk.len()],
        k,
        per_shard_k,
    )?;
    Ok(RecallCheck {
        queries: truth.iter().filter(|t| !t.is_empty()).count(),
        items: indexes.iter().map(|i| i.len()).sum(),
        shards: indexes.len(),
        k,
        per_shard_k,
        recall: walked.recall,
        min_recall: walked.min_recall,
        ann_ms_per_query: walked.ms_per_query,
        usearch_recall: lib.recall,
        usearch_ms_per_query: lib.ms_per_query,
        ann_cold_ms_per_query: ann_cold,
        usearch_cold_ms_per_query: lib_cold,
        cold_queries: cold_walk.len(),
        exact_ms_per_query: if queries.is_empty() {
            0.0
        } else {
            exact_s * 1000.0 / queries.len() as f64
        },
    })
}

/// What `funnel bundle ann-recall` measures.
#[derive(Debug, Clone)]
pub struct BundleCheckOptions {
    pub queries: usize,
    /// Unseen queries each path is timed on once (the cold figure).
    pub cold_queries: usize,
    pub k: usize,
    /// usearch ef values at query time to measure, one report each (the
    /// node's `shards.expansion_search` is the one that serves).
    pub expansion_search: Vec<usize>,
    /// Index parameters to rebuild every shard's index with, from the
    /// bundle's vectors, before measuring (to try parameters without
    /// retraining); none given measures the indexes the bundle holds.
    pub rebuild: IndexOverrides,
    pub seed: u64,
}

/// Index parameters that replace the bundle's in a rebuild.
#[derive(Debug, Clone, Default)]
pub struct IndexOverrides {
    pub connectivity: Option<u32>,
    pub expansion_add: Option<u32>,
    pub quantization: Option<String>,
}

impl IndexOverrides {
    /// `base` with the overrides applied, or None when nothing is overridden.
    pub fn apply(&self, base: &crate::bundle::IndexParams) -> Option<crate::bundle::IndexParams> {
        if self.connectivity.is_none()
            && self.expansion_add.is_none()
            && self.quantization.is_none()
        {
            return None;
        }
        let mut p = base.clone();
        p.connectivity = self.connectivity.unwrap_or(p.connectivity);
        p.expansion_add = self.expansion_add.unwrap_or(p.expansion_add);
        if let Some(q) = &self.quantization {
            p.quantization = q.clone();
        }
        Some(p)
    }
}

/// One measured setting of `funnel bundle ann-recall`.
#[derive(Debug, Clone, Serialize)]
pub struct BundleCheck {
    pub expansion_search: usize,
    /// The index parameters measured (the bundle's, or the rebuild's).
    pub index: crate::bundle::IndexParams,
    /// Wall seconds spent rebuilding the indexes (shards in parallel), if
    /// they were rebuilt.
    pub rebuild_seconds: Option<f64>,
    #[serde(flatten)]
    pub check: RecallCheck,
}

/// Loads every shard of the bundle at `dir` and measures the ANN recall
/// the coordinator would get with `k` candidates, once per ef. Queries are
/// user vectors sampled from the bundle (the queries serving really sends),
/// or item vectors when the bundle holds no users.
pub fn check_bundle(
    dir: &std::path::Path,
    opts: &BundleCheckOptions,
) -> Result<Vec<BundleCheck>, String> {
    use crate::bundle::{Bundle, LoadedShard, OpenCheck};
    let bundle = Bundle::open(dir, &OpenCheck::default()).map_err(|e| e.to_string())?;
    let m = bundle.manifest();
    let mut loaded = Vec::new();
    for s in 0..m.shard_count {
        loaded.push(bundle.load_shard(s).map_err(|e| e.to_string())?);
    }
    let mut params = m.index.clone();
    let mut rebuild_seconds = None;
    if let Some(p) = &opts.rebuild.apply(&m.index) {
        p.validate().map_err(|e| e.to_string())?;
        let t = Instant::now();
        let per_shard_threads = crate::bundle::threads_per_shard(0, m.shard_count);
        loaded = loaded
            .into_par_iter()
            .map(|l| LoadedShard::build(l.shard, l.keys, l.vectors, p, per_shard_threads))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| e.to_string())?;
        rebuild_seconds = Some(t.elapsed().as_secs_f64());
        params = p.clone();
    }
    let indexes: Vec<ShardIndex> = loaded
        .into_iter()
        .map(|l| ShardIndex::from_loaded(l, params.expansion_search as usize))
        .collect();
    let (_, users) = bundle.users().map_err(|e| e.to_string())?;
    let mut candidates: Vec<Vec<f32>> = if users.cols() == m.dimension as usize && users.rows() > 0
    {
        (0..users.rows()).map(|r| users.row(r).to_vec()).collect()
    } else {
        indexes
            .iter()
            .flat_map(|ix| ix.items().map(|(_, v)| v.to_vec()).collect::<Vec<_>>())
            .collect()
    };
    if candidates.is_empty() {
        return Err(format!(
            "bundle {} holds no vectors to query with",
            dir.display()
        ));
    }
    let mut rng = crate::rng::Rng::new(opts.seed);
    rng.shuffle(&mut candidates);
    // the first `queries` are measured for recall and warm time; the next
    // ones, never searched before, for cold time (fewer if the bundle
    // holds fewer vectors)
    let warm_n = opts.queries.max(1).min(candidates.len());
    candidates.truncate(warm_n + 2 * opts.cold_queries);
    let unseen = candidates.split_off(warm_n);
    let per_shard = super::per_shard_k(opts.k, indexes.len());
    let efs = if opts.expansion_search.is_empty() {
        vec![params.expansion_search as usize]
    } else {
        opts.expansion_search.clone()
    };
    efs.into_iter()
        .map(|ef| {
            indexes.iter().for_each(|ix| ix.set_expansion_search(ef));
            let check = ann_recall(&indexes, &candidates, &unseen, opts.k, per_shard)
                .map_err(|e| e.to_string())?;
            Ok(BundleCheck {
                expansion_search: ef,
                index: params.clone(),
                rebuild_seconds,
                check,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::{IndexParams, LoadedShard};
    use crate::ids::shard_of;
    use crate::matrix::Matrix;
    use crate::rng::Rng;

    fn shards(n_items: usize, dim: usize, n_shards: u32, seed: u64) -> Vec<ShardIndex> {
        shards_with(n_items, dim, n_shards, seed, &IndexParams::default())
    }

    fn shards_with(
        n_items: usize,
        dim: usize,
        n_shards: u32,
        seed: u64,
        params: &IndexParams,
    ) -> Vec<ShardIndex> {
        let mut rng = Rng::new(seed);
        let mut parts: Vec<(Vec<u64>, Vec<f32>)> =
            vec![(Vec::new(), Vec::new()); n_shards as usize];
        let mut keys: Vec<u64> = (0..n_items).map(|_| rng.next_u64()).collect();
        keys.sort_unstable();
        keys.dedup();
        for k in keys {
            let p = &mut parts[shard_of(k, n_shards) as usize];
            p.0.push(k);
            p.1.extend((0..dim).map(|_| rng.normal() as f32));
        }
        parts
            .into_iter()
            .enumerate()
            .map(|(s, (keys, flat))| {
                let rows = keys.len();
                let m = Matrix::from_vec(rows, dim, flat).unwrap();
                let loaded = LoadedShard::build(s as u32, keys, m, params, 1).unwrap();
                ShardIndex::from_loaded(loaded, 128)
            })
            .collect()
    }

    #[test]
    fn exact_search_is_the_true_top_k() {
        let ix = shards(300, 8, 3, 1);
        let q = vec![1.0, -0.5, 0.25, 0.0, 2.0, 0.0, -1.0, 0.5];
        let got = exact_top_k(&ix, &q, 10);
        let mut all: Vec<(u64, f32)> = ix
            .iter()
            .flat_map(|i| i.items().map(|(k, v)| (k, dot(&q, v))).collect::<Vec<_>>())
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1));
        assert_eq!(got.len(), 10);
        assert_eq!(
            got.iter().map(|x| x.0).collect::<Vec<_>>(),
            all[..10].iter().map(|x| x.0).collect::<Vec<_>>()
        );
    }

    #[test]
    fn hnsw_finds_nearly_all_of_the_exact_top_k() {
        let ix = shards(4000, 16, 4, 2);
        let mut rng = Rng::new(9);
        let queries: Vec<Vec<f32>> = (0..30)
            .map(|_| (0..16).map(|_| rng.normal() as f32).collect())
            .collect();
        let unseen: Vec<Vec<f32>> = (0..21)
            .map(|_| (0..16).map(|_| rng.normal() as f32).collect())
            .collect();
        let r = ann_recall(&ix, &queries, &unseen, 50, 50).unwrap();
        assert_eq!(r.queries, 30);
        assert_eq!(r.items, 4000);
        assert!(r.recall > 0.9 && r.recall <= 1.0, "{r:?}");
        // each path is timed cold on its own half of the unseen queries
        assert_eq!(r.cold_queries, 10);
        assert!(r.ann_cold_ms_per_query > 0.0 && r.usearch_cold_ms_per_query > 0.0);
        // asking each shard for too few misses the items of crowded shards
        let starved = ann_recall(&ix, &queries, &[], 50, 5).unwrap();
        assert_eq!(
            (starved.cold_queries, starved.ann_cold_ms_per_query),
            (0, 0.0)
        );
        assert!(starved.recall <= 20.0 / 50.0 + 1e-9, "{starved:?}");
    }

    #[test]
    fn a_half_precision_index_scores_its_hits_exactly() {
        let params = IndexParams {
            quantization: "f16".into(),
            ..IndexParams::default()
        };
        let half = shards_with(3000, 16, 3, 4, &params);
        let full = shards(3000, 16, 3, 4);
        let mut rng = Rng::new(5);
        let queries: Vec<Vec<f32>> = (0..20)
            .map(|_| (0..16).map(|_| rng.normal() as f32).collect())
            .collect();
        for q in &queries {
            for ix in &half {
                let hits = ix.search(q, 20, &SearchFilter::default()).unwrap();
                assert!(!hits.is_empty());
                for w in hits.windows(2) {
                    assert!(w[0].1 >= w[1].1, "hits are best first");
                }
                for (key, score) in hits {
                    let v = ix.vector(key).unwrap();
                    assert_eq!(score.to_bits(), crate::linalg::dot(q, v).to_bits());
                }
            }
        }
        let r_half = ann_recall(&half, &queries, &[], 30, 30).unwrap();
        let r_full = ann_recall(&full, &queries, &[], 30, 30).unwrap();
        assert!(
            r_half.recall >= r_full.recall - 0.05,
            "f16 {r_half:?} vs f32 {r_full:?}"
        );
    }
}
