//! The crate's modules form layers and every import points down: a module
//! may use only modules of lower layers (`crate::x` paths in its non-test
//! code). A new upward (or same-layer) import fails here with the file
//! that made it, so the dependency graph cannot drift back into cycles.
//! The layers are the architecture's (docs/architecture.md, "Modules");
//! a new module must be placed in one.
//!
//! It also caps a source file's non-test code at `MAX_FILE_LINES`, so one
//! file cannot grow back into a grab-bag of concepts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Lowest first. A module may import any module of an earlier line.
const LAYERS: &[&[&str]] = &[
    // foundations: ids, numbers, plumbing every layer may use
    &[
        "ids",
        "rng",
        "matrix",
        "sparse",
        "progress",
        "failpoints",
        "telemetry",
        "auth",
        "net",
        "http_client",
        "testdata",
        "proto",
    ],
    &["linalg", "dataset", "tls"],
    // data on disk, the control plane, the feature definitions
    &["bundle", "eventlog", "features", "gen", "cluster"],
    &["ingest", "recall", "shard", "userstate", "admin"],
    &["ranking"],
    &["config", "training"],
    &["eval", "model", "service", "bench"],
    &["catalog"],
    // serving, top down: api -> node -> coordinator -> routing -> shard
    &["routing"],
    &["coordinator"],
    // the control plane's drivers, acting on the node through a trait
    &["control"],
    &["node"],
    &["api"],
    &["demo"],
];

fn layer_of() -> BTreeMap<&'static str, usize> {
    let mut out = BTreeMap::new();
    for (i, mods) in LAYERS.iter().enumerate() {
        for m in mods.iter() {
            assert!(out.insert(*m, i).is_none(), "{m} is in two layers");
        }
    }
    out
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The file's text without its unit tests (`#[cfg(test)] mod ...` to the
/// end of the file, where this crate keeps them); test-only files are empty.
fn non_test_code(path: &Path, text: &str) -> String {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return String::new();
    }
    match text.find("#[cfg(test)]\nmod ") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    }
}

/// Top-level modules named by `crate::name` paths in `code`.
fn crate_paths(code: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = code;
    while let Some(i) = rest.find("crate::") {
        let before = rest[..i].chars().last();
        rest = &rest[i + "crate::".len()..];
        // `funnel_crate::` or `$crate::` are other things
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_' || c == '$') {
            continue;
        }
        let name: String = rest
            .chars()
            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
            .collect();
        // `crate::failpoint!` is a macro at the crate root, not a module
        let is_macro = rest[name.len()..].starts_with('!');
        if !name.is_empty() && !is_macro {
            out.push(name);
        }
    }
    out
}

#[test]
fn every_import_points_to_a_lower_layer() {
    let layers = layer_of();
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut seen_modules = std::collections::BTreeSet::new();
    let mut wrong = Vec::new();
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .iter()
            .next()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".rs")
            .to_string();
        if top == "main" || top == "lib" {
            continue;
        }
        seen_modules.insert(top.clone());
        let Some(&mine) = layers.get(top.as_str()) else {
            wrong.push(format!(
                "src/{}: module `{top}` is in no layer; add it to LAYERS in tests/module_layers.rs and to docs/architecture.md",
                rel.display()
            ));
            continue;
        };
        let text = std::fs::read_to_string(f).unwrap();
        for name in crate_paths(&non_test_code(f, &text)) {
            if name == top {
                continue;
            }
            match layers.get(name.as_str()) {
                Some(&theirs) if theirs < mine => {}
                Some(&theirs) => wrong.push(format!(
                    "src/{}: `{top}` (layer {mine}) uses `crate::{name}` (layer {theirs}): imports must point to a lower layer",
                    rel.display()
                )),
                None => wrong.push(format!(
                    "src/{}: `crate::{name}` is not a module in LAYERS",
                    rel.display()
                )),
            }
        }
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // LAYERS holds exactly the crate's modules (lib.rs declares them,
    // some inline), so the list stays the crate's
    let lib = std::fs::read_to_string(src.join("lib.rs")).unwrap();
    let declared: std::collections::BTreeSet<String> = lib
        .lines()
        .filter_map(|l| l.trim().strip_prefix("pub mod "))
        .map(|rest| rest.trim_end_matches([';', '{', ' ']).to_string())
        .collect();
    let listed: std::collections::BTreeSet<String> = layers.keys().map(|m| m.to_string()).collect();
    assert_eq!(listed, declared, "LAYERS vs the modules lib.rs declares");
    assert!(seen_modules.is_subset(&declared), "{seen_modules:?}");
}

/// Past this many lines of non-test code a file holds more than one
/// concept; split it (unit tests may move to a sibling `tests.rs`).
const MAX_FILE_LINES: usize = 800;

#[test]
fn no_source_file_is_over_the_size_limit() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    files.sort();
    let mut over = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let lines = non_test_code(f, &text).lines().count();
        if lines > MAX_FILE_LINES {
            over.push(format!(
                "src/{}: {lines} lines of non-test code (limit {MAX_FILE_LINES}); split it by concept",
                f.strip_prefix(&src).unwrap().display()
            ));
        }
    }
    assert!(over.is_empty(), "{}", over.join("\n"));
}

#[test]
fn the_scan_sees_imports_and_skips_unit_tests() {
    let code = "use crate::shard::X;\nfn f() { crate::ids::item_key(\"a\"); $crate::no; crate::failpoint!(\"x\"); }\n#[cfg(test)]\nmod tests { use crate::api::Y; }\n";
    let kept = non_test_code(Path::new("src/x.rs"), code);
    assert_eq!(crate_paths(&kept), vec!["shard", "ids"]);
    assert!(non_test_code(Path::new("src/y/tests.rs"), code).is_empty());
}

#[test]
fn the_architecture_table_names_every_module() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let doc = std::fs::read_to_string(root.join("docs/architecture.md")).unwrap();
    let table = doc
        .split("## Modules")
        .nth(1)
        .expect("docs/architecture.md has a Modules section");
    let mut named = std::collections::BTreeSet::new();
    for row in table.lines().take_while(|l| !l.starts_with("## ")) {
        let Some(first) = row.strip_prefix('|').and_then(|r| r.split('|').next()) else {
            continue;
        };
        for part in first.split('`').skip(1).step_by(2) {
            named.insert(part.to_string());
        }
    }
    let listed: std::collections::BTreeSet<String> =
        layer_of().keys().map(|m| m.to_string()).collect();
    let missing: Vec<_> = listed.difference(&named).collect();
    let extra: Vec<_> = named.difference(&listed).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "docs/architecture.md's module table lacks {missing:?} and names {extra:?}, which are not modules"
    );
}
