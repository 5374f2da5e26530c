//! Behavioural tests of `ingest::load` on tiny hand-written inputs in temp
//! directories (and on the dev copy of ml-100k when it is present).

use super::*;
use crate::dataset::{EventKind, Gender};
use crate::eventlog::{EventLogOptions, EventLogWriter, LogEvent};
use std::fs;
use std::path::Path;

fn write(dir: &Path, name: &str, bytes: impl AsRef<[u8]>) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, bytes).unwrap();
    p
}

fn item<'a>(ds: &'a Dataset, id: &str) -> &'a crate::dataset::ItemMeta {
    &ds.item_meta[ds.items.get(id).unwrap_or_else(|| panic!("no item {id}")) as usize]
}

fn user<'a>(ds: &'a Dataset, id: &str) -> &'a crate::dataset::UserMeta {
    &ds.user_meta[ds.users.get(id).unwrap_or_else(|| panic!("no user {id}")) as usize]
}

fn category_names(ds: &Dataset, cats: &[u16]) -> Vec<String> {
    cats.iter()
        .map(|&c| ds.categories[c as usize].clone())
        .collect()
}

/// (user id, item id, ts, kind, value) in dataset order.
fn rows(ds: &Dataset) -> Vec<(String, String, i64, EventKind, f32)> {
    ds.interactions
        .iter()
        .map(|x| {
            (
                ds.users.external(x.user).to_string(),
                ds.items.external(x.item).to_string(),
                x.ts,
                x.kind,
                x.value,
            )
        })
        .collect()
}

fn row(
    u: &str,
    i: &str,
    ts: i64,
    kind: EventKind,
    v: f32,
) -> (String, String, i64, EventKind, f32) {
    (u.into(), i.into(), ts, kind, v)
}

// ---- MovieLens ------------------------------------------------------------

fn tiny_movielens(root: &Path) -> PathBuf {
    let dir = root.join("ml-tiny");
    fs::create_dir(&dir).unwrap();
    write(
        &dir,
        "u.data",
        "10\t2\t4\t881250949\n2\t30\t3\t881250950\n10\t30\t5\t881250948\n",
    );
    write(&dir, "u.genre", "unknown|0\nAction|1\nDrama|2\n\n");
    // 0xE9 is "é" in Latin-1 and invalid on its own in UTF-8.
    write(
        &dir,
        "u.item",
        b"2|Caf\xe9 Society (1995)|01-Jan-1995||http://x|0|1|1\n\
          30|Nameless||||1|0|0\n\
          99|Catalog only|02-Mar-1996||http://y|0|0|1\n",
    );
    write(
        &dir,
        "u.user",
        "10|24|M|technician|85711\n2|53|F|other|94043\n",
    );
    dir
}

#[test]
fn movielens_tiny_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tiny_movielens(tmp.path());
    let ds = load(&DataArgs::movielens(&dir)).unwrap();

    assert_eq!(ds.name, "ml-tiny");
    assert_eq!(ds.users.ids(), &["2", "10"]);
    assert_eq!(ds.items.ids(), &["2", "30", "99"]);
    assert_eq!(
        rows(&ds),
        vec![
            row("10", "30", 881250948, EventKind::Rate, 5.0),
            row("10", "2", 881250949, EventKind::Rate, 4.0),
            row("2", "30", 881250950, EventKind::Rate, 3.0),
        ]
    );
    assert_eq!(ds.categories, vec!["unknown", "Action", "Drama"]);
    let cafe = item(&ds, "2");
    assert_eq!(cafe.title.as_deref(), Some("Café Society (1995)"));
    assert_eq!(cafe.created_at, Some(788_918_400));
    assert_eq!(
        category_names(&ds, &cafe.categories),
        vec!["Action", "Drama"]
    );
    let nameless = item(&ds, "30");
    assert_eq!(nameless.created_at, None);
    assert_eq!(category_names(&ds, &nameless.categories), vec!["unknown"]);
    assert_eq!(item(&ds, "99").title.as_deref(), Some("Catalog only"));
    let u10 = user(&ds, "10");
    assert_eq!((u10.age, u10.gender), (Some(24), Some(Gender::Male)));
    assert_eq!(
        ds.occupations[u10.occupation.unwrap() as usize],
        "technician"
    );
    assert_eq!(user(&ds, "2").gender, Some(Gender::Female));
    assert_eq!(ds.item_meta.len(), ds.items.len());
    assert_eq!(ds.user_meta.len(), ds.users.len());
    assert_eq!(ds.fingerprint.len(), 64);
    assert!(ds.bad_rows.is_empty());
}

#[test]
fn movielens_without_genre_file_uses_the_standard_names() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    write(dir, "u.data", "1\t1\t3\t100\n");
    let flags = ["0"; 19].join("|").replacen('0', "1", 1);
    write(dir, "u.item", format!("1|Film|||url|{flags}\n"));
    let ds = load(&DataArgs {
        data: Some(dir.to_path_buf()),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(ds.categories, STANDARD_GENRES.to_vec());
    assert_eq!(
        category_names(&ds, &item(&ds, "1").categories),
        vec!["unknown"]
    );
}

#[test]
fn movielens_bad_rating_line_names_u_data_and_line() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), "u.data", "1\t1\t3\t100\n1\t2\tfour\t100\n");
    let err = load(&DataArgs::movielens(tmp.path())).unwrap_err();
    assert!(
        matches!(
            &err,
            IngestError::BadRow {
                line: 2,
                fault: RowFault::BadNumber { .. },
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("u.data line 2"), "{err}");
}

#[test]
fn ml100k_counts_when_present() {
    let Some(dir) = crate::testdata::ml100k_dir("ingest::ml100k") else {
        return;
    };
    let dir = dir.as_path();
    let ds = load(&DataArgs::movielens(dir)).unwrap();
    assert_eq!(ds.name, "ml-100k");
    assert_eq!(ds.users.len(), 943);
    assert_eq!(ds.items.len(), 1682);
    assert_eq!(ds.interactions.len(), 100_000);
    assert_eq!(ds.categories.len(), 19);
    assert_eq!(ds.occupations.len(), 21);
    assert!(ds
        .interactions
        .iter()
        .all(|x| x.kind == EventKind::Rate && (1.0..=5.0).contains(&x.value)));
    let toy = item(&ds, "1");
    assert_eq!(toy.title.as_deref(), Some("Toy Story (1995)"));
    assert_eq!(toy.created_at, Some(788_918_400));
    assert_eq!(item(&ds, "267").created_at, None);
    // Canonical order is numeric: item "2" precedes "10".
    assert_eq!(ds.items.get("2"), Some(1));
    assert_eq!(ds.items.get("10"), Some(9));
}

// ---- CSV / TSV ----------------------------------------------------------------

#[test]
fn csv_happy_path_with_all_optional_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    let interactions = write(
        dir,
        "events.csv",
        "\u{feff}uid,iid,when,stars,w,what,note\n\
         u1,i1,1714564800000,4.5,,,plain\n\
         u2,i2,1714564801000,,3,click,\"quoted, with comma\"\n\
         u1,i2,1714564802000,,,purchase,\n\
         u3,i1,1714564803999,,,,\n\
         u3, i2 ,2024-05-01T12:00:04Z,,,Like,\n",
    );
    write(
        dir,
        "items.csv",
        "item_id,title,genres,created_at,unused\n\
         i1,\"Book, the\",fiction; classic,2020-01-02,x\n\
         i3,Only in the catalog,,,y\n",
    );
    write(
        dir,
        "users.tsv",
        "user_id\tage\tgender\toccupation\nu1\t31\tf\tengineer\nu2\t\t\t\n",
    );
    let args = DataArgs {
        interactions: Some(interactions),
        user_col: Some("uid".into()),
        item_col: Some("iid".into()),
        time_col: Some("when".into()),
        rating_col: Some("stars".into()),
        weight_col: Some("w".into()),
        kind_col: Some("what".into()),
        time_unit: TimeUnit::Millis,
        item_attrs: Some(dir.join("items.csv")),
        category_col: Some("genres".into()),
        category_sep: Some(";".into()),
        user_attrs: Some(dir.join("users.tsv")),
        ..Default::default()
    };
    let ds = load(&args).unwrap();
    let t = 1_714_564_800;
    assert_eq!(
        rows(&ds),
        vec![
            row("u1", "i1", t, EventKind::Rate, 4.5),
            row("u2", "i2", t + 1, EventKind::Click, 3.0),
            row(
                "u1",
                "i2",
                t + 2,
                EventKind::Purchase,
                EventKind::Purchase.default_weight()
            ),
            row(
                "u3",
                "i1",
                t + 3,
                EventKind::View,
                EventKind::View.default_weight()
            ),
            row(
                "u3",
                "i2",
                t + 4,
                EventKind::Like,
                EventKind::Like.default_weight()
            ),
        ]
    );
    assert_eq!(ds.items.ids(), &["i1", "i2", "i3"]);
    let book = item(&ds, "i1");
    assert_eq!(book.title.as_deref(), Some("Book, the"));
    assert_eq!(book.created_at, Some(1_577_923_200));
    let mut names = category_names(&ds, &book.categories);
    names.sort();
    assert_eq!(names, vec!["classic", "fiction"]);
    assert_eq!(
        item(&ds, "i3").title.as_deref(),
        Some("Only in the catalog")
    );
    assert!(item(&ds, "i2").title.is_none());
    let u1 = user(&ds, "u1");
    assert_eq!((u1.age, u1.gender), (Some(31), Some(Gender::Female)));
    assert_eq!(ds.occupations[u1.occupation.unwrap() as usize], "engineer");
    assert_eq!(user(&ds, "u2"), &crate::dataset::UserMeta::default());
    assert_eq!(ds.name, dir.join("events.csv").display().to_string());
}

#[test]
fn tsv_and_custom_delimiter() {
    let tmp = tempfile::tempdir().unwrap();
    let tsv = write(
        tmp.path(),
        "x.tsv",
        "user_id\titem_id\ttimestamp\na\tb\t5\n",
    );
    let ds = load(&DataArgs {
        data: Some(tsv),
        ..Default::default()
    })
    .unwrap();
    assert_eq!(rows(&ds), vec![row("a", "b", 5, EventKind::View, 1.0)]);
    let semi = write(tmp.path(), "y.txt", "user_id;item_id;timestamp\na;b;5\n");
    let ds = load(&DataArgs {
        delimiter: Some(';'),
        ..DataArgs::csv(semi)
    })
    .unwrap();
    assert_eq!(ds.interactions.len(), 1);
}

const HEADER: &str = "user_id,item_id,timestamp,rating,weight,kind\n";
const GOOD: &str = "u1,i1,100,,,\n";

/// Loads `HEADER + GOOD + bad_row` from bad.csv with rating, weight and kind
/// columns.
fn load_with_bad_row(bad_row: &[u8], max_bad_rows: u64) -> Result<Dataset, IngestError> {
    let tmp = tempfile::tempdir().unwrap();
    let mut bytes = format!("{HEADER}{GOOD}").into_bytes();
    bytes.extend_from_slice(bad_row);
    let path = write(tmp.path(), "bad.csv", bytes);
    load(&DataArgs {
        rating_col: Some("rating".into()),
        weight_col: Some("weight".into()),
        kind_col: Some("kind".into()),
        max_bad_rows,
        ..DataArgs::csv(path)
    })
}

#[test]
fn each_malformed_row_gives_its_error_with_file_and_line() {
    type Check = fn(&IngestError) -> bool;
    let cases: Vec<(&[u8], Check)> = vec![
        (b"u1,i1\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::FieldCount {
                        expected: 6,
                        found: 2
                    },
                    ..
                }
            )
        }),
        (b"u1,i1,100,abc,,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::BadNumber { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,yesterday,,,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::BadTimestamp { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,,,,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::Missing { .. },
                    ..
                }
            )
        }),
        (b",i1,100,,,\n", |e| {
            matches!(
                e,
                IngestError::InvalidId {
                    source: crate::ids::IdError::Empty,
                    ..
                }
            )
        }),
        (b"u\x01,i1,100,,,\n", |e| {
            matches!(
                e,
                IngestError::InvalidId {
                    source: crate::ids::IdError::ControlChar(1),
                    ..
                }
            )
        }),
        (b"u1,i1,100,NaN,,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::NonFinite { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,100,,inf,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::NonFinite { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,100,,1e39,\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::NonFinite { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,100,,,hover\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::UnknownKind { .. },
                    ..
                }
            )
        }),
        (b"u1,i1,100,,,rate\n", |e| {
            matches!(
                e,
                IngestError::BadRow {
                    fault: RowFault::Other(_),
                    ..
                }
            )
        }),
        (b"u1,caf\xe9,100,,,\n", |e| {
            matches!(e, IngestError::NotUtf8 { line: 3, .. })
        }),
    ];
    for (bad, check) in cases {
        let shown = String::from_utf8_lossy(bad);
        let err = load_with_bad_row(bad, 0).unwrap_err();
        assert!(check(&err), "row {shown:?} gave {err:?}");
        let msg = err.to_string();
        assert!(msg.contains("bad.csv line 3"), "row {shown:?}: {msg}");
        // Malformed rows (not encoding errors) can be skipped with the budget.
        if !matches!(err, IngestError::NotUtf8 { .. }) {
            assert!(msg.contains("--max-bad-rows"), "{msg}");
            let ds = load_with_bad_row(bad, 1).unwrap();
            assert_eq!(ds.interactions.len(), 1, "row {shown:?}");
            assert_eq!(ds.bad_rows.len(), 1);
            assert_eq!(ds.bad_rows[0].line, 3);
            assert!(ds.bad_rows[0].file.ends_with("bad.csv"));
        } else {
            assert!(msg.contains("iconv"), "{msg}");
        }
    }
}

#[test]
fn max_bad_rows_tolerates_n_and_refuses_n_plus_one() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "three-bad.csv",
        "user_id,item_id,timestamp\n\
         u1,i1,1\n\
         u1,i2\n\
         u2,i1,not-a-time\n\
         u2,i2,3\n\
         ,i3,4\n",
    );
    let args = |n| DataArgs {
        max_bad_rows: n,
        ..DataArgs::csv(&path)
    };
    let ds = load(&args(3)).unwrap();
    assert_eq!(ds.interactions.len(), 2);
    let lines: Vec<u64> = ds.bad_rows.iter().map(|b| b.line).collect();
    assert_eq!(lines, vec![3, 4, 6]);

    let err = load(&args(2)).unwrap_err();
    match &err {
        IngestError::TooManyBadRows {
            count,
            limit,
            first,
        } => {
            assert_eq!((*count, *limit), (3, 2));
            assert_eq!(first.len(), 3);
        }
        other => panic!("expected TooManyBadRows, got {other:?}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("raise --max-bad-rows N to skip them"), "{msg}");
    assert!(msg.contains("three-bad.csv line 3"), "{msg}");
}

#[test]
fn unknown_column_lists_the_available_columns() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(tmp.path(), "cols.csv", "user_id,item_id,timestamp\na,b,1\n");
    let err = load(&DataArgs {
        user_col: Some("uid".into()),
        ..DataArgs::csv(&path)
    })
    .unwrap_err();
    assert!(
        matches!(&err, IngestError::UnknownColumn { column, flag: "--user-col", available, .. }
            if column == "uid" && available.len() == 3),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(msg.contains("cols.csv"), "{msg}");
    assert!(msg.contains("user_id, item_id, timestamp"), "{msg}");
    // The time column is required even with its default name.
    let path = write(tmp.path(), "notime.csv", "user_id,item_id\na,b\n");
    assert!(matches!(
        load(&DataArgs::csv(path)),
        Err(IngestError::UnknownColumn {
            flag: "--time-col",
            ..
        })
    ));
}

#[test]
fn attribute_columns_are_optional_unless_named() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write(tmp.path(), "d.csv", "user_id,item_id,timestamp\na,b,1\n");
    let items = write(tmp.path(), "items.csv", "item_id,title\nb,Bee\n");
    let base = DataArgs {
        item_attrs: Some(items),
        ..DataArgs::csv(&data)
    };
    let ds = load(&base).unwrap();
    assert_eq!(item(&ds, "b").title.as_deref(), Some("Bee"));
    assert!(item(&ds, "b").categories.is_empty());
    let err = load(&DataArgs {
        category_col: Some("genre".into()),
        ..base.clone()
    })
    .unwrap_err();
    assert!(
        matches!(
            &err,
            IngestError::UnknownColumn {
                flag: "--category-col",
                ..
            }
        ),
        "{err:?}"
    );
    assert!(err.to_string().contains("items.csv"));
    // An attribute column flag without its file is refused, not ignored.
    let err = load(&DataArgs {
        age_col: Some("age".into()),
        ..DataArgs::csv(&data)
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::InvalidArgument {
                flag: "--age-col",
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn duplicate_ids_in_an_attribute_file_are_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let data = write(tmp.path(), "d.csv", "user_id,item_id,timestamp\na,b,1\n");
    let items = write(tmp.path(), "items.csv", "item_id,title\nb,Bee\nb,Again\n");
    let err = load(&DataArgs {
        item_attrs: Some(items),
        ..DataArgs::csv(&data)
    })
    .unwrap_err();
    assert!(
        matches!(&err, IngestError::BadRow { line: 3, .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("items.csv line 3"));
}

#[test]
fn duplicate_header_column_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let path = write(
        tmp.path(),
        "dup.csv",
        "user_id,item_id,timestamp,item_id\na,b,1,c\n",
    );
    let err = load(&DataArgs::csv(path)).unwrap_err();
    assert!(
        matches!(&err, IngestError::DuplicateColumn { column, .. } if column == "item_id"),
        "{err:?}"
    );
    assert!(err.to_string().contains("dup.csv"));
}

#[test]
fn empty_inputs_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    for (name, content) in [
        ("zero.csv", ""),
        ("header-only.csv", "user_id,item_id,timestamp\n"),
    ] {
        let path = write(tmp.path(), name, content);
        let err = load(&DataArgs::csv(path)).unwrap_err();
        assert!(matches!(err, IngestError::Empty { .. }), "{name}: {err:?}");
        assert!(err.to_string().contains(name), "{err}");
    }
    // All rows skipped as bad leaves nothing to train on: also empty.
    let path = write(
        tmp.path(),
        "all-bad.csv",
        "user_id,item_id,timestamp\na,b\n",
    );
    let err = load(&DataArgs {
        max_bad_rows: 5,
        ..DataArgs::csv(path)
    })
    .unwrap_err();
    assert!(matches!(err, IngestError::Empty { .. }), "{err:?}");
}

#[test]
fn errors_can_cross_threads() {
    fn is_send_sync<T: Send + Sync + 'static>() {}
    is_send_sync::<IngestError>();
}

// ---- input resolution --------------------------------------------------------

#[test]
fn format_detection_and_its_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path();
    assert!(matches!(
        load(&DataArgs::default()),
        Err(IngestError::NoInput)
    ));
    let txt = write(dir, "data.txt", "user_id,item_id,timestamp\na,b,1\n");
    let err = load(&DataArgs {
        data: Some(txt.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, IngestError::UnknownFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("--format"), "{err}");
    // The same file loads once the format is given.
    assert_eq!(load(&DataArgs::csv(&txt)).unwrap().interactions.len(), 1);

    let empty_dir = dir.join("nothing");
    fs::create_dir(&empty_dir).unwrap();
    let err = load(&DataArgs {
        data: Some(empty_dir.clone()),
        ..Default::default()
    })
    .unwrap_err();
    assert!(matches!(err, IngestError::UnknownFormat { .. }), "{err:?}");
    assert!(err.to_string().contains("nothing"));

    let err = load(&DataArgs::movielens(&txt)).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::InvalidArgument {
                flag: "--format",
                ..
            }
        ),
        "{err:?}"
    );
    let err = load(&DataArgs::csv(&empty_dir)).unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::InvalidArgument {
                flag: "--format",
                ..
            }
        ),
        "{err:?}"
    );
    let err = load(&DataArgs {
        interactions: Some(dir.join("other.csv")),
        ..DataArgs::csv(&txt)
    })
    .unwrap_err();
    assert!(
        matches!(err, IngestError::InvalidArgument { .. }),
        "{err:?}"
    );
    let ml = tiny_movielens(dir);
    let err = load(&DataArgs {
        rating_col: Some("stars".into()),
        ..DataArgs::movielens(&ml)
    })
    .unwrap_err();
    assert!(
        matches!(
            err,
            IngestError::InvalidArgument {
                flag: "--rating-col",
                ..
            }
        ),
        "{err:?}"
    );
    let err = load(&DataArgs::csv(dir.join("missing.csv"))).unwrap_err();
    assert!(matches!(err, IngestError::Io { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.csv"));
}

#[test]
fn fingerprint_follows_content_not_location() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tiny_movielens(&tmp.path().join("a").tap_create());
    let b = tiny_movielens(&tmp.path().join("b").tap_create());
    let fa = load(&DataArgs::movielens(&a)).unwrap().fingerprint;
    assert_eq!(fa, load(&DataArgs::movielens(&b)).unwrap().fingerprint);
    write(
        &b,
        "u.user",
        "10|25|M|technician|85711\n2|53|F|other|94043\n",
    );
    assert_ne!(fa, load(&DataArgs::movielens(&b)).unwrap().fingerprint);
}

trait TapCreate {
    fn tap_create(self) -> Self;
}

impl TapCreate for PathBuf {
    fn tap_create(self) -> Self {
        fs::create_dir_all(&self).unwrap();
        self
    }
}

// ---- Parquet ----------------------------------------------------------------

mod parquet_files {
    use super::*;
    use ::parquet::arrow::ArrowWriter;
    use arrow_array::types::Int32Type;
    use arrow_array::{
        ArrayRef, BooleanArray, DictionaryArray, Float32Array, Int64Array, RecordBatch,
        StringArray, TimestampMillisecondArray,
    };
    use std::sync::Arc;

    fn write_parquet(path: &Path, columns: Vec<(&str, ArrayRef)>) {
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let file = fs::File::create(path).unwrap();
        let mut w = ArrowWriter::try_new(file, batch.schema(), None).unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }

    #[test]
    fn parquet_round_trip_with_typed_columns() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("events.parquet");
        let kinds: DictionaryArray<Int32Type> = vec![Some("click"), None, Some("purchase")]
            .into_iter()
            .collect();
        write_parquet(
            &path,
            vec![
                (
                    "user_id",
                    Arc::new(Int64Array::from(vec![7, 42, 7])) as ArrayRef,
                ),
                ("item_id", Arc::new(StringArray::from(vec!["a", "b", "c"]))),
                (
                    "timestamp",
                    Arc::new(TimestampMillisecondArray::from(vec![
                        1_000_999, 2_000_000, 3_000_500,
                    ])),
                ),
                (
                    "rating",
                    Arc::new(Float32Array::from(vec![None, Some(4.5), None])),
                ),
                ("kind", Arc::new(kinds)),
                (
                    "ignored",
                    Arc::new(BooleanArray::from(vec![true, false, true])),
                ),
            ],
        );
        let ds = load(&DataArgs {
            data: Some(path.clone()),
            rating_col: Some("rating".into()),
            kind_col: Some("kind".into()),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            rows(&ds),
            vec![
                row(
                    "7",
                    "a",
                    1000,
                    EventKind::Click,
                    EventKind::Click.default_weight()
                ),
                row("42", "b", 2000, EventKind::Rate, 4.5),
                row(
                    "7",
                    "c",
                    3000,
                    EventKind::Purchase,
                    EventKind::Purchase.default_weight()
                ),
            ]
        );
        assert_eq!(ds.fingerprint.len(), 64);
    }

    #[test]
    fn parquet_integer_times_follow_the_time_unit() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("ms.parquet");
        write_parquet(
            &path,
            vec![
                (
                    "user_id",
                    Arc::new(StringArray::from(vec!["u"])) as ArrayRef,
                ),
                ("item_id", Arc::new(Int64Array::from(vec![5]))),
                (
                    "timestamp",
                    Arc::new(Int64Array::from(vec![1_714_564_800_123])),
                ),
                ("weight", Arc::new(Float32Array::from(vec![2.5]))),
            ],
        );
        let ds = load(&DataArgs {
            time_unit: TimeUnit::Millis,
            weight_col: Some("weight".into()),
            ..DataArgs::parquet(&path)
        })
        .unwrap();
        assert_eq!(
            rows(&ds),
            vec![row("u", "5", 1_714_564_800, EventKind::View, 2.5)]
        );
    }

    #[test]
    fn parquet_bad_rows_and_types() {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("nulls.parquet");
        write_parquet(
            &path,
            vec![
                (
                    "user_id",
                    Arc::new(StringArray::from(vec![Some("u"), None])) as ArrayRef,
                ),
                ("item_id", Arc::new(StringArray::from(vec!["a", "b"]))),
                ("timestamp", Arc::new(Int64Array::from(vec![1, 2]))),
            ],
        );
        let err = load(&DataArgs::parquet(&path)).unwrap_err();
        assert!(
            matches!(err, IngestError::InvalidId { line: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("nulls.parquet line 2"), "{err}");

        let path = tmp.path().join("bool-ids.parquet");
        write_parquet(
            &path,
            vec![
                (
                    "user_id",
                    Arc::new(BooleanArray::from(vec![true])) as ArrayRef,
                ),
                ("item_id", Arc::new(StringArray::from(vec!["a"]))),
                ("timestamp", Arc::new(Int64Array::from(vec![1]))),
            ],
        );
        let err = load(&DataArgs::parquet(&path)).unwrap_err();
        assert!(
            matches!(&err, IngestError::UnsupportedColumnType { column, .. } if column == "user_id"),
            "{err:?}"
        );
        assert!(err.to_string().contains("bool-ids.parquet"));

        let garbage = write(tmp.path(), "garbage.parquet", "not parquet at all");
        let err = load(&DataArgs::parquet(garbage)).unwrap_err();
        assert!(matches!(err, IngestError::Parquet { .. }), "{err:?}");
        assert!(err.to_string().contains("garbage.parquet"));
    }
}

// ---- event log ----------------------------------------------------------------

#[test]
fn event_log_directory_as_input() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("events");
    let options = EventLogOptions {
        segment_bytes: 50,
        ..Default::default()
    };
    let (mut w, _) = EventLogWriter::open(&dir, options).unwrap();
    let mut batch = vec![
        LogEvent::new(30, "alice", "book-2", EventKind::Purchase, 6.0),
        LogEvent::new(10, "bob", "book-1", EventKind::Click, 2.5),
    ];
    w.append_batch(&mut batch).unwrap();
    w.append_batch(&mut [LogEvent::new(20, "alice", "book-1", EventKind::Rate, 4.0)])
        .unwrap();
    w.close().unwrap();
    assert!(crate::eventlog::segment_files(&dir).unwrap().len() >= 2);

    for args in [
        DataArgs::eventlog(&dir),
        DataArgs {
            data: Some(dir.clone()),
            ..Default::default()
        },
    ] {
        let ds = load(&args).unwrap();
        assert_eq!(ds.name, "events");
        assert_eq!(
            rows(&ds),
            vec![
                row("bob", "book-1", 10, EventKind::Click, 2.5),
                row("alice", "book-1", 20, EventKind::Rate, 4.0),
                row("alice", "book-2", 30, EventKind::Purchase, 6.0),
            ]
        );
    }
    // Damage in the middle of the log is an error that names the segment.
    let first = crate::eventlog::segment_files(&dir).unwrap()[0].clone();
    let mut bytes = fs::read(&first).unwrap();
    bytes[20] ^= 0xff;
    fs::write(&first, bytes).unwrap();
    let err = load(&DataArgs::eventlog(&dir)).unwrap_err();
    assert!(matches!(err, IngestError::EventLog { .. }), "{err:?}");
    assert!(
        err.to_string().contains("events-00000000000000000001.log"),
        "{err}"
    );
}
