//! Fault injection for tests: [`FaultyStorage`] implements [`Storage`] by
//! delegating to another backend, and fails `submit` on demand with
//! [`StorageError::Full`] or [`StorageError::Unavailable`] — a full disk or
//! an I/O error, as a real backend reports them after leaving its store
//! unchanged.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::watch;

use super::{Mutation, ReadChunk, RecoveredStream, Storage, StorageError, StorageFuture, StreamId};

/// The failure to inject.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The disk is full (`507`).
    Full,
    /// A transient failure such as EIO (`503`).
    Unavailable,
}

impl Fault {
    fn error(self) -> StorageError {
        match self {
            Fault::Full => StorageError::Full("injected: no space left on device".into()),
            Fault::Unavailable => StorageError::Unavailable("injected: input/output error".into()),
        }
    }
}

#[derive(Default)]
struct State {
    fault: Option<Fault>,
    /// Failures left before the fault clears itself; `None`: until cleared.
    remaining: Option<usize>,
    /// While set, failed submits answer only once the gate opens, so tests
    /// can queue more work behind a write that is about to fail.
    gate: Option<watch::Receiver<bool>>,
    injected: usize,
    /// Submits still to delay until the gate opens; then they pass.
    to_delay: usize,
    delayed: usize,
}

/// Holds back the answers of failing submits until released (or dropped).
pub struct Gate(watch::Sender<bool>);

impl Gate {
    /// Lets the held failures be answered.
    pub fn release(self) {
        let _ = self.0.send(true);
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        let _ = self.0.send(true);
    }
}

/// A [`Storage`] that fails on demand; reads always go to the inner backend.
pub struct FaultyStorage {
    inner: Arc<dyn Storage>,
    state: Mutex<State>,
}

impl FaultyStorage {
    /// Wraps `inner`, failing nothing yet.
    pub fn new(inner: Arc<dyn Storage>) -> Arc<Self> {
        Arc::new(Self {
            inner,
            state: Mutex::new(State::default()),
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Fails every submit until [`FaultyStorage::clear`].
    pub fn fail(&self, fault: Fault) {
        let mut state = self.lock();
        state.fault = Some(fault);
        state.remaining = None;
    }

    /// Fails the next `count` submits, then passes again.
    pub fn fail_next(&self, fault: Fault, count: usize) {
        let mut state = self.lock();
        state.fault = Some(fault);
        state.remaining = Some(count);
    }

    /// Stops failing.
    pub fn clear(&self) {
        let mut state = self.lock();
        state.fault = None;
        state.remaining = None;
    }

    /// Makes failures wait for the returned gate before they are answered.
    pub fn hold_failures(&self) -> Gate {
        let (open, gate) = watch::channel(false);
        self.lock().gate = Some(gate);
        Gate(open)
    }

    /// How many submits were failed so far.
    pub fn injected(&self) -> usize {
        self.lock().injected
    }

    /// Waits (bounded) until `count` failures have been injected.
    ///
    /// # Panics
    /// When they never are: the test waited for something that cannot come.
    pub async fn until_injected(&self, count: usize) {
        for _ in 0..500 {
            if self.injected() >= count {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        panic!("{count} failures were never injected");
    }

    /// Holds the next `count` submits that are not failed until the
    /// returned gate opens, then passes them on: a slow but successful
    /// write. They reach the inner backend late, so nothing else may be
    /// queued on their stream meanwhile.
    pub fn delay_next(&self, count: usize) -> Gate {
        let gate = self.hold_failures();
        self.lock().to_delay = count;
        gate
    }

    /// How many submits were delayed so far.
    pub fn delayed(&self) -> usize {
        self.lock().delayed
    }
}

impl Storage for FaultyStorage {
    fn backend_name(&self) -> &'static str {
        self.inner.backend_name()
    }

    fn submit(&self, mutation: Mutation) -> StorageFuture<()> {
        let mut state = self.lock();
        let Some(fault) = state.fault else {
            if state.to_delay > 0
                && let Some(mut gate) = state.gate.clone()
            {
                state.to_delay -= 1;
                state.delayed += 1;
                let inner = self.inner.clone();
                return Box::pin(async move {
                    let _ = gate.wait_for(|open| *open).await;
                    inner.submit(mutation).await
                });
            }
            drop(state);
            return self.inner.submit(mutation);
        };
        if let Some(remaining) = state.remaining.as_mut() {
            *remaining -= 1;
            if *remaining == 0 {
                state.fault = None;
                state.remaining = None;
            }
        }
        state.injected += 1;
        let gate = state.gate.clone();
        drop(state);
        Box::pin(async move {
            if let Some(mut gate) = gate {
                let _ = gate.wait_for(|open| *open).await;
            }
            Err(fault.error())
        })
    }

    fn read(
        &self,
        id: StreamId,
        from: u64,
        until: u64,
        max_bytes: usize,
    ) -> StorageFuture<ReadChunk> {
        self.inner.read(id, from, until, max_bytes)
    }

    fn recover(&self) -> Vec<RecoveredStream> {
        self.inner.recover()
    }

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
