//! Observability through the real gateway: the Hystrix event stream as a dashboard consumes
//! it, the Prometheus exposition checked by a parser (and `promtool` when installed), and the
//! JSON access log.

mod harness;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use harness::*;
use serde_json::Value;

/// Reads `/hystrix.stream` the way the Hystrix Dashboard does: `data:` lines hold JSON
/// objects, `ping:` lines keep the connection alive.
struct StreamReader {
    body: std::pin::Pin<Box<dyn futures_util::Stream<Item = reqwest::Result<bytes::Bytes>> + Send>>,
    buf: String,
    pings: usize,
}

impl StreamReader {
    async fn open(http: &reqwest::Client, url: &str) -> Self {
        let resp = http.get(url).send().await.expect("stream request");
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"],
            "text/event-stream;charset=UTF-8"
        );
        Self {
            body: Box::pin(resp.bytes_stream()),
            buf: String::new(),
            pings: 0,
        }
    }

    /// The next `data:` object, within `deadline`.
    async fn next_object(&mut self, deadline: Instant) -> Value {
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let event = event.trim();
                if let Some(json) = event.strip_prefix("data: ") {
                    return serde_json::from_str(json).expect("stream objects are JSON");
                }
                assert!(event.starts_with("ping:"), "unexpected event {event:?}");
                self.pings += 1;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let chunk = tokio::time::timeout(left, self.body.next())
                .await
                .expect("the stream kept sending within the deadline")
                .expect("the stream stayed open")
                .expect("stream chunk");
            self.buf
                .push_str(std::str::from_utf8(&chunk).expect("utf8"));
        }
    }

    /// Reads objects until one of `kind` named `name` satisfies `want`; returns it.
    async fn wait_for(
        &mut self,
        kind: &str,
        name: &str,
        what: &str,
        want: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let o = self.next_object(deadline).await;
            if o["type"] == kind && o["name"] == name && want(&o) {
                return o;
            }
            assert!(Instant::now() < deadline, "{kind} {name}: never {what}");
        }
    }
}

#[tokio::test]
async fn a_hystrix_stream_consumer_sees_the_circuit_open_when_its_upstream_fails() {
    let up = echo("titles").await;
    let body = format!(
        "{}\
         [clusters.titles.circuit_breaker]\nvolume_threshold = 10\nerror_percent = 50\nsleep_window_ms = 60000\n\
         [clusters.titles.retry]\nretries = 0\n\
         [clusters.titles.outlier_detection]\nenabled = false\n\
         [clusters.titles.bulkhead]\nmax_concurrent = 7\n\n\
         [[routes]]\nname = \"titles\"\ncluster = \"titles\"\npath_prefix = \"/\"\n",
        cluster("titles", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let mut stream = StreamReader::open(&http, &gw.admin_url("/hystrix.stream")).await;

    for _ in 0..5 {
        let r = http.get(gw.url("/t/1")).send().await.expect("req");
        assert_eq!(r.status(), 200);
    }
    let healthy = stream
        .wait_for("HystrixCommand", "titles", "counted 5 successes", |o| {
            o["rollingCountSuccess"] == 5
        })
        .await;
    assert_eq!(healthy["isCircuitBreakerOpen"], false);
    assert_eq!(healthy["errorPercentage"], 0);
    assert_eq!(healthy["group"], "titles");
    assert_eq!(healthy["threadPool"], "titles");
    assert_eq!(
        healthy["propertyValue_circuitBreakerRequestVolumeThreshold"],
        10
    );
    assert_eq!(
        healthy["propertyValue_circuitBreakerSleepWindowInMilliseconds"],
        60000
    );
    for key in ["0", "25", "50", "75", "90", "95", "99", "99.5", "100"] {
        assert!(
            healthy["latencyExecute"][key].is_u64(),
            "latency percentile {key}: {healthy}"
        );
    }
    let pool = stream
        .wait_for("HystrixThreadPool", "titles", "reported", |o| {
            o["rollingCountThreadsExecuted"] == 5
        })
        .await;
    assert_eq!(pool["currentMaximumPoolSize"], 7);
    assert_eq!(pool["currentActiveCount"], 0);

    // The upstream starts failing: 5 ok + 5 failures in the window trips the breaker
    // (10 requests >= 10, 50 % >= 50 %); later calls are short-circuited.
    up.set_fault(Some(500), Duration::ZERO);
    for _ in 0..5 {
        let r = http.get(gw.url("/t/1")).send().await.expect("req");
        assert_eq!(r.status(), 500, "relayed upstream failure");
    }
    for _ in 0..3 {
        let r = http.get(gw.url("/t/1")).send().await.expect("req");
        assert_eq!(r.status(), 503, "short-circuited");
    }
    let open = stream
        .wait_for("HystrixCommand", "titles", "open", |o| {
            o["isCircuitBreakerOpen"] == true && o["rollingCountShortCircuited"] == 3
        })
        .await;
    assert_eq!(open["rollingCountFailure"], 5);
    assert_eq!(open["rollingCountSuccess"], 5);
    assert_eq!(open["errorCount"], 5);
    assert_eq!(open["requestCount"], 10);
    assert_eq!(open["errorPercentage"], 50);
    assert_eq!(open["circuitBreakerState"], "open");
    assert_eq!(open["rollingCountExceptionsThrown"], 8);
    assert_eq!(up.hits(), 10, "short-circuited calls never reached it");

    // An operator's force-close shows in the stream too.
    let r = http
        .post(gw.admin_url("/breakers/titles/force_closed"))
        .header("x-gateway-admin", "1")
        .send()
        .await
        .expect("force");
    assert_eq!(r.status(), 200);
    let forced = stream
        .wait_for("HystrixCommand", "titles", "force-closed", |o| {
            o["propertyValue_circuitBreakerForceClosed"] == true
        })
        .await;
    assert_eq!(forced["isCircuitBreakerOpen"], false);
}

#[tokio::test]
async fn the_stream_pings_when_there_is_nothing_to_report() {
    // No routes and no clusters: every frame is empty, so only keepalives arrive.
    let gw = Gateway::start("").await;
    let http = client();
    let resp = http
        .get(gw.admin_url("/hystrix.stream"))
        .send()
        .await
        .expect("stream");
    let mut body = resp.bytes_stream();
    let mut text = String::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.matches("ping: \n\n").count() < 2 {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, body.next())
            .await
            .expect("pings within the deadline")
            .expect("open")
            .expect("chunk");
        text.push_str(std::str::from_utf8(&chunk).expect("utf8"));
    }
    assert!(!text.contains("data:"), "{text}");
}

/// One sample: metric name, labels, value.
type Samples = Vec<(String, HashMap<String, String>, f64)>;

fn parse_metrics(text: &str) -> Samples {
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("the exposition parses");
    scrape
        .samples
        .into_iter()
        .map(|s| {
            let value = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                prometheus_parse::Value::Histogram(h) => {
                    h.iter().map(|b| b.count).fold(f64::NAN, f64::max)
                }
                prometheus_parse::Value::Summary(_) => f64::NAN,
            };
            let labels = s
                .labels
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            (s.metric, labels, value)
        })
        .collect()
}

/// The value of the sample named `name` whose labels include `labels`.
fn value(samples: &Samples, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.get(*k).map(String::as_str) == Some(*v))
        })
        .map(|(_, _, v)| *v)
}

/// Runs `promtool check metrics` on the exposition when promtool is installed (scripts/setup
/// installs it); returns whether it ran.
fn promtool_check(text: &str) -> bool {
    use std::io::Write;
    let Ok(mut child) = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
    else {
        return false;
    };
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(text.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    true
}

#[tokio::test]
async fn prometheus_metrics_pass_the_format_check_and_count_what_happened() {
    let up = echo("catalog").await;
    let dead = dead_endpoint();
    let body = format!(
        "{}\
         [clusters.gone]\nendpoints = [\"{dead}\"]\n\
         [clusters.gone.circuit_breaker]\nvolume_threshold = 3\nerror_percent = 50\nsleep_window_ms = 60000\n\
         [clusters.gone.retry]\nretries = 0\n\
         [clusters.gone.outlier_detection]\nenabled = false\n\n\
         [[routes]]\nname = \"catalog\"\ncluster = \"catalog\"\npath_prefix = \"/catalog\"\n\n\
         [[routes]]\nname = \"legacy\"\ncluster = \"gone\"\npath_prefix = \"/legacy\"\n\
         [routes.fallback.response]\nstatus = 200\nbody = 'cached'\n\n\
         [[routes]]\nname = \"private\"\ncluster = \"catalog\"\npath_prefix = \"/private\"\n\
         [[routes.filters]]\nfilter = \"ip_filter\"\ndeny = [\"127.0.0.0/8\"]\n",
        cluster("catalog", &[&up], ""),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    for _ in 0..4 {
        let r = http.get(gw.url("/catalog/x")).send().await.expect("req");
        assert_eq!(r.status(), 200);
    }
    for _ in 0..5 {
        let r = http.get(gw.url("/legacy/x")).send().await.expect("req");
        assert_eq!(r.status(), 200, "the static fallback answers");
    }
    let r = http.get(gw.url("/private/x")).send().await.expect("req");
    assert_eq!(r.status(), 403);
    let r = http.get(gw.url("/nowhere")).send().await.expect("req");
    assert_eq!(r.status(), 404);
    // A rejected reload is counted and the generation stays.
    let r = http
        .post(gw.admin_url("/config"))
        .header("x-gateway-admin", "1")
        .body("[[routes]]\nname = 1\n")
        .send()
        .await
        .expect("reload");
    assert_eq!(r.status(), 422);

    let resp = http
        .get(gw.admin_url("/metrics"))
        .send()
        .await
        .expect("metrics");
    assert_eq!(resp.status(), 200);
    assert!(resp.headers()["content-type"]
        .to_str()
        .expect("ascii")
        .starts_with("text/plain; version=0.0.4"));
    let text = resp.text().await.expect("text");
    let checked = promtool_check(&text);
    eprintln!(
        "promtool check metrics: {}",
        if checked { "passed" } else { "not installed" }
    );
    let s = parse_metrics(&text);
    let v = |name: &str, labels: &[(&str, &str)]| {
        value(&s, name, labels).unwrap_or_else(|| panic!("no {name} {labels:?} in:\n{text}"))
    };
    let catalog = [("route", "catalog"), ("cluster", "catalog")];
    assert_eq!(
        v(
            "gateway_requests_total",
            &[catalog[0], catalog[1], ("class", "2xx")]
        ),
        4.0
    );
    assert_eq!(v("gateway_request_duration_seconds_count", &catalog), 4.0);
    assert_eq!(v("gateway_requests_in_flight", &catalog), 0.0);
    assert_eq!(
        v(
            "gateway_upstream_attempts_total",
            &[("cluster", "catalog"), ("outcome", "success")]
        ),
        4.0
    );
    // The dead cluster: 3 connect failures open its breaker, then 2 are short-circuited;
    // every request got the static fallback.
    assert_eq!(
        v(
            "gateway_upstream_attempts_total",
            &[("cluster", "gone"), ("outcome", "failure")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "gateway_circuit_breaker_state",
            &[("cluster", "gone"), ("state", "open")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "gateway_circuit_breaker_state",
            &[("cluster", "gone"), ("state", "closed")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "gateway_circuit_breaker_transitions_total",
            &[("cluster", "gone"), ("from", "closed"), ("to", "open")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "gateway_fallbacks_total",
            &[
                ("route", "legacy"),
                ("kind", "static"),
                ("result", "success")
            ]
        ),
        5.0
    );
    assert_eq!(
        v(
            "gateway_requests_total",
            &[("route", "legacy"), ("class", "2xx")]
        ),
        5.0
    );
    assert_eq!(
        v(
            "gateway_filter_rejections_total",
            &[
                ("route", "private"),
                ("filter", "ip_filter"),
                ("status", "403")
            ]
        ),
        1.0
    );
    assert_eq!(
        v(
            "gateway_requests_total",
            &[("route", "-"), ("class", "4xx")]
        ),
        1.0
    );
    assert_eq!(v("gateway_bulkhead_in_use", &[("cluster", "catalog")]), 0.0);
    assert!(v("gateway_bulkhead_max_concurrent", &[("cluster", "catalog")]) > 0.0);
    assert_eq!(
        v(
            "gateway_cluster_endpoints",
            &[("cluster", "catalog"), ("state", "serving")]
        ),
        1.0
    );
    assert_eq!(
        v(
            "gateway_discovery_up",
            &[("cluster", "catalog"), ("source", "static")]
        ),
        1.0
    );
    assert_eq!(v("gateway_config_generation", &[]), 1.0);
    assert_eq!(
        v(
            "gateway_config_reloads_total",
            &[("result", "rejected"), ("source", "admin")]
        ),
        1.0
    );
    assert_eq!(v("gateway_in_flight", &[]), 0.0);

    // The JSON access log has the ids, the route and cluster, the bytes, both durations and
    // the reason for answers the gateway made itself.
    let lines = wait_for_access_lines(&gw, 11).await;
    let ok = lines
        .iter()
        .find(|l| l["route"] == "catalog")
        .expect("catalog line");
    assert_eq!(ok["status"], 200);
    assert_eq!(ok["cluster"], "catalog");
    assert_eq!(ok["endpoint"], up.addr().to_string());
    assert_eq!(ok["reason"], "-");
    assert_eq!(ok["attempts"], 1);
    assert!(ok["bytes_sent"].as_u64() > Some(0), "{ok}");
    assert!(
        ok["upstream_ms"].as_f64() <= ok["duration_ms"].as_f64(),
        "{ok}"
    );
    assert_eq!(ok["request_id"].as_str().map(str::len), Some(36));
    let fell_back = lines
        .iter()
        .filter(|l| l["route"] == "legacy")
        .map(|l| l["reason"].as_str().unwrap_or(""))
        .collect::<Vec<_>>();
    assert!(
        fell_back.iter().all(|r| *r == "fallback:static"),
        "{fell_back:?}"
    );
    let denied = lines
        .iter()
        .find(|l| l["route"] == "private")
        .expect("private line");
    assert_eq!(denied["reason"], "filter:ip_filter");
    assert!(denied["upstream_ms"].is_null());
    let unrouted = lines.iter().find(|l| l["route"] == "-").expect("404 line");
    assert_eq!(unrouted["reason"], "no_route");
}

/// The access log lines, once at least `n` were written (the log is flushed every 200 ms).
async fn wait_for_access_lines(gw: &Gateway, n: usize) -> Vec<Value> {
    let lines = || -> Vec<Value> {
        gw.log()
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|j| j["target"] == "access")
            .collect()
    };
    wait_until("the access log lines", Duration::from_secs(10), || {
        lines().len() >= n
    })
    .await;
    lines()
}

#[tokio::test]
async fn spans_mark_retries_fallbacks_and_filter_answers() {
    let collector = OtlpCollector::start().await;
    let good = echo("good").await;
    let bad = echo("bad").await;
    bad.set_fault(Some(503), Duration::ZERO);
    let dead = dead_endpoint();
    let body = format!(
        "[clusters.mixed]\nendpoints = [\"{}\", \"{}\"]\nload_balancing = \"round_robin\"\n\
         [clusters.mixed.circuit_breaker]\nenabled = false\n\
         [clusters.mixed.outlier_detection]\nenabled = false\n\
         [clusters.mixed.retry]\nretries = 1\n\n\
         [clusters.gone]\nendpoints = [\"{dead}\"]\n\
         [clusters.gone.retry]\nretries = 0\n\n\
         [[routes]]\nname = \"mixed\"\ncluster = \"mixed\"\npath_prefix = \"/mixed\"\n\n\
         [[routes]]\nname = \"legacy\"\ncluster = \"gone\"\npath_prefix = \"/legacy\"\n\
         [routes.fallback.response]\nstatus = 200\nbody = 'cached'\n\n\
         [[routes]]\nname = \"private\"\ncluster = \"mixed\"\npath_prefix = \"/private\"\n\
         [[routes.filters]]\nfilter = \"ip_filter\"\ndeny = [\"127.0.0.0/8\"]\n",
        good.addr(),
        bad.addr(),
    );
    let gw = Gateway::start_env(&body, &collector.env()).await;
    let http = client();
    let traced = |n: u32| format!("00-{n:032x}-00000000000000aa-01");

    // Round robin over a good and a failing endpoint: half the first attempts get a 503 and
    // are retried on the other endpoint.
    for n in 1..=4u32 {
        let r = http
            .get(gw.url("/mixed"))
            .header("traceparent", traced(n))
            .send()
            .await
            .expect("req");
        assert_eq!(r.status(), 200);
        // The upstream got the gateway's attempt span as its parent, in the client's trace.
        let seen: Value = r.json().await.expect("echo body");
        let parent = seen["headers"]["traceparent"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert!(parent.starts_with(&format!("00-{n:032x}-")), "{parent}");
        assert!(
            !parent.contains("-00000000000000aa-"),
            "a new parent span: {parent}"
        );
    }
    let mut retried = 0;
    for n in 1..=4u32 {
        let id = format!("{n:032x}");
        let spans = collector
            .wait_trace(&id, "ended", |s| s.iter().any(|x| x.kind == 2))
            .await;
        let mut attempts: Vec<_> = spans.iter().filter(|s| s.kind == 3).collect();
        attempts.sort_by_key(|s| s.attributes["gateway.attempt"].clone());
        let server = spans.iter().find(|s| s.kind == 2).expect("server span");
        assert!(attempts.iter().all(|a| a.parent_span_id == server.span_id));
        if attempts.len() == 2 {
            retried += 1;
            assert_eq!(attempts[0].attributes["http.response.status_code"], "503");
            assert_eq!(attempts[0].attributes["gateway.retry"], "false");
            assert_eq!(attempts[1].attributes["gateway.retry"], "true");
            assert_eq!(attempts[1].attributes["gateway.attempt"], "2");
            assert_eq!(attempts[1].attributes["http.response.status_code"], "200");
        } else {
            assert_eq!(attempts.len(), 1, "{spans:#?}");
        }
    }
    assert!(
        retried >= 1,
        "round robin sent some first attempts to the failing endpoint"
    );

    // A local fallback answers for a dead cluster: the failed attempt and the fallback.
    let r = http
        .get(gw.url("/legacy/x"))
        .header("traceparent", traced(10))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 200);
    let spans = collector
        .wait_trace(&format!("{:032x}", 10), "showed the fallback", |s| {
            s.iter().any(|x| x.name == "fallback static") && s.iter().any(|x| x.kind == 2)
        })
        .await;
    let fb = spans
        .iter()
        .find(|x| x.name == "fallback static")
        .expect("fallback span");
    assert_eq!(fb.attributes["gateway.fallback_reason"], "connect_failure");
    let attempt = spans.iter().find(|x| x.kind == 3).expect("attempt span");
    assert_eq!(attempt.attributes["error.type"], "connect_failure");
    let server = spans.iter().find(|x| x.kind == 2).expect("server");
    assert_eq!(server.attributes["gateway.reason"], "fallback:static");

    // A filter that answers gets its own span; nothing went upstream.
    let r = http
        .get(gw.url("/private/x"))
        .header("traceparent", traced(11))
        .send()
        .await
        .expect("req");
    assert_eq!(r.status(), 403);
    let spans = collector
        .wait_trace(&format!("{:032x}", 11), "showed the filter", |s| {
            s.iter().any(|x| x.name == "filter ip_filter") && s.iter().any(|x| x.kind == 2)
        })
        .await;
    let filter = spans
        .iter()
        .find(|x| x.name == "filter ip_filter")
        .expect("filter span");
    assert_eq!(filter.attributes["http.response.status_code"], "403");
    assert!(
        spans.iter().all(|x| x.kind != 3),
        "no upstream attempt: {spans:#?}"
    );

    // The access log names each request's trace.
    wait_until(
        "the access log names the traces",
        Duration::from_secs(10),
        || {
            let log = gw.log();
            log.contains(&format!("\"trace_id\":\"{:032x}\"", 10))
                && log.contains(&format!("\"trace_id\":\"{:032x}\"", 11))
        },
    )
    .await;
}
