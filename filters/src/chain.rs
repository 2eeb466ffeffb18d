//! An ordered list of filters: request filters in order, response filters in reverse.

use std::sync::Arc;

use bytes::Bytes;
use http::{request, response};

use crate::{Filter, FilterContext, Flow};

/// A filter with the name it was configured under (for logs and the admin API).
#[derive(Debug, Clone)]
pub struct NamedFilter {
    /// The registry name (`jwt`, `rate_limit`, a plugin's name).
    pub name: Arc<str>,
    /// The built filter.
    pub filter: Arc<dyn Filter>,
    /// Identifies the filter's place and settings (e.g. owner, name and settings text), so a
    /// config reload can keep the instance, and its state (rate-limit buckets, key caches),
    /// when nothing about it changed. Empty: never reused.
    pub fingerprint: Arc<str>,
}

impl NamedFilter {
    /// Names a built filter.
    pub fn new(name: impl Into<Arc<str>>, filter: Arc<dyn Filter>) -> Self {
        Self {
            name: name.into(),
            filter,
            fingerprint: Arc::from(""),
        }
    }

    /// Sets the fingerprint.
    pub fn with_fingerprint(mut self, fingerprint: impl Into<Arc<str>>) -> Self {
        self.fingerprint = fingerprint.into();
        self
    }
}

/// The filters a route runs, global ones first. Built once per config version.
#[derive(Debug, Clone, Default)]
pub struct FilterChain {
    filters: Vec<NamedFilter>,
    /// Indexes of the filters that inspect request bodies, so bodies of other routes stream
    /// without per-chunk calls.
    body_filters: Vec<usize>,
}

impl FilterChain {
    /// A chain running `filters` in this order.
    pub fn new(filters: Vec<NamedFilter>) -> Self {
        let body_filters = filters
            .iter()
            .enumerate()
            .filter(|(_, f)| f.filter.inspects_body())
            .map(|(i, _)| i)
            .collect();
        Self {
            filters,
            body_filters,
        }
    }

    /// `first` followed by `then` (global filters, then a route's own).
    pub fn concat(first: &[NamedFilter], then: &[NamedFilter]) -> Self {
        Self::new(first.iter().chain(then).cloned().collect())
    }

    /// Whether the chain has no filters (the proxy then skips the filter phases entirely).
    pub fn is_empty(&self) -> bool {
        self.filters.is_empty()
    }

    /// The filters' names in order.
    pub fn names(&self) -> Vec<&str> {
        self.filters.iter().map(|f| &*f.name).collect()
    }

    /// The filter that answered the request itself, after [`FilterChain::on_request`] (or
    /// [`FilterChain::on_request_body`]) returned `Flow::Respond`.
    pub fn responder(&self, ctx: &FilterContext) -> Option<&str> {
        ctx.answered
            .and_then(|i| self.filters.get(i))
            .map(|f| &*f.name)
    }

    /// Whether any filter inspects request bodies.
    pub fn inspects_body(&self) -> bool {
        !self.body_filters.is_empty()
    }

    /// Runs the request filters in order until one answers. Only the filters that ran
    /// completely (those before an answering one) get their response phase later.
    pub async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        ctx.ran = 0;
        for f in &self.filters {
            match f.filter.on_request(req, ctx).await {
                Flow::Continue => ctx.ran += 1,
                respond @ Flow::Respond(_) => {
                    ctx.answered = Some(ctx.ran);
                    return respond;
                }
            }
        }
        Flow::Continue
    }

    /// Runs the body filters on one piece of the request body (only filters whose request
    /// phase ran).
    pub fn on_request_body(
        &self,
        chunk: Option<&Bytes>,
        end_of_stream: bool,
        ctx: &mut FilterContext,
    ) -> Flow {
        for &i in &self.body_filters {
            if i >= ctx.ran {
                break;
            }
            if let Some(f) = self.filters.get(i) {
                if let respond @ Flow::Respond(_) =
                    f.filter.on_request_body(chunk, end_of_stream, ctx)
                {
                    ctx.answered = Some(i);
                    return respond;
                }
            }
        }
        Flow::Continue
    }

    /// Runs the response filters of the filters whose request phase ran, in reverse order.
    pub async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        let ran = ctx.ran.min(self.filters.len());
        for f in self.filters.get(..ran).unwrap_or_default().iter().rev() {
            f.filter.on_response(resp, ctx).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;
    use http::{HeaderValue, StatusCode};

    use super::*;
    use crate::reply;

    /// Appends its tag to `x-trace` on the request and the response; answers when told to.
    #[derive(Debug)]
    struct Tag {
        tag: &'static str,
        answer: bool,
        body_seen: Mutex<usize>,
    }

    fn tag(tag: &'static str, answer: bool) -> NamedFilter {
        NamedFilter::new(
            tag,
            Arc::new(Tag {
                tag,
                answer,
                body_seen: Mutex::new(0),
            }),
        )
    }

    fn push(headers: &mut http::HeaderMap, tag: &str) {
        let prev = headers
            .get("x-trace")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let next = if prev.is_empty() {
            tag.to_owned()
        } else {
            format!("{prev},{tag}")
        };
        headers.insert("x-trace", HeaderValue::from_str(&next).expect("ascii"));
    }

    #[async_trait]
    impl Filter for Tag {
        async fn on_request(&self, req: &mut request::Parts, _ctx: &mut FilterContext) -> Flow {
            push(&mut req.headers, self.tag);
            if self.answer {
                return Flow::Respond(reply::json_error(StatusCode::FORBIDDEN, "no", "told to"));
            }
            Flow::Continue
        }
        fn inspects_body(&self) -> bool {
            true
        }
        fn on_request_body(
            &self,
            chunk: Option<&Bytes>,
            _eos: bool,
            _ctx: &mut FilterContext,
        ) -> Flow {
            if let Ok(mut n) = self.body_seen.lock() {
                *n += chunk.map_or(0, Bytes::len);
            }
            Flow::Continue
        }
        async fn on_response(&self, resp: &mut response::Parts, _ctx: &mut FilterContext) {
            push(&mut resp.headers, self.tag);
        }
    }

    fn parts() -> (request::Parts, response::Parts) {
        (
            http::Request::new(()).into_parts().0,
            http::Response::new(()).into_parts().0,
        )
    }

    #[tokio::test]
    async fn requests_in_order_responses_in_reverse() {
        let chain = FilterChain::concat(&[tag("g", false)], &[tag("a", false), tag("b", false)]);
        assert_eq!(chain.names(), ["g", "a", "b"]);
        let (mut req, mut resp) = parts();
        let mut ctx = FilterContext::default();
        assert!(matches!(
            chain.on_request(&mut req, &mut ctx).await,
            Flow::Continue
        ));
        assert_eq!(req.headers["x-trace"], "g,a,b");
        chain.on_response(&mut resp, &mut ctx).await;
        assert_eq!(resp.headers["x-trace"], "b,a,g");
    }

    #[tokio::test]
    async fn an_answer_stops_the_chain_and_earlier_response_filters_still_run() {
        let chain = FilterChain::new(vec![tag("a", false), tag("stop", true), tag("c", false)]);
        let (mut req, _) = parts();
        let mut ctx = FilterContext::default();
        let Flow::Respond(answer) = chain.on_request(&mut req, &mut ctx).await else {
            panic!("the second filter answers");
        };
        assert_eq!(req.headers["x-trace"], "a,stop", "c never ran");
        let (mut head, _) = answer.into_parts();
        assert_eq!(head.status, StatusCode::FORBIDDEN);
        chain.on_response(&mut head, &mut ctx).await;
        assert_eq!(
            head.headers["x-trace"], "a",
            "only filters before the answer"
        );
    }

    #[tokio::test]
    async fn body_filters_see_chunks_only_after_their_request_phase() {
        let chain = FilterChain::new(vec![tag("a", false), tag("stop", true)]);
        assert!(chain.inspects_body());
        let (mut req, _) = parts();
        let mut ctx = FilterContext::default();
        let _ = chain.on_request(&mut req, &mut ctx).await;
        let chunk = Bytes::from_static(b"12345");
        assert!(matches!(
            chain.on_request_body(Some(&chunk), true, &mut ctx),
            Flow::Continue
        ));
        assert!(FilterChain::default().is_empty());
    }
}
