//! Subscriptions over a store several servers share (the `postgres`
//! backend), so that any server answers any `__ds` request alike and
//! background work happens once:
//!
//! - The stored record is the authority. Every change runs under the
//!   store's cross-server lock of the record ([`Subscriptions::update`]):
//!   the record is read, the tails of its streams are read from the store
//!   (streams matching a pattern that were created through another server
//!   are linked then), the state machine runs in memory, and the result is
//!   written before the lock is released. Memory is only a cache.
//! - One server at a time (the holder of the store's `subscriptions` role
//!   lock, released when its session ends, so when it dies) runs the
//!   ticker: it refreshes every subscription, ends expired leases, starts
//!   wakes, delivers webhooks and writes wake events. Another server takes
//!   the role over within a tick of the holder's death, and finds in the
//!   records what was left undone (an undelivered wake, an unwritten event,
//!   a lease that runs out).

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use bytes::Bytes;

use super::error::SubscriptionError;
use super::model::{STATE_VERSION, Stored};
use super::state::{Kick, Sub};
use super::store::SUB_PREFIX;
use super::{State, Subscriptions};
use crate::clock;
use crate::metrics::event::LeasesExpired;
use crate::storage::shared::{SharedStreams, StoredPosition};

/// The role lock of the server running subscription background work.
const ROLE: &str = "subscriptions";

impl Subscriptions {
    /// The store shared with other servers, when it is one.
    pub(super) fn replicated(&self) -> Option<&Arc<dyn SharedStreams>> {
        self.shared.replicated.as_ref()
    }

    /// Whether this server runs the background work.
    pub(super) fn is_leading(&self) -> bool {
        self.shared.replicated.is_none() || self.shared.leading.load(Ordering::Relaxed)
    }

    /// Runs `op` on the state of subscription `key` and persists what it
    /// leaves of `key` (nothing when `op` fails). With a shared store, the
    /// record is read again first, and read, change and write happen under
    /// the store's lock of it.
    ///
    /// # Errors
    /// What `op` answers, or a storage failure.
    pub(super) async fn update<T>(
        &self,
        key: &str,
        op: impl FnOnce(&mut State) -> Result<T, SubscriptionError>,
    ) -> Result<T, SubscriptionError> {
        let Some(store) = self.replicated() else {
            let out = {
                let mut state = self.lock();
                let out = op(&mut state)?;
                self.recount(&state);
                out
            };
            self.persist(key).await?;
            return Ok(out);
        };
        let locked = store.lock_metadata(&format!("{SUB_PREFIX}{key}")).await?;
        self.reload(key, locked.value()).await?;
        let (out, value) = {
            let mut state = self.lock();
            let out = op(&mut state)?;
            self.recount(&state);
            let value = match state.subs.get(key) {
                Some(sub) => Some(Bytes::from(
                    serde_json::to_vec(&sub.stored)
                        .map_err(|e| SubscriptionError::Unavailable(e.to_string()))?,
                )),
                None => None,
            };
            (out, value)
        };
        locked.commit(value).await?;
        Ok(out)
    }

    /// Reads the current state of `key` (with a shared store, from the
    /// store) and runs `view` on it without changing anything.
    ///
    /// # Errors
    /// What `view` answers, or a storage failure.
    pub(super) async fn read<T>(
        &self,
        key: &str,
        view: impl FnOnce(&mut State) -> Result<T, SubscriptionError>,
    ) -> Result<T, SubscriptionError> {
        if self.replicated().is_some() {
            return self.update(key, view).await;
        }
        view(&mut self.lock())
    }

    /// Replaces the cached state of `key` with the stored record `value`,
    /// its streams' tails read from the store. This server's own flags (a
    /// delivery or an event append in flight) are kept.
    async fn reload(&self, key: &str, value: Option<&Bytes>) -> Result<(), SubscriptionError> {
        let Some(raw) = value else {
            let mut state = self.lock();
            state.subs.remove(key);
            self.recount(&state);
            return Ok(());
        };
        let stored: Stored = serde_json::from_slice(raw).map_err(|e| {
            SubscriptionError::Unavailable(format!("subscription record {key}: {e}"))
        })?;
        if stored.version != STATE_VERSION {
            return Err(SubscriptionError::Unavailable(format!(
                "subscription record {key} has unknown version {}",
                stored.version
            )));
        }
        let mut sub = Sub::new(stored);
        let positions = self.positions(&sub).await?;
        follow(&mut sub, &positions);
        let mut state = self.lock();
        if let Some(cached) = state.subs.get(key) {
            sub.delivering = cached.delivering;
            sub.writing_event = cached.writing_event;
        }
        state.subs.insert(key.to_owned(), sub);
        self.recount(&state);
        Ok(())
    }

    /// The stored positions of the streams `sub` links or its pattern may
    /// match.
    async fn positions(&self, sub: &Sub) -> Result<Vec<StoredPosition>, SubscriptionError> {
        let Some(store) = self.replicated() else {
            return Ok(Vec::new());
        };
        let root = &sub.stored.root;
        let paths = sub
            .stored
            .links
            .keys()
            .map(|name| format!("{root}{name}"))
            .collect();
        Ok(store
            .positions(
                paths,
                pattern_prefix(root, sub.stored.config.pattern.as_deref()),
            )
            .await?)
    }

    /// The positions of the streams under `root` that `pattern` may match
    /// and of the `names` under it (with a shared store; empty otherwise).
    pub(super) async fn stored_positions(
        &self,
        root: &str,
        pattern: Option<&str>,
        names: &[String],
    ) -> Result<Vec<StoredPosition>, SubscriptionError> {
        let Some(store) = self.replicated() else {
            return Ok(Vec::new());
        };
        let paths = names.iter().map(|name| format!("{root}{name}")).collect();
        Ok(store
            .positions(paths, pattern_prefix(root, pattern))
            .await?)
    }

    /// The shared store's ticker step: takes (or keeps) the role and, when
    /// this server holds it, refreshes every subscription, ends expired
    /// leases and starts wakes.
    pub(super) async fn tick_replicated(&self, store: &Arc<dyn SharedStreams>) {
        let leading = match store.lead(ROLE).await {
            Ok(leading) => leading,
            Err(error) => {
                tracing::debug!(%error, "cannot check the subscriptions role lock");
                false
            }
        };
        let was = self.shared.leading.swap(leading, Ordering::Relaxed);
        if leading != was {
            tracing::info!(leading, "subscription background work on this server");
        }
        if !leading {
            return;
        }
        let keys: HashSet<String> = match self.shared.engine.storage().metadata().await {
            Ok(entries) => entries
                .into_iter()
                .filter_map(|(key, _)| key.strip_prefix(SUB_PREFIX).map(str::to_owned))
                .collect(),
            Err(error) => {
                tracing::debug!(%error, "cannot list subscriptions");
                return;
            }
        };
        {
            let mut state = self.lock();
            state.subs.retain(|key, _| keys.contains(key));
            self.recount(&state);
        }
        let now = clock::unix_ms();
        let mut expired = 0;
        for key in keys {
            let step = self
                .update(&key, |state| {
                    let Some(sub) = state.subs.get_mut(&key) else {
                        return Ok((false, Kick::Idle));
                    };
                    let ended = sub.expire_lease(now);
                    Ok((ended, super::wake::decide(sub, now).1))
                })
                .await;
            match step {
                Ok((ended, next)) => {
                    expired += usize::from(ended);
                    self.start_wake(&key, next);
                }
                Err(error) => {
                    tracing::debug!(subscription = %key, %error, "cannot refresh a subscription");
                }
            }
        }
        if expired > 0 {
            LeasesExpired { count: expired }.emit();
        }
        self.update_lease_gauge();
    }
}

/// Where the streams a pattern may match start: `root` and the pattern up
/// to its first wildcard.
fn pattern_prefix(root: &str, pattern: Option<&str>) -> Option<String> {
    let pattern = pattern?;
    let literal = pattern.split('*').next().unwrap_or_default();
    Some(format!("{root}{literal}"))
}

/// Takes the stored positions into `sub`: tails of linked streams, and
/// links to matching streams created through another server (acknowledged
/// at their tail when they existed before the subscription).
fn follow(sub: &mut Sub, positions: &[StoredPosition]) {
    for position in positions {
        let Some(name) = position.path.strip_prefix(sub.stored.root.as_str()) else {
            continue;
        };
        let linked = sub.stored.links.contains_key(name);
        let name = name.to_owned();
        if sub.stream_changed(&position.path, position.tail).is_some()
            && !linked
            && position.created_at_ms < sub.stored.created_at_ms
            && let Some(link) = sub.stored.links.get_mut(&name)
        {
            link.acked = position.tail;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_are_searched_from_their_literal_start() {
        assert_eq!(
            pattern_prefix("/v1/stream/", Some("events/*")).as_deref(),
            Some("/v1/stream/events/")
        );
        assert_eq!(
            pattern_prefix("/v1/stream/", Some("**")).as_deref(),
            Some("/v1/stream/")
        );
        assert_eq!(pattern_prefix("/v1/stream/", None), None);
    }
}
