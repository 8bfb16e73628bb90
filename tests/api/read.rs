//! Catch-up `GET`, `HEAD`, offsets, caching (ETag / 304 / Cache-Control),
//! security headers, health and readiness.

use std::time::Duration;

use durable_streams_server::server::DrainTiming;
use durable_streams_server::{InMemoryStorage, ShutdownToken, build_router_with_ready};

use crate::helpers::*;

#[tokio::test]
async fn catch_up_reads_from_any_offset() {
    let app = spawn_app(test_config()).await;
    app.create("r", "text/plain").await;
    app.append("r", "text/plain", "abc").await;
    let middle = app.append("r", "text/plain", "def").await;
    assert_eq!(middle, offset(6));

    for (from, expected) in [
        (None, "abcdef"),
        (Some("-1".to_owned()), "abcdef"),
        (Some(ZERO_OFFSET.to_owned()), "abcdef"),
        (Some(offset(3)), "def"),
        (Some(offset(4)), "ef"),
        (Some(offset(6)), ""),
    ] {
        let response = app.read("r", from.as_deref()).await;
        assert_eq!(response.status(), 200, "{from:?}");
        assert_eq!(header(&response, "content-type"), "text/plain");
        assert_eq!(header(&response, "stream-next-offset"), offset(6));
        assert_eq!(header(&response, "stream-up-to-date"), "true");
        assert_eq!(maybe_header(&response, "stream-closed"), None);
        assert_security_headers(&response);
        assert_eq!(response.text().await.unwrap(), expected, "{from:?}");
    }
}

#[tokio::test]
async fn unknown_query_parameters_are_ignored() {
    let app = spawn_app(test_config()).await;
    app.create("q", "text/plain").await;
    app.append("q", "text/plain", "x").await;
    let response = app
        .client
        .get(format!("{}?foo=1&offset=-1&bar", app.url("q")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "x");
}

#[tokio::test]
async fn malformed_offsets_are_problems() {
    let app = spawn_app(test_config()).await;
    app.create("o", "text/plain").await;
    for query in [
        "offset=",
        "offset=-1&offset=-1",
        "offset=abc",
        "offset=-2",
        "offset=1,2",
        "offset=%00",
        "offset=0000000000000000_000000000000000x",
        "offset=..%2F..%2F",
        "offset=a%20b",
        "offset=%0d%0a",
        "live=sse",
        "live=long-poll",
        "offset=-1&live=maybe",
    ] {
        let response = app
            .client
            .get(format!("{}?{query}", app.url("o")))
            .send()
            .await
            .unwrap();
        let code = expect_problem(response, 400).await;
        assert!(
            code == "INVALID_OFFSET" || code == "INVALID_QUERY",
            "{query}: {code}"
        );
    }
}

#[tokio::test]
async fn offset_now_is_an_uncached_position_probe() {
    let app = spawn_app(test_config()).await;
    app.create("now", "text/plain").await;
    app.append("now", "text/plain", "abcd").await;
    let response = app.read("now", Some("now")).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "stream-next-offset"), offset(4));
    assert_eq!(header(&response, "stream-up-to-date"), "true");
    assert_eq!(header(&response, "cache-control"), "no-store");
    assert_eq!(maybe_header(&response, "etag"), None);
    assert!(response.bytes().await.unwrap().is_empty());

    app.create("jnow", "application/json").await;
    app.append("jnow", "application/json", "[1,2]").await;
    let response = app.read("jnow", Some("now")).await;
    assert_eq!(header(&response, "cache-control"), "no-store");
    assert_eq!(response.text().await.unwrap(), "[]");
}

#[tokio::test]
async fn head_reports_metadata_without_caching() {
    let app = spawn_app(test_config()).await;
    let created = app
        .client
        .put(app.url("h"))
        .header("content-type", "text/plain")
        .header("stream-ttl", "3600")
        .body("12345")
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), 201);
    let head = app.client.head(app.url("h")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "content-type"), "text/plain");
    assert_eq!(header(&head, "stream-next-offset"), offset(5));
    assert_eq!(header(&head, "cache-control"), "no-store");
    assert_eq!(header(&head, "stream-ttl"), "3600");
    assert_eq!(maybe_header(&head, "stream-closed"), None);
    assert_security_headers(&head);
    assert!(head.bytes().await.unwrap().is_empty());

    let expiring = app
        .client
        .put(app.url("e"))
        .header("stream-expires-at", "2099-01-02T03:04:05Z")
        .send()
        .await
        .unwrap();
    assert_eq!(expiring.status(), 201);
    let head = app.client.head(app.url("e")).send().await.unwrap();
    assert_eq!(header(&head, "stream-expires-at"), "2099-01-02T03:04:05Z");
    assert_eq!(maybe_header(&head, "stream-ttl"), None);

    let close = app
        .client
        .post(app.url("h"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let head = app.client.head(app.url("h")).send().await.unwrap();
    assert_eq!(header(&head, "stream-closed"), "true");
    assert_eq!(header(&head, "cache-control"), "no-store");

    let missing = app.client.head(app.url("missing")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_security_headers(&missing);
}

#[tokio::test]
async fn etag_revalidation_answers_304_until_data_or_closure_changes() {
    let app = spawn_app(test_config()).await;
    app.create("etag", "text/plain").await;
    app.append("etag", "text/plain", "v1").await;

    let first = app.read("etag", Some("-1")).await;
    let etag = header(&first, "etag");
    assert!(etag.starts_with('"') && etag.ends_with('"'), "{etag}");

    let revalidate = |tag: String| {
        app.client
            .get(format!("{}?offset=-1", app.url("etag")))
            .header("if-none-match", tag)
            .send()
    };
    let not_modified = revalidate(etag.clone()).await.unwrap();
    assert_eq!(not_modified.status(), 304);
    assert_eq!(header(&not_modified, "etag"), etag);
    assert_security_headers(&not_modified);
    assert!(not_modified.bytes().await.unwrap().is_empty());

    // A list containing the tag matches too; a different tag does not.
    let listed = revalidate(format!("\"other\", {etag}")).await.unwrap();
    assert_eq!(listed.status(), 304);
    let other = revalidate("\"other\"".into()).await.unwrap();
    assert_eq!(other.status(), 200);

    // Closing changes nothing in the data but must change the ETag, or a
    // cache could hide the end of the stream.
    let close = app
        .client
        .post(app.url("etag"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let after_close = revalidate(etag.clone()).await.unwrap();
    assert_eq!(after_close.status(), 200);
    assert_eq!(header(&after_close, "stream-closed"), "true");
    let closed_etag = header(&after_close, "etag");
    assert_ne!(closed_etag, etag);
    assert_eq!(after_close.text().await.unwrap(), "v1");
    assert_eq!(revalidate(closed_etag).await.unwrap().status(), 304);
}

#[tokio::test]
async fn etag_changes_with_new_data() {
    let app = spawn_app(test_config()).await;
    app.create("grow", "text/plain").await;
    app.append("grow", "text/plain", "a").await;
    let first = header(&app.read("grow", Some("-1")).await, "etag");
    app.append("grow", "text/plain", "b").await;
    let response = app
        .client
        .get(format!("{}?offset=-1", app.url("grow")))
        .header("if-none-match", &first)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_ne!(header(&response, "etag"), first);
    assert_eq!(response.text().await.unwrap(), "ab");
}

#[tokio::test]
async fn reading_a_closed_stream_at_its_end_is_eof() {
    let app = spawn_app(test_config()).await;
    app.create("eof", "text/plain").await;
    let tail = app.append("eof", "text/plain", "xyz").await;
    let close = app
        .client
        .post(app.url("eof"))
        .header("stream-closed", "true")
        .send()
        .await
        .unwrap();
    assert_eq!(close.status(), 204);
    let response = app.read("eof", Some(&tail)).await;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "stream-closed"), "true");
    assert_eq!(header(&response, "stream-up-to-date"), "true");
    assert_eq!(header(&response, "stream-next-offset"), tail);
    assert!(response.bytes().await.unwrap().is_empty());
}

#[tokio::test]
async fn security_headers_are_on_every_kind_of_response() {
    let app = spawn_app(test_config()).await;
    app.create("sec", "text/plain").await;
    let responses = vec![
        app.client.get(app.url("missing")).send().await.unwrap(),
        app.client
            .get(app.at("/no/such/route"))
            .send()
            .await
            .unwrap(),
        app.client.get(app.at("/")).send().await.unwrap(),
        app.client
            .get(format!("{}?offset=bad", app.url("sec")))
            .send()
            .await
            .unwrap(),
        app.client.patch(app.url("sec")).send().await.unwrap(),
        app.client.get(app.at("/healthz")).send().await.unwrap(),
        app.client.get(app.at("/readyz")).send().await.unwrap(),
        app.client.head(app.url("sec")).send().await.unwrap(),
        app.client
            .get(format!("{}?offset=now&live=long-poll", app.url("sec")))
            .send()
            .await
            .unwrap(),
        app.client
            .request(reqwest::Method::OPTIONS, app.url("sec"))
            .send()
            .await
            .unwrap(),
    ];
    for response in &responses {
        assert_security_headers(response);
    }
    assert_eq!(responses[0].status(), 404);
    assert_eq!(responses[1].status(), 404);
    assert_eq!(responses[8].status(), 204);
}

#[tokio::test]
async fn unknown_routes_are_problems() {
    let app = spawn_app(test_config()).await;
    let response = app.client.get(app.at("/v2/stream/x")).send().await.unwrap();
    assert_eq!(expect_problem(response, 404).await, "NOT_FOUND");
    // The reserved control namespace is not served as streams.
    let response = app
        .client
        .put(app.url("__ds/subscriptions/x"))
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 404).await, "NOT_FOUND");
}

#[tokio::test]
async fn healthz_and_readyz_while_serving() {
    let app = spawn_app(test_config()).await;
    let health = app.client.get(app.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    let ready = app.client.get(app.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);
    // The flag is what /readyz reports.
    app.readiness.set_ready(false);
    let ready = app.client.get(app.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let health = app.client.get(app.at("/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn readyz_is_503_until_the_server_is_ready() {
    // An embedder serving the router without `server::serve` has not
    // declared readiness yet.
    let config = test_config();
    let storage = std::sync::Arc::new(InMemoryStorage::new(u64::MAX));
    let (router, readiness) = build_router_with_ready(storage, &config, ShutdownToken::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, router).await });
    let client = client();
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503);
    assert_security_headers(&ready);
    let health = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    readiness.set_ready(true);
    let ready = client
        .get(format!("http://{addr}/readyz"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    server.abort();
}

#[tokio::test]
async fn readyz_turns_503_as_soon_as_the_drain_starts() {
    // The delay must outlast two requests on a loaded machine.
    let drain = DrainTiming {
        delay: Duration::from_secs(8),
        timeout: Duration::from_secs(10),
    };
    let mut app = spawn_app_full(test_config(), None, drain).await;
    app.create("drain", "text/plain").await;
    let ready = app.client.get(app.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    app.begin_shutdown();
    app.shutdown.cancelled().await;
    // The listener still accepts during the delay; readiness already fails
    // and streams are still served.
    let fresh = client();
    let ready = fresh.get(app.at("/readyz")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let read = fresh.get(app.url("drain")).send().await.unwrap();
    assert_eq!(read.status(), 200);
    app.stopped().await.unwrap();
}
