//! Why scoring gave no scores. Callers tell the cases apart: the
//! coordinator falls back to rank fusion on any of them, but reports a
//! deadline differently from a broken model.
//!
//! Owns: `RankError` and `RerankConfigError`. Must not touch: what a caller
//! does about them.

use super::gbdt::GbdtError;
use crate::features::N_FEATURES;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RankError {
    /// The stage's deadline passed before every batch came back.
    #[error("deadline")]
    Deadline,
    /// The rank worker pool did not take or answer a batch.
    #[error("workers unavailable ({0})")]
    WorkersUnavailable(actix::MailboxError),
    /// The rows do not hold whole feature rows, or not the rows scored.
    #[error("{values} feature values for {rows} rows of {N_FEATURES}")]
    RowShape { values: usize, rows: usize },
    /// The model refused the rows.
    #[error(transparent)]
    Model(#[from] GbdtError),
}

/// A rerank setting out of range; the text starts with the field's name
/// (config validation prefixes it with `rerank.`).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RerankConfigError {
    #[error("diversity must be in [0, 1), got {0}")]
    Diversity(f32),
    #[error("exploration must be in [0, 1), got {0}")]
    Exploration(f32),
}
