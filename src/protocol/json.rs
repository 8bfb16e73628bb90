//! JSON message mode (spec §7): validation and one-level array flattening.
//!
//! A JSON stream stores each message as its JSON text followed by a comma, so
//! a read of any run of records becomes a JSON array by wrapping it in
//! brackets and dropping the last comma — no re-serialisation on the read path.

use serde_json::value::RawValue;

/// Why a JSON body was refused.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum JsonError {
    /// The body is not one well-formed JSON value.
    #[error("body is not valid JSON: {0}")]
    Invalid(String),
    /// An append of `[]` carries no message.
    #[error("an empty JSON array appends no messages")]
    EmptyArray,
}

/// A body flattened into stored form.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flattened {
    /// Messages, each followed by a comma.
    pub bytes: Vec<u8>,
    /// How many messages the body held.
    pub messages: usize,
}

/// Whether `body` nests arrays and objects deeper than `max_depth` (a
/// scalar is depth 0, `[1]` depth 1), looking past brackets inside strings.
/// Malformed JSON is left to the parser; this only bounds the work and the
/// stack a hostile body can cost.
pub fn nests_deeper_than(body: &[u8], max_depth: usize) -> bool {
    let mut depth = 0usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in body {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > max_depth {
                    return true;
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    false
}

/// Validates a body and flattens a top-level array by exactly one level.
///
/// `allow_empty` admits `[]` (stream creation) as zero messages.
///
/// # Errors
/// [`JsonError::Invalid`] for malformed JSON, [`JsonError::EmptyArray`] for
/// `[]` when not allowed.
pub fn flatten(body: &[u8], allow_empty: bool) -> Result<Flattened, JsonError> {
    let value: &RawValue =
        serde_json::from_slice(body).map_err(|e| JsonError::Invalid(e.to_string()))?;
    let text = value.get();
    if !text.starts_with('[') {
        let mut bytes = Vec::with_capacity(text.len() + 1);
        bytes.extend_from_slice(text.as_bytes());
        bytes.push(b',');
        return Ok(Flattened { bytes, messages: 1 });
    }
    let items: Vec<&RawValue> =
        serde_json::from_str(text).map_err(|e| JsonError::Invalid(e.to_string()))?;
    if items.is_empty() && !allow_empty {
        return Err(JsonError::EmptyArray);
    }
    let mut bytes = Vec::with_capacity(text.len());
    for item in &items {
        bytes.extend_from_slice(item.get().as_bytes());
        bytes.push(b',');
    }
    Ok(Flattened {
        bytes,
        messages: items.len(),
    })
}

/// Wraps stored records as one JSON array: `[` records-without-last-comma `]`.
pub fn wrap_array<'a>(records: impl IntoIterator<Item = &'a [u8]>, total_len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total_len + 2);
    out.push(b'[');
    for record in records {
        out.extend_from_slice(record);
    }
    if out.len() > 1 {
        out.pop();
    }
    out.push(b']');
    out
}

/// Byte lengths of the first `count` messages of a stored record, summed:
/// where a fork cut `count` messages into the record falls.
///
/// Returns `None` when the record holds fewer than `count` messages or cannot
/// be parsed (it always can, unless storage was tampered with).
pub fn message_prefix_len(record: &[u8], count: u64) -> Option<usize> {
    if count == 0 {
        return Some(0);
    }
    let wrapped = wrap_array([record], record.len());
    let text = std::str::from_utf8(&wrapped).ok()?;
    let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
    let index = usize::try_from(count).ok()?.checked_sub(1)?;
    let item = items.get(index)?;
    // The item borrows from `text`; its end within `text`, minus the opening
    // bracket, plus the comma that follows it, is the cut in `record`.
    let start = item.get().as_ptr() as usize - text.as_ptr() as usize;
    Some(start + item.get().len() - 1 + 1)
}

/// How many messages a stored record holds.
pub fn message_count(record: &[u8]) -> usize {
    let wrapped = wrap_array([record], record.len());
    serde_json::from_slice::<Vec<&RawValue>>(&wrapped).map_or(0, |items| items.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn nesting_depth_skips_strings_and_escapes() {
        assert!(!nests_deeper_than(b"1", 0));
        assert!(nests_deeper_than(b"[1]", 0));
        assert!(!nests_deeper_than(b"[{\"a\":[1]}]", 3));
        assert!(nests_deeper_than(b"[{\"a\":[1]}]", 2));
        // An escaped quote does not end the string; its brackets stay text.
        assert!(!nests_deeper_than(br#"["\"[[[[", "]"]"#, 1));
        assert!(!nests_deeper_than(br#"["\\", 1]"#, 1));
        // Closing more than was opened never goes below zero.
        assert!(nests_deeper_than(b"]]][[", 1));
    }

    fn stored(body: &str) -> String {
        String::from_utf8(flatten(body.as_bytes(), false).unwrap().bytes).unwrap()
    }

    #[test]
    fn flattens_exactly_one_level() {
        assert_eq!(stored(r#"{"e":1}"#), r#"{"e":1},"#);
        assert_eq!(stored(r#"[{"a":1},{"b":2}]"#), r#"{"a":1},{"b":2},"#);
        assert_eq!(stored("[[1,2],[3,4]]"), "[1,2],[3,4],");
        assert_eq!(stored("[[[1,2,3]]]"), "[[1,2,3]],");
        assert_eq!(stored(" 42 "), "42,");
    }

    #[test]
    fn rejects_bad_bodies() {
        assert_eq!(flatten(b"[]", false), Err(JsonError::EmptyArray));
        assert_eq!(flatten(b"[]", true).unwrap().messages, 0);
        assert!(matches!(flatten(b"{", false), Err(JsonError::Invalid(_))));
        assert!(matches!(flatten(b"1 2", false), Err(JsonError::Invalid(_))));
        assert!(matches!(flatten(b"", false), Err(JsonError::Invalid(_))));
    }

    #[test]
    fn prefix_lengths() {
        let record = stored(r#"[{"a":1}, "x,y", [1,2]]"#);
        assert_eq!(message_count(record.as_bytes()), 3);
        assert_eq!(
            message_prefix_len(record.as_bytes(), 1),
            Some(r#"{"a":1},"#.len())
        );
        assert_eq!(
            message_prefix_len(record.as_bytes(), 2),
            Some(r#"{"a":1},"x,y","#.len())
        );
        assert_eq!(message_prefix_len(record.as_bytes(), 3), Some(record.len()));
        assert_eq!(message_prefix_len(record.as_bytes(), 4), None);
    }

    proptest! {
        /// Flattening then wrapping yields the original array's elements.
        #[test]
        fn flatten_wrap_round_trip(items in proptest::collection::vec(any::<i64>().prop_map(serde_json::Value::from), 1..20)) {
            let body = serde_json::to_vec(&items).unwrap();
            let flat = flatten(&body, false).unwrap();
            prop_assert_eq!(flat.messages, items.len());
            let wrapped = wrap_array([flat.bytes.as_slice()], flat.bytes.len());
            let back: Vec<serde_json::Value> = serde_json::from_slice(&wrapped).unwrap();
            prop_assert_eq!(back, items);
        }

        #[test]
        fn never_panics(raw in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = flatten(&raw, true);
        }
    }
}
