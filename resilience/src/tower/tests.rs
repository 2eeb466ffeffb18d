use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower::{service_fn, Service, ServiceBuilder, ServiceExt};

use super::*;
use crate::{
    BreakerConfig, BudgetConfig, Bulkhead, BulkheadConfig, CircuitBreaker, Event, Failure, Outcome,
    Rejected, RetryBudget, ShortCircuited, State, Trip,
};

fn breaker(trip: Trip) -> Arc<CircuitBreaker> {
    Arc::new(CircuitBreaker::new(
        "dep",
        BreakerConfig {
            trip,
            ..BreakerConfig::default()
        },
        now(),
    ))
}

/// A dependency that fails while `failing` is set, counting calls.
fn flaky(
    failing: Arc<std::sync::atomic::AtomicBool>,
    calls: Arc<AtomicU32>,
) -> impl Service<u32, Response = u32, Error = BoxError, Future: Send> + Clone + Send + 'static {
    service_fn(move |x: u32| {
        let failing = failing.load(Ordering::SeqCst);
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            if failing {
                Err::<u32, BoxError>("dependency failed".into())
            } else {
                Ok(x)
            }
        }
    })
}

#[tokio::test(start_paused = true)]
async fn breaker_layer_opens_short_circuits_and_closes_after_a_good_trial() {
    let b = breaker(Trip::ConsecutiveFailures(3));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let calls = Arc::new(AtomicU32::new(0));
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone(), ErrorsAreFailures))
        .service(flaky(failing.clone(), calls.clone()));
    for _ in 0..3 {
        assert!(svc.ready().await.expect("ready").call(1).await.is_err());
    }
    assert_eq!(b.state(), State::Open);
    let e = svc
        .ready()
        .await
        .expect("ready")
        .call(1)
        .await
        .expect_err("open");
    assert!(e.is::<ShortCircuited>(), "{e}");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        3,
        "short-circuited calls never reach it"
    );
    failing.store(false, Ordering::SeqCst);
    tokio::time::advance(Duration::from_secs(5)).await;
    assert_eq!(
        svc.ready()
            .await
            .expect("ready")
            .call(7)
            .await
            .expect("trial"),
        7
    );
    assert_eq!(b.state(), State::Closed);
}

#[tokio::test(start_paused = true)]
async fn timeouts_inside_the_breaker_count_as_timeouts() {
    let b = breaker(Trip::ConsecutiveFailures(2));
    let mut svc = ServiceBuilder::new()
        .layer(CircuitBreakerLayer::new(b.clone(), ErrorsAreFailures))
        .layer(TimeoutLayer::new(Duration::from_millis(100)))
        .service(service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(60)).await;
            Ok::<u32, BoxError>(0)
        }));
    let start = tokio::time::Instant::now();
    for _ in 0..2 {
        let e = svc
            .ready()
            .await
            .expect("ready")
            .call(1)
            .await
            .expect_err("times out");
        assert!(e.is::<Elapsed>());
    }
    assert_eq!(start.elapsed(), Duration::from_millis(200));
    assert_eq!(b.state(), State::Open);
    let s = b.snapshot(now());
    assert_eq!(s.window.get(Event::Timeout), 2);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_layer_rejects_the_excess_at_once() {
    let bulkhead = Arc::new(Bulkhead::new(BulkheadConfig {
        max_concurrent: 2,
        max_queue: 0,
    }));
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(bulkhead.clone(), Duration::ZERO))
        .service(service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(10)).await;
            Ok::<u32, BoxError>(0)
        }));
    let mut slow = Vec::new();
    for _ in 0..2 {
        let mut s = svc.clone();
        slow.push(tokio::spawn(async move { s.ready().await?.call(0).await }));
    }
    tokio::task::yield_now().await;
    assert_eq!(bulkhead.in_use(), 2);
    let start = tokio::time::Instant::now();
    let e = svc.clone().oneshot(0).await.expect_err("full");
    assert_eq!(e.downcast_ref::<Rejected>(), Some(&Rejected::Full));
    assert_eq!(start.elapsed(), Duration::ZERO, "rejected without waiting");
    for h in slow {
        h.await.expect("join").expect("slow calls finish");
    }
    assert_eq!(bulkhead.in_use(), 0);
}

#[tokio::test(start_paused = true)]
async fn bulkhead_queue_waits_at_most_its_timeout() {
    let bulkhead = Arc::new(Bulkhead::new(BulkheadConfig {
        max_concurrent: 1,
        max_queue: 4,
    }));
    let svc = ServiceBuilder::new()
        .layer(BulkheadLayer::new(
            bulkhead.clone(),
            Duration::from_millis(30),
        ))
        .service(service_fn(|_: u32| async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            Ok::<u32, BoxError>(0)
        }));
    let mut s = svc.clone();
    let holder = tokio::spawn(async move { s.ready().await?.call(0).await });
    tokio::task::yield_now().await;
    let start = tokio::time::Instant::now();
    let e = svc.clone().oneshot(0).await.expect_err("queue timeout");
    assert_eq!(e.downcast_ref::<Rejected>(), Some(&Rejected::QueueTimeout));
    assert_eq!(start.elapsed(), Duration::from_millis(30));
    holder.await.expect("join").expect("holder done");
}

#[tokio::test(start_paused = true)]
async fn retries_until_success_within_the_budget() {
    let calls = Arc::new(AtomicU32::new(0));
    let c = calls.clone();
    let inner = service_fn(move |x: u32| {
        let n = c.fetch_add(1, Ordering::SeqCst);
        async move {
            if n < 2 {
                Err::<u32, BoxError>("transient".into())
            } else {
                Ok(x)
            }
        }
    });
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default(), now()));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            budget.clone(),
            ErrorsAreFailures,
            3,
            Duration::from_millis(10),
        ))
        .service(inner);
    let start = tokio::time::Instant::now();
    assert_eq!(svc.oneshot(5).await.expect("third try works"), 5);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    assert_eq!(
        start.elapsed(),
        Duration::from_millis(10 + 20),
        "backoff doubles"
    );
    assert_eq!(budget.snapshot(now()).retries, 2);
}

#[tokio::test(start_paused = true)]
async fn retries_stop_when_the_budget_is_spent() {
    let calls = Arc::new(AtomicU32::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let budget = Arc::new(RetryBudget::new(
        BudgetConfig {
            ratio: 0.2,
            min_per_second: 0,
            window: Duration::from_secs(10),
        },
        now(),
    ));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            budget.clone(),
            ErrorsAreFailures,
            3,
            Duration::ZERO,
        ))
        .service(flaky(failing, calls.clone()));
    for _ in 0..50 {
        assert!(svc.clone().oneshot(1).await.is_err());
    }
    // 50 requests may add 20 % = 10 retries, no matter how many each request wanted.
    assert_eq!(calls.load(Ordering::SeqCst), 60);
    assert!(budget.snapshot(now()).refused > 0);
}

#[tokio::test(start_paused = true)]
async fn short_circuits_are_not_retried() {
    let b = breaker(Trip::ConsecutiveFailures(1));
    b.force(Some(crate::Force::Open), now());
    let calls = Arc::new(AtomicU32::new(0));
    let budget = Arc::new(RetryBudget::new(BudgetConfig::default(), now()));
    let svc = ServiceBuilder::new()
        .layer(RetryLayer::new(
            budget.clone(),
            ErrorsAreFailures,
            3,
            Duration::ZERO,
        ))
        .layer(CircuitBreakerLayer::new(b, ErrorsAreFailures))
        .service(flaky(Arc::default(), calls.clone()));
    assert!(svc
        .oneshot(1)
        .await
        .expect_err("open")
        .is::<ShortCircuited>());
    assert_eq!(budget.snapshot(now()).retries, 0);
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_failures_and_is_counted() {
    let b = breaker(Trip::ConsecutiveFailures(100));
    let calls = Arc::new(AtomicU32::new(0));
    let failing = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let svc = ServiceBuilder::new()
        .layer(
            FallbackLayer::new(|e: BoxError| async move {
                assert_eq!(e.to_string(), "dependency failed");
                Ok::<u32, BoxError>(42)
            })
            .counted_in(b.clone()),
        )
        .layer(CircuitBreakerLayer::new(b.clone(), ErrorsAreFailures))
        .service(flaky(failing.clone(), calls));
    assert_eq!(svc.clone().oneshot(1).await.expect("fallback"), 42);
    failing.store(false, Ordering::SeqCst);
    assert_eq!(svc.oneshot(1).await.expect("real answer"), 1);
    let s = b.snapshot(now());
    assert_eq!(
        (
            s.window.get(Event::FallbackSuccess),
            s.window.get(Event::Failure),
            s.window.get(Event::Success)
        ),
        (1, 1, 1)
    );
}

#[test]
fn http_and_grpc_classifiers() {
    let resp = |status: u16, grpc: Option<&str>| {
        let mut r = http::Response::new(());
        *r.status_mut() = http::StatusCode::from_u16(status).expect("status");
        if let Some(g) = grpc {
            r.headers_mut().insert(
                "grpc-status",
                http::HeaderValue::from_str(g).expect("value"),
            );
        }
        r
    };
    let h = HttpStatus::server_errors();
    assert_eq!(
        h.classify(Ok(&resp(503, None))),
        Classified::Failed(Failure::Status(503))
    );
    assert_eq!(h.classify(Ok(&resp(404, None))), Classified::Ignored);
    assert_eq!(h.classify(Ok(&resp(200, None))), Classified::Success);
    let only = HttpStatus::statuses([503]);
    assert_eq!(only.classify(Ok(&resp(500, None))), Classified::Success);
    let elapsed: BoxError = Box::new(Elapsed::new());
    let timed_out = Classify::<http::Response<()>>::classify(&h, Err(&elapsed));
    assert_eq!(timed_out, Classified::Failed(Failure::Timeout));
    assert_eq!(timed_out.outcome(), Outcome::Timeout);
    let g = GrpcStatus;
    assert_eq!(
        g.classify(Ok(&resp(200, Some("14")))).outcome(),
        Outcome::Failure
    );
    assert_eq!(
        g.classify(Ok(&resp(200, Some("4")))).outcome(),
        Outcome::Timeout
    );
    assert_eq!(g.classify(Ok(&resp(200, Some("5")))), Classified::Success);
    assert_eq!(g.classify(Ok(&resp(200, None))), Classified::Success);
    let rejected: BoxError = Box::new(Rejected::Full);
    assert_eq!(failure_of(&rejected), Failure::BulkheadFull);
}
