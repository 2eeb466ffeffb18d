//! Retry budgets, as in Linkerd and Finagle: retries may add at most `ratio` of the original
//! request load over a rolling window, plus a small floor per second so that a quiet service
//! can still retry. A budget caps retry storms: when a dependency is down, retries stop
//! instead of multiplying the load on it.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::window::{Ring, Slot};

/// Retry budget settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetConfig {
    /// Retries allowed per original request over the window (0.2 = 20 % extra load).
    pub ratio: f64,
    /// Retries allowed per second regardless of load.
    pub min_per_second: u32,
    /// How long requests and retries are remembered.
    pub window: Duration,
}

impl Default for BudgetConfig {
    /// 20 % plus 10 retries per second over 10 s (Linkerd's defaults).
    fn default() -> Self {
        Self {
            ratio: 0.2,
            min_per_second: 10,
            window: Duration::from_secs(10),
        }
    }
}

#[derive(Debug, Default)]
struct Tally {
    requests: u64,
    retries: u64,
}

impl Slot for Tally {
    fn clear(&mut self) {
        *self = Tally::default();
    }
}

#[derive(Debug)]
struct Inner {
    ring: Ring<Tally>,
    refused: u64,
}

/// A retry budget shared by every call to one dependency.
#[derive(Debug)]
pub struct RetryBudget {
    config: BudgetConfig,
    inner: Mutex<Inner>,
}

/// A view for admin pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BudgetSnapshot {
    /// Original requests in the window.
    pub requests: u64,
    /// Retries in the window.
    pub retries: u64,
    /// Retries the window allows.
    pub allowed: u64,
    /// Retries refused since start.
    pub refused: u64,
}

impl RetryBudget {
    /// An empty budget starting at `now`.
    pub fn new(config: BudgetConfig, now: Instant) -> Self {
        Self {
            config,
            inner: Mutex::new(Inner {
                ring: Ring::new(config.window, 10, now),
                refused: 0,
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn allowed(&self, requests: u64) -> u64 {
        let floor = u64::from(self.config.min_per_second) * self.config.window.as_secs().max(1);
        floor + (requests as f64 * self.config.ratio) as u64
    }

    /// Counts an original request (not a retry).
    pub fn deposit(&self, now: Instant) {
        self.lock().ring.current(now).requests += 1;
    }

    /// Takes one retry from the budget; `false` means the retry must not be made.
    pub fn try_withdraw(&self, now: Instant) -> bool {
        let mut inner = self.lock();
        let (requests, retries) = inner
            .ring
            .live(now)
            .fold((0, 0), |(a, b), t| (a + t.requests, b + t.retries));
        if retries < self.allowed(requests) {
            inner.ring.current(now).retries += 1;
            true
        } else {
            inner.refused += 1;
            false
        }
    }

    /// A snapshot at `now`.
    pub fn snapshot(&self, now: Instant) -> BudgetSnapshot {
        let inner = self.lock();
        let (requests, retries) = inner
            .ring
            .live(now)
            .fold((0, 0), |(a, b), t| (a + t.requests, b + t.retries));
        BudgetSnapshot {
            requests,
            retries,
            allowed: self.allowed(requests),
            refused: inner.refused,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_are_capped_at_ratio_plus_floor() {
        let t0 = Instant::now();
        let b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.2,
                min_per_second: 1,
                window: Duration::from_secs(10),
            },
            t0,
        );
        for _ in 0..100 {
            b.deposit(t0);
        }
        // 10 (floor: 1/s over 10 s) + 20 (20 % of 100).
        let granted = (0..100).filter(|_| b.try_withdraw(t0)).count();
        assert_eq!(granted, 30);
        let s = b.snapshot(t0);
        assert_eq!(
            (s.requests, s.retries, s.allowed, s.refused),
            (100, 30, 30, 70)
        );
    }

    #[test]
    fn the_budget_refills_as_the_window_moves() {
        let t0 = Instant::now();
        let b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.0,
                min_per_second: 1,
                window: Duration::from_secs(10),
            },
            t0,
        );
        assert_eq!((0..20).filter(|_| b.try_withdraw(t0)).count(), 10);
        assert!(!b.try_withdraw(t0 + Duration::from_secs(9)));
        assert!(b.try_withdraw(t0 + Duration::from_secs(10)));
    }

    #[test]
    fn no_floor_and_no_load_means_no_retries() {
        let t0 = Instant::now();
        let b = RetryBudget::new(
            BudgetConfig {
                ratio: 0.5,
                min_per_second: 0,
                window: Duration::from_secs(10),
            },
            t0,
        );
        assert!(!b.try_withdraw(t0));
        b.deposit(t0);
        b.deposit(t0);
        assert!(b.try_withdraw(t0));
        assert!(!b.try_withdraw(t0));
    }
}
