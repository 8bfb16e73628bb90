//! The operations the `__ds` APIs call: create or confirm, read, delete,
//! link and unlink streams, and the wake protocol's callback, ack, claim
//! and release. Each waits for the persisted state to be loaded, changes
//! memory under the lock ([`super::state`]), then persists.
//!
//! Subscriptions are keyed by `<root><id>`: `root` is the full path prefix
//! of the streams they watch (`/v1/stream/`, or a nested router's), so the
//! same id under two mounts names two subscriptions.

use std::collections::{BTreeMap, HashMap};

use super::Subscriptions;
use super::error::SubscriptionError;
use super::model::{self, Kind, Link, PutBody, STATE_VERSION, Stored, SubscriptionConfig};
use super::pattern::Pattern;
use super::state::Sub;
use super::wire::{AckBody, Claimed, SubscriptionView};
use crate::clock;
use crate::engine::Access;
use crate::metrics::event::{LeaseClaimed, SubscriptionAcked};

/// What a `PUT` did.
#[derive(Debug)]
pub(crate) enum PutOutcome {
    /// Created (`201`).
    Created(SubscriptionView),
    /// Existed with the same configuration (`200`).
    Confirmed(SubscriptionView),
}

fn key(root: &str, id: &str) -> String {
    format!("{root}{id}")
}

impl Subscriptions {
    fn view(&self, sub: &Sub) -> SubscriptionView {
        sub.view(self.shared.key.get().map(|key| key.kid()))
    }

    /// The tail of stream `name` under `root`, if it exists.
    fn tail_of(&self, root: &str, name: &str) -> Option<u64> {
        self.shared
            .engine
            .lookup(&format!("{root}{name}"), Access::Peek)
            .ok()
            .map(|entry| entry.snapshot().tail)
    }

    /// The tails of the existing streams among `names` under `root`, and
    /// of those `pattern` matches (all live streams by name): from the
    /// shared store when there is one, else from the engine.
    async fn tails(
        &self,
        root: &str,
        pattern: Option<&Pattern>,
        raw_pattern: Option<&str>,
        names: &[String],
    ) -> Result<(HashMap<String, u64>, Vec<(String, u64)>), SubscriptionError> {
        let mut matching = Vec::new();
        let mut tails = HashMap::new();
        if self.replicated().is_some() {
            for position in self.stored_positions(root, raw_pattern, names).await? {
                let Some(name) = position.path.strip_prefix(root) else {
                    continue;
                };
                if pattern.is_some_and(|p| p.matches(name)) {
                    matching.push((name.to_owned(), position.tail));
                }
                tails.insert(name.to_owned(), position.tail);
            }
        } else {
            if let Some(pattern) = pattern {
                matching = self
                    .shared
                    .engine
                    .snapshot_streams()
                    .into_iter()
                    .filter(|stream| !stream.soft_deleted)
                    .filter_map(|stream| {
                        let name = stream.spec.path.strip_prefix(root)?;
                        pattern
                            .matches(name)
                            .then(|| (name.to_owned(), stream.tail))
                    })
                    .collect();
            }
            for name in names {
                if let Some(tail) = self.tail_of(root, name) {
                    tails.insert(name.clone(), tail);
                }
            }
        }
        Ok((tails, matching))
    }

    /// `PUT __ds/subscriptions/{id}`: creates, or confirms an identical
    /// configuration.
    ///
    /// # Errors
    /// Invalid body or URL, a different existing configuration (`Exists`),
    /// too many subscriptions, or a storage failure.
    pub(crate) async fn put(
        &self,
        root: &str,
        public_root: &str,
        id: &str,
        body: PutBody,
    ) -> Result<PutOutcome, SubscriptionError> {
        self.ready().await?;
        let settings = &self.shared.settings;
        model::check_id(id, settings.max_identifier_bytes)?;
        let config: SubscriptionConfig = body.normalise(settings.rules())?;
        if let Some(url) = &config.webhook_url {
            settings.policy.check_url(url)?;
        }
        let key = key(root, id);
        let pattern = config.pattern.as_deref().map(Pattern::parse).transpose()?;
        // Streams the pattern already matches are linked at their tail, and
        // existing explicit streams start acknowledged there: a
        // subscription wakes for new data, not for history.
        let (tails, mut matching) = self
            .tails(
                root,
                pattern.as_ref(),
                config.pattern.as_deref(),
                &config.streams,
            )
            .await?;
        matching.retain(|(name, _)| config.wake_stream.as_deref() != Some(name.as_str()));
        matching.truncate(model::MAX_EXPLICIT_STREAMS);
        let mut inserted = false;
        let outcome = self
            .update(&key, |state| {
                if let Some(existing) = state.subs.get(&key) {
                    return if existing.stored.config == config {
                        Ok(PutOutcome::Confirmed(self.view(existing)))
                    } else {
                        Err(SubscriptionError::Exists)
                    };
                }
                if state.subs.len() >= settings.max_subscriptions {
                    return Err(SubscriptionError::TooMany(settings.max_subscriptions));
                }
                let links: BTreeMap<String, Link> = config
                    .streams
                    .iter()
                    .map(|name| {
                        let link = Link {
                            explicit: true,
                            glob: false,
                            acked: 0,
                        };
                        (name.clone(), link)
                    })
                    .collect();
                let mut sub = Sub::new(Stored {
                    version: STATE_VERSION,
                    id: id.to_owned(),
                    root: root.to_owned(),
                    public_root: public_root.to_owned(),
                    config,
                    created_at_ms: clock::unix_ms(),
                    generation: 0,
                    links,
                    wake: None,
                    wake_event: None,
                });
                for (name, tail) in matching {
                    sub.link_at(name, tail, false);
                }
                for (name, link) in &mut sub.stored.links {
                    if let Some(&tail) = tails.get(name) {
                        sub.tails.insert(name.clone(), tail);
                        link.acked = tail;
                    }
                }
                let view = self.view(&sub);
                state.subs.insert(key.clone(), sub);
                inserted = true;
                Ok(PutOutcome::Created(view))
            })
            .await;
        if outcome.is_err() && inserted {
            let mut state = self.lock();
            state.subs.remove(&key);
            self.recount(&state);
        }
        outcome
    }

    /// `GET __ds/subscriptions/{id}`.
    ///
    /// # Errors
    /// `NotFound`, or the store is unavailable.
    pub(crate) async fn get(
        &self,
        root: &str,
        id: &str,
    ) -> Result<SubscriptionView, SubscriptionError> {
        self.ready().await?;
        let key = key(root, id);
        self.read(&key, |state| {
            state
                .subs
                .get(&key)
                .map(|sub| self.view(sub))
                .ok_or(SubscriptionError::NotFound)
        })
        .await
    }

    /// `DELETE __ds/subscriptions/{id}`.
    ///
    /// # Errors
    /// `NotFound`, or a storage failure.
    pub(crate) async fn delete(&self, root: &str, id: &str) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = key(root, id);
        self.update(&key, |state| {
            state
                .subs
                .remove(&key)
                .map(drop)
                .ok_or(SubscriptionError::NotFound)
        })
        .await?;
        self.update_lease_gauge();
        Ok(())
    }

    /// `POST __ds/subscriptions/{id}/streams`: links explicit streams.
    ///
    /// # Errors
    /// `NotFound`, an invalid name, or a storage failure.
    pub(crate) async fn add_streams(
        &self,
        root: &str,
        id: &str,
        streams: Vec<String>,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let limits = self.shared.settings.name_limits;
        for name in &streams {
            model::check_stream_name(name, limits)?;
        }
        let key = key(root, id);
        let (tails, _) = self.tails(root, None, None, &streams).await?;
        self.update(&key, |state| {
            let sub = state.sub(&key)?;
            if sub.stored.links.len() + streams.len() > model::MAX_EXPLICIT_STREAMS {
                return Err(SubscriptionError::InvalidRequest(
                    "too many linked streams".into(),
                ));
            }
            for name in streams {
                if let Some(link) = sub.stored.links.get_mut(&name) {
                    link.explicit = true;
                    continue;
                }
                let tail = tails.get(&name).copied().unwrap_or(0);
                sub.link_at(name, tail, true);
            }
            Ok(())
        })
        .await
    }

    /// `DELETE __ds/subscriptions/{id}/streams/{name}`: unlinks a stream.
    ///
    /// # Errors
    /// `NotFound` (subscription), or a storage failure.
    pub(crate) async fn remove_stream(
        &self,
        root: &str,
        id: &str,
        name: &str,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = key(root, id);
        self.update(&key, |state| {
            let sub = state.sub(&key)?;
            sub.stored.links.remove(name);
            sub.tails.remove(name);
            Ok(())
        })
        .await
    }

    /// `POST …/callback` (webhook) and `POST …/ack` (pull-wake): moves
    /// acknowledged offsets; with `done`, ends the wake. Answers whether
    /// another wake follows.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `Unauthorized`, `Fenced`, a bad ack, or a
    /// storage failure.
    pub(crate) async fn ack(
        &self,
        root: &str,
        id: &str,
        kind: Kind,
        bearer: Option<&str>,
        body: AckBody,
    ) -> Result<bool, SubscriptionError> {
        self.ready().await?;
        let key = key(root, id);
        let next_wake = self
            .update(&key, |state| {
                state
                    .sub_of_kind(&key, kind)?
                    .ack(&body, bearer, clock::unix_ms())
            })
            .await?;
        SubscriptionAcked {
            kind: kind.as_str(),
        }
        .emit();
        if body.done {
            self.update_lease_gauge();
            self.kick(&key);
        }
        Ok(next_wake)
    }

    /// `POST …/claim` (pull-wake): takes the lease for `worker`. `None`
    /// when there is nothing to do.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `AlreadyClaimed`, or a storage failure.
    pub(crate) async fn claim(
        &self,
        root: &str,
        id: &str,
        worker: &str,
    ) -> Result<Option<Claimed>, SubscriptionError> {
        self.ready().await?;
        if worker.is_empty() || worker.len() > 256 {
            return Err(SubscriptionError::InvalidRequest(
                "worker must be 1 to 256 bytes".into(),
            ));
        }
        let key = key(root, id);
        let claimed = self
            .update(&key, |state| {
                state
                    .sub_of_kind(&key, Kind::PullWake)?
                    .claim(worker, clock::unix_ms())
            })
            .await?;
        if claimed.is_some() {
            LeaseClaimed.emit();
            self.update_lease_gauge();
        }
        Ok(claimed)
    }

    /// `POST …/release` (pull-wake): gives the lease back without acking.
    ///
    /// # Errors
    /// `NotFound`, `WrongType`, `Unauthorized`, `Fenced`, or a storage
    /// failure.
    pub(crate) async fn release(
        &self,
        root: &str,
        id: &str,
        bearer: Option<&str>,
        wake_id: &str,
        generation: u64,
    ) -> Result<(), SubscriptionError> {
        self.ready().await?;
        let key = key(root, id);
        self.update(&key, |state| {
            state.sub_of_kind(&key, Kind::PullWake)?.release(
                wake_id,
                generation,
                bearer,
                clock::unix_ms(),
            )
        })
        .await?;
        self.update_lease_gauge();
        self.kick(&key);
        Ok(())
    }
}
