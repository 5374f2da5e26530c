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

use std::borrow::Borrow;
use std::time::Instant;

use rayon::prelude::*;
use thiserror::Error;

use crate::linalg::{self, Backend, CgScratch, Kernels, LinalgError};
use crate::matrix::Matrix;
use crate::rng::Rng;
use crate::sparse::Csr;

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

/// How far ahead (in gathered rows) the first pass over a row's entries
/// prefetches: two groups of four, about the latency of a cache miss.
const PREFETCH_AHEAD: usize = 8;

/// What every row of one half-step shares.
struct HalfStep<'a> {
    conf: &'a Csr,
    fixed: &'a Matrix,
    /// `fixed^T fixed + reg I`, k x k.
    gram: &'a [f32],
    alpha: f32,
    cg_steps: usize,
}

/// Recomputes every row of `target` from `fixed` (rows of `conf` index
/// rows of `target`; its columns index rows of `fixed`).
fn half_step(
    backend: Backend,
    conf: &Csr,
    fixed: &Matrix,
    target: &mut Matrix,
    params: &AlsParams,
) -> Result<(), AlsError> {
    let k = params.factors;
    let gram = match backend {
        Backend::Avx2Fma(kern) => linalg::gram(kern, fixed, params.regularization),
        Backend::Portable(kern) => linalg::gram(kern, fixed, params.regularization),
    };
    let step = HalfStep {
        conf,
        fixed,
        gram: &gram,
        alpha: params.alpha,
        cg_steps: params.cg_steps,
    };
    let rows = target.as_mut_slice().par_chunks_mut(k).enumerate();
    if params.cg_steps == 0 {
        rows.try_for_each_init(
            || ExactScratch::new(k),
            |scratch, (row, x)| {
                solve_row_exact(
                    backend,
                    &step,
                    step.conf.row_indices(row),
                    step.conf.row_values(row),
                    x,
                    scratch,
                )
                .map_err(|source| AlsError::NotPositiveDefinite { row, source })
            },
        )
    } else {
        rows.for_each_init(
            || RowScratch::new(k),
            |scratch, (row, x)| solve_row_cg(backend, &step, row, x, scratch),
        );
        Ok(())
    }
}

struct RowScratch {
    residual: Vec<f32>,
    cg: CgScratch,
}

impl RowScratch {
    fn new(k: usize) -> Self {
        RowScratch {
            residual: vec![0.0; k],
            cg: CgScratch::new(k),
        }
    }
}

fn solve_row_cg(backend: Backend, step: &HalfStep, row: usize, x: &mut [f32], s: &mut RowScratch) {
    match backend {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the Avx2Fma value proves the CPU has AVX2 and FMA.
        Backend::Avx2Fma(kern) => unsafe { solve_row_cg_avx2(kern, step, row, x, s) },
        #[cfg(not(target_arch = "x86_64"))]
        Backend::Avx2Fma(kern) => solve_row_cg_generic(kern, step, row, x, s),
        Backend::Portable(kern) => solve_row_cg_generic(kern, step, row, x, s),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn solve_row_cg_avx2(
    kern: linalg::Avx2Fma,
    step: &HalfStep,
    row: usize,
    x: &mut [f32],
    s: &mut RowScratch,
) {
    solve_row_cg_generic(kern, step, row, x, s)
}

/// A few CG steps on row `row`'s system, warm-started from `x`.
#[inline(always)]
fn solve_row_cg_generic<K: Kernels>(
    kern: K,
    step: &HalfStep,
    row: usize,
    x: &mut [f32],
    s: &mut RowScratch,
) {
    let cols = step.conf.row_indices(row);
    let vals = step.conf.row_values(row);
    if cols.is_empty() {
        // b = 0, so the exact solution is 0
        x.fill(0.0);
        return;
    }
    let alpha = step.alpha;
    // r = b - A x = -(G x) + sum_obs (c p - (c - 1) y.x) y
    let r = &mut s.residual;
    linalg::sym_matvec(kern, step.gram, x, -1.0, r);
    // the first pass over the row's entries gathers them from memory; the
    // CG passes below find them in cache
    add_weighted_rows(kern, step.fixed, cols, vals, x, r, true, |value, y_dot| {
        weighted_preference(value, alpha) - confidence_excess(value, alpha) * y_dot
    });
    linalg::cg_refine(kern, x, r, &mut s.cg, step.cg_steps, |p, ap| {
        // A p = G p + sum_obs (c - 1) (y.p) y, without forming A
        linalg::sym_matvec(kern, step.gram, p, 1.0, ap);
        add_weighted_rows(
            kern,
            step.fixed,
            cols,
            vals,
            p,
            ap,
            false,
            |value, y_dot| confidence_excess(value, alpha) * y_dot,
        );
    });
}

/// `out += sum_j weight(value_j, y_j . v) * y_j` over the observed rows
/// `y_j = fixed.row(cols[j])`, four rows at a time. With `prefetch`, rows
/// are requested from memory `PREFETCH_AHEAD` rows before they are used.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn add_weighted_rows<K: Kernels>(
    kern: K,
    fixed: &Matrix,
    cols: &[u32],
    vals: &[f32],
    v: &[f32],
    out: &mut [f32],
    prefetch: bool,
    weight: impl Fn(f32, f32) -> f32,
) {
    if prefetch {
        for &c in cols.iter().take(PREFETCH_AHEAD) {
            linalg::prefetch(fixed.row(c as usize));
        }
    }
    let mut c4 = cols.chunks_exact(4);
    let mut v4 = vals.chunks_exact(4);
    for (g, (c, w)) in (&mut c4).zip(&mut v4).enumerate() {
        if prefetch {
            let ahead = g * 4 + PREFETCH_AHEAD;
            for &c in cols.iter().skip(ahead).take(4) {
                linalg::prefetch(fixed.row(c as usize));
            }
        }
        let rows = [
            fixed.row(c[0] as usize),
            fixed.row(c[1] as usize),
            fixed.row(c[2] as usize),
            fixed.row(c[3] as usize),
        ];
        let d = kern.dot4(rows, v);
        let coef = [
            weight(w[0], d[0]),
            weight(w[1], d[1]),
            weight(w[2], d[2]),
            weight(w[3], d[3]),
        ];
        kern.axpy4(coef, rows, out);
    }
    for (&c, &w) in c4.remainder().iter().zip(v4.remainder()) {
        let y = fixed.row(c as usize);
        kern.axpy(weight(w, kern.dot(y, v)), y, out);
    }
}

struct ExactScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    a64: Vec<f64>,
    b64: Vec<f64>,
}

impl ExactScratch {
    fn new(k: usize) -> Self {
        ExactScratch {
            a: vec![0.0; k * k],
            b: vec![0.0; k],
            a64: vec![0.0; k * k],
            b64: vec![0.0; k],
        }
    }
}

fn solve_row_exact(
    backend: Backend,
    step: &HalfStep,
    cols: &[u32],
    vals: &[f32],
    x: &mut [f32],
    s: &mut ExactScratch,
) -> Result<(), LinalgError> {
    match backend {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the Avx2Fma value proves the CPU has AVX2 and FMA.
        Backend::Avx2Fma(kern) => unsafe { solve_row_exact_avx2(kern, step, cols, vals, x, s) },
        #[cfg(not(target_arch = "x86_64"))]
        Backend::Avx2Fma(kern) => solve_row_exact_generic(kern, step, cols, vals, x, s),
        Backend::Portable(kern) => solve_row_exact_generic(kern, step, cols, vals, x, s),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn solve_row_exact_avx2(
    kern: linalg::Avx2Fma,
    step: &HalfStep,
    cols: &[u32],
    vals: &[f32],
    x: &mut [f32],
    s: &mut ExactScratch,
) -> Result<(), LinalgError> {
    solve_row_exact_generic(kern, step, cols, vals, x, s)
}

/// Forms the row's k x k system explicitly and solves it by Cholesky (in
/// f64, so the answer does not depend on a starting point).
#[inline(always)]
fn solve_row_exact_generic<K: Kernels>(
    kern: K,
    step: &HalfStep,
    cols: &[u32],
    vals: &[f32],
    x: &mut [f32],
    s: &mut ExactScratch,
) -> Result<(), LinalgError> {
    if cols.is_empty() {
        x.fill(0.0);
        return Ok(());
    }
    let k = x.len();
    let alpha = step.alpha;
    s.a.copy_from_slice(step.gram);
    s.b.fill(0.0);
    let mut c4 = cols.chunks_exact(4);
    let mut v4 = vals.chunks_exact(4);
    for (c, v) in (&mut c4).zip(&mut v4) {
        let rows = [
            step.fixed.row(c[0] as usize),
            step.fixed.row(c[1] as usize),
            step.fixed.row(c[2] as usize),
            step.fixed.row(c[3] as usize),
        ];
        let e = [0, 1, 2, 3].map(|t| confidence_excess(v[t], alpha));
        for (j, aj) in s.a.chunks_exact_mut(k).enumerate() {
            let w = [
                e[0] * rows[0][j],
                e[1] * rows[1][j],
                e[2] * rows[2][j],
                e[3] * rows[3][j],
            ];
            kern.axpy4(w, rows, aj);
        }
        let t = [0, 1, 2, 3].map(|t| weighted_preference(v[t], alpha));
        kern.axpy4(t, rows, &mut s.b);
    }
    for (&c, &v) in c4.remainder().iter().zip(v4.remainder()) {
        let y = step.fixed.row(c as usize);
        let e = confidence_excess(v, alpha);
        for (j, aj) in s.a.chunks_exact_mut(k).enumerate() {
            kern.axpy(e * y[j], y, aj);
        }
        kern.axpy(weighted_preference(v, alpha), y, &mut s.b);
    }
    for (d, v) in s.a64.iter_mut().zip(&s.a) {
        *d = f64::from(*v);
    }
    for (d, v) in s.b64.iter_mut().zip(&s.b) {
        *d = f64::from(*v);
    }
    linalg::solve_spd_f64(&mut s.a64, &mut s.b64)?;
    for (xi, v) in x.iter_mut().zip(&s.b64) {
        *xi = *v as f32;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::training::planted;

    #[test]
    fn fold_in_from_vectors_matches_fold_in() {
        let p = planted::generate(60, 40, 4, 8, 1, 3);
        let params = small_params();
        let model = fit(&p.train, &params, &mut |_| {}).unwrap();
        let items = &model.item_factors;
        let gram = crate::linalg::gram_matrix(items);
        let inter = [(3u32, 1.0f32), (7, 2.0), (11, 1.0)];
        let want = fold_in_user(items, &inter, &params).unwrap();
        let with: Vec<(&[f32], f32)> = inter
            .iter()
            .map(|&(i, r)| (items.row(i as usize), r))
            .collect();
        let got = fold_in_from_vectors(&gram, params.regularization, params.alpha, &with).unwrap();
        for (a, b) in want.iter().zip(&got) {
            assert!(
                (a - b).abs() < 1e-3 * (1.0 + a.abs()),
                "{want:?} vs {got:?}"
            );
        }
        assert!(fold_in_from_vectors(&gram, 1.0, 1.0, &[(&[1.0][..], 1.0)]).is_err());
    }

    fn small_params() -> AlsParams {
        AlsParams {
            factors: 16,
            regularization: 1.0,
            alpha: 2.0,
            iterations: 10,
            cg_steps: 3,
            seed: 7,
            threads: 2,
            compute_loss: false,
        }
    }

    fn planted_data() -> planted::Planted {
        planted::generate(600, 400, 4, 30, 3, 99)
    }

    #[test]
    fn learns_planted_clusters_and_loss_decreases() {
        let data = planted_data();
        let params = AlsParams {
            compute_loss: true,
            ..small_params()
        };
        let mut losses = Vec::new();
        let model = fit(&data.train, &params, &mut |s| {
            assert!(s.seconds >= 0.0);
            losses.push(s.loss.expect("compute_loss is set"));
        })
        .unwrap();
        assert_eq!(losses.len(), params.iterations);
        for w in losses.windows(2) {
            // ALS never increases the objective; allow f32 rounding
            assert!(w[1] <= w[0] * (1.0 + 1e-4), "loss went up: {losses:?}");
        }
        assert!(losses[losses.len() - 1] < losses[0] * 0.99, "{losses:?}");

        let auc = planted::ranking_auc(&data, &model.user_factors, &model.item_factors);
        let random = planted::ranking_auc(
            &data,
            &planted::random_factors(600, 16, 1),
            &planted::random_factors(400, 16, 2),
        );
        assert!(auc >= 0.85, "ALS held-out AUC {auc}");
        assert!((random - 0.5).abs() < 0.05, "random AUC {random}");
    }

    #[test]
    fn exact_solver_also_learns_and_beats_random() {
        let data = planted_data();
        let params = AlsParams {
            cg_steps: 0,
            iterations: 5,
            compute_loss: true,
            ..small_params()
        };
        let mut losses = Vec::new();
        let model = fit(&data.train, &params, &mut |s| losses.push(s.loss.unwrap())).unwrap();
        for w in losses.windows(2) {
            assert!(w[1] <= w[0] * (1.0 + 1e-4), "{losses:?}");
        }
        let auc = planted::ranking_auc(&data, &model.user_factors, &model.item_factors);
        assert!(auc >= 0.85, "exact ALS held-out AUC {auc}");
    }

    #[test]
    fn same_seed_same_factors_any_thread_count() {
        let data = planted_data();
        let run = |threads, seed| {
            let p = AlsParams {
                threads,
                seed,
                iterations: 3,
                ..small_params()
            };
            fit(&data.train, &p, &mut |_| {}).unwrap()
        };
        let a = run(1, 7);
        assert_eq!(a, run(1, 7));
        assert_eq!(a, run(2, 7));
        assert_eq!(a, run(3, 7));
        assert_ne!(a.user_factors, run(2, 8).user_factors);
    }

    #[test]
    fn exact_half_step_is_thread_count_independent() {
        let data = planted_data();
        let run = |threads| {
            let p = AlsParams {
                threads,
                iterations: 2,
                cg_steps: 0,
                ..small_params()
            };
            fit(&data.train, &p, &mut |_| {}).unwrap()
        };
        assert_eq!(run(1), run(2));
    }

    #[test]
    fn fold_in_equals_exact_user_half_step() {
        let data = planted_data();
        let params = small_params();
        let model = fit(&data.train, &params, &mut |_| {}).unwrap();
        let exact = AlsParams {
            cg_steps: 0,
            ..params.clone()
        };
        let mut users = model.user_factors.clone();
        half_step(
            Backend::detect(),
            &data.train,
            &model.item_factors,
            &mut users,
            &exact,
        )
        .unwrap();
        // a CG model is close to, but not exactly at, the exact solution
        assert_ne!(users, model.user_factors);

        let folder = FoldIn::new(&model.item_factors, &exact).unwrap();
        for u in (0..data.train.n_rows()).step_by(37) {
            let interactions: Vec<(u32, f32)> = data.train.row(u).collect();
            let folded = folder.fold_in(&interactions).unwrap();
            assert_eq!(folded.as_slice(), users.row(u), "user {u}");
            // order and the one-off entry point do not matter
            let mut reversed = interactions.clone();
            reversed.reverse();
            assert_eq!(
                fold_in_user(&model.item_factors, &reversed, &exact).unwrap(),
                folded
            );
        }
        // duplicates are summed like the training matrix does
        let (a, b) = (3u32, 5u32);
        assert_eq!(
            folder.fold_in(&[(a, 1.0), (b, 2.0), (a, 1.5)]).unwrap(),
            folder.fold_in(&[(b, 2.0), (a, 2.5)]).unwrap()
        );
        assert_eq!(folder.fold_in(&[]).unwrap(), vec![0.0; 16]);
    }

    #[test]
    fn fold_in_solution_satisfies_normal_equations() {
        // independent check of the exact solve: A x = b with A, b built naively in f64
        let items = planted::random_factors(30, 5, 3);
        let params = AlsParams {
            factors: 5,
            regularization: 0.5,
            alpha: 3.0,
            ..AlsParams::default()
        };
        let obs = [(2u32, 1.0f32), (7, 2.0), (11, -1.0), (29, 0.5)];
        let x = fold_in_user(&items, &obs, &params).unwrap();
        let k = 5;
        for row in 0..k {
            let mut ax = 0.0f64;
            let mut b = 0.0f64;
            for i in 0..30 {
                let y = items.row(i);
                let (c, p) = match obs.iter().find(|o| o.0 == i as u32) {
                    Some(&(_, r)) => (
                        1.0 + 3.0 * f64::from(r.abs()),
                        if r > 0.0 { 1.0 } else { 0.0 },
                    ),
                    None => (1.0, 0.0),
                };
                let s: f64 = (0..k).map(|t| f64::from(y[t]) * f64::from(x[t])).sum();
                ax += c * f64::from(y[row]) * s;
                b += c * p * f64::from(y[row]);
            }
            ax += 0.5 * f64::from(x[row]);
            assert!((ax - b).abs() < 1e-3, "row {row}: {ax} vs {b}");
        }
    }

    #[test]
    fn rejects_bad_input_with_specific_errors() {
        let ok = Csr::from_triples(2, 2, &[(0, 1, 1.0)]);
        let p = small_params();
        let err = |x: &Csr, p: &AlsParams| fit(x, p, &mut |_| {}).unwrap_err();
        assert!(matches!(
            err(&Csr::from_triples(2, 2, &[]), &p),
            AlsError::EmptyMatrix { .. }
        ));
        assert!(matches!(
            err(&Csr::from_triples(0, 0, &[]), &p),
            AlsError::EmptyMatrix { .. }
        ));
        let zero = AlsParams {
            factors: 0,
            ..p.clone()
        };
        assert!(matches!(
            err(&ok, &zero),
            AlsError::InvalidParam {
                name: "factors",
                ..
            }
        ));
        let neg = AlsParams {
            regularization: -1.0,
            ..p.clone()
        };
        assert!(matches!(
            err(&ok, &neg),
            AlsError::InvalidParam {
                name: "regularization",
                ..
            }
        ));
        let nan_alpha = AlsParams {
            alpha: f32::NAN,
            ..p.clone()
        };
        assert!(matches!(
            err(&ok, &nan_alpha),
            AlsError::InvalidParam { name: "alpha", .. }
        ));
        let nan = Csr::from_triples(2, 2, &[(0, 0, 1.0), (1, 1, f32::NAN)]);
        assert!(matches!(
            err(&nan, &p),
            AlsError::NonFiniteValue { row: 1, col: 1, .. }
        ));
        let inf = Csr::from_triples(2, 2, &[(1, 0, f32::INFINITY)]);
        assert!(matches!(
            err(&inf, &p),
            AlsError::NonFiniteValue { row: 1, col: 0, .. }
        ));

        let items = planted::random_factors(4, 16, 1);
        assert!(matches!(
            fold_in_user(&items, &[(4, 1.0)], &p),
            Err(AlsError::ItemOutOfRange {
                item: 4,
                n_items: 4
            })
        ));
        assert!(matches!(
            fold_in_user(&items, &[(1, f32::NAN)], &p),
            Err(AlsError::NonFiniteValue { .. })
        ));
        let wrong_k = AlsParams {
            factors: 8,
            ..p.clone()
        };
        assert!(matches!(
            fold_in_user(&items, &[(1, 1.0)], &wrong_k),
            Err(AlsError::FactorMismatch {
                expected: 8,
                got: 16
            })
        ));
        // the messages say what to do
        let msg = err(&Csr::from_triples(2, 2, &[]), &p).to_string();
        assert!(msg.contains("one interaction"), "{msg}");
    }

    #[test]
    fn weighted_loss_matches_naive_sum_over_all_cells() {
        let x = Csr::from_triples(3, 4, &[(0, 1, 2.0), (1, 0, 1.0), (1, 3, -1.0), (2, 2, 0.5)]);
        let params = AlsParams {
            factors: 3,
            regularization: 0.7,
            alpha: 2.0,
            ..AlsParams::default()
        };
        let users = planted::random_factors(3, 3, 4);
        let items = planted::random_factors(4, 3, 5);
        let got = weighted_loss(Backend::detect(), &x, &users, &items, &params);
        let (mut err, mut weight) = (0.0f64, 0.0f64);
        for u in 0..3 {
            for i in 0..4 {
                let r = x
                    .row(u)
                    .find(|&(c, _)| c as usize == i)
                    .map(|(_, v)| f64::from(v));
                let (c, p) = match r {
                    Some(r) => (1.0 + 2.0 * r.abs(), if r > 0.0 { 1.0 } else { 0.0 }),
                    None => (1.0, 0.0),
                };
                let s: f64 = (0..3)
                    .map(|f| f64::from(users.row(u)[f]) * f64::from(items.row(i)[f]))
                    .sum();
                err += c * (p - s) * (p - s);
                weight += c;
            }
        }
        let sq: f64 = users
            .as_slice()
            .iter()
            .chain(items.as_slice())
            .map(|&v| f64::from(v) * f64::from(v))
            .sum();
        let want = (err + 0.7 * sq) / weight;
        assert!((got - want).abs() < 1e-5 * want, "{got} vs {want}");
    }

    #[test]
    fn portable_kernels_give_nearly_the_same_half_step() {
        // on machines without AVX2 every other test already runs the portable
        // path; here both are compared where both exist
        let Some(avx) = linalg::Avx2Fma::detect() else {
            println!("no AVX2+FMA on this CPU: only the portable path exists");
            return;
        };
        let data = planted_data();
        let model = fit(&data.train, &small_params(), &mut |_| {}).unwrap();
        for cg_steps in [0, 3] {
            let p = AlsParams {
                cg_steps,
                ..small_params()
            };
            let mut a = model.user_factors.clone();
            let mut b = model.user_factors.clone();
            half_step(
                Backend::Avx2Fma(avx),
                &data.train,
                &model.item_factors,
                &mut a,
                &p,
            )
            .unwrap();
            half_step(
                Backend::Portable(linalg::Portable),
                &data.train,
                &model.item_factors,
                &mut b,
                &p,
            )
            .unwrap();
            let scale = a.as_slice().iter().fold(0f32, |m, v| m.max(v.abs()));
            let diff = a
                .as_slice()
                .iter()
                .zip(b.as_slice())
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            assert!(
                diff <= 1e-3 * scale,
                "cg_steps {cg_steps}: max diff {diff}, scale {scale}"
            );
        }
    }

    #[test]
    fn users_without_interactions_get_zero_vectors() {
        let x = Csr::from_triples(3, 3, &[(0, 0, 1.0), (2, 1, 1.0)]);
        let p = AlsParams {
            factors: 4,
            iterations: 2,
            ..AlsParams::default()
        };
        let m = fit(&x, &p, &mut |_| {}).unwrap();
        assert_eq!(m.user_factors.row(1), &[0.0; 4]);
        assert_eq!(m.item_factors.row(2), &[0.0; 4]);
        assert!(m.user_factors.row(0).iter().any(|v| *v != 0.0));
    }
}
