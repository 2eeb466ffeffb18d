//! The per-request state filters read and write.

use std::net::IpAddr;
use std::sync::Arc;

use http::HeaderValue;
use serde_json::{Map, Value};

/// A verified caller identity, set by an authentication filter (`jwt`) and read by later
/// filters (rate limits keyed by a claim, header templates) and by the proxy.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Identity {
    /// The `sub` claim, when present.
    pub subject: Option<String>,
    /// Every claim of the verified token.
    pub claims: Map<String, Value>,
}

impl Identity {
    /// A claim's value.
    pub fn claim(&self, name: &str) -> Option<&Value> {
        self.claims.get(name)
    }

    /// A claim rendered as text: strings as they are, numbers and booleans in JSON form;
    /// `None` for absent, null, array and object claims.
    pub fn claim_text(&self, name: &str) -> Option<std::borrow::Cow<'_, str>> {
        match self.claims.get(name)? {
            Value::String(s) => Some(std::borrow::Cow::Borrowed(s)),
            Value::Number(n) => Some(std::borrow::Cow::Owned(n.to_string())),
            Value::Bool(b) => Some(std::borrow::Cow::Borrowed(if *b {
                "true"
            } else {
                "false"
            })),
            _ => None,
        }
    }
}

/// The client certificate a mutual-TLS listener verified for the connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerCertificate {
    /// Subject distinguished name (`CN=client, O=Acme`).
    pub subject: String,
    /// Issuer distinguished name.
    pub issuer: String,
    /// DNS subject alternative names.
    pub dns_names: Vec<String>,
    /// URI subject alternative names.
    pub uris: Vec<String>,
    /// E-mail subject alternative names.
    pub emails: Vec<String>,
    /// The SPIFFE ID (the `spiffe://` URI SAN), when the certificate has exactly one.
    pub spiffe_id: Option<String>,
    /// SHA-256 of the certificate's DER, lowercase hex.
    pub fingerprint_sha256: String,
    /// Serial number, hex.
    pub serial: String,
}

/// What a request carries through the chain: facts the proxy established (route, client
/// address, request id), the verified identity, and typed values filters pass to each other.
#[derive(Debug, Default)]
pub struct FilterContext {
    route: Option<Arc<str>>,
    client_ip: Option<IpAddr>,
    request_id: Option<HeaderValue>,
    tls: bool,
    identity: Option<Arc<Identity>>,
    client_certificate: Option<Arc<PeerCertificate>>,
    values: http::Extensions,
    /// How many request filters ran (their response filters run on the response).
    pub(crate) ran: usize,
    /// Index of the filter that answered the request itself.
    pub(crate) answered: Option<usize>,
}

impl FilterContext {
    /// A context for a request that matched `route` (None: no route matched).
    pub fn new(
        route: Option<Arc<str>>,
        client_ip: Option<IpAddr>,
        request_id: Option<HeaderValue>,
        tls: bool,
    ) -> Self {
        Self {
            route,
            client_ip,
            request_id,
            tls,
            ..Self::default()
        }
    }

    /// Name of the matched route.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The client's IP address (the TCP peer).
    pub fn client_ip(&self) -> Option<IpAddr> {
        self.client_ip
    }

    /// The request id the gateway assigned or accepted.
    pub fn request_id(&self) -> Option<&HeaderValue> {
        self.request_id.as_ref()
    }

    /// Whether the client connection is TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The verified identity, once an authentication filter set it.
    pub fn identity(&self) -> Option<&Identity> {
        self.identity.as_deref()
    }

    /// Sets the verified identity (authentication filters only).
    pub fn set_identity(&mut self, identity: Arc<Identity>) {
        self.identity = Some(identity);
    }

    /// The client certificate the listener verified (mutual TLS), if any.
    pub fn client_certificate(&self) -> Option<&PeerCertificate> {
        self.client_certificate.as_deref()
    }

    /// Sets the verified client certificate (the gateway does, from the TLS handshake).
    pub fn set_client_certificate(&mut self, certificate: Arc<PeerCertificate>) {
        self.client_certificate = Some(certificate);
    }

    /// A typed value a filter stored earlier in this request.
    pub fn get<T: Clone + Send + Sync + 'static>(&self) -> Option<&T> {
        self.values.get::<T>()
    }

    /// A typed value, mutably.
    pub fn get_mut<T: Clone + Send + Sync + 'static>(&mut self) -> Option<&mut T> {
        self.values.get_mut::<T>()
    }

    /// Stores a typed value for later filters and phases (one value per type; use a newtype
    /// per meaning). Returns the value it replaced.
    pub fn insert<T: Clone + Send + Sync + 'static>(&mut self, value: T) -> Option<T> {
        self.values.insert(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct Tenant(String);

    #[test]
    fn typed_values_pass_between_filters() {
        let mut ctx = FilterContext::new(Some("api".into()), None, None, false);
        assert_eq!(ctx.route(), Some("api"));
        assert!(ctx.get::<Tenant>().is_none());
        ctx.insert(Tenant("acme".into()));
        assert_eq!(ctx.get::<Tenant>(), Some(&Tenant("acme".into())));
        if let Some(t) = ctx.get_mut::<Tenant>() {
            t.0.push_str("-eu");
        }
        assert_eq!(
            ctx.insert(Tenant("x".into())),
            Some(Tenant("acme-eu".into()))
        );
    }

    #[test]
    fn claim_text_renders_scalars() {
        let mut claims = Map::new();
        claims.insert("sub".into(), Value::from("u1"));
        claims.insert("n".into(), Value::from(7));
        claims.insert("ok".into(), Value::from(true));
        claims.insert("list".into(), Value::from(vec!["a"]));
        let id = Identity {
            subject: Some("u1".into()),
            claims,
        };
        assert_eq!(id.claim_text("sub").as_deref(), Some("u1"));
        assert_eq!(id.claim_text("n").as_deref(), Some("7"));
        assert_eq!(id.claim_text("ok").as_deref(), Some("true"));
        assert_eq!(id.claim_text("list"), None);
        assert_eq!(id.claim_text("none"), None);
    }
}
