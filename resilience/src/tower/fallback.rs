//! [`FallbackLayer`]: a failed call is answered by a fallback function, whose own outcome is
//! counted as Hystrix counts it.

use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::{Layer, Service};

use super::{now, take_ready, BoxError, BoxFuture};
use crate::{CircuitBreaker, Event};

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
    // Boxed: on failure it goes on to await the fallback's own future, whose type is the
    // caller's.
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
