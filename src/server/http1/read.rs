//! Reads from the socket through a stack buffer, so that a read that
//! finds nothing leaves nothing allocated.

use std::io;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, ReadBuf};

/// Bytes read from the socket at a time (into a stack buffer).
const READ_CHUNK: usize = 16 * 1024;

/// Reads what is available into `buffer` (grown to fit exactly what
/// arrived): the number of bytes, 0 at end of file.
pub(super) fn poll_read_some<I: AsyncRead + Unpin>(
    io: &mut I,
    buffer: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    poll_read_chunk(io, cx, |bytes| buffer.extend_from_slice(bytes))
}

/// Reads and drops what is available.
pub(super) fn poll_read_discard<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
) -> Poll<io::Result<usize>> {
    poll_read_chunk(io, cx, |_| {})
}

/// Reads what is available into a stack buffer and hands it to `take`:
/// nothing stays allocated for a read that finds no data.
fn poll_read_chunk<I: AsyncRead + Unpin>(
    io: &mut I,
    cx: &mut Context<'_>,
    take: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
    let mut read = ReadBuf::uninit(&mut stack);
    ready!(Pin::new(io).poll_read(cx, &mut read))?;
    let filled = read.filled();
    take(filled);
    Poll::Ready(Ok(filled.len()))
}
