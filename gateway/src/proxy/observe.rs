//! What a request is recorded as: the filter-answer span and the Hystrix events of its
//! execution and fallback.

use super::*;

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

/// The request's events for the route's rolling window, as Hystrix counts them: the
/// execution (success, failure, timeout, short-circuited, rejected) and the fallback.
/// Requests a filter answered, and clients that went away, executed nothing.
pub(super) fn request_events(ctx: &RequestCtx) -> RequestEvents {
    if ctx.answered_by.is_some() || ctx.route.is_none() {
        return RequestEvents::default();
    }
    let call = &ctx.call;
    let event_of = |f: Failure| match f {
        Failure::CircuitOpen => Event::ShortCircuited,
        Failure::BulkheadFull => Event::Rejected,
        Failure::Timeout => Event::Timeout,
        Failure::Connect | Failure::Reset | Failure::Status(_) | Failure::NoEndpoints => {
            Event::Failure
        }
    };
    let first = call.on_fallback_cluster.or(call.failure);
    let execution = match (first, ctx.error) {
        (Some(f), _) => Some(event_of(f)),
        (None, _) if call.answered => Some(Event::Success),
        (None, Some(e)) => Failure::of(e)
            .map(event_of)
            .or((e == GatewayError::Internal).then_some(Event::Failure)),
        (None, None) => None,
    };
    let fallback = match call.local_fallback {
        Some((_, true)) => Some(Event::FallbackSuccess),
        Some((_, false)) => Some(Event::FallbackFailure),
        None if call.on_fallback_cluster.is_some() => {
            Some(if call.answered && call.failure.is_none() {
                Event::FallbackSuccess
            } else {
                Event::FallbackFailure
            })
        }
        None => None,
    };
    RequestEvents {
        execution,
        fallback,
    }
}
