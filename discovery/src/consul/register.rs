//! Self-registration with the local Consul agent.
//!
//! ```no_run
//! # async fn demo(addr: std::net::SocketAddr) -> Result<(), discovery::consul::ConsulError> {
//! use discovery::consul::{Consul, Service};
//! let registration = Consul::from_env()?
//!     .register(Service::new("catalog", addr).http_check("/health"))
//!     .await?;
//! // ... serve ...
//! registration.deregister().await?;
//! # Ok(()) }
//! ```
//!
//! A [`Registration`] keeps itself alive: a TTL check is reported on time for as long as the
//! registration lives, and if the agent forgets the service (an agent restarted without its
//! data, as a dev agent is) it is registered again.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http::Method;
use serde_json::{json, Value};
use tokio::task::JoinHandle;

use super::{Consul, ConsulError};

/// How Consul checks an instance's health.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `GET http://ADDRESS{path}` every `interval`; 2xx is passing, 429 warning, else critical.
    Http {
        /// Path of the health endpoint.
        path: String,
        /// Time between checks.
        interval: Duration,
        /// Time allowed per check.
        timeout: Duration,
    },
    /// The standard gRPC health service at the address (`grpc.health.v1.Health/Check`).
    Grpc {
        /// The service name to ask about (the server as a whole when `None`).
        service: Option<String>,
        /// Time between checks.
        interval: Duration,
        /// Time allowed per check.
        timeout: Duration,
    },
    /// A TCP connect to the address every `interval`.
    Tcp {
        /// Time between checks.
        interval: Duration,
        /// Time allowed per check.
        timeout: Duration,
    },
    /// The instance reports its own status at least every `ttl`; the [`Registration`] does it
    /// (every `ttl / 3`) with the status set by [`Registration::report`].
    Ttl {
        /// How long a report is good for.
        ttl: Duration,
    },
}

/// A check status, as Consul names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CheckStatus {
    /// Healthy: receives traffic.
    Passing,
    /// Degraded: left out of `?passing` queries.
    Warning,
    /// Failing.
    Critical,
}

impl CheckStatus {
    fn as_str(self) -> &'static str {
        match self {
            Self::Passing => "passing",
            Self::Warning => "warning",
            Self::Critical => "critical",
        }
    }
}

/// A service instance to register.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Service {
    /// Service name (what gateways watch).
    pub name: String,
    /// Instance id, unique on the agent (default `NAME-IP-PORT`).
    pub id: String,
    /// Where the instance listens.
    pub address: SocketAddr,
    /// Tags (e.g. `canary`).
    pub tags: Vec<String>,
    /// Metadata (e.g. `version = "2"`).
    pub meta: BTreeMap<String, String>,
    /// Traffic weight while passing.
    pub weight: u32,
    /// The health check.
    pub check: Check,
    /// The check's status at registration (Consul's default is critical).
    pub initial_status: Option<CheckStatus>,
    /// Consul removes the instance after its check has been critical this long (Consul's
    /// minimum is one minute).
    pub deregister_critical_after: Duration,
}

fn go_duration(d: Duration) -> String {
    format!("{}ms", d.as_millis().max(1))
}

impl Service {
    /// An instance of `name` at `address` with a TCP check every 10 s.
    pub fn new(name: impl Into<String>, address: SocketAddr) -> Self {
        let name = name.into();
        let id =
            format!("{name}-{}-{}", address.ip(), address.port()).replace([':', '[', ']'], "_");
        Self {
            name,
            id,
            address,
            tags: Vec::new(),
            meta: BTreeMap::new(),
            weight: 1,
            check: Check::Tcp {
                interval: Duration::from_secs(10),
                timeout: Duration::from_secs(2),
            },
            initial_status: None,
            deregister_critical_after: Duration::from_secs(60),
        }
    }

    /// An HTTP check of `path` every second.
    pub fn http_check(mut self, path: impl Into<String>) -> Self {
        self.check = Check::Http {
            path: path.into(),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        self
    }

    /// A gRPC health check every second (of `service`, or the whole server).
    pub fn grpc_check(mut self, service: Option<&str>) -> Self {
        self.check = Check::Grpc {
            service: service.map(str::to_owned),
            interval: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        self
    }

    /// A TTL check reported by the registration itself.
    pub fn ttl_check(mut self, ttl: Duration) -> Self {
        self.check = Check::Ttl { ttl };
        self
    }

    /// Any check.
    pub fn check(mut self, check: Check) -> Self {
        self.check = check;
        self
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds a metadata pair.
    pub fn meta(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.meta.insert(key.into(), value.into());
        self
    }

    /// Sets the weight while passing (at least 1).
    pub fn weight(mut self, weight: u32) -> Self {
        self.weight = weight.max(1);
        self
    }

    /// Sets the instance id.
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = id.into();
        self
    }

    /// Sets the check's status at registration.
    pub fn initial_status(mut self, status: CheckStatus) -> Self {
        self.initial_status = Some(status);
        self
    }

    /// The id of the service's check on the agent.
    pub fn check_id(&self) -> String {
        format!("service:{}", self.id)
    }

    /// The agent's registration document.
    pub fn document(&self) -> Value {
        let ip = self.address.ip().to_string();
        let target = self.address.to_string();
        let mut check = match &self.check {
            Check::Http {
                path,
                interval,
                timeout,
            } => {
                let path = if path.starts_with('/') {
                    path.clone()
                } else {
                    format!("/{path}")
                };
                json!({ "HTTP": format!("http://{target}{path}"), "Interval": go_duration(*interval), "Timeout": go_duration(*timeout) })
            }
            Check::Grpc {
                service,
                interval,
                timeout,
            } => {
                let grpc = match service {
                    Some(s) => format!("{target}/{s}"),
                    None => target.clone(),
                };
                json!({ "GRPC": grpc, "GRPCUseTLS": false, "Interval": go_duration(*interval), "Timeout": go_duration(*timeout) })
            }
            Check::Tcp { interval, timeout } => {
                json!({ "TCP": target, "Interval": go_duration(*interval), "Timeout": go_duration(*timeout) })
            }
            Check::Ttl { ttl } => json!({ "TTL": go_duration(*ttl) }),
        };
        check["CheckID"] = json!(self.check_id());
        check["Name"] = json!(format!("{} health", self.name));
        check["DeregisterCriticalServiceAfter"] =
            json!(go_duration(self.deregister_critical_after));
        if let Some(s) = self.initial_status {
            check["Status"] = json!(s.as_str());
        }
        json!({
            "ID": self.id,
            "Name": self.name,
            "Address": ip,
            "Port": self.address.port(),
            "Tags": self.tags,
            "Meta": self.meta,
            "Weights": { "Passing": self.weight, "Warning": 1 },
            "Check": check,
        })
    }
}

impl Consul {
    /// Registers `service` with the agent and keeps it registered until
    /// [`Registration::deregister`] (or drop, which stops the upkeep; Consul then removes the
    /// instance once its check has been critical for `deregister_critical_after`).
    pub async fn register(&self, service: Service) -> Result<Registration, ConsulError> {
        self.put_registration(&service).await?;
        let status = Arc::new(Mutex::new((
            service.initial_status.unwrap_or(CheckStatus::Passing),
            String::new(),
        )));
        if let Check::Ttl { .. } = service.check {
            report_ttl(self, &service, &status).await?;
        }
        tracing::info!(service = %service.name, id = %service.id, address = %service.address, consul = %self.config.address, "registered in Consul");
        let keeper = tokio::spawn(keep(self.clone(), service.clone(), status.clone()));
        Ok(Registration {
            consul: self.clone(),
            service,
            status,
            keeper,
        })
    }

    async fn put_registration(&self, service: &Service) -> Result<(), ConsulError> {
        let body = serde_json::to_vec(&service.document()).unwrap_or_default();
        self.call(
            Method::PUT,
            "/v1/agent/service/register",
            Some(body),
            self.config.request_timeout,
        )
        .await
        .map(drop)
    }

    /// Whether the agent has an instance with this id.
    pub async fn has_service(&self, id: &str) -> Result<bool, ConsulError> {
        match self
            .call(
                Method::GET,
                &format!("/v1/agent/service/{id}"),
                None,
                self.config.request_timeout,
            )
            .await
        {
            Ok(_) => Ok(true),
            Err(ConsulError::Status { status: 404, .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes the instance with this id from the agent.
    pub async fn deregister(&self, id: &str) -> Result<(), ConsulError> {
        self.call(
            Method::PUT,
            &format!("/v1/agent/service/deregister/{id}"),
            None,
            self.config.request_timeout,
        )
        .await
        .map(drop)
    }
}

async fn report_ttl(
    consul: &Consul,
    service: &Service,
    status: &Mutex<(CheckStatus, String)>,
) -> Result<(), ConsulError> {
    let (s, note) = status
        .lock()
        .map(|g| g.clone())
        .unwrap_or((CheckStatus::Critical, String::new()));
    let body =
        serde_json::to_vec(&json!({ "Status": s.as_str(), "Output": note })).unwrap_or_default();
    consul
        .call(
            Method::PUT,
            &format!("/v1/agent/check/update/{}", service.check_id()),
            Some(body),
            consul.config.request_timeout,
        )
        .await
        .map(drop)
}

/// The upkeep of a registration: TTL reports on time, and a new registration when the agent
/// lost this one.
async fn keep(consul: Consul, service: Service, status: Arc<Mutex<(CheckStatus, String)>>) {
    let tick = match service.check {
        Check::Ttl { ttl } => (ttl / 3).max(Duration::from_millis(100)),
        _ => Duration::from_secs(5),
    };
    loop {
        tokio::time::sleep(tick).await;
        let healthy = match service.check {
            Check::Ttl { .. } => report_ttl(&consul, &service, &status).await,
            _ => consul.has_service(&service.id).await.and_then(|known| {
                if known {
                    Ok(())
                } else {
                    Err(ConsulError::Status {
                        status: 404,
                        what: "the registration".into(),
                        body: "unknown service".into(),
                    })
                }
            }),
        };
        let Err(e) = healthy else {
            continue;
        };
        match consul.has_service(&service.id).await {
            Ok(false) => match consul.put_registration(&service).await {
                Ok(()) => {
                    tracing::info!(service = %service.name, id = %service.id, "the Consul agent had lost this instance; registered again");
                    if let Check::Ttl { .. } = service.check {
                        let _ = report_ttl(&consul, &service, &status).await;
                    }
                }
                Err(e) => {
                    tracing::warn!(service = %service.name, error = %e, "cannot register again in Consul; will retry")
                }
            },
            Ok(true) => {
                tracing::warn!(service = %service.name, error = %e, "Consul check update failed; will retry")
            }
            Err(e) => {
                tracing::debug!(service = %service.name, error = %e, "Consul unreachable; will retry")
            }
        }
    }
}

/// A live registration. Call [`Registration::deregister`] on graceful shutdown.
#[derive(Debug)]
pub struct Registration {
    consul: Consul,
    service: Service,
    status: Arc<Mutex<(CheckStatus, String)>>,
    keeper: JoinHandle<()>,
}

impl Registration {
    /// The registered instance.
    pub fn service(&self) -> &Service {
        &self.service
    }

    /// For a TTL check: sets the status reported from now on and reports it at once.
    /// Other checks are Consul's to run; this does nothing for them.
    pub async fn report(&self, status: CheckStatus, note: &str) -> Result<(), ConsulError> {
        if let Ok(mut g) = self.status.lock() {
            *g = (status, note.to_owned());
        }
        match self.service.check {
            Check::Ttl { .. } => report_ttl(&self.consul, &self.service, &self.status).await,
            _ => Ok(()),
        }
    }

    /// Stops the upkeep and removes the instance from the agent.
    pub async fn deregister(self) -> Result<(), ConsulError> {
        self.keeper.abort();
        self.consul.deregister(&self.service.id).await?;
        tracing::info!(service = %self.service.name, id = %self.service.id, "deregistered from Consul");
        Ok(())
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.keeper.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registration_document_has_the_check_and_deregistration_timer() {
        let addr: SocketAddr = "127.0.0.1:9000".parse().expect("addr");
        let doc = Service::new("play", addr)
            .http_check("health")
            .tag("canary")
            .meta("version", "2")
            .weight(3)
            .document();
        assert_eq!(doc["ID"], "play-127.0.0.1-9000");
        assert_eq!(doc["Address"], "127.0.0.1");
        assert_eq!(doc["Port"], 9000);
        assert_eq!(doc["Tags"][0], "canary");
        assert_eq!(doc["Meta"]["version"], "2");
        assert_eq!(doc["Weights"]["Passing"], 3);
        assert_eq!(doc["Check"]["HTTP"], "http://127.0.0.1:9000/health");
        assert_eq!(doc["Check"]["Interval"], "1000ms");
        assert_eq!(doc["Check"]["CheckID"], "service:play-127.0.0.1-9000");
        assert_eq!(doc["Check"]["DeregisterCriticalServiceAfter"], "60000ms");
        assert!(doc["Check"].get("Status").is_none());

        let grpc = Service::new("steering", addr)
            .grpc_check(Some("steering.v1.Steering"))
            .document();
        assert_eq!(grpc["Check"]["GRPC"], "127.0.0.1:9000/steering.v1.Steering");
        let ttl = Service::new("x", addr)
            .ttl_check(Duration::from_secs(3))
            .initial_status(CheckStatus::Critical)
            .document();
        assert_eq!(ttl["Check"]["TTL"], "3000ms");
        assert_eq!(ttl["Check"]["Status"], "critical");
        let v6 = Service::new("x", "[::1]:80".parse().expect("addr"));
        assert_eq!(v6.id, "x-__1-80");
    }
}
