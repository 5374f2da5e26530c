//! One shard replica's data: the ANN index and the vectors it was built
//! from, keyed by item key.

use crate::bundle::LoadedShard;
use crate::ids::KeyMap;
use std::sync::atomic::{AtomicU64, Ordering};

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
    vectors: Vec<f32>,
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
        // usearch widens the beam to k when k is larger
        let index = ShardIndex {
            shard: loaded.shard,
            dim,
            index: loaded.index,
            rows,
            vectors: loaded.vectors.into_vec(),
            searches: AtomicU64::new(0),
            upserts: 0,
            deletes: 0,
        };
        if expansion_search > 0 {
            index.set_expansion_search(expansion_search);
        }
        index
    }

    /// Changes the search beam (usearch's ef) of this replica's index.
    pub fn set_expansion_search(&self, expansion_search: usize) {
        self.index.change_expansion_search(expansion_search.max(1));
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
        let r = *self.rows.get(&key)? as usize;
        Some(&self.vectors[r * self.dim..(r + 1) * self.dim])
    }

    /// Top-`k` keys by inner product with `query` among keys `keep` allows.
    /// A query of the wrong dimension finds nothing rather than failing the
    /// request: the caller validated it already.
    pub fn search(
        &self,
        query: &[f32],
        k: usize,
        keep: &(dyn Fn(u64) -> bool + Sync),
    ) -> Result<Vec<(u64, f32)>, ShardError> {
        self.searches.fetch_add(1, Ordering::Relaxed);
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
        // computes on rounded vectors: 48 dot products cost next to nothing
        // against the search, and every path then sees the same score.
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
            match self.rows.get(key) {
                Some(&r) => {
                    let r = r as usize;
                    self.vectors[r * self.dim..(r + 1) * self.dim].copy_from_slice(v);
                }
                None => {
                    self.rows
                        .insert(*key, (self.vectors.len() / self.dim.max(1)) as u32);
                    self.vectors.extend_from_slice(v);
                }
            }
            self.upserts += 1;
        }
        Ok(())
    }

    /// Removes items; returns how many existed.
    pub fn delete(&mut self, keys: &[u64]) -> Result<usize, ShardError> {
        let mut n = 0;
        for key in keys {
            if self.rows.remove(key).is_some() {
                self.index.remove(*key).map_err(|e| ShardError::Index {
                    shard: self.shard,
                    reason: e.to_string(),
                })?;
                n += 1;
                self.deletes += 1;
            }
        }
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
