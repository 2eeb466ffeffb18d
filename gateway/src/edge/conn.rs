//! Per-connection protection in front of pingora's HTTP handling: the PROXY protocol header,
//! connection caps per listener and per client address, and a deadline for each request
//! head (slow senders are closed, nginx's `client_header_timeout`).

use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::io::{AsRawFd, RawFd};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::{HttpPersistentSettings, HttpServerApp, ServerApp};
use pingora::listeners::PreTlsProcess;
use pingora::protocols::http::ServerSession;
use pingora::protocols::l4::socket::SocketAddr as PingoraAddr;
use pingora::protocols::l4::stream::Stream as L4Stream;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::SslDigest;
use pingora::protocols::{GetProxyDigest, GetSocketDigest, GetTimingDigest};
use pingora::protocols::{Peek, Shutdown, Ssl, Stream, UniqueID, UniqueIDType, ALPN};
use pingora::protocols::{SocketDigest, TimingDigest};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::proxy_protocol;
use super::ListenerEdge;

/// Open connections per listener and per (listener, client address).
#[derive(Debug, Default)]
struct ConnCounts {
    per_listener: Mutex<HashMap<SocketAddr, Arc<AtomicUsize>>>,
    per_client: Mutex<HashMap<(SocketAddr, IpAddr), usize>>,
}

/// Holds one connection in its counts until dropped.
#[derive(Debug)]
struct ConnSlot {
    counts: Arc<ConnCounts>,
    listener: SocketAddr,
    listener_count: Arc<AtomicUsize>,
    client: Option<IpAddr>,
}

impl Drop for ConnSlot {
    fn drop(&mut self) {
        self.listener_count.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.client {
            if let Ok(mut map) = self.counts.per_client.lock() {
                let key = (self.listener, ip);
                if let Some(n) = map.get_mut(&key) {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        map.remove(&key);
                    }
                }
            }
        }
    }
}

/// Why a connection was refused before any request was read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refusal {
    ListenerFull,
    ClientFull,
}

impl ConnCounts {
    fn admit(
        self: &Arc<Self>,
        listener: SocketAddr,
        client: Option<IpAddr>,
        limits: &ConnLimits,
    ) -> Result<ConnSlot, Refusal> {
        let listener_count = {
            let mut map = self
                .per_listener
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            map.entry(listener).or_default().clone()
        };
        let now = listener_count.fetch_add(1, Ordering::AcqRel) + 1;
        let mut slot = ConnSlot {
            counts: self.clone(),
            listener,
            listener_count,
            client: None,
        };
        if limits.max_connections > 0 && now > limits.max_connections {
            return Err(Refusal::ListenerFull);
        }
        if let (Some(ip), true) = (client, limits.max_per_client > 0) {
            let mut map = self
                .per_client
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            let n = map.entry((listener, ip)).or_insert(0);
            if *n >= limits.max_per_client {
                return Err(Refusal::ClientFull);
            }
            *n += 1;
            slot.client = Some(ip);
        }
        Ok(slot)
    }
}

/// Where the connection layer reads a listener's live settings (the gateway's runtime
/// snapshot), so that a reload changes them for new connections.
pub(crate) trait ListenerSettings: Send + Sync + 'static {
    /// Calls `f` with the settings of the listener bound to `local`.
    fn with_listener<R>(&self, local: Option<SocketAddr>, f: impl FnOnce(&ListenerEdge) -> R) -> R;
}

/// What the connection layer needs of a listener's settings.
#[derive(Debug, Clone, Copy)]
struct ConnLimits {
    proxy_protocol: bool,
    /// Time for the PROXY header.
    header_deadline: Duration,
    /// Time for each request head (0: none).
    head_timeout: Duration,
    max_connections: usize,
    max_per_client: usize,
}

impl ConnLimits {
    fn of(edge: &ListenerEdge) -> Self {
        Self {
            proxy_protocol: edge.proxy_protocol,
            header_deadline: edge.header_deadline(),
            head_timeout: edge.request_header_timeout,
            max_connections: edge.max_connections,
            max_per_client: edge.max_connections_per_client,
        }
    }
}

/// The pingora application of a proxy service: connection-level protection, then the HTTP
/// proxy `A`, with listener settings from `S`.
pub(crate) struct EdgeApp<A, S> {
    inner: Arc<A>,
    settings: Arc<S>,
    counts: Arc<ConnCounts>,
}

impl<A, S> std::fmt::Debug for EdgeApp<A, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EdgeApp").finish_non_exhaustive()
    }
}

impl<A, S> EdgeApp<A, S> {
    /// Wraps the HTTP application `inner`.
    pub(crate) fn new(inner: A, settings: Arc<S>) -> Self {
        Self {
            inner: Arc::new(inner),
            settings,
            counts: Arc::default(),
        }
    }
}

fn inet(addr: Option<&PingoraAddr>) -> Option<SocketAddr> {
    addr.and_then(|a| a.as_inet()).copied()
}

/// A socket digest naming `client` as the peer (the PROXY protocol source).
fn digest_with_client(
    fd: RawFd,
    old: Option<Arc<SocketDigest>>,
    client: SocketAddr,
) -> SocketDigest {
    let digest = SocketDigest::from_raw_fd(fd);
    let _ = digest.peer_addr.set(Some(PingoraAddr::Inet(client)));
    if let Some(local) = old.as_ref().and_then(|o| o.local_addr().cloned()) {
        let _ = digest.local_addr.set(Some(local));
    }
    digest
}

const REFUSED: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nRetry-After: 1\r\nConnection: close\r\nContent-Length: ";

async fn refuse(mut stream: Stream, why: Refusal) {
    let reason = match why {
        Refusal::ListenerFull => "too_many_connections",
        Refusal::ClientFull => "too_many_connections_from_client",
    };
    let body = format!(
        "{{\"error\":\"{reason}\",\"status\":503,\"reason\":\"the connection limit is reached; retry later\"}}"
    );
    let mut out = REFUSED.to_vec();
    out.extend_from_slice(format!("{}\r\n\r\n{body}", body.len()).as_bytes());
    let write = async {
        stream.write_all(&out).await?;
        stream.flush().await?;
        AsyncWriteExt::shutdown(&mut stream).await
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), write).await;
}

#[async_trait]
impl<A, S> ServerApp for EdgeApp<A, S>
where
    A: HttpServerApp + Send + Sync + 'static,
    S: ListenerSettings,
{
    async fn process_new(
        self: &Arc<Self>,
        mut stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let socket = stream.get_socket_digest();
        let local = inet(socket.as_ref().and_then(|d| d.local_addr()));
        let limits = self.settings.with_listener(local, ConnLimits::of);
        // On TLS listeners the header was read before the handshake ([`ProxyProtocolTls`]).
        if limits.proxy_protocol && stream.get_ssl_digest().is_none() {
            let deadline = limits.header_deadline;
            let read = tokio::time::timeout(deadline, proxy_protocol::read_header(&mut stream));
            match read.await {
                Ok(Ok(Some(client))) => {
                    let fd = stream
                        .as_any()
                        .downcast_ref::<L4Stream>()
                        .map(AsRawFd::as_raw_fd);
                    if let Some(fd) = fd {
                        stream.set_socket_digest(digest_with_client(fd, socket.clone(), client));
                    }
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) => {
                    crate::metrics::metrics().edge_refusal("proxy_protocol");
                    tracing::debug!(error = %e, "connection closed: PROXY protocol");
                    return None;
                }
                Err(_) => {
                    crate::metrics::metrics().edge_refusal("proxy_protocol");
                    tracing::debug!("connection closed: no PROXY protocol header in time");
                    return None;
                }
            }
        }
        let client = inet(
            stream
                .get_socket_digest()
                .as_ref()
                .and_then(|d| d.peer_addr()),
        )
        .map(|a| a.ip());
        let listener = local.unwrap_or_else(|| SocketAddr::from(([0, 0, 0, 0], 0)));
        let _slot = match self.counts.admit(listener, client, &limits) {
            Ok(slot) => slot,
            Err(why) => {
                crate::metrics::metrics().edge_refusal(match why {
                    Refusal::ListenerFull => "listener_limit",
                    Refusal::ClientFull => "client_limit",
                });
                tracing::debug!(?why, client = ?client, "connection refused");
                refuse(stream, why).await;
                return None;
            }
        };
        let timeout = limits.head_timeout;
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.inner.process_new(stream, shutdown).await;
        }
        let conn = Box::new(HeadDeadline::new(stream, timeout));
        let h2c = self.inner.server_options().is_some_and(|o| o.h2c);
        if h2c && conn.get_ssl_digest().is_none() {
            // The h2c preface check (and HTTP/2) stays with pingora's own connection loop.
            return self.inner.process_new(conn, shutdown).await;
        }
        self.serve_http1(conn, local, shutdown).await;
        None
    }

    async fn cleanup(&self) {
        self.inner.cleanup().await;
    }
}

impl<A: HttpServerApp + Send + Sync + 'static, S: ListenerSettings> EdgeApp<A, S> {
    /// The HTTP/1.1 keep-alive loop, as pingora's `ServerApp::process_new` runs it (keep-alive
    /// on, 60 s unless the service is shutting down; the request-count limit; settings carried
    /// to the next request), with one difference that matters at the edge: between requests
    /// a connection waits for its next bytes here, in a small future and holding no buffer,
    /// and pingora's session (its state machine, its 4 KiB head buffer) exists only once a
    /// request is arriving. Idle keep-alive connections are what a phone-facing edge holds
    /// most of.
    async fn serve_http1(
        &self,
        mut conn: Box<HeadDeadline>,
        local: Option<SocketAddr>,
        shutdown: &ShutdownWatch,
    ) {
        let mut persistent = None;
        let mut first = true;
        loop {
            // The first request's wait is bounded by the head deadline (from the connection's
            // start); later ones by the listener's idle timeout, read live.
            let idle = if first {
                Duration::ZERO
            } else {
                self.settings.with_listener(local, |e| e.idle_timeout)
            };
            if !next_request(&mut conn, idle, shutdown).await {
                return;
            }
            let mut session = ServerSession::new_http1(conn);
            match persistent.take() {
                Some(settings) => HttpPersistentSettings::apply_to_session(settings, &mut session),
                None => {
                    session.set_keepalive(if *shutdown.borrow() { None } else { Some(60) });
                    session.set_keepalive_reuses_remaining(
                        self.inner
                            .server_options()
                            .and_then(|o| o.keepalive_request_limit),
                    );
                }
            }
            first = false;
            let Some(reused) = self.inner.process_new_http(session, shutdown).await else {
                return;
            };
            let (stream, settings) = reused.consume();
            persistent = settings;
            // The stream handed back is the one handed in.
            conn = match stream.into_any().downcast::<HeadDeadline>() {
                Ok(conn) => conn,
                Err(_) => return,
            };
        }
    }
}

/// Waits until `conn`'s next request starts to arrive (its first bytes are read and kept for
/// the parser), the connection closes, `idle` passes (zero: no limit beyond the head
/// deadline), or the service shuts down. True when a request is arriving.
async fn next_request(conn: &mut HeadDeadline, idle: Duration, shutdown: &ShutdownWatch) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let mut watch = shutdown.clone();
    let stopping = async move {
        while !*watch.borrow_and_update() {
            if watch.changed().await.is_err() {
                // The server is gone: nothing will stop this connection but itself.
                std::future::pending::<()>().await;
            }
        }
    };
    let read = conn.await_bytes();
    tokio::select! {
        biased;
        got = async {
            if idle.is_zero() {
                read.await
            } else {
                tokio::time::timeout(idle, read).await.unwrap_or(Ok(0))
            }
        } => matches!(got, Ok(n) if n > 0),
        () = stopping => false,
    }
}

/// Reads the PROXY protocol header before the TLS handshake on listeners that ask for it.
#[derive(Debug)]
pub(crate) struct ProxyProtocolTls<S> {
    settings: Arc<S>,
}

impl<S> ProxyProtocolTls<S> {
    /// Over the gateway's live listener settings.
    pub(crate) fn new(settings: Arc<S>) -> Self {
        Self { settings }
    }
}

#[async_trait]
impl<S: ListenerSettings + std::fmt::Debug> PreTlsProcess for ProxyProtocolTls<S> {
    async fn process(&self, stream: &mut L4Stream) -> pingora::Result<()> {
        let socket = stream.get_socket_digest();
        let local = inet(socket.as_ref().and_then(|d| d.local_addr()));
        let (enabled, deadline) = self
            .settings
            .with_listener(local, |edge| (edge.proxy_protocol, edge.header_deadline()));
        if !enabled {
            return Ok(());
        }
        let refused = |what: String| {
            crate::metrics::metrics().edge_refusal("proxy_protocol");
            pingora::Error::explain(pingora::ErrorType::AcceptError, what)
        };
        match tokio::time::timeout(deadline, proxy_protocol::read_header(stream)).await {
            Ok(Ok(Some(client))) => {
                let fd = stream.as_raw_fd();
                stream.set_socket_digest(digest_with_client(fd, socket, client));
                Ok(())
            }
            Ok(Ok(None)) => Ok(()),
            Ok(Err(e)) => Err(refused(e.to_string())),
            Err(_) => Err(refused("no PROXY protocol header in time".into())),
        }
    }
}

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
struct HeadDeadline {
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
    fn new(inner: Stream, timeout: Duration) -> Self {
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
    async fn await_bytes(&mut self) -> io::Result<usize> {
        use tokio::io::AsyncReadExt;
        let mut first = [0u8; FIRST_READ];
        let n = self.read(&mut first).await?;
        self.pending = first[..n].to_vec();
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
