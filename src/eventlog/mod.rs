//! funnel's durable, append-only event log: a serving node appends every
//! ingested event here before applying it, and `funnel train` reads it back
//! (through `ingest`).
//!
//! Owns: the on-disk segment format, the single writer (append, fsync policy,
//! crash recovery of a torn tail) and the reader. Must not touch: datasets,
//! models, the network, or how events are applied; callers own those.
//!
//! # On-disk format (version `FNLEVT01`)
//!
//! A log is a directory of segment files named
//! `events-<first_seq as 20 decimal digits>.log`, e.g.
//! `events-00000000000000000001.log`; the name's number is the seq of the
//! segment's first record, so sorting names sorts segments. Other files in
//! the directory (such as the writer's `LOCK`) are ignored.
//!
//! Each segment starts with the 8-byte magic `FNLEVT01`, followed by records:
//!
//! ```text
//! [u32 LE payload_len][u32 LE crc32(payload)][payload]
//! ```
//!
//! where the checksum is CRC-32 (IEEE 802.3 polynomial, as `crc32fast`
//! computes it), and the payload is, all integers little endian:
//!
//! ```text
//! seq u64 | ts i64 (Unix seconds) | kind u8 (EventKind as u8) | weight f32
//! | user id: u16 len + UTF-8 | item id: u16 len + UTF-8 | device: u16 len + UTF-8 (may be empty)
//! [ | 0x01 | origin node u64 | origin log id u64 | origin seq u64 ]
//! ```
//!
//! The bracketed origin block is present only on an event another node
//! accepted and forwarded (`LogEvent::origin`); records written before it
//! existed end at the device and read back without an origin.
//!
//! Seqs start at 1 and increase by exactly one per record across the whole
//! log; the reader checks this, so a missing segment file is reported rather
//! than silently skipped.
//!
//! # Crash safety
//!
//! Only the end of the last segment can be damaged by a crash (a partially
//! written record, a CRC mismatch on the final record, or zero bytes left
//! behind by a file system that extended the file before the data arrived).
//! [`EventLogWriter::open`] truncates such a tail back to the last complete
//! record and says so in its [`RecoveryReport`]; [`EventLogReader`] stops
//! there. Damage anywhere else is an error naming the file and byte offset:
//! data in the middle of the log is never dropped silently.
//!
//! After a crash a prefix of the batch that was being appended may survive;
//! `append_batch` had not returned, so its caller never acknowledged those
//! events, and re-sending them is safe for at-least-once consumers.
//!
//! # Fsync policy
//!
//! [`FsyncPolicy`] is configured as a string or a TOML table:
//! `"always"` (fsync before `append_batch` returns), `"never"` (leave it to
//! the OS; `sync`/`close` still fsync), `"interval:50ms"` / `"interval:2s"`
//! or `{ interval_ms = 50 }` (fsync when an append or
//! [`EventLogWriter::maybe_sync_due`] finds the last fsync older than the
//! interval; the owner calls `maybe_sync_due` periodically).

mod reader;
mod segment;
mod writer;

pub use reader::{read_all, EventLogReader};
pub use segment::{segment_file_name, segment_files, MAGIC, MAX_FIELD_LEN};
pub use writer::{EventLogWriter, RecoveryReport};

use crate::dataset::EventKind;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// One event as stored in the log.
#[derive(Debug, Clone, PartialEq)]
pub struct LogEvent {
    /// Position in the log, assigned by [`EventLogWriter::append_batch`]
    /// (whatever the caller put here is overwritten).
    pub seq: u64,
    /// Unix seconds.
    pub ts: i64,
    pub user_id: String,
    pub item_id: String,
    pub kind: EventKind,
    pub weight: f32,
    /// Client device or surface; empty when unknown.
    pub device: String,
    /// Where a forwarded event came from: the node a client sent it to and
    /// its place in that node's own log. Kept so a restart can tell which
    /// forwarded events this log already holds (none for an event accepted
    /// here).
    pub origin: Option<EventOrigin>,
}

/// The origin of a forwarded event: the node that accepted it from a
/// client, the identity of that node's event log and the event's seq in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EventOrigin {
    pub node: u64,
    pub log: u64,
    pub seq: u64,
}

impl LogEvent {
    /// An event with seq 0 (assigned on append) and no device.
    pub fn new(
        ts: i64,
        user_id: impl Into<String>,
        item_id: impl Into<String>,
        kind: EventKind,
        weight: f32,
    ) -> Self {
        LogEvent {
            seq: 0,
            ts,
            user_id: user_id.into(),
            item_id: item_id.into(),
            kind,
            weight,
            device: String::new(),
            origin: None,
        }
    }
}

/// When appended data is forced to stable storage. See the module doc for
/// the accepted spellings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FsyncPolicyRepr", into = "String")]
pub enum FsyncPolicy {
    /// fsync before `append_batch` returns: an acknowledged event survives
    /// power loss.
    Always,
    /// fsync at most this many milliseconds after an append, driven by
    /// appends and [`EventLogWriter::maybe_sync_due`].
    IntervalMs(u64),
    /// Never fsync on append; only `sync`/`close` do.
    Never,
}

impl Default for FsyncPolicy {
    /// Durability first: batching appends already amortises the fsync.
    fn default() -> Self {
        FsyncPolicy::Always
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::Never => f.write_str("never"),
            FsyncPolicy::IntervalMs(ms) => write!(f, "interval:{ms}ms"),
        }
    }
}

impl From<FsyncPolicy> for String {
    fn from(p: FsyncPolicy) -> String {
        p.to_string()
    }
}

/// Why a text or table is not an fsync policy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FsyncPolicyError {
    #[error(
        "unknown fsync policy {0:?}; use \"always\", \"never\", \"interval:50ms\" or \"interval:2s\""
    )]
    Unknown(String),
    #[error("fsync interval in {0:?} is zero; use \"always\" to fsync on every append")]
    ZeroInterval(String),
    #[error("fsync interval_ms is zero; use \"always\" to fsync on every append")]
    ZeroIntervalMs,
}

impl FromStr for FsyncPolicy {
    type Err = FsyncPolicyError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "always" => return Ok(FsyncPolicy::Always),
            "never" => return Ok(FsyncPolicy::Never),
            _ => {}
        }
        let bad = || FsyncPolicyError::Unknown(s.to_string());
        let spec = t.strip_prefix("interval:").ok_or_else(bad)?;
        let (digits, scale) = if let Some(d) = spec.strip_suffix("ms") {
            (d, 1)
        } else if let Some(d) = spec.strip_suffix('s') {
            (d, 1000)
        } else {
            return Err(bad());
        };
        let n: u64 = digits.trim().parse().map_err(|_| bad())?;
        let ms = n.checked_mul(scale).ok_or_else(bad)?;
        if ms == 0 {
            return Err(FsyncPolicyError::ZeroInterval(s.to_string()));
        }
        Ok(FsyncPolicy::IntervalMs(ms))
    }
}

/// The shapes serde accepts for a policy: a string, or `{ interval_ms = N }`.
#[derive(Deserialize)]
#[serde(untagged)]
enum FsyncPolicyRepr {
    Text(String),
    Table { interval_ms: u64 },
}

impl TryFrom<FsyncPolicyRepr> for FsyncPolicy {
    type Error = FsyncPolicyError;

    fn try_from(r: FsyncPolicyRepr) -> Result<Self, FsyncPolicyError> {
        match r {
            FsyncPolicyRepr::Text(s) => s.parse(),
            FsyncPolicyRepr::Table { interval_ms: 0 } => Err(FsyncPolicyError::ZeroIntervalMs),
            FsyncPolicyRepr::Table { interval_ms } => Ok(FsyncPolicy::IntervalMs(interval_ms)),
        }
    }
}

/// How the writer behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct EventLogOptions {
    pub fsync: FsyncPolicy,
    /// A new segment is started before the next batch once the current one
    /// has reached this size, so segments exceed it by at most one batch.
    pub segment_bytes: u64,
}

impl Default for EventLogOptions {
    fn default() -> Self {
        EventLogOptions {
            fsync: FsyncPolicy::default(),
            segment_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Everything that can go wrong with an event log.
#[derive(Debug, thiserror::Error)]
pub enum EventLogError {
    #[error("event log I/O error on {}: {source}; check the path, permissions and free disk space", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "event log {} is damaged at byte {offset}: {reason}; restore this file from a backup \
         or replica, or move it aside if losing its events is acceptable (funnel never skips \
         damaged data silently)",
        file.display()
    )]
    Corrupt {
        file: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "event log segments in {} are not contiguous: expected a segment starting at seq \
         {expected}, found {}; a segment file is missing or was renamed, restore it",
        dir.display(), found.display()
    )]
    MissingSegment {
        dir: PathBuf,
        expected: u64,
        found: PathBuf,
    },
    #[error(
        "event {index} of the batch has an invalid {field}: {reason}; nothing from this batch \
         was written, fix or drop that event and append again"
    )]
    InvalidEvent {
        index: usize,
        field: &'static str,
        reason: String,
    },
    #[error(
        "event log {} is already open for writing by another process; stop that process or \
         use another directory",
        dir.display()
    )]
    Locked { dir: PathBuf },
    #[error(
        "event log writer for {} failed earlier and refuses further appends; reopen the log \
         (EventLogWriter::open recovers the tail) and retry",
        dir.display()
    )]
    Poisoned { dir: PathBuf },
}

impl EventLogError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        EventLogError::Io {
            path: path.into(),
            source,
        }
    }
}

#[cfg(test)]
mod tests;
