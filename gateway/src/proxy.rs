//! The `ProxyHttp` implementation: drives pingora's phases for every request (route, pick an
//! endpoint, set proxy headers, map failures, write the access log).

use std::borrow::Cow;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use filters::{FilterChain, FilterContext, Flow};
use http::header::{HeaderName, HeaderValue, VIA};
use http::{Uri, Version};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::upstreams::peer::HttpPeer;
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::cluster::Picked;
use crate::config::{HashKey, LoadBalancing};
use crate::errors::GatewayError;
use crate::router::{request_host, RequestView};
use crate::runtime::{GatewayState, InFlightGuard, Route, Runtime};

const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
/// Longest client-supplied request id that is passed on; longer ones are replaced.
const MAX_REQUEST_ID: usize = 128;

/// The gateway's pingora proxy logic.
#[derive(Debug, Clone)]
pub struct GatewayProxy {
    state: Arc<GatewayState>,
}

impl GatewayProxy {
    /// Proxy logic over shared gateway state.
    pub fn new(state: Arc<GatewayState>) -> Self {
        Self { state }
    }
}

/// Per-request state carried between phases.
#[derive(Debug)]
pub struct RequestCtx {
    runtime: Arc<Runtime>,
    route: Option<usize>,
    picked: Option<Picked>,
    request_id: Option<HeaderValue>,
    client_ip: Option<IpAddr>,
    tls: bool,
    started: Instant,
    error: Option<GatewayError>,
    /// What the route's filters share for this request.
    filters: FilterContext,
    /// A response a body filter answered with; sent by `fail_to_proxy`.
    filter_reply: Option<filters::Response>,
    _in_flight: InFlightGuard,
}

impl RequestCtx {
    fn route(&self) -> Option<&Route> {
        self.route.and_then(|i| self.runtime.routes.get(i))
    }
}

/// The filters that apply: the route's chain, or the global filters when no route matched.
fn chain_of(runtime: &Runtime, route: Option<usize>) -> &FilterChain {
    route
        .and_then(|i| runtime.routes.get(i))
        .map_or(&runtime.default_chain, |r| &r.chain)
}

fn new_request_id() -> HeaderValue {
    let mut buf = uuid::Uuid::encode_buffer();
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

fn usable_request_id(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Appends `entry` to a comma-separated header (`X-Forwarded-For`, `Via`).
fn appended(existing: Option<&HeaderValue>, entry: &[u8]) -> Option<HeaderValue> {
    match existing {
        None => HeaderValue::from_bytes(entry).ok(),
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + entry.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(entry);
            HeaderValue::from_bytes(&v).ok()
        }
    }
}

fn via_entry(runtime: &Runtime, version: Version) -> Cow<'_, [u8]> {
    let own = runtime.via.as_bytes();
    if version == Version::HTTP_2 {
        // `1.1 name` -> `2 name`: Via names the protocol the gateway received.
        let name = own.get(4..).unwrap_or(b"gateway");
        let mut v = b"2 ".to_vec();
        v.extend_from_slice(name);
        Cow::Owned(v)
    } else {
        Cow::Borrowed(own)
    }
}

fn hash_input(key: &HashKey, req: &RequestHeader, client_ip: Option<IpAddr>) -> Vec<u8> {
    let found: Option<&[u8]> = match key {
        HashKey::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
        HashKey::Path => Some(req.uri.path().as_bytes()),
        HashKey::Query(name) => req.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes())
        }),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|c| {
                c.as_bytes()
                    .split(|b| *b == b';')
                    .filter_map(|kv| {
                        let kv = kv.trim_ascii();
                        let eq = kv.iter().position(|b| *b == b'=')?;
                        Some((kv.get(..eq)?, kv.get(eq + 1..)?))
                    })
                    .find(|(k, _)| *k == name.as_bytes())
                    .map(|(_, v)| v)
            }),
        HashKey::ClientIp => None,
    };
    match found {
        Some(v) => v.to_vec(),
        None => client_ip
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
    }
}

/// Writes a gateway-made JSON error response.
async fn respond(session: &mut Session, ctx: &mut RequestCtx, error: GatewayError) -> Result<()> {
    let route = ctx.route();
    let body = error.body(
        route.map(|r| &*r.name),
        route.map(|r| r.cluster.name()),
        ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
    );
    let mut resp = http::Response::new(Bytes::from(body));
    *resp.status_mut() =
        http::StatusCode::from_u16(error.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    send_reply(session, ctx, resp).await
}

/// Sends a response the gateway made (a filter's answer, an error) through the response
/// filters of the filters that ran, so they see it like an upstream response.
async fn send_reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: filters::Response,
) -> Result<()> {
    let (mut head, body) = resp.into_parts();
    head.headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(id) = &ctx.request_id {
        head.headers.insert(X_REQUEST_ID, id.clone());
    }
    let chain = chain_of(&ctx.runtime, ctx.route);
    if !chain.is_empty() {
        chain.on_response(&mut head, &mut ctx.filters).await;
    }
    let header = ResponseHeader::from(head);
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
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
            tls: false,
            started: Instant::now(),
            error: None,
            filters: FilterContext::default(),
            filter_reply: None,
            _in_flight: self.state.track(),
        }
    }

    /// Routes the request, fixes its request id and runs the route's request filters (the
    /// global ones when no route matches, then 404).
    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        ctx.client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
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
                send_reply(session, ctx, resp).await?;
                return Ok(true);
            }
        }
        if ctx.route.is_none() {
            ctx.error = Some(GatewayError::NoRoute);
            respond(session, ctx, GatewayError::NoRoute).await?;
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
            let status = resp.status().as_u16();
            ctx.filter_reply = Some(resp);
            return Err(Error::explain(
                ErrorType::HTTPStatus(status),
                "a filter refused the request body",
            ));
        }
        Ok(())
    }

    /// Picks an endpoint of the route's cluster.
    async fn upstream_peer(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        let cluster = ctx.route().map(|r| r.cluster.clone()).ok_or_else(|| {
            Error::explain(ErrorType::InternalError, "upstream_peer without a route")
        })?;
        let picked = match &cluster.spec().load_balancing {
            LoadBalancing::ConsistentHash(key) => {
                cluster.pick(&hash_input(key, session.req_header(), ctx.client_ip))
            }
            _ => cluster.pick(b""),
        };
        match picked {
            Some(p) => {
                let peer = p.peer();
                ctx.picked = Some(p);
                Ok(peer)
            }
            None => {
                ctx.error = Some(GatewayError::NoEndpoints);
                Err(Error::explain(
                    ErrorType::HTTPStatus(503),
                    "cluster has no endpoints",
                ))
            }
        }
    }

    /// Retries are not attempted yet (they come with retry budgets): a failed connect fails
    /// the request with a clear 502/504.
    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        _ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        e.set_retry(false);
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
        if let Some(ip) = ctx.client_ip {
            let xff = appended(
                upstream.headers.get(X_FORWARDED_FOR),
                ip.to_string().as_bytes(),
            );
            if let Some(v) = xff {
                upstream.insert_header(X_FORWARDED_FOR, v)?;
            }
        }
        upstream.insert_header(X_FORWARDED_PROTO, if ctx.tls { "https" } else { "http" })?;
        let host = request_host(&session.req_header().uri, &session.req_header().headers);
        if !host.is_empty() {
            let host = HeaderValue::from_str(host).ok();
            if let Some(h) = host {
                upstream.insert_header(X_FORWARDED_HOST, h)?;
            }
        }
        let via = appended(
            upstream.headers.get(VIA),
            &via_entry(&ctx.runtime, session.req_header().version),
        );
        if let Some(v) = via {
            upstream.insert_header(VIA, v)?;
        }
        Ok(())
    }

    /// Adds the request id and Via to the client's response, then runs the response filters.
    async fn response_filter(
        &self,
        session: &mut Session,
        resp: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
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
            session.set_keepalive(None);
            if session.response_written().is_none() {
                if let Err(write_err) = send_reply(session, ctx, reply).await {
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
        // pingora honours reuse only for failures before an upstream was chosen; otherwise the
        // connection closes, and the response must say so or the client reuses a dead socket.
        let reusable = matches!(error, GatewayError::NoEndpoints | GatewayError::NoRoute);
        if session.response_written().is_none() {
            if !reusable {
                session.set_keepalive(None);
            }
            if let Err(write_err) = respond(session, ctx, error).await {
                tracing::debug!(error = %write_err, "could not send the error response");
            }
        }
        FailToProxy {
            error_code: error.status(),
            can_reuse_downstream: reusable,
        }
    }

    /// Records endpoint failures and writes the access log line.
    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        if let (Some(e), Some(p)) = (e, &ctx.picked) {
            if e.esource() == &ErrorSource::Upstream {
                p.record_failure();
            }
        }
        if !ctx.runtime.access_log.enabled {
            return;
        }
        let req = session.req_header();
        let status = session.response_written().map_or_else(
            || ctx.error.map_or(0, GatewayError::status),
            |r| r.status.as_u16(),
        );
        let route = ctx.route();
        crate::access_log::write(&crate::access_log::AccessRecord {
            method: req.method.as_str(),
            path: req.uri.path(),
            host: request_host(&req.uri, &req.headers),
            route: route.map_or("-", |r| &*r.name),
            cluster: route.map_or("-", |r| r.cluster.name()),
            endpoint: ctx.picked.as_ref().map(|p| p.endpoint().address),
            status,
            duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
            request_id: ctx
                .request_id
                .as_ref()
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-"),
            client: ctx.client_ip,
            error: ctx.error.map_or("-", GatewayError::code),
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appending_to_list_headers() {
        assert_eq!(
            appended(None, b"1.2.3.4"),
            Some(HeaderValue::from_static("1.2.3.4"))
        );
        let prev = HeaderValue::from_static("9.9.9.9");
        assert_eq!(
            appended(Some(&prev), b"1.2.3.4"),
            Some(HeaderValue::from_static("9.9.9.9, 1.2.3.4"))
        );
    }

    #[test]
    fn request_ids() {
        assert!(usable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!usable_request_id(&HeaderValue::from_static("")));
        assert!(!usable_request_id(&HeaderValue::from_static("has space")));
        let long = HeaderValue::from_str(&"a".repeat(MAX_REQUEST_ID + 1)).expect("ascii");
        assert!(!usable_request_id(&long));
        let fresh = new_request_id();
        assert_eq!(fresh.len(), 36);
        assert_ne!(fresh, new_request_id());
    }

    #[test]
    fn hash_inputs() {
        let mut req = RequestHeader::build("GET", b"/p?a=1&user=u7", None).expect("req");
        req.insert_header("cookie", "x=1; sid=s9").expect("hdr");
        req.insert_header("x-user", "h3").expect("hdr");
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(hash_input(&HashKey::Query("user".into()), &req, ip), b"u7");
        assert_eq!(hash_input(&HashKey::Cookie("sid".into()), &req, ip), b"s9");
        assert_eq!(
            hash_input(
                &HashKey::Header(HeaderName::from_static("x-user")),
                &req,
                ip
            ),
            b"h3"
        );
        assert_eq!(hash_input(&HashKey::Path, &req, ip), b"/p");
        assert_eq!(
            hash_input(&HashKey::Cookie("none".into()), &req, ip),
            b"10.0.0.1",
            "falls back to client ip"
        );
    }
}
