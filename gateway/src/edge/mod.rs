//! Edge hardening: everything between a hostile client's bytes and routing. Path
//! normalization, head size limits, the real client address (trusted proxies, PROXY
//! protocol), and per-connection caps and deadlines.

pub(crate) mod client_addr;
pub(crate) mod conn;
mod head_deadline;
pub(crate) mod limits;
pub(crate) mod path;
pub(crate) mod proxy_protocol;
pub(crate) mod screen;

use std::time::Duration;

pub(crate) use client_addr::{ClientAddress, ClientAddressPolicy, ForwardedHeader};
pub(crate) use conn::{EdgeApp, ListenerSettings, ProxyProtocolTls};
pub(crate) use limits::{HeadLimits, HeadViolation};
pub(crate) use path::{EscapedSlashes, Normalized, PathError, PathOptions};
pub(crate) use screen::{screen, Screen};

/// The edge settings of one listener: `[http]` with the listener's `[listeners.http]` over it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ListenerEdge {
    /// Path normalization.
    pub paths: PathOptions,
    /// Request and upstream-response head limits.
    pub limits: HeadLimits,
    /// Longest time to receive a whole request head, from the connection's start or the
    /// first byte of a keep-alive request (0: no deadline).
    pub request_header_timeout: Duration,
    /// How long an idle HTTP/1 keep-alive connection is kept.
    pub idle_timeout: Duration,
    /// Open connections on the listener (0: no cap).
    pub max_connections: usize,
    /// Open connections from one client address on the listener (0: no cap).
    pub max_connections_per_client: usize,
    /// Every connection starts with a PROXY protocol v1 or v2 header.
    pub proxy_protocol: bool,
    /// Which forwarding headers are believed.
    pub client_address: ClientAddressPolicy,
    /// `[server] preserve_header_case` (the same on every listener): a request head is parsed
    /// keeping its names' case only when it is on, as the case is dropped otherwise.
    pub keep_header_case: bool,
}

/// nginx's `client_header_timeout` is 60 s; an edge sets less (Envoy's edge guidance: 10 s).
pub(crate) const DEFAULT_REQUEST_HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// nginx's `keepalive_timeout` is 75 s, pingora's 60 s.
pub(crate) const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Open connections per listener.
pub(crate) const DEFAULT_MAX_CONNECTIONS: usize = 10_000;

impl Default for ListenerEdge {
    fn default() -> Self {
        Self {
            paths: PathOptions::default(),
            limits: HeadLimits::default(),
            request_header_timeout: DEFAULT_REQUEST_HEADER_TIMEOUT,
            idle_timeout: DEFAULT_IDLE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_client: 0,
            proxy_protocol: false,
            client_address: ClientAddressPolicy::default(),
            keep_header_case: false,
        }
    }
}

impl ListenerEdge {
    /// The time a connection has for its PROXY header (the head deadline, or 10 s without
    /// one).
    pub(crate) fn header_deadline(&self) -> Duration {
        if self.request_header_timeout.is_zero() {
            DEFAULT_REQUEST_HEADER_TIMEOUT
        } else {
            self.request_header_timeout
        }
    }
}

/// HTTP/2 settings of the proxy services (`[http]`, process-wide).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct H2Settings {
    /// Concurrent streams a client may open on one connection.
    pub max_concurrent_streams: u32,
    /// Streams a client may reset before they are accepted, per connection (rapid reset,
    /// CVE-2023-44487): beyond it the connection is closed with `ENHANCE_YOUR_CALM`.
    pub max_pending_accept_reset_streams: usize,
    /// Streams the server may reset because of client errors, per connection, before it
    /// closes the connection (CVE-2024-27316 class).
    pub max_local_error_reset_streams: usize,
    /// Header list size (RFC 9113 `SETTINGS_MAX_HEADER_LIST_SIZE`).
    pub max_header_list_size: u32,
    /// Idle HTTP/2 connections are closed after this long.
    pub idle_timeout: Duration,
}

impl H2Settings {
    /// The HTTP/2 settings for the `h2` server, from pingora's bounded defaults.
    pub(crate) fn options(&self) -> pingora::protocols::http::v2::server::H2Options {
        let mut o = pingora::protocols::http::v2::server::default_h2_options();
        o.max_concurrent_streams(self.max_concurrent_streams);
        o.max_header_list_size(self.max_header_list_size);
        o.max_pending_accept_reset_streams(self.max_pending_accept_reset_streams);
        o.max_local_error_reset_streams(Some(self.max_local_error_reset_streams));
        o
    }
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            max_concurrent_streams: 100,
            max_pending_accept_reset_streams: 20,
            max_local_error_reset_streams: 1024,
            max_header_list_size: HeadLimits::default().h2_max_header_list_size(),
            idle_timeout: Duration::from_secs(300),
        }
    }
}
