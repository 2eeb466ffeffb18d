//! Cluster-wide limits: one GCRA state per key in the fleet's shared store (Redis), decided
//! locally in the common case.
//!
//! Each gateway keeps, per key, the theoretical arrival time (TAT) the store last reported and
//! the requests it admitted since. It admits locally while those stay within its share of the
//! capacity the store reported: `(pending + 1) * N * 2 <= cells available`, N the fleet's
//! size (the factor 2 covers views of the store taken up to one sync apart). So the whole
//! fleet cannot spend more than what was available between two reconciliations. A
//! key close to its limit is decided by the store itself ([`LimitStore::check`]), atomically.
//! A background task hands each key's pending count to the store at most `sync_interval`
//! apart and learns the key's new TAT ([`LimitStore::sync`]).
//!
//! When the store is unavailable, the limit's `on_store_failure` decides: `local_share` (each
//! gateway enforces limit / N with a local GCRA), `open` or `closed`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use arc_swap::ArcSwapOption;
use governor::Quota;

use super::local::LocalLimit;
use super::{Key, Verdict};
use crate::{FilterServices, GcraOp, LimitMode, LimitStore};

/// Keys a sync hands to the store at most (the most recently used first).
const MAX_KEYS_PER_SYNC: usize = 2_000;
/// Each gateway spends locally at most 1 / (N x HEADROOM) of what its last view of the store
/// showed available: the views of different gateways are up to one sync apart, and the
/// headroom keeps their overlap from admitting more than the limit.
const HEADROOM: u64 = 2;
/// A key not used for this long (beyond its tolerance) is forgotten locally.
const KEY_IDLE: Duration = Duration::from_secs(10);

/// What a limit does while its store is unavailable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum OnStoreFailure {
    /// Each gateway enforces limit / N locally.
    LocalShare,
    /// Admit everything.
    Open,
    /// Refuse everything (503).
    Closed,
}

impl OnStoreFailure {
    pub(super) fn parse(s: &str) -> Option<Self> {
        match s {
            "local_share" => Some(Self::LocalShare),
            "open" => Some(Self::Open),
            "closed" => Some(Self::Closed),
            _ => None,
        }
    }
}

/// The local view of one key.
#[derive(Debug, Clone, Copy, Default)]
struct KeyState {
    /// The TAT the store last reported (µs since the epoch).
    tat_us: u64,
    /// Requests admitted locally and not yet handed to the store.
    pending: u32,
    /// The last request's time (µs since the epoch).
    used_us: u64,
    /// What the other gateways may admit locally from the last sync's view and not have
    /// reported yet (cells); checks in the store keep it back.
    reserve: u64,
}

/// A cluster-wide limit.
#[derive(Debug)]
pub(super) struct ClusterLimit {
    inner: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    /// Namespace of this limit's keys in the store.
    prefix: String,
    emission_us: u64,
    tolerance_us: u64,
    burst: u32,
    quota: Quota,
    on_failure: OnStoreFailure,
    sync_interval: Duration,
    store: Arc<dyn LimitStore>,
    services: FilterServices,
    keys: Mutex<HashMap<Key, KeyState>>,
    /// The local share in use while degraded, with the fleet size it was made for.
    share: ArcSwapOption<(u32, LocalLimit)>,
    degraded: AtomicBool,
    syncing: AtomicBool,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

impl ClusterLimit {
    /// A limit of `quota` named `prefix` in `store`.
    pub(super) fn new(
        prefix: String,
        quota: Quota,
        on_failure: OnStoreFailure,
        sync_interval: Duration,
        store: Arc<dyn LimitStore>,
        services: FilterServices,
    ) -> Self {
        let emission_us = quota.replenish_interval().as_micros().max(1) as u64;
        let burst = quota.burst_size().get();
        Self {
            inner: Arc::new(Shared {
                prefix,
                emission_us,
                tolerance_us: emission_us * u64::from(burst),
                burst,
                quota,
                on_failure,
                sync_interval,
                store,
                services,
                keys: Mutex::new(HashMap::new()),
                share: ArcSwapOption::empty(),
                degraded: AtomicBool::new(false),
                syncing: AtomicBool::new(false),
            }),
        }
    }

    /// Decides on one request for `key`.
    pub(super) async fn check(&self, key: Key) -> Verdict {
        let s = &self.inner;
        self.start_sync();
        // While the store is away, nothing is decided from the last view of it: that view
        // ages into "everything available". The reconciliation task finds out when the
        // store is back.
        if !s.store.available() || s.degraded.load(Ordering::Acquire) {
            return s.degraded_verdict(&key);
        }
        let now = now_us();
        let fleet = s.services.fleet.size().max(1);
        let op = {
            let mut keys = s.keys.lock().unwrap_or_else(|p| p.into_inner());
            let st = keys.entry(key.clone()).or_default();
            st.used_us = now;
            let ahead = st.tat_us.saturating_sub(now);
            let available = s.tolerance_us.saturating_sub(ahead) / s.emission_us;
            if u64::from(st.pending + 1) * u64::from(fleet) * HEADROOM <= available {
                st.pending += 1;
                let remaining =
                    (available / u64::from(fleet) / HEADROOM).saturating_sub(u64::from(st.pending));
                drop(keys);
                s.observe(LimitMode::Local, true);
                return Verdict::Allowed(s.report(remaining as u32, ahead));
            }
            // Close to the limit: the store decides, with this key's pending requests. It
            // keeps back what the other gateways may admit locally from their share of the
            // last sync's view and not have reported yet; near the limit that share, and so
            // the reserve, is nothing, and the store decides alone and exactly.
            let mut op = s.op(&key, st.pending + 1, now);
            op.tolerance_us = op.tolerance_us.saturating_sub(st.reserve * s.emission_us);
            st.pending = 0;
            op
        };
        match s.store.check(&op).await {
            Ok(checked) => {
                s.set_degraded(false);
                let mut keys = s.keys.lock().unwrap_or_else(|p| p.into_inner());
                if let Some(st) = keys.get_mut(&key) {
                    st.tat_us = st.tat_us.max(checked.tat_us);
                }
                drop(keys);
                s.observe(LimitMode::Global, checked.allowed);
                let ahead = checked.tat_us.saturating_sub(now);
                if checked.allowed {
                    let left = s.tolerance_us.saturating_sub(ahead) / s.emission_us;
                    Verdict::Allowed(s.report(left as u32, ahead))
                } else {
                    // The next request fits once the state is back within the tolerance.
                    let wait = (ahead + s.emission_us).saturating_sub(s.tolerance_us);
                    Verdict::Refused(s.report(0, ahead), Duration::from_micros(wait))
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, limit = %s.prefix, "cluster limit check failed");
                s.set_degraded(true);
                s.degraded_verdict(&key)
            }
        }
    }

    /// Starts the background reconciliation once a runtime is running it (the first request).
    fn start_sync(&self) {
        let s = &self.inner;
        if s.syncing.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            s.syncing.store(false, Ordering::Release);
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        handle.spawn(sync_loop(weak, s.sync_interval));
    }

    /// Whether the limit is in degraded mode (the store failed last time it was asked).
    pub(super) fn is_degraded(&self) -> bool {
        self.inner.degraded.load(Ordering::Relaxed) || !self.inner.store.available()
    }

    /// Hands every key's pending requests to the store now (what the background task does).
    #[cfg(test)]
    pub(super) async fn sync_now(&self) {
        self.inner.sync_once().await;
    }
}

impl Shared {
    fn op(&self, key: &Key, count: u32, now_us: u64) -> GcraOp {
        GcraOp {
            // One hash tag per key: Redis Cluster spreads keys over slots, and each script
            // call touches one key.
            key: format!("gw:rl:{{{}|{}}}", self.prefix, key.store_text()),
            count,
            emission_us: self.emission_us,
            tolerance_us: self.tolerance_us,
            now_us,
        }
    }

    fn report(&self, remaining: u32, ahead_us: u64) -> super::Report {
        let reset = ahead_us.div_ceil(1_000_000);
        super::Report {
            limit: self.burst,
            remaining: remaining.min(self.burst),
            reset_secs: reset,
        }
    }

    fn observe(&self, mode: LimitMode, allowed: bool) {
        if let Some(o) = &self.services.limit_observer {
            o.decision(mode, allowed);
        }
    }

    fn set_degraded(&self, degraded: bool) {
        if self.degraded.swap(degraded, Ordering::AcqRel) != degraded {
            if degraded {
                tracing::warn!(limit = %self.prefix, store = %self.store.describe(), on_store_failure = ?self.on_failure, "cluster-wide limit degraded: its store is unavailable");
            } else {
                tracing::info!(limit = %self.prefix, "cluster-wide limit counts in its store again");
            }
            if let Some(o) = &self.services.limit_observer {
                o.degraded(&self.prefix, degraded);
            }
        }
    }

    /// The decision while the store is unavailable.
    fn degraded_verdict(&self, key: &Key) -> Verdict {
        if !self.store.available() {
            self.set_degraded(true);
        }
        let verdict = match self.on_failure {
            OnStoreFailure::Open => Verdict::Allowed(self.report(self.burst, 0)),
            OnStoreFailure::Closed => Verdict::Unavailable,
            OnStoreFailure::LocalShare => {
                let fleet = self.services.fleet.size().max(1);
                let share = match self.share.load_full() {
                    Some(s) if s.0 == fleet => s,
                    _ => {
                        let s = Arc::new((fleet, LocalLimit::new(share_of(self.quota, fleet))));
                        self.share.store(Some(s.clone()));
                        s
                    }
                };
                share.1.check(key)
            }
        };
        self.observe(LimitMode::Degraded, matches!(verdict, Verdict::Allowed(_)));
        verdict
    }

    /// One reconciliation: every key with pending requests (and recently used ones, to learn
    /// the others' use) goes to the store; forgotten keys are dropped.
    async fn sync_once(&self) {
        let now = now_us();
        let ops: Vec<(Key, u32, GcraOp)> = {
            let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
            let idle = KEY_IDLE.as_micros() as u64 + self.tolerance_us;
            keys.retain(|_, st| st.pending > 0 || now.saturating_sub(st.used_us) < idle);
            let mut recent: Vec<(&Key, &KeyState)> = keys.iter().collect();
            if recent.len() > MAX_KEYS_PER_SYNC {
                recent.sort_by_key(|(_, st)| std::cmp::Reverse((st.pending > 0, st.used_us)));
                recent.truncate(MAX_KEYS_PER_SYNC);
            }
            recent
                .into_iter()
                .map(|(k, st)| (k.clone(), st.pending, self.op(k, st.pending, now)))
                .collect()
        };
        if ops.is_empty() || !self.store.available() {
            return;
        }
        let batch: Vec<GcraOp> = ops.iter().map(|(_, _, op)| op.clone()).collect();
        match self.store.sync(&batch).await {
            Ok(tats) => {
                self.set_degraded(false);
                let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                let fleet = u64::from(self.services.fleet.size().max(1));
                for ((key, sent, _), tat) in ops.into_iter().zip(tats) {
                    if let Some(st) = keys.get_mut(&key) {
                        st.pending = st.pending.saturating_sub(sent);
                        st.tat_us = tat;
                        let ahead = tat.saturating_sub(now);
                        let available = self.tolerance_us.saturating_sub(ahead) / self.emission_us;
                        st.reserve = (fleet - 1) * (available / (fleet * HEADROOM));
                    }
                }
            }
            Err(e) => {
                tracing::debug!(error = %e, limit = %self.prefix, "cluster limit sync failed");
                self.set_degraded(true);
                // Admissions made while the store was away are not replayed later: they were
                // decided by the fallback, and replaying them would punish the keys twice.
                let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
                keys.values_mut().for_each(|st| st.pending = 0);
            }
        }
    }
}

/// The quota each of `fleet` gateways enforces alone: rate and burst divided by N (at least
/// one request per period and a burst of one).
fn share_of(quota: Quota, fleet: u32) -> Quota {
    let burst = (quota.burst_size().get() / fleet).max(1);
    let period = quota.replenish_interval() * fleet;
    Quota::with_period(period)
        .unwrap_or(quota)
        .allow_burst(std::num::NonZeroU32::new(burst).unwrap_or(std::num::NonZeroU32::MIN))
}

/// The background reconciliation of one limit; ends when the limit is dropped.
async fn sync_loop(limit: Weak<Shared>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(s) = limit.upgrade() else {
            return;
        };
        s.sync_once().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicU32;

    use async_trait::async_trait;

    use super::*;
    use crate::{Checked, Fleet, StoreError};

    /// The GCRA of the Redis script over a map, for the decision logic's tests (the real
    /// script runs against redis-server in the integration tests).
    #[derive(Debug, Default)]
    struct MemoryStore {
        tats: Mutex<HashMap<String, u64>>,
        down: AtomicBool,
        checks: AtomicU32,
    }

    impl MemoryStore {
        fn step(&self, op: &GcraOp, check: bool) -> Result<Checked, StoreError> {
            if self.down.load(Ordering::Relaxed) {
                return Err(StoreError("down".into()));
            }
            let mut tats = self.tats.lock().expect("lock");
            let tat = tats.entry(op.key.clone()).or_insert(0);
            if op.count == 0 {
                return Ok(Checked {
                    allowed: true,
                    tat_us: *tat,
                });
            }
            let mut t = (*tat).max(op.now_us);
            let mut allowed = true;
            if check {
                t += u64::from(op.count - 1) * op.emission_us;
                if t + op.emission_us - op.now_us > op.tolerance_us {
                    allowed = false;
                } else {
                    t += op.emission_us;
                }
            } else {
                t += u64::from(op.count) * op.emission_us;
            }
            *tat = t;
            Ok(Checked { allowed, tat_us: t })
        }
    }

    #[async_trait]
    impl LimitStore for MemoryStore {
        async fn sync(&self, ops: &[GcraOp]) -> Result<Vec<u64>, StoreError> {
            ops.iter()
                .map(|op| self.step(op, false).map(|c| c.tat_us))
                .collect()
        }
        async fn check(&self, op: &GcraOp) -> Result<Checked, StoreError> {
            self.checks.fetch_add(1, Ordering::Relaxed);
            self.step(op, true)
        }
        fn available(&self) -> bool {
            !self.down.load(Ordering::Relaxed)
        }
        fn describe(&self) -> String {
            "memory".into()
        }
    }

    /// `per_minute` requests a minute with a burst of `burst`: nothing replenishes during a
    /// test, so admissions count exactly.
    fn limit(
        store: &Arc<MemoryStore>,
        fleet: &Arc<Fleet>,
        burst: u32,
        on_failure: OnStoreFailure,
    ) -> ClusterLimit {
        let quota = Quota::per_minute(std::num::NonZeroU32::new(1).expect("1"))
            .allow_burst(std::num::NonZeroU32::new(burst).expect("burst"));
        ClusterLimit::new(
            "t".into(),
            quota,
            on_failure,
            Duration::from_millis(100),
            store.clone(),
            FilterServices {
                fleet: fleet.clone(),
                ..FilterServices::default()
            },
        )
    }

    async fn admitted(l: &ClusterLimit, n: usize) -> usize {
        let mut ok = 0;
        for _ in 0..n {
            if matches!(l.check(Key::Whole).await, Verdict::Allowed(_)) {
                ok += 1;
            }
        }
        ok
    }

    #[tokio::test]
    async fn far_from_the_limit_decisions_are_local_and_reach_the_store_by_sync() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Arc::new(Fleet::new(1));
        let l = limit(&store, &fleet, 100, OnStoreFailure::LocalShare);
        l.sync_now().await; // learn the (empty) state
        assert_eq!(admitted(&l, 50).await, 50);
        assert_eq!(
            store.checks.load(Ordering::Relaxed),
            0,
            "none of them asked the store"
        );
        l.sync_now().await;
        let tat = store
            .tats
            .lock()
            .expect("lock")
            .values()
            .copied()
            .max()
            .expect("a key");
        let spent = (tat.saturating_sub(now_us()) + 30_000_000) / 60_000_000;
        assert!(
            (49..=50).contains(&spent),
            "the store counts {spent} requests"
        );
    }

    #[tokio::test]
    async fn a_fleet_never_admits_more_than_the_limit() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Arc::new(Fleet::new(3));
        let gateways: Vec<ClusterLimit> = (0..3)
            .map(|_| limit(&store, &fleet, 90, OnStoreFailure::LocalShare))
            .collect();
        for g in &gateways {
            g.sync_now().await;
        }
        // Uneven load, interleaved, with reconciliations between the rounds.
        let mut total = 0;
        for round in 0..10 {
            for (i, g) in gateways.iter().enumerate() {
                total += admitted(g, [12, 5, 1][i]).await;
            }
            if round % 3 == 0 {
                for g in &gateways {
                    g.sync_now().await;
                }
            }
        }
        assert_eq!(total, 90, "exactly the burst is admitted across the fleet");
        assert!(
            store.checks.load(Ordering::Relaxed) > 0,
            "keys close to the limit were decided by the store"
        );
    }

    #[tokio::test]
    async fn without_the_store_each_gateway_enforces_its_share() {
        let store = Arc::new(MemoryStore::default());
        store.down.store(true, Ordering::Relaxed);
        let fleet = Arc::new(Fleet::new(4));
        let share = limit(&store, &fleet, 40, OnStoreFailure::LocalShare);
        assert_eq!(admitted(&share, 30).await, 10, "40 / 4 gateways");
        assert!(share.is_degraded());
        fleet.set(2);
        let share = limit(&store, &fleet, 40, OnStoreFailure::LocalShare);
        assert_eq!(admitted(&share, 30).await, 20, "N came down to 2");

        let open = limit(&store, &fleet, 40, OnStoreFailure::Open);
        assert_eq!(admitted(&open, 100).await, 100);
        let closed = limit(&store, &fleet, 40, OnStoreFailure::Closed);
        assert!(matches!(
            closed.check(Key::Whole).await,
            Verdict::Unavailable
        ));

        store.down.store(false, Ordering::Relaxed);
        let back = limit(&store, &fleet, 40, OnStoreFailure::LocalShare);
        back.sync_now().await;
        assert_eq!(
            admitted(&back, 50).await,
            40,
            "global again: the whole limit"
        );
        assert!(!back.is_degraded());
    }

    #[tokio::test]
    async fn a_refusal_says_when_to_retry() {
        let store = Arc::new(MemoryStore::default());
        let fleet = Arc::new(Fleet::new(1));
        let l = limit(&store, &fleet, 2, OnStoreFailure::LocalShare);
        assert_eq!(admitted(&l, 2).await, 2);
        match l.check(Key::Whole).await {
            Verdict::Refused(report, wait) => {
                assert_eq!(report.remaining, 0);
                assert!(
                    wait > Duration::from_secs(55) && wait <= Duration::from_secs(60),
                    "the next cell of a 1/minute limit: {wait:?}"
                );
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }
}
