//! The filter chain: the `Filter` trait, the chain runner, the registry of filter factories
//! and the built-in filters.
//!
//! Not built yet: the gateway core (issue "gateway core") comes first; this crate is filled by
//! the filter-chain issue. It deliberately exports nothing so that nothing can depend on a
//! half-made API.

#![forbid(unsafe_code)]
