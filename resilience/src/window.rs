//! Rolling windows: a ring of time buckets, each cleared when time moves past it. Time is
//! passed in, so the same code runs deterministically in tests.

use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

/// Something a bucket holds; cleared when the bucket is reused for a newer slice of time.
pub(crate) trait Slot: Default {
    fn clear(&mut self);
}

/// A ring of `n` buckets covering `window`; bucket `k` holds the events of time slice `k`
/// (counted from `origin`) until slice `k + n` reuses it.
#[derive(Debug)]
pub(crate) struct Ring<B> {
    origin: Instant,
    bucket: Duration,
    slots: Vec<(u64, B)>,
}

impl<B: Slot> Ring<B> {
    pub(crate) fn new(window: Duration, buckets: u32, origin: Instant) -> Self {
        let n = buckets.max(1);
        let bucket = (window / n).max(Duration::from_millis(1));
        Self {
            origin,
            bucket,
            slots: (0..n).map(|_| (u64::MAX, B::default())).collect(),
        }
    }

    fn slice(&self, now: Instant) -> u64 {
        let since = now.saturating_duration_since(self.origin);
        (since.as_nanos() / self.bucket.as_nanos().max(1)) as u64
    }

    /// The bucket for `now`, cleared first if it last held an older slice.
    pub(crate) fn current(&mut self, now: Instant) -> &mut B {
        let slice = self.slice(now);
        let n = self.slots.len() as u64;
        let i = (slice % n) as usize;
        let (held, b) = &mut self.slots[i];
        if *held != slice {
            b.clear();
            *held = slice;
        }
        b
    }

    /// Buckets whose slice is inside the window ending at `now`.
    pub(crate) fn live(&self, now: Instant) -> impl Iterator<Item = &B> + '_ {
        let slice = self.slice(now);
        let n = self.slots.len() as u64;
        self.slots
            .iter()
            .filter(move |(held, _)| *held != u64::MAX && *held <= slice && slice - *held < n)
            .map(|(_, b)| b)
    }

    /// Forgets everything.
    pub(crate) fn clear(&mut self) {
        for (held, b) in &mut self.slots {
            *held = u64::MAX;
            b.clear();
        }
    }
}

/// What happened to one call (or attempt), as counted by the rolling metrics. The names follow
/// Hystrix's event types.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// The call succeeded.
    Success,
    /// The call failed (connect error, broken response, a status classified as failure).
    Failure,
    /// The call timed out.
    Timeout,
    /// The breaker refused the call without trying it.
    ShortCircuited,
    /// The bulkhead refused the call (full, or the queue wait ran out).
    Rejected,
    /// A fallback answered.
    FallbackSuccess,
    /// A fallback was wanted but could not answer.
    FallbackFailure,
}

impl Event {
    /// Every event, in a fixed order.
    pub const ALL: [Event; 7] = [
        Event::Success,
        Event::Failure,
        Event::Timeout,
        Event::ShortCircuited,
        Event::Rejected,
        Event::FallbackSuccess,
        Event::FallbackFailure,
    ];

    fn index(self) -> usize {
        self as usize
    }

    /// snake_case name, as used in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Event::Success => "success",
            Event::Failure => "failure",
            Event::Timeout => "timeout",
            Event::ShortCircuited => "short_circuited",
            Event::Rejected => "rejected",
            Event::FallbackSuccess => "fallback_success",
            Event::FallbackFailure => "fallback_failure",
        }
    }

    /// Whether the event counts against the health of the dependency (Hystrix counts failures,
    /// timeouts and rejections; short circuits are not requests that reached it).
    pub fn is_error(self) -> bool {
        matches!(self, Event::Failure | Event::Timeout | Event::Rejected)
    }
}

/// Event counts over a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts([u64; 7]);

impl Counts {
    /// How many `event`s.
    pub fn get(&self, event: Event) -> u64 {
        self.0[event.index()]
    }

    fn add(&mut self, event: Event, n: u64) {
        self.0[event.index()] += n;
    }

    /// Calls that count for health: successes plus errors.
    pub fn requests(&self) -> u64 {
        self.get(Event::Success) + self.errors()
    }

    /// Failures, timeouts and rejections.
    pub fn errors(&self) -> u64 {
        Event::ALL
            .iter()
            .filter(|e| e.is_error())
            .map(|e| self.get(*e))
            .sum()
    }

    /// Errors as a whole percentage of requests (0 when there were none).
    pub fn error_percent(&self) -> u8 {
        (self.errors() * 100)
            .checked_div(self.requests())
            .map_or(0, |p| p as u8)
    }
}

/// Latency percentiles over a window, in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Latency {
    /// Calls measured.
    pub count: u64,
    /// Mean.
    pub mean_us: f64,
    /// Fastest.
    pub min_us: u64,
    /// 25th percentile.
    pub p25_us: u64,
    /// Median.
    pub p50_us: u64,
    /// 75th percentile.
    pub p75_us: u64,
    /// 90th percentile.
    pub p90_us: u64,
    /// 95th percentile.
    pub p95_us: u64,
    /// 99th percentile.
    pub p99_us: u64,
    /// 99.5th percentile.
    pub p995_us: u64,
    /// 99.9th percentile.
    pub p999_us: u64,
    /// Slowest.
    pub max_us: u64,
}

const MAX_LATENCY_US: u64 = 3_600_000_000;

fn new_histogram() -> Histogram<u64> {
    // invariant: constant, valid bounds (1 µs .. 1 h, 2 significant digits).
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 2).expect("valid histogram bounds")
}

#[derive(Debug)]
struct MetricsBucket {
    counts: Counts,
    latency: Histogram<u64>,
}

impl Default for MetricsBucket {
    fn default() -> Self {
        Self {
            counts: Counts::default(),
            latency: new_histogram(),
        }
    }
}

impl Slot for MetricsBucket {
    /// Out of line: it runs once per bucket length, not per request, and zeroing the
    /// histogram's counts would otherwise be inlined into every recording call. Its own frame
    /// also lets `scripts/bench-instructions` find the clock-driven cost by name.
    #[inline(never)]
    fn clear(&mut self) {
        self.counts = Counts::default();
        self.latency.reset();
    }
}

/// Rolling event counts and latency histograms: Hystrix's `HystrixRollingNumber` and
/// `HystrixRollingPercentile` in one. Not synchronised; owners wrap it in a lock.
#[derive(Debug)]
pub struct RollingMetrics {
    ring: Ring<MetricsBucket>,
    totals: Counts,
}

impl RollingMetrics {
    /// A window of `window` split into `buckets`, starting at `origin`.
    pub fn new(window: Duration, buckets: u32, origin: Instant) -> Self {
        Self {
            ring: Ring::new(window, buckets, origin),
            totals: Counts::default(),
        }
    }

    /// Counts one event at `now`.
    pub fn record(&mut self, event: Event, now: Instant) {
        self.ring.current(now).counts.add(event, 1);
        self.totals.add(event, 1);
    }

    /// Counts one event at `now` and the call's latency.
    pub fn record_with_latency(&mut self, event: Event, latency: Duration, now: Instant) {
        let b = self.ring.current(now);
        b.counts.add(event, 1);
        let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
        b.latency.saturating_record(us);
        self.totals.add(event, 1);
    }

    /// Counts in the window ending at `now`.
    pub fn counts(&self, now: Instant) -> Counts {
        let mut c = Counts::default();
        for b in self.ring.live(now) {
            for e in Event::ALL {
                c.add(e, b.counts.get(e));
            }
        }
        c
    }

    /// Counts since creation (never reset by the window).
    pub fn totals(&self) -> Counts {
        self.totals
    }

    /// Latency percentiles in the window ending at `now`.
    pub fn latency(&self, now: Instant) -> Latency {
        let mut all = new_histogram();
        for b in self.ring.live(now) {
            // Same bounds on both sides, so adding cannot fail.
            let _ = all.add(&b.latency);
        }
        if all.is_empty() {
            return Latency::default();
        }
        Latency {
            count: all.len(),
            mean_us: all.mean(),
            min_us: all.min(),
            p25_us: all.value_at_quantile(0.25),
            p50_us: all.value_at_quantile(0.5),
            p75_us: all.value_at_quantile(0.75),
            p90_us: all.value_at_quantile(0.9),
            p95_us: all.value_at_quantile(0.95),
            p99_us: all.value_at_quantile(0.99),
            p995_us: all.value_at_quantile(0.995),
            p999_us: all.value_at_quantile(0.999),
            max_us: all.max(),
        }
    }

    /// Forgets the window (totals stay).
    pub fn clear_window(&mut self) {
        self.ring.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn events_fall_out_of_the_window_bucket_by_bucket() {
        let t0 = Instant::now();
        let mut m = RollingMetrics::new(ms(10_000), 10, t0);
        m.record(Event::Success, t0);
        m.record(Event::Failure, t0 + ms(500));
        m.record(Event::Failure, t0 + ms(1_500));
        let c = m.counts(t0 + ms(1_600));
        assert_eq!((c.requests(), c.errors(), c.error_percent()), (3, 2, 66));
        // At 10.0 s the first bucket (0..1 s) has left the window; the second has not.
        let c = m.counts(t0 + ms(10_000));
        assert_eq!((c.requests(), c.errors()), (1, 1));
        let c = m.counts(t0 + ms(11_000));
        assert_eq!(c.requests(), 0);
        assert_eq!(m.totals().requests(), 3);
    }

    #[test]
    fn a_reused_bucket_starts_empty() {
        let t0 = Instant::now();
        let mut m = RollingMetrics::new(ms(1_000), 10, t0);
        m.record(Event::Failure, t0);
        m.record(Event::Success, t0 + ms(1_000)); // same slot, ten slices later
        let c = m.counts(t0 + ms(1_000));
        assert_eq!((c.get(Event::Failure), c.get(Event::Success)), (0, 1));
    }

    #[test]
    fn rejections_and_timeouts_are_errors_short_circuits_are_not() {
        let t0 = Instant::now();
        let mut m = RollingMetrics::new(ms(10_000), 10, t0);
        for e in [
            Event::Rejected,
            Event::Timeout,
            Event::ShortCircuited,
            Event::Success,
        ] {
            m.record(e, t0);
        }
        let c = m.counts(t0);
        assert_eq!((c.requests(), c.errors(), c.error_percent()), (3, 2, 66));
    }

    #[test]
    fn latency_percentiles_over_the_window() {
        let t0 = Instant::now();
        let mut m = RollingMetrics::new(ms(10_000), 10, t0);
        for i in 1..=100u64 {
            m.record_with_latency(Event::Success, Duration::from_micros(i * 1000), t0);
        }
        let l = m.latency(t0);
        assert_eq!(l.count, 100);
        assert!((49_000..=51_000).contains(&l.p50_us), "{l:?}");
        assert!((98_000..=100_500).contains(&l.p99_us), "{l:?}");
        assert!(l.max_us >= 99_000);
        assert_eq!(m.latency(t0 + ms(20_000)).count, 0);
    }
}
