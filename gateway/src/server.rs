//! Assembles the pingora server from a validated config (listeners, proxy services, admin,
//! discovery, drain on SIGTERM) and runs it.

use std::net::TcpListener as StdTcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::tls::TlsSettings;
use pingora::proxy::ProxyServiceBuilder;
use pingora::server::configuration::ServerConf;
use pingora::server::{RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};

use crate::config::{Config, ListenerSpec};
use crate::proxy::GatewayProxy;
use crate::reload::Reloader;
use crate::runtime::{GatewayState, Runtime};
use filters::FilterRegistry;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listener address could not be bound.
    #[error("cannot listen on {address} ({what}): {source}; fix: free the port or change the address in the config")]
    Bind {
        /// Which listener.
        what: String,
        /// Its address.
        address: std::net::SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS files could not be loaded.
    #[error(
        "TLS listener {address}: {message}; fix: give a PEM certificate chain and its private key"
    )]
    Tls {
        /// Listener address.
        address: std::net::SocketAddr,
        /// What went wrong.
        message: String,
    },
}

/// Something to run before the process exits after a drain (flushes the log writer).
pub type ExitHook = Box<dyn FnOnce() + Send>;

/// Serves `config` until SIGTERM (drain, then exit) or SIGINT (exit now).
///
/// `path` and `text` are the config file and its document: later versions are reloaded from
/// the file (watched, SIGHUP), the admin API or Consul KV, with filters from `registry`.
pub fn run(
    config: Config,
    path: &Path,
    text: &str,
    registry: FilterRegistry,
    exit_hook: Option<ExitHook>,
) -> Result<(), StartError> {
    let admin_listener =
        StdTcpListener::bind(config.admin.address).map_err(|source| StartError::Bind {
            what: "admin".into(),
            address: config.admin.address,
            source,
        })?;
    // pingora binds the proxy listeners itself (with SO_REUSEADDR); a probe bind here turns a
    // busy port into a clear error instead of a failure deep inside the server.
    for l in &config.listeners {
        StdTcpListener::bind(l.address).map_err(|source| StartError::Bind {
            what: format!("listener `{}`", l.name),
            address: l.address,
            source,
        })?;
    }

    let runtime = Runtime::build(&config);
    match &config.consul {
        Some(c) => {
            tracing::info!(consul = %c.address, "discovery: Consul for the clusters that name a service, the config file for the rest")
        }
        None => tracing::info!(
            "discovery: the config file's endpoints (embedded default; no Consul configured)"
        ),
    }
    let watches = runtime.discovery_watches(&config);
    let state = Arc::new(GatewayState::new(runtime));
    let reloader = Arc::new(Reloader::new(
        state.clone(),
        registry,
        path,
        config.clone(),
        text,
        watches,
    ));

    let mut conf = ServerConf {
        threads: config.server.threads,
        work_stealing: config.server.work_stealing,
        upstream_keepalive_pool_size: config.server.upstream_keepalive_pool_size,
        // Our drain ends the process as soon as requests finish; pingora's own (unconditional)
        // grace sleep is only the backstop.
        grace_period_seconds: Some(config.server.grace_period.as_secs() + 1),
        graceful_shutdown_timeout_seconds: Some(config.server.graceful_shutdown_timeout.as_secs()),
        ..ServerConf::default()
    };
    // pingora stops after this many attempts; the proxy decides each retry itself (policy,
    // budget, deadline) and never asks for more than 10 retries plus a fallback cluster.
    conf.max_retries = crate::proxy::MAX_ATTEMPTS;
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let conf = server.configuration.clone();

    // h2c is a per-service option in pingora, so listeners are grouped by it.
    for h2c in [false, true] {
        let group: Vec<&ListenerSpec> = config.listeners.iter().filter(|l| l.h2c == h2c).collect();
        if group.is_empty() {
            continue;
        }
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        let mut service = ProxyServiceBuilder::new(&conf, GatewayProxy::new(state.clone()))
            .name(if h2c {
                "gateway proxy (h2c)"
            } else {
                "gateway proxy"
            })
            .server_options(options)
            .build();
        for l in group {
            let addr = l.address.to_string();
            match &l.tls {
                None => service.add_tcp(&addr),
                Some(tls) => {
                    let cert = tls.cert.to_string_lossy();
                    let key = tls.key.to_string_lossy();
                    let mut settings =
                        TlsSettings::intermediate(&cert, &key).map_err(|e| StartError::Tls {
                            address: l.address,
                            message: e.to_string(),
                        })?;
                    settings.enable_h2();
                    service.add_tls_with_settings(&addr, None, settings);
                }
            }
            tracing::info!(listener = %l.name, address = %l.address, tls = l.tls.is_some(), h2c = l.h2c, "listening");
        }
        server.add_service(service);
    }

    server.add_service(background_service(
        "admin",
        AdminService::new(admin_listener, state.clone(), reloader.clone()),
    ));
    server.add_service(background_service(
        "control",
        ControlService {
            reloader: reloader.clone(),
        },
    ));
    server.add_service(background_service(
        "drain",
        DrainService {
            state: state.clone(),
            grace: config.server.grace_period,
            exit_hook: Mutex::new(exit_hook),
        },
    ));
    tracing::info!(admin = %config.admin.address, "admin API listening");
    server.run(RunArgs::default());
    Ok(())
}

struct AdminService {
    listener: Mutex<Option<StdTcpListener>>,
    state: Arc<GatewayState>,
    reloader: Arc<Reloader>,
}

impl AdminService {
    fn new(listener: StdTcpListener, state: Arc<GatewayState>, reloader: Arc<Reloader>) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            state,
            reloader,
        }
    }
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // The admin API keeps answering during a drain (readiness then says 503).
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let listener = std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
        match listener {
            Ok(listener) => {
                if let Err(e) = axum::serve(
                    listener,
                    crate::admin::router(self.state.clone(), self.reloader.clone()),
                )
                .await
                {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "admin listener unusable"),
        }
    }
}

/// Runs discovery watches (of every config version) and the reload sources: the config
/// file watch, SIGHUP and the Consul KV key.
struct ControlService {
    reloader: Arc<Reloader>,
}

#[async_trait]
impl BackgroundService for ControlService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        self.reloader.start().await;
        let settings = self.reloader.settings().clone();
        let mut tasks = Vec::new();
        if settings.watch_file {
            tasks.push(tokio::spawn(crate::reload::watch_file(
                self.reloader.clone(),
                settings.debounce,
            )));
        }
        if settings.sighup {
            tasks.push(tokio::spawn(crate::reload::on_sighup(
                self.reloader.clone(),
            )));
        }
        if let (Some(key), Some(consul)) = (&settings.consul_kv, self.reloader.consul()) {
            tasks.push(tokio::spawn(crate::reload::watch_kv(
                self.reloader.clone(),
                discovery::consul::Consul::new(consul.clone()),
                key.clone(),
            )));
        }
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
        }
        self.reloader.stop().await;
    }
}

/// On SIGTERM pingora stops accepting; this waits for in-flight requests to finish (at most
/// the grace period) and then ends the process, so an idle gateway exits at once.
struct DrainService {
    state: Arc<GatewayState>,
    grace: Duration,
    exit_hook: Mutex<Option<ExitHook>>,
}

#[async_trait]
impl BackgroundService for DrainService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        if shutdown.changed().await.is_err() {
            return;
        }
        self.state.start_draining();
        let in_flight = self.state.in_flight();
        tracing::info!(
            in_flight,
            grace_ms = self.grace.as_millis() as u64,
            "draining"
        );
        let drained = tokio::time::timeout(self.grace, self.state.wait_idle())
            .await
            .is_ok();
        if drained {
            tracing::info!("drained: all in-flight requests finished");
        } else {
            tracing::warn!(
                in_flight = self.state.in_flight(),
                "grace period over with requests still in flight"
            );
        }
        if let Some(hook) = self.exit_hook.lock().ok().and_then(|mut h| h.take()) {
            hook();
        }
        std::process::exit(0);
    }
}
