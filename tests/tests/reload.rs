//! Hot reload through the real gateway: reloads under continuous load fail no request and take
//! effect at once, a bad config is rejected while the old one serves, state of untouched
//! clusters and filters survives, the file watch and SIGHUP reload, rollback restores.

mod harness;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
        .header("x-gateway-admin", "1")
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
    let what = format!("generation {generation}");
    eventually(&what, Duration::from_secs(10), || async {
        let j = config_status(http, gw).await;
        if j["current"]["generation"] == generation {
            Ok(())
        } else {
            Err(format!("{j}\n{}", gw.log()))
        }
    })
    .await;
}

/// Continuous closed-loop load: `workers` clients with keep-alive connections, each sending
/// GET `/v/load/N` back to back until stopped.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    workers: Vec<tokio::task::JoinHandle<Vec<String>>>,
}

impl Load {
    fn start(gw: &Gateway, workers: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let workers = (0..workers)
            .map(|worker| {
                let (stop, ok) = (stop.clone(), ok.clone());
                let url = gw.url(&format!("/v/load/{worker}"));
                let http = client();
                tokio::spawn(async move {
                    let mut errors = Vec::new();
                    while !stop.load(Ordering::Relaxed) {
                        match http.get(&url).send().await {
                            Ok(r) if r.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(r) => errors.push(format!("status {}", r.status())),
                            Err(e) => errors.push(format!("{e:?}")),
                        }
                    }
                    errors
                })
            })
            .collect();
        Self { stop, ok, workers }
    }

    fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    /// Stops the workers; returns the successful count and every failure.
    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut errors = Vec::new();
        for w in self.workers {
            errors.extend(w.await.expect("load task"));
        }
        (self.ok.load(Ordering::Relaxed), errors)
    }
}

#[tokio::test]
async fn twenty_reloads_under_load_fail_no_request_and_take_effect_at_once() {
    let a = echo("a").await;
    let b = echo("b").await;
    let gw = Gateway::start(&version(&a, &b, "a", 1, 5000)).await;
    let http = client();

    let load = Load::start(&gw, 4);

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
    let (ok, errors) = load.stop().await;
    assert!(
        errors.is_empty(),
        "failed requests across reloads: {errors:?}"
    );
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
    let j = eventually("the file's rejection", Duration::from_secs(10), || async {
        let j = config_status(&http, &gw).await;
        if j["rejected_total"] == 2 {
            Ok(j)
        } else {
            Err(j.to_string())
        }
    })
    .await;
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
    let dead = dead_endpoint();
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
        .header("x-gateway-admin", "1")
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
        .header("x-gateway-admin", "1")
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

    let put = |text: String| agent.put_kv("edge/gateway.toml", text);
    put(gw.config_for(&format!("{kv}{}", version(&a, &b, "b", 1, 5000)))).await;
    wait_generation(&http, &gw, 2).await;
    let j = config_status(&http, &gw).await;
    assert_eq!(j["current"]["source"], "consul-kv");
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");

    // A bad document in KV is rejected like any other; the running one stays.
    put(gw.config_for(&format!("{kv}{}", version(&a, &b, "missing", 1, 5000)))).await;
    let j = wait_rejected(&http, &gw, Duration::from_secs(10)).await;
    assert_eq!(j["last_attempt"]["source"], "consul-kv");
    assert_eq!(j["current"]["generation"], 2);
    assert_eq!(instance(&http, &gw, "/v/x").await, "b");
}

#[tokio::test]
async fn a_binary_upgrade_takes_over_the_listeners_without_failing_a_request() {
    let a = echo("a").await;
    let b = echo("b").await;
    let mut gw = Gateway::start(&version(&a, &b, "a", 1, 5000)).await;
    let http = client();
    let old_pid = gw.pid();
    assert_eq!(
        std::fs::read_to_string(gw.dir().join("gateway.pid"))
            .expect("pid file")
            .trim(),
        old_pid.to_string()
    );

    let load = Load::start(&gw, 4);
    wait_until("load to run", Duration::from_secs(5), || load.ok() > 50).await;
    // The new process gets a listener the old one never had (a restart-only change) and a
    // route change; it takes over the existing listener and admin port.
    let second = std::net::SocketAddr::from(([127, 0, 0, 1], free_port()));
    let document = format!(
        "{}\n[[listeners]]\nname = \"second\"\naddress = \"{second}\"\n",
        gw.config_for(&version(&a, &b, "b", 1, 5000))
    );
    let before = load.ok();
    let old = gw.upgrade(&document).await;
    assert!(old.success(), "the old process exits cleanly: {old}");
    assert_ne!(gw.pid(), old_pid);
    // Traffic kept flowing through the handover, then on the new process.
    let during = load.ok() - before;
    let after_upgrade = load.ok();
    wait_until("load on the new process", Duration::from_secs(5), || {
        load.ok() > after_upgrade + 50
    })
    .await;
    let (ok, errors) = load.stop().await;
    assert!(
        errors.is_empty(),
        "failed requests across the upgrade: {errors:?}"
    );
    assert!(
        during > 100,
        "only {during} requests ran during the upgrade"
    );
    assert!(ok > during);

    assert_eq!(instance(&http, &gw, "/v/check").await, "b");
    let r = http
        .get(format!("http://{second}/v/x"))
        .send()
        .await
        .expect("the new listener serves");
    assert_eq!(r.status(), 200);
    assert_eq!(
        std::fs::read_to_string(gw.dir().join("gateway.pid"))
            .expect("pid file")
            .trim(),
        gw.pid().to_string(),
        "the pid file names the new process"
    );
    // The admin API is the new process's: a fresh version history from startup.
    let j = config_status(&http, &gw).await;
    assert_eq!(j["current"]["source"], "startup", "{j}");
    assert_eq!(j["current"]["generation"], 1, "{j}");
    let log = gw.log();
    assert!(
        log.contains("upgrade: took over the listening sockets"),
        "{log}"
    );
    assert!(
        log.contains("drained: all in-flight requests finished"),
        "{log}"
    );
}

#[test]
fn upgrade_without_a_running_gateway_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("gateway.toml");
    let http = free_port();
    let admin = free_port();
    std::fs::write(
        &path,
        format!(
            "[server]\npid_file = \"gateway.pid\"\nupgrade_sock = \"upgrade.sock\"\n\
             [admin]\naddress = \"127.0.0.1:{admin}\"\n\
             [[listeners]]\nname = \"public\"\naddress = \"127.0.0.1:{http}\"\n\
             [clusters.a]\nendpoints = [\"127.0.0.1:9\"]\n\
             [[routes]]\nname = \"all\"\ncluster = \"a\"\n"
        ),
    )
    .expect("write config");
    let path = path.to_string_lossy().into_owned();
    let (code, _, stderr) = run_gateway_cli(&["run", "--upgrade", "--config", &path]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("upgrade: cannot read pid_file")
            && stderr.contains("fix: start without --upgrade"),
        "{stderr}"
    );
}
