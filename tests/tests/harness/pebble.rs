//! A real ACME CA: Debian's `pebble` with `pebble-challtestsrv` as its DNS (every name
//! resolves to 127.0.0.1), on OS-assigned ports, its HTTPS certificate issued by a test CA
//! the ACME client is told to trust. Both are killed on drop.

use super::*;

/// pebble and its DNS server.
pub struct Pebble {
    _pebble: Process,
    _dns: Process,
    dir: tempfile::TempDir,
    /// The ACME directory URL.
    pub directory: String,
    /// The root pebble's HTTPS certificate chains to (written as `acme-ca.pem` in `dir`).
    pub ca_pem: String,
}

impl Pebble {
    /// Starts pebble validating HTTP-01 on `http_port` and TLS-ALPN-01 on `tls_port` (the
    /// gateway's listeners).
    pub async fn start(http_port: u16, tls_port: u16) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca = TestCa::new("pebble https test CA");
        let server = ca.issue(&["127.0.0.1", "localhost"], Alg::Ecdsa);
        std::fs::write(dir.path().join("cert.pem"), &server.cert).expect("write");
        std::fs::write(dir.path().join("key.pem"), &server.key).expect("write");
        let port = free_port();
        let management = free_port();
        let dns_port = free_port();
        let dns_management = free_port();
        let config = serde_json::json!({"pebble": {
            "listenAddress": format!("127.0.0.1:{port}"),
            "managementListenAddress": format!("127.0.0.1:{management}"),
            "certificate": dir.path().join("cert.pem"),
            "privateKey": dir.path().join("key.pem"),
            "httpPort": http_port,
            "tlsPort": tls_port,
            "ocspResponderURL": "",
            "externalAccountBindingRequired": false,
        }});
        let config_path = dir.path().join("pebble.json");
        std::fs::write(&config_path, config.to_string()).expect("write");
        let log = |name: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(dir.path().join(name))
                .expect("log")
        };
        let dns_log = log("challtestsrv.log");
        let dns = Process(Some(
            Command::new("pebble-challtestsrv")
                .args(["-dns01", &format!("127.0.0.1:{dns_port}")])
                .args(["-http01", "", "-https01", "", "-tlsalpn01", ""])
                .args(["-management", &format!("127.0.0.1:{dns_management}")])
                .args(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""])
                .stdout(dns_log.try_clone().expect("fd"))
                .stderr(dns_log)
                .spawn()
                .expect("pebble-challtestsrv (Debian package pebble; scripts/setup installs it)"),
        ));
        let pebble_log = log("pebble.log");
        let pebble = Process(Some(
            Command::new("pebble")
                .arg("-config")
                .arg(&config_path)
                .args(["-dnsserver", &format!("127.0.0.1:{dns_port}")])
                .env("PEBBLE_VA_NOSLEEP", "1")
                .env("PEBBLE_WFE_NONCEREJECT", "0")
                .stdout(pebble_log.try_clone().expect("fd"))
                .stderr(pebble_log)
                .spawn()
                .expect("pebble (Debian package pebble; scripts/setup installs it)"),
        ));
        std::fs::write(dir.path().join("acme-ca.pem"), &ca.pem).expect("write");
        let this = Self {
            _pebble: pebble,
            _dns: dns,
            directory: format!("https://127.0.0.1:{port}/dir"),
            ca_pem: ca.pem.clone(),
            dir,
        };
        let client = reqwest::Client::builder()
            .tls_certs_only([reqwest::Certificate::from_pem(ca.pem.as_bytes()).expect("pem")])
            .build()
            .expect("client");
        let url = this.directory.clone();
        eventually("pebble's directory", Duration::from_secs(20), || {
            let (client, url) = (client.clone(), url.clone());
            let log = this.log();
            async move {
                match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("status {}", r.status())),
                    Err(e) => Err(format!("{e}; log: {log}")),
                }
            }
        })
        .await;
        this
    }

    /// pebble's and the DNS server's logs.
    pub fn log(&self) -> String {
        let read = |n: &str| std::fs::read_to_string(self.dir.path().join(n)).unwrap_or_default();
        format!("{}\n{}", read("pebble.log"), read("challtestsrv.log"))
    }
}
