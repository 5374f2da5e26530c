//! Offline evaluation under the project's protocol (EVAL_PROTOCOL.md):
//! temporal per-user split, full ranking, Recall/NDCG/HR/Coverage at 10 and
//! 20, hyper-parameters chosen on the validation phase only.
//!
//! Owns: the metrics and the evaluation runs (the split they use is
//! `dataset::split`, shared with training) that put each
//! recall path, the merged candidate set and the ranked pipeline side by
//! side. Must not touch: serving, bundles on disk (it only reads the
//! dataset it is given).

pub mod metrics;
pub mod report;
pub mod run;
