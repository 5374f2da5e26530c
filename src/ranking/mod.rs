//! Online ranking stage: models that reorder the few hundred candidates
//! recall returned for one request.
//!
//! Owns: the ranking models and their training, scoring feature rows, and
//! the rerank step (diversity, exploration). Must not touch: feature
//! computation (that is `features`), recall, serving transport.

pub mod gbdt;
pub mod rerank;
pub mod score;
pub mod worker;
