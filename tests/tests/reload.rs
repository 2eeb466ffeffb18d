//! Hot reload through the real gateway: reloads under continuous load fail no request and take
//! effect at once, a bad config is rejected while the old one serves, state of untouched
//! clusters and filters survives, the file watch and SIGHUP reload, rollback restores.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use harness::*;

/// Routes `/v/...` to cluster `to`; `retries` and `timeout_ms` vary the policies.
fn version(a: &EchoServer, b: &EchoServer, to: &str, retries: u32, timeout_ms: u32) -> String {
    format!(
        "{}{}[clusters.a.retry]\nretries = {retries}\n\n\
         [[routes]]\nname = \"v\"\ncluster = \"{to}\"\npath_prefix = \"/v\"\ntimeout_ms = {timeout_ms}\n\n\
         [[routes]]\nname = \"rest\"\ncluster = \"a\"\npath_prefix = \"/\"\n",
        cluster("b", &[b], ""),
        cluster("a", &[a], ""),
    )
}

async fn post_config(http: &reqwest::Client, gw: &Gateway, text: &str) -> (u16, serde_json::Value) {
    let r = http
        .post(gw.admin_url("/config"))
        .body(text.to_owned())
        .send()
        .await
        .expect("admin");
    let status = r.status().as_u16();
    (status, r.json().await.expect("json"))
}

async fn instance(http: &reqwest::Client, gw: &Gateway, path: &str) -> String {
    let r = http.get(gw.url(path)).send().await.expect("request");
    assert_eq!(r.status(), 200, "{path}");
    r.headers()["x-echo-instance"]
        .to_str()
        .expect("instance")
        .to_owned()
}

async fn config_status(http: &reqwest::Client, gw: &Gateway) -> serde_json::Value {
    let (status, j) = get_json(http, &gw.admin_url("/config")).await;
    assert_eq!(status, 200);
    j
}

/// Polls `/config` until the serving generation is `generation`.
async fn wait_generation(http: &reqwest::Client, gw: &Gateway, generation: u64) {
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let j = config_status(http, gw).await;
        if j["current"]["generation"] == generation {
            return;
        }
        assert!(
            Instant::now() < end,
            "generation {generation} never came: {j}\n{}",
            gw.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request_and_take_effect_at_once() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = Gateway::start(&version(&a, &b, "a", 1, 5000)).await;
    let http = client();

    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut load = Vec::new();
    for worker in 0..4 {
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = gw.url(&format!("/v/load/{worker}"));
        let http = client();
        load.push(tokio::spawn(async move {
            let mut errors = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match http.get(&url).send().await {
                    Ok(r) if r.status() == 200 => {
                        ok.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(r) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(format!("status {}", r.status()));
                    }
                    Err(e) => {
                        failed.fetch_add(1, Ordering::Relaxed);
                        errors.push(e.to_string());
                    }
                }
            }
            errors
        }));
    }

    for i in 1..=20u32 {
        let to = if i % 2 == 1 { "b" } else { "a" };
        let text = gw.config_for(&version(&a, &b, to, i % 3, 2000 + i * 100));
        if i % 5 == 0 {
            // Every fifth version arrives by file replacement (the watch picks it up).
            gw.write_config(&version(&a, &b, to, i % 3, 2000 + i * 100));
            wait_generation(&http, &gw, u64::from(i) + 1).await;
        } else {
            let (status, j) = post_config(&http, &gw, &text).await;
            assert_eq!(status, 200, "{j}");
            assert_eq!(j["result"], "applied", "{j}");
            assert_eq!(j["version"]["generation"], i + 1);
        }
        // The new route serves from the next request on.
        assert_eq!(instance(&http, &gw, "/v/check").await, to, "version {i}");
    }
    stop.store(true, Ordering::Relaxed);
    let mut errors = Vec::new();
    for l in load {
        errors.extend(l.await.expect("load task"));
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    assert_eq!(failed, 0, "failed requests across reloads: {errors:?}");
    assert!(ok > 100, "only {ok} requests ran during the reloads");
    let j = config_status(&http, &gw).await;
    assert_eq!(j["current"]["generation"], 21);
    assert_eq!(j["rejected_total"], 0);
}

#[tokio::test]
async fn a_bad_config_is_rejected_and_the_running_one_keeps_serving() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = Gateway::start(&version(&a, &b, "b", 1, 5000)).await;
    let http = client();
    let before = config_status(&http, &gw).await;

    let bad = gw.config_for(&version(&a, &b, "nope", 1, 5000));
    let (status, j) = post_config(&http, &gw, &bad).await;
    assert_eq!(status, 422, "{j}");
    assert_eq!(j["error"], "config_rejected");
    let reason = j["reason"].as_str().expect("reason");
    assert!(
        reason.contains("route `v` names unknown cluster `nope`") && reason.contains("fix:"),
        "same message as gateway check: {reason}"
    );
    assert_eq!(
        instance(&http, &gw, "/v/x").await,
        "b",
        "the old routes serve"
    );

    // A broken file is rejected the same way.
    gw.write_config("this is [not toml");
    let end = Instant::now() + Duration::from_secs(10);
    let j = loop {
        let j = config_status(&http, &gw).await;
        if j["rejected_total"] == 2 {
            break j;
        }
        assert!(Instant::now() < end, "file rejection not seen: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(j["last_attempt"]["result"], "rejected");
    assert_eq!(j["last_attempt"]["source"], "file");
    assert!(j["last_attempt"]["error"]
        .as_str()
        .is_some_and(|e| e.contains("gateway.toml:") && e.contains("fix:")));
    assert_eq!(j["current"], before["current"], "still the first version");
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");
    assert!(gw.log().contains("config reload rejected"));

    // Sending the running document again changes nothing.
    let (status, j) = post_config(&http, &gw, &gw.config_for(&version(&a, &b, "b", 1, 5000))).await;
    assert_eq!((status, j["result"].as_str()), (200, Some("unchanged")));
}

#[tokio::test]
async fn state_of_untouched_clusters_and_filters_survives_and_changed_settings_apply() {
    let a = echo("a").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let body = |other_path: &str, sleep_ms: u32| {
        format!(
            "[clusters.dead]\nendpoints = [\"{dead}\"]\n\
             [clusters.dead.circuit_breaker]\nmode = \"consecutive_failures\"\nconsecutive_failures = 2\nsleep_window_ms = {sleep_ms}\n\
             [clusters.dead.retry]\nretries = 0\n\n{}\
             [[routes]]\nname = \"dead\"\ncluster = \"dead\"\npath_prefix = \"/dead\"\n\n\
             [[routes]]\nname = \"limited\"\ncluster = \"a\"\npath_prefix = \"/limited\"\n\
             [[routes.filters]]\nfilter = \"rate_limit\"\nlimits = [{{ per_minute = 2 }}]\n\n\
             [[routes]]\nname = \"other\"\ncluster = \"a\"\npath_prefix = \"{other_path}\"\n",
            cluster("a", &[&a], "")
        )
    };
    let gw = Gateway::start(&body("/one", 60_000)).await;
    let http = client();
    for _ in 0..2 {
        let r = http.get(gw.url("/dead")).send().await.expect("req");
        assert_eq!(r.status(), 502);
    }
    let r = http.get(gw.url("/dead")).send().await.expect("req");
    assert_eq!(r.status(), 503, "the breaker is open");
    for _ in 0..2 {
        let r = http.get(gw.url("/limited")).send().await.expect("req");
        assert_eq!(r.status(), 200);
    }
    let r = http.get(gw.url("/limited")).send().await.expect("req");
    assert_eq!(r.status(), 429, "the limit is used up");

    // A reload that touches neither the dead cluster nor the limited route.
    let (status, j) = post_config(&http, &gw, &gw.config_for(&body("/two", 60_000))).await;
    assert_eq!(status, 200, "{j}");
    assert_eq!(
        instance(&http, &gw, "/two").await,
        "a",
        "the change applied"
    );
    let (_, breaker) = get_json(&http, &gw.admin_url("/breakers/dead")).await;
    assert_eq!(breaker["breaker"]["state"], "open", "{breaker}");
    let r = http.get(gw.url("/dead")).send().await.expect("req");
    assert_eq!(r.status(), 503, "still open after the reload");
    let r = http.get(gw.url("/limited")).send().await.expect("req");
    assert_eq!(r.status(), 429, "the rate-limit buckets survived");

    // Changing the dead cluster's breaker settings gives it a fresh breaker at once.
    let (status, j) = post_config(&http, &gw, &gw.config_for(&body("/two", 30_000))).await;
    assert_eq!(status, 200, "{j}");
    let (_, breaker) = get_json(&http, &gw.admin_url("/breakers/dead")).await;
    assert_eq!(breaker["breaker"]["state"], "closed", "{breaker}");
    assert_eq!(breaker["breaker"]["config"]["sleep_window_ms"], 30_000);
    let r = http.get(gw.url("/dead")).send().await.expect("req");
    assert_eq!(r.status(), 502, "calls go through the new breaker");
}

#[tokio::test]
async fn sighup_reloads_the_file_and_rollback_restores_an_earlier_version() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = Gateway::start(&version(&a, &b, "a", 1, 5000)).await;
    let http = client();
    assert_eq!(instance(&http, &gw, "/v/x").await, "a");

    // Write the file without waiting for the watch, then SIGHUP: one of them applies it and
    // the other finds it unchanged.
    gw.write_config(&version(&a, &b, "b", 1, 5000));
    let status = std::process::Command::new("kill")
        .args(["-HUP", &gw.pid().to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    wait_generation(&http, &gw, 2).await;
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");

    let (status, versions) = get_json(&http, &gw.admin_url("/config/versions")).await;
    assert_eq!(status, 200);
    let generations: Vec<u64> = versions["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["generation"].as_u64())
        .collect();
    assert_eq!(generations, vec![2, 1]);
    let text = http
        .get(gw.admin_url("/config/versions/1"))
        .send()
        .await
        .expect("admin")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains("cluster = \"a\"\npath_prefix = \"/v\""),
        "{text}"
    );

    let r = http
        .post(gw.admin_url("/config/rollback/1"))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 200);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["version"]["generation"], 3);
    assert_eq!(j["version"]["source"], "rollback to 1");
    assert_eq!(
        instance(&http, &gw, "/v/x").await,
        "a",
        "the first routes are back"
    );

    let r = http
        .post(gw.admin_url("/config/rollback/99"))
        .send()
        .await
        .expect("admin");
    assert_eq!(r.status(), 404);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["kept"], serde_json::json!([3, 2, 1]));
}

#[tokio::test]
async fn a_consul_kv_change_reconfigures_the_gateway() {
    let agent = ConsulAgent::start().await;
    let a = echo("a").await;
    let b = echo("b").await;
    let kv = format!(
        "[reload]\nconsul_kv = \"edge/gateway.toml\"\n\n[discovery.consul]\naddress = \"{}\"\n\n",
        agent.address()
    );
    let gw = Gateway::start(&format!("{kv}{}", version(&a, &b, "a", 1, 5000))).await;
    let http = client();
    assert_eq!(instance(&http, &gw, "/v/x").await, "a");
    let j = config_status(&http, &gw).await;
    assert_eq!(j["sources"]["consul_kv"], "edge/gateway.toml");

    let put = |text: String| {
        let url = format!("http://{}/v1/kv/edge/gateway.toml", agent.address());
        let http = http.clone();
        async move {
            let r = http.put(url).body(text).send().await.expect("kv put");
            assert!(r.status().is_success());
        }
    };
    put(gw.config_for(&format!("{kv}{}", version(&a, &b, "b", 1, 5000)))).await;
    wait_generation(&http, &gw, 2).await;
    let j = config_status(&http, &gw).await;
    assert_eq!(j["current"]["source"], "consul-kv");
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");

    // A bad document in KV is rejected like any other; the running one stays.
    put(gw.config_for(&format!("{kv}{}", version(&a, &b, "missing", 1, 5000)))).await;
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let j = config_status(&http, &gw).await;
        if j["last_attempt"]["result"] == "rejected" {
            assert_eq!(j["last_attempt"]["source"], "consul-kv");
            assert_eq!(j["current"]["generation"], 2);
            break;
        }
        assert!(Instant::now() < end, "KV rejection not seen: {j}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");
}
