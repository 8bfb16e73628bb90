//! A lean HTTP/1.1 server connection: serves a tower `Service` (the axum
//! `Router`) on one socket, plain or TLS, holding buffers only while there
//! is something in them.
//!
//! A connection waiting for a request, or streaming a response that has
//! nothing to send (an SSE or long-poll reader), keeps no read or write
//! buffer: bytes are read into a stack buffer and copied into a heap buffer
//! sized to what arrived, the request head is parsed from there and its
//! header values share that allocation, and the response head buffer is
//! freed once written. What remains is the socket, the handler's state and
//! this small state machine. A long-poll that waits for data answers with
//! a placeholder ([`crate::http::deferred`]): the router's futures are
//! dropped and only the long-poll's own small future waits here.
//!
//! # Layout
//! - this file: [`Connection`], the per-connection state machine (read a
//!   head, run the service while feeding its body, write the response,
//!   keep alive or close), and its settings.
//! - `head`: parsing request heads and the framing rules against request
//!   smuggling.
//! - `body`: request body decoding (`Content-Length`, chunked) and the
//!   body handed to handlers.
//! - `encode`: response heads, body framing, `Date`.
//! - `respond`: the response being written and its queued bytes.
//! - `close`: shutting a connection down and lingering.
//! - `read`: socket reads through a stack buffer.
//! - `service`: what a connection hands its requests to.
//!
//! # Behaviour
//! - Keep-alive and pipelining: requests are answered in order, one at a
//!   time; bytes of later requests wait in the read buffer.
//! - Client disconnects are noticed while a handler waits or a response
//!   streams (a read returns end of file), and the handler's future or
//!   body is dropped, as hyper does.
//! - A head must arrive within the header-read timeout (on a new
//!   connection from the accept, on a kept-alive one from its first byte),
//!   else `408` and close.
//! - Refused heads get an `application/problem+json` answer (`400`,
//!   `414`, `431`, `501`) and the connection closes after it.
//! - Draining ([`super::drain::Drain`]): idle connections close at once;
//!   the response in flight finishes with `Connection: close`.

mod body;
mod boxed;
mod close;
mod encode;
mod head;
mod read;
mod respond;
mod service;
mod syntax;

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::response::IntoResponse;
use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode, Version};
use http_body::Body as _;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Sleep, sleep};
use tower::Service;

pub(crate) use body::BodyError;
pub(crate) use boxed::Boxed;
pub(crate) use head::HeadLimits;

use self::body::{BodyTap, Decoded, Decoder, IncomingBody};
use self::close::Closing;
use self::encode::{BodyLength, ChunkLine, Exchange, Framing};
use self::head::{BodyFraming, HeadScanner, RequestHead};
use self::read::poll_read_some;
use self::respond::{Outgoing, Respond};
pub(crate) use self::service::{ConnectionInfo, ConnectionService, with_connection};
use super::drain::DrainWatch;
use crate::http::deferred::{self, Wait};
use crate::http::problem::ApiError;
use crate::http::{HeadLines, LiveResponse};

/// The interim answer to `Expect: 100-continue`.
const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

/// Limits and timeouts of the HTTP/1.1 connections.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Http1Settings {
    /// Size limits of request heads.
    pub(crate) limits: HeadLimits,
    /// Time allowed for a request head to arrive completely.
    pub(crate) header_read_timeout: Duration,
}

impl Default for Http1Settings {
    fn default() -> Self {
        Self {
            limits: HeadLimits::default(),
            header_read_timeout: Duration::from_secs(30),
        }
    }
}

/// One HTTP/1.1 connection, served until the client leaves, the response
/// says close, or the drain asks it to; a future resolving when the
/// connection is closed.
pub(crate) struct Connection<I, S>
where
    S: Service<Request<Body>>,
{
    io: I,
    service: S,
    info: ConnectionInfo,
    settings: Http1Settings,
    drain: DrainWatch,
    /// Bytes read and not consumed yet; empty (no allocation) when idle.
    read_buf: BytesMut,
    /// Runs while a request head is awaited (see the module docs).
    header_timer: Option<Pin<Box<Sleep>>>,
    scanner: HeadScanner,
    requests: u64,
    exchange: Exchange,
    inbound: Inbound,
    phase: Phase<S::Future>,
    /// The response just started follows a stream live ([`LiveResponse`]).
    live: bool,
    /// What the service said to add to its answer's head
    /// ([`ConnectionService::head_lines`]).
    head_lines: HeadLines,
}

/// The request body still on the wire.
struct Inbound {
    decoder: Decoder,
    tap: Option<BodyTap>,
    /// `100 Continue` is owed before the first body byte is read; this
    /// much of it has been written.
    expect_continue: Option<usize>,
}

impl Inbound {
    const NONE: Inbound = Inbound {
        decoder: Decoder::Done,
        tap: None,
        expect_continue: None,
    };
}

enum Phase<F> {
    /// Waiting for (or reading) a request head.
    Head,
    /// The service works on the request (and may read its body).
    Service(F),
    /// The service has answered with a placeholder ([`deferred`]): its
    /// futures are gone, and the answer comes from this one alone.
    Later(Wait),
    /// Writing the response.
    Respond(Respond),
    /// Shutting the connection down.
    Close(Closing),
    /// Finished.
    Done,
}

/// What a step of the state machine asks for.
enum Step {
    /// Run the machine again: the phase changed or progress was made.
    Again,
    /// Nothing to do until woken.
    Wait,
}

/// What feeding the request body did.
enum Feed {
    /// The reader got something: poll the service again.
    Fed,
    /// Waiting for the socket.
    Wait,
    /// Nobody asks for body bytes.
    Idle,
}

impl<I, S> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: ConnectionService,
    S::Future: Unpin,
{
    /// Serves `io` with `service`.
    pub(crate) fn new(
        io: I,
        service: S,
        info: ConnectionInfo,
        settings: Http1Settings,
        drain: DrainWatch,
    ) -> Self {
        Self {
            io,
            service,
            info,
            settings,
            drain,
            read_buf: BytesMut::new(),
            header_timer: None,
            scanner: HeadScanner::default(),
            requests: 0,
            exchange: Exchange {
                head_request: false,
                http10: false,
                keep_alive: true,
            },
            inbound: Inbound::NONE,
            phase: Phase::Head,
            live: false,
            head_lines: HeadLines::NONE,
        }
    }

    fn step(&mut self, cx: &mut Context<'_>) -> Step {
        match self.phase {
            Phase::Head => self.poll_head(cx),
            Phase::Service(_) | Phase::Later(_) => self.poll_service(cx),
            Phase::Respond(_) => self.poll_respond(cx),
            Phase::Close(_) => self.poll_close(cx),
            Phase::Done => Step::Wait,
        }
    }

    /// Frees the read buffer once everything in it is consumed.
    fn release_read_buf(&mut self) {
        if self.read_buf.is_empty() && self.read_buf.capacity() > 0 {
            self.read_buf = BytesMut::new();
        }
    }

    fn poll_head(&mut self, cx: &mut Context<'_>) -> Step {
        if self.service.poll_ready(cx).is_pending() {
            return Step::Wait;
        }
        loop {
            if !self.read_buf.is_empty() {
                match self.scanner.next(&mut self.read_buf, self.settings.limits) {
                    Ok(Some(head)) => {
                        self.header_timer = None;
                        self.start(head);
                        return Step::Again;
                    }
                    Ok(None) => {}
                    Err(error) => {
                        self.header_timer = None;
                        tracing::debug!(peer = %self.info.peer, ?error, "refused a request head");
                        let (status, code, detail) = error.answer();
                        self.answer_without_request(status, code, detail);
                        return Step::Again;
                    }
                }
            }
            match poll_read_some(&mut self.io, &mut self.read_buf, cx) {
                Poll::Ready(Ok(0) | Err(_)) => {
                    self.phase = Phase::Done;
                    return Step::Again;
                }
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => break,
            }
        }
        self.release_read_buf();
        if self.read_buf.is_empty() && self.drain.poll_started(cx).is_ready() {
            self.phase = Phase::Close(Closing::quiet());
            return Step::Again;
        }
        if self.requests == 0 || !self.read_buf.is_empty() {
            let timeout = self.settings.header_read_timeout;
            let timer = self
                .header_timer
                .get_or_insert_with(|| Box::pin(sleep(timeout)));
            if timer.as_mut().poll(cx).is_ready() {
                self.header_timer = None;
                if self.read_buf.is_empty() {
                    // Nothing was ever sent: just close.
                    self.phase = Phase::Close(Closing::quiet());
                } else {
                    self.answer_without_request(
                        StatusCode::REQUEST_TIMEOUT,
                        "REQUEST_TIMEOUT",
                        "the request head did not arrive in time",
                    );
                }
                return Step::Again;
            }
        }
        Step::Wait
    }

    /// Hands a parsed request to the service.
    fn start(&mut self, head: RequestHead) {
        let RequestHead {
            method,
            uri,
            version,
            headers,
            mut plain,
            body,
            keep_alive,
            expect_continue,
        } = head;
        self.exchange = Exchange {
            head_request: method == Method::HEAD,
            http10: version == Version::HTTP_10,
            keep_alive,
        };
        let buffered = self.read_buf.len() as u64;
        let (body, decoder, tap) = match body {
            BodyFraming::Empty => (Body::empty(), Decoder::Done, None),
            // The whole body is here already (the usual small append).
            BodyFraming::Length(length) if length <= buffered => {
                let data = self.read_buf.split_to(length as usize).freeze();
                match &mut plain {
                    // Kept as it is for the append: a `Body` boxes it.
                    Some(plain) => {
                        plain.set_body(data);
                        (Body::empty(), Decoder::Done, None)
                    }
                    None => (Body::from(data), Decoder::Done, None),
                }
            }
            BodyFraming::Length(length) => {
                let (body, tap) = IncomingBody::channel(Some(length));
                (Body::new(body), Decoder::Length(length), Some(tap))
            }
            BodyFraming::Chunked => {
                let (body, tap) = IncomingBody::channel(None);
                (Body::new(body), Decoder::chunked(), Some(tap))
            }
        };
        self.release_read_buf();
        self.inbound = Inbound {
            expect_continue: (expect_continue && tap.is_some()).then_some(0),
            decoder,
            tap,
        };
        let mut request = Request::new(body);
        *request.method_mut() = method;
        *request.uri_mut() = uri;
        *request.version_mut() = version;
        *request.headers_mut() = headers;
        self.requests += 1;
        self.phase = Phase::Service(match plain {
            Some(plain) => self.service.call_plain(request, plain, &self.info),
            None => self.service.call_on(request, &self.info),
        });
    }

    /// Answers a head that never became a request, then closes.
    fn answer_without_request(&mut self, status: StatusCode, code: &'static str, detail: &str) {
        self.exchange = Exchange {
            head_request: false,
            http10: false,
            keep_alive: false,
        };
        self.inbound = Inbound::NONE;
        let mut response = ApiError::new(status, code, detail).into_response();
        response.headers_mut().insert(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        );
        self.respond(response);
    }

    fn poll_service(&mut self, cx: &mut Context<'_>) -> Step {
        loop {
            let polled = match &mut self.phase {
                Phase::Service(future) => {
                    Pin::new(&mut *future).poll(cx).map(|result| match result {
                        Ok(response) => {
                            self.head_lines = S::head_lines(future);
                            response
                        }
                        Err(never) => match never {},
                    })
                }
                Phase::Later(wait) => wait.as_mut().poll(cx),
                _ => return Step::Again,
            };
            if let Poll::Ready(mut response) = polled {
                match deferred::take(&mut response) {
                    Some(wait) => self.phase = Phase::Later(wait),
                    None => self.respond(response),
                }
                return Step::Again;
            }
            match self.feed_body(cx) {
                Feed::Fed => {}
                Feed::Wait => return Step::Wait,
                Feed::Idle => break,
            }
        }
        if self.peer_left(cx) {
            // Dropping the handler's future: its request counts as 499.
            self.phase = Phase::Done;
            return Step::Again;
        }
        Step::Wait
    }

    /// Decodes request body bytes for a reader that waits for them,
    /// reading the socket as needed.
    fn feed_body(&mut self, cx: &mut Context<'_>) -> Feed {
        let Some(tap) = &self.inbound.tap else {
            return Feed::Idle;
        };
        if self.inbound.decoder.is_done() || tap.abandoned() || !tap.wanted(cx) {
            return Feed::Idle;
        }
        if let Some(sent) = &mut self.inbound.expect_continue {
            while *sent < CONTINUE.len() {
                match Pin::new(&mut self.io).poll_write(cx, &CONTINUE[*sent..]) {
                    Poll::Ready(Ok(n)) if n > 0 => *sent += n,
                    Poll::Ready(_) => {
                        self.exchange.keep_alive = false;
                        self.inbound.decoder = Decoder::Done;
                        tap.fail(BodyError::Incomplete, cx);
                        return Feed::Fed;
                    }
                    Poll::Pending => return Feed::Wait,
                }
            }
            match Pin::new(&mut self.io).poll_flush(cx) {
                Poll::Ready(_) => self.inbound.expect_continue = None,
                Poll::Pending => return Feed::Wait,
            }
        }
        loop {
            match self.inbound.decoder.decode(&mut self.read_buf) {
                Ok(Decoded::Data(data)) => {
                    tap.deliver(data, cx);
                    if self.inbound.decoder.is_done() {
                        tap.finish(cx);
                    }
                    break;
                }
                Ok(Decoded::End) => {
                    tap.finish(cx);
                    break;
                }
                Ok(Decoded::More) => match poll_read_some(&mut self.io, &mut self.read_buf, cx) {
                    Poll::Ready(Ok(n)) if n > 0 => {}
                    Poll::Ready(_) => {
                        self.fail_body(BodyError::Incomplete, cx);
                        return Feed::Fed;
                    }
                    Poll::Pending => return Feed::Wait,
                },
                Err(error) => {
                    self.fail_body(error, cx);
                    return Feed::Fed;
                }
            }
        }
        self.release_read_buf();
        Feed::Fed
    }

    /// The body cannot be read any further: the reader gets `error` and the
    /// connection closes after the response.
    fn fail_body(&mut self, error: BodyError, cx: &Context<'_>) {
        tracing::debug!(peer = %self.info.peer, %error, "request body failed");
        if let Some(tap) = &self.inbound.tap {
            tap.fail(error, cx);
        }
        self.inbound.decoder = Decoder::Done;
        self.exchange.keep_alive = false;
    }

    /// Whether the client has closed the connection (or it broke) while
    /// the request is being answered. Bytes of pipelined requests are kept;
    /// with a full buffer the question waits.
    fn peer_left(&mut self, cx: &mut Context<'_>) -> bool {
        if !self.inbound.decoder.is_done() {
            // The unread body is on the wire, not ours to read here.
            return false;
        }
        while self.read_buf.len() < self.settings.limits.max_head_bytes {
            match poll_read_some(&mut self.io, &mut self.read_buf, cx) {
                Poll::Ready(Ok(0) | Err(_)) => return true,
                Poll::Ready(Ok(_)) => {}
                Poll::Pending => return false,
            }
        }
        false
    }

    /// Turns `response` into a head and a body to send.
    fn respond(&mut self, response: Response<Body>) {
        let lines = std::mem::take(&mut self.head_lines);
        let (parts, body) = response.into_parts();
        self.live = parts.extensions.get::<LiveResponse>().is_some();
        if self.drain.is_started() || !self.inbound.decoder.is_done() {
            self.exchange.keep_alive = false;
        }
        let length = if body.is_end_stream() {
            BodyLength::Empty
        } else {
            body.size_hint()
                .exact()
                .map_or(BodyLength::Unknown, BodyLength::Exact)
        };
        let mut head = Vec::with_capacity(encode::capacity(&parts.headers) + lines.capacity());
        let framing = encode::head(
            &mut head,
            parts.status,
            &parts.headers,
            &lines,
            length,
            &mut self.exchange,
        );
        let (body, finished) = if framing == Framing::None {
            (Body::empty(), true)
        } else {
            (body, false)
        };
        self.phase = Phase::Respond(Respond {
            body,
            framing,
            remaining: match framing {
                Framing::Length(length) => length,
                _ => 0,
            },
            out: Outgoing {
                head,
                head_sent: 0,
                line: ChunkLine::empty(),
                data: Bytes::new(),
                tail: b"",
            },
            finished: finished || framing == Framing::Length(0),
            needs_flush: false,
        });
    }

    fn poll_respond(&mut self, cx: &mut Context<'_>) -> Step {
        loop {
            let Phase::Respond(respond) = &mut self.phase else {
                return Step::Again;
            };
            if !respond.finished && respond.out.body_part_sent() {
                match Pin::new(&mut respond.body).poll_frame(cx) {
                    Poll::Ready(Some(Ok(frame))) => {
                        if let Ok(data) = frame.into_data()
                            && respond.stage(data, &mut self.exchange).is_err()
                        {
                            tracing::debug!(peer = %self.info.peer, "response body longer than its Content-Length");
                            self.phase = Phase::Done;
                            return Step::Again;
                        }
                        continue;
                    }
                    Poll::Ready(None) => {
                        if respond.end().is_err() {
                            tracing::debug!(peer = %self.info.peer, "response body shorter than its Content-Length");
                            self.phase = Phase::Done;
                            return Step::Again;
                        }
                        continue;
                    }
                    Poll::Ready(Some(Err(error))) => {
                        tracing::debug!(peer = %self.info.peer, %error, "response body failed");
                        self.phase = Phase::Done;
                        return Step::Again;
                    }
                    Poll::Pending => {}
                }
            }
            if !respond.out.is_empty() {
                match respond.out.poll_write(&mut self.io, cx) {
                    Poll::Ready(Ok(())) => {
                        respond.needs_flush = true;
                        continue;
                    }
                    Poll::Ready(Err(_)) => {
                        self.phase = Phase::Done;
                        return Step::Again;
                    }
                    Poll::Pending => return Step::Wait,
                }
            }
            if respond.needs_flush {
                match Pin::new(&mut self.io).poll_flush(cx) {
                    Poll::Ready(Ok(())) => respond.needs_flush = false,
                    Poll::Ready(Err(_)) => {
                        self.phase = Phase::Done;
                        return Step::Again;
                    }
                    Poll::Pending => return Step::Wait,
                }
            }
            if respond.finished {
                return self.end_exchange();
            }
            // The body has nothing to send: watch for the client leaving.
            if self.peer_left(cx) {
                self.phase = Phase::Done;
                return Step::Again;
            }
            return Step::Wait;
        }
    }

    /// The response is out: next request, or close.
    fn end_exchange(&mut self) -> Step {
        let unread = !self.inbound.decoder.is_done() || !self.read_buf.is_empty();
        self.inbound = Inbound::NONE;
        if self.exchange.keep_alive && !self.drain.is_started() {
            self.phase = Phase::Head;
        } else {
            self.phase = Phase::Close(Closing::lingering(unread));
        }
        self.release_read_buf();
        Step::Again
    }
}

impl<I, S> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: ConnectionService,
    S::Future: Unpin,
{
    /// Serves the connection like polling it as a future, but stops with
    /// `true` when a response that follows a stream live is about to be
    /// written (before its head), so the caller can move the connection
    /// elsewhere and poll it there as a future. `false` when it closed.
    pub(crate) fn poll_until_live(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        self.drive(cx, true)
    }

    fn drive(&mut self, cx: &mut Context<'_>, stop_when_live: bool) -> Poll<bool> {
        loop {
            if let Phase::Done = self.phase {
                return Poll::Ready(false);
            }
            if stop_when_live && std::mem::take(&mut self.live) {
                return Poll::Ready(true);
            }
            match self.step(cx) {
                Step::Again => {}
                Step::Wait if matches!(self.phase, Phase::Done) => return Poll::Ready(false),
                Step::Wait => return Poll::Pending,
            }
        }
    }
}

impl<I, S> Future for Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: ConnectionService + Unpin,
    S::Future: Unpin,
{
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        self.get_mut().drive(cx, false).map(|_| ())
    }
}
