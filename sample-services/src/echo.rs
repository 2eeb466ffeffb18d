//! The echo service: answers every request with a JSON description of it.
//!
//! Controls, as query parameters: `delay_ms=N` waits N ms before answering (max 60 s);
//! `status=N` answers with status N; `bytes=N` answers with exactly N bytes of body instead of
//! JSON (for benchmarks). Speaks HTTP/1.1 and HTTP/2 with prior knowledge (h2c) on one port.

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
    stop: watch::Sender<bool>,
}

impl EchoServer {
    /// Starts serving on `listener` as instance `name`.
    pub fn start(listener: TcpListener, name: impl Into<String>) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let hits = Arc::new(AtomicU64::new(0));
        let (stop, stopped) = watch::channel(false);
        tokio::spawn(accept_loop(
            listener,
            Arc::from(name.into()),
            hits.clone(),
            stopped,
        ));
        Ok(Self { addr, hits, stop })
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

async fn accept_loop(
    listener: TcpListener,
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    mut stopped: watch::Receiver<bool>,
) {
    loop {
        let conn = tokio::select! {
            c = listener.accept() => c,
            _ = stopped.changed() => return,
        };
        let Ok((stream, peer)) = conn else { continue };
        let _ = stream.set_nodelay(true);
        let (name, hits) = (name.clone(), hits.clone());
        let mut conn_stopped = stopped.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(req, name.clone(), hits.clone(), peer));
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

async fn handle(
    req: Request<Incoming>,
    name: Arc<str>,
    hits: Arc<AtomicU64>,
    peer: SocketAddr,
) -> Result<Response<Full<Bytes>>, Infallible> {
    hits.fetch_add(1, Ordering::Relaxed);
    let query = req.uri().query().map(str::to_owned);
    let q = query.as_deref();
    if let Some(ms) = query_param(q, "delay_ms").and_then(|v| v.parse::<u64>().ok()) {
        tokio::time::sleep(Duration::from_millis(ms.min(60_000))).await;
    }
    let status = query_param(q, "status")
        .and_then(|v| v.parse::<u16>().ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let instance = name.to_string();
    if let Some(n) = query_param(q, "bytes").and_then(|v| v.parse::<usize>().ok()) {
        let body = Bytes::from(vec![b'x'; n.min(16 << 20)]);
        return Ok(response(
            status,
            "application/octet-stream",
            &instance,
            body,
        ));
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
    Ok(response(
        status,
        "application/json",
        &instance,
        Bytes::from(bytes),
    ))
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
