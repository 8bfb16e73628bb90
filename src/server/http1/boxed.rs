//! A connection whose response turned live, moved to the live runtime:
//! its later requests' futures are boxed, so it keeps a pointer's room for
//! them instead of a whole future's for as long as it streams.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::Body;
use http::{Request, Response};
use tower::Service;

use super::{Connection, ConnectionInfo, ConnectionService, Phase};
use crate::http::{HeadLines, PlainFields};

impl<I, S> Connection<I, S>
where
    S: ConnectionService,
    S::Future: Send + 'static,
{
    /// The same connection, serving its later requests through [`Boxed`]:
    /// for a connection whose response turned live, which would otherwise
    /// keep room for a whole service future inline for as long as it
    /// streams.
    pub(crate) fn into_boxed(self) -> Connection<I, Boxed<S>> {
        let phase = match self.phase {
            Phase::Head => Phase::Head,
            Phase::Service(future) => Phase::Service(Box::pin(future)),
            Phase::Later(wait) => Phase::Later(wait),
            Phase::Respond(respond) => Phase::Respond(respond),
            Phase::Close(closing) => Phase::Close(closing),
            Phase::Done => Phase::Done,
        };
        Connection {
            io: self.io,
            service: Boxed(self.service),
            info: self.info,
            settings: self.settings,
            drain: self.drain,
            read_buf: self.read_buf,
            header_timer: self.header_timer,
            scanner: self.scanner,
            requests: self.requests,
            exchange: self.exchange,
            inbound: self.inbound,
            phase,
            live: self.live,
            head_lines: self.head_lines,
        }
    }
}

/// A service future behind a pointer. It stays of its own type (not a
/// `dyn Future`) so the connection can still ask the service for the
/// response's head lines ([`ConnectionService::head_lines`]).
type BoxedFuture<F> = Pin<Box<F>>;

/// `S` with its futures boxed (see [`Connection::into_boxed`]): one
/// allocation per request, for a connection that holds a pointer's room
/// for them instead of a whole future's.
pub(crate) struct Boxed<S>(S);

impl<S> Service<Request<Body>> for Boxed<S>
where
    S: ConnectionService,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = BoxedFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, request: Request<Body>) -> BoxedFuture<S::Future> {
        Box::pin(self.0.call(request))
    }
}

impl<S> ConnectionService for Boxed<S>
where
    S: ConnectionService,
    S::Future: Send + 'static,
{
    fn call_on(&mut self, request: Request<Body>, info: &ConnectionInfo) -> BoxedFuture<S::Future> {
        Box::pin(self.0.call_on(request, info))
    }

    fn call_plain(
        &mut self,
        request: Request<Body>,
        plain: PlainFields,
        info: &ConnectionInfo,
    ) -> BoxedFuture<S::Future> {
        Box::pin(self.0.call_plain(request, plain, info))
    }

    fn head_lines(future: &BoxedFuture<S::Future>) -> HeadLines {
        S::head_lines(future.as_ref().get_ref())
    }
}
