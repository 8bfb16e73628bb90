//! Hard limits on what a client sends, besides the body size and the
//! stream name: the total size of the request headers (`431`), the length
//! of the query string (`414`), of client-chosen identifiers (`400`) and
//! the nesting depth of JSON bodies (`400`). Each comes from `[limits]`.

use axum::http::{HeaderMap, StatusCode, Uri};

use super::problem::ApiError;
use crate::protocol::json;

/// The limits, from `[limits]`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct InputLimits {
    pub max_header_bytes: usize,
    pub max_query_bytes: usize,
    pub max_identifier_bytes: usize,
    pub max_json_depth: usize,
}

impl InputLimits {
    /// Checks the request line and headers, before anything else looks at
    /// them.
    ///
    /// # Errors
    /// `431` for headers over `max_header_bytes` in all (names and values,
    /// as HTTP/2 counts them, less its per-field overhead), `414` for a
    /// query string over `max_query_bytes`.
    /// `counted` is the bytes of the request's fields when they are not
    /// in `headers`.
    pub(crate) fn check_head(
        &self,
        headers: &HeaderMap,
        counted: Option<usize>,
        uri: &Uri,
    ) -> Result<(), ApiError> {
        let header_bytes = counted.unwrap_or_else(|| header_bytes(headers));
        if header_bytes > self.max_header_bytes {
            return Err(ApiError::new(
                StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
                "HEADERS_TOO_LARGE",
                format!(
                    "the request headers hold {header_bytes} bytes, more than the {} allowed",
                    self.max_header_bytes
                ),
            ));
        }
        let query_bytes = uri.query().map_or(0, str::len);
        if query_bytes > self.max_query_bytes {
            return Err(ApiError::new(
                StatusCode::URI_TOO_LONG,
                "QUERY_TOO_LONG",
                format!(
                    "the query string has {query_bytes} bytes, more than the {} allowed",
                    self.max_query_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks a client-chosen identifier (`what` names it for the answer).
    ///
    /// # Errors
    /// `400` when it is longer than `max_identifier_bytes`.
    pub(crate) fn check_identifier(&self, what: &str, id: &str) -> Result<(), ApiError> {
        if id.len() > self.max_identifier_bytes {
            return Err(ApiError::bad_request(
                "IDENTIFIER_TOO_LONG",
                format!(
                    "{what} has {} bytes, more than the {} allowed",
                    id.len(),
                    self.max_identifier_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Checks the nesting depth of a JSON body.
    ///
    /// # Errors
    /// `400` when arrays and objects nest deeper than `max_json_depth`.
    pub(crate) fn check_json_depth(&self, body: &[u8]) -> Result<(), ApiError> {
        if json::nests_deeper_than(body, self.max_json_depth) {
            return Err(ApiError::bad_request(
                "JSON_TOO_DEEP",
                format!(
                    "the JSON body nests arrays and objects deeper than {} levels",
                    self.max_json_depth
                ),
            ));
        }
        Ok(())
    }
}

fn header_bytes(headers: &HeaderMap) -> usize {
    headers
        .iter()
        .map(|(name, value)| name.as_str().len() + value.len())
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    const LIMITS: InputLimits = InputLimits {
        max_header_bytes: 100,
        max_query_bytes: 10,
        max_identifier_bytes: 4,
        max_json_depth: 2,
    };

    fn status(result: Result<(), ApiError>) -> u16 {
        use axum::response::IntoResponse;
        result.map_or_else(|e| e.into_response().status().as_u16(), |()| 200)
    }

    #[test]
    fn each_limit_has_its_status() {
        let head = |uri: &str, header: usize| {
            let parts = Request::builder()
                .uri(uri)
                .header("x-pad", "a".repeat(header))
                .body(())
                .expect("request")
                .into_parts()
                .0;
            status(LIMITS.check_head(&parts.headers, None, &parts.uri))
        };
        assert_eq!(head("/a?offset=-1", 50), 200);
        assert_eq!(head("/a?offset=-1", 95), 200, "exactly at the limit");
        assert_eq!(head("/a?offset=-1", 96), 431);
        assert_eq!(head("/a?offset=-123", 10), 414);
        assert_eq!(status(LIMITS.check_identifier("Producer-Id", "abcd")), 200);
        assert_eq!(status(LIMITS.check_identifier("Producer-Id", "abcde")), 400);
        assert_eq!(status(LIMITS.check_json_depth(b"[{\"a\":1}]")), 200);
        assert_eq!(status(LIMITS.check_json_depth(b"[[[1]]]")), 400);
    }
}
