//! A small load driver for `scripts/measure-rss.sh`.
//!
//! ```text
//! append_load free-port
//! append_load wait-ready <base-url>
//! append_load append <stream-url> <count> <record-bytes> <connections>
//! append_load big-post <stream-url> <body-bytes> [chunked]
//! ```
//!
//! `append` creates the stream, then sends `count` appends of
//! `record-bytes` each from `connections` keep-alive connections and checks
//! that every one was accepted and the tail is where it must be. `big-post`
//! sends one large body (with `Content-Length`, or chunked) on a raw socket,
//! stops as soon as the server answers, and prints the status.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn usage() -> ! {
    eprintln!(
        "usage: append_load free-port\n       append_load wait-ready <base-url>\n       \
         append_load append <stream-url> <count> <record-bytes> <connections>\n       \
         append_load big-post <stream-url> <body-bytes> [chunked]"
    );
    std::process::exit(2)
}

fn arg<T: std::str::FromStr>(args: &[String], index: usize) -> T {
    args.get(index)
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| usage())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("free-port") => {
            let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
            println!("{}", listener.local_addr()?.port());
            Ok(())
        }
        Some("wait-ready") => wait_ready(&arg::<String>(&args, 1)).await,
        Some("append") => {
            append(
                &arg::<String>(&args, 1),
                arg(&args, 2),
                arg(&args, 3),
                arg(&args, 4),
            )
            .await
        }
        Some("big-post") => {
            let chunked = args.get(3).is_some_and(|a| a == "chunked");
            let status = big_post(&arg::<String>(&args, 1), arg(&args, 2), chunked).await?;
            println!("{status}");
            Ok(())
        }
        _ => usage(),
    }
}

fn client() -> Result<reqwest::Client, Error> {
    Ok(reqwest::Client::builder().no_proxy().build()?)
}

async fn wait_ready(base: &str) -> Result<(), Error> {
    let client = client()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(response) = client.get(format!("{base}/healthz")).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("{base} did not become healthy within 30 s").into())
}

async fn append(url: &str, count: u64, size: usize, connections: u64) -> Result<(), Error> {
    let client = client()?;
    let created = client
        .put(url)
        .header("content-type", "application/octet-stream")
        .send()
        .await?;
    if !created.status().is_success() {
        return Err(format!("PUT {url}: {}", created.status()).into());
    }
    let record = Bytes::from(vec![b'x'; size]);
    let connections = connections.clamp(1, count.max(1));
    let started = Instant::now();
    let mut workers = Vec::new();
    for worker in 0..connections {
        let share = count / connections + u64::from(worker < count % connections);
        let client = client.clone();
        let url = url.to_owned();
        let record = record.clone();
        workers.push(tokio::spawn(async move {
            for _ in 0..share {
                let response = client
                    .post(&url)
                    .header("content-type", "application/octet-stream")
                    .body(record.clone())
                    .send()
                    .await?;
                if response.status() != 204 {
                    return Err::<(), Error>(format!("POST: {}", response.status()).into());
                }
            }
            Ok(())
        }));
    }
    for worker in workers {
        worker.await??;
    }
    let elapsed = started.elapsed();
    let head = client.head(url).send().await?;
    let tail = head
        .headers()
        .get("stream-next-offset")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let expected = format!("0000000000000000_{:016}", count * size as u64);
    if tail != expected {
        return Err(format!("tail is {tail}, expected {expected}").into());
    }
    eprintln!(
        "appended {count} records of {size} B over {connections} connections in {:.1} s",
        elapsed.as_secs_f64()
    );
    Ok(())
}

/// Sends one body of `total` bytes and returns the status the server
/// answered with, without waiting for the whole body to be sent.
async fn big_post(url: &str, total: u64, chunked: bool) -> Result<u16, Error> {
    let rest = url.strip_prefix("http://").ok_or("only http:// URLs")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let socket = TcpStream::connect(authority).await?;
    let (mut reader, mut writer) = socket.into_split();
    let framing = if chunked {
        "Transfer-Encoding: chunked".to_owned()
    } else {
        format!("Content-Length: {total}")
    };
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/octet-stream\r\n\
         {framing}\r\nConnection: close\r\n\r\n"
    );
    writer.write_all(head.as_bytes()).await?;
    let sender = tokio::spawn(async move {
        let block = vec![0u8; 64 * 1024];
        let mut left = total;
        while left > 0 {
            let n = left.min(block.len() as u64) as usize;
            let sent = if chunked {
                let mut framed = format!("{n:x}\r\n").into_bytes();
                framed.extend_from_slice(&block[..n]);
                framed.extend_from_slice(b"\r\n");
                writer.write_all(&framed).await
            } else {
                writer.write_all(&block[..n]).await
            };
            // The server may answer and close before the body is complete.
            if sent.is_err() {
                return;
            }
            left -= n as u64;
        }
        if chunked {
            let _ = writer.write_all(b"0\r\n\r\n").await;
        }
    });
    let mut response = Vec::new();
    let mut buffer = [0u8; 4096];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            let n = reader.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            response.extend_from_slice(&buffer[..n]);
            if response.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
        Ok::<(), std::io::Error>(())
    })
    .await;
    sender.abort();
    read.map_err(|_| "no answer within 60 s")??;
    let status_line = String::from_utf8_lossy(&response);
    status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {status_line:?}").into())
}
