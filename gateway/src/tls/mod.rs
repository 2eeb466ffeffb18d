//! TLS the way an edge runs it: several certificates per listener chosen by SNI (exact and
//! wildcard names, RSA and ECDSA side by side), files reloaded without a restart (new
//! handshakes use the new pair at once, established connections keep theirs, a bad pair is
//! refused and the old one keeps serving), client certificates (mutual TLS) whose verified
//! identity reaches filters and upstreams, and certificates obtained by ACME.
//!
//! OpenSSL (through pingora) carries the handshakes; this module chooses what each handshake
//! gets in pingora's certificate callback, from state swapped atomically.

mod accept;
pub(crate) mod acme;
mod certs;
mod identity;
pub(crate) mod upstream;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use arc_swap::{ArcSwap, ArcSwapOption};
use pingora::tls::x509::store::{X509Store, X509StoreBuilder};
use pingora::tls::x509::{X509Name, X509};
use serde::Serialize;

pub(crate) use accept::tls_settings;
pub(crate) use certs::{
    human_duration, load_pair, rfc3339, unix_now, CertError, CertSet, CertifiedKey, PairFiles,
};
pub(crate) use identity::{ConnTls, XFCC};

use crate::config::{ClientAuthSpec, Config, ListenerTls};

/// Loads a PEM bundle of CA certificates.
pub(crate) fn load_ca_bundle(path: &Path) -> Result<Vec<X509>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cannot read CA bundle `{}`: {e}", path.display()))?;
    let certs = X509::stack_from_pem(&pem)
        .map_err(|e| format!("CA bundle `{}` is not valid PEM: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!(
            "CA bundle `{}` holds no certificate",
            path.display()
        ));
    }
    Ok(certs)
}

/// Client-certificate verification as one listener does it now.
pub(crate) struct ClientAuth {
    pub(crate) required: bool,
    pub(crate) forward: bool,
    store: X509Store,
    /// The CAs' names, sent in the CertificateRequest so clients pick a matching certificate.
    names: Vec<X509Name>,
    /// The bundle file, for `/certificates`.
    ca: String,
    ca_count: usize,
}

impl std::fmt::Debug for ClientAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientAuth")
            .field("required", &self.required)
            .field("ca", &self.ca)
            .finish()
    }
}

impl ClientAuth {
    fn load(spec: &ClientAuthSpec) -> Result<Self, String> {
        let cas = load_ca_bundle(&spec.ca)?;
        let mut builder = X509StoreBuilder::new().map_err(|e| e.to_string())?;
        let mut names = Vec::with_capacity(cas.len());
        for ca in &cas {
            builder
                .add_cert(ca.clone())
                .map_err(|e| format!("CA bundle `{}`: {e}", spec.ca.display()))?;
            if let Ok(n) = ca.subject_name().to_owned() {
                names.push(n);
            }
        }
        Ok(Self {
            required: spec.required,
            forward: spec.forward,
            store: builder.build(),
            names,
            ca: spec.ca.display().to_string(),
            ca_count: cas.len(),
        })
    }
}

/// What one listener serves, loaded and checked, ready to swap in.
#[derive(Debug)]
pub(crate) struct Loaded {
    files: CertSet,
    client_auth: Option<ClientAuth>,
    spec: ListenerTls,
}

/// Loads everything `spec` names; the first bad file is the error.
fn load(spec: &ListenerTls) -> Result<Loaded, String> {
    let mut certs = Vec::with_capacity(spec.certificates.len());
    for p in &spec.certificates {
        certs.push(Arc::new(
            load_pair(&p.cert, &p.key).map_err(|e| e.to_string())?,
        ));
    }
    let client_auth = match &spec.client_auth {
        Some(c) => Some(ClientAuth::load(c)?),
        None => None,
    };
    Ok(Loaded {
        files: CertSet::new(certs),
        client_auth,
        spec: spec.clone(),
    })
}

/// The live TLS state of one listener.
pub(crate) struct ServerTls {
    pub(crate) name: Arc<str>,
    /// What the files gave (kept to rebuild `served` when ACME renews).
    files: ArcSwap<CertSet>,
    /// What handshakes get: the files' certificates, then ACME's.
    served: ArcSwap<CertSet>,
    client_auth: ArcSwapOption<ClientAuth>,
    spec: ArcSwap<ListenerTls>,
    acme: Option<Arc<acme::AcmeState>>,
    /// Stamps of the files last loaded (so an unchanged rewrite is not a reload).
    stamps: Mutex<Vec<FileStamp>>,
    /// Stamps seen changed at the last check: a reload waits until they hold still for one
    /// interval, so a certificate and its key written one after the other load together.
    pending: Mutex<Option<Vec<FileStamp>>>,
    status: Mutex<ReloadStatus>,
    pub(crate) counters: accept::Counters,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("name", &self.name)
            .finish()
    }
}

/// The last reload of a listener's files.
#[derive(Debug, Clone, Default, Serialize)]
pub(crate) struct ReloadStatus {
    /// Unix seconds of the last successful load.
    pub(crate) loaded_at: i64,
    /// Loads applied since start.
    pub(crate) reloads: u64,
    /// The last refused reload's error, until a later one succeeds.
    pub(crate) last_error: Option<String>,
}

/// What a file looked like when it was loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    use std::os::unix::fs::MetadataExt;
    // `metadata` follows symlinks, so a swapped symlink (Kubernetes secrets) is seen.
    let m = std::fs::metadata(path).ok()?;
    Some(FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode: m.ino(),
    })
}

fn stamps(spec: &ListenerTls) -> Vec<FileStamp> {
    let mut paths: Vec<&Path> = Vec::new();
    for p in &spec.certificates {
        paths.push(&p.cert);
        paths.push(&p.key);
    }
    if let Some(c) = &spec.client_auth {
        paths.push(&c.ca);
    }
    paths
        .into_iter()
        .map(|p| {
            stamp(p).unwrap_or(FileStamp {
                modified: None,
                len: 0,
                inode: 0,
            })
        })
        .collect()
}

impl ServerTls {
    /// A listener's TLS state from its validated settings.
    pub(crate) fn new(
        name: &str,
        spec: &ListenerTls,
        acme: Option<Arc<acme::AcmeState>>,
    ) -> Result<Arc<Self>, String> {
        let loaded = load(spec)?;
        let name: Arc<str> = name.into();
        let this = Arc::new(Self {
            counters: accept::Counters::new(&name),
            name,
            files: ArcSwap::from_pointee(CertSet::default()),
            served: ArcSwap::from_pointee(CertSet::default()),
            client_auth: ArcSwapOption::empty(),
            spec: ArcSwap::from_pointee(spec.clone()),
            acme: if spec.acme { acme } else { None },
            stamps: Mutex::new(Vec::new()),
            pending: Mutex::new(None),
            status: Mutex::new(ReloadStatus::default()),
        });
        this.install(loaded);
        Ok(this)
    }

    /// Swaps in what [`load`] gave: new handshakes use it at once.
    fn install(&self, loaded: Loaded) {
        *lock(&self.stamps) = stamps(&loaded.spec);
        self.files.store(Arc::new(loaded.files));
        self.client_auth.store(loaded.client_auth.map(Arc::new));
        self.spec.store(Arc::new(loaded.spec));
        self.rebuild();
        let mut status = lock(&self.status);
        status.loaded_at = unix_now();
        status.reloads += 1;
        status.last_error = None;
    }

    /// Recomputes the served set from the files' certificates and ACME's.
    pub(crate) fn rebuild(&self) {
        let mut all = self.files.load().all.clone();
        if let Some(cert) = self.acme.as_ref().and_then(|a| a.certificate()) {
            all.push(cert);
        }
        self.served.store(Arc::new(CertSet::new(all)));
    }

    /// Reloads the files once they changed on disk and then held still for a check; a bad
    /// pair is refused and the running one keeps serving. Returns whether something was
    /// applied.
    pub(crate) fn reload_if_changed(&self) -> bool {
        let spec = self.spec.load_full();
        let now = stamps(&spec);
        if now == *lock(&self.stamps) {
            *lock(&self.pending) = None;
            return false;
        }
        let settled = {
            let mut pending = lock(&self.pending);
            let settled = pending.as_ref() == Some(&now);
            *pending = if settled { None } else { Some(now) };
            settled
        };
        settled && self.reload(&spec, "file")
    }

    fn reload(&self, spec: &ListenerTls, source: &str) -> bool {
        match load(spec) {
            Ok(loaded) => {
                self.install(loaded);
                crate::metrics::metrics().tls_reload(&self.name, "applied");
                tracing::info!(listener = %self.name, source, certificates = self.served.load().all.len(), "TLS certificates reloaded");
                true
            }
            Err(error) => {
                // The same bad files are not retried until they change again.
                *lock(&self.stamps) = stamps(spec);
                crate::metrics::metrics().tls_reload(&self.name, "rejected");
                tracing::error!(listener = %self.name, source, %error, "TLS certificate reload rejected; the running certificates keep serving");
                lock(&self.status).last_error = Some(error);
                false
            }
        }
    }

    /// The certificates served now.
    pub(crate) fn served(&self) -> Arc<CertSet> {
        self.served.load_full()
    }

    fn status(&self) -> ReloadStatus {
        lock(&self.status).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The TLS state of every TLS listener and the ACME client's.
#[derive(Debug, Default)]
pub(crate) struct Tls {
    pub(crate) listeners: Vec<Arc<ServerTls>>,
    pub(crate) acme: Option<Arc<acme::AcmeState>>,
}

/// A config reload's TLS half, loaded and checked before the config is swapped in.
#[derive(Debug)]
pub(crate) struct Prepared(Vec<(Arc<ServerTls>, Loaded)>);

impl Tls {
    /// Loads every TLS listener of `config` (the gateway refuses to start on an error).
    pub(crate) fn build(config: &Config) -> Result<Self, String> {
        let acme = config
            .acme
            .as_ref()
            .map(|a| Arc::new(acme::AcmeState::new(a.clone())));
        let mut listeners = Vec::new();
        for l in &config.listeners {
            if let Some(spec) = &l.tls {
                listeners.push(
                    ServerTls::new(&l.name, spec, acme.clone())
                        .map_err(|e| format!("listener `{}`: {e}", l.name))?,
                );
            }
        }
        Ok(Self { listeners, acme })
    }

    /// Loads what `config` names for the running TLS listeners (by name); an error refuses
    /// the reload. A listener that is new or no longer TLS waits for a restart.
    pub(crate) fn prepare(&self, config: &Config) -> Result<Prepared, String> {
        let mut out = Vec::new();
        for server in &self.listeners {
            let Some(spec) = config
                .listeners
                .iter()
                .find(|l| *l.name == *server.name)
                .and_then(|l| l.tls.as_ref())
            else {
                continue;
            };
            let loaded = load(spec).map_err(|e| format!("listener `{}`: {e}", server.name))?;
            out.push((server.clone(), loaded));
        }
        Ok(Prepared(out))
    }

    /// Swaps in what [`Tls::prepare`] loaded.
    pub(crate) fn install(&self, prepared: Prepared) {
        for (server, loaded) in prepared.0 {
            server.install(loaded);
        }
    }

    /// Watches every listener's files, reloading those that change (polled: a rename, a
    /// rewrite in place and a symlink swap are all seen).
    pub(crate) async fn watch(self: Arc<Self>, interval: Duration) {
        let mut tick = tokio::time::interval(interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            for server in &self.listeners {
                server.reload_if_changed();
            }
        }
    }

    /// Rebuilds what every ACME-serving listener serves (after ACME renewed).
    pub(crate) fn acme_changed(&self) {
        for server in &self.listeners {
            if server.acme.is_some() {
                server.rebuild();
            }
        }
    }

    /// `/certificates`.
    pub(crate) fn describe(&self) -> serde_json::Value {
        let now = unix_now();
        let listeners: Vec<serde_json::Value> = self
            .listeners
            .iter()
            .map(|s| {
                let spec = s.spec.load();
                let status = s.status();
                serde_json::json!({
                    "listener": &*s.name,
                    "min_version": match spec.min_version {
                        crate::config::TlsVersion::V1_2 => "1.2",
                        crate::config::TlsVersion::V1_3 => "1.3",
                    },
                    "session_resumption": spec.session_resumption,
                    "acme": spec.acme,
                    "certificates": s.served().describe(now),
                    "client_auth": s.client_auth.load().as_ref().map(|c| serde_json::json!({
                        "mode": if c.required { "required" } else { "optional" },
                        "ca": c.ca,
                        "ca_certificates": c.ca_count,
                        "forward": c.forward,
                    })),
                    "loaded_at": rfc3339(status.loaded_at),
                    "reloads": status.reloads,
                    "last_error": status.last_error,
                    "handshakes": s.counters.snapshot(),
                })
            })
            .collect();
        serde_json::json!({
            "listeners": listeners,
            "acme": self.acme.as_ref().map(|a| a.describe(now)),
        })
    }

    /// Expiry of every served certificate, for `/metrics`: (listener, names, source,
    /// not-after unix seconds).
    pub(crate) fn expiries(&self) -> Vec<(String, String, String, i64)> {
        let mut out = Vec::new();
        for s in &self.listeners {
            for c in &s.served().all {
                out.push((
                    s.name.to_string(),
                    c.names.join(","),
                    c.source.clone(),
                    c.not_after,
                ));
            }
        }
        out
    }
}

/// Certificates of `config` that expire within `window` (for `gateway check` and start-up
/// warnings): one line each.
pub(crate) fn expiring(config: &Config, window: Duration) -> Vec<String> {
    let now = unix_now();
    let mut out = Vec::new();
    for l in &config.listeners {
        let Some(t) = &l.tls else { continue };
        for p in &t.certificates {
            if let Ok(c) = load_pair(&p.cert, &p.key) {
                let left = c.not_after - now;
                if left < window.as_secs() as i64 {
                    out.push(format!(
                        "listener `{}`: the certificate `{}` ({}) expires in {} (not after {}); renew it",
                        l.name,
                        p.cert.display(),
                        c.names.join(", "),
                        human_duration(left),
                        rfc3339(c.not_after)
                    ));
                }
            }
        }
    }
    out
}
