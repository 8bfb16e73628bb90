//! Byte-level rules of a request head that `httparse` leaves to us: every
//! line ends in CRLF, and the form of a `Host` value.

use super::head::HeadError;

/// Every line of the head ends in CRLF: no bare LF (which `httparse`
/// accepts) and no bare CR.
pub(super) fn check_line_endings(head: &[u8]) -> Result<(), HeadError> {
    if line_endings_pair_up(head) {
        return Ok(());
    }
    name_bad_line_ending(head)
}

/// Whether each CR in `head` is followed by an LF and each LF preceded by
/// a CR: one pass over neighbouring bytes without an early exit, so the
/// compiler can compare many at a time (a jump from line end to line end
/// costs a search call per CR and per LF of a head).
fn line_endings_pair_up(head: &[u8]) -> bool {
    let (Some(&first), Some(&last)) = (head.first(), head.last()) else {
        return true;
    };
    let mismatched = head
        .iter()
        .zip(&head[1..])
        .fold(false, |found, (&byte, &next)| {
            found | ((byte == b'\r') != (next == b'\n'))
        });
    !mismatched && first != b'\n' && last != b'\r'
}

/// The first bad line ending of a `head` that has one, found by jumping
/// from line end to line end.
fn name_bad_line_ending(head: &[u8]) -> Result<(), HeadError> {
    for index in memchr::memchr2_iter(b'\r', b'\n', head) {
        match head[index] {
            b'\r' if head.get(index + 1) != Some(&b'\n') => {
                return Err(HeadError::Malformed("a CR not followed by LF"));
            }
            b'\n' if index == 0 || head[index - 1] != b'\r' => {
                return Err(HeadError::Malformed("a line ends in LF without CR"));
            }
            _ => {}
        }
    }
    Ok(())
}

/// The bytes of a host name (RFC 3986 `reg-name`: unreserved, sub-delims
/// and `%` of escapes), as a table: one lookup a byte.
const REG_NAME_BYTES: [bool; 256] = {
    let mut table = [false; 256];
    let mut byte = 0;
    while byte < 256 {
        let b = byte as u8;
        table[byte] = b.is_ascii_alphanumeric()
            || matches!(
                b,
                b'-' | b'.'
                    | b'_'
                    | b'~'
                    | b'%'
                    | b'!'
                    | b'$'
                    | b'&'
                    | b'\''
                    | b'('
                    | b')'
                    | b'*'
                    | b'+'
                    | b','
                    | b';'
                    | b'='
            );
        byte += 1;
    }
    table
};

/// `Host` is `host[:port]` (RFC 9110 §7.2: a registered name, an IPv4
/// address or a bracketed IP literal, and digits after the last colon),
/// possibly empty; never user information, a path or whitespace.
pub(super) fn check_host(host: &[u8]) -> Result<(), HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid Host");
    let (name, port) = match host.iter().rposition(|&byte| byte == b':') {
        // A colon inside a bracketed literal is not a port separator.
        Some(colon) if !host[colon..].contains(&b']') => (&host[..colon], Some(&host[colon + 1..])),
        _ => (host, None),
    };
    if port.is_some_and(|port| !port.iter().all(u8::is_ascii_digit)) {
        return Err(INVALID);
    }
    let valid = match name {
        [b'[', literal @ .., b']'] => literal
            .iter()
            .all(|&byte| byte.is_ascii_hexdigit() || matches!(byte, b':' | b'.')),
        _ => name.iter().all(|&byte| REG_NAME_BYTES[usize::from(byte)]),
    };
    if valid { Ok(()) } else { Err(INVALID) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_one_pass_line_end_check_agrees_with_the_jumping_one() {
        // Every string of up to 8 bytes over CR, LF and a letter.
        let alphabet = [b'\r', b'\n', b'a'];
        for len in 0..=8u32 {
            for mut code in 0..3usize.pow(len) {
                let bytes: Vec<u8> = (0..len)
                    .map(|_| {
                        let byte = alphabet[code % 3];
                        code /= 3;
                        byte
                    })
                    .collect();
                assert_eq!(
                    line_endings_pair_up(&bytes),
                    name_bad_line_ending(&bytes).is_ok(),
                    "{bytes:?}"
                );
            }
        }
    }
}
