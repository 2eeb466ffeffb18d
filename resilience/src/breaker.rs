//! The circuit breaker, with Hystrix's semantics by default.
//!
//! Closed: calls go through and their outcomes are counted in a rolling window. When the
//! window holds at least `volume_threshold` requests and at least `error_percent` of them
//! failed (or, in consecutive mode, after N failures in a row), it opens.
//! Open: calls are refused (short-circuited) until `sleep_window` has passed; then exactly one
//! trial call goes through (half-open). The trial's success closes the breaker and clears the
//! window; its failure re-opens it and restarts the sleep window.
//! SREs can force it open or closed; while forced, outcomes are still counted.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::window::{Counts, Event, Latency, RollingMetrics};

/// When the breaker trips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trip {
    /// Hystrix: enough requests in the window and a high enough share of errors.
    ErrorRate {
        /// Fewest requests in the window before the error share is considered.
        volume_threshold: u64,
        /// Error percentage (0-100) at or above which the breaker opens.
        error_percent: u8,
    },
    /// After this many failures in a row (successes reset the run).
    ConsecutiveFailures(u32),
}

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Length of the rolling window.
    pub window: Duration,
    /// Buckets the window is split into.
    pub buckets: u32,
    /// When to open.
    pub trip: Trip,
    /// How long the breaker stays open before a trial call.
    pub sleep_window: Duration,
}

impl Default for BreakerConfig {
    /// Hystrix's defaults: 10 s in 10 buckets, 20 requests, 50 %, 5 s.
    fn default() -> Self {
        Self {
            window: Duration::from_secs(10),
            buckets: 10,
            trip: Trip::ErrorRate {
                volume_threshold: 20,
                error_percent: 50,
            },
            sleep_window: Duration::from_secs(5),
        }
    }
}

/// Where the breaker is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    /// Calls go through.
    Closed,
    /// Calls are refused until the sleep window passes.
    Open,
    /// One trial call is in flight; others are refused.
    HalfOpen,
    /// Forced open by an operator: every call is refused.
    ForcedOpen,
    /// Forced closed by an operator: every call goes through.
    ForcedClosed,
}

impl State {
    /// snake_case name.
    pub fn name(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::Open => "open",
            State::HalfOpen => "half_open",
            State::ForcedOpen => "forced_open",
            State::ForcedClosed => "forced_closed",
        }
    }

    /// Whether calls are being refused (Hystrix's `isCircuitBreakerOpen`).
    pub fn is_open(self) -> bool {
        matches!(self, State::Open | State::HalfOpen | State::ForcedOpen)
    }
}

impl fmt::Display for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An operator override.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Force {
    /// Refuse every call.
    Open,
    /// Let every call through.
    Closed,
}

/// A state change, given to the listener.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transition {
    /// The breaker's name.
    pub breaker: Arc<str>,
    /// State before.
    pub from: State,
    /// State after.
    pub to: State,
    /// Why (`"error rate 60% over 20 requests"`, `"trial succeeded"`, ...).
    pub reason: String,
    /// When.
    pub at: Instant,
}

/// Why a call was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShortCircuited {
    /// The state that refused it.
    pub state: State,
    /// Time until a trial call may go through (`None` when forced open or a trial is running).
    pub retry_after: Option<Duration>,
}

impl fmt::Display for ShortCircuited {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "circuit breaker is {}", self.state)
    }
}

impl std::error::Error for ShortCircuited {}

/// How a call that was let through ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It worked.
    Success,
    /// It failed.
    Failure,
    /// It timed out.
    Timeout,
    /// Not the dependency's fault (e.g. the client went away, a 4xx): not counted.
    Ignored,
}

type Listener = Box<dyn Fn(&Transition) + Send + Sync>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Closed,
    Open { since: Instant },
    HalfOpen { since: Instant },
}

#[derive(Debug)]
struct Inner {
    phase: Phase,
    force: Option<Force>,
    metrics: RollingMetrics,
    consecutive_failures: u32,
    /// When the window last counted an error: a success cannot trip an error-rate breaker
    /// whose window holds none, so its check is skipped without summing the window.
    last_error: Option<Instant>,
    /// Bumped on every transition; a permit's outcome only moves the state machine if it was
    /// issued in the current generation.
    generation: u64,
    transitions: u64,
}

impl Inner {
    /// Callers take `now` before the lock, so outcomes can arrive slightly out of order: the
    /// latest error time is kept.
    fn note_error(&mut self, now: Instant) {
        self.last_error = Some(self.last_error.map_or(now, |t| t.max(now)));
    }

    fn state(&self) -> State {
        match (self.force, self.phase) {
            (Some(Force::Open), _) => State::ForcedOpen,
            (Some(Force::Closed), _) => State::ForcedClosed,
            (None, Phase::Closed) => State::Closed,
            (None, Phase::Open { .. }) => State::Open,
            (None, Phase::HalfOpen { .. }) => State::HalfOpen,
        }
    }
}

/// A circuit breaker. Share it as `Arc<CircuitBreaker>`; every method takes the current time.
pub struct CircuitBreaker {
    name: Arc<str>,
    config: BreakerConfig,
    inner: Mutex<Inner>,
    listener: Option<Listener>,
}

impl fmt::Debug for CircuitBreaker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("name", &self.name)
            .field("config", &self.config)
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

/// Permission to make one call. Report how it ended with [`Permit::record`]; a permit dropped
/// without a report counts as [`Outcome::Ignored`] (and a half-open trial is handed to the next
/// caller).
#[derive(Debug)]
#[must_use = "report the call's outcome with Permit::record"]
pub struct Permit {
    breaker: Arc<CircuitBreaker>,
    generation: u64,
    trial: bool,
    done: bool,
}

impl Permit {
    /// Whether this is the half-open trial call.
    pub fn is_trial(&self) -> bool {
        self.trial
    }

    /// Reports the call's outcome and latency.
    pub fn record(mut self, outcome: Outcome, latency: Duration, now: Instant) {
        self.done = true;
        self.breaker
            .finish(self.generation, self.trial, outcome, Some(latency), now);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if !self.done {
            self.breaker.finish(
                self.generation,
                self.trial,
                Outcome::Ignored,
                None,
                Instant::now(),
            );
        }
    }
}

/// A view of a breaker for admin pages and event streams.
#[derive(Debug, Clone, PartialEq)]
pub struct BreakerSnapshot {
    /// Current state.
    pub state: State,
    /// Counts in the rolling window.
    pub window: Counts,
    /// Counts since start.
    pub totals: Counts,
    /// Latency over the window.
    pub latency: Latency,
    /// Failures in a row.
    pub consecutive_failures: u32,
    /// Time until the next trial call, when open.
    pub retry_after: Option<Duration>,
    /// State changes since start.
    pub transitions: u64,
}

impl CircuitBreaker {
    /// A closed breaker named `name` (the name is passed to the listener).
    pub fn new(name: impl Into<Arc<str>>, config: BreakerConfig, now: Instant) -> Self {
        Self {
            name: name.into(),
            config,
            inner: Mutex::new(Inner {
                phase: Phase::Closed,
                force: None,
                metrics: RollingMetrics::new(config.window, config.buckets, now),
                consecutive_failures: 0,
                last_error: None,
                generation: 0,
                transitions: 0,
            }),
            listener: None,
        }
    }

    /// Calls `listener` on every state change (outside the breaker's lock).
    pub fn with_listener(mut self, listener: impl Fn(&Transition) + Send + Sync + 'static) -> Self {
        self.listener = Some(Box::new(listener));
        self
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its settings.
    pub fn config(&self) -> &BreakerConfig {
        &self.config
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panic while holding the lock leaves consistent counters; keep serving.
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn notify(&self, t: Option<Transition>) {
        if let (Some(t), Some(l)) = (t, &self.listener) {
            l(&t);
        }
    }

    fn change(&self, inner: &mut Inner, to: Phase, reason: String, now: Instant) -> Transition {
        let from = inner.state();
        inner.phase = to;
        inner.generation += 1;
        inner.transitions += 1;
        Transition {
            breaker: self.name.clone(),
            from,
            to: inner.state(),
            reason,
            at: now,
        }
    }

    /// The current state.
    pub fn state(&self) -> State {
        self.lock().state()
    }

    /// Asks to make a call at `now`.
    pub fn try_acquire(self: &Arc<Self>, now: Instant) -> Result<Permit, ShortCircuited> {
        let mut inner = self.lock();
        let permit = |generation, trial| Permit {
            breaker: self.clone(),
            generation,
            trial,
            done: false,
        };
        match (inner.force, inner.phase) {
            (Some(Force::Closed), _) | (None, Phase::Closed) => Ok(permit(inner.generation, false)),
            (Some(Force::Open), _) => {
                inner.metrics.record(Event::ShortCircuited, now);
                Err(ShortCircuited {
                    state: State::ForcedOpen,
                    retry_after: None,
                })
            }
            (None, Phase::Open { since }) => {
                let trial_at = since + self.config.sleep_window;
                if now >= trial_at {
                    let t = self.change(
                        &mut inner,
                        Phase::HalfOpen { since: now },
                        "sleep window over: one trial call".into(),
                        now,
                    );
                    let p = permit(inner.generation, true);
                    drop(inner);
                    self.notify(Some(t));
                    Ok(p)
                } else {
                    inner.metrics.record(Event::ShortCircuited, now);
                    Err(ShortCircuited {
                        state: State::Open,
                        retry_after: Some(trial_at - now),
                    })
                }
            }
            (None, Phase::HalfOpen { .. }) => {
                inner.metrics.record(Event::ShortCircuited, now);
                Err(ShortCircuited {
                    state: State::HalfOpen,
                    retry_after: None,
                })
            }
        }
    }

    fn finish(
        &self,
        generation: u64,
        trial: bool,
        outcome: Outcome,
        latency: Option<Duration>,
        now: Instant,
    ) {
        let mut inner = self.lock();
        let event = match outcome {
            Outcome::Success => Some(Event::Success),
            Outcome::Failure => Some(Event::Failure),
            Outcome::Timeout => Some(Event::Timeout),
            Outcome::Ignored => None,
        };
        if let Some(event) = event {
            match latency {
                Some(l) => inner.metrics.record_with_latency(event, l, now),
                None => inner.metrics.record(event, now),
            }
            if event.is_error() {
                inner.note_error(now);
            }
        }
        let current = generation == inner.generation;
        let t = match (inner.force, inner.phase) {
            (Some(_), _) => None,
            (None, Phase::HalfOpen { .. }) if trial && current => match outcome {
                Outcome::Success => {
                    inner.metrics.clear_window();
                    inner.consecutive_failures = 0;
                    Some(self.change(
                        &mut inner,
                        Phase::Closed,
                        "trial call succeeded".into(),
                        now,
                    ))
                }
                Outcome::Failure | Outcome::Timeout => Some(self.change(
                    &mut inner,
                    Phase::Open { since: now },
                    format!("trial call failed ({})", event.map_or("", Event::name)),
                    now,
                )),
                // The trial never reported: hand the trial to the next caller.
                Outcome::Ignored => {
                    let since = now.checked_sub(self.config.sleep_window).unwrap_or(now);
                    Some(self.change(
                        &mut inner,
                        Phase::Open { since },
                        "trial call abandoned".into(),
                        now,
                    ))
                }
            },
            (None, Phase::Closed) if event.is_some() => self.health_check(&mut inner, event, now),
            _ => None,
        };
        drop(inner);
        self.notify(t);
    }

    /// Counts a call that never reached the breaker's permit, e.g. a bulkhead rejection
    /// ([`Event::Rejected`] counts against health) or a fallback's outcome.
    pub fn record(&self, event: Event, now: Instant) {
        let mut inner = self.lock();
        inner.metrics.record(event, now);
        if event.is_error() {
            inner.note_error(now);
        }
        let t = if inner.force.is_none() && inner.phase == Phase::Closed && event.is_error() {
            self.health_check(&mut inner, Some(event), now)
        } else {
            None
        };
        drop(inner);
        self.notify(t);
    }

    fn health_check(
        &self,
        inner: &mut Inner,
        event: Option<Event>,
        now: Instant,
    ) -> Option<Transition> {
        match event {
            Some(e) if e.is_error() => inner.consecutive_failures += 1,
            Some(Event::Success) => inner.consecutive_failures = 0,
            _ => {}
        }
        let reason = match self.config.trip {
            Trip::ErrorRate {
                volume_threshold,
                error_percent,
            } => {
                let clean = inner
                    .last_error
                    .is_none_or(|t| now.saturating_duration_since(t) >= self.config.window);
                if error_percent > 0 && clean {
                    return None;
                }
                let c = inner.metrics.counts(now);
                (c.requests() >= volume_threshold && c.error_percent() >= error_percent).then(
                    || {
                        format!(
                            "error rate {}% over {} requests in the window",
                            c.error_percent(),
                            c.requests()
                        )
                    },
                )
            }
            Trip::ConsecutiveFailures(n) => (inner.consecutive_failures >= n)
                .then(|| format!("{} failures in a row", inner.consecutive_failures)),
        }?;
        Some(self.change(inner, Phase::Open { since: now }, reason, now))
    }

    /// Applies or clears an operator override. Clearing it starts afresh: closed, with an
    /// empty window.
    pub fn force(&self, force: Option<Force>, now: Instant) {
        let mut inner = self.lock();
        let from = inner.state();
        inner.force = force;
        if force.is_none() {
            inner.phase = Phase::Closed;
            inner.metrics.clear_window();
            inner.consecutive_failures = 0;
        }
        inner.generation += 1;
        let to = inner.state();
        let t = (from != to).then(|| {
            inner.transitions += 1;
            Transition {
                breaker: self.name.clone(),
                from,
                to,
                reason: match force {
                    Some(Force::Open) => "forced open by an operator".into(),
                    Some(Force::Closed) => "forced closed by an operator".into(),
                    None => "override cleared by an operator".into(),
                },
                at: now,
            }
        });
        drop(inner);
        self.notify(t);
    }

    /// Closes the breaker, clears any override and empties the window.
    pub fn reset(&self, now: Instant) {
        self.force(None, now);
    }

    /// A snapshot at `now`.
    pub fn snapshot(&self, now: Instant) -> BreakerSnapshot {
        let inner = self.lock();
        let retry_after = match (inner.force, inner.phase) {
            (None, Phase::Open { since }) => {
                Some((since + self.config.sleep_window).saturating_duration_since(now))
            }
            _ => None,
        };
        BreakerSnapshot {
            state: inner.state(),
            window: inner.metrics.counts(now),
            totals: inner.metrics.totals(),
            latency: inner.metrics.latency(now),
            consecutive_failures: inner.consecutive_failures,
            retry_after,
            transitions: inner.transitions,
        }
    }
}

#[cfg(test)]
mod tests;
