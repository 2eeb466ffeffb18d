//! Automatic certificates from an ACME (RFC 8555) CA, through `instant-acme`: an account
//! and one certificate for the configured names, kept on disk, renewed well before expiry
//! and hot-swapped into every listener that serves it. The CA validates the names through
//! the gateway's own listeners: HTTP-01 (`/.well-known/acme-challenge/TOKEN` on a plain
//! listener) or TLS-ALPN-01 (RFC 8737: a challenge certificate over ALPN `acme-tls/1`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use serde::Serialize;
use tokio::sync::Notify;

use super::certs::{from_pem, rfc3339, unix_now, CertifiedKey};
use super::lock;
use crate::config::{AcmeChallenge, AcmeSettings};

/// The ACME client's state: the certificate it serves and the challenges it answers.
pub(crate) struct AcmeState {
    settings: AcmeSettings,
    certificate: ArcSwapOption<CertifiedKey>,
    /// HTTP-01: token → key authorization.
    http01: Mutex<HashMap<String, String>>,
    /// TLS-ALPN-01: name → challenge certificate.
    alpn01: Mutex<HashMap<String, Arc<CertifiedKey>>>,
    status: Mutex<Status>,
    renew_now: Notify,
}

impl std::fmt::Debug for AcmeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AcmeState")
            .field("domains", &self.settings.domains)
            .finish()
    }
}

#[derive(Debug, Clone, Default, Serialize)]
struct Status {
    /// Certificates obtained since start.
    issued: u64,
    /// Orders that failed since start.
    failed: u64,
    last_issued_at: Option<String>,
    last_error: Option<String>,
    next_check_at: Option<String>,
}

impl AcmeState {
    pub(crate) fn new(settings: AcmeSettings) -> Self {
        let this = Self {
            settings,
            certificate: ArcSwapOption::empty(),
            http01: Mutex::default(),
            alpn01: Mutex::default(),
            status: Mutex::default(),
            renew_now: Notify::new(),
        };
        // A certificate stored by an earlier run serves at once.
        match this.stored() {
            Ok(Some(c)) => this.certificate.store(Some(Arc::new(c))),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "acme: the stored certificate is unusable; a new one will be ordered")
            }
        }
        this
    }

    /// The certificate obtained, if any.
    pub(crate) fn certificate(&self) -> Option<Arc<CertifiedKey>> {
        self.certificate.load_full()
    }

    /// The key authorization for an HTTP-01 token being validated now.
    pub(crate) fn http01(&self, token: &str) -> Option<String> {
        lock(&self.http01).get(token).cloned()
    }

    /// The TLS-ALPN-01 challenge certificate for `name`, while it is being validated.
    pub(crate) fn alpn_certificate(&self, name: &str) -> Option<Arc<CertifiedKey>> {
        lock(&self.alpn01)
            .get(&name.trim_end_matches('.').to_ascii_lowercase())
            .cloned()
    }

    /// Asks the renewal loop to order a new certificate now (`POST /certificates/renew`).
    pub(crate) fn renew_now(&self) {
        self.renew_now.notify_one();
    }

    fn cert_path(&self) -> PathBuf {
        self.settings.storage.join("certificate.pem")
    }

    fn key_path(&self) -> PathBuf {
        self.settings.storage.join("key.pem")
    }

    /// The account file of this directory URL (a different CA gets its own account).
    fn account_path(&self) -> PathBuf {
        let digest = sha2_hex(self.settings.directory.as_bytes());
        self.settings
            .storage
            .join(format!("account-{}.json", &digest[..12]))
    }

    fn stored(&self) -> Result<Option<CertifiedKey>, String> {
        let (cert, key) = (self.cert_path(), self.key_path());
        if !cert.is_file() || !key.is_file() {
            return Ok(None);
        }
        let mut c = super::load_pair(&cert, &key).map_err(|e| e.to_string())?;
        // Names changed in the config: the stored certificate does not cover them.
        if self.settings.domains.iter().any(|d| !c.names.contains(d)) {
            return Ok(None);
        }
        c.source = "acme".to_owned();
        Ok(Some(c))
    }

    /// Whether the certificate must be (re)ordered now.
    fn due(&self) -> bool {
        match self.certificate() {
            None => true,
            Some(c) => c.not_after - unix_now() < self.settings.renew_before.as_secs() as i64,
        }
    }

    /// Keeps the certificate current: orders one when there is none or it is due, then checks
    /// every `check_interval` (or at once when asked). After a failure it retries with
    /// backoff (1 minute doubling to 1 hour), never faster.
    pub(crate) async fn run(self: Arc<Self>, tls: Arc<super::Tls>) {
        let mut backoff = Duration::from_secs(60);
        let mut forced = false;
        loop {
            let mut wait = self.settings.check_interval;
            if forced || self.due() {
                match self.order().await {
                    Ok(c) => {
                        backoff = Duration::from_secs(60);
                        tracing::info!(names = ?c.names, not_after = %rfc3339(c.not_after), "acme: certificate issued");
                        self.certificate.store(Some(Arc::new(c)));
                        tls.acme_changed();
                        crate::metrics::metrics().acme_order("issued");
                        let mut s = lock(&self.status);
                        s.issued += 1;
                        s.last_issued_at = Some(rfc3339(unix_now()));
                        s.last_error = None;
                    }
                    Err(e) => {
                        tracing::error!(error = %e, retry_in_s = backoff.as_secs(), "acme: order failed; the current certificate (if any) keeps serving");
                        crate::metrics::metrics().acme_order("failed");
                        let mut s = lock(&self.status);
                        s.failed += 1;
                        s.last_error = Some(e);
                        wait = wait.min(backoff);
                        backoff = (backoff * 2).min(Duration::from_secs(3600));
                    }
                }
                lock(&self.http01).clear();
                lock(&self.alpn01).clear();
            }
            lock(&self.status).next_check_at = Some(rfc3339(unix_now() + wait.as_secs() as i64));
            forced = tokio::time::timeout(wait, self.renew_now.notified())
                .await
                .is_ok();
        }
    }

    async fn account(&self) -> Result<Account, String> {
        let builder = || match &self.settings.ca {
            Some(ca) => Account::builder_with_root(ca)
                .map_err(|e| format!("acme ca `{}`: {e}", ca.display())),
            None => Account::builder().map_err(|e| e.to_string()),
        };
        let path = self.account_path();
        if let Ok(text) = std::fs::read(&path) {
            let creds: AccountCredentials = serde_json::from_slice(&text)
                .map_err(|e| format!("account file `{}`: {e}", path.display()))?;
            return builder()?
                .from_credentials(creds)
                .await
                .map_err(|e| format!("acme account: {e}"));
        }
        let contact: Vec<&str> = self.settings.contact.iter().map(String::as_str).collect();
        let (account, creds) = builder()?
            .create(
                &NewAccount {
                    contact: &contact,
                    terms_of_service_agreed: true,
                    only_return_existing: false,
                },
                self.settings.directory.clone(),
                None,
            )
            .await
            .map_err(|e| {
                format!(
                    "acme: creating the account at {}: {e}",
                    self.settings.directory
                )
            })?;
        let json = serde_json::to_vec(&creds).map_err(|e| e.to_string())?;
        write_private(&path, &json)?;
        tracing::info!(directory = %self.settings.directory, account = account.id(), "acme: account created");
        Ok(account)
    }

    /// One order, from account to certificate.
    async fn order(&self) -> Result<CertifiedKey, String> {
        std::fs::create_dir_all(&self.settings.storage)
            .map_err(|e| format!("acme storage `{}`: {e}", self.settings.storage.display()))?;
        let account = self.account().await?;
        let identifiers: Vec<Identifier> = self
            .settings
            .domains
            .iter()
            .map(|d| Identifier::Dns(d.clone()))
            .collect();
        let mut order = account
            .new_order(&NewOrder::new(&identifiers))
            .await
            .map_err(|e| format!("acme: new order: {e}"))?;
        let kind = match self.settings.challenge {
            AcmeChallenge::Http01 => ChallengeType::Http01,
            AcmeChallenge::TlsAlpn01 => ChallengeType::TlsAlpn01,
        };
        let mut authorizations = order.authorizations();
        while let Some(result) = authorizations.next().await {
            let mut authz = result.map_err(|e| format!("acme: authorization: {e}"))?;
            match authz.status {
                AuthorizationStatus::Pending => {}
                AuthorizationStatus::Valid => continue,
                other => return Err(format!("acme: authorization is {other:?}")),
            }
            let name = authz.identifier().to_string();
            let mut challenge = authz
                .challenge(kind.clone())
                .ok_or_else(|| format!("acme: the CA offers no {kind:?} challenge for {name}"))?;
            let key_auth = challenge.key_authorization();
            match self.settings.challenge {
                AcmeChallenge::Http01 => {
                    lock(&self.http01)
                        .insert(challenge.token.clone(), key_auth.as_str().to_owned());
                }
                AcmeChallenge::TlsAlpn01 => {
                    let cert = alpn_challenge_certificate(&name, key_auth.digest().as_ref())?;
                    lock(&self.alpn01).insert(name.clone(), Arc::new(cert));
                }
            }
            challenge
                .set_ready()
                .await
                .map_err(|e| format!("acme: challenge for {name}: {e}"))?;
        }
        let retries = RetryPolicy::new()
            .initial_delay(Duration::from_millis(250))
            .backoff(1.5)
            .timeout(Duration::from_secs(60));
        let status = order
            .poll_ready(&retries)
            .await
            .map_err(|e| format!("acme: waiting for validation: {e}"))?;
        if status != OrderStatus::Ready {
            return Err(format!("acme: the order is {status:?} after validation (the CA could not reach a challenge answer)"));
        }
        let key_pem = order
            .finalize()
            .await
            .map_err(|e| format!("acme: finalize: {e}"))?;
        let chain_pem = order
            .poll_certificate(&retries)
            .await
            .map_err(|e| format!("acme: certificate: {e}"))?;
        let mut c = from_pem(
            chain_pem.as_bytes(),
            key_pem.as_bytes(),
            "acme certificate",
            "acme key",
            unix_now(),
        )
        .map_err(|e| format!("acme: the CA's certificate is unusable: {e}"))?;
        c.source = "acme".to_owned();
        // Key first: a crash between the two leaves a pair that fails to load, not a new
        // certificate beside the old key.
        write_private(&self.key_path(), key_pem.as_bytes())?;
        write_private(&self.cert_path(), chain_pem.as_bytes())?;
        Ok(c)
    }

    /// What `/certificates` shows of ACME.
    pub(crate) fn describe(&self, now: i64) -> serde_json::Value {
        let status = lock(&self.status).clone();
        let cert = self.certificate().map(|c| {
            serde_json::json!({
                "names": c.names,
                "issuer": c.issuer,
                "not_after": rfc3339(c.not_after),
                "expires_in_seconds": c.not_after - now,
                "fingerprint_sha256": c.fingerprint,
            })
        });
        serde_json::json!({
            "directory": self.settings.directory,
            "domains": self.settings.domains,
            "challenge": match self.settings.challenge {
                AcmeChallenge::Http01 => "http-01",
                AcmeChallenge::TlsAlpn01 => "tls-alpn-01",
            },
            "renew_before_days": self.settings.renew_before.as_secs() / 86_400,
            "certificate": cert,
            "status": status,
        })
    }
}

fn sha2_hex(bytes: &[u8]) -> String {
    use sha2::{Digest, Sha256};
    super::certs::hex(&Sha256::digest(bytes))
}

/// Writes a file readable by its owner only, through a temporary file renamed over it.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let result = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(bytes).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    result.map_err(|e| format!("cannot write `{}`: {e}", path.display()))
}

/// The self-signed certificate of a TLS-ALPN-01 answer (RFC 8737): the name as its only
/// SAN and the key authorization's SHA-256 in a critical acmeIdentifier extension.
fn alpn_challenge_certificate(name: &str, digest: &[u8]) -> Result<CertifiedKey, String> {
    let mut params = rcgen::CertificateParams::new(vec![name.to_owned()])
        .map_err(|e| format!("acme: challenge certificate for {name}: {e}"))?;
    params.custom_extensions = vec![rcgen::CustomExtension::new_acme_identifier(digest)];
    let key = rcgen::KeyPair::generate().map_err(|e| e.to_string())?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| format!("acme: challenge certificate for {name}: {e}"))?;
    from_pem(
        cert.pem().as_bytes(),
        key.serialize_pem().as_bytes(),
        "acme challenge certificate",
        "acme challenge key",
        unix_now(),
    )
    .map_err(|e| e.to_string())
}
