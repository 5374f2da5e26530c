//! Sequential reader over all segments of a log. It takes no lock, so it can
//! read a log that a live writer is appending to: each segment is read up to
//! its length when the reader reaches it, and a torn tail at the end of the
//! last segment (possibly a record still being written) ends the iteration.

use super::segment::{list_segments, open_scanner, ScanStep, SegmentScanner, SeqCheck};
use super::{EventLogError, LogEvent};
use std::fs::File;
use std::io::{BufReader, Take};
use std::path::{Path, PathBuf};

type Scanner = SegmentScanner<BufReader<Take<File>>>;

struct OpenSegment {
    scanner: Scanner,
    seqs: SeqCheck,
    record_start: u64,
    is_last: bool,
}

/// Iterator over the events of a log, in seq order. Yields an error (and
/// then ends) on damage anywhere but the tail of the last segment.
pub struct EventLogReader {
    dir: PathBuf,
    segments: std::vec::IntoIter<(u64, PathBuf)>,
    current: Option<OpenSegment>,
    /// Seq the next segment must start with, once one segment has been read.
    expected_segment_start: Option<u64>,
    done: bool,
}

impl EventLogReader {
    /// Lists the segments of the log in `dir` (a snapshot: segments created
    /// later are not read). A directory without segments reads as empty.
    pub fn open(dir: impl AsRef<Path>) -> Result<EventLogReader, EventLogError> {
        let dir = dir.as_ref().to_path_buf();
        let segments = list_segments(&dir)?;
        Ok(EventLogReader {
            dir,
            segments: segments.into_iter(),
            current: None,
            expected_segment_start: None,
            done: false,
        })
    }

    /// Like `open`, but skips the segments that hold only seqs <= `after`
    /// (a reader catching up from a known position need not scan the whole
    /// log). The first segment read may still start below `after + 1`; the
    /// caller filters those events.
    pub fn open_after(dir: impl AsRef<Path>, after: u64) -> Result<EventLogReader, EventLogError> {
        let dir = dir.as_ref().to_path_buf();
        let segments = list_segments(&dir)?;
        // keep segment i when the next one starts above after + 1 (so
        // segment i may hold a seq > after) or it is the last
        let keep_from = segments
            .windows(2)
            .take_while(|w| w[1].0 <= after.saturating_add(1))
            .count();
        let segments: Vec<(u64, PathBuf)> = segments.into_iter().skip(keep_from).collect();
        Ok(EventLogReader {
            dir,
            segments: segments.into_iter(),
            current: None,
            expected_segment_start: None,
            done: false,
        })
    }

    /// The segment file the last yielded event came from.
    pub fn current_file(&self) -> Option<&Path> {
        self.current.as_ref().map(|c| c.scanner.path())
    }

    fn fail(&mut self, e: EventLogError) -> Option<Result<LogEvent, EventLogError>> {
        self.done = true;
        Some(Err(e))
    }

    fn open_next_segment(&mut self) -> Result<bool, EventLogError> {
        let Some((first_seq, path)) = self.segments.next() else {
            return Ok(false);
        };
        if let Some(expected) = self.expected_segment_start {
            if first_seq != expected {
                return Err(EventLogError::MissingSegment {
                    dir: self.dir.clone(),
                    expected,
                    found: path,
                });
            }
        }
        let seqs = SeqCheck::starting(&path, first_seq)?;
        let scanner = open_scanner(&path)?;
        self.current = Some(OpenSegment {
            scanner,
            seqs,
            record_start: super::MAGIC.len() as u64,
            is_last: self.segments.len() == 0,
        });
        Ok(true)
    }
}

impl Iterator for EventLogReader {
    type Item = Result<LogEvent, EventLogError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if self.current.is_none() {
                match self.open_next_segment() {
                    Ok(true) => {}
                    Ok(false) => {
                        self.done = true;
                        return None;
                    }
                    Err(e) => return self.fail(e),
                }
            }
            let cur = self
                .current
                .as_mut()
                .expect("a segment was opened just above");
            let step = match cur.scanner.next_step() {
                Ok(step) => step,
                Err(e) => return self.fail(e),
            };
            match step {
                ScanStep::Record { event, end } => {
                    let path = cur.scanner.path().to_path_buf();
                    if let Err(e) = cur.seqs.check(&path, cur.record_start, event.seq) {
                        return self.fail(e);
                    }
                    cur.record_start = end;
                    return Some(Ok(event));
                }
                ScanStep::End => {
                    self.expected_segment_start = Some(cur.seqs.expected);
                    self.current = None;
                }
                ScanStep::Torn { offset, reason, .. } => {
                    if cur.is_last {
                        self.done = true;
                        return None;
                    }
                    let e = EventLogError::Corrupt {
                        file: cur.scanner.path().to_path_buf(),
                        offset,
                        reason: format!("{reason}, in a segment that is not the last one"),
                    };
                    return self.fail(e);
                }
            }
        }
    }
}

/// Reads every event of the log in `dir`.
pub fn read_all(dir: impl AsRef<Path>) -> Result<Vec<LogEvent>, EventLogError> {
    EventLogReader::open(dir)?.collect()
}
