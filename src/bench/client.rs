//! The HTTP side of the load generator: one pooled keep-alive client, the
//! request bodies of the serving API, and the classification of every
//! possible answer into a success or an error kind.
//!
//! Owns: `Outcome`, response parsing (the client itself and `ErrorKind`
//! are `http_client`'s, shared with the other tools). Must not
//! touch: the schedule or any aggregation — a call here only reports what
//! happened to one request. Nothing here panics on what a server sends.

pub use crate::http_client::{build_client, ErrorKind, HttpClient};
use crate::http_client::{exchange, post_json};
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, StatusCode, Uri};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// What the report needs from one recommend answer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RecommendAnswer {
    pub items: usize,
    pub coverage: Option<f64>,
    pub degraded: Vec<String>,
    /// (stage, microseconds) as the server reported them.
    pub timings: Vec<(String, f64)>,
}

/// The result of one request.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Recommended(RecommendAnswer),
    EventsAccepted(u64),
    Failed {
        kind: ErrorKind,
        /// `error.code` from the server's error body, when it sent one.
        server_code: Option<String>,
    },
}

impl Outcome {
    fn failed(kind: ErrorKind) -> Outcome {
        Outcome::Failed {
            kind,
            server_code: None,
        }
    }

    /// Whether the server answered at all (success or HTTP error).
    pub fn server_answered(&self) -> bool {
        match self {
            Outcome::Recommended(_) | Outcome::EventsAccepted(_) => true,
            Outcome::Failed { kind, .. } => kind.server_answered(),
        }
    }
}

#[derive(Serialize)]
struct RecommendBody<'a> {
    user_id: &'a str,
    k: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    deadline_ms: Option<u32>,
    request_id: &'a str,
}

/// JSON body of `POST /v1/recommend`.
pub fn recommend_body(user_id: &str, k: u32, deadline_ms: Option<u32>, request_id: &str) -> Bytes {
    let body = RecommendBody {
        user_id,
        k,
        deadline_ms,
        request_id,
    };
    Bytes::from(serde_json::to_vec(&body).expect("a struct of strings and integers serializes"))
}

#[derive(Serialize)]
struct EventBody<'a> {
    user_id: &'a str,
    item_id: &'a str,
    kind: &'static str,
    /// 0 = the server's default weight for the kind (as in the API example).
    weight: f32,
    timestamp: i64,
}

#[derive(Serialize)]
struct EventsBody<'a> {
    events: [EventBody<'a>; 1],
}

/// JSON body of `POST /v1/events` with one click.
pub fn click_event_body(user_id: &str, item_id: &str, timestamp: i64) -> Bytes {
    let body = EventsBody {
        events: [EventBody {
            user_id,
            item_id,
            kind: "click",
            weight: 0.0,
            timestamp,
        }],
    };
    Bytes::from(serde_json::to_vec(&body).expect("a struct of strings and numbers serializes"))
}

#[derive(Deserialize)]
struct RecommendWire {
    items: Vec<serde::de::IgnoredAny>,
    #[serde(default)]
    coverage: Option<f64>,
    #[serde(default)]
    degraded: Vec<serde_json::Value>,
    #[serde(default)]
    timings: Vec<TimingWire>,
}

#[derive(Deserialize)]
struct TimingWire {
    stage: String,
    micros: f64,
}

#[derive(Deserialize)]
struct EventsWire {
    accepted: u64,
}

#[derive(Deserialize)]
struct ErrorWire {
    error: ErrorDetail,
}

#[derive(Deserialize)]
struct ErrorDetail {
    code: String,
}

/// A degraded entry as a short reason: strings as they are, objects by their
/// `reason`/`code`/`kind` field, anything else as compact JSON — the API may
/// grow structured reasons, and counting them must keep working.
fn degraded_reason(v: &serde_json::Value) -> String {
    match v {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Object(map) => ["reason", "code", "kind"]
            .iter()
            .find_map(|k| map.get(*k).and_then(|x| x.as_str()).map(str::to_string))
            .unwrap_or_else(|| v.to_string()),
        other => other.to_string(),
    }
}

/// Reads a 2xx recommend body; `None` if it is not the promised JSON.
pub fn parse_recommend(body: &[u8]) -> Option<RecommendAnswer> {
    let wire: RecommendWire = serde_json::from_slice(body).ok()?;
    Some(RecommendAnswer {
        items: wire.items.len(),
        coverage: wire.coverage.filter(|c| c.is_finite()),
        degraded: wire.degraded.iter().map(degraded_reason).collect(),
        timings: wire
            .timings
            .into_iter()
            .filter(|t| t.micros.is_finite())
            .map(|t| (t.stage, t.micros))
            .collect(),
    })
}

/// Turns a status and body into an outcome; `read_success` parses 2xx bodies.
pub fn classify(
    status: StatusCode,
    body: &[u8],
    read_success: impl FnOnce(&[u8]) -> Option<Outcome>,
) -> Outcome {
    if status.is_success() {
        return read_success(body).unwrap_or(Outcome::failed(ErrorKind::BadResponse));
    }
    let server_code = serde_json::from_slice::<ErrorWire>(body)
        .ok()
        .map(|e| e.error.code);
    Outcome::Failed {
        kind: ErrorKind::Http(status.as_u16()),
        server_code,
    }
}

/// `POST /v1/recommend`.
pub async fn recommend(client: &HttpClient, uri: Uri, body: Bytes, timeout: Duration) -> Outcome {
    match exchange(client, post_json(uri, body), timeout).await {
        Ok((status, bytes)) => classify(status, &bytes, |b| {
            parse_recommend(b).map(Outcome::Recommended)
        }),
        Err(kind) => Outcome::failed(kind),
    }
}

/// `POST /v1/events`.
pub async fn post_events(client: &HttpClient, uri: Uri, body: Bytes, timeout: Duration) -> Outcome {
    match exchange(client, post_json(uri, body), timeout).await {
        Ok((status, bytes)) => classify(status, &bytes, |b| {
            serde_json::from_slice::<EventsWire>(b)
                .ok()
                .map(|w| Outcome::EventsAccepted(w.accepted))
        }),
        Err(kind) => Outcome::failed(kind),
    }
}

/// Why a target's `/metrics` could not be read; the report says so
/// instead of giving server CPU figures.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ScrapeError {
    #[error("{uri} answered with non-UTF-8 text")]
    NotText { uri: Uri },
    #[error("{uri} answered HTTP {status}")]
    Status { uri: Uri, status: u16 },
    #[error("{uri} failed: {}", kind.label())]
    Failed { uri: Uri, kind: ErrorKind },
}

/// `GET /metrics` as text, or why it could not be read (for the report).
pub async fn fetch_metrics(
    client: &HttpClient,
    uri: Uri,
    timeout: Duration,
) -> Result<String, ScrapeError> {
    let mut request = Request::new(Full::new(Bytes::new()));
    *request.uri_mut() = uri.clone();
    match exchange(client, request, timeout).await {
        Ok((status, body)) if status.is_success() => {
            String::from_utf8(body.to_vec()).map_err(|_| ScrapeError::NotText { uri })
        }
        Ok((status, _)) => Err(ScrapeError::Status {
            uri,
            status: status.as_u16(),
        }),
        Err(kind) => Err(ScrapeError::Failed { uri, kind }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn full_recommend_answer_is_read() {
        let body = br#"{"items":[{"item_id":"i1","score":0.5,"sources":["ann","itemcf"],"exploration":false},
            {"item_id":"i2","score":0.4,"sources":["ann"],"exploration":true}],
            "model_version":"v1","coverage":0.5,"degraded":["shard_timeout:1",{"reason":"ranking_skipped"}],
            "timings":[{"stage":"recall","micros":800},{"stage":"rank","micros":400.5}],
            "request_id":"r"}"#;
        let a = parse_recommend(body).unwrap();
        assert_eq!(a.items, 2);
        assert_eq!(a.coverage, Some(0.5));
        assert_eq!(a.degraded, ["shard_timeout:1", "ranking_skipped"]);
        assert_eq!(
            a.timings,
            [("recall".to_string(), 800.0), ("rank".to_string(), 400.5)]
        );
    }

    #[test]
    fn minimal_answer_needs_only_items() {
        let a = parse_recommend(br#"{"items":[]}"#).unwrap();
        assert_eq!(a, RecommendAnswer::default());
        assert!(parse_recommend(br#"{"coverage":1.0}"#).is_none());
        assert!(parse_recommend(b"<html>oops</html>").is_none());
        assert!(parse_recommend(br#"{"items":[],"timings":[{"stage":"x"}]}"#).is_none());
    }

    #[test]
    fn statuses_and_bodies_become_kinds() {
        let ok = |b: &[u8]| parse_recommend(b).map(Outcome::Recommended);
        assert!(matches!(
            classify(StatusCode::OK, br#"{"items":[]}"#, ok),
            Outcome::Recommended(_)
        ));
        assert_eq!(
            classify(StatusCode::OK, b"not json", ok),
            Outcome::failed(ErrorKind::BadResponse)
        );
        let unavailable = classify(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"error":{"code":"overloaded","message":"shed"}}"#,
            ok,
        );
        assert_eq!(
            unavailable,
            Outcome::Failed {
                kind: ErrorKind::Http(503),
                server_code: Some("overloaded".into())
            }
        );
        // An error status with a body that is not the error shape is still
        // classified by its status.
        assert_eq!(
            classify(StatusCode::BAD_REQUEST, b"", ok),
            Outcome::failed(ErrorKind::Http(400))
        );
        assert_eq!(ErrorKind::Http(503).label(), "http_503");
        assert!(!ErrorKind::Timeout.server_answered());
        assert!(ErrorKind::BadResponse.server_answered());
    }

    #[test]
    fn request_bodies_have_the_api_shape() {
        let v: serde_json::Value =
            serde_json::from_slice(&recommend_body("u000001", 10, None, "bench-1-0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"user_id":"u000001","k":10,"request_id":"bench-1-0"})
        );
        let v: serde_json::Value =
            serde_json::from_slice(&recommend_body("u", 5, Some(50), "r")).unwrap();
        assert_eq!(v["deadline_ms"], 50);
        let v: serde_json::Value =
            serde_json::from_slice(&click_event_body("u1", "i9", 1_700_000_000)).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"events":[{"user_id":"u1","item_id":"i9","kind":"click",
                "weight":0.0,"timestamp":1_700_000_000}]})
        );
    }
}
