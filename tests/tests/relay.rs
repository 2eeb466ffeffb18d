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

/// An upstream that reads each request and never answers. It reports each request it read
/// (`got_request`) and each connection the gateway closed (`closed`).
async fn silent_upstream() -> (SocketAddr, Arc<Notify>, Arc<Notify>) {
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
    (addr, got_request, closed)
}

/// A gateway in front of `upstream` with a per-try timeout far away (only a client's hang-up
/// can end a call in time), serving HTTP/1.1 on its listener and h2c on a second one.
async fn with_h2c(upstream: SocketAddr) -> (Gateway, SocketAddr) {
    let h2c_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let body = format!(
        "[[listeners]]\nname = \"h2c\"\naddress = \"{h2c_addr}\"\nh2c = true\n\n{}",
        route_to(upstream, "read_timeout_ms = 120000")
    );
    (Gateway::start(&body).await, h2c_addr)
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), f)
        .await
        .unwrap_or_else(|_| panic!("{what}: not within 10 s"))
}

#[tokio::test]
async fn a_client_that_hangs_up_ends_its_upstream_call() {
    let (addr, got_request, closed) = silent_upstream().await;
    let (gw, h2c_addr) = with_h2c(addr).await;

    // HTTP/1.1: the client closes its connection.
    let mut client = connect(&gw).await;
    client
        .write_all(b"GET /wait HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .expect("send");
    within("the request reached the upstream", got_request.notified()).await;
    drop(client);
    within(
        "the gateway closed the upstream connection after the client hung up",
        closed.notified(),
    )
    .await;

    // HTTP/2: the client resets the stream (a dropped request) on a connection it keeps.
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let url = format!("http://{h2c_addr}/wait");
    let pending = tokio::spawn({
        let h2c = h2c.clone();
        async move { h2c.get(url).send().await }
    });
    within(
        "the h2c request reached the upstream",
        got_request.notified(),
    )
    .await;
    pending.abort();
    within(
        "the gateway closed the upstream connection after the stream was reset",
        closed.notified(),
    )
    .await;

    // The gateway goes on serving: a new connection is accepted.
    connect(&gw).await;
}

#[tokio::test]
async fn pieces_are_relayed_as_they_come_over_h2c() {
    let (addr, accepted, next) = paced_upstream().await;
    let (_gw, h2c_addr) = with_h2c(addr).await;
    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    for i in 0..2 {
        let mut r = within(
            "the response head",
            h2c.get(format!("http://{h2c_addr}/piece/{i}")).send(),
        )
        .await
        .expect("h2c request");
        assert_eq!(r.version(), reqwest::Version::HTTP_2);
        assert_eq!(r.status().as_u16(), 200);
        assert_eq!(r.headers()["x-path"], format!("/piece/{i}").as_str());
        let mut got = Vec::new();
        for piece in ["first", "second", "third"] {
            // Each piece reaches the client before the upstream has written the next one.
            while !got.ends_with(piece.as_bytes()) {
                let chunk = within("a piece", r.chunk())
                    .await
                    .expect("body")
                    .expect("more body");
                got.extend_from_slice(&chunk);
            }
            next.send(()).expect("upstream running");
        }
        assert_eq!(got, b"firstsecondthird");
        // The end of the stream (an empty frame may carry it) and nothing after the pieces.
        while let Some(rest) = within("the end", r.chunk()).await.expect("end") {
            assert!(rest.is_empty(), "{rest:?}");
        }
    }
    assert_eq!(accepted.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn a_client_that_stops_reading_holds_back_a_fast_upstream() {
    // An upstream that answers with a 512 MiB body, written as fast as the gateway takes it.
    const BODY: u64 = 512 << 20;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = written.clone();
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else {
            return;
        };
        let mut buf = Vec::new();
        if read_head(&mut s, &mut buf).await.is_none() {
            return;
        }
        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {BODY}\r\n\r\n");
        if s.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        let block = vec![b'x'; 64 << 10];
        while counter.load(Ordering::SeqCst) < BODY {
            if s.write_all(&block).await.is_err() {
                return;
            }
            counter.fetch_add(block.len() as u64, Ordering::SeqCst);
        }
    });
    let gw = Gateway::start(&route_to(addr, "read_timeout_ms = 60000")).await;
    let mut client = connect(&gw).await;
    client
        .write_all(b"GET /big HTTP/1.1\r\nhost: example.test\r\n\r\n")
        .await
        .expect("send");
    let mut buf = Vec::new();
    let head = within("the response head", read_head(&mut client, &mut buf))
        .await
        .expect("head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    // The client reads no more. The upstream's writes stall once the socket buffers on the way
    // and the few pieces the gateway holds are full: it is not read ahead of the client.
    // Stalled: no byte more for a whole second (checked every 50 ms, for at most 60 s).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let (mut last, mut since) = (written.load(Ordering::SeqCst), tokio::time::Instant::now());
    let stalled = loop {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = written.load(Ordering::SeqCst);
        if now != last {
            (last, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= Duration::from_secs(1) {
            break now;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the upstream kept writing for 60 s ({now} bytes): nothing holds it back"
        );
    };
    assert!(
        stalled < 64 << 20,
        "the gateway took {stalled} bytes of the response ahead of a client that reads nothing"
    );
    drop(client);
}
