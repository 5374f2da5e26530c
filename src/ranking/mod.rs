//! Online ranking stage: models that reorder the few hundred candidates
//! recall returned for one request.
//!
//! Owns: the ranking models and their training, scoring feature rows (on
//! one thread in `score`, or under a deadline across the rank worker pool
//! in `pool`, both running the same cascade), why scoring failed (`error`),
//! and the rerank step (diversity, exploration). Must not touch: feature
//! computation (that is `features`), recall, serving transport, what a
//! request does when scoring fails.

pub mod error;
pub mod gbdt;
pub mod pool;
pub mod rerank;
pub mod score;
pub mod worker;

pub use error::{RankError, RerankConfigError};
pub use pool::PoolScoring;
