//! The HTTP surface: [`build_router`], the stream handlers, live reads,
//! health endpoints, `/metrics`, the request log and metrics
//! ([`access`]), and the headers every response carries.

pub mod access;
mod live;
pub mod names;
pub mod problem;
mod query;
mod stream;

pub(crate) use stream::PublicOrigin;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{any, get};

use crate::config::Config;
use crate::engine::{Engine, EngineLimits};
use crate::protocol::name::NameLimits;
use crate::shutdown::{Readiness, ShutdownToken};
use crate::storage::{InstrumentedStorage, Storage};

/// Settings the handlers need, derived once from [`Config`].
#[derive(Debug)]
pub(crate) struct HttpSettings {
    pub base_path: String,
    pub max_body_bytes: usize,
    pub long_poll_timeout: Duration,
    pub sse_reconnect_interval: Option<Duration>,
    pub sse_keepalive_interval: Duration,
    pub name_limits: NameLimits,
    pub cors: Cors,
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
    fn from_config(origins: &str) -> Self {
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

    fn allow_origin(&self, origin: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Cors::Any => Some(HeaderValue::from_static("*")),
            Cors::List(list) => origin.filter(|o| list.contains(o)).cloned(),
        }
    }
}

const ALLOW_METHODS: &str = "GET, POST, PUT, DELETE, HEAD, OPTIONS";
const ALLOW_HEADERS: &str = "Content-Type, Authorization, If-None-Match, Stream-Seq, Stream-TTL, \
    Stream-Expires-At, Stream-Closed, Producer-Id, Producer-Epoch, Producer-Seq, Stream-Forked-From, \
    Stream-Fork-Offset, Stream-Fork-Sub-Offset";
const EXPOSE_HEADERS: &str = "Stream-Next-Offset, Stream-Cursor, Stream-Up-To-Date, Stream-Closed, \
    Stream-TTL, Stream-Expires-At, Producer-Epoch, Producer-Seq, Producer-Expected-Seq, \
    Producer-Received-Seq, ETag, Content-Type, Location, Stream-SSE-Data-Encoding";

/// Builds the protocol router over `storage`, always ready, with a shutdown
/// token nobody fires. For embedders that manage neither.
pub fn build_router(storage: Arc<dyn Storage>, config: &Config) -> Router {
    let (router, readiness) = build_router_with_ready(storage, config, ShutdownToken::new());
    readiness.set_ready(true);
    router
}

/// Builds the protocol router plus `/healthz`, `/readyz` and, when
/// `observability.metrics.enabled` without a separate `bind_address` and
/// the Prometheus recorder is installed ([`crate::metrics::install`]), the
/// metrics endpoint at `observability.metrics.path`.
///
/// Every request passes the [`access`] middleware (metrics, span, log
/// line); storage calls are measured through [`InstrumentedStorage`] when
/// metrics or OTLP tracing are enabled.
///
/// `/readyz` answers `503` until the returned [`Readiness`] is set; live
/// readers end when `shutdown` fires.
pub fn build_router_with_ready(
    storage: Arc<dyn Storage>,
    config: &Config,
    shutdown: ShutdownToken,
) -> (Router, Readiness) {
    let observability = &config.observability;
    let storage: Arc<dyn Storage> = if observability.metrics.enabled || observability.otlp.enabled {
        Arc::new(InstrumentedStorage::new(storage))
    } else {
        storage
    };
    let engine = Engine::new(storage, EngineLimits::from_config(config));
    let readiness = Readiness::new(false);
    let connection = &config.transport.connection;
    let settings = HttpSettings {
        base_path: normalise_base_path(&config.http.stream_base_path),
        max_body_bytes: usize::try_from(config.limits.max_request_body_bytes).unwrap_or(usize::MAX),
        long_poll_timeout: Duration::from_secs(connection.long_poll_timeout_secs),
        sse_reconnect_interval: (connection.sse_reconnect_interval_secs > 0)
            .then(|| Duration::from_secs(connection.sse_reconnect_interval_secs)),
        sse_keepalive_interval: Duration::from_secs(15),
        name_limits: NameLimits {
            max_bytes: config.limits.max_stream_name_bytes,
            max_segments: config.limits.max_stream_name_segments,
        },
        cors: Cors::from_config(&config.http.cors_origins),
    };
    let route = if settings.base_path.is_empty() {
        "/{*name}".to_owned()
    } else {
        format!("{}/{{*name}}", settings.base_path)
    };
    if tokio::runtime::Handle::try_current().is_ok() {
        engine.spawn_sweeper(Duration::from_secs(
            config.storage.expiry_sweep_interval_secs.max(1),
        ));
    }
    let subscriptions = config.subscriptions.enabled.then(|| {
        crate::subscriptions::Subscriptions::start(
            engine.clone(),
            crate::subscriptions::SubscriptionSettings::from_config(config),
            shutdown.clone(),
        )
    });
    let state = AppState {
        engine,
        settings: Arc::new(settings),
        shutdown,
    };
    let ready = readiness.clone();
    let metrics_path = observability.metrics.path.clone();
    // The reserved control space (spec §6–7), matched before streams.
    let control = format!("{}/__ds/{{*rest}}", settings_base(&state));
    let mut known_routes = vec![route.as_str(), "/healthz", "/readyz", metrics_path.as_str()];
    if subscriptions.is_some() {
        known_routes.push(control.as_str());
    }
    let edge = Arc::new(Edge {
        proxy: crate::proxy::ProxyPolicy::from_config(&config.proxy),
        access: access::AccessSettings {
            quiet_routes: vec!["/healthz".into(), "/readyz".into(), metrics_path.clone()],
            known_routes: known_routes
                .into_iter()
                .map(crate::metrics::route_label)
                .collect(),
        },
        settings: state.settings.clone(),
    });
    let mut router = Router::new();
    if observability.metrics.enabled
        && observability.metrics.bind_address.is_none()
        && let Some(handle) = crate::metrics::installed()
    {
        router = router.route(
            &metrics_path,
            get(move || async move { crate::metrics::scrape(handle) }),
        );
    }
    if let Some(subscriptions) = subscriptions {
        router = router.route(
            &control,
            any(crate::subscriptions::http::dispatch).with_state(subscriptions),
        );
    }
    let router = router
        .route(&route, any(stream::dispatch))
        .merge(probe_routes(ready))
        .fallback(|| async {
            problem::ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such route")
        })
        .with_state(state)
        .layer(middleware::from_fn_with_state(edge, edge_middleware));
    (router, readiness)
}

/// What the request middleware needs.
struct Edge {
    proxy: crate::proxy::ProxyPolicy,
    access: access::AccessSettings,
    settings: Arc<HttpSettings>,
}

/// The one middleware every request passes, outermost first: the client
/// context ([`crate::proxy::client_context`]), metrics, span and log line
/// ([`access`]), then security and CORS headers. One layer instead of
/// three: each `from_fn` layer clones the route service and boxes a future
/// per request, which was a tenth of the CPU of an append.
async fn edge_middleware(State(edge): State<Arc<Edge>>, request: Request, next: Next) -> Response {
    let request = crate::proxy::attach_client_context(&edge.proxy, request);
    access::observe(&edge.access, request, |request| {
        common_headers(&edge.settings.cors, request, next)
    })
    .await
}

/// `GET /healthz` (the process serves: always `200`) and `GET /readyz`
/// (`200` while `readiness` says ready, `503` before and from the start of
/// the drain): on the main router and on the separate metrics listener,
/// where kubelet probes need no client certificate.
pub fn probe_routes<S: Clone + Send + Sync + 'static>(readiness: Readiness) -> Router<S> {
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.clone();
                async move {
                    if ready.is_ready() {
                        (StatusCode::OK, "ready")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
                    }
                }
            }),
        )
}

fn settings_base(state: &AppState) -> &str {
    &state.settings.base_path
}

fn normalise_base_path(raw: &str) -> String {
    let trimmed = raw.trim().trim_end_matches('/');
    if trimmed.is_empty() {
        String::new()
    } else if trimmed.starts_with('/') {
        trimmed.to_owned()
    } else {
        format!("/{trimmed}")
    }
}

/// Security and CORS headers on every response; answers CORS preflights.
async fn common_headers(cors: &Cors, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).cloned();
    let preflight = request.method() == Method::OPTIONS;
    let mut response = if preflight {
        preflight_response()
    } else {
        next.run(request).await
    };
    let headers = response.headers_mut();
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("cross-origin"),
    );
    if let Some(allowed) = cors.allow_origin(origin.as_ref()) {
        if allowed != "*" {
            headers.append(header::VARY, HeaderValue::from_static("Origin"));
        }
        headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        headers.insert(
            header::ACCESS_CONTROL_EXPOSE_HEADERS,
            HeaderValue::from_static(EXPOSE_HEADERS),
        );
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
    response
}

fn preflight_response() -> Response {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(ALLOW_METHODS));
    response.into_response()
}
