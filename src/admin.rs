//! `funnel admin`: operator commands against a running node. On a single
//! node they go over the HTTP API (`/v1/admin/...`, `/readyz`).

use crate::bench::client::{build_client, send_json};
use anyhow::{anyhow, bail, Context, Result};
use bytes::Bytes;
use std::path::PathBuf;
use std::time::Duration;

pub enum AdminOp {
    Publish(PathBuf),
    Status { json: bool },
}

/// Base URL from "HOST:PORT" or a URL.
pub fn base_url(addr: &str) -> String {
    let a = addr.trim_end_matches('/');
    if a.starts_with("http://") || a.starts_with("https://") {
        a.to_string()
    } else {
        format!("http://{a}")
    }
}

pub fn run_http(addr: &str, token: &str, op: AdminOp) -> Result<String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let client = build_client(1, Duration::from_secs(5));
        let base = base_url(addr);
        let (uri, body, timeout) = match &op {
            AdminOp::Publish(dir) => {
                // the node resolves the path on its own filesystem
                let abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
                let body = serde_json::json!({ "bundle": abs.display().to_string() }).to_string();
                (
                    format!("{base}/v1/admin/publish"),
                    Some(Bytes::from(body)),
                    Duration::from_secs(600),
                )
            }
            AdminOp::Status { .. } => (format!("{base}/readyz"), None, Duration::from_secs(5)),
        };
        let uri = uri
            .parse()
            .with_context(|| format!("--addr {addr} does not form a valid URL"))?;
        let (status, bytes) = send_json(&client, uri, body, Some(token), timeout)
            .await
            .map_err(|k| anyhow!("request to {base} failed: {}", k.label()))?;
        let text = String::from_utf8_lossy(&bytes).to_string();
        match op {
            AdminOp::Status { json: true } => Ok(format!("{text}\n")),
            AdminOp::Status { json: false } => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                Ok(format!(
                    "node {} {}: model {} ({} of {} shards local)\n",
                    v["node_id"],
                    v["status"].as_str().unwrap_or("?"),
                    v["model_version"].as_str().unwrap_or("-"),
                    v["shards_local"],
                    v["shards_total"]
                ))
            }
            AdminOp::Publish(_) if status.is_success() => {
                let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
                Ok(format!(
                    "now serving {}\n",
                    v["model_version"].as_str().unwrap_or("?")
                ))
            }
            AdminOp::Publish(_) => bail!("publish failed (HTTP {}): {text}", status.as_u16()),
        }
    })
}
