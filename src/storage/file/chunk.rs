//! Chunk files: a stream's records as frames `len: u32 LE | crc: u32 LE |
//! payload`, the CRC32C taken over the record's start position (u64 LE)
//! and then the payload, so that a frame read at the wrong place never
//! verifies. Beside each chunk, a sparse index (`.idx`): one entry
//! `(position: u64 LE, file offset: u64 LE)` for the first frame at or past
//! every [`INDEX_INTERVAL`] bytes of the chunk file, so a read at any
//! position parses at most that many bytes before its first record. No
//! record's position is ever held in memory.

use std::fs::File;
use std::path::Path;

use bytes::Bytes;

use super::super::{ReadChunk, StorageError};
use super::unwritten::read_at;

/// Bytes before a record's payload.
pub const FRAME_HEADER: u64 = 8;
/// Bytes of chunk file between two sparse-index entries (at most).
pub const INDEX_INTERVAL: u64 = 64 << 10;
/// Bytes of one index entry.
pub const INDEX_ENTRY: u64 = 16;
/// Smallest read from a chunk file.
const MIN_READ: u64 = 16 << 10;

/// The checksum of a record starting at stream position `start`.
pub fn frame_crc(start: u64, payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(&start.to_le_bytes()), payload)
}

/// Appends the frame of a record starting at `start` to `out`.
pub fn encode_frame(out: &mut Vec<u8>, start: u64, payload: &[u8]) {
    out.extend_from_slice(
        &u32::try_from(payload.len())
            .unwrap_or(u32::MAX)
            .to_le_bytes(),
    );
    out.extend_from_slice(&frame_crc(start, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The chunk a stream is writing: where it starts, how long its file and its
/// index are. Kept by the writer and in checkpoints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Active {
    /// Stream position of the chunk's first record.
    pub start: u64,
    /// Bytes of the chunk file.
    pub len: u64,
    /// Entries of its index.
    pub index_entries: u32,
    /// The file offset from which the next frame gets an index entry.
    pub index_next: u64,
}

/// An index entry to write: its offset in the index file and its bytes.
pub type IndexEntry = (u64, [u8; INDEX_ENTRY as usize]);

impl Active {
    /// An empty chunk starting at stream position `start`.
    pub fn new(start: u64) -> Self {
        Self {
            start,
            len: 0,
            index_entries: 0,
            index_next: INDEX_INTERVAL,
        }
    }

    /// Accounts for the frame of a record at `pos` with `payload` bytes,
    /// written at the end of the file; returns the index entry it needs.
    pub fn add(&mut self, pos: u64, payload: u64) -> Option<IndexEntry> {
        let offset = self.len;
        self.len += FRAME_HEADER + payload;
        if offset < self.index_next {
            return None;
        }
        let mut entry = [0u8; INDEX_ENTRY as usize];
        entry[..8].copy_from_slice(&pos.to_le_bytes());
        entry[8..].copy_from_slice(&offset.to_le_bytes());
        let at = u64::from(self.index_entries) * INDEX_ENTRY;
        self.index_entries += 1;
        self.index_next = (offset / INDEX_INTERVAL + 1) * INDEX_INTERVAL;
        Some((at, entry))
    }
}

/// A committed chunk to read: where it starts and, for the chunk still
/// being written, how much of its file and index is committed.
#[derive(Clone, Debug)]
pub struct Committed {
    /// Stream position of its first record.
    pub start: u64,
    /// Stream position just after its last committed record.
    pub end: u64,
    /// Committed bytes of the file and entries of the index; `None` for a
    /// sealed chunk (all of them).
    pub limit: Option<(u64, u32)>,
    /// Its committed bytes not yet in its file: (their file offset, the
    /// bytes), taken with the rest of the plan.
    pub memory: Option<(u64, Bytes)>,
}

/// An open chunk file, with the paths of it and its index.
#[derive(Clone, Copy)]
pub struct ChunkFile<'a> {
    /// The open file.
    pub file: &'a File,
    /// Its path, for errors.
    pub path: &'a Path,
    /// Its index.
    pub index: &'a Path,
}

/// The closest indexed frame at or before `from`: (position, file offset).
fn seek(index: &Path, limit: Option<u32>, from: u64) -> Result<Option<(u64, u64)>, StorageError> {
    let raw = match std::fs::read(index) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::path("read chunk index", index, e)),
    };
    let count = raw.len() / INDEX_ENTRY as usize;
    let count = limit.map_or(count, |l| count.min(l as usize));
    let entry = |i: usize| {
        let at = i * INDEX_ENTRY as usize;
        let word = |o: usize| {
            let mut bytes = [0u8; 8];
            bytes.copy_from_slice(&raw[at + o..at + o + 8]);
            u64::from_le_bytes(bytes)
        };
        (word(0), word(8))
    };
    // The first entry past `from`, by bisection.
    let (mut lo, mut hi) = (0usize, count);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if entry(mid).0 <= from {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    Ok(lo.checked_sub(1).map(entry))
}

/// Reads the records of `chunk` in `[from, until)` into `out`, stopping
/// after the record that reaches `budget` bytes; returns the bytes taken.
/// Every record handed out is verified against its checksum.
///
/// # Errors
/// [`StorageError::Corrupt`] naming the file and offset of a record that
/// fails verification; I/O failures.
pub fn read(
    ChunkFile { file, path, index }: ChunkFile<'_>,
    chunk: Committed,
    from: u64,
    until: u64,
    budget: usize,
    out: &mut ReadChunk,
) -> Result<usize, StorageError> {
    let until = until.min(chunk.end);
    if from >= until {
        return Ok(0);
    }
    let file_len = match (chunk.limit, &chunk.memory) {
        (Some((len, _)), _) => len,
        (None, Some((offset, bytes))) => offset + bytes.len() as u64,
        (None, None) => file
            .metadata()
            .map_err(|e| StorageError::path("inspect chunk file", path, e))?
            .len(),
    };
    let (mut pos, mut off) = if from == chunk.start {
        (chunk.start, 0)
    } else {
        seek(index, chunk.limit.map(|(_, entries)| entries), from)?
            .filter(|&(pos, _)| pos >= chunk.start)
            .unwrap_or((chunk.start, 0))
    };
    let base = off;
    let mut buf: Vec<u8> = Vec::new();
    let wanted = (until - from).min(budget as u64);
    let mut next_read = (from - pos + wanted + wanted / 8 + 4096).max(MIN_READ);
    let corrupt = |at: u64, what: &str| {
        StorageError::Corrupt(format!(
            "chunk file {} has {what} at byte offset {at}",
            path.display()
        ))
    };
    // Reads until `buf` covers file offset `upto`; false at the end of file.
    let mut fill = |buf: &mut Vec<u8>, upto: u64| -> Result<bool, StorageError> {
        while base + (buf.len() as u64) < upto {
            let have = base + buf.len() as u64;
            if have >= file_len {
                return Ok(false);
            }
            let want = (upto - have).max(next_read).min(file_len - have);
            next_read = next_read.saturating_mul(2);
            let old = buf.len();
            buf.resize(old + want as usize, 0);
            read_at(file, chunk.memory.as_ref(), &mut buf[old..], have)
                .map_err(|e| StorageError::path("read chunk file", path, e))?;
        }
        Ok(true)
    };
    let mut pieces: Vec<(usize, usize)> = Vec::new();
    let mut taken = 0usize;
    while pos < until {
        if !fill(&mut buf, off + FRAME_HEADER)? {
            return Err(corrupt(off, "no record where one must start"));
        }
        let rel = (off - base) as usize;
        let len = u64::from(u32::from_le_bytes([
            buf[rel],
            buf[rel + 1],
            buf[rel + 2],
            buf[rel + 3],
        ]));
        let crc = u32::from_le_bytes([buf[rel + 4], buf[rel + 5], buf[rel + 6], buf[rel + 7]]);
        if len == 0 || !fill(&mut buf, off + FRAME_HEADER + len)? {
            return Err(corrupt(off, "a record cut short"));
        }
        let end = pos + len;
        if end > from {
            let payload = &buf[rel + FRAME_HEADER as usize..rel + (FRAME_HEADER + len) as usize];
            if frame_crc(pos, payload) != crc {
                return Err(corrupt(off, "a record failing its checksum"));
            }
            let lo = from.saturating_sub(pos);
            let hi = until.min(end) - pos;
            if pieces.is_empty() && out.records.is_empty() && lo > 0 {
                out.starts_mid_record = true;
            }
            let at = rel + FRAME_HEADER as usize;
            pieces.push((at + lo as usize, at + hi as usize));
            taken += (hi - lo) as usize;
            out.end = pos + hi;
            if taken >= budget {
                break;
            }
        }
        pos = end;
        off += FRAME_HEADER + len;
    }
    let buf = Bytes::from(buf);
    out.records
        .extend(pieces.into_iter().map(|(lo, hi)| buf.slice(lo..hi)));
    Ok(taken)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_entries_follow_the_interval() {
        let mut active = Active::new(100);
        assert!(active.add(100, INDEX_INTERVAL - 8).is_none());
        let (at, entry) = active.add(100 + INDEX_INTERVAL - 8, 10).expect("due");
        assert_eq!(at, 0);
        assert_eq!(&entry[..8], &(100 + INDEX_INTERVAL - 8).to_le_bytes());
        assert_eq!(&entry[8..], &INDEX_INTERVAL.to_le_bytes());
        assert!(active.add(0, 10).is_none());
        // A record larger than the interval: the next frame gets one entry.
        active.add(0, 3 * INDEX_INTERVAL);
        assert!(active.add(0, 1).is_some());
        assert_eq!(active.index_entries, 2);
    }

    #[test]
    fn a_frame_verifies_only_at_its_own_position() {
        let mut out = Vec::new();
        encode_frame(&mut out, 7, b"abc");
        let crc = u32::from_le_bytes([out[4], out[5], out[6], out[7]]);
        assert_eq!(crc, frame_crc(7, b"abc"));
        assert_ne!(crc, frame_crc(8, b"abc"));
    }
}
