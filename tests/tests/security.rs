//! Edge hardening through the real gateway, with raw-socket clients as an attacker writes them:
//! path spellings that try to cross into a protected route, oversized request lines and
//! headers, slow header senders, the connection caps, the PROXY protocol and trusted hops,
//! the admin port's lock, and secrets kept out of config text.

mod harness;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response read off a raw socket.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: String,
}

impl Raw {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

/// Sends `bytes` as they are and reads one response (the request says `Connection: close`,
/// or the gateway closes). `None` when the connection closed without a response.
async fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<Raw> {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    s.write_all(bytes).await.expect("write");
    read_response(&mut s).await
}

async fn read_response(s: &mut TcpStream) -> Option<Raw> {
    let mut buf = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    assert!(read.is_ok(), "no response or close within 10 s");
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    Some(Raw {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    })
}

fn get(target: &str) -> Vec<u8> {
    format!("GET {target} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n").into_bytes()
}

/// A public route and a JWT-protected one on the same upstream.
async fn two_routes(up: &EchoServer, extra: &str) -> Gateway {
    Gateway::start(&format!(
        r#"{extra}
{cluster}
[[routes]]
name = "pub"
cluster = "echo"
path_prefix = "/pub"

{private}"#,
        cluster = cluster("echo", &[up], ""),
        private = jwt_route("priv", "an-hmac-secret-that-is-long-enough-0123456789"),
    ))
    .await
}

/// A route `/NAME` on cluster `echo` behind a `jwt` filter with one HS256 key, `secret`.
fn jwt_route(name: &str, secret: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"{name}\"\ncluster = \"echo\"\npath_prefix = \"/{name}\"\n\n\
         [[routes.filters]]\nfilter = \"jwt\"\n\
         keys = [{{ kid = \"hs\", algorithm = \"HS256\", secret = \"{secret}\" }}]\n"
    )
}

/// Percent-decodes once, as a backend would.
fn decode_once(path: &str) -> String {
    let b = path.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&path[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).replace('\\', "/")
}

/// Resolves dot segments and doubled slashes, as a normalizing backend would.
fn backend_view(path: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for seg in path.split('/') {
        let bare = seg.split(';').next().unwrap_or_default();
        match bare {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            _ => out.push(seg),
        }
    }
    format!("/{}", out.join("/"))
}

#[tokio::test]
async fn no_spelling_of_a_path_crosses_into_the_protected_route() {
    let up = echo("up").await;
    let gw = two_routes(&up, "").await;
    let spellings = [
        "/pub/../priv/x",
        "/pub/%2e%2e/priv/x",
        "/pub/%2E%2E/priv/x",
        "/pub/.%2e/priv/x",
        "/pub/%2e./priv/x",
        "/pub/./../priv/x",
        "/pub//../priv/x",
        "//pub/../priv/x",
        "/pub/x/../../priv/x",
        "/pub/..%2Fpriv/x",
        "/pub%2F..%2Fpriv/x",
        "/pub/%2e%2e%2fpriv/x",
        "/pub/..%5Cpriv/x",
        "/pub\\..\\priv\\x",
        "/pub/..;/priv/x",
        "/pub/..;jsessionid=1/priv/x",
        "/pub/.;/../priv/x",
        "/pub/%252e%252e/priv/x",
        "/pub/%c0%ae%c0%ae/priv/x",
        "/pub/..%00/priv/x",
        "/pub/%zz/../priv/x",
        "http://test/pub/../priv/x",
    ];
    for target in spellings {
        let r = raw(gw.http, &get(target))
            .await
            .unwrap_or_else(|| panic!("{target}: no response"));
        match r.status {
            // Refused as malformed, or routed to the protected route and refused there.
            400 | 401 => {}
            200 => {
                let seen = r.json()["path"].as_str().unwrap_or_default().to_owned();
                let view = backend_view(&decode_once(&seen));
                assert!(
                    view.starts_with("/pub"),
                    "{target}: the upstream received {seen}, which a normalizing backend serves as {view}"
                );
            }
            other => panic!("{target}: unexpected {other}: {}", r.body),
        }
    }
    // The dot-segment spellings normalize to /priv and meet its JWT filter.
    for target in ["/pub/../priv/x", "/pub/%2e%2e/priv/x", "//pub/../priv/x"] {
        let r = raw(gw.http, &get(target)).await.expect("response");
        assert_eq!(r.status, 401, "{target}: {}", r.body);
    }
    // Specific errors for malformed paths.
    let r = raw(gw.http, &get("/pub/%zz")).await.expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (400, Some("invalid_path"))
    );
    assert!(r.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("percent-encoding"));
    let r = raw(gw.http, &get("/pub%2Fpriv")).await.expect("response");
    assert_eq!(r.status, 400);
    assert!(r.json()["reason"]
        .as_str()
        .unwrap_or_default()
        .contains("encoded slash"));
    // What the route matched is what goes upstream.
    let r = raw(gw.http, &get("/pub/a/./b/../%7Ec//d?q=%2e%2e"))
        .await
        .expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["path"], "/pub/a/~c/d");
    assert_eq!(r.json()["query"], "q=%2e%2e");
}

#[tokio::test]
async fn escaped_slash_options() {
    let up = echo("up").await;
    let decode = two_routes(&up, "[http]\nescaped_slashes = \"decode\"\n").await;
    let r = raw(decode.http, &get("/pub%2F..%2Fpriv/x"))
        .await
        .expect("response");
    assert_eq!(r.status, 401, "decoded to /priv/x: {}", r.body);
    let r = raw(decode.http, &get("/pub/a%2Fb"))
        .await
        .expect("response");
    assert_eq!(
        (r.status, r.json()["path"].as_str()),
        (200, Some("/pub/a/b"))
    );

    let keep = two_routes(&up, "[http]\nescaped_slashes = \"keep\"\n").await;
    let r = raw(keep.http, &get("/pub/a%2fb")).await.expect("response");
    assert_eq!(
        (r.status, r.json()["path"].as_str()),
        (200, Some("/pub/a%2Fb"))
    );
    let r = raw(keep.http, &get("/pub/..%2Fpriv/x"))
        .await
        .expect("response");
    assert_eq!(r.status, 400, "a kept escape may not hide a dot segment");

    let redirect = two_routes(&up, "[http]\nescaped_slashes = \"redirect\"\n").await;
    let r = raw(redirect.http, &get("/pub/a%2F%2Fb?x=1"))
        .await
        .expect("response");
    assert_eq!(r.status, 307);
    assert!(
        r.head
            .to_ascii_lowercase()
            .contains("location: /pub/a/b?x=1"),
        "{}",
        r.head
    );
}

#[tokio::test]
async fn oversized_request_heads_are_refused_and_not_forwarded() {
    let up = echo("up").await;
    let gw = two_routes(&up, "").await;
    let long_uri = format!("/pub/{}", "a".repeat(9 * 1024));
    let r = raw(gw.http, &get(&long_uri)).await.expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (414, Some("uri_too_long"))
    );

    let big = format!(
        "GET /pub/x HTTP/1.1\r\nHost: test\r\nX-Big: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(64 * 1024)
    );
    let r = raw(gw.http, big.as_bytes()).await.expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("header_too_large"))
    );

    let mut cookies = String::new();
    for i in 0..12 {
        cookies.push_str(&format!("Cookie: c{i}={}\r\n", "k".repeat(8000)));
    }
    let req = format!("GET /pub/x HTTP/1.1\r\nHost: test\r\n{cookies}Connection: close\r\n\r\n");
    let r = raw(gw.http, req.as_bytes()).await.expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("request_headers_too_large"))
    );

    let mut many = String::new();
    for i in 0..150 {
        many.push_str(&format!("X-H{i}: v\r\n"));
    }
    let req = format!("GET /pub/x HTTP/1.1\r\nHost: test\r\n{many}Connection: close\r\n\r\n");
    let r = raw(gw.http, req.as_bytes()).await.expect("response");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (431, Some("too_many_headers"))
    );
    assert!(r.head.to_ascii_lowercase().contains("connection: close"));

    assert_eq!(up.hits(), 0, "nothing oversized reached the upstream");
    let ok = raw(gw.http, &get("/pub/x")).await.expect("response");
    assert_eq!(ok.status, 200, "other clients are served");

    // Limits are configurable per listener.
    let tight = two_routes(&up, "[listeners.http]\nmax_uri_bytes = 100\n").await;
    let r = raw(tight.http, &get(&format!("/pub/{}", "a".repeat(200))))
        .await
        .expect("response");
    assert_eq!(r.status, 414);
}

#[tokio::test]
async fn http2_header_lists_are_bounded() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        "h2c = true\n{}\n[[routes]]\nname = \"all\"\ncluster = \"echo\"\n",
        cluster("echo", &[&up], "")
    ))
    .await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let ok = h2.get(gw.url("/x")).send().await.expect("h2 request");
    assert_eq!(ok.status(), 200);
    let big = h2
        .get(gw.url("/x"))
        .header("x-big", "b".repeat(20 * 1024))
        .send()
        .await
        .expect("h2 request");
    assert_eq!(big.status(), 431);
    let huge = h2
        .get(gw.url("/x"))
        .header("x-a", "a".repeat(8000))
        .header("x-b", "b".repeat(8000))
        .header("x-c", "c".repeat(8000))
        .header("x-d", "d".repeat(8000))
        .header("x-e", "e".repeat(8000))
        .send()
        .await;
    // Over the advertised header list size the HTTP/2 layer refuses the stream itself.
    assert!(huge.map_or(true, |r| r.status() == 431));
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn http2_rapid_reset_is_refused() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        "h2c = true\n{}\n[[routes]]\nname = \"all\"\ncluster = \"echo\"\n",
        cluster("echo", &[&up], "")
    ))
    .await;
    let tcp = TcpStream::connect(gw.http).await.expect("connect");
    let (mut h2c, conn) = h2::client::handshake(tcp).await.expect("h2 handshake");
    let conn = tokio::spawn(conn);
    // CVE-2023-44487: open streams and cancel them at once, as fast as possible.
    let mut opened = 0;
    for i in 0..5000 {
        h2c = match h2c.ready().await {
            Ok(c) => c,
            Err(_) => break,
        };
        let req = http::Request::get(format!("http://test/x?i={i}"))
            .body(())
            .expect("request");
        match h2c.send_request(req, true) {
            Ok((_answer, mut stream)) => {
                stream.send_reset(h2::Reason::CANCEL);
                opened += 1;
            }
            Err(_) => break,
        }
    }
    let ended = tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("the server ends the connection")
        .expect("connection task");
    let err = ended.expect_err("the connection ends in an error, not cleanly");
    // The server sends GOAWAY(ENHANCE_YOUR_CALM) and closes; the client sees the GOAWAY, or
    // the closed socket under its still-buffered writes.
    assert!(
        (err.is_go_away() && err.reason() == Some(h2::Reason::ENHANCE_YOUR_CALM)) || err.is_io(),
        "after {opened} streams ({} reached the upstream): {err:?}\n{}",
        up.hits(),
        gw.log()
    );
    assert!(
        up.hits() <= 100,
        "the flood did not become upstream load: {} requests reached it",
        up.hits()
    );
    // Other clients are served.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    assert_eq!(
        h2.get(gw.url("/x")).send().await.expect("request").status(),
        200
    );
}

/// An upstream that answers every request with `count` header lines.
async fn header_bomb(count: usize) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let _ = s.read(&mut buf).await;
                let mut resp = String::from("HTTP/1.1 200 OK\r\nContent-Length: 2\r\n");
                for i in 0..count {
                    resp.push_str(&format!("X-Filler-{i}: {}\r\n", "f".repeat(100)));
                }
                resp.push_str("\r\nok");
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn oversized_upstream_response_heads_are_a_502() {
    let bomb = header_bomb(200).await;
    let gw = Gateway::start(&format!(
        "[clusters.bomb]\nendpoints = [\"{bomb}\"]\nretry = {{ retries = 0 }}\n\n[[routes]]\nname = \"all\"\ncluster = \"bomb\"\n"
    ))
    .await;
    let r = raw(gw.http, &get("/x")).await.expect("response");
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.json()["error"], "upstream_headers_too_large");
    assert!(!r.head.contains("X-Filler"));
}

#[tokio::test]
async fn slow_header_senders_are_closed_while_others_are_served() {
    let up = echo("up").await;
    let gw = two_routes(&up, "[http]\nrequest_header_timeout_ms = 1500\n").await;
    let started = Instant::now();
    let mut slow = Vec::new();
    for i in 0..8 {
        let addr = gw.http;
        slow.push(tokio::spawn(async move {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"GET /pub/x HTTP/1.1\r\n")
                .await
                .expect("first line");
            // One header line every 300 ms, never the empty line.
            for n in 0..100 {
                tokio::time::sleep(Duration::from_millis(300)).await;
                if s.write_all(format!("X-Slow-{i}-{n}: 1\r\n").as_bytes())
                    .await
                    .is_err()
                {
                    break;
                }
                let mut b = [0u8; 1];
                if let Ok(Ok(0) | Err(_)) =
                    tokio::time::timeout(Duration::from_millis(1), s.read(&mut b)).await
                {
                    break;
                }
            }
            Instant::now()
        }));
    }
    let idle = TcpStream::connect(gw.http).await.expect("idle connect");
    // Normal clients are served throughout.
    let c = client();
    for _ in 0..5 {
        let r = c
            .get(gw.url("/pub/ok"))
            .send()
            .await
            .expect("normal request");
        assert_eq!(r.status(), 200);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in slow {
        let closed_at = t.await.expect("slow sender");
        let after = closed_at.duration_since(started);
        assert!(
            after >= Duration::from_millis(1400) && after < Duration::from_secs(6),
            "a slow sender was closed after {after:?}"
        );
    }
    let mut idle = idle;
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(5), idle.read(&mut b))
        .await
        .expect("an idle connection is closed too");
    assert!(matches!(n, Ok(0) | Err(_)));
    let r = c.get(gw.url("/pub/after")).send().await.expect("request");
    assert_eq!(r.status(), 200);
    let metrics = c
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    let text = metrics.text().await.expect("text");
    assert!(
        text.contains("gateway_edge_refusals_total{reason=\"header_timeout\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn keep_alive_requests_within_the_deadline_are_served() {
    let up = echo("up").await;
    let gw = two_routes(&up, "[http]\nrequest_header_timeout_ms = 800\n").await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    // Several requests on one connection, spread over more than the head deadline.
    for i in 0..4 {
        s.write_all(format!("GET /pub/{i} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes())
            .await
            .expect("write");
        let mut buf = vec![0u8; 8192];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .expect("answer")
            .expect("read");
        assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
}

#[tokio::test]
async fn slow_bodies_are_not_cut_by_the_head_deadline() {
    let up = echo("up").await;
    let gw = two_routes(&up, "[http]\nrequest_header_timeout_ms = 800\n").await;
    for expect in ["", "Expect: 100-continue\r\n"] {
        let mut s = TcpStream::connect(gw.http).await.expect("connect");
        s.write_all(
            format!(
                "POST /pub/upload HTTP/1.1\r\nHost: t\r\nContent-Length: 10\r\n{expect}Connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .await
        .expect("head");
        // The body trickles in over twice the head deadline.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(160)).await;
            s.write_all(b"x").await.expect("body byte");
        }
        let r = read_response_skipping_continue(&mut s).await;
        assert_eq!(r.status, 200, "{expect:?}: {}", r.body);
        assert_eq!(r.json()["body_bytes"], 10);
    }
}

async fn read_response_skipping_continue(s: &mut TcpStream) -> Raw {
    let r = read_response(s).await.expect("response");
    if r.status != 100 {
        return r;
    }
    // `100 Continue` then the final response in the same stream.
    let rest = r.body;
    let (head, body) = rest.split_once("\r\n\r\n").expect("final response");
    Raw {
        status: head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// Opens `n` keep-alive connections, each proven admitted by an answered request (a slot the
/// harness's readiness probe held may take a moment to free).
async fn hold_connections(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut held = Vec::new();
    while held.len() < n {
        assert!(
            Instant::now() < deadline,
            "only {} connections admitted",
            held.len()
        );
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET /pub/hold HTTP/1.1\r\nHost: t\r\n\r\n")
            .await
            .expect("write");
        let mut buf = vec![0u8; 8192];
        let n = s.read(&mut buf).await.expect("read");
        if String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200") {
            held.push(s);
        } else {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    held
}

#[tokio::test]
async fn connection_caps_refuse_clearly() {
    let up = echo("up").await;
    let gw = two_routes(&up, "[http]\nmax_connections = 3\n").await;
    let mut held = hold_connections(gw.http, 3).await;
    let r = raw(gw.http, &get("/pub/x"))
        .await
        .expect("a refusal, not a silent close");
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["error"], "too_many_connections");
    drop(held.pop());
    // Once one closes, new connections are admitted again.
    eventually(
        "a freed connection slot",
        Duration::from_secs(5),
        || async {
            let r = raw(gw.http, &get("/pub/x")).await.expect("response");
            if r.status == 200 {
                Ok(())
            } else {
                Err(format!("status {}", r.status))
            }
        },
    )
    .await;

    let per_client = two_routes(&up, "[http]\nmax_connections_per_client = 2\n").await;
    let _mine = hold_connections(per_client.http, 2).await;
    let r = raw(per_client.http, &get("/pub/x")).await.expect("refusal");
    assert_eq!(
        (r.status, r.json()["error"].as_str()),
        (503, Some("too_many_connections_from_client"))
    );
}

fn v2_header(src: &str, dst: SocketAddr) -> Vec<u8> {
    let src: SocketAddr = src.parse().expect("addr");
    // PROXY v2: signature, version 2 + PROXY, TCP over IPv4, 12 address bytes.
    let mut h = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    h.extend_from_slice(&[0x21, 0x11, 0, 12]);
    let (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) = (src.ip(), dst.ip()) else {
        panic!("IPv4 only here");
    };
    h.extend_from_slice(&s.octets());
    h.extend_from_slice(&d.octets());
    h.extend_from_slice(&src.port().to_be_bytes());
    h.extend_from_slice(&dst.port().to_be_bytes());
    h
}

/// A route `/blocked` whose `ip_filter` denies `cidr`, and a catch-all route, on cluster `echo`.
fn deny_routes(cidr: &str) -> String {
    format!(
        "\n[[routes]]\nname = \"blocked\"\ncluster = \"echo\"\npath_prefix = \"/blocked\"\n\n\
         [[routes.filters]]\nfilter = \"ip_filter\"\ndeny = [\"{cidr}\"]\n\n\
         [[routes]]\nname = \"all\"\ncluster = \"echo\"\n"
    )
}

#[tokio::test]
async fn proxy_protocol_gives_the_real_client() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        "proxy_protocol = true\n\n{}{}",
        cluster("echo", &[&up], ""),
        deny_routes("203.0.113.0/24")
    ))
    .await;
    let mut v1 = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 50000 {}\r\n",
        gw.http.port()
    )
    .into_bytes();
    v1.extend_from_slice(&get("/x"));
    let r = raw(gw.http, &v1).await.expect("response");
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "203.0.113.7");

    let mut v2 = v2_header("198.51.100.9:4000", gw.http);
    v2.extend_from_slice(&get("/x"));
    let r = raw(gw.http, &v2).await.expect("response");
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "198.51.100.9");

    // ip_filter sees the resolved address.
    let mut blocked = format!(
        "PROXY TCP4 203.0.113.7 127.0.0.1 50000 {}\r\n",
        gw.http.port()
    )
    .into_bytes();
    blocked.extend_from_slice(&get("/blocked/x"));
    assert_eq!(raw(gw.http, &blocked).await.expect("response").status, 403);
    let mut allowed = v2_header("198.51.100.9:4000", gw.http);
    allowed.extend_from_slice(&get("/blocked/x"));
    assert_eq!(raw(gw.http, &allowed).await.expect("response").status, 200);

    // Without the header, or with a broken one, the connection is closed unanswered.
    assert!(raw(gw.http, &get("/x")).await.is_none());
    assert!(raw(
        gw.http,
        b"PROXY TCP4 999.1.1.1 127.0.0.1 1 2\r\nGET / HTTP/1.1\r\n\r\n"
    )
    .await
    .is_none());
    // A balancer's health check (v1 UNKNOWN) is served as the socket peer.
    let mut unknown = b"PROXY UNKNOWN\r\n".to_vec();
    unknown.extend_from_slice(&get("/x"));
    let r = raw(gw.http, &unknown).await.expect("response");
    assert_eq!(r.json()["headers"]["x-forwarded-for"], "127.0.0.1");
    wait_until(
        "access log names the PROXY client",
        Duration::from_secs(5),
        || gw.log().contains("\"client\":\"203.0.113.7\""),
    )
    .await;
}

#[tokio::test]
async fn proxy_protocol_precedes_tls() {
    let up = echo("up").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let gw = Gateway::start_with(
        &format!(
            "[[listeners]]\nname = \"tls\"\naddress = \"{tls_addr}\"\nproxy_protocol = true\n\
             tls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n{}\n[[routes]]\nname = \"all\"\ncluster = \"echo\"\n",
            cluster("echo", &[&up], "")
        ),
        &[
            ("cert.pem", cert.cert.pem().as_bytes()),
            ("key.pem", cert.signing_key.serialize_pem().as_bytes()),
        ],
    )
    .await;
    let tls_get = |header: Option<Vec<u8>>| async move {
        let mut tcp = TcpStream::connect(tls_addr).await.expect("connect");
        if let Some(h) = header {
            tcp.write_all(&h).await.expect("proxy header");
        }
        let mut builder =
            openssl::ssl::SslConnector::builder(openssl::ssl::SslMethod::tls()).expect("connector");
        builder.set_verify(openssl::ssl::SslVerifyMode::NONE);
        let ssl = builder
            .build()
            .configure()
            .expect("configure")
            .into_ssl("localhost")
            .expect("ssl");
        let mut tls = tokio_openssl::SslStream::new(ssl, tcp).expect("stream");
        std::pin::Pin::new(&mut tls).connect().await.ok()?;
        tls.write_all(&get("/x")).await.ok()?;
        let mut buf = Vec::new();
        tokio::time::timeout(Duration::from_secs(10), tls.read_to_end(&mut buf))
            .await
            .ok()?
            .ok()?;
        let text = String::from_utf8_lossy(&buf).into_owned();
        let body = text.split_once("\r\n\r\n")?.1.to_owned();
        serde_json::from_str::<Value>(&body).ok()
    };
    let header = format!(
        "PROXY TCP4 203.0.113.9 127.0.0.1 40000 {}\r\n",
        tls_addr.port()
    );
    let j = tls_get(Some(header.into_bytes()))
        .await
        .expect("TLS answer after a PROXY header");
    assert_eq!(j["headers"]["x-forwarded-for"], "203.0.113.9");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
    assert!(
        tls_get(None).await.is_none(),
        "a TLS client without the PROXY header is not served"
    );
    // The plain listener of the same gateway does not expect the header.
    assert_eq!(
        raw(gw.http, &get("/x")).await.expect("response").status,
        200
    );
}

#[tokio::test]
async fn forwarding_headers_are_believed_only_from_trusted_proxies() {
    let up = echo("up").await;
    let routes = deny_routes("198.51.100.7/32");
    let trusted = Gateway::start(&format!(
        "[http]\ntrusted_proxies = [\"127.0.0.0/8\"]\nxff_trusted_hops = 1\n\n{}{routes}",
        cluster("echo", &[&up], "")
    ))
    .await;
    let c = client();
    let r: Value = c
        .get(trusted.url("/x"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        r["headers"]["x-forwarded-for"],
        "6.6.6.6, 198.51.100.7, 127.0.0.1"
    );
    let blocked = c
        .get(trusted.url("/blocked/x"))
        .header("x-forwarded-for", "6.6.6.6, 198.51.100.7")
        .send()
        .await
        .expect("request");
    assert_eq!(
        blocked.status(),
        403,
        "ip_filter sees the client the trusted proxy reported"
    );

    let untrusted = Gateway::start(&format!("{}{routes}", cluster("echo", &[&up], ""))).await;
    let r: Value = c
        .get(untrusted.url("/x"))
        .header("x-forwarded-for", "198.51.100.7")
        .header("forwarded", "for=198.51.100.7")
        .header("x-real-ip", "198.51.100.7")
        .send()
        .await
        .expect("request")
        .json()
        .await
        .expect("json");
    assert_eq!(
        r["headers"]["x-forwarded-for"], "127.0.0.1",
        "a spoofed chain is dropped"
    );
    assert!(r["headers"].get("forwarded").is_none());
    assert!(r["headers"].get("x-real-ip").is_none());
    let spoof = c
        .get(untrusted.url("/blocked/x"))
        .header("x-forwarded-for", "1.2.3.4")
        .send()
        .await
        .expect("request");
    assert_eq!(
        spoof.status(),
        200,
        "the denied address cannot be forged away or in"
    );
}

#[tokio::test]
async fn the_admin_port_is_locked() {
    let up = echo("up").await;
    let token = "an-admin-token-0123456789abcdef";
    let body = format!(
        "{}\n[[routes]]\nname = \"all\"\ncluster = \"echo\"\n",
        cluster("echo", &[&up], "")
    );
    let gw = Gateway::start(&body).await;
    let c = client();
    let doc = gw.config_for(&body);
    let post = |ct: Option<&str>, extra: Option<(&str, &str)>| {
        let mut r = c.post(gw.admin_url("/config")).body(doc.clone());
        if let Some(ct) = ct {
            r = r.header("content-type", ct);
        }
        if let Some((k, v)) = extra {
            r = r.header(k, v);
        }
        r.send()
    };
    let r = post(None, None).await.expect("admin");
    assert_eq!(r.status(), 403);
    assert_eq!(
        r.json::<Value>().await.expect("json")["error"],
        "csrf_check"
    );
    assert_eq!(
        post(Some("text/plain"), None)
            .await
            .expect("admin")
            .status(),
        403
    );
    assert_eq!(
        post(Some("application/x-www-form-urlencoded"), None)
            .await
            .expect("admin")
            .status(),
        403
    );
    let cross = post(
        Some("application/toml"),
        Some(("origin", "http://evil.example")),
    )
    .await;
    assert_eq!(cross.expect("admin").status(), 403);
    let ok = post(Some("application/toml"), None).await.expect("admin");
    assert_eq!(ok.status(), 200);
    let ok = post(None, Some(("x-gateway-admin", "1")))
        .await
        .expect("admin");
    assert_eq!(ok.status(), 200);
    // DNS rebinding: a page on another name that resolves here is refused, reads included.
    let rebind = c
        .get(gw.admin_url("/config/versions"))
        .header("host", "evil.example")
        .send()
        .await
        .expect("admin");
    assert_eq!(rebind.status(), 403);

    // With a token from the environment, an inline Consul token, and a status listener.
    let status = free_port();
    let with_secrets = format!(
        "{body}\n[discovery.consul]\naddress = \"127.0.0.1:1\"\ntoken = \"a-consul-acl-token-inline\"\n"
    );
    let locked = Gateway::start_custom(
        &with_secrets,
        &[("GW_ADMIN_TOKEN".into(), token.into())],
        |doc| {
            doc.replace(
                "[admin]\n",
                &format!(
                    "[admin]\ntoken = \"${{env:GW_ADMIN_TOKEN}}\"\nstatus_address = \"127.0.0.1:{status}\"\n"
                ),
            )
        },
    )
    .await;
    let no_token = c
        .get(locked.admin_url("/routes"))
        .send()
        .await
        .expect("admin");
    assert_eq!(no_token.status(), 401);
    let wrong = c
        .get(locked.admin_url("/routes"))
        .bearer_auth("wrong-token-wrong-token")
        .send()
        .await
        .expect("admin");
    assert_eq!(wrong.status(), 401);
    let right = c
        .get(locked.admin_url("/routes"))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin");
    assert_eq!(right.status(), 200);
    assert_eq!(
        c.get(locked.admin_url("/healthz"))
            .send()
            .await
            .expect("probe")
            .status(),
        200
    );
    // A token does not lift the CSRF check.
    let r = c
        .post(locked.admin_url("/config/reload"))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 403);
    // Served config text never carries the inline secret, and the reference stays a reference.
    let text = c
        .get(locked.admin_url("/config/versions/1"))
        .bearer_auth(token)
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert!(!text.contains("a-consul-acl-token-inline"), "{text}");
    assert!(text.contains("<redacted>"), "{text}");
    assert!(text.contains("${env:GW_ADMIN_TOKEN}"), "{text}");
    assert!(!locked.log().contains(token));
    assert!(!locked.log().contains("a-consul-acl-token-inline"));

    // The status listener: read-only views without the token, nothing else.
    let status_url = |p: &str| format!("http://127.0.0.1:{status}{p}");
    for path in ["/metrics", "/healthz", "/readyz"] {
        let r = c
            .get(status_url(path))
            .send()
            .await
            .expect("status listener");
        assert_eq!(r.status(), 200, "{path}");
    }
    let stream = c
        .get(status_url("/hystrix.stream"))
        .send()
        .await
        .expect("stream");
    assert_eq!(stream.status(), 200);
    drop(stream);
    for path in ["/config", "/config/versions/1", "/routes", "/dashboard"] {
        let r = c
            .get(status_url(path))
            .send()
            .await
            .expect("status listener");
        assert_eq!(r.status(), 404, "{path} is not on the status listener");
    }
    let r = c
        .post(status_url("/breakers/echo/force_open"))
        .header("x-gateway-admin", "1")
        .send()
        .await
        .expect("status listener");
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn secrets_come_from_the_environment_or_a_file() {
    let up = echo("up").await;
    let secret = "hmac-secret-from-the-environment-0123456789";
    let dir = tempfile::tempdir().expect("dir");
    let file_secret = "hmac-secret-from-a-file-0123456789abcdef";
    let secret_file = dir.path().join("hmac.txt");
    std::fs::write(&secret_file, format!("{file_secret}\n")).expect("write");
    let body = format!(
        r#"{cluster}
{env}{file}"#,
        cluster = cluster("echo", &[&up], ""),
        env = jwt_route("env", "${env:GW_TEST_HMAC}"),
        file = jwt_route("file", &format!("${{file:{}}}", secret_file.display())),
    );
    let gw = Gateway::start_env(&body, &[("GW_TEST_HMAC".into(), secret.into())]).await;
    let sign = |key: &str| {
        let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        header.kid = Some("hs".into());
        let claims = serde_json::json!({ "sub": "u1", "exp": unix_now() + 600 });
        jsonwebtoken::encode(
            &header,
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(key.as_bytes()),
        )
        .expect("sign")
    };
    let c = client();
    for (path, key, want) in [
        ("/env/x", secret, 200),
        ("/file/x", file_secret, 200),
        ("/env/x", file_secret, 401),
        ("/file/x", secret, 401),
    ] {
        let r = c
            .get(gw.url(path))
            .bearer_auth(sign(key))
            .send()
            .await
            .expect("request");
        assert_eq!(r.status(), want, "{path}");
    }
    let text = c
        .get(gw.admin_url("/config/versions/1"))
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert!(!text.contains(secret) && !text.contains(file_secret));
    assert!(!gw.log().contains(secret) && !gw.log().contains(file_secret));

    // A missing variable is a specific error that names it, and no value.
    let config = dir.path().join("missing.toml");
    std::fs::write(
        &config,
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{}\"\n{}",
            free_port(),
            body.replace("GW_TEST_HMAC", "GW_TEST_SURELY_UNSET_VAR")
        ),
    )
    .expect("write");
    let (code, _out, err) =
        run_gateway_cli(&["check", "--config", config.to_str().expect("utf-8")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("environment variable GW_TEST_SURELY_UNSET_VAR is not set"),
        "{err}"
    );
}

#[tokio::test]
async fn check_warns_about_an_open_admin_port() {
    let dir = tempfile::tempdir().expect("dir");
    let config = dir.path().join("open.toml");
    std::fs::write(
        &config,
        format!(
            "[admin]\naddress = \"0.0.0.0:{}\"\n\n[[listeners]]\naddress = \"127.0.0.1:{}\"\n",
            free_port(),
            free_port()
        ),
    )
    .expect("write");
    let (code, _out, err) =
        run_gateway_cli(&["check", "--config", config.to_str().expect("utf-8")]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("warning: the admin API listens on 0.0.0.0"),
        "{err}"
    );
    assert!(err.contains("has no token"), "{err}");
}

/// Reads one response with a `Content-Length` body off a keep-alive connection.
async fn read_one(s: &mut TcpStream) -> (u16, Value) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..at]).to_ascii_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .and_then(|v| v.trim().parse().ok())
                .expect("content-length");
            if buf.len() >= at + 4 + len {
                let status = head[9..12].parse().expect("status");
                let body =
                    serde_json::from_slice(&buf[at + 4..at + 4 + len]).unwrap_or(Value::Null);
                return (status, body);
            }
        }
        let left = end.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read(&mut chunk))
            .await
            .expect("a response within 10 s")
            .expect("read");
        assert!(n > 0, "closed before a whole response");
        buf.extend_from_slice(&chunk[..n]);
    }
}

#[tokio::test]
async fn idle_keep_alive_connections_wait_for_the_idle_timeout_not_the_head_deadline() {
    let up = echo("up").await;
    let gw = two_routes(
        &up,
        "[http]\nrequest_header_timeout_ms = 800\nidle_timeout_ms = 3000\n",
    )
    .await;
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    // A head far longer than one read of the wait between requests.
    let pad = "p".repeat(200);
    let mut head = String::from("GET /pub/long HTTP/1.1\r\nHost: t\r\n");
    for i in 0..20 {
        head.push_str(&format!("X-Pad-{i}: {pad}\r\n"));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).await.expect("long head");
    let (status, body) = read_one(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(body["headers"]["x-pad-19"], pad.as_str(), "{body}");
    // Idle for longer than the head deadline, then a head in two pieces: still served.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    s.write_all(b"GET /pub/second HTTP/1.1\r\nHo")
        .await
        .expect("first piece");
    tokio::time::sleep(Duration::from_millis(300)).await;
    s.write_all(b"st: t\r\n\r\n").await.expect("second piece");
    let (status, body) = read_one(&mut s).await;
    assert_eq!(status, 200);
    assert_eq!(body["path"], "/pub/second", "{body}");
    // Then quiet: the gateway closes it once the idle timeout has passed.
    let quiet = Instant::now();
    let mut b = [0u8; 16];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("closed within 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let after = quiet.elapsed();
    assert!(
        after >= Duration::from_millis(2500) && after < Duration::from_secs(6),
        "closed after {after:?}"
    );
    // A head that stalls halfway after an idle wait is held to the head deadline.
    let mut s = TcpStream::connect(gw.http).await.expect("connect");
    s.write_all(b"GET /pub/a HTTP/1.1\r\nHost: t\r\n\r\n")
        .await
        .expect("write");
    assert_eq!(read_one(&mut s).await.0, 200);
    tokio::time::sleep(Duration::from_millis(1000)).await;
    s.write_all(b"GET /pub/b HTTP/1.1\r\n").await.expect("half");
    let stalled = Instant::now();
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut b))
        .await
        .expect("closed within 10 s");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    let after = stalled.elapsed();
    assert!(
        after >= Duration::from_millis(700) && after < Duration::from_millis(2500),
        "a stalled head was closed after {after:?}"
    );
}
