//! Recovery and integrity of the persistent backends against damaged files:
//! a flipped byte in the middle of a write-ahead log segment stops startup
//! with the file, the offset and the option that truncates there; a torn
//! tail is cut off and logged; the data directory admits one process at a
//! time. The file store is stopped as `kill -9` would (no final
//! checkpoint), so that what these tests damage is still in the log.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::codec;
use super::suite::{append, spec};
use super::{AcidStorage, FileOptions, FileStorage, Mutation, Storage, StorageError};

const FIRST_SEGMENT: &str = "000-00000000000000000001.wal";

/// A recognisable payload of 100 bytes for record `i`.
fn payload(i: usize) -> Bytes {
    let mut out = format!("record-{i:04}:").into_bytes();
    out.resize(100, b'a' + (i % 26) as u8);
    Bytes::from(out)
}

/// One commit shard, so that every record is in one log, and no
/// checkpoint when a segment is full, so that earlier segments stay.
fn options() -> FileOptions {
    FileOptions {
        commit_shards: 1,
        checkpoint_on_full_segment: false,
        ..FileOptions::default()
    }
}

fn open_file(dir: &Path, options: &FileOptions) -> FileStorage {
    FileStorage::open(dir, options.clone()).expect("open the file store")
}

/// Writes `count` records into a new store and stops it as `kill -9` would.
async fn crashed_store(dir: &Path, options: &FileOptions, count: usize) -> Vec<u8> {
    let store = open_file(dir, options);
    let written = write_records(&store, count).await;
    store.abandon();
    written
}

fn log_dir(dir: &Path) -> PathBuf {
    dir.join("wal")
}

/// Creates stream 1 and appends `count` records, one commit each.
async fn write_records(store: &dyn Storage, count: usize) -> Vec<u8> {
    store
        .submit(Mutation::Create {
            spec: spec(1, 0),
            data: Bytes::new(),
            closed: false,
        })
        .await
        .expect("create");
    let mut all = Vec::new();
    for i in 0..count {
        let data = payload(i);
        store
            .submit(append(1, all.len() as u64, data.clone()))
            .await
            .expect("append");
        all.extend_from_slice(&data);
    }
    all
}

/// Stream 1's tail as recovered, and all of its data.
async fn recovered_data(store: &dyn Storage) -> (u64, Vec<u8>) {
    let recovered = store.recover();
    let stream = recovered
        .iter()
        .find(|s| s.spec.id == 1)
        .expect("stream 1 recovered");
    let chunk = store
        .read(1, 0, stream.tail, usize::MAX)
        .await
        .expect("read");
    (stream.tail, chunk.records.concat())
}

/// Where record `i`'s payload and frame start in a segment file.
fn locate(segment: &[u8], i: usize) -> (usize, usize) {
    let data = payload(i);
    let at = segment
        .windows(data.len())
        .position(|w| w == data.as_ref())
        .expect("payload in the segment");
    // The frame starts `payload_at` bytes before its payload.
    let mut frame = Vec::new();
    let payload_at = codec::encode(&append(1, (i * 100) as u64, data), &mut frame);
    (at, at - payload_at)
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(log_dir(dir))
        .expect("list the log directory")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    files.sort();
    files
}

fn flip_byte(path: &Path, at: usize) {
    let mut bytes = std::fs::read(path).expect("read");
    bytes[at] ^= 0x5a;
    std::fs::write(path, bytes).expect("write");
}

/// Log output captured from `tracing` on the calling thread.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(PoisonError::into_inner)).into_owned()
    }
}

fn with_captured_log<T>(f: impl FnOnce() -> T) -> (T, String) {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let result = tracing::subscriber::with_default(subscriber, f);
    (result, captured.text())
}

/// The location a corruption error offers for `truncate_corrupt_at`.
fn offered_location(message: &str) -> &str {
    let start = message
        .find("truncate_corrupt_at = \"")
        .map(|i| i + "truncate_corrupt_at = \"".len())
        .expect("the message names storage.truncate_corrupt_at");
    let len = message[start..].find('"').expect("closing quote");
    &message[start..start + len]
}

#[tokio::test]
async fn flipped_byte_mid_segment_stops_startup_until_the_operator_truncates() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = options();
    let written = crashed_store(dir.path(), &options, 40).await;
    let segment = log_dir(dir.path()).join(FIRST_SEGMENT);
    let (payload_at, frame_at) = locate(&std::fs::read(&segment).expect("read"), 20);
    flip_byte(&segment, payload_at + 50);

    let message = match FileStorage::open(dir.path(), options.clone()) {
        Err(StorageError::Corrupt(message)) => message,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert!(
        message.contains(&segment.display().to_string()),
        "names the file: {message}"
    );
    assert!(
        message.contains(&format!("byte offset {frame_at}")),
        "names the offset {frame_at}: {message}"
    );
    let location = offered_location(&message).to_owned();
    assert_eq!(location, format!("{FIRST_SEGMENT}:{frame_at}"));
    assert!(message.contains(&format!("DS_STORAGE__TRUNCATE_CORRUPT_AT={location}")));

    // Any other location is not a licence to truncate.
    let elsewhere = FileOptions {
        truncate_corrupt_at: Some(format!("{FIRST_SEGMENT}:{}", frame_at + 1)),
        ..options.clone()
    };
    assert!(matches!(
        FileStorage::open(dir.path(), elsewhere),
        Err(StorageError::Corrupt(_))
    ));

    // The exact location keeps everything before it.
    let approved = FileOptions {
        truncate_corrupt_at: Some(location),
        ..options.clone()
    };
    let store = open_file(dir.path(), &approved);
    let (tail, data) = recovered_data(&store).await;
    assert_eq!(tail, 20 * 100);
    assert_eq!(data, written[..20 * 100]);
    store
        .submit(append(1, tail, payload(99)))
        .await
        .expect("append after truncation");
    drop(store);

    // The damage is gone for good: a plain open works and keeps the append.
    let store = open_file(dir.path(), &options);
    let (tail, data) = recovered_data(&store).await;
    assert_eq!(tail, 21 * 100);
    assert_eq!(&data[..20 * 100], &written[..20 * 100]);
    assert_eq!(&data[20 * 100..], payload(99).as_ref());
}

#[tokio::test]
async fn flipped_byte_in_an_earlier_segment_drops_the_later_ones_only_when_asked() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        segment_bytes: 1024,
        ..options()
    };
    let written = crashed_store(dir.path(), &options, 40).await;
    let segments = segment_files(dir.path());
    assert!(segments.len() >= 4, "{segments:?}");
    // A record in the second segment, not its last frame.
    let second = &segments[1];
    let bytes = std::fs::read(second).expect("read");
    let (index, (payload_at, frame_at)) = (0..40)
        .filter(|&i| bytes.windows(100).any(|w| w == payload(i).as_ref()))
        .map(|i| (i, locate(&bytes, i)))
        .next()
        .expect("a record in the second segment");
    flip_byte(second, payload_at + 10);

    let message = match FileStorage::open(dir.path(), options.clone()) {
        Err(StorageError::Corrupt(message)) => message,
        other => panic!("expected Corrupt, got {other:?}"),
    };
    assert!(message.contains(&second.display().to_string()), "{message}");
    assert!(
        message.contains(&format!("byte offset {frame_at}")),
        "{message}"
    );
    // Nothing was touched by the refused start.
    assert_eq!(segment_files(dir.path()), segments);

    let approved = FileOptions {
        truncate_corrupt_at: Some(offered_location(&message).to_owned()),
        ..options.clone()
    };
    let store = open_file(dir.path(), &approved);
    let (tail, data) = recovered_data(&store).await;
    assert_eq!(tail, (index * 100) as u64);
    assert_eq!(data, written[..index * 100]);
    assert!(
        segment_files(dir.path())
            .iter()
            .all(|s| !segments.contains(s)),
        "the replayed log was checkpointed and deleted"
    );
    store
        .submit(append(1, tail, payload(99)))
        .await
        .expect("append after truncation");
    drop(store);
    let store = open_file(dir.path(), &options);
    assert_eq!(recovered_data(&store).await.0, tail + 100);
}

#[tokio::test]
async fn a_cut_in_an_earlier_segment_is_not_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        segment_bytes: 1024,
        ..options()
    };
    crashed_store(dir.path(), &options, 40).await;
    let first = log_dir(dir.path()).join(FIRST_SEGMENT);
    let len = std::fs::metadata(&first).expect("metadata").len();
    let file = std::fs::OpenOptions::new()
        .write(true)
        .open(&first)
        .expect("open");
    file.set_len(len - 30).expect("cut");
    drop(file);
    match FileStorage::open(dir.path(), options) {
        Err(StorageError::Corrupt(message)) => {
            assert!(message.contains(&first.display().to_string()), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

/// How a crash can leave the end of the last segment.
#[derive(Clone, Copy, Debug)]
enum TornTail {
    /// The last frame is cut short.
    CutLastFrame,
    /// Bytes that are no frame follow the last one.
    Garbage,
    /// Only part of the next frame's header arrived.
    PartialHeader,
}

async fn torn_tail_is_truncated_and_logged(tail: TornTail, durable: bool) {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = FileOptions {
        durable,
        ..options()
    };
    let written = crashed_store(dir.path(), &options, 30).await;
    let segment = log_dir(dir.path()).join(FIRST_SEGMENT);
    // The segment as written, without its preallocated zeros.
    let intact = (locate(&std::fs::read(&segment).expect("read"), 29).0 + 100) as u64;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&segment)
        .and_then(|file| file.set_len(intact))
        .expect("cut the preallocated rest");
    let mut rng = fastrand::Rng::with_seed(7);
    let (kept_records, torn_at) = {
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(&segment)
            .expect("open");
        match tail {
            TornTail::CutLastFrame => {
                let (_, frame_at) = locate(&std::fs::read(&segment).expect("read"), 29);
                file.set_len(intact - 7).expect("cut");
                (29, frame_at as u64)
            }
            TornTail::Garbage => {
                let garbage: Vec<u8> = (0..37).map(|_| rng.u8(..)).collect();
                file.write_all(&garbage).expect("garbage");
                (30, intact)
            }
            TornTail::PartialHeader => {
                file.write_all(&[0x40, 0, 0]).expect("header");
                (30, intact)
            }
        }
    };

    let (store, log) = with_captured_log(|| FileStorage::open(dir.path(), options.clone()));
    let store = store.unwrap_or_else(|e| panic!("{tail:?}: open failed: {e}"));
    assert!(log.contains("torn tail"), "{tail:?}: not logged: {log}");
    assert!(
        log.contains(&segment.display().to_string()) && log.contains(&format!("offset={torn_at}")),
        "{tail:?}: the log names neither file nor offset {torn_at}: {log}"
    );
    assert!(
        !segment.exists(),
        "{tail:?}: the replayed log was checkpointed and deleted"
    );
    let (recovered_tail, data) = recovered_data(&store).await;
    assert_eq!(recovered_tail, kept_records * 100, "{tail:?}");
    assert_eq!(data, written[..(kept_records * 100) as usize], "{tail:?}");

    // New appends land after the last whole record and survive a restart.
    store
        .submit(append(1, recovered_tail, payload(77)))
        .await
        .expect("append after recovery");
    store.abandon();
    let (store, log) = with_captured_log(|| open_file(dir.path(), &options));
    assert!(!log.contains("torn tail"), "{tail:?}: a clean log: {log}");
    let (reopened_tail, data) = recovered_data(&store).await;
    assert_eq!(reopened_tail, recovered_tail + 100, "{tail:?}");
    assert_eq!(&data[(recovered_tail as usize)..], payload(77).as_ref());
}

/// A preallocated segment ends in zeros: the end of what was written, not
/// damage.
#[tokio::test]
async fn the_preallocated_rest_of_a_segment_is_a_clean_end() {
    let dir = tempfile::tempdir().expect("temp dir");
    let written = crashed_store(dir.path(), &options(), 30).await;
    let segment = log_dir(dir.path()).join(FIRST_SEGMENT);
    let len = std::fs::metadata(&segment).expect("metadata").len();
    assert_eq!(len, options().segment_bytes, "the segment is preallocated");
    let (store, log) = with_captured_log(|| open_file(dir.path(), &options()));
    assert!(!log.contains("torn tail"), "a clean log: {log}");
    assert_eq!(recovered_data(&store).await, (3000, written));
}

/// Zeros inside the newest segment with a valid frame behind them are
/// damage (a lost sector), not the preallocated rest: startup stops and
/// names the place instead of dropping the records behind it.
#[tokio::test]
async fn zeros_with_a_valid_frame_behind_them_are_damage() {
    let dir = tempfile::tempdir().expect("temp dir");
    crashed_store(dir.path(), &options(), 30).await;
    let segment = log_dir(dir.path()).join(FIRST_SEGMENT);
    let mut data = std::fs::read(&segment).expect("read");
    let (_, lost_at) = locate(&data, 10);
    let (_, next) = locate(&data, 11);
    data[lost_at..next].fill(0);
    std::fs::write(&segment, &data).expect("write");
    match FileStorage::open(dir.path(), options()) {
        Err(StorageError::Corrupt(message)) => {
            assert!(
                message.contains(&format!("byte offset {lost_at}")),
                "{message}"
            );
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test]
async fn torn_tails_are_truncated_and_logged() {
    for durable in [true, false] {
        for tail in [
            TornTail::CutLastFrame,
            TornTail::Garbage,
            TornTail::PartialHeader,
        ] {
            torn_tail_is_truncated_and_logged(tail, durable).await;
        }
    }
}

#[test]
fn a_data_dir_admits_one_store_at_a_time() {
    let pid = format!("pid {}", std::process::id());
    let dir = tempfile::tempdir().expect("temp dir");
    let first = open_file(dir.path(), &FileOptions::default());
    let refused = [
        FileStorage::open(dir.path(), FileOptions::default()).map(|_| ()),
        AcidStorage::open(dir.path()).map(|_| ()),
    ];
    for outcome in refused {
        match outcome {
            Err(error @ StorageError::Locked { .. }) => {
                let StorageError::Locked {
                    dir: locked,
                    holder,
                } = &error
                else {
                    unreachable!()
                };
                assert_eq!(locked, dir.path());
                assert_eq!(holder, &pid);
                let message = error.to_string();
                assert!(
                    message.contains(&dir.path().display().to_string()) && message.contains(&pid),
                    "{message}"
                );
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }
    drop(first);
    drop(open_file(dir.path(), &FileOptions::default()));

    let dir = tempfile::tempdir().expect("temp dir");
    let first = AcidStorage::open(dir.path()).expect("open acid");
    for outcome in [
        AcidStorage::open(dir.path()).map(|_| ()),
        FileStorage::open(dir.path(), FileOptions::default()).map(|_| ()),
    ] {
        match outcome {
            Err(StorageError::Locked {
                dir: locked,
                holder,
            }) => {
                assert_eq!(locked, dir.path());
                assert_eq!(holder, pid);
            }
            other => panic!("expected Locked, got {other:?}"),
        }
    }
    drop(first);
    AcidStorage::open(dir.path()).expect("reopen after the holder left");
}

#[tokio::test]
async fn a_damaged_length_on_a_large_frame_is_not_taken_for_a_torn_tail() {
    let dir = tempfile::tempdir().expect("temp dir");
    let options = options();
    let store = open_file(dir.path(), &options);
    let mut written = write_records(&store, 3).await;
    // A record larger than any fixed search window, then small ones.
    let large = Bytes::from(vec![b'L'; 3 << 20]);
    store
        .submit(append(1, written.len() as u64, large.clone()))
        .await
        .expect("large append");
    written.extend_from_slice(&large);
    for i in 3..6 {
        store
            .submit(append(1, written.len() as u64, payload(i)))
            .await
            .expect("append");
        written.extend_from_slice(&payload(i));
    }
    store.abandon();
    // The large frame follows record 2's frame; damage its length field so
    // it claims to run past the end of the file.
    let segment = log_dir(dir.path()).join(FIRST_SEGMENT);
    let bytes = std::fs::read(&segment).expect("read");
    let (payload_at, _) = locate(&bytes, 2);
    let large_frame_at = payload_at + 100;
    assert_eq!(
        codec::frame_len(&bytes[large_frame_at..]).map(|len| len > 3 << 20),
        Some(true)
    );
    flip_byte(&segment, large_frame_at + 3);

    match FileStorage::open(dir.path(), options) {
        Err(StorageError::Corrupt(message)) => {
            assert!(
                message.contains(&format!("byte offset {large_frame_at}")),
                "{message}"
            );
        }
        Ok(store) => {
            let (tail, _) = recovered_data(&store).await;
            panic!(
                "acknowledged data after the damaged frame was discarded as a torn tail: \
                 recovered {tail} of {} bytes",
                written.len()
            );
        }
        Err(other) => panic!("expected Corrupt, got {other}"),
    }
}
