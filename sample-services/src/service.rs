//! What every playback service shares: command-line flags, fault injection (flags and
//! `PUT /__fault`), `/health`, Consul registration, and serving until SIGTERM / Ctrl-C with a
//! graceful drain.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use axum::extract::{Query, Request, State};
use axum::http::{HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use discovery::consul::{Consul, ConsulConfig, Registration, Service};
use serde::{Deserialize, Serialize};

/// An error answer: status and `{"error": CODE, "message": ...}`.
pub type ApiError = (StatusCode, Json<serde_json::Value>);

/// Builds an [`ApiError`].
pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> ApiError {
    (
        status,
        Json(serde_json::json!({"error": code, "message": message.into()})),
    )
}

/// Flags every playback service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// Register in Consul at this agent address (`CONSUL_HTTP_ADDR` works too) with a health
    /// check on `/health`; deregistered on SIGTERM / Ctrl-C. Play also discovers Catalog and
    /// Steering there.
    #[arg(long, env = "CONSUL_HTTP_ADDR")]
    pub consul: Option<String>,
    /// Instance name (Consul meta `instance`, `x-instance` on answers); default: NAME-PORT.
    #[arg(long)]
    pub instance: Option<String>,
    /// Fault injection: wait this long before every answer.
    #[arg(long, default_value_t = 0)]
    pub delay_ms: u64,
    /// Fault injection: fail this share of requests (0.0 to 1.0) with 500 (gRPC: UNAVAILABLE).
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    /// Fault injection: fail every request with this status (a hard failure; `/health` fails
    /// too, so Consul takes the instance out).
    #[arg(long, value_parser = clap::value_parser!(u16).range(500..=599))]
    pub fail_status: Option<u16>,
}

impl CommonArgs {
    /// The fault settings the flags ask for.
    pub fn faults(&self) -> Result<FaultSettings, String> {
        FaultSettings {
            delay_ms: self.delay_ms,
            error_rate: self.error_rate,
            status: self.fail_status,
        }
        .validated()
    }
}

/// Injected faults: added latency, a share of failed requests, or a hard failure.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FaultSettings {
    /// Added latency before every answer.
    #[serde(default)]
    pub delay_ms: u64,
    /// Share of requests that fail, 0.0 to 1.0.
    #[serde(default)]
    pub error_rate: f64,
    /// Every request (health included) fails with this 5xx status.
    #[serde(default)]
    pub status: Option<u16>,
}

impl FaultSettings {
    fn validated(self) -> Result<Self, String> {
        if !(0.0..=1.0).contains(&self.error_rate) {
            return Err(format!(
                "error_rate {} is not a share: use 0.0 to 1.0",
                self.error_rate
            ));
        }
        if self.delay_ms > 600_000 {
            return Err(format!(
                "delay_ms {} is too long: use at most 600000",
                self.delay_ms
            ));
        }
        if let Some(s) = self.status.filter(|s| !(500..=599).contains(s)) {
            return Err(format!("status {s} is not a server error: use 500 to 599"));
        }
        Ok(self)
    }
}

/// The faults in force, changed by `PUT /__fault` and read by every request.
#[derive(Debug, Clone, Default)]
pub struct Faults(Arc<RwLock<FaultSettings>>);

impl Faults {
    /// Starts with `settings`.
    pub fn new(settings: FaultSettings) -> Self {
        Self(Arc::new(RwLock::new(settings)))
    }

    /// The current settings.
    pub fn get(&self) -> FaultSettings {
        self.0.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Replaces the settings.
    pub fn set(&self, settings: FaultSettings) {
        if let Ok(mut s) = self.0.write() {
            *s = settings;
        }
    }
}

/// Adds `/health`, `/__fault` (GET shows, PUT sets from the query, DELETE clears), the
/// fault-injecting middleware and trace continuation to a service's router.
pub fn with_basics(router: Router, faults: Faults, instance: &str) -> Router {
    let admin = Router::new()
        .route(
            "/__fault",
            get(get_fault).put(put_fault).delete(delete_fault),
        )
        .with_state(faults.clone());
    let instance = HeaderValue::from_str(instance).unwrap_or(HeaderValue::from_static("unnamed"));
    router
        .route(
            "/health",
            get(|| async { Json(serde_json::json!({"status": "ok"})) }),
        )
        .layer(axum::middleware::from_fn_with_state(faults, inject))
        .merge(admin)
        .layer(axum::middleware::from_fn(
            move |req: Request, next: Next| {
                let instance = instance.clone();
                async move {
                    let mut resp = next.run(req).await;
                    resp.headers_mut().insert("x-instance", instance);
                    resp
                }
            },
        ))
        .layer(axum::middleware::from_fn(crate::telemetry::server_span))
}

async fn get_fault(State(f): State<Faults>) -> Json<FaultSettings> {
    Json(f.get())
}

async fn put_fault(
    State(f): State<Faults>,
    Query(settings): Query<FaultSettings>,
) -> Result<Json<FaultSettings>, (StatusCode, Json<serde_json::Value>)> {
    let settings = settings.validated().map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            Json(serde_json::json!({"error": "bad_fault", "message": e})),
        )
    })?;
    f.set(settings.clone());
    Ok(Json(settings))
}

async fn delete_fault(State(f): State<Faults>) -> Json<FaultSettings> {
    f.set(FaultSettings::default());
    Json(FaultSettings::default())
}

async fn inject(State(f): State<Faults>, req: Request, next: Next) -> Response {
    let s = f.get();
    let health = req.uri().path() == "/health";
    let grpc = req
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
    if s.delay_ms > 0 && !health {
        tokio::time::sleep(Duration::from_millis(s.delay_ms)).await;
    }
    let fail = match s.status {
        Some(status) => Some(status),
        None if !health && s.error_rate > 0.0 && fastrand::f64() < s.error_rate => Some(500),
        None => None,
    };
    match fail {
        Some(_) if grpc => grpc_unavailable(),
        Some(status) => (
            StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR),
            Json(serde_json::json!({"error": "injected_fault", "status": status})),
        )
            .into_response(),
        None => next.run(req).await,
    }
}

/// A trailers-only gRPC answer: status UNAVAILABLE.
fn grpc_unavailable() -> Response {
    let mut resp = Response::new(axum::body::Body::empty());
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert("grpc-status", HeaderValue::from_static("14"));
    h.insert("grpc-message", HeaderValue::from_static("injected fault"));
    resp
}

/// Binds `listen` (port 0 picks one).
pub async fn bind(listen: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| std::io::Error::new(e.kind(), format!("cannot listen on {listen}: {e}")))
}

/// The instance name: `--instance`, else `SERVICE-PORT`.
pub fn instance_name(args: &CommonArgs, service: &str, addr: SocketAddr) -> String {
    args.instance
        .clone()
        .unwrap_or_else(|| format!("{service}-{}", addr.port()))
}

/// Registers `service` at `addr` in Consul when `--consul` is given.
pub async fn register(
    args: &CommonArgs,
    service: &str,
    instance: &str,
    addr: SocketAddr,
) -> std::io::Result<Option<Registration>> {
    let Some(address) = &args.consul else {
        return Ok(None);
    };
    let consul = ConsulConfig::with_address(address)
        .map(Consul::new)
        .map_err(std::io::Error::other)?;
    let registration = consul
        .register(
            Service::new(service, addr)
                .meta("instance", instance)
                .http_check("/health"),
        )
        .await
        .map_err(std::io::Error::other)?;
    println!(
        "registered as `{service}` ({}) in Consul at {address}",
        registration.service().id
    );
    Ok(Some(registration))
}

/// Resolves on SIGTERM or Ctrl-C.
pub async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

/// Serves `router` on `listener` (HTTP/1.1 and h2c) until SIGTERM / Ctrl-C; deregisters from
/// Consul first so that no new traffic is sent, then finishes the requests in flight.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    registration: Option<Registration>,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = axum::serve(
        listener,
        router.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(async move {
        let _ = stop_rx.await;
    });
    let serving = tokio::spawn(async move { server.await });
    shutdown_signal().await;
    if let Some(r) = registration {
        if let Err(e) = r.deregister().await {
            eprintln!("could not deregister from Consul: {e}");
        }
    }
    let _ = stop_tx.send(());
    match tokio::time::timeout(Duration::from_secs(10), serving).await {
        Ok(Ok(result)) => result,
        Ok(Err(e)) => Err(std::io::Error::other(e)),
        Err(_) => {
            eprintln!("requests still in flight after 10 s; exiting");
            Ok(())
        }
    }
}
