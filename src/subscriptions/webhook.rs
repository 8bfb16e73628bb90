//! Webhook delivery, off the request path: a bounded queue of
//! subscriptions with an undelivered wake, a dispatcher that runs one
//! delivery task per subscription, at most
//! `subscriptions.max_concurrent_deliveries` requests in flight, and
//! retries with jittered exponential backoff (`retry_initial_ms` doubling up
//! to `retry_max_ms`, ±20 %) until the receiver answers `2xx`, the wake is
//! superseded or the subscription deleted.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use super::ssrf::GuardedResolver;
use super::{SubscriptionSettings, Subscriptions};
use crate::clock;
use crate::metrics::event::{WebhookDelivered, WebhookFailed};

/// Most bytes of a receiver's answer that are read.
const MAX_ANSWER_BYTES: usize = 64 << 10;

/// The HTTP client deliveries use: no redirects (a redirect could lead
/// anywhere), the SSRF-guarded resolver, the configured timeout, no proxy
/// from the environment.
pub(super) fn client(settings: &SubscriptionSettings) -> reqwest::Client {
    let builder = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.delivery_timeout)
        .connect_timeout(settings.delivery_timeout)
        .no_proxy()
        .user_agent(concat!(
            "durable-streams-server/",
            env!("CARGO_PKG_VERSION")
        ))
        .dns_resolver(Arc::new(GuardedResolver {
            policy: settings.policy,
        }));
    builder.build().unwrap_or_else(|error| {
        tracing::error!(error = %error, "cannot build the webhook client with its settings; using defaults");
        reqwest::Client::new()
    })
}

/// The delay before retry `attempt` (1 = the first retry): `initial ×
/// 2^(attempt-1)`, capped at `max`, times `jitter` (expected in
/// `0.8..=1.2`).
pub fn backoff(attempt: u32, initial: Duration, max: Duration, jitter: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(32);
    let base = initial
        .checked_mul(1u32 << exponent.min(31))
        .unwrap_or(max)
        .min(max);
    base.mul_f64(jitter.clamp(0.0, 2.0))
}

/// A jitter factor in `0.8..1.2`.
fn jitter() -> f64 {
    0.8 + fastrand::f64() * 0.4
}

/// Runs the dispatcher: one task per queued subscription.
pub(super) fn spawn_dispatcher(subs: Subscriptions, mut queue: mpsc::Receiver<String>) {
    let permits = Arc::new(Semaphore::new(
        subs.shared.settings.max_concurrent_deliveries.max(1),
    ));
    let shutdown = subs.shared.shutdown.clone();
    let weak = Arc::downgrade(&subs.shared);
    drop(subs);
    tokio::spawn(async move {
        loop {
            let key = tokio::select! {
                key = queue.recv() => match key {
                    Some(key) => key,
                    None => return,
                },
                () = shutdown.cancelled() => return,
            };
            let Some(shared) = weak.upgrade() else { return };
            let subs = Subscriptions { shared };
            let permits = permits.clone();
            tokio::spawn(async move {
                deliver(&subs, &key, &permits).await;
                subs.delivery_finished(&key);
                // Data that arrived meanwhile, or a wake left undelivered
                // by shutdown, is picked up again.
                subs.kick(&key);
            });
        }
    });
}

impl Subscriptions {
    /// What a delivery of `key` needs, if its wake is still undelivered:
    /// the target, the generation and the body.
    fn delivery(&self, key: &str) -> Option<(String, u64, Vec<u8>)> {
        let (url, generation, notification) = self.lock().subs.get(key)?.delivery()?;
        let body = serde_json::to_vec(&notification).ok()?;
        Some((url, generation, body))
    }

    /// Records a webhook's `2xx` answer for the wake of `generation`: `done`
    /// acknowledges the snapshot and ends the wake, otherwise the lease
    /// starts.
    async fn delivered(&self, key: &str, generation: u64, done: bool) {
        let recorded = self
            .update(key, |state| {
                Ok(state
                    .subs
                    .get_mut(key)
                    .is_some_and(|sub| sub.delivered(generation, done, clock::unix_ms())))
            })
            .await;
        match recorded {
            Ok(true) => {}
            Ok(false) => return,
            Err(error) => {
                tracing::error!(subscription = %key, error = %error, "cannot record a delivered wake");
                return;
            }
        }
        self.update_lease_gauge();
        if done {
            self.kick(key);
        }
    }

    /// Marks the delivery of `key` as finished (the task ends).
    fn delivery_finished(&self, key: &str) {
        if let Some(sub) = self.lock().subs.get_mut(key) {
            sub.delivering = false;
        }
    }
}

/// Delivers the current wake of `key`, retrying until it is answered `2xx`
/// or no longer current.
async fn deliver(subs: &Subscriptions, key: &str, permits: &Semaphore) {
    let settings = &subs.shared.settings;
    let mut attempt: u32 = 0;
    loop {
        // Another server took the background work over.
        if !subs.is_leading() {
            return;
        }
        let Some((url, generation, body)) = subs.delivery(key) else {
            return;
        };
        let Ok(key_pair) = subs.signing_key() else {
            return;
        };
        let outcome = {
            let Ok(_permit) = permits.acquire().await else {
                return;
            };
            let sent_at = crate::clock::unix_secs();
            let signature = key_pair.signature_header(sent_at, &body);
            let started = Instant::now();
            let result = subs
                .shared
                .client
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .header("webhook-signature", signature)
                .body(body)
                .send()
                .await;
            let outcome = match result {
                Ok(response) if response.status().is_success() => Ok(read_done(response).await),
                Ok(response) => Err(format!("answered {}", response.status())),
                Err(error) => Err(describe(&error)),
            };
            (outcome, started.elapsed())
        };
        match outcome {
            (Ok(done), elapsed) => {
                WebhookDelivered { elapsed }.emit();
                subs.delivered(key, generation, done).await;
                return;
            }
            (Err(why), elapsed) => {
                attempt = attempt.saturating_add(1);
                let delay = backoff(
                    attempt,
                    settings.retry_initial,
                    settings.retry_max,
                    jitter(),
                );
                WebhookFailed {
                    subscription: key,
                    attempt,
                    elapsed,
                    retry_in: delay,
                    error: &why,
                }
                .emit();
                if !subs.sleep(delay).await {
                    return;
                }
            }
        }
    }
}

/// Whether a receiver's `2xx` answer says `{"done": true}`.
async fn read_done(mut response: reqwest::Response) -> bool {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() > MAX_ANSWER_BYTES {
            return false;
        }
    }
    serde_json::from_slice::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v.get("done").and_then(serde_json::Value::as_bool))
        .unwrap_or(false)
}

/// A delivery error with its causes, for the log.
fn describe(error: &reqwest::Error) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_from_one_second_to_a_minute() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        let plain: Vec<u64> = (1..=9)
            .map(|a| backoff(a, initial, max, 1.0).as_secs())
            .collect();
        assert_eq!(plain, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(backoff(1000, initial, max, 1.0), max);
    }

    #[test]
    fn jitter_stays_within_twenty_percent() {
        let (initial, max) = (Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..1000 {
            let j = jitter();
            assert!((0.8..1.2).contains(&j));
            let d = backoff(3, initial, max, j);
            assert!(d >= Duration::from_millis(3200) && d <= Duration::from_millis(4800));
        }
    }
}
