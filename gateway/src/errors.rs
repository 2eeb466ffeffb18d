//! The one place where failures become client responses: status, a stable error code, and a
//! JSON body naming the route and the reason.

use pingora::{Error, ErrorSource, ErrorType};

use crate::edge::{HeadViolation, PathError};
use serde::Serialize;

/// Why the gateway answered a request itself instead of relaying an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatewayError {
    /// No route matches the request.
    NoRoute,
    /// The route's cluster has no endpoints.
    NoEndpoints,
    /// Connecting to the upstream endpoint failed (refused, unreachable, TLS).
    ConnectFailed,
    /// Connecting took longer than the cluster's connect timeout.
    ConnectTimeout,
    /// The upstream accepted the request but did not answer within the read/write timeout.
    UpstreamTimeout,
    /// The upstream broke the exchange (closed early, invalid response).
    UpstreamBroken,
    /// The cluster's circuit breaker is refusing calls.
    CircuitOpen,
    /// The cluster's bulkhead is full.
    BulkheadFull,
    /// The upstream answered with a failure status and the fallback could not answer.
    UpstreamStatus,
    /// The client sent something the gateway cannot proxy.
    BadRequest,
    /// A bug or resource problem inside the gateway.
    Internal,
    /// The request path cannot be normalized safely (400).
    InvalidPath(PathError),
    /// The request head broke a size limit (414 for the target, 431 for headers).
    HeadTooLarge(HeadViolation),
    /// The upstream's response head broke a size limit (502).
    UpstreamHeadersTooLarge,
}

impl GatewayError {
    /// Classifies a pingora error by its type and source, never by its text.
    pub(crate) fn classify(e: &Error) -> Option<Self> {
        use ErrorType::*;
        Some(match (e.etype(), e.esource()) {
            (ConnectTimedout, _) => Self::ConnectTimeout,
            (
                ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
                | TLSHandshakeFailure | TLSHandshakeTimedout | SocketError | BindError,
                _,
            ) => Self::ConnectFailed,
            (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => Self::UpstreamTimeout,
            (_, ErrorSource::Upstream) => Self::UpstreamBroken,
            // The client went away: there is nobody to answer.
            (
                ReadError | WriteError | ConnectionClosed | ReadTimedout | WriteTimedout,
                ErrorSource::Downstream,
            ) => return None,
            (HTTPStatus(code), _) if (400..500).contains(code) => Self::BadRequest,
            (_, ErrorSource::Downstream) => Self::BadRequest,
            _ => Self::Internal,
        })
    }

    /// HTTP status for the client.
    pub(crate) fn status(self) -> u16 {
        match self {
            Self::NoRoute => 404,
            Self::NoEndpoints | Self::CircuitOpen | Self::BulkheadFull => 503,
            Self::ConnectFailed | Self::UpstreamBroken | Self::UpstreamStatus => 502,
            Self::ConnectTimeout | Self::UpstreamTimeout => 504,
            Self::BadRequest | Self::InvalidPath(_) => 400,
            Self::Internal => 500,
            Self::HeadTooLarge(HeadViolation::UriTooLong) => 414,
            Self::HeadTooLarge(_) => 431,
            Self::UpstreamHeadersTooLarge => 502,
        }
    }

    /// Stable machine-readable code (also in the access log).
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::NoEndpoints => "no_endpoints",
            Self::ConnectFailed => "upstream_connect_failed",
            Self::ConnectTimeout => "upstream_connect_timeout",
            Self::UpstreamTimeout => "upstream_timeout",
            Self::UpstreamBroken => "upstream_error",
            Self::CircuitOpen => "circuit_open",
            Self::BulkheadFull => "bulkhead_full",
            Self::UpstreamStatus => "upstream_error_status",
            Self::BadRequest => "bad_request",
            Self::Internal => "internal_error",
            Self::InvalidPath(_) => "invalid_path",
            Self::HeadTooLarge(v) => match v {
                HeadViolation::UriTooLong => "uri_too_long",
                HeadViolation::HeaderTooLarge => "header_too_large",
                HeadViolation::HeadersTooLarge => "request_headers_too_large",
                HeadViolation::TooManyHeaders => "too_many_headers",
            },
            Self::UpstreamHeadersTooLarge => "upstream_headers_too_large",
        }
    }

    /// Human-readable reason; never includes internal addresses.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::NoRoute => "no route matches this request",
            Self::NoEndpoints => "the route's cluster has no endpoints",
            Self::ConnectFailed => "could not connect to an upstream endpoint",
            Self::ConnectTimeout => "connecting to the upstream timed out",
            Self::UpstreamTimeout => "the upstream did not respond in time",
            Self::UpstreamBroken => "the upstream response was broken or cut short",
            Self::CircuitOpen => "the route's cluster is failing and its circuit breaker is open",
            Self::BulkheadFull => "the route's cluster is at its concurrency limit",
            Self::UpstreamStatus => "the upstream answered with an error",
            Self::BadRequest => "the request could not be proxied",
            Self::Internal => "internal gateway error",
            Self::InvalidPath(e) => e.reason(),
            Self::HeadTooLarge(v) => match v {
                HeadViolation::UriTooLong => {
                    "the request target is longer than the gateway accepts"
                }
                HeadViolation::HeaderTooLarge => {
                    "a request header line is longer than the gateway accepts"
                }
                HeadViolation::HeadersTooLarge => {
                    "the request headers together are larger than the gateway accepts"
                }
                HeadViolation::TooManyHeaders => {
                    "the request has more header lines than the gateway accepts"
                }
            },
            Self::UpstreamHeadersTooLarge => {
                "the upstream response headers are larger than the gateway accepts"
            }
        }
    }

    /// The JSON body sent to the client.
    pub(crate) fn body(
        self,
        route: Option<&str>,
        cluster: Option<&str>,
        request_id: Option<&str>,
    ) -> Vec<u8> {
        #[derive(Serialize)]
        struct Body<'a> {
            error: &'static str,
            status: u16,
            reason: &'static str,
            route: Option<&'a str>,
            cluster: Option<&'a str>,
            request_id: Option<&'a str>,
        }
        serde_json::to_vec(&Body {
            error: self.code(),
            status: self.status(),
            reason: self.reason(),
            route,
            cluster,
            request_id,
        })
        .unwrap_or_else(|_| b"{\"error\":\"internal_error\"}".to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(t: ErrorType, s: ErrorSource) -> Box<Error> {
        let mut e = Error::new(t);
        e.esource = s;
        e
    }

    #[test]
    fn classification_by_type_and_source() {
        use ErrorType::*;
        let up = || ErrorSource::Upstream;
        let down = || ErrorSource::Downstream;
        assert_eq!(
            GatewayError::classify(&err(ConnectRefused, up())),
            Some(GatewayError::ConnectFailed)
        );
        assert_eq!(
            GatewayError::classify(&err(ConnectTimedout, up())),
            Some(GatewayError::ConnectTimeout)
        );
        assert_eq!(
            GatewayError::classify(&err(ReadTimedout, up())),
            Some(GatewayError::UpstreamTimeout)
        );
        assert_eq!(
            GatewayError::classify(&err(ConnectionClosed, up())),
            Some(GatewayError::UpstreamBroken)
        );
        assert_eq!(GatewayError::classify(&err(ConnectionClosed, down())), None);
        assert_eq!(
            GatewayError::classify(&err(InvalidHTTPHeader, down())),
            Some(GatewayError::BadRequest)
        );
        assert_eq!(
            GatewayError::classify(&err(InternalError, ErrorSource::Internal)),
            Some(GatewayError::Internal)
        );
    }

    #[test]
    fn statuses_and_body() {
        assert_eq!(GatewayError::ConnectFailed.status(), 502);
        assert_eq!(GatewayError::UpstreamTimeout.status(), 504);
        let body: serde_json::Value = serde_json::from_slice(&GatewayError::UpstreamTimeout.body(
            Some("api"),
            Some("c"),
            Some("id-1"),
        ))
        .expect("json");
        assert_eq!(body["error"], "upstream_timeout");
        assert_eq!(body["route"], "api");
        assert_eq!(body["cluster"], "c");
        assert_eq!(body["status"], 504);
    }
}
