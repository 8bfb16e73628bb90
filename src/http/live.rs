//! Live reads: long-poll (spec §5.7) and Server-Sent Events (spec §5.8).
//!
//! Both wait on the stream's committed-state signal, never poll storage, and
//! select on the shutdown token so a draining server releases them at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use bytes::Bytes;
use tokio::sync::watch;
use tokio::time::{Instant, Sleep, sleep_until};
use tracing::Instrument;

use super::AppState;
use super::deferred;
use super::names::*;
use super::problem::ApiError;
use super::stream::{CACHEABLE, etag, offset_header, served_read};
use crate::clock;
use crate::engine::{Engine, EngineError, Signal, StreamEntry, resolve_start};
use crate::metrics::event::{
    LiveReader, LongPollTimedOut, ReadBytesSent, ReadMode, ReadServed, SseEventsSent,
};
use crate::protocol::cursor;
use crate::protocol::offset::{Offset, ReadFrom};
use crate::protocol::sse::{self, Control};
use crate::shutdown::ShutdownToken;

/// The cursor for a live response, given the client's echo.
fn cursor_for(client: Option<&str>) -> u64 {
    cursor::next_cursor(clock::unix_secs(), client, fastrand::u64(1..=3600))
}

/// `GET ?live=long-poll`. With `later` (the connection takes deferred
/// answers, see [`deferred`]), a long-poll that has to wait returns a
/// placeholder carrying [`LongPoll::answer`], so that only the long-poll's
/// own state waits.
pub(super) async fn long_poll(
    state: &AppState,
    entry: Arc<StreamEntry>,
    from: ReadFrom,
    client_cursor: Option<String>,
    later: bool,
) -> Result<Response, ApiError> {
    let reader = LiveReader::start(ReadMode::LongPoll);
    ReadServed {
        mode: ReadMode::LongPoll,
    }
    .emit();
    let mut signal = entry.subscribe();
    let snapshot = *signal.borrow_and_update();
    let start = resolve_start(from, entry.first_position(), snapshot.tail);
    let poll = LongPoll {
        _reader: reader,
        engine: state.engine.clone(),
        shutdown: state.shutdown.clone(),
        deadline: Instant::now() + state.settings.long_poll_timeout,
        entry,
        signal,
        snapshot,
        from,
        start,
        client_cursor,
    };
    if later && poll.must_wait() {
        return Ok(deferred::later(async move {
            poll.answer()
                .await
                .unwrap_or_else(IntoResponse::into_response)
        }));
    }
    poll.answer().await
}

/// A long-poll from the moment its start is resolved: what it waits with.
struct LongPoll {
    /// Counts the request in `durable_streams_live_readers{mode="long_poll"}`.
    _reader: LiveReader,
    engine: Engine,
    shutdown: ShutdownToken,
    deadline: Instant,
    entry: Arc<StreamEntry>,
    signal: watch::Receiver<Signal>,
    snapshot: Signal,
    /// What the client asked for (a read from the start follows a trim).
    from: ReadFrom,
    start: u64,
    client_cursor: Option<String>,
}

impl LongPoll {
    /// Whether nothing can be answered before the stream changes.
    fn must_wait(&self) -> bool {
        !self.snapshot.gone && !self.snapshot.closed && self.start >= self.snapshot.tail
    }

    /// The data from the start once there is some; else `204` at the
    /// timeout, at shutdown, or when the stream closes.
    async fn answer(mut self) -> Result<Response, ApiError> {
        let entry = &self.entry;
        loop {
            let snapshot = self.snapshot;
            if snapshot.gone {
                return Err(EngineError::NotFound.into());
            }
            if self.start < snapshot.tail {
                // Boxed: the storage read's future is large, and inline it
                // would be part of every waiting long-poll's state.
                let result = Box::pin(
                    self.engine
                        .read_resolved(entry, self.from, self.start, snapshot),
                )
                .await?;
                let mut response =
                    served_read(entry, &result, ReadMode::LongPoll, etag(entry, &result));
                let out = response.headers_mut();
                out.insert(header::CACHE_CONTROL, HeaderValue::from_static(CACHEABLE));
                if !result.closed {
                    out.insert(
                        STREAM_CURSOR,
                        HeaderValue::from(cursor_for(self.client_cursor.as_deref())),
                    );
                }
                return Ok(response);
            }
            if snapshot.closed {
                return Ok(no_content(snapshot.tail, true, None));
            }
            tokio::select! {
                changed = self.signal.changed() => {
                    if changed.is_err() {
                        return Err(EngineError::NotFound.into());
                    }
                    self.snapshot = *self.signal.borrow_and_update();
                }
                () = sleep_until(self.deadline) => {
                    LongPollTimedOut.emit();
                    break;
                }
                () = self.shutdown.cancelled() => break,
            }
        }
        Ok(no_content(
            self.snapshot.tail,
            false,
            Some(cursor_for(self.client_cursor.as_deref())),
        ))
    }
}

/// A long-poll answer without data: timeout, shutdown, or EOF.
fn no_content(tail: u64, closed: bool, cursor: Option<u64>) -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    let out = response.headers_mut();
    out.insert(STREAM_NEXT_OFFSET, offset_header(tail));
    out.insert(STREAM_UP_TO_DATE, HeaderValue::from_static("true"));
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    if closed {
        out.insert(STREAM_CLOSED, HeaderValue::from_static("true"));
    }
    if let Some(cursor) = cursor {
        out.insert(STREAM_CURSOR, HeaderValue::from(cursor));
    }
    response
}

/// `GET ?live=sse`.
pub(super) async fn sse(
    state: &AppState,
    entry: Arc<StreamEntry>,
    from: ReadFrom,
    client_cursor: Option<String>,
) -> Result<Response, ApiError> {
    let mut signal = entry.subscribe();
    let snapshot = *signal.borrow_and_update();
    let position = resolve_start(from, entry.first_position(), snapshot.tail);
    let base64 = !entry.content_type().is_text_like();
    let now = Instant::now();
    let reconnect_at = state
        .settings
        .sse_reconnect_interval
        .map(|interval| now + interval);
    ReadServed {
        mode: ReadMode::Sse,
    }
    .emit();
    let session = SseSession {
        _reader: LiveReader::start(ReadMode::Sse),
        fanout: entry.attachment::<Fanout>(),
        engine: state.engine.clone(),
        json: entry.content_type().is_json(),
        entry,
        signal,
        from,
        position,
        cursor: cursor_for(client_cursor.as_deref()),
        base64,
        keepalive: state.settings.sse_keepalive_interval,
        wakeups: Wakeups::new(
            next_wake(now + state.settings.sse_keepalive_interval, reconnect_at),
            state.shutdown.clone(),
        ),
        last_sent: now,
        reconnect_at,
        span: traced(tracing::Span::current()),
        announced: false,
        finished: false,
    };
    let stream = futures_util::stream::unfold(session, |mut session| async move {
        let chunk = session.next_chunk().await?;
        Some((Ok::<Bytes, std::convert::Infallible>(chunk), session))
    });
    let mut response = Response::new(Body::from_stream(stream));
    response.extensions_mut().insert(LiveResponse);
    let out = response.headers_mut();
    out.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    out.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    if base64 {
        out.insert(STREAM_SSE_DATA_ENCODING, HeaderValue::from_static("base64"));
    }
    Ok(response)
}

/// When an SSE session's timer fires next: at its keep-alive, or at its
/// reconnect when that comes first.
fn next_wake(keepalive: Instant, reconnect_at: Option<Instant>) -> Instant {
    reconnect_at.map_or(keepalive, |at| at.min(keepalive))
}

/// Marks a response whose body follows a stream live (SSE), so that the
/// connection layer can serve it apart from request/response traffic.
#[derive(Clone, Copy, Debug)]
pub(crate) struct LiveResponse;

/// The state of one SSE connection, advanced one chunk of output at a time.
struct SseSession {
    /// Counts the connection in `durable_streams_live_readers{mode="sse"}`.
    _reader: LiveReader,
    fanout: Arc<Fanout>,
    engine: Engine,
    entry: Arc<StreamEntry>,
    signal: watch::Receiver<Signal>,
    /// Where the client asked to start, until the first data is sent.
    from: ReadFrom,
    position: u64,
    cursor: u64,
    json: bool,
    base64: bool,
    keepalive: Duration,
    /// The session's timer and shutdown waiter.
    wakeups: Wakeups,
    /// When output was last produced.
    last_sent: Instant,
    /// When the response ends (`sse_reconnect_interval`), when set.
    reconnect_at: Option<Instant>,
    /// The request's span: the body outlives the handler, and its storage
    /// reads still belong to the request. Entered around those reads only,
    /// not on every wake-up (most deliveries send a shared chunk). `None`
    /// when the request is not traced (see [`traced`]).
    span: Option<Box<tracing::Span>>,
    /// Whether a control event has told the client where it stands.
    announced: bool,
    finished: bool,
}

/// `span` when it records anything, boxed: a disabled span still takes 40
/// bytes, and an SSE session keeps it for its whole life (10,000
/// subscribers, 0.4 MB), while most requests are not traced.
fn traced(span: tracing::Span) -> Option<Box<tracing::Span>> {
    (!span.is_disabled()).then(|| Box::new(span))
}

impl SseSession {
    /// The request's span, or a disabled one.
    fn span(&self) -> tracing::Span {
        self.span
            .as_deref()
            .map_or_else(tracing::Span::none, Clone::clone)
    }

    /// The cursor for the next control event: never below one already sent.
    fn cursor(&mut self) -> u64 {
        self.cursor = self
            .cursor
            .max(cursor::current_interval(clock::unix_secs()));
        self.cursor
    }

    fn control(&mut self, out: &mut Vec<u8>, up_to_date: bool, closed: bool) {
        SseEventsSent { count: 1 }.emit();
        let cursor = if closed { None } else { Some(self.cursor()) };
        sse::push_control_event(
            out,
            &Control {
                next_offset: Offset(self.position),
                cursor,
                up_to_date,
                closed,
            },
        );
    }

    /// The next bytes to send, or `None` to end the response.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        let chunk = self.produce().await;
        if chunk.is_some() {
            self.last_sent = Instant::now();
        }
        chunk
    }

    async fn produce(&mut self) -> Option<Bytes> {
        if self.finished {
            return None;
        }
        loop {
            let snapshot = *self.signal.borrow_and_update();
            if snapshot.gone {
                self.finished = true;
                return None;
            }
            if self.position < snapshot.tail {
                return self.data_chunk(snapshot).await;
            }
            let mut out = Vec::new();
            if snapshot.closed {
                self.control(&mut out, true, true);
                self.finished = true;
                return Some(Bytes::from(out));
            }
            if !self.announced {
                self.control(&mut out, true, false);
                self.announced = true;
                return Some(Bytes::from(out));
            }
            if self.wakeups.shutdown.is_cancelled() {
                // A last position report, never `streamClosed`: the stream
                // goes on, only this server is leaving.
                self.control(&mut out, true, false);
                self.finished = true;
                return Some(Bytes::from(out));
            }
            match self.wait().await {
                Woke::Signal(Ok(())) | Woke::Shutdown => {}
                Woke::Signal(Err(())) => {
                    self.finished = true;
                    return None;
                }
                Woke::Timer => {
                    let now = Instant::now();
                    if self.reconnect_at.is_some_and(|at| now >= at) {
                        self.finished = true;
                        return None;
                    }
                    let due = self.last_sent + self.keepalive;
                    if now < due {
                        // Output went out since it was set: not due yet.
                        self.wakeups.reset(next_wake(due, self.reconnect_at));
                        continue;
                    }
                    self.wakeups
                        .reset(next_wake(now + self.keepalive, self.reconnect_at));
                    self.control(&mut out, true, false);
                    return Some(Bytes::from(out));
                }
            }
        }
    }

    /// Waits for the stream to change, the timer to fire or the server to
    /// drain.
    async fn wait(&mut self) -> Woke {
        let wakeups = &mut self.wakeups;
        let mut changed = std::pin::pin!(self.signal.changed());
        std::future::poll_fn(|cx| {
            if let Poll::Ready(result) = changed.as_mut().poll(cx) {
                return Poll::Ready(Woke::Signal(result.map_err(drop)));
            }
            wakeups.poll(cx)
        })
        .await
    }

    /// The data from the session's position up to `snapshot`'s tail, as
    /// one data event followed by its control event.
    ///
    /// Subscribers of a stream mostly wait at the same position and wake on
    /// the same append: the first one to get there reads and encodes, and
    /// the others send the same bytes ([`Fanout`]). Output is a function of
    /// the key (position, committed tail, closed flag, cursor), so a shared
    /// chunk is exactly what this session would have encoded.
    async fn data_chunk(&mut self, snapshot: Signal) -> Option<Bytes> {
        let key = ChunkKey {
            start: self.position,
            tail: snapshot.tail,
            closed: snapshot.closed,
            cursor: self.cursor(),
        };
        if let Some(shared) = self.fanout.get(&key) {
            SseEventsSent {
                count: shared.events,
            }
            .emit();
            ReadBytesSent {
                mode: ReadMode::Sse,
                bytes: shared.payload,
            }
            .emit();
            self.position = shared.next;
            self.from = ReadFrom::At(Offset(shared.next));
            self.finished = shared.finished;
            self.announced = true;
            return Some(shared.bytes);
        }
        // Boxed: most deliveries send a shared chunk, and inline the read's
        // future would be part of every subscriber's body for its life.
        let read = self
            .engine
            .read_resolved(&self.entry, self.from, self.position, snapshot)
            .instrument(self.span());
        let result = match Box::pin(read).await {
            Ok(result) => result,
            Err(error) => {
                tracing::warn!(parent: &self.span(), error = %error, "SSE read failed; ending the stream");
                self.finished = true;
                return None;
            }
        };
        // Later than asked only when a read from the start followed a trim.
        self.position = result.start;
        self.from = ReadFrom::At(Offset(result.start));
        // The whole read as one data event and its control event: a
        // subscriber that fell behind gets its backlog in one piece, not an
        // event pair per message (fewer bytes to write, fewer to parse).
        let events = if result.records.is_empty() { 0 } else { 2 };
        SseEventsSent { count: events }.emit();
        ReadBytesSent {
            mode: ReadMode::Sse,
            bytes: result.len(),
        }
        .emit();
        // Payload plus its framing, and about 100 bytes for the control event.
        let mut out = Vec::with_capacity(result.len() * 4 / 3 + 160);
        if events > 0 {
            self.push_data(&mut out, &result.records);
            self.position += result.len() as u64;
            let at_tail = result.up_to_date;
            let closed = at_tail && result.closed;
            self.control_with(&mut out, key.cursor, at_tail, closed);
            if closed {
                self.finished = true;
            }
        }
        self.position = self.position.max(result.next);
        self.announced = true;
        let bytes = Bytes::from(out);
        if result.start != key.start {
            // Not what a session at `key.start` would send: it is gone.
            return Some(bytes);
        }
        self.fanout.put(
            key,
            SharedChunk {
                bytes: bytes.clone(),
                next: self.position,
                finished: self.finished,
                events,
                payload: result.len(),
            },
        );
        Some(bytes)
    }

    fn control_with(&self, out: &mut Vec<u8>, cursor: u64, up_to_date: bool, closed: bool) {
        sse::push_control_event(
            out,
            &Control {
                next_offset: Offset(self.position),
                cursor: (!closed).then_some(cursor),
                up_to_date,
                closed,
            },
        );
    }

    /// One data event carrying `records`: for JSON one array of all their
    /// messages, else their bytes one after the other (base64 encoded as
    /// one, for binary streams).
    fn push_data(&self, out: &mut Vec<u8>, records: &[Bytes]) {
        if self.json {
            let total = records.iter().map(Bytes::len).sum();
            let wrapped =
                crate::protocol::json::wrap_array(records.iter().map(Bytes::as_ref), total);
            sse::push_data_event(out, &wrapped);
        } else if self.base64 {
            let joined = records.concat();
            let encoded = base64::engine::general_purpose::STANDARD.encode(joined);
            sse::push_data_event(out, encoded.as_bytes());
        } else {
            sse::push_data_event_parts(out, records.iter().map(Bytes::as_ref));
        }
    }
}

/// An SSE session's timer and shutdown waiter.
///
/// An append to a stream with thousands of subscribers wakes them all, and
/// most of them send and wait again within the same wake-up. Both are kept
/// for the session's life, and once polled they stay registered with the
/// task's waker: they are polled again only when the waker changed, the
/// timer fired, or the server drains, not on every wake-up (polling the
/// shutdown waiter takes a lock every session shares).
struct Wakeups {
    /// The one timer, for the keep-alive and the reconnect: fires at the
    /// earliest keep-alive interval after the last output or at the
    /// reconnect, whichever comes first. Moved only when it fires, not on
    /// every send.
    timer: Pin<Box<Sleep>>,
    /// When the timer is set to fire. Kept here, beside the session, so
    /// that a wake-up before it is told apart without loading the boxed
    /// timer (one cache miss per delivery at 10,000 subscribers).
    timer_at: Instant,
    /// Resolves when the server drains.
    shutdown_wait: Pin<Box<dyn Future<Output = ()> + Send>>,
    shutdown: ShutdownToken,
    /// The waker both were last polled with, while both are registered.
    armed: Option<Waker>,
}

impl Wakeups {
    fn new(timer_at: Instant, shutdown: ShutdownToken) -> Self {
        Self {
            timer: Box::pin(sleep_until(timer_at)),
            timer_at,
            shutdown_wait: Box::pin(shutdown.clone().cancelled_owned()),
            shutdown,
            armed: None,
        }
    }

    /// Moves the timer to fire at `at`.
    fn reset(&mut self, at: Instant) {
        self.timer_at = at;
        self.timer.as_mut().reset(at);
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<Woke> {
        let armed = self
            .armed
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()));
        // A timer fires no earlier than its deadline: before it, a wake-up
        // came from elsewhere and the registered timer need not be polled.
        let due = !armed || Instant::now() >= self.timer_at;
        if due && self.timer.as_mut().poll(cx).is_ready() {
            // Fired: it registers again when polled after its reset.
            self.armed = None;
            return Poll::Ready(Woke::Timer);
        }
        // Polled only until it resolves: the session ends at the next
        // check of the token.
        if (!armed || self.shutdown.is_cancelled())
            && self.shutdown_wait.as_mut().poll(cx).is_ready()
        {
            return Poll::Ready(Woke::Shutdown);
        }
        if !armed {
            self.armed = Some(cx.waker().clone());
        }
        Poll::Pending
    }
}

/// What ended an SSE session's wait.
enum Woke {
    /// The stream changed (`Err`: its channel is gone).
    Signal(Result<(), ()>),
    Timer,
    Shutdown,
}

/// What determines an encoded chunk of SSE data events.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ChunkKey {
    start: u64,
    tail: u64,
    closed: bool,
    cursor: u64,
}

/// An encoded chunk and where it leaves the session.
#[derive(Clone, Debug)]
struct SharedChunk {
    bytes: Bytes,
    next: u64,
    finished: bool,
    /// SSE events in `bytes` (data and control), for the metrics.
    events: usize,
    /// Payload bytes in `bytes`, for the metrics.
    payload: usize,
}

/// How many recent chunks a stream's [`Fanout`] keeps. The live runtime's
/// workers poll subscribers side by side, and those a worker takes in one
/// batch can stand at another position than the other worker's: with one
/// chunk kept they replaced each other's, and one delivery in ten read and
/// encoded again at 10,000 subscribers.
const FANOUT_CHUNKS: usize = 4;

/// The last encoded chunks of one stream instance, shared by its SSE
/// sessions, so an append fanned out to N subscribers is read and encoded
/// once and handed to all of them as the same [`Bytes`]. Kept on the
/// stream's entry ([`StreamEntry::attachment`]), so it lives exactly as
/// long as the instance.
#[derive(Debug, Default)]
struct Fanout {
    recent: Mutex<Recent>,
}

/// The chunks a [`Fanout`] keeps, the oldest replaced first.
#[derive(Debug, Default)]
struct Recent {
    chunks: [Option<(ChunkKey, SharedChunk)>; FANOUT_CHUNKS],
    next: usize,
}

impl Fanout {
    fn get(&self, key: &ChunkKey) -> Option<SharedChunk> {
        let recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        recent.chunks.iter().find_map(|kept| match kept {
            Some((cached, chunk)) if cached == key => Some(chunk.clone()),
            _ => None,
        })
    }

    fn put(&self, key: ChunkKey, chunk: SharedChunk) {
        let mut recent = self.recent.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = &mut *recent;
        if let Some(kept) = recent
            .chunks
            .iter_mut()
            .find(|kept| kept.as_ref().is_some_and(|(cached, _)| *cached == key))
        {
            // Another session encoded the same chunk meanwhile.
            *kept = Some((key, chunk));
            return;
        }
        recent.chunks[recent.next] = Some((key, chunk));
        recent.next = (recent.next + 1) % FANOUT_CHUNKS;
    }
}

#[cfg(test)]
#[path = "live_tests.rs"]
mod tests;
