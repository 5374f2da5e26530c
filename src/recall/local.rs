//! The recall paths that need no shard: item-CF from the user's recent
//! items, popular/trending, fresh, and category rules. The offline pipeline
//! and the online coordinator both call `local_paths`, so the candidates a
//! ranker was trained on are the candidates it scores in production.

use super::merge::{MergeConfig, PathResult};
use super::paths::{from_list, rules, top_by_score};
use crate::features::{RecallPath, UserFeatures};
use serde::{Deserialize, Serialize};

/// How many items each path proposes before the merge.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecallConfig {
    pub ann_k: usize,
    pub itemcf_k: usize,
    pub popular_k: usize,
    pub fresh_k: usize,
    pub rules_k: usize,
    pub merge: MergeConfig,
}

impl Default for RecallConfig {
    fn default() -> Self {
        RecallConfig {
            ann_k: 200,
            itemcf_k: 200,
            popular_k: 100,
            fresh_k: 30,
            rules_k: 60,
            merge: MergeConfig::default(),
        }
    }
}

/// Ranked item lists by key, as the paths read them.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct KeyLists {
    pub popular: Vec<u64>,
    pub fresh: Vec<u64>,
    pub by_category: Vec<Vec<u64>>,
}

/// Runs the four local paths. `allow(key)` refuses seen, excluded,
/// deleted or filtered-out items. `fresh` overrides `lists.fresh` when the
/// caller has a live one (items upserted since training).
pub fn local_paths(
    uf: &UserFeatures,
    lists: &KeyLists,
    fresh: Option<&[u64]>,
    cfg: &RecallConfig,
    allow: &dyn Fn(u64) -> bool,
) -> Vec<PathResult> {
    vec![
        PathResult {
            path: RecallPath::ItemCf,
            items: top_by_score(uf.cf_candidates(), cfg.itemcf_k, allow),
        },
        PathResult {
            path: RecallPath::Popular,
            items: from_list(&lists.popular, cfg.popular_k, allow),
        },
        PathResult {
            path: RecallPath::Fresh,
            items: from_list(fresh.unwrap_or(&lists.fresh), cfg.fresh_k, allow),
        },
        PathResult {
            path: RecallPath::Rules,
            items: rules(uf.taste(), &lists.by_category, cfg.rules_k, allow),
        },
    ]
}
