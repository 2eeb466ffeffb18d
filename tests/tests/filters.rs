//! The filter chain through the real gateway: global then route filters, response filters on
//! upstream and gateway-made responses, and each built-in filter's accept/refuse behaviour.

mod harness;

use harness::*;
use serde_json::Value;

#[tokio::test]
async fn global_filters_run_first_and_on_gateway_made_responses() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        r#"{cluster}
[[filters]]
filter = "headers"
request_set = {{ "x-order" = "global" }}
response_set = {{ "x-edge" = "gw", "x-route" = "${{route}}" }}

[[filters]]
filter = "request_id"
header = "x-correlation-id"

[[routes]]
name = "api"
cluster = "echo"
path_prefix = "/api"

[[routes.filters]]
filter = "headers"
request_add = {{ "x-order" = "route", "x-client" = "${{client_ip}}" }}
request_remove = ["x-internal"]
response_remove = ["x-echo-instance"]

[[routes]]
name = "locked"
cluster = "echo"
path_prefix = "/locked"

[[routes.filters]]
filter = "ip_filter"
deny = ["127.0.0.0/8"]
"#,
        cluster = cluster("echo", &[&up], ""),
    ))
    .await;
    let c = client();
    let resp = c
        .get(gw.url("/api/x"))
        .header("x-internal", "secret")
        .header("x-request-id", "rid-1")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-edge"], "gw");
    assert_eq!(resp.headers()["x-route"], "api");
    assert_eq!(resp.headers()["x-correlation-id"], "rid-1");
    assert!(resp.headers().get("x-echo-instance").is_none());
    let body: Value = resp.json().await.expect("json");
    let h = &body["headers"];
    assert_eq!(
        h["x-order"],
        serde_json::json!(["global", "route"]),
        "global runs first: {h}"
    );
    assert_eq!(h["x-client"], "127.0.0.1");
    assert_eq!(h["x-correlation-id"], "rid-1");
    assert!(h.get("x-internal").is_none());

    // A filter's answer (403) and the gateway's own 404 pass through the global response
    // filters that ran before.
    let resp = c.get(gw.url("/locked")).send().await.expect("request");
    assert_eq!(resp.status(), 403);
    assert_eq!(resp.headers()["x-route"], "locked");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "ip_denied");
    let resp = c.get(gw.url("/nowhere")).send().await.expect("request");
    assert_eq!(resp.status(), 404);
    assert_eq!(resp.headers()["x-edge"], "gw");
    assert!(
        resp.headers().get("x-route").is_none(),
        "no route: a template without a value removes the header"
    );
    assert!(resp.headers().contains_key("x-correlation-id"));

    let (_, routes) = get_json(&c, &gw.admin_url("/routes")).await;
    assert_eq!(
        routes["routes"][0]["filters"],
        serde_json::json!(["headers", "request_id", "headers"])
    );
    assert_eq!(up.hits(), 1);
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after_and_ratelimit_headers() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        r#"{cluster}
[[routes]]
name = "api"
cluster = "echo"

[[routes.filters]]
filter = "rate_limit"
limits = [{{ per_minute = 3 }}, {{ key = "header:x-api-key", per_hour = 100 }}]
"#,
        cluster = cluster("echo", &[&up], ""),
    ))
    .await;
    let c = client();
    for remaining in ["2", "1", "0"] {
        let resp = c.get(gw.url("/")).send().await.expect("request");
        assert_eq!(resp.status(), 200);
        assert_eq!(resp.headers()["ratelimit-limit"], "3");
        assert_eq!(resp.headers()["ratelimit-remaining"], remaining);
    }
    let resp = c.get(gw.url("/")).send().await.expect("request");
    assert_eq!(resp.status(), 429);
    let retry: u64 = resp.headers()["retry-after"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Retry-After seconds");
    assert!((1..=20).contains(&retry), "{retry}");
    assert_eq!(resp.headers()["ratelimit-remaining"], "0");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "rate_limited");
    assert_eq!(up.hits(), 3);
}

#[tokio::test]
async fn cors_preflight_is_answered_at_the_edge() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        r#"{cluster}
[[routes]]
name = "api"
cluster = "echo"

[[routes.filters]]
filter = "cors"
allow_origins = ["https://app.example.com"]
allow_methods = ["GET", "POST"]
allow_headers = ["authorization", "content-type"]
allow_credentials = true
max_age_seconds = 120
"#,
        cluster = cluster("echo", &[&up], ""),
    ))
    .await;
    let c = client();
    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/titles"))
        .header("origin", "https://app.example.com")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "Authorization")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 204);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example.com");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "120");
    assert_eq!(up.hits(), 0, "preflights never reach the upstream");

    let resp = c
        .request(reqwest::Method::OPTIONS, gw.url("/titles"))
        .header("origin", "https://evil.example")
        .header("access-control-request-method", "POST")
        .send()
        .await
        .expect("preflight");
    assert_eq!(resp.status(), 403);

    let resp = c
        .get(gw.url("/titles"))
        .header("origin", "https://app.example.com")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example.com"
    );
    let resp = c
        .get(gw.url("/titles"))
        .header("origin", "https://evil.example")
        .send()
        .await
        .expect("request");
    assert!(resp.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn body_limit_by_content_length_and_while_streaming() {
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        r#"{cluster}
[[routes]]
name = "upload"
cluster = "echo"

[[routes.filters]]
filter = "body_limit"
max_bytes = 1024
"#,
        cluster = cluster("echo", &[&up], ""),
    ))
    .await;
    let c = client();
    let ok = c
        .post(gw.url("/u"))
        .body(vec![b'a'; 1000])
        .send()
        .await
        .expect("request");
    assert_eq!(ok.status(), 200);
    let big = c
        .post(gw.url("/u"))
        .body(vec![b'a'; 4096])
        .send()
        .await
        .expect("request");
    assert_eq!(big.status(), 413);
    let body: Value = big.json().await.expect("json");
    assert_eq!(body["error"], "body_too_large");
    assert_eq!(
        up.hits(),
        1,
        "refused by Content-Length before any upstream call"
    );

    // Chunked (no Content-Length): refused while the body streams.
    let chunks: Vec<Result<Vec<u8>, std::io::Error>> =
        (0..8).map(|_| Ok(vec![b'b'; 512])).collect();
    let streamed = c
        .post(gw.url("/u"))
        .body(reqwest::Body::wrap_stream(futures_util::stream::iter(
            chunks,
        )))
        .send()
        .await
        .expect("request");
    assert_eq!(streamed.status(), 413);
}

#[test]
fn filter_config_errors_name_the_route_line_and_fix() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("gw.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n\n[clusters.c]\nendpoints = [\"127.0.0.1:2\"]\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"c\"\n\n[[routes.filters]]\nfilter = \"jwtt\"\n\n\
         [[routes.filters]]\nfilter = \"rate_limit\"\nlimits = [{ per_second = 0 }]\n\n\
         [[routes.filters]]\nfilter = \"cors\"\nallow_origin = [\"*\"]\n",
    )
    .expect("write");
    let p = path.to_string_lossy().into_owned();
    let (code, _, err) = run_gateway_cli(&["check", "--config", &p]);
    assert_eq!(code, 1);
    assert!(
        err.contains(&format!(
            "{p}:12:10: error: route `api` filter `jwtt`: unknown filter `jwtt`"
        )),
        "{err}"
    );
    assert!(err.contains("fix: use one of the registered filters: body_limit, cors, headers, ip_filter, jwt, rate_limit, request_id"), "{err}");
    assert!(
        err.contains(&format!(
            "{p}:16:1: error: route `api` filter `rate_limit`: a limit's rate is 0"
        )),
        "{err}"
    );
    assert!(
        err.contains("route `api` filter `cors`: unknown field `allow_origin`"),
        "{err}"
    );
}
