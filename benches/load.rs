//! Load tool for Durable Streams servers (any implementation of the
//! protocol, not only this crate's): append throughput, catch-up read
//! throughput, append → delivery latency with fan-out, server memory, and the
//! raw fsync rate of a disk for comparison. Every request goes over
//! keep-alive HTTP/1.1 connections.
//!
//! Run with `cargo bench --bench load -- <command> [options]` (or the built
//! binary `target/release/deps/load-*`); `--help` lists everything.
//!
//! Every measuring command prints a readable line and, last, one JSON object
//! on standard output; `--out FILE` also appends that object as one line to
//! FILE, and `report FILE` turns such a file into a table with ratios.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde_json::{Value, json};

const HELP: &str = "\
usage: load <command> [--option value ...]

common options (measuring commands):
  --url URL          server origin (default http://127.0.0.1:4437)
  --base PATH        path under which streams live (default /v1/stream; use / for none)
  --label NAME       server label recorded in the JSON (default \"server\")
  --peer NAME        label of our server this one is compared against (report ratios)
  --name NAME        workload name recorded in the JSON (default derived from options)
  --out FILE         also append the JSON result as one line to FILE
  --ca FILE          PEM CA to trust for https:// URLs (rss-sse, rss-long-poll)

commands:
  append    [--streams 1] [--connections 32] [--seconds 5] [--size 64] [--json] [--producer]
            append throughput: C connections spread over N streams, binary or JSON
            bodies of SIZE bytes, optional idempotent-producer headers
  read      [--megabytes 64] [--size 4096] [--seconds 5]
            fills one stream with appends of SIZE bytes, then reads it from -1 to the
            tail again and again: MB/s and reads/s
  latency   [--mode sse|long-poll] [--subscribers 100] [--messages 200] [--interval-ms 5]
            append -> delivery latency p50/p99/max with 1 writer and N subscribers
  rss-streams --pid PID [--streams 100] [--messages 100000] [--size 64] [--connections 8]
            server RSS before, after creating N streams, after M appends of SIZE bytes
            spread over them: bytes per stream and overhead bytes per message
  rss-sse   --pid PID [--connections 10000] [--parallel 200]
            server RSS before and with M idle SSE connections (each past its first
            event) on one stream: bytes per connection
  rss-long-poll --pid PID [--connections 10000] [--parallel 200]
            the same with M long-polls waiting at the tail (the server's long-poll
            timeout must outlast the run); one append then answers them all, which
            checks that every one was waiting
  fanout    [--pid PID] [--streams 1] [--subscribers 10000] [--rate 50] [--seconds 10]
            [--size 64] [--parallel 200]
            SSE fan-out: SUBSCRIBERS per stream on STREAMS streams, one writer per
            stream appending RATE times a second: append -> delivery p50/p99/max over
            every delivery, deliveries missing at the end, and (with --pid) server RSS
            while all subscribers are connected
  rss       --pid PID                 one RSS reading
  fsync     [--dir .] [--seconds 3] [--size 64]   write+fdatasync rate of a disk
The tool raises its own open-file limit to the hard limit; the server needs
as many descriptors as connections (ulimit -n in the shell that starts it).
  report    FILE [--format markdown|text]  table of a results file, with ratios vs --peer
  free-port                           prints a free TCP port on 127.0.0.1
  wait-ready --url URL [--seconds 60] waits until the server answers HTTP with anything but 503
";

type Args = HashMap<String, String>;

/// Prints a line, ignoring a closed pipe (`| head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

/// Stops with a message: the tool's answer to a server that misbehaves.
macro_rules! fail {
    ($($arg:tt)*) => {{
        eprintln!("load: {}", format!($($arg)*));
        std::process::exit(1)
    }};
}

fn parse_args() -> (String, Vec<String>, Args) {
    let mut raw = std::env::args().skip(1).filter(|a| a != "--bench");
    let command = raw.next().unwrap_or_default();
    let mut args = Args::new();
    let mut positional = Vec::new();
    let mut pending: Option<String> = None;
    for item in raw {
        match (item.strip_prefix("--"), pending.take()) {
            (Some(flag), Some(previous)) => {
                args.insert(previous, "true".into());
                pending = Some(flag.to_owned());
            }
            (Some(flag), None) => pending = Some(flag.to_owned()),
            (None, Some(previous)) => {
                args.insert(previous, item);
            }
            (None, None) => positional.push(item),
        }
    }
    if let Some(flag) = pending {
        args.insert(flag, "true".into());
    }
    (command, positional, args)
}

fn num(args: &Args, key: &str, default: u64) -> u64 {
    match args.get(key) {
        None => default,
        Some(v) => v
            .parse()
            .unwrap_or_else(|_| fail!("--{key} wants a number, got {v:?}")),
    }
}

fn url(args: &Args) -> String {
    args.get("url")
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:4437".into())
        .trim_end_matches('/')
        .to_owned()
}

/// The URL prefix of streams: origin plus base path, without a trailing `/`.
fn stream_root(args: &Args) -> String {
    let base = args.get("base").map_or("/v1/stream", String::as_str);
    let base = base.trim_matches('/');
    if base.is_empty() {
        url(args)
    } else {
        format!("{}/{base}", url(args))
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .build()
        .unwrap_or_else(|e| fail!("http client: {e}"))
}

/// [`client`], trusting `--ca FILE` for `https://` URLs.
fn client_for(args: &Args) -> reqwest::Client {
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(4096);
    if let Some(ca) = args.get("ca") {
        let pem = std::fs::read(ca).unwrap_or_else(|e| fail!("{ca}: {e}"));
        let certificate =
            reqwest::Certificate::from_pem(&pem).unwrap_or_else(|e| fail!("{ca}: {e}"));
        builder = builder.add_root_certificate(certificate);
    }
    builder
        .build()
        .unwrap_or_else(|e| fail!("http client: {e}"))
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{:x}", std::process::id(), fastrand::u64(..))
}

async fn create(client: &reqwest::Client, root: &str, content_type: &str) -> String {
    let stream = format!("{root}/{}", unique("load"));
    match client
        .put(&stream)
        .header("content-type", content_type)
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => stream,
        Ok(response) => fail!("PUT {stream}: {}", response.status()),
        Err(error) => fail!("PUT {stream}: {error}"),
    }
}

async fn tail_of(client: &reqwest::Client, stream: &str) -> String {
    let response = client
        .head(stream)
        .send()
        .await
        .unwrap_or_else(|e| fail!("HEAD {stream}: {e}"));
    response
        .headers()
        .get("stream-next-offset")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
        .unwrap_or_else(|| fail!("HEAD {stream}: no Stream-Next-Offset"))
}

/// A JSON body of exactly `size` bytes (at least the 10 of `{"v":""}` plus one).
fn json_payload(size: usize) -> Bytes {
    Bytes::from(format!(
        "{{\"v\":\"{}\"}}",
        "x".repeat(size.saturating_sub(8).max(1))
    ))
}

/// A keep-alive HTTP/1.1 connection driven by hand: one request in flight,
/// no header maps or pools. Appends use it so that the load generator,
/// which shares the machine with the server, costs as little as possible.
struct RawConnection {
    authority: String,
    stream: Option<tokio::net::TcpStream>,
    buffer: Vec<u8>,
}

impl RawConnection {
    fn new(url: &str) -> (Self, String) {
        let (authority, path) = split_url(url);
        (
            Self {
                authority,
                stream: None,
                buffer: Vec::with_capacity(4096),
            },
            path,
        )
    }

    /// Head of a POST of `len` bytes to `path`, with extra header lines.
    fn post_head(&self, path: &str, content_type: &str, len: usize, extra: &str) -> Vec<u8> {
        format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: {content_type}\r\nContent-Length: {len}\r\n{extra}\r\n",
            self.authority
        )
        .into_bytes()
    }

    /// Sends one request and returns the response status (the body is read
    /// and dropped). Reconnects once if the server closed the connection.
    async fn send(&mut self, head: &[u8], body: &[u8]) -> std::io::Result<u16> {
        use tokio::io::AsyncWriteExt as _;
        for attempt in 0..2 {
            if self.stream.is_none() {
                let stream = tokio::net::TcpStream::connect(&self.authority).await?;
                stream.set_nodelay(true)?;
                self.stream = Some(stream);
            }
            let Some(stream) = self.stream.as_mut() else {
                continue;
            };
            // One write, so the request leaves in one segment as browsers'
            // and Node's clients send it.
            self.buffer.clear();
            self.buffer.extend_from_slice(head);
            self.buffer.extend_from_slice(body);
            let written = stream.write_all(&self.buffer).await;
            let outcome = match written {
                Ok(()) => self.read_response().await,
                Err(error) => Err(error),
            };
            match outcome {
                Ok((status, keep)) => {
                    if !keep {
                        self.stream = None;
                    }
                    return Ok(status);
                }
                Err(error) if attempt == 0 => {
                    let _ = error;
                    self.stream = None;
                }
                Err(error) => return Err(error),
            }
        }
        Err(std::io::Error::other("unreachable"))
    }

    async fn fill(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt as _;
        let stream = self
            .stream
            .as_mut()
            .ok_or_else(|| std::io::Error::other("not connected"))?;
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.buffer.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    /// Reads one response: (status, whether the connection stays open).
    async fn read_response(&mut self) -> std::io::Result<(u16, bool)> {
        self.buffer.clear();
        let head_end = loop {
            if let Some(i) = self.buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.buffer[..head_end]).to_ascii_lowercase();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse::<u16>().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))?;
        let header = |name: &str| {
            head.lines()
                .find_map(|l| l.strip_prefix(name))
                .map(|v| v.trim().to_owned())
        };
        let keep = header("connection:").is_none_or(|v| v != "close");
        if let Some(len) = header("content-length:").and_then(|v| v.parse::<usize>().ok()) {
            while self.buffer.len() < head_end + len {
                self.fill().await?;
            }
        } else if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
            while !self.buffer[head_end..].ends_with(b"0\r\n\r\n") {
                self.fill().await?;
            }
        }
        Ok((status, keep))
    }
}

async fn append_load(args: &Args) -> Value {
    let root = stream_root(args);
    let streams = num(args, "streams", 1).max(1);
    let connections = num(args, "connections", 32).max(1);
    let seconds = num(args, "seconds", 5);
    let size = num(args, "size", 64).max(1) as usize;
    let json = args.contains_key("json");
    let producer = args.contains_key("producer");
    let content_type = if json {
        "application/json"
    } else {
        "application/octet-stream"
    };
    let client = client();
    let mut targets = Vec::new();
    for _ in 0..streams {
        targets.push(create(&client, &root, content_type).await);
    }
    let payload = if json {
        json_payload(size)
    } else {
        Bytes::from(vec![b'x'; size])
    };
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let first_error = Arc::new(std::sync::Mutex::new(None::<String>));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (target, payload, done, errors, first_error) = (
            targets[worker as usize % targets.len()].clone(),
            payload.clone(),
            done.clone(),
            errors.clone(),
            first_error.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            let producer_id = format!("w{worker}");
            let (mut connection, path) = RawConnection::new(&target);
            let plain_head = connection.post_head(&path, content_type, payload.len(), "");
            while Instant::now() < deadline {
                let head = if producer {
                    connection.post_head(
                        &path,
                        content_type,
                        payload.len(),
                        &format!(
                            "Producer-Id: {producer_id}\r\nProducer-Epoch: 0\r\nProducer-Seq: {seq}\r\n"
                        ),
                    )
                } else {
                    plain_head.clone()
                };
                let sent = Instant::now();
                let outcome = match connection.send(&head, &payload).await {
                    Ok(status) if (200..300).contains(&status) => Ok(()),
                    Ok(status) => Err(format!("POST: {status}")),
                    Err(error) => Err(format!("POST: {error}")),
                };
                match outcome {
                    Ok(()) => {
                        seq += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    Err(error) => {
                        errors.fetch_add(1, Ordering::Relaxed);
                        first_error
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .get_or_insert(error);
                        // A broken server must not turn this into a busy loop.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.unwrap_or_default());
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let count = done.load(Ordering::Relaxed);
    let rate = count as f64 / elapsed;
    let errors = errors.load(Ordering::Relaxed);
    let first_error = first_error
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    say!(
        "append: {count} appends in {elapsed:.2}s = {rate:.0}/s ({:.2} MB/s), p50 {:.2} ms, p99 {:.2} ms, errors {errors}{}",
        rate * size as f64 / 1e6,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        first_error
            .as_deref()
            .map(|e| format!(" (first: {e})"))
            .unwrap_or_default()
    );
    let name = format!(
        "append {} stream{} c={connections} {size}B {}{}",
        streams,
        if streams == 1 { "" } else { "s" },
        if json { "json" } else { "bin" },
        if producer { " producer" } else { "" }
    );
    json!({
        "command": "append", "name": name, "streams": streams, "connections": connections,
        "size": size, "json": json, "producer": producer, "appends": count, "seconds": elapsed,
        "errors": errors, "first_error": first_error,
        "metrics": {
            "appends_per_sec": rate,
            "append_p50_ms": percentile(&latencies, 0.5),
            "append_p99_ms": percentile(&latencies, 0.99),
        },
    })
}

async fn read_load(args: &Args) -> Value {
    let root = stream_root(args);
    let megabytes = num(args, "megabytes", 64).max(1);
    let size = num(args, "size", 4096).max(1) as usize;
    let seconds = num(args, "seconds", 5);
    let client = client();
    let stream = create(&client, &root, "application/octet-stream").await;
    // Fill with appends of `size` bytes from a few connections.
    let total = (megabytes << 20) / size as u64;
    let fillers = 8u64;
    let record = Bytes::from(vec![b'r'; size]);
    let mut tasks = Vec::new();
    for worker in 0..fillers {
        let share = total / fillers + u64::from(worker < total % fillers);
        let (client, stream, record) = (client.clone(), stream.clone(), record.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..share {
                match client
                    .post(&stream)
                    .header("content-type", "application/octet-stream")
                    .body(record.clone())
                    .send()
                    .await
                {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                    }
                    Ok(response) => fail!("fill POST: {}", response.status()),
                    Err(error) => fail!("fill POST: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let expected = total * size as u64;
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let (mut bytes, mut reads, mut passes) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline || passes == 0 {
        let mut offset = "-1".to_owned();
        let mut pass_bytes = 0u64;
        loop {
            let response = client
                .get(format!("{stream}?offset={offset}"))
                .send()
                .await
                .unwrap_or_else(|e| fail!("GET: {e}"));
            if !response.status().is_success() {
                fail!("GET {stream}?offset={offset}: {}", response.status());
            }
            let next = response
                .headers()
                .get("stream-next-offset")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let up_to_date = response.headers().contains_key("stream-up-to-date");
            let body = response
                .bytes()
                .await
                .unwrap_or_else(|e| fail!("body: {e}"));
            pass_bytes += body.len() as u64;
            reads += 1;
            match next {
                Some(next) if !up_to_date && next != offset => offset = next,
                _ => break,
            }
        }
        if pass_bytes != expected {
            fail!("read {pass_bytes} bytes from -1, expected {expected}");
        }
        bytes += pass_bytes;
        passes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let mb_per_sec = bytes as f64 / elapsed / 1e6;
    let reads_per_sec = reads as f64 / elapsed;
    say!(
        "read: {passes} full passes of {megabytes} MiB in {size}-byte records, {mb_per_sec:.1} MB/s, {reads_per_sec:.0} reads/s"
    );
    json!({
        "command": "read", "name": format!("read {megabytes}MiB of {size}B records from -1"),
        "megabytes": megabytes, "size": size, "passes": passes,
        "metrics": {"read_mb_per_sec": mb_per_sec, "reads_per_sec": reads_per_sec},
    })
}

/// The event type (`message` when unnamed) and the data (lines joined
/// with `\n`) of one SSE event's text.
fn sse_fields(event: &str) -> (String, String) {
    let mut kind = "message";
    let mut data = Vec::new();
    for line in event.lines() {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "event" => kind = value,
            "data" => data.push(value),
            _ => {}
        }
    }
    (kind.to_owned(), data.join("\n"))
}

/// Splits complete SSE events off the front of `buffer`; returns the data of
/// each `data` event (lines joined with `\n`).
fn take_sse_data_events(buffer: &mut String) -> Vec<String> {
    let mut out = Vec::new();
    loop {
        let normalised_end = buffer
            .find("\n\n")
            .map(|i| (i, 2))
            .into_iter()
            .chain(buffer.find("\r\n\r\n").map(|i| (i, 4)))
            .min_by_key(|&(i, _)| i);
        let Some((end, skip)) = normalised_end else {
            return out;
        };
        let event: String = buffer.drain(..end + skip).collect();
        let (kind, data) = sse_fields(&event);
        if kind == "data" {
            out.push(data);
        }
    }
}

async fn latency(args: &Args) -> Value {
    let root = stream_root(args);
    let mode = args.get("mode").cloned().unwrap_or_else(|| "sse".into());
    if mode != "sse" && mode != "long-poll" {
        fail!("--mode is sse or long-poll, not {mode}");
    }
    let subscribers = num(args, "subscribers", 100).max(1);
    let messages = num(args, "messages", 200).max(1);
    let interval = Duration::from_millis(num(args, "interval-ms", 5));
    let client = client();
    let stream = create(&client, &root, "text/plain").await;
    let start_offset = tail_of(&client, &stream).await;
    let samples = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let origin = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers as usize);
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (client, stream, samples, mode, ready, start_offset) = (
            client.clone(),
            stream.clone(),
            samples.clone(),
            mode.clone(),
            ready_tx.clone(),
            start_offset.clone(),
        );
        readers.push(tokio::spawn(async move {
            // Each payload is "<ms since origin>;"; one read may carry several.
            let record = |text: &str| -> u64 {
                let now = origin.elapsed().as_secs_f64() * 1000.0;
                let mut guard = samples.lock().unwrap_or_else(|e| e.into_inner());
                let mut count = 0;
                for stamp in text.split(';').filter_map(|s| s.trim().parse::<f64>().ok()) {
                    guard.push(now - stamp);
                    count += 1;
                }
                count
            };
            let mut seen = 0u64;
            if mode == "sse" {
                let mut response = match client
                    .get(format!("{stream}?offset={start_offset}&live=sse"))
                    .send()
                    .await
                {
                    Ok(response) if response.status().is_success() => response,
                    Ok(response) => fail!("SSE: {}", response.status()),
                    Err(error) => fail!("SSE: {error}"),
                };
                let _ = ready.send(()).await;
                let mut buffer = String::new();
                while seen < messages {
                    let Ok(Some(chunk)) = response.chunk().await else {
                        break;
                    };
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    for data in take_sse_data_events(&mut buffer) {
                        seen += record(&data);
                    }
                }
            } else {
                let mut offset = start_offset;
                let mut announced = false;
                while seen < messages {
                    let request = client
                        .get(format!("{stream}?offset={offset}&live=long-poll"))
                        .send();
                    if !announced {
                        announced = true;
                        let _ = ready.send(()).await;
                    }
                    let Ok(response) = request.await else { break };
                    if let Some(next) = response
                        .headers()
                        .get("stream-next-offset")
                        .and_then(|v| v.to_str().ok())
                    {
                        offset = next.to_owned();
                    }
                    let text = response.text().await.unwrap_or_default();
                    seen += record(&text);
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        let _ = ready_rx.recv().await;
    }
    // Let every subscriber's request reach the server and start waiting.
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..messages {
        let stamp = format!("{:.3};", origin.elapsed().as_secs_f64() * 1000.0);
        match client
            .post(&stream)
            .header("content-type", "text/plain")
            .body(stamp)
            .send()
            .await
        {
            Ok(response) if response.status().is_success() => {}
            Ok(response) => fail!("append: {}", response.status()),
            Err(error) => fail!("append: {error}"),
        }
        tokio::time::sleep(interval).await;
    }
    let finished = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(readers),
    )
    .await;
    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    samples.sort_by(f64::total_cmp);
    let expected = subscribers * messages;
    let (p50, p99, max) = (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(0.0),
    );
    say!(
        "latency[{mode}]: {}/{expected} deliveries to {subscribers} subscribers, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms{}",
        samples.len(),
        if finished.is_err() {
            " (timed out waiting)"
        } else {
            ""
        }
    );
    json!({
        "command": "latency", "name": format!("latency {mode} {subscribers} subscribers"),
        "mode": mode, "subscribers": subscribers, "messages": messages,
        "deliveries": samples.len(), "expected_deliveries": expected,
        "metrics": {"p50_ms": p50, "p99_ms": p99, "max_ms": max},
    })
}

fn rss_kib(pid: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| fail!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
}

/// RSS once it stops moving (allocators and runtimes settle after load).
async fn settled_rss_kib(pid: &str) -> u64 {
    let mut last = rss_kib(pid);
    for _ in 0..10 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = rss_kib(pid);
        if now.abs_diff(last) < 64 {
            return now;
        }
        last = now;
    }
    last
}

fn pid(args: &Args) -> String {
    args.get("pid")
        .cloned()
        .unwrap_or_else(|| fail!("--pid PID is required"))
}

async fn rss_streams(args: &Args) -> Value {
    let pid = pid(args);
    let root = stream_root(args);
    let streams = num(args, "streams", 100).max(1);
    let messages = num(args, "messages", 100_000).max(1);
    let size = num(args, "size", 64).max(1) as usize;
    let connections = num(args, "connections", 8).max(1);
    let client = client();
    let before = settled_rss_kib(&pid).await;
    let mut targets = Vec::new();
    for _ in 0..streams {
        targets.push(create(&client, &root, "application/octet-stream").await);
    }
    let with_streams = settled_rss_kib(&pid).await;
    let targets = Arc::new(targets);
    let record = Bytes::from(vec![b'm'; size]);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let (client, targets, record, next) = (
            client.clone(),
            targets.clone(),
            record.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= messages {
                    return;
                }
                let target = &targets[(index % targets.len() as u64) as usize];
                match client
                    .post(target)
                    .header("content-type", "application/octet-stream")
                    .body(record.clone())
                    .send()
                    .await
                {
                    Ok(response) if response.status().is_success() => {
                        let _ = response.bytes().await;
                    }
                    Ok(response) => fail!("POST: {}", response.status()),
                    Err(error) => fail!("POST: {error}"),
                }
            }
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let after = settled_rss_kib(&pid).await;
    let per_stream = (with_streams.saturating_sub(before) * 1024) as f64 / streams as f64;
    let growth = after.saturating_sub(with_streams) as f64 * 1024.0;
    let per_message = growth / messages as f64;
    let overhead = per_message - size as f64;
    say!(
        "rss-streams: {before} KiB idle, {with_streams} KiB with {streams} streams ({per_stream:.0} B/stream), \
         {after} KiB after {messages} appends of {size} B: {per_message:.1} B/message, overhead {overhead:.1} B/message"
    );
    json!({
        "command": "rss-streams", "name": format!("rss {streams} streams, {messages} x {size}B messages"),
        "streams": streams, "messages": messages, "size": size,
        "rss_idle_kib": before, "rss_streams_kib": with_streams, "rss_after_kib": after,
        "metrics": {
            "rss_after_mib": after as f64 / 1024.0,
            "bytes_per_stream": per_stream,
            "overhead_bytes_per_message": overhead,
        },
    })
}

/// Raises the soft open-file limit to the hard one: thousands of
/// connections need as many descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// The `host:port` and path of an `http://` (or `https://`) URL.
fn split_url(url: &str) -> (String, String) {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"))
        .unwrap_or_else(|| fail!("only http:// and https:// URLs: {url}"));
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let path = if path.is_empty() { "/" } else { path };
    (authority.to_owned(), path.to_owned())
}

/// A byte stream to a server: TCP, or TLS over it.
trait Wire: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {}

impl<T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send> Wire for T {}

/// How live reads connect: plain, or TLS trusting `--ca FILE` (for
/// `https://` URLs).
#[derive(Clone)]
struct Connector {
    tls: Option<tokio_rustls::TlsConnector>,
}

impl Connector {
    fn from_args(args: &Args) -> Self {
        if !url(args).starts_with("https://") {
            return Self { tls: None };
        }
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let ca = args
            .get("ca")
            .unwrap_or_else(|| fail!("https:// needs --ca FILE (the PEM CA to trust)"));
        let pem = std::fs::read(ca).unwrap_or_else(|e| fail!("{ca}: {e}"));
        let mut roots = rustls::RootCertStore::empty();
        for der in CertificateDer::pem_slice_iter(&pem) {
            let der = der.unwrap_or_else(|e| fail!("{ca}: {e}"));
            roots.add(der).unwrap_or_else(|e| fail!("{ca}: {e}"));
        }
        let mut config = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap_or_else(|e| fail!("TLS: {e}"))
        .with_root_certificates(roots)
        .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Self {
            tls: Some(tokio_rustls::TlsConnector::from(Arc::new(config))),
        }
    }

    async fn connect(&self, authority: &str) -> std::io::Result<Box<dyn Wire>> {
        let stream = tokio::net::TcpStream::connect(authority).await?;
        stream.set_nodelay(true)?;
        let Some(tls) = &self.tls else {
            return Ok(Box::new(stream));
        };
        let host = authority
            .rsplit_once(':')
            .map_or(authority, |(host, _)| host);
        let name = rustls::pki_types::ServerName::try_from(host.to_owned())
            .map_err(|e| std::io::Error::other(format!("{host}: {e}")))?;
        Ok(Box::new(tls.connect(name, stream).await?))
    }
}

/// A live read on a raw connection: the request sent, the response head
/// read (for SSE), and the body de-chunked and split into SSE events as it
/// arrives.
struct LiveRead {
    stream: Box<dyn Wire>,
    /// Raw bytes not yet de-chunked.
    raw: Vec<u8>,
    /// De-chunked body bytes; those before `body_at` are split off already.
    body: Vec<u8>,
    body_at: usize,
    chunked: bool,
    /// Body bytes left in the current chunk.
    chunk_left: usize,
}

impl LiveRead {
    /// Opens `GET target` on a new connection to `authority`.
    async fn open(connector: &Connector, authority: &str, target: &str) -> std::io::Result<Self> {
        use tokio::io::AsyncWriteExt as _;
        let mut stream = connector.connect(authority).await?;
        let request = format!("GET {target} HTTP/1.1\r\nHost: {authority}\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        Ok(Self {
            stream,
            raw: Vec::new(),
            body: Vec::new(),
            body_at: 0,
            chunked: false,
            chunk_left: 0,
        })
    }

    /// Reads what the socket has, 16 KiB or more, straight into `raw` (a
    /// subscriber that fell behind gets many events in one read).
    async fn fill(&mut self) -> std::io::Result<()> {
        use tokio::io::AsyncReadExt as _;
        self.raw.reserve(16 << 10);
        let n = self.stream.read_buf(&mut self.raw).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        Ok(())
    }

    /// Reads the response head: its status; remembers chunked framing.
    async fn head(&mut self) -> std::io::Result<u16> {
        let end = loop {
            if let Some(i) = self.raw.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            self.fill().await?;
        };
        let head = String::from_utf8_lossy(&self.raw[..end]).to_ascii_lowercase();
        self.raw.drain(..end);
        self.chunked = head
            .lines()
            .any(|l| l.starts_with("transfer-encoding:") && l.contains("chunked"));
        head.split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other("bad status line"))
    }

    /// Moves what can be de-chunked from `raw` to `body`. Consumed bytes
    /// are dropped once per call, not once per chunk, so that a read
    /// holding many events costs linear time.
    fn dechunk(&mut self) -> std::io::Result<()> {
        if !self.chunked {
            self.body.extend_from_slice(&self.raw);
            self.raw.clear();
            return Ok(());
        }
        let mut at = 0;
        let result = loop {
            if self.chunk_left > 0 {
                let take = self.chunk_left.min(self.raw.len() - at);
                self.body.extend_from_slice(&self.raw[at..at + take]);
                at += take;
                self.chunk_left -= take;
                if self.chunk_left > 0 {
                    break Ok(());
                }
            }
            // Each chunk's data ends in CRLF, then the next size line.
            let rest = &self.raw[at..];
            let Some(line) = rest.windows(2).position(|w| w == b"\r\n") else {
                break Ok(());
            };
            let text = String::from_utf8_lossy(&rest[..line]).into_owned();
            at += line + 2;
            if text.is_empty() {
                continue;
            }
            let size = match usize::from_str_radix(text.split(';').next().unwrap_or("").trim(), 16)
            {
                Ok(size) => size,
                Err(_) => break Err(std::io::Error::other(format!("bad chunk size {text:?}"))),
            };
            if size == 0 {
                break Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            self.chunk_left = size;
        };
        self.raw.drain(..at);
        result
    }

    /// Waits for at least one complete `data` event and hands the
    /// `;`-separated numbers of every `data:` line of each complete data
    /// event to `each`, in order; other events are skipped. Parses in
    /// place, without an allocation per event: the fan-out has to measure
    /// the server, and 10,000 subscribers that fell behind receive millions
    /// of events.
    async fn next_stamps(&mut self, mut each: impl FnMut(f64)) -> std::io::Result<()> {
        loop {
            self.dechunk()?;
            let mut found = false;
            let mut at = self.body_at;
            while let Some(end) = find(&self.body[at..], b"\n\n") {
                let event = &self.body[at..at + end + 1];
                at += end + 2;
                let Some(lines) = event.strip_prefix(b"event: data\n") else {
                    continue;
                };
                found = true;
                for line in lines.split(|&b| b == b'\n') {
                    let Some(data) = line.strip_prefix(b"data:") else {
                        continue;
                    };
                    for stamp in data.split(|&b| b == b';') {
                        if let Some(value) = std::str::from_utf8(stamp)
                            .ok()
                            .and_then(|text| text.trim_matches('.').parse::<f64>().ok())
                        {
                            each(value);
                        }
                    }
                }
            }
            self.body.drain(..at);
            self.body_at = 0;
            if found {
                return Ok(());
            }
            self.fill().await?;
        }
    }

    /// The next SSE event: (event type, data).
    async fn next_event(&mut self) -> std::io::Result<(String, String)> {
        loop {
            self.dechunk()?;
            let rest = &self.body[self.body_at..];
            if let Some(end) = rest.windows(2).position(|w| w == b"\n\n") {
                let (kind, data) = sse_fields(&String::from_utf8_lossy(&rest[..end + 2]));
                self.body_at += end + 2;
                if self.body_at == self.body.len() {
                    self.body.clear();
                    self.body_at = 0;
                }
                if data.is_empty() && kind == "message" {
                    // A comment or keep-alive: not an event.
                    continue;
                }
                return Ok((kind, data));
            }
            self.body.drain(..self.body_at);
            self.body_at = 0;
            self.fill().await?;
        }
    }
}

/// Where `needle` first occurs in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// Opens `count` live reads of `target` at most `parallel` at a time;
/// `ready` decides when one is set up (given the open read).
async fn open_many<F, Fut>(
    connector: &Connector,
    authority: &str,
    target: &str,
    count: u64,
    parallel: u64,
    ready: F,
) -> Vec<LiveRead>
where
    F: Fn(LiveRead) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = std::io::Result<LiveRead>> + Send,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel.max(1) as usize));
    let mut tasks = Vec::with_capacity(count as usize);
    for _ in 0..count {
        let (connector, authority, target, ready, semaphore) = (
            connector.clone(),
            authority.to_owned(),
            target.to_owned(),
            ready.clone(),
            semaphore.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let _permit = semaphore.acquire_owned().await.ok();
            let read = LiveRead::open(&connector, &authority, &target).await?;
            tokio::time::timeout(Duration::from_secs(30), ready(read))
                .await
                .map_err(|_| std::io::Error::other("not set up within 30 s"))?
        }));
    }
    let mut open = Vec::with_capacity(count as usize);
    for task in tasks {
        match task.await {
            Ok(Ok(read)) => open.push(read),
            Ok(Err(error)) => fail!("opening a live read: {error}"),
            Err(error) => fail!("opening a live read: {error}"),
        }
    }
    open
}

/// An SSE read is set up once its head and first event have arrived.
async fn sse_ready(mut read: LiveRead) -> std::io::Result<LiveRead> {
    let status = read.head().await?;
    if status != 200 {
        return Err(std::io::Error::other(format!("SSE answered {status}")));
    }
    read.next_event().await?;
    Ok(read)
}

async fn rss_idle(args: &Args, mode: &str) -> Value {
    let pid = pid(args);
    let root = stream_root(args);
    let connections = num(args, "connections", 10_000).max(1);
    let parallel = num(args, "parallel", 200);
    let connector = Connector::from_args(args);
    let client = client_for(args);
    let stream = create(&client, &root, "text/plain").await;
    let offset = tail_of(&client, &stream).await;
    let (authority, path) = split_url(&stream);
    let before = settled_rss_kib(&pid).await;
    let started = Instant::now();
    let open = if mode == "sse" {
        let target = format!("{path}?offset={offset}&live=sse");
        open_many(
            &connector,
            &authority,
            &target,
            connections,
            parallel,
            sse_ready,
        )
        .await
    } else {
        // A long-poll waits without answering: nothing to read yet.
        let target = format!("{path}?offset={offset}&live=long-poll");
        open_many(
            &connector,
            &authority,
            &target,
            connections,
            parallel,
            |read| async move { Ok(read) },
        )
        .await
    };
    let opened_in = started.elapsed().as_secs_f64();
    let after = settled_rss_kib(&pid).await;
    let elapsed = started.elapsed().as_secs_f64();
    let per_connection = after.saturating_sub(before) as f64 * 1024.0 / connections as f64;
    if mode == "long-poll" {
        // One append answers every waiting long-poll: all were waiting.
        append_text(&client, &stream, "wake").await;
        let answered =
            futures_util::future::join_all(open.into_iter().map(|mut read| async move {
                tokio::time::timeout(Duration::from_secs(30), read.head())
                    .await
                    .ok()
                    .and_then(Result::ok)
            }))
            .await;
        let ok = answered.iter().filter(|s| **s == Some(200)).count() as u64;
        if ok != connections {
            fail!("only {ok} of {connections} long-polls answered the append with 200");
        }
    } else {
        drop(open);
    }
    if elapsed > 50.0 {
        eprintln!(
            "load: the measurement took {elapsed:.0} s; servers that end live reads after 60 s may have closed some"
        );
    }
    let label = if mode == "sse" { "SSE" } else { "long-poll" };
    say!(
        "rss-{mode}: {before} KiB before, {after} KiB with {connections} idle {label} connections \
         (opened in {opened_in:.1} s): {per_connection:.0} B/connection"
    );
    let metric = if mode == "sse" {
        "bytes_per_sse_connection"
    } else {
        "bytes_per_long_poll_connection"
    };
    json!({
        "command": format!("rss-{mode}"), "name": format!("rss {connections} idle {label} connections"),
        "connections": connections, "rss_before_kib": before, "rss_after_kib": after,
        "open_seconds": opened_in,
        "metrics": {metric: per_connection},
    })
}

async fn append_text(client: &reqwest::Client, stream: &str, text: &str) {
    match client
        .post(stream)
        .header("content-type", "text/plain")
        .body(text.to_owned())
        .send()
        .await
    {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => fail!("append: {}", response.status()),
        Err(error) => fail!("append: {error}"),
    }
}

/// A stamped payload of `size` bytes: `<ms since origin>;` padded with `.`.
fn stamp(origin: Instant, size: usize) -> Vec<u8> {
    let mut payload = format!("{:.3};", origin.elapsed().as_secs_f64() * 1000.0).into_bytes();
    payload.resize(size.max(payload.len()), b'.');
    payload
}

async fn fanout(args: &Args) -> Value {
    let root = stream_root(args);
    let streams = num(args, "streams", 1).max(1);
    let subscribers = num(args, "subscribers", 10_000).max(1);
    let rate = num(args, "rate", 50).max(1);
    let seconds = num(args, "seconds", 10).max(1);
    let size = num(args, "size", 64).max(16) as usize;
    let parallel = num(args, "parallel", 200);
    let pid = args.get("pid").cloned();
    let connector = Connector::from_args(args);
    let client = client();
    let mut targets = Vec::new();
    for _ in 0..streams {
        let stream = create(&client, &root, "text/plain").await;
        let offset = tail_of(&client, &stream).await;
        targets.push((stream, offset));
    }
    let before = match &pid {
        Some(pid) => Some(settled_rss_kib(pid).await),
        None => None,
    };
    let total = streams * subscribers;
    let started = Instant::now();
    let mut readers = Vec::new();
    for (stream, offset) in &targets {
        let (authority, path) = split_url(stream);
        let target = format!("{path}?offset={offset}&live=sse");
        readers.extend(
            open_many(
                &connector,
                &authority,
                &target,
                subscribers,
                parallel,
                sse_ready,
            )
            .await,
        );
    }
    let opened_in = started.elapsed().as_secs_f64();
    let connected = match &pid {
        Some(pid) => Some(settled_rss_kib(pid).await),
        None => None,
    };
    let origin = Instant::now();
    let messages = rate * seconds;
    let deadline = origin + Duration::from_secs(seconds + 10);
    let samples = Arc::new(std::sync::Mutex::new(Vec::<f32>::with_capacity(
        (total * messages) as usize,
    )));
    let mut tasks = Vec::new();
    for mut read in readers {
        let samples = samples.clone();
        tasks.push(tokio::spawn(async move {
            let mut mine = Vec::with_capacity(messages as usize);
            while (mine.len() as u64) < messages {
                let mut stamps = Vec::new();
                let next =
                    tokio::time::timeout_at(deadline.into(), read.next_stamps(|s| stamps.push(s)))
                        .await;
                let now = origin.elapsed().as_secs_f64() * 1000.0;
                mine.extend(stamps.iter().map(|stamp| (now - stamp) as f32));
                if !matches!(next, Ok(Ok(()))) {
                    break;
                }
            }
            samples
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .extend(mine);
        }));
    }
    // One writer per stream, on its own keep-alive connection, all on a
    // thread of their own: on the runtime of the readers, a writer's next
    // append would wait behind thousands of reader wake-ups and the rate
    // would measure this tool, not the server.
    let writers = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap_or_else(|error| fail!("writer runtime: {error}"));
        runtime.block_on(async move {
            let mut writers = Vec::new();
            for (stream, _) in targets {
                writers.push(tokio::spawn(write_paced(
                    stream, origin, rate, messages, size,
                )));
            }
            for writer in writers {
                let _ = writer.await;
            }
        });
    });
    let _ = tokio::task::spawn_blocking(move || writers.join()).await;
    let during = pid.as_deref().map(rss_kib);
    for task in tasks {
        let _ = task.await;
    }
    let mut samples = samples.lock().unwrap_or_else(|e| e.into_inner()).clone();
    samples.sort_by(f32::total_cmp);
    let expected = total * messages;
    let missing = expected.saturating_sub(samples.len() as u64);
    let sorted: Vec<f64> = samples.iter().map(|&v| f64::from(v)).collect();
    let (p50, p99, max) = (
        percentile(&sorted, 0.5),
        percentile(&sorted, 0.99),
        sorted.last().copied().unwrap_or(0.0),
    );
    let shape = if streams == 1 {
        format!("{subscribers} subscribers")
    } else {
        format!("{streams} streams x {subscribers} subscribers")
    };
    let mut metrics =
        json!({"p50_ms": p50, "p99_ms": p99, "max_ms": max, "missing_deliveries": missing});
    let mut rss_text = String::new();
    if let (Some(before), Some(connected), Some(during)) = (before, connected, during) {
        let per_subscriber = connected.saturating_sub(before) as f64 * 1024.0 / total as f64;
        metrics["rss_mib"] = json!(during.max(connected) as f64 / 1024.0);
        metrics["bytes_per_subscriber"] = json!(per_subscriber);
        rss_text = format!(
            ", RSS {before} KiB before, {connected} KiB connected ({per_subscriber:.0} B/subscriber), {during} KiB at the end"
        );
    }
    say!(
        "fanout[{shape}, {rate}/s per stream, {seconds} s]: {}/{expected} deliveries (opened in {opened_in:.1} s), \
         p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms{rss_text}",
        samples.len()
    );
    json!({
        "command": "fanout", "name": format!("fanout {shape}, {rate}/s per stream"),
        "streams": streams, "subscribers": subscribers, "rate": rate, "seconds": seconds,
        "deliveries": samples.len(), "expected_deliveries": expected, "open_seconds": opened_in,
        "metrics": metrics,
    })
}

/// Appends `messages` stamped payloads to `stream` at `rate` per second.
async fn write_paced(stream: String, origin: Instant, rate: u64, messages: u64, size: usize) {
    let (mut connection, path) = RawConnection::new(&stream);
    let mut ticker = tokio::time::interval(Duration::from_micros(1_000_000 / rate));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    for _ in 0..messages {
        ticker.tick().await;
        let body = stamp(origin, size);
        let head = connection.post_head(&path, "text/plain", body.len(), "");
        match connection.send(&head, &body).await {
            Ok(status) if (200..300).contains(&status) => {}
            Ok(status) => fail!("append: {status}"),
            Err(error) => fail!("append: {error}"),
        }
    }
}

fn rss(args: &Args) -> Value {
    let pid = pid(args);
    let kib = rss_kib(&pid);
    say!("rss: pid {pid} {kib} KiB");
    json!({"command": "rss", "name": "rss", "pid": pid, "metrics": {"rss_kib": kib}})
}

fn fsync_rate(args: &Args) -> Value {
    use std::io::Write;
    let dir = std::path::PathBuf::from(args.get("dir").cloned().unwrap_or_else(|| ".".into()));
    let seconds = num(args, "seconds", 3);
    let size = num(args, "size", 64) as usize;
    let path = dir.join(format!(".fsync-probe-{}", std::process::id()));
    let mut file =
        std::fs::File::create(&path).unwrap_or_else(|e| fail!("{}: {e}", path.display()));
    let payload = vec![b'f'; size];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut count = 0u64;
    while Instant::now() < deadline {
        if let Err(error) = file.write_all(&payload).and_then(|()| file.sync_data()) {
            fail!("write+fdatasync: {error}");
        }
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    say!(
        "fsync: {rate:.0} write+fdatasync/s of {size} bytes in {}",
        dir.display()
    );
    json!({"command": "fsync", "name": format!("fsync {size}B"), "size": size,
        "metrics": {"fsyncs_per_sec": rate}})
}

async fn wait_ready(args: &Args) {
    let url = url(args);
    let client = client();
    let deadline = Instant::now() + Duration::from_secs(num(args, "seconds", 60));
    while Instant::now() < deadline {
        // A server that binds before its storage is recovered answers 503
        // until it is ready to take writes.
        if client
            .get(&url)
            .send()
            .await
            .is_ok_and(|response| response.status() != reqwest::StatusCode::SERVICE_UNAVAILABLE)
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fail!("{url} did not answer in time");
}

/// Whether a bigger value of `metric` is better.
fn higher_is_better(metric: &str) -> bool {
    metric.ends_with("per_sec")
}

fn format_value(value: f64) -> String {
    if value.abs() >= 100.0 {
        format!("{value:.0}")
    } else if value.abs() >= 10.0 {
        format!("{value:.1}")
    } else {
        format!("{value:.2}")
    }
}

/// One server's value of a metric, and the label of the server it is
/// compared with.
type Cell = (f64, Option<String>);

/// Reads a results file (one JSON object a line) and prints, per workload
/// and metric, each server's value and its ratio against its `peer`
/// (ours ÷ theirs for throughput, theirs ÷ ours for times and memory: above
/// 1 means we lead).
fn report(file: &str, args: &Args) {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| fail!("{file}: {e}"));
    let markdown = args.get("format").is_none_or(|f| f == "markdown");
    let mut labels: Vec<String> = Vec::new();
    // (workload, metric) in first-seen order → label → (value, peer)
    let mut rows: Vec<(String, String)> = Vec::new();
    let mut cells: BTreeMap<(String, String), HashMap<String, Cell>> = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let Ok(result) = serde_json::from_str::<Value>(line) else {
            continue;
        };
        let label = result["label"].as_str().unwrap_or("server").to_owned();
        if !labels.contains(&label) {
            labels.push(label.clone());
        }
        let name = result["name"].as_str().unwrap_or("?").to_owned();
        let peer = result["peer"].as_str().map(str::to_owned);
        let Some(metrics) = result["metrics"].as_object() else {
            continue;
        };
        for (metric, value) in metrics {
            let Some(value) = value.as_f64() else {
                continue;
            };
            let key = (name.clone(), metric.clone());
            if !cells.contains_key(&key) {
                rows.push(key.clone());
            }
            cells
                .entry(key)
                .or_default()
                .insert(label.clone(), (value, peer.clone()));
        }
    }
    let mut table: Vec<Vec<String>> = Vec::new();
    let mut header = vec!["workload".to_owned(), "metric".to_owned()];
    header.extend(labels.iter().cloned());
    table.push(header);
    for key in &rows {
        let by_label = &cells[key];
        let mut row = vec![key.0.clone(), key.1.clone()];
        for label in &labels {
            let cell = match by_label.get(label) {
                None => "—".to_owned(),
                Some((value, peer)) => {
                    let ours = peer
                        .as_ref()
                        .filter(|p| *p != label)
                        .and_then(|p| by_label.get(p))
                        .map(|(v, _)| *v);
                    match ours {
                        Some(ours) if *value > 0.0 && ours > 0.0 => {
                            let lead = if higher_is_better(&key.1) {
                                ours / value
                            } else {
                                value / ours
                            };
                            format!("{} ({lead:.2}×)", format_value(*value))
                        }
                        _ => format_value(*value),
                    }
                }
            };
            row.push(cell);
        }
        table.push(row);
    }
    let widths: Vec<usize> = (0..table[0].len())
        .map(|c| {
            table
                .iter()
                .map(|r| r[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for (index, row) in table.iter().enumerate() {
        let padded: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        if markdown {
            say!("| {} |", padded.join(" | "));
            if index == 0 {
                let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
                say!("| {} |", rule.join(" | "));
            }
        } else {
            say!("{}", padded.join("  "));
        }
    }
    say!("");
    say!(
        "(N×) = how many times better our peer server is on that metric: ours ÷ theirs for rates, \
         theirs ÷ ours for times and memory; above 1 means we lead."
    );
}

#[tokio::main]
async fn main() {
    let (command, positional, args) = parse_args();
    raise_fd_limit();
    let mut result = match command.as_str() {
        "append" => append_load(&args).await,
        "read" => read_load(&args).await,
        "latency" => latency(&args).await,
        "rss-streams" => rss_streams(&args).await,
        "rss-sse" => rss_idle(&args, "sse").await,
        "rss-long-poll" => rss_idle(&args, "long-poll").await,
        "fanout" => fanout(&args).await,
        "rss" => rss(&args),
        "fsync" => fsync_rate(&args),
        "report" => {
            let file = positional
                .first()
                .unwrap_or_else(|| fail!("usage: load report FILE"));
            report(file, &args);
            return;
        }
        "free-port" => {
            let port = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .map(|a| a.port())
                .unwrap_or_else(|e| fail!("free port: {e}"));
            say!("{port}");
            return;
        }
        "wait-ready" => {
            wait_ready(&args).await;
            return;
        }
        "help" | "--help" | "-h" => {
            print!("{HELP}");
            return;
        }
        _ => {
            eprint!("{HELP}");
            std::process::exit(2);
        }
    };
    if let Value::Object(map) = &mut result {
        map.insert(
            "label".into(),
            json!(args.get("label").map_or("server", String::as_str)),
        );
        if let Some(peer) = args.get("peer") {
            map.insert("peer".into(), json!(peer));
        }
        if let Some(name) = args.get("name") {
            map.insert("name".into(), json!(name));
        }
    }
    say!("{result}");
    if let Some(out) = args.get("out") {
        use std::io::Write as _;
        let written = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(out)
            .and_then(|mut file| writeln!(file, "{result}"));
        if let Err(error) = written {
            fail!("{out}: {error}");
        }
    }
}
