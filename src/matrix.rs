//! Dense row-major `f32` matrices: embedding tables (one row per user or
//! item) and small square systems.
//!
//! Owns: `Matrix` and its row access. Must not touch: files (the bundle
//! serialises it) or training logic.

use serde::{Deserialize, Serialize};

/// `Matrix::from_vec` was given a number of values other than
/// rows x cols.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("matrix {rows}x{cols} needs {} values, got {len}", rows.saturating_mul(*cols))]
pub struct ShapeError {
    pub rows: usize,
    pub cols: usize,
    /// How many values were given.
    pub len: usize,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Matrix {
    rows: usize,
    cols: usize,
    data: Vec<f32>,
}

impl Matrix {
    pub fn zeros(rows: usize, cols: usize) -> Self {
        Matrix {
            rows,
            cols,
            data: vec![0.0; rows * cols],
        }
    }

    /// Wraps `data` (row-major). Errors when the length does not match.
    pub fn from_vec(rows: usize, cols: usize, data: Vec<f32>) -> Result<Self, ShapeError> {
        if rows.checked_mul(cols) != Some(data.len()) {
            return Err(ShapeError {
                rows,
                cols,
                len: data.len(),
            });
        }
        Ok(Matrix { rows, cols, data })
    }

    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn cols(&self) -> usize {
        self.cols
    }

    pub fn row(&self, r: usize) -> &[f32] {
        &self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn row_mut(&mut self, r: usize) -> &mut [f32] {
        &mut self.data[r * self.cols..(r + 1) * self.cols]
    }

    pub fn as_slice(&self) -> &[f32] {
        &self.data
    }

    pub fn as_mut_slice(&mut self) -> &mut [f32] {
        &mut self.data
    }

    pub fn into_vec(self) -> Vec<f32> {
        self.data
    }

    /// Rows as mutable chunks, for parallel per-row updates.
    pub fn rows_mut(&mut self) -> std::slice::ChunksExactMut<'_, f32> {
        self.data.chunks_exact_mut(self.cols.max(1))
    }

    /// Appends one row; its length must equal `cols`.
    pub fn push_row(&mut self, row: &[f32]) {
        assert_eq!(
            row.len(),
            self.cols,
            "row length must equal the matrix width"
        );
        self.data.extend_from_slice(row);
        self.rows += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_shape() {
        let mut m = Matrix::from_vec(2, 3, vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(m.row(1), &[4., 5., 6.]);
        m.row_mut(0)[2] = 9.0;
        m.push_row(&[7., 8., 9.]);
        assert_eq!(m.rows(), 3);
        assert_eq!(m.as_slice()[2], 9.0);
    }

    #[test]
    fn wrong_length_is_a_shape_error() {
        let err = Matrix::from_vec(2, 2, vec![0.0; 3]).unwrap_err();
        assert_eq!(
            err,
            ShapeError {
                rows: 2,
                cols: 2,
                len: 3
            }
        );
        assert_eq!(err.to_string(), "matrix 2x2 needs 4 values, got 3");
        // a shape whose size overflows is refused, not a panic
        let err = Matrix::from_vec(usize::MAX, 2, Vec::new()).unwrap_err();
        assert_eq!((err.rows, err.cols, err.len), (usize::MAX, 2, 0));
    }
}
