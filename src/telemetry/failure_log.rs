//! Logging for steps a control loop retries every tick (reconcile, rollout,
//! transfers, event catch-up): a failure that clears within a grace period
//! is routine (an election, a peer restarting) and logs at debug; one that
//! persists logs at warn, then again at most once a minute while it lasts,
//! and its recovery at info. A loop that fails every 500 ms thus neither
//! hides a real fault at debug nor floods the log at warn.
//!
//! Owns: the per-step failure streak. Must not touch: what the step does or
//! when it is retried (the loop decides).

use std::time::{Duration, Instant};

/// How long a step may keep failing before it is logged at warn.
pub const GRACE: Duration = Duration::from_secs(10);
/// At most one warn per step in this long while it keeps failing.
pub const WARN_EVERY: Duration = Duration::from_secs(60);

/// What `StepFailures` logged (for tests; callers ignore it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    Nothing,
    Debug,
    Warn,
    Recovered,
}

/// The failure streak of one retried step.
#[derive(Debug, Clone)]
pub struct StepFailures {
    step: &'static str,
    /// When the current streak began.
    since: Option<Instant>,
    failures: u64,
    last_warn: Option<Instant>,
}

impl StepFailures {
    /// `step` names the step in the log ("reconcile", "rollout", ...).
    pub fn new(step: &'static str) -> Self {
        StepFailures {
            step,
            since: None,
            failures: 0,
            last_warn: None,
        }
    }

    /// Logs one failure of the step.
    pub fn failed(&mut self, error: &dyn std::fmt::Display) -> Logged {
        self.failed_at(Instant::now(), error)
    }

    /// Logs that the step finished: a recovery when a failure was warned.
    pub fn succeeded(&mut self) -> Logged {
        let warned = self.last_warn.is_some();
        if warned {
            tracing::info!(
                step = self.step,
                failures = self.failures,
                "control-loop step recovered"
            );
        }
        self.since = None;
        self.failures = 0;
        self.last_warn = None;
        if warned {
            Logged::Recovered
        } else {
            Logged::Nothing
        }
    }

    fn failed_at(&mut self, now: Instant, error: &dyn std::fmt::Display) -> Logged {
        let since = *self.since.get_or_insert(now);
        self.failures += 1;
        let failing_for = now.saturating_duration_since(since);
        let warn_due = failing_for >= GRACE
            && self
                .last_warn
                .is_none_or(|t| now.saturating_duration_since(t) >= WARN_EVERY);
        if warn_due {
            self.last_warn = Some(now);
            tracing::warn!(
                step = self.step,
                failures = self.failures,
                failing_for_s = failing_for.as_secs(),
                error = %error,
                "control-loop step keeps failing; retrying"
            );
            Logged::Warn
        } else {
            tracing::debug!(step = self.step, error = %error, "control-loop step did not finish; retrying");
            Logged::Debug
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_short_streak_stays_at_debug_and_a_long_one_warns_once_a_minute() {
        let mut s = StepFailures::new("reconcile");
        let t0 = Instant::now();
        assert_eq!(s.failed_at(t0, &"no leader"), Logged::Debug);
        assert_eq!(s.failed_at(t0 + GRACE / 2, &"no leader"), Logged::Debug);
        // a streak that clears in the grace period was routine
        assert_eq!(s.succeeded(), Logged::Nothing);
        assert_eq!(s.failed_at(t0 + GRACE, &"peer down"), Logged::Debug);
        let warned = t0 + GRACE * 2;
        assert_eq!(s.failed_at(warned, &"peer down"), Logged::Warn);
        assert_eq!(
            s.failed_at(warned + WARN_EVERY / 2, &"peer down"),
            Logged::Debug
        );
        assert_eq!(s.failed_at(warned + WARN_EVERY, &"peer down"), Logged::Warn);
        assert_eq!(s.succeeded(), Logged::Recovered);
        // a new streak starts its grace period afresh
        let t1 = warned + WARN_EVERY * 2;
        assert_eq!(s.failed_at(t1, &"again"), Logged::Debug);
    }
}
