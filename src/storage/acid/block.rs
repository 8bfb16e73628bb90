//! Blocks of records: one redb value holds a run of consecutive records of
//! one stream, so a move into redb makes one B-tree insert per stream and
//! block instead of one per record.
//!
//! Layout: CRC32C (4 bytes LE) of everything after it, the payloads one
//! after another, each record's length (u32 LE), then the record count
//! (u32 LE). The key is (stream, end position of the last record). A block
//! never spans two chunks, so retention drops whole blocks.

use std::ops::Range;
use std::path::Path;

use crate::storage::{StorageError, StreamId};

/// Payload bytes after which a block is closed: bounds what a read loads
/// for a few bytes of it.
pub(super) const BLOCK_BYTES: usize = 64 << 10;

/// A block being filled with one stream's records.
pub(super) struct BlockBuilder {
    /// Stream position of the first record's first byte.
    start: u64,
    /// The CRC's place, then the payloads so far.
    bytes: Vec<u8>,
    lens: Vec<u32>,
}

impl BlockBuilder {
    /// An empty block whose first record starts at `start`.
    pub(super) fn new(start: u64) -> Self {
        let mut bytes = Vec::with_capacity(4 + 1024);
        bytes.extend_from_slice(&[0; 4]);
        Self {
            start,
            bytes,
            lens: Vec::new(),
        }
    }

    /// Adds the next record.
    ///
    /// # Errors
    /// `Full` for a record of 4 GiB or more (a batch is far smaller).
    pub(super) fn push(&mut self, data: &[u8]) -> Result<(), StorageError> {
        let len = u32::try_from(data.len())
            .map_err(|_| StorageError::Full(format!("a record of {} bytes", data.len())))?;
        self.bytes.extend_from_slice(data);
        self.lens.push(len);
        Ok(())
    }

    /// Payload bytes held.
    pub(super) fn payload_len(&self) -> usize {
        self.bytes.len() - 4
    }

    /// Whether it holds no record.
    pub(super) fn is_empty(&self) -> bool {
        self.lens.is_empty()
    }

    /// Stream position after its last record: the block's key.
    pub(super) fn end(&self) -> u64 {
        self.start + self.payload_len() as u64
    }

    /// The stored value.
    pub(super) fn finish(self) -> Vec<u8> {
        let Self {
            mut bytes, lens, ..
        } = self;
        bytes.reserve(lens.len() * 4 + 4);
        for len in &lens {
            bytes.extend_from_slice(&len.to_le_bytes());
        }
        // At most BLOCK_BYTES of records of at least one byte each, or one
        // bigger record: the count always fits.
        let count = u32::try_from(lens.len()).unwrap_or(u32::MAX);
        bytes.extend_from_slice(&count.to_le_bytes());
        let crc = crc32c::crc32c(&bytes[4..]);
        bytes[..4].copy_from_slice(&crc.to_le_bytes());
        bytes
    }
}

/// A stored block, checked against its checksum and its key.
pub(super) struct Block<'a> {
    payloads: &'a [u8],
    lens: &'a [u8],
    start: u64,
}

impl<'a> Block<'a> {
    /// Checks `value`, stored under (`id`, `end`), as a block.
    pub(super) fn decode(
        value: &'a [u8],
        id: StreamId,
        end: u64,
        path: &Path,
    ) -> Result<Self, StorageError> {
        let corrupt = || {
            StorageError::Corrupt(format!(
                "database file {}: block of stream {id} ending at position {end} fails its checksum",
                path.display()
            ))
        };
        let (crc, rest) = value.split_first_chunk::<4>().ok_or_else(corrupt)?;
        if u32::from_le_bytes(*crc) != crc32c::crc32c(rest) {
            return Err(corrupt());
        }
        let (body, count) = rest.split_last_chunk::<4>().ok_or_else(corrupt)?;
        let count = u32::from_le_bytes(*count) as usize;
        let lens_at = count
            .checked_mul(4)
            .and_then(|lens| body.len().checked_sub(lens))
            .ok_or_else(corrupt)?;
        let (payloads, lens) = body.split_at(lens_at);
        let total: u64 = lens
            .chunks_exact(4)
            .map(|len| u64::from(u32::from_le_bytes([len[0], len[1], len[2], len[3]])))
            .sum();
        if total != payloads.len() as u64 || total > end {
            return Err(corrupt());
        }
        Ok(Self {
            payloads,
            lens,
            start: end - total,
        })
    }

    /// Its records in order: each one's stream position and its range in
    /// [`Block::payloads`].
    pub(super) fn records(&self) -> impl Iterator<Item = (u64, Range<usize>)> + '_ {
        let mut at = 0usize;
        self.lens.chunks_exact(4).map(move |len| {
            let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
            let range = at..at + len;
            at += len;
            (self.start + range.start as u64, range)
        })
    }

    /// All of its payload bytes.
    pub(super) fn payloads(&self) -> &'a [u8] {
        self.payloads
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn built(start: u64, records: &[&[u8]]) -> Vec<u8> {
        let mut block = BlockBuilder::new(start);
        for record in records {
            block.push(record).expect("push");
        }
        assert_eq!(
            block.end(),
            start + records.iter().map(|r| r.len() as u64).sum::<u64>()
        );
        block.finish()
    }

    #[test]
    fn a_block_gives_back_its_records_and_positions() {
        let value = built(10, &[b"ab", b"", b"cde"]);
        let block = Block::decode(&value, 1, 15, Path::new("db")).expect("decode");
        let records: Vec<(u64, &[u8])> = block
            .records()
            .map(|(start, range)| (start, &block.payloads()[range]))
            .collect();
        assert_eq!(
            records,
            [(10, &b"ab"[..]), (12, &b""[..]), (12, &b"cde"[..])]
        );
    }

    #[test]
    fn any_flipped_bit_or_cut_is_refused() {
        let value = built(0, &[b"hello", b"world"]);
        for at in 0..value.len() {
            for bit in 0..8 {
                let mut damaged = value.clone();
                damaged[at] ^= 1 << bit;
                assert!(Block::decode(&damaged, 1, 10, Path::new("db")).is_err());
            }
        }
        for len in 0..value.len() {
            assert!(Block::decode(&value[..len], 1, 10, Path::new("db")).is_err());
        }
        // A key whose end lies before the block's length.
        assert!(Block::decode(&value, 1, 9, Path::new("db")).is_err());
    }
}
