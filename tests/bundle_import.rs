//! `funnel import`: vectors from .npy + id lists or Parquet become a bundle
//! that `Bundle::open` loads and that answers queries with the right items.

mod bundle_support;

use arrow_array::types::{Float32Type, Float64Type};
use arrow_array::{ArrayRef, FixedSizeListArray, Int64Array, ListArray, RecordBatch, StringArray};
use bundle_support::{entries, unit_vectors};
use funnel::bundle::{import, Bundle, BundleError, ImportArgs, OpenCheck};
use funnel::ids::{item_key, shard_of};
use funnel::matrix::Matrix;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// A `.npy` v1.0 file of `m` as `<f4` (or `<f8`), built by hand.
fn npy_bytes(m: &Matrix, f8: bool) -> Vec<u8> {
    let descr = if f8 { "<f8" } else { "<f4" };
    let mut header = format!(
        "{{'descr': '{descr}', 'fortran_order': False, 'shape': ({}, {}), }}",
        m.rows(),
        m.cols()
    );
    while (10 + header.len() + 1) % 64 != 0 {
        header.push(' ');
    }
    header.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend_from_slice(&(header.len() as u16).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    for &v in m.as_slice() {
        if f8 {
            out.extend_from_slice(&(v as f64).to_le_bytes());
        } else {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    out
}

struct Inputs {
    _tmp: tempfile::TempDir,
    dir: PathBuf,
    item_ids: Vec<String>,
    items: Matrix,
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn npy_inputs(n_items: usize, dim: usize) -> Inputs {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let item_ids: Vec<String> = (0..n_items).map(|i| format!("sku-{}", i * 7)).collect();
    let items = unit_vectors(n_items, dim, 21);
    write(&dir, "items.npy", &npy_bytes(&items, false));
    write(&dir, "items.txt", (item_ids.join("\n") + "\n").as_bytes());
    let users = unit_vectors(5, dim, 22);
    write(&dir, "users.npy", &npy_bytes(&users, true));
    write(&dir, "users.txt", b"u1\nu2\nu3\nu4\nu5\n");
    Inputs {
        _tmp: tmp,
        dir,
        item_ids,
        items,
    }
}

fn npy_args(i: &Inputs) -> ImportArgs {
    ImportArgs {
        items_npy: Some(i.dir.join("items.npy")),
        item_ids: Some(i.dir.join("items.txt")),
        out: i.dir.join("bundle"),
        ..ImportArgs::default()
    }
}

/// For every item, a search in its shard with its own vector returns it first.
fn assert_every_item_finds_itself(b: &Bundle, ids: &[String], vectors: &Matrix) {
    let shards: Vec<_> = (0..b.manifest().shard_count)
        .map(|s| b.load_shard(s).unwrap())
        .collect();
    for (row, id) in ids.iter().enumerate() {
        let key = item_key(id);
        let shard = &shards[shard_of(key, b.manifest().shard_count) as usize];
        let hits = shard.search(vectors.row(row), 3).unwrap();
        assert_eq!(hits[0].key, key, "item {id}");
    }
}

#[test]
fn npy_import_opens_and_finds_the_right_items() {
    let i = npy_inputs(40, 6);
    write(
        &i.dir,
        "attrs.csv",
        b"item_id,title,categories,created_at\n\
          sku-0,First,drama|comedy,1600000000\n\
          sku-7,,comedy,\n\
          not-imported,Ghost,horror,\n",
    );
    let args = ImportArgs {
        users_npy: Some(i.dir.join("users.npy")),
        user_ids: Some(i.dir.join("users.txt")),
        item_attrs: Some(i.dir.join("attrs.csv")),
        shards: 3,
        model_version: Some("ext-1".into()),
        ..npy_args(&i)
    };
    let m = import(&args).unwrap();
    assert_eq!(m.components, vec!["ann", "user_vectors"]);
    assert_eq!(
        (m.n_items, m.n_users, m.dimension, m.shard_count),
        (40, 5, 6, 3)
    );
    assert_eq!(m.model_version, "ext-1");
    assert_eq!(m.params["import"]["attrs_rows_for_unknown_items"], 1);

    // No feature-dependent parts: opens under any expected schema.
    let b = Bundle::open(
        &args.out,
        &OpenCheck {
            feature_schema_hash: Some("whatever"),
        },
    )
    .unwrap();
    let items = b.items().unwrap();
    assert_eq!(items.ids, i.item_ids);
    assert_eq!(items.titles[0].as_deref(), Some("First"));
    assert_eq!(items.titles[1], None);
    assert_eq!(items.category_names, vec!["drama", "comedy"]);
    assert_eq!(items.categories[0], vec![0, 1]);
    assert_eq!(items.categories[1], vec![1]);
    assert_eq!(items.created_at[0], Some(1_600_000_000));
    assert_eq!(items.created_at[1], None);

    let (users, uvec) = b.users().unwrap();
    assert_eq!(users.ids, vec!["u1", "u2", "u3", "u4", "u5"]);
    // f8 input rounded to f32 equals the f32 original exactly.
    assert_eq!(uvec, unit_vectors(5, 6, 22));

    assert_every_item_finds_itself(&b, &i.item_ids, &i.items);
}

#[test]
fn same_inputs_give_the_same_default_model_version() {
    let i = npy_inputs(10, 4);
    let a = import(&npy_args(&i)).unwrap();
    let b = import(&ImportArgs {
        out: i.dir.join("bundle2"),
        ..npy_args(&i)
    })
    .unwrap();
    assert!(a.model_version.starts_with("imported-"));
    assert_eq!(a.model_version, b.model_version);
    assert_eq!(a.input_fingerprint, b.input_fingerprint);
}

fn import_err(args: &ImportArgs) -> BundleError {
    let e = import(args).unwrap_err();
    assert!(!args.out.exists(), "a failed import leaves no bundle: {e}");
    e
}

#[test]
fn id_count_must_match_rows() {
    let i = npy_inputs(10, 4);
    write(&i.dir, "items.txt", b"a\nb\nc\n");
    let e = import_err(&npy_args(&i));
    assert!(matches!(e, BundleError::Import { .. }), "{e}");
    let msg = e.to_string();
    assert!(
        msg.contains("items.txt") && msg.contains("3 ids") && msg.contains("10 rows"),
        "{msg}"
    );
}

#[test]
fn duplicate_ids_are_named() {
    let i = npy_inputs(3, 4);
    write(&i.dir, "items.txt", b"a\nb\na\n");
    let msg = import_err(&npy_args(&i)).to_string();
    assert!(
        msg.contains("\"a\"") && msg.contains("rows 0 and 2"),
        "{msg}"
    );
}

#[test]
fn non_finite_values_name_the_row() {
    let i = npy_inputs(6, 4);
    let mut bad = i.items.clone();
    bad.row_mut(4)[1] = f32::INFINITY;
    write(&i.dir, "items.npy", &npy_bytes(&bad, false));
    let msg = import_err(&npy_args(&i)).to_string();
    assert!(
        msg.contains("row 4") && msg.contains(&i.item_ids[4]),
        "{msg}"
    );
}

#[test]
fn user_and_item_dimensions_must_agree() {
    let i = npy_inputs(6, 4);
    write(
        &i.dir,
        "users.npy",
        &npy_bytes(&unit_vectors(5, 3, 1), false),
    );
    let args = ImportArgs {
        users_npy: Some(i.dir.join("users.npy")),
        user_ids: Some(i.dir.join("users.txt")),
        ..npy_args(&i)
    };
    let msg = import_err(&args).to_string();
    assert!(
        msg.contains("dimension 4") && msg.contains("have 3"),
        "{msg}"
    );
}

#[test]
fn an_unsupported_npy_names_the_file_and_dtype() {
    let i = npy_inputs(2, 2);
    let mut bytes = npy_bytes(&i.items, false);
    let at = bytes.windows(3).position(|w| w == b"<f4").unwrap();
    bytes[at..at + 3].copy_from_slice(b"<i4");
    write(&i.dir, "items.npy", &bytes);
    let e = import_err(&npy_args(&i));
    assert!(e.file().unwrap().ends_with("items.npy"), "{e}");
    assert!(e.to_string().contains("'<i4'"), "{e}");
}

#[test]
fn missing_or_conflicting_sources_are_explained() {
    let i = npy_inputs(2, 2);
    let msg = import_err(&ImportArgs {
        items_npy: None,
        item_ids: None,
        ..npy_args(&i)
    })
    .to_string();
    assert!(
        msg.contains("--items-npy") && msg.contains("--items-parquet"),
        "{msg}"
    );
    let msg = import_err(&ImportArgs {
        item_ids: None,
        ..npy_args(&i)
    })
    .to_string();
    assert!(msg.contains("--item-ids"), "{msg}");
    assert!(import(&ImportArgs {
        items_parquet: Some(i.dir.join("x.parquet")),
        ..npy_args(&i)
    })
    .is_err());
    let msg = import_err(&ImportArgs {
        shards: 0,
        ..npy_args(&i)
    })
    .to_string();
    assert!(msg.contains("shard count 0"), "{msg}");
    // the failed writer cleaned up its temp directory
    let leftovers: Vec<String> = entries(&i.dir)
        .into_iter()
        .filter(|e| e.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
    let batch = RecordBatch::try_from_iter(columns).unwrap();
    let file = std::fs::File::create(path).unwrap();
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).unwrap();
    w.write(&batch).unwrap();
    w.close().unwrap();
}

#[test]
fn parquet_import_with_list_and_fixed_size_list_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let n = 30;
    let dim = 5;
    let vectors = unit_vectors(n, dim, 31);
    let ids: Vec<String> = (0..n).map(|i| format!("p{i}")).collect();

    // Items: string ids, list<float32>, plus an unrelated column.
    let list = ListArray::from_iter_primitive::<Float32Type, _, _>(
        (0..n).map(|r| Some(vectors.row(r).iter().map(|&v| Some(v)).collect::<Vec<_>>())),
    );
    write_parquet(
        &dir.join("items.parquet"),
        vec![
            (
                "extra",
                Arc::new(Int64Array::from_iter_values(0..n as i64)) as ArrayRef,
            ),
            ("item", Arc::new(StringArray::from(ids.clone())) as ArrayRef),
            ("emb", Arc::new(list) as ArrayRef),
        ],
    );
    // Users: integer ids, fixed_size_list<float64>.
    let users = unit_vectors(4, dim, 32);
    let fixed = FixedSizeListArray::from_iter_primitive::<Float64Type, _, _>(
        (0..4).map(|r| {
            Some(
                users
                    .row(r)
                    .iter()
                    .map(|&v| Some(v as f64))
                    .collect::<Vec<_>>(),
            )
        }),
        dim as i32,
    );
    write_parquet(
        &dir.join("users.parquet"),
        vec![
            (
                "item",
                Arc::new(Int64Array::from(vec![10, 20, 30, 40])) as ArrayRef,
            ),
            ("emb", Arc::new(fixed) as ArrayRef),
        ],
    );

    let args = ImportArgs {
        items_parquet: Some(dir.join("items.parquet")),
        users_parquet: Some(dir.join("users.parquet")),
        id_col: "item".into(),
        vector_col: "emb".into(),
        shards: 2,
        out: dir.join("bundle"),
        ..ImportArgs::default()
    };
    let m = import(&args).unwrap();
    assert_eq!((m.n_items, m.n_users, m.dimension), (30, 4, 5));
    let b = Bundle::open(&args.out, &OpenCheck::default()).unwrap();
    assert_eq!(b.items().unwrap().ids, ids);
    let (u, uv) = b.users().unwrap();
    assert_eq!(u.ids, vec!["10", "20", "30", "40"]);
    assert_eq!(uv, users);
    assert_every_item_finds_itself(&b, &ids, &vectors);

    // A missing column lists the columns that exist.
    let msg = import_err(&ImportArgs {
        vector_col: "embedding".into(),
        out: dir.join("b2"),
        ..args.clone()
    })
    .to_string();
    assert!(
        msg.contains("\"embedding\"") && msg.contains("extra, item, emb"),
        "{msg}"
    );
}

#[test]
fn parquet_rows_with_other_lengths_or_nulls_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let ragged = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
        Some(vec![Some(1.0), Some(0.0)]),
        Some(vec![Some(0.0), Some(1.0), Some(0.5)]),
    ]);
    write_parquet(
        &dir.join("ragged.parquet"),
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("vector", Arc::new(ragged) as ArrayRef),
        ],
    );
    let args = ImportArgs {
        items_parquet: Some(dir.join("ragged.parquet")),
        out: dir.join("bundle"),
        ..ImportArgs::default()
    };
    let msg = import_err(&args).to_string();
    assert!(
        msg.contains("row 1") && msg.contains("\"b\"") && msg.contains("3 values"),
        "{msg}"
    );

    let with_null = ListArray::from_iter_primitive::<Float32Type, _, _>(vec![
        Some(vec![Some(1.0), Some(0.0)]),
        None,
    ]);
    write_parquet(
        &dir.join("null.parquet"),
        vec![
            (
                "id",
                Arc::new(StringArray::from(vec!["a", "b"])) as ArrayRef,
            ),
            ("vector", Arc::new(with_null) as ArrayRef),
        ],
    );
    let msg = import_err(&ImportArgs {
        items_parquet: Some(dir.join("null.parquet")),
        ..args
    })
    .to_string();
    assert!(msg.contains("row 1") && msg.contains("null"), "{msg}");
}
