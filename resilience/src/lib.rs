//! Resilience policies: circuit breaker, bulkhead, retry budget, rolling counters.
//!
//! Not built yet: filled by the resilience issue. It deliberately exports nothing so that
//! nothing can depend on a half-made API.

#![forbid(unsafe_code)]
