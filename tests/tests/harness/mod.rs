//! Shared integration-test harness: builds and starts the real `gateway` binary on ports the
//! OS assigned, starts real echo upstreams in-process, waits for readiness by polling with a
//! deadline, and kills everything on drop (also when a test fails).

#![allow(dead_code, unreachable_pub)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub use sample_services::echo::EchoServer;

/// How long a process gets to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(30);

/// The `gateway` binary, built once per test process for the profile the tests run in.
pub fn gateway_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| built_bin("gateway", "gateway"))
}

/// Builds binary `bin` of workspace package `package` (for the profile the tests run in) and
/// returns its path.
pub fn built_bin(package: &str, bin: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let release = std::env::current_exe()
        .map(|p| p.components().any(|c| c.as_os_str() == "release"))
        .unwrap_or(false);
    let mut cmd = Command::new(cargo);
    cmd.args([
        "build",
        "-q",
        "-p",
        package,
        "--bin",
        bin,
        "--message-format=json",
    ]);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .stderr(Stdio::inherit())
        .output()
        .expect("run cargo build");
    assert!(out.status.success(), "building {package}/{bin} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["reason"] == "compiler-artifact" && v["target"]["name"] == bin)
        .find_map(|v| v["executable"].as_str().map(PathBuf::from))
        .expect("cargo reported the executable")
}

/// A loopback port the OS just handed out (the gateway binds it right after; pingora binds its
/// own listeners, so the port cannot be passed as an open socket).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("ephemeral port")
}

/// Starts an echo upstream on an ephemeral port.
pub async fn echo(name: &str) -> EchoServer {
    EchoServer::bind(SocketAddr::from(([127, 0, 0, 1], 0)), name)
        .await
        .expect("bind echo upstream")
}

/// Polls `check` until it is true or the deadline passes.
pub async fn wait_until(what: &str, deadline: Duration, mut check: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !check() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A running gateway process with its config and logs in a private temp dir.
#[derive(Debug)]
pub struct Gateway {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// Plain HTTP listener.
    pub http: SocketAddr,
    /// Admin listener.
    pub admin: SocketAddr,
}

/// Placeholders in a test config: `{http}` and `{admin}` are replaced by fresh ports; other
/// `{name}` placeholders come from `extra`.
pub struct GatewayConfig<'a> {
    pub body: String,
    pub extra: Vec<(&'a str, String)>,
}

impl Gateway {
    /// Writes the config (with `[server]`, `[admin]` and the `public` listener prepended) and
    /// starts the gateway; returns once `/readyz` says ready and the listener accepts.
    pub async fn start(body: &str) -> Self {
        Self::start_with(body, &[]).await
    }

    /// Like [`Gateway::start`] with extra files written next to the config.
    pub async fn start_with(body: &str, files: &[(&str, &[u8])]) -> Self {
        Self::start_bin(gateway_bin(), body, files).await
    }

    /// Like [`Gateway::start_with`] for another gateway binary (one built from the library).
    pub async fn start_bin(bin: &Path, body: &str, files: &[(&str, &[u8])]) -> Self {
        Self::start_full(bin, body, files, &[]).await
    }

    /// Like [`Gateway::start`] with extra environment variables for the process.
    pub async fn start_env(body: &str, env: &[(String, String)]) -> Self {
        Self::start_full(gateway_bin(), body, &[], env).await
    }

    async fn start_full(
        bin: &Path,
        body: &str,
        files: &[(&str, &[u8])],
        env: &[(String, String)],
    ) -> Self {
        Self::start_edited(bin, body, files, env, |doc| doc).await
    }

    /// Like [`Gateway::start_env`] with the whole document passed through `edit` first (for
    /// keys of the harness's own tables, such as `[admin]`).
    pub async fn start_custom(
        body: &str,
        env: &[(String, String)],
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        Self::start_edited(gateway_bin(), body, &[], env, edit).await
    }

    async fn start_edited(
        bin: &Path,
        body: &str,
        files: &[(&str, &[u8])],
        env: &[(String, String)],
        edit: impl FnOnce(String) -> String,
    ) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        for (name, content) in files {
            std::fs::write(dir.path().join(name), content).expect("write file");
        }
        let http = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let admin = SocketAddr::from(([127, 0, 0, 1], free_port()));
        let config = edit(Self::document(http, admin, body));
        let path = dir.path().join("gateway.toml");
        std::fs::write(&path, config).expect("write config");
        // Appending, so an upgraded process can share the file (see `Gateway::upgrade`).
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.path().join("gateway.log"))
            .expect("log file");
        let child = Command::new(bin)
            // The test configs use the published development keys.
            .env("GATEWAY_DEV", "1")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .args(["run", "--config"])
            .arg(&path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn gateway");
        let mut gw = Self {
            child: Some(child),
            dir,
            http,
            admin,
        };
        gw.wait_ready().await;
        gw
    }

    /// The whole config document the harness writes for `body`.
    fn document(http: SocketAddr, admin: SocketAddr, body: &str) -> String {
        format!(
            "[server]\nthreads = 1\ngrace_period_seconds = 10\ngraceful_shutdown_timeout_seconds = 1\n\
             upgrade_sock = \"upgrade.sock\"\npid_file = \"gateway.pid\"\n\n\
             [admin]\naddress = \"{admin}\"\n\n[[listeners]]\nname = \"public\"\naddress = \"{http}\"\n\n{body}"
        )
    }

    /// The whole config document for `body` with this gateway's listener and admin ports
    /// (for reloads).
    pub fn config_for(&self, body: &str) -> String {
        Self::document(self.http, self.admin, body)
    }

    /// Replaces the config file the way editors do: a new file renamed over the old one.
    pub fn write_config(&self, body: &str) {
        let path = self.dir.path().join("gateway.toml");
        let tmp = self.dir.path().join(".gateway.toml.new");
        std::fs::write(&tmp, self.config_for(body)).expect("write config");
        std::fs::rename(&tmp, &path).expect("replace config");
    }

    async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("gateway exited during start ({status}):\n{}", self.log());
            }
            let ready = match client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
            {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            if ready && TcpStream::connect(self.http).is_ok() {
                return;
            }
            assert!(
                Instant::now() < end,
                "gateway not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// `http://ADDR` of the plain listener.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.http)
    }

    /// `http://ADDR` of the admin listener.
    pub fn admin_url(&self, path: &str) -> String {
        format!("http://{}{path}", self.admin)
    }

    /// The private directory (config, log, extra files).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the gateway wrote so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("gateway.log")).unwrap_or_default()
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Sends SIGTERM (graceful drain).
    pub fn terminate(&self) {
        if let Some(c) = &self.child {
            let ok = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok, "could not signal the gateway");
        }
    }

    /// Waits for the process to exit, at most `deadline`.
    pub async fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return status;
            }
            assert!(
                Instant::now() < end,
                "gateway did not exit in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Zero-downtime binary upgrade: writes `document` as the config and starts a second
    /// gateway process on it with `--upgrade`, which signals this one (through the pid file)
    /// and takes over its listening sockets. Returns the old process's exit status once it
    /// has drained and exited and the new one is ready; this handle then follows the new one.
    pub async fn upgrade(&mut self, document: &str) -> ExitStatus {
        let path = self.dir.path().join("gateway.toml");
        let tmp = self.dir.path().join(".gateway.toml.new");
        std::fs::write(&tmp, document).expect("write config");
        std::fs::rename(&tmp, &path).expect("replace config");
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("gateway.log"))
            .expect("log file");
        let new = Command::new(gateway_bin())
            .env("GATEWAY_DEV", "1")
            .args(["run", "--upgrade", "--config"])
            .arg(&path)
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn the upgraded gateway");
        let mut old = Process(self.child.replace(new));
        let status = old.wait(Duration::from_secs(30)).await;
        self.wait_ready().await;
        status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child
            .as_mut()
            .is_some_and(|c| c.try_wait().ok().flatten().is_none())
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Runs `gateway ARGS...` to completion and returns (exit code, stdout, stderr).
pub fn run_gateway_cli(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(gateway_bin())
        .env("GATEWAY_DEV", "1")
        .args(args)
        .output()
        .expect("run gateway");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A cluster table for the given upstreams.
pub fn cluster(name: &str, upstreams: &[&EchoServer], extra: &str) -> String {
    let eps: Vec<String> = upstreams
        .iter()
        .map(|u| format!("\"{}\"", u.addr()))
        .collect();
    format!(
        "[clusters.{name}]\nendpoints = [{}]\n{extra}\n",
        eps.join(", ")
    )
}

/// Plain client (HTTP/1.1).
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .expect("client")
}

/// GET returning (status, JSON body).
pub async fn get_json(client: &reqwest::Client, url: &str) -> (u16, serde_json::Value) {
    let resp = client.get(url).send().await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.json().await.unwrap_or(serde_json::Value::Null);
    (status, body)
}

/// Path of a development key file in `config/dev-keys`.
pub fn dev_key(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../config/dev-keys")
        .join(name)
}

/// Signs `claims` with the dev key `key_file` (`rs256.key.pem`, ...) as `alg` with `kid`.
pub fn sign_token(
    alg: jsonwebtoken::Algorithm,
    key_file: &str,
    kid: Option<&str>,
    claims: &serde_json::Value,
) -> String {
    use jsonwebtoken::{Algorithm::*, EncodingKey};
    let pem = std::fs::read(dev_key(key_file)).expect("dev key");
    let key = match alg {
        RS256 | RS384 | RS512 | PS256 | PS384 | PS512 => EncodingKey::from_rsa_pem(&pem),
        ES256 | ES384 => EncodingKey::from_ec_pem(&pem),
        EdDSA => EncodingKey::from_ed_pem(&pem),
        _ => Ok(EncodingKey::from_secret(&pem)),
    }
    .expect("encoding key");
    let mut header = jsonwebtoken::Header::new(alg);
    header.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&header, claims, &key).expect("sign")
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A JWKS endpoint on an ephemeral port serving a document the test can replace, counting
/// fetches.
pub struct JwksServer {
    pub addr: SocketAddr,
    doc: std::sync::Arc<std::sync::Mutex<String>>,
    fetches: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl JwksServer {
    /// Serves `doc` at `/jwks.json`.
    pub async fn start(doc: String) -> Self {
        use std::sync::atomic::Ordering;
        let doc = std::sync::Arc::new(std::sync::Mutex::new(doc));
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind jwks");
        let addr = listener.local_addr().expect("addr");
        let (d, f) = (doc.clone(), fetches.clone());
        let app = axum::Router::new().route(
            "/jwks.json",
            axum::routing::get(move || {
                let (d, f) = (d.clone(), f.clone());
                async move {
                    f.fetch_add(1, Ordering::SeqCst);
                    let body = d.lock().map(|d| d.clone()).unwrap_or_default();
                    ([("content-type", "application/json")], body)
                }
            }),
        );
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            addr,
            doc,
            fetches,
            task,
        }
    }

    /// The URL of the document.
    pub fn url(&self) -> String {
        format!("http://{}/jwks.json", self.addr)
    }

    /// Replaces the document.
    pub fn set(&self, doc: String) {
        if let Ok(mut d) = self.doc.lock() {
            *d = doc;
        }
    }

    /// Fetches served so far.
    pub fn fetches(&self) -> usize {
        self.fetches.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Drop for JwksServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The `consul` binary: `CONSUL_BIN`, else the one `scripts/install-consul` put in
/// `.tools/bin`, else `consul` on PATH.
pub fn consul_bin() -> PathBuf {
    if let Ok(p) = std::env::var("CONSUL_BIN") {
        return PathBuf::from(p);
    }
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.tools/bin/consul");
    if local.exists() {
        return local;
    }
    let on_path = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("consul"))
        .find(|p| p.is_file());
    on_path.expect(
        "no consul binary: run scripts/install-consul (scripts/test does) or set CONSUL_BIN",
    )
}

/// A real `consul agent -dev` on ports the OS handed out, killed on drop. Dev agents keep
/// everything in memory: a restart forgets every registration.
#[derive(Debug)]
pub struct ConsulAgent {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// http, dns, serf-lan, serf-wan, server, grpc.
    ports: [u16; 6],
    starts: u32,
}

impl ConsulAgent {
    /// Starts an agent and waits until it has a leader.
    pub async fn start() -> Self {
        let mut agent = Self {
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
            ports: [0; 6].map(|_| free_port()),
            starts: 0,
        };
        agent.spawn();
        agent.wait_ready().await;
        agent
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let [http, dns, lan, wan, server, grpc] = self.ports.map(|p| p.to_string());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("consul.log"))
            .expect("consul log");
        let child = Command::new(consul_bin())
            .args([
                "agent",
                "-dev",
                "-bind",
                "127.0.0.1",
                "-client",
                "127.0.0.1",
            ])
            .args(["-http-port", &http, "-dns-port", &dns])
            .args(["-serf-lan-port", &lan, "-serf-wan-port", &wan])
            .args(["-server-port", &server, "-grpc-port", &grpc])
            .args(["-node", &format!("test-{}", self.ports[0])])
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("spawn consul agent");
        self.child = Some(child);
    }

    /// Polls the agent until it reports a leader (it can register and answer then).
    pub async fn wait_ready(&mut self) {
        let client = reqwest::Client::new();
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("consul exited during start ({status}):\n{}", self.log());
            }
            let leader = match client
                .get(format!("http://{}/v1/status/leader", self.address()))
                .send()
                .await
            {
                Ok(r) if r.status().is_success() => r.text().await.unwrap_or_default(),
                _ => String::new(),
            };
            if leader.trim().trim_matches('"').contains(':') {
                return;
            }
            assert!(
                Instant::now() < end,
                "consul not ready in time:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The agent's HTTP address, `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.ports[0])
    }

    /// A client of this agent with short retry delays.
    pub fn client(&self) -> discovery::consul::Consul {
        let mut config =
            discovery::consul::ConsulConfig::with_address(&self.address()).expect("address");
        config.request_timeout = Duration::from_secs(3);
        discovery::consul::Consul::new(config)
    }

    /// `GET` an agent API path as JSON.
    pub async fn get_json(&self, path: &str) -> serde_json::Value {
        reqwest::get(format!("http://{}{path}", self.address()))
            .await
            .expect("consul request")
            .json()
            .await
            .expect("consul json")
    }

    /// Kills the agent (as a crash or a host going away would).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts the agent again on the same ports and waits for it.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// What the agent logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("consul.log")).unwrap_or_default()
    }
}

impl Drop for ConsulAgent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A child process that is killed when dropped (also when a test fails).
#[derive(Debug)]
pub struct Process(Option<Child>);

impl Process {
    /// Spawns `cmd` with its output discarded.
    pub fn spawn(cmd: &mut Command) -> Self {
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn process");
        Self(Some(child))
    }

    /// Sends SIGTERM and waits (at most `deadline`) for the exit status.
    pub async fn terminate(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.0.as_mut().expect("running");
        let ok = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "could not signal the process");
        self.wait(deadline).await
    }

    /// Waits (at most `deadline`) for the process to exit by itself.
    pub async fn wait(&mut self, deadline: Duration) -> ExitStatus {
        let child = self.0.as_mut().expect("running");
        let end = Instant::now() + deadline;
        loop {
            if let Some(status) = child.try_wait().ok().flatten() {
                self.0 = None;
                return status;
            }
            assert!(Instant::now() < end, "process did not exit in time");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A loopback address that refuses connections for as long as this value lives: its port is
/// bound, so no other process can take it, but never listened on. (A port that was merely free
/// a moment ago can be taken by another test's server, which then answers instead.)
#[derive(Debug)]
pub struct DeadEndpoint {
    _socket: socket2::Socket,
    addr: SocketAddr,
}

/// A fresh [`DeadEndpoint`].
pub fn dead_endpoint() -> DeadEndpoint {
    let socket =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], 0)).into())
        .expect("bind");
    let addr = socket
        .local_addr()
        .expect("addr")
        .as_socket()
        .expect("inet");
    DeadEndpoint {
        _socket: socket,
        addr,
    }
}

impl std::fmt::Display for DeadEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.addr.fmt(f)
    }
}

/// One span an [`OtlpCollector`] received.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `service.name` of the process that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    /// OTLP span kind (1 internal, 2 server, 3 client).
    pub kind: i32,
    /// Attributes, values as text.
    pub attributes: std::collections::HashMap<String, String>,
}

/// An in-process OTLP/HTTP trace receiver (`POST /v1/traces`, protobuf), for processes
/// started with [`OtlpCollector::env`].
pub struct OtlpCollector {
    addr: SocketAddr,
    spans: std::sync::Arc<std::sync::Mutex<Vec<ReceivedSpan>>>,
    task: tokio::task::JoinHandle<()>,
}

fn any_value_text(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl OtlpCollector {
    pub async fn start() -> Self {
        use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
        use prost::Message;
        let spans = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let store = spans.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |body: bytes::Bytes| {
                let store = store.clone();
                async move {
                    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
                        return (axum::http::StatusCode::BAD_REQUEST, Vec::new());
                    };
                    let mut got = Vec::new();
                    for rs in req.resource_spans {
                        let service = rs
                            .resource
                            .iter()
                            .flat_map(|r| &r.attributes)
                            .find(|a| a.key == "service.name")
                            .and_then(|a| a.value.as_ref())
                            .map(any_value_text)
                            .unwrap_or_default();
                        for ss in rs.scope_spans {
                            for s in ss.spans {
                                got.push(ReceivedSpan {
                                    service: service.clone(),
                                    name: s.name,
                                    trace_id: hex(&s.trace_id),
                                    span_id: hex(&s.span_id),
                                    parent_span_id: hex(&s.parent_span_id),
                                    kind: s.kind,
                                    attributes: s
                                        .attributes
                                        .iter()
                                        .map(|a| {
                                            let v = a.value.as_ref().map(any_value_text);
                                            (a.key.clone(), v.unwrap_or_default())
                                        })
                                        .collect(),
                                });
                            }
                        }
                    }
                    store.lock().expect("spans").extend(got);
                    (axum::http::StatusCode::OK, Vec::new())
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind collector");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, spans, task }
    }

    /// The environment that makes a process export its spans here quickly.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{}", self.addr),
            ),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "50".into()),
        ]
    }

    /// The spans received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().expect("spans").clone()
    }

    /// Waits until the spans of `trace_id` satisfy `done`; returns them.
    pub async fn wait_trace(
        &self,
        trace_id: &str,
        what: &str,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            let spans: Vec<ReceivedSpan> = self
                .spans()
                .into_iter()
                .filter(|s| s.trace_id == trace_id)
                .collect();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < end,
                "trace {trace_id}: never {what}; got {spans:#?}"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for OtlpCollector {
    fn drop(&mut self) {
        self.task.abort();
    }
}
