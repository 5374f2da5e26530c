//! CPU time, so a benchmark can split a request's cost into ANN search,
//! ranking and everything else.

/// CPU time consumed by the calling thread, microseconds.
pub fn thread_cpu_micros() -> u64 {
    clock_micros(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// CPU time consumed by the whole process, microseconds.
pub fn process_cpu_micros() -> u64 {
    clock_micros(libc::CLOCK_PROCESS_CPUTIME_ID)
}

fn clock_micros(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own; the clocks used
    // here exist on every Linux since 2.6.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    if rc != 0 {
        return 0;
    }
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_clocks_advance_with_work() {
        let t0 = thread_cpu_micros();
        let p0 = process_cpu_micros();
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(thread_cpu_micros() > t0);
        assert!(process_cpu_micros() >= p0);
    }
}
