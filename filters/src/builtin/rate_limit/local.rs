//! A limit this gateway enforces alone: a keyed GCRA (governor) whose key count stays
//! bounded. Keys whose state has returned to "fresh" are swept every few seconds, and a limit
//! tracking more than `max_keys` keys after a sweep starts over empty (logged).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DashMapStateStore;
use governor::{Quota, RateLimiter};

use super::{Key, Report, Verdict};

/// Checks between looks at the key count (bounds the overshoot past `max_keys`).
pub(super) const SIZE_CHECK_EVERY: u64 = 256;
/// Least time between sweeps of stale keys.
const SWEEP_INTERVAL: Duration = Duration::from_secs(10);
/// Keys a local limit tracks when its settings say nothing (the filter's `max_keys`).
const DEFAULT_MAX_KEYS: usize = 100_000;

type Limiter = RateLimiter<Key, DashMapStateStore<Key>, DefaultClock, StateInformationMiddleware>;

/// A local limit.
#[derive(Debug)]
pub(super) struct LocalLimit {
    quota: Quota,
    limiter: ArcSwap<Limiter>,
    max_keys: usize,
    checks: AtomicU64,
    last_sweep_ms: AtomicU64,
    sweeping: Mutex<()>,
    epoch: Instant,
}

fn new_limiter(quota: Quota) -> Limiter {
    RateLimiter::dashmap(quota).with_middleware::<StateInformationMiddleware>()
}

impl LocalLimit {
    /// A limit of `quota` tracking at most the default number of keys.
    pub(super) fn new(quota: Quota) -> Self {
        Self::bounded(quota, DEFAULT_MAX_KEYS)
    }

    /// A limit of `quota` tracking at most `max_keys` keys.
    pub(super) fn bounded(quota: Quota, max_keys: usize) -> Self {
        Self {
            quota,
            limiter: ArcSwap::from_pointee(new_limiter(quota)),
            max_keys,
            checks: AtomicU64::new(0),
            last_sweep_ms: AtomicU64::new(0),
            sweeping: Mutex::new(()),
            epoch: Instant::now(),
        }
    }

    /// Keys tracked now.
    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.limiter.load().len()
    }

    /// Keeps the key count bounded (see the module docs).
    fn maintain(&self) {
        let n = self.checks.fetch_add(1, Ordering::Relaxed);
        if n % SIZE_CHECK_EVERY != 0 {
            return;
        }
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        let limiter = self.limiter.load();
        let over = limiter.len() > self.max_keys;
        let due = now_ms.saturating_sub(self.last_sweep_ms.load(Ordering::Relaxed))
            >= SWEEP_INTERVAL.as_millis() as u64;
        if !(over || due) {
            return;
        }
        let Ok(_sweeping) = self.sweeping.try_lock() else {
            return;
        };
        self.last_sweep_ms.store(now_ms, Ordering::Relaxed);
        limiter.retain_recent();
        if limiter.len() > self.max_keys {
            tracing::warn!(
                keys = limiter.len(),
                max_keys = self.max_keys,
                "rate limit tracks too many keys; starting over"
            );
            self.limiter.store(Arc::new(new_limiter(self.quota)));
        } else {
            limiter.shrink_to_fit();
        }
    }

    /// Decides on one request for `key`.
    pub(super) fn check(&self, key: &Key) -> Verdict {
        self.maintain();
        let limiter = self.limiter.load();
        let burst = self.quota.burst_size().get();
        match limiter.check_key(key) {
            Ok(snapshot) => {
                let remaining = snapshot.remaining_burst_capacity();
                let used = burst.saturating_sub(remaining);
                let reset = self.quota.replenish_interval() * used;
                Verdict::Allowed(Report {
                    limit: burst,
                    remaining,
                    reset_secs: reset.as_secs() + u64::from(reset.subsec_nanos() > 0),
                })
            }
            Err(not_until) => {
                let wait = not_until.wait_time_from(limiter.clock().now());
                let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                Verdict::Refused(
                    Report {
                        limit: burst,
                        remaining: 0,
                        reset_secs: secs.max(1),
                    },
                    wait,
                )
            }
        }
    }
}
