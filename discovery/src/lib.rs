//! Service discovery: endpoints, endpoint-set updates, the [`Discovery`] trait, its static
//! (config-file) implementation that is the embedded default, a Consul implementation with
//! correct blocking-query watches, and service self-registration in Consul.
//!
//! A discovery source yields, per [`Query`], a stream of [`Update`]s. The first update of a
//! stream is always a [`Update::Reset`] with the full endpoint set; later updates may be
//! resets or incremental changes. [`EndpointSet::apply`] folds updates into the current set.
//! Beside the stream, every watch carries a [`SourceHealth`] receiver that says whether the
//! source answers and how stale the last known set is: a source that cannot be reached keeps
//! its last set (the stream simply yields nothing) and reports the failure there.

#![forbid(unsafe_code)]

pub mod consul;
mod endpoint;
mod health;
mod static_source;

pub use endpoint::{Endpoint, EndpointSet, Update};
pub use health::SourceHealth;
pub use static_source::StaticDiscovery;

use std::collections::BTreeMap;

use futures_util::stream::BoxStream;

/// A stream of endpoint-set updates for one service. It ends only when the source is dropped.
pub type UpdateStream = BoxStream<'static, Update>;

/// What to watch: a service, optionally narrowed to instances with all of `tags` and the
/// given `meta` values (canary subsets), plus a source-specific filter expression.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Query {
    /// The service name.
    pub service: String,
    /// Instances must carry every one of these tags.
    pub tags: Vec<String>,
    /// Instances must carry these metadata values.
    pub meta: BTreeMap<String, String>,
    /// An extra filter in the source's own language (Consul's `filter` expressions), ANDed
    /// with the tags and meta.
    pub filter: Option<String>,
    /// The datacenter to ask (Consul; the agent's own when `None`).
    pub datacenter: Option<String>,
}

impl Query {
    /// All instances of `service`.
    pub fn service(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            ..Self::default()
        }
    }

    /// Only instances tagged `tag` (in addition to earlier conditions).
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Whether `endpoint` carries the tags and meta this query asks for (the filter
    /// expression is the source's business).
    pub fn selects(&self, endpoint: &Endpoint) -> bool {
        self.tags.iter().all(|t| endpoint.tags.contains(t))
            && self
                .meta
                .iter()
                .all(|(k, v)| endpoint.meta.get(k) == Some(v))
    }
}

/// A running watch: the updates and the source's health as seen by this watch.
pub struct Watch {
    /// Endpoint-set updates; the first is a [`Update::Reset`].
    pub updates: UpdateStream,
    /// Whether the source answers, and since when the set may be stale.
    pub health: tokio::sync::watch::Receiver<SourceHealth>,
}

impl std::fmt::Debug for Watch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watch")
            .field("health", &*self.health.borrow())
            .finish_non_exhaustive()
    }
}

/// Why a service could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The source does not know this service.
    #[error("service `{0}` is unknown to this discovery source")]
    UnknownService(String),
    /// The source cannot express this query.
    #[error("{0}")]
    InvalidQuery(String),
}

/// A source of endpoints: the static config file, Consul, ...
///
/// Implementations must make the first item of every stream a [`Update::Reset`] carrying the
/// whole known set (possibly empty), so a consumer is never left guessing whether it has
/// seen everything. Streams do their work when polled (inside the consumer's runtime), so
/// creating a watch needs no runtime.
pub trait Discovery: Send + Sync + std::fmt::Debug {
    /// Starts watching the instances `query` selects.
    fn watch(&self, query: &Query) -> Result<Watch, DiscoveryError>;

    /// A short name for logs and the admin API (`static`, `consul`).
    fn kind(&self) -> &'static str;
}
