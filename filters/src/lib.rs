//! The gateway's filter chain: the [`Filter`] trait that built-in and plugin filters implement,
//! the per-request [`FilterContext`], the ordered [`FilterChain`], and the [`FilterRegistry`] of
//! factories that config files name.
//!
//! Filters see `http` crate types (`http::request::Parts`, `http::response::Parts`), never the
//! proxy's, so they can be unit-tested without a server and reused elsewhere.
//!
//! A filter's life:
//! 1. At config load the registry finds its factory by name and hands it the settings table; the
//!    factory validates them and builds the filter once per config version.
//! 2. On every request the chain runs [`Filter::on_request`] in declared order (global filters
//!    first). A filter may change the request, continue, or answer with [`Flow::Respond`].
//! 3. [`Filter::on_response`] runs in reverse order on the response the client receives, the
//!    upstream's or one the gateway made itself (401, 429, errors, fallbacks).

#![forbid(unsafe_code)]

pub mod builtin;
mod chain;
mod context;
mod filter;
mod registry;
pub mod reply;
mod services;
mod template;

pub use chain::{FilterChain, NamedFilter};
pub use context::{FilterContext, Identity, PeerCertificate};
pub use filter::{Filter, Flow};
pub use registry::{FilterConfigError, FilterFactory, FilterRegistry, FilterSettings};
pub use services::{
    Checked, FilterServices, Fleet, GcraOp, LimitMode, LimitObserver, LimitStore, StoreError,
};
pub use template::{Template, TemplateError};

/// Re-exported so plugin crates implement [`Filter`] with the same macro version.
pub use async_trait::async_trait;

/// The response type filters answer with.
pub type Response = http::Response<bytes::Bytes>;
