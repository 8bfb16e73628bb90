//! The CDN cursor of live reads (spec §8.3): time intervals that make
//! request-collapsing caches see a new URL at least every interval.

/// 2024-10-09T00:00:00Z, the protocol's cursor epoch, in Unix seconds.
const CURSOR_EPOCH_UNIX: u64 = 1_728_432_000;
/// Length of one cursor interval.
const INTERVAL_SECS: u64 = 20;

/// The interval number for a Unix time.
pub fn current_interval(now_unix_secs: u64) -> u64 {
    now_unix_secs.saturating_sub(CURSOR_EPOCH_UNIX) / INTERVAL_SECS
}

/// The cursor to return, given the client's echoed cursor.
///
/// If the client already holds the current interval (or a later one), the
/// answer must move strictly forward, by a random jitter of 1..=3600 seconds
/// expressed in intervals, so cached responses cannot loop.
pub fn next_cursor(now_unix_secs: u64, client: Option<&str>, jitter_secs: u64) -> u64 {
    let current = current_interval(now_unix_secs);
    match client.and_then(|c| c.parse::<u64>().ok()) {
        Some(echoed) if echoed >= current => {
            let steps = jitter_secs.clamp(1, 3600).div_ceil(INTERVAL_SECS).max(1);
            echoed.saturating_add(steps)
        }
        _ => current,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn fresh_clients_get_the_current_interval() {
        assert_eq!(next_cursor(CURSOR_EPOCH_UNIX + 45, None, 1), 2);
        assert_eq!(next_cursor(CURSOR_EPOCH_UNIX + 45, Some("junk"), 1), 2);
        assert_eq!(next_cursor(CURSOR_EPOCH_UNIX + 45, Some("1"), 1), 2);
    }

    proptest! {
        #[test]
        fn echoed_cursor_strictly_increases(now in CURSOR_EPOCH_UNIX..CURSOR_EPOCH_UNIX + 1_000_000_000, extra in 0u64..1000, jitter in 0u64..5000) {
            let echoed = current_interval(now) + extra;
            let next = next_cursor(now, Some(&echoed.to_string()), jitter);
            prop_assert!(next > echoed);
            prop_assert!(next <= echoed + 180);
        }
    }
}
