//! CSV/TSV tables: header row, quoted fields (csv crate), UTF-8 required.
//! Hashes the bytes as they are read, so a large file is read only once.

use super::error::{IngestError, RowFault};
use super::table::{Cell, Row, RowVisitor};
use std::fs::File;
use std::io::{self, Read};
use std::path::{Path, PathBuf};

/// Passes reads through while feeding every byte to a blake3 hasher.
pub(crate) struct HashingReader<R> {
    inner: R,
    hasher: blake3::Hasher,
}

impl<R: Read> HashingReader<R> {
    pub(crate) fn new(inner: R) -> Self {
        HashingReader {
            inner,
            hasher: blake3::Hasher::new(),
        }
    }

    /// Reads whatever is left and returns the digest of all bytes.
    pub(crate) fn finish(mut self) -> io::Result<blake3::Hash> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(self.hasher.finalize())
    }
}

impl<R: Read> Read for HashingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

pub(crate) struct DelimitedTable {
    path: PathBuf,
    reader: csv::Reader<HashingReader<File>>,
    columns: Vec<String>,
}

/// A record whose fields were all checked to be UTF-8.
struct TextRow<'a> {
    record: &'a csv::ByteRecord,
}

impl Row for TextRow<'_> {
    fn cell(&self, column: usize) -> Cell<'_> {
        match self.record.get(column).map(std::str::from_utf8) {
            Some(Ok(s)) => Cell::Text(s),
            // Unreachable after the UTF-8 check in `for_each_row`.
            Some(Err(_)) => Cell::Unsupported,
            None => Cell::Null,
        }
    }
}

impl DelimitedTable {
    /// Opens `path` and reads its header row.
    pub(crate) fn open(path: &Path, delimiter: u8) -> Result<Self, IngestError> {
        let file = File::open(path).map_err(|e| IngestError::io(path, e))?;
        let mut reader = csv::ReaderBuilder::new()
            .delimiter(delimiter)
            .has_headers(true)
            // Field counts are checked per row so that a short row is a
            // tolerable bad row with its line number, not a fatal error.
            .flexible(true)
            .from_reader(HashingReader::new(file));
        let header = reader
            .byte_headers()
            .map_err(|e| csv_error(path, e))?
            .clone();
        if header.is_empty() || (header.len() == 1 && header[0].is_empty()) {
            return Err(IngestError::Empty {
                file: path.to_path_buf(),
            });
        }
        let mut columns = Vec::with_capacity(header.len());
        for (i, raw) in header.iter().enumerate() {
            let raw = if i == 0 {
                raw.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(raw)
            } else {
                raw
            };
            let name = std::str::from_utf8(raw).map_err(|_| IngestError::NotUtf8 {
                file: path.to_path_buf(),
                line: 1,
            })?;
            columns.push(name.trim().to_string());
        }
        Ok(DelimitedTable {
            path: path.to_path_buf(),
            reader,
            columns,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn for_each_row(
        mut self,
        each: &mut RowVisitor<'_>,
    ) -> Result<blake3::Hash, IngestError> {
        let expected = self.columns.len();
        let mut record = csv::ByteRecord::new();
        loop {
            let more = self
                .reader
                .read_byte_record(&mut record)
                .map_err(|e| csv_error(&self.path, e))?;
            if !more {
                break;
            }
            let line = record.position().map_or(0, |p| p.line());
            if record.len() != expected {
                let fault = RowFault::FieldCount {
                    expected,
                    found: record.len(),
                };
                each(line, Err(fault))?;
                continue;
            }
            if record.iter().any(|raw| std::str::from_utf8(raw).is_err()) {
                return Err(IngestError::NotUtf8 {
                    file: self.path.clone(),
                    line,
                });
            }
            each(line, Ok(&TextRow { record: &record }))?;
        }
        self.reader
            .into_inner()
            .finish()
            .map_err(|e| IngestError::io(&self.path, e))
    }
}

fn csv_error(path: &Path, e: csv::Error) -> IngestError {
    let line = e.position().map_or(0, |p| p.line());
    match e.into_kind() {
        csv::ErrorKind::Io(io) => IngestError::io(path, io),
        csv::ErrorKind::Utf8 { .. } => IngestError::NotUtf8 {
            file: path.to_path_buf(),
            line,
        },
        other => IngestError::BadRow {
            file: path.to_path_buf(),
            line,
            fault: RowFault::Other(format!("{other:?}")),
        },
    }
}
