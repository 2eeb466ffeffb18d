//! The server side of a handshake: the acceptor's fixed settings (versions, ciphers,
//! resumption, ALPN), and per handshake the certificate for the SNI name, client-certificate
//! verification, the connection's TLS facts for the request path, and counters of handshakes
//! and of failures by reason.

use std::any::Any;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, OnceLock};

use async_trait::async_trait;
use openssl::stack::Stack;
use pingora::listeners::tls::TlsSettings;
use pingora::listeners::TlsAccept;
use pingora::protocols::tls::TlsRef;
use pingora::tls::ext::{
    ssl_add_chain_cert, ssl_set_verify_cert_store, ssl_use_certificate, ssl_use_private_key,
};
use pingora::tls::ssl::{
    select_next_proto, AlpnError, ClientHelloResponse, NameType, Ssl, SslMode, SslOptions, SslRef,
    SslSessionCacheMode, SslVerifyMode, SslVersion,
};
use pingora::tls::x509::{X509StoreContext, X509StoreContextRef, X509VerifyResult};
use prometheus::IntCounter;
use serde::Serialize;

use super::identity::{self, ConnTls};
use super::{CertifiedKey, ServerTls};
use crate::config::{ListenerTls, TlsVersion};

/// Why a handshake failed (the `reason` label).
const REASONS: [&str; 6] = [
    // No common version or cipher suite, or a malformed hello: before a certificate was chosen.
    "protocol",
    // No certificate to serve (an ACME-only listener before its first certificate).
    "no_certificate",
    // A listener that requires a client certificate got none.
    "client_cert_missing",
    // The client's certificate does not chain to the listener's CAs (or is malformed).
    "client_cert_untrusted",
    // The client's certificate is out of date.
    "client_cert_expired",
    // The client went away after our certificate (often: it does not trust it).
    "aborted",
];
const PROTOCOL: u8 = 0;
const NO_CERTIFICATE: u8 = 1;
const CLIENT_CERT_MISSING: u8 = 2;
const CLIENT_CERT_UNTRUSTED: u8 = 3;
const CLIENT_CERT_EXPIRED: u8 = 4;
const ABORTED: u8 = 5;

/// One listener's handshake counters (handles resolved once).
#[derive(Debug)]
pub(crate) struct Counters {
    tls12: IntCounter,
    tls13: IntCounter,
    failures: [IntCounter; 6],
}

/// Handshake counts for `/certificates`.
#[derive(Debug, Serialize)]
pub(crate) struct CountersSnapshot {
    completed: u64,
    failed: std::collections::BTreeMap<&'static str, u64>,
}

impl Counters {
    pub(crate) fn new(listener: &str) -> Self {
        let m = crate::metrics::metrics();
        Self {
            tls12: m.tls_handshakes(listener, "TLSv1.2"),
            tls13: m.tls_handshakes(listener, "TLSv1.3"),
            failures: REASONS.map(|r| m.tls_handshake_failures(listener, r)),
        }
    }

    pub(crate) fn snapshot(&self) -> CountersSnapshot {
        CountersSnapshot {
            completed: self.tls12.get() + self.tls13.get(),
            failed: REASONS
                .iter()
                .zip(&self.failures)
                .map(|(r, c)| (*r, c.get()))
                .collect(),
        }
    }
}

/// Stages of a handshake, kept in the SSL object: the guard's drop counts a failure for a
/// handshake that never completed.
const HELLO: u8 = 1;
const CERTIFICATE: u8 = 2;
const DONE: u8 = 3;

struct Handshake {
    server: Arc<ServerTls>,
    stage: AtomicU8,
    /// A failure reason recorded on the way (client certificate verification).
    reason: AtomicU8,
    /// Client certificates are required on this handshake.
    required: AtomicU8,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        let reason = match self.stage.load(Ordering::Relaxed) {
            DONE => return,
            HELLO => PROTOCOL,
            _ => match self.reason.load(Ordering::Relaxed) {
                0 if self.required.load(Ordering::Relaxed) == 1 => CLIENT_CERT_MISSING,
                0 => ABORTED,
                r => r,
            },
        };
        self.server.counters.failures[usize::from(reason)].inc();
    }
}

fn handshake_index() -> Option<openssl::ex_data::Index<Ssl, Handshake>> {
    static INDEX: OnceLock<Option<openssl::ex_data::Index<Ssl, Handshake>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

/// Marks a handshake answered with an ACME TLS-ALPN-01 challenge certificate.
#[derive(Debug, Clone, Copy)]
struct AcmeChallenge;

fn acme_index() -> Option<openssl::ex_data::Index<Ssl, AcmeChallenge>> {
    static INDEX: OnceLock<Option<openssl::ex_data::Index<Ssl, AcmeChallenge>>> = OnceLock::new();
    *INDEX.get_or_init(|| Ssl::new_ex_index().ok())
}

const ACME_TLS_1: &[u8] = b"acme-tls/1";

/// The protocol named `proto` in a client's ALPN list (wire format), as a slice of it.
fn offered<'a>(client: &'a [u8], proto: &[u8]) -> Option<&'a [u8]> {
    let mut rest = client;
    while let Some((&len, tail)) = rest.split_first() {
        let len = usize::from(len);
        if tail.len() < len {
            return None;
        }
        let (p, tail) = tail.split_at(len);
        if p == proto {
            return Some(p);
        }
        rest = tail;
    }
    None
}

/// Puts `certs` on the handshake (one per key type; OpenSSL picks by what the client
/// supports).
fn use_certificates(ssl: &mut SslRef, certs: &[&Arc<CertifiedKey>]) -> bool {
    let mut ok = false;
    for c in certs {
        let Some(leaf) = c.chain.first() else {
            continue;
        };
        if ssl_use_certificate(ssl, leaf).is_err() || ssl_use_private_key(ssl, &c.key).is_err() {
            continue;
        }
        for intermediate in &c.chain[1..] {
            let _ = ssl_add_chain_cert(ssl, intermediate);
        }
        ok = true;
    }
    ok
}

/// The acceptor settings of a TLS listener whose per-handshake state is `server`.
pub(crate) fn tls_settings(
    server: &Arc<ServerTls>,
    spec: &ListenerTls,
) -> Result<TlsSettings, String> {
    let mut s = TlsSettings::with_callbacks(Box::new(Callbacks(server.clone())))
        .map_err(|e| e.to_string())?;
    let min = match spec.min_version {
        TlsVersion::V1_2 => SslVersion::TLS1_2,
        TlsVersion::V1_3 => SslVersion::TLS1_3,
    };
    s.set_min_proto_version(Some(min))
        .map_err(|e| e.to_string())?;
    if let Some(c) = &spec.ciphers {
        s.set_cipher_list(c)
            .map_err(|e| format!("ciphers `{c}`: {e}"))?;
    }
    // OpenSSL reads whole records ahead into its own buffers (the listener has no socket
    // read buffer below it) and frees its read and write buffers while a connection is
    // idle: an idle TLS keep-alive connection then holds no record buffers.
    s.set_mode(SslMode::RELEASE_BUFFERS);
    s.set_read_ahead(true);
    if spec.session_resumption {
        // Sessions resumed with a client certificate need a context id (OpenSSL refuses
        // them otherwise); the listener's name keeps listeners' sessions apart.
        let id = format!("gateway:{}", server.name);
        let id = &id.as_bytes()[..id.len().min(32)];
        s.set_session_id_context(id).map_err(|e| e.to_string())?;
    } else {
        s.set_options(SslOptions::NO_TICKET);
        s.set_session_cache_mode(SslSessionCacheMode::OFF);
        // TLS 1.3 would still send (stateful) tickets that can never be redeemed.
        s.set_num_tickets(0).map_err(|e| e.to_string())?;
    }
    let alpn = server.clone();
    s.set_alpn_select_callback(move |ssl, client| {
        if offered(client, ACME_TLS_1).is_some() {
            // RFC 8737: a TLS-ALPN-01 validation gets the challenge certificate and nothing
            // else; with no challenge pending for the name, the handshake fails.
            let cert = ssl
                .servername(NameType::HOST_NAME)
                .and_then(|sni| alpn.acme.as_ref()?.alpn_certificate(sni));
            let Some(cert) = cert else {
                return Err(AlpnError::ALERT_FATAL);
            };
            if let Some(i) = acme_index() {
                ssl.set_ex_data(i, AcmeChallenge);
            }
            use_certificates(ssl, &[&cert]);
            return offered(client, ACME_TLS_1).ok_or(AlpnError::NOACK);
        }
        select_next_proto(b"\x02h2\x08http/1.1", client).ok_or(AlpnError::NOACK)
    });
    let hello = server.clone();
    s.set_client_hello_callback(move |ssl, _alert| {
        if let Some(i) = handshake_index() {
            // A HelloRetryRequest brings a second ClientHello: keep the first guard.
            if ssl.ex_data(i).is_none() {
                ssl.set_ex_data(
                    i,
                    Handshake {
                        server: hello.clone(),
                        stage: AtomicU8::new(HELLO),
                        reason: AtomicU8::new(0),
                        required: AtomicU8::new(0),
                    },
                );
            }
        }
        Ok(ClientHelloResponse::SUCCESS)
    });
    Ok(s)
}

/// pingora's per-handshake hooks for one listener.
struct Callbacks(Arc<ServerTls>);

fn verify_seen(ok: bool, ctx: &mut X509StoreContextRef) -> bool {
    let reason = if ok {
        0
    } else {
        let e = ctx.error();
        // X509_V_ERR_CERT_NOT_YET_VALID (9), X509_V_ERR_CERT_HAS_EXPIRED (10).
        if matches!(e.as_raw(), 9 | 10) {
            CLIENT_CERT_EXPIRED
        } else {
            CLIENT_CERT_UNTRUSTED
        }
    };
    if reason != 0 {
        let handshake = X509StoreContext::ssl_idx()
            .ok()
            .and_then(|i| ctx.ex_data(i))
            .and_then(|ssl| handshake_index().and_then(|i| ssl.ex_data(i)));
        if let Some(h) = handshake {
            h.reason.store(reason, Ordering::Relaxed);
        }
    }
    ok
}

#[async_trait]
impl TlsAccept for Callbacks {
    async fn certificate_callback(&self, ssl: &mut TlsRef) {
        let server = &self.0;
        let handshake = handshake_index().and_then(|i| ssl.ex_data(i));
        if let Some(h) = handshake {
            h.stage.store(CERTIFICATE, Ordering::Relaxed);
        }
        let acme = acme_index().is_some_and(|i| ssl.ex_data(i).is_some());
        if !acme {
            let set = server.served();
            let sni = ssl.servername(NameType::HOST_NAME).map(str::to_owned);
            let (certs, _matched) = set.select(sni.as_deref());
            if !use_certificates(ssl, &certs) {
                if let Some(h) = handshake_index().and_then(|i| ssl.ex_data(i)) {
                    h.reason.store(NO_CERTIFICATE, Ordering::Relaxed);
                }
                return;
            }
        }
        if let Some(auth) = server.client_auth.load_full() {
            if acme {
                return;
            }
            let mut mode = SslVerifyMode::PEER;
            if auth.required {
                mode |= SslVerifyMode::FAIL_IF_NO_PEER_CERT;
                if let Some(h) = handshake_index().and_then(|i| ssl.ex_data(i)) {
                    h.required.store(1, Ordering::Relaxed);
                }
            }
            ssl.set_verify_callback(mode, verify_seen);
            if let Err(e) = ssl_set_verify_cert_store(ssl, &auth.store) {
                tracing::error!(listener = %server.name, error = %e, "cannot set the client CA store");
            }
            if let Ok(mut names) = Stack::new() {
                for n in &auth.names {
                    if let Ok(n) = openssl::x509::X509NameRef::to_owned(n) {
                        let _ = names.push(n);
                    }
                }
                ssl.set_client_ca_list(names);
            }
        }
    }

    async fn handshake_complete_callback(
        &self,
        ssl: &TlsRef,
    ) -> Option<Arc<dyn Any + Send + Sync>> {
        let server = &self.0;
        if let Some(h) = handshake_index().and_then(|i| ssl.ex_data(i)) {
            h.stage.store(DONE, Ordering::Relaxed);
        }
        match ssl.version_str() {
            "TLSv1.3" => server.counters.tls13.inc(),
            _ => server.counters.tls12.inc(),
        }
        let auth = server.client_auth.load();
        let client_cert = match auth.as_ref() {
            Some(_) if ssl.verify_result() == X509VerifyResult::OK => ssl
                .peer_certificate()
                .map(|c| Arc::new(identity::peer_certificate(&c))),
            _ => None,
        };
        let forward = auth.as_ref().is_some_and(|a| a.forward);
        Some(Arc::new(ConnTls::new(client_cert, forward)))
    }
}

#[cfg(test)]
mod tests {
    use super::offered;

    #[test]
    fn alpn_lists_are_read_safely() {
        let list = b"\x02h2\x0aacme-tls/1\x08http/1.1";
        assert_eq!(offered(list, b"acme-tls/1"), Some(&b"acme-tls/1"[..]));
        assert_eq!(offered(list, b"h3"), None);
        assert_eq!(offered(b"\x09h2", b"h2"), None);
        assert_eq!(offered(b"", b"h2"), None);
    }
}
