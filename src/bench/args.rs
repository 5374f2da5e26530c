//! Command-line surface of `funnel bench` and its validation into a `Plan`.
//!
//! Owns: `BenchArgs` (clap + serde), `Arrival`, `BenchError`, target URL
//! parsing and the numeric range checks. Must not touch: the network or the
//! clock; everything here is pure so bad input fails before any load is sent.

use super::idspec::{parse_id_source, IdEntity};
use hyper::Uri;
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

/// How request send times are spaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Arrival {
    /// Request i is due at i / qps.
    Constant,
    /// Exponential gaps with mean 1 / qps (seeded), like independent users.
    Poisson,
}

/// `funnel bench`: an open-loop load generator for the serving API.
#[derive(Debug, Clone, clap::Args, Serialize)]
pub struct BenchArgs {
    /// Server base URL, e.g. http://127.0.0.1:8080. Several comma-separated
    /// URLs are used round-robin, like a client-side load balancer.
    #[arg(long, value_delimiter = ',', required = true)]
    pub target: Vec<String>,
    /// Requests per second to send, whatever the server does (open loop).
    #[arg(long)]
    pub qps: f64,
    /// Seconds of measured load (after the warm-up).
    #[arg(long)]
    pub duration: f64,
    /// Seconds of load before measuring starts (not recorded).
    #[arg(long, default_value_t = 2.0)]
    pub warmup: f64,
    /// Spacing of send times: constant rate or seeded Poisson arrivals.
    #[arg(long, value_enum, default_value_t = Arrival::Constant)]
    pub arrival: Arrival,
    /// User ids to ask for: a file with one id per line, `synthetic:N` (the
    /// ids `funnel gen --users N` writes) or `range:PREFIX:N` (PREFIX1..PREFIXN).
    #[arg(long, default_value = "synthetic:1000")]
    pub users: String,
    /// Item ids for click events (only with --events-fraction): same forms as
    /// --users; `synthetic:N` gives the ids `funnel gen --items N` writes.
    #[arg(long, default_value = "synthetic:1000")]
    pub items: String,
    /// Recommendations asked per request.
    #[arg(long, default_value_t = 10)]
    pub k: u32,
    /// Deadline sent with each recommend request (server default if absent).
    #[arg(long)]
    pub deadline_ms: Option<u32>,
    /// Fraction of requests that post one click event instead of asking for
    /// recommendations (mixed read/write traffic).
    #[arg(long, default_value_t = 0.0)]
    pub events_fraction: f64,
    /// Seed for user/item choice, traffic mix and Poisson gaps.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most requests in flight at once; a request due while this many are
    /// pending is not sent and counts as error `client_overload`, so the
    /// schedule never slows down.
    #[arg(long, default_value_t = 256)]
    pub connections: usize,
    /// Per-request timeout from the actual send, in milliseconds.
    #[arg(long, default_value_t = 1000)]
    pub timeout_ms: u64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    pub threads: usize,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(clap::Parser)]
#[command(name = "bench")]
struct Standalone {
    #[command(flatten)]
    args: BenchArgs,
}

impl BenchArgs {
    /// Parses `argv` (first element: the program name) the way the CLI does.
    /// For tests and embedders that have no clap parser of their own.
    pub fn try_parse_from<I, T>(argv: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        use clap::Parser as _;
        Standalone::try_parse_from(argv).map(|s| s.args)
    }
}

/// Why a benchmark could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(
        "--target {target:?}: {reason}; give a base URL such as http://127.0.0.1:8080 \
         (several: comma-separated)"
    )]
    BadTarget { target: String, reason: String },
    #[error("{flag} {value} is out of range; use {accepted}")]
    OutOfRange {
        flag: &'static str,
        value: String,
        accepted: &'static str,
    },
    #[error(
        "{flag} {spec:?}: {reason}; use synthetic:N, range:PREFIX:N, or the path of a file \
         with one id per line"
    )]
    BadIdSpec {
        flag: &'static str,
        spec: String,
        reason: String,
    },
    #[error("{flag}: cannot read {}: {source}; check that the file exists and is readable", path.display())]
    ReadIds {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag}: {}:{line}: {reason}; fix or remove that line", path.display())]
    BadIdLine {
        flag: &'static str,
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("{flag}: {} holds no ids; put one id per line", path.display())]
    NoIds { flag: &'static str, path: PathBuf },
    #[error("cannot start the load generator runtime: {0}; lower --threads or free resources")]
    Runtime(#[source] std::io::Error),
}

/// A target split into what requests need: the base to append API paths to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// As the user wrote it, for the report.
    pub given: String,
    /// `scheme://authority` plus any path prefix, without a trailing slash.
    base: String,
}

impl Target {
    /// The URI of `path` (which starts with '/') on this target.
    pub fn uri(&self, path: &str) -> Uri {
        format!("{}{}", self.base, path)
            .parse()
            .expect("a validated base joined with a fixed ASCII path is a valid URI")
    }
}

/// Checks one `--target` value: plain http, a host, no query or fragment.
pub fn parse_target(given: &str) -> Result<Target, BenchError> {
    let bad = |reason: &str| BenchError::BadTarget {
        target: given.to_string(),
        reason: reason.to_string(),
    };
    let trimmed = given.trim();
    if trimmed.is_empty() {
        return Err(bad("the URL is empty"));
    }
    let uri: Uri = trimmed
        .parse()
        .map_err(|e: hyper::http::uri::InvalidUri| bad(&format!("not a URL ({e})")))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(bad(
                "https is not supported by the load generator (no TLS client); \
                 load the server over plain http",
            ))
        }
        Some(other) => return Err(bad(&format!("scheme {other:?} is not http"))),
        None => return Err(bad("the URL has no scheme; start it with http://")),
    }
    let Some(authority) = uri.authority() else {
        return Err(bad("the URL has no host"));
    };
    if authority.host().is_empty() {
        return Err(bad("the URL has no host"));
    }
    if uri.query().is_some() || trimmed.contains('#') {
        return Err(bad("the URL must not have a query or fragment"));
    }
    let prefix = uri.path().trim_end_matches('/');
    Ok(Target {
        given: given.to_string(),
        base: format!("http://{authority}{prefix}"),
    })
}

/// Everything `run` needs, checked.
#[derive(Debug, Clone)]
pub struct Plan {
    pub targets: Vec<Target>,
    pub qps: f64,
    pub duration: Duration,
    pub warmup: Duration,
    pub arrival: Arrival,
    pub users: Vec<String>,
    pub items: Vec<String>,
    pub k: u32,
    pub deadline_ms: Option<u32>,
    pub events_fraction: f64,
    pub seed: u64,
    pub connections: usize,
    pub timeout: Duration,
}

/// Longest run accepted, so a typo (--duration 36000000) fails fast.
const MAX_SECONDS: f64 = 7.0 * 24.0 * 3600.0;

fn check_seconds(flag: &'static str, v: f64, allow_zero: bool) -> Result<Duration, BenchError> {
    let ok = v.is_finite() && v <= MAX_SECONDS && if allow_zero { v >= 0.0 } else { v > 0.0 };
    if !ok {
        return Err(BenchError::OutOfRange {
            flag,
            value: v.to_string(),
            accepted: if allow_zero {
                "seconds in [0, 604800]"
            } else {
                "seconds in (0, 604800]"
            },
        });
    }
    Ok(Duration::from_secs_f64(v))
}

impl Plan {
    /// Validates `args` and loads the id lists (the only I/O: reading files).
    pub fn from_args(args: &BenchArgs) -> Result<Plan, BenchError> {
        if args.target.is_empty() {
            return Err(BenchError::BadTarget {
                target: String::new(),
                reason: "no target given".into(),
            });
        }
        let targets = args
            .target
            .iter()
            .map(|t| parse_target(t))
            .collect::<Result<Vec<_>, _>>()?;
        if !(args.qps.is_finite() && args.qps > 0.0 && args.qps <= 1e6) {
            return Err(BenchError::OutOfRange {
                flag: "--qps",
                value: args.qps.to_string(),
                accepted: "a rate in (0, 1000000] requests per second",
            });
        }
        let duration = check_seconds("--duration", args.duration, false)?;
        let warmup = check_seconds("--warmup", args.warmup, true)?;
        if !(0.0..=1.0).contains(&args.events_fraction) {
            return Err(BenchError::OutOfRange {
                flag: "--events-fraction",
                value: args.events_fraction.to_string(),
                accepted: "a fraction in [0, 1]",
            });
        }
        if args.k == 0 {
            return Err(BenchError::OutOfRange {
                flag: "--k",
                value: "0".into(),
                accepted: "at least 1",
            });
        }
        if args.connections == 0 {
            return Err(BenchError::OutOfRange {
                flag: "--connections",
                value: "0".into(),
                accepted: "at least 1",
            });
        }
        if args.timeout_ms == 0 || args.timeout_ms > 3_600_000 {
            return Err(BenchError::OutOfRange {
                flag: "--timeout-ms",
                value: args.timeout_ms.to_string(),
                accepted: "milliseconds in [1, 3600000]",
            });
        }
        if args.threads == 0 || args.threads > 1024 {
            return Err(BenchError::OutOfRange {
                flag: "--threads",
                value: args.threads.to_string(),
                accepted: "a thread count in [1, 1024]",
            });
        }
        let users = parse_id_source("--users", &args.users, IdEntity::User)?;
        // Item ids are only needed for events; a bad --items must not block a
        // read-only run that never uses them.
        let items = if args.events_fraction > 0.0 {
            parse_id_source("--items", &args.items, IdEntity::Item)?
        } else {
            Vec::new()
        };
        Ok(Plan {
            targets,
            qps: args.qps,
            duration,
            warmup,
            arrival: args.arrival,
            users,
            items,
            k: args.k,
            deadline_ms: args.deadline_ms,
            events_fraction: args.events_fraction,
            seed: args.seed,
            connections: args.connections,
            timeout: Duration::from_millis(args.timeout_ms),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> BenchArgs {
        let mut argv = vec!["bench", "--target", "http://127.0.0.1:1"];
        for (flag, value) in [("--qps", "10"), ("--duration", "1")] {
            if !extra.iter().any(|e| e.split('=').next() == Some(flag)) {
                argv.extend_from_slice(&[flag, value]);
            }
        }
        argv.extend_from_slice(extra);
        BenchArgs::try_parse_from(argv).expect("test argv parses")
    }

    #[test]
    fn defaults_match_the_documented_ones() {
        let a = args(&[]);
        assert_eq!(a.warmup, 2.0);
        assert_eq!(a.users, "synthetic:1000");
        assert_eq!(a.k, 10);
        assert_eq!(a.deadline_ms, None);
        assert_eq!(a.events_fraction, 0.0);
        assert_eq!(a.seed, 1);
        assert_eq!(a.connections, 256);
        assert_eq!(a.timeout_ms, 1000);
        assert_eq!(a.threads, 2);
        assert_eq!(a.arrival, Arrival::Constant);
        assert!(!a.json);
    }

    #[test]
    fn comma_separated_targets_become_a_list() {
        let a = BenchArgs::try_parse_from([
            "bench",
            "--target",
            "http://a:1,http://b:2/",
            "--qps",
            "1",
            "--duration",
            "1",
        ])
        .unwrap();
        let plan = Plan::from_args(&a).unwrap();
        let uris: Vec<String> = plan
            .targets
            .iter()
            .map(|t| t.uri("/v1/recommend").to_string())
            .collect();
        assert_eq!(uris, ["http://a:1/v1/recommend", "http://b:2/v1/recommend"]);
    }

    #[test]
    fn missing_qps_is_a_clap_error() {
        let r = BenchArgs::try_parse_from(["bench", "--target", "http://a:1", "--duration", "1"]);
        assert!(r.is_err());
    }

    #[test]
    fn target_keeps_a_path_prefix_and_drops_trailing_slash() {
        let t = parse_target("http://example.com:8080/api/").unwrap();
        assert_eq!(
            t.uri("/metrics").to_string(),
            "http://example.com:8080/api/metrics"
        );
    }

    #[test]
    fn bad_targets_say_what_is_wrong() {
        let cases = [
            ("", "empty"),
            ("127.0.0.1:8080", "scheme"),
            ("https://x:1", "https is not supported"),
            ("ftp://x:1", "not http"),
            ("http://", "not a URL"),
            ("http://x:1/?a=b", "query"),
            ("http://exa mple", "not a URL"),
        ];
        for (given, needle) in cases {
            let err = parse_target(given).expect_err(given).to_string();
            assert!(err.contains(needle), "{given:?}: {err}");
            assert!(err.contains("http://127.0.0.1:8080"), "{err}");
        }
    }

    #[test]
    fn out_of_range_numbers_are_refused_with_the_flag_named() {
        for (extra, flag) in [
            (&["--qps", "0"][..], "--qps"),
            (&["--qps", "NaN"][..], "--qps"),
            (&["--duration", "0"][..], "--duration"),
            (&["--warmup=-1"][..], "--warmup"),
            (&["--events-fraction", "1.5"][..], "--events-fraction"),
            (&["--connections", "0"][..], "--connections"),
            (&["--timeout-ms", "0"][..], "--timeout-ms"),
            (&["--k", "0"][..], "--k"),
            (&["--threads", "0"][..], "--threads"),
        ] {
            let err = Plan::from_args(&args(extra)).expect_err(flag).to_string();
            assert!(err.starts_with(flag), "{err}");
        }
        assert!(Plan::from_args(&args(&["--warmup", "0"])).is_ok());
    }

    #[test]
    fn items_are_only_loaded_when_events_are_sent() {
        let read_only = args(&["--items", "nonsense:1"]);
        assert!(Plan::from_args(&read_only).unwrap().items.is_empty());
        let mixed = args(&["--items", "nonsense:1", "--events-fraction", "0.1"]);
        let err = Plan::from_args(&mixed).unwrap_err().to_string();
        assert!(err.contains("--items"), "{err}");
    }
}
