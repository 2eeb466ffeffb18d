//! [`CircuitBreakerLayer`]: refused calls fail at once; admitted calls are classified and
//! recorded when their future completes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{now, BoxError, Classify};
use crate::{CircuitBreaker, Permit};

/// Wraps calls in a [`CircuitBreaker`]: refused calls fail at once with
/// [`ShortCircuited`](crate::ShortCircuited); admitted calls are classified and recorded.
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
    S: Service<Req>,
    S::Error: Into<BoxError>,
    C: Classify<S::Response>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, C>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let state = match self.breaker.try_acquire(now()) {
            Ok(permit) => State::Called {
                future: self.inner.call(req),
                permit: Some(permit),
                classifier: self.classifier.clone(),
                start: now(),
            },
            Err(refused) => State::Refused {
                error: Some(refused.into()),
            },
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The future of a [`CircuitBreakerService`] call.
    #[derive(Debug)]
    pub struct ResponseFuture<F, C> {
        #[pin]
        state: State<F, C>,
    }
}

pin_project! {
    #[project = StateProj]
    #[derive(Debug)]
    enum State<F, C> {
        Called { #[pin] future: F, permit: Option<Permit>, classifier: C, start: Instant },
        Refused { error: Option<BoxError> },
    }
}

impl<F, C, Res, E> Future for ResponseFuture<F, C>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
    C: Classify<Res>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
            StateProj::Called {
                future,
                permit,
                classifier,
                start,
            } => {
                let result = std::task::ready!(future.poll(cx)).map_err(Into::into);
                if let Some(permit) = permit.take() {
                    let end = now();
                    let outcome = classifier.classify(result.as_ref()).outcome();
                    permit.record(outcome, end.saturating_duration_since(*start), end);
                }
                Poll::Ready(result)
            }
        }
    }
}
