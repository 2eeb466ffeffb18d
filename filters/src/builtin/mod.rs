//! The built-in filters, registered under these names by [`FilterRegistry::with_builtins`]:
//!
//! | name | what it does |
//! |---|---|
//! | `jwt` | verifies bearer tokens, sets the identity, copies claims to upstream headers |
//! | `rate_limit` | GCRA limits keyed by client IP, header, claim or route; 429 with RateLimit headers |
//! | `headers` | adds, sets and removes request and response headers, with templates |
//! | `request_id` | passes the request id upstream and back under another header name |
//! | `cors` | answers preflights at the edge, adds CORS headers to responses |
//! | `ip_filter` | allows or denies client addresses by CIDR |
//! | `body_limit` | 413 for request bodies over a size, by Content-Length or while streaming |
//!
//! [`FilterRegistry::with_builtins`]: crate::FilterRegistry::with_builtins

pub mod body_limit;
pub mod cors;
pub mod headers;
pub mod ip_filter;
pub mod jwt;
pub mod rate_limit;
pub mod request_id;

use crate::FilterRegistry;

pub(crate) fn register_all(r: &mut FilterRegistry) {
    // The registry starts empty here, so no name can collide.
    let _ = r.register("jwt", jwt::JwtFilter::from_settings);
    let _ = r.register("rate_limit", rate_limit::RateLimitFilter::from_settings);
    let _ = r.register("headers", headers::HeadersFilter::from_settings);
    let _ = r.register("request_id", request_id::RequestIdFilter::from_settings);
    let _ = r.register("cors", cors::CorsFilter::from_settings);
    let _ = r.register("ip_filter", ip_filter::IpFilter::from_settings);
    let _ = r.register("body_limit", body_limit::BodyLimitFilter::from_settings);
}

/// Parses a header name from settings, naming the key on failure.
pub(crate) fn header_name(
    key: &str,
    name: &str,
) -> Result<http::HeaderName, crate::FilterConfigError> {
    http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes()).map_err(|_| {
        crate::FilterConfigError::at_key(
            key,
            format!("`{name}` is not a valid header name"),
            "use a header name like \"x-user-id\"",
        )
    })
}
