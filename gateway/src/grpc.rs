//! gRPC-shaped local replies: when the gateway answers a gRPC request itself (a filter's 401 or
//! 429, a 503 from an open breaker, a 504), the client gets what a gRPC client can read: HTTP
//! 200, `content-type: application/grpc` and the status in `grpc-status` / `grpc-message`
//! (a trailers-only response), as Envoy does. The HTTP status maps as gRPC's own
//! `http-grpc-status-mapping` says.

use http::header::{CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, StatusCode};

/// Whether a request or response is gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// The gRPC status code for an HTTP status.
pub(crate) fn status_for(http: StatusCode) -> u32 {
    match http.as_u16() {
        400 => 13,                   // INTERNAL
        401 => 16,                   // UNAUTHENTICATED
        403 => 7,                    // PERMISSION_DENIED
        404 => 12,                   // UNIMPLEMENTED
        429 | 502 | 503 | 504 => 14, // UNAVAILABLE
        _ => 2,                      // UNKNOWN
    }
}

/// Percent-encodes a `grpc-message` (bytes outside printable ASCII, and `%`).
fn encode_message(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Turns a local reply into a trailers-only gRPC response with `message` as its
/// `grpc-message`, keeping its other headers (`www-authenticate`, rate-limit headers, the
/// request id). The body is dropped by the caller; nothing here reads it.
///
/// `code` overrides the gRPC status the HTTP status maps to.
pub(crate) fn into_grpc(
    status: &mut StatusCode,
    headers: &mut HeaderMap,
    message: &str,
    code: Option<u32>,
) {
    let code = code.unwrap_or_else(|| status_for(*status));
    let message = encode_message(message);
    *status = StatusCode::OK;
    headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(0));
    headers.insert("grpc-status", HeaderValue::from(code));
    if let Ok(v) = HeaderValue::from_str(&message) {
        headers.insert("grpc-message", v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_as_grpc_specifies() {
        assert_eq!(status_for(StatusCode::UNAUTHORIZED), 16);
        assert_eq!(status_for(StatusCode::FORBIDDEN), 7);
        assert_eq!(status_for(StatusCode::TOO_MANY_REQUESTS), 14);
        assert_eq!(status_for(StatusCode::SERVICE_UNAVAILABLE), 14);
        assert_eq!(status_for(StatusCode::NOT_FOUND), 12);
        assert_eq!(status_for(StatusCode::IM_A_TEAPOT), 2);
    }

    #[test]
    fn a_reply_becomes_a_trailers_only_grpc_answer() {
        let mut status = StatusCode::UNAUTHORIZED;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        headers.insert("www-authenticate", HeaderValue::from_static("Bearer"));
        into_grpc(&mut status, &mut headers, "token expired 100% é", None);
        assert_eq!(status, StatusCode::OK);
        assert!(is_grpc(&headers));
        assert_eq!(headers["grpc-status"], "16");
        assert_eq!(headers["grpc-message"], "token expired 100%25 %C3%A9");
        assert_eq!(headers["www-authenticate"], "Bearer");
        assert_eq!(headers[CONTENT_LENGTH], "0");
    }
}
