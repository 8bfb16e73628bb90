use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableTable};

use super::block::Block;
use super::tables::{BLOCKS, RECORDS, framed};
use super::{AcidOptions, AcidStorage, DATABASE_FILE, database_file};
use crate::storage::{Append, Mutation, Storage, StorageError, StreamSpec};

const RECORDS_WRITTEN: usize = 300;

/// Chunk size of the tests' stores: 20 records of 200 bytes, so stream 1
/// is stored in blocks of 20 records (a block never spans two chunks).
const TEST_CHUNK_BYTES: u64 = 4000;

/// One database, so that every record is in `streams.redb`.
pub(super) fn open_one(dir: &Path) -> Result<AcidStorage, StorageError> {
    AcidStorage::open_with(
        dir,
        AcidOptions {
            shards: 1,
            chunk_bytes: TEST_CHUNK_BYTES,
            ..AcidOptions::default()
        },
    )
}

fn spec(id: u64) -> StreamSpec {
    StreamSpec {
        id,
        path: format!("/v1/stream/a{id}"),
        content_type: "application/octet-stream".into(),
        ttl_secs: None,
        expires_at_ms: None,
        created_at_ms: 0,
        fork: None,
        base: 0,
    }
}

/// A recognisable payload of 200 bytes for record `i`.
fn payload(i: usize) -> Vec<u8> {
    let mut out = format!("acid-record-{i:04}:").into_bytes();
    out.resize(200, b'a' + (i % 26) as u8);
    out
}

/// Creates stream 1, empty.
async fn create_stream_1(store: &AcidStorage) {
    store
        .submit(Mutation::Create {
            spec: spec(1),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
}

/// Stream 1 with `RECORDS_WRITTEN` records, submitted together so that
/// they reach redb in one move and the file's layout does not depend on
/// timing; the store is closed when this returns.
async fn write_store(dir: &Path) -> Vec<u8> {
    let store = open_one(dir).expect("open");
    create_stream_1(&store).await;
    let mut all = Vec::new();
    let mut appends = Vec::with_capacity(RECORDS_WRITTEN);
    for i in 0..RECORDS_WRITTEN {
        let data = payload(i);
        appends.push(store.submit(Mutation::Append(Append {
            id: 1,
            start: all.len() as u64,
            data: Bytes::from(data.clone()),
            producer: None,
            stream_seq: None,
            close: None,
        })));
        all.extend_from_slice(&data);
    }
    for outcome in futures_util::future::join_all(appends).await {
        outcome.expect("append");
    }
    all
}

/// Opens the store; if that works, everything it serves must be a
/// prefix of what was written (an older commit at worst), never altered.
async fn open_and_check(dir: &Path, written: &[u8]) -> Result<(), StorageError> {
    let store = open_one(dir)?;
    for stream in store.recover() {
        assert_eq!(stream.spec.id, 1, "an unknown stream appeared");
        assert!(stream.tail <= written.len() as u64);
        let mut data = Vec::new();
        let mut from = 0;
        while from < stream.tail {
            let chunk = store.read(1, from, stream.tail, 1 << 20).await?;
            assert!(chunk.end > from, "a read made no progress");
            data.extend(chunk.records.concat());
            from = chunk.end;
        }
        assert_eq!(data, written[..data.len()], "served data differs");
    }
    Ok(())
}

fn occurrences(haystack: &[u8], needle: &[u8]) -> Vec<usize> {
    haystack
        .windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(at, _)| at)
        .collect()
}

/// Reads all of stream 1 from a freshly opened store: the open itself
/// must succeed (it reads metadata only), the read must fail as `Corrupt`
/// naming the database file; returns that message.
async fn read_fails_as_corrupt(dir: &Path) -> String {
    let store = open_one(dir).expect("the open reads metadata only");
    let tail = store.recover()[0].tail;
    let mut from = 0;
    loop {
        match store.read(1, from, tail, 1 << 20).await {
            Ok(chunk) if chunk.end > from => from = chunk.end,
            Ok(_) => panic!("a read stopped at {from} without an error"),
            Err(StorageError::Corrupt(message)) => {
                let path = dir.join(DATABASE_FILE);
                assert!(message.contains(&path.display().to_string()), "{message}");
                return message;
            }
            Err(other) => panic!("expected Corrupt, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn a_flipped_byte_in_a_record_fails_the_read_that_meets_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    write_store(dir.path()).await;
    let path = dir.path().join(DATABASE_FILE);
    let mut bytes = std::fs::read(&path).expect("read");
    // An early record: its page is shared by every later commit, so no
    // older commit can stand in for it.
    let found = occurrences(&bytes, &payload(5));
    assert!(!found.is_empty(), "record 5 is in the file");
    for at in found {
        bytes[at + 100] ^= 0x5a;
    }
    std::fs::write(&path, bytes).expect("write");
    let message = read_fails_as_corrupt(dir.path()).await;
    assert!(
        message.contains(&format!("ending at position {TEST_CHUNK_BYTES}")),
        "{message}"
    );
}

#[tokio::test]
async fn flipped_bytes_anywhere_never_panic_or_serve_altered_data() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_store(dir.path()).await;
    let path = dir.path().join(DATABASE_FILE);
    let pristine = std::fs::read(&path).expect("read");
    let mut rng = fastrand::Rng::with_seed(11);
    let mut refused = 0;
    for round in 0..64 {
        let mut bytes = pristine.clone();
        let at = rng.usize(..bytes.len());
        bytes[at] ^= 1 << rng.u8(..8);
        std::fs::write(&path, &bytes).expect("write");
        let outcome = open_and_check(dir.path(), &written).await;
        if outcome.is_err() {
            refused += 1;
        }
        eprintln!("round {round}: byte {at} of {}: {outcome:?}", bytes.len());
    }
    assert!(refused > 0, "no flipped byte was ever noticed");
}

/// Changes stream 1's blocks through redb itself, so its page checksums
/// hold and only the blocks' own checks can tell.
fn alter_blocks(dir: &Path, change: impl FnOnce(&mut redb::Table<(u64, u64), &[u8]>)) {
    let db = Database::create(dir.join(DATABASE_FILE)).expect("open with redb");
    let txn = db.begin_write().expect("write txn");
    {
        let mut blocks = txn.open_table(BLOCKS).expect("blocks");
        change(&mut blocks);
    }
    txn.commit().expect("commit");
}

#[tokio::test]
async fn a_block_failing_its_checksum_fails_the_read_that_meets_it() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = write_store(dir.path()).await;
    let end = 2 * TEST_CHUNK_BYTES;
    alter_blocks(dir.path(), |blocks| {
        let mut value = blocks
            .get((1, end))
            .expect("get")
            .expect("the second block")
            .value()
            .to_vec();
        value[4 + 50] ^= 0x5a;
        blocks.insert((1, end), value.as_slice()).expect("insert");
    });
    let message = read_fails_as_corrupt(dir.path()).await;
    assert!(
        message.contains(&format!("stream 1 ending at position {end}")),
        "{message}"
    );
    // What lies before the damaged block is still served.
    let store = open_one(dir.path()).expect("open");
    let before = TEST_CHUNK_BYTES as usize;
    let chunk = store
        .read(1, 0, before as u64, usize::MAX)
        .await
        .expect("read");
    assert_eq!(chunk.records.concat(), written[..before]);
}

/// For the second block and the last one: `damage` applied to it (by its
/// key) must make the read fail at the hole it leaves.
async fn assert_hole_fails_the_read(damage: impl Fn(&mut redb::Table<(u64, u64), &[u8]>, u64)) {
    let last = RECORDS_WRITTEN as u64 * 200;
    for (end, at) in [
        (2 * TEST_CHUNK_BYTES, TEST_CHUNK_BYTES),
        (last, last - TEST_CHUNK_BYTES),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        write_store(dir.path()).await;
        alter_blocks(dir.path(), |blocks| damage(blocks, end));
        let message = read_fails_as_corrupt(dir.path()).await;
        assert!(
            message.contains(&format!("stream 1 has no record at position {at}")),
            "{message}"
        );
    }
}

#[tokio::test]
async fn a_missing_block_fails_the_read_that_meets_it() {
    assert_hole_fails_the_read(|blocks, end| {
        blocks.remove((1, end)).expect("remove").expect("block");
    })
    .await;
}

/// A damaged key (its end position is not under the block's checksum)
/// moves a block out of place: the read that meets the hole fails.
#[tokio::test]
async fn a_block_under_a_damaged_key_fails_the_read_that_meets_it() {
    assert_hole_fails_the_read(|blocks, end| {
        let value = blocks
            .remove((1, end))
            .expect("remove")
            .expect("block")
            .value()
            .to_vec();
        blocks
            .insert((1, end + (1 << 20)), value.as_slice())
            .expect("insert");
    })
    .await;
}

/// Rewrites the database in the layout of earlier versions: each record
/// its own value in `records` (CRC32C then payload), no `record_blocks`
/// table.
fn to_earlier_layout(dir: &Path) {
    let path = dir.join(DATABASE_FILE);
    let db = Database::create(&path).expect("open with redb");
    let txn = db.begin_write().expect("write txn");
    {
        let blocks = txn.open_table(BLOCKS).expect("blocks");
        let mut records = txn.open_table(RECORDS).expect("records");
        for entry in blocks.iter().expect("iter") {
            let (key, value) = entry.expect("entry");
            let (id, end) = key.value();
            let block = Block::decode(value.value(), id, end, &path).expect("a block");
            for (start, range) in block.records() {
                let data = &block.payloads()[range];
                let value = framed(data);
                records
                    .insert((id, start + data.len() as u64), value.as_slice())
                    .expect("insert");
            }
        }
    }
    txn.delete_table(BLOCKS).expect("drop the blocks");
    txn.commit().expect("commit");
}

fn nth_append(i: usize, start: u64) -> Mutation {
    Mutation::Append(Append {
        id: 1,
        start,
        data: Bytes::from(payload(i)),
        producer: None,
        stream_seq: None,
        close: None,
    })
}

/// A database written with one value per record (the layout of earlier
/// versions) opens read-only and writable, serves its records, keeps them
/// in front of the blocks written after them, and trims and deletes
/// across both.
#[tokio::test]
async fn a_database_of_records_one_per_value_keeps_working() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut written = write_store(dir.path()).await;
    to_earlier_layout(dir.path());

    let reader = AcidStorage::open_read_only(dir.path()).expect("read-only");
    assert_eq!(read_all(&reader).await, written);
    drop(reader);

    let store = open_one(dir.path()).expect("open");
    assert_eq!(read_all(&store).await, written);
    for i in RECORDS_WRITTEN..RECORDS_WRITTEN + 50 {
        let start = written.len() as u64;
        store.submit(nth_append(i, start)).await.expect("append");
        written.extend_from_slice(&payload(i));
    }
    drop(store);
    let store = open_one(dir.path()).expect("reopen");
    assert_eq!(read_all(&store).await, written);
    // Across the last record and the first block, and inside each.
    let old_end = RECORDS_WRITTEN as u64 * 200;
    for (from, until) in [
        (old_end - 150, old_end + 250),
        (4100, 4300),
        (61_010, 61_020),
    ] {
        let chunk = store.read(1, from, until, usize::MAX).await.expect("read");
        assert_eq!(
            chunk.records.concat(),
            written[from as usize..until as usize],
            "{from}..{until}"
        );
    }
    // A trim into the new chunk drops every old record and a block.
    store
        .submit(Mutation::Trim {
            id: 1,
            before: old_end + TEST_CHUNK_BYTES + 10,
        })
        .await
        .expect("trim");
    let head = old_end + TEST_CHUNK_BYTES;
    match store.read(1, 0, 10, usize::MAX).await {
        Err(StorageError::Trimmed { head: seen, .. }) => assert_eq!(seen, head),
        other => panic!("a read below the head answered {other:?}"),
    }
    let kept = store
        .read(1, head, u64::MAX, usize::MAX)
        .await
        .expect("read");
    assert_eq!(kept.records.concat(), written[head as usize..]);
    drop(store);
    let db = Database::create(dir.path().join(DATABASE_FILE)).expect("open with redb");
    let txn = redb::ReadableDatabase::begin_read(&db).expect("read txn");
    let records = txn.open_table(RECORDS).expect("records");
    assert_eq!(records.iter().expect("iter").count(), 0, "old records left");
    drop((records, txn, db));

    let store = open_one(dir.path()).expect("reopen");
    store
        .submit(Mutation::Remove { id: 1 })
        .await
        .expect("remove");
    create_stream_1(&store).await;
    store.submit(nth_append(0, 0)).await.expect("append");
    assert_eq!(read_all(&store).await, payload(0));
}

#[tokio::test]
async fn streams_stay_in_their_database_when_the_count_changes() {
    let dir = tempfile::tempdir().expect("temp dir");
    let open = |shards| {
        AcidStorage::open_with(
            dir.path(),
            AcidOptions {
                shards,
                ..AcidOptions::default()
            },
        )
        .expect("open")
    };
    {
        let store = open(3);
        for id in 1..=12 {
            store
                .submit(Mutation::Create {
                    spec: spec(id),
                    data: Bytes::from(payload(id as usize)),
                    closed: false,
                })
                .await
                .expect("create");
        }
        let mut fork = spec(13);
        fork.fork = Some(crate::storage::ForkLink {
            source: 5,
            source_path: spec(5).path,
            offset: 200,
            sub_offset: 0,
        });
        fork.base = 200;
        store
            .submit(Mutation::Create {
                spec: fork,
                data: Bytes::from_static(b"own"),
                closed: false,
            })
            .await
            .expect("fork");
        let used = (0..3)
            .filter(|&i| dir.path().join(database_file(i)).exists())
            .count();
        assert_eq!(used, 3);
    }
    for shards in [1, 5] {
        let store = open(shards);
        let mut streams = store.recover();
        streams.sort_by_key(|s| s.spec.id);
        let ours = streams.iter().filter(|s| s.spec.id <= 13).count();
        assert_eq!(ours, 13, "{shards} databases asked");
        for id in 1..=12u64 {
            let chunk = store.read(id, 0, 200, usize::MAX).await.expect("read");
            assert_eq!(chunk.records.concat(), payload(id as usize));
            store
                .submit(Mutation::Append(Append {
                    id,
                    start: 200,
                    data: Bytes::from_static(b"+"),
                    producer: None,
                    stream_seq: None,
                    close: None,
                }))
                .await
                .expect("append");
        }
        let id = 100 + shards as u64;
        store
            .submit(Mutation::Create {
                spec: spec(id),
                data: Bytes::from_static(b"new"),
                closed: false,
            })
            .await
            .expect("create");
        drop(store);
        let store = open(shards);
        assert!(store.recover().iter().any(|s| s.spec.id == id));
        for id in 1..=12u64 {
            let appended = store.read(id, 200, 201, 10).await.expect("read");
            assert_eq!(appended.records.concat(), b"+");
            store
                .submit(Mutation::Trim { id, before: 0 })
                .await
                .expect("trim nothing");
        }
        // Undo the appends for the next round.
        drop(store);
        let store = open(shards);
        for id in 1..=12u64 {
            store.submit(Mutation::Remove { id }).await.expect("remove");
            store
                .submit(Mutation::Create {
                    spec: spec(id),
                    data: Bytes::from(payload(id as usize)),
                    closed: false,
                })
                .await
                .expect("re-create");
        }
    }
}

/// An append to stream 1 at `start`.
pub(super) fn logged(start: u64, data: &'static [u8]) -> Append {
    Append {
        id: 1,
        start,
        data: Bytes::from_static(data),
        producer: None,
        stream_seq: None,
        close: None,
    }
}

pub(super) async fn read_all(store: &AcidStorage) -> Vec<u8> {
    let chunk = store.read(1, 0, u64::MAX, usize::MAX).await.expect("read");
    chunk.records.concat()
}

/// Creates stream 1 holding `abc` in a store at `dir`, then closes it.
pub(super) async fn create_abc(dir: &Path) {
    let store = open_one(dir).expect("open");
    store
        .submit(Mutation::Create {
            spec: spec(1),
            data: Bytes::from_static(b"abc"),
            closed: false,
        })
        .await
        .expect("create");
}

/// Appends acknowledged from the log before a crash: a read-only open
/// serves them, the next open moves them into redb (skipping one already
/// there) and the one after finds them applied, and a gap in the log stops
/// the open.
#[tokio::test]
async fn logged_appends_are_served_replayed_and_checked() {
    let dir = tempfile::tempdir().expect("tempdir");
    create_abc(dir.path()).await;
    let log = super::log::log_path(&dir.path().join(DATABASE_FILE));
    let write_log = |appends: &[Append]| {
        let (mut ack_log, _) = super::log::AckLog::open(log.clone()).expect("open the log");
        ack_log.write(appends.iter()).expect("write the log");
    };
    write_log(&[logged(0, b"abc"), logged(3, b"def"), logged(6, b"gh")]);

    let reader = AcidStorage::open_read_only(dir.path()).expect("read-only");
    assert_eq!(reader.recover()[0].tail, 8);
    assert_eq!(read_all(&reader).await, b"abcdefgh");
    assert_eq!(
        reader
            .read(1, 4, 7, usize::MAX)
            .await
            .expect("read")
            .records
            .concat(),
        b"efg"
    );
    drop(reader);

    for _ in 0..2 {
        let store = open_one(dir.path()).expect("open");
        assert_eq!(store.recover()[0].tail, 8);
        assert_eq!(read_all(&store).await, b"abcdefgh");
    }

    write_log(&[logged(20, b"x")]);
    match open_one(dir.path()) {
        Err(StorageError::Corrupt(detail)) => assert!(detail.contains("log"), "{detail}"),
        other => panic!("a gap in the log must stop the open: {other:?}"),
    }
}

/// A read that passed the trimmed-head check just before a trim committed
/// (the writer records the new head only after its transaction) meets the
/// trimmed records' absence in redb: it answers `Trimmed` like the check,
/// never the retained data as if it started where the read asked.
#[tokio::test]
async fn a_read_racing_a_trim_answers_trimmed_not_a_hole() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = AcidStorage::open_with(
        dir.path(),
        AcidOptions {
            shards: 1,
            chunk_bytes: 4096,
            ..AcidOptions::default()
        },
    )
    .expect("open");
    create_stream_1(&store).await;
    let mut tail = 0;
    for i in 0..100 {
        let data = Bytes::from(payload(i));
        let len = data.len() as u64;
        store
            .submit(Mutation::Append(Append {
                id: 1,
                start: tail,
                data,
                producer: None,
                stream_seq: None,
                close: None,
            }))
            .await
            .expect("append");
        tail += len;
    }
    store
        .submit(Mutation::Trim {
            id: 1,
            before: 10_000,
        })
        .await
        .expect("trim");
    let head = match store.read(1, 0, tail, 1 << 20).await {
        Err(StorageError::Trimmed { head, .. }) => head,
        other => panic!("a read below the trimmed head answered {other:?}"),
    };
    assert!(head > 0 && head <= 10_000, "head {head}");
    // What a reader sees in the moment between the trim's commit and the
    // writer recording its head.
    store.shards[0]
        .shared
        .trimmed
        .write()
        .expect("trimmed heads")
        .clear();
    match store.read(1, 0, tail, 1 << 20).await {
        Err(StorageError::Trimmed { head: seen, .. }) => assert_eq!(seen, head),
        other => panic!("a read racing the trim answered {other:?}"),
    }
    let kept = store
        .read(1, head, tail, 1 << 20)
        .await
        .expect("read at the head");
    assert_eq!(kept.end, tail);
}

/// Opened on a multi-threaded runtime, the store answers synced appends
/// from a task there; once that runtime is gone, appends submitted from
/// another one are still answered (not refused as if the writer stopped),
/// and everything acknowledged reads back in order.
#[test]
fn appends_are_answered_after_the_opening_runtime_is_gone() {
    let dir = tempfile::tempdir().expect("tempdir");
    let opening = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let half = RECORDS_WRITTEN / 2;
    let (store, mut tail) = opening.block_on(async {
        let store = open_one(dir.path()).expect("open");
        create_stream_1(&store).await;
        let mut tail = 0;
        let mut acks = Vec::new();
        for i in 0..half {
            acks.push(store.submit(nth_append(i, tail)));
            tail += payload(i).len() as u64;
        }
        for ack in futures_util::future::join_all(acks).await {
            ack.expect("append answered on the opening runtime");
        }
        (store, tail)
    });
    drop(opening);
    let other = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    other.block_on(async {
        for i in half..RECORDS_WRITTEN {
            store
                .submit(nth_append(i, tail))
                .await
                .expect("append answered after the opening runtime is gone");
            tail += payload(i).len() as u64;
        }
        let expected: Vec<u8> = (0..RECORDS_WRITTEN).flat_map(payload).collect();
        assert_eq!(read_all(&store).await, expected);
    });
}
