//! Gateway-made answers: one [`Reply`] type for filter answers, errors, redirects and local
//! fallbacks, and one writer that passes it through the response filters of the filters that
//! ran, shapes it for gRPC clients and alone decides keep-alive.

use std::borrow::Cow;

use bytes::Bytes;
use filters::FilterChain;
use http::header::{HeaderValue, CACHE_CONTROL, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::StatusCode;
use pingora::http::ResponseHeader;
use pingora::proxy::Session;
use pingora::Result;

use super::headers::X_REQUEST_ID;
use super::RequestCtx;
use crate::errors::GatewayError;
use crate::runtime::{Route, Runtime};

/// Whether the client connection stays open after a gateway-made answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Connection {
    /// Keep it for the next request (unless the gateway is draining).
    KeepAlive,
    /// Close it: the request's rest is unread, or pingora will not reuse the connection.
    Close,
}

/// A response the gateway makes itself: the HTTP response, the message a gRPC client gets in
/// `grpc-message`, and what becomes of the connection.
#[derive(Debug)]
pub(super) struct Reply {
    response: filters::Response,
    grpc_message: Cow<'static, str>,
    /// A gRPC status other than the one the HTTP status maps to.
    grpc_status: Option<u32>,
    connection: Connection,
}

impl Reply {
    /// A filter's answer, a redirect or a fallback response. Its gRPC message is the one
    /// [`filters::reply::json_error`] attached, else the status's reason phrase.
    pub(super) fn answer(response: filters::Response, connection: Connection) -> Self {
        let grpc_message = match response.extensions().get::<filters::reply::Message>() {
            Some(m) => m.0.clone(),
            None => Cow::Borrowed(response.status().canonical_reason().unwrap_or("error")),
        };
        Self {
            response,
            grpc_message,
            grpc_status: None,
            connection,
        }
    }

    /// The JSON error for `error`, naming the request's route, cluster and request id.
    pub(super) fn error(error: GatewayError, ctx: &RequestCtx, connection: Connection) -> Self {
        let route = ctx.route.as_deref();
        let cluster = ctx
            .exchange
            .as_ref()
            .map(|x| x.target().name())
            .or_else(|| route.map(|r| r.cluster.name()));
        let body = error.body(
            route.map(|r| &*r.name),
            cluster,
            ctx.filters.request_id().and_then(|v| v.to_str().ok()),
        );
        let mut response = http::Response::new(Bytes::from(body));
        *response.status_mut() =
            StatusCode::from_u16(error.status()).unwrap_or(StatusCode::BAD_GATEWAY);
        let h = response.headers_mut();
        h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        h.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if error.retry_after() {
            h.insert(RETRY_AFTER, ctx.runtime.overload.retry_after.clone());
        }
        Self {
            response,
            grpc_message: Cow::Borrowed(error.code()),
            grpc_status: error.grpc_status(),
            connection,
        }
    }
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
pub(super) fn chain_of<'a>(runtime: &'a Runtime, route: Option<&'a Route>) -> &'a FilterChain {
    route.map_or(&runtime.default_chain, |r| &r.chain)
}

/// Answers the request with `error` itself (recorded as the request's error): the JSON error
/// through [`write`].
pub(super) async fn write_error(
    session: &mut Session,
    ctx: &mut RequestCtx,
    error: GatewayError,
    connection: Connection,
) -> Result<()> {
    ctx.error = Some(error);
    let reply = Reply::error(error, ctx, connection);
    write(session, ctx, reply).await
}

/// Writes `reply`: the request id, the response filters of the filters that ran (they see
/// it like an upstream response), a trailers-only gRPC shape for gRPC requests, and the
/// keep-alive decision.
pub(super) async fn write(session: &mut Session, ctx: &mut RequestCtx, reply: Reply) -> Result<()> {
    decide_keepalive(session, ctx, reply.connection);
    let (mut head, mut body) = reply.response.into_parts();
    head.headers
        .insert(CONTENT_LENGTH, HeaderValue::from(body.len()));
    if let Some(id) = ctx.filters.request_id() {
        head.headers.insert(X_REQUEST_ID, id.clone());
    }
    let chain = chain_of(&ctx.runtime, ctx.route.as_deref());
    if !chain.is_empty() {
        chain.on_response(&mut head, &mut ctx.filters).await;
    }
    if crate::grpc::is_grpc(&session.req_header().headers) && !crate::grpc::is_grpc(&head.headers) {
        crate::grpc::into_grpc(
            &mut head.status,
            &mut head.headers,
            &reply.grpc_message,
            reply.grpc_status,
        );
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
