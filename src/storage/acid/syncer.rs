//! The sync thread of a database's acknowledgement log. The writer writes a
//! batch into the log and hands it here; while this thread runs
//! `fdatasync` for it, the writer already gathers and writes the next one.
//! Once synced, a batch's records become readable from memory and its
//! appends are acknowledged (on the store's runtime when it has one, by
//! one task per batch), and the batch goes back to the writer, which moves
//! it into redb later.
//!
//! A failed sync fails its batch and every later batch of the same log
//! generation without syncing them (what follows an unsynced region must
//! never be acknowledged: a scan stops at the first bad frame); the writer
//! then leaves that generation behind.

use std::fs::File;
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError};
use std::sync::{Arc, PoisonError};
use std::time::Instant;

use super::shard::{LoggedRecord, Shared};
use super::writer::Writer;
use crate::metrics::event::StorageCommits;
use crate::storage::chunk_list;
use crate::storage::queue::{Ack, Answerer, commit_spans, fail_all};
use crate::storage::{Append, StorageError};

/// A batch written into the log, waiting for its sync.
pub(super) struct Written {
    /// The log generation it was written in.
    pub(super) generation: u64,
    /// Which of the two log files it was written into.
    pub(super) file: usize,
    /// Its appends, each with its acknowledgement.
    pub(super) appends: Vec<(Append, Ack)>,
    /// When the writer took it from the queue.
    pub(super) started: Instant,
}

/// What became of a batch: its appends when they are durable and
/// acknowledged, with when they were logged (Unix ms); `None` when the sync
/// failed and the batch was failed.
pub(super) type Synced = Option<(Vec<Append>, i64)>;

/// Runs the sync thread over the two log `files` until the writer drops its
/// sender.
pub(super) fn run(
    shared: Arc<Shared>,
    files: [File; 2],
    answerer: Answerer,
    jobs: Receiver<Written>,
    done: Sender<Synced>,
) {
    let commits = StorageCommits::register("acid");
    // The generation a sync failed in: later batches of it fail unsynced.
    let mut failed: Option<u64> = None;
    for job in jobs {
        let reply = if failed == Some(job.generation) {
            let error = StorageError::Unavailable(
                "an earlier sync of the acknowledgement log failed".into(),
            );
            fail_all(job.appends.into_iter().map(|(_, ack)| ack), &error);
            None
        } else {
            let generation = job.generation;
            let file = &files[job.file];
            let synced = sync_batch(&shared, file, &commits, &answerer, job);
            if synced.is_none() {
                failed = Some(generation);
            }
            synced
        };
        if done.send(reply).is_err() {
            return;
        }
    }
}

/// Syncs a written batch; then makes its records readable and acknowledges
/// it, or fails it.
fn sync_batch(
    shared: &Shared,
    file: &File,
    commits: &StorageCommits,
    answerer: &Answerer,
    job: Written,
) -> Synced {
    let spans = commit_spans(
        "acid",
        job.appends.iter().map(|(_, ack)| ack),
        job.appends.len(),
    );
    let synced = file.sync_data().map_err(StorageError::from_write);
    drop(spans);
    match synced {
        Ok(()) => {
            commits.emit(job.appends.len(), job.started.elapsed());
            Some(acknowledge(shared, answerer, job.appends))
        }
        Err(error) => {
            tracing::error!(path = %shared.path.display(), error = %error,
                "fdatasync of the acknowledgement log failed");
            fail_all(job.appends.into_iter().map(|(_, ack)| ack), &error);
            None
        }
    }
}

/// Makes a synced batch's records readable, then acknowledges its appends.
fn acknowledge(
    shared: &Shared,
    answerer: &Answerer,
    appends: Vec<(Append, Ack)>,
) -> (Vec<Append>, i64) {
    let written_ms = chunk_list::now_ms();
    {
        let mut unapplied = shared
            .unapplied
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for (append, _) in &appends {
            if !append.data.is_empty() {
                unapplied.entry(append.id).or_default().push(LoggedRecord {
                    start: append.start,
                    data: append.data.clone(),
                    written_ms,
                });
            }
        }
    }
    let (appends, acks): (Vec<Append>, Vec<Ack>) = appends.into_iter().unzip();
    answerer.succeed(acks);
    (appends, written_ms)
}

/// The writer's end of its sync thread: batches handed over and not yet
/// come back.
pub(super) struct SyncHandle {
    pub(super) jobs: SyncSender<Written>,
    pub(super) done: Receiver<Synced>,
    pub(super) in_flight: usize,
    /// Appends in the batch handed over last.
    pub(super) last_batch: usize,
    pub(super) thread: std::thread::JoinHandle<()>,
}

impl Writer {
    /// Takes in the batches the sync thread finished, without waiting;
    /// whether one of them failed.
    pub(super) fn collect_synced(&mut self) -> bool {
        while self.take_back(false) {}
        self.sync_failed
    }

    /// While a batch is being synced, lets the next one gather: the writer
    /// writes ahead of the sync only when at least as many appends wait as
    /// the sync carries, since on a busy machine each extra small batch
    /// costs more in wake-ups than the overlap saves.
    pub(super) fn gather(&mut self) {
        if self
            .sync
            .as_ref()
            .is_some_and(|sync| sync.in_flight > 0 && self.shared.queue.len() < sync.last_batch)
        {
            self.take_back(true);
        }
    }

    /// Waits until every batch handed to the sync thread is back. After a
    /// failed sync the log is broken: nothing more is logged until a
    /// transaction marks its generation applied, and the streams' logged
    /// tails are those of the appends that were acknowledged.
    pub(super) fn settle(&mut self) {
        while self.take_back(true) {}
        if std::mem::take(&mut self.sync_failed) {
            self.log_broken = true;
            self.logged_tails_from_pending();
        }
    }

    /// Takes back the oldest batch handed to the sync thread, waiting for
    /// it when `wait`; whether one came back (or the thread is gone).
    fn take_back(&mut self, wait: bool) -> bool {
        let Some(sync) = &mut self.sync else {
            return false;
        };
        if sync.in_flight == 0 {
            return false;
        }
        let synced = if wait {
            sync.done.recv().ok()
        } else {
            match sync.done.try_recv() {
                Ok(synced) => Some(synced),
                Err(TryRecvError::Empty) => return false,
                Err(TryRecvError::Disconnected) => None,
            }
        };
        match synced {
            Some(Some((appends, written_ms))) => {
                sync.in_flight -= 1;
                self.pending
                    .extend(appends.into_iter().map(|append| (append, written_ms)));
            }
            Some(None) => {
                sync.in_flight -= 1;
                self.sync_failed = true;
            }
            // The thread is gone, and with it the acknowledgements it held.
            None => {
                sync.in_flight = 0;
                self.sync_failed = true;
            }
        }
        true
    }

    /// Hands a written batch to the sync thread (waiting while it syncs the
    /// one before).
    pub(super) fn hand_to_syncer(&mut self, written: Written) {
        let appends = written.appends.len();
        let Some(sync) = &mut self.sync else {
            // Only before the thread starts (the open's replay logs nothing).
            let error = StorageError::Unavailable("the log's sync thread is not running".into());
            fail_all(written.appends.into_iter().map(|(_, ack)| ack), &error);
            self.sync_failed = true;
            return;
        };
        match sync.jobs.send(written) {
            Ok(()) => {
                sync.in_flight += 1;
                sync.last_batch = appends;
            }
            Err(std::sync::mpsc::SendError(written)) => {
                let error = StorageError::Unavailable("the log's sync thread stopped".into());
                fail_all(written.appends.into_iter().map(|(_, ack)| ack), &error);
                self.sync_failed = true;
            }
        }
    }
}
