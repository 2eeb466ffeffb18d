//! Hot reload: a new config document is validated and built into a complete runtime snapshot
//! off the request path, then swapped in atomically; requests in flight finish on the snapshot
//! they started with. A rejected document leaves the running one in place, and the rejection
//! is visible in the admin API and the log. Versions are kept for rollback.
//!
//! Sources: the config file (watched, debounced, editors that replace the file included),
//! SIGHUP, `POST /config` on the admin API, and a Consul KV key. All go through
//! [`Reloader::apply`], one at a time.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

use discovery::UpdateStream;
use filters::FilterRegistry;
use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::task::JoinHandle;

use crate::cluster::Cluster;
use crate::config::{Config, ReloadSettings};
use crate::runtime::{follow, GatewayState, Runtime};

mod watch;
pub(crate) use watch::watch_file;

/// One accepted config document.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Version {
    /// Increases by one with every applied version (rollbacks included).
    pub generation: u64,
    /// SHA-256 of the document, hex.
    pub hash: String,
    /// When it was applied, ms since the Unix epoch.
    pub loaded_at_unix_ms: u64,
    /// Where it came from (`startup`, `file`, `sighup`, `admin`, `consul-kv`, `rollback to N`).
    pub source: String,
    /// Settings that differ from the running process's and wait for a restart.
    pub pending_restart: Vec<&'static str>,
    /// The document.
    #[serde(skip)]
    pub text: Arc<str>,
}

/// The result of the last reload attempt.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Attempt {
    /// When, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Where the document came from.
    pub source: String,
    /// `applied`, `unchanged` or `rejected`.
    pub result: &'static str,
    /// The generation that serves now.
    pub generation: u64,
    /// Why it was rejected.
    pub error: Option<String>,
}

/// What [`Reloader::apply`] did.
#[derive(Debug, Clone)]
pub(crate) enum Outcome {
    /// The document serves now as this generation.
    Applied(Version),
    /// The document is the running one; nothing changed.
    Unchanged(u64),
    /// The document was rejected; the running version keeps serving.
    Rejected(String),
}

/// The metrics label of a reload source: `rollback to N` is counted as `rollback`.
fn source_label(source: &str) -> &str {
    source.split(' ').next().unwrap_or("-")
}

fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

fn sha256_hex(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// The discovery watch of each cluster in the running snapshot.
#[derive(Default)]
struct Watches {
    running: Vec<(Arc<Cluster>, JoinHandle<()>)>,
    /// Watches made before the runtime existed, started with the control service.
    waiting: Vec<(Arc<Cluster>, UpdateStream)>,
}

impl Watches {
    fn spawn_waiting(&mut self, handle: &tokio::runtime::Handle) {
        for (cluster, updates) in self.waiting.drain(..) {
            let task = handle.spawn(follow(cluster.clone(), updates));
            self.running.push((cluster, task));
        }
    }

    /// Starts watches for the clusters of `runtime` that have none and stops those of clusters
    /// it no longer has.
    fn sync(&mut self, runtime: &Runtime, config: &Config, handle: &tokio::runtime::Handle) {
        let watched = |c: &Arc<Cluster>| self.running.iter().any(|(w, _)| Arc::ptr_eq(w, c));
        let new: Vec<Arc<Cluster>> = runtime
            .clusters
            .iter()
            .filter(|c| !watched(c))
            .cloned()
            .collect();
        self.waiting = Runtime::watches_for(&new, config);
        self.spawn_waiting(handle);
        self.running.retain(|(c, task)| {
            let keep = runtime.clusters.iter().any(|k| Arc::ptr_eq(k, c));
            if !keep {
                task.abort();
            }
            keep
        });
    }

    fn stop_all(&mut self) {
        for (_, task) in self.running.drain(..) {
            task.abort();
        }
    }
}

impl std::fmt::Debug for Watches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watches")
            .field("running", &self.running.len())
            .field("waiting", &self.waiting.len())
            .finish()
    }
}

/// What the admin API shows.
#[derive(Debug, Default)]
struct History {
    versions: VecDeque<Version>,
    last_attempt: Option<Attempt>,
    rejected_total: u64,
}

/// Applies new config versions, one at a time, and remembers them.
#[derive(Debug)]
pub(crate) struct Reloader {
    state: Arc<GatewayState>,
    registry: FilterRegistry,
    path: PathBuf,
    /// The settings the process was started with (listeners, admin, server, reload sources).
    started: Config,
    /// Serializes reloads; holds the running config and the watches.
    running: tokio::sync::Mutex<(Config, Watches)>,
    history: Mutex<History>,
    handle: OnceLock<tokio::runtime::Handle>,
}

impl Reloader {
    /// A reloader for the gateway started with `config` (read from `path`, whose document is
    /// `text`). `watches` are the first snapshot's discovery watches, started by
    /// [`Reloader::start`].
    pub(crate) fn new(
        state: Arc<GatewayState>,
        registry: FilterRegistry,
        path: &Path,
        config: Config,
        text: &str,
        watches: Vec<(Arc<Cluster>, UpdateStream)>,
    ) -> Self {
        let first = Version {
            generation: 1,
            hash: sha256_hex(text),
            loaded_at_unix_ms: unix_ms(SystemTime::now()),
            source: "startup".into(),
            pending_restart: Vec::new(),
            text: text.into(),
        };
        Self {
            state,
            registry,
            path: path.to_owned(),
            started: config.clone(),
            running: tokio::sync::Mutex::new((
                config,
                Watches {
                    running: Vec::new(),
                    waiting: watches,
                },
            )),
            history: Mutex::new(History {
                versions: VecDeque::from([first]),
                ..History::default()
            }),
            handle: OnceLock::new(),
        }
    }

    /// The reload sources the process was started with.
    pub(crate) fn settings(&self) -> &ReloadSettings {
        &self.started.reload
    }

    /// The config file.
    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// The Consul settings the process was started with.
    pub(crate) fn consul(&self) -> Option<&discovery::consul::ConsulConfig> {
        self.started.consul.as_ref()
    }

    /// Starts the first snapshot's discovery watches on the current runtime, which also runs
    /// the watches of later versions.
    pub(crate) async fn start(&self) {
        let handle = tokio::runtime::Handle::current();
        let _ = self.handle.set(handle.clone());
        self.running.lock().await.1.spawn_waiting(&handle);
    }

    /// Stops every discovery watch.
    pub(crate) async fn stop(&self) {
        self.running.lock().await.1.stop_all();
    }

    /// Reads the config file and applies it.
    pub(crate) async fn reload_file(&self, source: &str) -> Outcome {
        match std::fs::read_to_string(&self.path) {
            Ok(text) => self.apply(&text, source).await,
            Err(e) => {
                let error = format!("cannot read {}: {e}", self.path.display());
                self.rejected(source, error).await
            }
        }
    }

    /// Validates `text` completely, builds its snapshot (keeping the state of what did not
    /// change) and swaps it in; or rejects it and keeps the running version.
    pub(crate) async fn apply(&self, text: &str, source: &str) -> Outcome {
        let mut running = self.running.lock().await;
        let hash = sha256_hex(text);
        let current = self.current();
        if current.hash == hash {
            self.record(Attempt {
                at_unix_ms: unix_ms(SystemTime::now()),
                source: source.to_owned(),
                result: "unchanged",
                generation: current.generation,
                error: None,
            });
            tracing::info!(
                source,
                generation = current.generation,
                "config reload: unchanged"
            );
            return Outcome::Unchanged(current.generation);
        }
        let config = match Config::parse_with(text, &self.path, &self.registry) {
            Ok(c) => c,
            Err(e) => {
                drop(running);
                return self.rejected(source, e.to_string()).await;
            }
        };
        // Certificates and client CAs are loaded before anything changes: a bad pair refuses
        // the whole version, and the running one keeps serving.
        let tls = match self.state.tls().prepare(&config) {
            Ok(t) => t,
            Err(e) => {
                drop(running);
                return self.rejected(source, e).await;
            }
        };
        let pending_restart = self.restart_only_changes(&config);
        if !pending_restart.is_empty() {
            tracing::warn!(source, settings = ?pending_restart, "config reload: these settings take effect only after a restart (use a graceful upgrade)");
        }
        let previous = self.state.runtime();
        let runtime = Runtime::build_from(&config, Some(&previous));
        let kept = runtime
            .clusters
            .iter()
            .filter(|c| previous.clusters.iter().any(|p| Arc::ptr_eq(p, c)))
            .count();
        let handle = self
            .handle
            .get()
            .cloned()
            .unwrap_or_else(tokio::runtime::Handle::current);
        let (running_config, watches) = &mut *running;
        // New clusters get their watches (static ones are filled at once) before the swap;
        // the watches of clusters that are gone stop after it.
        let runtime = Arc::new(runtime);
        watches.sync(&runtime, &config, &handle);
        self.state.swap(runtime.clone());
        self.state.tls().install(tls);
        *running_config = config;
        let version = Version {
            generation: current.generation + 1,
            hash,
            loaded_at_unix_ms: unix_ms(SystemTime::now()),
            source: source.to_owned(),
            pending_restart,
            text: text.into(),
        };
        tracing::info!(
            source,
            generation = version.generation,
            hash = %&version.hash[..12],
            routes = runtime.routes.len(),
            clusters = runtime.clusters.len(),
            clusters_kept = kept,
            "config reload: applied"
        );
        crate::metrics::metrics().config_reload("applied", source_label(source));
        let mut history = self.lock_history();
        history.versions.push_front(version.clone());
        history
            .versions
            .truncate(self.started.reload.history.max(1));
        history.last_attempt = Some(Attempt {
            at_unix_ms: version.loaded_at_unix_ms,
            source: source.to_owned(),
            result: "applied",
            generation: version.generation,
            error: None,
        });
        Outcome::Applied(version)
    }

    /// Applies the document of an earlier generation again (as a new generation).
    pub(crate) async fn rollback(&self, generation: u64) -> Option<Outcome> {
        let text = self
            .lock_history()
            .versions
            .iter()
            .find(|v| v.generation == generation)
            .map(|v| v.text.clone())?;
        Some(
            self.apply(&text, &format!("rollback to {generation}"))
                .await,
        )
    }

    async fn rejected(&self, source: &str, error: String) -> Outcome {
        let generation = self.current().generation;
        tracing::warn!(source, generation, %error, "config reload rejected; the running version keeps serving");
        crate::metrics::metrics().config_reload("rejected", source_label(source));
        let mut history = self.lock_history();
        history.rejected_total += 1;
        history.last_attempt = Some(Attempt {
            at_unix_ms: unix_ms(SystemTime::now()),
            source: source.to_owned(),
            result: "rejected",
            generation,
            error: Some(error.clone()),
        });
        Outcome::Rejected(error)
    }

    /// Settings that only a restart (graceful upgrade) can change.
    fn restart_only_changes(&self, config: &Config) -> Vec<&'static str> {
        let s = &self.started;
        let mut out = Vec::new();
        // A listener's edge settings, certificates and client CAs apply to new connections at
        // once; its socket settings (address, TLS on or off, TLS versions, ciphers,
        // resumption and ACME, h2c, PROXY protocol before TLS) need a restart.
        type Socket<'a> = (
            &'a str,
            std::net::SocketAddr,
            bool,
            Option<(crate::config::TlsVersion, Option<&'a str>, bool, bool)>,
            bool,
        );
        fn sockets(c: &Config) -> Vec<Socket<'_>> {
            c.listeners
                .iter()
                .map(|l| {
                    let pre_tls = l.tls.is_some() && l.edge.proxy_protocol;
                    let tls = l.tls.as_ref().map(|t| t.socket_settings());
                    (l.name.as_str(), l.address, l.h2c, tls, pre_tls)
                })
                .collect()
        }
        if sockets(s) != sockets(config) {
            out.push("listeners");
        }
        // The token and allowed hosts apply at once; the listening addresses do not.
        if (s.admin.address, s.admin.status_address)
            != (config.admin.address, config.admin.status_address)
        {
            out.push("admin");
        }
        if s.h2 != config.h2 {
            out.push("http.h2");
        }
        // `via` and `preserve_header_case` are read per request from the running config.
        let process_wide = |c: &Config| crate::config::ServerSettings {
            via: String::new(),
            preserve_header_case: false,
            ..c.server.clone()
        };
        if process_wide(s) != process_wide(config) {
            out.push("server");
        }
        if s.access_log.format != config.access_log.format {
            out.push("access_log.format");
        }
        if s.reload != config.reload {
            out.push("reload");
        }
        if s.acme != config.acme {
            out.push("acme");
        }
        out
    }

    fn lock_history(&self) -> std::sync::MutexGuard<'_, History> {
        self.history.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn record(&self, attempt: Attempt) {
        crate::metrics::metrics().config_reload(attempt.result, source_label(&attempt.source));
        self.lock_history().last_attempt = Some(attempt);
    }

    /// The version serving now.
    pub(crate) fn current(&self) -> Version {
        let history = self.lock_history();
        history
            .versions
            .front()
            .cloned()
            .unwrap_or_else(|| Version {
                generation: 0,
                hash: String::new(),
                loaded_at_unix_ms: 0,
                source: String::new(),
                pending_restart: Vec::new(),
                text: "".into(),
            })
    }

    /// The kept versions, newest first.
    pub(crate) fn versions(&self) -> Vec<Version> {
        self.lock_history().versions.iter().cloned().collect()
    }

    /// The admin view: the current version, the last attempt, the rejections so far and the
    /// active sources.
    pub(crate) fn status(&self) -> serde_json::Value {
        let history = self.lock_history();
        let r = &self.started.reload;
        serde_json::json!({
            "current": history.versions.front(),
            "last_attempt": history.last_attempt,
            "rejected_total": history.rejected_total,
            "versions_kept": history.versions.len(),
            "sources": {
                "file": r.watch_file.then(|| self.path.display().to_string()),
                "debounce_ms": r.debounce.as_millis() as u64,
                "sighup": r.sighup,
                "admin": r.admin,
                "consul_kv": r.consul_kv,
            },
        })
    }
}

/// Follows a Consul KV key with blocking queries: each new value is a config document to
/// apply, so a fleet of gateways follows one source. Same rules as discovery watches (index
/// sent back, backwards resets, a token bucket, backoff with jitter, a fresh read after a
/// failure). An absent or unchanged key applies nothing.
pub(crate) async fn watch_kv(
    reloader: Arc<Reloader>,
    consul: discovery::consul::Consul,
    key: String,
) {
    use discovery::consul::{backoff, next_index, TokenBucket};
    let config = consul.config().clone();
    let mut bucket = TokenBucket::new(config.max_queries_per_second, config.burst);
    let mut index = 0u64;
    let mut failures = 0u32;
    let mut last: Option<bytes::Bytes> = None;
    tracing::info!(key = %key, consul = %config.address, "following the config in Consul KV");
    loop {
        bucket.take().await;
        match consul.kv_get(&key, index).await {
            Ok((value, answered)) => {
                if failures > 0 {
                    tracing::info!(key = %key, after_failures = failures, "Consul KV answers again");
                    failures = 0;
                }
                index = next_index(index, answered);
                if value == last {
                    continue;
                }
                last = value.clone();
                match value {
                    Some(v) => match std::str::from_utf8(&v) {
                        Ok(text) => {
                            let _ = reloader.apply(text, "consul-kv").await;
                        }
                        Err(_) => {
                            let _ = reloader
                                .rejected(
                                    "consul-kv",
                                    format!("the value of Consul KV key `{key}` is not UTF-8 text"),
                                )
                                .await;
                        }
                    },
                    None => {
                        tracing::info!(key = %key, "Consul KV key is absent; the running config stays")
                    }
                }
            }
            Err(e) => {
                failures = failures.saturating_add(1);
                index = 0;
                let delay = backoff(
                    config.retry_base,
                    config.retry_max,
                    failures,
                    fastrand::f64(),
                );
                if failures == 1 || failures.is_power_of_two() {
                    tracing::warn!(key = %key, failures, retry_in_ms = delay.as_millis() as u64, error = %e, "Consul KV query failed; the running config stays");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// Reloads the config file on every SIGHUP.
pub(crate) async fn on_sighup(reloader: Arc<Reloader>) {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hup = match signal(SignalKind::hangup()) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(error = %e, "cannot listen for SIGHUP");
            return;
        }
    };
    while hup.recv().await.is_some() {
        let _ = reloader.reload_file("sighup").await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_are_hex_sha256() {
        assert_eq!(
            sha256_hex("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
