//! Export and import between every pair of backends, filters and
//! conflict policies.

use std::sync::Arc;

use super::*;
use crate::engine::{Access, AppendRequest, CreateRequest, EngineLimits, ForkRequest};
use crate::protocol::header::{ContentType, ProducerHeaders};
use crate::storage::{AcidStorage, FileOptions, FileStorage, InMemoryStorage, Storage};

type Open = fn(&std::path::Path) -> Arc<dyn Storage>;

const BACKENDS: [(&str, Open); 4] = [
    ("memory", |_| Arc::new(InMemoryStorage::default())),
    ("file-fast", |dir| {
        Arc::new(
            FileStorage::open(
                dir,
                FileOptions {
                    durable: false,
                    ..FileOptions::default()
                },
            )
            .expect("open"),
        )
    }),
    ("file-durable", |dir| {
        Arc::new(FileStorage::open(dir, FileOptions::default()).expect("open"))
    }),
    ("acid", |dir| {
        Arc::new(AcidStorage::open(dir).expect("open"))
    }),
];

fn create(path: &str, content_type: &str, body: &'static [u8]) -> CreateRequest {
    CreateRequest {
        path: path.into(),
        content_type: Some(ContentType::new(content_type)),
        ttl_secs: None,
        expires_at: None,
        closed: false,
        fork: None,
        body: Bytes::from_static(body),
    }
}

fn append(body: &'static [u8], content_type: &str) -> AppendRequest {
    AppendRequest {
        content_type: Some(ContentType::new(content_type)),
        body: Bytes::from_static(body),
        close: false,
        producer: None,
        stream_seq: None,
    }
}

/// A store with a closed producer stream, a JSON stream, a TTL stream, a
/// soft-deleted source and a chain of forks (one with a sub-offset).
async fn populate(engine: &Engine) {
    engine
        .create(create("/v1/stream/text", "text/plain", b"hello "))
        .await
        .expect("create");
    let mut produced = append(b"world", "text/plain");
    produced.producer = Some(ProducerHeaders {
        id: "p1".into(),
        epoch: 3,
        seq: 0,
    });
    produced.stream_seq = Some("0001".into());
    engine
        .append("/v1/stream/text", produced)
        .await
        .expect("append");
    let mut closing = append(b"!", "text/plain");
    closing.producer = Some(ProducerHeaders {
        id: "p1".into(),
        epoch: 3,
        seq: 1,
    });
    closing.close = true;
    engine
        .append("/v1/stream/text", closing)
        .await
        .expect("close");

    engine
        .create(create("/v1/stream/json", "application/json", b"[1,2]"))
        .await
        .expect("create");
    engine
        .append(
            "/v1/stream/json",
            append(br#"{"a":"b"}"#, "application/json"),
        )
        .await
        .expect("append");

    let mut ttl = create(
        "/v1/stream/ttl",
        "application/octet-stream",
        &[0, 1, 2, 255],
    );
    ttl.ttl_secs = Some(3600);
    engine.create(ttl).await.expect("create");

    engine
        .create(create("/v1/stream/src", "text/plain", b"abc"))
        .await
        .expect("create");
    engine
        .append("/v1/stream/src", append(b"defgh", "text/plain"))
        .await
        .expect("append");
    let mut fork = create("/v1/stream/fork", "text/plain", b"");
    fork.content_type = None;
    fork.fork = Some(ForkRequest {
        source_path: "/v1/stream/src".into(),
        offset: Some(ReadFrom::At(Offset(3))),
        sub_offset: 2,
    });
    engine.create(fork).await.expect("fork");
    engine
        .append("/v1/stream/fork", append(b"XY", "text/plain"))
        .await
        .expect("append");
    let mut grandchild = create("/v1/stream/fork2", "text/plain", b"");
    grandchild.content_type = None;
    grandchild.fork = Some(ForkRequest {
        source_path: "/v1/stream/fork".into(),
        offset: None,
        sub_offset: 0,
    });
    engine.create(grandchild).await.expect("fork of fork");
    engine.delete("/v1/stream/src").await.expect("soft delete");
}

async fn contents(engine: &Engine, path: &str) -> Vec<u8> {
    let entry = engine.lookup(path, Access::Peek).expect("stream");
    let read = engine.read(&entry, ReadFrom::Start).await.expect("read");
    read.records.concat()
}

fn comparable(engine: &Engine) -> Vec<String> {
    engine
        .snapshot_streams()
        .into_iter()
        .map(|mut s| {
            s.spec.id = 0;
            if let Some(link) = &mut s.spec.fork {
                link.source = 0;
            }
            format!("{s:?}")
        })
        .collect()
}

#[tokio::test]
async fn round_trips_between_every_pair_of_backends() {
    for (from_name, open_from) in BACKENDS {
        for (to_name, open_to) in BACKENDS {
            let (dir_a, dir_b) = (
                tempfile::tempdir().expect("dir"),
                tempfile::tempdir().expect("dir"),
            );
            let source = Engine::new(open_from(dir_a.path()), EngineLimits::default());
            populate(&source).await;
            let mut exported = Vec::new();
            let summary = export(&source, &StreamFilter::default(), &mut exported, &mut Quiet)
                .await
                .expect("export");
            assert_eq!(summary.streams, 6, "{from_name}");

            let target = Engine::new(open_to(dir_b.path()), EngineLimits::default());
            let mut input = exported.as_slice();
            import(
                &target,
                &mut input,
                &StreamFilter::default(),
                OnConflict::Fail,
                &mut Quiet,
            )
            .await
            .unwrap_or_else(|e| panic!("{from_name} -> {to_name}: {e}"));
            assert_eq!(
                comparable(&source),
                comparable(&target),
                "{from_name} -> {to_name}"
            );
            for path in [
                "/v1/stream/text",
                "/v1/stream/json",
                "/v1/stream/ttl",
                "/v1/stream/fork",
                "/v1/stream/fork2",
            ] {
                assert_eq!(
                    contents(&source, path).await,
                    contents(&target, path).await,
                    "{from_name} -> {to_name} {path}"
                );
            }
            assert_eq!(contents(&target, "/v1/stream/fork2").await, b"abcdeXY");
            assert!(matches!(
                target.lookup("/v1/stream/src", Access::Peek),
                Err(EngineError::Gone)
            ));
            // A producer retry of the closing append is still a duplicate.
            let mut retry = append(b"!", "text/plain");
            retry.producer = Some(ProducerHeaders {
                id: "p1".into(),
                epoch: 3,
                seq: 1,
            });
            retry.close = true;
            let outcome = target
                .append("/v1/stream/text", retry)
                .await
                .expect("duplicate");
            assert!(!outcome.wrote);
        }
    }
}

#[tokio::test]
async fn conflicts_follow_the_policy_and_replace_validates_first() {
    let source = Engine::new(
        Arc::new(InMemoryStorage::default()),
        EngineLimits::default(),
    );
    source
        .create(create("/v1/stream/a", "text/plain", b"new"))
        .await
        .expect("create");
    let mut exported = Vec::new();
    export(&source, &StreamFilter::default(), &mut exported, &mut Quiet)
        .await
        .expect("export");

    let target = Engine::new(
        Arc::new(InMemoryStorage::default()),
        EngineLimits::default(),
    );
    target
        .create(create("/v1/stream/a", "text/plain", b"old"))
        .await
        .expect("create");
    let fail = import(
        &target,
        &mut exported.as_slice(),
        &StreamFilter::default(),
        OnConflict::Fail,
        &mut Quiet,
    )
    .await;
    assert!(matches!(fail, Err(TransferError::Conflict(_))));
    import(
        &target,
        &mut exported.as_slice(),
        &StreamFilter::default(),
        OnConflict::Skip,
        &mut Quiet,
    )
    .await
    .expect("skip");
    assert_eq!(contents(&target, "/v1/stream/a").await, b"old");

    // A damaged replacement is refused before the existing stream is touched.
    let text = String::from_utf8(exported.clone()).expect("utf8");
    let damaged = text.replace("\"bytes\":3", "\"bytes\":4");
    let refused = import(
        &target,
        &mut damaged.as_bytes(),
        &StreamFilter::default(),
        OnConflict::Replace,
        &mut Quiet,
    )
    .await;
    assert!(
        matches!(refused, Err(TransferError::Format { .. })),
        "{refused:?}"
    );
    assert_eq!(contents(&target, "/v1/stream/a").await, b"old");

    import(
        &target,
        &mut exported.as_slice(),
        &StreamFilter::default(),
        OnConflict::Replace,
        &mut Quiet,
    )
    .await
    .expect("replace");
    assert_eq!(contents(&target, "/v1/stream/a").await, b"new");
}

#[tokio::test]
async fn filters_pull_in_fork_sources_and_reject_garbage() {
    let source = Engine::new(
        Arc::new(InMemoryStorage::default()),
        EngineLimits::default(),
    );
    populate(&source).await;
    let mut exported = Vec::new();
    let filter = StreamFilter::new(vec!["/v1/stream/fork2".into()]);
    let summary = export(&source, &filter, &mut exported, &mut Quiet)
        .await
        .expect("export");
    assert_eq!(summary.streams, 3, "fork2, its source fork, and src");

    let target = Engine::new(
        Arc::new(InMemoryStorage::default()),
        EngineLimits::default(),
    );
    let garbage = b"{\"header\":{\"format\":\"something-else\",\"version\":1}}\n";
    assert!(
        import(
            &target,
            &mut garbage.as_slice(),
            &StreamFilter::default(),
            OnConflict::Fail,
            &mut Quiet
        )
        .await
        .is_err()
    );
    let truncated = &exported[..exported.len() / 2];
    assert!(
        import(
            &target,
            &mut &truncated[..],
            &StreamFilter::default(),
            OnConflict::Fail,
            &mut Quiet
        )
        .await
        .is_err()
    );
}

#[tokio::test]
async fn a_trimmed_stream_round_trips_at_its_head_on_every_backend() {
    let source = Engine::new(
        Arc::new(InMemoryStorage::with_chunk_bytes(u64::MAX, 4)),
        EngineLimits::default(),
    );
    source
        .create(create("/v1/stream/t", "text/plain", b""))
        .await
        .expect("create");
    for body in [b"aaaa", b"bbbb", b"cccc"] {
        source
            .append("/v1/stream/t", append(body, "text/plain"))
            .await
            .expect("append");
    }
    let retention = crate::storage::config::RetentionConfig {
        max_bytes: 4,
        ..crate::storage::config::RetentionConfig::default()
    };
    assert_eq!(source.enforce_retention(&retention).await.expect("trim"), 8);
    let mut exported = Vec::new();
    export(&source, &StreamFilter::default(), &mut exported, &mut Quiet)
        .await
        .expect("export");
    let text = String::from_utf8(exported.clone()).expect("utf-8");
    assert!(
        text.contains("\"head\":\"0000000000000000_0000000000000008\""),
        "{text}"
    );
    assert!(!text.contains("aaaa") && !text.contains("YWFh"), "{text}");

    for (name, open) in BACKENDS {
        let dir = tempfile::tempdir().expect("temp dir");
        let target = Engine::new(open(dir.path()), EngineLimits::default());
        import(
            &target,
            &mut exported.as_slice(),
            &StreamFilter::default(),
            OnConflict::Fail,
            &mut Quiet,
        )
        .await
        .unwrap_or_else(|e| panic!("{name}: {e}"));
        check_trimmed_import(&target, name, &text).await;
        if name != "memory" {
            // The head survives a restart.
            drop(target);
            let reopened = Engine::new(open(dir.path()), EngineLimits::default());
            check_trimmed_import(&reopened, name, &text).await;
        }
    }
}

/// The stream imported from a trimmed export: at its head, unreadable
/// before it, and exported again byte for byte.
async fn check_trimmed_import(target: &Engine, name: &str, text: &str) {
    let entry = target
        .lookup("/v1/stream/t", Access::Peek)
        .expect("imported");
    assert_eq!(entry.head(), 8, "{name}");
    assert_eq!(contents(target, "/v1/stream/t").await, b"cccc", "{name}");
    assert!(
        target.read(&entry, ReadFrom::At(Offset(0))).await.is_err(),
        "{name}: a read before the head"
    );
    let mut again = Vec::new();
    export(target, &StreamFilter::default(), &mut again, &mut Quiet)
        .await
        .expect("export again");
    assert_eq!(
        String::from_utf8(again).expect("utf-8"),
        text,
        "{name}: offsets and bytes kept"
    );
}
