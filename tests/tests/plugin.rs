//! The example plugin: a custom gateway binary built from the library with the `tenant`
//! filter registered, run as a real process.

mod harness;

use harness::*;
use jsonwebtoken::Algorithm;
use serde_json::{json, Value};

#[tokio::test]
async fn custom_binary_runs_the_plugin_filter_after_jwt() {
    let bin = built_bin("acme-gateway", "acme-gateway");
    let up = echo("up").await;
    let gw = Gateway::start_bin(
        &bin,
        &format!(
            r#"{cluster}
[[routes]]
name = "acme"
cluster = "echo"

[[routes.filters]]
filter = "jwt"
keys = [{{ algorithm = "RS256", pem_file = "{key}" }}]

[[routes.filters]]
filter = "tenant"
tenants = ["acme", "globex"]
"#,
            cluster = cluster("echo", &[&up], ""),
            key = dev_key("rs256.pub.pem").display(),
        ),
        &[],
    )
    .await;
    let token = |tenant: &str| {
        sign_token(
            Algorithm::RS256,
            "rs256.key.pem",
            None,
            &json!({ "sub": "u1", "tenant": tenant, "exp": unix_now() + 600 }),
        )
    };
    let c = client();
    let resp = c
        .get(gw.url("/x"))
        .bearer_auth(token("acme"))
        .header("x-tenant", "globex")
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-resolved-tenant"], "acme");
    let body: Value = resp.json().await.expect("json");
    assert_eq!(
        body["headers"]["x-resolved-tenant"], "acme",
        "the verified claim wins over the client's header"
    );

    let resp = c
        .get(gw.url("/x"))
        .bearer_auth(token("initech"))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 403);
    let body: Value = resp.json().await.expect("json");
    assert_eq!(body["error"], "unknown_tenant");
    assert_eq!(up.hits(), 1);

    // The stock binary does not know the plugin's filter name.
    let dir = gw.dir().join("gateway.toml");
    let (code, _, err) = run_gateway_cli(&["check", "--config", &dir.to_string_lossy()]);
    assert_eq!(code, 1);
    assert!(err.contains("unknown filter `tenant`"), "{err}");
}
