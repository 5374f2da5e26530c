//! Environment overrides: `FUNNEL_<SECTION>__<KEY>=value` (double underscore
//! between path segments, e.g. `FUNNEL_RECALL__MERGE__BUDGET=400`) merged
//! into the parsed TOML tree before it is deserialized, so types are checked
//! in one place whether a value came from the file or the environment.
//!
//! Owns: recognising override variables, mapping them to key paths and
//! turning their text into TOML values. Must not touch: the process
//! environment itself (callers pass a map, so tests need no global state)
//! or validation.

use std::collections::HashMap;
use std::ffi::OsString;
use toml::{Table, Value};

pub const PREFIX: &str = "FUNNEL_";
const SEPARATOR: &str = "__";

/// The process environment as `load` takes it. `std::env::vars()` panics
/// on a variable that is not UTF-8, which would let any unrelated variable
/// crash the node; see `utf8_env`.
pub fn process_env() -> HashMap<String, String> {
    utf8_env(std::env::vars_os())
}

/// Keeps the UTF-8 variables. A non-UTF-8 `FUNNEL_*` variable is kept with
/// its bad bytes replaced, so that it is reported rather than silently
/// dropped; other non-UTF-8 variables are none of our business.
pub fn utf8_env(vars: impl IntoIterator<Item = (OsString, OsString)>) -> HashMap<String, String> {
    let mut out = HashMap::new();
    for (key, value) in vars {
        match (key.into_string(), value.into_string()) {
            (Ok(k), Ok(v)) => {
                out.insert(k, v);
            }
            (Ok(k), Err(v)) if k.starts_with(PREFIX) => {
                out.insert(k, v.to_string_lossy().into_owned());
            }
            (Err(k), _) if k.to_string_lossy().starts_with(PREFIX) => {
                out.insert(k.to_string_lossy().into_owned(), String::new());
            }
            _ => {}
        }
    }
    out
}

/// One `FUNNEL_A__B=value` variable, with its key path in lower case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvOverride {
    pub var: String,
    pub path: Vec<String>,
    pub raw: String,
}

impl EnvOverride {
    pub fn dotted_key(&self) -> String {
        self.path.join(".")
    }
}

/// An override variable that cannot be applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvProblem {
    pub var: String,
    pub message: String,
}

/// The override variables in `env`, sorted by name so the result does not
/// depend on map order. Variables with the prefix but without `__` (like
/// `FUNNEL_ADMIN_ADDR`, used by other tools) are not overrides and are
/// skipped.
pub fn overrides(env: &HashMap<String, String>) -> Result<Vec<EnvOverride>, EnvProblem> {
    let mut found = Vec::new();
    for (var, raw) in env {
        let Some(rest) = var.strip_prefix(PREFIX) else {
            continue;
        };
        if !rest.contains(SEPARATOR) {
            continue;
        }
        let path: Vec<String> = rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
        if path.iter().any(String::is_empty) {
            return Err(EnvProblem {
                var: var.clone(),
                message: format!(
                    "has an empty key segment; write {PREFIX}<SECTION>{SEPARATOR}<KEY>, \
                     e.g. FUNNEL_API__HTTP"
                ),
            });
        }
        found.push(EnvOverride {
            var: var.clone(),
            path,
            raw: raw.clone(),
        });
    }
    found.sort_by(|a, b| a.var.cmp(&b.var));
    Ok(found)
}

/// Sets `ov`'s key in `tree`. `hints` is a tree holding every known key with
/// a value of its type (the defaults, with optional sections filled in): it
/// decides whether the key exists and whether the text is taken literally
/// (string keys) or parsed as a TOML value (numbers, bools, arrays).
pub fn apply(tree: &mut Table, hints: &Table, ov: &EnvOverride) -> Result<(), EnvProblem> {
    let problem = |message: String| EnvProblem {
        var: ov.var.clone(),
        message,
    };
    let (last, parents) = ov
        .path
        .split_last()
        .expect("overrides() only returns paths with at least two segments");
    let mut hint_level = hints;
    let mut tree_level = tree;
    for (depth, segment) in parents.iter().enumerate() {
        let here = &ov.path[..=depth];
        let hint = hint_level
            .get(segment)
            .ok_or_else(|| problem(unknown_key(here, hint_level)))?;
        let Value::Table(hint_table) = hint else {
            return Err(problem(format!(
                "{} is a single value, not a section; {}",
                here.join("."),
                set_whole_value_advice(here, hint)
            )));
        };
        hint_level = hint_table;
        let entry = tree_level
            .entry(segment.clone())
            .or_insert_with(|| Value::Table(Table::new()));
        let Value::Table(next) = entry else {
            return Err(problem(format!(
                "{} is set to a single value in the config file, so {} cannot go inside it; \
                 make it a table in the file",
                here.join("."),
                ov.dotted_key()
            )));
        };
        tree_level = next;
    }
    let hint = hint_level
        .get(last)
        .ok_or_else(|| problem(unknown_key(&ov.path, hint_level)))?;
    if let Value::Table(_) = hint {
        return Err(problem(format!(
            "{} is a section, not a value; set one of its keys, e.g. {}{}{}",
            ov.dotted_key(),
            env_name(&ov.path),
            SEPARATOR,
            first_key(hint).unwrap_or("KEY").to_ascii_uppercase()
        )));
    }
    tree_level.insert(last.clone(), value_from_text(&ov.raw, hint));
    Ok(())
}

/// The text as a TOML value of the kind `hint` suggests: string keys take
/// the text as it is (an admin token of digits stays a string); other keys
/// get it parsed as a TOML value, falling back to a string so the
/// deserializer reports the type mismatch.
pub fn value_from_text(raw: &str, hint: &Value) -> Value {
    if matches!(hint, Value::String(_)) {
        return Value::String(raw.to_string());
    }
    match toml::from_str::<Table>(&format!("value = {raw}")) {
        // more than one key means the text smuggled in a newline and more keys
        Ok(mut t) if t.len() == 1 => t
            .remove("value")
            .unwrap_or_else(|| Value::String(raw.to_string())),
        _ => Value::String(raw.to_string()),
    }
}

fn env_name(path: &[String]) -> String {
    format!("{PREFIX}{}", path.join(SEPARATOR).to_ascii_uppercase())
}

fn first_key(v: &Value) -> Option<&str> {
    match v {
        Value::Table(t) => t.keys().next().map(String::as_str),
        _ => None,
    }
}

fn unknown_key(path: &[String], level: &Table) -> String {
    let known: Vec<&str> = level.keys().map(String::as_str).collect();
    let (what, place) = if path.len() == 1 {
        ("section", "sections are".to_string())
    } else {
        ("key", format!("[{}] has", path[..path.len() - 1].join(".")))
    };
    format!(
        "no {what} {} in the node config; {place}: {}",
        path.join("."),
        known.join(", ")
    )
}

fn set_whole_value_advice(path: &[String], hint: &Value) -> String {
    let example = match hint {
        Value::Array(_) => "'[ ... ]' (a TOML array)",
        _ => "the value",
    };
    format!("set {}={example} instead", env_name(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn only_double_underscore_funnel_variables_are_overrides() {
        let found = overrides(&env(&[
            ("FUNNEL_API__HTTP", "0.0.0.0:1"),
            ("FUNNEL_ADMIN_ADDR", "x"),
            ("PATH", "/bin"),
            ("HOME__X", "y"),
            ("FUNNEL_RECALL__MERGE__BUDGET", "400"),
        ]))
        .unwrap();
        let paths: Vec<String> = found.iter().map(EnvOverride::dotted_key).collect();
        assert_eq!(paths, ["api.http", "recall.merge.budget"]);
    }

    #[cfg(unix)]
    #[test]
    fn non_utf8_variables_are_dropped_unless_they_are_ours() {
        use std::os::unix::ffi::OsStringExt;
        let bad = || OsString::from_vec(vec![b'a', 0xff]);
        let got = utf8_env([
            (OsString::from("HOME"), OsString::from("/root")),
            (OsString::from("JUNK"), bad()),
            (OsString::from("FUNNEL_API__HTTP"), bad()),
        ]);
        assert_eq!(got.len(), 2, "{got:?}");
        assert_eq!(got["HOME"], "/root");
        assert_eq!(got["FUNNEL_API__HTTP"], "a\u{fffd}");
    }

    #[test]
    fn empty_segment_is_refused_naming_the_variable() {
        let err = overrides(&env(&[("FUNNEL_API____HTTP", "x")])).unwrap_err();
        assert_eq!(err.var, "FUNNEL_API____HTTP");
    }

    #[test]
    fn text_becomes_a_value_of_the_hinted_kind() {
        let s = Value::String(String::new());
        let n = Value::Integer(0);
        assert_eq!(value_from_text("12345", &s), Value::String("12345".into()));
        assert_eq!(value_from_text("12345", &n), Value::Integer(12345));
        assert_eq!(
            value_from_text("0.25", &Value::Float(0.0)),
            Value::Float(0.25)
        );
        assert_eq!(
            value_from_text("true", &Value::Boolean(false)),
            Value::Boolean(true)
        );
        // not TOML: kept as text for the deserializer to complain about
        assert_eq!(value_from_text("lots", &n), Value::String("lots".into()));
        // a newline cannot sneak a second key in
        assert_eq!(
            value_from_text("1\nother = 2", &n),
            Value::String("1\nother = 2".into())
        );
    }
}
