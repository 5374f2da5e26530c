//! `funnel import`: turns item (and optionally user) vectors trained
//! elsewhere into a bundle that serving nodes load like a trained one.
//!
//! Owns: `ImportArgs` (the command's flags), reading vectors from `.npy` +
//! id lists or from Parquet, the optional item attribute CSV, and the
//! checks on imported data (counts, duplicate ids, dimensions, finiteness).
//! Must not touch: the bundle layout (it only calls `BundleWriter`).

use super::error::{BundleError, Result};
use super::items::{ItemTable, UserTable};
use super::manifest::{IndexParams, Manifest, ManifestFields};
use super::npy::parse_npy;
use super::writer::{BundleWriter, WriteOptions};
use crate::ids::validate_id;
use crate::matrix::Matrix;
use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int32Type, Int64Type, UInt32Type, UInt64Type};
use arrow_array::{Array, ArrayRef};
use arrow_schema::DataType;
use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

/// Flags of `funnel import`.
#[derive(Debug, Clone, PartialEq, clap::Args)]
pub struct ImportArgs {
    /// Item vectors: a 2-D .npy file (little-endian float32/float64, C order);
    /// row i belongs to line i of --item-ids.
    #[arg(long, value_name = "FILE", requires = "item_ids")]
    pub items_npy: Option<PathBuf>,
    /// Item ids, one per line (UTF-8), in the row order of --items-npy.
    #[arg(long, value_name = "FILE")]
    pub item_ids: Option<PathBuf>,
    /// Item vectors in a Parquet file with an id column and a vector column
    /// (list<float32|float64> or fixed_size_list).
    #[arg(long, value_name = "FILE", conflicts_with = "items_npy")]
    pub items_parquet: Option<PathBuf>,
    /// Id column of the Parquet inputs.
    #[arg(long, value_name = "NAME", default_value = "id")]
    pub id_col: String,
    /// Vector column of the Parquet inputs.
    #[arg(long, value_name = "NAME", default_value = "vector")]
    pub vector_col: String,
    /// Optional user vectors as .npy (same rules as --items-npy).
    #[arg(long, value_name = "FILE", requires = "user_ids")]
    pub users_npy: Option<PathBuf>,
    /// User ids, one per line, in the row order of --users-npy.
    #[arg(long, value_name = "FILE")]
    pub user_ids: Option<PathBuf>,
    /// Optional user vectors in Parquet (columns --id-col / --vector-col).
    #[arg(long, value_name = "FILE", conflicts_with = "users_npy")]
    pub users_parquet: Option<PathBuf>,
    /// Number of item shards.
    #[arg(long, value_name = "N", default_value_t = 1)]
    pub shards: u32,
    /// Bundle directory to create.
    #[arg(long, value_name = "DIR")]
    pub out: PathBuf,
    /// Replace an existing bundle at --out.
    #[arg(long)]
    pub force: bool,
    /// Label of this model version (default: "imported-" + input fingerprint prefix).
    #[arg(long, value_name = "LABEL")]
    pub model_version: Option<String>,
    /// Optional CSV with header item_id,title,categories[,created_at];
    /// categories are '|'-separated, created_at is Unix seconds.
    #[arg(long, value_name = "FILE")]
    pub item_attrs: Option<PathBuf>,
    #[command(flatten)]
    pub index: IndexArgs,
}

/// The HNSW options of a bundle's shard indexes as command-line flags:
/// `funnel train` and `funnel bundle import` take the same ones.
#[derive(Debug, Clone, PartialEq, Eq, clap::Args)]
pub struct IndexArgs {
    /// HNSW connectivity (M) of the shard indexes.
    #[arg(long, value_name = "M", default_value_t = IndexParams::default().connectivity)]
    pub connectivity: u32,
    /// HNSW expansion factor while building.
    #[arg(long, value_name = "N", default_value_t = IndexParams::default().expansion_add)]
    pub expansion_add: u32,
    /// HNSW expansion factor while searching (serving default).
    #[arg(long, value_name = "N", default_value_t = IndexParams::default().expansion_search)]
    pub expansion_search: u32,
    /// How the indexes store vectors: f32, or f16 (half the memory each
    /// search reads; hits are re-scored with the exact vectors).
    #[arg(long, value_name = "KIND", default_value_t = IndexParams::default().quantization,
          value_parser = clap::builder::PossibleValuesParser::new(crate::bundle::manifest::QUANTIZATIONS))]
    pub quantization: String,
    /// Threads building the shard indexes (0 = one per core). 1 builds each
    /// shard on one thread, in key order: slower, and the same input then
    /// gives byte-identical index files.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub index_threads: usize,
}

impl Default for IndexArgs {
    fn default() -> Self {
        let p = IndexParams::default();
        IndexArgs {
            connectivity: p.connectivity,
            expansion_add: p.expansion_add,
            expansion_search: p.expansion_search,
            quantization: p.quantization,
            index_threads: 0,
        }
    }
}

impl IndexArgs {
    /// The manifest's parameters (checked when the bundle is written).
    pub fn params(&self) -> IndexParams {
        IndexParams {
            connectivity: self.connectivity,
            expansion_add: self.expansion_add,
            expansion_search: self.expansion_search,
            quantization: self.quantization.clone(),
            ..IndexParams::default()
        }
    }
}

impl Default for ImportArgs {
    fn default() -> Self {
        ImportArgs {
            items_npy: None,
            item_ids: None,
            items_parquet: None,
            id_col: "id".into(),
            vector_col: "vector".into(),
            users_npy: None,
            user_ids: None,
            users_parquet: None,
            shards: 1,
            out: PathBuf::new(),
            force: false,
            model_version: None,
            item_attrs: None,
            index: IndexArgs::default(),
        }
    }
}

/// Vectors with their ids, as read from one input.
struct Imported {
    ids: Vec<String>,
    vectors: Matrix,
    /// The file rows came from, for error messages.
    source: PathBuf,
}

/// Reads the inputs named by `args`, checks them, and writes a bundle with
/// components "ann" (and "user_vectors" when user vectors are given).
pub fn import(args: &ImportArgs) -> Result<Manifest> {
    if args.out.as_os_str().is_empty() {
        return Err(BundleError::InvalidInput(
            "no output directory; pass --out DIR".into(),
        ));
    }
    let mut fingerprint = blake3::Hasher::new();
    let items = read_side(
        "item",
        args.items_npy.as_deref(),
        args.item_ids.as_deref(),
        args.items_parquet.as_deref(),
        args,
        &mut fingerprint,
    )?
    .ok_or_else(|| {
        BundleError::InvalidInput(
            "no item vectors given; pass --items-npy FILE --item-ids FILE or --items-parquet FILE"
                .into(),
        )
    })?;
    let users = read_side(
        "user",
        args.users_npy.as_deref(),
        args.user_ids.as_deref(),
        args.users_parquet.as_deref(),
        args,
        &mut fingerprint,
    )?;
    check_vectors(&items, "item", "--items")?;
    if let Some(u) = &users {
        check_vectors(u, "user", "--users")?;
        if u.vectors.cols() != items.vectors.cols() {
            return Err(BundleError::InvalidInput(format!(
                "item vectors ({}) have dimension {} but user vectors ({}) have {}; recall scores are dot products, so both must have the same dimension",
                items.source.display(),
                items.vectors.cols(),
                u.source.display(),
                u.vectors.cols()
            )));
        }
    }

    let mut table = ItemTable::from_ids(items.ids.clone());
    let mut unknown_attr_items = 0usize;
    if let Some(path) = &args.item_attrs {
        hash_input(&mut fingerprint, "item-attrs", path)?;
        unknown_attr_items = read_item_attrs(path, &mut table)?;
    }
    table.validate()?;
    let fingerprint = fingerprint.finalize().to_hex().to_string();

    let params = args.index.params();
    let mut w = BundleWriter::create(
        &args.out,
        WriteOptions {
            force: args.force,
            index_threads: args.index.index_threads,
        },
    )?;
    w.put_items(&table)?;
    if let Some(u) = &users {
        let user_table = UserTable {
            ids: u.ids.clone(),
            occupation_names: Vec::new(),
        };
        w.put_users(&user_table, &u.vectors)?;
    }
    w.put_item_vectors(&table, &items.vectors, args.shards, params)?;
    let source = |p: &Option<PathBuf>| p.as_ref().map(|p| p.display().to_string());
    let fields = ManifestFields {
        model_version: args
            .model_version
            .clone()
            .unwrap_or_else(|| format!("imported-{}", &fingerprint[..12])),
        created_at_unix: None,
        input_fingerprint: fingerprint,
        feature_schema: Default::default(),
        components: Vec::new(),
        metrics: serde_json::json!({}),
        params: serde_json::json!({
            "import": {
                "items_npy": source(&args.items_npy),
                "item_ids": source(&args.item_ids),
                "items_parquet": source(&args.items_parquet),
                "users_npy": source(&args.users_npy),
                "user_ids": source(&args.user_ids),
                "users_parquet": source(&args.users_parquet),
                "item_attrs": source(&args.item_attrs),
                "attrs_rows_for_unknown_items": unknown_attr_items,
            }
        }),
    };
    w.finish(fields)
}

/// Reads one side (items or users) from whichever source was given.
fn read_side(
    side: &str,
    npy: Option<&Path>,
    ids: Option<&Path>,
    parquet: Option<&Path>,
    args: &ImportArgs,
    fingerprint: &mut blake3::Hasher,
) -> Result<Option<Imported>> {
    let flag = if side == "item" { "items" } else { "users" };
    let ids_flag = if side == "item" {
        "item-ids"
    } else {
        "user-ids"
    };
    match (npy, ids, parquet) {
        (None, None, None) => Ok(None),
        (Some(_), _, Some(_)) => Err(BundleError::InvalidInput(format!(
            "both --{flag}-npy and --{flag}-parquet were given; pass one source of {side} vectors"
        ))),
        (Some(npy), Some(ids), None) => {
            let bytes = read_file(npy)?;
            hash_bytes(fingerprint, &format!("{flag}-npy"), &bytes);
            let vectors = parse_npy(&bytes).map_err(|e| BundleError::import(npy, e.to_string()))?;
            let id_bytes = read_file(ids)?;
            hash_bytes(fingerprint, ids_flag, &id_bytes);
            let ids_list = parse_id_lines(ids, &id_bytes)?;
            if ids_list.len() != vectors.rows() {
                return Err(BundleError::import(
                    ids,
                    format!(
                        "has {} ids but {} has {} rows; there must be one id per vector row",
                        ids_list.len(),
                        npy.display(),
                        vectors.rows()
                    ),
                ));
            }
            Ok(Some(Imported {
                ids: ids_list,
                vectors,
                source: npy.to_path_buf(),
            }))
        }
        (Some(_), None, None) => Err(BundleError::InvalidInput(format!(
            "--{flag}-npy needs --{ids_flag} FILE with one id per row"
        ))),
        (None, Some(_), None) => Err(BundleError::InvalidInput(format!(
            "--{ids_flag} was given without --{flag}-npy"
        ))),
        (None, ids, Some(parquet)) => {
            if ids.is_some() {
                return Err(BundleError::InvalidInput(format!(
                    "--{ids_flag} is only used with --{flag}-npy; Parquet input carries its ids in --id-col"
                )));
            }
            hash_input(fingerprint, &format!("{flag}-parquet"), parquet)?;
            let (ids, vectors) = read_parquet_vectors(parquet, &args.id_col, &args.vector_col)?;
            Ok(Some(Imported {
                ids,
                vectors,
                source: parquet.to_path_buf(),
            }))
        }
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| BundleError::io("read", path, e))
}

fn hash_bytes(h: &mut blake3::Hasher, label: &str, bytes: &[u8]) {
    h.update(label.as_bytes());
    h.update(&[0]);
    h.update(&(bytes.len() as u64).to_le_bytes());
    h.update(bytes);
}

/// Hashes a file by streaming it (Parquet inputs are read by the Parquet
/// reader, not as one buffer).
fn hash_input(h: &mut blake3::Hasher, label: &str, path: &Path) -> Result<()> {
    let mut f = std::fs::File::open(path).map_err(|e| BundleError::io("open", path, e))?;
    let len = f
        .metadata()
        .map_err(|e| BundleError::io("read metadata of", path, e))?
        .len();
    h.update(label.as_bytes());
    h.update(&[0]);
    h.update(&len.to_le_bytes());
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| BundleError::io("read", path, e))?;
        if n == 0 {
            return Ok(());
        }
        h.update(&buf[..n]);
    }
}

/// One id per line; a final newline is optional, `\r\n` is accepted, an
/// empty line anywhere else is an error (it would shift every later row).
pub fn parse_id_lines(file: &Path, bytes: &[u8]) -> Result<Vec<String>> {
    let text = std::str::from_utf8(bytes).map_err(|e| {
        BundleError::import(
            file,
            format!(
                "is not UTF-8 text (first bad byte at offset {})",
                e.valid_up_to()
            ),
        )
    })?;
    let text = text.strip_suffix('\n').unwrap_or(text);
    if text.is_empty() {
        return Ok(Vec::new());
    }
    text.split('\n')
        .enumerate()
        .map(|(i, line)| {
            let id = line.strip_suffix('\r').unwrap_or(line);
            validate_id(id).map_err(|e| {
                BundleError::import(file, format!("line {}: id {id:?} is invalid: {e}", i + 1))
            })?;
            Ok(id.to_owned())
        })
        .collect()
}

/// Duplicate ids, empty input and non-finite values, each named precisely.
fn check_vectors(data: &Imported, side: &str, flag: &str) -> Result<()> {
    if data.ids.is_empty() {
        return Err(BundleError::import(
            &data.source,
            format!("contains no {side} vectors; pass a file with at least one row ({flag}-*)"),
        ));
    }
    if data.vectors.cols() == 0 {
        return Err(BundleError::import(
            &data.source,
            "vectors have dimension 0; pass vectors with at least one value",
        ));
    }
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(data.ids.len());
    for (row, id) in data.ids.iter().enumerate() {
        if let Some(first) = seen.insert(id, row) {
            return Err(BundleError::import(
                &data.source,
                format!(
                    "{side} id {id:?} appears twice (rows {first} and {row}); ids must be unique"
                ),
            ));
        }
    }
    let cols = data.vectors.cols();
    if let Some(pos) = data.vectors.as_slice().iter().position(|v| !v.is_finite()) {
        let row = pos / cols;
        return Err(BundleError::import(
            &data.source,
            format!(
                "row {row} ({side} {:?}) has {} at column {}; vectors must be finite",
                data.ids[row],
                data.vectors.as_slice()[pos],
                pos % cols
            ),
        ));
    }
    Ok(())
}

/// Reads ids and vectors from a Parquet file.
pub fn read_parquet_vectors(
    path: &Path,
    id_col: &str,
    vector_col: &str,
) -> Result<(Vec<String>, Matrix)> {
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::arrow::ProjectionMask;

    let bad = |reason: String| BundleError::import(path, reason);
    let file = std::fs::File::open(path).map_err(|e| BundleError::io("open", path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(format!("not a readable Parquet file ({e})")))?;
    let schema = builder.schema().clone();
    let column_index = |name: &str| {
        schema.index_of(name).map_err(|_| {
            let names: Vec<&str> = schema.fields().iter().map(|f| f.name().as_str()).collect();
            bad(format!(
                "has no column {name:?} (columns: {}); choose with --id-col / --vector-col",
                names.join(", ")
            ))
        })
    };
    let id_idx = column_index(id_col)?;
    let vec_idx = column_index(vector_col)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), [id_idx, vec_idx]);
    let reader = builder
        .with_projection(mask)
        .build()
        .map_err(|e| bad(format!("cannot be read ({e})")))?;

    let mut ids = Vec::new();
    let mut values: Vec<f32> = Vec::new();
    let mut dim: Option<usize> = None;
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("cannot be read ({e})")))?;
        let id_array = batch
            .column_by_name(id_col)
            .expect("the projection keeps the id column");
        let vec_array = batch
            .column_by_name(vector_col)
            .expect("the projection keeps the vector column");
        let first_row = ids.len();
        append_ids(id_array, first_row, &mut ids).map_err(|e| bad(e.to_string()))?;
        append_vectors(vec_array, first_row, &ids, &mut dim, &mut values)
            .map_err(|e| bad(e.to_string()))?;
    }
    let rows = ids.len();
    let cols = dim.unwrap_or(0);
    let m = Matrix::from_vec(rows, cols, values).expect("one vector of `cols` values per row");
    Ok((ids, m))
}

/// Why a Parquet batch's id or vector column cannot be imported; `row`
/// counts from 0 over the whole file. Reported as `BundleError::Import`.
#[derive(Debug, thiserror::Error)]
enum ColumnError {
    #[error("row {row}: the id is null; every row needs an id")]
    NullId { row: usize },
    #[error("id column has type {0}; use a string or integer column")]
    IdType(DataType),
    #[error("row {row}: id {id:?} is invalid: {source}")]
    InvalidId {
        row: usize,
        id: String,
        #[source]
        source: crate::ids::IdError,
    },
    #[error("row {row} (id {id:?}): the vector is null")]
    NullVector { row: usize, id: String },
    #[error("vector column has type {0}; use list<float32>, list<float64> or fixed_size_list")]
    VectorType(DataType),
    #[error("row {row} (id {id:?}): the vector contains null values")]
    NullValues { row: usize, id: String },
    #[error(
        "row {row} (id {id:?}): the vector has {len} values but earlier rows have {dim}; all vectors need the same dimension"
    )]
    Dimension {
        row: usize,
        id: String,
        len: usize,
        dim: usize,
    },
    #[error("vector elements have type {0}; use float32 or float64")]
    ElementType(DataType),
}

fn append_ids(
    array: &ArrayRef,
    first_row: usize,
    out: &mut Vec<String>,
) -> Result<(), ColumnError> {
    let n = array.len();
    let null_at = |i: usize| ColumnError::NullId { row: first_row + i };
    macro_rules! push_all {
        ($arr:expr) => {{
            let arr = $arr;
            for i in 0..n {
                if arr.is_null(i) {
                    return Err(null_at(i));
                }
                out.push(arr.value(i).to_string());
            }
        }};
    }
    match array.data_type() {
        DataType::Utf8 => push_all!(array.as_string::<i32>()),
        DataType::LargeUtf8 => push_all!(array.as_string::<i64>()),
        DataType::Utf8View => push_all!(array.as_string_view()),
        DataType::Int32 => push_all!(array.as_primitive::<Int32Type>()),
        DataType::Int64 => push_all!(array.as_primitive::<Int64Type>()),
        DataType::UInt32 => push_all!(array.as_primitive::<UInt32Type>()),
        DataType::UInt64 => push_all!(array.as_primitive::<UInt64Type>()),
        other => return Err(ColumnError::IdType(other.clone())),
    }
    for (i, id) in out.iter().enumerate().skip(first_row) {
        validate_id(id).map_err(|source| ColumnError::InvalidId {
            row: i,
            id: id.clone(),
            source,
        })?;
    }
    Ok(())
}

/// Appends each row's vector, checking one dimension for all rows.
fn append_vectors(
    array: &ArrayRef,
    first_row: usize,
    ids: &[String],
    dim: &mut Option<usize>,
    out: &mut Vec<f32>,
) -> Result<(), ColumnError> {
    let row_value = |i: usize| -> Option<ArrayRef> {
        match array.data_type() {
            DataType::List(_) => Some(array.as_list::<i32>().value(i)),
            DataType::LargeList(_) => Some(array.as_list::<i64>().value(i)),
            DataType::FixedSizeList(_, _) => Some(array.as_fixed_size_list().value(i)),
            _ => None,
        }
    };
    for i in 0..array.len() {
        let row = first_row + i;
        let id = || ids[row].clone();
        if array.is_null(i) {
            return Err(ColumnError::NullVector { row, id: id() });
        }
        let Some(values) = row_value(i) else {
            return Err(ColumnError::VectorType(array.data_type().clone()));
        };
        if values.null_count() > 0 {
            return Err(ColumnError::NullValues { row, id: id() });
        }
        let len = values.len();
        match *dim {
            None => *dim = Some(len),
            Some(d) if d != len => {
                return Err(ColumnError::Dimension {
                    row,
                    id: id(),
                    len,
                    dim: d,
                })
            }
            Some(_) => {}
        }
        match values.data_type() {
            DataType::Float32 => out.extend(values.as_primitive::<Float32Type>().values().iter()),
            DataType::Float64 => out.extend(
                values
                    .as_primitive::<Float64Type>()
                    .values()
                    .iter()
                    .map(|&v| v as f32),
            ),
            other => return Err(ColumnError::ElementType(other.clone())),
        }
    }
    Ok(())
}

/// Applies the attribute CSV to `table`. Returns how many rows named items
/// that have no vector (they are skipped: a catalogue may be a superset).
fn read_item_attrs(path: &Path, table: &mut ItemTable) -> Result<usize> {
    let bad = |reason: String| BundleError::import(path, reason);
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_path(path)
        .map_err(|e| bad(format!("cannot be opened as CSV ({e})")))?;
    let headers = reader
        .headers()
        .map_err(|e| bad(format!("has no readable header ({e})")))?
        .clone();
    let col = |name: &str| headers.iter().position(|h| h.trim() == name);
    let id_col = col("item_id").ok_or_else(|| {
        bad(
            "has no item_id column; the header must be item_id,title,categories[,created_at]"
                .into(),
        )
    })?;
    let (title_col, cat_col, created_col) = (col("title"), col("categories"), col("created_at"));

    let index: HashMap<String, usize> = table
        .ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.clone(), i))
        .collect();
    let mut category_index: HashMap<String, u16> = HashMap::new();
    let mut applied = vec![false; table.len()];
    let mut unknown = 0usize;
    for (n, record) in reader.records().enumerate() {
        // Line numbers for humans: the header is line 1.
        let line = n + 2;
        let record = record.map_err(|e| bad(format!("line {line}: {e}")))?;
        let field = |c: Option<usize>| c.and_then(|c| record.get(c)).map(str::trim).unwrap_or("");
        let id = field(Some(id_col));
        let Some(&i) = index.get(id) else {
            unknown += 1;
            continue;
        };
        if std::mem::replace(&mut applied[i], true) {
            return Err(bad(format!(
                "line {line}: item {id:?} has a second row; keep one row per item"
            )));
        }
        let title = field(title_col);
        table.titles[i] = (!title.is_empty()).then(|| title.to_owned());
        let mut cats = Vec::new();
        for name in field(cat_col)
            .split('|')
            .map(str::trim)
            .filter(|s| !s.is_empty())
        {
            let c = match category_index.get(name) {
                Some(&c) => c,
                None => {
                    let c = u16::try_from(table.category_names.len()).map_err(|_| {
                        bad(format!("line {line}: more than 65535 distinct categories"))
                    })?;
                    table.category_names.push(name.to_owned());
                    category_index.insert(name.to_owned(), c);
                    c
                }
            };
            cats.push(c);
        }
        cats.sort_unstable();
        cats.dedup();
        table.categories[i] = cats;
        let created = field(created_col);
        if !created.is_empty() {
            table.created_at[i] = Some(created.parse::<i64>().map_err(|_| {
                bad(format!(
                    "line {line}: created_at {created:?} is not an integer (Unix seconds)"
                ))
            })?);
        }
    }
    Ok(unknown)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: ImportArgs,
    }

    #[test]
    fn command_line_defaults_match_import_args_default() {
        let cli = Cli::try_parse_from(["funnel", "--out", "o"]).unwrap();
        assert_eq!(
            cli.args,
            ImportArgs {
                out: "o".into(),
                ..ImportArgs::default()
            }
        );
        assert!(Cli::try_parse_from(["funnel", "--out", "o", "--items-npy", "a.npy"]).is_err());
        assert!(Cli::try_parse_from([
            "funnel",
            "--out",
            "o",
            "--items-npy",
            "a",
            "--item-ids",
            "b",
            "--items-parquet",
            "c"
        ])
        .is_err());
        let cli = Cli::try_parse_from([
            "funnel",
            "--out",
            "o",
            "--items-parquet",
            "p",
            "--shards",
            "4",
            "--force",
        ])
        .unwrap();
        assert_eq!((cli.args.shards, cli.args.force), (4, true));
    }

    #[test]
    fn id_lines_accept_crlf_and_an_optional_final_newline() {
        let f = Path::new("ids.txt");
        assert_eq!(
            parse_id_lines(f, b"a\r\nb\nc").unwrap(),
            vec!["a", "b", "c"]
        );
        assert_eq!(parse_id_lines(f, b"a\nb\n").unwrap(), vec!["a", "b"]);
        assert!(parse_id_lines(f, b"").unwrap().is_empty());
        let err = parse_id_lines(f, b"a\n\nb\n").unwrap_err().to_string();
        assert!(err.contains("line 2"), "{err}");
        assert!(parse_id_lines(f, b"a\n\xff\n").is_err());
    }
}
