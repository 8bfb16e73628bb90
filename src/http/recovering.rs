//! The router the binary serves while its store opens behind listeners
//! that are already bound: `/healthz` answers `200` (the process makes
//! progress, so the kubelet keeps it), `/readyz` `503` with the reason
//! `recovering`, the metrics endpoint when this listener serves it, and
//! every other request `503` with `Retry-After` as problem+json.

use axum::Router;
use axum::http::{StatusCode, header};

use super::problem::ApiError;
use crate::metrics::MetricsHandle;
use crate::shutdown::Readiness;

/// Seconds a client is told to wait: recovery takes seconds, not
/// milliseconds.
const RETRY_AFTER_SECS: u32 = 2;

/// The router served until the store is open; `metrics` is the handle and
/// path when this listener serves the metrics endpoint.
pub(crate) fn routes(
    readiness: Readiness,
    metrics: Option<(&'static MetricsHandle, &str)>,
) -> Router {
    let probes = match metrics {
        Some((handle, path)) => super::metrics_listener(handle, path, readiness),
        None => super::probe_routes(readiness),
    };
    probes.fallback(|| async {
        ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "RECOVERING",
            "the server is opening its storage; retry shortly",
        )
        .with_header(header::RETRY_AFTER, RETRY_AFTER_SECS)
    })
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;

    async fn answer(router: &Router, uri: &str) -> (StatusCode, Option<String>, String) {
        let request = Request::builder()
            .method("POST")
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let response = router.clone().oneshot(request).await.expect("infallible");
        let status = response.status();
        let retry = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let body = axum::body::to_bytes(response.into_body(), 1 << 16)
            .await
            .expect("body");
        (status, retry, String::from_utf8_lossy(&body).into_owned())
    }

    #[tokio::test]
    async fn probes_answer_and_streams_are_asked_to_retry() {
        let readiness = Readiness::recovering();
        readiness.set_ready(true);
        let router = routes(readiness.clone(), None);
        let get = |uri: &str| {
            Request::builder()
                .uri(uri.to_owned())
                .body(Body::empty())
                .expect("request")
        };
        let health = router.clone().oneshot(get("/healthz")).await.expect("ok");
        assert_eq!(health.status(), StatusCode::OK);
        let ready = router.clone().oneshot(get("/readyz")).await.expect("ok");
        assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
        let body = axum::body::to_bytes(ready.into_body(), 1024)
            .await
            .expect("body");
        assert_eq!(&body[..], b"recovering");
        let (status, retry, body) = answer(&router, "/v1/stream/a").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(retry.as_deref(), Some("2"));
        assert!(body.contains("\"RECOVERING\""), "{body}");
        readiness.recovered();
        assert!(readiness.is_ready());
    }
}
