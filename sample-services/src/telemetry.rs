//! Trace continuation for the sample services: a server span per request (HTTP and gRPC, as
//! one axum middleware), client spans around Play's calls to Catalog and Steering, and W3C
//! `traceparent` on every outgoing call. Export follows the same `OTEL_*` variables as the
//! gateway ([`otel_env::init_from_env`]); with export off, the incoming context is
//! still passed on, so a trace started at the edge reaches every hop.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::HeaderMap;
use opentelemetry::context::FutureExt as _;
use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue};
use opentelemetry_http::{HeaderExtractor, HeaderInjector};
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Sends the spans still queued when dropped (at the end of `main`).
#[derive(Debug)]
pub struct Telemetry(Option<SdkTracerProvider>);

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            if let Err(e) = p.shutdown() {
                eprintln!("tracing: could not send the last spans: {e}");
            }
        }
    }
}

/// Sets up tracing for `service` from the `OTEL_*` environment; exits with a clear message
/// when the environment asks for something unsupported.
pub fn init(service: &'static str) -> Telemetry {
    match otel_env::init_from_env(service) {
        Ok(p) => {
            if p.is_some() {
                eprintln!("{service}: trace export on (OTLP/HTTP, OTEL_* variables)");
            }
            Telemetry(p)
        }
        Err(e) => {
            eprintln!("{service}: tracing: {e}");
            std::process::exit(2);
        }
    }
}

fn tracer() -> BoxedTracer {
    global::tracer("sample-services")
}

/// Writes `cx`'s trace context into outgoing headers (HTTP headers, or gRPC metadata through
/// `tonic::metadata::MetadataMap::as_mut`).
pub fn inject(cx: &Context, headers: &mut HeaderMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut HeaderInjector(headers)));
}

fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Middleware: continues the caller's trace with a server span around the request; the
/// handler runs with that span as the current context. Health checks and fault settings
/// are not traced.
pub async fn server_span(req: Request, next: Next) -> Response {
    let path = req.uri().path().to_owned();
    if path == "/health" || path == "/__fault" {
        return next.run(req).await;
    }
    let parent = global::get_text_map_propagator(|p| p.extract(&HeaderExtractor(req.headers())));
    let grpc = is_grpc(req.headers());
    let method = req.method().as_str().to_owned();
    let (name, attrs) = if grpc {
        let rpc = path.trim_start_matches('/').to_owned();
        let (service, call) = rpc.split_once('/').unwrap_or((&rpc, ""));
        let attrs = vec![
            KeyValue::new("rpc.system", "grpc"),
            KeyValue::new("rpc.service", service.to_owned()),
            KeyValue::new("rpc.method", call.to_owned()),
        ];
        (rpc.clone(), attrs)
    } else {
        let attrs = vec![
            KeyValue::new("http.request.method", method.clone()),
            KeyValue::new("url.path", path.clone()),
        ];
        (format!("{method} {path}"), attrs)
    };
    let tracer = tracer();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Server)
        .with_attributes(attrs)
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let resp = next.run(req).with_context(cx.clone()).await;
    let span = cx.span();
    let status = resp.status().as_u16();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    let grpc_status = resp
        .headers()
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i64>().ok());
    if let Some(code) = grpc_status {
        span.set_attribute(KeyValue::new("rpc.grpc.status_code", code));
    }
    if status >= 500 || grpc_status.is_some_and(|c| c != 0) {
        span.set_status(Status::error(format!("status {status}")));
    }
    span.end();
    resp
}

/// A client span for an outgoing call, child of the current context; inject it into the
/// call's headers and end it with [`end_client_span`].
pub fn client_span(name: String, peer: &str) -> Context {
    let tracer = tracer();
    let parent = Context::current();
    let span = tracer
        .span_builder(name)
        .with_kind(SpanKind::Client)
        .with_attributes([KeyValue::new("server.address", peer.to_owned())])
        .start_with_context(&tracer, &parent);
    parent.with_span(span)
}

/// Ends a client span, as failed with `error` when given.
pub fn end_client_span(cx: &Context, error: Option<String>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_status(Status::error(e));
    }
    span.end();
}
