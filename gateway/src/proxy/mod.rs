//! The `ProxyHttp` implementation: drives pingora's phases for every request (route, pick an
//! endpoint, set proxy headers, map failures, write the access log).

use std::borrow::Cow;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use filters::{FilterChain, FilterContext, Flow};
use http::header::{HeaderName, HeaderValue, VIA};
use http::{Uri, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use resilience::{BulkheadPermit, Event, Outcome, Permit};

use crate::cluster::{Cluster, Picked};
use crate::config::{HashKey, RetryPolicy};
use crate::edge::{HeadLimits, Screen};
use crate::errors::GatewayError;
use crate::fallback::{self, Capture, Failure, LastGood};
use crate::metrics::{RequestEvents, RouteInFlight};
use crate::router::{request_host, RequestView};
use crate::runtime::{GatewayState, InFlightGuard, Route, Runtime};
use crate::telemetry::{started_ago, RequestTrace, TRACEPARENT, TRACESTATE};

mod exchange;
mod headers;
mod local;
mod observe;
mod reply;

use exchange::*;
use headers::*;
use observe::*;
use reply::*;

/// Attempts pingora may make per request: 10 retries (the config maximum), a fallback cluster,
/// and a retry of a stale pooled connection. Each retry is decided by [`GatewayProxy`].
pub(crate) const MAX_ATTEMPTS: usize = 13;

/// The gateway's pingora proxy logic.
#[derive(Debug, Clone)]
pub(crate) struct GatewayProxy {
    state: Arc<GatewayState>,
}

impl GatewayProxy {
    /// Proxy logic over shared gateway state.
    pub(crate) fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }
}

/// Per-request state carried between phases.
#[derive(Debug)]
pub(crate) struct RequestCtx {
    runtime: Arc<Runtime>,
    route: Option<usize>,
    picked: Option<Picked>,
    request_id: Option<HeaderValue>,
    /// The client: the socket peer, the PROXY protocol source, or what a trusted proxy
    /// reported.
    client_ip: Option<IpAddr>,
    /// The socket peer (or PROXY protocol source) and whether it is a trusted proxy.
    peer: Option<IpAddr>,
    peer_trusted: bool,
    /// The listener's limits for the upstream response head.
    limits: HeadLimits,
    tls: bool,
    started: Instant,
    error: Option<GatewayError>,
    /// What the route's filters share for this request.
    filters: FilterContext,
    /// A response a body filter answered with; sent by `fail_to_proxy`.
    filter_reply: Option<filters::Response>,
    /// The upstream exchange: attempts, breaker permit, bulkhead slot, retries, fallback.
    call: Call,
    /// The filter that answered the request itself.
    answered_by: Option<Box<str>>,
    /// The W3C trace context and, when tracing is on, the request's spans.
    trace: RequestTrace,
    /// Holds the request in its route's in-flight gauge.
    _route_flight: Option<RouteInFlight>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.runtime.routes.get(i))
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        RequestCtx {
            runtime: self.state.runtime(),
            route: None,
            picked: None,
            request_id: None,
            client_ip: None,
            peer: None,
            peer_trusted: false,
            limits: HeadLimits::default(),
            tls: false,
            started: Instant::now(),
            error: None,
            filters: FilterContext::default(),
            filter_reply: None,
            call: Call::default(),
            answered_by: None,
            trace: RequestTrace::default(),
            _route_flight: None,
            _in_flight: self.state.track(),
        }
    }

    /// Routes the request, fixes its request id and runs the route's request filters (the
    /// global ones when no route matches, then 404).
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        if let Some(answered) = self.screen(session, ctx).await? {
            return Ok(answered);
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        let req = session.req_header();
        let incoming_id = req
            .headers
            .get(X_REQUEST_ID)
            .filter(|v| usable_request_id(v));
        let id = incoming_id.cloned().unwrap_or_else(new_request_id);
        let need_insert = incoming_id.is_none();
        let view = RequestView {
            method: &req.method,
            host: request_host(&req.uri, &req.headers),
            path: req.uri.path(),
            headers: &req.headers,
        };
        ctx.route = ctx.runtime.find_route(&view);
        ctx._route_flight = ctx.route().map(|r| r.metrics.start());
        ctx.trace = RequestTrace::start(
            &req.headers,
            req.method.as_str(),
            req.uri.path(),
            session.client_addr().and_then(|a| a.as_inet()).copied(),
            started_ago(ctx.started.elapsed()),
        );
        if let Some(r) = ctx.route.and_then(|i| ctx.runtime.routes.get(i)) {
            ctx.trace
                .set_route(req.method.as_str(), &r.name, r.cluster.name());
        }
        if need_insert {
            session
                .req_header_mut()
                .insert_header(X_REQUEST_ID, id.clone())?;
        }
        ctx.filters = FilterContext::new(
            ctx.route().map(|r| r.name.clone()),
            ctx.client_ip,
            Some(id.clone()),
            ctx.tls,
        );
        ctx.request_id = Some(id);
        let chain = chain_of(&ctx.runtime, ctx.route);
        if !chain.is_empty() {
            if let Flow::Respond(resp) =
                crate::filtering::run_request(chain, session, &mut ctx.filters).await
            {
                ctx.answered_by = chain.responder(&ctx.filters).map(Into::into);
                filter_span(ctx, resp.status().as_u16());
                send_reply(session, ctx, resp, Connection::KeepAlive).await?;
                return Ok(true);
            }
        }
        if ctx.route.is_none() {
            ctx.error = Some(GatewayError::NoRoute);
            respond(session, ctx, GatewayError::NoRoute, Connection::KeepAlive).await?;
            return Ok(true);
        }
        Ok(false)
    }

    /// Runs the body filters (e.g. `body_limit`) on each piece of the request body; a refusal
    /// aborts the request and `fail_to_proxy` sends the filter's response.
    async fn request_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let chain = chain_of(&ctx.runtime, ctx.route);
        if !chain.inspects_body() {
            return Ok(());
        }
        if let Flow::Respond(resp) =
            chain.on_request_body(body.as_ref(), end_of_stream, &mut ctx.filters)
        {
            ctx.answered_by = chain.responder(&ctx.filters).map(Into::into);
            let status = resp.status().as_u16();
            filter_span(ctx, status);
            ctx.filter_reply = Some(resp);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "a filter refused the request body",
            ));
        }
        Ok(())
    }

    /// Admits the first attempt before pingora's proxy loop, so that a refusal (open breaker,
    /// full bulkhead, no endpoints) is answered here by the fallback or an error, and the
    /// client's connection stays open: pingora reuses it only for answers given before the
    /// loop.
    async fn proxy_upstream_filter(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<bool> {
        let runtime = ctx.runtime.clone();
        let Some(route) = ctx.route.and_then(|i| runtime.routes.get(i)) else {
            return Ok(true);
        };
        let now = Instant::now();
        let call = &mut ctx.call;
        call.target = Some(route.cluster.clone());
        route.cluster.budget().deposit(now);
        call.deadline = route
            .policy
            .timeout
            .or(route.cluster.spec().policy.timeout)
            .map(|t| now + t);
        match admit_attempt(route, session, ctx, now).await {
            Ok(picked) => {
                ctx.call.admitted = Some(picked);
                Ok(true)
            }
            Err(failure) => {
                let error = failure.error();
                ctx.call.failure = Some(failure);
                ctx.error = Some(error);
                if self.try_fallback(session, ctx, error, true).await.is_none() {
                    respond(session, ctx, error, Connection::KeepAlive).await?;
                }
                Ok(false)
            }
        }
    }

    /// Gives pingora the endpoint of each attempt: the one admitted before the loop, then for
    /// retries another admission (deadline, breaker, bulkhead) and an endpoint of the target
    /// cluster this request has not tried yet. Refusals move the request to the route's
    /// fallback cluster, or end it for the fallback in `fail_to_proxy`.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let runtime = ctx.runtime.clone();
        let route = ctx
            .route
            .and_then(|i| runtime.routes.get(i))
            .ok_or_else(|| {
                Error::explain(ErrorType::InternalError, "upstream_peer without a route")
            })?;
        let now = Instant::now();
        ctx.call.in_proxy_loop = true;
        ctx.call.attempts += 1;
        ctx.call.answered = false;
        ctx.call.status_retry = None;
        let picked = match ctx.call.admitted.take() {
            Some(picked) => picked,
            None => {
                ctx.call.permit = None;
                admit_attempt(route, session, ctx, now)
                    .await
                    .map_err(|failure| {
                        ctx.call.failure = Some(failure);
                        ctx.error = Some(failure.error());
                        Error::explain(
                            ErrorType::HTTPStatus(failure.error().status()),
                            "the upstream call was refused",
                        )
                    })?
            }
        };
        let call = &mut ctx.call;
        let cluster = call.target.clone().unwrap_or_else(|| route.cluster.clone());
        let per_try = route
            .policy
            .per_try_timeout
            .unwrap_or(cluster.spec().policy.per_try_timeout);
        let read = match call.deadline {
            Some(d) => per_try.min(d.saturating_duration_since(now)),
            None => per_try,
        };
        let mut peer = picked.peer();
        peer.options.read_timeout = Some(read.max(Duration::from_millis(1)));
        call.tried.push(picked.endpoint().address);
        call.attempt_started = Some(now);
        let fallback_reason = call.on_fallback_cluster.map(|f| f.reason());
        ctx.trace.attempt_started(
            cluster.name(),
            picked.endpoint().address,
            ctx.call.attempts,
            fallback_reason.as_deref(),
        );
        ctx.picked = Some(picked);
        Ok(peer)
    }

    /// Records the failed connect and decides whether to try another endpoint (the request
    /// was not sent, so any method may be retried).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let now = Instant::now();
        let (outcome, failure) = classify(e.etype(), Stage::Connecting);
        attempt_failed(ctx, outcome, failure, now);
        let retry = retry_decision(session, ctx, failure, false, now);
        e.set_retry(retry);
        e
    }

    /// Records a failure after the request was sent and decides on a retry: only before any
    /// response reached the client, for idempotent requests (unless the route allows others),
    /// within the retry budget and the deadline.
    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        if let Some(retry) = ctx.call.status_retry.take() {
            e.set_retry(retry);
            return e;
        }
        let now = Instant::now();
        if ctx.call.answered || e.esource() != &ErrorSource::Upstream {
            // The response was already under way, or the client failed: never retried.
            if ctx.call.answered && e.esource() == &ErrorSource::Upstream {
                if let (Some(c), Some(p)) = (&ctx.call.target, &ctx.picked) {
                    c.endpoint_failed(p, now);
                }
            }
            e.set_retry(false);
            return e;
        }
        // A pooled connection the upstream had already closed: pingora's own retry case,
        // not a sign of a sick endpoint.
        let mut stale = e.retry;
        stale.decide_reuse(client_reused);
        if stale.retry()
            && matches!(
                e.etype(),
                ErrorType::ConnectionClosed | ErrorType::ReadError
            )
            && session.req_header().method.is_idempotent()
            && !session.as_ref().retry_buffer_truncated()
            && ctx.call.attempts < MAX_ATTEMPTS as u32 - 1
        {
            ctx.call.permit = None;
            e.set_retry(true);
            return e;
        }
        let (outcome, failure) = classify(e.etype(), Stage::Exchanging);
        attempt_failed(ctx, outcome, failure, now);
        let retry = retry_decision(session, ctx, failure, true, now);
        e.set_retry(retry);
        e
    }

    /// Rewrites the path and adds X-Forwarded-For/Proto/Host and Via. Hop-by-hop headers were
    /// already removed by pingora's standard upstream request policy.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(rw) = ctx.route().and_then(|r| r.rewrite.as_ref()) {
            if let Some(path) = rw.apply(upstream.uri.path(), upstream.uri.query()) {
                let uri: Uri = path.parse().map_err(|e| {
                    Error::because(ErrorType::InternalError, "rewritten path is not a URI", e)
                })?;
                upstream.set_uri(uri);
            }
        }
        set_proxy_headers(session.req_header(), upstream, ctx)
    }

    /// Records the attempt's outcome (breaker, endpoint). A failure status is retried on
    /// another endpoint when the policy allows, or handed to the route's fallback when it can
    /// answer; otherwise the upstream's response is relayed. Good GET responses are recorded
    /// for `last_good` fallbacks.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let Some(cluster) = ctx.call.target.clone() else {
            return Ok(());
        };
        let now = Instant::now();
        if let Err(why) = ctx.limits.check_response(&resp.headers) {
            // Counted as the upstream's failure; never relayed, never retried.
            tracing::debug!(
                reason = why,
                cluster = cluster.name(),
                "upstream response head refused"
            );
            crate::metrics::metrics().edge_refusal("upstream_headers_too_large");
            attempt_failed(ctx, Outcome::Failure, Failure::Status(502), now);
            ctx.call.status_retry = Some(false);
            ctx.error = Some(GatewayError::UpstreamHeadersTooLarge);
            return Err(Error::explain(ErrorType::HTTPStatus(502), why));
        }
        let status = resp.status.as_u16();
        ctx.trace
            .attempt_answered(status, is_failure_status(&cluster, status));
        let runtime = ctx.runtime.clone();
        let Some(route) = ctx.route.and_then(|i| runtime.routes.get(i)) else {
            return Ok(());
        };
        let local_answer = || {
            let spec = route.policy.fallback.as_ref();
            let cached = match (&route.last_good, last_good_key(session)) {
                (Some(lg), Some(k)) => lg.answer(&k, now).is_some(),
                _ => false,
            };
            cached || spec.is_some_and(|s| s.response.is_some())
        };
        let facts = Facts::of(session, true);
        let verdict = on_response(
            route,
            &mut ctx.call,
            ctx.picked.as_ref(),
            status,
            facts,
            local_answer,
            now,
        );
        let explain = |what| Error::explain(ErrorType::HTTPStatus(status), what);
        match verdict {
            Verdict::AttemptAgain => {
                let reason = Failure::Status(status).reason();
                ctx.trace.end_attempt(Some(&reason));
                ctx.call.status_retry = Some(true);
                Err(explain("the upstream answered with a retryable status"))
            }
            Verdict::LocalFallback => {
                ctx.call.status_retry = Some(false);
                ctx.error = Some(GatewayError::UpstreamStatus);
                Err(explain("the upstream answered with a failure status"))
            }
            Verdict::Relay => {
                if ctx.call.failure.is_none() {
                    if let (Some(lg), Some(key)) = (&route.last_good, last_good_key(session)) {
                        ctx.call.capture = lg.capture(key, resp.status, &resp.headers);
                    }
                }
                Ok(())
            }
        }
    }

    /// Records the body of a response kept for `last_good` fallbacks.
    fn upstream_response_body_filter(
        &self,
        _session: &mut Session,
        body: &mut Option<Bytes>,
        end_of_stream: bool,
        ctx: &mut RequestCtx,
    ) -> Result<Option<Duration>> {
        let Some(capture) = &mut ctx.call.capture else {
            return Ok(None);
        };
        if !body.as_ref().is_none_or(|b| capture.push(b)) {
            ctx.call.capture = None;
        } else if end_of_stream {
            let capture = ctx.call.capture.take();
            let lg = ctx.route().and_then(|r| r.last_good.as_ref());
            if let (Some(lg), Some(c)) = (lg, capture) {
                lg.store(c, Instant::now());
            }
        }
        Ok(None)
    }

    /// Adds the request id and Via to the client's response, then runs the response filters.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        decide_keepalive(session, ctx, Connection::KeepAlive);
        if let Some(id) = &ctx.request_id {
            resp.insert_header(X_REQUEST_ID, id.clone())?;
        }
        let via = appended(
            resp.headers.get(VIA),
            &via_entry(&ctx.runtime, session.req_header().version),
        );
        if let Some(v) = via {
            resp.insert_header(VIA, v)?;
        }
        if let (Some(failure), Some(cluster)) = (ctx.call.on_fallback_cluster, &ctx.call.target) {
            let v = format!("cluster={}; reason={}", cluster.name(), failure.reason());
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.insert_header(fallback::X_FALLBACK, v)?;
            }
        }
        let chain = chain_of(&ctx.runtime, ctx.route);
        if !chain.is_empty() {
            crate::filtering::run_response(chain, resp, &mut ctx.filters).await;
        }
        Ok(())
    }

    /// Maps the failure to a status and JSON body, in one place ([`GatewayError`]).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        if let Some(reply) = ctx.filter_reply.take() {
            // The request body was not read to its end, so the connection cannot be reused.
            let status = reply.status().as_u16();
            if session.response_written().is_none() {
                if let Err(write_err) = send_reply(session, ctx, reply, Connection::Close).await {
                    tracing::debug!(error = %write_err, "could not send the filter's response");
                }
            }
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: false,
            };
        }
        let error = ctx.error.or_else(|| GatewayError::classify(e));
        ctx.error = error;
        let Some(error) = error else {
            return FailToProxy {
                error_code: 0,
                can_reuse_downstream: false,
            };
        };
        // pingora reuses the connection only for failures before its proxy loop; otherwise it
        // closes, and the response must say so or the client reuses a dead socket.
        let reusable = !ctx.call.in_proxy_loop;
        if let Some(status) = self.try_fallback(session, ctx, error, reusable).await {
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: reusable,
            };
        }
        if session.response_written().is_none() {
            let connection = if reusable {
                Connection::KeepAlive
            } else {
                Connection::Close
            };
            if let Err(write_err) = respond(session, ctx, error, connection).await {
                tracing::debug!(error = %write_err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: error.status(),
            can_reuse_downstream: reusable,
        }
    }

    /// Records the request's outcome (metrics, the Hystrix window) and writes its access log
    /// line.
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut RequestCtx) {
        record(session, ctx);
    }
}
