//! A request head whose every field is one an append reads (or `Host`, or
//! `Accept`, which HTTP client libraries send by default and nothing on
//! the append path reads),
//! kept as positions in the head's bytes rather than as a `HeaderMap`: the
//! usual append's head, which the append shortcut reads without the map's
//! allocations, hashing and shared values ([`PlainFields`]).

use axum::http::{HeaderMap, HeaderName, HeaderValue, header};
use bytes::Bytes;

use super::append::AppendFields;
use super::names::{PRODUCER_EPOCH, PRODUCER_ID, PRODUCER_SEQ, STREAM_CLOSED, STREAM_SEQ};

/// A field of a plain head.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Plain {
    Host,
    Accept,
    ContentType,
    ContentLength,
    ProducerId,
    ProducerEpoch,
    ProducerSeq,
    StreamSeq,
    StreamClosed,
}

impl Plain {
    /// The field named `raw` (in any case), if it is one of these.
    pub(crate) fn of(raw: &[u8]) -> Option<Plain> {
        let (name, field) = match raw.len() {
            4 => ("host", Plain::Host),
            6 => ("accept", Plain::Accept),
            10 if raw[0] | 0x20 == b's' => ("stream-seq", Plain::StreamSeq),
            11 => ("producer-id", Plain::ProducerId),
            12 if raw[0] | 0x20 == b'c' => ("content-type", Plain::ContentType),
            12 => ("producer-seq", Plain::ProducerSeq),
            13 => ("stream-closed", Plain::StreamClosed),
            14 if raw[0] | 0x20 == b'c' => ("content-length", Plain::ContentLength),
            14 => ("producer-epoch", Plain::ProducerEpoch),
            _ => return None,
        };
        raw.eq_ignore_ascii_case(name.as_bytes()).then_some(field)
    }

    /// The length of the field's name.
    fn name_len(self) -> usize {
        match self {
            Plain::Host => 4,
            Plain::Accept => 6,
            Plain::StreamSeq => 10,
            Plain::ProducerId => 11,
            Plain::ContentType | Plain::ProducerSeq => 12,
            Plain::StreamClosed => 13,
            Plain::ContentLength | Plain::ProducerEpoch => 14,
        }
    }

    /// The field's name.
    pub(crate) fn name(self) -> HeaderName {
        match self {
            Plain::Host => header::HOST,
            Plain::Accept => header::ACCEPT,
            Plain::ContentType => header::CONTENT_TYPE,
            Plain::ContentLength => header::CONTENT_LENGTH,
            Plain::ProducerId => PRODUCER_ID,
            Plain::ProducerEpoch => PRODUCER_EPOCH,
            Plain::ProducerSeq => PRODUCER_SEQ,
            Plain::StreamSeq => STREAM_SEQ,
            Plain::StreamClosed => STREAM_CLOSED,
        }
    }
}

/// Most fields a plain head has; a head with more gets a map.
const MOST: usize = 8;

/// The fields of a plain head, in their order, as positions in the head's
/// bytes; values are trimmed and were checked as a `HeaderValue` would
/// check them.
#[derive(Debug)]
pub(crate) struct PlainFields {
    head: Bytes,
    len: usize,
    fields: [(Plain, u32, u32); MOST],
    /// Names and values in bytes, as a map's fields count.
    bytes: usize,
    /// The whole body, when the connection had it already: the append
    /// takes it as it is, without boxing it into a `Body` and polling it.
    body: Option<Bytes>,
}

impl PlainFields {
    /// No fields yet, of a head in `head`.
    pub(crate) fn new(head: Bytes) -> Self {
        Self {
            head,
            len: 0,
            fields: [(Plain::Host, 0, 0); MOST],
            bytes: 0,
            body: None,
        }
    }

    /// Keeps `body`, the request's whole body, here rather than in its
    /// `Body` ([`fill`](Self::fill) puts it back there).
    pub(crate) fn set_body(&mut self, body: Bytes) {
        self.body = Some(body);
    }

    /// The whole body, when [`set_body`](Self::set_body) kept it here.
    pub(crate) fn body(&self) -> Option<&Bytes> {
        self.body.as_ref()
    }

    /// Puts the fields into `request`'s map and a body kept here into its
    /// `Body`: the request as it would have been without plain fields.
    pub(crate) fn fill(mut self, request: &mut axum::http::Request<axum::body::Body>) {
        if let Some(body) = self.body.take() {
            *request.body_mut() = axum::body::Body::from(body);
        }
        *request.headers_mut() = self.into_map();
    }

    /// Adds the field `field` with `value`, a part of the head (`false`,
    /// unchanged, when it is full or `value` is not in the head). `value`
    /// must be one a `HeaderValue` may hold: [`into_map`](Self::into_map)
    /// does not check it again (the HTTP/1.1 engine's parser did).
    pub(crate) fn push(&mut self, field: Plain, value: &[u8]) -> bool {
        debug_assert!(HeaderValue::from_bytes(value).is_ok());
        let start = (value.as_ptr() as usize).wrapping_sub(self.head.as_ptr() as usize);
        let in_head = start <= self.head.len() && value.len() <= self.head.len() - start;
        let (Ok(from), Ok(to)) = (u32::try_from(start), u32::try_from(start + value.len())) else {
            return false;
        };
        if self.len == MOST || !in_head {
            return false;
        }
        self.fields[self.len] = (field, from, to);
        self.len += 1;
        self.bytes += field.name_len() + value.len();
        true
    }

    fn iter(&self) -> impl Iterator<Item = (Plain, &[u8])> {
        self.fields[..self.len]
            .iter()
            .map(|&(field, from, to)| (field, &self.head[from as usize..to as usize]))
    }

    /// The value of the first `field`.
    pub(crate) fn first(&self, field: Plain) -> Option<&[u8]> {
        self.iter()
            .find(|(name, _)| *name == field)
            .map(|(_, value)| value)
    }

    /// Names and values in bytes, as [`super::InputLimits::check_head`]
    /// counts a map's.
    pub(crate) fn header_bytes(&self) -> usize {
        self.bytes
    }

    /// The fields an append reads.
    pub(super) fn append_fields(&self) -> AppendFields<'_> {
        let mut fields = AppendFields::default();
        for (field, value) in self.iter() {
            let slot = match field {
                Plain::Host | Plain::Accept => continue,
                Plain::ContentType => &mut fields.content_type,
                Plain::ContentLength => &mut fields.content_length,
                Plain::ProducerId => &mut fields.producer_id,
                Plain::ProducerEpoch => &mut fields.producer_epoch,
                Plain::ProducerSeq => &mut fields.producer_seq,
                Plain::StreamSeq => &mut fields.stream_seq,
                Plain::StreamClosed => &mut fields.stream_closed,
            };
            slot.get_or_insert(value);
        }
        fields
    }

    /// The fields as a map, in their order, values sharing the head.
    pub(crate) fn into_map(self) -> HeaderMap {
        let mut map = HeaderMap::with_capacity(self.len);
        for &(field, from, to) in &self.fields[..self.len] {
            let value = self.head.slice(from as usize..to as usize);
            // SAFETY: values were checked as a `HeaderValue` checks them
            // when the head was parsed (see `PlainFields`).
            map.append(field.name(), unsafe {
                HeaderValue::from_maybe_shared_unchecked(value)
            });
        }
        map
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_found_in_any_case_and_no_others() {
        for field in [
            Plain::Host,
            Plain::Accept,
            Plain::ContentType,
            Plain::ContentLength,
            Plain::ProducerId,
            Plain::ProducerEpoch,
            Plain::ProducerSeq,
            Plain::StreamSeq,
            Plain::StreamClosed,
        ] {
            let name = field.name();
            assert_eq!(name.as_str().len(), field.name_len());
            assert_eq!(Plain::of(name.as_str().as_bytes()), Some(field));
            let upper = name.as_str().to_ascii_uppercase();
            assert_eq!(Plain::of(upper.as_bytes()), Some(field));
        }
        for other in [
            "origin",
            "hosts",
            "accepts",
            "accept-encoding",
            "content-typo",
            "stream-ttl",
            "x-seq-abcd",
            "",
        ] {
            assert_eq!(Plain::of(other.as_bytes()), None, "{other}");
        }
    }

    #[test]
    fn fields_keep_their_order_and_first_values() {
        let head =
            Bytes::from_static(b"Host: a\r\nStream-Seq: 1\r\nstream-seq: 2\r\nContent-Length: 3");
        let at = |needle: &[u8]| {
            let start = head
                .windows(needle.len())
                .position(|w| w == needle)
                .expect("in head");
            &head[start..start + needle.len()]
        };
        let mut fields = PlainFields::new(head.clone());
        assert!(fields.push(Plain::Host, at(b"a")));
        assert!(fields.push(Plain::StreamSeq, at(b"1")));
        assert!(fields.push(Plain::StreamSeq, at(b"2")));
        assert!(fields.push(Plain::ContentLength, at(b"3")));
        assert!(!fields.push(Plain::Host, b"elsewhere"));
        assert_eq!(fields.first(Plain::StreamSeq), Some(&b"1"[..]));
        assert_eq!(fields.append_fields().stream_seq, Some(&b"1"[..]));
        assert_eq!(fields.header_bytes(), 4 + 1 + 10 + 1 + 10 + 1 + 14 + 1);
        let map = fields.into_map();
        let seqs: Vec<_> = map.get_all(STREAM_SEQ).iter().collect();
        assert_eq!(seqs, ["1", "2"]);
        assert_eq!(map[header::HOST], "a");
        assert_eq!(map.len(), 4);
    }

    #[test]
    fn a_full_head_takes_no_more_fields() {
        let head = Bytes::from_static(b"0123456789");
        let mut fields = PlainFields::new(head.clone());
        for at in 0..MOST {
            assert!(fields.push(Plain::StreamSeq, &head[at..=at]));
        }
        assert!(!fields.push(Plain::StreamSeq, &head[9..]));
    }

    #[tokio::test]
    async fn fill_gives_a_request_the_fields_and_the_kept_body() {
        let head = Bytes::from_static(b"Host: a\r\nContent-Type: text/plain");
        let mut fields = PlainFields::new(head.clone());
        assert!(fields.push(Plain::Host, &head[6..7]));
        assert!(fields.push(Plain::ContentType, &head[23..]));
        fields.set_body(Bytes::from_static(b"kept body"));
        let mut request = axum::http::Request::new(axum::body::Body::from("other"));
        request
            .headers_mut()
            .insert(header::ORIGIN, HeaderValue::from_static("https://x"));
        fields.fill(&mut request);
        assert_eq!(request.headers()[header::HOST], "a");
        assert_eq!(request.headers()[header::CONTENT_TYPE], "text/plain");
        assert_eq!(request.headers().len(), 2);
        let body = axum::body::to_bytes(request.into_body(), 64).await;
        assert_eq!(body.ok().as_deref(), Some(&b"kept body"[..]));

        let mut request = axum::http::Request::new(axum::body::Body::from("streamed"));
        PlainFields::new(head).fill(&mut request);
        let body = axum::body::to_bytes(request.into_body(), 64).await;
        assert_eq!(body.ok().as_deref(), Some(&b"streamed"[..]));
    }
}
