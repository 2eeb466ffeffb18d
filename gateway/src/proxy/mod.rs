//! The `ProxyHttp` implementation: thin adapters over pingora's phases. Each phase reads what
//! it needs from the session and hands the work to the router, the filter chain, the
//! upstream [`Exchange`](exchange::Exchange), the reply writer ([`reply`]) and the observer
//! ([`observe`]).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use filters::{FilterContext, Flow};
use http::header::{HeaderValue, VIA};
use http::Uri;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::modules::http::HttpModules;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};
use resilience::{Failure, LimitPermit};

use crate::edge::HeadLimits;
use crate::errors::{upstream_failure, GatewayError};
use crate::fallback::{self, Capture};
use crate::metrics::RouteInFlight;
use crate::router::{host_of, RequestView};
use crate::runtime::{GatewayState, InFlightGuard, Route, Runtime};
use crate::telemetry::{RequestTrace, TRACEPARENT};

mod exchange;
mod headers;
mod load_report;
mod local;
mod observe;
mod reply;

use exchange::{Exchange, Facts, Next, Verdict};
use headers::{
    appended, carried, forwarded_host, hash_input, last_good_key, new_request_id,
    set_proxy_headers, usable_request_id, via_entry, X_REQUEST_ID,
};
pub(crate) use load_report::LoadMetric;
use reply::{chain_of, decide_keepalive, Connection, Reply};

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
    /// The matched route (its own `Arc`: the request keeps it across a reload).
    route: Option<Arc<Route>>,
    /// The upstream exchange, from the first admission on.
    exchange: Option<Exchange>,
    /// `X-Forwarded-Host` for the upstream: the host the client asked for.
    forwarded_host: Option<HeaderValue>,
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
    /// What the gateway answered with, when it answered itself.
    error: Option<GatewayError>,
    /// What the route's filters share for this request.
    filters: FilterContext,
    /// A response a body filter answered with; sent by `fail_to_proxy`.
    filter_reply: Option<filters::Response>,
    /// The filter that answered the request itself.
    answered_by: Option<Box<str>>,
    /// The response being recorded for `last_good` fallbacks.
    capture: Option<Capture>,
    /// pingora's proxy loop was entered: a failure from here on closes the client
    /// connection (pingora does not reuse it), so the answer must say `Connection: close`.
    in_proxy_loop: bool,
    /// The W3C trace context and, when tracing is on, the request's spans.
    trace: RequestTrace,
    /// The request's slot of the gateway's inbound limit, if it has one.
    _inbound: Option<LimitPermit>,
    /// Holds the request in its route's in-flight gauge.
    _route_flight: Option<RouteInFlight>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    /// What pingora's session says about resending the request.
    fn facts(session: &Session) -> Facts {
        Facts {
            idempotent: session.req_header().method.is_idempotent(),
            response_started: session.response_written().is_some(),
            body_replayable: !session.as_ref().retry_buffer_truncated(),
        }
    }

    /// How the client connection ends after a gateway-made answer now: pingora reuses it only
    /// for answers given before its proxy loop.
    fn connection(&self) -> Connection {
        if self.in_proxy_loop {
            Connection::Close
        } else {
            Connection::KeepAlive
        }
    }
}

#[async_trait]
impl ProxyHttp for GatewayProxy {
    /// Boxed: pingora moves the context by value (out of `new_ctx`, into and within the
    /// request's future), and a request's state is about a kilobyte; a box moves as a pointer.
    type CTX = Box<RequestCtx>;

    /// No downstream modules. pingora's default adds its response compression module,
    /// disabled, which still gave every request a module context and three boxed filter
    /// calls (five allocations); the gateway does not compress responses.
    fn init_downstream_modules(&self, _modules: &mut HttpModules) {}

    fn new_ctx(&self) -> Box<RequestCtx> {
        Box::new(RequestCtx {
            runtime: self.state.runtime(),
            route: None,
            exchange: None,
            forwarded_host: None,
            client_ip: None,
            peer: None,
            peer_trusted: false,
            limits: HeadLimits::default(),
            tls: false,
            started: Instant::now(),
            error: None,
            filters: FilterContext::default(),
            filter_reply: None,
            answered_by: None,
            capture: None,
            in_proxy_loop: false,
            trace: RequestTrace::default(),
            _inbound: None,
            _route_flight: None,
            _in_flight: self.state.track(),
        })
    }

    /// Routes the request, fixes its request id and runs the route's request filters (the
    /// global ones when no route matches, then 404).
    async fn request_filter(&self, session: &mut Session, ctx: &mut Self::CTX) -> Result<bool> {
        if self.screen(session, ctx).await? {
            return Ok(true);
        }
        ctx.tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
        if !ctx.runtime.preserve_header_case {
            // Names are then written from the header map itself: the gateway's own fields are
            // added to one map, not two, and the upstream copy of the head is smaller.
            session.req_header_mut().drop_header_case();
        }
        if let Some(answer) = self.acme_http01(session) {
            reply::write(session, ctx, Reply::answer(answer, Connection::KeepAlive)).await?;
            return Ok(true);
        }
        let (client_cert, xfcc) = session
            .digest()
            .and_then(|d| d.ssl_digest.as_ref())
            .and_then(|s| s.extension.get::<crate::tls::ConnTls>())
            .map_or((None, None), |t| (t.client_cert.clone(), t.xfcc.clone()));
        let [has_xfcc, has_id, has_traceparent] = carried(
            &session.req_header().headers,
            [&crate::tls::XFCC, &X_REQUEST_ID, &TRACEPARENT],
        );
        // The client-certificate header is the gateway's to set: never the client's.
        if has_xfcc {
            session.req_header_mut().remove_header(&crate::tls::XFCC);
        }
        if let Some(xfcc) = xfcc {
            session
                .req_header_mut()
                .insert_header(crate::tls::XFCC, xfcc)?;
        }
        let req = session.req_header();
        let incoming_id = has_id
            .then(|| req.headers.get(X_REQUEST_ID))
            .flatten()
            .filter(|v| usable_request_id(v));
        let id = incoming_id.cloned().unwrap_or_else(new_request_id);
        let need_insert = incoming_id.is_none();
        let host_field = req.headers.get(http::header::HOST);
        let host = host_of(&req.uri, host_field);
        ctx.forwarded_host = forwarded_host(host_field, host);
        let view = RequestView {
            method: &req.method,
            host,
            path: req.uri.path(),
            headers: &req.headers,
        };
        ctx.route = ctx.runtime.find_route(&view).cloned();
        ctx._route_flight = ctx.route.as_ref().map(|r| r.metrics.start());
        ctx.trace = RequestTrace::start(
            &req.headers,
            has_traceparent,
            req.method.as_str(),
            req.uri.path(),
            session.client_addr().and_then(|a| a.as_inet()).copied(),
            ctx.started,
        );
        if let Some(r) = &ctx.route {
            ctx.trace
                .set_route(req.method.as_str(), &r.name, r.cluster.name());
        }
        if need_insert {
            session
                .req_header_mut()
                .insert_header(X_REQUEST_ID, id.clone())?;
        }
        ctx.filters = FilterContext::new(
            ctx.route.as_ref().map(|r| r.name.clone()),
            ctx.client_ip,
            Some(id),
            ctx.tls,
        );
        if let Some(cert) = client_cert {
            ctx.filters.set_client_certificate(cert);
        }
        if let Some(priority) = ctx.route.as_ref().map(|r| r.policy.priority) {
            if self.admit_inbound(session, ctx, priority).await? {
                return Ok(true);
            }
        }
        let chain = chain_of(&ctx.runtime, ctx.route.as_deref());
        if !chain.is_empty() {
            if let Flow::Respond(resp) =
                crate::filtering::run_request(chain, session, &mut ctx.filters).await
            {
                ctx.answered_by = chain.responder(&ctx.filters).map(Into::into);
                observe::filter_span(ctx, resp.status().as_u16());
                reply::write(session, ctx, Reply::answer(resp, Connection::KeepAlive)).await?;
                return Ok(true);
            }
        }
        if ctx.route.is_none() {
            reply::write_error(session, ctx, GatewayError::NoRoute, Connection::KeepAlive).await?;
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
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let chain = chain_of(&ctx.runtime, ctx.route.as_deref());
        if !chain.inspects_body() {
            return Ok(());
        }
        if let Flow::Respond(resp) =
            chain.on_request_body(body.as_ref(), end_of_stream, &mut ctx.filters)
        {
            ctx.answered_by = chain.responder(&ctx.filters).map(Into::into);
            let status = resp.status().as_u16();
            observe::filter_span(ctx, status);
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
        ctx: &mut Self::CTX,
    ) -> Result<bool> {
        let Some(route) = ctx.route.clone() else {
            return Ok(true);
        };
        let now = Instant::now();
        let req = session.req_header();
        let client_ip = ctx.client_ip;
        let priority = ctx.runtime.overload.priority_with_identity(
            route.policy.priority,
            &req.headers,
            client_ip,
            ctx.filters.identity(),
        );
        let mut exchange = Exchange::new(route, priority, now);
        let admitted = exchange
            .admit(|key| hash_input(key, req, client_ip), now)
            .await;
        ctx.exchange = Some(exchange);
        match admitted {
            Ok(()) => Ok(true),
            Err(failure) => {
                let error = GatewayError::Upstream(failure);
                ctx.error = Some(error);
                if self.answer_locally(session, ctx).await.is_none() {
                    reply::write_error(session, ctx, error, Connection::KeepAlive).await?;
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
        ctx: &mut Self::CTX,
    ) -> Result<Box<HttpPeer>> {
        ctx.in_proxy_loop = true;
        let now = Instant::now();
        let client_ip = ctx.client_ip;
        let req = session.req_header();
        let exchange = ctx.exchange.as_mut().ok_or_else(|| {
            Error::explain(
                ErrorType::InternalError,
                "upstream_peer without an exchange",
            )
        })?;
        if !exchange.has_admitted() {
            if let Err(failure) = exchange
                .admit(|key| hash_input(key, req, client_ip), now)
                .await
            {
                ctx.error = Some(GatewayError::Upstream(failure));
                return Err(Error::explain(
                    ErrorType::HTTPStatus(GatewayError::Upstream(failure).status()),
                    "the upstream call was refused",
                ));
            }
        }
        let (picked, read_timeout) = exchange.begin_attempt(now).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "no admitted upstream attempt")
        })?;
        let mut peer = picked.peer();
        let address = picked.endpoint().address;
        peer.options.read_timeout = Some(read_timeout);
        // Without `preserve_header_case` the response head's case map is dropped: none is built.
        peer.options.keep_header_case = ctx.runtime.preserve_header_case;
        let reason = exchange.moved().map(|f| f.reason());
        ctx.trace.attempt_started(
            exchange.target().name(),
            address,
            exchange.attempts(),
            reason.as_deref(),
        );
        Ok(peer)
    }

    /// Records the failed connect and decides whether to try another endpoint (the request
    /// was not sent, so any method may be retried).
    fn fail_to_connect(
        &self,
        session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut Self::CTX,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let failure = upstream_failure(&e)
            .filter(|f| !f.sent())
            .unwrap_or(Failure::Connect);
        let retry = attempt_failed(session, ctx, failure);
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
        ctx: &mut Self::CTX,
        client_reused: bool,
    ) -> Box<Error> {
        let mut e = e.more_context(format!("Peer: {peer}"));
        let Some(exchange) = ctx.exchange.as_mut() else {
            e.set_retry(false);
            return e;
        };
        if let Some(next) = exchange.take_decided() {
            // The error `upstream_response_filter` raised to drop a response head.
            e.set_retry(next.attempts_again());
            return e;
        }
        if e.esource() != &ErrorSource::Upstream {
            // The client failed: never retried.
            e.set_retry(false);
            return e;
        }
        if exchange.answered() {
            exchange.on_broken_relay(Instant::now());
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
            && exchange.attempts() < MAX_ATTEMPTS as u32 - 1
        {
            exchange.on_stale_connection();
            e.set_retry(true);
            return e;
        }
        let failure = upstream_failure(&e).unwrap_or(Failure::Reset);
        let retry = attempt_failed(session, ctx, failure);
        e.set_retry(retry);
        e
    }

    /// Rewrites the path and adds X-Forwarded-For/Proto/Host and Via. Hop-by-hop headers were
    /// already removed by pingora's standard upstream request policy.
    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        if let Some(rw) = ctx.route.as_ref().and_then(|r| r.rewrite.as_ref()) {
            if let Some(path) = rw.apply(upstream.uri.path(), upstream.uri.query()) {
                let uri: Uri = path.parse().map_err(|e| {
                    Error::because(ErrorType::InternalError, "rewritten path is not a URI", e)
                })?;
                upstream.set_uri(uri);
            }
        }
        set_proxy_headers(session.req_header(), upstream, ctx)
    }

    /// Hands the response head to the exchange, which records the attempt and decides: a
    /// failure status is attempted again or answered by the local fallback (the head is
    /// dropped with an error that `error_while_proxy` / `fail_to_proxy` act on), otherwise
    /// the head is relayed. Good GET responses are recorded for `last_good` fallbacks.
    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        let Some(exchange) = ctx.exchange.as_mut() else {
            return Ok(());
        };
        let now = Instant::now();
        if let Err(why) = ctx.limits.check_response(&resp.headers) {
            // Counted as the upstream's failure; never relayed, never retried.
            tracing::debug!(
                reason = why,
                cluster = exchange.target().name(),
                "upstream response head refused"
            );
            crate::metrics::metrics().edge_refusal("upstream_headers_too_large");
            exchange.on_refused_head(now);
            ctx.trace.end_attempt(Some(&Failure::BadResponse.reason()));
            ctx.error = Some(GatewayError::Upstream(Failure::BadResponse));
            return Err(Error::explain(ErrorType::HTTPStatus(502), why));
        }
        exchange.on_load_report(&resp.headers);
        if !ctx.runtime.preserve_header_case {
            resp.drop_header_case();
        }
        let [report, report_bin] = carried(
            &resp.headers,
            [&load_report::HEADER, &load_report::HEADER_BIN],
        );
        if report {
            let _ = resp.remove_header(&load_report::HEADER);
        }
        if report_bin {
            let _ = resp.remove_header(&load_report::HEADER_BIN);
        }
        let status = resp.status.as_u16();
        ctx.trace
            .attempt_answered(status, exchange.is_failure_status(status));
        let route = exchange.route().clone();
        let key = route
            .last_good
            .as_ref()
            .and_then(|_| last_good_key(session.req_header()));
        let local_answer = || {
            let cached = match (&route.last_good, &key) {
                (Some(lg), Some(k)) => lg.answer(k, now).is_some(),
                _ => false,
            };
            cached
                || route
                    .policy
                    .fallback
                    .as_ref()
                    .is_some_and(|s| s.response.is_some())
        };
        let verdict = exchange.on_response(status, RequestCtx::facts(session), local_answer, now);
        let explain = |what| Error::explain(ErrorType::HTTPStatus(status), what);
        match verdict {
            Verdict::AttemptAgain => {
                ctx.trace
                    .end_attempt(Some(&Failure::Status(status).reason()));
                Err(explain("the upstream answered with a retryable status"))
            }
            Verdict::LocalFallback => {
                ctx.error = Some(GatewayError::Upstream(Failure::Status(status)));
                Err(explain("the upstream answered with a failure status"))
            }
            Verdict::Relay => {
                if exchange.failure().is_none() {
                    if let (Some(lg), Some(key)) = (&route.last_good, key) {
                        ctx.capture = lg.capture(key, resp.status, &resp.headers);
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
        ctx: &mut Self::CTX,
    ) -> Result<Option<Duration>> {
        let Some(capture) = &mut ctx.capture else {
            return Ok(None);
        };
        if !body.as_ref().is_none_or(|b| capture.push(b)) {
            ctx.capture = None;
        } else if end_of_stream {
            let capture = ctx.capture.take();
            let lg = ctx.route.as_ref().and_then(|r| r.last_good.as_ref());
            if let (Some(lg), Some(c)) = (lg, capture) {
                lg.store(c, Instant::now());
            }
        }
        Ok(None)
    }

    /// Adds the request id, Via and (on the fallback cluster) `X-Fallback` to the client's
    /// response, then runs the response filters.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut Self::CTX,
    ) -> Result<()> {
        decide_keepalive(session, ctx, Connection::KeepAlive);
        // X-Request-Id, Via and perhaps X-Fallback: grow the head's maps once, not per header.
        resp.reserve_headers(3);
        if let Some(id) = ctx.filters.request_id() {
            resp.insert_header(X_REQUEST_ID, id.clone())?;
        }
        let via = appended(
            resp.headers.get(VIA),
            via_entry(&ctx.runtime, session.req_header().version).clone(),
        );
        if let Some(v) = via {
            resp.insert_header(VIA, v)?;
        }
        if let Some((failure, cluster)) = ctx
            .exchange
            .as_ref()
            .and_then(|x| Some((x.moved()?, x.target())))
        {
            let v = format!("cluster={}; reason={failure}", cluster.name());
            if let Ok(v) = HeaderValue::from_str(&v) {
                resp.insert_header(fallback::X_FALLBACK, v)?;
            }
        }
        let chain = chain_of(&ctx.runtime, ctx.route.as_deref());
        if !chain.is_empty() {
            crate::filtering::run_response(chain, resp, &mut ctx.filters).await;
        }
        Ok(())
    }

    /// Answers a request that could not be proxied: a body filter's refusal, the route's
    /// local fallback, or the error ([`GatewayError`], mapped in one place).
    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut Self::CTX,
    ) -> FailToProxy {
        if let Some(resp) = ctx.filter_reply.take() {
            // The request body was not read to its end, so the connection cannot be reused.
            let status = resp.status().as_u16();
            if session.response_written().is_none() {
                let answer = Reply::answer(resp, Connection::Close);
                if let Err(write_err) = reply::write(session, ctx, answer).await {
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
        if let Some(exchange) = ctx.exchange.as_mut() {
            match error {
                GatewayError::Upstream(f) => exchange.ended_on(Some(f)),
                GatewayError::Internal => exchange.ended_on(None),
                _ => {}
            }
        }
        let reusable = !ctx.in_proxy_loop;
        if let Some(status) = self.answer_locally(session, ctx).await {
            return FailToProxy {
                error_code: status,
                can_reuse_downstream: reusable,
            };
        }
        if session.response_written().is_none() {
            let answer = Reply::error(error, ctx, ctx.connection());
            if let Err(write_err) = reply::write(session, ctx, answer).await {
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
    async fn logging(&self, session: &mut Session, _e: Option<&Error>, ctx: &mut Self::CTX) {
        observe::record(session, ctx);
    }
}

/// Hands a failed attempt to the exchange and returns whether pingora attempts again.
fn attempt_failed(session: &Session, ctx: &mut RequestCtx, failure: Failure) -> bool {
    let Some(exchange) = ctx.exchange.as_mut() else {
        return false;
    };
    ctx.trace.end_attempt(Some(&failure.reason()));
    let next = exchange.on_error(failure, RequestCtx::facts(session), Instant::now());
    if next == Next::Fail || next == Next::LocalFallback {
        ctx.error = Some(GatewayError::Upstream(failure));
    }
    next.attempts_again()
}
