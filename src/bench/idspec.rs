//! Where the user and item ids a benchmark asks for come from.
//!
//! Owns: the `--users` / `--items` forms — a file with one id per line,
//! `synthetic:N` (exactly the ids `funnel gen` writes for N entities) and
//! `range:PREFIX:N` (PREFIX1..PREFIXN, unpadded, e.g. MovieLens' "1".."943").
//! Must not touch: the network; the only I/O is reading the id file.

use super::args::BenchError;
use crate::ids::validate_id;
use std::path::Path;

/// More ids than this in a generated spec is certainly a typo (and would
/// take gigabytes).
const MAX_GENERATED_IDS: u64 = 50_000_000;

/// Which entity a spec names; `synthetic:N` uses `funnel gen`'s prefix for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdEntity {
    User,
    Item,
}

impl IdEntity {
    fn gen_prefix(self) -> char {
        match self {
            IdEntity::User => 'u',
            IdEntity::Item => 'i',
        }
    }
}

/// Digits `funnel gen` pads an index to when it makes `count` entities: at
/// least 6, more when the largest index (count - 1) needs them. Mirrors
/// `gen::names::id_width` (private there); the `synthetic_ids_equal_gen_ids`
/// test keeps the two in step.
pub fn gen_id_width(count: u64) -> usize {
    let largest = count.saturating_sub(1);
    let digits = largest.checked_ilog10().map_or(1, |d| d as usize + 1);
    digits.max(6)
}

/// The ids `funnel gen` gives `count` entities of `entity`: prefix + the
/// 0-based index, zero-padded to `gen_id_width(count)`.
pub fn synthetic_ids(entity: IdEntity, count: u64) -> Vec<String> {
    let width = gen_id_width(count);
    let prefix = entity.gen_prefix();
    (0..count).map(|i| format!("{prefix}{i:0width$}")).collect()
}

fn parse_count(flag: &'static str, spec: &str, text: &str) -> Result<u64, BenchError> {
    let bad = |reason: String| BenchError::BadIdSpec {
        flag,
        spec: spec.to_string(),
        reason,
    };
    let n: u64 = text
        .trim()
        .parse()
        .map_err(|_| bad(format!("{text:?} is not a whole number")))?;
    if n == 0 || n > MAX_GENERATED_IDS {
        return Err(bad(format!(
            "the count must be in [1, {MAX_GENERATED_IDS}], not {n}"
        )));
    }
    Ok(n)
}

/// Reads `--users` / `--items` (`flag` names which, for messages).
pub fn parse_id_source(
    flag: &'static str,
    spec: &str,
    entity: IdEntity,
) -> Result<Vec<String>, BenchError> {
    if let Some(count) = spec.strip_prefix("synthetic:") {
        let n = parse_count(flag, spec, count)?;
        return Ok(synthetic_ids(entity, n));
    }
    if let Some(rest) = spec.strip_prefix("range:") {
        // rsplit: the count is last, so a prefix may itself contain ':'.
        let Some((prefix, count)) = rest.rsplit_once(':') else {
            return Err(BenchError::BadIdSpec {
                flag,
                spec: spec.to_string(),
                reason: "range needs a prefix and a count, e.g. range:user:943".into(),
            });
        };
        let n = parse_count(flag, spec, count)?;
        let ids: Vec<String> = (1..=n).map(|i| format!("{prefix}{i}")).collect();
        if let Err(e) = validate_id(&ids[0]) {
            return Err(BenchError::BadIdSpec {
                flag,
                spec: spec.to_string(),
                reason: format!("the prefix makes invalid ids: {e}"),
            });
        }
        return Ok(ids);
    }
    let path = Path::new(spec);
    if path.exists() {
        return read_id_file(flag, path);
    }
    let reason = match spec.split_once(':') {
        Some((kind, _)) if !kind.contains(['/', '\\', '.']) => {
            format!("unknown kind {kind:?}")
        }
        _ => "no such file".to_string(),
    };
    Err(BenchError::BadIdSpec {
        flag,
        spec: spec.to_string(),
        reason,
    })
}

/// One id per line; surrounding whitespace and blank lines are ignored (id
/// lists are often hand-edited or produced with `cut`).
fn read_id_file(flag: &'static str, path: &Path) -> Result<Vec<String>, BenchError> {
    let text = std::fs::read_to_string(path).map_err(|source| BenchError::ReadIds {
        flag,
        path: path.to_path_buf(),
        source,
    })?;
    let mut ids = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let id = line.trim();
        if id.is_empty() {
            continue;
        }
        validate_id(id).map_err(|e| BenchError::BadIdLine {
            flag,
            path: path.to_path_buf(),
            line: index + 1,
            reason: e.to_string(),
        })?;
        ids.push(id.to_string());
    }
    if ids.is_empty() {
        return Err(BenchError::NoIds {
            flag,
            path: path.to_path_buf(),
        });
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::gen::{generate, GenParams};

    #[test]
    fn synthetic_widths_follow_the_largest_index() {
        let five = parse_id_source("--users", "synthetic:5", IdEntity::User).unwrap();
        assert_eq!(
            five,
            ["u000000", "u000001", "u000002", "u000003", "u000004"]
        );
        assert_eq!(
            gen_id_width(1_000_000),
            6,
            "largest index 999999 has 6 digits"
        );
        assert_eq!(gen_id_width(1_000_001), 7);
        let big = synthetic_ids(IdEntity::Item, 1_000_001);
        assert_eq!(big.first().unwrap(), "i0000000");
        assert_eq!(big.last().unwrap(), "i1000000");
        assert!(big.iter().all(|id| id.len() == 8));
    }

    #[test]
    fn synthetic_ids_equal_gen_ids() {
        let params = GenParams {
            users: 37,
            items: 41,
            interactions: 300,
            ..GenParams::default()
        };
        let data = generate(&params).expect("small gen parameters are valid");
        let mut gen_users = data.users.ids().to_vec();
        gen_users.sort();
        assert_eq!(gen_users, synthetic_ids(IdEntity::User, 37));
        let mut gen_items = data.items.ids().to_vec();
        gen_items.sort();
        assert_eq!(gen_items, synthetic_ids(IdEntity::Item, 41));
    }

    #[test]
    fn range_is_one_based_and_unpadded() {
        let ids = parse_id_source("--users", "range::3", IdEntity::User).unwrap();
        assert_eq!(ids, ["1", "2", "3"]);
        let ids = parse_id_source("--users", "range:a:b:2", IdEntity::User).unwrap();
        assert_eq!(ids, ["a:b1", "a:b2"]);
    }

    #[test]
    fn file_ids_are_trimmed_and_blank_lines_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("users.txt");
        std::fs::write(&path, "alice\n\n  bob \r\ncarol").unwrap();
        let ids = parse_id_source("--users", path.to_str().unwrap(), IdEntity::User).unwrap();
        assert_eq!(ids, ["alice", "bob", "carol"]);
    }

    #[test]
    fn bad_files_name_the_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.txt");
        std::fs::write(&empty, "\n  \n").unwrap();
        let err = parse_id_source("--users", empty.to_str().unwrap(), IdEntity::User)
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds no ids"), "{err}");

        let control = dir.path().join("control.txt");
        std::fs::write(&control, "ok\nbad\u{7}id\n").unwrap();
        let err =
            parse_id_source("--users", control.to_str().unwrap(), IdEntity::User).unwrap_err();
        assert!(
            matches!(err, BenchError::BadIdLine { line: 2, .. }),
            "{err}"
        );
    }

    #[test]
    fn bad_specs_are_refused_with_the_forms_listed() {
        for (spec, needle) in [
            ("synthetic:abc", "not a whole number"),
            ("synthetic:0", "count must be"),
            ("synthetic:", "not a whole number"),
            ("synthetic:99999999999", "count must be"),
            ("range:5", "prefix and a count"),
            ("range:u:-1", "not a whole number"),
            ("random:5", "unknown kind \"random\""),
            ("/no/such/users.txt", "no such file"),
        ] {
            let err = parse_id_source("--users", spec, IdEntity::User)
                .expect_err(spec)
                .to_string();
            assert!(err.contains(needle), "{spec}: {err}");
            assert!(err.contains("synthetic:N, range:PREFIX:N"), "{err}");
            assert!(err.starts_with("--users"), "{err}");
        }
    }
}
