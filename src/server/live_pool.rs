//! The threads that write live responses (SSE) of lean HTTP/1.1
//! connections.
//!
//! An append to a stream with thousands of SSE subscribers wakes every one
//! of them, and each writes to its socket. On the runtime that also serves
//! requests, those wake-ups queue ahead of the next request, so a writer's
//! appends would wait for the whole fan-out to finish (and a writer pacing
//! itself falls behind). A connection whose response turns live is moved
//! to a runtime of its own here, so requests are answered while subscribers
//! are being written to, and the operating system shares the cores between
//! the two; a subscriber that wakes late reads everything appended since in
//! one go.
//!
//! Only on a multi-thread runtime (the server's): on a current-thread
//! runtime (tests with a paused clock) the connection stays where it is.

use std::future::Future;
use std::sync::OnceLock;
use std::task::Poll;

use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};
use tokio::task::JoinHandle;

/// The live runtime, started on first use; `None` if it could not start.
static LIVE: OnceLock<Option<Runtime>> = OnceLock::new();

/// The live runtime's handle when connections should move there.
fn live_handle() -> Option<&'static Handle> {
    let current = Handle::try_current().ok()?;
    if current.runtime_flavor() != RuntimeFlavor::MultiThread {
        return None;
    }
    LIVE.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ds-live")
            .enable_all()
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "no threads for live responses; serving them with requests");
            })
            .ok()
    })
    .as_ref()
    .map(Runtime::handle)
}

/// A connection that can stop when its response turns live.
pub(super) trait Movable: Future<Output = ()> + Send + Unpin + 'static {
    /// Serves until the connection closes (`false`) or a live response is
    /// about to be written (`true`).
    fn poll_until_live(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool>;
}

/// Serves `connection` here until its response turns live, then on the
/// live runtime until it closes. Dropping the returned future (an aborted
/// drain) ends the connection wherever it runs.
pub(super) async fn serve<C: Movable>(connection: C) {
    let mut connection = Box::new(connection);
    let Some(live) = live_handle() else {
        return connection.await;
    };
    if !std::future::poll_fn(|cx| connection.poll_until_live(cx)).await {
        return;
    }
    let mut task = AbortOnDrop(live.spawn(connection));
    let _ = (&mut task.0).await;
}

/// Aborts the task when dropped.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
