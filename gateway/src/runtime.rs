//! The runtime snapshot: routes bound to live clusters, built once per config version and
//! read lock-free by every request through [`GatewayState::runtime`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use discovery::consul::{Consul, ConsulDiscovery};
use discovery::{Discovery, EndpointSet, Query, StaticDiscovery, UpdateStream};
use std::collections::HashMap;

use filters::{Filter, FilterChain, NamedFilter};
use futures_util::{FutureExt, StreamExt};
use http::HeaderValue;
use serde::Serialize;
use tokio::sync::Notify;

use crate::cluster::Cluster;
use crate::config::{AccessLogSettings, Config, EndpointSource, RoutePolicy};
use crate::fallback::LastGood;
use crate::metrics::RouteMetrics;
use crate::router::{PathMatch, RequestView, Rewrite, RouteMatch};
use resilience::BreakerConfig;

/// A route bound to its cluster and its filter chain.
#[derive(Debug)]
pub(crate) struct Route {
    /// Unique name.
    pub name: Arc<str>,
    /// Conditions.
    pub matcher: RouteMatch,
    /// Path rewrite.
    pub rewrite: Option<Rewrite>,
    /// Where matching requests go.
    pub cluster: Arc<Cluster>,
    /// Global filters, then the route's own.
    pub chain: FilterChain,
    /// Timeout and retry overrides, and the fallback.
    pub policy: RoutePolicy,
    /// The fallback's cluster, if it has one.
    pub fallback_cluster: Option<Arc<Cluster>>,
    /// The last good responses, when the fallback keeps them.
    pub last_good: Option<Arc<LastGood>>,
    /// The route's Prometheus series and rolling window (kept while name and cluster stay).
    pub metrics: Arc<RouteMetrics>,
}

/// Everything a request needs, for one config version.
#[derive(Debug)]
pub(crate) struct Runtime {
    /// Routes in match order (each request holds the one it matched).
    pub routes: Vec<Arc<Route>>,
    /// Clusters in declaration order.
    pub clusters: Vec<Arc<Cluster>>,
    /// The `Via` entry this gateway adds (`1.1 NAME`).
    pub via: HeaderValue,
    /// The `Via` entry for requests received over HTTP/2 (`2 NAME`).
    pub via_h2: HeaderValue,
    /// `[server] preserve_header_case`: header names are passed on in the case they came in.
    pub preserve_header_case: bool,
    /// Access log settings.
    pub access_log: AccessLogSettings,
    /// The global filters alone, for requests no route matches.
    pub default_chain: FilterChain,
    /// Filters whose state a reload may keep, by fingerprint.
    pub kept_filters: HashMap<Arc<str>, Arc<dyn Filter>>,
    /// The Consul settings the clusters' watches use.
    pub consul: Option<discovery::consul::ConsulConfig>,
    /// Each listener's edge settings, by its address.
    pub listeners: Vec<(std::net::SocketAddr, crate::edge::ListenerEdge)>,
    /// The edge settings for a connection whose listener is unknown.
    pub default_edge: crate::edge::ListenerEdge,
    /// The admin API's settings (its lock reads the token and allowed hosts from here).
    pub admin: crate::config::AdminSettings,
    /// The store of this version's cluster-wide rate limits, if it names one.
    pub limit_store: Option<Arc<redis_store::RedisStore>>,
    /// The inbound limit and the sources of request priority.
    pub overload: crate::overload::Overload,
}

impl Runtime {
    /// The edge settings of the listener a connection arrived on (its local address; a
    /// wildcard listener matches by port).
    pub(crate) fn listener_edge(
        &self,
        local: Option<std::net::SocketAddr>,
    ) -> &crate::edge::ListenerEdge {
        let Some(local) = local else {
            return &self.default_edge;
        };
        self.listeners
            .iter()
            .find(|(a, _)| {
                a.port() == local.port() && (a.ip().is_unspecified() || a.ip() == local.ip())
            })
            .map_or(&self.default_edge, |(_, e)| e)
    }

    /// Builds the first snapshot; clusters start empty and are filled by
    /// [`Runtime::discovery_watches`].
    pub(crate) fn build(config: &Config) -> Self {
        Self::build_from(config, None)
    }

    /// Builds a snapshot for `config`, keeping from `previous` what did not change: clusters
    /// with the same settings (their breaker, bulkhead, budget, endpoints with their outlier
    /// state, and discovery watch), filters that keep state in the same place with the same
    /// settings (rate-limit buckets), and the last-good stores of routes whose fallback
    /// settings stayed. A cluster whose settings changed starts fresh, seeded with the old
    /// cluster's endpoints when it still has the same endpoint source.
    pub(crate) fn build_from(config: &Config, previous: Option<&Runtime>) -> Self {
        crate::fleet::apply(&config.fleet);
        let old_cluster = |name: &str| {
            previous.and_then(|p| p.clusters.iter().find(|c| c.name() == name).cloned())
        };
        let same_consul = previous.is_some_and(|p| p.consul == config.consul);
        let clusters: Vec<Arc<Cluster>> = config
            .clusters
            .iter()
            .map(|spec| {
                let from_consul = matches!(spec.endpoints, EndpointSource::Consul(_));
                match old_cluster(&spec.name) {
                    Some(old) if old.spec() == spec && (same_consul || !from_consul) => old,
                    Some(old) if old.spec().endpoints == spec.endpoints => {
                        let fresh = Cluster::new(spec.clone());
                        fresh.seed_from(&old);
                        Arc::new(fresh)
                    }
                    _ => Arc::new(Cluster::new(spec.clone())),
                }
            })
            .collect();
        let kept = |f: &NamedFilter| -> NamedFilter {
            let old = previous
                .filter(|_| f.filter.keep_across_reloads() && !f.fingerprint.is_empty())
                .and_then(|p| p.kept_filters.get(&f.fingerprint));
            match old {
                Some(old) => NamedFilter {
                    filter: old.clone(),
                    ..f.clone()
                },
                None => f.clone(),
            }
        };
        let global: Vec<NamedFilter> = config.filters.iter().map(kept).collect();
        let mut kept_filters = HashMap::new();
        let mut routes = Vec::with_capacity(config.routes.len());
        for r in &config.routes {
            let Some(cluster) = clusters.get(r.cluster).cloned() else {
                continue;
            };
            let own: Vec<NamedFilter> = r.filters.iter().map(kept).collect();
            for f in global.iter().chain(&own) {
                if f.filter.keep_across_reloads() && !f.fingerprint.is_empty() {
                    kept_filters.insert(f.fingerprint.clone(), f.filter.clone());
                }
            }
            let fallback = r.policy.fallback.as_ref();
            let last_good = fallback.and_then(|f| f.last_good).map(|settings| {
                previous
                    .and_then(|p| p.routes.iter().find(|o| *o.name == *r.name))
                    .and_then(|o| o.last_good.clone())
                    .filter(|lg| lg.settings() == settings)
                    .unwrap_or_else(|| Arc::new(LastGood::new(settings)))
            });
            let metrics = previous
                .and_then(|p| p.routes.iter().find(|o| *o.name == *r.name))
                .map(|o| o.metrics.clone())
                .filter(|m| m.cluster() == cluster.name())
                .unwrap_or_else(|| {
                    let window = cluster
                        .breaker()
                        .map_or_else(BreakerConfig::default, |b| *b.config());
                    Arc::new(crate::metrics::metrics().route(&r.name, cluster.name(), window))
                });
            routes.push(Arc::new(Route {
                metrics,
                name: r.name.as_str().into(),
                matcher: r.matcher.clone(),
                rewrite: r.rewrite.clone(),
                cluster,
                chain: FilterChain::concat(&global, &own),
                policy: r.policy.clone(),
                fallback_cluster: fallback
                    .and_then(|f| f.cluster)
                    .and_then(|i| clusters.get(i).cloned()),
                last_good,
            }));
        }
        for f in &global {
            if f.filter.keep_across_reloads() && !f.fingerprint.is_empty() {
                kept_filters.insert(f.fingerprint.clone(), f.filter.clone());
            }
        }
        let via = HeaderValue::from_str(&format!("1.1 {}", config.server.via))
            .unwrap_or_else(|_| HeaderValue::from_static("1.1 gateway"));
        let via_h2 = HeaderValue::from_str(&format!("2 {}", config.server.via))
            .unwrap_or_else(|_| HeaderValue::from_static("2 gateway"));
        Self {
            routes,
            clusters,
            via,
            via_h2,
            preserve_header_case: config.server.preserve_header_case,
            access_log: config.access_log.clone(),
            default_chain: FilterChain::new(global),
            kept_filters,
            consul: config.consul.clone(),
            listeners: config
                .listeners
                .iter()
                .map(|l| {
                    let edge = crate::edge::ListenerEdge {
                        keep_header_case: config.server.preserve_header_case,
                        ..l.edge.clone()
                    };
                    (l.address, edge)
                })
                .collect(),
            default_edge: crate::edge::ListenerEdge {
                keep_header_case: config.server.preserve_header_case,
                ..crate::edge::ListenerEdge::default()
            },
            admin: config.admin.clone(),
            limit_store: crate::fleet::store_of(config.redis.as_ref()),
            overload: crate::overload::Overload::build(
                &config.overload,
                previous.map(|p| &p.overload),
            ),
        }
    }

    /// The first route matching the request.
    pub(crate) fn find_route(&self, req: &RequestView<'_>) -> Option<&Arc<Route>> {
        self.routes.iter().find(|r| r.matcher.matches(req))
    }

    /// Starts discovery for every cluster: the first update of each watch is applied now when
    /// it is already available (static endpoints), so the gateway serves from its first request;
    /// the returned streams carry later updates and are driven by [`follow`].
    pub(crate) fn discovery_watches(&self, config: &Config) -> Vec<(Arc<Cluster>, UpdateStream)> {
        Self::watches_for(&self.clusters, config)
    }

    /// Starts the discovery watches of `clusters` (static ones are filled at once).
    pub(crate) fn watches_for(
        clusters: &[Arc<Cluster>],
        config: &Config,
    ) -> Vec<(Arc<Cluster>, UpdateStream)> {
        let mut fixed = StaticDiscovery::new();
        for c in &config.clusters {
            if let EndpointSource::Static(eps) = &c.endpoints {
                fixed.insert(c.name.clone(), eps.clone());
            }
        }
        let consul = config
            .consul
            .clone()
            .map(|c| ConsulDiscovery::new(Consul::new(c)));
        let mut watches = Vec::new();
        for cluster in clusters {
            let (source, query): (&dyn Discovery, Query) = match &cluster.spec().endpoints {
                EndpointSource::Static(_) => (&fixed, Query::service(cluster.name())),
                EndpointSource::Consul(q) => match &consul {
                    Some(c) => (c, q.clone()),
                    None => {
                        tracing::error!(
                            cluster = cluster.name(),
                            "cluster uses Consul but no Consul is configured"
                        );
                        continue;
                    }
                },
            };
            match source.watch(&query) {
                Ok(mut watch) => {
                    cluster.set_discovery(source.kind(), watch.health.clone());
                    // A static set is there at once; other sources answer once polled.
                    if source.kind() == "static" {
                        if let Some(Some(first)) = watch.updates.next().now_or_never() {
                            let mut set = EndpointSet::default();
                            set.apply(first);
                            cluster.update(&set);
                        }
                    } else {
                        tracing::info!(cluster = cluster.name(), source = source.kind(), service = %query.service, "watching");
                    }
                    watches.push((cluster.clone(), watch.updates));
                }
                Err(e) => {
                    tracing::error!(cluster = cluster.name(), error = %e, "discovery watch failed")
                }
            }
        }
        watches
    }

    pub(crate) fn route_status(&self) -> Vec<RouteStatus> {
        self.routes
            .iter()
            .map(|r| RouteStatus {
                name: r.name.to_string(),
                filters: r.chain.names().into_iter().map(str::to_owned).collect(),
                cluster: r.cluster.name().to_owned(),
                host: r.matcher.host.as_ref().map(|h| match h {
                    crate::router::HostMatch::Exact(h) => h.clone(),
                    crate::router::HostMatch::Suffix(s) => format!("*{s}"),
                }),
                path: match &r.matcher.path {
                    PathMatch::Any => None,
                    PathMatch::Exact(p) => Some(format!("exact {p}")),
                    PathMatch::Prefix(p) => Some(format!("prefix {p}")),
                    PathMatch::Template(t) => Some(format!("template {}", t.as_str())),
                },
                methods: r
                    .matcher
                    .methods
                    .as_ref()
                    .map(|m| m.iter().map(|m| m.as_str().to_owned()).collect()),
                headers: r
                    .matcher
                    .headers
                    .iter()
                    .map(|h| match &h.value {
                        Some(v) => format!("{}={}", h.name, v.to_str().unwrap_or("<binary>")),
                        None => h.name.to_string(),
                    })
                    .collect(),
                rewrite: r.rewrite.as_ref().map(|rw| match rw {
                    Rewrite::Prefix { from, to } => format!("prefix {from} -> {to}"),
                    Rewrite::Template { source, .. } => {
                        format!("template from {}", source.as_str())
                    }
                    Rewrite::Fixed(p) => format!("fixed {p}"),
                }),
                priority: r.policy.priority.unwrap_or_default().class().as_str(),
            })
            .collect()
    }
}

/// Drives a discovery stream, applying its updates to the cluster until the stream ends. The
/// updates of one answer (a source's diff) are installed together, as one new table.
pub(crate) async fn follow(cluster: Arc<Cluster>, mut updates: UpdateStream) {
    let mut set = EndpointSet::default();
    while let Some(update) = updates.next().await {
        let mut changed = set.apply(update);
        while let Some(Some(more)) = updates.next().now_or_never() {
            changed |= set.apply(more);
        }
        if changed || !cluster.is_ready() {
            let addresses: Vec<String> = set.iter().map(|e| e.address.to_string()).collect();
            tracing::info!(
                cluster = cluster.name(),
                endpoints = set.len(),
                addresses = %addresses.join(","),
                "endpoint set updated"
            );
            cluster.update(&set);
        }
    }
}

/// Admin view of a route.
#[derive(Debug, Serialize)]
pub(crate) struct RouteStatus {
    name: String,
    cluster: String,
    host: Option<String>,
    path: Option<String>,
    methods: Option<Vec<String>>,
    headers: Vec<String>,
    rewrite: Option<String>,
    filters: Vec<String>,
    /// The route's priority class (`degraded` when not configured).
    priority: &'static str,
}

impl crate::edge::ListenerSettings for GatewayState {
    fn with_listener<R>(
        &self,
        local: Option<std::net::SocketAddr>,
        f: impl FnOnce(&crate::edge::ListenerEdge) -> R,
    ) -> R {
        f(self.runtime().listener_edge(local))
    }
}

/// State shared by the proxy services, the admin API and shutdown.
#[derive(Debug)]
pub(crate) struct GatewayState {
    runtime: ArcSwap<Runtime>,
    in_flight: AtomicU64,
    idle: Notify,
    draining: AtomicBool,
    /// The TLS listeners' certificates and the ACME client (set once at start).
    tls: std::sync::OnceLock<Arc<crate::tls::Tls>>,
}

impl GatewayState {
    /// State serving `runtime`.
    pub(crate) fn new(runtime: Runtime) -> Self {
        Self {
            runtime: ArcSwap::from_pointee(runtime),
            in_flight: AtomicU64::new(0),
            idle: Notify::new(),
            draining: AtomicBool::new(false),
            tls: std::sync::OnceLock::new(),
        }
    }

    /// Sets the TLS state (once, at start).
    pub(crate) fn set_tls(&self, tls: Arc<crate::tls::Tls>) {
        let _ = self.tls.set(tls);
    }

    /// The TLS listeners' certificates and the ACME client (empty before start and in tests).
    pub(crate) fn tls(&self) -> &crate::tls::Tls {
        static NONE: std::sync::OnceLock<crate::tls::Tls> = std::sync::OnceLock::new();
        match self.tls.get() {
            Some(t) => t,
            None => NONE.get_or_init(crate::tls::Tls::default),
        }
    }

    /// The current snapshot.
    pub(crate) fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Installs a new snapshot; requests already running keep the one they loaded.
    pub(crate) fn swap(&self, runtime: Arc<Runtime>) {
        self.runtime.store(runtime);
    }

    /// Requests being served right now.
    pub(crate) fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Counts a request as in flight until the guard drops.
    pub(crate) fn track(self: &Arc<Self>) -> InFlightGuard {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlightGuard(self.clone())
    }

    /// Whether shutdown has begun (readiness then fails so load balancers stop sending).
    pub(crate) fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Acquire)
    }

    /// Marks shutdown as begun.
    pub(crate) fn start_draining(&self) {
        self.draining.store(true, Ordering::Release);
    }

    /// Waits until no request is in flight.
    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            if self.in_flight() == 0 {
                return;
            }
            notified.await;
        }
    }
}

/// Holds one request in the in-flight count.
#[derive(Debug)]
pub(crate) struct InFlightGuard(Arc<GatewayState>);

impl InFlightGuard {
    /// Whether the gateway is draining (answers then close their connection).
    pub(crate) fn draining(&self) -> bool {
        self.0.is_draining()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
