//! Path globs, shared by subscription patterns (spec §6) and access grants:
//! `/`-separated segments where `**` (a whole segment) matches any number
//! of segments, zero included; a lone `*` exactly one segment; a `*` inside
//! a segment any run of characters within that segment; anything else
//! itself, byte for byte (no percent-decoding: a path is compared in the
//! form the client sent, which is also the stream's identity).
//!
//! Matching and containment both use the greedy wildcard algorithm, once
//! over a segment's characters and once over the segments, so they take
//! time proportional to pattern × path at worst, whatever a hostile pattern
//! looks like.

use std::fmt;

/// Why a glob was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum GlobError {
    /// Nothing at all.
    #[error("it is empty")]
    Empty,
    /// `//`, or a `/` at the start or the end.
    #[error("it has an empty segment (a `/` at either end, or `//`)")]
    EmptySegment,
    /// `**` next to other characters in one segment.
    #[error("`**` must be a whole segment")]
    DoubleStarInSegment,
}

/// A parsed glob over `/`-separated paths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PathGlob {
    text: String,
    segments: Vec<Segment>,
}

/// One segment of a glob.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Segment {
    /// `**`: any number of segments.
    Any,
    /// A segment with at least one `*` (a lone `*` included).
    Glob(String),
    /// A segment matched literally.
    Literal(String),
}

impl PathGlob {
    /// Parses `raw` (without a leading `/`).
    ///
    /// # Errors
    /// [`GlobError`] when it is empty, has an empty segment, or puts `**`
    /// inside a segment.
    pub fn parse(raw: &str) -> Result<Self, GlobError> {
        if raw.is_empty() {
            return Err(GlobError::Empty);
        }
        let segments = raw
            .split('/')
            .map(|part| match part {
                "" => Err(GlobError::EmptySegment),
                "**" => Ok(Segment::Any),
                _ if part.contains("**") => Err(GlobError::DoubleStarInSegment),
                _ if part.contains('*') => Ok(Segment::Glob(part.to_owned())),
                _ => Ok(Segment::Literal(part.to_owned())),
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            text: raw.to_owned(),
            segments,
        })
    }

    /// How many segments the glob has.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    /// The glob as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether `path` (without a leading `/`) matches. Allocates nothing.
    pub fn matches(&self, path: &str) -> bool {
        wildcard_match(
            &self.segments,
            0,
            |at| next_segment(path, at),
            |segment| matches!(segment, Segment::Any),
            |segment, part| match segment {
                Segment::Literal(literal) => literal == part,
                Segment::Glob(glob) => segment_matches(glob, part),
                Segment::Any => false,
            },
        )
    }

    /// Whether every path `other` matches is also matched by `self`.
    ///
    /// Decided by matching `self` against `other`'s text, where `other`'s
    /// wildcards stand for themselves and only a wildcard of `self` of at
    /// least the same reach may take them: `**` takes any segments, a
    /// segment glob takes a segment glob it covers character by character
    /// (`*` taking `*`). That is sound (a `true` is always right) and, for
    /// these globs, exact over arbitrary paths; it can answer `false` for a
    /// containment that only holds because real paths are never empty (say
    /// `a/**` in `a/*/**`), which only ever refuses more.
    pub fn contains(&self, other: &PathGlob) -> bool {
        wildcard_match(
            &self.segments,
            0,
            |at| other.segments.get(at).map(|segment| (segment, at + 1)),
            |segment| matches!(segment, Segment::Any),
            |outer, inner| match (outer, *inner) {
                (Segment::Literal(outer), Segment::Literal(inner)) => outer == inner,
                // `*` in `inner` is a character only a `*` of `outer` matches:
                // `outer`'s literal characters are never `*`.
                (Segment::Glob(outer), Segment::Literal(inner) | Segment::Glob(inner)) => {
                    segment_matches(outer, inner)
                }
                _ => false,
            },
        )
    }
}

impl fmt::Display for PathGlob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// The segment of `path` starting at byte `at`, and where the next one
/// starts; `None` past the end.
fn next_segment(path: &str, at: usize) -> Option<(&str, usize)> {
    let rest = path.get(at..)?;
    let len = rest.find('/').unwrap_or(rest.len());
    Some((&rest[..len], at + len + 1))
}

/// `*`-only wildcard match within one segment.
fn segment_matches(glob: &str, text: &str) -> bool {
    let (glob, text) = (glob.as_bytes(), text.as_bytes());
    wildcard_match(
        glob,
        0,
        |at| text.get(at).map(|byte| (*byte, at + 1)),
        |element| *element == b'*',
        |element, byte| element == byte,
    )
}

/// The greedy wildcard algorithm over any sequence: elements of `pattern`
/// for which `is_star` holds match any run of items (zero or more), every
/// other element exactly one item it accepts (`one`). Items are read with
/// `next(position)`, from `start`. On a mismatch it only backtracks to the
/// last star (a later star can absorb whatever an earlier one would have),
/// so it runs in O(pattern × items).
fn wildcard_match<P, T>(
    pattern: &[P],
    start: usize,
    next: impl Fn(usize) -> Option<(T, usize)>,
    is_star: impl Fn(&P) -> bool,
    one: impl Fn(&P, &T) -> bool,
) -> bool {
    let (mut p, mut t) = (0, start);
    // The pattern index after the last star, and where that star's run ends.
    let mut resume: Option<(usize, usize)> = None;
    loop {
        if let Some(element) = pattern.get(p)
            && is_star(element)
        {
            p += 1;
            resume = Some((p, t));
            continue;
        }
        let Some((item, after)) = next(t) else {
            break;
        };
        if let Some(element) = pattern.get(p)
            && one(element, &item)
        {
            p += 1;
            t = after;
            continue;
        }
        // The last star takes one more item; matching resumes after it.
        let Some((star_p, star_t)) = resume else {
            return false;
        };
        let Some((_, star_after)) = next(star_t) else {
            return false;
        };
        resume = Some((star_p, star_after));
        p = star_p;
        t = star_after;
    }
    pattern[p..].iter().all(is_star)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn glob(raw: &str) -> PathGlob {
        PathGlob::parse(raw).expect("valid glob")
    }

    fn m(pattern: &str, path: &str) -> bool {
        glob(pattern).matches(path)
    }

    fn within(inner: &str, outer: &str) -> bool {
        glob(outer).contains(&glob(inner))
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
        assert!(m("a/**/**/z", "a/z"));
        assert!(m("**/z/**", "a/z/b"));
        assert!(!m("**/z/**", "a/y/b"));
    }

    #[test]
    fn stars_inside_a_segment() {
        assert!(m("events/user-*", "events/user-42"));
        assert!(m("events/user-*", "events/user-"));
        assert!(!m("events/user-*", "events/admin-1"));
        assert!(m("e*s/*", "events/x"));
        assert!(m("a*b*c", "aXXbYYc"));
        assert!(!m("a*b*c", "aXXbYY"));
        assert!(!m("a*", "ab/c"));
    }

    #[test]
    fn literals_match_exactly() {
        assert!(m("events/a", "events/a"));
        assert!(!m("events/a", "events/ab"));
        assert!(!m("events/a", "events/a/"));
        // No percent-decoding: the encoded form is the path's identity.
        assert!(!m("tenant-a/**", "tenant%2Da/x"));
        assert!(m("tenant%2Da/*", "tenant%2Da/x"));
        // An encoded `/` is inside one segment.
        assert!(!m("a/*/c", "a/b%2Fx/y/c"));
        assert!(m("a/*/c", "a/b%2Fx%2Fy/c"));
    }

    #[test]
    fn bad_globs_are_refused() {
        assert_eq!(PathGlob::parse(""), Err(GlobError::Empty));
        for bad in ["/a", "a/", "a//b", "/"] {
            assert_eq!(PathGlob::parse(bad), Err(GlobError::EmptySegment), "{bad}");
        }
        for bad in ["a**/b", "a/b**", "***"] {
            assert_eq!(
                PathGlob::parse(bad),
                Err(GlobError::DoubleStarInSegment),
                "{bad}"
            );
        }
    }

    #[test]
    fn containment() {
        assert!(within("t/**", "t/**"));
        assert!(within("t/x/*", "t/**"));
        assert!(within("t/x/**", "t/**"));
        assert!(within("t/x", "t/*"));
        assert!(within("t/user-*", "t/*"));
        assert!(within("t/user-1*", "t/user-*"));
        assert!(within("t/*", "**"));
        assert!(within("**", "**"));
        assert!(within("t/*/x", "t/**/x"));
        assert!(within("t/a/b/x", "t/**/x"));
        assert!(within("a*b", "a*"));
        assert!(within("a*b*c", "a*c"));

        // `**` reaches further than `*`.
        assert!(!within("t/**", "t/*"));
        assert!(!within("t/*/**", "t/*"));
        // A wider glob, a sibling, or a glob over a literal.
        assert!(!within("**", "t/**"));
        assert!(!within("*/x", "t/*"));
        assert!(!within("u/**", "t/**"));
        assert!(!within("t/*", "t/x"));
        assert!(!within("t/user-*", "t/user-1*"));
        assert!(!within("a*", "a*b"));
        // Prefixes of names are not prefixes of paths.
        assert!(!within("tenant-ab/**", "tenant-a/**"));
        // Sound but conservative: real paths are never empty.
        assert!(!within("a/**", "a/*/**"));
    }

    #[test]
    fn hostile_globs_stay_fast() {
        let pattern = format!("{}x", "**/".repeat(60));
        let path = vec!["a"; 64].join("/");
        assert!(!m(&pattern, &path));
        let stars = format!("{}b", "*a".repeat(200));
        assert!(!m(&stars, &"a".repeat(1000)));
        let deep = glob(&pattern);
        assert!(deep.contains(&deep));
        assert!(!glob("**/y").contains(&deep));
    }

    fn segment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("a".to_owned()),
            Just("b".to_owned()),
            Just("ab".to_owned()),
            Just("*".to_owned()),
            Just("a*".to_owned()),
            Just("*b".to_owned()),
            Just("**".to_owned()),
        ]
    }

    fn glob_text() -> impl Strategy<Value = String> {
        proptest::collection::vec(segment(), 1..5).prop_map(|s| s.join("/"))
    }

    fn path_text() -> impl Strategy<Value = String> {
        proptest::collection::vec("[ab]{1,3}", 1..6).prop_map(|s| s.join("/"))
    }

    /// A reference matcher: plain recursion over the split path (exponential,
    /// fine for small inputs).
    fn reference(segments: &[&str], parts: &[&str]) -> bool {
        fn chars(glob: &[u8], text: &[u8]) -> bool {
            match glob.split_first() {
                None => text.is_empty(),
                Some((b'*', rest)) => (0..=text.len()).any(|skip| chars(rest, &text[skip..])),
                Some((c, rest)) => text.first() == Some(c) && chars(rest, &text[1..]),
            }
        }
        match segments.split_first() {
            None => parts.is_empty(),
            Some((&"**", rest)) => (0..=parts.len()).any(|skip| reference(rest, &parts[skip..])),
            Some((segment, rest)) => {
                !parts.is_empty()
                    && chars(segment.as_bytes(), parts[0].as_bytes())
                    && reference(rest, &parts[1..])
            }
        }
    }

    /// A path `pattern` matches, chosen by `seed`: each `**` becomes zero to
    /// two segments, each `*` zero to two characters.
    fn instantiate(pattern: &str, mut seed: u64) -> String {
        let mut pick = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        let word = |pick: &mut dyn FnMut(u64) -> u64| -> String {
            (0..pick(3))
                .map(|_| if pick(2) == 0 { 'a' } else { 'b' })
                .collect()
        };
        let mut parts: Vec<String> = Vec::new();
        for segment in pattern.split('/') {
            if segment == "**" {
                for _ in 0..pick(3) {
                    parts.push(format!("s{}", word(&mut pick)));
                }
            } else {
                parts.push(
                    segment
                        .split('*')
                        .collect::<Vec<_>>()
                        .join(&word(&mut pick)),
                );
            }
        }
        parts.join("/")
    }

    proptest! {
        #[test]
        fn matching_agrees_with_the_reference(pattern in glob_text(), path in path_text()) {
            let segments: Vec<&str> = pattern.split('/').collect();
            let parts: Vec<&str> = path.split('/').collect();
            prop_assert_eq!(glob(&pattern).matches(&path), reference(&segments, &parts));
        }

        #[test]
        fn containment_is_sound(
            outer in glob_text(),
            inner in glob_text(),
            seeds in proptest::collection::vec(any::<u64>(), 32),
        ) {
            let (outer, inner_glob) = (glob(&outer), glob(&inner));
            if outer.contains(&inner_glob) {
                for seed in seeds {
                    let path = instantiate(&inner, seed);
                    prop_assert!(inner_glob.matches(&path), "{} does not match {}", inner, path);
                    prop_assert!(outer.matches(&path), "{} contains {} but not {}", outer, inner, path);
                }
            }
        }

        #[test]
        fn every_glob_contains_itself(pattern in glob_text()) {
            let parsed = glob(&pattern);
            prop_assert!(parsed.contains(&parsed));
        }

        #[test]
        fn never_panics(pattern in ".{0,40}", path in ".{0,40}") {
            if let Ok(parsed) = PathGlob::parse(&pattern) {
                let _ = parsed.matches(&path);
                if let Ok(other) = PathGlob::parse(&path) {
                    let _ = parsed.contains(&other);
                }
            }
        }
    }
}
