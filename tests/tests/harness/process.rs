//! Child processes killed on drop, and endpoints that refuse connections.

use super::*;

/// The exit status of `child` when it has exited (polled, never waits).
pub fn exited(child: &mut Option<Child>) -> Option<ExitStatus> {
    child.as_mut().and_then(|c| c.try_wait().ok().flatten())
}

/// Kills `child` and reaps it, if it is still there.
pub fn kill(child: &mut Option<Child>) {
    if let Some(mut c) = child.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// A child process that is killed when dropped (also when a test fails).
#[derive(Debug)]
pub struct Process(pub(super) Option<Child>);

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
        kill(&mut self.0);
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
