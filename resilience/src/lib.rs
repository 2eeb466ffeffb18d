//! Resilience policies with Hystrix's semantics: a circuit breaker, a bulkhead, a retry budget
//! and the rolling metrics they share.
//!
//! A concurrency limiter ([`ConcurrencyLimiter`]) with a fixed or adaptive limit
//! ([`GradientLimit`]) sheds by [`Priority`] when the limit is reached.
//!
//! One classification of failures ([`Failure`]) and the sets policies cover ([`FailureSet`])
//! are shared by the retry rule ([`RetryPolicy`]), fallbacks and the breaker.
//!
//! The core is runtime-free: every method that depends on time takes the current
//! [`std::time::Instant`], so tests drive time by hand. Behind the default `tower` feature,
//! [`tower`](crate::tower) wraps the same policies as layers for any `tower::Service` (hyper
//! clients, tonic channels).

#![forbid(unsafe_code)]

mod breaker;
mod budget;
mod bulkhead;
mod failure;
mod limit;
mod retry;
mod window;

#[cfg(feature = "tower")]
pub mod tower;

pub use breaker::{
    BreakerConfig, BreakerSnapshot, CircuitBreaker, Force, Outcome, Permit, ShortCircuited, State,
    Transition, Trip,
};
pub use budget::{BudgetConfig, BudgetSnapshot, RetryBudget};
pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadPermit, BulkheadSnapshot, Rejected};
pub use failure::{Condition, Failure, FailureSet, StatusSet};
pub use limit::{
    Class, ConcurrencyLimiter, GradientConfig, GradientLimit, LimitConfig, LimitPermit,
    LimiterConfig, LimiterSnapshot, Priority, Sample, Shed,
};
pub use retry::{RetryDecision, RetryPolicy};
pub use window::{Counts, Event, Latency, RollingMetrics};
