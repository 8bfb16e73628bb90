//! A mutation the file store refuses on its own, before it is logged.

use super::super::{StorageError, StreamId};

/// A mutation the store refuses on its own.
pub enum Refusal {
    /// An append to a stream it does not hold.
    Unknown(StreamId),
    /// An append that does not start at the tail.
    OutOfOrder { id: StreamId, start: u64, tail: u64 },
}

impl Refusal {
    /// As a storage error.
    pub fn into_error(self) -> StorageError {
        match self {
            Refusal::Unknown(id) => StorageError::UnknownStream(id),
            Refusal::OutOfOrder { id, start, tail } => StorageError::OutOfOrder { id, start, tail },
        }
    }

    /// Why a logged mutation cannot be replayed.
    pub fn describe(&self) -> String {
        match self {
            Refusal::Unknown(id) => format!("append to unknown stream {id}"),
            Refusal::OutOfOrder { start, tail, .. } => {
                format!("append at {start} does not follow the tail {tail}")
            }
        }
    }
}
