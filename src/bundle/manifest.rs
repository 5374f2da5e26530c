//! The bundle manifest: what a bundle contains, how it was made, and the
//! size and blake3 of every other file in it.
//!
//! Owns: `Manifest` and its parts, the on-disk JSON form of
//! `manifest.json` (including its self-checksum), the bundle's relative
//! file paths, and the format-version rules. Must not touch: the content of
//! the files it lists (other bundle modules decode those).
//!
//! Self-checksum: `manifest.json` is pretty JSON whose last top-level field
//! is `"manifest_blake3"`. Its value is the blake3 of the file's bytes with
//! those 64 hex digits replaced by 64 `0` characters. Every other file is
//! protected by its entry in `files`, so one corrupted byte anywhere in a
//! bundle is detected and blamed on the right file. A reader checks
//! `format_version` before the checksum, so a bundle from a newer funnel
//! gets a version error rather than a corruption error.

use super::error::{BundleError, Result};
use super::fsio::blake3_hex;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Bundle format written by this build.
pub const FORMAT_VERSION: u32 = 1;
/// Oldest bundle format this build still reads.
pub const MIN_FORMAT_VERSION: u32 = 1;
/// The manifest's file name inside a bundle.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Items table (postcard `ItemTable`).
pub const ITEMS_FILE: &str = "items.bin";
/// Users table (postcard `UserTable`).
pub const USERS_FILE: &str = "users.bin";
/// User vectors, raw little-endian f32, `n_users x dimension`.
pub const USER_VECTORS_FILE: &str = "users/vectors.f32";
/// Most shards a bundle may have; keeps shard directory names 4 digits wide.
pub const MAX_SHARDS: u32 = 4096;

/// Component names the writer records by itself; others (ranker, itemcf,
/// ...) are declared by the caller in `ManifestFields::components`.
pub const COMPONENT_ANN: &str = "ann";
pub const COMPONENT_USER_VECTORS: &str = "user_vectors";
pub const COMPONENT_USERS: &str = "users";
/// Components that only make sense with features, so they need a schema hash.
pub const FEATURE_COMPONENTS: &[&str] = &["ranker"];

const CHECKSUM_FIELD: &str = "manifest_blake3";
const CHECKSUM_PLACEHOLDER: &str =
    "0000000000000000000000000000000000000000000000000000000000000000";

/// Which feature definitions a bundle's models were trained with.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchemaRef {
    pub version: u32,
    /// Hash of the feature schema; empty when the bundle contains no
    /// feature-dependent component (then any expected schema is accepted).
    pub hash: String,
}

/// HNSW parameters of the per-shard ANN indexes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IndexParams {
    /// Always "ip" (inner product) in format 1: recall scores are dot products.
    pub metric: String,
    pub connectivity: u32,
    pub expansion_add: u32,
    pub expansion_search: u32,
    /// How the index stores vectors: "f32" (exact) or "f16" (half the
    /// memory a search walks through; shards re-score their hits with the
    /// exact f32 vectors they keep beside the index). Bundles written
    /// before this field existed are f32.
    #[serde(default = "default_quantization")]
    pub quantization: String,
}

fn default_quantization() -> String {
    "f32".to_owned()
}

/// The vector storage kinds an index may use (`IndexParams::quantization`).
pub const QUANTIZATIONS: [&str; 2] = ["f32", "f16"];

impl Default for IndexParams {
    fn default() -> Self {
        IndexParams {
            metric: "ip".to_owned(),
            connectivity: 16,
            expansion_add: 128,
            // Measured on 20k random 64-d vectors: recall@10 0.75 at 64,
            // 0.90 at 128, 0.97 at 256 (examples/bundle_bench.rs).
            expansion_search: 128,
            quantization: default_quantization(),
        }
    }
}

impl IndexParams {
    /// Checks the parameters are usable; the error says which one is not.
    pub fn validate(&self) -> Result<()> {
        if self.metric != "ip" {
            return Err(BundleError::InvalidInput(format!(
                "index metric {:?} is not supported; bundle format {FORMAT_VERSION} uses \"ip\" (inner product)",
                self.metric
            )));
        }
        if !(2..=1024).contains(&self.connectivity) {
            return Err(BundleError::InvalidInput(format!(
                "index connectivity {} is out of range; use 2..=1024 (16 is a good default)",
                self.connectivity
            )));
        }
        if !QUANTIZATIONS.contains(&self.quantization.as_str()) {
            return Err(BundleError::InvalidInput(format!(
                "index quantization {:?} is not supported; use one of {}",
                self.quantization,
                QUANTIZATIONS.join(", ")
            )));
        }
        for (name, v) in [
            ("expansion_add", self.expansion_add),
            ("expansion_search", self.expansion_search),
        ] {
            if !(1..=65_536).contains(&v) {
                return Err(BundleError::InvalidInput(format!(
                    "index {name} {v} is out of range; use 1..=65536"
                )));
            }
        }
        Ok(())
    }
}

/// One file of the bundle, relative to the bundle directory, `/`-separated.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex blake3 of the file's content.
    pub blake3: String,
}

/// Everything a bundle declares about itself (`manifest.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub format_version: u32,
    pub model_version: String,
    pub created_at_unix: i64,
    /// blake3 over the training inputs, to tell bundles from different data apart.
    pub input_fingerprint: String,
    pub feature_schema: FeatureSchemaRef,
    /// Vector dimension shared by item and user vectors (0 without vectors).
    pub dimension: u32,
    /// Number of item shards (0 without an ANN component).
    pub shard_count: u32,
    pub n_items: u64,
    pub n_users: u64,
    pub index: IndexParams,
    /// What this bundle contains: "ann", "user_vectors", "itemcf", "ranker", ...
    pub components: Vec<String>,
    pub metrics: serde_json::Value,
    pub params: serde_json::Value,
    /// Every other file of the bundle, sorted by path.
    pub files: Vec<FileEntry>,
    /// "funnel <version>" of the build that wrote the bundle.
    pub generator: String,
}

/// The part of the manifest the caller decides; the writer fills in the rest.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ManifestFields {
    pub model_version: String,
    /// `None` means "now".
    pub created_at_unix: Option<i64>,
    pub input_fingerprint: String,
    pub feature_schema: FeatureSchemaRef,
    /// Extra components (sections) the caller put in; "ann", "user_vectors"
    /// and "users" are added by the writer from what it was given.
    pub components: Vec<String>,
    pub metrics: serde_json::Value,
    pub params: serde_json::Value,
}

impl Manifest {
    pub fn has_component(&self, name: &str) -> bool {
        self.components.iter().any(|c| c == name)
    }

    /// The manifest entry of a file, by bundle-relative path.
    pub fn file(&self, rel: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == rel)
    }

    /// Sum of the sizes of all listed files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.bytes).sum()
    }
}

/// `generator` value of this build.
pub fn generator() -> String {
    format!("funnel {}", env!("CARGO_PKG_VERSION"))
}

/// Directory of one shard, relative to the bundle.
pub fn shard_dir(shard: u32) -> String {
    format!("shards/shard-{shard:04}")
}

pub fn shard_keys_file(shard: u32) -> String {
    format!("{}/keys.u64", shard_dir(shard))
}

pub fn shard_vectors_file(shard: u32) -> String {
    format!("{}/vectors.f32", shard_dir(shard))
}

pub fn shard_index_file(shard: u32) -> String {
    format!("{}/index.usearch", shard_dir(shard))
}

/// Path of a named section, relative to the bundle.
pub fn section_file(name: &str) -> String {
    format!("sections/{name}.bin")
}

/// Section names become file names: 1-64 of `a-z 0-9 _ - .`, not starting
/// with `.`.
pub fn validate_section_name(name: &str) -> Result<()> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-.".contains(&b));
    if name.is_empty() || name.len() > 64 || !ok_chars || name.starts_with('.') {
        return Err(BundleError::InvalidInput(format!(
            "section name {name:?} is not allowed; use 1-64 characters from a-z, 0-9, '_', '-', '.' (not starting with '.')"
        )));
    }
    Ok(())
}

/// A bundle-relative path from a manifest must stay inside the bundle.
fn is_safe_relative_path(rel: &str) -> bool {
    !rel.is_empty()
        && rel != MANIFEST_FILE
        && !rel.starts_with('/')
        && !rel.contains('\\')
        && !rel.contains('\0')
        && rel
            .split('/')
            .all(|part| !part.is_empty() && part != "." && part != "..")
}

/// Serialises `manifest` to the bytes of `manifest.json`, self-checksum included.
pub fn encode(manifest: &Manifest) -> Vec<u8> {
    #[derive(Serialize)]
    struct OnDisk<'a> {
        #[serde(flatten)]
        manifest: &'a Manifest,
        manifest_blake3: &'a str,
    }
    let mut bytes = serde_json::to_vec_pretty(&OnDisk {
        manifest,
        manifest_blake3: CHECKSUM_PLACEHOLDER,
    })
    .expect("a Manifest is plain data and always serialises to JSON");
    bytes.push(b'\n');
    let at = checksum_position(&bytes, CHECKSUM_PLACEHOLDER)
        .expect("the placeholder was just written as a top-level field");
    let hex = blake3_hex(&bytes);
    bytes[at..at + 64].copy_from_slice(hex.as_bytes());
    bytes
}

/// Byte offset of the checksum's hex digits: the value of the top-level
/// (two-space indented) `manifest_blake3` field, which must occur once.
fn checksum_position(bytes: &[u8], hex: &str) -> Option<usize> {
    let needle = format!("\n  \"{CHECKSUM_FIELD}\": \"{hex}\"");
    let needle = needle.as_bytes();
    let mut found = None;
    for (i, w) in bytes.windows(needle.len()).enumerate() {
        if w == needle {
            if found.is_some() {
                return None;
            }
            found = Some(i + needle.len() - 1 - 64);
        }
    }
    found
}

/// Parses and checks `manifest.json` bytes from bundle `dir`: format
/// version first, then self-checksum, then structure and paths.
pub fn decode(dir: &Path, bytes: &[u8]) -> Result<Manifest> {
    let file = dir.join(MANIFEST_FILE);
    let mut value: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| BundleError::decode(&file, format!("not valid JSON ({e})")))?;
    let Some(obj) = value.as_object_mut() else {
        return Err(BundleError::NotABundle {
            dir: dir.to_path_buf(),
            reason: "manifest.json is not a JSON object".into(),
        });
    };
    let found = match obj.get("format_version").and_then(|v| v.as_u64()) {
        Some(v) => u32::try_from(v).unwrap_or(u32::MAX),
        None => {
            return Err(BundleError::NotABundle {
                dir: dir.to_path_buf(),
                reason: "manifest.json has no numeric format_version".into(),
            })
        }
    };
    check_version(dir, found)?;

    let claimed = match obj.remove(CHECKSUM_FIELD) {
        Some(serde_json::Value::String(s))
            if s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()) =>
        {
            s
        }
        _ => {
            return Err(BundleError::decode(
                &file,
                format!("missing or malformed {CHECKSUM_FIELD}"),
            ))
        }
    };
    let Some(at) = checksum_position(bytes, &claimed) else {
        return Err(BundleError::Checksum {
            file,
            expected: claimed,
            actual: "(manifest was reformatted; its checksum cannot be located)".into(),
        });
    };
    let mut zeroed = bytes.to_vec();
    zeroed[at..at + 64].copy_from_slice(CHECKSUM_PLACEHOLDER.as_bytes());
    let actual = blake3_hex(&zeroed);
    if actual != claimed {
        return Err(BundleError::Checksum {
            file,
            expected: claimed,
            actual,
        });
    }

    let manifest: Manifest = serde_json::from_value(value)
        .map_err(|e| BundleError::decode(&file, format!("unexpected structure ({e})")))?;
    validate(&file, &manifest)?;
    Ok(manifest)
}

/// Refuses bundle formats this build cannot read, saying which funnel can.
pub fn check_version(dir: &Path, found: u32) -> Result<()> {
    if (MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&found) {
        return Ok(());
    }
    let advice = if found > FORMAT_VERSION {
        format!("it was written by a newer funnel: upgrade to a funnel that reads bundle format {found}")
    } else {
        format!(
            "it was written by an older funnel: re-create it (retrain or re-import) with this funnel, or use a funnel that reads bundle format {found}"
        )
    };
    Err(BundleError::Version {
        dir: dir.to_path_buf(),
        found,
        min_supported: MIN_FORMAT_VERSION,
        max_supported: FORMAT_VERSION,
        this_funnel: env!("CARGO_PKG_VERSION").to_owned(),
        advice,
    })
}

/// Structural rules a manifest must follow beyond parsing as JSON.
fn validate(file: &Path, m: &Manifest) -> Result<()> {
    let bad = |reason: String| Err(BundleError::decode(file, reason));
    let mut seen = std::collections::HashSet::new();
    for f in &m.files {
        if !is_safe_relative_path(&f.path) {
            return bad(format!(
                "file path {:?} is not a plain relative path inside the bundle",
                f.path
            ));
        }
        if !seen.insert(f.path.as_str()) {
            return bad(format!("file {:?} is listed twice", f.path));
        }
        if f.blake3.len() != 64 || !f.blake3.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad(format!("file {:?} has a malformed blake3", f.path));
        }
    }
    if m.index.metric != "ip" {
        return bad(format!("index metric {:?} is not \"ip\"", m.index.metric));
    }
    if m.file(ITEMS_FILE).is_none() {
        return bad(format!("{ITEMS_FILE} is not listed"));
    }
    if m.shard_count > MAX_SHARDS {
        return bad(format!(
            "shard_count {} exceeds the maximum {MAX_SHARDS}",
            m.shard_count
        ));
    }
    if m.has_component(COMPONENT_ANN) {
        if m.dimension == 0 || m.shard_count == 0 {
            return bad("component \"ann\" needs dimension > 0 and shard_count > 0".into());
        }
        for s in 0..m.shard_count {
            for rel in [
                shard_keys_file(s),
                shard_vectors_file(s),
                shard_index_file(s),
            ] {
                if m.file(&rel).is_none() {
                    return bad(format!("{rel} is not listed"));
                }
            }
        }
    } else if m.shard_count != 0 {
        return bad("shard_count is set but the bundle has no \"ann\" component".into());
    }
    if m.has_component(COMPONENT_USER_VECTORS) {
        if m.dimension == 0 {
            return bad("component \"user_vectors\" needs dimension > 0".into());
        }
        for rel in [USERS_FILE, USER_VECTORS_FILE] {
            if m.file(rel).is_none() {
                return bad(format!("{rel} is not listed"));
            }
        }
    }
    if m.has_component(COMPONENT_USERS) && m.file(USERS_FILE).is_none() {
        return bad(format!("{USERS_FILE} is not listed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format_version: FORMAT_VERSION,
            model_version: "v1".into(),
            created_at_unix: 1_700_000_000,
            input_fingerprint: "abc".into(),
            feature_schema: FeatureSchemaRef {
                version: 1,
                hash: "h".into(),
            },
            dimension: 0,
            shard_count: 0,
            n_items: 1,
            n_users: 0,
            index: IndexParams::default(),
            components: vec![],
            metrics: serde_json::json!({"recall@10": 0.25, "nested": {"manifest_blake3": "x"}}),
            params: serde_json::json!({}),
            files: vec![FileEntry {
                path: ITEMS_FILE.into(),
                bytes: 3,
                blake3: blake3_hex(b"abc"),
            }],
            generator: generator(),
        }
    }

    #[test]
    fn round_trips_and_detects_any_changed_value() {
        let m = sample();
        let bytes = encode(&m);
        assert_eq!(decode(Path::new("b"), &bytes).unwrap(), m);
        // Change one digit of a value that still parses: only the checksum can tell.
        let text = String::from_utf8(bytes).unwrap();
        let changed = text.replace("1700000000", "1700000001");
        assert_ne!(changed, text);
        let err = decode(Path::new("b"), changed.as_bytes()).unwrap_err();
        assert!(matches!(err, BundleError::Checksum { .. }), "{err}");
        assert!(err.file().unwrap().ends_with(MANIFEST_FILE));
    }

    #[test]
    fn version_is_checked_before_checksum() {
        let mut m = sample();
        m.format_version = 999;
        let err = decode(Path::new("b"), &encode(&m)).unwrap_err();
        match err {
            BundleError::Version { found: 999, .. } => {
                assert!(err.to_string().contains("newer funnel"), "{err}")
            }
            other => panic!("expected a version error, got {other}"),
        }
        let raw = br#"{"format_version": 0}"#;
        let err = decode(Path::new("b"), raw).unwrap_err();
        assert!(err.to_string().contains("older funnel"), "{err}");
    }

    #[test]
    fn paths_outside_the_bundle_are_refused() {
        for p in ["../x", "/etc/passwd", "a//b", "a/./b", "manifest.json", ""] {
            let mut m = sample();
            m.files.push(FileEntry {
                path: p.into(),
                bytes: 0,
                blake3: blake3_hex(b""),
            });
            let err = decode(Path::new("b"), &encode(&m)).unwrap_err();
            assert!(matches!(err, BundleError::Decode { .. }), "{p}: {err}");
        }
        assert!(is_safe_relative_path("shards/shard-0000/keys.u64"));
    }

    #[test]
    fn section_names_are_restricted() {
        assert!(validate_section_name("itemcf").is_ok());
        assert!(validate_section_name("eval_report-2.v1").is_ok());
        for bad in ["", ".hidden", "a/b", "Upper", "x".repeat(65).as_str()] {
            assert!(validate_section_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn foreign_json_is_not_a_bundle() {
        let err = decode(Path::new("b"), br#"{"name": "web app"}"#).unwrap_err();
        assert!(matches!(err, BundleError::NotABundle { .. }), "{err}");
    }
}
