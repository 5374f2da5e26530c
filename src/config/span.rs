//! Turning a byte offset in a TOML file into something an operator can act
//! on: a line and column, and the dotted key the offset belongs to.
//!
//! Owns: that lookup only. The `toml` crate reports where an error is (a
//! byte span) but not, in its message, which key it was reading, so the key
//! is recovered from the text: the nearest table header above the offset
//! plus the key assigned on that line. This is a best effort for messages;
//! it must not be used to read values.

/// 1-based line and column (in characters) of a position in a text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TextPos {
    pub line: usize,
    pub column: usize,
}

pub fn text_pos(text: &str, offset: usize) -> TextPos {
    let offset = floor_char_boundary(text, offset);
    let before = &text[..offset];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    TextPos {
        line: before.matches('\n').count() + 1,
        column: before[line_start..].chars().count() + 1,
    }
}

fn floor_char_boundary(text: &str, offset: usize) -> usize {
    let mut i = offset.min(text.len());
    while !text.is_char_boundary(i) {
        i -= 1;
    }
    i
}

/// The dotted key at `offset`, e.g. `api.max_k` for an offset inside
/// `max_k = "x"` under `[api]`, or `None` when the text gives no clue.
pub fn key_path_at(text: &str, offset: usize) -> Option<String> {
    let offset = floor_char_boundary(text, offset);
    let line_start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[offset..].find('\n').map_or(text.len(), |i| offset + i);
    let line = &text[line_start..line_end];
    if let Some(header) = table_header(line) {
        return Some(header);
    }

    let lines_above: Vec<&str> = text[..line_start].lines().collect();
    let header_index = lines_above.iter().rposition(|l| table_header(l).is_some());
    let mut parts: Vec<String> = Vec::new();
    if let Some(i) = header_index {
        parts.extend(table_header(lines_above[i]));
    }

    // The key assigned on this line; on a continuation line of a multi-line
    // array or table, the assignment that opened it further up.
    let body_above = &lines_above[header_index.map_or(0, |i| i + 1)..];
    let (assignment_line, assigned_key) = match assigned_key(line) {
        Some(k) => (line, Some(k)),
        None => match body_above
            .iter()
            .rev()
            .find_map(|l| assigned_key(l).map(|k| (*l, k)))
        {
            Some((l, k)) => (l, Some(k)),
            None => (line, None),
        },
    };
    parts.extend(assigned_key.clone());

    // A key inside an inline table (`{ id = 1, nope = 2 }`) sits at the
    // offset itself; the offset of a line's own key adds nothing.
    let at_offset = key_starting_at(&text[offset..line_end]);
    let is_line_key = std::ptr::eq(assignment_line, line)
        && line.trim_start().len() == text[offset..line_end].trim_start().len();
    if let Some(k) = at_offset {
        if !is_line_key && Some(&k) != assigned_key.as_ref() {
            parts.push(k);
        }
    }
    (!parts.is_empty()).then(|| parts.join("."))
}

/// `[a.b]` or `[[a.b]]` -> `a.b`.
fn table_header(line: &str) -> Option<String> {
    let t = strip_comment(line).trim();
    let inner = t
        .strip_prefix("[[")
        .and_then(|r| r.strip_suffix("]]"))
        .or_else(|| t.strip_prefix('[').and_then(|r| r.strip_suffix(']')))?;
    let key = normalise_key(inner)?;
    Some(key)
}

/// The key of `key = value` on this line, if the line starts with one.
fn assigned_key(line: &str) -> Option<String> {
    let (lhs, _) = line.split_once('=')?;
    normalise_key(lhs)
}

/// A bare key at the start of `rest` that is followed by `=`.
fn key_starting_at(rest: &str) -> Option<String> {
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == '-'))
        .unwrap_or(rest.len());
    let (key, after) = rest.split_at(end);
    (!key.is_empty() && after.trim_start().starts_with('=')).then(|| key.to_string())
}

/// A dotted key with whitespace and quotes removed, or `None` when the text
/// is not a key (a value, a bracket of a multi-line array, ...).
fn normalise_key(text: &str) -> Option<String> {
    let mut parts = Vec::new();
    for part in text.trim().split('.') {
        let p = part.trim().trim_matches('"').trim_matches('\'');
        let ok = !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
        if !ok {
            return None;
        }
        parts.push(p.to_string());
    }
    Some(parts.join("."))
}

fn strip_comment(line: &str) -> &str {
    // headers and keys never contain '#', so cutting at the first one is safe
    line.split_once('#').map_or(line, |(before, _)| before)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key_at(text: &str, needle: &str) -> Option<String> {
        key_path_at(text, text.find(needle).expect("needle is in the text"))
    }

    #[test]
    fn positions_are_one_based_lines_and_character_columns() {
        let t = "a = 1\nbé = 2\n";
        assert_eq!(text_pos(t, 0), TextPos { line: 1, column: 1 });
        assert_eq!(
            text_pos(t, t.find("= 2").unwrap()),
            TextPos { line: 2, column: 4 }
        );
    }

    #[test]
    fn key_under_a_header() {
        let t = "[node]\nid = 1\n\n[api] # public\nmax_k = \"x\"\n";
        assert_eq!(key_at(t, "\"x\"").as_deref(), Some("api.max_k"));
        assert_eq!(key_at(t, "max_k").as_deref(), Some("api.max_k"));
        assert_eq!(key_at(t, "id").as_deref(), Some("node.id"));
        assert_eq!(key_at(t, "[api]").as_deref(), Some("api"));
    }

    #[test]
    fn top_level_and_dotted_keys() {
        assert_eq!(key_at("nope = 1\n", "nope").as_deref(), Some("nope"));
        let t = "[recall]\nmerge.budget = true\n";
        assert_eq!(key_at(t, "true").as_deref(), Some("recall.merge.budget"));
    }

    #[test]
    fn keys_inside_inline_and_multi_line_tables() {
        let t = "[cluster]\nmembers = [\n  { id = 1, nope = 2 },\n]\n";
        assert_eq!(key_at(t, "nope").as_deref(), Some("cluster.members.nope"));
        let t = "[cluster]\ntls = { cert = 5 }\n";
        assert_eq!(key_at(t, "cert").as_deref(), Some("cluster.tls.cert"));
        let t = "[[cluster.members]]\nid = 1\nwho = 2\n";
        assert_eq!(key_at(t, "who").as_deref(), Some("cluster.members.who"));
    }
}
