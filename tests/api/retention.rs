//! Retention (`[storage.retention]`): the sweeper drops whole chunks from
//! the head of a stream; reads before the new head answer `410 Gone` and
//! say where the stream now starts.

use std::sync::Arc;
use std::time::{Duration, Instant};

use durable_streams_server::config::RetentionRule;
use durable_streams_server::storage::InMemoryStorage;

use crate::helpers::*;

const CHUNK: u64 = 4096;

#[tokio::test]
async fn a_trimmed_stream_starts_at_its_head() {
    let mut config = test_config();
    config.storage.expiry_sweep_interval_secs = 1;
    config.storage.retention.rules = vec![RetentionRule {
        prefix: "/v1/stream/trim/".into(),
        max_age_secs: 0,
        max_bytes: CHUNK,
    }];
    let storage = Arc::new(InMemoryStorage::with_chunk_bytes(u64::MAX, CHUNK));
    let app = spawn_app_with_storage(storage, config).await;
    for name in ["trim/a", "kept"] {
        assert_eq!(app.create(name, "text/plain").await.status(), 201);
        for byte in [b'a', b'b', b'c'] {
            app.append(name, "text/plain", vec![byte; CHUNK as usize])
                .await;
        }
    }
    // The sweep runs every second: wait for it (generously, under load). A
    // sweep may also land between two appends and trim only the first
    // chunk; the next one must then trim up to the last chunk.
    let deadline = Instant::now() + Duration::from_secs(30);
    let head = loop {
        let head = app.client.head(app.url("trim/a")).send().await.unwrap();
        assert_eq!(head.status(), 200);
        let start = maybe_header(&head, "stream-start-offset");
        if start.as_deref() == Some(offset(2 * CHUNK).as_str()) {
            break head;
        }
        assert!(
            Instant::now() < deadline,
            "the stream was never trimmed to its last chunk (start: {start:?})"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(header(&head, "stream-next-offset"), offset(3 * CHUNK));

    // From the start: the retained chunk only.
    let read = app.read("trim/a", Some("-1")).await;
    assert_eq!(read.status(), 200);
    let body = read.bytes().await.unwrap();
    assert_eq!(body.as_ref(), vec![b'c'; CHUNK as usize].as_slice());
    // Before the head: 410, and where to read instead.
    let gone = app.read("trim/a", Some(&offset(CHUNK))).await;
    assert_eq!(header(&gone, "stream-next-offset"), offset(2 * CHUNK));
    assert_eq!(expect_problem(gone, 410).await, "OFFSET_TRIMMED");
    let from_head = app.read("trim/a", Some(&offset(2 * CHUNK))).await;
    assert_eq!(from_head.status(), 200);
    assert_eq!(from_head.bytes().await.unwrap().len() as u64, CHUNK);

    // A stream no rule covers keeps everything.
    let kept = app.client.head(app.url("kept")).send().await.unwrap();
    assert_eq!(maybe_header(&kept, "stream-start-offset"), None);
    let all = app.read("kept", Some("-1")).await.bytes().await.unwrap();
    assert_eq!(all.len() as u64, 3 * CHUNK);
}
