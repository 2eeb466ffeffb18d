//! The concurrency limiter: a limit on calls in flight (fixed, or adaptive with
//! [`GradientLimit`]) that sheds by priority when it is reached.
//!
//! Mechanism apart from policy: the limit's value comes from the policy ([`Limit`]); this
//! module admits, queues and sheds. Shedding order:
//!
//! - a call is admitted at once while in-flight is under its priority's **threshold**:
//!   `limit × (1 − reserve × (100 − score) / 100)`. Critical calls (score 100) may use the whole
//!   limit; a score of 0 only the part outside the reserve. The reserve is headroom kept for
//!   higher priorities; everything under a priority's threshold is borrowable by it whether
//!   or not higher priorities are busy;
//! - over its threshold, a call of class degraded or critical waits (at most `max_wait`, at
//!   most `max_queue` waiters); a non-critical call is shed at once;
//! - a freed slot goes to the highest-priority waiter first (FIFO within a score), and a new
//!   call never passes a waiter of its own or higher priority.
//!
//! Runtime-free: waiting is a plain future; the caller gives the "waited too long" future (a
//! timer of its runtime) and `now`. Permits release their slot when dropped.

mod gradient;
mod priority;
#[cfg(test)]
mod tests;

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Poll, Waker};
use std::time::{Duration, Instant};

pub use gradient::{GradientConfig, GradientLimit, Sample};
pub use priority::{Class, Priority};

/// Where the limit comes from.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum LimitConfig {
    /// A fixed number of calls.
    Fixed(usize),
    /// Adaptive, from the round-trip times and drops of live traffic.
    Gradient(GradientConfig),
}

/// Limiter settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterConfig {
    /// The limit.
    pub limit: LimitConfig,
    /// The share of the limit (0.0-0.9) kept from a score-0 call; scores in between are kept
    /// from proportionally less.
    pub reserve: f64,
    /// How long a degraded or critical call may wait for a slot.
    pub max_wait: Duration,
    /// How many calls may wait at once.
    pub max_queue: usize,
}

impl Default for LimiterConfig {
    fn default() -> Self {
        Self {
            limit: LimitConfig::Gradient(GradientConfig::default()),
            reserve: 0.2,
            max_wait: Duration::from_millis(50),
            max_queue: 1000,
        }
    }
}

/// Why a call was shed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shed {
    /// Over its priority's threshold, and it may not wait (or the queue is full).
    OverLimit(Class),
    /// It waited `max_wait` for a slot.
    QueueTimeout(Class),
}

impl Shed {
    /// The shed call's class.
    pub fn class(self) -> Class {
        match self {
            Shed::OverLimit(c) | Shed::QueueTimeout(c) => c,
        }
    }
}

impl fmt::Display for Shed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Shed::OverLimit(c) => write!(f, "over the concurrency limit ({c} shed)"),
            Shed::QueueTimeout(c) => write!(f, "no slot within the wait ({c} shed)"),
        }
    }
}

impl std::error::Error for Shed {}

/// The limit's policy.
// It lives once per limiter, behind its mutex: boxing the larger variant would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
enum Limit {
    Fixed(usize),
    Gradient(GradientLimit),
}

impl Limit {
    fn value(&self) -> usize {
        match self {
            Limit::Fixed(n) => *n,
            Limit::Gradient(g) => g.limit(),
        }
    }
}

/// One waiting call's cell: granted a slot, and who to wake.
#[derive(Debug, Default)]
struct WaitCell {
    granted: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl WaitCell {
    fn grant(&self) {
        self.granted.store(true, Ordering::Release);
        let waker = self.waker.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(w) = waker {
            w.wake();
        }
    }
}

#[derive(Debug)]
struct Waiter {
    priority: Priority,
    seq: u64,
    cell: Arc<WaitCell>,
}

#[derive(Debug)]
struct State {
    limit: Limit,
    in_flight: usize,
    /// Waiters, in arrival order (few; scanned for the best).
    waiters: Vec<Waiter>,
    seq: u64,
}

#[derive(Debug)]
struct Inner {
    config: LimiterConfig,
    state: Mutex<State>,
    shed: [AtomicU64; 3],
    dropped: AtomicU64,
}

/// A concurrency limit that sheds lowest priority first. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct ConcurrencyLimiter {
    inner: Arc<Inner>,
}

/// A slot; released (to the best waiter, if any) when dropped.
#[derive(Debug)]
pub struct LimitPermit {
    inner: Arc<Inner>,
}

/// A view for metrics and admin pages.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LimiterSnapshot {
    /// Whether the limit adapts.
    pub adaptive: bool,
    /// The limit now.
    pub limit: usize,
    /// Calls in flight.
    pub in_flight: usize,
    /// Calls waiting for a slot.
    pub queued: usize,
    /// The baseline (minimum) RTT, adaptive limits only.
    pub min_rtt: Option<Duration>,
    /// The last window's mean RTT, adaptive limits only.
    pub sample_rtt: Option<Duration>,
    /// The utilization the origin last reported of itself, adaptive limits only.
    pub origin_load: Option<f64>,
    /// Calls shed since start, per class in [`Class::ALL`] order.
    pub shed: [u64; 3],
    /// Drops the origin answered with since start (timeouts, resets, overload statuses).
    pub dropped: u64,
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The in-flight count under which `priority` is admitted.
    fn threshold(&self, limit: usize, priority: Priority) -> usize {
        let keep = self.config.reserve * f64::from(100 - priority.score()) / 100.0;
        ((limit as f64) * (1.0 - keep)).floor().max(1.0) as usize
    }

    /// Hands free slots to the best waiters their thresholds allow.
    fn dispatch(&self, st: &mut State) {
        while let Some(best) = best_waiter(&st.waiters) {
            let w = &st.waiters[best];
            if st.in_flight >= self.threshold(st.limit.value(), w.priority) {
                return;
            }
            st.in_flight += 1;
            let w = st.waiters.remove(best);
            if let Limit::Gradient(g) = &mut st.limit {
                g.on_admit(st.in_flight);
            }
            w.cell.grant();
        }
    }

    fn release(&self) {
        let mut st = self.lock();
        st.in_flight = st.in_flight.saturating_sub(1);
        self.dispatch(&mut st);
    }

    fn shed(&self, why: Shed) -> Shed {
        self.shed[why.class().index()].fetch_add(1, Ordering::Relaxed);
        why
    }
}

/// The index of the highest-priority, earliest waiter.
fn best_waiter(waiters: &[Waiter]) -> Option<usize> {
    waiters
        .iter()
        .enumerate()
        .max_by(|(_, a), (_, b)| a.priority.cmp(&b.priority).then(b.seq.cmp(&a.seq)))
        .map(|(i, _)| i)
}

/// Removes a waiter that gave up (or was cancelled); if it had been granted a slot
/// meanwhile, the slot goes on to the next.
struct WaitGuard<'a> {
    inner: &'a Inner,
    seq: u64,
    cell: Arc<WaitCell>,
    done: bool,
}

impl Drop for WaitGuard<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let mut st = self.inner.lock();
        if let Some(i) = st.waiters.iter().position(|w| w.seq == self.seq) {
            st.waiters.remove(i);
        } else if self.cell.granted.load(Ordering::Acquire) {
            st.in_flight = st.in_flight.saturating_sub(1);
            self.inner.dispatch(&mut st);
        }
    }
}

impl ConcurrencyLimiter {
    /// A limiter; `now` starts the adaptive limit's clock.
    pub fn new(config: LimiterConfig, now: Instant) -> Self {
        let limit = match config.limit {
            LimitConfig::Fixed(n) => Limit::Fixed(n.max(1)),
            LimitConfig::Gradient(g) => Limit::Gradient(GradientLimit::new(g, now)),
        };
        let config = LimiterConfig {
            reserve: config.reserve.clamp(0.0, 0.9),
            ..config
        };
        Self {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State {
                    limit,
                    in_flight: 0,
                    waiters: Vec::new(),
                    seq: 0,
                }),
                shed: Default::default(),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// Its settings.
    pub fn config(&self) -> &LimiterConfig {
        &self.inner.config
    }

    fn permit(&self) -> LimitPermit {
        LimitPermit {
            inner: self.inner.clone(),
        }
    }

    /// A slot now, or the reason it is shed; never waits.
    pub fn try_acquire(&self, priority: Priority) -> Result<LimitPermit, Shed> {
        match self.admit_or_enqueue(priority, false) {
            Ok(()) => Ok(self.permit()),
            Err(Ok(_)) => unreachable!("invariant: no waiter is queued when waiting is off"),
            Err(Err(shed)) => Err(self.inner.shed(shed)),
        }
    }

    /// Admits `priority` now (Ok), queues it (Err(Ok(cell, seq))) or sheds it.
    #[allow(clippy::type_complexity)]
    fn admit_or_enqueue(
        &self,
        priority: Priority,
        may_wait: bool,
    ) -> Result<(), Result<(Arc<WaitCell>, u64), Shed>> {
        let inner = &*self.inner;
        let mut st = inner.lock();
        let passes_waiter = st.waiters.iter().all(|w| w.priority < priority);
        if passes_waiter && st.in_flight < inner.threshold(st.limit.value(), priority) {
            st.in_flight += 1;
            let in_flight = st.in_flight;
            if let Limit::Gradient(g) = &mut st.limit {
                g.on_admit(in_flight);
            }
            return Ok(());
        }
        if let Limit::Gradient(g) = &mut st.limit {
            g.on_contention();
        }
        let class = priority.class();
        if !may_wait
            || class == Class::NonCritical
            || inner.config.max_wait.is_zero()
            || st.waiters.len() >= inner.config.max_queue
        {
            return Err(Err(Shed::OverLimit(class)));
        }
        st.seq += 1;
        let seq = st.seq;
        let cell = Arc::new(WaitCell::default());
        st.waiters.push(Waiter {
            priority,
            seq,
            cell: cell.clone(),
        });
        Err(Ok((cell, seq)))
    }

    /// A slot now, or after waiting (degraded and critical calls only) until one is freed
    /// for it or `give_up` completes; the reason it is shed otherwise.
    pub async fn acquire(
        &self,
        priority: Priority,
        give_up: impl Future<Output = ()>,
    ) -> Result<LimitPermit, Shed> {
        let (cell, seq) = match self.admit_or_enqueue(priority, true) {
            Ok(()) => return Ok(self.permit()),
            Err(Err(shed)) => return Err(self.inner.shed(shed)),
            Err(Ok(queued)) => queued,
        };
        let mut guard = WaitGuard {
            inner: &self.inner,
            seq,
            cell,
            done: false,
        };
        let mut give_up = pin!(give_up);
        let granted = std::future::poll_fn(|cx| {
            if guard.cell.granted.load(Ordering::Acquire) {
                return Poll::Ready(true);
            }
            *guard.cell.waker.lock().unwrap_or_else(|e| e.into_inner()) = Some(cx.waker().clone());
            if guard.cell.granted.load(Ordering::Acquire) {
                return Poll::Ready(true);
            }
            give_up.as_mut().poll(cx).map(|()| false)
        })
        .await;
        if granted {
            guard.done = true;
            return Ok(self.permit());
        }
        drop(guard);
        Err(self.inner.shed(Shed::QueueTimeout(priority.class())))
    }

    /// A slot for `priority` now, or after at most the configured wait (`timer(max_wait)`, a
    /// sleep of the caller's runtime).
    pub async fn acquire_within<T: Future<Output = ()>>(
        &self,
        priority: Priority,
        timer: impl FnOnce(Duration) -> T,
    ) -> Result<LimitPermit, Shed> {
        self.acquire(priority, timer(self.inner.config.max_wait))
            .await
    }

    /// Whether a call of `priority` that already holds a slot may make one more attempt
    /// (a retry or a hedge): in-flight is under its threshold and nobody of its priority or
    /// higher is waiting.
    pub fn admits_extra(&self, priority: Priority) -> bool {
        let st = self.inner.lock();
        st.waiters.iter().all(|w| w.priority < priority)
            && st.in_flight < self.inner.threshold(st.limit.value(), priority)
    }

    /// The limit now.
    pub fn limit(&self) -> usize {
        self.inner.lock().limit.value()
    }

    /// A snapshot.
    pub fn snapshot(&self) -> LimiterSnapshot {
        let st = self.inner.lock();
        let (adaptive, min_rtt, sample_rtt, origin_load) = match &st.limit {
            Limit::Fixed(_) => (false, None, None, None),
            Limit::Gradient(g) => (true, g.min_rtt(), g.sample_rtt(), g.origin_load()),
        };
        LimiterSnapshot {
            adaptive,
            limit: st.limit.value(),
            in_flight: st.in_flight,
            queued: st.waiters.len(),
            min_rtt,
            sample_rtt,
            origin_load,
            shed: std::array::from_fn(|i| self.inner.shed[i].load(Ordering::Relaxed)),
            dropped: self.inner.dropped.load(Ordering::Relaxed),
        }
    }
}

impl LimitPermit {
    /// Notes the origin's report of its own load that came with this attempt's answer (the
    /// fraction of its capacity in use); call it before [`LimitPermit::record`]. A fixed
    /// limit ignores it.
    pub fn report_load(&self, utilization: f64) {
        let mut st = self.inner.lock();
        let in_flight = st.in_flight;
        if let Limit::Gradient(g) = &mut st.limit {
            g.on_load(utilization, in_flight);
        }
    }

    /// Feeds one attempt's result to an adaptive limit at `now` (a fixed one ignores it);
    /// returns the new limit when it changed. A raised limit admits waiters at once.
    pub fn record(&self, sample: Sample, now: Instant) -> Option<usize> {
        if sample == Sample::Dropped {
            self.inner.dropped.fetch_add(1, Ordering::Relaxed);
        }
        let mut st = self.inner.lock();
        let changed = match &mut st.limit {
            Limit::Fixed(_) => None,
            Limit::Gradient(g) => g.on_sample(sample, now),
        };
        if changed.is_some() {
            self.inner.dispatch(&mut st);
        }
        changed
    }
}

impl Drop for LimitPermit {
    fn drop(&mut self) {
        self.inner.release();
    }
}
