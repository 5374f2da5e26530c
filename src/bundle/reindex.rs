//! `funnel bundle reindex`: a copy of a bundle with its ANN indexes built
//! again, with other HNSW parameters, another vector storage kind or
//! another shard count, without retraining.
//!
//! Why: the shard count of a cluster is fixed at creation and a bundle must
//! match it; index parameters trade recall for CPU and are worth trying on
//! the real vectors (`funnel bundle ann-recall` measures them in memory
//! first). Everything but the shard files is copied byte for byte, so the
//! copy ranks exactly like the source.
//!
//! Owns: assembling the item vectors from the source's shards and writing
//! the copy. Must not touch: what the sections mean.

use super::error::{BundleError, Result};
use super::manifest::{
    IndexParams, Manifest, ManifestFields, COMPONENT_ANN, COMPONENT_USERS, COMPONENT_USER_VECTORS,
};
use super::reader::{Bundle, OpenCheck};
use super::writer::{BundleWriter, WriteOptions};
use crate::matrix::Matrix;
use std::collections::HashMap;
use std::path::Path;

/// What changes in the copy; `None` keeps the source's value. Also the
/// flags of `funnel bundle reindex`.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ReindexOptions {
    /// Shard count of the copy (default: the source's).
    #[arg(long)]
    pub shards: Option<u32>,
    /// HNSW connectivity (M).
    #[arg(long, value_name = "M")]
    pub connectivity: Option<u32>,
    /// HNSW expansion while building.
    #[arg(long, value_name = "N")]
    pub expansion_add: Option<u32>,
    /// HNSW expansion while searching (what a node serves with by default).
    #[arg(long, value_name = "N")]
    pub expansion_search: Option<u32>,
    /// How the indexes store vectors (f32, or f16 with exact re-scoring).
    #[arg(long, value_name = "KIND",
          value_parser = clap::builder::PossibleValuesParser::new(super::manifest::QUANTIZATIONS))]
    pub quantization: Option<String>,
    /// Model version of the copy (default: the source's + "-reindexed"; a
    /// cluster refuses two different bundles under one version).
    #[arg(long)]
    pub model_version: Option<String>,
    /// Replace an existing bundle at the output path.
    #[arg(long)]
    pub force: bool,
    /// Threads building the indexes (0 = one per core; 1 = one per shard,
    /// byte-identical files for the same input).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub index_threads: usize,
}

impl ReindexOptions {
    fn params(&self, base: &IndexParams) -> IndexParams {
        IndexParams {
            connectivity: self.connectivity.unwrap_or(base.connectivity),
            expansion_add: self.expansion_add.unwrap_or(base.expansion_add),
            expansion_search: self.expansion_search.unwrap_or(base.expansion_search),
            quantization: self
                .quantization
                .clone()
                .unwrap_or_else(|| base.quantization.clone()),
            ..base.clone()
        }
    }
}

/// Writes the copy of the bundle at `src` to `out` and returns its manifest.
/// Nothing appears at `out` unless the whole copy was written.
pub fn reindex(src: &Path, out: &Path, opts: &ReindexOptions) -> Result<Manifest> {
    let b = Bundle::open(src, &OpenCheck::default())?;
    let m = b.manifest().clone();
    if !m.has_component(COMPONENT_ANN) {
        return Err(BundleError::InvalidInput(format!(
            "bundle {} has no ANN shards to reindex",
            src.display()
        )));
    }
    let params = opts.params(&m.index);
    params.validate()?;
    let shards = opts.shards.unwrap_or(m.shard_count);
    let items = b.items()?;
    let vectors = item_vectors(&b, &items.keys, m.dimension as usize)?;

    let mut w = BundleWriter::create(
        out,
        WriteOptions {
            force: opts.force,
            index_threads: opts.index_threads,
        },
    )?;
    w.put_items(&items)?;
    if m.has_component(COMPONENT_USERS) || m.has_component(COMPONENT_USER_VECTORS) {
        let (users, user_vectors) = b.users()?;
        w.put_users(&users, &user_vectors)?;
    }
    w.put_item_vectors(&items, &vectors, shards, params)?;
    for name in b.section_names() {
        if let Some(bytes) = b.section_bytes(&name)? {
            w.put_section_bytes(&name, &bytes)?;
        }
    }
    let writer_made = [COMPONENT_ANN, COMPONENT_USERS, COMPONENT_USER_VECTORS];
    w.finish(ManifestFields {
        model_version: opts
            .model_version
            .clone()
            .unwrap_or_else(|| format!("{}-reindexed", m.model_version)),
        created_at_unix: Some(m.created_at_unix),
        input_fingerprint: m.input_fingerprint.clone(),
        feature_schema: m.feature_schema.clone(),
        components: m
            .components
            .iter()
            .filter(|c| !writer_made.contains(&c.as_str()))
            .cloned()
            .collect(),
        metrics: m.metrics.clone(),
        params: m.params.clone(),
    })
}

/// Every item's vector, in item-table order, from the source's shards.
fn item_vectors(b: &Bundle, keys: &[u64], dim: usize) -> Result<Matrix> {
    let row_of: HashMap<u64, usize> = keys.iter().enumerate().map(|(i, &k)| (k, i)).collect();
    let mut flat = vec![0f32; keys.len() * dim];
    let mut filled = vec![false; keys.len()];
    for s in 0..b.manifest().shard_count {
        let shard = b.load_shard(s)?;
        for (i, key) in shard.keys.iter().enumerate() {
            let Some(&row) = row_of.get(key) else {
                return Err(BundleError::InvalidInput(format!(
                    "shard {s} holds item key {key:#x}, which the item table does not list; the bundle is inconsistent"
                )));
            };
            flat[row * dim..(row + 1) * dim].copy_from_slice(shard.vectors.row(i));
            filled[row] = true;
        }
    }
    if let Some(row) = filled.iter().position(|f| !f) {
        return Err(BundleError::InvalidInput(format!(
            "item key {:#x} is in the item table but in no shard; the bundle is inconsistent",
            keys[row]
        )));
    }
    Matrix::from_vec(keys.len(), dim, flat).map_err(|e| BundleError::InvalidInput(e.to_string()))
}
