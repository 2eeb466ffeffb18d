//! The admin API's lock, in front of every handler:
//! - `Host` must be an IP literal, `localhost` or a configured name (DNS rebinding);
//! - with a token configured, every request but `/healthz`, `/readyz` and the dashboard's
//!   static files carries `Authorization: Bearer TOKEN`;
//! - a mutating request (POST, PUT, PATCH, DELETE) carries `X-Gateway-Admin` or a
//!   non-simple `Content-Type` (JSON, TOML), which a page in a browser cannot send to another
//!   origin without a preflight the API never grants, and any `Origin` it has is this host's.

use std::net::IpAddr;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use serde_json::json;

use crate::config::AdminSettings;
use crate::runtime::GatewayState;

/// The header a script or CLI sends on mutating admin requests.
pub(crate) const ADMIN_HEADER: &str = "x-gateway-admin";

/// Paths served without a token (probes and the dashboard's static files).
fn open_path(path: &str) -> bool {
    matches!(
        path,
        "/healthz" | "/readyz" | "/" | "/dashboard" | "/dashboard/app.js" | "/dashboard/style.css"
    )
}

fn refuse(status: StatusCode, error: &str, reason: &str) -> Response {
    let mut r = (
        status,
        Json(json!({ "error": error, "status": status.as_u16(), "reason": reason })),
    )
        .into_response();
    if status == StatusCode::UNAUTHORIZED {
        r.headers_mut().insert(
            header::WWW_AUTHENTICATE,
            header::HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
        );
    }
    r
}

/// The host part of a `Host` header or an origin's authority, lowercased, without the port.
fn host_of(authority: &str) -> String {
    let a = authority.trim().to_ascii_lowercase();
    if let Some(rest) = a.strip_prefix('[') {
        return rest.split(']').next().unwrap_or_default().to_owned();
    }
    match a.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h.to_owned(),
        _ => a,
    }
}

fn host_allowed(host: &str, admin: &AdminSettings) -> bool {
    host == "localhost"
        || host.parse::<IpAddr>().is_ok()
        || admin.allowed_hosts.iter().any(|h| h == host)
}

/// Why a request is refused, or `None`.
pub(crate) fn check(
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    admin: &AdminSettings,
) -> Option<Response> {
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    if let Some(host) = host {
        if !host_allowed(&host_of(host), admin) {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "host_not_allowed",
                "the admin API answers to IP addresses, localhost and [admin] allowed_hosts only",
            ));
        }
    }
    if let Some(token) = &admin.token {
        if !open_path(path) {
            let given = headers
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let ok =
                given.is_some_and(|g| constant_time_eq(g.as_bytes(), token.expose().as_bytes()));
            if !ok {
                return Some(refuse(
                    StatusCode::UNAUTHORIZED,
                    "unauthorized",
                    "the admin API needs Authorization: Bearer <the [admin] token>",
                ));
            }
        }
    }
    let mutating = matches!(
        *method,
        Method::POST | Method::PUT | Method::PATCH | Method::DELETE
    );
    if mutating {
        if let Some(origin) = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok()) {
            let origin_host = origin.split("://").nth(1).map(host_of);
            let same = match (origin_host, host) {
                (Some(o), Some(h)) => o == host_of(h),
                _ => false,
            };
            if !same {
                return Some(refuse(
                    StatusCode::FORBIDDEN,
                    "cross_origin",
                    "a mutating admin request from another origin is refused",
                ));
            }
        }
        let marked = headers.contains_key(ADMIN_HEADER);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| {
                v.split(';')
                    .next()
                    .unwrap_or_default()
                    .trim()
                    .to_ascii_lowercase()
            });
        let non_simple = content_type.is_some_and(|ct| {
            !ct.is_empty()
                && ct != "application/x-www-form-urlencoded"
                && ct != "multipart/form-data"
                && ct != "text/plain"
        });
        if !marked && !non_simple {
            return Some(refuse(
                StatusCode::FORBIDDEN,
                "csrf_check",
                "mutating admin requests need the X-Gateway-Admin header or a JSON/TOML Content-Type",
            ));
        }
    }
    None
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The axum middleware: reads the admin settings of the live config on each request, so a
/// reload can rotate the token.
pub(crate) async fn guard(
    State(state): State<Arc<GatewayState>>,
    req: Request,
    next: Next,
) -> Response {
    let runtime = state.runtime();
    if let Some(refusal) = check(
        req.method(),
        req.uri().path(),
        req.headers(),
        &runtime.admin,
    ) {
        return refusal;
    }
    drop(runtime);
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::SecretString;
    use axum::http::HeaderValue;

    fn admin(token: Option<&str>) -> AdminSettings {
        AdminSettings {
            address: "127.0.0.1:9901".parse().expect("addr"),
            token: token.map(|t| SecretString::new(t.into())),
            status_address: None,
            allowed_hosts: vec!["admin.internal".into()],
        }
    }

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_str(v).expect("value"));
        }
        h
    }

    #[test]
    fn hosts() {
        let a = admin(None);
        let get = |host: &str| {
            check(&Method::GET, "/routes", &headers(&[("host", host)]), &a).map(|r| r.status())
        };
        assert_eq!(get("127.0.0.1:9901"), None);
        assert_eq!(get("[::1]:9901"), None);
        assert_eq!(get("localhost:9901"), None);
        assert_eq!(get("admin.internal"), None);
        assert_eq!(get("evil.example:9901"), Some(StatusCode::FORBIDDEN));
    }

    #[test]
    fn csrf() {
        let a = admin(None);
        let post = |h: &[(&'static str, &str)]| {
            check(&Method::POST, "/config", &headers(h), &a).map(|r| r.status())
        };
        assert_eq!(post(&[("host", "127.0.0.1")]), Some(StatusCode::FORBIDDEN));
        assert_eq!(
            post(&[("host", "127.0.0.1"), ("content-type", "text/plain")]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            post(&[("host", "127.0.0.1"), ("content-type", "application/toml")]),
            None
        );
        assert_eq!(
            post(&[("host", "127.0.0.1"), ("x-gateway-admin", "1")]),
            None
        );
        assert_eq!(
            post(&[
                ("host", "127.0.0.1:9901"),
                ("x-gateway-admin", "1"),
                ("origin", "http://evil.example")
            ]),
            Some(StatusCode::FORBIDDEN)
        );
        assert_eq!(
            post(&[
                ("host", "127.0.0.1:9901"),
                ("x-gateway-admin", "1"),
                ("origin", "http://127.0.0.1:9901")
            ]),
            None
        );
    }

    #[test]
    fn token() {
        let a = admin(Some("0123456789abcdef0123"));
        let get = |path: &str, h: &[(&'static str, &str)]| {
            check(&Method::GET, path, &headers(h), &a).map(|r| r.status())
        };
        assert_eq!(get("/routes", &[]), Some(StatusCode::UNAUTHORIZED));
        assert_eq!(
            get("/routes", &[("authorization", "Bearer wrong")]),
            Some(StatusCode::UNAUTHORIZED)
        );
        assert_eq!(
            get(
                "/routes",
                &[("authorization", "Bearer 0123456789abcdef0123")]
            ),
            None
        );
        assert_eq!(get("/healthz", &[]), None);
        assert_eq!(get("/dashboard", &[]), None);
    }
}
