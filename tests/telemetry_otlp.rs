//! OTLP span export (`[telemetry]`) from a real `funnel serve` process to
//! a trace collector this test runs in-process: the collector's gRPC
//! `TraceService` on a tonic server, keeping every span it is sent. A
//! recommend request's `recommend` span reaches it carrying the request id
//! and the configured service name, both while the node runs and, with
//! the exporter's batch timer pushed out of reach, from the flush at
//! graceful shutdown. Bad settings are refused with a clear error.

mod support;

use funnel::config::{CliOverrides, ConfigError, NodeConfig};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{any_value, KeyValue};
use serde_json::json;
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::*;

/// One span as the collector received it, with its resource's attributes.
#[derive(Debug, Clone)]
struct ReceivedSpan {
    name: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

/// The in-process collector: keeps every span of every export call.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
}

fn text_of(kvs: &[KeyValue]) -> HashMap<String, String> {
    kvs.iter()
        .map(|kv| {
            let v = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(any_value::Value::StringValue(s)) => s.clone(),
                Some(any_value::Value::IntValue(i)) => i.to_string(),
                Some(any_value::Value::BoolValue(b)) => b.to_string(),
                Some(any_value::Value::DoubleValue(d)) => d.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), v)
        })
        .collect()
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut got = Vec::new();
        for rs in request.into_inner().resource_spans {
            let resource = text_of(rs.resource.as_ref().map_or(&[][..], |r| &r.attributes));
            for ss in rs.scope_spans {
                for span in ss.spans {
                    got.push(ReceivedSpan {
                        name: span.name,
                        attributes: text_of(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
        self.spans.lock().unwrap().extend(got);
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

impl Collector {
    /// Starts serving on a free local port of `rt`; returns its endpoint.
    fn start(&self, rt: &tokio::runtime::Runtime) -> String {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr: SocketAddr = listener.local_addr().unwrap();
        let server = tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(self.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
        rt.spawn(server);
        format!("http://{addr}")
    }

    /// The `recommend` spans received so far for `request_id`.
    fn recommend_spans(&self, request_id: &str) -> Vec<ReceivedSpan> {
        self.spans
            .lock()
            .unwrap()
            .iter()
            .filter(|s| {
                s.name == "recommend"
                    && s.attributes.get("request_id").map(String::as_str) == Some(request_id)
            })
            .cloned()
            .collect()
    }

    fn span_names(&self) -> Vec<String> {
        let spans = self.spans.lock().unwrap();
        spans.iter().map(|s| s.name.clone()).collect()
    }
}

fn recommend(http: &Http, node: &NodeProc, request_id: &str) {
    let body = json!({"user_id": "u000001", "k": 5, "deadline_ms": 2000, "request_id": request_id});
    let (status, v) = http.post(&node.url("/v1/recommend"), body);
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["request_id"], request_id, "{v}");
}

/// Asks the node to stop as an orchestrator would (SIGTERM) and waits for
/// it to exit.
fn stop_gracefully(node: &mut NodeProc) -> std::process::ExitStatus {
    node.process
        .signal(libc::SIGTERM)
        .expect("SIGTERM to the node");
    let t0 = Instant::now();
    loop {
        if let Some(status) = node.process.try_exit() {
            return status;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the node did not stop within 60 s of SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_recommend_span_reaches_the_collector_with_its_request_id() {
    let tmp = tempfile::tempdir().unwrap();
    let bundle = small_bundle(&tmp.path().join("bundle"), 5, 1);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let collector = Collector::default();
    let endpoint = collector.start(&rt);
    let http = Http::default();

    // while the node runs: the batch processor sends on its own timer.
    // NodeProc runs the node with RUST_LOG=warn: the export has its own
    // filter, so the debug-level request span still goes out.
    let node = NodeProc::start(
        Some(&bundle),
        &tmp.path().join("live"),
        &[],
        &[
            ("FUNNEL_TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("FUNNEL_TELEMETRY__OTLP_SERVICE_NAME", "funnel-otlp-live"),
        ],
    );
    recommend(&http, &node, "otlp-live-1");
    assert!(
        eventually(Duration::from_secs(30), || !collector
            .recommend_spans("otlp-live-1")
            .is_empty()),
        "no recommend span with request_id otlp-live-1 within 30 s; got {:?}",
        collector.span_names()
    );
    let span = &collector.recommend_spans("otlp-live-1")[0];
    assert_eq!(
        span.resource["service.name"], "funnel-otlp-live",
        "{span:?}"
    );
    assert_eq!(span.resource["service.instance.id"], "1", "{span:?}");
    assert_eq!(span.attributes["user"], "u000001", "{span:?}");
    drop(node);

    // at shutdown: with the batch timer ten minutes away, only the flush
    // on SIGTERM can deliver the span
    let mut node = NodeProc::start(
        Some(&bundle),
        &tmp.path().join("flush"),
        &[],
        &[
            ("FUNNEL_TELEMETRY__OTLP_ENDPOINT", &endpoint),
            ("FUNNEL_TELEMETRY__OTLP_SERVICE_NAME", "funnel-otlp-flush"),
            ("OTEL_BSP_SCHEDULE_DELAY", "600000"),
        ],
    );
    recommend(&http, &node, "otlp-flush-1");
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        collector.recommend_spans("otlp-flush-1").is_empty(),
        "exported before shutdown: the test would not show the flush"
    );
    let status = stop_gracefully(&mut node);
    assert!(status.success(), "funnel serve exited with {status}");
    // the export call completed before the process exited
    let spans = collector.recommend_spans("otlp-flush-1");
    assert_eq!(spans.len(), 1, "{:?}", collector.span_names());
    assert_eq!(spans[0].resource["service.name"], "funnel-otlp-flush");
}

fn load(text: &str, env: &[(&str, &str)]) -> Result<NodeConfig, ConfigError> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("node.toml");
    std::fs::write(&path, text).unwrap();
    let env: HashMap<String, String> = env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    NodeConfig::load(Some(&path), &env, &CliOverrides::default())
}

#[test]
fn export_is_off_by_default_and_set_from_the_file_or_the_environment() {
    let cfg = load("", &[]).unwrap();
    assert_eq!(cfg.telemetry.otlp_endpoint, "");
    assert_eq!(cfg.telemetry.otlp_service_name, "funnel");

    let cfg = load(
        "[telemetry]\notlp_endpoint = \"http://collector:4317\"\notlp_sample_ratio = 0.25\n",
        &[("FUNNEL_TELEMETRY__OTLP_SERVICE_NAME", "recs")],
    )
    .unwrap();
    assert_eq!(cfg.telemetry.otlp_endpoint, "http://collector:4317");
    assert_eq!(cfg.telemetry.otlp_sample_ratio, 0.25);
    assert_eq!(cfg.telemetry.otlp_service_name, "recs");
}

#[test]
fn a_bad_endpoint_is_refused_naming_the_key_and_the_fix() {
    let err = load("[telemetry]\notlp_endpoint = \"localhost:4317\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("telemetry.otlp_endpoint = \"localhost:4317\": must start with http://")
            && err.contains("http://otel-collector:4317"),
        "{err}"
    );

    let err = load(
        "",
        &[("FUNNEL_TELEMETRY__OTLP_ENDPOINT", "https://collector:4317")],
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("https is not supported"), "{err}");

    // a misspelt key is an error, not a silently disabled export
    let err = load("[telemetry]\notlp_endpont = \"http://c:4317\"\n", &[])
        .unwrap_err()
        .to_string();
    assert!(
        err.contains(":2:") && err.contains("unknown field `otlp_endpont`"),
        "{err}"
    );

    // and `funnel serve` stops at once with that message
    let dir = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_funnel"))
        .args(["serve", "--http", "127.0.0.1:0", "--grpc", "127.0.0.1:0"])
        .arg("--data-dir")
        .arg(dir.path())
        .env("FUNNEL_TELEMETRY__OTLP_ENDPOINT", "http://collector")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains("telemetry.otlp_endpoint = \"http://collector\": has no port"),
        "{stderr}"
    );
}
