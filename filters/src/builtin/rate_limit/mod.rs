//! `rate_limit`: GCRA rate limits (governor) keyed by client IP, a request header, a JWT claim
//! or the route. A route can have several limits (e.g. a per-second burst limit and a
//! per-minute quota); a request must pass all of them. Refusal is 429 with `Retry-After` and
//! `RateLimit-Limit/Remaining/Reset`; allowed responses carry the `RateLimit-*` headers of the
//! tightest limit.
//!
//! Memory stays bounded: keys whose state has returned to "fresh" are swept every few seconds,
//! and a limit tracking more than `max_keys` keys after a sweep starts over empty (logged).
//! Limits are local to this gateway process.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};
use http::header::RETRY_AFTER;
use http::{request, response, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

use super::header_name;
use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

const RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("ratelimit-limit");
const RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("ratelimit-remaining");
const RATELIMIT_RESET: HeaderName = HeaderName::from_static("ratelimit-reset");
/// Checks between looks at the key count (bounds the overshoot past `max_keys`).
const SIZE_CHECK_EVERY: u64 = 256;
/// Least time between sweeps of stale keys.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    limits: Vec<LimitSettings>,
    #[serde(default = "default_max_keys")]
    max_keys: usize,
    #[serde(default = "yes")]
    headers: bool,
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
}

fn default_max_keys() -> usize {
    100_000
}
fn default_key() -> String {
    "client_ip".into()
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

type Limiter = RateLimiter<Key, DashMapStateStore<Key>, DefaultClock, StateInformationMiddleware>;

#[derive(Debug)]
struct Limit {
    source: KeySource,
    quota: Quota,
    limiter: ArcSwap<Limiter>,
    checks: AtomicU64,
    last_sweep_ms: AtomicU64,
    sweeping: Mutex<()>,
}

fn new_limiter(quota: Quota) -> Limiter {
    RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>()
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
    max_keys: usize,
    headers: bool,
    epoch: Instant,
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
    /// burst }`), `max_keys` (default 100000 per limit) and `headers` (default true).
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
        let limits = st
            .limits
            .iter()
            .map(|l| {
                let quota = quota(l)?;
                Ok(Limit {
                    source: parse_key(&l.key)?,
                    quota,
                    limiter: ArcSwap::from_pointee(new_limiter(quota)),
                    checks: AtomicU64::new(0),
                    last_sweep_ms: AtomicU64::new(0),
                    sweeping: Mutex::new(()),
                })
            })
            .collect::<Result<_, FilterConfigError>>()?;
        Ok(Self {
            limits,
            max_keys: st.max_keys,
            headers: st.headers,
            epoch: Instant::now(),
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

    /// Keeps a limit's key count bounded (see the module docs).
    fn maintain(&self, limit: &Limit) {
        let n = limit.checks.fetch_add(1, Ordering::Relaxed);
        if n % SIZE_CHECK_EVERY != 0 {
            return;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let limiter = limit.limiter.load();
        let over = limiter.len() > self.max_keys;
        let due = now_ms.saturating_sub(limit.last_sweep_ms.load(Ordering::Relaxed))
            >= SWEEP_INTERVAL.as_millis() as u64;
        if !(over || due) {
            return;
        }
        let Ok(_sweeping) = limit.sweeping.try_lock() else {
            return;
        };
        limit.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        limiter.retain_recent();
        if limiter.len() > self.max_keys {
            tracing::warn!(
                keys = limiter.len(),
                max_keys = self.max_keys,
                "rate limit tracks too many keys; starting over"
            );
            limit.limiter.store(Arc::new(new_limiter(limit.quota)));
        } else {
            limiter.shrink_to_fit();
        }
    }

    /// Checks every limit; the report of the tightest one, or the refusal.
    fn check(
        &self,
        req: &request::Parts,
        ctx: &FilterContext,
    ) -> Result<Report, (Report, Duration)> {
        let mut tightest: Option<Report> = None;
        for limit in &self.limits {
            self.maintain(limit);
            let key = Self::key(&limit.source, req, ctx);
            let limiter = limit.limiter.load();
            let burst = limit.quota.burst_size().get();
            match limiter.check_key(&key) {
                Ok(snapshot) => {
                    let remaining = snapshot.remaining_burst_capacity();
                    let used = burst.saturating_sub(remaining);
                    let reset = limit.quota.replenish_interval() * used;
                    let r = Report {
                        limit: burst,
                        remaining,
                        reset_secs: reset.as_secs() + u64::from(reset.subsec_nanos() > 0),
                    };
                    if tightest.is_none_or(|t| r.remaining < t.remaining) {
                        tightest = Some(r);
                    }
                }
                Err(not_until) => {
                    let wait = not_until.wait_time_from(limiter.clock().now());
                    let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                    return Err((
                        Report {
                            limit: burst,
                            remaining: 0,
                            reset_secs: secs.max(1),
                        },
                        wait,
                    ));
                }
            }
        }
        tightest.ok_or((
            Report {
                limit: 0,
                remaining: 0,
                reset_secs: 1,
            },
            Duration::from_secs(1),
        ))
    }
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
        match self.check(req, ctx) {
            Ok(report) => {
                if self.headers {
                    ctx.insert(report);
                }
                Flow::Continue
            }
            Err((report, wait)) => {
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
            let _ = f.check(&req, &c);
        }
        let keys = f.limits[0].limiter.load().len();
        assert!(
            keys <= 100 + SIZE_CHECK_EVERY as usize,
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
