//! Routes: what a request must look like to match (host, path, method, headers), the path
//! rewrite to apply, and the ordered [`RouteTable`] that finds the first match.
//!
//! Matching rules (also in the README):
//! - Routes are tried in declared order and the first match wins.
//! - `host` is exact (case-insensitive, port ignored) or a `*.example.com` wildcard, which
//!   matches any host ending in `.example.com` but not `example.com` itself.
//! - `path_exact` matches the path exactly; `path_prefix = "/api"` matches `/api` and
//!   `/api/...` but not `/apix` (segment-aware; a prefix ending in `/` matches anything
//!   under it); `path_template = "/titles/{id}"` matches one non-empty segment per `{name}`
//!   and `{*name}` as the last segment matches the rest. The query string is never matched.
//! - `methods` and `headers` (name, optional exact value) narrow a route further.
//! - Because order decides, a route that an earlier route fully covers can never match and is
//!   rejected at load, with the fix "move the more specific route above".

mod path;
mod rewrite;

pub(crate) use path::{PathMatch, PathTemplate};
pub(crate) use rewrite::Rewrite;

use http::{HeaderMap, HeaderName, HeaderValue, Method};

/// Host condition of a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum HostMatch {
    /// This host exactly (stored lowercase).
    Exact(String),
    /// Any host ending with this suffix, which starts with a dot (`.example.com`).
    Suffix(String),
}

impl HostMatch {
    /// Parses `example.com` or `*.example.com`.
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        let lower = text.trim().to_ascii_lowercase();
        if lower.is_empty() {
            return Err("host is empty".into());
        }
        if let Some(rest) = lower.strip_prefix("*.") {
            if rest.is_empty() || rest.contains('*') {
                return Err(format!(
                    "host wildcard `{text}` must look like `*.example.com`"
                ));
            }
            return Ok(Self::Suffix(format!(".{rest}")));
        }
        if lower.contains('*') || lower.contains('/') || lower.contains(' ') {
            return Err(format!(
                "host `{text}` is not a host name; use `example.com` or `*.example.com`"
            ));
        }
        Ok(Self::Exact(lower))
    }

    fn matches(&self, host: &str) -> bool {
        match self {
            Self::Exact(h) => host.eq_ignore_ascii_case(h),
            Self::Suffix(s) => {
                host.len() > s.len()
                    && host
                        .get(host.len() - s.len()..)
                        .is_some_and(|tail| tail.eq_ignore_ascii_case(s))
            }
        }
    }

    fn covers(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Exact(a), Self::Exact(b)) => a == b,
            (Self::Suffix(s), Self::Exact(b)) => Self::Suffix(s.clone()).matches(b),
            (Self::Suffix(s), Self::Suffix(t)) => t.ends_with(s.as_str()),
            (Self::Exact(_), Self::Suffix(_)) => false,
        }
    }
}

/// Header condition: the header is present, and equals `value` when one is given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct HeaderMatch {
    /// Header name.
    pub name: HeaderName,
    /// Exact value required; `None` means presence is enough.
    pub value: Option<HeaderValue>,
}

/// Everything a request must satisfy to take a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteMatch {
    /// Host condition; `None` matches any host.
    pub host: Option<HostMatch>,
    /// Path condition.
    pub path: PathMatch,
    /// Allowed methods; `None` allows all.
    pub methods: Option<Vec<Method>>,
    /// Header conditions, all of which must hold.
    pub headers: Vec<HeaderMatch>,
}

/// The parts of a request that routing reads.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RequestView<'a> {
    /// Method.
    pub method: &'a Method,
    /// Host without port, as sent (any case); empty when the request has none.
    pub host: &'a str,
    /// Path without query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a HeaderMap,
}

impl RouteMatch {
    /// Whether the request satisfies every condition.
    pub(crate) fn matches(&self, req: &RequestView<'_>) -> bool {
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == req.method) {
                return false;
            }
        }
        if let Some(host) = &self.host {
            if !host.matches(req.host) {
                return false;
            }
        }
        if !self.path.matches(req.path) {
            return false;
        }
        self.headers.iter().all(|h| match req.headers.get(&h.name) {
            None => false,
            Some(v) => h.value.as_ref().is_none_or(|want| want == v),
        })
    }

    /// Whether every request that matches `later` also matches `self` (so `later`, declared
    /// after `self`, could never be chosen). Conservative: `false` when unsure.
    pub(crate) fn covers(&self, later: &Self) -> bool {
        let host = match (&self.host, &later.host) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => a.covers(b),
        };
        let methods = match (&self.methods, &later.methods) {
            (None, _) => true,
            (Some(_), None) => false,
            (Some(a), Some(b)) => b.iter().all(|m| a.contains(m)),
        };
        let headers = self.headers.iter().all(|h| {
            later
                .headers
                .iter()
                .any(|l| l.name == h.name && (h.value.is_none() || h.value == l.value))
        });
        host && methods && headers && self.path.covers(&later.path)
    }
}

/// Host of a request without its port: from the URI authority (HTTP/2, absolute-form) or the
/// `Host` header.
pub(crate) fn request_host<'a>(uri: &'a http::Uri, headers: &'a HeaderMap) -> &'a str {
    host_of(uri, headers.get(http::header::HOST))
}

/// [`request_host`] with the `Host` field already looked up (`host_field`).
pub(crate) fn host_of<'a>(uri: &'a http::Uri, host_field: Option<&'a HeaderValue>) -> &'a str {
    let raw = match uri.host() {
        Some(h) => return h,
        None => host_field.and_then(|v| v.to_str().ok()),
    };
    let Some(raw) = raw else { return "" };
    // "[::1]:8080" keeps its brackets; "host:port" loses the port. Byte scans: a host is a
    // few dozen bytes, for which `str`'s char searchers cost several times a plain loop.
    let b = raw.as_bytes();
    let end = if b.first() == Some(&b'[') {
        b.iter().position(|&c| c == b']').map(|i| i + 1)
    } else {
        b.iter().rposition(|&c| c == b':')
    };
    end.and_then(|i| raw.get(..i)).unwrap_or(raw)
}

#[cfg(test)]
mod tests;
