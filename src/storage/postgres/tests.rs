//! Tests against a real PostgreSQL: migrations racing, the database going
//! away and coming back, connections lost around `COMMIT`, and the
//! `LISTEN`/`NOTIFY` plumbing. (The shared storage suite runs on this
//! backend too, see `storage::suite`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::testdb::{Cluster, TestDb};
use super::*;
use crate::storage::Append;

fn spec(id: StreamId) -> StreamSpec {
    StreamSpec {
        id,
        path: format!("/v1/stream/pg{id}"),
        content_type: "application/octet-stream".into(),
        ttl_secs: None,
        expires_at_ms: None,
        created_at_ms: 0,
        fork: None,
        base: 0,
    }
}

fn append(id: StreamId, start: u64, data: Vec<u8>) -> Mutation {
    Mutation::Append(Append {
        id,
        start,
        data: Bytes::from(data),
        producer: None,
        stream_seq: None,
        close: None,
    })
}

async fn create(store: &PostgresStorage, id: StreamId) {
    store
        .submit(Mutation::Create {
            spec: spec(id),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
}

/// Everything stored for stream `id`, read through the backend.
async fn stored(store: &PostgresStorage, id: StreamId) -> Vec<u8> {
    let tail = store.stream_tails(&[id]).await.expect("tails")[0].tail;
    let chunk = store.read(id, 0, tail, usize::MAX).await.expect("read");
    chunk.records.concat()
}

async fn open(db: &TestDb) -> PostgresStorage {
    PostgresStorage::open(db.options()).await.expect("open")
}

#[tokio::test]
async fn migrations_racing_from_many_connections_apply_once() {
    let db = Cluster::shared().database().await;
    let connector = Arc::new(Connector::new(db.options()).expect("connector"));
    let racers = (0..6).map(|_| {
        let connector = connector.clone();
        tokio::spawn(async move {
            let client = connect(&connector, "test").await.expect("connect");
            schema::migrate(&client, "durable_streams").await
        })
    });
    for outcome in futures_util::future::join_all(racers).await {
        outcome.expect("join").expect("migrate");
    }
    let client = connect(&connector, "test").await.expect("connect");
    let rows = client
        .query(
            "SELECT version FROM durable_streams.schema_migrations ORDER BY version",
            &[],
        )
        .await
        .expect("versions");
    let versions: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();
    assert_eq!(versions, (1..=schema::LATEST_VERSION).collect::<Vec<_>>());
    // Several stores opening at once, as replicas starting together do.
    let opens = (0..3).map(|_| PostgresStorage::open(db.options()));
    for store in futures_util::future::join_all(opens).await {
        store.expect("open");
    }
}

#[tokio::test]
async fn a_newer_schema_refuses_to_open_and_read_only_needs_the_schema() {
    let db = Cluster::shared().database().await;
    let error = PostgresStorage::open_read_only(db.options())
        .await
        .expect_err("no schema yet");
    assert!(
        error.to_string().contains("no durable-streams schema"),
        "{error}"
    );
    drop(open(&db).await);
    PostgresStorage::open_read_only(db.options())
        .await
        .expect("read-only open of a migrated schema");
    let client = Cluster::shared().admin().await;
    drop(client);
    let connector = Connector::new(db.options()).expect("connector");
    let client = connect(&connector, "test").await.expect("connect");
    client
        .batch_execute(
            "INSERT INTO durable_streams.schema_migrations (version, description) \
             VALUES (999, 'from the future')",
        )
        .await
        .expect("insert");
    for error in [
        PostgresStorage::open(db.options())
            .await
            .expect_err("newer"),
        PostgresStorage::open_read_only(db.options())
            .await
            .expect_err("newer"),
    ] {
        let text = error.to_string();
        assert!(
            text.contains("version 999, newer than this server"),
            "{text}"
        );
    }
}

#[tokio::test]
async fn a_read_only_store_refuses_writes_and_reads_what_is_stored() {
    let db = Cluster::shared().database().await;
    let store = open(&db).await;
    create(&store, 1).await;
    store
        .submit(append(1, 0, b"kept".to_vec()))
        .await
        .expect("append");
    let reader = PostgresStorage::open_read_only(db.options())
        .await
        .expect("read-only");
    assert_eq!(reader.recover().len(), 1);
    assert_eq!(stored(&reader, 1).await, b"kept");
    let error = reader
        .submit(append(1, 4, b"no".to_vec()))
        .await
        .expect_err("read-only");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    assert!(reader.put_metadata("k", None).await.is_err());
}

/// The server stops mid-run: writes and reads answer `Unavailable`
/// (never hang, never succeed); once it is back the same store works
/// again without being reopened, and holds exactly what was acknowledged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_database_is_unavailable_until_it_returns() {
    let cluster = Cluster::dedicated("");
    let db = cluster.database().await;
    let store = open(&db).await;
    create(&store, 1).await;
    store
        .submit(append(1, 0, b"before".to_vec()))
        .await
        .expect("append");

    cluster.stop();
    let error = store
        .submit(append(1, 6, b"lost".to_vec()))
        .await
        .expect_err("database down");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    let error = store.read(1, 0, 6, usize::MAX).await.expect_err("read");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    assert!(store.metadata().await.is_err());

    cluster.restart("");
    // The writer waits out its back-off before reconnecting.
    // A restarted cluster on a loaded machine may take many seconds.
    let mut appended = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while tokio::time::Instant::now() < deadline {
        match store.submit(append(1, 6, b"after".to_vec())).await {
            Ok(()) => {
                appended = true;
                break;
            }
            Err(StorageError::Unavailable(_)) => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
    assert!(appended, "the writer never reconnected");
    assert_eq!(stored(&store, 1).await, b"beforeafter");
    store
        .put_metadata("k", Some(Bytes::from_static(b"v")))
        .await
        .expect("metadata after recovery");
}

/// Where the proxy cuts a connection once it sees the client send `COMMIT`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cut {
    /// `COMMIT` reaches the server; its answer never reaches the client.
    AfterCommit,
    /// `COMMIT` never reaches the server.
    BeforeCommit,
}

/// A TCP proxy to the database that, once armed, cuts the first
/// connection on which the client sends `COMMIT`, as a network failure
/// would; everything else passes untouched. Returns the proxy's port and
/// its trigger.
async fn commit_cutting_proxy(target: u16, cut: Cut) -> (u16, Arc<AtomicBool>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let armed = Arc::new(AtomicBool::new(false));
    let trigger = armed.clone();
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let server = TcpStream::connect(("127.0.0.1", target))
                .await
                .expect("connect to the database");
            tokio::spawn(pipe(client, server, armed.clone(), cut));
        }
    });
    (port, trigger)
}

async fn pipe(client: TcpStream, server: TcpStream, armed: Arc<AtomicBool>, cut: Cut) {
    let (mut client_read, mut client_write) = client.into_split();
    let (mut server_read, mut server_write) = server.into_split();
    let answer_cut = Arc::new(AtomicBool::new(false));
    let upstream = {
        let answer_cut = answer_cut.clone();
        async move {
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match client_read.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let commit = buf[..n].windows(7).any(|w| w == b"COMMIT\0");
                if commit && armed.swap(false, Ordering::SeqCst) {
                    if cut == Cut::AfterCommit {
                        answer_cut.store(true, Ordering::SeqCst);
                        let _ = server_write.write_all(&buf[..n]).await;
                        // Give the server time to commit, then cut.
                        tokio::time::sleep(Duration::from_millis(300)).await;
                    }
                    return;
                }
                if server_write.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
        }
    };
    let downstream = async move {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match server_read.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            };
            if answer_cut.load(Ordering::SeqCst) {
                continue;
            }
            if client_write.write_all(&buf[..n]).await.is_err() {
                return;
            }
        }
    };
    // Whichever side ends first ends both: the connection is cut.
    tokio::select! {
        () = upstream => {}
        () = downstream => {}
    }
}

fn port_of(url: &str) -> u16 {
    url.rsplit_once(':')
        .and_then(|(_, rest)| rest.split('/').next())
        .and_then(|port| port.parse().ok())
        .expect("port in the test URL")
}

/// A store connected through a [`commit_cutting_proxy`], armed once open.
async fn through_proxy(db: &TestDb, cut: Cut) -> PostgresStorage {
    let (proxy, armed) = commit_cutting_proxy(port_of(&db.url), cut).await;
    let mut config = db.config();
    config.url = Some(format!(
        "postgres://ds@127.0.0.1:{proxy}/{}?sslmode=disable",
        db.name
    ));
    let store = PostgresStorage::open(PostgresOptions::from_config(&config).expect("options"))
        .await
        .expect("open through the proxy");
    armed.store(true, Ordering::SeqCst);
    store
}

/// The connection is lost after `COMMIT` reached the server: the writer
/// learns from the server that it committed, and acknowledges it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_whose_answer_is_lost_is_resolved_as_committed() {
    let db = Cluster::shared().database().await;
    let store = through_proxy(&db, Cut::AfterCommit).await;
    store
        .submit(Mutation::Create {
            spec: spec(1),
            data: Bytes::from_static(b"first"),
            closed: false,
        })
        .await
        .expect("a committed create whose answer was lost is acknowledged");
    assert_eq!(stored(&store, 1).await, b"first");
    store
        .submit(append(1, 5, b"+next".to_vec()))
        .await
        .expect("later appends chain on it");
    assert_eq!(stored(&store, 1).await, b"first+next");
}

/// The connection is lost before `COMMIT` reached the server: the
/// transaction is aborted, the write answered `Unavailable`, and nothing
/// of it is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_that_never_arrived_fails_and_leaves_nothing() {
    let db = Cluster::shared().database().await;
    let store = through_proxy(&db, Cut::BeforeCommit).await;
    let error = store
        .submit(Mutation::Create {
            spec: spec(1),
            data: Bytes::from_static(b"lost"),
            closed: false,
        })
        .await
        .expect_err("not committed");
    assert!(matches!(error, StorageError::Unavailable(_)), "{error:?}");
    assert!(store.stream_tails(&[1]).await.expect("tails").is_empty());
    create(&store, 1).await;
    assert!(stored(&store, 1).await.is_empty());
}

/// The writer's session is killed again and again while appends stream
/// in: every acknowledged append is stored exactly once, in order, and no
/// refused one is.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_sessions_never_confirm_a_write_wrongly() {
    let db = Cluster::shared().database().await;
    let store = Arc::new(open(&db).await);
    create(&store, 1).await;
    let killer = {
        let admin = Cluster::shared().admin().await;
        let name = db.name.clone();
        tokio::spawn(async move {
            let mut killed = 0u64;
            for round in 0..40u64 {
                tokio::time::sleep(Duration::from_millis(15 + (round * 7) % 40)).await;
                let rows = admin
                    .query(
                        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                         WHERE datname = $1 AND application_name LIKE '%(writer)'",
                        &[&name],
                    )
                    .await
                    .expect("terminate");
                killed += rows.len() as u64;
            }
            killed
        })
    };
    let mut expected: Vec<u8> = Vec::new();
    let mut acknowledged = 0;
    let mut refused = 0;
    let mut next = 0u32;
    while !killer.is_finished() {
        // Eight pipelined appends, each chained on the one before.
        let mut start = expected.len() as u64;
        let mut pending = Vec::new();
        for _ in 0..8 {
            let data = format!("<{next:06}>").into_bytes();
            next += 1;
            pending.push((data.clone(), store.submit(append(1, start, data.clone()))));
            start += data.len() as u64;
        }
        for (data, ack) in pending {
            match ack.await {
                Ok(()) => {
                    expected.extend_from_slice(&data);
                    acknowledged += 1;
                }
                Err(StorageError::Unavailable(_) | StorageError::OutOfOrder { .. }) => {
                    refused += 1;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
        // What the store holds is what was acknowledged, nothing else.
        let held = loop {
            match store.stream_tails(&[1]).await {
                Ok(tails) => break tails[0].tail,
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        };
        assert_eq!(held, expected.len() as u64, "stored tail vs acknowledged");
    }
    let killed = killer.await.expect("join");
    assert!(killed > 0, "no session was killed");
    assert!(acknowledged > 0 && refused > 0, "{acknowledged} {refused}");
    assert_eq!(stored(&store, 1).await, expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_reach_a_listener_and_it_resyncs_after_reconnecting() {
    let db = Cluster::shared().database().await;
    let store = open(&db).await;
    let (events, mut received) = mpsc::unbounded_channel();
    let _listener = Listener::spawn(store.connector(), events);
    let first = tokio::time::timeout(Duration::from_secs(20), received.recv())
        .await
        .expect("in time");
    assert_eq!(first, Some(ListenEvent::Resync), "resync once listening");

    assert!(store.attach_notifier(Notifier::spawn(store.connector())));
    create(&store, 1).await;
    for i in 0..20u64 {
        store
            .submit(append(1, i, vec![b'x']))
            .await
            .expect("append");
    }
    // Batched: fewer notifications than commits, but the last tail arrives.
    let mut seen = 0;
    let mut latest = 0;
    while latest < 20 {
        match tokio::time::timeout(Duration::from_secs(20), received.recv()).await {
            Ok(Some(ListenEvent::Tails(tails))) => {
                seen += 1;
                for (id, tail) in tails {
                    assert_eq!(id, 1);
                    latest = latest.max(tail);
                }
            }
            other => panic!("no notification for the last append: {other:?}"),
        }
    }
    assert!(seen >= 1);

    // The listener's session is killed: it reconnects and says to resync.
    let admin = Cluster::shared().admin().await;
    admin
        .query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE '%(listener)'",
            &[&db.name],
        )
        .await
        .expect("terminate");
    loop {
        match tokio::time::timeout(Duration::from_secs(20), received.recv()).await {
            Ok(Some(ListenEvent::Resync)) => break,
            Ok(Some(ListenEvent::Tails(_))) => {}
            other => panic!("no resync after the connection was lost: {other:?}"),
        }
    }
    store
        .submit(append(1, 20, b"y".to_vec()))
        .await
        .expect("append");
    match tokio::time::timeout(Duration::from_secs(20), received.recv()).await {
        Ok(Some(ListenEvent::Tails(tails))) => assert_eq!(tails, vec![(1, 21)]),
        other => panic!("no notification after reconnecting: {other:?}"),
    }
}
