//! AVX2 + FMA intrinsics, compiled on x86_64 only. Each function requires
//! AVX2 and FMA; callers prove that with an `Avx2Fma` value. Loads are
//! unaligned (factor rows start anywhere). Must not touch: kernel choice
//! (that is `kernels::Backend`).

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
