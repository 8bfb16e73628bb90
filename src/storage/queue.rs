//! The hand-off between async callers and a backend's writer thread: an
//! ordered queue of mutations, each with the channel that acknowledges it.
//!
//! `submit` only appends under a short lock and never blocks on I/O; the
//! writer drains everything queued since its last commit as one batch, which
//! is what makes group commit happen.

use std::collections::VecDeque;
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::Instant;

use tokio::sync::oneshot;

use super::{Mutation, StorageError, StorageFuture};

/// Sends the outcome of one mutation back to its caller.
pub type Ack = oneshot::Sender<Result<(), StorageError>>;

/// What the writer gets from [`CommitQueue::next_batch`].
pub enum Next {
    /// Mutations to commit, in submission order.
    Batch(Vec<(Mutation, Ack)>),
    /// The deadline passed with nothing queued.
    Idle,
    /// The queue was closed and is empty.
    Closed,
}

#[derive(Default)]
struct Inner {
    items: VecDeque<(Mutation, Ack)>,
    closed: bool,
}

/// An ordered multi-producer queue drained by one writer thread.
#[derive(Default)]
pub struct CommitQueue {
    inner: Mutex<Inner>,
    wake: Condvar,
}

/// Payload bytes of a mutation, for batch sizing.
pub fn payload_len(mutation: &Mutation) -> usize {
    match mutation {
        Mutation::Create { data, .. } => data.len(),
        Mutation::Append(append) => append.data.len(),
        Mutation::SoftDelete { .. } | Mutation::Remove { .. } => 0,
    }
}

impl CommitQueue {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a mutation; the future resolves with the writer's verdict.
    pub fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let (ack, done) = oneshot::channel();
        {
            let mut inner = self.lock();
            if inner.closed {
                return Box::pin(std::future::ready(Err(StorageError::Unavailable(
                    "storage is shutting down".into(),
                ))));
            }
            inner.items.push_back((mutation, ack));
        }
        self.wake.notify_one();
        Box::pin(async move {
            done.await.unwrap_or_else(|_| {
                Err(StorageError::Unavailable(
                    "the storage writer stopped".into(),
                ))
            })
        })
    }

    /// Waits for work until `deadline` (forever when `None`) and takes
    /// everything queued, up to about `max_bytes` of payload.
    pub fn next_batch(&self, max_bytes: usize, deadline: Option<Instant>) -> Next {
        let mut inner = self.lock();
        loop {
            if !inner.items.is_empty() {
                let mut batch = Vec::new();
                let mut bytes = 0usize;
                while let Some(item) = inner.items.pop_front() {
                    bytes += payload_len(&item.0);
                    batch.push(item);
                    if bytes >= max_bytes {
                        break;
                    }
                }
                return Next::Batch(batch);
            }
            if inner.closed {
                return Next::Closed;
            }
            inner = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        return Next::Idle;
                    }
                    self.wake
                        .wait_timeout(inner, deadline - now)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0
                }
                None => self
                    .wake
                    .wait(inner)
                    .unwrap_or_else(PoisonError::into_inner),
            };
        }
    }

    /// Refuses new work; the writer finishes what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// Replies to a whole batch with the same failure.
pub fn fail_all(acks: impl IntoIterator<Item = Ack>, error: &StorageError) {
    let message = error.to_string();
    let full = matches!(error, StorageError::Full(_));
    for ack in acks {
        let reply = if full {
            StorageError::Full(message.clone())
        } else {
            StorageError::Unavailable(message.clone())
        };
        let _ = ack.send(Err(reply));
    }
}
