//! The [`Filter`] trait and the [`Flow`] a request filter returns.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use http::{request, response};

use crate::{FilterContext, Response};

/// What the chain does after a request filter ran.
#[derive(Debug)]
pub enum Flow {
    /// Run the next filter; after the last one, send the request upstream.
    Continue,
    /// Answer the client with this response; later request filters and the upstream call are
    /// skipped. Response filters of the filters that ran before this one still run on it.
    Respond(Response),
}

/// A unit of request/response logic, built once per config version by its factory and shared
/// by every request on the routes that list it.
///
/// Every method has a default that does nothing, so a filter implements only the phases it
/// needs. Filters must be cheap on the hot path: parse and validate settings in the factory,
/// not per request.
#[async_trait]
pub trait Filter: Send + Sync + fmt::Debug + 'static {
    /// Runs before the request is sent upstream, in chain order. The filter may change the
    /// method, URI and headers (the upstream receives the changed request), store values in
    /// `ctx` for later filters, or answer. Default: [`Flow::Continue`].
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        let _ = (req, ctx);
        Flow::Continue
    }

    /// Runs on each piece of the request body as it streams upstream (only for filters whose
    /// [`Filter::inspects_body`] is true). `chunk` is `None` when the body ended without data.
    /// Returning [`Flow::Respond`] aborts the request with that response (when nothing was
    /// sent to the client yet). Default: [`Flow::Continue`].
    fn on_request_body(
        &self,
        chunk: Option<&Bytes>,
        end_of_stream: bool,
        ctx: &mut FilterContext,
    ) -> Flow {
        let _ = (chunk, end_of_stream, ctx);
        Flow::Continue
    }

    /// Whether [`Filter::on_request_body`] should be called. Default: false, so bodies stream
    /// without a per-chunk call.
    fn inspects_body(&self) -> bool {
        false
    }

    /// Whether a config reload that leaves this filter's place and settings unchanged keeps
    /// this instance (and its state, e.g. rate-limit buckets) instead of a fresh one. Filters
    /// that read files or remote keys at build time should say `false` (the default), so a
    /// reload picks up new contents.
    fn keep_across_reloads(&self) -> bool {
        false
    }

    /// Runs on the response head before it is sent to the client, in reverse chain order. Runs
    /// for upstream responses and for responses the gateway made (filter answers, errors,
    /// fallbacks). Default: nothing.
    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        let _ = (resp, ctx);
    }
}
