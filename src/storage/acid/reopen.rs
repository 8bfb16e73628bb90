//! Writes resume after a failed commit without a restart. redb refuses
//! every transaction on a handle whose commit failed (a full disk), so the
//! writer reopens the database before its next transaction, at most once
//! per backoff while reopening or committing keeps failing; meanwhile
//! writes are refused (`507` while the disk is full) and reads go through a
//! read-only handle.
//!
//! After a reopen the writer takes the state an open after a crash would
//! find: the streams as the file holds them, and the acknowledged appends
//! still only in the acknowledgement log (the pending ones, which the log
//! files hold unchanged) to move in on top of them. A commit reported as
//! failed that reached the file anyway (a sync failing after redb wrote its
//! header) shows up here: its appends are skipped by stream position, and
//! a log generation it recorded as applied is left behind, as a restart
//! would.

use std::time::{Duration, Instant};

use super::load::{load, trimmed_heads};
use super::log::replayable;
use super::shard::LoggedRecord;
use super::tables::applied_generation;
use super::writer::Writer;
use crate::storage::StorageError;

/// The first wait before reopening a database whose commit failed.
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// The longest wait between reopens while they keep failing.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// The writer's view of a database whose transaction failed.
#[derive(Debug, Default)]
pub(super) struct Retry {
    /// A transaction failed since the last one that succeeded.
    failed: bool,
    /// The last failure was a full disk.
    full: bool,
    /// The handle was reopened but the writer's view not yet taken from
    /// the file.
    stale: bool,
    /// No reopen before this.
    not_before: Option<Instant>,
    /// The wait after the next failed reopen or commit.
    backoff: Duration,
}

impl Retry {
    /// Takes note of a failed transaction; whether it is the first since
    /// one succeeded or the database was reopened.
    pub(super) fn failed(&mut self, error: &StorageError) -> bool {
        self.full |= matches!(error, StorageError::Full(_));
        !std::mem::replace(&mut self.failed, true)
    }

    /// What a write meets while the database refuses it.
    fn refusal(&self) -> StorageError {
        if self.full {
            StorageError::Full(
                "the disk holding the data directory is full; writes resume once space is freed"
                    .into(),
            )
        } else {
            StorageError::Unavailable("the database is reopened after a failed write".into())
        }
    }

    /// Waits longer before the next try.
    fn back_off(&mut self) {
        self.backoff = (self.backoff * 2).clamp(FIRST_BACKOFF, MAX_BACKOFF);
        self.not_before = Some(Instant::now() + self.backoff);
    }
}

impl Writer {
    /// Makes sure the database takes transactions: after a failed one, the
    /// handle is reopened when it refuses them and its backoff has passed.
    ///
    /// # Errors
    /// While the database refuses transactions: `Full` when the disk was
    /// full, `Unavailable` otherwise.
    pub(super) fn ensure_database(&mut self) -> Result<(), StorageError> {
        if !self.retry.failed {
            return Ok(());
        }
        let broken = self.shared.db.is_broken();
        if !broken && !self.retry.stale {
            // The failure did not touch the handle (a value too large, say).
            self.retry = Retry::default();
            return Ok(());
        }
        if self.retry.not_before.is_some_and(|t| Instant::now() < t) {
            return Err(self.retry.refusal());
        }
        // Each reopen waits a backoff before the next; a commit that fails
        // on the new handle brings the writer back here after it.
        self.retry.back_off();
        // Once the handle is new, the writer's view is stale until it is
        // taken from the file.
        let reopened = if broken {
            self.retry.stale = true;
            self.shared.db.reopen()
        } else {
            Ok(())
        };
        match reopened.and_then(|()| self.take_file_state()) {
            Ok(()) => {
                tracing::warn!(path = %self.shared.path.display(),
                    "reopened the database after a failed write; writes are taken again");
                self.retry.failed = false;
                self.retry.stale = false;
                Ok(())
            }
            Err(error) => {
                tracing::warn!(path = %self.shared.path.display(), error = %error,
                    "reopening the database after a failed write failed; trying again later");
                let _ = self.retry.failed(&error);
                Err(self.retry.refusal())
            }
        }
    }

    /// Takes what the reopened file holds as the writer's view. The move
    /// in flight and the sync thread are settled (no transaction is open).
    fn take_file_state(&mut self) -> Result<(), StorageError> {
        let shared = self.shared.clone();
        let (recovered, heads) = load(&shared.db, &shared.path)?;
        let applied = applied_generation(&shared.db.begin_read()?)?;
        let pending = replayable(
            &heads,
            self.pending.clone(),
            |(append, _)| append,
            &shared.path,
            true,
        )?;
        if pending.len() != self.pending.len() {
            tracing::warn!(path = %shared.path.display(),
                "a transaction reported as failed reached the database; its appends are not moved again");
            // The records served from memory are those of the pending
            // appends.
            let mut unapplied = shared
                .unapplied
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            unapplied.clear();
            for (append, written_ms) in pending.iter().filter(|(a, _)| !a.data.is_empty()) {
                unapplied.entry(append.id).or_default().push(LoggedRecord {
                    start: append.start,
                    data: append.data.clone(),
                    written_ms: *written_ms,
                });
            }
        }
        self.heads = heads;
        self.pending = pending;
        *shared
            .trimmed
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = trimmed_heads(&recovered);
        self.logged_tails_from_pending();
        if applied >= self.log.generation() && self.pending.is_empty() {
            // The log's generation is recorded as applied: what it holds
            // is in the database, and new frames need a new generation.
            self.log.restart_after(applied);
            self.log_broken = false;
            self.pending_bytes = 0;
            self.oldest = None;
        }
        if applied >= self.spare.generation() {
            self.spare_free = true;
        }
        Ok(())
    }

    /// Sets the streams' logged tails to those of the pending appends (all
    /// acknowledged appends not in the database).
    pub(super) fn logged_tails_from_pending(&mut self) {
        self.logged.clear();
        for (append, _) in &self.pending {
            self.logged
                .insert(append.id, append.start + append.data.len() as u64);
        }
    }
}
