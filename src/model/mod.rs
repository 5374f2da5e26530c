//! A loaded model version, as the serving side uses it: the bundle's item
//! table, item-CF lists, ranked lists, ranker, user vectors and the
//! parameters it was trained with, immutable once loaded. A request holds
//! one `Arc<ServingModel>` from start to end, so it is answered by exactly
//! one version even while a new one is swapped in.
//!
//! Owns: decoding a bundle into serving structures and the rules for what
//! a bundle without a component falls back to (an imported bundle has no
//! ranker or item-CF). Must not touch: shards (their indexes are loaded by
//! the shard host, per shard), live state (events, upserts).

use crate::bundle::{Bundle, BundleError, ItemTable, Manifest, OpenCheck, UserTable};
use crate::features::{FeatureSchema, ItemStats, UserState};
use crate::ids::KeyMap;
use crate::matrix::Matrix;
use crate::ranking::score::Ranker;
use crate::recall::{CfIndex, KeyLists};
use crate::sparse::Csr;
use crate::training::pipeline::PipelineParams;
use crate::training::popularity::ItemLists;
use crate::training::trainer::sections;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Bundle(#[from] BundleError),
    #[error("bundle {dir}: {reason}")]
    Inconsistent { dir: PathBuf, reason: String },
}

pub struct ServingModel {
    pub version: String,
    pub dir: PathBuf,
    pub manifest: Manifest,
    pub dimension: usize,
    pub shard_count: u32,
    pub items: ItemTable,
    key_to_idx: KeyMap<u32>,
    /// Item counters as of the end of training.
    pub item_stats: Vec<ItemStats>,
    pub cf: CfIndex,
    pub lists: KeyLists,
    pub ranker: std::sync::Arc<Ranker>,
    /// `Y^T Y` of the item vectors, for folding in new users.
    pub gram: Option<Vec<f32>>,
    pub params: PipelineParams,
    /// Mean vector per category (index = category), for folding in items.
    pub category_centroids: Vec<Vec<f32>>,
    pub users: UserTable,
    user_rows: HashMap<String, u32>,
    pub user_vectors: Matrix,
}

/// What loading produced besides the model: the users' state at the end of
/// training, which seeds the realtime user store.
pub struct Loaded {
    pub model: ServingModel,
    pub user_states: Vec<(String, UserState)>,
}

impl ServingModel {
    /// Opens and verifies the bundle and decodes everything but the shards.
    pub fn load(dir: &Path) -> Result<Loaded, ModelError> {
        Self::load_keeping(dir, &|_| true)
    }

    /// `load`, with the user states of only the users `keep_user` selects
    /// (a cluster node keeps its own user partitions).
    pub fn load_keeping(
        dir: &Path,
        keep_user: &dyn Fn(&str) -> bool,
    ) -> Result<Loaded, ModelError> {
        let schema = FeatureSchema::current();
        let bundle = Bundle::open(
            dir,
            &OpenCheck {
                feature_schema_hash: Some(&schema.hash),
            },
        )?;
        let manifest = bundle.manifest().clone();
        let items = bundle.items()?;
        let (users, user_vectors) = bundle.users()?;
        let inconsistent = |reason: String| ModelError::Inconsistent {
            dir: dir.to_path_buf(),
            reason,
        };
        let n = items.len();
        let key_to_idx: KeyMap<u32> = items
            .keys
            .iter()
            .enumerate()
            .map(|(i, &k)| (k, i as u32))
            .collect();

        let item_stats: Vec<ItemStats> =
            match bundle.section::<Vec<ItemStats>>(sections::ITEM_STATS)? {
                Some(s) if s.len() == n => s,
                Some(s) => {
                    return Err(inconsistent(format!(
                        "{} item stats for {n} items",
                        s.len()
                    )))
                }
                // an imported bundle: popularity (if any) stands in for the counters
                None => items
                    .popularity
                    .iter()
                    .map(|&p| ItemStats {
                        count: p,
                        trending: 0.0,
                        trending_ts: 0,
                    })
                    .collect(),
            };
        let cf_lists = bundle
            .section::<Csr>(sections::ITEMCF)?
            .unwrap_or_else(|| Csr::from_rows(n, vec![Vec::new(); n]));
        let cf =
            CfIndex::new(items.keys.clone(), cf_lists).map_err(|e| inconsistent(e.to_string()))?;
        let key = |v: &[u32]| -> Result<Vec<u64>, ModelError> {
            v.iter()
                .map(|&i| {
                    items
                        .keys
                        .get(i as usize)
                        .copied()
                        .ok_or_else(|| inconsistent(format!("list entry {i} >= {n} items")))
                })
                .collect()
        };
        let lists = match bundle.section::<ItemLists>(sections::LISTS)? {
            Some(l) => KeyLists {
                popular: key(&l.popular)?,
                fresh: key(&l.fresh)?,
                by_category: l
                    .by_category
                    .iter()
                    .map(|c| key(c))
                    .collect::<Result<_, _>>()?,
            },
            None => fallback_lists(&items),
        };
        let ranker = bundle
            .section::<Ranker>(sections::RANKER)?
            .unwrap_or(Ranker::RankFusion);
        if let Ranker::Gbdt(m) = &ranker {
            m.validate()
                .map_err(|e| inconsistent(format!("ranker: {e}")))?;
            if m.n_features() != crate::features::N_FEATURES {
                return Err(inconsistent(format!(
                    "ranker expects {} features, this funnel computes {}",
                    m.n_features(),
                    crate::features::N_FEATURES
                )));
            }
        }
        let gram: Option<Vec<f32>> = bundle.section(sections::ALS_GRAM)?;
        let dimension = manifest.dimension as usize;
        if let Some(g) = &gram {
            if g.len() != dimension * dimension {
                return Err(inconsistent(format!(
                    "gram matrix has {} values for dimension {dimension}",
                    g.len()
                )));
            }
        }
        let params: PipelineParams = bundle.section(sections::PIPELINE)?.unwrap_or_default();
        let category_centroids: Vec<Vec<f32>> = bundle
            .section(sections::CATEGORY_CENTROIDS)?
            .unwrap_or_default();
        if category_centroids
            .iter()
            .any(|c| !c.is_empty() && c.len() != dimension)
        {
            return Err(inconsistent(
                "a category centroid has the wrong dimension".into(),
            ));
        }
        let user_states = kept_user_states(&bundle, dir, &users.ids, keep_user)?;
        let user_rows = users
            .ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), i as u32))
            .collect();
        Ok(Loaded {
            model: ServingModel {
                version: manifest.model_version.clone(),
                dir: dir.to_path_buf(),
                dimension,
                shard_count: manifest.shard_count,
                manifest,
                items,
                key_to_idx,
                item_stats,
                cf,
                lists,
                ranker: std::sync::Arc::new(ranker),
                gram,
                params,
                category_centroids,
                users,
                user_rows,
                user_vectors,
            },
            user_states,
        })
    }

    /// The bundle's user states of the users `keep` selects (a user
    /// partition this node starts holding after the version was loaded).
    pub fn load_user_states(
        &self,
        keep: impl Fn(&str) -> bool,
    ) -> Result<Vec<(String, UserState)>, ModelError> {
        let bundle = Bundle::open_unverified(&self.dir)?;
        kept_user_states(&bundle, &self.dir, &self.users.ids, &keep)
    }

    /// A vector for an item known only by its categories: the mean of
    /// their centroids (None when no category has one).
    pub fn fold_item(&self, categories: &[u16]) -> Option<Vec<f32>> {
        crate::features::fold_categories(&self.category_centroids, categories, self.dimension)
    }

    pub fn item_index(&self, key: u64) -> Option<u32> {
        self.key_to_idx.get(&key).copied()
    }

    /// The trained vector of a user, if the bundle has one.
    pub fn user_vector(&self, user_id: &str) -> Option<&[f32]> {
        let row = *self.user_rows.get(user_id)? as usize;
        (row < self.user_vectors.rows() && self.user_vectors.cols() > 0)
            .then(|| self.user_vectors.row(row))
    }
}

/// Lists for a bundle that has none: items by stored popularity.
fn fallback_lists(items: &ItemTable) -> KeyLists {
    let mut order: Vec<usize> = (0..items.len()).collect();
    order.sort_by(|&a, &b| {
        items.popularity[b]
            .total_cmp(&items.popularity[a])
            .then(a.cmp(&b))
    });
    let popular: Vec<u64> = order.iter().take(500).map(|&i| items.keys[i]).collect();
    let mut by_created: Vec<usize> = (0..items.len())
        .filter(|&i| items.created_at[i].is_some())
        .collect();
    by_created.sort_by(|&a, &b| {
        items.created_at[b]
            .cmp(&items.created_at[a])
            .then(a.cmp(&b))
    });
    let fresh = by_created
        .iter()
        .take(500)
        .map(|&i| items.keys[i])
        .collect();
    let mut by_category = vec![Vec::new(); items.category_names.len()];
    for &i in &order {
        for &c in &items.categories[i] {
            if let Some(l) = by_category.get_mut(c as usize) {
                if l.len() < 200 {
                    l.push(items.keys[i]);
                }
            }
        }
    }
    KeyLists {
        popular,
        fresh,
        by_category,
    }
}

/// The bundle's user states of the users `keep` selects (of `ids`, the
/// bundle's user table), decoded without ever holding the others.
fn kept_user_states(
    bundle: &Bundle,
    dir: &Path,
    ids: &[String],
    keep: &dyn Fn(&str) -> bool,
) -> Result<Vec<(String, UserState)>, ModelError> {
    let Some((n, kept)) = bundle
        .section_filtered::<UserState>(sections::USER_STATES, &mut |i| {
            ids.get(i).is_some_and(|id| keep(id))
        })?
    else {
        return Ok(Vec::new());
    };
    if n != ids.len() {
        return Err(ModelError::Inconsistent {
            dir: dir.to_path_buf(),
            reason: format!("{n} user states for {} users", ids.len()),
        });
    }
    Ok(kept.into_iter().map(|(i, s)| (ids[i].clone(), s)).collect())
}
