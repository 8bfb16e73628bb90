//! Answers decided after the router's future has returned.
//!
//! A long-poll may wait minutes for data. Waiting inside the router's
//! future keeps that whole chain (the request middleware, the route, the
//! handler) allocated for every waiting client: several KB each. Instead,
//! when the connection can take it, the handler returns a placeholder
//! response that carries the small future which waits and then produces
//! the real answer ([`later`]). Each middleware on the way out attaches
//! what it does with a response to that future ([`then`], [`around`])
//! rather than doing it to the placeholder, and the connection drops the
//! router's futures, awaits the carried one on its own and sends what it
//! yields. The answer, its headers, the request's metrics and log line are
//! the same as if the chain had waited; only the memory held is smaller.
//!
//! Only a connection that says so ([`TakesLater`] in the request's
//! extensions: the lean HTTP/1.1 engine) gets placeholders. Everywhere
//! else (hyper, HTTP/2, an embedder serving the router with `axum::serve`)
//! a handler awaits the same future inline.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Body;
use axum::response::Response;

/// The future that produces a deferred answer.
pub(crate) type Wait = Pin<Box<dyn Future<Output = Response> + Send>>;

/// In a request's extensions: its connection takes placeholders and
/// awaits their answers itself (see the [module docs](self)).
#[derive(Clone, Copy, Debug)]
pub(crate) struct TakesLater;

/// In a placeholder's extensions: the future of its answer, until taken.
/// (Extensions must be `Clone` and `Sync`, hence the shared slot.)
#[derive(Clone)]
struct Later(Arc<Mutex<Option<Wait>>>);

/// Whether `request` may be answered with a placeholder.
pub(crate) fn takes_later(extensions: &axum::http::Extensions) -> bool {
    extensions.get::<TakesLater>().is_some()
}

/// Whether `response` is a placeholder.
pub(crate) fn is_later(response: &Response) -> bool {
    response.extensions().get::<Later>().is_some()
}

/// A placeholder whose answer is what `wait` produces.
pub(crate) fn later(wait: impl Future<Output = Response> + Send + 'static) -> Response {
    let mut placeholder = Response::new(Body::empty());
    placeholder
        .extensions_mut()
        .insert(Later(Arc::new(Mutex::new(Some(Box::pin(wait))))));
    placeholder
}

/// The future of the answer, when `response` is a placeholder (which is
/// then spent).
pub(crate) fn take(response: &mut Response) -> Option<Wait> {
    let later = response.extensions_mut().remove::<Later>()?;
    let mut slot = later.0.lock().unwrap_or_else(PoisonError::into_inner);
    slot.take()
}

/// `response` with `wrap` put around the future of its answer when it is
/// a placeholder; any other response as it is.
pub(crate) fn around<F, Fut>(response: Response, wrap: F) -> Response
where
    F: FnOnce(Wait) -> Fut,
    Fut: Future<Output = Response> + Send + 'static,
{
    if let Some(later) = response.extensions().get::<Later>() {
        let mut slot = later.0.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(wait) = slot.take() {
            *slot = Some(Box::pin(wrap(wait)));
        }
    }
    response
}

/// `finish` applied to the answer: to `response` now, or to a
/// placeholder's answer once it is produced.
pub(crate) fn then<F>(response: Response, finish: F) -> Response
where
    F: FnOnce(Response) -> Response + Send + 'static,
{
    if is_later(&response) {
        around(response, |wait| async move { finish(wait.await) })
    } else {
        finish(response)
    }
}

#[cfg(test)]
mod tests {
    use axum::http::{HeaderValue, StatusCode};

    use super::*;

    fn answer(status: StatusCode) -> Response {
        let mut response = Response::new(Body::empty());
        *response.status_mut() = status;
        response
    }

    fn tag(step: &'static str) -> impl FnOnce(Response) -> Response + Send + 'static {
        move |mut response| {
            response
                .headers_mut()
                .append("x-step", HeaderValue::from_static(step));
            response
        }
    }

    fn steps(response: &Response) -> Vec<&str> {
        response
            .headers()
            .get_all("x-step")
            .iter()
            .map(|value| value.to_str().unwrap_or("?"))
            .collect()
    }

    #[tokio::test]
    async fn a_placeholder_answers_with_its_finishers_applied_inside_out() {
        let response = later(async { answer(StatusCode::NO_CONTENT) });
        let response = then(response, tag("inner"));
        let response = around(response, |wait| async move {
            let mut response = wait.await;
            response
                .headers_mut()
                .append("x-step", HeaderValue::from_static("around"));
            response
        });
        let mut response = then(response, tag("outer"));
        assert!(steps(&response).is_empty(), "the placeholder is untouched");
        let wait = take(&mut response).expect("a placeholder");
        assert!(take(&mut response).is_none(), "taken once");
        let answer = wait.await;
        assert_eq!(answer.status(), StatusCode::NO_CONTENT);
        assert_eq!(steps(&answer), ["inner", "around", "outer"]);
    }

    #[tokio::test]
    async fn an_answer_is_finished_at_once() {
        let response = then(answer(StatusCode::OK), tag("now"));
        let mut response = around(response, |_| async { answer(StatusCode::GONE) });
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(steps(&response), ["now"]);
        assert!(take(&mut response).is_none());
    }

    #[test]
    fn only_marked_requests_take_placeholders() {
        let mut extensions = axum::http::Extensions::new();
        assert!(!takes_later(&extensions));
        extensions.insert(TakesLater);
        assert!(takes_later(&extensions));
    }
}
