//! Compressed sparse rows: the user x item interaction matrix and its
//! transpose for training, and item -> neighbour lists for item-CF.
//!
//! Owns: `Csr` (construction from triples, transpose, row access). Must not
//! touch: files or model logic.

use serde::{Deserialize, Serialize};

/// Why raw parts do not form a `Csr`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CsrError {
    #[error("csr: {offsets} offsets for {rows} rows")]
    OffsetCount { offsets: usize, rows: usize },
    #[error("csr: indices and values differ in length")]
    LengthMismatch,
    #[error("csr: offsets do not span the entries")]
    Span,
    #[error("csr: offsets decrease")]
    Decreasing,
    #[error("csr: a column index is >= {n_cols}")]
    ColumnOutOfRange { n_cols: usize },
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Csr {
    n_rows: usize,
    n_cols: usize,
    /// Row r spans `indices[offsets[r]..offsets[r + 1]]`.
    offsets: Vec<u64>,
    indices: Vec<u32>,
    values: Vec<f32>,
}

impl Csr {
    /// Builds from (row, col, value) triples. Duplicate (row, col) pairs are
    /// summed; columns within a row are sorted ascending.
    pub fn from_triples(n_rows: usize, n_cols: usize, triples: &[(u32, u32, f32)]) -> Self {
        let mut counts = vec![0u64; n_rows + 1];
        for &(r, c, _) in triples {
            debug_assert!((r as usize) < n_rows && (c as usize) < n_cols);
            counts[r as usize + 1] += 1;
        }
        for i in 0..n_rows {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut idx = vec![0u32; triples.len()];
        let mut val = vec![0f32; triples.len()];
        for &(r, c, v) in triples {
            let p = fill[r as usize] as usize;
            idx[p] = c;
            val[p] = v;
            fill[r as usize] += 1;
        }
        // sort each row by column and merge duplicates
        let mut offsets = Vec::with_capacity(n_rows + 1);
        let mut indices = Vec::with_capacity(triples.len());
        let mut values = Vec::with_capacity(triples.len());
        offsets.push(0u64);
        let mut row: Vec<(u32, f32)> = Vec::new();
        for r in 0..n_rows {
            let (s, e) = (counts[r] as usize, counts[r + 1] as usize);
            row.clear();
            row.extend(idx[s..e].iter().copied().zip(val[s..e].iter().copied()));
            row.sort_by_key(|&(c, _)| c);
            for &(c, v) in &row {
                if indices.len() as u64 > *offsets.last().unwrap_or(&0)
                    && *indices.last().unwrap_or(&u32::MAX) == c
                {
                    *values.last_mut().expect("values parallel to indices") += v;
                } else {
                    indices.push(c);
                    values.push(v);
                }
            }
            offsets.push(indices.len() as u64);
        }
        Csr {
            n_rows,
            n_cols,
            offsets,
            indices,
            values,
        }
    }

    /// Builds from per-row lists that are already sorted by column and free of
    /// duplicates (e.g. top-M neighbour lists).
    pub fn from_rows(n_cols: usize, rows: Vec<Vec<(u32, f32)>>) -> Self {
        let mut offsets = Vec::with_capacity(rows.len() + 1);
        let total: usize = rows.iter().map(|r| r.len()).sum();
        let mut indices = Vec::with_capacity(total);
        let mut values = Vec::with_capacity(total);
        offsets.push(0);
        for r in &rows {
            for &(c, v) in r {
                indices.push(c);
                values.push(v);
            }
            offsets.push(indices.len() as u64);
        }
        Csr {
            n_rows: rows.len(),
            n_cols,
            offsets,
            indices,
            values,
        }
    }

    /// Rebuilds from raw parts, checking that they are consistent (input may
    /// come from disk; see `CsrError`).
    pub fn from_parts(
        n_rows: usize,
        n_cols: usize,
        offsets: Vec<u64>,
        indices: Vec<u32>,
        values: Vec<f32>,
    ) -> Result<Self, CsrError> {
        if offsets.len() != n_rows + 1 {
            return Err(CsrError::OffsetCount {
                offsets: offsets.len(),
                rows: n_rows,
            });
        }
        if indices.len() != values.len() {
            return Err(CsrError::LengthMismatch);
        }
        if offsets.first() != Some(&0) || *offsets.last().unwrap_or(&0) != indices.len() as u64 {
            return Err(CsrError::Span);
        }
        if offsets.windows(2).any(|w| w[0] > w[1]) {
            return Err(CsrError::Decreasing);
        }
        if indices.iter().any(|&c| c as usize >= n_cols) {
            return Err(CsrError::ColumnOutOfRange { n_cols });
        }
        Ok(Csr {
            n_rows,
            n_cols,
            offsets,
            indices,
            values,
        })
    }

    pub fn n_rows(&self) -> usize {
        self.n_rows
    }

    pub fn n_cols(&self) -> usize {
        self.n_cols
    }

    pub fn nnz(&self) -> usize {
        self.indices.len()
    }

    pub fn row_indices(&self, r: usize) -> &[u32] {
        let (s, e) = self.span(r);
        &self.indices[s..e]
    }

    pub fn row_values(&self, r: usize) -> &[f32] {
        let (s, e) = self.span(r);
        &self.values[s..e]
    }

    pub fn row_len(&self, r: usize) -> usize {
        let (s, e) = self.span(r);
        e - s
    }

    /// Iterates (col, value) of row r.
    pub fn row(&self, r: usize) -> impl Iterator<Item = (u32, f32)> + '_ {
        self.row_indices(r)
            .iter()
            .copied()
            .zip(self.row_values(r).iter().copied())
    }

    fn span(&self, r: usize) -> (usize, usize) {
        (self.offsets[r] as usize, self.offsets[r + 1] as usize)
    }

    pub fn offsets(&self) -> &[u64] {
        &self.offsets
    }

    pub fn indices(&self) -> &[u32] {
        &self.indices
    }

    pub fn values(&self) -> &[f32] {
        &self.values
    }

    /// The transpose (item x user from user x item).
    pub fn transpose(&self) -> Csr {
        let mut counts = vec![0u64; self.n_cols + 1];
        for &c in &self.indices {
            counts[c as usize + 1] += 1;
        }
        for i in 0..self.n_cols {
            counts[i + 1] += counts[i];
        }
        let mut fill = counts.clone();
        let mut indices = vec![0u32; self.indices.len()];
        let mut values = vec![0f32; self.values.len()];
        // rows visited in order, so each transposed row comes out sorted
        for r in 0..self.n_rows {
            for (c, v) in self.row(r) {
                let p = fill[c as usize] as usize;
                indices[p] = r as u32;
                values[p] = v;
                fill[c as usize] += 1;
            }
        }
        Csr {
            n_rows: self.n_cols,
            n_cols: self.n_rows,
            offsets: counts,
            indices,
            values,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triples_sorted_merged_and_transposed() {
        let m = Csr::from_triples(2, 3, &[(1, 2, 1.0), (0, 1, 2.0), (1, 0, 3.0), (1, 2, 0.5)]);
        assert_eq!(m.nnz(), 3);
        assert_eq!(m.row_indices(1), &[0, 2]);
        assert_eq!(m.row_values(1), &[3.0, 1.5]);
        let t = m.transpose();
        assert_eq!((t.n_rows(), t.n_cols()), (3, 2));
        assert_eq!(t.row(2).collect::<Vec<_>>(), vec![(1, 1.5)]);
        assert_eq!(t.row(1).collect::<Vec<_>>(), vec![(0, 2.0)]);
    }

    #[test]
    fn from_parts_rejects_inconsistent_input() {
        assert_eq!(
            Csr::from_parts(1, 2, vec![0, 1], vec![5], vec![1.0]).unwrap_err(),
            CsrError::ColumnOutOfRange { n_cols: 2 }
        );
        assert_eq!(
            Csr::from_parts(2, 2, vec![0, 1], vec![0], vec![1.0]).unwrap_err(),
            CsrError::OffsetCount {
                offsets: 2,
                rows: 2
            }
        );
        assert!(Csr::from_parts(1, 2, vec![0, 1], vec![1], vec![1.0]).is_ok());
    }
}
