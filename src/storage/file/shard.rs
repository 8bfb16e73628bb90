//! A commit shard: a writer thread over one log, plus a sync thread in
//! `file-fast`.
//!
//! The writer takes everything queued as one batch and appends its frames
//! to the shard's log segment with one `write` (the records reach their
//! chunk files later, in larger writes: the `unwritten` module). In
//! `file-durable` it then runs
//! `fdatasync` itself, publishes the batch to readers and acknowledges it
//! ([`Publisher`]), and only then takes the next batch: everything that
//! arrived during a sync goes into the next one. Writing batch *k + 1*
//! while batch *k* syncs (the other order) was measured to be slower: the
//! writer then takes what arrived early in a sync, and what arrives later
//! waits a sync more, so batches were smaller (14 appends per `fdatasync`
//! instead of 22 at 100 streams), syncs more frequent and latency higher.
//! Since the writer waits for each sync anyway, it syncs on its own thread:
//! handing each batch to a sync thread and back cost two thread wake-ups
//! per batch. In `file-fast` nothing waits for a sync: the writer writes
//! ahead and hands batches to the sync thread, which publishes them at once
//! and syncs on a timer.
//!
//! A published batch is answered by one task on the runtime the store was
//! opened in ([`Answerer`]): answered from the writer, each append's answer
//! could unpark a worker (a `futex` call and a context switch each).
//!
//! A failed sync poisons the store: every later write is refused until a
//! restart replays the log.

use std::fs::File;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::super::codec;
use super::super::queue::{Ack, Answerer, CommitQueue, Next, commit_spans, fail_all, payload_len};
use super::super::{Mutation, StorageError, StreamId};
use super::Shared;
use super::checkpoint::LogPosition;
use super::ids::IdMap;
use super::state::{ChunkWrites, Effect, Head, Planner, TailCache, Target};
use super::unwritten::ShardBuffer;
use super::wal::{self, Segment};
use crate::metrics::event::StorageCommits;

/// Most payload bytes one batch carries.
const MAX_BATCH_BYTES: usize = 16 << 20;

/// Batches a `file-fast` writer may have written ahead of its sync thread
/// besides the one being published. One: a writer that cannot hand over
/// its batch waits, and meanwhile appends gather in the queue into one
/// larger batch. A deeper hand-off was measured (in the durable mode, when
/// it still wrote ahead): the writer then wakes for almost every append
/// and the store spends more CPU per append (futex calls and tiny batches),
/// not less.
pub const SYNC_QUEUE: usize = 1;

/// Fewest commit shards by default (one per core otherwise). Fewer shards
/// sync more appends at a time: with the server's cores to itself, two
/// shards on two cores led four at 100 streams in 11 of 11 alternated
/// pairs, median 1.11×, with a lower p99; four led only while other
/// processes took the cores (BENCHMARKS.md, sessions 7 and 11).
pub const MIN_DEFAULT_SHARDS: usize = 2;

/// A shard's queue and what it has published.
pub struct Shard {
    /// Mutations waiting for the writer.
    pub queue: CommitQueue,
    /// The log position after the last published batch. Held while a batch
    /// is published, so a checkpoint that holds it sees whole batches only.
    pub published: Mutex<LogPosition>,
    /// Published records not yet in their chunk files.
    pub buffer: ShardBuffer,
}

/// A batch written to the log, waiting for its sync.
pub struct Pending {
    start: LogPosition,
    end: LogPosition,
    file: Arc<File>,
    items: Vec<(Option<Effect>, Ack)>,
    started: Instant,
    spans: Vec<tracing::Span>,
}

fn mutation_id(mutation: &Mutation) -> StreamId {
    match mutation {
        Mutation::Create { spec, .. } => spec.id,
        Mutation::Append(append) => append.id,
        Mutation::SoftDelete { id } | Mutation::Remove { id } | Mutation::Trim { id, .. } => *id,
    }
}

/// The writer thread's state.
pub struct Writer {
    /// The store.
    pub shared: Arc<Shared>,
    /// Which shard.
    pub shard: usize,
    /// Heads and planning.
    pub planner: Planner,
    /// The segment being appended to.
    pub segment: Segment,
    /// Where a written batch goes to be synced and acknowledged.
    pub done: Done,
}

/// Who syncs, publishes and acknowledges a shard's written batches.
pub enum Done {
    /// `file-durable`: the writer itself, before it takes the next batch.
    /// It would wait for that sync anyway (see the module comment), so a
    /// sync thread would only add two thread hand-offs per batch.
    Inline(Publisher),
    /// `file-fast`: the sync thread, so the writer can write ahead.
    Thread(SyncSender<Pending>),
}

impl Writer {
    /// Commits batches until the queue closes.
    pub fn run(mut self) {
        let shared = self.shared.clone();
        let queue = &shared.shards[self.shard].queue;
        while let Next::Batch(batch) = queue.next_batch(MAX_BATCH_BYTES, None) {
            if let Some(reason) = self.shared.poisoned() {
                let error = StorageError::Unavailable(format!(
                    "storage failed earlier ({reason}); restart required"
                ));
                fail_all(batch.into_iter().map(|(_, ack)| ack), &error);
                continue;
            }
            self.shared.wait_for_replay_room();
            if let Err(error) = self.make_room() {
                fail_all(batch.into_iter().map(|(_, ack)| ack), &error);
                continue;
            }
            if let Some(pending) = self.commit(batch) {
                match &mut self.done {
                    Done::Inline(publisher) => publisher.finish(vec![pending]),
                    Done::Thread(tx) => {
                        if tx.send(pending).is_err() {
                            break;
                        }
                    }
                }
            }
            let shared = &*self.shared;
            if let Err(error) = shared.shards[self.shard]
                .buffer
                .write_due(&shared.files, &shared.dirty)
            {
                tracing::warn!(error = %error, "cannot write chunk files yet; the records stay in memory and in the log");
            }
        }
    }

    /// Writes the shard's unwritten records when they hold more than its
    /// share of `chunk_buffer_bytes`.
    ///
    /// # Errors
    /// When they cannot be written and still hold more: the batch is
    /// refused (on a full disk [`StorageError::Full`]) instead of memory
    /// growing further.
    fn make_room(&self) -> Result<(), StorageError> {
        let shared = &*self.shared;
        let buffer = &shared.shards[self.shard].buffer;
        let cap = shared.options.chunk_buffer_bytes / shared.shards.len().max(1);
        if buffer.bytes() <= cap {
            return Ok(());
        }
        match buffer.write_all(&shared.files, &shared.dirty) {
            Err(error) if buffer.bytes() > cap => Err(error),
            _ => Ok(()),
        }
    }

    fn commit(&mut self, batch: Vec<(Mutation, Ack)>) -> Option<Pending> {
        let started = Instant::now();
        let mut buf = Vec::with_capacity(batch.iter().map(|(m, _)| payload_len(m) + 64).sum());
        let mut writes = ChunkWrites::deferred();
        let mut items = Vec::with_capacity(batch.len());
        let mut undo: IdMap<Option<Head>> = IdMap::default();
        for (mutation, ack) in batch {
            let id = mutation_id(&mutation);
            undo.entry(id)
                .or_insert_with(|| self.planner.heads.snapshot(id));
            // Framed before planning, which takes the mutation (its record
            // moves into the effect uncloned); cut again if refused or a
            // no-op.
            let framed = buf.len();
            codec::encode(&mutation, &mut buf);
            match self.planner.plan(mutation, &mut writes) {
                Err(refusal) => {
                    buf.truncate(framed);
                    let _ = ack.send(Err(refusal.into_error()));
                }
                Ok(None) => {
                    buf.truncate(framed);
                    items.push((None, ack));
                }
                Ok(Some(effect)) => items.push((Some(effect), ack)),
            }
        }
        if items.is_empty() {
            return None;
        }
        let spans = commit_spans(
            self.shared.backend,
            items.iter().map(|(_, ack)| ack),
            items.len(),
        );
        if let Err(error) = self.roll_if_full(buf.len() as u64) {
            self.fail(undo, items, error, None);
            return None;
        }
        let at = self.segment.len;
        if !buf.is_empty()
            && let Err(error) = self
                .segment
                .write_ahead_zeros(at + buf.len() as u64)
                .and_then(|()| self.segment.file.write_all_at(&buf, at))
        {
            self.fail(undo, items, StorageError::from_write(error), Some(at));
            return None;
        }
        if let Err(error) = writes.apply(&self.shared.dir, &self.shared.files, &self.shared.dirty) {
            self.fail(undo, items, error, Some(at));
            return None;
        }
        self.segment.len += buf.len() as u64;
        self.shared.logged(buf.len() as u64);
        Some(Pending {
            start: LogPosition {
                seq: self.segment.seq,
                offset: at,
            },
            end: LogPosition {
                seq: self.segment.seq,
                offset: self.segment.len,
            },
            file: self.segment.file.clone(),
            items,
            started,
            spans,
        })
    }

    /// Starts the next segment when this batch would overflow the current
    /// one; the current one is synced first (the [`Publisher`] only syncs the
    /// newest).
    fn roll_if_full(&mut self, adding: u64) -> Result<(), StorageError> {
        if self.segment.len <= wal::WAL_HEADER
            || self.segment.len + adding <= self.shared.options.segment_bytes
        {
            return Ok(());
        }
        // Cut the preallocated rest first: only the newest segment may end
        // in zeros.
        if let Err(error) = self
            .segment
            .file
            .set_len(self.segment.len)
            .and_then(|()| self.segment.file.sync_data())
        {
            self.shared
                .poison(format!("fdatasync of the log failed: {error}"));
            return Err(StorageError::from_write(error));
        }
        self.segment = wal::create_segment(
            &self.shared.dir,
            self.shard as u32,
            self.segment.seq + 1,
            self.shared.options.segment_bytes,
        )?;
        // A checkpoint now lets the segment just finished go: the log holds
        // about one segment per shard, so the space of deleted streams
        // comes back within a segment.
        if self.shared.options.checkpoint_on_full_segment {
            self.shared.want_checkpoint();
        }
        Ok(())
    }

    /// Undoes a batch that could not be written: the heads go back, the
    /// log and chunk indexes are cut back to where they were, and every
    /// mutation of the batch is refused.
    fn fail(
        &mut self,
        undo: IdMap<Option<Head>>,
        items: Vec<(Option<Effect>, Ack)>,
        error: StorageError,
        log_at: Option<u64>,
    ) {
        tracing::error!(dir = %self.shared.dir.display(), error = %error, "write failed");
        for (id, previous) in undo {
            match previous {
                Some(head) => {
                    // The batch wrote no records into chunk files (they
                    // are written once published), only index entries.
                    if let Some(active) = head.active {
                        let index = super::layout::index_path(&self.shared.dir, id, active.start);
                        if let Ok(index) = std::fs::OpenOptions::new().write(true).open(index) {
                            let _ = index.set_len(
                                u64::from(active.index_entries) * super::chunk::INDEX_ENTRY,
                            );
                        }
                    }
                    self.planner.heads.insert(head);
                }
                None => {
                    self.planner.heads.remove(id);
                }
            }
        }
        if let Some(at) = log_at
            && let Err(truncate) = self.segment.file.set_len(at)
        {
            self.shared.poison(format!(
                "cannot cut a failed write from the log: {truncate}"
            ));
        }
        fail_all(items.into_iter().map(|(_, ack)| ack), &error);
    }
}

use std::os::unix::fs::FileExt;

/// Syncs, publishes and acknowledges written batches in order: on the
/// writer thread in `file-durable`, on the sync thread in `file-fast`.
pub struct Publisher {
    shared: Arc<Shared>,
    shard: usize,
    /// Recently published stream states, served to readers from memory.
    cache: TailCache,
    /// The commit histograms, resolved once (per batch they cost more
    /// than the rest of publishing a small batch).
    commits: StorageCommits,
    /// `file-fast`: the newest written log file and since when it waits for
    /// its timed sync.
    unsynced: Option<(Instant, Arc<File>)>,
    /// Sends a published batch's acknowledgements (from the runtime the
    /// store was opened in, when it has one).
    answerer: Answerer,
}

impl Publisher {
    /// The publisher of shard `shard`, answering through the runtime it is
    /// made in (see [`Answerer`]).
    pub fn new(shared: Arc<Shared>, shard: usize) -> Self {
        let cache = TailCache::new(shared.options.tail_cache_bytes / shared.shards.len().max(1));
        Self {
            commits: StorageCommits::register(shared.backend),
            shared,
            shard,
            cache,
            unsynced: None,
            answerer: Answerer::current(),
        }
    }

    /// Syncs the log behind `batches` (in `file-durable`; `file-fast` only
    /// notes it for the timer), then publishes and acknowledges them in
    /// order. A failed sync poisons the store, cuts the unsynced frames
    /// from the log and refuses every mutation of `batches`.
    fn finish(&mut self, batches: Vec<Pending>) {
        let shared = &*self.shared;
        let newest = batches.last().map(|p| p.file.clone());
        let synced = match (&newest, shared.poisoned()) {
            (_, Some(reason)) => Err(StorageError::Unavailable(format!(
                "storage failed earlier ({reason}); restart required"
            ))),
            (Some(file), None) if shared.options.durable => file.sync_data().map_err(|error| {
                shared.poison(format!("fdatasync of the log failed: {error}"));
                StorageError::from_write(error)
            }),
            (Some(file), None) => {
                if let Some((_, current)) = self.unsynced.as_mut() {
                    *current = file.clone();
                } else {
                    self.unsynced = Some((Instant::now(), file.clone()));
                }
                Ok(())
            }
            (None, None) => Ok(()),
        };
        if let Err(error) = synced {
            // Cut what was never synced, so a restart does not bring back
            // writes that were refused: each segment from the first of
            // these batches in it (several may be waiting, across a roll).
            let mut cut: Vec<u64> = Vec::new();
            for pending in &batches {
                if pending.start.seq == pending.end.seq && !cut.contains(&pending.start.seq) {
                    cut.push(pending.start.seq);
                    let _ = pending.file.set_len(pending.start.offset);
                }
            }
            for pending in batches {
                fail_all(pending.items.into_iter().map(|(_, ack)| ack), &error);
            }
            return;
        }
        let mut target = Target {
            streams: &shared.streams,
            root: &shared.dir,
            files: &shared.files,
            dirty: &shared.dirty,
            cache: Some(&mut self.cache),
            buffer: Some(&shared.shards[self.shard].buffer),
            delete_files: true,
        };
        let mut acks = Vec::with_capacity(batches.iter().map(|p| p.items.len()).sum());
        {
            let mut published = shared.shards[self.shard]
                .published
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            for pending in batches {
                let count = pending.items.len();
                for (effect, ack) in pending.items {
                    if let Some(effect) = effect
                        && let Err(error) = target.publish(effect)
                    {
                        tracing::warn!(error = %error, "cannot delete the files of removed data; they stay until deleted by hand");
                    }
                    acks.push(ack);
                }
                *published = pending.end;
                self.commits.emit(count, pending.started.elapsed());
                drop(pending.spans);
            }
        }
        // Published first: an answered append is readable.
        self.answerer.succeed(acks);
        target.evict();
    }

    /// `file-fast`: runs the timed sync of the newest written log file.
    fn sync_now(&mut self) {
        if let Some((_, file)) = self.unsynced.take()
            && let Err(error) = file.sync_data()
        {
            self.shared
                .poison(format!("fdatasync of the log failed: {error}"));
        }
    }
}

/// The `file-fast` sync thread: publishes and acknowledges batches in
/// order as they come, and syncs the log at most `sync_interval` after a
/// write.
pub fn run_syncer(mut publisher: Publisher, rx: Receiver<Pending>) {
    loop {
        let first = match &publisher.unsynced {
            Some((since, _)) => {
                let deadline = *since + publisher.shared.options.sync_interval;
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(pending) => pending,
                    Err(RecvTimeoutError::Timeout) => {
                        publisher.sync_now();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            None => match rx.recv() {
                Ok(pending) => pending,
                Err(_) => break,
            },
        };
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        publisher.finish(batches);
    }
    publisher.sync_now();
}
