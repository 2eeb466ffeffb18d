//! What the host gateway hands filter factories besides their settings: a shared store for
//! cluster-wide limits, the fleet's size, and observers for the decisions filters make.
//!
//! Filters stay free of any particular store or metrics library: the gateway implements these
//! traits (Redis for the store, Prometheus for the observers) and passes them in through
//! [`FilterSettings::services`](crate::FilterSettings::services).

use std::fmt;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

/// One key's GCRA step for the shared store, in microseconds of wall-clock time since the
/// Unix epoch (every gateway of a fleet must keep its clock in sync, as NTP does).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcraOp {
    /// The store key (already namespaced and hash-tagged by the filter).
    pub key: String,
    /// Requests to add to the key's state.
    pub count: u32,
    /// Time one request uses up (the limit's period divided by its rate).
    pub emission_us: u64,
    /// How far ahead of now the state may run: `burst` emissions.
    pub tolerance_us: u64,
    /// The caller's current time.
    pub now_us: u64,
}

/// The answer of [`LimitStore::check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Whether the last request of the op was admitted.
    pub allowed: bool,
    /// The key's theoretical arrival time after the op (µs since the epoch).
    pub tat_us: u64,
}

/// Why the store could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("limit store unavailable: {0}")]
pub struct StoreError(pub String);

/// The store of cluster-wide limits that the gateways of a fleet share.
#[async_trait]
pub trait LimitStore: Send + Sync + fmt::Debug + 'static {
    /// Adds every op's `count` to its key (requests already admitted locally, never refused)
    /// and returns each key's theoretical arrival time, in the ops' order.
    async fn sync(&self, ops: &[GcraOp]) -> Result<Vec<u64>, StoreError>;

    /// Adds `count - 1` admitted requests and then decides on one more: admitted when the
    /// key's state stays within the tolerance.
    async fn check(&self, op: &GcraOp) -> Result<Checked, StoreError>;

    /// Whether the store is worth asking now (`false` while its circuit breaker is open):
    /// callers then use their fallback at once instead of waiting for a timeout.
    fn available(&self) -> bool;

    /// Where the store is, for logs and the admin API (never a password).
    fn describe(&self) -> String;
}

/// How many gateways share the cluster-wide limits right now: from the fleet's membership in
/// Consul, or configured. Never 0.
#[derive(Debug)]
pub struct Fleet {
    size: AtomicU32,
}

impl Fleet {
    /// A fleet of `size` gateways (at least one).
    pub fn new(size: u32) -> Self {
        Self {
            size: AtomicU32::new(size.max(1)),
        }
    }

    /// The current size.
    pub fn size(&self) -> u32 {
        self.size.load(Ordering::Relaxed)
    }

    /// Sets the size (at least one); returns the previous size.
    pub fn set(&self, size: u32) -> u32 {
        self.size.swap(size.max(1), Ordering::Relaxed)
    }
}

impl Default for Fleet {
    fn default() -> Self {
        Self::new(1)
    }
}

/// How a cluster-wide limit reached its decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LimitMode {
    /// Decided by this gateway alone, from its share of the capacity the store last reported.
    Local,
    /// Decided by the store (the key was close to its limit).
    Global,
    /// The store was unavailable; the limit's `on_store_failure` decided.
    Degraded,
}

impl LimitMode {
    /// The label used in metrics.
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Global => "global",
            Self::Degraded => "degraded",
        }
    }
}

/// Receives what cluster-wide limits decide and how their store answers (metrics).
pub trait LimitObserver: Send + Sync + fmt::Debug + 'static {
    /// A request was admitted or refused by a cluster-wide limit, in `mode`.
    fn decision(&self, mode: LimitMode, allowed: bool);

    /// The store answered (or failed) after `latency`.
    fn store_call(&self, latency: Duration, ok: bool);

    /// A limit entered (`true`) or left degraded mode.
    fn degraded(&self, limit: &str, degraded: bool);
}

/// The services a host gateway offers to filter factories.
#[derive(Debug, Clone)]
pub struct FilterServices {
    /// The shared store of cluster-wide limits, when the gateway has one (`[redis]`).
    pub limit_store: Option<Arc<dyn LimitStore>>,
    /// Longest time between two reconciliations of a cluster-wide limit with its store.
    pub limit_sync_interval: Duration,
    /// The fleet's size.
    pub fleet: Arc<Fleet>,
    /// Where limit decisions are reported.
    pub limit_observer: Option<Arc<dyn LimitObserver>>,
}

impl Default for FilterServices {
    /// No store, a fleet of one, reconciliation every 100 ms, no observer.
    fn default() -> Self {
        Self {
            limit_store: None,
            limit_sync_interval: Duration::from_millis(100),
            fleet: Arc::new(Fleet::default()),
            limit_observer: None,
        }
    }
}
