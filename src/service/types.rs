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
    /// A shard call failed (every copy asked, or none live); its items are
    /// missing. The text is the error's.
    ShardFailed(crate::service::ShardCallError),
    /// A shard did not answer within the recall stage; its items are missing.
    ShardDeadline { shard: u32 },
    /// Scoring gave no scores; the candidates are in recall rank-fusion order.
    RankFallback(RankError),
    /// No copy of the user's partition answered in time; the request used
    /// this node's own state of the user, which may lack recent events.
    UserStateUnavailable(String),
}

impl Degraded {
    /// Every value `label` returns.
    pub const LABELS: [&'static str; 6] = [
        "no_user_vector",
        "shard_failed",
        "shard_deadline",
        "rank_deadline",
        "rank_failed",
        "user_state_unavailable",
    ];

    pub fn label(&self) -> &'static str {
        match self {
            Degraded::NoUserVector => "no_user_vector",
            Degraded::ShardFailed(_) => "shard_failed",
            Degraded::ShardDeadline { .. } => "shard_deadline",
            Degraded::RankFallback(RankError::Deadline) => "rank_deadline",
            Degraded::RankFallback(_) => "rank_failed",
            Degraded::UserStateUnavailable(_) => "user_state_unavailable",
        }
    }
}

impl std::fmt::Display for Degraded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Degraded::NoUserVector => f.write_str("ann: no vector for this user yet"),
            Degraded::ShardFailed(e) => write!(f, "{e}"),
            Degraded::ShardDeadline { shard } => write!(f, "shard {shard}: deadline"),
            Degraded::RankFallback(e) => write!(f, "rank: {e}; ordered by recall rank fusion"),
            Degraded::UserStateUnavailable(e) => write!(
                f,
                "user state: {e}; used this node's own state of the user, which may miss recent events"
            ),
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

/// An event as a client sent it over gRPC.
impl From<crate::proto::public::Event> for EventIn {
    fn from(e: crate::proto::public::Event) -> EventIn {
        EventIn {
            user_id: e.user_id,
            item_id: e.item_id,
            kind: e.kind,
            weight: e.weight,
            timestamp: e.timestamp,
            device: e.device,
        }
    }
}

/// An event a peer forwarded (its origin sequence is the caller's to check).
impl From<crate::proto::data::ForwardedEvent> for EventIn {
    fn from(e: crate::proto::data::ForwardedEvent) -> EventIn {
        EventIn {
            user_id: e.user_id,
            item_id: e.item_id,
            kind: e.kind,
            weight: e.weight,
            timestamp: e.timestamp,
            device: e.device,
        }
    }
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

/// An item as the node serves it (`GET /v1/items/ID`): whether it is in
/// the catalogue, and its live counters, which count every event the
/// cluster accepted for it (other nodes' events after about a quarter of
/// a second: `node::item_counts`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ItemView {
    pub item_id: String,
    /// False when the catalogue does not hold the item (never known, or
    /// deleted); the counters still show events recorded for the id.
    pub known: bool,
    pub categories: Vec<String>,
    /// Unix seconds (0: unknown).
    pub created_at: i64,
    /// Sum of the strengths of every event counted for the item (the
    /// trained model's count plus live events).
    pub interactions: f32,
    /// The decayed trending score, as of now.
    pub trending: f32,
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

/// The underlying error a `ServiceError` wraps. Shared, so that the error
/// stays `Clone` (a failed shard search fans out to several waiters).
pub type ErrorSource = std::sync::Arc<dyn std::error::Error + Send + Sync + 'static>;

/// Why an operation failed. Every front end maps it with `api::error`.
///
/// The variants that can be caused by a lower layer (the event log, a
/// task, a bundle, a peer) keep that cause as `source`; their message
/// already quotes it, so clients see the same text either way and the CLI's
/// `one_line` does not repeat it.
#[derive(Debug, Clone)]
pub enum ServiceError {
    /// The request is malformed; nothing was changed.
    InvalidArgument(String),
    /// The request is over a configured limit; nothing was changed.
    ResourceExhausted(String),
    NotFound(String),
    /// The node cannot serve yet (no model loaded) or is shutting down,
    /// or a peer or local resource it needs is unreachable.
    Unavailable {
        message: String,
        source: Option<ErrorSource>,
    },
    Unauthenticated(String),
    FailedPrecondition {
        message: String,
        source: Option<ErrorSource>,
    },
    Internal {
        message: String,
        source: Option<ErrorSource>,
    },
}

impl std::fmt::Display for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceError::InvalidArgument(m)
            | ServiceError::ResourceExhausted(m)
            | ServiceError::NotFound(m)
            | ServiceError::Unauthenticated(m)
            | ServiceError::Unavailable { message: m, .. }
            | ServiceError::FailedPrecondition { message: m, .. } => f.write_str(m),
            ServiceError::Internal { message, .. } => write!(f, "internal error: {message}"),
        }
    }
}

/// Written by hand rather than derived so that `source()` is the wrapped
/// error itself (downcastable), not the `Arc` around it.
impl std::error::Error for ServiceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            ServiceError::Unavailable { source, .. }
            | ServiceError::FailedPrecondition { source, .. }
            | ServiceError::Internal { source, .. } => source
                .as_deref()
                .map(|e| e as &(dyn std::error::Error + 'static)),
            _ => None,
        }
    }
}

/// `context: cause`, the message of an error that wraps `cause`.
fn quoting(context: impl std::fmt::Display, cause: &dyn std::error::Error) -> String {
    format!("{context}: {cause}")
}

impl ServiceError {
    pub fn unavailable(message: impl Into<String>) -> Self {
        ServiceError::Unavailable {
            message: message.into(),
            source: None,
        }
    }

    /// Unavailable because of `cause`; the message reads `context: cause`.
    pub fn unavailable_from(
        context: impl std::fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ServiceError::Unavailable {
            message: quoting(context, &cause),
            source: Some(std::sync::Arc::new(cause)),
        }
    }

    pub fn failed_precondition(message: impl Into<String>) -> Self {
        ServiceError::FailedPrecondition {
            message: message.into(),
            source: None,
        }
    }

    /// A failed precondition caused by `cause`; the message reads `context: cause`.
    pub fn failed_precondition_from(
        context: impl std::fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ServiceError::FailedPrecondition {
            message: quoting(context, &cause),
            source: Some(std::sync::Arc::new(cause)),
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ServiceError::Internal {
            message: message.into(),
            source: None,
        }
    }

    /// An internal failure caused by `cause`; the message reads `context: cause`.
    pub fn internal_from(
        context: impl std::fmt::Display,
        cause: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        ServiceError::Internal {
            message: quoting(context, &cause),
            source: Some(std::sync::Arc::new(cause)),
        }
    }

    /// An internal failure whose message is the cause's own text.
    pub fn internal_cause(cause: impl std::error::Error + Send + Sync + 'static) -> Self {
        ServiceError::Internal {
            message: cause.to_string(),
            source: Some(std::sync::Arc::new(cause)),
        }
    }

    /// Stable machine-readable code, used in JSON bodies and metrics.
    pub fn code(&self) -> &'static str {
        match self {
            ServiceError::InvalidArgument(_) => "invalid_argument",
            ServiceError::ResourceExhausted(_) => "resource_exhausted",
            ServiceError::NotFound(_) => "not_found",
            ServiceError::Unavailable { .. } => "unavailable",
            ServiceError::Unauthenticated(_) => "unauthenticated",
            ServiceError::FailedPrecondition { .. } => "failed_precondition",
            ServiceError::Internal { .. } => "internal",
        }
    }
}

/// Two errors are equal when a client could not tell them apart: same
/// code, same message (the source is for logs and is not compared).
impl PartialEq for ServiceError {
    fn eq(&self, other: &Self) -> bool {
        self.code() == other.code() && self.to_string() == other.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn degraded_reasons_read_as_before_and_label_from_a_fixed_set() {
        let cases = [
            (Degraded::NoUserVector, "ann: no vector for this user yet"),
            (
                Degraded::ShardFailed(crate::service::ShardCallError::NoLiveReplica { shard: 0 }),
                "shard 0: no live replica",
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
            (
                Degraded::UserStateUnavailable("user partition 3 has no Active copy".into()),
                "user state: user partition 3 has no Active copy; used this node's own state of \
                 the user, which may miss recent events",
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

    #[test]
    fn a_wrapped_cause_is_the_source_and_the_text_is_unchanged() {
        let cause = std::io::Error::new(std::io::ErrorKind::StorageFull, "no space left");
        let e = ServiceError::internal_from("event log append failed", cause);
        assert_eq!(
            e.to_string(),
            "internal error: event log append failed: no space left"
        );
        let source = e.source().expect("the io error is kept");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("as the io error it was");
        assert_eq!(io.kind(), std::io::ErrorKind::StorageFull);
        assert_eq!(e.code(), "internal");
        // a plain message has no source, and equality ignores the source
        let plain = ServiceError::internal("event log append failed: no space left");
        assert!(plain.source().is_none());
        assert_eq!(plain, e);
        assert_ne!(ServiceError::unavailable("x"), ServiceError::internal("x"));
        let p = ServiceError::failed_precondition_from("cannot load bundle /b", cause_of("bad"));
        assert_eq!(p.to_string(), "cannot load bundle /b: bad");
        assert!(p.source().is_some());
    }

    fn cause_of(text: &str) -> std::io::Error {
        std::io::Error::other(text.to_string())
    }
}
