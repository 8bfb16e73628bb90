//! Handlers of the reserved `{base}/__ds/` routes:
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

use axum::extract::{OriginalUri, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::LengthLimitError;
use http_body_util::{BodyExt, Limited};
use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use super::error::SubscriptionError;
use super::manager::{AckBody, PutOutcome, ReleaseBody, Subscriptions};
use super::model::{Kind, PutBody};
use crate::http::PublicOrigin;
use crate::http::problem::ApiError;

/// Routes a request under `__ds/`.
pub async fn dispatch(State(subs): State<Subscriptions>, request: Request) -> Response {
    match route(&subs, request).await {
        Ok(response) => response,
        Err(error) => error.into_response(),
    }
}

fn json_response(status: StatusCode, value: &Value) -> Response {
    let mut response = (status, value.to_string()).into_response();
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

fn not_found() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "NOT_FOUND", "no such control API")
}

fn method_not_allowed(allow: &'static str) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "METHOD_NOT_ALLOWED",
        "method not allowed",
    )
    .with_header(header::ALLOW, allow)
}

fn decode(segment: &str) -> Result<String, ApiError> {
    percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| SubscriptionError::InvalidRequest("path is not UTF-8".into()).into())
}

fn bearer(request: &Request) -> Option<String> {
    let value = request
        .headers()
        .get(header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_owned())
        .filter(|t| !t.is_empty())
}

async fn body<T: DeserializeOwned>(subs: &Subscriptions, request: Request) -> Result<T, ApiError> {
    let limit = subs.shared.settings.max_body_bytes;
    let collected = Limited::new(request.into_body(), limit)
        .collect()
        .await
        .map_err(|error| {
            let error = if error.downcast_ref::<LengthLimitError>().is_some() {
                SubscriptionError::BodyTooLarge(limit)
            } else {
                SubscriptionError::InvalidRequest("the body could not be read".into())
            };
            ApiError::from(error)
        })?
        .to_bytes();
    serde_json::from_slice(&collected)
        .map_err(|e| SubscriptionError::InvalidRequest(format!("invalid JSON body: {e}")).into())
}

async fn route(subs: &Subscriptions, request: Request) -> Result<Response, ApiError> {
    let full = request
        .extensions()
        .get::<OriginalUri>()
        .map_or_else(|| request.uri().path(), |uri| uri.0.path())
        .to_owned();
    let Some(at) = full.find("/__ds/") else {
        return Err(not_found());
    };
    let root = full[..=at].to_owned();
    let rest = full[at + "/__ds/".len()..].to_owned();
    let public_root = match PublicOrigin::of(&request).origin() {
        Some(origin) => format!("{origin}{root}"),
        None => root.clone(),
    };
    let method = request.method().clone();
    if rest == "jwks.json" {
        return match method {
            Method::GET | Method::HEAD => {
                subs.ready().await?;
                let key = subs.signing_key()?;
                let mut response = json_response(StatusCode::OK, &key.jwks());
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
            _ => Err(method_not_allowed("GET, HEAD")),
        };
    }
    let Some(after) = rest.strip_prefix("subscriptions/") else {
        return Err(not_found());
    };
    let (raw_id, action) = after.split_once('/').unwrap_or((after, ""));
    let id = decode(raw_id)?;
    match action {
        "" => match method {
            Method::PUT => {
                let put: PutBody = body(subs, request).await?;
                Ok(match subs.put(&root, &public_root, &id, put).await? {
                    PutOutcome::Created(view) => json_response(StatusCode::CREATED, &view),
                    PutOutcome::Confirmed(view) => json_response(StatusCode::OK, &view),
                })
            }
            Method::GET => Ok(json_response(StatusCode::OK, &subs.get(&root, &id).await?)),
            Method::DELETE => {
                subs.delete(&root, &id).await?;
                Ok(no_content())
            }
            _ => Err(method_not_allowed("GET, PUT, DELETE")),
        },
        "streams" => match method {
            Method::POST => {
                #[derive(serde::Deserialize)]
                struct Streams {
                    streams: Vec<String>,
                }
                let add: Streams = body(subs, request).await?;
                subs.add_streams(&root, &id, add.streams).await?;
                Ok(no_content())
            }
            _ => Err(method_not_allowed("POST")),
        },
        "callback" | "ack" => match method {
            Method::POST => {
                let kind = if action == "callback" {
                    Kind::Webhook
                } else {
                    Kind::PullWake
                };
                let token = bearer(&request);
                let ack: AckBody = body(subs, request).await?;
                let next_wake = subs.ack(&root, &id, kind, token.as_deref(), ack).await?;
                Ok(json_response(
                    StatusCode::OK,
                    &json!({ "ok": true, "next_wake": next_wake }),
                ))
            }
            _ => Err(method_not_allowed("POST")),
        },
        "claim" => match method {
            Method::POST => {
                #[derive(serde::Deserialize)]
                struct Claim {
                    worker: String,
                }
                let claim: Claim = body(subs, request).await?;
                Ok(match subs.claim(&root, &id, &claim.worker).await? {
                    Some(claimed) => json_response(StatusCode::OK, &claimed),
                    None => no_content(),
                })
            }
            _ => Err(method_not_allowed("POST")),
        },
        "release" => match method {
            Method::POST => {
                let token = bearer(&request);
                let release: ReleaseBody = body(subs, request).await?;
                subs.release(&root, &id, token.as_deref(), release).await?;
                Ok(no_content())
            }
            _ => Err(method_not_allowed("POST")),
        },
        other => match other.strip_prefix("streams/") {
            Some(name) if !name.is_empty() => match method {
                Method::DELETE => {
                    subs.remove_stream(&root, &id, &decode(name)?).await?;
                    Ok(no_content())
                }
                _ => Err(method_not_allowed("DELETE")),
            },
            _ => Err(not_found()),
        },
    }
}
