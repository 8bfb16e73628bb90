//! The HTTP/1.1 connection layer of the standalone listener, over real
//! sockets with raw bytes: keep-alive and pipelining, request bodies in
//! pieces and chunked, `Expect: 100-continue`, HTTP/1.0 clients,
//! `Connection: close`, answers without a body, streamed answers, head
//! limits, the header-read timeout, client disconnects, the drain, and the
//! `transport.http.engine` switch. Request smuggling has its own file.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::routing::get;
use bytes::Bytes;
use durable_streams_server::config::{
    AccessOp, AuthMode, ForwardedHeaders, GrantConfig, Http1Engine, ProxyConfig,
};
use durable_streams_server::server::{DrainTiming, ServeOptions, serve};
use durable_streams_server::{
    App, Config, InMemoryStorage, Readiness, ShutdownToken, build_router_with_ready,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::helpers::*;

/// A router served by [`serve`] with `options`.
struct Served {
    addr: std::net::SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

async fn serve_router(router: Router, options: ServeOptions) -> Served {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(serve(
        listener,
        router,
        Readiness::new(false),
        ShutdownToken::new(),
        async move {
            let _ = stopped.await;
        },
        options,
    ));
    Served {
        addr,
        stop: Some(stop),
        task,
    }
}

/// The protocol router on a fresh store, served with `options`.
async fn serve_app(config: &Config, options: ServeOptions) -> Served {
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    let (router, _) = build_router_with_ready(storage, config, ShutdownToken::new());
    serve_router(router, options).await
}

fn options() -> ServeOptions {
    ServeOptions::new(DrainTiming {
        delay: Duration::ZERO,
        timeout: Duration::from_secs(30),
    })
}

async fn connect(addr: std::net::SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

async fn send(socket: &mut TcpStream, bytes: &[u8]) {
    socket.write_all(bytes).await.expect("write");
}

/// Reads until `needle` has arrived; returns everything read.
async fn until_seen(socket: &mut TcpStream, needle: &[u8]) -> Vec<u8> {
    let mut seen = Vec::new();
    let mut chunk = [0u8; 4096];
    while !seen.windows(needle.len()).any(|w| w == needle) {
        let n = tokio::time::timeout(HANG_GUARD, socket.read(&mut chunk))
            .await
            .expect("timed out waiting for data")
            .expect("read");
        assert!(n > 0, "closed before {:?}", String::from_utf8_lossy(needle));
        seen.extend_from_slice(&chunk[..n]);
    }
    seen
}

#[tokio::test]
async fn keep_alive_carries_pipelined_requests_in_order() {
    let app = spawn_app(test_config()).await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"PUT /v1/stream/p HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n\
          POST /v1/stream/p HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc\
          GET /v1/stream/p HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let answers = read_responses(&mut socket, 3).await;
    assert_eq!(answers[0].status, 201);
    assert_eq!(answers[1].status, 204);
    assert_eq!(
        (answers[2].status, answers[2].body.as_slice()),
        (200, &b"abc"[..])
    );
    // The connection stays open for more.
    send(&mut socket, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let health = read_one_response(&mut socket).await;
    assert_eq!((health.status, health.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(health.header("connection"), None);
    assert!(health.header("date").is_some_and(|d| d.ends_with(" GMT")));
}

#[tokio::test]
async fn request_bodies_may_arrive_in_pieces_and_chunked() {
    let app = spawn_app(test_config()).await;
    app.create("b", "text/plain").await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"POST /v1/stream/b HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 9\r\n\r\nabc",
    )
    .await;
    for piece in [&b"def"[..], b"ghi"] {
        tokio::time::sleep(Duration::from_millis(20)).await;
        send(&mut socket, piece).await;
    }
    assert_eq!(read_one_response(&mut socket).await.status, 204);
    // Chunked, with an extension and a trailer, split mid-line.
    let chunked: &[&[u8]] = &[
        b"POST /v1/stream/b HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n4;n",
        b"ame=\"v\"\r\n|jkl\r",
        b"\n3\r\nmno\r\n0\r\nX-Checksum: 1\r\n",
        b"\r\n",
    ];
    for piece in chunked {
        send(&mut socket, piece).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_one_response(&mut socket).await.status, 204);
    let read = app.read("b", None).await;
    assert_eq!(read.text().await.expect("body"), "abcdefghi|jklmno");
}

#[tokio::test]
async fn expect_100_continue_is_answered_when_the_body_is_read() {
    let mut config = test_config();
    config.limits.max_request_body_bytes = 1024;
    let app = spawn_app(config).await;
    app.create("e", "text/plain").await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"POST /v1/stream/e HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\
          Expect: 100-continue\r\nContent-Length: 5\r\n\r\n",
    )
    .await;
    assert_eq!(read_one_response(&mut socket).await.status, 100);
    send(&mut socket, b"hello").await;
    assert_eq!(read_one_response(&mut socket).await.status, 204);
    // Refused from its declared length: no 100, the answer, then close.
    send(
        &mut socket,
        b"POST /v1/stream/e HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\
          Expect: 100-continue\r\nContent-Length: 5000\r\n\r\n",
    )
    .await;
    let refused = read_one_response(&mut socket).await;
    assert_eq!(refused.expect_problem(413), "PAYLOAD_TOO_LARGE");
    assert_eq!(refused.header("connection").as_deref(), Some("close"));
    assert!(read_until_closed(&mut socket).await.is_empty());
    let read = app.read("e", None).await;
    assert_eq!(read.text().await.expect("body"), "hello");
}

#[tokio::test]
async fn http10_clients_get_close_or_keep_alive_as_they_ask() {
    let app = spawn_app(test_config()).await;
    let answer = raw_http(app.addr, b"GET /healthz HTTP/1.0\r\n\r\n").await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));
    assert_eq!(answer.header("connection").as_deref(), Some("close"));

    let mut socket = connect(app.addr).await;
    for _ in 0..2 {
        send(
            &mut socket,
            b"GET /healthz HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
        )
        .await;
        let answer = read_one_response(&mut socket).await;
        assert_eq!(answer.status, 200);
        assert_eq!(answer.header("connection").as_deref(), Some("keep-alive"));
    }

    // A streamed answer to HTTP/1.0 is not chunked: it ends with the connection.
    app.create("old", "text/plain").await;
    app.append("old", "text/plain", "payload").await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"GET /v1/stream/old?offset=-1&live=sse HTTP/1.0\r\n\r\n",
    )
    .await;
    let seen = String::from_utf8(until_seen(&mut socket, b"event: control").await).expect("text");
    let head = seen
        .split("\r\n\r\n")
        .next()
        .expect("head")
        .to_ascii_lowercase();
    assert!(!head.contains("transfer-encoding"), "{head}");
    assert!(!head.contains("content-length"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert!(
        seen.contains("\r\n\r\nevent: data\ndata:payload\n\n"),
        "{seen}"
    );
}

#[tokio::test]
async fn connection_close_is_honoured() {
    let app = spawn_app(test_config()).await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    let answer = read_one_response(&mut socket).await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    // The request after it is not answered.
    assert!(read_until_closed(&mut socket).await.is_empty());
}

#[tokio::test]
async fn head_204_and_304_answers_carry_no_body() {
    let app = spawn_app(test_config()).await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"HEAD /healthz HTTP/1.1\r\nHost: h\r\n\r\nGET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n",
    )
    .await;
    let both = String::from_utf8(read_until_closed(&mut socket).await).expect("text");
    let (head, rest) = both.split_once("\r\n\r\n").expect("a head");
    assert!(
        head.to_ascii_lowercase().contains("content-length: 2"),
        "{head}"
    );
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "HEAD sent a body: {rest:?}"
    );
    assert!(rest.ends_with("\r\n\r\nok"), "{rest:?}");

    app.create("n", "text/plain").await;
    let mut socket = connect(app.addr).await;
    send(
        &mut socket,
        b"POST /v1/stream/n HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
    )
    .await;
    let appended = read_one_response(&mut socket).await;
    assert_eq!(appended.status, 204);
    assert_eq!(appended.header("content-length"), None);
    assert_eq!(appended.header("transfer-encoding"), None);
    send(&mut socket, b"GET /v1/stream/n HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let read = read_one_response(&mut socket).await;
    let etag = read.header("etag").expect("an ETag");
    send(
        &mut socket,
        format!(
            "GET /v1/stream/n HTTP/1.1\r\nHost: h\r\nIf-None-Match: {etag}\r\n\r\n\
             GET /healthz HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    let both = String::from_utf8(read_until_closed(&mut socket).await).expect("text");
    let (head, rest) = both.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 304 Not Modified\r\n"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("content-length"),
        "{head}"
    );
    assert!(
        rest.starts_with("HTTP/1.1 200 OK\r\n"),
        "304 sent a body: {rest:?}"
    );
}

#[tokio::test]
async fn streamed_answers_are_chunked_and_framed_exactly() {
    let app = spawn_app(test_config()).await;
    app.create("c", "text/plain").await;
    app.append("c", "text/plain", "one").await;
    let mut reader = open_sse_raw(app.addr, &format!("{}?offset=-1&live=sse", app.path("c"))).await;
    let first = reader.take(2).await;
    assert_eq!(first[0].data(), "one");
    app.append("c", "text/plain", "two").await;
    let next = reader.take(2).await;
    assert_eq!(next[0].data(), "two");
}

#[tokio::test]
async fn oversized_heads_get_414_and_431_and_a_close() {
    let app = spawn_app(test_config()).await;
    let cases = [
        (
            format!("GET /{} HTTP/1.1\r\nHost: h\r\n\r\n", "a".repeat(9 * 1024)),
            414,
            "URI_TOO_LONG",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\nX: {}\r\n\r\n",
                "v".repeat(70 * 1024)
            ),
            431,
            "HEADERS_TOO_LARGE",
        ),
        (
            format!(
                "GET / HTTP/1.1\r\nHost: h\r\n{}\r\n",
                (0..101)
                    .map(|i| format!("X-{i}: v\r\n"))
                    .collect::<String>()
            ),
            431,
            "HEADERS_TOO_LARGE",
        ),
    ];
    for (request, status, code) in cases {
        let mut socket = connect(app.addr).await;
        send(&mut socket, request.as_bytes()).await;
        let answer = read_one_response(&mut socket).await;
        assert_eq!(answer.expect_problem(status), code);
        assert_eq!(answer.header("connection").as_deref(), Some("close"));
        read_until_closed(&mut socket).await;
    }
}

#[tokio::test]
async fn slow_heads_time_out_but_idle_keep_alive_does_not() {
    let served = serve_app(
        &test_config(),
        ServeOptions {
            // Long enough that the kept-alive request below, sent right
            // after connecting, beats it on a loaded machine.
            header_read_timeout: Duration::from_secs(2),
            ..options()
        },
    )
    .await;
    // Half a head, then nothing: 408 and close.
    let mut slow = connect(served.addr).await;
    send(&mut slow, b"GET /healthz HTTP/1.1\r\nHo").await;
    let answer = read_one_response(&mut slow).await;
    assert_eq!(answer.expect_problem(408), "REQUEST_TIMEOUT");
    read_until_closed(&mut slow).await;
    // Connected, never a byte: closed.
    let mut silent = connect(served.addr).await;
    assert!(read_until_closed(&mut silent).await.is_empty());
    // A kept-alive connection waits for its next request without a timer.
    let mut kept = connect(served.addr).await;
    send(&mut kept, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(read_one_response(&mut kept).await.status, 200);
    tokio::time::sleep(Duration::from_millis(3000)).await;
    send(&mut kept, b"GET /healthz HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(read_one_response(&mut kept).await.status, 200);
}

/// Reports on `dropped` when dropped: a handler's state went away.
struct Guard(mpsc::UnboundedSender<&'static str>, &'static str);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.send(self.1);
    }
}

#[tokio::test]
async fn a_client_leaving_ends_its_waiting_handler_and_its_stream() {
    let (dropped, mut drops) = mpsc::unbounded_channel::<&'static str>();
    let (entered, mut entries) = mpsc::unbounded_channel::<()>();
    let waiting = {
        let (dropped, entered) = (dropped.clone(), entered.clone());
        move || {
            let guard = Guard(dropped.clone(), "handler");
            let _ = entered.send(());
            async move {
                let _guard = guard;
                std::future::pending::<&'static str>().await
            }
        }
    };
    let streaming = move || {
        let guard = Guard(dropped.clone(), "stream");
        async move {
            // One chunk, then silence while holding the guard.
            let events = futures_util::stream::unfold((guard, false), |(guard, sent)| async move {
                if sent {
                    std::future::pending::<()>().await;
                }
                Some((
                    Ok::<_, std::io::Error>(Bytes::from_static(b"first")),
                    (guard, true),
                ))
            });
            Body::from_stream(events)
        }
    };
    let router = Router::new()
        .route("/wait", get(waiting))
        .route("/stream", get(streaming));
    let served = serve_router(router, options()).await;

    let mut socket = connect(served.addr).await;
    send(&mut socket, b"GET /wait HTTP/1.1\r\nHost: h\r\n\r\n").await;
    tokio::time::timeout(HANG_GUARD, entries.recv())
        .await
        .expect("handler entered");
    drop(socket);
    let what = tokio::time::timeout(HANG_GUARD, drops.recv()).await;
    assert_eq!(what.expect("handler dropped"), Some("handler"));

    let mut socket = connect(served.addr).await;
    send(&mut socket, b"GET /stream HTTP/1.1\r\nHost: h\r\n\r\n").await;
    until_seen(&mut socket, b"first").await;
    drop(socket);
    let what = tokio::time::timeout(HANG_GUARD, drops.recv()).await;
    assert_eq!(what.expect("stream dropped"), Some("stream"));
}

#[tokio::test]
async fn the_drain_closes_idle_connections_and_finishes_the_answer_in_flight() {
    let (entered, mut entries) = mpsc::unbounded_channel::<()>();
    let slow = move || {
        let _ = entered.send(());
        async {
            tokio::time::sleep(Duration::from_millis(300)).await;
            "done"
        }
    };
    let router = Router::new()
        .route("/slow", get(slow))
        .route("/fast", get(|| async { "fast" }));
    let mut served = serve_router(router, options()).await;

    let mut idle = connect(served.addr).await;
    send(&mut idle, b"GET /fast HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(read_one_response(&mut idle).await.status, 200);
    let mut busy = connect(served.addr).await;
    send(&mut busy, b"GET /slow HTTP/1.1\r\nHost: h\r\n\r\n").await;
    tokio::time::timeout(HANG_GUARD, entries.recv())
        .await
        .expect("slow handler entered");

    let _ = served.stop.take().expect("stop").send(());
    assert!(read_until_closed(&mut idle).await.is_empty());
    let answer = read_one_response(&mut busy).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"done"[..]));
    assert_eq!(answer.header("connection").as_deref(), Some("close"));
    assert!(read_until_closed(&mut busy).await.is_empty());
    // Well inside the 30 s drain timeout: nothing was left to wait for.
    tokio::time::timeout(HANG_GUARD, &mut served.task)
        .await
        .expect("the server stopped")
        .expect("no panic")
        .expect("no error");
}

#[tokio::test]
async fn the_engine_switch_selects_what_serves_http1() {
    // The lean engine refuses an HTTP/1.1 request without Host; hyper
    // serves it: which of the two answers tells which one runs.
    let hostless = b"GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n";
    let lean = ChildServer::start(&[]).await;
    assert_eq!(raw_http(lean.addr, hostless).await.status, 400);
    let hyper = ChildServer::start(&[("DS_TRANSPORT__HTTP__ENGINE", "hyper")]).await;
    let answer = raw_http(hyper.addr, hostless).await;
    assert_eq!((answer.status, answer.body.as_slice()), (200, &b"ok"[..]));
}

/// The protocol router on a fresh store, served with its append shortcut.
async fn serve_app_with_shortcut(config: &Config) -> Served {
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    let app = App::with_storage(storage, config, ShutdownToken::new());
    let options = options().with_shortcut(app.append_shortcut());
    serve_router(app.router(), options).await
}

/// Header fields, name and value.
type Fields = Vec<(String, Vec<u8>)>;

/// Status, headers in the order sent (without `date`) and body: what must
/// not differ.
fn answer_of(response: &RawResponse) -> (u16, Fields, Vec<u8>) {
    let headers: Vec<_> = (response.headers.iter())
        .filter(|(name, _)| name != "date")
        .cloned()
        .collect();
    (response.status, headers, response.body.clone())
}

#[tokio::test]
async fn appends_through_the_shortcut_answer_as_through_the_router() {
    let mut config = test_config();
    // Any origin (the default), then a list of origins, then none.
    assert_eq!(config.http.cors_origins, "*");
    same_appends_through_both_paths(&config, "", 200).await;
    config.http.cors_origins = "https://a.example".into();
    same_appends_through_both_paths(&config, "", 200).await;
    config.http.cors_origins = String::new();
    same_appends_through_both_paths(&config, "", 200).await;
    // Behind a trusted proxy that names another client and scheme.
    config.http.cors_origins = "https://a.example".into();
    config.proxy = ProxyConfig {
        enabled: true,
        forwarded_headers: ForwardedHeaders::XForwarded,
        trusted_proxies: vec!["127.0.0.1".into()],
        ..ProxyConfig::default()
    };
    same_appends_through_both_paths(
        &config,
        "X-Forwarded-For: 203.0.113.9\r\nX-Forwarded-Proto: https\r\nX-Forwarded-Host: e.example\r\n",
        200,
    )
    .await;
}

#[tokio::test]
async fn appends_through_the_shortcut_answer_as_through_the_router_with_access_control() {
    const KEY: &str = "shortcut-writer-0a1b2c3d4e5f60718293a4b5c6d7e8f9";
    let dir = tempfile::tempdir().expect("temp dir");
    let keys = dir.path().join("api-keys.toml");
    let digest = ring::digest::digest(&ring::digest::SHA256, KEY.as_bytes());
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    std::fs::write(
        &keys,
        format!(
            "[[keys]]\nname = \"writer\"\nsha256 = \"{hex}\"\n\
             grants = [{{ paths = [\"/v1/stream/s\", \"/v1/stream/j\"], ops = [\"create\", \"append\"] }}]\n"
        ),
    )
    .expect("write the key file");
    let mut config = test_config();
    config.auth.mode = AuthMode::Token;
    config.auth.api_keys_path = Some(keys);
    config.auth.anonymous = vec![GrantConfig {
        paths: vec!["/v1/stream/**".into()],
        ops: vec![AccessOp::Read],
    }];
    // Granted (and refused outside its paths), a key nobody has, none.
    same_appends_through_both_paths(&config, &format!("Authorization: Bearer {KEY}\r\n"), 200)
        .await;
    same_appends_through_both_paths(&config, "Authorization: Bearer not-a-key\r\n", 404).await;
    same_appends_through_both_paths(&config, "", 404).await;
}

// A multi-thread runtime, as the server's: only there does a connection
// whose answer turns live move to the live runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_after_a_live_answer_on_the_same_connection_keeps_every_header() {
    // A connection whose SSE answer ended serves its later requests from
    // the live runtime: its appends must still carry the common headers
    // (security, CORS) the shortcut leaves to the connection to write.
    let served = serve_app_with_shortcut(&test_config()).await;
    let closed = format!("http://{}/v1/stream/closed", served.addr);
    create_text_stream(&closed).await;
    let closing = client()
        .post(&closed)
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("x")
        .send()
        .await
        .expect("POST");
    assert_eq!(closing.status(), 204);
    create_text_stream(&format!("http://{}/v1/stream/s", served.addr)).await;
    let append: &[u8] = b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\na";

    let mut fresh = connect(served.addr).await;
    send(&mut fresh, append).await;
    let expected = read_one_response(&mut fresh).await;

    let mut socket = connect(served.addr).await;
    send(
        &mut socket,
        b"GET /v1/stream/closed?offset=-1&live=sse HTTP/1.1\r\nHost: h\r\n\r\n",
    )
    .await;
    // The stream is closed: the event stream ends, the connection stays.
    let sse = until_seen(&mut socket, b"\r\n0\r\n\r\n").await;
    assert!(
        sse.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&sse)
    );
    send(&mut socket, append).await;
    let answer = read_one_response(&mut socket).await;

    let without_offsets = |response: &RawResponse| {
        let (status, fields, body) = answer_of(response);
        let fields: Fields = (fields.into_iter())
            .filter(|(name, _)| name != "stream-next-offset")
            .collect();
        (status, fields, body)
    };
    assert_eq!(without_offsets(&answer), without_offsets(&expected));
    assert!(
        answer.header("x-content-type-options").is_some(),
        "{:?}",
        answer.headers
    );
    drop(served.stop);
    let _ = served.task.await;
}

/// Sends the same appends (with `fields` added to each head) to a server
/// with `config` through the router and through the shortcut, and compares
/// the answers and what the stream holds afterwards (read with status
/// `read_status`).
async fn same_appends_through_both_paths(config: &Config, fields: &str, read_status: u16) {
    let router = serve_app(config, options()).await;
    let shortcut = serve_app_with_shortcut(config).await;
    let requests: &[&[u8]] = &[
        b"PUT /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 3\r\n\r\nabc",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nOrigin: https://a.example\r\nContent-Length: 1\r\n\r\nd",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\nContent-Length: 1\r\n\r\ne",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 0\r\nContent-Length: 1\r\n\r\ne",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nStream-Seq: 5\r\nContent-Length: 1\r\n\r\nf",
        b"POST /v1/stream/missing HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\ng",
        b"POST /v1/stream/a/../b HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/stream/__ds/x HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/stream/ HTTP/1.1\r\nHost: h\r\nContent-Length: 0\r\n\r\n",
        // Another spelling of the stream's type; the wrong type.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: Text/Plain; charset=utf-8\r\nContent-Length: 1\r\n\r\nh",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 3\r\n\r\n[1]",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\n\r\ni",
        // Producers: a new epoch, a gap, a stale epoch, a bad number.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 1\r\nProducer-Seq: 0\r\nContent-Length: 1\r\n\r\nj",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 1\r\nProducer-Seq: 5\r\nContent-Length: 1\r\n\r\nk",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: 0\r\nProducer-Seq: 1\r\nContent-Length: 1\r\n\r\nl",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nProducer-Epoch: x\r\nProducer-Seq: 1\r\nContent-Length: 1\r\n\r\nm",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: p\r\nContent-Length: 1\r\n\r\nn",
        // A regressing Stream-Seq; a body over the limit.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nStream-Seq: 4\r\nContent-Length: 1\r\n\r\no",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 999999999999\r\n\r\n",
        // A CORS request from an origin not listed.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nOrigin: https://b.example\r\nContent-Length: 1\r\n\r\np",
        // JSON appends: a message, an array, a parameter, bad JSON, empty.
        b"PUT /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 7\r\n\r\n{\"a\":1}",
        b"POST /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 5\r\n\r\n[2,3]",
        b"POST /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json; charset=utf-8\r\nContent-Length: 1\r\n\r\n4",
        b"POST /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[1",
        b"POST /v1/stream/j HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\nContent-Length: 2\r\n\r\n[]",
        // The largest producer epoch: its digits written into the head.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nProducer-Id: q\r\nProducer-Epoch: 9007199254740991\r\nProducer-Seq: 0\r\nContent-Length: 1\r\n\r\nr",
        // Closing, then appending to the closed stream.
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nStream-Closed: true\r\nContent-Length: 0\r\n\r\n",
        b"POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 1\r\n\r\nq",
    ];
    for request in requests {
        // One request per connection: the answer ends with it.
        let request = String::from_utf8_lossy(request).replacen(
            "Host: h\r\n",
            &format!("Host: h\r\nConnection: close\r\n{fields}"),
            1,
        );
        let expected = raw_http(router.addr, request.as_bytes()).await;
        let answer = raw_http(shortcut.addr, request.as_bytes()).await;
        assert_eq!(answer_of(&answer), answer_of(&expected), "{request}");
    }
    // The same stream, appended to through both paths, reads the same.
    let read = b"GET /v1/stream/s?offset=-1 HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let (expected, answer) = (
        raw_http(router.addr, read).await,
        raw_http(shortcut.addr, read).await,
    );
    assert_eq!(expected.status, read_status);
    assert_eq!(answer_of(&answer), answer_of(&expected));
    for served in [router, shortcut] {
        drop(served.stop);
        let _ = served.task.await;
    }
}

/// What a long-poll answer says, minus what differs between any two
/// answers (`Date`, the cursor's value) and how the header lines are
/// ordered.
fn long_poll_answer(answer: &RawResponse) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut headers: Vec<(String, String)> = answer
        .headers
        .iter()
        .filter(|(name, _)| name != "date")
        .map(|(name, value)| {
            let value = if name == "stream-cursor" {
                "(a cursor)".to_owned()
            } else {
                String::from_utf8_lossy(value).into_owned()
            };
            (name.clone(), value)
        })
        .collect();
    headers.sort();
    (answer.status, headers, answer.body.clone())
}

/// A long-poll that waits (for data, then until its timeout) on one
/// kept-alive connection of a server with `engine`.
async fn waiting_long_polls(engine: Http1Engine) -> Vec<(u16, Vec<(String, String)>, Vec<u8>)> {
    // A long-poll timeout the append below beats on a loaded machine.
    let mut config = test_config();
    config.transport.connection.long_poll_timeout_secs = 10;
    let served = serve_app(
        &config,
        ServeOptions {
            engine,
            ..options()
        },
    )
    .await;
    let base = format!("http://{}/v1/stream/lp", served.addr);
    let tail = create_text_stream(&base).await;
    let mut socket = connect(served.addr).await;
    send(
        &mut socket,
        format!(
            "GET /v1/stream/lp?offset={tail}&live=long-poll HTTP/1.1\r\nHost: h\r\n\
             Origin: https://app.example\r\n\r\n"
        )
        .as_bytes(),
    )
    .await;
    // Time for the long-poll to start waiting before the data comes.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let appended = client()
        .post(&base)
        .header("content-type", "text/plain")
        .body("data")
        .send()
        .await
        .expect("POST");
    assert_eq!(appended.status(), 204);
    let with_data = read_one_response(&mut socket).await;
    let next = with_data.header("stream-next-offset").expect("next offset");
    send(
        &mut socket,
        format!("GET /v1/stream/lp?offset={next}&live=long-poll HTTP/1.1\r\nHost: h\r\n\r\n")
            .as_bytes(),
    )
    .await;
    let timed_out = read_one_response(&mut socket).await;
    vec![long_poll_answer(&with_data), long_poll_answer(&timed_out)]
}

#[tokio::test]
async fn a_waiting_long_poll_is_answered_alike_by_both_engines() {
    // The lean engine answers a waiting long-poll after the router's
    // future has returned; hyper awaits it inside.
    // Side by side: each waits out a long-poll timeout.
    let (lean, hyper) = tokio::join!(
        waiting_long_polls(Http1Engine::Lean),
        waiting_long_polls(Http1Engine::Hyper)
    );
    assert_eq!(lean, hyper);
    let [
        (data_status, data_headers, data),
        (timeout_status, timeout_headers, _),
    ] = &lean[..]
    else {
        panic!("two answers: {lean:?}");
    };
    assert_eq!((*data_status, data.as_slice()), (200, &b"data"[..]));
    assert_eq!(*timeout_status, 204);
    let has = |headers: &[(String, String)], name: &str, value: &str| {
        headers.iter().any(|(n, v)| n == name && v == value)
    };
    assert!(
        has(data_headers, "access-control-allow-origin", "*"),
        "{data_headers:?}"
    );
    assert!(
        has(data_headers, "stream-cursor", "(a cursor)"),
        "{data_headers:?}"
    );
    assert!(
        has(timeout_headers, "stream-up-to-date", "true"),
        "{timeout_headers:?}"
    );
    assert!(
        has(timeout_headers, "cache-control", "no-store"),
        "{timeout_headers:?}"
    );
}
