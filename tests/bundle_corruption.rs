//! Corrupted, truncated, foreign and mismatched bundles are refused with an
//! error that names the bad file.

mod bundle_support;

use bundle_support::*;
use funnel::bundle::manifest::{self, Manifest, MANIFEST_FILE};
use funnel::bundle::{Bundle, BundleError, OpenCheck};
use std::path::{Path, PathBuf};

const SHARDS: u32 = 2;

fn fresh() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    write_sample(&out, SHARDS, "v1");
    (tmp, out)
}

fn open(dir: &Path) -> Result<Bundle, BundleError> {
    Bundle::open(dir, &OpenCheck::default())
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).unwrap();
    let at = at.min(bytes.len() - 1);
    bytes[at] ^= 0x01;
    std::fs::write(path, bytes).unwrap();
}

fn assert_names(err: &BundleError, rel: &str) {
    let file = err
        .file()
        .unwrap_or_else(|| panic!("error names no file: {err}"));
    assert!(
        file.ends_with(rel),
        "error names {file:?}, expected {rel}: {err}"
    );
    assert!(
        err.to_string().contains(rel),
        "message must name {rel}: {err}"
    );
}

/// Opens the bundle and, for shard files, loads every shard: the first
/// error is what a serving node would see.
fn open_and_load_all(dir: &Path) -> Result<(), BundleError> {
    let b = open(dir)?;
    b.items()?;
    b.users()?;
    b.section::<Neighbours>("itemcf")?;
    b.section::<Vec<f32>>("ranker")?;
    for s in 0..b.manifest().shard_count {
        b.load_shard(s)?;
    }
    Ok(())
}

const DATA_FILES: &[&str] = &[
    "items.bin",
    "users.bin",
    "users/vectors.f32",
    "sections/itemcf.bin",
    "sections/ranker.bin",
    "shards/shard-0000/keys.u64",
    "shards/shard-0000/vectors.f32",
    "shards/shard-0000/index.usearch",
    "shards/shard-0001/index.usearch",
];

#[test]
fn one_flipped_byte_in_any_data_file_is_blamed_on_that_file() {
    for rel in DATA_FILES {
        for where_ in [0usize, 13, usize::MAX] {
            let (_tmp, out) = fresh();
            flip_byte(&out.join(rel), where_);
            let err = open_and_load_all(&out).unwrap_err();
            assert!(
                matches!(err, BundleError::Checksum { .. }),
                "{rel}@{where_}: {err}"
            );
            assert_names(&err, rel);
        }
    }
}

#[test]
fn shard_files_are_verified_only_when_that_shard_is_loaded() {
    let (_tmp, out) = fresh();
    flip_byte(&out.join("shards/shard-0001/vectors.f32"), 5);
    let b = open(&out).expect("open does not read shard files");
    b.load_shard(0).expect("shard 0 is intact");
    let err = b.load_shard(1).unwrap_err();
    assert_names(&err, "shards/shard-0001/vectors.f32");
}

#[test]
fn a_file_changed_after_open_is_still_caught() {
    let (_tmp, out) = fresh();
    let b = open(&out).unwrap();
    flip_byte(&out.join("items.bin"), 3);
    let err = b.items().unwrap_err();
    assert!(matches!(err, BundleError::Checksum { .. }), "{err}");
    assert_names(&err, "items.bin");
}

#[test]
fn truncated_extended_and_missing_files_are_named() {
    for rel in DATA_FILES {
        let (_tmp, out) = fresh();
        let path = out.join(rel);
        let len = std::fs::metadata(&path).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        f.set_len(len - 1).unwrap();
        let err = open_and_load_all(&out).unwrap_err();
        assert!(matches!(err, BundleError::Truncated { .. }), "{rel}: {err}");
        assert_names(&err, rel);

        f.set_len(len + 4).unwrap();
        let err = open_and_load_all(&out).unwrap_err();
        assert!(matches!(err, BundleError::Oversized { .. }), "{rel}: {err}");
        assert_names(&err, rel);

        std::fs::remove_file(&path).unwrap();
        let err = open_and_load_all(&out).unwrap_err();
        assert!(
            matches!(err, BundleError::MissingFile { .. }),
            "{rel}: {err}"
        );
        assert_names(&err, rel);
    }
}

#[test]
fn every_single_byte_change_in_the_manifest_is_refused() {
    let (_tmp, out) = fresh();
    let path = out.join(MANIFEST_FILE);
    let original = std::fs::read(&path).unwrap();
    for at in 0..original.len() {
        let mut bytes = original.clone();
        bytes[at] ^= 0x01;
        std::fs::write(&path, &bytes).unwrap();
        match open(&out) {
            Ok(_) => panic!(
                "byte {at} ({:?}) changed and the bundle still opened",
                original[at] as char
            ),
            Err(e @ (BundleError::Checksum { .. } | BundleError::Decode { .. })) => {
                assert_names(&e, MANIFEST_FILE)
            }
            // A changed format_version digit or a damaged key is reported
            // as a foreign manifest, which is also a refusal.
            Err(BundleError::Version { .. } | BundleError::NotABundle { .. }) => {}
            Err(other) => panic!("byte {at}: unexpected error {other}"),
        }
    }
}

#[test]
fn a_missing_or_truncated_manifest_means_not_a_bundle() {
    let (_tmp, out) = fresh();
    let path = out.join(MANIFEST_FILE);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let err = open(&out).unwrap_err();
    assert_names(&err, MANIFEST_FILE);

    std::fs::remove_file(&path).unwrap();
    let err = open(&out).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
    assert!(err.to_string().contains("no manifest.json"), "{err}");

    let err = open(&out.join("nowhere")).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
}

#[test]
fn a_manifest_from_a_newer_format_gets_a_version_error() {
    let (_tmp, out) = fresh();
    let path = out.join(MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["format_version"] = serde_json::json!(999);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
    let err = open(&out).unwrap_err();
    match &err {
        BundleError::Version { found, .. } => assert_eq!(*found, 999),
        other => panic!("expected a version error, got {other}"),
    }
    let msg = err.to_string();
    assert!(msg.contains("999") && msg.contains("upgrade"), "{msg}");
}

#[test]
fn a_schema_mismatch_names_both_hashes() {
    let (_tmp, out) = fresh();
    let err = Bundle::open(
        &out,
        &OpenCheck {
            feature_schema_hash: Some("schema-hash-b"),
        },
    )
    .unwrap_err();
    assert!(matches!(err, BundleError::Schema { .. }), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains(SCHEMA_HASH) && msg.contains("schema-hash-b"),
        "{msg}"
    );
    assert!(msg.contains("retrain"), "{msg}");
}

#[test]
fn a_section_read_as_the_wrong_type_is_a_decode_error_naming_it() {
    let (_tmp, out) = fresh();
    let b = open(&out).unwrap();
    let err = b.section::<Vec<String>>("itemcf").unwrap_err();
    assert!(matches!(err, BundleError::Decode { .. }), "{err}");
    assert_names(&err, "sections/itemcf.bin");
}

#[test]
fn unlisted_files_are_ignored() {
    let (_tmp, out) = fresh();
    std::fs::write(out.join("shards/shard-0000/notes.txt"), b"hello").unwrap();
    std::fs::write(out.join("sections/stray.bin"), b"\x05junk").unwrap();
    let b = open(&out).unwrap();
    b.load_shard(0).unwrap();
    assert_eq!(b.section::<Vec<u8>>("stray").unwrap(), None);
}

/// Rewrites the manifest (with a valid self-checksum) after `edit`, and
/// replaces file `rel` with `content`, re-recording its size and hash: a
/// bundle that passes every checksum but lies about its content.
fn rewrite(out: &Path, rel: Option<(&str, Vec<u8>)>, edit: impl FnOnce(&mut Manifest)) {
    let path = out.join(MANIFEST_FILE);
    let mut m = manifest::decode(out, &std::fs::read(&path).unwrap()).unwrap();
    if let Some((rel, content)) = rel {
        std::fs::write(out.join(rel), &content).unwrap();
        let e = m.files.iter_mut().find(|f| f.path == rel).unwrap();
        e.bytes = content.len() as u64;
        e.blake3 = blake3::hash(&content).to_hex().to_string();
    }
    edit(&mut m);
    std::fs::write(&path, manifest::encode(&m)).unwrap();
}

#[test]
fn consistent_checksums_do_not_make_inconsistent_content_trusted() {
    // Item count in the manifest disagrees with items.bin.
    let (_tmp, out) = fresh();
    rewrite(&out, None, |m| m.n_items += 1);
    let err = open(&out).unwrap().items().unwrap_err();
    assert!(matches!(err, BundleError::Decode { .. }), "{err}");
    assert_names(&err, "items.bin");

    // Vectors file whose size is not n x dim x 4.
    let (_tmp2, out) = fresh();
    rewrite(
        &out,
        Some(("shards/shard-0000/vectors.f32", vec![0u8; 12])),
        |_| {},
    );
    let err = open(&out).unwrap().load_shard(0).unwrap_err();
    assert_names(&err, "shards/shard-0000/vectors.f32");

    // Keys file that is not a whole number of u64.
    let (_tmp3, out) = fresh();
    rewrite(
        &out,
        Some(("shards/shard-0001/keys.u64", vec![1u8; 9])),
        |_| {},
    );
    let err = open(&out).unwrap().load_shard(1).unwrap_err();
    assert_names(&err, "shards/shard-0001/keys.u64");

    // Index file swapped between shards: keys do not match the index.
    let (_tmp4, out) = fresh();
    let other = std::fs::read(out.join("shards/shard-0001/index.usearch")).unwrap();
    rewrite(
        &out,
        Some(("shards/shard-0000/index.usearch", other)),
        |_| {},
    );
    let err = open(&out).unwrap().load_shard(0).unwrap_err();
    assert!(matches!(err, BundleError::Decode { .. }), "{err}");
    assert_names(&err, "shards/shard-0000/index.usearch");

    // Garbage where a usearch index should be.
    let (_tmp5, out) = fresh();
    rewrite(
        &out,
        Some(("shards/shard-0000/index.usearch", vec![7u8; 100])),
        |_| {},
    );
    let err = open(&out).unwrap().load_shard(0).unwrap_err();
    assert_names(&err, "shards/shard-0000/index.usearch");

    // A real index cut short at several points (manifest updated to match).
    for fraction in [2, 3, 10] {
        let (_tmp, out) = fresh();
        let full = std::fs::read(out.join("shards/shard-0000/index.usearch")).unwrap();
        let cut = full[..full.len() - full.len() / fraction].to_vec();
        rewrite(&out, Some(("shards/shard-0000/index.usearch", cut)), |_| {});
        let err = open(&out).unwrap().load_shard(0).unwrap_err();
        assert_names(&err, "shards/shard-0000/index.usearch");
    }

    // User vectors listed with the wrong dimension.
    let (_tmp6, out) = fresh();
    rewrite(&out, None, |m| m.dimension += 1);
    let err = open(&out).unwrap().users().unwrap_err();
    assert_names(&err, "users/vectors.f32");

    // Garbage postcard.
    let (_tmp7, out) = fresh();
    rewrite(&out, Some(("items.bin", vec![0xff; 40])), |_| {});
    let err = open(&out).unwrap().items().unwrap_err();
    assert!(matches!(err, BundleError::Decode { .. }), "{err}");
    assert_names(&err, "items.bin");

    // A shard listed in shard_count but missing from the file list.
    let (_tmp8, out) = fresh();
    rewrite(&out, None, |m| m.shard_count = 3);
    let err = open(&out).unwrap_err();
    assert!(matches!(err, BundleError::Decode { .. }), "{err}");
    assert_names(&err, MANIFEST_FILE);
}
