//! A real Consul dev agent on OS-assigned ports.

use super::*;

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
            if let Some(status) = exited(&mut self.child) {
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

    /// Writes `text` under the KV `key`.
    pub async fn put_kv(&self, key: &str, text: String) {
        let url = format!("http://{}/v1/kv/{key}", self.address());
        let r = reqwest::Client::new()
            .put(url)
            .body(text)
            .send()
            .await
            .expect("kv put");
        assert!(r.status().is_success(), "kv put answered {}", r.status());
    }

    /// Kills the agent (as a crash or a host going away would).
    pub fn stop(&mut self) {
        kill(&mut self.child);
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
