//! Consul discovery and self-registration against a real `consul agent -dev` on OS-assigned
//! ports: registration routes traffic, a failing check or a deregistration takes an instance
//! out, a newly passing instance gets traffic within 2 s, and the gateway keeps serving its
//! last known endpoints while the agent is down and resumes watching when it returns.

mod harness;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use discovery::consul::{CheckStatus, Registration, Service};
use harness::*;

/// How long Consul (1 s checks) and the watch get to reflect a change.
const CHANGE_DEADLINE: Duration = Duration::from_secs(15);

fn gateway_config(agent: &ConsulAgent) -> String {
    format!(
        "[discovery.consul]\naddress = \"{}\"\nretry_base_ms = 50\nretry_max_ms = 500\n\n\
         [clusters.svc.consul]\nservice = \"svc\"\n\n\
         [clusters.canary.consul]\nservice = \"svc\"\ntags = [\"canary\"]\n\n\
         [[routes]]\nname = \"canary\"\ncluster = \"canary\"\npath_prefix = \"/canary\"\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"svc\"\npath_prefix = \"/\"\n",
        agent.address()
    )
}

/// The cluster's entry in `/clusters`.
async fn cluster_view(http: &reqwest::Client, gw: &Gateway, name: &str) -> serde_json::Value {
    let (status, all) = get_json(http, &gw.admin_url("/clusters")).await;
    assert_eq!(status, 200);
    all["clusters"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["name"] == name))
        .cloned()
        .unwrap_or_else(|| panic!("no cluster {name} in {all}"))
}

async fn endpoints_of(http: &reqwest::Client, gw: &Gateway, name: &str) -> BTreeSet<String> {
    cluster_view(http, gw, name).await["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter_map(|e| e["address"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// Polls `/clusters` until cluster `name` has exactly the endpoints of `upstreams`.
async fn wait_endpoints(
    http: &reqwest::Client,
    gw: &Gateway,
    name: &str,
    upstreams: &[&EchoServer],
) {
    let want: BTreeSet<String> = upstreams.iter().map(|u| u.addr().to_string()).collect();
    eventually(
        &format!("cluster {name} to have {want:?}"),
        CHANGE_DEADLINE,
        || async {
            let have = endpoints_of(http, gw, name).await;
            if have == want {
                Ok(())
            } else {
                Err(format!("it has {have:?}\n{}", gw.log()))
            }
        },
    )
    .await;
}

/// Sends `n` requests to `path` and returns the instances that answered (all must be 200).
async fn instances(http: &reqwest::Client, gw: &Gateway, path: &str, n: usize) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    for _ in 0..n {
        let r = http.get(gw.url(path)).send().await.expect("request");
        assert_eq!(r.status(), 200, "{path}");
        let who = r.headers()["x-echo-instance"]
            .to_str()
            .expect("instance")
            .to_owned();
        seen.insert(who);
    }
    seen
}

fn set(names: &[&str]) -> BTreeSet<String> {
    names.iter().map(|s| (*s).to_owned()).collect()
}

/// An agent, instance `a` registered with an HTTP check, and a gateway routing to it.
async fn one_instance_behind_a_gateway() -> (ConsulAgent, EchoServer, Registration, Gateway) {
    let agent = ConsulAgent::start().await;
    let a = echo("a").await;
    let ra = agent
        .client()
        .register(Service::new("svc", a.addr()).http_check("/health"))
        .await
        .expect("register a");
    let gw = Gateway::start(&gateway_config(&agent)).await;
    wait_endpoints(&client(), &gw, "svc", &[&a]).await;
    (agent, a, ra, gw)
}

#[tokio::test]
async fn registered_instances_get_traffic_and_failing_or_deregistered_ones_leave() {
    let agent = ConsulAgent::start().await;
    let consul = agent.client();
    let a = echo("a").await;
    let b = echo("b").await;
    let _ra = consul
        .register(Service::new("svc", a.addr()).http_check("/health"))
        .await
        .expect("register a");
    let rb = consul
        .register(
            Service::new("svc", b.addr())
                .http_check("/health")
                .tag("canary")
                .meta("version", "2"),
        )
        .await
        .expect("register b");
    let gw = Gateway::start(&gateway_config(&agent)).await;
    let http = client();

    wait_endpoints(&http, &gw, "svc", &[&a, &b]).await;
    assert_eq!(instances(&http, &gw, "/x", 30).await, set(&["a", "b"]));
    wait_endpoints(&http, &gw, "canary", &[&b]).await;
    assert_eq!(
        instances(&http, &gw, "/canary/x", 10).await,
        set(&["b"]),
        "the tag subset"
    );
    let view = cluster_view(&http, &gw, "canary").await;
    assert_eq!(view["discovery"]["source"], "consul");
    assert_eq!(view["discovery"]["service"], "svc");
    assert_eq!(view["discovery"]["stale"], false);
    assert!(view["discovery"]["index"].as_u64().unwrap_or(0) > 0);
    assert_eq!(view["endpoints"][0]["tags"][0], "canary");
    assert_eq!(view["endpoints"][0]["meta"]["version"], "2");

    // A failing health check takes `a` out; it comes back when it passes again.
    a.set_fault(Some(500), Duration::ZERO);
    wait_endpoints(&http, &gw, "svc", &[&b]).await;
    assert_eq!(instances(&http, &gw, "/x", 20).await, set(&["b"]));
    a.set_fault(None, Duration::ZERO);
    wait_endpoints(&http, &gw, "svc", &[&a, &b]).await;

    // Deregistration removes `b` (and empties the canary subset).
    rb.deregister().await.expect("deregister b");
    wait_endpoints(&http, &gw, "svc", &[&a]).await;
    assert_eq!(instances(&http, &gw, "/x", 20).await, set(&["a"]));
    wait_endpoints(&http, &gw, "canary", &[]).await;
    let r = http.get(gw.url("/canary/x")).send().await.expect("request");
    assert_eq!(r.status(), 503, "no instance in the subset");
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["error"], "no_endpoints");
}

#[tokio::test]
async fn a_new_instance_receives_traffic_within_two_seconds_of_passing_its_check() {
    let (agent, _a, _ra, gw) = one_instance_behind_a_gateway().await;
    let consul = agent.client();
    let b = echo("b").await;
    let http = client();

    // `b` registers with a TTL check that starts critical: it must not get traffic yet.
    let rb = consul
        .register(
            Service::new("svc", b.addr())
                .ttl_check(Duration::from_secs(10))
                .initial_status(CheckStatus::Critical),
        )
        .await
        .expect("register b");
    let checks = agent.get_json("/v1/health/checks/svc").await;
    let b_check = checks
        .as_array()
        .and_then(|cs| {
            cs.iter()
                .find(|c| c["ServiceID"] == rb.service().id.as_str())
        })
        .cloned()
        .expect("b's check");
    assert_eq!(b_check["Status"], "critical");
    assert_eq!(instances(&http, &gw, "/x", 10).await, set(&["a"]));

    let passed = Instant::now();
    rb.report(CheckStatus::Passing, "warmed up")
        .await
        .expect("pass");
    eventually("traffic to b", Duration::from_secs(5), || async {
        let seen = instances(&http, &gw, "/x", 4).await;
        if seen.contains("b") {
            Ok(())
        } else {
            Err(format!("only {seen:?}\n{}", gw.log()))
        }
    })
    .await;
    let took = passed.elapsed();
    assert!(
        took < Duration::from_secs(2),
        "b received traffic {took:?} after passing its check"
    );
}

#[tokio::test]
async fn consul_down_keeps_the_last_endpoints_and_a_restart_resumes_the_watch() {
    let mut agent = ConsulAgent::start().await;
    let a = echo("a").await;
    // A TTL check: its registration reports every second and notices a forgetful agent.
    let _ra = agent
        .client()
        .register(Service::new("svc", a.addr()).ttl_check(Duration::from_secs(3)))
        .await
        .expect("register a");
    let gw = Gateway::start(&gateway_config(&agent)).await;
    let http = client();
    wait_endpoints(&http, &gw, "svc", &[&a]).await;

    agent.stop();
    let view = eventually("svc marked stale", CHANGE_DEADLINE, || async {
        let view = cluster_view(&http, &gw, "svc").await;
        if view["discovery"]["stale"] == true {
            Ok(view)
        } else {
            Err(view.to_string())
        }
    })
    .await;
    assert!(
        view["discovery"]["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("cannot reach Consul")),
        "{view}"
    );
    assert!(view["discovery"]["stale_for_ms"].is_u64(), "{view}");
    assert_eq!(endpoints_of(&http, &gw, "svc").await.len(), 1);
    assert_eq!(
        instances(&http, &gw, "/x", 20).await,
        set(&["a"]),
        "the last known endpoints keep serving"
    );
    // Still serving after several failed retries.
    eventually("three failed watch retries", CHANGE_DEADLINE, || async {
        let view = cluster_view(&http, &gw, "svc").await;
        match view["discovery"]["consecutive_errors"].as_u64() {
            Some(n) if n >= 3 => Ok(()),
            _ => Err(view.to_string()),
        }
    })
    .await;
    assert_eq!(instances(&http, &gw, "/x", 10).await, set(&["a"]));
    assert!(gw.log().contains("serving the last known endpoints"));

    // The agent comes back empty (dev mode); `a`'s registration registers again, a new
    // instance registers, and the gateway's watch sees both.
    agent.restart().await;
    let b = echo("b").await;
    let _rb = agent
        .client()
        .register(Service::new("svc", b.addr()).http_check("/health"))
        .await
        .expect("register b");
    wait_endpoints(&http, &gw, "svc", &[&a, &b]).await;
    let view = cluster_view(&http, &gw, "svc").await;
    assert_eq!(view["discovery"]["stale"], false, "{view}");
    assert_eq!(instances(&http, &gw, "/x", 30).await, set(&["a", "b"]));
}

#[tokio::test]
async fn in_flight_requests_finish_when_their_endpoint_leaves() {
    let (agent, _a, ra, gw) = one_instance_behind_a_gateway().await;
    let consul = agent.client();
    let b = echo("b").await;
    let http = client();

    // A slow request is on its way to `a` when `a` leaves the set and `b` joins.
    let slow = tokio::spawn({
        let http = http.clone();
        let url = gw.url("/slow?delay_ms=1500");
        async move { http.get(url).send().await }
    });
    eventually("the slow request at a", Duration::from_secs(5), || async {
        let view = cluster_view(&http, &gw, "svc").await;
        if view["endpoints"][0]["in_flight"] == 1 {
            Ok(())
        } else {
            Err(view.to_string())
        }
    })
    .await;
    let _rb = consul
        .register(Service::new("svc", b.addr()).http_check("/health"))
        .await
        .expect("register b");
    ra.deregister().await.expect("deregister a");
    wait_endpoints(&http, &gw, "svc", &[&b]).await;
    let r = slow.await.expect("task").expect("slow request");
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["x-echo-instance"], "a");
    assert_eq!(instances(&http, &gw, "/x", 10).await, set(&["b"]));
}

#[tokio::test]
async fn a_service_process_registers_itself_and_deregisters_on_sigterm() {
    let agent = ConsulAgent::start().await;
    let gw = Gateway::start(&gateway_config(&agent)).await;
    let http = client();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut echo = Process::spawn(
        std::process::Command::new(built_bin("sample-services", "echo"))
            .args(["--listen", &listen, "--name", "p1", "--service", "svc"])
            .args(["--tag", "canary", "--consul", &agent.address()]),
    );
    eventually(
        "the process in the canary cluster",
        CHANGE_DEADLINE,
        || async {
            let have = endpoints_of(&http, &gw, "canary").await;
            if have.contains(&listen) {
                Ok(())
            } else {
                Err(format!("it has {have:?}\n{}", gw.log()))
            }
        },
    )
    .await;
    assert_eq!(instances(&http, &gw, "/canary/x", 5).await, set(&["p1"]));
    let services = agent.get_json("/v1/agent/services").await;
    let entry = services
        .as_object()
        .and_then(|m| m.values().find(|s| s["Service"] == "svc"))
        .cloned()
        .expect("registered");
    assert_eq!(entry["Meta"]["instance"], "p1");

    // A graceful stop deregisters before the process exits: no wait for a failing check.
    let status = echo.terminate(Duration::from_secs(10)).await;
    assert!(status.success(), "{status}");
    let services = agent.get_json("/v1/agent/services").await;
    assert!(
        services
            .as_object()
            .is_some_and(|m| m.values().all(|s| s["Service"] != "svc")),
        "still registered: {services}"
    );
    wait_endpoints(&http, &gw, "svc", &[]).await;
}
