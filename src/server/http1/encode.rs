//! Response heads and body framing: which of `Content-Length`, chunked or
//! close-delimited a response gets, what is never sent a body (`HEAD`,
//! `1xx`, `204`, `304`), `Connection` and a cached `Date`.

use std::cell::RefCell;
use std::time::{SystemTime, UNIX_EPOCH};

use http::StatusCode;
use http::header::{self, HeaderMap, HeaderValue};

use crate::http::HeadLines;

/// How the response body goes on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Framing {
    /// No body bytes are sent.
    None,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Raw bytes until the connection closes (HTTP/1.0 peers).
    CloseDelimited,
}

/// What the request decided about its response.
#[derive(Clone, Copy, Debug)]
pub(super) struct Exchange {
    /// The request was `HEAD`: headers as for `GET`, never a body.
    pub head_request: bool,
    /// The client speaks HTTP/1.0.
    pub http10: bool,
    /// Whether the connection stays open after this response.
    pub keep_alive: bool,
}

/// What the response body says about its length before it is polled.
#[derive(Clone, Copy, Debug)]
pub(super) enum BodyLength {
    /// It ends at once.
    Empty,
    /// It has exactly this many bytes.
    Exact(u64),
    /// Unknown until it ends.
    Unknown,
}

/// Writes the head of a response with `status` and `headers` (with
/// `lines` around them, header lines ending in CRLF that name none of the
/// fields looked at here) into `out`; returns how its body is framed. Clears
/// `exchange.keep_alive` when the response or its framing ends the
/// connection.
pub(super) fn head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    lines: &HeadLines,
    length: BodyLength,
    exchange: &mut Exchange,
) -> Framing {
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");

    let bodiless = status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse::<u64>().ok());
    // `None`: the handler's own Content-Length is kept as it is (HEAD).
    let (framing, length_line) = if bodiless {
        (Framing::None, LengthLine::Omit)
    } else if exchange.head_request {
        (Framing::None, LengthLine::Keep)
    } else {
        match (length, declared) {
            (BodyLength::Empty, _) => (Framing::None, LengthLine::Write(0)),
            (BodyLength::Exact(length), _) | (BodyLength::Unknown, Some(length)) => {
                (Framing::Length(length), LengthLine::Write(length))
            }
            (BodyLength::Unknown, None) if exchange.http10 => {
                exchange.keep_alive = false;
                (Framing::CloseDelimited, LengthLine::Omit)
            }
            (BodyLength::Unknown, None) => (Framing::Chunked, LengthLine::Omit),
        }
    };

    let mut wrote_date = false;
    lines.write_first(out);
    for (name, value) in headers {
        match *name {
            header::CONTENT_LENGTH if !matches!(length_line, LengthLine::Keep) => continue,
            // Framing is ours to choose.
            header::TRANSFER_ENCODING => continue,
            header::CONNECTION if has_token(value, b"close") => exchange.keep_alive = false,
            header::DATE => wrote_date = true,
            _ => {}
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(lines.last());
    if let LengthLine::Write(length) = length_line {
        out.extend_from_slice(b"content-length: ");
        out.extend_from_slice(itoa_u64(length, &mut [0u8; 20]));
        out.extend_from_slice(b"\r\n");
    }
    if framing == Framing::Chunked {
        out.extend_from_slice(b"transfer-encoding: chunked\r\n");
    }
    let handler_connection = headers.contains_key(header::CONNECTION);
    if !exchange.keep_alive && !headers_say_close(headers) {
        out.extend_from_slice(b"connection: close\r\n");
    } else if exchange.keep_alive && exchange.http10 && !handler_connection {
        out.extend_from_slice(b"connection: keep-alive\r\n");
    }
    if !wrote_date {
        out.extend_from_slice(b"date: ");
        extend_date(out);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    framing
}

/// Room for the head of a response with `headers`: the status line, the
/// fields, and the lines added here.
pub(super) fn capacity(headers: &HeaderMap) -> usize {
    const STATUS_AND_ADDED: usize = 160;
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len() + 4)
        .sum::<usize>()
        + STATUS_AND_ADDED
}

/// What to do with `Content-Length`.
#[derive(Clone, Copy)]
enum LengthLine {
    /// Write this length (any header the handler set is dropped).
    Write(u64),
    /// Keep the handler's header (a `HEAD` answer describes the `GET` one).
    Keep,
    /// Send none.
    Omit,
}

fn headers_say_close(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|value| has_token(value, b"close"))
}

fn has_token(value: &HeaderValue, token: &[u8]) -> bool {
    value
        .as_bytes()
        .split(|&byte| byte == b',')
        .any(|item| item.trim_ascii().eq_ignore_ascii_case(token))
}

/// `value` in decimal, in `scratch`.
fn itoa_u64(mut value: u64, scratch: &mut [u8; 20]) -> &[u8] {
    let mut start = scratch.len();
    loop {
        start -= 1;
        scratch[start] = b'0' + (value % 10) as u8;
        value /= 10;
        if value == 0 {
            return &scratch[start..];
        }
    }
}

/// The `{size:x}\r\n` line before a chunk of `size` bytes.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ChunkLine {
    bytes: [u8; 18],
    start: u8,
}

impl ChunkLine {
    /// The line for a chunk of `size` bytes.
    pub(super) fn new(size: usize) -> Self {
        let mut bytes = [0u8; 18];
        bytes[16] = b'\r';
        bytes[17] = b'\n';
        let mut start = 16;
        let mut rest = size as u64;
        loop {
            start -= 1;
            bytes[start] = b"0123456789abcdef"[(rest & 0xf) as usize];
            rest >>= 4;
            if rest == 0 {
                break;
            }
        }
        Self {
            bytes,
            start: start as u8,
        }
    }

    /// An empty line (nothing to send).
    pub(super) fn empty() -> Self {
        Self {
            bytes: [0u8; 18],
            start: 18,
        }
    }

    /// The part not sent yet.
    pub(super) fn as_bytes(&self) -> &[u8] {
        &self.bytes[usize::from(self.start)..]
    }

    /// Marks `count` more bytes as sent.
    pub(super) fn advance(&mut self, count: usize) {
        self.start = (usize::from(self.start) + count).min(18) as u8;
    }
}

thread_local! {
    /// The `Date` value of the current second, formatted once a second.
    static DATE: RefCell<(u64, [u8; 29])> = const { RefCell::new((u64::MAX, [0u8; 29])) };
}

/// Appends the current time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub(super) fn extend_date(out: &mut Vec<u8>) {
    let now = SystemTime::now();
    let second = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with(|cell| {
        let mut cached = cell.borrow_mut();
        if cached.0 != second {
            let text = httpdate::fmt_http_date(now);
            if text.len() == 29 {
                cached.1.copy_from_slice(text.as_bytes());
                cached.0 = second;
            } else {
                out.extend_from_slice(text.as_bytes());
                return;
            }
        }
        out.extend_from_slice(&cached.1);
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exchange() -> Exchange {
        Exchange {
            head_request: false,
            http10: false,
            keep_alive: true,
        }
    }

    fn encode(
        status: u16,
        headers: &[(&'static str, &'static str)],
        length: BodyLength,
        exchange: &mut Exchange,
    ) -> (String, Framing) {
        let mut map = HeaderMap::new();
        for (name, value) in headers {
            map.append(*name, HeaderValue::from_static(value));
        }
        let mut out = Vec::new();
        let framing = head(
            &mut out,
            StatusCode::from_u16(status).expect("status"),
            &map,
            &HeadLines::NONE,
            length,
            exchange,
        );
        (String::from_utf8(out).expect("text"), framing)
    }

    #[test]
    fn known_lengths_get_content_length() {
        let (text, framing) = encode(
            200,
            &[("content-length", "99"), ("x-a", "1")],
            BodyLength::Exact(5),
            &mut exchange(),
        );
        assert!(text.starts_with("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: 5\r\ndate: "));
        assert!(text.ends_with(" GMT\r\n\r\n"), "{text}");
        assert_eq!(framing, Framing::Length(5));
    }

    #[test]
    fn unknown_lengths_are_chunked_or_close_delimited() {
        let (text, framing) = encode(200, &[], BodyLength::Unknown, &mut exchange());
        assert!(text.contains("transfer-encoding: chunked\r\n"));
        assert_eq!(framing, Framing::Chunked);
        let mut old = Exchange {
            http10: true,
            ..exchange()
        };
        let (text, framing) = encode(200, &[], BodyLength::Unknown, &mut old);
        assert_eq!(framing, Framing::CloseDelimited);
        assert!(!old.keep_alive);
        assert!(text.contains("connection: close\r\n"));
        assert!(!text.contains("transfer-encoding"));
    }

    #[test]
    fn bodiless_answers_have_no_framing() {
        for status in [204, 304] {
            let (text, framing) = encode(
                status,
                &[("content-length", "0"), ("transfer-encoding", "chunked")],
                BodyLength::Empty,
                &mut exchange(),
            );
            assert_eq!(framing, Framing::None);
            assert!(!text.contains("content-length"), "{text}");
            assert!(!text.contains("transfer-encoding"), "{text}");
        }
        let mut head_request = Exchange {
            head_request: true,
            ..exchange()
        };
        let (text, framing) = encode(
            200,
            &[("content-length", "42")],
            BodyLength::Empty,
            &mut head_request,
        );
        assert_eq!(framing, Framing::None);
        assert!(text.contains("content-length: 42\r\n"), "{text}");
        let (text, _) = encode(200, &[], BodyLength::Empty, &mut exchange());
        assert!(text.contains("content-length: 0\r\n"), "{text}");
    }

    #[test]
    fn connection_header_follows_keep_alive() {
        let mut closing = Exchange {
            keep_alive: false,
            ..exchange()
        };
        let (text, _) = encode(200, &[], BodyLength::Empty, &mut closing);
        assert!(text.contains("connection: close\r\n"));
        let mut handler_closes = exchange();
        let (text, _) = encode(
            200,
            &[("connection", "close")],
            BodyLength::Empty,
            &mut handler_closes,
        );
        assert!(!handler_closes.keep_alive);
        assert_eq!(text.matches("connection").count(), 1, "{text}");
        let mut old = Exchange {
            http10: true,
            ..exchange()
        };
        let (text, _) = encode(200, &[], BodyLength::Exact(1), &mut old);
        assert!(text.contains("connection: keep-alive\r\n"));
    }

    #[test]
    fn chunk_lines_are_hexadecimal() {
        assert_eq!(ChunkLine::new(0).as_bytes(), b"0\r\n");
        assert_eq!(ChunkLine::new(255).as_bytes(), b"ff\r\n");
        assert_eq!(ChunkLine::new(0x1234).as_bytes(), b"1234\r\n");
        let mut line = ChunkLine::new(16);
        line.advance(2);
        assert_eq!(line.as_bytes(), b"\r\n");
        assert!(ChunkLine::empty().as_bytes().is_empty());
    }
}
