//! `KeyedVectors`: item vectors keyed by item key, stored as one flat
//! buffer — what a shard hands back with its hits and what the coordinator
//! reads features and similarities from.
//!
//! Why flat: a request carries a few hundred vectors; one `Vec<f32>` per
//! vector was an allocation and a free each on the hot path, and the wire
//! form (`ShardSearchResponse.vectors`) is flat already.
//!
//! Owns: the layout and its length checks. Must not touch: where vectors
//! come from (the shard index) or what they mean.

use crate::ids::KeyMap;

/// Rows of `dim` floats, each with its item key; looked up by key once
/// `index` has been called (or built by `VectorTable`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyedVectors {
    dim: usize,
    keys: Vec<u64>,
    data: Vec<f32>,
}

/// Why a flat buffer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{keys} keys with dimension {dim} need {} floats, got {floats}", keys * dim)]
pub struct LayoutError {
    pub keys: usize,
    pub dim: usize,
    pub floats: usize,
}

impl KeyedVectors {
    /// Room for `rows` vectors of `dim` floats.
    pub fn with_capacity(dim: usize, rows: usize) -> Self {
        KeyedVectors {
            dim,
            keys: Vec::with_capacity(rows),
            data: Vec::with_capacity(rows * dim),
        }
    }

    /// From the wire form: `data` holds `keys.len()` rows of `dim` floats.
    pub fn from_flat(dim: usize, keys: Vec<u64>, data: Vec<f32>) -> Result<Self, LayoutError> {
        if data.len() != keys.len() * dim || (dim == 0 && !keys.is_empty()) {
            return Err(LayoutError {
                keys: keys.len(),
                dim,
                floats: data.len(),
            });
        }
        Ok(KeyedVectors { dim, keys, data })
    }

    /// Appends one vector; a vector of another dimension is refused
    /// (`false`). The first vector sets the dimension of an empty set made
    /// with dimension 0.
    pub fn push(&mut self, key: u64, v: &[f32]) -> bool {
        if self.keys.is_empty() && self.dim == 0 {
            self.dim = v.len();
        }
        if v.len() != self.dim || v.is_empty() {
            return false;
        }
        self.keys.push(key);
        self.data.extend_from_slice(v);
        true
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// (key, vector) in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &[f32])> + '_ {
        self.keys
            .iter()
            .copied()
            .zip(self.data.chunks_exact(self.dim.max(1)))
    }

    /// The wire form: (dimension, keys, flat data).
    pub fn into_parts(self) -> (usize, Vec<u64>, Vec<f32>) {
        (self.dim, self.keys, self.data)
    }
}

/// Several shards' `KeyedVectors` gathered for one request, looked up by
/// key. The first vector seen for a key wins (replicas of one shard hold
/// the same vector).
#[derive(Debug, Default)]
pub struct VectorTable {
    dim: usize,
    rows: KeyMap<u32>,
    data: Vec<f32>,
}

impl VectorTable {
    /// Adds every vector of `v` whose key is new and whose dimension
    /// matches the table's (the first non-empty set fixes it).
    pub fn absorb(&mut self, v: KeyedVectors) {
        if v.is_empty() {
            return;
        }
        if self.rows.is_empty() && self.dim == 0 {
            self.dim = v.dim;
        }
        if v.dim != self.dim {
            return;
        }
        self.rows.reserve(v.len());
        if self.data.is_empty() && self.rows.is_empty() {
            // the common case, one shard's answer: take its buffer as is
            for (row, &key) in v.keys.iter().enumerate() {
                self.rows.entry(key).or_insert(row as u32);
            }
            self.data = v.data;
            return;
        }
        for (key, vector) in v.iter() {
            if let std::collections::hash_map::Entry::Vacant(e) = self.rows.entry(key) {
                e.insert((self.data.len() / self.dim) as u32);
                self.data.extend_from_slice(vector);
            }
        }
    }

    pub fn get(&self, key: u64) -> Option<&[f32]> {
        let r = *self.rows.get(&key)? as usize;
        self.data.get(r * self.dim..(r + 1) * self.dim)
    }

    pub fn contains(&self, key: u64) -> bool {
        self.rows.contains_key(&key)
    }

    pub fn len(&self) -> usize {
        self.rows.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(dim: usize, rows: &[(u64, f32)]) -> KeyedVectors {
        let mut v = KeyedVectors::with_capacity(dim, rows.len());
        for &(k, x) in rows {
            assert!(v.push(k, &vec![x; dim]));
        }
        v
    }

    #[test]
    fn push_refuses_a_second_dimension_and_from_flat_checks_lengths() {
        let mut v = KeyedVectors::default();
        assert!(v.push(1, &[1.0, 2.0]));
        assert!(!v.push(2, &[1.0]));
        assert!(!v.push(3, &[]));
        assert_eq!(v.len(), 1);
        assert_eq!(v.iter().collect::<Vec<_>>(), vec![(1, &[1.0f32, 2.0][..])]);
        assert!(KeyedVectors::from_flat(2, vec![1, 2], vec![0.0; 3]).is_err());
        assert!(KeyedVectors::from_flat(0, vec![1], vec![]).is_err());
        let ok = KeyedVectors::from_flat(2, vec![1, 2], vec![0.0, 1.0, 2.0, 3.0]).unwrap();
        assert_eq!(ok.iter().nth(1), Some((2, &[2.0f32, 3.0][..])));
        assert_eq!(ok.into_parts(), (2, vec![1, 2], vec![0.0, 1.0, 2.0, 3.0]));
    }

    #[test]
    fn a_table_finds_every_shards_vectors_and_keeps_the_first_of_a_key() {
        let mut t = VectorTable::default();
        t.absorb(set(3, &[(1, 1.0), (2, 2.0)]));
        t.absorb(set(3, &[(2, 9.0), (3, 3.0)]));
        // another dimension cannot be mixed in
        t.absorb(set(2, &[(4, 4.0)]));
        t.absorb(KeyedVectors::default());
        assert_eq!(t.len(), 3);
        assert_eq!(t.get(1), Some(&[1.0f32; 3][..]));
        assert_eq!(t.get(2), Some(&[2.0f32; 3][..]));
        assert_eq!(t.get(3), Some(&[3.0f32; 3][..]));
        assert!(t.get(4).is_none() && !t.contains(4) && t.contains(3));
    }

    #[test]
    fn a_single_set_with_a_repeated_key_keeps_its_first_row() {
        let mut t = VectorTable::default();
        t.absorb(set(2, &[(7, 1.0), (7, 5.0), (8, 2.0)]));
        assert_eq!(t.get(7), Some(&[1.0f32; 2][..]));
        assert_eq!(t.get(8), Some(&[2.0f32; 2][..]));
    }
}
