//! `request_id`: passes the gateway's request id (always set: a usable `X-Request-Id` from
//! the client or a fresh UUID) upstream and back under another header name, for services and
//! clients that correlate by, say, `X-Correlation-Id`.

use async_trait::async_trait;
use http::{request, response, HeaderName};
use serde::Deserialize;

use super::header_name;
use crate::{Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    header: Option<String>,
    #[serde(default = "yes")]
    response: bool,
}

fn yes() -> bool {
    true
}

/// The `request_id` filter.
#[derive(Debug)]
pub struct RequestIdFilter {
    header: HeaderName,
    response: bool,
}

impl RequestIdFilter {
    /// Builds the filter: `header` (default `x-correlation-id`) carries the id; `response`
    /// (default true) also returns it to the client.
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        Ok(Self {
            header: header_name("header", st.header.as_deref().unwrap_or("x-correlation-id"))?,
            response: st.response,
        })
    }
}

#[async_trait]
impl Filter for RequestIdFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        // A client-sent value under this name is replaced: the gateway's id is authoritative.
        match ctx.request_id() {
            Some(id) => {
                req.headers.insert(self.header.clone(), id.clone());
            }
            None => {
                req.headers.remove(&self.header);
            }
        }
        Flow::Continue
    }

    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        if let (true, Some(id)) = (self.response, ctx.request_id()) {
            resp.headers.insert(self.header.clone(), id.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[tokio::test]
    async fn copies_the_id_both_ways() {
        let f = RequestIdFilter::from_settings(&FilterSettings::default()).expect("defaults");
        let mut ctx = FilterContext::new(None, None, Some(HeaderValue::from_static("id-7")), false);
        let (mut req, _) = http::Request::new(()).into_parts();
        req.headers
            .insert("x-correlation-id", HeaderValue::from_static("client-made"));
        f.on_request(&mut req, &mut ctx).await;
        assert_eq!(req.headers["x-correlation-id"], "id-7");
        let (mut resp, _) = http::Response::new(()).into_parts();
        f.on_response(&mut resp, &mut ctx).await;
        assert_eq!(resp.headers["x-correlation-id"], "id-7");
    }

    #[test]
    fn bad_header_name_is_refused() {
        let s = FilterSettings::from_toml("header = \"a b\"").expect("toml");
        let e = RequestIdFilter::from_settings(&s).expect_err("invalid");
        assert_eq!(e.key.as_deref(), Some("header"));
    }
}
