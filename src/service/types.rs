//! The operations' own request and response types, independent of any
//! wire format: gRPC and HTTP handlers convert to and from these and call
//! the same `Node` method, so both front ends have identical semantics.
//! The JSON API serialises these types directly (field names match
//! proto/funnel.proto).

use crate::ranking::RankError;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ContextIn {
    /// Unix seconds; 0 = now.
    pub timestamp: i64,
    pub device: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendQuery {
    pub user_id: String,
    /// 0 = the configured default.
    pub k: u32,
    /// 0 = the configured default.
    pub deadline_ms: u32,
    pub exclude_item_ids: Vec<String>,
    pub categories: Vec<String>,
    pub context: ContextIn,
    /// 0 = derived from the request id.
    pub seed: u64,
    pub request_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecommendedItem {
    pub item_id: String,
    pub score: f32,
    pub sources: Vec<String>,
    pub exploration: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StageTiming {
    pub stage: String,
    pub micros: u32,
}

/// An answer. Serialised as the JSON API's body (`degraded` as the
/// reasons' texts).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Recommendation {
    pub items: Vec<RecommendedItem>,
    pub model_version: String,
    pub coverage: f64,
    pub degraded: Vec<Degraded>,
    pub timings: Vec<StageTiming>,
    pub request_id: String,
}

/// Why an answer is less than it could be; the request was still
/// answered. `label` names the kind for the `funnel_degraded_total{reason}`
/// metric (a fixed set, so the metric's series stay bounded); `Display`
/// is the text clients get in `degraded`.
#[derive(Debug, Clone, PartialEq)]
pub enum Degraded {
    /// The model has no vector for the user and none could be folded in
    /// from their recent items: no ANN recall.
    NoUserVector,
    /// A shard answered with an error (`routing::ShardCallError`'s reason);
    /// its items are missing.
    ShardFailed { shard: u32, reason: String },
    /// A shard did not answer within the recall stage; its items are missing.
    ShardDeadline { shard: u32 },
    /// Scoring gave no scores; the candidates are in recall rank-fusion order.
    RankFallback(RankError),
}

impl Degraded {
    /// Every value `label` returns.
    pub const LABELS: [&'static str; 5] = [
        "no_user_vector",
        "shard_failed",
        "shard_deadline",
        "rank_deadline",
        "rank_failed",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Degraded::NoUserVector => "no_user_vector",
            Degraded::ShardFailed { .. } => "shard_failed",
            Degraded::ShardDeadline { .. } => "shard_deadline",
            Degraded::RankFallback(RankError::Deadline) => "rank_deadline",
            Degraded::RankFallback(_) => "rank_failed",
        }
    }
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degraded::NoUserVector => f.write_str("ann: no vector for this user yet"),
            Degraded::ShardFailed { shard, reason } => write!(f, "shard {shard}: {reason}"),
            Degraded::ShardDeadline { shard } => write!(f, "shard {shard}: deadline"),
            Degraded::RankFallback(e) => write!(f, "rank: {e}; ordered by recall rank fusion"),
        }
    }
}

/// On the wire a reason is its text (JSON and gRPC carry strings).
impl Serialize for Degraded {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventIn {
    pub user_id: String,
    pub item_id: String,
    pub kind: String,
    /// 0 = the kind's default weight.
    pub weight: f32,
    /// Unix seconds; 0 = now.
    pub timestamp: i64,
    pub device: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ItemIn {
    pub item_id: String,
    /// Empty = folded in from the categories.
    pub vector: Vec<f32>,
    pub categories: Vec<String>,
    pub title: String,
    /// Unix seconds; 0 = now.
    pub created_at: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecentItem {
    pub item_id: String,
    pub kind: String,
    pub timestamp: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategoryTaste {
    pub category: String,
    pub weight: f32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UserView {
    pub user_id: String,
    pub known: bool,
    pub events: u32,
    pub recent: Vec<RecentItem>,
    pub tastes: Vec<CategoryTaste>,
    pub has_vector: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthView {
    /// "serving", "loading" or "degraded".
    pub status: String,
    pub node_id: u64,
    pub model_version: String,
    pub shards_local: u32,
    pub shards_total: u32,
}

/// Why an operation failed. Every front end maps it with `api::error`.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ServiceError {
    /// The request is malformed; nothing was changed.
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is over a configured limit; nothing was changed.
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    NotFound(String),
    /// The node cannot serve yet (no model loaded) or is shutting down.
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServiceError {
    /// Stable machine-readable code, used in JSON bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::InvalidArgument(_) => "invalid_argument",
            ServiceError::ResourceExhausted(_) => "resource_exhausted",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Unavailable(_) => "unavailable",
            ServiceError::Unauthenticated(_) => "unauthenticated",
            ServiceError::FailedPrecondition(_) => "failed_precondition",
            ServiceError::Internal(_) => "internal",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn degraded_reasons_read_as_before_and_label_from_a_fixed_set() {
        let cases = [
            (Degraded::NoUserVector, "ann: no vector for this user yet"),
            (
                Degraded::ShardFailed {
                    shard: 0,
                    reason: "every replica failed: refused".into(),
                },
                "shard 0: every replica failed: refused",
            ),
            (Degraded::ShardDeadline { shard: 3 }, "shard 3: deadline"),
            (
                Degraded::RankFallback(RankError::Deadline),
                "rank: deadline; ordered by recall rank fusion",
            ),
            (
                Degraded::RankFallback(RankError::WorkersUnavailable(actix::MailboxError::Closed)),
                "rank: workers unavailable (Mailbox has closed); ordered by recall rank fusion",
            ),
        ];
        let mut labels = Vec::new();
        for (reason, text) in &cases {
            assert_eq!(reason.to_string(), *text);
            assert_eq!(
                serde_json::to_value(reason).unwrap(),
                serde_json::json!(text)
            );
            assert!(Degraded::LABELS.contains(&reason.label()), "{reason}");
            labels.push(reason.label());
        }
        labels.dedup();
        assert_eq!(labels, Degraded::LABELS);
    }
}
