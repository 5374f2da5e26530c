//! One shard replica's data: the ANN index and the vectors it was built
//! from, keyed by item key.
//!
//! Searches walk `graph`, a flat copy of usearch's HNSW graph (see
//! `graph.rs` for why), plus an exact scan of the few items upserted since
//! that copy was taken; usearch's index stays the structure upserts and
//! deletes change, and the copy is taken again once enough has changed.

use super::graph::Graph;
use super::messages::SearchFilter;
use crate::bundle::LoadedShard;
use crate::ids::KeyMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

/// Changes absorbed (exactly scanned upserts plus retired graph nodes)
/// before the graph is copied again: at least this many, or this fraction
/// of the shard. The copy costs a walk over usearch's adjacency lists
/// (tens of milliseconds per 100k items, measured in BENCHMARKS.md) and is
/// taken under the shard's write lock, so it should be rare; the exact scan
/// of changed items costs one dot product each per search.
const REEXPORT_MIN_CHANGES: usize = 256;
const REEXPORT_FRACTION: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("shard {shard}: vector has dimension {got}, the model's is {want}")]
    Dimension { shard: u32, got: usize, want: usize },
    #[error("shard {shard}: vector for item key {key:#x} has a non-finite value")]
    NonFinite { shard: u32, key: u64 },
    #[error("shard {shard}: index error: {reason}")]
    Index { shard: u32, reason: String },
}

#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ShardStats {
    pub shard: u32,
    pub items: usize,
    pub dimension: usize,
    pub upserts: u64,
    pub deletes: u64,
    pub searches: u64,
}

pub struct ShardIndex {
    shard: u32,
    dim: usize,
    index: usearch::Index,
    /// key -> row in `vectors`
    rows: KeyMap<u32>,
    /// row -> key (rows of deleted items keep their old key)
    row_keys: Vec<u64>,
    vectors: Vec<f32>,
    /// The walkable copy of `index`'s graph; slot = row. None only when
    /// the copy failed (searches then go through usearch).
    graph: Option<Graph>,
    /// Graph slots whose node no longer matches the item (deleted, or its
    /// vector replaced): walked through, never returned.
    retired: Vec<bool>,
    retired_count: usize,
    /// Rows upserted since the graph was copied, searched exactly.
    changed: Vec<u32>,
    /// Searches go through usearch's own search and no graph copy is kept
    /// (`shards.search = "usearch"`).
    library_only: bool,
    expansion_search: AtomicUsize,
    searches: AtomicU64,
    upserts: u64,
    deletes: u64,
}

impl ShardIndex {
    /// A replica serving `loaded`, searching with beam `expansion_search`
    /// (0 keeps the index's own, i.e. the bundle's).
    pub fn from_loaded(loaded: LoadedShard, expansion_search: usize) -> Self {
        let dim = loaded.vectors.cols();
        let rows = loaded
            .keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();
        let ef = loaded.index.expansion_search();
        let mut index = ShardIndex {
            shard: loaded.shard,
            dim,
            index: loaded.index,
            rows,
            row_keys: loaded.keys,
            // the walk re-scores hits from these rows at random
            vectors: super::huge::copied(loaded.vectors.as_slice()),
            graph: None,
            retired: Vec::new(),
            retired_count: 0,
            changed: Vec::new(),
            library_only: false,
            expansion_search: AtomicUsize::new(ef.max(1)),
            searches: AtomicU64::new(0),
            upserts: 0,
            deletes: 0,
        };
        if expansion_search > 0 {
            index.set_expansion_search(expansion_search);
        }
        index.copy_graph();
        index
    }

    /// Takes a fresh copy of usearch's graph over every current row and
    /// forgets the changes the old copy needed beside it. On failure the
    /// shard searches through usearch (slower, same answers).
    fn copy_graph(&mut self) {
        let started = std::time::Instant::now();
        let rows = &self.rows;
        let keys = &self.row_keys;
        let live = |slot: usize| rows.get(&keys[slot]) == Some(&(slot as u32));
        let slot_of = |key: u64| rows.get(&key).copied();
        match Graph::export(&self.index, keys, &live, &slot_of) {
            Ok(mut g) => {
                // an f16 index says the operator traded precision for memory
                // traffic: the walk reads f16 too (hits are re-scored in f32)
                if self.index.scalar_kind() == usearch::ScalarKind::F16 {
                    g.add_half_rows(&self.vectors, self.dim);
                }
                tracing::debug!(
                    shard_id = self.shard,
                    slots = g.slots(),
                    ms = started.elapsed().as_secs_f64() * 1e3,
                    "copied the shard's HNSW graph"
                );
                self.retired = (0..g.slots()).map(|s| !live(s)).collect();
                self.retired_count = self.retired.iter().filter(|&&r| r).count();
                self.graph = Some(g);
            }
            Err(e) => {
                tracing::warn!(shard_id = self.shard, error = %e, "could not copy the shard's HNSW graph; searching through usearch");
                self.graph = None;
                self.retired.clear();
                self.retired_count = 0;
            }
        }
        self.changed.clear();
    }

    /// From now on searches go through usearch's own search and the graph
    /// copy is dropped, never taken again (`shards.search = "usearch"`).
    pub fn search_through_usearch(&mut self) {
        self.library_only = true;
        self.graph = None;
        self.retired.clear();
        self.retired_count = 0;
        self.changed.clear();
    }

    /// Copies the graph again once the changes beside it are many.
    fn maybe_copy_graph(&mut self) {
        let Some(g) = &self.graph else { return };
        let limit = REEXPORT_MIN_CHANGES.max(g.slots() / REEXPORT_FRACTION);
        if self.changed.len() + self.retired_count > limit {
            self.copy_graph();
        }
    }

    /// Marks graph slot `row` as no longer matching its item.
    fn retire(&mut self, row: u32) {
        if let Some(r) = self.retired.get_mut(row as usize) {
            if !*r {
                *r = true;
                self.retired_count += 1;
            }
        }
    }

    /// Changes the search beam (HNSW ef) of this replica.
    pub fn set_expansion_search(&self, expansion_search: usize) {
        let ef = expansion_search.max(1);
        self.expansion_search.store(ef, Ordering::Relaxed);
        self.index.change_expansion_search(ef);
    }

    /// The search beam (HNSW ef) in use.
    pub fn expansion_search(&self) -> usize {
        self.expansion_search.load(Ordering::Relaxed)
    }

    /// Whether searches walk funnel's copy of the graph (false: usearch's
    /// own search, after a failed copy or when configured).
    pub fn walks_own_graph(&self) -> bool {
        self.graph.is_some()
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    pub fn dimension(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    pub fn vector(&self, key: u64) -> Option<&[f32]> {
        Some(self.row_vector(*self.rows.get(&key)?))
    }

    /// Top-`k` keys by inner product with `query` among those `filter`
    /// allows, best first (ties by key). A query of the wrong dimension
    /// finds nothing rather than failing the request: the caller validated
    /// it already.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<(u64, f32)>, ShardError> {
        Ok(self
            .search_rows(query, k, filter)?
            .into_iter()
            .map(|(key, score, _)| (key, score))
            .collect())
    }

    /// `search` with each hit's row, whose vector `row_vector` reads
    /// without a lookup by key (serving sends the hits' vectors back).
    pub fn search_rows(
        &self,
        query: &[f32],
        k: usize,
        filter: &SearchFilter,
    ) -> Result<Vec<(u64, f32, u32)>, ShardError> {
        // the few excluded keys as slots, once: the walk then never needs a
        // node's key unless a rule beyond exclusion does
        let mut excluded: Vec<u32> = filter
            .exclude
            .iter()
            .filter_map(|k| self.rows.get(k).copied())
            .collect();
        excluded.sort_unstable();
        let by_key = |key: u64| filter.allows_beyond_exclude(key);
        let key_rule: Option<&(dyn Fn(u64) -> bool + Sync)> =
            filter.checks_keys().then_some(&by_key);
        self.search_by(query, k, &excluded, key_rule, &|key| filter.allows(key))
    }

    /// The same search with the rule as one predicate on the key (tools and
    /// the trainer).
    pub fn search_where(
        &self,
        query: &[f32],
        k: usize,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32)>, ShardError> {
        Ok(self
            .search_by(query, k, &[], Some(keep), keep)?
            .into_iter()
            .map(|(key, score, _)| (key, score))
            .collect())
    }

    /// The vector in `row` (a row `search_rows` returned).
    pub fn row_vector(&self, row: u32) -> &[f32] {
        let r = row as usize;
        &self.vectors[r * self.dim..(r + 1) * self.dim]
    }

    /// The walk, refusing graph slots in `excluded` (sorted) and keys
    /// `key_rule` refuses; `keep` is the whole rule on a key, for the items
    /// upserted since the graph was copied and for usearch's search.
    fn search_by(
        &self,
        query: &[f32],
        k: usize,
        excluded: &[u32],
        key_rule: Option<&(dyn Fn(u64) -> bool + Sync)>,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32, u32)>, ShardError> {
        self.searches.fetch_add(1, Ordering::Relaxed);
        if query.len() != self.dim || k == 0 || self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let Some(graph) = &self.graph else {
            let hits = self.search_usearch(query, k, keep)?;
            return Ok(hits
                .into_iter()
                .filter_map(|(key, score)| Some((key, score, *self.rows.get(&key)?)))
                .collect());
        };
        let allow = |slot: u32| {
            !self.retired[slot as usize]
                && (excluded.is_empty() || excluded.binary_search(&slot).is_err())
                && key_rule.is_none_or(|rule| rule(self.row_keys[slot as usize]))
        };
        let mut found = Vec::with_capacity(k + self.changed.len());
        graph.search(
            &self.vectors,
            self.dim,
            query,
            k,
            self.expansion_search(),
            &allow,
            &mut found,
        );
        // graph slot = row of the vector table
        let mut hits: Vec<(u64, f32, u32)> = found
            .iter()
            .map(|&(slot, score)| (self.row_keys[slot as usize], score, slot))
            .collect();
        // items upserted since the graph was copied: scored exactly
        for &row in &self.changed {
            let key = self.row_keys[row as usize];
            if keep(key) {
                hits.push((key, crate::linalg::dot(query, self.row_vector(row)), row));
            }
        }
        if !self.changed.is_empty() {
            hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            hits.truncate(k);
        }
        Ok(hits)
    }

    /// The same search through usearch's own `filtered_search`: the path
    /// when the graph copy failed, and the reference `funnel bundle
    /// ann-recall` measures the walk against.
    pub fn search_usearch(
        &self,
        query: &[f32],
        k: usize,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32)>, ShardError> {
        if query.len() != self.dim || k == 0 || self.rows.is_empty() {
            return Ok(Vec::new());
        }
        let m = self
            .index
            .filtered_search(query, k, |key: u64| keep(key))
            .map_err(|e| ShardError::Index {
                shard: self.shard,
                reason: e.to_string(),
            })?;
        // Scores come from the exact f32 vectors kept beside the index, not
        // from usearch's distance (1 - dot), which a quantized (f16) index
        // computes on rounded vectors: every path then sees the same score.
        let mut hits: Vec<(u64, f32)> = m
            .keys
            .iter()
            .zip(&m.distances)
            .map(|(&key, &d)| match self.vector(key) {
                Some(v) => (key, crate::linalg::dot(query, v)),
                None => (key, 1.0 - d),
            })
            .collect();
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        Ok(hits)
    }

    /// Adds or replaces items. All are checked first; a bad one changes nothing.
    pub fn upsert(&mut self, items: &[(u64, Vec<f32>)]) -> Result<(), ShardError> {
        for (key, v) in items {
            if v.len() != self.dim {
                return Err(ShardError::Dimension {
                    shard: self.shard,
                    got: v.len(),
                    want: self.dim,
                });
            }
            if v.iter().any(|x| !x.is_finite()) {
                return Err(ShardError::NonFinite {
                    shard: self.shard,
                    key: *key,
                });
            }
        }
        let need = self.index.size() + items.len();
        if need > self.index.capacity() {
            self.index
                .reserve((need * 2).max(64))
                .map_err(|e| ShardError::Index {
                    shard: self.shard,
                    reason: e.to_string(),
                })?;
        }
        let shard = self.shard;
        let err = |e: &dyn std::fmt::Display| ShardError::Index {
            shard,
            reason: e.to_string(),
        };
        for (key, v) in items {
            if self.index.contains(*key) {
                self.index.remove(*key).map_err(|e| err(&e))?;
            }
            self.index.add(*key, v).map_err(|e| err(&e))?;
            let row = match self.rows.get(key) {
                Some(&r) => {
                    let at = r as usize * self.dim;
                    self.vectors[at..at + self.dim].copy_from_slice(v);
                    self.retire(r);
                    r
                }
                None => {
                    let r = self.row_keys.len() as u32;
                    self.rows.insert(*key, r);
                    self.row_keys.push(*key);
                    self.vectors.extend_from_slice(v);
                    r
                }
            };
            if self.graph.is_some() && !self.changed.contains(&row) {
                self.changed.push(row);
            }
            self.upserts += 1;
        }
        self.maybe_copy_graph();
        Ok(())
    }

    /// Removes items; returns how many existed.
    pub fn delete(&mut self, keys: &[u64]) -> Result<usize, ShardError> {
        let mut n = 0;
        for key in keys {
            if let Some(row) = self.rows.remove(key) {
                self.index.remove(*key).map_err(|e| ShardError::Index {
                    shard: self.shard,
                    reason: e.to_string(),
                })?;
                self.retire(row);
                self.changed.retain(|&r| r != row);
                n += 1;
                self.deletes += 1;
            }
        }
        self.maybe_copy_graph();
        Ok(n)
    }

    /// Every live item with its vector, in no particular order.
    pub fn items(&self) -> impl Iterator<Item = (u64, &[f32])> + '_ {
        self.rows.iter().map(|(&k, &r)| {
            let r = r as usize;
            (k, &self.vectors[r * self.dim..(r + 1) * self.dim])
        })
    }

    pub fn stats(&self) -> ShardStats {
        ShardStats {
            shard: self.shard,
            items: self.rows.len(),
            dimension: self.dim,
            upserts: self.upserts,
            deletes: self.deletes,
            searches: self.searches.load(Ordering::Relaxed),
        }
    }

    /// blake3 over (key, vector) of every live item in key order: equal
    /// digests mean equal shard contents.
    pub fn digest(&self) -> String {
        let mut keys: Vec<u64> = self.rows.keys().copied().collect();
        keys.sort_unstable();
        let mut h = blake3::Hasher::new();
        for k in keys {
            h.update(&k.to_le_bytes());
            for v in self.vector(k).unwrap_or(&[]) {
                h.update(&v.to_le_bytes());
            }
        }
        h.finalize().to_hex().to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::IndexParams;
    use crate::matrix::Matrix;
    use crate::rng::Rng;
    use std::sync::Arc;

    const DIM: usize = 8;

    fn unit(rng: &mut Rng) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|_| rng.normal() as f32).collect();
        let n = crate::linalg::norm(&v);
        v.into_iter().map(|x| x / n).collect()
    }

    fn shard(n: usize, seed: u64) -> ShardIndex {
        let mut rng = Rng::new(seed);
        let keys: Vec<u64> = (0..n as u64).map(|i| 10 + i).collect();
        let flat: Vec<f32> = (0..n).flat_map(|_| unit(&mut rng)).collect();
        let m = Matrix::from_vec(n, DIM, flat).unwrap();
        let loaded = LoadedShard::build(0, keys, m, &IndexParams::default(), 1).unwrap();
        ShardIndex::from_loaded(loaded, 64)
    }

    /// The exact top-k of the shard's live items.
    fn exact(ix: &ShardIndex, q: &[f32], k: usize) -> Vec<u64> {
        let mut all: Vec<(u64, f32)> = ix
            .items()
            .map(|(key, v)| (key, crate::linalg::dot(q, v)))
            .collect();
        all.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        all.into_iter().take(k).map(|x| x.0).collect()
    }

    #[test]
    fn upserts_and_deletes_show_in_the_next_search_before_and_after_a_new_copy() {
        let mut ix = shard(2000, 1);
        assert!(ix.walks_own_graph());
        let mut rng = Rng::new(2);
        let q = unit(&mut rng);
        // a new item exactly on the query, and an old one moved onto it
        let moved = ix.search_where(&q, 50, &|_| true).unwrap()[40].0;
        ix.upsert(&[(99_999, q.clone()), (moved, q.clone())])
            .unwrap();
        let hits = ix.search_where(&q, 5, &|_| true).unwrap();
        let top: Vec<u64> = hits.iter().take(2).map(|h| h.0).collect();
        assert!(top.contains(&99_999) && top.contains(&moved), "{hits:?}");
        assert!(
            (hits[0].1 - 1.0).abs() < 1e-5,
            "exact score of the new vector"
        );
        assert_eq!(
            hits.iter().filter(|h| h.0 == moved).count(),
            1,
            "old copy never returned"
        );
        // deleted items are gone, the filter still applies to changed items
        let best_old = hits[2].0;
        ix.delete(&[99_999, best_old]).unwrap();
        let hits = ix.search_where(&q, 5, &|k| k != moved).unwrap();
        assert!(hits
            .iter()
            .all(|h| h.0 != 99_999 && h.0 != best_old && h.0 != moved));
        assert_eq!(hits.len(), 5);
        assert!(
            !ix.changed.is_empty(),
            "changes are held beside the old copy"
        );

        // enough changes to take a new copy: afterwards nothing is held beside it
        let batch: Vec<(u64, Vec<f32>)> =
            (0..400u64).map(|i| (50_000 + i, unit(&mut rng))).collect();
        ix.upsert(&batch).unwrap();
        assert!(
            ix.changed.is_empty() && ix.walks_own_graph(),
            "copied again"
        );
        assert_eq!(ix.graph.as_ref().unwrap().slots(), ix.row_keys.len());
        let mut recall = 0.0;
        for _ in 0..40 {
            let q = unit(&mut rng);
            let got: Vec<u64> = ix
                .search(&q, 10, &SearchFilter::default())
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect();
            assert!(got.iter().all(|k| *k != 99_999 && *k != best_old));
            let want = exact(&ix, &q, 10);
            recall += got.iter().filter(|k| want.contains(k)).count() as f64 / 10.0;
        }
        assert!(
            recall / 40.0 > 0.95,
            "recall after the new copy {}",
            recall / 40.0
        );
        // the moved item is found at its new place
        let hits = ix.search(&q, 3, &SearchFilter::default()).unwrap();
        assert_eq!(hits[0].0, moved);
    }

    #[test]
    fn the_walk_and_usearch_answer_alike() {
        let ix = shard(3000, 5);
        let mut rng = Rng::new(6);
        let mut same = 0usize;
        for _ in 0..30 {
            let q = unit(&mut rng);
            let walk: Vec<u64> = ix
                .search_where(&q, 10, &|k| k % 5 != 0)
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect();
            let lib: Vec<u64> = ix
                .search_usearch(&q, 10, &|k| k % 5 != 0)
                .unwrap()
                .iter()
                .map(|h| h.0)
                .collect();
            assert!(walk.iter().all(|k| k % 5 != 0));
            same += walk.iter().filter(|k| lib.contains(k)).count();
        }
        assert!(same >= 285, "{same} of 300 hits in common");
    }

    #[test]
    fn a_shard_told_to_search_through_usearch_keeps_no_copy_and_sees_its_writes() {
        let mut ix = shard(1000, 8);
        ix.search_through_usearch();
        assert!(!ix.walks_own_graph());
        let mut rng = Rng::new(9);
        let q = unit(&mut rng);
        // more changes than would take a new copy: none is taken
        let batch: Vec<(u64, Vec<f32>)> = (0..300u64)
            .map(|i| (70_000 + i, unit(&mut rng)))
            .chain([(99_999, q.clone())])
            .collect();
        ix.upsert(&batch).unwrap();
        assert!(!ix.walks_own_graph() && ix.changed.is_empty());
        let excluded = SearchFilter {
            exclude: Arc::new(vec![10, 11]),
            ..SearchFilter::default()
        };
        let hits = ix.search(&q, 5, &excluded).unwrap();
        assert_eq!(hits[0].0, 99_999, "{hits:?}");
        assert!((hits[0].1 - 1.0).abs() < 1e-5);
        ix.delete(&[99_999]).unwrap();
        let hits = ix.search(&q, 50, &excluded).unwrap();
        assert!(hits.iter().all(|h| ![99_999, 10, 11].contains(&h.0)));
        assert_eq!(hits.len(), 50);
    }

    #[test]
    fn search_rows_name_the_rows_holding_each_hits_vector() {
        let mut ix = shard(1500, 12);
        let mut rng = Rng::new(13);
        let q = unit(&mut rng);
        // one hit from the graph, one upserted beside it
        ix.upsert(&[(88_888, q.clone())]).unwrap();
        for usearch in [false, true] {
            if usearch {
                ix.search_through_usearch();
            }
            let found = ix.search_rows(&q, 20, &SearchFilter::default()).unwrap();
            assert_eq!(found.len(), 20);
            assert_eq!(found[0].0, 88_888);
            for (key, score, row) in found {
                assert_eq!(ix.row_vector(row), ix.vector(key).unwrap());
                let exact = crate::linalg::dot(&q, ix.vector(key).unwrap());
                assert!((score - exact).abs() < 1e-5, "{score} vs {exact}");
            }
        }
    }
}
