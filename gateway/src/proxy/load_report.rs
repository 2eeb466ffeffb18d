//! The origin's own report of its load, in the ORCA formats (Open Request Cost Aggregation, as
//! Envoy and gRPC read it) on a response head:
//!
//! - `endpoint-load-metrics: TEXT application_utilization=0.8, named_metrics.queue=3`
//! - `endpoint-load-metrics: JSON {"application_utilization": 0.8}`
//! - `endpoint-load-metrics: BIN <base64 OrcaLoadReport>` or `endpoint-load-metrics-bin:
//!   <base64 OrcaLoadReport>` (the protobuf message, decoded with prost).
//!
//! The cluster's adaptive limit reads one metric from it ([`LoadMetric`]): by default
//! `application_utilization`, falling back to `cpu_utilization` when the origin sends only
//! that (as Envoy's client-side weighted round robin does). Both headers are the gateway's and
//! are removed before the response goes to the client: an origin's load is nobody else's
//! business, least of all an attacker's who wants to know when it is saturated.
//!
//! Hostile or broken reports are ignored, never an error: an unparsable header, a value that
//! is not a finite number, or a header over [`MAX_REPORT_BYTES`].

use std::collections::HashMap;
use std::fmt;

use base64::Engine as _;
use http::header::{HeaderMap, HeaderName};

/// The ORCA header, in any of its three formats.
pub(crate) const HEADER: HeaderName = HeaderName::from_static("endpoint-load-metrics");
/// The binary ORCA header (base64 of the protobuf message).
pub(crate) const HEADER_BIN: HeaderName = HeaderName::from_static("endpoint-load-metrics-bin");

/// Longest report read; longer ones are ignored.
pub(crate) const MAX_REPORT_BYTES: usize = 4096;

/// Which figure of the origin's report is its utilization.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LoadMetric {
    /// `application_utilization`, else `cpu_utilization`.
    Application,
    /// `cpu_utilization`.
    Cpu,
    /// `utilization.NAME`.
    Utilization(String),
    /// `named_metrics.NAME`.
    Named(String),
}

impl LoadMetric {
    /// Parses a configured name: `application_utilization`, `cpu_utilization`,
    /// `utilization.NAME` or `named_metrics.NAME`.
    pub(crate) fn parse(s: &str) -> Option<Self> {
        let named = |prefix: &str| {
            s.strip_prefix(prefix)
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_graphic()))
                .map(str::to_owned)
        };
        match s {
            "application_utilization" => Some(Self::Application),
            "cpu_utilization" => Some(Self::Cpu),
            _ => named("utilization.")
                .map(Self::Utilization)
                .or_else(|| named("named_metrics.").map(Self::Named)),
        }
    }
}

impl fmt::Display for LoadMetric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Application => f.write_str("application_utilization"),
            Self::Cpu => f.write_str("cpu_utilization"),
            Self::Utilization(n) => write!(f, "utilization.{n}"),
            Self::Named(n) => write!(f, "named_metrics.{n}"),
        }
    }
}

/// The part of ORCA's `xds.data.orca.v3.OrcaLoadReport` the gateway reads (field numbers as
/// in the published proto; the rest is skipped by the decoder). All three formats are read
/// into it, so that one function picks the configured figure.
#[derive(Clone, PartialEq, prost::Message, serde::Deserialize)]
#[serde(default)]
struct OrcaLoadReport {
    #[prost(double, tag = "1")]
    cpu_utilization: f64,
    #[prost(map = "string, double", tag = "5")]
    utilization: HashMap<String, f64>,
    #[prost(map = "string, double", tag = "8")]
    named_metrics: HashMap<String, f64>,
    #[prost(double, tag = "9")]
    application_utilization: f64,
}

/// The figure `metric` names from the response's report, if it carries a usable one.
pub(crate) fn read(headers: &HeaderMap, metric: &LoadMetric) -> Option<f64> {
    let value = |h: &HeaderName| {
        headers
            .get(h)
            .map(|v| v.as_bytes())
            .filter(|v| v.len() <= MAX_REPORT_BYTES)
            .and_then(|v| std::str::from_utf8(v).ok())
    };
    let report = if let Some(v) = value(&HEADER) {
        let v = v.trim();
        let (format, body) = v.split_once(' ').unwrap_or((v, ""));
        match format {
            "TEXT" => from_text(body),
            "JSON" => serde_json::from_str(body).ok(),
            "BIN" => from_bin(body),
            _ => None,
        }
    } else {
        value(&HEADER_BIN).and_then(from_bin)
    }?;
    pick(&report, metric).filter(|u| u.is_finite() && *u >= 0.0)
}

/// The configured figure. As in proto3, a utilization of 0 is one the origin did not set:
/// `application_utilization` then falls back to `cpu_utilization` (as Envoy's client-side
/// weighted round robin does).
fn pick(report: &OrcaLoadReport, metric: &LoadMetric) -> Option<f64> {
    let set = |u: f64| (u != 0.0).then_some(u);
    match metric {
        LoadMetric::Application => {
            set(report.application_utilization).or_else(|| set(report.cpu_utilization))
        }
        LoadMetric::Cpu => set(report.cpu_utilization),
        LoadMetric::Utilization(n) => report.utilization.get(n).copied(),
        LoadMetric::Named(n) => report.named_metrics.get(n).copied(),
    }
}

/// `key=value, key=value`; any field that is not a number spoils the report.
fn from_text(body: &str) -> Option<OrcaLoadReport> {
    let mut report = OrcaLoadReport::default();
    for pair in body.split(',') {
        let (k, v) = pair.split_once('=')?;
        let v = v.trim().parse::<f64>().ok()?;
        match k.trim() {
            "cpu_utilization" => report.cpu_utilization = v,
            "application_utilization" => report.application_utilization = v,
            k => {
                if let Some(n) = k.strip_prefix("utilization.") {
                    report.utilization.insert(n.to_owned(), v);
                } else if let Some(n) = k.strip_prefix("named_metrics.") {
                    report.named_metrics.insert(n.to_owned(), v);
                }
            }
        }
    }
    Some(report)
}

/// Base64 (standard, padding optional) of the protobuf message.
fn from_bin(body: &str) -> Option<OrcaLoadReport> {
    let engine = base64::engine::GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        base64::engine::GeneralPurposeConfig::new()
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::Indifferent),
    );
    let bytes = engine.decode(body.trim()).ok()?;
    <OrcaLoadReport as prost::Message>::decode(bytes.as_slice()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    fn with(name: HeaderName, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).expect("a header value"));
        h
    }

    #[test]
    fn reads_text_json_and_binary_reports() {
        let app = LoadMetric::Application;
        let text = with(
            HEADER,
            "TEXT cpu_utilization=0.3, application_utilization=1.25",
        );
        assert_eq!(read(&text, &app), Some(1.25));
        assert_eq!(read(&text, &LoadMetric::Cpu), Some(0.3));
        let named = with(HEADER, "TEXT named_metrics.queue=3,utilization.db=0.5");
        assert_eq!(read(&named, &LoadMetric::Named("queue".into())), Some(3.0));
        assert_eq!(
            read(&named, &LoadMetric::Utilization("db".into())),
            Some(0.5)
        );
        assert_eq!(read(&named, &app), None, "no application or CPU figure");

        let json = with(
            HEADER,
            r#"JSON {"cpu_utilization": 0.7, "named_metrics": {"queue": 2}}"#,
        );
        assert_eq!(read(&json, &app), Some(0.7), "falls back to the CPU figure");
        assert_eq!(read(&json, &LoadMetric::Named("queue".into())), Some(2.0));

        let report = OrcaLoadReport {
            cpu_utilization: 0.2,
            utilization: HashMap::from([("db".to_owned(), 0.4)]),
            named_metrics: HashMap::new(),
            application_utilization: 0.9,
        };
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(prost::Message::encode_to_vec(&report));
        assert_eq!(read(&with(HEADER_BIN, &b64), &app), Some(0.9));
        let bin = with(HEADER, &format!("BIN {}", b64.trim_end_matches('=')));
        assert_eq!(read(&bin, &LoadMetric::Utilization("db".into())), Some(0.4));
    }

    #[test]
    fn hostile_or_broken_reports_are_ignored() {
        let app = LoadMetric::Application;
        for bad in [
            "TEXT application_utilization=NaN",
            "TEXT application_utilization=inf",
            "TEXT application_utilization=-1",
            "TEXT application_utilization",
            "TEXT application_utilization=0.5, =",
            "JSON {not json",
            "JSON [1, 2]",
            "BIN !!!not-base64!!!",
            "BIN AAAA",
            "XML <load/>",
            "",
        ] {
            assert_eq!(read(&with(HEADER, bad), &app), None, "{bad}");
        }
        let huge = format!(
            "TEXT application_utilization=0.5,{}",
            "x=1,".repeat(MAX_REPORT_BYTES)
        );
        assert_eq!(read(&with(HEADER, &huge), &app), None);
    }

    #[test]
    fn configured_names_parse_and_print_back() {
        for s in [
            "application_utilization",
            "cpu_utilization",
            "utilization.db",
            "named_metrics.queue_depth",
        ] {
            assert_eq!(LoadMetric::parse(s).expect("a metric name").to_string(), s);
        }
        for bad in [
            "",
            "utilization.",
            "named_metrics.a b",
            "mem",
            "rps_fractional",
        ] {
            assert_eq!(LoadMetric::parse(bad), None, "{bad}");
        }
    }
}
