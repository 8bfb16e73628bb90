//! Stream patterns of subscriptions (spec §6): `/`-separated segments where
//! `*` matches exactly one segment, `**` any number of segments (zero or
//! more), and a `*` inside a segment any run of characters within it.

use super::error::SubscriptionError;
use crate::protocol::glob::PathGlob;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Most segments in a pattern.
pub const MAX_PATTERN_SEGMENTS: usize = 64;

/// A parsed, validated pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    glob: PathGlob,
}

impl Pattern {
    /// Parses `raw`.
    ///
    /// # Errors
    /// [`SubscriptionError::InvalidPattern`] when it is empty, too long,
    /// starts or ends with `/`, has an empty segment, or puts `**` inside a
    /// segment.
    pub fn parse(raw: &str) -> Result<Self, SubscriptionError> {
        let invalid = |why: &str| SubscriptionError::InvalidPattern(format!("{raw:?}: {why}"));
        if raw.len() > MAX_PATTERN_BYTES {
            return Err(invalid("it is too long"));
        }
        let glob = PathGlob::parse(raw).map_err(|error| invalid(&error.to_string()))?;
        if glob.segment_count() > MAX_PATTERN_SEGMENTS {
            return Err(invalid("it has too many segments"));
        }
        Ok(Self { glob })
    }

    /// Whether the stream name `name` (relative to the stream root) matches.
    pub fn matches(&self, name: &str) -> bool {
        self.glob.matches(name)
    }

    /// The glob, for checks such as access grants covering the pattern.
    pub fn glob(&self) -> &PathGlob {
        &self.glob
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The matching rules themselves are tested with `PathGlob`.
    #[test]
    fn patterns_match_stream_names() {
        let pattern = Pattern::parse("events/**/user-*").expect("valid");
        assert!(pattern.matches("events/user-1"));
        assert!(pattern.matches("events/a/b/user-1"));
        assert!(!pattern.matches("events/a/admin"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        let long = "x/".repeat(100);
        let too_many = vec!["x"; MAX_PATTERN_SEGMENTS + 1].join("/");
        let too_long = "x".repeat(MAX_PATTERN_BYTES + 1);
        for bad in [
            "",
            "/a",
            "a/",
            "a//b",
            "a**/b",
            long.as_str(),
            &too_many,
            &too_long,
        ] {
            assert!(
                matches!(
                    Pattern::parse(bad),
                    Err(SubscriptionError::InvalidPattern(_))
                ),
                "{bad:?}"
            );
        }
    }
}
