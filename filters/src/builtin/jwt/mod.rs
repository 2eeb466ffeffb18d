//! `jwt`: verifies `Authorization: Bearer` tokens and sets the caller's identity.
//!
//! - Algorithms: HS256/384/512, RS256/384/512, PS256/384/512, ES256/384, EdDSA
//!   (`jsonwebtoken` with its aws-lc backend, self-tested when the first filter is built).
//! - Keys: inline (`secret`, `pem`), `pem_file`, and/or a `jwks_url` fetched in the background.
//!   A key verifies only its own algorithm, so `alg: none` and algorithm confusion (an HS256
//!   token against an RSA public key) are refused. Keys are never taken from the token
//!   (`jku`, `x5u`, `jwk` headers are ignored).
//! - Claims: `exp` is required; `exp`/`nbf` must be numbers and are checked with
//!   `leeway_seconds`; `iss` and `aud` when configured; `required_claims` and
//!   `required_scopes` (from `scope` or `scp`) per filter.
//! - Tokens longer than `max_token_bytes` are refused before any parsing or crypto.
//! - `claims_to_headers` copies claims to upstream headers; those headers are always removed
//!   from the incoming request first, so a client cannot supply them.
//! - Verified tokens are cached (bounded, `cache_size`): an entry is used only until the
//!   token's `exp` and only while the key set is unchanged, so expiry and key rotation or
//!   revocation apply exactly as without the cache.
//!
//! Refusals are 401 with `WWW-Authenticate: Bearer` and a JSON reason (403 for missing
//! scopes, 503 while keys cannot be loaded).

mod jwks;
mod keys;

use std::collections::BTreeMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;
use async_trait::async_trait;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{request, HeaderName, HeaderValue, StatusCode};
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use self::jwks::{JwksConfig, JwksSource};
use self::keys::{parse_algorithm, static_keys, KeyMiss, KeySet, KeySettings};
use super::header_name;
use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow, Identity};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    keys: Vec<KeySettings>,
    jwks_url: Option<String>,
    #[serde(default = "default_jwks_refresh")]
    jwks_refresh_seconds: u64,
    #[serde(default = "default_jwks_min_refresh")]
    jwks_min_refresh_seconds: u64,
    #[serde(default = "default_jwks_wait")]
    jwks_wait_ms: u64,
    algorithms: Option<Vec<String>>,
    issuer: Option<OneOrMany>,
    audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_max_token")]
    max_token_bytes: usize,
    #[serde(default)]
    required_claims: Vec<String>,
    #[serde(default)]
    required_scopes: Vec<String>,
    #[serde(default)]
    claims_to_headers: BTreeMap<String, String>,
    #[serde(default = "yes")]
    forward_token: bool,
    #[serde(default = "default_cache")]
    cache_size: usize,
    #[serde(default = "default_realm")]
    realm: String,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(&self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s.clone()],
            Self::Many(v) => v.clone(),
        }
    }
}

fn default_jwks_refresh() -> u64 {
    300
}
fn default_jwks_min_refresh() -> u64 {
    10
}
fn default_jwks_wait() -> u64 {
    1000
}
fn default_leeway() -> u64 {
    30
}
fn default_max_token() -> usize {
    8192
}
fn default_cache() -> usize {
    10_000
}
fn default_realm() -> String {
    "gateway".into()
}
fn yes() -> bool {
    true
}

/// A successful verification, shared by every request presenting the same token.
#[derive(Debug)]
struct Verified {
    identity: Arc<Identity>,
    headers: Vec<(HeaderName, HeaderValue)>,
    /// The token's `exp`: the entry is never used at or after it.
    exp: u64,
    /// The key-set generation that verified it.
    generation: u64,
}

/// Why a token was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    Missing,
    Invalid(&'static str),
    Scope(String),
    KeysUnavailable,
}

/// The `jwt` filter.
pub struct JwtFilter {
    keys: Arc<ArcSwap<KeySet>>,
    jwks: Option<JwksSource>,
    jwks_wait: Duration,
    algorithms: Vec<Algorithm>,
    /// One prepared validation per allowed algorithm.
    validations: Vec<(Algorithm, Validation)>,
    max_token_bytes: usize,
    required_claims: Vec<String>,
    required_scopes: Vec<String>,
    claim_headers: Vec<(String, HeaderName)>,
    forward_token: bool,
    cache: Option<quick_cache::sync::Cache<Box<str>, Arc<Verified>>>,
    challenge: HeaderValue,
}

impl std::fmt::Debug for JwtFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("JwtFilter")
            .field("algorithms", &self.algorithms)
            .field("keys", &self.keys.load().keys.len())
            .field("jwks", &self.jwks.is_some())
            .field("cache", &self.cache.as_ref().map(|c| c.capacity()))
            .finish_non_exhaustive()
    }
}

/// Signs and verifies a token once per process, so a missing or conflicting crypto backend is
/// a clear config error at load rather than a panic on the first request.
fn crypto_self_test() -> Result<(), String> {
    static RESULT: OnceLock<Result<(), String>> = OnceLock::new();
    RESULT
        .get_or_init(|| {
            std::panic::catch_unwind(|| {
                let secret = b"self-test-secret-self-test-secret!";
                let claims = serde_json::json!({ "sub": "self-test", "exp": u64::MAX / 2 });
                let token = jsonwebtoken::encode(
                    &jsonwebtoken::Header::new(Algorithm::HS256),
                    &claims,
                    &jsonwebtoken::EncodingKey::from_secret(secret),
                )
                .map_err(|e| e.to_string())?;
                jsonwebtoken::decode::<Value>(
                    &token,
                    &jsonwebtoken::DecodingKey::from_secret(secret),
                    &Validation::new(Algorithm::HS256),
                )
                .map(|_| ())
                .map_err(|e| e.to_string())
            })
            .unwrap_or_else(|_| Err("the jsonwebtoken crypto backend panicked (is exactly one of its backend features enabled?)".into()))
        })
        .clone()
}

impl JwtFilter {
    /// Builds the filter from its settings (see the module docs and README).
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        crypto_self_test().map_err(|e| {
            FilterConfigError::new(
                format!("JWT verification is unusable in this build: {e}"),
                "build with exactly one jsonwebtoken crypto backend feature (this workspace uses `aws_lc_rs`)",
            )
        })?;
        let st: Settings = s.parse()?;
        let statics = static_keys(&st.keys, s)?;
        if statics.is_empty() && st.jwks_url.is_none() {
            return Err(FilterConfigError::new(
                "the jwt filter has no keys",
                "add keys = [{ algorithm = \"RS256\", pem_file = \"...\" }] or jwks_url = \"https://.../jwks.json\"",
            ));
        }
        let algorithms: Vec<Algorithm> = match &st.algorithms {
            Some(list) if list.is_empty() => {
                return Err(FilterConfigError::at_key(
                    "algorithms",
                    "algorithms is empty, so every token would be refused",
                    "list the algorithms your issuer signs with, e.g. [\"RS256\"]",
                ))
            }
            Some(list) => list
                .iter()
                .map(|a| parse_algorithm("algorithms", a))
                .collect::<Result<_, _>>()?,
            // Default: what the static keys verify, plus the asymmetric algorithms a JWKS
            // may publish (never HMAC from a JWKS).
            None => {
                let mut algs: Vec<Algorithm> = statics.iter().map(|k| k.algorithm).collect();
                if st.jwks_url.is_some() {
                    use Algorithm::*;
                    algs.extend([
                        RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA,
                    ]);
                }
                algs.sort_by_key(|a| format!("{a:?}"));
                algs.dedup();
                algs
            }
        };
        for k in &statics {
            if !algorithms.contains(&k.algorithm) {
                return Err(FilterConfigError::at_key(
                    "keys",
                    format!(
                        "key {} is for {:?}, which `algorithms` does not allow",
                        k.kid.as_deref().unwrap_or("(no kid)"),
                        k.algorithm
                    ),
                    "add the algorithm to `algorithms` or remove the key",
                ));
            }
        }
        let issuers = st.issuer.as_ref().map(OneOrMany::list);
        let audiences = st.audience.as_ref().map(OneOrMany::list);
        let validations = algorithms
            .iter()
            .map(|alg| {
                let mut v = Validation::new(*alg);
                v.leeway = st.leeway_seconds;
                v.validate_exp = true;
                v.validate_nbf = true;
                let mut required = vec!["exp"];
                if let Some(iss) = &issuers {
                    v.set_issuer(iss);
                    required.push("iss");
                }
                match &audiences {
                    Some(aud) => {
                        v.set_audience(aud);
                        required.push("aud");
                    }
                    None => v.validate_aud = false,
                }
                v.set_required_spec_claims(&required);
                (*alg, v)
            })
            .collect();
        let claim_headers = st
            .claims_to_headers
            .iter()
            .map(|(claim, header)| Ok((claim.clone(), header_name("claims_to_headers", header)?)))
            .collect::<Result<Vec<_>, FilterConfigError>>()?;
        if st.max_token_bytes < 64 {
            return Err(FilterConfigError::at_key(
                "max_token_bytes",
                format!(
                    "max_token_bytes = {} is too small for any JWT",
                    st.max_token_bytes
                ),
                "use the default (8192) or a few KiB",
            ));
        }
        let challenge =
            HeaderValue::from_str(&format!("Bearer realm=\"{}\"", st.realm.replace('"', "")))
                .map_err(|_| {
                    FilterConfigError::at_key(
                        "realm",
                        "realm is not valid in a header",
                        "use plain text",
                    )
                })?;
        let keys = Arc::new(ArcSwap::from_pointee(KeySet {
            keys: statics.clone(),
            generation: 1,
        }));
        let jwks = match &st.jwks_url {
            None => None,
            Some(url) => {
                if !(url.starts_with("https://") || url.starts_with("http://")) {
                    return Err(FilterConfigError::at_key(
                        "jwks_url",
                        format!("jwks_url `{url}` is not an http(s) URL"),
                        "give the issuer's JWKS URL, e.g. \"https://auth.example.com/.well-known/jwks.json\"",
                    ));
                }
                if st.jwks_refresh_seconds == 0 {
                    return Err(FilterConfigError::at_key(
                        "jwks_refresh_seconds",
                        "jwks_refresh_seconds = 0",
                        "use at least 1",
                    ));
                }
                let config = JwksConfig {
                    url: url.clone(),
                    refresh: Duration::from_secs(st.jwks_refresh_seconds),
                    min_refresh: Duration::from_secs(st.jwks_min_refresh_seconds),
                };
                Some(
                    JwksSource::start(config, statics, keys.clone()).map_err(|e| {
                        FilterConfigError::new(
                            format!("cannot start the JWKS fetcher: {e}"),
                            "check the process's thread limits",
                        )
                    })?,
                )
            }
        };
        Ok(Self {
            keys,
            jwks,
            jwks_wait: Duration::from_millis(st.jwks_wait_ms),
            algorithms,
            validations,
            max_token_bytes: st.max_token_bytes,
            required_claims: st.required_claims,
            required_scopes: st.required_scopes,
            claim_headers,
            forward_token: st.forward_token,
            cache: (st.cache_size > 0).then(|| quick_cache::sync::Cache::new(st.cache_size)),
            challenge,
        })
    }

    /// The bearer token of the request, if any.
    fn bearer(req: &request::Parts) -> Option<&str> {
        let v = req.headers.get(AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = v.split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|t| !t.is_empty())
    }

    fn cached(&self, token: &str, now: u64) -> Option<Arc<Verified>> {
        let hit = self.cache.as_ref()?.get(token)?;
        (now < hit.exp && hit.generation == self.keys.load().generation).then_some(hit)
    }

    /// Full verification of a token not in the cache.
    async fn verify(&self, token: &str) -> Result<Arc<Verified>, Refusal> {
        let header = jsonwebtoken::decode_header(token).map_err(|_| {
            Refusal::Invalid("the token is malformed or uses an unsupported algorithm")
        })?;
        let Some((_, validation)) = self.validations.iter().find(|(a, _)| *a == header.alg) else {
            return Err(Refusal::Invalid("the token's algorithm is not accepted"));
        };
        let mut keys = self.keys.load_full();
        if let Some(jwks) = &self.jwks {
            if !jwks.fetched_once() {
                jwks.refetch(self.jwks_wait).await;
                keys = self.keys.load_full();
                if !jwks.fetched_once() && keys.keys.is_empty() {
                    return Err(Refusal::KeysUnavailable);
                }
            }
        }
        let mut found = keys.find(header.kid.as_deref(), header.alg);
        if found.err() == Some(KeyMiss::UnknownKid) {
            if let Some(jwks) = &self.jwks {
                // Key rotation: the issuer may have published a new key since the last fetch.
                if jwks.refetch(self.jwks_wait).await {
                    keys = self.keys.load_full();
                    found = keys.find(header.kid.as_deref(), header.alg);
                }
            }
        }
        let key = found.map_err(|miss| {
            Refusal::Invalid(match miss {
                KeyMiss::UnknownKid => "the token's key id is unknown",
                KeyMiss::Ambiguous => "the token names no key id and several keys could verify it",
                KeyMiss::WrongAlgorithm => "the token's algorithm does not match its key",
            })
        })?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.key, validation)
            .map_err(|e| {
                use jsonwebtoken::errors::ErrorKind::*;
                Refusal::Invalid(match e.kind() {
                    ExpiredSignature => "the token has expired",
                    ImmatureSignature => "the token is not valid yet (nbf)",
                    InvalidIssuer => "the token's issuer is not accepted",
                    InvalidAudience => "the token's audience is not accepted",
                    // Checked after the signature, so the claims can be read to say which case.
                    MissingRequiredClaim(c) if present_but_not_numeric(token, c) => {
                        "a time claim is not a number"
                    }
                    MissingRequiredClaim(_) => "the token lacks a required claim (exp, iss or aud)",
                    InvalidSignature => "the token's signature is invalid",
                    InvalidClaimFormat(_) => "a time claim is not a number",
                    // A claims object that fails to parse: most often exp/nbf sent as strings.
                    Json(_) => "the token's claims are malformed (a time claim is not a number?)",
                    _ => "the token could not be verified",
                })
            })?;
        let claims = data.claims;
        // RFC 7519 NumericDate: numbers only. jsonwebtoken refuses string times too; this
        // keeps the rule independent of the library's choices.
        for time in ["exp", "nbf", "iat"] {
            if claims.get(time).is_some_and(|v| !v.is_number()) {
                return Err(Refusal::Invalid("a time claim is not a number"));
            }
        }
        let exp = claims
            .get("exp")
            .and_then(Value::as_f64)
            .map(|e| e.max(0.0) as u64)
            .ok_or(Refusal::Invalid(
                "the token lacks a required claim (exp, iss or aud)",
            ))?;
        for c in &self.required_claims {
            if claims.get(c).is_none_or(Value::is_null) {
                return Err(Refusal::Invalid(
                    "the token lacks a claim this route requires",
                ));
            }
        }
        if let Some(missing) = self.required_scopes.iter().find(|s| !has_scope(&claims, s)) {
            return Err(Refusal::Scope(missing.clone()));
        }
        let identity = Identity {
            subject: claims.get("sub").and_then(Value::as_str).map(str::to_owned),
            claims,
        };
        let headers = self
            .claim_headers
            .iter()
            .filter_map(|(claim, header)| {
                let v = identity.claim_text(claim)?;
                Some((header.clone(), HeaderValue::from_str(&v).ok()?))
            })
            .collect();
        Ok(Arc::new(Verified {
            identity: Arc::new(identity),
            headers,
            exp,
            generation: keys.generation,
        }))
    }

    fn refuse(&self, why: &Refusal) -> Flow {
        let (status, code, reason, challenge) = match why {
            Refusal::Missing => (
                StatusCode::UNAUTHORIZED,
                "missing_token",
                "this route needs an Authorization: Bearer token".to_owned(),
                self.challenge.clone(),
            ),
            Refusal::Invalid(reason) => (
                StatusCode::UNAUTHORIZED,
                "invalid_token",
                (*reason).to_owned(),
                self.challenge_with("invalid_token", reason),
            ),
            Refusal::Scope(scope) => (
                StatusCode::FORBIDDEN,
                "insufficient_scope",
                format!("the token lacks the scope `{scope}`"),
                self.challenge_with("insufficient_scope", "a required scope is missing"),
            ),
            Refusal::KeysUnavailable => {
                return Flow::Respond(reply::json_error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "jwks_unavailable",
                    "the token signing keys could not be loaded",
                ))
            }
        };
        let mut resp = reply::json_error(status, code, &reason);
        resp.headers_mut().insert(WWW_AUTHENTICATE, challenge);
        Flow::Respond(resp)
    }

    fn challenge_with(&self, error: &str, description: &str) -> HeaderValue {
        let base = self.challenge.to_str().unwrap_or("Bearer");
        HeaderValue::from_str(&format!(
            "{base}, error=\"{error}\", error_description=\"{description}\""
        ))
        .unwrap_or_else(|_| self.challenge.clone())
    }
}

/// Whether the (already signature-checked) token has `claim` with a non-numeric value.
fn present_but_not_numeric(token: &str, claim: &str) -> bool {
    jsonwebtoken::dangerous::insecure_decode_claims::<Map<String, Value>>(token)
        .is_ok_and(|c| c.get(claim).is_some_and(|v| !v.is_number()))
}

fn has_scope(claims: &Map<String, Value>, scope: &str) -> bool {
    let in_value = |v: &Value| match v {
        Value::String(s) => s.split(' ').any(|x| x == scope),
        Value::Array(a) => a.iter().any(|x| x.as_str() == Some(scope)),
        _ => false,
    };
    claims.get("scope").is_some_and(in_value) || claims.get("scp").is_some_and(in_value)
}

#[async_trait]
impl Filter for JwtFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        // Identity headers come only from a verified token, never from the client.
        for (_, h) in &self.claim_headers {
            req.headers.remove(h);
        }
        let Some(token) = Self::bearer(req) else {
            return self.refuse(&Refusal::Missing);
        };
        if token.len() > self.max_token_bytes {
            return self.refuse(&Refusal::Invalid(
                "the token is larger than this gateway accepts",
            ));
        }
        let now = jsonwebtoken::get_current_timestamp();
        let verified = match self.cached(token, now) {
            Some(v) => v,
            None => match self.verify(token).await {
                Ok(v) => {
                    if let Some(cache) = &self.cache {
                        if now < v.exp {
                            cache.insert(token.into(), v.clone());
                        }
                    }
                    v
                }
                Err(why) => return self.refuse(&why),
            },
        };
        for (h, v) in &verified.headers {
            req.headers.insert(h.clone(), v.clone());
        }
        if !self.forward_token {
            req.headers.remove(AUTHORIZATION);
        }
        ctx.set_identity(verified.identity.clone());
        Flow::Continue
    }
}

#[cfg(test)]
mod tests;
