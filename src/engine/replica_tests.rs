//! Two engines over one real PostgreSQL database, as two replicas: what
//! one acknowledges the other sees, offsets stay dense whoever writes, a
//! producer's retry through the other replica is recognised, and live
//! readers on one are woken by appends through the other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::testing::{append, create, fork, keep_bytes, plain, produced};
use super::{Access, AppendRequest, CreateRequest, Engine, EngineError, EngineLimits};
use crate::protocol::header::{ContentType, ProducerHeaders};
use crate::protocol::offset::{Offset, ReadFrom};
use crate::storage::postgres::testdb::{Cluster, TestDb};
use crate::storage::shared::SharedStreams;
use crate::storage::{PostgresStorage, StorageError};

async fn replica(db: &TestDb) -> Engine {
    let store = PostgresStorage::open(db.options()).await.expect("open");
    Engine::new(Arc::new(store), EngineLimits::default())
}

fn by(producer: &str, body: String, seq: u64) -> AppendRequest {
    AppendRequest {
        content_type: Some(ContentType::new("text/plain")),
        body: Bytes::from(body),
        close: false,
        producer: Some(ProducerHeaders {
            id: producer.into(),
            epoch: 0,
            seq,
        }),
        stream_seq: None,
    }
}

/// Waits (for up to 20 s) until `path`'s row is gone from `store`: the
/// removal of an expired stream is written in the background.
async fn row_removed(store: &dyn SharedStreams, path: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while store.find(path).await.expect("read").is_some() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{path} was never removed"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn contents(engine: &Engine, path: &str) -> Vec<u8> {
    let entry = engine.lookup_fresh(path, Access::Peek).await.expect("live");
    let mut out = Vec::new();
    let mut from = ReadFrom::Start;
    loop {
        let read = engine.read(&entry, from).await.expect("read");
        if read.is_empty() {
            return out;
        }
        for record in &read.records {
            out.extend_from_slice(record);
        }
        from = ReadFrom::At(crate::protocol::offset::Offset(read.next));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_share_streams_and_assign_dense_offsets() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    create(&a, plain("/s")).await;
    // Created through `a`, confirmed (not re-created) through `b`.
    assert!(!b.create(plain("/s")).await.expect("confirmed").new);
    // Two producers write concurrently, alternating replicas per append.
    let writers = ["p1", "p2"].map(|producer| {
        let (a, b) = (a.clone(), b.clone());
        tokio::spawn(async move {
            let mut tails = Vec::new();
            for seq in 0..40u64 {
                let engine = if seq % 2 == 0 { &a } else { &b };
                let body = format!("{producer}-{seq:02};");
                let appended = engine
                    .append("/s", by(producer, body, seq))
                    .await
                    .expect("appended");
                assert!(appended.wrote);
                tails.push(appended.tail);
            }
            tails
        })
    });
    let mut tails = Vec::new();
    for writer in writers {
        tails.extend(writer.await.expect("join"));
    }
    tails.sort_unstable();
    tails.dedup();
    assert_eq!(tails.len(), 80, "every append ended at its own offset");
    let stored = contents(&b, "/s").await;
    assert_eq!(stored.len(), 80 * 6);
    let text = String::from_utf8(stored).expect("text");
    for producer in ["p1", "p2"] {
        let seqs: Vec<&str> = text
            .split(';')
            .filter_map(|item| item.strip_prefix(producer))
            .collect();
        let expected: Vec<String> = (0..40).map(|seq| format!("-{seq:02}")).collect();
        assert_eq!(seqs, expected, "{producer}'s appends once each, in order");
    }
    // A retry of p1's last append through either replica is a duplicate.
    for engine in [&a, &b] {
        let retry = engine
            .append("/s", by("p1", "p1-39;".into(), 39))
            .await
            .expect("duplicate");
        assert!(!retry.wrote);
        assert_eq!(retry.tail, 80 * 6);
    }
    assert!(matches!(
        a.append("/s", by("p1", "gap".into(), 41)).await,
        Err(EngineError::SequenceGap { .. })
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closes_forks_and_deletes_through_one_replica_hold_on_the_other() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    create(&a, plain("/src")).await;
    b.append("/src", produced(b"abc", 0, 0))
        .await
        .expect("append");
    create(&b, fork("/fork", "/src")).await;
    // `a` never saw the fork, yet deleting the source keeps its data.
    a.delete("/src").await.expect("deleted");
    assert!(matches!(
        b.lookup_fresh("/src", Access::Peek).await,
        Err(EngineError::Gone | EngineError::NotFound)
    ));
    assert_eq!(contents(&a, "/fork").await, b"abc");
    let mut close = produced(b"", 0, 0);
    close.producer = None;
    close.close = true;
    assert!(
        b.append("/fork", close.clone())
            .await
            .expect("close")
            .closed
    );
    assert!(matches!(
        a.append("/fork", produced(b"x", 0, 0)).await,
        Err(EngineError::Closed { tail: 3 })
    ));
    // A repeated plain close is idempotent on either replica.
    assert!(!a.append("/fork", close).await.expect("again").wrote);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_on_one_replica_wakes_on_an_append_through_another() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    a.spawn_replica_watch(|_| {});
    b.spawn_replica_watch(|_| {});
    create(&a, plain("/live")).await;
    let entry = a.lookup_fresh("/live", Access::Peek).await.expect("live");
    let mut signal = entry.subscribe();
    signal.borrow_and_update();
    b.append("/live", produced(b"hello", 0, 0))
        .await
        .expect("append");
    // A reader that is never woken fails; one that is woken late on a
    // loaded machine does not.
    tokio::time::timeout(Duration::from_secs(20), signal.changed())
        .await
        .expect("woken")
        .expect("open");
    assert_eq!(entry.snapshot().tail, 5);
    let read = a.read(&entry, ReadFrom::Start).await.expect("read");
    assert_eq!(read.records.concat(), b"hello");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_ttl_is_kept_alive_by_reads_on_any_replica_and_expires_everywhere() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let mut ttl = plain("/ttl");
    // 4 s: each step below leaves a loaded machine seconds to spare.
    ttl.ttl_secs = Some(4);
    create(&a, ttl).await;
    // `b` knows the stream from its creation on: its own view of the last
    // access goes stale while only `a` reads.
    b.lookup_fresh("/ttl", Access::Peek)
        .await
        .expect("live on b");
    let started = tokio::time::Instant::now();
    while started.elapsed() < Duration::from_millis(5000) {
        a.lookup_fresh("/ttl", Access::Touch)
            .await
            .expect("kept alive by reads on a");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    // Past its TTL since creation, but read on `a` all along.
    b.lookup_fresh("/ttl", Access::Peek)
        .await
        .expect("alive as seen from b");
    assert_eq!(
        b.sweep_shared(&*b.shared_store().expect("shared"))
            .await
            .expect("swept"),
        0
    );
    // Reads stop: it expires on both.
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert!(matches!(
        b.lookup_fresh("/ttl", Access::Peek).await,
        Err(EngineError::NotFound)
    ));
    assert!(matches!(
        a.lookup_fresh("/ttl", Access::Touch).await,
        Err(EngineError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweep_of_one_replica_reclaims_streams_only_another_one_knew() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let mut ttl = plain("/expiring");
    // 3 s: the first sweep must come before it expires on a loaded machine.
    ttl.ttl_secs = Some(3);
    create(&a, ttl).await;
    create(&a, plain("/kept")).await;
    let store = b.shared_store().expect("shared");
    assert_eq!(b.sweep_shared(&*store).await.expect("swept"), 0);
    tokio::time::sleep(Duration::from_millis(3300)).await;
    assert_eq!(b.sweep_shared(&*store).await.expect("swept"), 1);
    row_removed(&*store, "/expiring").await;
    assert!(matches!(
        a.lookup_fresh("/expiring", Access::Peek).await,
        Err(EngineError::NotFound)
    ));
    a.lookup_fresh("/kept", Access::Peek).await.expect("kept");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiry_loses_to_an_access_another_replica_just_recorded() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let mut ttl = plain("/race");
    // 3 s: `b` must see it live first on a loaded machine.
    ttl.ttl_secs = Some(3);
    create(&a, ttl).await;
    b.lookup_fresh("/race", Access::Peek).await.expect("live");
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let store = b.shared_store().expect("shared");
    let id = store
        .find("/race")
        .await
        .expect("read")
        .expect("row")
        .spec
        .id;
    // `b` has judged it expired; before it takes the stream out of
    // service, a read through `a` records an access.
    let judged = crate::clock::unix_ms();
    a.shared_store()
        .expect("shared")
        .touch(id, judged)
        .await
        .expect("touch");
    assert!(
        !store.claim_expiry(id, judged).await.expect("claim"),
        "the access wins"
    );
    b.lookup_fresh("/race", Access::Peek)
        .await
        .expect("alive on b, whose own view is stale");
    // Left alone, it expires; once settled, a late access revives nothing.
    tokio::time::sleep(Duration::from_millis(3200)).await;
    let settled = crate::clock::unix_ms();
    assert!(store.claim_expiry(id, settled).await.expect("claim"));
    let late = a.shared_store().expect("shared");
    late.touch(id, settled + 1).await.expect("touch");
    assert!(matches!(
        b.lookup_fresh("/race", Access::Peek).await,
        Err(EngineError::NotFound)
    ));
    row_removed(&*store, "/race").await;
    assert!(matches!(
        a.lookup_fresh("/race", Access::Peek).await,
        Err(EngineError::NotFound)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_creates_on_two_replicas_get_the_protocol_answer() {
    let db = Cluster::shared().database().await;
    let (a, b) = (replica(&db).await, replica(&db).await);
    let json = |path: &str| CreateRequest {
        content_type: Some(ContentType::new("application/json")),
        ..plain(path)
    };
    for round in 0..30 {
        // The same configuration: one creates, the other confirms.
        let path = format!("/same-{round}");
        let (first, second) = tokio::join!(a.create(plain(&path)), b.create(plain(&path)));
        let (first, second) = (
            first.expect("a: 201 or 200"),
            second.expect("b: 201 or 200"),
        );
        assert!(first.new != second.new, "created once");
        // Another configuration: one creates, the other is refused.
        let path = format!("/other-{round}");
        let (first, second) = tokio::join!(a.create(plain(&path)), b.create(json(&path)));
        match (first, second) {
            (Ok(created), Err(EngineError::ConfigMismatch(_)))
            | (Err(EngineError::ConfigMismatch(_)), Ok(created)) => assert!(created.new),
            other => panic!("round {round}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_trims_once_and_every_replica_answers_from_the_head() {
    const CHUNK: u64 = 4096;
    static BLOCK: [u8; 4096] = [b'x'; 4096];
    let db = Cluster::shared().database().await;
    let open = async || {
        let mut options = db.options();
        options.chunk_bytes = CHUNK;
        let store = PostgresStorage::open(options).await.expect("open");
        Engine::new(Arc::new(store), EngineLimits::default())
    };
    let (a, b) = (open().await, open().await);
    for path in ["/r/s", "/r/src"] {
        create(&a, plain(path)).await;
        for _ in 0..3 {
            append(&b, path, &BLOCK).await;
        }
    }
    // A fork through `b` only: `a` does not know `/r/src` has one.
    create(&b, fork("/r/fork", "/r/src")).await;
    let retention = keep_bytes("/r/", CHUNK);
    for expected in [2 * CHUNK, 0] {
        let (on_a, on_b) = tokio::join!(
            a.enforce_retention(&retention),
            b.enforce_retention(&retention)
        );
        let mut trimmed = [on_a.expect("a"), on_b.expect("b")];
        trimmed.sort_unstable();
        assert_eq!(trimmed, [0, expected], "one replica trims");
    }
    let c = open().await;
    for engine in [&a, &b, &c] {
        let entry = engine
            .lookup_fresh("/r/s", Access::Peek)
            .await
            .expect("live");
        assert_eq!(entry.head(), 2 * CHUNK);
        let read = engine.read(&entry, ReadFrom::Start).await.expect("read");
        assert_eq!((read.start, read.next), (2 * CHUNK, 3 * CHUNK));
        assert!(matches!(
            engine.read(&entry, ReadFrom::At(Offset(CHUNK))).await,
            Err(EngineError::Storage(StorageError::Trimmed { head, .. })) if head == 2 * CHUNK
        ));
        let source = engine
            .lookup_fresh("/r/src", Access::Peek)
            .await
            .expect("live");
        assert_eq!(source.first_position(), 0, "a forked stream keeps its data");
    }
    assert_eq!(contents(&a, "/r/fork").await.len(), 3 * CHUNK as usize);
}
