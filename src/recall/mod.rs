//! Recall: cut the catalogue to a few hundred candidates through several
//! paths (embedding ANN, item-CF from recent items, popular/trending,
//! fresh, category rules), then merge them with per-path quotas, dedup and
//! provenance.
//!
//! Owns: the pure path functions and the merge, plus `CfIndex` (item-CF
//! neighbour lists addressed by item key). The ANN path's search itself
//! lives with the shards (`shard`); offline evaluation uses exact search.
//! Must not touch: actors, the network, features (it only reads
//! `UserFeatures`' item-CF aggregates, so the path and the feature agree).

mod cf_index;
mod local;
mod merge;
mod paths;

pub use cf_index::{CfIndex, CfShapeError};
pub use local::{local_paths, KeyLists, RecallConfig};
pub use merge::{merge, Candidate, MergeConfig, PathQuota, PathResult};
pub use paths::{from_list, rules, top_by_score};
