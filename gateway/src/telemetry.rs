//! Distributed tracing with OpenTelemetry.
//!
//! Every request carries a W3C trace context: the client's `traceparent` when it sent a valid
//! one, or a new trace started at the edge. The upstream receives it (with the gateway's
//! attempt span as parent when tracing is on), and the access log names the trace id.
//!
//! Export is off by default: with no `OTEL_EXPORTER_OTLP_ENDPOINT` /
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (or `OTEL_TRACES_EXPORTER=otlp`), no span is built and
//! a request costs one header parse and one header write. When on, spans go over OTLP/HTTP
//! (protobuf) in batches from a background thread; every standard variable applies
//! (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`, `OTEL_SDK_DISABLED`).
//!
//! Spans: one server span per request (`{method} {route}`), a client span per upstream
//! attempt (`gateway.attempt`, `gateway.retry`, `gateway.fallback_cluster`), a span for a
//! filter that answered the request itself (`filter {name}`), and one for a local fallback
//! (`fallback {kind}`).

use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime};

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::{
    SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId, TraceState,
    Tracer, TracerProvider as _,
};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::HeaderExtractor;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

/// The `traceparent` header.
pub(crate) const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");
/// The `tracestate` header.
pub(crate) const TRACESTATE: http::HeaderName = http::HeaderName::from_static("tracestate");

static TRACER: OnceLock<SdkTracer> = OnceLock::new();

/// Turns trace export on when the environment asks for it ([`otel_env::init_from_env`]) and
/// keeps the gateway's tracer; keep the provider and call [`SdkTracerProvider::shutdown`]
/// before exiting so queued spans are sent.
pub(crate) fn init_from_env(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    let provider = otel_env::init_from_env(service)?;
    if let Some(p) = &provider {
        let _ = TRACER.set(p.tracer("gateway"));
    }
    Ok(provider)
}

/// The tracer, when export is on.
fn tracer() -> Option<&'static SdkTracer> {
    TRACER.get()
}

fn random_nonzero_u128() -> u128 {
    loop {
        let v = fastrand::u128(..);
        if v != 0 {
            return v;
        }
    }
}

fn random_nonzero_u64() -> u64 {
    loop {
        let v = fastrand::u64(..);
        if v != 0 {
            return v;
        }
    }
}

/// The trace context of one request through the gateway.
#[derive(Debug)]
pub(crate) struct RequestTrace {
    /// The client's context (or the one started here when tracing is off).
    incoming: SpanContext,
    /// The server span, when tracing is on.
    server: Option<Context>,
    /// The current upstream attempt's span.
    attempt: Option<Context>,
    /// The trace this request belongs to.
    trace_id: TraceId,
}

impl Default for RequestTrace {
    fn default() -> Self {
        Self {
            incoming: SpanContext::empty_context(),
            server: None,
            attempt: None,
            trace_id: TraceId::INVALID,
        }
    }
}

impl RequestTrace {
    /// Accepts the client's `traceparent`/`tracestate` or starts a trace, and opens the server
    /// span when tracing is on. `traceparent`: whether `headers` carries one (the caller looked
    /// once for the names it needs).
    pub(crate) fn start(
        headers: &HeaderMap,
        traceparent: bool,
        method: &str,
        path: &str,
        client: Option<SocketAddr>,
        started: Instant,
    ) -> Self {
        let parent = if traceparent {
            TraceContextPropagator::new().extract(&HeaderExtractor(headers))
        } else {
            Context::new()
        };
        let remote = parent.span().span_context().clone();
        let Some(tracer) = tracer() else {
            let incoming = if remote.is_valid() {
                remote
            } else {
                SpanContext::new(
                    TraceId::from(random_nonzero_u128()),
                    SpanId::from(random_nonzero_u64()),
                    TraceFlags::SAMPLED,
                    false,
                    TraceState::default(),
                )
            };
            return Self {
                trace_id: incoming.trace_id(),
                incoming,
                server: None,
                attempt: None,
            };
        };
        let mut attrs = vec![
            KeyValue::new("http.request.method", method.to_owned()),
            KeyValue::new("url.path", path.to_owned()),
        ];
        if let Some(c) = client {
            attrs.push(KeyValue::new("client.address", c.ip().to_string()));
        }
        let span = tracer
            .span_builder(method.to_owned())
            .with_kind(SpanKind::Server)
            // Wall-clock time is read only when there is a span to date.
            .with_start_time(started_ago(started.elapsed()))
            .with_attributes(attrs)
            .start_with_context(tracer, &parent);
        let server = parent.with_span(span);
        Self {
            trace_id: server.span().span_context().trace_id(),
            incoming: remote,
            server: Some(server),
            attempt: None,
        }
    }

    /// The trace id (valid for every request).
    #[cfg(test)]
    pub(crate) fn trace_id(&self) -> TraceId {
        self.trace_id
    }

    /// The trace id as 32 lowercase hex digits (for the access log), without `fmt`.
    pub(crate) fn trace_id_hex(&self) -> TraceIdHex {
        let mut out = [0u8; 32];
        hex_into(&mut out, &self.trace_id.to_bytes());
        TraceIdHex(out)
    }

    /// Names the server span after the matched route (`GET orders`), as `http.route` does.
    pub(crate) fn set_route(&self, method: &str, route: &str, cluster: &str) {
        if let Some(cx) = &self.server {
            let span = cx.span();
            span.update_name(format!("{method} {route}"));
            span.set_attribute(KeyValue::new("http.route", route.to_owned()));
            span.set_attribute(KeyValue::new("gateway.route", route.to_owned()));
            span.set_attribute(KeyValue::new("gateway.cluster", cluster.to_owned()));
        }
    }

    /// `traceparent` (and `tracestate`, when there is one) for the upstream request: the
    /// attempt span's context, else the server span's, else the incoming one.
    pub(crate) fn upstream_headers(&self) -> (Option<HeaderValue>, Option<HeaderValue>) {
        match self.attempt.as_ref().or(self.server.as_ref()) {
            Some(cx) => context_headers(cx.span().span_context()),
            None => context_headers(&self.incoming),
        }
    }

    /// Opens the span of one upstream attempt.
    pub(crate) fn attempt_started(
        &mut self,
        cluster: &str,
        endpoint: SocketAddr,
        attempt: u32,
        fallback_cluster: Option<&str>,
    ) {
        self.end_attempt(None);
        let (Some(tracer), Some(server)) = (tracer(), &self.server) else {
            return;
        };
        let mut attrs = vec![
            KeyValue::new("gateway.cluster", cluster.to_owned()),
            KeyValue::new("server.address", endpoint.ip().to_string()),
            KeyValue::new("server.port", i64::from(endpoint.port())),
            KeyValue::new("gateway.attempt", i64::from(attempt)),
            KeyValue::new("gateway.retry", attempt > 1 && fallback_cluster.is_none()),
        ];
        if let Some(reason) = fallback_cluster {
            attrs.push(KeyValue::new("gateway.fallback_cluster", true));
            attrs.push(KeyValue::new("gateway.fallback_reason", reason.to_owned()));
        }
        let span = tracer
            .span_builder(format!("upstream {cluster}"))
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(tracer, server);
        self.attempt = Some(server.with_span(span));
    }

    /// Records the attempt's response status (the span ends with the request).
    pub(crate) fn attempt_answered(&self, status: u16, failed: bool) {
        if let Some(cx) = &self.attempt {
            let span = cx.span();
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
            if failed {
                span.set_status(Status::error(format!("status {status}")));
            }
        }
    }

    /// Ends the attempt's span, as failed with `error` when given.
    pub(crate) fn end_attempt(&mut self, error: Option<&str>) {
        if let Some(cx) = self.attempt.take() {
            let span = cx.span();
            if let Some(e) = error {
                span.set_attribute(KeyValue::new("error.type", e.to_owned()));
                span.set_status(Status::error(e.to_owned()));
            }
            span.end();
        }
    }

    /// A span for something the gateway did in place of the upstream (a filter's answer, a
    /// local fallback), from `started` to now.
    pub(crate) fn local_span(&self, name: String, started: SystemTime, attrs: Vec<KeyValue>) {
        let (Some(tracer), Some(server)) = (tracer(), &self.server) else {
            return;
        };
        let mut span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_start_time(started)
            .with_attributes(attrs)
            .start_with_context(tracer, server);
        opentelemetry::trace::Span::end(&mut span);
    }

    /// Ends the server span with the response status and, when the gateway answered itself,
    /// its reason.
    pub(crate) fn finish(&mut self, status: u16, reason: Option<&str>) {
        self.end_attempt(None);
        let Some(cx) = self.server.take() else {
            return;
        };
        let span = cx.span();
        if status != 0 {
            span.set_attribute(KeyValue::new(
                "http.response.status_code",
                i64::from(status),
            ));
        }
        if let Some(r) = reason {
            span.set_attribute(KeyValue::new("gateway.reason", r.to_owned()));
        }
        if status >= 500 || status == 0 {
            span.set_status(Status::error(reason.unwrap_or("no response").to_owned()));
        }
        span.end();
    }
}

/// `traceparent` and `tracestate` for `sc`. The `traceparent` is written by hand into a fixed
/// buffer: `format!` with the ids' `Display` cost ~2,500 instructions per request.
fn context_headers(sc: &SpanContext) -> (Option<HeaderValue>, Option<HeaderValue>) {
    if !sc.is_valid() {
        return (None, None);
    }
    let parent = traceparent(
        sc.trace_id().to_bytes(),
        sc.span_id().to_bytes(),
        sc.trace_flags().to_u8(),
    );
    let state = sc.trace_state().header();
    (
        HeaderValue::from_bytes(&parent).ok(),
        (!state.is_empty())
            .then(|| HeaderValue::from_str(&state).ok())
            .flatten(),
    )
}

/// A trace id in lowercase hex.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TraceIdHex([u8; 32]);

impl TraceIdHex {
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("-")
    }
}

/// Writes `bytes` as lowercase hex into the start of `out` (two digits per byte).
fn hex_into(out: &mut [u8], bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for (pair, b) in out.chunks_exact_mut(2).zip(bytes) {
        pair[0] = HEX[usize::from(b >> 4)];
        pair[1] = HEX[usize::from(b & 0xf)];
    }
}

/// The W3C `traceparent` value `00-{trace id}-{span id}-{flags}`, lowercase hex.
fn traceparent(trace: [u8; 16], span: [u8; 8], flags: u8) -> [u8; 55] {
    let mut out = [b'-'; 55];
    out[0] = b'0';
    out[1] = b'0';
    hex_into(&mut out[3..35], &trace);
    hex_into(&mut out[36..52], &span);
    hex_into(&mut out[53..55], &[flags]);
    out
}

/// A start time `elapsed` before now.
pub(crate) fn started_ago(elapsed: Duration) -> SystemTime {
    SystemTime::now()
        .checked_sub(elapsed)
        .unwrap_or_else(SystemTime::now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_valid_traceparent_is_passed_on_and_a_missing_one_is_started() {
        let mut h = HeaderMap::new();
        h.insert(
            TRACEPARENT,
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        h.insert(TRACESTATE, HeaderValue::from_static("vendor=x"));
        let t = RequestTrace::start(&h, true, "GET", "/", None, Instant::now());
        assert_eq!(t.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(
            t.trace_id_hex().as_str(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        let (parent, state) = t.upstream_headers();
        assert_eq!(
            parent.expect("traceparent"),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        );
        assert_eq!(state.expect("tracestate"), "vendor=x");

        let t = RequestTrace::start(&HeaderMap::new(), false, "GET", "/", None, Instant::now());
        assert_ne!(t.trace_id(), TraceId::INVALID);
        let (parent, state) = t.upstream_headers();
        let parent = parent.expect("started");
        let parts: Vec<&str> = parent.to_str().expect("ascii").split('-').collect();
        assert_eq!(parts.len(), 4);
        assert_eq!(parts[1], t.trace_id().to_string());
        assert!(state.is_none());

        // Garbage is replaced by a new trace, never passed on.
        let mut bad = HeaderMap::new();
        bad.insert(TRACEPARENT, HeaderValue::from_static("00-zz-yy-01"));
        let t = RequestTrace::start(&bad, true, "GET", "/", None, Instant::now());
        assert_ne!(t.trace_id(), TraceId::INVALID);
    }
}
