//! The adaptive limit: a gradient over the round-trip times of live traffic, with a
//! multiplicative back-off on drops. Policy only: the limiter feeds it samples and `now`.
//!
//! Each sample window (at least `window` long and `min_samples` answers, or any drop):
//!
//! - a drop (timeout, reset, an overload status from the origin) in the window cuts the limit
//!   to `limit × backoff`;
//! - else the window's mean RTT is compared with the minimum RTT seen over the last
//!   `min_rtt_window` (a sliding minimum of live answers: no probe windows that pin
//!   concurrency). Above `tolerance × min`, the origin is queueing: the limit moves to
//!   `limit × min / mean` (at most halving), by Little's law the concurrency the origin serves
//!   without queueing;
//! - at or under the tolerance it grows, but only when the limit was actually used in the
//!   window (in-flight reached 3/4 of it, or requests had to wait or were shed): an idle limit
//!   never creeps up. It grows by `√limit` while the origin shows no queueing (the mean under
//!   half the tolerance: fast from a cold start), else by one per window, and by one per
//!   window for a while after any cut (the knee is near: probe past it gently). A window
//!   after one that grew never grows: its round trips were admitted under the old limit;
//! - a limit clearly unused (in-flight under half of it, nobody waiting or shed) comes down by
//!   5 % a window, never below twice the in-flight seen: what the next surge meets is a limit
//!   recent traffic vouched for, not one learnt long ago;
//! - always within `[min, max]`.
//!
//! When the origin reports its own load ([`GradientLimit::on_load`]: the utilization of its
//! capacity an answer was sent at, 1.0 = every worker busy, as ORCA's
//! `application_utilization` says it), that report comes first: a window in which the origin
//! said it was over 1.0 (calls waiting inside it) cuts the limit to `limit / utilization`
//! (the share of the origin this caller may use; at most halving), and growth never goes
//! past `in-flight / utilization` (the lowest of the window's reports, each taken with the
//! caller's in-flight count when it arrived), the concurrency at which the origin would be
//! full. The limit then settles at the origin's capacity (its share of it, with several
//! callers) without crossing it to find the knee, which round-trip times alone cannot do.

use std::time::{Duration, Instant};

/// Settings of the gradient limit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GradientConfig {
    /// The limit before any sample.
    pub initial: usize,
    /// The floor.
    pub min: usize,
    /// The ceiling.
    pub max: usize,
    /// How far the mean RTT may exceed the minimum before the limit shrinks (≥ 1.0).
    pub tolerance: f64,
    /// The factor applied on a window with drops (0.5-1.0).
    pub backoff: f64,
    /// The shortest sample window.
    pub window: Duration,
    /// Answers a window needs before it is judged (a drop ends it regardless).
    pub min_samples: u32,
    /// How long a minimum RTT stays the baseline (so an origin that got slower for good is
    /// re-measured).
    pub min_rtt_window: Duration,
}

impl Default for GradientConfig {
    fn default() -> Self {
        Self {
            initial: 20,
            min: 4,
            max: 1000,
            tolerance: 1.25,
            backoff: 0.8,
            window: Duration::from_millis(100),
            min_samples: 10,
            min_rtt_window: Duration::from_secs(10),
        }
    }
}

/// What a finished call tells the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sample {
    /// The origin answered after this round trip.
    Answered(Duration),
    /// The origin dropped the call: a timeout, a reset, an overload status.
    Dropped,
}

/// A sliding minimum over two half windows: the smallest of the current and previous halves.
#[derive(Debug, Clone, Copy)]
struct SlidingMin {
    half: Duration,
    started: Instant,
    current: Option<Duration>,
    previous: Option<Duration>,
}

impl SlidingMin {
    fn new(window: Duration, now: Instant) -> Self {
        Self {
            half: (window / 2).max(Duration::from_millis(1)),
            started: now,
            current: None,
            previous: None,
        }
    }

    fn roll(&mut self, now: Instant) {
        let age = now.saturating_duration_since(self.started);
        if age >= self.half * 2 {
            self.previous = None;
            self.current = None;
            self.started = now;
        } else if age >= self.half {
            self.previous = self.current.take();
            self.started += self.half;
        }
    }

    fn push(&mut self, rtt: Duration, now: Instant) {
        self.roll(now);
        self.current = Some(self.current.map_or(rtt, |c| c.min(rtt)));
    }

    fn get(&self) -> Option<Duration> {
        match (self.current, self.previous) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// The gradient limit's state.
#[derive(Debug, Clone)]
pub struct GradientLimit {
    config: GradientConfig,
    limit: f64,
    min_rtt: SlidingMin,
    window_started: Instant,
    sum: Duration,
    answers: u32,
    drops: u32,
    peak_in_flight: usize,
    contended: bool,
    last_mean: Option<Duration>,
    /// Windows left in which growth is cautious (one per window) after a cut.
    cautious: u32,
    /// The last judged window raised the limit: its effect shows only in the next window's
    /// round trips (they were admitted under the old limit), so that one does not grow.
    grew: bool,
    /// The highest utilization the origin reported in this window.
    load: Option<f64>,
    /// The lowest estimate of the concurrency that fills the origin in this window: the
    /// in-flight count a report arrived at over its utilization.
    full_at: Option<f64>,
    /// The last utilization the origin reported.
    last_load: Option<f64>,
}

/// The highest utilization report taken as meaningful (a report above it is ignored as
/// garbage rather than allowed to pin the limit at its floor).
const MAX_UTILIZATION: f64 = 100.0;

/// Under this, a report says nothing about where the origin fills up.
const MIN_UTILIZATION: f64 = 0.01;

/// Windows of cautious growth after a cut.
const CAUTIOUS_WINDOWS: u32 = 20;

impl GradientLimit {
    /// A limit at `config.initial` (kept within `[min, max]`).
    pub fn new(config: GradientConfig, now: Instant) -> Self {
        let min = config.min.max(1);
        let config = GradientConfig {
            min,
            max: config.max.max(min),
            tolerance: config.tolerance.max(1.0),
            backoff: config.backoff.clamp(0.5, 1.0),
            ..config
        };
        Self {
            limit: config.initial.clamp(config.min, config.max) as f64,
            min_rtt: SlidingMin::new(config.min_rtt_window, now),
            config,
            window_started: now,
            sum: Duration::ZERO,
            answers: 0,
            drops: 0,
            peak_in_flight: 0,
            contended: false,
            last_mean: None,
            cautious: 0,
            grew: false,
            load: None,
            full_at: None,
            last_load: None,
        }
    }

    /// Its settings.
    pub fn config(&self) -> &GradientConfig {
        &self.config
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The baseline RTT (the sliding minimum), once there is one.
    pub fn min_rtt(&self) -> Option<Duration> {
        self.min_rtt.get()
    }

    /// The mean RTT of the last judged window.
    pub fn sample_rtt(&self) -> Option<Duration> {
        self.last_mean
    }

    /// The last utilization the origin reported, if it reports one.
    pub fn origin_load(&self) -> Option<f64> {
        self.last_load
    }

    /// Notes the origin's own report of its load, sent with an answer that arrived while
    /// `in_flight` calls (that one included) were out: the fraction of its capacity in use
    /// (above 1.0 when calls wait inside it). Not a number, negative or implausibly large
    /// reports are ignored.
    pub fn on_load(&mut self, utilization: f64, in_flight: usize) {
        if !(0.0..=MAX_UTILIZATION).contains(&utilization) {
            return;
        }
        self.last_load = Some(utilization);
        self.load = Some(self.load.map_or(utilization, |l| l.max(utilization)));
        if utilization >= MIN_UTILIZATION && in_flight > 0 {
            // `in_flight` of this caller's calls fill `utilization` of the origin, exactly so
            // when none are in transit: a call on its way makes the estimate too high, so the
            // window's lowest is the one to believe (bench-overload measured the alternative,
            // the fullest report's, letting the origin see one over its capacity).
            let full = in_flight as f64 / utilization;
            self.full_at = Some(self.full_at.map_or(full, |f| f.min(full)));
        }
    }

    /// Notes the in-flight count a call was admitted at (to tell a used limit from an idle
    /// one).
    pub fn on_admit(&mut self, in_flight: usize) {
        self.peak_in_flight = self.peak_in_flight.max(in_flight);
    }

    /// Notes that a call had to wait or was shed because the limit was reached.
    pub fn on_contention(&mut self) {
        self.contended = true;
    }

    /// Records a finished call at `now`; returns the new limit when the window closed and
    /// the limit changed.
    pub fn on_sample(&mut self, sample: Sample, now: Instant) -> Option<usize> {
        match sample {
            Sample::Answered(rtt) => {
                self.min_rtt.push(rtt, now);
                self.sum += rtt;
                self.answers += 1;
            }
            Sample::Dropped => self.drops += 1,
        }
        let long_enough = now.saturating_duration_since(self.window_started) >= self.config.window;
        if !(long_enough && (self.drops > 0 || self.answers >= self.config.min_samples)) {
            return None;
        }
        let before = self.limit();
        self.judge();
        self.window_started = now;
        self.sum = Duration::ZERO;
        self.answers = 0;
        self.drops = 0;
        self.peak_in_flight = 0;
        self.contended = false;
        self.load = None;
        self.full_at = None;
        (self.limit() != before).then_some(self.limit())
    }

    fn judge(&mut self) {
        let c = self.config;
        let grew = std::mem::take(&mut self.grew);
        let load = self.load.filter(|u| *u >= MIN_UTILIZATION);
        if self.answers > 0 {
            self.last_mean = Some(self.sum / self.answers);
        }
        if self.drops > 0 {
            self.limit *= c.backoff;
            self.cautious = CAUTIOUS_WINDOWS;
        } else if let Some(u) = load.filter(|u| *u > 1.0) {
            // The origin says calls wait inside it: keep to the share it serves at once.
            self.limit *= (1.0 / u).max(0.5);
            self.cautious = CAUTIOUS_WINDOWS;
        } else if let (Some(min), Some(mean), true) =
            (self.min_rtt.get(), self.last_mean, self.answers > 0)
        {
            let ratio = mean.as_secs_f64() / min.as_secs_f64().max(1e-6);
            if ratio > c.tolerance {
                self.limit *= (1.0 / ratio).max(0.5);
                self.cautious = CAUTIOUS_WINDOWS;
            } else if !self.contended && (self.peak_in_flight as f64) < self.limit * 0.5 {
                // Clearly unused: come down toward twice what is used, so that a limit learnt
                // long ago is not what the next surge meets.
                self.limit = (self.limit * 0.95).max(2.0 * self.peak_in_flight as f64);
            } else if !grew && (self.peak_in_flight as f64 >= self.limit * 0.75 || self.contended) {
                // Fast growth only while the origin shows no queueing at all (under half the
                // tolerance) and no cut happened lately; near the knee, one at a time.
                let clear = ratio <= 1.0 + (c.tolerance - 1.0) / 2.0;
                let step = if self.cautious == 0 && clear {
                    self.limit.sqrt().max(1.0)
                } else {
                    1.0
                };
                // With a load report, never past the concurrency that fills the origin (a
                // report's rounding is not allowed to cost a slot).
                let full = self.full_at.map_or(f64::INFINITY, |f| (f + 1e-6).floor());
                let grown = (self.limit + step).min(full).max(self.limit);
                self.grew = grown > self.limit;
                self.limit = grown;
            }
            self.cautious = self.cautious.saturating_sub(1);
        }
        self.limit = self.limit.clamp(c.min as f64, c.max as f64);
    }
}
