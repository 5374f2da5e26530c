//! Server-side CPU cost per request, from two scrapes of `GET /metrics`.
//!
//! Owns: a small reader of the Prometheus text exposition format (only what
//! counters need), extraction of funnel's CPU counters, and the per-request
//! arithmetic. Must not touch: the network (`client` fetches the text) or
//! the latency figures.
//!
//! Counters read: `process_cpu_seconds_total` (whole process),
//! `funnel_cpu_seconds_total{stage="ann"}`, `{stage="ranking"}` and
//! `{stage="rpc"}` (node-to-node shard searches, both sides; absent on a
//! single node, read as zero), and `funnel_requests_total` (summed over all
//! label sets, as a cross-check of the client's own count). "other" is
//! total - ann - ranking - rpc: everything the process spent outside those
//! stages (HTTP, JSON, recall merge, ...).

use serde::Serialize;

/// One sample line: `name{label="value",...} value`.
#[derive(Debug, Clone, PartialEq)]
pub struct MetricSample {
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: f64,
}

impl MetricSample {
    fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }
}

/// Parses the text format leniently: comments, blank lines and lines it
/// cannot read are skipped, because one exotic metric must not hide the
/// counters we need.
pub fn parse_exposition(text: &str) -> Vec<MetricSample> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<MetricSample> {
    let name_end = line
        .find(|c: char| c == '{' || c.is_whitespace())
        .unwrap_or(line.len());
    let name = &line[..name_end];
    if name.is_empty() {
        return None;
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after_brace) = rest.strip_prefix('{') {
        let (parsed, remainder) = parse_labels(after_brace)?;
        labels = parsed;
        rest = remainder;
    }
    // A timestamp may follow the value; only the value matters here.
    let value_text = rest.split_whitespace().next()?;
    Some(MetricSample {
        name: name.to_string(),
        labels,
        value: parse_value(value_text)?,
    })
}

fn parse_value(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Reads `k="v",k2="v2"}` and returns the labels and the text after '}'.
fn parse_labels(mut s: &str) -> Option<(Vec<(String, String)>, &str)> {
    let mut labels = Vec::new();
    loop {
        s = s.trim_start();
        if let Some(after) = s.strip_prefix('}') {
            return Some((labels, after));
        }
        let eq = s.find('=')?;
        let key = s[..eq].trim().to_string();
        s = s[eq + 1..].trim_start().strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = s.char_indices();
        let close = loop {
            let (i, c) = chars.next()?;
            match c {
                '"' => break i,
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                c => value.push(c),
            }
        };
        labels.push((key, value));
        s = s[close + 1..].trim_start();
        if let Some(after_comma) = s.strip_prefix(',') {
            s = after_comma;
        }
    }
}

/// The counters of one target at one moment; `None` when not exported.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct CpuCounters {
    pub total_seconds: Option<f64>,
    pub ann_seconds: Option<f64>,
    pub ranking_seconds: Option<f64>,
    pub rpc_seconds: Option<f64>,
    pub requests: Option<f64>,
    /// User-state reads served by another node's partition copy, and all
    /// user-state reads (`funnel_user_state_reads_total`).
    pub user_reads_remote: Option<f64>,
    pub user_reads: Option<f64>,
}

fn sum_matching(samples: &[MetricSample], pred: impl Fn(&MetricSample) -> bool) -> Option<f64> {
    let mut found = false;
    let mut sum = 0.0;
    for s in samples.iter().filter(|s| pred(s)) {
        found = true;
        sum += s.value;
    }
    found.then_some(sum)
}

/// Picks funnel's CPU counters out of a scrape (sums over extra labels).
pub fn cpu_counters(samples: &[MetricSample]) -> CpuCounters {
    let stage = |wanted: &'static str| {
        move |s: &MetricSample| {
            s.name == "funnel_cpu_seconds_total" && s.label("stage") == Some(wanted)
        }
    };
    CpuCounters {
        total_seconds: sum_matching(samples, |s| s.name == "process_cpu_seconds_total"),
        ann_seconds: sum_matching(samples, stage("ann")),
        ranking_seconds: sum_matching(samples, stage("ranking")),
        rpc_seconds: sum_matching(samples, stage("rpc")),
        requests: sum_matching(samples, |s| s.name == "funnel_requests_total"),
        user_reads_remote: sum_matching(samples, |s| {
            s.name == "funnel_user_state_reads_total" && s.label("source") == Some("remote")
        }),
        user_reads: sum_matching(samples, |s| s.name == "funnel_user_state_reads_total"),
    }
}

/// The share of user-state reads over the windows that another node's
/// copy served (None when no target exports the counters or none read).
pub fn remote_user_read_share(windows: &[TargetWindow]) -> Option<f64> {
    let delta = |b: Option<f64>, a: Option<f64>| Some(a? - b?);
    let (mut remote, mut all) = (0.0, 0.0);
    for w in windows {
        remote += delta(w.before.user_reads_remote, w.after.user_reads_remote).unwrap_or(0.0);
        all += delta(w.before.user_reads, w.after.user_reads).unwrap_or(0.0);
    }
    (all > 0.0).then_some(remote / all)
}

/// Server CPU per completed request over the measured window, in
/// microseconds, summed over all targets.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpuPerRequest {
    /// Responses (any status) the client received in the window: the divisor.
    pub requests: u64,
    /// Requests the servers counted themselves (`funnel_requests_total`
    /// delta), when every target exports it.
    pub server_counted_requests: Option<f64>,
    pub total_us: f64,
    pub ann_us: Option<f64>,
    pub ranking_us: Option<f64>,
    /// Node-to-node shard search calls, both sides (0 on a single node).
    pub rpc_us: Option<f64>,
    /// total - ann - ranking - rpc, when the ann and ranking counters exist.
    pub other_us: Option<f64>,
}

/// One target's scrapes around the window and the responses it gave in it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TargetWindow {
    pub before: CpuCounters,
    pub after: CpuCounters,
    pub completed: u64,
}

/// Why CPU per request cannot be reported; the message goes in the report.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CpuUnavailable {
    #[error("server CPU counters not available: {target} exports no process_cpu_seconds_total")]
    NoCounters { target: String },
    #[error("server CPU counters not available: {counter} at {target} went down during the run (server restarted?); rerun")]
    WentBackwards {
        target: String,
        counter: &'static str,
    },
    #[error("server CPU per request not available: no responses in the measured window")]
    NoRequests,
}

fn delta(
    target: &str,
    counter: &'static str,
    before: Option<f64>,
    after: Option<f64>,
) -> Result<Option<f64>, CpuUnavailable> {
    match (before, after) {
        (Some(b), Some(a)) if a < b => Err(CpuUnavailable::WentBackwards {
            target: target.to_string(),
            counter,
        }),
        (Some(b), Some(a)) => Ok(Some(a - b)),
        _ => Ok(None),
    }
}

/// Adds `d` into `acc`; a counter absent at any target makes the sum absent,
/// since a partial sum divided by all requests would understate the cost.
fn accumulate(acc: &mut Option<Option<f64>>, d: Option<f64>) {
    *acc = match (*acc, d) {
        (None, d) => Some(d),
        (Some(Some(sum)), Some(d)) => Some(Some(sum + d)),
        (Some(_), _) => Some(None),
    };
}

/// (delta CPU seconds) / (responses) over all targets, `names` giving each
/// target's URL for messages.
pub fn cpu_per_request(
    names: &[String],
    windows: &[TargetWindow],
) -> Result<CpuPerRequest, CpuUnavailable> {
    let (mut total, mut ann, mut ranking, mut counted) = (None, None, None, None);
    let mut rpc = None;
    let mut requests = 0u64;
    for (name, w) in names.iter().zip(windows) {
        let (b, a) = (w.before, w.after);
        let Some(t) = delta(
            name,
            "process_cpu_seconds_total",
            b.total_seconds,
            a.total_seconds,
        )?
        else {
            return Err(CpuUnavailable::NoCounters {
                target: name.clone(),
            });
        };
        accumulate(&mut total, Some(t));
        let stage_counter = "funnel_cpu_seconds_total";
        accumulate(
            &mut ann,
            delta(name, stage_counter, b.ann_seconds, a.ann_seconds)?,
        );
        accumulate(
            &mut ranking,
            delta(name, stage_counter, b.ranking_seconds, a.ranking_seconds)?,
        );
        // a node that never called or answered a peer has no rpc counter
        let rpc_here = delta(name, stage_counter, b.rpc_seconds, a.rpc_seconds)?;
        accumulate(&mut rpc, Some(rpc_here.unwrap_or(0.0)));
        accumulate(
            &mut counted,
            delta(name, "funnel_requests_total", b.requests, a.requests)?,
        );
        requests += w.completed;
    }
    let Some(Some(total)) = total else {
        return Err(CpuUnavailable::NoCounters {
            target: "(no targets)".into(),
        });
    };
    if requests == 0 {
        return Err(CpuUnavailable::NoRequests);
    }
    let per_us = |seconds: f64| seconds * 1e6 / requests as f64;
    let ann_us = ann.flatten().map(per_us);
    let ranking_us = ranking.flatten().map(per_us);
    let rpc_us = rpc.flatten().map(per_us);
    let total_us = per_us(total);
    Ok(CpuPerRequest {
        requests,
        server_counted_requests: counted.flatten(),
        total_us,
        ann_us,
        ranking_us,
        rpc_us,
        other_us: match (ann_us, ranking_us) {
            (Some(a), Some(r)) => Some(total_us - a - r - rpc_us.unwrap_or(0.0)),
            _ => None,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRAPE: &str = r#"# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 12.5
# TYPE funnel_cpu_seconds_total counter
funnel_cpu_seconds_total{stage="ann"} 3.25
funnel_cpu_seconds_total{stage="ranking",node="a"} 4 1700000000000
funnel_cpu_seconds_total{ stage = "recall" , } 1
funnel_requests_total{endpoint="recommend",code="200"} 90
funnel_requests_total{endpoint="events",code="200"} 10
weird_metric{path="a\"b\\c\nd"} +Inf
this line is garbage
"#;

    #[test]
    fn parses_names_labels_escapes_and_values() {
        let samples = parse_exposition(SCRAPE);
        assert_eq!(samples.len(), 7, "{samples:?}");
        assert_eq!(samples[0].name, "process_cpu_seconds_total");
        assert!(samples[0].labels.is_empty());
        assert_eq!(samples[0].value, 12.5);
        assert_eq!(samples[2].label("node"), Some("a"));
        assert_eq!(samples[2].value, 4.0, "the timestamp is not the value");
        assert_eq!(samples[3].label("stage"), Some("recall"));
        assert_eq!(samples[6].label("path"), Some("a\"b\\c\nd"));
        assert_eq!(samples[6].value, f64::INFINITY);
    }

    #[test]
    fn picks_cpu_counters_and_sums_request_label_sets() {
        let c = cpu_counters(&parse_exposition(SCRAPE));
        assert_eq!(
            c,
            CpuCounters {
                total_seconds: Some(12.5),
                ann_seconds: Some(3.25),
                ranking_seconds: Some(4.0),
                rpc_seconds: None,
                requests: Some(100.0),
                user_reads_remote: None,
                user_reads: None,
            }
        );
        assert_eq!(
            cpu_counters(&parse_exposition("up 1\n")),
            CpuCounters::default()
        );
    }

    fn counters(total: f64, ann: f64, ranking: f64, requests: f64) -> CpuCounters {
        CpuCounters {
            total_seconds: Some(total),
            ann_seconds: Some(ann),
            ranking_seconds: Some(ranking),
            rpc_seconds: None,
            requests: Some(requests),
            user_reads_remote: None,
            user_reads: None,
        }
    }

    #[test]
    fn the_remote_share_is_summed_deltas_over_summed_reads() {
        let at = |remote: f64, all: f64| CpuCounters {
            user_reads_remote: Some(remote),
            user_reads: Some(all),
            ..CpuCounters::default()
        };
        let windows = [
            TargetWindow {
                before: at(10.0, 100.0),
                after: at(40.0, 200.0),
                completed: 100,
            },
            TargetWindow {
                before: at(0.0, 0.0),
                after: at(10.0, 100.0),
                completed: 100,
            },
        ];
        assert_eq!(remote_user_read_share(&windows), Some(40.0 / 200.0));
        let text = "funnel_user_state_reads_total{source=\"remote\"} 3\nfunnel_user_state_reads_total{source=\"local\"} 5\n";
        let c = cpu_counters(&parse_exposition(text));
        assert_eq!((c.user_reads_remote, c.user_reads), (Some(3.0), Some(8.0)));
        assert_eq!(remote_user_read_share(&[]), None);
    }

    #[test]
    fn per_request_cost_is_summed_deltas_over_summed_responses() {
        let names = vec!["a".to_string(), "b".to_string()];
        // Target a: 1.0 s total, 0.2 ann, 0.3 ranking over 400 responses;
        // target b: 0.6 s, 0.2, 0.1 over 200. Together 1.6 s / 600.
        let windows = [
            TargetWindow {
                before: counters(10.0, 1.0, 2.0, 50.0),
                after: counters(11.0, 1.2, 2.3, 450.0),
                completed: 400,
            },
            TargetWindow {
                before: counters(5.0, 0.0, 0.0, 0.0),
                after: counters(5.6, 0.2, 0.1, 200.0),
                completed: 200,
            },
        ];
        let cost = cpu_per_request(&names, &windows).unwrap();
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert_eq!(cost.requests, 600);
        assert!(close(cost.total_us, 1.6e6 / 600.0), "{cost:?}");
        assert!(close(cost.ann_us.unwrap(), 0.4e6 / 600.0));
        assert!(close(cost.ranking_us.unwrap(), 0.4e6 / 600.0));
        assert!(close(cost.other_us.unwrap(), 0.8e6 / 600.0));
        assert_eq!(cost.server_counted_requests, Some(600.0));
    }

    #[test]
    fn missing_stage_counters_leave_only_the_total() {
        let only_total = CpuCounters {
            total_seconds: Some(1.0),
            ..CpuCounters::default()
        };
        let later = CpuCounters {
            total_seconds: Some(3.0),
            ..CpuCounters::default()
        };
        let cost = cpu_per_request(
            &["a".into()],
            &[TargetWindow {
                before: only_total,
                after: later,
                completed: 1000,
            }],
        )
        .unwrap();
        assert!((cost.total_us - 2000.0).abs() < 1e-9);
        assert_eq!(
            (cost.ann_us, cost.ranking_us, cost.other_us),
            (None, None, None)
        );
    }

    #[test]
    fn unusable_counters_are_explained() {
        let names = ["http://x".to_string()];
        let none = TargetWindow {
            before: CpuCounters::default(),
            after: CpuCounters::default(),
            completed: 10,
        };
        let err = cpu_per_request(&names, &[none]).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("server CPU counters not available"));
        let backwards = TargetWindow {
            before: counters(10.0, 1.0, 1.0, 5.0),
            after: counters(2.0, 1.0, 1.0, 5.0),
            completed: 10,
        };
        let err = cpu_per_request(&names, &[backwards]).unwrap_err();
        assert!(matches!(err, CpuUnavailable::WentBackwards { .. }), "{err}");
        let idle = TargetWindow {
            before: counters(1.0, 0.0, 0.0, 0.0),
            after: counters(1.0, 0.0, 0.0, 0.0),
            completed: 0,
        };
        assert_eq!(
            cpu_per_request(&names, &[idle]).unwrap_err(),
            CpuUnavailable::NoRequests
        );
    }
}
