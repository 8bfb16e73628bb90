//! Storage events: the calls of each backend, group commits, the write
//! queue, and the payload bytes held.

use std::time::Duration;

use ::metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};

use crate::metrics::name;

/// A storage operation, the `operation` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageOperation {
    Create,
    Append,
    Read,
    Delete,
}

impl StorageOperation {
    pub(super) const ALL: [StorageOperation; 4] = [
        StorageOperation::Create,
        StorageOperation::Append,
        StorageOperation::Read,
        StorageOperation::Delete,
    ];

    /// The `operation` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StorageOperation::Create => "create",
            StorageOperation::Append => "append",
            StorageOperation::Read => "read",
            StorageOperation::Delete => "delete",
        }
    }
}

/// What kind of failure a storage operation had, the `kind` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StorageFailure {
    Full,
    Io,
    Corrupt,
    Unavailable,
}

impl StorageFailure {
    pub(super) const ALL: [StorageFailure; 4] = [
        StorageFailure::Full,
        StorageFailure::Io,
        StorageFailure::Corrupt,
        StorageFailure::Unavailable,
    ];

    /// The `kind` label.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            StorageFailure::Full => "full",
            StorageFailure::Io => "io",
            StorageFailure::Corrupt => "corrupt",
            StorageFailure::Unavailable => "unavailable",
        }
    }
}

/// The storage call metrics of one backend:
/// `durable_streams_storage_operation_duration_seconds{backend, operation}`
/// and `durable_streams_storage_errors_total{backend, kind}`, resolved once.
#[derive(Debug)]
pub(crate) struct StorageOperations {
    durations: [Histogram; 4],
    errors: [Counter; 4],
}

impl StorageOperations {
    /// The handles of `backend`; its error counters start at zero.
    pub(crate) fn register(backend: &'static str) -> Self {
        let durations = StorageOperation::ALL.map(|operation| {
            histogram!(
                name::STORAGE_OPERATION_DURATION_SECONDS,
                "backend" => backend,
                "operation" => operation.as_str()
            )
        });
        let errors = StorageFailure::ALL.map(|kind| {
            let errors =
                counter!(name::STORAGE_ERRORS_TOTAL, "backend" => backend, "kind" => kind.as_str());
            errors.increment(0);
            errors
        });
        Self { durations, errors }
    }

    /// An operation was acknowledged (or failed) after `elapsed`.
    pub(crate) fn emit(
        &self,
        operation: StorageOperation,
        elapsed: Duration,
        failure: Option<StorageFailure>,
    ) {
        self.durations[operation as usize].record(elapsed);
        if let Some(kind) = failure {
            self.errors[kind as usize].increment(1);
        }
    }
}

/// The group-commit histograms of one backend, resolved once by each
/// writer that commits groups of mutations.
pub(crate) struct StorageCommits {
    duration: Histogram,
    batch: Histogram,
}

impl StorageCommits {
    /// The histograms of `backend`.
    pub(crate) fn register(backend: &'static str) -> Self {
        Self {
            duration: histogram!(name::STORAGE_COMMIT_DURATION_SECONDS, "backend" => backend),
            batch: histogram!(name::STORAGE_COMMIT_BATCH_SIZE, "backend" => backend),
        }
    }

    /// A group of `batch` mutations was committed in `elapsed`.
    pub(crate) fn emit(&self, batch: usize, elapsed: Duration) {
        self.duration.record(elapsed);
        self.batch.record(batch as f64);
    }
}

/// `durable_streams_storage_write_queue_depth{backend}`: mutations waiting
/// for a writer thread.
#[derive(Debug)]
pub(crate) struct WriteQueueDepth(Gauge);

impl WriteQueueDepth {
    /// The gauge of `backend`.
    pub(crate) fn register(backend: &'static str) -> Self {
        Self(gauge!(name::STORAGE_WRITE_QUEUE_DEPTH, "backend" => backend))
    }

    /// The queue now holds `depth` mutations.
    pub(crate) fn emit(&self, depth: usize) {
        self.0.set(depth as f64);
    }
}

/// `durable_streams_storage_bytes{backend}`: payload bytes a backend holds.
#[derive(Debug)]
pub(crate) struct StoredBytes(Gauge);

impl StoredBytes {
    /// The gauge of `backend`.
    pub(crate) fn register(backend: &'static str) -> Self {
        Self(gauge!(name::STORAGE_BYTES, "backend" => backend))
    }

    /// The backend's payload grew (or, negative, shrank) by `delta` bytes.
    pub(crate) fn emit(&self, delta: f64) {
        if delta != 0.0 {
            self.0.increment(delta);
        }
    }
}
