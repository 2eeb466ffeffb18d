//! `cors`: Cross-Origin Resource Sharing at the edge. Preflights (`OPTIONS` with `Origin` and
//! `Access-Control-Request-Method`) are answered here with 204 when the origin and method are
//! allowed and 403 `cors_rejected` otherwise; actual requests from allowed origins get
//! `Access-Control-Allow-Origin` (and credentials / exposed headers) on their response.
//! Requests from other origins pass without CORS headers, so browsers block them.

use async_trait::async_trait;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{request, response, HeaderValue, Method, StatusCode};
use serde::Deserialize;

use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default)]
    allow_headers: Vec<String>,
    #[serde(default)]
    expose_headers: Vec<String>,
    #[serde(default)]
    allow_credentials: bool,
    #[serde(default = "default_max_age")]
    max_age_seconds: u32,
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

fn default_max_age() -> u32 {
    600
}

#[derive(Debug)]
enum Origins {
    Any,
    List(Vec<String>),
}

/// The `cors` filter.
#[derive(Debug)]
pub struct CorsFilter {
    origins: Origins,
    methods: Vec<Method>,
    methods_value: HeaderValue,
    /// Lowercased allowed request headers; empty allows none beyond the CORS-safelisted ones.
    headers: Vec<String>,
    headers_value: Option<HeaderValue>,
    expose_value: Option<HeaderValue>,
    credentials: bool,
    max_age: HeaderValue,
}

/// The allowed origin of this request, for the response phase.
#[derive(Debug, Clone)]
struct AllowedOrigin(HeaderValue);

fn list_value(key: &str, items: &[String]) -> Result<Option<HeaderValue>, FilterConfigError> {
    if items.is_empty() {
        return Ok(None);
    }
    HeaderValue::from_str(&items.join(", "))
        .map(Some)
        .map_err(|_| {
            FilterConfigError::at_key(key, "a value is not valid in a header", "use plain tokens")
        })
}

impl CorsFilter {
    /// Builds the filter. `allow_origins` is required (`["*"]` for any origin, which cannot be
    /// combined with `allow_credentials`).
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        if st.allow_origins.is_empty() {
            return Err(FilterConfigError::at_key(
                "allow_origins",
                "allow_origins is empty",
                "list origins like \"https://app.example.com\", or \"*\"",
            ));
        }
        let origins = if st.allow_origins.iter().any(|o| o == "*") {
            if st.allow_credentials {
                return Err(FilterConfigError::at_key(
                    "allow_credentials",
                    "allow_credentials cannot be combined with allow_origins = [\"*\"] (browsers refuse it)",
                    "list the origins explicitly",
                ));
            }
            Origins::Any
        } else {
            for o in &st.allow_origins {
                if !(o.starts_with("http://") || o.starts_with("https://")) || o.ends_with('/') {
                    return Err(FilterConfigError::at_key(
                        "allow_origins",
                        format!("`{o}` is not an origin"),
                        "write origins as scheme://host[:port] without a path, e.g. \"https://app.example.com\"",
                    ));
                }
            }
            Origins::List(
                st.allow_origins
                    .iter()
                    .map(|o| o.to_ascii_lowercase())
                    .collect(),
            )
        };
        let methods = st
            .allow_methods
            .iter()
            .map(|m| {
                Method::from_bytes(m.to_ascii_uppercase().as_bytes()).map_err(|_| {
                    FilterConfigError::at_key(
                        "allow_methods",
                        format!("`{m}` is not an HTTP method"),
                        "use names like \"GET\"",
                    )
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        let methods_names: Vec<String> = methods.iter().map(|m| m.to_string()).collect();
        for h in st.allow_headers.iter().chain(&st.expose_headers) {
            super::header_name("allow_headers", h)?;
        }
        Ok(Self {
            origins,
            methods_value: list_value("allow_methods", &methods_names)?
                .unwrap_or_else(|| HeaderValue::from_static("GET, HEAD, POST")),
            methods,
            headers: st
                .allow_headers
                .iter()
                .map(|h| h.to_ascii_lowercase())
                .collect(),
            headers_value: list_value("allow_headers", &st.allow_headers)?,
            expose_value: list_value("expose_headers", &st.expose_headers)?,
            credentials: st.allow_credentials,
            max_age: HeaderValue::from(st.max_age_seconds),
        })
    }

    fn allowed_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        match &self.origins {
            Origins::Any => Some(HeaderValue::from_static("*")),
            Origins::List(list) => {
                let o = origin.to_str().ok()?.to_ascii_lowercase();
                list.contains(&o).then(|| origin.clone())
            }
        }
    }

    fn preflight_allows(&self, req: &request::Parts) -> bool {
        let method_ok = req
            .headers
            .get(ACCESS_CONTROL_REQUEST_METHOD)
            .and_then(|m| Method::from_bytes(m.as_bytes()).ok())
            .is_some_and(|m| self.methods.contains(&m));
        let headers_ok = req
            .headers
            .get_all(ACCESS_CONTROL_REQUEST_HEADERS)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(|h| h.trim().to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .all(|h| self.headers.contains(&h));
        method_ok && headers_ok
    }
}

#[async_trait]
impl Filter for CorsFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        let Some(origin) = req.headers.get(ORIGIN) else {
            return Flow::Continue;
        };
        let allowed = self.allowed_origin(origin);
        let is_preflight = req.method == Method::OPTIONS
            && req.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD);
        if is_preflight {
            let Some(allowed) = allowed.filter(|_| self.preflight_allows(req)) else {
                return Flow::Respond(reply::json_error(
                    StatusCode::FORBIDDEN,
                    "cors_rejected",
                    "this origin, method or header is not allowed by the route's CORS policy",
                ));
            };
            let mut resp = reply::empty(StatusCode::NO_CONTENT);
            let h = resp.headers_mut();
            h.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            h.insert(ACCESS_CONTROL_ALLOW_METHODS, self.methods_value.clone());
            if let Some(v) = &self.headers_value {
                h.insert(ACCESS_CONTROL_ALLOW_HEADERS, v.clone());
            }
            if self.credentials {
                h.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            h.insert(ACCESS_CONTROL_MAX_AGE, self.max_age.clone());
            h.append(VARY, HeaderValue::from_static("Origin"));
            return Flow::Respond(resp);
        }
        if let Some(allowed) = allowed {
            ctx.insert(AllowedOrigin(allowed));
        }
        Flow::Continue
    }

    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        if matches!(self.origins, Origins::List(_)) {
            resp.headers
                .append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(AllowedOrigin(origin)) = ctx.get::<AllowedOrigin>() else {
            return;
        };
        resp.headers
            .insert(ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
        if self.credentials {
            resp.headers.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose_value {
            resp.headers
                .insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(toml: &str) -> Result<CorsFilter, FilterConfigError> {
        CorsFilter::from_settings(&FilterSettings::from_toml(toml)?)
    }

    fn preflight(
        origin: &'static str,
        method: &'static str,
        headers: &'static str,
    ) -> request::Parts {
        let (mut req, _) = http::Request::new(()).into_parts();
        req.method = Method::OPTIONS;
        req.headers.insert(ORIGIN, HeaderValue::from_static(origin));
        req.headers.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static(method),
        );
        if !headers.is_empty() {
            req.headers.insert(
                ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static(headers),
            );
        }
        req
    }

    #[tokio::test]
    async fn preflights_are_answered_at_the_edge() {
        let f = filter(
            r#"allow_origins = ["https://app.example.com"]
               allow_methods = ["GET", "PUT"]
               allow_headers = ["Authorization"]
               allow_credentials = true
               max_age_seconds = 60"#,
        )
        .expect("valid");
        let mut ctx = FilterContext::default();
        let mut ok = preflight("https://app.example.com", "PUT", "authorization");
        let Flow::Respond(r) = f.on_request(&mut ok, &mut ctx).await else {
            panic!("answered");
        };
        assert_eq!(r.status(), 204);
        assert_eq!(
            r.headers()[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_METHODS], "GET, PUT");
        assert_eq!(r.headers()[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(r.headers()[ACCESS_CONTROL_MAX_AGE], "60");

        for bad in [
            preflight("https://evil.example", "PUT", ""),
            preflight("https://app.example.com", "DELETE", ""),
            preflight("https://app.example.com", "GET", "x-secret"),
        ] {
            let mut bad = bad;
            assert!(
                matches!(f.on_request(&mut bad, &mut ctx).await, Flow::Respond(r) if r.status() == 403)
            );
        }
    }

    #[tokio::test]
    async fn actual_requests_get_allow_origin() {
        let f = filter(
            r#"allow_origins = ["https://app.example.com"]
                          expose_headers = ["x-request-id"]"#,
        )
        .expect("valid");
        let (mut req, _) = http::Request::new(()).into_parts();
        req.headers
            .insert(ORIGIN, HeaderValue::from_static("https://app.example.com"));
        let mut ctx = FilterContext::default();
        assert!(matches!(
            f.on_request(&mut req, &mut ctx).await,
            Flow::Continue
        ));
        let (mut resp, _) = http::Response::new(()).into_parts();
        f.on_response(&mut resp, &mut ctx).await;
        assert_eq!(
            resp.headers[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://app.example.com"
        );
        assert_eq!(resp.headers[ACCESS_CONTROL_EXPOSE_HEADERS], "x-request-id");
        assert_eq!(resp.headers[VARY], "Origin");
    }

    #[test]
    fn wildcard_with_credentials_is_refused() {
        let e = filter("allow_origins = [\"*\"]\nallow_credentials = true").expect_err("refused");
        assert_eq!(e.key.as_deref(), Some("allow_credentials"));
        assert!(filter("allow_origins = [\"app.example.com\"]").is_err());
    }
}
