//! Which results count as failures, and which failure each one is.

use super::{BoxError, Elapsed};
use crate::{Failure, Outcome, Rejected, ShortCircuited};

/// What a [`Classify`] makes of one call's result.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classified {
    /// The call worked.
    Success,
    /// Not the dependency's fault (a 4xx, say): counted neither way.
    Ignored,
    /// The call failed, classified.
    Failed(Failure),
}

impl Classified {
    /// What the breaker records.
    pub fn outcome(self) -> Outcome {
        match self {
            Self::Success => Outcome::Success,
            Self::Ignored => Outcome::Ignored,
            Self::Failed(f) => f.outcome(),
        }
    }
}

/// Judges a call's result for the breaker and the retry policy.
pub trait Classify<Res>: Clone + Send + Sync + 'static {
    /// What `result` was.
    fn classify(&self, result: Result<&Res, &BoxError>) -> Classified;
}

/// The failure an error stands for: a timeout, a refusal further in (a breaker or a
/// bulkhead), else the dependency broke the call.
pub fn failure_of(e: &BoxError) -> Failure {
    if e.is::<Elapsed>() {
        Failure::Timeout
    } else if e.is::<ShortCircuited>() {
        Failure::CircuitOpen
    } else if e.is::<Rejected>() {
        Failure::BulkheadFull
    } else {
        Failure::Reset
    }
}

/// Any error is a failure; any response a success.
#[derive(Debug, Clone, Copy, Default)]
pub struct ErrorsAreFailures;

impl<Res> Classify<Res> for ErrorsAreFailures {
    fn classify(&self, result: Result<&Res, &BoxError>) -> Classified {
        result.map_or_else(
            |e| Classified::Failed(failure_of(e)),
            |_| Classified::Success,
        )
    }
}

/// HTTP: errors and 5xx responses are failures (or exactly the listed statuses); 4xx are the
/// caller's fault and do not count against the dependency.
#[derive(Debug, Clone, Default)]
pub struct HttpStatus {
    failures: Option<crate::StatusSet>,
}

impl HttpStatus {
    /// Failures are errors and any 5xx.
    pub fn server_errors() -> Self {
        Self::default()
    }

    /// Failures are errors and exactly these statuses.
    pub fn statuses(list: impl IntoIterator<Item = u16>) -> Self {
        let mut set = crate::StatusSet::default();
        list.into_iter().for_each(|s| set.insert(s));
        Self {
            failures: Some(set),
        }
    }

    /// Whether `status` is a failure.
    pub fn is_failure(&self, status: http::StatusCode) -> bool {
        match &self.failures {
            None => status.is_server_error(),
            Some(set) => set.contains(status.as_u16()),
        }
    }
}

impl<B: 'static> Classify<http::Response<B>> for HttpStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Classified {
        match result {
            Err(e) => Classified::Failed(failure_of(e)),
            Ok(r) if self.is_failure(r.status()) => {
                Classified::Failed(Failure::Status(r.status().as_u16()))
            }
            Ok(r) if r.status().is_client_error() => Classified::Ignored,
            Ok(_) => Classified::Success,
        }
    }
}

/// gRPC over HTTP/2 (tonic channels): transport errors, HTTP 5xx, and the `grpc-status` codes
/// that mean the server is in trouble are failures: DEADLINE_EXCEEDED (4) as a timeout,
/// UNKNOWN (2) and INTERNAL (13) as a 500, RESOURCE_EXHAUSTED (8) as a 429, UNAVAILABLE (14)
/// as a 503. Application errors (NOT_FOUND, INVALID_ARGUMENT, ...) are not. The status is
/// read from the response headers, where servers put it for trailers-only error responses.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcStatus;

impl<B: 'static> Classify<http::Response<B>> for GrpcStatus {
    fn classify(&self, result: Result<&http::Response<B>, &BoxError>) -> Classified {
        let r = match result {
            Err(e) => return Classified::Failed(failure_of(e)),
            Ok(r) => r,
        };
        if r.status().is_server_error() {
            return Classified::Failed(Failure::Status(r.status().as_u16()));
        }
        let code = r
            .headers()
            .get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u8>().ok());
        match code {
            Some(4) => Classified::Failed(Failure::Timeout),
            Some(2 | 13) => Classified::Failed(Failure::Status(500)),
            Some(8) => Classified::Failed(Failure::Status(429)),
            Some(14) => Classified::Failed(Failure::Status(503)),
            _ => Classified::Success,
        }
    }
}

impl<Res, F> Classify<Res> for F
where
    F: Fn(Result<&Res, &BoxError>) -> Classified + Clone + Send + Sync + 'static,
{
    fn classify(&self, result: Result<&Res, &BoxError>) -> Classified {
        self(result)
    }
}
