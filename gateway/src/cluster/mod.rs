//! Clusters: a named, live set of endpoints (kept current by discovery), the per-endpoint
//! counters the load balancer and the admin API read, and endpoint choice.

mod balance;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use arc_swap::ArcSwap;
use discovery::{Endpoint, EndpointSet, SourceHealth};
use pingora::protocols::ALPN;
use pingora::upstreams::peer::HttpPeer;
use resilience::{Bulkhead, CircuitBreaker, ConcurrencyLimiter, RetryBudget, Transition};
use serde::Serialize;

use crate::config::{ClusterSpec, EndpointSource, LoadBalancing, UpstreamProtocol};
use crate::metrics::ClusterMetrics;
use balance::Balancer;

/// Live state of one endpoint: its current description and peer, and counters that survive
/// endpoint-set updates keeping its address (a new weight or tags from discovery keep them).
#[derive(Debug)]
pub(crate) struct EndpointState {
    endpoint: Endpoint,
    peer: HttpPeer,
    stats: Arc<EndpointStats>,
}

/// The counters of one endpoint address (load, outcomes, outlier ejection).
#[derive(Debug, Default)]
pub(crate) struct EndpointStats {
    in_flight: AtomicU64,
    requests: AtomicU64,
    failures: AtomicU64,
    /// Failed attempts in a row (outlier detection).
    consecutive_failures: AtomicU32,
    /// End of the current ejection, as [`clock_ms`]; 0 when not ejected.
    ejected_until: AtomicU64,
    /// Times ejected so far (each ejection lasts longer).
    ejections: AtomicU32,
}

/// Milliseconds since the process's first call, plus one (so 0 can mean "never").
fn clock_ms(now: Instant) -> u64 {
    static ORIGIN: OnceLock<Instant> = OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    now.saturating_duration_since(origin).as_millis() as u64 + 1
}

impl std::ops::Deref for EndpointState {
    type Target = EndpointStats;
    fn deref(&self) -> &EndpointStats {
        &self.stats
    }
}

impl EndpointState {
    fn new(endpoint: Endpoint, spec: &ClusterSpec) -> Self {
        Self::with_stats(endpoint, spec, Arc::default())
    }

    fn with_stats(endpoint: Endpoint, spec: &ClusterSpec, stats: Arc<EndpointStats>) -> Self {
        let mut peer = match &spec.tls {
            Some(t) => {
                let mut peer = HttpPeer::new(endpoint.address, true, t.sni.clone());
                peer.client_cert_key = t.material.client.clone();
                peer.group_key = t.material.pool_key();
                peer
            }
            None => HttpPeer::new(endpoint.address, false, String::new()),
        };
        let o = &mut peer.options;
        if let Some(t) = &spec.tls {
            o.verify_cert = t.verify;
            o.verify_hostname = t.verify;
            o.ca = t.material.ca.clone();
            o.alpn = if spec.protocol == UpstreamProtocol::H2 {
                ALPN::H2
            } else {
                ALPN::H2H1
            };
            o.max_h2_streams = spec.max_h2_streams;
        }
        o.connection_timeout = Some(spec.timeouts.connect);
        o.read_timeout = Some(spec.timeouts.read);
        o.write_timeout = Some(spec.timeouts.write);
        o.idle_timeout = Some(spec.timeouts.idle);
        if spec.protocol == UpstreamProtocol::H2c {
            // Plain text with a minimum version of 2: pingora speaks h2 with prior knowledge.
            o.alpn = ALPN::H2;
            o.max_h2_streams = spec.max_h2_streams;
        }
        Self {
            endpoint,
            peer,
            stats,
        }
    }

    /// Whether outlier detection has taken this endpoint out of rotation at `now`.
    pub(crate) fn is_ejected(&self, now: Instant) -> bool {
        let until = self.ejected_until.load(Ordering::Relaxed);
        until != 0 && clock_ms(now) < until
    }

    /// The endpoint.
    pub(crate) fn endpoint(&self) -> &Endpoint {
        &self.endpoint
    }

    /// A peer to hand to pingora for one attempt.
    pub(crate) fn peer(&self) -> Box<HttpPeer> {
        Box::new(self.peer.clone())
    }

    /// Requests currently outstanding to this endpoint.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Records that an attempt to this endpoint failed (connect error, timeout, broken
    /// response, failure status); returns the failures in a row.
    fn record_failure(&self) -> u32 {
        self.failures.fetch_add(1, Ordering::Relaxed);
        self.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// An endpoint chosen for one request; it counts as in flight until dropped.
#[derive(Debug)]
pub(crate) struct Picked(Arc<EndpointState>);

impl Picked {
    fn new(state: Arc<EndpointState>) -> Self {
        state.in_flight.fetch_add(1, Ordering::Relaxed);
        state.requests.fetch_add(1, Ordering::Relaxed);
        Self(state)
    }
}

impl std::ops::Deref for Picked {
    type Target = EndpointState;
    fn deref(&self) -> &EndpointState {
        &self.0
    }
}

impl Drop for Picked {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One version of a cluster's endpoints with the balancer built for it.
#[derive(Debug)]
struct EndpointTable {
    endpoints: Vec<Arc<EndpointState>>,
    balancer: Balancer,
}

/// A named set of endpoints and how to reach and choose them.
#[derive(Debug)]
pub(crate) struct Cluster {
    spec: ClusterSpec,
    table: ArcSwap<EndpointTable>,
    ready: AtomicBool,
    /// The discovery source's kind and health, set when the watch starts.
    discovery: OnceLock<(&'static str, tokio::sync::watch::Receiver<SourceHealth>)>,
    breaker: Option<Arc<CircuitBreaker>>,
    bulkhead: Bulkhead,
    /// The adaptive concurrency limit, in the bulkhead's place when configured.
    limiter: Option<ConcurrencyLimiter>,
    budget: RetryBudget,
    metrics: ClusterMetrics,
}

fn on_transition(t: &Transition) {
    crate::metrics::metrics().breaker_transition(&t.breaker, t.from, t.to);
    if t.to.is_open() {
        tracing::warn!(cluster = %t.breaker, from = %t.from, to = %t.to, reason = %t.reason, "circuit breaker state changed");
    } else {
        tracing::info!(cluster = %t.breaker, from = %t.from, to = %t.to, reason = %t.reason, "circuit breaker state changed");
    }
}

impl Cluster {
    /// A cluster with no endpoints yet; it is not ready until the first [`Cluster::update`].
    pub(crate) fn new(spec: ClusterSpec) -> Self {
        let table = EndpointTable {
            endpoints: Vec::new(),
            balancer: Balancer::new(&spec.load_balancing, &[]),
        };
        let now = Instant::now();
        let policy = &spec.policy;
        let breaker = policy.breaker.as_ref().map(|b| {
            Arc::new(
                CircuitBreaker::new(spec.name.as_str(), b.config, now).with_listener(on_transition),
            )
        });
        let bulkhead = Bulkhead::new(policy.bulkhead.config);
        let limiter = policy
            .concurrency
            .as_ref()
            .map(|a| ConcurrencyLimiter::new(a.limiter, now));
        let budget = RetryBudget::new(policy.budget, now);
        let spec_name = spec.name.clone();
        Self {
            spec,
            table: ArcSwap::from_pointee(table),
            ready: AtomicBool::new(false),
            discovery: OnceLock::new(),
            breaker,
            bulkhead,
            limiter,
            budget,
            metrics: crate::metrics::metrics().cluster(&spec_name),
        }
    }

    /// The adaptive concurrency limit, when the cluster has one instead of a bulkhead.
    pub(crate) fn limiter(&self) -> Option<&ConcurrencyLimiter> {
        self.limiter.as_ref()
    }

    /// The cluster's Prometheus series.
    pub(crate) fn metrics(&self) -> &ClusterMetrics {
        &self.metrics
    }

    /// Endpoints serving and ejected by outlier detection at `now`.
    pub(crate) fn endpoint_counts(&self, now: Instant) -> (usize, usize) {
        let table = self.table.load();
        let ejected = table.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        (table.endpoints.len() - ejected, ejected)
    }

    /// The cluster's circuit breaker (`None` when disabled).
    pub(crate) fn breaker(&self) -> Option<&Arc<CircuitBreaker>> {
        self.breaker.as_ref()
    }

    /// The cluster's bulkhead.
    pub(crate) fn bulkhead(&self) -> &Bulkhead {
        &self.bulkhead
    }

    /// The cluster's retry budget.
    pub(crate) fn budget(&self) -> &RetryBudget {
        &self.budget
    }

    /// Records a successful attempt to `picked` (ends its run of failures).
    pub(crate) fn endpoint_succeeded(&self, picked: &Picked) {
        if picked.consecutive_failures.load(Ordering::Relaxed) != 0 {
            picked.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Records a failed attempt to `picked`; with outlier detection on, enough failures in a
    /// row eject it for a growing interval, unless too much of the cluster is ejected already.
    pub(crate) fn endpoint_failed(&self, picked: &Picked, now: Instant) {
        let run = picked.record_failure();
        let Some(o) = self.spec.policy.outlier else {
            return;
        };
        if run < o.consecutive_failures || picked.is_ejected(now) {
            return;
        }
        let table = self.table.load();
        let total = table.endpoints.len();
        let ejected = table.endpoints.iter().filter(|e| e.is_ejected(now)).count();
        let cap = (total * usize::from(o.max_ejection_percent) / 100)
            .max(usize::from(total > 1))
            .min(total.saturating_sub(1));
        if ejected >= cap {
            return;
        }
        let n = picked.ejections.fetch_add(1, Ordering::Relaxed) + 1;
        let length = o.base_ejection.saturating_mul(n).min(o.max_ejection);
        picked
            .ejected_until
            .store(clock_ms(now + length), Ordering::Relaxed);
        picked.consecutive_failures.store(0, Ordering::Relaxed);
        tracing::warn!(
            cluster = self.name(),
            endpoint = %picked.endpoint.address,
            failures_in_a_row = run,
            ejected_for_ms = length.as_millis() as u64,
            "outlier endpoint ejected"
        );
    }

    /// The cluster's settings.
    pub(crate) fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// The cluster's name.
    pub(crate) fn name(&self) -> &str {
        &self.spec.name
    }

    /// Records which discovery source feeds this cluster and how to see its health.
    pub(crate) fn set_discovery(
        &self,
        kind: &'static str,
        health: tokio::sync::watch::Receiver<SourceHealth>,
    ) {
        let _ = self.discovery.set((kind, health));
    }

    /// The discovery source's health (`None` before the watch started).
    pub(crate) fn discovery_health(&self) -> Option<SourceHealth> {
        self.discovery.get().map(|(_, h)| h.borrow().clone())
    }

    /// Whether discovery has delivered the first endpoint set.
    pub(crate) fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Installs a new endpoint set. Endpoints that stay (same address) keep their counters,
    /// outlier state and pooled connections, even when their weight or tags change; in-flight
    /// requests keep the endpoint they were given.
    pub(crate) fn update(&self, set: &EndpointSet) {
        let current = self.table.load();
        let endpoints: Vec<Arc<EndpointState>> = set
            .iter()
            .map(|e| {
                match current
                    .endpoints
                    .iter()
                    .find(|s| s.endpoint.address == e.address)
                {
                    Some(s) if s.endpoint == *e => s.clone(),
                    Some(s) => Arc::new(EndpointState::with_stats(
                        e.clone(),
                        &self.spec,
                        s.stats.clone(),
                    )),
                    None => Arc::new(EndpointState::new(e.clone(), &self.spec)),
                }
            })
            .collect();
        self.install(endpoints);
    }

    fn install(&self, endpoints: Vec<Arc<EndpointState>>) {
        let weighted: Vec<(std::net::SocketAddr, u32)> = endpoints
            .iter()
            .map(|s| (s.endpoint.address, s.endpoint.weight))
            .collect();
        let balancer = Balancer::new(&self.spec.load_balancing, &weighted);
        self.table.store(Arc::new(EndpointTable {
            endpoints,
            balancer,
        }));
        self.ready.store(true, Ordering::Release);
    }

    /// Starts with `old`'s endpoints (and their counters and outlier state) when `old` was
    /// ready, so a cluster whose settings changed serves at once instead of waiting for its
    /// discovery source's first answer.
    pub(crate) fn seed_from(&self, old: &Cluster) {
        if !old.is_ready() {
            return;
        }
        let table = old.table.load();
        let endpoints: Vec<Arc<EndpointState>> = table
            .endpoints
            .iter()
            .map(|s| {
                Arc::new(EndpointState::with_stats(
                    s.endpoint.clone(),
                    &self.spec,
                    s.stats.clone(),
                ))
            })
            .collect();
        self.install(endpoints);
    }

    /// Chooses an endpoint that is neither ejected nor in `avoid` (the endpoints a request
    /// already tried). When every endpoint is excluded, ejected ones are used again (better a
    /// suspect endpoint than none), and then tried ones.
    pub(crate) fn pick_avoiding(
        &self,
        hash_key: &[u8],
        avoid: &[SocketAddr],
        now: Instant,
    ) -> Option<Picked> {
        let table = self.table.load();
        let eps = &table.endpoints;
        let usable = |e: &EndpointState| !avoid.contains(&e.endpoint.address) && !e.is_ejected(now);
        for _ in 0..3 {
            let i = table.balancer.pick(eps, hash_key)?;
            match eps.get(i) {
                Some(e) if usable(e) => return Some(Picked::new(e.clone())),
                _ => {}
            }
        }
        // The balancer keeps choosing excluded endpoints (e.g. one hash owner): take the least
        // loaded endpoint that is usable, then one that is merely ejected, then any.
        let least = |ok: &dyn Fn(&EndpointState) -> bool| {
            eps.iter()
                .filter(|e| ok(e))
                .min_by_key(|e| e.in_flight())
                .cloned()
        };
        least(&usable)
            .or_else(|| least(&|e: &EndpointState| !avoid.contains(&e.endpoint.address)))
            .or_else(|| least(&|_: &EndpointState| true))
            .map(Picked::new)
    }

    fn discovery_status(&self) -> DiscoveryStatus {
        let (service, tags) = match &self.spec.endpoints {
            EndpointSource::Consul(q) => (Some(q.service.clone()), q.tags.clone()),
            EndpointSource::Static(_) => (None, Vec::new()),
        };
        let now = std::time::SystemTime::now();
        let ms = |d: std::time::Duration| d.as_millis() as u64;
        let health = self.discovery_health();
        let source = match (&self.spec.endpoints, &health) {
            (_, Some(h)) => h.source,
            (EndpointSource::Consul(_), None) => "consul",
            (EndpointSource::Static(_), None) => "static",
        };
        let h = health.unwrap_or_else(|| SourceHealth::new(source));
        DiscoveryStatus {
            source,
            service,
            tags,
            stale: h.is_stale(),
            stale_for_ms: h.staleness(now).map(ms),
            last_success_ago_ms: h
                .last_success
                .map(|t| ms(now.duration_since(t).unwrap_or_default())),
            consecutive_errors: h.consecutive_errors,
            last_error: h.last_error,
            index: h.index,
            changes: h.changes,
        }
    }

    /// A snapshot for the admin API.
    pub(crate) fn status(&self) -> ClusterStatus {
        let table = self.table.load();
        ClusterStatus {
            name: self.spec.name.clone(),
            ready: self.is_ready(),
            discovery: self.discovery_status(),
            load_balancing: match &self.spec.load_balancing {
                LoadBalancing::LeastRequest => "least_request",
                LoadBalancing::RoundRobin => "round_robin",
                LoadBalancing::ConsistentHash(_) => "consistent_hash",
            },
            protocol: match self.spec.protocol {
                UpstreamProtocol::Http1 => "http1",
                UpstreamProtocol::H2c => "h2c",
                UpstreamProtocol::Https => "https",
                UpstreamProtocol::H2 => "h2",
            },
            breaker: self
                .breaker
                .as_ref()
                .map_or("disabled", |b| b.state().name()),
            connect_timeout_ms: self.spec.timeouts.connect.as_millis() as u64,
            read_timeout_ms: self.spec.timeouts.read.as_millis() as u64,
            endpoints: table
                .endpoints
                .iter()
                .map(|s| EndpointStatus {
                    address: s.endpoint.address.to_string(),
                    weight: s.endpoint.weight,
                    tags: s.endpoint.tags.clone(),
                    meta: s.endpoint.meta.clone(),
                    in_flight: s.in_flight(),
                    requests: s.requests.load(Ordering::Relaxed),
                    failures: s.failures.load(Ordering::Relaxed),
                    ejected: s.is_ejected(Instant::now()),
                    ejections: s.ejections.load(Ordering::Relaxed),
                })
                .collect(),
        }
    }
}

/// Admin view of a cluster.
#[derive(Debug, Serialize)]
pub(crate) struct ClusterStatus {
    name: String,
    ready: bool,
    discovery: DiscoveryStatus,
    load_balancing: &'static str,
    protocol: &'static str,
    breaker: &'static str,
    connect_timeout_ms: u64,
    read_timeout_ms: u64,
    endpoints: Vec<EndpointStatus>,
}

/// Admin view of where a cluster's endpoints come from and how fresh they are.
#[derive(Debug, Serialize)]
pub(crate) struct DiscoveryStatus {
    source: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    service: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    /// The last attempt to reach the source failed: the endpoints are the last known ones.
    stale: bool,
    /// Milliseconds since the source last confirmed the endpoints, while stale.
    stale_for_ms: Option<u64>,
    /// Milliseconds since the source last answered.
    last_success_ago_ms: Option<u64>,
    consecutive_errors: u32,
    last_error: Option<String>,
    /// The source's version of the answer (Consul's index).
    index: u64,
    /// Answers that changed the endpoint set.
    changes: u64,
}

/// Admin view of an endpoint.
#[derive(Debug, Serialize)]
pub(crate) struct EndpointStatus {
    address: String,
    weight: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    tags: Vec<String>,
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    meta: std::collections::BTreeMap<String, String>,
    in_flight: u64,
    requests: u64,
    failures: u64,
    ejected: bool,
    ejections: u32,
}

/// Admin view of a concurrency limit (a cluster's adaptive one, or the gateway's inbound
/// one): the limit, in-flight, waiters, RTTs and what it shed per class.
pub(crate) fn limiter_status(l: &resilience::LimiterSnapshot) -> serde_json::Value {
    let mut shed = serde_json::Map::new();
    for c in resilience::Class::ALL {
        shed.insert(c.as_str().to_owned(), l.shed[c.index()].into());
    }
    serde_json::json!({
        "adaptive": l.adaptive,
        "limit": l.limit,
        "in_flight": l.in_flight,
        "queued": l.queued,
        "min_rtt_ms": l.min_rtt.map(|d| d.as_secs_f64() * 1000.0),
        "sample_rtt_ms": l.sample_rtt.map(|d| d.as_secs_f64() * 1000.0),
        "origin_utilization": l.origin_load,
        "shed": shed,
        "drops": l.dropped,
    })
}

/// Admin view of a cluster's breaker, bulkhead, concurrency limit and retry budget.
pub(crate) fn resilience_status(cluster: &Cluster, now: Instant) -> serde_json::Value {
    let counts = |c: &resilience::Counts| {
        let mut m = serde_json::Map::new();
        for e in resilience::Event::ALL {
            m.insert(e.name().to_owned(), c.get(e).into());
        }
        serde_json::Value::Object(m)
    };
    let breaker = cluster.breaker().map(|b| {
        let s = b.snapshot(now);
        let cfg = b.config();
        let trip = match cfg.trip {
            resilience::Trip::ErrorRate {
                volume_threshold,
                error_percent,
            } => serde_json::json!({
                "mode": "error_rate",
                "volume_threshold": volume_threshold,
                "error_percent": error_percent,
            }),
            resilience::Trip::ConsecutiveFailures(n) => serde_json::json!({
                "mode": "consecutive_failures",
                "consecutive_failures": n,
            }),
        };
        serde_json::json!({
            "state": s.state.name(),
            "open": s.state.is_open(),
            "retry_after_ms": s.retry_after.map(|d| d.as_millis() as u64),
            "window": {
                "requests": s.window.requests(),
                "errors": s.window.errors(),
                "error_percent": s.window.error_percent(),
                "counts": counts(&s.window),
            },
            "totals": counts(&s.totals),
            "consecutive_failures": s.consecutive_failures,
            "transitions": s.transitions,
            "latency_us": {
                "count": s.latency.count,
                "mean": s.latency.mean_us,
                "p50": s.latency.p50_us,
                "p90": s.latency.p90_us,
                "p99": s.latency.p99_us,
                "p999": s.latency.p999_us,
                "max": s.latency.max_us,
            },
            "config": {
                "window_ms": cfg.window.as_millis() as u64,
                "buckets": cfg.buckets,
                "sleep_window_ms": cfg.sleep_window.as_millis() as u64,
                "trip": trip,
            },
        })
    });
    let bh = cluster.bulkhead().snapshot();
    let budget = cluster.budget().snapshot(now);
    serde_json::json!({
        "cluster": cluster.name(),
        "breaker": breaker,
        "bulkhead": {
            "max_concurrent": bh.config.max_concurrent,
            "max_queue": bh.config.max_queue,
            "in_use": bh.in_use,
            "queued": bh.queued,
            "rejected": bh.rejected,
        },
        "concurrency_limit": cluster.limiter().map(|l| limiter_status(&l.snapshot())),
        "retry_budget": {
            "requests": budget.requests,
            "retries": budget.retries,
            "allowed": budget.allowed,
            "refused": budget.refused,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(port: u16, weight: u32) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port))).with_weight(weight)
    }

    #[test]
    fn endpoints_that_stay_keep_their_counters_and_ejection_across_updates() {
        let mut spec = balance::tests::test_spec();
        spec.policy.outlier = Some(crate::config::OutlierSettings {
            consecutive_failures: 2,
            base_ejection: std::time::Duration::from_secs(30),
            max_ejection: std::time::Duration::from_secs(300),
            max_ejection_percent: 50,
        });
        let cluster = Cluster::new(spec);
        cluster.update(&EndpointSet::from_endpoints([ep(1, 1), ep(2, 1), ep(3, 1)]));
        let now = Instant::now();
        let first = cluster.pick_avoiding(&[], &[ep(2, 1).address, ep(3, 1).address], now);
        let first = first.expect("endpoint 1");
        assert_eq!(first.endpoint().address, ep(1, 1).address);
        cluster.endpoint_failed(&first, now);
        cluster.endpoint_failed(&first, now);
        assert!(first.is_ejected(now), "two failures in a row eject it");

        // Discovery changes the weight of 1 and tags 2, drops 3, adds 4. A request picked
        // before the update still holds endpoint 1.
        let mut tagged = ep(2, 1);
        tagged.tags.push("canary".into());
        cluster.update(&EndpointSet::from_endpoints([ep(1, 5), tagged, ep(4, 1)]));
        let status = cluster.status();
        let addresses: Vec<&str> = status
            .endpoints
            .iter()
            .map(|e| e.address.as_str())
            .collect();
        assert_eq!(addresses, ["127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:4"]);
        let one = &status.endpoints[0];
        assert_eq!(one.weight, 5, "the new weight applies");
        assert!(one.ejected, "the ejection survives the update");
        assert_eq!((one.requests, one.failures, one.ejections), (1, 2, 1));
        assert_eq!(one.in_flight, 1, "the in-flight request is still counted");
        drop(first);
        assert_eq!(cluster.status().endpoints[0].in_flight, 0);
        assert_eq!(status.endpoints[1].tags, vec!["canary".to_owned()]);
    }
}
