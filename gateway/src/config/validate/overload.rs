//! Validation of overload protection: `[clusters.NAME.adaptive_concurrency]`, a route's
//! `priority` and `[overload]` (the inbound limit and the sources of request priority).

use std::time::Duration;

use http::HeaderName;
use resilience::{GradientConfig, LimitConfig, LimiterConfig, Priority, StatusSet};
use toml::Spanned;

use super::{count, ms};
use crate::config::error::Issues;
use crate::config::policy::AdaptiveSettings;
use crate::config::raw::{RawAdaptive, RawCluster, RawConfig};
use crate::config::OverloadSettings;
use crate::proxy::LoadMetric;

const PRIORITY_FIX: &str =
    "use \"critical\", \"degraded\", \"non_critical\" or a score from 0 to 100";

/// A priority written as a class name or a score.
pub(super) fn priority(
    v: &Spanned<toml::Value>,
    what: &str,
    issues: &mut Issues<'_>,
) -> Option<Priority> {
    let parsed = match v.get_ref() {
        toml::Value::String(s) => Priority::parse(s),
        toml::Value::Integer(n) => u8::try_from(*n)
            .ok()
            .and_then(Priority::new)
            .ok_or_else(|| format!("{n} is not a score from 0 to 100")),
        other => Err(format!("a {} is not a priority", other.type_str())),
    };
    match parsed {
        Ok(p) => Some(p),
        Err(e) => {
            issues.at(v.span(), format!("{what}: {e}"), PRIORITY_FIX);
            None
        }
    }
}

/// `[clusters.NAME.adaptive_concurrency]`; an error when the cluster also has a bulkhead
/// (the limit takes its place).
pub(super) fn adaptive(
    raw: &RawCluster,
    cluster: &str,
    issues: &mut Issues<'_>,
) -> Option<AdaptiveSettings> {
    let table = raw.adaptive_concurrency.as_ref()?;
    let a: &RawAdaptive = table.get_ref();
    if a.enabled == Some(false) {
        return None;
    }
    if raw.bulkhead.is_some() {
        issues.at(
            table.span(),
            format!("cluster `{cluster}` has both a bulkhead and an adaptive_concurrency limit"),
            "remove [bulkhead]: the adaptive limit takes its place (its max_limit caps concurrency)",
        );
    }
    let d = GradientConfig::default();
    let min = count(&a.min_limit, "min_limit", 1, 100_000, d.min as i64, issues) as usize;
    let max = count(
        &a.max_limit,
        "max_limit",
        1,
        1_000_000,
        d.max as i64,
        issues,
    ) as usize;
    if min > max {
        issues.at(
            table.span(),
            format!("cluster `{cluster}`: min_limit {min} is above max_limit {max}"),
            "make min_limit at most max_limit",
        );
    }
    let initial = count(
        &a.initial_limit,
        "initial_limit",
        1,
        1_000_000,
        d.initial.clamp(min, max.max(min)) as i64,
        issues,
    ) as usize;
    let percent = |v, key, lo, hi, default: f64, issues: &mut Issues<'_>| {
        count(v, key, lo, hi, (default * 100.0).round() as i64, issues) as f64 / 100.0
    };
    let gradient = GradientConfig {
        initial: initial.clamp(min, max.max(min)),
        min,
        max,
        tolerance: percent(
            &a.tolerance_percent,
            "tolerance_percent",
            100,
            1_000,
            d.tolerance,
            issues,
        ),
        backoff: percent(
            &a.backoff_percent,
            "backoff_percent",
            50,
            99,
            d.backoff,
            issues,
        ),
        window: ms(
            &a.window_ms,
            "window_ms",
            d.window.as_millis() as u64,
            issues,
        ),
        min_samples: count(
            &a.min_samples,
            "min_samples",
            1,
            10_000,
            i64::from(d.min_samples),
            issues,
        ) as u32,
        min_rtt_window: ms(
            &a.min_rtt_window_ms,
            "min_rtt_window_ms",
            d.min_rtt_window.as_millis() as u64,
            issues,
        ),
    };
    let base = LimiterConfig::default();
    let drop_statuses = match &a.drop_statuses {
        None => {
            let mut s = StatusSet::default();
            s.insert(503);
            s.insert(429);
            s
        }
        Some(list) => {
            let mut s = StatusSet::default();
            for item in list.get_ref() {
                match item.get_ref().as_integer() {
                    Some(n) if (400..=599).contains(&n) => s.insert(n as u16),
                    _ => issues.at(
                        item.span(),
                        format!("cluster `{cluster}`: drop_statuses lists status codes"),
                        "list 4xx or 5xx codes such as 503",
                    ),
                }
            }
            s
        }
    };
    let load_report = match &a.load_report {
        None => Some(LoadMetric::Application),
        Some(s) if s.get_ref() == "off" => None,
        Some(s) => {
            let parsed = LoadMetric::parse(s.get_ref());
            if parsed.is_none() {
                issues.at(
                    s.span(),
                    format!(
                        "cluster `{cluster}`: load_report `{}` is not an ORCA utilization figure",
                        s.get_ref()
                    ),
                    "use \"application_utilization\" (the default), \"cpu_utilization\", \"utilization.NAME\", \"named_metrics.NAME\" or \"off\"",
                );
            }
            parsed
        }
    };
    Some(AdaptiveSettings {
        limiter: LimiterConfig {
            limit: LimitConfig::Gradient(gradient),
            reserve: reserve(&a.reserve_percent, issues),
            max_wait: queue_timeout(&a.queue_timeout_ms, base.max_wait, issues),
            max_queue: count(
                &a.max_queue,
                "max_queue",
                0,
                100_000,
                base.max_queue as i64,
                issues,
            ) as usize,
        },
        drop_statuses,
        load_report,
    })
}

fn reserve(v: &Option<Spanned<i64>>, issues: &mut Issues<'_>) -> f64 {
    let d = (LimiterConfig::default().reserve * 100.0).round() as i64;
    count(v, "reserve_percent", 0, 90, d, issues) as f64 / 100.0
}

fn queue_timeout(v: &Option<Spanned<i64>>, default: Duration, issues: &mut Issues<'_>) -> Duration {
    match v {
        Some(s) if *s.get_ref() == 0 => Duration::ZERO,
        _ => ms(v, "queue_timeout_ms", default.as_millis() as u64, issues),
    }
}

/// `[overload]`.
pub(super) fn overload(raw: &RawConfig, issues: &mut Issues<'_>) -> OverloadSettings {
    let Some(table) = &raw.overload else {
        return OverloadSettings::default();
    };
    let o = table.get_ref();
    let base = LimiterConfig::default();
    let inbound = o.max_in_flight.as_ref().map(|_| LimiterConfig {
        limit: LimitConfig::Fixed(count(
            &o.max_in_flight,
            "max_in_flight",
            1,
            10_000_000,
            10_000,
            issues,
        ) as usize),
        reserve: reserve(&o.reserve_percent, issues),
        max_wait: queue_timeout(&o.queue_timeout_ms, base.max_wait, issues),
        max_queue: base.max_queue,
    });
    let priority_header = o.priority_header.as_ref().and_then(|h| {
        let name = HeaderName::from_bytes(h.get_ref().trim().to_ascii_lowercase().as_bytes());
        let Ok(name) = name else {
            issues.at(
                h.span(),
                format!("priority_header `{}` is not a header name", h.get_ref()),
                "use a header name such as \"x-priority\"",
            );
            return None;
        };
        let from = super::networks(
            o.priority_header_from.as_ref(),
            "priority_header_from",
            issues,
        );
        if from.is_empty() {
            issues.at(
                h.span(),
                "priority_header is set but priority_header_from is empty, so any client could raise its own priority",
                "list the client networks (your own services) whose priority header is believed in priority_header_from",
            );
        }
        Some((name, from))
    });
    let priority_claim = o.priority_claim.as_ref().and_then(|c| {
        let name = c.get_ref().trim();
        if name.is_empty() {
            issues.at(
                c.span(),
                "priority_claim is empty",
                "name a JWT claim, e.g. \"priority\"",
            );
            return None;
        }
        Some(name.to_owned())
    });
    OverloadSettings {
        inbound,
        retry_after_seconds: count(
            &o.retry_after_seconds,
            "retry_after_seconds",
            1,
            3_600,
            1,
            issues,
        ) as u32,
        priority_header,
        priority_claim,
    }
}
