//! Serving a router on a bound listener, plain ([`serve`]) or over TLS
//! ([`serve_tls`]), and the graceful drain both share.
//!
//! HTTP/1.1 is served by this crate's own connection layer (`http1`:
//! no buffers held by idle and streaming connections) unless
//! `transport.http.engine = "hyper"`; HTTP/2 (over TLS, by ALPN) is
//! always hyper's. Embedders serving the router with `axum::serve` get
//! hyper for both.
//!
//! # Layout
//! - this file: the accept loop, the drain, and how each connection is
//!   served (TLS handshake, then HTTP/1.1 or HTTP/2).
//! - `drain`: the signal that closes idle HTTP/1.1 connections.
//! - `http1`: the HTTP/1.1 connection driver.
//! - `live_pool`: the threads that write live (SSE) responses.

mod dispatch;
mod drain;
mod http1;
mod live_pool;

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::{GracefulShutdown, Watcher};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::{Instant, sleep, sleep_until, timeout_at};
use tower::ServiceExt;

use self::dispatch::Dispatch;
use self::drain::{Drain, DrainWatch};
use self::http1::{ConnectionInfo, Http1Settings};
use crate::client::TlsSession;
use crate::config::{Http1Engine, HttpVersion};
use crate::shutdown::{Readiness, ShutdownToken};
use crate::tls::Acceptor;

pub use crate::http::AppendShortcut;

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

/// How [`serve`] and [`serve_tls`] serve connections.
#[derive(Clone, Debug)]
pub struct ServeOptions {
    /// The drain after the shutdown signal.
    pub drain: DrainTiming,
    /// What serves HTTP/1.1 (`transport.http.engine`).
    pub engine: Http1Engine,
    /// Time allowed for a request head to arrive completely; slower
    /// clients get `408` and are disconnected (lean engine).
    pub header_read_timeout: Duration,
    /// The served router's appends without its dispatch (lean engine);
    /// see [`ServeOptions::with_shortcut`].
    pub shortcut: Option<AppendShortcut>,
}

impl ServeOptions {
    /// The defaults with `drain`: the lean engine, a 30 s header-read
    /// timeout.
    pub fn new(drain: DrainTiming) -> Self {
        Self {
            drain,
            engine: Http1Engine::Lean,
            header_read_timeout: Http1Settings::default().header_read_timeout,
            shortcut: None,
        }
    }

    /// Answers appends through `shortcut` rather than the router's dispatch
    /// on lean HTTP/1.1 connections. `shortcut` must come from the router
    /// served ([`crate::App::append_shortcut`]).
    #[must_use]
    pub fn with_shortcut(self, shortcut: AppendShortcut) -> Self {
        Self {
            shortcut: Some(shortcut),
            ..self
        }
    }

    fn http1(&self) -> Http1Settings {
        Http1Settings {
            header_read_timeout: self.header_read_timeout,
            ..Http1Settings::default()
        }
    }
}

impl From<DrainTiming> for ServeOptions {
    fn from(drain: DrainTiming) -> Self {
        Self::new(drain)
    }
}

/// Serves `router` over plain HTTP/1.1 on `listener` until `signal`
/// resolves. Requests carry `ConnectInfo<SocketAddr>`. `options` is a
/// [`ServeOptions`], or just the [`DrainTiming`] with the defaults.
///
/// The drain: on `signal`, `/readyz` turns `503` and live readers are
/// released at once (through `shutdown`); new connections are still taken
/// for the drain delay; then the listener closes, idle connections close,
/// the response in flight on each connection finishes and closes it, and
/// whatever is still open at the drain timeout is dropped.
///
/// With the lean engine, a long-poll that has to wait is answered after
/// the router's future has returned (only the long-poll's own small state
/// waits, see `http::deferred`): the crate's own middleware sees the real
/// answer, but a layer an embedder wraps around `router` sees a
/// placeholder in its place.
///
/// # Errors
/// Never at present: accept errors (out of file descriptors, a connection
/// reset before it was taken) are logged and retried.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    options: impl Into<ServeOptions>,
) -> std::io::Result<()> {
    let options = options.into();
    let protocols = Protocols {
        lean: Dispatch::new(router.clone(), options.shortcut.clone()),
        router,
        engine: options.engine,
        http1: options.http1(),
        builder: connection_builder(&[HttpVersion::Http1, HttpVersion::Http2]),
        http1_allowed: true,
    };
    accept_loop(
        listener,
        None,
        protocols,
        readiness,
        shutdown,
        signal,
        options.drain,
    )
    .await
}

/// Serves `router` over TLS on `listener`: each connection's handshake
/// uses the configuration `acceptor` holds at that moment (so a reload
/// reaches new connections only), then HTTP/1.1 or HTTP/2 as ALPN and
/// `transport.http.versions` allow (no ALPN: HTTP/1.1). Requests carry
/// `ConnectInfo<SocketAddr>` and the connection's
/// [`TlsSession`] as extensions.
///
/// The drain is the same as [`serve`]'s; handshakes in progress when the
/// listener closes are abandoned, HTTP/2 connections get GOAWAY.
///
/// # Errors
/// Never at present: accept errors are logged and retried.
pub async fn serve_tls(
    listener: TcpListener,
    acceptor: Acceptor,
    router: Router,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    options: impl Into<ServeOptions>,
) -> std::io::Result<()> {
    let options = options.into();
    let versions = acceptor.http_versions();
    let protocols = Protocols {
        lean: Dispatch::new(router.clone(), options.shortcut.clone()),
        router,
        engine: options.engine,
        http1: options.http1(),
        builder: connection_builder(versions),
        http1_allowed: versions.contains(&HttpVersion::Http1),
    };
    let tls = Some(acceptor);
    accept_loop(
        listener,
        tls,
        protocols,
        readiness,
        shutdown,
        signal,
        options.drain,
    )
    .await
}

/// What a connection is served with once its transport is up.
#[derive(Clone)]
struct Protocols {
    router: Router,
    /// What lean HTTP/1.1 connections call.
    lean: Dispatch,
    engine: Http1Engine,
    http1: Http1Settings,
    /// hyper, for HTTP/2 and for HTTP/1.1 under the `hyper` engine.
    builder: auto::Builder<TokioExecutor>,
    http1_allowed: bool,
}

/// The signals a connection task watches.
struct Signals {
    /// Where a lean connection reports its move to the live runtime (or,
    /// over TLS, its own task after the handshake).
    moved: live_pool::Moved,
    /// Closes idle lean HTTP/1.1 connections.
    drain: DrainWatch,
    /// Asks hyper connections to finish.
    graceful: Option<Watcher>,
    /// Fired when the listener closes: handshakes still running give up.
    closing: ShutdownToken,
}

/// Accepts connections until `signal` and the drain delay, then drains
/// them (see [`serve`]).
async fn accept_loop(
    listener: TcpListener,
    tls: Option<Acceptor>,
    protocols: Protocols,
    readiness: Readiness,
    shutdown: ShutdownToken,
    signal: impl Future<Output = ()> + Send,
    timing: DrainTiming,
) -> std::io::Result<()> {
    let graceful = GracefulShutdown::new();
    let drain = Drain::default();
    let closing = ShutdownToken::new();
    let mut connections = JoinSet::new();
    let mut moved = live_pool::MovedConnections::new();
    let mut signal = std::pin::pin!(signal);
    let mut draining: Option<(Instant, Instant)> = None;
    // Lean plain connections never reach hyper: no watcher for them.
    let needs_graceful = tls.is_some() || protocols.engine == Http1Engine::Hyper;
    readiness.set_ready(true);
    loop {
        let close_at = draining.map(|(close_at, _)| close_at);
        tokio::select! {
            () = &mut signal, if draining.is_none() => {
                let now = Instant::now();
                tracing::info!(phase = "drain", delay = ?timing.delay, timeout = ?timing.timeout, "shutdown requested, draining");
                readiness.set_ready(false);
                shutdown.cancel();
                draining = Some((now + timing.delay.min(timing.timeout), now + timing.timeout));
            }
            () = sleep_until(close_at.unwrap_or_else(Instant::now)), if close_at.is_some() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let signals = Signals {
                        moved: moved.sender(),
                        drain: drain.watch(),
                        graceful: needs_graceful.then(|| graceful.watcher()),
                        closing: closing.clone(),
                    };
                    match (&tls, protocols.engine) {
                        // The connection itself is the task: nothing else
                        // is kept per connection.
                        (None, Http1Engine::Lean) => connections.spawn(live_pool::serve(
                            lean_connection(stream, peer, None, &protocols, signals.drain),
                            signals.moved,
                        )),
                        (None, Http1Engine::Hyper) => connections.spawn(hyper_connection(
                            stream, peer, None, protocols.clone(), signals.graceful,
                        )),
                        (Some(acceptor), _) => connections.spawn(tls_connection(
                            stream, peer, acceptor.clone(), protocols.clone(), signals,
                        )),
                    };
                }
                Err(error) => accept_failed(&error).await,
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            _ = moved.step() => {}
        }
    }
    drop(listener);
    closing.cancel();
    drain.start();
    let deadline = draining.map_or_else(Instant::now, |(_, deadline)| deadline);
    let finished = timeout_at(deadline, async {
        graceful.shutdown().await;
        moved.close();
        while moved.step().await {}
        while connections.join_next().await.is_some() {}
    })
    .await;
    if finished.is_err() {
        tracing::warn!(
            phase = "drain",
            "drain timeout reached; closing the remaining connections"
        );
        connections.abort_all();
        moved.abort_all();
    }
    Ok(())
}

/// A lean HTTP/1.1 connection on `stream` (plain, or TLS after the
/// handshake).
fn lean_connection<IO>(
    stream: IO,
    peer: SocketAddr,
    tls: Option<TlsSession>,
    protocols: &Protocols,
    drain: DrainWatch,
) -> http1::Connection<IO, Dispatch>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + NoDelay,
{
    // Responses leave in one write each; an SSE event must not wait for
    // the acknowledgement of the previous one.
    stream.set_nodelay();
    let info = ConnectionInfo {
        peer,
        tls: tls.map(Box::new),
    };
    http1::Connection::new(stream, protocols.lean.clone(), info, protocols.http1, drain)
}

impl<IO> live_pool::Movable for http1::Connection<IO, Dispatch>
where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    type Live = http1::Connection<IO, http1::Boxed<Dispatch>>;

    fn poll_until_live(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<bool> {
        http1::Connection::poll_until_live(self, cx)
    }

    fn into_live(self) -> Self::Live {
        self.into_boxed()
    }
}

/// Sockets whose small writes go out at once.
trait NoDelay {
    fn set_nodelay(&self);
}

impl NoDelay for TcpStream {
    fn set_nodelay(&self) {
        let _ = TcpStream::set_nodelay(self, true);
    }
}

impl NoDelay for tokio_rustls::server::TlsStream<TcpStream> {
    fn set_nodelay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

/// One TLS connection: handshake, then HTTP until the client leaves or the
/// drain asks it to.
async fn tls_connection(
    stream: TcpStream,
    peer: SocketAddr,
    acceptor: Acceptor,
    protocols: Protocols,
    signals: Signals,
) {
    // Both phases are boxed: the task keeps only the state of the phase it
    // is in (a handshake's is large and short-lived).
    let handshake = tokio::select! {
        result = Box::pin(acceptor.accept(stream)) => result,
        () = signals.closing.cancelled() => return,
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
    let h2 = session.alpn.as_deref() == Some("h2");
    if protocols.engine == Http1Engine::Lean && protocols.http1_allowed && !h2 {
        // A task of its own, reported like a connection moved to the live
        // runtime (the drain waits for it): this task, sized for the
        // handshake and for hyper, ends instead of holding that room for
        // as long as the connection lives (a waiting long-poll).
        let connection = lean_connection(stream, peer, Some(session), &protocols, signals.drain);
        let task = tokio::spawn(live_pool::serve(connection, signals.moved.clone()));
        if let Err(unreported) = signals.moved.send(task) {
            // The listener is gone: nobody would wait for it or end it.
            unreported.0.abort();
        }
    } else {
        let served = hyper_connection(stream, peer, Some(session), protocols, signals.graceful);
        Box::pin(served).await;
    }
}

/// A connection served by hyper (HTTP/2, or HTTP/1.1 under the `hyper`
/// engine), finished gracefully through `graceful` when the drain starts.
async fn hyper_connection<IO>(
    io: IO,
    peer: SocketAddr,
    session: Option<TlsSession>,
    protocols: Protocols,
    graceful: Option<Watcher>,
) where
    IO: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let router = protocols.router.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        if let Some(session) = &session {
            request.extensions_mut().insert(session.clone());
        }
        router.clone().oneshot(request)
    });
    let connection = protocols
        .builder
        .serve_connection(TokioIo::new(io), service);
    let served = match graceful {
        Some(watcher) => watcher.watch(connection).await,
        None => connection.await,
    };
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
