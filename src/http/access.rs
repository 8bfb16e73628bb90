//! The request middleware: HTTP metrics, the request span, and one log line
//! per request.
//!
//! # How live responses count
//! A request is *in flight* from its arrival until its response head is
//! sent, and its duration sample and request count are recorded at that
//! moment:
//! - a **long-poll** is in flight while it waits (up to the long-poll
//!   timeout), so its duration reaches the timeout when no data comes;
//! - an **SSE** request leaves the in-flight gauge as soon as its stream
//!   starts (its duration is the time to the first byte); the open stream
//!   is counted by `durable_streams_live_readers{mode="sse"}` instead, and
//!   nothing is held across its body that would skew the HTTP metrics.
//!
//! The log line of a response with a body of known length is written when
//! the head is sent. A streamed body (SSE) is logged when it ends, with the
//! bytes actually sent and its whole duration; the request span stays open
//! until then too. A client that leaves before the head is sent is counted
//! and logged with status `499`.
//!
//! # Log levels
//! `5xx` at `error`, with the cause chain (logged only here, once); other
//! answers at `info`; health probes and scrapes (`/healthz`, `/readyz`, the
//! metrics path) at `debug`. The target is `durable_streams_server::access`,
//! so `RUST_LOG=info,durable_streams_server::access=warn` keeps only failures.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::uri::PathAndQuery;
use axum::http::{HeaderValue, Version, header};
use axum::response::Response;
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};
use tracing::Instrument;
use tracing::field::Empty;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use super::deferred;
use super::plain::{Plain, PlainFields};
use super::problem::{ErrorCause, ErrorCode};
use crate::auth::Principal;
use crate::client::{ClientAddr, ClientIdentity, Scheme};
use std::sync::Arc;

use crate::metrics::request::{InFlight, MethodLabel, RequestAnswered, RouteMetrics, RouteTable};
use crate::telemetry::RequestTrace;

/// The log target of request lines.
pub const ACCESS_TARGET: &str = "durable_streams_server::access";

/// Route label of requests no route matched.
pub(crate) const UNMATCHED: &str = "unmatched";

/// What the middleware knows from the router.
#[derive(Debug)]
pub(crate) struct AccessSettings {
    /// Routes logged at `debug`: probes and scrapes.
    pub quiet_routes: Vec<String>,
    /// The router's routes (and [`UNMATCHED`]) and their metrics.
    pub routes: RouteTable,
}

impl AccessSettings {
    /// What the middleware needs of the route template `route`: found once
    /// per request by the router's side, once for all by the append
    /// shortcut, whose route never changes.
    pub(crate) fn route(&self, route: &str) -> RouteLabel {
        RouteLabel {
            metrics: self.routes.get(route),
            quiet: self.quiet_routes.iter().any(|quiet| quiet == route),
            stream: is_stream_route(route),
            shortcut: false,
        }
    }
}

/// A route template as the middleware sees it ([`AccessSettings::route`]).
#[derive(Clone, Debug)]
pub(crate) struct RouteLabel {
    metrics: Arc<RouteMetrics>,
    /// Logged at `debug`.
    quiet: bool,
    /// Ends in a stream's name: the log line names the stream.
    stream: bool,
    /// Its requests come from the server's own HTTP/1.1 engine and are
    /// answered at once (the append shortcut's).
    shortcut: bool,
}

impl RouteLabel {
    /// The route's template.
    pub(crate) fn template(&self) -> &str {
        self.metrics.route()
    }

    /// The same route as the append shortcut serves it: its requests'
    /// bodies are framed by their `Content-Length` when their length is
    /// known, and their log lines are written as their heads are, so a line
    /// may keep the request's path rather than a copy of it.
    pub(crate) fn for_shortcut(self) -> Self {
        Self {
            shortcut: true,
            ..self
        }
    }
}

/// What the log line and the metrics need, captured on arrival.
struct Line {
    started: Instant,
    method: MethodLabel,
    route: Arc<RouteMetrics>,
    stream: Option<StreamName>,
    /// The client: the TCP peer, or the address a trusted proxy named.
    client: Option<Client>,
    /// The TCP peer, when a trusted proxy named another client address.
    peer: Option<IpAddr>,
    scheme: Scheme,
    identity: Option<ClientIdentity>,
    bytes_in: Option<u64>,
    quiet: bool,
    span: tracing::Span,
}

/// The answer, once the head is known.
struct Answer {
    status: u16,
    latency: Duration,
    code: Option<&'static str>,
    cause: Option<String>,
    trace_id: Option<String>,
    /// Who the request acted as, with access control on.
    principal: Option<Principal>,
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1_000_000.0).round() / 1000.0
}

impl Line {
    fn log(&self, answer: &Answer, bytes_out: u64) {
        self.span.record("http.response.body.size", bytes_out);
        // Formatted (and the duration taken) only if the line is enabled.
        let stream = OrDash(self.stream.as_ref());
        let client = OrDash(self.client);
        let identity = OrDash(self.identity.as_ref().map(|id| id.name.as_str()));
        let identity_source = self.identity.as_ref().map(|id| id.source.as_str());
        let principal = answer.principal.as_ref().map(Principal::name);
        let principal_kind = answer.principal.as_ref().map(|p| p.kind().as_str());
        macro_rules! line {
            ($level:expr) => {
                tracing::event!(
                    target: ACCESS_TARGET,
                    $level,
                    method = %self.method.as_str(),
                    route = %self.route.route(),
                    stream = %stream,
                    status = answer.status,
                    latency_ms = millis(answer.latency),
                    duration_ms = millis(self.started.elapsed()),
                    bytes_in = self.bytes_in,
                    bytes_out,
                    client = %client,
                    peer = self.peer.map(display),
                    scheme = self.scheme.as_str(),
                    identity = %identity,
                    identity_source,
                    principal,
                    principal_kind,
                    code = answer.code.map(display),
                    trace_id = answer.trace_id.as_deref().map(display),
                    error = answer.cause.as_deref().map(display),
                    "request"
                )
            };
        }
        // The event macros take a constant level: one callsite per level.
        let level = self.level(answer.status);
        if level == tracing::Level::ERROR {
            line!(tracing::Level::ERROR);
        } else if level == tracing::Level::DEBUG {
            line!(tracing::Level::DEBUG);
        } else {
            line!(tracing::Level::INFO);
        }
    }

    /// The level of the line for `status`: errors of routes that are not
    /// quiet, quiet routes at `debug`, the rest at `info`.
    fn level(&self, status: u16) -> tracing::Level {
        if status >= 500 && !self.quiet {
            tracing::Level::ERROR
        } else if self.quiet {
            tracing::Level::DEBUG
        } else {
            tracing::Level::INFO
        }
    }

    /// Whether [`Self::log`] for `status` would write a line or record on a
    /// traced span. When not, a streamed body need not carry the line until
    /// it ends (an SSE subscriber would hold it for its whole life).
    fn wanted(&self, status: u16) -> bool {
        macro_rules! enabled {
            ($level:expr) => {
                tracing::enabled!(kind: tracing::metadata::Kind::EVENT, target: ACCESS_TARGET, $level)
            };
        }
        if !self.span.is_disabled() {
            return true;
        }
        let level = self.level(status);
        if level == tracing::Level::ERROR {
            enabled!(tracing::Level::ERROR)
        } else if level == tracing::Level::DEBUG {
            enabled!(tracing::Level::DEBUG)
        } else {
            enabled!(tracing::Level::INFO)
        }
    }
}

/// The stream a log line names.
enum StreamName {
    /// A copy: a line that waits for a streamed or deferred answer must not
    /// keep the request head's buffer alive.
    Copied(String),
    /// The request's own path, which shares the head's buffer: the line
    /// of an append through the shortcut goes with its answer's head.
    Shared(PathAndQuery),
}

impl std::fmt::Display for StreamName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            StreamName::Copied(path) => path,
            StreamName::Shared(path) => path.path(),
        })
    }
}

/// Where a request comes from: an address, and the port when the address
/// is the TCP peer's own (a proxy-reported client has no port we know).
#[derive(Clone, Copy, Debug)]
struct Client {
    ip: IpAddr,
    port: Option<u16>,
}

impl Client {
    /// The resolved client of `extensions`, falling back to the TCP `peer`.
    fn of(
        extensions: &axum::http::Extensions,
        peer: Option<SocketAddr>,
    ) -> (Option<Client>, Option<IpAddr>) {
        match (extensions.get::<ClientAddr>(), peer) {
            (Some(ClientAddr(ip)), Some(peer)) if *ip != peer.ip() => (
                Some(Client {
                    ip: *ip,
                    port: None,
                }),
                Some(peer.ip()),
            ),
            (Some(ClientAddr(ip)), None) => (
                Some(Client {
                    ip: *ip,
                    port: None,
                }),
                None,
            ),
            (_, Some(peer)) => (
                Some(Client {
                    ip: peer.ip(),
                    port: Some(peer.port()),
                }),
                None,
            ),
            (None, None) => (None, None),
        }
    }
}

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.port {
            Some(port) => SocketAddr::new(self.ip, port).fmt(f),
            None => self.ip.fmt(f),
        }
    }
}

/// A log field that shows `-` when absent, so every line has every field.
struct OrDash<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Counts and logs a request whose client left before the answer.
struct Pending {
    line: Option<Line>,
    _in_flight: InFlight,
}

impl Drop for Pending {
    fn drop(&mut self) {
        if let Some(line) = self.line.take() {
            const CLIENT_CLOSED: u16 = 499;
            let latency = line.started.elapsed();
            RequestAnswered {
                route: &line.route,
                method: line.method,
                status: CLIENT_CLOSED,
                elapsed: latency,
            }
            .emit();
            line.span.record("http.response.status_code", CLIENT_CLOSED);
            let answer = Answer {
                status: CLIENT_CLOSED,
                latency,
                code: None,
                cause: None,
                trace_id: None,
                principal: None,
            };
            line.log(&answer, 0);
        }
    }
}

/// The request's `Content-Length`: the length of a body its plain fields
/// hold; a shortcut request's body of a known
/// length, more than none, was framed by it: no lookup.
fn bytes_in(route: &RouteLabel, request: &Request, plain: Option<&PlainFields>) -> Option<u64> {
    if let Some(body) = plain.and_then(PlainFields::body) {
        return Some(body.len() as u64);
    }
    match request.body().size_hint().exact() {
        Some(length) if route.shortcut && length > 0 => Some(length),
        _ => match plain {
            Some(plain) => plain.first(Plain::ContentLength),
            None => request
                .headers()
                .get(header::CONTENT_LENGTH)
                .map(HeaderValue::as_bytes),
        }
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(|v| v.parse().ok()),
    }
}

fn protocol_version(version: Version) -> &'static str {
    match version {
        Version::HTTP_09 => "0.9",
        Version::HTTP_10 => "1.0",
        Version::HTTP_11 => "1.1",
        Version::HTTP_2 => "2",
        Version::HTTP_3 => "3",
        _ => "other",
    }
}

/// The `http.request` span with the HTTP semantic-convention attributes,
/// when this request is traced (OTLP on and sampled); else a disabled span,
/// and none of the request's storage spans are built either.
fn request_span(request: &Request, line: &Line, path: &str) -> tracing::Span {
    let parent = match crate::telemetry::request_trace(request.headers()) {
        RequestTrace::Skip => return tracing::Span::none(),
        RequestTrace::Trace(parent) => Some(parent),
        RequestTrace::Unmanaged => None,
    };
    let span = tracing::info_span!(
        "http.request",
        otel.name = %format_args!("{} {}", line.method.as_str(), line.route.route()),
        otel.kind = "server",
        otel.status_code = Empty,
        http.request.method = line.method.as_str(),
        http.route = line.route.route(),
        url.path = path,
        url.scheme = line.scheme.as_str(),
        network.protocol.version = protocol_version(request.version()),
        client.address = line.client.map(|c| display(c.ip)),
        client.port = line.client.and_then(|c| c.port),
        user_agent.original = request
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        http.request.body.size = line.bytes_in,
        http.response.status_code = Empty,
        http.response.body.size = Empty,
        error.type = Empty,
        ds.client.identity = line.identity.as_ref().map(|id| id.name.as_str()),
    );
    if !span.is_disabled() {
        // A missing or malformed traceparent starts a new trace.
        let parent = parent.unwrap_or_else(|| crate::telemetry::remote_context(request.headers()));
        let _ = span.set_parent(parent);
    }
    span
}

/// Whether `route` is a stream route: it ends in the stream's name, and is
/// not one of the control routes of `__ds` (even the one ending in a
/// stream name). Byte windows: a substring search costs more on names this
/// short.
fn is_stream_route(route: &str) -> bool {
    route.ends_with("{*name}") && !route.as_bytes().windows(6).any(|w| w == b"/__ds/")
}

/// A request under the middleware (see the [module docs](self)): counted
/// in flight from [`start`](Self::start), recorded and logged by
/// [`finish`](Self::finish) (or as `499` if dropped before). Plain steps
/// rather than a future around the rest of the middleware: a wrapping
/// future moves the request and the inner future once more per request.
pub(crate) struct Observed {
    pending: Pending,
    span: tracing::Span,
}

impl Observed {
    /// Starts observing `request`, matched to `route`, from the TCP `peer`
    /// when known, its fields in `plain` when they are not in its map.
    pub(crate) fn start(
        route: &RouteLabel,
        peer: Option<SocketAddr>,
        request: &Request,
        plain: Option<&PlainFields>,
    ) -> Self {
        let started = Instant::now();
        let extensions = request.extensions();
        let uri = extensions
            .get::<OriginalUri>()
            .map_or_else(|| request.uri(), |original| &original.0);
        let path = uri.path();
        let stream = route
            .stream
            .then(|| match uri.path_and_query().filter(|_| route.shortcut) {
                Some(shared) => StreamName::Shared(shared.clone()),
                None => StreamName::Copied(path.to_owned()),
            });
        let (client, peer) = Client::of(extensions, peer);
        let mut line = Line {
            started,
            method: MethodLabel::of(request.method()),
            route: route.metrics.clone(),
            stream,
            client,
            peer,
            scheme: extensions.get::<Scheme>().copied().unwrap_or_default(),
            identity: extensions.get::<ClientIdentity>().cloned(),
            bytes_in: bytes_in(route, request, plain),
            quiet: route.quiet,
            span: tracing::Span::none(),
        };
        line.span = request_span(request, &line, path);
        let span = line.span.clone();
        Self {
            pending: Pending {
                line: Some(line),
                _in_flight: InFlight::start(),
            },
            span,
        }
    }

    /// The request's span, for the work that answers it.
    pub(crate) fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Records and logs the request with its `response`; a long-poll
    /// answered later ([`deferred`]) is still in flight while it waits: its
    /// duration, status and line come from the real answer.
    pub(crate) fn finish(self, response: Response) -> Response {
        let Self { pending, span } = self;
        if deferred::is_later(&response) {
            return deferred::around(response, move |wait| async move {
                let response = wait.instrument(span.clone()).await;
                answered(pending, &span, response)
            });
        }
        answered(pending, &span, response)
    }
}

/// Records and logs the request `pending` stands for, now that its
/// response head is ready.
fn answered(mut pending: Pending, span: &tracing::Span, mut response: Response) -> Response {
    let Some(line) = pending.line.take() else {
        return response;
    };
    drop(pending); // the head is ready: no longer in flight
    let status = response.status().as_u16();
    let latency = line.started.elapsed();
    RequestAnswered {
        route: &line.route,
        method: line.method,
        status,
        elapsed: latency,
    }
    .emit();
    span.record("http.response.status_code", status);
    let extensions = response.extensions_mut();
    let code = extensions.get::<ErrorCode>().map(|code| code.0);
    let cause = extensions.remove::<ErrorCause>().map(|cause| cause.0);
    let principal = extensions.remove::<Principal>();
    if status >= 500 {
        span.record("error.type", status);
        span.record("otel.status_code", "ERROR");
    }
    let answer = Answer {
        status,
        latency,
        code,
        cause,
        trace_id: (!span.is_disabled())
            .then(|| crate::telemetry::trace_id(span))
            .flatten(),
        principal,
    };
    match response.body().size_hint().exact() {
        Some(bytes_out) => {
            line.log(&answer, bytes_out);
            response
        }
        None if !line.wanted(status) => response,
        None => response.map(|body| {
            Body::new(LoggedBody {
                inner: body,
                finish: Some((line, answer)),
                bytes: 0,
            })
        }),
    }
}

/// A streamed response body that writes the request's log line when it
/// ends or is dropped (client gone, server draining).
struct LoggedBody {
    inner: Body,
    finish: Option<(Line, Answer)>,
    bytes: u64,
}

impl LoggedBody {
    fn finish(&mut self) {
        if let Some((line, answer)) = self.finish.take() {
            line.log(&answer, self.bytes);
        }
    }
}

impl http_body::Body for LoggedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None | Some(Err(_))) => this.finish(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for LoggedBody {
    fn drop(&mut self) {
        self.finish();
    }
}
