//! The data directory lock: one server process per directory.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use super::StorageError;

/// Holds an exclusive lock on `<dir>/LOCK` for as long as it lives.
#[derive(Debug)]
pub struct DirLock {
    _file: File,
    path: PathBuf,
}

impl DirLock {
    /// Creates `dir` if needed and locks it, recording this process id.
    ///
    /// # Errors
    /// [`StorageError::Locked`] naming the directory and the holder's pid
    /// when another process holds it; [`StorageError::Path`] on I/O failure.
    pub fn acquire(dir: &Path) -> Result<Self, StorageError> {
        std::fs::create_dir_all(dir)
            .map_err(|source| StorageError::path("create the data directory", dir, source))?;
        let path = dir.join("LOCK");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|source| StorageError::path("open the lock file", &path, source))?;
        if file.try_lock().is_err() {
            let mut holder = String::new();
            let _ = file.read_to_string(&mut holder);
            let holder = holder.trim();
            return Err(StorageError::Locked {
                dir: dir.to_path_buf(),
                holder: if holder.is_empty() {
                    "an unknown process".into()
                } else {
                    holder.to_owned()
                },
            });
        }
        let record = format!("pid {}", std::process::id());
        let written = file
            .set_len(0)
            .and_then(|()| file.seek(SeekFrom::Start(0)))
            .and_then(|_| file.write_all(record.as_bytes()))
            .and_then(|()| file.sync_data());
        written.map_err(|source| StorageError::path("write the lock file", &path, source))?;
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_ones_pid() {
        let dir = std::env::temp_dir().join(format!("ds-lock-test-{}", std::process::id()));
        let first = DirLock::acquire(&dir).expect("first lock");
        match DirLock::acquire(&dir) {
            Err(StorageError::Locked {
                dir: locked,
                holder,
            }) => {
                assert_eq!(locked, dir);
                assert_eq!(holder, format!("pid {}", std::process::id()));
            }
            other => panic!("expected Locked, got {other:?}"),
        }
        drop(first);
        assert!(DirLock::acquire(&dir).is_ok());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
