//! Shutdown and readiness signals shared by the server and embedders.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;

/// Tells live readers (long-poll, SSE) that the server is draining.
///
/// Cheap to clone; cancelling any clone cancels all. Long-polls answer at once
/// and SSE streams end after a last control event when it fires.
#[derive(Clone, Debug)]
pub struct ShutdownToken {
    sender: Arc<watch::Sender<bool>>,
}

impl Default for ShutdownToken {
    fn default() -> Self {
        Self::new()
    }
}

impl ShutdownToken {
    /// A token that has not fired.
    pub fn new() -> Self {
        Self {
            sender: Arc::new(watch::Sender::new(false)),
        }
    }

    /// Fires the token.
    pub fn cancel(&self) {
        self.sender.send_replace(true);
    }

    /// Whether the token has fired.
    pub fn is_cancelled(&self) -> bool {
        *self.sender.borrow()
    }

    /// Resolves once the token fires; owns what it waits on, so it can be
    /// kept (boxed) across wake-ups and registers its waiter only once.
    pub fn cancelled_owned(self) -> impl Future<Output = ()> + Send + 'static {
        let mut receiver = self.sender.subscribe();
        async move {
            let _ = receiver.wait_for(|fired| *fired).await;
        }
    }

    /// Resolves once the token fires.
    pub async fn cancelled(&self) {
        let mut receiver = self.sender.subscribe();
        // The sender lives in `self`, so `wait_for` cannot fail while we wait.
        let _ = receiver.wait_for(|fired| *fired).await;
    }
}

/// The flag behind `/readyz`.
#[derive(Clone, Debug, Default)]
pub struct Readiness {
    ready: Arc<AtomicBool>,
    /// Set while a store several servers share is unreachable.
    store_unreachable: Arc<AtomicBool>,
    /// Set while the store is being opened (a durable backend replaying
    /// its log) behind listeners that are already bound.
    recovering: Arc<AtomicBool>,
}

impl Readiness {
    /// A flag in the given state.
    pub fn new(ready: bool) -> Self {
        Self {
            ready: Arc::new(AtomicBool::new(ready)),
            store_unreachable: Arc::default(),
            recovering: Arc::default(),
        }
    }

    /// A flag that is not ready while the store recovers: `/readyz`
    /// answers `503` with the reason `recovering` until
    /// [`Readiness::recovered`] and [`Readiness::set_ready`].
    pub fn recovering() -> Self {
        let readiness = Self::new(false);
        readiness.recovering.store(true, Ordering::Release);
        readiness
    }

    /// Records that the store has been opened.
    pub fn recovered(&self) {
        self.recovering.store(false, Ordering::Release);
        crate::metrics::event::ReadinessChanged {
            ready: self.is_ready(),
        }
        .emit();
    }

    /// Whether the store is still being opened.
    pub fn is_recovering(&self) -> bool {
        self.recovering.load(Ordering::Acquire)
    }

    /// Marks the server ready (or not) to take traffic; mirrored in the
    /// `durable_streams_ready` gauge.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
        crate::metrics::event::ReadinessChanged {
            ready: self.is_ready(),
        }
        .emit();
    }

    /// Records whether the store is reachable: a replica of a shared
    /// database is not ready while it cannot reach it, and ready again once
    /// it can, without a restart.
    pub fn set_store_reachable(&self, reachable: bool) {
        let was_unreachable = self.store_unreachable.swap(!reachable, Ordering::AcqRel);
        if was_unreachable == reachable {
            crate::metrics::event::ReadinessChanged {
                ready: self.is_ready(),
            }
            .emit();
        }
    }

    /// Whether `/readyz` answers `200`.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
            && !self.store_unreachable.load(Ordering::Acquire)
            && !self.recovering.load(Ordering::Acquire)
    }
}
