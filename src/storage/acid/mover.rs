//! Moves logged appends into redb without stopping the log. The writer
//! stages a move's transaction (its inserts cost CPU, not disk), hands it
//! to this thread, which commits it (redb's syncs), and goes on logging
//! into the log's other file meanwhile. A file starts over only once every
//! append in it is in redb: the writer switches files at a move only when
//! the move before has committed; otherwise (a move failed) it commits on
//! its own thread, as before there was a mover.
//!
//! Once a move has committed, its appends are freed on this thread too:
//! their payloads are thousands of allocations made by the runtime's
//! threads, and freeing them on the writer (glibc coalescing chunks,
//! contending for the workers' arenas) held up the log for as long.
//!
//! The open after a crash replays both files' generations that the
//! database has not recorded as applied, oldest first; appends already in
//! the database are skipped by stream position.

use std::collections::HashMap;
use std::sync::mpsc::{Receiver, SendError, Sender};
use std::sync::{Arc, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use redb::WriteTransaction;

use super::load::Head;
use super::reopen::Retry;
use super::shard::Shared;
use super::tables::db_error;
use super::writer::Writer;
use crate::storage::{Append, Mutation, StorageError, StreamId};

/// Work for the mover thread.
enum Job {
    /// A staged move to commit.
    Move {
        txn: Box<WriteTransaction>,
        /// Each moved stream's new tail in redb: its records below it
        /// leave memory once the commit is durable.
        tails: Vec<(StreamId, u64)>,
    },
    /// The appends of a committed move, to free off the writer.
    Free(Vec<(Append, i64)>),
}

/// What the writer keeps of a move in flight, to take it back should its
/// commit fail.
struct InFlight {
    appends: Vec<(Append, i64)>,
    before: HashMap<StreamId, Head>,
}

/// The writer's end of the mover thread.
pub(super) struct Mover {
    jobs: Sender<Job>,
    done: Receiver<Result<(), StorageError>>,
    in_flight: Option<InFlight>,
    thread: JoinHandle<()>,
}

impl Mover {
    /// Starts the mover thread of a database.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub(super) fn start(shared: Arc<Shared>) -> Result<Self, StorageError> {
        let (jobs, receive) = std::sync::mpsc::channel::<Job>();
        let (send_done, done) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("ds-acid-move".into())
            .spawn(move || {
                for job in receive {
                    match job {
                        Job::Move { txn, tails } => {
                            let outcome = commit_move(&shared, txn, tails);
                            if send_done.send(outcome).is_err() {
                                return;
                            }
                        }
                        Job::Free(appends) => drop(appends),
                    }
                }
            })
            .map_err(StorageError::Io)?;
        Ok(Self {
            jobs,
            done,
            in_flight: None,
            thread,
        })
    }

    /// Stops the thread once it has committed what it was given.
    pub(super) fn stop(self) {
        drop(self.jobs);
        let _ = self.thread.join();
    }
}

/// Commits a move; once it is durable, the moved records are read from
/// redb instead of memory.
fn commit_move(
    shared: &Shared,
    txn: Box<WriteTransaction>,
    tails: Vec<(StreamId, u64)>,
) -> Result<(), StorageError> {
    txn.commit().map_err(db_error)?;
    let mut unapplied = shared
        .unapplied
        .lock()
        .unwrap_or_else(PoisonError::into_inner);
    for (id, tail) in tails {
        if let Some(records) = unapplied.get_mut(&id) {
            let moved = records.partition_point(|r| r.start < tail);
            records.drain(..moved);
            if records.is_empty() {
                unapplied.remove(&id);
            }
        }
    }
    Ok(())
}

impl Writer {
    /// Moves the pending appends into redb: staged here, committed on the
    /// mover thread while this one logs into the other file.
    pub(super) fn start_move(&mut self) {
        self.finish_move();
        self.settle();
        if !self.spare_free || self.log_broken || self.mover.is_none() {
            // The other file still holds appends not in redb, or the log
            // must leave its generation behind: both files' appends go in
            // one commit here, after which either may start over.
            self.apply_logged();
            return;
        }
        if self.pending.is_empty() {
            // Nothing logged waits for a move (each failed), so none is due.
            self.oldest = None;
            return;
        }
        if let Err(error) = self.ensure_database() {
            self.move_failed(&error);
            return;
        }
        let appends = std::mem::take(&mut self.pending);
        let before = self.heads.clone();
        let generation = self.log.generation();
        let items = appends
            .iter()
            .map(|(append, ms)| (Mutation::Append(append.clone()), None, *ms))
            .collect();
        let (mut accepted, mut trimmed) = (Vec::new(), Vec::new());
        let txn = match self.stage(items, generation, &mut accepted, &mut trimmed) {
            Ok(txn) => txn,
            Err(error) => {
                self.heads = before;
                self.pending = appends;
                self.move_failed(&error);
                return;
            }
        };
        // Every logged append is pending (settled above), so the streams'
        // logged tails are the moved ones.
        let tails = self.logged.drain().collect();
        std::mem::swap(&mut self.log, &mut self.spare);
        self.file ^= 1;
        self.log.restart_after(generation);
        self.spare_free = false;
        self.pending_bytes = 0;
        self.oldest = None;
        let Some(mover) = &mut self.mover else {
            return;
        };
        mover.in_flight = Some(InFlight { appends, before });
        if let Err(SendError(Job::Move { txn, tails })) = mover.jobs.send(Job::Move {
            txn: Box::new(txn),
            tails,
        }) {
            // The thread is gone: commit here instead.
            let outcome = commit_move(&self.shared, txn, tails);
            self.settle_move(outcome);
        }
    }

    /// Waits for the move in flight, if any.
    pub(super) fn finish_move(&mut self) {
        let Some(mover) = &mut self.mover else {
            return;
        };
        if mover.in_flight.is_none() {
            return;
        }
        let outcome = mover.done.recv().unwrap_or_else(|_| {
            Err(StorageError::Unavailable(
                "the thread moving logged appends into the database stopped".into(),
            ))
        });
        self.settle_move(outcome);
    }

    /// Takes in the outcome of the move in flight. When its commit failed,
    /// its appends are pending again, before those logged since; they are
    /// still in the other file, which stays as it is until a commit on the
    /// writer's thread takes them.
    fn settle_move(&mut self, outcome: Result<(), StorageError>) {
        let Some(mover) = self.mover.as_mut() else {
            return;
        };
        let Some(in_flight) = mover.in_flight.take() else {
            return;
        };
        match outcome {
            Ok(()) => {
                self.spare_free = true;
                self.retry = Retry::default();
                // A thread that is gone hands them back, freed here.
                let _ = mover.jobs.send(Job::Free(in_flight.appends));
            }
            Err(error) => {
                self.heads = in_flight.before;
                for (append, _) in in_flight.appends.iter().rev() {
                    // The last of a stream's appends sets its tail, unless
                    // one logged since (later) already did.
                    self.logged
                        .entry(append.id)
                        .or_insert(append.start + append.data.len() as u64);
                }
                let mut appends = in_flight.appends;
                appends.append(&mut self.pending);
                self.pending = appends;
                self.move_failed(&error);
            }
        }
    }

    /// A move failed: its appends stay pending, safe in the log, and are
    /// tried again after the usual wait (logged once, not at every retry
    /// while the database refuses them).
    pub(super) fn move_failed(&mut self, error: &StorageError) {
        if self.retry.failed(error) {
            tracing::error!(path = %self.shared.path.display(), error = %error,
                "moving logged appends into the database failed; they stay in the log");
        }
        self.oldest = Some(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::super::log::{AckLog, log_path, second_log_path};
    use super::super::tests::{create_abc, logged, open_one, read_all};
    use super::super::{AcidStorage, DATABASE_FILE};
    use crate::storage::{Append, Storage};

    /// A crash while one log file's appends were moving into redb leaves
    /// appends in both files: the open replays them oldest generation first
    /// whichever file holds it, and a read-only open serves them in order.
    #[tokio::test]
    async fn both_log_files_replay_oldest_generation_first() {
        for second_first in [false, true] {
            let dir = tempfile::tempdir().expect("tempdir");
            create_abc(dir.path()).await;
            let database = dir.path().join(DATABASE_FILE);
            let mut files = [log_path(&database), second_log_path(&database)];
            if second_first {
                files.swap(0, 1);
            }
            // Each open takes a generation from the clock: the file opened
            // second holds the newer one.
            let write = |path: &std::path::PathBuf, appends: &[Append]| {
                let (mut log, _) = AckLog::open(path.clone()).expect("open the log");
                log.write(appends.iter()).expect("write the log");
            };
            write(&files[0], &[logged(3, b"def")]);
            write(&files[1], &[logged(6, b"gh"), logged(8, b"i")]);

            let reader = AcidStorage::open_read_only(dir.path()).expect("read-only");
            assert_eq!(read_all(&reader).await, b"abcdefghi");
            drop(reader);
            for _ in 0..2 {
                let store = open_one(dir.path()).expect("open");
                assert_eq!(store.recover()[0].tail, 9);
                assert_eq!(read_all(&store).await, b"abcdefghi");
            }
        }
    }
}
