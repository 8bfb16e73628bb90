//! What an append reads from its request's fields and the fields of its
//! answer, which the lean HTTP/1.1 engine can write into the head without
//! a map ([`super::HeadLines`]).

use axum::http::{HeaderMap, HeaderValue, header};

use super::names::*;
use super::stream::{TRUE, offset_value};
use crate::protocol::offset::Offset;

/// The fields an append reads (the first value of each), found in one pass
/// over the head rather than one hash lookup each.
#[derive(Default)]
pub(super) struct AppendFields<'a> {
    pub(super) content_type: Option<&'a [u8]>,
    pub(super) content_length: Option<&'a [u8]>,
    pub(super) producer_id: Option<&'a [u8]>,
    pub(super) producer_epoch: Option<&'a [u8]>,
    pub(super) producer_seq: Option<&'a [u8]>,
    pub(super) stream_seq: Option<&'a [u8]>,
    pub(super) stream_closed: Option<&'a [u8]>,
}

impl<'a> AppendFields<'a> {
    /// The fields of `headers`.
    pub(super) fn of(headers: &'a HeaderMap) -> Self {
        let mut fields = Self::default();
        for (name, value) in headers {
            let slot = if *name == header::CONTENT_TYPE {
                &mut fields.content_type
            } else if *name == header::CONTENT_LENGTH {
                &mut fields.content_length
            } else if *name == PRODUCER_ID {
                &mut fields.producer_id
            } else if *name == PRODUCER_EPOCH {
                &mut fields.producer_epoch
            } else if *name == PRODUCER_SEQ {
                &mut fields.producer_seq
            } else if *name == STREAM_SEQ {
                &mut fields.stream_seq
            } else if *name == STREAM_CLOSED {
                &mut fields.stream_closed
            } else {
                continue;
            };
            slot.get_or_insert(value.as_bytes());
        }
        fields
    }
}

/// The header fields of a successful append's answer.
#[derive(Clone, Copy, Debug)]
pub(crate) struct AppendAnswer {
    pub(super) tail: u64,
    pub(super) closed: bool,
    /// Epoch and last sequence of the producer.
    pub(super) producer: Option<(u64, u64)>,
}

impl AppendAnswer {
    /// Inserts the fields into a response's map.
    pub(super) fn insert_into(self, out: &mut HeaderMap) {
        out.insert(STREAM_NEXT_OFFSET, offset_value(self.tail));
        if self.closed {
            out.insert(STREAM_CLOSED, TRUE);
        }
        if let Some((epoch, seq)) = self.producer {
            out.insert(PRODUCER_EPOCH, HeaderValue::from(epoch));
            out.insert(PRODUCER_SEQ, HeaderValue::from(seq));
        }
    }

    /// Writes the fields as an HTTP/1.1 head carries them: the lines
    /// [`insert_into`](Self::insert_into) would make of its map, in its
    /// order.
    pub(crate) fn write_lines(self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"stream-next-offset: ");
        out.extend_from_slice(Offset(self.tail).encode().as_bytes());
        out.extend_from_slice(b"\r\n");
        if self.closed {
            out.extend_from_slice(b"stream-closed: true\r\n");
        }
        if let Some((epoch, seq)) = self.producer {
            // The values as the map would hold them (rarer appends).
            out.extend_from_slice(b"producer-epoch: ");
            out.extend_from_slice(HeaderValue::from(epoch).as_bytes());
            out.extend_from_slice(b"\r\nproducer-seq: ");
            out.extend_from_slice(HeaderValue::from(seq).as_bytes());
            out.extend_from_slice(b"\r\n");
        }
    }

    /// The most bytes [`write_lines`](Self::write_lines) writes: each
    /// name, `: `, the longest value (an offset of 37 bytes, `true`, 20
    /// digits) and CRLF.
    pub(crate) const MAX_LINES: usize = (18 + 37) + (13 + 4) + (14 + 20) + (12 + 20) + 4 * 4;
}
