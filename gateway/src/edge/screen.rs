//! The request-head screen run before routing: size limits, path normalization (the
//! normalized path replaces the request's, so routes and upstreams see the same one), and the
//! client address.

use std::net::IpAddr;

use http::Uri;
use pingora::http::RequestHeader;

use super::{ClientAddress, HeadViolation, ListenerEdge, Normalized, PathError};

/// What to do with a request head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Screen {
    /// Route it; the client address is resolved.
    Pass(ClientAddress),
    /// Refuse it with 400, 414 or 431.
    Refuse(Refusal),
    /// Answer a redirect to this path and query (`escaped_slashes = "redirect"`).
    Redirect(String),
}

/// Why a request head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// A limit of [`super::HeadLimits`].
    Limit(HeadViolation),
    /// The path could not be normalized safely.
    Path(PathError),
}

/// Screens `req` (replacing its path with the normalized one) as received from `peer` on a
/// listener with `edge` settings.
pub(crate) fn screen(req: &mut RequestHeader, peer: Option<IpAddr>, edge: &ListenerEdge) -> Screen {
    if let Err(v) = edge
        .limits
        .check_request(req.raw_path().len(), &req.headers)
    {
        return Screen::Refuse(Refusal::Limit(v));
    }
    let normalized = match edge.paths.normalize(req.uri.path()) {
        Err(e) => return Screen::Refuse(Refusal::Path(e)),
        Ok(Normalized::Redirect(path)) => {
            return Screen::Redirect(with_query(&path, req.uri.query()))
        }
        Ok(Normalized::Path(p)) => match p {
            std::borrow::Cow::Borrowed(_) => None,
            std::borrow::Cow::Owned(p) => Some(p),
        },
    };
    if let Some(path) = normalized {
        match with_query(&path, req.uri.query()).parse::<Uri>() {
            Ok(uri) => req.set_uri(uri),
            Err(_) => return Screen::Refuse(Refusal::Path(PathError::InvalidEncoding)),
        }
    }
    let client = match peer {
        Some(ip) => edge.client_address.resolve(ip, &req.headers),
        None => ClientAddress {
            ip: IpAddr::from([0, 0, 0, 0]),
            peer_trusted: false,
        },
    };
    Screen::Pass(client)
}

fn with_query(path: &str, query: Option<&str>) -> String {
    match query {
        Some(q) => format!("{path}?{q}"),
        None => path.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(target: &str) -> RequestHeader {
        RequestHeader::build("GET", target.as_bytes(), None).expect("request")
    }

    #[test]
    fn normalizes_in_place_and_keeps_the_query() {
        let mut r = req("/pub/%2e%2e/priv/x?a=%2F..");
        let edge = ListenerEdge::default();
        assert!(matches!(screen(&mut r, None, &edge), Screen::Pass(_)));
        assert_eq!(r.uri.path(), "/priv/x");
        assert_eq!(r.uri.query(), Some("a=%2F.."));
    }

    #[test]
    fn refusals_and_redirects() {
        let edge = ListenerEdge::default();
        assert_eq!(
            screen(&mut req("/a%2Fb"), None, &edge),
            Screen::Refuse(Refusal::Path(PathError::EscapedSlash))
        );
        let long = format!("/{}", "a".repeat(9000));
        assert_eq!(
            screen(&mut req(&long), None, &edge),
            Screen::Refuse(Refusal::Limit(HeadViolation::UriTooLong))
        );
        let mut redirect = edge.clone();
        redirect.paths.escaped_slashes = super::super::EscapedSlashes::Redirect;
        assert_eq!(
            screen(&mut req("/a%2F%2Fb?q=1"), None, &redirect),
            Screen::Redirect("/a/b?q=1".into())
        );
    }
}
