//! Static discovery: endpoint sets fixed by the config file, the embedded default when there
//! is no Consul.

use std::collections::HashMap;

use futures_util::stream::{self, StreamExt};

use crate::{Discovery, DiscoveryError, Endpoint, Update, UpdateStream};

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
    fn watch(&self, service: &str) -> Result<UpdateStream, DiscoveryError> {
        let endpoints = self
            .services
            .get(service)
            .cloned()
            .ok_or_else(|| DiscoveryError::UnknownService(service.to_owned()))?;
        Ok(stream::once(async move { Update::Reset(endpoints) })
            .chain(stream::pending())
            .boxed())
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
        let mut updates = source.watch("catalog").expect("known service");
        assert_eq!(
            updates.next().await,
            Some(Update::Reset(vec![Endpoint::new(addr)]))
        );
        assert!(
            updates.next().now_or_never().is_none(),
            "no end, no more updates"
        );
    }

    #[test]
    fn unknown_service_is_an_error() {
        let err = StaticDiscovery::new()
            .watch("nope")
            .err()
            .map(|e| e.to_string());
        assert_eq!(
            err.as_deref(),
            Some("service `nope` is unknown to this discovery source")
        );
    }
}
