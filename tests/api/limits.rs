//! Size limits: request bodies, per-stream and total memory caps, the
//! catch-up chunk cap, and the hard limits on headers, query strings,
//! identifiers and JSON nesting.

use futures_util::stream;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

fn small_body_limit() -> durable_streams_server::Config {
    let mut config = test_config();
    config.limits.max_request_body_bytes = 1024;
    config
}

async fn tail_of(app: &TestApp, name: &str) -> String {
    let head = app.client.head(app.url(name)).send().await.unwrap();
    header(&head, "stream-next-offset")
}

#[tokio::test]
async fn body_over_the_limit_with_content_length_is_413() {
    let app = spawn_app(small_body_limit()).await;
    app.create("b", "application/octet-stream").await;
    // Exactly at the limit is fine.
    app.append("b", "application/octet-stream", vec![7u8; 1024])
        .await;
    let response = app
        .client
        .post(app.url("b"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 1025])
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 413).await, "PAYLOAD_TOO_LARGE");
    let response = app
        .client
        .put(app.url("b2"))
        .header("content-type", "application/octet-stream")
        .body(vec![7u8; 4096])
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 413).await, "PAYLOAD_TOO_LARGE");
    assert_eq!(tail_of(&app, "b").await, offset(1024));
}

#[tokio::test]
async fn declared_length_over_the_limit_is_refused_before_the_body_is_sent() {
    let app = spawn_app(test_config()).await;
    app.create("huge", "application/octet-stream").await;
    // 50 MiB announced, nothing sent: the answer must not wait for a body.
    let mut socket = TcpStream::connect(app.addr).await.unwrap();
    let request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/octet-stream\r\n\
         Content-Length: {}\r\n\r\n",
        app.path("huge"),
        app.addr,
        50u64 << 20
    );
    socket.write_all(request.as_bytes()).await.unwrap();
    let response = read_one_response(&mut socket).await;
    assert_eq!(response.expect_problem(413), "PAYLOAD_TOO_LARGE");
    assert_eq!(tail_of(&app, "huge").await, ZERO_OFFSET);
}

#[tokio::test]
async fn chunked_body_over_the_limit_is_413() {
    let app = spawn_app(small_body_limit()).await;
    app.create("c", "application/octet-stream").await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = (0..5).map(|_| Ok(vec![1u8; 300])).collect();
    let response = app
        .client
        .post(app.url("c"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 413).await, "PAYLOAD_TOO_LARGE");

    // The same on a raw socket, with no Content-Length at all.
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
         Content-Type: application/octet-stream\r\nTransfer-Encoding: chunked\r\n\r\n",
        app.path("c"),
        app.addr
    )
    .into_bytes();
    for _ in 0..3 {
        request.extend_from_slice(b"200\r\n");
        request.extend_from_slice(&[2u8; 0x200]);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    let response = raw_http(app.addr, &request).await;
    assert_eq!(response.expect_problem(413), "PAYLOAD_TOO_LARGE");

    // A chunked body within the limit is accepted.
    let parts: Vec<Result<Vec<u8>, std::io::Error>> = (0..4).map(|_| Ok(vec![3u8; 256])).collect();
    let ok = app
        .client
        .post(app.url("c"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 204);
    assert_eq!(tail_of(&app, "c").await, offset(1024));
}

#[tokio::test]
async fn per_stream_cap_is_413() {
    let mut config = test_config();
    config.limits.max_stream_bytes = 10;
    let app = spawn_app(config).await;
    app.create("cap", "text/plain").await;
    app.append("cap", "text/plain", "123456").await;
    let over = app
        .client
        .post(app.url("cap"))
        .header("content-type", "text/plain")
        .body("78901")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(over, 413).await, "STREAM_TOO_LARGE");
    // Up to the cap exactly is fine, one more byte is not.
    app.append("cap", "text/plain", "7890").await;
    let one_more = app
        .client
        .post(app.url("cap"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(one_more, 413).await, "STREAM_TOO_LARGE");
    // Other streams have their own budget.
    app.create("other", "text/plain").await;
    app.append("other", "text/plain", "0123456789").await;
    // An initial body over the cap is refused too.
    let created = app
        .client
        .put(app.url("big"))
        .header("content-type", "text/plain")
        .body("0123456789A")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(created, 413).await, "STREAM_TOO_LARGE");
    assert_eq!(
        app.read("cap", None).await.text().await.unwrap(),
        "1234567890"
    );
}

#[tokio::test]
async fn total_memory_cap_is_507_and_freed_by_delete() {
    let mut config = test_config();
    config.limits.max_memory_bytes = 100;
    let app = spawn_app(config).await;
    app.create("a", "application/octet-stream").await;
    app.create("b", "application/octet-stream").await;
    app.append("a", "application/octet-stream", vec![0u8; 60])
        .await;
    let full = app
        .client
        .post(app.url("b"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 50])
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(full, 507).await, "STORAGE_FULL");
    let full_create = app
        .client
        .put(app.url("c"))
        .header("content-type", "application/octet-stream")
        .body(vec![0u8; 50])
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(full_create, 507).await, "STORAGE_FULL");
    // The refused create left nothing behind.
    let head = app.client.head(app.url("c")).send().await.unwrap();
    assert_eq!(head.status(), 404);
    // What fits still fits.
    app.append("b", "application/octet-stream", vec![0u8; 40])
        .await;
    assert_eq!(tail_of(&app, "b").await, offset(40));

    let deleted = app.client.delete(app.url("a")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    app.append("b", "application/octet-stream", vec![0u8; 50])
        .await;
    assert_eq!(tail_of(&app, "b").await, offset(90));
}

/// Pages through a stream from the start; returns every page's body and
/// checks the headers of partial and final pages.
async fn page_through(app: &TestApp, name: &str, closed: bool) -> Vec<Vec<u8>> {
    let mut pages = Vec::new();
    let mut from = "-1".to_owned();
    loop {
        let response = app.read(name, Some(&from)).await;
        assert_eq!(response.status(), 200);
        let next = header(&response, "stream-next-offset");
        let up_to_date = maybe_header(&response, "stream-up-to-date");
        let stream_closed = maybe_header(&response, "stream-closed");
        let body = response.bytes().await.unwrap().to_vec();
        if up_to_date.is_some() {
            assert_eq!(stream_closed.is_some(), closed);
            pages.push(body);
            return pages;
        }
        // A partial chunk: mid-stream offset, neither up-to-date nor closed.
        assert_eq!(stream_closed, None);
        assert!(!body.is_empty(), "a partial chunk carries data");
        assert!(next > from, "{next} after {from}");
        pages.push(body);
        from = next;
        assert!(pages.len() < 10_000, "paging does not end");
    }
}

#[tokio::test]
async fn catch_up_reads_are_chunked_and_reassemble_exactly() {
    let mut config = test_config();
    config.limits.max_read_bytes = 1000;
    let app = spawn_app(config).await;
    app.create("paged", "application/octet-stream").await;
    let mut expected = Vec::new();
    let mut state = 0x2545_f491_u32;
    for i in 0..200u32 {
        // Sizes 1..=97 and every byte value.
        let len = 1 + (i * 37 % 97) as usize;
        let record: Vec<u8> = (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state >> 24) as u8
            })
            .collect();
        expected.extend_from_slice(&record);
        app.append("paged", "application/octet-stream", record)
            .await;
    }
    let total = expected.len();
    assert!(total > 5 * 1000);

    let first = app.read("paged", Some("-1")).await;
    let next = header(&first, "stream-next-offset");
    assert_ne!(next, offset(total as u64), "first page is partial");
    assert_eq!(maybe_header(&first, "stream-up-to-date"), None);
    let first_body = first.bytes().await.unwrap();
    assert!(first_body.len() >= 1000 && first_body.len() < 1000 + 97);
    assert_eq!(next, offset(first_body.len() as u64));

    let pages = page_through(&app, "paged", false).await;
    assert!(pages.len() >= 5, "{} pages", pages.len());
    assert_eq!(pages.concat(), expected);

    // Once closed, only the final page says so.
    let close = app
        .client
        .post(app.url("paged"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let pages = page_through(&app, "paged", true).await;
    assert_eq!(pages.concat(), expected);
}

#[tokio::test]
async fn json_pages_are_each_a_complete_array() {
    let mut config = test_config();
    config.limits.max_read_bytes = 64;
    let app = spawn_app(config).await;
    app.create("jp", "application/json").await;
    let mut expected = Vec::new();
    for i in 0..50 {
        let message = serde_json::json!({"n": i, "pad": "x".repeat(i % 7)});
        app.append("jp", "application/json", message.to_string())
            .await;
        expected.push(message);
    }
    let pages = page_through(&app, "jp", false).await;
    assert!(pages.len() > 3);
    let mut messages = Vec::new();
    for page in pages {
        let value: serde_json::Value = serde_json::from_slice(&page).expect("page is JSON");
        messages.extend(value.as_array().expect("page is an array").iter().cloned());
    }
    assert_eq!(messages, expected);
}

#[tokio::test]
async fn oversized_headers_queries_identifiers_and_deep_json_get_clear_problems() {
    let mut config = test_config();
    config.limits.max_header_bytes = 2048;
    config.limits.max_query_bytes = 256;
    config.limits.max_identifier_bytes = 32;
    config.limits.max_json_depth = 8;
    config.subscriptions.enabled = true;
    let app = spawn_app(config).await;
    app.create("j", "application/json").await;

    let response = app
        .client
        .get(app.url("j"))
        .header("x-padding", "p".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 431).await, "HEADERS_TOO_LARGE");
    // Probes too: the limit sits in front of every route.
    let response = app
        .client
        .get(app.at("/healthz"))
        .header("x-padding", "p".repeat(4096))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 431).await, "HEADERS_TOO_LARGE");

    let long_query = format!("{}?offset=-1&pad={}", app.url("j"), "q".repeat(300));
    let response = app.client.get(long_query).send().await.unwrap();
    assert_eq!(expect_problem(response, 414).await, "QUERY_TOO_LONG");

    let append_as = |producer: String| {
        app.client
            .post(app.url("j"))
            .header("content-type", "application/json")
            .header("producer-id", producer)
            .header("producer-epoch", "0")
            .header("producer-seq", "0")
            .body("{\"a\":1}")
            .send()
    };
    let response = append_as("w".repeat(33)).await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "IDENTIFIER_TOO_LONG");
    assert!(
        append_as("w".repeat(32))
            .await
            .unwrap()
            .status()
            .is_success()
    );

    let nested = |depth: usize| format!("{}1{}", "[".repeat(depth), "]".repeat(depth));
    let append_json = |body: String| {
        app.client
            .post(app.url("j"))
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    // The outer array is flattened by one level: 8 deep is allowed.
    assert!(append_json(nested(8)).await.unwrap().status().is_success());
    let response = append_json(nested(9)).await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "JSON_TOO_DEEP");
    // Brackets inside strings do not count.
    let in_string = format!("{{\"s\":\"{}\"}}", "[".repeat(100));
    assert!(append_json(in_string).await.unwrap().status().is_success());
    // A hostile depth far beyond any parser's own limit is refused the same way.
    let response = append_json(nested(100_000)).await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "JSON_TOO_DEEP");

    // Control bodies of the __ds APIs.
    let response = app
        .client
        .post(app.at("/v1/stream/__ds/subscriptions/s1/claim"))
        .body(format!("{{\"worker\":{}}}", nested(20)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(body.contains("deeper than 8"), "{body}");
    let response = app
        .client
        .post(app.at("/v1/stream/__ds/subscriptions/s1/claim"))
        .body(format!("{{\"worker\":\"{}\"}}", "w".repeat(33)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body = response.text().await.unwrap();
    assert!(body.contains("max_identifier_bytes"), "{body}");
}
