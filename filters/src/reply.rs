//! Responses filters answer with: a JSON body in the gateway's error shape.

use std::borrow::Cow;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, CONTENT_TYPE};
use http::{HeaderValue, StatusCode};
use serde::Serialize;

use crate::Response;

/// The short message a gateway gives a gRPC client (`grpc-message`) for a response it answers
/// itself, carried as a response extension so that nothing re-parses the body.
/// [`json_error`] sets it to the error code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message(pub Cow<'static, str>);

/// A JSON error response `{"error": code, "status": N, "reason": reason}` that is never
/// cached, matching the shape of the gateway's own errors; its [`Message`] is `code`.
pub fn json_error(status: StatusCode, code: &str, reason: &str) -> Response {
    #[derive(Serialize)]
    struct Body<'a> {
        error: &'a str,
        status: u16,
        reason: &'a str,
    }
    let body = serde_json::to_vec(&Body {
        error: code,
        status: status.as_u16(),
        reason,
    })
    .unwrap_or_else(|_| b"{\"error\":\"internal_error\"}".to_vec());
    let mut resp = http::Response::new(Bytes::from(body));
    *resp.status_mut() = status;
    resp.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp.headers_mut()
        .insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp.extensions_mut()
        .insert(Message(Cow::Owned(code.to_owned())));
    resp
}

/// An empty response with `status`.
pub fn empty(status: StatusCode) -> Response {
    let mut resp = http::Response::new(Bytes::new());
    *resp.status_mut() = status;
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_error_shape() {
        let r = json_error(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "slow down");
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        let v: serde_json::Value = serde_json::from_slice(r.body()).expect("json");
        assert_eq!(v["error"], "rate_limited");
        assert_eq!(v["status"], 429);
        assert_eq!(v["reason"], "slow down");
        assert_eq!(
            r.extensions().get::<Message>(),
            Some(&Message("rate_limited".into()))
        );
    }
}
