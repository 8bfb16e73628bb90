//! `PUT`: creation, idempotent re-creation, header validation and stream
//! name rules.

use crate::helpers::*;

#[tokio::test]
async fn create_answers_201_with_location_offset_and_type() {
    let app = spawn_app(test_config()).await;
    let response = app
        .client
        .put(app.url("orders"))
        .header("content-type", "text/plain; charset=utf-8")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "location"), app.url("orders"));
    assert_eq!(header(&response, "stream-next-offset"), ZERO_OFFSET);
    // The creator's type is echoed verbatim.
    assert_eq!(
        header(&response, "content-type"),
        "text/plain; charset=utf-8"
    );
    assert_eq!(maybe_header(&response, "stream-closed"), None);
    assert_security_headers(&response);

    let head = app.client.head(app.url("orders")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), "text/plain; charset=utf-8");
}

#[tokio::test]
async fn create_without_content_type_defaults_to_octet_stream() {
    let app = spawn_app(test_config()).await;
    let response = app.client.put(app.url("bin")).send().await.unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(
        header(&response, "content-type"),
        "application/octet-stream"
    );
}

#[tokio::test]
async fn create_with_initial_body_sets_the_tail() {
    let app = spawn_app(test_config()).await;
    let response = app
        .client
        .put(app.url("seeded"))
        .header("content-type", "text/plain")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "stream-next-offset"), offset(5));
    let read = app.read("seeded", None).await;
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"hello");
}

#[tokio::test]
async fn repeated_create_is_idempotent_and_a_different_config_conflicts() {
    let app = spawn_app(test_config()).await;
    app.create("same", "text/plain").await;
    app.append("same", "text/plain", "abc").await;

    // Same configuration (type compared without parameters, any case): 200,
    // current tail, no Location.
    let again = app
        .client
        .put(app.url("same"))
        .header("content-type", "TEXT/PLAIN;charset=UTF-8")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "stream-next-offset"), offset(3));
    assert_eq!(maybe_header(&again, "location"), None);

    let other_type = app
        .client
        .put(app.url("same"))
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(other_type, 409).await, "STREAM_EXISTS");

    let other_ttl = app
        .client
        .put(app.url("same"))
        .header("content-type", "text/plain")
        .header("stream-ttl", "60")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(other_ttl, 409).await, "STREAM_EXISTS");

    let closed_mismatch = app
        .client
        .put(app.url("same"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(closed_mismatch, 409).await, "STREAM_EXISTS");

    // The stream is unchanged by the refused requests.
    let read = app.read("same", None).await;
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"abc");
}

#[tokio::test]
async fn create_closed_stream() {
    let app = spawn_app(test_config()).await;
    let response = app
        .client
        .put(app.url("done"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .body("final")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "stream-closed"), "true");
    assert_eq!(header(&response, "stream-next-offset"), offset(5));

    let read = app.read("done", None).await;
    assert_eq!(header(&read, "stream-closed"), "true");
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"final");

    // Re-confirming the closed stream as closed is idempotent.
    let again = app
        .client
        .put(app.url("done"))
        .header("content-type", "text/plain")
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    assert_eq!(header(&again, "stream-closed"), "true");
}

#[tokio::test]
async fn invalid_ttl_and_expiry_headers_are_problems() {
    let app = spawn_app(test_config()).await;
    for bad in [
        "18446744073709551615",
        "99999999999999999999999999",
        "+60",
        "00060",
        "60.5",
        "1e3",
        "-1",
        "abc",
        "",
    ] {
        let response = app
            .client
            .put(app.url("ttl"))
            .header("stream-ttl", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            expect_problem(response, 400).await,
            "INVALID_HEADER",
            "Stream-TTL: {bad:?}"
        );
    }
    for bad in ["tomorrow", "2030-13-01T00:00:00Z", "1700000000"] {
        let response = app
            .client
            .put(app.url("exp"))
            .header("stream-expires-at", bad)
            .send()
            .await
            .unwrap();
        assert_eq!(
            expect_problem(response, 400).await,
            "INVALID_HEADER",
            "{bad}"
        );
    }
    let both = app
        .client
        .put(app.url("both"))
        .header("stream-ttl", "60")
        .header("stream-expires-at", "2099-01-01T00:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(both, 400).await, "INVALID_HEADER");

    // None of the refused requests created anything.
    for name in ["ttl", "exp", "both"] {
        let head = app.client.head(app.url(name)).send().await.unwrap();
        assert_eq!(head.status(), 404, "{name}");
    }
}

#[tokio::test]
async fn non_utf8_header_bytes_are_a_problem() {
    let app = spawn_app(test_config()).await;
    let path = app.path("bytes");
    for header_name in [
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-Forked-From",
        "Stream-Fork-Sub-Offset",
    ] {
        let mut request = format!(
            "PUT {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: 0\r\n{header_name}: ",
            app.addr
        )
        .into_bytes();
        request.extend_from_slice(&[0xff, 0xfe, 0x80, b'x']);
        request.extend_from_slice(b"\r\n\r\n");
        let response = raw_http(app.addr, &request).await;
        assert_eq!(
            response.expect_problem(400),
            "INVALID_HEADER",
            "{header_name}"
        );
    }
    let head = app.client.head(app.url("bytes")).send().await.unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn bad_stream_names_are_problems() {
    let app = spawn_app(test_config()).await;
    // Sent on a raw socket: URL libraries resolve dot segments (also
    // `%2e`) before a request leaves the client, a hostile client does not.
    for name in [
        ".",
        "..",
        "a/./b",
        "a/../b",
        "../../etc/passwd",
        "%2e",
        "%2E%2e",
        "a/%2e%2e/b",
        "a//b",
        "a/",
        "a%00b",
        "a%0Ab",
        "a%0d%0aX-Injected:%201",
        "a%7Fb",
        "a%1Bb",
        "a%ffb",
    ] {
        for method in ["PUT", "GET", "POST", "HEAD", "DELETE"] {
            let request = format!(
                "{method} {}/{name} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\
                 Content-Type: text/plain\r\nContent-Length: 1\r\n\r\nx",
                app.stream_root, app.addr
            );
            let response = raw_http(app.addr, request.as_bytes()).await;
            if method == "HEAD" {
                assert_eq!(response.status, 400, "HEAD {name}");
                continue;
            }
            assert_eq!(
                response.expect_problem(400),
                "INVALID_STREAM_NAME",
                "{method} {name}"
            );
        }
    }
    // Through a normal client too, for the forms it sends as they are.
    for name in ["a//b", "a%00b", "a%0Ab", "a%ffb"] {
        let response = app.client.put(app.url(name)).send().await.unwrap();
        assert_eq!(
            expect_problem(response, 400).await,
            "INVALID_STREAM_NAME",
            "{name}"
        );
    }
}

#[tokio::test]
async fn empty_stream_name_is_not_a_stream() {
    let app = spawn_app(test_config()).await;
    for url in [app.url(""), app.at(&app.stream_root)] {
        let response = app.client.put(url).send().await.unwrap();
        assert_eq!(expect_problem(response, 404).await, "NOT_FOUND");
    }
}

#[tokio::test]
async fn stream_name_limits_are_enforced() {
    let mut config = test_config();
    config.limits.max_stream_name_bytes = 64;
    config.limits.max_stream_name_segments = 3;
    let app = spawn_app(config).await;

    let longest = "n".repeat(64);
    app.create(&longest, "text/plain").await;
    let too_long = "n".repeat(65);
    let response = app.client.put(app.url(&too_long)).send().await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");

    // The byte limit counts the name as sent (percent-encoded).
    let encoded = "%41".repeat(22);
    let response = app.client.put(app.url(&encoded)).send().await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");

    app.create("a/b/c", "text/plain").await;
    let response = app.client.put(app.url("a/b/c/d")).send().await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");

    // Every method checks the name, not only PUT.
    let response = app.client.get(app.url(&too_long)).send().await.unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");
    let response = app
        .client
        .post(app.url("a/b/c/d"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");
}

#[tokio::test]
async fn default_name_limits_are_1024_bytes_and_8_segments() {
    let app = spawn_app(test_config()).await;
    app.create(&"x".repeat(1024), "text/plain").await;
    let response = app
        .client
        .put(app.url(&"x".repeat(1025)))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");
    app.create("1/2/3/4/5/6/7/8", "text/plain").await;
    let response = app
        .client
        .put(app.url("1/2/3/4/5/6/7/8/9"))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_STREAM_NAME");
}

#[tokio::test]
async fn nested_names_and_query_strings_do_not_change_identity() {
    let app = spawn_app(test_config()).await;
    app.create("tenant/a/events", "text/plain").await;
    app.append("tenant/a/events", "text/plain", "x").await;
    // A query string is not part of the identity.
    let response = app
        .client
        .put(format!("{}?foo=bar", app.url("tenant/a/events")))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let head = app.client.head(app.url("tenant/a")).send().await.unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn router_mounted_under_a_prefix_keeps_working() {
    let app = spawn_app_mounted(test_config(), Some("/api")).await;
    assert!(app.url("s").contains("/api/v1/stream/s"));
    let response = app.create("s", "text/plain").await;
    // Location carries the full path the client used, prefix included.
    assert_eq!(header(&response, "location"), app.url("s"));
    app.append("s", "text/plain", "data").await;
    let read = app.read("s", Some("-1")).await;
    assert_eq!(read.status(), 200);
    assert_security_headers(&read);
    assert_eq!(read.bytes().await.unwrap().as_ref(), b"data");

    let health = app.client.get(app.at("/api/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.at("/api/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // Not reachable without the prefix.
    let bare = app.client.get(app.at("/v1/stream/s")).send().await.unwrap();
    assert_eq!(bare.status(), 404);
}
