//! Observability: tracing setup, Prometheus metrics, CPU-time accounting,
//! the optional OTLP span export, the node's root span and the service
//! wrapper that puts every call under it (`node_span`), and the logging of
//! control-loop steps that keep failing (`failure_log`).
//!
//! Owns: the process-wide metrics registry and the tracing subscriber (the
//! stderr log, plus the export layer of `otlp` when it is configured).
//! Must not touch: request handling (callers record; this module stores).

pub mod cpu;
pub mod failure_log;
pub mod metrics;
pub mod node_span;
pub mod otlp;

pub use otlp::{OtlpError, OtlpExport, TelemetryConfig};

use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::Layer;

/// The stderr log's filter: RUST_LOG, default "info".
fn stderr_filter() -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the tracing subscriber (the stderr log, RUST_LOG, default
/// "info"), once.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(stderr_filter())
        .with_writer(std::io::stderr)
        .try_init();
}

/// Installs the tracing subscriber for a node: the stderr log as
/// `init_tracing` does and, when `settings` name an OTLP endpoint, the
/// export layer beside it, each with its own filter (so `RUST_LOG=warn`
/// still exports the debug-level request spans). Returns the running
/// export, to be shut down after serving so queued spans are sent.
pub fn init_node_tracing(
    settings: &TelemetryConfig,
    node_id: u64,
) -> Result<Option<OtlpExport>, OtlpError> {
    let Some(export) = OtlpExport::start(settings, node_id)? else {
        // exactly the subscriber of a node without export
        init_tracing();
        return Ok(None);
    };
    let stderr = tracing_subscriber::fmt::layer()
        .with_writer(std::io::stderr)
        .with_filter(stderr_filter());
    let _ = tracing_subscriber::registry()
        .with(stderr)
        .with(export.layer())
        .try_init();
    tracing::info!(
        endpoint = %settings.otlp_endpoint,
        filter = %settings.otlp_filter,
        "exporting spans over OTLP"
    );
    Ok(Some(export))
}
