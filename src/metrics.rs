//! Prometheus metrics: the metric names (a contract with the dashboards and
//! alert rules, see [`name`]), the process-wide recorder and its `/metrics`
//! endpoint, process metrics read from `/proc/self` on each scrape, and the
//! small recording helpers the HTTP layer, the engine and the storage
//! backends call.
//!
//! Recording goes through the [`metrics`] facade. Without an
//! installed recorder every call is a no-op, so the library records
//! unconditionally. The binary installs the Prometheus recorder with
//! [`install`] in its `init_telemetry` phase; an embedder may install it
//! too, or bring its own recorder and render the names below itself.
//! Either way the recorder must be installed before the storage is opened
//! and the router built: hot paths resolve their metric handles once, there.
//!
//! Labels come from small fixed sets (method, route template, status,
//! backend, operation, mode, reason); the stream path is never a label.

mod process;

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{LazyLock, Mutex, OnceLock, PoisonError, RwLock};
use std::time::Duration;

use ::metrics::{
    Counter, Gauge, Histogram, counter, describe_counter, describe_gauge, describe_histogram,
    gauge, histogram,
};
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names. Renaming one breaks dashboards and alerts: add, never rename.
pub mod name {
    /// Counter `{method, route, status}`: HTTP requests answered.
    pub const HTTP_REQUESTS_TOTAL: &str = "durable_streams_http_requests_total";
    /// Histogram `{method, route}`: time until the response head.
    pub const HTTP_REQUEST_DURATION_SECONDS: &str = "durable_streams_http_request_duration_seconds";
    /// Gauge: requests whose response head is not sent yet.
    pub const HTTP_REQUESTS_IN_FLIGHT: &str = "durable_streams_http_requests_in_flight";

    /// Counter: appends that wrote (duplicates excluded).
    pub const APPENDS_TOTAL: &str = "durable_streams_appends_total";
    /// Counter: payload bytes written by appends.
    pub const APPENDED_BYTES_TOTAL: &str = "durable_streams_appended_bytes_total";
    /// Counter `{mode}`: read requests.
    pub const READS_TOTAL: &str = "durable_streams_reads_total";
    /// Counter `{mode}`: payload bytes delivered to readers.
    pub const READ_BYTES_TOTAL: &str = "durable_streams_read_bytes_total";
    /// Counter: streams created.
    pub const STREAMS_CREATED_TOTAL: &str = "durable_streams_streams_created_total";
    /// Counter: streams deleted by clients.
    pub const STREAMS_DELETED_TOTAL: &str = "durable_streams_streams_deleted_total";
    /// Counter: streams closed.
    pub const STREAMS_CLOSED_TOTAL: &str = "durable_streams_streams_closed_total";
    /// Counter: streams reclaimed because their TTL or expiry passed.
    pub const STREAMS_EXPIRED_TOTAL: &str = "durable_streams_streams_expired_total";
    /// Counter: producer retries answered as duplicates.
    pub const PRODUCER_DUPLICATES_TOTAL: &str = "durable_streams_producer_duplicates_total";
    /// Counter `{reason}`: producer requests refused.
    pub const PRODUCER_REJECTIONS_TOTAL: &str = "durable_streams_producer_rejections_total";
    /// Gauge: live streams.
    pub const STREAMS: &str = "durable_streams_streams";
    /// Gauge `{mode}`: connected live readers.
    pub const LIVE_READERS: &str = "durable_streams_live_readers";
    /// Counter: SSE events sent (data and control).
    pub const SSE_EVENTS_TOTAL: &str = "durable_streams_sse_events_total";
    /// Counter: long-polls answered `204` because no data came in time.
    pub const LONG_POLL_TIMEOUTS_TOTAL: &str = "durable_streams_long_poll_timeouts_total";

    /// Histogram `{backend, operation}`: storage call until acknowledgement.
    pub const STORAGE_OPERATION_DURATION_SECONDS: &str =
        "durable_streams_storage_operation_duration_seconds";
    /// Histogram `{backend}`: one group commit (write + fsync, or one redb transaction).
    pub const STORAGE_COMMIT_DURATION_SECONDS: &str =
        "durable_streams_storage_commit_duration_seconds";
    /// Histogram `{backend}`: mutations per group commit.
    pub const STORAGE_COMMIT_BATCH_SIZE: &str = "durable_streams_storage_commit_batch_size";
    /// Gauge `{backend}`: mutations queued for the writer thread.
    pub const STORAGE_WRITE_QUEUE_DEPTH: &str = "durable_streams_storage_write_queue_depth";
    /// Counter `{backend, kind}`: failed storage operations.
    pub const STORAGE_ERRORS_TOTAL: &str = "durable_streams_storage_errors_total";
    /// Gauge `{backend}`: payload bytes stored.
    pub const STORAGE_BYTES: &str = "durable_streams_storage_bytes";

    /// Counter: completed TLS handshakes.
    pub const TLS_HANDSHAKES_TOTAL: &str = "durable_streams_tls_handshakes_total";
    /// Counter `{reason}`: failed TLS handshakes.
    pub const TLS_HANDSHAKE_FAILURES_TOTAL: &str = "durable_streams_tls_handshake_failures_total";
    /// Counter `{outcome}`: certificate reloads.
    pub const TLS_RELOADS_TOTAL: &str = "durable_streams_tls_reloads_total";
    /// Gauge: Unix seconds of the serving certificate's notAfter.
    pub const TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS: &str =
        "durable_streams_tls_certificate_not_after_timestamp_seconds";

    /// Counter `{outcome}` (`success`, `failure`, `queue_full`): webhook
    /// delivery attempts.
    pub const WEBHOOK_DELIVERIES_TOTAL: &str = "durable_streams_webhook_deliveries_total";
    /// Counter: webhook delivery retries scheduled.
    pub const WEBHOOK_RETRIES_TOTAL: &str = "durable_streams_webhook_retries_total";
    /// Histogram: duration of webhook requests.
    pub const WEBHOOK_DELIVERY_DURATION_SECONDS: &str =
        "durable_streams_webhook_delivery_duration_seconds";
    /// Gauge: subscription leases held (webhook wakes awaiting callbacks,
    /// pull-wake claims).
    pub const SUBSCRIPTION_ACTIVE_LEASES: &str = "durable_streams_subscription_active_leases";
    /// Counter: subscription leases that ran out.
    pub const SUBSCRIPTION_LEASE_EXPIRIES_TOTAL: &str =
        "durable_streams_subscription_lease_expiries_total";
    /// Counter: pull-wake claims granted.
    pub const SUBSCRIPTION_CLAIMS_TOTAL: &str = "durable_streams_subscription_claims_total";
    /// Counter `{kind}`: accepted callbacks and acks.
    pub const SUBSCRIPTION_ACKS_TOTAL: &str = "durable_streams_subscription_acks_total";
    /// Counter `{outcome}` (`written`, `failed`): pull-wake events appended.
    pub const SUBSCRIPTION_WAKE_EVENTS_TOTAL: &str =
        "durable_streams_subscription_wake_events_total";

    /// Gauge `{version, commit}` = 1.
    pub const BUILD_INFO: &str = "durable_streams_build_info";
    /// Gauge: resident memory.
    pub const PROCESS_RESIDENT_MEMORY_BYTES: &str = "durable_streams_process_resident_memory_bytes";
    /// Gauge: open file descriptors.
    pub const PROCESS_OPEN_FDS: &str = "durable_streams_process_open_fds";
    /// Gauge: the soft limit on open file descriptors.
    pub const PROCESS_MAX_FDS: &str = "durable_streams_process_max_fds";
    /// Counter: user and system CPU time.
    pub const PROCESS_CPU_SECONDS_TOTAL: &str = "durable_streams_process_cpu_seconds_total";
    /// Gauge: Unix seconds the process started at.
    pub const PROCESS_START_TIME_SECONDS: &str = "durable_streams_process_start_time_seconds";
    /// Gauge: 1 while `/readyz` answers `200`.
    pub const READY: &str = "durable_streams_ready";

    /// Counter: spans handed to the OTLP exporter.
    pub const OTLP_SPANS_EXPORTED_TOTAL: &str = "durable_streams_otlp_spans_exported_total";
    /// Counter: spans dropped because the export queue was full.
    pub const OTLP_SPANS_DROPPED_TOTAL: &str = "durable_streams_otlp_spans_dropped_total";
    /// Counter: failed OTLP export calls.
    pub const OTLP_EXPORT_FAILURES_TOTAL: &str = "durable_streams_otlp_export_failures_total";
}

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
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

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
    describe();
    register_defaults();
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

fn describe() {
    use name::*;
    describe_counter!(
        HTTP_REQUESTS_TOTAL,
        "HTTP requests answered, by method, route template and status code (499: the client left first)."
    );
    describe_histogram!(
        HTTP_REQUEST_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Time from request to response head, by method and route; long-polls wait up to their timeout, SSE counts until the stream starts."
    );
    describe_gauge!(
        HTTP_REQUESTS_IN_FLIGHT,
        "Requests whose response head is not sent yet (open SSE streams are in durable_streams_live_readers instead)."
    );
    describe_counter!(
        APPENDS_TOTAL,
        "Appends that wrote data or closed a stream (producer duplicates excluded)."
    );
    describe_counter!(
        APPENDED_BYTES_TOTAL,
        ::metrics::Unit::Bytes,
        "Payload bytes written by appends."
    );
    describe_counter!(
        READS_TOTAL,
        "Read requests by mode (catch_up, long_poll, sse)."
    );
    describe_counter!(
        READ_BYTES_TOTAL,
        ::metrics::Unit::Bytes,
        "Payload bytes delivered to readers, by mode."
    );
    describe_counter!(STREAMS_CREATED_TOTAL, "Streams created.");
    describe_counter!(STREAMS_DELETED_TOTAL, "Streams deleted by a client DELETE.");
    describe_counter!(STREAMS_CLOSED_TOTAL, "Streams closed.");
    describe_counter!(
        STREAMS_EXPIRED_TOTAL,
        "Streams reclaimed because their TTL or expiry time passed."
    );
    describe_counter!(
        PRODUCER_DUPLICATES_TOTAL,
        "Producer retries recognised as duplicates and acknowledged without writing."
    );
    describe_counter!(
        PRODUCER_REJECTIONS_TOTAL,
        "Producer requests refused, by reason (stale_epoch, sequence_gap, epoch_seq)."
    );
    describe_gauge!(STREAMS, "Live streams.");
    describe_gauge!(
        LIVE_READERS,
        "Connected live readers, by mode (sse, long_poll)."
    );
    describe_counter!(SSE_EVENTS_TOTAL, "SSE events sent, data and control.");
    describe_counter!(
        LONG_POLL_TIMEOUTS_TOTAL,
        "Long-polls answered 204 because no data arrived before the timeout."
    );
    describe_histogram!(
        STORAGE_OPERATION_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Storage calls until acknowledged, by backend and operation (create, append, read, delete)."
    );
    describe_histogram!(
        STORAGE_COMMIT_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "One group commit: the write and its fsync (file backends) or one redb transaction (acid)."
    );
    describe_histogram!(
        STORAGE_COMMIT_BATCH_SIZE,
        "Mutations committed together in one group commit."
    );
    describe_gauge!(
        STORAGE_WRITE_QUEUE_DEPTH,
        "Mutations waiting for the storage writer thread."
    );
    describe_counter!(
        STORAGE_ERRORS_TOTAL,
        "Failed storage operations, by backend and kind (full, io, corrupt, unavailable)."
    );
    describe_gauge!(
        STORAGE_BYTES,
        ::metrics::Unit::Bytes,
        "Payload bytes stored, including streams kept only for their forks."
    );
    describe_counter!(TLS_HANDSHAKES_TOTAL, "Completed TLS handshakes.");
    describe_counter!(
        TLS_HANDSHAKE_FAILURES_TOTAL,
        "Failed TLS handshakes, by reason."
    );
    describe_counter!(
        TLS_RELOADS_TOTAL,
        "Certificate reloads, by outcome (success, failure)."
    );
    describe_gauge!(
        TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS,
        ::metrics::Unit::Seconds,
        "Unix time at which the serving certificate expires."
    );
    describe_counter!(
        WEBHOOK_DELIVERIES_TOTAL,
        "Webhook delivery attempts, by outcome (success, failure, queue_full)."
    );
    describe_counter!(WEBHOOK_RETRIES_TOTAL, "Webhook delivery retries scheduled.");
    describe_histogram!(
        WEBHOOK_DELIVERY_DURATION_SECONDS,
        ::metrics::Unit::Seconds,
        "Duration of webhook requests."
    );
    describe_gauge!(
        SUBSCRIPTION_ACTIVE_LEASES,
        "Subscription leases held: webhook wakes awaiting callbacks and pull-wake claims."
    );
    describe_counter!(
        SUBSCRIPTION_LEASE_EXPIRIES_TOTAL,
        "Subscription leases that ran out."
    );
    describe_counter!(SUBSCRIPTION_CLAIMS_TOTAL, "Pull-wake claims granted.");
    describe_counter!(
        SUBSCRIPTION_ACKS_TOTAL,
        "Accepted subscription callbacks and acks, by kind."
    );
    describe_counter!(
        SUBSCRIPTION_WAKE_EVENTS_TOTAL,
        "Pull-wake events appended to wake streams, by outcome (written, failed)."
    );
    describe_gauge!(
        BUILD_INFO,
        "Always 1; the labels name the version and git commit of the running binary."
    );
    describe_gauge!(READY, "1 while /readyz answers 200, else 0.");
    describe_counter!(
        OTLP_SPANS_EXPORTED_TOTAL,
        "Spans handed to the OTLP exporter."
    );
    describe_counter!(
        OTLP_SPANS_DROPPED_TOTAL,
        "Spans dropped because the OTLP export queue was full (collector slow or unreachable)."
    );
    describe_counter!(OTLP_EXPORT_FAILURES_TOTAL, "OTLP export calls that failed.");
}

/// Series that should exist from the start, so rates and alerts see zero
/// rather than nothing.
fn register_defaults() {
    use name::*;
    gauge!(BUILD_INFO, "version" => env!("CARGO_PKG_VERSION"), "commit" => crate::BUILD_COMMIT)
        .set(1.0);
    for metric in [
        APPENDS_TOTAL,
        APPENDED_BYTES_TOTAL,
        STREAMS_CREATED_TOTAL,
        STREAMS_DELETED_TOTAL,
        STREAMS_CLOSED_TOTAL,
        STREAMS_EXPIRED_TOTAL,
        PRODUCER_DUPLICATES_TOTAL,
        SSE_EVENTS_TOTAL,
        LONG_POLL_TIMEOUTS_TOTAL,
    ] {
        counter!(metric).increment(0);
    }
    gauge!(HTTP_REQUESTS_IN_FLIGHT).increment(0.0);
    gauge!(STREAMS).increment(0.0);
    for mode in ReadMode::ALL {
        counter!(READS_TOTAL, "mode" => mode.as_str()).increment(0);
        counter!(READ_BYTES_TOTAL, "mode" => mode.as_str()).increment(0);
    }
    for mode in [ReadMode::LongPoll, ReadMode::Sse] {
        gauge!(LIVE_READERS, "mode" => mode.as_str()).increment(0.0);
    }
    for reason in RejectReason::ALL {
        counter!(PRODUCER_REJECTIONS_TOTAL, "reason" => reason.as_str()).increment(0);
    }
}

// ---------------------------------------------------------------------------
// Label values
// ---------------------------------------------------------------------------

/// The `method` label: the standard methods by name, anything else `other`,
/// so a client cannot grow the label set.
pub(crate) fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// The `status` label: the three-digit code as text.
pub(crate) fn status_label(code: u16) -> &'static str {
    static LABELS: OnceLock<Vec<String>> = OnceLock::new();
    let labels = LABELS.get_or_init(|| (100..600).map(|c| c.to_string()).collect());
    // The table lives for the whole process, so its strings are 'static.
    match code
        .checked_sub(100)
        .and_then(|i| labels.get(usize::from(i)))
    {
        Some(label) => label.as_str(),
        None => "other",
    }
}

/// The `route` label: a route template interned once. Templates come from
/// the router, a small fixed set, never from the request.
pub(crate) fn route_label(template: &str) -> &'static str {
    static ROUTES: Mutex<Option<HashSet<&'static str>>> = Mutex::new(None);
    let mut routes = ROUTES.lock().unwrap_or_else(PoisonError::into_inner);
    let routes = routes.get_or_insert_with(HashSet::new);
    if let Some(known) = routes.get(template) {
        return known;
    }
    let leaked: &'static str = Box::leak(template.to_owned().into_boxed_str());
    routes.insert(leaked);
    leaked
}

/// How a read was served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadMode {
    /// A plain `GET` of stored data.
    CatchUp,
    /// `live=long-poll`.
    LongPoll,
    /// `live=sse`.
    Sse,
}

impl ReadMode {
    const ALL: [ReadMode; 3] = [ReadMode::CatchUp, ReadMode::LongPoll, ReadMode::Sse];

    /// The `mode` label.
    pub fn as_str(self) -> &'static str {
        match self {
            ReadMode::CatchUp => "catch_up",
            ReadMode::LongPoll => "long_poll",
            ReadMode::Sse => "sse",
        }
    }
}

/// Why a producer request was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RejectReason {
    /// An epoch older than the producer's current one.
    StaleEpoch,
    /// A sequence number past the next expected one.
    SequenceGap,
    /// A new epoch that did not start at sequence 0.
    EpochSeq,
}

impl RejectReason {
    const ALL: [RejectReason; 3] = [
        RejectReason::StaleEpoch,
        RejectReason::SequenceGap,
        RejectReason::EpochSeq,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::StaleEpoch => "stale_epoch",
            RejectReason::SequenceGap => "sequence_gap",
            RejectReason::EpochSeq => "epoch_seq",
        }
    }
}

// ---------------------------------------------------------------------------
// Recording helpers
// ---------------------------------------------------------------------------

/// One read request served in `mode`.
pub(crate) fn read(mode: ReadMode) {
    // Literal labels make static keys: no allocation per call.
    match mode {
        ReadMode::CatchUp => counter!(name::READS_TOTAL, "mode" => "catch_up").increment(1),
        ReadMode::LongPoll => counter!(name::READS_TOTAL, "mode" => "long_poll").increment(1),
        ReadMode::Sse => counter!(name::READS_TOTAL, "mode" => "sse").increment(1),
    }
}

/// Payload bytes delivered to a reader in `mode`.
pub(crate) fn read_bytes(mode: ReadMode, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let bytes = bytes as u64;
    match mode {
        ReadMode::CatchUp => {
            counter!(name::READ_BYTES_TOTAL, "mode" => "catch_up").increment(bytes);
        }
        ReadMode::LongPoll => {
            counter!(name::READ_BYTES_TOTAL, "mode" => "long_poll").increment(bytes);
        }
        ReadMode::Sse => counter!(name::READ_BYTES_TOTAL, "mode" => "sse").increment(bytes),
    }
}

/// SSE events written to a client.
pub(crate) fn sse_events(count: usize) {
    if count > 0 {
        counter!(name::SSE_EVENTS_TOTAL).increment(count as u64);
    }
}

/// A long-poll that ended without data.
pub(crate) fn long_poll_timeout() {
    counter!(name::LONG_POLL_TIMEOUTS_TOTAL).increment(1);
}

/// Counts a live reader in `durable_streams_live_readers{mode}` while it
/// lives: created when a long-poll or SSE read starts, dropped when it ends
/// (answered, client gone, or server draining).
#[derive(Debug)]
pub(crate) struct LiveReader {
    mode: ReadMode,
}

impl LiveReader {
    pub(crate) fn start(mode: ReadMode) -> Self {
        Self::gauge(mode).increment(1.0);
        Self { mode }
    }

    fn gauge(mode: ReadMode) -> ::metrics::Gauge {
        match mode {
            ReadMode::Sse => gauge!(name::LIVE_READERS, "mode" => "sse"),
            _ => gauge!(name::LIVE_READERS, "mode" => "long_poll"),
        }
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        Self::gauge(self.mode).decrement(1.0);
    }
}

/// Records `/readyz` state.
pub(crate) fn ready(ready: bool) {
    gauge!(name::READY).set(if ready { 1.0 } else { 0.0 });
}

/// TLS events, recorded by the TLS listener.
pub mod tls {
    use ::metrics::{counter, gauge};

    use super::name;

    /// A handshake completed.
    pub fn handshake() {
        counter!(name::TLS_HANDSHAKES_TOTAL).increment(1);
    }

    /// A handshake failed; `reason` is one of a small fixed set (for
    /// example `no_client_certificate`, `bad_certificate`, `protocol`, `io`).
    pub fn handshake_failure(reason: &'static str) {
        counter!(name::TLS_HANDSHAKE_FAILURES_TOTAL, "reason" => reason).increment(1);
    }

    /// A certificate reload finished; `success` says whether the new pair
    /// is now served.
    pub fn reload(success: bool) {
        let outcome = if success { "success" } else { "failure" };
        counter!(name::TLS_RELOADS_TOTAL, "outcome" => outcome).increment(1);
    }

    /// The notAfter of the certificate now served, in Unix seconds.
    pub fn certificate_not_after(unix_seconds: i64) {
        gauge!(name::TLS_CERTIFICATE_NOT_AFTER_TIMESTAMP_SECONDS).set(unix_seconds as f64);
    }
}

/// Storage measurements taken inside the writer threads.
pub(crate) mod storage {
    use std::time::Duration;

    use ::metrics::{gauge, histogram};

    use super::name;

    /// One group commit of `batch` mutations that took `elapsed`.
    pub(crate) fn commit(backend: &'static str, batch: usize, elapsed: Duration) {
        histogram!(name::STORAGE_COMMIT_DURATION_SECONDS, "backend" => backend).record(elapsed);
        histogram!(name::STORAGE_COMMIT_BATCH_SIZE, "backend" => backend).record(batch as f64);
    }

    /// The gauge of mutations waiting for the writer of `backend`.
    pub(crate) fn queue_depth_gauge(backend: &'static str) -> ::metrics::Gauge {
        gauge!(name::STORAGE_WRITE_QUEUE_DEPTH, "backend" => backend)
    }
}

/// The request counter and duration histogram of one method, route and status.
type HttpHandles = (Counter, Histogram);
/// Method and route labels by address (both are `'static` and come from
/// small fixed sets), and the status.
type HttpKey = (usize, usize, u16);

/// Handles by (method, route, status), resolved once each while our
/// recorder is installed, so a request does not build and hash its key.
/// Two equal labels at different addresses only resolve the same series
/// twice, and the key hashes three integers instead of two strings.
static HTTP_HANDLES: LazyLock<
    RwLock<HashMap<HttpKey, HttpHandles, BuildHasherDefault<KeyHasher>>>,
> = LazyLock::new(RwLock::default);

/// A multiply-rotate hasher for [`HttpKey`]: its integers come from our
/// own label tables, never from a client, so no flooding resistance is
/// needed, and SipHash cost more than the rest of the recording.
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.write_u64(u64::from(byte));
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = (self.0.rotate_left(5) ^ value).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }

    fn write_u16(&mut self, value: u16) {
        self.write_u64(u64::from(value));
    }

    fn write_usize(&mut self, value: usize) {
        self.write_u64(value as u64);
    }
}

fn http_handles(method: &'static str, route: &'static str, status: u16) -> HttpHandles {
    (
        counter!(
            name::HTTP_REQUESTS_TOTAL,
            "method" => method,
            "route" => route,
            "status" => status_label(status)
        ),
        histogram!(
            name::HTTP_REQUEST_DURATION_SECONDS,
            "method" => method,
            "route" => route
        ),
    )
}

/// `durable_streams_http_request_duration_seconds` and the request counter.
pub(crate) fn http_request(
    method: &'static str,
    route: &'static str,
    status: u16,
    elapsed: Duration,
) {
    let record = |(requests, duration): &HttpHandles| {
        requests.increment(1);
        duration.record(elapsed);
    };
    if installed().is_none() {
        // Another recorder (or none): it may change, so never cache.
        return record(&http_handles(method, route, status));
    }
    let key = (method.as_ptr() as usize, route.as_ptr() as usize, status);
    if let Some(handles) = HTTP_HANDLES
        .read()
        .unwrap_or_else(PoisonError::into_inner)
        .get(&key)
    {
        return record(handles);
    }
    let handles = http_handles(method, route, status);
    record(&handles);
    HTTP_HANDLES
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(key, handles);
}

/// Runs `record` on the handle `resolve` returns, resolved once per process
/// while our recorder is installed: a `counter!`/`gauge!` lookup costs a
/// hash and a registry probe, several times per request. With another
/// recorder (or none) it resolves per call, since that recorder may change.
fn with_cached<H>(cell: &'static OnceLock<H>, resolve: impl Fn() -> H, record: impl FnOnce(&H)) {
    if installed().is_some() {
        record(cell.get_or_init(resolve));
    } else {
        record(&resolve());
    }
}

/// One append that wrote `bytes` of payload (`0` for a bare close).
pub(crate) fn append_written(bytes: u64) {
    static APPENDS: OnceLock<Counter> = OnceLock::new();
    static BYTES: OnceLock<Counter> = OnceLock::new();
    with_cached(
        &APPENDS,
        || counter!(name::APPENDS_TOTAL),
        |c| c.increment(1),
    );
    if bytes > 0 {
        with_cached(
            &BYTES,
            || counter!(name::APPENDED_BYTES_TOTAL),
            |c| c.increment(bytes),
        );
    }
}

static IN_FLIGHT: OnceLock<Gauge> = OnceLock::new();

fn in_flight_gauge() -> Gauge {
    gauge!(name::HTTP_REQUESTS_IN_FLIGHT)
}

/// Requests in flight: one more on creation, one less on drop.
#[derive(Debug)]
pub(crate) struct InFlight(());

impl InFlight {
    pub(crate) fn start() -> Self {
        with_cached(&IN_FLIGHT, in_flight_gauge, |g| g.increment(1.0));
        Self(())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        with_cached(&IN_FLIGHT, in_flight_gauge, |g| g.decrement(1.0));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_are_bounded() {
        assert_eq!(status_label(200), "200");
        assert_eq!(status_label(599), "599");
        assert_eq!(status_label(99), "other");
        assert_eq!(status_label(600), "other");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        let a = route_label("/v1/stream/{*name}");
        let b = route_label("/v1/stream/{*name}");
        assert!(std::ptr::eq(a, b));
    }

    #[test]
    fn every_name_is_namespaced_and_counters_end_in_total() {
        use name::*;
        for counter in [
            HTTP_REQUESTS_TOTAL,
            APPENDS_TOTAL,
            APPENDED_BYTES_TOTAL,
            READS_TOTAL,
            READ_BYTES_TOTAL,
            STREAMS_CREATED_TOTAL,
            STREAMS_DELETED_TOTAL,
            STREAMS_CLOSED_TOTAL,
            PRODUCER_DUPLICATES_TOTAL,
            PRODUCER_REJECTIONS_TOTAL,
            SSE_EVENTS_TOTAL,
            LONG_POLL_TIMEOUTS_TOTAL,
            STORAGE_ERRORS_TOTAL,
            TLS_HANDSHAKES_TOTAL,
            TLS_HANDSHAKE_FAILURES_TOTAL,
            TLS_RELOADS_TOTAL,
            PROCESS_CPU_SECONDS_TOTAL,
        ] {
            assert!(counter.starts_with("durable_streams_"), "{counter}");
            assert!(counter.ends_with("_total"), "{counter}");
        }
    }
}
