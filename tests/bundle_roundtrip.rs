//! Bundle round trip, atomic placement, and writer input checks.

mod bundle_support;

use bundle_support::*;
use funnel::bundle::shard_index::{build_index, partition};
use funnel::bundle::{
    Bundle, BundleError, BundleWriter, IndexParams, ItemTable, OpenCheck, UserTable, WriteOptions,
};
use funnel::ids::shard_of;
use funnel::matrix::Matrix;
use std::collections::HashMap;

fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[test]
fn every_part_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let s = write_sample(&out, 3, "v1");

    let b = Bundle::open(
        &out,
        &OpenCheck {
            feature_schema_hash: Some(SCHEMA_HASH),
        },
    )
    .unwrap();
    let m = b.manifest();
    assert_eq!(m, &s.manifest);
    assert_eq!(m.model_version, "v1");
    assert_eq!(m.created_at_unix, 1_700_000_000);
    assert_eq!((m.dimension, m.shard_count), (DIM as u32, 3));
    assert_eq!((m.n_items, m.n_users), (60, 20));
    assert_eq!(
        m.components,
        vec!["ann", "user_vectors", "itemcf", "ranker"]
    );
    assert_eq!(m.metrics["recall@10"], serde_json::json!(0.31));

    assert_eq!(b.items().unwrap(), s.items);
    assert_eq!(
        b.users().unwrap(),
        (s.users.clone(), s.user_vectors.clone())
    );
    assert_eq!(
        b.section::<Neighbours>("itemcf").unwrap(),
        Some(s.neighbours.clone())
    );
    assert_eq!(
        b.section::<Vec<f32>>("ranker").unwrap(),
        Some(vec![1.5, -2.0, 0.25])
    );
    assert_eq!(b.section::<Vec<f32>>("absent").unwrap(), None);
    let mut names = b.section_names();
    names.sort();
    assert_eq!(names, vec!["itemcf", "ranker"]);

    let row_of: HashMap<u64, usize> = s
        .items
        .keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, i))
        .collect();
    let mut all_keys = Vec::new();
    for shard in 0..3 {
        let loaded = b.load_shard(shard).unwrap();
        assert_eq!(loaded.shard, shard);
        assert!(loaded.keys.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(loaded.index.size(), loaded.keys.len());
        for (i, &k) in loaded.keys.iter().enumerate() {
            assert_eq!(shard_of(k, 3), shard);
            assert_eq!(loaded.vectors.row(i), s.item_vectors.row(row_of[&k]));
        }
        all_keys.extend(loaded.keys.iter().copied());
    }
    all_keys.sort();
    let mut expected = s.items.keys.clone();
    expected.sort();
    assert_eq!(all_keys, expected, "shards together hold every item once");
    assert!(matches!(
        b.load_shard(3),
        Err(BundleError::ShardOutOfRange {
            shard: 3,
            shard_count: 3
        })
    ));
}

#[test]
fn a_loaded_shard_finds_the_exact_nearest_item_like_the_in_memory_index() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let s = write_sample(&out, 2, "v1");
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    let parts = partition(&s.items.keys, 2);
    for part in &parts {
        let loaded = b.load_shard(part.shard).unwrap();
        let in_memory = build_index(part, &s.item_vectors, &IndexParams::default(), 1).unwrap();
        for (i, &key) in loaded.keys.iter().enumerate() {
            let q = loaded.vectors.row(i);
            let hits = loaded.search(q, 5).unwrap();
            // Unit vectors: an item's own vector is its best inner-product match.
            assert_eq!(hits[0].key, key);
            assert!((hits[0].score - 1.0).abs() < 1e-4, "{}", hits[0].score);
            // Brute force agrees on the whole top 5.
            let mut brute: Vec<(u64, f32)> = loaded
                .keys
                .iter()
                .enumerate()
                .map(|(j, &k)| (k, dot(q, loaded.vectors.row(j))))
                .collect();
            brute.sort_by(|a, b| b.1.total_cmp(&a.1));
            let hit_keys: Vec<u64> = hits.iter().map(|h| h.key).collect();
            let brute_keys: Vec<u64> = brute.iter().take(5).map(|x| x.0).collect();
            assert_eq!(hit_keys, brute_keys);
            for (h, x) in hits.iter().zip(&brute) {
                assert!((h.score - x.1).abs() < 1e-4);
            }
            // The index loaded from disk answers exactly like the one built in memory.
            let mem = in_memory.search(q, 5).unwrap();
            assert_eq!(mem.keys, hit_keys);
            let filtered = loaded.search_filtered(q, 3, |k| k != key).unwrap();
            assert!(filtered.iter().all(|h| h.key != key));
            assert_eq!(filtered[0].key, brute_keys[1]);
        }
        assert!(loaded.search(&[1.0; DIM + 1], 3).is_err());
        assert!(loaded.search(&[f32::NAN; DIM], 3).is_err());
    }
}

#[test]
fn same_input_gives_byte_identical_bundles() {
    let tmp = tempfile::tempdir().unwrap();
    let a = tmp.path().join("a");
    let b = tmp.path().join("b");
    let ma = write_sample(&a, 3, "v1").manifest;
    let mb = write_sample(&b, 3, "v1").manifest;
    assert_eq!(ma, mb);
    for f in &ma.files {
        let x = std::fs::read(a.join(&f.path)).unwrap();
        let y = std::fs::read(b.join(&f.path)).unwrap();
        assert!(x == y, "{} differs between identical writes", f.path);
    }
    assert_eq!(
        std::fs::read(a.join("manifest.json")).unwrap(),
        std::fs::read(b.join("manifest.json")).unwrap()
    );
}

#[test]
fn existing_output_is_refused_unless_forced_and_then_replaced() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    write_sample(&out, 1, "v1");

    let err = BundleWriter::create(&out, WriteOptions::default()).unwrap_err();
    assert!(matches!(err, BundleError::Exists { .. }), "{err}");
    assert!(err.to_string().contains("--force"), "{err}");

    let items = sample_items(4);
    let mut w = BundleWriter::create(
        &out,
        WriteOptions {
            force: true,
            ..WriteOptions::default()
        },
    )
    .unwrap();
    w.put_items(&items).unwrap();
    let m = w.finish(fields("v2")).unwrap();
    assert_eq!(m.model_version, "v2");
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    assert_eq!(b.manifest().model_version, "v2");
    assert_eq!(b.items().unwrap(), items);
    // The old bundle's shard files are gone with it, and nothing is left behind.
    assert!(!out.join("shards").exists());
    assert_eq!(entries(tmp.path()), vec!["model"]);
}

#[test]
fn output_appearing_during_the_write_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let mut w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
    w.put_items(&sample_items(3)).unwrap();
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("precious.txt"), b"keep me").unwrap();
    let err = w.finish(fields("v1")).unwrap_err();
    assert!(matches!(err, BundleError::Exists { .. }), "{err}");
    assert_eq!(std::fs::read(out.join("precious.txt")).unwrap(), b"keep me");
    assert_eq!(entries(tmp.path()), vec!["model"], "temp dir cleaned up");
}

#[test]
fn force_never_replaces_something_that_is_not_a_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("home");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("thesis.tex"), b"years of work").unwrap();
    let err = BundleWriter::create(
        &out,
        WriteOptions {
            force: true,
            ..WriteOptions::default()
        },
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::RefuseReplace { .. }), "{err}");
    assert!(out.join("thesis.tex").exists());

    // An empty directory may be used as the target.
    let empty = tmp.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    let mut w = BundleWriter::create(
        &empty,
        WriteOptions {
            force: true,
            ..WriteOptions::default()
        },
    )
    .unwrap();
    w.put_items(&sample_items(2)).unwrap();
    w.finish(fields("v1")).unwrap();
    Bundle::open(&empty, &OpenCheck::default()).unwrap();
}

#[test]
fn a_writer_dropped_before_finish_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    {
        let items = sample_items(30);
        let mut w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
        w.put_items(&items).unwrap();
        w.put_item_vectors(&items, &unit_vectors(30, 4, 1), 2, IndexParams::default())
            .unwrap();
        assert_eq!(entries(tmp.path()).len(), 1, "only the temp dir exists");
        assert!(!out.exists());
    }
    assert!(!out.exists());
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

#[test]
fn a_failed_finish_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
    let err = w.finish(fields("v1")).unwrap_err();
    assert!(err.to_string().contains("put_items"), "{err}");
    assert!(entries(tmp.path()).is_empty());
}

#[test]
fn bad_vectors_and_mismatched_parts_are_refused_with_a_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let items = sample_items(10);
    let mut w = BundleWriter::create(&tmp.path().join("m"), WriteOptions::default()).unwrap();

    let mut nan = unit_vectors(10, 4, 1);
    nan.row_mut(7)[2] = f32::NAN;
    let err = w
        .put_item_vectors(&items, &nan, 2, IndexParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("item-7") && err.contains("column 2"), "{err}");

    let err = w
        .put_item_vectors(&items, &unit_vectors(9, 4, 1), 2, IndexParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("9 rows") && err.contains("10 items"), "{err}");

    let err = w
        .put_item_vectors(&items, &unit_vectors(10, 4, 1), 0, IndexParams::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("shard count 0"), "{err}");

    let bad_params = IndexParams {
        metric: "l2".into(),
        ..IndexParams::default()
    };
    assert!(w
        .put_item_vectors(&items, &unit_vectors(10, 4, 1), 1, bad_params)
        .is_err());

    w.put_item_vectors(&items, &unit_vectors(10, 4, 1), 2, IndexParams::default())
        .unwrap();
    let users = UserTable {
        ids: vec!["u1".into(), "u2".into()],
        occupation_names: vec![],
    };
    let err = w
        .put_users(&users, &unit_vectors(2, 5, 1))
        .unwrap_err()
        .to_string();
    assert!(err.contains("dimension 4") && err.contains("5"), "{err}");

    let other = ItemTable::from_ids(vec!["x".into()]);
    assert!(w.put_items(&other).is_err(), "a different item table");
    w.put_items(&items).unwrap();

    let err = w.put_section("Bad/Name", &1u8).unwrap_err().to_string();
    assert!(err.contains("section name"), "{err}");
    w.put_section("ok", &1u8).unwrap();
    assert!(w.put_section("ok", &2u8).is_err(), "duplicate section");
}

#[test]
fn feature_dependent_components_need_a_schema_hash() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = BundleWriter::create(&tmp.path().join("m"), WriteOptions::default()).unwrap();
    w.put_items(&sample_items(2)).unwrap();
    let mut f = fields("v1");
    f.feature_schema.hash.clear();
    let err = w.finish(f).unwrap_err().to_string();
    assert!(err.contains("ranker") && err.contains("schema"), "{err}");
}

#[test]
fn a_bundle_without_vectors_or_users_opens() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let items = sample_items(5);
    let mut w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
    w.put_items(&items).unwrap();
    let users = UserTable {
        ids: vec!["a".into()],
        occupation_names: vec![],
    };
    w.put_users(&users, &Matrix::zeros(1, 0)).unwrap();
    let mut f = fields("v1");
    f.components = vec!["popularity".into()];
    f.feature_schema.hash.clear();
    let m = w.finish(f).unwrap();
    assert_eq!(m.components, vec!["users", "popularity"]);
    assert_eq!((m.shard_count, m.dimension), (0, 0));
    // An empty schema hash (no feature-dependent parts) passes any expectation.
    let b = Bundle::open(
        &out,
        &OpenCheck {
            feature_schema_hash: Some("anything"),
        },
    )
    .unwrap();
    assert_eq!(b.items().unwrap(), items);
    let (u, v) = b.users().unwrap();
    assert_eq!(u, users);
    assert_eq!((v.rows(), v.cols()), (1, 0));
    assert!(matches!(
        b.load_shard(0),
        Err(BundleError::ShardOutOfRange { .. })
    ));
}

#[test]
fn more_shards_than_items_gives_loadable_empty_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("m");
    let items = sample_items(3);
    let vectors = unit_vectors(3, 4, 9);
    let mut w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
    w.put_items(&items).unwrap();
    w.put_item_vectors(&items, &vectors, 8, IndexParams::default())
        .unwrap();
    w.finish(fields("v1")).unwrap();
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    let total: usize = (0..8).map(|s| b.load_shard(s).unwrap().keys.len()).sum();
    assert_eq!(total, 3);
    let empty = (0..8)
        .map(|s| b.load_shard(s).unwrap())
        .find(|s| s.keys.is_empty())
        .expect("3 items cannot fill 8 shards");
    assert!(empty.search(&[0.5; 4], 3).unwrap().is_empty());
}

#[test]
fn many_threads_can_search_one_loaded_shard_at_once() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    write_sample(&out, 1, "v1");
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    let mut shard = b.load_shard(0).unwrap();
    assert!(shard.search_threads() >= funnel::bundle::default_search_threads());
    let threads = shard.search_threads() + 8;
    shard.reserve_search_threads(threads).unwrap();
    assert_eq!(shard.search_threads(), threads);
    let shard = &shard;
    std::thread::scope(|scope| {
        for t in 0..threads {
            scope.spawn(move || {
                for round in 0..50 {
                    let i = (t * 7 + round) % shard.keys.len();
                    let hits = shard.search(shard.vectors.row(i), 3).unwrap();
                    assert_eq!(hits[0].key, shard.keys[i]);
                }
            });
        }
    });
}

#[test]
fn a_half_precision_index_round_trips_and_must_match_its_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let items = sample_items(60);
    let vectors = unit_vectors(60, DIM, 11);
    let half = IndexParams {
        quantization: "f16".into(),
        ..IndexParams::default()
    };
    let mut w = BundleWriter::create(&out, WriteOptions::default()).unwrap();
    w.put_items(&items).unwrap();
    w.put_item_vectors(&items, &vectors, 2, half.clone())
        .unwrap();
    let m = w.finish(fields("v-half")).unwrap();
    assert_eq!(m.index.quantization, "f16");
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    for shard in 0..2 {
        let loaded = b.load_shard(shard).unwrap();
        for (i, &key) in loaded.keys.iter().enumerate() {
            let hits = loaded.search(loaded.vectors.row(i), 1).unwrap();
            assert_eq!(
                hits[0].key, key,
                "an item's own unit vector is its best match"
            );
        }
    }
    // an unknown storage kind is refused before anything is written
    let other = tmp.path().join("other");
    let mut w = BundleWriter::create(&other, WriteOptions::default()).unwrap();
    w.put_items(&items).unwrap();
    let err = w
        .put_item_vectors(
            &items,
            &vectors,
            2,
            IndexParams {
                quantization: "i4".into(),
                ..IndexParams::default()
            },
        )
        .unwrap_err()
        .to_string();
    assert!(err.contains("quantization") && err.contains("f16"), "{err}");
}

#[test]
fn reindex_copies_everything_but_the_shards_and_spreads_items_over_the_new_count() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("model");
    let s = write_sample(&src, 2, "v1");
    let out = tmp.path().join("copy");
    let opts = funnel::bundle::ReindexOptions {
        shards: Some(5),
        quantization: Some("f16".into()),
        connectivity: Some(8),
        ..Default::default()
    };
    let m = funnel::bundle::reindex(&src, &out, &opts).unwrap();
    assert_eq!(m.model_version, "v1-reindexed");
    assert_eq!((m.shard_count, m.n_items, m.n_users), (5, 60, 20));
    assert_eq!(
        (m.index.quantization.as_str(), m.index.connectivity),
        ("f16", 8)
    );
    assert_eq!(m.components, s.manifest.components);
    assert_eq!(m.created_at_unix, s.manifest.created_at_unix);
    let b = Bundle::open(&out, &OpenCheck::default()).unwrap();
    assert_eq!(b.items().unwrap(), s.items);
    assert_eq!(
        b.users().unwrap(),
        (s.users.clone(), s.user_vectors.clone())
    );
    for name in ["itemcf", "ranker"] {
        let from = Bundle::open(&src, &OpenCheck::default())
            .unwrap()
            .section_bytes(name)
            .unwrap();
        assert_eq!(
            b.section_bytes(name).unwrap(),
            from,
            "section {name} byte for byte"
        );
    }
    let row_of: HashMap<u64, usize> = s
        .items
        .keys
        .iter()
        .enumerate()
        .map(|(i, &k)| (k, i))
        .collect();
    let mut seen = 0;
    for shard in 0..5 {
        let loaded = b.load_shard(shard).unwrap();
        for (i, &k) in loaded.keys.iter().enumerate() {
            assert_eq!(shard_of(k, 5), shard);
            assert_eq!(loaded.vectors.row(i), s.item_vectors.row(row_of[&k]));
        }
        seen += loaded.keys.len();
    }
    assert_eq!(seen, 60, "every item in exactly one new shard");

    // bad options are refused and write nothing
    let bad = tmp.path().join("bad");
    let err = funnel::bundle::reindex(
        &src,
        &bad,
        &funnel::bundle::ReindexOptions {
            connectivity: Some(1),
            ..Default::default()
        },
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("connectivity"), "{err}");
    assert!(!bad.exists());
    // an existing output needs force
    let again = funnel::bundle::reindex(&src, &out, &opts)
        .unwrap_err()
        .to_string();
    assert!(
        again.contains("exists") || again.contains("force"),
        "{again}"
    );
}
