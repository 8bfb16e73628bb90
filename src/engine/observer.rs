//! The hook through which the engine tells another component (the
//! subscription manager) that a stream got committed data.

/// Told about every committed creation and append, after it is
/// acknowledged by storage and visible to readers.
///
/// Called on the request path with no engine lock held: implementations must
/// return quickly, never block and never await (hand work to a task).
pub trait DataObserver: Send + Sync + 'static {
    /// Stream `path` (its full identity path) now ends at `tail`.
    fn stream_changed(&self, path: &str, tail: u64);
}
