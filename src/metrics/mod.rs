//! Prometheus metrics: the metric names (a contract with the dashboards and
//! alert rules, see [`name`]), the process-wide recorder and its `/metrics`
//! endpoint, process metrics read from `/proc/self` on each scrape, and the
//! typed events through which the rest of the server records.
//!
//! # Recording
//! One way: a struct per event (`event`, `request`) built where it
//! happens, whose `emit()` counts it and, when an operator wants to read
//! about it, logs it. Labelled handles used on hot paths are resolved once
//! (per process, per router or per backend) while our recorder is
//! installed; nothing is keyed by an address.
//!
//! Recording goes through the [`metrics`] facade. Without an installed
//! recorder every call is a no-op, so the library records unconditionally.
//! The binary installs the Prometheus recorder with [`install`] in its
//! `init_telemetry` phase; an embedder may install it too, or bring its own
//! recorder and render the names below itself. Either way the recorder must
//! be installed before the storage is opened and the router built: hot
//! paths resolve their metric handles once, there.
//!
//! Labels come from small fixed sets (method, route template, status,
//! backend, operation, mode, reason); the stream path is never a label.

mod describe;
pub(crate) mod event;
pub mod name;
mod process;
pub(crate) mod request;

use std::sync::OnceLock;
use std::time::Duration;

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Buckets of every `_seconds` histogram: sub-millisecond appends up to 30 s
/// long-polls (and a little beyond).
pub const SECONDS_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Buckets of the group-commit batch size.
pub const BATCH_SIZE_BUCKETS: [f64; 11] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
];

/// The content type of the text exposition format.
const TEXT_FORMAT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histogram samples are folded into their buckets between scrapes.
/// Each sample waits in memory until then (one `f64` in a 64-sample block,
/// about three per append), so the interval bounds that memory by traffic:
/// at 5 s, 2 million appends at 40,000 a second kept about 3.3 MB of
/// samples; folding them costs the same however often it runs.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(1);

/// Why the recorder could not be installed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MetricsError {
    /// Another recorder owns the process already.
    #[error("a metrics recorder is already installed in this process: {0}")]
    Install(String),
    /// The exporter refused its configuration.
    #[error("the Prometheus recorder could not be built: {0}")]
    Build(String),
}

impl MetricsError {
    /// What the operator (or embedder) can do about it.
    pub fn hint(&self) -> &'static str {
        match self {
            MetricsError::Install(_) => {
                "install the recorder once per process; an embedder with its own recorder sets \
                 observability.metrics.enabled = false"
            }
            MetricsError::Build(_) => "this is a bug worth reporting",
        }
    }
}

/// The installed Prometheus recorder.
#[derive(Clone, Debug)]
pub struct MetricsHandle {
    prometheus: PrometheusHandle,
    start_time: f64,
}

static HANDLE: OnceLock<MetricsHandle> = OnceLock::new();

/// Installs the Prometheus recorder for the whole process, describes every
/// metric, and starts a thread that folds histogram samples into buckets
/// between scrapes. Idempotent: a second call returns the first handle.
///
/// # Errors
/// When a different recorder is installed already.
pub fn install() -> Result<&'static MetricsHandle, MetricsError> {
    if let Some(handle) = HANDLE.get() {
        return Ok(handle);
    }
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(name::STORAGE_COMMIT_BATCH_SIZE.into()),
                &BATCH_SIZE_BUCKETS,
            )
        })
        .map_err(|error| MetricsError::Build(error.to_string()))?;
    let prometheus = builder
        .install_recorder()
        .map_err(|error| MetricsError::Install(error.to_string()))?;
    let handle = MetricsHandle {
        prometheus,
        start_time: process::start_time().unwrap_or_else(crate::clock::unix_secs_f64),
    };
    let handle = HANDLE.get_or_init(|| handle);
    describe::describe();
    describe::register_defaults();
    let upkeep = handle.prometheus.clone();
    // A plain thread: the recorder may be installed before any runtime.
    let spawned = std::thread::Builder::new()
        .name("ds-metrics-upkeep".into())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                upkeep.run_upkeep();
            }
        });
    if let Err(error) = spawned {
        tracing::warn!(%error, "cannot start the metrics upkeep thread; histograms are folded at scrape time only");
    }
    Ok(handle)
}

/// The handle [`install`] installed, if it ran.
pub fn installed() -> Option<&'static MetricsHandle> {
    HANDLE.get()
}

impl MetricsHandle {
    /// The metrics in Prometheus text format: everything recorded through
    /// the facade, then the process metrics read now.
    pub fn render(&self) -> String {
        let mut out = self.prometheus.render();
        process::render(&mut out, self.start_time);
        out
    }
}

/// The `/metrics` answer.
pub(crate) fn scrape(handle: &MetricsHandle) -> Response {
    let mut response = handle.render().into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(TEXT_FORMAT));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}
