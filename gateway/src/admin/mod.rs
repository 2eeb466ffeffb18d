//! The admin API on its own (loopback by default) listener: health, readiness, routes,
//! clusters and circuit breakers as JSON, and the SRE controls that force a breaker open or
//! closed or reset it.

use std::sync::Arc;

use std::time::Instant;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

use crate::hystrix::HystrixStream;
use crate::reload::{Outcome, Reloader};
use crate::runtime::GatewayState;

mod guard;
mod scrape;

/// The admin router over shared state and the reloader, behind the admin lock
/// ([`guard`]: allowed hosts, the bearer token, the CSRF check).
pub(crate) fn router(state: Arc<GatewayState>, reloader: Arc<Reloader>) -> Router {
    unguarded(state.clone(), reloader)
        .layer(axum::middleware::from_fn_with_state(state, guard::guard))
}

/// The read-only status listener (`[admin] status_address`): `/metrics`, `/healthz`,
/// `/readyz` and `/hystrix.stream`, nothing that changes or reveals configuration.
pub(crate) fn status_router(state: Arc<GatewayState>, reloader: Arc<Reloader>) -> Router {
    let stream = Arc::new(HystrixStream::new(state.clone()));
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((state.clone(), reloader))
        .merge(
            Router::new()
                .route("/hystrix.stream", get(hystrix_stream))
                .with_state(stream),
        )
        .merge(
            Router::new()
                .route("/healthz", get(healthz))
                .route("/readyz", get(readyz))
                .fallback(not_found)
                .with_state(state),
        )
}

fn unguarded(state: Arc<GatewayState>, reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route("/config", get(config_status).post(config_apply))
        .route("/config/reload", post(config_reload))
        .route("/config/versions", get(config_versions))
        .route("/config/versions/{generation}", get(config_version_text))
        .route("/config/rollback/{generation}", post(config_rollback))
        .with_state(reloader.clone())
        .merge(observability_router(state.clone(), reloader))
        .merge(state_router(state))
}

type Both = (Arc<GatewayState>, Arc<Reloader>);

fn observability_router(state: Arc<GatewayState>, reloader: Arc<Reloader>) -> Router {
    let stream = Arc::new(HystrixStream::new(state.clone()));
    Router::new()
        .route("/metrics", get(metrics))
        .with_state((state, reloader))
        .merge(
            Router::new()
                .route("/hystrix.stream", get(hystrix_stream))
                .with_state(stream),
        )
        .route(
            "/",
            get(|| async { axum::response::Redirect::temporary("/dashboard") }),
        )
        .route(
            "/dashboard",
            get(|| asset("text/html; charset=utf-8", DASHBOARD_HTML)),
        )
        .route(
            "/dashboard/app.js",
            get(|| asset("text/javascript; charset=utf-8", DASHBOARD_JS)),
        )
        .route(
            "/dashboard/style.css",
            get(|| asset("text/css; charset=utf-8", DASHBOARD_CSS)),
        )
}

// The dashboard: plain static files bundled into the binary (no build step).
const DASHBOARD_HTML: &str = include_str!("../../assets/dashboard.html");
const DASHBOARD_JS: &str = include_str!("../../assets/dashboard.js");
const DASHBOARD_CSS: &str = include_str!("../../assets/dashboard.css");

async fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (axum::http::header::CONTENT_TYPE, content_type),
            (axum::http::header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// `GET /hystrix.stream`: server-sent events in Hystrix's format, every 500 ms.
async fn hystrix_stream(State(stream): State<Arc<HystrixStream>>) -> Response {
    let Some(sub) = stream.subscribe() else {
        let body = json!({
            "error": "too_many_subscribers",
            "reason": format!("at most {} streams are served at once", stream.max_subscribers()),
        });
        return (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    };
    let headers = [
        (
            axum::http::header::CONTENT_TYPE,
            "text/event-stream;charset=UTF-8",
        ),
        (
            axum::http::header::CACHE_CONTROL,
            "no-cache, no-store, max-age=0, must-revalidate",
        ),
        (axum::http::header::PRAGMA, "no-cache"),
    ];
    (headers, axum::body::Body::from_stream(sub.into_body())).into_response()
}

/// `GET /metrics`: Prometheus text exposition.
async fn metrics(State((state, reloader)): State<Both>) -> Response {
    let text = crate::metrics::metrics().render(&scrape::scrape(&state, Some(&reloader)));
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

fn state_router(state: Arc<GatewayState>) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/routes", get(routes))
        .route("/clusters", get(clusters))
        .route("/breakers", get(breakers))
        .route("/breakers/{cluster}", get(breaker))
        .route("/breakers/{cluster}/{action}", post(breaker_action))
        .route("/fleet", get(fleet))
        .route("/overload", get(overload))
        .route("/certificates", get(certificates))
        .route("/certificates/renew", post(certificates_renew))
        .fallback(not_found)
        .with_state(state)
}

/// Every TLS listener's certificates (names, issuer, expiry, which is the default), client
/// CAs, reload status and handshake counts, and the ACME client's state.
async fn certificates(State(state): State<Arc<GatewayState>>) -> Response {
    Json(state.tls().describe()).into_response()
}

/// Orders a new ACME certificate now (the renewal loop does it; this answers at once).
async fn certificates_renew(State(state): State<Arc<GatewayState>>) -> Response {
    match &state.tls().acme {
        Some(acme) => {
            acme.renew_now();
            (
                axum::http::StatusCode::ACCEPTED,
                Json(json!({"renewing": true, "see": "/certificates"})),
            )
                .into_response()
        }
        None => (
            axum::http::StatusCode::NOT_FOUND,
            Json(json!({"error": "no [acme] section is configured"})),
        )
            .into_response(),
    }
}

/// The fleet: its size and where it comes from, the limit store and its breaker, and the
/// cluster-wide limits degraded now.
async fn fleet(State(state): State<Arc<GatewayState>>) -> Response {
    use filters::LimitStore;
    let runtime = state.runtime();
    let store = runtime.limit_store.as_ref().map(|s| {
        json!({
            "address": s.describe(),
            "available": s.available(),
            "breaker": s.breaker().state().name(),
        })
    });
    Json(json!({
        "size": crate::fleet::size(),
        "source": crate::fleet::source(),
        "limit_store": store,
        "degraded_limits": crate::fleet::degraded_limits(),
    }))
    .into_response()
}

/// Overload protection: the inbound limit, each cluster's concurrency limit (limit, in-flight,
/// waiters, RTTs, sheds per priority class) and each route's configured priority.
async fn overload(State(state): State<Arc<GatewayState>>) -> Response {
    let runtime = state.runtime();
    let clusters: serde_json::Map<String, serde_json::Value> = runtime
        .clusters
        .iter()
        .map(|c| {
            let limit = c.limiter().map(|l| crate::cluster::limiter_status(&l.snapshot()));
            let view = limit.unwrap_or_else(|| {
                let b = c.bulkhead().snapshot();
                json!({
                    "adaptive": false,
                    "bulkhead": { "max_concurrent": b.config.max_concurrent, "in_use": b.in_use, "rejected": b.rejected },
                })
            });
            (c.name().to_owned(), view)
        })
        .collect();
    let routes: serde_json::Map<String, serde_json::Value> = runtime
        .routes
        .iter()
        .map(|r| {
            let p = r.policy.priority.unwrap_or_default();
            (
                r.name.to_string(),
                json!({ "priority": p.score(), "class": p.class().as_str(), "configured": r.policy.priority.is_some() }),
            )
        })
        .collect();
    Json(json!({
        "inbound": runtime
            .overload
            .inbound
            .as_ref()
            .map(|i| crate::cluster::limiter_status(&i.limiter.snapshot())),
        "clusters": clusters,
        "routes": routes,
    }))
    .into_response()
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

async fn breakers(State(state): State<Arc<GatewayState>>) -> Response {
    let runtime = state.runtime();
    let now = Instant::now();
    let list: Vec<_> = runtime
        .clusters
        .iter()
        .map(|c| crate::cluster::resilience_status(c, now))
        .collect();
    Json(json!({ "breakers": list })).into_response()
}

fn unknown_cluster(state: &GatewayState, name: &str) -> Response {
    let known: Vec<String> = state
        .runtime()
        .clusters
        .iter()
        .map(|c| c.name().to_owned())
        .collect();
    let body = json!({
        "error": "unknown_cluster",
        "reason": format!("no cluster is named `{name}`"),
        "clusters": known,
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

async fn breaker(State(state): State<Arc<GatewayState>>, Path(name): Path<String>) -> Response {
    let runtime = state.runtime();
    match runtime.clusters.iter().find(|c| c.name() == name) {
        Some(c) => Json(crate::cluster::resilience_status(c, Instant::now())).into_response(),
        None => unknown_cluster(&state, &name),
    }
}

/// `POST /breakers/{cluster}/force_open | force_closed | reset`.
async fn breaker_action(
    State(state): State<Arc<GatewayState>>,
    Path((name, action)): Path<(String, String)>,
) -> Response {
    let runtime = state.runtime();
    let Some(cluster) = runtime.clusters.iter().find(|c| c.name() == name) else {
        return unknown_cluster(&state, &name);
    };
    let Some(b) = cluster.breaker() else {
        let body = json!({
            "error": "breaker_disabled",
            "reason": format!("cluster `{name}` has its circuit breaker disabled"),
        });
        return (StatusCode::CONFLICT, Json(body)).into_response();
    };
    let now = Instant::now();
    let force = match action.as_str() {
        "force_open" => Some(resilience::Force::Open),
        "force_closed" => Some(resilience::Force::Closed),
        "reset" => None,
        other => {
            let body = json!({
                "error": "unknown_action",
                "reason": format!("`{other}` is not a breaker action"),
                "actions": ["force_open", "force_closed", "reset"],
            });
            return (StatusCode::BAD_REQUEST, Json(body)).into_response();
        }
    };
    tracing::warn!(cluster = %name, action = %action, "circuit breaker changed by an operator");
    b.force(force, now);
    Json(crate::cluster::resilience_status(cluster, now)).into_response()
}

async fn not_found() -> Response {
    let body = json!({
        "error": "not_found",
        "endpoints": ["/dashboard", "/metrics", "/hystrix.stream", "/healthz", "/readyz", "/routes", "/clusters", "/breakers", "/breakers/{cluster}", "POST /breakers/{cluster}/force_open|force_closed|reset", "/config", "POST /config", "POST /config/reload", "/config/versions", "/config/versions/{generation}", "POST /config/rollback/{generation}"],
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// `GET /config`: the version serving now, the last reload attempt, rejections, sources.
async fn config_status(State(reloader): State<Arc<Reloader>>) -> Response {
    Json(reloader.status()).into_response()
}

/// `GET /config/versions`: the kept versions, newest first.
async fn config_versions(State(reloader): State<Arc<Reloader>>) -> Response {
    Json(json!({ "versions": reloader.versions() })).into_response()
}

/// `GET /config/versions/{generation}`: that version's document.
async fn config_version_text(
    State(reloader): State<Arc<Reloader>>,
    Path(generation): Path<u64>,
) -> Response {
    match reloader
        .versions()
        .into_iter()
        .find(|v| v.generation == generation)
    {
        Some(v) => (
            [(axum::http::header::CONTENT_TYPE, "application/toml")],
            // Secrets written inline are never served back.
            crate::config::redact(&v.text),
        )
            .into_response(),
        None => unknown_generation(&reloader, generation),
    }
}

fn unknown_generation(reloader: &Reloader, generation: u64) -> Response {
    let kept: Vec<u64> = reloader.versions().iter().map(|v| v.generation).collect();
    let body = json!({
        "error": "unknown_generation",
        "reason": format!("generation {generation} is not among the kept versions"),
        "kept": kept,
    });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

fn outcome_response(outcome: Outcome) -> Response {
    match outcome {
        Outcome::Applied(v) => Json(json!({ "result": "applied", "version": v })).into_response(),
        Outcome::Unchanged(generation) => {
            Json(json!({ "result": "unchanged", "generation": generation })).into_response()
        }
        Outcome::Rejected(reason) => {
            let body = json!({
                "error": "config_rejected",
                "reason": reason,
                "note": "the running version keeps serving",
            });
            (StatusCode::UNPROCESSABLE_ENTITY, Json(body)).into_response()
        }
    }
}

fn admin_reload_off() -> Response {
    let body = json!({
        "error": "admin_reload_disabled",
        "reason": "reloads over the admin API are off ([reload] admin = false)",
    });
    (StatusCode::FORBIDDEN, Json(body)).into_response()
}

/// `POST /config`: the body is a whole config document; it is validated and applied, or
/// rejected with the same messages as `gateway check`.
async fn config_apply(State(reloader): State<Arc<Reloader>>, body: String) -> Response {
    if !reloader.settings().admin {
        return admin_reload_off();
    }
    outcome_response(reloader.apply(&body, "admin").await)
}

/// `POST /config/reload`: reads the config file again.
async fn config_reload(State(reloader): State<Arc<Reloader>>) -> Response {
    if !reloader.settings().admin {
        return admin_reload_off();
    }
    outcome_response(reloader.reload_file("admin").await)
}

/// `POST /config/rollback/{generation}`: applies a kept version again, as a new generation.
async fn config_rollback(
    State(reloader): State<Arc<Reloader>>,
    Path(generation): Path<u64>,
) -> Response {
    if !reloader.settings().admin {
        return admin_reload_off();
    }
    match reloader.rollback(generation).await {
        Some(outcome) => outcome_response(outcome),
        None => unknown_generation(&reloader, generation),
    }
}
