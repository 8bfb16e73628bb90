//! `/metrics` and the request log of the real binary: the Prometheus
//! recorder and the log subscriber are process-wide, so each test spawns
//! its own server and asserts on what a scrape (or its log) shows.

use std::time::Duration;

use crate::helpers::*;

const STREAM_ROUTE: &str = "/v1/stream/{*name}";

async fn scrape(server: &ChildServer) -> String {
    let response = client()
        .get(server.at("/metrics"))
        .send()
        .await
        .expect("GET /metrics");
    assert_eq!(response.status(), 200, "log:\n{}", server.log());
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; version=0.0.4; charset=utf-8"
    );
    response.text().await.expect("metrics text")
}

fn value(scrape: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    sample(scrape, name, labels)
        .unwrap_or_else(|| panic!("no sample {name}{labels:?} in:\n{scrape}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counters_and_histograms_move_with_traffic() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data_dir = dir.path().to_str().expect("utf-8 path");
    let server = ChildServer::start(&[
        ("DS_STORAGE__MODE", "acid"),
        ("DS_STORAGE__DATA_DIR", data_dir),
        ("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "25"),
    ])
    .await;
    let http = client();
    let before = scrape(&server).await;
    assert_eq!(value(&before, "durable_streams_ready", &[]), 1.0);
    assert_eq!(
        value(
            &before,
            "durable_streams_build_info",
            &[
                ("version", env!("CARGO_PKG_VERSION")),
                ("commit", durable_streams_server::BUILD_COMMIT)
            ]
        ),
        1.0
    );
    for process in [
        "durable_streams_process_resident_memory_bytes",
        "durable_streams_process_open_fds",
        "durable_streams_process_max_fds",
        "durable_streams_process_start_time_seconds",
    ] {
        assert!(value(&before, process, &[]) > 0.0, "{process}");
    }
    // In ticks of 10 ms: a fresh process may not have used one yet.
    let cpu_before = value(&before, "durable_streams_process_cpu_seconds_total", &[]);
    assert_eq!(value(&before, "durable_streams_appends_total", &[]), 0.0);

    let created = http
        .put(server.url("metered-stream"))
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    const APPENDS: usize = 20;
    for i in 0..APPENDS {
        let appended = http
            .post(server.url("metered-stream"))
            .header("content-type", "text/plain")
            .body(format!("record-{i:02}"))
            .send()
            .await
            .expect("POST");
        assert_eq!(appended.status(), 204);
    }
    let read = http
        .get(server.url("metered-stream"))
        .send()
        .await
        .expect("GET");
    assert_eq!(read.status(), 200);
    let body = read.bytes().await.expect("body");
    let missing = http
        .get(server.at("/no/such/route"))
        .send()
        .await
        .expect("GET");
    assert_eq!(missing.status(), 404);

    // A long-poll at the tail is in flight and a live reader while it waits
    // (25 s, so a loaded machine has the whole hang guard to see it before
    // it times out).
    let tail = {
        let head = http
            .head(server.url("metered-stream"))
            .send()
            .await
            .expect("HEAD");
        header(&head, "stream-next-offset")
    };
    let poll = tokio::spawn({
        let http = http.clone();
        let url = format!(
            "{}?offset={tail}&live=long-poll",
            server.url("metered-stream")
        );
        async move { http.get(url).send().await.expect("long-poll").status() }
    });
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    let waiting = loop {
        let now = scrape(&server).await;
        let readers = value(
            &now,
            "durable_streams_live_readers",
            &[("mode", "long_poll")],
        );
        if readers == 1.0 {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the long-poll never showed as a live reader:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The long-poll and this scrape.
    assert_eq!(
        value(&waiting, "durable_streams_http_requests_in_flight", &[]),
        2.0
    );
    assert_eq!(poll.await.expect("long-poll task"), 204);

    let after = scrape(&server).await;
    let post = [
        ("method", "POST"),
        ("route", STREAM_ROUTE),
        ("status", "204"),
    ];
    assert_eq!(
        value(&after, "durable_streams_http_requests_total", &post),
        APPENDS as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_http_request_duration_seconds_count",
            &[("method", "POST"), ("route", STREAM_ROUTE)]
        ),
        APPENDS as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_http_request_duration_seconds_bucket",
            &[("method", "POST"), ("route", STREAM_ROUTE), ("le", "+Inf")]
        ),
        APPENDS as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "durable_streams_appends_total", &[]),
        APPENDS as f64
    );
    assert_eq!(
        value(&after, "durable_streams_appended_bytes_total", &[]),
        body.len() as f64
    );
    assert_eq!(
        value(&after, "durable_streams_streams_created_total", &[]),
        1.0
    );
    assert_eq!(value(&after, "durable_streams_streams", &[]), 1.0);
    assert_eq!(
        value(
            &after,
            "durable_streams_storage_bytes",
            &[("backend", "acid")]
        ),
        body.len() as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_reads_total",
            &[("mode", "catch_up")]
        ),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_read_bytes_total",
            &[("mode", "catch_up")]
        ),
        body.len() as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_reads_total",
            &[("mode", "long_poll")]
        ),
        1.0
    );
    assert_eq!(
        value(&after, "durable_streams_long_poll_timeouts_total", &[]),
        1.0
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_live_readers",
            &[("mode", "long_poll")]
        ),
        0.0
    );
    assert_eq!(
        value(&after, "durable_streams_http_requests_in_flight", &[]),
        1.0
    );
    let appends = value(
        &after,
        "durable_streams_storage_operation_duration_seconds_count",
        &[("backend", "acid"), ("operation", "append")],
    );
    assert_eq!(appends, APPENDS as f64);
    // Sequential appends: one transaction each, at least.
    let commits = value(
        &after,
        "durable_streams_storage_commit_duration_seconds_count",
        &[("backend", "acid")],
    );
    assert!(commits >= APPENDS as f64, "{commits}");
    assert!(
        value(
            &after,
            "durable_streams_storage_commit_batch_size_count",
            &[("backend", "acid")]
        ) >= APPENDS as f64
    );
    assert_eq!(
        value(
            &after,
            "durable_streams_storage_errors_total",
            &[("backend", "acid"), ("kind", "io")]
        ),
        0.0
    );
    assert!(
        sample(
            &after,
            "durable_streams_storage_write_queue_depth",
            &[("backend", "acid")]
        )
        .is_some()
    );
    assert!(
        value(&after, "durable_streams_process_cpu_seconds_total", &[]) >= cpu_before,
        "CPU time never goes back"
    );
    // The stream path is never a label.
    assert!(!after.contains("metered-stream"), "{after}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_counts_as_a_live_reader_not_as_in_flight() {
    let server = ChildServer::start(&[]).await;
    let http = client();
    let created = http
        .put(server.url("sse-metered"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    let mut reader = open_sse(
        &http,
        &format!("{}?offset=-1&live=sse", server.url("sse-metered")),
    )
    .await;
    let events = reader.take(2).await;
    assert_eq!(events[0].data(), "hello");

    let open = scrape(&server).await;
    assert_eq!(
        value(&open, "durable_streams_live_readers", &[("mode", "sse")]),
        1.0
    );
    // Only the scrape: the open SSE stream left the gauge when it started.
    assert_eq!(
        value(&open, "durable_streams_http_requests_in_flight", &[]),
        1.0
    );
    assert_eq!(
        value(&open, "durable_streams_reads_total", &[("mode", "sse")]),
        1.0
    );
    assert_eq!(
        value(
            &open,
            "durable_streams_read_bytes_total",
            &[("mode", "sse")]
        ),
        5.0
    );
    assert!(value(&open, "durable_streams_sse_events_total", &[]) >= 2.0);

    drop(reader);
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let now = scrape(&server).await;
        if value(&now, "durable_streams_live_readers", &[("mode", "sse")]) == 0.0 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the SSE reader was never released:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_separate_listener_keeps_metrics_off_the_main_one() {
    let server =
        ChildServer::start(&[("DS_OBSERVABILITY__METRICS__BIND_ADDRESS", "127.0.0.1:0")]).await;
    let metrics_addr = server.metrics_address();
    let http = client();
    let main = http.get(server.at("/metrics")).send().await.expect("GET");
    assert_eq!(main.status(), 404);
    let separate = http
        .get(format!("http://{metrics_addr}/metrics"))
        .send()
        .await
        .expect("GET metrics listener");
    assert_eq!(separate.status(), 200);
    let text = separate.text().await.expect("text");
    assert!(
        sample(
            &text,
            "durable_streams_http_requests_total",
            &[("method", "GET"), ("route", "unmatched"), ("status", "404")]
        )
        .is_some(),
        "{text}"
    );
    // Probes work there too (kubelet asks this port when the API wants a
    // client certificate); streams are not served there.
    for (path, body) in [("/healthz", "ok"), ("/readyz", "ready")] {
        let probe = http
            .get(format!("http://{metrics_addr}{path}"))
            .send()
            .await
            .expect("probe the metrics listener");
        assert_eq!(probe.status(), 200, "{path}");
        assert_eq!(probe.text().await.expect("body"), body, "{path}");
    }
    let stream = http
        .put(format!("http://{metrics_addr}/v1/stream/not-here"))
        .send()
        .await
        .expect("PUT on the metrics listener");
    assert_eq!(stream.status(), 404);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_metrics_are_not_served() {
    let server = ChildServer::start(&[("DS_OBSERVABILITY__METRICS__ENABLED", "false")]).await;
    let response = client()
        .get(server.at("/metrics"))
        .send()
        .await
        .expect("GET");
    assert_eq!(response.status(), 404);
}

/// The request log line of `path` with `status`, waiting for it briefly
/// (a streamed body is logged when it ends).
async fn request_line(server: &ChildServer, method: &str, status: u64) -> serde_json::Value {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        if let Some(line) = server.json_log().into_iter().find(|line| {
            line["message"] == "request" && line["method"] == method && line["status"] == status
        }) {
            return line;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no request line for {method} {status}; log:\n{}",
            server.log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_log_line_per_request_with_its_fields() {
    let server = ChildServer::start(&[
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
        // Room for the stream, not for the append: a 507, a server error.
        ("DS_LIMITS__MAX_MEMORY_BYTES", "8"),
    ])
    .await;
    let http = client();
    let created = http
        .put(server.url("logged"))
        .header("content-type", "text/plain")
        .body("1234")
        .send()
        .await
        .expect("PUT");
    assert_eq!(created.status(), 201);
    let full = http
        .post(server.url("logged"))
        .header("content-type", "text/plain")
        .body("more than the store can hold")
        .send()
        .await
        .expect("POST");
    assert_eq!(full.status(), 507);
    let missing = http.get(server.url("not-there")).send().await.expect("GET");
    assert_eq!(missing.status(), 404);

    let line = request_line(&server, "PUT", 201).await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["target"], "durable_streams_server::access");
    assert_eq!(line["route"], "/v1/stream/{*name}");
    assert_eq!(line["stream"], "/v1/stream/logged");
    assert_eq!(line["bytes_in"], 4);
    assert_eq!(line["bytes_out"], 0);
    assert_eq!(line["identity"], "-");
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    let client_address = line["client"].as_str().expect("client address");
    assert!(client_address.starts_with("127.0.0.1:"), "{line}");

    let line = request_line(&server, "GET", 404).await;
    assert_eq!(line["level"], "INFO", "{line}");
    assert_eq!(line["code"], "STREAM_NOT_FOUND");
    assert!(line.get("error").is_none(), "{line}");

    let line = request_line(&server, "POST", 507).await;
    assert_eq!(line["level"], "ERROR", "{line}");
    assert_eq!(line["code"], "STORAGE_FULL");
    assert!(
        line["error"]
            .as_str()
            .is_some_and(|cause| cause.contains("holds its limit")),
        "{line}"
    );
    // Logged once: the request line is the only error line.
    let errors: Vec<serde_json::Value> = server
        .json_log()
        .into_iter()
        .filter(|l| l["level"] == "ERROR")
        .collect();
    assert_eq!(errors.len(), 1, "{errors:#?}");
}

/// Scrapes until `check` holds for the scrape (bounded by [`HANG_GUARD`]).
async fn scrape_until(server: &ChildServer, what: &str, check: impl Fn(&str) -> bool) -> String {
    let deadline = tokio::time::Instant::now() + HANG_GUARD;
    loop {
        let now = scrape(server).await;
        if check(&now) {
            return now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what} never happened:\n{now}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_poll_whose_client_leaves_while_it_waits_is_a_499() {
    let server = ChildServer::start(&[
        ("DS_OBSERVABILITY__LOG_FORMAT", "json"),
        ("DS_TRANSPORT__CONNECTION__LONG_POLL_TIMEOUT_SECS", "60"),
    ])
    .await;
    let tail = create_text_stream(&server.url("left")).await;
    let mut socket = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    tokio::io::AsyncWriteExt::write_all(
        &mut socket,
        format!("GET /v1/stream/left?offset={tail}&live=long-poll HTTP/1.1\r\nHost: h\r\n\r\n")
            .as_bytes(),
    )
    .await
    .expect("send the long-poll");
    let readers = |scrape: &str| {
        value(
            scrape,
            "durable_streams_live_readers",
            &[("mode", "long_poll")],
        )
    };
    let waiting = scrape_until(&server, "the long-poll waiting", |now| readers(now) == 1.0).await;
    // The long-poll and this scrape.
    assert_eq!(
        value(&waiting, "durable_streams_http_requests_in_flight", &[]),
        2.0
    );
    drop(socket);
    let left = [
        ("method", "GET"),
        ("route", STREAM_ROUTE),
        ("status", "499"),
    ];
    let after = scrape_until(&server, "the long-poll ending", |now| {
        readers(now) == 0.0
            && sample(now, "durable_streams_http_requests_total", &left) == Some(1.0)
    })
    .await;
    assert_eq!(
        value(&after, "durable_streams_http_requests_in_flight", &[]),
        1.0
    );
    let line = request_line(&server, "GET", 499).await;
    assert_eq!(line["stream"], "/v1/stream/left", "{line}");
    assert_eq!(line["bytes_out"], 0, "{line}");
}
