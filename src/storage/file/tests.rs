//! The file store's own guarantees: space comes back when streams go, the
//! replay after a crash is bounded, a crash at any step of a checkpoint
//! loses and duplicates nothing, damaged chunk files are never served, and
//! a directory of the first layout is converted in place.

use std::path::Path;
use std::sync::PoisonError;

use bytes::Bytes;

use super::{FileOptions, FileStorage, layout};
use crate::storage::suite::{append, spec};
use crate::storage::{Mutation, Storage, StorageError};

pub(super) fn small() -> FileOptions {
    FileOptions {
        segment_bytes: 1 << 20,
        chunk_bytes: 64 << 10,
        max_replay_bytes: 2 << 20,
        commit_shards: 2,
        ..FileOptions::default()
    }
}

/// Bytes of every file under `dir`.
fn disk_usage(dir: &Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("list") {
            let entry = entry.expect("entry");
            let meta = entry.metadata().expect("metadata");
            if meta.is_dir() {
                stack.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    total
}

pub(super) fn payload(seed: u64, len: usize) -> Bytes {
    Bytes::from(
        (0..len)
            .map(|i| (seed as usize * 7 + i) as u8)
            .collect::<Vec<u8>>(),
    )
}

pub(super) async fn create(store: &FileStorage, id: u64, data: Bytes) {
    store
        .submit(Mutation::Create {
            spec: spec(id, 0),
            data,
            closed: false,
        })
        .await
        .expect("create");
}

pub(super) async fn read_all(store: &FileStorage, id: u64, tail: u64) -> Vec<u8> {
    read_range(store, id, 0, tail).await
}

pub(super) async fn read_range(store: &FileStorage, id: u64, mut from: u64, tail: u64) -> Vec<u8> {
    let mut out = Vec::new();
    while from < tail {
        let chunk = store.read(id, from, tail, 1 << 20).await.expect("read");
        assert!(chunk.end > from, "no progress");
        out.extend(chunk.records.concat());
        from = chunk.end;
    }
    out
}

/// The issue's scenario: one stream that stays, hundreds created, filled
/// and deleted beside it. Their space comes back, with the store running
/// and after a restart.
#[tokio::test]
async fn deleted_streams_give_their_space_back_whatever_else_lives() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = small();
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    create(&store, 1, Bytes::from_static(b"keep")).await;
    let mut filled = 0u64;
    for id in 2..302u64 {
        create(&store, id, Bytes::new()).await;
        let mut tail = 0;
        for k in 0..4 {
            let data = payload(id + k, 33 << 10);
            store
                .submit(append(id, tail, data.clone()))
                .await
                .expect("append");
            tail += data.len() as u64;
        }
        filled += tail;
        store.submit(Mutation::Remove { id }).await.expect("remove");
    }
    assert!(filled > 35 << 20, "{filled} bytes went through");
    store.checkpoint().expect("checkpoint");
    let live = disk_usage(dir.path());
    // The stream that stays, a log segment per shard, the checkpoint.
    let bound = 2 * (options.segment_bytes + (64 << 10));
    assert!(
        live < bound,
        "{live} bytes on disk after the deletes (bound {bound})"
    );
    drop(store);
    let store = FileStorage::open(dir.path(), options.clone()).expect("reopen");
    assert_eq!(read_all(&store, 1, 4).await, b"keep");
    assert_eq!(store.recover().len(), 1);
    let after = disk_usage(dir.path());
    assert!(after < bound, "{after} bytes on disk after a restart");
    let fan_out: usize = std::fs::read_dir(dir.path().join(layout::STREAMS_DIR))
        .expect("streams")
        .count();
    assert_eq!(fan_out, 1, "empty fan-out directories are removed");
}

/// After a crash the log to replay stays near `max_replay_bytes`, however
/// much was written, and the replay restores everything.
#[tokio::test]
async fn the_replay_after_a_crash_is_bounded() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = small();
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    create(&store, 1, Bytes::new()).await;
    let mut expected = Vec::new();
    for i in 0..500u64 {
        let data = payload(i, 40 << 10);
        store
            .submit(append(1, expected.len() as u64, data.clone()))
            .await
            .expect("append");
        expected.extend_from_slice(&data);
    }
    let logged = wal_bytes(dir.path());
    store.abandon();
    assert!(expected.len() as u64 > 8 * options.max_replay_bytes);
    assert!(
        logged <= options.max_replay_bytes + options.segment_bytes,
        "{logged} bytes of log to replay"
    );
    let store = FileStorage::open(dir.path(), options).expect("reopen");
    assert_eq!(store.recover()[0].tail, expected.len() as u64);
    assert_eq!(read_all(&store, 1, expected.len() as u64).await, expected);
}

/// Bytes of log a replay goes through: each segment up to its last
/// written byte (the rest of a preallocated segment is zeros).
fn wal_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir.join(layout::WAL_DIR))
        .expect("list the log")
        .map(|entry| {
            // A segment the checkpoint deleted meanwhile holds nothing.
            let data = std::fs::read(entry.expect("entry").path()).unwrap_or_default();
            data.iter()
                .rposition(|&b| b != 0)
                .map_or(0, |last| last + 1) as u64
        })
        .sum()
}

/// Where a crash can leave a checkpoint, and what must hold after each.
#[derive(Clone, Copy, Debug)]
enum CrashPoint {
    /// A checkpoint being written: `checkpoint.tmp` half there.
    WhileWriting,
    /// Written, but the log before it not yet deleted.
    BeforeLogDeleted,
    /// Power loss: chunk files lost what was written since the checkpoint.
    ChunksBehindTheLog,
    /// Chunk files hold bytes past what the log kept (a torn log tail).
    ChunksAheadOfTheLog,
}

#[tokio::test]
async fn a_crash_at_any_step_of_a_checkpoint_loses_and_duplicates_nothing() {
    for point in [
        CrashPoint::WhileWriting,
        CrashPoint::BeforeLogDeleted,
        CrashPoint::ChunksBehindTheLog,
        CrashPoint::ChunksAheadOfTheLog,
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        // Only the checkpoint this test takes: one started by a full
        // segment could delete the log before it is copied.
        let options = FileOptions {
            commit_shards: 1,
            segment_bytes: 4096,
            checkpoint_on_full_segment: false,
            ..small()
        };
        let store = FileStorage::open(dir.path(), options.clone()).expect("open");
        create(&store, 1, payload(0, 1000)).await;
        let mut expected = payload(0, 1000).to_vec();
        for i in 1..10u64 {
            let data = payload(i, 1000);
            store
                .submit(append(1, expected.len() as u64, data.clone()))
                .await
                .expect("append");
            expected.extend_from_slice(&data);
        }
        let old_log: Vec<(std::path::PathBuf, Vec<u8>)> =
            std::fs::read_dir(dir.path().join(layout::WAL_DIR))
                .expect("log dir")
                .map(|e| {
                    let path = e.expect("entry").path();
                    let bytes = std::fs::read(&path).expect("read");
                    (path, bytes)
                })
                .collect();
        assert!(old_log.len() > 2, "the log rolled over");
        store.checkpoint().expect("checkpoint");
        let chunk = layout::chunk_path(dir.path(), 1, 0);
        let checkpointed_len = std::fs::metadata(&chunk).expect("chunk").len();
        for i in 10..20u64 {
            let data = payload(i, 1000);
            store
                .submit(append(1, expected.len() as u64, data.clone()))
                .await
                .expect("append");
            expected.extend_from_slice(&data);
        }
        store.abandon();
        match point {
            CrashPoint::WhileWriting => {
                std::fs::write(dir.path().join(layout::CHECKPOINT_TEMP), b"DSCKPT01 half")
                    .expect("temp");
            }
            CrashPoint::BeforeLogDeleted => {
                let mut restored = 0;
                for (path, bytes) in old_log.iter().filter(|(path, _)| !path.exists()) {
                    std::fs::write(path, bytes).expect("restore old log");
                    restored += 1;
                }
                assert!(restored > 0, "the checkpoint deleted log segments");
            }
            CrashPoint::ChunksBehindTheLog => {
                // What the last checkpoint synced survives, nothing after.
                let synced = super::checkpoint::read(dir.path())
                    .expect("checkpoint")
                    .and_then(|c| c.streams.first().and_then(|s| s.active))
                    .map_or(checkpointed_len, |active| active.len);
                let file = std::fs::OpenOptions::new()
                    .write(true)
                    .open(&chunk)
                    .expect("chunk");
                file.set_len(synced).expect("cut");
            }
            CrashPoint::ChunksAheadOfTheLog => {
                let mut bytes = std::fs::read(&chunk).expect("chunk");
                bytes.extend_from_slice(&[0xAB; 3000]);
                std::fs::write(&chunk, bytes).expect("garbage");
            }
        }
        let store = FileStorage::open(dir.path(), options.clone()).expect("reopen");
        let tail = expected.len() as u64;
        assert_eq!(store.recover()[0].tail, tail, "{point:?}");
        assert_eq!(read_all(&store, 1, tail).await, expected, "{point:?}");
        store
            .submit(append(1, tail, Bytes::from_static(b"more")))
            .await
            .expect("append after recovery");
        drop(store);
        let store = FileStorage::open(dir.path(), options).expect("reopen again");
        expected.extend_from_slice(b"more");
        assert_eq!(read_all(&store, 1, tail + 4).await, expected, "{point:?}");
        assert!(
            !dir.path().join(layout::CHECKPOINT_TEMP).exists()
                || matches!(point, CrashPoint::WhileWriting)
        );
    }
}

/// A flipped byte in a chunk file is reported with the file, never served.
#[tokio::test]
async fn a_damaged_chunk_file_is_never_served() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        tail_cache_bytes: 0,
        ..small()
    };
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    create(&store, 1, payload(1, 5000)).await;
    drop(store);
    let chunk = layout::chunk_path(dir.path(), 1, 0);
    let mut bytes = std::fs::read(&chunk).expect("chunk");
    bytes[2000] ^= 0x10;
    std::fs::write(&chunk, bytes).expect("damage");
    let store = FileStorage::open(dir.path(), options).expect("open without reading data");
    match store.read(1, 0, 5000, usize::MAX).await {
        Err(StorageError::Corrupt(message)) => {
            assert!(message.contains(&chunk.display().to_string()), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// Reads at any position of a stream spanning many chunks, with and
/// without the sparse index, match what was written.
#[tokio::test]
async fn reads_from_any_position_across_chunks() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        tail_cache_bytes: 0,
        chunk_bytes: 300 << 10,
        ..small()
    };
    let store = FileStorage::open(dir.path(), options).expect("open");
    create(&store, 1, Bytes::new()).await;
    let mut expected = Vec::new();
    let mut rng = fastrand::Rng::with_seed(3);
    for i in 0..300u64 {
        let len = if i % 17 == 0 {
            70_000
        } else {
            rng.usize(1..3000)
        };
        let data = payload(i, len);
        store
            .submit(append(1, expected.len() as u64, data.clone()))
            .await
            .expect("append");
        expected.extend_from_slice(&data);
    }
    let tail = expected.len() as u64;
    assert!(store.chunks(1).await.expect("chunks").len() > 3);
    for _ in 0..200 {
        let from = rng.u64(..tail);
        let max = rng.usize(1..200_000);
        let chunk = store.read(1, from, tail, max).await.expect("read");
        let got = chunk.records.concat();
        assert_eq!(
            got,
            expected[from as usize..chunk.end as usize],
            "from {from}"
        );
        assert!(chunk.end > from);
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for entry in std::fs::read_dir(from).expect("list") {
        let entry = entry.expect("entry");
        let target = to.join(entry.file_name());
        if entry.metadata().expect("meta").is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).expect("copy");
        }
    }
}

/// A data directory written by the first layout (`tests/fixtures/file-v1`)
/// is converted in place: same streams, data, state and metadata; the old
/// segments gone; an interrupted conversion starts over.
#[tokio::test]
async fn the_first_layout_is_converted_in_place() {
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/file-v1");
    for interrupted in [false, true] {
        let dir = tempfile::tempdir().expect("temp dir");
        copy_dir(&fixture, dir.path());
        if interrupted {
            // What a conversion killed half-way leaves: chunk files and a
            // log, no checkpoint.
            let stray = layout::stream_dir(dir.path(), 1);
            std::fs::create_dir_all(&stray).expect("mkdir");
            std::fs::write(stray.join("00000000000000000000.dat"), b"half").expect("stray");
            std::fs::create_dir_all(dir.path().join(layout::WAL_DIR)).expect("wal");
        }
        let store = FileStorage::open(dir.path(), FileOptions::default()).expect("convert");
        let mut streams = store.recover();
        streams.sort_by_key(|s| s.spec.id);
        let ids: Vec<u64> = streams.iter().map(|s| s.spec.id).collect();
        assert_eq!(ids, [1, 2, 4]);
        assert_eq!(streams[0].tail, 2286);
        assert!(streams[0].soft_deleted);
        let data = read_all(&store, 1, 2286).await;
        assert!(data.starts_with(b"first|rec-000-|rec-001-xxxxxxxxxx|"));
        assert!(data.ends_with(b"rec-059-xxx|") || data.len() == 2286);
        assert_eq!(streams[1].spec.content_type, "application/json");
        assert_eq!(streams[1].spec.ttl_secs, Some(3600));
        assert_eq!(streams[1].stream_seq.as_deref(), Some("0007"));
        assert_eq!(streams[1].producers.len(), 1);
        assert!(matches!(&streams[1].closed, Some(Some(by)) if by.producer_id == "p1"));
        assert_eq!(
            read_all(&store, 2, streams[1].tail).await,
            br#"{"a":1},{"b":2},{"c":3},"#
        );
        assert_eq!(streams[2].spec.base, 6);
        assert_eq!(
            store
                .read(4, 6, streams[2].tail, usize::MAX)
                .await
                .expect("fork")
                .records
                .concat(),
            b"forked|"
        );
        let metadata = store.metadata().await.expect("metadata");
        assert_eq!(
            metadata,
            vec![(
                "sub/legacy".to_owned(),
                Bytes::from_static(br#"{"kept":true}"#)
            )]
        );
        let leftovers: Vec<String> = std::fs::read_dir(dir.path())
            .expect("list")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|name| name.ends_with(".seg"))
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
        drop(store);
        let store = FileStorage::open(dir.path(), FileOptions::default()).expect("reopen");
        assert_eq!(store.recover().len(), 3);
        assert_eq!(read_all(&store, 1, 2286).await, data);
    }
}

/// A live export reads a store beside the running server.
#[tokio::test]
async fn a_read_only_open_sees_what_the_server_committed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(dir.path(), small()).expect("open");
    create(&store, 1, payload(1, 3000)).await;
    store
        .submit(append(1, 3000, payload(2, 500)))
        .await
        .expect("append");
    let reader = FileStorage::open_read_only(dir.path()).expect("read-only");
    let streams = reader.recover();
    assert_eq!(streams[0].tail, 3500);
    let mut expected = payload(1, 3000).to_vec();
    expected.extend_from_slice(&payload(2, 500));
    assert_eq!(read_all(&reader, 1, 3500).await, expected);
    assert!(reader.submit(append(1, 3500, payload(3, 1))).await.is_err());
    drop(reader);
    store
        .submit(append(1, 3500, payload(3, 1)))
        .await
        .expect("the server still writes");
}

/// A full log segment is checkpointed away: the log holds about one
/// segment per shard, however much goes through it.
#[tokio::test]
async fn a_full_log_segment_is_checkpointed_away() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        segment_bytes: 1 << 20,
        commit_shards: 1,
        ..FileOptions::default()
    };
    let store = FileStorage::open(dir.path(), options).expect("open");
    create(&store, 1, Bytes::new()).await;
    let mut tail = 0;
    for i in 0..40u64 {
        let data = payload(i, 133_000);
        store
            .submit(append(1, tail, data.clone()))
            .await
            .expect("append");
        tail += data.len() as u64;
    }
    let mut segments = usize::MAX;
    // The checkpoint runs on its own thread: on a loaded machine it can
    // take seconds to come round, so wait up to 20 s for it.
    for _ in 0..2000 {
        segments = std::fs::read_dir(dir.path().join(layout::WAL_DIR))
            .expect("log dir")
            .count();
        if segments <= 2 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert!(
        segments <= 2,
        "{segments} log segments after 5 MB went through"
    );
}

/// A checkpoint asked for while another one runs is taken right after
/// it, not at the next interval: the segment that filled meanwhile must
/// not wait a minute to be deleted.
#[tokio::test]
async fn a_checkpoint_wanted_during_a_checkpoint_follows_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(dir.path(), FileOptions::default()).expect("open");
    let shared = store.inner.shared.clone();
    let wanted = || {
        shared
            .signal
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .wanted
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let wait_until_taken = |what: &str| {
        while wanted() {
            assert!(
                std::time::Instant::now() < deadline,
                "{what} was never taken"
            );
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    };
    let running = shared.checkpointing.lock().expect("checkpoint lock");
    // The first request takes the checkpoint thread into a checkpoint,
    // which waits for the lock held here; the second comes while it runs.
    shared.want_checkpoint();
    wait_until_taken("the first checkpoint");
    shared.want_checkpoint();
    drop(running);
    wait_until_taken("the checkpoint wanted while one ran");
}

/// Retention drops the chunk that was being written at the last
/// checkpoint (its file deleted), then the process dies. The replay, which
/// starts at that checkpoint, meets appends into the deleted file before
/// the trim that deleted it: it opens, with the head where the trim put it,
/// every retained byte readable, and the head stays as the stream grows.
#[tokio::test]
async fn a_chunk_trimmed_after_the_checkpoint_does_not_stop_the_replay() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        commit_shards: 1,
        chunk_bytes: 4096,
        checkpoint_on_full_segment: false,
        ..small()
    };
    let mut expected = Vec::new();
    async fn add(store: &FileStorage, expected: &mut Vec<u8>, i: u64) {
        let data = payload(i, 1000);
        let start = expected.len() as u64;
        expected.extend_from_slice(&data);
        store.submit(append(1, start, data)).await.expect("append");
    }
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    create(&store, 1, Bytes::new()).await;
    for i in 0..10 {
        add(&store, &mut expected, i).await;
    }
    store.checkpoint().expect("checkpoint");
    let written_at_checkpoint = store.chunks(1).await.expect("chunks")[2].start;
    for i in 10..20 {
        add(&store, &mut expected, i).await;
    }
    // Four chunks of four records, the fifth being written: keep that one.
    let chunks = store.chunks(1).await.expect("chunks");
    let head = chunks[chunks.len() - 1].start;
    assert!(head > written_at_checkpoint, "{chunks:?}");
    store
        .submit(Mutation::Trim {
            id: 1,
            before: head,
        })
        .await
        .expect("trim");
    assert!(!layout::chunk_path(dir.path(), 1, written_at_checkpoint).exists());
    for i in 20..23 {
        add(&store, &mut expected, i).await;
    }
    store.abandon();

    let store = FileStorage::open(dir.path(), options.clone()).expect("reopen");
    let recovered = store.recover();
    let tail = expected.len() as u64;
    assert_eq!((recovered[0].head, recovered[0].tail), (head, tail));
    for i in 23..30 {
        add(&store, &mut expected, i).await;
    }
    let tail = expected.len() as u64;
    assert_eq!(store.chunks(1).await.expect("chunks")[0].start, head);
    assert_eq!(
        read_range(&store, 1, head, tail).await,
        expected[head as usize..]
    );
}

/// Every stream keeps its `Stream` in memory, so its size is much of what
/// an idle stream costs: with the `Arc`'s two counts it fills a 256-byte
/// allocation (352 before its rarely set writer state was boxed).
#[cfg(target_pointer_width = "64")]
#[test]
fn a_stream_with_its_counts_fits_256_bytes() {
    let size = std::mem::size_of::<super::state::Stream>();
    assert!(size + 16 <= 256 - 8, "{size} bytes");
}
