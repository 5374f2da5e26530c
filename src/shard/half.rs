//! Half-precision (IEEE 754 binary16) copies of vectors, and the inner
//! product of an f32 query with one, for the graph walk.
//!
//! Why: a walk is bound by the cache lines it waits for, and a 64-wide f16
//! vector is two lines where f32 is four. Only the walk reads these; every
//! score a caller sees is recomputed from the f32 rows.
//!
//! x86_64 with F16C (every AVX2 CPU in practice) converts with one
//! instruction per eight values; elsewhere `Half::detect` says no and the
//! walk reads f32. Owns: the encoding and the kernel. Must not touch: the
//! graph or the rows' meaning.

/// Proof that the running CPU has AVX2, FMA and F16C.
#[derive(Debug, Clone, Copy)]
pub struct Half {
    _proof: (),
}

impl Half {
    pub fn detect() -> Option<Half> {
        #[cfg(target_arch = "x86_64")]
        {
            static HAS: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
            let has = *HAS.get_or_init(|| {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
                    && std::arch::is_x86_feature_detected!("f16c")
            });
            if has && std::env::var_os("FUNNEL_PORTABLE_KERNELS").is_none_or(|v| v != "1") {
                return Some(Half { _proof: () });
            }
        }
        None
    }

    /// `xs` rounded to f16 (nearest, ties to even), as raw bits.
    pub fn encode(self, xs: &[f32]) -> Vec<u16> {
        #[cfg(target_arch = "x86_64")]
        {
            // SAFETY: `self` proves F16C and AVX2.
            unsafe { x86::encode(xs) }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            let _ = xs;
            unreachable!("Half exists only on x86_64")
        }
    }
}

/// f16 rows of `dim` values and one f32 query.
#[cfg(target_arch = "x86_64")]
pub struct HalfRows<'a> {
    _proof: Half,
    half: &'a [u16],
    dim: usize,
    query: &'a [f32],
}

#[cfg(target_arch = "x86_64")]
impl<'a> HalfRows<'a> {
    pub fn new(proof: Half, half: &'a [u16], dim: usize, query: &'a [f32]) -> Self {
        HalfRows {
            _proof: proof,
            half,
            dim,
            query,
        }
    }

    #[inline(always)]
    fn row(&self, slot: u32) -> &[u16] {
        let at = slot as usize * self.dim;
        &self.half[at..at + self.dim]
    }
}

#[cfg(target_arch = "x86_64")]
impl super::graph::Rows for HalfRows<'_> {
    #[inline(always)]
    fn score(&self, slot: u32) -> f32 {
        // SAFETY: `_proof` shows the CPU has AVX2, FMA and F16C; the row and
        // the query have `dim` values each.
        unsafe { x86::dot(self.query, self.row(slot)) }
    }

    #[inline(always)]
    fn prefetch(&self, slot: u32) {
        let row = self.row(slot);
        let bytes = row.len() * 2;
        let p = row.as_ptr().cast::<i8>();
        let mut off = 0;
        while off < bytes {
            // SAFETY: SSE is baseline on x86_64 and a prefetch never faults.
            unsafe { std::arch::x86_64::_mm_prefetch(p.add(off), std::arch::x86_64::_MM_HINT_T0) };
            off += 64;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx2,fma,f16c")]
    pub unsafe fn encode(xs: &[f32]) -> Vec<u16> {
        let mut out: Vec<u16> = crate::shard::huge::zeroed(xs.len());
        let mut i = 0;
        while i + 8 <= xs.len() {
            let v = _mm256_loadu_ps(xs.as_ptr().add(i));
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(v);
            _mm_storeu_si128(out.as_mut_ptr().add(i).cast::<__m128i>(), h);
            i += 8;
        }
        if i < xs.len() {
            let mut tail = [0f32; 8];
            tail[..xs.len() - i].copy_from_slice(&xs[i..]);
            let h = _mm256_cvtps_ph::<_MM_FROUND_TO_NEAREST_INT>(_mm256_loadu_ps(tail.as_ptr()));
            let mut bits = [0u16; 8];
            _mm_storeu_si128(bits.as_mut_ptr().cast::<__m128i>(), h);
            let n = xs.len() - i;
            out[i..].copy_from_slice(&bits[..n]);
        }
        out
    }

    /// `q . h` with `h` widened to f32; the slices have equal length.
    #[target_feature(enable = "avx2,fma,f16c")]
    #[inline]
    pub unsafe fn dot(q: &[f32], h: &[u16]) -> f32 {
        debug_assert_eq!(q.len(), h.len());
        let n = q.len().min(h.len());
        let (pq, ph) = (q.as_ptr(), h.as_ptr());
        let mut acc0 = _mm256_setzero_ps();
        let mut acc1 = _mm256_setzero_ps();
        let mut i = 0;
        while i + 16 <= n {
            let h0 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i).cast::<__m128i>()));
            let h1 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i + 8).cast::<__m128i>()));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), h0, acc0);
            acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i + 8)), h1, acc1);
            i += 16;
        }
        if i + 8 <= n {
            let h0 = _mm256_cvtph_ps(_mm_loadu_si128(ph.add(i).cast::<__m128i>()));
            acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(pq.add(i)), h0, acc0);
            i += 8;
        }
        let acc = _mm256_add_ps(acc0, acc1);
        let lo = _mm256_castps256_ps128(acc);
        let hi = _mm256_extractf128_ps::<1>(acc);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps::<0b01>(s, s));
        let mut sum = _mm_cvtss_f32(s);
        if i < n {
            let mut bits = [0u16; 8];
            bits[..n - i].copy_from_slice(&h[i..n]);
            let mut wide = [0f32; 8];
            _mm256_storeu_ps(
                wide.as_mut_ptr(),
                _mm256_cvtph_ps(_mm_loadu_si128(bits.as_ptr().cast::<__m128i>())),
            );
            for j in i..n {
                sum += q[j] * wide[j - i];
            }
        }
        sum
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::shard::graph::Rows;

    #[test]
    fn encoding_rounds_to_the_nearest_half_and_the_dot_widens_exactly() {
        let Some(h) = Half::detect() else {
            eprintln!("this CPU has no F16C: the walk reads f32 here, nothing to test");
            return;
        };
        // exactly representable values survive; 1/3 rounds to 0x3555
        let xs = [
            1.0f32,
            -2.0,
            0.5,
            65504.0,
            0.0,
            1.0 / 3.0,
            3.0,
            0.25,
            7.0,
            -1.5,
        ];
        let bits = h.encode(&xs);
        assert_eq!(&bits[..5], &[0x3c00, 0xc000, 0x3800, 0x7bff, 0x0000]);
        assert_eq!(bits[5], 0x3555);
        assert_eq!(bits.len(), xs.len());
        // the dot over a vector with a tail equals the f32 dot of the rounded values
        let q: Vec<f32> = (0..xs.len()).map(|i| i as f32 * 0.5 - 1.0).collect();
        let rows = HalfRows::new(h, &bits, xs.len(), &q);
        let rounded: Vec<f32> = xs
            .iter()
            .map(|&x| if x == 1.0 / 3.0 { 0.333_251_95 } else { x })
            .collect();
        let want: f32 = q.iter().zip(&rounded).map(|(a, b)| a * b).sum();
        assert!(
            (rows.score(0) - want).abs() < 1e-3,
            "{} vs {want}",
            rows.score(0)
        );
    }
}
