//! When to reload files that can change under a running server (TLS
//! material, JWKS, API keys): on filesystem events in their *directories*
//! (Kubernetes replaces a mounted secret by swapping the `..data` symlink in
//! its directory), debounced so a burst of events becomes one reload; on a
//! poll, for filesystems without events or a watch that could not be set
//! up; and on SIGHUP, which reloads even files that look unchanged.
//!
//! What a reload reads and validates, and how it keeps the last good
//! version, is the caller's business; this module only calls it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use notify::{EventKind, RecursiveMode, Watcher};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::shutdown::ShutdownToken;

/// How a reloader paces itself.
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

/// The directories holding `files`, each once, in order. Reloads watch
/// these rather than the files, because a watch on a file replaced through
/// a symlink swap never sees the new one.
pub(crate) fn parent_dirs<'a>(files: impl IntoIterator<Item = &'a Path>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = Vec::new();
    for path in files {
        let dir = match path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    dirs
}

/// Calls `reload(force)` on a blocking thread after changes in `dirs`,
/// every poll interval (`force = false`: the callee skips unchanged files)
/// and on SIGHUP (`force = true`), until `shutdown` fires. `what` names the
/// material in log lines. Must be called within a Tokio runtime; the SIGHUP
/// handler is installed before it returns. `reload` logs its own outcome.
pub(crate) fn spawn_reloader(
    what: &'static str,
    dirs: &[PathBuf],
    timing: ReloadTiming,
    shutdown: ShutdownToken,
    reload: impl Fn(bool) + Clone + Send + Sync + 'static,
) -> JoinHandle<()> {
    let wake = Arc::new(Notify::new());
    let watcher = watch(what, dirs, Arc::clone(&wake));
    let mut hangup = hangup_signal(what);
    tokio::spawn(async move {
        // Dropping the watcher ends the watch.
        let _watcher = watcher;
        let mut poll = tokio::time::interval(timing.poll_interval.max(Duration::from_millis(10)));
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
                    tracing::info!("SIGHUP received: reloading the {what}");
                    true
                }
            };
            let reload = reload.clone();
            // Reading and parsing files blocks.
            if let Err(error) = tokio::task::spawn_blocking(move || reload(force)).await {
                tracing::error!(%error, "the {what} reload task failed");
            }
        }
    })
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
fn watch(what: &str, dirs: &[PathBuf], wake: Arc<Notify>) -> Option<notify::RecommendedWatcher> {
    let handler = move |event: notify::Result<notify::Event>| match event {
        Ok(event) if is_change(&event.kind) => wake.notify_one(),
        Ok(_) => {}
        // An overflowed queue may hide a change: look.
        Err(_) => wake.notify_one(),
    };
    let mut watcher = match notify::recommended_watcher(handler) {
        Ok(watcher) => watcher,
        Err(error) => {
            tracing::warn!(%error, "cannot watch the {what} directories; relying on polling");
            return None;
        }
    };
    for dir in dirs {
        if let Err(error) = watcher.watch(dir, RecursiveMode::NonRecursive) {
            tracing::warn!(
                dir = %dir.display(),
                %error,
                "cannot watch a {what} directory; relying on polling for it"
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
fn hangup_signal(what: &str) -> Hangup {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::hangup()) {
        Ok(signal) => Some(signal),
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGHUP; {what} reloads follow the files only");
            None
        }
    }
}

#[cfg(not(unix))]
fn hangup_signal(_what: &str) -> Hangup {
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

    #[test]
    fn parent_dirs_once_each() {
        let dirs = parent_dirs([
            Path::new("/etc/a/x.pem"),
            Path::new("/etc/a/y.pem"),
            Path::new("z.json"),
        ]);
        assert_eq!(dirs, vec![PathBuf::from("/etc/a"), PathBuf::from(".")]);
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
