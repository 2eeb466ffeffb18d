//! Shared integration-test harness: builds and starts the real `gateway` binary on ports the
//! OS assigned, starts real echo upstreams in-process, waits for readiness by polling with a
//! deadline, and kills everything on drop (also when a test fails).

#![allow(dead_code, unreachable_pub, unused_imports)]

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

/// A loopback port that is free now, for a process the test starts to bind (pingora binds its
/// own listeners, so the port cannot be passed as an open socket).
///
/// Picked at random below the kernel's ephemeral range (`ip_local_port_range`): a port from
/// `bind(0)` lies inside it, where any outgoing connection of a test running in parallel may
/// take it before the gateway binds it. No port is returned twice in one test process. Falls back to `bind(0)` when the range leaves no room below it.
pub fn free_port() -> u16 {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(0);
    if ephemeral > 12_000 {
        for _ in 0..1_000 {
            let port = fastrand::u16(10_000..ephemeral);
            if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                given.push(port);
                return port;
            }
        }
    }
    loop {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("ephemeral port");
        if !given.contains(&port) {
            given.push(port);
            return port;
        }
    }
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

mod consul;
mod gateway;
mod http;
mod jwt;
mod otlp;
mod pebble;
mod pki;
mod process;
mod redis;

pub use consul::*;
pub use gateway::*;
pub use http::*;
pub use jwt::*;
pub use otlp::*;
pub use pebble::*;
pub use pki::*;
pub use process::*;
pub use redis::*;

/// Polls `probe` every 20 ms until it gives `Ok(value)`. Past `deadline` it panics naming
/// `what` and the last thing `probe` saw (its `Err`), so a failed wait says why.
pub async fn eventually<T, F, Fut>(what: &str, deadline: Duration, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let end = Instant::now() + deadline;
    loop {
        match probe().await {
            Ok(value) => return value,
            Err(seen) => {
                assert!(Instant::now() < end, "timed out waiting for {what}: {seen}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}
