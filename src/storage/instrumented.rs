//! [`InstrumentedStorage`]: metrics and tracing as a wrapper implementing
//! the same [`Storage`] trait, so every backend is measured the same way
//! and none of them carries instrumentation code of its own (the group
//! commit, which only a writer thread sees, is the exception: see
//! [`super::queue::commit_spans`]).

use std::sync::Arc;
use std::time::Instant;

use ::metrics::{Counter, Histogram, counter, histogram};
use tracing::Instrument;

use super::{Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture, StreamId};
use crate::metrics::name;

/// Wraps a backend: each call becomes a `storage.<operation>` span (a child
/// of the request's span) and a sample of
/// `durable_streams_storage_operation_duration_seconds{backend, operation}`,
/// measured from the call until the acknowledgement; failures count in
/// `durable_streams_storage_errors_total{backend, kind}`.
pub struct InstrumentedStorage {
    inner: Arc<dyn Storage>,
    backend: &'static str,
    /// Resolved once: the recorder is installed before storage is wrapped.
    handles: Arc<Handles>,
}

struct Handles {
    /// By [`Operation`] index.
    durations: [Histogram; 4],
    /// By [`ErrorKind`] index.
    errors: [Counter; 4],
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
        let durations = Operation::ALL.map(|operation| {
            histogram!(
                name::STORAGE_OPERATION_DURATION_SECONDS,
                "backend" => backend,
                "operation" => operation.as_str()
            )
        });
        let errors = ErrorKind::ALL.map(|kind| {
            let errors =
                counter!(name::STORAGE_ERRORS_TOTAL, "backend" => backend, "kind" => kind.as_str());
            errors.increment(0);
            errors
        });
        Self {
            inner,
            backend,
            handles: Arc::new(Handles { durations, errors }),
        }
    }
}

/// The `operation` label.
#[derive(Clone, Copy)]
enum Operation {
    Create,
    Append,
    Read,
    Delete,
}

impl Operation {
    const ALL: [Operation; 4] = [
        Operation::Create,
        Operation::Append,
        Operation::Read,
        Operation::Delete,
    ];

    fn of(mutation: &Mutation) -> Self {
        match mutation {
            Mutation::Create { .. } => Operation::Create,
            Mutation::Append(_) => Operation::Append,
            // Retention drops data: counted with deletions.
            Mutation::SoftDelete { .. } | Mutation::Remove { .. } | Mutation::Trim { .. } => {
                Operation::Delete
            }
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Operation::Create => "create",
            Operation::Append => "append",
            Operation::Read => "read",
            Operation::Delete => "delete",
        }
    }

    /// A span per operation (span names must be literals), only inside a
    /// traced request: an untraced or unsampled one builds none.
    fn span(self, backend: &'static str, id: StreamId, bytes: usize) -> tracing::Span {
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
        match self {
            Operation::Create => span!("storage.create", "storage create"),
            Operation::Append => span!("storage.append", "storage append"),
            Operation::Read => span!("storage.read", "storage read"),
            Operation::Delete => span!("storage.delete", "storage delete"),
        }
    }
}

/// The `kind` label of `durable_streams_storage_errors_total`.
#[derive(Clone, Copy)]
enum ErrorKind {
    Full,
    Io,
    Corrupt,
    Unavailable,
}

impl ErrorKind {
    const ALL: [ErrorKind; 4] = [
        ErrorKind::Full,
        ErrorKind::Io,
        ErrorKind::Corrupt,
        ErrorKind::Unavailable,
    ];

    fn of(error: &StorageError) -> Self {
        match error {
            StorageError::Full(_) => ErrorKind::Full,
            StorageError::Io(_) | StorageError::Path { .. } => ErrorKind::Io,
            StorageError::Corrupt(_) => ErrorKind::Corrupt,
            // Refused for now: a failed earlier write, a stream being
            // removed, a writer shutting down, a directory held elsewhere.
            StorageError::Unavailable(_)
            | StorageError::OutOfOrder { .. }
            | StorageError::UnknownStream(_)
            | StorageError::Trimmed { .. }
            | StorageError::Locked { .. } => ErrorKind::Unavailable,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            ErrorKind::Full => "full",
            ErrorKind::Io => "io",
            ErrorKind::Corrupt => "corrupt",
            ErrorKind::Unavailable => "unavailable",
        }
    }
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

/// Measures `future` as one `operation`.
fn measured<T: Send + 'static>(
    handles: &Arc<Handles>,
    operation: Operation,
    span: tracing::Span,
    future: StorageFuture<T>,
) -> StorageFuture<T> {
    let started = Instant::now();
    let handles = Arc::clone(handles);
    let record_span = span.clone();
    Box::pin(
        async move {
            let result = future.await;
            handles.durations[operation as usize].record(started.elapsed());
            if let Err(error) = &result {
                let kind = ErrorKind::of(error);
                handles.errors[kind as usize].increment(1);
                record_span.record("error.type", kind.as_str());
                record_span.record("otel.status_code", "ERROR");
            }
            result
        }
        .instrument(span),
    )
}

impl Storage for InstrumentedStorage {
    fn backend_name(&self) -> &'static str {
        self.backend
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let operation = Operation::of(&mutation);
        let (id, bytes) = mutation_target(&mutation);
        let span = operation.span(self.backend, id, bytes);
        // Submitted inside the span, so a writer thread can parent its
        // group-commit span to it.
        let future = span.in_scope(|| self.inner.submit(mutation));
        measured(&self.handles, operation, span, future)
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        let span = Operation::Read.span(self.backend, id, 0);
        let future = span.in_scope(|| self.inner.read(id, from, until, max_bytes));
        measured(&self.handles, Operation::Read, span, future)
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
}
