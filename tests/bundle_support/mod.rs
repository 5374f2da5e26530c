//! Shared fixtures for the bundle integration tests: a small generated
//! bundle with items, users, item vectors in several shards and sections.

#![allow(dead_code)]

use funnel::bundle::{
    BundleWriter, FeatureSchemaRef, IndexParams, ItemTable, Manifest, ManifestFields, UserTable,
    WriteOptions,
};
use funnel::matrix::Matrix;
use funnel::rng::Rng;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const SCHEMA_HASH: &str = "schema-hash-a";
pub const DIM: usize = 8;

/// A section type like the ones other modules store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Neighbours {
    pub lists: Vec<(u64, Vec<(u64, f32)>)>,
}

pub struct Sample {
    pub items: ItemTable,
    pub item_vectors: Matrix,
    pub users: UserTable,
    pub user_vectors: Matrix,
    pub neighbours: Neighbours,
    pub manifest: Manifest,
}

/// Random vectors scaled to unit length, so an item is its own best match
/// under inner product.
pub fn unit_vectors(rows: usize, cols: usize, seed: u64) -> Matrix {
    let mut rng = Rng::new(seed);
    let mut m = Matrix::zeros(rows, cols);
    for r in 0..rows {
        let row = m.row_mut(r);
        for v in row.iter_mut() {
            *v = rng.normal() as f32;
        }
        let norm = row.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-6);
        for v in row.iter_mut() {
            *v /= norm;
        }
    }
    m
}

pub fn sample_items(n: usize) -> ItemTable {
    let mut items = ItemTable::from_ids((0..n).map(|i| format!("item-{i}")).collect());
    items.category_names = vec!["drama".into(), "comedy".into()];
    for i in 0..n {
        items.titles[i] = (i % 3 != 0).then(|| format!("Title {i}"));
        items.categories[i] = match i % 4 {
            0 => vec![],
            1 => vec![0],
            2 => vec![1],
            _ => vec![0, 1],
        };
        items.created_at[i] = (i % 2 == 0).then_some(1_600_000_000 + i as i64);
        items.popularity[i] = (n - i) as f32;
        items.trending[i] = (i % 7) as f32 * 0.5;
    }
    items
}

pub fn fields(model_version: &str) -> ManifestFields {
    ManifestFields {
        model_version: model_version.into(),
        created_at_unix: Some(1_700_000_000),
        input_fingerprint: "fingerprint-123".into(),
        feature_schema: FeatureSchemaRef {
            version: 3,
            hash: SCHEMA_HASH.into(),
        },
        components: vec!["itemcf".into(), "ranker".into()],
        metrics: serde_json::json!({"recall@10": 0.31, "ndcg@10": 0.17}),
        params: serde_json::json!({"factors": DIM, "seed": 7}),
    }
}

/// Writes the sample bundle to `out` with `shards` shards.
pub fn write_sample(out: &Path, shards: u32, model_version: &str) -> Sample {
    let items = sample_items(60);
    let item_vectors = unit_vectors(60, DIM, 11);
    let users = UserTable {
        ids: (0..20).map(|i| format!("user-{i}")).collect(),
        occupation_names: vec!["writer".into(), "engineer".into()],
    };
    let user_vectors = unit_vectors(20, DIM, 12);
    let neighbours = Neighbours {
        lists: items
            .keys
            .iter()
            .take(5)
            .map(|&k| (k, vec![(items.keys[10], 0.5), (items.keys[11], 0.25)]))
            .collect(),
    };
    // one thread per shard: the byte-identical-bundles test relies on it
    let opts = WriteOptions {
        index_threads: 1,
        ..WriteOptions::default()
    };
    let mut w = BundleWriter::create(out, opts).unwrap();
    w.put_items(&items).unwrap();
    w.put_users(&users, &user_vectors).unwrap();
    w.put_item_vectors(&items, &item_vectors, shards, IndexParams::default())
        .unwrap();
    w.put_section("itemcf", &neighbours).unwrap();
    w.put_section("ranker", &vec![1.5f32, -2.0, 0.25]).unwrap();
    let manifest = w.finish(fields(model_version)).unwrap();
    Sample {
        items,
        item_vectors,
        users,
        user_vectors,
        neighbours,
        manifest,
    }
}

/// Names of the entries of `dir` (sorted), to see temp leftovers.
pub fn entries(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
