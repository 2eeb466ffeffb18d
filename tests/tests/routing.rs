//! Routing by host, path (exact, prefix, template), method and header; rewrites; 404; proxy
//! headers and request ids.

mod harness;

use harness::*;

#[tokio::test]
async fn routes_by_host_path_method_and_header() {
    let (a, b, c, d) = (
        echo("a").await,
        echo("b").await,
        echo("c").await,
        echo("d").await,
    );
    let body = format!(
        "{}{}{}{}\
         [[routes]]\nname = \"canary\"\ncluster = \"d\"\npath_prefix = \"/api\"\nheaders = [{{ name = \"x-canary\", value = \"1\" }}]\n\n\
         [[routes]]\nname = \"admin-host\"\ncluster = \"c\"\nhost = \"*.internal.example\"\n\n\
         [[routes]]\nname = \"title\"\ncluster = \"b\"\npath_template = \"/titles/{{id}}\"\nmethods = [\"GET\"]\nrewrite = \"/v1/catalog/{{id}}\"\n\n\
         [[routes]]\nname = \"exact\"\ncluster = \"b\"\npath_exact = \"/ping\"\nrewrite = \"/health\"\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"a\"\npath_prefix = \"/api\"\nprefix_rewrite = \"\"\n",
        cluster("a", &[&a], ""),
        cluster("b", &[&b], ""),
        cluster("c", &[&c], ""),
        cluster("d", &[&d], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let (s, j) = get_json(&http, &gw.url("/api/users?x=1")).await;
    assert_eq!(s, 200);
    assert_eq!(j["instance"], "a");
    assert_eq!(j["path"], "/users", "prefix stripped");
    assert_eq!(j["query"], "x=1", "query kept");

    let r = http
        .get(gw.url("/api/users"))
        .header("x-canary", "1")
        .send()
        .await
        .expect("req");
    assert_eq!(
        r.headers()["x-echo-instance"],
        "d",
        "header match wins when declared first"
    );

    let r = http
        .get(gw.url("/anything"))
        .header("host", "ops.internal.example")
        .send()
        .await
        .expect("req");
    assert_eq!(r.headers()["x-echo-instance"], "c", "wildcard host");

    let (s, j) = get_json(&http, &gw.url("/titles/42")).await;
    assert_eq!((s, j["instance"].as_str()), (200, Some("b")));
    assert_eq!(j["path"], "/v1/catalog/42", "template rewrite");

    let (s, j) = get_json(&http, &gw.url("/ping")).await;
    assert_eq!(
        (s, j["path"].as_str()),
        (200, Some("/health")),
        "exact path with fixed rewrite"
    );

    // Method condition: POST /titles/42 matches no route.
    let r = http.post(gw.url("/titles/42")).send().await.expect("req");
    assert_eq!(r.status().as_u16(), 404);
    let id = r.headers()["x-request-id"].to_str().expect("id").to_owned();
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "no_route");
    assert_eq!(j["request_id"], id.as_str());
    assert_eq!(j["route"], serde_json::Value::Null);

    // `/apix` is not under the segment-aware prefix `/api`.
    assert_eq!(
        http.get(gw.url("/apix"))
            .send()
            .await
            .expect("req")
            .status()
            .as_u16(),
        404
    );
}

#[tokio::test]
async fn proxy_headers_request_id_and_hop_by_hop() {
    let a = echo("a").await;
    let body = format!(
        "{}[[routes]]\nname = \"all\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let r = http
        .get(gw.url("/h"))
        .header("x-forwarded-for", "203.0.113.7")
        .header("via", "1.0 client-proxy")
        .header("connection", "keep-alive, x-secret")
        .header("x-secret", "hop")
        .header("keep-alive", "timeout=5")
        .header("x-request-id", "trace-abc-123")
        .send()
        .await
        .expect("req");
    assert_eq!(
        r.headers()["x-request-id"],
        "trace-abc-123",
        "client request id is kept"
    );
    assert!(r.headers()["via"]
        .to_str()
        .expect("via")
        .ends_with("1.1 gateway"));
    let j: serde_json::Value = r.json().await.expect("json");
    let h = &j["headers"];
    // The client is not a trusted proxy ([http] trusted_proxies), so its chain is dropped.
    assert_eq!(h["x-forwarded-for"], "127.0.0.1");
    assert_eq!(h["x-forwarded-proto"], "http");
    assert_eq!(h["x-forwarded-host"], "127.0.0.1");
    assert_eq!(h["via"], "1.0 client-proxy, 1.1 gateway");
    assert_eq!(h["x-request-id"], "trace-abc-123");
    assert!(
        h.get("x-secret").is_none(),
        "header named in Connection is hop-by-hop: {h}"
    );
    assert!(
        h.get("keep-alive").is_none(),
        "keep-alive is hop-by-hop: {h}"
    );

    // Without a request id (or with an unusable one) the gateway makes one and passes it on.
    let r = http
        .get(gw.url("/h"))
        .header("x-request-id", "has space")
        .send()
        .await
        .expect("req");
    let id = r.headers()["x-request-id"].to_str().expect("id").to_owned();
    assert_eq!(id.len(), 36, "uuid: {id}");
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["headers"]["x-request-id"], id.as_str());

    // One access-log line per request, with route, cluster, endpoint, status and duration.
    wait_until(
        "the access log line",
        std::time::Duration::from_secs(5),
        || gw.log().contains(&id),
    )
    .await;
    let log = gw.log();
    let line = log
        .lines()
        .filter(|l| l.contains("\"target\":\"access\""))
        .find(|l| l.contains(&id))
        .unwrap_or_else(|| panic!("no access line for {id}:\n{log}"));
    let v: serde_json::Value = serde_json::from_str(line).expect("json line");
    assert_eq!(v["route"], "all");
    assert_eq!(v["cluster"], "a");
    assert_eq!(v["endpoint"], a.addr().to_string());
    assert_eq!(v["status"], 200);
    assert!(v["duration_ms"].as_f64().is_some_and(|d| d > 0.0));
}

/// An upstream on a raw socket: sends each request head it reads to `heads`, and answers
/// with a field whose name is in mixed case.
async fn head_recorder() -> (
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<String>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut chunk).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&buf).into_owned());
                let _ = s
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nX-Upstream-Thing: u\r\n\
                          Connection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (addr, rx)
}

/// Sends one request with a mixed-case field on a raw socket; the response head as sent.
async fn raw_head(gw: &Gateway) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(gw.http)
        .await
        .expect("connect");
    s.write_all(b"GET /c HTTP/1.1\r\nHost: test\r\nX-Client-Thing: c\r\nConnection: close\r\n\r\n")
        .await
        .expect("write");
    let mut buf = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), s.read_to_end(&mut buf))
        .await
        .expect("a response within 10 s")
        .expect("read");
    let text = String::from_utf8_lossy(&buf).into_owned();
    text.split_once("\r\n\r\n")
        .map(|(h, _)| h.to_owned())
        .unwrap_or(text)
}

/// Header names on the wire: by default standard names go out in title case and others in
/// lowercase, both ways (as HAProxy and Envoy write them); `preserve_header_case` keeps the
/// case each name arrived in. Values are never touched.
#[tokio::test]
async fn header_name_case_on_the_wire() {
    for preserve in [false, true] {
        let (up, mut heads) = head_recorder().await;
        let gw = Gateway::start_custom(
            &format!(
                "[clusters.raw]\nendpoints = [\"{up}\"]\n\n[[routes]]\nname = \"all\"\ncluster = \"raw\"\n"
            ),
            &[],
            |doc| {
                doc.replacen(
                    "[server]\n",
                    &format!("[server]\npreserve_header_case = {preserve}\n"),
                    1,
                )
            },
        )
        .await;
        let down = raw_head(&gw).await;
        let upstream = heads.recv().await.expect("the upstream saw a request");
        let has = |head: &str, line: &str| head.lines().any(|l| l == line);
        // Standard names are title case either way; the gateway's own fields too.
        assert!(has(&upstream, "Host: test"), "{upstream}");
        assert!(down.starts_with("HTTP/1.1 200"), "{down}");
        assert!(has(&down, "Content-Length: 2"), "{down}");
        if preserve {
            assert!(has(&upstream, "X-Client-Thing: c"), "{upstream}");
            assert!(has(&down, "X-Upstream-Thing: u"), "{down}");
        } else {
            assert!(has(&upstream, "x-client-thing: c"), "{upstream}");
            assert!(has(&down, "x-upstream-thing: u"), "{down}");
        }
        // The proxy headers are there in both modes, once each.
        for name in [
            "x-forwarded-for",
            "x-forwarded-proto",
            "x-request-id",
            "via",
        ] {
            let n = upstream
                .lines()
                .filter(|l| l.to_ascii_lowercase().starts_with(&format!("{name}:")))
                .count();
            assert_eq!(n, 1, "{name} in\n{upstream}");
        }
        assert!(
            down.lines()
                .any(|l| l.to_ascii_lowercase().starts_with("x-request-id:")),
            "{down}"
        );
    }
}
