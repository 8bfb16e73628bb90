//! [`App`]: the composition root. It creates every long-lived part of a
//! serving process from the configuration — storage (measured when metrics
//! or tracing are on), the engine, the expiry sweeper, the subscription
//! manager, the readiness flag and the shutdown token — and hands the HTTP
//! layer what it needs to wire its routes. The binary's startup uses it;
//! embedders may too, or call [`crate::router::build_router_with_ready`],
//! which builds one around a store they opened.

use std::sync::Arc;

use axum::Router;

use super::phase::{Phase, StartupError};
use super::{settings, storage};
use crate::auth::{AccessControl, AuthSettings};
use crate::config::Config;
use crate::engine::Engine;
use crate::http::{self, Services};
use crate::metrics;
use crate::server::AppendShortcut;
use crate::shutdown::{Readiness, ShutdownToken};
use crate::storage::{InstrumentedStorage, Storage};
use crate::subscriptions::Subscriptions;
use crate::watch::ReloadTiming;

/// A server's parts, assembled and running their background work, ready
/// to serve: [`App::router`] on any listener, `/readyz` following
/// [`App::readiness`], live readers released by [`App::shutdown_token`].
#[derive(Clone, Debug)]
pub struct App {
    engine: Engine,
    subscriptions: Option<Subscriptions>,
    router: Router,
    shortcut: AppendShortcut,
    readiness: Readiness,
    shutdown: ShutdownToken,
    access: Option<AccessControl>,
}

impl App {
    /// The `open_storage` phase and the assembly: opens the store
    /// `storage.mode` names (off the async workers: a durable backend
    /// replays its files), then [`App::with_storage`].
    ///
    /// Install the metrics recorder first ([`metrics::install`]), if at
    /// all: the parts resolve their metric handles as they are built.
    ///
    /// # Errors
    /// An `open_storage` failure (see [`storage::open_storage`]).
    ///
    /// # Panics
    /// Outside a Tokio runtime, as [`App::with_storage`].
    pub async fn build(config: &Config) -> Result<Self, StartupError> {
        let store = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || storage::open_storage(&config))
                .await
                .map_err(|error| open_failed(&error))??
        };
        Self::around_opened(store, config, Readiness::new(false)).await
    }

    /// [`App::build`] for the binary, whose listeners already serve
    /// probes while the store opens: `/readyz` follows `readiness`. The
    /// store opens on a thread of its own, which a process stopped during
    /// recovery does not wait for (leaving then is as safe as a crash,
    /// which every durable backend recovers from).
    pub(super) async fn build_behind(
        config: &Config,
        readiness: Readiness,
    ) -> Result<Self, StartupError> {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let runtime = tokio::runtime::Handle::current();
        let owned = config.clone();
        std::thread::Builder::new()
            .name("storage-open".into())
            .spawn(move || {
                // The postgres backend drives its connections on the runtime.
                let _entered = runtime.enter();
                let _ = sender.send(storage::open_storage(&owned));
            })
            .map_err(|error| open_failed(&error))?;
        let store = receiver.await.map_err(|error| open_failed(&error))??;
        Self::around_opened(store, config, readiness).await
    }

    /// Loads access control (off the async workers) and assembles the
    /// parts around `store`.
    async fn around_opened(
        store: Arc<dyn Storage>,
        config: &Config,
        readiness: Readiness,
    ) -> Result<Self, StartupError> {
        tracing::info!(backend = store.backend_name(), "storage open");
        let access = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || load_access_control(&config))
                .await
                .map_err(|error| {
                    StartupError::new(
                        Phase::LoadTls,
                        format!("loading access control panicked or was cancelled: {error}"),
                        "see the log above; this is a bug worth reporting",
                    )
                })??
        };
        Ok(Self::assemble(
            store,
            config,
            ShutdownToken::new(),
            access,
            readiness,
        ))
    }

    /// Assembles the parts around an open store: the engine with the
    /// streams the store recovered, its expiry sweeper, the subscription
    /// manager when `subscriptions.enabled`, and the router. `/readyz`
    /// answers `503` until [`App::readiness`] is set; live readers end
    /// when `shutdown` fires.
    ///
    /// With `auth.mode = "token"`, access control is loaded from `[auth]`
    /// here (its files read, blocking) and kept current in the background.
    ///
    /// # Panics
    /// Outside a Tokio runtime: the sweeper and the subscription tasks are
    /// spawned here, and are never skipped. With `auth.mode = "token"`,
    /// when its JWKS or API-key file cannot be loaded: serving without the
    /// access control asked for is never the fallback (load it yourself
    /// with [`load_access_control`] and call [`App::with_access`] to
    /// handle the error).
    pub fn with_storage(
        storage: Arc<dyn Storage>,
        config: &Config,
        shutdown: ShutdownToken,
    ) -> Self {
        let access = load_access_control(config).unwrap_or_else(|error| {
            panic!("durable-streams-server: access control cannot start: {error}")
        });
        Self::with_access(storage, config, shutdown, access)
    }

    /// [`App::with_storage`] with access control loaded by the caller
    /// (`None`: everyone may do everything, as `auth.mode = "none"`).
    /// Its files are reloaded and its JWKS URL fetched in the background
    /// until `shutdown`.
    ///
    /// # Panics
    /// Outside a Tokio runtime.
    pub fn with_access(
        storage: Arc<dyn Storage>,
        config: &Config,
        shutdown: ShutdownToken,
        access: Option<AccessControl>,
    ) -> Self {
        Self::assemble(storage, config, shutdown, access, Readiness::new(false))
    }

    /// [`App::with_access`] with the readiness flag `/readyz` follows.
    fn assemble(
        storage: Arc<dyn Storage>,
        config: &Config,
        shutdown: ShutdownToken,
        access: Option<AccessControl>,
        readiness: Readiness,
    ) -> Self {
        assert!(
            tokio::runtime::Handle::try_current().is_ok(),
            "durable-streams-server: the server is assembled (App::with_storage, build_router, \
             build_router_with_ready) inside a Tokio runtime, which runs its expiry sweeper and \
             subscription tasks; call it from async code or within Runtime::enter"
        );
        let observability = &config.observability;
        let storage: Arc<dyn Storage> =
            if observability.metrics.enabled || observability.otlp.enabled {
                Arc::new(InstrumentedStorage::new(storage))
            } else {
                storage
            };
        let engine = Engine::new(storage, settings::engine_limits(&config.limits));
        engine.spawn_sweeper(settings::sweep_interval(config));
        engine.spawn_retention(
            settings::sweep_interval(config),
            config.storage.retention.clone(),
        );
        let subscriptions = config.subscriptions.enabled.then(|| {
            Subscriptions::start(
                engine.clone(),
                settings::subscriptions(config),
                shutdown.clone(),
            )
        });
        if let Some(access) = &access {
            // The tasks end with `shutdown`; nothing needs their handles.
            drop(access.spawn_background(ReloadTiming::default(), shutdown.clone()));
        }
        engine.spawn_replica_watch({
            let readiness = readiness.clone();
            move |reachable| readiness.set_store_reachable(reachable)
        });
        let metrics = &observability.metrics;
        // Served here unless it has a listener of its own.
        let scrape = (metrics.enabled && metrics.bind_address.is_none())
            .then(metrics::installed)
            .flatten();
        let (router, shortcut) = http::routes(
            Services {
                engine: engine.clone(),
                subscriptions: subscriptions.clone(),
                readiness: readiness.clone(),
                shutdown: shutdown.clone(),
                metrics: scrape,
                access: access.clone(),
            },
            settings::http(config),
        );
        Self {
            engine,
            subscriptions,
            router,
            shortcut,
            readiness,
            shutdown,
            access,
        }
    }

    /// The router: the protocol routes, `/healthz`, `/readyz`, the `__ds`
    /// APIs when enabled, and the metrics endpoint when it has no listener
    /// of its own. Cheap to clone.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The router's appends answered without its dispatch, for
    /// [`crate::server::ServeOptions::with_shortcut`].
    pub fn append_shortcut(&self) -> AppendShortcut {
        self.shortcut.clone()
    }

    /// The flag behind `/readyz`.
    pub fn readiness(&self) -> &Readiness {
        &self.readiness
    }

    /// The token that releases live readers when the server drains.
    pub fn shutdown_token(&self) -> &ShutdownToken {
        &self.shutdown
    }

    /// The engine serving the streams.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// The router and the readiness flag, for callers that serve the
    /// router themselves.
    pub fn into_router(self) -> (Router, Readiness) {
        (self.router, self.readiness)
    }

    /// Access control, with `auth.mode = "token"`.
    pub fn access_control(&self) -> Option<&AccessControl> {
        self.access.as_ref()
    }

    /// Whether the `__ds` subscription APIs are served.
    pub fn serves_subscriptions(&self) -> bool {
        self.subscriptions.is_some()
    }
}

/// The `open_storage` failure of an opening that never answered.
fn open_failed(error: &dyn std::fmt::Display) -> StartupError {
    StartupError::new(
        Phase::OpenStorage,
        format!("opening storage panicked or was cancelled: {error}"),
        "see the log above; this is a bug worth reporting",
    )
}

/// Access control as `[auth]` asks: `None` with `auth.mode = "none"`,
/// else loaded (JWKS and API-key files read, blocking; a JWKS URL is
/// fetched by the background task [`App::with_access`] starts).
///
/// # Errors
/// A bad setting or an unreadable or invalid file, as a `load_tls`
/// (key material) failure.
pub fn load_access_control(config: &Config) -> Result<Option<AccessControl>, StartupError> {
    let failed = |error: crate::auth::AuthSetupError| {
        StartupError::new(Phase::LoadTls, error.to_string(), error.hint())
    };
    let Some(settings) = AuthSettings::from_config(&config.auth).map_err(failed)? else {
        return Ok(None);
    };
    let access = AccessControl::load(settings).map_err(failed)?;
    tracing::info!(
        token_keys = access.has_token_keys(),
        query_param = access.settings().query_param().is_some(),
        "access control on"
    );
    Ok(Some(access))
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt;

    use super::*;
    use crate::storage::InMemoryStorage;

    async fn status(router: &Router, method: &str, uri: &str) -> StatusCode {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        router
            .clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    #[tokio::test]
    async fn the_app_serves_streams_and_turns_ready_when_told() {
        let config = Config::default();
        let app = App::build(&config).await.expect("memory opens");
        let router = app.router();
        assert_eq!(
            status(&router, "GET", "/readyz").await,
            StatusCode::SERVICE_UNAVAILABLE
        );
        app.readiness().set_ready(true);
        assert_eq!(status(&router, "GET", "/readyz").await, StatusCode::OK);
        assert_eq!(
            status(&router, "PUT", "/v1/stream/a").await,
            StatusCode::CREATED
        );
        assert_eq!(app.engine().stream_count(), 1);
        assert!(!app.serves_subscriptions());
        // The control space answers 404 unless subscriptions are enabled.
        assert_eq!(
            status(&router, "GET", "/v1/stream/__ds/jwks.json").await,
            StatusCode::NOT_FOUND
        );
    }

    #[tokio::test]
    async fn subscriptions_are_started_when_enabled() {
        let mut config = Config::default();
        config.subscriptions.enabled = true;
        let app = App::with_storage(
            Arc::new(InMemoryStorage::default()),
            &config,
            ShutdownToken::new(),
        );
        assert!(app.serves_subscriptions());
        let router = app.router();
        assert_eq!(
            status(&router, "GET", "/v1/stream/__ds/jwks.json").await,
            StatusCode::OK
        );
    }

    #[test]
    #[should_panic(expected = "inside a Tokio runtime")]
    fn outside_a_runtime_the_assembly_refuses_loudly() {
        let _ = App::with_storage(
            Arc::new(InMemoryStorage::default()),
            &Config::default(),
            ShutdownToken::new(),
        );
    }
}
