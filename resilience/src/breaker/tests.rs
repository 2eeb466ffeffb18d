use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::*;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

const LAT: Duration = Duration::from_millis(3);

struct Fixture {
    t0: Instant,
    breaker: Arc<CircuitBreaker>,
    seen: Arc<Mutex<Vec<(State, State)>>>,
}

fn fixture(config: BreakerConfig) -> Fixture {
    let t0 = Instant::now();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let log = seen.clone();
    let breaker = Arc::new(CircuitBreaker::new("c", config, t0).with_listener(
        move |t: &Transition| {
            log.lock().expect("log").push((t.from, t.to));
        },
    ));
    Fixture { t0, breaker, seen }
}

impl Fixture {
    fn at(&self, n: u64) -> Instant {
        self.t0 + ms(n)
    }
    fn call(&self, at: u64, outcome: Outcome) -> Result<(), ShortCircuited> {
        let now = self.at(at);
        self.breaker
            .try_acquire(now)
            .map(|p| p.record(outcome, LAT, now))
    }
    /// One call at each millisecond of `at`, all admitted (the breaker is closed throughout).
    fn calls(&self, at: std::ops::Range<u64>, outcome: Outcome) {
        for i in at {
            self.call(i, outcome).expect("closed");
        }
    }
    fn seen(&self) -> Vec<(State, State)> {
        self.seen.lock().expect("log").clone()
    }
}

#[test]
fn stays_closed_below_the_volume_threshold_even_at_100_percent_errors() {
    let f = fixture(BreakerConfig::default());
    f.calls(0..19, Outcome::Failure);
    assert_eq!(f.breaker.state(), State::Closed);
    assert!(f.seen().is_empty());
}

#[test]
fn opens_at_volume_and_error_percentage() {
    let f = fixture(BreakerConfig::default());
    // 10 successes + 9 failures = 19 requests: below volume.
    f.calls(0..10, Outcome::Success);
    f.calls(10..19, Outcome::Failure);
    assert_eq!(f.breaker.state(), State::Closed);
    // The 20th request, a failure, makes 10/20 = 50 %: open.
    f.call(19, Outcome::Timeout)
        .expect("still closed when asked");
    assert_eq!(f.breaker.state(), State::Open);
    assert_eq!(f.seen(), vec![(State::Closed, State::Open)]);
    let refused = f.call(20, Outcome::Success).expect_err("open refuses");
    assert_eq!(refused.state, State::Open);
    assert_eq!(refused.retry_after, Some(ms(5_000 + 19 - 20)));
    let s = f.breaker.snapshot(f.at(20));
    assert_eq!(s.window.get(Event::ShortCircuited), 1);
    assert_eq!(s.window.requests(), 20);
}

#[test]
fn below_the_error_percentage_it_stays_closed() {
    let f = fixture(BreakerConfig::default());
    f.calls(0..11, Outcome::Success);
    f.calls(11..20, Outcome::Failure);
    // 9/20 = 45 %.
    assert_eq!(f.breaker.state(), State::Closed);
}

#[test]
fn a_success_that_brings_the_window_to_volume_can_open_it() {
    let f = fixture(BreakerConfig::default());
    // 15 failures and 4 successes: 19 requests, below volume.
    f.calls(0..15, Outcome::Failure);
    f.calls(15..19, Outcome::Success);
    assert_eq!(f.breaker.state(), State::Closed);
    // The 20th, a success, makes 15/20 = 75 % at volume: open (as Hystrix's next health
    // snapshot would).
    f.call(19, Outcome::Success).expect("closed when asked");
    assert_eq!(f.breaker.state(), State::Open);
}

#[test]
fn successes_after_the_errors_left_the_window_keep_it_closed() {
    let f = fixture(BreakerConfig::default());
    f.calls(0..19, Outcome::Failure);
    // 10 s later the failures are out of the window; many successes follow.
    f.calls(10_019..10_059, Outcome::Success);
    assert_eq!(f.breaker.state(), State::Closed);
    let s = f.breaker.snapshot(f.at(10_058));
    assert_eq!(s.window.errors(), 0);
    assert_eq!(s.window.requests(), 40);
    // One failure inside the window again is counted against the successes: 1/41, closed.
    f.call(10_060, Outcome::Failure).expect("closed");
    assert_eq!(f.breaker.state(), State::Closed);
}

#[test]
fn an_error_reported_late_does_not_hide_a_newer_one() {
    let f = fixture(BreakerConfig::default());
    // A call made at 0.9 s reports its failure after 18 failures at 1.5 s were counted.
    let late = f.breaker.try_acquire(f.at(900)).expect("closed");
    f.calls(1_500..1_518, Outcome::Failure);
    late.record(Outcome::Failure, LAT, f.at(900));
    assert_eq!(f.breaker.state(), State::Closed);
    // At 10.95 s the 0.9 s bucket has left the window, the 1.5 s one has not: two successes
    // make 18 errors of 20 requests, and the second opens it.
    f.calls(10_950..10_952, Outcome::Success);
    assert_eq!(f.breaker.state(), State::Open);
}

#[test]
fn old_failures_leave_the_window() {
    let f = fixture(BreakerConfig::default());
    f.calls(0..15, Outcome::Failure);
    // 11 s later the first failures are out of the 10 s window.
    f.calls(11_000..11_010, Outcome::Failure);
    assert_eq!(f.breaker.state(), State::Closed);
}

fn tripped() -> Fixture {
    let f = fixture(BreakerConfig::default());
    f.calls(0..20, Outcome::Failure);
    assert_eq!(f.breaker.state(), State::Open);
    f
}

#[test]
fn after_the_sleep_window_exactly_one_trial_goes_through() {
    let f = tripped();
    // Opened at 19 ms; the sleep window ends at 5019 ms.
    f.call(5_018, Outcome::Success).expect_err("still sleeping");
    let trial = f.breaker.try_acquire(f.at(5_019)).expect("trial");
    assert!(trial.is_trial());
    assert_eq!(f.breaker.state(), State::HalfOpen);
    let other = f
        .breaker
        .try_acquire(f.at(5_020))
        .expect_err("one trial only");
    assert_eq!(other.state, State::HalfOpen);
    trial.record(Outcome::Success, LAT, f.at(5_030));
    assert_eq!(f.breaker.state(), State::Closed);
    // Closing resets the window: one failure does not re-open it.
    let s = f.breaker.snapshot(f.at(5_030));
    assert_eq!(s.window.requests(), 0);
    f.call(5_031, Outcome::Failure).expect("closed");
    assert_eq!(f.breaker.state(), State::Closed);
    assert_eq!(
        f.seen(),
        vec![
            (State::Closed, State::Open),
            (State::Open, State::HalfOpen),
            (State::HalfOpen, State::Closed)
        ]
    );
}

#[test]
fn a_failed_trial_reopens_and_restarts_the_sleep_window() {
    let f = tripped();
    let trial = f.breaker.try_acquire(f.at(6_000)).expect("trial");
    trial.record(Outcome::Timeout, LAT, f.at(6_100));
    assert_eq!(f.breaker.state(), State::Open);
    let refused = f.call(6_200, Outcome::Success).expect_err("open again");
    assert_eq!(refused.retry_after, Some(ms(4_900)));
    f.call(11_099, Outcome::Success)
        .expect_err("new window not over");
    f.call(11_100, Outcome::Success).expect("second trial");
    assert_eq!(f.breaker.state(), State::Closed);
}

#[test]
fn an_abandoned_trial_is_handed_to_the_next_caller() {
    let f = tripped();
    let trial = f.breaker.try_acquire(f.at(6_000)).expect("trial");
    drop(trial);
    assert_eq!(f.breaker.state(), State::Open);
    let next = f.breaker.try_acquire(f.at(6_001)).expect("next trial");
    assert!(next.is_trial());
}

#[test]
fn late_outcomes_of_calls_made_before_opening_do_not_move_it() {
    let f = fixture(BreakerConfig::default());
    let slow = f.breaker.try_acquire(f.at(0)).expect("closed");
    f.calls(1..21, Outcome::Failure);
    assert_eq!(f.breaker.state(), State::Open);
    let _trial = f.breaker.try_acquire(f.at(5_020)).expect("trial");
    // The call from before the trip succeeds now: it is counted, but it is not the trial.
    slow.record(Outcome::Success, LAT, f.at(5_021));
    assert_eq!(f.breaker.state(), State::HalfOpen);
}

#[test]
fn ignored_outcomes_do_not_count() {
    let f = fixture(BreakerConfig::default());
    f.calls(0..30, Outcome::Ignored);
    assert_eq!(f.breaker.snapshot(f.at(30)).window.requests(), 0);
}

#[test]
fn consecutive_failures_mode() {
    let f = fixture(BreakerConfig {
        trip: Trip::ConsecutiveFailures(3),
        ..BreakerConfig::default()
    });
    f.call(0, Outcome::Failure).expect("closed");
    f.call(1, Outcome::Failure).expect("closed");
    f.call(2, Outcome::Success).expect("closed");
    f.call(3, Outcome::Failure).expect("closed");
    f.call(4, Outcome::Failure).expect("closed");
    assert_eq!(f.breaker.state(), State::Closed);
    f.call(5, Outcome::Failure).expect("closed when asked");
    assert_eq!(f.breaker.state(), State::Open);
    f.call(5_005, Outcome::Success).expect("trial");
    assert_eq!(f.breaker.state(), State::Closed);
    assert_eq!(f.breaker.snapshot(f.at(5_006)).consecutive_failures, 0);
}

#[test]
fn bulkhead_rejections_count_as_errors() {
    let f = fixture(BreakerConfig::default());
    for i in 0..20 {
        f.breaker.record(Event::Rejected, f.at(i));
    }
    assert_eq!(f.breaker.state(), State::Open);
}

#[test]
fn forced_open_refuses_forced_closed_admits_and_neither_trips() {
    let f = fixture(BreakerConfig::default());
    f.breaker.force(Some(Force::Open), f.at(0));
    let e = f.call(1, Outcome::Success).expect_err("forced open");
    assert_eq!((e.state, e.retry_after), (State::ForcedOpen, None));
    f.breaker.force(Some(Force::Closed), f.at(2));
    for i in 0..40 {
        f.call(10 + i, Outcome::Failure).expect("forced closed");
    }
    assert_eq!(f.breaker.state(), State::ForcedClosed);
    assert_eq!(f.breaker.snapshot(f.at(60)).window.errors(), 40);
    f.breaker.force(None, f.at(61));
    assert_eq!(f.breaker.state(), State::Closed);
    assert_eq!(f.breaker.snapshot(f.at(61)).window.requests(), 0);
    assert_eq!(
        f.seen(),
        vec![
            (State::Closed, State::ForcedOpen),
            (State::ForcedOpen, State::ForcedClosed),
            (State::ForcedClosed, State::Closed)
        ]
    );
}

#[test]
fn reset_closes_an_open_breaker() {
    let f = tripped();
    f.breaker.reset(f.at(100));
    assert_eq!(f.breaker.state(), State::Closed);
    f.call(101, Outcome::Success).expect("closed");
}

#[test]
fn snapshot_reports_latency_and_totals() {
    let f = fixture(BreakerConfig::default());
    for i in 0..5 {
        let p = f.breaker.try_acquire(f.at(i)).expect("closed");
        p.record(Outcome::Success, ms(10), f.at(i));
    }
    let s = f.breaker.snapshot(f.at(5));
    assert_eq!(s.latency.count, 5);
    assert!(
        (9_900..=10_100).contains(&s.latency.p99_us),
        "{:?}",
        s.latency
    );
    assert_eq!(s.totals.get(Event::Success), 5);
    assert_eq!(s.transitions, 0);
}
