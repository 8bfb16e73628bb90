//! Request bodies: the decoder of `Content-Length` and chunked framing
//! (strict: CRLF line ends, hexadecimal sizes of at most 16 digits, chunk
//! extensions and trailers bounded and ignored), and [`IncomingBody`], the
//! body a handler reads while the connection decodes it from the socket.

use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use bytes::{Buf, Bytes, BytesMut};
use http_body::{Frame, SizeHint};

/// Longest chunk-size line (size and extensions) accepted.
const MAX_CHUNK_LINE: usize = 4096;
/// Largest trailer section accepted (its fields are ignored).
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a request body could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum BodyError {
    /// The chunked framing is broken.
    #[error("malformed chunked body: {0}")]
    Chunked(&'static str),
    /// The client closed the connection before the body's end.
    #[error("the connection closed before the request body ended")]
    Incomplete,
}

/// What [`Decoder::decode`] found in the buffer.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Decoded {
    /// Body bytes.
    Data(Bytes),
    /// The body is complete.
    End,
    /// More input is needed.
    More,
}

/// The framing state of the request body being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Decoder {
    /// This many bytes are still to come.
    Length(u64),
    /// Chunked framing, at this point.
    Chunked(Chunked),
    /// The body is complete (or there was none).
    Done,
}

/// Where the chunked decoder stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Chunked {
    /// Reading the hexadecimal chunk size.
    Size { value: u64, digits: u8 },
    /// After the size: optional whitespace and extensions up to CR.
    Extension {
        value: u64,
        length: usize,
        semicolon: bool,
    },
    /// Expecting the LF of a chunk-size line.
    SizeLf { value: u64 },
    /// Inside chunk data.
    Data { remaining: u64 },
    /// Expecting the CR after chunk data.
    DataCr,
    /// Expecting the LF after chunk data.
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart { total: usize },
    /// Inside a trailer field line.
    TrailerLine { total: usize },
    /// Expecting the LF of a trailer line; `last` when the line was empty.
    TrailerLf { total: usize, last: bool },
}

impl Decoder {
    /// The decoder for a body of this framing.
    pub(super) fn chunked() -> Self {
        Decoder::Chunked(Chunked::Size {
            value: 0,
            digits: 0,
        })
    }

    /// Whether the body is complete.
    pub(super) fn is_done(self) -> bool {
        self == Decoder::Done
    }

    /// Takes framing and the next piece of data off the front of `buffer`.
    ///
    /// # Errors
    /// When the chunked framing is malformed.
    pub(super) fn decode(&mut self, buffer: &mut BytesMut) -> Result<Decoded, BodyError> {
        match self {
            Decoder::Done => Ok(Decoded::End),
            Decoder::Length(remaining) => {
                if buffer.is_empty() {
                    return Ok(Decoded::More);
                }
                let take = usize::try_from(*remaining)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                let data = buffer.split_to(take).freeze();
                *remaining -= take as u64;
                if *remaining == 0 {
                    *self = Decoder::Done;
                }
                Ok(Decoded::Data(data))
            }
            Decoder::Chunked(state) => {
                let decoded = decode_chunked(state, buffer)?;
                if decoded == Decoded::End {
                    *self = Decoder::Done;
                }
                Ok(decoded)
            }
        }
    }
}

fn hex_value(byte: u8) -> Option<u64> {
    match byte {
        b'0'..=b'9' => Some(u64::from(byte - b'0')),
        b'a'..=b'f' => Some(u64::from(byte - b'a' + 10)),
        b'A'..=b'F' => Some(u64::from(byte - b'A' + 10)),
        _ => None,
    }
}

/// A byte allowed inside a chunk extension or a trailer line: visible
/// ASCII, space, tab and obs-text; no other control characters.
fn is_field_byte(byte: u8) -> bool {
    byte == b'\t' || byte == b' ' || (0x21..=0x7e).contains(&byte) || byte >= 0x80
}

fn decode_chunked(state: &mut Chunked, buffer: &mut BytesMut) -> Result<Decoded, BodyError> {
    use Chunked as S;
    loop {
        let Some(&byte) = buffer.first() else {
            return Ok(Decoded::More);
        };
        let next = match *state {
            S::Data { remaining } => {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buffer.len());
                let data = buffer.split_to(take).freeze();
                let remaining = remaining - take as u64;
                *state = if remaining == 0 {
                    S::DataCr
                } else {
                    S::Data { remaining }
                };
                return Ok(Decoded::Data(data));
            }
            S::Size { value, digits } => match (hex_value(byte), byte) {
                (Some(digit), _) if digits < 16 => S::Size {
                    value: value << 4 | digit,
                    digits: digits + 1,
                },
                (Some(_), _) => return Err(BodyError::Chunked("chunk size too long")),
                (None, b'\r') if digits > 0 => S::SizeLf { value },
                (None, b';' | b' ' | b'\t') if digits > 0 => S::Extension {
                    value,
                    length: 1,
                    semicolon: byte == b';',
                },
                _ => return Err(BodyError::Chunked("invalid chunk size")),
            },
            S::Extension {
                value,
                length,
                semicolon,
            } => match byte {
                b'\r' if semicolon => S::SizeLf { value },
                b'\r' => return Err(BodyError::Chunked("whitespace after a chunk size")),
                _ if !is_field_byte(byte) => {
                    return Err(BodyError::Chunked("invalid chunk extension"));
                }
                _ if length >= MAX_CHUNK_LINE => {
                    return Err(BodyError::Chunked("chunk extension too long"));
                }
                _ => S::Extension {
                    value,
                    length: length + 1,
                    semicolon: semicolon || byte == b';',
                },
            },
            S::SizeLf { value } => match byte {
                b'\n' if value == 0 => S::TrailerStart { total: 0 },
                b'\n' => S::Data { remaining: value },
                _ => return Err(BodyError::Chunked("a chunk-size line without CRLF")),
            },
            S::DataCr if byte == b'\r' => S::DataLf,
            S::DataLf if byte == b'\n' => S::Size {
                value: 0,
                digits: 0,
            },
            S::DataCr | S::DataLf => {
                return Err(BodyError::Chunked("chunk data not followed by CRLF"));
            }
            S::TrailerStart { total } => match byte {
                b'\r' => S::TrailerLf { total, last: true },
                b' ' | b'\t' => return Err(BodyError::Chunked("a folded trailer line")),
                _ if is_field_byte(byte) => S::TrailerLine { total: total + 1 },
                _ => return Err(BodyError::Chunked("invalid trailer line")),
            },
            S::TrailerLine { total } => match byte {
                _ if total >= MAX_TRAILERS => {
                    return Err(BodyError::Chunked("trailers too large"));
                }
                b'\r' => S::TrailerLf { total, last: false },
                _ if is_field_byte(byte) => S::TrailerLine { total: total + 1 },
                _ => return Err(BodyError::Chunked("invalid trailer line")),
            },
            S::TrailerLf { total, last } => match byte {
                b'\n' if last => {
                    buffer.advance(1);
                    return Ok(Decoded::End);
                }
                b'\n' => S::TrailerStart { total: total + 2 },
                _ => return Err(BodyError::Chunked("a trailer line without CRLF")),
            },
        };
        buffer.advance(1);
        *state = next;
    }
}

/// A request body the connection fills as the handler asks for it.
///
/// The handler's reads and the connection's decoding meet in one slot
/// holding at most one piece of data: the connection decodes only what is
/// asked for, so a handler that stops reading stops the reading from the
/// socket too.
pub(crate) struct IncomingBody {
    slot: Arc<Slot>,
    /// Bytes still to come when the length is known.
    remaining: Option<u64>,
}

/// The connection's end of an [`IncomingBody`].
pub(super) struct BodyTap {
    slot: Arc<Slot>,
}

#[derive(Default)]
struct Slot(Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    data: Option<Bytes>,
    end: bool,
    error: Option<BodyError>,
    /// The reader waits for data.
    reader: Option<Waker>,
    /// The connection, to be woken when the reader starts waiting.
    driver: Option<Waker>,
}

impl Slot {
    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl IncomingBody {
    /// A body of `length` bytes (`None`: chunked) and the connection's tap.
    pub(super) fn channel(length: Option<u64>) -> (Self, BodyTap) {
        let slot = Arc::new(Slot::default());
        (
            Self {
                slot: Arc::clone(&slot),
                remaining: length,
            },
            BodyTap { slot },
        )
    }
}

impl http_body::Body for IncomingBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let mut state = self.slot.lock();
        if let Some(data) = state.data.take() {
            drop(state);
            if let Some(remaining) = &mut self.remaining {
                *remaining = remaining.saturating_sub(data.len() as u64);
            }
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        if let Some(error) = state.error {
            return Poll::Ready(Some(Err(error)));
        }
        if state.end || self.remaining == Some(0) {
            return Poll::Ready(None);
        }
        let newly_waiting = state.reader.is_none();
        if !state
            .reader
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.reader = Some(cx.waker().clone());
        }
        // Read on another task than the connection's: wake the connection.
        let driver = state
            .driver
            .as_ref()
            .filter(|driver| newly_waiting && !driver.will_wake(cx.waker()))
            .cloned();
        drop(state);
        if let Some(driver) = driver {
            driver.wake();
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == Some(0) || {
            let state = self.slot.lock();
            state.end && state.data.is_none()
        }
    }

    fn size_hint(&self) -> SizeHint {
        self.remaining
            .map_or_else(SizeHint::default, SizeHint::with_exact)
    }
}

impl BodyTap {
    /// Whether the reader waits for data; otherwise remembers to wake
    /// `cx` when it starts waiting.
    pub(super) fn wanted(&self, cx: &Context<'_>) -> bool {
        let mut state = self.slot.lock();
        if state.reader.is_some() && state.data.is_none() {
            return true;
        }
        if !state
            .driver
            .as_ref()
            .is_some_and(|waker| waker.will_wake(cx.waker()))
        {
            state.driver = Some(cx.waker().clone());
        }
        false
    }

    /// Whether the reader is gone (the handler dropped the body).
    pub(super) fn abandoned(&self) -> bool {
        Arc::strong_count(&self.slot) == 1
    }

    /// Hands `data` to the reader.
    pub(super) fn deliver(&self, data: Bytes, cx: &Context<'_>) {
        let mut state = self.slot.lock();
        state.data = Some(data);
        Self::wake_reader(&mut state, cx);
    }

    /// Tells the reader the body is complete.
    pub(super) fn finish(&self, cx: &Context<'_>) {
        let mut state = self.slot.lock();
        state.end = true;
        Self::wake_reader(&mut state, cx);
    }

    /// Tells the reader the body failed.
    pub(super) fn fail(&self, error: BodyError, cx: &Context<'_>) {
        let mut state = self.slot.lock();
        state.error = Some(error);
        Self::wake_reader(&mut state, cx);
    }

    /// Wakes a reader on another task; the connection's own task polls its
    /// handler again anyway.
    fn wake_reader(state: &mut SlotState, cx: &Context<'_>) {
        if let Some(reader) = state.reader.take()
            && !reader.will_wake(cx.waker())
        {
            reader.wake();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes all of `raw` (fed in pieces of `step` bytes) into the body.
    fn decode_all(raw: &[u8], step: usize) -> Result<(Vec<u8>, usize), BodyError> {
        let mut decoder = Decoder::chunked();
        let mut buffer = BytesMut::new();
        let mut body = Vec::new();
        let mut fed = 0;
        loop {
            match decoder.decode(&mut buffer)? {
                Decoded::Data(data) => body.extend_from_slice(&data),
                Decoded::End => return Ok((body, buffer.len() + raw.len() - fed)),
                Decoded::More => {
                    if fed == raw.len() {
                        return Err(BodyError::Incomplete);
                    }
                    let next = (fed + step).min(raw.len());
                    buffer.extend_from_slice(&raw[fed..next]);
                    fed = next;
                }
            }
        }
    }

    #[test]
    fn chunked_bodies_decode_in_any_pieces() {
        let raw = b"5\r\nhello\r\n1;ext=\"a b\"\r\n \r\nA\r\n0123456789\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in [1, 2, 3, 7, raw.len()] {
            let (body, left) = decode_all(raw, step).expect("valid");
            assert_eq!(body, b"hello 0123456789", "step {step}");
            assert_eq!(left, 4, "step {step}");
        }
    }

    #[test]
    fn malformed_chunked_bodies_fail() {
        for raw in [
            &b"g\r\nx\r\n0\r\n\r\n"[..],
            b"\r\n",
            b"5\nhello\r\n0\r\n\r\n",
            b"5\r\nhelloXX0\r\n\r\n",
            b"5\r\nhello\n0\r\n\r\n",
            b"5 \r\nhello\r\n0\r\n\r\n",
            b"+5\r\nhello\r\n0\r\n\r\n",
            b"0x5\r\nhello\r\n0\r\n\r\n",
            b"10000000000000000\r\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n\r\n",
            b"0\r\n fold\r\n\r\n",
            b"1;a\x00b\r\nx\r\n0\r\n\r\n",
        ] {
            assert!(
                matches!(decode_all(raw, 1), Err(BodyError::Chunked(_))),
                "{:?}",
                String::from_utf8_lossy(raw)
            );
        }
    }

    #[test]
    fn sixteen_hex_digits_are_the_most() {
        let raw = b"000000000000000F\r\n0123456789abcde\r\n0\r\n\r\n";
        assert_eq!(decode_all(raw, 4).expect("valid").0, b"0123456789abcde");
    }

    #[test]
    fn length_bodies_stop_at_their_length() {
        let mut decoder = Decoder::Length(3);
        let mut buffer = BytesMut::from(&b"abcdef"[..]);
        assert_eq!(
            decoder.decode(&mut buffer),
            Ok(Decoded::Data(Bytes::from_static(b"abc")))
        );
        assert!(decoder.is_done());
        assert_eq!(&buffer[..], b"def");
    }
}
