//! The realtime catalogue overlay: `ItemRecord`, `Catalog` (upserts and
//! tombstones in log order on top of the active bundle), `CatalogChange`,
//! the upsert rules of `ClusterState` and the per-shard overlay digest.
//!
//! Must not touch: Raft, storage, the network, clocks or randomness (see
//! the `state` module: a pure, deterministic function of the log, with
//! `BTreeMap`s only; digests depend on that order); nor the bundle or the
//! replicas' indexes, which replay `Catalog::changed_since` themselves.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Bound;

use serde::{Deserialize, Serialize};

use super::checks::{check_text, Verdict};
use super::{ClusterState, MAX_CATEGORIES_PER_ITEM, MAX_ITEMS_PER_COMMAND, MAX_VECTOR_DIM};
use crate::ids::{item_key, shard_of, validate_id};

/// One item of the realtime catalog overlay.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemRecord {
    pub id: String,
    pub vector: Vec<f32>,
    pub categories: Vec<String>,
    pub title: Option<String>,
    pub created_at: i64,
}

/// The realtime item overlay on top of the active bundle: upserts and
/// deletes in log order. Every id appears under exactly one log index in
/// `by_index` (that of its latest write), which keeps `by_index` as small as
/// the overlay and makes `changed_since` return each id once.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Catalog {
    items: BTreeMap<String, (ItemRecord, u64)>,
    /// Tombstones: id -> log index of the delete. Kept because the item may
    /// live in the bundle, which the overlay must keep hiding.
    deleted: BTreeMap<String, u64>,
    by_index: BTreeMap<u64, Vec<String>>,
}

/// One overlay change, as a replica replays it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CatalogChange<'a> {
    Upsert { index: u64, item: &'a ItemRecord },
    Delete { index: u64, id: &'a str },
}

impl CatalogChange<'_> {
    pub fn index(&self) -> u64 {
        match self {
            CatalogChange::Upsert { index, .. } | CatalogChange::Delete { index, .. } => *index,
        }
    }

    pub fn id(&self) -> &str {
        match self {
            CatalogChange::Upsert { item, .. } => &item.id,
            CatalogChange::Delete { id, .. } => id,
        }
    }
}

impl Catalog {
    /// The overlay item `id` and the log index that wrote it.
    pub fn get(&self, id: &str) -> Option<(&ItemRecord, u64)> {
        self.items.get(id).map(|(item, index)| (item, *index))
    }

    /// The log index of the delete of `id`, if the overlay hides it.
    pub fn deleted_at(&self, id: &str) -> Option<u64> {
        self.deleted.get(id).copied()
    }

    /// Number of live overlay items.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Number of tombstones.
    pub fn deleted_len(&self) -> usize {
        self.deleted.len()
    }

    /// Vector dimension of the overlay (all live items share it).
    pub fn dimension(&self) -> Option<usize> {
        self.items
            .values()
            .next()
            .map(|(item, _)| item.vector.len())
    }

    /// Log index of the latest overlay write still visible.
    pub fn last_index(&self) -> Option<u64> {
        self.by_index.keys().next_back().copied()
    }

    /// Every change written after log index `index`, in log order; within
    /// one index, in the order the command listed them. A replica that has
    /// reconciled up to `index` replays exactly these.
    pub fn changed_since(&self, index: u64) -> impl Iterator<Item = CatalogChange<'_>> + '_ {
        self.by_index
            .range((Bound::Excluded(index), Bound::Unbounded))
            .flat_map(move |(&at, ids)| {
                ids.iter().map(move |id| match self.items.get(id) {
                    Some((item, written)) if *written == at => {
                        CatalogChange::Upsert { index: at, item }
                    }
                    _ => CatalogChange::Delete { index: at, id },
                })
            })
    }

    /// Live overlay items whose id hashes to `shard` of `shards`, in id order.
    pub fn items_for_shard(
        &self,
        shard: u32,
        shards: u32,
    ) -> impl Iterator<Item = &ItemRecord> + '_ {
        self.items
            .values()
            .map(|(item, _)| item)
            .filter(move |item| shards > 0 && shard_of(item_key(&item.id), shards) == shard)
    }

    /// Tombstoned ids that hash to `shard` of `shards`, in id order.
    pub fn deleted_for_shard(&self, shard: u32, shards: u32) -> impl Iterator<Item = &str> + '_ {
        self.deleted
            .keys()
            .map(|id| id.as_str())
            .filter(move |id| shards > 0 && shard_of(item_key(id), shards) == shard)
    }

    fn forget_index_of(&mut self, id: &str, index: u64) {
        if let Some(ids) = self.by_index.get_mut(&index) {
            ids.retain(|x| x != id);
            if ids.is_empty() {
                self.by_index.remove(&index);
            }
        }
    }

    pub(super) fn upsert(&mut self, item: ItemRecord, index: u64) {
        if let Some((_, old)) = self.items.get(&item.id) {
            let old = *old;
            self.forget_index_of(&item.id, old);
        }
        if let Some(old) = self.deleted.remove(&item.id) {
            self.forget_index_of(&item.id, old);
        }
        self.by_index
            .entry(index)
            .or_default()
            .push(item.id.clone());
        self.items.insert(item.id.clone(), (item, index));
    }

    pub(super) fn delete(&mut self, id: String, index: u64) {
        if let Some((_, old)) = self.items.remove(&id) {
            self.forget_index_of(&id, old);
        }
        if let Some(old) = self.deleted.get(&id).copied() {
            self.forget_index_of(&id, old);
        }
        self.by_index.entry(index).or_default().push(id.clone());
        self.deleted.insert(id, index);
    }
}

impl ClusterState {
    /// blake3 (hex) over the overlay entries of `shard` (live items and
    /// tombstones) in id order. Log indexes are left out: two replicas agree
    /// when they expose the same items, however they got there.
    pub fn digest_shard(&self, shard: u32, shards: u32) -> String {
        let mut entries: BTreeMap<&str, Option<&ItemRecord>> = BTreeMap::new();
        for item in self.catalog.items_for_shard(shard, shards) {
            entries.insert(&item.id, Some(item));
        }
        for id in self.catalog.deleted_for_shard(shard, shards) {
            entries.insert(id, None);
        }
        let mut h = blake3::Hasher::new();
        h.update(b"funnel.catalog.shard.v1\0");
        for (id, entry) in entries {
            hash_str(&mut h, id);
            match entry {
                None => {
                    h.update(&[0]);
                }
                Some(item) => {
                    h.update(&[1]);
                    h.update(&(item.vector.len() as u64).to_le_bytes());
                    for x in &item.vector {
                        h.update(&x.to_le_bytes());
                    }
                    h.update(&(item.categories.len() as u64).to_le_bytes());
                    for c in &item.categories {
                        hash_str(&mut h, c);
                    }
                    match &item.title {
                        None => h.update(&[0]),
                        Some(t) => {
                            h.update(&[1]);
                            hash_str(&mut h, t);
                            &mut h
                        }
                    };
                    h.update(&item.created_at.to_le_bytes());
                }
            }
        }
        h.finalize().to_hex().to_string()
    }

    pub(super) fn check_upsert(&self, items: &[ItemRecord]) -> Verdict {
        if items.is_empty() {
            return Err("no items given".to_string());
        }
        if items.len() > MAX_ITEMS_PER_COMMAND {
            return Err(format!(
                "{} items in one command; split into batches of at most {MAX_ITEMS_PER_COMMAND}",
                items.len()
            ));
        }
        let mut dim = self.catalog.dimension();
        let mut seen = BTreeSet::new();
        for item in items {
            validate_id(&item.id).map_err(|e| format!("item id {:?}: {e}", item.id))?;
            if !seen.insert(item.id.as_str()) {
                return Err(format!("item {} is listed twice", item.id));
            }
            if item.vector.is_empty() || item.vector.len() > MAX_VECTOR_DIM {
                return Err(format!(
                    "item {} has a vector of length {}; it must be 1..={MAX_VECTOR_DIM}",
                    item.id,
                    item.vector.len()
                ));
            }
            if let Some(pos) = item.vector.iter().position(|x| !x.is_finite()) {
                return Err(format!(
                    "item {} has a non-finite vector value at position {pos}",
                    item.id
                ));
            }
            match dim {
                None => dim = Some(item.vector.len()),
                Some(d) if d != item.vector.len() => {
                    return Err(format!(
                        "item {} has dimension {} but the catalog uses {d}",
                        item.id,
                        item.vector.len()
                    ))
                }
                Some(_) => {}
            }
            if item.categories.len() > MAX_CATEGORIES_PER_ITEM {
                return Err(format!(
                    "item {} has {} categories; the limit is {MAX_CATEGORIES_PER_ITEM}",
                    item.id,
                    item.categories.len()
                ));
            }
            for c in &item.categories {
                check_text(&format!("item {} category", item.id), c)?;
            }
            if let Some(title) = &item.title {
                check_text(&format!("item {} title", item.id), title)?;
            }
        }
        Ok(())
    }
}

fn hash_str(h: &mut blake3::Hasher, s: &str) {
    h.update(&(s.len() as u64).to_le_bytes());
    h.update(s.as_bytes());
}
