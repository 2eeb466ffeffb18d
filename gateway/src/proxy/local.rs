//! The answers the gateway gives before or instead of an upstream's: the request screen (edge
//! limits, path normalization, client address) and the route's local fallback.

use std::time::Instant;

use bytes::Bytes;
use http::header::HeaderValue;
use pingora::proxy::Session;
use pingora::Result;

use super::headers::last_good_key;
use super::reply::{self, Connection, Reply};
use super::{GatewayProxy, RequestCtx};
use crate::edge::screen::Refusal;
use crate::edge::Screen;
use crate::errors::GatewayError;
use resilience::{Failure, Priority};

impl GatewayProxy {
    /// Removes a priority header an untrusted client sent; then, when the gateway has an
    /// inbound limit, takes a slot of it for the request's priority as known before its
    /// filters run (trusted header, route). A shed request is answered here (503,
    /// `Retry-After`; gRPC `RESOURCE_EXHAUSTED`) and `true` returned.
    pub(super) async fn admit_inbound(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        route_priority: Option<Priority>,
    ) -> Result<bool> {
        let overload = &ctx.runtime.overload;
        if let Some(name) = overload.header_name() {
            if !overload.trusts(ctx.client_ip) {
                session.req_header_mut().remove_header(name);
            }
        }
        if overload.inbound.is_none() {
            return Ok(false);
        }
        let headers = &session.req_header().headers;
        let priority = overload.priority(route_priority, headers, ctx.client_ip);
        match overload.admit(priority).await {
            Ok(slot) => {
                ctx._inbound = slot;
                Ok(false)
            }
            Err(_) => {
                let error = GatewayError::Upstream(Failure::Shed);
                reply::write_error(session, ctx, error, Connection::KeepAlive).await?;
                Ok(true)
            }
        }
    }

    /// Screens the request head before anything else (limits, path normalization, client
    /// address; [`crate::edge::screen`]). Returns whether the gateway answered it.
    /// The answer to an ACME HTTP-01 validation (`GET /.well-known/acme-challenge/TOKEN`)
    /// while an order is pending; `None` for every other request.
    pub(super) fn acme_http01(&self, session: &Session) -> Option<filters::Response> {
        const PREFIX: &str = "/.well-known/acme-challenge/";
        let req = session.req_header();
        let token = req.uri.path().strip_prefix(PREFIX)?;
        let acme = self.state.tls().acme.as_ref()?;
        let key_authorization = acme.http01(token)?;
        http::Response::builder()
            .status(200)
            .header(http::header::CONTENT_TYPE, "application/octet-stream")
            .body(bytes::Bytes::from(key_authorization))
            .ok()
    }

    pub(super) async fn screen(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let local = session
            .digest()
            .and_then(|d| d.socket_digest.as_ref())
            .and_then(|s| s.local_addr())
            .and_then(|a| a.as_inet())
            .copied();
        let runtime = ctx.runtime.clone();
        let edge = runtime.listener_edge(local);
        ctx.limits = edge.limits;
        if !self.state.is_draining() {
            let idle = edge.idle_timeout.as_secs();
            session.set_keepalive((idle > 0).then_some(idle));
        }
        let peer = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        ctx.peer = peer;
        ctx.client_ip = peer;
        let error = match crate::edge::screen(session.req_header_mut(), peer, edge) {
            Screen::Pass(client) => {
                if peer.is_some() {
                    ctx.client_ip = Some(client.ip);
                }
                ctx.peer_trusted = client.peer_trusted;
                return Ok(false);
            }
            Screen::Redirect(location) => {
                let mut resp = http::Response::new(Bytes::new());
                *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(http::header::LOCATION, v);
                }
                reply::write(session, ctx, Reply::answer(resp, Connection::KeepAlive)).await?;
                return Ok(true);
            }
            Screen::Refuse(Refusal::Path(e)) => GatewayError::InvalidPath(e),
            Screen::Refuse(Refusal::Limit(v)) => GatewayError::HeadTooLarge(v),
        };
        // The rest of an oversized head is not worth reading: close after answering.
        let connection = match error {
            GatewayError::HeadTooLarge(_) => Connection::Close,
            _ => Connection::KeepAlive,
        };
        crate::metrics::metrics().edge_refusal(error.code());
        reply::write_error(session, ctx, error, connection).await?;
        Ok(true)
    }

    /// Answers a failed upstream call with the route's local fallback (last good response,
    /// then the static one) when it covers the exchange's failure; returns the status sent.
    pub(super) async fn answer_locally(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Option<u16> {
        if session.response_written().is_some() {
            return None;
        }
        let key = last_good_key(session.req_header());
        let exchange = ctx.exchange.as_mut()?;
        let (kind, failure, answer) = exchange.local_answer(key.as_deref(), Instant::now())?;
        let status = answer.status().as_u16();
        ctx.trace.local_span(
            format!("fallback {kind}"),
            std::time::SystemTime::now(),
            vec![
                opentelemetry::KeyValue::new("gateway.fallback", kind),
                opentelemetry::KeyValue::new("gateway.fallback_reason", failure.to_string()),
                opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
        let answer = Reply::answer(answer, ctx.connection());
        if let Err(write_err) = reply::write(session, ctx, answer).await {
            tracing::debug!(error = %write_err, "could not send the fallback response");
        }
        Some(status)
    }
}
