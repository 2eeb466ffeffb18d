//! Service discovery: endpoints, endpoint-set updates, the [`Discovery`] trait and the
//! static (config-file) implementation that is the embedded default.
//!
//! A discovery source yields, per service, a stream of [`Update`]s. The first update of a
//! stream is always a [`Update::Reset`] with the full endpoint set; later updates may be
//! resets or incremental changes. [`EndpointSet::apply`] folds updates into the current set.

#![forbid(unsafe_code)]

mod endpoint;
mod static_source;

pub use endpoint::{Endpoint, EndpointSet, Update};
pub use static_source::StaticDiscovery;

use futures_util::stream::BoxStream;

/// A stream of endpoint-set updates for one service. It ends only when the source is dropped.
pub type UpdateStream = BoxStream<'static, Update>;

/// Why a service could not be watched.
#[derive(Debug, thiserror::Error)]
pub enum DiscoveryError {
    /// The source does not know this service.
    #[error("service `{0}` is unknown to this discovery source")]
    UnknownService(String),
}

/// A source of endpoints: the static config file, Consul, ...
///
/// Implementations must make the first item of every stream a [`Update::Reset`] carrying the
/// whole known set (possibly empty), so a consumer is never left guessing whether it has
/// seen everything.
pub trait Discovery: Send + Sync + std::fmt::Debug {
    /// Starts watching `service` and returns its updates.
    fn watch(&self, service: &str) -> Result<UpdateStream, DiscoveryError>;

    /// A short name for logs and the admin API (`static`, `consul`).
    fn kind(&self) -> &'static str;
}
