//! Validation of `[clusters.NAME]`: endpoints, balancing, protocol, timeouts.

use std::net::SocketAddr;

use discovery::{Endpoint, Query};
use http::HeaderName;
use toml::Spanned;

use super::{ms, ranged};
use crate::config::error::Issues;
use crate::config::raw::{RawCluster, RawClusterConsul};
use crate::config::{
    ClusterSpec, ClusterTimeouts, EndpointSource, HashKey, LoadBalancing, UpstreamProtocol,
};

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

/// `[clusters.NAME.consul]`: a query that Consul can answer.
fn consul_query(
    raw: &Spanned<RawClusterConsul>,
    cluster: &str,
    issues: &mut Issues<'_>,
) -> EndpointSource {
    let c = raw.get_ref();
    let query = Query {
        service: c.service.get_ref().clone(),
        tags: c.tags.clone(),
        meta: c.meta.clone(),
        filter: c.filter.clone().filter(|f| !f.trim().is_empty()),
        datacenter: c.datacenter.clone(),
    };
    if let Err(why) = discovery::consul::check_query(&query) {
        issues.at(
            if why.contains("service name") {
                c.service.span()
            } else {
                raw.span()
            },
            format!("cluster `{cluster}`: {why}"),
            "use the name as registered in Consul; narrow by tags, meta or filter",
        );
    }
    EndpointSource::Consul(query)
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

pub(super) fn cluster_spec(
    name: &Spanned<String>,
    c: &Spanned<RawCluster>,
    base: &std::path::Path,
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
    let endpoints = match &c.consul {
        Some(consul) if !c.endpoints.is_empty() => {
            issues.at(
                consul.span(),
                format!("cluster `{n}` has both endpoints and consul"),
                "keep one: static endpoints = [...] or [clusters.NAME.consul] service = \"NAME\"",
            );
            EndpointSource::Static(Vec::new())
        }
        Some(consul) => consul_query(consul, &n, issues),
        None => {
            if c.endpoints.is_empty() {
                issues.at(
                    span,
                    format!("cluster `{n}` has no endpoints"),
                    "add endpoints = [\"IP:PORT\", ...] or consul = { service = \"NAME\" }",
                );
            }
            EndpointSource::Static(
                c.endpoints
                    .iter()
                    .filter_map(|e| endpoint(e, &n, issues))
                    .collect(),
            )
        }
    };
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
        Some(("https", _)) => UpstreamProtocol::Https,
        Some(("h2", _)) => UpstreamProtocol::H2,
        Some((other, s)) => {
            issues.at(
                s,
                format!("protocol `{other}` is unknown"),
                "use \"http1\" (default), \"h2c\" (HTTP/2 prior knowledge, for gRPC), \"https\" (TLS, HTTP/2 or 1.1 by ALPN) or \"h2\" (TLS, HTTP/2 only: gRPC over TLS)",
            );
            UpstreamProtocol::Http1
        }
    };
    let tls = super::tls::upstream_tls(&n, c, protocol, base, issues);
    let timeouts = ClusterTimeouts {
        connect: ms(&c.connect_timeout_ms, "connect_timeout_ms", 1_000, issues),
        read: ms(&c.read_timeout_ms, "read_timeout_ms", 30_000, issues),
        write: ms(&c.write_timeout_ms, "write_timeout_ms", 30_000, issues),
        idle: ms(&c.idle_timeout_ms, "idle_timeout_ms", 60_000, issues),
    };
    let max_h2_streams =
        ranged(&c.max_h2_streams, "max_h2_streams", 1, 10_000, 100, issues).unsigned_abs() as usize;
    let policy = super::policy::cluster_policy(c, &n, timeouts.read, issues);
    Some(ClusterSpec {
        policy,
        name: n,
        endpoints,
        load_balancing,
        protocol,
        tls,
        timeouts,
        max_h2_streams,
    })
}
