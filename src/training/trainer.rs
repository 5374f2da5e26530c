//! `funnel train`: from a dataset to a bundle. Trains the ranker on a
//! temporal holdout (what recall returns for each user's next
//! interactions), refits every recall model on all the data, and writes the
//! bundle the serving nodes load.

use super::pipeline::{
    fit_models, ranker_from_holdout, FitInput, FittedModels, PipelineParams, RankerReport,
};
use crate::bundle::{
    BundleWriter, FeatureSchemaRef, IndexParams, ItemTable, ManifestFields, UserTable, WriteOptions,
};
use crate::dataset::Dataset;
use crate::features::{Demographics, FeatureSchema};
use crate::ids::item_key;
use crate::progress::Progress;
use crate::ranking::score::Ranker;
use crate::training::TrainError;
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
    /// Threads building the ANN indexes (0 = one per core).
    pub index_threads: usize,
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
    /// Items without interactions whose vector was folded from categories.
    pub cold_items_folded: usize,
    pub interactions: usize,
    pub shards: u32,
    pub dimension: usize,
    pub ranker: RankerReport,
    pub steps: Vec<(String, f64)>,
    pub seconds: f64,
}

pub fn train(ds: &Dataset, opts: &TrainOptions) -> Result<TrainSummary, TrainError> {
    let t0 = std::time::Instant::now();
    let progress = Progress::new(opts.progress);
    if ds.interactions.is_empty() {
        return Err(TrainError::EmptyDataset);
    }
    if opts.shards == 0 {
        return Err(TrainError::NoShards);
    }
    let src = BundleSource {
        item_ids: ds.items.ids().to_vec(),
        titles: ds.item_meta.iter().map(|m| m.title.clone()).collect(),
        categories: ds.item_meta.iter().map(|m| m.categories.clone()).collect(),
        created_at: ds.item_meta.iter().map(|m| m.created_at).collect(),
        category_names: ds.categories.clone(),
        user_ids: ds.users.ids().to_vec(),
        occupation_names: ds.occupations.clone(),
        fingerprint: ds.fingerprint.clone(),
    };
    // refuse 64-bit key collisions before hours of training
    src.item_table().validate().map_err(TrainError::Items)?;
    let keys: Vec<u64> = ds.items.ids().iter().map(|id| item_key(id)).collect();
    let demographics: Vec<Demographics> = ds.user_meta.iter().map(Demographics::from).collect();
    let input = FitInput {
        n_users: ds.users.len(),
        interactions: &ds.interactions,
        item_keys: &keys,
        item_categories: &src.categories,
        item_created: &src.created_at,
        demographics: &demographics,
        n_categories: ds.categories.len(),
        include_cold_items: true,
    };
    let p = &opts.params;
    let (ranker, ranker_report) = ranker_from_holdout(&input, p, 3, &progress)?;
    let models = fit_models(&input, p, &progress)?;
    let step = progress.step("write bundle", 1);
    let manifest = write_bundle(&src, &models, &ranker, &ranker_report, opts)?;
    step.done();
    Ok(TrainSummary {
        bundle: opts.out.clone(),
        model_version: manifest.model_version,
        users: ds.users.len(),
        items: ds.items.len(),
        cold_items_folded: models.cold_folded,
        interactions: ds.interactions.len(),
        shards: opts.shards,
        dimension: models.als.item_factors.cols(),
        ranker: ranker_report,
        steps: progress.summary(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// The data-side facts a bundle records besides the fitted models, indexed
/// like the models' users and items.
pub struct BundleSource {
    pub item_ids: Vec<String>,
    pub titles: Vec<Option<String>>,
    pub categories: Vec<Vec<u16>>,
    pub created_at: Vec<Option<i64>>,
    pub category_names: Vec<String>,
    pub user_ids: Vec<String>,
    pub occupation_names: Vec<String>,
    pub fingerprint: String,
}

impl BundleSource {
    fn item_table(&self) -> ItemTable {
        let mut items = ItemTable::from_ids(self.item_ids.clone());
        items.titles = self.titles.clone();
        items.categories = self.categories.clone();
        items.created_at = self.created_at.clone();
        items.category_names = self.category_names.clone();
        items
    }
}

/// Writes fitted models and a ranker as a bundle (used by `funnel train`
/// and by `funnel eval --export-bundle`).
pub fn write_bundle(
    src: &BundleSource,
    models: &FittedModels,
    ranker: &Ranker,
    ranker_report: &RankerReport,
    opts: &TrainOptions,
) -> Result<crate::bundle::Manifest, TrainError> {
    let err = TrainError::WriteBundle;
    let p = &opts.params;
    let mut items = src.item_table();
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
        format!("v{now}-{}", src.fingerprint.get(..8).unwrap_or("00000000"))
    });
    let mut w = BundleWriter::create(
        &opts.out,
        WriteOptions {
            force: opts.force,
            index_threads: opts.index_threads,
        },
    )
    .map_err(err)?;
    w.put_items(&items).map_err(err)?;
    w.put_item_vectors(
        &items,
        &models.als.item_factors,
        opts.shards,
        opts.index.clone(),
    )
    .map_err(err)?;
    let users = UserTable {
        ids: src.user_ids.clone(),
        occupation_names: src.occupation_names.clone(),
    };
    w.put_users(&users, &models.als.user_factors).map_err(err)?;
    w.put_section(sections::ALS_GRAM, &models.item_gram)
        .map_err(err)?;
    w.put_section(sections::ITEMCF, models.cf.lists())
        .map_err(err)?;
    w.put_section(sections::LISTS, &models.lists).map_err(err)?;
    w.put_section(sections::ITEM_STATS, &models.item_stats)
        .map_err(err)?;
    w.put_section(sections::USER_STATES, &models.user_states)
        .map_err(err)?;
    w.put_section(sections::RANKER, ranker).map_err(err)?;
    w.put_section(sections::PIPELINE, p).map_err(err)?;
    w.put_section(sections::CATEGORY_CENTROIDS, &models.category_centroids)
        .map_err(err)?;
    let schema = FeatureSchema::current();
    w.finish(ManifestFields {
        model_version,
        created_at_unix: None,
        input_fingerprint: src.fingerprint.clone(),
        feature_schema: FeatureSchemaRef {
            version: schema.version,
            hash: schema.hash,
        },
        components: [
            sections::RANKER,
            sections::ITEMCF,
            sections::LISTS,
            sections::ITEM_STATS,
            sections::USER_STATES,
            sections::ALS_GRAM,
            sections::PIPELINE,
            sections::CATEGORY_CENTROIDS,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        metrics: serde_json::json!({ "ranker": ranker_report, "extra": opts.metrics }),
        params: serde_json::to_value(p).unwrap_or_default(),
    })
    .map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bundle::BundleError;
    use crate::dataset::{EventKind, Interaction, ItemMeta, UserMeta};
    use crate::gen::{generate, GenParams};
    use crate::ids::IdMap;

    fn options(out: PathBuf) -> TrainOptions {
        let mut params = PipelineParams::default();
        params.als.factors = 8;
        params.als.iterations = 2;
        params.gbdt.trees = 5;
        TrainOptions {
            out,
            force: false,
            shards: 1,
            params,
            index: IndexParams::default(),
            index_threads: 1,
            model_version: Some("test".into()),
            progress: false,
            metrics: serde_json::Value::Null,
        }
    }

    fn one_interaction(item_id: &str) -> Dataset {
        Dataset {
            users: IdMap::from_ids(["u"]),
            items: IdMap::from_ids([item_id]),
            interactions: vec![Interaction {
                user: 0,
                item: 0,
                ts: 1,
                kind: EventKind::View,
                value: 1.0,
            }],
            item_meta: vec![ItemMeta::default()],
            user_meta: vec![UserMeta::default()],
            ..Default::default()
        }
    }

    #[test]
    fn refusals_before_training_are_typed() {
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path().join("bundle"));

        let err = train(&Dataset::default(), &opts).err().unwrap();
        assert!(matches!(err, TrainError::EmptyDataset), "{err:?}");
        assert_eq!(
            err.to_string(),
            "the dataset has no interactions; nothing to train on"
        );

        let no_shards = TrainOptions {
            shards: 0,
            ..opts.clone()
        };
        let err = train(&one_interaction("a"), &no_shards).err().unwrap();
        assert!(matches!(err, TrainError::NoShards), "{err:?}");
        assert_eq!(err.to_string(), "--shards must be at least 1");

        // an item id with a control character: refused by the item table
        let err = train(&one_interaction("a\u{1}b"), &opts).err().unwrap();
        let TrainError::Items(inner) = &err else {
            panic!("expected the item table's error, got {err:?}");
        };
        assert_eq!(err.to_string(), inner.to_string());
        assert!(!opts.out.exists(), "nothing written");
    }

    #[test]
    fn a_bundle_write_failure_wraps_the_bundle_error() {
        let ds = generate(&GenParams {
            users: 60,
            items: 40,
            interactions: 800,
            ..GenParams::default()
        })
        .unwrap();
        let keys: Vec<u64> = ds.items.ids().iter().map(|id| item_key(id)).collect();
        let categories: Vec<Vec<u16>> = ds.item_meta.iter().map(|m| m.categories.clone()).collect();
        let created: Vec<Option<i64>> = ds.item_meta.iter().map(|m| m.created_at).collect();
        let demographics: Vec<Demographics> = ds.user_meta.iter().map(Demographics::from).collect();
        let input = FitInput {
            n_users: ds.users.len(),
            interactions: &ds.interactions,
            item_keys: &keys,
            item_categories: &categories,
            item_created: &created,
            demographics: &demographics,
            n_categories: ds.categories.len(),
            include_cold_items: true,
        };
        // the output directory exists and --force was not given
        let dir = tempfile::tempdir().unwrap();
        let opts = options(dir.path().to_path_buf());
        let models = fit_models(&input, &opts.params, &Progress::hidden()).unwrap();
        let src = BundleSource {
            item_ids: ds.items.ids().to_vec(),
            titles: vec![None; ds.items.len()],
            categories,
            created_at: created,
            category_names: ds.categories.clone(),
            user_ids: ds.users.ids().to_vec(),
            occupation_names: ds.occupations.clone(),
            fingerprint: "0123456789abcdef".into(),
        };
        let report = RankerReport::default();
        let err = write_bundle(&src, &models, &Ranker::RankFusion, &report, &opts)
            .err()
            .unwrap();
        let TrainError::WriteBundle(inner @ BundleError::Exists { dir: d }) = &err else {
            panic!("expected the bundle writer's error, got {err:?}");
        };
        assert_eq!(d, dir.path());
        assert_eq!(err.to_string(), inner.to_string());
    }
}
