//! Server-Sent Events framing for live reads (spec §5.8).
//!
//! Payload lines are split on CR, LF and CRLF and each piece gets its own
//! `data:` line (no space after the colon), so no payload byte can start a
//! new field or event. Control events carry offsets and cursors as JSON.

use super::offset::Offset;

/// Appends one `data` event carrying `payload` (already text or base64).
pub fn push_data_event(out: &mut Vec<u8>, payload: &[u8]) {
    push_data_event_parts(out, [payload]);
}

/// Appends one `data` event carrying `parts` one after the other, as if
/// they were one payload, except that a CR ending one part and an LF
/// starting the next are two line breaks (as in two events of their own),
/// never one CRLF: merging a backlog into one event changes no text.
pub fn push_data_event_parts<'a>(out: &mut Vec<u8>, parts: impl IntoIterator<Item = &'a [u8]>) {
    out.extend_from_slice(b"event: data\ndata:");
    for part in parts {
        let mut rest = part;
        while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
            out.extend_from_slice(&rest[..i]);
            out.extend_from_slice(b"\ndata:");
            let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') {
                2
            } else {
                1
            };
            rest = &rest[i + skip..];
        }
        out.extend_from_slice(rest);
    }
    out.extend_from_slice(b"\n\n");
}

/// The fields of a `control` event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Control {
    /// Where the client resumes.
    pub next_offset: Offset,
    /// The CDN cursor; omitted on the final event of a closed stream.
    pub cursor: Option<u64>,
    /// The client has everything up to the tail.
    pub up_to_date: bool,
    /// The stream is closed and the client has everything: EOF.
    pub closed: bool,
}

/// Appends one `control` event.
pub fn push_control_event(out: &mut Vec<u8>, control: &Control) {
    use std::io::Write;
    out.extend_from_slice(b"event: control\ndata:{\"streamNextOffset\":\"");
    let _ = write!(out, "{}\"", control.next_offset);
    if let Some(cursor) = control.cursor {
        let _ = write!(out, ",\"streamCursor\":\"{cursor}\"");
    }
    if control.up_to_date {
        out.extend_from_slice(b",\"upToDate\":true");
    }
    if control.closed {
        out.extend_from_slice(b",\"streamClosed\":true");
    }
    out.extend_from_slice(b"}\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(payload: &str) -> String {
        let mut out = Vec::new();
        push_data_event(&mut out, payload.as_bytes());
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn splits_every_line_break_kind() {
        assert_eq!(
            data("a\r\nb\rc\nd"),
            "event: data\ndata:a\ndata:b\ndata:c\ndata:d\n\n"
        );
        assert_eq!(data(""), "event: data\ndata:\n\n");
        assert_eq!(data("x\n"), "event: data\ndata:x\ndata:\n\n");
        assert_eq!(
            data("line1\nevent: control"),
            "event: data\ndata:line1\ndata:event: control\n\n"
        );
    }

    #[test]
    fn parts_join_as_one_payload_with_their_own_line_breaks() {
        let mut out = Vec::new();
        push_data_event_parts(&mut out, [&b"a\r"[..], b"\nb", b"c\r\nd", b""]);
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "event: data\ndata:a\ndata:\ndata:bc\ndata:d\n\n"
        );
    }

    #[test]
    fn control_json() {
        let mut out = Vec::new();
        push_control_event(
            &mut out,
            &Control {
                next_offset: Offset(5),
                cursor: Some(7),
                up_to_date: true,
                closed: false,
            },
        );
        let text = String::from_utf8(out).unwrap();
        let json = text
            .strip_prefix("event: control\ndata:")
            .unwrap()
            .trim_end();
        let v: serde_json::Value = serde_json::from_str(json).unwrap();
        assert_eq!(v["streamNextOffset"], "0000000000000000_0000000000000005");
        assert_eq!(v["streamCursor"], "7");
        assert_eq!(v["upToDate"], true);
        assert!(v.get("streamClosed").is_none());
    }

    proptest! {
        /// Whatever the payload, the event has exactly one blank line (its
        /// end), every other line is a field, and the data joins back to the
        /// payload with line breaks normalised to LF.
        #[test]
        fn framing_cannot_be_broken_out_of(payload in "[a-z\r\n:]{0,40}") {
            let text = data(&payload);
            let body = text.strip_suffix("\n\n").unwrap();
            let mut lines = body.split('\n');
            prop_assert_eq!(lines.next(), Some("event: data"));
            let joined: Vec<&str> = lines.map(|l| l.strip_prefix("data:").unwrap()).collect();
            let expected = payload.replace("\r\n", "\n").replace('\r', "\n");
            prop_assert_eq!(joined.join("\n"), expected);
        }
    }
}
