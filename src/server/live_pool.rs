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

use futures_util::StreamExt as _;
use futures_util::stream::FuturesUnordered;
use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};
use tokio::sync::mpsc;
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
        let cores = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        Builder::new_multi_thread()
            .worker_threads(live_threads(cores))
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

/// How many threads write live responses on a machine with `cores` cores:
/// half of them, at least one.
///
/// A fan-out keeps every live thread busy, and each one takes a core from
/// the request runtime and from whatever else runs on the machine; a
/// delivery costs the same CPU either way (one write), and with fewer
/// threads each write carries a larger backlog. On two cores shared with
/// the load tool, one live thread gave 1 stream x 10,000 SSE subscribers
/// a p99 delivery latency 1.5x lower than two threads did, and many
/// streams the same (BENCHMARKS.md, session 11).
fn live_threads(cores: usize) -> usize {
    (cores / 2).max(1)
}

/// A connection that can stop when its response turns live.
pub(super) trait Movable: Future<Output = ()> + Send + Unpin + 'static {
    /// The connection as it is served on the live runtime.
    type Live: Future<Output = ()> + Send + 'static;

    /// Serves until the connection closes (`false`) or a live response is
    /// about to be written (`true`).
    fn poll_until_live(&mut self, cx: &mut std::task::Context<'_>) -> Poll<bool>;

    /// The connection to serve on the live runtime: it may stream for
    /// hours, so it should keep no room for what only requests need.
    fn into_live(self) -> Self::Live;
}

/// Where connections moved to the live runtime are reported, so that the
/// drain waits for them (and ends them at its timeout); TLS connections
/// report the task they run in after their handshake here too.
pub(super) type Moved = mpsc::UnboundedSender<JoinHandle<()>>;

/// Serves `connection` here until its response turns live, then hands it
/// to the live runtime, reports its task to `moved` and returns: the task
/// that served it here ends, and nothing is kept on this side.
pub(super) fn serve<C: Movable>(connection: C, moved: Moved) -> impl Future<Output = ()> + Send {
    // Boxed before the future is made: an `async fn` keeps room for its
    // arguments in its state, so the task serving a connection that stays
    // here (a waiting long-poll) would hold a second, unused connection's
    // worth of bytes for as long as it lives.
    serve_boxed(Box::new(connection), moved)
}

async fn serve_boxed<C: Movable>(mut connection: Box<C>, moved: Moved) {
    let Some(live) = live_handle() else {
        return connection.await;
    };
    if !std::future::poll_fn(|cx| connection.poll_until_live(cx)).await {
        return;
    }
    let connection = (*connection).into_live();
    // Spawned unboxed: the task's own allocation holds it.
    if let Err(unreported) = moved.send(live.spawn(connection)) {
        // The listener is gone: nobody would wait for it or end it.
        unreported.0.abort();
    }
}

/// The connections that moved to the live runtime, as the accept loop
/// tracks them.
pub(super) struct MovedConnections {
    sender: Option<Moved>,
    receiver: mpsc::UnboundedReceiver<JoinHandle<()>>,
    running: FuturesUnordered<JoinHandle<()>>,
}

impl MovedConnections {
    pub(super) fn new() -> Self {
        let (sender, receiver) = mpsc::unbounded_channel();
        Self {
            sender: Some(sender),
            receiver,
            running: FuturesUnordered::new(),
        }
    }

    /// Where a connection reports its move.
    pub(super) fn sender(&self) -> Moved {
        match &self.sender {
            Some(sender) => sender.clone(),
            // After `close`: a report is refused and the connection ended.
            None => mpsc::unbounded_channel().0,
        }
    }

    /// No more connections are accepted: once those still served here are
    /// done, no more moves will be reported.
    pub(super) fn close(&mut self) {
        self.sender = None;
    }

    /// Takes a report or a finished connection; `false` once nothing is
    /// left (after [`Self::close`], every reporter gone, every task ended).
    pub(super) async fn step(&mut self) -> bool {
        tokio::select! {
            received = self.receiver.recv() => match received {
                Some(task) => self.running.push(task),
                None => {
                    if self.running.next().await.is_none() {
                        return false;
                    }
                }
            },
            Some(_) = self.running.next(), if !self.running.is_empty() => {}
        }
        true
    }

    /// Ends every moved connection (the drain timeout).
    pub(super) fn abort_all(&mut self) {
        self.receiver.close();
        while let Ok(task) = self.receiver.try_recv() {
            task.abort();
        }
        for task in &self.running {
            task.abort();
        }
    }
}

impl Drop for MovedConnections {
    /// The server's future dropped (an embedder's abort) ends its moved
    /// connections too, as dropping its `JoinSet` ends the others.
    fn drop(&mut self) {
        self.abort_all();
    }
}
