//! Persistence of the subscriptions in the store's metadata area (one
//! record per subscription, written whole), and loading at start: the
//! signing key (from its file, stored, or generated and stored) and every
//! record, with the tails of their streams taken from the engine.

use std::collections::HashMap;
use std::sync::Arc;

use bytes::Bytes;

use super::Subscriptions;
use super::error::SubscriptionError;
use super::model::{STATE_VERSION, Stored};
use super::signing::SigningKey;
use super::state::Sub;
use crate::engine::Access;

/// Metadata key prefix of subscription records.
pub(super) const SUB_PREFIX: &str = "subscriptions/sub/";
/// Metadata key of the generated signing key (PKCS#8 DER).
const KEY_ENTRY: &str = "subscriptions/signing-key";

impl Subscriptions {
    /// Loads the signing key and every subscription, rebuilds tails from the
    /// engine, replays changes seen meanwhile and resumes wakes.
    pub(super) async fn load(&self) -> Result<(), SubscriptionError> {
        let storage = self.shared.engine.storage().clone();
        let entries = storage.metadata().await?;
        let key = match &self.shared.settings.signing_key_path {
            Some(path) => SigningKey::from_pem_file(path).map_err(|e| {
                SubscriptionError::Unavailable(format!("signing key {}: {e}", path.display()))
            })?,
            None => self.stored_key(&entries).await?,
        };
        let _ = self.shared.key.set(Arc::new(key));
        let mut subs = HashMap::new();
        for (entry_key, raw) in &entries {
            let Some(key) = entry_key.strip_prefix(SUB_PREFIX) else {
                continue;
            };
            match serde_json::from_slice::<Stored>(raw) {
                Ok(stored) if stored.version == STATE_VERSION => {
                    let mut sub = Sub::new(stored);
                    for name in sub.stored.links.keys() {
                        let full = format!("{}{name}", sub.stored.root);
                        if let Ok(entry) = self.shared.engine.lookup(&full, Access::Peek) {
                            sub.tails.insert(name.clone(), entry.snapshot().tail);
                        }
                    }
                    subs.insert(key.to_owned(), sub);
                }
                Ok(stored) => tracing::error!(
                    subscription = %stored.id,
                    version = stored.version,
                    "skipping a subscription record of an unknown version"
                ),
                Err(error) => tracing::error!(
                    key = %entry_key,
                    error = %error,
                    "skipping an unreadable subscription record"
                ),
            }
        }
        let early = {
            let mut state = self.lock();
            state.subs = subs;
            state.loaded = true;
            self.recount(&state);
            std::mem::take(&mut state.early)
        };
        for (path, tail) in early {
            self.stream_changed(&path, tail);
        }
        let keys: Vec<String> = self.lock().subs.keys().cloned().collect();
        tracing::info!(subscriptions = keys.len(), "subscriptions loaded");
        for key in keys {
            self.kick(&key);
        }
        self.update_lease_gauge();
        Ok(())
    }

    /// The generated signing key: the stored one, or a new one, stored.
    /// With a shared store, under its lock, so servers starting together
    /// agree on one key.
    async fn stored_key(
        &self,
        entries: &[(String, Bytes)],
    ) -> Result<SigningKey, SubscriptionError> {
        let storage = self.shared.engine.storage();
        let locked = match self.replicated() {
            Some(store) => Some(store.lock_metadata(KEY_ENTRY).await?),
            None => None,
        };
        let stored = match &locked {
            Some(locked) => locked.value().cloned(),
            None => entries
                .iter()
                .find(|(k, _)| k == KEY_ENTRY)
                .map(|(_, der)| der.clone()),
        };
        if let Some(der) = stored {
            return SigningKey::from_pkcs8(&der)
                .map_err(|e| SubscriptionError::Unavailable(format!("stored signing key: {e}")));
        }
        let (key, der) =
            SigningKey::generate().map_err(|e| SubscriptionError::Unavailable(e.to_string()))?;
        let der = Bytes::from(der);
        match locked {
            Some(locked) => locked.commit(Some(der)).await?,
            None => storage.put_metadata(KEY_ENTRY, Some(der)).await?,
        }
        tracing::info!(kid = key.kid(), "generated a webhook signing key");
        Ok(key)
    }

    /// Writes the latest state of `key` in a task.
    pub(super) fn persist_later(&self, key: String) {
        let this = self.clone();
        tokio::spawn(async move {
            if let Err(error) = this.persist(&key).await {
                tracing::error!(subscription = %key, error = %error, "cannot persist subscription state");
            }
        });
    }

    /// Writes the latest state of `key` (or removes it when gone).
    pub(super) async fn persist(&self, key: &str) -> Result<(), SubscriptionError> {
        let _order = self.shared.persist_lock.lock().await;
        let value = {
            let state = self.lock();
            match state.subs.get(key) {
                Some(sub) => Some(
                    serde_json::to_vec(&sub.stored)
                        .map_err(|e| SubscriptionError::Unavailable(e.to_string()))?,
                ),
                None => None,
            }
        };
        self.shared
            .engine
            .storage()
            .put_metadata(&format!("{SUB_PREFIX}{key}"), value.map(Bytes::from))
            .await?;
        Ok(())
    }
}
