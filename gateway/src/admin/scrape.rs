//! Reads the state gauges of `/metrics` at scrape time: breakers, bulkheads, budgets,
//! endpoints and discovery of the live runtime, the config version, in-flight and draining.

use std::time::{Instant, SystemTime};

use crate::metrics::{ClusterScrape, DiscoveryScrape, Scrape};
use crate::reload::Reloader;
use crate::runtime::GatewayState;

/// The current state, for [`crate::metrics::Metrics::render`].
pub(super) fn scrape(state: &GatewayState, reloader: Option<&Reloader>) -> Scrape {
    let runtime = state.runtime();
    let now = Instant::now();
    let wall = SystemTime::now();
    let clusters = runtime
        .clusters
        .iter()
        .map(|c| {
            let bulkhead = c.bulkhead().snapshot();
            let budget = c.budget().snapshot(now);
            let (serving, ejected) = c.endpoint_counts(now);
            ClusterScrape {
                name: c.name().to_owned(),
                breaker: c.breaker().map(|b| {
                    let snap = b.snapshot(now);
                    (snap.state, snap.window.error_percent())
                }),
                bulkhead_in_use: bulkhead.in_use,
                bulkhead_max: bulkhead.config.max_concurrent,
                limiter: c.limiter().map(|l| l.snapshot()),
                budget_available: budget.allowed.saturating_sub(budget.retries),
                serving,
                ejected,
                discovery: c.discovery_health().map(|h| DiscoveryScrape {
                    source: h.source,
                    up: h.failing_since.is_none() && h.last_success.is_some(),
                    consecutive_errors: h.consecutive_errors,
                    staleness: h
                        .last_success
                        .map(|at| wall.duration_since(at).unwrap_or_default()),
                }),
            }
        })
        .collect();
    Scrape {
        clusters,
        config: reloader.map(|r| {
            let v = r.current();
            (v.generation, v.loaded_at_unix_ms)
        }),
        in_flight: state.in_flight(),
        draining: state.is_draining(),
        inbound: runtime
            .overload
            .inbound
            .as_ref()
            .map(|i| i.limiter.snapshot()),
        certificates: state.tls().expiries(),
    }
}
