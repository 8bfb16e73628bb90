//! The acknowledgement log beside each database: appends are acknowledged
//! once they are in this log (one write and one `fdatasync` per batch, the
//! sync on [`super::syncer`]'s thread), and
//! the writer moves them into redb later, many batches in one transaction.
//!
//! The file has a fixed size, so a sync never changes the file's size, and
//! once a generation has passed over a block, later ones overwrite it in
//! place. Frames are written from the start: `generation: u64 LE` then a
//! checksummed frame of [`crate::storage::codec`]. Every redb transaction
//! of the writer takes all logged appends and records the generation being
//! written as applied; the log then starts a new generation at offset 0. A
//! scan stops at the first frame that fails its checksum or belongs to
//! another generation (what lies behind it is older), and a replay skips a
//! generation the database recorded as applied.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;

use super::load::Head;
use super::shard::{LoggedRecord, Unapplied};
use crate::storage::chunk_list;
use crate::storage::{Append, Mutation, RecoveredStream, StorageError, StreamId};
use crate::storage::{codec, zeros};

/// Bytes of the log file of each database.
pub(super) const LOG_BYTES: u64 = 16 << 20;

/// Bytes before each frame: its generation.
const GENERATION: usize = 8;

/// The log file of the database at `database`.
pub(super) fn log_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".log");
    PathBuf::from(name)
}

/// The log's second file, written while the appends of the first move into
/// redb (and the other way round).
pub(super) fn second_log_path(database: &Path) -> PathBuf {
    let mut name = database.as_os_str().to_owned();
    name.push(".log2");
    PathBuf::from(name)
}

/// The appends of both log files still to apply on top of a database that
/// recorded `applied`, oldest generation first; the greatest generation
/// either file holds.
pub(super) fn unapplied_in_order(mut files: Vec<Logged>, applied: u64) -> (Vec<Append>, u64) {
    let newest = files.iter().map(|(generation, _)| *generation).max();
    files.retain(|(generation, _)| *generation > applied);
    files.sort_by_key(|(generation, _)| *generation);
    let appends = files.into_iter().flat_map(|(_, appends)| appends).collect();
    (appends, newest.unwrap_or(0).max(applied))
}

/// The frames of a log's current generation: that generation and its
/// appends, in order (none: generation 0).
pub(super) type Logged = (u64, Vec<Append>);

/// An open log: where the next frame goes and which generation it belongs to.
pub(super) struct AckLog {
    file: File,
    path: PathBuf,
    generation: u64,
    offset: u64,
    buf: Vec<u8>,
    /// Bytes from the start known to have their blocks allocated.
    allocated: u64,
}

impl AckLog {
    /// Opens the log at `path`, creating it at its full size if missing;
    /// returns it with the appends of its current generation, in order.
    /// The log must be [`AckLog::restart`]ed once they are in the database.
    ///
    /// # Errors
    /// When the file cannot be created, sized or read.
    pub(super) fn open(path: PathBuf) -> Result<(Self, Logged), StorageError> {
        let io = |what: &'static str| {
            let path = path.clone();
            move |e| StorageError::path(what, &path, e)
        };
        let fresh = !path.exists();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("open the acknowledgement log"))?;
        if fresh || file.metadata().map_err(io("stat the log"))?.len() != LOG_BYTES {
            // Sparse: the first pass through the file allocates its blocks,
            // later generations overwrite them in place.
            file.set_len(LOG_BYTES).map_err(io("size the log"))?;
            file.sync_all().map_err(io("sync the log"))?;
            if let Some(dir) = path.parent() {
                File::open(dir)
                    .and_then(|d| d.sync_all())
                    .map_err(io("sync the data directory"))?;
            }
        }
        let (found, appends) = scan(&file, &path)?;
        // Past every generation the file may hold behind the current one
        // (they are older) and every one a database recorded.
        let generation = (found + 1).max(clock_generation());
        let allocated = first_hole(&file);
        Ok((
            Self {
                file,
                path,
                generation,
                offset: 0,
                buf: Vec::new(),
                allocated,
            },
            (found, appends),
        ))
    }

    /// The appends of the log's current generation, read without changing
    /// the file (beside a server that may be writing it).
    ///
    /// # Errors
    /// When the file cannot be opened or read.
    pub(super) fn read(path: &Path) -> Result<Logged, StorageError> {
        let file = File::open(path)
            .map_err(|e| StorageError::path("open the acknowledgement log", path, e))?;
        scan(&file, path)
    }

    /// Starts a new generation at the start of the file: everything logged
    /// so far is in the database, which recorded [`AckLog::generation`] in
    /// the same transaction.
    pub(super) fn restart(&mut self) {
        self.restart_after(self.generation);
    }

    /// Starts a generation past `generation` (the other file's, whose
    /// appends are moving into the database) at the start of the file.
    pub(super) fn restart_after(&mut self, generation: u64) {
        self.generation = self.generation.max(generation) + 1;
        self.offset = 0;
    }

    /// Moves past `generation` (one a database recorded as applied).
    pub(super) fn skip_past(&mut self, generation: u64) {
        self.generation = self.generation.max(generation + 1);
    }

    /// The generation being written.
    pub(super) fn generation(&self) -> u64 {
        self.generation
    }

    /// Whether `bytes` more payload bytes may not fit.
    pub(super) fn is_nearly_full(&self, bytes: usize) -> bool {
        // Frames add their header and the producer/seq fields; a batch
        // holds at most a few thousand appends.
        self.offset + (bytes as u64) * 2 + (1 << 20) > LOG_BYTES
    }

    /// Writes `appends` as one batch, unsynced: [`AckLog::sync_handle`]
    /// makes it durable (the writer writes the next batch meanwhile).
    pub(super) fn write<'a>(
        &mut self,
        appends: impl Iterator<Item = &'a Append>,
    ) -> Result<(), StorageError> {
        self.buf.clear();
        for append in appends {
            self.buf.extend_from_slice(&self.generation.to_le_bytes());
            codec::encode(&Mutation::Append(append.clone()), &mut self.buf);
        }
        if self.offset + self.buf.len() as u64 > LOG_BYTES {
            return Err(StorageError::Unavailable(
                "the acknowledgement log is full".into(),
            ));
        }
        let end = self.offset + self.buf.len() as u64;
        if end > self.allocated {
            let upto = end.next_multiple_of(FILL_BYTES).min(LOG_BYTES);
            zeros::write_zeros(&self.file, end, upto).map_err(StorageError::from_write)?;
            self.allocated = upto;
        }
        self.file
            .write_all_at(&self.buf, self.offset)
            .map_err(StorageError::from_write)?;
        self.offset = end;
        Ok(())
    }

    /// A handle on the log file for the sync thread.
    ///
    /// # Errors
    /// When the file descriptor cannot be duplicated.
    pub(super) fn sync_handle(&self) -> Result<File, StorageError> {
        self.file.try_clone().map_err(StorageError::Io)
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// Bytes the log's blocks are allocated ahead of its frames, so most syncs
/// find their blocks allocated and flush no file-system metadata.
const FILL_BYTES: u64 = 1 << 20;

/// Where the file's first hole starts (0 when that is unknown).
fn first_hole(file: &File) -> u64 {
    use std::os::fd::AsRawFd;
    // SAFETY: lseek on a descriptor this `File` owns; it moves only the
    // file position, which the log never uses (it reads and writes at
    // offsets).
    let at = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_HOLE) };
    u64::try_from(at).unwrap_or(0)
}

/// Reads the frames of the generation the file starts with.
fn scan(file: &File, path: &Path) -> Result<(u64, Vec<Append>), StorageError> {
    let len = file
        .metadata()
        .map_err(|e| StorageError::path("stat the acknowledgement log", path, e))?
        .len()
        .min(LOG_BYTES);
    let mut raw = vec![0u8; len as usize];
    file.read_exact_at(&mut raw, 0)
        .map_err(|e| StorageError::path("read the acknowledgement log", path, e))?;
    let raw = Bytes::from(raw);
    let mut appends = Vec::new();
    let mut at = 0usize;
    let mut current = None;
    while let Some(header) = raw.get(at..at + GENERATION) {
        let generation = u64::from_le_bytes(header.try_into().unwrap_or_default());
        if current.is_some_and(|g| g != generation) {
            break;
        }
        let Ok(frame) = codec::decode(&raw.slice(at + GENERATION..)) else {
            break;
        };
        let Mutation::Append(append) = frame.mutation else {
            return Err(StorageError::Corrupt(format!(
                "acknowledgement log {} holds a frame that is not an append at offset {at}",
                path.display()
            )));
        };
        current = Some(generation);
        appends.push(append);
        at += GENERATION + frame.frame_len;
    }
    Ok((current.unwrap_or(0), appends))
}

/// A generation from the clock, so a fresh log does not repeat a generation
/// left deeper in the file or recorded by the database.
fn clock_generation() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| d.as_nanos() as u64)
}

/// The appends of a log scan (each `append_of` an item) still to apply on
/// top of the database whose writer's view is `heads`, in order: those already in the database (a
/// crash between its commit and the log starting over) and those of
/// removed streams are left out. A gap is damage when `strict` (the
/// server's own open); a read-only open beside a running server meets one
/// when the server moved the log on in between, and stops that stream.
pub(super) fn replayable<T>(
    heads: &HashMap<StreamId, Head>,
    logged: Vec<T>,
    append_of: impl Fn(&T) -> &Append,
    path: &std::path::Path,
    strict: bool,
) -> Result<Vec<T>, StorageError> {
    let mut tails: HashMap<StreamId, Option<u64>> = HashMap::new();
    let mut out = Vec::new();
    for item in logged {
        let append = append_of(&item);
        let tail = tails
            .entry(append.id)
            .or_insert_with(|| heads.get(&append.id).map(|head| head.tail));
        let Some(at) = *tail else { continue };
        let end = append.start + append.data.len() as u64;
        if append.start == at {
            *tail = Some(end);
            out.push(item);
        } else if append.start < at && end <= at {
            // Already in the database.
        } else if strict {
            return Err(StorageError::Corrupt(format!(
                "acknowledgement log of {}: stream {} continues at {} but the log's next append starts at {}",
                path.display(),
                append.id,
                at,
                append.start
            )));
        } else {
            *tail = None;
        }
    }
    Ok(out)
}

/// Applies logged appends to the streams a read-only open found; returns
/// their records by stream.
pub(super) fn fold_logged(recovered: &mut [RecoveredStream], appends: Vec<Append>) -> Unapplied {
    let mut by_id: HashMap<StreamId, &mut RecoveredStream> =
        recovered.iter_mut().map(|s| (s.spec.id, s)).collect();
    let mut unapplied = Unapplied::new();
    for append in appends {
        let Some(stream) = by_id.get_mut(&append.id) else {
            continue;
        };
        stream.tail = append.start + append.data.len() as u64;
        if let Some((producer, state)) = append.producer {
            match stream.producers.iter_mut().find(|(p, _)| *p == producer) {
                Some(slot) => slot.1 = state,
                None => stream.producers.push((producer, state)),
            }
        }
        if append.stream_seq.is_some() {
            stream.stream_seq = append.stream_seq;
        }
        if let Some(by) = append.close
            && stream.closed.is_none()
        {
            stream.closed = Some(by);
        }
        if !append.data.is_empty() {
            unapplied.entry(append.id).or_default().push(LoggedRecord {
                start: append.start,
                data: append.data,
                written_ms: chunk_list::now_ms(),
            });
        }
    }
    unapplied
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use bytes::Bytes;

    use super::super::tests::logged as append;
    use super::{AckLog, FILL_BYTES, first_hole};

    #[test]
    fn a_write_allocates_the_log_ahead_of_its_frames() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("streams.redb.log");
        let (mut log, (_, logged)) = AckLog::open(path.clone()).expect("open");
        assert!(logged.is_empty());
        log.write([append(0, b"abc")].iter()).expect("write");
        log.sync_handle()
            .expect("handle")
            .sync_data()
            .expect("sync");
        let file = std::fs::File::open(&path).expect("reopen");
        // Allocated past the frame: the syncs of the next frames write
        // data only, no file-system metadata.
        assert!(file.metadata().expect("stat").blocks() * 512 >= FILL_BYTES);
        assert!(first_hole(&file) >= FILL_BYTES);
        drop(log);
        let (_, (_, logged)) = AckLog::open(path).expect("open again");
        let found: Vec<_> = logged.iter().map(|a| (a.start, a.data.clone())).collect();
        assert_eq!(found, vec![(0, Bytes::from_static(b"abc"))]);
    }
}
