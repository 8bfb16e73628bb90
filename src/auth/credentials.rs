//! Where a request's bearer token is: the `Authorization: Bearer` header,
//! or, only when `auth.query_param` names one, a query parameter (for
//! `EventSource`, which cannot send headers). The query parameter must be
//! removed from what is logged ([`without_query_param`]).

use std::borrow::Cow;

use http::HeaderMap;
use http::header::AUTHORIZATION;

use super::error::Rejection;

/// The bearer token of a request, if any.
///
/// # Errors
/// [`Rejection::MalformedHeader`] for an `Authorization` header that is not
/// one `Bearer <token>`; [`Rejection::ConflictingCredentials`] for a token
/// in both places (or the parameter twice); [`Rejection::MalformedToken`]
/// for an empty or non-UTF-8 parameter.
pub fn bearer_token<'a>(
    headers: &'a HeaderMap,
    query: Option<&'a str>,
    query_param: Option<&str>,
) -> Result<Option<Cow<'a, str>>, Rejection> {
    let mut values = headers.get_all(AUTHORIZATION).iter();
    let header = match (values.next(), values.next()) {
        (None, _) => None,
        (Some(value), None) => Some(parse_bearer(
            value.to_str().map_err(|_| Rejection::MalformedHeader)?,
        )?),
        (Some(_), Some(_)) => return Err(Rejection::MalformedHeader),
    };
    let from_query = match (query_param, query) {
        (Some(name), Some(query)) => query_token(query, name)?,
        _ => None,
    };
    match (header, from_query) {
        (Some(_), Some(_)) => Err(Rejection::ConflictingCredentials),
        (Some(token), None) => Ok(Some(Cow::Borrowed(token))),
        (None, token) => Ok(token),
    }
}

/// `Bearer <token>` (RFC 6750 §2.1; the scheme is case-insensitive).
fn parse_bearer(value: &str) -> Result<&str, Rejection> {
    let (scheme, token) = value
        .trim()
        .split_once(' ')
        .ok_or(Rejection::MalformedHeader)?;
    let token = token.trim_start_matches(' ');
    if !scheme.eq_ignore_ascii_case("bearer") || token.is_empty() || token.contains(' ') {
        return Err(Rejection::MalformedHeader);
    }
    Ok(token)
}

fn query_token<'a>(query: &'a str, name: &str) -> Result<Option<Cow<'a, str>>, Rejection> {
    let mut found = None;
    for pair in query.split('&') {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        if key != name {
            continue;
        }
        if found.is_some() {
            return Err(Rejection::ConflictingCredentials);
        }
        let token = percent_encoding::percent_decode_str(value)
            .decode_utf8()
            .map_err(|_| Rejection::MalformedToken)?;
        if token.is_empty() {
            return Err(Rejection::MalformedToken);
        }
        found = Some(token);
    }
    Ok(found)
}

/// `query` without the `name` parameter, for logs and for handlers; `None`
/// when nothing else remains.
pub fn without_query_param(query: &str, name: &str) -> Option<String> {
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            !pair.is_empty() && pair.split_once('=').map_or(*pair, |(key, _)| key) != name
        })
        .collect();
    (!kept.is_empty()).then(|| kept.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for value in values {
            map.append(AUTHORIZATION, HeaderValue::from_str(value).expect("ascii"));
        }
        map
    }

    fn token(
        values: &[&str],
        query: Option<&str>,
        param: Option<&str>,
    ) -> Result<Option<String>, Rejection> {
        bearer_token(&headers(values), query, param).map(|t| t.map(Cow::into_owned))
    }

    #[test]
    fn bearer_header() {
        assert_eq!(
            token(&["Bearer abc.def.ghi"], None, None),
            Ok(Some("abc.def.ghi".into()))
        );
        assert_eq!(token(&["bearer  k"], None, None), Ok(Some("k".into())));
        assert_eq!(token(&[], None, None), Ok(None));
        for bad in [
            "Basic dXNlcjpwYXNz",
            "Bearer",
            "Bearer ",
            "Bearer a b",
            "abc",
        ] {
            assert_eq!(
                token(&[bad], None, None),
                Err(Rejection::MalformedHeader),
                "{bad}"
            );
        }
        assert_eq!(
            token(&["Bearer a", "Bearer b"], None, None),
            Err(Rejection::MalformedHeader)
        );
    }

    #[test]
    fn query_parameter_only_when_enabled() {
        let query = Some("offset=-1&access_token=a%2Eb.c&live=sse");
        assert_eq!(token(&[], query, None), Ok(None), "off by default");
        assert_eq!(
            token(&[], query, Some("access_token")),
            Ok(Some("a.b.c".into()))
        );
        assert_eq!(token(&[], query, Some("token")), Ok(None));
        assert_eq!(
            token(&["Bearer x"], query, Some("access_token")),
            Err(Rejection::ConflictingCredentials)
        );
        assert_eq!(
            token(&[], Some("t=a&t=b"), Some("t")),
            Err(Rejection::ConflictingCredentials)
        );
        assert_eq!(
            token(&[], Some("t="), Some("t")),
            Err(Rejection::MalformedToken)
        );
        assert_eq!(
            token(&[], Some("t=%ff"), Some("t")),
            Err(Rejection::MalformedToken)
        );
    }

    #[test]
    fn the_parameter_is_removed_from_the_query() {
        assert_eq!(
            without_query_param("offset=-1&access_token=x&live=sse", "access_token").as_deref(),
            Some("offset=-1&live=sse")
        );
        assert_eq!(without_query_param("access_token=x", "access_token"), None);
        assert_eq!(
            without_query_param("access_tokens=x&access_token", "access_token").as_deref(),
            Some("access_tokens=x")
        );
    }
}
