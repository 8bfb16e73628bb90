//! Forks: `Stream-Forked-From`, `Stream-Fork-Offset`, sub-offsets and
//! soft deletion.

use crate::helpers::*;

async fn fork(
    app: &TestApp,
    name: &str,
    source: &str,
    fork_offset: Option<&str>,
    sub_offset: Option<&str>,
) -> reqwest::Response {
    let mut request = app
        .client
        .put(app.url(name))
        .header("stream-forked-from", app.path(source));
    if let Some(fork_offset) = fork_offset {
        request = request.header("stream-fork-offset", fork_offset);
    }
    if let Some(sub_offset) = sub_offset {
        request = request.header("stream-fork-sub-offset", sub_offset);
    }
    request.send().await.unwrap()
}

async fn contents(app: &TestApp, name: &str) -> String {
    let response = app.read(name, None).await;
    assert_eq!(response.status(), 200, "read {name}");
    response.text().await.unwrap()
}

#[tokio::test]
async fn fork_shares_history_and_diverges() {
    let app = spawn_app(test_config()).await;
    app.create("src", "text/plain").await;
    app.append("src", "text/plain", "abc").await;

    let created = fork(&app, "f", "src", None, None).await;
    assert_eq!(created.status(), 201);
    assert_eq!(header(&created, "stream-next-offset"), offset(3));
    assert_eq!(header(&created, "content-type"), "text/plain");
    // Fork headers are not echoed.
    assert_eq!(maybe_header(&created, "stream-forked-from"), None);

    app.append("src", "text/plain", "SRC").await;
    app.append("f", "text/plain", "fork").await;
    assert_eq!(contents(&app, "src").await, "abcSRC");
    assert_eq!(contents(&app, "f").await, "abcfork");
    // Offsets are shared: reading the fork from inside the inherited range.
    let partial = app.read("f", Some(&offset(2))).await;
    assert_eq!(partial.text().await.unwrap(), "cfork");

    // Idempotent re-creation; a different offset conflicts.
    let again = fork(&app, "f", "src", Some(&offset(3)), None).await;
    assert_eq!(again.status(), 200);
    let other = fork(&app, "f", "src", Some(&offset(1)), None).await;
    assert_eq!(expect_problem(other, 409).await, "STREAM_EXISTS");
}

#[tokio::test]
async fn fork_at_an_explicit_offset_and_sub_offset() {
    let app = spawn_app(test_config()).await;
    app.create("s", "application/octet-stream").await;
    app.append("s", "application/octet-stream", "hello").await;
    app.append("s", "application/octet-stream", "world").await;

    let at_zero = fork(&app, "zero", "s", Some(ZERO_OFFSET), None).await;
    assert_eq!(at_zero.status(), 201);
    assert_eq!(header(&at_zero, "stream-next-offset"), ZERO_OFFSET);
    assert_eq!(contents(&app, "zero").await, "");

    let mid = fork(&app, "mid", "s", Some(&offset(5)), Some("3")).await;
    assert_eq!(mid.status(), 201);
    assert_eq!(header(&mid, "stream-next-offset"), offset(8));
    assert_eq!(contents(&app, "mid").await, "hellowor");
}

#[tokio::test]
async fn bad_fork_requests_are_problems() {
    let app = spawn_app(test_config()).await;
    app.create("s", "text/plain").await;
    app.append("s", "text/plain", "abc").await;

    let missing = fork(&app, "f1", "nope", None, None).await;
    assert_eq!(expect_problem(missing, 404).await, "FORK_SOURCE_NOT_FOUND");

    let beyond = fork(&app, "f2", "s", Some(&offset(4)), None).await;
    assert_eq!(expect_problem(beyond, 400).await, "INVALID_FORK_OFFSET");

    let malformed = fork(&app, "f3", "s", Some("bogus"), None).await;
    assert_eq!(expect_problem(malformed, 400).await, "INVALID_OFFSET");

    let overshoot = fork(&app, "f4", "s", Some(ZERO_OFFSET), Some("4")).await;
    assert_eq!(expect_problem(overshoot, 400).await, "INVALID_FORK_OFFSET");

    let at_tail = fork(&app, "f5", "s", None, Some("1")).await;
    assert_eq!(expect_problem(at_tail, 400).await, "INVALID_FORK_OFFSET");

    let negative = fork(&app, "f6", "s", None, Some("-1")).await;
    assert_eq!(expect_problem(negative, 400).await, "INVALID_HEADER");

    let without_source = app
        .client
        .put(app.url("f7"))
        .header("stream-fork-sub-offset", "0")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(without_source, 400).await, "INVALID_HEADER");

    let type_mismatch = app
        .client
        .put(app.url("f8"))
        .header("content-type", "application/json")
        .header("stream-forked-from", app.path("s"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        expect_problem(type_mismatch, 409).await,
        "CONTENT_TYPE_MISMATCH"
    );

    for name in ["f1", "f2", "f3", "f4", "f5", "f6", "f7", "f8"] {
        let head = app.client.head(app.url(name)).send().await.unwrap();
        assert_eq!(head.status(), 404, "{name}");
    }
    // The rejected forks took no reference: the source is removed for good.
    let deleted = app.client.delete(app.url("s")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    let head = app.client.head(app.url("s")).send().await.unwrap();
    assert_eq!(head.status(), 404);
}

#[tokio::test]
async fn deleting_a_forked_source_soft_deletes_it() {
    let app = spawn_app(test_config()).await;
    app.create("base", "text/plain").await;
    app.append("base", "text/plain", "shared").await;
    assert_eq!(fork(&app, "child", "base", None, None).await.status(), 201);

    let deleted = app.client.delete(app.url("base")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    // Gone for clients...
    let read = app.read("base", None).await;
    assert_eq!(expect_problem(read, 410).await, "STREAM_GONE");
    let again = app.client.delete(app.url("base")).send().await.unwrap();
    assert_eq!(expect_problem(again, 410).await, "STREAM_GONE");
    let recreate = app
        .client
        .put(app.url("base"))
        .header("content-type", "text/plain")
        .send()
        .await
        .unwrap();
    assert_eq!(expect_problem(recreate, 409).await, "STREAM_SOFT_DELETED");
    let grandchild = fork(&app, "other", "base", None, None).await;
    assert_eq!(expect_problem(grandchild, 409).await, "FORK_SOURCE_GONE");
    // ...but still readable through the fork.
    assert_eq!(contents(&app, "child").await, "shared");

    // Deleting the last fork frees the path.
    let deleted = app.client.delete(app.url("child")).send().await.unwrap();
    assert_eq!(deleted.status(), 204);
    app.create("base", "text/plain").await;
    assert_eq!(contents(&app, "base").await, "");
}

#[tokio::test]
async fn forks_of_forks_read_through_the_chain() {
    let app = spawn_app(test_config()).await;
    app.create("l0", "text/plain").await;
    app.append("l0", "text/plain", "a").await;
    assert_eq!(fork(&app, "l1", "l0", None, None).await.status(), 201);
    app.append("l1", "text/plain", "b").await;
    assert_eq!(fork(&app, "l2", "l1", None, None).await.status(), 201);
    app.append("l2", "text/plain", "c").await;
    app.append("l0", "text/plain", "X").await;
    app.append("l1", "text/plain", "Y").await;
    assert_eq!(contents(&app, "l2").await, "abc");
    assert_eq!(contents(&app, "l1").await, "abY");
}

#[tokio::test]
async fn live_readers_of_a_fork_wake_only_on_its_own_appends() {
    let mut config = test_config();
    config.transport.connection.long_poll_timeout_secs = 300;
    let app = spawn_app(config).await;
    app.create("up", "text/plain").await;
    app.append("up", "text/plain", "abc").await;
    assert_eq!(fork(&app, "down", "up", None, None).await.status(), 201);
    let poll = tokio::spawn(
        app.client
            .get(format!(
                "{}?offset={}&live=long-poll",
                app.url("down"),
                offset(3)
            ))
            .send(),
    );
    app.append("up", "text/plain", "source").await;
    app.append("down", "text/plain", "own").await;
    let response = tokio::time::timeout(HANG_GUARD, poll)
        .await
        .expect("fork long-poll hung")
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.text().await.unwrap(), "own");
}

#[tokio::test]
async fn fork_under_a_mounted_router_names_its_source_by_full_path() {
    // The client only knows the full path, prefix included; `Location` and
    // `Stream-Forked-From` must agree on it.
    let app = spawn_app_mounted(test_config(), Some("/api")).await;
    let created = app.create("origin", "text/plain").await;
    let location = header(&created, "location");
    app.append("origin", "text/plain", "abc").await;
    let source_path = location.strip_prefix(&app.base_url).unwrap().to_owned();
    assert_eq!(source_path, "/api/v1/stream/origin");
    let forked = app
        .client
        .put(app.url("branch"))
        .header("stream-forked-from", &source_path)
        .send()
        .await
        .unwrap();
    assert_eq!(forked.status(), 201);
    assert_eq!(contents(&app, "branch").await, "abc");
}
