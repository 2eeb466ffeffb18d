//! `ip_filter`: allows or denies clients by address (CIDR). A client in `deny` is refused; when
//! `allow` is non-empty, a client outside it is refused too. IPv4-mapped IPv6 addresses match
//! IPv4 ranges. Refusal is 403 `ip_denied`.

use std::net::IpAddr;

use async_trait::async_trait;
use http::{request, StatusCode};
use ipnet::IpNet;
use serde::Deserialize;

use crate::{reply, Filter, FilterConfigError, FilterContext, FilterSettings, Flow};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Settings {
    #[serde(default)]
    allow: Vec<String>,
    #[serde(default)]
    deny: Vec<String>,
}

/// The `ip_filter` filter.
#[derive(Debug)]
pub struct IpFilter {
    allow: Vec<IpNet>,
    deny: Vec<IpNet>,
}

fn nets(key: &str, list: &[String]) -> Result<Vec<IpNet>, FilterConfigError> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<IpAddr>().map(IpNet::from))
                .map(|n| n.trunc())
                .map_err(|_| {
                    FilterConfigError::at_key(
                        key,
                        format!("`{s}` is not an IP address or CIDR range"),
                        "write ranges like \"10.0.0.0/8\" or \"2001:db8::/32\"",
                    )
                })
        })
        .collect()
}

impl IpFilter {
    /// Builds the filter from `allow` and `deny` lists.
    pub fn from_settings(s: &FilterSettings) -> Result<Self, FilterConfigError> {
        let st: Settings = s.parse()?;
        if st.allow.is_empty() && st.deny.is_empty() {
            return Err(FilterConfigError::new(
                "ip_filter has neither allow nor deny ranges",
                "add allow = [\"10.0.0.0/8\"] and/or deny = [...]",
            ));
        }
        Ok(Self {
            allow: nets("allow", &st.allow)?,
            deny: nets("deny", &st.deny)?,
        })
    }

    /// Whether `ip` may pass.
    pub fn permits(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        if self.deny.iter().any(|n| n.contains(&ip)) {
            return false;
        }
        self.allow.is_empty() || self.allow.iter().any(|n| n.contains(&ip))
    }
}

#[async_trait]
impl Filter for IpFilter {
    async fn on_request(&self, _req: &mut request::Parts, ctx: &mut FilterContext) -> Flow {
        match ctx.client_ip() {
            Some(ip) if self.permits(ip) => Flow::Continue,
            _ => Flow::Respond(reply::json_error(
                StatusCode::FORBIDDEN,
                "ip_denied",
                "the client address is not allowed on this route",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn filter(toml: &str) -> Result<IpFilter, FilterConfigError> {
        IpFilter::from_settings(&FilterSettings::from_toml(toml)?)
    }

    #[test]
    fn deny_wins_and_allow_restricts() {
        let f = filter(
            r#"allow = ["10.0.0.0/8", "::1"]
               deny = ["10.1.0.0/16"]"#,
        )
        .expect("valid");
        assert!(f.permits("10.2.3.4".parse().expect("ip")));
        assert!(!f.permits("10.1.3.4".parse().expect("ip")));
        assert!(!f.permits("192.168.1.1".parse().expect("ip")));
        assert!(f.permits("::1".parse().expect("ip")));
        assert!(
            f.permits("::ffff:10.9.9.9".parse().expect("ip")),
            "mapped v4"
        );
        let only_deny = filter(r#"deny = ["127.0.0.1/32"]"#).expect("valid");
        assert!(!only_deny.permits("127.0.0.1".parse().expect("ip")));
        assert!(only_deny.permits("127.0.0.2".parse().expect("ip")));
    }

    #[tokio::test]
    async fn refuses_with_403() {
        let f = filter(r#"allow = ["10.0.0.0/8"]"#).expect("valid");
        let (mut req, _) = http::Request::new(()).into_parts();
        let mut ctx = FilterContext::new(None, Some([8, 8, 8, 8].into()), None, false);
        let Flow::Respond(r) = f.on_request(&mut req, &mut ctx).await else {
            panic!("refused");
        };
        assert_eq!(r.status(), 403);
    }

    #[test]
    fn bad_ranges_are_config_errors() {
        let e = filter(r#"allow = ["10.0.0.0/33"]"#).expect_err("bad");
        assert_eq!(e.key.as_deref(), Some("allow"));
        assert!(filter("").is_err());
    }
}
