//! The server's handle on a database file. After a commit fails (a full
//! disk), redb refuses every later transaction on that handle, reads
//! included, until it is reopened: reads then go through a read-only handle
//! on the same file, which still holds every commit that succeeded, and the
//! writer reopens the writable handle once a retry may succeed
//! ([`super::reopen`]).

use std::path::{Path, PathBuf};
use std::sync::{OnceLock, PoisonError, RwLock};

use redb::{Database, ReadOnlyDatabase, ReadTransaction, ReadableDatabase, WriteTransaction};

use super::tables::{begin_durable, db_error, open_database};
use crate::storage::StorageError;

/// The database, writable (the server) or read-only (a live export).
pub(super) enum Db {
    Writable(Writable),
    ReadOnly(ReadOnlyDatabase),
}

/// The writable handle, and what reads fall back on while it refuses them.
pub(super) struct Writable {
    /// `None` while the handle is being reopened.
    db: RwLock<Option<Database>>,
    path: PathBuf,
    cache_bytes: usize,
    /// Opened the first time the writable handle refuses a read.
    reader: OnceLock<ReadOnlyDatabase>,
}

/// Whether a transaction was refused because the handle failed or closed.
fn refused(error: &redb::TransactionError) -> bool {
    matches!(
        error,
        redb::TransactionError::Storage(
            redb::StorageError::PreviousIo | redb::StorageError::DatabaseClosed
        )
    )
}

impl Db {
    /// The server's handle on `db`, opened at `path` with `cache_bytes`.
    pub(super) fn writable(db: Database, path: &Path, cache_bytes: usize) -> Self {
        Db::Writable(Writable {
            db: RwLock::new(Some(db)),
            path: path.to_path_buf(),
            cache_bytes,
            reader: OnceLock::new(),
        })
    }

    /// A read transaction on the newest commit.
    pub(super) fn begin_read(&self) -> Result<ReadTransaction, StorageError> {
        match self {
            Db::Writable(writable) => {
                let db = writable.db.read().unwrap_or_else(PoisonError::into_inner);
                match db.as_ref().map(ReadableDatabase::begin_read) {
                    Some(Ok(txn)) => Ok(txn),
                    Some(Err(error)) if !refused(&error) => Err(db_error(error)),
                    _ => {
                        drop(db);
                        writable.fallback_read()
                    }
                }
            }
            Db::ReadOnly(db) => db.begin_read().map_err(db_error),
        }
    }

    /// A write transaction, durable when its commit returns.
    pub(super) fn begin_write(&self) -> Result<WriteTransaction, StorageError> {
        match self {
            Db::Writable(writable) => {
                match &*writable.db.read().unwrap_or_else(PoisonError::into_inner) {
                    Some(db) => begin_durable(db),
                    None => Err(StorageError::Unavailable(
                        "the database is being reopened after a failed write".into(),
                    )),
                }
            }
            Db::ReadOnly(_) => Err(StorageError::Unavailable(
                "the store is open read-only".into(),
            )),
        }
    }

    /// Whether the writable handle refuses transactions (a commit on it
    /// failed, or a reopen did).
    pub(super) fn is_broken(&self) -> bool {
        match self {
            Db::Writable(writable) => {
                match &*writable.db.read().unwrap_or_else(PoisonError::into_inner) {
                    Some(db) => db.begin_read().is_err_and(|e| refused(&e)),
                    None => true,
                }
            }
            Db::ReadOnly(_) => false,
        }
    }

    /// Closes the writable handle and opens the file again: the new handle
    /// sees the file as an open after a crash would, every commit that
    /// reached it and nothing else. Reads meanwhile go through the
    /// read-only handle. The caller holds no write transaction.
    ///
    /// # Errors
    /// When the file cannot be opened (say the disk is still full, and
    /// redb must write to open it); the handle then stays closed until a
    /// later reopen succeeds.
    pub(super) fn reopen(&self) -> Result<(), StorageError> {
        let Db::Writable(writable) = self else {
            return Ok(());
        };
        let old = writable
            .db
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(old) = old {
            // A handle whose write failed reports that failure again, and
            // writes nothing more. A metadata write still running defers
            // the close to its end; the open below then finds the file
            // locked and is tried again later.
            if let Err(error) = old.close() {
                tracing::debug!(path = %writable.path.display(), error = %error,
                    "closing the failed database handle");
            }
        }
        let db = open_database(&writable.path, writable.cache_bytes)?;
        *writable.db.write().unwrap_or_else(PoisonError::into_inner) = Some(db);
        Ok(())
    }
}

impl Writable {
    fn fallback_read(&self) -> Result<ReadTransaction, StorageError> {
        if let Some(reader) = self.reader.get() {
            return reader.begin_read().map_err(db_error);
        }
        let reader = redb::Builder::new()
            .set_cache_size(self.cache_bytes)
            .set_concurrency_mode(redb::ConcurrencyMode::SingleWriter)
            .open_read_only(&self.path)
            .map_err(db_error)?;
        tracing::warn!(path = %self.path.display(),
            "the database refuses reads after a failed write; reads go through a read-only handle until it is reopened");
        let reader = self.reader.get_or_init(|| reader);
        reader.begin_read().map_err(db_error)
    }
}
