//! Query parameters of reads: `offset`, `live`, `cursor` (spec §5.6).

use super::problem::ApiError;
use crate::protocol::offset::{ReadFrom, parse_read_from};

/// How a `GET` reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LiveMode {
    /// Plain catch-up read.
    CatchUp,
    /// `live=long-poll`.
    LongPoll,
    /// `live=sse`.
    Sse,
}

/// The parsed query of a `GET`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReadQuery {
    /// `offset`, `None` when absent.
    pub offset: Option<ReadFrom>,
    /// `live`.
    pub live: LiveMode,
    /// `cursor`, echoed by clients.
    pub cursor: Option<String>,
}

fn decode(raw: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(raw)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| ApiError::bad_request("INVALID_QUERY", "query parameter is not valid UTF-8"))
}

/// Parses a raw query string. Unknown parameters are ignored; a repeated or
/// empty `offset` is an error.
///
/// # Errors
/// `400` problems for the cases above, a bad `live` value, or a live mode
/// without an offset.
pub fn parse(query: Option<&str>) -> Result<ReadQuery, ApiError> {
    let mut offset = None;
    let mut live = LiveMode::CatchUp;
    let mut cursor = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "offset" => {
                if offset.is_some() {
                    return Err(ApiError::bad_request(
                        "INVALID_OFFSET",
                        "offset must be given once",
                    ));
                }
                offset = Some(parse_read_from(&decode(value)?)?);
            }
            "live" => {
                live = match decode(value)?.as_str() {
                    "long-poll" => LiveMode::LongPoll,
                    "sse" => LiveMode::Sse,
                    "" | "false" => LiveMode::CatchUp,
                    _ => {
                        return Err(ApiError::bad_request(
                            "INVALID_QUERY",
                            "live must be long-poll or sse",
                        ));
                    }
                }
            }
            "cursor" => cursor = Some(decode(value)?),
            _ => {}
        }
    }
    if live != LiveMode::CatchUp && offset.is_none() {
        return Err(ApiError::bad_request(
            "INVALID_OFFSET",
            "live reads require an offset",
        ));
    }
    Ok(ReadQuery {
        offset,
        live,
        cursor,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_reads() {
        let q = parse(Some("offset=-1&live=sse&cursor=12&x=y")).unwrap();
        assert_eq!(
            q,
            ReadQuery {
                offset: Some(ReadFrom::Start),
                live: LiveMode::Sse,
                cursor: Some("12".into())
            }
        );
        assert_eq!(parse(None).unwrap().offset, None);
        for bad in [
            "offset=",
            "offset=a&offset=b",
            "live=sse",
            "live=long-poll",
            "offset=1%2C2",
            "offset=%00",
            "live=maybe&offset=-1",
        ] {
            assert!(parse(Some(bad)).is_err(), "{bad}");
        }
    }
}
