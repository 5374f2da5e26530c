//! Dense symmetric positive definite solvers: Cholesky for exact k x k
//! solves and the conjugate-gradient refinement loop ALS warm-starts per
//! row. Must not touch: Gram construction (see `gram`) or kernel choice.

use super::{check_len, sym_matvec, Kernels, LinalgError, Portable};

// ---------------------------------------------------------------------------
// Cholesky

/// Factors a symmetric positive definite `n x n` row-major matrix in place:
/// on return its lower triangle (diagonal included) holds `L` with
/// `A = L L^T`. The strict upper triangle is left as it was and never read.
pub fn cholesky_factor(a: &mut [f64], n: usize) -> Result<(), LinalgError> {
    if a.len() != n * n {
        return Err(LinalgError::DimensionMismatch {
            what: "cholesky matrix",
            expected: n * n,
            got: a.len(),
        });
    }
    for i in 0..n {
        for j in 0..=i {
            // a[i][j] - sum_{t<j} L[i][t] L[j][t]: both prefixes are contiguous
            let (ri, rj) = (&a[i * n..i * n + j], &a[j * n..j * n + j]);
            let s = a[i * n + j] - dot_f64(ri, rj);
            if i == j {
                if !(s > 0.0 && s.is_finite()) {
                    return Err(LinalgError::NotPositiveDefinite { pivot: i, value: s });
                }
                a[i * n + i] = s.sqrt();
            } else {
                a[i * n + j] = s / a[j * n + j];
            }
        }
    }
    Ok(())
}

/// Solves `L L^T x = b` in place (`b` becomes `x`) given the factor from
/// [`cholesky_factor`].
pub fn cholesky_solve(l: &[f64], n: usize, b: &mut [f64]) -> Result<(), LinalgError> {
    if l.len() != n * n || b.len() != n {
        return Err(LinalgError::DimensionMismatch {
            what: "cholesky solve",
            expected: n,
            got: b.len(),
        });
    }
    // forward: L y = b
    for i in 0..n {
        let s = b[i] - dot_f64(&l[i * n..i * n + i], &b[..i]);
        b[i] = s / l[i * n + i];
    }
    // backward: L^T x = y; L^T's rows are L's columns, so walk by column
    for i in (0..n).rev() {
        let xi = b[i] / l[i * n + i];
        b[i] = xi;
        for t in 0..i {
            b[t] -= l[i * n + t] * xi;
        }
    }
    Ok(())
}

/// Solves the symmetric positive definite system `A x = b` (A row-major,
/// `n = b.len()`) in f64 and returns `x` in f32.
pub fn solve_spd(a: &[f32], b: &[f32]) -> Result<Vec<f32>, LinalgError> {
    let mut a64: Vec<f64> = a.iter().map(|&v| f64::from(v)).collect();
    let mut b64: Vec<f64> = b.iter().map(|&v| f64::from(v)).collect();
    solve_spd_f64(&mut a64, &mut b64)?;
    Ok(b64.into_iter().map(|v| v as f32).collect())
}

/// In-place variant of [`solve_spd`] on caller-owned f64 buffers (no
/// allocation): `a` is overwritten by its factor, `b` by the solution.
pub fn solve_spd_f64(a: &mut [f64], b: &mut [f64]) -> Result<(), LinalgError> {
    let n = b.len();
    cholesky_factor(a, n)?;
    cholesky_solve(a, n, b)
}

#[inline]
fn dot_f64(a: &[f64], b: &[f64]) -> f64 {
    let mut acc = [0f64; 4];
    let chunks = a.len() / 4 * 4;
    for (ca, cb) in a[..chunks].chunks_exact(4).zip(b[..chunks].chunks_exact(4)) {
        for l in 0..4 {
            acc[l] += ca[l] * cb[l];
        }
    }
    let mut s = (acc[0] + acc[2]) + (acc[1] + acc[3]);
    for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
        s += x * y;
    }
    s
}

// ---------------------------------------------------------------------------
// Conjugate gradient

/// Below this squared residual norm a CG loop stops (the system is solved
/// to f32 precision; going on would divide by ~0).
pub const CG_RESIDUAL_FLOOR: f32 = 1e-20;

/// Caller-owned work vectors for [`cg_refine`], so per-row solves do not
/// allocate.
#[derive(Debug, Clone)]
pub struct CgScratch {
    p: Vec<f32>,
    ap: Vec<f32>,
}

impl CgScratch {
    pub fn new(n: usize) -> Self {
        CgScratch {
            p: vec![0.0; n],
            ap: vec![0.0; n],
        }
    }
}

/// Runs at most `steps` conjugate-gradient steps on `A x = b` starting from
/// `x`, where `r` holds the initial residual `b - A x` on entry (callers
/// often compute it more cheaply than `b` and `A x` separately) and `apply`
/// writes `A v` into its second argument. `A` must be symmetric positive
/// definite. Returns the number of steps taken.
#[inline(always)]
pub fn cg_refine<K: Kernels>(
    kern: K,
    x: &mut [f32],
    r: &mut [f32],
    scratch: &mut CgScratch,
    steps: usize,
    mut apply: impl FnMut(&[f32], &mut [f32]),
) -> usize {
    let n = x.len();
    check_len("cg residual", n, r.len());
    check_len("cg scratch", n, scratch.p.len());
    let CgScratch { p, ap } = scratch;
    p.copy_from_slice(r);
    let mut rs_old = kern.dot(r, r);
    let mut taken = 0;
    while taken < steps && rs_old >= CG_RESIDUAL_FLOOR {
        apply(p, ap);
        let p_ap = kern.dot(p, ap);
        // Rounding can make p.Ap non-positive when the residual is tiny; a
        // step would then move away from the solution.
        if !(p_ap > 0.0 && p_ap.is_finite()) {
            break;
        }
        let step = rs_old / p_ap;
        kern.axpy(step, p, x);
        kern.axpy(-step, ap, r);
        taken += 1;
        let rs_new = kern.dot(r, r);
        if rs_new < CG_RESIDUAL_FLOOR {
            break;
        }
        kern.xpby(r, rs_new / rs_old, p);
        rs_old = rs_new;
    }
    taken
}

/// Solves the dense SPD system `A x = b` (A row-major `n x n`) by CG from
/// `x`, running at most `steps` steps. Returns the steps taken.
pub fn conjugate_gradient(
    a: &[f32],
    b: &[f32],
    x: &mut [f32],
    steps: usize,
) -> Result<usize, LinalgError> {
    let n = b.len();
    if a.len() != n * n || x.len() != n {
        return Err(LinalgError::DimensionMismatch {
            what: "conjugate_gradient",
            expected: n * n,
            got: a.len(),
        });
    }
    let kern = Portable;
    let mut r = vec![0f32; n];
    sym_matvec(kern, a, x, -1.0, &mut r);
    for (ri, bi) in r.iter_mut().zip(b) {
        *ri += bi;
    }
    let mut scratch = CgScratch::new(n);
    Ok(cg_refine(kern, x, &mut r, &mut scratch, steps, |v, out| {
        sym_matvec(kern, a, v, 1.0, out)
    }))
}
