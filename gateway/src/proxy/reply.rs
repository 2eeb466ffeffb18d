//! Gateway-made answers: JSON errors and any reply passed through the response filters of the
//! filters that ran (gRPC requests get gRPC-shaped replies).

use super::*;

/// Whether the client connection stays open after a gateway-made answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    /// Keep it for the next request (unless the gateway is draining).
    KeepAlive,
    /// Close it: the request's rest is unread, or pingora will not reuse the connection.
    Close,
}

/// Decides keep-alive for a response about to be written: closed when `connection` says so or
/// the gateway is draining (shutting down or handing over to an upgraded process), so clients
/// reconnect instead of reusing a connection that is about to close.
pub(super) fn decide_keepalive(session: &mut Session, ctx: &RequestCtx, connection: Connection) {
    if connection == Connection::Close || ctx._in_flight.draining() {
        session.set_keepalive(None);
    }
}

/// The filters that apply: the route's chain, or the global filters when no route matched.
pub(super) fn chain_of(runtime: &Runtime, route: Option<usize>) -> &FilterChain {
    route
        .and_then(|i| runtime.routes.get(i))
        .map_or(&runtime.default_chain, |r| &r.chain)
}

/// Writes a gateway-made JSON error response.
pub(super) async fn respond(
    session: &mut Session,
    ctx: &mut RequestCtx,
    error: GatewayError,
    connection: Connection,
) -> Result<()> {
    let route = ctx.route();
    let body = error.body(
        route.map(|r| &*r.name),
        route.map(|r| r.cluster.name()),
        ctx.request_id.as_ref().and_then(|v| v.to_str().ok()),
    );
    let mut resp = http::Response::new(Bytes::from(body));
    *resp.status_mut() =
        http::StatusCode::from_u16(error.status()).unwrap_or(http::StatusCode::BAD_GATEWAY);
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    h.insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    send_reply(session, ctx, resp, connection).await
}

/// Sends a response the gateway made (a filter's answer, an error) through the response
/// filters of the filters that ran, so they see it like an upstream response.
pub(super) async fn send_reply(
    session: &mut Session,
    ctx: &mut RequestCtx,
    resp: filters::Response,
    connection: Connection,
) -> Result<()> {
    decide_keepalive(session, ctx, connection);
    let (mut head, body) = resp.into_parts();
    head.headers
        .insert(http::header::CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(id) = &ctx.request_id {
        head.headers.insert(X_REQUEST_ID, id.clone());
    }
    let chain = chain_of(&ctx.runtime, ctx.route);
    if !chain.is_empty() {
        chain.on_response(&mut head, &mut ctx.filters).await;
    }
    let mut body = body;
    if crate::grpc::is_grpc(&session.req_header().headers) && !crate::grpc::is_grpc(&head.headers) {
        crate::grpc::into_grpc(&mut head.status, &mut head.headers, &body);
        body = Bytes::new();
    }
    let header = ResponseHeader::from(head);
    let empty = body.is_empty();
    session
        .write_response_header(Box::new(header), empty)
        .await?;
    if !empty {
        session.write_response_body(Some(body), true).await?;
    }
    Ok(())
}
