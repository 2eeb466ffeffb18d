//! A connection's TLS facts for the request path: the listener, and the client certificate
//! it verified, rendered once per connection as `X-Forwarded-Client-Cert` (Envoy's format).

use std::sync::Arc;

use filters::PeerCertificate;
use http::{HeaderName, HeaderValue};
use pingora::tls::hash::MessageDigest;
use pingora::tls::x509::X509Ref;

use super::certs::{hex, name_text};

/// The header that carries a verified client certificate upstream. Clients never set it:
/// the gateway removes it from every request first.
pub(crate) const XFCC: HeaderName = HeaderName::from_static("x-forwarded-client-cert");

/// What the handshake established, attached to the connection (pingora's TLS digest).
#[derive(Debug)]
pub(crate) struct ConnTls {
    /// The verified client certificate.
    pub(crate) client_cert: Option<Arc<PeerCertificate>>,
    /// `X-Forwarded-Client-Cert` for upstreams, when the listener forwards it.
    pub(crate) xfcc: Option<HeaderValue>,
}

impl ConnTls {
    pub(crate) fn new(client_cert: Option<Arc<PeerCertificate>>, forward: bool) -> Self {
        let xfcc = client_cert
            .as_deref()
            .filter(|_| forward)
            .and_then(xfcc_value);
        Self { client_cert, xfcc }
    }
}

/// The identity a certificate carries.
pub(crate) fn peer_certificate(cert: &X509Ref) -> PeerCertificate {
    let mut p = PeerCertificate {
        subject: name_text(cert.subject_name()),
        issuer: name_text(cert.issuer_name()),
        fingerprint_sha256: cert
            .digest(MessageDigest::sha256())
            .map(|d| hex(&d))
            .unwrap_or_default(),
        serial: cert
            .serial_number()
            .to_bn()
            .and_then(|b| b.to_hex_str().map(|s| s.to_string()))
            .unwrap_or_default(),
        ..PeerCertificate::default()
    };
    if let Some(sans) = cert.subject_alt_names() {
        for n in sans.iter() {
            if let Some(d) = n.dnsname() {
                p.dns_names.push(d.to_owned());
            } else if let Some(u) = n.uri() {
                p.uris.push(u.to_owned());
            } else if let Some(e) = n.email() {
                p.emails.push(e.to_owned());
            }
        }
    }
    let mut spiffe = p.uris.iter().filter(|u| u.starts_with("spiffe://"));
    // A SPIFFE X.509-SVID has exactly one SPIFFE ID.
    if let (Some(id), None) = (spiffe.next(), spiffe.next()) {
        p.spiffe_id = Some(id.clone());
    }
    p
}

/// Text safe inside a quoted XFCC value: printable ASCII, `"` and `\` escaped.
fn quoted(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('?'),
        }
    }
    out.push('"');
}

/// `Hash=...;Subject="...";URI=...;DNS=...` (Envoy's `X-Forwarded-Client-Cert` elements).
fn xfcc_value(p: &PeerCertificate) -> Option<HeaderValue> {
    let mut v = String::with_capacity(128);
    v.push_str("Hash=");
    v.push_str(&p.fingerprint_sha256);
    v.push_str(";Subject=");
    quoted(&p.subject, &mut v);
    for u in &p.uris {
        v.push_str(";URI=");
        quoted(u, &mut v);
    }
    for d in &p.dns_names {
        v.push_str(";DNS=");
        quoted(d, &mut v);
    }
    HeaderValue::from_str(&v).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xfcc_quotes_and_escapes() {
        let p = PeerCertificate {
            subject: "CN=a\"b\\c\u{7}".into(),
            uris: vec!["spiffe://example.org/ns/play".into()],
            dns_names: vec!["play.internal".into()],
            fingerprint_sha256: "ab01".into(),
            ..PeerCertificate::default()
        };
        let v = xfcc_value(&p).expect("valid");
        assert_eq!(
            v.to_str().expect("ascii"),
            "Hash=ab01;Subject=\"CN=a\\\"b\\\\c?\";URI=\"spiffe://example.org/ns/play\";DNS=\"play.internal\""
        );
    }
}
