//! The figures of one chaos run, computed from its history, printed as a
//! table and serialisable as JSON.
//!
//! Owns: the figure definitions (availability, latency percentiles during
//! and outside faults, time to a new leader, time to full coverage,
//! acknowledged and lost writes) and their rendering.
//! Must not touch: the cluster; everything comes from the history and the
//! runner's measurements.

use crate::history::{History, OpKind};
use crate::invariants::Violation;
use serde::Serialize;
use std::time::Duration;

/// Latency figures of a set of operations, in milliseconds.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Latency {
    pub count: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latency {
    pub fn of(mut v: Vec<Duration>) -> Latency {
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let at = |q: f64| {
            let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
            ms(v[i])
        };
        Latency {
            count: v.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: ms(v[v.len() - 1]),
        }
    }
}

fn ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1e4).round() / 10.0
}

/// Answered (2xx) / sent.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Availability {
    pub sent: usize,
    pub answered: usize,
    pub ratio: f64,
}

impl Availability {
    fn of(sent: usize, answered: usize) -> Availability {
        Availability {
            sent,
            answered,
            ratio: if sent == 0 {
                1.0
            } else {
                answered as f64 / sent as f64
            },
        }
    }
}

/// A fault as it happened.
#[derive(Debug, Clone, Serialize)]
pub struct FaultLine {
    pub name: String,
    pub start_s: f64,
    pub end_s: Option<f64>,
    /// For a fault aimed at the leader: time until a node led a later term.
    pub new_leader_after_ms: Option<f64>,
}

/// The report of one run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub seed: u64,
    /// The fault phase's requested length.
    pub duration_s: f64,
    /// The whole run, start to verdict.
    pub wall_s: f64,
    pub nodes: u64,
    pub shards: u32,
    pub replication: u32,
    /// Every client operation (recommend, event, upsert).
    pub availability: Availability,
    pub availability_during_faults: Availability,
    pub availability_outside_faults: Availability,
    /// Recommends answered with coverage 1 / recommends answered.
    pub full_coverage_ratio: f64,
    pub recommend_latency_during_faults: Latency,
    pub recommend_latency_outside_faults: Latency,
    pub upsert_latency_during_faults: Latency,
    pub upsert_latency_outside_faults: Latency,
    /// Unanswered operations by "kind outcome", e.g. "Upsert Http(503)".
    pub failures: std::collections::BTreeMap<String, usize>,
    pub faults: Vec<FaultLine>,
    /// After each restart or resume, and after the final heal.
    pub time_to_full_coverage_ms: Vec<f64>,
    pub events_acknowledged: usize,
    pub acknowledged_writes: usize,
    pub lost_writes: usize,
    pub leader_observations: usize,
    pub notes: Vec<String>,
    pub violations: Vec<Violation>,
    /// Where the run's configs and node logs were kept (on failure).
    pub kept_dir: Option<String>,
}

/// Measurements the runner took outside the history.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub duration: Duration,
    pub wall: Duration,
    pub nodes: u64,
    pub shards: u32,
    pub replication: u32,
    pub coverage_times: Vec<Duration>,
    pub notes: Vec<String>,
    pub kept_dir: Option<String>,
}

impl Report {
    pub fn build(
        scenario: &str,
        seed: u64,
        h: &History,
        violations: Vec<Violation>,
        extra: Extra,
    ) -> Report {
        let in_fault = |t: Duration| h.in_fault(t);
        let avail = |pred: &dyn Fn(Duration) -> bool| {
            let ops: Vec<_> = h.ops.iter().filter(|o| pred(o.start)).collect();
            Availability::of(ops.len(), ops.iter().filter(|o| o.outcome.is_ok()).count())
        };
        let latency = |kind: OpKind, during: bool| {
            Latency::of(
                h.ops
                    .iter()
                    .filter(|o| o.kind == kind && o.outcome.is_ok() && in_fault(o.start) == during)
                    .map(|o| o.latency())
                    .collect(),
            )
        };
        let answered: Vec<_> = h
            .ops
            .iter()
            .filter(|o| o.kind == OpKind::Recommend && o.outcome.is_ok())
            .collect();
        let full = answered.iter().filter(|o| o.coverage == Some(1.0)).count();
        let faults = h
            .faults
            .iter()
            .map(|f| FaultLine {
                name: f.name.clone(),
                start_s: f.start.as_secs_f64(),
                end_s: f.end.map(|e| e.as_secs_f64()),
                new_leader_after_ms: f.old_leader.and_then(|(_, term)| {
                    h.leaders
                        .iter()
                        .filter(|o| o.at >= f.start && o.role == "Leader" && o.term > term)
                        .map(|o| o.at - f.start)
                        .min()
                        .map(ms)
                }),
            })
            .collect();
        let lost_writes = violations
            .iter()
            .filter(|v| v.invariant == "no acknowledged write lost")
            .count();
        Report {
            scenario: scenario.to_string(),
            seed,
            duration_s: extra.duration.as_secs_f64(),
            wall_s: (extra.wall.as_secs_f64() * 10.0).round() / 10.0,
            nodes: extra.nodes,
            shards: extra.shards,
            replication: extra.replication,
            availability: avail(&|_| true),
            availability_during_faults: avail(&|t| in_fault(t)),
            availability_outside_faults: avail(&|t| !in_fault(t)),
            full_coverage_ratio: if answered.is_empty() {
                0.0
            } else {
                full as f64 / answered.len() as f64
            },
            recommend_latency_during_faults: latency(OpKind::Recommend, true),
            recommend_latency_outside_faults: latency(OpKind::Recommend, false),
            upsert_latency_during_faults: latency(OpKind::Upsert, true),
            upsert_latency_outside_faults: latency(OpKind::Upsert, false),
            failures: h.ops.iter().filter(|o| !o.outcome.is_ok()).fold(
                Default::default(),
                |mut m, o| {
                    *m.entry(format!("{:?} {:?}", o.kind, o.outcome))
                        .or_default() += 1;
                    m
                },
            ),
            faults,
            time_to_full_coverage_ms: extra.coverage_times.into_iter().map(ms).collect(),
            events_acknowledged: h
                .ops
                .iter()
                .filter(|o| o.kind == OpKind::Event && o.outcome.is_ok())
                .count(),
            acknowledged_writes: h.acknowledged_items().len(),
            lost_writes,
            leader_observations: h.leaders.len(),
            notes: extra.notes,
            violations,
            kept_dir: extra.kept_dir,
        }
    }

    pub fn passed(&self) -> bool {
        self.violations.is_empty()
    }

    /// The human-readable report.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let pct = |a: &Availability| format!("{:.2}% ({}/{})", a.ratio * 100.0, a.answered, a.sent);
        let lat = |l: &Latency| {
            format!(
                "p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (n={})",
                l.p50_ms, l.p99_ms, l.max_ms, l.count
            )
        };
        s.push_str(&format!(
            "chaos scenario {} seed {}: {} ({} nodes, {} shards x {} copies, {:.0} s of faults, {:.1} s wall)\n",
            self.scenario,
            self.seed,
            if self.passed() { "PASS" } else { "FAIL" },
            self.nodes,
            self.shards,
            self.replication,
            self.duration_s,
            self.wall_s
        ));
        s.push_str(&format!(
            "  availability            {}\n",
            pct(&self.availability)
        ));
        s.push_str(&format!(
            "    during faults         {}\n",
            pct(&self.availability_during_faults)
        ));
        s.push_str(&format!(
            "    outside faults        {}\n",
            pct(&self.availability_outside_faults)
        ));
        s.push_str(&format!(
            "  full coverage           {:.2}% of answered recommends\n",
            self.full_coverage_ratio * 100.0
        ));
        s.push_str(&format!(
            "  recommend during faults {}\n",
            lat(&self.recommend_latency_during_faults)
        ));
        s.push_str(&format!(
            "  recommend outside       {}\n",
            lat(&self.recommend_latency_outside_faults)
        ));
        s.push_str(&format!(
            "  upsert during faults    {}\n",
            lat(&self.upsert_latency_during_faults)
        ));
        s.push_str(&format!(
            "  upsert outside          {}\n",
            lat(&self.upsert_latency_outside_faults)
        ));
        if !self.failures.is_empty() {
            let f: Vec<String> = self
                .failures
                .iter()
                .map(|(k, n)| format!("{k} x{n}"))
                .collect();
            s.push_str(&format!("  unanswered              {}\n", f.join(", ")));
        }
        for f in &self.faults {
            s.push_str(&format!(
                "  fault {:<28} {:>7.2}s .. {}{}\n",
                f.name,
                f.start_s,
                f.end_s.map_or("open".into(), |e| format!("{e:.2}s")),
                f.new_leader_after_ms
                    .map_or(String::new(), |m| format!(", new leader after {m:.0} ms"))
            ));
        }
        s.push_str(&format!(
            "  time to full coverage   {:?} ms\n",
            self.time_to_full_coverage_ms
        ));
        s.push_str(&format!(
            "  writes                  {} acknowledged, {} lost; {} events acknowledged\n",
            self.acknowledged_writes, self.lost_writes, self.events_acknowledged
        ));
        s.push_str(&format!(
            "  leader observations     {}\n",
            self.leader_observations
        ));
        for n in &self.notes {
            s.push_str(&format!("  note: {n}\n"));
        }
        for v in &self.violations {
            s.push_str(&format!("  VIOLATION {v}\n"));
        }
        if let Some(d) = &self.kept_dir {
            s.push_str(&format!("  configs and node logs kept in {d}\n"));
        }
        if !self.passed() {
            s.push_str(&format!(
                "  replay: cargo run -p chaos-tests --bin chaos -- --scenario {} --seed {} --duration {}\n",
                self.scenario, self.seed, self.duration_s
            ));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        let l = Latency::of(v);
        assert_eq!(
            (l.count, l.p50_ms, l.p99_ms, l.max_ms),
            (100, 50.0, 99.0, 100.0)
        );
        assert_eq!(Latency::of(Vec::new()).count, 0);
        let one = Latency::of(vec![Duration::from_millis(7)]);
        assert_eq!((one.p50_ms, one.p99_ms), (7.0, 7.0));
    }
}
