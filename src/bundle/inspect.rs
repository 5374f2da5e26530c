//! `funnel inspect`: a readable (or JSON) summary of a bundle, produced
//! after verifying every file in it.
//!
//! Owns: `InspectReport`, its text and JSON rendering. Must not touch: the
//! bundle (read-only) or the decoding rules (it calls `Bundle`).

use super::error::{BundleError, Result};
use super::fsio::verify_streaming;
use super::manifest::{shard_keys_file, Manifest, MANIFEST_FILE};
use super::reader::Bundle;
use serde::Serialize;
use std::collections::HashSet;
use std::fmt::Write as _;
use std::path::Path;

/// One shard as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ShardSummary {
    pub shard: u32,
    pub items: u64,
    pub bytes: u64,
}

/// One named section as listed in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SectionSummary {
    pub name: String,
    pub bytes: u64,
}

/// Everything `inspect` found, including every verification problem.
#[derive(Debug, Serialize)]
pub struct InspectReport {
    pub dir: String,
    pub manifest: Manifest,
    pub shards: Vec<ShardSummary>,
    pub sections: Vec<SectionSummary>,
    pub files_checked: usize,
    pub bytes_checked: u64,
    /// Human-readable problems; empty when the bundle verified.
    pub problems: Vec<String>,
    #[serde(skip)]
    first_error: Option<BundleError>,
}

impl InspectReport {
    pub fn verified(&self) -> bool {
        self.problems.is_empty()
    }

    /// The report as pretty text, or as JSON when `json` is set.
    pub fn render(&self, json: bool) -> String {
        if json {
            return serde_json::to_string_pretty(self)
                .expect("the report is plain data and always serialises");
        }
        render_text(self)
    }

    /// The first verification error, if any (the one `inspect` returns).
    pub fn into_error(self) -> Option<BundleError> {
        self.first_error
    }
}

/// Verifies the bundle at `dir` completely (every file's size and blake3,
/// the decodable parts decoded, every shard loaded) and returns the summary
/// as text or JSON. A bundle that fails verification is an error: the first
/// problem found, naming its file. Use `inspect_report` to get the summary
/// of a damaged bundle as well.
pub fn inspect(dir: &Path, json: bool) -> Result<String> {
    let report = inspect_report(dir)?;
    if report.verified() {
        return Ok(report.render(json));
    }
    Err(report
        .into_error()
        .expect("a report with problems keeps its first error"))
}

/// Reads the manifest of `dir` and verifies everything, recording problems
/// instead of stopping at the first. Fails only when the manifest itself
/// cannot be read.
pub fn inspect_report(dir: &Path) -> Result<InspectReport> {
    let bundle = Bundle::open_unverified(dir)?;
    let m = bundle.manifest().clone();
    let mut report = InspectReport {
        dir: dir.display().to_string(),
        shards: shard_summaries(&m),
        sections: section_summaries(&m),
        manifest: m,
        files_checked: 0,
        bytes_checked: 0,
        problems: Vec::new(),
        first_error: None,
    };

    let mut bad_files: HashSet<String> = HashSet::new();
    for entry in &report.manifest.files.clone() {
        match verify_streaming(dir, entry) {
            Ok(()) => {
                report.files_checked += 1;
                report.bytes_checked += entry.bytes;
            }
            Err(e) => {
                bad_files.insert(entry.path.clone());
                record(&mut report, e);
            }
        }
    }
    // Decode what can be decoded without knowing section types; files that
    // already failed their checksum are not reported twice.
    let shard_files_ok = |s: u32| {
        !bad_files
            .iter()
            .any(|p| p.starts_with(&format!("{}/", super::manifest::shard_dir(s))))
    };
    let mut item_keys = None;
    if !bad_files.contains(super::manifest::ITEMS_FILE) {
        match bundle.items() {
            Ok(items) => item_keys = Some(items.keys.into_iter().collect::<HashSet<u64>>()),
            Err(e) => record(&mut report, e),
        }
    }
    if !bad_files.iter().any(|p| p.starts_with("users")) {
        if let Err(e) = bundle.users() {
            record(&mut report, e);
        }
    }
    let mut keys_in_shards = 0u64;
    for s in 0..report.manifest.shard_count {
        if !shard_files_ok(s) {
            continue;
        }
        match bundle.load_shard(s) {
            Ok(shard) => {
                keys_in_shards += shard.keys.len() as u64;
                if let Some(all) = &item_keys {
                    if let Some(k) = shard.keys.iter().find(|k| !all.contains(k)) {
                        record(
                            &mut report,
                            BundleError::decode(
                                dir.join(shard_keys_file(s)),
                                format!("key {k:#018x} is not an item of items.bin"),
                            ),
                        );
                    }
                }
            }
            Err(e) => record(&mut report, e),
        }
    }
    let all_shards_checked = (0..report.manifest.shard_count).all(shard_files_ok);
    if report.manifest.shard_count > 0
        && all_shards_checked
        && report.problems.is_empty()
        && keys_in_shards != report.manifest.n_items
    {
        let n_items = report.manifest.n_items;
        record(
            &mut report,
            BundleError::decode(
                dir.join(MANIFEST_FILE),
                format!("shards hold {keys_in_shards} items but the manifest says {n_items}"),
            ),
        );
    }
    Ok(report)
}

fn record(report: &mut InspectReport, e: BundleError) {
    report.problems.push(e.to_string());
    if report.first_error.is_none() {
        report.first_error = Some(e);
    }
}

fn shard_summaries(m: &Manifest) -> Vec<ShardSummary> {
    (0..m.shard_count)
        .map(|s| {
            let prefix = format!("{}/", super::manifest::shard_dir(s));
            let bytes = m
                .files
                .iter()
                .filter(|f| f.path.starts_with(&prefix))
                .map(|f| f.bytes)
                .sum();
            let items = m.file(&shard_keys_file(s)).map_or(0, |f| f.bytes / 8);
            ShardSummary {
                shard: s,
                items,
                bytes,
            }
        })
        .collect()
}

fn section_summaries(m: &Manifest) -> Vec<SectionSummary> {
    m.files
        .iter()
        .filter_map(|f| {
            let name = f.path.strip_prefix("sections/")?.strip_suffix(".bin")?;
            Some(SectionSummary {
                name: name.to_owned(),
                bytes: f.bytes,
            })
        })
        .collect()
}

/// 1536 -> "1.5 KiB".
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

/// Unix seconds as an ISO-8601 UTC timestamp (proleptic Gregorian), using
/// the days-to-civil conversion described by Howard Hinnant.
pub fn utc_timestamp(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Flattens a JSON metrics value into (dotted key, shown value) rows.
fn metric_rows(value: &serde_json::Value, prefix: &str, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                metric_rows(v, &key, out);
            }
        }
        serde_json::Value::Null if prefix.is_empty() => {}
        serde_json::Value::Number(n) => match n.as_f64() {
            Some(f) if n.is_f64() => out.push((prefix.to_owned(), format!("{f:.4}"))),
            _ => out.push((prefix.to_owned(), n.to_string())),
        },
        serde_json::Value::String(s) => out.push((prefix.to_owned(), s.clone())),
        other => {
            let mut s = other.to_string();
            if s.len() > 60 {
                s.truncate(57);
                s.push_str("...");
            }
            out.push((prefix.to_owned(), s));
        }
    }
}

const MAX_METRIC_ROWS: usize = 40;

fn render_text(r: &InspectReport) -> String {
    let m = &r.manifest;
    let mut s = String::new();
    let schema = if m.feature_schema.hash.is_empty() {
        "none (no feature-dependent components)".to_owned()
    } else {
        format!("v{} {}", m.feature_schema.version, m.feature_schema.hash)
    };
    let components = if m.components.is_empty() {
        "-".to_owned()
    } else {
        m.components.join(", ")
    };
    let rows: [(&str, String); 12] = [
        ("bundle", r.dir.clone()),
        (
            "format",
            format!("{} (written by {})", m.format_version, m.generator),
        ),
        ("model", m.model_version.clone()),
        (
            "created",
            format!(
                "{} ({})",
                utc_timestamp(m.created_at_unix),
                m.created_at_unix
            ),
        ),
        ("fingerprint", m.input_fingerprint.clone()),
        ("schema", schema),
        ("dimension", m.dimension.to_string()),
        ("items", m.n_items.to_string()),
        ("users", m.n_users.to_string()),
        ("components", components),
        (
            "index",
            format!(
                "{} {}, connectivity {}, expansion add {} / search {}",
                m.index.metric,
                m.index.quantization,
                m.index.connectivity,
                m.index.expansion_add,
                m.index.expansion_search
            ),
        ),
        (
            "size",
            format!(
                "{} in {} files",
                human_bytes(m.total_bytes()),
                m.files.len() + 1
            ),
        ),
    ];
    for (k, v) in rows {
        let _ = writeln!(s, "{k:<12} {v}");
    }
    if !r.shards.is_empty() {
        let _ = writeln!(s, "\nshards ({})", r.shards.len());
        let _ = writeln!(s, "  {:<6} {:>10} {:>12}", "shard", "items", "size");
        for sh in &r.shards {
            let _ = writeln!(
                s,
                "  {:<6} {:>10} {:>12}",
                format!("{:04}", sh.shard),
                sh.items,
                human_bytes(sh.bytes)
            );
        }
    }
    if !r.sections.is_empty() {
        let width = r.sections.iter().map(|x| x.name.len()).max().unwrap_or(0);
        let _ = writeln!(s, "\nsections ({})", r.sections.len());
        for sec in &r.sections {
            let _ = writeln!(s, "  {:<width$} {:>12}", sec.name, human_bytes(sec.bytes));
        }
    }
    let mut metrics = Vec::new();
    metric_rows(&m.metrics, "", &mut metrics);
    if !metrics.is_empty() {
        let width = metrics
            .iter()
            .map(|(k, _)| k.len())
            .max()
            .unwrap_or(0)
            .min(40);
        let _ = writeln!(s, "\nmetrics");
        for (k, v) in metrics.iter().take(MAX_METRIC_ROWS) {
            let _ = writeln!(s, "  {k:<width$} {v}");
        }
        if metrics.len() > MAX_METRIC_ROWS {
            let _ = writeln!(
                s,
                "  ... {} more (see --json)",
                metrics.len() - MAX_METRIC_ROWS
            );
        }
    }
    let _ = writeln!(s);
    if r.verified() {
        let _ = writeln!(
            s,
            "verification OK: {} files, {} checked against manifest.json",
            r.files_checked,
            human_bytes(r.bytes_checked)
        );
    } else {
        let _ = writeln!(s, "verification FAILED ({} problems):", r.problems.len());
        for p in &r.problems {
            let _ = writeln!(s, "  - {p}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_match_known_dates() {
        // Independent reference points: the epoch, the 2000 leap day, and
        // 1_700_000_000 which is widely cited as 2023-11-14 22:13:20 UTC.
        assert_eq!(utc_timestamp(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc_timestamp(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(utc_timestamp(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(utc_timestamp(-1), "1969-12-31T23:59:59Z");
    }

    #[test]
    fn sizes_are_human_readable() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }

    #[test]
    fn metrics_flatten_with_dotted_keys() {
        let mut rows = Vec::new();
        metric_rows(
            &serde_json::json!({"a": 1, "b": {"c": 0.5, "d": "x"}}),
            "",
            &mut rows,
        );
        assert_eq!(
            rows,
            vec![
                ("a".to_owned(), "1".to_owned()),
                ("b.c".to_owned(), "0.5000".to_owned()),
                ("b.d".to_owned(), "x".to_owned()),
            ]
        );
    }
}
