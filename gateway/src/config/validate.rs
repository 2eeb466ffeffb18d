//! Turns the raw TOML shapes into a typed [`Config`], collecting every problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use discovery::Endpoint;
use http::{HeaderName, HeaderValue, Method};
use toml::Spanned;

use super::error::{line_col, ConfigError, ConfigIssue, Issues};
use super::raw::{RawCluster, RawConfig, RawListener, RawRoute};
use super::*;
use crate::router::{HeaderMatch, HostMatch, PathMatch, PathTemplate, Rewrite, RouteMatch};

const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

pub(super) fn validate(text: &str, source_name: &Path) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, source_name, &e))?;
    let base_dir = source_name.parent().unwrap_or_else(|| Path::new("."));
    let mut issues = Issues::new(text);

    let server = server_settings(&raw, &mut issues);
    let admin = AdminSettings {
        address: match &raw.admin {
            Some(a) => socket_addr(&a.address, "admin address", &mut issues),
            None => DEFAULT_ADMIN.parse().ok(),
        }
        .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9901))),
    };
    let access_log = access_log(&raw, &mut issues);
    let listeners = listeners(&raw.listeners, admin.address, base_dir, &mut issues);
    if raw.listeners.is_empty() {
        issues.at(
            0..0,
            "no listeners are configured, so the gateway would serve nothing",
            "add a [[listeners]] table with an address, e.g. address = \"0.0.0.0:8080\"",
        );
    }

    let mut clusters = Vec::new();
    let mut cluster_index = HashMap::new();
    for (name, cluster) in &raw.clusters {
        if let Some(spec) = cluster_spec(name, cluster, &mut issues) {
            cluster_index.insert(spec.name.clone(), clusters.len());
            clusters.push(spec);
        }
    }
    let names: Vec<&str> = raw.clusters.keys().map(|k| k.get_ref().as_str()).collect();
    let routes = routes(&raw.routes, &cluster_index, &names, text, &mut issues);

    if !issues.is_empty() {
        return Err(issues.into_error(source_name));
    }
    Ok(Config {
        server,
        admin,
        access_log,
        listeners,
        clusters,
        routes,
    })
}

fn syntax_error(text: &str, source_name: &Path, e: &toml::de::Error) -> ConfigError {
    let message = e.message().trim().to_owned();
    let fix = if message.contains("unknown field") {
        "remove the key or correct its spelling; the accepted keys are listed above"
    } else if message.contains("missing field") {
        "add the missing key (see the configuration reference in README.md)"
    } else if message.contains("invalid type") {
        "give the value the type named above"
    } else if message.contains("duplicate key") {
        "each name may be declared once; rename or merge the duplicate"
    } else {
        "fix the TOML syntax at this position"
    };
    ConfigError {
        source_name: source_name.to_owned(),
        issues: vec![ConfigIssue {
            position: e.span().map(|s| line_col(text, s.start)),
            message,
            fix: Some(fix.into()),
        }],
    }
}

fn ranged(
    v: &Option<Spanned<i64>>,
    key: &str,
    min: i64,
    max: i64,
    default: i64,
    issues: &mut Issues<'_>,
) -> i64 {
    match v {
        None => default,
        Some(s) if (min..=max).contains(s.get_ref()) => *s.get_ref(),
        Some(s) => {
            issues.at(
                s.span(),
                format!("{key} = {} is out of range", s.get_ref()),
                format!("use a value from {min} to {max}"),
            );
            default
        }
    }
}

fn ms(v: &Option<Spanned<i64>>, key: &str, default: u64, issues: &mut Issues<'_>) -> Duration {
    let n = ranged(v, key, 1, 3_600_000, default as i64, issues);
    Duration::from_millis(n.unsigned_abs())
}

fn server_settings(raw: &RawConfig, issues: &mut Issues<'_>) -> ServerSettings {
    let s = &raw.server;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as i64;
    let via = match &s.via {
        Some(v)
            if v.get_ref().is_empty()
                || HeaderValue::from_str(v.get_ref()).is_err()
                || v.get_ref().contains(',') =>
        {
            issues.at(
                v.span(),
                format!("via = {:?} is not a usable Via pseudonym", v.get_ref()),
                "use a short token such as \"edge-gateway\"",
            );
            "gateway".to_owned()
        }
        Some(v) => v.get_ref().clone(),
        None => "gateway".to_owned(),
    };
    let threads = ranged(&s.threads, "threads", 1, 256, cpus, issues).unsigned_abs() as usize;
    ServerSettings {
        threads,
        // With one thread there is nobody to steal from; the no-steal runtime is ~7% faster.
        work_stealing: s.work_stealing.unwrap_or(threads > 1),
        grace_period: Duration::from_secs(
            ranged(
                &s.grace_period_seconds,
                "grace_period_seconds",
                0,
                3600,
                15,
                issues,
            )
            .unsigned_abs(),
        ),
        graceful_shutdown_timeout: Duration::from_secs(
            ranged(
                &s.graceful_shutdown_timeout_seconds,
                "graceful_shutdown_timeout_seconds",
                0,
                600,
                5,
                issues,
            )
            .unsigned_abs(),
        ),
        upstream_keepalive_pool_size: ranged(
            &s.upstream_keepalive_pool_size,
            "upstream_keepalive_pool_size",
            0,
            1_000_000,
            1024,
            issues,
        )
        .unsigned_abs() as usize,
        via,
    }
}

fn access_log(raw: &RawConfig, issues: &mut Issues<'_>) -> AccessLogSettings {
    let format = match raw.access_log.format.as_ref() {
        None => LogFormat::Json,
        Some(f) => match f.get_ref().as_str() {
            "json" => LogFormat::Json,
            "text" => LogFormat::Text,
            other => {
                issues.at(
                    f.span(),
                    format!("access_log format `{other}` is unknown"),
                    "use \"json\" or \"text\"",
                );
                LogFormat::Json
            }
        },
    };
    AccessLogSettings {
        enabled: raw.access_log.enabled.unwrap_or(true),
        format,
    }
}

fn socket_addr(v: &Spanned<String>, what: &str, issues: &mut Issues<'_>) -> Option<SocketAddr> {
    match v.get_ref().parse::<SocketAddr>() {
        Ok(a) => Some(a),
        Err(_) => {
            issues.at(
                v.span(),
                format!("{what} `{}` is not an IP:PORT address", v.get_ref()),
                "write it as IP:PORT, e.g. \"127.0.0.1:8080\" or \"[::1]:8080\" (host names are not resolved here)",
            );
            None
        }
    }
}

fn listeners(
    raw: &[Spanned<RawListener>],
    admin: SocketAddr,
    base: &Path,
    issues: &mut Issues<'_>,
) -> Vec<ListenerSpec> {
    let mut out: Vec<ListenerSpec> = Vec::new();
    for (i, l) in raw.iter().enumerate() {
        let span = l.span();
        let l = l.get_ref();
        let Some(address) = socket_addr(&l.address, "listener address", issues) else {
            continue;
        };
        if address == admin {
            issues.at(
                l.address.span(),
                format!("listener address {address} is also the admin address"),
                "give the admin API ([admin] address) its own port",
            );
        }
        if let Some(prev) = out.iter().find(|p| p.address == address) {
            issues.at(
                span.clone(),
                format!(
                    "listener address {address} is already used by listener `{}`",
                    prev.name
                ),
                "give each listener its own address",
            );
        }
        let tls = l.tls.as_ref().and_then(|t| {
            let cert = base.join(t.cert.get_ref());
            let key = base.join(t.key.get_ref());
            let mut ok = true;
            for (p, s, what) in [(&cert, &t.cert, "certificate"), (&key, &t.key, "private key")] {
                if !p.is_file() {
                    issues.at(s.span(), format!("TLS {what} file `{}` does not exist", p.display()), "give the path of a PEM file (relative paths are relative to the config file)");
                    ok = false;
                }
            }
            ok.then_some(TlsFiles { cert, key })
        });
        let name = l
            .name
            .as_ref()
            .map_or_else(|| format!("listener-{i}"), |n| n.get_ref().clone());
        out.push(ListenerSpec {
            name,
            address,
            h2c: l.h2c,
            tls,
        });
    }
    out
}

fn endpoint(v: &Spanned<toml::Value>, cluster: &str, issues: &mut Issues<'_>) -> Option<Endpoint> {
    let bad_fix = "write an endpoint as \"IP:PORT\" or { address = \"IP:PORT\", weight = N }";
    let (address, weight) = match v.get_ref() {
        toml::Value::String(s) => (s.clone(), 1),
        toml::Value::Table(t) => {
            if let Some(k) = t.keys().find(|k| *k != "address" && *k != "weight") {
                issues.at(
                    v.span(),
                    format!("endpoint of cluster `{cluster}` has unknown key `{k}`"),
                    bad_fix,
                );
                return None;
            }
            let Some(toml::Value::String(a)) = t.get("address") else {
                issues.at(
                    v.span(),
                    format!("endpoint of cluster `{cluster}` has no address string"),
                    bad_fix,
                );
                return None;
            };
            let w = match t.get("weight") {
                None => 1,
                Some(toml::Value::Integer(w)) if (1..=1000).contains(w) => *w as u32,
                Some(_) => {
                    issues.at(v.span(), format!("endpoint weight in cluster `{cluster}` must be an integer from 1 to 1000"), "set weight = 1..1000");
                    return None;
                }
            };
            (a.clone(), w)
        }
        _ => {
            issues.at(
                v.span(),
                format!("endpoint of cluster `{cluster}` is neither a string nor a table"),
                bad_fix,
            );
            return None;
        }
    };
    match address.parse::<SocketAddr>() {
        Ok(a) => Some(Endpoint::new(a).with_weight(weight)),
        Err(_) => {
            issues.at(
                v.span(),
                format!("endpoint `{address}` of cluster `{cluster}` is not an IP:PORT address"),
                "write it as IP:PORT, e.g. \"127.0.0.1:9000\"",
            );
            None
        }
    }
}

fn hash_key(v: &Spanned<String>, issues: &mut Issues<'_>) -> Option<HashKey> {
    let text = v.get_ref().as_str();
    let key = match text.split_once(':') {
        None if text == "client_ip" => Some(HashKey::ClientIp),
        None if text == "path" => Some(HashKey::Path),
        Some(("header", h)) => HeaderName::from_bytes(h.trim().to_ascii_lowercase().as_bytes())
            .ok()
            .map(HashKey::Header),
        Some(("cookie", c)) if !c.trim().is_empty() => Some(HashKey::Cookie(c.trim().to_owned())),
        Some(("query", q)) if !q.trim().is_empty() => Some(HashKey::Query(q.trim().to_owned())),
        _ => None,
    };
    if key.is_none() {
        issues.at(
            v.span(),
            format!("hash_key `{text}` is not understood"),
            "use \"client_ip\", \"path\", \"header:NAME\", \"cookie:NAME\" or \"query:NAME\"",
        );
    }
    key
}

fn cluster_spec(
    name: &Spanned<String>,
    c: &Spanned<RawCluster>,
    issues: &mut Issues<'_>,
) -> Option<ClusterSpec> {
    let n = name.get_ref().clone();
    let span = c.span();
    let c = c.get_ref();
    if n.is_empty()
        || !n
            .chars()
            .all(|ch| ch.is_ascii_alphanumeric() || "-_.".contains(ch))
    {
        issues.at(
            name.span(),
            format!("cluster name `{n}` may only use letters, digits, `-`, `_` and `.`"),
            "rename the cluster",
        );
    }
    let endpoints: Vec<Endpoint> = c
        .endpoints
        .iter()
        .filter_map(|e| endpoint(e, &n, issues))
        .collect();
    if c.endpoints.is_empty() {
        issues.at(
            span,
            format!("cluster `{n}` has no endpoints"),
            "add endpoints = [\"IP:PORT\", ...]",
        );
    }
    let load_balancing = match c
        .load_balancing
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("least_request", _)) => LoadBalancing::LeastRequest,
        Some(("round_robin", _)) => LoadBalancing::RoundRobin,
        Some(("consistent_hash", _)) => LoadBalancing::ConsistentHash(
            c.hash_key
                .as_ref()
                .and_then(|k| hash_key(k, issues))
                .unwrap_or(HashKey::ClientIp),
        ),
        Some((other, s)) => {
            issues.at(
                s,
                format!("load_balancing `{other}` is unknown"),
                "use \"least_request\" (default), \"round_robin\" or \"consistent_hash\"",
            );
            LoadBalancing::LeastRequest
        }
    };
    if let (Some(k), false) = (
        &c.hash_key,
        matches!(load_balancing, LoadBalancing::ConsistentHash(_)),
    ) {
        issues.at(
            k.span(),
            format!("hash_key is set on cluster `{n}`, which does not use consistent hashing"),
            "set load_balancing = \"consistent_hash\" or remove hash_key",
        );
    }
    let protocol = match c
        .protocol
        .as_ref()
        .map(|s| (s.get_ref().as_str(), s.span()))
    {
        None | Some(("http1", _)) => UpstreamProtocol::Http1,
        Some(("h2c", _)) => UpstreamProtocol::H2c,
        Some((other, s)) => {
            issues.at(
                s,
                format!("protocol `{other}` is unknown"),
                "use \"http1\" (default) or \"h2c\" (HTTP/2 prior knowledge, for gRPC)",
            );
            UpstreamProtocol::Http1
        }
    };
    let timeouts = ClusterTimeouts {
        connect: ms(&c.connect_timeout_ms, "connect_timeout_ms", 1_000, issues),
        read: ms(&c.read_timeout_ms, "read_timeout_ms", 30_000, issues),
        write: ms(&c.write_timeout_ms, "write_timeout_ms", 30_000, issues),
        idle: ms(&c.idle_timeout_ms, "idle_timeout_ms", 60_000, issues),
    };
    let max_h2_streams =
        ranged(&c.max_h2_streams, "max_h2_streams", 1, 10_000, 100, issues).unsigned_abs() as usize;
    Some(ClusterSpec {
        name: n,
        endpoints: EndpointSource::Static(endpoints),
        load_balancing,
        protocol,
        timeouts,
        max_h2_streams,
    })
}

fn route_match(r: &RawRoute, issues: &mut Issues<'_>) -> RouteMatch {
    let name = r.name.get_ref();
    let host = r
        .host
        .as_ref()
        .and_then(|h| match HostMatch::parse(h.get_ref()) {
            Ok(m) => Some(m),
            Err(e) => {
                issues.at(
                    h.span(),
                    format!("route `{name}`: {e}"),
                    "use `example.com` or `*.example.com`",
                );
                None
            }
        });
    let given: Vec<&Spanned<String>> = [&r.path_exact, &r.path_prefix, &r.path_template]
        .into_iter()
        .flatten()
        .collect();
    if given.len() > 1 {
        issues.at(
            given[1].span(),
            format!("route `{name}` sets more than one of path_exact, path_prefix, path_template"),
            "keep exactly one path condition per route",
        );
    }
    let path = if let Some(p) = &r.path_exact {
        path_literal(p, name, issues).map(PathMatch::Exact)
    } else if let Some(p) = &r.path_prefix {
        path_literal(p, name, issues).map(PathMatch::Prefix)
    } else if let Some(p) = &r.path_template {
        match PathTemplate::parse(p.get_ref()) {
            Ok(t) => Some(PathMatch::Template(t)),
            Err(e) => {
                issues.at(
                    p.span(),
                    format!("route `{name}`: {e}"),
                    "write templates like \"/titles/{id}\" or \"/files/{*path}\"",
                );
                None
            }
        }
    } else {
        Some(PathMatch::Any)
    }
    .unwrap_or(PathMatch::Any);
    let methods = r.methods.as_ref().map(|m| {
        if m.get_ref().is_empty() {
            issues.at(
                m.span(),
                format!("route `{name}` has an empty methods list"),
                "list methods like [\"GET\", \"HEAD\"] or remove the key to allow all",
            );
        }
        m.get_ref()
            .iter()
            .filter_map(
                |s| match Method::from_bytes(s.to_ascii_uppercase().as_bytes()) {
                    Ok(m) => Some(m),
                    Err(_) => {
                        issues.at(
                            m.span(),
                            format!("route `{name}`: `{s}` is not an HTTP method"),
                            "use method names like \"GET\" or \"POST\"",
                        );
                        None
                    }
                },
            )
            .collect()
    });
    let headers = r
        .headers
        .iter()
        .filter_map(|h| {
            let span = h.span();
            let h = h.get_ref();
            let Ok(hname) = HeaderName::from_bytes(h.name.to_ascii_lowercase().as_bytes()) else {
                issues.at(
                    span,
                    format!("route `{name}`: `{}` is not a valid header name", h.name),
                    "use a header name like \"x-canary\"",
                );
                return None;
            };
            let value = match h.value.as_deref().map(HeaderValue::from_str) {
                None => None,
                Some(Ok(v)) => Some(v),
                Some(Err(_)) => {
                    issues.at(
                        span,
                        format!(
                            "route `{name}`: the value for header `{}` is not a valid header value",
                            h.name
                        ),
                        "use visible ASCII characters",
                    );
                    return None;
                }
            };
            Some(HeaderMatch { name: hname, value })
        })
        .collect();
    RouteMatch {
        host,
        path,
        methods,
        headers,
    }
}

fn path_literal(p: &Spanned<String>, route: &str, issues: &mut Issues<'_>) -> Option<String> {
    let s = p.get_ref();
    if !s.starts_with('/') || s.contains('?') || s.contains(char::is_whitespace) {
        issues.at(
            p.span(),
            format!("route `{route}`: path `{s}` must start with `/` and hold no query or spaces"),
            "write a path like \"/api/catalog\"",
        );
        return None;
    }
    Some(s.clone())
}

fn rewrite(r: &RawRoute, matcher: &RouteMatch, issues: &mut Issues<'_>) -> Option<Rewrite> {
    let name = r.name.get_ref();
    match (&r.prefix_rewrite, &r.rewrite, &matcher.path) {
        (Some(p), Some(_), _) => {
            issues.at(
                p.span(),
                format!("route `{name}` sets both prefix_rewrite and rewrite"),
                "keep one of them",
            );
            None
        }
        (Some(p), None, PathMatch::Prefix(from)) => {
            if !(p.get_ref().is_empty() || p.get_ref().starts_with('/')) {
                issues.at(
                    p.span(),
                    format!(
                        "route `{name}`: prefix_rewrite `{}` must be empty or start with `/`",
                        p.get_ref()
                    ),
                    "use \"\" to strip the prefix or a path like \"/v2\"",
                );
            }
            Some(Rewrite::Prefix {
                from: from.clone(),
                to: p.get_ref().clone(),
            })
        }
        (Some(p), None, _) => {
            issues.at(
                p.span(),
                format!("route `{name}` sets prefix_rewrite without path_prefix"),
                "add path_prefix, or use rewrite with path_template / path_exact",
            );
            None
        }
        (None, Some(t), PathMatch::Template(source)) => {
            match Rewrite::template(source.clone(), t.get_ref()) {
                Ok(rw) => Some(rw),
                Err(e) => {
                    issues.at(
                        t.span(),
                        format!("route `{name}`: {e}"),
                        "use only parameters the route's path_template defines",
                    );
                    None
                }
            }
        }
        (None, Some(t), PathMatch::Exact(_)) => {
            if !t.get_ref().starts_with('/') || t.get_ref().contains('{') {
                issues.at(
                    t.span(),
                    format!(
                        "route `{name}`: rewrite `{}` must be a plain path starting with `/`",
                        t.get_ref()
                    ),
                    "parameters need path_template",
                );
            }
            Some(Rewrite::Fixed(t.get_ref().clone()))
        }
        (None, Some(t), _) => {
            issues.at(
                t.span(),
                format!("route `{name}` sets rewrite without path_template or path_exact"),
                "for prefix routes use prefix_rewrite",
            );
            None
        }
        (None, None, _) => None,
    }
}

fn routes(
    raw: &[Spanned<RawRoute>],
    clusters: &HashMap<String, usize>,
    cluster_names: &[&str],
    text: &str,
    issues: &mut Issues<'_>,
) -> Vec<RouteSpec> {
    let mut out: Vec<(RouteSpec, usize)> = Vec::new();
    for r in raw {
        let span = r.span();
        let r = r.get_ref();
        let name = r.name.get_ref();
        if name.is_empty() {
            issues.at(
                r.name.span(),
                "route name is empty",
                "give every route a unique name",
            );
        }
        if let Some((_, line)) = out.iter().find(|(o, _)| &o.name == name) {
            issues.at(
                r.name.span(),
                format!("route name `{name}` is already used by the route at line {line}"),
                "give every route a unique name",
            );
        }
        let cluster = clusters.get(r.cluster.get_ref()).copied();
        if cluster.is_none() {
            let known = if cluster_names.is_empty() {
                "none are declared".to_owned()
            } else {
                cluster_names.join(", ")
            };
            issues.at(
                r.cluster.span(),
                format!(
                    "route `{name}` names unknown cluster `{}`",
                    r.cluster.get_ref()
                ),
                format!(
                    "declare [clusters.{}] or use a declared cluster ({known})",
                    r.cluster.get_ref()
                ),
            );
        }
        let matcher = route_match(r, issues);
        let rw = rewrite(r, &matcher, issues);
        if let Some((earlier, line)) = out.iter().find(|(o, _)| o.matcher.covers(&matcher)) {
            issues.at(
                span.clone(),
                format!("route `{name}` can never match: route `{}` (line {line}) is declared earlier and matches every request it would", earlier.name),
                format!("move route `{name}` above route `{}`, or narrow route `{}`", earlier.name, earlier.name),
            );
        }
        let line = line_col(text, span.start).0;
        out.push((
            RouteSpec {
                name: name.clone(),
                cluster: cluster.unwrap_or(0),
                matcher,
                rewrite: rw,
            },
            line,
        ));
    }
    out.into_iter().map(|(r, _)| r).collect()
}
