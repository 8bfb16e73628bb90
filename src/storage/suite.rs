//! The storage suite: one set of cases, run against every backend.
//!
//! Each case takes a [`Harness`] that opens the backend under test (and, for
//! persistent ones, re-opens it on the same directory to check recovery).

use std::sync::Arc;

use bytes::Bytes;

use super::acid::AcidOptions;
use super::{
    AcidStorage, Append, ClosedBy, FileOptions, FileStorage, InMemoryStorage, InstrumentedStorage,
    Mutation, Storage, StorageError, StreamSpec,
};
use crate::protocol::producer::ProducerState;

/// A backend being opened.
pub type Opening = std::pin::Pin<Box<dyn std::future::Future<Output = Arc<dyn Storage>> + Send>>;

/// Opens a backend, optionally on a directory (or database) it has used
/// before.
pub struct Harness {
    dir: tempfile::TempDir,
    open: Box<dyn Fn(&std::path::Path) -> Opening + Send + Sync>,
    persistent: bool,
}

impl Harness {
    fn new(open: fn(&std::path::Path) -> Arc<dyn Storage>, persistent: bool) -> Self {
        Self::opened_by(
            move |dir| {
                let store = open(dir);
                Box::pin(std::future::ready(store))
            },
            persistent,
        )
    }

    /// A harness whose backend opens asynchronously (a database).
    pub fn opened_by(
        open: impl Fn(&std::path::Path) -> Opening + Send + Sync + 'static,
        persistent: bool,
    ) -> Self {
        Self {
            dir: tempfile::tempdir().expect("temp dir"),
            open: Box::new(open),
            persistent,
        }
    }

    async fn open(&self) -> Arc<dyn Storage> {
        (self.open)(self.dir.path()).await
    }
}

/// A plain octet-stream spec for stream `id` starting at `base`.
pub fn spec(id: u64, base: u64) -> StreamSpec {
    StreamSpec {
        id,
        path: format!("/v1/stream/s{id}"),
        content_type: "application/octet-stream".into(),
        ttl_secs: None,
        expires_at_ms: None,
        created_at_ms: 0,
        fork: None,
        base,
    }
}

/// An append of `data` at `start` without writer state.
pub fn append(id: u64, start: u64, data: impl AsRef<[u8]>) -> Mutation {
    Mutation::Append(Append {
        id,
        start,
        data: Bytes::copy_from_slice(data.as_ref()),
        producer: None,
        stream_seq: None,
        close: None,
    })
}

async fn read_all(store: &dyn Storage, id: u64, from: u64, until: u64) -> Vec<u8> {
    let chunk = store.read(id, from, until, usize::MAX).await.expect("read");
    chunk.records.concat()
}

async fn create_append_read(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::from_static(b"ab"),
            closed: false,
        })
        .await
        .expect("create");
    store.submit(append(1, 2, b"cde")).await.expect("append");
    store.submit(append(1, 5, b"f")).await.expect("append");
    assert_eq!(read_all(&*store, 1, 0, 6).await, b"abcdef");
    // Mid-record start, bounded end.
    let chunk = store.read(1, 3, 5, usize::MAX).await.expect("read");
    assert_eq!(chunk.records.concat(), b"de");
    assert!(chunk.starts_mid_record);
    assert_eq!(chunk.end, 5);
    // The byte budget stops after the record that reaches it.
    let chunk = store.read(1, 0, 6, 1).await.expect("read");
    assert_eq!(chunk.records.concat(), b"ab");
    assert_eq!(chunk.end, 2);
    // Nothing past the tail, nothing for an empty range.
    assert!(
        store
            .read(1, 6, 6, 10)
            .await
            .expect("read")
            .records
            .is_empty()
    );
}

async fn refuses_out_of_order_and_unknown(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
    let error = store.submit(append(1, 3, b"x")).await.expect_err("gap");
    assert!(
        matches!(
            error,
            StorageError::OutOfOrder {
                start: 3,
                tail: 0,
                ..
            }
        ),
        "{error:?}"
    );
    let error = store.submit(append(9, 0, b"x")).await.expect_err("unknown");
    assert!(matches!(error, StorageError::UnknownStream(9)), "{error:?}");
    // A refused append leaves the stream untouched.
    store.submit(append(1, 0, b"ok")).await.expect("append");
    assert_eq!(read_all(&*store, 1, 0, 10).await, b"ok");
}

async fn pipelined_appends_keep_order(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
    // Queue many appends before awaiting any: a backend may commit them in
    // groups but must apply them in submission order.
    let mut acks = Vec::new();
    let mut expected = Vec::new();
    for i in 0..200u64 {
        let byte = b'a' + (i % 26) as u8;
        expected.push(byte);
        let data = Bytes::from(vec![byte]);
        acks.push(store.submit(Mutation::Append(Append {
            id: 1,
            start: i,
            data,
            producer: None,
            stream_seq: None,
            close: None,
        })));
    }
    for ack in acks {
        ack.await.expect("append");
    }
    assert_eq!(read_all(&*store, 1, 0, 200).await, expected);
}

async fn mixed_record_sizes_read_back_from_any_offset(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
    let mut expected = Vec::new();
    // Large records (not kept in a recent-record cache) between small ones.
    for (i, len) in [5usize, 20_000, 3, 70_000, 1, 1, 40]
        .into_iter()
        .enumerate()
    {
        let data: Vec<u8> = (0..len).map(|j| (i * 31 + j) as u8).collect();
        store
            .submit(append(1, expected.len() as u64, &data))
            .await
            .expect("append");
        expected.extend(data);
    }
    let tail = expected.len() as u64;
    for from in [0, 4, 5, 19_000, 20_005, 20_008, 90_008, 90_009, tail - 1] {
        let got = read_all(&*store, 1, from, tail).await;
        assert_eq!(got, &expected[from as usize..], "from {from}");
    }
}

async fn forks_start_at_their_base(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(2, 10),
            data: Bytes::from_static(b"xy"),
            closed: false,
        })
        .await
        .expect("create");
    store.submit(append(2, 12, b"z")).await.expect("append");
    assert_eq!(read_all(&*store, 2, 0, 13).await, b"xyz");
    let chunk = store.read(2, 0, 13, usize::MAX).await.expect("read");
    assert!(!chunk.starts_mid_record);
    assert_eq!(chunk.end, 13);
}

async fn remove_forgets_the_stream(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::from_static(b"a"),
            closed: false,
        })
        .await
        .expect("create");
    store
        .submit(Mutation::Remove { id: 1 })
        .await
        .expect("remove");
    let error = store.submit(append(1, 1, b"b")).await.expect_err("removed");
    assert!(matches!(error, StorageError::UnknownStream(1)), "{error:?}");
}

async fn recovers_everything_it_acknowledged(h: Harness) {
    if !h.persistent {
        return;
    }
    {
        let store = h.open().await;
        assert!(store.recover().is_empty());
        store
            .submit(Mutation::Create {
                spec: spec(1, 0),
                data: Bytes::from_static(b"ab"),
                closed: false,
            })
            .await
            .expect("create");
        store
            .submit(Mutation::Append(Append {
                id: 1,
                start: 2,
                data: Bytes::from_static(b"cd"),
                producer: Some((
                    "p".into(),
                    ProducerState {
                        epoch: 2,
                        last_seq: 7,
                    },
                )),
                stream_seq: Some("0009".into()),
                close: Some(Some(ClosedBy {
                    producer_id: "p".into(),
                    epoch: 2,
                    seq: 7,
                })),
            }))
            .await
            .expect("append");
        store
            .submit(Mutation::Create {
                spec: spec(2, 0),
                data: Bytes::new(),
                closed: true,
            })
            .await
            .expect("create");
        store
            .submit(Mutation::SoftDelete { id: 2 })
            .await
            .expect("soft delete");
        store
            .submit(Mutation::Create {
                spec: spec(3, 0),
                data: Bytes::from_static(b"gone"),
                closed: false,
            })
            .await
            .expect("create");
        store
            .submit(Mutation::Remove { id: 3 })
            .await
            .expect("remove");
    }
    let store = h.open().await;
    let mut recovered = store.recover();
    recovered.sort_by_key(|s| s.spec.id);
    assert_eq!(recovered.len(), 2, "{recovered:?}");
    let first = &recovered[0];
    assert_eq!(first.spec, spec(1, 0));
    assert_eq!(first.tail, 4);
    assert_eq!(
        first.closed,
        Some(Some(ClosedBy {
            producer_id: "p".into(),
            epoch: 2,
            seq: 7
        }))
    );
    assert_eq!(
        first.producers,
        vec![(
            "p".to_owned(),
            ProducerState {
                epoch: 2,
                last_seq: 7
            }
        )]
    );
    assert_eq!(first.stream_seq.as_deref(), Some("0009"));
    assert!(!first.soft_deleted);
    assert_eq!(recovered[1].closed, Some(None));
    assert!(recovered[1].soft_deleted);
    assert_eq!(read_all(&*store, 1, 0, 4).await, b"abcd");
    // And it keeps working after recovery.
    store
        .submit(append(1, 4, b"e"))
        .await
        .expect("append after reopen");
    assert_eq!(read_all(&*store, 1, 0, 5).await, b"abcde");
}

async fn chunks_trim_from_the_head(h: Harness) {
    let store = h.open().await;
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
    assert!(store.chunks(1).await.expect("chunks").is_empty());
    let mut expected = Vec::new();
    for i in 0..40u64 {
        let data = vec![b'a' + (i % 26) as u8; 1000];
        store
            .submit(append(1, expected.len() as u64, &data))
            .await
            .expect("append");
        expected.extend(data);
    }
    let tail = expected.len() as u64;
    let chunks = store.chunks(1).await.expect("chunks");
    assert!(chunks.len() >= 4, "{chunks:?}");
    assert_eq!(chunks[0].start, 0);
    assert_eq!(chunks.last().map(|c| c.end), Some(tail));
    for pair in chunks.windows(2) {
        assert_eq!(pair[0].end, pair[1].start, "contiguous: {chunks:?}");
        assert_eq!(pair[0].end % 1000, 0, "records are never split: {chunks:?}");
    }
    assert!(chunks.iter().all(|c| c.last_write_ms > 0));

    // A cut inside the first chunk keeps it; the end of the second drops two.
    store
        .submit(Mutation::Trim { id: 1, before: 1 })
        .await
        .expect("trim nothing");
    assert_eq!(store.chunks(1).await.expect("chunks"), chunks);
    store
        .submit(Mutation::Trim {
            id: 1,
            before: chunks[1].end,
        })
        .await
        .expect("trim");
    let head = chunks[2].start;
    assert_eq!(store.chunks(1).await.expect("chunks"), chunks[2..]);
    let error = store
        .read(1, 0, tail, usize::MAX)
        .await
        .expect_err("trimmed");
    assert!(
        matches!(error, StorageError::Trimmed { id: 1, head: h } if h == head),
        "{error:?}"
    );
    assert_eq!(
        read_all(&*store, 1, head, tail).await,
        &expected[head as usize..]
    );

    let store = if h.persistent {
        drop(store);
        let store = h.open().await;
        let recovered = store.recover();
        assert_eq!(recovered[0].head, head);
        assert_eq!(recovered[0].tail, tail);
        assert!(store.read(1, head - 1, tail, 10).await.is_err());
        assert_eq!(
            read_all(&*store, 1, head, tail).await,
            &expected[head as usize..]
        );
        store
    } else {
        store
    };

    // Everything, then appends start a new chunk at the tail.
    store
        .submit(Mutation::Trim {
            id: 1,
            before: tail,
        })
        .await
        .expect("trim all");
    assert!(store.chunks(1).await.expect("chunks").is_empty());
    store
        .submit(append(1, tail, b"next"))
        .await
        .expect("append");
    let after = store.chunks(1).await.expect("chunks");
    assert_eq!(
        after.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(),
        [(tail, tail + 4)]
    );
    assert_eq!(read_all(&*store, 1, tail, tail + 4).await, b"next");
    if h.persistent {
        drop(store);
        let store = h.open().await;
        assert_eq!(store.recover()[0].head, tail);
        assert_eq!(read_all(&*store, 1, tail, tail + 4).await, b"next");
    }
}

/// A trim past the tail moves the tail: a stream recreated at the head
/// retention left it at (an import) keeps its offsets.
async fn created_at_a_trimmed_head(h: Harness) {
    let store = h.open().await;
    for (id, data) in [(1, &b""[..]), (2, &b"old"[..])] {
        store
            .submit(Mutation::Create {
                spec: spec(id, 0),
                data: Bytes::copy_from_slice(data),
                closed: false,
            })
            .await
            .expect("create");
        store
            .submit(Mutation::Trim { id, before: 5000 })
            .await
            .expect("trim past the tail");
        assert!(store.chunks(id).await.expect("chunks").is_empty());
        store
            .submit(append(id, 5000, b"abc"))
            .await
            .expect("at head");
        store.submit(append(id, 5003, b"de")).await.expect("append");
    }
    let refused = store.submit(append(1, 0, b"x")).await;
    assert!(
        matches!(refused, Err(StorageError::OutOfOrder { tail: 5005, .. })),
        "{refused:?}"
    );
    let check = |store: Arc<dyn Storage>| async move {
        for id in [1, 2] {
            let error = store.read(id, 0, 5005, 10).await.expect_err("trimmed");
            assert!(
                matches!(error, StorageError::Trimmed { head: 5000, .. }),
                "{error:?}"
            );
            assert_eq!(read_all(&*store, id, 5000, 5005).await, b"abcde");
            let chunks = store.chunks(id).await.expect("chunks");
            assert_eq!(chunks.first().map(|c| c.start), Some(5000));
            assert_eq!(chunks.last().map(|c| c.end), Some(5005));
        }
        store
    };
    let store = check(store).await;
    if h.persistent {
        drop(store);
        let store = h.open().await;
        let mut recovered = store.recover();
        recovered.sort_by_key(|s| s.spec.id);
        assert_eq!(
            recovered
                .iter()
                .map(|s| (s.head, s.tail))
                .collect::<Vec<_>>(),
            [(5000, 5005), (5000, 5005)]
        );
        let store = check(store).await;
        store.submit(append(1, 5005, b"f")).await.expect("append");
        assert_eq!(read_all(&*store, 1, 5000, 5006).await, b"abcdef");
    }
}

async fn metadata_round_trips_and_persists(h: Harness) {
    let store = h.open().await;
    assert!(store.metadata().await.expect("load").is_empty());
    store
        .put_metadata("sub/b", Some(Bytes::from_static(b"two")))
        .await
        .expect("put");
    store
        .put_metadata("sub/a", Some(Bytes::from_static(b"one")))
        .await
        .expect("put");
    store
        .put_metadata("sub/a", Some(Bytes::from_static(b"one, again")))
        .await
        .expect("overwrite");
    store
        .put_metadata("gone", Some(Bytes::from_static(b"x")))
        .await
        .expect("put");
    store.put_metadata("gone", None).await.expect("remove");
    store
        .put_metadata("never-there", None)
        .await
        .expect("removing a missing key is fine");
    assert!(store.put_metadata("", None).await.is_err());
    let expected = vec![
        ("sub/a".to_owned(), Bytes::from_static(b"one, again")),
        ("sub/b".to_owned(), Bytes::from_static(b"two")),
    ];
    assert_eq!(store.metadata().await.expect("load"), expected);
    if h.persistent {
        drop(store);
        let store = h.open().await;
        assert_eq!(store.metadata().await.expect("load after reopen"), expected);
        // Metadata never shows up as a stream.
        assert!(store.recover().is_empty());
    }
}

macro_rules! storage_suite {
    ($backend:ident, $open:expr, $persistent:expr) => {
        storage_suite!(@cases $backend, async { Harness::new($open, $persistent) });
    };
    // A backend whose harness is made asynchronously (a database per test).
    (async $backend:ident, $harness:expr) => {
        storage_suite!(@cases $backend, $harness);
    };
    (@cases $backend:ident, $harness:expr) => {
        mod $backend {
            use super::*;

            async fn harness() -> Harness {
                $harness.await
            }

            #[tokio::test]
            async fn create_append_read() {
                super::create_append_read(harness().await).await;
            }
            #[tokio::test]
            async fn refuses_out_of_order_and_unknown() {
                super::refuses_out_of_order_and_unknown(harness().await).await;
            }
            #[tokio::test]
            async fn pipelined_appends_keep_order() {
                super::pipelined_appends_keep_order(harness().await).await;
            }
            #[tokio::test]
            async fn mixed_record_sizes_read_back_from_any_offset() {
                super::mixed_record_sizes_read_back_from_any_offset(harness().await).await;
            }
            #[tokio::test]
            async fn forks_start_at_their_base() {
                super::forks_start_at_their_base(harness().await).await;
            }
            #[tokio::test]
            async fn remove_forgets_the_stream() {
                super::remove_forgets_the_stream(harness().await).await;
            }
            #[tokio::test]
            async fn recovers_everything_it_acknowledged() {
                super::recovers_everything_it_acknowledged(harness().await).await;
            }
            #[tokio::test]
            async fn chunks_trim_from_the_head() {
                super::chunks_trim_from_the_head(harness().await).await;
            }
            #[tokio::test]
            async fn created_at_a_trimmed_head() {
                super::created_at_a_trimmed_head(harness().await).await;
            }
            #[tokio::test]
            async fn metadata_round_trips_and_persists() {
                super::metadata_round_trips_and_persists(harness().await).await;
            }
        }
    };
}

/// Chunks small enough for the suite to fill several.
pub const SUITE_CHUNK_BYTES: u64 = 4096;

fn memory() -> InMemoryStorage {
    InMemoryStorage::with_chunk_bytes(u64::MAX, SUITE_CHUNK_BYTES)
}

fn file(dir: &std::path::Path, durable: bool) -> FileStorage {
    FileStorage::open(
        dir,
        FileOptions {
            durable,
            chunk_bytes: SUITE_CHUNK_BYTES,
            ..FileOptions::default()
        },
    )
    .expect("open")
}

fn acid(dir: &std::path::Path) -> AcidStorage {
    AcidStorage::open_with(
        dir,
        AcidOptions {
            chunk_bytes: SUITE_CHUNK_BYTES,
            ..AcidOptions::default()
        },
    )
    .expect("open")
}

storage_suite!(memory, |_| Arc::new(memory()), false);
storage_suite!(file_durable, |dir| Arc::new(file(dir, true)), true);
storage_suite!(file_fast, |dir| Arc::new(file(dir, false)), true);
storage_suite!(acid, |dir| Arc::new(acid(dir)), true);
// The metrics wrapper must be invisible: the same suite through it.
storage_suite!(
    instrumented_memory,
    |_| Arc::new(InstrumentedStorage::new(Arc::new(memory()))),
    false
);
storage_suite!(
    instrumented_file_durable,
    |dir| Arc::new(InstrumentedStorage::new(Arc::new(file(dir, true)))),
    true
);
storage_suite!(
    instrumented_acid,
    |dir| Arc::new(InstrumentedStorage::new(Arc::new(acid(dir)))),
    true
);
// PostgreSQL: a fresh database per test, re-opened on the same database.
storage_suite!(
    async postgres,
    crate::storage::postgres::testdb::suite_harness()
);
storage_suite!(
    async instrumented_postgres,
    crate::storage::postgres::testdb::suite_harness_instrumented()
);
