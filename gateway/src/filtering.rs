//! Runs a route's filter chain inside pingora's phases: converts pingora's request and
//! response heads to the `http` types filters see, and back.

use filters::{FilterChain, FilterContext, Flow};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::proxy::Session;

/// Runs the request filters on the client's request head. Changes the filters make are what
/// the upstream receives.
pub(crate) async fn run_request(
    chain: &FilterChain,
    session: &mut Session,
    fctx: &mut FilterContext,
) -> Flow {
    let head = session.req_header_mut();
    // pingora keeps the request target verbatim when it does not round-trip through the URI
    // (absolute-form, non-UTF-8); restore it unless a filter changed the URI.
    let verbatim = {
        let from_uri = head
            .uri
            .path_and_query()
            .map_or(&b""[..], |p| p.as_str().as_bytes());
        (head.raw_path() != from_uri).then(|| (head.raw_path().to_vec(), head.uri.clone()))
    };
    let send_end_stream = head.send_end_stream();
    let placeholder = RequestHeader::from(http::Request::new(()).into_parts().0);
    let mut parts: http::request::Parts = std::mem::replace(head, placeholder).into();
    let flow = chain.on_request(&mut parts, fctx).await;
    let unchanged_uri = verbatim.as_ref().is_some_and(|(_, uri)| *uri == parts.uri);
    let mut restored = RequestHeader::from(parts);
    if let (true, Some((raw, _))) = (unchanged_uri, verbatim) {
        if let Err(e) = restored.set_raw_path(&raw) {
            tracing::debug!(error = %e, "could not restore the verbatim request target");
        }
    }
    if let Some(eos) = send_end_stream {
        restored.set_send_end_stream(eos);
    }
    *session.req_header_mut() = restored;
    flow
}

/// Runs the response filters on a response head from the upstream.
pub(crate) async fn run_response(
    chain: &FilterChain,
    head: &mut ResponseHeader,
    fctx: &mut FilterContext,
) {
    let placeholder = ResponseHeader::from(http::Response::new(()).into_parts().0);
    let mut parts: http::response::Parts = std::mem::replace(head, placeholder).into();
    chain.on_response(&mut parts, fctx).await;
    *head = ResponseHeader::from(parts);
}
