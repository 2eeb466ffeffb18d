//! `rate_limit`: GCRA rate limits keyed by client IP, a request header, a JWT claim or the
//! route. A route can have several limits (e.g. a per-second burst limit and a per-minute
//! quota); a request must pass all of them. Refusal is 429 with `Retry-After` and
//! `RateLimit-Limit/Remaining/Reset`; allowed responses carry the `RateLimit-*` headers of the
//! tightest limit.
//!
//! A limit is local to this gateway process ([`local`], the default) or, with
//! `scope = "cluster"`, shared by the fleet through the gateway's limit store ([`cluster`]).

mod cluster;
mod local;

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use async_trait::async_trait;
use governor::Quota;
use http::header::RETRY_AFTER;
use http::{request, response, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use self::cluster::{ClusterLimit, OnStoreFailure};
use self::local::LocalLimit;
use super::header_name;
use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    limits: Vec<LimitSettings>,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default = "yes")]
    headers: bool,
    /// Names the filter's cluster-wide limits in the store (default: derived from the
    /// limits, so gateways with the same settings share state).
    name: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitSettings {
    #[serde(default = "default_key")]
    key: String,
    per_second: Option<u32>,
    per_minute: Option<u32>,
    per_hour: Option<u32>,
    burst: Option<u32>,
    #[serde(default = "default_scope")]
    scope: String,
    on_store_failure: Option<String>,
}

fn default_max_keys() -> usize {
    100_000
}
fn default_key() -> String {
    "client_ip".into()
}
fn default_scope() -> String {
    "local".into()
}
fn yes() -> bool {
    true
}

/// What a limit counts by.
#[derive(Debug, Clone, PartialEq, Eq)]
enum KeySource {
    ClientIp,
    Route,
    Header(HeaderName),
    Claim(String),
}

/// A limiter key; the variant keeps values from different sources apart.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Ip(IpAddr),
    Text(Box<[u8]>),
    Whole,
}

impl Key {
    /// The key as the store names it: printable, with the variant kept apart.
    fn store_text(&self) -> String {
        match self {
            Self::Ip(ip) => format!("ip:{ip}"),
            Self::Whole => "all".into(),
            Self::Text(t) => {
                let mut out = String::from("t:");
                for b in t.iter() {
                    if b.is_ascii_alphanumeric() || b"-_.@".contains(b) {
                        out.push(char::from(*b));
                    } else {
                        out.push_str(&format!("%{b:02X}"));
                    }
                }
                out
            }
        }
    }
}

/// One limit's decision on a request.
#[derive(Debug, Clone, Copy)]
enum Verdict {
    /// Admitted; what is left.
    Allowed(Report),
    /// Over the limit; retry after the duration.
    Refused(Report, Duration),
    /// The shared store is unavailable and the limit fails closed.
    Unavailable,
}

/// Where a limit keeps its state.
#[derive(Debug)]
enum Scope {
    Local(LocalLimit),
    Cluster(ClusterLimit),
}

#[derive(Debug)]
struct Limit {
    source: KeySource,
    scope: Scope,
}

/// The outcome of the tightest limit, reported in `RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
struct Report {
    limit: u32,
    remaining: u32,
    reset_secs: u64,
}

/// The `rate_limit` filter.
#[derive(Debug)]
pub struct RateLimitFilter {
    limits: Vec<Limit>,
    headers: bool,
}

fn parse_key(s: &str) -> Result<KeySource, FilterConfigError> {
    match s {
        "client_ip" => Ok(KeySource::ClientIp),
        "route" => Ok(KeySource::Route),
        _ => {
            if let Some(h) = s.strip_prefix("header:") {
                Ok(KeySource::Header(header_name("limits.key", h)?))
            } else if let Some(c) = s.strip_prefix("claim:").filter(|c| !c.is_empty()) {
                Ok(KeySource::Claim(c.to_owned()))
            } else {
                Err(FilterConfigError::at_key(
                    "limits",
                    format!("limit key `{s}` is unknown"),
                    "use \"client_ip\", \"route\", \"header:NAME\" or \"claim:NAME\"",
                ))
            }
        }
    }
}

fn quota(l: &LimitSettings) -> Result<Quota, FilterConfigError> {
    let given: Vec<(u32, Duration)> = [
        (l.per_second, Duration::from_secs(1)),
        (l.per_minute, Duration::from_secs(60)),
        (l.per_hour, Duration::from_secs(3600)),
    ]
    .into_iter()
    .filter_map(|(n, d)| n.map(|n| (n, d)))
    .collect();
    let [(rate, period)] = given.as_slice() else {
        return Err(FilterConfigError::at_key(
            "limits",
            "each limit needs exactly one of per_second, per_minute, per_hour",
            "write a limit like { per_second = 100, burst = 200 }",
        ));
    };
    let rate = NonZeroU32::new(*rate).ok_or_else(|| {
        FilterConfigError::at_key("limits", "a limit's rate is 0", "use a rate of at least 1")
    })?;
    let burst = match l.burst {
        None => rate,
        Some(b) => NonZeroU32::new(b).ok_or_else(|| {
            FilterConfigError::at_key(
                "limits",
                "burst = 0 would refuse everything",
                "use a burst of at least 1",
            )
        })?,
    };
    // `rate` cells replenish evenly over `period`; up to `burst` can be spent at once.
    Quota::with_period(*period / rate.get())
        .map(|q| q.allow_burst(burst))
        .ok_or_else(|| {
            FilterConfigError::at_key("limits", "the rate is too high", "use a lower rate")
        })
}

impl RateLimitFilter {
    /// Builds the filter from `limits` (each `{ key, per_second | per_minute | per_hour,
    /// burst, scope, on_store_failure }`), `max_keys` (default 100000 per local limit),
    /// `headers` (default true) and `name` (the store namespace of cluster-wide limits).
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        if st.limits.is_empty() {
            return Err(FilterConfigError::at_key(
                "limits",
                "rate_limit has no limits",
                "add limits = [{ per_second = 100 }]",
            ));
        }
        if st.max_keys == 0 {
            return Err(FilterConfigError::at_key(
                "max_keys",
                "max_keys = 0",
                "use at least 1",
            ));
        }
        let services = s.services();
        let limits = st
            .limits
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let quota = quota(l)?;
                let source = parse_key(&l.key)?;
                let scope = match l.scope.as_str() {
                    "local" => {
                        if l.on_store_failure.is_some() {
                            return Err(FilterConfigError::at_key(
                                "limits",
                                "on_store_failure applies only to scope = \"cluster\"",
                                "remove on_store_failure or set scope = \"cluster\"",
                            ));
                        }
                        Scope::Local(LocalLimit::bounded(quota, st.max_keys))
                    }
                    "cluster" => {
                        let on_failure = match l.on_store_failure.as_deref() {
                            None => OnStoreFailure::LocalShare,
                            Some(f) => OnStoreFailure::parse(f).ok_or_else(|| {
                                FilterConfigError::at_key(
                                    "limits",
                                    format!("on_store_failure `{f}` is unknown"),
                                    "use \"local_share\" (default), \"open\" or \"closed\"",
                                )
                            })?,
                        };
                        let store = services.limit_store.clone().ok_or_else(|| {
                            FilterConfigError::at_key(
                                "limits",
                                "scope = \"cluster\" needs a limit store, and the gateway has none",
                                "set [redis] address = \"redis://HOST:PORT\" in the gateway config, or use scope = \"local\"",
                            )
                        })?;
                        let name = match &st.name {
                            Some(n) => n.clone(),
                            None => format!("{}:{}:{}", s.owner(), l.key, quota_text(l)),
                        };
                        Scope::Cluster(ClusterLimit::new(
                            format!("{name}#{i}"),
                            quota,
                            on_failure,
                            services.limit_sync_interval,
                            store,
                            services.clone(),
                        ))
                    }
                    other => {
                        return Err(FilterConfigError::at_key(
                            "limits",
                            format!("limit scope `{other}` is unknown"),
                            "use scope = \"local\" (default) or \"cluster\"",
                        ))
                    }
                };
                Ok(Limit { source, scope })
            })
            .collect::<Result<_, FilterConfigError>>()?;
        Ok(Self {
            limits,
            headers: st.headers,
        })
    }

    fn key(source: &KeySource, req: &request::Parts, ctx: &FilterContext) -> Key {
        let ip = || ctx.client_ip().map_or(Key::Whole, Key::Ip);
        match source {
            KeySource::ClientIp => ip(),
            KeySource::Route => Key::Whole,
            KeySource::Header(h) => req
                .headers
                .get(h)
                .map_or_else(ip, |v| Key::Text(v.as_bytes().into())),
            KeySource::Claim(c) => ctx
                .identity()
                .and_then(|i| i.claim_text(c))
                .map_or_else(ip, |v| Key::Text(v.as_bytes().into())),
        }
    }

    /// Checks every limit; the report of the tightest one, or the first refusal.
    async fn check(&self, req: &request::Parts, ctx: &FilterContext) -> Verdict {
        let mut tightest: Option<Report> = None;
        for limit in &self.limits {
            let key = Self::key(&limit.source, req, ctx);
            let verdict = match &limit.scope {
                Scope::Local(l) => l.check(&key),
                Scope::Cluster(c) => c.check(key).await,
            };
            match verdict {
                Verdict::Allowed(r) => {
                    if tightest.is_none_or(|t| r.remaining < t.remaining) {
                        tightest = Some(r);
                    }
                }
                refused => return refused,
            }
        }
        Verdict::Allowed(tightest.unwrap_or(Report {
            limit: 0,
            remaining: 0,
            reset_secs: 1,
        }))
    }

    /// Whether any cluster-wide limit is degraded (its store unavailable).
    pub fn degraded(&self) -> bool {
        self.limits
            .iter()
            .any(|l| matches!(&l.scope, Scope::Cluster(c) if c.is_degraded()))
    }
}

/// The text of a limit's rate, for store names: `100/s+200`.
fn quota_text(l: &LimitSettings) -> String {
    let (n, unit) = match (l.per_second, l.per_minute, l.per_hour) {
        (Some(n), _, _) => (n, "s"),
        (_, Some(n), _) => (n, "m"),
        (_, _, Some(n)) => (n, "h"),
        _ => (0, "-"),
    };
    format!("{n}/{unit}+{}", l.burst.unwrap_or(n))
}

fn add_report(headers: &mut http::HeaderMap, r: &Report) {
    headers.insert(RATELIMIT_LIMIT, HeaderValue::from(r.limit));
    headers.insert(RATELIMIT_REMAINING, HeaderValue::from(r.remaining));
    headers.insert(RATELIMIT_RESET, HeaderValue::from(r.reset_secs));
}

#[async_trait]
impl Filter for RateLimitFilter {
    /// The buckets are the state: a reload that keeps the limits keeps who used how much.
    fn keep_across_reloads(&self) -> bool {
        true
    }

    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        match self.check(req, ctx).await {
            Verdict::Allowed(report) => {
                if self.headers {
                    ctx.insert(report);
                }
                Flow::Continue
            }
            Verdict::Refused(report, wait) => {
                let mut resp = reply::json_error(
                    StatusCode::TOO_MANY_REQUESTS,
                    "rate_limited",
                    "too many requests; retry after the time in Retry-After",
                );
                let secs = (wait.as_secs() + u64::from(wait.subsec_nanos() > 0)).max(1);
                resp.headers_mut()
                    .insert(RETRY_AFTER, HeaderValue::from(secs));
                add_report(resp.headers_mut(), &report);
                Flow::Respond(resp)
            }
            Verdict::Unavailable => {
                let mut resp = reply::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "rate_limit_unavailable",
                    "the cluster-wide rate limit cannot be checked right now",
                );
                resp.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
                Flow::Respond(resp)
            }
        }
    }

    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        if let Some(report) = ctx.get::<Report>() {
            add_report(&mut resp.headers, report);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Identity;

    fn filter(toml: &str) -> Result<RateLimitFilter, FilterConfigError> {
        RateLimitFilter::from_settings(&FilterSettings::from_toml(toml)?)
    }

    fn ctx(ip: [u8; 4]) -> FilterContext {
        FilterContext::new(Some("r".into()), Some(ip.into()), None, false)
    }

    async fn status(f: &RateLimitFilter, req: &mut request::Parts, ctx: &mut FilterContext) -> u16 {
        match f.on_request(req, ctx).await {
            Flow::Continue => 200,
            Flow::Respond(r) => {
                assert!(r.headers().contains_key(RETRY_AFTER));
                assert_eq!(r.headers()[RATELIMIT_REMAINING], "0");
                r.status().as_u16()
            }
        }
    }

    #[tokio::test]
    async fn burst_then_429_per_client() {
        let f = filter("limits = [{ per_minute = 3 }]").expect("valid");
        let (mut req, _) = http::Request::new(()).into_parts();
        let mut a = ctx([10, 0, 0, 1]);
        for _ in 0..3 {
            assert_eq!(status(&f, &mut req, &mut a).await, 200);
        }
        assert_eq!(status(&f, &mut req, &mut a).await, 429);
        let mut b = ctx([10, 0, 0, 2]);
        assert_eq!(
            status(&f, &mut req, &mut b).await,
            200,
            "other client has its own"
        );
        let report = b.get::<Report>().copied().expect("report");
        assert_eq!((report.limit, report.remaining), (3, 2));
        assert_eq!(report.reset_secs, 20, "one cell replenishes in 20 s");
    }

    #[tokio::test]
    async fn several_limits_and_claim_keys() {
        let f = filter(
            r#"limits = [{ key = "claim:sub", per_minute = 100, burst = 2 }, { key = "route", per_hour = 1000 }]"#,
        )
        .expect("valid");
        let (mut req, _) = http::Request::new(()).into_parts();
        let user = |sub: &str| {
            let mut c = ctx([10, 0, 0, 1]);
            let mut claims = serde_json::Map::new();
            claims.insert("sub".into(), sub.into());
            c.set_identity(Arc::new(Identity {
                subject: Some(sub.into()),
                claims,
            }));
            c
        };
        let mut u1 = user("u1");
        assert_eq!(status(&f, &mut req, &mut u1).await, 200);
        assert_eq!(status(&f, &mut req, &mut u1).await, 200);
        assert_eq!(status(&f, &mut req, &mut u1).await, 429);
        let mut u2 = user("u2");
        assert_eq!(
            status(&f, &mut req, &mut u2).await,
            200,
            "same IP, other user"
        );
        let report = u2.get::<Report>().copied().expect("report");
        assert_eq!(report.limit, 2, "the tightest limit is reported");
    }

    #[test]
    fn stale_keys_are_swept_and_memory_is_bounded() {
        let f = filter("max_keys = 100\nlimits = [{ per_second = 1000 }]").expect("valid");
        let (req, _) = http::Request::new(()).into_parts();
        for i in 0..5000u32 {
            let c = ctx(i.to_be_bytes());
            let key = RateLimitFilter::key(&f.limits[0].source, &req, &c);
            let Scope::Local(l) = &f.limits[0].scope else {
                panic!("a local limit");
            };
            let _ = l.check(&key);
        }
        let Scope::Local(l) = &f.limits[0].scope else {
            panic!("a local limit");
        };
        let keys = l.len();
        assert!(
            keys <= 100 + local::SIZE_CHECK_EVERY as usize,
            "{keys} keys tracked"
        );
    }

    #[test]
    fn bad_settings_are_refused() {
        for bad in [
            "limits = []",
            "limits = [{ per_second = 1, per_minute = 5 }]",
            "limits = [{ per_second = 0 }]",
            "limits = [{ per_second = 5, burst = 0 }]",
            "limits = [{ key = \"cookie:x\", per_second = 5 }]",
            "limits = [{ per_second = 5 }]\nmax_keys = 0",
        ] {
            assert!(filter(bad).is_err(), "{bad}");
        }
    }
}
