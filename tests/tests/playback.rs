//! The playback stack end to end, all real processes: Catalog, Steering (gRPC) and Play from
//! `sample-services`, the gateway in front with the routes of the shipped
//! `config/playback.toml` (and `playback-consul.toml` with a real Consul agent).

mod harness;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use harness::*;
use jsonwebtoken::Algorithm;
use sample_services::steering::proto::steering_client::SteeringClient;
use sample_services::steering::proto::SelectServersRequest;
use serde_json::{json, Value};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

/// One playback service process, killed on drop; its output goes to a log file.
struct Svc {
    name: &'static str,
    child: Option<Child>,
    addr: SocketAddr,
    log: PathBuf,
}

impl Svc {
    fn spawn(dir: &Path, name: &'static str, args: &[String], env: &[(String, String)]) -> Self {
        let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(&log).expect("log file");
        let child = Command::new(built_bin("sample-services", name))
            .current_dir(repo(""))
            .arg("--listen")
            .arg(addr.to_string())
            .args(args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdout(out.try_clone().expect("log fd"))
            .stderr(out)
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn service");
        Self {
            name,
            child: Some(child),
            addr,
            log,
        }
    }

    /// Starts `name` and waits until it is healthy. A port that was free when picked may be
    /// taken by another test's process before the service binds it: then it starts again on
    /// another port.
    async fn spawn_healthy(
        dir: &Path,
        name: &'static str,
        args: &[String],
        env: &[(String, String)],
    ) -> Self {
        for _ in 0..3 {
            let mut svc = Self::spawn(dir, name, args, env);
            match svc.wait_healthy().await {
                Ok(()) => return svc,
                Err(log) if log.contains("in use") => continue,
                Err(log) => panic!("{name} exited:\n{log}"),
            }
        }
        panic!("{name}: no free port in three tries");
    }

    /// Waits until the service answers `/health`; `Err` with its log when it exited first.
    async fn wait_healthy(&mut self) -> Result<(), String> {
        let http = client();
        let health = format!("http://{}/health", self.addr);
        let what = format!("{} healthy", self.name);
        eventually(&what, Duration::from_secs(30), || {
            let exited = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            let log = self.log();
            let probe = http.get(&health).send();
            async move {
                if let Some(status) = exited {
                    return Ok(Err(format!("({status}) {log}")));
                }
                match probe.await {
                    Ok(r) if r.status() == 200 => Ok(Ok(())),
                    Ok(r) => Err(format!("status {}\n{log}", r.status())),
                    Err(e) => Err(format!("{e}\n{log}")),
                }
            }
        })
        .await
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn kill(&mut self) {
        harness::kill(&mut self.child);
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }
}

impl Drop for Svc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Catalog, Steering, Play, Events (on its own redis-server) and the gateway.
struct Stack {
    _dir: tempfile::TempDir,
    catalog: Svc,
    steering: Svc,
    play: Svc,
    events: Svc,
    redis: RedisServer,
    gw: Gateway,
    /// An h2c listener (gRPC through the gateway).
    grpc: SocketAddr,
}

impl Stack {
    /// With `consul`, every service registers there and both the gateway and Play discover
    /// the others through it; otherwise static addresses.
    async fn start(consul: Option<&ConsulAgent>) -> Self {
        Self::start_env(consul, &[]).await
    }

    /// Like [`Stack::start`] with extra environment variables for every process.
    async fn start_env(consul: Option<&ConsulAgent>, env: &[(String, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let common: Vec<String> = match consul {
            Some(c) => vec!["--consul".into(), c.address()],
            None => Vec::new(),
        };
        let catalog = Svc::spawn_healthy(dir.path(), "catalog", &common, env).await;
        let steering = Svc::spawn_healthy(dir.path(), "steering", &common, env).await;
        let mut play_args = common.clone();
        play_args.extend([
            "--catalog".into(),
            catalog.addr.to_string(),
            "--steering".into(),
            steering.addr.to_string(),
        ]);
        let play = Svc::spawn_healthy(dir.path(), "play", &play_args, env).await;
        let redis = RedisServer::start().await;
        let mut events_args = common.clone();
        events_args.extend(["--redis".into(), redis.url()]);
        let events = Svc::spawn_healthy(dir.path(), "events", &events_args, env).await;

        // The shipped config's clusters and routes, pointed at these processes.
        let file = if consul.is_some() {
            "config/playback-consul.toml"
        } else {
            "config/playback.toml"
        };
        let text = std::fs::read_to_string(repo(file)).expect("shipped config");
        let from = text.find("[clusters.play]").expect("clusters section");
        let keys = repo("config/dev-keys");
        let mut body = text[from..]
            .replace("127.0.0.1:9101", &catalog.addr.to_string())
            .replace("127.0.0.1:9102", &steering.addr.to_string())
            .replace("127.0.0.1:9103", &play.addr.to_string())
            .replace("127.0.0.1:9104", &events.addr.to_string())
            .replace("\"dev-keys/", &format!("\"{}/", keys.display()));
        if let Some(c) = consul {
            body = format!(
                "[discovery.consul]\naddress = \"{}\"\n\n{body}",
                c.address()
            );
        }
        let grpc = SocketAddr::from(([127, 0, 0, 1], free_port()));
        body =
            format!("[[listeners]]\nname = \"grpc\"\naddress = \"{grpc}\"\nh2c = true\n\n{body}");
        let gw = Gateway::start_env(&body, env).await;
        // The h2c listener is its own pingora service and may start a moment after the one
        // the harness waited for.
        eventually(
            "the gateway's gRPC listener",
            Duration::from_secs(10),
            || async {
                tokio::net::TcpStream::connect(grpc)
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
        .await;
        Self {
            _dir: dir,
            catalog,
            steering,
            play,
            events,
            redis,
            gw,
            grpc,
        }
    }

    /// Posts a batch of playback events through the gateway.
    async fn post_events(&self, token: Option<&str>, batch: &Value) -> (u16, Value) {
        let mut req = client().post(self.gw.url("/api/events")).json(batch);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("events request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn play(&self, token: Option<&str>, title: &str, device: &str) -> (u16, Value) {
        let mut req = client()
            .post(self.gw.url("/api/play"))
            .json(&json!({"title_id": title, "device": device}));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let r = req.send().await.expect("play request");
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }
}

fn token_for(sub: &str, plan: &str, country: &str, ttl: i64) -> String {
    let exp = unix_now() as i64 + ttl;
    sign_token(
        Algorithm::RS256,
        "rs256.key.pem",
        Some("dev-rs256"),
        &json!({"sub": sub, "plan": plan, "country": country, "scope": "play", "exp": exp}),
    )
}

#[tokio::test]
async fn a_valid_token_plays_and_bad_tokens_licences_and_floods_are_refused() {
    let stack = Stack::start(None).await;
    let alice = token_for("alice", "premium", "JP", 600);

    let (status, m) = stack.play(Some(&alice), "t-0001", "tv").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["title"]["id"], "t-0001");
    assert_eq!(m["subject"], "alice");
    assert_eq!(m["country"], "JP");
    assert_eq!(m["degraded"], false, "{m}");
    // Steering ranked the servers for a loopback (loopnet) client: its ISP first.
    let servers = m["servers"].as_array().expect("servers");
    assert!(!servers.is_empty() && servers.len() <= 10, "{m}");
    assert_eq!(servers[0]["id"], "tyo-loopnet-2", "{m}");
    assert!(servers[0]["url"]
        .as_str()
        .is_some_and(|u| u.ends_with("/titles/t-0001/manifest.mpd")));
    // premium on a TV: the ladder starts at 2160p; basic on mobile stops at 720p.
    assert_eq!(m["ladder"][0]["name"], "2160p");
    let bob = token_for("bob", "basic", "JP", 600);
    let (status, m) = stack.play(Some(&bob), "t-0001", "mobile").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["ladder"][0]["name"], "720p");

    // No token, an expired one, a forged one: 401 from the gateway (Play never sees them).
    let (status, _) = stack.play(None, "t-0001", "tv").await;
    assert_eq!(status, 401);
    let expired = token_for("alice", "premium", "JP", -120);
    let (status, body) = stack.play(Some(&expired), "t-0001", "tv").await;
    assert_eq!(status, 401, "{body}");
    let forged = sign_token(
        Algorithm::RS256,
        "attacker-rs256.key.pem",
        Some("dev-rs256"),
        &json!({"sub": "mallory", "plan": "premium", "country": "JP", "scope": "play",
                "exp": unix_now() + 600}),
    );
    let (status, body) = stack.play(Some(&forged), "t-0001", "tv").await;
    assert_eq!(status, 401, "{body}");

    // t-0002 is licensed in JP only: 403 with the reason for a caller in DE.
    let hans = token_for("hans", "premium", "DE", 600);
    let (status, body) = stack.play(Some(&hans), "t-0002", "tv").await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["reason"], "not_licensed_in_country");
    // Plan and kind are checked too.
    let (status, body) = stack.play(Some(&bob), "t-0002", "tv").await;
    assert_eq!(
        (status, body["reason"].as_str()),
        (403, Some("plan_not_allowed"))
    );
    let (status, body) = stack.play(Some(&alice), "t-9999", "tv").await;
    assert_eq!(status, 404, "{body}");

    // One user over their limit (5/s, burst 10) gets 429; another user is unaffected.
    let carol = token_for("carol", "premium", "JP", 600);
    assert_eq!(stack.play(Some(&carol), "t-0001", "web").await.0, 200);
    // 30 at once: well past the burst, however slow the machine.
    let flood =
        futures_util::future::join_all((0..30).map(|_| stack.play(Some(&carol), "t-0001", "web")))
            .await;
    let statuses: Vec<u16> = flood.iter().map(|(s, _)| *s).collect();
    assert!(statuses.contains(&429), "{statuses:?}");
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 429),
        "{statuses:?}"
    );
    let dave = token_for("dave", "premium", "JP", 600);
    assert_eq!(stack.play(Some(&dave), "t-0001", "web").await.0, 200);

    // The public catalog through the gateway.
    let (status, j) = get_json(&client(), &stack.gw.url("/api/catalog/titles?prefix=a")).await;
    assert_eq!(status, 200, "{j}");
    assert!(j["count"].as_u64().is_some_and(|n| n >= 1), "{j}");
}

#[tokio::test]
async fn steering_down_gives_a_degraded_manifest_and_the_gateway_still_answers() {
    let mut stack = Stack::start(None).await;
    let alice = token_for("alice", "premium", "JP", 600);
    assert_eq!(stack.play(Some(&alice), "t-0001", "tv").await.0, 200);

    // Injected failure first (gRPC UNAVAILABLE), then the process gone.
    let r = client()
        .put(stack.steering.url("/__fault?status=503"))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), 200);
    let (status, m) = stack.play(Some(&alice), "t-0001", "tv").await;
    assert_eq!(status, 200, "{m}");
    assert_eq!(m["degraded"], true, "{m}");
    assert!(
        m["degraded_reason"]
            .as_str()
            .is_some_and(|r| r.contains("steering")),
        "{m}"
    );

    stack.steering.kill();
    for _ in 0..3 {
        let (status, m) = stack.play(Some(&alice), "t-0001", "tv").await;
        assert_eq!(status, 200, "{m}");
        assert_eq!(m["degraded"], true, "{m}");
        let ids: Vec<&str> = m["servers"]
            .as_array()
            .expect("servers")
            .iter()
            .filter_map(|s| s["id"].as_str())
            .collect();
        assert_eq!(ids, ["default-1", "default-2"], "{m}");
        // The licence was still checked: the title and the caller are in the manifest.
        assert_eq!(m["title"]["id"], "t-0001");
    }
    let (status, _) = get_json(&client(), &stack.gw.url("/api/catalog/titles/t-0001")).await;
    assert_eq!(status, 200);
    let deps = get_json(&client(), &stack.play.url("/dependencies"))
        .await
        .1;
    assert!(
        deps["steering"]["window_error_percent"]
            .as_f64()
            .is_some_and(|p| p > 0.0),
        "{deps}"
    );
}

#[tokio::test]
async fn a_catalog_slowed_past_its_timeout_is_answered_by_the_gateways_last_good_fallback() {
    let stack = Stack::start(None).await;
    let http = client();
    let url = stack.gw.url("/api/catalog/titles/t-0005");
    let r = http.get(&url).send().await.expect("catalog");
    assert_eq!(r.status(), 200);
    let fresh: Value = r.json().await.expect("json");

    let r = http
        .put(stack.catalog.url("/__fault?delay_ms=3000"))
        .send()
        .await
        .expect("fault");
    assert_eq!(r.status(), 200);
    let t0 = Instant::now();
    let r = http.get(&url).send().await.expect("catalog");
    assert_eq!(r.status(), 200);
    let fallback = r
        .headers()
        .get("x-fallback")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(
        fallback.starts_with("last_good"),
        "x-fallback: {fallback:?}"
    );
    assert!(r.headers().contains_key("age"));
    let stale: Value = r.json().await.expect("json");
    assert_eq!(stale, fresh);
    // Within the route's 800 ms budget, not the catalog's 3 s.
    assert!(
        t0.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t0.elapsed()
    );
    // A title never fetched before has nothing to fall back on: the timeout shows.
    let r = http
        .get(stack.gw.url("/api/catalog/titles/t-0006"))
        .send()
        .await
        .expect("catalog");
    assert_eq!(r.status(), 504);
}

#[tokio::test]
async fn grpc_to_steering_through_the_gateway_needs_a_token_and_works() {
    let stack = Stack::start(None).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", stack.grpc))
        .expect("endpoint")
        .connect()
        .await
        .expect("h2c connection to the gateway");
    let mut client = SteeringClient::new(channel);
    let request = || SelectServersRequest {
        client_ip: "10.1.2.3".into(),
        country: "US".into(),
        title_id: "t-0003".into(),
        limit: 3,
    };

    let refused = client
        .select_servers(request())
        .await
        .expect_err("no token");
    assert_eq!(refused.code(), tonic::Code::Unauthenticated, "{refused:?}");

    let token = token_for("alice", "premium", "US", 600);
    let mut req = tonic::Request::new(request());
    req.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let answer = client
        .select_servers(req)
        .await
        .expect("SelectServers through the gateway")
        .into_inner();
    assert_eq!(answer.client_isp, "corpnet");
    assert_eq!(answer.servers.len(), 3);
    assert_eq!(answer.servers[0].id, "sjc-corpnet-1");

    // An application error (a gRPC status in trailers) passes through as such.
    let mut bad = tonic::Request::new(SelectServersRequest {
        client_ip: "not-an-ip".into(),
        ..request()
    });
    bad.metadata_mut().insert(
        "authorization",
        format!("Bearer {token}").parse().expect("metadata"),
    );
    let e = client.select_servers(bad).await.expect_err("bad ip");
    assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e:?}");
    // The access log (written by a background writer) names the gRPC route.
    wait_until("the gRPC access log line", Duration::from_secs(10), || {
        stack.gw.log().contains("\"route\":\"steering-grpc\"")
    })
    .await;
}

#[tokio::test]
async fn the_flow_passes_with_discovery_through_a_real_consul() {
    let consul = ConsulAgent::start().await;
    let stack = Stack::start(Some(&consul)).await;
    for service in ["catalog", "steering", "play"] {
        let what = format!("{service} passing in Consul");
        eventually(&what, Duration::from_secs(20), || async {
            let j = consul
                .get_json(&format!("/v1/health/service/{service}?passing=true"))
                .await;
            if j.as_array().is_some_and(|a| !a.is_empty()) {
                Ok(())
            } else {
                Err(j.to_string())
            }
        })
        .await;
    }
    let alice = token_for("alice", "premium", "JP", 600);
    let what = "an undegraded manifest through Consul discovery";
    let manifest = eventually(what, Duration::from_secs(20), || async {
        let (status, m) = stack.play(Some(&alice), "t-0001", "tv").await;
        if status == 200 && m["degraded"] == false {
            Ok(m)
        } else {
            Err(format!(
                "{status} {m}\n{}\n{}",
                stack.gw.log(),
                stack.play.log()
            ))
        }
    })
    .await;
    assert_eq!(manifest["servers"][0]["id"], "tyo-loopnet-2");
    let (status, clusters) = get_json(&client(), &stack.gw.admin_url("/clusters")).await;
    assert_eq!(status, 200);
    let text = clusters.to_string();
    assert!(text.contains(&stack.play.addr.to_string()), "{text}");
    assert!(text.contains("consul"), "{text}");
    // Events registered itself and the gateway found it there too.
    let batch = json!({"events": [{"type": "start", "title": "t-0001", "session": "c1"}]});
    let what = "an events batch through Consul discovery";
    eventually(what, Duration::from_secs(20), || async {
        match stack.post_events(Some(&alice), &batch).await {
            (202, j) => Ok(j),
            (s, j) => Err(format!("{s} {j}")),
        }
    })
    .await;
    let _ = (&stack.catalog, &stack.steering);
}

#[tokio::test]
async fn playback_events_reach_the_redis_stream_through_the_gateway() {
    let mut stack = Stack::start(None).await;
    let alice = token_for("alice", "premium", "JP", 600);
    let batch = json!({"events": [
        {"type": "start", "title": "t-0001", "session": "s-1", "position_ms": 0, "device": "tv"},
        {"type": "heartbeat", "title": "t-0001", "session": "s-1", "position_ms": 30000},
        {"type": "stop", "title": "t-0001", "session": "s-1", "position_ms": 61000}
    ]});
    let (status, j) = stack.post_events(Some(&alice), &batch).await;
    assert_eq!(status, 202, "{j}");
    assert_eq!(j["accepted"], 3);
    // Newest first, with the user the gateway verified (x-user-id from the token's sub).
    let (status, recent) = get_json(&client(), &stack.events.url("/events/recent?count=3")).await;
    assert_eq!(status, 200, "{recent}");
    let kinds: Vec<&str> = recent["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| e["type"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(kinds, ["stop", "heartbeat", "start"], "{recent}");
    assert_eq!(recent["events"][0]["user"], "alice");
    assert_eq!(recent["events"][0]["position_ms"], "61000");

    // No token: the gateway refuses. A client's own x-user-id never reaches Events.
    let (status, _) = stack.post_events(None, &batch).await;
    assert_eq!(status, 401);
    // A malformed batch: Events says what is wrong.
    let bad = json!({"events": [{"type": "seek", "title": "t", "session": "s"}]});
    let (status, j) = stack.post_events(Some(&alice), &bad).await;
    assert_eq!(status, 400, "{j}");
    assert!(
        j["message"]
            .as_str()
            .is_some_and(|m| m.contains("events[0].type `seek`")),
        "{j}"
    );
    // Redis gone: 503 store_unavailable, and playback is untouched.
    stack.redis.stop();
    let (status, j) = stack.post_events(Some(&alice), &batch).await;
    assert_eq!(status, 503, "{j}");
    let (status, m) = stack.play(Some(&alice), "t-0001", "tv").await;
    assert_eq!(status, 200, "{m}");
    // The route is non-critical in the shipped config.
    let (_, overload) = get_json(&client(), &stack.gw.admin_url("/overload")).await;
    assert_eq!(
        overload["routes"]["events"]["class"], "non_critical",
        "{overload}"
    );
    assert_eq!(
        overload["routes"]["play"]["class"], "critical",
        "{overload}"
    );
    assert_eq!(
        overload["routes"]["catalog"]["class"], "degraded",
        "{overload}"
    );
}

#[tokio::test]
async fn one_trace_follows_a_play_request_through_the_gateway_play_catalog_and_steering() {
    let collector = OtlpCollector::start().await;
    let stack = Stack::start_env(None, &collector.env()).await;
    let alice = token_for("alice", "premium", "JP", 600);

    // The client's trace is continued: every span carries its trace id.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let r = client()
        .post(stack.gw.url("/api/play"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .bearer_auth(&alice)
        .json(&json!({"title_id": "t-0001", "device": "tv"}))
        .send()
        .await
        .expect("play");
    assert_eq!(r.status(), 200);
    let want = |s: &[harness::ReceivedSpan], service: &str, kind: i32| {
        s.iter().any(|x| x.service == service && x.kind == kind)
    };
    let spans = collector
        .wait_trace(trace_id, "reached every service", |s| {
            want(s, "gateway", 2)
                && want(s, "gateway", 3)
                && want(s, "play", 2)
                && s.iter()
                    .filter(|x| x.service == "play" && x.kind == 3)
                    .count()
                    == 2
                && want(s, "catalog", 2)
                && want(s, "steering", 2)
        })
        .await;
    let one = |service: &str, kind: i32, name_part: &str| {
        spans
            .iter()
            .find(|x| x.service == service && x.kind == kind && x.name.contains(name_part))
            .unwrap_or_else(|| panic!("no {service} span {name_part}: {spans:#?}"))
            .clone()
    };
    let edge = one("gateway", 2, "play");
    assert_eq!(
        edge.parent_span_id, client_span,
        "the gateway continues the client's span"
    );
    assert_eq!(edge.name, "POST play");
    assert_eq!(edge.attributes["http.route"], "play");
    assert_eq!(edge.attributes["http.response.status_code"], "200");
    let attempt = one("gateway", 3, "upstream play");
    assert_eq!(attempt.parent_span_id, edge.span_id);
    assert_eq!(attempt.attributes["gateway.attempt"], "1");
    assert_eq!(attempt.attributes["gateway.retry"], "false");
    let play = one("play", 2, "POST /play");
    assert_eq!(
        play.parent_span_id, attempt.span_id,
        "Play continues the gateway's attempt"
    );
    let to_catalog = one("play", 3, "catalog");
    let to_steering = one("play", 3, "Steering");
    assert_eq!(to_catalog.parent_span_id, play.span_id);
    assert_eq!(to_steering.parent_span_id, play.span_id);
    let catalog = one("catalog", 2, "playability");
    assert_eq!(catalog.parent_span_id, to_catalog.span_id, "over HTTP");
    let steering = one("steering", 2, "SelectServers");
    assert_eq!(steering.parent_span_id, to_steering.span_id, "over gRPC");
    assert_eq!(steering.attributes["rpc.system"], "grpc");

    // Without a traceparent the gateway starts the trace, and its access log names it.
    let (status, _) = stack.play(Some(&alice), "t-0002", "web").await;
    assert_eq!(status, 200);
    let mut started = String::new();
    wait_until(
        "the access log line of the second play",
        Duration::from_secs(10),
        || {
            started = stack
                .gw
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|j| j["target"] == "access" && j["route"] == "play")
                .filter_map(|j| j["trace_id"].as_str().map(str::to_owned))
                .find(|t| t != trace_id)
                .unwrap_or_default();
            !started.is_empty()
        },
    )
    .await;
    let spans = collector
        .wait_trace(
            &started,
            "reached Catalog with the gateway's server span",
            |s| want(s, "catalog", 2) && want(s, "gateway", 2),
        )
        .await;
    let root = spans
        .iter()
        .find(|x| x.service == "gateway" && x.kind == 2)
        .expect("gateway server span");
    assert!(
        root.parent_span_id.is_empty(),
        "the edge started it: {root:?}"
    );
}
