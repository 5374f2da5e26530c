//! `funnel train`: from a dataset to a bundle. Trains the ranker on a
//! temporal holdout (what recall returns for each user's next
//! interactions), refits every recall model on all the data, and writes the
//! bundle the serving nodes load.

use super::pipeline::{fit_models, ranker_from_holdout, FitInput, PipelineParams, RankerReport};
use crate::bundle::{
    BundleWriter, FeatureSchemaRef, IndexParams, ItemTable, ManifestFields, UserTable, WriteOptions,
};
use crate::dataset::Dataset;
use crate::features::{Demographics, FeatureSchema};
use crate::ids::item_key;
use crate::progress::Progress;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Bundle section names, shared by the trainer and the serving loader.
pub mod sections {
    pub const RANKER: &str = "ranker";
    pub const ITEMCF: &str = "itemcf";
    pub const LISTS: &str = "lists";
    pub const ITEM_STATS: &str = "item_stats";
    pub const USER_STATES: &str = "user_states";
    pub const ALS_GRAM: &str = "als_gram";
    pub const PIPELINE: &str = "pipeline";
    pub const CATEGORY_CENTROIDS: &str = "category_centroids";
}

#[derive(Debug, Clone)]
pub struct TrainOptions {
    pub out: PathBuf,
    pub force: bool,
    pub shards: u32,
    pub params: PipelineParams,
    pub index: IndexParams,
    /// None = derived from the time and the input fingerprint.
    pub model_version: Option<String>,
    pub progress: bool,
    /// Metrics to record in the manifest (e.g. from a preceding eval).
    pub metrics: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TrainSummary {
    pub bundle: PathBuf,
    pub model_version: String,
    pub users: usize,
    pub items: usize,
    pub interactions: usize,
    pub shards: u32,
    pub dimension: usize,
    pub ranker: RankerReport,
    pub steps: Vec<(String, f64)>,
    pub seconds: f64,
}

pub fn train(ds: &Dataset, opts: &TrainOptions) -> Result<TrainSummary, String> {
    let t0 = std::time::Instant::now();
    let progress = Progress::new(opts.progress);
    if ds.interactions.is_empty() {
        return Err("the dataset has no interactions; nothing to train on".into());
    }
    if opts.shards == 0 {
        return Err("--shards must be at least 1".into());
    }
    let mut items = ItemTable::from_ids(ds.items.ids().to_vec());
    items.titles = ds.item_meta.iter().map(|m| m.title.clone()).collect();
    items.categories = ds.item_meta.iter().map(|m| m.categories.clone()).collect();
    items.created_at = ds.item_meta.iter().map(|m| m.created_at).collect();
    items.category_names = ds.categories.clone();
    // refuse 64-bit key collisions before hours of training
    items.validate().map_err(|e| e.to_string())?;
    let keys: Vec<u64> = ds.items.ids().iter().map(|id| item_key(id)).collect();
    let demographics: Vec<Demographics> = ds.user_meta.iter().map(Demographics::from).collect();
    let input = FitInput {
        n_users: ds.users.len(),
        interactions: &ds.interactions,
        item_keys: &keys,
        item_categories: &items.categories,
        item_created: &items.created_at,
        demographics: &demographics,
        n_categories: ds.categories.len(),
        include_cold_items: true,
    };
    let p = &opts.params;
    let (ranker, ranker_report) = ranker_from_holdout(&input, p, 3, &progress)?;
    let models = fit_models(&input, p, &progress)?;
    items.popularity = models.item_stats.iter().map(|s| s.count).collect();
    items.trending = models
        .item_stats
        .iter()
        .map(|s| s.trending_at(models.as_of))
        .collect();

    let model_version = opts.model_version.clone().unwrap_or_else(|| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        format!("v{now}-{}", ds.fingerprint.get(..8).unwrap_or("00000000"))
    });
    let step = progress.step("write bundle", 1);
    let mut w = BundleWriter::create(&opts.out, WriteOptions { force: opts.force })
        .map_err(|e| e.to_string())?;
    w.put_items(&items).map_err(|e| e.to_string())?;
    w.put_item_vectors(
        &items,
        &models.als.item_factors,
        opts.shards,
        opts.index.clone(),
    )
    .map_err(|e| e.to_string())?;
    let users = UserTable {
        ids: ds.users.ids().to_vec(),
        occupation_names: ds.occupations.clone(),
    };
    w.put_users(&users, &models.als.user_factors)
        .map_err(|e| e.to_string())?;
    let gram = crate::linalg::gram_matrix(&models.als.item_factors);
    w.put_section(sections::ALS_GRAM, &gram)
        .map_err(|e| e.to_string())?;
    w.put_section(sections::ITEMCF, models.cf.lists())
        .map_err(|e| e.to_string())?;
    w.put_section(sections::LISTS, &models.lists)
        .map_err(|e| e.to_string())?;
    w.put_section(sections::ITEM_STATS, &models.item_stats)
        .map_err(|e| e.to_string())?;
    w.put_section(sections::USER_STATES, &models.user_states)
        .map_err(|e| e.to_string())?;
    w.put_section(sections::RANKER, &ranker)
        .map_err(|e| e.to_string())?;
    w.put_section(sections::PIPELINE, p)
        .map_err(|e| e.to_string())?;
    let schema = FeatureSchema::current();
    let manifest = w
        .finish(ManifestFields {
            model_version: model_version.clone(),
            created_at_unix: None,
            input_fingerprint: ds.fingerprint.clone(),
            feature_schema: FeatureSchemaRef {
                version: schema.version,
                hash: schema.hash,
            },
            components: vec![
                sections::RANKER.into(),
                sections::ITEMCF.into(),
                sections::LISTS.into(),
                sections::ITEM_STATS.into(),
                sections::USER_STATES.into(),
                sections::ALS_GRAM.into(),
                sections::CATEGORY_CENTROIDS.into(),
            ],
            metrics: serde_json::json!({ "ranker": ranker_report, "extra": opts.metrics }),
            params: serde_json::to_value(p).unwrap_or_default(),
        })
        .map_err(|e| e.to_string())?;
    step.done();
    Ok(TrainSummary {
        bundle: opts.out.clone(),
        model_version: manifest.model_version,
        users: ds.users.len(),
        items: ds.items.len(),
        interactions: ds.interactions.len(),
        shards: opts.shards,
        dimension: models.als.item_factors.cols(),
        ranker: ranker_report,
        steps: progress.summary(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// Mean item vector per category: what an item upserted with categories
/// but no vector is folded in as. Empty for a category without items.
pub fn category_centroids(
    vectors: &crate::matrix::Matrix,
    categories: &[Vec<u16>],
    n_categories: usize,
) -> Vec<Vec<f32>> {
    let dim = vectors.cols();
    let mut sums = vec![vec![0f64; dim]; n_categories];
    let mut counts = vec![0usize; n_categories];
    for (i, cats) in categories.iter().enumerate() {
        for &c in cats {
            if let Some(s) = sums.get_mut(c as usize) {
                for (a, &v) in s.iter_mut().zip(vectors.row(i)) {
                    *a += f64::from(v);
                }
                counts[c as usize] += 1;
            }
        }
    }
    sums.into_iter()
        .zip(counts)
        .map(|(s, n)| {
            if n == 0 {
                Vec::new()
            } else {
                s.into_iter().map(|v| (v / n as f64) as f32).collect()
            }
        })
        .collect()
}
