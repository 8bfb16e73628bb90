//! The writer thread of a database. Batches of appends are acknowledged
//! once they are in the acknowledgement log ([`super::log`]): the writer
//! writes a batch and hands it to the sync thread ([`super::syncer`]), which
//! syncs and acknowledges it while the writer writes the next one; every
//! [`APPLY_AFTER`] (or sooner when much is waiting, or before any other
//! mutation) the logged appends move into redb in one write transaction,
//! after which the log starts over. Other mutations, and batches too big to
//! log, are one redb transaction each, as before.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError};
use std::time::{Duration, Instant};

use redb::{ReadableTable, WriteTransaction};

use super::block::{BLOCK_BYTES, BlockBuilder};
use super::load::Head;
use super::log::AckLog;
use super::mover::Mover;
use super::reopen::Retry;
use super::shard::Shared;
use super::syncer::{self, SyncHandle, Written};
use super::tables::{LOG_APPLIED, LOG_STATE, StoredState, Tables, db_error, load_state};
use crate::metrics::event::StorageCommits;
use crate::storage::chunk_list;
use crate::storage::queue::{Ack, Answerer, Next, commit_spans, fail_all, payload_len};
use crate::storage::{Append, Mutation, StorageError, StreamId};

/// Most payload bytes one transaction commits.
pub(super) const MAX_BATCH_BYTES: usize = 16 << 20;

/// Most payload bytes of a batch that goes through the log; bigger batches
/// are written to redb directly (logging them would write them twice).
const MAX_LOGGED_BATCH_BYTES: usize = 1 << 20;

/// How long a logged append waits, at most, before it moves into redb.
const APPLY_AFTER: Duration = Duration::from_millis(100);

/// Logged payload bytes that make the writer move them into redb at once.
const APPLY_BYTES: usize = 4 << 20;

pub(super) struct Writer {
    pub(super) shared: Arc<Shared>,
    pub(super) heads: HashMap<StreamId, Head>,
    pub(super) chunk_bytes: u64,
    /// The log file being written.
    pub(super) log: AckLog,
    /// The other log file: its appends are moving into redb (or are in it).
    pub(super) spare: AckLog,
    /// Which of the two files `log` is, for the sync thread.
    pub(super) file: usize,
    /// Whether every append of `spare` is in redb, so it may start over.
    pub(super) spare_free: bool,
    /// The move into redb in flight on its own thread, if any.
    pub(super) mover: Option<Mover>,
    /// Acknowledged appends in the log, not yet in redb, in log order,
    /// with when they were logged (Unix ms).
    pub(super) pending: Vec<(Append, i64)>,
    /// Payload bytes written into the log since it last started over.
    pub(super) pending_bytes: usize,
    /// Tails of the streams with appends written into the log.
    pub(super) logged: HashMap<StreamId, u64>,
    /// When the oldest append written into the log was taken.
    pub(super) oldest: Option<Instant>,
    /// The sync thread (none before [`Writer::start_syncer`]).
    pub(super) sync: Option<SyncHandle>,
    /// A sync failed: the batches written after it failed too.
    pub(super) sync_failed: bool,
    /// A log write failed and redb could not take the pending appends
    /// since: nothing more is logged until it can.
    pub(super) log_broken: bool,
    /// The commit histograms, resolved once.
    commits: StorageCommits,
    /// Whether and when to reopen the database after a failed commit.
    pub(super) retry: Retry,
}

/// A mutation to commit: its acknowledgement (none when it was
/// acknowledged from the log) and when it was written (Unix ms).
pub(super) type Item = (Mutation, Option<Ack>, i64);

/// Whether a batch goes through the log: appends only, not too big.
fn loggable(batch: &[(Mutation, Ack)]) -> bool {
    let mut bytes = 0usize;
    batch.iter().all(|(mutation, _)| match mutation {
        Mutation::Append(append) => {
            bytes += append.data.len();
            bytes <= MAX_LOGGED_BATCH_BYTES
        }
        _ => false,
    })
}

impl Writer {
    pub(super) fn new(
        shared: Arc<Shared>,
        heads: HashMap<StreamId, Head>,
        chunk_bytes: u64,
        [log, spare]: [AckLog; 2],
    ) -> Self {
        Self {
            shared,
            heads,
            chunk_bytes,
            log,
            spare,
            file: 0,
            spare_free: true,
            mover: None,
            pending: Vec::new(),
            pending_bytes: 0,
            logged: HashMap::new(),
            oldest: None,
            log_broken: false,
            sync: None,
            sync_failed: false,
            commits: StorageCommits::register("acid"),
            retry: Retry::default(),
        }
    }

    /// Starts the sync thread of the log and the thread that commits moves
    /// into redb.
    ///
    /// # Errors
    /// When the log cannot be reopened for it or a thread not started.
    pub(super) fn start_syncer(&mut self) -> Result<(), StorageError> {
        let mut files = [self.log.sync_handle()?, self.spare.sync_handle()?];
        if self.file == 1 {
            files.swap(0, 1);
        }
        self.mover = Some(Mover::start(self.shared.clone())?);
        // A rendezvous: the writer writes one batch ahead of the sync, then
        // waits, so what arrives meanwhile gathers into the next batch.
        let (jobs, receive_jobs) = std::sync::mpsc::sync_channel(0);
        let (send_done, done) = std::sync::mpsc::channel();
        let shared = self.shared.clone();
        let answerer = Answerer::current();
        let thread = std::thread::Builder::new()
            .name("ds-acid-sync".into())
            .spawn(move || syncer::run(shared, files, answerer, receive_jobs, send_done))
            .map_err(StorageError::Io)?;
        self.sync = Some(SyncHandle {
            jobs,
            done,
            in_flight: 0,
            last_batch: 0,
            thread,
        });
        Ok(())
    }

    pub(super) fn run(mut self) {
        self.serve();
        if let Some(sync) = self.sync.take() {
            let SyncHandle { jobs, thread, .. } = sync;
            drop(jobs);
            let _ = thread.join();
        }
        if let Some(mover) = self.mover.take() {
            mover.stop();
        }
    }

    fn serve(&mut self) {
        loop {
            self.gather();
            if self.collect_synced() {
                self.apply_logged();
            }
            let deadline = self.oldest.map(|t| t + APPLY_AFTER);
            match self.shared.queue.next_batch(MAX_BATCH_BYTES, deadline) {
                Next::Batch(batch) if !self.log_broken && loggable(&batch) => {
                    self.log_batch(batch);
                    let due = self.oldest.is_some_and(|t| t.elapsed() >= APPLY_AFTER);
                    if due || self.pending_bytes >= APPLY_BYTES {
                        self.start_move();
                    }
                }
                Next::Batch(batch) => self.commit_with_pending(batch),
                // Due while nothing waits: the move goes to the mover
                // thread like any other, so appends arriving while redb
                // commits are logged meanwhile instead of waiting for it.
                Next::Idle => self.start_move(),
                Next::Closed => {
                    self.apply_logged();
                    return;
                }
            }
        }
    }

    /// Moves the pending appends into redb (errors are logged; they stay
    /// pending, safe in the log, and are tried again later).
    pub(super) fn apply_logged(&mut self) {
        if let Err(error) = self.commit_pending_and(Vec::new()) {
            self.move_failed(&error);
        }
    }

    /// Commits the pending appends and `batch` in one transaction (a
    /// failure is answered to `batch` and logged by [`Writer::commit`]).
    fn commit_with_pending(&mut self, batch: Vec<(Mutation, Ack)>) {
        let _ = self.commit_pending_and(batch);
    }

    /// One transaction of the pending appends (already acknowledged) and
    /// then `batch`; on success the log starts over. On failure `batch` is
    /// answered with the error and the pending appends stay pending.
    fn commit_pending_and(&mut self, batch: Vec<(Mutation, Ack)>) -> Result<(), StorageError> {
        self.finish_move();
        self.settle();
        if self.pending.is_empty() && batch.is_empty() && !self.log_broken {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        let now = chunk_list::now_ms();
        let items = pending
            .iter()
            .map(|(append, ms)| (Mutation::Append(append.clone()), None, *ms))
            .chain(batch.into_iter().map(|(m, ack)| (m, Some(ack), now)))
            .collect();
        match self.commit(items, !pending.is_empty()) {
            Ok(()) => {
                self.pending_bytes = 0;
                self.logged.clear();
                self.oldest = None;
                self.log.restart();
                self.spare_free = true;
                self.log_broken = false;
                Ok(())
            }
            Err(error) => {
                self.pending = pending;
                Err(error)
            }
        }
    }

    /// Validates a batch of appends, logs it, and acknowledges it.
    fn log_batch(&mut self, batch: Vec<(Mutation, Ack)>) {
        let bytes = batch.iter().map(|(m, _)| payload_len(m)).sum();
        if self.log.is_nearly_full(bytes)
            && let Err(error) = self.commit_pending_and(Vec::new())
        {
            fail_all(batch.into_iter().map(|(_, ack)| ack), &error);
            return;
        }
        let mut accepted = Vec::with_capacity(batch.len());
        for (mutation, ack) in batch {
            let Mutation::Append(append) = mutation else {
                continue;
            };
            let tail = match self.logged.get(&append.id) {
                Some(&tail) => tail,
                None => match self.heads.get(&append.id) {
                    Some(head) => head.tail,
                    None => {
                        let _ = ack.send(Err(StorageError::UnknownStream(append.id)));
                        continue;
                    }
                },
            };
            if tail != append.start {
                let _ = ack.send(Err(StorageError::OutOfOrder {
                    id: append.id,
                    start: append.start,
                    tail,
                }));
                continue;
            }
            self.logged
                .insert(append.id, append.start + append.data.len() as u64);
            accepted.push((append, ack));
        }
        if accepted.is_empty() {
            return;
        }
        let started = Instant::now();
        if let Err(error) = self.log.write(accepted.iter().map(|(append, _)| append)) {
            tracing::error!(path = %self.log.path().display(), error = %error, "log write failed");
            fail_all(accepted.into_iter().map(|(_, ack)| ack), &error);
            // What the failed write left in the log must never be replayed:
            // a commit (of the pending appends, or of nothing) marks its
            // generation applied, and the log starts a new one.
            self.sync_failed = true;
            self.apply_logged();
            return;
        }
        self.oldest.get_or_insert(started);
        self.pending_bytes += accepted.iter().map(|(a, _)| a.data.len()).sum::<usize>();
        let written = Written {
            generation: self.log.generation(),
            file: self.file,
            appends: accepted,
            started,
        };
        self.hand_to_syncer(written);
    }

    /// Commits `batch` in one transaction and answers its acknowledgements;
    /// `moves_logged` when it holds every logged append, whose copies in
    /// memory then go before anything is acknowledged (a reader who saw
    /// this commit answered, say a trim, must not meet them).
    pub(super) fn commit(
        &mut self,
        batch: Vec<Item>,
        moves_logged: bool,
    ) -> Result<(), StorageError> {
        if let Err(error) = self.ensure_database() {
            fail_all(batch.into_iter().filter_map(|(_, ack, _)| ack), &error);
            return Err(error);
        }
        let before = self.heads.clone();
        let mut accepted = Vec::with_capacity(batch.len());
        let mut trimmed = Vec::new();
        let spans = commit_spans(
            "acid",
            batch.iter().filter_map(|(_, ack, _)| ack.as_ref()),
            batch.len(),
        );
        let started = Instant::now();
        let generation = self.log.generation();
        let outcome = self
            .stage(batch, generation, &mut accepted, &mut trimmed)
            .and_then(|txn| txn.commit().map_err(db_error));
        if !accepted.is_empty() {
            self.commits.emit(accepted.len(), started.elapsed());
        }
        drop(spans);
        match outcome {
            Ok(()) => {
                self.retry = Retry::default();
                if moves_logged {
                    self.shared
                        .unapplied
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .clear();
                }
                if !trimmed.is_empty() {
                    let mut heads = self
                        .shared
                        .trimmed
                        .write()
                        .unwrap_or_else(PoisonError::into_inner);
                    for (id, head) in trimmed {
                        match head {
                            Some(head) => heads.insert(id, head),
                            None => heads.remove(&id),
                        };
                    }
                }
                for ack in accepted {
                    let _ = ack.send(Ok(()));
                }
                Ok(())
            }
            Err(error) => {
                self.heads = before;
                if self.retry.failed(&error) {
                    tracing::error!(path = %self.shared.path.display(), error = %error,
                        "transaction failed");
                }
                fail_all(accepted, &error);
                Err(error)
            }
        }
    }

    /// Adds a record to the stream's block, sealing the current chunk (and
    /// closing the block: a block never spans two chunks) first when the
    /// record does not fit in it.
    fn put_record(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        data: &[u8],
        now: i64,
    ) -> Result<(), StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(());
        };
        let used = head.chunk_start.map(|start| head.tail - start);
        if chunk_list::starts_new_chunk(used, data.len() as u64, self.chunk_bytes) {
            tables.close_block(id)?;
            if let Some(start) = head.chunk_start {
                tables
                    .chunks
                    .insert((id, start), state.last_write_ms)
                    .map_err(db_error)?;
            }
            head.chunk_start = Some(head.tail);
        }
        let end = head.tail + data.len() as u64;
        let block = tables
            .building
            .entry(id)
            .or_insert_with(|| BlockBuilder::new(head.tail));
        block.push(data)?;
        if block.payload_len() >= BLOCK_BYTES {
            tables.close_block(id)?;
        }
        head.tail = end;
        state.tail = end;
        state.chunk_start = head.chunk_start;
        state.last_write_ms = now;
        Ok(())
    }

    /// Drops the chunks of `id` that end at or before `before`; returns the
    /// new head.
    fn trim(
        &mut self,
        tables: &mut Tables<'_>,
        id: StreamId,
        state: &mut StoredState,
        before: u64,
    ) -> Result<u64, StorageError> {
        let Some(head) = self.heads.get_mut(&id) else {
            return Ok(state.tail);
        };
        // Past the tail, everything goes and the stream continues at
        // `before`.
        let moved = before > head.tail;
        if moved {
            head.tail = before;
            state.tail = before;
        }
        let mut sealed = Vec::new();
        for entry in tables
            .chunks
            .range((id, 0)..=(id, u64::MAX))
            .map_err(db_error)?
        {
            let (key, _) = entry.map_err(db_error)?;
            sealed.push(key.value().1);
        }
        let active = head.chunk_start;
        let mut starts: Vec<u64> = sealed.clone();
        starts.extend(active);
        let end_of = |i: usize| starts.get(i + 1).copied().unwrap_or(head.tail);
        let drop = (0..starts.len())
            .find(|&i| end_of(i) > before)
            .unwrap_or(starts.len());
        let new_head = starts.get(drop).copied().unwrap_or(head.tail);
        let current = state.head.unwrap_or(new_head);
        if drop == 0 && !moved {
            return Ok(current);
        }
        tables.close_block(id)?;
        for &start in sealed.iter().take(drop) {
            tables.chunks.remove((id, start)).map_err(db_error)?;
        }
        if drop == starts.len() {
            head.chunk_start = None;
            state.chunk_start = None;
        }
        tables.drop_records(id, new_head)?;
        state.head = Some(new_head);
        Ok(new_head)
    }

    /// Applies a batch in one transaction, left to commit, which records
    /// the log's frames up to `generation` as applied. Mutations refused on
    /// their own (out of order, unknown stream) are answered at once and
    /// left out.
    pub(super) fn stage(
        &mut self,
        batch: Vec<Item>,
        generation: u64,
        accepted: &mut Vec<Ack>,
        trimmed: &mut Vec<(StreamId, Option<u64>)>,
    ) -> Result<WriteTransaction, StorageError> {
        let txn = self.shared.db.begin_write()?;
        {
            let mut tables = Tables::open(&txn)?;
            let mut dirty: HashMap<StreamId, StoredState> = HashMap::new();
            for (mutation, ack, written_ms) in batch {
                match mutation {
                    Mutation::Create { spec, data, closed } => {
                        let json = serde_json::to_vec(&spec)
                            .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                        tables
                            .specs
                            .insert(spec.id, json.as_slice())
                            .map_err(db_error)?;
                        let mut state = StoredState {
                            tail: spec.base,
                            closed,
                            ..StoredState::default()
                        };
                        self.heads.insert(
                            spec.id,
                            Head {
                                tail: spec.base,
                                chunk_start: None,
                            },
                        );
                        if !data.is_empty() {
                            self.put_record(&mut tables, spec.id, &mut state, &data, written_ms)?;
                        }
                        dirty.insert(spec.id, state);
                    }
                    Mutation::Append(append) => {
                        match self.heads.get(&append.id) {
                            None => {
                                if let Some(ack) = ack {
                                    let _ = ack.send(Err(StorageError::UnknownStream(append.id)));
                                }
                                continue;
                            }
                            Some(head) if head.tail != append.start => {
                                if let Some(ack) = ack {
                                    let _ = ack.send(Err(StorageError::OutOfOrder {
                                        id: append.id,
                                        start: append.start,
                                        tail: head.tail,
                                    }));
                                }
                                continue;
                            }
                            Some(_) => {}
                        }
                        load_state(append.id, &tables.states, &mut dirty)?;
                        let mut state = dirty.remove(&append.id).unwrap_or_default();
                        if !append.data.is_empty() {
                            self.put_record(
                                &mut tables,
                                append.id,
                                &mut state,
                                &append.data,
                                written_ms,
                            )?;
                        }
                        if let Some((producer, next)) = &append.producer {
                            tables
                                .producers
                                .insert((append.id, producer.as_str()), (next.epoch, next.last_seq))
                                .map_err(db_error)?;
                        }
                        if append.stream_seq.is_some() {
                            state.stream_seq = append.stream_seq;
                        }
                        if let Some(by) = append.close
                            && !state.closed
                        {
                            state.closed = true;
                            state.closed_by = by;
                        }
                        dirty.insert(append.id, state);
                    }
                    Mutation::SoftDelete { id } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            dirty.entry(id).or_default().soft_deleted = true;
                        }
                    }
                    Mutation::Remove { id } => {
                        dirty.remove(&id);
                        self.heads.remove(&id);
                        trimmed.push((id, None));
                        tables.specs.remove(id).map_err(db_error)?;
                        tables.states.remove(id).map_err(db_error)?;
                        tables.building.remove(&id);
                        tables.drop_records(id, u64::MAX)?;
                        tables
                            .chunks
                            .retain_in((id, 0)..=(id, u64::MAX), |_, _| false)
                            .map_err(db_error)?;
                        tables
                            .producers
                            .retain_in((id, "")..(id + 1, ""), |_, _| false)
                            .map_err(db_error)?;
                    }
                    Mutation::Trim { id, before } => {
                        if self.heads.contains_key(&id) {
                            load_state(id, &tables.states, &mut dirty)?;
                            let mut state = dirty.remove(&id).unwrap_or_default();
                            let head = self.trim(&mut tables, id, &mut state, before)?;
                            if state.head.is_some() {
                                trimmed.push((id, Some(head)));
                            }
                            dirty.insert(id, state);
                        }
                    }
                }
                accepted.extend(ack);
            }
            tables.close_blocks()?;
            for (id, state) in dirty {
                let json = serde_json::to_vec(&state)
                    .map_err(|e| StorageError::Unavailable(e.to_string()))?;
                tables
                    .states
                    .insert(id, json.as_slice())
                    .map_err(db_error)?;
            }
            // Every commit takes whatever the log holds: its frames, up to
            // the generation being written, need no replay.
            txn.open_table(LOG_STATE)
                .map_err(db_error)?
                .insert(LOG_APPLIED, generation)
                .map_err(db_error)?;
        }
        Ok(txn)
    }
}
