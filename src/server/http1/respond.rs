//! The response being written: its body framing and the bytes queued for
//! the socket, which are dropped as soon as they are written.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use axum::body::Body;
use bytes::{Buf, Bytes};
use http_body::Body as _;
use tokio::io::AsyncWrite;

use super::encode::{ChunkLine, Exchange, Framing};

/// A response on its way out.
pub(super) struct Respond {
    pub(super) body: Body,
    pub(super) framing: Framing,
    /// Bytes still owed under `Content-Length`.
    pub(super) remaining: u64,
    pub(super) out: Outgoing,
    /// The body has ended (or is not sent).
    pub(super) finished: bool,
    /// Written bytes may sit in a buffer of the stream (TLS).
    pub(super) needs_flush: bool,
}

/// Bytes queued for the socket, in order: head, chunk line, data, tail.
pub(super) struct Outgoing {
    pub(super) head: Vec<u8>,
    pub(super) head_sent: usize,
    pub(super) line: ChunkLine,
    pub(super) data: Bytes,
    pub(super) tail: &'static [u8],
}

impl Respond {
    /// Queues a data frame of the body.
    ///
    /// # Errors
    /// When it goes past the `Content-Length`.
    pub(super) fn stage(&mut self, data: Bytes, exchange: &mut Exchange) -> Result<(), ()> {
        if data.is_empty() {
            return Ok(());
        }
        match self.framing {
            Framing::None => {}
            Framing::Length(_) => {
                let length = data.len() as u64;
                if length > self.remaining {
                    return Err(());
                }
                self.remaining -= length;
                self.out.data = data;
                self.finished = self.remaining == 0;
            }
            Framing::Chunked => {
                self.out.line = ChunkLine::new(data.len());
                self.out.data = data;
                if self.body.is_end_stream() {
                    self.out.tail = b"\r\n0\r\n\r\n";
                    self.finished = true;
                } else {
                    self.out.tail = b"\r\n";
                }
            }
            Framing::CloseDelimited => {
                exchange.keep_alive = false;
                self.out.data = data;
            }
        }
        Ok(())
    }

    /// The body has ended.
    ///
    /// # Errors
    /// When it ended short of its `Content-Length`.
    pub(super) fn end(&mut self) -> Result<(), ()> {
        self.finished = true;
        match self.framing {
            Framing::Chunked => self.out.tail = b"0\r\n\r\n",
            Framing::Length(_) if self.remaining > 0 => return Err(()),
            _ => {}
        }
        Ok(())
    }
}

impl Outgoing {
    /// Whether the last body frame (line, data, tail) is written.
    pub(super) fn body_part_sent(&self) -> bool {
        self.line.as_bytes().is_empty() && self.data.is_empty() && self.tail.is_empty()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.head_sent == self.head.len() && self.body_part_sent()
    }

    /// Writes everything queued, in as few calls as the stream allows.
    pub(super) fn poll_write<I: AsyncWrite + Unpin>(
        &mut self,
        io: &mut I,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<()>> {
        while !self.is_empty() {
            let slices = [
                io::IoSlice::new(&self.head[self.head_sent..]),
                io::IoSlice::new(self.line.as_bytes()),
                io::IoSlice::new(&self.data),
                io::IoSlice::new(self.tail),
            ];
            let written = ready!(Pin::new(&mut *io).poll_write_vectored(cx, &slices))?;
            if written == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.advance(written);
        }
        if self.head.capacity() > 0 {
            // The head is out: its buffer is not kept while the body streams.
            self.head = Vec::new();
            self.head_sent = 0;
        }
        // A `Bytes` advanced to its end still holds its allocation: a live
        // response waiting for its next event would keep the last one.
        self.data = Bytes::new();
        Poll::Ready(Ok(()))
    }

    pub(super) fn advance(&mut self, mut count: usize) {
        let head = (self.head.len() - self.head_sent).min(count);
        self.head_sent += head;
        count -= head;
        let line = self.line.as_bytes().len().min(count);
        self.line.advance(line);
        count -= line;
        let data = self.data.len().min(count);
        self.data.advance(data);
        count -= data;
        let tail = self.tail.len().min(count);
        self.tail = &self.tail[tail..];
    }
}
