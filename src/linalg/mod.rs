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
//!
//! Files: `kernels` (the kernel trait, both sets and run-time choice),
//! `avx2` (the x86_64 intrinsics behind `Avx2Fma`), `gram` (Gram matrices
//! and symmetric mat-vec), `solve` (Cholesky and conjugate gradient).

#[cfg(target_arch = "x86_64")]
mod avx2;
mod gram;
mod kernels;
mod solve;

use thiserror::Error;

pub use gram::{gram, gram_matrix, sym_matvec};
pub use kernels::{Avx2Fma, Backend, Kernels, Portable};
pub use solve::{
    cg_refine, cholesky_factor, cholesky_solve, conjugate_gradient, solve_spd, solve_spd_f64,
    CgScratch, CG_RESIDUAL_FLOOR,
};

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

fn check_len(what: &'static str, expected: usize, got: usize) {
    // Slice lengths are programming invariants here, never user input.
    assert_eq!(expected, got, "{what}: slice lengths differ");
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

#[cfg(test)]
mod tests;
