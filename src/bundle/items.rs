//! The item and user tables stored in a bundle (`items.bin`, `users.bin`)
//! and their encodings: postcard for tables, raw little-endian for vectors
//! and keys.
//!
//! Owns: `ItemTable`, `UserTable`, their `validate()` rules, and the checked
//! decoders for the raw `.u64` / `.f32` files. Must not touch: the
//! filesystem (callers hand in verified bytes) or ANN indexes.

use super::error::{BundleError, Result};
use crate::ids::{item_key, validate_id};
use crate::matrix::Matrix;
use serde::{de::DeserializeOwned, Deserialize, Serialize};
use std::collections::HashMap;
use std::path::Path;

/// Every item the model knows, indexed by the training data's dense item
/// index. All vectors have one entry per item.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ItemTable {
    pub ids: Vec<String>,
    /// `item_key(ids[i])`: the item's identity online and its ANN key.
    pub keys: Vec<u64>,
    pub titles: Vec<Option<String>>,
    /// Indices into `category_names`.
    pub categories: Vec<Vec<u16>>,
    pub created_at: Vec<Option<i64>>,
    pub popularity: Vec<f32>,
    pub trending: Vec<f32>,
    pub category_names: Vec<String>,
}

impl ItemTable {
    /// A table for `ids` with keys computed and every attribute empty.
    pub fn from_ids(ids: Vec<String>) -> Self {
        let n = ids.len();
        ItemTable {
            keys: ids.iter().map(|id| item_key(id)).collect(),
            ids,
            titles: vec![None; n],
            categories: vec![Vec::new(); n],
            created_at: vec![None; n],
            popularity: vec![0.0; n],
            trending: vec![0.0; n],
            category_names: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Checks that all columns have one entry per item, ids are valid and
    /// unique, keys are `item_key(id)` and unique (a 64-bit collision between
    /// two ids is an error naming both), categories exist, scores are finite.
    pub fn validate(&self) -> Result<()> {
        let n = self.ids.len();
        let columns = [
            ("keys", self.keys.len()),
            ("titles", self.titles.len()),
            ("categories", self.categories.len()),
            ("created_at", self.created_at.len()),
            ("popularity", self.popularity.len()),
            ("trending", self.trending.len()),
        ];
        for (name, len) in columns {
            if len != n {
                return Err(BundleError::InvalidInput(format!(
                    "item table column {name} has {len} entries but there are {n} item ids; every column needs one entry per item"
                )));
            }
        }
        for (i, (id, &key)) in self.ids.iter().zip(&self.keys).enumerate() {
            validate_id(id).map_err(|e| {
                BundleError::InvalidInput(format!("item id at index {i} ({id:?}) is invalid: {e}"))
            })?;
            if key != item_key(id) {
                return Err(BundleError::InvalidInput(format!(
                    "item {id:?} has key {key:#018x} but item_key(id) is {:#018x}; build keys with crate::ids::item_key",
                    item_key(id)
                )));
            }
        }
        check_unique_keys(&self.ids, &self.keys)?;
        let n_categories = self.category_names.len();
        for (i, cats) in self.categories.iter().enumerate() {
            if let Some(&c) = cats.iter().find(|&&c| c as usize >= n_categories) {
                return Err(BundleError::InvalidInput(format!(
                    "item {:?} has category index {c} but there are only {n_categories} category names",
                    self.ids[i]
                )));
            }
        }
        for (name, col) in [
            ("popularity", &self.popularity),
            ("trending", &self.trending),
        ] {
            if let Some(i) = col.iter().position(|v| !v.is_finite()) {
                return Err(BundleError::InvalidInput(format!(
                    "item {:?} has a non-finite {name} score; fix the computation that produced it",
                    self.ids[i]
                )));
            }
        }
        Ok(())
    }
}

/// Refuses a repeated id, and two different ids sharing one key (a 64-bit
/// hash collision: the error names both ids so one can be renamed).
pub fn check_unique_keys(ids: &[String], keys: &[u64]) -> Result<()> {
    let mut by_key: HashMap<u64, usize> = HashMap::with_capacity(keys.len());
    for (i, (id, &key)) in ids.iter().zip(keys).enumerate() {
        if let Some(&j) = by_key.get(&key) {
            if ids[j] == *id {
                return Err(BundleError::InvalidInput(format!(
                    "item id {id:?} appears twice (indices {j} and {i}); item ids must be unique"
                )));
            }
            return Err(BundleError::KeyCollision {
                first: ids[j].clone(),
                second: id.clone(),
                key,
            });
        }
        by_key.insert(key, i);
    }
    Ok(())
}

/// The users the model has vectors (or state) for; vectors are stored
/// separately so a node that does not need them never decodes them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UserTable {
    pub ids: Vec<String>,
    pub occupation_names: Vec<String>,
}

impl UserTable {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Checks that ids are valid and unique.
    pub fn validate(&self) -> Result<()> {
        let mut seen: HashMap<&str, usize> = HashMap::with_capacity(self.ids.len());
        for (i, id) in self.ids.iter().enumerate() {
            validate_id(id).map_err(|e| {
                BundleError::InvalidInput(format!("user id at index {i} ({id:?}) is invalid: {e}"))
            })?;
            if let Some(j) = seen.insert(id, i) {
                return Err(BundleError::InvalidInput(format!(
                    "user id {id:?} appears twice (indices {j} and {i}); user ids must be unique"
                )));
            }
        }
        Ok(())
    }
}

/// Checks every value of `m` is finite; `name_of(row)` names the row in the error.
pub fn check_finite(m: &Matrix, what: &str, name_of: impl Fn(usize) -> String) -> Result<()> {
    let cols = m.cols().max(1);
    if let Some(pos) = m.as_slice().iter().position(|v| !v.is_finite()) {
        let row = pos / cols;
        return Err(BundleError::InvalidInput(format!(
            "{what} vector of {} (row {row}) contains {} at column {}; vectors must be finite: check the training run for divergence",
            name_of(row),
            m.as_slice()[pos],
            pos % cols
        )));
    }
    Ok(())
}

/// Postcard-encodes a value; postcard cannot fail on plain data.
pub fn to_postcard<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>> {
    postcard::to_stdvec(value).map_err(|e| {
        BundleError::InvalidInput(format!(
            "value cannot be encoded with postcard ({e}); section types must be plain serde data (no untagged enums or unknown-length maps)"
        ))
    })
}

/// Postcard-decodes `bytes` read from `file`, requiring that every byte is used.
pub fn from_postcard<T: DeserializeOwned>(file: &Path, bytes: &[u8]) -> Result<T> {
    let (value, rest) = postcard::take_from_bytes::<T>(bytes)
        .map_err(|e| BundleError::decode(file, format!("postcard: {e}")))?;
    nothing_after(file, rest)?;
    Ok(value)
}

/// Refuses bytes left over after a decoded value (a file that holds more
/// than it should is damaged or of another kind).
fn nothing_after(file: &Path, rest: &[u8]) -> Result<()> {
    if rest.is_empty() {
        return Ok(());
    }
    Err(BundleError::decode(
        file,
        format!("{} unexpected trailing bytes after the value", rest.len()),
    ))
}

/// A filtered sequence: its full length and the kept (index, element)
/// pairs.
pub type KeptElements<T> = (usize, Vec<(usize, T)>);

/// Decodes a postcard sequence of `T` keeping only the elements whose
/// index `keep` selects; answers the sequence's length and the kept
/// (index, element) pairs. Each dropped element is freed before the next
/// is decoded, so a node keeping a share of a million user states never
/// holds all of them (holding them all, then dropping most, left the freed
/// memory fragmented between the kept states and the RSS high).
pub fn seq_from_postcard_filtered<T: DeserializeOwned>(
    file: &Path,
    bytes: &[u8],
    keep: &mut dyn FnMut(usize) -> bool,
) -> Result<KeptElements<T>> {
    use serde::de::{DeserializeSeed, SeqAccess, Visitor};
    struct Kept<'k, T> {
        keep: &'k mut dyn FnMut(usize) -> bool,
        _t: std::marker::PhantomData<T>,
    }
    impl<'de, T: DeserializeOwned> DeserializeSeed<'de> for Kept<'_, T> {
        type Value = (usize, Vec<(usize, T)>);
        fn deserialize<D: serde::Deserializer<'de>>(
            self,
            d: D,
        ) -> std::result::Result<Self::Value, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de, T: DeserializeOwned> Visitor<'de> for Kept<'_, T> {
        type Value = (usize, Vec<(usize, T)>);
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a sequence")
        }
        fn visit_seq<A: SeqAccess<'de>>(
            self,
            mut seq: A,
        ) -> std::result::Result<Self::Value, A::Error> {
            let mut kept = Vec::new();
            let mut n = 0;
            while let Some(v) = seq.next_element::<T>()? {
                if (self.keep)(n) {
                    kept.push((n, v));
                }
                n += 1;
            }
            Ok((n, kept))
        }
    }
    let mut de = postcard::Deserializer::from_bytes(bytes);
    let value = Kept {
        keep,
        _t: std::marker::PhantomData,
    }
    .deserialize(&mut de)
    .map_err(|e| BundleError::decode(file, format!("postcard: {e}")))?;
    let rest = de
        .finalize()
        .map_err(|e| BundleError::decode(file, format!("postcard: {e}")))?;
    nothing_after(file, rest)?;
    Ok(value)
}

pub fn encode_u64s(values: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 8);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn encode_f32s(values: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(values.len() * 4);
    for v in values {
        out.extend_from_slice(&v.to_le_bytes());
    }
    out
}

pub fn decode_u64s(file: &Path, bytes: &[u8]) -> Result<Vec<u64>> {
    if bytes.len() % 8 != 0 {
        return Err(BundleError::decode(
            file,
            format!("{} bytes is not a whole number of u64 keys", bytes.len()),
        ));
    }
    Ok(bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("chunks_exact(8) yields 8 bytes")))
        .collect())
}

/// Decodes a raw `rows x cols` f32 matrix, checking the size and that every
/// value is finite (a NaN in a stored vector would poison every score).
pub fn decode_matrix(file: &Path, bytes: &[u8], rows: usize, cols: usize) -> Result<Matrix> {
    let expected = rows
        .checked_mul(cols)
        .and_then(|n| n.checked_mul(4))
        .ok_or_else(|| BundleError::decode(file, format!("shape {rows}x{cols} is too large")))?;
    if bytes.len() != expected {
        return Err(BundleError::decode(
            file,
            format!(
                "{} bytes, but {rows} x {cols} f32 values need {expected}",
                bytes.len()
            ),
        ));
    }
    let data: Vec<f32> = bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().expect("chunks_exact(4) yields 4 bytes")))
        .collect();
    if let Some(pos) = data.iter().position(|v| !v.is_finite()) {
        return Err(BundleError::decode(
            file,
            format!(
                "row {} column {} is {}; stored vectors must be finite",
                pos / cols.max(1),
                pos % cols.max(1),
                data[pos]
            ),
        ));
    }
    Matrix::from_vec(rows, cols, data).map_err(|e| BundleError::decode(file, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(ids: &[&str]) -> ItemTable {
        ItemTable::from_ids(ids.iter().map(|s| s.to_string()).collect())
    }

    #[test]
    fn valid_table_passes_and_columns_must_line_up() {
        let mut t = table(&["a", "b", "c"]);
        t.validate().unwrap();
        t.trending.pop();
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("trending"), "{err}");
    }

    #[test]
    fn wrong_keys_duplicates_and_collisions_are_refused() {
        let mut t = table(&["a", "b"]);
        t.keys[1] = 7;
        assert!(t.validate().unwrap_err().to_string().contains("item_key"));

        let t = table(&["a", "b", "a"]);
        let err = t.validate().unwrap_err().to_string();
        assert!(err.contains("appears twice"), "{err}");
    }

    #[test]
    fn a_key_collision_names_both_ids() {
        // A real blake3 collision cannot be produced, so the uniqueness rule
        // is checked on keys forced equal.
        let ids = vec!["first".to_string(), "second".to_string()];
        match check_unique_keys(&ids, &[42, 42]) {
            Err(e @ BundleError::KeyCollision { .. }) => {
                let msg = e.to_string();
                assert!(
                    msg.contains("\"first\"") && msg.contains("\"second\""),
                    "{msg}"
                );
            }
            other => panic!("expected a key collision, got {other:?}"),
        }
        assert!(check_unique_keys(&ids, &[1, 2]).is_ok());
    }

    #[test]
    fn categories_must_exist_and_scores_be_finite() {
        let mut t = table(&["a"]);
        t.categories[0] = vec![0];
        assert!(t.validate().is_err());
        t.category_names.push("drama".into());
        t.validate().unwrap();
        t.popularity[0] = f32::NAN;
        assert!(t.validate().unwrap_err().to_string().contains("popularity"));
    }

    #[test]
    fn raw_decoders_check_lengths_and_values() {
        let f = Path::new("x");
        assert_eq!(
            decode_u64s(f, &encode_u64s(&[1, u64::MAX])).unwrap(),
            vec![1, u64::MAX]
        );
        assert!(decode_u64s(f, &[0; 7]).is_err());
        let m = decode_matrix(f, &encode_f32s(&[1.0, 2.0, 3.0, 4.0]), 2, 2).unwrap();
        assert_eq!(m.row(1), &[3.0, 4.0]);
        assert!(decode_matrix(f, &encode_f32s(&[1.0, 2.0, 3.0]), 2, 2).is_err());
        let err = decode_matrix(f, &encode_f32s(&[1.0, f32::INFINITY]), 1, 2).unwrap_err();
        assert!(err.to_string().contains("column 1"), "{err}");
    }

    #[test]
    fn postcard_rejects_trailing_and_truncated_bytes() {
        let t = table(&["a", "b"]);
        let mut bytes = to_postcard(&t).unwrap();
        assert_eq!(
            from_postcard::<ItemTable>(Path::new("i"), &bytes).unwrap(),
            t
        );
        bytes.push(0);
        assert!(from_postcard::<ItemTable>(Path::new("i"), &bytes).is_err());
        bytes.truncate(bytes.len() - 5);
        assert!(from_postcard::<ItemTable>(Path::new("i"), &bytes).is_err());
    }

    #[test]
    fn a_filtered_sequence_keeps_the_chosen_elements_and_checks_the_bytes() {
        let v: Vec<String> = (0..7).map(|i| format!("s{i}")).collect();
        let mut bytes = to_postcard(&v).unwrap();
        let (n, kept) =
            seq_from_postcard_filtered::<String>(Path::new("s"), &bytes, &mut |i| i % 3 == 0)
                .unwrap();
        assert_eq!(n, 7);
        assert_eq!(
            kept,
            vec![(0, "s0".to_string()), (3, "s3".into()), (6, "s6".into())]
        );
        bytes.push(0);
        let e = seq_from_postcard_filtered::<String>(Path::new("s"), &bytes, &mut |_| true)
            .unwrap_err();
        assert!(e.to_string().contains("trailing"), "{e}");
        bytes.truncate(bytes.len() - 3);
        assert!(
            seq_from_postcard_filtered::<String>(Path::new("s"), &bytes, &mut |_| true).is_err()
        );
    }
}
