//! The feature schema: names in vector order, a version, and a hash that a
//! bundle records so a node can refuse a model whose features it would
//! compute differently.

use super::extract::CF_RECENCY_DECAY;
use super::item_stats::TRENDING_HALF_LIFE_S;
use super::user_state::StateParams;
use serde::{Deserialize, Serialize};

/// Bump when the meaning of any feature changes.
pub const SCHEMA_VERSION: u32 = 1;

/// Feature names in the order of the vector `UserFeatures::extract` writes.
pub const FEATURE_NAMES: [&str; 27] = [
    // user
    "user_log_events",
    "user_active_days",
    "user_log_hours_since_last",
    "user_age",
    "user_gender",
    // item
    "item_log_count",
    "item_log_trending",
    "item_age_days",
    "item_n_categories",
    // context
    "ctx_hour",
    "ctx_weekday",
    "ctx_device",
    // user x item
    "x_embedding_dot",
    "x_cf_sum",
    "x_cf_max",
    "x_cf_last",
    "x_cf_last3",
    "x_cf_count",
    "x_taste_match",
    "x_last_category_match",
    // recall provenance
    "r_ann_rank",
    "r_itemcf_rank",
    "r_popular_rank",
    "r_fresh_rank",
    "r_rules_rank",
    "r_n_paths",
    "r_itemcf_score",
];

pub const N_FEATURES: usize = FEATURE_NAMES.len();

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FeatureSchema {
    pub version: u32,
    pub names: Vec<String>,
    /// blake3 over everything that defines what the features mean.
    pub hash: String,
}

impl FeatureSchema {
    /// The schema this build of funnel computes.
    pub fn current() -> Self {
        let p = StateParams::default();
        let mut h = blake3::Hasher::new();
        h.update(format!("funnel-features v{SCHEMA_VERSION}\n").as_bytes());
        for n in FEATURE_NAMES {
            h.update(n.as_bytes());
            h.update(b"\n");
        }
        h.update(
            format!(
                "recent_len={} taste_half_life_s={} max_seen={} trending_half_life_s={} cf_recency_decay={}",
                p.recent_len, p.taste_half_life_s, p.max_seen, TRENDING_HALF_LIFE_S, CF_RECENCY_DECAY
            )
            .as_bytes(),
        );
        FeatureSchema {
            version: SCHEMA_VERSION,
            names: FEATURE_NAMES.iter().map(|s| s.to_string()).collect(),
            hash: h.finalize().to_hex()[..16].to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_unique_and_hash_stable() {
        let mut n = FEATURE_NAMES.to_vec();
        n.sort();
        n.dedup();
        assert_eq!(n.len(), N_FEATURES);
        assert_eq!(FeatureSchema::current(), FeatureSchema::current());
        assert_eq!(FeatureSchema::current().hash.len(), 16);
    }
}
