//! Resilience settings of clusters and routes: breaker, bulkhead, retries, outlier ejection,
//! timeouts and fallbacks.

use std::time::Duration;

use crate::proxy::LoadMetric;
use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use resilience::{
    BreakerConfig, BudgetConfig, BulkheadConfig, FailureSet, LimiterConfig, Priority, RetryPolicy,
    StatusSet,
};

/// `[clusters.NAME.circuit_breaker]`: `None` when disabled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BreakerSettings {
    /// Window, trip rule and sleep window.
    pub config: BreakerConfig,
    /// What counts as the upstream's failure: connect failures, timeouts, resets, and the
    /// `failure_statuses` (default: 5xx).
    pub failures: FailureSet,
}

/// `[clusters.NAME.bulkhead]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BulkheadSettings {
    /// Concurrency and queue size.
    pub config: BulkheadConfig,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
}

/// `[clusters.NAME.adaptive_concurrency]`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct AdaptiveSettings {
    /// The limit, its shedding reserve and queue.
    pub limiter: LimiterConfig,
    /// Origin statuses that count as drops (default 503 and 429).
    pub drop_statuses: StatusSet,
    /// The figure of the origin's ORCA load report the limit follows (`None`: reports are
    /// not read, the limit follows round trips and drops only).
    pub load_report: Option<LoadMetric>,
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
    /// The adaptive concurrency limit that replaces the bulkhead (`None`: the bulkhead).
    pub concurrency: Option<AdaptiveSettings>,
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
    pub on: FailureSet,
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
    /// The route's request priority (`None`: degraded, unless a claim or header says).
    pub priority: Option<Priority>,
}
