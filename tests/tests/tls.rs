//! TLS the way an edge runs it, with real TLS clients and servers: certificates by SNI,
//! rotation under load, a bad pair refused while the old one serves, client certificates
//! (required, optional, refused) with an identity clients cannot spoof, TLS to upstreams
//! (verification, client certificates, gRPC over TLS), and certificates from a real ACME CA
//! (pebble).

mod harness;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use harness::*;
use openssl::ssl::{SslConnector, SslMethod, SslVerifyMode};

/// What a handshake with `sni` is answered with: the leaf's common name, its key type and
/// SHA-256 fingerprint, and its issuer's common name.
#[derive(Debug, Clone, PartialEq)]
struct Served {
    cn: String,
    key: &'static str,
    fingerprint: String,
    issuer: String,
}

fn cn(name: &openssl::x509::X509NameRef) -> String {
    name.entries_by_nid(openssl::nid::Nid::COMMONNAME)
        .next()
        .and_then(|e| e.data().to_string().ok())
        .unwrap_or_default()
}

async fn served(addr: SocketAddr, sni: Option<&str>, rsa_only: bool) -> Result<Served, String> {
    let mut b = SslConnector::builder(SslMethod::tls()).map_err(|e| e.to_string())?;
    b.set_verify(SslVerifyMode::NONE);
    if rsa_only {
        // TLS 1.2 with an RSA-only cipher suite: a client that cannot take ECDSA.
        b.set_max_proto_version(Some(openssl::ssl::SslVersion::TLS1_2))
            .map_err(|e| e.to_string())?;
        b.set_cipher_list("ECDHE-RSA-AES128-GCM-SHA256")
            .map_err(|e| e.to_string())?;
    }
    let connector = b.build();
    let mut config = connector.configure().map_err(|e| e.to_string())?;
    config.set_use_server_name_indication(sni.is_some());
    config.set_verify_hostname(false);
    let ssl = config
        .into_ssl(sni.unwrap_or("unused"))
        .map_err(|e| e.to_string())?;
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| e.to_string())?;
    let mut stream = tokio_openssl::SslStream::new(ssl, tcp).map_err(|e| e.to_string())?;
    std::pin::Pin::new(&mut stream)
        .connect()
        .await
        .map_err(|e| format!("handshake: {e}"))?;
    let cert = stream.ssl().peer_certificate().ok_or("no certificate")?;
    let key = match cert.public_key().map_err(|e| e.to_string())?.id() {
        openssl::pkey::Id::RSA => "RSA",
        openssl::pkey::Id::EC => "ECDSA",
        _ => "other",
    };
    let fingerprint = cert
        .digest(openssl::hash::MessageDigest::sha256())
        .map(|d| d.iter().map(|b| format!("{b:02x}")).collect())
        .map_err(|e| e.to_string())?;
    Ok(Served {
        cn: cn(cert.subject_name()),
        key,
        fingerprint,
        issuer: cn(cert.issuer_name()),
    })
}

fn https_client(ca: &str, names: &[&str], addr: SocketAddr, reuse: bool) -> reqwest::Client {
    let mut b = reqwest::Client::builder()
        .tls_certs_only([reqwest::Certificate::from_pem(ca.as_bytes()).expect("pem")])
        .timeout(Duration::from_secs(10));
    for n in names {
        b = b.resolve(n, addr);
    }
    if !reuse {
        b = b.pool_max_idle_per_host(0);
    }
    b.build().expect("client")
}

fn tls_listener(name: &str, addr: SocketAddr, tls: &str) -> String {
    format!("[[listeners]]\nname = \"{name}\"\naddress = \"{addr}\"\n[listeners.tls]\n{tls}\n\n")
}

async fn certificates(gw: &Gateway) -> serde_json::Value {
    get_json(&client(), &gw.admin_url("/certificates")).await.1
}

#[tokio::test]
async fn sni_picks_certificates_and_rotation_under_load_drops_nothing() {
    let a = echo("a").await;
    let ca = TestCa::new("edge test CA");
    let default = ca.issue(&["default.test"], Alg::Ecdsa);
    let app_ec = ca.issue(&["app.test"], Alg::Ecdsa);
    let app_rsa = ca.issue(&["app.test"], Alg::Rsa);
    let wild = ca.issue(&["*.wild.test"], Alg::Ecdsa);
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let body = format!(
        "{}[[listeners.tls.certificates]]\ncert = \"app-ec.pem\"\nkey = \"app-ec.key\"\n\n\
         [[listeners.tls.certificates]]\ncert = \"app-rsa.pem\"\nkey = \"app-rsa.key\"\n\n\
         [[listeners.tls.certificates]]\ncert = \"wild.pem\"\nkey = \"wild.key\"\n\n\
         {}[[routes]]\nname = \"all\"\ncluster = \"a\"\n",
        tls_listener(
            "edge",
            addr,
            "cert = \"default.pem\"\nkey = \"default.key\""
        ),
        cluster("a", &[&a], "")
    );
    let gw = Gateway::start_with(
        &body,
        &[
            ("default.pem", default.cert.as_bytes()),
            ("default.key", default.key.as_bytes()),
            ("app-ec.pem", app_ec.cert.as_bytes()),
            ("app-ec.key", app_ec.key.as_bytes()),
            ("app-rsa.pem", app_rsa.cert.as_bytes()),
            ("app-rsa.key", app_rsa.key.as_bytes()),
            ("wild.pem", wild.cert.as_bytes()),
            ("wild.key", wild.key.as_bytes()),
        ],
    )
    .await;

    // The right certificate per SNI name: exact, wildcard (one label only), default.
    let s = served(addr, Some("app.test"), false).await.expect("app");
    assert_eq!((s.cn.as_str(), s.key), ("app.test", "ECDSA"));
    let s = served(addr, Some("app.test"), true)
        .await
        .expect("app, RSA-only client");
    assert_eq!(
        (s.cn.as_str(), s.key),
        ("app.test", "RSA"),
        "RSA and ECDSA side by side"
    );
    let s = served(addr, Some("x.wild.test"), false)
        .await
        .expect("wildcard");
    assert_eq!(s.cn, "*.wild.test");
    let s = served(addr, Some("a.b.wild.test"), false)
        .await
        .expect("two labels deep");
    assert_eq!(s.cn, "default.test", "a wildcard covers one label");
    let s = served(addr, None, false).await.expect("no SNI");
    assert_eq!(s.cn, "default.test");
    let s = served(addr, Some("unknown.test"), false)
        .await
        .expect("unknown");
    assert_eq!(s.cn, "default.test");
    let r = https_client(&ca.pem, &["app.test"], addr, true)
        .get(format!("https://app.test:{}/x", addr.port()))
        .send()
        .await
        .expect("verified https request");
    assert_eq!(r.status().as_u16(), 200);
    assert_eq!(r.version(), reqwest::Version::HTTP_2);

    // Rotation under keep-alive load and fresh handshakes: nothing fails.
    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut load = Vec::new();
    for reuse in [true, true, false, false] {
        let client = https_client(&ca.pem, &["app.test"], addr, reuse);
        let (stop, ok, failed) = (stop.clone(), ok.clone(), failed.clone());
        let url = format!("https://app.test:{}/load", addr.port());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => ok.fetch_add(1, Ordering::Relaxed),
                    Ok(_) | Err(_) => failed.fetch_add(1, Ordering::Relaxed),
                };
            }
        }));
    }
    wait_until("load running", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > 50
    })
    .await;
    let before = served(addr, Some("app.test"), false).await.expect("before");
    let renewed = ca.issue(&["app.test"], Alg::Ecdsa);
    // As a deployment tool does it: a new file renamed over each old one.
    for (name, text) in [("app-ec.pem", &renewed.cert), ("app-ec.key", &renewed.key)] {
        let tmp = gw.dir().join(format!("{name}.new"));
        std::fs::write(&tmp, text).expect("write");
        std::fs::rename(&tmp, gw.dir().join(name)).expect("rename");
    }
    let after = eventually(
        "the renewed certificate served",
        Duration::from_secs(10),
        || async {
            match served(addr, Some("app.test"), false).await {
                Ok(s) if s.fingerprint != before.fingerprint => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert_eq!(after.cn, "app.test");
    let at_rotation = ok.load(Ordering::Relaxed);
    wait_until("load after the rotation", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > at_rotation + 100
    })
    .await;

    // A bad pair (the key of another certificate) is refused; the rotated one keeps serving.
    std::fs::write(gw.dir().join("app-ec.key"), wild.key.as_bytes()).expect("write");
    let status = eventually("the bad pair refused", Duration::from_secs(10), || async {
        let c = certificates(&gw).await;
        let err = c["listeners"][0]["last_error"]
            .as_str()
            .unwrap_or("")
            .to_owned();
        if err.contains("does not match") {
            Ok(c)
        } else {
            Err(c.to_string())
        }
    })
    .await;
    assert!(status["listeners"][0]["last_error"]
        .as_str()
        .is_some_and(|e| e.contains("app-ec.key")));
    let still = served(addr, Some("app.test"), false)
        .await
        .expect("still serving");
    assert_eq!(
        still.fingerprint, after.fingerprint,
        "the old pair keeps serving"
    );
    let at_bad = ok.load(Ordering::Relaxed);
    wait_until("load after the bad pair", Duration::from_secs(10), || {
        ok.load(Ordering::Relaxed) > at_bad + 50
    })
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed during rotation"
    );
    let c = certificates(&gw).await;
    let failures = &c["listeners"][0]["handshakes"]["failed"];
    for reason in ["protocol", "no_certificate", "aborted"] {
        assert_eq!(failures[reason], 0, "handshake failures: {c}");
    }

    // A config naming an expired certificate is refused as a whole; the running one serves.
    let expired = ca.issue_full("app.test", &["app.test"], &[], Alg::Ecdsa, -30, -1);
    std::fs::write(gw.dir().join("expired.pem"), &expired.cert).expect("write");
    std::fs::write(gw.dir().join("expired.key"), &expired.key).expect("write");
    let doc = gw.config_for(
        &body
            .replace("app-rsa.pem", "expired.pem")
            .replace("app-rsa.key", "expired.key"),
    );
    let r = client()
        .post(gw.admin_url("/config"))
        .header("x-gateway-admin", "1")
        .body(doc)
        .send()
        .await
        .expect("post config");
    let status_code = r.status().as_u16();
    let text = r.text().await.expect("body");
    assert!(
        status_code >= 400 && text.contains("expired"),
        "{status_code} {text}"
    );
    let s = served(addr, Some("app.test"), true)
        .await
        .expect("RSA still served");
    assert_eq!(s.key, "RSA");

    // Expiry is visible as a metric per certificate.
    let metrics = get_text(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("gateway_tls_certificate_expiry_timestamp_seconds{listener=\"edge\",names=\"*.wild.test\""),
        "{metrics}"
    );
    // `gateway check` warns about certificates that expire within 14 days.
    std::fs::write(gw.dir().join("app-ec.key"), renewed.key.as_bytes()).expect("write");
    let soon = ca.issue_full("soon.test", &["soon.test"], &[], Alg::Ecdsa, -1, 3);
    std::fs::write(gw.dir().join("soon.pem"), &soon.cert).expect("write");
    std::fs::write(gw.dir().join("soon.key"), &soon.key).expect("write");
    let check = gw.dir().join("check.toml");
    std::fs::write(
        &check,
        gw.config_for(
            &body
                .replace("wild.pem", "soon.pem")
                .replace("wild.key", "soon.key"),
        ),
    )
    .expect("write");
    let (code, out, err) = run_gateway_cli(&["check", "--config", check.to_str().expect("utf8")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(format!("{out}{err}").contains("expires in"), "{out}{err}");
}

#[tokio::test]
async fn client_certificates_required_optional_refused_and_identity_not_spoofable() {
    let a = echo("a").await;
    let ca = TestCa::new("edge CA");
    let clients = TestCa::new("client CA");
    let stranger = TestCa::new("other CA");
    let server = ca.issue(&["mtls.test"], Alg::Ecdsa);
    let good = clients.issue_full(
        "play-client",
        &["play.internal"],
        &["spiffe://example.org/ns/prod/sa/play"],
        Alg::Ecdsa,
        -1,
        30,
    );
    let foreign = stranger.issue(&["evil.internal"], Alg::Ecdsa);
    let expired = clients.issue_full("old", &["old.internal"], &[], Alg::Ecdsa, -30, -1);
    let required = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let optional = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pair = "cert = \"server.pem\"\nkey = \"server.key\"";
    let body = format!(
        "{}client_auth = {{ mode = \"required\", ca = \"clients.pem\" }}\n\n{}client_auth = {{ mode = \"optional\", ca = \"clients.pem\" }}\n\n\
         {}[[routes]]\nname = \"all\"\ncluster = \"a\"\n\n\
         [[routes.filters]]\nfilter = \"headers\"\nrequest_set = {{ \"x-client-spiffe\" = \"${{client_cert.spiffe_id}}\" }}\n",
        tls_listener("required", required, pair),
        tls_listener("optional", optional, pair),
        cluster("a", &[&a], "")
    );
    let gw = Gateway::start_with(
        &body,
        &[
            ("server.pem", server.cert.as_bytes()),
            ("server.key", server.key.as_bytes()),
            ("clients.pem", clients.pem.as_bytes()),
        ],
    )
    .await;
    let with = |identity: Option<&Pem>, addr: SocketAddr| {
        let mut b = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("pem")])
            .resolve("mtls.test", addr)
            .timeout(Duration::from_secs(10));
        if let Some(p) = identity {
            b = b.identity(
                reqwest::Identity::from_pem(format!("{}{}", p.cert, p.key).as_bytes())
                    .expect("identity"),
            );
        }
        b.build().expect("client")
    };
    let get = |c: reqwest::Client, addr: SocketAddr| async move {
        c.get(format!("https://mtls.test:{}/who", addr.port()))
            .header(
                "x-forwarded-client-cert",
                "Hash=forged;URI=\"spiffe://example.org/ns/prod/sa/admin\"",
            )
            .send()
            .await
    };

    // Required: a verified certificate passes, and its identity goes upstream (the forged
    // header is replaced, filters see the SPIFFE ID).
    let r = get(with(Some(&good), required), required)
        .await
        .expect("good client");
    assert_eq!(r.status().as_u16(), 200);
    let j: serde_json::Value = r.json().await.expect("json");
    let xfcc = j["headers"]["x-forwarded-client-cert"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(
        xfcc.contains("URI=\"spiffe://example.org/ns/prod/sa/play\""),
        "{j}"
    );
    assert!(xfcc.contains("Subject=\"CN=play-client\""), "{j}");
    assert!(
        !xfcc.contains("forged") && !xfcc.contains("sa/admin"),
        "{j}"
    );
    assert_eq!(
        j["headers"]["x-client-spiffe"],
        "spiffe://example.org/ns/prod/sa/play"
    );

    // Required: no certificate, a stranger's, an expired one: no connection.
    for (who, identity) in [
        ("none", None),
        ("foreign", Some(&foreign)),
        ("expired", Some(&expired)),
    ] {
        let e = get(with(identity, required), required).await;
        assert!(e.is_err(), "{who}: {e:?}");
    }
    // Optional: no certificate is fine, but the client's header never passes.
    let r = get(with(None, optional), optional)
        .await
        .expect("anonymous");
    assert_eq!(r.status().as_u16(), 200);
    let j: serde_json::Value = r.json().await.expect("json");
    assert!(j["headers"]["x-forwarded-client-cert"].is_null(), "{j}");
    assert!(j["headers"]["x-client-spiffe"].is_null(), "{j}");
    // Optional: a certificate that is presented must verify.
    assert!(get(with(Some(&foreign), optional), optional).await.is_err());
    let r = get(with(Some(&good), optional), optional)
        .await
        .expect("good, optional");
    let j: serde_json::Value = r.json().await.expect("json");
    assert!(j["headers"]["x-forwarded-client-cert"]
        .as_str()
        .is_some_and(|v| v.contains("spiffe://")));

    // Refusals are counted by reason.
    let c = eventually(
        "handshake failures counted",
        Duration::from_secs(10),
        || async {
            let c = certificates(&gw).await;
            let req = &c["listeners"][0]["handshakes"]["failed"];
            if req["client_cert_missing"] == 1
                && req["client_cert_untrusted"] == 1
                && req["client_cert_expired"] == 1
            {
                Ok(c)
            } else {
                Err(c.to_string())
            }
        },
    )
    .await;
    assert_eq!(c["listeners"][0]["client_auth"]["mode"], "required");
    assert_eq!(
        c["listeners"][1]["handshakes"]["failed"]["client_cert_untrusted"], 1,
        "{c}"
    );
}

#[tokio::test]
async fn https_and_grpc_over_tls_to_upstreams_verify_and_present_client_certificates() {
    let a = echo("origin-echo").await;
    // Steering (tonic) as the gRPC service behind the origin.
    let steering = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let steering_addr = steering.local_addr().expect("addr");
    let topology = sample_services::steering::Topology::load(
        &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/topology.toml"),
    )
    .expect("topology");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(
                sample_services::steering::proto::steering_server::SteeringServer::new(
                    sample_services::steering::SteeringService::new(topology),
                ),
            )
            .serve_with_incoming(tokio_stream_of(steering)),
    );

    let ca = TestCa::new("origin CA");
    let other = TestCa::new("unrelated CA");
    let clients = TestCa::new("gateway client CA");
    let origin_cert = ca.issue(&["origin.test"], Alg::Ecdsa);
    let gateway_client = clients.issue_full(
        "edge-gateway",
        &["edge.internal"],
        &["spiffe://example.org/edge"],
        Alg::Ecdsa,
        -1,
        30,
    );
    let origin_tls = SocketAddr::from(([127, 0, 0, 1], free_port()));
    // The origin: a gateway that requires client certificates, in front of echo and Steering.
    let origin = Gateway::start_with(
        &format!(
            "{}client_auth = {{ mode = \"required\", ca = \"clients.pem\" }}\n\n{}\
             [clusters.steering]\nendpoints = [\"{steering_addr}\"]\nprotocol = \"h2c\"\n\n\
             [[routes]]\nname = \"grpc\"\ncluster = \"steering\"\npath_prefix = \"/steering.v1.Steering/\"\n\n\
             [[routes]]\nname = \"all\"\ncluster = \"origin-echo\"\n",
            tls_listener("origin", origin_tls, "cert = \"origin.pem\"\nkey = \"origin.key\""),
            cluster("origin-echo", &[&a], "")
        ),
        &[
            ("origin.pem", origin_cert.cert.as_bytes()),
            ("origin.key", origin_cert.key.as_bytes()),
            ("clients.pem", clients.pem.as_bytes()),
        ],
    )
    .await;

    let grpc_in = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let tls = |ca: &str, client: bool| {
        let cert = if client {
            ", cert = \"client.pem\", key = \"client.key\""
        } else {
            ""
        };
        format!("tls = {{ sni = \"origin.test\", ca = \"{ca}\"{cert} }}\n")
    };
    let front = Gateway::start_with(
        &format!(
            "[[listeners]]\nname = \"grpc\"\naddress = \"{grpc_in}\"\nh2c = true\n\n\
             [clusters.secure]\nendpoints = [\"{origin_tls}\"]\nprotocol = \"https\"\n{}\n\
             [clusters.no-client-cert]\nendpoints = [\"{origin_tls}\"]\nprotocol = \"https\"\n{}\n\
             [clusters.wrong-ca]\nendpoints = [\"{origin_tls}\"]\nprotocol = \"https\"\n{}\n\
             [clusters.steering-tls]\nendpoints = [\"{origin_tls}\"]\nprotocol = \"h2\"\n{}\n\
             [[routes]]\nname = \"grpc\"\ncluster = \"steering-tls\"\npath_prefix = \"/steering.v1.Steering/\"\n\n\
             [[routes]]\nname = \"nocert\"\ncluster = \"no-client-cert\"\npath_prefix = \"/nocert\"\n\n\
             [[routes]]\nname = \"wrong\"\ncluster = \"wrong-ca\"\npath_prefix = \"/wrong\"\n\n\
             [[routes]]\nname = \"secure\"\ncluster = \"secure\"\n",
            tls("ca.pem", true),
            tls("ca.pem", false),
            tls("other.pem", true),
            tls("ca.pem", true),
        ),
        &[
            ("ca.pem", ca.pem.as_bytes()),
            ("other.pem", other.pem.as_bytes()),
            ("client.pem", gateway_client.cert.as_bytes()),
            ("client.key", gateway_client.key.as_bytes()),
        ],
    )
    .await;
    let http = client();

    // Verified TLS with a client certificate: the origin saw the gateway's identity.
    let (status, j) = get_json(&http, &front.url("/hello")).await;
    assert_eq!(status, 200, "{j}");
    assert!(
        j["headers"]["x-forwarded-client-cert"]
            .as_str()
            .is_some_and(|v| v.contains("spiffe://example.org/edge")),
        "{j}"
    );
    // The origin refuses the cluster without a client certificate: a 502.
    let (status, j) = get_json(&http, &front.url("/nocert")).await;
    assert_eq!(status, 502, "{j}");
    // The wrong CA: refused with a clear reason.
    let (status, j) = get_json(&http, &front.url("/wrong")).await;
    assert_eq!(status, 502, "{j}");
    assert_eq!(j["error"], "upstream_tls_failed", "{j}");
    assert!(
        j["reason"]
            .as_str()
            .is_some_and(|r| r.contains("certificate")),
        "{j}"
    );

    // gRPC over TLS (h2 by ALPN) to the origin, which passes it on to Steering.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_in}"))
        .expect("endpoint")
        .connect()
        .await
        .expect("h2c to the front gateway");
    let mut steering =
        sample_services::steering::proto::steering_client::SteeringClient::new(channel);
    let answer = steering
        .select_servers(sample_services::steering::proto::SelectServersRequest {
            client_ip: "10.1.2.3".into(),
            country: "US".into(),
            title_id: "t-0003".into(),
            limit: 2,
        })
        .await
        .expect("SelectServers over TLS upstream")
        .into_inner();
    assert_eq!(answer.servers.len(), 2);
    drop(origin);
}

/// Accepted connections of `listener` as the stream tonic serves.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures_util::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures_util::stream::unfold(listener, |l| async move {
        let r = l.accept().await.map(|(s, _)| s);
        Some((r, l))
    })
}

async fn acme_issues_and_renews(challenge: &str) {
    let a = echo("a").await;
    let http_port = free_port();
    let tls_addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let pebble = Pebble::start(http_port, tls_addr.port()).await;
    let body = format!(
        "[[listeners]]\nname = \"acme-http\"\naddress = \"127.0.0.1:{http_port}\"\n\n\
         {}\
         [acme]\ndirectory = \"{}\"\ndomains = [\"shop.acme.test\", \"www.acme.test\"]\ncontact = [\"mailto:ops@acme.test\"]\n\
         challenge = \"{challenge}\"\nca = \"acme-ca.pem\"\nstorage = \"acme-store\"\n\n\
         {}[[routes]]\nname = \"all\"\ncluster = \"a\"\n",
        tls_listener("edge", tls_addr, "acme = true"),
        pebble.directory,
        cluster("a", &[&a], "")
    );
    let gw = Gateway::start_with(&body, &[("acme-ca.pem", pebble.ca_pem.as_bytes())]).await;
    let first = eventually(
        "a certificate from pebble",
        Duration::from_secs(60),
        || async {
            let c = certificates(&gw).await;
            match c["acme"]["certificate"]["fingerprint_sha256"].as_str() {
                Some(f) => Ok(f.to_owned()),
                None => Err(format!("{c}\n{}", gw.log())),
            }
        },
    )
    .await;
    let s = served(tls_addr, Some("www.acme.test"), false)
        .await
        .expect("handshake");
    assert_eq!(s.fingerprint, first);
    assert!(s.issuer.to_lowercase().contains("pebble"), "{s:?}");
    assert!(gw.dir().join("acme-store/certificate.pem").is_file());

    // Renewal: a new certificate, hot-swapped.
    let r = client()
        .post(gw.admin_url("/certificates/renew"))
        .header("x-gateway-admin", "1")
        .send()
        .await
        .expect("renew");
    assert_eq!(r.status().as_u16(), 202);
    let second = eventually("a renewed certificate", Duration::from_secs(60), || async {
        let c = certificates(&gw).await;
        match c["acme"]["certificate"]["fingerprint_sha256"].as_str() {
            Some(f) if f != first => Ok(f.to_owned()),
            _ => Err(format!("{c}")),
        }
    })
    .await;
    let s = eventually(
        "the renewed certificate served",
        Duration::from_secs(10),
        || async {
            match served(tls_addr, Some("shop.acme.test"), false).await {
                Ok(s) if s.fingerprint == second => Ok(s),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    assert!(s.issuer.to_lowercase().contains("pebble"), "{s:?}");
    let metrics = get_text(&client(), &gw.admin_url("/metrics")).await;
    assert!(
        metrics.contains("gateway_acme_orders_total{result=\"issued\"} 2"),
        "{metrics}"
    );
    drop(pebble);
}

#[tokio::test]
async fn acme_http01_certificate_from_pebble_issued_and_renewed() {
    acme_issues_and_renews("http-01").await;
}

#[tokio::test]
async fn acme_tls_alpn01_certificate_from_pebble_issued_and_renewed() {
    acme_issues_and_renews("tls-alpn-01").await;
}
