//! The caching tier of deploy/nginx/durable-streams-cache.conf, run by a real
//! nginx in front of the release binary: the test starts both on free
//! ports, with the config file changed only in its listen port and upstream
//! address, and counts what reaches the server with the server's own
//! `durable_streams_http_requests_total`.
//!
//! nginx must be installed (Debian `nginx-light`; `scripts/test-all.sh`
//! installs it). `NGINX` names the binary when it is not `nginx` on `PATH`
//! or `/usr/sbin/nginx`.

use std::fs::File;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use reqwest::StatusCode;
use tempfile::TempDir;

/// The server under test.
const SERVER_BIN: &str = env!("CARGO_BIN_EXE_durable-streams-server");
/// The caching tier's configuration, as operators deploy it.
const CACHE_CONF: &str = include_str!("../deploy/nginx/durable-streams-cache.conf");
/// Hang guard for one network wait; never an assertion about speed. Shorter
/// than the server's SSE reconnect interval (60 s), so an SSE event that
/// nginx held in a buffer would not arrive in time.
const HANG_GUARD: Duration = Duration::from_secs(20);
/// The route label of stream requests.
const STREAM_ROUTE: &str = "/v1/stream/{*name}";

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .expect("a free port")
}

/// Starts `command` with standard output to `dir/stdout` and standard error
/// to `dir/stderr`, and waits until it listens on `port`.
fn start_listening(command: &mut Command, what: &str, port: u16, dir: &Path) -> Child {
    let errors = dir.join("stderr");
    let mut child = command
        .stdin(Stdio::null())
        .stdout(File::create(dir.join("stdout")).expect("stdout file"))
        .stderr(File::create(&errors).expect("stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("start {what}: {error}"));
    let deadline = Instant::now() + HANG_GUARD;
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "{what} exited ({status}) before listening: {}",
                std::fs::read_to_string(&errors).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "{what} never listened on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// The release binary on a free port, memory storage, JSON logs to a file,
/// trusting forwarding headers from loopback (where nginx runs).
struct Origin {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Origin {
    fn start() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let port = free_port();
        let child = start_listening(
            Command::new(SERVER_BIN)
                .current_dir(dir.path())
                .env_clear()
                .env("DS_SERVER__BIND_ADDRESS", format!("127.0.0.1:{port}"))
                .env("DS_OBSERVABILITY__LOG_FORMAT", "json")
                .env("DS_PROXY__ENABLED", "true")
                .env("DS_PROXY__FORWARDED_HEADERS", "x-forwarded")
                .env("DS_PROXY__TRUSTED_PROXIES", "127.0.0.1"),
            "the server",
            port,
            dir.path(),
        );
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The sum of the server's metric samples whose line starts with `prefix`.
    async fn metric(&self, prefix: &str) -> u64 {
        let text = reqwest::get(format!("{}/metrics", self.url()))
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("scrape the server")
            .text()
            .await
            .expect("metrics text");
        text.lines()
            .filter(|line| line.starts_with(prefix))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    }

    /// Requests the server answered, by method, on stream routes.
    async fn answered(&self, method: &str) -> u64 {
        self.metric(&format!(
            "durable_streams_http_requests_total{{method=\"{method}\",route=\"{STREAM_ROUTE}\","
        ))
        .await
    }

    /// The server's JSON log lines.
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }
}

impl Drop for Origin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn nginx_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("NGINX") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .map(|dir| dir.join("nginx"))
        .find(|candidate| candidate.is_file());
    on_path
        .or_else(|| Some(PathBuf::from("/usr/sbin/nginx")).filter(|p| p.is_file()))
        .expect(
            "nginx is not installed: apt-get install nginx-light \
             (scripts/test-all.sh installs it), or set NGINX to its path",
        )
}

/// `deploy/nginx/durable-streams-cache.conf` with only its listen port and
/// upstream changed.
fn cache_conf(listen_port: u16, upstream_port: u16) -> String {
    let replace_once = |text: &str, from: &str, to: &str| {
        assert_eq!(
            text.matches(from).count(),
            1,
            "the cache config must contain {from:?} once"
        );
        text.replace(from, to)
    };
    let text = replace_once(
        CACHE_CONF,
        "server 127.0.0.1:4437;",
        &format!("server 127.0.0.1:{upstream_port};"),
    );
    replace_once(
        &text,
        "listen 8080;",
        &format!("listen 127.0.0.1:{listen_port};"),
    )
}

/// nginx with the caching tier's config, in its own prefix directory, which
/// also holds its output.
struct Cache {
    child: Child,
    port: u16,
    dir: TempDir,
}

impl Cache {
    fn start(origin: &Origin) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        // Run as root, nginx's workers switch to an unprivileged user that
        // must reach the cache and temporary directories it creates here.
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))
                .expect("chmod the prefix");
        }
        let port = free_port();
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, cache_conf(port, origin.port)).expect("write nginx.conf");
        let child = start_listening(
            Command::new(nginx_binary())
                .arg("-p")
                .arg(format!("{}/", dir.path().display()))
                .arg("-c")
                .arg(&conf),
            "nginx",
            port,
            dir.path(),
        );
        Self { child, port, dir }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// nginx's access log (its standard output).
    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stdout")).unwrap_or_default()
    }
}

impl Drop for Cache {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers (SIGKILL would orphan them).
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(HANG_GUARD * 3)
        .build()
        .expect("client")
}

fn cache_status(response: &reqwest::Response) -> String {
    response
        .headers()
        .get("x-cache-status")
        .and_then(|value| value.to_str().ok())
        .unwrap_or("-")
        .to_owned()
}

fn header(response: &reqwest::Response, name: &str) -> String {
    response
        .headers()
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_owned()
}

/// Creates a text stream at `name` through `base` and appends `body`.
async fn create_with(client: &reqwest::Client, base: &str, name: &str, body: &str) -> String {
    let url = format!("{base}/v1/stream/{name}");
    let created = client
        .put(&url)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    append(client, &url, body).await;
    url
}

async fn append(client: &reqwest::Client, url: &str, body: &str) -> String {
    let appended = client
        .post(url)
        .header("content-type", "text/plain")
        .body(body.to_owned())
        .send()
        .await
        .expect("append");
    assert!(
        appended.status().is_success(),
        "append: {}",
        appended.status()
    );
    header(&appended, "stream-next-offset")
}

#[tokio::test]
async fn a_repeated_catch_up_read_is_answered_by_the_cache() {
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    let client = client();
    let url = create_with(&client, &cache.url(), "catch-up", "hello").await;
    let read = format!("{url}?offset=-1");

    let before = origin.answered("GET").await;
    let first = client.get(&read).send().await.expect("first read");
    assert_eq!(first.status(), StatusCode::OK);
    assert_eq!(cache_status(&first), "MISS");
    let etag = header(&first, "etag");
    let tail = header(&first, "stream-next-offset");
    assert_eq!(first.text().await.expect("body"), "hello");
    let second = client.get(&read).send().await.expect("second read");
    assert_eq!(cache_status(&second), "HIT");
    assert_eq!(header(&second, "etag"), etag);
    assert_eq!(second.text().await.expect("body"), "hello");
    // A conditional repeat is answered 304 by the cache from the same entry.
    let conditional = client
        .get(&read)
        .header("if-none-match", &etag)
        .send()
        .await
        .expect("conditional read");
    assert_eq!(conditional.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(
        origin.answered("GET").await - before,
        1,
        "only the first read may reach the server"
    );

    // At the tail the server says `no-cache`: every such read reaches it,
    // and the first one after an append sees the new data.
    let at_tail = format!("{url}?offset={tail}");
    let before = origin.answered("GET").await;
    for _ in 0..2 {
        let empty = client.get(&at_tail).send().await.expect("read at tail");
        assert_eq!(empty.status(), StatusCode::OK);
        assert_ne!(cache_status(&empty), "HIT");
        assert_eq!(empty.text().await.expect("body"), "");
    }
    append(&client, &url, " world").await;
    let fresh = client
        .get(&at_tail)
        .send()
        .await
        .expect("read after append");
    assert_eq!(fresh.text().await.expect("body"), " world");
    assert_eq!(origin.answered("GET").await - before, 3);

    // HEAD always shows the current tail: never cached, never a GET.
    let before = (origin.answered("HEAD").await, origin.answered("GET").await);
    let mut tails = Vec::new();
    for body in ["!", "?"] {
        let head = client.head(&url).send().await.expect("HEAD");
        assert_eq!(head.status(), StatusCode::OK);
        tails.push(header(&head, "stream-next-offset"));
        append(&client, &url, body).await;
    }
    assert_ne!(tails[0], tails[1], "a HEAD answered from a cache");
    assert_eq!(
        (origin.answered("HEAD").await, origin.answered("GET").await),
        (before.0 + 2, before.1)
    );
}

#[tokio::test]
async fn writes_always_reach_the_server() {
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    let client = client();
    let url = format!("{}/v1/stream/writes", cache.url());
    let (puts, posts, deletes) = (
        origin.answered("PUT").await,
        origin.answered("POST").await,
        origin.answered("DELETE").await,
    );
    for _ in 0..2 {
        let created = client
            .put(&url)
            .header("content-type", "text/plain")
            .send()
            .await
            .expect("PUT");
        assert!(created.status().is_success(), "{}", created.status());
        assert_ne!(cache_status(&created), "HIT");
    }
    let mut tails = Vec::new();
    for _ in 0..3 {
        tails.push(append(&client, &url, "same bytes").await);
    }
    tails.dedup();
    assert_eq!(
        tails.len(),
        3,
        "identical appends answered alike: {tails:?}"
    );
    for _ in 0..2 {
        let deleted = client.delete(&url).send().await.expect("DELETE");
        assert_ne!(cache_status(&deleted), "HIT");
    }
    assert_eq!(
        (
            origin.answered("PUT").await - puts,
            origin.answered("POST").await - posts,
            origin.answered("DELETE").await - deletes
        ),
        (2, 3, 2)
    );
    assert!(
        !cache.access_log().contains("cache=HIT"),
        "{}",
        cache.access_log()
    );
}

#[tokio::test]
async fn requests_with_credentials_always_reach_the_server() {
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    let client = client();
    let url = create_with(&client, &cache.url(), "private", "secret").await;
    let read = format!("{url}?offset=-1");
    // An anonymous read fills the cache entry for this URL.
    let anonymous = client.get(&read).send().await.expect("anonymous read");
    assert_eq!(cache_status(&anonymous), "MISS");

    let before = origin.answered("GET").await;
    let credentials: [(&str, &str, &str); 4] = [
        ("authorization", "Bearer token-of-alice", ""),
        ("authorization", "Bearer token-of-bob", ""),
        ("x-client-identity", "carol", ""),
        ("", "", "&access_token=token-of-dave"),
    ];
    for (name, value, query) in credentials {
        for _ in 0..2 {
            let mut request = client.get(format!("{read}{query}"));
            if !name.is_empty() {
                request = request.header(name, value);
            }
            let response = request.send().await.expect("read with credentials");
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(
                cache_status(&response),
                "BYPASS",
                "{name}{query} answered from the cache"
            );
        }
    }
    assert_eq!(origin.answered("GET").await - before, 8);

    // Nor are their answers stored for others: the first anonymous read of
    // a URL read before only with a token still reaches the server.
    let fresh = format!("{url}?offset=0000000000000000_0000000000000001");
    for token in ["Bearer token-of-alice", "Bearer token-of-bob"] {
        let response = client
            .get(&fresh)
            .header("authorization", token)
            .send()
            .await
            .expect("read with a token");
        assert_eq!(response.text().await.expect("body"), "ecret");
    }
    let after = client.get(&fresh).send().await.expect("anonymous read");
    assert_eq!(cache_status(&after), "MISS");

    // Long-polls with different tokens are not collapsed into one.
    let tail = header(&anonymous, "stream-next-offset");
    let before = origin.answered("GET").await;
    let polls: Vec<_> = (0..4)
        .map(|n| {
            let request = client
                .get(format!("{url}?live=long-poll&offset={tail}"))
                .header("authorization", format!("Bearer reader-{n}"))
                .send();
            tokio::spawn(request)
        })
        .collect();
    wait_for_live_readers(&origin, 4).await;
    append(&client, &url, "!").await;
    for poll in polls {
        let response = poll.await.expect("join").expect("long-poll");
        assert_eq!(response.text().await.expect("body"), "!");
    }
    assert_eq!(origin.answered("GET").await - before, 4);
}

/// Waits until the server holds `count` long-polls.
async fn wait_for_live_readers(origin: &Origin, count: u64) {
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let waiting = origin
            .metric("durable_streams_live_readers{mode=\"long_poll\"}")
            .await;
        if waiting >= count {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "only {waiting} of {count} long-polls reached the server"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn server_sent_events_pass_through_unbuffered() {
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    let client = client();
    let url = create_with(&client, &cache.url(), "events", "first").await;
    // Two readers of the same URL, both live at once.
    let mut readers = Vec::new();
    for _ in 0..2 {
        let response = client
            .get(format!("{url}?offset=-1&live=sse"))
            .send()
            .await
            .expect("SSE");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(header(&response, "content-type"), "text/event-stream");
        assert_eq!(header(&response, "x-accel-buffering"), "no");
        readers.push((response.bytes_stream(), String::new()));
    }
    // The catch-up event, then an append made while they wait: each arrives
    // while the responses are still open (the server ends them only after
    // 60 s), so nothing waited in a proxy buffer for the response to end.
    for (expected, then_append) in [("first", Some("second")), ("second", None)] {
        for (body, seen) in &mut readers {
            let arrived = tokio::time::timeout(HANG_GUARD, async {
                while !seen.contains(&format!("data:{expected}")) {
                    let chunk = body
                        .next()
                        .await
                        .expect("the SSE response ended")
                        .expect("SSE chunk");
                    seen.push_str(&String::from_utf8_lossy(&chunk));
                }
            })
            .await;
            assert!(arrived.is_ok(), "{expected:?} did not arrive: {seen:?}");
        }
        if let Some(next) = then_append {
            append(&client, &url, next).await;
        }
    }

    // Asked for by its Accept header alone, an event stream is never cached.
    let before = origin.answered("GET").await;
    for _ in 0..2 {
        let response = client
            .get(format!("{url}?offset=-1"))
            .header("accept", "text/event-stream")
            .send()
            .await
            .expect("read");
        assert_eq!(response.status(), StatusCode::OK);
    }
    assert_eq!(origin.answered("GET").await - before, 2);
}

#[tokio::test]
async fn the_server_sees_the_client_behind_the_cache() {
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    let client = client();
    let response = client
        .put(format!("{}/v1/stream/forwarded", cache.url()))
        .header("content-type", "text/plain")
        .header("x-forwarded-for", "203.0.113.9")
        .send()
        .await
        .expect("PUT");
    assert_eq!(response.status(), StatusCode::CREATED);
    // nginx appends the peer it saw (loopback, trusted), so the server
    // names the address before it.
    let deadline = Instant::now() + HANG_GUARD;
    loop {
        let line = origin
            .log()
            .lines()
            .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
            .find(|event| event["method"] == "PUT" && event["stream"] == "/v1/stream/forwarded");
        if let Some(event) = line {
            assert_eq!(event["client"], "203.0.113.9", "{event}");
            assert_eq!(event["peer"], "127.0.0.1", "{event}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no access line: {}",
            origin.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `readers` long-poll readers following one stream through `base` (as the
/// protocol's clients do: next offset, echoed cursor, sorted parameters)
/// while `appends` messages are appended a second apart; returns the
/// requests the server answered per append. Every reader must receive every
/// message, in order.
async fn follow(origin: &Origin, base: &str, name: &str, readers: usize, appends: usize) -> f64 {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(readers)
        .timeout(HANG_GUARD * 3)
        .build()
        .expect("client");
    let writer = client.clone();
    let origin_stream = format!("{}/v1/stream/{name}", origin.url());
    let created = writer
        .put(&origin_stream)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("create");
    assert_eq!(created.status(), StatusCode::CREATED);
    let start = header(&created, "stream-next-offset");
    let expected: String = (0..appends).map(|n| format!("message {n};")).collect();
    let expected = Arc::new(expected);
    let stream = format!("{base}/v1/stream/{name}");
    let before = origin.answered("GET").await;
    let tasks: Vec<_> = (0..readers)
        .map(|_| {
            let (client, stream, expected, mut offset) = (
                client.clone(),
                stream.clone(),
                Arc::clone(&expected),
                start.clone(),
            );
            tokio::spawn(async move {
                let mut received = String::new();
                let mut cursor: Option<String> = None;
                while received.len() < expected.len() {
                    let query = match &cursor {
                        Some(cursor) => format!("cursor={cursor}&live=long-poll&offset={offset}"),
                        None => format!("live=long-poll&offset={offset}"),
                    };
                    let response = client
                        .get(format!("{stream}?{query}"))
                        .send()
                        .await
                        .expect("long-poll");
                    assert!(response.status().is_success(), "{}", response.status());
                    offset = header(&response, "stream-next-offset");
                    cursor = Some(header(&response, "stream-cursor")).filter(|c| !c.is_empty());
                    received.push_str(&response.text().await.expect("body"));
                }
                assert_eq!(received, *expected);
            })
        })
        .collect();
    // Let the readers' first requests arrive; a late one is answered from
    // data already there, which changes nothing below.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for n in 0..appends {
        append(&writer, &origin_stream, &format!("message {n};")).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let finished = tokio::time::timeout(HANG_GUARD * 2, futures_util::future::join_all(tasks))
        .await
        .expect("the readers did not receive every message");
    for reader in finished {
        reader.expect("a reader failed");
    }
    (origin.answered("GET").await - before) as f64 / appends as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_long_poll_readers_are_collapsed_into_few_server_requests() {
    const READERS: usize = 1000;
    const APPENDS: usize = 5;
    let origin = Origin::start();
    let cache = Cache::start(&origin);
    // The yardstick, straight to the server: about one request per reader
    // and append.
    let direct = follow(&origin, &origin.url(), "direct", READERS, APPENDS).await;
    let cached = follow(&origin, &cache.url(), "cached", READERS, APPENDS).await;
    eprintln!(
        "{READERS} long-poll readers, {APPENDS} appends: {direct:.1} server requests per append \
         without the cache, {cached:.1} through it"
    );
    assert!(
        direct >= READERS as f64 * 0.5,
        "without the cache only {direct} requests per append reached the server: the count is broken"
    );
    assert!(
        cached * 20.0 <= READERS as f64,
        "through the cache {cached} requests per append reached the server ({READERS} readers)"
    );
}
