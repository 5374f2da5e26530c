//! funnel's own event log (see `crate::eventlog`) as training input. Kind,
//! weight and time come from each event; ids are interned as they come.
//! Bad-row locations are the segment file and the event's seq.

use super::builder::Builder;
use super::error::{IngestError, RowFault};
use super::parquet::hash_file;
use super::Fingerprint;
use crate::eventlog::{segment_files, EventLogError, EventLogReader, LogEvent};
use crate::ids::validate_id;
use std::path::Path;

/// Whether `dir` holds event-log segments.
pub(crate) fn is_eventlog_dir(dir: &Path) -> bool {
    segment_files(dir).is_ok_and(|files| !files.is_empty())
}

pub(crate) fn load(dir: &Path, b: &mut Builder, fp: &mut Fingerprint) -> Result<(), IngestError> {
    let log_error = |source: EventLogError| IngestError::EventLog {
        dir: dir.to_path_buf(),
        source,
    };
    let mut reader = EventLogReader::open(dir).map_err(log_error)?;
    while let Some(event) = reader.next() {
        let event = event.map_err(log_error)?;
        match check(&event) {
            Ok(()) => b.add_interaction(
                &event.user_id,
                &event.item_id,
                event.ts,
                event.kind,
                event.weight,
            ),
            Err(fault) => {
                let file = reader.current_file().unwrap_or(dir).to_path_buf();
                b.reject(&file, event.seq, fault)?;
            }
        }
    }
    b.end_of_file()?;
    for file in segment_files(dir).map_err(log_error)? {
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        fp.add(&name, hash_file(&file)?);
    }
    Ok(())
}

/// The writer validates events, but a log may come from elsewhere (or an
/// older writer), and training must not see what `ingest` refuses for files.
fn check(e: &LogEvent) -> Result<(), RowFault> {
    for (column, value) in [("user id", &e.user_id), ("item id", &e.item_id)] {
        validate_id(value).map_err(|source| RowFault::InvalidId {
            column: column.into(),
            value: value.clone(),
            source,
        })?;
    }
    if !e.weight.is_finite() {
        return Err(RowFault::NonFinite {
            column: "weight".into(),
            value: e.weight.to_string(),
        });
    }
    Ok(())
}
