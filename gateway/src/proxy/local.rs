//! The answers the gateway gives before or instead of an upstream's: the request screen (edge
//! limits, path normalization, client address) and the route's local fallback.

use super::*;

impl GatewayProxy {
    /// Screens the request head before anything else (limits, path normalization, client
    /// address; [`crate::edge::screen`]). Returns `Some` when the gateway answered it.
    pub(super) async fn screen(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Option<bool>> {
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
                return Ok(None);
            }
            Screen::Redirect(location) => {
                let mut resp = http::Response::new(Bytes::new());
                *resp.status_mut() = http::StatusCode::TEMPORARY_REDIRECT;
                if let Ok(v) = HeaderValue::from_str(&location) {
                    resp.headers_mut().insert(http::header::LOCATION, v);
                }
                send_reply(session, ctx, resp, Connection::KeepAlive).await?;
                return Ok(Some(true));
            }
            Screen::Refuse(crate::edge::screen::Refusal::Path(e)) => GatewayError::InvalidPath(e),
            Screen::Refuse(crate::edge::screen::Refusal::Limit(v)) => GatewayError::HeadTooLarge(v),
        };
        // The rest of an oversized head is not worth reading: close after answering.
        let connection = match error {
            GatewayError::HeadTooLarge(_) => Connection::Close,
            _ => Connection::KeepAlive,
        };
        crate::metrics::metrics().edge_refusal(error.code());
        ctx.error = Some(error);
        respond(session, ctx, error, connection).await?;
        Ok(Some(true))
    }

    /// Answers a failed upstream call with the route's local fallback (last good response,
    /// then the static one) when it covers the failure; returns the status sent.
    pub(super) async fn try_fallback(
        &self,
        session: &mut Session,
        ctx: &mut RequestCtx,
        error: GatewayError,
        reusable: bool,
    ) -> Option<u16> {
        if session.response_written().is_some() {
            return None;
        }
        let runtime = ctx.runtime.clone();
        let route = ctx.route.and_then(|i| runtime.routes.get(i))?;
        let spec = route.policy.fallback.as_ref()?;
        let failure = ctx.call.failure.or_else(|| Failure::of(error))?;
        let now = Instant::now();
        let key = last_good_key(session);
        let last_good = match (&route.last_good, &key) {
            (Some(lg), Some(k)) => Some((&**lg, &**k)),
            _ => None,
        };
        let answer = fallback::local_answer(spec, last_good, failure, now);
        if spec.on.covers(failure) {
            ctx.call.local_fallback = Some(match &answer {
                Some((kind, _)) => (*kind, true),
                None if route.last_good.is_some() => ("last_good", false),
                None => ("static", false),
            });
        }
        if let Some(b) = route.cluster.breaker() {
            if spec.on.covers(failure) {
                let event = if answer.is_some() {
                    Event::FallbackSuccess
                } else {
                    Event::FallbackFailure
                };
                b.record(event, now);
            }
        }
        let (kind, answer) = answer?;
        let status = answer.status().as_u16();
        ctx.trace.local_span(
            format!("fallback {kind}"),
            std::time::SystemTime::now(),
            vec![
                opentelemetry::KeyValue::new("gateway.fallback", kind),
                opentelemetry::KeyValue::new(
                    "gateway.fallback_reason",
                    failure.reason().to_string(),
                ),
                opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
            ],
        );
        let connection = if reusable {
            Connection::KeepAlive
        } else {
            Connection::Close
        };
        if let Err(write_err) = send_reply(session, ctx, answer, connection).await {
            tracing::debug!(error = %write_err, "could not send the fallback response");
        }
        Some(status)
    }
}
