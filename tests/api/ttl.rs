//! Sliding `Stream-TTL` and absolute `Stream-Expires-At`.
//!
//! Expiry is checked on access, so "gone after waiting longer than the TTL
//! without touching it" is deterministic; the touches that must keep a
//! stream alive leave a wide margin for a loaded machine.

use std::time::Duration;

use crate::helpers::*;

async fn create_with(app: &TestApp, name: &str, header_name: &str, value: &str) {
    let response = app
        .client
        .put(app.url(name))
        .header("content-type", "text/plain")
        .header(header_name, value)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201, "{name}");
}

#[tokio::test]
async fn an_idle_stream_expires_after_its_ttl() {
    let app = spawn_app(test_config()).await;
    // 3 s: the HEAD below must come before the stream expires, however
    // slow the machine.
    create_with(&app, "short", "stream-ttl", "3").await;
    let head = app.client.head(app.url("short")).send().await.unwrap();
    assert_eq!(header(&head, "stream-ttl"), "3");

    tokio::time::sleep(Duration::from_millis(3500)).await;
    let read = app.read("short", None).await;
    assert_eq!(expect_problem(read, 404).await, "STREAM_NOT_FOUND");
    let append = app
        .client
        .post(app.url("short"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(append, 404).await, "STREAM_NOT_FOUND");
    // The path is free again: PUT creates a fresh stream.
    create_with(&app, "short", "stream-ttl", "1").await;
}

#[tokio::test]
async fn head_does_not_refresh_the_ttl() {
    let app = spawn_app(test_config()).await;
    create_with(&app, "peek", "stream-ttl", "1").await;
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        // HEAD may still see it or already not; it must never extend it.
        let _ = app.client.head(app.url("peek")).send().await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let head = app.client.head(app.url("peek")).send().await.unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn reads_and_writes_refresh_the_ttl() {
    let app = spawn_app(test_config()).await;
    // TTL 5 s, touched every 0.5 s for 7 s: longer than the TTL in total,
    // while each gap leaves a loaded machine 4.5 s for one request.
    create_with(&app, "busy", "stream-ttl", "5").await;
    for i in 0..14 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let status = if i % 3 == 0 {
            app.client
                .post(app.url("busy"))
                .header("content-type", "text/plain")
                .body("x")
                .send()
                .await
                .unwrap()
                .status()
        } else if i % 3 == 1 {
            app.read("busy", Some("now")).await.status()
        } else {
            app.read("busy", None).await.status()
        };
        assert!(status.is_success(), "touch {i}: {status}");
    }
    let head = app.client.head(app.url("busy")).send().await.unwrap();
    assert_eq!(head.status(), 200);
    assert_eq!(header(&head, "stream-next-offset"), offset(5));
}

#[tokio::test]
async fn expires_at_in_the_past_means_gone() {
    let app = spawn_app(test_config()).await;
    create_with(&app, "past", "stream-expires-at", "2000-01-01T00:00:00Z").await;
    let read = app.read("past", None).await;
    assert_eq!(expect_problem(read, 404).await, "STREAM_NOT_FOUND");
}

#[tokio::test]
async fn expires_at_is_echoed_and_matches_on_recreate() {
    let app = spawn_app(test_config()).await;
    create_with(
        &app,
        "future",
        "stream-expires-at",
        "2099-06-01T12:00:00+00:00",
    )
    .await;
    // Same instant in another notation: same configuration.
    let again = app
        .client
        .put(app.url("future"))
        .header("content-type", "text/plain")
        .header("stream-expires-at", "2099-06-01T12:00:00Z")
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 200);
    let other = app
        .client
        .put(app.url("future"))
        .header("content-type", "text/plain")
        .header("stream-expires-at", "2099-06-01T12:00:01Z")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(other, 409).await, "STREAM_EXISTS");
    let head = app.client.head(app.url("future")).send().await.unwrap();
    assert_eq!(header(&head, "stream-expires-at"), "2099-06-01T12:00:00Z");
}

#[tokio::test]
async fn ttl_upper_bound_is_enforced() {
    let app = spawn_app(test_config()).await;
    // 100 years is the most the server accepts.
    create_with(&app, "century", "stream-ttl", "3153600000").await;
    let response = app
        .client
        .put(app.url("longer"))
        .header("stream-ttl", "3153600001")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(response, 400).await, "INVALID_HEADER");
}

#[tokio::test]
async fn an_expired_source_with_forks_becomes_gone_not_missing() {
    let app = spawn_app(test_config()).await;
    // 3 s: the append and the fork must land before it expires, however
    // slow the machine.
    create_with(&app, "mortal", "stream-ttl", "3").await;
    app.append("mortal", "text/plain", "kept").await;
    let fork = app
        .client
        .put(app.url("heir"))
        .header("stream-forked-from", app.path("mortal"))
        .header("stream-ttl", "3600")
        .send()
        .await
        .unwrap();
    assert_eq!(fork.status(), 201);
    tokio::time::sleep(Duration::from_millis(3500)).await;
    let read = app.read("mortal", None).await;
    assert_eq!(expect_problem(read, 410).await, "STREAM_GONE");
    let heir = app.read("heir", None).await;
    assert_eq!(heir.text().await.unwrap(), "kept");
}
