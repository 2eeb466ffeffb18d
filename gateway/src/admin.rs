//! The admin API on its own (loopback by default) listener: health, readiness, routes and
//! clusters as JSON.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::Router;
use serde_json::json;

use crate::runtime::GatewayState;

/// The admin router over shared state.
pub fn router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/routes", get(routes))
        .route("/clusters", get(clusters))
        .fallback(not_found)
        .with_state(state)
}

/// Liveness: the process answers.
async fn healthz() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Readiness: every cluster has its first endpoint set and the gateway is not draining.
async fn readyz(State(state): State<Arc<GatewayState>>) -> Response {
    let runtime = state.runtime();
    let waiting: Vec<&str> = runtime
        .clusters
        .iter()
        .filter(|c| !c.is_ready())
        .map(|c| c.name())
        .collect();
    let draining = state.is_draining();
    let ready = waiting.is_empty() && !draining;
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = json!({
        "ready": ready,
        "draining": draining,
        "clusters_waiting_for_discovery": waiting,
        "in_flight": state.in_flight(),
    });
    (status, Json(body)).into_response()
}

async fn routes(State(state): State<Arc<GatewayState>>) -> Response {
    Json(json!({ "routes": state.runtime().route_status() })).into_response()
}

async fn clusters(State(state): State<Arc<GatewayState>>) -> Response {
    let runtime = state.runtime();
    let clusters: Vec<_> = runtime.clusters.iter().map(|c| c.status()).collect();
    Json(json!({ "clusters": clusters })).into_response()
}

async fn not_found() -> Response {
    let body = json!({
        "error": "not_found",
        "endpoints": ["/healthz", "/readyz", "/routes", "/clusters"],
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}
