//! OpenTelemetry from the standard `OTEL_*` environment, the same way in the gateway and in the
//! services behind it: export over OTLP/HTTP (protobuf) when an endpoint is set, W3C trace
//! context as the global propagator whether export is on or off. Unsupported settings are
//! errors with the fix, so a typo does not silently turn tracing off.

#![forbid(unsafe_code)]

use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;

/// Whether the `OTEL_*` environment (read through `var`) turns trace export on. Unsupported
/// settings are errors, so that a typo does not silently disable tracing.
pub fn export_wanted(var: impl Fn(&str) -> Option<String>) -> Result<bool, String> {
    if var("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    let endpoint = var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        .or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
        .filter(|e| !e.is_empty());
    let wanted = match var("OTEL_TRACES_EXPORTER").as_deref() {
        None | Some("") => endpoint.is_some(),
        Some("none") => false,
        Some("otlp") => true,
        Some(other) => {
            return Err(format!(
                "OTEL_TRACES_EXPORTER={other} is not supported; fix: use `otlp` or `none`"
            ))
        }
    };
    if wanted {
        let protocol = var("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| var("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(p) = protocol.filter(|p| p != "http/protobuf") {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={p} is not supported; fix: use `http/protobuf` \
                 (the collector's OTLP/HTTP port, usually 4318)"
            ));
        }
    }
    Ok(wanted)
}

/// Turns trace export on when the environment asks for it; keep the provider and call
/// [`SdkTracerProvider::shutdown`] before exiting so queued spans are sent. `service` is the
/// service name unless `OTEL_SERVICE_NAME` sets one. The provider also becomes the global one
/// (`opentelemetry::global::tracer`), and W3C trace context the global propagator, so that
/// services continue traces whether export is on or off.
pub fn init_from_env(service: &'static str) -> Result<Option<SdkTracerProvider>, String> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    if !export_wanted(|k| std::env::var(k).ok())? {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("OTLP exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() {
        resource = resource.with_service_name(service);
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Some(provider))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn export_follows_the_standard_variables() {
        assert_eq!(export_wanted(env(&[])), Ok(false), "off by default");
        let on = [("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")];
        assert_eq!(export_wanted(env(&on)), Ok(true));
        let off = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_SDK_DISABLED", "true"),
        ];
        assert_eq!(export_wanted(env(&off)), Ok(false));
        let none = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318"),
            ("OTEL_TRACES_EXPORTER", "none"),
        ];
        assert_eq!(export_wanted(env(&none)), Ok(false));
        let grpc = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ];
        let e = export_wanted(env(&grpc)).expect_err("grpc is not built in");
        assert!(e.contains("http/protobuf"), "{e}");
        let e = export_wanted(env(&[("OTEL_TRACES_EXPORTER", "zipkin")])).expect_err("zipkin");
        assert!(e.contains("otlp"), "{e}");
    }
}
