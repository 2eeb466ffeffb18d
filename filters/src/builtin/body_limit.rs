//! `body_limit`: refuses request bodies larger than `max_bytes` with 413: at once when
//! `Content-Length` says so, otherwise while the body streams (chunked uploads), before the
//! excess reaches the upstream.

use async_trait::async_trait;
use bytes::Bytes;
use http::header::CONTENT_LENGTH;
use http::{request, StatusCode};
use serde::Deserialize;

use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    max_bytes: i64,
}

/// The `body_limit` filter.
#[derive(Debug)]
pub struct BodyLimitFilter {
    max: u64,
}

/// Body bytes seen so far in this request.
#[derive(Debug, Clone, Copy, Default)]
struct Seen(u64);

impl BodyLimitFilter {
    /// Builds the filter from `max_bytes`.
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        if st.max_bytes < 0 {
            return Err(FilterConfigError::at_key(
                "max_bytes",
                format!("max_bytes = {} is negative", st.max_bytes),
                "use a size in bytes, e.g. 1048576 for 1 MiB",
            ));
        }
        Ok(Self {
            max: st.max_bytes.unsigned_abs(),
        })
    }

    fn too_large(&self) -> Flow {
        Flow::Respond(reply::json_error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            &format!(
                "the request body exceeds this route's limit of {} bytes",
                self.max
            ),
        ))
    }
}

#[async_trait]
impl Filter for BodyLimitFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        let declared = req
            .headers
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > self.max) {
            return self.too_large();
        }
        ctx.insert(Seen(0));
        Flow::Continue
    }

    fn inspects_body(&self) -> bool {
        true
    }

    fn on_request_body(
        &self,
        chunk: Option<&Bytes>,
        _end_of_stream: bool,
        ctx: &mut FilterContext,
    ) -> Flow {
        let n = chunk.map_or(0, |c| c.len() as u64);
        let total = match ctx.get_mut::<Seen>() {
            Some(seen) => {
                seen.0 += n;
                seen.0
            }
            None => n,
        };
        if total > self.max {
            return self.too_large();
        }
        Flow::Continue
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn filter(max: i64) -> BodyLimitFilter {
        BodyLimitFilter::from_settings(
            &FilterSettings::from_toml(&format!("max_bytes = {max}")).expect("toml"),
        )
        .expect("valid")
    }

    #[tokio::test]
    async fn content_length_over_the_limit_is_refused_at_once() {
        let f = filter(10);
        let (mut req, _) = http::Request::new(()).into_parts();
        req.headers
            .insert(CONTENT_LENGTH, HeaderValue::from_static("11"));
        let mut ctx = FilterContext::default();
        assert!(
            matches!(f.on_request(&mut req, &mut ctx).await, Flow::Respond(r) if r.status() == 413)
        );
    }

    #[tokio::test]
    async fn streamed_bodies_are_counted() {
        let f = filter(10);
        let (mut req, _) = http::Request::new(()).into_parts();
        let mut ctx = FilterContext::default();
        assert!(matches!(
            f.on_request(&mut req, &mut ctx).await,
            Flow::Continue
        ));
        let six = Bytes::from_static(b"123456");
        assert!(matches!(
            f.on_request_body(Some(&six), false, &mut ctx),
            Flow::Continue
        ));
        assert!(matches!(
            f.on_request_body(Some(&six), false, &mut ctx),
            Flow::Respond(r) if r.status() == 413
        ));
    }

    #[test]
    fn negative_limit_is_a_config_error() {
        let e = BodyLimitFilter::from_settings(
            &FilterSettings::from_toml("max_bytes = -1").expect("toml"),
        )
        .expect_err("negative");
        assert_eq!(e.key.as_deref(), Some("max_bytes"));
    }
}
