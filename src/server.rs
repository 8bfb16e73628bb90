//! Serving a router on a bound listener, plain ([`serve`]) or over TLS
//! ([`serve_tls`]), and the graceful drain both share.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tower::ServiceExt;

use crate::config::HttpVersion;
use crate::shutdown::{Readiness, ShutdownToken};
use crate::tls::Acceptor;

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

/// Serves `router` over plain HTTP/1.1 on `listener` until `signal`
/// resolves, then drains:
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

/// Serves `router` over TLS on `listener`: each connection's handshake
/// uses the configuration `acceptor` holds at that moment (so a reload
/// reaches new connections only), then HTTP/1.1 or HTTP/2 as ALPN and
/// `transport.http.versions` allow. Requests carry
/// `ConnectInfo<SocketAddr>` and the connection's
/// [`TlsSession`](crate::client::TlsSession) as extensions.
///
/// The drain is the same as [`serve`]'s: on `signal`, `/readyz` turns `503`
/// and live readers are released at once; new connections are still taken
/// for `timing.delay`; then the listener closes, handshakes in progress are
/// abandoned, every connection is asked to finish (HTTP/1.1 closes after
/// the response in flight, HTTP/2 sends GOAWAY), and whatever is still open
/// at `timing.timeout` is dropped.
///
/// # Errors
/// Never at present: accept errors (out of file descriptors, a connection
/// reset before it was taken) are logged and retried.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: Acceptor,
    router: Router,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    timing: DrainTiming,
) -> std::io::Result<()> {
    let builder = connection_builder(acceptor.http_versions());
    let graceful = GracefulShutdown::new();
    // Fired when the listener closes: handshakes still running give up.
    let closing = ShutdownToken::new();
    let mut connections = JoinSet::new();
    let mut signal = std::pin::pin!(signal);
    let mut drain: Option<(Instant, Instant)> = None;
    readiness.set_ready(true);
    loop {
        let close_at = drain.map(|(close_at, _)| close_at);
        tokio::select! {
            () = &mut signal, if drain.is_none() => {
                let now = Instant::now();
                tracing::info!(phase = "drain", delay = ?timing.delay, timeout = ?timing.timeout, "shutdown requested, draining");
                readiness.set_ready(false);
                shutdown.cancel();
                drain = Some((now + timing.delay.min(timing.timeout), now + timing.timeout));
            }
            () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    connections.spawn(connection(
                        stream,
                        peer,
                        acceptor.clone(),
                        builder.clone(),
                        router.clone(),
                        graceful.watcher(),
                        closing.clone(),
                    ));
                }
                Err(error) => accept_failed(&error).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
    drop(listener);
    closing.cancel();
    let deadline = drain.map_or_else(Instant::now, |(_, deadline)| deadline);
    let finished = timeout_at(deadline, async {
        graceful.shutdown().await;
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            phase = "drain",
            "drain timeout reached; closing the remaining connections"
        );
        connections.abort_all();
    }
    Ok(())
}

/// One TLS connection: handshake, then HTTP until the client leaves or the
/// drain asks it to.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Acceptor,
    builder: auto::Builder<TokioExecutor>,
    router: Router,
    watcher: hyper_util::server::graceful::Watcher,
    closing: ShutdownToken,
) {
    let handshake = tokio::select! {
        result = acceptor.accept(stream) => result,
        () = closing.cancelled() => return,
    };
    let (stream, session) = match handshake {
        Ok(accepted) => accepted,
        Err(error) => {
            // Scanners and health probes fail handshakes all day: debug, and
            // counted in durable_streams_tls_handshake_failures_total.
            tracing::debug!(%peer, reason = error.reason(), %error, "TLS handshake failed");
            return;
        }
    };
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        request.extensions_mut().insert(session.clone());
        router.clone().oneshot(request)
    });
    let served = watcher
        .watch(builder.serve_connection(TokioIo::new(stream), service))
        .await;
    if let Err(error) = served {
        tracing::debug!(%peer, %error, "connection ended with an error");
    }
}

/// HTTP/1.1, HTTP/2 or both (detected from the first bytes, which follow
/// ALPN), as `versions` allow.
fn connection_builder(versions: &[HttpVersion]) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new());
    builder.http2().timer(TokioTimer::new());
    let http1 = versions.contains(&HttpVersion::Http1);
    let http2 = versions.contains(&HttpVersion::Http2);
    match (http1, http2) {
        (true, false) => builder.http1_only(),
        (false, true) => builder.http2_only(),
        _ => builder,
    }
}

/// An accept error: per-connection ones are skipped, others (out of file
/// descriptors) paused on so the loop does not spin.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind;
    if matches!(
        error.kind(),
        ErrorKind::ConnectionAborted | ErrorKind::ConnectionReset | ErrorKind::ConnectionRefused
    ) {
        return;
    }
    tracing::warn!(%error, "accepting a connection failed; retrying shortly");
    sleep(Duration::from_millis(100)).await;
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
