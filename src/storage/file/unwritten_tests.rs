//! Records committed to the log but not yet in their chunk files: readers
//! find them, checkpoints write them first, a crash loses none of them, and
//! the memory they take stays within `chunk_buffer_bytes`.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::tests::{create, payload, read_all, read_range, small};
use super::{FileOptions, FileStorage, layout};
use crate::storage::suite::append;
use crate::storage::{Mutation, Storage};

/// No checkpoint of its own accord, no tail cache: reads go to the chunk
/// files and what they lack.
fn quiet() -> FileOptions {
    FileOptions {
        tail_cache_bytes: 0,
        checkpoint_interval: Duration::from_secs(3600),
        max_replay_bytes: 64 << 20,
        segment_bytes: 16 << 20,
        ..small()
    }
}

fn chunk_len(store: &FileStorage, id: u64, start: u64) -> u64 {
    std::fs::metadata(layout::chunk_path(store.dir(), id, start)).map_or(0, |m| m.len())
}

/// Appends `count` records of `len` bytes to stream `id` from `tail`;
/// returns what was appended.
async fn fill(store: &FileStorage, id: u64, tail: u64, count: u64, len: usize) -> Vec<u8> {
    let mut written = Vec::new();
    for k in 0..count {
        let data = payload(id * 1000 + k, len);
        store
            .submit(append(id, tail + written.len() as u64, data.clone()))
            .await
            .expect("append");
        written.extend_from_slice(&data);
    }
    written
}

#[tokio::test]
async fn committed_records_missing_from_the_chunk_file_are_read_from_memory() {
    let dir = tempfile::tempdir().expect("temp dir");
    let store = FileStorage::open(dir.path(), quiet()).expect("open");
    create(&store, 1, Bytes::new()).await;
    let expected = fill(&store, 1, 0, 50, 100).await;
    let tail = expected.len() as u64;
    // 5,000 bytes stay below the per-stream write size: none is written.
    assert_eq!(chunk_len(&store, 1, 0), 0);
    assert_eq!(read_all(&store, 1, tail).await, expected);
    for from in [1, 99, 100, 2345, 4999] {
        assert_eq!(
            read_range(&store, 1, from, tail).await,
            expected[from as usize..],
            "from {from}"
        );
    }
    // A checkpoint writes them before it lets the log go.
    store.checkpoint().expect("checkpoint");
    assert_eq!(chunk_len(&store, 1, 0), tail + 50 * 8);
    assert_eq!(read_all(&store, 1, tail).await, expected);
    // Part written, part not: the read joins the two.
    let more = fill(&store, 1, tail, 20, 100).await;
    assert_eq!(chunk_len(&store, 1, 0), tail + 50 * 8);
    let mut all = expected.clone();
    all.extend_from_slice(&more);
    assert_eq!(read_range(&store, 1, 4950, tail + 2000).await, all[4950..]);
}

#[tokio::test]
async fn a_crash_before_the_chunk_files_are_written_loses_nothing() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = quiet();
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    let mut expected = Vec::new();
    for id in 1..=5u64 {
        create(&store, id, Bytes::new()).await;
        expected.push(fill(&store, id, 0, 30, 200 + id as usize).await);
    }
    store.checkpoint().expect("checkpoint");
    for id in 1..=5u64 {
        let tail = expected[id as usize - 1].len() as u64;
        let more = fill(&store, id, tail, 10, 300).await;
        expected[id as usize - 1].extend_from_slice(&more);
        assert_eq!(chunk_len(&store, id, 0), tail + 30 * 8, "stream {id}");
    }
    store.abandon();
    let store = FileStorage::open(dir.path(), options).expect("replay");
    for id in 1..=5u64 {
        let want = &expected[id as usize - 1];
        assert_eq!(read_all(&store, id, want.len() as u64).await, *want);
    }
    let tail = expected[0].len() as u64;
    store
        .submit(append(1, tail, payload(9, 10)))
        .await
        .expect("appends go on after the replay");
}

#[tokio::test]
async fn a_stream_past_the_write_size_is_written_without_a_checkpoint() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        chunk_bytes: 1 << 20,
        ..quiet()
    };
    let store = FileStorage::open(dir.path(), options).expect("open");
    create(&store, 1, Bytes::new()).await;
    let expected = fill(&store, 1, 0, 80, 1000).await;
    // The writer writes it after acknowledging the batch that crossed it.
    let deadline = Instant::now() + Duration::from_secs(30);
    while chunk_len(&store, 1, 0) < 64 << 10 {
        assert!(Instant::now() < deadline, "never written");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(read_all(&store, 1, 80_000).await, expected);
}

#[tokio::test]
async fn unwritten_records_stay_within_their_budget() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        chunk_buffer_bytes: 16 << 10,
        ..quiet()
    };
    let store = FileStorage::open(dir.path(), options).expect("open");
    for id in 1..=40u64 {
        create(&store, id, Bytes::new()).await;
    }
    let share = (16 << 10) / 2;
    for round in 0..10u64 {
        for id in 1..=40u64 {
            store
                .submit(append(id, round * 500, payload(id + round, 500)))
                .await
                .expect("append");
            let held: usize = store
                .inner
                .shared
                .shards
                .iter()
                .map(|s| s.buffer.bytes())
                .max()
                .unwrap_or(0);
            // Each append waited for: one record past the share at most.
            assert!(held <= share + 500 + 8 + 64, "{held} bytes held");
        }
    }
    for id in 1..=40u64 {
        let got = read_all(&store, id, 5000).await;
        let want: Vec<u8> = (0..10u64)
            .flat_map(|round| payload(id + round, 500).to_vec())
            .collect();
        assert_eq!(got, want, "stream {id}");
    }
}

#[tokio::test]
async fn removed_and_trimmed_chunks_drop_their_unwritten_records() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        chunk_bytes: 4 << 10,
        ..quiet()
    };
    let store = FileStorage::open(dir.path(), options.clone()).expect("open");
    create(&store, 1, Bytes::new()).await;
    create(&store, 2, Bytes::new()).await;
    let expected = fill(&store, 1, 0, 20, 1000).await;
    fill(&store, 2, 0, 5, 100).await;
    let chunks = store.chunks(1).await.expect("chunks");
    assert!(chunks.len() >= 4, "{chunks:?}");
    let before = chunks[2].start;
    store
        .submit(Mutation::Trim { id: 1, before })
        .await
        .expect("trim");
    store
        .submit(Mutation::Remove { id: 2 })
        .await
        .expect("remove");
    store.checkpoint().expect("checkpoint");
    for chunk in &chunks[..2] {
        assert!(
            !layout::chunk_path(dir.path(), 1, chunk.start).exists(),
            "trimmed chunk {} came back",
            chunk.start
        );
    }
    assert!(
        !layout::stream_dir(dir.path(), 2).exists(),
        "removed stream came back"
    );
    assert_eq!(
        read_range(&store, 1, before, 20_000).await,
        expected[before as usize..]
    );
    drop(store);
    let store = FileStorage::open(dir.path(), options).expect("reopen");
    assert_eq!(
        read_range(&store, 1, before, 20_000).await,
        expected[before as usize..]
    );
    assert_eq!(store.recover().len(), 1);
}
