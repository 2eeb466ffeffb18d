//! Turns the raw TOML shapes into a typed [`Config`], collecting every problem.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use http::HeaderValue;
use toml::Spanned;

mod cluster;
mod edge;
mod filters;
mod fleet;
mod overload;
mod policy;
mod routes;
mod tls;

use super::error::{line_col, ConfigError, ConfigIssue, Issues};
use super::raw::{RawConfig, RawListener};
use super::*;
use cluster::cluster_spec;
use routes::routes;

pub(super) fn validate(
    text: &str,
    source_name: &Path,
    registry: &::filters::FilterRegistry,
) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| syntax_error(text, source_name, &e))?;
    let base_dir = source_name.parent().unwrap_or_else(|| Path::new("."));
    let mut issues = Issues::new(text);

    let server = server_settings(&raw, base_dir, &mut issues);
    let admin = edge::admin_settings(raw.admin.as_ref(), base_dir, &mut issues);
    let access_log = access_log(&raw, &mut issues);
    let listeners = listeners(&raw, admin.address, base_dir, &mut issues);
    let global_edge = edge::listener_edge(&raw.http, false, &mut issues);
    let h2 = edge::h2_settings(&raw.http, &global_edge, &mut issues);
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
        if let Some(spec) = cluster_spec(name, cluster, base_dir, &mut issues) {
            cluster_index.insert(spec.name.clone(), clusters.len());
            clusters.push(spec);
        }
    }
    let names: Vec<&str> = raw.clusters.keys().map(|k| k.get_ref().as_str()).collect();
    let redis = fleet::redis(&raw, base_dir, &mut issues);
    let fleet = fleet::fleet(&raw, &mut issues);
    // The filters see the store and the fleet this config names (cluster-wide limits).
    let mut registry = registry.clone();
    registry.set_services(crate::fleet::services(redis.as_ref(), &fleet));
    let registry = &registry;
    let global = filters::filter_list(&raw.filters, "global", registry, base_dir, &mut issues);
    let routes = routes(
        &raw.routes,
        &routes::Context {
            clusters: &cluster_index,
            specs: &clusters,
            cluster_names: &names,
            text,
            registry,
            base_dir,
        },
        &mut issues,
    );

    let uses_consul = clusters
        .iter()
        .any(|c| matches!(c.endpoints, EndpointSource::Consul(_)));
    let reload = reload_settings(&raw, &mut issues);
    let overload = overload::overload(&raw, &mut issues);
    let acme = tls::acme(&raw, base_dir, &mut issues);
    let consul = consul_settings(
        &raw,
        uses_consul || reload.consul_kv.is_some() || fleet.register.is_some(),
        base_dir,
        &mut issues,
    );

    if !issues.is_empty() {
        return Err(issues.into_error(source_name));
    }
    Ok(Config {
        consul,
        reload,
        server,
        admin,
        access_log,
        listeners,
        clusters,
        routes,
        filters: global,
        h2,
        redis,
        fleet,
        overload,
        acme,
    })
}

fn reload_settings(raw: &RawConfig, issues: &mut Issues<'_>) -> ReloadSettings {
    let r = &raw.reload;
    let d = ReloadSettings::default();
    let consul_kv = r.consul_kv.as_ref().and_then(|k| {
        let key = k.get_ref().trim().trim_matches('/');
        let ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c));
        if !ok {
            issues.at(
                k.span(),
                format!("consul_kv `{}` is not a usable KV key", k.get_ref()),
                "use a path of letters, digits, `-`, `_`, `.` and `/`, e.g. \"gateway/config\"",
            );
        }
        ok.then(|| key.to_owned())
    });
    ReloadSettings {
        watch_file: r.watch_file.unwrap_or(d.watch_file),
        debounce: ms(&r.debounce_ms, "debounce_ms", 250, issues),
        sighup: r.sighup.unwrap_or(d.sighup),
        admin: r.admin.unwrap_or(d.admin),
        consul_kv,
        history: ranged(&r.history, "history", 1, 1000, 10, issues).unsigned_abs() as usize,
    }
}

/// `[discovery.consul]`, over `CONSUL_HTTP_ADDR` / `CONSUL_HTTP_TOKEN` and the defaults;
/// `None` when no cluster uses Consul and the section is absent.
fn consul_settings(
    raw: &RawConfig,
    used: bool,
    base_dir: &Path,
    issues: &mut Issues<'_>,
) -> Option<discovery::consul::ConsulConfig> {
    use discovery::consul::{parse_address, ConsulConfig};
    let section = raw.discovery.consul.as_ref();
    if section.is_none() && !used {
        return None;
    }
    let mut config = match ConsulConfig::from_env() {
        Ok(c) => c,
        Err(e) => {
            if section.and_then(|s| s.get_ref().address.as_ref()).is_none() {
                issues.at(
                    section.map_or(0..0, |s| s.span()),
                    format!("CONSUL_HTTP_ADDR: {e}"),
                    "set CONSUL_HTTP_ADDR to host:port, or address = \"host:port\" in [discovery.consul]",
                );
            }
            ConsulConfig::default()
        }
    };
    let Some(section) = section else {
        return Some(config);
    };
    let c = section.get_ref();
    if let Some(a) = &c.address {
        match parse_address(a.get_ref()) {
            Ok(address) => config.address = address,
            Err(e) => issues.at(a.span(), e.to_string(), "write it as \"127.0.0.1:8500\""),
        }
    }
    if let Some(t) = &c.token {
        match crate::config::secrets::resolve(t.get_ref(), base_dir) {
            Ok(v) if v.trim().is_empty() => issues.at(
                t.span(),
                "the Consul token is empty",
                "remove token (CONSUL_HTTP_TOKEN is used then) or set the ACL token",
            ),
            Ok(v) => config.token = Some(v.trim().to_owned()),
            Err(e) => issues.at(
                t.span(),
                format!("Consul token: {e}"),
                "set the variable or create the file, or remove token (CONSUL_HTTP_TOKEN is used then)",
            ),
        }
    }
    if let Some(dc) = &c.datacenter {
        config.datacenter = Some(dc.get_ref().clone());
    }
    config.wait = ms(&c.wait_ms, "wait_ms", 60_000, issues).min(Duration::from_secs(600));
    if c.wait_ms.as_ref().is_some_and(|w| *w.get_ref() > 600_000) {
        if let Some(w) = &c.wait_ms {
            issues.at(
                w.span(),
                "wait_ms is over Consul's limit of 10 minutes",
                "use at most 600000",
            );
        }
    }
    if let Some(q) = &c.max_queries_per_second {
        if q.get_ref().is_finite() && (0.1..=1000.0).contains(q.get_ref()) {
            config.max_queries_per_second = *q.get_ref();
        } else {
            issues.at(
                q.span(),
                format!("max_queries_per_second = {} is out of range", q.get_ref()),
                "use a value from 0.1 to 1000",
            );
        }
    }
    config.burst = ranged(&c.burst, "burst", 1, 1000, 10, issues).unsigned_abs() as u32;
    config.retry_base = ms(&c.retry_base_ms, "retry_base_ms", 250, issues);
    config.retry_max = ms(&c.retry_max_ms, "retry_max_ms", 10_000, issues);
    if config.retry_max < config.retry_base {
        issues.at(
            section.span(),
            "retry_max_ms is shorter than retry_base_ms",
            "make retry_max_ms at least retry_base_ms",
        );
    }
    Some(config)
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

/// [`ranged`] for counts and sizes, which are never negative.
pub(super) fn count(
    v: &Option<Spanned<i64>>,
    key: &str,
    min: i64,
    max: i64,
    default: i64,
    issues: &mut Issues<'_>,
) -> u64 {
    ranged(v, key, min, max, default, issues).unsigned_abs()
}

pub(super) fn ranged(
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

/// Reads `key`, a list of addresses and networks (`"10.0.0.0/8"`, `"192.0.2.7"`), into
/// networks; an entry that is neither is an issue.
pub(super) fn networks(
    list: Option<&Vec<Spanned<String>>>,
    key: &str,
    issues: &mut Issues<'_>,
) -> Vec<ipnet::IpNet> {
    let mut out = Vec::new();
    for entry in list.into_iter().flatten() {
        let text = entry.get_ref().trim();
        match text
            .parse::<ipnet::IpNet>()
            .or_else(|_| text.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        {
            Ok(n) => out.push(n.trunc()),
            Err(_) => issues.at(
                entry.span(),
                format!("{key} entry `{text}` is not an IP address or CIDR"),
                "write addresses or networks such as \"10.0.0.0/8\" or \"192.0.2.7\"",
            ),
        }
    }
    out
}

pub(super) fn ms(
    v: &Option<Spanned<i64>>,
    key: &str,
    default: u64,
    issues: &mut Issues<'_>,
) -> Duration {
    let n = ranged(v, key, 1, 3_600_000, default as i64, issues);
    Duration::from_millis(n.unsigned_abs())
}

fn server_settings(raw: &RawConfig, base_dir: &Path, issues: &mut Issues<'_>) -> ServerSettings {
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
        preserve_header_case: s.preserve_header_case.unwrap_or(false),
        upgrade_sock: server_path(&s.upgrade_sock, "upgrade_sock", base_dir, issues)
            .unwrap_or_else(|| PathBuf::from(DEFAULT_UPGRADE_SOCK)),
        pid_file: server_path(&s.pid_file, "pid_file", base_dir, issues),
    }
}

/// Where `gateway run --upgrade` meets the running process when `[server] upgrade_sock` is
/// not set.
pub(crate) const DEFAULT_UPGRADE_SOCK: &str = "/tmp/gateway-upgrade.sock";

/// A `[server]` file path, relative to the config file's directory.
fn server_path(
    v: &Option<Spanned<String>>,
    key: &str,
    base_dir: &Path,
    issues: &mut Issues<'_>,
) -> Option<PathBuf> {
    let v = v.as_ref()?;
    let path = Path::new(v.get_ref());
    if v.get_ref().trim().is_empty() || v.get_ref().ends_with('/') {
        issues.at(
            v.span(),
            format!("{key} = {:?} is not a file path", v.get_ref()),
            "give a file path such as \"/run/gateway/gateway.sock\"",
        );
        return None;
    }
    Some(base_dir.join(path))
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
    config: &RawConfig,
    admin: SocketAddr,
    base: &Path,
    issues: &mut Issues<'_>,
) -> Vec<ListenerSpec> {
    let raw: &[Spanned<RawListener>] = &config.listeners;
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
        let tls = l
            .tls
            .as_ref()
            .and_then(|t| tls::listener_tls(t, config.acme.as_ref(), base, issues));
        let name = l
            .name
            .as_ref()
            .map_or_else(|| format!("listener-{i}"), |n| n.get_ref().clone());
        if let Some(h) = &l.http {
            edge::refuse_global_only(h, &name, issues);
        }
        let merged = match &l.http {
            Some(h) => h.get_ref().over(&config.http),
            None => config.http.clone(),
        };
        let edge = edge::listener_edge(&merged, l.proxy_protocol, issues);
        out.push(ListenerSpec {
            name,
            address,
            h2c: l.h2c,
            tls,
            edge,
        });
    }
    out
}
