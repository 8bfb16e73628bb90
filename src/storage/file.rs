//! The file backends, `file-durable` and `file-fast`: one append-only log of
//! checksummed frames in numbered segment files, shared by all streams.
//!
//! # Durability
//! - `file-durable`: a batch of mutations is written and `fdatasync`ed before
//!   any of them is acknowledged; new segment files are followed by an fsync
//!   of the directory. An acknowledged append survives `kill -9` and power
//!   loss.
//! - `file-fast`: a batch is written (to the page cache) before it is
//!   acknowledged and synced at least every `sync_interval`. An acknowledged
//!   append survives `kill -9`; a power loss may lose the last
//!   `sync_interval` of acknowledged writes, never more, and never corrupts.
//!
//! # Group commit
//! One writer thread drains a queue: everything that arrived while it wrote
//! and synced the previous batch goes into the next write and the next sync,
//! across all streams. Reads never wait for it: they use an in-memory index of
//! record positions and `pread` from the segment files.
//!
//! # Recovery
//! On open, every frame is replayed and verified. A torn tail (an incomplete
//! or unverifiable last frame) is truncated and logged; a bad frame anywhere
//! else stops startup with the file and offset, unless the operator names
//! exactly that place in `truncate_corrupt_at`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::codec::{self, FRAME_HEADER};
use super::lock::DirLock;
use super::metadata::MetadataDir;
use super::queue::{Ack, CommitQueue, Next, WriterThread, commit_spans, fail_all, payload_len};
use super::{
    Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture, StreamId,
    StreamSpec,
};
use crate::metrics::event::StorageCommitted;
use crate::protocol::producer::ProducerState;
use crate::storage::ClosedBy;

/// Magic bytes opening every segment file, followed by its number (u64 LE).
const SEGMENT_MAGIC: &[u8; 8] = b"DSSEG001";
const SEGMENT_HEADER: u64 = 16;
/// Most bytes one group commit writes.
const MAX_BATCH_BYTES: usize = 16 << 20;
/// Reads of records closer than this in one segment become one `pread`.
const READ_COALESCE_GAP: u64 = 4096;

/// Tuning of the file backends.
#[derive(Clone, Debug)]
pub struct FileOptions {
    /// Sync before acknowledging (`file-durable`) or not (`file-fast`).
    pub durable: bool,
    /// Size at which a new segment file is started.
    pub segment_bytes: u64,
    /// `file-fast`: the longest time written data stays unsynced.
    pub sync_interval: Duration,
    /// Discard the log from this `<segment file name>:<offset>` on, as named
    /// by a corruption error. Anything else is ignored.
    pub truncate_corrupt_at: Option<String>,
}

impl Default for FileOptions {
    fn default() -> Self {
        Self {
            durable: true,
            segment_bytes: 64 << 20,
            sync_interval: Duration::from_millis(100),
            truncate_corrupt_at: None,
        }
    }
}

/// Where a record's payload lies.
#[derive(Clone, Copy, Debug)]
struct Location {
    /// Stream position just after the record.
    end: u64,
    segment: u32,
    /// File offset of the payload.
    offset: u64,
}

#[derive(Debug, Default)]
struct StreamIndex {
    base: u64,
    records: Vec<Location>,
    /// Payloads of the newest records, aligned with the end of `records`:
    /// live readers at the tail are served from here without I/O.
    recent: std::collections::VecDeque<Bytes>,
    recent_bytes: usize,
}

/// Most bytes of recent records kept per stream.
const RECENT_PER_STREAM: usize = 64 << 10;
/// Records larger than this are not kept.
const RECENT_MAX_RECORD: usize = 16 << 10;
/// Most bytes of recent records kept across all streams.
const RECENT_TOTAL: usize = 64 << 20;

impl StreamIndex {
    fn tail(&self) -> u64 {
        self.records.last().map_or(self.base, |r| r.end)
    }

    /// Keeps `data`, the newest record, among the recent ones.
    fn remember(&mut self, data: Bytes, budget: &std::sync::atomic::AtomicUsize) {
        use std::sync::atomic::Ordering;
        let fits = data.len() <= RECENT_MAX_RECORD
            && budget
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                    used.checked_add(data.len())
                        .filter(|&total| total <= RECENT_TOTAL)
                })
                .is_ok();
        if !fits {
            // The recent records must reach the tail without a gap.
            self.forget(budget);
            return;
        }
        self.recent_bytes += data.len();
        self.recent.push_back(data);
        while self.recent_bytes > RECENT_PER_STREAM {
            let Some(old) = self.recent.pop_front() else {
                break;
            };
            self.recent_bytes -= old.len();
            budget.fetch_sub(old.len(), Ordering::AcqRel);
        }
    }

    fn forget(&mut self, budget: &std::sync::atomic::AtomicUsize) {
        budget.fetch_sub(self.recent_bytes, std::sync::atomic::Ordering::AcqRel);
        self.recent.clear();
        self.recent_bytes = 0;
    }

    /// Serves `[from, until)` from the recent records, if they cover it.
    fn read_recent(&self, from: u64, until: u64, max_bytes: usize) -> Option<ReadChunk> {
        let first_cached = self.records.len().checked_sub(self.recent.len())?;
        if self.recent.is_empty() || from < self.start_of(first_cached) {
            return None;
        }
        let mut chunk = ReadChunk {
            records: Vec::new(),
            end: from,
            starts_mid_record: false,
        };
        let mut taken = 0usize;
        for (k, data) in self.recent.iter().enumerate() {
            let i = first_cached + k;
            let (start, end) = (self.start_of(i), self.records[i].end);
            if end <= from {
                continue;
            }
            if start >= until {
                break;
            }
            let lo = usize::try_from(from.saturating_sub(start)).ok()?;
            let hi = usize::try_from(until.min(end) - start).ok()?;
            if chunk.records.is_empty() && lo > 0 {
                chunk.starts_mid_record = true;
            }
            let piece = data.slice(lo..hi);
            taken += piece.len();
            chunk.end = start + hi as u64;
            chunk.records.push(piece);
            if taken >= max_bytes {
                break;
            }
        }
        Some(chunk)
    }

    fn start_of(&self, index: usize) -> u64 {
        if index == 0 {
            self.base
        } else {
            self.records[index - 1].end
        }
    }
}

struct Shared {
    dir: PathBuf,
    queue: CommitQueue,
    index: RwLock<HashMap<StreamId, Arc<RwLock<StreamIndex>>>>,
    segments: RwLock<BTreeMap<u32, Arc<File>>>,
    recovered: Mutex<Vec<RecoveredStream>>,
    /// Bytes held in all streams' recent-record caches.
    recent_bytes: std::sync::atomic::AtomicUsize,
    _lock: Option<DirLock>,
}

impl Shared {
    /// The state of a store just replayed, shared by its readers and writer.
    fn opened(
        dir: &Path,
        durable: bool,
        index: HashMap<StreamId, StreamIndex>,
        segments: BTreeMap<u32, Arc<File>>,
        recovered: Vec<RecoveredStream>,
        lock: Option<DirLock>,
    ) -> Arc<Self> {
        Arc::new(Shared {
            dir: dir.to_path_buf(),
            queue: CommitQueue::new(backend_name(durable)),
            index: RwLock::new(
                index
                    .into_iter()
                    .map(|(id, idx)| (id, Arc::new(RwLock::new(idx))))
                    .collect(),
            ),
            segments: RwLock::new(segments),
            recovered: Mutex::new(recovered),
            recent_bytes: std::sync::atomic::AtomicUsize::new(0),
            _lock: lock,
        })
    }

    fn stream(&self, id: StreamId) -> Option<Arc<RwLock<StreamIndex>>> {
        self.index
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&id)
            .cloned()
    }

    fn segment(&self, number: u32) -> Option<Arc<File>> {
        self.segments
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&number)
            .cloned()
    }
}

/// The segment-log backend. Cheap to clone.
#[derive(Clone)]
pub struct FileStorage {
    shared: Arc<Shared>,
    _writer: Option<Arc<WriterThread<Shared>>>,
    durable: bool,
    metadata: Arc<MetadataDir>,
}

impl std::fmt::Debug for FileStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileStorage")
            .field("dir", &self.shared.dir)
            .field("durable", &self.durable)
            .finish()
    }
}

fn backend_name(durable: bool) -> &'static str {
    if durable { "file-durable" } else { "file-fast" }
}

fn segment_name(number: u32) -> String {
    format!("{number:020}.seg")
}

impl FileStorage {
    /// Opens (or creates) the store in `dir`: locks it, replays and verifies
    /// the log, and starts the writer thread.
    ///
    /// # Errors
    /// When the directory is locked or unusable, or the log is corrupt.
    pub fn open(dir: &Path, options: FileOptions) -> Result<Self, StorageError> {
        let lock = DirLock::acquire(dir)?;
        Self::open_with(dir, options, Some(lock))
    }

    /// Opens the store for reading only, beside a server that may be writing
    /// it (a live export): no lock, no writer, and a frame that does not
    /// verify at the end of the newest segment is taken as a write in
    /// progress, not truncated.
    ///
    /// # Errors
    /// When the log cannot be read or is corrupt before its tail.
    pub fn open_read_only(dir: &Path) -> Result<Self, StorageError> {
        Self::open_with(dir, FileOptions::default(), None)
    }

    fn open_with(
        dir: &Path,
        options: FileOptions,
        lock: Option<DirLock>,
    ) -> Result<Self, StorageError> {
        let read_only = lock.is_none();
        let mut replay = Replay::default();
        let numbers = list_segments(dir)?;
        let mut files = BTreeMap::new();
        let mut discard_from: Option<usize> = None;
        for (position, &number) in numbers.iter().enumerate() {
            let path = dir.join(segment_name(number));
            let is_last = position + 1 == numbers.len();
            let end = replay_segment(&path, number, is_last, read_only, &options, &mut replay)?;
            if let SegmentEnd::Truncated = end
                && !is_last
            {
                discard_from = Some(position + 1);
            }
            files.insert(number, path);
            if discard_from.is_some() {
                break;
            }
        }
        if let Some(first) = discard_from {
            for &number in &numbers[first..] {
                let path = dir.join(segment_name(number));
                tracing::warn!(file = %path.display(), "removing segment after the truncation point");
                std::fs::remove_file(&path)
                    .map_err(|e| StorageError::path("remove segment", &path, e))?;
            }
        }

        if read_only {
            let mut read_files = BTreeMap::new();
            for (&number, path) in &files {
                let file =
                    File::open(path).map_err(|e| StorageError::path("open segment", path, e))?;
                read_files.insert(number, Arc::new(file));
            }
            let (recovered, index, _, _) = replay.finish();
            let shared = Shared::opened(dir, options.durable, index, read_files, recovered, None);
            shared.queue.close();
            return Ok(Self {
                shared,
                _writer: None,
                durable: options.durable,
                metadata: MetadataDir::new(dir, options.durable, true),
            });
        }
        let active_number = files.keys().next_back().copied().unwrap_or(1);
        let (active_file, active_len) = open_active(dir, active_number)?;
        let mut read_files = BTreeMap::new();
        for (&number, path) in &files {
            if number != active_number {
                let file =
                    File::open(path).map_err(|e| StorageError::path("open segment", path, e))?;
                read_files.insert(number, Arc::new(file));
            }
        }
        let active_reader = File::open(dir.join(segment_name(active_number))).map_err(|e| {
            StorageError::path("open segment", &dir.join(segment_name(active_number)), e)
        })?;
        read_files.insert(active_number, Arc::new(active_reader));

        let (recovered, index, tails, stream_segments) = replay.finish();
        let mut segment_live: BTreeMap<u32, usize> = read_files.keys().map(|&n| (n, 0)).collect();
        for segments in stream_segments.values() {
            for number in segments {
                *segment_live.entry(*number).or_default() += 1;
            }
        }
        let shared = Shared::opened(dir, options.durable, index, read_files, recovered, lock);
        let mut writer = Writer {
            shared: shared.clone(),
            options: options.clone(),
            active: Active {
                number: active_number,
                file: active_file,
                len: active_len,
            },
            tails,
            stream_segments,
            segment_live,
            unsynced_since: None,
            poisoned: None,
        };
        writer.reclaim();
        let thread = std::thread::Builder::new()
            .name("ds-file-writer".into())
            .spawn(move || writer.run())
            .map_err(StorageError::Io)?;
        let durable = options.durable;
        Ok(Self {
            _writer: Some(Arc::new(WriterThread::new(
                shared.clone(),
                |shared| &shared.queue,
                thread,
            ))),
            shared,
            durable,
            metadata: MetadataDir::new(dir, durable, false),
        })
    }

    /// The data directory.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    fn read_blocking(
        shared: &Shared,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> Result<ReadChunk, StorageError> {
        let stream = shared.stream(id).ok_or(StorageError::UnknownStream(id))?;
        // Collect the pieces under the index lock, read them after it.
        let mut pieces: Vec<(u32, u64, u64)> = Vec::new(); // segment, file offset, length
        let mut chunk = ReadChunk {
            records: Vec::new(),
            end: from,
            starts_mid_record: false,
        };
        {
            let index = stream.read().unwrap_or_else(PoisonError::into_inner);
            let from = from.max(index.base);
            let until = until.min(index.tail());
            chunk.end = from;
            if from >= until {
                return Ok(chunk);
            }
            let first = index.records.partition_point(|r| r.end <= from);
            let mut taken = 0u64;
            for i in first..index.records.len() {
                let start = index.start_of(i);
                if start >= until {
                    break;
                }
                let record = index.records[i];
                let lo = from.saturating_sub(start);
                let hi = until.min(record.end) - start;
                if i == first && lo > 0 {
                    chunk.starts_mid_record = true;
                }
                pieces.push((record.segment, record.offset + lo, hi - lo));
                taken += hi - lo;
                chunk.end = start + hi;
                if taken >= max_bytes as u64 {
                    break;
                }
            }
        }
        let mut i = 0;
        while i < pieces.len() {
            // Coalesce neighbours in one segment into one read.
            let (segment, first_offset, _) = pieces[i];
            let mut j = i;
            while j + 1 < pieces.len() {
                let (seg, offset, _) = pieces[j + 1];
                let (_, prev_offset, prev_len) = pieces[j];
                if seg != segment
                    || offset < prev_offset + prev_len
                    || offset - (prev_offset + prev_len) > READ_COALESCE_GAP
                {
                    break;
                }
                j += 1;
            }
            let (_, last_offset, last_len) = pieces[j];
            let span_len = usize::try_from(last_offset + last_len - first_offset)
                .map_err(|_| StorageError::Corrupt("read span too large".into()))?;
            let file = shared.segment(segment).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "segment {} referenced by stream {id} is missing",
                    segment_name(segment)
                ))
            })?;
            let mut buf = vec![0u8; span_len];
            file.read_exact_at(&mut buf, first_offset).map_err(|e| {
                StorageError::path("read segment", &shared.dir.join(segment_name(segment)), e)
            })?;
            let span = Bytes::from(buf);
            for &(_, offset, len) in &pieces[i..=j] {
                let at = (offset - first_offset) as usize;
                chunk.records.push(span.slice(at..at + len as usize));
            }
            i = j + 1;
        }
        Ok(chunk)
    }
}

impl Storage for FileStorage {
    fn backend_name(&self) -> &'static str {
        backend_name(self.durable)
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        self.shared.queue.submit(mutation)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        // Live readers at the tail are served from memory, without a thread hop.
        if let Some(stream) = self.shared.stream(id) {
            let index = stream.read().unwrap_or_else(PoisonError::into_inner);
            let (from, until) = (from.max(index.base), until.min(index.tail()));
            if from < until
                && let Some(chunk) = index.read_recent(from, until, max_bytes)
            {
                return Box::pin(std::future::ready(Ok(chunk)));
            }
        }
        let shared = self.shared.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || {
                Self::read_blocking(&shared, id, from, until, max_bytes)
            })
            .await
            .unwrap_or_else(|e| Err(StorageError::Unavailable(format!("read task failed: {e}"))))
        })
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        std::mem::take(
            &mut *self
                .shared
                .recovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        )
    }

    fn put_metadata(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        self.metadata.put(key, value)
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        self.metadata.load()
    }
}

fn list_segments(dir: &Path) -> Result<Vec<u32>, StorageError> {
    let mut numbers = Vec::new();
    let entries = std::fs::read_dir(dir)
        .map_err(|e| StorageError::path("list the data directory", dir, e))?;
    for entry in entries {
        let entry = entry.map_err(|e| StorageError::path("list the data directory", dir, e))?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(number) = name
            .strip_suffix(".seg")
            .and_then(|n| n.parse::<u32>().ok())
        {
            numbers.push(number);
        }
    }
    numbers.sort_unstable();
    Ok(numbers)
}

/// Opens (creating if needed) the active segment for appending.
fn open_active(dir: &Path, number: u32) -> Result<(File, u64), StorageError> {
    let path = dir.join(segment_name(number));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::path("open segment", &path, e))?;
    let len = file
        .metadata()
        .map_err(|e| StorageError::path("inspect segment", &path, e))?
        .len();
    if len < SEGMENT_HEADER {
        write_segment_header(&file, number)
            .map_err(|e| StorageError::path("initialise segment", &path, e))?;
        sync_dir(dir)?;
        return Ok((file, SEGMENT_HEADER));
    }
    Ok((file, len))
}

fn write_segment_header(file: &File, number: u32) -> std::io::Result<()> {
    let mut header = [0u8; SEGMENT_HEADER as usize];
    header[..8].copy_from_slice(SEGMENT_MAGIC);
    header[8..].copy_from_slice(&u64::from(number).to_le_bytes());
    file.set_len(0)?;
    file.write_all_at(&header, 0)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| StorageError::path("sync the data directory", dir, e))
}

enum SegmentEnd {
    Clean,
    Truncated,
}

/// Replays one segment into `replay`; truncates a torn tail.
fn replay_segment(
    path: &Path,
    number: u32,
    is_last: bool,
    read_only: bool,
    options: &FileOptions,
    replay: &mut Replay,
) -> Result<SegmentEnd, StorageError> {
    let data =
        Bytes::from(std::fs::read(path).map_err(|e| StorageError::path("read segment", path, e))?);
    let name = segment_name(number);
    if (data.len() as u64) < SEGMENT_HEADER {
        if is_last {
            // Created but never initialised: start it over.
            return Ok(SegmentEnd::Clean);
        }
        return Err(StorageError::Corrupt(format!(
            "segment file {} is shorter than its header",
            path.display()
        )));
    }
    if &data[..8] != SEGMENT_MAGIC || data[8..16] != u64::from(number).to_le_bytes() {
        return Err(StorageError::Corrupt(format!(
            "segment file {} has a bad header",
            path.display()
        )));
    }
    let mut pos = SEGMENT_HEADER as usize;
    while pos < data.len() {
        let rest = data.slice(pos..);
        let failure = match codec::decode(&rest) {
            Ok(decoded) => {
                match replay.apply(decoded.mutation, number, (pos + decoded.payload_at) as u64) {
                    Ok(()) => {
                        pos += decoded.frame_len;
                        continue;
                    }
                    Err(reason) => reason,
                }
            }
            Err(error) => error.to_string(),
        };
        let location = format!("{name}:{pos}");
        let tail_only = is_last && !valid_frame_follows(&data, pos);
        if read_only {
            if tail_only {
                return Ok(SegmentEnd::Clean);
            }
            return Err(StorageError::Corrupt(format!(
                "segment file {} has an invalid record at byte offset {pos} ({failure})",
                path.display()
            )));
        }
        let operator_approved = options.truncate_corrupt_at.as_deref() == Some(location.as_str());
        if !tail_only && !operator_approved {
            return Err(StorageError::Corrupt(format!(
                "segment file {} has an invalid record at byte offset {pos} ({failure}); valid records follow it, \
                 so this is not a torn write. To discard the log from there on, restart once with \
                 storage.truncate_corrupt_at = \"{location}\" (env DS_STORAGE__TRUNCATE_CORRUPT_AT={location})",
                path.display()
            )));
        }
        if tail_only {
            tracing::warn!(file = %path.display(), offset = pos, reason = %failure, "truncating a torn tail");
        } else {
            tracing::warn!(file = %path.display(), offset = pos, reason = %failure, "truncating the log as the operator asked");
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::path("open segment", path, e))?;
        file.set_len(pos as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::path("truncate segment", path, e))?;
        return Ok(SegmentEnd::Truncated);
    }
    Ok(SegmentEnd::Clean)
}

/// Whether a verifiable frame starts anywhere after a bad one at `bad`: if
/// so, the damage is not a torn tail.
fn valid_frame_follows(data: &Bytes, bad: usize) -> bool {
    // The bad frame's own length, if plausible, says where the next starts.
    if let Some(len) = codec::frame_len(&data[bad..]) {
        let next = bad + FRAME_HEADER + len;
        if next < data.len() && codec::decode(&data.slice(next..)).is_ok() {
            return true;
        }
    }
    // Otherwise search the rest of the file byte by byte. The search must
    // not stop early: when a frame's length field is damaged, the next valid
    // frame lies as far away as that frame was long (a frame may be many
    // MiB), and missing it would discard acknowledged records as a "torn
    // tail". Positions that cannot start a frame are skipped before paying
    // for a checksum, which keeps the scan linear on real data.
    ((bad + 1)..data.len())
        .any(|at| codec::looks_like_frame(&data[at..]) && codec::decode(&data.slice(at..)).is_ok())
}

/// Rebuilds stream state from replayed frames.
#[derive(Default)]
struct Replay {
    streams: BTreeMap<StreamId, Replayed>,
}

struct Replayed {
    spec: StreamSpec,
    tail: u64,
    closed: Option<Option<ClosedBy>>,
    producers: HashMap<String, ProducerState>,
    stream_seq: Option<String>,
    soft_deleted: bool,
    index: StreamIndex,
    segments: BTreeSet<u32>,
}

type Finished = (
    Vec<RecoveredStream>,
    HashMap<StreamId, StreamIndex>,
    HashMap<StreamId, u64>,
    HashMap<StreamId, BTreeSet<u32>>,
);

impl Replay {
    fn apply(
        &mut self,
        mutation: Mutation,
        segment: u32,
        payload_offset: u64,
    ) -> Result<(), String> {
        match mutation {
            Mutation::Create { spec, data, closed } => {
                let mut index = StreamIndex {
                    base: spec.base,
                    ..StreamIndex::default()
                };
                let tail = spec.base + data.len() as u64;
                if !data.is_empty() {
                    index.records.push(Location {
                        end: tail,
                        segment,
                        offset: payload_offset,
                    });
                }
                let replayed = Replayed {
                    tail,
                    closed: closed.then_some(None),
                    producers: HashMap::new(),
                    stream_seq: None,
                    soft_deleted: false,
                    index,
                    segments: BTreeSet::from([segment]),
                    spec,
                };
                self.streams.insert(replayed.spec.id, replayed);
            }
            Mutation::Append(append) => {
                let Some(stream) = self.streams.get_mut(&append.id) else {
                    return Err(format!("append to unknown stream {}", append.id));
                };
                if append.start != stream.tail {
                    return Err(format!(
                        "append at {} does not follow the tail {}",
                        append.start, stream.tail
                    ));
                }
                stream.segments.insert(segment);
                if !append.data.is_empty() {
                    stream.tail += append.data.len() as u64;
                    stream.index.records.push(Location {
                        end: stream.tail,
                        segment,
                        offset: payload_offset,
                    });
                }
                if let Some((id, state)) = append.producer {
                    stream.producers.insert(id, state);
                }
                if append.stream_seq.is_some() {
                    stream.stream_seq = append.stream_seq;
                }
                if append.close.is_some() && stream.closed.is_none() {
                    stream.closed = append.close;
                }
            }
            Mutation::SoftDelete { id } => {
                if let Some(stream) = self.streams.get_mut(&id) {
                    stream.soft_deleted = true;
                    stream.segments.insert(segment);
                }
            }
            Mutation::Remove { id } => {
                self.streams.remove(&id);
            }
        }
        Ok(())
    }

    fn finish(self) -> Finished {
        let mut recovered = Vec::with_capacity(self.streams.len());
        let mut index = HashMap::with_capacity(self.streams.len());
        let mut tails = HashMap::with_capacity(self.streams.len());
        let mut segments = HashMap::with_capacity(self.streams.len());
        for (id, stream) in self.streams {
            tails.insert(id, stream.tail);
            index.insert(id, stream.index);
            segments.insert(id, stream.segments);
            recovered.push(RecoveredStream {
                spec: stream.spec,
                tail: stream.tail,
                closed: stream.closed,
                producers: stream.producers.into_iter().collect(),
                stream_seq: stream.stream_seq,
                soft_deleted: stream.soft_deleted,
            });
        }
        (recovered, index, tails, segments)
    }
}

struct Active {
    number: u32,
    file: File,
    len: u64,
}

/// What one queued mutation does to the index once written.
enum Effect {
    Create {
        id: StreamId,
        base: u64,
        data: Bytes,
    },
    Append {
        id: StreamId,
        data: Bytes,
    },
    Remove {
        id: StreamId,
    },
    None,
}

/// The writer thread's state.
struct Writer {
    shared: Arc<Shared>,
    options: FileOptions,
    active: Active,
    tails: HashMap<StreamId, u64>,
    stream_segments: HashMap<StreamId, BTreeSet<u32>>,
    segment_live: BTreeMap<u32, usize>,
    unsynced_since: Option<Instant>,
    poisoned: Option<String>,
}

impl Writer {
    fn run(mut self) {
        while let Some(batch) = self.next_batch() {
            self.commit(batch);
        }
        if self.unsynced_since.is_some() {
            self.sync();
        }
    }

    /// Waits for work; syncs `file-fast` data when its interval is due.
    fn next_batch(&mut self) -> Option<Vec<(Mutation, Ack)>> {
        loop {
            let deadline = self
                .unsynced_since
                .map(|since| since + self.options.sync_interval);
            match self.shared.queue.next_batch(MAX_BATCH_BYTES, deadline) {
                Next::Batch(batch) => return Some(batch),
                Next::Idle => self.sync(),
                Next::Closed => return None,
            }
        }
    }

    fn sync(&mut self) {
        if let Err(error) = self.active.file.sync_data() {
            self.poison(format!("fdatasync failed: {error}"));
        }
        self.unsynced_since = None;
    }

    fn poison(&mut self, reason: String) {
        // After a failed sync the kernel may have dropped dirty pages; no
        // later write can be trusted until the log is replayed again.
        tracing::error!(dir = %self.shared.dir.display(), %reason, "storage writer failed; refusing writes until restart");
        self.poisoned = Some(reason);
    }

    fn commit(&mut self, batch: Vec<(Mutation, Ack)>) {
        if let Some(reason) = &self.poisoned {
            for (_, ack) in batch {
                let _ = ack.send(Err(StorageError::Unavailable(format!(
                    "storage failed earlier ({reason}); restart required"
                ))));
            }
            return;
        }
        let mut buf = Vec::with_capacity(batch.iter().map(|(m, _)| payload_len(m) + 64).sum());
        let mut written: Vec<(usize, Effect, Ack)> = Vec::with_capacity(batch.len());
        let mut undo: Vec<(StreamId, Option<u64>)> = Vec::new();
        for (mutation, ack) in batch {
            let effect = match &mutation {
                Mutation::Create { spec, data, .. } => {
                    undo.push((
                        spec.id,
                        self.tails.insert(spec.id, spec.base + data.len() as u64),
                    ));
                    Effect::Create {
                        id: spec.id,
                        base: spec.base,
                        data: data.clone(),
                    }
                }
                Mutation::Append(append) => match self.tails.get(&append.id).copied() {
                    None => {
                        let _ = ack.send(Err(StorageError::UnknownStream(append.id)));
                        continue;
                    }
                    Some(tail) if tail != append.start => {
                        let _ = ack.send(Err(StorageError::OutOfOrder {
                            id: append.id,
                            start: append.start,
                            tail,
                        }));
                        continue;
                    }
                    Some(tail) => {
                        let len = append.data.len() as u64;
                        undo.push((append.id, self.tails.insert(append.id, tail + len)));
                        Effect::Append {
                            id: append.id,
                            data: append.data.clone(),
                        }
                    }
                },
                Mutation::Remove { id } => {
                    if !self.tails.contains_key(id) {
                        let _ = ack.send(Ok(()));
                        continue;
                    }
                    undo.push((*id, self.tails.remove(id)));
                    Effect::Remove { id: *id }
                }
                Mutation::SoftDelete { .. } => Effect::None,
            };
            let frame_at = buf.len();
            let payload_at = codec::encode(&mutation, &mut buf);
            written.push((frame_at + payload_at, effect, ack));
        }
        if written.is_empty() {
            return;
        }
        let backend = backend_name(self.options.durable);
        let spans = commit_spans(
            backend,
            written.iter().map(|(_, _, ack)| ack),
            written.len(),
        );
        let started = Instant::now();
        if self.active.len > SEGMENT_HEADER
            && self.active.len + buf.len() as u64 > self.options.segment_bytes
            && let Err(error) = self.roll()
        {
            self.fail_batch(written, undo, error);
            return;
        }
        let at = self.active.len;
        let mut result = self
            .active
            .file
            .write_all_at(&buf, at)
            .map_err(StorageError::from_write);
        if result.is_ok() {
            if self.options.durable {
                result = self.active.file.sync_data().map_err(|e| {
                    self.poison(format!("fdatasync failed: {e}"));
                    StorageError::from_write(e)
                });
            } else if self.unsynced_since.is_none() {
                self.unsynced_since = Some(Instant::now());
            }
        }
        StorageCommitted {
            backend,
            batch: written.len(),
            elapsed: started.elapsed(),
        }
        .emit();
        drop(spans);
        if let Err(error) = result {
            // Cut off whatever part of the batch reached the file so the log
            // ends at the last acknowledged frame.
            if let Err(truncate) = self.active.file.set_len(at) {
                self.poison(format!("cannot truncate a failed write: {truncate}"));
            }
            self.fail_batch(written, undo, error);
            return;
        }
        self.active.len += buf.len() as u64;
        let segment = self.active.number;
        for (payload_at, effect, ack) in written {
            self.apply(effect, segment, at + payload_at as u64);
            let _ = ack.send(Ok(()));
        }
        self.reclaim();
    }

    fn fail_batch(
        &mut self,
        written: Vec<(usize, Effect, Ack)>,
        undo: Vec<(StreamId, Option<u64>)>,
        error: StorageError,
    ) {
        for (id, previous) in undo.into_iter().rev() {
            match previous {
                Some(tail) => self.tails.insert(id, tail),
                None => self.tails.remove(&id),
            };
        }
        tracing::error!(dir = %self.shared.dir.display(), error = %error, "write failed");
        fail_all(written.into_iter().map(|(_, _, ack)| ack), &error);
    }

    fn apply(&mut self, effect: Effect, segment: u32, payload_offset: u64) {
        match effect {
            Effect::Create { id, base, data } => {
                let mut index = StreamIndex {
                    base,
                    ..StreamIndex::default()
                };
                if !data.is_empty() {
                    index.records.push(Location {
                        end: base + data.len() as u64,
                        segment,
                        offset: payload_offset,
                    });
                    index.remember(data, &self.shared.recent_bytes);
                }
                self.shared
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(id, Arc::new(RwLock::new(index)));
                self.touch(id, segment);
            }
            Effect::Append { id, data } => {
                if !data.is_empty()
                    && let Some(stream) = self.shared.stream(id)
                {
                    let mut index = stream.write().unwrap_or_else(PoisonError::into_inner);
                    let end = index.tail() + data.len() as u64;
                    index.records.push(Location {
                        end,
                        segment,
                        offset: payload_offset,
                    });
                    index.remember(data, &self.shared.recent_bytes);
                }
                self.touch(id, segment);
            }
            Effect::Remove { id } => {
                let removed = self
                    .shared
                    .index
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(&id);
                if let Some(stream) = removed {
                    stream
                        .write()
                        .unwrap_or_else(PoisonError::into_inner)
                        .forget(&self.shared.recent_bytes);
                }
                for number in self.stream_segments.remove(&id).unwrap_or_default() {
                    if let Some(count) = self.segment_live.get_mut(&number) {
                        *count = count.saturating_sub(1);
                    }
                }
            }
            Effect::None => {}
        }
    }

    fn touch(&mut self, id: StreamId, segment: u32) {
        if self.stream_segments.entry(id).or_default().insert(segment) {
            *self.segment_live.entry(segment).or_default() += 1;
        }
    }

    /// Starts the next segment file.
    fn roll(&mut self) -> Result<(), StorageError> {
        self.active
            .file
            .sync_data()
            .map_err(StorageError::from_write)?;
        self.unsynced_since = None;
        let number = self.active.number + 1;
        let (file, len) = open_active(&self.shared.dir, number)?;
        let path = self.shared.dir.join(segment_name(number));
        let reader = File::open(&path).map_err(|e| StorageError::path("open segment", &path, e))?;
        self.shared
            .segments
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(number, Arc::new(reader));
        self.segment_live.entry(number).or_default();
        self.active = Active { number, file, len };
        Ok(())
    }

    /// Deletes segments at the head of the log that no stream needs. Only the
    /// head: a later segment may hold the removal of a stream whose creation
    /// lies in an earlier one.
    fn reclaim(&mut self) {
        while let Some((&number, &live)) = self.segment_live.iter().next() {
            if live > 0 || number == self.active.number {
                return;
            }
            let path = self.shared.dir.join(segment_name(number));
            if let Err(error) = std::fs::remove_file(&path) {
                tracing::warn!(file = %path.display(), %error, "cannot remove a reclaimed segment");
                return;
            }
            tracing::debug!(file = %path.display(), "reclaimed segment");
            self.segment_live.remove(&number);
            self.shared
                .segments
                .write()
                .unwrap_or_else(PoisonError::into_inner)
                .remove(&number);
        }
    }
}
