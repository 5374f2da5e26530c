//! Aggregation of measured requests into the figures of the report.
//!
//! Owns: `Sample` (one finished or refused request, with its three times),
//! `Recorder` (histograms and counters) and `LatencySummary`. Must not touch:
//! the network or the clock; a sample arrives with its durations computed.
//!
//! Latency is measured from the INTENDED send time, so a stalled server or
//! a stalled generator shows up in the figures for every request it
//! delayed (coordinated omission); service time (from the actual send) is
//! kept separately to tell the two apart.

use super::client::{ErrorKind, Outcome};
use hdrhistogram::Histogram;
use serde::Serialize;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

/// Histogram range: 1 µs .. 60 s at 3 significant digits; slower values are
/// clamped to 60 s (they are far beyond any timeout worth measuring).
const HIST_MAX_US: u64 = 60_000_000;
const HIST_DIGITS: u8 = 3;

/// How many degraded reasons the report lists.
pub const TOP_DEGRADED: usize = 5;

fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, HIST_MAX_US, HIST_DIGITS)
        .expect("constant bounds 1..60e6 with 3 digits are valid")
}

fn record_us(h: &mut Histogram<u64>, d: Duration) {
    let us = u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1);
    h.saturating_record(us);
}

/// What kind of call a sample was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallKind {
    Recommend,
    Event,
}

/// One request of the measured window.
#[derive(Debug, Clone)]
pub struct Sample {
    pub target: usize,
    pub call: CallKind,
    /// Actual send - intended send; `None` if it was never sent.
    pub send_lag: Option<Duration>,
    /// Completion - intended send.
    pub latency: Duration,
    /// Completion - actual send; `None` if it was never sent.
    pub service: Option<Duration>,
    pub outcome: Outcome,
}

/// Percentiles of one histogram, in microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Default)]
pub struct LatencySummary {
    pub count: u64,
    pub mean_us: f64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
}

impl LatencySummary {
    pub fn of(h: &Histogram<u64>) -> LatencySummary {
        if h.is_empty() {
            return LatencySummary::default();
        }
        LatencySummary {
            count: h.len(),
            mean_us: h.mean(),
            p50_us: h.value_at_quantile(0.50),
            p90_us: h.value_at_quantile(0.90),
            p99_us: h.value_at_quantile(0.99),
            p999_us: h.value_at_quantile(0.999),
            max_us: h.max(),
        }
    }
}

/// Mean time the servers reported for one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageMean {
    pub stage: String,
    /// Responses that reported this stage.
    pub responses: u64,
    pub mean_us: f64,
}

/// Counters and histograms of the measured window.
#[derive(Debug, Clone)]
pub struct Recorder {
    pub recommend_latency: Histogram<u64>,
    pub recommend_service: Histogram<u64>,
    /// Every recommend that was sent, whatever its outcome (a timeout counts
    /// with the time it was given up at): errors cannot hide in here.
    pub recommend_latency_all: Histogram<u64>,
    pub event_latency: Histogram<u64>,
    pub event_service: Histogram<u64>,
    pub send_lag: Histogram<u64>,
    /// Due in the window (sent or refused).
    pub scheduled: u64,
    /// Handed to the HTTP client.
    pub sent: u64,
    pub recommend_ok: u64,
    pub events_ok: u64,
    pub events_accepted: u64,
    pub errors: BTreeMap<String, u64>,
    pub server_error_codes: BTreeMap<String, u64>,
    /// Per target: answers of any status (the divisor of CPU per request).
    pub answered_by_target: Vec<u64>,
    pub coverage_sum: f64,
    pub coverage_reported: u64,
    pub coverage_below_one: u64,
    pub zero_items: u64,
    pub degraded: HashMap<String, u64>,
    /// Stage -> (sum of micros, responses); `stage_order` keeps first-seen
    /// order so the report lists stages as the pipeline runs them.
    stage_sums: HashMap<String, (f64, u64)>,
    stage_order: Vec<String>,
}

impl Recorder {
    pub fn new(targets: usize) -> Recorder {
        Recorder {
            recommend_latency: new_histogram(),
            recommend_service: new_histogram(),
            recommend_latency_all: new_histogram(),
            event_latency: new_histogram(),
            event_service: new_histogram(),
            send_lag: new_histogram(),
            scheduled: 0,
            sent: 0,
            recommend_ok: 0,
            events_ok: 0,
            events_accepted: 0,
            errors: BTreeMap::new(),
            server_error_codes: BTreeMap::new(),
            answered_by_target: vec![0; targets],
            coverage_sum: 0.0,
            coverage_reported: 0,
            coverage_below_one: 0,
            zero_items: 0,
            degraded: HashMap::new(),
            stage_sums: HashMap::new(),
            stage_order: Vec::new(),
        }
    }

    pub fn record(&mut self, s: &Sample) {
        self.scheduled += 1;
        if let Some(lag) = s.send_lag {
            self.sent += 1;
            record_us(&mut self.send_lag, lag);
            if s.call == CallKind::Recommend {
                record_us(&mut self.recommend_latency_all, s.latency);
            }
        }
        if s.outcome.server_answered() {
            if let Some(n) = self.answered_by_target.get_mut(s.target) {
                *n += 1;
            }
        }
        let service = s.service.unwrap_or_default();
        match &s.outcome {
            Outcome::Recommended(answer) => {
                self.recommend_ok += 1;
                record_us(&mut self.recommend_latency, s.latency);
                record_us(&mut self.recommend_service, service);
                if let Some(c) = answer.coverage {
                    self.coverage_sum += c;
                    self.coverage_reported += 1;
                    if c < 1.0 {
                        self.coverage_below_one += 1;
                    }
                }
                if answer.items == 0 {
                    self.zero_items += 1;
                }
                for reason in &answer.degraded {
                    *self.degraded.entry(reason.clone()).or_default() += 1;
                }
                for (stage, micros) in &answer.timings {
                    let slot = self.stage_sums.entry(stage.clone()).or_insert_with(|| {
                        self.stage_order.push(stage.clone());
                        (0.0, 0)
                    });
                    slot.0 += micros;
                    slot.1 += 1;
                }
            }
            Outcome::EventsAccepted(n) => {
                self.events_ok += 1;
                self.events_accepted += n;
                record_us(&mut self.event_latency, s.latency);
                record_us(&mut self.event_service, service);
            }
            Outcome::Failed { kind, server_code } => {
                *self.errors.entry(kind.label()).or_default() += 1;
                if let Some(code) = server_code {
                    *self.server_error_codes.entry(code.clone()).or_default() += 1;
                }
            }
        }
    }

    pub fn error_count(&self) -> u64 {
        self.errors.values().sum()
    }

    pub fn count_of(&self, kind: ErrorKind) -> u64 {
        self.errors.get(&kind.label()).copied().unwrap_or(0)
    }

    /// Mean coverage over answers that reported one.
    pub fn mean_coverage(&self) -> Option<f64> {
        (self.coverage_reported > 0).then(|| self.coverage_sum / self.coverage_reported as f64)
    }

    /// Most frequent degraded reasons, ties by name for a stable order.
    pub fn top_degraded(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> =
            self.degraded.iter().map(|(k, v)| (k.clone(), *v)).collect();
        all.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        all.truncate(TOP_DEGRADED);
        all
    }

    pub fn stage_means(&self) -> Vec<StageMean> {
        self.stage_order
            .iter()
            .map(|stage| {
                let (sum, n) = self.stage_sums[stage];
                StageMean {
                    stage: stage.clone(),
                    responses: n,
                    mean_us: sum / n as f64,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::client::RecommendAnswer;

    fn ms(v: u64) -> Duration {
        Duration::from_millis(v)
    }

    fn answered(coverage: f64, items: usize, degraded: &[&str], timings: &[(&str, f64)]) -> Sample {
        Sample {
            target: 0,
            call: CallKind::Recommend,
            send_lag: Some(ms(0)),
            latency: ms(10),
            service: Some(ms(10)),
            outcome: Outcome::Recommended(RecommendAnswer {
                items,
                coverage: Some(coverage),
                degraded: degraded.iter().map(|s| s.to_string()).collect(),
                timings: timings.iter().map(|(s, m)| (s.to_string(), *m)).collect(),
            }),
        }
    }

    #[test]
    fn coverage_zero_items_degraded_and_stages_aggregate() {
        let mut r = Recorder::new(1);
        r.record(&answered(
            1.0,
            10,
            &[],
            &[("recall", 800.0), ("rank", 400.0)],
        ));
        r.record(&answered(
            0.5,
            10,
            &["shard_timeout:1"],
            &[("recall", 1200.0)],
        ));
        r.record(&answered(
            0.75,
            0,
            &["shard_timeout:1", "no_ranker"],
            &[("rank", 200.0)],
        ));
        r.record(&answered(1.0, 3, &["a", "b", "c", "d"], &[]));
        assert_eq!(r.recommend_ok, 4);
        assert!((r.mean_coverage().unwrap() - 3.25 / 4.0).abs() < 1e-12);
        assert_eq!(r.coverage_below_one, 2);
        assert_eq!(r.zero_items, 1);
        let top = r.top_degraded();
        assert_eq!(top.len(), TOP_DEGRADED);
        assert_eq!(top[0], ("shard_timeout:1".to_string(), 2));
        // Ties (count 1) sort by name: a, b, c, d, no_ranker -> first four.
        let rest: Vec<&str> = top[1..].iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(rest, ["a", "b", "c", "d"]);
        assert_eq!(
            r.stage_means(),
            [
                StageMean {
                    stage: "recall".into(),
                    responses: 2,
                    mean_us: 1000.0
                },
                StageMean {
                    stage: "rank".into(),
                    responses: 2,
                    mean_us: 300.0
                },
            ]
        );
    }

    #[test]
    fn refused_requests_are_errors_but_not_sent_and_not_answered() {
        let mut r = Recorder::new(2);
        r.record(&Sample {
            target: 1,
            call: CallKind::Recommend,
            send_lag: None,
            latency: ms(0),
            service: None,
            outcome: Outcome::Failed {
                kind: ErrorKind::ClientOverload,
                server_code: None,
            },
        });
        r.record(&Sample {
            target: 1,
            call: CallKind::Recommend,
            send_lag: Some(ms(1)),
            latency: ms(40),
            service: Some(ms(39)),
            outcome: Outcome::Failed {
                kind: ErrorKind::Http(503),
                server_code: Some("overloaded".into()),
            },
        });
        r.record(&Sample {
            target: 0,
            call: CallKind::Event,
            send_lag: Some(ms(0)),
            latency: ms(1000),
            service: Some(ms(1000)),
            outcome: Outcome::Failed {
                kind: ErrorKind::Timeout,
                server_code: None,
            },
        });
        assert_eq!((r.scheduled, r.sent), (3, 2));
        assert_eq!(r.count_of(ErrorKind::ClientOverload), 1);
        assert_eq!(r.count_of(ErrorKind::Http(503)), 1);
        assert_eq!(r.count_of(ErrorKind::Timeout), 1);
        assert_eq!(r.error_count(), 3);
        assert_eq!(r.server_error_codes.get("overloaded"), Some(&1));
        assert_eq!(r.answered_by_target, [0, 1], "only the 503 was an answer");
        // The failed recommend shows up in the all-outcomes latency only.
        assert_eq!(r.recommend_latency.len(), 0);
        assert_eq!(r.recommend_latency_all.len(), 1);
        assert!(r.mean_coverage().is_none());
    }

    #[test]
    fn latency_and_service_are_kept_apart() {
        let mut r = Recorder::new(1);
        // A request the generator could only send 300 ms late, answered in 2 ms.
        let mut s = answered(1.0, 1, &[], &[]);
        s.send_lag = Some(ms(300));
        s.latency = ms(302);
        s.service = Some(ms(2));
        r.record(&s);
        let latency = LatencySummary::of(&r.recommend_latency);
        let service = LatencySummary::of(&r.recommend_service);
        // 3 significant digits: values are exact to within 0.1%.
        assert!((301_000..=303_000).contains(&latency.max_us), "{latency:?}");
        assert!((1_990..=2_010).contains(&service.max_us), "{service:?}");
        assert!(LatencySummary::of(&r.send_lag).max_us >= 299_000);
        assert_eq!(
            LatencySummary::of(&r.event_latency),
            LatencySummary::default()
        );
    }
}
