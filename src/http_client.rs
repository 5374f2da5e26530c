//! A small pooled HTTP/1 client for funnel's own tools (the load
//! generator, `funnel admin`, the demo): one keep-alive client, one JSON
//! exchange with a deadline and a bounded body, and why an exchange failed.
//!
//! Owns: `HttpClient`, `ErrorKind`, `exchange`, `send_json`. Must not
//! touch: what the answers mean (callers parse them). Nothing here panics
//! on what a server sends.

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Largest response body read; a bigger one is a `bad_response` (a
/// recommendation answer is a few KiB, so this only guards memory).
const MAX_BODY_BYTES: usize = 16 << 20;

pub type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// A keep-alive pooled client able to hold `connections` idle connections
/// per target, so steady load reuses them instead of reconnecting.
pub fn build_client(connections: usize, timeout: Duration) -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(connections)
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector)
}

/// Why a request did not yield a usable answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ErrorKind {
    /// A non-2xx status.
    Http(u16),
    /// No complete answer within --timeout-ms of the send.
    Timeout,
    /// The TCP connection could not be opened.
    Connect,
    /// The connection failed after it was opened (reset, closed mid-answer).
    Transport,
    /// Not sent: --connections requests were already in flight.
    ClientOverload,
    /// A 2xx answer whose body is not the JSON the API promises.
    BadResponse,
}

impl ErrorKind {
    /// The name used in reports: `http_503`, `timeout`, ...
    pub fn label(self) -> String {
        match self {
            ErrorKind::Http(code) => format!("http_{code}"),
            ErrorKind::Timeout => "timeout".into(),
            ErrorKind::Connect => "connect".into(),
            ErrorKind::Transport => "transport".into(),
            ErrorKind::ClientOverload => "client_overload".into(),
            ErrorKind::BadResponse => "bad_response".into(),
        }
    }

    /// Whether the server produced an HTTP answer (so it spent CPU on it).
    pub fn server_answered(self) -> bool {
        matches!(self, ErrorKind::Http(_) | ErrorKind::BadResponse)
    }
}

/// Sends one request and reads the whole answer within `timeout`.
pub async fn exchange(
    client: &HttpClient,
    request: Request<Full<Bytes>>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ErrorKind> {
    let work = async {
        let response = client.request(request).await.map_err(|e| {
            if e.is_connect() {
                ErrorKind::Connect
            } else {
                ErrorKind::Transport
            }
        })?;
        let status = response.status();
        let body = Limited::new(response.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ErrorKind::BadResponse
                } else {
                    ErrorKind::Transport
                }
            })?
            .to_bytes();
        Ok((status, body))
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or(Err(ErrorKind::Timeout))
}

pub fn post_json(uri: Uri, body: Bytes) -> Request<Full<Bytes>> {
    let mut request = Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    request
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    request
}

/// One JSON request (for tools beside the load generator: admin, demo,
/// tests). `body` None sends a GET; `bearer` adds an Authorization header.
pub async fn send_json(
    client: &HttpClient,
    uri: Uri,
    body: Option<Bytes>,
    bearer: Option<&str>,
    timeout: Duration,
) -> Result<(StatusCode, Bytes), ErrorKind> {
    let mut request = match body {
        Some(b) => post_json(uri, b),
        None => {
            let mut r = Request::new(Full::new(Bytes::new()));
            *r.uri_mut() = uri;
            r
        }
    };
    if let Some(t) = bearer.filter(|t| !t.is_empty()) {
        if let Ok(v) = HeaderValue::from_str(&format!("Bearer {t}")) {
            request
                .headers_mut()
                .insert(hyper::header::AUTHORIZATION, v);
        }
    }
    exchange(client, request, timeout).await
}
