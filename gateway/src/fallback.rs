//! Fallbacks: the responses a route's fallback answers a failed upstream call with (the last good response of a GET, or a static one).

use std::sync::Arc;
use std::time::Instant;

use bytes::{Bytes, BytesMut};
use http::header::{HeaderName, HeaderValue};
use http::{HeaderMap, StatusCode};

use resilience::Failure;

use crate::config::{FallbackSpec, LastGoodSettings, StaticResponse};

/// The response header saying that a fallback answered, and why.
pub(crate) const X_FALLBACK: HeaderName = HeaderName::from_static("x-fallback");

/// A response kept for `last_good` fallbacks.
#[derive(Debug)]
pub(crate) struct Stored {
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    at: Instant,
}

#[derive(Debug, Clone, Copy)]
struct Weight {
    /// Every entry weighs at least this much, so the byte bound also bounds the count.
    floor: u64,
}

impl quick_cache::Weighter<Box<str>, Arc<Stored>> for Weight {
    fn weight(&self, key: &Box<str>, v: &Arc<Stored>) -> u64 {
        let headers: usize = v
            .headers
            .iter()
            .map(|(k, v)| k.as_str().len() + v.len() + 32)
            .sum();
        ((key.len() + headers + v.body.len() + 64) as u64).max(self.floor)
    }
}

/// The last good response of each GET on a route, bounded in bytes and entries.
pub(crate) struct LastGood {
    settings: LastGoodSettings,
    cache: quick_cache::sync::Cache<Box<str>, Arc<Stored>, Weight>,
}

impl std::fmt::Debug for LastGood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LastGood")
            .field("settings", &self.settings)
            .field("entries", &self.cache.len())
            .field("bytes", &self.cache.weight())
            .finish()
    }
}

/// Response headers that describe the connection or the original transfer, not the content.
fn kept_header(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "transfer-encoding"
            | "content-length"
            | "set-cookie"
            | "date"
            | "age"
            | "via"
            | "x-request-id"
    )
}

/// A response being recorded as it streams to the client.
#[derive(Debug)]
pub(crate) struct Capture {
    key: Box<str>,
    status: StatusCode,
    headers: HeaderMap,
    body: BytesMut,
    limit: usize,
}

impl Capture {
    /// Appends a body piece; `false` when the body grew past the limit (stop capturing).
    pub(crate) fn push(&mut self, chunk: &[u8]) -> bool {
        if self.body.len() + chunk.len() > self.limit {
            return false;
        }
        self.body.extend_from_slice(chunk);
        true
    }
}

impl LastGood {
    /// An empty store.
    /// The settings this store was made with.
    pub(crate) fn settings(&self) -> LastGoodSettings {
        self.settings
    }

    pub(crate) fn new(settings: LastGoodSettings) -> Self {
        let floor = (settings.max_bytes / settings.max_entries.max(1) as u64).max(1);
        Self {
            settings,
            cache: quick_cache::sync::Cache::with_weighter(
                settings.max_entries.min(100_000),
                settings.max_bytes,
                Weight { floor },
            ),
        }
    }

    /// The cache key of a request.
    pub(crate) fn key(host: &str, path_and_query: &str) -> Box<str> {
        format!("{host}{path_and_query}").into_boxed_str()
    }

    /// Starts recording a 200 response to a GET (`None` when it cannot be kept, e.g. it says
    /// `no-store`, or it is larger than the limit).
    pub(crate) fn capture(
        &self,
        key: Box<str>,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Capture> {
        if status != StatusCode::OK {
            return None;
        }
        let no_store = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .any(|v| {
                v.to_str()
                    .is_ok_and(|s| s.contains("no-store") || s.contains("private"))
            });
        let too_big = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
            .is_some_and(|n| n > self.settings.max_body_bytes);
        if no_store || too_big || headers.contains_key(http::header::SET_COOKIE) {
            return None;
        }
        let mut kept = HeaderMap::new();
        for (k, v) in headers {
            if kept_header(k) {
                kept.append(k.clone(), v.clone());
            }
        }
        Some(Capture {
            key,
            status,
            headers: kept,
            body: BytesMut::new(),
            limit: self.settings.max_body_bytes,
        })
    }

    /// Keeps a completely recorded response.
    pub(crate) fn store(&self, c: Capture, now: Instant) {
        self.cache.insert(
            c.key,
            Arc::new(Stored {
                status: c.status,
                headers: c.headers,
                body: c.body.freeze(),
                at: now,
            }),
        );
    }

    /// The kept response for `key` if it is young enough, with an `Age` header.
    pub(crate) fn answer(&self, key: &str, now: Instant) -> Option<filters::Response> {
        let s = self.cache.get(key)?;
        let age = now.saturating_duration_since(s.at);
        if age > self.settings.max_age {
            self.cache.remove(key);
            return None;
        }
        let mut resp = http::Response::new(s.body.clone());
        *resp.status_mut() = s.status;
        *resp.headers_mut() = s.headers.clone();
        resp.headers_mut()
            .insert(http::header::AGE, HeaderValue::from(age.as_secs()));
        Some(resp)
    }

    /// Responses kept.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.cache.len()
    }

    /// Whether nothing is kept.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.cache.is_empty()
    }
}

impl StaticResponse {
    /// The configured response.
    pub(crate) fn to_response(&self) -> filters::Response {
        let mut resp = http::Response::new(self.body.clone());
        *resp.status_mut() = self.status;
        for (k, v) in &self.headers {
            resp.headers_mut().append(k.clone(), v.clone());
        }
        resp
    }
}

/// Marks `resp` as a fallback answer: `X-Fallback: KIND; reason=REASON`.
pub(crate) fn mark(resp: &mut http::response::Parts, kind: &str, failure: Failure) {
    let v = format!("{kind}; reason={}", failure.reason());
    if let Ok(v) = HeaderValue::from_str(&v) {
        resp.headers.insert(X_FALLBACK, v);
    }
}

/// The local answer of a route's fallback for `failure` (last good response, then the
/// static one), already marked.
pub(crate) fn local_answer(
    spec: &FallbackSpec,
    last_good: Option<(&LastGood, &str)>,
    failure: Failure,
    now: Instant,
) -> Option<(&'static str, filters::Response)> {
    if !spec.on.contains(failure) {
        return None;
    }
    let (kind, resp) = match last_good.and_then(|(lg, key)| lg.answer(key, now)) {
        Some(r) => ("last_good", r),
        None => ("static", spec.response.as_ref()?.to_response()),
    };
    let (mut parts, body) = resp.into_parts();
    mark(&mut parts, kind, failure);
    Some((kind, http::Response::from_parts(parts, body)))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use resilience::{Condition, FailureSet, StatusSet};

    fn settings() -> LastGoodSettings {
        LastGoodSettings {
            max_age: Duration::from_secs(60),
            max_entries: 4,
            max_bytes: 1 << 20,
            max_body_bytes: 1024,
        }
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn keeps_and_serves_the_last_good_response_until_it_is_too_old() {
        let lg = LastGood::new(settings());
        let t0 = Instant::now();
        let h = headers(&[
            ("content-type", "application/json"),
            ("connection", "keep-alive"),
        ]);
        let mut c = lg
            .capture(LastGood::key("h", "/a"), StatusCode::OK, &h)
            .expect("capture");
        assert!(c.push(b"{\"ok\":"));
        assert!(c.push(b"true}"));
        lg.store(c, t0);
        let r = lg.answer("h/a", t0 + Duration::from_secs(5)).expect("kept");
        assert_eq!(r.body().as_ref(), b"{\"ok\":true}");
        assert_eq!(r.headers()["age"], "5");
        assert!(r.headers().get("connection").is_none());
        assert!(lg.answer("h/a", t0 + Duration::from_secs(61)).is_none());
        assert!(lg.is_empty(), "expired entries are dropped");
    }

    #[test]
    fn does_not_keep_private_large_or_failed_responses() {
        let lg = LastGood::new(settings());
        let key = || LastGood::key("h", "/a");
        assert!(lg
            .capture(key(), StatusCode::NOT_FOUND, &HeaderMap::new())
            .is_none());
        assert!(lg
            .capture(
                key(),
                StatusCode::OK,
                &headers(&[("cache-control", "no-store")])
            )
            .is_none());
        assert!(lg
            .capture(key(), StatusCode::OK, &headers(&[("set-cookie", "a=b")]))
            .is_none());
        assert!(lg
            .capture(
                key(),
                StatusCode::OK,
                &headers(&[("content-length", "4096")])
            )
            .is_none());
        let mut c = lg
            .capture(key(), StatusCode::OK, &HeaderMap::new())
            .expect("capture");
        assert!(!c.push(&[0u8; 2048]), "streams past the limit are dropped");
    }

    #[test]
    fn the_entry_bound_holds() {
        let lg = LastGood::new(settings());
        let t0 = Instant::now();
        for i in 0..50 {
            let c = lg
                .capture(
                    LastGood::key("h", &format!("/{i}")),
                    StatusCode::OK,
                    &HeaderMap::new(),
                )
                .expect("capture");
            lg.store(c, t0);
        }
        assert!(lg.len() <= 4, "{} entries", lg.len());
    }

    #[test]
    fn local_answers_prefer_the_last_good_response() {
        let spec = FallbackSpec {
            on: FailureSet::new(
                [
                    Condition::ConnectFailure,
                    Condition::Timeout,
                    Condition::Reset,
                    Condition::CircuitOpen,
                    Condition::NoEndpoints,
                ],
                StatusSet::server_errors(),
            ),
            cluster: None,
            last_good: Some(settings()),
            response: Some(StaticResponse {
                status: StatusCode::OK,
                headers: vec![],
                body: Bytes::from_static(b"default"),
            }),
        };
        let lg = LastGood::new(settings());
        let now = Instant::now();
        let (kind, r) =
            local_answer(&spec, Some((&lg, "h/x")), Failure::CircuitOpen, now).expect("static");
        assert_eq!(kind, "static");
        assert_eq!(r.body().as_ref(), b"default");
        assert_eq!(r.headers()[X_FALLBACK], "static; reason=circuit_open");
        let c = lg
            .capture("h/x".into(), StatusCode::OK, &HeaderMap::new())
            .expect("capture");
        lg.store(c, now);
        let (kind, r) =
            local_answer(&spec, Some((&lg, "h/x")), Failure::Status(503), now).expect("kept");
        assert_eq!(kind, "last_good");
        assert_eq!(r.headers()[X_FALLBACK], "last_good; reason=status_503");
        assert!(local_answer(&spec, Some((&lg, "h/x")), Failure::BulkheadFull, now).is_none());
    }
}
