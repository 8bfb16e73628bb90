//! The embedding entry points: the protocol router to mount in an axum
//! application, over a store the embedder opened.
//!
//! Both functions assemble the server's parts with
//! [`App::with_storage`](crate::startup::App::with_storage) — the engine,
//! its expiry sweeper, the subscription manager when
//! `subscriptions.enabled` — and hand back its router. Call them inside a
//! Tokio runtime: they start that background work and panic rather than
//! skip it.

use std::sync::Arc;

use axum::Router;

use crate::config::Config;
pub use crate::config::DEFAULT_STREAM_BASE_PATH;
pub use crate::shutdown::{Readiness, ShutdownToken};
use crate::startup::App;
use crate::storage::Storage;

/// Builds the protocol router over `storage`, always ready, with a shutdown
/// token nobody fires. For embedders that manage neither.
///
/// # Panics
/// Outside a Tokio runtime.
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
/// Every request passes one middleware (client context, metrics, span, log
/// line, security and CORS headers); storage calls are measured when
/// metrics or OTLP tracing are enabled.
///
/// `/readyz` answers `503` until the returned [`Readiness`] is set; live
/// readers end when `shutdown` fires.
///
/// # Panics
/// Outside a Tokio runtime.
pub fn build_router_with_ready(
    storage: Arc<dyn Storage>,
    config: &Config,
    shutdown: ShutdownToken,
) -> (Router, Readiness) {
    App::with_storage(storage, config, shutdown).into_router()
}
