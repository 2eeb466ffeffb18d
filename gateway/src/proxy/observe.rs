//! What a request is recorded as: the filter-answer span, the route's metrics and rolling
//! window (from the events the exchange recorded as they happened), and the access-log line.

use std::borrow::Cow;
use std::time::Instant;

use pingora::proxy::Session;
use resilience::Event;

use super::RequestCtx;
use crate::errors::GatewayError;
use crate::metrics::RequestEvents;
use crate::router::request_host;
use crate::telemetry::started_ago;

/// The span of a filter that answered the request itself.
pub(super) fn filter_span(ctx: &RequestCtx, status: u16) {
    let Some(name) = &ctx.answered_by else {
        return;
    };
    ctx.trace.local_span(
        format!("filter {name}"),
        started_ago(ctx.started.elapsed()),
        vec![
            opentelemetry::KeyValue::new("gateway.filter", name.to_string()),
            opentelemetry::KeyValue::new("http.response.status_code", i64::from(status)),
        ],
    );
}

/// The request's events for the route's rolling window, as the exchange recorded them.
/// Requests a filter answered executed nothing.
fn request_events(ctx: &RequestCtx) -> RequestEvents {
    match &ctx.exchange {
        Some(x) if ctx.answered_by.is_none() => x.events(),
        // Shed by the inbound limit before any exchange: a rejection, as Hystrix counts it.
        None if ctx.error == Some(GatewayError::Upstream(resilience::Failure::Shed)) => {
            RequestEvents {
                execution: Some(Event::Rejected),
                fallback: None,
            }
        }
        _ => RequestEvents::default(),
    }
}

/// Records the finished request: the route's metrics and rolling window, fallback and filter
/// counters, the end of its spans, and its access-log line.
pub(super) fn record(session: &Session, ctx: &mut RequestCtx) {
    let status = session.response_written().map_or_else(
        || ctx.error.map_or(0, GatewayError::status),
        |r| r.status.as_u16(),
    );
    let now = Instant::now();
    let elapsed = now.saturating_duration_since(ctx.started);
    let route = ctx.route.as_deref();
    let exchange = ctx.exchange.as_ref();
    let events = request_events(ctx);
    if let Some(r) = route {
        r.metrics.finish(status, elapsed, events, now);
        let fallback = exchange.and_then(|x| {
            x.local_fallback().or_else(|| {
                x.moved()
                    .map(|_| ("cluster", events.fallback == Some(Event::FallbackSuccess)))
            })
        });
        if let Some((kind, ok)) = fallback {
            crate::metrics::metrics().fallback(&r.name, kind, ok);
        }
    } else {
        crate::metrics::metrics().unrouted(status);
    }
    if let Some(filter) = &ctx.answered_by {
        crate::metrics::metrics().filter_rejection(route.map_or("-", |r| &r.name), filter, status);
    }
    let local_fallback = exchange.and_then(|x| x.local_fallback());
    let reason: Cow<'_, str> = match (&ctx.answered_by, local_fallback, ctx.error) {
        (Some(filter), _, _) => Cow::Owned(format!("filter:{filter}")),
        (None, Some((kind, true)), _) => Cow::Owned(format!("fallback:{kind}")),
        (None, _, Some(e)) => Cow::Borrowed(e.code()),
        _ => Cow::Borrowed("-"),
    };
    ctx.trace
        .finish(status, (reason != "-").then_some(&*reason));
    if !ctx.runtime.access_log.enabled {
        return;
    }
    let req = session.req_header();
    let trace_id = ctx.trace.trace_id_hex();
    let grpc_status = session
        .response_written()
        .filter(|r| crate::grpc::is_grpc(&r.headers))
        .and_then(|r| r.headers.get("grpc-status"))
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    crate::access_log::write(&crate::access_log::AccessRecord {
        method: req.method.as_str(),
        path: req.uri.path(),
        // Found once per request by the router (before filters ran), else found here.
        host: ctx
            .forwarded_host
            .as_ref()
            .and_then(|h| h.to_str().ok())
            .unwrap_or_else(|| request_host(&req.uri, &req.headers)),
        route: route.map_or("-", |r| &*r.name),
        cluster: exchange.map_or_else(
            || route.map_or("-", |r| r.cluster.name()),
            |x| x.target().name(),
        ),
        endpoint: exchange
            .and_then(|x| x.endpoint())
            .map(|p| p.endpoint().address),
        status,
        grpc_status,
        bytes_sent: session.as_ref().body_bytes_sent() as u64,
        bytes_received: session.as_ref().body_bytes_read() as u64,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        upstream_ms: exchange
            .and_then(|x| x.upstream_time())
            .map(|d| d.as_secs_f64() * 1000.0),
        attempts: exchange.map_or(0, |x| x.attempts()),
        request_id: ctx
            .filters
            .request_id()
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-"),
        trace_id: trace_id.as_str(),
        client: ctx.client_ip,
        reason: &reason,
    });
}
