//! Resilience policies with Hystrix's semantics: a circuit breaker, a bulkhead, a retry budget
//! and the rolling metrics they share.
//!
//! The core is runtime-free: every method that depends on time takes the current
//! [`std::time::Instant`], so tests drive time by hand. Behind the default `tower` feature,
//! [`tower`](crate::tower) wraps the same policies as layers for any `tower::Service` (hyper
//! clients, tonic channels).

#![forbid(unsafe_code)]

mod breaker;
mod budget;
mod bulkhead;
mod window;

#[cfg(feature = "tower")]
pub mod tower;

pub use breaker::{
    BreakerConfig, BreakerSnapshot, CircuitBreaker, Force, Outcome, Permit, ShortCircuited, State,
    Transition, Trip,
};
pub use budget::{BudgetConfig, BudgetSnapshot, RetryBudget};
pub use bulkhead::{Bulkhead, BulkheadConfig, BulkheadPermit, BulkheadSnapshot, Rejected};
pub use window::{Counts, Event, Latency, RollingMetrics};
