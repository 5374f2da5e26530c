//! A blocking JSON client over funnel's own HTTP client, and the few
//! requests tests make of a node's public API (recommend, item upsert,
//! `/metrics`).
//!
//! Owns: HTTP requests from the test side. Must not touch: processes or
//! gRPC (`observe`).

use crate::KitError;
use funnel::http_client::{build_client, send_json, ErrorKind, HttpClient};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use tokio::runtime::Runtime;

/// How a client behaves.
#[derive(Debug, Clone, Copy)]
pub struct HttpOptions {
    /// Idle connections kept per host.
    pub pool: usize,
    /// TCP connect timeout.
    pub connect_timeout: Duration,
    /// Whole-request timeout of `call` (`call_within` names its own).
    pub timeout: Duration,
    /// A request whose connection breaks is sent once more on a fresh one:
    /// the pool may hand out a keep-alive connection the server just
    /// closed.
    pub retry_broken_connection: bool,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions {
            pool: 4,
            connect_timeout: Duration::from_secs(10),
            timeout: Duration::from_secs(60),
            retry_broken_connection: true,
        }
    }
}

/// A blocking JSON client: each call runs to completion on its runtime.
pub struct Http {
    rt: Arc<Runtime>,
    client: HttpClient,
    options: HttpOptions,
}

impl Http {
    /// A client on a runtime of its own (one thread).
    pub fn new(options: HttpOptions) -> Result<Http, KitError> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(crate::error::io("starting the HTTP client's runtime"))?;
        Ok(Http::on(Arc::new(rt), options))
    }

    /// A client on `rt` (shared with the caller's other tasks).
    pub fn on(rt: Arc<Runtime>, options: HttpOptions) -> Http {
        // the connector is built inside the runtime it will run on
        let client = rt.block_on(async { build_client(options.pool, options.connect_timeout) });
        Http {
            rt,
            client,
            options,
        }
    }

    /// GET (no body) or POST `body` as JSON to `url` with bearer `token`,
    /// within the client's timeout: (status, body as JSON, or the body
    /// text as a JSON string when it is not JSON). Any status is `Ok`; no
    /// HTTP answer is `KitError::Http`.
    pub fn call(
        &self,
        url: &str,
        body: Option<String>,
        token: Option<&str>,
    ) -> Result<(u16, Value), KitError> {
        self.call_within(url, body, token, self.options.timeout)
    }

    /// `call` within `timeout`.
    pub fn call_within(
        &self,
        url: &str,
        body: Option<String>,
        token: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Value), KitError> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| KitError::Other(format!("{url} is not a URL: {e}")))?;
        let send = || {
            self.rt.block_on(send_json(
                &self.client,
                uri.clone(),
                body.clone().map(Into::into),
                token,
                timeout,
            ))
        };
        let (status, bytes) = match send() {
            Err(ErrorKind::Transport) if self.options.retry_broken_connection => send(),
            other => other,
        }
        .map_err(KitError::Http)?;
        let v = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
        Ok((status.as_u16(), v))
    }
}

/// The `item_id`s of a recommend answer, in order.
pub fn item_ids(resp: &Value) -> Vec<String> {
    resp["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|i| i["item_id"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// Expects status 200: the body, else `KitError::Refused`.
fn ok_200((status, body): (u16, Value)) -> Result<Value, KitError> {
    if status == 200 {
        Ok(body)
    } else {
        Err(KitError::Refused { status, body })
    }
}

/// One recommend request (k 10, 1 s deadline) to the node serving HTTP on
/// `node_http` (HOST:PORT): the JSON answer.
pub fn recommend(http: &Http, node_http: &str, user: &str) -> Result<Value, KitError> {
    let body = serde_json::json!({"user_id": user, "k": 10, "deadline_ms": 1000});
    http.call(
        &format!("http://{node_http}/v1/recommend"),
        Some(body.to_string()),
        None,
    )
    .and_then(ok_200)
}

/// Whether `node_http` answers a recommend (for u000001) with every shard
/// covered.
pub fn full_coverage(http: &Http, node_http: &str) -> bool {
    recommend(http, node_http, "u000001").is_ok_and(|v| v["coverage"].as_f64() == Some(1.0))
}

/// Upserts one item (a `dim`-dimensional vector of 0.1, no categories)
/// through a node's HTTP API: Ok once acknowledged.
pub fn upsert_item(http: &Http, node_http: &str, id: &str, dim: usize) -> Result<(), KitError> {
    let body = serde_json::json!({"items": [{"item_id": id, "vector": vec![0.1f32; dim], "categories": []}]});
    http.call(
        &format!("http://{node_http}/v1/items"),
        Some(body.to_string()),
        None,
    )
    .and_then(ok_200)
    .map(drop)
}

/// The value of one series in a node's /metrics, e.g.
/// `funnel_shard_searches_served_total{via="batch"}` (0 when absent: a
/// labelled series appears only once it has a value).
pub fn metric_value(http: &Http, node_http: &str, series: &str) -> Result<f64, KitError> {
    let text = http
        .call(&format!("http://{node_http}/metrics"), None, None)
        .and_then(ok_200)?;
    Ok(text
        .as_str()
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or(0.0))
}
