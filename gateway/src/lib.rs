//! The gateway: a pingora-based edge proxy with routes, clusters, load balancing, an admin
//! API, filter chains and graceful shutdown. The binary `gateway` is [`Gateway::builder`]`().run()`;
//! service teams build their own binary the same way with extra filters (see [`GatewayBuilder`]).

#![forbid(unsafe_code)]
#![recursion_limit = "256"]

mod access_log;
mod admin;
mod builder;
mod cli;
mod cluster;
mod config;
mod edge;
mod errors;
mod fallback;
mod filtering;
mod fleet;
mod grpc;
mod hystrix;
mod metrics;
mod overload;
mod proxy;
mod reload;
mod router;
mod runtime;
mod server;
mod telemetry;
mod tls;

pub use builder::{Gateway, GatewayBuilder};
/// The filter API, re-exported so a plugin crate needs only `gateway` as a dependency.
pub use filters;
