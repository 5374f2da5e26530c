//! The live item catalogue every coordinator reads: the active model's
//! item table plus what happened since it was trained — items upserted or
//! deleted through the API, and item counters moved by events.
//!
//! Owns: item lookup by key and by external id across model and overlay,
//! the live `ItemStats`, the fresh list of upserted items, and the category
//! vocabulary extended by upserts. Must not touch: vectors and ANN indexes
//! (shards own those), user state.

use crate::features::{ItemInput, ItemStats};
use crate::ids::item_key;
use crate::ids::{KeyMap, KeySet};
use crate::model::ServingModel;
use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::{Arc, PoisonError, RwLock, RwLockReadGuard};

/// An item added or replaced after the bundle was trained.
#[derive(Debug, Clone, PartialEq)]
pub struct LiveItem {
    pub id: String,
    pub key: u64,
    pub categories: Vec<u16>,
    pub title: Option<String>,
    pub created_at: i64,
    /// Kept so a new model version's shards can take the item over.
    pub vector: Vec<f32>,
}

/// The longest fresh list kept for upserted items.
const FRESH_KEEP: usize = 1000;

#[derive(Default)]
struct Overlay {
    upserted: KeyMap<LiveItem>,
    /// Shared with searches in flight (`deleted_set`): a delete copies
    /// the set only while a search still holds the old one.
    deleted: Arc<KeySet>,
    /// Upserted keys, newest first.
    fresh: VecDeque<u64>,
    /// Category names beyond the model's vocabulary.
    extra_categories: Vec<String>,
}

pub struct Catalog {
    model: Arc<ServingModel>,
    overlay: RwLock<Overlay>,
    stats: RwLock<KeyMap<ItemStats>>,
}

/// The catalogue's live items under one read lock (`Catalog::live_view`).
pub struct LiveView<'a> {
    catalog: &'a Catalog,
    overlay: RwLockReadGuard<'a, Overlay>,
}

impl LiveView<'_> {
    /// Whether `key` is a live item and, when `wanted` is given, in one of
    /// those categories.
    pub fn allows(&self, key: u64, wanted: Option<&[u16]>) -> bool {
        if self.overlay.deleted.contains(&key) {
            return false;
        }
        let model = &self.catalog.model;
        let Some(wanted) = wanted else {
            // no category rule: one lookup, not the categories' too (the
            // local recall paths check a few thousand keys per request)
            return self.overlay.upserted.contains_key(&key) || model.item_index(key).is_some();
        };
        let categories: &[u16] = match self.overlay.upserted.get(&key) {
            Some(item) => &item.categories,
            None => match model.item_index(key) {
                Some(i) => &model.items.categories[i as usize],
                None => return false,
            },
        };
        categories.iter().any(|c| wanted.contains(c))
    }

    /// `allows` for a key taken from the catalogue's own lists (the
    /// bundle's item-CF neighbours, popular, category and fresh lists):
    /// such a key is an item by construction, so without a category rule
    /// only a deletion refuses it and no lookup in the model's million-key
    /// map is needed. The local recall paths check ~400 keys per request,
    /// and on a 1M-item catalogue that lookup, a cache miss each, was ~10 %
    /// of a request's CPU (perf, BENCHMARKS.md section 5).
    pub fn allows_listed(&self, key: u64, wanted: Option<&[u16]>) -> bool {
        match wanted {
            None => self.overlay.deleted.is_empty() || !self.overlay.deleted.contains(&key),
            Some(_) => self.allows(key, wanted),
        }
    }
}

/// Owned copy of what the features need for one item (the catalogue's lock
/// is never held while a request computes).
#[derive(Debug, Clone)]
pub struct ItemFacts {
    pub key: u64,
    pub stats: ItemStats,
    pub created_at: Option<i64>,
    pub categories: Vec<u16>,
}

impl ItemFacts {
    pub fn input<'a>(&'a self, vector: Option<&'a [f32]>) -> ItemInput<'a> {
        ItemInput {
            key: self.key,
            stats: self.stats,
            created_at: self.created_at,
            categories: &self.categories,
            vector,
        }
    }
}

impl Catalog {
    pub fn new(model: Arc<ServingModel>) -> Self {
        let stats = model
            .items
            .keys
            .iter()
            .copied()
            .zip(model.item_stats.iter().copied())
            .collect();
        Catalog {
            model,
            overlay: RwLock::new(Overlay::default()),
            stats: RwLock::new(stats),
        }
    }

    /// A catalogue for a new model version that keeps this one's overlay
    /// (upserted and deleted items, the fresh list); its counters start
    /// from the new model's.
    pub fn carry_over(&self, model: Arc<ServingModel>) -> Catalog {
        let next = Catalog::new(model);
        if let (Ok(old), Ok(mut new)) = (self.overlay.read(), next.overlay.write()) {
            for (k, item) in &old.upserted {
                let mut item = item.clone();
                item.categories = item
                    .categories
                    .iter()
                    .filter_map(|&c| {
                        let name = self.name_in(&old, c)?;
                        next.category_index_in(&mut new, &name)
                    })
                    .collect();
                new.upserted.insert(*k, item);
            }
            new.deleted = old.deleted.clone();
            new.fresh = old.fresh.clone();
        }
        next
    }

    pub fn model(&self) -> &Arc<ServingModel> {
        &self.model
    }

    pub fn is_deleted(&self, key: u64) -> bool {
        self.overlay
            .read()
            .map(|o| o.deleted.contains(&key))
            .unwrap_or(false)
    }

    /// The deleted keys as of now, for a filter that checks thousands of
    /// keys (an ANN search's predicate): one lock here instead of one per
    /// key on every search thread.
    pub fn deleted_set(&self) -> Arc<KeySet> {
        self.overlay
            .read()
            .map(|o| o.deleted.clone())
            .unwrap_or_default()
    }

    /// The live items under one read lock, for per-key checks in a loop
    /// (recall paths' filters). Hold it only for synchronous work: writes
    /// wait while it lives.
    pub fn live_view(&self) -> LiveView<'_> {
        LiveView {
            catalog: self,
            overlay: self.overlay.read().unwrap_or_else(PoisonError::into_inner),
        }
    }

    /// Whether the key names a live item (in the model or upserted, not deleted).
    pub fn contains(&self, key: u64) -> bool {
        let Ok(o) = self.overlay.read() else {
            return false;
        };
        !o.deleted.contains(&key)
            && (o.upserted.contains_key(&key) || self.model.item_index(key).is_some())
    }

    pub fn facts(&self, key: u64) -> Option<ItemFacts> {
        let o = self.overlay.read().ok()?;
        let stats = self.stats.read().ok()?;
        self.facts_locked(&o, &stats, key)
    }

    /// Facts of every live item among `keys`, taking the catalogue's locks
    /// once: a request asks for hundreds, and two lock round trips per item
    /// showed up in profiles of a loaded node.
    pub fn facts_of(&self, keys: impl Iterator<Item = u64>) -> KeyMap<ItemFacts> {
        let (Ok(o), Ok(stats)) = (self.overlay.read(), self.stats.read()) else {
            return KeyMap::default();
        };
        keys.filter_map(|k| self.facts_locked(&o, &stats, k).map(|f| (k, f)))
            .collect()
    }

    fn facts_locked(&self, o: &Overlay, stats: &KeyMap<ItemStats>, key: u64) -> Option<ItemFacts> {
        if o.deleted.contains(&key) {
            return None;
        }
        let stats = stats.get(&key).copied().unwrap_or_default();
        if let Some(item) = o.upserted.get(&key) {
            return Some(ItemFacts {
                key,
                stats,
                created_at: Some(item.created_at),
                categories: item.categories.clone(),
            });
        }
        let i = self.model.item_index(key)? as usize;
        Some(ItemFacts {
            key,
            stats,
            created_at: self.model.items.created_at[i],
            categories: self.model.items.categories[i].clone(),
        })
    }

    /// External id of a live item.
    pub fn external_id(&self, key: u64) -> Option<String> {
        let o = self.overlay.read().ok()?;
        if let Some(item) = o.upserted.get(&key) {
            return Some(item.id.clone());
        }
        self.model
            .item_index(key)
            .map(|i| self.model.items.ids[i as usize].clone())
    }

    pub fn categories_of(&self, key: u64) -> Vec<u16> {
        self.facts(key).map(|f| f.categories).unwrap_or_default()
    }

    /// Category index of a name, if known.
    pub fn category_index(&self, name: &str) -> Option<u16> {
        if let Some(i) = self
            .model
            .items
            .category_names
            .iter()
            .position(|c| c == name)
        {
            return Some(i as u16);
        }
        let o = self.overlay.read().ok()?;
        o.extra_categories
            .iter()
            .position(|c| c == name)
            .map(|i| (self.model.items.category_names.len() + i) as u16)
    }

    fn category_index_in(&self, o: &mut Overlay, name: &str) -> Option<u16> {
        let base = &self.model.items.category_names;
        if let Some(i) = base.iter().position(|c| c == name) {
            return Some(i as u16);
        }
        if let Some(i) = o.extra_categories.iter().position(|c| c == name) {
            return Some((base.len() + i) as u16);
        }
        let idx = base.len() + o.extra_categories.len();
        if idx >= u16::MAX as usize {
            return None;
        }
        o.extra_categories.push(name.to_string());
        Some(idx as u16)
    }

    pub fn category_name(&self, index: u16) -> Option<String> {
        let o = self.overlay.read().ok()?;
        self.name_in(&o, index)
    }

    fn name_in(&self, o: &Overlay, index: u16) -> Option<String> {
        let base = &self.model.items.category_names;
        match base.get(index as usize) {
            Some(n) => Some(n.clone()),
            None => o.extra_categories.get(index as usize - base.len()).cloned(),
        }
    }

    /// Adds or replaces an item; returns its category indices.
    pub fn upsert(
        &self,
        id: &str,
        vector: Vec<f32>,
        categories: &[String],
        title: Option<String>,
        created_at: i64,
    ) -> Vec<u16> {
        let key = item_key(id);
        let Ok(mut o) = self.overlay.write() else {
            return Vec::new();
        };
        let mut cats: Vec<u16> = categories
            .iter()
            .filter_map(|c| self.category_index_in(&mut o, c))
            .collect();
        cats.sort_unstable();
        cats.dedup();
        Arc::make_mut(&mut o.deleted).remove(&key);
        o.upserted.insert(
            key,
            LiveItem {
                id: id.to_string(),
                key,
                categories: cats.clone(),
                title,
                created_at,
                vector,
            },
        );
        o.fresh.retain(|&k| k != key);
        o.fresh.push_front(key);
        o.fresh.truncate(FRESH_KEEP);
        cats
    }

    /// Removes an item; true when it existed.
    pub fn delete(&self, key: u64) -> bool {
        let existed = self.contains(key);
        if let Ok(mut o) = self.overlay.write() {
            o.upserted.remove(&key);
            o.fresh.retain(|&k| k != key);
            if self.model.item_index(key).is_some() {
                Arc::make_mut(&mut o.deleted).insert(key);
            }
        }
        existed
    }

    /// Records an event's effect on the item's counters.
    pub fn record_event(&self, key: u64, ts: i64, strength: f32) {
        if let Ok(mut s) = self.stats.write() {
            s.entry(key).or_default().apply(ts, strength);
        }
    }

    /// The live counters of `key`, live item or not.
    pub fn stats_of(&self, key: u64) -> Option<ItemStats> {
        self.stats.read().ok()?.get(&key).copied()
    }

    /// Adds counters of events counted elsewhere (another node's accepted
    /// events, aggregated per item: `ItemStats::merge`), under one lock.
    pub fn merge_counts(&self, counts: &[(u64, ItemStats)]) {
        if let Ok(mut s) = self.stats.write() {
            for (key, c) in counts {
                s.entry(*key).or_default().merge(c);
            }
        }
    }

    /// The fresh list: upserted items (newest first), then the model's.
    /// Borrowed from the model when nothing was upserted or deleted (the
    /// common case: no copy per request).
    pub fn fresh_list(&self) -> Cow<'_, [u64]> {
        let model_list = &self.model.lists.fresh;
        let o = match self.overlay.read() {
            Ok(o) => o,
            Err(_) => return Cow::Borrowed(model_list),
        };
        if o.fresh.is_empty() && o.deleted.is_empty() {
            return Cow::Borrowed(model_list);
        }
        Cow::Owned(
            o.fresh
                .iter()
                .copied()
                .chain(
                    model_list
                        .iter()
                        .copied()
                        .filter(|k| !o.deleted.contains(k)),
                )
                .collect(),
        )
    }

    /// Category indices for names, adding names the vocabulary lacks.
    pub fn intern_categories(&self, names: &[String]) -> Vec<u16> {
        let Ok(mut o) = self.overlay.write() else {
            return Vec::new();
        };
        let mut cats: Vec<u16> = names
            .iter()
            .filter_map(|c| self.category_index_in(&mut o, c))
            .collect();
        cats.sort_unstable();
        cats.dedup();
        cats
    }

    /// Every item upserted since the model was trained.
    pub fn upserted_items(&self) -> Vec<LiveItem> {
        self.overlay
            .read()
            .map(|o| o.upserted.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Keys the overlay deletes (they may live in the bundle).
    pub fn deleted_keys(&self) -> Vec<u64> {
        self.overlay
            .read()
            .map(|o| o.deleted.iter().copied().collect())
            .unwrap_or_default()
    }

    pub fn upserted_count(&self) -> usize {
        self.overlay.read().map(|o| o.upserted.len()).unwrap_or(0)
    }
}
