//! Certificates and keys: loading a PEM pair and checking it (the key matches, the chain is
//! in date), the names a certificate serves, and the per-listener set chosen by SNI.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use openssl::asn1::Asn1Time;
use pingora::tls::hash::MessageDigest;
use pingora::tls::nid::Nid;
use pingora::tls::pkey::{Id, PKey, Private};
use pingora::tls::x509::X509;
use serde::Serialize;

/// Why a certificate or key was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum CertError {
    /// A file could not be read.
    #[error("cannot read {what} `{path}`: {error}")]
    Read {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// The OS error.
        error: String,
    },
    /// The certificate file holds no PEM certificate.
    #[error("`{0}` holds no PEM certificate")]
    NoCertificate(String),
    /// A PEM block could not be parsed.
    #[error("`{path}` is not a valid PEM {what}: {error}")]
    Parse {
        /// "certificate" or "private key".
        what: &'static str,
        /// The file.
        path: String,
        /// The parser's message.
        error: String,
    },
    /// The key is not the certificate's.
    #[error("the private key `{key}` does not match the certificate `{cert}`")]
    KeyMismatch {
        /// Certificate file.
        cert: String,
        /// Key file.
        key: String,
    },
    /// The certificate's validity ended.
    #[error("the certificate `{path}` expired {ago} ago (not after {not_after})")]
    Expired {
        /// The file.
        path: String,
        /// When it ended.
        not_after: String,
        /// How long ago, human-readable.
        ago: String,
    },
    /// The certificate's validity has not begun.
    #[error("the certificate `{path}` is not valid before {not_before}")]
    NotYetValid {
        /// The file.
        path: String,
        /// When it begins.
        not_before: String,
    },
}

/// A certificate chain with its private key, checked and ready to serve.
#[derive(Debug)]
pub(crate) struct CertifiedKey {
    /// Leaf first, then intermediates.
    pub(crate) chain: Vec<X509>,
    /// The leaf's private key.
    pub(crate) key: PKey<Private>,
    /// DNS names the leaf covers (SANs, else the common name), lowercase; `*.` wildcards kept.
    pub(crate) names: Vec<String>,
    /// Unix seconds.
    pub(crate) not_before: i64,
    /// Unix seconds.
    pub(crate) not_after: i64,
    /// SHA-256 of the leaf's DER, hex.
    pub(crate) fingerprint: String,
    /// "ECDSA P-256", "RSA 2048", ...
    pub(crate) algorithm: String,
    /// The leaf's serial number, hex.
    pub(crate) serial: String,
    /// The issuer's distinguished name.
    pub(crate) issuer: String,
    /// Where it came from: the certificate file, or "acme".
    pub(crate) source: String,
}

/// Seconds since the Unix epoch, now.
pub(crate) fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

/// Unix seconds of an ASN.1 time.
fn unix_of(t: &openssl::asn1::Asn1TimeRef) -> i64 {
    let epoch = match Asn1Time::from_unix(0) {
        Ok(e) => e,
        Err(_) => return 0,
    };
    match epoch.diff(t) {
        Ok(d) => i64::from(d.days) * 86_400 + i64::from(d.secs),
        Err(_) => 0,
    }
}

/// "3 days", "5 hours", "12 minutes".
pub(crate) fn human_duration(secs: i64) -> String {
    let s = secs.unsigned_abs();
    match s {
        0..=119 => format!("{s} seconds"),
        120..=7199 => format!("{} minutes", s / 60),
        7200..=172_799 => format!("{} hours", s / 3600),
        _ => format!("{} days", s / 86_400),
    }
}

/// An RFC 3339 date for unix seconds (UTC).
pub(crate) fn rfc3339(unix: i64) -> String {
    let days = unix.div_euclid(86_400);
    let secs = unix.rem_euclid(86_400);
    // Civil-from-days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = if m <= 2 { y + 1 } else { y };
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

fn read(path: &Path, what: &'static str) -> Result<Vec<u8>, CertError> {
    std::fs::read(path).map_err(|e| CertError::Read {
        what,
        path: path.display().to_string(),
        error: e.to_string(),
    })
}

/// Loads and checks the PEM certificate chain at `cert` and its private key at `key`.
pub(crate) fn load_pair(cert: &Path, key: &Path) -> Result<CertifiedKey, CertError> {
    let chain = read(cert, "certificate")?;
    let key_pem = read(key, "private key")?;
    from_pem(
        &chain,
        &key_pem,
        &cert.display().to_string(),
        &key.display().to_string(),
        unix_now(),
    )
}

/// Checks a PEM chain and key given as bytes (`cert_name`/`key_name` name them in errors),
/// at `now` (unix seconds).
pub(crate) fn from_pem(
    chain_pem: &[u8],
    key_pem: &[u8],
    cert_name: &str,
    key_name: &str,
    now: i64,
) -> Result<CertifiedKey, CertError> {
    let chain = X509::stack_from_pem(chain_pem).map_err(|e| CertError::Parse {
        what: "certificate",
        path: cert_name.to_owned(),
        error: first_reason(&e),
    })?;
    let Some(leaf) = chain.first() else {
        return Err(CertError::NoCertificate(cert_name.to_owned()));
    };
    let key = PKey::private_key_from_pem(key_pem).map_err(|e| CertError::Parse {
        what: "private key",
        path: key_name.to_owned(),
        error: first_reason(&e),
    })?;
    let matches = leaf
        .public_key()
        .map(|public| public.public_eq(&key))
        .unwrap_or(false);
    if !matches {
        return Err(CertError::KeyMismatch {
            cert: cert_name.to_owned(),
            key: key_name.to_owned(),
        });
    }
    let not_before = unix_of(leaf.not_before());
    let not_after = unix_of(leaf.not_after());
    if not_after <= now {
        return Err(CertError::Expired {
            path: cert_name.to_owned(),
            not_after: rfc3339(not_after),
            ago: human_duration(now - not_after),
        });
    }
    // A minute of clock skew between the issuer and this host is tolerated.
    if not_before > now + 60 {
        return Err(CertError::NotYetValid {
            path: cert_name.to_owned(),
            not_before: rfc3339(not_before),
        });
    }
    let fingerprint = leaf
        .digest(MessageDigest::sha256())
        .map(|d| hex(&d))
        .unwrap_or_default();
    let algorithm = algorithm(&key);
    let serial = leaf
        .serial_number()
        .to_bn()
        .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
        .unwrap_or_default();
    let issuer = name_text(leaf.issuer_name());
    let names = dns_names(leaf);
    Ok(CertifiedKey {
        chain,
        key,
        names,
        not_before,
        not_after,
        fingerprint,
        algorithm,
        serial,
        issuer,
        source: cert_name.to_owned(),
    })
}

fn first_reason(e: &pingora::tls::error::ErrorStack) -> String {
    e.errors()
        .first()
        .and_then(|e| e.reason().map(str::to_owned))
        .unwrap_or_else(|| "no PEM block of the expected type".to_owned())
}

/// Lowercase hex.
pub(crate) fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn algorithm(key: &PKey<Private>) -> String {
    match key.id() {
        Id::EC => {
            let curve = key
                .ec_key()
                .ok()
                .and_then(|k| k.group().curve_name())
                .map(|n| match n {
                    Nid::X9_62_PRIME256V1 => "P-256".to_owned(),
                    Nid::SECP384R1 => "P-384".to_owned(),
                    Nid::SECP521R1 => "P-521".to_owned(),
                    other => other.short_name().unwrap_or("?").to_owned(),
                })
                .unwrap_or_else(|| "?".to_owned());
            format!("ECDSA {curve}")
        }
        Id::RSA => format!("RSA {}", key.bits()),
        Id::ED25519 => "Ed25519".to_owned(),
        _ => format!("{:?}", key.id()),
    }
}

/// A distinguished name as `CN=a, O=b`.
pub(crate) fn name_text(name: &pingora::tls::x509::X509NameRef) -> String {
    name.entries()
        .map(|e| {
            let key = e.object().nid().short_name().unwrap_or("?");
            let value = e.data().to_string().unwrap_or_default();
            format!("{key}={value}")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The DNS names a certificate covers: its DNS SANs, else its common name.
pub(crate) fn dns_names(cert: &X509) -> Vec<String> {
    let mut names: Vec<String> = cert
        .subject_alt_names()
        .map(|sans| {
            sans.iter()
                .filter_map(|n| n.dnsname().map(str::to_ascii_lowercase))
                .collect()
        })
        .unwrap_or_default();
    if names.is_empty() {
        names.extend(
            cert.subject_name()
                .entries_by_nid(Nid::COMMONNAME)
                .filter_map(|e| e.data().to_string().ok().map(|s| s.to_ascii_lowercase())),
        );
    }
    names
}

/// The PEM files of one certificate.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PairFiles {
    /// Certificate chain.
    pub(crate) cert: PathBuf,
    /// Private key.
    pub(crate) key: PathBuf,
}

/// The certificates of one listener, chosen by the SNI name of each handshake.
#[derive(Debug, Default)]
pub(crate) struct CertSet {
    /// Every certificate, in configuration order (files first, then ACME's).
    pub(crate) all: Vec<Arc<CertifiedKey>>,
    exact: HashMap<String, Vec<usize>>,
    /// Keyed by the part after `*.`.
    wildcard: HashMap<String, Vec<usize>>,
    /// Indexes of the certificates for clients without SNI or with an unknown name.
    default: Vec<usize>,
}

impl CertSet {
    /// A set of `certs`; the first one (and any of another key type for the same names) is
    /// the default.
    pub(crate) fn new(certs: Vec<Arc<CertifiedKey>>) -> Self {
        let mut set = Self {
            all: certs,
            ..Self::default()
        };
        for (i, c) in set.all.iter().enumerate() {
            for name in &c.names {
                let map = match name.strip_prefix("*.") {
                    Some(rest) => set.wildcard.entry(rest.to_owned()).or_default(),
                    None => set.exact.entry(name.clone()).or_default(),
                };
                if !map.contains(&i) {
                    map.push(i);
                }
            }
        }
        if let Some(first) = set.all.first() {
            // The default is the first certificate and those of other key types that serve
            // exactly its names (an RSA and an ECDSA certificate side by side).
            let names = &first.names;
            set.default = set
                .all
                .iter()
                .enumerate()
                .filter(|(i, c)| *i == 0 || (&c.names == names))
                .map(|(i, _)| i)
                .collect();
        }
        set
    }

    /// The certificates for `sni` (one per key type at most): an exact name, else the
    /// wildcard one label up, else the default. The boolean says whether a name matched.
    pub(crate) fn select(&self, sni: Option<&str>) -> (Vec<&Arc<CertifiedKey>>, bool) {
        if let Some(sni) = sni {
            let sni = sni.trim_end_matches('.').to_ascii_lowercase();
            let found = self.exact.get(&sni).or_else(|| {
                sni.split_once('.')
                    .and_then(|(_, parent)| self.wildcard.get(parent))
            });
            if let Some(found) = found {
                return (self.by_key_type(found), true);
            }
        }
        (self.by_key_type(&self.default), false)
    }

    /// The first certificate of each key type among `indexes`: OpenSSL then serves the RSA
    /// or the ECDSA one by what the client supports.
    fn by_key_type(&self, indexes: &[usize]) -> Vec<&Arc<CertifiedKey>> {
        let mut out: Vec<&Arc<CertifiedKey>> = Vec::with_capacity(2);
        for &i in indexes {
            let c = &self.all[i];
            if !out.iter().any(|o| o.key.id() == c.key.id()) {
                out.push(c);
            }
        }
        out
    }
}

/// One certificate as `/certificates` and the metrics describe it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertInfo {
    /// Names it serves.
    pub(crate) names: Vec<String>,
    /// Where it came from.
    pub(crate) source: String,
    /// Key algorithm.
    pub(crate) algorithm: String,
    /// Issuer DN.
    pub(crate) issuer: String,
    /// Serial, hex.
    pub(crate) serial: String,
    /// SHA-256 fingerprint of the leaf, hex.
    pub(crate) fingerprint_sha256: String,
    /// RFC 3339.
    pub(crate) not_before: String,
    /// RFC 3339.
    pub(crate) not_after: String,
    /// Seconds until it expires (negative once expired).
    pub(crate) expires_in_seconds: i64,
    /// Whether it is among the certificates served without a matching SNI name.
    pub(crate) default: bool,
}

impl CertSet {
    /// What `/certificates` shows for each certificate.
    pub(crate) fn describe(&self, now: i64) -> Vec<CertInfo> {
        self.all
            .iter()
            .enumerate()
            .map(|(i, c)| CertInfo {
                names: c.names.clone(),
                source: c.source.clone(),
                algorithm: c.algorithm.clone(),
                issuer: c.issuer.clone(),
                serial: c.serial.clone(),
                fingerprint_sha256: c.fingerprint.clone(),
                not_before: rfc3339(c.not_before),
                not_after: rfc3339(c.not_after),
                expires_in_seconds: c.not_after - now,
                default: self.default.contains(&i),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().expect("key");
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        let cert = params.self_signed(&key).expect("cert");
        (cert.pem(), key.serialize_pem())
    }

    fn load(names: &[&str]) -> Arc<CertifiedKey> {
        let (c, k) = pair(names);
        Arc::new(from_pem(c.as_bytes(), k.as_bytes(), "c", "k", unix_now()).expect("valid"))
    }

    #[test]
    fn selection_is_exact_then_one_label_wildcard_then_default() {
        let set = CertSet::new(vec![
            load(&["default.test"]),
            load(&["app.test"]),
            load(&["*.wild.test"]),
        ]);
        let name = |sni: Option<&str>| {
            let (c, matched) = set.select(sni);
            (c[0].names[0].clone(), matched)
        };
        assert_eq!(name(Some("APP.test.")), ("app.test".into(), true));
        assert_eq!(name(Some("x.wild.test")), ("*.wild.test".into(), true));
        assert_eq!(name(Some("a.b.wild.test")), ("default.test".into(), false));
        assert_eq!(name(Some("wild.test")), ("default.test".into(), false));
        assert_eq!(name(None), ("default.test".into(), false));
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let (cert, _) = pair(&["a.test"]);
        let (_, other_key) = pair(&["b.test"]);
        let e = from_pem(
            cert.as_bytes(),
            other_key.as_bytes(),
            "a.pem",
            "b.key",
            unix_now(),
        )
        .expect_err("mismatch");
        assert!(matches!(e, CertError::KeyMismatch { .. }), "{e}");
        let e = from_pem(b"not pem", b"", "x.pem", "x.key", unix_now()).expect_err("garbage");
        assert!(e.to_string().contains("x.pem"), "{e}");
    }

    #[test]
    fn expiry_is_checked_against_now() {
        let (cert, key) = pair(&["a.test"]);
        let c = from_pem(cert.as_bytes(), key.as_bytes(), "a", "k", unix_now()).expect("valid");
        let later = c.not_after + 10;
        let e =
            from_pem(cert.as_bytes(), key.as_bytes(), "a.pem", "k", later).expect_err("expired");
        assert!(e.to_string().contains("expired 10 seconds ago"), "{e}");
    }

    #[test]
    fn dates_render_as_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_798_871_346), "2027-01-02T06:29:06Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }
}
