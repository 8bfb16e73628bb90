//! The `bind_listener` phase, and the separate metrics listener.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;

use super::phase::{Phase, StartupError};
use crate::server::{self, ServeOptions};
use crate::shutdown::{Readiness, ShutdownToken};
use crate::tls::Acceptor;

/// The `bind_listener` phase.
///
/// # Errors
/// When the address is in use, not permitted, or not on this host.
pub async fn bind_listener(address: &str) -> Result<TcpListener, StartupError> {
    bind(address, "server.bind_address", "DS_SERVER__BIND_ADDRESS").await
}

/// Binds `address`, set by configuration `key` (environment `var`).
pub(super) async fn bind(address: &str, key: &str, var: &str) -> Result<TcpListener, StartupError> {
    use std::io::ErrorKind;
    TcpListener::bind(address).await.map_err(|error| {
        let (cause, hint) = match error.kind() {
            ErrorKind::AddrInUse => (
                format!("cannot listen on {address}: the address is already in use"),
                format!(
                    "stop the process that listens there, or choose a free port with {key} ({var})"
                ),
            ),
            ErrorKind::PermissionDenied => (
                format!("cannot listen on {address}: permission denied"),
                "ports below 1024 need privileges: use a higher port such as 4437, or grant \
                 CAP_NET_BIND_SERVICE"
                    .to_owned(),
            ),
            ErrorKind::AddrNotAvailable => (
                format!("cannot listen on {address}: the address is not on this host"),
                format!(
                    "use 0.0.0.0 (all interfaces) or one of this host's addresses in {key} ({var})"
                ),
            ),
            _ => (
                format!("cannot listen on {address}: {error}"),
                format!("check {key} ({var}): host:port of this machine"),
            ),
        };
        StartupError::new(Phase::BindListener, cause, hint)
    })
}

/// Serves `router` on `listener` until `signal`, over TLS when `tls` is
/// set.
pub(super) async fn serve_router(
    listener: TcpListener,
    tls: Option<Acceptor>,
    router: axum::Router,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    options: ServeOptions,
) -> std::io::Result<()> {
    match tls {
        None => server::serve(listener, router, readiness, shutdown, signal, options).await,
        Some(acceptor) => {
            server::serve_tls(
                listener, acceptor, router, readiness, shutdown, signal, options,
            )
            .await
        }
    }
}

/// The separate metrics listener, stopped after the main server.
pub(super) struct MetricsServer {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

pub(super) fn serve_metrics(listener: TcpListener, router: axum::Router) -> MetricsServer {
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stopped.await;
            })
            .await
    });
    MetricsServer { stop, task }
}

impl MetricsServer {
    /// Stops accepting scrapes; a scrape in progress gets a second to finish.
    pub(super) async fn stop(self) {
        let _ = self.stop.send(());
        let mut task = self.task;
        match tokio::time::timeout(Duration::from_secs(1), &mut task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!(%error, "the metrics listener failed"),
            Ok(Err(_)) => {}
            Err(_) => task.abort(),
        }
    }
}
