//! Overload protection of one config version: the gateway's own inbound limit and how a
//! request's priority is decided (a trusted header, a JWT claim, the route, the default).
//!
//! The inbound limit counts requests in flight through the whole gateway (filters, upstream
//! call and response) and sheds lowest priority first, so that a flood cannot take the event
//! loop and memory from the traffic that matters. Each cluster's adaptive limit
//! ([`resilience::ConcurrencyLimiter`], on the cluster) protects its origin.

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderMap, HeaderName, HeaderValue};
use prometheus::IntCounter;
use resilience::{ConcurrencyLimiter, LimitPermit, LimiterConfig, Priority, Shed};

use crate::config::OverloadSettings;

/// The gateway's inbound limit and its shed counters.
#[derive(Debug)]
pub(crate) struct Inbound {
    /// The limit.
    pub(crate) limiter: ConcurrencyLimiter,
    config: LimiterConfig,
    shed: [IntCounter; 3],
}

/// Overload settings of one runtime snapshot.
#[derive(Debug)]
pub(crate) struct Overload {
    /// The inbound limit (kept across reloads while its settings stay).
    pub(crate) inbound: Option<Arc<Inbound>>,
    header: Option<(HeaderName, Vec<ipnet::IpNet>)>,
    claim: Option<String>,
    /// `Retry-After` of shed answers.
    pub(crate) retry_after: HeaderValue,
}

impl Overload {
    /// Builds `settings`, keeping `previous`'s inbound limit (its in-flight count and waiters)
    /// when its settings did not change.
    pub(crate) fn build(settings: &OverloadSettings, previous: Option<&Overload>) -> Self {
        let inbound = settings.inbound.map(|config| {
            previous
                .and_then(|p| p.inbound.clone())
                .filter(|i| i.config == config)
                .unwrap_or_else(|| {
                    Arc::new(Inbound {
                        limiter: ConcurrencyLimiter::new(config, Instant::now()),
                        config,
                        shed: crate::metrics::metrics().inbound_shed(),
                    })
                })
        });
        Self {
            inbound,
            header: settings.priority_header.clone(),
            claim: settings.priority_claim.clone(),
            retry_after: HeaderValue::from(settings.retry_after_seconds),
        }
    }

    /// The request's priority before its filters run: the priority header when the client
    /// is a trusted source and the value parses, else the route's, else degraded.
    pub(crate) fn priority(
        &self,
        route: Option<Priority>,
        headers: &HeaderMap,
        client: Option<IpAddr>,
    ) -> Priority {
        self.priority_with_identity(route, headers, client, None)
    }

    /// The priority after the filters ran: the trusted header, else the claim of the
    /// verified identity, else the route's, else degraded.
    pub(crate) fn priority_with_identity(
        &self,
        route: Option<Priority>,
        headers: &HeaderMap,
        client: Option<IpAddr>,
        identity: Option<&filters::Identity>,
    ) -> Priority {
        if let Some(p) = self.trusted_header(headers, client) {
            return p;
        }
        let claimed = self.claim.as_deref().and_then(|c| {
            let text = identity?.claim_text(c)?;
            Priority::parse(&text).ok()
        });
        claimed.or(route).unwrap_or_default()
    }

    fn trusted_header(&self, headers: &HeaderMap, client: Option<IpAddr>) -> Option<Priority> {
        let name = self.header_name()?;
        if !self.trusts(client) {
            return None;
        }
        Priority::parse(headers.get(name)?.to_str().ok()?).ok()
    }

    /// The priority header's name, removed from requests of untrusted clients so that an
    /// upstream never believes a client's own claim to priority.
    pub(crate) fn header_name(&self) -> Option<&HeaderName> {
        self.header.as_ref().map(|(n, _)| n)
    }

    /// Whether the client may set the priority header.
    pub(crate) fn trusts(&self, client: Option<IpAddr>) -> bool {
        match (&self.header, client) {
            (Some((_, from)), Some(c)) => from.iter().any(|n| n.contains(&c)),
            _ => false,
        }
    }

    /// A slot of the inbound limit for a request of `priority` (waiting at most the limit's
    /// queue timeout), `Ok(None)` without an inbound limit, or the shed.
    pub(crate) async fn admit(&self, priority: Priority) -> Result<Option<LimitPermit>, Shed> {
        let Some(inbound) = &self.inbound else {
            return Ok(None);
        };
        match inbound
            .limiter
            .acquire_within(priority, tokio::time::sleep)
            .await
        {
            Ok(p) => Ok(Some(p)),
            Err(shed) => {
                inbound.shed[shed.class().index()].inc();
                Err(shed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn overload(header_from: &[&str], claim: Option<&str>) -> Overload {
        Overload::build(
            &OverloadSettings {
                inbound: None,
                retry_after_seconds: 2,
                priority_header: Some((
                    HeaderName::from_static("x-priority"),
                    header_from
                        .iter()
                        .map(|n| n.parse().expect("cidr"))
                        .collect(),
                )),
                priority_claim: claim.map(str::to_owned),
            },
            None,
        )
    }

    #[test]
    fn the_header_counts_only_from_trusted_clients_then_claim_then_route() {
        let o = overload(&["10.0.0.0/8"], Some("prio"));
        let mut h = HeaderMap::new();
        h.insert("x-priority", HeaderValue::from_static("critical"));
        let inside: IpAddr = "10.1.2.3".parse().expect("ip");
        let outside: IpAddr = "192.0.2.1".parse().expect("ip");
        let route = Some(Priority::NON_CRITICAL);
        assert_eq!(o.priority(route, &h, Some(inside)), Priority::CRITICAL);
        assert_eq!(o.priority(route, &h, Some(outside)), Priority::NON_CRITICAL);
        assert_eq!(o.priority(None, &h, Some(outside)), Priority::DEGRADED);
        let mut id = filters::Identity::default();
        id.claims.insert("prio".into(), "90".into());
        assert_eq!(
            o.priority_with_identity(route, &h, Some(outside), Some(&id))
                .score(),
            90
        );
        h.insert("x-priority", HeaderValue::from_static("bogus"));
        assert_eq!(
            o.priority_with_identity(route, &h, Some(inside), Some(&id))
                .score(),
            90,
            "an unreadable header is ignored"
        );
        assert_eq!(o.retry_after, HeaderValue::from_static("2"));
        assert!(o.trusts(Some(inside)) && !o.trusts(Some(outside)) && !o.trusts(None));
    }
}
