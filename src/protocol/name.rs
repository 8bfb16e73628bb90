//! Stream name validation: what may follow the stream base path.

/// Limits on names, from `limits.max_stream_name_*`.
#[derive(Clone, Copy, Debug)]
pub struct NameLimits {
    /// Maximum bytes of the (still percent-encoded) name.
    pub max_bytes: usize,
    /// Maximum number of `/`-separated segments.
    pub max_segments: usize,
}

/// Why a stream name was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// Nothing after the base path.
    #[error("stream name is empty")]
    Empty,
    /// An empty, `.` or `..` segment (also when percent-encoded).
    #[error("stream name has an empty, '.' or '..' segment")]
    BadSegment,
    /// A control character (also when percent-encoded) or invalid UTF-8.
    #[error("stream name contains a control character or invalid UTF-8")]
    BadCharacter,
    /// Longer than the configured byte limit.
    #[error("stream name is longer than {0} bytes")]
    TooLong(usize),
    /// More segments than the configured limit.
    #[error("stream name has more than {0} segments")]
    TooManySegments(usize),
}

/// Checks a stream name (the request path after the base path, without the
/// leading `/`, still percent-encoded).
///
/// # Errors
/// [`NameError`] for the first rule broken.
pub fn validate(name: &str, limits: NameLimits) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > limits.max_bytes {
        return Err(NameError::TooLong(limits.max_bytes));
    }
    if let Some(checked) = validate_plain(name, limits) {
        return checked;
    }
    let mut segments = 0usize;
    for segment in name.split('/') {
        segments += 1;
        if segments > limits.max_segments {
            return Err(NameError::TooManySegments(limits.max_segments));
        }
        // Most names have no escapes: check them as they are.
        let decoded = if segment.contains('%') {
            percent_encoding::percent_decode_str(segment)
                .decode_utf8()
                .map_err(|_| NameError::BadCharacter)?
        } else {
            std::borrow::Cow::Borrowed(segment)
        };
        if decoded.is_empty() || decoded == "." || decoded == ".." {
            return Err(NameError::BadSegment);
        }
        if decoded.chars().any(char::is_control) {
            return Err(NameError::BadCharacter);
        }
    }
    Ok(())
}

/// [`validate`] of the usual name, printable ASCII without escapes: one
/// pass over its bytes without an early exit (so the compiler compares many
/// at a time), then its segments; `None` for any other name.
fn validate_plain(name: &str, limits: NameLimits) -> Option<Result<(), NameError>> {
    let unusual = name.as_bytes().iter().fold(false, |found, &byte| {
        found | !(b' '..=b'~').contains(&byte) | (byte == b'%')
    });
    if unusual {
        return None;
    }
    for (count, segment) in name.split('/').enumerate() {
        if count >= limits.max_segments {
            return Some(Err(NameError::TooManySegments(limits.max_segments)));
        }
        if matches!(segment, "" | "." | "..") {
            return Some(Err(NameError::BadSegment));
        }
    }
    Some(Ok(()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMITS: NameLimits = NameLimits {
        max_bytes: 64,
        max_segments: 4,
    };

    #[test]
    fn rules() {
        assert_eq!(validate("a/b-c_d.e", LIMITS), Ok(()));
        assert_eq!(validate("", LIMITS), Err(NameError::Empty));
        for bad in ["a//b", "a/./b", "a/../b", "..", "a/", "%2e%2E", "a/%2e"] {
            assert_eq!(validate(bad, LIMITS), Err(NameError::BadSegment), "{bad}");
        }
        assert_eq!(validate("a%00b", LIMITS), Err(NameError::BadCharacter));
        assert_eq!(validate("a%0Ab", LIMITS), Err(NameError::BadCharacter));
        assert_eq!(validate("a%ffb", LIMITS), Err(NameError::BadCharacter));
        assert_eq!(
            validate(&"x".repeat(65), LIMITS),
            Err(NameError::TooLong(64))
        );
        assert_eq!(
            validate("a/b/c/d/e", LIMITS),
            Err(NameError::TooManySegments(4))
        );
    }

    proptest! {
        #[test]
        fn never_panics(name in ".{0,80}") {
            let _ = validate(&name, LIMITS);
        }

        #[test]
        fn plain_names_are_judged_as_escaped_ones(plain in "[a./]{1,12}") {
            // `%2e` is `.`: the escaped spelling takes the general path.
            let escaped = plain.replace('.', "%2e");
            let roomy = NameLimits { max_bytes: 256, ..LIMITS };
            prop_assert_eq!(validate(&plain, LIMITS), validate(&escaped, roomy));
        }
    }
}
