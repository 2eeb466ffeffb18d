//! Tower layers for the same policies: circuit breaker, bulkhead, retry within a budget,
//! fallback, plus tower's own timeout. They compose on any `tower::Service` (hyper clients,
//! tonic channels); a [`Classify`] decides which results are failures.
//!
//! Errors are boxed (`BoxError`, tower's convention); refusals are typed and can be downcast:
//! [`ShortCircuited`], [`Rejected`], and tower's [`Elapsed`].
//!
//! Time comes from `tokio::time::Instant`, so tests with paused time are deterministic.
//!
//! ```
//! use std::sync::Arc;
//! use std::time::Duration;
//! use resilience::tower::{BulkheadLayer, CircuitBreakerLayer, ErrorsAreFailures, TimeoutLayer};
//! use resilience::{BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker};
//! use tower::ServiceBuilder;
//!
//! let breaker = Arc::new(CircuitBreaker::new("steering", BreakerConfig::default(), std::time::Instant::now()));
//! let bulkhead = Arc::new(Bulkhead::new(BulkheadConfig { max_concurrent: 10, max_queue: 0 }));
//! let svc = ServiceBuilder::new()
//!     .layer(CircuitBreakerLayer::new(breaker, ErrorsAreFailures))
//!     .layer(BulkheadLayer::new(bulkhead, Duration::ZERO))
//!     .layer(TimeoutLayer::new(Duration::from_millis(500)))
//!     .service(tower::service_fn(|x: u32| async move { Ok::<_, std::io::Error>(x) }));
//! # let _ = svc;
//! ```

mod classify;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tower::{Layer, Service, ServiceExt};

pub use classify::{Classify, ErrorsAreFailures, GrpcStatus, HttpStatus};
pub use tower::timeout::error::Elapsed;
pub use tower::timeout::TimeoutLayer;

use crate::{Bulkhead, CircuitBreaker, Event, Outcome, Rejected, RetryBudget, ShortCircuited};

/// Tower's boxed error.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Takes the service that `poll_ready` readied and leaves a fresh clone in its place (the
/// usual pattern for services whose call future outlives `&mut self`).
fn take_ready<S: Clone>(slot: &mut S) -> S {
    let clone = slot.clone();
    std::mem::replace(slot, clone)
}

/// Wraps calls in a [`CircuitBreaker`]: refused calls fail at once with [`ShortCircuited`];
/// admitted calls are classified and recorded.
#[derive(Debug, Clone)]
pub struct CircuitBreakerLayer<C> {
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl<C> CircuitBreakerLayer<C> {
    /// A layer over `breaker`, judging results with `classifier`.
    pub fn new(breaker: Arc<CircuitBreaker>, classifier: C) -> Self {
        Self {
            breaker,
            classifier,
        }
    }
}

impl<S, C: Clone> Layer<S> for CircuitBreakerLayer<C> {
    type Service = CircuitBreakerService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreakerService {
            inner,
            breaker: self.breaker.clone(),
            classifier: self.classifier.clone(),
        }
    }
}

/// See [`CircuitBreakerLayer`].
#[derive(Debug, Clone)]
pub struct CircuitBreakerService<S, C> {
    inner: S,
    breaker: Arc<CircuitBreaker>,
    classifier: C,
}

impl<S, C, Req> Service<Req> for CircuitBreakerService<S, C>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    C: Classify<S::Response>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let permit = match self.breaker.try_acquire(now()) {
            Ok(p) => p,
            Err(refused) => return Box::pin(std::future::ready(Err(refused.into()))),
        };
        let mut inner = take_ready(&mut self.inner);
        let classifier = self.classifier.clone();
        Box::pin(async move {
            let start = now();
            let result = inner.call(req).await.map_err(Into::into);
            let end = now();
            permit.record(classifier.classify(result.as_ref()), end - start, end);
            result
        })
    }
}

/// Bounds concurrent calls with a [`Bulkhead`]; a call waits at most `queue_timeout` for a
/// slot (when the bulkhead has a queue) and otherwise fails at once with [`Rejected`].
#[derive(Debug, Clone)]
pub struct BulkheadLayer {
    bulkhead: Arc<Bulkhead>,
    queue_timeout: Duration,
}

impl BulkheadLayer {
    /// A layer over `bulkhead`.
    pub fn new(bulkhead: Arc<Bulkhead>, queue_timeout: Duration) -> Self {
        Self {
            bulkhead,
            queue_timeout,
        }
    }
}

impl<S> Layer<S> for BulkheadLayer {
    type Service = BulkheadService<S>;
    fn layer(&self, inner: S) -> Self::Service {
        BulkheadService {
            inner,
            bulkhead: self.bulkhead.clone(),
            queue_timeout: self.queue_timeout,
        }
    }
}

/// See [`BulkheadLayer`].
#[derive(Debug, Clone)]
pub struct BulkheadService<S> {
    inner: S,
    bulkhead: Arc<Bulkhead>,
    queue_timeout: Duration,
}

impl<S, Req> Service<Req> for BulkheadService<S>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let bulkhead = self.bulkhead.clone();
        let wait = self.queue_timeout;
        Box::pin(async move {
            let _permit = bulkhead.acquire(tokio::time::sleep(wait)).await?;
            inner.call(req).await.map_err(Into::into)
        })
    }
}

/// Retries failed calls (as judged by the classifier) up to `max_retries` times, only while
/// the shared [`RetryBudget`] allows, with exponential backoff. Refusals by a breaker or a
/// bulkhead are never retried: they are load shedding.
#[derive(Debug, Clone)]
pub struct RetryLayer<C> {
    budget: Arc<RetryBudget>,
    classifier: C,
    max_retries: u32,
    backoff: Duration,
}

impl<C> RetryLayer<C> {
    /// Up to `max_retries` retries within `budget`, the first after `backoff`, doubling.
    pub fn new(
        budget: Arc<RetryBudget>,
        classifier: C,
        max_retries: u32,
        backoff: Duration,
    ) -> Self {
        Self {
            budget,
            classifier,
            max_retries,
            backoff,
        }
    }
}

impl<S, C: Clone> Layer<S> for RetryLayer<C> {
    type Service = RetryService<S, C>;
    fn layer(&self, inner: S) -> Self::Service {
        RetryService {
            inner,
            layer: RetryLayer {
                budget: self.budget.clone(),
                classifier: self.classifier.clone(),
                max_retries: self.max_retries,
                backoff: self.backoff,
            },
        }
    }
}

/// See [`RetryLayer`].
#[derive(Debug, Clone)]
pub struct RetryService<S, C> {
    inner: S,
    layer: RetryLayer<C>,
}

fn is_load_shedding(e: &BoxError) -> bool {
    e.is::<ShortCircuited>() || e.is::<Rejected>()
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
            for _ in 0..layer.max_retries {
                let failed = matches!(
                    layer.classifier.classify(result.as_ref()),
                    Outcome::Failure | Outcome::Timeout
                );
                let shed = result.as_ref().err().is_some_and(is_load_shedding);
                if !failed || shed || !layer.budget.try_withdraw(now()) {
                    break;
                }
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

/// Answers with `fallback(error)` when the call fails (error, timeout, short circuit,
/// rejection). When given a breaker, the fallback's own outcome is counted in its metrics
/// (`fallback_success` / `fallback_failure`), as Hystrix does.
#[derive(Clone)]
pub struct FallbackLayer<F> {
    fallback: F,
    metrics: Option<Arc<CircuitBreaker>>,
}

impl<F> std::fmt::Debug for FallbackLayer<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackLayer").finish_non_exhaustive()
    }
}

impl<F> FallbackLayer<F> {
    /// A layer answering failures with `fallback`.
    pub fn new(fallback: F) -> Self {
        Self {
            fallback,
            metrics: None,
        }
    }

    /// Counts fallback outcomes in `breaker`'s metrics.
    pub fn counted_in(mut self, breaker: Arc<CircuitBreaker>) -> Self {
        self.metrics = Some(breaker);
        self
    }
}

impl<S, F: Clone> Layer<S> for FallbackLayer<F> {
    type Service = FallbackService<S, F>;
    fn layer(&self, inner: S) -> Self::Service {
        FallbackService {
            inner,
            layer: self.clone(),
        }
    }
}

/// See [`FallbackLayer`].
#[derive(Clone)]
pub struct FallbackService<S, F> {
    inner: S,
    layer: FallbackLayer<F>,
}

impl<S, F> std::fmt::Debug for FallbackService<S, F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FallbackService").finish_non_exhaustive()
    }
}

impl<S, F, Fut, Req> Service<Req> for FallbackService<S, F>
where
    S: Service<Req> + Clone + Send + 'static,
    S::Future: Send,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    F: Fn(BoxError) -> Fut + Clone + Send + Sync + 'static,
    Fut: Future<Output = Result<S::Response, BoxError>> + Send + 'static,
    Req: Send + 'static,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = BoxFuture<Result<S::Response, BoxError>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let mut inner = take_ready(&mut self.inner);
        let layer = self.layer.clone();
        Box::pin(async move {
            let error = match inner.call(req).await {
                Ok(r) => return Ok(r),
                Err(e) => e.into(),
            };
            let answered = (layer.fallback)(error).await;
            if let Some(b) = &layer.metrics {
                let event = if answered.is_ok() {
                    Event::FallbackSuccess
                } else {
                    Event::FallbackFailure
                };
                b.record(event, now());
            }
            answered
        })
    }
}
