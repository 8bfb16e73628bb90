//! The write-ahead log: per commit shard, numbered segment files of
//! checksummed frames (see [`crate::storage::codec`]), and the scan that
//! replays them with today's damage rules: a torn tail is truncated and
//! logged, a bad frame anywhere else stops startup with the file and the
//! offset unless the operator names exactly that place in
//! `storage.truncate_corrupt_at`.
//!
//! The first file layout (one shared log of `NNNNNNNNNNNNNNNNNNNN.seg`
//! segments) used the same frames behind a different header; the scan reads
//! both, which is how such a directory is converted.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;

use super::super::codec::{self, FRAME_HEADER};
use super::super::{Mutation, StorageError, zeros};
use super::layout;

/// Opens every log segment, followed by the shard (u64 LE) and the segment
/// number (u64 LE).
const WAL_MAGIC: &[u8; 8] = b"DSWAL001";
/// Bytes before a log segment's first frame.
pub const WAL_HEADER: u64 = 24;
/// Opened every segment of the first layout, followed by its number.
const LEGACY_MAGIC: &[u8; 8] = b"DSSEG001";
/// Bytes before a first-layout segment's first frame.
pub const LEGACY_HEADER: u64 = 16;

/// The header a segment must start with.
pub fn wal_header(shard: u32, seq: u64) -> [u8; WAL_HEADER as usize] {
    let mut header = [0u8; WAL_HEADER as usize];
    header[..8].copy_from_slice(WAL_MAGIC);
    header[8..16].copy_from_slice(&u64::from(shard).to_le_bytes());
    header[16..].copy_from_slice(&seq.to_le_bytes());
    header
}

/// The header of segment `number` of the first layout.
pub fn legacy_header(number: u64) -> [u8; LEGACY_HEADER as usize] {
    let mut header = [0u8; LEGACY_HEADER as usize];
    header[..8].copy_from_slice(LEGACY_MAGIC);
    header[8..].copy_from_slice(&number.to_le_bytes());
    header
}

/// Zeros written ahead of a segment's frames at a time (see
/// [`Segment::write_ahead_zeros`]).
const ZERO_AHEAD: u64 = 1 << 20;

/// The segment a shard appends to.
pub struct Segment {
    /// Its number.
    pub seq: u64,
    /// The open file, shared with the thread that syncs it.
    pub file: Arc<File>,
    /// Bytes written.
    pub len: u64,
    /// Bytes from the start holding frames or written zeros, not only
    /// allocated.
    written: u64,
    /// Bytes allocated by `fallocate` (0 when the file system cannot).
    allocated: u64,
}

impl Segment {
    /// Makes sure the bytes up to `end` were written before (as zeros), not
    /// only allocated: writing into allocated but never written blocks
    /// leaves the file system their conversion to written blocks to record,
    /// which `fdatasync` then commits (an inode write on every sync that
    /// reaches a new block). Zeros written [`ZERO_AHEAD`] at a time make
    /// that one sync per MiB; the frames written after them and the zeros
    /// both reach the disk with the batch's sync. Only within the
    /// allocation: past it the file grows either way.
    ///
    /// # Errors
    /// When the zeros cannot be written.
    pub fn write_ahead_zeros(&mut self, end: u64) -> std::io::Result<()> {
        if end <= self.written || self.written >= self.allocated {
            return Ok(());
        }
        let to = (end + ZERO_AHEAD).min(self.allocated);
        zeros::write_zeros(&self.file, self.written.max(self.len), to)?;
        self.written = to;
        Ok(())
    }
}

/// Creates (or starts over) segment `seq` of `shard`: header written and
/// synced, then the file allocated to `preallocate` bytes (zeros) where the
/// file system can, directory entry synced.
///
/// Preallocation keeps `fdatasync` of the log cheaper: a write into
/// allocated blocks inside the file's size leaves no block allocation or
/// size change for the sync to commit (a write plus sync in a loop was
/// measured faster on ext4, and single-stream appends gained most). The
/// zero rest it leaves ends the newest segment's scan like a clean end; a
/// finished segment is cut to its frames before the next one starts.
///
/// # Errors
/// When the file cannot be created or written.
pub fn create_segment(
    root: &Path,
    shard: u32,
    seq: u64,
    preallocate: u64,
) -> Result<Segment, StorageError> {
    let path = layout::wal_path(root, shard, seq);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&path)
        .map_err(|e| StorageError::path("create log segment", &path, e))?;
    file.write_all_at(&wal_header(shard, seq), 0)
        .and_then(|()| file.sync_all())
        .map_err(|e| match StorageError::from_write(e) {
            StorageError::Io(e) => StorageError::path("initialise log segment", &path, e),
            full => full,
        })?;
    // Only after the header is durable: a crash must not leave a full-size
    // segment of zeros without its header.
    let allocated = if preallocate_zeros(&file, preallocate) {
        preallocate
    } else {
        0
    };
    layout::sync_dir(&root.join(layout::WAL_DIR))?;
    Ok(Segment {
        seq,
        file: Arc::new(file),
        len: WAL_HEADER,
        written: WAL_HEADER,
        allocated,
    })
}

/// Allocates `file` up to `len` bytes, reading as zeros; whether it did.
/// Best effort: a file system without `fallocate` or without the room
/// simply grows the file as it is written, as before.
fn preallocate_zeros(file: &File, len: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(len) = libc::off_t::try_from(len) else {
        return false;
    };
    // SAFETY: `fallocate` on a file descriptor this `File` owns and keeps
    // open for the call; mode 0 only allocates and extends the size.
    let allocated = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0;
    if allocated && let Err(error) = file.sync_all() {
        tracing::debug!(error = %error, "syncing a preallocated log segment failed; the first commit syncs it");
    }
    allocated
}

/// Cuts the preallocated rest off segment `seq` of `shard`, which holds
/// `len` bytes of header and frames. Best effort, for a clean stop: a start
/// after it then reads no zeros, and a segment left uncut still ends
/// cleanly.
pub fn cut_unwritten(root: &Path, shard: u32, seq: u64, len: u64) {
    let path = layout::wal_path(root, shard, seq);
    let cut = OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|file| file.set_len(len));
    if let Err(error) = cut {
        tracing::debug!(file = %path.display(), %error, "cannot cut the preallocated rest of a log segment");
    }
}

/// How a scan treats damage.
#[derive(Clone, Copy, Debug)]
pub struct Policy<'a> {
    /// Beside a running server (a live export): nothing is truncated, and a
    /// bad frame at the end of the newest segment is a write in progress.
    pub read_only: bool,
    /// `<file name>:<offset>` the operator allowed to discard from.
    pub truncate_corrupt_at: Option<&'a str>,
}

/// How a scanned segment ended.
#[derive(Debug, PartialEq, Eq)]
pub enum End {
    /// At its last frame.
    Clean,
    /// Cut at a damaged frame (a torn tail, or where the operator allowed):
    /// later segments of the same log must go too.
    Truncated,
}

/// Replays the frames of the segment at `path` from byte `from` on,
/// handing each mutation and the offset just after its frame to `apply`.
/// `apply` refusing a mutation counts as a damaged frame there.
///
/// # Errors
/// [`StorageError::Corrupt`] naming the file and offset of a damaged frame
/// that is not a torn tail; I/O failures.
pub fn scan(
    path: &Path,
    header: &[u8],
    from: u64,
    is_last: bool,
    policy: Policy<'_>,
    apply: &mut dyn FnMut(Mutation, u64) -> Result<(), String>,
) -> Result<End, StorageError> {
    let data = Bytes::from(
        std::fs::read(path).map_err(|e| StorageError::path("read log segment", path, e))?,
    );
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or_default()
        .to_owned();
    if data.len() < header.len() {
        if is_last {
            // Created but never initialised: nothing in it.
            return Ok(End::Clean);
        }
        return Err(StorageError::Corrupt(format!(
            "log segment {} is shorter than its header",
            path.display()
        )));
    }
    if &data[..header.len()] != header {
        return Err(StorageError::Corrupt(format!(
            "log segment {} has a bad header",
            path.display()
        )));
    }
    let mut pos = usize::try_from(from)
        .unwrap_or(usize::MAX)
        .max(header.len());
    if pos > data.len() {
        return Err(StorageError::Corrupt(format!(
            "log segment {} ends at {} before the checkpointed position {from}",
            path.display(),
            data.len()
        )));
    }
    while pos < data.len() {
        let rest = data.slice(pos..);
        let failure = match codec::decode(&rest) {
            Ok(decoded) => match apply(decoded.mutation, (pos + decoded.frame_len) as u64) {
                Ok(()) => {
                    pos += decoded.frame_len;
                    continue;
                }
                Err(reason) => reason,
            },
            Err(error) => error.to_string(),
        };
        if is_last && data[pos..].iter().all(|&b| b == 0) {
            // The preallocated rest of the newest segment, never written:
            // nothing at all follows, so nothing acknowledged can lie
            // behind it. Zeros with anything after them are judged below
            // like any other bad frame.
            return Ok(End::Clean);
        }
        let location = format!("{name}:{pos}");
        let tail_only = is_last && !valid_frame_follows(&data, pos);
        if policy.read_only {
            if tail_only {
                return Ok(End::Clean);
            }
            return Err(StorageError::Corrupt(format!(
                "log segment {} has an invalid record at byte offset {pos} ({failure})",
                path.display()
            )));
        }
        let operator_approved = policy.truncate_corrupt_at == Some(location.as_str());
        if !tail_only && !operator_approved {
            return Err(StorageError::Corrupt(format!(
                "log segment {} has an invalid record at byte offset {pos} ({failure}); valid records follow it, \
                 so this is not a torn write. To discard the log from there on, restart once with \
                 storage.truncate_corrupt_at = \"{location}\" (env DS_STORAGE__TRUNCATE_CORRUPT_AT={location})",
                path.display()
            )));
        }
        if tail_only {
            tracing::warn!(file = %path.display(), offset = pos, reason = %failure, "truncating a torn tail");
        } else {
            tracing::warn!(file = %path.display(), offset = pos, reason = %failure, "truncating the log as the operator asked");
        }
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .map_err(|e| StorageError::path("open log segment", path, e))?;
        file.set_len(pos as u64)
            .and_then(|()| file.sync_all())
            .map_err(|e| StorageError::path("truncate log segment", path, e))?;
        return Ok(End::Truncated);
    }
    Ok(End::Clean)
}

/// Whether a verifiable frame starts anywhere after a bad one at `bad`: if
/// so, the damage is not a torn tail.
fn valid_frame_follows(data: &Bytes, bad: usize) -> bool {
    // The bad frame's own length, if plausible, says where the next starts.
    if let Some(len) = codec::frame_len(&data[bad..]) {
        let next = bad + FRAME_HEADER + len;
        if next < data.len() && codec::decode(&data.slice(next..)).is_ok() {
            return true;
        }
    }
    // Otherwise search the rest of the file byte by byte. The search must
    // not stop early: when a frame's length field is damaged, the next valid
    // frame lies as far away as that frame was long (a frame may be many
    // MiB), and missing it would discard acknowledged records as a "torn
    // tail". Positions that cannot start a frame are skipped before paying
    // for a checksum, which keeps the scan linear on real data; none can
    // start in the zeros a preallocated segment ends with (a frame's length
    // is never zero), so the search stops where they begin.
    let written = data
        .iter()
        .rposition(|&b| b != 0)
        .map_or(0, |last| last + 1);
    ((bad + 1)..written)
        .any(|at| codec::looks_like_frame(&data[at..]) && codec::decode(&data.slice(at..)).is_ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Zeros are written ahead of the frames within the allocation, so the
    /// blocks a batch lands in were written before (the file system then
    /// has no block to convert from allocated to written at its sync). On a
    /// file system that reports allocated, never written blocks as holes
    /// (ext4, XFS), none is left right after the frames.
    #[test]
    fn zeros_are_written_ahead_of_the_frames() {
        use std::os::fd::AsRawFd;
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir_all(dir.path().join(layout::WAL_DIR)).expect("log dir");
        let mut segment = create_segment(dir.path(), 0, 1, 4 * ZERO_AHEAD).expect("segment");
        if segment.allocated == 0 {
            return; // no fallocate here: nothing allocated, nothing to convert
        }
        let end = WAL_HEADER + 100;
        segment.write_ahead_zeros(end).expect("zeros");
        segment
            .file
            .write_all_at(&[7u8; 100], WAL_HEADER)
            .expect("frames");
        let fd = segment.file.as_raw_fd();
        // SAFETY: `lseek` on a descriptor the segment keeps open.
        let hole = unsafe { libc::lseek(fd, 0, libc::SEEK_HOLE) };
        assert!(
            hole < 0 || hole as u64 >= end + ZERO_AHEAD,
            "a hole starts at {hole}, within {} bytes of the frames",
            ZERO_AHEAD
        );
        let mut rest = vec![1u8; 4096];
        segment
            .file
            .read_exact_at(&mut rest, end)
            .expect("read after the frames");
        assert!(rest.iter().all(|&b| b == 0));
        assert_eq!(
            segment.file.metadata().expect("metadata").len(),
            4 * ZERO_AHEAD
        );
    }
}
