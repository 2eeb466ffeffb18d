//! `/hystrix.stream`: the gateway's metrics as server-sent events in Hystrix's own format, so
//! the Hystrix Dashboard, Turbine and this gateway's dashboard page can watch it.
//!
//! Every 500 ms one sampler builds a frame: a `HystrixCommand` object per route (its group
//! and thread pool are the route's cluster) from the route's rolling window, the one the
//! Prometheus counters are fed with, and a `HystrixThreadPool` object per cluster bulkhead.
//! Each subscriber gets the latest frame as `data:` lines, or `ping:` when there is nothing
//! to report, exactly like `hystrix-metrics-event-stream`.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use resilience::{Event, Latency, State, Trip};
use serde_json::{json, Value};
use tokio::sync::watch;

use crate::runtime::{GatewayState, Route, Runtime};

/// How often a frame is sampled and sent.
pub(crate) const INTERVAL: Duration = Duration::from_millis(500);
/// Subscribers at once (Hystrix's default is 5; dashboards and Turbine are few).
const MAX_SUBSCRIBERS: usize = 32;

/// One sample: the JSON objects to send, one per `data:` line.
pub(crate) type Frame = Arc<Vec<String>>;

/// The shared sampler and its subscribers.
#[derive(Debug)]
pub(crate) struct HystrixStream {
    state: Arc<GatewayState>,
    frames: OnceLock<watch::Receiver<Frame>>,
    subscribers: Arc<AtomicUsize>,
}

/// A subscriber's slot; dropping it frees the slot.
#[derive(Debug)]
pub(crate) struct Subscription {
    frames: watch::Receiver<Frame>,
    _slot: Slot,
}

#[derive(Debug)]
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl HystrixStream {
    /// A stream over `state`; the sampler starts with the first subscriber.
    pub(crate) fn new(state: Arc<GatewayState>) -> Self {
        Self {
            state,
            frames: OnceLock::new(),
            subscribers: Arc::new(AtomicUsize::new(0)),
        }
    }

    /// A new subscriber, or `None` when [`MAX_SUBSCRIBERS`] are connected.
    pub(crate) fn subscribe(&self) -> Option<Subscription> {
        let n = self.subscribers.fetch_add(1, Ordering::AcqRel);
        let slot = Slot(self.subscribers.clone());
        if n >= MAX_SUBSCRIBERS {
            return None;
        }
        let frames = self
            .frames
            .get_or_init(|| {
                let (tx, rx) = watch::channel(Frame::default());
                tokio::spawn(sample(self.state.clone(), tx));
                rx
            })
            .clone();
        Some(Subscription {
            frames,
            _slot: slot,
        })
    }

    /// The most subscribers served at once.
    pub(crate) fn max_subscribers(&self) -> usize {
        MAX_SUBSCRIBERS
    }
}

impl Subscription {
    /// The event stream body: each frame's objects as `data:` lines, `ping:` for an empty one.
    pub(crate) fn into_body(self) -> impl futures_util::Stream<Item = Result<Bytes, Infallible>> {
        futures_util::stream::unfold(self, |mut sub| async move {
            sub.frames.changed().await.ok()?;
            let frame = sub.frames.borrow_and_update().clone();
            let bytes = if frame.is_empty() {
                Bytes::from_static(b"ping: \n\n")
            } else {
                let mut out = String::with_capacity(frame.iter().map(|l| l.len() + 8).sum());
                for line in frame.iter() {
                    out.push_str("data: ");
                    out.push_str(line);
                    out.push_str("\n\n");
                }
                Bytes::from(out)
            };
            Some((Ok(bytes), sub))
        })
    }
}

/// Samples every [`INTERVAL`] until every subscriber is gone (the sender then has no
/// receivers but the one kept in [`HystrixStream`], so it keeps running; sampling costs a few
/// microseconds per route).
async fn sample(state: Arc<GatewayState>, tx: watch::Sender<Frame>) {
    let mut peaks = Peaks::default();
    let mut tick = tokio::time::interval(INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let runtime = state.runtime();
        let frame = frame(&runtime, &mut peaks, Instant::now(), unix_ms());
        if tx.send(Arc::new(frame)).is_err() {
            return;
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis() as u64
}

/// Recent peak concurrency per route and per bulkhead, one reading per sample, for Hystrix's
/// `rollingMax*` fields (the maximum over the rolling window).
#[derive(Debug, Default)]
struct Peaks {
    seen: HashMap<String, VecDeque<i64>>,
}

impl Peaks {
    fn push(&mut self, key: &str, value: i64, keep: usize) -> i64 {
        let q = self.seen.entry(key.to_owned()).or_default();
        q.push_back(value);
        while q.len() > keep.max(1) {
            q.pop_front();
        }
        q.iter().copied().max().unwrap_or(0)
    }

    /// Forgets routes and clusters that are gone.
    fn retain(&mut self, live: &[String]) {
        self.seen.retain(|k, _| live.contains(k));
    }
}

fn samples_in(window: Duration) -> usize {
    (window.as_millis() / INTERVAL.as_millis()).max(1) as usize
}

/// Hystrix's latency object: percentiles in milliseconds.
fn percentiles(l: &Latency) -> Value {
    let ms = |us: u64| us / 1000;
    json!({
        "0": ms(l.min_us), "25": ms(l.p25_us), "50": ms(l.p50_us), "75": ms(l.p75_us),
        "90": ms(l.p90_us), "95": ms(l.p95_us), "99": ms(l.p99_us), "99.5": ms(l.p995_us),
        "100": ms(l.max_us),
    })
}

/// One sample of every route and bulkhead.
fn frame(runtime: &Runtime, peaks: &mut Peaks, now: Instant, now_ms: u64) -> Vec<String> {
    let mut out = Vec::with_capacity(runtime.routes.len() + runtime.clusters.len());
    let mut live = Vec::new();
    for route in &runtime.routes {
        let key = format!("route/{}", route.name);
        let keep = samples_in(route.metrics.window_len());
        let peak = peaks.push(&key, route.metrics.take_peak(), keep);
        live.push(key);
        out.push(command(route, peak, now, now_ms).to_string());
    }
    for cluster in &runtime.clusters {
        let key = format!("pool/{}", cluster.name());
        let window = cluster
            .breaker()
            .map_or(Duration::from_secs(10), |b| b.config().window);
        // The pool is the cluster's adaptive limit when it has one, else its bulkhead.
        let limiter = cluster.limiter().map(|l| l.snapshot());
        let bulkhead = cluster.bulkhead().snapshot();
        let (in_use, size, queued, max_queue) = match &limiter {
            Some(l) => (l.in_flight, l.limit, l.queued, l.queued),
            None => (
                bulkhead.in_use,
                bulkhead.config.max_concurrent,
                bulkhead.queued,
                bulkhead.config.max_queue,
            ),
        };
        let peak = peaks.push(&key, in_use as i64, samples_in(window));
        live.push(key);
        let (mut executed, mut rejected) = (0, 0);
        for r in runtime
            .routes
            .iter()
            .filter(|r| std::ptr::eq(&*r.cluster, &**cluster))
        {
            let (c, _) = r.metrics.window(now);
            executed += c.get(Event::Success) + c.get(Event::Failure) + c.get(Event::Timeout);
            rejected += c.get(Event::Rejected);
        }
        let totals = cluster.breaker().map(|b| b.snapshot(now).totals);
        let completed = totals.map_or(0, |t| {
            t.get(Event::Success) + t.get(Event::Failure) + t.get(Event::Timeout)
        });
        let mut pool = json!({
                "type": "HystrixThreadPool",
                "name": cluster.name(),
                "currentTime": now_ms,
                "currentActiveCount": in_use,
                "currentCompletedTaskCount": completed,
                "currentCorePoolSize": size,
                "currentLargestPoolSize": peak,
                "currentMaximumPoolSize": size,
                "currentPoolSize": size,
                "currentQueueSize": queued,
                "currentTaskCount": completed + in_use as u64,
                "rollingCountThreadsExecuted": executed,
                "rollingMaxActiveThreads": peak,
                "rollingCountCommandRejections": rejected,
                "propertyValue_queueSizeRejectionThreshold": max_queue,
                "propertyValue_metricsRollingStatisticalWindowInMilliseconds": window.as_millis() as u64,
                "reportingHosts": 1,
        });
        // An extension Hystrix dashboards ignore: the adaptive limit and its sheds per class.
        if let Some(l) = &limiter {
            pool["concurrencyLimit"] = crate::cluster::limiter_status(l);
        }
        out.push(pool.to_string());
    }
    peaks.retain(&live);
    out
}

/// The `HystrixCommand` object of one route.
fn command(route: &Route, peak: i64, now: Instant, now_ms: u64) -> Value {
    let (counts, latency) = route.metrics.window(now);
    let cluster = &route.cluster;
    let policy = &cluster.spec().policy;
    let breaker = cluster.breaker();
    let state = breaker.map(|b| b.state());
    let config = breaker.map(|b| *b.config());
    let (volume, threshold) = match config.map(|c| c.trip) {
        Some(Trip::ErrorRate {
            volume_threshold,
            error_percent,
        }) => (volume_threshold, u64::from(error_percent)),
        // Consecutive-failure breakers have no volume or percentage: report that as never.
        Some(Trip::ConsecutiveFailures(_)) | None => (0, 100),
    };
    let timeout = route.policy.timeout.or(policy.timeout).unwrap_or(
        route
            .policy
            .per_try_timeout
            .unwrap_or(policy.per_try_timeout),
    );
    let get = |e| counts.get(e);
    let errors = counts.errors();
    let short = get(Event::ShortCircuited);
    let thrown = (errors + short).saturating_sub(get(Event::FallbackSuccess));
    let mean_ms = (latency.mean_us / 1000.0).round() as u64;
    json!({
        "type": "HystrixCommand",
        "name": &*route.name,
        "group": cluster.name(),
        "threadPool": cluster.name(),
        "currentTime": now_ms,
        "isCircuitBreakerOpen": state.is_some_and(State::is_open),
        "circuitBreakerState": state.map_or("disabled", State::name),
        "errorPercentage": counts.error_percent(),
        "errorCount": errors,
        "requestCount": counts.requests(),
        "rollingCountBadRequests": 0,
        "rollingCountCollapsedRequests": 0,
        "rollingCountEmit": 0,
        "rollingCountExceptionsThrown": thrown,
        "rollingCountFailure": get(Event::Failure),
        "rollingCountFallbackEmit": 0,
        "rollingCountFallbackFailure": get(Event::FallbackFailure),
        "rollingCountFallbackMissing": 0,
        "rollingCountFallbackRejection": 0,
        "rollingCountFallbackSuccess": get(Event::FallbackSuccess),
        "rollingCountResponsesFromCache": 0,
        "rollingCountSemaphoreRejected": 0,
        "rollingCountShortCircuited": short,
        "rollingCountSuccess": get(Event::Success),
        "rollingCountThreadPoolRejected": get(Event::Rejected),
        "rollingCountTimeout": get(Event::Timeout),
        "currentConcurrentExecutionCount": route.metrics.in_flight(),
        "rollingMaxConcurrentExecutionCount": peak,
        "latencyExecute_mean": mean_ms,
        "latencyExecute": percentiles(&latency),
        "latencyTotal_mean": mean_ms,
        "latencyTotal": percentiles(&latency),
        "propertyValue_circuitBreakerRequestVolumeThreshold": volume,
        "propertyValue_circuitBreakerSleepWindowInMilliseconds": config.map_or(0, |c| c.sleep_window.as_millis() as u64),
        "propertyValue_circuitBreakerErrorThresholdPercentage": threshold,
        "propertyValue_circuitBreakerForceOpen": state == Some(State::ForcedOpen),
        "propertyValue_circuitBreakerForceClosed": state == Some(State::ForcedClosed),
        "propertyValue_circuitBreakerEnabled": breaker.is_some(),
        "propertyValue_executionIsolationStrategy": "THREAD",
        "propertyValue_executionIsolationThreadTimeoutInMilliseconds": timeout.as_millis() as u64,
        "propertyValue_executionTimeoutInMilliseconds": timeout.as_millis() as u64,
        "propertyValue_executionIsolationThreadInterruptOnTimeout": true,
        "propertyValue_executionIsolationThreadPoolKeyOverride": null,
        "propertyValue_executionIsolationSemaphoreMaxConcurrentRequests": policy.bulkhead.config.max_concurrent,
        "propertyValue_fallbackIsolationSemaphoreMaxConcurrentRequests": policy.bulkhead.config.max_concurrent,
        "propertyValue_metricsRollingStatisticalWindowInMilliseconds": route.metrics.window_len().as_millis() as u64,
        "propertyValue_requestCacheEnabled": false,
        "propertyValue_requestLogEnabled": false,
        "reportingHosts": 1,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metrics::RequestEvents;

    const DOC: &str = r#"
        [[listeners]]
        address = "127.0.0.1:0"
        [clusters.backend]
        endpoints = ["127.0.0.1:9"]
        [clusters.backend.circuit_breaker]
        volume_threshold = 4
        [[routes]]
        name = "api"
        cluster = "backend"
        path_prefix = "/"
    "#;

    #[tokio::test]
    async fn frames_describe_routes_and_bulkheads() {
        let config =
            crate::config::Config::parse(DOC, std::path::Path::new("t.toml")).expect("config");
        let runtime = Runtime::build(&config);
        let route = runtime.routes.first().expect("route");
        for _ in 0..3 {
            route.metrics.finish(
                200,
                Duration::from_millis(2),
                RequestEvents {
                    execution: Some(Event::Success),
                    fallback: None,
                },
                Instant::now(),
            );
        }
        route.metrics.finish(
            502,
            Duration::from_millis(5),
            RequestEvents {
                execution: Some(Event::Failure),
                fallback: Some(Event::FallbackSuccess),
            },
            Instant::now(),
        );
        let mut peaks = Peaks::default();
        let lines = frame(&runtime, &mut peaks, Instant::now(), 42);
        assert_eq!(lines.len(), 2);
        let cmd: Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(cmd["type"], "HystrixCommand");
        assert_eq!(cmd["name"], "api");
        assert_eq!(cmd["group"], "backend");
        assert_eq!(cmd["requestCount"], 4);
        assert_eq!(cmd["errorPercentage"], 25);
        assert_eq!(cmd["rollingCountFallbackSuccess"], 1);
        assert_eq!(cmd["isCircuitBreakerOpen"], false);
        assert_eq!(cmd["propertyValue_circuitBreakerRequestVolumeThreshold"], 4);
        assert_eq!(cmd["latencyExecute"]["100"], 5);
        let pool: Value = serde_json::from_str(&lines[1]).expect("json");
        assert_eq!(pool["type"], "HystrixThreadPool");
        assert_eq!(pool["name"], "backend");
        assert_eq!(pool["rollingCountThreadsExecuted"], 4);
        let b = runtime.clusters[0].breaker().expect("breaker");
        b.force(Some(resilience::Force::Open), Instant::now());
        let lines = frame(&runtime, &mut peaks, Instant::now(), 43);
        let cmd: Value = serde_json::from_str(&lines[0]).expect("json");
        assert_eq!(cmd["isCircuitBreakerOpen"], true);
        assert_eq!(cmd["propertyValue_circuitBreakerForceOpen"], true);
    }

    #[test]
    fn peaks_cover_the_window() {
        let mut p = Peaks::default();
        assert_eq!(p.push("a", 5, 2), 5);
        assert_eq!(p.push("a", 1, 2), 5);
        assert_eq!(p.push("a", 2, 2), 2);
        p.retain(&[]);
        assert!(p.seen.is_empty());
    }
}
