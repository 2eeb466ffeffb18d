//! Circuit breakers, bulkheads, retries, outlier ejection and fallbacks, through the real
//! gateway and real upstreams whose faults are switched at run time.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

async fn breaker_state(http: &reqwest::Client, gw: &Gateway, cluster: &str) -> serde_json::Value {
    let (s, j) = get_json(http, &gw.admin_url(&format!("/breakers/{cluster}"))).await;
    assert_eq!(s, 200, "{j}");
    j
}

/// Polls `/breakers/CLUSTER` until `field` (a JSON pointer) equals `want`.
async fn wait_admin(
    http: &reqwest::Client,
    gw: &Gateway,
    cluster: &str,
    field: &str,
    want: serde_json::Value,
) {
    let what = format!("{cluster}{field} to become {want}");
    eventually(&what, Duration::from_secs(10), || async {
        let j = breaker_state(http, gw, cluster).await;
        if j.pointer(field) == Some(&want) {
            Ok(())
        } else {
            Err(j.to_string())
        }
    })
    .await;
}

/// Polls the admin API until the cluster's breaker is in `state`.
async fn wait_breaker(http: &reqwest::Client, gw: &Gateway, cluster: &str, state: &str) {
    wait_admin(http, gw, cluster, "/breaker/state", state.into()).await;
}

#[tokio::test]
async fn breaker_opens_at_its_volume_fallback_answers_and_a_trial_closes_it() {
    let up = echo("flaky").await;
    let body = format!(
        "{}\
         [clusters.flaky.circuit_breaker]\nvolume_threshold = 6\nerror_percent = 50\nsleep_window_ms = 300\n\
         [clusters.flaky.retry]\nretries = 0\n\
         [clusters.flaky.outlier_detection]\nenabled = false\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"flaky\"\npath_prefix = \"/\"\n\
         [routes.fallback.response]\nstatus = 200\nbody = '{{\"titles\":[]}}'\n\
         headers = {{ \"content-type\" = \"application/json\" }}\n",
        cluster("flaky", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let r = http.get(gw.url("/titles")).send().await.expect("req");
    assert_eq!(r.status(), 200);
    assert!(r.headers().get("x-fallback").is_none());

    up.set_fault(Some(503), Duration::ZERO);
    // 1 success + 5 failures = 6 requests at 83 % errors: the 6th request trips it.
    for i in 0..5 {
        let r = http.get(gw.url("/titles")).send().await.expect("req");
        assert_eq!(r.status(), 200, "request {i}: the fallback answers the 503");
        assert_eq!(r.headers()["x-fallback"], "static; reason=status_503");
        assert!(
            r.headers().get("x-request-id").is_some(),
            "response filters ran"
        );
        assert_eq!(r.text().await.expect("body"), "{\"titles\":[]}");
    }
    let j = breaker_state(&http, &gw, "flaky").await;
    assert_eq!(j["breaker"]["state"], "open", "{j}");
    assert_eq!(j["breaker"]["window"]["requests"], 6);
    assert_eq!(up.hits(), 6);

    // Open: the fallback answers without calling the upstream.
    let r = http.get(gw.url("/titles")).send().await.expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "static; reason=circuit_open");
    assert_eq!(
        up.hits(),
        6,
        "short-circuited calls never reach the upstream"
    );
    let j = breaker_state(&http, &gw, "flaky").await;
    assert_eq!(j["breaker"]["window"]["counts"]["short_circuited"], 1);
    assert!(j["breaker"]["window"]["counts"]["fallback_success"].as_u64() >= Some(6));

    // The upstream recovers; after the sleep window one trial goes through and closes it.
    up.set_fault(None, Duration::ZERO);
    let r = eventually(
        "the breaker to let a trial through",
        Duration::from_secs(10),
        || async {
            let r = http.get(gw.url("/titles")).send().await.expect("req");
            match r.headers().get("x-fallback") {
                None => Ok(r),
                Some(f) => Err(format!("still x-fallback: {f:?}")),
            }
        },
    )
    .await;
    assert_eq!(r.headers()["x-echo-instance"], "flaky");
    let j = breaker_state(&http, &gw, "flaky").await;
    assert_eq!(j["breaker"]["state"], "closed", "{j}");
    assert_eq!(
        j["breaker"]["window"]["requests"], 0,
        "closing resets the window"
    );
    assert!(gw.log().contains("circuit breaker state changed"));
}

#[tokio::test]
async fn without_a_fallback_an_open_breaker_is_a_fast_503() {
    let dead = dead_endpoint();
    let body = format!(
        "[clusters.dead]\nendpoints = [\"{dead}\"]\n\
         [clusters.dead.circuit_breaker]\nmode = \"consecutive_failures\"\nconsecutive_failures = 3\nsleep_window_ms = 60000\n\
         [clusters.dead.retry]\nretries = 0\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"dead\"\npath_prefix = \"/\"\n"
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    for _ in 0..3 {
        let r = http.get(gw.url("/x")).send().await.expect("req");
        assert_eq!(r.status(), 502);
        assert_eq!(
            r.headers()["connection"],
            "close",
            "pingora closes the connection after a failed upstream attempt; the answer says so"
        );
    }
    let r = http.get(gw.url("/x")).send().await.expect("req");
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "circuit_open");
    assert_eq!(j["cluster"], "dead");
    // A refusal is answered before the proxy loop: the client's connection stays usable.
    let statuses = requests_on_one_connection(&gw, 3).await;
    assert_eq!(statuses, vec![503, 503, 503]);
}

/// Sends `n` GETs one after another on a single HTTP/1.1 connection and returns the statuses;
/// fails if the gateway closes the connection in between.
async fn requests_on_one_connection(gw: &Gateway, n: usize) -> Vec<u16> {
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    let addr = gw.url("").trim_start_matches("http://").to_owned();
    let stream = tokio::net::TcpStream::connect(&addr)
        .await
        .expect("connect");
    let mut conn = BufReader::new(stream);
    let mut statuses = Vec::new();
    for i in 0..n {
        conn.get_mut()
            .write_all(b"GET /x HTTP/1.1\r\nhost: t\r\n\r\n")
            .await
            .expect("write");
        let mut line = String::new();
        conn.read_line(&mut line).await.expect("status line");
        assert!(!line.is_empty(), "connection closed before request {i}");
        statuses.push(
            line.split(' ')
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or(0),
        );
        let mut length = 0;
        loop {
            line.clear();
            conn.read_line(&mut line).await.expect("header");
            let l = line.trim_end().to_ascii_lowercase();
            if l.is_empty() {
                break;
            }
            assert_ne!(
                l, "connection: close",
                "request {i} was answered with a close"
            );
            if let Some(v) = l.strip_prefix("content-length:") {
                length = v.trim().parse().expect("length");
            }
        }
        let mut body = vec![0; length];
        conn.read_exact(&mut body).await.expect("body");
    }
    statuses
}

#[tokio::test]
async fn operators_force_a_breaker_open_or_closed_and_reset_it() {
    let up = echo("svc").await;
    let body = format!(
        "{}[[routes]]\nname = \"api\"\ncluster = \"svc\"\npath_prefix = \"/\"\n",
        cluster("svc", &[&up], "")
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let act = |a: &str| {
        http.post(gw.admin_url(&format!("/breakers/svc/{a}")))
            .header("x-gateway-admin", "1")
            .send()
    };

    let r = act("force_open").await.expect("admin");
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["breaker"]["state"], "forced_open");
    let r = http.get(gw.url("/a")).send().await.expect("req");
    assert_eq!(r.status(), 503);
    assert_eq!(up.hits(), 0);

    act("force_closed").await.expect("admin");
    up.set_fault(Some(500), Duration::ZERO);
    for _ in 0..30 {
        let r = http.get(gw.url("/a")).send().await.expect("req");
        assert_eq!(
            r.status(),
            500,
            "forced closed: failures pass through, nothing trips"
        );
    }
    wait_breaker(&http, &gw, "svc", "forced_closed").await;

    act("reset").await.expect("admin");
    up.set_fault(None, Duration::ZERO);
    wait_breaker(&http, &gw, "svc", "closed").await;
    let r = http.get(gw.url("/a")).send().await.expect("req");
    assert_eq!(r.status(), 200);

    let r = act("explode").await.expect("admin");
    assert_eq!(r.status(), 400);
    let r = http
        .post(gw.admin_url("/breakers/nope/reset"))
        .header("x-gateway-admin", "1")
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 404);
    let (_, all) = get_json(&http, &gw.admin_url("/breakers")).await;
    assert_eq!(all["breakers"][0]["cluster"], "svc");
    assert!(gw.log().contains("changed by an operator"));
}

#[tokio::test]
async fn a_slow_upstream_fills_the_bulkhead_and_the_excess_is_rejected_fast() {
    let up = echo("slow").await;
    let body = format!(
        "{}\
         [clusters.slow.bulkhead]\nmax_concurrent = 2\n\n\
         [clusters.slow.circuit_breaker]\nenabled = false\n\n\
         {}\
         [clusters.queued.bulkhead]\nmax_concurrent = 1\nmax_queue = 1\nqueue_timeout_ms = 200\n\n\
         [[routes]]\nname = \"slow\"\ncluster = \"slow\"\npath_prefix = \"/slow\"\n\n\
         [[routes]]\nname = \"queued\"\ncluster = \"queued\"\npath_prefix = \"/queued\"\n",
        cluster("slow", &[&up], ""),
        cluster("queued", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let mut slow = Vec::new();
    for _ in 0..2 {
        let (h, u) = (http.clone(), gw.url("/slow?delay_ms=2000"));
        slow.push(tokio::spawn(async move { h.get(u).send().await }));
    }
    wait_admin(&http, &gw, "slow", "/bulkhead/in_use", 2.into()).await;
    let start = Instant::now();
    let r = http
        .get(gw.url("/slow?delay_ms=2000"))
        .send()
        .await
        .expect("req");
    let took = start.elapsed();
    assert_eq!(r.status(), 503);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "bulkhead_full");
    assert!(
        took < Duration::from_millis(1000),
        "rejected fast, took {took:?}"
    );
    for h in slow {
        assert_eq!(h.await.expect("join").expect("slow req").status(), 200);
    }
    let j = breaker_state(&http, &gw, "slow").await;
    assert_eq!(j["bulkhead"]["rejected"], 1);
    // Slots are released when each request ends (just after its response is sent).
    wait_admin(&http, &gw, "slow", "/bulkhead/in_use", 0.into()).await;

    // With a queue: one waiter waits at most queue_timeout_ms, then is refused.
    let (h, u) = (http.clone(), gw.url("/queued?delay_ms=2000"));
    let holder = tokio::spawn(async move { h.get(u).send().await });
    wait_admin(&http, &gw, "queued", "/bulkhead/in_use", 1.into()).await;
    let start = Instant::now();
    let r = http.get(gw.url("/queued")).send().await.expect("req");
    let took = start.elapsed();
    assert_eq!(r.status(), 503);
    assert!(
        took >= Duration::from_millis(190) && took < Duration::from_millis(1500),
        "waited for the queue timeout, took {took:?}"
    );
    assert_eq!(holder.await.expect("join").expect("req").status(), 200);
}

#[tokio::test]
async fn retries_land_on_healthy_endpoints_and_stop_at_the_budget() {
    let good = echo("good").await;
    let bad = echo("bad").await;
    bad.set_fault(Some(503), Duration::ZERO);
    let dead = dead_endpoint();
    let body = format!(
        "[clusters.mixed]\nendpoints = [\"{}\", \"{}\", \"{dead}\"]\nload_balancing = \"round_robin\"\n\
         [clusters.mixed.circuit_breaker]\nenabled = false\n\
         [clusters.mixed.outlier_detection]\nenabled = false\n\
         [clusters.mixed.retry]\nretries = 2\n\n\
         [clusters.broken]\nendpoints = [\"{}\"]\n\
         [clusters.broken.circuit_breaker]\nenabled = false\n\
         [clusters.broken.outlier_detection]\nenabled = false\n\
         [clusters.broken.retry]\nretries = 3\nbudget_percent = 0\nbudget_min_per_second = 1\n\n\
         [[routes]]\nname = \"mixed\"\ncluster = \"mixed\"\npath_prefix = \"/mixed\"\n\n\
         [[routes]]\nname = \"broken\"\ncluster = \"broken\"\npath_prefix = \"/broken\"\n",
        good.addr(),
        bad.addr(),
        bad.addr(),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    // Every GET ends on the healthy endpoint: connect failures and 503s are retried elsewhere.
    for i in 0..30 {
        let r = http.get(gw.url("/mixed")).send().await.expect("req");
        assert_eq!(r.status(), 200, "GET {i}");
        assert_eq!(r.headers()["x-echo-instance"], "good");
    }
    assert!(bad.hits() > 0, "the failing endpoint was tried");
    // POST is not idempotent: a 503 after sending is not retried.
    let mut relayed = 0;
    for _ in 0..6 {
        let r = http
            .post(gw.url("/mixed"))
            .body("x")
            .send()
            .await
            .expect("req");
        if r.status() == 503 {
            relayed += 1;
        }
    }
    assert!(
        relayed > 0,
        "POSTs that hit the failing endpoint get its 503"
    );

    // The budget: 0 % of load plus 1 retry/s over a 10 s window = 10 retries, whatever
    // each request's retry count says.
    let before = bad.hits();
    for _ in 0..20 {
        let r = http.get(gw.url("/broken")).send().await.expect("req");
        assert_eq!(r.status(), 503);
    }
    assert_eq!(
        bad.hits() - before,
        20 + 10,
        "20 requests + 10 budgeted retries"
    );
    let j = breaker_state(&http, &gw, "broken").await;
    assert_eq!(j["retry_budget"]["retries"], 10, "{j}");
    assert!(j["retry_budget"]["refused"].as_u64() > Some(0));
}

#[tokio::test]
async fn failing_endpoints_are_ejected_and_requests_go_to_the_healthy_one() {
    let good = echo("good").await;
    let bad = echo("bad").await;
    bad.set_fault(Some(500), Duration::ZERO);
    let body = format!(
        "{}\
         [clusters.pool.circuit_breaker]\nenabled = false\n\
         [clusters.pool.retry]\nretries = 0\n\
         [clusters.pool.outlier_detection]\nconsecutive_failures = 3\nbase_ejection_ms = 60000\n\n\
         [[routes]]\nname = \"pool\"\ncluster = \"pool\"\npath_prefix = \"/\"\n",
        cluster("pool", &[&good, &bad], "load_balancing = \"round_robin\""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    for _ in 0..6 {
        http.get(gw.url("/p")).send().await.expect("req");
    }
    assert_eq!(bad.hits(), 3);
    for _ in 0..10 {
        let r = http.get(gw.url("/p")).send().await.expect("req");
        assert_eq!(r.status(), 200);
    }
    assert_eq!(bad.hits(), 3, "the ejected endpoint gets no traffic");
    let (_, clusters) = get_json(&http, &gw.admin_url("/clusters")).await;
    let eps = &clusters["clusters"][0]["endpoints"];
    let bad_ep = eps
        .as_array()
        .and_then(|e| e.iter().find(|e| e["address"] == bad.addr().to_string()))
        .expect("listed");
    assert_eq!(bad_ep["ejected"], true, "{clusters}");
    assert!(gw.log().contains("outlier endpoint ejected"));
}

#[tokio::test]
async fn last_good_response_and_fallback_cluster() {
    let primary = echo("primary").await;
    let backup = echo("backup").await;
    let dead = dead_endpoint();
    let body = format!(
        "{}{}\
         [clusters.primary.retry]\nretries = 0\n\
         [clusters.gone]\nendpoints = [\"{dead}\"]\n\n\
         [[routes]]\nname = \"catalog\"\ncluster = \"primary\"\npath_prefix = \"/catalog\"\n\
         [routes.fallback]\non = [\"5xx\", \"connect_failure\", \"timeout\", \"circuit_open\"]\n\
         [routes.fallback.last_good]\nmax_age_ms = 60000\n\n\
         [[routes]]\nname = \"steer\"\ncluster = \"gone\"\npath_prefix = \"/steer\"\n\
         [routes.fallback]\ncluster = \"backup\"\n",
        cluster("primary", &[&primary], ""),
        cluster("backup", &[&backup], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();

    let fresh = http
        .get(gw.url("/catalog/titles?page=1"))
        .send()
        .await
        .expect("req");
    assert_eq!(fresh.status(), 200);
    let fresh_body = fresh.text().await.expect("body");

    primary.set_fault(Some(503), Duration::ZERO);
    let r = http
        .get(gw.url("/catalog/titles?page=1"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-fallback"], "last_good; reason=status_503");
    assert!(r.headers().get("age").is_some());
    assert_eq!(r.text().await.expect("body"), fresh_body);
    // Nothing kept for another query: the upstream's own 503 is relayed.
    let r = http
        .get(gw.url("/catalog/titles?page=2"))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["x-echo-instance"], "primary");

    // Another cluster answers when the route's cluster cannot be reached.
    let r = http.get(gw.url("/steer/x")).send().await.expect("req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-instance"], "backup");
    assert_eq!(
        r.headers()["x-fallback"],
        "cluster=backup; reason=connect_failure"
    );
}

#[tokio::test]
async fn bad_resilience_settings_are_rejected_with_the_line_and_a_fix() {
    let cases = [
        (
            "[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.c.circuit_breaker]\nmode = \"sometimes\"\n",
            "circuit_breaker mode `sometimes` is unknown",
        ),
        (
            "[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.c.retry]\non = [\"teapot\"]\n",
            "`teapot` is not a known condition",
        ),
        (
            "[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.c.circuit_breaker]\nerror_percent = 150\n",
            "error_percent = 150 is out of range",
        ),
    ];
    for (clusters, expected) in cases {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("bad.toml");
        std::fs::write(
            &path,
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n{clusters}\n[[routes]]\nname = \"r\"\ncluster = \"c\"\n"
            ),
        )
        .expect("write");
        let (code, _, err) = run_gateway_cli(&["check", "--config", path.to_str().expect("utf8")]);
        assert_ne!(code, 0);
        assert!(err.contains(expected), "{expected:?} not in:\n{err}");
        assert!(err.contains("bad.toml:"), "names the file and line:\n{err}");
    }
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n\
         [[routes]]\nname = \"r\"\ncluster = \"c\"\n[routes.fallback]\ncluster = \"nope\"\n",
    )
    .expect("write");
    let (code, _, err) = run_gateway_cli(&["check", "--config", path.to_str().expect("utf8")]);
    assert_ne!(code, 0);
    assert!(
        err.contains("fallback of route `r` names unknown cluster `nope`"),
        "{err}"
    );
}

#[tokio::test]
async fn a_hung_endpoint_is_cut_at_the_per_try_timeout_and_retries_stop_at_the_deadline() {
    let good = echo("good").await;
    let hung = echo("hung").await;
    hung.set_fault(None, Duration::from_secs(20));
    let body = format!(
        "{}\
         per_try_timeout_ms = 200\n\
         [clusters.pool.circuit_breaker]\nenabled = false\n\
         [clusters.pool.outlier_detection]\nenabled = false\n\
         [clusters.pool.retry]\nretries = 1\non = [\"timeout\"]\n\n\
         {}\
         per_try_timeout_ms = 200\ntimeout_ms = 300\n\
         [clusters.stuck.circuit_breaker]\nenabled = false\n\
         [clusters.stuck.retry]\nretries = 5\non = [\"timeout\"]\n\n\
         [[routes]]\nname = \"pool\"\ncluster = \"pool\"\npath_prefix = \"/pool\"\n\n\
         [[routes]]\nname = \"stuck\"\ncluster = \"stuck\"\npath_prefix = \"/stuck\"\n",
        cluster("pool", &[&hung, &good], "load_balancing = \"round_robin\""),
        cluster("stuck", &[&hung], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let mut slowest = Duration::ZERO;
    for i in 0..4 {
        let start = Instant::now();
        let r = http.get(gw.url("/pool")).send().await.expect("req");
        slowest = slowest.max(start.elapsed());
        assert_eq!(r.status(), 200, "GET {i}");
        assert_eq!(r.headers()["x-echo-instance"], "good");
    }
    assert!(
        hung.hits() >= 1,
        "round robin sent some attempts to the hung endpoint"
    );
    assert!(
        slowest >= Duration::from_millis(190) && slowest < Duration::from_millis(2000),
        "a hung attempt costs one per-try timeout, then the retry answers: {slowest:?}"
    );

    // 200 ms per try, 300 ms in all: the second try gets only the 100 ms left, then 504.
    let start = Instant::now();
    let r = http.get(gw.url("/stuck")).send().await.expect("req");
    let took = start.elapsed();
    assert_eq!(r.status(), 504);
    assert!(
        took >= Duration::from_millis(280) && took < Duration::from_millis(1500),
        "the deadline bounds the retries: {took:?}"
    );
}
