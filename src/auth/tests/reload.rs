//! Key files and URLs changing under a running access control.

use super::*;

#[tokio::test]
async fn jwks_file_rotation_through_the_reloader() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("jwks.json");
    let old = TestKey::ed25519("2026-01");
    let new = TestKey::rsa("2026-02");
    replace(&path, &jwks(&[&old]));
    let access = access(&auth_config(dir.path()));
    let shutdown = crate::shutdown::ShutdownToken::new();
    let tasks = access.spawn_background(
        ReloadTiming {
            debounce: Duration::from_millis(20),
            poll_interval: Duration::from_millis(200),
        },
        shutdown.clone(),
    );
    assert!(principal(&access, &old.token(&claims())).await.is_ok());
    assert_eq!(
        principal(&access, &new.token(&claims())).await.map(|_| ()),
        Err(Rejection::UnknownKey)
    );

    replace(&path, &jwks(&[&new]));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while principal(&access, &new.token(&claims())).await.is_err() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the new key was not picked up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        principal(&access, &old.token(&claims())).await.map(|_| ()),
        Err(Rejection::UnknownKey),
        "the old key is gone"
    );

    // Broken and empty sets keep the last good one.
    for broken in ["{\"keys\": [", "{\"keys\": []}", ""] {
        replace(&path, broken);
        assert!(access.reload_files(false).is_err(), "{broken:?}");
        assert!(principal(&access, &new.token(&claims())).await.is_ok());
    }
    std::fs::remove_file(&path).expect("remove");
    assert!(matches!(
        access.reload_files(true),
        Err(AuthFileError::Read { .. })
    ));
    assert!(principal(&access, &new.token(&claims())).await.is_ok());

    shutdown.cancel();
    for task in tasks {
        task.await.expect("reloader ends");
    }
}

#[test]
fn start_needs_good_files() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = auth_config(dir.path());
    let settings = AuthSettings::from_config(&config)
        .expect("valid")
        .expect("token mode");
    assert!(matches!(
        AccessControl::load(settings.clone()),
        Err(AuthSetupError::File(AuthFileError::Read { .. }))
    ));
    std::fs::write(dir.path().join("jwks.json"), "{\"keys\": []}").expect("write");
    let error = AccessControl::load(settings).expect_err("no usable key");
    assert!(
        error.to_string().contains("no usable signature key"),
        "{error}"
    );
    let none = AuthConfig::default();
    assert!(AuthSettings::from_config(&none).expect("valid").is_none());
}

/// A JWKS server on loopback whose document the test changes.
struct JwksServer {
    url: String,
    document: Arc<Mutex<(u16, String)>>,
    hits: Arc<AtomicUsize>,
}

async fn jwks_server(initial: String) -> JwksServer {
    use axum::routing::get;
    let document = Arc::new(Mutex::new((200u16, initial)));
    let hits = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/jwks.json",
        get({
            let document = Arc::clone(&document);
            let hits = Arc::clone(&hits);
            move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let (status, body) = document.lock().expect("lock").clone();
                async move {
                    (
                        axum::http::StatusCode::from_u16(status).expect("status"),
                        body,
                    )
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    JwksServer {
        url,
        document,
        hits,
    }
}

#[tokio::test]
async fn jwks_url_fetch_refetch_on_unknown_kid_and_last_good_set() {
    let first = TestKey::ed25519("k1");
    let second = TestKey::p256("k2");
    let server = jwks_server(jwks(&[&first])).await;
    let config = AuthConfig {
        mode: AuthMode::Token,
        jwks_url: Some(server.url.clone()),
        // 3 s: the "right after" below must come within it on a loaded
        // machine.
        jwks_min_refetch_interval_secs: 3,
        ..AuthConfig::default()
    };
    let open_claims = with(claims(), json!({"iss": null, "aud": null}));
    let access = access(&config);
    assert!(!access.has_token_keys());
    assert_eq!(
        principal(&access, &first.token(&open_claims))
            .await
            .map(|_| ()),
        Ok(()),
        "an unknown kid fetches the set"
    );
    assert!(access.has_token_keys());
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);

    // The issuer rotates: the new kid causes one fetch, once the minimum
    // interval since the last one has passed.
    tokio::time::sleep(Duration::from_millis(3100)).await;
    *server.document.lock().expect("lock") = (200, jwks(&[&first, &second]));
    assert!(
        principal(&access, &second.token(&open_claims))
            .await
            .is_ok()
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);
    // Another unknown kid right after does not fetch again.
    let stranger = TestKey::ed25519("k3");
    assert_eq!(
        principal(&access, &stranger.token(&open_claims))
            .await
            .map(|_| ()),
        Err(Rejection::UnknownKey)
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 2);

    // Failing fetches keep the last good set.
    *server.document.lock().expect("lock") = (500, "oops".into());
    assert!(access.fetch_jwks().await.expect_err("500").contains("500"));
    *server.document.lock().expect("lock") = (200, "{\"keys\": []}".into());
    assert!(access.fetch_jwks().await.is_err());
    assert!(
        principal(&access, &second.token(&open_claims))
            .await
            .is_ok()
    );
    assert_eq!(server.hits.load(Ordering::SeqCst), 4);

    // A fresh fetch replaces the set: the removed key is refused.
    *server.document.lock().expect("lock") = (200, jwks(&[&second]));
    access.fetch_jwks().await.expect("fetch");
    assert_eq!(
        principal(&access, &first.token(&open_claims))
            .await
            .map(|_| ()),
        Err(Rejection::UnknownKey)
    );
}

#[tokio::test]
async fn the_background_task_fetches_the_jwks_url_at_once() {
    let key = TestKey::ed25519("k1");
    let server = jwks_server(jwks(&[&key])).await;
    let access = access(&AuthConfig {
        mode: AuthMode::Token,
        jwks_url: Some(server.url.clone()),
        ..AuthConfig::default()
    });
    let shutdown = crate::shutdown::ShutdownToken::new();
    let tasks = access.spawn_background(ReloadTiming::default(), shutdown.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !access.has_token_keys() {
        assert!(tokio::time::Instant::now() < deadline, "no fetch");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(server.hits.load(Ordering::SeqCst), 1);
    shutdown.cancel();
    for task in tasks {
        task.await.expect("refresher ends");
    }
}
