//! The request-head deadline: a stream wrapper under the HTTP/1 parser that closes slow
//! senders (slowloris) and carries the wait between keep-alive requests.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::protocols::{SocketDigest, TimingDigest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// Where a connection is in its request/response cycle, for the head deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head: the deadline runs.
    Head,
    /// The head arrived; the body and the response follow (no deadline).
    Body,
    /// A response was written; the next byte read starts the next head.
    Idle,
    /// HTTP/2 (or another binary protocol): no head deadline.
    Off,
}

/// A stream that fails reads with `TimedOut` when a request head takes longer than the
/// deadline to arrive in full: from the connection's start for the first request, from the
/// first read that finds a keep-alive request's head incomplete for the others. The head's end
/// is found by scanning for the empty line (`\n\r\n` or `\n\n`, `memchr`), only while a
/// head is being read.
#[derive(Debug)]
pub(super) struct HeadDeadline {
    inner: Stream,
    timeout: Duration,
    phase: Phase,
    /// The last two bytes of the head read so far (the empty line may straddle reads).
    tail: [u8; 2],
    /// The head's clock is running (`deadline` is when it runs out).
    armed: bool,
    deadline: Instant,
    /// No byte was read yet (an HTTP/2 preface turns the deadline off).
    first: bool,
    /// The timer, only while a read waits on an incomplete head (an idle connection holds
    /// none).
    sleep: Option<Pin<Box<Sleep>>>,
    /// Bytes read while waiting for a request ([`Self::await_bytes`]), served to the next
    /// reads before the socket; `pending_at` is how many were served.
    pending: Vec<u8>,
    pending_at: usize,
}

/// How much of a request the wait between requests reads: most request heads arrive whole
/// in one read of this size, so the parser's first read is served without a system call.
const FIRST_READ: usize = 512;

impl HeadDeadline {
    /// `timeout` zero: no deadline (the wrapper still carries the wait between requests).
    pub(super) fn new(inner: Stream, timeout: Duration) -> Self {
        Self {
            inner,
            timeout,
            phase: if timeout.is_zero() {
                Phase::Off
            } else {
                Phase::Head
            },
            tail: [0, 0],
            armed: true,
            deadline: Instant::now() + timeout,
            first: true,
            sleep: None,
            pending: Vec::new(),
            pending_at: 0,
        }
    }

    /// Reads the first bytes of the next request (through the deadline's bookkeeping) and keeps
    /// them for the next reads; 0 at the end of the stream.
    pub(super) async fn await_bytes(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        // Read into the spare capacity of the buffer that is then kept (no zeroing, no copy);
        // the next reads drain and free it, so an idle connection still holds none.
        let mut first = Vec::with_capacity(FIRST_READ);
        let n = self.read_buf(&mut first).await?;
        self.pending = first;
        self.pending_at = 0;
        Ok(n)
    }

    /// A response is being written: the next bytes read start the next request head. An
    /// informational response (`100 Continue`) is not the end of the exchange: the request
    /// body follows it.
    fn wrote(&mut self, bytes: &[u8]) {
        let informational = bytes.starts_with(b"HTTP/1.1 1") || bytes.starts_with(b"HTTP/1.0 1");
        if self.phase == Phase::Body && !informational {
            self.phase = Phase::Idle;
        }
    }

    fn saw(&mut self, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        if std::mem::take(&mut self.first) && bytes.starts_with(b"PRI * HTTP/2") {
            self.phase = Phase::Off;
            return;
        }
        if self.phase == Phase::Idle {
            // The clock starts when a read finds the rest of the head missing (`arm`): a
            // head that arrives whole, the common case, never touches the timer.
            self.phase = Phase::Head;
            self.armed = false;
            self.tail = [0, 0];
        }
        if self.phase != Phase::Head {
            return;
        }
        if head_ends(self.tail, bytes) {
            self.phase = Phase::Body;
            self.sleep = None;
            return;
        }
        self.tail = match bytes {
            [.., a, b] => [*a, *b],
            [b] => [self.tail[1], *b],
            [] => self.tail,
        };
    }

    /// Starts the head's clock if it is not running: now, for a keep-alive request whose first
    /// bytes came without the rest.
    fn arm(&mut self) {
        if !self.armed {
            self.armed = true;
            self.deadline = Instant::now() + self.timeout;
        }
    }
}

/// Whether `bytes` (after `tail`, the two bytes before them) hold the empty line that ends a
/// head: `\n\n` or `\n\r\n`.
fn head_ends(tail: [u8; 2], bytes: &[u8]) -> bool {
    let at = |i: usize, back: usize| -> u8 {
        match i.checked_sub(back) {
            Some(j) => bytes.get(j).copied().unwrap_or(0),
            None => tail.get(2 + i - back).copied().unwrap_or(0),
        }
    };
    memchr::memchr_iter(b'\n', bytes).any(|p| {
        let prev = at(p, 1);
        prev == b'\n' || (prev == b'\r' && at(p, 2) == b'\n')
    })
}

fn head_timeout() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "the request head did not arrive in time",
    )
}

impl AsyncRead for HeadDeadline {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.pending_at < this.pending.len() {
            // Already seen by the deadline's bookkeeping when they were read.
            let rest = &this.pending[this.pending_at..];
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.pending_at += n;
            if this.pending_at == this.pending.len() {
                this.pending = Vec::new();
                this.pending_at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                if matches!(this.phase, Phase::Head | Phase::Idle) {
                    this.saw(buf.filled().get(before..).unwrap_or_default());
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.phase != Phase::Head {
                    return Poll::Pending;
                }
                this.arm();
                let deadline = this.deadline;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    crate::metrics::metrics().edge_refusal("header_timeout");
                    return Poll::Ready(Err(head_timeout()));
                }
                Poll::Pending
            }
        }
    }
}

impl AsyncWrite for HeadDeadline {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote(buf);
        }
        r
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            this.wrote(
                bufs.iter()
                    .find(|b| !b.is_empty())
                    .map_or(&[][..], |b| &b[..]),
            );
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[async_trait]
impl Shutdown for HeadDeadline {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(&mut *self.inner).await;
    }
}

impl UniqueID for HeadDeadline {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for HeadDeadline {
    fn get_ssl(&self) -> Option<&pingora::protocols::tls::TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for HeadDeadline {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for HeadDeadline {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }

    fn set_proxy_digest(&mut self, digest: ProxyDigest) {
        self.inner.set_proxy_digest(digest);
    }
}

impl GetSocketDigest for HeadDeadline {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }

    fn set_socket_digest(&mut self, digest: SocketDigest) {
        self.inner.set_socket_digest(digest);
    }
}

#[async_trait]
impl Peek for HeadDeadline {
    /// pingora peeks for the HTTP/2 preface on h2c listeners; a client that sends less and
    /// waits is held to the head deadline too.
    async fn try_peek(&mut self, buf: &mut [u8]) -> io::Result<bool> {
        if self.phase != Phase::Head {
            return self.inner.try_peek(buf).await;
        }
        self.arm();
        let deadline = self.deadline;
        match tokio::time::timeout_at(deadline, self.inner.try_peek(buf)).await {
            Ok(r) => r,
            Err(_) => {
                crate::metrics::metrics().edge_refusal("header_timeout");
                Err(head_timeout())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::head_ends;

    #[test]
    fn the_empty_line_is_found_across_reads() {
        assert!(head_ends([0, 0], b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"));
        assert!(head_ends([0, 0], b"GET / HTTP/1.1\nHost: a\n\n"));
        assert!(!head_ends([0, 0], b"GET / HTTP/1.1\r\nHost: a\r\n"));
        assert!(head_ends([b'\r', b'\n'], b"\r\n"));
        assert!(head_ends([b'a', b'\n'], b"\n"));
        assert!(head_ends([b'\n', b'\r'], b"\n"));
        assert!(!head_ends([b'a', b'\r'], b"\n"));
        assert!(
            !head_ends([0, 0], b"\n"),
            "a stray newline at the start is no empty line"
        );
    }
}
