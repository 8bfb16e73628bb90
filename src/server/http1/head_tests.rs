//! Request head parsing: the framing rules, the limits and plain heads.

use super::*;

fn parse_all(raw: &[u8]) -> Result<Option<RequestHead>, HeadError> {
    let mut buffer = BytesMut::from(raw);
    HeadScanner::default().next(&mut buffer, HeadLimits::default())
}

fn parse_with(buffer: &mut BytesMut, limits: HeadLimits) -> Result<Option<RequestHead>, HeadError> {
    HeadScanner::default().next(buffer, limits)
}

fn malformed(raw: &[u8]) -> bool {
    matches!(parse_all(raw), Err(HeadError::Malformed(_)))
}

/// Values are not checked again after httparse (see `parse`): it must
/// take exactly the bytes a `HeaderValue` may hold, in short values
/// and in values long enough for its vector paths.
#[test]
fn field_values_parse_exactly_when_a_header_value_may_hold_them() {
    for byte in 0..=255u8 {
        for pad in [1, 40] {
            let value = [&vec![b'a'; pad][..], &[byte], &vec![b'b'; pad][..]].concat();
            let raw = [
                &b"GET / HTTP/1.1\r\nHost: x\r\nX-V: "[..],
                &value,
                b"\r\n\r\n",
            ]
            .concat();
            let parsed = parse_all(&raw).is_ok_and(|head| head.is_some());
            let allowed = HeaderValue::from_bytes(&value).is_ok();
            assert_eq!(parsed, allowed, "byte {byte:#04x}, {pad} bytes around");
        }
    }
}

#[test]
fn a_simple_get_parses_and_leaves_the_rest() {
    let mut buffer = BytesMut::from(&b"GET /a?b=c HTTP/1.1\r\nHost: x\r\n\r\nNEXT"[..]);
    let head = parse_with(&mut buffer, HeadLimits::default())
        .expect("valid")
        .expect("complete");
    assert_eq!(head.method, Method::GET);
    assert_eq!(head.uri.path(), "/a");
    assert_eq!(head.uri.query(), Some("b=c"));
    assert_eq!(head.headers["host"], "x");
    assert_eq!(head.body, BodyFraming::Empty);
    assert!(head.keep_alive);
    assert_eq!(&buffer[..], b"NEXT");
}

#[test]
fn incomplete_heads_wait_for_more() {
    assert!(
        parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n")
            .expect("ok")
            .is_none()
    );
    assert!(parse_all(b"GE").expect("ok").is_none());
}

#[test]
fn framing_is_unambiguous() {
    let cl_te =
        b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(malformed(cl_te));
    let two_cl = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
    assert!(malformed(two_cl));
    for bad in ["+3", "3 ,3", "3,3", "-1", "0x3", "", "99999999999999999999"] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {bad}\r\n\r\n");
        assert!(malformed(raw.as_bytes()), "{bad:?}");
    }
    for bad in [
        "chunked, gzip",
        "identity",
        "chunked, chunked",
        "chunked,",
        "xchunked",
    ] {
        let raw = format!("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: {bad}\r\n\r\n");
        assert!(malformed(raw.as_bytes()), "{bad:?}");
    }
    let gzip = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
    assert_eq!(parse_all(gzip).err(), Some(HeadError::UnsupportedCoding));
    let chunked = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\n\r\n";
    assert_eq!(
        parse_all(chunked).expect("ok").expect("complete").body,
        BodyFraming::Chunked
    );
    let te10 = b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n";
    assert!(malformed(te10));
}

#[test]
fn line_ending_oddities_are_refused() {
    assert!(malformed(b"GET / HTTP/1.1\nHost: x\r\n\r\n"));
    assert!(malformed(b"GET / HTTP/1.1\r\nHost: x\n\r\n"));
    assert!(parse_all(b"GET / HTTP/1.1\r\nHost: x\ry\r\n\r\n").is_err());
    assert!(parse_all(b"GET / HTTP/1.1\r\nHost: x\r\n fold\r\n\r\n").is_err());
    assert!(parse_all(b"GET / HTTP/1.1\r\nHost : x\r\n\r\n").is_err());
}

#[test]
fn host_rules() {
    assert!(malformed(b"GET / HTTP/1.1\r\n\r\n"));
    assert!(malformed(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"));
    assert!(malformed(b"GET / HTTP/1.1\r\nHost: u@a\r\n\r\n"));
    assert!(parse_all(b"GET / HTTP/1.0\r\n\r\n").expect("ok").is_some());
    for host in [
        "[::1]:8080",
        "[::1]",
        "127.0.0.1:1",
        "a.example",
        "x_y-z.test:80",
        "",
    ] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert!(parse_all(raw.as_bytes()).expect(host).is_some(), "{host}");
    }
    for host in ["a:b", "a/b", "a?b", "[::1", "[x]", "a:8080:", "a#b"] {
        let raw = format!("GET / HTTP/1.1\r\nHost: {host}\r\n\r\n");
        assert!(malformed(raw.as_bytes()), "{host}");
    }
    let absolute = parse_all(b"GET http://real:8/p?q HTTP/1.1\r\nHost: fake\r\n\r\n")
        .expect("ok")
        .expect("complete");
    assert_eq!(absolute.headers["host"], "real:8");
    assert_eq!(absolute.uri.path(), "/p");
    assert!(malformed(b"GET ftp://x/ HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(malformed(b"GET x:80 HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(malformed(b"GET * HTTP/1.1\r\nHost: x\r\n\r\n"));
    assert!(
        parse_all(b"OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
            .expect("ok")
            .is_some()
    );
}

#[test]
fn connection_and_expect() {
    let head = |raw: &[u8]| parse_all(raw).expect("ok").expect("complete");
    assert!(!head(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: Close\r\n\r\n").keep_alive);
    assert!(!head(b"GET / HTTP/1.0\r\n\r\n").keep_alive);
    assert!(head(b"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n").keep_alive);
    assert!(
        head(b"POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-Continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
    assert!(
        !head(b"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\n")
            .expect_continue
    );
}

#[test]
fn the_scanner_parses_once_a_line_ends_and_skips_empty_lines() {
    let mut scanner = HeadScanner::default();
    let mut buffer = BytesMut::new();
    let limits = HeadLimits::default();
    for byte in b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r" {
        buffer.extend_from_slice(&[*byte]);
        assert!(scanner.next(&mut buffer, limits).expect("valid").is_none());
    }
    buffer.extend_from_slice(b"\nrest");
    let head = scanner
        .next(&mut buffer, limits)
        .expect("valid")
        .expect("complete");
    assert_eq!(head.headers["host"], "x");
    assert_eq!(&buffer[..], b"rest");
    let mut long = BytesMut::from(format!("GET /{}", "a".repeat(9000)).as_bytes());
    assert_eq!(
        HeadScanner::default().next(&mut long, limits).err(),
        Some(HeadError::UriTooLong)
    );
}

#[test]
fn common_field_names_are_the_known_ones_in_any_case() {
    for (raw, known) in [
        ("Host", header::HOST),
        ("hOST", header::HOST),
        ("Content-Type", header::CONTENT_TYPE),
        ("CONTENT-LENGTH", header::CONTENT_LENGTH),
    ] {
        assert_eq!(field_name(raw.as_bytes()), Ok(known));
    }
    assert_eq!(field_name(b"Hosts"), Ok(HeaderName::from_static("hosts")));
    assert_eq!(
        field_name(b"Content-Typf"),
        Ok(HeaderName::from_static("content-typf"))
    );
    assert!(field_name(b"Ho t").is_err());
}

#[test]
fn limits_give_414_and_431() {
    let limits = HeadLimits {
        max_head_bytes: 256,
        max_uri_bytes: 64,
    };
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(100));
    let mut buffer = BytesMut::from(long_target.as_bytes());
    assert_eq!(
        parse_with(&mut buffer, limits).err(),
        Some(HeadError::UriTooLong)
    );
    // Still arriving, and already too long.
    let mut buffer = BytesMut::from(&long_target.as_bytes()[..100]);
    assert_eq!(
        parse_with(&mut buffer, limits).err(),
        Some(HeadError::UriTooLong)
    );
    let big = format!(
        "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
        "v".repeat(300)
    );
    let mut buffer = BytesMut::from(big.as_bytes());
    assert_eq!(
        parse_with(&mut buffer, limits).err(),
        Some(HeadError::TooLarge)
    );
    let mut buffer = BytesMut::from(&big.as_bytes()[..280]);
    assert_eq!(
        parse_with(&mut buffer, limits).err(),
        Some(HeadError::TooLarge)
    );
    let many: String = (0..MAX_HEADERS + 1)
        .map(|i| format!("X{i}: v\r\n"))
        .collect();
    let raw = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    assert_eq!(parse_all(raw.as_bytes()).err(), Some(HeadError::TooLarge));
}

/// A `POST` in origin form whose every field is one an append reads keeps
/// them without a map; any other field, method or target form gets the map
/// of all of them, as before.
#[test]
fn plain_heads_keep_their_fields_without_a_map() {
    let raw = b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nStream-Seq: 7\r\nAccept: */*\r\n\r\n";
    let head = parse_all(raw).expect("valid").expect("complete");
    assert!(head.headers.is_empty());
    let plain = head.plain.expect("plain");
    assert_eq!(plain.first(Plain::StreamSeq), Some(&b"7"[..]));
    assert_eq!(
        plain.header_bytes(),
        4 + 1 + 12 + 10 + 14 + 1 + 10 + 1 + 6 + 3
    );
    let map = plain.into_map();
    assert_eq!(map.len(), 5);
    assert_eq!(map[header::CONTENT_TYPE], "text/plain");
    assert_eq!(map[header::ACCEPT], "*/*");
    assert_eq!(head.body, BodyFraming::Length(3));
    let others: [&[u8]; 4] = [
        b"POST /s HTTP/1.1\r\nHost: x\r\nOrigin: o\r\nContent-Length: 3\r\n\r\n",
        b"PUT /s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
        b"POST http://x/s HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n",
        b"POST /s HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    ];
    for raw in others {
        let head = parse_all(raw).expect("valid").expect("complete");
        assert!(head.plain.is_none());
        assert_eq!(head.headers[header::HOST], "x");
    }
    // The framing rules hold for plain heads too.
    assert!(malformed(b"POST /s HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n"));
    assert!(malformed(b"POST /s HTTP/1.1\r\nContent-Length: 1\r\n\r\n"));
    let twice = b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\ncontent-length: 1\r\n\r\n";
    assert!(malformed(twice));
}
