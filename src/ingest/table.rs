//! Tables with a header (CSV/TSV/Parquet): cells, column lookup by the
//! names in the flags, and turning one row into a parsed interaction or
//! attribute record. Format-specific reading lives in `delimited` and
//! `parquet`; interning into the dataset lives in `builder`.

use super::args::{self, DataArgs, TimeUnit};
use super::delimited::DelimitedTable;
use super::error::{IngestError, RowFault};
use super::parquet::ParquetTable;
use super::time::{float_to_seconds, int_to_seconds, parse_time_text};
use crate::dataset::{EventKind, Gender};
use crate::ids::validate_id;
use std::borrow::Cow;
use std::collections::HashSet;
use std::path::Path;

/// One value of a row, borrowed from the source where possible.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Cell<'a> {
    Null,
    Text(&'a str),
    Int(i64),
    UInt(u64),
    Float(f64),
    /// A typed timestamp or date, already converted to Unix seconds.
    Seconds(i64),
    /// A value of a type no column role accepts (rejected up front for
    /// Parquet schemas, so only reachable through unusual nesting).
    Unsupported,
}

/// Called with each data row's location (see `IngestError`) and either the
/// row or the reason the format already found it malformed.
pub(crate) type RowVisitor<'a> =
    dyn FnMut(u64, Result<&dyn Row, RowFault>) -> Result<(), IngestError> + 'a;

/// Random access to the cells of the current row, by header column index.
pub(crate) trait Row {
    fn cell(&self, column: usize) -> Cell<'_>;
}

/// What a column is used for, which decides the value types it accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Id,
    Time,
    Number,
    Text,
}

impl Role {
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Role::Id => "an id",
            Role::Time => "a time",
            Role::Number => "a number",
            Role::Text => "text",
        }
    }

    pub(crate) fn expected(self) -> &'static str {
        match self {
            Role::Id => "a string or integer column",
            Role::Time => "an integer, timestamp, date or RFC 3339 string column",
            Role::Number => "an integer, float or numeric string column",
            Role::Text => "a string column",
        }
    }
}

/// An opened input table whose header has been read.
pub(crate) enum Table {
    // Boxed: both readers carry large buffers or metadata.
    Delimited(Box<DelimitedTable>),
    Parquet(Box<ParquetTable>),
}

impl Table {
    /// Opens `path` as Parquet when `delimiter` is `None`, else as text.
    pub(crate) fn open(path: &Path, delimiter: Option<u8>) -> Result<Table, IngestError> {
        Ok(match delimiter {
            Some(d) => Table::Delimited(Box::new(DelimitedTable::open(path, d)?)),
            None => Table::Parquet(Box::new(ParquetTable::open(path)?)),
        })
    }

    pub(crate) fn path(&self) -> &Path {
        match self {
            Table::Delimited(t) => t.path(),
            Table::Parquet(t) => t.path(),
        }
    }

    pub(crate) fn columns(&self) -> &[String] {
        match self {
            Table::Delimited(t) => t.columns(),
            Table::Parquet(t) => t.columns(),
        }
    }

    /// Whether column `index` can serve `role` (text cells always can; a
    /// typed Parquet column must have a fitting type).
    fn check_role(&self, index: usize, role: Role) -> Result<(), IngestError> {
        match self {
            Table::Delimited(_) => Ok(()),
            Table::Parquet(t) => t.check_role(index, role),
        }
    }

    /// Calls `each(line, row)` for every data row, with a `RowFault` for
    /// rows the format itself finds malformed. Returns the blake3 digest of
    /// the file's bytes.
    pub(crate) fn for_each_row(
        self,
        needed: &[usize],
        each: &mut RowVisitor<'_>,
    ) -> Result<blake3::Hash, IngestError> {
        match self {
            Table::Delimited(t) => t.for_each_row(each),
            Table::Parquet(t) => t.for_each_row(needed, each),
        }
    }
}

/// Refuses a header that names a column twice (lookup by name would be
/// ambiguous).
pub(crate) fn check_unique_columns(file: &Path, columns: &[String]) -> Result<(), IngestError> {
    let mut seen = HashSet::new();
    for c in columns {
        if !seen.insert(c.as_str()) {
            return Err(IngestError::DuplicateColumn {
                file: file.to_path_buf(),
                column: c.clone(),
            });
        }
    }
    Ok(())
}

/// Looks up a column named by a flag. `explicit` is what the user passed;
/// without it `default` is used and, unless `required`, may be absent.
fn find_column(
    table: &Table,
    flag: &'static str,
    explicit: Option<&str>,
    default: &str,
    required: bool,
    role: Role,
) -> Result<Option<usize>, IngestError> {
    let name = explicit.unwrap_or(default);
    let Some(index) = table.columns().iter().position(|c| c == name) else {
        if explicit.is_none() && !required {
            return Ok(None);
        }
        return Err(IngestError::UnknownColumn {
            file: table.path().to_path_buf(),
            column: name.to_string(),
            flag,
            available: table.columns().to_vec(),
        });
    };
    table.check_role(index, role)?;
    Ok(Some(index))
}

fn required_column(
    table: &Table,
    flag: &'static str,
    explicit: Option<&str>,
    default: &str,
    role: Role,
) -> Result<usize, IngestError> {
    let found = find_column(table, flag, explicit, default, true, role)?;
    Ok(found.expect("a required column is either found or an error"))
}

/// Optional column that has no default name: used only when named.
fn named_column(
    table: &Table,
    flag: &'static str,
    explicit: Option<&str>,
    role: Role,
) -> Result<Option<usize>, IngestError> {
    match explicit {
        Some(name) => find_column(table, flag, Some(name), name, true, role),
        None => Ok(None),
    }
}

fn column_name(columns: &[String], index: usize) -> &str {
    columns.get(index).map_or("", String::as_str)
}

// ---- cell interpretation -------------------------------------------------

fn display_cell(cell: Cell<'_>) -> String {
    match cell {
        Cell::Null => String::new(),
        Cell::Text(s) => s.to_string(),
        Cell::Int(v) | Cell::Seconds(v) => v.to_string(),
        Cell::UInt(v) => v.to_string(),
        Cell::Float(v) => v.to_string(),
        Cell::Unsupported => "<unsupported>".into(),
    }
}

fn wrong_type(column: &str, cell: Cell<'_>, role: Role) -> RowFault {
    let found = match cell {
        Cell::Float(_) => "floating-point",
        Cell::Seconds(_) => "timestamp",
        _ => "unsupported",
    };
    RowFault::WrongType {
        column: column.to_string(),
        found: found.into(),
        expected: role.expected(),
    }
}

pub(crate) fn cell_id<'r>(cell: Cell<'r>, column: &str) -> Result<Cow<'r, str>, RowFault> {
    let id: Cow<'r, str> = match cell {
        Cell::Null => Cow::Borrowed(""),
        Cell::Text(s) => Cow::Borrowed(s.trim()),
        Cell::Int(v) => Cow::Owned(v.to_string()),
        Cell::UInt(v) => Cow::Owned(v.to_string()),
        other => return Err(wrong_type(column, other, Role::Id)),
    };
    validate_id(&id).map_err(|source| RowFault::InvalidId {
        column: column.to_string(),
        value: id.to_string(),
        source,
    })?;
    Ok(id)
}

/// A finite number that fits an f32, or `None` for an empty cell.
pub(crate) fn cell_f32(cell: Cell<'_>, column: &str) -> Result<Option<f32>, RowFault> {
    let v = match cell {
        Cell::Null => return Ok(None),
        Cell::Text(s) if s.trim().is_empty() => return Ok(None),
        Cell::Text(s) => s.trim().parse::<f64>().map_err(|_| RowFault::BadNumber {
            column: column.to_string(),
            value: s.to_string(),
        })?,
        Cell::Int(v) => v as f64,
        Cell::UInt(v) => v as f64,
        Cell::Float(v) => v,
        other => return Err(wrong_type(column, other, Role::Number)),
    };
    let narrowed = v as f32;
    if !narrowed.is_finite() {
        return Err(RowFault::NonFinite {
            column: column.to_string(),
            value: display_cell(cell),
        });
    }
    Ok(Some(narrowed))
}

/// Unix seconds, or `None` for an empty cell.
pub(crate) fn cell_time(
    cell: Cell<'_>,
    column: &str,
    unit: TimeUnit,
) -> Result<Option<i64>, RowFault> {
    let bad = || RowFault::BadTimestamp {
        column: column.to_string(),
        value: display_cell(cell),
    };
    match cell {
        Cell::Null => Ok(None),
        Cell::Text(s) if s.trim().is_empty() => Ok(None),
        Cell::Text(s) => parse_time_text(s, unit).map(Some).ok_or_else(bad),
        Cell::Int(v) => Ok(Some(int_to_seconds(v, unit))),
        Cell::UInt(v) => i64::try_from(v)
            .map(|v| Some(int_to_seconds(v, unit)))
            .map_err(|_| bad()),
        Cell::Float(v) => float_to_seconds(v, unit).map(Some).ok_or_else(bad),
        Cell::Seconds(v) => Ok(Some(v)),
        Cell::Unsupported => Err(wrong_type(column, cell, Role::Time)),
    }
}

/// Trimmed text, or `None` when empty.
pub(crate) fn cell_text<'r>(
    cell: Cell<'r>,
    column: &str,
) -> Result<Option<Cow<'r, str>>, RowFault> {
    Ok(match cell {
        Cell::Null => None,
        Cell::Text(s) => Some(s.trim()).filter(|s| !s.is_empty()).map(Cow::Borrowed),
        Cell::Int(v) => Some(Cow::Owned(v.to_string())),
        Cell::UInt(v) => Some(Cow::Owned(v.to_string())),
        other => return Err(wrong_type(column, other, Role::Text)),
    })
}

// ---- interactions ---------------------------------------------------------

/// Where the interaction fields are in a table.
pub(crate) struct InteractionColumns {
    names: Vec<String>,
    user: usize,
    item: usize,
    time: usize,
    rating: Option<usize>,
    weight: Option<usize>,
    kind: Option<usize>,
    unit: TimeUnit,
}

/// One interaction row, ids still as text.
#[derive(Debug, PartialEq)]
pub(crate) struct ParsedInteraction<'r> {
    pub user: Cow<'r, str>,
    pub item: Cow<'r, str>,
    pub ts: i64,
    pub kind: EventKind,
    pub value: f32,
}

impl InteractionColumns {
    pub(crate) fn resolve(table: &Table, a: &DataArgs) -> Result<Self, IngestError> {
        check_unique_columns(table.path(), table.columns())?;
        Ok(InteractionColumns {
            names: table.columns().to_vec(),
            user: required_column(
                table,
                "--user-col",
                a.user_col.as_deref(),
                args::DEFAULT_USER_COL,
                Role::Id,
            )?,
            item: required_column(
                table,
                "--item-col",
                a.item_col.as_deref(),
                args::DEFAULT_ITEM_COL,
                Role::Id,
            )?,
            time: required_column(
                table,
                "--time-col",
                a.time_col.as_deref(),
                args::DEFAULT_TIME_COL,
                Role::Time,
            )?,
            rating: named_column(table, "--rating-col", a.rating_col.as_deref(), Role::Number)?,
            weight: named_column(table, "--weight-col", a.weight_col.as_deref(), Role::Number)?,
            kind: named_column(table, "--kind-col", a.kind_col.as_deref(), Role::Text)?,
            unit: a.time_unit,
        })
    }

    pub(crate) fn needed(&self) -> Vec<usize> {
        let mut v = vec![self.user, self.item, self.time];
        v.extend([self.rating, self.weight, self.kind].into_iter().flatten());
        v
    }

    fn name(&self, index: usize) -> &str {
        column_name(&self.names, index)
    }

    /// A row with a rating is a `rate` event valued at the rating; any other
    /// row takes its kind from the kind column (default view) and its value
    /// from the weight column (default: the kind's default weight).
    pub(crate) fn parse<'r>(&self, row: &'r dyn Row) -> Result<ParsedInteraction<'r>, RowFault> {
        let user = cell_id(row.cell(self.user), self.name(self.user))?;
        let item = cell_id(row.cell(self.item), self.name(self.item))?;
        let ts =
            cell_time(row.cell(self.time), self.name(self.time), self.unit)?.ok_or_else(|| {
                RowFault::Missing {
                    column: self.name(self.time).to_string(),
                }
            })?;
        let rating = match self.rating {
            Some(c) => cell_f32(row.cell(c), self.name(c))?,
            None => None,
        };
        let weight = match self.weight {
            Some(c) => cell_f32(row.cell(c), self.name(c))?,
            None => None,
        };
        let named_kind = match self.kind {
            Some(c) => match cell_text(row.cell(c), self.name(c))? {
                Some(k) => Some(EventKind::parse(&k).map_err(|e| RowFault::UnknownKind {
                    column: self.name(c).to_string(),
                    message: e.to_string(),
                })?),
                None => None,
            },
            None => None,
        };
        let (kind, value) = match (rating, named_kind) {
            (Some(r), _) => (EventKind::Rate, r),
            (None, Some(EventKind::Rate)) => match weight {
                Some(w) => (EventKind::Rate, w),
                None => {
                    return Err(RowFault::Other(
                        "event kind \"rate\" needs a rating; pass --rating-col or fill the \
                         rating"
                            .into(),
                    ))
                }
            },
            (None, kind) => {
                let kind = kind.unwrap_or(EventKind::View);
                (kind, weight.unwrap_or_else(|| kind.default_weight()))
            }
        };
        Ok(ParsedInteraction {
            user,
            item,
            ts,
            kind,
            value,
        })
    }
}

// ---- attribute files -------------------------------------------------------

pub(crate) struct ItemAttrColumns {
    names: Vec<String>,
    id: usize,
    categories: Option<usize>,
    title: Option<usize>,
    created: Option<usize>,
    category_sep: String,
    unit: TimeUnit,
}

#[derive(Debug, PartialEq)]
pub(crate) struct ParsedItemAttrs<'r> {
    pub id: Cow<'r, str>,
    pub title: Option<Cow<'r, str>>,
    /// `None` when the file has no categories column (keep what is known).
    pub categories: Option<Vec<String>>,
    pub created_at: Option<i64>,
}

impl ItemAttrColumns {
    pub(crate) fn resolve(table: &Table, a: &DataArgs) -> Result<Self, IngestError> {
        check_unique_columns(table.path(), table.columns())?;
        let opt = |flag, explicit: &Option<String>, default, role| {
            find_column(table, flag, explicit.as_deref(), default, false, role)
        };
        Ok(ItemAttrColumns {
            names: table.columns().to_vec(),
            id: required_column(
                table,
                "--item-attr-id-col",
                a.item_attr_id_col.as_deref(),
                args::DEFAULT_ITEM_COL,
                Role::Id,
            )?,
            categories: opt(
                "--category-col",
                &a.category_col,
                args::DEFAULT_CATEGORY_COL,
                Role::Text,
            )?,
            title: opt(
                "--title-col",
                &a.title_col,
                args::DEFAULT_TITLE_COL,
                Role::Text,
            )?,
            created: opt(
                "--created-col",
                &a.created_col,
                args::DEFAULT_CREATED_COL,
                Role::Time,
            )?,
            category_sep: a
                .category_sep
                .clone()
                .unwrap_or_else(|| args::DEFAULT_CATEGORY_SEP.to_string()),
            unit: a.time_unit,
        })
    }

    pub(crate) fn needed(&self) -> Vec<usize> {
        let mut v = vec![self.id];
        v.extend(
            [self.categories, self.title, self.created]
                .into_iter()
                .flatten(),
        );
        v
    }

    pub(crate) fn parse<'r>(&self, row: &'r dyn Row) -> Result<ParsedItemAttrs<'r>, RowFault> {
        let name = |i| column_name(&self.names, i);
        let id = cell_id(row.cell(self.id), name(self.id))?;
        let title = match self.title {
            Some(c) => cell_text(row.cell(c), name(c))?,
            None => None,
        };
        let categories = match self.categories {
            Some(c) => Some(match cell_text(row.cell(c), name(c))? {
                Some(text) => text
                    .split(self.category_sep.as_str())
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect(),
                None => Vec::new(),
            }),
            None => None,
        };
        let created_at = match self.created {
            Some(c) => cell_time(row.cell(c), name(c), self.unit)?,
            None => None,
        };
        Ok(ParsedItemAttrs {
            id,
            title,
            categories,
            created_at,
        })
    }
}

pub(crate) struct UserAttrColumns {
    names: Vec<String>,
    id: usize,
    age: Option<usize>,
    gender: Option<usize>,
    occupation: Option<usize>,
}

#[derive(Debug, PartialEq)]
pub(crate) struct ParsedUserAttrs<'r> {
    pub id: Cow<'r, str>,
    pub age: Option<u16>,
    pub gender: Option<Gender>,
    pub occupation: Option<Cow<'r, str>>,
}

impl UserAttrColumns {
    pub(crate) fn resolve(table: &Table, a: &DataArgs) -> Result<Self, IngestError> {
        check_unique_columns(table.path(), table.columns())?;
        let opt = |flag, explicit: &Option<String>, default, role| {
            find_column(table, flag, explicit.as_deref(), default, false, role)
        };
        Ok(UserAttrColumns {
            names: table.columns().to_vec(),
            id: required_column(
                table,
                "--user-attr-id-col",
                a.user_attr_id_col.as_deref(),
                args::DEFAULT_USER_COL,
                Role::Id,
            )?,
            age: opt("--age-col", &a.age_col, args::DEFAULT_AGE_COL, Role::Number)?,
            gender: opt(
                "--gender-col",
                &a.gender_col,
                args::DEFAULT_GENDER_COL,
                Role::Text,
            )?,
            occupation: opt(
                "--occupation-col",
                &a.occupation_col,
                args::DEFAULT_OCCUPATION_COL,
                Role::Text,
            )?,
        })
    }

    pub(crate) fn needed(&self) -> Vec<usize> {
        let mut v = vec![self.id];
        v.extend(
            [self.age, self.gender, self.occupation]
                .into_iter()
                .flatten(),
        );
        v
    }

    pub(crate) fn parse<'r>(&self, row: &'r dyn Row) -> Result<ParsedUserAttrs<'r>, RowFault> {
        let name = |i| column_name(&self.names, i);
        let id = cell_id(row.cell(self.id), name(self.id))?;
        let age = match self.age {
            Some(c) => parse_age(row.cell(c), name(c))?,
            None => None,
        };
        let gender = match self.gender {
            Some(c) => cell_text(row.cell(c), name(c))?.and_then(|g| Gender::parse(&g)),
            None => None,
        };
        let occupation = match self.occupation {
            Some(c) => cell_text(row.cell(c), name(c))?,
            None => None,
        };
        Ok(ParsedUserAttrs {
            id,
            age,
            gender,
            occupation,
        })
    }
}

/// Ages are whole years; a fractional or out-of-range value is a bad row.
pub(crate) fn parse_age(cell: Cell<'_>, column: &str) -> Result<Option<u16>, RowFault> {
    let Some(v) = cell_f32(cell, column)? else {
        return Ok(None);
    };
    if v.fract() != 0.0 || !(0.0..=u16::MAX as f32).contains(&v) {
        return Err(RowFault::BadNumber {
            column: column.to_string(),
            value: display_cell(cell),
        });
    }
    Ok(Some(v as u16))
}
