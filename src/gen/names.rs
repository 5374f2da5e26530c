//! Human-readable names for generated data: ids, genres, occupations,
//! titles.
//!
//! Owns: the fixed vocabularies and id formats of synthetic data. Must not
//! touch: randomness decisions (callers pass the draws in).

/// Genre-like names for the first categories; past these, `cat-NN`.
const GENRES: [&str; 18] = [
    "action",
    "adventure",
    "animation",
    "comedy",
    "crime",
    "documentary",
    "drama",
    "family",
    "fantasy",
    "history",
    "horror",
    "music",
    "mystery",
    "romance",
    "science-fiction",
    "thriller",
    "war",
    "western",
];

/// Occupation vocabulary for generated users.
pub const OCCUPATIONS: [&str; 12] = [
    "student",
    "engineer",
    "teacher",
    "artist",
    "healthcare",
    "sales",
    "writer",
    "scientist",
    "technician",
    "retired",
    "homemaker",
    "other",
];

const ADJECTIVES: [&str; 32] = [
    "Silent", "Golden", "Broken", "Hidden", "Last", "Crimson", "Distant", "Frozen", "Wild",
    "Electric", "Quiet", "Burning", "Lost", "Northern", "Secret", "Endless", "Velvet", "Hollow",
    "Bright", "Midnight", "Iron", "Paper", "Little", "Restless", "Painted", "Savage", "Gentle",
    "Emerald", "Falling", "Second", "Winter", "Lonely",
];

const NOUNS: [&str; 32] = [
    "Harbor",
    "Garden",
    "River",
    "Empire",
    "Machine",
    "Island",
    "Letter",
    "Mountain",
    "Stranger",
    "Signal",
    "Kingdom",
    "Road",
    "Mirror",
    "Orchard",
    "Station",
    "Horizon",
    "Promise",
    "Circus",
    "Frontier",
    "Lantern",
    "Voyage",
    "Canyon",
    "Shadow",
    "Engine",
    "Forest",
    "Echo",
    "Crown",
    "Tide",
    "Planet",
    "Bridge",
    "Summer",
    "Detective",
];

/// Category names: genre names first, then `cat-19`, `cat-20`, ...
pub fn category_names(count: u16) -> Vec<String> {
    (0..count as usize)
        .map(|i| match GENRES.get(i) {
            Some(g) => (*g).to_owned(),
            None => format!("cat-{:02}", i + 1),
        })
        .collect()
}

/// Digits used for ids of `count` entities: at least 6 so small and default
/// data sets share one look, more when the largest index needs them.
pub fn id_width(count: u64) -> usize {
    let largest = count.saturating_sub(1);
    let digits = largest.checked_ilog10().map_or(1, |d| d as usize + 1);
    digits.max(6)
}

/// `prefix` followed by `index` zero-padded to `width`, appended to `out`.
/// Hand-rolled because it runs for every generated interaction.
pub fn push_id(out: &mut Vec<u8>, prefix: u8, index: u64, width: usize) {
    out.push(prefix);
    let mut digits = [b'0'; 20];
    let mut n = index;
    let mut len = 0;
    loop {
        digits[19 - len] = b'0' + (n % 10) as u8;
        n /= 10;
        len += 1;
        if n == 0 {
            break;
        }
    }
    for _ in len..width {
        out.push(b'0');
    }
    out.extend_from_slice(&digits[20 - len..]);
}

pub fn format_id(prefix: u8, index: u64, width: usize) -> String {
    let mut v = Vec::with_capacity(width + 1);
    push_id(&mut v, prefix, index, width);
    String::from_utf8(v).expect("ids are ASCII by construction")
}

/// A title from two word draws and a variant draw; titles repeat in large
/// catalogues, as real ones do.
pub fn title(adjective: u64, noun: u64, variant: u64) -> String {
    let a = ADJECTIVES[(adjective % ADJECTIVES.len() as u64) as usize];
    let n = NOUNS[(noun % NOUNS.len() as u64) as usize];
    match variant % 4 {
        0 => format!("The {a} {n}"),
        1 => format!("{a} {n}"),
        2 => {
            // Another noun from higher bits of the same draw.
            let other = NOUNS[((noun >> 32) % NOUNS.len() as u64) as usize];
            format!("The {n} of the {other}")
        }
        _ => format!("{a} {n} {}", variant / 4 % 3 + 2),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_fixed_width_and_sort_like_their_index() {
        assert_eq!(id_width(2000), 6);
        assert_eq!(id_width(1_000_000), 6);
        assert_eq!(id_width(1_000_001), 7);
        assert_eq!(format_id(b'i', 123, 6), "i000123");
        assert_eq!(format_id(b'u', 0, 6), "u000000");
        assert_eq!(format_id(b'u', 1_234_567, 7), "u1234567");
        let mut ids: Vec<String> = [5u64, 100, 42, 0].map(|i| format_id(b'i', i, 6)).to_vec();
        ids.sort();
        assert_eq!(ids, ["i000000", "i000005", "i000042", "i000100"]);
    }

    #[test]
    fn category_names_are_unique() {
        let names = category_names(25);
        assert_eq!(names[0], "action");
        assert_eq!(names[18], "cat-19");
        let mut dedup = names.clone();
        dedup.sort();
        dedup.dedup();
        assert_eq!(dedup.len(), 25);
    }

    #[test]
    fn titles_are_plain_words() {
        for v in 0..40 {
            let t = title(v * 3, v * 5, v);
            assert!(!t.is_empty());
            assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == ' '));
        }
    }
}
