//! A real `redis-server` on an OS-assigned port (no persistence), killed on drop.

use super::*;

/// `redis-server` on a port the OS handed out; `stop` and `restart` keep the port.
#[derive(Debug)]
pub struct RedisServer {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING`.
    pub async fn start() -> Self {
        let mut server = Self {
            child: None,
            port: free_port(),
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.spawn();
        server.wait_ready().await;
        server
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("redis.log"))
            .expect("redis log");
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .stdout(log.try_clone().expect("log fd"))
            .stderr(log)
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/setup installs it)");
        self.child = Some(child);
    }

    async fn wait_ready(&mut self) {
        let addr = self.addr();
        eventually(
            "redis-server answering PING",
            Duration::from_secs(15),
            || {
                let gone = exited(&mut self.child)
                    .map(|status| format!("redis-server exited ({status}): {}", self.log()));
                async move {
                    match gone {
                        Some(why) => Err(why),
                        None => ping(addr).await,
                    }
                }
            },
        )
        .await;
    }

    /// `host:port`.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// The address as a `redis://` URL.
    pub fn url(&self) -> String {
        format!("redis://{}", self.addr())
    }

    /// Kills the server (its data is gone: nothing is persisted).
    pub fn stop(&mut self) {
        kill(&mut self.child);
    }

    /// Starts it again on the same port, empty.
    pub async fn restart(&mut self) {
        self.stop();
        self.spawn();
        self.wait_ready().await;
    }

    /// The server's log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn ping(addr: SocketAddr) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    s.write_all(b"PING\r\n").await.map_err(|e| e.to_string())?;
    let mut buf = [0u8; 16];
    let n = s.read(&mut buf).await.map_err(|e| e.to_string())?;
    if buf[..n].starts_with(b"+PONG") {
        Ok(())
    } else {
        Err(format!("answered {:?}", String::from_utf8_lossy(&buf[..n])))
    }
}
