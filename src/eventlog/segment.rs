//! Segment files: naming, listing, record encoding and the record scanner
//! shared by the writer's recovery and the reader. Layout is in the parent
//! module doc. Knows nothing about fsync or write policy.

use super::{EventLogError, EventOrigin, LogEvent};
use crate::dataset::EventKind;
use crate::ids::validate_id;
use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// First bytes of every segment; the trailing digits version the format.
pub const MAGIC: &[u8; 8] = b"FNLEVT01";
/// Longest id or device string the format can hold (u16 length prefix).
pub const MAX_FIELD_LEN: usize = u16::MAX as usize;

pub(crate) const RECORD_HEADER_LEN: u64 = 8;
/// seq + ts + kind + weight + three u16 length prefixes.
pub(crate) const MIN_PAYLOAD_LEN: u32 = 8 + 8 + 1 + 4 + 2 * 3;
pub(crate) const MAX_PAYLOAD_LEN: u32 =
    MIN_PAYLOAD_LEN + 3 * MAX_FIELD_LEN as u32 + ORIGIN_BLOCK_LEN as u32;
/// The optional origin block after the device: a tag byte, then the
/// origin node, its log's identity and the event's seq there.
const ORIGIN_BLOCK_LEN: usize = 1 + 8 * 3;
/// Tag of the origin block (the only block defined after the device).
const ORIGIN_TAG: u8 = 1;

const NAME_PREFIX: &str = "events-";
const NAME_SUFFIX: &str = ".log";
const NAME_DIGITS: usize = 20;

/// File name of the segment whose first record has `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!(
        "{NAME_PREFIX}{first_seq:0width$}{NAME_SUFFIX}",
        width = NAME_DIGITS
    )
}

/// The first seq encoded in a segment file name, or `None` if `name` is not
/// a segment name (exactly 20 digits, so lexical and numeric order agree).
pub(crate) fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_prefix(NAME_PREFIX)?.strip_suffix(NAME_SUFFIX)?;
    if digits.len() != NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Segments of the log in `dir`, ordered by first seq. A missing directory
/// is an I/O error; a directory without segments gives an empty list.
pub(crate) fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, EventLogError> {
    let entries = fs::read_dir(dir).map_err(|e| EventLogError::io(dir, e))?;
    let mut out = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| EventLogError::io(dir, e))?;
        let name = entry.file_name();
        let Some(seq) = name.to_str().and_then(parse_segment_name) else {
            continue;
        };
        let is_file = entry
            .file_type()
            .map_err(|e| EventLogError::io(entry.path(), e))?
            .is_file();
        if is_file {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// Paths of the segment files in `dir`, in log order (for callers that
/// detect or fingerprint a log without reading it).
pub fn segment_files(dir: &Path) -> Result<Vec<PathBuf>, EventLogError> {
    Ok(list_segments(dir)?.into_iter().map(|(_, p)| p).collect())
}

/// Checks that an event can be stored; `index` is its position in the batch.
pub(crate) fn validate_event(index: usize, e: &LogEvent) -> Result<(), EventLogError> {
    let invalid = |field, reason: String| EventLogError::InvalidEvent {
        index,
        field,
        reason,
    };
    for (field, value) in [("user id", &e.user_id), ("item id", &e.item_id)] {
        // validate_id's own limit is far below the format's, but keep the
        // format limit explicit so a change to MAX_ID_LEN cannot break it.
        if value.len() > MAX_FIELD_LEN {
            return Err(invalid(
                field,
                format!(
                    "{} bytes long; the log holds at most {MAX_FIELD_LEN}",
                    value.len()
                ),
            ));
        }
        validate_id(value).map_err(|err| invalid(field, format!("{value:?}: {err}")))?;
    }
    if !e.device.is_empty() {
        validate_id(&e.device)
            .map_err(|err| invalid("device", format!("{:?}: {err}", e.device)))?;
    }
    if !e.weight.is_finite() {
        return Err(invalid(
            "weight",
            format!("{} is not a finite number", e.weight),
        ));
    }
    Ok(())
}

/// Appends the framed record of `e` (which must have passed
/// `validate_event`) to `out`.
pub(crate) fn encode_record(e: &LogEvent, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; RECORD_HEADER_LEN as usize]);
    out.extend_from_slice(&e.seq.to_le_bytes());
    out.extend_from_slice(&e.ts.to_le_bytes());
    out.push(e.kind as u8);
    out.extend_from_slice(&e.weight.to_le_bytes());
    for s in [&e.user_id, &e.item_id, &e.device] {
        let len = u16::try_from(s.len()).expect("validate_event bounds every string by u16");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(s.as_bytes());
    }
    if let Some(o) = &e.origin {
        out.push(ORIGIN_TAG);
        for v in [o.node, o.log, o.seq] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    let payload_start = start + RECORD_HEADER_LEN as usize;
    let payload_len = u32::try_from(out.len() - payload_start)
        .expect("three u16-bounded strings plus fixed fields fit in u32");
    let crc = crc32fast::hash(&out[payload_start..]);
    out[start..start + 4].copy_from_slice(&payload_len.to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why a payload whose CRC matched still is not an event (a writer bug or
/// a newer format); reported as `EventLogError::Corrupt`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    #[error("payload ends inside a field (needs {need} bytes at payload offset {at})")]
    Truncated { need: usize, at: usize },
    #[error("unknown event kind code {0}")]
    UnknownKind(u8),
    #[error("{0} is not valid UTF-8")]
    NotUtf8(&'static str),
    #[error("{0} unexpected bytes after the last field")]
    TrailingBytes(usize),
    #[error("unknown block tag {0} after the device (written by a newer funnel?)")]
    UnknownBlock(u8),
}

/// Decodes a payload whose CRC already matched.
pub(crate) fn decode_payload(p: &[u8]) -> Result<LogEvent, DecodeError> {
    let mut cur = Cursor { buf: p, pos: 0 };
    let seq = u64::from_le_bytes(cur.array()?);
    let ts = i64::from_le_bytes(cur.array()?);
    let [kind_byte] = cur.array::<1>()?;
    let kind = EventKind::from_u8(kind_byte).ok_or(DecodeError::UnknownKind(kind_byte))?;
    let weight = f32::from_le_bytes(cur.array()?);
    let user_id = cur.string("user id")?;
    let item_id = cur.string("item id")?;
    let device = cur.string("device")?;
    let origin = match p.len() - cur.pos {
        0 => None,
        rest if rest == ORIGIN_BLOCK_LEN => {
            let [tag] = cur.array::<1>()?;
            if tag != ORIGIN_TAG {
                return Err(DecodeError::UnknownBlock(tag));
            }
            Some(EventOrigin {
                node: u64::from_le_bytes(cur.array()?),
                log: u64::from_le_bytes(cur.array()?),
                seq: u64::from_le_bytes(cur.array()?),
            })
        }
        rest => return Err(DecodeError::TrailingBytes(rest)),
    };
    Ok(LogEvent {
        seq,
        ts,
        user_id,
        item_id,
        kind,
        weight,
        device,
        origin,
    })
}

struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn take(&mut self, n: usize) -> Result<&[u8], DecodeError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.buf.len());
        let Some(end) = end else {
            return Err(DecodeError::Truncated {
                need: n,
                at: self.pos,
            });
        };
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }

    fn string(&mut self, what: &'static str) -> Result<String, DecodeError> {
        let len = u16::from_le_bytes(self.array()?) as usize;
        let bytes = self.take(len)?;
        String::from_utf8(bytes.to_vec()).map_err(|_| DecodeError::NotUtf8(what))
    }
}

/// One step of scanning a segment.
#[derive(Debug)]
pub(crate) enum ScanStep {
    /// A complete, valid record; `end` is the byte offset just past it.
    Record { event: LogEvent, end: u64 },
    /// The segment ends cleanly at a record boundary.
    End,
    /// Bytes from `offset` to the end of the file are not a complete valid
    /// record, in the way a crash leaves a file. Whether that is acceptable
    /// depends on whether this is the last segment; the caller decides.
    Torn {
        offset: u64,
        reason: String,
        /// Whether the dropped bytes held (part of) a record rather than
        /// only zero fill or a partial segment header.
        had_record: bool,
    },
}

/// Reads records of one segment in order, from a snapshot length `len`
/// (bytes appended later by a live writer are not looked at).
pub(crate) struct SegmentScanner<R: Read> {
    reader: R,
    path: PathBuf,
    len: u64,
    offset: u64,
    finished: bool,
    payload: Vec<u8>,
}

impl<R: Read> SegmentScanner<R> {
    /// `reader` must be positioned at the start of the segment.
    pub(crate) fn new(reader: R, path: PathBuf, len: u64) -> Self {
        SegmentScanner {
            reader,
            path,
            len,
            offset: 0,
            finished: false,
            payload: Vec::new(),
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    fn corrupt(&self, offset: u64, reason: impl Into<String>) -> EventLogError {
        EventLogError::Corrupt {
            file: self.path.clone(),
            offset,
            reason: reason.into(),
        }
    }

    fn read_exact(&mut self, n: usize) -> Result<(), EventLogError> {
        self.payload.resize(n, 0);
        match self.reader.read_exact(&mut self.payload) {
            Ok(()) => {
                self.offset += n as u64;
                Ok(())
            }
            // The snapshot length said the bytes were there: the file shrank
            // under us, which is an I/O-level surprise, not a torn record.
            Err(e) => Err(EventLogError::io(&self.path, e)),
        }
    }

    /// Whether every byte from the current position to `len` is zero.
    fn rest_is_zero(&mut self) -> Result<bool, EventLogError> {
        let mut buf = [0u8; 8192];
        let mut remaining = self.len.saturating_sub(self.offset);
        while remaining > 0 {
            let n = (remaining.min(buf.len() as u64)) as usize;
            self.reader
                .read_exact(&mut buf[..n])
                .map_err(|e| EventLogError::io(&self.path, e))?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(false);
            }
            remaining -= n as u64;
            self.offset += n as u64;
        }
        Ok(true)
    }

    fn torn(&mut self, offset: u64, reason: String, had_record: bool) -> ScanStep {
        self.finished = true;
        ScanStep::Torn {
            offset,
            reason,
            had_record,
        }
    }

    pub(crate) fn next_step(&mut self) -> Result<ScanStep, EventLogError> {
        if self.finished {
            return Ok(ScanStep::End);
        }
        if self.offset == 0 {
            if let Some(step) = self.check_magic()? {
                return Ok(step);
            }
        }
        let start = self.offset;
        let remaining = self.len - start;
        if remaining == 0 {
            self.finished = true;
            return Ok(ScanStep::End);
        }
        if remaining < RECORD_HEADER_LEN {
            let zero = self.rest_is_zero()?;
            let reason = format!("{remaining} bytes of an incomplete record header");
            return Ok(self.torn(start, reason, !zero));
        }
        self.read_exact(RECORD_HEADER_LEN as usize)?;
        let len = u32::from_le_bytes(self.payload[0..4].try_into().expect("4-byte slice"));
        let crc = u32::from_le_bytes(self.payload[4..8].try_into().expect("4-byte slice"));
        let end = start + RECORD_HEADER_LEN + len as u64;
        if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&len) {
            // A zero-filled tail reads as len 0; anything else is damage.
            if len == 0 && crc == 0 && self.rest_is_zero()? {
                return Ok(self.torn(start, "zero bytes after the last record".into(), false));
            }
            return Err(self.corrupt(
                start,
                format!(
                    "impossible record length {len} (valid: {MIN_PAYLOAD_LEN}..={MAX_PAYLOAD_LEN})"
                ),
            ));
        }
        if end > self.len {
            // Either the write was cut short, or the length field itself is
            // damaged. A damaged length with intact records behind it must
            // not be mistaken for a torn tail, so look for one.
            let rest_len = (self.len - self.offset) as usize;
            self.read_exact(rest_len)?;
            if let Some(at) = find_valid_record(&self.payload) {
                let at = start + RECORD_HEADER_LEN + at as u64;
                return Err(self.corrupt(
                    start,
                    format!(
                        "record length {len} runs past the end of the file, yet a valid \
                         record follows at byte {at}"
                    ),
                ));
            }
            let reason = format!(
                "record of {len} bytes is cut off by the end of the file after {rest_len} bytes"
            );
            return Ok(self.torn(start, reason, true));
        }
        self.read_exact(len as usize)?;
        let actual = crc32fast::hash(&self.payload);
        if actual != crc {
            let reason = format!("CRC mismatch (stored {crc:#010x}, computed {actual:#010x})");
            if end == self.len || self.rest_is_zero()? {
                return Ok(self.torn(start, reason, true));
            }
            return Err(self.corrupt(start, reason));
        }
        let event =
            decode_payload(&self.payload).map_err(|r| self.corrupt(start, r.to_string()))?;
        Ok(ScanStep::Record { event, end })
    }

    /// Checks the segment header; returns a step when the segment is too
    /// short to hold one.
    fn check_magic(&mut self) -> Result<Option<ScanStep>, EventLogError> {
        let have = self.len.min(MAGIC.len() as u64) as usize;
        self.read_exact(have)?;
        let head = self.payload.clone();
        let is_prefix_of_magic = head[..] == MAGIC[..have];
        let all_zero = head.iter().all(|&b| b == 0);
        if have < MAGIC.len() {
            if is_prefix_of_magic || all_zero {
                let reason = format!("{have} bytes of an incomplete segment header");
                return Ok(Some(self.torn(0, reason, false)));
            }
            return Err(self.corrupt(0, "not an event-log segment (bad magic)"));
        }
        if head[..] != MAGIC[..] {
            if all_zero && self.rest_is_zero()? {
                let reason = "segment is all zero bytes".to_string();
                return Ok(Some(self.torn(0, reason, false)));
            }
            return Err(self.corrupt(
                0,
                format!(
                    "not an event-log segment: starts with {:?}, expected {:?}",
                    String::from_utf8_lossy(&head),
                    String::from_utf8_lossy(MAGIC)
                ),
            ));
        }
        Ok(None)
    }
}

/// Offset in `bytes` of the first position holding a complete record with a
/// matching CRC and a decodable payload, if any.
fn find_valid_record(bytes: &[u8]) -> Option<usize> {
    let header = RECORD_HEADER_LEN as usize;
    (0..bytes.len().saturating_sub(header)).find(|&at| {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4-byte slice"));
        let crc = u32::from_le_bytes(bytes[at + 4..at + 8].try_into().expect("4-byte slice"));
        if !(MIN_PAYLOAD_LEN..=MAX_PAYLOAD_LEN).contains(&len) {
            return false;
        }
        let Some(payload) = bytes.get(at + header..at + header + len as usize) else {
            return false;
        };
        crc32fast::hash(payload) == crc && decode_payload(payload).is_ok()
    })
}

/// Checks that seqs run without gaps: the first record of a segment carries
/// the seq in its name, each next record one more.
#[derive(Debug, Clone, Copy)]
pub(crate) struct SeqCheck {
    pub(crate) expected: u64,
}

impl SeqCheck {
    /// Expects the first record of the segment at `file` to carry `first_seq`
    /// (from its name); seqs start at 1, so a name with seq 0 is refused.
    pub(crate) fn starting(file: &Path, first_seq: u64) -> Result<SeqCheck, EventLogError> {
        if first_seq == 0 {
            return Err(EventLogError::Corrupt {
                file: file.to_path_buf(),
                offset: 0,
                reason: "segment name carries seq 0, but seqs start at 1".into(),
            });
        }
        Ok(SeqCheck {
            expected: first_seq,
        })
    }

    pub(crate) fn check(
        &mut self,
        file: &Path,
        offset: u64,
        seq: u64,
    ) -> Result<(), EventLogError> {
        if seq != self.expected {
            return Err(EventLogError::Corrupt {
                file: file.to_path_buf(),
                offset,
                reason: format!("record has seq {seq}, expected {}", self.expected),
            });
        }
        self.expected = seq.checked_add(1).ok_or_else(|| EventLogError::Corrupt {
            file: file.to_path_buf(),
            offset,
            reason: "seq space exhausted".into(),
        })?;
        Ok(())
    }
}

/// Opens `path` for scanning from a snapshot of its current length.
pub(crate) fn open_scanner(
    path: &Path,
) -> Result<SegmentScanner<io::BufReader<io::Take<fs::File>>>, EventLogError> {
    let file = fs::File::open(path).map_err(|e| EventLogError::io(path, e))?;
    let len = file
        .metadata()
        .map_err(|e| EventLogError::io(path, e))?
        .len();
    Ok(SegmentScanner::new(
        io::BufReader::with_capacity(64 * 1024, file.take(len)),
        path.to_path_buf(),
        len,
    ))
}

pub(crate) fn io_err(path: &Path) -> impl FnOnce(io::Error) -> EventLogError + '_ {
    move |e| EventLogError::io(path, e)
}
