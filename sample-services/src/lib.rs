//! Sample services that the gateway fronts.
//!
//! - [`echo`]: an HTTP/1.1 + h2c service that answers with what it received (httpbin-style),
//!   with per-request delay and status controls; the integration tests' upstream.
//! - The playback flow: [`catalog`] (HTTP/JSON: titles, licences, plans), [`steering`] (gRPC:
//!   ranked CDN servers, live health reports) and [`play`] (HTTP/JSON: `POST /play` turns an
//!   identity and a title into a manifest, calling the other two through the `resilience`
//!   tower layers), and [`events`] (HTTP -> a Redis stream: playback start / stop / heartbeat
//!   events, the non-critical traffic the gateway sheds first).
//! - [`service`]: what the three share (flags, fault injection, health, Consul registration,
//!   graceful shutdown).

#![forbid(unsafe_code)]

pub mod catalog;
pub mod echo;
pub mod events;
pub mod play;
pub mod service;
pub mod steering;
pub mod telemetry;
