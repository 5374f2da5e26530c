//! The small seeded bundle every multi-process test serves: 400 users, 300
//! items, 16 factors; trains in seconds.
//!
//! Owns: its size and training parameters. Must not touch: processes.

use crate::KitError;
use funnel::gen::{generate, GenParams};
use funnel::training::pipeline::PipelineParams;
use funnel::training::trainer::{train, TrainOptions};
use std::path::{Path, PathBuf};

/// Embedding dimension of the small bundle.
pub const DIM: u32 = 16;
/// Users in the small bundle (u000000..u000399).
pub const USERS: u32 = 400;

/// Training parameters of the small bundle (16 factors, 6 ALS iterations,
/// 40 trees): quick, and good enough for serving tests.
pub fn small_params() -> PipelineParams {
    let mut p = PipelineParams::default();
    p.als.factors = DIM as usize;
    p.als.iterations = 6;
    p.gbdt.trees = 40;
    p
}

/// Trains the small bundle from data generated with `seed` into `out`, in
/// `shards` shards, as model `model_version`.
pub fn small_bundle(
    out: &Path,
    seed: u64,
    shards: u32,
    model_version: &str,
) -> Result<PathBuf, KitError> {
    let ds = generate(&GenParams {
        users: USERS as u64,
        items: 300,
        interactions: 16_000,
        seed,
        ..GenParams::default()
    })
    .map_err(|e| KitError::Other(format!("generating the training data: {e}")))?;
    train(
        &ds,
        &TrainOptions {
            out: out.to_path_buf(),
            force: true,
            shards,
            params: small_params(),
            index: Default::default(),
            index_threads: 0,
            model_version: Some(model_version.to_string()),
            progress: false,
            metrics: serde_json::Value::Null,
        },
    )
    .map_err(|e| KitError::Other(format!("training the bundle {model_version}: {e}")))?;
    Ok(out.to_path_buf())
}
