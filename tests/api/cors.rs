//! CORS: preflights and the headers browsers need on actual responses.

use crate::helpers::*;

async fn preflight(app: &TestApp, origin: &str, request_headers: &str) -> reqwest::Response {
    app.client
        .request(reqwest::Method::OPTIONS, app.url("any/stream"))
        .header("origin", origin)
        .header("access-control-request-method", "GET")
        .header("access-control-request-headers", request_headers)
        .send()
        .await
        .unwrap()
}

fn listed(value: &str, wanted: &str) -> bool {
    value
        .split(',')
        .any(|item| item.trim().eq_ignore_ascii_case(wanted))
}

#[tokio::test]
async fn preflight_allows_the_protocol_headers_including_if_none_match() {
    let app = spawn_app(test_config()).await;
    let response = preflight(&app, "https://app.example", "if-none-match, producer-id").await;
    assert_eq!(response.status(), 204);
    assert_security_headers(&response);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let methods = header(&response, "access-control-allow-methods");
    for method in ["GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS"] {
        assert!(listed(&methods, method), "{method} in {methods}");
    }
    let allowed = header(&response, "access-control-allow-headers");
    for name in [
        "If-None-Match",
        "Content-Type",
        "Authorization",
        "Stream-Seq",
        "Stream-TTL",
        "Stream-Expires-At",
        "Stream-Closed",
        "Producer-Id",
        "Producer-Epoch",
        "Producer-Seq",
        "Stream-Forked-From",
        "Stream-Fork-Offset",
        "Stream-Fork-Sub-Offset",
    ] {
        assert!(listed(&allowed, name), "{name} in {allowed}");
    }
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn actual_responses_expose_the_protocol_headers() {
    let app = spawn_app(test_config()).await;
    let response = app
        .client
        .put(app.url("exposed"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
    let exposed = header(&response, "access-control-expose-headers");
    for name in [
        "Stream-Next-Offset",
        "Stream-Cursor",
        "Stream-Up-To-Date",
        "Stream-Closed",
        "Producer-Epoch",
        "Producer-Seq",
        "Producer-Expected-Seq",
        "Producer-Received-Seq",
        "ETag",
        "Content-Type",
        "Location",
        "Stream-SSE-Data-Encoding",
    ] {
        assert!(listed(&exposed, name), "{name} in {exposed}");
    }
    // Error answers carry them too, or a browser could not read the problem.
    let missing = app
        .client
        .get(app.url("missing"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&missing, "access-control-allow-origin"), "*");
    assert_eq!(expect_problem(missing, 404).await, "STREAM_NOT_FOUND");
}

#[tokio::test]
async fn an_origin_list_allows_only_its_members() {
    let mut config = test_config();
    config.http.cors_origins = "https://a.example, https://b.example".into();
    let app = spawn_app(config).await;

    let allowed = preflight(&app, "https://b.example", "if-none-match").await;
    assert_eq!(allowed.status(), 204);
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        "https://b.example"
    );
    assert!(listed(&header(&allowed, "vary"), "Origin"));
    assert!(listed(
        &header(&allowed, "access-control-allow-headers"),
        "If-None-Match"
    ));

    let denied = preflight(&app, "https://evil.example", "if-none-match").await;
    assert_eq!(maybe_header(&denied, "access-control-allow-origin"), None);
    assert_eq!(maybe_header(&denied, "access-control-allow-headers"), None);
    assert_security_headers(&denied);

    let read = app
        .client
        .get(app.url("x"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(maybe_header(&read, "access-control-allow-origin"), None);
    let read = app
        .client
        .get(app.url("x"))
        .header("origin", "https://a.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        header(&read, "access-control-allow-origin"),
        "https://a.example"
    );
}

#[tokio::test]
async fn sse_responses_carry_cors_and_security_headers() {
    let app = spawn_app(test_config()).await;
    app.create("sse", "text/plain").await;
    let response = app
        .client
        .get(format!("{}?offset=-1&live=sse", app.url("sse")))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_security_headers(&response);
    assert_eq!(header(&response, "access-control-allow-origin"), "*");
}

/// A write without `Origin` comes from no browser: its answer carries the
/// security headers but no CORS lines; with `Origin` it carries them, and
/// reads carry them either way (a cache may hand a stored read to a
/// browser). Through the append shortcut and through a nested router.
#[tokio::test]
async fn writes_without_an_origin_get_no_cors_lines() {
    for mount in [None, Some("/api")] {
        let app = spawn_app_mounted(test_config(), mount).await;
        let created = app.create("plain", "text/plain").await;
        assert_security_headers(&created);
        assert_eq!(maybe_header(&created, "access-control-allow-origin"), None);
        let post = |origin: Option<&str>| {
            let request = app
                .client
                .post(app.url("plain"))
                .header("content-type", "text/plain")
                .body("x");
            match origin {
                Some(origin) => request.header("origin", origin),
                None => request,
            }
            .send()
        };
        let bare = post(None).await.unwrap();
        assert_eq!(bare.status(), 204, "{mount:?}");
        assert_security_headers(&bare);
        assert_eq!(maybe_header(&bare, "access-control-allow-origin"), None);
        assert_eq!(maybe_header(&bare, "access-control-expose-headers"), None);
        let browser = post(Some("https://app.example")).await.unwrap();
        assert_eq!(browser.status(), 204, "{mount:?}");
        assert_eq!(header(&browser, "access-control-allow-origin"), "*");
        assert!(listed(
            &header(&browser, "access-control-expose-headers"),
            "Stream-Next-Offset"
        ));
        for method in [reqwest::Method::GET, reqwest::Method::HEAD] {
            let read = app
                .client
                .request(method.clone(), app.url("plain"))
                .send()
                .await
                .unwrap();
            assert_eq!(read.status(), 200, "{method} {mount:?}");
            assert_eq!(header(&read, "access-control-allow-origin"), "*");
        }
        let deleted = app.client.delete(app.url("plain")).send().await.unwrap();
        assert_eq!(deleted.status(), 204);
        assert_eq!(maybe_header(&deleted, "access-control-allow-origin"), None);
    }
}
