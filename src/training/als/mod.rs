//! Implicit-feedback alternating least squares (Hu, Koren, Volinsky 2008),
//! solved per row by a few warm-started conjugate-gradient steps (Takács,
//! Pilászy, Tikk 2011) or, on request, exactly by Cholesky.
//!
//! Owns: `AlsParams`, `fit`, `AlsModel`, and folding a new user into a
//! trained model (`FoldIn`, `fold_in_user`). Must not touch: files, id maps,
//! global thread pools (it builds its own pool of `threads` threads).
//!
//! Model. For an observed entry with raw strength `r`:
//! preference `p = 1` if `r > 0` else `0` (a negative `r` marks an explicit
//! dislike), confidence `c = 1 + alpha * |r|`. Unobserved entries have
//! `p = 0, c = 1`. Each half-iteration minimises, for every row `u` with the
//! other side `Y` fixed,
//!   `sum_i c_ui (p_ui - x_u . y_i)^2 + regularization * |x_u|^2`,
//! i.e. solves `(Y^T Y + reg I + sum_obs (c - 1) y_i y_i^T) x = sum_obs c p y_i`.
//! `Y^T Y + reg I` is computed once per half-iteration; the per-row work is
//! then proportional to the row's entries.
//!
//! Note for comparisons with the `implicit` Python library: it uses
//! `c = alpha * r` instead, so on binary data its `alpha = a` equals our
//! `alpha = a - 1` (its default `alpha = 1` is our `alpha = 0`).
//!
//! Reproducibility: initial factors come from `Rng::derive(seed, row)`, every
//! row is solved sequentially by one thread in a fixed order, and the Gram
//! matrix is reduced in fixed blocks, so results are bit-identical for any
//! thread count on a given machine type (see `linalg` for kernel sets).
//!
//! Files: this one holds the parameters, errors, `fit` and the loss;
//! `solve` the per-row solvers of a half-step (CG and exact);
//! `fold_in` solving for users the model has not seen.

mod fold_in;
mod solve;

use std::time::Instant;

use rayon::prelude::*;
use thiserror::Error;

use crate::linalg::{self, Backend, Kernels, LinalgError};
use crate::matrix::Matrix;
use crate::rng::Rng;
use crate::sparse::Csr;

pub use fold_in::{fold_in_from_vectors, fold_in_user, FoldIn};
use solve::half_step;

/// Hyper-parameters of implicit ALS.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlsParams {
    /// Latent dimensions `k`. Default 64: enough for catalogues of 10^3 to
    /// 10^5 items; cost grows with `k^2`.
    pub factors: usize,
    /// L2 penalty on every factor vector (not scaled by row counts, so it
    /// should grow with the data's density). Default 10.0: on ml-100k with
    /// 64 factors and binary data (80/20 random split) precision@10 was
    /// 0.30 at 1.0, 0.33 at 10 and 0.29 at 50 (alpha 1); tune on validation.
    pub regularization: f32,
    /// Confidence slope: `c = 1 + alpha * |r|`. Default 1.0 (an observed
    /// binary interaction weighs twice an unobserved cell). Use larger
    /// values (10-40) for counts or play times.
    pub alpha: f32,
    /// Full iterations (each = user half-step then item half-step). Default 15.
    pub iterations: usize,
    /// CG steps per row per half-step; 0 = exact Cholesky solve (slower,
    /// O(k^3) per row). Default 3, warm-started from the previous factors.
    pub cg_steps: usize,
    /// Seed of the initial factors. Default 42.
    pub seed: u64,
    /// Worker threads; 0 = all cores. Default 0.
    pub threads: usize,
    /// Compute the weighted training loss after each iteration (costs about
    /// a third of an iteration). Default false.
    pub compute_loss: bool,
}

impl Default for AlsParams {
    fn default() -> Self {
        AlsParams {
            factors: 64,
            regularization: 10.0,
            alpha: 1.0,
            iterations: 15,
            cg_steps: 3,
            seed: 42,
            threads: 0,
            compute_loss: false,
        }
    }
}

/// Reported after each iteration.
#[derive(Debug, Clone, PartialEq)]
pub struct IterStats {
    /// 1-based.
    pub iteration: usize,
    /// Wall time of the two half-steps (loss computation excluded).
    pub seconds: f64,
    /// Weighted loss (objective divided by the total confidence of all
    /// cells) when `compute_loss` is set.
    pub loss: Option<f64>,
}

/// Trained factors: `score(u, i) = user_factors.row(u) . item_factors.row(i)`.
#[derive(Debug, Clone, PartialEq)]
pub struct AlsModel {
    pub user_factors: Matrix,
    pub item_factors: Matrix,
}

#[derive(Debug, Error)]
pub enum AlsError {
    #[error(
        "the interaction matrix is empty ({rows} x {cols} with {nnz} entries); train on a \
         data set with at least one user, one item and one interaction"
    )]
    EmptyMatrix {
        rows: usize,
        cols: usize,
        nnz: usize,
    },
    #[error("invalid ALS parameter `{name}`: {reason}")]
    InvalidParam { name: &'static str, reason: String },
    #[error(
        "interaction value {value} at row {row}, column {col} gives a non-finite confidence; \
         values must be finite interaction strengths (clip or drop outliers before training)"
    )]
    NonFiniteValue { row: usize, col: u32, value: f32 },
    #[error(
        "item {item} is outside the model's {n_items} items; map external ids with the \
         model's IdMap and drop items the model does not know"
    )]
    ItemOutOfRange { item: u32, n_items: usize },
    #[error(
        "item factors have {got} columns but the parameters say {expected} factors; pass the \
         parameters the model was trained with"
    )]
    FactorMismatch { expected: usize, got: usize },
    #[error(
        "the least-squares system of row {row} is not positive definite ({source}); use \
         regularization > 0"
    )]
    NotPositiveDefinite { row: usize, source: LinalgError },
    #[error("could not start {threads} training threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
}

/// Spread of the initial factors. Small, so the first half-step is driven
/// by the data rather than by the noise.
const INIT_STD: f64 = 0.01;
/// Mixed into the seed for item rows so user row `n` and item row `n` draw
/// different numbers.
const ITEM_STREAM_SALT: u64 = 0x9E6C_63D0_676A_9A99;

/// Factorises the user x item matrix `x` (values = raw interaction
/// strengths). `on_iter` is called after every iteration.
pub fn fit(
    x: &Csr,
    params: &AlsParams,
    on_iter: &mut dyn FnMut(IterStats),
) -> Result<AlsModel, AlsError> {
    validate_params(params)?;
    validate_matrix(x, params.alpha)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(params.threads)
        .build()
        .map_err(|e| AlsError::ThreadPool {
            threads: params.threads,
            reason: e.to_string(),
        })?;
    let backend = Backend::detect();
    // `on_iter` need not be Send, so only the parallel parts run in the pool
    let k = params.factors;
    let (xt, mut users, mut items) = pool.install(|| {
        (
            x.transpose(),
            init_factors(x.n_rows(), k, params.seed),
            init_factors(x.n_cols(), k, params.seed ^ ITEM_STREAM_SALT),
        )
    });
    for iteration in 1..=params.iterations {
        let start = Instant::now();
        pool.install(|| {
            half_step(backend, x, &items, &mut users, params)?;
            half_step(backend, &xt, &users, &mut items, params)
        })?;
        let seconds = start.elapsed().as_secs_f64();
        let loss = params
            .compute_loss
            .then(|| pool.install(|| weighted_loss(backend, x, &users, &items, params)));
        on_iter(IterStats {
            iteration,
            seconds,
            loss,
        });
    }
    Ok(AlsModel {
        user_factors: users,
        item_factors: items,
    })
}

fn validate_params(params: &AlsParams) -> Result<(), AlsError> {
    let bad = |name, reason: &str| {
        Err(AlsError::InvalidParam {
            name,
            reason: reason.to_string(),
        })
    };
    if params.factors == 0 {
        return bad("factors", "must be at least 1 (typical: 32-256)");
    }
    if !(params.regularization >= 0.0 && params.regularization.is_finite()) {
        return bad("regularization", "must be a finite number >= 0");
    }
    if !(params.alpha >= 0.0 && params.alpha.is_finite()) {
        return bad("alpha", "must be a finite number >= 0");
    }
    Ok(())
}

fn validate_matrix(x: &Csr, alpha: f32) -> Result<(), AlsError> {
    if x.n_rows() == 0 || x.n_cols() == 0 || x.nnz() == 0 {
        return Err(AlsError::EmptyMatrix {
            rows: x.n_rows(),
            cols: x.n_cols(),
            nnz: x.nnz(),
        });
    }
    for row in 0..x.n_rows() {
        for (col, value) in x.row(row) {
            if !(confidence_excess(value, alpha).is_finite()) {
                return Err(AlsError::NonFiniteValue { row, col, value });
            }
        }
    }
    Ok(())
}

/// `c - 1` for an observed entry.
#[inline(always)]
fn confidence_excess(r: f32, alpha: f32) -> f32 {
    alpha * r.abs()
}

/// `c * p` for an observed entry: the right-hand-side weight.
#[inline(always)]
fn weighted_preference(r: f32, alpha: f32) -> f32 {
    if r > 0.0 {
        1.0 + alpha * r
    } else {
        0.0
    }
}

fn init_factors(rows: usize, k: usize, seed: u64) -> Matrix {
    let mut m = Matrix::zeros(rows, k);
    m.as_mut_slice()
        .par_chunks_mut(k)
        .enumerate()
        .for_each(|(r, row)| {
            let mut rng = Rng::derive(seed, r as u64);
            for v in row {
                *v = (rng.normal() * INIT_STD) as f32;
            }
        });
    m
}

/// The objective (weighted squared error over all cells plus the L2
/// penalty) divided by the total confidence of all cells.
fn weighted_loss(
    backend: Backend,
    x: &Csr,
    users: &Matrix,
    items: &Matrix,
    params: &AlsParams,
) -> f64 {
    match backend {
        Backend::Avx2Fma(kern) => weighted_loss_generic(kern, x, users, items, params),
        Backend::Portable(kern) => weighted_loss_generic(kern, x, users, items, params),
    }
}

fn weighted_loss_generic<K: Kernels>(
    kern: K,
    x: &Csr,
    users: &Matrix,
    items: &Matrix,
    params: &AlsParams,
) -> f64 {
    let k = params.factors;
    let alpha = params.alpha;
    let item_gram = linalg::gram(kern, items, 0.0);
    // sum over all cells of s^2 is x^T (Y^T Y) x; observed cells then swap
    // their s^2 for c (p - s)^2
    let per_user: Vec<(f64, f64)> = (0..x.n_rows())
        .into_par_iter()
        .map_init(
            || vec![0f32; k],
            |gx, u| {
                let xu = users.row(u);
                linalg::sym_matvec(kern, &item_gram, xu, 1.0, gx);
                let mut err = f64::from(kern.dot(gx, xu));
                let mut excess = 0.0;
                for (i, r) in x.row(u) {
                    let s = f64::from(kern.dot(items.row(i as usize), xu));
                    let e = f64::from(confidence_excess(r, alpha));
                    let p = if r > 0.0 { 1.0 } else { 0.0 };
                    err += (1.0 + e) * (p - s) * (p - s) - s * s;
                    excess += e;
                }
                (err, excess)
            },
        )
        .collect();
    let (err, excess) = per_user
        .iter()
        .fold((0.0, 0.0), |(a, b), (e, x)| (a + e, b + x));
    let sq = |m: &Matrix| {
        m.as_slice()
            .iter()
            .map(|&v| f64::from(v) * f64::from(v))
            .sum::<f64>()
    };
    let penalty = f64::from(params.regularization) * (sq(users) + sq(items));
    let total_weight = (x.n_rows() as f64) * (x.n_cols() as f64) + excess;
    (err + penalty) / total_weight
}

#[cfg(test)]
mod tests;
