//! Assembles the pingora server from a validated config (listeners, proxy services, admin,
//! discovery, drain on SIGTERM) and runs it.

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener as StdTcpListener};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use pingora::apps::HttpServerOptions;
use pingora::listeners::{L4BufferSettings, ListenerConfig, DEFAULT_L4_WRITE_BUFFER_SIZE};
use pingora::server::configuration::Opt;
use pingora::server::configuration::ServerConf;
use pingora::server::{ExecutionPhase, RunArgs, Server, ShutdownWatch};
use pingora::services::background::{background_service, BackgroundService};
use pingora::services::listening::Service;

use crate::config::{Config, ListenerSpec, ServerSettings};
use crate::edge::{EdgeApp, ProxyProtocolTls};
use crate::proxy::GatewayProxy;
use crate::reload::Reloader;
use crate::runtime::{GatewayState, Runtime};
use filters::FilterRegistry;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StartError {
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
    #[error("TLS ({listener}): {message}; fix: give a PEM certificate chain and its private key, in date")]
    Tls {
        /// Listener name.
        listener: String,
        /// What went wrong.
        message: String,
    },
    /// `--upgrade` could not reach the running gateway.
    #[error("upgrade: {0}")]
    Upgrade(String),
}

/// Something to run before the process exits after a drain (flushes the log writer).
pub(crate) type ExitHook = Box<dyn FnOnce() + Send>;

/// Serves `config` until SIGTERM (drain, then exit), SIGQUIT (hand the listening sockets to
/// an upgraded process, then drain and exit) or SIGINT (exit now).
///
/// `path` and `text` are the config file and its document: later versions are reloaded from
/// the file (watched, SIGHUP), the admin API or Consul KV, with filters from `registry`.
/// With `upgrade`, the listening sockets are taken over from the running gateway (pingora's
/// graceful upgrade through `[server] upgrade_sock`), which is sent SIGQUIT when
/// `[server] pid_file` names it.
pub(crate) fn run(
    config: Config,
    path: &Path,
    text: &str,
    registry: FilterRegistry,
    upgrade: bool,
    exit_hook: Option<ExitHook>,
) -> Result<(), StartError> {
    let admin_listener = bind_admin(config.admin.address, upgrade)?;
    let status_listener = match config.admin.status_address {
        Some(address) => Some(bind_admin(address, upgrade)?),
        None => None,
    };
    // pingora binds the proxy listeners itself (with SO_REUSEADDR); a probe bind here turns a
    // busy port into a clear error instead of a failure deep inside the server. During an
    // upgrade the old process holds the ports it hands over.
    for l in &config.listeners {
        match StdTcpListener::bind(l.address) {
            Ok(_) => {}
            Err(e) if upgrade && e.kind() == ErrorKind::AddrInUse => {}
            Err(source) => {
                return Err(StartError::Bind {
                    what: format!("listener `{}`", l.name),
                    address: l.address,
                    source,
                })
            }
        }
    }

    for w in config.warnings() {
        tracing::warn!("{w}");
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
    match &config.redis {
        Some(r) => {
            tracing::info!(redis = ?r.settings, "rate limits: scope = \"cluster\" limits count in Redis (connecting on first use)")
        }
        None => tracing::info!(
            "rate limits: local to this gateway (embedded default; no [redis] configured)"
        ),
    }
    let watches = runtime.discovery_watches(&config);
    let state = Arc::new(GatewayState::new(runtime));
    let tls = Arc::new(
        crate::tls::Tls::build(&config).map_err(|message| StartError::Tls {
            listener: "-".to_owned(),
            message,
        })?,
    );
    state.set_tls(tls.clone());
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
        upgrade_sock: config.server.upgrade_sock.to_string_lossy().into_owned(),
        // Both sides of an upgrade retry once a second: the new process waits this long for
        // the old one's sockets, the old one this long for the new one to listen.
        upgrade_sock_connect_accept_max_retries: Some(UPGRADE_WAIT_SECONDS),
        ..ServerConf::default()
    };
    // pingora stops after this many attempts; the proxy decides each retry itself (policy,
    // budget, deadline) and never asks for more than 10 retries plus a fallback cluster.
    conf.max_retries = crate::proxy::MAX_ATTEMPTS;
    let opt = Opt {
        upgrade,
        ..Opt::default()
    };
    let mut server = Server::new_with_opt_and_conf(opt, conf);
    let conf = server.configuration.clone();
    let phases = server.watch_execution_phase();

    // h2c is a per-service option in pingora, so listeners are grouped by it.
    for h2c in [false, true] {
        let group: Vec<&ListenerSpec> = config.listeners.iter().filter(|l| l.h2c == h2c).collect();
        if group.is_empty() {
            continue;
        }
        let mut options = HttpServerOptions::default();
        options.h2c = h2c;
        options.h2_idle_timeout = Some(config.h2.idle_timeout);
        let mut proxy = pingora::proxy::http_proxy(&conf, GatewayProxy::new(state.clone()));
        proxy.server_options = Some(options);
        proxy.h2_options = Some(config.h2.options());
        // Connection-level protection (PROXY protocol, caps, the request-head deadline) sits
        // in front of pingora's HTTP handling.
        let mut service = Service::new(
            if h2c {
                "gateway proxy (h2c)".to_owned()
            } else {
                "gateway proxy".to_owned()
            },
            EdgeApp::new(proxy, state.clone()),
        );
        if group
            .iter()
            .any(|l| l.tls.is_some() && l.edge.proxy_protocol)
        {
            service
                .endpoints()
                .set_pre_tls_callback(Arc::new(ProxyProtocolTls::new(state.clone())));
        }
        for l in group {
            let addr = l.address.to_string();
            // No socket read buffer under the HTTP parser or OpenSSL: pingora's default is a
            // 64 KiB buffer per connection for its whole life, most of an idle keep-alive
            // connection's memory. HTTP/1 heads are read into the parser's own buffer in one
            // call either way; TLS records are read ahead by OpenSSL into buffers it releases
            // while the connection is idle (see tls::accept). Writes stay coalesced.
            let endpoint = ListenerConfig::tcp(addr)
                .l4_buffer(L4BufferSettings::new(0, DEFAULT_L4_WRITE_BUFFER_SIZE));
            match (&l.tls, tls.listeners.iter().find(|s| *s.name == *l.name)) {
                (Some(spec), Some(server)) => {
                    // ALPN (h2, HTTP/1.1, acme-tls/1) is chosen in the settings' callback.
                    let settings = crate::tls::tls_settings(server, spec).map_err(|message| {
                        StartError::Tls {
                            listener: l.name.clone(),
                            message,
                        }
                    })?;
                    service.add_listener(endpoint.tls(settings));
                }
                _ => service.add_listener(endpoint),
            }
            tracing::info!(listener = %l.name, address = %l.address, tls = l.tls.is_some(), h2c = l.h2c, proxy_protocol = l.edge.proxy_protocol, "listening");
        }
        server.add_service(service);
    }

    server.add_service(background_service(
        "admin",
        AdminService::new(
            admin_listener,
            status_listener,
            state.clone(),
            reloader.clone(),
            phases,
        ),
    ));
    server.add_service(background_service(
        "control",
        ControlService {
            reloader: reloader.clone(),
        },
    ));
    if !tls.listeners.is_empty() || tls.acme.is_some() {
        server.add_service(background_service("tls", TlsService { tls: tls.clone() }));
    }
    if let (Some(service), Some(consul)) = (&config.fleet.register, &config.consul) {
        // The fleet's members are counted by the address clients reach them on.
        let address = config
            .listeners
            .first()
            .map_or(config.admin.address, |l| l.address);
        server.add_service(background_service(
            "fleet",
            FleetService {
                consul: consul.clone(),
                service: service.clone(),
                address,
            },
        ));
    }
    server.add_service(background_service(
        "drain",
        DrainService {
            state: state.clone(),
            grace: config.server.grace_period,
            exit_hook: Mutex::new(exit_hook),
            pid_file: config.server.pid_file.clone(),
        },
    ));
    tracing::info!(admin = %config.admin.address, token = config.admin.token.is_some(), "admin API listening");
    if let Some(status) = config.admin.status_address {
        tracing::info!(%status, "read-only status listener (/metrics, /healthz, /readyz, /hystrix.stream)");
    }

    // Everything that can fail has been built: only now is the old process asked to leave.
    if upgrade {
        signal_old_process(&config.server)?;
    }
    // With `upgrade` this waits for the old process's listening sockets (and exits the process
    // if they never come); otherwise it returns at once.
    server.bootstrap();
    if upgrade {
        tracing::info!("upgrade: took over the listening sockets of the old process");
    }
    if let Some(pid_file) = &config.server.pid_file {
        if let Err(e) = std::fs::write(pid_file, format!("{}\n", std::process::id())) {
            tracing::warn!(pid_file = %pid_file.display(), error = %e, "cannot write the pid file");
        }
    }
    server.run(RunArgs::default());
    release_pid_file(config.server.pid_file.as_deref());
    Ok(())
}

/// Seconds each side of a graceful upgrade waits for the other.
const UPGRADE_WAIT_SECONDS: usize = 10;

/// Binds the admin listener with `SO_REUSEPORT`, so an upgraded process can bind it while the
/// old one still holds it (the old one closes its copy as the handover starts).
fn bind_admin(address: SocketAddr, upgrade: bool) -> Result<StdTcpListener, StartError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let fail = |source| StartError::Bind {
        what: "admin".into(),
        address,
        source,
    };
    if !upgrade {
        // A plain bind fails while any other socket listens there, so a second gateway on
        // this address is an error rather than a silent sharer of the port.
        drop(StdTcpListener::bind(address).map_err(fail)?);
    }
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )
    .map_err(fail)?;
    socket.set_reuse_address(true).map_err(fail)?;
    socket.set_reuse_port(true).map_err(fail)?;
    socket.bind(&address.into()).map_err(fail)?;
    socket.listen(1024).map_err(fail)?;
    Ok(socket.into())
}

/// Sends SIGQUIT to the gateway named by `[server] pid_file`: it hands its listening sockets
/// over through `upgrade_sock`, keeps serving for a few seconds, then drains and exits.
fn signal_old_process(server: &ServerSettings) -> Result<(), StartError> {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    let sock = server.upgrade_sock.display();
    let Some(pid_file) = &server.pid_file else {
        tracing::info!(
            upgrade_sock = %sock,
            wait_s = UPGRADE_WAIT_SECONDS,
            "upgrade: waiting for the running gateway's listening sockets; send it SIGQUIT now"
        );
        return Ok(());
    };
    let fail = |what: String| {
        StartError::Upgrade(format!(
            "{what}; fix: start without --upgrade when no gateway is running, or send the old \
             process SIGQUIT yourself (remove pid_file from [server] to do that)"
        ))
    };
    let text = std::fs::read_to_string(pid_file)
        .map_err(|e| fail(format!("cannot read pid_file {}: {e}", pid_file.display())))?;
    let pid: i32 = text
        .trim()
        .parse()
        .ok()
        .filter(|p: &i32| *p > 0 && p.unsigned_abs() != std::process::id())
        .ok_or_else(|| {
            fail(format!(
                "pid_file {} holds {:?}, not the process id of another gateway",
                pid_file.display(),
                text.trim()
            ))
        })?;
    kill(Pid::from_raw(pid), Signal::SIGQUIT).map_err(|e| {
        fail(format!(
            "cannot signal process {pid} from {}: {e}",
            pid_file.display()
        ))
    })?;
    tracing::info!(old_pid = pid, upgrade_sock = %sock, "upgrade: asked the running gateway to hand over its listening sockets (SIGQUIT)");
    Ok(())
}

/// Removes the pid file at exit unless another process (an upgrade) has taken it over.
fn release_pid_file(pid_file: Option<&Path>) {
    let Some(path) = pid_file else { return };
    let ours =
        std::fs::read_to_string(path).is_ok_and(|t| t.trim() == std::process::id().to_string());
    if ours {
        let _ = std::fs::remove_file(path);
    }
}

struct AdminService {
    listener: Mutex<Option<StdTcpListener>>,
    status_listener: Mutex<Option<StdTcpListener>>,
    state: Arc<GatewayState>,
    reloader: Arc<Reloader>,
    phases: Mutex<Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>>,
}

impl AdminService {
    fn new(
        listener: StdTcpListener,
        status_listener: Option<StdTcpListener>,
        state: Arc<GatewayState>,
        reloader: Arc<Reloader>,
        phases: tokio::sync::broadcast::Receiver<ExecutionPhase>,
    ) -> Self {
        Self {
            listener: Mutex::new(Some(listener)),
            status_listener: Mutex::new(status_listener),
            state,
            reloader,
            phases: Mutex::new(Some(phases)),
        }
    }
}

/// Resolves when this process starts handing its sockets to an upgraded one (SIGQUIT); from
/// then on it drains: answers say `Connection: close` and readiness says 503.
async fn upgrade_started(
    phases: Option<tokio::sync::broadcast::Receiver<ExecutionPhase>>,
    state: Arc<GatewayState>,
) {
    use tokio::sync::broadcast::error::RecvError;
    let Some(mut phases) = phases else {
        return std::future::pending().await;
    };
    loop {
        match phases.recv().await {
            Ok(ExecutionPhase::GracefulUpgradeTransferringFds) => break,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => return std::future::pending().await,
        }
    }
    state.start_draining();
    tracing::info!(
        "upgrade: handing the listening sockets to the new process; this one drains and exits, \
         its admin API closes now"
    );
}

#[async_trait]
impl BackgroundService for AdminService {
    async fn start(&self, _shutdown: ShutdownWatch) {
        // The admin API keeps answering during a drain (readiness then says 503).
        let Some(std_listener) = self.listener.lock().ok().and_then(|mut l| l.take()) else {
            return;
        };
        let status = self
            .status_listener
            .lock()
            .ok()
            .and_then(|mut l| l.take())
            .map(|l| {
                l.set_nonblocking(true)
                    .and_then(|()| tokio::net::TcpListener::from_std(l))
            });
        let status_task = match status {
            Some(Ok(listener)) => {
                let router = crate::admin::status_router(self.state.clone(), self.reloader.clone());
                Some(tokio::spawn(async move {
                    if let Err(e) = axum::serve(listener, router).await {
                        tracing::error!(error = %e, "status listener stopped");
                    }
                }))
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "status listener unusable");
                None
            }
            None => None,
        };
        let listener = std_listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(std_listener));
        match listener {
            Ok(listener) => {
                let phases = self.phases.lock().ok().and_then(|mut p| p.take());
                if let Err(e) = axum::serve(
                    listener,
                    crate::admin::router(self.state.clone(), self.reloader.clone()),
                )
                .with_graceful_shutdown(upgrade_started(phases, self.state.clone()))
                .await
                {
                    tracing::error!(error = %e, "admin API stopped");
                }
            }
            Err(e) => tracing::error!(error = %e, "admin listener unusable"),
        }
        if let Some(t) = status_task {
            t.abort();
        }
    }
}

/// Keeps this gateway registered in Consul and the fleet's size current
/// ([`crate::fleet::membership`]) until shutdown, then deregisters it.
struct FleetService {
    consul: discovery::consul::ConsulConfig,
    service: String,
    address: std::net::SocketAddr,
}

#[async_trait]
impl BackgroundService for FleetService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let stop = async move {
            let _ = shutdown.changed().await;
        };
        crate::fleet::membership(
            self.consul.clone(),
            self.service.clone(),
            self.address,
            stop,
        )
        .await;
    }
}

/// How often certificate files are checked for changes (a change loads once it held still
/// for one interval).
const TLS_WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// Reloads changed certificate files and keeps the ACME certificate current.
struct TlsService {
    tls: Arc<crate::tls::Tls>,
}

#[async_trait]
impl BackgroundService for TlsService {
    async fn start(&self, mut shutdown: ShutdownWatch) {
        let mut tasks = vec![tokio::spawn(self.tls.clone().watch(TLS_WATCH_INTERVAL))];
        if let Some(acme) = &self.tls.acme {
            tasks.push(tokio::spawn(acme.clone().run(self.tls.clone())));
        }
        let _ = shutdown.changed().await;
        for t in tasks {
            t.abort();
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
    pid_file: Option<PathBuf>,
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
        release_pid_file(self.pid_file.as_deref());
        if let Some(hook) = self.exit_hook.lock().ok().and_then(|mut h| h.take()) {
            hook();
        }
        std::process::exit(0);
    }
}
