//! The hand-off between async callers and a backend's writer thread: an
//! ordered queue of mutations, each with the channel that acknowledges it.
//!
//! `submit` only appends under a short lock and never blocks on I/O; the
//! writer drains everything queued since its last commit as one batch, which
//! is what makes group commit happen.
//!
//! Each queued mutation carries the tracing span it was submitted in, so
//! the writer can show the group commit inside every request's trace
//! ([`commit_spans`]); the queue depth is published as
//! `durable_streams_storage_write_queue_depth`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Instant;

use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::oneshot;

use super::{Mutation, StorageError, StorageFuture};
use crate::metrics::event::WriteQueueDepth;

/// Sends the outcome of one mutation back to its caller.
#[derive(Debug)]
pub struct Ack {
    sender: oneshot::Sender<Result<(), StorageError>>,
    /// The span the mutation was submitted in (disabled when not tracing).
    span: tracing::Span,
}

impl Ack {
    /// Answers the caller; `Err` gives the outcome back if it has gone away.
    pub fn send(self, outcome: Result<(), StorageError>) -> Result<(), Result<(), StorageError>> {
        self.sender.send(outcome)
    }
}

/// Spans of one group commit: one `storage.commit` child in the span of
/// every mutation that joined it, all sharing the commit's number, so each
/// request's trace shows the commit it waited for. Empty when not tracing.
/// Drop them when the commit is durable.
pub fn commit_spans<'a>(
    backend: &'static str,
    acks: impl Iterator<Item = &'a Ack>,
    batch: usize,
) -> Vec<tracing::Span> {
    static COMMITS: AtomicU64 = AtomicU64::new(0);
    let mut spans = Vec::new();
    let mut number = None;
    for ack in acks {
        if ack.span.is_disabled() {
            continue;
        }
        let number = *number.get_or_insert_with(|| COMMITS.fetch_add(1, Ordering::Relaxed));
        spans.push(tracing::info_span!(
            parent: &ack.span,
            "storage.commit",
            otel.name = "storage commit",
            ds.storage.backend = backend,
            ds.storage.commit = number,
            ds.storage.batch_size = batch,
        ));
    }
    spans
}

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
    /// The writer sleeps on `wake`: only then does a submit wake it, and
    /// only the first (it clears the flag). A busy writer finds the new
    /// items when it next looks, so most appends under load cost no wake-up
    /// (a `futex` call each otherwise).
    waiting: bool,
}

/// An ordered multi-producer queue drained by one writer thread.
pub struct CommitQueue {
    inner: Mutex<Inner>,
    wake: Condvar,
    /// `durable_streams_storage_write_queue_depth{backend}`, resolved once.
    depth: WriteQueueDepth,
}

/// Payload bytes of a mutation, for batch sizing.
pub fn payload_len(mutation: &Mutation) -> usize {
    match mutation {
        Mutation::Create { data, .. } => data.len(),
        Mutation::Append(append) => append.data.len(),
        Mutation::SoftDelete { .. } | Mutation::Remove { .. } | Mutation::Trim { .. } => 0,
    }
}

impl CommitQueue {
    /// An empty queue of `backend` (the label of its depth gauge).
    pub fn new(backend: &'static str) -> Self {
        Self {
            inner: Mutex::default(),
            wake: Condvar::new(),
            depth: WriteQueueDepth::register(backend),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues a mutation; the future resolves with the writer's verdict.
    pub fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let (sender, done) = oneshot::channel();
        let ack = Ack {
            sender,
            span: tracing::Span::current(),
        };
        let sleeping = {
            let mut inner = self.lock();
            if inner.closed {
                return Box::pin(std::future::ready(Err(StorageError::Unavailable(
                    "storage is shutting down".into(),
                ))));
            }
            inner.items.push_back((mutation, ack));
            self.depth.emit(inner.items.len());
            // Cleared by the one submit that wakes the writer: until the
            // writer runs and takes the lock, later submits would each make
            // another `futex` wake call (std's `notify_one` always does),
            // about four per batch at 100 streams.
            std::mem::take(&mut inner.waiting)
        };
        if sleeping {
            self.wake.notify_one();
        }
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
                // Sized once: growing it item by item cost more than
                // taking the items.
                let mut batch = Vec::with_capacity(inner.items.len());
                let mut bytes = 0usize;
                while let Some(item) = inner.items.pop_front() {
                    bytes += payload_len(&item.0);
                    batch.push(item);
                    if bytes >= max_bytes {
                        break;
                    }
                }
                self.depth.emit(inner.items.len());
                return Next::Batch(batch);
            }
            if inner.closed {
                return Next::Closed;
            }
            inner.waiting = true;
            inner = match deadline {
                Some(deadline) => {
                    let now = Instant::now();
                    if now >= deadline {
                        inner.waiting = false;
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
            inner.waiting = false;
        }
    }

    /// How many mutations are queued.
    pub(crate) fn len(&self) -> usize {
        self.lock().items.len()
    }

    /// Refuses new work; the writer finishes what is queued, then stops.
    pub fn close(&self) {
        self.lock().closed = true;
        self.wake.notify_all();
    }
}

/// Answers durable batches with success from the runtime a store was
/// opened in: one task per batch, whose wake-ups of the waiting requests
/// are a worker's own (its run queue, at most one neighbour unparked). Sent
/// from a store's own thread, each answer may unpark a worker (a `futex`
/// call and a context switch per append).
#[derive(Clone, Debug)]
pub struct Answerer {
    /// `None` outside a multi-threaded runtime: a single-threaded one may be
    /// blocked on an answer by the very thread that would send it, so the
    /// store's thread answers at once.
    runtime: Option<Handle>,
}

impl Answerer {
    /// Answers through the runtime the caller runs in, if multi-threaded.
    pub fn current() -> Self {
        Self {
            runtime: Handle::try_current()
                .ok()
                .filter(|runtime| runtime.runtime_flavor() == RuntimeFlavor::MultiThread),
        }
    }

    /// Answers every ack of `acks` with success, in order.
    pub fn succeed(&self, acks: Vec<Ack>) {
        let answer = Succeeded(acks);
        match &self.runtime {
            // A runtime shutting down drops the task unrun, which answers.
            Some(runtime) => drop(runtime.spawn(async move { drop(answer) })),
            None => drop(answer),
        }
    }
}

/// Acks answered with success when dropped: by the task that carries them,
/// or wherever a runtime that is gone drops that task.
struct Succeeded(Vec<Ack>);

impl Drop for Succeeded {
    fn drop(&mut self) {
        for ack in self.0.drain(..) {
            let _ = ack.send(Ok(()));
        }
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

/// A backend's writer thread, stopped when the last handle to the backend
/// goes away: the queue is closed (the thread commits what is queued, then
/// exits) and the thread joined, so a dropped backend leaves no write
/// behind.
pub struct WriterThread<S: Send + Sync> {
    owner: Arc<S>,
    queue_of: fn(&S) -> &CommitQueue,
    thread: Mutex<Option<JoinHandle<()>>>,
}

impl<S: Send + Sync> WriterThread<S> {
    /// Wraps `thread`, which drains the queue `queue_of(owner)`.
    pub fn new(owner: Arc<S>, queue_of: fn(&S) -> &CommitQueue, thread: JoinHandle<()>) -> Self {
        Self {
            owner,
            queue_of,
            thread: Mutex::new(Some(thread)),
        }
    }
}

impl<S: Send + Sync> Drop for WriterThread<S> {
    fn drop(&mut self) {
        (self.queue_of)(&self.owner).close();
        if let Some(thread) = self
            .thread
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ack() -> (Ack, oneshot::Receiver<Result<(), StorageError>>) {
        let (sender, receiver) = oneshot::channel();
        let span = tracing::Span::none();
        (Ack { sender, span }, receiver)
    }

    /// A runtime of one worker and an answerer made in it.
    fn one_worker() -> (tokio::runtime::Runtime, Answerer) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .build()
            .expect("runtime");
        let answerer = {
            let _entered = runtime.enter();
            Answerer::current()
        };
        (runtime, answerer)
    }

    /// An answerer made in a multi-threaded runtime answers from one of
    /// its workers: while the only worker is held, the answer waits.
    #[test]
    fn a_durable_batch_is_answered_by_a_runtime_worker() {
        let (runtime, answerer) = one_worker();
        let (held_tx, held_rx) = std::sync::mpsc::channel();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        runtime.spawn(async move {
            held_tx.send(()).expect("test waits");
            let _ = release_rx.recv();
        });
        held_rx.recv().expect("the worker is held");
        let (first, mut first_rx) = ack();
        let (second, second_rx) = ack();
        answerer.succeed(vec![first, second]);
        assert!(matches!(
            first_rx.try_recv(),
            Err(oneshot::error::TryRecvError::Empty)
        ));
        release_tx.send(()).expect("the held task waits");
        assert!(matches!(first_rx.blocking_recv(), Ok(Ok(()))));
        assert!(matches!(second_rx.blocking_recv(), Ok(Ok(()))));
    }

    /// A batch handed to a runtime that is gone is still answered.
    #[test]
    fn a_durable_batch_is_answered_after_the_runtime_is_gone() {
        let (runtime, answerer) = one_worker();
        drop(runtime);
        let (only, only_rx) = ack();
        answerer.succeed(vec![only]);
        assert!(matches!(only_rx.blocking_recv(), Ok(Ok(()))));
    }

    /// Only the submit that finds the writer asleep wakes it: it clears
    /// the flag, so the submits after it, made before the writer runs, add
    /// their items without another wake call.
    #[test]
    fn one_submit_wakes_a_sleeping_writer() {
        let queue = CommitQueue::new("test");
        queue.lock().waiting = true;
        drop(queue.submit(Mutation::SoftDelete { id: 1 }));
        assert!(!queue.lock().waiting, "the waking submit clears the flag");
        drop(queue.submit(Mutation::SoftDelete { id: 2 }));
        match queue.next_batch(usize::MAX, None) {
            Next::Batch(batch) => assert_eq!(batch.len(), 2),
            _ => panic!("both submits are queued"),
        }
    }

    /// Outside a runtime the batch is answered at once.
    #[test]
    fn a_durable_batch_is_answered_at_once_outside_a_runtime() {
        let (only, mut only_rx) = ack();
        Answerer::current().succeed(vec![only]);
        assert!(matches!(only_rx.try_recv(), Ok(Ok(()))));
    }
}
