//! Small dense numeric kernels for training and serving: dot products,
//! vector updates, Gram matrices, a Cholesky solver for k x k systems and a
//! conjugate-gradient refinement loop.
//!
//! Owns: the SIMD kernel sets (`Portable`, and `Avx2Fma` chosen at run time
//! on x86_64) and the dense solvers built on them. Must not touch: files,
//! threads of its own (the Gram matrix uses whatever rayon pool it is called
//! from), or anything model-specific.
//!
//! Determinism: every kernel has a fixed summation order, so a given input
//! gives bit-identical output on a given kernel set. The two kernel sets
//! differ from each other in rounding (FMA vs separate multiply and add), so
//! results are reproducible per machine type, not across them.
//!
//! Why two kernel sets: release binaries are built for baseline x86_64 (they
//! must run on other machines), which gives only SSE2. Hot loops are
//! therefore written once, generic over [`Kernels`], and instantiated a second
//! time inside a `#[target_feature(enable = "avx2,fma")]` function by callers
//! that need the speed (see `training::als`).

use rayon::prelude::*;
use thiserror::Error;

use crate::matrix::Matrix;

#[derive(Debug, Clone, PartialEq, Error)]
pub enum LinalgError {
    #[error("{what}: expected length {expected}, got {got}; pass slices of matching size")]
    DimensionMismatch {
        what: &'static str,
        expected: usize,
        got: usize,
    },
    #[error(
        "matrix is not positive definite (pivot {pivot} is {value}); add a positive \
         regularisation term to the diagonal"
    )]
    NotPositiveDefinite { pivot: usize, value: f64 },
}

/// The dense vector operations the hot loops are written against.
///
/// Implementations must keep a fixed summation order for a given slice
/// length, so results never depend on scheduling.
pub trait Kernels: Copy + Send + Sync {
    /// `a . b`; the slices must have equal length.
    fn dot(self, a: &[f32], b: &[f32]) -> f32;
    /// Four dot products against the same `v`, sharing its loads.
    fn dot4(self, rows: [&[f32]; 4], v: &[f32]) -> [f32; 4];
    /// `y += alpha * x`.
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]);
    /// `y += w[0]*rows[0] + w[1]*rows[1] + w[2]*rows[2] + w[3]*rows[3]`,
    /// added in that order.
    fn axpy4(self, w: [f32; 4], rows: [&[f32]; 4], y: &mut [f32]);
    /// `y = x + beta * y` (the CG direction update).
    fn xpby(self, x: &[f32], beta: f32, y: &mut [f32]);
    /// `x *= alpha`.
    fn scale(self, alpha: f32, x: &mut [f32]);
    /// `Some` for the AVX2 set, so generic code can jump into a
    /// `#[target_feature]` instantiation of itself.
    #[inline(always)]
    fn as_avx2(self) -> Option<Avx2Fma> {
        None
    }
}

/// Plain loops in 8-lane blocks that LLVM vectorises for any target.
#[derive(Debug, Clone, Copy, Default)]
pub struct Portable;

/// AVX2 + FMA intrinsics. Only constructible when the CPU has both, which
/// is what makes its safe methods sound.
#[derive(Debug, Clone, Copy)]
pub struct Avx2Fma {
    _proof: (),
}

impl Avx2Fma {
    /// `Some` when the running CPU supports AVX2 and FMA.
    pub fn detect() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Some(Avx2Fma { _proof: () });
            }
        }
        None
    }
}

/// The kernel set in use on this machine, chosen once per call site.
#[derive(Debug, Clone, Copy)]
pub enum Backend {
    Portable(Portable),
    Avx2Fma(Avx2Fma),
}

impl Backend {
    /// The fastest kernel set this CPU supports, decided once per process.
    /// Setting the environment variable `FUNNEL_PORTABLE_KERNELS=1` forces
    /// the portable set (to compare paths or reproduce results from a
    /// machine without AVX2).
    pub fn detect() -> Self {
        static CHOSEN: std::sync::OnceLock<Backend> = std::sync::OnceLock::new();
        *CHOSEN.get_or_init(|| {
            if std::env::var_os("FUNNEL_PORTABLE_KERNELS").is_some_and(|v| v == "1") {
                return Backend::Portable(Portable);
            }
            match Avx2Fma::detect() {
                Some(k) => Backend::Avx2Fma(k),
                None => Backend::Portable(Portable),
            }
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            Backend::Portable(_) => "portable",
            Backend::Avx2Fma(_) => "avx2+fma",
        }
    }
}

fn check_len(what: &'static str, expected: usize, got: usize) {
    // Slice lengths are programming invariants here, never user input.
    assert_eq!(expected, got, "{what}: slice lengths differ");
}

// ---------------------------------------------------------------------------
// Portable kernels

const LANES: usize = 8;

impl Kernels for Portable {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        check_len("dot", a.len(), b.len());
        let mut acc = [0f32; LANES];
        let chunks = a.len() / LANES * LANES;
        for (ca, cb) in a[..chunks]
            .chunks_exact(LANES)
            .zip(b[..chunks].chunks_exact(LANES))
        {
            for l in 0..LANES {
                acc[l] += ca[l] * cb[l];
            }
        }
        let mut sum = reduce8(&acc);
        for (x, y) in a[chunks..].iter().zip(&b[chunks..]) {
            sum += x * y;
        }
        sum
    }

    #[inline(always)]
    fn dot4(self, rows: [&[f32]; 4], v: &[f32]) -> [f32; 4] {
        [
            self.dot(rows[0], v),
            self.dot(rows[1], v),
            self.dot(rows[2], v),
            self.dot(rows[3], v),
        ]
    }

    #[inline(always)]
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        check_len("axpy", x.len(), y.len());
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi += alpha * xi;
        }
    }

    #[inline(always)]
    fn axpy4(self, w: [f32; 4], rows: [&[f32]; 4], y: &mut [f32]) {
        let n = y.len();
        for r in rows {
            check_len("axpy4", n, r.len());
        }
        let [r0, r1, r2, r3] = rows;
        for i in 0..n {
            let mut t = y[i];
            t += w[0] * r0[i];
            t += w[1] * r1[i];
            t += w[2] * r2[i];
            t += w[3] * r3[i];
            y[i] = t;
        }
    }

    #[inline(always)]
    fn xpby(self, x: &[f32], beta: f32, y: &mut [f32]) {
        check_len("xpby", x.len(), y.len());
        for (yi, xi) in y.iter_mut().zip(x) {
            *yi = xi + beta * *yi;
        }
    }

    #[inline(always)]
    fn scale(self, alpha: f32, x: &mut [f32]) {
        for v in x {
            *v *= alpha;
        }
    }
}

#[inline(always)]
fn reduce8(acc: &[f32; LANES]) -> f32 {
    // pairwise, in a fixed order
    ((acc[0] + acc[4]) + (acc[1] + acc[5])) + ((acc[2] + acc[6]) + (acc[3] + acc[7]))
}

// ---------------------------------------------------------------------------
// AVX2 + FMA kernels

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! Each function requires AVX2 and FMA; callers prove that with an
    //! `Avx2Fma` value. Loads are unaligned (factor rows start anywhere).
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps::<1>(v);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        _mm_cvtss_f32(s)
    }

    /// # Safety
    /// CPU must support AVX2 and FMA; `a.len() == b.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot(a: &[f32], b: &[f32]) -> f32 {
        let n = a.len();
        let (pa, pb) = (a.as_ptr(), b.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut acc2 = _mm256_setzero_ps();
        let mut acc3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 32 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            acc1 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 8)),
                _mm256_loadu_ps(pb.add(i + 8)),
                acc1,
            );
            acc2 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 16)),
                _mm256_loadu_ps(pb.add(i + 16)),
                acc2,
            );
            acc3 = _mm256_fmadd_ps(
                _mm256_loadu_ps(pa.add(i + 24)),
                _mm256_loadu_ps(pb.add(i + 24)),
                acc3,
            );
            i += 32;
        }
        while i + 8 <= n {
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pa.add(i)), _mm256_loadu_ps(pb.add(i)), acc0);
            i += 8;
        }
        let mut sum = hsum(_mm256_add_ps(
            _mm256_add_ps(acc0, acc1),
            _mm256_add_ps(acc2, acc3),
        ));
        while i < n {
            sum = (*pa.add(i)).mul_add(*pb.add(i), sum);
            i += 1;
        }
        sum
    }

    /// # Safety
    /// CPU must support AVX2 and FMA; every row has `v.len()` elements.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn dot4(rows: [&[f32]; 4], v: &[f32]) -> [f32; 4] {
        let n = v.len();
        let pv = v.as_ptr();
        let [p0, p1, p2, p3] = rows.map(|r| r.as_ptr());
        // two accumulators per row: eight independent FMA chains hide latency
        let mut a0 = _mm256_setzero_ps();
        let mut a1 = _mm256_setzero_ps();
        let mut a2 = _mm256_setzero_ps();
        let mut a3 = _mm256_setzero_ps();
        let mut b0 = _mm256_setzero_ps();
        let mut b1 = _mm256_setzero_ps();
        let mut b2 = _mm256_setzero_ps();
        let mut b3 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let va = _mm256_loadu_ps(pv.add(i));
            let vb = _mm256_loadu_ps(pv.add(i + 8));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i)), va, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i)), va, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(i)), va, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(i)), va, a3);
            b0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i + 8)), vb, b0);
            b1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i + 8)), vb, b1);
            b2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(i + 8)), vb, b2);
            b3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(i + 8)), vb, b3);
            i += 16;
        }
        if i + 8 <= n {
            let va = _mm256_loadu_ps(pv.add(i));
            a0 = _mm256_fmadd_ps(_mm256_loadu_ps(p0.add(i)), va, a0);
            a1 = _mm256_fmadd_ps(_mm256_loadu_ps(p1.add(i)), va, a1);
            a2 = _mm256_fmadd_ps(_mm256_loadu_ps(p2.add(i)), va, a2);
            a3 = _mm256_fmadd_ps(_mm256_loadu_ps(p3.add(i)), va, a3);
            i += 8;
        }
        let mut out = [
            hsum(_mm256_add_ps(a0, b0)),
            hsum(_mm256_add_ps(a1, b1)),
            hsum(_mm256_add_ps(a2, b2)),
            hsum(_mm256_add_ps(a3, b3)),
        ];
        while i < n {
            let x = *pv.add(i);
            out[0] = (*p0.add(i)).mul_add(x, out[0]);
            out[1] = (*p1.add(i)).mul_add(x, out[1]);
            out[2] = (*p2.add(i)).mul_add(x, out[2]);
            out[3] = (*p3.add(i)).mul_add(x, out[3]);
            i += 1;
        }
        out
    }

    /// # Safety
    /// CPU must support AVX2 and FMA; `x.len() == y.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
        let n = y.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let va = _mm256_set1_ps(alpha);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(va, _mm256_loadu_ps(px.add(i)), _mm256_loadu_ps(py.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) = alpha.mul_add(*px.add(i), *py.add(i));
            i += 1;
        }
    }

    /// # Safety
    /// CPU must support AVX2 and FMA; every row has `y.len()` elements.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy4(w: [f32; 4], rows: [&[f32]; 4], y: &mut [f32]) {
        let n = y.len();
        let py = y.as_mut_ptr();
        let [p0, p1, p2, p3] = rows.map(|r| r.as_ptr());
        let w0 = _mm256_set1_ps(w[0]);
        let w1 = _mm256_set1_ps(w[1]);
        let w2 = _mm256_set1_ps(w[2]);
        let w3 = _mm256_set1_ps(w[3]);
        let mut i = 0;
        while i + 8 <= n {
            let mut t = _mm256_loadu_ps(py.add(i));
            t = _mm256_fmadd_ps(w0, _mm256_loadu_ps(p0.add(i)), t);
            t = _mm256_fmadd_ps(w1, _mm256_loadu_ps(p1.add(i)), t);
            t = _mm256_fmadd_ps(w2, _mm256_loadu_ps(p2.add(i)), t);
            t = _mm256_fmadd_ps(w3, _mm256_loadu_ps(p3.add(i)), t);
            _mm256_storeu_ps(py.add(i), t);
            i += 8;
        }
        while i < n {
            let mut t = *py.add(i);
            t = w[0].mul_add(*p0.add(i), t);
            t = w[1].mul_add(*p1.add(i), t);
            t = w[2].mul_add(*p2.add(i), t);
            t = w[3].mul_add(*p3.add(i), t);
            *py.add(i) = t;
            i += 1;
        }
    }

    /// # Safety
    /// CPU must support AVX2 and FMA; `x.len() == y.len()`.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn xpby(x: &[f32], beta: f32, y: &mut [f32]) {
        let n = y.len();
        let (px, py) = (x.as_ptr(), y.as_mut_ptr());
        let vb = _mm256_set1_ps(beta);
        let mut i = 0;
        while i + 8 <= n {
            let r = _mm256_fmadd_ps(vb, _mm256_loadu_ps(py.add(i)), _mm256_loadu_ps(px.add(i)));
            _mm256_storeu_ps(py.add(i), r);
            i += 8;
        }
        while i < n {
            *py.add(i) = beta.mul_add(*py.add(i), *px.add(i));
            i += 1;
        }
    }
}

impl Kernels for Avx2Fma {
    #[inline(always)]
    fn dot(self, a: &[f32], b: &[f32]) -> f32 {
        check_len("dot", a.len(), b.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: an `Avx2Fma` exists only after the CPU check; lengths checked.
        unsafe {
            avx2::dot(a, b)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Portable.dot(a, b)
    }

    #[inline(always)]
    fn dot4(self, rows: [&[f32]; 4], v: &[f32]) -> [f32; 4] {
        for r in rows {
            check_len("dot4", v.len(), r.len());
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support proven by `self`; lengths checked.
        unsafe {
            avx2::dot4(rows, v)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Portable.dot4(rows, v)
    }

    #[inline(always)]
    fn axpy(self, alpha: f32, x: &[f32], y: &mut [f32]) {
        check_len("axpy", x.len(), y.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support proven by `self`; lengths checked.
        unsafe {
            avx2::axpy(alpha, x, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Portable.axpy(alpha, x, y)
    }

    #[inline(always)]
    fn axpy4(self, w: [f32; 4], rows: [&[f32]; 4], y: &mut [f32]) {
        for r in rows {
            check_len("axpy4", y.len(), r.len());
        }
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support proven by `self`; lengths checked.
        unsafe {
            avx2::axpy4(w, rows, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Portable.axpy4(w, rows, y)
    }

    #[inline(always)]
    fn xpby(self, x: &[f32], beta: f32, y: &mut [f32]) {
        check_len("xpby", x.len(), y.len());
        #[cfg(target_arch = "x86_64")]
        // SAFETY: CPU support proven by `self`; lengths checked.
        unsafe {
            avx2::xpby(x, beta, y)
        }
        #[cfg(not(target_arch = "x86_64"))]
        Portable.xpby(x, beta, y)
    }

    #[inline(always)]
    fn scale(self, alpha: f32, x: &mut [f32]) {
        // a plain multiply; LLVM vectorises it well enough for a cold path
        Portable.scale(alpha, x)
    }

    #[inline(always)]
    fn as_avx2(self) -> Option<Avx2Fma> {
        Some(self)
    }
}

// ---------------------------------------------------------------------------
// Convenience entry points for cold code (serving, tests): each call picks
// the kernel set. Hot loops should hold a `Backend` and use the trait.

/// `a . b`. Panics if the lengths differ (a programming error).
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    match Backend::detect() {
        Backend::Avx2Fma(k) => k.dot(a, b),
        Backend::Portable(k) => k.dot(a, b),
    }
}

/// `y += alpha * x`. Panics if the lengths differ.
pub fn axpy(alpha: f32, x: &[f32], y: &mut [f32]) {
    match Backend::detect() {
        Backend::Avx2Fma(k) => k.axpy(alpha, x, y),
        Backend::Portable(k) => k.axpy(alpha, x, y),
    }
}

/// `x *= alpha`.
pub fn scale(alpha: f32, x: &mut [f32]) {
    Portable.scale(alpha, x)
}

/// Euclidean norm, accumulated in f64 so long vectors do not lose precision.
pub fn norm(x: &[f32]) -> f32 {
    x.iter()
        .map(|&v| f64::from(v) * f64::from(v))
        .sum::<f64>()
        .sqrt() as f32
}

/// Hints the CPU to start loading `row` into cache. Used a few rows ahead
/// of randomly gathered factor rows, which the hardware prefetcher cannot
/// predict. A no-op off x86_64.
#[inline(always)]
pub fn prefetch(row: &[f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
        const LINE_FLOATS: usize = 16; // 64-byte cache lines
        let mut i = 0;
        while i < row.len() {
            // SAFETY: SSE is part of the x86_64 baseline, and a prefetch
            // never faults; the address is inside `row` anyway.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().add(i).cast::<i8>()) };
            i += LINE_FLOATS;
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = row;
}

// ---------------------------------------------------------------------------
// Gram matrix

/// Rows per partial sum. Fixed (not derived from the thread count) so the
/// reduction order, and hence the result, never depends on the pool size.
const GRAM_BLOCK_ROWS: usize = 512;

/// `M^T M + diag * I` as a full symmetric `k x k` row-major buffer
/// (k = `m.cols()`). Runs in parallel on the current rayon pool; the result
/// is bit-identical for any number of threads.
pub fn gram<K: Kernels>(kern: K, m: &Matrix, diag: f32) -> Vec<f32> {
    let k = m.cols();
    let data = m.as_slice();
    if k == 0 {
        return Vec::new();
    }
    let partials: Vec<Vec<f32>> = data
        .par_chunks(GRAM_BLOCK_ROWS * k)
        .map(|block| gram_block(kern, block, k))
        .collect();
    let mut out = vec![0f32; k * k];
    for p in &partials {
        for (o, v) in out.iter_mut().zip(p) {
            *o += v;
        }
    }
    for d in 0..k {
        out[d * k + d] += diag;
    }
    out
}

/// `M^T M` with the fastest kernels this CPU has.
pub fn gram_matrix(m: &Matrix) -> Vec<f32> {
    match Backend::detect() {
        Backend::Portable(k) => gram(k, m, 0.0),
        Backend::Avx2Fma(k) => gram(k, m, 0.0),
    }
}

fn gram_block<K: Kernels>(kern: K, block: &[f32], k: usize) -> Vec<f32> {
    let mut g = vec![0f32; k * k];
    match kern.as_avx2() {
        #[cfg(target_arch = "x86_64")]
        Some(avx) => {
            // SAFETY: `avx` proves AVX2 and FMA are available.
            unsafe { gram_block_avx2(avx, block, k, &mut g) }
        }
        _ => gram_block_generic(kern, block, k, &mut g),
    }
    g
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gram_block_avx2(kern: Avx2Fma, block: &[f32], k: usize, g: &mut [f32]) {
    gram_block_generic(kern, block, k, g)
}

#[inline(always)]
fn gram_block_generic<K: Kernels>(kern: K, block: &[f32], k: usize, g: &mut [f32]) {
    let mut rows = block.chunks_exact(k);
    // four rank-1 updates at a time share each load/store of a Gram row
    while rows.len() >= 4 {
        let r = [
            rows.next().expect("len checked"),
            rows.next().expect("len checked"),
            rows.next().expect("len checked"),
            rows.next().expect("len checked"),
        ];
        for (j, gj) in g.chunks_exact_mut(k).enumerate() {
            kern.axpy4([r[0][j], r[1][j], r[2][j], r[3][j]], r, gj);
        }
    }
    for r in rows {
        for (j, gj) in g.chunks_exact_mut(k).enumerate() {
            kern.axpy(r[j], r, gj);
        }
    }
}

/// `out = s * A v` for a full symmetric row-major `n x n` matrix `A`
/// (rows of a symmetric matrix are its columns, so this is a weighted sum
/// of rows — the form the kernels are fast at).
#[inline(always)]
pub fn sym_matvec<K: Kernels>(kern: K, a: &[f32], v: &[f32], s: f32, out: &mut [f32]) {
    let n = v.len();
    check_len("sym_matvec matrix", n * n, a.len());
    out.fill(0.0);
    let mut j = 0;
    while j + 4 <= n {
        kern.axpy4(
            [s * v[j], s * v[j + 1], s * v[j + 2], s * v[j + 3]],
            [
                &a[j * n..(j + 1) * n],
                &a[(j + 1) * n..(j + 2) * n],
                &a[(j + 2) * n..(j + 3) * n],
                &a[(j + 3) * n..(j + 4) * n],
            ],
            out,
        );
        j += 4;
    }
    while j < n {
        kern.axpy(s * v[j], &a[j * n..(j + 1) * n], out);
        j += 1;
    }
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::Rng;

    fn random_vec(rng: &mut Rng, n: usize) -> Vec<f32> {
        (0..n).map(|_| rng.normal() as f32).collect()
    }

    fn naive_dot(a: &[f32], b: &[f32]) -> f64 {
        a.iter()
            .zip(b)
            .map(|(x, y)| f64::from(*x) * f64::from(*y))
            .sum()
    }

    fn all_backends() -> Vec<Backend> {
        let mut v = vec![Backend::Portable(Portable)];
        if let Some(a) = Avx2Fma::detect() {
            v.push(Backend::Avx2Fma(a));
        }
        v
    }

    #[test]
    fn kernels_agree_with_f64_reference_for_awkward_lengths() {
        let mut rng = Rng::new(3);
        for n in [0usize, 1, 7, 8, 9, 15, 16, 17, 31, 33, 64, 100] {
            let a = random_vec(&mut rng, n);
            let b = random_vec(&mut rng, n);
            let c = random_vec(&mut rng, n);
            let d = random_vec(&mut rng, n);
            let e = random_vec(&mut rng, n);
            let tol = 1e-4 * (n as f64 + 1.0);
            for be in all_backends() {
                let (got_dot, got4, y1, y4, yx) = match be {
                    Backend::Portable(k) => run_all(k, &a, &b, &c, &d, &e),
                    Backend::Avx2Fma(k) => run_all(k, &a, &b, &c, &d, &e),
                };
                assert!(
                    (f64::from(got_dot) - naive_dot(&a, &b)).abs() < tol,
                    "{be:?} n={n}"
                );
                for (g, row) in got4.iter().zip([&a, &b, &c, &d]) {
                    assert!((f64::from(*g) - naive_dot(row, &e)).abs() < tol);
                }
                for i in 0..n {
                    let want1 = e[i] + 0.5 * a[i];
                    assert!((y1[i] - want1).abs() < 1e-5);
                    let want4 = e[i] + 1.0 * a[i] - 2.0 * b[i] + 0.25 * c[i] + 3.0 * d[i];
                    assert!((y4[i] - want4).abs() < 1e-4);
                    let wantx = a[i] + 0.5 * e[i];
                    assert!((yx[i] - wantx).abs() < 1e-5);
                }
            }
        }
    }

    #[allow(clippy::type_complexity)]
    fn run_all<K: Kernels>(
        k: K,
        a: &[f32],
        b: &[f32],
        c: &[f32],
        d: &[f32],
        e: &[f32],
    ) -> (f32, [f32; 4], Vec<f32>, Vec<f32>, Vec<f32>) {
        let dt = k.dot(a, b);
        let d4 = k.dot4([a, b, c, d], e);
        let mut y1 = e.to_vec();
        k.axpy(0.5, a, &mut y1);
        let mut y4 = e.to_vec();
        k.axpy4([1.0, -2.0, 0.25, 3.0], [a, b, c, d], &mut y4);
        let mut yx = e.to_vec();
        k.xpby(a, 0.5, &mut yx);
        (dt, d4, y1, y4, yx)
    }

    #[test]
    fn norm_and_scale() {
        assert_eq!(norm(&[3.0, 4.0]), 5.0);
        let mut v = vec![1.0, -2.0];
        scale(2.0, &mut v);
        assert_eq!(v, vec![2.0, -4.0]);
        let mut y = vec![1.0, 1.0];
        axpy(2.0, &[1.0, 2.0], &mut y);
        assert_eq!(y, vec![3.0, 5.0]);
        assert_eq!(dot(&[1.0, 2.0, 3.0], &[4.0, 5.0, 6.0]), 32.0);
    }

    #[test]
    fn cholesky_solves_hand_verified_system() {
        // A = [[4,2,0],[2,5,3],[0,3,10]] = L L^T with
        // L = [[2,0,0],[1,2,0],[0,1.5,sqrt(7.75)]]; x = [1,-1,2] gives
        // b = A x = [2, 3, 17].
        let a = [4.0, 2.0, 0.0, 2.0, 5.0, 3.0, 0.0, 3.0, 10.0];
        let mut f: Vec<f64> = a.to_vec();
        cholesky_factor(&mut f, 3).unwrap();
        assert_eq!(f[0], 2.0);
        assert_eq!(f[3], 1.0);
        assert_eq!(f[4], 2.0);
        assert_eq!(f[7], 1.5);
        assert!((f[8] - 7.75f64.sqrt()).abs() < 1e-12);
        let x = solve_spd(&a.map(|v| v as f32), &[2.0, 3.0, 17.0]).unwrap();
        for (got, want) in x.iter().zip([1.0, -1.0, 2.0]) {
            assert!((got - want).abs() < 1e-6, "{x:?}");
        }
    }

    #[test]
    fn cholesky_rejects_indefinite_and_misshapen_input() {
        let mut a = vec![1.0, 2.0, 2.0, 1.0]; // eigenvalues 3 and -1
        assert!(matches!(
            cholesky_factor(&mut a, 2),
            Err(LinalgError::NotPositiveDefinite { pivot: 1, .. })
        ));
        let mut nan = vec![f64::NAN];
        assert!(cholesky_factor(&mut nan, 1).is_err());
        let mut short = vec![1.0; 3];
        assert!(matches!(
            cholesky_factor(&mut short, 2),
            Err(LinalgError::DimensionMismatch { .. })
        ));
    }

    fn random_spd(rng: &mut Rng, n: usize) -> Vec<f32> {
        // B^T B + I is SPD with eigenvalues >= 1
        let b = Matrix::from_vec(2 * n, n, random_vec(rng, 2 * n * n)).unwrap();
        gram(Portable, &b, 1.0)
    }

    #[test]
    fn cg_converges_on_spd_system_and_matches_cholesky() {
        let mut rng = Rng::new(11);
        let n = 24;
        let a = random_spd(&mut rng, n);
        let b = random_vec(&mut rng, n);
        let exact = solve_spd(&a, &b).unwrap();
        let mut x = vec![0f32; n];
        let steps = conjugate_gradient(&a, &b, &mut x, 200).unwrap();
        assert!(steps >= 1);
        let err: f32 = x
            .iter()
            .zip(&exact)
            .map(|(p, q)| (p - q).abs())
            .fold(0.0, f32::max);
        assert!(err < 1e-3, "max error {err} after {steps} steps");

        // a few steps from zero already shrink the residual; more steps shrink it further
        let resid = |x: &[f32]| {
            let mut ax = vec![0f32; n];
            sym_matvec(Portable, &a, x, 1.0, &mut ax);
            norm(&ax.iter().zip(&b).map(|(p, q)| p - q).collect::<Vec<_>>())
        };
        let mut x3 = vec![0f32; n];
        conjugate_gradient(&a, &b, &mut x3, 3).unwrap();
        let r0 = norm(&b);
        assert!(resid(&x3) < r0);
        assert!(resid(&x) < resid(&x3));
    }

    #[test]
    fn gram_matches_naive_and_is_thread_count_independent() {
        let mut rng = Rng::new(5);
        let (rows, k) = (GRAM_BLOCK_ROWS * 2 + 37, 13);
        let m = Matrix::from_vec(rows, k, random_vec(&mut rng, rows * k)).unwrap();
        for be in all_backends() {
            let run = |threads: usize| {
                let pool = rayon::ThreadPoolBuilder::new()
                    .num_threads(threads)
                    .build()
                    .unwrap();
                pool.install(|| match be {
                    Backend::Portable(kk) => gram(kk, &m, 0.5),
                    Backend::Avx2Fma(kk) => gram(kk, &m, 0.5),
                })
            };
            let g1 = run(1);
            assert_eq!(g1, run(2), "{be:?}");
            for i in 0..k {
                for j in 0..k {
                    let want: f64 = (0..rows)
                        .map(|r| f64::from(m.row(r)[i]) * f64::from(m.row(r)[j]))
                        .sum::<f64>()
                        + if i == j { 0.5 } else { 0.0 };
                    assert!((f64::from(g1[i * k + j]) - want).abs() < 1e-2 * want.abs().max(1.0));
                    assert_eq!(g1[i * k + j], g1[j * k + i]);
                }
            }
        }
    }

    #[test]
    fn sym_matvec_matches_naive() {
        let mut rng = Rng::new(9);
        for n in [1usize, 5, 8, 19] {
            let a = random_spd(&mut rng, n);
            let v = random_vec(&mut rng, n);
            for be in all_backends() {
                let mut out = vec![0f32; n];
                match be {
                    Backend::Portable(k) => sym_matvec(k, &a, &v, -2.0, &mut out),
                    Backend::Avx2Fma(k) => sym_matvec(k, &a, &v, -2.0, &mut out),
                }
                for i in 0..n {
                    let want: f64 = -2.0
                        * (0..n)
                            .map(|j| f64::from(a[i * n + j]) * f64::from(v[j]))
                            .sum::<f64>();
                    assert!((f64::from(out[i]) - want).abs() < 1e-3 * want.abs().max(1.0));
                }
            }
        }
    }
}
