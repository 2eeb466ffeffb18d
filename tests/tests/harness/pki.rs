//! Test certificates: a CA that issues server and client certificates (ECDSA P-256 or RSA
//! 2048), with DNS, URI (SPIFFE) SANs and chosen validity.

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// A certificate and its key, PEM.
#[derive(Debug, Clone)]
pub struct Pem {
    pub cert: String,
    pub key: String,
}

/// A test certificate authority.
pub struct TestCa {
    issuer: Issuer<'static, KeyPair>,
    /// The CA certificate, PEM.
    pub pem: String,
}

/// Key algorithms for issued certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Alg {
    Ecdsa,
    Rsa,
}

fn key(alg: Alg) -> KeyPair {
    match alg {
        Alg::Ecdsa => KeyPair::generate().expect("ecdsa key"),
        Alg::Rsa => {
            let rsa = openssl::rsa::Rsa::generate(2048).expect("rsa");
            let pkey = openssl::pkey::PKey::from_rsa(rsa).expect("pkey");
            let pem =
                String::from_utf8(pkey.private_key_to_pem_pkcs8().expect("pkcs8")).expect("utf8");
            KeyPair::from_pem_and_sign_algo(&pem, &rcgen::PKCS_RSA_SHA256).expect("rsa key pair")
        }
    }
}

impl TestCa {
    pub fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate().expect("ca key");
        let cert = params.self_signed(&key).expect("ca cert");
        Self {
            pem: cert.pem(),
            issuer: Issuer::new(params, key),
        }
    }

    /// A certificate for `names` (DNS SANs, or IP SANs for addresses) and `uris`, valid from
    /// `from_days` to `to_days` relative to now.
    pub fn issue_full(
        &self,
        cn: &str,
        names: &[&str],
        uris: &[&str],
        alg: Alg,
        from_days: i64,
        to_days: i64,
    ) -> Pem {
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, cn);
        for n in names {
            params
                .subject_alt_names
                .push(match n.parse::<std::net::IpAddr>() {
                    Ok(ip) => SanType::IpAddress(ip),
                    Err(_) => SanType::DnsName((*n).try_into().expect("dns name")),
                });
        }
        for u in uris {
            params
                .subject_alt_names
                .push(SanType::URI((*u).try_into().expect("uri")));
        }
        let now = time_now();
        params.not_before = now + time_days(from_days);
        params.not_after = now + time_days(to_days);
        let key = key(alg);
        let cert = params.signed_by(&key, &self.issuer).expect("issue");
        Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        }
    }

    /// A certificate for `names`, valid for 30 days.
    pub fn issue(&self, names: &[&str], alg: Alg) -> Pem {
        self.issue_full(names[0], names, &[], alg, -1, 30)
    }
}

fn time_now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

fn time_days(d: i64) -> time::Duration {
    time::Duration::days(d)
}
