//! Observability: tracing setup, Prometheus metrics, CPU-time accounting,
//! logging of control-loop steps that keep failing (`failure_log`).
//!
//! Owns: the process-wide metrics registry and the tracing subscriber.
//! Must not touch: request handling (callers record; this module stores).

pub mod cpu;
pub mod failure_log;
pub mod metrics;

/// Installs the tracing subscriber (RUST_LOG, default "info"), once.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}
