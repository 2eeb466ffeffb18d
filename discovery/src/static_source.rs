//! Static discovery: endpoint sets fixed by the config file, the embedded default when there
//! is no Consul.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};

use crate::{Discovery, DiscoveryError, Endpoint, Query, SourceHealth, Update, Watch};

/// Endpoints declared in configuration. Each watch yields one [`Update::Reset`] and then stays
/// open without further updates (a static set never changes while it is in use).
#[derive(Debug, Clone, Default)]
pub struct StaticDiscovery {
    services: HashMap<String, Vec<Endpoint>>,
}

impl StaticDiscovery {
    /// An empty source; add services with [`StaticDiscovery::insert`].
    pub fn new() -> Self {
        Self::default()
    }

    /// Declares (or replaces) the endpoints of `service`.
    pub fn insert(&mut self, service: impl Into<String>, endpoints: Vec<Endpoint>) {
        self.services.insert(service.into(), endpoints);
    }
}

impl Discovery for StaticDiscovery {
    fn watch(&self, query: &Query) -> Result<Watch, DiscoveryError> {
        let endpoints: Vec<Endpoint> = self
            .services
            .get(&query.service)
            .ok_or_else(|| DiscoveryError::UnknownService(query.service.clone()))?
            .iter()
            .filter(|e| query.selects(e))
            .cloned()
            .collect();
        let (_, health) = tokio::sync::watch::channel(SourceHealth::always("static"));
        Ok(Watch {
            updates: stream::once(async move { Update::Reset(endpoints) })
                .chain(stream::pending())
                .boxed(),
            health,
        })
    }

    fn kind(&self) -> &'static str {
        "static"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::net::SocketAddr;

    #[tokio::test]
    async fn first_update_is_a_reset_and_then_the_stream_stays_open() {
        let mut source = StaticDiscovery::new();
        let addr = SocketAddr::from(([127, 0, 0, 1], 8080));
        source.insert("catalog", vec![Endpoint::new(addr)]);
        let mut updates = source
            .watch(&Query::service("catalog"))
            .expect("known service")
            .updates;
        assert_eq!(
            updates.next().await,
            Some(Update::Reset(vec![Endpoint::new(addr)]))
        );
        assert!(
            updates.next().now_or_never().is_none(),
            "no end, no more updates"
        );
    }

    #[tokio::test]
    async fn tags_select_a_subset() {
        let mut source = StaticDiscovery::new();
        let mut canary = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 1)));
        canary.tags.push("canary".into());
        let stable = Endpoint::new(SocketAddr::from(([127, 0, 0, 1], 2)));
        source.insert("play", vec![canary.clone(), stable]);
        let mut w = source
            .watch(&Query::service("play").tag("canary"))
            .expect("known");
        assert_eq!(w.updates.next().await, Some(Update::Reset(vec![canary])));
        assert!(!w.health.borrow().is_stale());
    }

    #[test]
    fn unknown_service_is_an_error() {
        let err = StaticDiscovery::new()
            .watch(&Query::service("nope"))
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("service `nope` is unknown to this discovery source")
        );
    }
}
