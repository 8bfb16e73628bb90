//! Hot reload of the TLS material.
//!
//! Three triggers lead to the same [`Acceptor::reload`]:
//! - filesystem events in the *directories* holding the certificate, key
//!   and client CA (Kubernetes replaces a mounted secret by swapping the
//!   `..data` symlink in its directory), debounced so a burst of events
//!   becomes one reload;
//! - a poll every [`ReloadTiming::poll_interval`], for filesystems that
//!   give no events (some network and overlay mounts) or a watch that could
//!   not be set up;
//! - SIGHUP, which reloads even when the files look unchanged.
//!
//! A reload reads all files, validates them together, and only then swaps
//! the configuration in; a bad set is logged with its reason and counted,
//! and the last good configuration keeps serving.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, PoisonError};
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::acceptor::{Acceptor, unix_now};
use super::material::{self, CertificateInfo};
use super::{TlsError, TlsFiles};
use crate::metrics::event::{TlsCertificateServed, TlsReloadFailed};
use crate::shutdown::ShutdownToken;

/// How the reloader paces itself.
#[derive(Clone, Copy, Debug)]
pub struct ReloadTiming {
    /// Quiet time after the last filesystem event before reloading, so a
    /// secret update (several events) is read once, complete.
    pub debounce: Duration,
    /// Interval of the polling fallback.
    pub poll_interval: Duration,
}

impl Default for ReloadTiming {
    fn default() -> Self {
        Self {
            debounce: Duration::from_millis(250),
            poll_interval: Duration::from_secs(10),
        }
    }
}

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
        let wake = Arc::new(Notify::new());
        let dirs = self.settings().watched_dirs();
        let watcher = watch(&dirs, Arc::clone(&wake));
        let mut hangup = hangup_signal();
        let acceptor = self.clone();
        tokio::spawn(async move {
            // Dropping the watcher ends the watch.
            let _watcher = watcher;
            let mut poll =
                tokio::time::interval(timing.poll_interval.max(Duration::from_millis(10)));
            poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            poll.tick().await;
            loop {
                let force = tokio::select! {
                    () = shutdown.cancelled() => return,
                    () = wake.notified() => {
                        debounce(&wake, timing.debounce).await;
                        false
                    }
                    _ = poll.tick() => false,
                    () = next_hangup(&mut hangup) => {
                        tracing::info!("SIGHUP received: reloading the TLS material");
                        true
                    }
                };
                let worker = acceptor.clone();
                // Reading and parsing the files blocks; `reload` logs and
                // counts its own outcome.
                if let Err(error) = tokio::task::spawn_blocking(move || worker.reload(force)).await
                {
                    tracing::error!(%error, "the TLS reload task failed");
                }
            }
        })
    }
}

/// Waits until no wake-up has arrived for `quiet`.
async fn debounce(wake: &Notify, quiet: Duration) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(quiet) => return,
            () = wake.notified() => {}
        }
    }
}

/// Watches `dirs` (not recursively); events wake `wake`. `None`, with a
/// warning, when the platform refuses: the poll still catches changes.
fn watch(dirs: &[PathBuf], wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if is_change(&event.kind) => wake.notify_one(),
        Ok(_) => {}
        // An overflowed queue may hide a change: look.
        Err(_) => wake.notify_one(),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the TLS directories; relying on polling");
            return None;
        }
    };
    for dir in dirs {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "cannot watch a TLS directory; relying on polling for it"
            );
        }
    }
    Some(watcher)
}

/// Opening or reading a file is not a change (our own reads cause those).
fn is_change(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    match kind {
        EventKind::Access(AccessKind::Close(AccessMode::Write)) => true,
        EventKind::Access(_) => false,
        _ => true,
    }
}

#[cfg(unix)]
type Hangup = Option<tokio::signal::unix::Signal>;
#[cfg(not(unix))]
type Hangup = Option<()>;

#[cfg(unix)]
fn hangup_signal() -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; TLS reloads follow the files only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal() -> Hangup {
    None
}

/// Resolves on the next SIGHUP; never when there is no handler.
async fn next_hangup(hangup: &mut Hangup) {
    #[cfg(unix)]
    if let Some(signal) = hangup {
        if signal.recv().await.is_some() {
            return;
        }
        // The signal stream ended; stop listening.
        *hangup = None;
    }
    #[cfg(not(unix))]
    let _ = hangup;
    std::future::pending::<()>().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};

    #[test]
    fn reads_are_not_changes() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(
            AccessMode::Any
        ))));
        assert!(is_change(&EventKind::Access(AccessKind::Close(
            AccessMode::Write
        ))));
        assert!(is_change(&EventKind::Create(CreateKind::Any)));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(
            RenameMode::To
        ))));
    }

    #[tokio::test(start_paused = true)]
    async fn debounce_waits_for_quiet() {
        let wake = Arc::new(Notify::new());
        let started = tokio::time::Instant::now();
        let poker = {
            let wake = Arc::clone(&wake);
            tokio::spawn(async move {
                for _ in 0..3 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    wake.notify_one();
                }
            })
        };
        debounce(&wake, Duration::from_millis(250)).await;
        poker.await.expect("poker");
        let waited = started.elapsed();
        assert!(waited >= Duration::from_millis(550), "{waited:?}");
    }
}
