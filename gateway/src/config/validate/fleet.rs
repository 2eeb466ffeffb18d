//! Validation of `[redis]` (the store of cluster-wide rate limits) and `[fleet]` (how many
//! gateways share them).

use std::path::Path;

use super::{count, ms, Issues};
use crate::config::raw::RawConfig;
use crate::config::{FleetSettings, RedisConfig};

/// `[redis]`, or `None` when absent. The address may be a secret reference.
pub(super) fn redis(
    raw: &RawConfig,
    base_dir: &Path,
    issues: &mut Issues<'_>,
) -> Option<RedisConfig> {
    let section = raw.redis.as_ref()?;
    let r = section.get_ref();
    let Some(address) = &r.address else {
        issues.at(
            section.span(),
            "[redis] has no address",
            "set address = \"redis://127.0.0.1:6379\"",
        );
        return None;
    };
    let url = match crate::config::secrets::resolve(address.get_ref(), base_dir) {
        Ok(u) => u.into_owned(),
        Err(e) => {
            issues.at(
                address.span(),
                format!("[redis] address: {e}"),
                "set the variable or create the file the reference names",
            );
            return None;
        }
    };
    let url = if url.contains("://") {
        url
    } else {
        format!("redis://{url}")
    };
    if let Err(e) = redis_store::RedisStore::new(redis_store::RedisSettings::new(url.clone()), None)
    {
        issues.at(
            address.span(),
            e,
            "use redis://HOST:PORT (rediss:// for TLS, redis://:PASSWORD@HOST:PORT/DB)",
        );
        return None;
    }
    let timeout = ms(&r.timeout_ms, "timeout_ms", 50, issues);
    let sync_interval = ms(&r.sync_interval_ms, "sync_interval_ms", 100, issues);
    if sync_interval.as_millis() > 1_000 {
        if let Some(s) = &r.sync_interval_ms {
            issues.at(
                s.span(),
                "sync_interval_ms over 1000 lets gateways drift far apart between reconciliations",
                "use at most 1000 (100 is the default)",
            );
        }
    }
    Some(RedisConfig {
        settings: redis_store::RedisSettings {
            url,
            timeout,
            failures_to_open: count(&r.failures_to_open, "failures_to_open", 1, 100, 3, issues)
                as u32,
            retry_after: ms(&r.retry_after_ms, "retry_after_ms", 1_000, issues),
        },
        sync_interval,
    })
}

/// `[fleet]`: a configured size, or membership through Consul (`register = true`).
pub(super) fn fleet(raw: &RawConfig, issues: &mut Issues<'_>) -> FleetSettings {
    let f = &raw.fleet;
    let size = count(&f.size, "size", 1, 10_000, 1, issues) as u32;
    let service = match &f.service {
        Some(s) if !valid_service(s.get_ref()) => {
            issues.at(
                s.span(),
                format!(
                    "[fleet] service `{}` is not a usable Consul service name",
                    s.get_ref()
                ),
                "use letters, digits and `-`, e.g. \"edge-gateway\"",
            );
            "gateway".to_owned()
        }
        Some(s) => s.get_ref().clone(),
        None => "gateway".to_owned(),
    };
    FleetSettings {
        size,
        register: f.register.unwrap_or(false).then_some(service),
    }
}

fn valid_service(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}
