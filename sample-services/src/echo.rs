//! The echo service: answers every request with a JSON description of it.
//!
//! Controls, as query parameters: `delay_ms=N` waits N ms before answering (max 60 s);
//! `status=N` answers with status N; `bytes=N` answers with exactly N bytes of body instead of
//! JSON (for benchmarks). Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.
//!
//! Fault injection for breaker demos and tests, for every request: [`EchoServer::set_fault`],
//! or over HTTP `PUT /__fault?status=503&delay_ms=200` (either key), `GET /__fault`,
//! `DELETE /__fault`. A delay of 60000 ms makes a hanging endpoint.
//!
//! A fixed capacity, for overload benchmarks and tests ([`EchoServer::set_capacity`], or
//! `--capacity N --service-ms M`): N workers, each request holds one for M ms (requests over
//! N wait in line, as a saturated origin's do). `GET /__stats` reports requests in the
//! origin (working and waiting), their peak and the requests served; `DELETE /__stats`
//! resets the peak. With a capacity, every answer carries the origin's load as an ORCA report
//! (`endpoint-load-metrics: TEXT application_utilization=U`, U = requests inside, working or
//! waiting, over the workers, when the answer leaves), which the gateway's adaptive limit reads.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;
use tokio::sync::watch;

/// A running echo server.
#[derive(Debug)]
pub struct EchoServer {
    addr: SocketAddr,
    hits: Arc<AtomicU64>,
    fault: Arc<Fault>,
    load: Arc<Load>,
    stop: watch::Sender<bool>,
}

/// A fixed capacity and what is in the origin: N workers that each request holds for the
/// service time, and the requests inside (working or waiting) with their peak.
#[derive(Debug, Default)]
struct Load {
    capacity: std::sync::OnceLock<(Arc<tokio::sync::Semaphore>, usize, Duration)>,
    inside: AtomicU64,
    peak: AtomicU64,
    served: AtomicU64,
}

impl Load {
    /// Holds a worker for the service time (when a capacity is set), counting the request
    /// as inside meanwhile; returns the utilization as it leaves (itself included).
    async fn serve(&self) -> Option<f64> {
        let (workers, n, service) = self.capacity.get()?;
        /// Counts the request inside until dropped: a client that goes away (its connection
        /// closed, the request future dropped) leaves too.
        struct Inside<'a>(&'a AtomicU64);
        impl Drop for Inside<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, Ordering::SeqCst);
            }
        }
        let now = self.inside.fetch_add(1, Ordering::SeqCst) + 1;
        self.peak.fetch_max(now, Ordering::SeqCst);
        let _inside = Inside(&self.inside);
        if let Ok(_worker) = workers.acquire().await {
            tokio::time::sleep(*service).await;
        }
        self.served.fetch_add(1, Ordering::Relaxed);
        Some(self.inside.load(Ordering::SeqCst) as f64 / *n as f64)
    }

    fn stats(&self) -> Value {
        let (capacity, service_ms) = self.capacity.get().map_or((None, None), |(_, n, d)| {
            (Some(*n), Some(d.as_millis() as u64))
        });
        json!({
            "capacity": capacity,
            "service_ms": service_ms,
            "in_flight": self.inside.load(Ordering::SeqCst),
            "peak_in_flight": self.peak.load(Ordering::SeqCst),
            "served": self.served.load(Ordering::Relaxed),
        })
    }
}

/// An injected fault: every request is delayed and/or answered with a status.
#[derive(Debug, Default)]
pub struct Fault {
    /// Status to answer with (0: none).
    status: AtomicU64,
    /// Delay before answering, in ms.
    delay_ms: AtomicU64,
}

impl Fault {
    fn set(&self, status: Option<u16>, delay: Duration) {
        self.status
            .store(status.map_or(0, u64::from), Ordering::SeqCst);
        self.delay_ms
            .store(delay.as_millis().min(60_000) as u64, Ordering::SeqCst);
    }

    fn get(&self) -> (Option<StatusCode>, u64) {
        let status = u16::try_from(self.status.load(Ordering::SeqCst))
            .ok()
            .and_then(|s| StatusCode::from_u16(s).ok());
        (status, self.delay_ms.load(Ordering::SeqCst))
    }
}

impl EchoServer {
    /// Starts serving on `listener` as instance `name`.
    pub fn start(listener: TcpListener, name: impl Into<String>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let fault = Arc::new(Fault::default());
        let load = Arc::new(Load::default());
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            Shared {
                name: Arc::from(name.into()),
                hits: hits.clone(),
                fault: fault.clone(),
                load: load.clone(),
            },
            stopped,
        ));
        Ok(Self {
            addr,
            hits,
            fault,
            load,
            stop,
        })
    }

    /// Gives the server a fixed capacity (once): `workers` requests served at a time, each
    /// for `service`; the rest wait. Returns false when a capacity was already set.
    pub fn set_capacity(&self, workers: usize, service: Duration) -> bool {
        let workers = workers.max(1);
        self.load
            .capacity
            .set((
                Arc::new(tokio::sync::Semaphore::new(workers)),
                workers,
                service,
            ))
            .is_ok()
    }

    /// Requests inside now (working or waiting for a worker) and their peak since start.
    pub fn load(&self) -> (u64, u64) {
        (
            self.load.inside.load(Ordering::SeqCst),
            self.load.peak.load(Ordering::SeqCst),
        )
    }

    /// Injects a fault into every following request: answer with `status` (when set) after
    /// `delay`. `set_fault(None, Duration::ZERO)` clears it.
    pub fn set_fault(&self, status: Option<u16>, delay: Duration) {
        self.fault.set(status, delay);
    }

    /// Binds `addr` (port 0 for any) and starts serving.
    pub async fn bind(addr: SocketAddr, name: impl Into<String>) -> std::io::Result<Self> {
        Self::start(TcpListener::bind(addr).await?, name)
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Requests answered so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::Relaxed)
    }

    /// Stops accepting; connections in progress finish their current request.
    pub fn stop(&self) {
        let _ = self.stop.send(true);
    }
}

impl Drop for EchoServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// What every connection of one server shares.
#[derive(Debug, Clone)]
struct Shared {
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    fault: Arc<Fault>,
    load: Arc<Load>,
}

async fn accept_loop(listener: TcpListener, shared: Shared, mut stopped: watch::Receiver<bool>) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stopped.changed() => return,
        };
        let Ok((stream, peer)) = conn else { continue };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let mut conn_stopped = stopped.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, shared.clone(), peer));
            let builder = auto::Builder::new(TokioExecutor::new());
            let conn = builder.serve_connection(TokioIo::new(stream), svc);
            tokio::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => {}
                _ = conn_stopped.changed() => {
                    conn.as_mut().graceful_shutdown();
                    let _ = conn.await;
                }
            }
        });
    }
}

fn query_param<'a>(query: Option<&'a str>, key: &str) -> Option<&'a str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

/// `/__fault`: shows, sets (PUT/POST) or clears (DELETE) the injected fault.
fn fault_control(req: &Request<Incoming>, shared: &Shared) -> Response<Full<Bytes>> {
    let q = req.uri().query();
    let mut status = StatusCode::OK;
    match *req.method() {
        http::Method::PUT | http::Method::POST => {
            let code = query_param(q, "status")
                .map(|v| v.parse::<u16>().ok().filter(|c| (100..=599).contains(c)));
            let delay = query_param(q, "delay_ms").map(|v| v.parse::<u64>().ok());
            match (code, delay) {
                (Some(None), _) | (_, Some(None)) => status = StatusCode::BAD_REQUEST,
                (code, delay) => shared.fault.set(
                    code.flatten(),
                    Duration::from_millis(delay.flatten().unwrap_or(0)),
                ),
            }
        }
        http::Method::DELETE => shared.fault.set(None, Duration::ZERO),
        http::Method::GET => {}
        _ => status = StatusCode::METHOD_NOT_ALLOWED,
    }
    let (code, delay_ms) = shared.fault.get();
    let doc = if status == StatusCode::OK {
        json!({ "instance": &*shared.name, "status": code.map(|c| c.as_u16()), "delay_ms": delay_ms })
    } else {
        json!({ "error": "use PUT /__fault?status=503&delay_ms=100 (100-599, ms), GET or DELETE" })
    };
    response(
        status,
        "application/json",
        &shared.name,
        Bytes::from(serde_json::to_vec(&doc).unwrap_or_default()),
    )
}

async fn handle(
    req: Request<Incoming>,
    shared: Shared,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if req.uri().path() == "/__fault" {
        return Ok(fault_control(&req, &shared));
    }
    if req.uri().path() == "/__stats" {
        if req.method() == http::Method::DELETE {
            let now = shared.load.inside.load(Ordering::SeqCst);
            shared.load.peak.store(now, Ordering::SeqCst);
        }
        let body = serde_json::to_vec(&shared.load.stats()).unwrap_or_default();
        return Ok(response(
            StatusCode::OK,
            "application/json",
            &shared.name,
            Bytes::from(body),
        ));
    }
    shared.hits.fetch_add(1, Ordering::Relaxed);
    let load = shared.load.serve().await;
    let mut resp = answer(req, &shared, peer).await;
    if let Some(u) = load {
        if let Ok(v) = http::HeaderValue::from_str(&format!("TEXT application_utilization={u}")) {
            resp.headers_mut().insert("endpoint-load-metrics", v);
        }
    }
    Ok(resp)
}

/// The echo answer (or the fault's, or the requested bytes).
async fn answer(
    req: Request<Incoming>,
    shared: &Shared,
    peer: SocketAddr,
) -> Response<Full<Bytes>> {
    let query = req.uri().query().map(str::to_owned);
    let q = query.as_deref();
    let (fault_status, fault_delay) = shared.fault.get();
    let delay = query_param(q, "delay_ms")
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0)
        .max(fault_delay);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay.min(60_000))).await;
    }
    let status = query_param(q, "status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .or(fault_status)
        .unwrap_or(StatusCode::OK);
    let instance = shared.name.to_string();
    if let Some(n) = query_param(q, "bytes").and_then(|v| v.parse::<usize>().ok()) {
        let body = Bytes::from(vec![b'x'; n.min(16 << 20)]);
        return response(status, "application/octet-stream", &instance, body);
    }
    let mut headers = Map::new();
    for (k, v) in req.headers() {
        let v = Value::String(String::from_utf8_lossy(v.as_bytes()).into_owned());
        match headers.get_mut(k.as_str()) {
            Some(Value::Array(list)) => list.push(v),
            Some(prev) => *prev = Value::Array(vec![prev.clone(), v]),
            None => {
                headers.insert(k.as_str().to_owned(), v);
            }
        }
    }
    let method = req.method().to_string();
    let path = req.uri().path().to_owned();
    let version = format!("{:?}", req.version());
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let doc = json!({
        "instance": instance,
        "method": method,
        "path": path,
        "query": query,
        "version": version,
        "peer": peer.to_string(),
        "headers": headers,
        "body_bytes": body.len(),
    });
    let bytes = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    response(status, "application/json", &instance, Bytes::from(bytes))
}

fn response(
    status: StatusCode,
    content_type: &str,
    instance: &str,
    body: Bytes,
) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(body));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    if let Ok(v) = http::HeaderValue::from_str(content_type) {
        h.insert(http::header::CONTENT_TYPE, v);
    }
    if let Ok(v) = http::HeaderValue::from_str(instance) {
        h.insert("x-echo-instance", v);
    }
    resp
}
