//! What a lean HTTP/1.1 connection calls: the router, or for appends to a
//! stream the router's [`AppendShortcut`], which answers them the same way
//! without the router's dispatch.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::Router;
use axum::body::Body;
use axum::http::{Request, Response};
use axum::routing::future::RouteFuture;
use tower::Service;

use super::http1::{ConnectionInfo, ConnectionService, with_connection};
use crate::http::{AppendShortcut, HeadLines, PlainFields};

/// The router, with its shortcut when the composition root gave one.
#[derive(Clone)]
pub(super) struct Dispatch {
    router: Router,
    shortcut: Option<AppendShortcut>,
}

impl Dispatch {
    pub(super) fn new(router: Router, shortcut: Option<AppendShortcut>) -> Self {
        Self { router, shortcut }
    }
}

/// A shortcut's answer in progress (boxed, as the router boxes its routes'),
/// with the header lines the head adds to it.
type ShortcutFuture = Pin<Box<dyn Future<Output = (Response<Body>, HeadLines)> + Send>>;

/// The answer of [`Dispatch`] in progress.
// The router's future stays inline, as it was before the shortcut: boxing
// it would add an allocation to every other request.
#[allow(clippy::large_enum_variant)]
pub(super) enum DispatchFuture {
    Router(RouteFuture<Infallible>),
    /// With the head's added lines once answered.
    Shortcut(ShortcutFuture, HeadLines),
}

impl Future for DispatchFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.get_mut() {
            Self::Router(future) => Pin::new(future).poll(cx),
            Self::Shortcut(future, lines) => future.as_mut().poll(cx).map(|(response, added)| {
                *lines = added;
                Ok(response)
            }),
        }
    }
}

impl Service<Request<Body>> for Dispatch {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = DispatchFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Service::<Request<Body>>::poll_ready(&mut self.router, cx)
    }

    /// A request given without its connection goes to the router.
    fn call(&mut self, request: Request<Body>) -> DispatchFuture {
        DispatchFuture::Router(self.router.call(request))
    }
}

impl ConnectionService for Dispatch {
    fn call_on(&mut self, mut request: Request<Body>, info: &ConnectionInfo) -> DispatchFuture {
        if let Some(shortcut) = &self.shortcut
            && shortcut.takes(request.method(), request.uri().path())
        {
            // Only the server's own code reads it: the connection's facts
            // travel as arguments, not as extensions (a map and a box each).
            let future = shortcut.call(request, None, info.peer, info.tls.as_deref());
            return DispatchFuture::Shortcut(Box::pin(future), HeadLines::NONE);
        }
        with_connection(&mut request, info);
        DispatchFuture::Router(self.router.call(request))
    }

    fn call_plain(
        &mut self,
        mut request: Request<Body>,
        plain: PlainFields,
        info: &ConnectionInfo,
    ) -> DispatchFuture {
        if let Some(shortcut) = &self.shortcut
            && shortcut.reads_plain()
            && shortcut.takes(request.method(), request.uri().path())
        {
            let future = shortcut.call(request, Some(plain), info.peer, info.tls.as_deref());
            return DispatchFuture::Shortcut(Box::pin(future), HeadLines::NONE);
        }
        plain.fill(&mut request);
        self.call_on(request, info)
    }

    fn head_lines(future: &DispatchFuture) -> HeadLines {
        match future {
            DispatchFuture::Router(_) => HeadLines::NONE,
            DispatchFuture::Shortcut(_, lines) => *lines,
        }
    }
}
