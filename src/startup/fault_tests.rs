//! Storage faults seen through the assembled server: the answer (`507`,
//! `503` with `Retry-After`), a consistent stream afterwards, producer
//! state that a failed write does not advance, and reads that keep working.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use tower::ServiceExt;

use super::App;
use crate::config::Config;
use crate::shutdown::ShutdownToken;
use crate::storage::fault::{Fault, FaultyStorage};
use crate::storage::{AcidStorage, FileOptions, FileStorage, InMemoryStorage, Storage};

const STREAM: &str = "/v1/stream/faulty";

/// A backend under the fault wrapper, re-openable on its directory.
struct Backend {
    name: &'static str,
    dir: tempfile::TempDir,
    open: fn(&Path) -> Arc<dyn Storage>,
    persistent: bool,
}

fn backends() -> Vec<Backend> {
    let backend = |name, open, persistent| Backend {
        name,
        dir: tempfile::tempdir().expect("temp dir"),
        open,
        persistent,
    };
    vec![
        backend(
            "memory",
            |_| Arc::new(InMemoryStorage::default()) as Arc<dyn Storage>,
            false,
        ),
        backend(
            "file-durable",
            |dir| Arc::new(FileStorage::open(dir, FileOptions::default()).expect("open")),
            true,
        ),
        backend(
            "acid",
            |dir| Arc::new(AcidStorage::open(dir).expect("open")),
            true,
        ),
    ]
}

struct Server {
    router: Router,
    faults: Arc<FaultyStorage>,
}

impl Server {
    fn new(backend: &Backend) -> Self {
        let faults = FaultyStorage::new((backend.open)(backend.dir.path()));
        let router =
            App::with_storage(faults.clone(), &Config::default(), ShutdownToken::new()).router();
        Self { router, faults }
    }

    async fn call(
        &self,
        method: Method,
        headers: &[(&str, &str)],
        body: &'static [u8],
    ) -> (StatusCode, HeaderMap, Bytes) {
        let mut request = Request::builder().method(method).uri(STREAM);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = self
            .router
            .clone()
            .oneshot(request.body(Body::from(body)).expect("request"))
            .await
            .expect("infallible");
        let status = response.status();
        let headers = response.headers().clone();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        (status, headers, body)
    }

    async fn create(&self) {
        let (status, ..) = self
            .call(
                Method::PUT,
                &[("content-type", "application/octet-stream")],
                b"",
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
    }

    async fn append(&self, body: &'static [u8]) -> (StatusCode, HeaderMap) {
        let (status, headers, _) = self
            .call(
                Method::POST,
                &[("content-type", "application/octet-stream")],
                body,
            )
            .await;
        (status, headers)
    }

    async fn produce(&self, seq: &str, body: &'static [u8]) -> (StatusCode, HeaderMap) {
        let (status, headers, _) = self
            .call(
                Method::POST,
                &[
                    ("content-type", "application/octet-stream"),
                    ("producer-id", "p"),
                    ("producer-epoch", "0"),
                    ("producer-seq", seq),
                ],
                body,
            )
            .await;
        (status, headers)
    }

    /// The whole stream, and its tail as the read reports it.
    async fn contents(&self) -> (Bytes, String) {
        let (status, headers, body) = self.call(Method::GET, &[], b"").await;
        assert_eq!(status, StatusCode::OK);
        (body, next_offset(&headers))
    }

    async fn head(&self) -> HeaderMap {
        let (status, headers, _) = self.call(Method::HEAD, &[], b"").await;
        assert_eq!(status, StatusCode::OK);
        headers
    }

    /// Drops the server and re-opens the backend: what was committed
    /// must be exactly what was acknowledged.
    async fn reopened(self, backend: &Backend) -> Option<Server> {
        drop(self);
        backend.persistent.then(|| Server::new(backend))
    }
}

fn next_offset(headers: &HeaderMap) -> String {
    headers
        .get("stream-next-offset")
        .and_then(|v| v.to_str().ok())
        .expect("Stream-Next-Offset")
        .to_owned()
}

fn offset(position: u64) -> String {
    format!("{:016}_{position:016}", 0)
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_full_disk_answers_507_and_the_stream_stays_consistent() {
    for backend in backends() {
        let name = backend.name;
        let app = Server::new(&backend);
        app.create().await;
        assert_eq!(app.append(b"aa").await.0, StatusCode::NO_CONTENT);

        app.faults.fail(Fault::Full);
        let (status, _, body) = app
            .call(
                Method::POST,
                &[("content-type", "application/octet-stream")],
                b"lost",
            )
            .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");
        assert!(
            String::from_utf8_lossy(&body).contains("STORAGE_FULL"),
            "{name}"
        );
        // Reads keep working and see only committed data.
        assert_eq!(app.contents().await, (Bytes::from("aa"), offset(2)));
        assert_eq!(next_offset(&app.head().await), offset(2), "{name}");

        app.faults.clear();
        let (status, headers) = app.append(b"bb").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
        assert_eq!(next_offset(&headers), offset(4), "{name}");
        assert_eq!(app.contents().await, (Bytes::from("aabb"), offset(4)));

        if let Some(app) = app.reopened(&backend).await {
            assert_eq!(app.contents().await, (Bytes::from("aabb"), offset(4)));
            let (status, headers) = app.append(b"cc").await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
            assert_eq!(next_offset(&headers), offset(6), "{name}");
        }
    }
}

#[tokio::test]
async fn an_unavailable_store_answers_503_with_retry_after() {
    for backend in backends() {
        let name = backend.name;
        let app = Server::new(&backend);
        app.create().await;
        app.faults.fail(Fault::Unavailable);
        let (status, headers) = app.append(b"lost").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(
            header(&headers, "retry-after").is_some_and(|v| v.parse::<u64>().is_ok()),
            "{name}: Retry-After missing: {headers:?}"
        );
        // A failed close changes nothing either.
        let (status, _, _) = app
            .call(Method::POST, &[("stream-closed", "true")], b"")
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert_eq!(app.contents().await, (Bytes::new(), offset(0)));
        assert!(header(&app.head().await, "stream-closed").is_none());

        app.faults.clear();
        let (status, headers) = app.append(b"ok").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
        assert_eq!(next_offset(&headers), offset(2), "{name}");
    }
}

#[tokio::test]
async fn a_failed_write_does_not_advance_producer_or_stream_seq() {
    for backend in backends() {
        let name = backend.name;
        let app = Server::new(&backend);
        app.create().await;
        assert_eq!(app.produce("0", b"s0").await.0, StatusCode::OK, "{name}");

        app.faults.fail(Fault::Full);
        let (status, _) = app.produce("1", b"s1").await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");
        let (status, _, _) = app
            .call(
                Method::POST,
                &[
                    ("content-type", "application/octet-stream"),
                    ("stream-seq", "0005"),
                ],
                b"q5",
            )
            .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");

        app.faults.clear();
        // The retry is new data to the server, not a duplicate.
        let (status, headers) = app.produce("1", b"s1").await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(header(&headers, "producer-seq"), Some("1"), "{name}");
        assert_eq!(next_offset(&headers), offset(4), "{name}");
        assert_eq!(app.produce("1", b"s1").await.0, StatusCode::NO_CONTENT);
        let (status, _, _) = app
            .call(
                Method::POST,
                &[
                    ("content-type", "application/octet-stream"),
                    ("stream-seq", "0005"),
                ],
                b"q5",
            )
            .await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}: Stream-Seq moved");
        assert_eq!(app.contents().await, (Bytes::from("s0s1q5"), offset(6)));

        if let Some(app) = app.reopened(&backend).await {
            assert_eq!(app.produce("1", b"s1").await.0, StatusCode::NO_CONTENT);
            assert_eq!(app.produce("2", b"s2").await.0, StatusCode::OK);
            assert_eq!(app.contents().await, (Bytes::from("s0s1q5s2"), offset(8)));
        }
    }
}

/// Appends queued behind a write that fails are refused too (they were
/// built on it), a retry of the failing write is not confirmed as a
/// duplicate, and readers see only committed data throughout.
#[tokio::test]
async fn writes_queued_behind_a_failing_one_fail_and_nothing_moves() {
    for backend in backends() {
        let name = backend.name;
        let app = Arc::new(Server::new(&backend));
        app.create().await;
        assert_eq!(app.append(b"aa").await.0, StatusCode::NO_CONTENT);

        let gate = app.faults.hold_failures();
        app.faults.fail_next(Fault::Full, 1);
        let failing = tokio::spawn({
            let app = app.clone();
            async move { app.produce("0", b"xx").await }
        });
        app.faults.until_injected(1).await;
        // Pipelined on the pending write: it starts where that one ends,
        // which the store refuses.
        let (status, headers) = app.append(b"yy").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(header(&headers, "retry-after").is_some(), "{name}");
        // A retry of the pending write waits for its outcome.
        let retry = tokio::spawn({
            let app = app.clone();
            async move { app.produce("0", b"xx").await }
        });
        // Readers are not blocked by the stuck write.
        assert_eq!(app.contents().await, (Bytes::from("aa"), offset(2)));

        gate.release();
        let (status, _) = failing.await.expect("join");
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");
        let (status, _) = retry.await.expect("join");
        assert_eq!(
            status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: a retry of a failed write must not be confirmed"
        );

        let (status, headers) = app.produce("0", b"xx").await;
        assert_eq!(status, StatusCode::OK, "{name}");
        assert_eq!(next_offset(&headers), offset(4), "{name}");
        let (status, headers) = app.append(b"zz").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
        assert_eq!(next_offset(&headers), offset(6), "{name}");
        assert_eq!(app.contents().await, (Bytes::from("aaxxzz"), offset(6)));

        let app = Arc::into_inner(app).expect("no other handle");
        if let Some(app) = app.reopened(&backend).await {
            assert_eq!(app.contents().await, (Bytes::from("aaxxzz"), offset(6)));
        }
    }
}

/// A repeated close (a producer's retry of its closing request, or a
/// plain close) while the first close is still being written must not
/// be confirmed if that write fails.
#[tokio::test]
async fn a_repeated_close_is_not_confirmed_when_the_close_fails() {
    let plain: &[(&str, &str)] = &[("stream-closed", "true")];
    let producer: &[(&str, &str)] = &[
        ("stream-closed", "true"),
        ("producer-id", "p"),
        ("producer-epoch", "0"),
        ("producer-seq", "0"),
    ];
    for close in [plain, producer] {
        for backend in backends() {
            let name = backend.name;
            let app = Arc::new(Server::new(&backend));
            app.create().await;
            assert_eq!(app.append(b"aa").await.0, StatusCode::NO_CONTENT);

            let gate = app.faults.hold_failures();
            app.faults.fail_next(Fault::Unavailable, 1);
            let call = |app: Arc<Server>| async move {
                let (status, headers, _) = app.call(Method::POST, close, b"").await;
                (status, headers)
            };
            let first = tokio::spawn(call(app.clone()));
            app.faults.until_injected(1).await;
            let repeated = tokio::spawn(call(app.clone()));
            // Time for the repeat to queue behind the held close (nothing
            // shows that it has); generous for a loaded machine.
            tokio::time::sleep(Duration::from_millis(500)).await;
            gate.release();

            let (status, _) = first.await.expect("join");
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
            let (status, headers) = repeated.await.expect("join");
            let still_open = header(&app.head().await, "stream-closed").is_none();
            assert!(still_open, "{name}: the failed close closed the stream");
            assert_ne!(
                (status, header(&headers, "stream-closed")),
                (StatusCode::NO_CONTENT, Some("true")),
                "{name} {close:?}: a repeated close was confirmed although the stream is open"
            );
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");

            // The client's next retry closes it for real.
            let (status, headers) = call(app.clone()).await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
            assert_eq!(header(&headers, "stream-closed"), Some("true"));
            assert!(header(&app.head().await, "stream-closed").is_some());
        }
    }
}

/// While a stream's creation is being written, a concurrent `PUT` of
/// the same stream is not confirmed (it would promise a stream that a
/// failure or crash may still take away), and an append queued behind
/// it answers `404` if the creation fails, not `500`.
#[tokio::test]
async fn requests_behind_a_failing_create_are_not_confirmed() {
    for backend in backends() {
        let name = backend.name;
        let app = Arc::new(Server::new(&backend));
        let gate = app.faults.hold_failures();
        app.faults.fail_next(Fault::Full, 1);
        let put = |app: Arc<Server>| async move {
            app.call(
                Method::PUT,
                &[("content-type", "application/octet-stream")],
                b"",
            )
            .await
            .0
        };
        let create = tokio::spawn(put(app.clone()));
        app.faults.until_injected(1).await;
        let again = tokio::spawn(put(app.clone()));
        let append = tokio::spawn({
            let app = app.clone();
            async move { app.append(b"yy").await.0 }
        });
        // Time for both to queue behind the held creation (nothing shows
        // that they have); generous for a loaded machine.
        tokio::time::sleep(Duration::from_millis(500)).await;
        gate.release();

        assert_eq!(
            create.await.expect("join"),
            StatusCode::INSUFFICIENT_STORAGE,
            "{name}"
        );
        assert_eq!(
            again.await.expect("join"),
            StatusCode::SERVICE_UNAVAILABLE,
            "{name}: a PUT was confirmed for a creation that failed"
        );
        assert_eq!(append.await.expect("join"), StatusCode::NOT_FOUND, "{name}");
        let (status, _, _) = app.call(Method::HEAD, &[], b"").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");

        // A slow creation that succeeds: the concurrent PUT is
        // confirmed, but only after it.
        let gate = app.faults.delay_next(1);
        let create = tokio::spawn(put(app.clone()));
        // Up to 20 s: a loaded machine may be slow to reach the store.
        for _ in 0..2000 {
            if app.faults.delayed() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(
            app.faults.delayed(),
            1,
            "{name}: the create was not delayed"
        );
        let again = tokio::spawn(put(app.clone()));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(
            !again.is_finished(),
            "{name}: a PUT was confirmed before the creation was committed"
        );
        gate.release();
        assert_eq!(create.await.expect("join"), StatusCode::CREATED, "{name}");
        assert_eq!(again.await.expect("join"), StatusCode::OK, "{name}");
    }
}

/// `DELETE` is acknowledged only once the removal is written; a removal
/// the store refused is reported, and the stream is still stored.
#[tokio::test]
async fn a_failed_delete_is_not_acknowledged() {
    for backend in backends() {
        let name = backend.name;
        let app = Server::new(&backend);
        app.create().await;
        assert_eq!(app.append(b"aa").await.0, StatusCode::NO_CONTENT);
        app.faults.fail(Fault::Full);
        let (status, _, _) = app.call(Method::DELETE, &[], b"").await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");
        app.faults.clear();
        if let Some(app) = app.reopened(&backend).await {
            assert_eq!(app.contents().await, (Bytes::from("aa"), offset(2)));
            let (status, _, _) = app.call(Method::DELETE, &[], b"").await;
            assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
            let app = app.reopened(&backend).await.expect("persistent");
            let (status, _, _) = app.call(Method::HEAD, &[], b"").await;
            assert_eq!(status, StatusCode::NOT_FOUND, "{name}");
        }
    }
}

#[tokio::test]
async fn a_failed_create_or_close_leaves_nothing_behind() {
    for backend in backends() {
        let name = backend.name;
        let app = Server::new(&backend);
        app.faults.fail(Fault::Full);
        let (status, _, _) = app
            .call(
                Method::PUT,
                &[("content-type", "application/octet-stream")],
                b"init",
            )
            .await;
        assert_eq!(status, StatusCode::INSUFFICIENT_STORAGE, "{name}");
        let (status, _, _) = app.call(Method::GET, &[], b"").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{name}");

        app.faults.clear();
        app.create().await;
        assert_eq!(app.append(b"aa").await.0, StatusCode::NO_CONTENT);
        app.faults.fail(Fault::Unavailable);
        let (status, _, _) = app
            .call(
                Method::POST,
                &[
                    ("content-type", "application/octet-stream"),
                    ("stream-closed", "true"),
                ],
                b"last",
            )
            .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{name}");
        assert!(header(&app.head().await, "stream-closed").is_none());

        app.faults.clear();
        let (status, headers) = app.append(b"bb").await;
        assert_eq!(status, StatusCode::NO_CONTENT, "{name}");
        assert_eq!(next_offset(&headers), offset(4), "{name}");

        if let Some(app) = app.reopened(&backend).await {
            assert_eq!(app.contents().await, (Bytes::from("aabb"), offset(4)));
            assert!(header(&app.head().await, "stream-closed").is_none());
        }
    }
}
