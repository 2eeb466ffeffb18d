//! The gateway fixture: a real `gateway` process on OS-assigned ports with a generated config,
//! ready when `/readyz` says so, killed on drop; and the CLI run to completion.

use super::*;

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
        edit: impl Fn(String) -> String,
    ) -> Self {
        Self::start_edited(gateway_bin(), body, &[], env, edit).await
    }

    async fn start_edited(
        bin: &Path,
        body: &str,
        files: &[(&str, &[u8])],
        env: &[(String, String)],
        edit: impl Fn(String) -> String,
    ) -> Self {
        // A port that was free when picked may be taken by another test's process before the
        // gateway binds it: then it starts again on other ports.
        for _ in 0..3 {
            match Self::try_start(bin, body, files, env, &edit).await {
                Ok(gw) => return gw,
                Err(log) if log.contains("cannot listen on") => continue,
                Err(log) => panic!("gateway exited during start:\n{log}"),
            }
        }
        panic!("gateway: no free ports in three tries");
    }

    async fn try_start(
        bin: &Path,
        body: &str,
        files: &[(&str, &[u8])],
        env: &[(String, String)],
        edit: &impl Fn(String) -> String,
    ) -> Result<Self, String> {
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
        gw.wait_ready().await?;
        Ok(gw)
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

    /// The public listener and the `address` of each `[[listeners]]` table in the config file
    /// as it is now.
    fn listener_addresses(&self) -> Vec<SocketAddr> {
        let doc = std::fs::read_to_string(self.dir.path().join("gateway.toml")).unwrap_or_default();
        let config = doc.parse::<toml::Table>().unwrap_or_default();
        let mut found: Vec<SocketAddr> = config
            .get("listeners")
            .and_then(toml::Value::as_array)
            .into_iter()
            .flatten()
            .filter_map(|l| l.get("address")?.as_str()?.parse().ok())
            .collect();
        if !found.contains(&self.http) {
            found.push(self.http);
        }
        found
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let client = reqwest::Client::new();
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if let Some(status) = exited(&mut self.child) {
                self.child = None;
                return Err(format!("({status}) {}", self.log()));
            }
            let ready = match client
                .get(format!("http://{}/readyz", self.admin))
                .send()
                .await
            {
                Ok(r) => r.status().is_success(),
                Err(_) => false,
            };
            // Every listener of the config: pingora binds a service's listeners one after
            // another, so one may open a moment after another.
            if ready
                && self
                    .listener_addresses()
                    .into_iter()
                    .all(|a| TcpStream::connect(a).is_ok())
            {
                return Ok(());
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
            if let Some(status) = exited(&mut self.child) {
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
        if let Err(log) = self.wait_ready().await {
            panic!("the upgraded gateway exited during start:\n{log}");
        }
        status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && exited(&mut self.child).is_none()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        kill(&mut self.child);
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
