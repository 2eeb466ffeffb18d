//! Resilience settings of clusters and routes: breaker, bulkhead, retries, outlier ejection,
//! timeouts and fallbacks.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use resilience::{BreakerConfig, BudgetConfig, BulkheadConfig};

/// A set of HTTP status codes (100-639).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct StatusSet([u64; 10]);

impl StatusSet {
    /// Every status from `from` to `to`, inclusive.
    pub(crate) fn range(from: u16, to: u16) -> Self {
        let mut s = Self::default();
        for c in from..=to {
            s.insert(c);
        }
        s
    }

    /// Adds `code` (ignored when out of range).
    pub(crate) fn insert(&mut self, code: u16) {
        let c = usize::from(code);
        if let Some(w) = self.0.get_mut(c / 64) {
            *w |= 1 << (c % 64);
        }
    }

    /// Whether `code` is in the set.
    pub(crate) fn contains(&self, code: u16) -> bool {
        let c = usize::from(code);
        self.0.get(c / 64).is_some_and(|w| w & (1 << (c % 64)) != 0)
    }

    /// Adds every member of `other`.
    pub(crate) fn extend(&mut self, other: StatusSet) {
        for (a, b) in self.0.iter_mut().zip(other.0) {
            *a |= b;
        }
    }

    /// Whether the set is empty.
    #[cfg(test)]
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|w| *w == 0)
    }
}

/// `[clusters.NAME.circuit_breaker]`: `None` when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Window, trip rule and sleep window.
    pub config: BreakerConfig,
    /// Upstream statuses that count as failures (default: 5xx).
    pub failure_statuses: StatusSet,
}

/// `[clusters.NAME.bulkhead]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BulkheadSettings {
    /// Concurrency and queue size.
    pub config: BulkheadConfig,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
}

/// What a retry may react to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct RetryOn {
    /// The connection could not be made (the request was never sent: safe for any method).
    pub connect_failure: bool,
    /// The upstream closed or broke the exchange before answering.
    pub reset: bool,
    /// The attempt's timeout passed.
    pub timeout: bool,
    /// The upstream answered with one of these statuses.
    pub statuses: StatusSet,
}

/// Retries of a cluster or route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RetryPolicy {
    /// Retries after the first attempt.
    pub retries: u32,
    /// What triggers a retry.
    pub on: RetryOn,
    /// Retry POST/PATCH too (after the request was sent). Connect failures are always
    /// retried.
    pub non_idempotent: bool,
}

/// `[clusters.NAME.outlier_detection]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OutlierSettings {
    /// Failures in a row that eject an endpoint.
    pub consecutive_failures: u32,
    /// First ejection's length; the n-th ejection lasts n times as long.
    pub base_ejection: Duration,
    /// Longest ejection.
    pub max_ejection: Duration,
    /// Most of the cluster that may be ejected at once, in percent (at least one endpoint
    /// of a cluster with two or more, never all).
    pub max_ejection_percent: u8,
}

/// Everything resilience-related about a cluster.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ClusterPolicy {
    /// The breaker (`None`: disabled).
    pub breaker: Option<BreakerSettings>,
    /// The bulkhead.
    pub bulkhead: BulkheadSettings,
    /// Default retries of routes to this cluster.
    pub retry: RetryPolicy,
    /// The cluster's retry budget.
    pub budget: BudgetConfig,
    /// Passive outlier ejection (`None`: disabled).
    pub outlier: Option<OutlierSettings>,
    /// Longest wait for upstream bytes in one attempt.
    pub per_try_timeout: Duration,
    /// Deadline for the whole exchange across attempts (`None`: only per-try limits).
    pub timeout: Option<Duration>,
}

/// When a fallback answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FallbackOn {
    /// Connecting failed.
    pub connect_failure: bool,
    /// An attempt or the deadline timed out.
    pub timeout: bool,
    /// The upstream broke the exchange.
    pub reset: bool,
    /// The upstream answered with one of these statuses.
    pub statuses: StatusSet,
    /// The cluster's breaker refused the call.
    pub circuit_open: bool,
    /// The cluster's bulkhead refused the call.
    pub bulkhead_full: bool,
    /// The cluster had no usable endpoint.
    pub no_endpoints: bool,
}

/// A fixed fallback response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StaticResponse {
    /// Status.
    pub status: StatusCode,
    /// Headers.
    pub headers: Vec<(HeaderName, HeaderValue)>,
    /// Body.
    pub body: Bytes,
}

/// The last good response of each GET, kept for fallbacks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LastGoodSettings {
    /// Oldest response that may still be served.
    pub max_age: Duration,
    /// Most responses kept.
    pub max_entries: usize,
    /// Most bytes (bodies plus headers) kept.
    pub max_bytes: u64,
    /// Larger responses are not kept.
    pub max_body_bytes: usize,
}

/// `[routes.fallback]`: tried in order: another cluster, the last good response, the static
/// response.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct FallbackSpec {
    /// Which failures it answers.
    pub on: FallbackOn,
    /// Index of a cluster to send the request to instead.
    pub cluster: Option<usize>,
    /// Serve the last good response of the same GET.
    pub last_good: Option<LastGoodSettings>,
    /// A fixed response.
    pub response: Option<StaticResponse>,
}

/// A route's overrides of its cluster's policy.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct RoutePolicy {
    /// Overall deadline.
    pub timeout: Option<Duration>,
    /// Per-attempt timeout.
    pub per_try_timeout: Option<Duration>,
    /// Retries.
    pub retry: Option<RetryPolicy>,
    /// Fallback.
    pub fallback: Option<FallbackSpec>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_sets() {
        let mut s = StatusSet::range(500, 599);
        assert!(s.contains(500) && s.contains(599) && !s.contains(499) && !s.contains(600));
        s.insert(429);
        assert!(s.contains(429));
        s.insert(9999);
        assert!(!s.contains(9999));
        assert!(StatusSet::default().is_empty());
    }
}
