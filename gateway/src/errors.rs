//! The one place where failures become client responses: status, a stable error code, and a
//! JSON body naming the route and the reason.

use pingora::{Error, ErrorSource, ErrorType};

use resilience::Failure;
use serde::Serialize;

use crate::edge::{HeadViolation, PathError};

/// Why the gateway answered a request itself instead of relaying an upstream response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GatewayError {
    /// No route matches the request.
    NoRoute,
    /// The upstream call failed (or was refused) and no fallback answered.
    Upstream(Failure),
    /// The client sent something the gateway cannot proxy.
    BadRequest,
    /// A bug or resource problem inside the gateway.
    Internal,
    /// The request path cannot be normalized safely (400).
    InvalidPath(PathError),
    /// The request head broke a size limit (414 for the target, 431 for headers).
    HeadTooLarge(HeadViolation),
}

/// The one classification of a pingora error as the upstream's failure, by its type and
/// source (never its text): `None` when it is not the upstream's (the client's, or the
/// gateway's own).
pub(crate) fn upstream_failure(e: &Error) -> Option<Failure> {
    use ErrorType::*;
    Some(match (e.etype(), e.esource()) {
        (ConnectTimedout, _) => Failure::ConnectTimeout,
        (TLSHandshakeFailure | InvalidCert | HandshakeError | TLSWantX509Lookup, _) => Failure::Tls,
        (
            ConnectRefused | ConnectNoRoute | ConnectError | ConnectProxyFailure
            | TLSHandshakeTimedout | SocketError | BindError,
            _,
        ) => Failure::Connect,
        (ReadTimedout | WriteTimedout, ErrorSource::Upstream) => Failure::Timeout,
        (_, ErrorSource::Upstream) => Failure::Reset,
        _ => return None,
    })
}

impl GatewayError {
    /// Classifies a pingora error by its type and source, never by its text: the upstream's
    /// failure ([`upstream_failure`]), else the client's or the gateway's own. `None` when
    /// the client went away and there is nobody to answer.
    pub(crate) fn classify(e: &Error) -> Option<Self> {
        use ErrorType::*;
        if let Some(failure) = upstream_failure(e) {
            return Some(Self::Upstream(failure));
        }
        Some(match (e.etype(), e.esource()) {
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
            Self::Upstream(f) => match f {
                Failure::NoEndpoints
                | Failure::CircuitOpen
                | Failure::BulkheadFull
                | Failure::Shed => 503,
                Failure::Connect
                | Failure::Tls
                | Failure::Reset
                | Failure::Status(_)
                | Failure::BadResponse => 502,
                Failure::ConnectTimeout | Failure::Timeout => 504,
            },
            Self::BadRequest | Self::InvalidPath(_) => 400,
            Self::Internal => 500,
            Self::HeadTooLarge(HeadViolation::UriTooLong) => 414,
            Self::HeadTooLarge(_) => 431,
        }
    }

    /// Stable machine-readable code (also in the access log).
    pub(crate) fn code(self) -> &'static str {
        match self {
            Self::NoRoute => "no_route",
            Self::Upstream(f) => match f {
                Failure::NoEndpoints => "no_endpoints",
                Failure::Connect => "upstream_connect_failed",
                Failure::Tls => "upstream_tls_failed",
                Failure::ConnectTimeout => "upstream_connect_timeout",
                Failure::Timeout => "upstream_timeout",
                Failure::Reset => "upstream_error",
                Failure::CircuitOpen => "circuit_open",
                Failure::BulkheadFull => "bulkhead_full",
                Failure::Status(_) => "upstream_error_status",
                Failure::BadResponse => "upstream_headers_too_large",
                Failure::Shed => "overloaded",
            },
            Self::BadRequest => "bad_request",
            Self::Internal => "internal_error",
            Self::InvalidPath(_) => "invalid_path",
            Self::HeadTooLarge(v) => match v {
                HeadViolation::UriTooLong => "uri_too_long",
                HeadViolation::HeaderTooLarge => "header_too_large",
                HeadViolation::HeadersTooLarge => "request_headers_too_large",
                HeadViolation::TooManyHeaders => "too_many_headers",
            },
        }
    }

    /// Human-readable reason; never includes internal addresses.
    pub(crate) fn reason(self) -> &'static str {
        match self {
            Self::NoRoute => "no route matches this request",
            Self::Upstream(f) => match f {
                Failure::NoEndpoints => "the route's cluster has no endpoints",
                Failure::Connect => "could not connect to an upstream endpoint",
                Failure::Tls => {
                    "the TLS handshake with the upstream failed: its certificate is not trusted or not for the name asked, or no protocol in common"
                }
                Failure::ConnectTimeout => "connecting to the upstream timed out",
                Failure::Timeout => "the upstream did not respond in time",
                Failure::Reset => "the upstream response was broken or cut short",
                Failure::CircuitOpen => {
                    "the route's cluster is failing and its circuit breaker is open"
                }
                Failure::BulkheadFull => "the route's cluster is at its concurrency limit",
                Failure::Status(_) => "the upstream answered with an error",
                Failure::BadResponse => {
                    "the upstream response headers are larger than the gateway accepts"
                }
                Failure::Shed => {
                    "the gateway is shedding load at this request's priority; retry later"
                }
            },
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
        }
    }

    /// The gRPC status a gRPC client gets instead of the one its HTTP status maps to: a shed
    /// call is `RESOURCE_EXHAUSTED` (8), as gRPC servers answer when they shed.
    pub(crate) fn grpc_status(self) -> Option<u32> {
        matches!(self, Self::Upstream(Failure::Shed)).then_some(8)
    }

    /// Whether the client should be told when to come back (`Retry-After`): refusals that
    /// pass on their own (shed, a full bulkhead, an open breaker).
    pub(crate) fn retry_after(self) -> bool {
        matches!(
            self,
            Self::Upstream(Failure::Shed | Failure::BulkheadFull | Failure::CircuitOpen)
        )
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
            Some(GatewayError::Upstream(Failure::Connect))
        );
        assert_eq!(
            GatewayError::classify(&err(ConnectTimedout, up())),
            Some(GatewayError::Upstream(Failure::ConnectTimeout))
        );
        assert_eq!(
            GatewayError::classify(&err(ReadTimedout, up())),
            Some(GatewayError::Upstream(Failure::Timeout))
        );
        assert_eq!(
            GatewayError::classify(&err(ConnectionClosed, up())),
            Some(GatewayError::Upstream(Failure::Reset))
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
        assert_eq!(GatewayError::Upstream(Failure::Connect).status(), 502);
        assert_eq!(GatewayError::Upstream(Failure::Timeout).status(), 504);
        let body: serde_json::Value = serde_json::from_slice(
            &GatewayError::Upstream(Failure::Timeout).body(Some("api"), Some("c"), Some("id-1")),
        )
        .expect("json");
        assert_eq!(body["error"], "upstream_timeout");
        assert_eq!(body["route"], "api");
        assert_eq!(body["cluster"], "c");
        assert_eq!(body["status"], 504);
    }
}
