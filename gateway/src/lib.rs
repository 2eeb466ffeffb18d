//! The gateway: a pingora-based edge proxy with routes, clusters, load balancing, an admin
//! API and graceful shutdown. The binary `gateway` is a thin CLI over [`cli::main`].

#![forbid(unsafe_code)]

pub mod access_log;
pub mod admin;
pub mod cli;
pub mod cluster;
pub mod config;
pub mod errors;
pub mod proxy;
pub mod router;
pub mod runtime;
pub mod server;
