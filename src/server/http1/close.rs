//! The last steps of a connection: shut the write side down, then, when
//! the client may still be sending, read and drop its bytes for a moment.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use http::{Request, Response};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Sleep, sleep};
use tower::Service;

use super::read::poll_read_discard;
use super::{Connection, Phase, Step};

/// How long a closing connection keeps reading what the client still
/// sends, so that closing with unread input does not reset the connection
/// before the client has read the answer.
const LINGER: Duration = Duration::from_secs(1);
/// Most bytes read and dropped while lingering.
const LINGER_BYTES: usize = 256 * 1024;

/// The last steps of a connection.
pub(super) struct Closing {
    shut_down: bool,
    /// While set, what the client still sends is read and dropped.
    linger: Option<Pin<Box<Sleep>>>,
    discarded: usize,
}

impl Closing {
    /// Closing without an answer just sent (idle, drained).
    pub(super) fn quiet() -> Self {
        Self {
            shut_down: false,
            linger: None,
            discarded: 0,
        }
    }

    /// Closing after an answer; with `unread` input, lingering a moment so
    /// the client reads the answer before the connection goes.
    pub(super) fn lingering(unread: bool) -> Self {
        Self {
            shut_down: false,
            linger: unread.then(|| Box::pin(sleep(LINGER))),
            discarded: 0,
        }
    }
}

impl<I, S> Connection<I, S>
where
    I: AsyncRead + AsyncWrite + Unpin,
    S: Service<Request<Body>, Response = Response<Body>, Error = Infallible>,
    S::Future: Unpin,
{
    pub(super) fn poll_close(&mut self, cx: &mut Context<'_>) -> Step {
        let Phase::Close(closing) = &mut self.phase else {
            return Step::Again;
        };
        if !closing.shut_down {
            match Pin::new(&mut self.io).poll_shutdown(cx) {
                Poll::Ready(_) => closing.shut_down = true,
                Poll::Pending => return Step::Wait,
            }
        }
        if let Some(timer) = &mut closing.linger {
            loop {
                if closing.discarded >= LINGER_BYTES || timer.as_mut().poll(cx).is_ready() {
                    break;
                }
                match poll_read_discard(&mut self.io, cx) {
                    Poll::Ready(Ok(n)) if n > 0 => closing.discarded += n,
                    Poll::Ready(_) => break,
                    Poll::Pending => return Step::Wait,
                }
            }
        }
        self.phase = Phase::Done;
        Step::Wait
    }
}
