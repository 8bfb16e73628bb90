//! Parsing of the protocol's request headers (spec §5), strict and panic-free.
//!
//! Every function here takes raw header bytes from the network and either
//! returns a typed value or a [`HeaderError`] naming the header, so the HTTP
//! layer can answer `400` with a precise reason.

use std::borrow::Cow;

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Largest integer the protocol allows for producer epochs and sequences
/// (2^53 − 1, the largest integer a JavaScript client can represent exactly).
pub const MAX_PRODUCER_NUMBER: u64 = (1 << 53) - 1;

/// Largest accepted `Stream-TTL`, in seconds (100 years). Larger values could
/// overflow deadline arithmetic and serve no operator purpose.
pub const MAX_TTL_SECS: u64 = 100 * 365 * 24 * 60 * 60;

/// A request header that could not be accepted.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {header} header: {reason}")]
pub struct HeaderError {
    /// The header's canonical name.
    pub header: &'static str,
    /// Why the value was refused.
    pub reason: &'static str,
}

impl HeaderError {
    fn new(header: &'static str, reason: &'static str) -> Self {
        Self { header, reason }
    }
}

/// Interprets a header's bytes as visible ASCII/UTF-8 text.
///
/// # Errors
/// When the value is not valid UTF-8.
pub fn text<'a>(header: &'static str, raw: &'a [u8]) -> Result<&'a str, HeaderError> {
    std::str::from_utf8(raw).map_err(|_| HeaderError::new(header, "value is not valid UTF-8"))
}

/// Parses a strictly formatted non-negative decimal (`0` or no leading zero).
fn strict_decimal(header: &'static str, raw: &str, max: u64) -> Result<u64, HeaderError> {
    let digits_ok = !raw.is_empty()
        && raw.bytes().all(|b| b.is_ascii_digit())
        && (raw == "0" || !raw.starts_with('0'));
    if !digits_ok {
        return Err(HeaderError::new(
            header,
            "expected a non-negative integer without sign, leading zeros or fraction",
        ));
    }
    match raw.parse::<u64>() {
        Ok(value) if value <= max => Ok(value),
        _ => Err(HeaderError::new(header, "value is too large")),
    }
}

/// Parses `Stream-TTL` (seconds): `^(0|[1-9][0-9]*)$`, at most [`MAX_TTL_SECS`].
///
/// # Errors
/// On any other syntax or an out-of-range value.
pub fn ttl(raw: &[u8]) -> Result<u64, HeaderError> {
    strict_decimal("Stream-TTL", text("Stream-TTL", raw)?, MAX_TTL_SECS)
}

/// Parses `Stream-Expires-At` as an RFC 3339 instant.
///
/// # Errors
/// When the value is not RFC 3339.
pub fn expires_at(raw: &[u8]) -> Result<OffsetDateTime, HeaderError> {
    let value = text("Stream-Expires-At", raw)?;
    OffsetDateTime::parse(value.trim(), &Rfc3339)
        .map_err(|_| HeaderError::new("Stream-Expires-At", "expected an RFC 3339 timestamp"))
}

/// Formats an instant the way we echo `Stream-Expires-At`.
pub fn format_instant(at: OffsetDateTime) -> String {
    at.format(&Rfc3339)
        .unwrap_or_else(|_| at.unix_timestamp().to_string())
}

/// `Stream-Closed` counts only when its value is `true` (ASCII case-insensitive);
/// any other value is treated as absent (spec §5.4).
pub fn is_true(raw: &[u8]) -> bool {
    raw.trim_ascii().eq_ignore_ascii_case(b"true")
}

/// The idempotent-producer triple of an append (spec §5.7).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProducerHeaders {
    /// `Producer-Id`: a non-empty opaque string.
    pub id: String,
    /// `Producer-Epoch`.
    pub epoch: u64,
    /// `Producer-Seq`.
    pub seq: u64,
}

/// Parses the producer triple; all three headers must be present or none.
///
/// # Errors
/// When only some are present, the id is empty, or a number is malformed.
pub fn producer(
    id: Option<&[u8]>,
    epoch: Option<&[u8]>,
    seq: Option<&[u8]>,
) -> Result<Option<ProducerHeaders>, HeaderError> {
    match (id, epoch, seq) {
        (None, None, None) => Ok(None),
        (Some(id), Some(epoch), Some(seq)) => {
            let id = text("Producer-Id", id)?;
            if id.is_empty() {
                return Err(HeaderError::new("Producer-Id", "must not be empty"));
            }
            let epoch = producer_number("Producer-Epoch", epoch)?;
            let seq = producer_number("Producer-Seq", seq)?;
            Ok(Some(ProducerHeaders {
                id: id.to_owned(),
                epoch,
                seq,
            }))
        }
        _ => Err(HeaderError::new(
            "Producer-Id",
            "Producer-Id, Producer-Epoch and Producer-Seq must be sent together",
        )),
    }
}

fn producer_number(header: &'static str, raw: &[u8]) -> Result<u64, HeaderError> {
    let value = text(header, raw)?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(HeaderError::new(header, "expected a non-negative integer"));
    }
    // Leading zeros are harmless here; strip them so a long run of zeros
    // cannot be mistaken for an overflow.
    let significant = value.trim_start_matches('0');
    if significant.len() > 16 {
        return Err(HeaderError::new(header, "value exceeds 2^53-1"));
    }
    let number = if significant.is_empty() {
        0
    } else {
        significant.parse::<u64>().unwrap_or(u64::MAX)
    };
    if number > MAX_PRODUCER_NUMBER {
        return Err(HeaderError::new(header, "value exceeds 2^53-1"));
    }
    Ok(number)
}

/// Parses `Stream-Fork-Sub-Offset`: a non-negative integer.
///
/// # Errors
/// When malformed or out of range.
pub fn sub_offset(raw: &[u8]) -> Result<u64, HeaderError> {
    let value = text("Stream-Fork-Sub-Offset", raw)?;
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) || value.len() > 19 {
        return Err(HeaderError::new(
            "Stream-Fork-Sub-Offset",
            "expected a non-negative integer",
        ));
    }
    value
        .parse::<u64>()
        .map_err(|_| HeaderError::new("Stream-Fork-Sub-Offset", "expected a non-negative integer"))
}

/// A stream's content type, kept verbatim for echoing and normalised for
/// comparison (media type only, lower-cased, parameters dropped). The
/// common values borrow a constant: an append names its content type on
/// every request, and two allocations each were a twentieth of its CPU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContentType {
    /// The value as the creator sent it.
    pub raw: Cow<'static, str>,
    /// Lower-cased media type without parameters.
    media: Cow<'static, str>,
}

/// The content type of a stream created without one.
pub const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

/// Values sent often enough to be kept without an allocation; each is its
/// own lower-cased media type.
const COMMON_TYPES: [&str; 4] = [
    DEFAULT_CONTENT_TYPE,
    "application/json",
    "text/plain",
    "application/x-ndjson",
];

impl ContentType {
    /// Builds from a header value.
    pub fn new(raw: &str) -> Self {
        let raw = raw.trim();
        if let Some(common) = COMMON_TYPES.iter().find(|common| **common == raw) {
            return Self {
                raw: Cow::Borrowed(common),
                media: Cow::Borrowed(common),
            };
        }
        let media = media_type(raw);
        let media = match COMMON_TYPES
            .iter()
            .find(|common| common.eq_ignore_ascii_case(media))
        {
            Some(common) => Cow::Borrowed(*common),
            None => Cow::Owned(media.to_ascii_lowercase()),
        };
        Self {
            raw: Cow::Owned(raw.to_owned()),
            media,
        }
    }

    /// The default for streams created without a `Content-Type`.
    pub fn default_binary() -> Self {
        Self::new(DEFAULT_CONTENT_TYPE)
    }

    /// Whether the stream is in JSON message mode (spec §7).
    pub fn is_json(&self) -> bool {
        self.media == "application/json"
    }

    /// Whether SSE payloads travel as text (else base64).
    pub fn is_text_like(&self) -> bool {
        self.media.starts_with("text/") || self.is_json()
    }

    /// Compares two types as the protocol does: media type only.
    pub fn matches(&self, other: &ContentType) -> bool {
        self.media == other.media
    }

    /// Parses a request's `Content-Type`; `None` or unusable values yield `None`.
    pub fn from_header(raw: Option<&[u8]>) -> Option<Self> {
        let raw = raw?;
        // The usual value, spelled exactly as a common type: nothing to
        // decode, trim or look up twice.
        if let Some(common) = COMMON_TYPES.iter().find(|common| common.as_bytes() == raw) {
            return Some(Self {
                raw: Cow::Borrowed(common),
                media: Cow::Borrowed(common),
            });
        }
        let value = std::str::from_utf8(raw).ok()?;
        // Checked before anything is allocated.
        let media = media_type(value.trim()).as_bytes();
        let slash = media.iter().position(|&b| b == b'/')?;
        (slash > 0 && slash + 1 < media.len()).then(|| Self::new(value))
    }
}

/// The media type of a `Content-Type` value: before any parameters, trimmed.
fn media_type(value: &str) -> &str {
    let end = value.bytes().position(|b| b == b';').unwrap_or(value.len());
    value[..end].trim()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ttl_syntax_is_strict() {
        assert_eq!(ttl(b"0"), Ok(0));
        assert_eq!(ttl(b"3600"), Ok(3600));
        for bad in [
            "+60",
            "00060",
            "60.5",
            "1e3",
            "-1",
            "abc",
            "",
            " 60",
            "18446744073709551615",
        ] {
            assert!(ttl(bad.as_bytes()).is_err(), "{bad:?}");
        }
        assert!(ttl(&[0xff, 0xfe]).is_err());
    }

    #[test]
    fn expires_at_accepts_rfc3339_forms() {
        assert!(expires_at(b"2030-01-01T00:00:00Z").is_ok());
        assert!(expires_at(b"2030-01-01T00:00:00+00:00").is_ok());
        assert!(expires_at(b"2030-01-01T00:00:00.123Z").is_ok());
        assert!(expires_at(b"tomorrow").is_err());
    }

    #[test]
    fn producer_triple() {
        assert_eq!(producer(None, None, None), Ok(None));
        assert!(producer(Some(b"p"), None, None).is_err());
        assert!(producer(Some(b""), Some(b"0"), Some(b"0")).is_err());
        for bad in ["1abc", "0xyz", "1e3", "-1", "", "9007199254740992"] {
            assert!(
                producer(Some(b"p"), Some(bad.as_bytes()), Some(b"0")).is_err(),
                "{bad}"
            );
        }
        let digits300 = "9".repeat(300);
        assert!(producer(Some(b"p"), Some(b"0"), Some(digits300.as_bytes())).is_err());
        let ok = producer(Some(b"p"), Some(b"9007199254740991"), Some(b"007"))
            .unwrap()
            .unwrap();
        assert_eq!((ok.epoch, ok.seq), (MAX_PRODUCER_NUMBER, 7));
    }

    #[test]
    fn content_type_normalisation() {
        let a = ContentType::new("text/plain;charset=UTF-8");
        let b = ContentType::new("TEXT/PLAIN");
        assert!(a.matches(&b));
        assert!(ContentType::new("application/json; charset=utf-8").is_json());
        assert!(!ContentType::default_binary().is_text_like());
        assert!(ContentType::from_header(Some(b"garbage")).is_none());
    }

    #[test]
    fn closed_flag() {
        assert!(is_true(b"true"));
        assert!(is_true(b"TRUE"));
        assert!(!is_true(b"false"));
        assert!(!is_true(b"yes"));
    }

    proptest! {
        #[test]
        fn producer_numbers_never_panic(raw in proptest::collection::vec(any::<u8>(), 0..400)) {
            let _ = producer(Some(b"p"), Some(&raw), Some(&raw));
            let _ = ttl(&raw);
            let _ = sub_offset(&raw);
            let _ = expires_at(&raw);
        }

        #[test]
        fn ttl_accepts_every_canonical_value(n in 0..=MAX_TTL_SECS) {
            prop_assert_eq!(ttl(n.to_string().as_bytes()), Ok(n));
        }
    }
}
