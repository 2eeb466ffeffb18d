//! Validation of `[listeners.tls]` (certificates, versions, client certificates) and
//! `[acme]`. Every certificate and key is loaded and checked here, so a config naming a bad
//! pair is refused like any other bad config.

use std::path::Path;
use std::time::Duration;

use toml::Spanned;

use super::super::error::Issues;
use super::super::raw::{RawAcme, RawConfig, RawTls};
use super::super::{AcmeChallenge, AcmeSettings, ClientAuthSpec, ListenerTls, TlsVersion};
use crate::tls::{self, PairFiles};

/// The TLS settings of one listener; `None` (with issues recorded) when they are unusable.
pub(super) fn listener_tls(
    t: &RawTls,
    acme: Option<&Spanned<RawAcme>>,
    base: &Path,
    issues: &mut Issues<'_>,
) -> Option<ListenerTls> {
    let mut certificates = Vec::new();
    let mut bad = false;
    let mut pair = |cert: &Spanned<String>, key: &Spanned<String>, issues: &mut Issues<'_>| {
        let files = PairFiles {
            cert: base.join(cert.get_ref()),
            key: base.join(key.get_ref()),
        };
        match tls::load_pair(&files.cert, &files.key) {
            Ok(_) => certificates.push(files),
            Err(e) => {
                let span = match e {
                    tls::CertError::Read {
                        what: "private key",
                        ..
                    }
                    | tls::CertError::Parse {
                        what: "private key",
                        ..
                    }
                    | tls::CertError::KeyMismatch { .. } => key.span(),
                    _ => cert.span(),
                };
                issues.at(
                    span,
                    e.to_string(),
                    "give a PEM certificate chain (leaf first) and the private key of its leaf, \
                     in date (relative paths are relative to the config file)",
                );
                bad = true;
            }
        }
    };
    let mut ok = true;
    match (&t.cert, &t.key) {
        (Some(c), Some(k)) => pair(c, k, issues),
        (Some(c), None) => {
            issues.at(
                c.span(),
                "`cert` is set without `key`",
                "add key = \"PATH\"",
            );
            ok = false;
        }
        (None, Some(k)) => {
            issues.at(
                k.span(),
                "`key` is set without `cert`",
                "add cert = \"PATH\"",
            );
            ok = false;
        }
        (None, None) => {}
    }
    for p in &t.certificates {
        let p = p.get_ref();
        pair(&p.cert, &p.key, issues);
    }
    ok &= !bad;
    if t.acme && acme.is_none() {
        issues.at(
            0..0,
            "a listener has `tls.acme = true` but there is no [acme] section",
            "add [acme] with directory and domains, or remove `acme = true`",
        );
        ok = false;
    }
    if ok && certificates.is_empty() && !t.acme {
        issues.at(
            0..0,
            "a TLS listener has no certificate",
            "set [listeners.tls] cert and key, add [[listeners.tls.certificates]], or set acme = true",
        );
        ok = false;
    }
    let min_version = match t.min_version.as_ref().map(|v| v.get_ref().as_str()) {
        None | Some("1.2") => TlsVersion::V1_2,
        Some("1.3") => TlsVersion::V1_3,
        Some(other) => {
            issues.at(
                t.min_version.as_ref().map_or(0..0, Spanned::span),
                format!("min_version `{other}` is not supported"),
                "use \"1.2\" (the default) or \"1.3\"; TLS 1.0 and 1.1 are not offered",
            );
            ok = false;
            TlsVersion::V1_2
        }
    };
    let ciphers = t.ciphers.as_ref().and_then(|c| {
        match pingora::tls::ssl::SslContextBuilder::new(pingora::tls::ssl::SslMethod::tls())
            .and_then(|mut b| b.set_cipher_list(c.get_ref()))
        {
            Ok(()) => Some(c.get_ref().clone()),
            Err(_) => {
                issues.at(
                    c.span(),
                    format!("ciphers `{}` names no cipher OpenSSL knows", c.get_ref()),
                    "use OpenSSL cipher-list syntax, e.g. \"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256\" (TLS 1.3 suites are fixed)",
                );
                ok = false;
                None
            }
        }
    });
    let client_auth = t.client_auth.as_ref().and_then(|c| {
        let c = c.get_ref();
        let required = match c.mode.get_ref().as_str() {
            "required" => true,
            "optional" => false,
            other => {
                issues.at(
                    c.mode.span(),
                    format!("client_auth mode `{other}` is unknown"),
                    "use \"required\" (no certificate, no connection) or \"optional\"",
                );
                ok = false;
                return None;
            }
        };
        let ca = base.join(c.ca.get_ref());
        if let Err(e) = tls::load_ca_bundle(&ca) {
            issues.at(
                c.ca.span(),
                e,
                "give a PEM file of the CA certificates client certificates chain to",
            );
            ok = false;
            return None;
        }
        Some(ClientAuthSpec {
            required,
            ca,
            forward: c.forward.unwrap_or(true),
        })
    });
    ok.then_some(ListenerTls {
        certificates,
        acme: t.acme,
        min_version,
        ciphers,
        session_resumption: t.session_resumption.unwrap_or(true),
        client_auth,
    })
}

/// `[acme]`.
pub(super) fn acme(raw: &RawConfig, base: &Path, issues: &mut Issues<'_>) -> Option<AcmeSettings> {
    let a = raw.acme.as_ref()?;
    let a = a.get_ref();
    let mut ok = true;
    let directory = a.directory.get_ref().trim().to_owned();
    if !(directory.starts_with("https://") || directory.starts_with("http://")) {
        issues.at(
            a.directory.span(),
            format!("acme directory `{directory}` is not an http(s) URL"),
            "give the CA's directory URL, e.g. \"https://acme-v02.api.letsencrypt.org/directory\"",
        );
        ok = false;
    }
    let mut domains = Vec::new();
    for d in a.domains.get_ref() {
        let name = d
            .get_ref()
            .trim()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let valid = !name.is_empty()
            && name.len() <= 253
            && name.split('.').all(|l| {
                !l.is_empty()
                    && l.len() <= 63
                    && !l.starts_with('-')
                    && !l.ends_with('-')
                    && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            });
        if !valid {
            issues.at(
                d.span(),
                format!("acme domain `{}` is not a DNS name", d.get_ref()),
                "give plain host names (wildcards need DNS-01, which the gateway does not answer)",
            );
            ok = false;
        } else if !domains.contains(&name) {
            domains.push(name);
        }
    }
    if domains.is_empty() && ok {
        issues.at(
            a.domains.span(),
            "acme domains is empty",
            "list the names the certificate is for",
        );
        ok = false;
    }
    let challenge = match a.challenge.as_ref().map(|c| c.get_ref().as_str()) {
        None | Some("http-01") => AcmeChallenge::Http01,
        Some("tls-alpn-01") => AcmeChallenge::TlsAlpn01,
        Some(other) => {
            issues.at(
                a.challenge.as_ref().map_or(0..0, Spanned::span),
                format!("acme challenge `{other}` is not supported"),
                "use \"http-01\" (a plain listener on port 80) or \"tls-alpn-01\" (a TLS listener on port 443)",
            );
            ok = false;
            AcmeChallenge::Http01
        }
    };
    let ca = a.ca.as_ref().and_then(|c| {
        let p = base.join(c.get_ref());
        if p.is_file() {
            Some(p)
        } else {
            issues.at(
                c.span(),
                format!("acme ca file `{}` does not exist", p.display()),
                "give the PEM root of the ACME server's HTTPS certificate, or remove `ca`",
            );
            ok = false;
            None
        }
    });
    let days = |v: &Option<Spanned<i64>>, default: i64, issues: &mut Issues<'_>| match v {
        None => default,
        Some(d) if *d.get_ref() >= 1 => *d.get_ref(),
        Some(d) => {
            issues.at(
                d.span(),
                "must be at least 1",
                "give a positive whole number",
            );
            default
        }
    };
    let renew_days = days(&a.renew_before_days, 30, issues);
    let check_s = days(&a.check_interval_s, 3600, issues);
    for c in &a.contact {
        if !c.get_ref().starts_with("mailto:") {
            issues.at(
                c.span(),
                format!("acme contact `{}` is not a mailto: URL", c.get_ref()),
                "write it as \"mailto:ops@example.com\"",
            );
            ok = false;
        }
    }
    ok.then(|| AcmeSettings {
        directory,
        contact: a.contact.iter().map(|c| c.get_ref().clone()).collect(),
        domains,
        challenge,
        storage: base.join(a.storage.as_ref().map_or("acme", |s| s.get_ref().as_str())),
        ca,
        renew_before: Duration::from_secs(renew_days as u64 * 86_400),
        check_interval: Duration::from_secs(check_s as u64),
    })
}

/// `[clusters.NAME.tls]` for a cluster speaking `protocol`.
pub(super) fn upstream_tls(
    name: &str,
    c: &super::super::raw::RawCluster,
    protocol: super::super::UpstreamProtocol,
    base: &Path,
    issues: &mut Issues<'_>,
) -> Option<tls::upstream::UpstreamTls> {
    use super::super::UpstreamProtocol;
    let secure = matches!(protocol, UpstreamProtocol::Https | UpstreamProtocol::H2);
    let Some(raw) = &c.tls else {
        if secure {
            issues.at(
                c.protocol.as_ref().map_or(0..0, Spanned::span),
                format!("cluster `{name}` speaks TLS but has no [clusters.{name}.tls]"),
                "add tls = { sni = \"the name on the origin's certificate\" } (and ca = \"bundle.pem\" for a private CA)",
            );
        }
        return None;
    };
    let span = raw.span();
    let raw = raw.get_ref();
    if !secure {
        issues.at(
            span,
            format!("cluster `{name}` has [clusters.{name}.tls] but speaks plain text"),
            "set protocol = \"https\" (or \"h2\" for gRPC over TLS), or remove the tls table",
        );
        return None;
    }
    let Some(sni) = raw
        .sni
        .as_ref()
        .map(|s| s.get_ref().trim().to_owned())
        .filter(|s| !s.is_empty())
    else {
        issues.at(
            span,
            format!("cluster `{name}` has no tls.sni"),
            "set sni to the name on the origin's certificate: it is sent as SNI and verified",
        );
        return None;
    };
    let ca_file = raw.ca.as_ref().map(|c| base.join(c.get_ref()));
    let client_files = match (&raw.cert, &raw.key) {
        (Some(c), Some(k)) => Some(PairFiles {
            cert: base.join(c.get_ref()),
            key: base.join(k.get_ref()),
        }),
        (None, None) => None,
        (Some(s), None) | (None, Some(s)) => {
            issues.at(
                s.span(),
                "a client certificate needs both cert and key",
                "set both tls.cert and tls.key, or neither",
            );
            return None;
        }
    };
    match tls::upstream::UpstreamTls::load(sni, raw.verify.unwrap_or(true), ca_file, client_files) {
        Ok(t) => Some(t),
        Err(e) => {
            issues.at(
                span,
                format!("cluster `{name}`: {e}"),
                "give PEM files: ca (the roots the origin chains to), cert and key (a client certificate)",
            );
            None
        }
    }
}
