//! The benchmark report: what was run, where, and what it measured.
//!
//! Owns: `BenchReport` (serde JSON) and its `to_table()` text form, machine
//! facts (nproc, CPU model) and UTC time formatting. Must not touch: the
//! network or the measurement itself; it only arranges numbers.

use super::args::BenchArgs;
use super::record::{LatencySummary, Recorder, StageMean};
use super::server_stats::CpuPerRequest;
use serde::Serialize;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{SystemTime, UNIX_EPOCH};

/// Send lag p99 above this means the generator itself fell behind.
const LAG_WARN_US: u64 = 5_000;

/// Where the benchmark ran.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Machine {
    pub hostname: String,
    /// Logical CPUs available to this process (like `nproc`).
    pub nproc: usize,
    pub cpu_model: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let read = |path: &str| std::fs::read_to_string(path).unwrap_or_default();
        let hostname = read("/proc/sys/kernel/hostname").trim().to_string();
        Machine {
            hostname: if hostname.is_empty() {
                "unknown".into()
            } else {
                hostname
            },
            nproc: std::thread::available_parallelism().map_or(1, |n| n.get()),
            cpu_model: cpu_model(&read("/proc/cpuinfo")).unwrap_or_else(|| "unknown".into()),
        }
    }
}

/// The first `model name` of /proc/cpuinfo text (x86; ARM kernels may not
/// have one, then `Hardware` / `CPU part` are not worth guessing from).
pub fn cpu_model(cpuinfo: &str) -> Option<String> {
    cpuinfo.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        (key.trim() == "model name").then(|| value.trim().to_string())
    })
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian
/// calendar, by counting 400-year eras that start on March 1st (so the leap
/// day is the last day of an era-year and needs no special case).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468; // days from 0000-03-01 to 1970-01-01
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u32;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// `YYYY-MM-DDTHH:MM:SSZ` for Unix seconds.
pub fn rfc3339_utc(unix_seconds: i64) -> String {
    let (days, secs) = (
        unix_seconds.div_euclid(86_400),
        unix_seconds.rem_euclid(86_400),
    );
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => d.as_secs() as i64,
        Err(before) => -(before.duration().as_secs() as i64),
    }
}

/// Request counts of the measured window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RequestCounts {
    /// Due in the window.
    pub scheduled: u64,
    /// Actually sent (scheduled minus client_overload).
    pub sent: u64,
    /// Answered with a usable 2xx (recommend + events).
    pub ok: u64,
    pub errors: u64,
    /// sent / measured seconds.
    pub achieved_qps: f64,
    /// ok / measured seconds.
    pub ok_qps: f64,
    /// errors / scheduled.
    pub error_fraction: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DegradedCount {
    pub reason: String,
    pub count: u64,
}

/// Figures of the recommend calls.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RecommendFigures {
    pub ok: u64,
    /// Successful answers, from the intended send time (the honest figure).
    pub latency: LatencySummary,
    /// Successful answers, from the actual send time.
    pub service: LatencySummary,
    /// Every sent recommend whatever its outcome, from the intended time
    /// (timeouts count with the time they were given up at).
    pub latency_all_outcomes: LatencySummary,
    /// Mean over answers that carried `coverage`.
    pub coverage_mean: Option<f64>,
    /// Share of successful answers with coverage < 1.
    pub coverage_below_one_fraction: f64,
    pub zero_items_fraction: f64,
    pub degraded_top: Vec<DegradedCount>,
    /// Mean per-stage times from the answers' `timings`.
    pub server_stage_means: Vec<StageMean>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EventFigures {
    pub ok: u64,
    /// Sum of `accepted` over the answers.
    pub accepted: u64,
    pub latency: LatencySummary,
    pub service: LatencySummary,
}

/// CPU the servers spent per request, or why that is not known.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerCpu {
    pub per_request: Option<CpuPerRequest>,
    /// Each target's share of `per_request`, in target order: its CPU over
    /// every request of the run (the shares add up to the total).
    pub per_target: Vec<CpuPerRequest>,
    /// Set when `per_request` is absent.
    pub unavailable: Option<String>,
    /// Share of the requests' user-state reads another node's partition
    /// copy served (a cluster whose user partitions are placed).
    pub remote_user_reads: Option<f64>,
}

/// Everything one `funnel bench` run measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    /// The program's argv as given.
    pub command_line: Vec<String>,
    pub started_at: String,
    pub started_unix: i64,
    pub machine: Machine,
    pub args: BenchArgs,
    pub users: usize,
    pub items: usize,
    pub measured_seconds: f64,
    /// From the end of the schedule until the last answer (or timeout).
    pub drain_seconds: f64,
    pub requests: RequestCounts,
    pub recommend: RecommendFigures,
    pub events: EventFigures,
    /// Actual send - intended send: the generator's own delay.
    pub send_lag: LatencySummary,
    /// Error kind -> count: http_<status>, timeout, connect, transport,
    /// client_overload, bad_response.
    pub errors: BTreeMap<String, u64>,
    /// `error.code` of the servers' error bodies -> count.
    pub server_error_codes: BTreeMap<String, u64>,
    pub server_cpu: ServerCpu,
    /// Things that make the figures less trustworthy, in words.
    pub warnings: Vec<String>,
}

/// What `BenchReport::assemble` needs besides the recorder.
pub struct RunFacts {
    pub command_line: Vec<String>,
    pub started: SystemTime,
    pub args: BenchArgs,
    pub users: usize,
    pub items: usize,
    pub measured_seconds: f64,
    pub drain_seconds: f64,
    pub server_cpu: ServerCpu,
}

fn fraction(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 / whole as f64
    }
}

impl BenchReport {
    pub fn assemble(facts: RunFacts, rec: &Recorder) -> BenchReport {
        let seconds = facts.measured_seconds.max(f64::MIN_POSITIVE);
        let ok = rec.recommend_ok + rec.events_ok;
        let errors = rec.error_count();
        let send_lag = LatencySummary::of(&rec.send_lag);
        let mut warnings = Vec::new();
        let overload = rec.errors.get("client_overload").copied().unwrap_or(0);
        if overload > 0 {
            warnings.push(format!(
                "{overload} requests were not sent because --connections {} were already in \
                 flight; they are errors, not latency. Raise --connections or lower --qps.",
                facts.args.connections
            ));
        }
        if send_lag.p99_us > LAG_WARN_US {
            warnings.push(format!(
                "the generator sent late (send lag p99 {:.1} ms): it is a bottleneck itself. \
                 Latency includes that delay; use more --threads or a separate machine.",
                send_lag.p99_us as f64 / 1000.0
            ));
        }
        if errors > 0 {
            warnings.push(format!(
                "{errors} of {} requests failed ({:.2}%); latency percentiles cover successes \
                 only, see latency_all_outcomes.",
                rec.scheduled,
                100.0 * fraction(errors, rec.scheduled)
            ));
        }
        if rec.scheduled == 0 {
            warnings.push(
                "no request was due in the measured window; raise --duration or --qps".into(),
            );
        }
        BenchReport {
            command_line: facts.command_line,
            started_at: rfc3339_utc(unix_seconds(facts.started)),
            started_unix: unix_seconds(facts.started),
            machine: Machine::detect(),
            args: facts.args,
            users: facts.users,
            items: facts.items,
            measured_seconds: facts.measured_seconds,
            drain_seconds: facts.drain_seconds,
            requests: RequestCounts {
                scheduled: rec.scheduled,
                sent: rec.sent,
                ok,
                errors,
                achieved_qps: rec.sent as f64 / seconds,
                ok_qps: ok as f64 / seconds,
                error_fraction: fraction(errors, rec.scheduled),
            },
            recommend: RecommendFigures {
                ok: rec.recommend_ok,
                latency: LatencySummary::of(&rec.recommend_latency),
                service: LatencySummary::of(&rec.recommend_service),
                latency_all_outcomes: LatencySummary::of(&rec.recommend_latency_all),
                coverage_mean: rec.mean_coverage(),
                coverage_below_one_fraction: fraction(rec.coverage_below_one, rec.recommend_ok),
                zero_items_fraction: fraction(rec.zero_items, rec.recommend_ok),
                degraded_top: rec
                    .top_degraded()
                    .into_iter()
                    .map(|(reason, count)| DegradedCount { reason, count })
                    .collect(),
                server_stage_means: rec.stage_means(),
            },
            events: EventFigures {
                ok: rec.events_ok,
                accepted: rec.events_accepted,
                latency: LatencySummary::of(&rec.event_latency),
                service: LatencySummary::of(&rec.event_service),
            },
            send_lag,
            errors: rec.errors.clone(),
            server_error_codes: rec.server_error_codes.clone(),
            server_cpu: facts.server_cpu,
            warnings,
        }
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("the report holds only plain data")
    }

    /// A human-readable summary; every figure of the JSON that matters for a
    /// decision, latencies in milliseconds.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let a = &self.args;
        let _ = writeln!(
            out,
            "funnel bench  {}  on {}",
            self.started_at, self.machine.hostname
        );
        let _ = writeln!(
            out,
            "machine: {} CPUs, {}",
            self.machine.nproc, self.machine.cpu_model
        );
        let _ = writeln!(out, "command: {}", self.command_line.join(" "));
        let _ = writeln!(out, "targets: {}", a.target.join(", "));
        let arrival = match a.arrival {
            super::args::Arrival::Constant => "constant",
            super::args::Arrival::Poisson => "poisson",
        };
        let _ = writeln!(
            out,
            "load:    {} qps {arrival}, {:.1} s measured after {:.1} s warm-up, {} users, \
             {:.0}% events, k={}, deadline {}, timeout {} ms, {} connections max, seed {}",
            a.qps,
            self.measured_seconds,
            a.warmup,
            self.users,
            a.events_fraction * 100.0,
            a.k,
            a.deadline_ms
                .map_or("server default".to_string(), |d| format!("{d} ms")),
            a.timeout_ms,
            a.connections,
            a.seed
        );
        let r = &self.requests;
        let _ = writeln!(
            out,
            "requests: {} due, {} sent ({:.1}/s), {} ok ({:.1}/s), {} errors ({:.2}%)",
            r.scheduled,
            r.sent,
            r.achieved_qps,
            r.ok,
            r.ok_qps,
            r.errors,
            r.error_fraction * 100.0
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<34} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "mean", "p50", "p90", "p99", "p99.9", "max"
        );
        let rows = [
            ("recommend, from intended send", &self.recommend.latency),
            ("recommend, service (actual send)", &self.recommend.service),
            (
                "recommend, all outcomes",
                &self.recommend.latency_all_outcomes,
            ),
            ("events, from intended send", &self.events.latency),
            ("events, service", &self.events.service),
            ("send lag (generator)", &self.send_lag),
        ];
        for (name, s) in rows {
            if s.count == 0 && name.starts_with("events") {
                continue;
            }
            let ms = |us: u64| us as f64 / 1000.0;
            let _ = writeln!(
                out,
                "{name:<34} {:>8} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                s.count,
                s.mean_us / 1000.0,
                ms(s.p50_us),
                ms(s.p90_us),
                ms(s.p99_us),
                ms(s.p999_us),
                ms(s.max_us)
            );
        }
        let _ = writeln!(out);
        let errors = if self.errors.is_empty() {
            "none".to_string()
        } else {
            join_counts(self.errors.iter().map(|(k, v)| (k.as_str(), *v)))
        };
        let _ = writeln!(out, "errors: {errors}");
        if !self.server_error_codes.is_empty() {
            let codes = join_counts(
                self.server_error_codes
                    .iter()
                    .map(|(k, v)| (k.as_str(), *v)),
            );
            let _ = writeln!(out, "server error codes: {codes}");
        }
        let rec = &self.recommend;
        let coverage = rec
            .coverage_mean
            .map_or("not reported".to_string(), |c| format!("mean {c:.4}"));
        let _ = writeln!(
            out,
            "coverage: {coverage}, {:.2}% of answers below 1; {:.2}% of answers had no items",
            rec.coverage_below_one_fraction * 100.0,
            rec.zero_items_fraction * 100.0
        );
        if !rec.degraded_top.is_empty() {
            let top = join_counts(
                rec.degraded_top
                    .iter()
                    .map(|d| (d.reason.as_str(), d.count)),
            );
            let _ = writeln!(out, "degraded (top {}): {top}", rec.degraded_top.len());
        }
        if !rec.server_stage_means.is_empty() {
            let stages: Vec<String> = rec
                .server_stage_means
                .iter()
                .map(|s| format!("{} {:.0}", s.stage, s.mean_us))
                .collect();
            let _ = writeln!(out, "server stage means (µs): {}", stages.join(", "));
        }
        if self.events.ok > 0 {
            let _ = writeln!(
                out,
                "events: {} answers, {} events accepted",
                self.events.ok, self.events.accepted
            );
        }
        match (&self.server_cpu.per_request, &self.server_cpu.unavailable) {
            (Some(c), _) => {
                let opt = |v: Option<f64>| v.map_or("n/a".to_string(), |x| format!("{x:.1}"));
                let _ = writeln!(
                    out,
                    "server CPU per request (µs): total {:.1}, ann {}, ranking {}, rpc {}, other {} \
                     (over {} answers{})",
                    c.total_us,
                    opt(c.ann_us),
                    opt(c.ranking_us),
                    opt(c.rpc_us),
                    opt(c.other_us),
                    c.requests,
                    c.server_counted_requests
                        .map_or(String::new(), |n| format!("; servers counted {n:.0}"))
                );
            }
            (None, reason) => {
                let _ = writeln!(
                    out,
                    "{}",
                    reason
                        .as_deref()
                        .unwrap_or("server CPU counters not available")
                );
            }
        }
        for w in &self.warnings {
            let _ = writeln!(out, "warning: {w}");
        }
        out
    }
}

fn join_counts<'a>(pairs: impl Iterator<Item = (&'a str, u64)>) -> String {
    pairs
        .map(|(k, v)| format!("{k} {v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_formatting_matches_known_instants() {
        assert_eq!(rfc3339_utc(0), "1970-01-01T00:00:00Z");
        // `date -u -d @1700000000`
        assert_eq!(rfc3339_utc(1_700_000_000), "2023-11-14T22:13:20Z");
        // 2000-01-01 is 946684800; 59 days later is the leap day.
        assert_eq!(
            rfc3339_utc(946_684_800 + 59 * 86_400),
            "2000-02-29T00:00:00Z"
        );
        assert_eq!(
            rfc3339_utc(946_684_800 + 60 * 86_400),
            "2000-03-01T00:00:00Z"
        );
        assert_eq!(rfc3339_utc(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn cpu_model_is_the_first_model_name() {
        let text = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) CPU @ 2.20GHz\n\nprocessor\t: 1\nmodel name\t: other\n";
        assert_eq!(
            cpu_model(text).as_deref(),
            Some("Intel(R) Xeon(R) CPU @ 2.20GHz")
        );
        assert_eq!(cpu_model("processor : 0\n"), None);
    }
}
