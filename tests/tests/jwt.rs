//! The `jwt` filter through the real gateway: valid tokens pass with identity headers, and
//! every attack case is refused (also with the verified-token cache on).

mod harness;

use std::time::Duration;

use harness::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

const HMAC_SECRET: &str = "integration-test-hmac-secret-0123456789abcdef";

fn claims(extra: Value) -> Value {
    let mut c = json!({
        "sub": "user-42", "plan": "premium", "iss": "https://auth.test", "aud": "playback",
        "exp": unix_now() + 600, "scope": "play"
    });
    if let (Some(c), Some(extra)) = (c.as_object_mut(), extra.as_object()) {
        for (k, v) in extra {
            c.insert(k.clone(), v.clone());
        }
    }
    c
}

fn rs256(extra: Value) -> String {
    sign_token(
        Algorithm::RS256,
        "rs256.key.pem",
        Some("rsa"),
        &claims(extra),
    )
}

async fn start(upstream: &EchoServer) -> Gateway {
    let keys = dev_key("rs256.pub.pem");
    let es = dev_key("es256.pub.pem");
    let ed = dev_key("ed25519.pub.pem");
    Gateway::start(&format!(
        r#"{cluster}
[[routes]]
name = "play"
cluster = "echo"
path_prefix = "/play"

[[routes.filters]]
filter = "jwt"
keys = [
  {{ kid = "rsa", algorithm = "RS256", pem_file = "{keys}" }},
  {{ kid = "pss", algorithm = "PS256", pem_file = "{keys}" }},
  {{ kid = "ec", algorithm = "ES256", pem_file = "{es}" }},
  {{ kid = "ed", algorithm = "EdDSA", pem_file = "{ed}" }},
  {{ kid = "hs", algorithm = "HS256", secret = "{HMAC_SECRET}" }},
]
issuer = "https://auth.test"
audience = "playback"
leeway_seconds = 5
max_token_bytes = 2048
required_scopes = ["play"]
claims_to_headers = {{ sub = "x-user-id", plan = "x-user-plan" }}
"#,
        cluster = cluster("echo", &[upstream], ""),
        keys = keys.display(),
        es = es.display(),
        ed = ed.display(),
    ))
    .await
}

async fn call(gw: &Gateway, token: Option<&str>) -> (u16, Value, reqwest::header::HeaderMap) {
    let mut req = client().get(gw.url("/play/1")).header("x-user-id", "admin");
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, resp.json().await.unwrap_or(Value::Null), headers)
}

async fn refused(gw: &Gateway, token: &str, needle: &str) {
    let (status, body, headers) = call(gw, Some(token)).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "invalid_token");
    assert!(
        body["reason"].as_str().unwrap_or("").contains(needle),
        "expected `{needle}`: {body}"
    );
    let challenge = headers["www-authenticate"].to_str().expect("ascii");
    assert!(
        challenge.starts_with("Bearer realm=\"gateway\", error=\"invalid_token\""),
        "{challenge}"
    );
}

#[tokio::test]
async fn valid_tokens_pass_with_identity_headers_and_spoofing_fails() {
    let up = echo("up").await;
    let gw = start(&up).await;
    for (alg, key, kid) in [
        (Algorithm::RS256, "rs256.key.pem", "rsa"),
        (Algorithm::PS256, "rs256.key.pem", "pss"),
        (Algorithm::ES256, "es256.key.pem", "ec"),
        (Algorithm::EdDSA, "ed25519.key.pem", "ed"),
    ] {
        let token = sign_token(alg, key, Some(kid), &claims(json!({})));
        // Twice: the second answer comes from the verified-token cache.
        for _ in 0..2 {
            let (status, body, _) = call(&gw, Some(&token)).await;
            assert_eq!(status, 200, "{alg:?}: {body}");
            assert_eq!(
                body["headers"]["x-user-id"], "user-42",
                "spoofed value replaced"
            );
            assert_eq!(body["headers"]["x-user-plan"], "premium");
        }
    }
    let hs = {
        let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
        h.kid = Some("hs".into());
        jsonwebtoken::encode(
            &h,
            &claims(json!({})),
            &jsonwebtoken::EncodingKey::from_secret(HMAC_SECRET.as_bytes()),
        )
        .expect("sign")
    };
    assert_eq!(call(&gw, Some(&hs)).await.0, 200);

    let (status, body, headers) = call(&gw, None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("missing_token"))
    );
    assert_eq!(headers["www-authenticate"], "Bearer realm=\"gateway\"");
    assert_eq!(up.hits(), 9, "refused requests never reach the upstream");
}

#[tokio::test]
async fn attacks_are_refused() {
    let up = echo("up").await;
    let gw = start(&up).await;
    refused(&gw, &rs256(json!({ "exp": unix_now() - 60 })), "expired").await;
    refused(
        &gw,
        &rs256(json!({ "nbf": unix_now() + 600 })),
        "not valid yet",
    )
    .await;
    refused(
        &gw,
        &rs256(json!({ "exp": (unix_now() + 600).to_string() })),
        "not a number",
    )
    .await;
    refused(&gw, &rs256(json!({ "iss": "https://evil.test" })), "issuer").await;
    refused(&gw, &rs256(json!({ "aud": "billing" })), "audience").await;
    refused(&gw, &rs256(json!({ "pad": "x".repeat(2048) })), "larger").await;

    let forged = sign_token(
        Algorithm::RS256,
        "attacker-rs256.key.pem",
        Some("rsa"),
        &claims(json!({})),
    );
    refused(&gw, &forged, "signature").await;

    use base64::Engine;
    let b64 = |v: &Value| {
        base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::to_vec(v).expect("json"))
    };
    let none = format!(
        "{}.{}.",
        b64(&json!({ "alg": "none" })),
        b64(&claims(json!({})))
    );
    refused(&gw, &none, "malformed").await;

    // Algorithm confusion: HS256 with the RSA public key as the secret, naming the RSA key.
    let public = std::fs::read(dev_key("rs256.pub.pem")).expect("pem");
    let mut h = jsonwebtoken::Header::new(Algorithm::HS256);
    h.kid = Some("rsa".into());
    let confused = jsonwebtoken::encode(
        &h,
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_secret(&public),
    )
    .expect("sign");
    refused(&gw, &confused, "does not match its key").await;

    // A key pointed to by the token itself is never fetched.
    let mut h = jsonwebtoken::Header::new(Algorithm::RS256);
    h.kid = Some("attacker".into());
    h.jku = Some("http://127.0.0.1:9/jwks.json".into());
    let pem = std::fs::read(dev_key("attacker-rs256.key.pem")).expect("pem");
    let jku = jsonwebtoken::encode(
        &h,
        &claims(json!({})),
        &jsonwebtoken::EncodingKey::from_rsa_pem(&pem).expect("key"),
    )
    .expect("sign");
    refused(&gw, &jku, "key id is unknown").await;

    let (status, body, headers) = call(&gw, Some(&rs256(json!({ "scope": "browse" })))).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("insufficient_scope"))
    );
    assert!(headers["www-authenticate"]
        .to_str()
        .expect("ascii")
        .contains("error=\"insufficient_scope\""));
    assert_eq!(up.hits(), 0);
}

#[tokio::test]
async fn jwks_rotation_and_revocation() {
    let jwks =
        JwksServer::start(std::fs::read_to_string(dev_key("jwks.json")).expect("jwks")).await;
    let up = echo("up").await;
    let gw = Gateway::start(&format!(
        r#"{cluster}
[[routes]]
name = "play"
cluster = "echo"

[[routes.filters]]
filter = "jwt"
jwks_url = "{url}"
jwks_refresh_seconds = 1
jwks_min_refresh_seconds = 0
algorithms = ["RS256"]
"#,
        cluster = cluster("echo", &[&up], ""),
        url = jwks.url(),
    ))
    .await;
    let c = claims(json!({}));
    let old = sign_token(Algorithm::RS256, "rs256.key.pem", Some("dev-rs256"), &c);
    let new = sign_token(Algorithm::RS256, "rs256-b.key.pem", Some("dev-rs256-b"), &c);
    let status = |token: String| {
        let url = gw.url("/x");
        async move {
            client()
                .get(url)
                .bearer_auth(token)
                .send()
                .await
                .expect("request")
                .status()
                .as_u16()
        }
    };
    assert_eq!(status(old.clone()).await, 200);
    assert_eq!(status(new.clone()).await, 401, "not published yet");

    // The issuer rotates: the old key is withdrawn (revoked), a new one published.
    jwks.set(std::fs::read_to_string(dev_key("jwks-rotated.json")).expect("jwks"));
    assert_eq!(
        status(new.clone()).await,
        200,
        "unknown kid triggers a refetch"
    );
    // The cached verification of `old` must not survive the key's removal.
    eventually("the revoked key refused", Duration::from_secs(10), || {
        let old = old.clone();
        async move {
            match status(old).await {
                401 => Ok(()),
                other => Err(format!("still answered {other}")),
            }
        }
    })
    .await;
    assert!(jwks.fetches() >= 2);
}
