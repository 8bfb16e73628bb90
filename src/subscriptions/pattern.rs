//! Stream patterns of subscriptions (spec §6): `/`-separated segments where
//! `*` matches exactly one segment, `**` any number of segments (zero or
//! more), and a `*` inside a segment any run of characters within it.

use super::error::SubscriptionError;

/// Longest pattern, in bytes.
pub const MAX_PATTERN_BYTES: usize = 1024;
/// Most segments in a pattern.
pub const MAX_PATTERN_SEGMENTS: usize = 64;

/// A parsed, validated pattern.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Pattern {
    segments: Vec<Segment>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`.
    Any,
    /// A segment with at least one `*` (a lone `*` included).
    Glob(String),
    /// A segment matched literally.
    Literal(String),
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
        if raw.is_empty() {
            return Err(invalid("it is empty"));
        }
        if raw.len() > MAX_PATTERN_BYTES {
            return Err(invalid("it is too long"));
        }
        let mut segments = Vec::new();
        for part in raw.split('/') {
            if part.is_empty() {
                return Err(invalid("it has an empty segment"));
            }
            let segment = if part == "**" {
                Segment::Any
            } else if part.contains("**") {
                return Err(invalid("`**` must be a whole segment"));
            } else if part.contains('*') {
                Segment::Glob(part.to_owned())
            } else {
                Segment::Literal(part.to_owned())
            };
            segments.push(segment);
        }
        if segments.len() > MAX_PATTERN_SEGMENTS {
            return Err(invalid("it has too many segments"));
        }
        Ok(Self { segments })
    }

    /// Whether the stream name `name` (relative to the stream root) matches.
    pub fn matches(&self, name: &str) -> bool {
        let parts: Vec<&str> = name.split('/').collect();
        match_from(&self.segments, &parts)
    }
}

fn match_from(segments: &[Segment], parts: &[&str]) -> bool {
    match segments.split_first() {
        None => parts.is_empty(),
        Some((Segment::Any, rest)) => {
            (0..=parts.len()).any(|skip| match_from(rest, &parts[skip..]))
        }
        Some((segment, rest)) => match parts.split_first() {
            Some((part, parts_rest)) => {
                let ok = match segment {
                    Segment::Literal(literal) => literal == part,
                    Segment::Glob(glob) => glob_matches(glob.as_bytes(), part.as_bytes()),
                    Segment::Any => false,
                };
                ok && match_from(rest, parts_rest)
            }
            None => false,
        },
    }
}

/// `*`-only wildcard match within one segment (iterative, linear time).
fn glob_matches(glob: &[u8], text: &[u8]) -> bool {
    let (mut g, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if g < glob.len() && glob[g] == b'*' {
            star = Some((g, t));
            g += 1;
        } else if g < glob.len() && glob[g] == text[t] {
            g += 1;
            t += 1;
        } else if let Some((sg, st)) = star {
            g = sg + 1;
            t = st + 1;
            star = Some((sg, st + 1));
        } else {
            return false;
        }
    }
    glob[g..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(pattern: &str, name: &str) -> bool {
        Pattern::parse(pattern).expect("valid").matches(name)
    }

    #[test]
    fn one_star_is_one_segment() {
        assert!(m("events/*", "events/a"));
        assert!(!m("events/*", "events/a/b"));
        assert!(!m("events/*", "events"));
        assert!(!m("events/*", "other/a"));
        assert!(m("*/x", "a/x"));
    }

    #[test]
    fn double_star_is_any_number_of_segments() {
        assert!(m("events/**", "events/a"));
        assert!(m("events/**", "events/a/b/c"));
        assert!(m("events/**", "events"));
        assert!(m("**", "anything/at/all"));
        assert!(m("a/**/z", "a/z"));
        assert!(m("a/**/z", "a/b/c/z"));
        assert!(!m("a/**/z", "a/b/c"));
    }

    #[test]
    fn stars_inside_a_segment() {
        assert!(m("events/user-*", "events/user-42"));
        assert!(!m("events/user-*", "events/admin-1"));
        assert!(m("e*s/*", "events/x"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
    }

    #[test]
    fn literals_match_exactly() {
        assert!(m("events/a", "events/a"));
        assert!(!m("events/a", "events/ab"));
    }

    #[test]
    fn bad_patterns_are_refused() {
        let long = "x/".repeat(100);
        for bad in ["", "/a", "a/", "a//b", "a**/b", long.as_str()] {
            assert!(Pattern::parse(bad).is_err(), "{bad:?}");
        }
    }
}
