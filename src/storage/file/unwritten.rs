//! Chunk-file bytes that are committed (in the synced log) but not yet
//! written to their chunk files.
//!
//! Writing each record into its stream's chunk file on the commit path cost
//! one `pwrite` per append at 100 streams (a batch holds about one append
//! per stream, so there was nothing to merge). Instead, publishing a record
//! appends its frame to the stream's [`Unwritten`] bytes, and the shard's
//! writer writes a stream's bytes with one `pwrite` once they reach
//! [`STREAM_FLUSH`], or all of a shard's once it holds more than its share
//! of `storage.chunk_buffer_bytes`. Readers take the part a chunk file lacks
//! from here. A checkpoint writes everything (and syncs it) before it lets
//! the log before it go, so after a crash the replay of the log since the
//! last checkpoint rebuilds whatever never reached a chunk file.
//!
//! A failed write keeps the bytes (readers still find them) and is tried
//! again; once a shard holds more than its share, its writer refuses new
//! batches with the error ([`StorageError::Full`] on a full disk) rather
//! than let memory grow.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;

use super::super::{StorageError, StreamId};
use super::chunk;
use super::files::FileCache;
use super::state::{Dirty, Stream};

/// A stream's unwritten bytes are written once they reach this. It bounds
/// what each busy stream holds (with its `Vec`'s growth, about 18 KiB), so
/// 100 streams appended to in turn keep under 2 MiB here, not 7 MiB as at
/// 64 KiB; one `pwrite` per 16 KiB still merges about 230 small appends.
pub const STREAM_FLUSH: usize = 16 << 10;
/// What a piece costs besides its bytes (counted against the cap).
const PIECE_COST: usize = 64;

/// Bytes of one chunk file from `offset` on, not yet written there.
struct Piece {
    chunk: u64,
    offset: u64,
    bytes: Vec<u8>,
}

/// A stream's unwritten chunk bytes, oldest chunk first (two chunks only
/// around the start of a new chunk). Their total is added up when needed
/// (one or two pieces), not kept: every stream has one of these.
#[derive(Default)]
pub struct Unwritten {
    pieces: Pieces,
}

/// The pieces, boxed while there are any: every stream keeps its
/// [`Unwritten`] and an idle one holds none, so it costs a pointer, not
/// the 24 bytes of an empty `Vec`.
#[derive(Default)]
#[allow(clippy::box_collection)]
struct Pieces(Option<Box<Vec<Piece>>>);

impl std::ops::Deref for Pieces {
    type Target = [Piece];

    fn deref(&self) -> &[Piece] {
        self.0.as_deref().map_or(&[], Vec::as_slice)
    }
}

impl std::ops::DerefMut for Pieces {
    fn deref_mut(&mut self) -> &mut [Piece] {
        self.0.as_deref_mut().map_or(&mut [], Vec::as_mut_slice)
    }
}

impl Pieces {
    fn push(&mut self, piece: Piece) {
        self.0
            .get_or_insert_with(|| Box::new(Vec::with_capacity(1)))
            .push(piece);
    }

    /// Drops the oldest piece; frees the room once none is left.
    fn remove_first(&mut self) {
        if let Some(pieces) = self.0.as_mut() {
            pieces.remove(0);
        }
        self.free_if_empty();
    }

    /// Keeps the pieces `keep` accepts; frees the room once none is left.
    fn retain(&mut self, keep: impl FnMut(&Piece) -> bool) {
        if let Some(pieces) = self.0.as_mut() {
            pieces.retain(keep);
        }
        self.free_if_empty();
    }

    fn free_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

impl Unwritten {
    /// The pieces' bytes.
    fn held(&self) -> usize {
        self.pieces.iter().map(|p| p.bytes.len()).sum()
    }

    fn cost(&self) -> usize {
        self.held() + self.pieces.len() * PIECE_COST
    }

    /// The frame of the record at stream position `pos`, which goes at
    /// `offset` of chunk `chunk`; returns the bytes this adds to the cost.
    fn push(&mut self, chunk: u64, offset: u64, pos: u64, data: &[u8]) -> usize {
        let before = self.cost();
        let contiguous = self
            .pieces
            .last()
            .is_some_and(|p| p.chunk == chunk && p.offset + p.bytes.len() as u64 == offset);
        if !contiguous {
            self.pieces.push(Piece {
                chunk,
                offset,
                bytes: Vec::with_capacity(data.len() + chunk::FRAME_HEADER as usize),
            });
        }
        if let Some(piece) = self.pieces.last_mut() {
            chunk::encode_frame(&mut piece.bytes, pos, data);
        }
        self.cost() - before
    }

    /// The bytes of chunk `chunk` not in its file, up to file offset
    /// `limit` (the committed length): (their file offset, the bytes).
    pub fn snapshot(&self, chunk: u64, limit: Option<u64>) -> Option<(u64, Bytes)> {
        let piece = self.pieces.iter().find(|p| p.chunk == chunk)?;
        let end = limit.map_or(piece.bytes.len(), |l| {
            usize::try_from(l.saturating_sub(piece.offset))
                .unwrap_or(usize::MAX)
                .min(piece.bytes.len())
        });
        Some((piece.offset, Bytes::copy_from_slice(&piece.bytes[..end])))
    }

    /// Writes every piece into its chunk file; returns the cost freed,
    /// also when a later piece failed. A chunk file that is gone (trimmed or
    /// removed meanwhile) drops its piece.
    fn write(
        &mut self,
        id: StreamId,
        files: &FileCache,
        dirty: &Mutex<Dirty>,
    ) -> (usize, Result<(), StorageError>) {
        let before = self.cost();
        let outcome = self.write_pieces(id, files, dirty);
        (before - self.cost(), outcome)
    }

    fn write_pieces(
        &mut self,
        id: StreamId,
        files: &FileCache,
        dirty: &Mutex<Dirty>,
    ) -> Result<(), StorageError> {
        while let Some(piece) = self.pieces.first() {
            match files.get(id, piece.chunk) {
                Ok(file) => {
                    file.write_all_at(&piece.bytes, piece.offset)
                        .map_err(StorageError::from_write)?;
                    dirty
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .chunks
                        .insert((id, piece.chunk));
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(StorageError::Io(e)),
            }
            // Written out: an idle stream keeps no buffer.
            self.pieces.remove_first();
        }
        Ok(())
    }

    /// Drops the pieces of chunks that are gone; returns the cost freed.
    fn retain_chunks(&mut self, keep: impl Fn(u64) -> bool) -> usize {
        let before = self.cost();
        self.pieces.retain(|p| keep(p.chunk));
        before - self.cost()
    }
}

/// Chunk files' lengths by (stream, chunk start).
type FileLengths = HashMap<(StreamId, u64), u64>;

/// A shard's streams with unwritten bytes, and what they cost.
#[derive(Default)]
pub struct ShardBuffer {
    bytes: AtomicUsize,
    /// Every stream with unwritten bytes (kept under the stream's own
    /// lock, so a stream with bytes is never missing here).
    streams: Mutex<HashMap<StreamId, Arc<Stream>>>,
    /// Streams past [`STREAM_FLUSH`], to be written by the writer.
    due: Mutex<Vec<Arc<Stream>>>,
    /// Beside a running server (read-only): what its chunk files held when
    /// first looked at; frames within that are not kept.
    on_disk: Option<(PathBuf, Mutex<FileLengths>)>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl ShardBuffer {
    /// For a read-only replay beside a running server, whose chunk files
    /// hold some of the replayed records already.
    pub fn beside_writer(root: &Path) -> Self {
        Self {
            on_disk: Some((root.to_path_buf(), Mutex::new(HashMap::new()))),
            ..Self::default()
        }
    }

    /// Bytes held (with a fixed cost per piece).
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    /// Keeps the frame of a published record of `stream` at `pos`, which
    /// goes at `offset` of chunk `chunk`.
    pub fn push(&self, stream: &Arc<Stream>, chunk: u64, offset: u64, pos: u64, data: &[u8]) {
        if let Some((root, on_disk)) = &self.on_disk {
            let len = *lock(on_disk).entry((stream.id, chunk)).or_insert_with(|| {
                let path = super::layout::chunk_path(root, stream.id, chunk);
                std::fs::metadata(path).map_or(0, |m| m.len())
            });
            if offset + chunk::FRAME_HEADER + data.len() as u64 <= len {
                return;
            }
        }
        let mut unwritten = lock(&stream.unwritten);
        let was_empty = unwritten.pieces.is_empty();
        let held_before = unwritten.held();
        let added = unwritten.push(chunk, offset, pos, data);
        self.bytes.fetch_add(added, Ordering::AcqRel);
        if was_empty {
            lock(&self.streams).insert(stream.id, stream.clone());
        }
        // Due once, when its bytes first reach the mark (the cost added
        // also counts a new piece's overhead, so it is not compared here).
        if unwritten.held() >= STREAM_FLUSH && held_before < STREAM_FLUSH {
            lock(&self.due).push(stream.clone());
        }
    }

    /// Drops `stream`'s pieces of chunks for which `keep` is false (removed
    /// or trimmed).
    pub fn discard(&self, stream: &Stream, keep: impl Fn(u64) -> bool) {
        let mut unwritten = lock(&stream.unwritten);
        let freed = unwritten.retain_chunks(keep);
        self.bytes.fetch_sub(freed, Ordering::AcqRel);
        if unwritten.pieces.is_empty() {
            lock(&self.streams).remove(&stream.id);
        }
    }

    fn write_stream(
        &self,
        stream: &Stream,
        files: &FileCache,
        dirty: &Mutex<Dirty>,
    ) -> Result<(), StorageError> {
        let mut unwritten = lock(&stream.unwritten);
        // A piece written before a later one failed is freed all the same:
        // counted on, it would hold the shard over its share for good.
        let (freed, outcome) = unwritten.write(stream.id, files, dirty);
        self.bytes.fetch_sub(freed, Ordering::AcqRel);
        if unwritten.pieces.is_empty() {
            let mut streams = lock(&self.streams);
            streams.remove(&stream.id);
            // A burst of appends to many streams grew the map; once they
            // are written out it would keep that table for good.
            if streams.capacity() > 4 * streams.len().max(64) {
                streams.shrink_to_fit();
            }
        }
        outcome
    }

    /// Writes the streams past [`STREAM_FLUSH`].
    ///
    /// # Errors
    /// The first failed write (the rest stay due).
    pub fn write_due(&self, files: &FileCache, dirty: &Mutex<Dirty>) -> Result<(), StorageError> {
        let due = std::mem::take(&mut *lock(&self.due));
        for (k, stream) in due.iter().enumerate() {
            if let Err(error) = self.write_stream(stream, files, dirty) {
                lock(&self.due).extend(due[k..].iter().cloned());
                return Err(error);
            }
        }
        Ok(())
    }

    /// Writes everything held.
    ///
    /// # Errors
    /// The first failed write (the rest stay held).
    pub fn write_all(&self, files: &FileCache, dirty: &Mutex<Dirty>) -> Result<(), StorageError> {
        let streams: Vec<Arc<Stream>> = lock(&self.streams).values().cloned().collect();
        for stream in streams {
            self.write_stream(&stream, files, dirty)?;
        }
        Ok(())
    }
}

/// Reads `buf` from file offset `at` of a chunk: from its file below the
/// offset where its unwritten bytes (`memory`) start, from them after.
///
/// # Errors
/// When the file cannot be read, or the range ends past both.
pub fn read_at(
    file: &std::fs::File,
    memory: Option<&(u64, Bytes)>,
    buf: &mut [u8],
    at: u64,
) -> std::io::Result<()> {
    let Some((offset, bytes)) = memory else {
        return file.read_exact_at(buf, at);
    };
    let split = usize::try_from(offset.saturating_sub(at))
        .unwrap_or(usize::MAX)
        .min(buf.len());
    let (from_file, from_memory) = buf.split_at_mut(split);
    if !from_file.is_empty() {
        file.read_exact_at(from_file, at)?;
    }
    if !from_memory.is_empty() {
        let start = usize::try_from(at + split as u64 - offset).unwrap_or(usize::MAX);
        let source = bytes
            .get(start..start + from_memory.len())
            .ok_or_else(|| std::io::Error::from(std::io::ErrorKind::UnexpectedEof))?;
        from_memory.copy_from_slice(source);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two pieces, the second's chunk file cannot be opened: the first is
    /// written and its cost freed, the second stays for the next try.
    #[test]
    fn a_failed_write_still_frees_what_was_written_before_it() {
        let dir = tempfile::tempdir().expect("temp dir");
        let files = FileCache::new(dir.path(), 8, true);
        let dirty = Mutex::new(Dirty::default());
        files.create(1, 0).expect("first chunk file");
        std::fs::create_dir_all(super::super::layout::chunk_path(dir.path(), 1, 4096))
            .expect("a directory where the second chunk file would be");
        let mut unwritten = Unwritten::default();
        unwritten.push(0, 0, 0, b"end of the first chunk");
        unwritten.push(4096, 0, 4096, b"start of the second");
        let first = unwritten.pieces[0].bytes.clone();

        let (freed, outcome) = unwritten.write(1, &files, &dirty);
        assert!(outcome.is_err());
        assert_eq!(freed, first.len() + PIECE_COST);
        assert_eq!(unwritten.pieces.len(), 1);
        assert_eq!(unwritten.pieces[0].chunk, 4096);
        let written = std::fs::read(super::super::layout::chunk_path(dir.path(), 1, 0))
            .expect("first chunk file");
        assert_eq!(written, first);
    }
}
