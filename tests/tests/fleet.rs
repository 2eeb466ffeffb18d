//! A fleet of gateway processes with one real `redis-server` and one real Consul agent:
//! a cluster-wide rate limit holds across uneven load, falls back to local shares while Redis
//! is away and goes global again when it returns; membership in Consul sets the fleet's
//! size; one Consul KV document configures every gateway, and a bad one is refused by each.

mod harness;

use std::time::{Duration, Instant};

use harness::*;
use serde_json::Value;

/// Requests per second and burst of the cluster-wide limit.
const RATE: f64 = 100.0;
const BURST: f64 = 100.0;

fn fleet_config(redis: &RedisServer, agent: &ConsulAgent, up: &EchoServer) -> String {
    format!(
        "[redis]\naddress = \"{}\"\nretry_after_ms = 300\n\n\
         [fleet]\nregister = true\nservice = \"edge\"\n\n\
         [discovery.consul]\naddress = \"{}\"\n\n{}\n\
         [[routes]]\nname = \"api\"\ncluster = \"api\"\npath_prefix = \"/\"\n\n\
         [[routes.filters]]\nfilter = \"rate_limit\"\n\
         limits = [{{ key = \"route\", per_second = {RATE}, burst = {BURST}, scope = \"cluster\" }}]\n",
        redis.url(),
        agent.address(),
        cluster("api", &[up], ""),
    )
}

async fn fleet_view(http: &reqwest::Client, gw: &Gateway) -> Value {
    let (status, j) = get_json(http, &gw.admin_url("/fleet")).await;
    assert_eq!(status, 200, "{j}");
    j
}

/// Waits until every gateway counts `n` members.
async fn wait_size(http: &reqwest::Client, gateways: &[&Gateway], n: u64) {
    for gw in gateways {
        eventually(
            &format!("a fleet of {n}"),
            Duration::from_secs(20),
            || async {
                let j = fleet_view(http, gw).await;
                if j["size"] == n && j["source"] == "consul" {
                    Ok(())
                } else {
                    Err(j.to_string())
                }
            },
        )
        .await;
    }
}

/// Offered load far over the limit, unevenly spread: `workers[i]` closed-loop clients on
/// gateway `i`, for `length`. Returns the admitted requests and the time the load lasted.
async fn overload(
    http: &reqwest::Client,
    gateways: &[&Gateway],
    workers: &[usize],
    length: Duration,
) -> (u64, Duration) {
    let start = Instant::now();
    let end = start + length;
    let mut tasks = Vec::new();
    for (gw, n) in gateways.iter().zip(workers) {
        for _ in 0..*n {
            let http = http.clone();
            let url = gw.url("/x");
            tasks.push(tokio::spawn(async move {
                let (mut ok, mut limited) = (0u64, 0u64);
                while Instant::now() < end {
                    let r = http.get(&url).send().await.expect("request");
                    match r.status().as_u16() {
                        200 => ok += 1,
                        429 => limited += 1,
                        other => panic!("unexpected status {other}"),
                    }
                }
                (ok, limited)
            }));
        }
    }
    let mut admitted = 0;
    let mut refused = 0;
    for t in tasks {
        let (ok, limited) = t.await.expect("worker");
        admitted += ok;
        refused += limited;
    }
    assert!(
        refused > admitted,
        "the load was not over the limit: {admitted} admitted, {refused} refused"
    );
    (admitted, start.elapsed())
}

async fn decisions(http: &reqwest::Client, gw: &Gateway, mode: &str) -> f64 {
    let text = get_text(http, &gw.admin_url("/metrics")).await;
    text.lines()
        .filter(|l| {
            l.starts_with("gateway_rate_limit_decisions_total{")
                && l.contains(&format!("mode=\"{mode}\""))
        })
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn a_cluster_wide_limit_holds_across_the_fleet_and_survives_redis_going_away() {
    let mut redis = RedisServer::start().await;
    let agent = ConsulAgent::start().await;
    let up = echo("api").await;
    let config = fleet_config(&redis, &agent, &up);
    let a = Gateway::start(&config).await;
    let b = Gateway::start(&config).await;
    let c = Gateway::start(&config).await;
    let http = client();
    let fleet = [&a, &b, &c];
    wait_size(&http, &fleet, 3).await;

    // Global: the fleet admits the limit, within 5 %, however the load is spread.
    let (admitted, took) = overload(&http, &fleet, &[6, 3, 1], Duration::from_secs(4)).await;
    let expected = BURST + RATE * took.as_secs_f64();
    let off = (admitted as f64 - expected) / expected;
    assert!(
        off.abs() <= 0.05,
        "admitted {admitted} in {took:?}, expected {expected:.0} ({:+.1} %)\n{}",
        off * 100.0,
        a.log()
    );
    assert!(
        decisions(&http, &a, "global").await > 0.0,
        "the busy gateway asked Redis near the limit"
    );

    // Redis goes away: every gateway enforces its share (limit / 3), so the fleet stays
    // within the limit plus one burst per gateway.
    redis.stop();
    let (admitted, took) = overload(&http, &fleet, &[6, 3, 1], Duration::from_secs(3)).await;
    let share_burst = (BURST / 3.0).floor();
    let ceiling = RATE * took.as_secs_f64() * 1.05 + BURST + 3.0 * share_burst;
    assert!(
        admitted as f64 <= ceiling,
        "admitted {admitted} in {took:?} without Redis; at most {ceiling:.0}"
    );
    assert!(admitted > 0, "local shares still admit");
    for gw in fleet {
        let j = fleet_view(&http, gw).await;
        assert!(
            j["degraded_limits"]
                .as_array()
                .is_some_and(|d| !d.is_empty()),
            "{j}"
        );
        assert!(decisions(&http, gw, "degraded").await > 0.0);
    }

    // Redis returns (empty): counting goes global again.
    redis.restart().await;
    for gw in fleet {
        eventually(
            "the limit global again",
            Duration::from_secs(10),
            || async {
                // A request keeps the limit's key in use, so its sync reaches Redis.
                let _ = http.get(gw.url("/x")).send().await;
                let j = fleet_view(&http, gw).await;
                let degraded = j["degraded_limits"].as_array().map_or(1, Vec::len);
                if degraded == 0 && j["limit_store"]["available"] == true {
                    Ok(())
                } else {
                    Err(j.to_string())
                }
            },
        )
        .await;
    }
    let before = decisions(&http, &a, "global").await;
    // Let the fresh Redis state fill up to its burst again before measuring.
    let (_, _) = overload(&http, &fleet, &[6, 3, 1], Duration::from_secs(1)).await;
    let (admitted, took) = overload(&http, &fleet, &[1, 3, 6], Duration::from_secs(3)).await;
    let expected = RATE * took.as_secs_f64();
    let off = (admitted as f64 - expected) / expected;
    assert!(
        off.abs() <= 0.05 + 5.0 / expected,
        "after Redis returned: admitted {admitted} in {took:?}, expected {expected:.0} ({:+.1} %)",
        off * 100.0
    );
    assert!(decisions(&http, &a, "global").await > before);

    // A fourth gateway joins: every member counts four.
    let d = Gateway::start(&config).await;
    wait_size(&http, &[&a, &b, &c, &d], 4).await;
}

#[tokio::test]
async fn one_kv_document_configures_every_gateway_and_a_bad_one_is_refused_by_each() {
    let agent = ConsulAgent::start().await;
    let up = echo("api").await;
    let version = |v: &str| {
        format!(
            "[reload]\nconsul_kv = \"fleet/gateway.toml\"\n\n[discovery.consul]\naddress = \"{}\"\n\n{}\n\
             [[routes]]\nname = \"api\"\ncluster = \"api\"\npath_prefix = \"/\"\n\n\
             [[routes.filters]]\nfilter = \"headers\"\nresponse_set = {{ \"x-version\" = \"{v}\" }}\n",
            agent.address(),
            cluster("api", &[&up], ""),
        )
    };
    let a = Gateway::start(&version("1")).await;
    let b = Gateway::start(&version("1")).await;
    let c = Gateway::start(&version("1")).await;
    let fleet = [&a, &b, &c];
    let http = client();
    let put = |text: String| agent.put_kv("fleet/gateway.toml", text);
    // One document for the fleet: the gateways run on one machine here, so its listener
    // and admin addresses are `a`'s; the others keep theirs (pending a restart) and take
    // everything else.
    put(a.config_for(&version("2"))).await;
    for gw in fleet {
        eventually("version 2 served", Duration::from_secs(15), || async {
            let r = http
                .get(gw.url("/x"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            match r.headers().get("x-version") {
                Some(v) if v == "2" => Ok(()),
                other => Err(format!("x-version {other:?}")),
            }
        })
        .await;
    }

    put(a.config_for(&version("3").replace(
        "cluster = \"api\"\npath_prefix",
        "cluster = \"missing\"\npath_prefix",
    )))
    .await;
    for gw in fleet {
        let (_, j) = get_json(&http, &gw.admin_url("/config")).await;
        let generation = j["current"]["generation"].clone();
        let j = wait_rejected(&http, gw, Duration::from_secs(15)).await;
        assert_eq!(j["last_attempt"]["source"], "consul-kv");
        assert_eq!(
            j["current"]["generation"], generation,
            "the last good version serves"
        );
        let metrics = get_text(&http, &gw.admin_url("/metrics")).await;
        assert!(
            metrics
                .lines()
                .any(|l| l.starts_with("gateway_config_reloads_total{")
                    && l.contains("result=\"rejected\"")
                    && l.contains("consul")),
            "{metrics}"
        );
        let r = http.get(gw.url("/x")).send().await.expect("request");
        assert_eq!(r.headers()["x-version"], "2");
    }
}
