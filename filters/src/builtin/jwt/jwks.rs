//! A JWKS document fetched in the background and cached: refetched every refresh interval,
//! and on demand when a token names an unknown `kid`, never more often than the minimum
//! refresh interval. The fetch thread ends when the filter (its config version) is dropped.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::{mpsc, watch};

use super::keys::{jwks_keys, KeySet, VerifyKey};

/// Longest a JWKS fetch may take.
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest JWKS document accepted.
const MAX_DOCUMENT: usize = 1 << 20;

#[derive(Debug, Clone)]
pub(super) struct JwksConfig {
    pub(super) url: String,
    pub(super) refresh: Duration,
    pub(super) min_refresh: Duration,
}

/// The filter's handle on the fetcher.
#[derive(Debug)]
pub(super) struct JwksSource {
    refresh: mpsc::Sender<()>,
    /// Completed fetch attempts (successful or not); waiters watch it change.
    attempts: watch::Receiver<u64>,
    /// Milliseconds after `epoch` of the last fetch attempt's start.
    last_attempt_ms: Arc<AtomicU64>,
    epoch: Instant,
    min_refresh: Duration,
}

impl JwksSource {
    /// Starts the fetch thread; it publishes `static_keys` plus the document's keys to `keys`.
    pub(super) fn start(
        config: JwksConfig,
        static_keys: Vec<VerifyKey>,
        keys: Arc<ArcSwap<KeySet>>,
    ) -> std::io::Result<Self> {
        let (refresh_tx, refresh_rx) = mpsc::channel(1);
        let (attempts_tx, attempts_rx) = watch::channel(0);
        let epoch = Instant::now();
        let last_attempt_ms = Arc::new(AtomicU64::new(0));
        let min_refresh = config.min_refresh;
        let fetcher = Fetcher {
            config,
            static_keys,
            keys,
            refresh: refresh_rx,
            attempts: attempts_tx,
            last_attempt_ms: last_attempt_ms.clone(),
            epoch,
        };
        std::thread::Builder::new()
            .name("jwks-fetch".into())
            .spawn(move || fetcher.run())?;
        Ok(Self {
            refresh: refresh_tx,
            attempts: attempts_rx,
            last_attempt_ms,
            epoch,
            min_refresh,
        })
    }

    /// Whether the first fetch has completed.
    pub(super) fn fetched_once(&self) -> bool {
        *self.attempts.borrow() > 0
    }

    /// Asks for a refetch (unless one happened within the minimum interval) and waits up to
    /// `wait` for a fetch attempt to complete. Returns whether one completed.
    pub(super) async fn refetch(&self, wait: Duration) -> bool {
        let mut attempts = self.attempts.clone();
        attempts.borrow_and_update();
        if self.fetched_once() {
            let since = self.epoch.elapsed().saturating_sub(Duration::from_millis(
                self.last_attempt_ms.load(Ordering::Acquire),
            ));
            if since < self.min_refresh {
                return false;
            }
            let _ = self.refresh.try_send(());
        }
        matches!(
            tokio::time::timeout(wait, attempts.changed()).await,
            Ok(Ok(()))
        )
    }
}

struct Fetcher {
    config: JwksConfig,
    static_keys: Vec<VerifyKey>,
    keys: Arc<ArcSwap<KeySet>>,
    refresh: mpsc::Receiver<()>,
    attempts: watch::Sender<u64>,
    last_attempt_ms: Arc<AtomicU64>,
    epoch: Instant,
}

impl Fetcher {
    fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the JWKS fetcher");
                return;
            }
        };
        rt.block_on(async move {
            let client = match reqwest::Client::builder().timeout(FETCH_TIMEOUT).build() {
                Ok(c) => c,
                Err(e) => {
                    tracing::error!(error = %e, "cannot build the JWKS HTTP client");
                    return;
                }
            };
            let mut last_doc: Option<Vec<u8>> = None;
            loop {
                let started = Instant::now();
                self.last_attempt_ms.store(
                    self.epoch.elapsed().as_millis() as u64,
                    Ordering::Release,
                );
                match fetch(&client, &self.config.url).await {
                    Ok(body) if last_doc.as_ref() != Some(&body) => match serde_json::from_slice::<JwkSet>(&body) {
                        Ok(doc) => {
                            let found = jwks_keys(&doc);
                            tracing::info!(url = %self.config.url, keys = found.len(), "JWKS loaded");
                            let generation = self.keys.load().generation + 1;
                            let mut all = self.static_keys.clone();
                            all.extend(found);
                            self.keys.store(Arc::new(KeySet { keys: all, generation }));
                            last_doc = Some(body);
                        }
                        Err(e) => tracing::warn!(url = %self.config.url, error = %e, "JWKS document is not a JWK set; keeping the previous keys"),
                    },
                    Ok(_) => {}
                    Err(e) => tracing::warn!(url = %self.config.url, error = %e, "JWKS fetch failed; keeping the previous keys"),
                }
                self.attempts.send_modify(|n| *n += 1);
                tokio::select! {
                    () = tokio::time::sleep(self.config.refresh) => {}
                    asked = self.refresh.recv() => {
                        if asked.is_none() {
                            return; // the filter was dropped
                        }
                        let since = started.elapsed();
                        if since < self.config.min_refresh {
                            tokio::time::sleep(self.config.min_refresh - since).await;
                        }
                    }
                }
                if self.refresh.is_closed() {
                    return;
                }
            }
        });
    }
}

async fn fetch(client: &reqwest::Client, url: &str) -> Result<Vec<u8>, String> {
    let resp = client.get(url).send().await.map_err(|e| e.to_string())?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    if body.len() > MAX_DOCUMENT {
        return Err(format!(
            "document is {} bytes (limit {MAX_DOCUMENT})",
            body.len()
        ));
    }
    Ok(body.to_vec())
}
