//! The single writer of an event log: opening with tail recovery, batched
//! appends, segment rolling and the fsync policy. One writer per directory
//! (enforced with an advisory lock on `LOCK` where the OS supports it).

use super::segment::{
    encode_record, io_err, list_segments, open_scanner, segment_file_name, validate_event,
    ScanStep, SeqCheck, MAGIC,
};
use super::{EventLogError, EventLogOptions, FsyncPolicy, LogEvent};
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What `EventLogWriter::open` found and repaired.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecoveryReport {
    /// Segment files found.
    pub segments: usize,
    /// Complete records in the last segment after recovery.
    pub records_in_last_segment: u64,
    /// Seq the next appended event gets.
    pub next_seq: u64,
    /// The segment whose tail was cut, if any.
    pub truncated_file: Option<PathBuf>,
    /// Bytes removed from the end of `truncated_file`.
    pub dropped_bytes: u64,
    /// Partial or damaged records among the dropped bytes (0 or 1: only the
    /// last record can be torn; zero fill and a partial header count 0).
    pub dropped_records: u64,
    /// Why the tail was cut.
    pub reason: Option<String>,
}

impl RecoveryReport {
    /// True when nothing had to be repaired.
    pub fn is_clean(&self) -> bool {
        self.dropped_bytes == 0 && self.truncated_file.is_none()
    }
}

struct ActiveSegment {
    path: PathBuf,
    file: File,
    len: u64,
    /// Whether any record follows the magic; an empty segment is reused
    /// instead of rolled.
    has_records: bool,
}

/// Appends events to the log in `dir`. See the module doc for guarantees.
pub struct EventLogWriter {
    dir: PathBuf,
    options: EventLogOptions,
    active: Option<ActiveSegment>,
    next_seq: u64,
    unsynced: bool,
    last_sync: Instant,
    poisoned: bool,
    encode_buf: Vec<u8>,
    _lock: DirLock,
}

impl EventLogWriter {
    /// Opens (creating if needed) the log in `dir`, repairs a torn tail of
    /// the last segment and continues its seq numbering.
    pub fn open(
        dir: impl AsRef<Path>,
        options: EventLogOptions,
    ) -> Result<(EventLogWriter, RecoveryReport), EventLogError> {
        let dir = dir.as_ref().to_path_buf();
        create_dir_durably(&dir)?;
        let lock = DirLock::acquire(&dir)?;
        let segments = list_segments(&dir)?;
        let mut report = RecoveryReport {
            segments: segments.len(),
            next_seq: 1,
            ..Default::default()
        };
        let mut writer = EventLogWriter {
            dir,
            options,
            active: None,
            next_seq: 1,
            unsynced: false,
            last_sync: Instant::now(),
            poisoned: false,
            encode_buf: Vec::new(),
            _lock: lock,
        };
        if let Some((first_seq, path)) = segments.last() {
            let (active, next_seq) = recover_last_segment(path, *first_seq, &mut report)?;
            writer.active = Some(active);
            writer.next_seq = next_seq;
            report.next_seq = next_seq;
        }
        Ok((writer, report))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Seq the next appended event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    pub fn options(&self) -> &EventLogOptions {
        &self.options
    }

    /// Assigns seqs to `events`, appends them and applies the fsync policy.
    /// Returns `(first_seq, last_seq)`; for an empty batch that is the empty
    /// range `(next, next - 1)` and nothing is written. Every event is
    /// validated before anything is written, so an invalid event rejects the
    /// whole batch.
    pub fn append_batch(&mut self, events: &mut [LogEvent]) -> Result<(u64, u64), EventLogError> {
        if self.poisoned {
            return Err(EventLogError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        for (i, e) in events.iter().enumerate() {
            validate_event(i, e)?;
        }
        let first = self.next_seq;
        if events.is_empty() {
            return Ok((first, first - 1));
        }
        let needs_roll = match &self.active {
            None => true,
            Some(a) => a.has_records && a.len >= self.options.segment_bytes,
        };
        if needs_roll {
            self.guard(|w| w.roll())?;
        }
        self.encode_buf.clear();
        for (i, e) in events.iter_mut().enumerate() {
            e.seq = first + i as u64;
            encode_record(e, &mut self.encode_buf);
        }
        let last = first + events.len() as u64 - 1;
        self.guard(|w| w.write_buffer())?;
        // chaos tests: crash with the batch written but not fsynced
        crate::failpoint!("eventlog-append");
        self.next_seq = last + 1;
        match self.options.fsync {
            FsyncPolicy::Always => self.sync()?,
            FsyncPolicy::IntervalMs(ms) => {
                if self.last_sync.elapsed() >= Duration::from_millis(ms) {
                    self.sync()?;
                }
            }
            FsyncPolicy::Never => {}
        }
        Ok((first, last))
    }

    /// Forces appended data to stable storage.
    pub fn sync(&mut self) -> Result<(), EventLogError> {
        if self.poisoned {
            return Err(EventLogError::Poisoned {
                dir: self.dir.clone(),
            });
        }
        if self.unsynced {
            self.guard(|w| {
                let a = w
                    .active
                    .as_ref()
                    .expect("unsynced data implies an active segment");
                crate::io_failpoint!("eventlog-fsync-eio")
                    .and_then(|()| a.file.sync_data())
                    .map_err(io_err(&a.path))
            })?;
            self.unsynced = false;
        }
        self.last_sync = Instant::now();
        Ok(())
    }

    /// Under `FsyncPolicy::IntervalMs`, fsyncs if unsynced data is older than
    /// the interval; returns whether it did. The owner calls this
    /// periodically (e.g. every interval) so quiet periods still get synced.
    pub fn maybe_sync_due(&mut self) -> Result<bool, EventLogError> {
        let FsyncPolicy::IntervalMs(ms) = self.options.fsync else {
            return Ok(false);
        };
        if !self.unsynced || self.last_sync.elapsed() < Duration::from_millis(ms) {
            return Ok(false);
        }
        self.sync()?;
        Ok(true)
    }

    /// Clean shutdown: fsyncs whatever is pending, under every policy.
    pub fn close(mut self) -> Result<(), EventLogError> {
        self.sync()
    }

    /// Runs a step that leaves the log in an unknown state if it fails (a
    /// failed write or fsync), and poisons the writer on failure: after an
    /// fsync error the kernel may have dropped the dirty pages, so retrying
    /// would report success for lost data.
    fn guard<T>(
        &mut self,
        step: impl FnOnce(&mut Self) -> Result<T, EventLogError>,
    ) -> Result<T, EventLogError> {
        let r = step(self);
        if r.is_err() {
            self.poisoned = true;
        }
        r
    }

    fn write_buffer(&mut self) -> Result<(), EventLogError> {
        let a = self
            .active
            .as_mut()
            .expect("append_batch rolls before writing, so a segment is active");
        let written = crate::io_failpoint!("eventlog-write-eio")
            .and_then(|()| a.file.write_all(&self.encode_buf));
        if let Err(e) = written {
            // Best effort: remove the partial batch now rather than leave it
            // for recovery; the writer is poisoned either way.
            let _ = a.file.set_len(a.len);
            return Err(EventLogError::io(&a.path, e));
        }
        a.len += self.encode_buf.len() as u64;
        a.has_records = true;
        self.unsynced = true;
        Ok(())
    }

    /// Closes the current segment (durably unless the policy is `Never`) and
    /// starts a new one named after the next seq.
    fn roll(&mut self) -> Result<(), EventLogError> {
        if self.unsynced && self.options.fsync != FsyncPolicy::Never {
            if let Some(a) = &self.active {
                a.file.sync_data().map_err(io_err(&a.path))?;
            }
            self.unsynced = false;
        }
        let path = self.dir.join(segment_file_name(self.next_seq));
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create_new(true)
            .open(&path)
            .map_err(io_err(&path))?;
        file.write_all(MAGIC).map_err(io_err(&path))?;
        file.sync_data().map_err(io_err(&path))?;
        // The new name must survive a crash too, or recovery would not see
        // the segment at all.
        sync_dir(&self.dir)?;
        self.active = Some(ActiveSegment {
            path,
            file,
            len: MAGIC.len() as u64,
            has_records: false,
        });
        Ok(())
    }
}

impl Drop for EventLogWriter {
    fn drop(&mut self) {
        // Best effort for owners that forget `close`; errors have nowhere to
        // go here, and `Never` promised not to fsync.
        if self.unsynced && !self.poisoned && self.options.fsync != FsyncPolicy::Never {
            if let Some(a) = &self.active {
                let _ = a.file.sync_data();
            }
        }
    }
}

/// Scans the last segment, truncates a torn tail, and returns it opened for
/// appending together with the next seq.
fn recover_last_segment(
    path: &Path,
    first_seq: u64,
    report: &mut RecoveryReport,
) -> Result<(ActiveSegment, u64), EventLogError> {
    let mut scanner = open_scanner(path)?;
    let mut seqs = SeqCheck::starting(path, first_seq)?;
    let mut good_end = 0u64;
    let mut records = 0u64;
    let mut torn = None;
    loop {
        match scanner.next_step()? {
            ScanStep::Record { event, end } => {
                seqs.check(path, good_end.max(MAGIC.len() as u64), event.seq)?;
                good_end = end;
                records += 1;
            }
            ScanStep::End => break,
            ScanStep::Torn {
                offset,
                reason,
                had_record,
            } => {
                torn = Some((offset, reason, had_record));
                break;
            }
        }
    }
    if records == 0 {
        good_end = good_end.max(MAGIC.len() as u64);
    }
    drop(scanner);
    let mut file = OpenOptions::new()
        .read(true)
        .append(true)
        .open(path)
        .map_err(io_err(path))?;
    let len = file.metadata().map_err(io_err(path))?.len();
    if let Some((offset, reason, had_record)) = torn {
        if offset == 0 {
            // Not even the magic made it: rewrite the header.
            file.set_len(0).map_err(io_err(path))?;
            file.write_all(MAGIC).map_err(io_err(path))?;
            good_end = MAGIC.len() as u64;
        } else {
            file.set_len(offset).map_err(io_err(path))?;
            good_end = offset;
        }
        // set_len changes metadata, hence sync_all rather than sync_data.
        file.sync_all().map_err(io_err(path))?;
        report.truncated_file = Some(path.to_path_buf());
        report.dropped_bytes = len.saturating_sub(offset);
        report.dropped_records = u64::from(had_record);
        report.reason = Some(reason);
    }
    report.records_in_last_segment = records;
    let active = ActiveSegment {
        path: path.to_path_buf(),
        file,
        len: good_end,
        has_records: records > 0,
    };
    Ok((active, seqs.expected))
}

fn create_dir_durably(dir: &Path) -> Result<(), EventLogError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    if let Some(parent) = dir.parent().filter(|p| !p.as_os_str().is_empty()) {
        sync_dir(parent)?;
    }
    Ok(())
}

/// fsyncs a directory so that entries created in it survive a crash.
fn sync_dir(dir: &Path) -> Result<(), EventLogError> {
    #[cfg(unix)]
    {
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(io_err(dir))
    }
    #[cfg(not(unix))]
    {
        // Directories cannot be opened as files here; the OS makes entries
        // durable with the file data.
        let _ = dir;
        Ok(())
    }
}

/// Exclusive advisory lock on `<dir>/LOCK`, released when dropped (the OS
/// releases it if the process dies, so a crash never leaves a stale lock).
struct DirLock {
    _file: File,
}

impl DirLock {
    fn acquire(dir: &Path) -> Result<DirLock, EventLogError> {
        let path = dir.join("LOCK");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(io_err(&path))?;
        #[cfg(unix)]
        {
            use std::os::unix::io::AsRawFd;
            // SAFETY: flock only reads the descriptor, which `file` keeps
            // open for the duration of the call.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc != 0 {
                let err = std::io::Error::last_os_error();
                if err.kind() == std::io::ErrorKind::WouldBlock {
                    return Err(EventLogError::Locked {
                        dir: dir.to_path_buf(),
                    });
                }
                return Err(EventLogError::io(&path, err));
            }
        }
        Ok(DirLock { _file: file })
    }
}

#[cfg(test)]
mod interval_tests {
    use super::*;
    use crate::dataset::EventKind;

    #[test]
    fn interval_policy_syncs_only_when_due() {
        let tmp = tempfile::tempdir().unwrap();
        let options = EventLogOptions {
            fsync: FsyncPolicy::IntervalMs(60_000),
            segment_bytes: u64::MAX,
        };
        let (mut w, _) = EventLogWriter::open(tmp.path(), options).unwrap();
        w.append_batch(&mut [LogEvent::new(1, "u", "i", EventKind::Click, 2.0)])
            .unwrap();
        assert!(w.unsynced, "a fresh interval must not fsync on append");
        assert!(!w.maybe_sync_due().unwrap());
        // Pretend the last fsync was long ago instead of sleeping.
        w.last_sync = Instant::now()
            .checked_sub(Duration::from_secs(120))
            .expect("the monotonic clock is past two minutes");
        assert!(w.maybe_sync_due().unwrap());
        assert!(!w.unsynced);
        assert!(!w.maybe_sync_due().unwrap(), "nothing left to sync");
    }
}
