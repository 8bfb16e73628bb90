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
//! There the connections are not tasks of their own: each is added to one
//! of a few shards, a task per shard polling its connections as a set
//! ([`FuturesUnordered`]). An append wakes a shard once, and the shard
//! writes to each of its subscribers that woke in turn, instead of the
//! runtime scheduling ten thousand tasks (each wake-up a push to the
//! runtime's queue from the appending thread, and a task switch).
//!
//! The connections of a shard are polled outside Tokio's cooperative
//! budget ([`unconstrained`]): the budget belongs to a task, and shared by
//! a shard's connections it runs out after a few of them, each of the rest
//! then polled for nothing and woken again (ten times the delivery latency
//! at 10,000 subscribers, measured). What the budget guarded against, one
//! connection keeping the thread, the connection bounds itself: a response
//! writes a limited number of body frames per poll.
//!
//! Only on a multi-thread runtime (the server's): on a current-thread
//! runtime (tests with a paused clock) the connection stays where it is.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use futures_util::StreamExt as _;
use futures_util::future::{AbortHandle, Abortable};
use futures_util::stream::FuturesUnordered;
use tokio::runtime::{Builder, Handle, Runtime, RuntimeFlavor};
use tokio::sync::{mpsc, oneshot};
use tokio::task::{JoinHandle, Unconstrained, unconstrained};

/// Shards per live thread: enough for the threads to share the work when
/// one shard has more awake subscribers than another.
const SHARDS_PER_THREAD: usize = 4;

/// The live runtime and its shards.
struct LivePool {
    runtime: Runtime,
    shards: Vec<mpsc::UnboundedSender<Pooled>>,
    /// The shard the next connection joins (round robin).
    next: AtomicUsize,
}

/// The live pool, started on first use; `None` if it could not start.
static LIVE: OnceLock<Option<LivePool>> = OnceLock::new();

/// The live pool when connections should move there.
fn live_pool() -> Option<&'static LivePool> {
    let current = Handle::try_current().ok()?;
    if current.runtime_flavor() != RuntimeFlavor::MultiThread {
        return None;
    }
    LIVE.get_or_init(|| {
        let threads = std::thread::available_parallelism().map_or(2, std::num::NonZero::get);
        let runtime = Builder::new_multi_thread()
            .worker_threads(threads)
            .thread_name("ds-live")
            .enable_all()
            .build()
            .inspect_err(|error| {
                tracing::warn!(%error, "no threads for live responses; serving them with requests");
            })
            .ok()?;
        let shards = (0..threads * SHARDS_PER_THREAD)
            .map(|_| {
                let (sender, receiver) = mpsc::unbounded_channel();
                runtime.spawn(run_shard(receiver));
                sender
            })
            .collect();
        Some(LivePool {
            runtime,
            shards,
            next: AtomicUsize::new(0),
        })
    })
    .as_ref()
}

impl LivePool {
    /// Adds `connection` to a shard; the handle reports its end and can
    /// end it.
    fn add(&self, connection: Box<dyn Future<Output = ()> + Send + Unpin>) -> MovedTask {
        let (pooled, handle) = Pooled::new(connection);
        let shard = self.next.fetch_add(1, Ordering::Relaxed) % self.shards.len();
        if let Err(refused) = self.shards[shard].send(pooled) {
            // The shard's task is gone (a panic): a task of its own then.
            let task = self.runtime.spawn(refused.0);
            return MovedTask::Task(task);
        }
        handle
    }
}

/// A connection in a shard. Its end (or its abort) drops `_done`, which
/// tells the accept loop.
struct Pooled {
    connection: Abortable<Unconstrained<Box<dyn Future<Output = ()> + Send + Unpin>>>,
    _done: oneshot::Sender<()>,
}

impl Pooled {
    /// `connection` ready to join a shard, and the handle the accept loop
    /// keeps.
    fn new(connection: Box<dyn Future<Output = ()> + Send + Unpin>) -> (Self, MovedTask) {
        let (abort, registration) = AbortHandle::new_pair();
        let (done, finished) = oneshot::channel();
        let pooled = Self {
            connection: Abortable::new(unconstrained(connection), registration),
            _done: done,
        };
        (pooled, MovedTask::Pooled { abort, finished })
    }
}

impl Future for Pooled {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let connection = &mut self.connection;
        // A panic ends this connection only, as it would end its own task,
        // not the shard's other connections.
        match std::panic::catch_unwind(AssertUnwindSafe(|| Pin::new(connection).poll(cx))) {
            Ok(polled) => polled.map(|_| ()),
            Err(_) => {
                tracing::error!("a live connection panicked; closing it");
                Poll::Ready(())
            }
        }
    }
}

/// Serves the connections added to one shard, for as long as the process
/// lives (the pool is never dropped).
async fn run_shard(mut incoming: mpsc::UnboundedReceiver<Pooled>) {
    let mut running = FuturesUnordered::new();
    std::future::poll_fn(|cx| {
        loop {
            match incoming.poll_recv(cx) {
                Poll::Ready(Some(pooled)) => running.push(pooled),
                Poll::Ready(None) => return Poll::Ready(()),
                Poll::Pending => break,
            }
        }
        // Each completion is one connection closed; `Pending` once every
        // awake connection has been served (or the shard yields to the
        // runtime, woken again).
        while let Poll::Ready(Some(())) = running.poll_next_unpin(cx) {}
        Poll::Pending
    })
    .await;
}

/// A connection that can stop when its response turns live.
pub(super) trait Movable: Future<Output = ()> + Send + Unpin + 'static {
    /// Serves until the connection closes (`false`) or a live response is
    /// about to be written (`true`).
    fn poll_until_live(&mut self, cx: &mut Context<'_>) -> Poll<bool>;
}

/// A connection served apart from the accept loop: in a live shard, or (a
/// TLS connection after its handshake) in a task of its own. Resolves when
/// the connection has ended.
pub(super) enum MovedTask {
    /// A task of its own.
    Task(JoinHandle<()>),
    /// In a live shard.
    Pooled {
        abort: AbortHandle,
        finished: oneshot::Receiver<()>,
    },
}

impl MovedTask {
    /// Ends the connection.
    pub(super) fn abort(&self) {
        match self {
            Self::Task(task) => task.abort(),
            Self::Pooled { abort, .. } => abort.abort(),
        }
    }
}

impl Future for MovedTask {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            Self::Task(task) => Pin::new(task).poll(cx).map(|_| ()),
            Self::Pooled { finished, .. } => Pin::new(finished).poll(cx).map(|_| ()),
        }
    }
}

/// Where connections moved to the live runtime are reported, so that the
/// drain waits for them (and ends them at its timeout); TLS connections
/// report the task they run in after their handshake here too.
pub(super) type Moved = mpsc::UnboundedSender<MovedTask>;

/// Serves `connection` here until its response turns live, then hands it
/// to a live shard, reports it to `moved` and returns: the task that
/// served it here ends, and nothing is kept on this side.
pub(super) fn serve<C: Movable>(connection: C, moved: Moved) -> impl Future<Output = ()> + Send {
    // Boxed before the future is made: an `async fn` keeps room for its
    // arguments in its state, so the task serving a connection that stays
    // here (a waiting long-poll) would hold a second, unused connection's
    // worth of bytes for as long as it lives.
    serve_boxed(Box::new(connection), moved)
}

async fn serve_boxed<C: Movable>(mut connection: Box<C>, moved: Moved) {
    let Some(live) = live_pool() else {
        return connection.await;
    };
    if !std::future::poll_fn(|cx| connection.poll_until_live(cx)).await {
        return;
    }
    if let Err(unreported) = moved.send(live.add(connection)) {
        // The listener is gone: nobody would wait for it or end it.
        unreported.0.abort();
    }
}

/// The connections that moved to the live runtime, as the accept loop
/// tracks them.
pub(super) struct MovedConnections {
    sender: Option<Moved>,
    receiver: mpsc::UnboundedReceiver<MovedTask>,
    running: FuturesUnordered<MovedTask>,
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    use super::*;

    /// Sets its flag when dropped (the connection closed).
    struct Closes(Arc<AtomicBool>);

    impl Drop for Closes {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A connection that waits for `gate`, then ends; `closed` tells when it
    /// was dropped.
    fn connection(gate: oneshot::Receiver<()>) -> (Pooled, MovedTask, Arc<AtomicBool>) {
        let closed = Arc::new(AtomicBool::new(false));
        let guard = Closes(closed.clone());
        let (pooled, handle) = Pooled::new(Box::new(Box::pin(async move {
            let _guard = guard;
            let _ = gate.await;
        })));
        (pooled, handle, closed)
    }

    #[tokio::test]
    async fn a_shard_serves_its_connections_and_reports_their_end() {
        let (shard, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run_shard(incoming));
        let (open, first_gate) = oneshot::channel();
        let (first, first_handle, first_closed) = connection(first_gate);
        let (_keep, second_gate) = oneshot::channel();
        let (second, _second_handle, second_closed) = connection(second_gate);
        shard.send(first).expect("shard running");
        shard.send(second).expect("shard running");
        open.send(()).expect("first connection waiting");
        first_handle.await;
        assert!(first_closed.load(Ordering::SeqCst));
        assert!(!second_closed.load(Ordering::SeqCst), "the other goes on");
    }

    #[tokio::test]
    async fn an_aborted_connection_is_closed() {
        let (shard, incoming) = mpsc::unbounded_channel();
        tokio::spawn(run_shard(incoming));
        let (_keep, gate) = oneshot::channel();
        let (pooled, handle, closed) = connection(gate);
        shard.send(pooled).expect("shard running");
        tokio::task::yield_now().await;
        assert!(!closed.load(Ordering::SeqCst), "waiting for its gate");
        handle.abort();
        handle.await;
        assert!(closed.load(Ordering::SeqCst));
    }

    #[tokio::test]
    async fn a_panicking_connection_leaves_the_others_running() {
        let (shard, incoming) = mpsc::unbounded_channel();
        let running = tokio::spawn(run_shard(incoming));
        let (panicking, panicked) = Pooled::new(Box::new(Box::pin(async {
            panic!("a connection's bug");
        })));
        let (open, gate) = oneshot::channel();
        let (other, other_handle, other_closed) = connection(gate);
        shard.send(other).expect("shard running");
        shard.send(panicking).expect("shard running");
        panicked.await;
        assert!(!running.is_finished(), "the shard goes on");
        assert!(!other_closed.load(Ordering::SeqCst));
        open.send(()).expect("still waiting");
        other_handle.await;
        assert!(other_closed.load(Ordering::SeqCst));
    }
}
