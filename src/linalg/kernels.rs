//! The kernel sets: the `Kernels` trait the hot loops are written against,
//! the portable 8-lane loops, the AVX2 + FMA set (proved present by its
//! value) and `Backend`, the run-time choice between them. Must not touch:
//! anything beyond single slices (matrices and solvers live in `gram` and
//! `solve`).

#[cfg(target_arch = "x86_64")]
use super::avx2;
use super::check_len;

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
