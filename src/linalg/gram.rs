//! Gram matrices (`M^T M + diag I`, reduced in fixed blocks so the result
//! does not depend on the thread count) and the symmetric matrix-vector
//! product the CG solver applies. Must not touch: solving (see `solve`).

use rayon::prelude::*;

#[cfg(target_arch = "x86_64")]
use super::Avx2Fma;
use super::{check_len, Backend, Kernels};
use crate::matrix::Matrix;

// ---------------------------------------------------------------------------
// Gram matrix

/// Rows per partial sum. Fixed (not derived from the thread count) so the
/// reduction order, and hence the result, never depends on the pool size.
pub(super) const GRAM_BLOCK_ROWS: usize = 512;

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
