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

thread_local! {
    /// CPU microseconds this thread has recorded to any stage so far.
    static RECORDED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
}

/// Called by `metrics::record_cpu`: lets an enclosing `CpuTimed` leave out
/// work a nested stage already counted (a search run inside an RPC
/// handler is ANN, not RPC).
pub fn note_recorded(micros: u64) {
    let _ = RECORDED.try_with(|r| r.set(r.get().wrapping_add(micros)));
}

fn recorded_here() -> u64 {
    RECORDED.try_with(|r| r.get()).unwrap_or(0)
}

/// A future that adds the CPU time its own polls take (on whatever thread
/// polls it) to stage `stage` of `funnel_cpu_seconds_total` when it ends,
/// less what stages nested in those polls recorded themselves.
/// For work that is spread over an await (an RPC: build, send, decode the
/// answer) where timing the thread from start to end would also count the
/// other tasks that ran on it in between.
pub struct CpuTimed<F> {
    inner: std::pin::Pin<Box<F>>,
    stage: &'static str,
    micros: u64,
}

impl<F: std::future::Future> CpuTimed<F> {
    pub fn new(stage: &'static str, fut: F) -> Self {
        CpuTimed {
            inner: Box::pin(fut),
            stage,
            micros: 0,
        }
    }
}

impl<F: std::future::Future> std::future::Future for CpuTimed<F> {
    type Output = F::Output;

    fn poll(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<F::Output> {
        let (t0, nested0) = (thread_cpu_micros(), recorded_here());
        let out = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_micros().saturating_sub(t0);
        let nested = recorded_here().wrapping_sub(nested0);
        self.micros += spent.saturating_sub(nested);
        if out.is_ready() {
            crate::telemetry::metrics::record_cpu(self.stage, self.micros);
        }
        out
    }
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
    fn a_timed_future_counts_only_its_own_polls() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let before = crate::telemetry::metrics::cpu_seconds("test-timed");
        rt.block_on(CpuTimed::new("test-timed", async {
            let mut x = 0u64;
            for i in 0..5_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            // a sleep costs no CPU of this future's own
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }));
        let spent = crate::telemetry::metrics::cpu_seconds("test-timed") - before;
        assert!(spent > 0.0 && spent < 0.05, "{spent}");
    }

    #[test]
    fn a_timed_future_leaves_out_what_a_nested_stage_recorded() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let (outer0, inner0) = (
            crate::telemetry::metrics::cpu_seconds("test-outer"),
            crate::telemetry::metrics::cpu_seconds("test-inner"),
        );
        rt.block_on(CpuTimed::new("test-outer", async {
            // all of this future's work is a nested stage's
            let t0 = thread_cpu_micros();
            let mut x = 0u64;
            for i in 0..20_000_000u64 {
                x = x.wrapping_mul(31).wrapping_add(i);
            }
            std::hint::black_box(x);
            crate::telemetry::metrics::record_cpu("test-inner", thread_cpu_micros() - t0);
        }));
        let outer = crate::telemetry::metrics::cpu_seconds("test-outer") - outer0;
        let inner = crate::telemetry::metrics::cpu_seconds("test-inner") - inner0;
        assert!(inner > 0.001, "{inner}");
        assert!(
            outer < inner / 5.0,
            "outer {outer} counted the nested work {inner}"
        );
    }

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
