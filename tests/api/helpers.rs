//! Shared test plumbing: an in-process server on a real socket
//! ([`spawn_app`]), a hand-written HTTP/1.1 client for bytes `reqwest`
//! refuses to send ([`raw_http`]), an SSE event reader and assertions on
//! problem answers.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use durable_streams_server::server::{DrainTiming, ServeOptions, serve};
use durable_streams_server::{App, Config, InMemoryStorage, Readiness, ShutdownToken};
use futures_util::{Stream, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Hang guard for any single network wait in these tests. Never an assertion
/// about speed: a healthy server answers in milliseconds.
pub const HANG_GUARD: Duration = Duration::from_secs(20);

/// The offset of the start of every stream.
pub const ZERO_OFFSET: &str = "0000000000000000_0000000000000000";

/// The offset naming byte position `n`.
pub fn offset(n: u64) -> String {
    format!("0000000000000000_{n:016}")
}

/// Defaults tuned for tests: short long-polls so the suite stays fast.
pub fn test_config() -> Config {
    let mut config = Config::default();
    config.server.bind_address = "127.0.0.1:0".into();
    config.transport.connection.long_poll_timeout_secs = 1;
    config
}

/// A server running in this test's runtime on `127.0.0.1:<ephemeral>`.
pub struct TestApp {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    /// Path under which stream names go, including any mount prefix
    /// (e.g. `/v1/stream` or `/api/v1/stream`).
    pub stream_root: String,
    /// A client without proxies or TLS.
    pub client: reqwest::Client,
    /// Fires live readers' release, as the drain does.
    pub shutdown: ShutdownToken,
    /// The `/readyz` flag.
    pub readiness: Readiness,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
}

/// A plain HTTP client: no proxy from the environment, no pooling surprises.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("reqwest client")
}

/// Starts the protocol router for `config` on a fresh in-memory store.
pub async fn spawn_app(config: Config) -> TestApp {
    spawn_app_mounted(config, None).await
}

/// Like [`spawn_app`], with the router nested under `mount` (e.g. `/api`)
/// through [`axum::Router::nest`], as an embedder would.
pub async fn spawn_app_mounted(config: Config, mount: Option<&str>) -> TestApp {
    spawn_app_full(config, mount, quick_drain()).await
}

/// Like [`spawn_app`], on a backend the test made.
pub async fn spawn_app_with_storage(
    storage: Arc<dyn durable_streams_server::storage::Storage>,
    config: Config,
) -> TestApp {
    spawn_app_on(storage, config, None, quick_drain()).await
}

fn quick_drain() -> DrainTiming {
    DrainTiming {
        delay: Duration::from_millis(0),
        timeout: Duration::from_secs(5),
    }
}

/// The general form: mount point and drain timing.
pub async fn spawn_app_full(config: Config, mount: Option<&str>, drain: DrainTiming) -> TestApp {
    let storage = Arc::new(InMemoryStorage::new(config.limits.max_memory_bytes));
    spawn_app_on(storage, config, mount, drain).await
}

async fn spawn_app_on(
    storage: Arc<dyn durable_streams_server::storage::Storage>,
    config: Config,
    mount: Option<&str>,
    drain: DrainTiming,
) -> TestApp {
    let shutdown = ShutdownToken::new();
    let app = App::with_storage(storage, &config, shutdown.clone());
    let shortcut = app.append_shortcut();
    let (router, readiness) = app.into_router();
    // Served as the binary serves it: appends through the router's
    // shortcut, unless the router is nested in another (an embedder's).
    let (router, options) = match mount {
        Some(prefix) => (
            axum::Router::new().nest(prefix, router),
            ServeOptions::from(drain),
        ),
        None => (router, ServeOptions::from(drain).with_shortcut(shortcut)),
    };
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let (stop, stopped) = oneshot::channel::<()>();
    let signal = async move {
        let _ = stopped.await;
    };
    let server = tokio::spawn(serve(
        listener,
        router,
        readiness.clone(),
        shutdown.clone(),
        signal,
        options,
    ));
    let base_path = config.http.stream_base_path.trim_end_matches('/');
    TestApp {
        addr,
        base_url: format!("http://{addr}"),
        stream_root: format!("{}{base_path}", mount.unwrap_or("")),
        client: client(),
        shutdown,
        readiness,
        stop: Some(stop),
        server: Some(server),
    }
}

impl TestApp {
    /// The path of stream `name` (its identity).
    pub fn path(&self, name: &str) -> String {
        format!("{}/{name}", self.stream_root)
    }

    /// The URL of stream `name`.
    pub fn url(&self, name: &str) -> String {
        format!("{}{}", self.base_url, self.path(name))
    }

    /// Any URL on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// `PUT` with a content type; asserts `201`.
    pub async fn create(&self, name: &str, content_type: &str) -> reqwest::Response {
        let response = self
            .client
            .put(self.url(name))
            .header("content-type", content_type)
            .send()
            .await
            .expect("PUT");
        assert_eq!(response.status(), 201, "creating {name}");
        response
    }

    /// `POST` of `body`; asserts success and returns the new tail offset.
    pub async fn append(&self, name: &str, content_type: &str, body: impl Into<Bytes>) -> String {
        let response = self
            .client
            .post(self.url(name))
            .header("content-type", content_type)
            .body(reqwest::Body::from(body.into()))
            .send()
            .await
            .expect("POST");
        assert!(
            response.status().is_success(),
            "append to {name}: {}",
            response.status()
        );
        header(&response, "stream-next-offset")
    }

    /// Catch-up `GET` from `offset` (no offset when `None`).
    pub async fn read(&self, name: &str, from: Option<&str>) -> reqwest::Response {
        let url = match from {
            Some(from) => format!("{}?offset={from}", self.url(name)),
            None => self.url(name),
        };
        self.client.get(url).send().await.expect("GET")
    }

    /// Starts the drain as SIGTERM does in the binary.
    pub fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Waits (bounded) until the server task has finished draining.
    pub async fn stopped(&mut self) -> std::io::Result<()> {
        let task = self.server.take().expect("server task");
        tokio::time::timeout(HANG_GUARD, task)
            .await
            .expect("server did not stop")
            .expect("server task panicked")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(task) = self.server.take() {
            task.abort();
        }
    }
}

/// A response header as text; panics with the header name when absent.
pub fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}"))
        .to_str()
        .expect("header is text")
        .to_owned()
}

/// Creates an empty `text/plain` stream at `url`; its tail offset.
pub async fn create_text_stream(url: &str) -> String {
    let created = client()
        .put(url)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    header(&created, "stream-next-offset")
}

/// A response header as text, if present.
pub fn maybe_header(response: &reqwest::Response, name: &str) -> Option<String> {
    response
        .headers()
        .get(name)
        .map(|v| v.to_str().expect("header is text").to_owned())
}

/// Asserts the security headers every response must carry.
pub fn assert_security_headers(response: &reqwest::Response) {
    assert_eq!(
        maybe_header(response, "x-content-type-options").as_deref(),
        Some("nosniff"),
        "nosniff on {} {}",
        response.status(),
        response.url()
    );
    let corp = maybe_header(response, "cross-origin-resource-policy")
        .unwrap_or_else(|| panic!("CORP on {} {}", response.status(), response.url()));
    assert!(
        ["cross-origin", "same-site", "same-origin"].contains(&corp.as_str()),
        "{corp}"
    );
}

/// Asserts an RFC 9457 problem with `status` and returns its `code`.
pub async fn expect_problem(response: reqwest::Response, status: u16) -> String {
    assert_eq!(
        response.status().as_u16(),
        status,
        "status of {}",
        response.url()
    );
    assert_eq!(
        maybe_header(&response, "content-type").as_deref(),
        Some("application/problem+json"),
        "problem content type"
    );
    assert_security_headers(&response);
    let body = response.bytes().await.expect("problem body");
    problem_code(&body, status)
}

/// Checks a problem body and returns its `code`.
pub fn problem_code(body: &[u8], status: u16) -> String {
    let json: serde_json::Value = serde_json::from_slice(body).expect("problem body is JSON");
    assert_eq!(json["status"], status, "{json}");
    let code = json["code"].as_str().expect("problem has a code");
    assert!(!code.is_empty(), "{json}");
    assert!(
        json["detail"].as_str().is_some_and(|d| !d.is_empty()),
        "{json}"
    );
    code.to_owned()
}

// ---------------------------------------------------------------------------
// Raw HTTP/1.1
// ---------------------------------------------------------------------------

/// A response read off a raw socket.
#[derive(Debug)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Headers in order, names lower-cased.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body (de-chunked).
    pub body: Vec<u8>,
}

impl RawResponse {
    /// A header value as text.
    pub fn header(&self, name: &str) -> Option<String> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    }

    /// Asserts a problem answer and returns its `code`.
    pub fn expect_problem(&self, status: u16) -> String {
        assert_eq!(self.status, status, "{self:?}");
        assert_eq!(
            self.header("content-type").as_deref(),
            Some("application/problem+json")
        );
        assert_eq!(
            self.header("x-content-type-options").as_deref(),
            Some("nosniff")
        );
        problem_code(&self.body, status)
    }
}

/// Sends `request` verbatim on a new connection and reads the answer until
/// the server closes it (send `Connection: close`).
pub async fn raw_http(addr: SocketAddr, request: &[u8]) -> RawResponse {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    socket.write_all(request).await.expect("write request");
    read_raw_response(&mut socket).await
}

/// Reads one response off `socket` until EOF (bounded by [`HANG_GUARD`]).
pub async fn read_raw_response(socket: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    tokio::time::timeout(HANG_GUARD, socket.read_to_end(&mut buffer))
        .await
        .expect("raw response timed out")
        .expect("read raw response");
    parse_raw_response(&buffer)
}

/// Reads exactly one response head (and its body when it has a length or
/// is chunked) without waiting for EOF.
pub async fn read_one_response(socket: &mut TcpStream) -> RawResponse {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(complete) = complete_response(&buffer) {
            return parse_raw_response(&buffer[..complete]);
        }
        let n = tokio::time::timeout(HANG_GUARD, socket.read(&mut chunk))
            .await
            .expect("response timed out")
            .expect("read response");
        if n == 0 {
            return parse_raw_response(&buffer);
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// Everything the server sends on `socket` until it closes the connection
/// (bounded by [`HANG_GUARD`]).
pub async fn read_until_closed(socket: &mut TcpStream) -> Vec<u8> {
    let mut rest = Vec::new();
    tokio::time::timeout(HANG_GUARD, socket.read_to_end(&mut rest))
        .await
        .expect("the server did not close the connection")
        .unwrap_or_default();
    rest
}

/// Reads `count` pipelined responses off `socket`, in order.
pub async fn read_responses(socket: &mut TcpStream, count: usize) -> Vec<RawResponse> {
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let mut responses = Vec::new();
    while responses.len() < count {
        if let Some(complete) = complete_response(&buffer) {
            responses.push(parse_raw_response(&buffer[..complete]));
            buffer.drain(..complete);
            continue;
        }
        let n = tokio::time::timeout(HANG_GUARD, socket.read(&mut chunk))
            .await
            .expect("response timed out")
            .expect("read response");
        assert!(
            n > 0,
            "closed after {} of {count} responses",
            responses.len()
        );
        buffer.extend_from_slice(&chunk[..n]);
    }
    assert!(buffer.is_empty(), "more than {count} responses");
    responses
}

fn head_end(buffer: &[u8]) -> Option<usize> {
    buffer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|i| i + 4)
}

/// The length of the first complete response in `buffer`, if there is one.
fn complete_response(buffer: &[u8]) -> Option<usize> {
    let end = head_end(buffer)?;
    let parsed = parse_head(&buffer[..end]);
    let body = &buffer[end..];
    if parsed.status == 204 || parsed.status == 304 || parsed.status / 100 == 1 {
        return Some(end);
    }
    let value = |name: &str| {
        parsed
            .headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).to_ascii_lowercase())
    };
    if value("transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        return dechunk(body).map(|(_, used)| end + used);
    }
    let length: usize = value("content-length")?.trim().parse().ok()?;
    (body.len() >= length).then_some(end + length)
}

struct Head {
    status: u16,
    headers: Vec<(String, Vec<u8>)>,
}

fn parse_head(head: &[u8]) -> Head {
    let mut lines = head
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let status_line = String::from_utf8_lossy(lines.next().expect("status line")).into_owned();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|line| {
            let colon = line.iter().position(|&b| b == b':').expect("header colon");
            let name = String::from_utf8_lossy(&line[..colon]).to_ascii_lowercase();
            (name, line[colon + 1..].trim_ascii().to_vec())
        })
        .collect();
    Head { status, headers }
}

/// Decodes a chunked body; `None` if it is incomplete.
fn dechunk(mut body: &[u8]) -> Option<(Vec<u8>, usize)> {
    let total = body.len();
    let mut out = Vec::new();
    loop {
        let line_end = body.windows(2).position(|w| w == b"\r\n")?;
        let size_text = String::from_utf8_lossy(&body[..line_end]);
        let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
        body = &body[line_end + 2..];
        if size == 0 {
            // Skip (empty) trailers.
            let trailer_end = body.windows(2).position(|w| w == b"\r\n")?;
            body = &body[trailer_end + 2..];
            return Some((out, total - body.len()));
        }
        if body.len() < size + 2 {
            return None;
        }
        out.extend_from_slice(&body[..size]);
        body = &body[size + 2..];
    }
}

/// Parses a complete response (head plus body up to EOF).
pub fn parse_raw_response(buffer: &[u8]) -> RawResponse {
    let end = head_end(buffer).unwrap_or_else(|| {
        panic!(
            "no complete response head in {:?}",
            String::from_utf8_lossy(buffer)
        )
    });
    let Head { status, headers } = parse_head(&buffer[..end]);
    let rest = &buffer[end..];
    let chunked = headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && String::from_utf8_lossy(v).contains("chunked"));
    let body = if chunked {
        dechunk(rest)
            .map(|(b, _)| b)
            .unwrap_or_else(|| rest.to_vec())
    } else {
        match headers
            .iter()
            .find(|(n, _)| n == "content-length")
            .and_then(|(_, v)| String::from_utf8_lossy(v).trim().parse::<usize>().ok())
        {
            Some(len) => rest[..len.min(rest.len())].to_vec(),
            None => rest.to_vec(),
        }
    };
    RawResponse {
        status,
        headers,
        body,
    }
}

// ---------------------------------------------------------------------------
// Server-Sent Events
// ---------------------------------------------------------------------------

/// One SSE event as received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `event:` field.
    pub event: String,
    /// Each `data:` line, as sent.
    pub data_lines: Vec<String>,
}

impl SseEvent {
    /// The data lines joined with `\n`, as an EventSource would.
    pub fn data(&self) -> String {
        self.data_lines.join("\n")
    }

    /// The control event's JSON.
    pub fn control(&self) -> serde_json::Value {
        assert_eq!(self.event, "control", "{self:?}");
        serde_json::from_str(&self.data()).expect("control data is JSON")
    }

    /// Whether this is a control event with `streamClosed: true`.
    pub fn is_closing_control(&self) -> bool {
        self.event == "control" && self.control()["streamClosed"] == true
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, String>> + Send>>;

/// Reads SSE events off a streaming response.
pub struct SseReader {
    stream: ByteStream,
    buffer: Vec<u8>,
    /// Every byte received so far, for assertions on the exact wire form.
    pub raw: Vec<u8>,
    ended: bool,
    guard: Duration,
}

impl SseReader {
    /// Wraps a `200 text/event-stream` response.
    pub fn new(response: reqwest::Response) -> Self {
        Self {
            stream: Box::pin(
                response
                    .bytes_stream()
                    .map(|r| r.map_err(|e| e.to_string())),
            ),
            buffer: Vec::new(),
            raw: Vec::new(),
            ended: false,
            guard: HANG_GUARD,
        }
    }

    /// Uses another hang guard (e.g. under paused time).
    pub fn with_guard(mut self, guard: Duration) -> Self {
        self.guard = guard;
        self
    }

    /// The next event, or `None` once the server ended the response.
    pub async fn next_event(&mut self) -> Option<SseEvent> {
        loop {
            if let Some(event) = self.take_event() {
                return Some(event);
            }
            if self.ended {
                assert!(
                    self.buffer.iter().all(|b| *b == b'\n'),
                    "response ended inside an event: {:?}",
                    String::from_utf8_lossy(&self.buffer)
                );
                return None;
            }
            match tokio::time::timeout(self.guard, self.stream.next())
                .await
                .expect("no SSE event within the hang guard")
            {
                Some(Ok(chunk)) => {
                    self.raw.extend_from_slice(&chunk);
                    self.buffer.extend_from_slice(&chunk);
                }
                Some(Err(error)) => panic!("SSE body failed: {error}"),
                None => self.ended = true,
            }
        }
    }

    /// Events until the server ends the response.
    pub async fn rest(&mut self) -> Vec<SseEvent> {
        let mut events = Vec::new();
        while let Some(event) = self.next_event().await {
            events.push(event);
        }
        events
    }

    /// The next `n` events (panics if the response ends first).
    pub async fn take(&mut self, n: usize) -> Vec<SseEvent> {
        let mut events = Vec::with_capacity(n);
        for i in 0..n {
            let event = self
                .next_event()
                .await
                .unwrap_or_else(|| panic!("SSE ended after {i} of {n} events"));
            events.push(event);
        }
        events
    }

    fn take_event(&mut self) -> Option<SseEvent> {
        // The server frames with LF only; a blank line ends an event.
        while self.buffer.first() == Some(&b'\n') {
            self.buffer.remove(0);
        }
        let end = self.buffer.windows(2).position(|w| w == b"\n\n")?;
        let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
        let text = String::from_utf8(block).expect("SSE is UTF-8");
        let mut event = SseEvent {
            event: "message".into(),
            data_lines: Vec::new(),
        };
        for line in text.trim_end_matches('\n').split('\n') {
            if let Some(value) = line.strip_prefix("event:") {
                event.event = value.trim_start().to_owned();
            } else if let Some(value) = line.strip_prefix("data:") {
                event.data_lines.push(value.to_owned());
            } else if line.starts_with(':') {
                // comment
            } else {
                panic!("unexpected SSE line {line:?} in {text:?}");
            }
        }
        Some(event)
    }
}

/// Opens an SSE read on a raw socket (`target` is path and query) and
/// checks the response head; the body is de-chunked by hand.
pub async fn open_sse_raw(addr: SocketAddr, target: &str) -> SseReader {
    let mut socket = TcpStream::connect(addr).await.expect("connect");
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut buffer = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = loop {
        if let Some(end) = head_end(&buffer) {
            break end;
        }
        let n = tokio::time::timeout(HANG_GUARD, socket.read(&mut chunk))
            .await
            .expect("SSE head timed out")
            .expect("read SSE head");
        assert!(n > 0, "connection closed before the SSE head");
        buffer.extend_from_slice(&chunk[..n]);
    };
    let head = parse_head(&buffer[..end]);
    assert_eq!(head.status, 200, "SSE {target}");
    let value = |name: &str| {
        head.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(value("content-type").as_deref(), Some("text/event-stream"));
    assert_eq!(value("transfer-encoding").as_deref(), Some("chunked"));
    let pending = buffer.split_off(end);
    let stream = futures_util::stream::unfold(
        (socket, pending, false),
        |(mut socket, mut pending, done)| async move {
            if done {
                return None;
            }
            loop {
                match next_chunk(&pending) {
                    ChunkParse::Data(data, used) => {
                        pending.drain(..used);
                        return Some((Ok(Bytes::from(data)), (socket, pending, false)));
                    }
                    ChunkParse::End => return None,
                    ChunkParse::Incomplete => {}
                }
                let mut chunk = [0u8; 4096];
                match socket.read(&mut chunk).await {
                    Ok(0) => return None,
                    Ok(n) => pending.extend_from_slice(&chunk[..n]),
                    Err(error) => return Some((Err(error.to_string()), (socket, pending, true))),
                }
            }
        },
    );
    SseReader {
        stream: Box::pin(stream),
        buffer: Vec::new(),
        raw: Vec::new(),
        ended: false,
        guard: HANG_GUARD,
    }
}

enum ChunkParse {
    Data(Vec<u8>, usize),
    End,
    Incomplete,
}

/// The first chunk of a chunked body in `buffer`.
fn next_chunk(buffer: &[u8]) -> ChunkParse {
    let Some(line_end) = buffer.windows(2).position(|w| w == b"\r\n") else {
        return ChunkParse::Incomplete;
    };
    let size_text = String::from_utf8_lossy(&buffer[..line_end]);
    let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
        .unwrap_or_else(|_| panic!("bad chunk size line {size_text:?}"));
    if size == 0 {
        return ChunkParse::End;
    }
    let start = line_end + 2;
    if buffer.len() < start + size + 2 {
        return ChunkParse::Incomplete;
    }
    ChunkParse::Data(buffer[start..start + size].to_vec(), start + size + 2)
}

/// Opens an SSE read of `url` and checks the response head.
pub async fn open_sse(client: &reqwest::Client, url: &str) -> SseReader {
    let response = client.get(url).send().await.expect("SSE GET");
    assert_eq!(response.status(), 200, "SSE {url}");
    assert_eq!(header(&response, "content-type"), "text/event-stream");
    SseReader::new(response)
}

// ---------------------------------------------------------------------------
// The real binary
// ---------------------------------------------------------------------------

/// A free loopback port: bound, then released for the child to take. The
/// tiny window in which another process could take it is acceptable here.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind a probe port")
        .local_addr()
        .expect("probe address")
        .port()
}

/// The binary as a child process on a free loopback port, for what is
/// process-wide: signals, the metrics recorder, the tracing subscriber.
pub struct ChildServer {
    /// The process.
    pub child: tokio::process::Child,
    /// Its main listener.
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`.
    pub base_url: String,
    log: Arc<std::sync::Mutex<String>>,
}

/// The address on the first complete log line (text or JSON) of the
/// listener `message` names: `listening` (the main one) or `metrics
/// listening`.
fn logged_address(log: &str, message: &str) -> Option<SocketAddr> {
    const LOOPBACK: &str = "127.0.0.1:";
    log.split_inclusive('\n')
        .filter(|line| line.ends_with('\n') && line.contains(message))
        .filter(|line| message != "listening" || !line.contains("metrics listening"))
        .find_map(|line| {
            let rest = &line[line.find(LOOPBACK)? + LOOPBACK.len()..];
            let digits = rest.len() - rest.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            format!("{LOOPBACK}{}", &rest[..digits]).parse().ok()
        })
}

/// Waits for the main listener's address on the server's log.
async fn listening_address(
    log: &std::sync::Mutex<String>,
    child: &mut tokio::process::Child,
) -> SocketAddr {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let text = log.lock().expect("log lock").clone();
        if let Some(addr) = logged_address(&text, "listening") {
            return addr;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the server exited ({status}) before listening; log:\n{text}");
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never logged its address; log:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

impl ChildServer {
    /// Starts the binary with only `env` (plus its own bind address) in its
    /// environment, so no stray `OTEL_*` or `DS_*` variable changes the
    /// test, and waits until `/readyz` answers `200`.
    ///
    /// The server binds port 0 and the test reads the port off its
    /// `listening` log line: a port probed free and handed over could be
    /// taken by anything else on a busy machine before the child binds it.
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_durable-streams-server"))
            .env_clear()
            .env("DS_SERVER__BIND_ADDRESS", "127.0.0.1:0")
            .envs(env.iter().copied())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("start the server binary");
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        // Logs go to stdout; startup failures to stderr. Keep both.
        let stdout = child.stdout.take().expect("stdout");
        let stderr = child.stderr.take().expect("stderr");
        for mut pipe in [
            Box::new(stdout) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            Box::new(stderr),
        ] {
            let sink = log.clone();
            tokio::spawn(async move {
                let mut buffer = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buffer).await {
                    if n == 0 {
                        break;
                    }
                    sink.lock()
                        .expect("log lock")
                        .push_str(&String::from_utf8_lossy(&buffer[..n]));
                }
            });
        }
        let addr = listening_address(&log, &mut child).await;
        let server = Self {
            child,
            base_url: format!("http://{addr}"),
            addr,
            log,
        };
        server.wait_ready().await;
        server
    }

    async fn wait_ready(&self) {
        let probe = client();
        let deadline = tokio::time::Instant::now() + HANG_GUARD;
        loop {
            if let Ok(response) = probe.get(format!("{}/readyz", self.base_url)).send().await
                && response.status() == 200
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "server never became ready; log:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The separate metrics listener's address (configure it on port 0),
    /// as logged before the server became ready.
    pub fn metrics_address(&self) -> SocketAddr {
        logged_address(&self.log(), "metrics listening").expect("a metrics listening line")
    }

    /// Everything the process printed so far.
    pub fn log(&self) -> String {
        self.log.lock().expect("log lock").clone()
    }

    /// The JSON log lines printed so far (start it with
    /// `DS_OBSERVABILITY__LOG_FORMAT=json`).
    pub fn json_log(&self) -> Vec<serde_json::Value> {
        self.log()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }

    /// The URL of stream `name` under the default base path.
    pub fn url(&self, name: &str) -> String {
        format!("{}/v1/stream/{name}", self.base_url)
    }

    /// Any URL on this server.
    pub fn at(&self, path: &str) -> String {
        format!("{}{path}", self.base_url)
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let pid = self.child.id().expect("child is running");
        let status = std::process::Command::new("kill")
            .arg("-TERM")
            .arg(pid.to_string())
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -TERM {pid}");
    }

    /// Waits (bounded by `limit`) for the process to exit.
    pub async fn exited(&mut self, limit: Duration) -> std::process::ExitStatus {
        match tokio::time::timeout(limit, self.child.wait()).await {
            Ok(status) => status.expect("wait for the server"),
            Err(_) => panic!("server did not exit within {limit:?}; log:\n{}", self.log()),
        }
    }
}

// ---------------------------------------------------------------------------
// Prometheus text format
// ---------------------------------------------------------------------------

/// The value of the sample `name{labels}` in a scrape, labels compared as a
/// set (order and quoting as rendered do not matter).
pub fn sample(scrape: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    scrape
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.strip_suffix('}')?),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let mut found: Vec<(String, String)> = Vec::new();
            let mut rest = series_labels;
            while !rest.is_empty() {
                let (key, after) = rest.split_once("=\"")?;
                // Label values here never contain `"` or `\`.
                let (value, after) = after.split_once('"')?;
                found.push((key.to_owned(), value.to_owned()));
                rest = after.strip_prefix(',').unwrap_or(after);
            }
            let wanted: Vec<(String, String)> = labels
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect();
            (found.len() == wanted.len() && wanted.iter().all(|w| found.contains(w)))
                .then(|| value.parse().ok())
                .flatten()
        })
}
