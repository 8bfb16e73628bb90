//! Access control at the HTTP edge: which operation a request is, who makes
//! it ([`authorize`], a plain function any HTTP driver can call with the
//! request's parts), and what its answer may carry ([`guard`], the axum
//! side: cache headers, the end of live reads at the token's expiry).
//!
//! Absent entirely with `auth.mode = "none"`: the edge middleware then
//! never calls into this module.
//!
//! Routes outside the streams' mount path (`/healthz`, `/readyz`, the
//! metrics path), the webhook signing keys (`__ds/jwks.json`) and the
//! subscription calls that carry their own bearer token (a webhook's
//! callback token, a pull-wake lease token: `…/callback`, `…/ack`,
//! `…/release`) need no credentials. Every other `__ds` call needs an
//! authenticated principal, and its handler checks `subscribe` on the
//! patterns and streams it names.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{OriginalUri, Request};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body::{Body as _, Frame, SizeHint};

use super::deferred;
use super::names::STREAM_FORKED_FROM;
use super::problem::ApiError;
use crate::auth::config::AccessOp;
use crate::auth::{AccessControl, Denial, Principal, Rejection, bearer_token};
use crate::client::ClientIdentity;
use crate::metrics::event::AuthDenied;

/// What the edge needs to authorize requests.
#[derive(Debug)]
pub(crate) struct AuthGate {
    access: AccessControl,
    /// The streams' mount path, without a trailing `/` (empty: `/`).
    base_path: String,
}

impl AuthGate {
    pub(crate) fn new(access: AccessControl, base_path: String) -> Self {
        Self { access, base_path }
    }
}

/// A bearer token taken out of the query string (`auth.query_param`)
/// before the request was logged; kept in the request's extensions.
#[derive(Clone)]
pub(crate) struct QueryToken(String);

impl fmt::Debug for QueryToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("QueryToken(<redacted>)")
    }
}

/// Moves the `auth.query_param` token, if any, from the request's URI (and
/// `OriginalUri`) into a [`QueryToken`] extension, so that nothing after
/// this (logs, traces, handlers) sees it. A malformed parameter stays
/// where it is, for [`authorize`] to refuse.
pub(crate) fn take_query_token(gate: &AuthGate, request: &mut Request) {
    let Some(name) = gate.access.settings().query_param() else {
        return;
    };
    let Some(query) = request.uri().query() else {
        return;
    };
    // Only the query is looked at here; the header is checked later.
    let no_headers = axum::http::HeaderMap::new();
    let Ok(Some(token)) = bearer_token(&no_headers, Some(query), Some(name)) else {
        return;
    };
    let token = token.into_owned();
    let stripped = |uri: &Uri| -> Option<Uri> {
        let rest = uri
            .query()
            .and_then(|q| crate::auth::without_query_param(q, name));
        let path_and_query = match rest {
            Some(rest) => format!("{}?{rest}", uri.path()),
            None => uri.path().to_owned(),
        };
        let mut parts = uri.clone().into_parts();
        parts.path_and_query = Some(path_and_query.parse().ok()?);
        Uri::from_parts(parts).ok()
    };
    let Some(uri) = stripped(request.uri()) else {
        return;
    };
    *request.uri_mut() = uri;
    if let Some(original) = request.extensions().get::<OriginalUri>()
        && let Some(uri) = stripped(&original.0)
    {
        request.extensions_mut().insert(OriginalUri(uri));
    }
    request.extensions_mut().insert(QueryToken(token));
}

/// What a request must prove.
#[derive(Debug, PartialEq, Eq)]
enum Need<'a> {
    /// Nothing: probes, metrics, signing keys, calls with their own token.
    Nothing,
    /// An authenticated principal; the handler checks the rest.
    Principal,
    /// `op` on the stream at the request's path, and `read` on a fork's
    /// source.
    Stream {
        op: AccessOp,
        fork_source: Option<&'a str>,
    },
}

/// What the request at `path` (relative to the router) needs.
fn need<'a>(base_path: &str, method: &Method, path: &str, parts: &'a Parts) -> Need<'a> {
    let Some(rest) = path
        .strip_prefix(base_path)
        .and_then(|rest| rest.strip_prefix('/'))
    else {
        return Need::Nothing;
    };
    if rest == "__ds" || rest.starts_with("__ds/") {
        let mut segments = rest.split('/').skip(1);
        return match (
            segments.next(),
            segments.next(),
            segments.next(),
            segments.next(),
        ) {
            (Some("jwks.json"), None, ..) => Need::Nothing,
            (Some("subscriptions"), Some(_), Some("callback" | "ack" | "release"), None) => {
                Need::Nothing
            }
            _ => Need::Principal,
        };
    }
    let op = match *method {
        Method::GET | Method::HEAD => AccessOp::Read,
        Method::POST => AccessOp::Append,
        Method::PUT => AccessOp::Create,
        Method::DELETE => AccessOp::Delete,
        // Answered `405` by the route; who asks does not matter.
        _ => return Need::Principal,
    };
    let fork_source = (op == AccessOp::Create)
        .then(|| parts.headers.get(STREAM_FORKED_FROM))
        .flatten()
        .and_then(|value| value.to_str().ok())
        .map(str::trim)
        .filter(|source| !source.is_empty());
    Need::Stream { op, fork_source }
}

/// Who makes the request and whether it may: `Ok(None)` when the route
/// needs no credentials, else the principal, after checking its grants for
/// a stream operation (`__ds` handlers check theirs). Counts refusals.
///
/// # Errors
/// A `401` problem (with `WWW-Authenticate: Bearer`) for missing or bad
/// credentials, a `403` problem for an operation not granted.
pub(crate) async fn authorize(
    gate: &AuthGate,
    parts: &Parts,
) -> Result<Option<Principal>, ApiError> {
    let need = need(&gate.base_path, &parts.method, parts.uri.path(), parts);
    if need == Need::Nothing {
        return Ok(None);
    }
    let refused = Refusal::counted;
    let query_param = gate.access.settings().query_param();
    let token = match parts.extensions.get::<QueryToken>() {
        // Taken out of the query already; a second one in the header
        // conflicts as it would have there.
        Some(QueryToken(token)) => match bearer_token(&parts.headers, None, None) {
            Ok(None) => Some(std::borrow::Cow::Borrowed(token.as_str())),
            Ok(Some(_)) => {
                return Err(refused(Refusal::Rejected(
                    Rejection::ConflictingCredentials,
                )));
            }
            Err(rejection) => return Err(refused(Refusal::Rejected(rejection))),
        },
        None => bearer_token(&parts.headers, parts.uri.query(), query_param)
            .map_err(|rejection| refused(Refusal::Rejected(rejection)))?,
    };
    let principal = gate
        .access
        .authenticate(
            token.as_deref(),
            parts.extensions.get::<ClientIdentity>(),
            crate::clock::unix_secs(),
        )
        .await
        .map_err(|rejection| refused(Refusal::Rejected(rejection)))?;
    if let Need::Stream { op, fork_source } = need {
        let path = parts
            .extensions
            .get::<OriginalUri>()
            .map_or(parts.uri.path(), |original| original.0.path());
        principal
            .check(op, path)
            .and_then(|()| match fork_source {
                Some(source) => principal.check(AccessOp::Read, source),
                None => Ok(()),
            })
            .map_err(|denial| refused(Refusal::Denied(denial)))?;
    }
    Ok(Some(principal))
}

/// Checks a `__ds` call's own grants: `check` runs only when access
/// control is on (a principal is present), and its refusal is counted and
/// answered like the edge's.
///
/// # Errors
/// The `401`/`403` problem of the denial.
pub(crate) fn check_subscribe(
    principal: Option<&Principal>,
    check: impl FnOnce(&Principal) -> Result<(), Denial>,
) -> Result<(), ApiError> {
    let Some(principal) = principal else {
        return Ok(());
    };
    check(principal).map_err(|denial| Refusal::Denied(denial).counted())
}

/// Why a request is refused.
#[derive(Clone, Copy, Debug)]
enum Refusal {
    Rejected(Rejection),
    Denied(Denial),
}

impl Refusal {
    /// Counts the refusal and answers it.
    fn counted(self) -> ApiError {
        AuthDenied {
            reason: self.reason(),
            status: self.status().as_u16(),
        }
        .emit();
        self.into_problem()
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Rejected(rejection) => rejection.reason(),
            Self::Denied(denial) => denial.reason(),
        }
    }

    fn status(self) -> StatusCode {
        match self {
            Self::Rejected(_) | Self::Denied(Denial::CredentialsRequired) => {
                StatusCode::UNAUTHORIZED
            }
            Self::Denied(_) => StatusCode::FORBIDDEN,
        }
    }

    fn into_problem(self) -> ApiError {
        let (code, challenge, detail) = match self {
            // RFC 6750 §3: no error code when no credentials were sent.
            Self::Denied(denial @ Denial::CredentialsRequired) => {
                ("UNAUTHORIZED", "Bearer", denial.to_string())
            }
            Self::Rejected(rejection) => (
                "UNAUTHORIZED",
                "Bearer error=\"invalid_token\"",
                rejection.to_string(),
            ),
            Self::Denied(denial) => ("FORBIDDEN", "", denial.to_string()),
        };
        let problem = ApiError::new(self.status(), code, detail)
            .with_extension("reason", serde_json::Value::from(self.reason()));
        if challenge.is_empty() {
            problem
        } else {
            problem.with_header(header::WWW_AUTHENTICATE, challenge)
        }
    }
}

/// `Cache-Control` of an answer to a request that needed credentials: the
/// protocol's own `public` caching must not let a shared cache hand it to
/// someone else.
const PRIVATE: HeaderValue = HeaderValue::from_static("private");
/// … and to one whose token was in the URL, which must not be stored.
const PRIVATE_NO_STORE: HeaderValue = HeaderValue::from_static("private, no-store");

/// The axum side of [`authorize`]: refuses, or runs `next` with the
/// principal in the request's extensions, then makes the answer private
/// (and `Vary: Authorization`) unless it went to an anonymous principal
/// (whose grants are public), and
/// ends a live read when the principal's token expires: a long-poll still
/// waiting gets a `401`, an SSE stream ends. The principal goes into the
/// response's extensions for the request log.
pub(crate) async fn guard<F, Fut>(gate: &AuthGate, request: Request, next: F) -> Response
where
    F: FnOnce(Request) -> Fut,
    Fut: Future<Output = Response>,
{
    let (mut parts, body) = request.into_parts();
    let principal = match authorize(gate, &parts).await {
        Ok(Some(principal)) => principal,
        Ok(None) => return next(Request::from_parts(parts, body)).await,
        Err(problem) => return problem.into_response(),
    };
    let from_query = parts.extensions.get::<QueryToken>().is_some();
    parts.extensions.insert(principal.clone());
    let request = Request::from_parts(parts, body);
    let deadline = principal.expires_at().map(instant_of_unix_secs);
    let response = match deadline {
        Some(deadline) if request.method() == Method::GET => {
            let response = match tokio::time::timeout_at(deadline.into(), next(request)).await {
                Ok(response) => response,
                Err(_) => expired(),
            };
            // A long-poll answered later waits under the same deadline.
            deferred::around(response, move |wait| async move {
                tokio::time::timeout_at(deadline.into(), wait)
                    .await
                    .unwrap_or_else(|_| expired())
            })
        }
        _ => next(request).await,
    };
    deferred::then(response, move |response| {
        guarded(response, principal, from_query, deadline)
    })
}

/// The answer to a live read whose token expired while it waited.
fn expired() -> Response {
    Refusal::Rejected(Rejection::Expired)
        .into_problem()
        .into_response()
}

/// What [`guard`] does to the answer of an authorised request.
fn guarded(
    mut response: Response,
    principal: Principal,
    from_query: bool,
    deadline: Option<Instant>,
) -> Response {
    if let Some(deadline) = deadline
        && response.body().size_hint().exact().is_none()
    {
        response = response.map(|body| {
            Body::new(UntilExpiry {
                inner: body,
                sleep: Box::pin(tokio::time::sleep_until(deadline.into())),
            })
        });
    }
    let headers = response.headers_mut();
    if from_query {
        headers.insert(header::CACHE_CONTROL, PRIVATE_NO_STORE);
    } else if !principal.is_anonymous() {
        let private = match headers.get(header::CACHE_CONTROL).map(HeaderValue::to_str) {
            Some(Ok(value)) if value.contains("no-store") || value.contains("private") => None,
            Some(Ok(value)) if value.contains("public") => {
                HeaderValue::from_str(&value.replace("public", "private")).ok()
            }
            Some(Ok(value)) => HeaderValue::from_str(&format!("private, {value}")).ok(),
            _ => Some(PRIVATE),
        };
        if let Some(private) = private {
            headers.insert(header::CACHE_CONTROL, private);
        }
        // A browser's own cache keys on the URL alone: without this, it
        // answers a later request of the same URL without credentials
        // (another user of the page) from the authenticated answer.
        headers.append(header::VARY, HeaderValue::from_static("Authorization"));
    }
    response.extensions_mut().insert(principal);
    response
}

/// The monotonic instant of a Unix time (now when it is past).
fn instant_of_unix_secs(unix_secs: u64) -> Instant {
    let left = unix_secs.saturating_sub(crate::clock::unix_secs());
    Instant::now() + Duration::from_secs(left)
}

/// A streamed body that ends when the credentials it was served to expire.
struct UntilExpiry {
    inner: Body,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl http_body::Body for UntilExpiry {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if self.sleep.as_mut().poll(cx).is_ready() {
            return Poll::Ready(None);
        }
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parts(method: Method, uri: &str, fork: Option<&str>) -> Parts {
        let mut builder = Request::builder().method(method).uri(uri);
        if let Some(source) = fork {
            builder = builder.header(STREAM_FORKED_FROM, source);
        }
        builder.body(()).expect("request").into_parts().0
    }

    fn need_of(method: Method, uri: &str, fork: Option<&str>) -> String {
        let parts = parts(method, uri, fork);
        format!(
            "{:?}",
            need("/v1/stream", &parts.method, parts.uri.path(), &parts)
        )
    }

    #[test]
    fn each_method_is_its_operation() {
        for (method, op) in [
            (Method::GET, "Read"),
            (Method::HEAD, "Read"),
            (Method::POST, "Append"),
            (Method::PUT, "Create"),
            (Method::DELETE, "Delete"),
        ] {
            assert_eq!(
                need_of(method, "/v1/stream/a/b", None),
                format!("Stream {{ op: {op}, fork_source: None }}")
            );
        }
        assert_eq!(
            need_of(Method::PUT, "/v1/stream/b", Some(" /v1/stream/a ")),
            "Stream { op: Create, fork_source: Some(\"/v1/stream/a\") }"
        );
        assert_eq!(
            need_of(Method::POST, "/v1/stream/b", Some("/v1/stream/a")),
            "Stream { op: Append, fork_source: None }",
            "only a PUT forks"
        );
        assert_eq!(need_of(Method::PATCH, "/v1/stream/a", None), "Principal");
    }

    #[test]
    fn probes_keys_and_self_authenticated_calls_need_nothing() {
        for uri in [
            "/healthz",
            "/readyz",
            "/metrics",
            "/v1/streamx",
            "/v1/stream/__ds/jwks.json",
            "/v1/stream/__ds/subscriptions/s1/callback",
            "/v1/stream/__ds/subscriptions/s1/ack",
            "/v1/stream/__ds/subscriptions/s1/release",
        ] {
            assert_eq!(need_of(Method::POST, uri, None), "Nothing", "{uri}");
        }
        for uri in [
            "/v1/stream/__ds/subscriptions/s1",
            "/v1/stream/__ds/subscriptions/s1/claim",
            "/v1/stream/__ds/subscriptions/s1/streams",
            "/v1/stream/__ds/subscriptions/s1/streams/ack",
            "/v1/stream/__ds/subscriptions/callback",
            "/v1/stream/__ds/jwks.json/x",
            "/v1/stream/__ds",
        ] {
            assert_eq!(need_of(Method::POST, uri, None), "Principal", "{uri}");
        }
    }

    #[test]
    fn refusals_are_401_with_a_challenge_or_403() {
        let response = Refusal::Rejected(Rejection::Expired)
            .into_problem()
            .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            response.headers()[header::WWW_AUTHENTICATE],
            "Bearer error=\"invalid_token\""
        );
        let response = Refusal::Denied(Denial::CredentialsRequired)
            .into_problem()
            .into_response();
        assert_eq!(response.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(response.headers()[header::WWW_AUTHENTICATE], "Bearer");
        let response = Refusal::Denied(Denial::NotGranted)
            .into_problem()
            .into_response();
        assert_eq!(response.status(), StatusCode::FORBIDDEN);
        assert!(!response.headers().contains_key(header::WWW_AUTHENTICATE));
        assert_eq!(
            response.headers()[header::CONTENT_TYPE],
            "application/problem+json"
        );
    }
}
