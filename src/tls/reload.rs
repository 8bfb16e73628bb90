//! Hot reload of the TLS material.
//!
//! Filesystem events in the directories of the certificate, key and client
//! CA, a poll every [`ReloadTiming::poll_interval`], and SIGHUP all lead to
//! the same [`Acceptor::reload`] (the triggers are `crate::watch`'s).
//!
//! A reload reads all files, validates them together, and only then swaps
//! the configuration in; a bad set is logged with its reason and counted,
//! and the last good configuration keeps serving.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::sync::PoisonError;
use std::sync::atomic::Ordering;

use tokio::task::JoinHandle;

use super::acceptor::{Acceptor, unix_now};
use super::material::{self, CertificateInfo};
use super::{TlsError, TlsFiles};
use crate::metrics::event::{TlsCertificateServed, TlsReloadFailed};
use crate::shutdown::ShutdownToken;
pub use crate::watch::ReloadTiming;

/// What a reload did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadOutcome {
    /// New material is in use for new handshakes.
    Reloaded(CertificateInfo),
    /// The files are the same as last time (or fail the same way); nothing
    /// was done.
    Unchanged,
}

/// Reload counts since start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReloadStats {
    /// Reloads that swapped in new material.
    pub successes: u64,
    /// Reloads rejected; the previous material kept serving.
    pub failures: u64,
}

/// A fingerprint of the files' contents, to skip reloads of unchanged files.
pub(super) fn fingerprint(files: &TlsFiles) -> u64 {
    let mut hasher = DefaultHasher::new();
    files.cert.pem.hash(&mut hasher);
    files.key.pem.hash(&mut hasher);
    files.client_ca.as_ref().map(|ca| &ca.pem).hash(&mut hasher);
    hasher.finish()
}

fn error_fingerprint(error: &TlsError) -> u64 {
    let mut hasher = DefaultHasher::new();
    "error".hash(&mut hasher);
    error.to_string().hash(&mut hasher);
    hasher.finish()
}

impl Acceptor {
    /// Reads and validates the material again and swaps it in for new
    /// handshakes; open connections keep the configuration they started
    /// with. Unless `force`, files identical to the last attempt are not
    /// reloaded (and a failure identical to the last one is not reported
    /// again). Blocking: call it off the async workers.
    ///
    /// # Errors
    /// Why the new material was rejected; the previous one keeps serving.
    pub fn reload(&self, force: bool) -> Result<ReloadOutcome, TlsError> {
        let mut state = self
            .shared
            .reload
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let settings = &self.shared.settings;
        let result = settings.read_files().and_then(|files| {
            let seen = fingerprint(&files);
            if !force && state.last_seen == Some(seen) {
                return Ok(None);
            }
            state.last_seen = Some(seen);
            material::build(settings, &files, unix_now()).map(Some)
        });
        match result {
            Ok(None) => Ok(ReloadOutcome::Unchanged),
            Ok(Some(material)) => {
                let certificate = material.certificate.clone();
                self.install(material);
                self.shared.successes.fetch_add(1, Ordering::Relaxed);
                TlsCertificateServed {
                    not_after: certificate.not_after,
                    reloaded: true,
                }
                .emit();
                tracing::info!(
                    subject = %certificate.subject,
                    serial = %certificate.serial,
                    not_after = %certificate.not_after_rfc3339(),
                    "TLS material reloaded; new connections use it"
                );
                Ok(ReloadOutcome::Reloaded(certificate))
            }
            Err(error) => {
                let seen = error_fingerprint(&error);
                if !force && state.last_seen == Some(seen) {
                    return Ok(ReloadOutcome::Unchanged);
                }
                state.last_seen = Some(seen);
                self.shared.failures.fetch_add(1, Ordering::Relaxed);
                TlsReloadFailed.emit();
                let serving = self.certificate();
                tracing::error!(
                    error = %error,
                    hint = %error.hint(),
                    serving_serial = %serving.serial,
                    serving_not_after = %serving.not_after_rfc3339(),
                    "TLS reload rejected; the previous certificate keeps serving"
                );
                Err(error)
            }
        }
    }

    /// Reload counts since start.
    pub fn stats(&self) -> ReloadStats {
        ReloadStats {
            successes: self.shared.successes.load(Ordering::Relaxed),
            failures: self.shared.failures.load(Ordering::Relaxed),
        }
    }

    /// Starts reloading on filesystem events in the material's directories,
    /// on a poll, and on SIGHUP, until `shutdown` fires. Must be called
    /// within a Tokio runtime; the SIGHUP handler is installed before it
    /// returns.
    pub fn spawn_reloader(&self, timing: ReloadTiming, shutdown: ShutdownToken) -> JoinHandle<()> {
        let acceptor = self.clone();
        crate::watch::spawn_reloader(
            "TLS material",
            &self.settings().watched_dirs(),
            timing,
            shutdown,
            // `reload` logs and counts its own outcome.
            move |force| {
                let _ = acceptor.reload(force);
            },
        )
    }
}
