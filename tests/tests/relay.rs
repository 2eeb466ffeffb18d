//! How the gateway relays a response to a request without a body (pingora's response-only relay,
//! `gateway/patches/pingora-proxy-response-only-relay.patch`): pieces of a response reach the
//! client as the upstream sends them, both connections are kept for the next request, and a
//! client that hangs up ends its upstream call.

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, Notify};

/// Reads one request or response head (through the blank line) and returns it, or `None` at
/// the end of the stream.
async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        let mut chunk = [0u8; 4096];
        let n = s.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads from `s` until `buf` holds `needle`; returns what came before and through it.
async fn read_through(s: &mut TcpStream, buf: &mut Vec<u8>, needle: &[u8]) -> String {
    loop {
        if let Some(at) = buf.windows(needle.len()).position(|w| w == needle) {
            let got: Vec<u8> = buf.drain(..at + needle.len()).collect();
            return String::from_utf8_lossy(&got).into_owned();
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut chunk))
            .await
            .expect("the relayed piece arrives")
            .expect("read");
        assert!(n > 0, "the gateway closed the connection; had {buf:?}");
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// An upstream that answers every request on a connection with a chunked response in three
/// pieces, writing each piece only when the test says so (`next`). Counts its connections.
async fn paced_upstream() -> (SocketAddr, Arc<AtomicUsize>, mpsc::UnboundedSender<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let (next, mut turns) = mpsc::unbounded_channel::<()>();
    let count = accepted.clone();
    tokio::spawn(async move {
        // One connection at a time is all the test makes; a second one would be counted.
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let mut buf = Vec::new();
            while let Some(head) = read_head(&mut s, &mut buf).await {
                let path = head.split(' ').nth(1).unwrap_or("").to_owned();
                let mut out = format!(
                    "HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\nx-path: {path}\r\n\r\n"
                );
                for piece in ["first", "second", "third"] {
                    out.push_str(&format!("{:x}\r\n{piece}\r\n", piece.len()));
                    if s.write_all(out.as_bytes()).await.is_err() {
                        return;
                    }
                    out.clear();
                    if turns.recv().await.is_none() {
                        return;
                    }
                }
                if s.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
        }
    });
    (addr, accepted, next)
}

/// A raw connection to the gateway's listener.
async fn connect(gw: &Gateway) -> TcpStream {
    let url = gw.url("/");
    let addr = url.trim_start_matches("http://").trim_end_matches('/');
    TcpStream::connect(addr).await.expect("connect")
}

fn route_to(addr: SocketAddr, extra: &str) -> String {
    format!(
        "[clusters.raw]\nendpoints = [\"{addr}\"]\n{extra}\n\n\
         [[routes]]\nname = \"raw\"\ncluster = \"raw\"\npath_prefix = \"/\"\n"
    )
}

#[tokio::test]
async fn pieces_of_a_response_are_relayed_as_they_come_on_kept_connections() {
    let (addr, accepted, next) = paced_upstream().await;
    let gw = Gateway::start(&route_to(addr, "read_timeout_ms = 10000")).await;
    let mut client = connect(&gw).await;
    let mut buf = Vec::new();
    for i in 0..3 {
        let req = format!("GET /piece/{i} HTTP/1.1\r\nhost: example.test\r\n\r\n");
        client.write_all(req.as_bytes()).await.expect("send");
        let head = read_head(&mut client, &mut buf)
            .await
            .expect("response head");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(head.contains(&format!("x-path: /piece/{i}")), "{head}");
        // Each piece reaches the client before the upstream has written the next one.
        read_through(&mut client, &mut buf, b"first\r\n").await;
        next.send(()).expect("upstream running");
        read_through(&mut client, &mut buf, b"second\r\n").await;
        next.send(()).expect("upstream running");
        read_through(&mut client, &mut buf, b"third\r\n").await;
        next.send(()).expect("upstream running");
        read_through(&mut client, &mut buf, b"0\r\n\r\n").await;
    }
    // The three requests came on one client connection (the loop above) and went out on one
    // upstream connection.
    assert_eq!(accepted.load(Ordering::SeqCst), 1);

    // HEAD and 204 answers, which have no body, end without one and keep the connection too.
    let (status_addr, status_accepted) = status_upstream().await;
    let gw2 = Gateway::start(&route_to(status_addr, "")).await;
    let mut c = connect(&gw2).await;
    let mut b = Vec::new();
    for (method, path, status) in [
        ("HEAD", "/h", "200"),
        ("GET", "/n", "204"),
        ("GET", "/ok", "200"),
    ] {
        let req = format!("{method} {path} HTTP/1.1\r\nhost: example.test\r\n\r\n");
        c.write_all(req.as_bytes()).await.expect("send");
        let head = read_head(&mut c, &mut b).await.expect("head");
        assert!(
            head.starts_with(&format!("HTTP/1.1 {status}")),
            "{method} {path}: {head}"
        );
        if path == "/ok" {
            read_through(&mut c, &mut b, b"done").await;
        }
    }
    assert!(b.is_empty(), "no body bytes after a bodiless answer: {b:?}");
    assert_eq!(status_accepted.load(Ordering::SeqCst), 1);
}

/// An upstream answering `HEAD` with a `Content-Length` and no body, `/n` with 204 and anything
/// else with a 4-byte body, on kept connections.
async fn status_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buf = Vec::new();
                while let Some(head) = read_head(&mut s, &mut buf).await {
                    let out: &[u8] = if head.starts_with("HEAD") {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\n"
                    } else if head.starts_with("GET /n ") {
                        b"HTTP/1.1 204 No Content\r\n\r\n"
                    } else {
                        b"HTTP/1.1 200 OK\r\ncontent-length: 4\r\n\r\ndone"
                    };
                    if s.write_all(out).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (addr, accepted)
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_upstream_call() {
    // An upstream that reads the request and never answers; it reports when the gateway closes
    // the connection.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let got_request = Arc::new(Notify::new());
    let closed = Arc::new(Notify::new());
    let (req_seen, close_seen) = (got_request.clone(), closed.clone());
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let (req_seen, close_seen) = (req_seen.clone(), close_seen.clone());
            tokio::spawn(async move {
                let mut buf = Vec::new();
                if read_head(&mut s, &mut buf).await.is_some() {
                    req_seen.notify_one();
                }
                let mut rest = [0u8; 64];
                while matches!(s.read(&mut rest).await, Ok(n) if n > 0) {}
                close_seen.notify_one();
            });
        }
    });
    // The per-try timeout is far away: only the client's hang-up can end the call in time.
    let gw = Gateway::start(&route_to(addr, "read_timeout_ms = 120000")).await;
    let mut client = connect(&gw).await;
    client
        .write_all(b"GET /wait HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .expect("send");
    tokio::time::timeout(Duration::from_secs(10), got_request.notified())
        .await
        .expect("the request reached the upstream");
    drop(client);
    tokio::time::timeout(Duration::from_secs(10), closed.notified())
        .await
        .expect("the gateway closed the upstream connection after the client hung up");

    // The gateway goes on serving: a new connection is accepted.
    connect(&gw).await;
}
