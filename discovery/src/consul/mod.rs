//! Consul: health-aware discovery with blocking queries ([`ConsulDiscovery`]) and service
//! self-registration with the local agent ([`Consul::register`]), on a small client of our
//! own over hyper.
//!
//! Watches follow Consul's rules for blocking queries: the `X-Consul-Index` of each answer is
//! sent back as `index` with a `wait`; the HTTP timeout is longer than the wait plus Consul's
//! jitter (wait/16); an index that goes backwards restarts at 0 and an index of 0 is sent as
//! 1; an answer is compared with the last one, because a returned query does not mean a
//! change; and a token bucket limits the loop, so an agent that answers at once every time
//! cannot make it spin. While Consul is unreachable or failing, the last known endpoints stay
//! in use, the watch retries with exponential backoff and jitter, and [`SourceHealth`] says
//! since when the set is stale.

mod register;
mod watch;

pub use register::{Check, CheckStatus, Registration, Service};
pub use watch::{backoff, next_index, TokenBucket};

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;

use crate::{Discovery, DiscoveryError, Endpoint, Query, SourceHealth, Watch};

/// The agent address used when neither configuration nor `CONSUL_HTTP_ADDR` gives one.
pub const DEFAULT_ADDRESS: &str = "127.0.0.1:8500";

/// How to reach Consul and how watches behave. `Debug` never shows the token.
#[derive(Clone, PartialEq)]
pub struct ConsulConfig {
    /// The agent's HTTP address, `host:port`.
    pub address: String,
    /// ACL token sent as `X-Consul-Token`.
    pub token: Option<String>,
    /// Datacenter asked by watches whose query names none (the agent's own when `None`).
    pub datacenter: Option<String>,
    /// How long a blocking query may wait for a change (Consul caps it at 10 minutes).
    pub wait: Duration,
    /// Sustained rate of queries per watch (the token bucket's refill).
    pub max_queries_per_second: f64,
    /// Queries a watch may make in a burst (the token bucket's size).
    pub burst: u32,
    /// First retry delay after a failure; doubled per failure in a row, with jitter.
    pub retry_base: Duration,
    /// Longest retry delay.
    pub retry_max: Duration,
    /// Timeout of non-blocking calls (registration, deregistration, check updates).
    pub request_timeout: Duration,
}

impl std::fmt::Debug for ConsulConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsulConfig")
            .field("address", &self.address)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("datacenter", &self.datacenter)
            .field("wait", &self.wait)
            .field("max_queries_per_second", &self.max_queries_per_second)
            .field("burst", &self.burst)
            .field("retry_base", &self.retry_base)
            .field("retry_max", &self.retry_max)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

impl Default for ConsulConfig {
    fn default() -> Self {
        Self {
            address: DEFAULT_ADDRESS.to_owned(),
            token: None,
            datacenter: None,
            wait: Duration::from_secs(60),
            max_queries_per_second: 5.0,
            burst: 10,
            retry_base: Duration::from_millis(250),
            retry_max: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl ConsulConfig {
    /// Defaults, with the address from `CONSUL_HTTP_ADDR` and the token from
    /// `CONSUL_HTTP_TOKEN` when they are set.
    pub fn from_env() -> Result<Self, ConsulError> {
        let mut config = Self::default();
        if let Some(addr) = env("CONSUL_HTTP_ADDR") {
            config.address = parse_address(&addr)?;
        }
        config.token = env("CONSUL_HTTP_TOKEN");
        Ok(config)
    }

    /// Defaults with this agent address (`host:port` or `http://host:port`).
    pub fn with_address(address: &str) -> Result<Self, ConsulError> {
        Ok(Self {
            address: parse_address(address)?,
            ..Self::default()
        })
    }

    /// The HTTP timeout of a blocking query: its wait, plus Consul's jitter of up to wait/16,
    /// plus a margin for the answer to travel.
    pub fn blocking_timeout(&self) -> Duration {
        self.wait + self.wait / 16 + Duration::from_secs(5)
    }
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

/// Normalizes an agent address: `host:port`, `http://host:port` or `http://host:port/`.
pub fn parse_address(text: &str) -> Result<String, ConsulError> {
    let bad = |why: &'static str| ConsulError::Address {
        address: text.to_owned(),
        why,
    };
    let t = text.trim();
    if t.starts_with("https://") {
        return Err(bad(
            "https is not supported; point it at the local agent's plain HTTP port",
        ));
    }
    let rest = t.strip_prefix("http://").unwrap_or(t).trim_end_matches('/');
    if rest.contains("://") {
        return Err(bad("use host:port or http://host:port"));
    }
    if rest.contains('/') || rest.contains('?') {
        return Err(bad("the address may not have a path; use host:port"));
    }
    let (host, port) = rest
        .rsplit_once(':')
        .ok_or_else(|| bad("it has no :port"))?;
    if host.is_empty() {
        return Err(bad("it has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(rest.to_owned()),
        _ => Err(bad("the port is not a number from 1 to 65535")),
    }
}

/// What went wrong talking to Consul.
#[derive(Debug, thiserror::Error)]
pub enum ConsulError {
    /// The configured address cannot be used.
    #[error("Consul address `{address}` is not usable: {why}")]
    Address {
        /// The address as given.
        address: String,
        /// Why not.
        why: &'static str,
    },
    /// The request never got an answer.
    #[error("cannot reach Consul at {address}: {message}")]
    Unreachable {
        /// The agent address.
        address: String,
        /// The transport error.
        message: String,
    },
    /// No answer within the timeout.
    #[error("Consul at {address} did not answer {what} within {timeout:?}")]
    Timeout {
        /// The agent address.
        address: String,
        /// The call.
        what: String,
        /// The timeout.
        timeout: Duration,
    },
    /// Consul answered with an error status.
    #[error("Consul answered {status} to {what}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The call.
        what: String,
        /// Consul's explanation.
        body: String,
    },
    /// The answer could not be read.
    #[error("Consul's answer to {what} is not understood: {detail}")]
    Decode {
        /// The call.
        what: String,
        /// Why.
        detail: String,
    },
}

/// A Consul HTTP API client (agent and health endpoints), cheap to clone.
#[derive(Debug, Clone)]
pub struct Consul {
    config: ConsulConfig,
    http: Client<HttpConnector, Full<Bytes>>,
}

/// One answer of a call: status, headers, body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
}

impl Consul {
    /// A client for `config`. Connections are made when first needed.
    pub fn new(config: ConsulConfig) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_connect_timeout(Some(Duration::from_secs(2)));
        let http = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self { config, http }
    }

    /// A client configured from `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN`.
    pub fn from_env() -> Result<Self, ConsulError> {
        Ok(Self::new(ConsulConfig::from_env()?))
    }

    /// The client's configuration.
    pub fn config(&self) -> &ConsulConfig {
        &self.config
    }

    async fn call(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let answer = self
            .exchange(method.clone(), path_and_query, body, timeout)
            .await?;
        if !answer.status.is_success() {
            let what = format!(
                "{method} {}",
                path_and_query.split('?').next().unwrap_or("")
            );
            return Err(ConsulError::Status {
                status: answer.status.as_u16(),
                what,
                body: String::from_utf8_lossy(&answer.body).trim().to_owned(),
            });
        }
        Ok(answer)
    }

    /// One request, whatever the answer's status.
    async fn exchange(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Answer, ConsulError> {
        let what = format!(
            "{method} {}",
            path_and_query.split('?').next().unwrap_or("")
        );
        let uri = format!("http://{}{path_and_query}", self.config.address);
        let mut req = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.config.token {
            req = req.header("x-consul-token", token);
        }
        if body.is_some() {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ConsulError::Address {
                address: self.config.address.clone(),
                why: if e.is::<http::uri::InvalidUri>() {
                    "it does not form a valid URL"
                } else {
                    "the request cannot be built"
                },
            })?;
        let exchange = async {
            let resp = self
                .http
                .request(req)
                .await
                .map_err(|e| ConsulError::Unreachable {
                    address: self.config.address.clone(),
                    message: error_chain(&e),
                })?;
            let (parts, body) = resp.into_parts();
            let body = body
                .collect()
                .await
                .map_err(|e| ConsulError::Unreachable {
                    address: self.config.address.clone(),
                    message: error_chain(&e),
                })?
                .to_bytes();
            Ok(Answer {
                status: parts.status,
                headers: parts.headers,
                body,
            })
        };
        let answer = tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| ConsulError::Timeout {
                address: self.config.address.clone(),
                what,
                timeout,
            })??;
        Ok(answer)
    }

    /// One (blocking when `index > 0`) read of a KV key's raw value: `None` when the key does
    /// not exist. Returns the answer's `X-Consul-Index`.
    pub async fn kv_get(&self, key: &str, index: u64) -> Result<(Option<Bytes>, u64), ConsulError> {
        let query = {
            let mut q = form_urlencoded::Serializer::new(String::new());
            q.append_pair("raw", "true");
            if let Some(dc) = &self.config.datacenter {
                q.append_pair("dc", dc);
            }
            if index > 0 {
                q.append_pair("index", &index.to_string());
                q.append_pair("wait", &format!("{}ms", self.config.wait.as_millis()));
            }
            q.finish()
        };
        let timeout = if index > 0 {
            self.config.blocking_timeout()
        } else {
            self.config.request_timeout
        };
        let path = format!("/v1/kv/{}?{query}", key.trim_matches('/'));
        let answer = self.exchange(Method::GET, &path, None, timeout).await?;
        let answered = answer
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        match answer.status {
            s if s.is_success() => Ok((Some(answer.body), answered)),
            StatusCode::NOT_FOUND => Ok((None, answered)),
            s => Err(ConsulError::Status {
                status: s.as_u16(),
                what: format!("GET /v1/kv/{key}"),
                body: String::from_utf8_lossy(&answer.body).trim().to_owned(),
            }),
        }
    }

    /// One (blocking when `index > 0`) query of the passing instances `query` selects.
    /// Returns the endpoints and the answer's `X-Consul-Index` (0 when absent).
    pub async fn passing_instances(
        &self,
        query: &Query,
        index: u64,
    ) -> Result<(Vec<Endpoint>, u64), ConsulError> {
        let path = health_path(
            query,
            self.config.datacenter.as_deref(),
            index,
            self.config.wait,
        );
        let timeout = if index > 0 {
            self.config.blocking_timeout()
        } else {
            self.config.request_timeout
        };
        let answer = self.call(Method::GET, &path, None, timeout).await?;
        let index = answer
            .headers
            .get("x-consul-index")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        let entries: Vec<HealthEntry> =
            serde_json::from_slice(&answer.body).map_err(|e| ConsulError::Decode {
                what: format!("the health of service `{}`", query.service),
                detail: e.to_string(),
            })?;
        let mut endpoints = Vec::with_capacity(entries.len());
        for entry in entries {
            match entry.endpoint().await {
                Some(e) if query.selects(&e) => endpoints.push(e),
                Some(_) => {}
                None => tracing::warn!(
                    service = %query.service,
                    instance = %entry.service.id,
                    address = %entry.address(),
                    "Consul instance has an address that does not resolve; skipped"
                ),
            }
        }
        Ok((endpoints, index))
    }
}

/// The error and its sources, for one log line.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

/// Consul's filter language quotes strings like Go does.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        if c == '"' || c == '\\' {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    out
}

/// The `filter` expression for a query's tags, meta and own filter.
pub fn filter_expression(query: &Query) -> Option<String> {
    let mut parts: Vec<String> = query
        .tags
        .iter()
        .map(|t| format!("{} in Service.Tags", quote(t)))
        .collect();
    parts.extend(
        query
            .meta
            .iter()
            .map(|(k, v)| format!("Service.Meta.{k} == {}", quote(v))),
    );
    if let Some(f) = query.filter.as_deref().filter(|f| !f.trim().is_empty()) {
        parts.push(format!("({f})"));
    }
    (!parts.is_empty()).then(|| parts.join(" and "))
}

/// `/v1/health/service/NAME?passing=true[&dc=..][&filter=..][&index=..&wait=..]`.
fn health_path(query: &Query, default_dc: Option<&str>, index: u64, wait: Duration) -> String {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("passing", "true");
    if let Some(dc) = query.datacenter.as_deref().or(default_dc) {
        q.append_pair("dc", dc);
    }
    if let Some(f) = filter_expression(query) {
        q.append_pair("filter", &f);
    }
    if index > 0 {
        q.append_pair("index", &index.to_string());
        q.append_pair("wait", &format!("{}ms", wait.as_millis()));
    }
    format!("/v1/health/service/{}?{}", query.service, q.finish())
}

/// Whether a name can be put into a Consul URL path as it is.
fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

/// Checks what Consul needs of a query: a plain service name and meta keys that its filter
/// language can name.
pub fn check_query(query: &Query) -> Result<(), String> {
    if !valid_name(&query.service) {
        return Err(format!(
            "Consul service name `{}` may only use letters, digits, `-`, `_` and `.`",
            query.service
        ));
    }
    if let Some(k) = query
        .meta
        .keys()
        .find(|k| k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err(format!(
            "meta key `{k}` cannot be used in a Consul filter; use letters, digits and `_`"
        ));
    }
    if let Some(dc) = &query.datacenter {
        if !valid_name(dc) {
            return Err(format!(
                "datacenter `{dc}` may only use letters, digits, `-`, `_` and `.`"
            ));
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HealthEntry {
    node: NodeEntry,
    service: ServiceEntry,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct NodeEntry {
    #[serde(default)]
    address: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ServiceEntry {
    #[serde(rename = "ID", default)]
    id: String,
    #[serde(default)]
    address: String,
    port: u16,
    #[serde(default)]
    tags: Option<Vec<String>>,
    #[serde(default)]
    meta: Option<BTreeMap<String, String>>,
    #[serde(default)]
    weights: Option<Weights>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Weights {
    #[serde(default)]
    passing: u32,
}

impl HealthEntry {
    /// `Service.Address`, or `Node.Address` when the service has none.
    fn address(&self) -> &str {
        if self.service.address.trim().is_empty() {
            self.node.address.trim()
        } else {
            self.service.address.trim()
        }
    }

    async fn endpoint(&self) -> Option<Endpoint> {
        let host = self.address();
        let port = self.service.port;
        let address = match host.parse::<IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, port),
            Err(_) => tokio::net::lookup_host((host, port)).await.ok()?.next()?,
        };
        let mut e = Endpoint::new(address)
            .with_weight(self.service.weights.as_ref().map_or(1, |w| w.passing));
        e.tags = self.service.tags.clone().unwrap_or_default();
        e.meta = self.service.meta.clone().unwrap_or_default();
        Some(e)
    }
}

/// Consul as a discovery source: one blocking-query watch per [`Query`].
#[derive(Debug, Clone)]
pub struct ConsulDiscovery {
    consul: Consul,
}

impl ConsulDiscovery {
    /// Watches through `consul`.
    pub fn new(consul: Consul) -> Self {
        Self { consul }
    }
}

impl Discovery for ConsulDiscovery {
    fn watch(&self, query: &Query) -> Result<Watch, DiscoveryError> {
        check_query(query).map_err(DiscoveryError::InvalidQuery)?;
        Ok(watch::start(self.consul.clone(), query.clone()))
    }

    fn kind(&self) -> &'static str {
        "consul"
    }
}

/// A source health for Consul watches.
fn consul_health() -> SourceHealth {
    SourceHealth::new("consul")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_normalized_or_refused_with_a_reason() {
        assert_eq!(
            parse_address("127.0.0.1:8500").ok().as_deref(),
            Some("127.0.0.1:8500")
        );
        assert_eq!(
            parse_address("http://consul.local:8500/").ok().as_deref(),
            Some("consul.local:8500")
        );
        let why = |a: &str| parse_address(a).err().map(|e| e.to_string());
        assert!(why("https://x:8501").is_some_and(|m| m.contains("https is not supported")));
        assert!(why("127.0.0.1").is_some_and(|m| m.contains("no :port")));
        assert!(why("127.0.0.1:0").is_some_and(|m| m.contains("port")));
        assert!(why("http://x:1/v1").is_some_and(|m| m.contains("path")));
    }

    #[test]
    fn health_query_carries_index_wait_dc_and_an_encoded_filter() {
        let mut q = Query::service("play").tag("canary");
        q.meta.insert("version".into(), "2".into());
        q.filter = Some("Service.Port > 8000".into());
        let path = health_path(&q, Some("dc1"), 42, Duration::from_secs(60));
        assert_eq!(
            path,
            "/v1/health/service/play?passing=true&dc=dc1\
             &filter=%22canary%22+in+Service.Tags+and+Service.Meta.version+%3D%3D+%222%22+and+%28Service.Port+%3E+8000%29\
             &index=42&wait=60000ms"
        );
        let first = health_path(&Query::service("play"), None, 0, Duration::from_secs(60));
        assert_eq!(
            first, "/v1/health/service/play?passing=true",
            "no index: not blocking"
        );
    }

    #[test]
    fn filter_strings_are_quoted() {
        let q = Query::service("s").tag("a\"b\\c");
        assert_eq!(
            filter_expression(&q).as_deref(),
            Some(r#""a\"b\\c" in Service.Tags"#)
        );
    }

    #[test]
    fn queries_consul_cannot_express_are_refused() {
        assert!(check_query(&Query::service("play")).is_ok());
        assert!(check_query(&Query::service("pl ay")).is_err());
        let mut q = Query::service("play");
        q.meta.insert("bad-key".into(), "x".into());
        assert!(check_query(&q).is_err_and(|m| m.contains("bad-key")));
    }

    #[tokio::test]
    async fn service_address_falls_back_to_the_node_and_weights_tags_meta_are_kept() {
        let body = r#"[
          {"Node": {"Address": "10.0.0.7"},
           "Service": {"ID": "a", "Address": "", "Port": 9000, "Tags": null, "Meta": null,
                       "Weights": {"Passing": 0, "Warning": 1}}},
          {"Node": {"Address": "10.0.0.7"},
           "Service": {"ID": "b", "Address": "10.0.0.8", "Port": 9001, "Tags": ["canary"],
                       "Meta": {"version": "2"}, "Weights": {"Passing": 5, "Warning": 1}}}
        ]"#;
        let entries: Vec<HealthEntry> = serde_json::from_str(body).expect("parse");
        let a = entries[0].endpoint().await.expect("a");
        assert_eq!(a.address, "10.0.0.7:9000".parse().expect("addr"));
        assert_eq!(a.weight, 1, "a zero weight is raised to 1");
        assert!(a.tags.is_empty());
        let b = entries[1].endpoint().await.expect("b");
        assert_eq!(b.address, "10.0.0.8:9001".parse().expect("addr"));
        assert_eq!(b.weight, 5);
        assert_eq!(b.tags, vec!["canary".to_owned()]);
        assert_eq!(b.meta.get("version").map(String::as_str), Some("2"));
    }
}
