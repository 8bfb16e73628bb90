//! The `open_storage` phase: the data directory made and proven writable,
//! then the backend `storage.mode` names opened on it.

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use super::phase::{Phase, StartupError};
use crate::config::{Config, StorageMode};
use crate::storage::{Storage, StorageError};

/// The `open_storage` phase: the backend `storage.mode` names.
///
/// Memory opens at once. The durable modes get their `storage.data_dir`
/// created and checked for writes, then their backend opens it: takes the
/// directory lock, replays and verifies what is stored.
///
/// # Errors
/// When the data directory cannot be created or written, is locked by
/// another process, or holds corrupt data.
pub fn open_storage(config: &Config) -> Result<Arc<dyn Storage>, StartupError> {
    match config.storage.mode {
        StorageMode::Memory => Ok(Arc::new(crate::storage::open_memory(
            &config.storage,
            config.limits.max_memory_bytes,
        ))),
        StorageMode::FileFast | StorageMode::FileDurable | StorageMode::Acid => {
            prepare_data_dir(config)?;
            crate::storage::open(&config.storage, config.limits.max_memory_bytes).map_err(|error| {
                let hint = match &error {
                    StorageError::Locked { .. } => {
                        "stop the other server using this directory, or give this one its own storage.data_dir"
                    }
                    StorageError::Corrupt(_) => {
                        "restore the directory from a backup, or discard the damaged part as the message says"
                    }
                    _ => "check that storage.data_dir is a writable local directory with free space",
                };
                StartupError::new(Phase::OpenStorage, crate::telemetry::error_chain(&error), hint)
            })
        }
        StorageMode::Postgres => {
            crate::storage::open(&config.storage, config.limits.max_memory_bytes).map_err(|error| {
                StartupError::new(
                    Phase::OpenStorage,
                    crate::telemetry::error_chain(&error),
                    "check storage.postgres.url (DS_STORAGE__POSTGRES__URL): the database \
                         must be reachable, accept the user and password, and allow creating \
                         tables in storage.postgres.schema",
                )
            })
        }
    }
}

/// Creates `storage.data_dir` if needed and proves it writable by creating,
/// syncing and removing a probe file.
///
/// # Errors
/// When it is unset, not a directory, cannot be created, or cannot be
/// written.
pub fn prepare_data_dir(config: &Config) -> Result<PathBuf, StartupError> {
    let mode = config.storage.mode;
    let Some(dir) = config
        .storage
        .data_dir
        .as_ref()
        .filter(|dir| !dir.as_os_str().is_empty())
    else {
        return Err(StartupError::new(
            Phase::OpenStorage,
            format!("storage.mode = \"{mode}\" needs storage.data_dir, which is not set"),
            "set DS_STORAGE__DATA_DIR (or data_dir under [storage]) to a writable directory",
        ));
    };
    let fail = |what: &str, error: &std::io::Error| {
        StartupError::new(
            Phase::OpenStorage,
            format!(
                "storage.data_dir {:?} {what}: {error}",
                dir.display().to_string()
            ),
            data_dir_hint(error.kind()),
        )
    };
    if dir.exists() && !dir.is_dir() {
        return Err(StartupError::new(
            Phase::OpenStorage,
            format!(
                "storage.data_dir {:?} is a file, not a directory",
                dir.display().to_string()
            ),
            "point storage.data_dir (DS_STORAGE__DATA_DIR) at a directory",
        ));
    }
    std::fs::create_dir_all(dir).map_err(|error| fail("cannot be created", &error))?;
    let probe = dir.join(format!(".ds-write-probe-{}", std::process::id()));
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)
        .and_then(|mut file| {
            file.write_all(b"probe")?;
            file.sync_all()
        });
    let _ = std::fs::remove_file(&probe);
    written.map_err(|error| fail("is not writable", &error))?;
    Ok(dir.clone())
}

fn data_dir_hint(kind: std::io::ErrorKind) -> &'static str {
    use std::io::ErrorKind;
    match kind {
        ErrorKind::PermissionDenied => {
            "give the server's user write access to it (in Kubernetes: a writable volume, and \
             fsGroup), or point DS_STORAGE__DATA_DIR at a writable directory"
        }
        ErrorKind::ReadOnlyFilesystem => {
            "mount a writable volume there, or point DS_STORAGE__DATA_DIR at one"
        }
        ErrorKind::NotADirectory => {
            "a part of the path is a file: point DS_STORAGE__DATA_DIR at a directory path"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => {
            "free space on that filesystem, or use a larger volume"
        }
        _ => "point storage.data_dir (DS_STORAGE__DATA_DIR) at a writable directory",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_storage_opens() {
        let storage = open_storage(&Config::default()).expect("memory opens");
        assert_eq!(storage.backend_name(), "memory");
    }

    #[tokio::test]
    async fn memory_storage_chunks_as_configured() {
        use crate::storage::suite::{append, spec};
        let mut config = Config::default();
        config.storage.chunk_bytes = 4096;
        let storage = open_storage(&config).expect("memory opens");
        storage
            .submit(crate::storage::Mutation::Create {
                spec: spec(1, 0),
                data: bytes::Bytes::new(),
                closed: false,
            })
            .await
            .expect("create");
        for i in 0..4u64 {
            storage
                .submit(append(1, i * 3000, [b'x'; 3000]))
                .await
                .expect("append");
        }
        let chunks = storage.chunks(1).await.expect("chunks");
        assert_eq!(chunks.len(), 4, "{chunks:?}");
    }

    #[tokio::test]
    async fn durable_modes_create_the_data_dir_and_lock_it() {
        for mode in [
            StorageMode::FileFast,
            StorageMode::FileDurable,
            StorageMode::Acid,
        ] {
            let dir = tempfile::tempdir().expect("temp dir");
            let mut config = Config::default();
            config.storage.mode = mode;
            config.storage.data_dir = Some(dir.path().join("a/b"));
            let storage = open_storage(&config).expect("opens");
            assert!(dir.path().join("a/b/LOCK").is_file(), "{mode}");
            let error = open_storage(&config).err().expect("locked");
            assert_eq!(error.phase, Phase::OpenStorage);
            assert!(error.cause.contains("is locked by pid"), "{error}");
            drop(storage);
        }
    }

    #[test]
    fn a_data_dir_below_a_file_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let file = dir.path().join("file");
        std::fs::write(&file, b"x").expect("write");
        let mut config = Config::default();
        config.storage.mode = StorageMode::Acid;
        config.storage.data_dir = Some(file.join("data"));
        let error = prepare_data_dir(&config).expect_err("not creatable");
        assert!(error.cause.contains("cannot be created"), "{error}");
        config.storage.data_dir = Some(file);
        let error = prepare_data_dir(&config).expect_err("a file");
        assert!(error.cause.contains("not a directory"), "{error}");
    }
}
