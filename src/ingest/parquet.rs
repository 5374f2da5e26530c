//! Parquet tables through the `parquet` crate's arrow reader. Only the
//! columns named by the flags are decoded. Ids may be string or integer
//! columns; times may be integers (in `--time-unit`), Timestamp or Date
//! columns, or strings; dictionary-encoded strings are accepted.

use super::error::IngestError;
use super::table::{Cell, Role, Row, RowVisitor};
use arrow_array::cast::AsArray;
use arrow_array::types::{
    Date32Type, Date64Type, Float32Type, Float64Type, Int16Type, Int32Type, Int64Type, Int8Type,
    TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt16Type, UInt32Type, UInt64Type, UInt8Type,
};
use arrow_array::{Array, ArrayRef};
use arrow_schema::{DataType, TimeUnit as ArrowTimeUnit};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::arrow::ProjectionMask;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

pub(crate) struct ParquetTable {
    path: PathBuf,
    builder: ParquetRecordBatchReaderBuilder<File>,
    columns: Vec<String>,
    types: Vec<DataType>,
}

/// The broad kind of values an arrow type holds, as far as roles care.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ValueKind {
    Text,
    Integer,
    Float,
    Time,
}

fn value_kind(dt: &DataType) -> Option<ValueKind> {
    match dt {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => Some(ValueKind::Text),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32
        | DataType::UInt64 => Some(ValueKind::Integer),
        DataType::Float32 | DataType::Float64 => Some(ValueKind::Float),
        DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => Some(ValueKind::Time),
        DataType::Dictionary(_, values) => value_kind(values),
        _ => None,
    }
}

fn role_accepts(role: Role, kind: ValueKind) -> bool {
    use ValueKind::*;
    match role {
        Role::Id => matches!(kind, Text | Integer),
        Role::Time => true,
        Role::Number => matches!(kind, Text | Integer | Float),
        Role::Text => matches!(kind, Text | Integer),
    }
}

fn parquet_error(path: &Path, e: impl std::fmt::Display) -> IngestError {
    IngestError::Parquet {
        file: path.to_path_buf(),
        message: e.to_string(),
    }
}

impl ParquetTable {
    pub(crate) fn open(path: &Path) -> Result<Self, IngestError> {
        let file = File::open(path).map_err(|e| IngestError::io(path, e))?;
        let builder =
            ParquetRecordBatchReaderBuilder::try_new(file).map_err(|e| parquet_error(path, e))?;
        let schema = builder.schema().clone();
        let columns = schema.fields().iter().map(|f| f.name().clone()).collect();
        let types = schema
            .fields()
            .iter()
            .map(|f| f.data_type().clone())
            .collect();
        Ok(ParquetTable {
            path: path.to_path_buf(),
            builder,
            columns,
            types,
        })
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    pub(crate) fn columns(&self) -> &[String] {
        &self.columns
    }

    pub(crate) fn check_role(&self, index: usize, role: Role) -> Result<(), IngestError> {
        let dt = &self.types[index];
        match value_kind(dt) {
            Some(kind) if role_accepts(role, kind) => Ok(()),
            _ => Err(IngestError::UnsupportedColumnType {
                file: self.path.clone(),
                column: self.columns[index].clone(),
                role: role.describe(),
                found: dt.to_string(),
                expected: role.expected(),
            }),
        }
    }

    pub(crate) fn for_each_row(
        self,
        needed: &[usize],
        each: &mut RowVisitor<'_>,
    ) -> Result<blake3::Hash, IngestError> {
        let path = self.path;
        // Root columns of a parquet schema map one-to-one, in order, to the
        // top-level arrow fields the column indices refer to.
        let mask = ProjectionMask::roots(self.builder.parquet_schema(), needed.iter().copied());
        let reader = self
            .builder
            .with_projection(mask)
            .build()
            .map_err(|e| parquet_error(&path, e))?;
        let mut line = 0u64;
        for batch in reader {
            let batch = batch.map_err(|e| parquet_error(&path, e))?;
            let mut arrays: Vec<Option<ArrayRef>> = vec![None; self.columns.len()];
            for &i in needed {
                let array = batch.column_by_name(&self.columns[i]).ok_or_else(|| {
                    parquet_error(
                        &path,
                        format!(
                            "column {:?} is missing from a record batch",
                            self.columns[i]
                        ),
                    )
                })?;
                arrays[i] = Some(array.clone());
            }
            for row in 0..batch.num_rows() {
                line += 1;
                each(
                    line,
                    Ok(&BatchRow {
                        arrays: &arrays,
                        row,
                    }),
                )?;
            }
        }
        hash_file(&path)
    }
}

/// blake3 of a file's bytes, streamed.
pub(crate) fn hash_file(path: &Path) -> Result<blake3::Hash, IngestError> {
    let mut file = File::open(path).map_err(|e| IngestError::io(path, e))?;
    let mut hasher = blake3::Hasher::new();
    io::copy(&mut file, &mut hasher).map_err(|e| IngestError::io(path, e))?;
    Ok(hasher.finalize())
}

struct BatchRow<'a> {
    arrays: &'a [Option<ArrayRef>],
    row: usize,
}

impl Row for BatchRow<'_> {
    fn cell(&self, column: usize) -> Cell<'_> {
        match self.arrays.get(column) {
            Some(Some(array)) => cell_at(array.as_ref(), self.row),
            _ => Cell::Null,
        }
    }
}

fn integer_at(array: &dyn Array, i: usize) -> Option<i128> {
    macro_rules! try_int {
        ($($t:ty),*) => {$(
            if let Some(a) = array.as_primitive_opt::<$t>() {
                return Some(a.value(i) as i128);
            }
        )*};
    }
    try_int!(
        Int8Type, Int16Type, Int32Type, Int64Type, UInt8Type, UInt16Type, UInt32Type, UInt64Type
    );
    None
}

fn seconds_from(v: i64, per_second: i64) -> i64 {
    v.div_euclid(per_second)
}

/// The value at row `i`, converted to a `Cell`. Types were checked against
/// the column's role up front; anything else reads as `Unsupported`.
fn cell_at(array: &dyn Array, i: usize) -> Cell<'_> {
    if i >= array.len() || array.is_null(i) {
        return Cell::Null;
    }
    match array.data_type() {
        DataType::Utf8 => array
            .as_string_opt::<i32>()
            .map_or(Cell::Unsupported, |a| Cell::Text(a.value(i))),
        DataType::LargeUtf8 => array
            .as_string_opt::<i64>()
            .map_or(Cell::Unsupported, |a| Cell::Text(a.value(i))),
        DataType::Utf8View => array
            .as_string_view_opt()
            .map_or(Cell::Unsupported, |a| Cell::Text(a.value(i))),
        DataType::UInt64 => array
            .as_primitive_opt::<UInt64Type>()
            .map_or(Cell::Unsupported, |a| Cell::UInt(a.value(i))),
        DataType::Int8
        | DataType::Int16
        | DataType::Int32
        | DataType::Int64
        | DataType::UInt8
        | DataType::UInt16
        | DataType::UInt32 => integer_at(array, i)
            .and_then(|v| i64::try_from(v).ok())
            .map_or(Cell::Unsupported, Cell::Int),
        DataType::Float32 => array
            .as_primitive_opt::<Float32Type>()
            .map_or(Cell::Unsupported, |a| Cell::Float(f64::from(a.value(i)))),
        DataType::Float64 => array
            .as_primitive_opt::<Float64Type>()
            .map_or(Cell::Unsupported, |a| Cell::Float(a.value(i))),
        DataType::Timestamp(unit, _) => {
            let (v, per_second) = match unit {
                ArrowTimeUnit::Second => (
                    array
                        .as_primitive_opt::<TimestampSecondType>()
                        .map(|a| a.value(i)),
                    1,
                ),
                ArrowTimeUnit::Millisecond => (
                    array
                        .as_primitive_opt::<TimestampMillisecondType>()
                        .map(|a| a.value(i)),
                    1_000,
                ),
                ArrowTimeUnit::Microsecond => (
                    array
                        .as_primitive_opt::<TimestampMicrosecondType>()
                        .map(|a| a.value(i)),
                    1_000_000,
                ),
                ArrowTimeUnit::Nanosecond => (
                    array
                        .as_primitive_opt::<TimestampNanosecondType>()
                        .map(|a| a.value(i)),
                    1_000_000_000,
                ),
            };
            v.map_or(Cell::Unsupported, |v| {
                Cell::Seconds(seconds_from(v, per_second))
            })
        }
        DataType::Date32 => array
            .as_primitive_opt::<Date32Type>()
            .map_or(Cell::Unsupported, |a| {
                Cell::Seconds(i64::from(a.value(i)) * 86_400)
            }),
        DataType::Date64 => array
            .as_primitive_opt::<Date64Type>()
            .map_or(Cell::Unsupported, |a| {
                Cell::Seconds(seconds_from(a.value(i), 1_000))
            }),
        DataType::Dictionary(_, _) => {
            let Some(dict) = array.as_any_dictionary_opt() else {
                return Cell::Unsupported;
            };
            let key = integer_at(dict.keys(), i).and_then(|k| usize::try_from(k).ok());
            match key {
                Some(k) => cell_at(dict.values().as_ref(), k),
                None => Cell::Unsupported,
            }
        }
        _ => Cell::Unsupported,
    }
}
