//! The exchange's decisions with injected time: status retries, resets after sending,
//! budgets, deadlines, the fallback cluster, local fallbacks and bulkhead refusals.

use super::*;
use crate::config::Config;
use crate::runtime::Runtime;

fn runtime(clusters: &str, route_extra: &str) -> Runtime {
    let doc = format!(
        "[[listeners]]\naddress = \"127.0.0.1:18080\"\n{clusters}\n[[routes]]\nname = \"r\"\ncluster = \"a\"\n{route_extra}\n"
    );
    let config = Config::parse(&doc, std::path::Path::new("t.toml")).expect("config");
    let rt = Runtime::build(&config);
    // Static endpoints are applied by the first discovery update; later ones never come.
    drop(rt.discovery_watches(&config));
    rt
}

const A: &str = "[clusters.a]\nendpoints = [\"127.0.0.1:9\"]\n";

fn facts(idempotent: bool) -> Facts {
    Facts {
        idempotent,
        response_started: false,
        body_replayable: true,
    }
}

fn no_hash(_: &HashKey) -> Vec<u8> {
    Vec::new()
}

/// An exchange on the runtime's only route with one attempt under way.
async fn attempting(rt: &Runtime, now: Instant) -> Exchange {
    let mut x = Exchange::new(rt.routes[0].clone(), Priority::default(), now);
    x.admit(no_hash, now).await.expect("admitted");
    x.begin_attempt(now).expect("an attempt");
    x
}

/// Admits and begins the next attempt, as pingora's loop does after `Next::Retry`.
async fn again(x: &mut Exchange, now: Instant) {
    x.admit(no_hash, now).await.expect("admitted");
    x.begin_attempt(now).expect("an attempt");
}

#[tokio::test]
async fn a_failure_status_is_retried_within_the_policy() {
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 2\non = [503]\n"),
        "",
    );
    let now = Instant::now();
    let mut x = attempting(&rt, now).await;
    let f = Failure::Status(503);
    assert_eq!(x.on_error(f, facts(true), now), Next::Retry);
    again(&mut x, now).await;
    assert_eq!(x.on_error(f, facts(true), now), Next::Retry);
    again(&mut x, now).await;
    assert_eq!(
        x.on_error(f, facts(true), now),
        Next::Fail,
        "retries used up"
    );
    assert_eq!(x.attempts(), 3);
    let mut fresh = attempting(&rt, now).await;
    assert_eq!(
        fresh.on_error(Failure::Status(500), facts(true), now),
        Next::Fail,
        "a status the policy does not name"
    );
}

#[tokio::test]
async fn a_reset_after_sending_is_retried_only_when_safe() {
    let now = Instant::now();
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 1\non = [\"reset\", \"connect_failure\"]\n"),
        "",
    );
    let mut post = attempting(&rt, now).await;
    assert_eq!(
        post.on_error(Failure::Reset, facts(false), now),
        Next::Fail,
        "POST after sending"
    );
    let mut get = attempting(&rt, now).await;
    assert_eq!(get.on_error(Failure::Reset, facts(true), now), Next::Retry);
    let mut unsent = attempting(&rt, now).await;
    assert_eq!(
        unsent.on_error(Failure::Connect, facts(false), now),
        Next::Retry,
        "never sent: any method"
    );
    let allowed = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 1\non = [\"reset\"]\nnon_idempotent = true\n"),
        "",
    );
    let mut post = attempting(&allowed, now).await;
    assert_eq!(
        post.on_error(Failure::Reset, facts(false), now),
        Next::Retry,
        "the policy allows it"
    );
}

#[tokio::test]
async fn an_exhausted_budget_stops_retries() {
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 3\non = [\"reset\"]\nbudget_percent = 0\nbudget_min_per_second = 0\n"),
        "",
    );
    let now = Instant::now();
    let cluster = rt.routes[0].cluster.clone();
    let before = cluster.metrics().budget_exhausted.get();
    let mut x = attempting(&rt, now).await;
    assert_eq!(x.on_error(Failure::Reset, facts(true), now), Next::Fail);
    assert_eq!(cluster.metrics().budget_exhausted.get(), before + 1);
    assert_eq!(x.events().execution, Some(Event::Failure));
}

#[tokio::test]
async fn nothing_is_retried_past_the_deadline_or_once_the_response_started() {
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 3\non = [\"reset\"]\n"),
        "timeout_ms = 100\n",
    );
    let now = Instant::now();
    let mut in_time = attempting(&rt, now).await;
    assert_eq!(
        in_time.on_error(Failure::Reset, facts(true), now + Duration::from_millis(99)),
        Next::Retry
    );
    let mut late = attempting(&rt, now).await;
    assert_eq!(
        late.on_error(
            Failure::Reset,
            facts(true),
            now + Duration::from_millis(100)
        ),
        Next::Fail
    );
    let past = late.admit(no_hash, now + Duration::from_millis(100)).await;
    assert_eq!(
        past,
        Err(Failure::Timeout),
        "the deadline refuses admission"
    );
    let started = Facts {
        response_started: true,
        ..facts(true)
    };
    let mut x = attempting(&rt, now).await;
    assert_eq!(x.on_error(Failure::Reset, started, now), Next::Fail);
    let truncated = Facts {
        body_replayable: false,
        ..facts(true)
    };
    let mut x = attempting(&rt, now).await;
    assert_eq!(x.on_error(Failure::Reset, truncated, now), Next::Fail);
}

#[tokio::test]
async fn an_open_breaker_moves_the_request_to_the_fallback_cluster_once() {
    let rt = runtime(
        &format!("{A}[clusters.b]\nendpoints = [\"127.0.0.1:10\"]\n"),
        "[routes.fallback]\ncluster = \"b\"\n",
    );
    let now = Instant::now();
    let breaker = rt.routes[0].cluster.breaker().expect("a breaker").clone();
    breaker.force(Some(resilience::Force::Open), now);
    let mut x = Exchange::new(rt.routes[0].clone(), Priority::default(), now);
    x.admit(no_hash, now)
        .await
        .expect("the fallback cluster admits");
    assert_eq!(x.target().name(), "b");
    assert_eq!(x.moved(), Some(Failure::CircuitOpen));
    let events = x.events();
    assert_eq!(events.execution, Some(Event::ShortCircuited));
    x.begin_attempt(now).expect("an attempt");
    assert_eq!(
        x.on_error(Failure::Timeout, facts(true), now),
        Next::Fail,
        "the fallback cluster is tried once"
    );
    assert_eq!(x.events().fallback, Some(Event::FallbackFailure));
}

#[tokio::test]
async fn last_good_answers_a_timeout() {
    let rt = runtime(
        A,
        "[routes.fallback]\non = [\"timeout\"]\n[routes.fallback.last_good]\n",
    );
    let now = Instant::now();
    let route = rt.routes[0].clone();
    let lg = route.last_good.as_ref().expect("a last-good store");
    let c = lg
        .capture("h/x".into(), http::StatusCode::OK, &http::HeaderMap::new())
        .expect("capture");
    lg.store(c, now);
    let mut x = attempting(&rt, now).await;
    assert_eq!(
        x.on_error(Failure::Timeout, facts(true), now),
        Next::LocalFallback
    );
    let (kind, failure, resp) = x.local_answer(Some("h/x"), now).expect("an answer");
    assert_eq!((kind, failure), ("last_good", Failure::Timeout));
    assert_eq!(resp.headers()["x-fallback"], "last_good; reason=timeout");
    assert_eq!(x.events().fallback, Some(Event::FallbackSuccess));
    assert_eq!(x.events().execution, Some(Event::Timeout));
    let mut miss = attempting(&rt, now).await;
    miss.on_error(Failure::Timeout, facts(true), now);
    assert!(miss.local_answer(Some("h/other"), now).is_none());
    assert_eq!(miss.local_fallback(), Some(("last_good", false)));
    assert_eq!(miss.events().fallback, Some(Event::FallbackFailure));
}

#[tokio::test]
async fn a_full_bulkhead_rejects_the_attempt() {
    let rt = runtime(
        &format!("{A}[clusters.a.bulkhead]\nmax_concurrent = 1\n"),
        "",
    );
    let now = Instant::now();
    let cluster = rt.routes[0].cluster.clone();
    let held = cluster.bulkhead().try_acquire().expect("the only slot");
    let mut x = Exchange::new(rt.routes[0].clone(), Priority::default(), now);
    assert_eq!(x.admit(no_hash, now).await, Err(Failure::BulkheadFull));
    assert_eq!(x.events().execution, Some(Event::Rejected));
    drop(held);
    let mut x = Exchange::new(rt.routes[0].clone(), Priority::default(), now);
    assert_eq!(x.admit(no_hash, now).await, Ok(()), "a slot is free again");
}

#[tokio::test]
async fn a_response_is_relayed_retried_or_answered_by_the_local_fallback() {
    let now = Instant::now();
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 1\non = [503]\n"),
        "[routes.fallback]\n[routes.fallback.response]\nstatus = 200\nbody = \"degraded\"\n",
    );
    let mut x = attempting(&rt, now).await;
    assert_eq!(
        x.on_response(200, facts(true), || true, now),
        Verdict::Relay
    );
    assert_eq!(x.failure(), None);
    assert!(x.answered());
    assert_eq!(x.events().execution, Some(Event::Success));

    let mut x = attempting(&rt, now).await;
    let first = x.on_response(503, facts(true), || true, now);
    assert_eq!(first, Verdict::AttemptAgain, "503 is in the retry policy");
    assert_eq!(x.take_decided(), Some(Next::Retry));
    again(&mut x, now).await;
    let second = x.on_response(503, facts(true), || true, now);
    assert_eq!(
        second,
        Verdict::LocalFallback,
        "retries used up: the static fallback answers"
    );
    assert_eq!(x.failure(), Some(Failure::Status(503)));
    assert_eq!(x.take_decided(), Some(Next::LocalFallback));

    let mut x = attempting(&rt, now).await;
    let none = x.on_response(500, facts(true), || false, now);
    assert_eq!(
        none,
        Verdict::Relay,
        "no local answer: the upstream's 500 is relayed"
    );
    assert_eq!(x.failure(), Some(Failure::Status(500)));
    assert_eq!(x.events().execution, Some(Event::Failure));

    let mut x = attempting(&rt, now).await;
    let client_error = x.on_response(404, facts(true), || true, now);
    assert_eq!(client_error, Verdict::Relay, "4xx are not failures");
    assert_eq!(x.failure(), None);
}

#[tokio::test]
async fn an_oversized_head_is_the_upstreams_failure_and_never_retried() {
    let now = Instant::now();
    let rt = runtime(
        &format!("{A}[clusters.a.retry]\nretries = 3\non = [\"reset\", 502]\n"),
        "",
    );
    let mut x = attempting(&rt, now).await;
    x.on_refused_head(now);
    assert_eq!(x.take_decided(), Some(Next::Fail));
    assert_eq!(x.failure(), Some(Failure::BadResponse));
    assert_eq!(x.events().execution, Some(Event::Failure));
}

#[test]
fn breaker_failure_statuses_decide_what_counts_as_a_failure() {
    let rt = runtime(
        &format!("{A}[clusters.a.circuit_breaker]\nfailure_statuses = [429, 503]\n"),
        "",
    );
    let cluster = &rt.routes[0].cluster;
    assert!(is_failure_status(cluster, 429));
    assert!(is_failure_status(cluster, 503));
    assert!(!is_failure_status(cluster, 500), "only the listed statuses");
    let plain = runtime(A, "");
    assert!(is_failure_status(&plain.routes[0].cluster, 500));
    assert!(!is_failure_status(&plain.routes[0].cluster, 429));
}

const ADAPTIVE: &str = "[clusters.a.adaptive_concurrency]\ninitial_limit = 2\nmin_limit = 1\nmax_limit = 10\nreserve_percent = 50\nqueue_timeout_ms = 0\nwindow_ms = 1\nmin_samples = 1\n";

#[tokio::test]
async fn the_adaptive_limit_sheds_low_priority_first_and_no_breaker_counts_it() {
    let rt = runtime(&format!("{A}{ADAPTIVE}"), "");
    let now = Instant::now();
    let route = rt.routes[0].clone();
    let critical = Exchange::new(route.clone(), Priority::CRITICAL, now);
    let mut first = critical;
    first.admit(no_hash, now).await.expect("under the limit");
    // One of two slots taken: a score-20 request may use 2 × (1 − 0.5 × 0.8) = 1.2 → 1.
    let mut low = Exchange::new(route.clone(), Priority::NON_CRITICAL, now);
    assert_eq!(low.admit(no_hash, now).await, Err(Failure::Shed));
    assert_eq!(low.events().execution, Some(Event::Rejected));
    let mut high = Exchange::new(route.clone(), Priority::CRITICAL, now);
    high.admit(no_hash, now)
        .await
        .expect("critical uses the whole limit");
    let breaker = route.cluster.breaker().expect("default breaker");
    assert_eq!(
        breaker.snapshot(now).window.requests(),
        0,
        "a shed is no origin failure"
    );
    let snap = route.cluster.limiter().expect("limiter").snapshot();
    assert_eq!((snap.in_flight, snap.shed), (2, [1, 0, 0]));
}

#[tokio::test]
async fn drops_cut_the_limit_and_retries_wait_for_room() {
    let rt = runtime(
        &format!("{A}{ADAPTIVE}[clusters.a.retry]\nretries = 2\non = [503]\n"),
        "",
    );
    let now = Instant::now();
    let route = rt.routes[0].clone();
    let limiter = route.cluster.limiter().expect("limiter").clone();
    let mut x = Exchange::new(route.clone(), Priority::CRITICAL, now);
    x.admit(no_hash, now).await.expect("admitted");
    x.begin_attempt(now).expect("attempt");
    let later = now + Duration::from_millis(5);
    // The origin's 503 is a drop: the limit backs off (2 × 0.8 → 1), and with the one slot
    // taken a retry (ranked 70) has no room.
    assert_eq!(
        x.on_error(Failure::Status(503), facts(true), later),
        Next::Fail
    );
    assert_eq!(limiter.limit(), 1);
    assert_eq!(limiter.snapshot().dropped, 1);
}
