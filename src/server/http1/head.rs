//! Request heads: parsed with `httparse`, then held to the framing rules of
//! RFC 9112 strictly enough that no request can be read two ways (request
//! smuggling): one `Content-Length` or one final `chunked` coding, never
//! both; lines end in CRLF; `Host` present once.

use std::mem::MaybeUninit;
use std::sync::LazyLock;

use bytes::{Buf, Bytes, BytesMut};
use http::header::{self, HeaderName, HeaderValue};
use http::{HeaderMap, Method, StatusCode, Uri, Version};
use memchr::memmem::Finder;

use super::syntax::{check_host, check_line_endings};
use crate::http::{Plain, PlainFields};

/// Most header fields in one request head.
pub(super) const MAX_HEADERS: usize = 100;

/// Size limits of a request head.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HeadLimits {
    /// Longest head, request line and fields together (else `431`).
    pub max_head_bytes: usize,
    /// Longest request target (else `414`).
    pub max_uri_bytes: usize,
}

impl Default for HeadLimits {
    fn default() -> Self {
        Self {
            max_head_bytes: 64 * 1024,
            max_uri_bytes: 8 * 1024,
        }
    }
}

/// How the request body is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyFraming {
    /// No body.
    Empty,
    /// `Content-Length` bytes.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed, checked request head.
#[derive(Debug)]
pub(super) struct RequestHead {
    pub method: Method,
    pub uri: Uri,
    pub version: Version,
    /// Empty when the fields are `plain`.
    pub headers: HeaderMap,
    /// The fields of a `POST` in origin form whose every field is plain,
    /// kept without a map.
    pub plain: Option<PlainFields>,
    pub body: BodyFraming,
    /// Whether the connection may carry another request after this one.
    pub keep_alive: bool,
    /// `Expect: 100-continue` on HTTP/1.1.
    pub expect_continue: bool,
}

/// Why a head was refused; the connection closes after the answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum HeadError {
    /// Malformed or ambiguous: `400`.
    Malformed(&'static str),
    /// The request target is too long: `414`.
    UriTooLong,
    /// The head is too large or has too many fields: `431`.
    TooLarge,
    /// A transfer coding other than `chunked`: `501`.
    UnsupportedCoding,
}

impl HeadError {
    /// The answer's status, problem code and detail.
    pub(super) fn answer(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            HeadError::Malformed(detail) => (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST", detail),
            HeadError::UriTooLong => (
                StatusCode::URI_TOO_LONG,
                "URI_TOO_LONG",
                "the request target is too long",
            ),
            HeadError::TooLarge => (
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                "the request head is too large or has too many header fields",
            ),
            HeadError::UnsupportedCoding => (
                StatusCode::NOT_IMPLEMENTED,
                "UNSUPPORTED_TRANSFER_CODING",
                "only the chunked transfer coding is supported",
            ),
        }
    }
}

/// Finds request heads in a read buffer as bytes arrive: each byte is
/// looked at once until the empty line that ends a head, which is then
/// parsed once.
#[derive(Debug, Default)]
pub(super) struct HeadScanner {
    /// Bytes at the start of the buffer already looked at.
    scanned: usize,
    /// The request line has ended.
    line_done: bool,
}

impl HeadScanner {
    /// The next complete head at the start of `buffer` (removed from
    /// there), `Ok(None)` while it is incomplete and within the limits.
    /// Empty lines before a request line are dropped (RFC 9112 §2.2).
    ///
    /// # Errors
    /// When the head is malformed, ambiguous or too large.
    pub(super) fn next(
        &mut self,
        buffer: &mut BytesMut,
        limits: HeadLimits,
    ) -> Result<Option<RequestHead>, HeadError> {
        while buffer.starts_with(b"\r\n") {
            buffer.advance(2);
            self.scanned = self.scanned.saturating_sub(2);
        }
        // A line end may straddle the previous look.
        let from = self.scanned.saturating_sub(3).min(buffer.len());
        let fresh = &buffer[from..];
        self.scanned = buffer.len();
        // The head ends at the first empty line: CR LF CR LF. One search for
        // all four bytes, not one per line end.
        static HEAD_END: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\r\n\r\n"));
        match HEAD_END.find(fresh) {
            Some(at) => {
                let end = from + at + 4;
                if end > limits.max_head_bytes {
                    return Err(HeadError::TooLarge);
                }
                *self = Self::default();
                let head = buffer.split_to(end).freeze();
                parse(&head, limits).map(Some)
            }
            None => {
                // Bare line ends never make a head; say so at once. (A CR
                // last in the buffer may still be followed by its LF.)
                let checked = fresh.strip_suffix(b"\r").unwrap_or(fresh);
                if from == 0 || buffer[from - 1] != b'\r' {
                    check_line_endings(checked)?;
                } else {
                    check_line_endings(&buffer[from - 1..from + checked.len()])?;
                }
                self.line_done |= fresh.contains(&b'\n');
                // Method and version around the target take a few bytes more.
                if !self.line_done && buffer.len() > limits.max_uri_bytes + 32 {
                    return Err(HeadError::UriTooLong);
                }
                if buffer.len() > limits.max_head_bytes {
                    return Err(HeadError::TooLarge);
                }
                Ok(None)
            }
        }
    }
}

/// Parses `head`, a request line and fields ending in an empty line.
///
/// # Errors
/// When the head is malformed, ambiguous or too large.
fn parse(head: &Bytes, limits: HeadLimits) -> Result<RequestHead, HeadError> {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut []);
    match httparse::ParserConfig::default().parse_request_with_uninit_headers(
        &mut request,
        head,
        &mut slots,
    ) {
        Ok(httparse::Status::Complete(len)) if len == head.len() => {}
        // An earlier end than the first empty line: bare line ends.
        Ok(_) => return Err(HeadError::Malformed("a line ends in LF without CR")),
        Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
        Err(error) => return Err(HeadError::Malformed(describe(error))),
    }
    let (Some(method), Some(target), Some(version)) =
        (request.method, request.path, request.version)
    else {
        return Err(HeadError::Malformed("incomplete request line"));
    };
    if target.len() > limits.max_uri_bytes {
        return Err(HeadError::UriTooLong);
    }
    check_line_endings(head)?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| HeadError::Malformed("invalid method"))?;
    let version = match version {
        1 => Version::HTTP_11,
        0 => Version::HTTP_10,
        _ => return Err(HeadError::Malformed("unsupported HTTP version")),
    };
    let uri = Uri::from_maybe_shared(head.slice_ref(target.as_bytes()))
        .map_err(|_| HeadError::Malformed("invalid request target"))?;
    let mut framing = Framing::default();
    let mut plain =
        (method == Method::POST && target.starts_with('/')).then(|| PlainFields::new(head.clone()));
    for field in request.headers.iter() {
        framing.note(field.name.as_bytes(), field.value)?;
        if let Some(fields) = &mut plain
            && !Plain::of(field.name.as_bytes()).is_some_and(|name| fields.push(name, field.value))
        {
            plain = None;
        }
    }
    let headers = match plain {
        Some(_) => HeaderMap::new(),
        None => {
            let mut headers = HeaderMap::with_capacity(request.headers.len());
            for field in request.headers.iter() {
                let name = field_name(field.name.as_bytes())?;
                // Values share the head's allocation, and are not checked a
                // second time: httparse let through exactly the bytes a
                // `HeaderValue` may hold (HTAB, SP to `~`, 0x80 to 0xFF).
                // SAFETY: see above; a test holds the two to the same bytes.
                let value = unsafe {
                    HeaderValue::from_maybe_shared_unchecked(head.slice_ref(field.value))
                };
                headers.append(name, value);
            }
            headers
        }
    };
    build(method, uri, version, (headers, plain), &framing)
}

/// A field's name: the fields every append carries are compared directly,
/// the rest go through `HeaderName`'s table of known names.
fn field_name(raw: &[u8]) -> Result<HeaderName, HeadError> {
    let common = match raw.len() {
        4 => raw.eq_ignore_ascii_case(b"host").then_some(header::HOST),
        12 => raw
            .eq_ignore_ascii_case(b"content-type")
            .then_some(header::CONTENT_TYPE),
        14 => raw
            .eq_ignore_ascii_case(b"content-length")
            .then_some(header::CONTENT_LENGTH),
        _ => None,
    };
    match common {
        Some(name) => Ok(name),
        None => HeaderName::from_bytes(raw)
            .map_err(|_| HeadError::Malformed("invalid header field name")),
    }
}

fn describe(error: httparse::Error) -> &'static str {
    match error {
        httparse::Error::HeaderName => {
            "invalid header field name (or whitespace before the colon, or a folded line)"
        }
        httparse::Error::HeaderValue => "invalid header field value",
        httparse::Error::NewLine => "invalid line ending",
        httparse::Error::Status | httparse::Error::Token => "invalid request line",
        httparse::Error::Version => "unsupported HTTP version",
        httparse::Error::TooManyHeaders => "too many header fields",
    }
}

/// What the head says about framing and the connection, gathered in one
/// pass over the fields.
#[derive(Default)]
struct Framing<'a> {
    content_length: Option<u64>,
    transfer_encoding: bool,
    hosts: usize,
    /// The (first) `Host` value: checked without a lookup in the map.
    host: Option<&'a [u8]>,
    close: bool,
    keep_alive: bool,
    expect_continue: bool,
}

impl<'a> Framing<'a> {
    /// Takes note of one field named `name` (in any case).
    fn note(&mut self, name: &[u8], value: &'a [u8]) -> Result<(), HeadError> {
        let is = |known: &[u8]| name.eq_ignore_ascii_case(known);
        match name.len() {
            14 if is(b"content-length") => {
                if self.content_length.is_some() {
                    return Err(HeadError::Malformed("more than one Content-Length"));
                }
                self.content_length = Some(content_length(value)?);
            }
            17 if is(b"transfer-encoding") => self.transfer_encoding = true,
            4 if is(b"host") => {
                self.hosts += 1;
                self.host.get_or_insert(value);
            }
            10 if is(b"connection") => {
                for token in tokens(value) {
                    self.close |= token.eq_ignore_ascii_case(b"close");
                    self.keep_alive |= token.eq_ignore_ascii_case(b"keep-alive");
                }
            }
            6 if is(b"expect") => {
                self.expect_continue |= value.eq_ignore_ascii_case(b"100-continue");
            }
            _ => {}
        }
        Ok(())
    }
}

/// Checks what the fields say together and makes the request head.
fn build(
    method: Method,
    uri: Uri,
    version: Version,
    (mut headers, plain): (HeaderMap, Option<PlainFields>),
    framing: &Framing,
) -> Result<RequestHead, HeadError> {
    let body = body_framing(&headers, framing, version)?;
    let absolute = check_target(&method, &uri)?;
    if framing.hosts > 1 {
        return Err(HeadError::Malformed("more than one Host"));
    }
    if let Some(authority) = absolute {
        // RFC 9112 §3.2.2: the target's authority wins over any `Host`.
        headers.insert(header::HOST, authority);
    } else if framing.hosts == 0 && version == Version::HTTP_11 {
        return Err(HeadError::Malformed("an HTTP/1.1 request without Host"));
    } else if let Some(host) = framing.host {
        check_host(host)?;
    }
    let keep_alive = if version == Version::HTTP_11 {
        !framing.close
    } else {
        framing.keep_alive && !framing.close
    };
    Ok(RequestHead {
        method,
        uri,
        version,
        headers,
        plain,
        body,
        keep_alive,
        expect_continue: framing.expect_continue && version == Version::HTTP_11,
    })
}

/// RFC 9112 §6: `Transfer-Encoding` (HTTP/1.1 only) must end in `chunked`
/// and never comes with `Content-Length`; we know no other coding.
fn body_framing(
    headers: &HeaderMap,
    framing: &Framing,
    version: Version,
) -> Result<BodyFraming, HeadError> {
    if !framing.transfer_encoding {
        return Ok(match framing.content_length {
            None | Some(0) => BodyFraming::Empty,
            Some(length) => BodyFraming::Length(length),
        });
    }
    if version != Version::HTTP_11 {
        return Err(HeadError::Malformed(
            "Transfer-Encoding in an HTTP/1.0 request",
        ));
    }
    if framing.content_length.is_some() {
        return Err(HeadError::Malformed(
            "both Content-Length and Transfer-Encoding",
        ));
    }
    let mut codings = 0usize;
    let mut chunked_at = None;
    for value in headers.get_all(header::TRANSFER_ENCODING) {
        for coding in value.as_bytes().split(|&byte| byte == b',') {
            let coding = coding.trim_ascii();
            if coding.is_empty() {
                return Err(HeadError::Malformed("an empty transfer coding"));
            }
            if coding.eq_ignore_ascii_case(b"chunked") {
                if chunked_at.is_some() {
                    return Err(HeadError::Malformed("chunked applied more than once"));
                }
                chunked_at = Some(codings);
            }
            codings += 1;
        }
    }
    match chunked_at {
        Some(at) if at + 1 == codings && codings == 1 => Ok(BodyFraming::Chunked),
        Some(at) if at + 1 == codings => Err(HeadError::UnsupportedCoding),
        _ => Err(HeadError::Malformed(
            "Transfer-Encoding does not end in chunked",
        )),
    }
}

/// A `Content-Length` value: decimal digits only (no sign, no list).
fn content_length(value: &[u8]) -> Result<u64, HeadError> {
    const INVALID: HeadError = HeadError::Malformed("invalid Content-Length");
    if value.is_empty() || value.len() > 19 || !value.iter().all(u8::is_ascii_digit) {
        return Err(INVALID);
    }
    value.iter().try_fold(0u64, |total, &digit| {
        total
            .checked_mul(10)
            .and_then(|total| total.checked_add(u64::from(digit - b'0')))
            .ok_or(INVALID)
    })
}

/// The comma-separated tokens of a field value, trimmed.
fn tokens(value: &[u8]) -> impl Iterator<Item = &[u8]> {
    value
        .split(|&byte| byte == b',')
        .map(<[u8]>::trim_ascii)
        .filter(|token| !token.is_empty())
}

/// Checks the form of the request target against the method; returns the
/// authority of an absolute-form target, which replaces `Host`.
fn check_target(method: &Method, uri: &Uri) -> Result<Option<HeaderValue>, HeadError> {
    if let Some(scheme) = uri.scheme_str() {
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return Err(HeadError::Malformed("an absolute target of another scheme"));
        }
        let Some(authority) = uri.authority() else {
            return Err(HeadError::Malformed("an absolute target without a host"));
        };
        if authority.as_str().contains('@') {
            return Err(HeadError::Malformed("user information in the target"));
        }
        return HeaderValue::from_str(authority.as_str())
            .map(Some)
            .map_err(|_| HeadError::Malformed("invalid target authority"));
    }
    if uri.authority().is_some() {
        // Authority form: for CONNECT only, which is answered by the router.
        return if method == Method::CONNECT {
            Ok(None)
        } else {
            Err(HeadError::Malformed("an authority-form target"))
        };
    }
    if uri.path() == "*" {
        return if method == Method::OPTIONS {
            Ok(None)
        } else {
            Err(HeadError::Malformed("an asterisk target outside OPTIONS"))
        };
    }
    if uri.path().starts_with('/') {
        Ok(None)
    } else {
        Err(HeadError::Malformed("invalid request target"))
    }
}

#[cfg(test)]
#[path = "head_tests.rs"]
mod tests;
