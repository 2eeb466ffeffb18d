//! TLS to upstreams: the name to verify (and send as SNI), the roots to verify against (the
//! system's or a CA bundle), and a client certificate for origins that want mutual TLS.
//! pingora's connector does the handshake; this is what each peer is given.

use std::path::PathBuf;
use std::sync::Arc;

use pingora::tls::x509::X509;
use pingora::utils::tls::CertKey;

use super::{load_ca_bundle, load_pair, PairFiles};

/// `[clusters.NAME.tls]`, loaded.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct UpstreamTls {
    /// Sent as SNI and verified against the certificate's names.
    pub(crate) sni: String,
    /// Verify the origin's certificate (chain and name). Off is for tests only.
    pub(crate) verify: bool,
    /// Roots to verify against instead of the system's.
    pub(crate) ca_file: Option<PathBuf>,
    /// A client certificate for mutual TLS.
    pub(crate) client_files: Option<PairFiles>,
    pub(crate) material: Material,
}

/// The loaded roots and client certificate; equal when loaded from the same bytes.
#[derive(Clone)]
pub(crate) struct Material {
    pub(crate) ca: Option<Arc<Box<[X509]>>>,
    pub(crate) client: Option<Arc<CertKey>>,
    digest: String,
}

impl std::fmt::Debug for Material {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Material")
            .field("digest", &self.digest)
            .finish()
    }
}

impl Material {
    /// A key for pingora's connection pool: pingora's pool key leaves out the roots a
    /// connection was verified against, so without it a connection verified for one cluster
    /// could be reused by another cluster that trusts different roots.
    pub(crate) fn pool_key(&self) -> u64 {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.digest.hash(&mut h);
        h.finish()
    }
}

impl PartialEq for Material {
    fn eq(&self, other: &Self) -> bool {
        self.digest == other.digest
    }
}

impl UpstreamTls {
    /// Loads the files named (errors say which file and why).
    pub(crate) fn load(
        sni: String,
        verify: bool,
        ca_file: Option<PathBuf>,
        client_files: Option<PairFiles>,
    ) -> Result<Self, String> {
        let mut digest = String::new();
        let ca = match &ca_file {
            Some(p) => {
                let certs = load_ca_bundle(p)?;
                for c in &certs {
                    if let Ok(d) = c.digest(pingora::tls::hash::MessageDigest::sha256()) {
                        digest.push_str(&super::certs::hex(&d));
                    }
                }
                Some(Arc::new(certs.into_boxed_slice()))
            }
            None => None,
        };
        let client = match &client_files {
            Some(p) => {
                let c = load_pair(&p.cert, &p.key).map_err(|e| e.to_string())?;
                digest.push_str(&c.fingerprint);
                Some(Arc::new(CertKey::new(c.chain, c.key)))
            }
            None => None,
        };
        Ok(Self {
            sni,
            verify,
            ca_file,
            client_files,
            material: Material { ca, client, digest },
        })
    }
}
