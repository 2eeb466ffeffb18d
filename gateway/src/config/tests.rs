use super::*;
use resilience::Condition;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, Path::new("gw.toml"))
}

fn err(text: &str) -> String {
    parse(text)
        .expect_err("config must be rejected")
        .to_string()
}

const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:8080"

[clusters.catalog]
endpoints = ["127.0.0.1:9001", { address = "127.0.0.1:9002", weight = 3 }]
"#;

#[test]
fn full_config_is_typed() {
    let text = format!(
        "{BASE}\n[clusters.steering]\nendpoints = [\"127.0.0.1:9100\"]\nprotocol = \"h2c\"\nload_balancing = \"consistent_hash\"\nhash_key = \"header:X-User\"\nconnect_timeout_ms = 250\n\n\
         [[routes]]\nname = \"titles\"\ncluster = \"catalog\"\npath_template = \"/titles/{{id}}\"\nrewrite = \"/v1/titles/{{id}}\"\nmethods = [\"get\"]\n\n\
         [[routes]]\nname = \"grpc\"\ncluster = \"steering\"\nhost = \"*.example.com\"\npath_prefix = \"/steering\"\nprefix_rewrite = \"\"\nheaders = [{{ name = \"x-canary\", value = \"1\" }}]\n"
    );
    let cfg = parse(&text).expect("valid");
    assert_eq!(
        cfg.listeners[0].address,
        "127.0.0.1:8080".parse().expect("addr")
    );
    assert_eq!(cfg.admin.address, "127.0.0.1:9901".parse().expect("addr"));
    assert_eq!(cfg.clusters.len(), 2);
    let EndpointSource::Static(eps) = &cfg.clusters[0].endpoints else {
        panic!("static endpoints");
    };
    assert_eq!(eps[1].weight, 3);
    assert!(cfg.consul.is_none(), "no Consul unless asked for");
    let steering = &cfg.clusters[1];
    assert_eq!(steering.protocol, UpstreamProtocol::H2c);
    assert_eq!(steering.timeouts.connect, Duration::from_millis(250));
    assert_eq!(
        steering.load_balancing,
        LoadBalancing::ConsistentHash(HashKey::Header(HeaderName::from_static("x-user")))
    );
    assert_eq!(cfg.routes[0].matcher.methods, Some(vec![http::Method::GET]));
    assert_eq!(cfg.route_cluster(&cfg.routes[1]).name, "steering");
    assert!(matches!(
        cfg.routes[1].rewrite,
        Some(Rewrite::Prefix { .. })
    ));
}

#[test]
fn unknown_key_names_line_and_fix() {
    let e = err(&format!("{BASE}conect_timeout_ms = 5\n"));
    assert!(
        e.starts_with("gw.toml:7:1: error: unknown field `conect_timeout_ms`"),
        "{e}"
    );
    assert!(
        e.contains("fix: remove the key or correct its spelling"),
        "{e}"
    );
}

#[test]
fn unknown_cluster_is_named_with_the_declared_ones() {
    let e = err(&format!(
        "{BASE}\n[[routes]]\nname = \"a\"\ncluster = \"catalg\"\n"
    ));
    assert!(
        e.contains("gw.toml:10:11: error: route `a` names unknown cluster `catalg`"),
        "{e}"
    );
    assert!(
        e.contains("declare [clusters.catalg] or use a declared cluster (catalog)"),
        "{e}"
    );
}

#[test]
fn bad_addresses_are_rejected() {
    let e = err(
        "[[listeners]]\naddress = \"localhost:80\"\n[clusters.c]\nendpoints = [\"10.0.0.1\"]\n",
    );
    assert!(
        e.contains(
            "gw.toml:2:11: error: listener address `localhost:80` is not an IP:PORT address"
        ),
        "{e}"
    );
    assert!(
        e.contains(
            "gw.toml:4:14: error: endpoint `10.0.0.1` of cluster `c` is not an IP:PORT address"
        ),
        "{e}"
    );
}

#[test]
fn duplicate_route_names_and_shadowed_routes() {
    let text = format!(
        "{BASE}\n[[routes]]\nname = \"api\"\ncluster = \"catalog\"\npath_prefix = \"/api\"\n\n\
         [[routes]]\nname = \"api\"\ncluster = \"catalog\"\npath_prefix = \"/api/v2\"\n"
    );
    let e = err(&text);
    assert!(
        e.contains("route name `api` is already used by the route at line 8"),
        "{e}"
    );
    assert!(
        e.contains("route `api` can never match: route `api` (line 8)"),
        "{e}"
    );
    assert!(e.contains("fix: move route `api` above route `api`"), "{e}");
}

#[test]
fn rewrite_and_path_rules() {
    let e = err(&format!(
        "{BASE}\n[[routes]]\nname = \"a\"\ncluster = \"catalog\"\npath_prefix = \"/a\"\nrewrite = \"/b\"\n"
    ));
    assert!(
        e.contains("sets rewrite without path_template or path_exact"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[[routes]]\nname = \"a\"\ncluster = \"catalog\"\npath_template = \"/t/{{id}}\"\nrewrite = \"/x/{{nope}}\"\n"
    ));
    assert!(
        e.contains("which path_template `/t/{id}` does not define"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[[routes]]\nname = \"a\"\ncluster = \"catalog\"\npath_prefix = \"/a\"\npath_exact = \"/a\"\n"
    ));
    assert!(
        e.contains("more than one of path_exact, path_prefix, path_template"),
        "{e}"
    );
}

#[test]
fn every_semantic_issue_is_reported_in_document_order() {
    let e = err("[server]\nthreads = 0\n[[listeners]]\naddress = \"x\"\n[clusters.c]\nendpoints = []\nload_balancing = \"random\"\n");
    let lines: Vec<&str> = e.lines().filter(|l| l.contains("error:")).collect();
    assert_eq!(lines.len(), 4, "{e}");
    assert!(lines[0].starts_with("gw.toml:2:"), "{e}");
    assert!(e.contains("threads = 0 is out of range"), "{e}");
    assert!(e.contains("cluster `c` has no endpoints"), "{e}");
    assert!(e.contains("load_balancing `random` is unknown"), "{e}");
}

#[test]
fn missing_listeners_and_syntax_errors() {
    let e = err("[clusters.c]\nendpoints = [\"127.0.0.1:1\"]\n");
    assert!(e.contains("no listeners are configured"), "{e}");
    let e = err("[[listeners]\naddress = 1");
    assert!(e.starts_with("gw.toml:1:"), "{e}");
}

#[test]
fn work_stealing_defaults_to_more_than_one_thread() {
    let one = parse(&format!("[server]\nthreads = 1\n{BASE}")).expect("valid");
    assert!(!one.server.work_stealing);
    let two = parse(&format!("[server]\nthreads = 2\n{BASE}")).expect("valid");
    assert!(two.server.work_stealing);
    let forced = parse(&format!(
        "[server]\nthreads = 1\nwork_stealing = true\n{BASE}"
    ))
    .expect("valid");
    assert!(forced.server.work_stealing);
}

#[test]
fn header_case_is_not_preserved_unless_asked() {
    let default = parse(BASE).expect("valid");
    assert!(!default.server.preserve_header_case);
    let kept = parse(&format!("[server]\npreserve_header_case = true\n{BASE}")).expect("valid");
    assert!(kept.server.preserve_header_case);
    let e = err(&format!("[server]\npreserve_header_case = \"yes\"\n{BASE}"));
    assert!(e.starts_with("gw.toml:2:"), "{e}");
    assert!(
        e.contains("preserve_header_case") || e.contains("bool"),
        "{e}"
    );
}

#[test]
fn resilience_settings_parse_with_defaults_and_overrides() {
    let text = r#"
[[listeners]]
address = "127.0.0.1:1"

[clusters.a]
endpoints = ["127.0.0.1:2"]

[clusters.b]
endpoints = ["127.0.0.1:3"]
per_try_timeout_ms = 250
timeout_ms = 900
[clusters.b.circuit_breaker]
mode = "consecutive_failures"
consecutive_failures = 3
sleep_window_ms = 2000
failure_statuses = [503, "504"]
[clusters.b.bulkhead]
max_concurrent = 8
max_queue = 2
[clusters.b.retry]
retries = 2
on = ["timeout", "5xx"]
budget_percent = 10
[clusters.b.outlier_detection]
enabled = false

[[routes]]
name = "r"
cluster = "a"
path_prefix = "/r"
timeout_ms = 700
[routes.retry]
retries = 0
[routes.fallback]
on = ["circuit_open", 502]
cluster = "b"
[routes.fallback.response]
status = 203
body = "x"
"#;
    let c = Config::parse(text, Path::new("t.toml")).expect("valid");
    let a = &c.clusters[0].policy;
    let d = resilience::BreakerConfig::default();
    assert_eq!(a.breaker.as_ref().map(|b| b.config), Some(d));
    assert!(a
        .breaker
        .as_ref()
        .is_some_and(|b| b.failures.statuses().contains(500)));
    assert_eq!(a.bulkhead.config.max_concurrent, 1024);
    assert_eq!(a.retry.retries, 1);
    assert!(
        a.retry.on.has(Condition::ConnectFailure)
            && !a.retry.on.has(Condition::Timeout)
            && a.retry.on.statuses().contains(503)
    );
    assert_eq!(a.per_try_timeout, Duration::from_secs(30));
    assert!(a.outlier.is_some() && a.timeout.is_none());

    let b = &c.clusters[1].policy;
    let bb = b.breaker.as_ref().expect("breaker");
    assert_eq!(bb.config.trip, resilience::Trip::ConsecutiveFailures(3));
    assert_eq!(bb.config.sleep_window, Duration::from_secs(2));
    assert!(bb.failures.statuses().contains(504) && !bb.failures.statuses().contains(500));
    assert_eq!(
        (b.bulkhead.config.max_queue, b.bulkhead.queue_timeout),
        (2, Duration::from_millis(100))
    );
    assert_eq!(b.retry.retries, 2);
    assert!(
        b.retry.on.has(Condition::Timeout)
            && !b.retry.on.has(Condition::ConnectFailure)
            && b.retry.on.statuses().contains(500)
    );
    assert!((b.budget.ratio - 0.1).abs() < 1e-9);
    assert!(b.outlier.is_none());
    assert_eq!(
        (b.per_try_timeout, b.timeout),
        (Duration::from_millis(250), Some(Duration::from_millis(900)))
    );

    let r = &c.routes[0].policy;
    assert_eq!(r.timeout, Some(Duration::from_millis(700)));
    assert_eq!(r.retry.map(|p| p.retries), Some(0));
    let f = r.fallback.as_ref().expect("fallback");
    assert_eq!(f.cluster, Some(1));
    assert!(
        f.on.has(Condition::CircuitOpen)
            && !f.on.has(Condition::Timeout)
            && f.on.statuses().contains(502)
            && !f.on.statuses().contains(503)
    );
    assert_eq!(f.response.as_ref().map(|s| s.status.as_u16()), Some(203));
}

#[test]
fn resilience_mistakes_are_reported() {
    let base =
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[clusters.a]\nendpoints = [\"127.0.0.1:2\"]\n";
    let cases = [
        (
            "[clusters.a.circuit_breaker]\nwindow_ms = 1000\nbuckets = 3\n",
            "does not divide into 3 buckets",
        ),
        (
            "[clusters.a.circuit_breaker]\nconsecutive_failures = 3\n",
            "only applies to mode = \"consecutive_failures\"",
        ),
        (
            "[clusters.a.retry]\non = [200]\n",
            "status 200 is not an error status",
        ),
        (
            "[clusters.a.bulkhead]\nmax_concurrent = 0\n",
            "max_concurrent = 0 is out of range",
        ),
        (
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\n[routes.retry]\nbudget_percent = 5\n",
            "belongs to the cluster",
        ),
        (
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\n[routes.fallback]\non = [\"5xx\"]\n",
            "has nothing to answer with",
        ),
        (
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\n[routes.fallback]\ncluster = \"a\"\n",
            "names the route's own cluster",
        ),
        (
            "[clusters.a.bulkhead]\nmax_concurrent = 4\n[clusters.a.adaptive_concurrency]\n",
            "has both a bulkhead and an adaptive_concurrency limit",
        ),
        (
            "[clusters.a.adaptive_concurrency]\nmin_limit = 50\nmax_limit = 10\n",
            "min_limit 50 is above max_limit 10",
        ),
        (
            "[clusters.a.adaptive_concurrency]\nload_report = \"mem_utilization\"\n",
            "load_report `mem_utilization` is not an ORCA utilization figure",
        ),
        (
            "[clusters.a.adaptive_concurrency]\ntolerance_percent = 90\n",
            "tolerance_percent = 90 is out of range",
        ),
        (
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\npriority = \"urgent\"\n",
            "priority of route `r`: `urgent` is not a priority",
        ),
        (
            "[[routes]]\nname = \"r\"\ncluster = \"a\"\npriority = 101\n",
            "101 is not a score from 0 to 100",
        ),
        (
            "[overload]\npriority_header = \"x-priority\"\n",
            "any client could raise its own priority",
        ),
        (
            "[overload]\nmax_in_flight = 0\n",
            "max_in_flight = 0 is out of range",
        ),
    ];
    for (extra, expected) in cases {
        let text = if extra.contains("[[routes]]") {
            format!("{base}{extra}")
        } else {
            format!("{base}{extra}[[routes]]\nname = \"r\"\ncluster = \"a\"\n")
        };
        let e = Config::parse(&text, Path::new("t.toml")).expect_err(expected);
        assert!(e.to_string().contains(expected), "{expected:?} not in {e}");
    }
}

#[test]
fn overload_settings_are_typed() {
    let text = "[[listeners]]\naddress = \"127.0.0.1:1\"\n\
        [overload]\nmax_in_flight = 500\nretry_after_seconds = 3\npriority_claim = \"prio\"\n\
        priority_header = \"X-Priority\"\npriority_header_from = [\"10.0.0.0/8\", \"127.0.0.1\"]\n\
        [clusters.a]\nendpoints = [\"127.0.0.1:2\"]\n\
        [clusters.a.adaptive_concurrency]\nmin_limit = 2\nmax_limit = 64\ntolerance_percent = 150\n\
        queue_timeout_ms = 0\ndrop_statuses = [503]\nload_report = \"named_metrics.queue\"\n\
        [[routes]]\nname = \"play\"\ncluster = \"a\"\npath_prefix = \"/play\"\npriority = \"critical\"\n\
        [[routes]]\nname = \"events\"\ncluster = \"a\"\npriority = 10\n";
    let cfg = parse(text).expect("valid");
    let a = cfg.clusters[0]
        .policy
        .concurrency
        .clone()
        .expect("adaptive");
    let resilience::LimitConfig::Gradient(g) = a.limiter.limit else {
        panic!("a gradient limit");
    };
    assert_eq!((g.min, g.max, g.initial), (2, 64, 20));
    assert!((g.tolerance - 1.5).abs() < 1e-9);
    assert!(a.limiter.max_wait.is_zero());
    assert!(a.drop_statuses.contains(503) && !a.drop_statuses.contains(429));
    assert_eq!(
        a.load_report.map(|m| m.to_string()).as_deref(),
        Some("named_metrics.queue")
    );
    assert_eq!(
        cfg.routes[0].policy.priority,
        Some(resilience::Priority::CRITICAL)
    );
    assert_eq!(cfg.routes[1].policy.priority.map(|p| p.score()), Some(10));
    let o = &cfg.overload;
    assert_eq!(
        o.inbound.map(|i| i.limit),
        Some(resilience::LimitConfig::Fixed(500))
    );
    assert_eq!(o.retry_after_seconds, 3);
    assert_eq!(o.priority_claim.as_deref(), Some("prio"));
    let (name, from) = o.priority_header.as_ref().expect("header");
    assert_eq!((name.as_str(), from.len()), ("x-priority", 2));
}

#[test]
fn consul_clusters_and_settings_parse() {
    let text = format!(
        "{BASE}\n[discovery.consul]\naddress = \"http://127.0.0.1:8600/\"\ndatacenter = \"eu1\"\nwait_ms = 30000\n\
         max_queries_per_second = 2.5\nburst = 4\nretry_base_ms = 100\nretry_max_ms = 2000\ntoken = \"secret\"\n\n\
         [clusters.play.consul]\nservice = \"play\"\ntags = [\"canary\"]\nmeta = {{ version = \"2\" }}\n\
         filter = \"Service.Port > 1000\"\ndatacenter = \"us1\"\n"
    );
    let cfg = parse(&text).expect("valid");
    let consul = cfg.consul.as_ref().expect("consul settings");
    assert_eq!(consul.address, "127.0.0.1:8600");
    assert_eq!(consul.datacenter.as_deref(), Some("eu1"));
    assert_eq!(consul.wait, Duration::from_secs(30));
    assert_eq!(consul.max_queries_per_second, 2.5);
    assert_eq!(consul.burst, 4);
    assert_eq!(consul.retry_base, Duration::from_millis(100));
    assert_eq!(consul.retry_max, Duration::from_secs(2));
    assert_eq!(consul.token.as_deref(), Some("secret"));
    let play = cfg
        .clusters
        .iter()
        .find(|c| c.name == "play")
        .expect("play");
    let EndpointSource::Consul(q) = &play.endpoints else {
        panic!("consul endpoints");
    };
    assert_eq!(q.service, "play");
    assert_eq!(q.tags, vec!["canary".to_owned()]);
    assert_eq!(q.meta.get("version").map(String::as_str), Some("2"));
    assert_eq!(q.filter.as_deref(), Some("Service.Port > 1000"));
    assert_eq!(q.datacenter.as_deref(), Some("us1"));

    // A Consul cluster without the section uses the defaults (and CONSUL_HTTP_ADDR).
    let text = format!("{BASE}\n[clusters.play.consul]\nservice = \"play\"\n");
    assert!(parse(&text).expect("valid").consul.is_some());
}

#[test]
fn consul_mistakes_are_reported() {
    let e = err(&format!(
        "{BASE}\n[clusters.both]\nendpoints = [\"127.0.0.1:1\"]\n[clusters.both.consul]\nservice = \"x\"\n"
    ));
    assert!(
        e.contains("cluster `both` has both endpoints and consul"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[clusters.bad.consul]\nservice = \"no spaces\"\n"
    ));
    assert!(
        e.contains("Consul service name `no spaces` may only use"),
        "{e}"
    );
    let e = err(&format!(
        "{BASE}\n[clusters.m.consul]\nservice = \"m\"\nmeta = {{ \"a-b\" = \"1\" }}\n"
    ));
    assert!(e.contains("meta key `a-b` cannot be used"), "{e}");
    let e = err(&format!(
        "{BASE}\n[discovery.consul]\naddress = \"https://consul:8501\"\n"
    ));
    assert!(e.contains("https is not supported"), "{e}");
    let e = err(&format!(
        "{BASE}\n[discovery.consul]\nwait_ms = 900000\nmax_queries_per_second = 0\n"
    ));
    assert!(e.contains("over Consul's limit of 10 minutes"), "{e}");
    assert!(
        e.contains("max_queries_per_second = 0 is out of range"),
        "{e}"
    );
    let e = err(&format!("{BASE}\n[clusters.none]\n"));
    assert!(e.contains("or consul = { service"), "{e}");
}

#[test]
fn upgrade_socket_and_pid_file_are_paths_from_the_config_directory() {
    let cfg = Config::parse(
        &format!("[server]\nupgrade_sock = \"run/up.sock\"\npid_file = \"/run/gw.pid\"\n{BASE}"),
        Path::new("/etc/gateway/gw.toml"),
    )
    .expect("valid");
    assert_eq!(
        cfg.server.upgrade_sock,
        Path::new("/etc/gateway/run/up.sock")
    );
    assert_eq!(
        cfg.server.pid_file.as_deref(),
        Some(Path::new("/run/gw.pid"))
    );
    let default = parse(BASE).expect("valid");
    assert_eq!(
        default.server.upgrade_sock,
        Path::new("/tmp/gateway-upgrade.sock")
    );
    assert!(default.server.pid_file.is_none());
    let e = err(&format!("[server]\npid_file = \"\"\n{BASE}"));
    assert!(e.contains("pid_file = \"\" is not a file path"), "{e}");
}

mod properties {
    use super::*;
    use proptest::prelude::*;

    const BASE: &str = r#"
[[listeners]]
address = "127.0.0.1:18080"

[clusters.api]
endpoints = ["127.0.0.1:9000"]

[[routes]]
name = "api"
cluster = "api"
path_prefix = "/api"
"#;

    /// A value of any TOML type, some near the edges of what keys accept.
    fn value() -> impl Strategy<Value = String> {
        prop_oneof![
            any::<i64>().prop_map(|n| n.to_string()),
            Just("0".to_owned()),
            Just("-1".to_owned()),
            Just("true".to_owned()),
            Just("1.5e300".to_owned()),
            "\\PC{0,12}".prop_map(|s| format!("{s:?}")),
            Just("[]".to_owned()),
            Just("[\"10.0.0.0/8\", \"x\"]".to_owned()),
            Just("{}".to_owned()),
        ]
    }

    fn key() -> impl Strategy<Value = &'static str> {
        proptest::sample::select(vec![
            "[http]\nnormalize_path",
            "[http]\nescaped_slashes",
            "[http]\nmax_uri_bytes",
            "[http]\nmax_headers",
            "[http]\nrequest_header_timeout_ms",
            "[http]\nidle_timeout_ms",
            "[http]\ntrusted_proxies",
            "[http]\nxff_trusted_hops",
            "[http]\nforwarded_header",
            "[http]\nh2_max_concurrent_streams",
            "[admin]\ntoken",
            "[admin]\nstatus_address",
            "[admin]\nallowed_hosts",
            "[server]\nthreads",
            "[clusters.api]\nload_balancing",
            "[clusters.api]\ntimeout_ms",
            "[[routes]]\nname = \"x\"\ncluster = \"api\"\npath",
            "[[filters]]\nfilter = \"rate_limit\"\nrate",
            "[[filters]]\nfilter = \"headers\"\nrequest_set",
        ])
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(500))]

        /// Any text: an error or a config, never a panic.
        #[test]
        fn arbitrary_text_never_panics(text in "\\PC{0,200}") {
            let _ = Config::parse(&text, std::path::Path::new("fuzz.toml"));
        }

        /// A valid document with one key set to any value: accepted, or refused with a
        /// message and a fix, never a panic.
        #[test]
        fn any_value_for_a_key_is_validated(k in key(), v in value()) {
            let text = format!("{BASE}\n{k} = {v}\n");
            if let Err(e) = Config::parse(&text, std::path::Path::new("fuzz.toml")) {
                prop_assert!(!e.issues.is_empty());
                prop_assert!(e.issues.iter().all(|i| !i.message.is_empty()));
            }
        }
    }
}
