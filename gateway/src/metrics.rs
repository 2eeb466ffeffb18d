//! Prometheus metrics (text exposition on the admin port's `/metrics`) and the rolling
//! per-route windows the Hystrix stream reads. Both are fed from one place per request
//! ([`RouteMetrics::finish`]), so the two views always agree.
//!
//! The hot path touches only pre-resolved handles: each route and cluster looks its labelled
//! series up once, when a config version is built, and a request then costs a few atomic
//! increments, one histogram observation and one uncontended lock for the rolling window.
//! Values that describe state rather than events (breaker state, bulkhead in use, endpoints,
//! discovery staleness, config generation) are read when `/metrics` is scraped.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use resilience::{BreakerConfig, Class, Event, LimiterSnapshot, RollingMetrics, State};

/// Buckets of the request and upstream latency histograms, in seconds.
const LATENCY_BUCKETS: [f64; 16] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

/// Status classes, indexed by `status / 100` (0: nothing could be sent).
const CLASSES: [&str; 6] = ["none", "1xx", "2xx", "3xx", "4xx", "5xx"];

/// Every breaker state, for the one-hot state gauge.
const STATES: [State; 5] = [
    State::Closed,
    State::Open,
    State::HalfOpen,
    State::ForcedOpen,
    State::ForcedClosed,
];

/// The process's metric families.
#[derive(Debug)]
pub(crate) struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    in_flight: IntGaugeVec,
    retries: IntCounterVec,
    fallbacks: IntCounterVec,
    filter_rejections: IntCounterVec,
    edge_refusals: IntCounterVec,
    attempts: IntCounterVec,
    upstream_duration: HistogramVec,
    bulkhead_rejections: IntCounterVec,
    shed: IntCounterVec,
    retries_shed: IntCounterVec,
    budget_exhausted: IntCounterVec,
    breaker_transitions: IntCounterVec,
    config_reloads: IntCounterVec,
    // Read at scrape time.
    breaker_state: IntGaugeVec,
    breaker_error_percent: IntGaugeVec,
    bulkhead_in_use: IntGaugeVec,
    bulkhead_max: IntGaugeVec,
    limit: IntGaugeVec,
    limit_in_flight: IntGaugeVec,
    limit_queued: IntGaugeVec,
    limit_min_rtt: GaugeVec,
    limit_sample_rtt: GaugeVec,
    limit_origin_load: GaugeVec,
    budget_available: GaugeVec,
    endpoints: IntGaugeVec,
    discovery_up: IntGaugeVec,
    discovery_staleness: GaugeVec,
    discovery_errors: IntGaugeVec,
    config_generation: IntGauge,
    config_loaded: Gauge,
    process_in_flight: IntGauge,
    draining: IntGauge,
    /// Gateways sharing the cluster-wide rate limits.
    pub(crate) fleet_size: IntGauge,
    /// 1 while a cluster-wide limit's store is unavailable.
    pub(crate) limits_degraded: IntGaugeVec,
    limit_decisions: IntCounterVec,
    limit_store: HistogramVec,
    limit_store_errors: IntCounter,
    tls_handshakes: IntCounterVec,
    tls_handshake_failures: IntCounterVec,
    tls_reloads: IntCounterVec,
    tls_expiry: GaugeVec,
    acme_orders: IntCounterVec,
    access_log_dropped: IntCounter,
    /// One scrape at a time sets the state gauges.
    scrape: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Registers a collector; names are constants, so failure is a programming error caught by the
/// unit tests, and the metric still works unregistered.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, c: C) -> C {
    if let Err(e) = registry.register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric not registered");
    }
    c
}

macro_rules! family {
    ($registry:expr, $kind:ident, $name:expr, $help:expr, $labels:expr) => {
        registered(
            $registry,
            // invariant: constant, valid names and label names (checked by the unit tests).
            $kind::new(Opts::new($name, $help), $labels).expect("valid metric"),
        )
    };
}

fn histogram_family(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let opts = HistogramOpts::new(name, help).buckets(LATENCY_BUCKETS.to_vec());
    // invariant: constant, valid name, labels and buckets.
    registered(
        registry,
        HistogramVec::new(opts, labels).expect("valid metric"),
    )
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let reg = &r;
        let m = Self {
            requests: family!(reg, IntCounterVec, "gateway_requests_total", "Requests answered, by route, the route's cluster and status class (gateway answers included).", &["route", "cluster", "class"]),
            duration: histogram_family(reg, "gateway_request_duration_seconds", "Time from the request's arrival to the end of its response.", &["route", "cluster"]),
            in_flight: family!(reg, IntGaugeVec, "gateway_requests_in_flight", "Requests being served now, by route.", &["route", "cluster"]),
            retries: family!(reg, IntCounterVec, "gateway_retries_total", "Retry attempts made (each one allowed by the policy and the retry budget).", &["route", "cluster"]),
            fallbacks: family!(reg, IntCounterVec, "gateway_fallbacks_total", "Fallbacks by kind (static, last_good, cluster) and result (success, failure: wanted but could not answer).", &["route", "kind", "result"]),
            filter_rejections: family!(reg, IntCounterVec, "gateway_filter_rejections_total", "Requests a filter answered itself (jwt 401, rate_limit 429, ...), by filter and status.", &["route", "filter", "status"]),
            edge_refusals: family!(reg, IntCounterVec, "gateway_edge_refusals_total", "Requests and connections refused by edge protection, by reason (invalid_path, uri_too_long, request_headers_too_large, header_timeout, listener_limit, client_limit, proxy_protocol, upstream_headers_too_large).", &["reason"]),
            attempts: family!(reg, IntCounterVec, "gateway_upstream_attempts_total", "Upstream attempts by outcome (success, failure, timeout).", &["cluster", "outcome"]),
            upstream_duration: histogram_family(reg, "gateway_upstream_duration_seconds", "Time from an attempt's start to the upstream's response headers (or its failure).", &["cluster"]),
            bulkhead_rejections: family!(reg, IntCounterVec, "gateway_bulkhead_rejections_total", "Requests the cluster's bulkhead refused (full, or the queue wait ran out).", &["cluster"]),
            shed: family!(reg, IntCounterVec, "gateway_shed_total", "Requests shed by a concurrency limit (scope cluster: the cluster's limit; inbound: the gateway's own), by priority class. Not failures: no breaker counts them.", &["scope", "cluster", "priority"]),
            retries_shed: family!(reg, IntCounterVec, "gateway_retries_shed_total", "Retries not made because the cluster's concurrency limit had no room at the retry's lower priority.", &["cluster"]),
            budget_exhausted: family!(reg, IntCounterVec, "gateway_retry_budget_exhausted_total", "Retries the policy wanted but the cluster's retry budget refused.", &["cluster"]),
            breaker_transitions: family!(reg, IntCounterVec, "gateway_circuit_breaker_transitions_total", "Circuit breaker state changes.", &["cluster", "from", "to"]),
            config_reloads: family!(reg, IntCounterVec, "gateway_config_reloads_total", "Config reload attempts by result (applied, unchanged, rejected) and source.", &["result", "source"]),
            breaker_state: family!(reg, IntGaugeVec, "gateway_circuit_breaker_state", "1 for the breaker's current state, 0 for the others.", &["cluster", "state"]),
            breaker_error_percent: family!(reg, IntGaugeVec, "gateway_circuit_breaker_error_percent", "Error percentage in the breaker's rolling window.", &["cluster"]),
            bulkhead_in_use: family!(reg, IntGaugeVec, "gateway_bulkhead_in_use", "Bulkhead slots taken.", &["cluster"]),
            bulkhead_max: family!(reg, IntGaugeVec, "gateway_bulkhead_max_concurrent", "Bulkhead size.", &["cluster"]),
            limit: family!(reg, IntGaugeVec, "gateway_concurrency_limit", "The concurrency limit now (adaptive limits move with the origin's latency and drops).", &["scope", "cluster"]),
            limit_in_flight: family!(reg, IntGaugeVec, "gateway_concurrency_in_flight", "Requests holding a slot of the concurrency limit.", &["scope", "cluster"]),
            limit_queued: family!(reg, IntGaugeVec, "gateway_concurrency_queued", "Requests waiting for a slot of the concurrency limit.", &["scope", "cluster"]),
            limit_min_rtt: family!(reg, GaugeVec, "gateway_concurrency_min_rtt_seconds", "The adaptive limit's baseline: the minimum round trip over its min_rtt_window.", &["cluster"]),
            limit_sample_rtt: family!(reg, GaugeVec, "gateway_concurrency_sample_rtt_seconds", "The adaptive limit's last judged window: mean round trip.", &["cluster"]),
            limit_origin_load: family!(reg, GaugeVec, "gateway_concurrency_origin_utilization", "The utilization the origin last reported of itself (ORCA load report; above 1 = calls wait inside it).", &["cluster"]),
            budget_available: family!(reg, GaugeVec, "gateway_retry_budget_available", "Retries the cluster's budget would allow now.", &["cluster"]),
            endpoints: family!(reg, IntGaugeVec, "gateway_cluster_endpoints", "Endpoints by state (serving, ejected by outlier detection).", &["cluster", "state"]),
            discovery_up: family!(reg, IntGaugeVec, "gateway_discovery_up", "1 when the cluster's discovery source answered its last query.", &["cluster", "source"]),
            discovery_staleness: family!(reg, GaugeVec, "gateway_discovery_staleness_seconds", "Seconds since the discovery source last confirmed the cluster's endpoints.", &["cluster", "source"]),
            discovery_errors: family!(reg, IntGaugeVec, "gateway_discovery_consecutive_errors", "Failed discovery queries in a row.", &["cluster", "source"]),
            config_generation: registered(reg, IntGauge::new("gateway_config_generation", "Generation of the config version serving now.").expect("valid metric")),
            config_loaded: registered(reg, Gauge::new("gateway_config_loaded_timestamp_seconds", "When the serving config version was loaded (Unix time).").expect("valid metric")),
            process_in_flight: registered(reg, IntGauge::new("gateway_in_flight", "Requests being served now, all routes.").expect("valid metric")),
            draining: registered(reg, IntGauge::new("gateway_draining", "1 while the process drains (shutdown or binary upgrade).").expect("valid metric")),
            fleet_size: registered(reg, IntGauge::new("gateway_fleet_size", "Gateways sharing the cluster-wide rate limits (passing instances in Consul, or [fleet] size).").expect("valid metric")),
            limits_degraded: family!(reg, IntGaugeVec, "gateway_rate_limit_degraded", "1 while a cluster-wide rate limit's store is unavailable and its on_store_failure decides.", &["limit"]),
            limit_decisions: family!(reg, IntCounterVec, "gateway_rate_limit_decisions_total", "Cluster-wide rate limit decisions by mode (local: this gateway's share; global: the store decided; degraded: the store was away) and result.", &["mode", "result"]),
            limit_store: histogram_family(reg, "gateway_rate_limit_store_duration_seconds", "Time of the limit store's (Redis) calls, by result (ok, error).", &["result"]),
            limit_store_errors: registered(reg, IntCounter::new("gateway_rate_limit_store_errors_total", "Limit store (Redis) calls that failed or timed out.").expect("valid metric")),
            tls_handshakes: family!(reg, IntCounterVec, "gateway_tls_handshakes_total", "TLS handshakes completed, by listener and version.", &["listener", "version"]),
            tls_handshake_failures: family!(reg, IntCounterVec, "gateway_tls_handshake_failures_total", "TLS handshakes that failed after the ClientHello, by listener and reason (protocol, no_certificate, client_cert_missing, client_cert_untrusted, client_cert_expired, aborted).", &["listener", "reason"]),
            tls_reloads: family!(reg, IntCounterVec, "gateway_tls_certificate_reloads_total", "Reloads of a listener's certificate files by result (applied, rejected: the old ones keep serving).", &["listener", "result"]),
            tls_expiry: family!(reg, GaugeVec, "gateway_tls_certificate_expiry_timestamp_seconds", "When each served certificate expires (Unix time), by listener, its names and where it came from.", &["listener", "names", "source"]),
            acme_orders: family!(reg, IntCounterVec, "gateway_acme_orders_total", "ACME certificate orders by result (issued, failed).", &["result"]),
            access_log_dropped: registered(reg, IntCounter::new("gateway_access_log_dropped_lines_total", "Access-log lines dropped because stdout did not keep up (8 MiB of lines waiting) or failed.").expect("valid metric")),
            scrape: Mutex::new(()),
            registry: r,
        };
        let info = family!(
            &m.registry,
            IntGaugeVec,
            "gateway_build_info",
            "The gateway's version.",
            &["version"]
        );
        info.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        m
    }

    /// The series of one route (looked up once per config version).
    pub(crate) fn route(&self, route: &str, cluster: &str, window: BreakerConfig) -> RouteMetrics {
        let labels = [route, cluster];
        RouteMetrics {
            cluster: cluster.into(),
            by_class: CLASSES.map(|c| self.requests.with_label_values(&[route, cluster, c])),
            duration: self.duration.with_label_values(&labels),
            in_flight: self.in_flight.with_label_values(&labels),
            retries: self.retries.with_label_values(&labels),
            peak: AtomicI64::new(0),
            rolling: Mutex::new(RollingMetrics::new(
                window.window,
                window.buckets,
                Instant::now(),
            )),
            window: window.window,
        }
    }

    /// The series of one cluster.
    pub(crate) fn cluster(&self, cluster: &str) -> ClusterMetrics {
        let outcome = |o| self.attempts.with_label_values(&[cluster, o]);
        ClusterMetrics {
            success: outcome("success"),
            failure: outcome("failure"),
            timeout: outcome("timeout"),
            upstream_duration: self.upstream_duration.with_label_values(&[cluster]),
            bulkhead_rejections: self.bulkhead_rejections.with_label_values(&[cluster]),
            shed: Class::ALL.map(|c| {
                self.shed
                    .with_label_values(&["cluster", cluster, c.as_str()])
            }),
            retries_shed: self.retries_shed.with_label_values(&[cluster]),
            budget_exhausted: self.budget_exhausted.with_label_values(&[cluster]),
        }
    }

    /// The gateway's inbound shed counters, per class in [`Class::ALL`] order.
    pub(crate) fn inbound_shed(&self) -> [IntCounter; 3] {
        Class::ALL.map(|c| self.shed.with_label_values(&["inbound", "-", c.as_str()]))
    }

    /// Counts a breaker's state change.
    pub(crate) fn breaker_transition(&self, cluster: &str, from: State, to: State) {
        self.breaker_transitions
            .with_label_values(&[cluster, from.name(), to.name()])
            .inc();
    }

    /// Counts a request no route matched.
    pub(crate) fn unrouted(&self, status: u16) {
        let class = CLASSES
            .get(usize::from(status / 100))
            .copied()
            .unwrap_or("none");
        self.requests.with_label_values(&["-", "-", class]).inc();
    }

    /// Counts a request or connection refused by edge protection.
    pub(crate) fn edge_refusal(&self, reason: &str) {
        self.edge_refusals.with_label_values(&[reason]).inc();
    }

    /// Counts a request a filter answered itself.
    pub(crate) fn filter_rejection(&self, route: &str, filter: &str, status: u16) {
        self.filter_rejections
            .with_label_values(&[route, filter, itoa_status(status).as_str()])
            .inc();
    }

    /// Counts a fallback.
    pub(crate) fn fallback(&self, route: &str, kind: &str, success: bool) {
        let result = if success { "success" } else { "failure" };
        self.fallbacks
            .with_label_values(&[route, kind, result])
            .inc();
    }

    /// The counter of a cluster-wide rate limit's decisions in `mode` with one result.
    pub(crate) fn limit_decisions(&self, mode: &str, allowed: bool) -> IntCounter {
        let result = if allowed { "allowed" } else { "refused" };
        self.limit_decisions.with_label_values(&[mode, result])
    }

    /// Records a limit store call.
    pub(crate) fn limit_store_call(&self, latency: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.limit_store
            .with_label_values(&[result])
            .observe(latency.as_secs_f64());
        if !ok {
            self.limit_store_errors.inc();
        }
    }

    /// The completed-handshake counter of a listener and TLS version.
    pub(crate) fn tls_handshakes(&self, listener: &str, version: &str) -> IntCounter {
        self.tls_handshakes.with_label_values(&[listener, version])
    }

    /// The failed-handshake counter of a listener and reason.
    pub(crate) fn tls_handshake_failures(&self, listener: &str, reason: &str) -> IntCounter {
        self.tls_handshake_failures
            .with_label_values(&[listener, reason])
    }

    /// Counts a reload of a listener's certificate files.
    pub(crate) fn tls_reload(&self, listener: &str, result: &str) {
        self.tls_reloads
            .with_label_values(&[listener, result])
            .inc();
    }

    /// Counts an ACME order.
    pub(crate) fn acme_order(&self, result: &str) {
        self.acme_orders.with_label_values(&[result]).inc();
    }

    /// Counts a reload attempt.
    pub(crate) fn config_reload(&self, result: &str, source: &str) {
        self.config_reloads
            .with_label_values(&[result, source])
            .inc();
    }

    /// The text exposition, with the state gauges set from `scrape` (read by the owner of the
    /// runtime at scrape time).
    pub(crate) fn render(&self, scrape: &Scrape) -> String {
        let _one = lock(&self.scrape);
        self.set_state(scrape);
        let mut out = Vec::with_capacity(64 * 1024);
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut out) {
            tracing::error!(error = %e, "could not encode metrics");
        }
        String::from_utf8(out).unwrap_or_default()
    }

    fn set_limiter(&self, scope: &str, name: &str, l: &LimiterSnapshot) {
        let labels = [scope, name];
        self.limit.with_label_values(&labels).set(l.limit as i64);
        self.limit_in_flight
            .with_label_values(&labels)
            .set(l.in_flight as i64);
        self.limit_queued
            .with_label_values(&labels)
            .set(l.queued as i64);
        if let Some(rtt) = l.min_rtt {
            self.limit_min_rtt
                .with_label_values(&[name])
                .set(rtt.as_secs_f64());
        }
        if let Some(rtt) = l.sample_rtt {
            self.limit_sample_rtt
                .with_label_values(&[name])
                .set(rtt.as_secs_f64());
        }
        if let Some(u) = l.origin_load {
            self.limit_origin_load.with_label_values(&[name]).set(u);
        }
    }

    fn set_state(&self, scrape: &Scrape) {
        for family in [
            &self.breaker_state,
            &self.breaker_error_percent,
            &self.bulkhead_in_use,
            &self.bulkhead_max,
            &self.limit,
            &self.limit_in_flight,
            &self.limit_queued,
            &self.endpoints,
            &self.discovery_up,
            &self.discovery_errors,
        ] {
            family.reset();
        }
        self.budget_available.reset();
        self.discovery_staleness.reset();
        self.limit_min_rtt.reset();
        self.limit_sample_rtt.reset();
        self.limit_origin_load.reset();
        self.tls_expiry.reset();
        for (listener, names, source, not_after) in &scrape.certificates {
            self.tls_expiry
                .with_label_values(&[listener.as_str(), names, source])
                .set(*not_after as f64);
        }
        if let Some(l) = &scrape.inbound {
            self.set_limiter("inbound", "-", l);
        }
        for c in &scrape.clusters {
            let name = c.name.as_str();
            if let Some((state, error_percent)) = c.breaker {
                for s in STATES {
                    self.breaker_state
                        .with_label_values(&[name, s.name()])
                        .set(i64::from(state == s));
                }
                self.breaker_error_percent
                    .with_label_values(&[name])
                    .set(i64::from(error_percent));
            }
            self.bulkhead_in_use
                .with_label_values(&[name])
                .set(c.bulkhead_in_use as i64);
            self.bulkhead_max
                .with_label_values(&[name])
                .set(c.bulkhead_max as i64);
            self.budget_available
                .with_label_values(&[name])
                .set(c.budget_available as f64);
            if let Some(l) = &c.limiter {
                self.set_limiter("cluster", name, l);
            }
            self.endpoints
                .with_label_values(&[name, "serving"])
                .set(c.serving as i64);
            self.endpoints
                .with_label_values(&[name, "ejected"])
                .set(c.ejected as i64);
            if let Some(d) = &c.discovery {
                let labels = [name, d.source];
                self.discovery_up
                    .with_label_values(&labels)
                    .set(i64::from(d.up));
                self.discovery_errors
                    .with_label_values(&labels)
                    .set(i64::from(d.consecutive_errors));
                if let Some(age) = d.staleness {
                    self.discovery_staleness
                        .with_label_values(&labels)
                        .set(age.as_secs_f64());
                }
            }
        }
        if let Some((generation, loaded_at_unix_ms)) = scrape.config {
            self.config_generation.set(generation as i64);
            self.config_loaded
                .set(Duration::from_millis(loaded_at_unix_ms).as_secs_f64());
        }
        self.process_in_flight.set(scrape.in_flight as i64);
        self.draining.set(i64::from(scrape.draining));
        let dropped = crate::access_log::dropped_lines();
        let counted = self.access_log_dropped.get();
        if dropped > counted {
            self.access_log_dropped.inc_by(dropped - counted);
        }
    }
}

/// State read at scrape time by the owner of the runtime (the admin API), so that this module
/// needs nothing of the runtime, the clusters or the reloader.
#[derive(Debug, Default)]
pub(crate) struct Scrape {
    pub(crate) clusters: Vec<ClusterScrape>,
    /// The running config's generation and load time.
    pub(crate) config: Option<(u64, u64)>,
    pub(crate) in_flight: u64,
    pub(crate) draining: bool,
    /// The gateway's inbound limit, when it has one.
    pub(crate) inbound: Option<LimiterSnapshot>,
    /// Served certificates: listener, names, source, not-after (Unix seconds).
    pub(crate) certificates: Vec<(String, String, String, i64)>,
}

/// One cluster's state gauges.
#[derive(Debug)]
pub(crate) struct ClusterScrape {
    pub(crate) name: String,
    /// Breaker state and error percentage, when the cluster has a breaker.
    pub(crate) breaker: Option<(State, u8)>,
    pub(crate) bulkhead_in_use: usize,
    pub(crate) bulkhead_max: usize,
    /// The adaptive concurrency limit, when the cluster has one.
    pub(crate) limiter: Option<LimiterSnapshot>,
    pub(crate) budget_available: u64,
    pub(crate) serving: usize,
    pub(crate) ejected: usize,
    pub(crate) discovery: Option<DiscoveryScrape>,
}

/// One cluster's discovery source health.
#[derive(Debug)]
pub(crate) struct DiscoveryScrape {
    pub(crate) source: &'static str,
    pub(crate) up: bool,
    pub(crate) consecutive_errors: u32,
    /// Time since the last successful answer.
    pub(crate) staleness: Option<Duration>,
}

/// A status code as text without allocating per call.
fn itoa_status(status: u16) -> StatusText {
    let mut s = StatusText([b'0'; 3]);
    let mut n = status.min(999);
    for i in (0..3).rev() {
        if let Some(d) = s.0.get_mut(i) {
            *d = b'0' + (n % 10) as u8;
        }
        n /= 10;
    }
    s
}

struct StatusText([u8; 3]);

impl StatusText {
    fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or("000")
    }
}

/// The process-wide metrics.
pub(crate) fn metrics() -> &'static Metrics {
    static METRICS: OnceLock<Metrics> = OnceLock::new();
    METRICS.get_or_init(Metrics::new)
}

/// One route's series and its rolling window (Hystrix's per-command metrics). Kept across
/// config versions while the route keeps its name and cluster.
#[derive(Debug)]
pub(crate) struct RouteMetrics {
    cluster: Arc<str>,
    by_class: [IntCounter; 6],
    duration: Histogram,
    in_flight: IntGauge,
    retries: IntCounter,
    /// Highest in-flight count since the stream sampler last read it.
    peak: AtomicI64,
    rolling: Mutex<RollingMetrics>,
    window: Duration,
}

/// What happened to one request, for the rolling window (Hystrix's event types).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct RequestEvents {
    /// The execution's result; `None` when no upstream call was wanted (a filter answered,
    /// the client went away).
    pub execution: Option<Event>,
    /// `FallbackSuccess` or `FallbackFailure` when a fallback was wanted.
    pub fallback: Option<Event>,
}

impl RouteMetrics {
    /// The route's cluster.
    pub(crate) fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Counts the request in flight until the guard drops.
    pub(crate) fn start(self: &Arc<Self>) -> RouteInFlight {
        self.in_flight.inc();
        let now = self.in_flight.get();
        self.peak.fetch_max(now, Ordering::Relaxed);
        RouteInFlight(self.clone())
    }

    /// Records the end of a request at `now`: status class, latency, and its events in the
    /// window.
    pub(crate) fn finish(
        &self,
        status: u16,
        elapsed: Duration,
        events: RequestEvents,
        now: Instant,
    ) {
        if let Some(c) = self.by_class.get(usize::from(status / 100)) {
            c.inc();
        }
        self.duration.observe(elapsed.as_secs_f64());
        if events.execution.is_none() && events.fallback.is_none() {
            return;
        }
        let mut w = lock(&self.rolling);
        if let Some(e) = events.execution {
            w.record_with_latency(e, elapsed, now);
        }
        if let Some(f) = events.fallback {
            w.record(f, now);
        }
    }

    /// Counts a retry.
    pub(crate) fn retried(&self) {
        self.retries.inc();
    }

    /// Requests in flight now.
    pub(crate) fn in_flight(&self) -> i64 {
        self.in_flight.get()
    }

    /// The highest in-flight count since the last call (the sampler's reading).
    pub(crate) fn take_peak(&self) -> i64 {
        self.peak.swap(self.in_flight.get(), Ordering::Relaxed)
    }

    /// The window's counts and latency at `now`.
    pub(crate) fn window(&self, now: Instant) -> (resilience::Counts, resilience::Latency) {
        let w = lock(&self.rolling);
        (w.counts(now), w.latency(now))
    }

    /// The window's length.
    pub(crate) fn window_len(&self) -> Duration {
        self.window
    }
}

/// Holds a request in its route's in-flight gauge.
#[derive(Debug)]
pub(crate) struct RouteInFlight(Arc<RouteMetrics>);

impl Drop for RouteInFlight {
    fn drop(&mut self) {
        self.0.in_flight.dec();
    }
}

/// One cluster's series.
#[derive(Debug, Clone)]
pub(crate) struct ClusterMetrics {
    success: IntCounter,
    failure: IntCounter,
    timeout: IntCounter,
    upstream_duration: Histogram,
    /// Bulkhead refusals.
    pub bulkhead_rejections: IntCounter,
    /// Requests the concurrency limit shed, per class in [`Class::ALL`] order.
    pub shed: [IntCounter; 3],
    /// Retries the concurrency limit had no room for.
    pub retries_shed: IntCounter,
    /// Retries the budget refused.
    pub budget_exhausted: IntCounter,
}

impl ClusterMetrics {
    /// Records one upstream attempt.
    pub(crate) fn attempt(&self, outcome: resilience::Outcome, latency: Duration) {
        match outcome {
            resilience::Outcome::Success => self.success.inc(),
            resilience::Outcome::Failure => self.failure.inc(),
            resilience::Outcome::Timeout => self.timeout.inc(),
            resilience::Outcome::Ignored => return,
        }
        self.upstream_duration.observe(latency.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_register_and_render() {
        let m = Metrics::new();
        let r = m.route("api", "backend", BreakerConfig::default());
        let r = Arc::new(r);
        {
            let _g = r.start();
            assert_eq!(r.in_flight(), 1);
        }
        assert_eq!(r.in_flight(), 0);
        assert_eq!(r.take_peak(), 1);
        r.finish(
            200,
            Duration::from_millis(3),
            RequestEvents {
                execution: Some(Event::Success),
                fallback: None,
            },
            Instant::now(),
        );
        r.finish(
            503,
            Duration::from_millis(1),
            RequestEvents {
                execution: Some(Event::ShortCircuited),
                fallback: Some(Event::FallbackFailure),
            },
            Instant::now(),
        );
        m.filter_rejection("api", "jwt", 401);
        m.fallback("api", "static", true);
        m.breaker_transition("backend", State::Closed, State::Open);
        let c = m.cluster("backend");
        c.attempt(resilience::Outcome::Timeout, Duration::from_millis(20));
        let (counts, latency) = r.window(Instant::now());
        assert_eq!(counts.get(Event::Success), 1);
        assert_eq!(counts.get(Event::ShortCircuited), 1);
        assert_eq!(counts.get(Event::FallbackFailure), 1);
        assert_eq!(latency.count, 2);
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&m.registry.gather(), &mut out)
            .expect("encode");
        let text = String::from_utf8(out).expect("utf8");
        assert!(text
            .contains("gateway_requests_total{class=\"2xx\",cluster=\"backend\",route=\"api\"} 1"));
        assert!(text.contains(
            "gateway_filter_rejections_total{filter=\"jwt\",route=\"api\",status=\"401\"} 1"
        ));
        assert!(text.contains(
            "gateway_upstream_attempts_total{cluster=\"backend\",outcome=\"timeout\"} 1"
        ));
        assert!(text.contains("gateway_request_duration_seconds_bucket{cluster=\"backend\",route=\"api\",le=\"0.005\"} 2"));
        assert!(text.contains("gateway_build_info{version="));
    }

    #[test]
    fn status_text() {
        assert_eq!(itoa_status(429).as_str(), "429");
        assert_eq!(itoa_status(7).as_str(), "007");
    }
}
