//! The gateway: a pingora-based edge proxy with routes, clusters, load balancing, an admin
//! API, filter chains and graceful shutdown. The binary `gateway` is [`Gateway::builder`]`().run()`;
//! service teams build their own binary the same way with extra filters (see [`GatewayBuilder`]).

#![forbid(unsafe_code)]
#![recursion_limit = "256"]

pub mod access_log;
pub mod admin;
mod builder;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod edge;
pub mod errors;
pub mod fallback;
mod filtering;
mod grpc;
pub mod hystrix;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod router;
pub mod runtime;
pub mod server;
pub mod telemetry;

pub use builder::{Gateway, GatewayBuilder};
/// The filter API, re-exported so a plugin crate needs only `gateway` as a dependency.
pub use filters;
