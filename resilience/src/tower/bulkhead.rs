//! [`BulkheadLayer`]: bounds concurrent calls; the slot is held until the call's future
//! completes.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use pin_project_lite::pin_project;
use tower::{Layer, Service, ServiceExt};

use super::{take_ready, BoxError, BoxFuture};
use crate::{Bulkhead, BulkheadPermit};

/// Bounds concurrent calls with a [`Bulkhead`]; a call waits at most `queue_timeout` for a
/// slot (when the bulkhead has a queue) and otherwise fails at once with
/// [`Rejected`](crate::Rejected).
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
    type Future = ResponseFuture<S::Future, S::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        // Without a queue the slot is taken here and the call needs no allocation; a queued
        // call waits in a boxed future, since the wait is an async acquisition.
        let state = if self.bulkhead.queues(self.queue_timeout) {
            let inner = take_ready(&mut self.inner);
            let bulkhead = self.bulkhead.clone();
            let wait = self.queue_timeout;
            State::Queued {
                future: Box::pin(async move {
                    let _permit = bulkhead.acquire_within(wait, tokio::time::sleep).await?;
                    inner.oneshot(req).await.map_err(Into::into)
                }),
            }
        } else {
            match self.bulkhead.try_acquire() {
                Ok(permit) => State::Called {
                    future: self.inner.call(req),
                    _permit: Some(permit),
                },
                Err(rejected) => State::Refused {
                    error: Some(rejected.into()),
                },
            }
        };
        ResponseFuture { state }
    }
}

pin_project! {
    /// The future of a [`BulkheadService`] call.
    pub struct ResponseFuture<F, Res> {
        #[pin]
        state: State<F, Res>,
    }
}

impl<F, Res> std::fmt::Debug for ResponseFuture<F, Res> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, Res> {
        Called { #[pin] future: F, _permit: Option<BulkheadPermit> },
        Queued { future: BoxFuture<Result<Res, BoxError>> },
        Refused { error: Option<BoxError> },
    }
}

impl<F, Res, E> Future for ResponseFuture<F, Res>
where
    F: Future<Output = Result<Res, E>>,
    E: Into<BoxError>,
{
    type Output = Result<Res, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            StateProj::Called { future, .. } => future.poll(cx).map_err(Into::into),
            StateProj::Queued { future } => future.as_mut().poll(cx),
            StateProj::Refused { error } => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
        }
    }
}
