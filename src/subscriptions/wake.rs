//! Starting wakes ([`super::state::Sub::kick`]) and doing what they need:
//! queueing webhook deliveries, appending pull-wake events to their wake
//! streams; following the engine's committed tails; and the ticker that
//! ends expired leases and offers again what could not be started.

use std::sync::Arc;

use bytes::Bytes;

use super::state::{Kick, Sub};
use super::{Loading, Subscriptions};
use crate::clock;
use crate::engine::{Access, AppendRequest};
use crate::metrics::event::{
    LeasesExpired, LeasesHeld, WakeEventFailed, WakeEventWritten, WebhookQueueFull,
};
use crate::protocol::header::ContentType;

/// Most observer events buffered while the state is still loading.
const MAX_EARLY_EVENTS: usize = 100_000;

impl Subscriptions {
    /// The engine's notification: stream `path` now ends at `tail`.
    pub(super) fn stream_changed(&self, path: &str, tail: u64) {
        let mut state = self.lock();
        if !state.loaded {
            if state.early.len() < MAX_EARLY_EVENTS {
                state.early.push((path.to_owned(), tail));
            }
            return;
        }
        // With a shared store, the role holder's ticker follows the tails
        // in the store instead.
        if self.shared.count.load(std::sync::atomic::Ordering::Relaxed) == 0
            || self.replicated().is_some()
        {
            return;
        }
        let mut to_persist = Vec::new();
        let mut to_kick = Vec::new();
        for (key, sub) in state.subs.iter_mut() {
            let Some(touched) = sub.stream_changed(path, tail) else {
                continue;
            };
            if touched.persist {
                to_persist.push(key.clone());
            }
            if touched.pending {
                to_kick.push(key.clone());
            }
        }
        drop(state);
        for key in &to_kick {
            self.kick(key);
        }
        for key in to_persist {
            self.persist_later(key);
        }
    }

    /// Starts a wake for `key` if it is pending and none is in progress.
    /// Never awaits; persistence and I/O go to tasks. With a shared store
    /// the ticker of the server holding the role starts wakes instead.
    pub(super) fn kick(&self, key: &str) {
        if self.replicated().is_some() {
            return;
        }
        let (changed, next) = {
            let mut state = self.lock();
            let Some(sub) = state.subs.get_mut(key) else {
                return;
            };
            decide(sub, clock::unix_ms())
        };
        self.start_wake(key, next);
        // The event's task persists the state once the event is written.
        if changed && next != Kick::WriteEvent {
            self.persist_later(key.to_owned());
        }
    }

    /// Starts what [`decide`] asked for.
    pub(super) fn start_wake(&self, key: &str, next: Kick) {
        match next {
            Kick::Idle => {}
            Kick::Deliver => {
                if self.shared.deliveries.try_send(key.to_owned()).is_err() {
                    // Queue full: the ticker offers it again.
                    WebhookQueueFull.emit();
                    if let Some(sub) = self.lock().subs.get_mut(key) {
                        sub.delivering = false;
                    }
                }
            }
            Kick::WriteEvent => {
                let this = self.clone();
                let key = key.to_owned();
                tokio::spawn(async move { this.write_wake_event(&key).await });
            }
        }
    }

    /// Appends the pending wake event of a pull-wake subscription.
    async fn write_wake_event(&self, key: &str) {
        let prepared = self.lock().subs.get(key).and_then(|sub| sub.wake_event());
        let Some((wake_path, body)) = prepared else {
            self.event_written(key, None).await;
            return;
        };
        let engine = &self.shared.engine;
        let outcome = match engine.lookup_fresh(&wake_path, Access::Peek).await {
            Ok(entry) => {
                let request = AppendRequest {
                    content_type: Some(ContentType::new(&entry.content_type().raw)),
                    body: Bytes::from(serde_json::to_vec(&body).unwrap_or_default()),
                    close: false,
                    producer: None,
                    stream_seq: None,
                };
                engine
                    .append(&wake_path, request)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
            Err(error) => Err(error.to_string()),
        };
        match outcome {
            Ok(()) => {
                WakeEventWritten.emit();
                self.event_written(key, Some(&body.wake_id)).await;
            }
            Err(error) => {
                WakeEventFailed {
                    wake_stream: &wake_path,
                    error: &error,
                }
                .emit();
                self.event_written(key, None).await;
            }
        }
    }

    /// Records the end of a wake event's append (`written`: the event's
    /// wake id, when it was written).
    async fn event_written(&self, key: &str, written: Option<&str>) {
        let recorded = self
            .update(key, |state| {
                if let Some(sub) = state.subs.get_mut(key) {
                    sub.event_written(written);
                }
                Ok(())
            })
            .await;
        if let Err(error) = recorded {
            // Offered again later (the event may then be written twice).
            if let Some(sub) = self.lock().subs.get_mut(key) {
                sub.writing_event = false;
            }
            tracing::error!(subscription = %key, error = %error, "cannot record a written wake event");
        }
    }

    /// Every tick: ends expired leases (and wakes again when data is
    /// pending), and offers undelivered wakes and unwritten wake events
    /// again.
    fn tick(&self) {
        let now = clock::unix_ms();
        let mut expired = Vec::new();
        let mut retry = Vec::new();
        {
            let mut state = self.lock();
            for (key, sub) in state.subs.iter_mut() {
                if sub.expire_lease(now) {
                    expired.push(key.clone());
                } else if sub.needs_offer() {
                    retry.push(key.clone());
                }
            }
        }
        if !expired.is_empty() {
            LeasesExpired {
                count: expired.len(),
            }
            .emit();
            self.update_lease_gauge();
        }
        for key in expired.iter().chain(retry.iter()) {
            self.kick(key);
        }
    }

    pub(super) fn spawn_ticker(&self) {
        let weak = Arc::downgrade(&self.shared);
        let shutdown = self.shared.shutdown.clone();
        let period = self.shared.settings.tick_interval;
        tokio::spawn(async move {
            let mut interval = tokio::time::interval(period);
            interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = interval.tick() => {}
                    () = shutdown.cancelled() => return,
                }
                let Some(shared) = weak.upgrade() else { return };
                let this = Subscriptions { shared };
                let ready = *this.shared.loading.borrow() == Loading::Ready;
                if !ready {
                    continue;
                }
                match this.shared.replicated.clone() {
                    Some(store) => this.tick_replicated(&store).await,
                    None => this.tick(),
                }
            }
        });
    }

    /// Sets the active-leases gauge.
    pub(super) fn update_lease_gauge(&self) {
        let now = clock::unix_ms();
        let active = self
            .lock()
            .subs
            .values()
            .filter(|sub| sub.lease_active(now))
            .count();
        LeasesHeld { active }.emit();
    }
}

/// What to start for `sub` ([`Sub::kick`]), with this server's delivery
/// flag set when a delivery is to be queued; and whether the persisted
/// state changed.
pub(super) fn decide(sub: &mut Sub, now: i64) -> (bool, Kick) {
    match sub.kick(now) {
        Ok((changed, Kick::Deliver)) => {
            sub.delivering = true;
            (changed, Kick::Deliver)
        }
        Ok(kicked) => kicked,
        Err(error) => {
            // The ticker tries again.
            tracing::error!(subscription = %sub.stored.id, error = %error, "cannot start a wake");
            (false, Kick::Idle)
        }
    }
}
