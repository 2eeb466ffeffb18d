//! Sample services that the gateway fronts.
//!
//! - [`echo`]: an HTTP/1.1 + h2c service that answers with what it received (httpbin-style),
//!   with per-request delay and status controls; the demo stack's upstream and the integration
//!   tests' upstream.
//! - Play, Steering and Catalog (the playback flow) arrive with the playback-stack issue.

#![forbid(unsafe_code)]

pub mod echo;
