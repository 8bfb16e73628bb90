//! Stream state in the file store, and how a mutation changes it.
//!
//! Each stream has a shared [`Stream`] whose [`State`] is what is committed:
//! readers, `recover` and checkpoints see only that. A shard's writer keeps
//! its own view ([`Head`], stored in the `Stream`), ahead of the committed
//! state by the batches written but not yet synced. [`Planner::plan`] turns
//! a mutation into the chunk-file writes it needs and the [`Effect`] that
//! [`publish`] applies to the committed state once the batch is durable.
//! Replay after a crash runs the same two steps for every logged mutation.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use bytes::Bytes;

use super::super::chunk_list::{self, Chunk, ChunkList};
use super::super::{ClosedBy, Mutation, ReadChunk, StorageError, StreamId};
use super::checkpoint::StreamRecord;
use super::chunk::{self, Active};
use super::files::FileCache;
use super::layout;
pub use super::refusal::Refusal;
use super::removal::{remove_chunk_files, remove_stream_files};
pub use super::tail_cache::{RecentQueue, TailCache, recent_cost};
use super::unwritten::{ShardBuffer, Unwritten};
use crate::protocol::producer::ProducerState;
use active::PackedActive;
use heads::WriterHead;
pub use heads::{Head, Heads};
pub use streams::StreamSet;
pub use writes::{ChunkWrites, Dirty};

mod active;
mod heads;
mod streams;
mod writes;

/// Most bytes of recent records kept per stream, counting
/// [`RECENT_ENTRY_COST`] per record besides its payload.
pub(super) const RECENT_PER_STREAM: usize = 32 << 10;
/// What keeping a record costs besides its payload: the allocator's header
/// and rounding, the `Bytes` and the queue slot. Counted so that the cache's
/// real memory, not just its payload, stays within its budget.
pub(super) const RECENT_ENTRY_COST: usize = 64;
/// Records larger than this are not kept among the recent ones.
pub(super) const RECENT_MAX_RECORD: usize = 16 << 10;

/// A checkpoint drops the recent records of streams not appended to for
/// this long (see [`State::release_idle_recent`]): their frames are in
/// their chunk files by then, and readers at the tail of a live stream
/// read its records well within it.
pub(super) const RECENT_IDLE_MS: i64 = 1_000;

/// A stream of the file store.
pub struct Stream {
    /// The stream instance.
    pub id: StreamId,
    /// What is committed.
    pub state: RwLock<State>,
    /// Committed frames not yet written to its chunk files (see the
    /// `unwritten` module). Locked after `state`, never before it.
    pub unwritten: Mutex<Unwritten>,
    /// Its shard writer's view, ahead of `state` (see [`Head`]).
    head: WriterHead,
}

impl Stream {
    /// A stream with state `state` and nothing unwritten.
    pub fn new(id: StreamId, state: State) -> Self {
        Self {
            id,
            state: RwLock::new(state),
            unwritten: Mutex::new(Unwritten::default()),
            head: WriterHead::default(),
        }
    }
}

/// A stream's committed state.
pub struct State {
    /// Its spec in the compact form checkpoints store (see the `spec`
    /// module; an older checkpoint's JSON is converted on load).
    pub spec: Box<[u8]>,
    /// Its tail.
    pub tail: u64,
    /// Its retained chunks.
    pub chunks: ChunkList,
    /// The committed part of its last chunk's file and index (see
    /// [`State::active`]).
    active: PackedActive,
    /// Its writer state besides the tail, and where its own data begins
    /// when not at 0 (a fork), once it has any.
    writer: Option<Box<WriterExtras>>,
    /// Soft-deleted.
    pub soft_deleted: bool,
    /// The newest records, reaching the tail without a gap: `(end, data)`.
    pub recent: RecentQueue,
    /// What `recent` costs: its payload plus a fixed cost per record
    /// (at most [`RECENT_PER_STREAM`] and one more record, see
    /// [`recent_cost`]).
    pub recent_bytes: u16,
    /// Its place in its shard's [`TailCache`] order, while it has one.
    pub cached_at: Option<NonZeroU32>,
}

/// A stream's writer state besides its tail, boxed in [`State`]: most
/// streams are never closed, never see a producer or a `Stream-Seq` and
/// are no fork, and every stream's state stays in memory.
#[derive(Default)]
struct WriterExtras {
    /// Where the stream's own data begins (a fork's offset).
    base: u64,
    closed: Option<Option<ClosedBy>>,
    producers: Vec<(String, ProducerState)>,
    stream_seq: Option<String>,
}

impl State {
    /// A new stream's state: no data yet, starting at `base`.
    pub fn new(spec: Box<[u8]>, base: u64, closed: Option<Option<ClosedBy>>) -> Self {
        Self {
            spec,
            tail: base,
            chunks: ChunkList::default(),
            active: PackedActive::default(),
            writer: WriterExtras::boxed(base, closed, Vec::new(), None),
            soft_deleted: false,
            recent: RecentQueue::default(),
            recent_bytes: 0,
            cached_at: None,
        }
    }

    /// The committed part of its last chunk's file and index.
    pub fn active(&self) -> Option<Active> {
        self.active.get()
    }

    /// Sets [`State::active`].
    pub fn set_active(&mut self, active: Option<Active>) {
        self.active = PackedActive::pack(active);
    }

    /// Where its own data begins.
    pub fn base(&self) -> u64 {
        self.writer.as_ref().map_or(0, |writer| writer.base)
    }

    /// Closed, and by whom.
    pub fn closed(&self) -> &Option<Option<ClosedBy>> {
        const OPEN: &Option<Option<ClosedBy>> = &None;
        self.writer.as_ref().map_or(OPEN, |writer| &writer.closed)
    }

    /// Producer states.
    pub fn producers(&self) -> &[(String, ProducerState)] {
        self.writer
            .as_ref()
            .map_or(&[], |writer| writer.producers.as_slice())
    }

    /// The `Stream-Seq` watermark.
    pub fn stream_seq(&self) -> Option<&str> {
        self.writer.as_ref()?.stream_seq.as_deref()
    }

    /// The writer state besides the tail, created when first changed.
    fn writer_mut(&mut self) -> &mut WriterExtras {
        self.writer.get_or_insert_with(Box::default)
    }

    /// Where the retained data starts.
    pub fn head(&self) -> u64 {
        self.chunks.head(self.tail).max(self.base())
    }

    /// Whether retention dropped data.
    pub fn trimmed(&self) -> bool {
        self.head() > self.base()
    }

    /// The state as a checkpoint keeps it.
    pub fn record(&self, id: StreamId) -> StreamRecord {
        StreamRecord {
            id,
            spec: self.spec.clone(),
            base: self.base(),
            tail: self.tail,
            closed: self.closed().clone(),
            producers: self.producers().to_vec(),
            stream_seq: self.stream_seq().map(str::to_owned),
            soft_deleted: self.soft_deleted,
            chunks: self.chunks.chunks().to_vec(),
            active: self.active(),
        }
    }

    /// A state restored from a checkpoint.
    pub fn from_record(record: StreamRecord) -> Self {
        Self {
            spec: super::spec::compacted(record.spec),
            tail: record.tail,
            chunks: ChunkList::from_chunks(record.chunks),
            active: PackedActive::pack(record.active),
            writer: WriterExtras::boxed(
                record.base,
                record.closed,
                record.producers,
                record.stream_seq,
            ),
            soft_deleted: record.soft_deleted,
            recent: RecentQueue::default(),
            recent_bytes: 0,
            cached_at: None,
        }
    }

    /// Drops the recent records if the stream was last appended to more
    /// than `idle_ms` before `now_ms` (a checkpoint's sweep, with the
    /// records' frames in their chunk files by then). Their cost stays in
    /// `recent_bytes`, and so in the [`TailCache`]'s count, until the cache
    /// next touches the stream: only its owner changes that count. An idle
    /// stream then keeps neither the records nor their queue, allocated
    /// among the freed transients of the appends that made them.
    pub fn release_idle_recent(&mut self, now_ms: i64, idle_ms: i64) {
        if self.holds_idle_recent(now_ms, idle_ms) {
            self.recent.release();
        }
    }

    /// Whether [`State::release_idle_recent`] would drop anything.
    pub fn holds_idle_recent(&self, now_ms: i64, idle_ms: i64) -> bool {
        let active = self.chunks.active();
        self.recent.is_allocated() && active.is_none_or(|c| now_ms - c.last_write_ms > idle_ms)
    }

    /// Serves `[from, until)` from the recent records, if they cover it.
    pub fn read_recent(&self, from: u64, until: u64, max_bytes: usize) -> Option<ReadChunk> {
        let (first_end, first) = self.recent.front()?;
        if from < first_end - first.len() as u64 {
            return None;
        }
        let mut chunk = ReadChunk::empty(from);
        let mut taken = 0usize;
        for (end, data) in self.recent.iter() {
            let start = end - data.len() as u64;
            if *end <= from {
                continue;
            }
            if start >= until {
                break;
            }
            let part = ReadChunk::part(start, data.len(), from, until);
            taken += chunk.push(start, part.clone(), data.slice(part));
            if taken >= max_bytes {
                break;
            }
        }
        Some(chunk)
    }
}

impl WriterExtras {
    /// The extras holding these values; `None` when all are unset.
    fn boxed(
        base: u64,
        closed: Option<Option<ClosedBy>>,
        producers: Vec<(String, ProducerState)>,
        stream_seq: Option<String>,
    ) -> Option<Box<Self>> {
        let set = base != 0 || closed.is_some() || !producers.is_empty() || stream_seq.is_some();
        set.then(|| {
            Box::new(Self {
                base,
                closed,
                producers,
                stream_seq,
            })
        })
    }
}

/// A committed append's changes to the chunk layout.
#[derive(Clone, Debug)]
pub struct Written {
    /// The record.
    pub data: Bytes,
    /// It started a new chunk.
    pub new_chunk: bool,
    /// The chunk file's state after it.
    pub active: Active,
}

/// What a written mutation does to the committed state.
pub enum Effect {
    /// A new stream, with its initial record if any.
    Create {
        stream: Arc<Stream>,
        written: Option<Written>,
    },
    /// An append and/or writer-state change.
    Append {
        stream: Arc<Stream>,
        written: Option<Written>,
        producer: Option<(String, ProducerState)>,
        stream_seq: Option<String>,
        close: Option<Option<ClosedBy>>,
    },
    /// Soft-deleted.
    SoftDelete { stream: Arc<Stream> },
    /// Removed: forgotten, its files deleted.
    Remove { stream: Arc<Stream> },
    /// Chunks dropped from its head.
    Trim { stream: Arc<Stream>, before: u64 },
}

/// Turns mutations into chunk writes and effects; owns the heads.
pub struct Planner {
    /// The writer's view of every stream of the shard.
    pub heads: Heads,
    /// Chunk size (bytes of chunk file).
    pub chunk_bytes: u64,
}

impl Planner {
    fn append_record(
        head: &mut Head,
        data: Bytes,
        chunk_bytes: u64,
        writes: &mut ChunkWrites,
    ) -> Written {
        let id = head.stream.id;
        let pos = head.tail;
        let len = data.len() as u64;
        let used = head.active.map(|a| a.len);
        let new_chunk = chunk_list::starts_new_chunk(used, chunk::FRAME_HEADER + len, chunk_bytes);
        if new_chunk {
            head.active = Some(Active::new(pos));
            writes.created.push((id, pos));
            writes.frames.remove(&(id, pos));
        }
        let active = head.active.get_or_insert_with(|| Active::new(pos));
        let offset = active.len;
        if let Some(entry) = active.add(pos, len) {
            writes.index.push((id, active.start, entry));
        }
        if writes.defer_frames {
            head.tail += len;
            return Written {
                data,
                new_chunk,
                active: *active,
            };
        }
        let frames = writes
            .frames
            .entry((id, active.start))
            .or_insert_with(|| (offset, Vec::new()));
        chunk::encode_frame(&mut frames.1, pos, &data);
        head.tail += len;
        Written {
            data,
            new_chunk,
            active: *active,
        }
    }

    /// Plans `mutation`: the chunk writes go to `writes`; `Ok(None)` when it
    /// changes nothing (a removal of an unknown stream).
    ///
    /// # Errors
    /// The [`Refusal`] of an append the store does not accept.
    pub fn plan(
        &mut self,
        mutation: Mutation,
        writes: &mut ChunkWrites,
    ) -> Result<Option<Effect>, Refusal> {
        Ok(Some(match mutation {
            Mutation::Create { spec, data, closed } => {
                let state = State::new(
                    super::spec::encode(&spec),
                    spec.base,
                    closed.then_some(None),
                );
                let stream = Arc::new(Stream::new(spec.id, state));
                let mut head = Head {
                    stream: stream.clone(),
                    tail: spec.base,
                    active: None,
                };
                let written = (!data.is_empty())
                    .then(|| Self::append_record(&mut head, data, self.chunk_bytes, writes));
                self.heads.insert(head);
                Effect::Create { stream, written }
            }
            Mutation::Append(append) => {
                let mut head = self
                    .heads
                    .snapshot(append.id)
                    .ok_or(Refusal::Unknown(append.id))?;
                if head.tail != append.start {
                    return Err(Refusal::OutOfOrder {
                        id: append.id,
                        start: append.start,
                        tail: head.tail,
                    });
                }
                let written = (!append.data.is_empty())
                    .then(|| Self::append_record(&mut head, append.data, self.chunk_bytes, writes));
                head.save();
                Effect::Append {
                    stream: head.stream,
                    written,
                    producer: append.producer,
                    stream_seq: append.stream_seq,
                    close: append.close,
                }
            }
            Mutation::SoftDelete { id } => match self.heads.stream(id) {
                Some(stream) => Effect::SoftDelete {
                    stream: stream.clone(),
                },
                None => return Ok(None),
            },
            Mutation::Remove { id } => match self.heads.remove(id) {
                Some(stream) => Effect::Remove { stream },
                None => return Ok(None),
            },
            Mutation::Trim { id, before } => match self.heads.snapshot(id) {
                Some(mut head) => {
                    if before >= head.tail {
                        // The chunk being written goes too: the next
                        // record starts a new one.
                        head.active = None;
                        // Past the tail, the stream continues at `before`.
                        head.tail = before;
                        head.save();
                    }
                    Effect::Trim {
                        stream: head.stream,
                        before,
                    }
                }
                None => return Ok(None),
            },
        }))
    }
}

/// Where published effects land.
pub struct Target<'a> {
    /// Every committed stream.
    pub streams: &'a RwLock<StreamSet>,
    /// The data directory.
    pub root: &'a Path,
    /// Open chunk files.
    pub files: &'a FileCache,
    /// What the next checkpoint syncs.
    pub dirty: &'a Mutex<Dirty>,
    /// Recent records, if kept (not during replay).
    pub cache: Option<&'a mut TailCache>,
    /// Where published records' frames wait for their chunk files (the
    /// commit path, and a read-only replay); `None` when the planned writes
    /// wrote them.
    pub buffer: Option<&'a ShardBuffer>,
    /// Delete files (not when reading beside a running server).
    pub delete_files: bool,
}

fn apply_written(
    stream: &Arc<Stream>,
    state: &mut State,
    written: &Written,
    now: i64,
    buffer: Option<&ShardBuffer>,
) -> u64 {
    if let Some(buffer) = buffer {
        let frame = chunk::FRAME_HEADER + written.data.len() as u64;
        let offset = written.active.len - frame;
        buffer.push(
            stream,
            written.active.start,
            offset,
            state.tail,
            &written.data,
        );
    }
    if written.new_chunk {
        state.chunks.start_chunk(state.tail, now);
    } else {
        state.chunks.touch(now);
    }
    state.tail += written.data.len() as u64;
    state.set_active(Some(written.active));
    state.tail
}

impl Target<'_> {
    /// Applies a durable effect to the committed state.
    ///
    /// # Errors
    /// When files of a removed stream or trimmed chunk cannot be deleted.
    pub fn publish(&mut self, effect: Effect) -> Result<(), StorageError> {
        let now = chunk_list::now_ms();
        match effect {
            Effect::Create { stream, written } => {
                if let Some(written) = written {
                    let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
                    let end = apply_written(&stream, &mut state, &written, now, self.buffer);
                    if let Some(cache) = self.cache.as_deref_mut() {
                        cache.remember(&stream, &mut state, end, written.data);
                    }
                }
                self.streams
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .insert(stream);
            }
            Effect::Append {
                stream,
                written,
                producer,
                stream_seq,
                close,
            } => {
                let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
                if let Some(written) = written {
                    let end = apply_written(&stream, &mut state, &written, now, self.buffer);
                    if let Some(cache) = self.cache.as_deref_mut() {
                        cache.remember(&stream, &mut state, end, written.data);
                    }
                }
                if let Some((id, next)) = producer {
                    let producers = &mut state.writer_mut().producers;
                    match producers.iter_mut().find(|(p, _)| *p == id) {
                        Some(slot) => slot.1 = next,
                        None => producers.push((id, next)),
                    }
                }
                if stream_seq.is_some() {
                    state.writer_mut().stream_seq = stream_seq;
                }
                if close.is_some() && state.closed().is_none() {
                    state.writer_mut().closed = close;
                }
            }
            Effect::SoftDelete { stream } => {
                stream
                    .state
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .soft_deleted = true;
            }
            Effect::Remove { stream } => {
                self.streams
                    .write()
                    .unwrap_or_else(PoisonError::into_inner)
                    .remove(stream.id);
                {
                    let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
                    if let Some(buffer) = self.buffer {
                        buffer.discard(&stream, |_| false);
                    }
                    match self.cache.as_deref_mut() {
                        Some(cache) => cache.forget(&mut state),
                        None => state.recent.release(),
                    }
                }
                self.files.forget(stream.id, None);
                if self.delete_files {
                    remove_stream_files(self.root, stream.id, self.files, self.dirty)?;
                }
            }
            Effect::Trim { stream, before } => {
                let dropped: Vec<Chunk> = {
                    let mut state = stream.state.write().unwrap_or_else(PoisonError::into_inner);
                    // Past the tail, the stream continues at `before`.
                    state.tail = state.tail.max(before);
                    let tail = state.tail;
                    let dropped = state.chunks.trim(before, tail);
                    if state.chunks.active().map(|c| c.start) != state.active().map(|a| a.start) {
                        state.set_active(None);
                    }
                    let head = state.head();
                    while state.recent.front().is_some_and(|(end, _)| *end <= head) {
                        if let Some((_, old)) = state.recent.pop_front() {
                            state.recent_bytes -= recent_cost(old.len() + RECENT_ENTRY_COST);
                            if let Some(cache) = self.cache.as_deref_mut() {
                                cache.used -= old.len() + RECENT_ENTRY_COST;
                            }
                        }
                    }
                    dropped
                };
                if let Some(last) = dropped.last() {
                    if let Some(buffer) = self.buffer {
                        buffer.discard(&stream, |chunk| chunk > last.start);
                    }
                    self.files.forget(stream.id, Some(last.start + 1));
                }
                if self.delete_files {
                    for chunk in &dropped {
                        remove_chunk_files(self.root, stream.id, chunk.start)?;
                    }
                    if !dropped.is_empty() {
                        self.dirty
                            .lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .dirs
                            .insert(layout::stream_dir(self.root, stream.id));
                    }
                }
            }
        }
        Ok(())
    }

    /// Evicts recent records beyond the cache's budget.
    pub fn evict(&mut self) {
        if let Some(cache) = self.cache.as_deref_mut() {
            cache.evict();
        }
    }
}
