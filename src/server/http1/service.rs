//! What a connection hands its requests to ([`ConnectionService`]), and
//! what it tells about itself ([`ConnectionInfo`]).

use std::convert::Infallible;
use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::ConnectInfo;
use http::{Request, Response};
use tower::Service;

use crate::client::TlsSession;
use crate::http::deferred::TakesLater;
use crate::http::{HeadLines, PlainFields};

/// The service a connection hands its requests to.
pub(crate) trait ConnectionService:
    Service<Request<Body>, Response = Response<Body>, Error = Infallible>
{
    /// Answers `request`, which arrived on the connection `info` describes
    /// and carries no extensions yet: a request that may reach other code
    /// than the server's own gets them from [`with_connection`].
    fn call_on(&mut self, request: Request<Body>, info: &ConnectionInfo) -> Self::Future;

    /// [`call_on`](Self::call_on) for a request whose fields are all plain:
    /// they come as `plain`, and `request`'s map is empty (and its body,
    /// when `plain` holds it). By default they go into the request.
    fn call_plain(
        &mut self,
        mut request: Request<Body>,
        plain: PlainFields,
        info: &ConnectionInfo,
    ) -> Self::Future {
        plain.fill(&mut request);
        self.call_on(request, info)
    }

    /// Header lines (each ending in CRLF) to write into the head of the
    /// response `future` answered, besides the response's own fields.
    fn head_lines(_future: &Self::Future) -> HeadLines {
        HeadLines::NONE
    }
}

/// Gives `request` the extensions of the connection `info` describes:
/// `ConnectInfo<SocketAddr>`, the TLS session, and [`TakesLater`].
pub(crate) fn with_connection(request: &mut Request<Body>, info: &ConnectionInfo) {
    let extensions = request.extensions_mut();
    extensions.insert(ConnectInfo(info.peer));
    extensions.insert(TakesLater);
    if let Some(tls) = &info.tls {
        extensions.insert(TlsSession::clone(tls));
    }
}

/// What each request of a connection carries as extensions.
#[derive(Clone, Debug)]
pub(crate) struct ConnectionInfo {
    /// The TCP peer (`ConnectInfo<SocketAddr>`).
    pub peer: SocketAddr,
    /// The TLS session, on TLS connections (boxed: most connections are
    /// plain, and every byte here is kept per connection).
    pub tls: Option<Box<TlsSession>>,
}
