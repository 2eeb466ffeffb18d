//! Per-connection protection in front of pingora's HTTP handling: the PROXY protocol header,
//! connection caps per listener and per client address, and a deadline for each request
//! head (slow senders are closed, nginx's `client_header_timeout`; the stream wrapper that
//! enforces it is `super::head_deadline`), and the HTTP/1 keep-alive loop around it.

use std::collections::HashMap;
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
use pingora::protocols::GetSocketDigest;
use pingora::protocols::SocketDigest;
use pingora::protocols::{Ssl, Stream, ALPN};
use pingora::server::ShutdownWatch;
use tokio::io::AsyncWriteExt;
use tokio::time::{Instant, Sleep};

use super::head_deadline::HeadDeadline;
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
        // One idle timer for the connection's life, moved forward before each wait: a timer
        // registered anew for every wait would be earlier than the runtime's next wake-up
        // whenever no other timer is pending, and tokio wakes its own driver for that (an
        // eventfd write and one more epoll_wait per request). Moving a registered timer later
        // does not.
        let idle_timer = tokio::time::sleep(Duration::ZERO);
        tokio::pin!(idle_timer);
        // Likewise one wait for the service's shutdown for the connection's life: a wait made
        // anew for every request clones the watch and registers with it each time.
        let stopping = stopped(shutdown.clone());
        tokio::pin!(stopping);
        // Whether that wait is registered (polled and pending): see [`UntilChanged`].
        let mut stop_waiting = false;
        loop {
            // The first request's wait is bounded by the head deadline (from the connection's
            // start); later ones by the listener's idle timeout, read live.
            let (idle, keep_header_case) = self.settings.with_listener(local, |e| {
                let idle = if first {
                    Duration::ZERO
                } else {
                    e.idle_timeout
                };
                (idle, e.keep_header_case)
            });
            if !next_request(
                &mut conn,
                idle,
                idle_timer.as_mut(),
                UntilChanged {
                    wait: stopping.as_mut(),
                    watch: shutdown,
                    waiting: &mut stop_waiting,
                },
                shutdown,
            )
            .await
            {
                return;
            }
            let mut session = ServerSession::new_http1(conn);
            if let ServerSession::H1(h1) = &mut session {
                // Without `preserve_header_case` the proxy drops the case map: none is built.
                h1.set_keep_header_case(keep_header_case);
            }
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

/// Completes when the service starts shutting down (never, if the server is gone: nothing
/// will stop the connection but itself).
async fn stopped(mut watch: ShutdownWatch) {
    while !*watch.borrow_and_update() {
        if watch.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// A wait for `watch` to change (`wait`, which completes then), polled only when it can make
/// progress. Once the wait is registered, its own wake-up wakes the task; a poll that finds the
/// watch unchanged returns at once, without taking the lock of the watch's waiter list (which
/// a poll of the registered wait takes to compare wakers). The connection's task, whose waker
/// does not change, polls it twice per request otherwise.
struct UntilChanged<'a, F> {
    wait: Pin<&'a mut F>,
    watch: &'a ShutdownWatch,
    /// `wait` was polled and is pending: it stays registered until it completes.
    waiting: &'a mut bool,
}

impl<F: std::future::Future<Output = ()>> std::future::Future for UntilChanged<'_, F> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        // A closed watch (`Err`) is handed to `wait`, which decides what it means.
        if *this.waiting && matches!(this.watch.has_changed(), Ok(false)) {
            return Poll::Pending;
        }
        let polled = this.wait.as_mut().poll(cx);
        *this.waiting = polled.is_pending();
        polled
    }
}

/// Waits until `conn`'s next request starts to arrive (its first bytes are read and kept for
/// the parser), the connection closes, `idle` passes (zero: no limit beyond the head
/// deadline), or the service shuts down (`stopping`, [`stopped`], which is not polled again
/// once it completed: the connection ends then). True when a request is arriving.
async fn next_request(
    conn: &mut HeadDeadline,
    idle: Duration,
    mut idle_timer: Pin<&mut Sleep>,
    stopping: impl std::future::Future<Output = ()>,
    shutdown: &ShutdownWatch,
) -> bool {
    if *shutdown.borrow() {
        return false;
    }
    let expired = async move {
        if idle.is_zero() {
            std::future::pending::<()>().await;
        }
        idle_timer.as_mut().reset(Instant::now() + idle);
        idle_timer.await;
    };
    tokio::select! {
        biased;
        got = conn.await_bytes() => matches!(got, Ok(n) if n > 0),
        () = expired => false,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::Future;

    /// The wait for shutdown between keep-alive requests, registered once and then skipped
    /// while the watch is unchanged, still ends the connection's wait when the service stops:
    /// its own registration wakes the task.
    #[tokio::test]
    async fn a_registered_stop_wait_ends_when_the_service_stops() {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let (registered_tx, registered_rx) = tokio::sync::oneshot::channel();
        let waiter = tokio::spawn(async move {
            let stopping = stopped(rx.clone());
            tokio::pin!(stopping);
            let mut waiting = false;
            let mut wait = UntilChanged {
                wait: stopping.as_mut(),
                watch: &rx,
                waiting: &mut waiting,
            };
            let first = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut wait).poll(cx))).await;
            assert!(first.is_pending(), "nothing changed yet");
            assert!(*wait.waiting, "the wait is registered");
            // Unchanged: answered without polling the registered wait.
            let again = std::future::poll_fn(|cx| Poll::Ready(Pin::new(&mut wait).poll(cx))).await;
            assert!(again.is_pending());
            registered_tx.send(()).expect("test is waiting");
            wait.await;
        });
        registered_rx.await.expect("the waiter registered");
        tx.send(true).expect("the waiter holds a receiver");
        tokio::time::timeout(Duration::from_secs(10), waiter)
            .await
            .expect("the wait ended once the service stopped")
            .expect("waiter task");
    }
}
