//! `headers`: adds, sets and removes request and response headers. Values are templates that
//! may use request data (`${client_ip}`, `${request_id}`, `${route}`, `${claim.NAME}`,
//! `${header.NAME}`).
//!
//! Per direction the order is: remove, then set (replace; a set whose template has no value
//! removes the header, so a client can never supply it), then add (append; skipped when the
//! template has no value).

use std::collections::BTreeMap;

use async_trait::async_trait;
use http::{request, response, HeaderMap, HeaderName};
use serde::Deserialize;

use super::header_name;
use crate::{Filter, FilterConfigError, FilterContext, FilterSettings, Flow, Template};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    request_set: BTreeMap<String, String>,
    #[serde(default)]
    request_add: BTreeMap<String, String>,
    #[serde(default)]
    request_remove: Vec<String>,
    #[serde(default)]
    response_set: BTreeMap<String, String>,
    #[serde(default)]
    response_add: BTreeMap<String, String>,
    #[serde(default)]
    response_remove: Vec<String>,
}

#[derive(Debug, Default)]
struct Edits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, Template)>,
    add: Vec<(HeaderName, Template)>,
}

impl Edits {
    fn parse(
        prefix: &str,
        set: &BTreeMap<String, String>,
        add: &BTreeMap<String, String>,
        remove: &[String],
    ) -> Result<Self, FilterConfigError> {
        let templates = |key: &str, map: &BTreeMap<String, String>| {
            map.iter()
                .map(|(name, value)| {
                    let t = Template::parse(value).map_err(|e| {
                        FilterConfigError::at_key(
                            key,
                            format!("{key}.{name}: {e}"),
                            "write values like \"user-${claim.sub}\"",
                        )
                    })?;
                    Ok((header_name(key, name)?, t))
                })
                .collect::<Result<Vec<_>, FilterConfigError>>()
        };
        let remove_key = format!("{prefix}_remove");
        Ok(Self {
            remove: remove
                .iter()
                .map(|n| header_name(&remove_key, n))
                .collect::<Result<_, _>>()?,
            set: templates(&format!("{prefix}_set"), set)?,
            add: templates(&format!("{prefix}_add"), add)?,
        })
    }

    fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    fn apply(&self, headers: &mut HeaderMap, req: &request::Parts, ctx: &FilterContext) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, t) in &self.set {
            match t.render(req, ctx) {
                Some(v) => {
                    headers.insert(name.clone(), v);
                }
                None => {
                    headers.remove(name);
                }
            }
        }
        for (name, t) in &self.add {
            if let Some(v) = t.render(req, ctx) {
                headers.append(name.clone(), v);
            }
        }
    }
}

/// The `headers` filter.
#[derive(Debug)]
pub struct HeadersFilter {
    request: Edits,
    response: Edits,
    /// Response templates can use `${header.NAME}` of the request, so the request headers
    /// they need are kept.
    response_uses_request: bool,
}

/// Request headers kept for response templates.
#[derive(Debug, Clone)]
struct RequestHeadersForResponse(std::sync::Arc<request::Parts>);

impl HeadersFilter {
    /// Builds the filter from its settings.
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        let request = Edits::parse(
            "request",
            &st.request_set,
            &st.request_add,
            &st.request_remove,
        )?;
        let response = Edits::parse(
            "response",
            &st.response_set,
            &st.response_add,
            &st.response_remove,
        )?;
        if request.is_empty() && response.is_empty() {
            return Err(FilterConfigError::new(
                "the headers filter has nothing to do",
                "add request_set, request_add, request_remove, response_set, response_add or response_remove",
            ));
        }
        let response_uses_request = st
            .response_set
            .values()
            .chain(st.response_add.values())
            .any(|v| v.contains("${header."));
        Ok(Self {
            request,
            response,
            response_uses_request,
        })
    }
}

#[async_trait]
impl Filter for HeadersFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        if self.response_uses_request {
            let mut copy = http::Request::new(()).into_parts().0;
            copy.headers = req.headers.clone();
            ctx.insert(RequestHeadersForResponse(std::sync::Arc::new(copy)));
        }
        if !self.request.is_empty() {
            let mut headers = std::mem::take(&mut req.headers);
            self.request.apply(&mut headers, req, ctx);
            req.headers = headers;
        }
        Flow::Continue
    }

    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        if self.response.is_empty() {
            return;
        }
        let empty;
        let req = match ctx.get::<RequestHeadersForResponse>() {
            Some(r) => r.0.clone(),
            None => {
                empty = std::sync::Arc::new(http::Request::new(()).into_parts().0);
                empty
            }
        };
        self.response.apply(&mut resp.headers, &req, ctx);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::HeaderValue;

    use super::*;
    use crate::Identity;

    fn filter(toml: &str) -> Result<HeadersFilter, FilterConfigError> {
        HeadersFilter::from_settings(&FilterSettings::from_toml(toml)?)
    }

    #[tokio::test]
    async fn edits_request_and_response() {
        let f = filter(
            r#"
            request_set = { "x-user" = "${claim.sub}", "x-client" = "${client_ip}" }
            request_add = { "x-tag" = "gw" }
            request_remove = ["x-internal"]
            response_set = { "x-seen-ua" = "${header.user-agent}" }
            response_remove = ["server"]
            "#,
        )
        .expect("valid");
        let (mut req, _) = http::Request::new(()).into_parts();
        req.headers
            .insert("x-user", HeaderValue::from_static("spoofed"));
        req.headers
            .insert("x-internal", HeaderValue::from_static("1"));
        req.headers
            .insert("x-tag", HeaderValue::from_static("client"));
        req.headers
            .insert("user-agent", HeaderValue::from_static("ua/1"));
        let mut ctx = FilterContext::new(None, Some([1, 2, 3, 4].into()), None, false);
        f.on_request(&mut req, &mut ctx).await;
        assert!(req.headers.get("x-user").is_none(), "no identity: removed");
        assert!(req.headers.get("x-internal").is_none());
        assert_eq!(req.headers["x-client"], "1.2.3.4");
        assert_eq!(req.headers.get_all("x-tag").iter().count(), 2);

        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "u9".into());
        ctx.set_identity(Arc::new(Identity {
            subject: Some("u9".into()),
            claims,
        }));
        f.on_request(&mut req, &mut ctx).await;
        assert_eq!(req.headers["x-user"], "u9");

        let (mut resp, _) = http::Response::new(()).into_parts();
        resp.headers.insert("server", HeaderValue::from_static("x"));
        f.on_response(&mut resp, &mut ctx).await;
        assert!(resp.headers.get("server").is_none());
        assert_eq!(resp.headers["x-seen-ua"], "ua/1");
    }

    #[test]
    fn rejects_bad_settings() {
        assert!(filter("").expect_err("empty").message.contains("nothing"));
        let e = filter(r#"request_set = { "bad name" = "x" }"#).expect_err("name");
        assert_eq!(e.key.as_deref(), Some("request_set"));
        let e = filter(r#"response_add = { "x-a" = "${nope}" }"#).expect_err("template");
        assert!(e.message.contains("unknown placeholder"), "{e}");
    }
}
