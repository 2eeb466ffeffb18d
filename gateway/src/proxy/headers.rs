//! Proxy-header policy: request ids, `X-Forwarded-*`, `Via`, and the keys a request is known
//! by (its consistent-hash input, its `last_good` cache key).

use std::net::IpAddr;

use http::header::{HeaderMap, HeaderName, HeaderValue, FORWARDED, VIA};
use http::Version;
use pingora::http::RequestHeader;
use pingora::Result;

use super::RequestCtx;
use crate::config::HashKey;
use crate::fallback::LastGood;
use crate::router::request_host;
use crate::runtime::Runtime;
use crate::telemetry::{TRACEPARENT, TRACESTATE};

pub(super) const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub(super) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(super) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
pub(super) const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
pub(super) const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
/// Longest client-supplied request id that is passed on; longer ones are replaced.
pub(super) const MAX_REQUEST_ID: usize = 128;

/// A new v4 UUID request id. Its bytes are owned by a reference-counted allocation from the
/// start (`Bytes::from_owner`): the id is copied to the upstream request, the response and the
/// filters' context, and a value made from a `Vec` would allocate again for its first copy.
pub(super) fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .unwrap_or_else(|_| HeaderValue::from_static("invalid-request-id"))
}

/// Which of `names` `headers` holds, found in one pass over its names. A lookup hashes the
/// name it looks for, which is most of its cost; the names the gateway removes or reads
/// (`Forwarded`, `X-Real-IP`, `tracestate`, a load report, a client's `X-Request-Id`) are
/// absent from most requests and responses, so the gateway asks once, here, and looks up or
/// removes only what is there. The listener's head limits bound the names a pass visits.
pub(super) fn carried<const N: usize>(headers: &HeaderMap, names: [&HeaderName; N]) -> [bool; N] {
    let mut found = [false; N];
    for key in headers.keys() {
        for (hit, name) in found.iter_mut().zip(names) {
            *hit |= key == name;
        }
    }
    found
}

pub(super) fn usable_request_id(v: &HeaderValue) -> bool {
    !v.is_empty() && v.len() <= MAX_REQUEST_ID && v.as_bytes().iter().all(|b| b.is_ascii_graphic())
}

/// Appends `entry` to a comma-separated header (`X-Forwarded-For`, `Via`); without an
/// existing value, `entry` itself.
pub(super) fn appended(existing: Option<&HeaderValue>, entry: HeaderValue) -> Option<HeaderValue> {
    match existing {
        None => Some(entry),
        Some(prev) => {
            let mut v = Vec::with_capacity(prev.len() + 2 + entry.len());
            v.extend_from_slice(prev.as_bytes());
            v.extend_from_slice(b", ");
            v.extend_from_slice(entry.as_bytes());
            HeaderValue::from_bytes(&v).ok()
        }
    }
}

/// The gateway's own `Via` entry: `1.1 name`, or `2 name` for HTTP/2 (Via names the
/// protocol the gateway received). Both are built once per config version.
pub(super) fn via_entry(runtime: &Runtime, version: Version) -> &HeaderValue {
    if version == Version::HTTP_2 {
        &runtime.via_h2
    } else {
        &runtime.via
    }
}

/// `ip` as a header value, written without the formatting machinery for IPv4 (the common
/// case; `to_string` costs an allocation and a few hundred instructions per request).
pub(super) fn ip_value(ip: IpAddr) -> Option<HeaderValue> {
    match ip {
        IpAddr::V4(v4) => {
            let mut buf = [0u8; 15];
            let mut len = 0;
            for (i, octet) in v4.octets().into_iter().enumerate() {
                if i > 0 {
                    buf[len] = b'.';
                    len += 1;
                }
                let digits = [octet / 100, octet / 10 % 10, octet % 10];
                let skip = if octet >= 100 {
                    0
                } else if octet >= 10 {
                    1
                } else {
                    2
                };
                for d in &digits[skip..] {
                    buf[len] = b'0' + d;
                    len += 1;
                }
            }
            HeaderValue::from_bytes(&buf[..len]).ok()
        }
        IpAddr::V6(_) => HeaderValue::from_str(&ip.to_string()).ok(),
    }
}

pub(super) fn hash_input(key: &HashKey, req: &RequestHeader, client_ip: Option<IpAddr>) -> Vec<u8> {
    let found: Option<&[u8]> = match key {
        HashKey::Header(name) => req.headers.get(name).map(HeaderValue::as_bytes),
        HashKey::Path => Some(req.uri.path().as_bytes()),
        HashKey::Query(name) => req.uri.query().and_then(|q| {
            q.split('&')
                .filter_map(|kv| kv.split_once('='))
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_bytes())
        }),
        HashKey::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .find_map(|c| {
                c.as_bytes()
                    .split(|b| *b == b';')
                    .filter_map(|kv| {
                        let kv = kv.trim_ascii();
                        let eq = kv.iter().position(|b| *b == b'=')?;
                        Some((kv.get(..eq)?, kv.get(eq + 1..)?))
                    })
                    .find(|(k, _)| *k == name.as_bytes())
                    .map(|(_, v)| v)
            }),
        HashKey::ClientIp => None,
    };
    match found {
        Some(v) => v.to_vec(),
        None => client_ip
            .map(|ip| ip.to_string().into_bytes())
            .unwrap_or_default(),
    }
}

/// The cache key of the request for `last_good` fallbacks (GET only).
pub(super) fn last_good_key(req: &RequestHeader) -> Option<Box<str>> {
    (req.method == http::Method::GET).then(|| {
        LastGood::key(
            request_host(&req.uri, &req.headers),
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
    })
}

/// `X-Forwarded-Host`: `host`, the host the client asked for without a port
/// ([`host_of`](crate::router::host_of) the request's `Host` field, `host_field`, found once per
/// request by the router). When that is the whole field (no port to drop), the field's value is
/// passed on as it is: a reference count, not a validated copy.
pub(super) fn forwarded_host(host_field: Option<&HeaderValue>, host: &str) -> Option<HeaderValue> {
    if host.is_empty() {
        return None;
    }
    if let Some(v) = host_field {
        if std::ptr::eq(v.as_bytes(), host.as_bytes()) {
            return Some(v.clone());
        }
    }
    shared_value(host.as_bytes())
}

/// Longest value [`shared_value`] keeps in its one allocation.
const SHARED_INLINE: usize = 64;

/// A value's bytes in a fixed buffer, for [`shared_value`].
struct Inline {
    len: u8,
    buf: [u8; SHARED_INLINE],
}

impl AsRef<[u8]> for Inline {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..usize::from(self.len)]
    }
}

/// `bytes` (validated) as a header value that is reference-counted from the start, in one
/// allocation when it is at most [`SHARED_INLINE`] bytes long: for a value the gateway both
/// keeps and sends (`X-Forwarded-Host`, kept for the access log), whose first clone would
/// otherwise allocate again (a value copied into its own `Vec` is shared only once cloned).
pub(super) fn shared_value(bytes: &[u8]) -> Option<HeaderValue> {
    if bytes.len() > SHARED_INLINE {
        return HeaderValue::from_bytes(bytes).ok();
    }
    let mut inline = Inline {
        len: bytes.len() as u8,
        buf: [0; SHARED_INLINE],
    };
    inline.buf[..bytes.len()].copy_from_slice(bytes);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(inline)).ok()
}

/// Sets the proxy headers of the upstream request: `X-Forwarded-For` (a trusted proxy's chain
/// with the peer appended; from an untrusted peer the peer alone, with `Forwarded` and
/// `X-Real-IP` dropped), `X-Forwarded-Proto`, `X-Forwarded-Host`, `Via`, and the trace context.
pub(super) fn set_proxy_headers(
    req: &RequestHeader,
    upstream: &mut RequestHeader,
    ctx: &RequestCtx,
) -> Result<()> {
    // Room for what is added below (X-Forwarded-For/-Proto/-Host, Via, traceparent,
    // tracestate), so that neither of the head's maps grows and rehashes on the way.
    upstream.reserve_headers(6);
    // Asked of the upstream copy, as it is after the request's filters.
    let [has_forwarded, has_real_ip, has_xff, has_via, has_state] = carried(
        &upstream.headers,
        [&FORWARDED, &X_REAL_IP, &X_FORWARDED_FOR, &VIA, &TRACESTATE],
    );
    if let Some(peer) = ctx.peer {
        // A trusted proxy's chain is passed on with the proxy appended; an untrusted
        // client's forwarding headers are dropped, so the upstream is not fooled either.
        let previous = if ctx.peer_trusted {
            has_xff
                .then(|| upstream.headers.get(X_FORWARDED_FOR))
                .flatten()
        } else {
            if has_forwarded {
                upstream.remove_header(&FORWARDED);
            }
            if has_real_ip {
                upstream.remove_header(&X_REAL_IP);
            }
            None
        };
        if let Some(v) = ip_value(peer).and_then(|own| appended(previous, own)) {
            upstream.insert_header(X_FORWARDED_FOR, v)?;
        }
    }
    let proto = if ctx.tls {
        HeaderValue::from_static("https")
    } else {
        HeaderValue::from_static("http")
    };
    upstream.insert_header(X_FORWARDED_PROTO, proto)?;
    if let Some(h) = &ctx.forwarded_host {
        upstream.insert_header(X_FORWARDED_HOST, h.clone())?;
    }
    let via = appended(
        has_via.then(|| upstream.headers.get(VIA)).flatten(),
        via_entry(&ctx.runtime, req.version).clone(),
    );
    if let Some(v) = via {
        upstream.insert_header(VIA, v)?;
    }
    let (parent, state) = ctx.trace.upstream_headers();
    if let Some(p) = parent {
        upstream.insert_header(TRACEPARENT, p)?;
    }
    match state {
        Some(s) => {
            upstream.insert_header(TRACESTATE, s)?;
        }
        None if has_state => {
            upstream.remove_header(&TRACESTATE);
        }
        None => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::header::HeaderValue;

    #[test]
    fn appending_to_list_headers() {
        let own = HeaderValue::from_static("1.2.3.4");
        assert_eq!(appended(None, own.clone()), Some(own.clone()));
        let prev = HeaderValue::from_static("9.9.9.9");
        assert_eq!(
            appended(Some(&prev), own),
            Some(HeaderValue::from_static("9.9.9.9, 1.2.3.4"))
        );
    }

    #[test]
    fn shared_values_keep_their_bytes_and_refuse_what_a_header_cannot_hold() {
        for len in [0, 1, 15, 63, 64, 65, 300] {
            let bytes = "h".repeat(len);
            let v = shared_value(bytes.as_bytes()).expect("value");
            assert_eq!(v.as_bytes(), bytes.as_bytes(), "{len}");
            assert_eq!(v.clone(), v);
        }
        // Refused inline (64 bytes) and past it (65).
        let inline_bad = [&[b'x'; 63][..], b"\n"].concat();
        let long_bad = [&[b'x'; 64][..], b"\n"].concat();
        for bad in [&b"a\nb"[..], b"a\rb", b"\x7f", &inline_bad, &long_bad] {
            assert_eq!(shared_value(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn ip_values_match_the_standard_formatting() {
        for ip in [
            "0.0.0.0",
            "1.2.3.4",
            "10.0.0.1",
            "127.0.0.1",
            "99.100.109.255",
            "255.255.255.255",
            "2001:db8::1",
            "::ffff:1.2.3.4",
        ] {
            let addr: IpAddr = ip.parse().expect("ip");
            assert_eq!(ip_value(addr).expect("value"), addr.to_string().as_str());
        }
    }

    #[test]
    fn forwarded_host_is_the_requested_host_without_its_port() {
        let cases: [(&[u8], Option<&str>); 6] = [
            (b"api.example.com", Some("api.example.com")),
            (b"api.example.com:8443", Some("api.example.com")),
            (b"[::1]:8080", Some("[::1]")),
            (b"10.0.0.1", Some("10.0.0.1")),
            (b"", None),
            (b"caf\xc3\xa9.example", None),
        ];
        for (host, want) in cases {
            let mut req = RequestHeader::build("GET", b"/p", None).expect("req");
            req.insert_header(
                http::header::HOST,
                HeaderValue::from_bytes(host).expect("value"),
            )
            .expect("host");
            let got = forwarded_host(
                req.headers.get(http::header::HOST),
                request_host(&req.uri, &req.headers),
            );
            assert_eq!(
                got.as_ref().map(|v| v.to_str().expect("ascii")),
                want,
                "{host:?}"
            );
        }
        // An absolute-form target's authority wins over the Host field.
        let mut req = RequestHeader::build("GET", b"/p", None).expect("req");
        req.set_uri(http::Uri::from_static("http://origin.example:81/p"));
        req.insert_header(http::header::HOST, "other.example")
            .expect("host");
        assert_eq!(
            forwarded_host(
                req.headers.get(http::header::HOST),
                request_host(&req.uri, &req.headers)
            )
            .as_ref()
            .map(|v| v.to_str().expect("ascii")),
            Some("origin.example")
        );
    }

    #[test]
    fn carried_names_are_found_in_one_pass() {
        let mut h = HeaderMap::new();
        h.insert(http::header::HOST, HeaderValue::from_static("a.example"));
        h.append(X_REAL_IP, HeaderValue::from_static("1.2.3.4"));
        h.append(X_REAL_IP, HeaderValue::from_static("5.6.7.8"));
        h.insert(FORWARDED, HeaderValue::from_static("for=1.2.3.4"));
        let names = [&FORWARDED, &X_REAL_IP, &VIA, &TRACESTATE, &X_REAL_IP];
        assert_eq!(carried(&h, names), [true, true, false, false, true]);
        assert_eq!(carried(&HeaderMap::new(), names), [false; 5]);
        // Parsed names are lower case, as the constants are.
        let mut parsed = HeaderMap::new();
        parsed.insert(
            HeaderName::from_bytes(b"TraceState").expect("name"),
            HeaderValue::from_static("v=1"),
        );
        assert_eq!(carried(&parsed, [&TRACESTATE, &VIA]), [true, false]);
    }

    #[test]
    fn request_ids() {
        assert!(usable_request_id(&HeaderValue::from_static("abc-123")));
        assert!(!usable_request_id(&HeaderValue::from_static("")));
        assert!(!usable_request_id(&HeaderValue::from_static("has space")));
        let long = HeaderValue::from_str(&"a".repeat(MAX_REQUEST_ID + 1)).expect("ascii");
        assert!(!usable_request_id(&long));
        let fresh = new_request_id();
        assert_eq!(fresh.len(), 36);
        assert_ne!(fresh, new_request_id());
    }

    #[test]
    fn hash_inputs() {
        let mut req = RequestHeader::build("GET", b"/p?a=1&user=u7", None).expect("req");
        req.insert_header("cookie", "x=1; sid=s9").expect("hdr");
        req.insert_header("x-user", "h3").expect("hdr");
        let ip = Some(IpAddr::from([10, 0, 0, 1]));
        assert_eq!(hash_input(&HashKey::Query("user".into()), &req, ip), b"u7");
        assert_eq!(hash_input(&HashKey::Cookie("sid".into()), &req, ip), b"s9");
        assert_eq!(
            hash_input(
                &HashKey::Header(HeaderName::from_static("x-user")),
                &req,
                ip
            ),
            b"h3"
        );
        assert_eq!(hash_input(&HashKey::Path, &req, ip), b"/p");
        assert_eq!(
            hash_input(&HashKey::Cookie("none".into()), &req, ip),
            b"10.0.0.1",
            "falls back to client ip"
        );
    }
}
