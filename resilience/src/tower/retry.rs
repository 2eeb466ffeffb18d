//! [`RetryLayer`]: failed calls attempted again as [`RetryPolicy::decide`] says (the same rule
//! the gateway's exchange uses), inside a shared [`RetryBudget`], with exponential backoff.

use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};

use super::{now, take_ready, BoxError, BoxFuture, Classified, Classify};
use crate::{RetryBudget, RetryPolicy};

/// Retries failed calls (as judged by the classifier) while the [`RetryPolicy`] and the
/// shared [`RetryBudget`] allow, with exponential backoff. Refusals by a breaker or a
/// bulkhead are never retried: they are load shedding. Every call is treated as safe to
/// repeat; wrap only idempotent calls.
#[derive(Debug, Clone)]
pub struct RetryLayer<C> {
    budget: Arc<RetryBudget>,
    classifier: C,
    policy: RetryPolicy,
    backoff: Duration,
}

impl<C> RetryLayer<C> {
    /// Up to `max_retries` retries of anything the classifier calls a failure, within
    /// `budget`, the first after `backoff`, doubling.
    pub fn new(
        budget: Arc<RetryBudget>,
        classifier: C,
        max_retries: u32,
        backoff: Duration,
    ) -> Self {
        Self::with_policy(
            budget,
            classifier,
            RetryPolicy::any_failure(max_retries),
            backoff,
        )
    }

    /// Retries as `policy` says (its retries and the failures it covers), within `budget`.
    pub fn with_policy(
        budget: Arc<RetryBudget>,
        classifier: C,
        policy: RetryPolicy,
        backoff: Duration,
    ) -> Self {
        Self {
            budget,
            classifier,
            policy,
            backoff,
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, C> {
    inner: S,
    layer: RetryLayer<C>,
}

impl<S, C, Req> Service<Req> for RetryService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    C: Classify<S::Response>,
    Req: Clone + Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    // Boxed: the loop awaits the backoff timer and the inner service's readiness between
    // attempts, which a hand-written state machine would only restate.
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let layer = self.layer.clone();
        Box::pin(async move {
            layer.budget.deposit(now());
            let mut result = inner.call(req.clone()).await.map_err(Into::into);
            let mut backoff = layer.backoff;
            let mut retries = 0;
            while let Classified::Failed(failure) = layer.classifier.classify(result.as_ref()) {
                let decision = layer
                    .policy
                    .decide(failure, true, retries, &layer.budget, now());
                if !decision.retries() {
                    break;
                }
                retries += 1;
                if !backoff.is_zero() {
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                let svc = inner.ready().await.map_err(Into::into)?;
                result = svc.call(req.clone()).await.map_err(Into::into);
            }
            result
        })
    }
}
