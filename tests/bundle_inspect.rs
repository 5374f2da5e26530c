//! `inspect`: summary of a verified bundle, and refusal of a damaged one.

mod bundle_support;

use bundle_support::*;
use funnel::bundle::{inspect, inspect_report, BundleError};

#[test]
fn text_summary_of_a_good_bundle() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    let s = write_sample(&out, 3, "v7");
    let text = inspect(&out, false).unwrap();
    for expected in [
        "model        v7",
        "2023-11-14T22:13:20Z",
        "fingerprint  fingerprint-123",
        &format!("schema       v3 {SCHEMA_HASH}"),
        "components   ann, user_vectors, itemcf, ranker",
        "shards (3)",
        "sections (2)",
        "recall@10",
        "0.3100",
        "verification OK",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in\n{text}");
    }
    // The per-shard item counts add up to the items of the bundle.
    let counted: u64 = text
        .lines()
        .skip_while(|l| !l.starts_with("shards"))
        .skip(2)
        .take(3)
        .map(|l| l.split_whitespace().nth(1).unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(counted, s.items.len() as u64);
}

#[test]
fn json_summary_carries_the_manifest_and_shards() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    write_sample(&out, 2, "v1");
    let v: serde_json::Value = serde_json::from_str(&inspect(&out, true).unwrap()).unwrap();
    assert_eq!(v["manifest"]["model_version"], "v1");
    assert_eq!(v["shards"].as_array().unwrap().len(), 2);
    let items: u64 = v["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["items"].as_u64().unwrap())
        .sum();
    assert_eq!(items, 60);
    assert_eq!(v["problems"].as_array().unwrap().len(), 0);
    assert_eq!(
        v["files_checked"].as_u64().unwrap() as usize,
        v["manifest"]["files"].as_array().unwrap().len()
    );
}

#[test]
fn a_damaged_bundle_fails_inspection_naming_every_bad_file() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("model");
    write_sample(&out, 2, "v1");
    for rel in ["shards/shard-0001/index.usearch", "sections/itemcf.bin"] {
        let p = out.join(rel);
        let mut bytes = std::fs::read(&p).unwrap();
        bytes[7] ^= 0x40;
        std::fs::write(&p, bytes).unwrap();
    }
    let err = inspect(&out, false).unwrap_err();
    assert!(matches!(err, BundleError::Checksum { .. }), "{err}");

    let report = inspect_report(&out).unwrap();
    assert!(!report.verified());
    assert_eq!(report.problems.len(), 2, "{:?}", report.problems);
    let text = report.render(false);
    assert!(text.contains("verification FAILED (2 problems)"), "{text}");
    assert!(text.contains("shards/shard-0001/index.usearch"), "{text}");
    assert!(text.contains("sections/itemcf.bin"), "{text}");
}

#[test]
fn inspecting_a_non_bundle_says_so() {
    let tmp = tempfile::tempdir().unwrap();
    let err = inspect(tmp.path(), false).unwrap_err();
    assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
}
