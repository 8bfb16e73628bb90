//! `POST`: appends, closing, `Stream-Seq`, JSON mode and `DELETE`.

use futures_util::stream;

use crate::helpers::*;

#[tokio::test]
async fn appends_answer_204_and_concatenate_in_order() {
    let app = spawn_app(test_config()).await;
    app.create("log", "text/plain").await;
    let response = app
        .client
        .post(app.url("log"))
        .header("content-type", "text/plain")
        .body("hello ")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "stream-next-offset"), offset(6));
    assert_eq!(maybe_header(&response, "stream-closed"), None);
    assert_security_headers(&response);
    // A parameterised or differently cased type matches the stream's.
    let tail = app
        .append("log", "Text/Plain; charset=UTF-8", "world")
        .await;
    assert_eq!(tail, offset(11));

    let read = app.read("log", None).await;
    assert_eq!(header(&read, "stream-next-offset"), offset(11));
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"hello world");
}

#[tokio::test]
async fn chunked_request_bodies_are_accepted() {
    let app = spawn_app(test_config()).await;
    app.create("chunked", "application/octet-stream").await;
    let parts: Vec<Result<Vec<u8>, std::io::Error>> =
        vec![Ok(b"ab".to_vec()), Ok(b"cd".to_vec()), Ok(vec![0, 255])];
    let response = app
        .client
        .post(app.url("chunked"))
        .header("content-type", "application/octet-stream")
        .body(reqwest::Body::wrap_stream(stream::iter(parts)))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "stream-next-offset"), offset(6));
    let read = app.read("chunked", None).await;
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"abcd\x00\xff");
}

#[tokio::test]
async fn bad_appends_are_problems() {
    let app = spawn_app(test_config()).await;
    app.create("strict", "text/plain").await;

    let empty = app
        .client
        .post(app.url("strict"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(empty, 400).await, "EMPTY_BODY");

    let untyped = app
        .client
        .post(app.url("strict"))
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(untyped, 400).await, "MISSING_CONTENT_TYPE");

    let mismatch = app
        .client
        .post(app.url("strict"))
        .header("content-type", "application/json")
        .body("{}")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(mismatch, 409).await, "CONTENT_TYPE_MISMATCH");

    let missing = app
        .client
        .post(app.url("nope"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(missing, 404).await, "STREAM_NOT_FOUND");

    let method = app.client.patch(app.url("strict")).send().await.unwrap();
    let allow = maybe_header(&method, "allow").expect("405 lists the allowed methods");
    for name in ["GET", "HEAD", "POST", "PUT", "DELETE"] {
        assert!(allow.split(',').any(|m| m.trim() == name), "{allow}");
    }
    assert_eq!(expect_problem(method, 405).await, "METHOD_NOT_ALLOWED");

    // Nothing was written by any of them.
    let head = app.client.head(app.url("strict")).send().await.unwrap();
    assert_eq!(header(&head, "stream-next-offset"), ZERO_OFFSET);
}

#[tokio::test]
async fn non_utf8_stream_seq_is_a_problem() {
    let app = spawn_app(test_config()).await;
    app.create("seqbytes", "text/plain").await;
    let mut request = format!(
        "POST {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Type: text/plain\r\n\
         Content-Length: 1\r\nStream-Seq: ",
        app.path("seqbytes"),
        app.addr
    )
    .into_bytes();
    request.extend_from_slice(&[0xc3, 0x28, 0xa0]);
    request.extend_from_slice(b"\r\n\r\nx");
    let response = raw_http(app.addr, &request).await;
    assert_eq!(response.expect_problem(400), "INVALID_HEADER");
    let head = app.client.head(app.url("seqbytes")).send().await.unwrap();
    assert_eq!(header(&head, "stream-next-offset"), ZERO_OFFSET);
}

#[tokio::test]
async fn close_is_idempotent_and_blocks_later_appends() {
    let app = spawn_app(test_config()).await;
    app.create("c", "text/plain").await;
    app.append("c", "text/plain", "abc").await;

    for _ in 0..2 {
        // Content-Type is irrelevant for a close without body.
        let close = app
            .client
            .post(app.url("c"))
            .header("stream-closed", "TRUE")
            .header("content-type", "application/json")
            .send()
            .await
            .unwrap();
        assert_eq!(close.status(), 204);
        assert_eq!(header(&close, "stream-closed"), "true");
        assert_eq!(header(&close, "stream-next-offset"), offset(3));
    }

    let late = app
        .client
        .post(app.url("c"))
        .header("content-type", "text/plain")
        .body("more")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&late, "stream-closed"), "true");
    assert_eq!(header(&late, "stream-next-offset"), offset(3));
    assert_eq!(expect_problem(late, 409).await, "STREAM_CLOSED");

    let head = app.client.head(app.url("c")).send().await.unwrap();
    assert_eq!(header(&head, "stream-closed"), "true");
}

#[tokio::test]
async fn stream_closed_other_than_true_is_ignored() {
    let app = spawn_app(test_config()).await;
    app.create("notclosed", "text/plain").await;
    let response = app
        .client
        .post(app.url("notclosed"))
        .header("content-type", "text/plain")
        .header("stream-closed", "yes")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(maybe_header(&response, "stream-closed"), None);
    let head = app.client.head(app.url("notclosed")).send().await.unwrap();
    assert_eq!(maybe_header(&head, "stream-closed"), None);
}

#[tokio::test]
async fn append_and_close_is_atomic_and_not_repeatable() {
    let app = spawn_app(test_config()).await;
    app.create("ac", "text/plain").await;
    let response = app
        .client
        .post(app.url("ac"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("last")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(header(&response, "stream-closed"), "true");
    assert_eq!(header(&response, "stream-next-offset"), offset(4));

    let read = app.read("ac", None).await;
    assert_eq!(header(&read, "stream-closed"), "true");
    assert_eq!(header(&read, "stream-up-to-date"), "true");
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"last");

    let repeat = app
        .client
        .post(app.url("ac"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("last")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(repeat, 409).await, "STREAM_CLOSED");
}

#[tokio::test]
async fn stream_seq_must_increase_bytewise() {
    let app = spawn_app(test_config()).await;
    app.create("seq", "text/plain").await;
    let post = |seq: &'static str| {
        app.client
            .post(app.url("seq"))
            .header("content-type", "text/plain")
            .header("stream-seq", seq)
            .body(seq)
            .send()
    };
    assert_eq!(post("09").await.unwrap().status(), 204);
    assert_eq!(post("10").await.unwrap().status(), 204);
    // "2" > "10" byte-wise: accepted; then "10" again is a regression.
    assert_eq!(post("2").await.unwrap().status(), 204);
    assert_eq!(
        expect_problem(post("10").await.unwrap(), 409).await,
        "STREAM_SEQ_CONFLICT"
    );
    assert_eq!(
        expect_problem(post("2").await.unwrap(), 409).await,
        "STREAM_SEQ_CONFLICT"
    );
    let read = app.read("seq", None).await;
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"09102");
}

#[tokio::test]
async fn json_streams_validate_and_flatten_one_level() {
    let app = spawn_app(test_config()).await;
    let created = app
        .client
        .put(app.url("j"))
        .header("content-type", "application/json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);

    let empty = app.read("j", None).await;
    assert_eq!(header(&empty, "content-type"), "application/json");
    assert_eq!(empty.text().await.unwrap(), "[]");

    app.append("j", "application/json", r#"[{"a":1},{"b":2}]"#)
        .await;
    app.append("j", "application/json; charset=utf-8", r#"{"c":3}"#)
        .await;
    app.append("j", "application/json", "[[1,2],[3]]").await;

    for bad in ["{", "[]", "not json", "{} {}"] {
        let response = app
            .client
            .post(app.url("j"))
            .header("content-type", "application/json")
            .body(bad)
            .send()
            .await
            .unwrap();
        assert_eq!(expect_problem(response, 400).await, "INVALID_JSON", "{bad}");
    }

    let read = app.read("j", None).await;
    let value: serde_json::Value = serde_json::from_slice(&read.bytes().await.unwrap()).unwrap();
    assert_eq!(
        value,
        serde_json::json!([{"a":1},{"b":2},{"c":3},[1,2],[3]])
    );
}

#[tokio::test]
async fn delete_removes_and_recreation_is_isolated() {
    let app = spawn_app(test_config()).await;
    app.create("d", "text/plain").await;
    app.append("d", "text/plain", "old data").await;
    let first = app.read("d", None).await;
    let old_etag = header(&first, "etag");

    let deleted = app.client.delete(app.url("d")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    assert_security_headers(&deleted);
    for response in [
        app.read("d", None).await,
        app.client.delete(app.url("d")).send().await.unwrap(),
    ] {
        assert_eq!(expect_problem(response, 404).await, "STREAM_NOT_FOUND");
    }

    app.create("d", "text/plain").await;
    let fresh = app.read("d", None).await;
    assert_eq!(header(&fresh, "stream-next-offset"), ZERO_OFFSET);
    assert_ne!(header(&fresh, "etag"), old_etag);
    assert!(fresh.bytes().await.unwrap().is_empty());
}
