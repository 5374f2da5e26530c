//! The kit's one error type: every kit call that can fail says why with it.
//! Tests `.expect(..)` it; the chaos harness passes it up (there it is
//! `HarnessError`).
//!
//! Owns: the error vocabulary. Must not touch: processes or the network.

use funnel::http_client::ErrorKind;
use std::time::Duration;

/// Why a kit call could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// No usable `funnel` executable.
    #[error("{0}")]
    Binary(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("timed out after {0:?}: {1}")]
    Timeout(Duration, String),
    /// A `funnel serve` process ended before it reported its addresses.
    #[error("funnel serve {args} exited before reporting its addresses: {status}")]
    Exited { args: String, status: String },
    #[error("funnel admin {args}: {message}")]
    Admin { args: String, message: String },
    /// An HTTP request that got no HTTP answer (the label names why:
    /// `connect`, `timeout`, `transport`, ...).
    #[error("{}", .0.label())]
    Http(ErrorKind),
    /// An HTTP answer other than the one asked for: its status and body.
    #[error("{status}: {body}")]
    Refused {
        status: u16,
        body: serde_json::Value,
    },
    #[error("{0}")]
    Other(String),
}

/// A `map_err` for an I/O error, saying what was being done.
pub fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KitError {
    let what = what.into();
    move |source| KitError::Io { what, source }
}
