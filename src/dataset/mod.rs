//! The in-memory interaction log every offline step reads: users, items,
//! their attributes, and timestamped interactions with dense indices.
//!
//! Owns: `Dataset`, `Interaction`, `EventKind`, `ItemMeta`, `UserMeta`,
//! canonical ordering, and the evaluation protocol's temporal split
//! (`split`: training holds out by it too, so it sits below both). Must not
//! touch: file formats (that is `ingest`), training or evaluation logic.

pub mod split;

use crate::ids::IdMap;
use serde::{Deserialize, Serialize};

/// `EventKind::parse` was given a name that is not a kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown event kind {given:?}; expected one of view, click, like, purchase, rate")]
pub struct UnknownEventKind {
    /// The text as given (not trimmed or lower-cased).
    pub given: String,
}

/// A category or occupation vocabulary already holds `u16::MAX` names and
/// a new one came.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("more than {} distinct {what}", u16::MAX)]
pub struct VocabularyFull {
    /// Which vocabulary: "categories" or "occupations".
    pub what: &'static str,
}

/// What a user did with an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[repr(u8)]
pub enum EventKind {
    View = 0,
    Click = 1,
    Like = 2,
    Purchase = 3,
    /// An explicit rating; `Interaction::value` holds the rating.
    Rate = 4,
}

impl EventKind {
    pub const ALL: [EventKind; 5] = [
        EventKind::View,
        EventKind::Click,
        EventKind::Like,
        EventKind::Purchase,
        EventKind::Rate,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::View => "view",
            EventKind::Click => "click",
            EventKind::Like => "like",
            EventKind::Purchase => "purchase",
            EventKind::Rate => "rate",
        }
    }

    /// Parses a kind name (case-insensitive). The error names the accepted kinds.
    pub fn parse(s: &str) -> Result<Self, UnknownEventKind> {
        let l = s.trim().to_ascii_lowercase();
        EventKind::ALL
            .into_iter()
            .find(|k| k.as_str() == l)
            .ok_or_else(|| UnknownEventKind {
                given: s.to_owned(),
            })
    }

    pub fn from_u8(v: u8) -> Option<Self> {
        EventKind::ALL.get(v as usize).copied()
    }

    /// How strongly this kind signals interest, when the input gives no weight.
    pub fn default_weight(self) -> f32 {
        match self {
            EventKind::View => 1.0,
            EventKind::Click => 2.0,
            EventKind::Like => 4.0,
            EventKind::Purchase => 6.0,
            EventKind::Rate => 1.0,
        }
    }
}

/// One interaction with dense indices into `Dataset::users` / `Dataset::items`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Interaction {
    pub user: u32,
    pub item: u32,
    /// Unix seconds.
    pub ts: i64,
    pub kind: EventKind,
    /// The rating for `Rate`, otherwise the event's weight (default per kind).
    pub value: f32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Gender {
    Female,
    Male,
    Other,
}

impl Gender {
    pub fn parse(s: &str) -> Option<Gender> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f" | "female" | "w" => Some(Gender::Female),
            "m" | "male" => Some(Gender::Male),
            "" => None,
            _ => Some(Gender::Other),
        }
    }
}

/// Item attributes; every field is optional in the input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemMeta {
    pub title: Option<String>,
    /// Indices into `Dataset::categories`, sorted, unique.
    pub categories: Vec<u16>,
    /// When the item became available (release date, upload time), Unix seconds.
    pub created_at: Option<i64>,
}

/// User attributes; every field is optional in the input.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserMeta {
    pub age: Option<u16>,
    pub gender: Option<Gender>,
    /// Index into `Dataset::occupations`.
    pub occupation: Option<u16>,
}

/// A bad input row that was tolerated (`--max-bad-rows`) and skipped.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BadRow {
    pub file: String,
    pub line: u64,
    pub reason: String,
}

/// The whole interaction log plus attributes, ready for training.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// Human name of the source ("ml-100k", "synthetic(seed=7)", a path).
    pub name: String,
    pub users: IdMap,
    pub items: IdMap,
    pub interactions: Vec<Interaction>,
    /// One per item index.
    pub item_meta: Vec<ItemMeta>,
    /// One per user index.
    pub user_meta: Vec<UserMeta>,
    /// Category vocabulary for `ItemMeta::categories`.
    pub categories: Vec<String>,
    /// Occupation vocabulary for `UserMeta::occupation`.
    pub occupations: Vec<String>,
    /// blake3 (hex) over the input files' bytes, to tell inputs apart.
    pub fingerprint: String,
    /// Rows skipped under `--max-bad-rows`.
    pub bad_rows: Vec<BadRow>,
}

impl Dataset {
    /// Ensures one attribute record per user and item (missing ones empty).
    pub fn fill_meta(&mut self) {
        self.item_meta.resize(self.items.len(), ItemMeta::default());
        self.user_meta.resize(self.users.len(), UserMeta::default());
    }

    /// Re-numbers users and items in canonical id order (see
    /// `ids::id_order`) and sorts interactions by (ts, user, item). Everything
    /// downstream (evaluation tie-breaks, reproducible training) relies on it.
    pub fn canonicalize(mut self) -> Self {
        self.fill_meta();
        let (users, uremap) = self.users.canonical();
        let (items, iremap) = self.items.canonical();
        let mut user_meta = vec![UserMeta::default(); users.len()];
        for (old, m) in self.user_meta.into_iter().enumerate() {
            user_meta[uremap[old] as usize] = m;
        }
        let mut item_meta = vec![ItemMeta::default(); items.len()];
        for (old, m) in self.item_meta.into_iter().enumerate() {
            item_meta[iremap[old] as usize] = m;
        }
        for x in &mut self.interactions {
            x.user = uremap[x.user as usize];
            x.item = iremap[x.item as usize];
        }
        self.interactions.sort_by_key(|a| (a.ts, a.user, a.item));
        self.users = users;
        self.items = items;
        self.user_meta = user_meta;
        self.item_meta = item_meta;
        self
    }

    /// Earliest and latest interaction time, if any.
    pub fn time_range(&self) -> Option<(i64, i64)> {
        let min = self.interactions.iter().map(|x| x.ts).min()?;
        let max = self.interactions.iter().map(|x| x.ts).max()?;
        Some((min, max))
    }

    /// The category vocabulary index of `name`, adding it if new. Errors past
    /// 65,535 categories, which no supported input needs.
    pub fn intern_category(&mut self, name: &str) -> Result<u16, VocabularyFull> {
        intern_vocab(&mut self.categories, name, "categories")
    }

    pub fn intern_occupation(&mut self, name: &str) -> Result<u16, VocabularyFull> {
        intern_vocab(&mut self.occupations, name, "occupations")
    }
}

fn intern_vocab(
    vocab: &mut Vec<String>,
    name: &str,
    what: &'static str,
) -> Result<u16, VocabularyFull> {
    if let Some(i) = vocab.iter().position(|c| c == name) {
        return Ok(i as u16);
    }
    if vocab.len() >= u16::MAX as usize {
        return Err(VocabularyFull { what });
    }
    vocab.push(name.to_owned());
    Ok((vocab.len() - 1) as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonicalize_renumbers_and_sorts() {
        let mut d = Dataset {
            users: IdMap::from_ids(["u10", "u2"]),
            items: IdMap::from_ids(["30", "4"]),
            ..Default::default()
        };
        d.item_meta = vec![
            ItemMeta {
                title: Some("thirty".into()),
                ..Default::default()
            },
            ItemMeta {
                title: Some("four".into()),
                ..Default::default()
            },
        ];
        let x = |user, item, ts| Interaction {
            user,
            item,
            ts,
            kind: EventKind::View,
            value: 1.0,
        };
        d.interactions = vec![x(0, 0, 5), x(1, 1, 3), x(1, 0, 3)];
        let d = d.canonicalize();
        assert_eq!(d.items.ids(), &["4", "30"]);
        assert_eq!(d.item_meta[0].title.as_deref(), Some("four"));
        assert_eq!(d.users.ids(), &["u10", "u2"]);
        let got: Vec<(u32, u32, i64)> = d
            .interactions
            .iter()
            .map(|x| (x.user, x.item, x.ts))
            .collect();
        assert_eq!(got, vec![(1, 0, 3), (1, 1, 3), (0, 1, 5)]);
    }

    #[test]
    fn event_kind_parse_names_choices() {
        assert_eq!(EventKind::parse("Click"), Ok(EventKind::Click));
        assert_eq!(EventKind::parse(" VIEW "), Ok(EventKind::View));
        let err = EventKind::parse("Hover").unwrap_err();
        assert_eq!(
            err,
            UnknownEventKind {
                given: "Hover".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "unknown event kind \"Hover\"; expected one of view, click, like, purchase, rate"
        );
    }

    #[test]
    fn full_vocabularies_refuse_a_new_name() {
        let mut d = Dataset {
            categories: (0..u16::MAX).map(|i| format!("c{i}")).collect(),
            occupations: vec!["o".into(); u16::MAX as usize],
            ..Default::default()
        };
        // known names still resolve
        assert_eq!(d.intern_category("c7"), Ok(7));
        assert_eq!(d.intern_occupation("o"), Ok(0));
        let err = d.intern_category("new").unwrap_err();
        assert_eq!(err, VocabularyFull { what: "categories" });
        assert_eq!(err.to_string(), "more than 65535 distinct categories");
        let err = d.intern_occupation("new").unwrap_err();
        assert_eq!(
            err,
            VocabularyFull {
                what: "occupations"
            }
        );
        assert_eq!(err.to_string(), "more than 65535 distinct occupations");
        assert_eq!(d.categories.len(), u16::MAX as usize, "nothing added");
    }
}
