//! The fleet: the store of cluster-wide rate limits (Redis), the fleet's size (configured, or
//! counted among this gateway's peers in Consul), and the observer that turns limit decisions
//! into metrics.
//!
//! Stores are kept per address across config versions, so a reload keeps the connection and
//! its breaker; the fleet's size is one value per process, which the membership watch (or the
//! config, without one) keeps current.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use discovery::consul::{Consul, ConsulConfig, ConsulDiscovery, Service};
use discovery::{Discovery, EndpointSet, Query};
use filters::{FilterServices, Fleet, LimitMode, LimitObserver, LimitStore};
use futures_util::StreamExt;
use redis_store::RedisStore;

use crate::config::{FleetSettings, RedisConfig};

static FLEET: LazyLock<Arc<Fleet>> = LazyLock::new(|| Arc::new(Fleet::default()));
static MEMBERSHIP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
static STORES: LazyLock<Mutex<HashMap<redis_store::RedisSettings, Arc<RedisStore>>>> =
    LazyLock::new(Mutex::default);
static OBSERVER: LazyLock<Arc<MetricsObserver>> =
    LazyLock::new(|| Arc::new(MetricsObserver::new()));

/// The services filters built for a config with `redis` and `fleet` get. Nothing connects
/// here: a store opens its connection on first use.
pub(crate) fn services(redis: Option<&RedisConfig>, _fleet: &FleetSettings) -> FilterServices {
    let defaults = FilterServices::default();
    FilterServices {
        limit_store: redis.and_then(store).map(|s| s as Arc<dyn LimitStore>),
        limit_sync_interval: redis.map_or(defaults.limit_sync_interval, |r| r.sync_interval),
        fleet: FLEET.clone(),
        limit_observer: Some(OBSERVER.clone() as Arc<dyn LimitObserver>),
    }
}

fn store(redis: &RedisConfig) -> Option<Arc<RedisStore>> {
    let mut stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(s) = stores.get(&redis.settings) {
        return Some(s.clone());
    }
    let observer = Some(OBSERVER.clone() as Arc<dyn LimitObserver>);
    match RedisStore::new(redis.settings.clone(), observer) {
        Ok(s) => {
            let s = Arc::new(s);
            stores.insert(redis.settings.clone(), s.clone());
            Some(s)
        }
        // Validation already refused an address that does not parse.
        Err(_) => None,
    }
}

/// The store a config uses, if it has one (for the admin API).
pub(crate) fn store_of(redis: Option<&RedisConfig>) -> Option<Arc<RedisStore>> {
    let stores = STORES.lock().unwrap_or_else(|p| p.into_inner());
    redis.and_then(|r| stores.get(&r.settings).cloned())
}

/// Applies an accepted config's fleet settings: its `size`, unless membership counts the
/// fleet.
pub(crate) fn apply(fleet: &FleetSettings) {
    if !MEMBERSHIP.load(std::sync::atomic::Ordering::Relaxed) {
        set_size(fleet.size);
    }
}

/// The fleet's size now.
pub(crate) fn size() -> u32 {
    FLEET.size()
}

/// Where the size comes from: `consul` (membership) or `config`.
pub(crate) fn source() -> &'static str {
    if MEMBERSHIP.load(std::sync::atomic::Ordering::Relaxed) {
        "consul"
    } else {
        "config"
    }
}

fn set_size(n: u32) {
    let before = FLEET.set(n);
    if before != n.max(1) {
        tracing::info!(from = before, to = n.max(1), "fleet size changed");
    }
    crate::metrics::metrics()
        .fleet_size
        .set(i64::from(n.max(1)));
}

/// Registers this gateway as `service` in Consul (a TTL check its registration keeps
/// passing) and keeps the fleet's size at the number of passing instances until `stop`
/// completes; then the registration is withdrawn.
pub(crate) async fn membership(
    consul: ConsulConfig,
    service: String,
    address: SocketAddr,
    stop: impl std::future::Future<Output = ()>,
) {
    MEMBERSHIP.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut stop = std::pin::pin!(stop);
    let client = Consul::new(consul);
    let registration = loop {
        let entry = Service::new(service.clone(), address)
            .tag("gateway")
            .ttl_check(Duration::from_secs(3));
        match client.register(entry).await {
            Ok(r) => break r,
            Err(e) => {
                tracing::warn!(error = %e, %service, "fleet: cannot register in Consul yet; retrying");
                tokio::select! {
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                    () = &mut stop => return,
                }
            }
        }
    };
    tracing::info!(%service, %address, "fleet: registered in Consul; counting passing gateways");
    let watch =
        match ConsulDiscovery::new(client).watch(&Query::service(service.clone()).tag("gateway")) {
            Ok(w) => w,
            Err(e) => {
                tracing::error!(error = %e, "fleet: cannot watch the fleet's membership");
                return;
            }
        };
    let mut set = EndpointSet::default();
    let mut updates = watch.updates;
    loop {
        tokio::select! {
            update = updates.next() => match update {
                Some(update) => {
                    if set.apply(update) {
                        set_size(set.len() as u32);
                    }
                }
                None => break,
            },
            () = &mut stop => break,
        }
    }
    if let Err(e) = registration.deregister().await {
        tracing::warn!(error = %e, "fleet: could not deregister from Consul (its TTL check will lapse)");
    }
}

/// Limit decisions and store calls as Prometheus series. The decision counters are
/// resolved once (a label lookup per request would hash and lock the family).
#[derive(Debug)]
struct MetricsObserver {
    /// By mode (local, global, degraded), then refused / allowed.
    decisions: [[prometheus::IntCounter; 2]; 3],
}

impl MetricsObserver {
    fn new() -> Self {
        let m = crate::metrics::metrics();
        let by_mode =
            |mode: LimitMode| [false, true].map(|allowed| m.limit_decisions(mode.name(), allowed));
        Self {
            decisions: [LimitMode::Local, LimitMode::Global, LimitMode::Degraded].map(by_mode),
        }
    }
}

impl LimitObserver for MetricsObserver {
    fn decision(&self, mode: LimitMode, allowed: bool) {
        let by_mode = match mode {
            LimitMode::Local => &self.decisions[0],
            LimitMode::Global => &self.decisions[1],
            LimitMode::Degraded => &self.decisions[2],
        };
        by_mode[usize::from(allowed)].inc();
    }

    fn store_call(&self, latency: Duration, ok: bool) {
        crate::metrics::metrics().limit_store_call(latency, ok);
    }

    fn degraded(&self, limit: &str, degraded: bool) {
        crate::metrics::metrics()
            .limits_degraded
            .with_label_values(&[limit])
            .set(i64::from(degraded));
        let mut d = DEGRADED.lock().unwrap_or_else(|p| p.into_inner());
        if degraded {
            d.insert(limit.to_owned());
        } else {
            d.remove(limit);
        }
    }
}

static DEGRADED: LazyLock<Mutex<std::collections::BTreeSet<String>>> =
    LazyLock::new(Mutex::default);

/// The cluster-wide limits degraded right now (their store unavailable).
pub(crate) fn degraded_limits() -> Vec<String> {
    DEGRADED
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect()
}
