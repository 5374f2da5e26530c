//! Crash failpoints for the chaos tests (cargo feature `failpoints`).
//!
//! Owns: arming named failpoints from `FUNNEL_FAILPOINTS` at process start
//! and what a fired point does. Must not touch: the code around each point
//! (the storage modules only mark where a crash may happen with
//! `failpoint!("name")`).
//!
//! Points: `raft-log-append` (Raft log append, before the redb commit and
//! its fsync), `raft-apply` (state machine apply, before the entries
//! change the state), `raft-snapshot-build` and `raft-snapshot-install`
//! (before the snapshot file is made durable), `eventlog-append` (event
//! log append, after the write, before the fsync).
//!
//! I/O points (`io_failpoint!`) fail instead of crashing: their `return`
//! action makes the operation return EIO, as a failing disk does:
//! `eventlog-write-eio` (the event log's write), `eventlog-fsync-eio` (its
//! fsync).
//!
//! `FUNNEL_FAILPOINTS` uses the `fail` crate's syntax,
//! `name=actions;name2=actions` (e.g. `raft-apply=3*off->return`). The
//! `return` action is a simulated crash: one line on stderr, then
//! `process::exit(86)` with no unwinding and no flushing — like the process
//! losing power, and not a panic (the chaos checks treat panics in node
//! logs as bugs). The other actions of `fail` (`panic`, `sleep(ms)`,
//! `print`, `pause`, ...) behave as that crate documents.
//!
//! Without the feature `failpoint!` expands to nothing. With it, an unarmed
//! process pays one relaxed atomic load per point (the `fail` registry
//! takes a lock, so it is only consulted once something was armed).

use std::sync::atomic::{AtomicBool, Ordering};

/// The environment variable that arms failpoints.
pub const ENV: &str = "FUNNEL_FAILPOINTS";

/// Exit code of a simulated crash.
pub const CRASH_EXIT_CODE: i32 = 86;

/// Every failpoint funnel has; arming another name is refused (a typo
/// would otherwise make a chaos test silently test nothing).
pub const NAMES: &[&str] = &[
    "raft-log-append",
    "raft-apply",
    "raft-snapshot-build",
    "raft-snapshot-install",
    "eventlog-append",
    "eventlog-write-eio",
    "eventlog-fsync-eio",
];

static ARMED: AtomicBool = AtomicBool::new(false);

/// True once `setup` armed at least one point.
#[inline]
pub fn armed() -> bool {
    ARMED.load(Ordering::Relaxed)
}

/// Why `FUNNEL_FAILPOINTS` cannot be honoured; the process must not start.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FailpointError {
    #[error("{ENV}: `{0}` is not NAME=ACTIONS (e.g. raft-apply=1*off->return)", ENV = ENV)]
    NotAssignment(String),
    #[error("{ENV}: unknown failpoint `{0}`; funnel has {names}", ENV = ENV, names = NAMES.join(", "))]
    UnknownName(String),
    #[error("{ENV}: failpoint `{0}` has no actions", ENV = ENV)]
    NoActions(String),
    #[error(
        "{ENV} is set but this funnel was built without the `failpoints` feature: build with --features failpoints",
        ENV = ENV
    )]
    NotBuiltIn,
    /// The `fail` crate refused the actions; `reason` is its text.
    #[error("{ENV}: failpoint `{name}`: {reason}", ENV = ENV)]
    BadActions { name: String, reason: String },
}

/// Splits `name=actions;name2=actions` into pairs, checking the names.
pub fn parse(spec: &str) -> Result<Vec<(String, String)>, FailpointError> {
    let mut out = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let Some((name, actions)) = part.split_once('=') else {
            return Err(FailpointError::NotAssignment(part.to_string()));
        };
        let (name, actions) = (name.trim(), actions.trim());
        if !NAMES.contains(&name) {
            return Err(FailpointError::UnknownName(name.to_string()));
        }
        if actions.is_empty() {
            return Err(FailpointError::NoActions(name.to_string()));
        }
        out.push((name.to_string(), actions.to_string()));
    }
    Ok(out)
}

/// Arms the failpoints `FUNNEL_FAILPOINTS` names (nothing when it is unset
/// or empty). An error — a bad spec, or the variable set in a build without
/// the feature — means the process must not start: a chaos test would
/// otherwise run without the crash it asked for.
pub fn setup_from_env() -> Result<(), FailpointError> {
    match std::env::var(ENV) {
        Ok(spec) if !spec.trim().is_empty() => setup(&spec),
        _ => Ok(()),
    }
}

/// Arms the points of `spec` (see `parse`).
pub fn setup(spec: &str) -> Result<(), FailpointError> {
    let points = parse(spec)?;
    if !cfg!(feature = "failpoints") {
        return Err(FailpointError::NotBuiltIn);
    }
    #[cfg(feature = "failpoints")]
    for (name, actions) in &points {
        fail::cfg(name.as_str(), actions).map_err(|reason| FailpointError::BadActions {
            name: name.clone(),
            reason,
        })?;
    }
    if !points.is_empty() {
        ARMED.store(true, Ordering::Relaxed);
    }
    Ok(())
}

/// Evaluates failpoint `name`; a `return` action ends the process.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn eval(name: &'static str) {
    if fail::eval(name, |_| ()).is_some() {
        crash(name);
    }
}

/// Evaluates I/O failpoint `name`: a `return` action is an EIO error.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn eval_io(name: &'static str) -> std::io::Result<()> {
    match fail::eval(name, |_| ()) {
        Some(()) => Err(std::io::Error::from_raw_os_error(libc::EIO)),
        None => Ok(()),
    }
}

/// The simulated crash: no destructors, no buffered output flushed.
#[cfg(feature = "failpoints")]
fn crash(name: &str) -> ! {
    use std::io::Write;
    // stderr is unbuffered: the line is out before the exit
    let _ = writeln!(
        std::io::stderr(),
        "funnel: failpoint {name} fired: exiting to simulate a crash"
    );
    std::process::exit(CRASH_EXIT_CODE)
}

/// Marks a place where a chaos test may crash the process (see the module
/// doc). Compiles to nothing without the `failpoints` feature.
#[macro_export]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if $crate::failpoints::armed() {
                $crate::failpoints::eval($name);
            }
        }
    };
}

/// An I/O failpoint: `Ok(())`, or (armed with `return`) an EIO error the
/// caller handles as it would a failing disk's.
#[macro_export]
macro_rules! io_failpoint {
    ($name:literal) => {{
        #[cfg(feature = "failpoints")]
        let r: std::io::Result<()> = if $crate::failpoints::armed() {
            $crate::failpoints::eval_io($name)
        } else {
            Ok(())
        };
        #[cfg(not(feature = "failpoints"))]
        let r: std::io::Result<()> = Ok(());
        r
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_fail_syntax_and_refuses_unknown_names() {
        let p = parse("raft-apply=3*off->return; eventlog-append=return").unwrap();
        assert_eq!(
            p,
            vec![
                ("raft-apply".to_string(), "3*off->return".to_string()),
                ("eventlog-append".to_string(), "return".to_string())
            ]
        );
        assert!(parse("").unwrap().is_empty());
        let e = parse("raft-aply=return").unwrap_err();
        assert_eq!(e, FailpointError::UnknownName("raft-aply".into()));
        assert!(
            e.to_string().contains("unknown failpoint `raft-aply`"),
            "{e}"
        );
        let e = parse("raft-apply").unwrap_err();
        assert!(e.to_string().contains("NAME=ACTIONS"), "{e}");
        let e = parse("raft-apply=").unwrap_err();
        assert!(e.to_string().contains("no actions"), "{e}");
    }

    #[cfg(not(feature = "failpoints"))]
    #[test]
    fn a_build_without_the_feature_refuses_to_arm() {
        let e = setup("raft-apply=return").unwrap_err();
        assert_eq!(e, FailpointError::NotBuiltIn);
        assert!(e.to_string().contains("--features failpoints"), "{e}");
        assert!(!armed());
    }

    #[cfg(feature = "failpoints")]
    #[test]
    fn a_bad_action_is_refused() {
        let e = setup("raft-snapshot-build=explode").unwrap_err();
        assert!(e.to_string().contains("raft-snapshot-build"), "{e}");
    }
}
