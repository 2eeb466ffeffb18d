//! Header value templates: literal text with `${...}` placeholders filled from the request,
//! parsed once at load (`${client_ip}`, `${request_id}`, `${route}`, `${claim.NAME}`,
//! `${header.NAME}`, `${client_cert.subject|spiffe_id|fingerprint|dns}`; `$$` is a literal
//! `$`).

use http::header::HeaderName;
use http::{request, HeaderValue};

use crate::FilterContext;

/// A template could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TemplateError {
    /// `${` without a closing `}`.
    #[error("`${{` at byte {0} has no closing `}}`")]
    Unclosed(usize),
    /// An unknown placeholder.
    #[error("unknown placeholder `${{{0}}}`; use client_ip, request_id, route, claim.NAME, header.NAME or client_cert.(subject|spiffe_id|fingerprint|dns)")]
    Unknown(String),
    /// The literal text cannot appear in a header value.
    #[error("the text is not a valid header value (control characters?)")]
    InvalidText,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    ClientIp,
    RequestId,
    Route,
    Claim(String),
    Header(HeaderName),
    ClientCert(CertField),
}

/// A field of the verified client certificate (mutual TLS).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum CertField {
    Subject,
    SpiffeId,
    Fingerprint,
    /// The first DNS SAN.
    Dns,
}

/// A parsed header value template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
    /// The value when the template has no placeholders (no work per request).
    fixed: Option<HeaderValue>,
}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, TemplateError> {
        let mut parts = Vec::new();
        let mut lit = String::new();
        let mut rest = text;
        let mut offset = 0;
        while let Some(i) = rest.find('$') {
            lit.push_str(&rest[..i]);
            let after = &rest[i + 1..];
            if let Some(stripped) = after.strip_prefix('$') {
                lit.push('$');
                offset += i + 2;
                rest = stripped;
            } else if let Some(inner) = after.strip_prefix('{') {
                let end = inner.find('}').ok_or(TemplateError::Unclosed(offset + i))?;
                let name = inner[..end].trim();
                let part = match name {
                    "client_ip" => Part::ClientIp,
                    "request_id" => Part::RequestId,
                    "route" => Part::Route,
                    _ => {
                        if let Some(c) = name.strip_prefix("claim.").filter(|c| !c.is_empty()) {
                            Part::Claim(c.to_owned())
                        } else if let Some(f) = name.strip_prefix("client_cert.") {
                            Part::ClientCert(match f {
                                "subject" => CertField::Subject,
                                "spiffe_id" => CertField::SpiffeId,
                                "fingerprint" => CertField::Fingerprint,
                                "dns" => CertField::Dns,
                                _ => return Err(TemplateError::Unknown(name.to_owned())),
                            })
                        } else if let Some(h) = name
                            .strip_prefix("header.")
                            .and_then(|h| HeaderName::from_bytes(h.as_bytes()).ok())
                        {
                            Part::Header(h)
                        } else {
                            return Err(TemplateError::Unknown(name.to_owned()));
                        }
                    }
                };
                if !lit.is_empty() {
                    parts.push(Part::Text(std::mem::take(&mut lit)));
                }
                parts.push(part);
                offset += i + 2 + end + 1;
                rest = &inner[end + 1..];
            } else {
                lit.push('$');
                offset += i + 1;
                rest = after;
            }
        }
        lit.push_str(rest);
        if !lit.is_empty() {
            parts.push(Part::Text(lit));
        }
        for p in &parts {
            if let Part::Text(t) = p {
                HeaderValue::from_str(t).map_err(|_| TemplateError::InvalidText)?;
            }
        }
        let fixed = match parts.as_slice() {
            [] => Some(HeaderValue::from_static("")),
            [Part::Text(t)] => HeaderValue::from_str(t).ok(),
            _ => None,
        };
        Ok(Self { parts, fixed })
    }

    /// The value for this request; `None` when a placeholder has no value (no identity, an
    /// absent claim or header) or the result is not a valid header value.
    pub fn render(&self, req: &request::Parts, ctx: &FilterContext) -> Option<HeaderValue> {
        if let Some(v) = &self.fixed {
            return Some(v.clone());
        }
        let mut out: Vec<u8> = Vec::with_capacity(64);
        for p in &self.parts {
            match p {
                Part::Text(t) => out.extend_from_slice(t.as_bytes()),
                Part::ClientIp => out.extend_from_slice(ctx.client_ip()?.to_string().as_bytes()),
                Part::RequestId => out.extend_from_slice(ctx.request_id()?.as_bytes()),
                Part::Route => out.extend_from_slice(ctx.route()?.as_bytes()),
                Part::Claim(c) => {
                    out.extend_from_slice(ctx.identity()?.claim_text(c)?.as_bytes());
                }
                Part::Header(h) => out.extend_from_slice(req.headers.get(h)?.as_bytes()),
                Part::ClientCert(f) => {
                    let cert = ctx.client_certificate()?;
                    match f {
                        CertField::Subject => out.extend_from_slice(cert.subject.as_bytes()),
                        CertField::SpiffeId => {
                            out.extend_from_slice(cert.spiffe_id.as_deref()?.as_bytes())
                        }
                        CertField::Fingerprint => {
                            out.extend_from_slice(cert.fingerprint_sha256.as_bytes())
                        }
                        CertField::Dns => out.extend_from_slice(cert.dns_names.first()?.as_bytes()),
                    }
                }
            }
        }
        HeaderValue::from_bytes(&out).ok()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::Identity;

    #[test]
    fn parses_placeholders_and_escapes() {
        let t = Template::parse("ip=${client_ip};id=${request_id};$$5;${claim.sub}").expect("ok");
        let mut claims = serde_json::Map::new();
        claims.insert("sub".into(), "u1".into());
        let mut ctx = FilterContext::new(
            Some("api".into()),
            Some([10, 1, 2, 3].into()),
            Some(HeaderValue::from_static("r-1")),
            false,
        );
        ctx.set_identity(Arc::new(Identity {
            subject: Some("u1".into()),
            claims,
        }));
        let (req, _) = http::Request::new(()).into_parts();
        assert_eq!(
            t.render(&req, &ctx).expect("value"),
            "ip=10.1.2.3;id=r-1;$5;u1"
        );
        let h = Template::parse("${header.x-a}/${route}").expect("ok");
        let (mut req, _) = http::Request::new(()).into_parts();
        assert_eq!(h.render(&req, &ctx), None, "absent header");
        req.headers.insert("x-a", HeaderValue::from_static("v"));
        assert_eq!(h.render(&req, &ctx).expect("value"), "v/api");
        assert_eq!(
            Template::parse("plain $ text")
                .expect("ok")
                .render(&req, &ctx)
                .expect("v"),
            "plain $ text"
        );
    }

    #[test]
    fn rejects_bad_templates() {
        assert_eq!(
            Template::parse("${client_ip"),
            Err(TemplateError::Unclosed(0))
        );
        assert_eq!(
            Template::parse("${nope}"),
            Err(TemplateError::Unknown("nope".into()))
        );
        assert_eq!(Template::parse("a\nb"), Err(TemplateError::InvalidText));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn template_text() -> impl Strategy<Value = String> {
            let piece = prop_oneof![
                Just("${".to_owned()),
                Just("}".to_owned()),
                Just("$$".to_owned()),
                Just("$".to_owned()),
                Just("${client_ip}".to_owned()),
                Just("${route}".to_owned()),
                Just("${request_id}".to_owned()),
                Just("${claim.".to_owned()),
                Just("${header.".to_owned()),
                "[a-z.-]{0,6}",
                "\\PC{0,4}",
            ];
            proptest::collection::vec(piece, 0..10).prop_map(|v| v.concat())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(1000))]

            /// No input panics the parser, and whatever parses renders to a valid header value
            /// or to nothing, for any request header value.
            #[test]
            fn parse_and_render_never_panic(text in template_text(), value in "\\PC{0,16}") {
                if let Ok(t) = Template::parse(&text) {
                    let ctx = FilterContext::new(
                        Some("api".into()),
                        Some([10, 0, 0, 1].into()),
                        Some(HeaderValue::from_static("r-1")),
                        false,
                    );
                    let (mut req, _) = http::Request::new(()).into_parts();
                    if let Ok(v) = HeaderValue::from_str(&value) {
                        req.headers.insert("x-a", v);
                    }
                    if let Some(out) = t.render(&req, &ctx) {
                        prop_assert!(HeaderValue::from_bytes(out.as_bytes()).is_ok());
                    }
                }
            }
        }
    }
}
