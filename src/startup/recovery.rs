//! The `open_storage` phase behind bound listeners: while the store opens
//! (a file mode replays its log tail, `acid` opens its databases,
//! `postgres` migrates), the main listener serves the recovery router —
//! `/healthz` `200`, `/readyz` `503 recovering`, streams `503` with
//! `Retry-After` — so a pod that makes progress is not killed by its
//! liveness probe. Once the store is open, that server drains (idle
//! connections close, answers in flight finish) and the listener is
//! handed to the application on the same socket; connections arriving
//! in between wait in the accept queue.

use std::future::Future;
use std::pin::Pin;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;

use super::app::App;
use super::listen::serve_router;
use super::phase::{Phase, StartupError};
use super::settings;
use crate::config::Config;
use crate::metrics::MetricsHandle;
use crate::server::{self, DrainTiming};
use crate::shutdown::{Readiness, ShutdownToken};
use crate::tls::Acceptor;

/// How the wait for the store ended.
pub(super) enum Opened {
    /// The store is open; the listener is the main one, ready to serve
    /// the application.
    Ready(Box<App>, TcpListener),
    /// A termination signal came first: the recovery server has drained
    /// and the process may leave.
    Stopped,
}

/// Opens the store `config` names while `listener` serves the recovery
/// router; `readiness` is the flag every probe follows (not ready until
/// the application serves). `scrape` is the metrics handle when the main
/// listener serves the metrics endpoint. `signal` is the termination
/// signal; if it has not fired, it is left for the application's server.
///
/// # Errors
/// An `open_storage` failure (after the recovery server has drained), or
/// a listener that cannot be shared between the two servers.
pub(super) async fn open_behind(
    config: &Config,
    listener: TcpListener,
    tls: Option<&Acceptor>,
    readiness: &Readiness,
    scrape: Option<&'static MetricsHandle>,
    signal: Pin<&mut (impl Future<Output = ()> + Send)>,
) -> Result<Opened, StartupError> {
    let (listener, kept) = share(listener)?;
    let router = crate::http::recovering::routes(
        readiness.clone(),
        scrape.map(|handle| (handle, config.observability.metrics.path.as_str())),
    );
    let started = Instant::now();
    tracing::info!(
        phase = Phase::OpenStorage.as_str(),
        mode = %config.storage.mode,
        "recovering storage; /readyz answers 503 until it is open"
    );
    let mut opened = None;
    let opening = App::build_behind(config, readiness.clone());
    let until = async {
        tokio::select! {
            result = opening => opened = Some(result),
            () = signal => {}
        }
    };
    // Not ready while recovering, so there is nothing to wait for before
    // closing the listener.
    let options = server::ServeOptions {
        drain: DrainTiming {
            delay: Duration::ZERO,
            ..settings::drain_timing(config)
        },
        ..settings::serve_options(config)
    };
    let served = serve_router(
        listener,
        tls.cloned(),
        router,
        readiness.clone(),
        ShutdownToken::new(),
        until,
        options,
    )
    .await;
    served.map_err(|error| {
        StartupError::new(
            Phase::Serve,
            format!("the server stopped while storage recovered: {error}"),
            "see the log above; restarting the process is safe",
        )
    })?;
    let Some(app) = opened else {
        tracing::info!(
            phase = Phase::Drain.as_str(),
            elapsed_ms = elapsed_ms(started),
            "stopped while storage was recovering"
        );
        return Ok(Opened::Stopped);
    };
    let app = app?;
    readiness.recovered();
    tracing::info!(
        phase = Phase::OpenStorage.as_str(),
        duration_ms = elapsed_ms(started),
        streams = app.engine().stream_count(),
        "storage recovered; the listener now serves the application"
    );
    let listener = TcpListener::from_std(kept).map_err(|error| bind_failed(&error))?;
    Ok(Opened::Ready(Box::new(app), listener))
}

/// The listener for the recovery server and a second handle on the same
/// socket for the application's, so the port never closes in between.
fn share(listener: TcpListener) -> Result<(TcpListener, std::net::TcpListener), StartupError> {
    let shared = listener.into_std().map_err(|error| bind_failed(&error))?;
    let kept = shared.try_clone().map_err(|error| bind_failed(&error))?;
    let listener = TcpListener::from_std(shared).map_err(|error| bind_failed(&error))?;
    Ok((listener, kept))
}

fn bind_failed(error: &std::io::Error) -> StartupError {
    StartupError::new(
        Phase::BindListener,
        format!("cannot hand the listener over after recovery: {error}"),
        "the process may be out of file descriptors: raise its limit (ulimit -n)",
    )
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
