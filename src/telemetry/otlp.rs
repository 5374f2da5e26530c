//! Optional span export over OTLP/gRPC to a collector (an OpenTelemetry
//! Collector, Jaeger, Tempo...): the `[telemetry]` settings, the check of
//! the endpoint, and the exporter pipeline a node runs while it serves.
//!
//! Owns: `TelemetryConfig`, `OtlpExport` (the tracer provider, its batch
//! processor and the small runtime the gRPC channel lives on) and flushing
//! what is still queued at shutdown. Must not touch: the stderr log layer
//! (`telemetry::init`) or what spans the rest of the code opens.
//!
//! Off unless `otlp_endpoint` is set. The exporter's gRPC channel runs on a
//! one-thread tokio runtime of its own rather than the serving runtime, so
//! exporting never takes a serving worker and can still flush after the
//! servers have stopped.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry::KeyValue;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use opentelemetry_sdk::Resource;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tracing_subscriber::Layer;

/// OTLP's registered gRPC port, used in the advice of error messages.
const OTLP_GRPC_PORT: u16 = 4317;

/// How long one export call may take before it counts as failed.
const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long shutdown waits for the last spans to reach the collector.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);

/// `[telemetry]`: where spans go besides stderr.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// OTLP/gRPC collector, `http://HOST:PORT` (e.g.
    /// `http://otel-collector:4317`); empty = no export.
    pub otlp_endpoint: String,
    /// The `service.name` resource attribute of every exported span.
    pub otlp_service_name: String,
    /// Which spans are exported, in `RUST_LOG` syntax, independently of
    /// the stderr log's `RUST_LOG` (the `recommend` span is at debug).
    pub otlp_filter: String,
    /// Share of traces exported, in [0, 1]; a trace started by a caller
    /// that sampled it is always exported.
    pub otlp_sample_ratio: f64,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            otlp_endpoint: String::new(),
            otlp_service_name: "funnel".into(),
            otlp_filter: "funnel=debug".into(),
            otlp_sample_ratio: 1.0,
        }
    }
}

impl TelemetryConfig {
    pub fn export_enabled(&self) -> bool {
        !self.otlp_endpoint.is_empty()
    }

    /// Every problem with these settings, each starting with its key under
    /// `telemetry.`; empty when valid. The other keys are checked with
    /// export off too, so a bad value is found before it is first used.
    pub fn problems(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.export_enabled() {
            if let Err(e) = check_endpoint(&self.otlp_endpoint) {
                out.push(format!(
                    "telemetry.otlp_endpoint = {:?}: {e}",
                    self.otlp_endpoint
                ));
            }
        }
        if self.otlp_service_name.trim().is_empty() {
            out.push(
                "telemetry.otlp_service_name is empty: collectors group spans by it; \
                 leave it out for \"funnel\""
                    .into(),
            );
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.otlp_filter) {
            out.push(format!(
                "telemetry.otlp_filter = {:?}: {e}; write RUST_LOG-style directives, \
                 e.g. \"funnel=debug\"",
                self.otlp_filter
            ));
        }
        let r = self.otlp_sample_ratio;
        if !(0.0..=1.0).contains(&r) {
            out.push(format!(
                "telemetry.otlp_sample_ratio = {r}: must be between 0 and 1 \
                 (1 exports every trace)"
            ));
        }
        out
    }
}

/// Why an endpoint is refused: the text after `key = "value": `.
fn check_endpoint(text: &str) -> Result<(), String> {
    let example = format!("e.g. \"http://otel-collector:{OTLP_GRPC_PORT}\"");
    let endpoint = tonic::transport::Endpoint::from_shared(text.to_string())
        .map_err(|e| format!("not a URL ({e}); write http://HOST:PORT, {example}"))?;
    let uri = endpoint.uri();
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return Err(format!(
                "https is not supported; export in plaintext to a collector or agent \
                 next to the node, {example}"
            ))
        }
        _ => {
            return Err(format!(
                "must start with http:// (OTLP over gRPC), {example}"
            ))
        }
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("has no host; {example}"));
    }
    match uri.port_u16() {
        None => {
            return Err(format!(
                "has no port; give it (OTLP/gRPC listens on {OTLP_GRPC_PORT}), {example}"
            ))
        }
        Some(0) => return Err(format!("port 0 cannot be dialled; {example}")),
        Some(_) => {}
    }
    if !matches!(uri.path(), "" | "/") || uri.query().is_some() {
        return Err(format!(
            "has a path or query, which gRPC does not use; give only http://HOST:PORT, {example}"
        ));
    }
    Ok(())
}

/// Why export could not start.
#[derive(Debug, thiserror::Error)]
pub enum OtlpError {
    #[error("invalid [telemetry] settings: {}", .0.join("; "))]
    Invalid(Vec<String>),
    #[error("cannot start the runtime of the OTLP exporter: {0}")]
    Runtime(#[source] std::io::Error),
    #[error("cannot build the OTLP span exporter for {endpoint}: {source}")]
    Build {
        endpoint: String,
        #[source]
        source: opentelemetry_otlp::ExporterBuildError,
    },
}

/// A running export pipeline. Call `shutdown` (or drop it) once serving is
/// over, so the spans still queued are sent.
pub struct OtlpExport {
    provider: SdkTracerProvider,
    filter: String,
    /// Runs the gRPC channel's connection task; see the module doc.
    runtime: Option<tokio::runtime::Runtime>,
}

impl OtlpExport {
    /// Starts exporting as `settings` say, or `Ok(None)` when export is
    /// off. `node_id` becomes `service.instance.id`, so one node's spans
    /// can be told from another's under the same service name.
    pub fn start(settings: &TelemetryConfig, node_id: u64) -> Result<Option<Self>, OtlpError> {
        if !settings.export_enabled() {
            return Ok(None);
        }
        let problems = settings.problems();
        if !problems.is_empty() {
            return Err(OtlpError::Invalid(problems));
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(OtlpError::Runtime)?;
        // the channel connects lazily and spawns its task on the runtime
        // entered here
        let exporter = {
            let _in_runtime = runtime.enter();
            opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(settings.otlp_endpoint.clone())
                .with_timeout(EXPORT_TIMEOUT)
                .build()
                .map_err(|source| OtlpError::Build {
                    endpoint: settings.otlp_endpoint.clone(),
                    source,
                })?
        };
        let resource = Resource::builder()
            .with_service_name(settings.otlp_service_name.clone())
            .with_attributes([
                KeyValue::new("service.instance.id", node_id.to_string()),
                KeyValue::new("service.version", env!("CARGO_PKG_VERSION")),
            ])
            .build();
        // the SDK's batch processor exports from a thread of its own
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
                settings.otlp_sample_ratio,
            ))))
            .with_resource(resource)
            .build();
        Ok(Some(OtlpExport {
            provider,
            filter: settings.otlp_filter.clone(),
            runtime: Some(runtime),
        }))
    }

    /// The subscriber layer that turns `tracing` spans into exported
    /// spans, with its own filter (`otlp_filter`), so what is exported does
    /// not depend on what `RUST_LOG` lets through to stderr.
    pub fn layer<S>(&self) -> impl Layer<S>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        // checked in `start` (through `problems`)
        let filter = tracing_subscriber::EnvFilter::builder().parse_lossy(&self.filter);
        tracing_opentelemetry::layer()
            .with_tracer(self.provider.tracer("funnel"))
            .with_filter(filter)
    }

    /// Sends what is still queued and stops the pipeline, waiting at most
    /// a few seconds for the collector.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(runtime) = self.runtime.take() else {
            return;
        };
        if let Err(e) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(error = %e, "OTLP export: the last spans may not have been sent");
        }
        // nothing is left for it to run; never blocks, so it is safe
        // wherever the pipeline is dropped
        runtime.shutdown_background();
    }
}

impl Drop for OtlpExport {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_endpoint(e: &str) -> TelemetryConfig {
        TelemetryConfig {
            otlp_endpoint: e.into(),
            ..TelemetryConfig::default()
        }
    }

    #[test]
    fn export_is_off_by_default_and_the_default_settings_are_valid() {
        let d = TelemetryConfig::default();
        assert!(!d.export_enabled());
        assert!(d.problems().is_empty());
        assert!(OtlpExport::start(&d, 1).unwrap().is_none());
        assert!(with_endpoint("http://127.0.0.1:4317").problems().is_empty());
        assert!(with_endpoint("http://otel-collector:4317/")
            .problems()
            .is_empty());
    }

    #[test]
    fn bad_endpoints_are_refused_with_the_reason() {
        for (endpoint, reason) in [
            ("127.0.0.1:4317", "must start with http://"),
            ("grpc://collector:4317", "must start with http://"),
            ("https://collector:4317", "https is not supported"),
            ("http://collector", "has no port"),
            ("http://collector:0", "port 0"),
            ("http://collector:4317/v1/traces", "has a path"),
            ("http://exa mple:4317", "not a URL"),
        ] {
            let problems = with_endpoint(endpoint).problems();
            assert_eq!(problems.len(), 1, "{endpoint}: {problems:?}");
            assert!(
                problems[0].starts_with("telemetry.otlp_endpoint = ")
                    && problems[0].contains(reason),
                "{endpoint}: {}",
                problems[0]
            );
        }
    }

    #[test]
    fn the_other_settings_are_checked_with_their_keys() {
        let bad = TelemetryConfig {
            otlp_endpoint: "http://127.0.0.1:4317".into(),
            otlp_service_name: " ".into(),
            otlp_filter: "funnel=loud".into(),
            otlp_sample_ratio: 1.5,
        };
        let problems = bad.problems();
        let keys: Vec<&str> = problems
            .iter()
            .map(|p| p.split([' ', '=']).next().unwrap_or(""))
            .collect();
        assert_eq!(
            keys,
            [
                "telemetry.otlp_service_name",
                "telemetry.otlp_filter",
                "telemetry.otlp_sample_ratio"
            ],
            "{problems:?}"
        );
        // checked with export off too
        let off = TelemetryConfig {
            otlp_endpoint: String::new(),
            ..bad
        };
        assert_eq!(off.problems(), problems);
        assert!(matches!(
            OtlpExport::start(
                &TelemetryConfig {
                    otlp_endpoint: "http://127.0.0.1:4317".into(),
                    otlp_sample_ratio: 2.0,
                    ..TelemetryConfig::default()
                },
                1
            ),
            Err(OtlpError::Invalid(_))
        ));
    }
}
