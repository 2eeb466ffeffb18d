//! Which results count as failures.

use super::{BoxError, Elapsed};
use crate::Outcome;

/// Judges a call's result for the breaker and the retry policy.
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// The outcome of `result`.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome;
}

/// Errors: timeouts are [`Outcome::Timeout`], everything else a failure. Refusals by a breaker
/// or bulkhead further in are failures too (the dependency is unavailable).
fn classify_error(e: &BoxError) -> Outcome {
    if e.is::<Elapsed>() {
        Outcome::Timeout
    } else {
        Outcome::Failure
    }
}

/// Any error is a failure; any response a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreFailures;

impl<Res> Classify<Res> for ErrorsAreFailures {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        result.map_or_else(classify_error, |_| Outcome::Success)
    }
}

/// HTTP: errors and 5xx responses are failures (or exactly the listed statuses); 4xx are the
/// caller's fault and do not count against the dependency.
#[derive(Debug, Clone, Default)]
pub struct HttpStatus {
    failures: Option<Vec<u16>>,
}

impl HttpStatus {
    /// Failures are errors and any 5xx.
    pub fn server_errors() -> Self {
        Self::default()
    }

    /// Failures are errors and exactly these statuses.
    pub fn statuses(list: impl IntoIterator<Item = u16>) -> Self {
        Self {
            failures: Some(list.into_iter().collect()),
        }
    }

    /// Whether `status` is a failure.
    pub fn is_failure(&self, status: http::StatusCode) -> bool {
        match &self.failures {
            None => status.is_server_error(),
            Some(list) => list.contains(&status.as_u16()),
        }
    }
}

impl<B: 'static> Classify<http::Response<B>> for HttpStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        match result {
            Err(e) => classify_error(e),
            Ok(r) if self.is_failure(r.status()) => Outcome::Failure,
            Ok(r) if r.status().is_client_error() => Outcome::Ignored,
            Ok(_) => Outcome::Success,
        }
    }
}

/// gRPC over HTTP/2 (tonic channels): transport errors, HTTP 5xx, and the `grpc-status` codes
/// that mean the server is in trouble (UNKNOWN 2, DEADLINE_EXCEEDED 4 as a timeout,
/// RESOURCE_EXHAUSTED 8, INTERNAL 13, UNAVAILABLE 14) are failures. Application errors
/// (NOT_FOUND, INVALID_ARGUMENT, ...) are not. The status is read from the response headers,
/// where servers put it for trailers-only error responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatus;

impl<B: 'static> Classify<http::Response<B>> for GrpcStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Outcome {
        let r = match result {
            Err(e) => return classify_error(e),
            Ok(r) => r,
        };
        if r.status().is_server_error() {
            return Outcome::Failure;
        }
        let code = r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u8>().ok());
        match code {
            Some(4) => Outcome::Timeout,
            Some(2 | 8 | 13 | 14) => Outcome::Failure,
            _ => Outcome::Success,
        }
    }
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> Outcome + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Outcome {
        self(result)
    }
}
