//! An example filter plugin, written the way a service team would: the `tenant` filter finds
//! the caller's tenant (from a verified JWT claim, else a header), refuses tenants that are not
//! on this route's list with 403, tells the upstream who the tenant is, and stamps the response.
//!
//! Config:
//!
//! ```toml
//! [[routes.filters]]
//! filter = "tenant"
//! tenants = ["acme", "globex"]   # required
//! claim = "tenant"               # JWT claim to read (default "tenant")
//! header = "x-tenant"            # request header to read when there is no identity
//! ```

use filters::{async_trait, reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};
use http::{request, response, HeaderName, HeaderValue, StatusCode};
use serde::Deserialize;

/// The tenant of the current request, for later filters (and this filter's response phase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(pub String);

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    tenants: Vec<String>,
    #[serde(default = "default_claim")]
    claim: String,
    #[serde(default = "default_header")]
    header: String,
}

fn default_claim() -> String {
    "tenant".into()
}

fn default_header() -> String {
    "x-tenant".into()
}

/// The `tenant` filter.
#[derive(Debug)]
pub struct TenantFilter {
    tenants: Vec<String>,
    claim: String,
    header: HeaderName,
}

/// Sent upstream and to the client: the tenant the gateway settled on.
const RESOLVED: HeaderName = HeaderName::from_static("x-resolved-tenant");

impl TenantFilter {
    /// The factory: validates the settings once, at config load.
    pub fn from_settings(settings: &FilterSettings) -> Result<Self, FilterConfigError> {
        let s: Settings = settings.parse()?;
        if s.tenants.is_empty() {
            return Err(FilterConfigError::at_key(
                "tenants",
                "tenants is empty, so every request would be refused",
                "list the tenants this route serves, e.g. tenants = [\"acme\"]",
            ));
        }
        let header =
            HeaderName::from_bytes(s.header.to_ascii_lowercase().as_bytes()).map_err(|_| {
                FilterConfigError::at_key(
                    "header",
                    format!("`{}` is not a header name", s.header),
                    "use a name like \"x-tenant\"",
                )
            })?;
        Ok(Self {
            tenants: s.tenants,
            claim: s.claim,
            header,
        })
    }
}

#[async_trait]
impl Filter for TenantFilter {
    async fn on_request(&self, req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        // A verified identity wins over anything the client says.
        let tenant = match ctx.identity() {
            Some(id) => id.claim_text(&self.claim).map(|t| t.into_owned()),
            None => req
                .headers
                .get(&self.header)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
        };
        let Some(tenant) = tenant.filter(|t| self.tenants.contains(t)) else {
            return Flow::Respond(reply::json_error(
                StatusCode::FORBIDDEN,
                "unknown_tenant",
                "this route does not serve the caller's tenant",
            ));
        };
        if let Ok(v) = HeaderValue::from_str(&tenant) {
            req.headers.insert(RESOLVED, v);
        }
        ctx.insert(Tenant(tenant));
        Flow::Continue
    }

    async fn on_response(&self, resp: &mut response::Parts, ctx: &mut FilterContext) {
        if let Some(Tenant(t)) = ctx.get::<Tenant>() {
            if let Ok(v) = HeaderValue::from_str(t) {
                resp.headers.insert(RESOLVED, v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter() -> TenantFilter {
        let settings = FilterSettings::from_toml("tenants = [\"acme\"]").expect("toml");
        TenantFilter::from_settings(&settings).expect("valid")
    }

    #[tokio::test]
    async fn known_tenants_pass_and_are_stamped() {
        let f = filter();
        let (mut req, _) = http::Request::new(()).into_parts();
        req.headers
            .insert("x-tenant", HeaderValue::from_static("acme"));
        let mut ctx = FilterContext::default();
        assert!(matches!(
            f.on_request(&mut req, &mut ctx).await,
            Flow::Continue
        ));
        assert_eq!(req.headers[RESOLVED], "acme");
        assert_eq!(ctx.get::<Tenant>(), Some(&Tenant("acme".into())));
        let (mut resp, _) = http::Response::new(()).into_parts();
        f.on_response(&mut resp, &mut ctx).await;
        assert_eq!(resp.headers[RESOLVED], "acme");
    }

    #[tokio::test]
    async fn unknown_or_missing_tenants_are_refused() {
        let f = filter();
        for tenant in [Some("initech"), None] {
            let (mut req, _) = http::Request::new(()).into_parts();
            if let Some(t) = tenant {
                req.headers.insert("x-tenant", HeaderValue::from_static(t));
            }
            let mut ctx = FilterContext::default();
            assert!(matches!(
                f.on_request(&mut req, &mut ctx).await,
                Flow::Respond(r) if r.status() == 403
            ));
        }
    }

    #[test]
    fn settings_are_validated() {
        let empty = FilterSettings::from_toml("tenants = []").expect("toml");
        let e = TenantFilter::from_settings(&empty).expect_err("empty");
        assert_eq!(e.key.as_deref(), Some("tenants"));
        let typo = FilterSettings::from_toml("tenant = [\"a\"]").expect("toml");
        assert!(TenantFilter::from_settings(&typo).is_err());
    }
}
