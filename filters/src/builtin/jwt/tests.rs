//! Unit tests of the jwt filter: every accepted algorithm, and the attacks it must refuse.

use jsonwebtoken::{EncodingKey, Header};
use serde_json::json;

use super::*;

const KEYS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../config/dev-keys");

fn pem(name: &str) -> Vec<u8> {
    std::fs::read(format!("{KEYS}/{name}")).expect("dev key")
}

const SECRET: &str = "an-hmac-secret-that-is-long-enough-0123456789";

fn settings(extra: &str) -> FilterSettings {
    let text = format!(
        r#"
        keys = [
          {{ kid = "rsa", algorithm = "RS256", pem_file = "rs256.pub.pem" }},
          {{ kid = "pss", algorithm = "PS256", pem_file = "rs256.pub.pem" }},
          {{ kid = "ec", algorithm = "ES256", pem_file = "es256.pub.pem" }},
          {{ kid = "ed", algorithm = "EdDSA", pem_file = "ed25519.pub.pem" }},
          {{ kid = "hs", algorithm = "HS256", secret = "{SECRET}" }},
        ]
        issuer = "https://auth.test"
        audience = "playback"
        claims_to_headers = {{ sub = "x-user-id", plan = "x-user-plan" }}
        {extra}
        "#
    );
    let table: toml::Table = text.parse().expect("toml");
    // The test keys are the published development keys.
    FilterSettings::new(table, KEYS).with_dev_mode(true)
}

fn filter(extra: &str) -> JwtFilter {
    JwtFilter::from_settings(&settings(extra)).expect("valid settings")
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn claims() -> Value {
    json!({ "sub": "user-1", "plan": "premium", "iss": "https://auth.test", "aud": "playback",
            "exp": now() + 600, "scope": "play browse" })
}

fn sign(alg: Algorithm, kid: Option<&str>, claims: &Value) -> String {
    let key = match alg {
        Algorithm::HS256 => EncodingKey::from_secret(SECRET.as_bytes()),
        Algorithm::RS256 | Algorithm::PS256 => {
            EncodingKey::from_rsa_pem(&pem("rs256.key.pem")).expect("rsa")
        }
        Algorithm::ES256 => EncodingKey::from_ec_pem(&pem("es256.key.pem")).expect("ec"),
        Algorithm::EdDSA => EncodingKey::from_ed_pem(&pem("ed25519.key.pem")).expect("ed"),
        other => panic!("no test key for {other:?}"),
    };
    let mut h = Header::new(alg);
    h.kid = kid.map(str::to_owned);
    jsonwebtoken::encode(&h, claims, &key).expect("sign")
}

fn request(token: &str) -> request::Parts {
    let (mut req, _) = http::Request::new(()).into_parts();
    req.headers.insert(
        AUTHORIZATION,
        HeaderValue::from_str(&format!("Bearer {token}")).expect("ascii"),
    );
    req
}

/// Runs the filter; `Ok(request)` when it continued, `Err((status, body))` when it answered.
async fn run(
    f: &JwtFilter,
    mut req: request::Parts,
) -> Result<(request::Parts, FilterContext), (u16, Value)> {
    let mut ctx = FilterContext::default();
    match f.on_request(&mut req, &mut ctx).await {
        Flow::Continue => Ok((req, ctx)),
        Flow::Respond(r) => {
            if r.status() == 401 {
                assert!(r.headers()[WWW_AUTHENTICATE]
                    .to_str()
                    .expect("ascii")
                    .starts_with("Bearer realm=\"gateway\""));
            }
            Err((
                r.status().as_u16(),
                serde_json::from_slice(r.body()).expect("json"),
            ))
        }
    }
}

async fn refused_because(f: &JwtFilter, token: &str) -> String {
    match run(f, request(token)).await {
        Ok(_) => panic!("token accepted: {token}"),
        Err((status, body)) => {
            assert_eq!(status, 401, "{body}");
            body["reason"].as_str().unwrap_or_default().to_owned()
        }
    }
}

#[tokio::test]
async fn accepts_every_supported_algorithm() {
    let f = filter("");
    for (alg, kid) in [
        (Algorithm::RS256, "rsa"),
        (Algorithm::PS256, "pss"),
        (Algorithm::ES256, "ec"),
        (Algorithm::EdDSA, "ed"),
        (Algorithm::HS256, "hs"),
    ] {
        let token = sign(alg, Some(kid), &claims());
        let mut req = request(&token);
        req.headers
            .insert("x-user-id", HeaderValue::from_static("spoofed"));
        let (req, ctx) = run(&f, req)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e:?}"));
        assert_eq!(req.headers["x-user-id"], "user-1", "{alg:?}");
        assert_eq!(req.headers["x-user-plan"], "premium");
        assert_eq!(
            ctx.identity().and_then(|i| i.subject.as_deref()),
            Some("user-1")
        );
    }
}

#[tokio::test]
async fn spoofed_identity_headers_are_removed_even_when_refused() {
    let f = filter("");
    let mut req = http::Request::new(()).into_parts().0;
    req.headers
        .insert("x-user-id", HeaderValue::from_static("admin"));
    let mut ctx = FilterContext::default();
    assert!(
        matches!(f.on_request(&mut req, &mut ctx).await, Flow::Respond(r) if r.status() == 401)
    );
    assert!(req.headers.get("x-user-id").is_none());
}

#[tokio::test]
async fn refuses_time_problems() {
    let f = filter("leeway_seconds = 5");
    let mut c = claims();
    c["exp"] = json!(now() - 60);
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("expired")
    );
    let mut c = claims();
    c["nbf"] = json!(now() + 600);
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("not valid yet")
    );
    let mut c = claims();
    c["exp"] = json!((now() + 600).to_string());
    let why = refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c)).await;
    assert!(why.contains("not a number"), "{why}");
    let mut c = claims();
    c["nbf"] = json!("0");
    let why = refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c)).await;
    assert!(why.contains("not a number"), "{why}");
    let mut c = claims();
    c.as_object_mut().expect("object").remove("exp");
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("required claim")
    );
    // Within the leeway an expired token still passes.
    let mut c = claims();
    c["exp"] = json!(now() - 2);
    assert!(run(&f, request(&sign(Algorithm::RS256, Some("rsa"), &c)))
        .await
        .is_ok());
}

#[tokio::test]
async fn refuses_wrong_issuer_audience_and_missing_claims() {
    let f = filter("required_claims = [\"plan\"]\nrequired_scopes = [\"play\"]");
    let mut c = claims();
    c["iss"] = json!("https://evil.test");
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("issuer")
    );
    let mut c = claims();
    c["aud"] = json!("other");
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("audience")
    );
    let mut c = claims();
    c.as_object_mut().expect("object").remove("plan");
    assert!(
        refused_because(&f, &sign(Algorithm::RS256, Some("rsa"), &c))
            .await
            .contains("requires")
    );
    let mut c = claims();
    c["scope"] = json!("browse");
    let Err((status, body)) = run(&f, request(&sign(Algorithm::RS256, Some("rsa"), &c))).await
    else {
        panic!("missing scope accepted");
    };
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    let mut c = claims();
    c.as_object_mut().expect("object").remove("scope");
    c["scp"] = json!(["play"]);
    assert!(
        run(&f, request(&sign(Algorithm::RS256, Some("rsa"), &c)))
            .await
            .is_ok(),
        "scp array"
    );
}

fn b64(v: &Value) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(serde_json::to_vec(v).expect("json"))
}

#[tokio::test]
async fn refuses_alg_none_confusion_forgery_and_embedded_keys() {
    let f = filter("");
    // alg: none, no signature.
    let none = format!(
        "{}.{}.",
        b64(&json!({"alg": "none", "typ": "JWT"})),
        b64(&claims())
    );
    assert!(refused_because(&f, &none).await.contains("malformed"));
    // HS256 signed with the RSA public key's PEM as the HMAC secret, naming the RSA key.
    let public = pem("rs256.pub.pem");
    let mut h = Header::new(Algorithm::HS256);
    h.kid = Some("rsa".into());
    let confused =
        jsonwebtoken::encode(&h, &claims(), &EncodingKey::from_secret(&public)).expect("sign");
    assert!(refused_because(&f, &confused)
        .await
        .contains("does not match its key"));
    // Signed with a key the gateway does not trust, claiming ours.
    let attacker = EncodingKey::from_rsa_pem(&pem("attacker-rs256.key.pem")).expect("rsa");
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("rsa".into());
    let forged = jsonwebtoken::encode(&h, &claims(), &attacker).expect("sign");
    assert!(refused_because(&f, &forged).await.contains("signature"));
    // The attacker's key embedded in the token (jwk) and pointed at (jku, x5u): ignored.
    let mut h = Header::new(Algorithm::RS256);
    h.kid = Some("attacker".into());
    h.jku = Some("http://127.0.0.1:1/jwks.json".into());
    h.x5u = Some("http://127.0.0.1:1/cert.pem".into());
    let embedded = jsonwebtoken::encode(&h, &claims(), &attacker).expect("sign");
    assert!(refused_because(&f, &embedded)
        .await
        .contains("key id is unknown"));
    // A tampered payload keeps the original signature.
    let good = sign(Algorithm::RS256, Some("rsa"), &claims());
    let parts: Vec<&str> = good.split('.').collect();
    let mut c = claims();
    c["sub"] = json!("admin");
    let tampered = format!("{}.{}.{}", parts[0], b64(&c), parts[2]);
    assert!(refused_because(&f, &tampered).await.contains("signature"));
}

#[tokio::test]
async fn oversized_and_missing_tokens() {
    let f = filter("max_token_bytes = 256");
    let big = sign(Algorithm::RS256, Some("rsa"), &claims());
    assert!(big.len() > 256);
    assert!(refused_because(&f, &big).await.contains("larger"));
    let (req, _) = http::Request::new(()).into_parts();
    let Err((401, body)) = run(&f, req).await else {
        panic!("missing token accepted");
    };
    assert_eq!(body["error"], "missing_token");
    let mut basic = http::Request::new(()).into_parts().0;
    basic.headers.insert(
        AUTHORIZATION,
        HeaderValue::from_static("Basic dXNlcjpwdw=="),
    );
    assert!(run(&f, basic).await.is_err());
}

#[tokio::test]
async fn the_cache_never_outlives_exp_or_the_key_set() {
    let f = filter("");
    let c = claims();
    let exp = c["exp"].as_u64().expect("exp");
    let token = sign(Algorithm::RS256, Some("rsa"), &c);
    assert!(run(&f, request(&token)).await.is_ok());
    assert!(
        f.cached(&token, now()).is_some(),
        "verified tokens are cached"
    );
    assert!(f.cached(&token, exp).is_none(), "not at exp");
    assert!(f.cached(&token, exp - 1).is_some());
    // A key-set change (JWKS rotation) invalidates every cached verification.
    let keys = f.keys.load_full();
    f.keys.store(Arc::new(KeySet {
        keys: keys.keys.clone(),
        generation: keys.generation + 1,
    }));
    assert!(f.cached(&token, now()).is_none());
}

#[test]
fn settings_errors_are_specific() {
    let bad = |extra: &str, key: Option<&str>, needle: &str| {
        let text = format!("{extra}\n");
        let table: toml::Table = text.parse().expect("toml");
        let e = JwtFilter::from_settings(&FilterSettings::new(table, KEYS).with_dev_mode(true))
            .expect_err(extra);
        assert_eq!(e.key.as_deref(), key, "{extra}: {e}");
        assert!(e.message.contains(needle), "{extra}: {e}");
    };
    bad("", None, "no keys");
    bad(
        r#"keys = [{ algorithm = "HS256", secret = "short" }]"#,
        Some("keys"),
        "at least 32",
    );
    bad(
        r#"keys = [{ algorithm = "RS256", secret = "x" }]"#,
        Some("keys"),
        "public key",
    );
    bad(
        r#"keys = [{ algorithm = "RS256", pem_file = "missing.pem" }]"#,
        Some("keys"),
        "cannot read",
    );
    bad(
        r#"keys = [{ algorithm = "ES256", pem_file = "rs256.pub.pem" }]"#,
        Some("keys"),
        "not a usable",
    );
    bad(
        r#"keys = [{ algorithm = "none", pem = "x" }]"#,
        Some("keys"),
        "not a supported",
    );
    bad(
        r#"jwks_url = "ftp://x""#,
        Some("jwks_url"),
        "not an http(s) URL",
    );
    bad(
        r#"keys = [{ algorithm = "RS256", pem_file = "rs256.pub.pem" }]
           algorithms = ["ES256"]"#,
        Some("keys"),
        "does not allow",
    );
}

#[test]
fn development_keys_are_refused_outside_dev_mode() {
    let text = r#"keys = [{ kid = "k", algorithm = "RS256", pem_file = "rs256.pub.pem" }]"#;
    let table: toml::Table = text.parse().expect("toml");
    let e = JwtFilter::from_settings(&FilterSettings::new(table.clone(), KEYS))
        .expect_err("a published key outside dev mode");
    assert!(e.message.contains("development key"), "{e:?}");
    assert!(e.fix.contains("--dev"), "{e:?}");
    JwtFilter::from_settings(&FilterSettings::new(table, KEYS).with_dev_mode(true))
        .expect("accepted in dev mode");
    // The same key inline, with other line endings, is still recognised.
    let pem = std::fs::read_to_string(format!("{KEYS}/rs256.pub.pem")).expect("key");
    let mut table = toml::Table::new();
    let mut key = toml::Table::new();
    key.insert("kid".into(), "k".into());
    key.insert("algorithm".into(), "RS256".into());
    key.insert("pem".into(), pem.replace('\n', "\r\n").into());
    table.insert("keys".into(), toml::Value::Array(vec![key.into()]));
    assert!(JwtFilter::from_settings(&FilterSettings::new(table, KEYS)).is_err());
    // A key that is not published is fine.
    let other =
        r#"keys = [{ kid = "k", algorithm = "RS256", pem_file = "attacker-rs256.pub.pem" }]"#;
    let table: toml::Table = other.parse().expect("toml");
    JwtFilter::from_settings(&FilterSettings::new(table, KEYS)).expect("not a dev key");
}
