//! Binary encoding of [`Mutation`]s as checksummed frames: the records of
//! the file backends' segment log (the acid backend keeps its own redb
//! tables).
//!
//! A frame is `len: u32 LE | crc32c(body): u32 LE | body`. The body starts
//! with a kind byte and the stream id; an append's payload comes last so a
//! reader can address it inside the frame without decoding anything else.

use bytes::Bytes;

use super::{Append, ClosedBy, Mutation, StreamSpec};
use crate::protocol::producer::ProducerState;

/// Bytes before a frame's body.
pub const FRAME_HEADER: usize = 8;

const KIND_CREATE: u8 = 1;
const KIND_APPEND: u8 = 2;
const KIND_SOFT_DELETE: u8 = 3;
const KIND_REMOVE: u8 = 4;
const KIND_TRIM: u8 = 5;

const FLAG_PRODUCER: u8 = 1;
const FLAG_STREAM_SEQ: u8 = 2;
const FLAG_CLOSE: u8 = 4;
const FLAG_CLOSED_BY: u8 = 8;

/// Why a frame could not be decoded.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame announces.
    #[error("frame is truncated")]
    Truncated,
    /// The checksum does not match the body.
    #[error("frame checksum mismatch")]
    Checksum,
    /// The body is not a valid mutation.
    #[error("frame body is malformed: {0}")]
    Malformed(&'static str),
}

/// Appends the frame of `mutation` to `out`; returns where the payload of an
/// append or create starts, relative to the frame start.
pub fn encode(mutation: &Mutation, out: &mut Vec<u8>) -> usize {
    let frame_start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER]);
    let payload_at;
    match mutation {
        Mutation::Create { spec, data, closed } => {
            out.push(KIND_CREATE);
            out.extend_from_slice(&spec.id.to_le_bytes());
            let json = serde_json::to_vec(spec).unwrap_or_default();
            put_bytes(out, &json);
            out.push(u8::from(*closed));
            payload_at = out.len() - frame_start;
            out.extend_from_slice(data);
        }
        Mutation::Append(append) => {
            out.push(KIND_APPEND);
            out.extend_from_slice(&append.id.to_le_bytes());
            out.extend_from_slice(&append.start.to_le_bytes());
            let mut flags = 0;
            if append.producer.is_some() {
                flags |= FLAG_PRODUCER;
            }
            if append.stream_seq.is_some() {
                flags |= FLAG_STREAM_SEQ;
            }
            if let Some(by) = &append.close {
                flags |= FLAG_CLOSE;
                if by.is_some() {
                    flags |= FLAG_CLOSED_BY;
                }
            }
            out.push(flags);
            if let Some((id, state)) = &append.producer {
                put_bytes(out, id.as_bytes());
                out.extend_from_slice(&state.epoch.to_le_bytes());
                out.extend_from_slice(&state.last_seq.to_le_bytes());
            }
            if let Some(seq) = &append.stream_seq {
                put_bytes(out, seq.as_bytes());
            }
            if let Some(Some(by)) = &append.close {
                put_bytes(out, by.producer_id.as_bytes());
                out.extend_from_slice(&by.epoch.to_le_bytes());
                out.extend_from_slice(&by.seq.to_le_bytes());
            }
            payload_at = out.len() - frame_start;
            out.extend_from_slice(&append.data);
        }
        Mutation::SoftDelete { id } => {
            out.push(KIND_SOFT_DELETE);
            out.extend_from_slice(&id.to_le_bytes());
            payload_at = out.len() - frame_start;
        }
        Mutation::Remove { id } => {
            out.push(KIND_REMOVE);
            out.extend_from_slice(&id.to_le_bytes());
            payload_at = out.len() - frame_start;
        }
        Mutation::Trim { id, before } => {
            out.push(KIND_TRIM);
            out.extend_from_slice(&id.to_le_bytes());
            out.extend_from_slice(&before.to_le_bytes());
            payload_at = out.len() - frame_start;
        }
    }
    let body_len = out.len() - frame_start - FRAME_HEADER;
    let crc = crc32c::crc32c(&out[frame_start + FRAME_HEADER..]);
    out[frame_start..frame_start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[frame_start + 4..frame_start + 8].copy_from_slice(&crc.to_le_bytes());
    payload_at
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a frame header: the body length, if `buf` holds a whole header.
pub fn frame_len(buf: &[u8]) -> Option<usize> {
    let header: [u8; 4] = buf.get(..4)?.try_into().ok()?;
    Some(u32::from_le_bytes(header) as usize)
}

/// A cheap structural test, without the checksum, of whether a frame could
/// start at `buf`: its body fits in `buf` and opens like a mutation (known
/// kind, known flags, the right size for bodies of fixed size). Lets a scan
/// for frames skip almost every position before paying for a checksum.
pub fn looks_like_frame(buf: &[u8]) -> bool {
    let Some(body) =
        frame_len(buf).and_then(|len| buf.get(FRAME_HEADER..FRAME_HEADER.checked_add(len)?))
    else {
        return false;
    };
    const KNOWN_FLAGS: u8 = FLAG_PRODUCER | FLAG_STREAM_SEQ | FLAG_CLOSE | FLAG_CLOSED_BY;
    match body.first().copied() {
        // kind, id, spec length, then at least the closed flag
        Some(KIND_CREATE) => body.len() > 1 + 8 + 4,
        // kind, id, start, flags
        Some(KIND_APPEND) => body.get(17).is_some_and(|flags| flags & !KNOWN_FLAGS == 0),
        Some(KIND_SOFT_DELETE | KIND_REMOVE) => body.len() == 1 + 8,
        Some(KIND_TRIM) => body.len() == 1 + 8 + 8,
        _ => false,
    }
}

/// A decoded frame.
#[derive(Debug)]
pub struct Decoded {
    /// The mutation (its payload borrowed from the frame as `Bytes`).
    pub mutation: Mutation,
    /// Where the payload starts, relative to the frame start.
    pub payload_at: usize,
    /// The frame's total length.
    pub frame_len: usize,
}

/// Decodes the frame at the start of `buf`, verifying its checksum.
///
/// # Errors
/// [`DecodeError`] when the frame is incomplete, fails its checksum, or is
/// not a valid mutation.
pub fn decode(buf: &Bytes) -> Result<Decoded, DecodeError> {
    let body_len = frame_len(buf).ok_or(DecodeError::Truncated)?;
    let frame_len = FRAME_HEADER
        .checked_add(body_len)
        .ok_or(DecodeError::Truncated)?;
    if buf.len() < frame_len {
        return Err(DecodeError::Truncated);
    }
    let stored_crc = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = buf.slice(FRAME_HEADER..frame_len);
    if crc32c::crc32c(&body) != stored_crc {
        return Err(DecodeError::Checksum);
    }
    let mut reader = Reader { buf: &body, at: 0 };
    let kind = reader.u8()?;
    let id = reader.u64()?;
    let mutation = match kind {
        KIND_CREATE => {
            let json = reader.bytes()?;
            let spec: StreamSpec = serde_json::from_slice(json)
                .map_err(|_| DecodeError::Malformed("stream spec is not valid JSON"))?;
            if spec.id != id {
                return Err(DecodeError::Malformed("stream id mismatch"));
            }
            let closed = reader.u8()? != 0;
            Mutation::Create {
                spec,
                data: body.slice(reader.at..),
                closed,
            }
        }
        KIND_APPEND => {
            let start = reader.u64()?;
            let flags = reader.u8()?;
            let producer = if flags & FLAG_PRODUCER != 0 {
                let pid = reader.string()?;
                let epoch = reader.u64()?;
                let last_seq = reader.u64()?;
                Some((pid, ProducerState { epoch, last_seq }))
            } else {
                None
            };
            let stream_seq = if flags & FLAG_STREAM_SEQ != 0 {
                Some(reader.string()?)
            } else {
                None
            };
            let close = if flags & FLAG_CLOSE != 0 {
                if flags & FLAG_CLOSED_BY != 0 {
                    let producer_id = reader.string()?;
                    let epoch = reader.u64()?;
                    let seq = reader.u64()?;
                    Some(Some(ClosedBy {
                        producer_id,
                        epoch,
                        seq,
                    }))
                } else {
                    Some(None)
                }
            } else {
                None
            };
            Mutation::Append(Append {
                id,
                start,
                data: body.slice(reader.at..),
                producer,
                stream_seq,
                close,
            })
        }
        KIND_SOFT_DELETE => Mutation::SoftDelete { id },
        KIND_REMOVE => Mutation::Remove { id },
        KIND_TRIM => Mutation::Trim {
            id,
            before: reader.u64()?,
        },
        _ => return Err(DecodeError::Malformed("unknown frame kind")),
    };
    Ok(Decoded {
        mutation,
        payload_at: FRAME_HEADER + reader.at,
        frame_len,
    })
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DecodeError::Malformed("length overflow"))?;
        let slice = self
            .buf
            .get(self.at..end)
            .ok_or(DecodeError::Malformed("field runs past the frame"))?;
        self.at = end;
        Ok(slice)
    }

    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take(1)?[0])
    }

    fn u64(&mut self) -> Result<u64, DecodeError> {
        let raw = self.take(8)?;
        let mut bytes = [0; 8];
        bytes.copy_from_slice(raw);
        Ok(u64::from_le_bytes(bytes))
    }

    fn bytes(&mut self) -> Result<&'a [u8], DecodeError> {
        let raw = self.take(4)?;
        let len = u32::from_le_bytes([raw[0], raw[1], raw[2], raw[3]]) as usize;
        self.take(len)
    }

    fn string(&mut self) -> Result<String, DecodeError> {
        String::from_utf8(self.bytes()?.to_vec())
            .map_err(|_| DecodeError::Malformed("string is not UTF-8"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round_trip(mutation: &Mutation) -> Mutation {
        let mut out = Vec::new();
        encode(mutation, &mut out);
        assert!(looks_like_frame(&out), "a real frame passes the pre-check");
        let decoded = decode(&Bytes::from(out.clone())).expect("decodes");
        assert_eq!(decoded.frame_len, out.len());
        decoded.mutation
    }

    proptest! {
        #[test]
        fn appends_round_trip(
            data in proptest::collection::vec(any::<u8>(), 0..64),
            start in any::<u64>(),
            producer in proptest::option::of(("[a-z]{1,8}", any::<u64>(), any::<u64>())),
            seq in proptest::option::of("[ -~]{0,12}"),
            close in proptest::option::of(proptest::option::of(("[a-z]{1,8}", any::<u64>(), any::<u64>()))),
        ) {
            let append = Append {
                id: 7,
                start,
                data: Bytes::from(data.clone()),
                producer: producer.map(|(id, epoch, last_seq)| (id, ProducerState { epoch, last_seq })),
                stream_seq: seq,
                close: close.map(|by| by.map(|(producer_id, epoch, seq)| ClosedBy { producer_id, epoch, seq })),
            };
            let Mutation::Append(back) = round_trip(&Mutation::Append(append.clone())) else { panic!("kind") };
            prop_assert_eq!(back.data.as_ref(), data.as_slice());
            prop_assert_eq!(back.start, append.start);
            prop_assert_eq!(back.producer, append.producer);
            prop_assert_eq!(back.stream_seq, append.stream_seq);
            prop_assert_eq!(back.close, append.close);
        }

        #[test]
        fn any_flipped_byte_is_detected(data in proptest::collection::vec(any::<u8>(), 1..64), flip in any::<prop::sample::Index>(), bit in 0u8..8) {
            let mut out = Vec::new();
            encode(&Mutation::Append(Append { id: 1, start: 0, data: Bytes::from(data), producer: None, stream_seq: None, close: None }), &mut out);
            let index = flip.index(out.len());
            out[index] ^= 1 << bit;
            prop_assert!(decode(&Bytes::from(out)).is_err());
        }
    }

    #[test]
    fn deletions_round_trip() {
        assert!(matches!(
            round_trip(&Mutation::SoftDelete { id: 4 }),
            Mutation::SoftDelete { id: 4 }
        ));
        assert!(matches!(
            round_trip(&Mutation::Remove { id: 5 }),
            Mutation::Remove { id: 5 }
        ));
        assert!(matches!(
            round_trip(&Mutation::Trim { id: 6, before: 99 }),
            Mutation::Trim { id: 6, before: 99 }
        ));
    }

    #[test]
    fn the_pre_check_refuses_what_cannot_be_a_frame() {
        let mut out = Vec::new();
        encode(&Mutation::Remove { id: 5 }, &mut out);
        assert!(!looks_like_frame(&out[..out.len() - 1]), "body cut short");
        assert!(!looks_like_frame(&[0; 64]), "zeros");
        out[FRAME_HEADER] = 9;
        assert!(!looks_like_frame(&out), "unknown kind");
    }

    #[test]
    fn create_round_trips() {
        let spec = StreamSpec {
            id: 3,
            path: "/v1/stream/a".into(),
            content_type: "application/json".into(),
            ttl_secs: Some(5),
            expires_at_ms: None,
            created_at_ms: 1,
            fork: None,
            base: 0,
        };
        let Mutation::Create {
            spec: back,
            data,
            closed,
        } = round_trip(&Mutation::Create {
            spec: spec.clone(),
            data: Bytes::from_static(b"1,"),
            closed: true,
        })
        else {
            panic!("kind")
        };
        assert_eq!(back, spec);
        assert_eq!(data.as_ref(), b"1,");
        assert!(closed);
    }
}
