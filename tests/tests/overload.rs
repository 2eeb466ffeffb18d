//! Overload protection through the real gateway: a cluster's adaptive concurrency limit sheds
//! the lowest priority first in front of an origin of fixed capacity, and the gateway's own
//! inbound limit sheds by the priority routes, trusted headers and gRPC callers carry.

mod harness;

use std::time::{Duration, Instant};

use harness::*;

/// Three routes of one cluster, one per priority class.
fn priority_routes(cluster: &str) -> String {
    [("critical", "critical"), ("degraded", "degraded"), ("low", "non_critical")]
        .iter()
        .map(|(path, class)| {
            format!(
                "[[routes]]\nname = \"{path}\"\ncluster = \"{cluster}\"\npath_prefix = \"/{path}\"\npriority = \"{class}\"\n"
            )
        })
        .collect()
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    ok: u32,
    shed: u32,
    other: u32,
}

impl Tally {
    fn total(self) -> u32 {
        self.ok + self.shed + self.other
    }
    fn shed_ratio(self) -> f64 {
        f64::from(self.shed) / f64::from(self.total().max(1))
    }
}

/// `workers` clients in a closed loop on `path` until `until`.
async fn hammer(http: reqwest::Client, url: String, workers: usize, until: Instant) -> Tally {
    let tasks: Vec<_> = (0..workers)
        .map(|_| {
            let http = http.clone();
            let url = url.clone();
            tokio::spawn(async move {
                let mut t = Tally::default();
                while Instant::now() < until {
                    match http.get(&url).send().await {
                        Ok(r) if r.status() == 200 => t.ok += 1,
                        Ok(r) if r.status() == 503 => {
                            assert_eq!(r.headers()["retry-after"], "1");
                            let j: serde_json::Value = r.json().await.expect("json");
                            assert_eq!(j["error"], "overloaded", "{j}");
                            t.shed += 1;
                        }
                        _ => t.other += 1,
                    }
                }
                t
            })
        })
        .collect();
    let mut sum = Tally::default();
    for t in tasks {
        let t = t.await.expect("worker");
        sum.ok += t.ok;
        sum.shed += t.shed;
        sum.other += t.other;
    }
    sum
}

#[tokio::test]
async fn an_overloaded_origin_sheds_non_critical_first_and_playback_keeps_working() {
    // An origin of capacity 4 with a 40 ms service time (100 requests/s), offered 13
    // closed-loop clients: 3 critical, 4 degraded, 6 non-critical.
    let up = echo("origin").await;
    assert!(up.set_capacity(4, Duration::from_millis(40)));
    let body = format!(
        "{}[clusters.origin.adaptive_concurrency]\ninitial_limit = 4\nmin_limit = 4\nmax_limit = 6\n\
         queue_timeout_ms = 300\nreserve_percent = 40\n\n{}",
        cluster("origin", &[&up], ""),
        priority_routes("origin"),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let until = Instant::now() + Duration::from_secs(3);
    let (critical, degraded, low) = tokio::join!(
        hammer(http.clone(), gw.url("/critical"), 3, until),
        hammer(http.clone(), gw.url("/degraded"), 4, until),
        hammer(http.clone(), gw.url("/low"), 6, until),
    );
    let report = format!("critical {critical:?} degraded {degraded:?} non-critical {low:?}");
    eprintln!("{report}");
    assert_eq!(critical.other + degraded.other + low.other, 0, "{report}");
    assert!(critical.ok > 50, "{report}");
    assert!(
        critical.shed_ratio() <= 0.02,
        "critical barely shed: {report}"
    );
    assert!(
        low.shed_ratio() > degraded.shed_ratio() && degraded.shed_ratio() >= critical.shed_ratio(),
        "shed lowest priority first: {report}"
    );
    assert!(low.shed > 0, "{report}");
    let (_, peak) = up.load();
    assert!(
        peak <= 6,
        "the origin never held more than the limit's maximum: {peak}"
    );

    // Sheds are counted per class and are not the origin's failures: the breaker stays closed.
    let (_, o) = get_json(&http, &gw.admin_url("/overload")).await;
    let limit = &o["clusters"]["origin"];
    assert_eq!(limit["adaptive"], true, "{o}");
    assert!(
        limit["shed"]["non_critical"].as_u64() >= Some(u64::from(low.shed)),
        "{o}"
    );
    assert!(
        limit["min_rtt_ms"].as_f64().is_some_and(|ms| ms >= 40.0),
        "{o}"
    );
    let (_, b) = get_json(&http, &gw.admin_url("/breakers/origin")).await;
    assert_eq!(b["breaker"]["state"], "closed", "{b}");
    let metrics = get_text(&http, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains(
            "gateway_shed_total{cluster=\"origin\",priority=\"non_critical\",scope=\"cluster\"}"
        ),
        "{metrics}"
    );
    assert!(metrics.contains("gateway_concurrency_limit{cluster=\"origin\",scope=\"cluster\"}"));
}

#[tokio::test]
async fn with_the_origins_load_reports_the_limit_fills_the_origin_and_never_overfills_it() {
    // An origin of capacity 6 (30 ms each) that reports its utilization on every answer
    // (ORCA `endpoint-load-metrics`), offered 16 closed-loop critical clients: the limit grows
    // from 2 to the origin's capacity and stops there, although round trips alone would let
    // it probe past it, and the report never reaches the client.
    let up = echo("origin").await;
    assert!(up.set_capacity(6, Duration::from_millis(30)));
    let body = format!(
        "{}[clusters.origin.adaptive_concurrency]\ninitial_limit = 2\nmin_limit = 1\nmax_limit = 100\n\n{}",
        cluster("origin", &[&up], ""),
        priority_routes("origin"),
    );
    let gw = Gateway::start(&body).await;
    let http = client();
    let r = http.get(gw.url("/critical")).send().await.expect("answer");
    assert_eq!(r.status(), 200);
    assert!(
        !r.headers().contains_key("endpoint-load-metrics"),
        "the origin's load report is the gateway's, never the client's: {:?}",
        r.headers()
    );
    let until = Instant::now() + Duration::from_secs(3);
    let critical = hammer(http.clone(), gw.url("/critical"), 16, until).await;
    assert_eq!(critical.other, 0, "{critical:?}");
    let (_, peak) = up.load();
    assert!(
        peak <= 6,
        "the origin never held more than its capacity: {peak}"
    );
    assert!(peak >= 5, "the limit grew to use the origin: peak {peak}");
    // 6 at a time for 30 ms is 200 answers a second; a limit stuck at 1 would serve 100 in
    // the 3 s (the bound stays loose: a loaded CI machine slows the gateway's dispatch).
    assert!(critical.ok > 100, "{critical:?}");

    let (_, o) = get_json(&http, &gw.admin_url("/overload")).await;
    let limit = &o["clusters"]["origin"];
    assert!(
        limit["origin_utilization"]
            .as_f64()
            .is_some_and(|u| u > 0.0 && u <= 1.0),
        "{o}"
    );
    assert!(
        limit["limit"]
            .as_u64()
            .is_some_and(|l| (3..=6).contains(&l)),
        "{o}"
    );
    let metrics = get_text(&http, &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("gateway_concurrency_origin_utilization{cluster=\"origin\"}"),
        "{metrics}"
    );
}

/// A gateway whose inbound limit is one request, the priority header believed from `from`.
async fn one_slot_gateway(up: &EchoServer, from: &str) -> Gateway {
    let body = format!(
        "[overload]\nmax_in_flight = 1\nqueue_timeout_ms = 5000\npriority_header = \"x-priority\"\n\
         priority_header_from = [\"{from}\"]\n\n{}\
         [[routes]]\nname = \"hold\"\ncluster = \"up\"\npath_prefix = \"/hold\"\npriority = \"critical\"\n\
         [[routes]]\nname = \"low\"\ncluster = \"up\"\npath_prefix = \"/low\"\npriority = \"non_critical\"\n",
        cluster("up", &[up], ""),
    );
    Gateway::start(&body).await
}

/// `GET /low` with `x-priority: critical`: its status and how long it took.
async fn low_as_critical(http: &reqwest::Client, gw: &Gateway) -> (reqwest::Response, Duration) {
    let started = Instant::now();
    let r = http
        .get(gw.url("/low"))
        .header("x-priority", "critical")
        .send()
        .await
        .expect("req");
    (r, started.elapsed())
}

/// Starts a request that holds the gateway's only inbound slot for `hold`, and waits until it
/// does.
async fn hold_the_slot(
    http: &reqwest::Client,
    gw: &Gateway,
    hold: Duration,
) -> tokio::task::JoinHandle<u16> {
    let url = gw.url(&format!("/hold?delay_ms={}", hold.as_millis()));
    let held = {
        let http = http.clone();
        tokio::spawn(async move {
            http.get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
                .unwrap_or(0)
        })
    };
    let overload = gw.admin_url("/overload");
    eventually("the slot held", Duration::from_secs(10), || async {
        let (_, o) = get_json(http, &overload).await;
        if o["inbound"]["in_flight"] == 1 {
            Ok(())
        } else {
            Err(o.to_string())
        }
    })
    .await;
    held
}

#[tokio::test]
async fn the_inbound_limit_sheds_by_priority_and_believes_the_header_only_from_trusted_clients() {
    let up = echo("up").await;
    let http = client();

    // Trusted (the tests' loopback): the header sets the priority.
    let gw = one_slot_gateway(&up, "127.0.0.0/8").await;
    let held = hold_the_slot(&http, &gw, Duration::from_millis(1500)).await;
    let r = http.get(gw.url("/low")).send().await.expect("req");
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // A gRPC caller gets RESOURCE_EXHAUSTED in a trailers-only answer.
    let r = http
        .post(gw.url("/low"))
        .header("content-type", "application/grpc")
        .body(vec![0u8; 5])
        .send()
        .await
        .expect("grpc req");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["grpc-status"], "8");
    assert_eq!(r.headers()["grpc-message"], "overloaded");
    // Raised to critical by a trusted header, the request waits for the slot instead.
    let (r, took) = low_as_critical(&http, &gw).await;
    assert_eq!(r.status(), 200, "served once the slot was free");
    assert!(took >= Duration::from_millis(200), "it waited");
    assert_eq!(held.await.expect("held"), 200);
    let (_, o) = get_json(&http, &gw.admin_url("/overload")).await;
    assert_eq!(o["inbound"]["shed"]["non_critical"], 2, "{o}");
    assert_eq!(o["inbound"]["shed"]["critical"], 0, "{o}");
    let metrics = get_text(&http, &gw.admin_url("/metrics")).await;
    assert!(metrics.contains(
        "gateway_shed_total{cluster=\"-\",priority=\"non_critical\",scope=\"inbound\"} 2"
    ));

    // Untrusted: the header is neither believed nor passed upstream.
    let gw = one_slot_gateway(&up, "10.0.0.0/8").await;
    let (r, _) = low_as_critical(&http, &gw).await;
    let j: serde_json::Value = r.json().await.expect("echo json");
    assert!(j["headers"].get("x-priority").is_none(), "{j}");
    let held = hold_the_slot(&http, &gw, Duration::from_millis(1500)).await;
    let (r, took) = low_as_critical(&http, &gw).await;
    assert_eq!(r.status(), 503, "still non-critical: shed at once");
    assert!(took < Duration::from_millis(1000));
    assert_eq!(held.await.expect("held"), 200);
}
