//! The per-row solves of one ALS half-step: each row's normal equations,
//! by warm-started conjugate gradient or exactly by Cholesky, instantiated
//! once per kernel set. Must not touch: parameters' validation or the
//! iteration loop (see `fit` in the parent).

use rayon::prelude::*;

use super::{confidence_excess, weighted_preference, AlsError, AlsParams};
use crate::linalg::{self, Backend, CgScratch, Kernels, LinalgError};
use crate::matrix::Matrix;
use crate::sparse::Csr;

/// How far ahead (in gathered rows) the first pass over a row's entries
/// prefetches: two groups of four, about the latency of a cache miss.
const PREFETCH_AHEAD: usize = 8;

/// What every row of one half-step shares.
pub(super) struct HalfStep<'a> {
    pub(super) conf: &'a Csr,
    pub(super) fixed: &'a Matrix,
    /// `fixed^T fixed + reg I`, k x k.
    pub(super) gram: &'a [f32],
    pub(super) alpha: f32,
    pub(super) cg_steps: usize,
}

/// Recomputes every row of `target` from `fixed` (rows of `conf` index
/// rows of `target`; its columns index rows of `fixed`).
pub(super) fn half_step(
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

pub(super) struct ExactScratch {
    a: Vec<f32>,
    b: Vec<f32>,
    a64: Vec<f64>,
    b64: Vec<f64>,
}

impl ExactScratch {
    pub(super) fn new(k: usize) -> Self {
        ExactScratch {
            a: vec![0.0; k * k],
            b: vec![0.0; k],
            a64: vec![0.0; k * k],
            b64: vec![0.0; k],
        }
    }
}

pub(super) fn solve_row_exact(
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
