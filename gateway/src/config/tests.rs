use super::*;

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
    let EndpointSource::Static(eps) = &cfg.clusters[0].endpoints;
    assert_eq!(eps[1].weight, 3);
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
