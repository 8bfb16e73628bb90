//! Stream offsets: the opaque position tokens a client reads from (spec §8).
//!
//! An offset names a position *between* bytes of a stream. We mint them as
//! `{generation:016}_{position:016}` (zero-padded decimal), the format both
//! reference servers use and the conformance suite hard-codes for the start of
//! a stream. The generation field is always zero today; keeping it lets a
//! future compaction scheme move positions without breaking ordering.

use std::fmt;

/// The width of each zero-padded decimal field of a minted offset.
const FIELD_WIDTH: usize = 16;

/// The largest position that still formats within `FIELD_WIDTH` digits, so
/// that byte-wise comparison of minted offsets equals numeric comparison.
pub const MAX_POSITION: u64 = 9_999_999_999_999_999;

/// A concrete position in a stream, in bytes from its logical start.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Offset(pub u64);

impl Offset {
    /// The beginning of every stream.
    pub const ZERO: Offset = Offset(0);

    /// The byte position this offset names.
    pub fn position(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Offset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.encode().as_str())
    }
}

impl Offset {
    /// The minted text of this offset in a stack buffer: every response
    /// carries one, and `format!` with padding cost more than the rest of
    /// the header work of an append.
    pub fn encode(self) -> OffsetText {
        // The generation field (always zero) and its separator.
        let mut bytes = [b'0'; OffsetText::CAPACITY];
        bytes[FIELD_WIDTH] = b'_';
        let mut digits = [0u8; 20];
        let mut start = digits.len();
        let mut rest = self.0;
        loop {
            start -= 1;
            // `rest % 10` is below 10, so the cast cannot truncate.
            digits[start] = b'0' + (rest % 10) as u8;
            rest /= 10;
            if rest == 0 {
                break;
            }
        }
        let count = digits.len() - start;
        // Zero-padded to FIELD_WIDTH digits, wider only past MAX_POSITION.
        let width = count.max(FIELD_WIDTH);
        let len = FIELD_WIDTH + 1 + width;
        bytes[len - count..len].copy_from_slice(&digits[start..]);
        OffsetText { bytes, len }
    }
}

/// The text of an [`Offset`], formatted without allocating.
#[derive(Clone, Copy, Debug)]
pub struct OffsetText {
    bytes: [u8; OffsetText::CAPACITY],
    len: usize,
}

impl OffsetText {
    /// The generation field, `_`, and up to 20 digits of a `u64`.
    const CAPACITY: usize = FIELD_WIDTH + 1 + 20;

    /// The offset as text.
    pub fn as_str(&self) -> &str {
        // Only ASCII digits and `_` are ever written.
        std::str::from_utf8(self.as_bytes()).unwrap_or_default()
    }

    /// The offset as bytes, for header values.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Where a read starts, as requested by the client.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadFrom {
    /// `-1` or no `offset` parameter: the beginning of the stream.
    Start,
    /// `now`: the current tail.
    Now,
    /// A concrete position. Positions from a later generation than ours
    /// parse to `Beyond`, which reads like the tail.
    At(Offset),
    /// A syntactically valid offset that lies after anything we minted.
    Beyond,
}

/// Why an offset string was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum OffsetError {
    /// The parameter was present but empty.
    #[error("offset must not be empty")]
    Empty,
    /// The value is not `-1`, `now` or `<digits>_<digits>`.
    #[error("offset must be -1, now, or an offset returned by the server")]
    Malformed,
}

/// Parses an offset as sent by a client (query parameter or fork header).
///
/// # Errors
/// [`OffsetError`] when the value is empty or not a recognised form.
pub fn parse_read_from(raw: &str) -> Result<ReadFrom, OffsetError> {
    match raw {
        "" => Err(OffsetError::Empty),
        "-1" => Ok(ReadFrom::Start),
        "now" => Ok(ReadFrom::Now),
        _ => parse_concrete(raw),
    }
}

/// Parses a server-minted offset (`<digits>_<digits>`), rejecting sentinels.
///
/// # Errors
/// [`OffsetError`] when the value is not of that form.
pub fn parse_concrete(raw: &str) -> Result<ReadFrom, OffsetError> {
    let (generation, position) = raw.split_once('_').ok_or(OffsetError::Malformed)?;
    let generation = parse_field(generation)?;
    let position = parse_field(position)?;
    if generation > 0 || position > MAX_POSITION {
        return Ok(ReadFrom::Beyond);
    }
    Ok(ReadFrom::At(Offset(position)))
}

/// Parses one decimal field; digits only, bounded length so it cannot overflow.
fn parse_field(field: &str) -> Result<u64, OffsetError> {
    if field.is_empty() || field.len() > 20 || !field.bytes().all(|b| b.is_ascii_digit()) {
        return Err(OffsetError::Malformed);
    }
    field.parse::<u64>().map_err(|_| OffsetError::Malformed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encode_matches_padded_formatting() {
        for position in [
            0,
            1,
            9,
            10,
            12_345,
            MAX_POSITION,
            MAX_POSITION + 1,
            u64::MAX,
        ] {
            assert_eq!(
                Offset(position).encode().as_str(),
                format!("{:016}_{:016}", 0, position)
            );
        }
    }

    #[test]
    fn zero_matches_the_suites_literal() {
        assert_eq!(
            Offset::ZERO.to_string(),
            "0000000000000000_0000000000000000"
        );
    }

    #[test]
    fn sentinels_and_garbage() {
        assert_eq!(parse_read_from("-1"), Ok(ReadFrom::Start));
        assert_eq!(parse_read_from("now"), Ok(ReadFrom::Now));
        assert_eq!(parse_read_from(""), Err(OffsetError::Empty));
        for bad in [
            "abc", "1_", "_1", "1_2_3", "-2", "1 _2", "../x", "1,2", "a_b", "1_2\n",
        ] {
            assert_eq!(parse_read_from(bad), Err(OffsetError::Malformed), "{bad:?}");
        }
        assert_eq!(
            parse_read_from("0000000000000001_0000000000000000"),
            Ok(ReadFrom::Beyond)
        );
        assert_eq!(parse_read_from("0_99999999999999999"), Ok(ReadFrom::Beyond));
        assert_eq!(
            parse_read_from("99999999999999999999_0"),
            Err(OffsetError::Malformed)
        );
    }

    proptest! {
        #[test]
        fn encode_matches_format_for_any_position(pos in any::<u64>()) {
            let text = Offset(pos).encode();
            prop_assert_eq!(text.as_str(), format!("{:016}_{:016}", 0, pos));
        }

        #[test]
        fn round_trips(pos in 0..=MAX_POSITION) {
            let text = Offset(pos).to_string();
            prop_assert_eq!(parse_read_from(&text), Ok(ReadFrom::At(Offset(pos))));
        }

        #[test]
        fn string_order_is_numeric_order(a in 0..=MAX_POSITION, b in 0..=MAX_POSITION) {
            let (sa, sb) = (Offset(a).to_string(), Offset(b).to_string());
            prop_assert_eq!(sa.cmp(&sb), a.cmp(&b));
        }

        #[test]
        fn never_panics(raw in ".{0,64}") {
            let _ = parse_read_from(&raw);
        }
    }
}
