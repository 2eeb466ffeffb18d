//! Play (HTTP/JSON): `POST /play {"title_id": "t-0001", "device": "tv"}` turns a press of the
//! Play button into a playback manifest.
//!
//! The caller's identity comes from the gateway, which verified the JWT and passes its claims on
//! as `x-user-id`, `x-user-plan` and `x-user-country` (Play is reachable only through the
//! gateway; the gateway strips those headers from clients). Play then asks, concurrently:
//!
//! - Catalog whether this user may play the title here (403 with the reason if not),
//! - Steering (gRPC) for the best servers for the client's address.
//!
//! Both calls go through the `resilience` tower layers: a timeout, a circuit breaker and a
//! bulkhead each. Steering also has a fallback: when it fails, times out, or its breaker is
//! open, the manifest lists the default servers and says `"degraded": true` with the reason.
//! Without Catalog there is no answer (503): playing unlicensed content is not a fallback.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::{Json, Router};
use discovery::{Discovery, EndpointSet, Query};
use futures_util::StreamExt;
use resilience::tower::{
    BoxError, BulkheadLayer, CircuitBreakerLayer, Elapsed, ErrorsAreFailures, FallbackLayer,
    TimeoutLayer,
};
use resilience::{
    BreakerConfig, Bulkhead, BulkheadConfig, CircuitBreaker, Rejected, ShortCircuited,
};
use serde::{Deserialize, Serialize};
use tower::{ServiceBuilder, ServiceExt};

use crate::catalog::{Playability, Title};
use crate::steering::proto::steering_client::SteeringClient;
use crate::steering::proto::SelectServersRequest;
use crate::telemetry;

/// Where a dependency's instances are: fixed addresses, or a discovery watch that keeps them
/// current. Each call takes the next instance (round robin).
#[derive(Debug, Clone)]
pub struct Backends {
    service: Arc<str>,
    current: Arc<RwLock<Vec<SocketAddr>>>,
    next: Arc<AtomicUsize>,
}

impl Backends {
    /// Fixed addresses.
    pub fn fixed(service: &str, addrs: Vec<SocketAddr>) -> Self {
        Self {
            service: service.into(),
            current: Arc::new(RwLock::new(addrs)),
            next: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// Instances of `service` as `discovery` reports them (Consul: passing instances only).
    pub fn discovered(service: &str, discovery: &dyn Discovery) -> Result<Self, String> {
        let backends = Self::fixed(service, Vec::new());
        let watch = discovery
            .watch(&Query::service(service))
            .map_err(|e| e.to_string())?;
        let current = backends.current.clone();
        let name = service.to_owned();
        tokio::spawn(async move {
            let mut set = EndpointSet::default();
            let mut updates = watch.updates;
            while let Some(update) = updates.next().await {
                if set.apply(update) {
                    let addrs: Vec<SocketAddr> = set.iter().map(|e| e.address).collect();
                    println!("{name}: {} instance(s) {addrs:?}", addrs.len());
                    if let Ok(mut c) = current.write() {
                        *c = addrs;
                    }
                }
            }
        });
        Ok(backends)
    }

    /// The next instance, or an error naming the service when there is none.
    pub fn pick(&self) -> Result<SocketAddr, BoxError> {
        let current = self
            .current
            .read()
            .map_err(|_| BoxError::from("backend list poisoned"))?;
        if current.is_empty() {
            return Err(format!("no instance of {} is available", self.service).into());
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed) % current.len();
        Ok(current[i])
    }
}

/// Timeout, breaker and bulkhead for one dependency.
#[derive(Debug, Clone)]
pub struct Guard {
    /// Its circuit breaker (Hystrix defaults).
    pub breaker: Arc<CircuitBreaker>,
    /// Its bulkhead.
    pub bulkhead: Arc<Bulkhead>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl Guard {
    /// A guard named `name` with `timeout` and at most `max_concurrent` calls in flight.
    pub fn new(name: &str, timeout: Duration, max_concurrent: usize) -> Self {
        Self {
            breaker: Arc::new(CircuitBreaker::new(
                name,
                BreakerConfig::default(),
                Instant::now(),
            )),
            bulkhead: Arc::new(Bulkhead::new(BulkheadConfig {
                max_concurrent,
                max_queue: 0,
            })),
            timeout,
        }
    }

    fn status(&self) -> serde_json::Value {
        let s = self.breaker.snapshot(Instant::now());
        serde_json::json!({
            "breaker": s.state.name(),
            "window_requests": s.window.requests(),
            "window_error_percent": s.window.error_percent(),
            "in_flight": self.bulkhead.in_use(),
            "timeout_ms": self.timeout.as_millis() as u64,
        })
    }
}

/// Play's settings.
#[derive(Debug, Clone)]
pub struct PlayConfig {
    /// Catalog instances.
    pub catalog: Backends,
    /// Steering instances.
    pub steering: Backends,
    /// Catalog call guard.
    pub catalog_guard: Guard,
    /// Steering call guard.
    pub steering_guard: Guard,
    /// Servers the manifest lists when Steering cannot answer.
    pub default_servers: Vec<String>,
}

/// Play's shared state.
#[derive(Debug)]
pub struct Play {
    config: PlayConfig,
    http: reqwest::Client,
    channels: Mutex<HashMap<SocketAddr, tonic::transport::Channel>>,
}

/// What the client sends.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlayRequest {
    /// The title to play.
    pub title_id: String,
    /// `tv`, `web` or `mobile`.
    pub device: String,
}

/// One rung of the quality ladder.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Rung {
    /// Label, e.g. `1080p`.
    pub name: &'static str,
    /// Frame width.
    pub width: u32,
    /// Frame height.
    pub height: u32,
    /// Video bitrate.
    pub bitrate_kbps: u32,
    /// Codec.
    pub codec: &'static str,
}

const LADDER: [Rung; 6] = [
    Rung {
        name: "2160p",
        width: 3840,
        height: 2160,
        bitrate_kbps: 15_600,
        codec: "hevc",
    },
    Rung {
        name: "1080p",
        width: 1920,
        height: 1080,
        bitrate_kbps: 5_800,
        codec: "avc1",
    },
    Rung {
        name: "720p",
        width: 1280,
        height: 720,
        bitrate_kbps: 3_000,
        codec: "avc1",
    },
    Rung {
        name: "480p",
        width: 854,
        height: 480,
        bitrate_kbps: 1_050,
        codec: "avc1",
    },
    Rung {
        name: "360p",
        width: 640,
        height: 360,
        bitrate_kbps: 560,
        codec: "avc1",
    },
    Rung {
        name: "240p",
        width: 426,
        height: 240,
        bitrate_kbps: 235,
        codec: "avc1",
    },
];

/// The rungs a device may show on a plan: the lower of the device's and the plan's caps.
pub fn ladder(device: &str, plan: &str) -> Option<Vec<Rung>> {
    let device_cap = match device {
        "tv" => 2160,
        "web" => 1080,
        "mobile" => 720,
        _ => return None,
    };
    let plan_cap = match plan {
        "premium" => 2160,
        "standard" => 1080,
        _ => 720,
    };
    let cap = device_cap.min(plan_cap);
    Some(LADDER.iter().copied().filter(|r| r.height <= cap).collect())
}

/// A server in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestServer {
    /// 1 is the best.
    pub rank: u32,
    /// Server id (`default` entries when degraded).
    pub id: String,
    /// The title's stream manifest on that server.
    pub url: String,
    /// Why it ranks here.
    pub reason: String,
}

/// What Play answers.
#[derive(Debug, Clone, Serialize)]
pub struct Manifest {
    /// The title.
    pub title: Title,
    /// Who plays.
    pub subject: String,
    /// Their plan.
    pub plan: String,
    /// Their country.
    pub country: String,
    /// The device.
    pub device: String,
    /// Ranked servers.
    pub servers: Vec<ManifestServer>,
    /// Quality ladder.
    pub ladder: Vec<Rung>,
    /// Whether a dependency failed and defaults were used.
    pub degraded: bool,
    /// Why, when degraded.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub degraded_reason: Option<String>,
}

/// Catalog's answer for one title.
#[derive(Debug, Clone)]
enum CatalogAnswer {
    Known(Playability),
    UnknownTitle,
}

/// Steering's answer, or the fallback's.
#[derive(Debug, Clone)]
struct Steered {
    servers: Vec<(String, String, String)>,
    degraded: Option<String>,
}

use crate::service::{error, ApiError};

fn why(service: &str, e: &BoxError) -> String {
    if e.downcast_ref::<ShortCircuited>().is_some() {
        format!("{service} circuit open")
    } else if e.downcast_ref::<Rejected>().is_some() {
        format!("{service} bulkhead full")
    } else if e.downcast_ref::<Elapsed>().is_some() {
        format!("{service} timed out")
    } else if let Some(s) = e.downcast_ref::<tonic::Status>() {
        format!("{service} unavailable: {:?}: {}", s.code(), s.message())
    } else {
        format!("{service} unavailable: {e}")
    }
}

impl Play {
    /// Play over `config`.
    pub fn new(config: PlayConfig) -> Self {
        Self {
            config,
            http: reqwest::Client::builder()
                .pool_idle_timeout(Duration::from_secs(30))
                .build()
                .unwrap_or_default(),
            channels: Mutex::new(HashMap::new()),
        }
    }

    /// The Play API (without `/health` and faults; see [`crate::service::with_basics`]).
    pub fn router(self: Arc<Self>) -> Router {
        Router::new()
            .route("/play", post(play_handler))
            .route("/dependencies", get(dependencies))
            .with_state(self)
    }

    fn catalog(
        &self,
        title: &str,
        country: &str,
        plan: &str,
    ) -> impl std::future::Future<Output = Result<CatalogAnswer, BoxError>> + Send + 'static {
        let g = &self.config.catalog_guard;
        let http = self.http.clone();
        let backends = self.config.catalog.clone();
        let query = CatalogQuery {
            title: title.to_owned(),
            country: country.to_owned(),
            plan: plan.to_owned(),
        };
        let call = ServiceBuilder::new()
            .layer(CircuitBreakerLayer::new(
                g.breaker.clone(),
                ErrorsAreFailures,
            ))
            .layer(BulkheadLayer::new(g.bulkhead.clone(), Duration::ZERO))
            .layer(TimeoutLayer::new(g.timeout))
            .service_fn(move |q: CatalogQuery| playability(http.clone(), backends.pick(), q));
        call.oneshot(query)
    }

    fn channel(&self, addr: SocketAddr) -> Result<tonic::transport::Channel, BoxError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| BoxError::from("channel cache poisoned"))?;
        if let Some(c) = channels.get(&addr) {
            return Ok(c.clone());
        }
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy();
        channels.insert(addr, channel.clone());
        Ok(channel)
    }

    fn default_servers(&self) -> Vec<(String, String, String)> {
        self.config
            .default_servers
            .iter()
            .enumerate()
            .map(|(i, url)| {
                (
                    format!("default-{}", i + 1),
                    url.clone(),
                    "default list".to_owned(),
                )
            })
            .collect()
    }

    fn steering(
        self: &Arc<Self>,
        client_ip: IpAddr,
        country: &str,
        title: &str,
    ) -> impl std::future::Future<Output = Steered> + Send + 'static {
        let g = &self.config.steering_guard;
        let request = SelectServersRequest {
            client_ip: client_ip.to_string(),
            country: country.to_owned(),
            title_id: title.to_owned(),
            limit: 10,
        };
        let backends = self.config.steering.clone();
        let this = self.clone();
        let call = ServiceBuilder::new()
            .layer(
                FallbackLayer::new(fallback(self.default_servers())).counted_in(g.breaker.clone()),
            )
            .layer(CircuitBreakerLayer::new(
                g.breaker.clone(),
                ErrorsAreFailures,
            ))
            .layer(BulkheadLayer::new(g.bulkhead.clone(), Duration::ZERO))
            .layer(TimeoutLayer::new(g.timeout))
            .service_fn(move |r: SelectServersRequest| {
                let channel = backends.pick().and_then(|a| this.channel(a));
                select_servers(channel, r)
            });
        async move {
            match call.oneshot(request).await {
                Ok(s) => s,
                Err(e) => Steered {
                    servers: Vec::new(),
                    degraded: Some(why("steering", &e)),
                },
            }
        }
    }
}

#[derive(Debug, Clone)]
struct CatalogQuery {
    title: String,
    country: String,
    plan: String,
}

async fn playability(
    http: reqwest::Client,
    addr: Result<SocketAddr, BoxError>,
    q: CatalogQuery,
) -> Result<CatalogAnswer, BoxError> {
    let addr = addr?;
    let query = form_urlencoded::Serializer::new(String::new())
        .append_pair("country", &q.country)
        .append_pair("plan", &q.plan)
        .finish();
    let title: String = form_urlencoded::byte_serialize(q.title.as_bytes()).collect();
    let url = format!("http://{addr}/titles/{title}/playability?{query}");
    let cx = telemetry::client_span("GET catalog playability".into(), &addr.to_string());
    let mut headers = HeaderMap::new();
    telemetry::inject(&cx, &mut headers);
    let answer = async {
        let resp = http.get(url).headers(headers).send().await?;
        match resp.status().as_u16() {
            200 => Ok(CatalogAnswer::Known(resp.json().await?)),
            404 => Ok(CatalogAnswer::UnknownTitle),
            s => Err(format!("catalog answered {s}").into()),
        }
    }
    .await;
    telemetry::end_client_span(&cx, answer.as_ref().err().map(ToString::to_string));
    answer
}

/// Steering's fallback: the default servers, marked degraded with the reason.
fn fallback(
    defaults: Vec<(String, String, String)>,
) -> impl Fn(BoxError) -> std::future::Ready<Result<Steered, BoxError>> + Clone + Send + Sync + 'static
{
    move |e: BoxError| {
        std::future::ready(Ok(Steered {
            servers: defaults.clone(),
            degraded: Some(why("steering", &e)),
        }))
    }
}

async fn select_servers(
    channel: Result<tonic::transport::Channel, BoxError>,
    request: SelectServersRequest,
) -> Result<Steered, BoxError> {
    let mut client = SteeringClient::new(channel?);
    let cx = telemetry::client_span("steering.v1.Steering/SelectServers".into(), "steering");
    let mut request = tonic::Request::new(request);
    let mut headers = HeaderMap::new();
    telemetry::inject(&cx, &mut headers);
    *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers(headers);
    let result = client.select_servers(request).await;
    telemetry::end_client_span(
        &cx,
        result
            .as_ref()
            .err()
            .filter(|s| s.code() != tonic::Code::NotFound)
            .map(ToString::to_string),
    );
    match result {
        Ok(resp) => Ok(Steered {
            servers: resp
                .into_inner()
                .servers
                .into_iter()
                .map(|s| (s.id, s.url, s.reason))
                .collect(),
            degraded: None,
        }),
        // No server holds the title: an answer, not a Steering failure.
        Err(s) if s.code() == tonic::Code::NotFound => Ok(Steered {
            servers: Vec::new(),
            degraded: None,
        }),
        Err(s) => Err(Box::new(s)),
    }
}

/// The first `X-Forwarded-For` entry (the gateway's view of the client), else the peer.
fn client_ip(headers: &HeaderMap, peer: SocketAddr) -> IpAddr {
    headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(',').next())
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(peer.ip())
}

fn identity(headers: &HeaderMap) -> Result<(String, String, String), ApiError> {
    let get = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
            .filter(|v| !v.is_empty())
            .map(str::to_owned)
    };
    match (get("x-user-id"), get("x-user-plan"), get("x-user-country")) {
        (Some(sub), Some(plan), Some(country)) => Ok((sub, plan, country.to_uppercase())),
        _ => Err(error(
            StatusCode::UNAUTHORIZED,
            "missing_identity",
            "no verified caller: call Play through the gateway with a bearer token whose claims \
             include sub, plan and country",
        )),
    }
}

async fn play_handler(
    State(p): State<Arc<Play>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Result<Json<PlayRequest>, JsonRejection>,
) -> Result<Json<Manifest>, ApiError> {
    let (subject, plan, country) = identity(&headers)?;
    let Json(req) = body.map_err(|e| {
        error(
            StatusCode::BAD_REQUEST,
            "bad_request",
            format!(
                "{}; send {{\"title_id\": \"t-0001\", \"device\": \"tv\"}}",
                e.body_text()
            ),
        )
    })?;
    let Some(ladder) = ladder(&req.device, &plan) else {
        return Err(error(
            StatusCode::BAD_REQUEST,
            "bad_device",
            format!("device {:?} is not one of tv, web, mobile", req.device),
        ));
    };
    let ip = client_ip(&headers, peer);
    // Independent: ask both at once.
    let (catalog, steered) = tokio::join!(
        p.catalog(&req.title_id, &country, &plan),
        p.steering(ip, &country, &req.title_id)
    );
    let playability = match catalog {
        Ok(CatalogAnswer::Known(p)) => p,
        Ok(CatalogAnswer::UnknownTitle) => {
            return Err(error(
                StatusCode::NOT_FOUND,
                "unknown_title",
                format!("no title {}", req.title_id),
            ))
        }
        Err(e) => {
            return Err(error(
                StatusCode::SERVICE_UNAVAILABLE,
                "catalog_unavailable",
                why("catalog", &e),
            ))
        }
    };
    if !playability.allowed {
        let reason = playability.reason.unwrap_or_else(|| "not_allowed".into());
        let message = match reason.as_str() {
            "not_licensed_in_country" => {
                format!("{} is not licensed in {country}", playability.title.name)
            }
            "plan_not_allowed" => format!(
                "{} is not included in the {plan} plan",
                playability.title.name
            ),
            "not_playable" => format!(
                "{} is a manga: read it, don't play it",
                playability.title.name
            ),
            _ => "not allowed".to_owned(),
        };
        return Err((
            StatusCode::FORBIDDEN,
            Json(serde_json::json!({"error": "not_allowed", "reason": reason, "message": message})),
        ));
    }
    let mut degraded = steered.degraded;
    let mut servers = steered.servers;
    if servers.is_empty() && degraded.is_none() {
        degraded = Some("no steered server holds the title".into());
        servers = p.default_servers();
    }
    let title_id = playability.title.id.clone();
    Ok(Json(Manifest {
        title: playability.title,
        subject,
        plan,
        country,
        device: req.device,
        servers: servers
            .into_iter()
            .zip(1..)
            .map(|((id, base, reason), rank)| ManifestServer {
                rank,
                url: format!(
                    "{}/titles/{title_id}/manifest.mpd",
                    base.trim_end_matches('/')
                ),
                id,
                reason,
            })
            .collect(),
        ladder,
        degraded: degraded.is_some(),
        degraded_reason: degraded,
    }))
}

async fn dependencies(State(p): State<Arc<Play>>) -> Json<serde_json::Value> {
    Json(serde_json::json!({
        "catalog": p.config.catalog_guard.status(),
        "steering": p.config.steering_guard.status(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ladder_is_capped_by_device_and_plan() {
        let top = |d, p| ladder(d, p).expect("known device")[0].name;
        assert_eq!(top("tv", "premium"), "2160p");
        assert_eq!(top("tv", "standard"), "1080p");
        assert_eq!(top("tv", "basic"), "720p");
        assert_eq!(top("web", "premium"), "1080p");
        assert_eq!(top("mobile", "premium"), "720p");
        assert_eq!(ladder("mobile", "basic").expect("known").len(), 4);
        assert!(ladder("toaster", "premium").is_none());
    }

    #[test]
    fn the_client_address_is_the_first_forwarded_one() {
        let mut h = HeaderMap::new();
        let peer: SocketAddr = "127.0.0.1:5000".parse().expect("addr");
        assert_eq!(client_ip(&h, peer), peer.ip());
        h.insert(
            "x-forwarded-for",
            "10.1.2.3, 127.0.0.1".parse().expect("hv"),
        );
        assert_eq!(
            client_ip(&h, peer),
            "10.1.2.3".parse::<IpAddr>().expect("ip")
        );
    }

    #[test]
    fn backends_round_robin_and_name_the_service_when_empty() {
        let a: SocketAddr = "127.0.0.1:1".parse().expect("a");
        let b: SocketAddr = "127.0.0.1:2".parse().expect("b");
        let bs = Backends::fixed("catalog", vec![a, b]);
        let picks: Vec<_> = (0..4).map(|_| bs.pick().expect("some")).collect();
        assert_eq!(picks, [a, b, a, b]);
        let none = Backends::fixed("steering", vec![]);
        assert!(none
            .pick()
            .expect_err("empty")
            .to_string()
            .contains("steering"));
    }
}
