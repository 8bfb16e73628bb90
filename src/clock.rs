//! The wall clock in the units the server stores and sends: Unix
//! milliseconds (stream and subscription timestamps), Unix seconds (SSE
//! cursors, webhook signatures, certificate expiry) and RFC 3339 text.
//!
//! Durations and deadlines use `tokio::time` instead, so tests can pause
//! time; this module is only for instants that leave the process.

use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// Now, in Unix milliseconds.
pub(crate) fn unix_ms() -> i64 {
    to_unix_ms(OffsetDateTime::now_utc())
}

/// Now, in whole Unix seconds.
pub(crate) fn unix_secs() -> u64 {
    // Without a calendar date: every SSE delivery asks (for its cursor).
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// Now, in Unix seconds with a fraction.
pub(crate) fn unix_secs_f64() -> f64 {
    let now = OffsetDateTime::now_utc();
    now.unix_timestamp_nanos() as f64 / 1e9
}

/// `at` in Unix milliseconds (saturating).
pub(crate) fn to_unix_ms(at: OffsetDateTime) -> i64 {
    i64::try_from(at.unix_timestamp_nanos() / 1_000_000).unwrap_or(i64::MAX)
}

/// The instant `ms` Unix milliseconds name, if representable.
pub(crate) fn from_unix_ms(ms: i64) -> Option<OffsetDateTime> {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()
}

/// RFC 3339 text of a Unix-millisecond instant.
pub(crate) fn rfc3339_ms(ms: i64) -> Option<String> {
    from_unix_ms(ms)?.format(&Rfc3339).ok()
}

/// RFC 3339 text of a Unix-second instant.
pub(crate) fn rfc3339_secs(secs: i64) -> Option<String> {
    OffsetDateTime::from_unix_timestamp(secs)
        .ok()?
        .format(&Rfc3339)
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_round_trip_and_format() {
        let ms = 1_700_000_000_123;
        assert_eq!(from_unix_ms(ms).map(to_unix_ms), Some(ms));
        assert_eq!(rfc3339_ms(ms).as_deref(), Some("2023-11-14T22:13:20.123Z"));
        assert_eq!(
            rfc3339_secs(1_700_000_000).as_deref(),
            Some("2023-11-14T22:13:20Z")
        );
        assert_eq!(from_unix_ms(i64::MAX), None);
    }

    #[test]
    fn the_units_agree() {
        let (ms, secs, fractional) = (unix_ms(), unix_secs(), unix_secs_f64());
        assert!(ms / 1000 - i64::try_from(secs).expect("secs") <= 1);
        assert!((fractional - secs as f64).abs() < 2.0);
    }
}
