//! Request smuggling: every head or body that two HTTP/1.1 parsers could
//! read two ways is refused with a problem answer and the connection
//! closed, so nothing after it on the connection is ever run. Raw bytes
//! go in over a real socket; the answer is parsed off the wire.

use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::helpers::*;

/// Sends `request` on a new connection; returns the one answer, after
/// checking that the server closed the connection behind it.
async fn refused(app: &TestApp, request: &str) -> RawResponse {
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    socket
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let answer = read_one_response(&mut socket).await;
    assert_eq!(
        answer.header("connection").as_deref(),
        Some("close"),
        "{request:?}: {answer:?}"
    );
    let rest = read_until_closed(&mut socket).await;
    assert!(
        rest.is_empty(),
        "{request:?}: bytes after the refusal: {:?}",
        String::from_utf8_lossy(&rest)
    );
    answer
}

/// Each of `requests` is refused with `status` and problem `code`.
async fn all_refused(
    app: &TestApp,
    requests: impl IntoIterator<Item = String>,
    status: u16,
    code: &str,
) {
    for request in requests {
        let answer = refused(app, &request).await;
        assert_eq!(answer.expect_problem(status), code, "{request:?}");
    }
}

async fn app_with_stream() -> TestApp {
    let app = spawn_app(test_config()).await;
    app.create("s", "text/plain").await;
    app.append("s", "text/plain", "base").await;
    app
}

async fn content(app: &TestApp) -> String {
    app.read("s", None).await.text().await.expect("body")
}

/// An append of `framing` headers and `body` to stream `s`, followed by a
/// second, smuggled append of `SMUGGLED`.
fn append_with(framing: &str, body: &str) -> String {
    format!(
        "POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n{framing}\r\n{body}\
         POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nSMUGGLED"
    )
}

#[tokio::test]
async fn content_length_with_transfer_encoding_is_refused() {
    let app = app_with_stream().await;
    let framings = [
        "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: chunked\r\nContent-Length: 5\r\n",
        "Content-Length: 0\r\nTransfer-Encoding: chunked\r\n",
    ];
    let requests = framings.map(|framing| append_with(framing, "0\r\n\r\n"));
    all_refused(&app, requests, 400, "MALFORMED_REQUEST").await;
    assert_eq!(content(&app).await, "base");
}

#[tokio::test]
async fn duplicate_or_malformed_content_lengths_are_refused() {
    let app = app_with_stream().await;
    let framings = [
        "Content-Length: 3\r\nContent-Length: 3\r\n",
        "Content-Length: 3\r\nContent-Length: 4\r\n",
        "Content-Length: 3, 3\r\n",
        "Content-Length: +3\r\n",
        "Content-Length: -3\r\n",
        "Content-Length: 0x3\r\n",
        "Content-Length: 3a\r\n",
        "Content-Length: 1 2\r\n",
        "Content-Length: 99999999999999999999\r\n",
        "Content-Length: \r\n",
    ];
    let requests = framings.map(|framing| append_with(framing, "abc"));
    all_refused(&app, requests, 400, "MALFORMED_REQUEST").await;
    assert_eq!(content(&app).await, "base");
}

#[tokio::test]
async fn transfer_codings_other_than_a_final_chunked_are_refused() {
    let app = app_with_stream().await;
    let framings = [
        "Transfer-Encoding: gzip\r\n",
        "Transfer-Encoding: identity\r\n",
        "Transfer-Encoding: chunked, gzip\r\n",
        "Transfer-Encoding: chunked, chunked\r\n",
        "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
        "Transfer-Encoding: xchunked\r\n",
        "Transfer-Encoding: chunked,\r\n",
        "Transfer-Encoding: ,chunked\r\n",
        "Transfer-Encoding: \"chunked\"\r\n",
    ];
    let requests = framings.map(|framing| append_with(framing, "3\r\nabc\r\n0\r\n\r\n"));
    all_refused(&app, requests, 400, "MALFORMED_REQUEST").await;
    // A final chunked after another coding is well-formed, but not ours.
    let answer = refused(
        &app,
        &append_with(
            "Transfer-Encoding: gzip, chunked\r\n",
            "3\r\nabc\r\n0\r\n\r\n",
        ),
    )
    .await;
    assert_eq!(answer.expect_problem(501), "UNSUPPORTED_TRANSFER_CODING");
    // HTTP/1.0 has no transfer codings.
    let answer = refused(
        &app,
        "POST /v1/stream/s HTTP/1.0\r\nContent-Type: text/plain\r\n\
         Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
    )
    .await;
    assert_eq!(answer.expect_problem(400), "MALFORMED_REQUEST");
    assert_eq!(content(&app).await, "base");
}

#[tokio::test]
async fn malformed_chunked_bodies_are_refused_and_end_the_connection() {
    let app = app_with_stream().await;
    let bodies = [
        "g\r\nabc\r\n0\r\n\r\n",
        "0x3\r\nabc\r\n0\r\n\r\n",
        "+3\r\nabc\r\n0\r\n\r\n",
        "-3\r\nabc\r\n0\r\n\r\n",
        "3 \r\nabc\r\n0\r\n\r\n",
        " 3\r\nabc\r\n0\r\n\r\n",
        "10000000000000003\r\nabc\r\n0\r\n\r\n",
        "3\nabc\r\n0\r\n\r\n",
        "3\r\nabcX\r\n0\r\n\r\n",
        "3\r\nabc\n0\r\n\r\n",
        "3\r\nabc\r\n0\r\nTrailer: x\n\r\n",
        "3\r\nabc\r\n0\r\n folded\r\n\r\n",
        "3;\x01\r\nabc\r\n0\r\n\r\n",
    ];
    let requests = bodies.map(|body| append_with("Transfer-Encoding: chunked\r\n", body));
    all_refused(&app, requests, 400, "BODY_READ_FAILED").await;
    assert_eq!(content(&app).await, "base");
}

#[tokio::test]
async fn line_ending_and_field_oddities_are_refused() {
    let app = app_with_stream().await;
    let requests = [
        // Bare LF ending the request line, a field line, the head.
        "GET /v1/stream/s HTTP/1.1\nHost: h\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\nX: 1\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\n\n",
        // Bare CR inside a value.
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
        // Obsolete line folding.
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
        // Whitespace before the colon, in the name.
        "GET /v1/stream/s HTTP/1.1\r\nHost : h\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Length : 3\r\n\r\nabc",
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nBad Name: x\r\n\r\n",
        // Control characters in a value.
        "GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nX: a\x00b\r\n\r\n",
        // Request-line oddities.
        "GET  /v1/stream/s HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/stream/s  HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET /v1/stream/s HTTP/1.2\r\nHost: h\r\n\r\n",
        "GET /v1/stream/s HTTP/2.0\r\nHost: h\r\n\r\n",
        "GET /v1/stream/\x7fs HTTP/1.1\r\nHost: h\r\n\r\n",
        "G@T /v1/stream/s HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    all_refused(&app, requests.map(str::to_owned), 400, "MALFORMED_REQUEST").await;
}

#[tokio::test]
async fn host_must_be_present_once() {
    let app = app_with_stream().await;
    let requests = [
        "GET /v1/stream/s HTTP/1.1\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: user@a\r\n\r\n",
        "GET /v1/stream/s HTTP/1.1\r\nHost: a b\r\n\r\n",
    ];
    all_refused(&app, requests.map(str::to_owned), 400, "MALFORMED_REQUEST").await;
    // HTTP/1.0 may leave Host out.
    let answer = raw_http(app.addr, b"GET /v1/stream/s HTTP/1.0\r\n\r\n").await;
    assert_eq!(answer.status, 200);
    assert_eq!(answer.body, b"base");
}

#[tokio::test]
async fn absolute_form_targets_use_their_authority() {
    let app = spawn_app(test_config()).await;
    let answer = raw_http(
        app.addr,
        b"PUT http://public.example:8080/v1/stream/abs?x=1 HTTP/1.1\r\nHost: internal\r\n\
          Content-Type: text/plain\r\nContent-Length: 2\r\nConnection: close\r\n\r\nhi",
    )
    .await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(
        answer.header("location").as_deref(),
        Some("http://public.example:8080/v1/stream/abs")
    );
    let read = app.read("abs", None).await;
    assert_eq!(read.text().await.expect("body"), "hi");
    let requests = [
        "GET ftp://public.example/v1/stream/abs HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http:///v1/stream/abs HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET http://user@public.example/v1/stream/abs HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET public.example:80 HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET * HTTP/1.1\r\nHost: h\r\n\r\n",
        "GET v1/stream/abs HTTP/1.1\r\nHost: h\r\n\r\n",
    ];
    all_refused(&app, requests.map(str::to_owned), 400, "MALFORMED_REQUEST").await;
}

#[tokio::test]
async fn a_well_framed_pipeline_splits_exactly_at_each_body() {
    let app = app_with_stream().await;
    // A chunked append whose data looks like a request, a Content-Length
    // append, and a read, in one write.
    let pipeline = "POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\n\
        Transfer-Encoding: chunked\r\n\r\n\
        1c\r\n|GET / HTTP/1.1\r\nHost: h\r\n\r\n\r\n0\r\nX-Trailer: ignored\r\n\r\n\
        POST /v1/stream/s HTTP/1.1\r\nHost: h\r\nContent-Type: text/plain\r\nContent-Length: 4\r\n\r\n|end\
        GET /v1/stream/s HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n";
    let mut socket = TcpStream::connect(app.addr).await.expect("connect");
    socket.write_all(pipeline.as_bytes()).await.expect("write");
    let answers = read_responses(&mut socket, 3).await;
    assert_eq!(answers[0].status, 204);
    assert_eq!(answers[1].status, 204);
    let read = &answers[2];
    assert_eq!(read.status, 200);
    assert_eq!(
        String::from_utf8_lossy(&read.body),
        "base|GET / HTTP/1.1\r\nHost: h\r\n\r\n|end"
    );
}
