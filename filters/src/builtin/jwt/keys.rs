//! Verification keys: from inline config or PEM files (static) and from JWKS documents.

use std::path::PathBuf;
use std::str::FromStr;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, AlgorithmFamily, DecodingKey};
use serde::Deserialize;

use crate::{FilterConfigError, FilterSettings};

/// Shortest HMAC secret accepted (RFC 7518 3.2: at least the hash size; 32 bytes for HS256).
const MIN_SECRET_BYTES: usize = 32;

/// One key as written in the filter's settings.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct KeySettings {
    kid: Option<String>,
    algorithm: String,
    secret: Option<String>,
    pem: Option<String>,
    pem_file: Option<PathBuf>,
}

/// A verification key and the one algorithm it may verify.
#[derive(Clone)]
pub(super) struct VerifyKey {
    pub(super) kid: Option<String>,
    pub(super) algorithm: Algorithm,
    pub(super) key: DecodingKey,
}

impl std::fmt::Debug for VerifyKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VerifyKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// The keys in force, with a generation that changes whenever the set changes (cached
/// verifications of an older generation are not trusted).
#[derive(Debug, Default)]
pub(super) struct KeySet {
    pub(super) keys: Vec<VerifyKey>,
    pub(super) generation: u64,
}

/// Why no key could verify a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum KeyMiss {
    /// The token's `kid` names no key we have.
    UnknownKid,
    /// No `kid`, and not exactly one key for the token's algorithm.
    Ambiguous,
    /// The key named by `kid` is for another algorithm (algorithm confusion).
    WrongAlgorithm,
}

impl KeySet {
    /// The key for a token with `kid` and `alg`. A key verifies only its own algorithm, so an
    /// HS256 token naming an RSA key is refused rather than checked with the public key as an
    /// HMAC secret.
    pub(super) fn find(&self, kid: Option<&str>, alg: Algorithm) -> Result<&VerifyKey, KeyMiss> {
        match kid {
            Some(kid) => {
                let k = self
                    .keys
                    .iter()
                    .find(|k| k.kid.as_deref() == Some(kid))
                    .ok_or(KeyMiss::UnknownKid)?;
                if k.algorithm == alg {
                    Ok(k)
                } else {
                    Err(KeyMiss::WrongAlgorithm)
                }
            }
            None => {
                let mut candidates = self.keys.iter().filter(|k| k.algorithm == alg);
                match (candidates.next(), candidates.next()) {
                    (Some(k), None) => Ok(k),
                    (None, _) if !self.keys.is_empty() => Err(KeyMiss::WrongAlgorithm),
                    _ => Err(KeyMiss::Ambiguous),
                }
            }
        }
    }
}

pub(super) fn parse_algorithm(key: &str, s: &str) -> Result<Algorithm, FilterConfigError> {
    Algorithm::from_str(s).map_err(|_| {
        FilterConfigError::at_key(
            key,
            format!("`{s}` is not a supported JWT algorithm"),
            "use HS256, HS384, HS512, RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384 or EdDSA",
        )
    })
}

/// Builds the statically configured keys.
/// The public keys in `config/dev-keys` (their private halves are in the repository).
const DEV_KEYS: [&str; 4] = [
    include_str!("../../../../config/dev-keys/rs256.pub.pem"),
    include_str!("../../../../config/dev-keys/rs256-b.pub.pem"),
    include_str!("../../../../config/dev-keys/es256.pub.pem"),
    include_str!("../../../../config/dev-keys/ed25519.pub.pem"),
];

/// The base64 body of a PEM document, without armour lines or whitespace.
fn pem_body(pem: &[u8]) -> String {
    String::from_utf8_lossy(pem)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .flat_map(|l| l.chars().filter(|c| !c.is_whitespace()))
        .collect()
}

/// Whether `pem` is one of the published development keys (wherever the file was copied).
pub(super) fn is_dev_key(pem: &[u8]) -> bool {
    let body = pem_body(pem);
    !body.is_empty() && DEV_KEYS.iter().any(|k| pem_body(k.as_bytes()) == body)
}

pub(super) fn static_keys(
    list: &[KeySettings],
    settings: &FilterSettings,
) -> Result<Vec<VerifyKey>, FilterConfigError> {
    list.iter()
        .map(|k| {
            let algorithm = parse_algorithm("keys", &k.algorithm)?;
            let name = k.kid.as_deref().unwrap_or("(no kid)");
            let pem = match (&k.pem, &k.pem_file) {
                (Some(p), None) => Some(p.as_bytes().to_vec()),
                (None, Some(f)) => {
                    let path = settings.resolve_path(f);
                    Some(std::fs::read(&path).map_err(|e| {
                        FilterConfigError::at_key(
                            "keys",
                            format!("key {name}: cannot read `{}`: {e}", path.display()),
                            "give the path of a PEM public key (relative paths are relative to the config file)",
                        )
                    })?)
                }
                (Some(_), Some(_)) => {
                    return Err(FilterConfigError::at_key(
                        "keys",
                        format!("key {name} sets both pem and pem_file"),
                        "keep one of them",
                    ))
                }
                (None, None) => None,
            };
            if let Some(pem) = &pem {
                if !settings.dev_mode() && is_dev_key(pem) {
                    return Err(FilterConfigError::at_key(
                        "keys",
                        format!(
                            "key {name} is a development key published in config/dev-keys: anyone can sign tokens it accepts"
                        ),
                        "use your own key pair; on a developer machine only, run the gateway with --dev (or GATEWAY_DEV=1)",
                    ));
                }
            }
            let bad = |e: jsonwebtoken::errors::Error| {
                FilterConfigError::at_key(
                    "keys",
                    format!("key {name}: not a usable {algorithm:?} public key: {e}"),
                    "give a PEM public key (-----BEGIN PUBLIC KEY-----) of the algorithm's type",
                )
            };
            let key = match (algorithm.family(), &k.secret, pem) {
                (AlgorithmFamily::Hmac, Some(secret), None) => {
                    if secret.len() < MIN_SECRET_BYTES {
                        return Err(FilterConfigError::at_key(
                            "keys",
                            format!("key {name}: the HMAC secret is {} bytes; at least {MIN_SECRET_BYTES} are required", secret.len()),
                            "use a long random secret (e.g. `openssl rand -base64 48`)",
                        ));
                    }
                    DecodingKey::from_secret(secret.as_bytes())
                }
                (AlgorithmFamily::Rsa, None, Some(pem)) => DecodingKey::from_rsa_pem(&pem).map_err(bad)?,
                (AlgorithmFamily::Ec, None, Some(pem)) => DecodingKey::from_ec_pem(&pem).map_err(bad)?,
                (AlgorithmFamily::Ed, None, Some(pem)) => DecodingKey::from_ed_pem(&pem).map_err(bad)?,
                (AlgorithmFamily::Hmac, _, _) => {
                    return Err(FilterConfigError::at_key(
                        "keys",
                        format!("key {name}: {algorithm:?} needs `secret` (and no pem)"),
                        "give the shared secret as secret = \"...\"",
                    ))
                }
                _ => {
                    return Err(FilterConfigError::at_key(
                        "keys",
                        format!("key {name}: {algorithm:?} needs a public key in `pem` or `pem_file` (and no secret)"),
                        "give the PEM public key",
                    ))
                }
            };
            Ok(VerifyKey {
                kid: k.kid.clone(),
                algorithm,
                key,
            })
        })
        .collect()
}

/// The keys of a JWKS document. Keys without an `alg` get their family's default; keys that
/// cannot verify (encryption-only, unsupported) are skipped.
pub(super) fn jwks_keys(doc: &JwkSet) -> Vec<VerifyKey> {
    doc.keys
        .iter()
        .filter_map(|jwk| {
            let algorithm = match &jwk.common.key_algorithm {
                Some(ka) => serde_json::to_value(ka)
                    .ok()
                    .and_then(|v| v.as_str().and_then(|s| Algorithm::from_str(s).ok()))?,
                None => match &jwk.algorithm {
                    jsonwebtoken::jwk::AlgorithmParameters::RSA(_) => Algorithm::RS256,
                    jsonwebtoken::jwk::AlgorithmParameters::EllipticCurve(p) => match p.curve {
                        jsonwebtoken::jwk::EllipticCurve::P384 => Algorithm::ES384,
                        _ => Algorithm::ES256,
                    },
                    jsonwebtoken::jwk::AlgorithmParameters::OctetKeyPair(_) => Algorithm::EdDSA,
                    // A JWKS publishing a shared secret is a misconfiguration; never use it.
                    _ => return None,
                },
            };
            if algorithm.family() == AlgorithmFamily::Hmac {
                return None;
            }
            let key = DecodingKey::from_jwk(jwk).ok()?;
            if key.family() != algorithm.family() {
                return None;
            }
            Some(VerifyKey {
                kid: jwk.common.key_id.clone(),
                algorithm,
                key,
            })
        })
        .collect()
}
