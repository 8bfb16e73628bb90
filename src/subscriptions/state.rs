//! The state machine of one subscription ([`Sub`]): its links and their
//! acknowledged positions, the known tails, and the wake in progress with
//! its generation and lease. Every transition is a synchronous method that
//! works on memory only and tells the caller what to persist or start;
//! the manager holds the lock around it and does the I/O after.
//!
//! # Wakes and fencing
//! A subscription is *pending* when a linked stream's tail is past its
//! acknowledged position. A pending subscription without a wake in progress
//! starts one:
//! - **webhook**: the generation is bumped and a signed notification is
//!   queued for delivery. A `2xx` answer with `{"done": true}` acknowledges
//!   the wake's snapshot at once; any other `2xx` starts the lease, which
//!   callbacks extend and a callback with `done` ends.
//! - **pull-wake**: an event is appended to the wake stream. A worker
//!   `claim`s the lease (bumping the generation); `ack` and `release` end it.
//!
//! Callbacks, acks and releases carry `wake_id` and `generation`; anything
//! but the current wake's is answered `FENCED`, so a worker whose lease
//! expired or was superseded can never move offsets. An expired lease ends
//! the wake; pending data then starts the next one.

use std::collections::HashMap;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

use super::error::SubscriptionError;
use super::model::{Kind, Link, Stored, Wake, WakeEvent};
use super::pattern::Pattern;
use super::wire::{
    self, AckBody, AckEntry, Claimed, LinkView, SigningView, SubscriptionView, WakeNotice,
    WakeStream, WakeView, WebhookView,
};
use crate::clock;
use crate::protocol::offset::{ReadFrom, parse_read_from};

/// A random URL-safe token of `bytes` bytes from the system's
/// cryptographic random source: tokens are bearer secrets.
///
/// # Errors
/// [`SubscriptionError::Unavailable`] when the source fails; there is no
/// weaker fallback.
pub(super) fn token(bytes: usize) -> Result<String, SubscriptionError> {
    let mut raw = vec![0u8; bytes];
    SystemRandom::new()
        .fill(&mut raw)
        .map_err(|_| SubscriptionError::Unavailable("the system random source failed".into()))?;
    Ok(URL_SAFE_NO_PAD.encode(raw))
}

/// A fresh wake id.
fn wake_id() -> Result<String, SubscriptionError> {
    Ok(format!("w_{}", token(12)?))
}

/// Constant-time comparison of two tokens.
fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// What the manager does after [`Sub::kick`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Kick {
    /// Nothing to start.
    Idle,
    /// Queue the undelivered webhook wake for delivery.
    Deliver,
    /// Append the wake event (marked as being written).
    WriteEvent,
}

/// What a stream's new tail did to a subscription.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Touched {
    /// The persisted state changed (a new link, a reset position).
    pub persist: bool,
    /// Data is pending: a wake may start.
    pub pending: bool,
}

/// A subscription in memory: its persisted record plus what is rebuilt.
#[derive(Debug)]
pub(super) struct Sub {
    pub stored: Stored,
    pattern: Option<Pattern>,
    /// Known tails of linked streams.
    pub tails: HashMap<String, u64>,
    /// A delivery task owns the current webhook wake.
    pub delivering: bool,
    /// A wake-stream append is in flight.
    pub writing_event: bool,
}

impl Sub {
    pub fn new(stored: Stored) -> Self {
        let pattern = stored
            .config
            .pattern
            .as_deref()
            .and_then(|p| Pattern::parse(p).ok());
        Self {
            stored,
            pattern,
            tails: HashMap::new(),
            delivering: false,
            writing_event: false,
        }
    }

    fn tail(&self, name: &str) -> u64 {
        self.tails.get(name).copied().unwrap_or(0)
    }

    /// Links `name` at `tail`, acknowledged there unless linked already: a
    /// subscription wakes for new data, not for history.
    pub fn link_at(&mut self, name: String, tail: u64, explicit: bool) {
        self.tails.insert(name.clone(), tail);
        self.stored.links.entry(name).or_insert(Link {
            explicit,
            glob: !explicit,
            acked: tail,
        });
    }

    /// Linked streams with unacknowledged data, and their tails.
    pub fn pending(&self) -> Vec<(String, u64)> {
        self.stored
            .links
            .iter()
            .filter_map(|(name, link)| {
                let tail = self.tail(name);
                (tail > link.acked).then(|| (name.clone(), tail))
            })
            .collect()
    }

    pub fn is_pending(&self) -> bool {
        self.stored
            .links
            .iter()
            .any(|(name, link)| self.tail(name) > link.acked)
    }

    pub fn lease_active(&self, now_ms: i64) -> bool {
        self.stored
            .wake
            .as_ref()
            .and_then(|w| w.lease_expires_at_ms)
            .is_some_and(|at| at > now_ms)
    }

    fn lease_ttl_ms(&self) -> i64 {
        i64::try_from(self.stored.config.lease_ttl_ms).unwrap_or(i64::MAX)
    }

    /// The streams of a wake as sent to consumers.
    fn wake_streams(&self, snapshot: &[(String, u64)]) -> Vec<WakeStream> {
        snapshot
            .iter()
            .map(|(name, tail)| {
                let acked = self.stored.links.get(name).map_or(0, |l| l.acked);
                WakeStream {
                    has_pending: *tail > acked,
                    offset: wire::offset(acked),
                    path: name.clone(),
                    tail_offset: wire::offset(*tail),
                }
            })
            .collect()
    }

    /// Stream `path` (a full path) now ends at `tail`.
    pub fn stream_changed(&mut self, path: &str, tail: u64) -> Option<Touched> {
        let name = path.strip_prefix(self.stored.root.as_str())?;
        if self.stored.config.wake_stream.as_deref() == Some(name) {
            return None;
        }
        let linked = self.stored.links.contains_key(name);
        let matched = self.pattern.as_ref().is_some_and(|p| p.matches(name));
        if !linked && !matched {
            return None;
        }
        let mut touched = Touched::default();
        if !linked {
            self.stored.links.insert(
                name.to_owned(),
                Link {
                    explicit: false,
                    glob: true,
                    acked: 0,
                },
            );
            touched.persist = true;
        }
        let known = self.tails.entry(name.to_owned()).or_insert(0);
        if tail > *known {
            *known = tail;
        } else if tail < *known {
            // Tails only grow: a smaller one is a new stream at the same
            // path (deleted and re-created), whose data is all new.
            *known = tail;
            if let Some(link) = self.stored.links.get_mut(name) {
                link.acked = 0;
            }
            touched.persist = true;
        }
        touched.pending = self.is_pending();
        Some(touched)
    }

    /// Starts a wake if data is pending and none is in progress; returns
    /// whether the persisted state changed and what to start.
    ///
    /// # Errors
    /// When no token can be drawn; nothing changed then.
    pub fn kick(&mut self, now: i64) -> Result<(bool, Kick), SubscriptionError> {
        let mut changed = false;
        match self.stored.config.kind {
            Kind::Webhook => {
                if self.stored.wake.is_none() && self.is_pending() {
                    let wake = Wake {
                        wake_id: wake_id()?,
                        generation: self.stored.generation + 1,
                        token: token(32)?,
                        holder: None,
                        lease_expires_at_ms: None,
                        snapshot: self.pending(),
                    };
                    self.stored.generation = wake.generation;
                    self.stored.wake = Some(wake);
                    changed = true;
                }
                let undelivered = self
                    .stored
                    .wake
                    .as_ref()
                    .is_some_and(|w| w.lease_expires_at_ms.is_none());
                if undelivered && !self.delivering {
                    return Ok((changed, Kick::Deliver));
                }
            }
            Kind::PullWake => {
                let claimed = self.lease_active(now);
                if !claimed && self.stored.wake_event.is_none() && self.is_pending() {
                    self.stored.wake_event = Some(WakeEvent {
                        wake_id: wake_id()?,
                        written: false,
                    });
                    changed = true;
                }
                let unwritten = self.stored.wake_event.as_ref().is_some_and(|e| !e.written);
                if unwritten && !self.writing_event {
                    self.writing_event = true;
                    return Ok((changed, Kick::WriteEvent));
                }
            }
        }
        Ok((changed, Kick::Idle))
    }

    /// The pending wake event to append, and the wake stream's name.
    pub fn wake_event(&self) -> Option<(String, WakeNotice)> {
        let event = self.stored.wake_event.as_ref()?;
        let wake = self.stored.config.wake_stream.as_ref()?;
        let body = WakeNotice {
            callback_token: None,
            callback_url: None,
            generation: self.stored.generation,
            lease_ttl_ms: None,
            streams: self.wake_streams(&self.pending()),
            subscription_id: self.stored.id.clone(),
            kind: "wake",
            wake_id: event.wake_id.clone(),
        };
        Some((format!("{}{wake}", self.stored.root), body))
    }

    /// The append of wake event `written` (if it succeeded) is over.
    pub fn event_written(&mut self, written: Option<&str>) {
        self.writing_event = false;
        if let (Some(id), Some(event)) = (written, self.stored.wake_event.as_mut())
            && event.wake_id == id
        {
            event.written = true;
        }
    }

    /// The target, generation and notification of an undelivered webhook
    /// wake.
    pub fn delivery(&self) -> Option<(String, u64, WakeNotice)> {
        let wake = self.stored.wake.as_ref()?;
        if wake.lease_expires_at_ms.is_some() {
            return None;
        }
        let url = self.stored.config.webhook_url.clone()?;
        let stored = &self.stored;
        let notification = WakeNotice {
            callback_token: Some(wake.token.clone()),
            callback_url: Some(format!(
                "{}__ds/subscriptions/{}/callback",
                stored.public_root, stored.id
            )),
            generation: wake.generation,
            lease_ttl_ms: Some(stored.config.lease_ttl_ms),
            streams: self.wake_streams(&wake.snapshot),
            subscription_id: stored.id.clone(),
            kind: "wake",
            wake_id: wake.wake_id.clone(),
        };
        Some((url, wake.generation, notification))
    }

    /// A webhook answered `2xx` for the wake of `generation`: `done`
    /// acknowledges the snapshot and ends the wake, otherwise the lease
    /// starts. `false` when that wake is no longer the one delivered
    /// (acked by a callback meanwhile, or superseded).
    pub fn delivered(&mut self, generation: u64, done: bool, now: i64) -> bool {
        let ttl = self.lease_ttl_ms();
        let Some(wake) = self.stored.wake.as_mut() else {
            return false;
        };
        if wake.generation != generation || wake.lease_expires_at_ms.is_some() {
            return false;
        }
        if done {
            let snapshot = std::mem::take(&mut wake.snapshot);
            self.stored.wake = None;
            for (name, tail) in snapshot {
                if let Some(link) = self.stored.links.get_mut(&name) {
                    link.acked = link.acked.max(tail);
                }
            }
        } else {
            wake.lease_expires_at_ms = Some(now.saturating_add(ttl));
        }
        true
    }

    /// Checks the fencing and the token of a request against the current
    /// wake.
    fn check_wake(
        &self,
        wake_id: &str,
        generation: u64,
        bearer: Option<&str>,
        now: i64,
    ) -> Result<(), SubscriptionError> {
        let bearer = bearer.ok_or(SubscriptionError::Unauthorized)?;
        let wake = self.stored.wake.as_ref().ok_or(SubscriptionError::Fenced)?;
        if wake.generation != generation
            || wake.wake_id != wake_id
            || self.stored.generation != generation
            || wake.lease_expires_at_ms.is_some_and(|at| at <= now)
        {
            return Err(SubscriptionError::Fenced);
        }
        if !same_token(&wake.token, bearer) {
            return Err(SubscriptionError::Unauthorized);
        }
        Ok(())
    }

    /// Moves acknowledged positions; all or nothing.
    fn apply_acks(&mut self, acks: &[AckEntry]) -> Result<(), SubscriptionError> {
        let mut updates = Vec::with_capacity(acks.len());
        for ack in acks {
            if !self.stored.links.contains_key(&ack.stream) {
                return Err(SubscriptionError::InvalidStream(ack.stream.clone()));
            }
            let position = match parse_read_from(&ack.offset) {
                Ok(ReadFrom::At(offset)) => offset.position(),
                Ok(ReadFrom::Start) => 0,
                _ => return Err(SubscriptionError::InvalidOffset(ack.offset.clone())),
            };
            if position > self.tail(&ack.stream) {
                return Err(SubscriptionError::InvalidOffset(ack.offset.clone()));
            }
            updates.push((ack.stream.clone(), position));
        }
        for (name, position) in updates {
            if let Some(link) = self.stored.links.get_mut(&name) {
                link.acked = link.acked.max(position);
            }
        }
        Ok(())
    }

    /// A callback or ack: moves acknowledged offsets; with `done`, ends the
    /// wake, else extends the lease. Answers whether another wake follows.
    ///
    /// # Errors
    /// `Unauthorized`, `Fenced`, or a bad ack.
    pub fn ack(
        &mut self,
        body: &AckBody,
        bearer: Option<&str>,
        now: i64,
    ) -> Result<bool, SubscriptionError> {
        self.check_wake(&body.wake_id, body.generation, bearer, now)?;
        self.apply_acks(&body.acks)?;
        if body.done {
            self.stored.wake = None;
            return Ok(self.is_pending());
        }
        let ttl = self.lease_ttl_ms();
        if let Some(wake) = self.stored.wake.as_mut() {
            wake.lease_expires_at_ms = Some(now.saturating_add(ttl));
        }
        Ok(false)
    }

    /// A pull-wake claim by `worker`: the lease, or `None` when nothing is
    /// pending.
    ///
    /// # Errors
    /// `AlreadyClaimed` while another lease runs; `Unavailable` when no
    /// token can be drawn.
    pub fn claim(&mut self, worker: &str, now: i64) -> Result<Option<Claimed>, SubscriptionError> {
        if self.lease_active(now) {
            let holder = self
                .stored
                .wake
                .as_ref()
                .and_then(|w| w.holder.clone())
                .unwrap_or_default();
            return Err(SubscriptionError::AlreadyClaimed { holder });
        }
        let pending = self.pending();
        if pending.is_empty() {
            self.stored.wake = None;
            self.stored.wake_event = None;
            return Ok(None);
        }
        let token = token(32)?;
        let wake_id = match self.stored.wake_event.take() {
            Some(event) => event.wake_id,
            None => wake_id()?,
        };
        self.stored.generation += 1;
        let wake = Wake {
            wake_id,
            generation: self.stored.generation,
            token,
            holder: Some(worker.to_owned()),
            lease_expires_at_ms: Some(now.saturating_add(self.lease_ttl_ms())),
            snapshot: pending,
        };
        let claimed = Claimed {
            generation: wake.generation,
            lease_expires_at: wake.lease_expires_at_ms.and_then(clock::rfc3339_ms),
            lease_ttl_ms: self.stored.config.lease_ttl_ms,
            streams: self.wake_streams(&wake.snapshot),
            subscription_id: self.stored.id.clone(),
            token: wake.token.clone(),
            wake_id: wake.wake_id.clone(),
            worker: worker.to_owned(),
        };
        self.stored.wake = Some(wake);
        Ok(Some(claimed))
    }

    /// A pull-wake release: gives the lease back without acking.
    ///
    /// # Errors
    /// `Unauthorized` or `Fenced`.
    pub fn release(
        &mut self,
        wake_id: &str,
        generation: u64,
        bearer: Option<&str>,
        now: i64,
    ) -> Result<(), SubscriptionError> {
        self.check_wake(wake_id, generation, bearer, now)?;
        self.stored.wake = None;
        Ok(())
    }

    /// Ends a lease that ran out; returns whether one did.
    pub fn expire_lease(&mut self, now: i64) -> bool {
        let over = self
            .stored
            .wake
            .as_ref()
            .and_then(|w| w.lease_expires_at_ms)
            .is_some_and(|at| at <= now);
        if over {
            self.stored.wake = None;
        }
        over
    }

    /// Whether a wake waits to be offered again: an undelivered webhook
    /// wake (or pending data without one), or an unwritten wake event.
    pub fn needs_offer(&self) -> bool {
        let undelivered = self.stored.config.kind == Kind::Webhook
            && !self.delivering
            && match &self.stored.wake {
                Some(wake) => wake.lease_expires_at_ms.is_none(),
                None => self.is_pending(),
            };
        let unwritten =
            self.stored.wake_event.as_ref().is_some_and(|e| !e.written) && !self.writing_event;
        undelivered || unwritten
    }

    /// The subscription as the API shows it; `kid` names the signing key.
    pub fn view(&self, kid: Option<&str>) -> SubscriptionView {
        let stored = &self.stored;
        let config = &stored.config;
        let streams = stored
            .links
            .iter()
            .map(|(name, link)| {
                let tail = self.tail(name);
                LinkView {
                    acked_offset: wire::offset(link.acked),
                    has_pending: tail > link.acked,
                    link_type: if link.explicit { "explicit" } else { "glob" },
                    path: name.clone(),
                    tail_offset: wire::offset(tail.max(link.acked)),
                }
            })
            .collect();
        SubscriptionView {
            created_at: clock::rfc3339_ms(stored.created_at_ms),
            description: config.description.clone(),
            generation: stored.generation,
            id: stored.id.clone(),
            lease_ttl_ms: config.lease_ttl_ms,
            pattern: config.pattern.clone(),
            streams,
            kind: config.kind,
            wake: stored.wake.as_ref().map(|wake| WakeView {
                generation: wake.generation,
                holder: wake.holder.clone(),
                lease_expires_at: wake.lease_expires_at_ms.and_then(clock::rfc3339_ms),
                wake_id: wake.wake_id.clone(),
            }),
            wake_stream: config.wake_stream.clone(),
            webhook: config.webhook_url.as_ref().map(|url| WebhookView {
                signing: SigningView {
                    alg: "ed25519",
                    jwks_url: format!("{}__ds/jwks.json", stored.public_root),
                    kid: kid.map(str::to_owned),
                },
                url: url.clone(),
            }),
        }
    }
}

#[cfg(test)]
mod tests;
