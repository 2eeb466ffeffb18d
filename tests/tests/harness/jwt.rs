//! Tokens: the development keys, signing, and a JWKS endpoint the test controls.

use super::*;

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
