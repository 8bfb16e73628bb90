//! A file of access-control material (a JWKS, the API keys) held in memory
//! and reloaded when it changes, the way the TLS material is: the new
//! content is parsed and checked as a whole before it replaces the old, a
//! broken file is logged with its reason and the last good version stays
//! in use, and unchanged files (or the same failure again) are skipped.

use std::hash::{DefaultHasher, Hash, Hasher};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use super::error::AuthFileError;

/// Largest file read, in bytes.
pub const MAX_FILE_BYTES: u64 = 1 << 20;

/// How a kind of file is parsed and described in logs.
pub(crate) trait Material: Sized + Send + Sync + 'static {
    /// What the file is, for logs: `JWKS`, `API keys`.
    const WHAT: &'static str;

    /// Parses and checks the whole file.
    ///
    /// # Errors
    /// What is wrong, naming the entry.
    fn parse(bytes: &[u8]) -> Result<Self, String>;

    /// A one-line summary for the reload log (never a secret).
    fn summary(&self) -> String;

    /// Entries left out while parsing, logged as warnings.
    fn notes(&self) -> Vec<String> {
        Vec::new()
    }
}

/// The current version of a file-backed material.
#[derive(Debug)]
pub(crate) struct FileBacked<T> {
    path: PathBuf,
    current: RwLock<Arc<T>>,
    /// Fingerprint of the last content (or failure) seen.
    last_seen: Mutex<u64>,
}

impl<T: Material> FileBacked<T> {
    /// Reads and parses the file; it must be good.
    ///
    /// # Errors
    /// Why the file cannot be used.
    pub(crate) fn load(path: &Path) -> Result<Self, AuthFileError> {
        let bytes = read_limited(path)?;
        let material = parse::<T>(path, &bytes)?;
        log_loaded(path, &material, "loaded");
        Ok(Self {
            path: path.to_path_buf(),
            current: RwLock::new(Arc::new(material)),
            last_seen: Mutex::new(fingerprint(&bytes)),
        })
    }

    /// The version in use.
    pub(crate) fn current(&self) -> Arc<T> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the file again and swaps in its content if it changed (or
    /// `force`) and is good. Logs the outcome. Blocking.
    ///
    /// # Errors
    /// Why the new content was rejected; the previous version stays in use.
    pub(crate) fn reload(&self, force: bool) -> Result<bool, AuthFileError> {
        let mut last_seen = self
            .last_seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let result = read_limited(&self.path).and_then(|bytes| {
            let seen = fingerprint(&bytes);
            if !force && *last_seen == seen {
                return Ok(None);
            }
            *last_seen = seen;
            parse::<T>(&self.path, &bytes).map(Some)
        });
        match result {
            Ok(None) => Ok(false),
            Ok(Some(material)) => {
                log_loaded(&self.path, &material, "reloaded");
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
                Ok(true)
            }
            Err(error) => {
                let seen = fingerprint(error.to_string().as_bytes()) ^ 1;
                if force || *last_seen != seen {
                    *last_seen = seen;
                    tracing::error!(
                        what = T::WHAT,
                        %error,
                        "access-control file rejected; the last good version stays in use"
                    );
                }
                Err(error)
            }
        }
    }
}

fn parse<T: Material>(path: &Path, bytes: &[u8]) -> Result<T, AuthFileError> {
    T::parse(bytes).map_err(|reason| AuthFileError::Invalid {
        path: path.to_path_buf(),
        reason,
    })
}

fn log_loaded<T: Material>(path: &Path, material: &T, done: &str) {
    tracing::info!(
        what = T::WHAT,
        path = %path.display(),
        summary = %material.summary(),
        "access-control file {done}"
    );
    for note in material.notes() {
        tracing::warn!(what = T::WHAT, path = %path.display(), "{note}");
    }
}

fn fingerprint(bytes: &[u8]) -> u64 {
    let mut hasher = DefaultHasher::new();
    bytes.hash(&mut hasher);
    hasher.finish()
}

/// Reads at most [`MAX_FILE_BYTES`]: a path such as `/dev/zero` must not
/// hang or exhaust the server.
fn read_limited(path: &Path) -> Result<Vec<u8>, AuthFileError> {
    let read_error = |source| AuthFileError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(read_error)?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(AuthFileError::TooLarge {
            path: path.to_path_buf(),
            limit: MAX_FILE_BYTES,
        });
    }
    Ok(bytes)
}
