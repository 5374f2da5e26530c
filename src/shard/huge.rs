//! Large arrays a walk reads at random (the graph's base layer, the f16 and
//! f32 rows) placed on transparent huge pages where the kernel allows it.
//!
//! Why: a shard of 83k items spreads ~20 MB of neighbour lists and rows
//! over 5,000 4-KiB pages, and a node of twelve such shards over 60,000:
//! far more than the TLB holds, so nearly every neighbour a walk reaches
//! costs a page-table walk on top of its cache miss, and a request that
//! finds the page-walk caches cold (the node was idle, or ranking ran in
//! between) pays it in full. On 2-MiB pages the same arrays take ~130
//! TLB entries. Most kernels ship THP as `madvise`, so the arrays ask for
//! it before their pages are first touched; where the kernel refuses
//! (THP off, not Linux) they stay on normal pages and nothing else changes.
//!
//! Owns: allocation of those arrays. Must not touch: their contents.

/// Huge page size on x86-64 and most arm64 kernels.
const HUGE: usize = 2 << 20;

/// A vector of `len` zeros whose pages are asked to be huge before they
/// are touched.
pub fn zeroed<T: Copy + Default>(len: usize) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(len);
    advise(&v, Advice::Huge);
    v.resize(len, T::default());
    advise(&v, Advice::Collapse);
    v
}

/// A copy of `src` on huge pages (see `zeroed`).
pub fn copied<T: Copy>(src: &[T]) -> Vec<T> {
    let mut v: Vec<T> = Vec::with_capacity(src.len());
    advise(&v, Advice::Huge);
    v.extend_from_slice(src);
    advise(&v, Advice::Collapse);
    v
}

#[derive(Clone, Copy)]
enum Advice {
    /// Back pages first touched from now on with huge pages.
    Huge,
    /// Turn pages already touched into huge pages now. Needed because the
    /// allocator often hands back memory an earlier, freed allocation (the
    /// bundle's load buffers) already touched on 4-KiB pages, which the
    /// first advice does not change (measured: a twelve-shard node got
    /// huge pages for about a quarter of these arrays without this).
    Collapse,
}

/// `MADV_COLLAPSE` (Linux 6.1); older kernels answer EINVAL, which is fine.
#[cfg(target_os = "linux")]
const MADV_COLLAPSE: libc::c_int = 25;

/// Asks for huge pages over the 2-MiB-aligned part of `v`'s allocation.
/// Small arrays (under two huge pages) are left alone: they fit the TLB.
fn advise<T>(v: &Vec<T>, advice: Advice) {
    let bytes = v.capacity() * std::mem::size_of::<T>();
    if bytes < 2 * HUGE {
        return;
    }
    let start = v.as_ptr() as usize;
    let lo = start.div_ceil(HUGE) * HUGE;
    let hi = (start + bytes) / HUGE * HUGE;
    if hi <= lo {
        return;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (lo, hi, advice);
    #[cfg(target_os = "linux")]
    {
        // SAFETY: [lo, hi) lies inside `v`'s own allocation; MADV_HUGEPAGE
        // changes only how the kernel backs those pages, never their
        // contents or validity. A refusal (THP disabled) is harmless.
        let flag = match advice {
            Advice::Huge => libc::MADV_HUGEPAGE,
            Advice::Collapse => MADV_COLLAPSE,
        };
        let rc = unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, flag) };
        if rc != 0 {
            tracing::debug!(
                error = %std::io::Error::last_os_error(),
                "huge pages refused; the shard stays on normal pages"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn huge_arrays_hold_what_normal_ones_do() {
        let n = 3 * HUGE / 4 + 17; // several huge pages of u32, unaligned length
        let z: Vec<u32> = zeroed(n);
        assert_eq!(z.len(), n);
        assert!(z.iter().all(|&x| x == 0));
        let src: Vec<u16> = (0..n).map(|i| (i % 65_521) as u16).collect();
        let c = copied(&src);
        assert_eq!(c, src);
        let small: Vec<f32> = copied(&[1.0, 2.0]);
        assert_eq!(small, vec![1.0, 2.0]);
    }
}
