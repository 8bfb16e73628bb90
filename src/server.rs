//! Serving a router on a bound listener, and the graceful drain.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout_at};

use crate::shutdown::{Readiness, ShutdownToken};

/// How the server leaves after a shutdown signal.
#[derive(Clone, Copy, Debug)]
pub struct DrainTiming {
    /// Time the listener keeps accepting after the signal while `/readyz`
    /// answers `503`, so load balancers stop routing here first.
    pub delay: Duration,
    /// Upper bound on the whole shutdown; connections still open then are
    /// dropped.
    pub timeout: Duration,
}

/// Serves `router` on `listener` until `signal` resolves, then drains:
/// `/readyz` turns `503` at once, live readers are released through
/// `shutdown`, in-flight requests finish, and the whole drain is bounded by
/// `timing.timeout`.
///
/// # Errors
/// When the accept loop fails.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    timing: DrainTiming,
) -> std::io::Result<()> {
    let (stop, stopped) = oneshot::channel::<()>();
    let service = router.into_make_service_with_connect_info::<SocketAddr>();
    let server = axum::serve(listener, service).with_graceful_shutdown(async {
        let _ = stopped.await;
    });
    let mut task = tokio::spawn(async move { server.await });
    readiness.set_ready(true);
    tokio::select! {
        result = &mut task => return result.map_err(std::io::Error::other)?,
        () = signal => {}
    }
    let deadline = Instant::now() + timing.timeout;
    tracing::info!(phase = "drain", delay = ?timing.delay, timeout = ?timing.timeout, "shutdown requested, draining");
    readiness.set_ready(false);
    shutdown.cancel();
    sleep(timing.delay.min(timing.timeout)).await;
    let _ = stop.send(());
    match timeout_at(deadline, &mut task).await {
        Ok(result) => result.map_err(std::io::Error::other)?,
        Err(_) => {
            tracing::warn!(
                phase = "drain",
                "drain timeout reached; closing the remaining connections"
            );
            task.abort();
            Ok(())
        }
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn termination_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate = match tokio::signal::unix::signal(
            tokio::signal::unix::SignalKind::terminate(),
        ) {
            Ok(terminate) => terminate,
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the server");
                let _ = interrupt.await;
                return;
            }
        };
        tokio::select! {
            _ = interrupt => {}
            _ = terminate.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
