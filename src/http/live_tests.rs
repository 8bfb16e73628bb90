//! Live reads against a store whose head moved before the engine heard.

use std::sync::Arc;
use std::time::Duration;

use axum::http::StatusCode;
use axum::response::IntoResponse;
use futures_util::StreamExt;

use super::*;
use crate::engine::testing::trimmed_unheard;
use crate::http::limits::InputLimits;
use crate::http::{Cors, HttpSettings};
use crate::protocol::name::NameLimits;
use crate::proxy::ProxyPolicy;
use crate::storage::InMemoryStorage;

const CHUNK: u64 = 4096;
static BLOCK: [u8; 4096] = [b'x'; 4096];

/// Settings for handlers called directly (built here: `http` does not
/// depend on the configuration layer).
fn test_settings() -> HttpSettings {
    HttpSettings {
        base_path: String::new(),
        max_body_bytes: 1 << 20,
        long_poll_timeout: Duration::from_secs(30),
        sse_reconnect_interval: None,
        sse_keepalive_interval: Duration::from_secs(15),
        name_limits: NameLimits {
            max_bytes: 1024,
            max_segments: 32,
        },
        input_limits: InputLimits {
            max_header_bytes: 64 << 10,
            max_query_bytes: 8 << 10,
            max_identifier_bytes: 256,
            max_json_depth: 64,
        },
        cors: Cors::List(Vec::new()),
        metrics_path: "/metrics".into(),
        proxy: ProxyPolicy::default(),
    }
}

/// [`trimmed_unheard`] on the memory backend, served over HTTP.
async fn trimmed_unheard_app() -> (AppState, Arc<StreamEntry>) {
    let storage = Arc::new(InMemoryStorage::with_chunk_bytes(u64::MAX, CHUNK));
    let (engine, entry) = trimmed_unheard(storage, "/s", &BLOCK).await;
    let state = AppState {
        engine,
        settings: Arc::new(test_settings()),
        shutdown: ShutdownToken::new(),
    };
    (state, entry)
}

#[tokio::test]
async fn a_long_poll_from_the_start_follows_a_trim_not_yet_heard_of() {
    let (state, entry) = trimmed_unheard_app().await;
    let response = long_poll(&state, entry.clone(), ReadFrom::Start, None, false)
        .await
        .unwrap_or_else(IntoResponse::into_response);
    assert_eq!(response.status(), StatusCode::OK);
    let next = response.headers().get(STREAM_NEXT_OFFSET).cloned();
    assert_eq!(next, Some(offset_header(3 * CHUNK)));
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    assert_eq!(body.as_ref(), BLOCK.as_slice());
    assert_eq!(entry.first_position(), 2 * CHUNK);
}

#[tokio::test]
async fn sse_from_the_start_follows_a_trim_not_yet_heard_of() {
    let (state, entry) = trimmed_unheard_app().await;
    let response = sse(&state, entry, ReadFrom::Start, None)
        .await
        .expect("sse");
    let mut body = response.into_body().into_data_stream();
    let first = body.next().await.expect("a chunk").expect("data");
    let text = std::str::from_utf8(&first).expect("text");
    let data = format!("event: data\ndata:{}\n", "x".repeat(BLOCK.len()));
    assert!(text.starts_with(&data), "{text:.80}");
    let next = format!(
        "\"streamNextOffset\":\"{}\"",
        Offset(3 * CHUNK).encode().as_str()
    );
    assert!(text.contains(&next), "{text:.80}");
}

#[tokio::test(start_paused = true)]
async fn sse_keeps_alive_on_one_timer_until_its_reconnect() {
    let (mut state, entry) = trimmed_unheard_app().await;
    let mut settings = test_settings();
    settings.sse_keepalive_interval = Duration::from_secs(1);
    settings.sse_reconnect_interval = Some(Duration::from_millis(2500));
    state.settings = Arc::new(settings);
    let started = Instant::now();
    let response = sse(&state, entry, ReadFrom::Start, None)
        .await
        .expect("sse");
    let mut body = response.into_body().into_data_stream();
    let data = body.next().await.expect("a chunk").expect("data");
    assert!(data.starts_with(b"event: data\n"));
    // The clock is paused: each chunk comes exactly when its timer fires.
    for second in [1, 2] {
        let chunk = body.next().await.expect("a keep-alive").expect("data");
        assert!(chunk.starts_with(b"event: control\n"), "{chunk:?}");
        assert_eq!(started.elapsed(), Duration::from_secs(second));
    }
    assert!(body.next().await.is_none(), "ends at its reconnect");
    assert_eq!(started.elapsed(), Duration::from_millis(2500));
}

/// A waker that records that it was woken.
struct Flag(std::sync::atomic::AtomicBool);

impl std::task::Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Flag {
    fn waker() -> (Arc<Self>, std::task::Waker) {
        let flag = Arc::new(Self(std::sync::atomic::AtomicBool::new(false)));
        (flag.clone(), std::task::Waker::from(flag))
    }

    fn woken(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[tokio::test]
async fn a_waiting_sse_session_is_woken_at_shutdown_through_its_latest_waker() {
    use http_body::Body as _;
    let (state, entry) = trimmed_unheard_app().await;
    let response = sse(&state, entry, ReadFrom::Start, None)
        .await
        .expect("sse");
    let mut body = std::pin::pin!(response.into_body());
    let poll = |body: &mut std::pin::Pin<&mut Body>, waker: &std::task::Waker| {
        body.as_mut()
            .poll_frame(&mut std::task::Context::from_waker(waker))
    };
    let (_, first) = Flag::waker();
    let data = poll(&mut body, &first);
    assert!(
        matches!(data, Poll::Ready(Some(Ok(_)))),
        "the backlog first"
    );
    // Waiting, first with one waker, then polled again with another (as
    // after a move to another task): the wake-up must reach the latest.
    assert!(poll(&mut body, &first).is_pending());
    let (flag, latest) = Flag::waker();
    assert!(poll(&mut body, &latest).is_pending());
    state.shutdown.cancel();
    assert!(flag.woken(), "the shutdown wakes the latest waker");
    let Poll::Ready(Some(Ok(frame))) = poll(&mut body, &latest) else {
        panic!("a last control event at shutdown");
    };
    let last = frame.into_data().expect("data");
    assert!(last.starts_with(b"event: control\n"), "{last:?}");
    assert!(matches!(poll(&mut body, &latest), Poll::Ready(None)));
}

fn key(start: u64) -> ChunkKey {
    ChunkKey {
        start,
        tail: start + 10,
        closed: false,
        cursor: 1,
    }
}

fn chunk(text: &'static str) -> SharedChunk {
    SharedChunk {
        bytes: Bytes::from_static(text.as_bytes()),
        next: 0,
        finished: false,
        events: 2,
        payload: text.len(),
    }
}

#[test]
fn a_fanout_keeps_chunks_of_several_positions_and_replaces_the_oldest() {
    let fanout = Fanout::default();
    fanout.put(key(0), chunk("a"));
    fanout.put(key(5), chunk("b"));
    // Sessions at either position are served the same bytes.
    let text = |start| fanout.get(&key(start)).map(|kept| kept.bytes);
    assert_eq!(text(0).as_deref(), Some(&b"a"[..]));
    assert_eq!(text(5).as_deref(), Some(&b"b"[..]));
    // The same chunk encoded twice takes one place.
    fanout.put(key(5), chunk("b"));
    // With one more position than there are places, the oldest goes.
    let last = 6 + FANOUT_CHUNKS as u64 - 2;
    for start in 6..=last {
        fanout.put(key(start), chunk("c"));
    }
    assert_eq!(text(0), None, "the oldest went first");
    assert_eq!(text(5).as_deref(), Some(&b"b"[..]));
    assert_eq!(text(last).as_deref(), Some(&b"c"[..]));
    let later_tail = ChunkKey { tail: 99, ..key(5) };
    assert!(
        fanout.get(&later_tail).is_none(),
        "a chunk is shared only for its whole key"
    );
}
