//! OTLP trace export: the tracer provider behind the `tracing` layer, with
//! batch export off the request path.
//!
//! - **Transport.** `grpc` (tonic) or `http/protobuf` (hyper), plain
//!   `http://` collectors only in this build.
//! - **Sampling** is decided per request before any span is built
//!   ([`super::request_trace`]); the SDK only respects the parent's choice.
//! - **Configuration.** `observability.otlp.*`, with the standard variables
//!   winning when set: `OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT`, `_PROTOCOL`,
//!   `_HEADERS`, `_TIMEOUT`, `_COMPRESSION`, `OTEL_SERVICE_NAME`,
//!   `OTEL_RESOURCE_ATTRIBUTES` and `OTEL_BSP_*`.
//! - **Off the request path.** Finished spans go to a bounded queue; a
//!   batch thread hands them to the exporter, which runs on a runtime of its
//!   own (one thread), so a slow or unreachable collector never touches the
//!   request workers. When the queue is full, spans are dropped and counted
//!   in `durable_streams_otlp_spans_dropped_total`; each export is bounded
//!   by the exporter timeout.
//! - **Shutdown** exports what is queued, bounded by a few seconds.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::resource::{EnvResourceDetector, TelemetryResourceDetector};
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracer, SdkTracerProvider, SpanData,
    SpanExporter, SpanProcessor,
};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::TelemetryError;
use crate::config::{OtlpConfig, OtlpProtocol};
use crate::metrics::event::{OtlpExportFailed, OtlpSpanDropped, OtlpSpansExported};

/// Spans waiting for export, unless `OTEL_BSP_MAX_QUEUE_SIZE` says otherwise.
const DEFAULT_QUEUE: usize = 2048;
/// How long one export may take, unless `OTEL_EXPORTER_OTLP_[TRACES_]TIMEOUT` says otherwise.
const DEFAULT_EXPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest wait for queued spans at shutdown.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(5);
/// At most one log line about failing exports per this interval.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);
/// The default gRPC endpoint; with `http/protobuf` the HTTP port is meant.
const DEFAULT_GRPC_ENDPOINT: &str = "http://localhost:4317";
const DEFAULT_HTTP_ENDPOINT: &str = "http://localhost:4318";

/// The running export pipeline.
#[derive(Debug)]
pub(super) struct Pipeline {
    provider: SdkTracerProvider,
    stop: oneshot::Sender<()>,
    runtime: JoinHandle<()>,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// `grpc` or `http/protobuf`: the environment wins over the configuration.
fn protocol(config: &OtlpConfig) -> Result<OtlpProtocol, TelemetryError> {
    let from_env = env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        .map(|v| ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", v))
        .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL").map(|v| ("OTEL_EXPORTER_OTLP_PROTOCOL", v)));
    match from_env {
        None => Ok(config.protocol),
        Some((_, value)) if value.trim() == "grpc" => Ok(OtlpProtocol::Grpc),
        Some((_, value)) if value.trim() == "http/protobuf" => Ok(OtlpProtocol::HttpProtobuf),
        Some((variable, value)) => Err(TelemetryError::Otlp(format!(
            "{variable} = {value:?} is not supported; use grpc or http/protobuf"
        ))),
    }
}

/// The exporter would panic or retry forever on an endpoint variable that
/// is not a URL: refuse it at startup, naming the variable.
fn check_endpoint_variables() -> Result<(), TelemetryError> {
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Some(value) = env(variable)
            && !crate::config::is_http_url(&value)
        {
            return Err(TelemetryError::Otlp(format!(
                "{variable} = {value:?} is not an http:// or https:// URL"
            )));
        }
    }
    Ok(())
}

/// The endpoint to set, or `None` when an `OTEL_EXPORTER_OTLP_*ENDPOINT`
/// variable is set (the exporter reads it, appending `/v1/traces` to the
/// generic one for HTTP).
fn endpoint(config: &OtlpConfig, protocol: OtlpProtocol) -> Option<String> {
    if env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        || env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
    {
        return None;
    }
    let configured = config.endpoint.trim().trim_end_matches('/');
    Some(match protocol {
        OtlpProtocol::Grpc => configured.to_owned(),
        OtlpProtocol::HttpProtobuf => {
            let base = if configured == DEFAULT_GRPC_ENDPOINT {
                DEFAULT_HTTP_ENDPOINT
            } else {
                configured
            };
            if base.ends_with("/v1/traces") {
                base.to_owned()
            } else {
                format!("{base}/v1/traces")
            }
        }
    })
}

fn export_timeout() -> Duration {
    env("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT")
        .or_else(|| env("OTEL_EXPORTER_OTLP_TIMEOUT"))
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map_or(DEFAULT_EXPORT_TIMEOUT, Duration::from_millis)
}

fn queue_size() -> usize {
    env("OTEL_BSP_MAX_QUEUE_SIZE")
        .and_then(|v| v.trim().parse::<usize>().ok())
        .filter(|&n| n > 0)
        .unwrap_or(DEFAULT_QUEUE)
}

/// `service.name` and the other resource attributes: the configuration,
/// then `OTEL_RESOURCE_ATTRIBUTES`, then `OTEL_SERVICE_NAME`, later ones
/// winning.
fn resource(config: &OtlpConfig) -> Resource {
    let configured = config.resource_attributes.iter().filter_map(|item| {
        let (key, value) = item.split_once('=')?;
        Some(KeyValue::new(
            key.trim().to_owned(),
            value.trim().to_owned(),
        ))
    });
    let mut builder = Resource::builder_empty()
        .with_detector(Box::new(TelemetryResourceDetector))
        .with_attribute(KeyValue::new("service.version", env!("CARGO_PKG_VERSION")))
        .with_service_name(config.service_name.trim().to_owned())
        .with_attributes(configured)
        .with_detector(Box::new(EnvResourceDetector::new()));
    if let Some(name) = env("OTEL_SERVICE_NAME") {
        builder = builder.with_service_name(name);
    }
    builder.build()
}

impl Pipeline {
    /// Builds the exporter, its runtime thread and the tracer provider.
    pub(super) fn start(config: &OtlpConfig) -> Result<(Self, SdkTracer), TelemetryError> {
        let protocol = protocol(config)?;
        check_endpoint_variables()?;
        let endpoint = endpoint(config, protocol);
        let timeout = export_timeout();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|error| {
                TelemetryError::Otlp(format!("cannot start the export runtime: {error}"))
            })?;
        let handle = runtime.handle().clone();
        let exporter = {
            // The gRPC channel spawns its connection task on the runtime it
            // is built in: build it in the export runtime.
            let _entered = handle.enter();
            build_exporter(protocol, endpoint, timeout)
        };
        let exporter = match exporter {
            Ok(exporter) => exporter,
            Err(error) => {
                // Dropping a runtime inside the server's own runtime panics.
                runtime.shutdown_background();
                return Err(error);
            }
        };
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("ds-otlp-export".into())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
            })
            .map_err(|error| {
                TelemetryError::Otlp(format!("cannot start the export thread: {error}"))
            })?;

        let pending = Arc::new(AtomicUsize::new(0));
        let limit = queue_size();
        let exporter = OnRuntime {
            inner: Arc::new(exporter),
            runtime: handle,
            pending: Arc::clone(&pending),
            timeout,
            failures: FailureLog::default(),
        };
        let batch = BatchSpanProcessor::builder(exporter)
            .with_batch_config(
                BatchConfigBuilder::default()
                    .with_max_queue_size(limit)
                    .build(),
            )
            .build();
        let processor = Bounded {
            inner: batch,
            pending,
            limit,
            dropped_once: std::sync::atomic::AtomicBool::new(false),
        };
        // Requests are sampled where they arrive (super::request_trace);
        // whatever reaches the SDK was chosen, unless a parent says no.
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)))
            .with_resource(resource(config))
            .build();
        let tracer = provider.tracer(env!("CARGO_PKG_NAME"));
        Ok((
            Self {
                provider,
                stop,
                runtime: thread,
            },
            tracer,
        ))
    }

    /// Exports what is queued, then stops the export runtime.
    pub(super) fn shutdown(self) {
        if let Err(error) = self.provider.shutdown_with_timeout(SHUTDOWN_TIMEOUT) {
            tracing::warn!(%error, "OTLP exporter did not shut down cleanly; queued spans may be lost");
        }
        let _ = self.stop.send(());
        let _ = self.runtime.join();
    }
}

fn build_exporter(
    protocol: OtlpProtocol,
    endpoint: Option<String>,
    timeout: Duration,
) -> Result<opentelemetry_otlp::SpanExporter, TelemetryError> {
    let built = match protocol {
        OtlpProtocol::Grpc => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_timeout(timeout);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build()
        }
        OtlpProtocol::HttpProtobuf => {
            let mut builder = opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_timeout(timeout);
            if let Some(endpoint) = endpoint {
                builder = builder.with_endpoint(endpoint);
            }
            builder.build()
        }
    };
    built.map_err(|error| TelemetryError::Otlp(error.to_string()))
}

/// Rate-limited logging of failed exports.
#[derive(Debug, Default)]
struct FailureLog {
    since_last: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl FailureLog {
    fn failed(&self, error: &OTelSdkError) {
        OtlpExportFailed.emit();
        let failures = self.since_last.fetch_add(1, Ordering::Relaxed) + 1;
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if last.is_some_and(|at| at.elapsed() < FAILURE_LOG_INTERVAL) {
            return;
        }
        *last = Some(Instant::now());
        self.since_last.store(0, Ordering::Relaxed);
        drop(last);
        tracing::warn!(
            %error,
            failures,
            "OTLP trace export failed; spans are dropped while the collector is unreachable \
             (logged at most once a minute)"
        );
    }
}

/// Runs the exporter on the export runtime, bounded by the export timeout,
/// and counts what it did.
#[derive(Debug)]
struct OnRuntime {
    inner: Arc<opentelemetry_otlp::SpanExporter>,
    runtime: Handle,
    /// Spans queued and not yet handed to the exporter (shared with [`Bounded`]).
    pending: Arc<AtomicUsize>,
    timeout: Duration,
    failures: FailureLog,
}

impl SpanExporter for OnRuntime {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let count = batch.len();
        // Saturating: a span dropped inside the batch processor is never
        // exported, and must not wrap the counter.
        let _ = self
            .pending
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                Some(n.saturating_sub(count))
            });
        let inner = Arc::clone(&self.inner);
        let timeout = self.timeout;
        let task = self
            .runtime
            .spawn(async move { tokio::time::timeout(timeout, inner.export(batch)).await });
        let result = match task.await {
            Ok(Ok(result)) => result,
            Ok(Err(_elapsed)) => Err(OTelSdkError::Timeout(timeout)),
            Err(error) => Err(OTelSdkError::InternalFailure(format!(
                "the export task failed: {error}"
            ))),
        };
        match &result {
            Ok(()) => OtlpSpansExported { count }.emit(),
            Err(error) => self.failures.failed(error),
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        // Called once, while the provider is built and nothing else holds it.
        if let Some(inner) = Arc::get_mut(&mut self.inner) {
            inner.set_resource(resource);
        }
    }
}

/// Bounds the spans waiting for export: past `limit`, finished spans are
/// dropped and counted instead of queued.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    pending: Arc<AtomicUsize>,
    limit: usize,
    dropped_once: std::sync::atomic::AtomicBool,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut opentelemetry_sdk::trace::Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            OtlpSpanDropped.emit();
            if !self.dropped_once.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    queue = self.limit,
                    "OTLP export queue full; dropping spans (counted in \
                     durable_streams_otlp_spans_dropped_total, logged once)"
                );
            }
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// Reads `traceparent` / `tracestate` from request headers.
struct HeaderExtractor<'a>(&'a http::HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

pub(super) fn remote_context(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&HeaderExtractor(headers))
}

/// The sampled flag of a valid remote parent, if there is one.
pub(super) fn remote_sampled(context: &Context) -> Option<bool> {
    let span = context.span();
    let span_context = span.span_context();
    span_context.is_valid().then(|| span_context.is_sampled())
}

pub(super) fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn http_endpoints_get_the_traces_path() {
        let mut config = OtlpConfig::default();
        if env("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
            || env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        {
            return;
        }
        assert_eq!(
            endpoint(&config, OtlpProtocol::HttpProtobuf).as_deref(),
            Some("http://localhost:4318/v1/traces")
        );
        assert_eq!(
            endpoint(&config, OtlpProtocol::Grpc).as_deref(),
            Some("http://localhost:4317")
        );
        config.endpoint = "http://collector:4318/".into();
        assert_eq!(
            endpoint(&config, OtlpProtocol::HttpProtobuf).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
        config.endpoint = "http://collector:4318/v1/traces".into();
        assert_eq!(
            endpoint(&config, OtlpProtocol::HttpProtobuf).as_deref(),
            Some("http://collector:4318/v1/traces")
        );
    }

    #[test]
    fn a_traceparent_becomes_the_remote_parent() {
        let mut headers = http::HeaderMap::new();
        headers.insert(
            "traceparent",
            http::HeaderValue::from_static(
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        );
        let context = remote_context(&headers);
        let span = context.span();
        let span_context = span.span_context();
        assert!(span_context.is_remote());
        assert!(span_context.is_sampled());
        assert_eq!(
            span_context.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(!remote_context(&http::HeaderMap::new()).has_active_span());
    }
}
