//! Tower layers for the same policies: circuit breaker, bulkhead, retry within a budget,
//! fallback, plus tower's own timeout. They compose on any `tower::Service` (hyper clients,
//! tonic channels); a [`Classify`] decides which results are failures.
//!
//! Errors are boxed (`BoxError`, tower's convention); refusals are typed and can be downcast:
//! [`ShortCircuited`](crate::ShortCircuited), [`Rejected`](crate::Rejected), and tower's
//! [`Elapsed`]. The breaker and bulkhead futures are pin-projected (no allocation per call);
//! retry and fallback box theirs, since they await further futures between attempts.
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

mod breaker;
mod bulkhead;
mod classify;
mod fallback;
mod retry;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::pin::Pin;

pub use breaker::{CircuitBreakerLayer, CircuitBreakerService};
pub use bulkhead::{BulkheadLayer, BulkheadService};
pub use classify::{failure_of, Classified, Classify, ErrorsAreFailures, GrpcStatus, HttpStatus};
pub use fallback::{FallbackLayer, FallbackService};
pub use retry::{RetryLayer, RetryService};
pub use tower::timeout::error::Elapsed;
pub use tower::timeout::TimeoutLayer;

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
