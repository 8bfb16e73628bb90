//! The HTTP surface: the routes wired around what the composition root
//! built ([`routes`]), the stream handlers, live reads, health endpoints,
//! `/metrics`, the request log and metrics ([`access`]), and the headers
//! every response carries.

pub(crate) mod access;
mod append;
pub(crate) mod deferred;
pub(crate) mod gate;
mod limits;
mod live;
pub(crate) mod names;
mod plain;
pub(crate) mod problem;
mod query;
pub(crate) mod recovering;
mod stream;
mod subscriptions;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tracing::Instrument;

pub(crate) use limits::InputLimits;
pub(crate) use live::LiveResponse;
pub(crate) use plain::{Plain, PlainFields};

use crate::auth::AccessControl;
use crate::client::TlsSession;
use crate::engine::Engine;
use crate::metrics::MetricsHandle;
use crate::metrics::request::RouteTable;
use crate::protocol::name::NameLimits;
use crate::proxy::ProxyPolicy;
use crate::shutdown::{Readiness, ShutdownToken};
use crate::subscriptions::Subscriptions;

/// The HTTP surface's settings.
#[derive(Debug)]
pub(crate) struct HttpSettings {
    /// Mount path of the stream routes, without a trailing `/` (empty: `/`).
    pub base_path: String,
    pub max_body_bytes: usize,
    pub long_poll_timeout: Duration,
    pub sse_reconnect_interval: Option<Duration>,
    pub sse_keepalive_interval: Duration,
    pub name_limits: NameLimits,
    /// Hard limits on what a client sends, besides the body and the name.
    pub input_limits: InputLimits,
    pub cors: Cors,
    /// Path of the metrics endpoint (logged quietly even when served
    /// elsewhere).
    pub metrics_path: String,
    /// Trust in reverse proxies.
    pub proxy: ProxyPolicy,
}

/// What the routes serve, built by the composition root.
pub(crate) struct Services {
    pub engine: Engine,
    /// The `__ds` APIs, when enabled.
    pub subscriptions: Option<Subscriptions>,
    pub readiness: Readiness,
    pub shutdown: ShutdownToken,
    /// The recorder whose metrics this router serves, if it does.
    pub metrics: Option<&'static MetricsHandle>,
    /// Access control, with `auth.mode = "token"`.
    pub access: Option<AccessControl>,
}

/// Shared state of every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    pub engine: Engine,
    pub settings: Arc<HttpSettings>,
    pub shutdown: ShutdownToken,
}

/// Which origins may read responses from browsers.
#[derive(Debug)]
pub(crate) enum Cors {
    Any,
    List(Vec<HeaderValue>),
}

impl Cors {
    /// `*`, or a comma-separated list of origins.
    pub(crate) fn parse(origins: &str) -> Self {
        if origins.trim() == "*" {
            return Cors::Any;
        }
        Cors::List(
            origins
                .split(',')
                .map(str::trim)
                .filter(|o| !o.is_empty())
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect(),
        )
    }

    /// The `Access-Control-Allow-Origin` value for a request with `origin`
    /// and `method`, if any. With `*`, a write (`POST`, `PUT`, `DELETE`)
    /// without an `Origin` gets none: browsers send `Origin` on every
    /// cross-origin write and no cache stores its answer, so the 330 bytes
    /// of CORS lines would only cost every non-browser writer (an append's
    /// whole answer is 200 bytes without them). Reads keep them always:
    /// a shared cache may serve a stored read to a browser later.
    fn allow_origin(&self, origin: Option<&HeaderValue>, method: &Method) -> Option<HeaderValue> {
        match self {
            Cors::Any if origin.is_none() && !matches!(*method, Method::GET | Method::HEAD) => None,
            Cors::Any => {
                const ANY: HeaderValue = HeaderValue::from_static("*");
                Some(ANY)
            }
            Cors::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, HEAD, OPTIONS";
const ALLOW_HEADERS: &str = "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, \
    Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, \
    Stream-Fork-Offset, Stream-Fork-Sub-Offset";
/// The value of `Access-Control-Expose-Headers`, as a literal for
/// [`COMMON_LINES_ANY_ORIGIN`].
macro_rules! expose_headers {
    () => {
        "WWW-Authenticate, Stream-Next-Offset, Stream-Cursor, \
    Stream-Up-To-Date, Stream-Closed, Stream-TTL, Stream-Expires-At, Producer-Epoch, Producer-Seq, \
    Producer-Expected-Seq, Producer-Received-Seq, ETag, Content-Type, Location, \
    Stream-SSE-Data-Encoding, Stream-Start-Offset"
    };
}
const EXPOSE_HEADERS: &str = expose_headers!();

/// The security header lines [`add_common_headers`] adds to every
/// response, as an HTTP/1.1 head carries them (names lower-cased, in the
/// order they are inserted).
macro_rules! security_lines {
    () => {
        "x-content-type-options: nosniff\r\ncross-origin-resource-policy: cross-origin\r\n"
    };
}

/// The header lines of a response no origin may read.
const COMMON_LINES: &[u8] = security_lines!().as_bytes();

/// The same with `Access-Control-Allow-Origin: *` (`cors_origins = "*"`).
const COMMON_LINES_ANY_ORIGIN: &[u8] = concat!(
    security_lines!(),
    "access-control-allow-origin: *\r\n",
    "access-control-expose-headers: ",
    expose_headers!(),
    "\r\n"
)
.as_bytes();

/// Wires the routes around `services`: the stream routes under the base
/// path, the reserved `__ds` control space (spec §6–7) when subscriptions
/// are on, `/healthz`, `/readyz`, and the metrics endpoint when this router
/// serves it; every request passes [`edge_middleware`]. Also the
/// [`AppendShortcut`] of these routes, for the standalone server.
pub(crate) fn routes(services: Services, settings: HttpSettings) -> (Router, AppendShortcut) {
    let route = if settings.base_path.is_empty() {
        "/{*name}".to_owned()
    } else {
        format!("{}/{{*name}}", settings.base_path)
    };
    let metrics_path = settings.metrics_path.clone();
    let known_routes = [
        route.as_str(),
        "/healthz",
        "/readyz",
        metrics_path.as_str(),
        access::UNMATCHED,
    ];
    let access = access::AccessSettings {
        quiet_routes: vec!["/healthz".into(), "/readyz".into(), metrics_path.clone()],
        routes: RouteTable::new(known_routes),
    };
    let settings = Arc::new(settings);
    let edge = Arc::new(Edge {
        access,
        gate: services
            .access
            .map(|access| gate::AuthGate::new(access, settings.base_path.clone())),
        settings: settings.clone(),
    });
    let state = AppState {
        engine: services.engine,
        settings,
        shutdown: services.shutdown,
    };
    // A plain head is read as it is when no other code would look at its
    // fields: no access control, no identity header among them.
    let reads_plain = edge.gate.is_none()
        && (state.settings.proxy.identity_header())
            .is_none_or(|name| Plain::of(name.as_str().as_bytes()).is_none());
    let shortcut = AppendShortcut(Arc::new(Shortcut {
        route: edge.access.route(&route).for_shortcut(),
        reads_plain,
        edge: edge.clone(),
        state: state.clone(),
        reserved: vec!["/healthz".into(), "/readyz".into(), metrics_path.clone()],
    }));
    let mut router = Router::new();
    if let Some(handle) = services.metrics {
        router = router.route(
            &metrics_path,
            get(move || async move { crate::metrics::scrape(handle) }),
        );
    }
    if let Some(subscriptions) = services.subscriptions {
        router = router.merge(subscriptions::routes(
            &state.settings.base_path,
            subscriptions,
        ));
    }
    let router = router
        .route(&route, stream::routes())
        .merge(probe_routes(services.readiness))
        .fallback(|| async {
            problem::ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
        })
        .with_state(state)
        .layer(middleware::from_fn_with_state(edge, edge_middleware));
    (router, shortcut)
}

/// Appends to streams answered without the router's dispatch (its path
/// match, URL parameters and per-layer boxed futures), for the standalone
/// server's HTTP/1.1 engine: the same edge middleware steps with the
/// stream route's label, then the same handler. It takes exactly the
/// requests the router would give the stream route's `POST` handler.
/// Cheap to clone.
#[derive(Clone)]
pub struct AppendShortcut(Arc<Shortcut>);

impl std::fmt::Debug for AppendShortcut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppendShortcut")
            .field("route", &self.0.route.template())
            .finish_non_exhaustive()
    }
}

struct Shortcut {
    edge: Arc<Edge>,
    state: AppState,
    /// The stream route (its metrics and log label).
    route: access::RouteLabel,
    /// Exact paths served by other routes, under the base path when it is `/`.
    reserved: Vec<String>,
    /// Whether it answers requests whose fields come as [`PlainFields`]
    /// without putting them into a map.
    reads_plain: bool,
}

impl AppendShortcut {
    /// Whether the router would route `method path` to the stream route's
    /// `POST` handler: a non-empty name under the base path, outside the
    /// reserved `__ds` space and the paths of other routes.
    pub(crate) fn takes(&self, method: &Method, path: &str) -> bool {
        if *method != Method::POST {
            return false;
        }
        let shortcut = &*self.0;
        let Some(name) = path
            .strip_prefix(shortcut.state.settings.base_path.as_str())
            .and_then(|rest| rest.strip_prefix('/'))
        else {
            return false;
        };
        !name.is_empty()
            && name != "__ds"
            && !name.starts_with("__ds/")
            && !shortcut.reserved.iter().any(|other| other == path)
    }

    /// Whether [`call`](Self::call) takes a request's fields as
    /// [`PlainFields`], its map left empty: plain fields are only ever read
    /// by the append's own steps, so it answers the same either way.
    pub(crate) fn reads_plain(&self) -> bool {
        self.0.reads_plain
    }

    /// Answers a request [`takes`](Self::takes) accepted, from the TCP
    /// `peer` over the `tls` session if any; `request` carries no
    /// extensions: only the server's own code reads it; its fields are in
    /// `plain` when given (see [`reads_plain`](Self::reads_plain)), else
    /// in its map. Besides the response, the header lines the caller
    /// writes into its head ([`HeadLines`]): written from constants and
    /// typed fields, they cost no map inserts.
    pub(crate) fn call(
        &self,
        mut request: Request,
        plain: Option<PlainFields>,
        peer: SocketAddr,
        tls: Option<&TlsSession>,
    ) -> impl Future<Output = (Response, HeadLines)> + Send + 'static {
        debug_assert!(plain.is_none() || (self.0.reads_plain && request.headers().is_empty()));
        let shortcut = self.0.clone();
        crate::proxy::attach_client_context_for_own_handlers(
            &shortcut.edge.settings.proxy,
            &mut request,
            peer,
            tls,
        );
        let lines = common_lines(&shortcut.edge.settings.cors, &request);
        async move {
            let mut append = None;
            // Inline: the caller boxes this future once, so the handler's
            // future takes no allocation of its own (each of the two was
            // larger than the allocator's per-thread cache serves).
            let plain = plain.as_ref();
            let response = edge(
                &shortcut.edge,
                (&shortcut.route, Some(peer), plain),
                request,
                lines.is_some(),
                |request| {
                    stream::post_stream_with(&shortcut.state, request, plain, Some(&mut append))
                },
            )
            .await;
            let lines = HeadLines {
                append,
                common: lines.unwrap_or_default(),
            };
            (response, lines)
        }
    }
}

/// What the lean HTTP/1.1 engine writes into the head of a shortcut's
/// answer besides the response's own fields.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct HeadLines {
    /// A successful append's fields, written before the response's own:
    /// the handler would have inserted them into the map first, and the
    /// layers after it only add to the map.
    append: Option<append::AppendAnswer>,
    /// The lines of [`add_common_headers`], written after the response's
    /// own fields (empty when the response carries them).
    common: &'static [u8],
}

impl HeadLines {
    /// Nothing to add.
    pub(crate) const NONE: HeadLines = HeadLines {
        append: None,
        common: b"",
    };

    /// The most bytes the lines take.
    pub(crate) fn capacity(&self) -> usize {
        self.common.len()
            + if self.append.is_some() {
                append::AppendAnswer::MAX_LINES
            } else {
                0
            }
    }

    /// Writes the lines that come before the response's own fields.
    pub(crate) fn write_first(&self, out: &mut Vec<u8>) {
        if let Some(append) = self.append {
            append.write_lines(out);
        }
    }

    /// The lines that come after the response's own fields.
    pub(crate) fn last(&self) -> &'static [u8] {
        self.common
    }
}

/// The router's side of [`edge`]: the route label is the matched route.
async fn edge_middleware(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    let route = edge.access.route(
        request
            .extensions()
            .get::<MatchedPath>()
            .map_or(access::UNMATCHED, MatchedPath::as_str),
    );
    let peer = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0);
    let request = crate::proxy::attach_client_context(&edge.settings.proxy, request);
    self::edge(&edge, (&route, peer, None), request, false, |request| {
        next.run(request)
    })
    .await
}

/// The router of the separate metrics listener
/// (`observability.metrics.bind_address`): `GET path` answers the metrics,
/// and `/healthz` and `/readyz` answer as on the main listener, so probes
/// work without the API's TLS client certificate. No stream is served there.
pub(crate) fn metrics_listener(
    handle: &'static MetricsHandle,
    path: &str,
    readiness: Readiness,
) -> Router {
    probe_routes(readiness).route(
        path,
        get(move || async move { crate::metrics::scrape(handle) }),
    )
}

/// What the request middleware needs.
struct Edge {
    access: access::AccessSettings,
    /// With `auth.mode = "token"`.
    gate: Option<gate::AuthGate>,
    settings: Arc<HttpSettings>,
}

/// The one middleware every request passes (`route` is its route's
/// template, or [`access::UNMATCHED`], resolved; `peer` the TCP peer, when
/// known; `plain` the request's fields when they are not in its map),
/// outermost first, after the
/// caller attached the client context ([`crate::proxy::client_context`]):
/// a query-string token moved
/// out of the URI ([`gate::take_query_token`]), metrics, span and log line
/// ([`access::Observed`]), security and CORS headers (preflights answered;
/// with `common_written` the caller writes these headers itself,
/// [`common_lines`]), the
/// limits on headers and query ([`InputLimits::check_head`]), then access
/// control ([`gate::guard`], only with `auth.mode = "token"`). One
/// layer instead of several: each `from_fn` layer clones the route service
/// and boxes a future per request, which was a tenth of the CPU of an
/// append; and its steps in one future, not nested ones, each of which
/// moved the request and the futures inside it once more.
async fn edge<F, Fut>(
    edge: &Edge,
    (route, peer, plain): (
        &access::RouteLabel,
        Option<SocketAddr>,
        Option<&PlainFields>,
    ),
    mut request: Request,
    common_written: bool,
    next: F,
) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    if let Some(gate) = &edge.gate {
        gate::take_query_token(gate, &mut request);
    }
    let observed = access::Observed::start(route, peer, &request, plain);
    let preflight = request.method() == Method::OPTIONS;
    let allowed = if common_written {
        None
    } else {
        edge.settings
            .cors
            .allow_origin(request.headers().get(header::ORIGIN), request.method())
    };
    let limits = &edge.settings.input_limits;
    let header_bytes = plain.map(PlainFields::header_bytes);
    // The handler's future is made here and instrumented as it is, not
    // inside another async block, which would hold the request once more
    // and be moved whole into this future.
    let response = if preflight {
        preflight_response()
    } else if let Some(refused) = observed.span().in_scope(|| {
        (limits.check_head(request.headers(), header_bytes, request.uri()))
            .err()
            .map(IntoResponse::into_response)
    }) {
        refused
    } else {
        let span = observed.span().clone();
        match &edge.gate {
            None => next(request).instrument(span).await,
            // Boxed: inline, the guard's state would be part of every
            // request's future, waiting long-polls included, gate or not.
            Some(gate) => {
                Box::pin(gate::guard(gate, request, next))
                    .instrument(span)
                    .await
            }
        }
    };
    let response = if common_written {
        response
    } else {
        deferred::then(response, move |mut response| {
            add_common_headers(response.headers_mut(), allowed, preflight);
            response
        })
    };
    observed.finish(response)
}

/// `GET /healthz` (the process serves: always `200`) and `GET /readyz`
/// (`200` while `readiness` says ready, `503` before — `recovering` while
/// the store opens — and from the start of the drain): on the main router and on the separate metrics listener,
/// where kubelet probes need no client certificate.
pub(crate) fn probe_routes<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.clone();
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ready")
                    } else if ready.is_recovering() {
                        (StatusCode::SERVICE_UNAVAILABLE, "recovering")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

/// A mount path without a trailing `/`, starting with one (empty for `/`).
pub(crate) fn normalise_base_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Named once: a name given as a string is parsed again on every insert.
const CROSS_ORIGIN_RESOURCE_POLICY: header::HeaderName =
    header::HeaderName::from_static("cross-origin-resource-policy");

/// The security and CORS headers of every response; `allowed` is the
/// origin CORS lets read the answer.
fn add_common_headers(headers: &mut HeaderMap, allowed: Option<HeaderValue>, preflight: bool) {
    // Values made at compile time: `from_static` at run time checks each
    // byte again, for every response.
    const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
    const CROSS_ORIGIN: HeaderValue = HeaderValue::from_static("cross-origin");
    const EXPOSED: HeaderValue = HeaderValue::from_static(EXPOSE_HEADERS);
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
    headers.insert(CROSS_ORIGIN_RESOURCE_POLICY, CROSS_ORIGIN);
    if let Some(allowed) = allowed {
        if allowed != "*" {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        headers.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, EXPOSED);
        if preflight {
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static(ALLOW_METHODS),
            );
            headers.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static(ALLOW_HEADERS),
            );
            headers.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("86400"),
            );
        }
    }
}

/// The lines [`add_common_headers`] would add to the answer of a
/// non-preflight `request`, when they are the same for every
/// response: `None` when an origin from the allowed list is echoed (the
/// caller then leaves them to [`edge`]).
fn common_lines(cors: &Cors, request: &Request) -> Option<&'static [u8]> {
    match cors.allow_origin(request.headers().get(header::ORIGIN), request.method()) {
        None => Some(COMMON_LINES),
        Some(_) if matches!(cors, Cors::Any) => Some(COMMON_LINES_ANY_ORIGIN),
        Some(_) => None,
    }
}

fn preflight_response() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
    response.into_response()
}
