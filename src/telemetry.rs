//! The process-wide `tracing` subscriber: log events as text or JSON lines
//! on standard output, filtered by `observability.rust_log` (which
//! `RUST_LOG` overrides while the configuration is loaded), and, when
//! `observability.otlp.enabled`, spans exported over OTLP ([`otlp`]).
//! Standard error is left to the one-line startup diagnosis.
//!
//! The two outputs are filtered apart: the log layer sees only events, so
//! spans cost nothing unless OTLP is on, and log lines carry no span
//! prefixes (the request line already names the request); the OTLP layer
//! sees this crate's spans at `info` and its events at `warn` and above
//! (which become span events).
//!
//! Sampling is decided once per request, where it arrives ([`request_trace`]):
//! a request that is not sampled builds no spans at all, so the ratio saves
//! the span work, not only the export.

mod otlp;

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};

use tracing::Level;
use tracing_subscriber::filter::{FilterExt, LevelFilter, Targets, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogFormat, ObservabilityConfig};

/// Why telemetry could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `observability.rust_log` is not a valid filter.
    #[error("`observability.rust_log` = {filter:?} is not a valid log filter: {reason}")]
    Filter {
        /// The filter given.
        filter: String,
        /// The parser's complaint.
        reason: String,
    },
    /// A global subscriber was installed already.
    #[error("a log subscriber is already installed: {0}")]
    Install(String),
    /// The OTLP exporter could not be set up.
    #[error("the OTLP trace exporter could not be set up: {0}")]
    Otlp(String),
}

impl TelemetryError {
    /// What the operator can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            TelemetryError::Filter { .. } => {
                "use tracing filter directives such as `info` or `warn,durable_streams_server=debug`"
            }
            TelemetryError::Install(_) => {
                "install telemetry once per process; embedders that bring their own subscriber \
                 skip this call"
            }
            TelemetryError::Otlp(_) => {
                "check observability.otlp.endpoint and protocol (and OTEL_EXPORTER_OTLP_* \
                 variables, which win over them): an http:// URL, protocol grpc or http/protobuf"
            }
        }
    }
}

/// What [`init`] set up; [`Telemetry::shutdown`] flushes it.
#[derive(Debug, Default)]
#[must_use = "call shutdown() at exit so buffered spans are exported"]
pub struct Telemetry {
    otlp: Option<otlp::Pipeline>,
}

impl Telemetry {
    /// Whether spans are exported over OTLP.
    pub fn exports_traces(&self) -> bool {
        self.otlp.is_some()
    }

    /// Exports the spans still queued (bounded by a few seconds) and stops
    /// the exporter. Blocks: call it from a blocking context.
    pub fn shutdown(self) {
        if let Some(pipeline) = self.otlp {
            pipeline.shutdown();
        }
    }
}

/// The crate's target prefix, for the span filter.
const CRATE_TARGET: &str = env!("CARGO_CRATE_NAME");

/// Installs the global subscriber described by `config`.
///
/// # Errors
/// When the filter does not parse, the OTLP exporter cannot be built, or a
/// subscriber is installed already.
pub fn init(config: &ObservabilityConfig) -> Result<Telemetry, TelemetryError> {
    let filter = EnvFilter::try_new(&config.rust_log).map_err(|error| TelemetryError::Filter {
        filter: config.rust_log.clone(),
        reason: error.to_string(),
    })?;
    let logs = match config.log_format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .with_ansi(std::io::stdout().is_terminal())
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stdout)
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .boxed(),
    }
    // The hint (no limit of its own) lets `filter`'s level reach the
    // callsites: without one the pair has none, and every disabled event
    // (a request's log line at `info` under `RUST_LOG=warn`) is built and
    // dispatched before it is dropped.
    .with_filter(
        filter_fn(|metadata| metadata.is_event())
            .with_max_level_hint(LevelFilter::TRACE)
            .and(filter),
    );

    let exporting = config.otlp.enabled;
    let (pipeline, traces) = if exporting {
        let (pipeline, tracer) = otlp::Pipeline::start(&config.otlp)?;
        let spans = Targets::new().with_target(CRATE_TARGET, Level::INFO);
        let layer = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(
                filter_fn(|metadata| metadata.is_span() || *metadata.level() <= Level::WARN)
                    .with_max_level_hint(LevelFilter::TRACE)
                    .and(spans),
            );
        (Some(pipeline), Some(layer))
    } else {
        (None, None)
    };
    let installed = tracing_subscriber::registry()
        .with(logs)
        .with(traces)
        .try_init();
    if let Err(error) = installed {
        if let Some(pipeline) = pipeline {
            pipeline.shutdown();
        }
        return Err(TelemetryError::Install(error.to_string()));
    }
    SAMPLING_RATIO.store(config.otlp.sampling_ratio.to_bits(), Ordering::Relaxed);
    SAMPLING.store(
        if exporting { SAMPLING_ON } else { SAMPLING_OFF },
        Ordering::Release,
    );
    Ok(Telemetry { otlp: pipeline })
}

/// Whether [`init`] decided how requests are traced.
static SAMPLING: AtomicU8 = AtomicU8::new(SAMPLING_UNSET);
const SAMPLING_UNSET: u8 = 0;
const SAMPLING_OFF: u8 = 1;
const SAMPLING_ON: u8 = 2;
/// `observability.otlp.sampling_ratio`, as `f64` bits.
static SAMPLING_RATIO: AtomicU64 = AtomicU64::new(0);

/// How to trace one request.
pub(crate) enum RequestTrace {
    /// Build no spans for it.
    Skip,
    /// Build its spans, continuing this context (a remote parent, or none).
    Trace(opentelemetry::Context),
    /// [`init`] did not run (an embedder's own subscriber): build the spans
    /// and let the subscriber decide; continue the caller's trace if the
    /// span is enabled.
    Unmanaged,
}

/// Decides whether a request is traced (parent-based head sampling): a
/// valid incoming `traceparent` decides by its sampled flag; otherwise
/// `observability.otlp.sampling_ratio` does.
pub(crate) fn request_trace(headers: &http::HeaderMap) -> RequestTrace {
    match SAMPLING.load(Ordering::Acquire) {
        SAMPLING_UNSET => RequestTrace::Unmanaged,
        SAMPLING_OFF => RequestTrace::Skip,
        _ => {
            let context = otlp::remote_context(headers);
            let sampled = match otlp::remote_sampled(&context) {
                Some(sampled) => sampled,
                None => {
                    let ratio = f64::from_bits(SAMPLING_RATIO.load(Ordering::Relaxed));
                    ratio >= 1.0 || (ratio > 0.0 && fastrand::f64() < ratio)
                }
            };
            if sampled {
                RequestTrace::Trace(context)
            } else {
                RequestTrace::Skip
            }
        }
    }
}

/// A message with its whole cause chain, `a: b: c`.
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        // Some errors repeat their source in their own message.
        if !message.ends_with(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// The W3C trace context of an incoming request, if it carries a valid
/// `traceparent`.
pub(crate) fn remote_context(headers: &http::HeaderMap) -> opentelemetry::Context {
    otlp::remote_context(headers)
}

/// The trace id of `span` as 32 hex digits, when it is exported.
pub(crate) fn trace_id(span: &tracing::Span) -> Option<String> {
    otlp::trace_id(span)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("storage I/O failed")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn error_chains_join_causes_once() {
        let error = Outer(std::io::Error::other("disk on fire"));
        assert_eq!(error_chain(&error), "storage I/O failed: disk on fire");
    }
}
