//! [`InstrumentedStorage`]: metrics and tracing as a wrapper implementing
//! the same [`Storage`] trait, so every backend is measured the same way
//! and none of them carries instrumentation code of its own (the group
//! commit, which only a writer thread sees, is the exception: see
//! `queue::commit_spans`).

use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use tracing::Instrument;

use super::{
    Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture, StreamId, settled,
};
use crate::metrics::event::{StorageFailure, StorageOperation as Operation, StorageOperations};

/// Wraps a backend: each call becomes a `storage.<operation>` span (a child
/// of the request's span) and a sample of
/// `durable_streams_storage_operation_duration_seconds{backend, operation}`,
/// measured from the call until the acknowledgement; failures count in
/// `durable_streams_storage_errors_total{backend, kind}`.
pub struct InstrumentedStorage {
    inner: Arc<dyn Storage>,
    backend: &'static str,
    /// The backend's [`Storage::submits_at_once`].
    at_once: bool,
    /// Resolved once: the recorder is installed before storage is wrapped.
    metrics: Arc<StorageOperations>,
}

impl std::fmt::Debug for InstrumentedStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InstrumentedStorage")
            .field("backend", &self.backend)
            .finish()
    }
}

impl InstrumentedStorage {
    /// Wraps `inner`.
    pub fn new(inner: Arc<dyn Storage>) -> Self {
        let backend = inner.backend_name();
        Self {
            at_once: inner.submits_at_once(),
            inner,
            backend,
            metrics: Arc::new(StorageOperations::register(backend)),
        }
    }
}

/// The `operation` label of a mutation.
fn operation_of(mutation: &Mutation) -> Operation {
    match mutation {
        Mutation::Create { .. } => Operation::Create,
        Mutation::Append(_) => Operation::Append,
        // Retention drops data: counted with deletions.
        Mutation::SoftDelete { .. } | Mutation::Remove { .. } | Mutation::Trim { .. } => {
            Operation::Delete
        }
    }
}

/// A span per operation (span names must be literals), only inside a
/// traced request: an untraced or unsampled one builds none.
fn span_of(
    operation: Operation,
    backend: &'static str,
    id: StreamId,
    bytes: usize,
) -> tracing::Span {
    if tracing::Span::current().is_disabled() {
        return tracing::Span::none();
    }
    macro_rules! span {
        ($name:literal, $otel:literal) => {
            tracing::info_span!(
                $name,
                otel.name = $otel,
                ds.storage.backend = backend,
                ds.storage.stream_id = id,
                ds.storage.bytes = bytes,
                error.type = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            )
        };
    }
    match operation {
        Operation::Create => span!("storage.create", "storage create"),
        Operation::Append => span!("storage.append", "storage append"),
        Operation::Read => span!("storage.read", "storage read"),
        Operation::Delete => span!("storage.delete", "storage delete"),
    }
}

/// The `kind` label of `durable_streams_storage_errors_total`; `None` for
/// an answer that is no failure of the store (a read before a head that
/// retention moved on).
fn failure_of(error: &StorageError) -> Option<StorageFailure> {
    Some(match error {
        StorageError::Trimmed { .. } => return None,
        StorageError::Full(_) => StorageFailure::Full,
        StorageError::Io(_) | StorageError::Path { .. } => StorageFailure::Io,
        StorageError::Corrupt(_) => StorageFailure::Corrupt,
        // Refused for now: a failed earlier write, a stream being
        // removed, a writer shutting down, a directory held elsewhere.
        StorageError::Unavailable(_)
        | StorageError::OutOfOrder { .. }
        | StorageError::UnknownStream(_)
        | StorageError::Locked { .. } => StorageFailure::Unavailable,
    })
}

fn mutation_target(mutation: &Mutation) -> (StreamId, usize) {
    match mutation {
        Mutation::Create { spec, data, .. } => (spec.id, data.len()),
        Mutation::Append(append) => (append.id, append.data.len()),
        Mutation::SoftDelete { id } | Mutation::Remove { id } | Mutation::Trim { id, .. } => {
            (*id, 0)
        }
    }
}

/// Measures `future`, started at `started`, as one `operation`.
fn measured<T: Send + 'static>(
    metrics: &Arc<StorageOperations>,
    operation: Operation,
    span: tracing::Span,
    started: Instant,
    future: StorageFuture<T>,
) -> StorageFuture<T> {
    let metrics = Arc::clone(metrics);
    let record_span = span.clone();
    Box::pin(
        async move {
            let result = future.await;
            record(&metrics, operation, started, &record_span, &result);
            result
        }
        .instrument(span),
    )
}

/// Records the `result` of an `operation` started at `started`.
fn record<T>(
    metrics: &StorageOperations,
    operation: Operation,
    started: Instant,
    span: &tracing::Span,
    result: &Result<T, StorageError>,
) {
    let failure = result.as_ref().err().and_then(failure_of);
    metrics.emit(operation, started.elapsed(), failure);
    if let Some(kind) = failure {
        span.record("error.type", kind.as_str());
        span.record("otel.status_code", "ERROR");
    }
}

impl Storage for InstrumentedStorage {
    fn backend_name(&self) -> &'static str {
        self.backend
    }

    fn submits_at_once(&self) -> bool {
        self.at_once
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let operation = operation_of(&mutation);
        let (id, bytes) = mutation_target(&mutation);
        let span = span_of(operation, self.backend, id, bytes);
        let started = Instant::now();
        // Submitted inside the span, so a writer thread can parent its
        // group-commit span to it.
        let mut future = span.in_scope(|| self.inner.submit(mutation));
        // A store that answers in the call (memory) is measured now,
        // without a second future to box and poll.
        if self.at_once
            && let Poll::Ready(result) = future
                .as_mut()
                .poll(&mut Context::from_waker(Waker::noop()))
        {
            record(&self.metrics, operation, started, &span, &result);
            return settled(result);
        }
        measured(&self.metrics, operation, span, started, future)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let span = span_of(Operation::Read, self.backend, id, 0);
        let started = Instant::now();
        let future = span.in_scope(|| self.inner.read(id, from, until, max_bytes));
        measured(&self.metrics, Operation::Read, span, started, future)
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        self.inner.recover()
    }

    // Metadata writes are rare control-plane updates (subscriptions):
    // passed through, outside the stream operation metrics.
    fn put_metadata(&self, key: &str, value: Option<bytes::Bytes>) -> StorageFuture<()> {
        self.inner.put_metadata(key, value)
    }

    fn metadata(&self) -> StorageFuture<Vec<(String, bytes::Bytes)>> {
        self.inner.metadata()
    }

    fn chunks(&self, id: StreamId) -> StorageFuture<Vec<super::ChunkInfo>> {
        self.inner.chunks(id)
    }

    fn shared(&self) -> Option<Arc<dyn crate::storage::shared::SharedStreams>> {
        self.inner.shared()
    }
}
