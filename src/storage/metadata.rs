//! The metadata area every backend keeps beside its streams: a small,
//! durable key/value map for state that is not stream data (subscriptions,
//! leases, the generated webhook signing key).
//!
//! Writes are rare (a subscription changes, a lease is claimed) and values
//! small, so the file backends keep one file per key, named by the SHA-256
//! of the key and holding `CRC32C (4 bytes LE) | key length (4 bytes LE) |
//! key | value`, replaced atomically (write a temporary file, `fdatasync` it
//! in durable mode, rename it over the old one, fsync the directory). The memory backend keeps a map; the
//! acid backend a redb table (see [`super::acid`]).

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::{StorageError, StorageFuture};

/// Name of the metadata directory inside a file backend's data directory.
pub const METADATA_DIR: &str = "metadata";
/// Suffix of a committed metadata file.
const SUFFIX: &str = ".meta";
/// Suffix of a metadata file being written.
const TEMP_SUFFIX: &str = ".tmp";
/// Longest key, in bytes.
pub const MAX_KEY_BYTES: usize = 512;

/// Checks that `key` is usable as a metadata key.
///
/// # Errors
/// [`StorageError::Unavailable`] when it is empty or longer than
/// [`MAX_KEY_BYTES`].
pub fn check_key(key: &str) -> Result<(), StorageError> {
    if key.is_empty() || key.len() > MAX_KEY_BYTES {
        return Err(StorageError::Unavailable(format!(
            "metadata keys must be 1 to {MAX_KEY_BYTES} bytes long"
        )));
    }
    Ok(())
}

/// The memory backend's metadata: a map, nothing persisted.
#[derive(Debug, Default)]
pub struct MemoryMetadata {
    entries: Mutex<BTreeMap<String, Bytes>>,
}

impl MemoryMetadata {
    /// Sets or (with `None`) removes `key`.
    pub fn put(&self, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        let outcome = check_key(key).map(|()| {
            let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
            match value {
                Some(value) => {
                    entries.insert(key.to_owned(), value);
                }
                None => {
                    entries.remove(key);
                }
            }
        });
        Box::pin(std::future::ready(outcome))
    }

    /// Every entry, ordered by key.
    pub fn load(&self) -> StorageFuture<Vec<(String, Bytes)>> {
        let entries = self
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        Box::pin(std::future::ready(Ok(entries)))
    }
}

/// The file backends' metadata: one checksummed file per key.
#[derive(Debug)]
pub struct MetadataDir {
    dir: PathBuf,
    durable: bool,
    read_only: bool,
    /// Serialises writers, so two replacements of one key cannot interleave.
    write_lock: Mutex<()>,
}

impl MetadataDir {
    /// The metadata area of the data directory `data_dir`. Nothing is
    /// touched until the first write; `durable` syncs every write.
    pub fn new(data_dir: &Path, durable: bool, read_only: bool) -> Arc<Self> {
        Arc::new(Self {
            dir: data_dir.join(METADATA_DIR),
            durable,
            read_only,
            write_lock: Mutex::new(()),
        })
    }

    /// Sets or (with `None`) removes `key`, off the async workers.
    pub fn put(self: &Arc<Self>, key: &str, value: Option<Bytes>) -> StorageFuture<()> {
        let this = self.clone();
        let key = key.to_owned();
        Box::pin(async move {
            check_key(&key)?;
            if this.read_only {
                return Err(StorageError::Unavailable(
                    "the store is open read-only".into(),
                ));
            }
            tokio::task::spawn_blocking(move || this.put_blocking(&key, value.as_deref()))
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Unavailable(format!(
                        "metadata write task failed: {e}"
                    )))
                })
        })
    }

    /// Every entry, ordered by key; each file's checksum is verified.
    pub fn load(self: &Arc<Self>) -> StorageFuture<Vec<(String, Bytes)>> {
        let this = self.clone();
        Box::pin(async move {
            tokio::task::spawn_blocking(move || this.load_blocking())
                .await
                .unwrap_or_else(|e| {
                    Err(StorageError::Unavailable(format!(
                        "metadata read task failed: {e}"
                    )))
                })
        })
    }

    fn path_of(&self, key: &str, suffix: &str) -> PathBuf {
        let digest = ring::digest::digest(&ring::digest::SHA256, key.as_bytes());
        let mut name = String::with_capacity(64 + suffix.len());
        for byte in digest.as_ref() {
            name.push_str(&format!("{byte:02x}"));
        }
        name.push_str(suffix);
        self.dir.join(name)
    }

    fn put_blocking(&self, key: &str, value: Option<&[u8]>) -> Result<(), StorageError> {
        let _guard = self
            .write_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let target = self.path_of(key, SUFFIX);
        let Some(value) = value else {
            return match std::fs::remove_file(&target) {
                Ok(()) => self.sync_dir(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(StorageError::path("remove metadata file", &target, e)),
            };
        };
        std::fs::create_dir_all(&self.dir)
            .map_err(|e| StorageError::path("create the metadata directory", &self.dir, e))?;
        let temp = self.path_of(key, TEMP_SUFFIX);
        let mut file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&temp)
            .map_err(|e| StorageError::path("create metadata file", &temp, e))?;
        let framed = frame(key, value);
        file.write_all(&framed).map_err(StorageError::from_write)?;
        if self.durable {
            file.sync_data().map_err(StorageError::from_write)?;
        }
        drop(file);
        std::fs::rename(&temp, &target)
            .map_err(|e| StorageError::path("replace metadata file", &target, e))?;
        self.sync_dir()
    }

    fn sync_dir(&self) -> Result<(), StorageError> {
        if !self.durable {
            return Ok(());
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| StorageError::path("sync the metadata directory", &self.dir, e))
    }

    fn load_blocking(&self) -> Result<Vec<(String, Bytes)>, StorageError> {
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StorageError::path("list metadata", &self.dir, e)),
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(|e| StorageError::path("list metadata", &self.dir, e))?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            if !name.ends_with(SUFFIX) {
                continue;
            }
            let path = entry.path();
            let raw = std::fs::read(&path)
                .map_err(|e| StorageError::path("read metadata file", &path, e))?;
            let (key, value) = unframe(&raw).ok_or_else(|| {
                StorageError::Corrupt(format!(
                    "metadata file {} fails its checksum",
                    path.display()
                ))
            })?;
            out.insert(key, Bytes::copy_from_slice(value));
        }
        Ok(out.into_iter().collect())
    }
}

/// `CRC32C | key length | key | value`, the CRC over everything after it.
fn frame(key: &str, value: &[u8]) -> Vec<u8> {
    let mut body = Vec::with_capacity(4 + key.len() + value.len());
    body.extend_from_slice(&u32::try_from(key.len()).unwrap_or(u32::MAX).to_le_bytes());
    body.extend_from_slice(key.as_bytes());
    body.extend_from_slice(value);
    let mut framed = crc32c::crc32c(&body).to_le_bytes().to_vec();
    framed.extend_from_slice(&body);
    framed
}

/// The key and value of a frame, if it verifies.
fn unframe(raw: &[u8]) -> Option<(String, &[u8])> {
    let (crc, body) = raw.split_at_checked(4)?;
    if crc32c::crc32c(body).to_le_bytes() != crc {
        return None;
    }
    let (len, rest) = body.split_at_checked(4)?;
    let len = usize::try_from(u32::from_le_bytes(len.try_into().ok()?)).ok()?;
    let (key, value) = rest.split_at_checked(len)?;
    Some((String::from_utf8(key.to_vec()).ok()?, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_stay_short_for_long_keys() {
        let dir = MetadataDir::new(Path::new("/x"), false, false);
        let path = dir.path_of(&"k".repeat(MAX_KEY_BYTES), SUFFIX);
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert_eq!(name.len(), 64 + SUFFIX.len());
    }

    #[test]
    fn frames_verify_only_intact() {
        let mut framed = frame("sub/a b", b"hello");
        assert_eq!(
            unframe(&framed),
            Some(("sub/a b".to_owned(), &b"hello"[..]))
        );
        framed[9] ^= 1;
        assert_eq!(unframe(&framed), None);
        assert_eq!(unframe(b"ab"), None);
    }

    #[tokio::test]
    async fn a_corrupt_file_fails_the_load() {
        let temp = tempfile::tempdir().expect("temp dir");
        let dir = MetadataDir::new(temp.path(), true, false);
        dir.put("k", Some(Bytes::from_static(b"value")))
            .await
            .expect("put");
        let file = dir.path_of("k", SUFFIX);
        let mut raw = std::fs::read(&file).expect("read");
        let last = raw.len() - 1;
        raw[last] ^= 0xff;
        std::fs::write(&file, raw).expect("write");
        assert!(matches!(dir.load().await, Err(StorageError::Corrupt(_))));
    }
}
