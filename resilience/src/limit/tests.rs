//! The gradient limit with injected time, and the limiter's shedding order.

use std::future::pending;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::*;

const MS: Duration = Duration::from_millis(1);

fn gradient(initial: usize, min: usize, max: usize) -> GradientConfig {
    GradientConfig {
        initial,
        min,
        max,
        tolerance: 1.25,
        backoff: 0.8,
        window: 100 * MS,
        min_samples: 10,
        min_rtt_window: Duration::from_secs(10),
    }
}

/// Feeds one 100 ms window: `n` answers of `rtt`, each admitted at `in_flight`.
fn window(g: &mut GradientLimit, t: &mut Instant, n: u32, rtt: Duration, in_flight: usize) {
    for i in 0..n {
        g.on_admit(in_flight);
        *t += 100 * MS / n;
        let _ = i;
        g.on_sample(Sample::Answered(rtt), *t);
    }
}

#[test]
fn grows_while_used_and_latency_holds_every_other_window() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(10, 4, 200), t);
    let mut seen = vec![g.limit()];
    for _ in 0..20 {
        let used = g.limit();
        window(&mut g, &mut t, 20, 20 * MS, used);
        seen.push(g.limit());
    }
    // A window after growth only watches: its round trips were admitted under the old limit.
    for pair in seen.windows(3).step_by(2) {
        assert!(pair[0] < pair[1] && pair[1] == pair[2], "{seen:?}");
    }
    assert!(
        seen[20] > 40,
        "grew by about √limit every other window: {seen:?}"
    );
}

#[test]
fn an_unused_limit_never_creeps_up_and_comes_down_to_twice_the_use() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(50, 4, 200), t);
    let mut last = g.limit();
    for _ in 0..50 {
        window(&mut g, &mut t, 20, 20 * MS, 10);
        assert!(g.limit() <= last);
        last = g.limit();
    }
    assert_eq!(g.limit(), 20, "twice the 10 in flight");
    // Between half and three quarters used: it holds.
    let mut g = GradientLimit::new(gradient(20, 4, 200), t);
    for _ in 0..20 {
        window(&mut g, &mut t, 20, 20 * MS, 12);
    }
    assert_eq!(g.limit(), 20);
}

#[test]
fn backs_off_to_the_origins_capacity_and_probes_past_it_gently() {
    // An origin of capacity 20 with a 20 ms service time: at a limit of L > 20 in use, the
    // mean RTT is L/20 × 20 ms (Little's law) and the minimum stays 20 ms.
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(100, 4, 1000), t);
    window(&mut g, &mut t, 20, 20 * MS, 10);
    let mut seen = Vec::new();
    for _ in 0..60 {
        let l = g.limit();
        let rtt = if l > 20 {
            20 * MS * l as u32 / 20
        } else {
            20 * MS
        };
        window(&mut g, &mut t, 20, rtt, l);
        seen.push(g.limit());
    }
    // From 100 it is cut toward the capacity (Little's law; at most halving a window), then
    // probes one a window past the tolerance (25 over a capacity of 20) and is cut back to it.
    assert!(seen[0] <= 50 && seen[1] <= 25, "{seen:?}");
    let settled = &seen[10..];
    assert!(settled.iter().all(|l| (20..=26).contains(l)), "{seen:?}");
    assert!(
        settled.contains(&20) && settled.iter().any(|l| *l > 20),
        "{seen:?}"
    );
    assert_eq!(g.min_rtt(), Some(20 * MS));
}

/// One 100 ms window against an origin of `capacity` workers and a 20 ms service time, with
/// `in_flight` calls of this caller and `others` of other callers in it: each answer reports
/// the origin's utilization (everything inside it over its workers), and the RTT grows with
/// the wait inside it.
fn reported_window(
    g: &mut GradientLimit,
    t: &mut Instant,
    in_flight: usize,
    others: usize,
    capacity: usize,
) {
    let inside = in_flight + others;
    let rtt = 20 * MS * inside.max(capacity) as u32 / capacity as u32;
    for _ in 0..20 {
        g.on_admit(in_flight);
        g.on_load(inside as f64 / capacity as f64, in_flight);
        *t += 5 * MS;
        g.on_sample(Sample::Answered(rtt), *t);
    }
}

#[test]
fn with_the_origins_load_report_it_settles_at_capacity_without_crossing_it() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(4, 4, 1000), t);
    let mut seen = Vec::new();
    for _ in 0..80 {
        let l = g.limit();
        reported_window(&mut g, &mut t, l, 0, 20);
        seen.push(g.limit());
    }
    // Grows from 4 as fast as ever while the origin has room, and stops exactly where the
    // origin says it is full: never above it, and not pinned below it either.
    assert!(seen.iter().all(|l| *l <= 20), "{seen:?}");
    assert!(seen[10..].iter().all(|l| *l == 20), "{seen:?}");
    assert_eq!(g.origin_load(), Some(1.0));
}

#[test]
fn calls_in_transit_do_not_inflate_the_origins_capacity() {
    // Half load on an origin of 20: 10 inside it, and at times 2 more of this caller's calls
    // on their way (admitted, not arrived). Estimates taken then (12 / 0.5 = 24) would let the
    // limit grow past the origin before any overload showed it.
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(10, 4, 1000), t);
    for _ in 0..40 {
        for i in 0..20 {
            let in_flight = if i % 4 == 3 { 10 } else { 12 };
            g.on_admit(g.limit());
            g.on_contention();
            g.on_load(0.5, in_flight);
            t += 5 * MS;
            g.on_sample(Sample::Answered(20 * MS), t);
        }
        assert!(g.limit() <= 20, "{}", g.limit());
    }
    assert_eq!(g.limit(), 20);
}

#[test]
fn an_origin_reporting_calls_waiting_cuts_to_its_share() {
    // Started at 100 against an origin of 20: the report (5.0) cuts by at most half a window
    // until the limit is the origin's capacity.
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(100, 4, 1000), t);
    for _ in 0..6 {
        let l = g.limit();
        reported_window(&mut g, &mut t, l, 0, 20);
    }
    assert_eq!(g.limit(), 20);
    // Another caller takes 10 of the origin's 20: this one keeps to what is left, and the
    // two together never exceed the origin.
    for _ in 0..20 {
        let l = g.limit();
        reported_window(&mut g, &mut t, l, 10, 20);
    }
    assert!((9..=10).contains(&g.limit()), "{}", g.limit());
}

#[test]
fn garbage_load_reports_are_ignored() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(10, 4, 1000), t);
    for bad in [f64::NAN, -1.0, f64::INFINITY, 1e9] {
        g.on_load(bad, 5);
    }
    assert_eq!(g.origin_load(), None);
    // An idle origin's near-zero report does not stop growth.
    for _ in 0..4 {
        let l = g.limit();
        g.on_load(0.0, l);
        window(&mut g, &mut t, 20, 20 * MS, l);
    }
    assert!(g.limit() > 10, "{}", g.limit());
}

#[test]
fn backs_off_multiplicatively_on_drops() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(100, 4, 1000), t);
    t += 100 * MS;
    assert_eq!(g.on_sample(Sample::Dropped, t), Some(80));
    t += 100 * MS;
    assert_eq!(g.on_sample(Sample::Dropped, t), Some(64));
    // Drops inside one window count once.
    assert_eq!(g.on_sample(Sample::Dropped, t + MS), None);
}

#[test]
fn stays_within_its_bounds() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(10, 5, 12), t);
    for _ in 0..20 {
        t += 100 * MS;
        g.on_sample(Sample::Dropped, t);
    }
    assert_eq!(g.limit(), 5);
    for _ in 0..20 {
        let l = g.limit();
        window(&mut g, &mut t, 20, 20 * MS, l);
    }
    assert_eq!(g.limit(), 12);
}

#[test]
fn a_slower_origin_is_rebaselined_after_the_min_rtt_window() {
    let mut t = Instant::now();
    let mut g = GradientLimit::new(gradient(20, 4, 1000), t);
    window(&mut g, &mut t, 20, 10 * MS, 5);
    for _ in 0..150 {
        window(&mut g, &mut t, 20, 40 * MS, 5);
    }
    assert_eq!(g.min_rtt(), Some(40 * MS), "10 ms has aged out after 15 s");
}

fn limiter(limit: usize, reserve: f64) -> ConcurrencyLimiter {
    ConcurrencyLimiter::new(
        LimiterConfig {
            limit: LimitConfig::Fixed(limit),
            reserve,
            max_wait: 50 * MS,
            max_queue: 10,
        },
        Instant::now(),
    )
}

#[test]
fn lower_priorities_meet_their_threshold_first() {
    let l = limiter(10, 0.2);
    let held: Vec<_> = (0..8)
        .map(|_| l.try_acquire(Priority::NON_CRITICAL).expect("under 8.4"))
        .collect();
    // 20 keeps 16 % back: threshold 8.
    assert_eq!(
        l.try_acquire(Priority::NON_CRITICAL).err(),
        Some(Shed::OverLimit(Class::NonCritical))
    );
    let d = l
        .try_acquire(Priority::DEGRADED)
        .expect("60 keeps 8 %: threshold 9");
    assert_eq!(
        l.try_acquire(Priority::DEGRADED).err(),
        Some(Shed::OverLimit(Class::Degraded))
    );
    let c = l.try_acquire(Priority::CRITICAL).expect("the whole limit");
    assert!(l.try_acquire(Priority::CRITICAL).is_err());
    let s = l.snapshot();
    assert_eq!((s.in_flight, s.shed), (10, [1, 1, 1]));
    drop((held, d, c));
    assert_eq!(l.snapshot().in_flight, 0);
}

#[test]
fn a_freed_slot_goes_to_the_highest_priority_waiter() {
    let l = limiter(1, 0.0);
    let held = l.try_acquire(Priority::CRITICAL).expect("slot");
    let mut degraded = Box::pin(l.acquire(Priority::DEGRADED, pending()));
    let mut critical = Box::pin(l.acquire(Priority::CRITICAL, pending()));
    assert!((&mut degraded).now_or_never().is_none());
    assert!((&mut critical).now_or_never().is_none());
    assert_eq!(l.snapshot().queued, 2);
    // Non-critical never waits.
    let nc = l.acquire(Priority::NON_CRITICAL, pending()).now_or_never();
    assert_eq!(
        nc.expect("no wait").err(),
        Some(Shed::OverLimit(Class::NonCritical))
    );
    drop(held);
    let c = (&mut critical)
        .now_or_never()
        .expect("granted")
        .expect("slot");
    assert!((&mut degraded).now_or_never().is_none());
    drop(c);
    let _d = degraded.now_or_never().expect("granted").expect("slot");
    assert_eq!(l.snapshot().in_flight, 1);
}

#[test]
fn a_new_call_never_passes_a_waiter_of_its_priority() {
    let l = limiter(2, 0.0);
    let a = l.try_acquire(Priority::DEGRADED).expect("slot");
    let _b = l.try_acquire(Priority::DEGRADED).expect("slot");
    let mut waiting = Box::pin(l.acquire(Priority::DEGRADED, pending()));
    assert!((&mut waiting).now_or_never().is_none());
    drop(a);
    assert!(
        l.try_acquire(Priority::DEGRADED).is_err(),
        "the slot went to the waiter"
    );
    waiting.now_or_never().expect("granted").expect("slot");
}

#[tokio::test(start_paused = true)]
async fn a_waiter_gives_up_and_a_cancelled_one_leaves_the_queue() {
    let l = limiter(1, 0.0);
    let held = l.try_acquire(Priority::CRITICAL).expect("slot");
    let start = tokio::time::Instant::now();
    let r = l
        .acquire_within(Priority::CRITICAL, tokio::time::sleep)
        .await;
    assert_eq!(r.err(), Some(Shed::QueueTimeout(Class::Critical)));
    assert_eq!(start.elapsed(), 50 * MS);
    {
        let mut w = Box::pin(l.acquire(Priority::CRITICAL, pending()));
        assert!((&mut w).now_or_never().is_none());
        assert_eq!(l.snapshot().queued, 1);
    }
    assert_eq!(l.snapshot().queued, 0);
    drop(held);
    assert_eq!(l.snapshot().in_flight, 0);
}

#[test]
fn a_granted_but_cancelled_waiter_passes_its_slot_on() {
    let l = limiter(1, 0.0);
    let held = l.try_acquire(Priority::CRITICAL).expect("slot");
    let mut first = Box::pin(l.acquire(Priority::CRITICAL, pending()));
    let mut second = Box::pin(l.acquire(Priority::DEGRADED, pending()));
    assert!((&mut first).now_or_never().is_none());
    assert!((&mut second).now_or_never().is_none());
    drop(held); // granted to `first`, which is dropped before it looks
    drop(first);
    let _s = second.now_or_never().expect("granted").expect("slot");
    assert_eq!(l.snapshot().in_flight, 1);
}

#[test]
fn retries_rank_below_first_attempts() {
    let l = limiter(10, 0.2);
    let _held: Vec<_> = (0..9)
        .map(|_| l.try_acquire(Priority::CRITICAL).expect("slot"))
        .collect();
    assert!(l.admits_extra(Priority::CRITICAL));
    assert!(
        !l.admits_extra(Priority::CRITICAL.retry()),
        "70 keeps 6 %: threshold 9"
    );
}

#[test]
fn an_adaptive_limiter_learns_from_permits() {
    let t0 = Instant::now();
    let l = ConcurrencyLimiter::new(
        LimiterConfig {
            limit: LimitConfig::Gradient(gradient(10, 2, 100)),
            ..LimiterConfig::default()
        },
        t0,
    );
    let p = l.try_acquire(Priority::CRITICAL).expect("slot");
    assert_eq!(p.record(Sample::Dropped, t0 + 200 * MS), Some(8));
    let s = l.snapshot();
    assert_eq!((s.adaptive, s.limit, s.dropped), (true, 8, 1));
}
