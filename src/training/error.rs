//! The one error type of the training module.
//!
//! Owns: `TrainError` and its messages. Must not touch: training logic
//! (it only says what stopped a fit, a ranker or a bundle write).
//!
//! The messages reach operators through `funnel train` and `funnel eval`
//! (and the CLI tests compare them); the models' own errors keep their
//! text and stay reachable as the variant's payload.

use crate::bundle::BundleError;
use crate::ranking::gbdt::GbdtError;
use crate::recall::CfShapeError;
use crate::training::als::AlsError;

/// Why training (fitting the recall models, the ranker, or writing the
/// bundle) stopped.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// `funnel train` was given a dataset without interactions.
    #[error("the dataset has no interactions; nothing to train on")]
    EmptyDataset,
    /// The bundle would have no shard.
    #[error("--shards must be at least 1")]
    NoShards,
    /// The models were asked to fit on no interactions (e.g. every user's
    /// history went to a holdout).
    #[error("no interactions to fit on")]
    NoInteractions,
    /// No ranker query group survived: recall found none of any training
    /// request's targets.
    #[error(
        "no training request had a target among its recalled candidates; \
         the data is too small or too sparse to train a ranker"
    )]
    NoRankerGroups,
    /// The item table the bundle would record is refused (ids that are
    /// invalid or collide on their 64-bit key), checked before training.
    #[error(transparent)]
    Items(BundleError),
    /// Fitting ALS failed.
    #[error(transparent)]
    Als(#[from] AlsError),
    /// Fitting the ranker failed.
    #[error(transparent)]
    Ranker(#[from] GbdtError),
    /// The fitted item-CF lists do not match the items.
    #[error(transparent)]
    ItemCf(#[from] CfShapeError),
    /// Building the HNSW index the trainer's ANN path searches failed.
    #[error("building the trainer's ANN index: {0}")]
    AnnIndex(#[source] BundleError),
    /// Writing the bundle failed.
    #[error(transparent)]
    WriteBundle(BundleError),
}
