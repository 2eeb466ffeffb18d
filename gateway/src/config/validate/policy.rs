//! Validation of the resilience tables: `circuit_breaker`, `bulkhead`, `retry`,
//! `outlier_detection` on clusters; timeouts, `retry` and `fallback` on routes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use resilience::{
    BreakerConfig, BudgetConfig, BulkheadConfig, Condition, FailureSet, RetryPolicy, StatusSet,
    Trip,
};
use toml::Spanned;

use super::{count, ms, ranged};
use crate::config::error::Issues;
use crate::config::policy::{
    BreakerSettings, BulkheadSettings, ClusterPolicy, FallbackSpec, LastGoodSettings,
    OutlierSettings, RoutePolicy, StaticResponse,
};
use crate::config::raw::{RawCluster, RawFallback, RawRetry, RawRoute};

/// Parses a condition list such as `["connect_failure", "5xx", 503]` into the typed set:
/// conditions from `allowed`, `5xx`, `gateway_error` (502, 503, 504) and status codes (as
/// numbers or strings).
fn conditions(
    list: &Spanned<Vec<Spanned<toml::Value>>>,
    what: &str,
    allowed: &[Condition],
    issues: &mut Issues<'_>,
) -> FailureSet {
    let mut names = HashSet::new();
    let mut statuses = StatusSet::default();
    let fix = format!(
        "use {}, \"5xx\", \"gateway_error\" or status codes like 503",
        allowed
            .iter()
            .map(|a| format!("\"{}\"", a.name()))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for item in list.get_ref() {
        let code = match item.get_ref() {
            toml::Value::Integer(n) => Some(*n),
            toml::Value::String(s) => match s.as_str() {
                "5xx" => {
                    statuses.extend(StatusSet::range(500, 599));
                    continue;
                }
                "gateway_error" => {
                    statuses.extend(StatusSet::range(502, 504));
                    continue;
                }
                name if Condition::from_name(name).is_some_and(|c| allowed.contains(&c)) => {
                    names.extend(Condition::from_name(name));
                    continue;
                }
                other => match other.parse::<i64>() {
                    Ok(n) => Some(n),
                    Err(_) => {
                        issues.at(
                            item.span(),
                            format!("{what}: `{other}` is not a known condition"),
                            &fix,
                        );
                        None
                    }
                },
            },
            _ => {
                issues.at(
                    item.span(),
                    format!("{what}: conditions are strings or status codes"),
                    &fix,
                );
                None
            }
        };
        match code {
            Some(n) if (400..=599).contains(&n) => statuses.insert(n as u16),
            Some(n) => issues.at(
                item.span(),
                format!("{what}: status {n} is not an error status"),
                "use a status from 400 to 599",
            ),
            None => {}
        }
    }
    FailureSet::new(names, statuses)
}

fn breaker(raw: &RawCluster, cluster: &str, issues: &mut Issues<'_>) -> Option<BreakerSettings> {
    let d = BreakerConfig::default();
    let Some(b) = &raw.circuit_breaker else {
        return Some(BreakerSettings {
            config: d,
            failures: FailureSet::dependency_failures(),
        });
    };
    let b = b.get_ref();
    let window = ms(&b.window_ms, "window_ms", 10_000, issues);
    let buckets = count(&b.buckets, "buckets", 1, 1_000, 10, issues) as u32;
    if window.as_millis() % u128::from(buckets) != 0 {
        if let Some(w) = &b.window_ms {
            issues.at(
                w.span(),
                format!("circuit_breaker of cluster `{cluster}`: window_ms {} does not divide into {buckets} buckets", window.as_millis()),
                "make window_ms a multiple of buckets (e.g. 10000 with 10 buckets)",
            );
        }
    }
    let trip = match b.mode.as_ref().map(|m| (m.get_ref().as_str(), m.span())) {
        None | Some(("error_rate", _)) => {
            if let Some(c) = &b.consecutive_failures {
                issues.at(
                    c.span(),
                    format!("circuit_breaker of cluster `{cluster}`: consecutive_failures only applies to mode = \"consecutive_failures\""),
                    "set mode = \"consecutive_failures\" or remove consecutive_failures",
                );
            }
            Trip::ErrorRate {
                volume_threshold: count(
                    &b.volume_threshold,
                    "volume_threshold",
                    1,
                    1_000_000,
                    20,
                    issues,
                ),
                error_percent: count(&b.error_percent, "error_percent", 1, 100, 50, issues) as u8,
            }
        }
        Some(("consecutive_failures", _)) => {
            for (k, v) in [
                ("volume_threshold", &b.volume_threshold),
                ("error_percent", &b.error_percent),
            ] {
                if let Some(v) = v {
                    issues.at(
                        v.span(),
                        format!("circuit_breaker of cluster `{cluster}`: {k} only applies to mode = \"error_rate\""),
                        format!("remove {k} or use mode = \"error_rate\""),
                    );
                }
            }
            Trip::ConsecutiveFailures(count(
                &b.consecutive_failures,
                "consecutive_failures",
                1,
                1_000_000,
                5,
                issues,
            ) as u32)
        }
        Some((other, span)) => {
            issues.at(
                span,
                format!("circuit_breaker mode `{other}` is unknown"),
                "use \"error_rate\" (Hystrix, default) or \"consecutive_failures\"",
            );
            d.trip
        }
    };
    let failures = match &b.failure_statuses {
        None => FailureSet::dependency_failures(),
        Some(list) => {
            let listed = conditions(
                list,
                &format!("failure_statuses of cluster `{cluster}`"),
                &[],
                issues,
            );
            // Connect failures, timeouts and resets always count; the list names statuses.
            FailureSet::new(
                [
                    Condition::ConnectFailure,
                    Condition::Timeout,
                    Condition::Reset,
                ],
                *listed.statuses(),
            )
        }
    };
    if b.enabled == Some(false) {
        return None;
    }
    Some(BreakerSettings {
        config: BreakerConfig {
            window,
            buckets,
            trip,
            sleep_window: ms(&b.sleep_window_ms, "sleep_window_ms", 5_000, issues),
        },
        failures,
    })
}

const RETRY_CONDITIONS: [Condition; 3] = [
    Condition::ConnectFailure,
    Condition::Reset,
    Condition::Timeout,
];

fn retry_policy(
    r: &RawRetry,
    what: &str,
    base: RetryPolicy,
    issues: &mut Issues<'_>,
) -> RetryPolicy {
    let on = match &r.on {
        None => base.on,
        Some(list) => conditions(
            list,
            &format!("retry.on of {what}"),
            &RETRY_CONDITIONS,
            issues,
        ),
    };
    RetryPolicy {
        retries: count(
            &r.retries,
            "retries",
            0,
            10,
            i64::from(base.retries),
            issues,
        ) as u32,
        on,
        non_idempotent: r.non_idempotent.unwrap_or(base.non_idempotent),
    }
}

fn default_retry() -> RetryPolicy {
    RetryPolicy {
        retries: 1,
        on: FailureSet::new(
            [Condition::ConnectFailure, Condition::Reset],
            StatusSet::range(502, 504),
        ),
        non_idempotent: false,
    }
}

pub(super) fn cluster_policy(
    raw: &RawCluster,
    cluster: &str,
    read_timeout: Duration,
    issues: &mut Issues<'_>,
) -> ClusterPolicy {
    let breaker = breaker(raw, cluster, issues);
    let bulkhead = match &raw.bulkhead {
        None => BulkheadSettings {
            config: BulkheadConfig {
                max_concurrent: 1024,
                max_queue: 0,
            },
            queue_timeout: Duration::ZERO,
        },
        Some(b) => {
            let b = b.get_ref();
            let max_queue = count(&b.max_queue, "max_queue", 0, 100_000, 0, issues) as usize;
            let queue_timeout = match &b.queue_timeout_ms {
                None if max_queue > 0 => Duration::from_millis(100),
                None => Duration::ZERO,
                Some(_) => ms(&b.queue_timeout_ms, "queue_timeout_ms", 100, issues),
            };
            BulkheadSettings {
                config: BulkheadConfig {
                    max_concurrent: count(
                        &b.max_concurrent,
                        "max_concurrent",
                        1,
                        1_000_000,
                        1024,
                        issues,
                    ) as usize,
                    max_queue,
                },
                queue_timeout,
            }
        }
    };
    let (retry, budget) = match &raw.retry {
        None => (default_retry(), BudgetConfig::default()),
        Some(r) => {
            let r = r.get_ref();
            let d = BudgetConfig::default();
            (
                retry_policy(r, &format!("cluster `{cluster}`"), default_retry(), issues),
                BudgetConfig {
                    ratio: count(&r.budget_percent, "budget_percent", 0, 1_000, 20, issues) as f64
                        / 100.0,
                    min_per_second: count(
                        &r.budget_min_per_second,
                        "budget_min_per_second",
                        0,
                        100_000,
                        10,
                        issues,
                    ) as u32,
                    window: d.window,
                },
            )
        }
    };
    let outlier = match &raw.outlier_detection {
        None => Some(OutlierSettings {
            consecutive_failures: 5,
            base_ejection: Duration::from_secs(30),
            max_ejection: Duration::from_secs(300),
            max_ejection_percent: 50,
        }),
        Some(o) => {
            let o = o.get_ref();
            let s = OutlierSettings {
                consecutive_failures: count(
                    &o.consecutive_failures,
                    "consecutive_failures",
                    1,
                    1_000,
                    5,
                    issues,
                ) as u32,
                base_ejection: ms(&o.base_ejection_ms, "base_ejection_ms", 30_000, issues),
                max_ejection: ms(&o.max_ejection_ms, "max_ejection_ms", 300_000, issues),
                max_ejection_percent: count(
                    &o.max_ejection_percent,
                    "max_ejection_percent",
                    0,
                    100,
                    50,
                    issues,
                ) as u8,
            };
            (o.enabled != Some(false)).then_some(s)
        }
    };
    let per_try_timeout = match &raw.per_try_timeout_ms {
        None => read_timeout,
        Some(_) => ms(
            &raw.per_try_timeout_ms,
            "per_try_timeout_ms",
            30_000,
            issues,
        ),
    };
    let timeout = raw
        .timeout_ms
        .as_ref()
        .map(|_| ms(&raw.timeout_ms, "timeout_ms", 30_000, issues));
    ClusterPolicy {
        breaker,
        bulkhead,
        concurrency: super::overload::adaptive(raw, cluster, issues),
        retry,
        budget,
        outlier,
        per_try_timeout,
        timeout,
    }
}

fn fallback(
    f: &Spanned<RawFallback>,
    route: &str,
    clusters: &HashMap<String, usize>,
    issues: &mut Issues<'_>,
) -> FallbackSpec {
    let span = f.span();
    let f = f.get_ref();
    let on = match &f.on {
        None => FailureSet::new(Condition::ALL, StatusSet::server_errors()),
        Some(list) => conditions(
            list,
            &format!("fallback.on of route `{route}`"),
            &Condition::ALL,
            issues,
        ),
    };
    let cluster = f.cluster.as_ref().and_then(|c| {
        let i = clusters.get(c.get_ref()).copied();
        if i.is_none() {
            issues.at(
                c.span(),
                format!(
                    "fallback of route `{route}` names unknown cluster `{}`",
                    c.get_ref()
                ),
                "name a declared cluster",
            );
        }
        i
    });
    let last_good = f.last_good.as_ref().map(|l| {
        let l = l.get_ref();
        LastGoodSettings {
            max_age: ms(&l.max_age_ms, "max_age_ms", 300_000, issues),
            max_entries: count(&l.max_entries, "max_entries", 1, 10_000_000, 10_000, issues)
                as usize,
            max_bytes: count(&l.max_bytes, "max_bytes", 1_024, 1 << 40, 64 << 20, issues),
            max_body_bytes: count(
                &l.max_body_bytes,
                "max_body_bytes",
                1,
                64 << 20,
                1 << 20,
                issues,
            ) as usize,
        }
    });
    let response = f.response.as_ref().map(|r| {
        let rs = r.span();
        let r = r.get_ref();
        let status = ranged(&r.status, "status", 200, 599, 200, issues) as u16;
        let headers = r
            .headers
            .iter()
            .filter_map(|(k, v)| {
                match (HeaderName::from_bytes(k.to_ascii_lowercase().as_bytes()), HeaderValue::from_str(v)) {
                    (Ok(k), Ok(v)) => Some((k, v)),
                    _ => {
                        issues.at(
                            rs.clone(),
                            format!("fallback response of route `{route}`: header `{k}` has an invalid name or value"),
                            "use header names like \"content-type\" and visible ASCII values",
                        );
                        None
                    }
                }
            })
            .collect();
        StaticResponse {
            status: StatusCode::from_u16(status).unwrap_or(StatusCode::OK),
            headers,
            body: Bytes::from(r.body.clone()),
        }
    });
    if cluster.is_none() && last_good.is_none() && response.is_none() && f.cluster.is_none() {
        issues.at(
            span,
            format!("fallback of route `{route}` has nothing to answer with"),
            "set cluster = \"NAME\", a [routes.fallback.last_good] table or a [routes.fallback.response] table",
        );
    }
    FallbackSpec {
        on,
        cluster,
        last_good,
        response,
    }
}

pub(super) fn route_policy(
    r: &RawRoute,
    cluster_retry: Option<RetryPolicy>,
    clusters: &HashMap<String, usize>,
    issues: &mut Issues<'_>,
) -> RoutePolicy {
    let name = r.name.get_ref();
    let retry = r.retry.as_ref().map(|raw| {
        let rr = raw.get_ref();
        for (k, v) in [("budget_percent", &rr.budget_percent), ("budget_min_per_second", &rr.budget_min_per_second)] {
            if let Some(v) = v {
                issues.at(
                    v.span(),
                    format!("route `{name}`: {k} belongs to the cluster (the budget is shared by every route to it)"),
                    format!("move {k} to [clusters.NAME.retry]"),
                );
            }
        }
        retry_policy(rr, &format!("route `{name}`"), cluster_retry.unwrap_or_else(default_retry), issues)
    });
    let fallback = r
        .fallback
        .as_ref()
        .map(|f| fallback(f, name, clusters, issues));
    if let (Some(f), Some(fb)) = (&fallback, &r.fallback) {
        if f.cluster.is_some()
            && fb
                .get_ref()
                .cluster
                .as_ref()
                .is_some_and(|c| c.get_ref() == r.cluster.get_ref())
        {
            issues.at(
                fb.span(),
                format!("fallback of route `{name}` names the route's own cluster"),
                "name a different cluster for the fallback",
            );
        }
    }
    RoutePolicy {
        timeout: r
            .timeout_ms
            .as_ref()
            .map(|_| ms(&r.timeout_ms, "timeout_ms", 30_000, issues)),
        per_try_timeout: r
            .per_try_timeout_ms
            .as_ref()
            .map(|_| ms(&r.per_try_timeout_ms, "per_try_timeout_ms", 30_000, issues)),
        retry,
        fallback,
        priority: r.priority.as_ref().and_then(|p| {
            super::overload::priority(p, &format!("priority of route `{name}`"), issues)
        }),
    }
}
