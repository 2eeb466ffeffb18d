//! Validation of `[http]`, `[listeners.http]` and the hardening keys of `[admin]`.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::{count, ranged, socket_addr};
use crate::config::error::Issues;
use crate::config::raw::{RawAdmin, RawHttp};
use crate::config::{AdminSettings, SecretString};
use crate::edge::{
    ClientAddressPolicy, EscapedSlashes, ForwardedHeader, H2Settings, HeadLimits, ListenerEdge,
    PathOptions,
};

fn count_usize(
    v: &Option<Spanned<i64>>,
    key: &str,
    min: i64,
    max: i64,
    default: usize,
    issues: &mut Issues<'_>,
) -> usize {
    count(v, key, min, max, default as i64, issues) as usize
}

/// A duration in ms where 0 turns the limit off.
fn ms_or_off(
    v: &Option<Spanned<i64>>,
    key: &str,
    default: Duration,
    issues: &mut Issues<'_>,
) -> Duration {
    let ms = ranged(v, key, 0, 86_400_000, default.as_millis() as i64, issues);
    Duration::from_millis(ms.unsigned_abs())
}

/// The edge settings of a listener from its merged `[http]` table.
pub(super) fn listener_edge(
    raw: &RawHttp,
    proxy_protocol: bool,
    issues: &mut Issues<'_>,
) -> ListenerEdge {
    let d = ListenerEdge::default();
    let escaped_slashes = match raw.escaped_slashes.as_ref() {
        None => d.paths.escaped_slashes,
        Some(v) => match v.get_ref().as_str() {
            "reject" => EscapedSlashes::Reject,
            "keep" => EscapedSlashes::Keep,
            "decode" => EscapedSlashes::Decode,
            "redirect" => EscapedSlashes::Redirect,
            other => {
                issues.at(
                    v.span(),
                    format!("escaped_slashes `{other}` is unknown"),
                    "use \"reject\" (the default), \"keep\", \"decode\" or \"redirect\"",
                );
                EscapedSlashes::Reject
            }
        },
    };
    let paths = PathOptions {
        normalize: raw.normalize_path.unwrap_or(d.paths.normalize),
        merge_slashes: raw.merge_slashes.unwrap_or(d.paths.merge_slashes),
        escaped_slashes,
    };
    let l = d.limits;
    const MIB: i64 = 1024 * 1024;
    let limits = HeadLimits {
        max_uri_bytes: count_usize(
            &raw.max_uri_bytes,
            "max_uri_bytes",
            64,
            MIB,
            l.max_uri_bytes,
            issues,
        ),
        max_header_bytes: count_usize(
            &raw.max_header_bytes,
            "max_header_bytes",
            64,
            MIB,
            l.max_header_bytes,
            issues,
        ),
        max_headers_bytes: count_usize(
            &raw.max_headers_bytes,
            "max_headers_bytes",
            256,
            MIB,
            l.max_headers_bytes,
            issues,
        ),
        max_headers: count_usize(
            &raw.max_headers,
            "max_headers",
            8,
            250,
            l.max_headers,
            issues,
        ),
        max_response_headers_bytes: count_usize(
            &raw.max_response_headers_bytes,
            "max_response_headers_bytes",
            256,
            MIB,
            l.max_response_headers_bytes,
            issues,
        ),
        max_response_headers: count_usize(
            &raw.max_response_headers,
            "max_response_headers",
            8,
            250,
            l.max_response_headers,
            issues,
        ),
    };
    if limits.max_header_bytes > limits.max_headers_bytes {
        if let Some(v) = raw
            .max_header_bytes
            .as_ref()
            .or(raw.max_headers_bytes.as_ref())
        {
            issues.at(
                v.span(),
                format!(
                    "max_header_bytes ({}) is larger than max_headers_bytes ({}), the limit for all headers together",
                    limits.max_header_bytes, limits.max_headers_bytes
                ),
                "make max_headers_bytes at least max_header_bytes",
            );
        }
    }
    let idle = ms_or_off(
        &raw.idle_timeout_ms,
        "idle_timeout_ms",
        d.idle_timeout,
        issues,
    );
    if raw
        .idle_timeout_ms
        .as_ref()
        .is_some_and(|v| *v.get_ref() < 1000 && *v.get_ref() != 0)
    {
        if let Some(v) = &raw.idle_timeout_ms {
            issues.at(
                v.span(),
                "idle_timeout_ms is below one second",
                "HTTP/1 keep-alive is kept in whole seconds: use 0 (no keep-alive) or at least 1000",
            );
        }
    }
    ListenerEdge {
        paths,
        limits,
        request_header_timeout: ms_or_off(
            &raw.request_header_timeout_ms,
            "request_header_timeout_ms",
            d.request_header_timeout,
            issues,
        ),
        idle_timeout: idle,
        max_connections: count_usize(
            &raw.max_connections,
            "max_connections",
            0,
            10_000_000,
            d.max_connections,
            issues,
        ),
        max_connections_per_client: count_usize(
            &raw.max_connections_per_client,
            "max_connections_per_client",
            0,
            10_000_000,
            0,
            issues,
        ),
        proxy_protocol,
        client_address: client_address(raw, issues),
        // Set from `[server]` once the listeners are known (`Runtime::build`).
        keep_header_case: d.keep_header_case,
    }
}

fn client_address(raw: &RawHttp, issues: &mut Issues<'_>) -> ClientAddressPolicy {
    let trusted = super::networks(raw.trusted_proxies.as_ref(), "trusted_proxies", issues);
    let hops = raw.xff_trusted_hops.as_ref().map(|_| {
        ranged(&raw.xff_trusted_hops, "xff_trusted_hops", 1, 16, 1, issues).unsigned_abs() as u32
    });
    if let (Some(v), true) = (&raw.xff_trusted_hops, trusted.is_empty()) {
        issues.at(
            v.span(),
            "xff_trusted_hops is set but trusted_proxies is empty, so no forwarding header is believed",
            "list the addresses of the proxies in front in trusted_proxies",
        );
    }
    let header = match raw.forwarded_header.as_ref() {
        None => ForwardedHeader::XForwardedFor,
        Some(v) => match v.get_ref().to_ascii_lowercase().as_str() {
            "x-forwarded-for" => ForwardedHeader::XForwardedFor,
            "forwarded" => ForwardedHeader::Forwarded,
            other => {
                issues.at(
                    v.span(),
                    format!("forwarded_header `{other}` is unknown"),
                    "use \"x-forwarded-for\" (the default) or \"forwarded\" (RFC 7239)",
                );
                ForwardedHeader::XForwardedFor
            }
        },
    };
    ClientAddressPolicy {
        trusted_proxies: trusted,
        trusted_hops: hops,
        header,
    }
}

/// Keys only `[http]` takes (the HTTP/2 server settings are process-wide).
pub(super) fn refuse_global_only(raw: &Spanned<RawHttp>, listener: &str, issues: &mut Issues<'_>) {
    let r = raw.get_ref();
    for (set, key) in [
        (
            r.h2_max_concurrent_streams.is_some(),
            "h2_max_concurrent_streams",
        ),
        (r.h2_max_reset_streams.is_some(), "h2_max_reset_streams"),
        (r.h2_idle_timeout_ms.is_some(), "h2_idle_timeout_ms"),
    ] {
        if set {
            issues.at(
                raw.span(),
                format!("listener `{listener}`: {key} can only be set in [http]"),
                format!("move {key} to the [http] table; it applies to every listener"),
            );
        }
    }
}

/// The process-wide HTTP/2 settings from `[http]`.
pub(super) fn h2_settings(
    raw: &RawHttp,
    global_edge: &ListenerEdge,
    issues: &mut Issues<'_>,
) -> H2Settings {
    let d = H2Settings::default();
    H2Settings {
        max_concurrent_streams: count_usize(
            &raw.h2_max_concurrent_streams,
            "h2_max_concurrent_streams",
            1,
            10_000,
            d.max_concurrent_streams as usize,
            issues,
        ) as u32,
        max_pending_accept_reset_streams: count_usize(
            &raw.h2_max_reset_streams,
            "h2_max_reset_streams",
            1,
            10_000,
            d.max_pending_accept_reset_streams,
            issues,
        ),
        max_local_error_reset_streams: d.max_local_error_reset_streams,
        max_header_list_size: global_edge.limits.h2_max_header_list_size(),
        idle_timeout: {
            let t = ms_or_off(
                &raw.h2_idle_timeout_ms,
                "h2_idle_timeout_ms",
                d.idle_timeout,
                issues,
            );
            if t.is_zero() {
                Duration::from_secs(86_400 * 365)
            } else {
                t
            }
        },
    }
}

pub(super) const DEFAULT_ADMIN: &str = "127.0.0.1:9901";

/// `[admin]`: address, token (a secret reference or inline), status listener, allowed hosts.
pub(super) fn admin_settings(
    raw: Option<&RawAdmin>,
    base_dir: &Path,
    issues: &mut Issues<'_>,
) -> AdminSettings {
    let default: SocketAddr = DEFAULT_ADMIN
        .parse()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 9901)));
    let Some(raw) = raw else {
        return AdminSettings {
            address: default,
            token: None,
            status_address: None,
            allowed_hosts: Vec::new(),
        };
    };
    let address = raw
        .address
        .as_ref()
        .and_then(|a| socket_addr(a, "admin address", issues))
        .unwrap_or(default);
    let token = raw.token.as_ref().and_then(|t| {
        match crate::config::secrets::resolve(t.get_ref(), base_dir) {
            Ok(v) if v.trim().len() >= 16 && v.bytes().all(|b| b.is_ascii_graphic()) => {
                Some(SecretString::new(v.trim().to_owned()))
            }
            Ok(_) => {
                issues.at(
                    t.span(),
                    "the admin token is shorter than 16 characters or has spaces or control characters",
                    "use a long random token, e.g. `openssl rand -hex 32`, from ${env:NAME} or ${file:PATH}",
                );
                None
            }
            Err(e) => {
                issues.at(t.span(), format!("admin token: {e}"), "set the variable or create the file, or remove token");
                None
            }
        }
    });
    let status_address = raw
        .status_address
        .as_ref()
        .and_then(|a| socket_addr(a, "admin status_address", issues));
    if let (Some(s), Some(v)) = (status_address, &raw.status_address) {
        if s == address {
            issues.at(
                v.span(),
                "status_address is the admin address",
                "give the read-only status listener its own port",
            );
        }
    }
    let mut allowed_hosts = Vec::new();
    for h in raw.allowed_hosts.iter().flatten() {
        let host = h.get_ref().trim().to_ascii_lowercase();
        if host.is_empty() || host.contains(['/', ' ', ':']) {
            issues.at(
                h.span(),
                format!("allowed_hosts entry `{}` is not a host name", h.get_ref()),
                "write names without scheme or port, e.g. \"gateway-admin.internal\"",
            );
        } else {
            allowed_hosts.push(host);
        }
    }
    AdminSettings {
        address,
        token,
        status_address,
        allowed_hosts,
    }
}
