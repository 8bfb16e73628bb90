//! A commit shard: a writer thread and a sync thread over one log.
//!
//! The writer takes everything queued as one batch, appends its frames to
//! the shard's log segment with one `write`, writes the records into their
//! chunk files (page cache), and hands the batch to the sync thread, which
//! runs `fdatasync`, publishes the batch to readers and acknowledges it.
//!
//! In `file-durable` the writer then waits for that sync before it takes
//! the next batch: everything that arrived during a sync goes into the next
//! one, whose own sync starts as soon as it is written. Writing batch
//! *k + 1* while batch *k* syncs (the other order) was measured to be
//! slower: the writer then takes what arrived early in a sync, and what
//! arrives later waits a sync more, so batches were smaller (14 appends per
//! `fdatasync` instead of 22 at 100 streams), syncs more frequent and
//! latency higher. In `file-fast` nothing waits for a sync: the writer
//! writes ahead and the sync thread publishes at once and syncs on a timer.
//!
//! A failed sync poisons the store: every later write is refused until a
//! restart replays the log.

use std::collections::HashMap;
use std::fs::File;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender, SyncSender};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;

use super::super::codec;
use super::super::queue::{Ack, CommitQueue, Next, commit_spans, fail_all, payload_len};
use super::super::{Mutation, StorageError, StreamId};
use super::Shared;
use super::checkpoint::LogPosition;
use super::state::{ChunkWrites, Effect, Head, Planner, TailCache, Target};
use super::wal::{self, Segment};
use crate::metrics::event::StorageCommitted;

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

/// A shard's queue and what it has published.
pub struct Shard {
    /// Mutations waiting for the writer.
    pub queue: CommitQueue,
    /// The log position after the last published batch. Held while a batch
    /// is published, so a checkpoint that holds it sees whole batches only.
    pub published: Mutex<LogPosition>,
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
    /// To the sync thread.
    pub tx: SyncSender<Pending>,
    /// From the sync thread, in `file-durable`: one message per batch it
    /// has synced (or failed), the writer's turn to take the next.
    pub turn: Receiver<()>,
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
            if let Some(pending) = self.commit(batch) {
                if self.tx.send(pending).is_err() {
                    break;
                }
                // Durable: wait for this batch's sync before taking the
                // next, so the next holds everything that arrived meanwhile.
                if self.shared.options.durable && self.turn.recv().is_err() {
                    break;
                }
            }
        }
    }

    fn commit(&mut self, batch: Vec<(Mutation, Ack)>) -> Option<Pending> {
        let started = Instant::now();
        let mut buf = Vec::with_capacity(batch.iter().map(|(m, _)| payload_len(m) + 64).sum());
        let mut writes = ChunkWrites::default();
        let mut items = Vec::with_capacity(batch.len());
        let mut undo: HashMap<StreamId, Option<Head>> = HashMap::new();
        for (mutation, ack) in batch {
            let id = mutation_id(&mutation);
            undo.entry(id)
                .or_insert_with(|| self.planner.heads.get(&id).cloned());
            match self.planner.plan(&mutation, &mut writes) {
                Err(refusal) => {
                    let _ = ack.send(Err(refusal.into_error()));
                }
                Ok(None) => items.push((None, ack)),
                Ok(Some(effect)) => {
                    codec::encode(&mutation, &mut buf);
                    items.push((Some(effect), ack));
                }
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
            && let Err(error) = self.segment.file.write_all_at(&buf, at)
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
    /// one; the current one is synced first (the sync thread only syncs the
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
    /// log and chunk files are cut back to where they were, and every
    /// mutation of the batch is refused.
    fn fail(
        &mut self,
        undo: HashMap<StreamId, Option<Head>>,
        items: Vec<(Option<Effect>, Ack)>,
        error: StorageError,
        log_at: Option<u64>,
    ) {
        tracing::error!(dir = %self.shared.dir.display(), error = %error, "write failed");
        for (id, previous) in undo {
            match previous {
                Some(head) => {
                    if let Some(active) = head.active
                        && let Ok(file) = self.shared.files.get(id, active.start)
                    {
                        let _ = file.set_len(active.len);
                        let index = super::layout::index_path(&self.shared.dir, id, active.start);
                        if let Ok(index) = std::fs::OpenOptions::new().write(true).open(index) {
                            let _ = index.set_len(
                                u64::from(active.index_entries) * super::chunk::INDEX_ENTRY,
                            );
                        }
                    }
                    self.planner.heads.insert(id, head);
                }
                None => {
                    self.planner.heads.remove(&id);
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

/// The sync thread: syncs, publishes and acknowledges batches in order.
pub fn run_syncer(shared: Arc<Shared>, shard: usize, rx: Receiver<Pending>, turn: Sender<()>) {
    let durable = shared.options.durable;
    let mut cache = TailCache::new(shared.options.tail_cache_bytes / shared.shards.len().max(1));
    let mut unsynced: Option<(Instant, Arc<File>)> = None;
    loop {
        let first = match &unsynced {
            Some((since, file)) if !durable => {
                let deadline = *since + shared.options.sync_interval;
                match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                    Ok(pending) => pending,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Err(error) = file.sync_data() {
                            shared.poison(format!("fdatasync of the log failed: {error}"));
                        }
                        unsynced = None;
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                }
            }
            _ => match rx.recv() {
                Ok(pending) => pending,
                Err(_) => break,
            },
        };
        let mut batches = vec![first];
        while let Ok(more) = rx.try_recv() {
            batches.push(more);
        }
        let newest = batches.last().map(|p| p.file.clone());
        let synced = match (&newest, shared.poisoned()) {
            (_, Some(reason)) => Err(StorageError::Unavailable(format!(
                "storage failed earlier ({reason}); restart required"
            ))),
            (Some(file), None) if durable => file.sync_data().map_err(|error| {
                shared.poison(format!("fdatasync of the log failed: {error}"));
                StorageError::from_write(error)
            }),
            (Some(file), None) => {
                if unsynced.is_none() {
                    unsynced = Some((Instant::now(), file.clone()));
                } else if let Some((_, current)) = unsynced.as_mut() {
                    *current = file.clone();
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
                if durable {
                    let _ = turn.send(());
                }
            }
            continue;
        }
        let mut target = Target {
            streams: &shared.streams,
            root: &shared.dir,
            files: &shared.files,
            dirty: &shared.dirty,
            cache: Some(&mut cache),
            delete_files: true,
        };
        {
            let mut published = shared.shards[shard]
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
                    let _ = ack.send(Ok(()));
                }
                *published = pending.end;
                StorageCommitted {
                    backend: shared.backend,
                    batch: count,
                    elapsed: pending.started.elapsed(),
                }
                .emit();
                drop(pending.spans);
                if durable {
                    let _ = turn.send(());
                }
            }
        }
        target.evict();
    }
    if let Some((_, file)) = unsynced
        && let Err(error) = file.sync_data()
    {
        shared.poison(format!("fdatasync of the log failed: {error}"));
    }
}
