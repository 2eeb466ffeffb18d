//! Gateway configuration: loaded from TOML once, validated into typed values, and never parsed
//! again on the request path. Every problem is reported with the file, line and a fix.

mod error;
mod policy;
mod raw;
pub(crate) mod secrets;
mod validate;

pub(crate) use secrets::redact;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub(crate) use error::ConfigError;
#[cfg(test)]
pub(crate) use policy::OutlierSettings;
pub(crate) use policy::{
    ClusterPolicy, FallbackSpec, LastGoodSettings, RoutePolicy, StaticResponse,
};

use discovery::Endpoint;
use filters::{FilterRegistry, NamedFilter};
use http::HeaderName;

use crate::router::{Rewrite, RouteMatch};

/// A complete, validated gateway configuration.
#[derive(Debug, Clone)]
pub(crate) struct Config {
    /// Process-wide settings.
    pub server: ServerSettings,
    /// The admin listener.
    pub admin: AdminSettings,
    /// Access log settings.
    pub access_log: AccessLogSettings,
    /// Client-facing listeners (at least one).
    pub listeners: Vec<ListenerSpec>,
    /// Upstream clusters by declaration order (names are unique).
    pub clusters: Vec<ClusterSpec>,
    /// Routes in match order (names are unique; each names a declared cluster).
    pub routes: Vec<RouteSpec>,
    /// Global filters, built for this config version; they run before each route's own.
    pub filters: Vec<NamedFilter>,
    /// How to reach Consul: set when `[discovery.consul]` is present or a cluster uses Consul.
    pub consul: Option<discovery::consul::ConsulConfig>,
    /// Which reload sources are active (`[reload]`).
    pub reload: ReloadSettings,
    /// HTTP/2 server settings of every listener (`[http]`).
    pub h2: crate::edge::H2Settings,
    /// The store of cluster-wide rate limits (`[redis]`), if any.
    pub redis: Option<RedisConfig>,
    /// The fleet sharing them (`[fleet]`).
    pub fleet: FleetSettings,
    /// The inbound limit and the sources of request priority (`[overload]`).
    pub overload: OverloadSettings,
    /// Automatic certificates (`[acme]`).
    pub acme: Option<AcmeSettings>,
}

/// `[acme]`: a certificate obtained and renewed from an ACME (RFC 8555) CA.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AcmeSettings {
    /// The CA's directory URL.
    pub directory: String,
    /// Account contacts (`mailto:` URLs).
    pub contact: Vec<String>,
    /// The names of the one certificate it keeps.
    pub domains: Vec<String>,
    /// How the CA validates the names.
    pub challenge: AcmeChallenge,
    /// Where the account and the certificate are kept.
    pub storage: PathBuf,
    /// A PEM root to trust for the directory's HTTPS (a private or test CA).
    pub ca: Option<PathBuf>,
    /// Renew when the certificate has less than this left.
    pub renew_before: Duration,
    /// How often the certificate's age is checked.
    pub check_interval: Duration,
}

/// An ACME challenge type the gateway answers on its own listeners.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum AcmeChallenge {
    /// `GET /.well-known/acme-challenge/TOKEN` on a plain listener.
    Http01,
    /// A self-signed certificate over ALPN `acme-tls/1` on a TLS listener (RFC 8737).
    TlsAlpn01,
}

/// `[overload]`: the gateway's own inbound limit and where request priorities come from.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct OverloadSettings {
    /// The inbound limit on requests in flight through the gateway (`None`: none).
    pub inbound: Option<resilience::LimiterConfig>,
    /// `Retry-After` on shed answers, in seconds.
    pub retry_after_seconds: u32,
    /// A request header that sets the priority, and the client networks it is believed from.
    pub priority_header: Option<(http::HeaderName, Vec<ipnet::IpNet>)>,
    /// A JWT claim that sets the priority.
    pub priority_claim: Option<String>,
}

impl Default for OverloadSettings {
    fn default() -> Self {
        Self {
            inbound: None,
            retry_after_seconds: 1,
            priority_header: None,
            priority_claim: None,
        }
    }
}

/// `[redis]`: where cluster-wide rate limits keep their state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RedisConfig {
    /// Address, timeout and breaker of the store.
    pub settings: redis_store::RedisSettings,
    /// Longest time between two reconciliations of a limit with the store.
    pub sync_interval: Duration,
}

/// `[fleet]`: how many gateways share the cluster-wide limits.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct FleetSettings {
    /// The size when no membership is known (default 1).
    pub size: u32,
    /// Register this gateway in Consul under this service and count its passing instances.
    pub register: Option<String>,
}

/// `[reload]`: where new versions of the config may come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReloadSettings {
    /// Reload when the config file changes (editors that replace the file included).
    pub watch_file: bool,
    /// Quiet time after the last file change before reloading.
    pub debounce: Duration,
    /// Reload the file on SIGHUP.
    pub sighup: bool,
    /// Accept new config documents on the admin API (`POST /config`).
    pub admin: bool,
    /// Follow this Consul KV key (blocking queries); its value is a whole config document.
    pub consul_kv: Option<String>,
    /// Versions kept in memory for rollback.
    pub history: usize,
}

impl Default for ReloadSettings {
    fn default() -> Self {
        Self {
            watch_file: true,
            debounce: Duration::from_millis(250),
            sighup: true,
            admin: true,
            consul_kv: None,
            history: 10,
        }
    }
}

/// Process-wide settings (`[server]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ServerSettings {
    /// Worker threads per proxy service.
    pub threads: usize,
    /// Whether worker threads steal work from each other (default: when `threads > 1`).
    pub work_stealing: bool,
    /// Longest time SIGTERM waits for in-flight requests before exiting.
    pub grace_period: Duration,
    /// Time given to runtimes to stop after the grace period.
    pub graceful_shutdown_timeout: Duration,
    /// Idle upstream connections kept for reuse, across all clusters.
    pub upstream_keepalive_pool_size: usize,
    /// The pseudonym this gateway adds to `Via`.
    pub via: String,
    /// Whether HTTP/1 header names keep the case they arrived in when the gateway passes them
    /// on (requests upstream, responses to the client). Without it, standard names are written
    /// in title case and others in lowercase, as HAProxy and Envoy do by default.
    pub preserve_header_case: bool,
    /// The Unix socket through which a new process started with `--upgrade` takes over the
    /// listening sockets of this one (pingora's graceful upgrade).
    pub upgrade_sock: PathBuf,
    /// Where the process id is written at start (an upgrade signals the process found there).
    pub pid_file: Option<PathBuf>,
}

/// The admin listener (`[admin]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdminSettings {
    /// Where the admin API listens (loopback by default).
    pub address: SocketAddr,
    /// Bearer token every admin request but `/healthz` and `/readyz` must carry.
    pub token: Option<SecretString>,
    /// A read-only listener for `/metrics`, `/healthz`, `/readyz` and `/hystrix.stream`.
    pub status_address: Option<SocketAddr>,
    /// Host names the admin API answers to besides IP literals and `localhost`.
    pub allowed_hosts: Vec<String>,
}

/// A secret resolved at load: never printed by `Debug`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct SecretString(String);

impl SecretString {
    /// Wraps a secret value.
    pub(crate) fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for comparison.
    pub(crate) fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretString {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretString(<redacted>)")
    }
}

/// Access-log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LogFormat {
    /// One JSON object per line.
    Json,
    /// `key=value` text.
    Text,
}

/// `[access_log]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AccessLogSettings {
    /// Whether a line is written per request.
    pub enabled: bool,
    /// Line format.
    pub format: LogFormat,
}

/// A client-facing listener (`[[listeners]]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerSpec {
    /// Name for logs.
    pub name: String,
    /// Bind address.
    pub address: SocketAddr,
    /// Accept HTTP/2 with prior knowledge on this plain-text listener (gRPC clients).
    pub h2c: bool,
    /// TLS (certificates by SNI, client certificates, versions); HTTP/2 is offered via ALPN
    /// when set.
    pub tls: Option<ListenerTls>,
    /// Path normalization, limits, deadlines, caps, client address (`[http]` and
    /// `[listeners.http]`).
    pub edge: crate::edge::ListenerEdge,
}

/// A TLS listener's settings (`[listeners.tls]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerTls {
    /// Certificate files: the first is the default (for clients without SNI or with an
    /// unknown name); the others are chosen by the names they cover.
    pub certificates: Vec<crate::tls::PairFiles>,
    /// Also serve the certificate `[acme]` obtains.
    pub acme: bool,
    /// Lowest TLS version accepted.
    pub min_version: TlsVersion,
    /// TLS 1.2 cipher list (OpenSSL syntax); `None`: Mozilla's intermediate list.
    pub ciphers: Option<String>,
    /// Session resumption (tickets and the session cache).
    pub session_resumption: bool,
    /// Client certificates (mutual TLS).
    pub client_auth: Option<ClientAuthSpec>,
}

impl ListenerTls {
    /// Settings fixed when the listener is built (a restart changes them): versions,
    /// ciphers, resumption, and whether it serves the ACME certificate.
    pub(crate) fn socket_settings(&self) -> (TlsVersion, Option<&str>, bool, bool) {
        (
            self.min_version,
            self.ciphers.as_deref(),
            self.session_resumption,
            self.acme,
        )
    }
}

/// A TLS protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TlsVersion {
    /// TLS 1.2.
    V1_2,
    /// TLS 1.3.
    V1_3,
}

/// Client certificates on a listener.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClientAuthSpec {
    /// Refuse handshakes without a certificate (`required`), or accept them (`optional`);
    /// a certificate that is presented must always verify.
    pub required: bool,
    /// PEM bundle of the CAs client certificates must chain to.
    pub ca: PathBuf,
    /// Whether the verified identity goes upstream in `X-Forwarded-Client-Cert` (it is
    /// always removed from what clients send).
    pub forward: bool,
}

/// How a cluster chooses an endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadBalancing {
    /// Power of two random choices, least outstanding requests (weighted).
    LeastRequest,
    /// Weighted round robin.
    RoundRobin,
    /// Ketama consistent hashing of a request key.
    ConsistentHash(HashKey),
}

/// The request value a consistent-hash cluster hashes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HashKey {
    /// A request header (falls back to the client address when absent).
    Header(HeaderName),
    /// A cookie (falls back to the client address when absent).
    Cookie(String),
    /// A query parameter (falls back to the client address when absent).
    Query(String),
    /// The client's IP address.
    ClientIp,
    /// The request path.
    Path,
}

/// Protocol spoken to a cluster's endpoints.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum UpstreamProtocol {
    /// HTTP/1.1 with keep-alive.
    Http1,
    /// HTTP/2 over plain TCP with prior knowledge (gRPC backends).
    H2c,
    /// TLS; HTTP/2 or HTTP/1.1 as ALPN settles.
    Https,
    /// TLS with HTTP/2 only (gRPC over TLS).
    H2,
}

/// Per-cluster timeouts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ClusterTimeouts {
    /// TCP connect.
    pub connect: Duration,
    /// Longest wait for any read from the upstream (idle time between bytes).
    pub read: Duration,
    /// Longest wait for any write to the upstream.
    pub write: Duration,
    /// How long an idle pooled connection is kept.
    pub idle: Duration,
}

/// Where a cluster's endpoints come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum EndpointSource {
    /// Listed in the config file.
    Static(Vec<Endpoint>),
    /// The passing instances of a Consul service (optionally a tag/meta subset).
    Consul(discovery::Query),
}

/// An upstream cluster (`[clusters.NAME]`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClusterSpec {
    /// Unique name.
    pub name: String,
    /// Where endpoints come from.
    pub endpoints: EndpointSource,
    /// Endpoint choice.
    pub load_balancing: LoadBalancing,
    /// Protocol to endpoints.
    pub protocol: UpstreamProtocol,
    /// TLS to the endpoints (`https` and `h2`).
    pub tls: Option<crate::tls::upstream::UpstreamTls>,
    /// Timeouts.
    pub timeouts: ClusterTimeouts,
    /// Concurrent streams per HTTP/2 upstream connection.
    pub max_h2_streams: usize,
    /// Breaker, bulkhead, retries, outlier ejection, timeouts.
    pub policy: ClusterPolicy,
}

/// A route (`[[routes]]`).
#[derive(Debug, Clone)]
pub(crate) struct RouteSpec {
    /// Unique name.
    pub name: String,
    /// Index into [`Config::clusters`].
    pub cluster: usize,
    /// Conditions.
    pub matcher: RouteMatch,
    /// Path rewrite, if any.
    pub rewrite: Option<Rewrite>,
    /// The route's own filters, built for this config version, in declared order.
    pub filters: Vec<NamedFilter>,
    /// Overrides of the cluster's timeouts and retries, and the fallback.
    pub policy: RoutePolicy,
}

impl Config {
    /// Reads and validates a config file; filter names resolve in `registry`.
    pub(crate) fn load_with(path: &Path, registry: &FilterRegistry) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError::io(path, &e))?;
        Self::parse_with(&text, path, registry)
    }

    /// Validates a config document with the built-in filters; `source_name` names it in
    /// errors, and relative file paths (TLS, keys) are resolved against its directory.
    #[cfg(test)]
    pub(crate) fn parse(text: &str, source_name: &Path) -> Result<Self, ConfigError> {
        Self::parse_with(text, source_name, &FilterRegistry::with_builtins())
    }

    /// Validates a config document; filters are built by the factories in `registry`.
    pub(crate) fn parse_with(
        text: &str,
        source_name: &Path,
        registry: &FilterRegistry,
    ) -> Result<Self, ConfigError> {
        validate::validate(text, source_name, registry)
    }

    /// Settings that are valid but unsafe at an edge, for `gateway check` and the start log.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.admin.address.ip().is_loopback() && self.admin.token.is_none() {
            out.push(format!(
                "the admin API listens on {}, which is not loopback, and has no token: anyone who \
                 reaches it can replace the configuration; set [admin] token = \"${{env:GATEWAY_ADMIN_TOKEN}}\" \
                 or listen on 127.0.0.1",
                self.admin.address
            ));
        }
        out.extend(crate::tls::expiring(self, Duration::from_secs(14 * 86_400)));
        for c in &self.clusters {
            if let Some(t) = c.tls.as_ref().filter(|t| !t.verify) {
                out.push(format!(
                    "cluster `{}` does not verify its origins' TLS certificates (tls.verify = \
                     false): anyone on the path can impersonate `{}`; give its CA in tls.ca instead",
                    c.name, t.sni
                ));
            }
        }
        for l in &self.listeners {
            if !l.edge.paths.normalize {
                out.push(format!(
                    "listener `{}` routes on the raw path (normalize_path = false): a route \
                     boundary can be crossed with `..` or percent-encoding",
                    l.name
                ));
            }
        }
        out
    }

    /// The cluster a route sends to.
    #[cfg(test)]
    pub(crate) fn route_cluster(&self, route: &RouteSpec) -> &ClusterSpec {
        // invariant: validation only accepts routes whose cluster index exists.
        &self.clusters[route.cluster]
    }
}

#[cfg(test)]
mod tests;
