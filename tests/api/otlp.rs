//! OTLP trace export of the real binary against a real receiver: the
//! collector's trace service from `opentelemetry-proto`, served by tonic
//! (gRPC) or decoded from an axum route (http/protobuf) on 127.0.0.1:0.
//! And a collector that is not there: requests go on unaffected.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::KeyValue;
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use prost::Message;
use tokio::net::TcpListener;

use crate::helpers::*;

/// The caller's trace, as a `traceparent` would carry it (sampled).
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PARENT_SPAN_ID: &str = "00f067aa0ba902b7";

fn traceparent() -> String {
    format!("00-{TRACE_ID}-{PARENT_SPAN_ID}-01")
}

/// A span as received, flattened with its resource's attributes.
#[derive(Clone, Debug)]
struct Received {
    name: String,
    kind: i32,
    trace_id: String,
    span_id: String,
    parent_span_id: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn text(value: Option<&Value>) -> String {
    match value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn attributes(list: &[KeyValue]) -> HashMap<String, String> {
    list.iter()
        .map(|kv| {
            (
                kv.key.clone(),
                text(kv.value.as_ref().and_then(|v| v.value.as_ref())),
            )
        })
        .collect()
}

/// Everything a receiver got.
#[derive(Clone, Default)]
struct Spans(Arc<Mutex<Vec<Received>>>);

impl Spans {
    fn add(&self, request: ExportTraceServiceRequest) {
        let mut spans = self.0.lock().expect("spans lock");
        for resource_spans in request.resource_spans {
            let resource = resource_spans
                .resource
                .as_ref()
                .map(|r| attributes(&r.attributes))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push(Received {
                        name: span.name.clone(),
                        kind: span.kind,
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        attributes: attributes(&span.attributes),
                        resource: resource.clone(),
                    });
                }
            }
        }
    }

    fn all(&self) -> Vec<Received> {
        self.0.lock().expect("spans lock").clone()
    }

    /// Waits until a span matching `predicate` arrived.
    async fn wait_for(
        &self,
        server: &ChildServer,
        what: &str,
        predicate: impl Fn(&Received) -> bool,
    ) -> Received {
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Some(span) = self.all().into_iter().find(|s| predicate(s)) {
                return span;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no {what} span arrived; got {:#?}\nserver log:\n{}",
                self.all(),
                server.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

struct Collector(Spans);

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.0.add(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A gRPC OTLP receiver on 127.0.0.1:0; returns its endpoint URL.
async fn grpc_receiver(spans: Spans) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(Collector(spans)))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    format!("http://{addr}")
}

/// An http/protobuf OTLP receiver (`POST /v1/traces`) on 127.0.0.1:0;
/// returns its base URL.
async fn http_receiver(spans: Spans) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let app = axum::Router::new().route(
        "/v1/traces",
        axum::routing::post(move |body: axum::body::Bytes| {
            let spans = spans.clone();
            async move {
                match ExportTraceServiceRequest::decode(body) {
                    Ok(request) => {
                        spans.add(request);
                        let answer = ExportTraceServiceResponse {
                            partial_success: None,
                        }
                        .encode_to_vec();
                        (
                            axum::http::StatusCode::OK,
                            [("content-type", "application/x-protobuf")],
                            answer,
                        )
                    }
                    Err(_) => (
                        axum::http::StatusCode::BAD_REQUEST,
                        [("content-type", "text/plain")],
                        b"not an ExportTraceServiceRequest".to_vec(),
                    ),
                }
            }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}")
}

/// Creates a stream and appends to it with the caller's `traceparent`.
async fn traced_append(server: &ChildServer, name: &str) {
    let http = client();
    let created = http
        .put(server.url(name))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    let appended = http
        .post(server.url(name))
        .header("content-type", "text/plain")
        .header("traceparent", traceparent())
        .body("traced")
        .send()
        .await
        .expect("POST");
    assert_eq!(appended.status(), 204);
}

/// The request span continues the caller's trace with the HTTP semantic
/// conventions; the storage span and the group commit are its children.
async fn assert_request_trace(spans: &Spans, server: &ChildServer, backend: &str) -> Received {
    let request = spans
        .wait_for(server, "request", |s| {
            s.trace_id == TRACE_ID && s.kind == SpanKind::Server as i32
        })
        .await;
    assert_eq!(request.name, "POST /v1/stream/{*name}", "{request:#?}");
    assert_eq!(request.parent_span_id, PARENT_SPAN_ID, "{request:#?}");
    let attr = |key: &str| request.attributes.get(key).cloned().unwrap_or_default();
    assert_eq!(attr("http.request.method"), "POST", "{request:#?}");
    assert_eq!(attr("http.route"), "/v1/stream/{*name}");
    assert_eq!(attr("url.path"), "/v1/stream/traced");
    assert_eq!(attr("url.scheme"), "http");
    assert_eq!(attr("http.response.status_code"), "204");
    assert_eq!(attr("http.request.body.size"), "6");
    assert_eq!(attr("network.protocol.version"), "1.1");
    assert_eq!(attr("client.address"), "127.0.0.1");

    let storage = spans
        .wait_for(server, "storage append", |s| {
            s.trace_id == TRACE_ID && s.name == "storage append"
        })
        .await;
    assert_eq!(storage.parent_span_id, request.span_id, "{storage:#?}");
    assert_eq!(
        storage
            .attributes
            .get("ds.storage.backend")
            .map(String::as_str),
        Some(backend)
    );
    assert_eq!(
        storage
            .attributes
            .get("ds.storage.bytes")
            .map(String::as_str),
        Some("6")
    );
    request
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_export_continues_the_callers_trace() {
    let spans = Spans::default();
    let endpoint = grpc_receiver(spans.clone()).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let mut server = ChildServer::start(&[
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", data_dir),
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        ("DS_OBSERVABILITY__OTLP__ENDPOINT", endpoint.as_str()),
        ("DS_OBSERVABILITY__OTLP__PROTOCOL", "grpc"),
        ("DS_OBSERVABILITY__OTLP__SERVICE_NAME", "from-config"),
        (
            "DS_OBSERVABILITY__OTLP__RESOURCE_ATTRIBUTES",
            "deployment.environment=test",
        ),
        ("OTEL_SERVICE_NAME", "from-env"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
    ])
    .await;
    traced_append(&server, "traced").await;
    let request = assert_request_trace(&spans, &server, "acid").await;
    assert_eq!(
        request.resource.get("service.name").map(String::as_str),
        Some("from-env"),
        "OTEL_SERVICE_NAME wins over the configuration"
    );
    assert_eq!(
        request
            .resource
            .get("deployment.environment")
            .map(String::as_str),
        Some("test")
    );
    let storage = spans
        .wait_for(&server, "storage append", |s| {
            s.trace_id == TRACE_ID && s.name == "storage append"
        })
        .await;
    let commit = spans
        .wait_for(&server, "group commit", |s| {
            s.trace_id == TRACE_ID && s.name == "storage commit"
        })
        .await;
    assert_eq!(commit.parent_span_id, storage.span_id, "{commit:#?}");
    assert_eq!(
        commit
            .attributes
            .get("ds.storage.backend")
            .map(String::as_str),
        Some("acid")
    );
    let batch: u64 = commit
        .attributes
        .get("ds.storage.batch_size")
        .and_then(|v| v.parse().ok())
        .expect("batch size");
    assert!(batch >= 1);

    // The request log line carries the trace id.
    let line = server
        .json_log()
        .into_iter()
        .find(|l| l["message"] == "request" && l["method"] == "POST")
        .unwrap_or_else(|| panic!("no request line; log:\n{}", server.log()));
    assert_eq!(line["trace_id"], TRACE_ID);

    // Spans of the last requests are flushed at shutdown, not lost.
    let http = client();
    let late = http
        .get(server.url("traced"))
        .header(
            "traceparent",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )
        .send()
        .await
        .expect("GET");
    assert_eq!(late.status(), 200);
    server.terminate();
    assert!(server.exited(HANG_GUARD).await.success());
    assert!(
        spans
            .all()
            .iter()
            .any(|s| s.trace_id == "0af7651916cd43dd8448eb211c80319c"),
        "the last request's span was not flushed at shutdown: {:#?}",
        spans.all()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_protobuf_export_honours_the_otel_environment() {
    let spans = Spans::default();
    let endpoint = http_receiver(spans.clone()).await;
    let server = ChildServer::start(&[
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        // The standard variables win over observability.otlp.*.
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    traced_append(&server, "traced").await;
    let request = assert_request_trace(&spans, &server, "memory").await;
    assert_eq!(
        request.resource.get("service.name").map(String::as_str),
        Some("durable-streams-server")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untraced_requests_start_their_own_trace() {
    let spans = Spans::default();
    let endpoint = grpc_receiver(spans.clone()).await;
    let server = ChildServer::start(&[
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        ("DS_OBSERVABILITY__OTLP__ENDPOINT", endpoint.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let response = client()
        .get(server.at("/healthz"))
        .header("traceparent", "not a traceparent")
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 200);
    let span = spans
        .wait_for(&server, "healthz", |s| s.name == "GET /healthz")
        .await;
    assert_eq!(span.parent_span_id, "", "{span:#?}");
    assert_eq!(span.trace_id.len(), 32);
}

/// A healthy local append takes about a millisecond. This bound leaves a
/// loaded CI machine (whose stalls reach seconds) wide room, and stays well
/// below [`SILENT_EXPORT_TIMEOUT`], so a request that waited for the
/// collector would show.
const UNAFFECTED: Duration = Duration::from_secs(10);

/// The exporter timeout against a collector that never answers (ms): three
/// times [`UNAFFECTED`].
const SILENT_EXPORT_TIMEOUT: &str = "30000";

/// Shutdown gives up on the collector after 5 s; this leaves a loaded
/// machine room to exit and stays below [`SILENT_EXPORT_TIMEOUT`], so a
/// shutdown that waited for the export would show.
const SHUTDOWN_BOUND: Duration = Duration::from_secs(20);

/// Appends `count` times and returns the slowest answer.
async fn timed_appends(server: &ChildServer, name: &str, count: usize) -> Duration {
    let http = client();
    let created = http
        .put(server.url(name))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    let mut slowest = Duration::ZERO;
    for i in 0..count {
        let started = Instant::now();
        let response = http
            .post(server.url(name))
            .header("content-type", "text/plain")
            .header("traceparent", traceparent())
            .body(format!("{i}"))
            .send()
            .await
            .expect("POST");
        assert_eq!(response.status(), 204, "append {i}");
        slowest = slowest.max(started.elapsed());
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_collector_leaves_requests_unaffected() {
    let closed = format!("http://127.0.0.1:{}", free_port());
    let mut server = ChildServer::start(&[
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        ("DS_OBSERVABILITY__OTLP__ENDPOINT", closed.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // A tiny queue, so the test also overflows it.
        ("OTEL_BSP_MAX_QUEUE_SIZE", "16"),
    ])
    .await;
    let slowest = timed_appends(&server, "unreachable", 300).await;
    assert!(slowest < UNAFFECTED, "slowest append took {slowest:?}");
    // The exporter did try, failed, and dropped what did not fit.
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let scrape = client()
            .get(server.at("/metrics"))
            .send()
            .await
            .expect("GET /metrics")
            .text()
            .await
            .expect("text");
        let failures = sample(&scrape, "durable_streams_otlp_export_failures_total", &[]);
        let dropped = sample(&scrape, "durable_streams_otlp_spans_dropped_total", &[]);
        if failures.is_some_and(|f| f >= 1.0) && dropped.is_some_and(|d| d >= 1.0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no export failure or drop counted:\n{scrape}\nlog:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Shutdown gives up on the collector within its bound.
    let started = Instant::now();
    server.terminate();
    assert!(server.exited(HANG_GUARD * 3).await.success());
    assert!(
        started.elapsed() < SHUTDOWN_BOUND,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_collector_that_never_answers_leaves_requests_unaffected() {
    // Accepts connections and never says a word.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let silent = format!("http://{}", listener.local_addr().expect("addr"));
    let held = Arc::new(Mutex::new(Vec::new()));
    tokio::spawn({
        let held = held.clone();
        async move {
            while let Ok((socket, _)) = listener.accept().await {
                held.lock().expect("held lock").push(socket);
            }
        }
    });
    let mut server = ChildServer::start(&[
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        ("DS_OBSERVABILITY__OTLP__ENDPOINT", silent.as_str()),
        ("OTEL_BSP_SCHEDULE_DELAY", "100"),
        // Longer than any append may take: waiting for it would show.
        ("OTEL_EXPORTER_OTLP_TIMEOUT", SILENT_EXPORT_TIMEOUT),
    ])
    .await;
    let slowest = timed_appends(&server, "silent", 300).await;
    assert!(slowest < UNAFFECTED, "slowest append took {slowest:?}");
    let started = Instant::now();
    server.terminate();
    assert!(server.exited(HANG_GUARD * 3).await.success());
    assert!(
        started.elapsed() < SHUTDOWN_BOUND,
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sampling_follows_the_parent_and_the_ratio() {
    let spans = Spans::default();
    let endpoint = grpc_receiver(spans.clone()).await;
    let mut server = ChildServer::start(&[
        ("DS_OBSERVABILITY__OTLP__ENABLED", "true"),
        ("DS_OBSERVABILITY__OTLP__ENDPOINT", endpoint.as_str()),
        // New traces are never sampled; a caller's sampled trace still is.
        ("DS_OBSERVABILITY__OTLP__SAMPLING_RATIO", "0"),
        ("OTEL_BSP_SCHEDULE_DELAY", "200"),
    ])
    .await;
    let http = client();
    let unsampled_trace = "0af7651916cd43dd8448eb211c80319c";
    for traceparent in [
        None,
        Some(format!("00-{unsampled_trace}-b7ad6b7169203331-00")),
    ] {
        let mut request = http.get(server.at("/healthz"));
        if let Some(traceparent) = traceparent {
            request = request.header("traceparent", traceparent);
        }
        assert_eq!(request.send().await.expect("GET").status(), 200);
    }
    traced_append(&server, "traced").await;
    assert_request_trace(&spans, &server, "memory").await;
    // Shutdown flushes everything that was recorded.
    server.terminate();
    assert!(server.exited(HANG_GUARD).await.success());
    let all = spans.all();
    assert!(
        all.iter()
            .all(|s| s.trace_id == TRACE_ID && !s.name.contains("healthz")),
        "only the sampled caller's trace is exported: {all:#?}"
    );
}
