//! Errors of `ingest`. Every message names the file and says what to do.
//!
//! Locations: `line` is the 1-based line of a text file (the header is line
//! 1), the 1-based data row of a Parquet file, or the seq of an event-log
//! event.

use crate::dataset::BadRow;
use crate::eventlog::EventLogError;
use crate::ids::IdError;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Why one input row is malformed. Such rows can be skipped with
/// `--max-bad-rows`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RowFault {
    #[error("expected {expected} fields, found {found}")]
    FieldCount { expected: usize, found: usize },
    #[error("column {column:?}: {value:?} is not a number")]
    BadNumber { column: String, value: String },
    #[error(
        "column {column:?}: {value:?} is not a timestamp (expected an integer in the \
         --time-unit, or RFC 3339 text such as 2024-05-01T12:00:00Z)"
    )]
    BadTimestamp { column: String, value: String },
    #[error("column {column:?}: {value:?} is not a finite number")]
    NonFinite { column: String, value: String },
    #[error("column {column:?}: invalid id {value:?}: {source}")]
    InvalidId {
        column: String,
        value: String,
        source: IdError,
    },
    #[error("column {column:?}: {message}")]
    UnknownKind { column: String, message: String },
    #[error("column {column:?} is empty, but a value is required")]
    Missing { column: String },
    #[error("column {column:?} holds a {found} value; {expected}")]
    WrongType {
        column: String,
        found: String,
        expected: &'static str,
    },
    #[error("{0}")]
    Other(String),
}

/// Everything that can stop `ingest::load`.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("cannot read {}: {source}; check that the path exists and is readable", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no input given; pass --data PATH (a directory or a file) or --interactions FILE")]
    NoInput,
    #[error("{flag}: {reason}")]
    InvalidArgument { flag: &'static str, reason: String },
    #[error(
        "cannot tell the format of {}: {reason}; pass --format movielens, csv, tsv, parquet \
         or eventlog",
        path.display()
    )]
    UnknownFormat { path: PathBuf, reason: String },
    #[error("{} has no data rows; pass a file with at least one interaction", file.display())]
    Empty { file: PathBuf },
    #[error(
        "{} has no column {column:?} (named by {flag}); available columns: {}; pass the right \
         name with {flag}",
        file.display(), available.join(", ")
    )]
    UnknownColumn {
        file: PathBuf,
        column: String,
        flag: &'static str,
        available: Vec<String>,
    },
    #[error(
        "{}: the header names column {column:?} more than once; rename the duplicates so each \
         column name is unique",
        file.display()
    )]
    DuplicateColumn { file: PathBuf, column: String },
    #[error(
        "{}: column {column:?} has type {found}, which cannot be used as {role}; convert it to \
         {expected}",
        file.display()
    )]
    UnsupportedColumnType {
        file: PathBuf,
        column: String,
        role: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error(
        "{} line {line}: {fault}; fix the row, or pass --max-bad-rows N to skip up to N \
         malformed rows",
        file.display()
    )]
    BadRow {
        file: PathBuf,
        line: u64,
        fault: RowFault,
    },
    #[error(
        "{} line {line}: column {column:?} holds an invalid id {value:?}: {source}; fix the \
         row, or pass --max-bad-rows N to skip up to N malformed rows",
        file.display()
    )]
    InvalidId {
        file: PathBuf,
        line: u64,
        column: String,
        value: String,
        source: IdError,
    },
    #[error(
        "{count} malformed rows, more than --max-bad-rows {limit} allows; first ones: {}; fix \
         the input or raise --max-bad-rows N to skip them",
        list_bad_rows(first)
    )]
    TooManyBadRows {
        count: u64,
        limit: u64,
        first: Vec<BadRow>,
    },
    #[error(
        "{} line {line} is not valid UTF-8, which this format requires; re-encode the file \
         (e.g. `iconv -f latin1 -t utf-8`)",
        file.display()
    )]
    NotUtf8 { file: PathBuf, line: u64 },
    #[error("cannot read Parquet file {}: {message}; check that it is a valid Parquet file", file.display())]
    Parquet { file: PathBuf, message: String },
    #[error("cannot read event log {}: {source}", dir.display())]
    EventLog {
        dir: PathBuf,
        #[source]
        source: EventLogError,
    },
}

impl IngestError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        IngestError::Io {
            path: path.into(),
            source,
        }
    }

    /// The error for the first malformed row when none may be skipped.
    pub(crate) fn from_fault(file: PathBuf, line: u64, fault: RowFault) -> Self {
        match fault {
            RowFault::InvalidId {
                column,
                value,
                source,
            } => IngestError::InvalidId {
                file,
                line,
                column,
                value,
                source,
            },
            fault => IngestError::BadRow { file, line, fault },
        }
    }
}

fn list_bad_rows(rows: &[BadRow]) -> String {
    let mut s = String::new();
    for (i, r) in rows.iter().enumerate() {
        if i > 0 {
            s.push_str("; ");
        }
        let _ = write!(s, "{} line {}: {}", r.file, r.line, r.reason);
    }
    s
}
