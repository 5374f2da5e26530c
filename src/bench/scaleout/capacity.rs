//! Finding a cluster's capacity: the highest open-loop rate at which a run
//! meets the latency target with no errors. Plain logic, no I/O: the
//! caller runs each rate this asks for and reports whether it passed.
//!
//! Steps up by a factor from a start rate while runs pass (or down while
//! they fail), then bisects between the best pass and the lowest failure
//! for a few more runs. Noisy results (a pass above a failure) are kept
//! honest: capacity is never above the lowest failing rate.

use serde::Serialize;

/// How the search moves.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SearchPlan {
    /// First rate tried, requests/s.
    pub start: f64,
    /// Factor between stepped rates (> 1).
    pub growth: f64,
    /// Bisection runs after the first failure above a pass.
    pub refine: usize,
    /// Stop refining when the bracket is narrower than this fraction.
    pub resolution: f64,
    /// Rates outside [min, max] are not tried.
    pub min: f64,
    pub max: f64,
}

impl Default for SearchPlan {
    fn default() -> Self {
        SearchPlan {
            start: 50.0,
            growth: 1.5,
            refine: 3,
            resolution: 0.03,
            min: 1.0,
            max: 100_000.0,
        }
    }
}

/// One finished run.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Trial {
    pub rate: f64,
    pub passed: bool,
}

/// The search's state: the runs so far.
#[derive(Debug, Clone)]
pub struct CapacitySearch {
    plan: SearchPlan,
    trials: Vec<Trial>,
    refined: usize,
}

impl CapacitySearch {
    pub fn new(plan: SearchPlan) -> Self {
        CapacitySearch {
            plan,
            trials: Vec::new(),
            refined: 0,
        }
    }

    pub fn trials(&self) -> &[Trial] {
        &self.trials
    }

    /// The lowest failing rate, if any.
    fn lowest_fail(&self) -> Option<f64> {
        self.trials
            .iter()
            .filter(|t| !t.passed)
            .map(|t| t.rate)
            .min_by(f64::total_cmp)
    }

    /// The highest passing rate below every failure.
    pub fn capacity(&self) -> Option<f64> {
        let ceiling = self.lowest_fail().unwrap_or(f64::INFINITY);
        self.trials
            .iter()
            .filter(|t| t.passed && t.rate < ceiling)
            .map(|t| t.rate)
            .max_by(f64::total_cmp)
    }

    /// Records the outcome of a run at `rate`.
    pub fn record(&mut self, rate: f64, passed: bool) {
        if self.capacity().is_some() && self.lowest_fail().is_some() {
            // a bracket existed before this run: it was a refinement
            self.refined += 1;
        }
        self.trials.push(Trial { rate, passed });
    }

    /// The next rate to run, or None when the search is done.
    pub fn next(&self) -> Option<f64> {
        let p = &self.plan;
        let Some(last) = self.trials.last() else {
            return Some(p.start.clamp(p.min, p.max));
        };
        match (self.capacity(), self.lowest_fail()) {
            // everything passed so far: step up
            (Some(best), None) => {
                // the last step is clipped to the ceiling, then the search ends
                (best < p.max).then_some((best * p.growth).min(p.max))
            }
            // everything failed so far: step down
            (None, Some(worst)) => {
                let down = worst / p.growth;
                (down >= p.min).then_some(down)
            }
            (Some(lo), Some(hi)) => {
                if self.refined >= p.refine || (hi - lo) / lo <= p.resolution {
                    return None;
                }
                let mid = round_rate((lo + hi) / 2.0);
                (mid > lo && mid < hi && mid != last.rate).then_some(mid)
            }
            (None, None) => None,
        }
    }
}

/// Rates are reported to a tenth of a request per second.
fn round_rate(r: f64) -> f64 {
    (r * 10.0).round() / 10.0
}

/// What one run measured, for the verdict.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct RunFigures {
    pub due: u64,
    pub sent: u64,
    pub errors: u64,
    /// p99 latency from the intended send time, ms (None: no answers).
    pub p99_ms: Option<f64>,
    /// Mean share of shards that answered in time (None: not reported).
    pub coverage: Option<f64>,
}

/// Whether a run passed, and if not, why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Verdict {
    pub passed: bool,
    pub reason: String,
}

/// A run passes when every due request was sent, none failed, the p99
/// from the intended send time is within the target, and the mean
/// coverage is at least `min_coverage` (0: answers missing shards count
/// as answers, which is how capacity is defined by default).
pub fn judge(f: &RunFigures, target_p99_ms: f64, min_coverage: f64) -> Verdict {
    let fail = |reason: String| Verdict {
        passed: false,
        reason,
    };
    if f.sent < f.due {
        return fail(format!(
            "{} of {} due requests sent (the rest found every in-flight slot taken)",
            f.sent, f.due
        ));
    }
    if f.errors > 0 {
        return fail(format!("{} errors", f.errors));
    }
    if min_coverage > 0.0 {
        match f.coverage {
            Some(c) if c >= min_coverage => {}
            Some(c) => {
                return fail(format!(
                    "coverage {c:.4} < {min_coverage} (shards missed their deadline)"
                ))
            }
            None => return fail("coverage not reported".into()),
        }
    }
    match f.p99_ms {
        None => fail("no answers".into()),
        Some(p) if p > target_p99_ms => fail(format!("p99 {p:.1} ms > {target_p99_ms} ms")),
        Some(p) => Verdict {
            passed: true,
            reason: format!("p99 {p:.1} ms, no errors"),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the search against a cluster whose true capacity is `cap`.
    fn search_against(plan: SearchPlan, pass: impl Fn(f64) -> bool) -> CapacitySearch {
        let mut s = CapacitySearch::new(plan);
        let mut guard = 0;
        while let Some(rate) = s.next() {
            s.record(rate, pass(rate));
            guard += 1;
            assert!(guard < 40, "the search must end: {:?}", s.trials());
        }
        s
    }

    #[test]
    fn steps_up_then_bisects_to_within_the_resolution_or_the_run_budget() {
        let plan = SearchPlan {
            start: 50.0,
            growth: 1.5,
            refine: 3,
            ..Default::default()
        };
        let s = search_against(plan, |r| r <= 130.0);
        let rates: Vec<f64> = s.trials().iter().map(|t| t.rate).collect();
        // 50, 75, 112.5 pass; 168.75 fails; then three bisections
        assert_eq!(&rates[..4], &[50.0, 75.0, 112.5, 168.75]);
        assert_eq!(rates.len(), 7);
        let cap = s.capacity().unwrap();
        assert!((112.5..=130.0).contains(&cap), "{cap}");
        assert_eq!(cap, 126.6);
    }

    #[test]
    fn steps_down_when_the_start_fails_and_reports_none_when_nothing_passes() {
        let s = search_against(SearchPlan::default(), |r| r <= 20.0);
        assert_eq!(
            s.trials()[0],
            Trial {
                rate: 50.0,
                passed: false
            }
        );
        assert!(s.trials()[1].rate < 50.0);
        let cap = s.capacity().unwrap();
        assert!(cap <= 20.0 && cap > 13.0, "{cap}");

        let none = search_against(
            SearchPlan {
                min: 5.0,
                ..Default::default()
            },
            |_| false,
        );
        assert_eq!(none.capacity(), None);
        assert!(none.trials().iter().all(|t| t.rate >= 5.0));
    }

    #[test]
    fn a_noisy_pass_above_a_failure_does_not_raise_capacity() {
        let mut s = CapacitySearch::new(SearchPlan::default());
        s.record(100.0, true);
        s.record(150.0, false);
        s.record(125.0, false);
        s.record(160.0, true); // noise: above the failures
        assert_eq!(s.capacity(), Some(100.0));
    }

    #[test]
    fn the_search_stops_at_the_ceiling() {
        let s = search_against(
            SearchPlan {
                max: 100.0,
                ..Default::default()
            },
            |_| true,
        );
        assert_eq!(s.capacity(), Some(100.0));
    }

    #[test]
    fn a_run_passes_only_with_every_request_sent_none_failed_and_p99_in_target() {
        let ok = RunFigures {
            due: 100,
            sent: 100,
            errors: 0,
            p99_ms: Some(20.0),
            coverage: Some(0.98),
        };
        assert!(judge(&ok, 25.0, 0.0).passed);
        // a coverage floor, when asked for, fails degraded runs
        assert!(judge(&ok, 25.0, 0.97).passed);
        let v = judge(&ok, 25.0, 0.99);
        assert!(!v.passed && v.reason.contains("coverage 0.9800"), "{v:?}");
        assert!(
            !judge(
                &RunFigures {
                    coverage: None,
                    ..ok
                },
                25.0,
                0.99
            )
            .passed
        );
        let v = judge(
            &RunFigures {
                p99_ms: Some(30.0),
                ..ok
            },
            25.0,
            0.0,
        );
        assert!(!v.passed && v.reason.contains("p99 30.0 ms"), "{v:?}");
        assert!(!judge(&RunFigures { errors: 1, ..ok }, 25.0, 0.0).passed);
        let v = judge(&RunFigures { sent: 90, ..ok }, 25.0, 0.0);
        assert!(!v.passed && v.reason.contains("90 of 100"), "{v:?}");
        assert!(!judge(&RunFigures { p99_ms: None, ..ok }, 25.0, 0.0).passed);
    }
}
