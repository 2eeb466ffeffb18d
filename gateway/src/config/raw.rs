//! The TOML shapes of the config file, as written by people. Unknown keys are rejected;
//! values that need a location in error messages are `Spanned`.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConfig {
    #[serde(default)]
    pub(crate) server: RawServer,
    pub(crate) admin: Option<RawAdmin>,
    #[serde(default)]
    pub(crate) access_log: RawAccessLog,
    #[serde(default)]
    pub(crate) listeners: Vec<Spanned<RawListener>>,
    #[serde(default)]
    pub(crate) clusters: BTreeMap<Spanned<String>, Spanned<RawCluster>>,
    #[serde(default)]
    pub(crate) routes: Vec<Spanned<RawRoute>>,
    /// Global filters, run before every route's own.
    #[serde(default)]
    pub(crate) filters: Vec<Spanned<RawFilter>>,
    /// Discovery sources (`[discovery.consul]`).
    #[serde(default)]
    pub(crate) discovery: RawDiscovery,
    /// Reload sources (`[reload]`).
    #[serde(default)]
    pub(crate) reload: RawReload,
    /// Edge protection for every listener (`[http]`).
    #[serde(default)]
    pub(crate) http: RawHttp,
    /// The store of cluster-wide rate limits (`[redis]`).
    pub(crate) redis: Option<Spanned<RawRedis>>,
    /// The fleet of gateways sharing them (`[fleet]`).
    #[serde(default)]
    pub(crate) fleet: RawFleet,
    /// The gateway's own inbound limit and where request priorities come from (`[overload]`).
    pub(crate) overload: Option<Spanned<RawOverload>>,
    /// Automatic certificates (`[acme]`).
    pub(crate) acme: Option<Spanned<RawAcme>>,
}

/// `[acme]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAcme {
    pub(crate) directory: Spanned<String>,
    #[serde(default)]
    pub(crate) contact: Vec<Spanned<String>>,
    pub(crate) domains: Spanned<Vec<Spanned<String>>>,
    pub(crate) challenge: Option<Spanned<String>>,
    pub(crate) storage: Option<Spanned<String>>,
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) renew_before_days: Option<Spanned<i64>>,
    pub(crate) check_interval_s: Option<Spanned<i64>>,
}

/// `[overload]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOverload {
    pub(crate) max_in_flight: Option<Spanned<i64>>,
    pub(crate) queue_timeout_ms: Option<Spanned<i64>>,
    pub(crate) reserve_percent: Option<Spanned<i64>>,
    pub(crate) retry_after_seconds: Option<Spanned<i64>>,
    pub(crate) priority_header: Option<Spanned<String>>,
    pub(crate) priority_header_from: Option<Vec<Spanned<String>>>,
    pub(crate) priority_claim: Option<Spanned<String>>,
}

/// `[clusters.NAME.adaptive_concurrency]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdaptive {
    pub(crate) enabled: Option<bool>,
    pub(crate) initial_limit: Option<Spanned<i64>>,
    pub(crate) min_limit: Option<Spanned<i64>>,
    pub(crate) max_limit: Option<Spanned<i64>>,
    pub(crate) tolerance_percent: Option<Spanned<i64>>,
    pub(crate) backoff_percent: Option<Spanned<i64>>,
    pub(crate) window_ms: Option<Spanned<i64>>,
    pub(crate) min_samples: Option<Spanned<i64>>,
    pub(crate) min_rtt_window_ms: Option<Spanned<i64>>,
    pub(crate) queue_timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_queue: Option<Spanned<i64>>,
    pub(crate) reserve_percent: Option<Spanned<i64>>,
    pub(crate) drop_statuses: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(crate) load_report: Option<Spanned<String>>,
}

/// `[http]` (every listener) and `[listeners.http]` (one listener, over `[http]`): path
/// normalization, head limits, deadlines, connection caps and the client address.
#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHttp {
    pub(crate) normalize_path: Option<bool>,
    pub(crate) merge_slashes: Option<bool>,
    pub(crate) escaped_slashes: Option<Spanned<String>>,
    pub(crate) max_uri_bytes: Option<Spanned<i64>>,
    pub(crate) max_header_bytes: Option<Spanned<i64>>,
    pub(crate) max_headers_bytes: Option<Spanned<i64>>,
    pub(crate) max_headers: Option<Spanned<i64>>,
    pub(crate) max_response_headers_bytes: Option<Spanned<i64>>,
    pub(crate) max_response_headers: Option<Spanned<i64>>,
    pub(crate) request_header_timeout_ms: Option<Spanned<i64>>,
    pub(crate) idle_timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_connections: Option<Spanned<i64>>,
    pub(crate) max_connections_per_client: Option<Spanned<i64>>,
    pub(crate) trusted_proxies: Option<Vec<Spanned<String>>>,
    pub(crate) xff_trusted_hops: Option<Spanned<i64>>,
    pub(crate) forwarded_header: Option<Spanned<String>>,
    // HTTP/2, process-wide (only in `[http]`).
    pub(crate) h2_max_concurrent_streams: Option<Spanned<i64>>,
    pub(crate) h2_max_reset_streams: Option<Spanned<i64>>,
    pub(crate) h2_idle_timeout_ms: Option<Spanned<i64>>,
}

impl RawHttp {
    /// `self` (a listener's table) over `base` (`[http]`), key by key.
    pub(crate) fn over(&self, base: &RawHttp) -> RawHttp {
        macro_rules! pick {
            ($($f:ident),*) => { RawHttp { $($f: self.$f.clone().or_else(|| base.$f.clone()),)* } };
        }
        pick!(
            normalize_path,
            merge_slashes,
            escaped_slashes,
            max_uri_bytes,
            max_header_bytes,
            max_headers_bytes,
            max_headers,
            max_response_headers_bytes,
            max_response_headers,
            request_header_timeout_ms,
            idle_timeout_ms,
            max_connections,
            max_connections_per_client,
            trusted_proxies,
            xff_trusted_hops,
            forwarded_header,
            h2_max_concurrent_streams,
            h2_max_reset_streams,
            h2_idle_timeout_ms
        )
    }
}

/// `[reload]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawReload {
    pub(crate) watch_file: Option<bool>,
    pub(crate) debounce_ms: Option<Spanned<i64>>,
    pub(crate) sighup: Option<bool>,
    pub(crate) admin: Option<bool>,
    pub(crate) consul_kv: Option<Spanned<String>>,
    pub(crate) history: Option<Spanned<i64>>,
}

/// `[discovery]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawDiscovery {
    pub(crate) consul: Option<Spanned<RawConsul>>,
}

/// `[discovery.consul]`: the agent and how watches behave.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawConsul {
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) token: Option<Spanned<String>>,
    pub(crate) datacenter: Option<Spanned<String>>,
    pub(crate) wait_ms: Option<Spanned<i64>>,
    pub(crate) max_queries_per_second: Option<Spanned<f64>>,
    pub(crate) burst: Option<Spanned<i64>>,
    pub(crate) retry_base_ms: Option<Spanned<i64>>,
    pub(crate) retry_max_ms: Option<Spanned<i64>>,
}

/// `[clusters.NAME.consul]`: the Consul service whose passing instances are the endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClusterConsul {
    pub(crate) service: Spanned<String>,
    #[serde(default)]
    pub(crate) tags: Vec<String>,
    #[serde(default)]
    pub(crate) meta: BTreeMap<String, String>,
    pub(crate) filter: Option<String>,
    pub(crate) datacenter: Option<String>,
}

/// One `[[filters]]` / `[[routes.filters]]` entry: `filter = "NAME"` plus the filter's own
/// settings, kept with their positions so a bad setting is reported at its line.
pub(crate) type RawFilter = BTreeMap<Spanned<String>, Spanned<toml::Value>>;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawServer {
    pub(crate) threads: Option<Spanned<i64>>,
    pub(crate) work_stealing: Option<bool>,
    pub(crate) grace_period_seconds: Option<Spanned<i64>>,
    pub(crate) graceful_shutdown_timeout_seconds: Option<Spanned<i64>>,
    pub(crate) upstream_keepalive_pool_size: Option<Spanned<i64>>,
    pub(crate) via: Option<Spanned<String>>,
    pub(crate) preserve_header_case: Option<bool>,
    pub(crate) upgrade_sock: Option<Spanned<String>>,
    pub(crate) pid_file: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAdmin {
    pub(crate) address: Option<Spanned<String>>,
    /// Bearer token for the admin API (`${env:VAR}` / `${file:PATH}` references).
    pub(crate) token: Option<Spanned<String>>,
    /// A read-only listener for `/metrics`, `/healthz`, `/readyz` and `/hystrix.stream`.
    pub(crate) status_address: Option<Spanned<String>>,
    /// Host names (besides IP literals and `localhost`) the admin API answers to.
    pub(crate) allowed_hosts: Option<Vec<Spanned<String>>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAccessLog {
    pub(crate) enabled: Option<bool>,
    pub(crate) format: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawListener {
    pub(crate) name: Option<Spanned<String>>,
    pub(crate) address: Spanned<String>,
    #[serde(default)]
    pub(crate) h2c: bool,
    pub(crate) tls: Option<RawTls>,
    /// Every connection starts with a PROXY protocol v1/v2 header (an L4 balancer in front).
    #[serde(default)]
    pub(crate) proxy_protocol: bool,
    /// This listener's own `[http]` settings.
    pub(crate) http: Option<Spanned<RawHttp>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTls {
    /// The default certificate.
    pub(crate) cert: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
    /// More certificates, chosen by SNI.
    #[serde(default)]
    pub(crate) certificates: Vec<Spanned<RawCertPair>>,
    /// Serve the `[acme]` certificate too.
    #[serde(default)]
    pub(crate) acme: bool,
    pub(crate) min_version: Option<Spanned<String>>,
    pub(crate) ciphers: Option<Spanned<String>>,
    pub(crate) session_resumption: Option<bool>,
    pub(crate) client_auth: Option<Spanned<RawClientAuth>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawUpstreamTls {
    pub(crate) sni: Option<Spanned<String>>,
    pub(crate) verify: Option<bool>,
    pub(crate) ca: Option<Spanned<String>>,
    pub(crate) cert: Option<Spanned<String>>,
    pub(crate) key: Option<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCertPair {
    pub(crate) cert: Spanned<String>,
    pub(crate) key: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawClientAuth {
    pub(crate) mode: Spanned<String>,
    pub(crate) ca: Spanned<String>,
    pub(crate) forward: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[serde(default)]
    /// `"IP:PORT"` strings or `{ address, weight }` tables, interpreted in validation so that
    /// a bad entry gets a specific message rather than serde's "no variant matched".
    pub(crate) endpoints: Vec<Spanned<toml::Value>>,
    /// Endpoints from Consul instead of `endpoints`.
    pub(crate) consul: Option<Spanned<RawClusterConsul>>,
    pub(crate) load_balancing: Option<Spanned<String>>,
    pub(crate) hash_key: Option<Spanned<String>>,
    pub(crate) protocol: Option<Spanned<String>>,
    /// TLS to the endpoints (`protocol = "https"` or `"h2"`).
    pub(crate) tls: Option<Spanned<RawUpstreamTls>>,
    pub(crate) connect_timeout_ms: Option<Spanned<i64>>,
    pub(crate) read_timeout_ms: Option<Spanned<i64>>,
    pub(crate) write_timeout_ms: Option<Spanned<i64>>,
    pub(crate) idle_timeout_ms: Option<Spanned<i64>>,
    pub(crate) max_h2_streams: Option<Spanned<i64>>,
    pub(crate) per_try_timeout_ms: Option<Spanned<i64>>,
    pub(crate) timeout_ms: Option<Spanned<i64>>,
    pub(crate) circuit_breaker: Option<Spanned<RawBreaker>>,
    pub(crate) bulkhead: Option<Spanned<RawBulkhead>>,
    pub(crate) adaptive_concurrency: Option<Spanned<RawAdaptive>>,
    pub(crate) retry: Option<Spanned<RawRetry>>,
    pub(crate) outlier_detection: Option<Spanned<RawOutlier>>,
}

/// `[clusters.NAME.circuit_breaker]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBreaker {
    pub(crate) enabled: Option<bool>,
    pub(crate) mode: Option<Spanned<String>>,
    pub(crate) window_ms: Option<Spanned<i64>>,
    pub(crate) buckets: Option<Spanned<i64>>,
    pub(crate) volume_threshold: Option<Spanned<i64>>,
    pub(crate) error_percent: Option<Spanned<i64>>,
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) sleep_window_ms: Option<Spanned<i64>>,
    pub(crate) failure_statuses: Option<Spanned<Vec<Spanned<toml::Value>>>>,
}

/// `[clusters.NAME.bulkhead]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawBulkhead {
    pub(crate) max_concurrent: Option<Spanned<i64>>,
    pub(crate) max_queue: Option<Spanned<i64>>,
    pub(crate) queue_timeout_ms: Option<Spanned<i64>>,
}

/// `[clusters.NAME.retry]` and `[routes.retry]` (the budget keys only on clusters).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRetry {
    pub(crate) retries: Option<Spanned<i64>>,
    pub(crate) on: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(crate) non_idempotent: Option<bool>,
    pub(crate) budget_percent: Option<Spanned<i64>>,
    pub(crate) budget_min_per_second: Option<Spanned<i64>>,
}

/// `[clusters.NAME.outlier_detection]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawOutlier {
    pub(crate) enabled: Option<bool>,
    pub(crate) consecutive_failures: Option<Spanned<i64>>,
    pub(crate) base_ejection_ms: Option<Spanned<i64>>,
    pub(crate) max_ejection_ms: Option<Spanned<i64>>,
    pub(crate) max_ejection_percent: Option<Spanned<i64>>,
}

/// `[routes.fallback]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFallback {
    pub(crate) on: Option<Spanned<Vec<Spanned<toml::Value>>>>,
    pub(crate) cluster: Option<Spanned<String>>,
    pub(crate) last_good: Option<Spanned<RawLastGood>>,
    pub(crate) response: Option<Spanned<RawStaticResponse>>,
}

/// `[routes.fallback.last_good]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawLastGood {
    pub(crate) max_age_ms: Option<Spanned<i64>>,
    pub(crate) max_entries: Option<Spanned<i64>>,
    pub(crate) max_bytes: Option<Spanned<i64>>,
    pub(crate) max_body_bytes: Option<Spanned<i64>>,
}

/// `[routes.fallback.response]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawStaticResponse {
    pub(crate) status: Option<Spanned<i64>>,
    #[serde(default)]
    pub(crate) headers: BTreeMap<String, String>,
    #[serde(default)]
    pub(crate) body: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRoute {
    pub(crate) name: Spanned<String>,
    pub(crate) cluster: Spanned<String>,
    pub(crate) host: Option<Spanned<String>>,
    pub(crate) path_exact: Option<Spanned<String>>,
    pub(crate) path_prefix: Option<Spanned<String>>,
    pub(crate) path_template: Option<Spanned<String>>,
    pub(crate) methods: Option<Spanned<Vec<String>>>,
    #[serde(default)]
    pub(crate) headers: Vec<Spanned<RawHeaderMatch>>,
    pub(crate) prefix_rewrite: Option<Spanned<String>>,
    pub(crate) rewrite: Option<Spanned<String>>,
    #[serde(default)]
    pub(crate) filters: Vec<Spanned<RawFilter>>,
    pub(crate) timeout_ms: Option<Spanned<i64>>,
    pub(crate) per_try_timeout_ms: Option<Spanned<i64>>,
    pub(crate) retry: Option<Spanned<RawRetry>>,
    pub(crate) fallback: Option<Spanned<RawFallback>>,
    /// `"critical"`, `"degraded"`, `"non_critical"` or a score 0-100.
    pub(crate) priority: Option<Spanned<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawHeaderMatch {
    pub(crate) name: String,
    pub(crate) value: Option<String>,
}

/// `[redis]`: the store of cluster-wide rate limits.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawRedis {
    pub(crate) address: Option<Spanned<String>>,
    pub(crate) timeout_ms: Option<Spanned<i64>>,
    pub(crate) sync_interval_ms: Option<Spanned<i64>>,
    pub(crate) failures_to_open: Option<Spanned<i64>>,
    pub(crate) retry_after_ms: Option<Spanned<i64>>,
}

/// `[fleet]`: how many gateways share the cluster-wide limits.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawFleet {
    pub(crate) size: Option<Spanned<i64>>,
    pub(crate) register: Option<bool>,
    pub(crate) service: Option<Spanned<String>>,
}
