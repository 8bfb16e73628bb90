//! Load tool for durable-streams servers (any implementation of the
//! protocol): append throughput, catch-up read throughput, live delivery
//! latency, server memory, and the raw fsync rate of a disk for comparison.
//!
//! Run with `cargo bench --bench load -- <command> [options]`:
//!
//! ```text
//! append   --url URL [--streams 1] [--connections 32] [--seconds 5] [--size 64] [--json] [--producer]
//! read     --url URL [--megabytes 64] [--size 4096] [--seconds 5]
//! latency  --url URL [--mode sse|long-poll] [--subscribers 100] [--messages 200]
//! rss      --pid PID
//! fsync    --dir DIR [--seconds 3] [--size 64]
//! ```
//! Every command prints a readable line and, last, one JSON object.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;

type Args = HashMap<String, String>;

/// Prints a line, ignoring a closed pipe (`| head`).
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

fn parse_args() -> (String, Args) {
    let mut raw = std::env::args().skip(1).filter(|a| a != "--bench");
    let command = raw.next().unwrap_or_default();
    let mut args = Args::new();
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
            (None, None) => {}
        }
    }
    if let Some(flag) = pending {
        args.insert(flag, "true".into());
    }
    (command, args)
}

fn num(args: &Args, key: &str, default: u64) -> u64 {
    args.get(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn url(args: &Args) -> String {
    args.get("url")
        .cloned()
        .unwrap_or_else(|| "http://127.0.0.1:4437".into())
        .trim_end_matches('/')
        .to_owned()
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()
        .expect("http client")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}-{}", std::process::id(), fastrand::u64(..))
}

async fn create(client: &reqwest::Client, url: &str, content_type: &str) -> String {
    let stream = format!("{url}/v1/stream/{}", unique("load"));
    let response = client
        .put(&stream)
        .header("content-type", content_type)
        .send()
        .await
        .expect("create");
    assert!(
        response.status().is_success(),
        "create failed: {}",
        response.status()
    );
    stream
}

async fn append_load(args: Args) -> serde_json::Value {
    let url = url(&args);
    let streams = num(&args, "streams", 1).max(1);
    let connections = num(&args, "connections", 32).max(1);
    let seconds = num(&args, "seconds", 5);
    let size = num(&args, "size", 64) as usize;
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
        targets.push(create(&client, &url, content_type).await);
    }
    let payload = if json {
        Bytes::from(format!(
            "{{\"v\":\"{}\"}}",
            "x".repeat(size.saturating_sub(8))
        ))
    } else {
        Bytes::from(vec![b'x'; size])
    };
    let done = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for worker in 0..connections {
        let (client, target, payload, done, errors) = (
            client.clone(),
            targets[worker as usize % targets.len()].clone(),
            payload.clone(),
            done.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut seq = 0u64;
            let producer_id = format!("w{worker}");
            while Instant::now() < deadline {
                let mut request = client
                    .post(&target)
                    .header("content-type", content_type)
                    .body(payload.clone());
                if producer {
                    request = request
                        .header("producer-id", &producer_id)
                        .header("producer-epoch", "0")
                        .header("producer-seq", seq.to_string());
                }
                let sent = Instant::now();
                match request.send().await {
                    Ok(response) if response.status().is_success() => {
                        seq += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        latencies.push(sent.elapsed().as_secs_f64() * 1000.0);
                    }
                    _ => {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await.expect("worker"));
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let count = done.load(Ordering::Relaxed);
    let rate = count as f64 / elapsed;
    say!(
        "append: {count} appends in {elapsed:.2}s = {rate:.0}/s ({:.2} MB/s), p50 {:.2} ms, p99 {:.2} ms, errors {}",
        rate * size as f64 / 1e6,
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        errors.load(Ordering::Relaxed)
    );
    serde_json::json!({
        "command": "append", "streams": streams, "connections": connections, "size": size, "json": json,
        "producer": producer, "appends": count, "seconds": elapsed, "appends_per_sec": rate,
        "p50_ms": percentile(&latencies, 0.5), "p99_ms": percentile(&latencies, 0.99),
        "errors": errors.load(Ordering::Relaxed),
    })
}

async fn read_load(args: Args) -> serde_json::Value {
    let url = url(&args);
    let megabytes = num(&args, "megabytes", 64);
    let size = num(&args, "size", 4096).max(1) as usize;
    let seconds = num(&args, "seconds", 5);
    let client = client();
    let stream = create(&client, &url, "application/octet-stream").await;
    let batch = Bytes::from(vec![b'r'; 1 << 20]);
    // Fill with appends of `size` bytes, sent 1 MiB at a time for speed.
    let per_request = (batch.len() / size).max(1) * size;
    let mut written = 0u64;
    while written < megabytes << 20 {
        let body = batch.slice(..per_request.min(batch.len()));
        let response = client
            .post(&stream)
            .header("content-type", "application/octet-stream")
            .body(body)
            .send()
            .await
            .expect("fill");
        assert!(
            response.status().is_success(),
            "fill failed: {}",
            response.status()
        );
        written += per_request as u64;
    }
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let (mut bytes, mut reads, mut passes) = (0u64, 0u64, 0u64);
    while Instant::now() < deadline {
        let mut offset = "-1".to_owned();
        loop {
            let response = client
                .get(format!("{stream}?offset={offset}"))
                .send()
                .await
                .expect("read");
            let next = response
                .headers()
                .get("stream-next-offset")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let up_to_date = response.headers().contains_key("stream-up-to-date");
            bytes += response.bytes().await.expect("body").len() as u64;
            reads += 1;
            match next {
                Some(next) if !up_to_date => offset = next,
                _ => break,
            }
        }
        passes += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    say!(
        "read: {passes} full passes of {megabytes} MiB, {:.1} MB/s, {:.0} reads/s",
        bytes as f64 / elapsed / 1e6,
        reads as f64 / elapsed
    );
    serde_json::json!({"command": "read", "megabytes": megabytes, "mb_per_sec": bytes as f64 / elapsed / 1e6,
        "reads_per_sec": reads as f64 / elapsed, "passes": passes})
}

async fn latency(args: Args) -> serde_json::Value {
    let url = url(&args);
    let mode = args.get("mode").cloned().unwrap_or_else(|| "sse".into());
    let subscribers = num(&args, "subscribers", 100).max(1);
    let messages = num(&args, "messages", 200).max(1);
    let client = client();
    let stream = create(&client, &url, "text/plain").await;
    let samples = Arc::new(std::sync::Mutex::new(Vec::<f64>::new()));
    let origin = Instant::now();
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<()>(subscribers as usize);
    let mut readers = Vec::new();
    for _ in 0..subscribers {
        let (client, stream, samples, mode, ready) = (
            client.clone(),
            stream.clone(),
            samples.clone(),
            mode.clone(),
            ready_tx.clone(),
        );
        readers.push(tokio::spawn(async move {
            let record = |text: &str, samples: &std::sync::Mutex<Vec<f64>>| {
                let now = origin.elapsed().as_secs_f64() * 1000.0;
                let mut guard = samples.lock().expect("samples");
                for stamp in text.split(';').filter_map(|s| s.trim().parse::<f64>().ok()) {
                    guard.push(now - stamp);
                }
            };
            let mut seen = 0u64;
            if mode == "sse" {
                let mut response = client
                    .get(format!("{stream}?offset=now&live=sse"))
                    .send()
                    .await
                    .expect("sse");
                let _ = ready.send(()).await;
                let mut buffer = String::new();
                while seen < messages {
                    let Ok(Some(chunk)) = response.chunk().await else {
                        break;
                    };
                    buffer.push_str(&String::from_utf8_lossy(&chunk));
                    while let Some(end) = buffer.find("\n\n") {
                        let event: String = buffer.drain(..end + 2).collect();
                        if event.starts_with("event: data") {
                            let data: Vec<&str> = event
                                .lines()
                                .filter_map(|l| l.strip_prefix("data:"))
                                .collect();
                            let text = data.join("\n");
                            seen += text.split(';').filter(|s| !s.is_empty()).count() as u64;
                            record(&text, &samples);
                        }
                    }
                }
            } else {
                let mut offset = "now".to_owned();
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
                    seen += text.split(';').filter(|s| !s.is_empty()).count() as u64;
                    record(&text, &samples);
                }
            }
        }));
    }
    drop(ready_tx);
    for _ in 0..subscribers {
        let _ = ready_rx.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for _ in 0..messages {
        let stamp = format!("{:.3};", origin.elapsed().as_secs_f64() * 1000.0);
        client
            .post(&stream)
            .header("content-type", "text/plain")
            .body(stamp)
            .send()
            .await
            .expect("append");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        futures_util::future::join_all(readers),
    )
    .await;
    let mut samples = samples.lock().expect("samples").clone();
    samples.sort_by(f64::total_cmp);
    let (p50, p99, max) = (
        percentile(&samples, 0.5),
        percentile(&samples, 0.99),
        samples.last().copied().unwrap_or(0.0),
    );
    say!(
        "latency[{mode}]: {} deliveries to {subscribers} subscribers, p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms",
        samples.len()
    );
    serde_json::json!({"command": "latency", "mode": mode, "subscribers": subscribers, "messages": messages,
        "deliveries": samples.len(), "p50_ms": p50, "p99_ms": p99, "max_ms": max})
}

fn rss(args: Args) -> serde_json::Value {
    let pid = args.get("pid").cloned().unwrap_or_else(|| "self".into());
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    say!("rss: pid {pid} {kib} KiB");
    serde_json::json!({"command": "rss", "pid": pid, "rss_kib": kib})
}

fn fsync_rate(args: Args) -> serde_json::Value {
    use std::io::Write;
    let dir = std::path::PathBuf::from(args.get("dir").cloned().unwrap_or_else(|| ".".into()));
    let seconds = num(&args, "seconds", 3);
    let size = num(&args, "size", 64) as usize;
    let path = dir.join(format!(".fsync-probe-{}", std::process::id()));
    let mut file = std::fs::File::create(&path).expect("probe file");
    let payload = vec![b'f'; size];
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut count = 0u64;
    while Instant::now() < deadline {
        file.write_all(&payload).expect("write");
        file.sync_data().expect("fdatasync");
        count += 1;
    }
    let rate = count as f64 / started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&path);
    say!(
        "fsync: {rate:.0} write+fdatasync/s of {size} bytes in {}",
        dir.display()
    );
    serde_json::json!({"command": "fsync", "fsyncs_per_sec": rate, "size": size})
}

#[tokio::main]
async fn main() {
    let (command, args) = parse_args();
    let result = match command.as_str() {
        "append" => append_load(args).await,
        "read" => read_load(args).await,
        "latency" => latency(args).await,
        "rss" => rss(args),
        "fsync" => fsync_rate(args),
        _ => {
            eprintln!(
                "usage: load <append|read|latency|rss|fsync> [--option value ...] (see benches/load.rs)"
            );
            std::process::exit(2);
        }
    };
    say!("{result}");
}
