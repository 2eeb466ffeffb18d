//! HTTP/2 from clients (TLS with ALPN, and h2c prior knowledge) and h2c to upstreams.

mod harness;

use std::net::SocketAddr;

use harness::*;

#[tokio::test]
async fn h2_over_tls_via_alpn_and_h2c_prior_knowledge() {
    let a = echo("a").await;
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("cert");
    let cert_pem = cert.cert.pem();
    let key_pem = cert.signing_key.serialize_pem();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let h2c_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let body = format!(
        "[[listeners]]\nname = \"tls\"\naddress = \"{tls_addr}\"\ntls = {{ cert = \"cert.pem\", key = \"key.pem\" }}\n\n\
         [[listeners]]\nname = \"grpc\"\naddress = \"{h2c_addr}\"\nh2c = true\n\n\
         {}[[routes]]\nname = \"all\"\ncluster = \"a\"\n",
        cluster("a", &[&a], "")
    );
    let gw = Gateway::start_with(
        &body,
        &[
            ("cert.pem", cert_pem.as_bytes()),
            ("key.pem", key_pem.as_bytes()),
        ],
    )
    .await;

    let tls_client = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(cert_pem.as_bytes()).expect("pem")])
        .resolve("localhost", tls_addr)
        .build()
        .expect("client");
    let r = tls_client
        .get(format!("https://localhost:{}/tls", tls_addr.port()))
        .send()
        .await
        .expect("https request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2, "ALPN negotiated h2");
    assert_eq!(r.status().as_u16(), 200);
    let j: serde_json::Value = r.json().await.expect("json");
    assert_eq!(j["headers"]["x-forwarded-proto"], "https");
    assert!(
        j["headers"]["via"]
            .as_str()
            .is_some_and(|v| v.starts_with("2 ")),
        "{j}"
    );

    let h2c = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("client");
    let r = h2c
        .get(format!("http://{h2c_addr}/h2c"))
        .send()
        .await
        .expect("h2c request");
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status().as_u16(), 200);

    // The plain listener without h2c still serves HTTP/1.1.
    let r = client()
        .get(gw.url("/h1"))
        .send()
        .await
        .expect("h1 request");
    assert_eq!(r.version(), reqwest::Version::HTTP_11);
}

#[tokio::test]
async fn h2c_to_upstream_per_cluster() {
    let up = echo("grpc-like").await;
    let body = format!(
        "{}[[routes]]\nname = \"all\"\ncluster = \"h2\"\n",
        cluster("h2", &[&up], "protocol = \"h2c\"")
    );
    let gw = Gateway::start(&body).await;
    // An HTTP/1.1 client; the gateway speaks HTTP/2 (prior knowledge) to the upstream.
    let (s, j) = get_json(&client(), &gw.url("/x")).await;
    assert_eq!(s, 200);
    assert_eq!(j["version"], "HTTP/2.0", "upstream saw HTTP/2: {j}");
}
