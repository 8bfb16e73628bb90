//! Checkpoints: the state of every stream and, per commit shard, the log
//! position from which the log must be replayed, in one file replaced
//! atomically (written to `checkpoint.tmp`, synced, renamed over
//! `checkpoint`, directory synced). A clean restart reads only this file; a
//! restart after a crash replays the log from the positions it names.
//!
//! ```text
//! "DSCKPT01" | chunk_bytes u64 | shards u32 | (segment u64, offset u64)*
//! | streams u64 | stream* | crc32c of all before u32
//! stream: id u64 | spec (JSON) | base u64 | tail u64 | flags u8
//!         | [closed_by] | [stream_seq] | producers u32 | (id, epoch, seq)*
//!         | chunks u32 | (start u64, last_write_ms i64)* | [active chunk]
//! ```
//! All integers little-endian; strings as `len u32 | bytes`.

use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;

use super::super::chunk_list::Chunk;
use super::super::{ClosedBy, StorageError, StreamId};
use super::chunk::Active;
use super::layout;
use super::reader::Reader;
use crate::protocol::producer::ProducerState;

const MAGIC: &[u8; 8] = b"DSCKPT01";
const CLOSED: u8 = 1;
const CLOSED_BY: u8 = 2;
const SOFT_DELETED: u8 = 4;
const STREAM_SEQ: u8 = 8;
const ACTIVE: u8 = 16;

/// A position in a shard's log: segment number and byte offset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogPosition {
    /// The segment.
    pub seq: u64,
    /// The byte offset in it.
    pub offset: u64,
}

/// One stream's state as a checkpoint keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamRecord {
    /// The stream instance.
    pub id: StreamId,
    /// Its [`crate::storage::StreamSpec`], compact or (written by earlier
    /// versions) JSON: see the `spec` module.
    pub spec: Box<[u8]>,
    /// Where its own data begins.
    pub base: u64,
    /// Its tail.
    pub tail: u64,
    /// Closed, and by whom.
    pub closed: Option<Option<ClosedBy>>,
    /// Producer states.
    pub producers: Vec<(String, ProducerState)>,
    /// `Stream-Seq` watermark.
    pub stream_seq: Option<String>,
    /// Soft-deleted.
    pub soft_deleted: bool,
    /// Its retained chunks, oldest first.
    pub chunks: Vec<Chunk>,
    /// The file state of its last chunk.
    pub active: Option<Active>,
}

/// A whole checkpoint.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Checkpoint {
    /// The chunk size the log after it was written with.
    pub chunk_bytes: u64,
    /// Per shard, where replay starts.
    pub positions: Vec<LogPosition>,
    /// Every stream.
    pub streams: Vec<StreamRecord>,
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&u32::try_from(bytes.len()).unwrap_or(u32::MAX).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Appends `stream` to a checkpoint body.
pub fn encode_stream(out: &mut Vec<u8>, stream: &StreamRecord) {
    out.extend_from_slice(&stream.id.to_le_bytes());
    put_bytes(out, &stream.spec);
    out.extend_from_slice(&stream.base.to_le_bytes());
    out.extend_from_slice(&stream.tail.to_le_bytes());
    let mut flags = 0;
    if let Some(by) = &stream.closed {
        flags |= CLOSED;
        if by.is_some() {
            flags |= CLOSED_BY;
        }
    }
    if stream.soft_deleted {
        flags |= SOFT_DELETED;
    }
    if stream.stream_seq.is_some() {
        flags |= STREAM_SEQ;
    }
    if stream.active.is_some() {
        flags |= ACTIVE;
    }
    out.push(flags);
    if let Some(Some(by)) = &stream.closed {
        put_bytes(out, by.producer_id.as_bytes());
        out.extend_from_slice(&by.epoch.to_le_bytes());
        out.extend_from_slice(&by.seq.to_le_bytes());
    }
    if let Some(seq) = &stream.stream_seq {
        put_bytes(out, seq.as_bytes());
    }
    out.extend_from_slice(&(stream.producers.len() as u32).to_le_bytes());
    for (id, state) in &stream.producers {
        put_bytes(out, id.as_bytes());
        out.extend_from_slice(&state.epoch.to_le_bytes());
        out.extend_from_slice(&state.last_seq.to_le_bytes());
    }
    out.extend_from_slice(&(stream.chunks.len() as u32).to_le_bytes());
    for chunk in &stream.chunks {
        out.extend_from_slice(&chunk.start.to_le_bytes());
        out.extend_from_slice(&chunk.last_write_ms.to_le_bytes());
    }
    if let Some(active) = &stream.active {
        out.extend_from_slice(&active.start.to_le_bytes());
        out.extend_from_slice(&active.len.to_le_bytes());
        out.extend_from_slice(&active.index_entries.to_le_bytes());
        out.extend_from_slice(&active.index_next.to_le_bytes());
    }
}

/// The opening of a checkpoint, before its streams.
pub fn encode_header(out: &mut Vec<u8>, chunk_bytes: u64, positions: &[LogPosition], streams: u64) {
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&chunk_bytes.to_le_bytes());
    out.extend_from_slice(&(positions.len() as u32).to_le_bytes());
    for position in positions {
        out.extend_from_slice(&position.seq.to_le_bytes());
        out.extend_from_slice(&position.offset.to_le_bytes());
    }
    out.extend_from_slice(&streams.to_le_bytes());
}

/// Writes `body` (header and streams, without the checksum) as the new
/// checkpoint of `root`, atomically and durably.
///
/// # Errors
/// When any step fails; the previous checkpoint is then still in place.
pub fn write(root: &Path, mut body: Vec<u8>) -> Result<(), StorageError> {
    let crc = crc32c::crc32c(&body);
    body.extend_from_slice(&crc.to_le_bytes());
    let temp = root.join(layout::CHECKPOINT_TEMP);
    let target = root.join(layout::CHECKPOINT);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temp)
        .map_err(|e| StorageError::path("create checkpoint", &temp, e))?;
    file.write_all(&body)
        .and_then(|()| file.sync_all())
        .map_err(StorageError::from_write)?;
    drop(file);
    std::fs::rename(&temp, &target)
        .map_err(|e| StorageError::path("replace checkpoint", &target, e))?;
    layout::sync_dir(root)
}

fn decode_stream(r: &mut Reader<'_>) -> Option<StreamRecord> {
    let id = r.u64()?;
    let spec = r.bytes()?.into();
    let base = r.u64()?;
    let tail = r.u64()?;
    let flags = r.u8()?;
    let closed = if flags & CLOSED != 0 {
        if flags & CLOSED_BY != 0 {
            Some(Some(ClosedBy {
                producer_id: r.string()?,
                epoch: r.u64()?,
                seq: r.u64()?,
            }))
        } else {
            Some(None)
        }
    } else {
        None
    };
    let stream_seq = if flags & STREAM_SEQ != 0 {
        Some(r.string()?)
    } else {
        None
    };
    let producer_count = r.u32()?;
    let mut producers = Vec::new();
    for _ in 0..producer_count {
        producers.push((
            r.string()?,
            ProducerState {
                epoch: r.u64()?,
                last_seq: r.u64()?,
            },
        ));
    }
    let chunk_count = r.u32()?;
    let mut chunks = Vec::new();
    for _ in 0..chunk_count {
        chunks.push(Chunk {
            start: r.u64()?,
            last_write_ms: r.u64()? as i64,
        });
    }
    let active = if flags & ACTIVE != 0 {
        Some(Active {
            start: r.u64()?,
            len: r.u64()?,
            index_entries: r.u32()?,
            index_next: r.u64()?,
        })
    } else {
        None
    };
    Some(StreamRecord {
        id,
        spec,
        base,
        tail,
        closed,
        producers,
        stream_seq,
        soft_deleted: flags & SOFT_DELETED != 0,
        chunks,
        active,
    })
}

/// Reads the checkpoint of `root`, if there is one.
///
/// # Errors
/// [`StorageError::Corrupt`] naming the file when it fails its checksum or
/// does not parse; I/O failures.
pub fn read(root: &Path) -> Result<Option<Checkpoint>, StorageError> {
    let path = root.join(layout::CHECKPOINT);
    let raw = match std::fs::read(&path) {
        Ok(raw) => raw,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(StorageError::path("read checkpoint", &path, e)),
    };
    let corrupt = |what: &str| {
        StorageError::Corrupt(format!(
            "checkpoint file {} {what}; restore the data directory from a backup",
            path.display()
        ))
    };
    let (body, crc) = raw
        .split_last_chunk::<4>()
        .ok_or_else(|| corrupt("is truncated"))?;
    if crc32c::crc32c(body) != u32::from_le_bytes(*crc) {
        return Err(corrupt("fails its checksum"));
    }
    let mut r = Reader::new(body);
    let parsed = (|| {
        if r.take(8)? != MAGIC {
            return None;
        }
        let chunk_bytes = r.u64()?;
        let shards = r.u32()?;
        let mut positions = Vec::new();
        for _ in 0..shards {
            positions.push(LogPosition {
                seq: r.u64()?,
                offset: r.u64()?,
            });
        }
        let count = r.u64()?;
        let mut streams = Vec::new();
        for _ in 0..count {
            streams.push(decode_stream(&mut r)?);
        }
        r.at_end().then_some(Checkpoint {
            chunk_bytes,
            positions,
            streams,
        })
    })();
    parsed
        .map(Some)
        .ok_or_else(|| corrupt("is not a valid checkpoint"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_checkpoint_round_trips_and_damage_is_refused() {
        let dir = tempfile::tempdir().expect("temp dir");
        let stream = StreamRecord {
            id: 9,
            spec: b"{}".to_vec().into(),
            base: 3,
            tail: 40,
            closed: Some(Some(ClosedBy {
                producer_id: "p".into(),
                epoch: 1,
                seq: 2,
            })),
            producers: vec![(
                "p".into(),
                ProducerState {
                    epoch: 1,
                    last_seq: 2,
                },
            )],
            stream_seq: Some("07".into()),
            soft_deleted: true,
            chunks: vec![Chunk {
                start: 3,
                last_write_ms: 77,
            }],
            active: Some(Active::new(3)),
        };
        let positions = [LogPosition { seq: 4, offset: 24 }];
        let mut body = Vec::new();
        encode_header(&mut body, 1 << 20, &positions, 1);
        encode_stream(&mut body, &stream);
        write(dir.path(), body).expect("write");
        let back = read(dir.path()).expect("read").expect("present");
        assert_eq!(
            back,
            Checkpoint {
                chunk_bytes: 1 << 20,
                positions: positions.to_vec(),
                streams: vec![stream],
            }
        );
        let path = dir.path().join(layout::CHECKPOINT);
        let mut raw = std::fs::read(&path).expect("raw");
        raw[20] ^= 1;
        std::fs::write(&path, raw).expect("damage");
        assert!(matches!(read(dir.path()), Err(StorageError::Corrupt(_))));
    }
}
