//! [`Drain`]: the signal that asks the lean HTTP/1.1 connections to finish
//! (close when idle, close after the response in flight).
//!
//! A connection registers its waker once and keeps it while the task's
//! waker stays the same, so waiting for the next request on a keep-alive
//! connection takes no lock; only registering, leaving and starting the
//! drain do.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

/// Starts the drain of every connection watching it. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub(crate) struct Drain {
    shared: Arc<Shared>,
}

#[derive(Debug, Default)]
struct Shared {
    started: AtomicBool,
    waiters: Mutex<Waiters>,
}

/// Registered wakers in reusable slots.
#[derive(Debug, Default)]
struct Waiters {
    slots: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl Drain {
    /// Asks every watching connection to finish, and wakes the idle ones.
    pub(crate) fn start(&self) {
        self.shared.started.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = {
            let mut waiters = self.shared.lock();
            waiters.slots.iter_mut().filter_map(Option::take).collect()
        };
        for waker in wakers {
            waker.wake();
        }
    }

    /// A watch for one connection.
    pub(crate) fn watch(&self) -> DrainWatch {
        DrainWatch {
            shared: Arc::clone(&self.shared),
            slot: None,
        }
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// One connection's view of the [`Drain`].
#[derive(Debug)]
pub(crate) struct DrainWatch {
    shared: Arc<Shared>,
    /// The slot this watch's waker sits in, and a copy of that waker to
    /// tell whether it must be replaced.
    slot: Option<(usize, Waker)>,
}

impl DrainWatch {
    /// Whether the drain has started.
    pub(crate) fn is_started(&self) -> bool {
        self.shared.started.load(Ordering::SeqCst)
    }

    /// Ready once the drain has started; otherwise makes sure `cx` is woken
    /// when it does.
    pub(crate) fn poll_started(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_started() {
            return Poll::Ready(());
        }
        let current = self
            .slot
            .as_ref()
            .is_some_and(|(_, waker)| waker.will_wake(cx.waker()));
        if !current {
            let mut waiters = self.shared.lock();
            let index = match self.slot.take() {
                Some((index, _)) => index,
                None => match waiters.free.pop() {
                    Some(index) => index,
                    None => {
                        waiters.slots.push(None);
                        waiters.slots.len() - 1
                    }
                },
            };
            waiters.slots[index] = Some(cx.waker().clone());
            self.slot = Some((index, cx.waker().clone()));
        }
        // Checked again after registering: a drain that started meanwhile
        // either saw the waker or is seen here.
        if self.is_started() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Drop for DrainWatch {
    fn drop(&mut self) {
        if let Some((index, _)) = self.slot.take() {
            let mut waiters = self.shared.lock();
            waiters.slots[index] = None;
            waiters.free.push(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn a_registered_watch_is_woken_and_then_ready() {
        let drain = Drain::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let mut watch = drain.watch();
        assert!(watch.poll_started(&mut cx).is_pending());
        assert!(watch.poll_started(&mut cx).is_pending());
        drain.start();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        assert!(watch.poll_started(&mut cx).is_ready());
        // A watch made after the start is ready at once.
        assert!(drain.watch().poll_started(&mut cx).is_ready());
    }

    #[test]
    fn slots_are_reused_after_a_watch_is_dropped() {
        let drain = Drain::default();
        let waker = Waker::noop();
        let mut cx = Context::from_waker(waker);
        for _ in 0..10 {
            let mut watch = drain.watch();
            assert!(watch.poll_started(&mut cx).is_pending());
        }
        assert_eq!(drain.shared.lock().slots.len(), 1);
    }
}
