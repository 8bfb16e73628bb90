//! The reserved `{base}/__ds/` routes (spec §6–7), each an axum route with
//! extractors, over the subscription manager:
//!
//! | method | path | |
//! | --- | --- | --- |
//! | `GET` | `__ds/jwks.json` | the webhook signing keys (`application/jwk-set+json`) |
//! | `PUT`, `GET`, `DELETE` | `__ds/subscriptions/{id}` | create or confirm, read, delete |
//! | `POST` | `__ds/subscriptions/{id}/streams` | link explicit streams |
//! | `DELETE` | `__ds/subscriptions/{id}/streams/{name}` | unlink a stream (name percent-encoded) |
//! | `POST` | `__ds/subscriptions/{id}/callback` | webhook acks (Bearer callback token) |
//! | `POST` | `__ds/subscriptions/{id}/claim` | pull-wake: take the lease |
//! | `POST` | `__ds/subscriptions/{id}/ack` | pull-wake: ack, optionally done (Bearer lease token) |
//! | `POST` | `__ds/subscriptions/{id}/release` | pull-wake: give the lease back |
//!
//! Every refusal is a [`SubscriptionError`], mapped here, once, to a problem
//! answer whose `error` member carries the protocol's `code`.

use std::collections::HashMap;
use std::future::Ready;

use axum::Router;
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, OriginalUri, Path, Request, State};
use axum::handler::Handler;
use axum::http::request::Parts;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodFilter, MethodRouter, any, delete, get, post};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::problem::ApiError;
use super::stream::PublicOrigin;
use crate::subscriptions::model::{Kind, PutBody};
use crate::subscriptions::wire::{AckAnswer, AckBody, ClaimBody, ReleaseBody, StreamsBody};
use crate::subscriptions::{PutOutcome, SubscriptionError, Subscriptions};

/// The control routes under `base` (the streams' mount path), for a router
/// whose state is `S`.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>(
    base: &str,
    subscriptions: Subscriptions,
) -> Router<S> {
    let control = format!("{base}/__ds");
    let at = |path: &str| format!("{control}/subscriptions{path}");
    // `GET` also answers `HEAD` in axum; here `HEAD` of a subscription is
    // refused like any other method it does not take.
    let one = || {
        get(read)
            .put(put)
            .delete(remove)
            .on(MethodFilter::HEAD, refuse("GET, PUT, DELETE"))
            .fallback(refuse("GET, PUT, DELETE"))
    };
    Router::new()
        .route(
            &format!("{control}/jwks.json"),
            get(jwks).fallback(refuse("GET, HEAD")),
        )
        // Without an id (or with a trailing `/`) the id is empty, and
        // refused as such.
        .route(&at("/"), one())
        .route(&at("/{id}"), one())
        .route(&at("/{id}/"), one())
        .route(&at("/{id}/streams"), only_post(link))
        .route(
            &at("/{id}/streams/{*name}"),
            delete(unlink).fallback(refuse("DELETE")),
        )
        .route(&at("/{id}/callback"), only_post(acknowledge::<true>))
        .route(&at("/{id}/ack"), only_post(acknowledge::<false>))
        .route(&at("/{id}/claim"), only_post(claim))
        .route(&at("/{id}/release"), only_post(release))
        .route(&format!("{control}/{{*rest}}"), any(no_such_api))
        .with_state(subscriptions)
}

/// A route that takes `POST` only.
fn only_post<H, T>(handler: H) -> MethodRouter<Subscriptions>
where
    H: Handler<T, Subscriptions>,
    T: 'static,
{
    post(handler).fallback(refuse("POST"))
}

// ---------------------------------------------------------------------------
// Extractors
// ---------------------------------------------------------------------------

/// Where the request's streams live: the full path prefix before `__ds/`
/// (including any prefix the router is nested under), and the same as an
/// absolute URL for the callback and JWKS links of webhooks.
struct ControlRoot {
    root: String,
    public_root: String,
}

impl<S: Send + Sync> FromRequestParts<S> for ControlRoot {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let full = parts
            .extensions
            .get::<OriginalUri>()
            .map_or_else(|| parts.uri.path(), |uri| uri.0.path());
        let at = full.find("/__ds/").ok_or_else(not_found)?;
        let root = full[..=at].to_owned();
        let origin = PublicOrigin::of(&parts.extensions, &parts.headers, &parts.uri);
        let public_root = match origin.origin() {
            Some(origin) => format!("{origin}{root}"),
            None => root.clone(),
        };
        Ok(Self { root, public_root })
    }
}

/// The route's `{id}` and `{*name}`, percent-decoded; empty when absent.
#[derive(Default)]
struct Target {
    id: String,
    name: String,
}

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        match Path::<HashMap<String, String>>::from_request_parts(parts, state).await {
            Ok(Path(mut params)) => Ok(Self {
                id: params.remove("id").unwrap_or_default(),
                name: params.remove("name").unwrap_or_default(),
            }),
            Err(PathRejection::MissingPathParams(_)) => Ok(Self::default()),
            Err(_) => Err(SubscriptionError::InvalidRequest("path is not UTF-8".into()).into()),
        }
    }
}

/// The `Authorization: Bearer` token, if any.
struct Bearer(Option<String>);

impl<S: Send + Sync> FromRequestParts<S> for Bearer {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.trim().split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, token)| token.trim().to_owned())
            .filter(|token| !token.is_empty());
        Ok(Self(token))
    }
}

/// A JSON body of at most `max_body_bytes`, whatever its `Content-Type`
/// says (the APIs never required one).
struct ControlJson<T>(T);

impl<T: DeserializeOwned> FromRequest<Subscriptions> for ControlJson<T> {
    type Rejection = ApiError;

    async fn from_request(request: Request, subs: &Subscriptions) -> Result<Self, ApiError> {
        let limit = subs.settings().max_body_bytes;
        let collected = Limited::new(request.into_body(), limit)
            .collect()
            .await
            .map_err(|error| {
                if error.downcast_ref::<LengthLimitError>().is_some() {
                    SubscriptionError::BodyTooLarge(limit)
                } else {
                    SubscriptionError::InvalidRequest("the body could not be read".into())
                }
            })?
            .to_bytes();
        serde_json::from_slice(&collected)
            .map(Self)
            .map_err(|error| {
                SubscriptionError::InvalidRequest(format!("invalid JSON body: {error}")).into()
            })
    }
}

// ---------------------------------------------------------------------------
// Handlers
// ---------------------------------------------------------------------------

type Answer = Result<Response, ApiError>;

async fn jwks(State(subs): State<Subscriptions>) -> Answer {
    subs.ready().await?;
    let key = subs.signing_key()?;
    let mut response = json(StatusCode::OK, &key.jwks());
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/jwk-set+json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("public, max-age=300"),
    );
    Ok(response)
}

async fn read(State(subs): State<Subscriptions>, at: ControlRoot, target: Target) -> Answer {
    Ok(json(StatusCode::OK, &subs.get(&at.root, &target.id).await?))
}

async fn put(
    State(subs): State<Subscriptions>,
    at: ControlRoot,
    target: Target,
    ControlJson(body): ControlJson<PutBody>,
) -> Answer {
    Ok(
        match subs
            .put(&at.root, &at.public_root, &target.id, body)
            .await?
        {
            PutOutcome::Created(view) => json(StatusCode::CREATED, &view),
            PutOutcome::Confirmed(view) => json(StatusCode::OK, &view),
        },
    )
}

async fn remove(State(subs): State<Subscriptions>, at: ControlRoot, target: Target) -> Answer {
    subs.delete(&at.root, &target.id).await?;
    Ok(no_content())
}

async fn link(
    State(subs): State<Subscriptions>,
    at: ControlRoot,
    target: Target,
    ControlJson(body): ControlJson<StreamsBody>,
) -> Answer {
    subs.add_streams(&at.root, &target.id, body.streams).await?;
    Ok(no_content())
}

async fn unlink(State(subs): State<Subscriptions>, at: ControlRoot, target: Target) -> Answer {
    if target.name.is_empty() {
        return Err(not_found());
    }
    subs.remove_stream(&at.root, &target.id, &target.name)
        .await?;
    Ok(no_content())
}

/// `POST …/callback` (`WEBHOOK`) and `POST …/ack` (pull-wake): the same
/// protocol on the two kinds of subscription.
async fn acknowledge<const WEBHOOK: bool>(
    State(subs): State<Subscriptions>,
    at: ControlRoot,
    target: Target,
    Bearer(bearer): Bearer,
    ControlJson(body): ControlJson<AckBody>,
) -> Answer {
    let kind = if WEBHOOK {
        Kind::Webhook
    } else {
        Kind::PullWake
    };
    let next_wake = subs
        .ack(&at.root, &target.id, kind, bearer.as_deref(), body)
        .await?;
    Ok(json(
        StatusCode::OK,
        &AckAnswer {
            next_wake,
            ok: true,
        },
    ))
}

async fn claim(
    State(subs): State<Subscriptions>,
    at: ControlRoot,
    target: Target,
    ControlJson(body): ControlJson<ClaimBody>,
) -> Answer {
    Ok(
        match subs.claim(&at.root, &target.id, &body.worker).await? {
            Some(claimed) => json(StatusCode::OK, &claimed),
            None => no_content(),
        },
    )
}

async fn release(
    State(subs): State<Subscriptions>,
    at: ControlRoot,
    target: Target,
    Bearer(bearer): Bearer,
    ControlJson(body): ControlJson<ReleaseBody>,
) -> Answer {
    subs.release(
        &at.root,
        &target.id,
        bearer.as_deref(),
        &body.wake_id,
        body.generation,
    )
    .await?;
    Ok(no_content())
}

async fn no_such_api() -> ApiError {
    not_found()
}

/// A handler refusing the methods a route does not take (RFC 9110
/// §15.5.6: the answer lists the allowed ones).
fn refuse(allow: &'static str) -> impl Fn() -> Ready<ApiError> + Clone + Send + Sync + 'static {
    move || {
        std::future::ready(
            ApiError::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "METHOD_NOT_ALLOWED",
                "method not allowed",
            )
            .with_header(header::ALLOW, allow),
        )
    }
}

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such control API")
}

fn json(status: StatusCode, value: &impl Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap_or_default();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

fn no_content() -> Response {
    let mut response = StatusCode::NO_CONTENT.into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// The status of each refusal.
fn status(error: &SubscriptionError) -> StatusCode {
    use SubscriptionError as E;
    match error {
        E::InvalidRequest(_)
        | E::InvalidId(_)
        | E::InvalidPattern(_)
        | E::InvalidStream(_)
        | E::InvalidLease { .. }
        | E::WebhookUrlRejected(_)
        | E::InvalidOffset(_) => StatusCode::BAD_REQUEST,
        E::NotFound => StatusCode::NOT_FOUND,
        E::Exists | E::Fenced | E::AlreadyClaimed { .. } | E::WrongType(_) => StatusCode::CONFLICT,
        E::TooMany(_) => StatusCode::TOO_MANY_REQUESTS,
        E::Unauthorized => StatusCode::UNAUTHORIZED,
        E::Unavailable(_) | E::Storage(_) => StatusCode::SERVICE_UNAVAILABLE,
        E::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
    }
}

impl From<SubscriptionError> for ApiError {
    fn from(error: SubscriptionError) -> Self {
        if let SubscriptionError::Storage(storage) = error {
            // Storage failures answer like everywhere else (503/507/500).
            return ApiError::from(storage);
        }
        let code = error.code();
        let message = error.to_string();
        let mut detail = serde_json::json!({ "code": code, "message": message });
        if let SubscriptionError::AlreadyClaimed { holder } = &error {
            detail["current_holder"] = serde_json::Value::from(holder.clone());
        }
        let mut api = ApiError::new(status(&error), code, message).with_extension("error", detail);
        if matches!(error, SubscriptionError::Unauthorized) {
            api = api.with_header(header::WWW_AUTHENTICATE, "Bearer");
        }
        if matches!(error, SubscriptionError::Unavailable(_)) {
            api = api.with_header(header::RETRY_AFTER, 1);
        }
        api
    }
}
