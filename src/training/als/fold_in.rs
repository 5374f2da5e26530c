//! Folding a new user into a trained ALS model: the user's row of an exact
//! user half-step with the item factors fixed, from item ids (`FoldIn`) or
//! from the item vectors themselves (`fold_in_from_vectors`, for a serving
//! node that holds only some items). Must not touch: the item factors.

use std::borrow::Borrow;

use super::solve::{solve_row_exact, ExactScratch, HalfStep};
use super::{confidence_excess, validate_params, weighted_preference, AlsError, AlsParams};
use crate::linalg::{self, Backend};
use crate::matrix::Matrix;
use crate::sparse::Csr;

/// Computes ALS user vectors for users the model has not seen, with the
/// item factors fixed: exactly the row an exact (`cg_steps = 0`) user
/// half-step would give. Precomputes `Y^T Y` once, so keep one per model.
/// `M` is any owner of the item factors: `&Matrix`, `Arc<Matrix>`, `Matrix`.
#[derive(Debug, Clone)]
pub struct FoldIn<M: Borrow<Matrix>> {
    item_factors: M,
    gram: Vec<f32>,
    alpha: f32,
    backend: Backend,
}

impl<M: Borrow<Matrix>> FoldIn<M> {
    pub fn new(item_factors: M, params: &AlsParams) -> Result<Self, AlsError> {
        validate_params(params)?;
        let items = item_factors.borrow();
        if items.cols() != params.factors {
            return Err(AlsError::FactorMismatch {
                expected: params.factors,
                got: items.cols(),
            });
        }
        let backend = Backend::detect();
        let gram = match backend {
            Backend::Avx2Fma(kern) => linalg::gram(kern, items, params.regularization),
            Backend::Portable(kern) => linalg::gram(kern, items, params.regularization),
        };
        Ok(FoldIn {
            item_factors,
            gram,
            alpha: params.alpha,
            backend,
        })
    }

    /// The user vector for interactions `(item index, raw strength)`.
    /// Repeated items are summed, as in `Csr::from_triples`. No
    /// interactions gives the zero vector.
    pub fn fold_in(&self, interactions: &[(u32, f32)]) -> Result<Vec<f32>, AlsError> {
        let item_factors = self.item_factors.borrow();
        let n_items = item_factors.rows();
        let mut sorted = interactions.to_vec();
        for &(item, value) in &sorted {
            if item as usize >= n_items {
                return Err(AlsError::ItemOutOfRange { item, n_items });
            }
            if !confidence_excess(value, self.alpha).is_finite() {
                return Err(AlsError::NonFiniteValue {
                    row: 0,
                    col: item,
                    value,
                });
            }
        }
        // stable, so duplicates are summed in input order like Csr does
        sorted.sort_by_key(|&(item, _)| item);
        let mut cols: Vec<u32> = Vec::with_capacity(sorted.len());
        let mut vals: Vec<f32> = Vec::with_capacity(sorted.len());
        for (item, value) in sorted {
            if cols.last() == Some(&item) {
                *vals.last_mut().expect("vals parallel to cols") += value;
            } else {
                cols.push(item);
                vals.push(value);
            }
        }
        if let Some((&col, &value)) = cols
            .iter()
            .zip(&vals)
            .find(|(_, v)| !confidence_excess(**v, self.alpha).is_finite())
        {
            return Err(AlsError::NonFiniteValue { row: 0, col, value });
        }
        let k = item_factors.cols();
        // only the row-independent fields matter for a single exact solve
        let empty = Csr::default();
        let step = HalfStep {
            conf: &empty,
            fixed: item_factors,
            gram: &self.gram,
            alpha: self.alpha,
            cg_steps: 0,
        };
        let mut x = vec![0f32; k];
        let mut scratch = ExactScratch::new(k);
        solve_row_exact(self.backend, &step, &cols, &vals, &mut x, &mut scratch)
            .map_err(|source| AlsError::NotPositiveDefinite { row: 0, source })?;
        Ok(x)
    }
}

/// Fold-in from the interacted items' vectors themselves, for a node that
/// holds only some item vectors (the serving side): `gram` is `Y^T Y` of
/// the model's whole item matrix (without regularisation), `items` the
/// user's (vector, raw strength) pairs. Solves the same system as
/// `FoldIn::fold_in`.
pub fn fold_in_from_vectors(
    gram: &[f32],
    regularization: f32,
    alpha: f32,
    items: &[(&[f32], f32)],
) -> Result<Vec<f32>, AlsError> {
    let k = (gram.len() as f64).sqrt() as usize;
    if k == 0 || k * k != gram.len() {
        return Err(AlsError::FactorMismatch {
            expected: k * k,
            got: gram.len(),
        });
    }
    let mut a: Vec<f64> = gram.iter().map(|&v| f64::from(v)).collect();
    for d in 0..k {
        a[d * k + d] += f64::from(regularization);
    }
    let mut b = vec![0f64; k];
    for (col, &(y, r)) in items.iter().enumerate() {
        if y.len() != k {
            return Err(AlsError::FactorMismatch {
                expected: k,
                got: y.len(),
            });
        }
        let excess = f64::from(confidence_excess(r, alpha));
        if !excess.is_finite() || y.iter().any(|v| !v.is_finite()) {
            return Err(AlsError::NonFiniteValue {
                row: 0,
                col: col as u32,
                value: r,
            });
        }
        let w = f64::from(weighted_preference(r, alpha));
        for i in 0..k {
            let yi = f64::from(y[i]);
            b[i] += w * yi;
            for j in 0..k {
                a[i * k + j] += excess * yi * f64::from(y[j]);
            }
        }
    }
    linalg::solve_spd_f64(&mut a, &mut b)
        .map_err(|source| AlsError::NotPositiveDefinite { row: 0, source })?;
    Ok(b.into_iter().map(|v| v as f32).collect())
}

/// One-off fold-in; see [`FoldIn`] (which amortises `Y^T Y` over calls).
pub fn fold_in_user(
    item_factors: &Matrix,
    items: &[(u32, f32)],
    params: &AlsParams,
) -> Result<Vec<f32>, AlsError> {
    FoldIn::new(item_factors, params)?.fold_in(items)
}
