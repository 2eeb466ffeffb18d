//! One request's upstream exchange: admission (deadline, breaker, bulkhead, endpoint), the
//! retry decision, the move to a fallback cluster, and the record of a failed attempt.

use super::*;

/// Resilience state of one request's upstream exchange.
#[derive(Debug, Default)]
pub(super) struct Call {
    /// The cluster being called: the route's, or its fallback cluster.
    pub(super) target: Option<Arc<Cluster>>,
    /// Why the request moved to the fallback cluster.
    pub(super) on_fallback_cluster: Option<Failure>,
    pub(super) attempts: u32,
    pub(super) retries: u32,
    /// Endpoints already tried (retries go elsewhere).
    pub(super) tried: Vec<SocketAddr>,
    pub(super) deadline: Option<Instant>,
    /// The breaker's permit for the current attempt, until its outcome is recorded.
    pub(super) permit: Option<Permit>,
    /// The bulkhead slot, held until the request ends.
    pub(super) slot: Option<BulkheadPermit>,
    pub(super) attempt_started: Option<Instant>,
    /// The current attempt's response headers arrived and were accepted.
    pub(super) answered: bool,
    /// The last failure, for retries and the fallback.
    pub(super) failure: Option<Failure>,
    /// The retry decision for the error `upstream_response_filter` raised on a status.
    pub(super) status_retry: Option<bool>,
    /// The first attempt, admitted in `proxy_upstream_filter`, for `upstream_peer` to use.
    pub(super) admitted: Option<Picked>,
    /// pingora's proxy loop was entered: a failure from here on closes the client
    /// connection (pingora does not reuse it), so the answer must say `Connection: close`.
    pub(super) in_proxy_loop: bool,
    /// The response being recorded for `last_good` fallbacks.
    pub(super) capture: Option<Capture>,
    /// The local fallback (`static`, `last_good`) that answered (true) or was wanted and
    /// could not (false).
    pub(super) local_fallback: Option<(&'static str, bool)>,
    /// The last attempt's time from its start to the response headers or its failure.
    pub(super) upstream_time: Option<Duration>,
}

/// Admits one attempt to `cluster`: the deadline, the breaker, the bulkhead (one slot per
/// cluster for the whole request), then an endpoint not tried yet.
pub(super) async fn admit(
    cluster: &Arc<Cluster>,
    call: &mut Call,
    hash: &[u8],
    now: Instant,
) -> std::result::Result<Picked, Failure> {
    if call.deadline.is_some_and(|d| now >= d) {
        return Err(Failure::Timeout);
    }
    let permit = match cluster.breaker() {
        Some(b) => Some(b.try_acquire(now).map_err(|_| Failure::CircuitOpen)?),
        None => None,
    };
    if call.slot.is_none() {
        let bulkhead = cluster.bulkhead();
        let wait = cluster.spec().policy.bulkhead.queue_timeout;
        let slot = if wait.is_zero() {
            bulkhead.try_acquire()
        } else {
            bulkhead.acquire(tokio::time::sleep(wait)).await
        };
        match slot {
            Ok(s) => call.slot = Some(s),
            Err(_) => {
                drop(permit);
                cluster.metrics().bulkhead_rejections.inc();
                if let Some(b) = cluster.breaker() {
                    b.record(Event::Rejected, Instant::now());
                }
                return Err(Failure::BulkheadFull);
            }
        }
    }
    let picked = cluster
        .pick_avoiding(hash, &call.tried, now)
        .ok_or(Failure::NoEndpoints)?;
    call.permit = permit;
    Ok(picked)
}

/// Admits one attempt of the request, moving it to the route's fallback cluster when the
/// target refuses and the fallback covers that.
pub(super) async fn admit_attempt(
    route: &Route,
    session: &Session,
    ctx: &mut RequestCtx,
    now: Instant,
) -> std::result::Result<Picked, Failure> {
    loop {
        let cluster = ctx
            .call
            .target
            .clone()
            .unwrap_or_else(|| route.cluster.clone());
        let hash = match &cluster.spec().load_balancing {
            crate::config::LoadBalancing::ConsistentHash(key) => {
                hash_input(key, session.req_header(), ctx.client_ip)
            }
            _ => Vec::new(),
        };
        match admit(&cluster, &mut ctx.call, &hash, now).await {
            Ok(picked) => return Ok(picked),
            Err(failure) => {
                if !switch_to_fallback_cluster(route, &mut ctx.call, failure) {
                    return Err(failure);
                }
            }
        }
    }
}

/// Moves the request to the route's fallback cluster when its fallback covers `failure` and
/// the request is not there already.
pub(super) fn switch_to_fallback_cluster(route: &Route, call: &mut Call, failure: Failure) -> bool {
    let (Some(spec), Some(cluster)) = (&route.policy.fallback, &route.fallback_cluster) else {
        return false;
    };
    if call.on_fallback_cluster.is_some() || !spec.on.covers(failure) {
        return false;
    }
    tracing::debug!(route = %route.name, to = cluster.name(), reason = %failure.reason(), "sending to the fallback cluster");
    call.on_fallback_cluster = Some(failure);
    call.target = Some(cluster.clone());
    call.slot = None;
    call.tried.clear();
    true
}

/// Records a failed attempt on the breaker and the endpoint.
pub(super) fn attempt_failed(
    ctx: &mut RequestCtx,
    outcome: Outcome,
    failure: Failure,
    now: Instant,
) {
    ctx.trace.end_attempt(Some(&failure.reason()));
    let call = &mut ctx.call;
    call.failure = Some(failure);
    let latency = call
        .attempt_started
        .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
    call.upstream_time = Some(latency);
    if let Some(p) = call.permit.take() {
        p.record(outcome, latency, now);
    }
    if let Some(cluster) = &call.target {
        cluster.metrics().attempt(outcome, latency);
        if let Some(picked) = &ctx.picked {
            cluster.endpoint_failed(picked, now);
        }
    }
}

/// The retry policy in force: the route's override, else the target cluster's.
pub(super) fn retry_policy(route: &Route, cluster: &Cluster) -> RetryPolicy {
    route.policy.retry.unwrap_or(cluster.spec().policy.retry)
}

/// Where an attempt failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stage {
    /// Connecting to the endpoint: the request was not sent.
    Connecting,
    /// After the request was sent, before a usable response head.
    Exchanging,
}

/// The one classification of a failed attempt, by pingora's error type (never its text): what
/// the breaker records and what the retry and fallback policies see.
pub(super) fn classify(etype: &ErrorType, stage: Stage) -> (Outcome, Failure) {
    match (stage, etype) {
        (Stage::Connecting, ErrorType::ConnectTimedout) => (Outcome::Timeout, Failure::Timeout),
        (Stage::Connecting, _) => (Outcome::Failure, Failure::Connect),
        (Stage::Exchanging, ErrorType::ReadTimedout | ErrorType::WriteTimedout) => {
            (Outcome::Timeout, Failure::Timeout)
        }
        (Stage::Exchanging, _) => (Outcome::Failure, Failure::Reset),
    }
}

/// What the phase adapter reads from pingora for a decision after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Facts {
    /// The request reached the upstream (so only idempotent requests are safe to resend).
    pub(super) sent: bool,
    /// The request's method is idempotent.
    pub(super) idempotent: bool,
    /// A response is already under way to the client.
    pub(super) response_started: bool,
    /// The whole request body is still buffered for a resend.
    pub(super) body_replayable: bool,
}

impl Facts {
    /// The facts of `session`'s request; `sent` says whether it reached the upstream.
    pub(super) fn of(session: &Session, sent: bool) -> Self {
        Self {
            sent,
            idempotent: session.req_header().method.is_idempotent(),
            response_started: session.response_written().is_some(),
            body_replayable: !session.as_ref().retry_buffer_truncated(),
        }
    }
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Another endpoint of the same cluster (a retry the budget paid for).
    Retry,
    /// The route's fallback cluster, as one more attempt.
    FallbackCluster,
    /// No more attempts: the local fallback or an error answers.
    Fail,
}

impl Next {
    /// Whether pingora makes another attempt.
    pub(super) fn attempts_again(self) -> bool {
        self != Self::Fail
    }
}

/// The decision after `failure`: a retry on another endpoint when the policy wants it, the
/// request is safe to resend, the retries and the cluster's budget allow it and the deadline
/// has not passed; else the route's fallback cluster when its fallback covers the failure;
/// else fail. Time is `now`; nothing here reads pingora.
pub(super) fn next_after(
    route: &Route,
    call: &mut Call,
    failure: Failure,
    facts: Facts,
    now: Instant,
) -> Next {
    if facts.response_started
        || (facts.sent && !facts.body_replayable)
        || call.deadline.is_some_and(|d| now >= d)
    {
        return Next::Fail;
    }
    let cluster = call.target.clone().unwrap_or_else(|| route.cluster.clone());
    let policy = retry_policy(route, &cluster);
    let wanted = match failure {
        Failure::Connect => policy.on.connect_failure,
        Failure::Timeout if !facts.sent => policy.on.connect_failure || policy.on.timeout,
        Failure::Timeout => policy.on.timeout,
        Failure::Reset => policy.on.reset,
        Failure::Status(s) => policy.on.statuses.contains(s),
        Failure::CircuitOpen | Failure::BulkheadFull | Failure::NoEndpoints => false,
    };
    let safe = !facts.sent || facts.idempotent || policy.non_idempotent;
    if wanted && safe && call.retries < policy.retries {
        if cluster.budget().try_withdraw(now) {
            call.retries += 1;
            route.metrics.retried();
            return Next::Retry;
        }
        cluster.metrics().budget_exhausted.inc();
    }
    if (!facts.sent || facts.idempotent) && switch_to_fallback_cluster(route, call, failure) {
        Next::FallbackCluster
    } else {
        Next::Fail
    }
}

/// Whether `status` counts as the upstream's failure: the cluster breaker's
/// `failure_statuses`, or any 5xx without a breaker.
pub(super) fn is_failure_status(cluster: &Cluster, status: u16) -> bool {
    cluster
        .spec()
        .policy
        .breaker
        .as_ref()
        .map_or(status >= 500, |b| b.failure_statuses.contains(status))
}

/// What to do with an upstream's response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Verdict {
    /// Relay it to the client.
    Relay,
    /// Drop it and make another attempt: a retry, or the route's fallback cluster.
    AttemptAgain,
    /// Drop it and answer with the route's local fallback (last good, static).
    LocalFallback,
}

/// Records the current attempt's answer, `status`, on the breaker, the endpoint and the
/// cluster's metrics, and decides what to do with it: a failure status (or one the retry
/// policy names) is attempted again when [`next_after`] allows, else answered by the local
/// fallback when it covers the failure and `local_answer()` says it has an answer, else
/// relayed. A good answer on the fallback cluster counts as the fallback's success.
pub(super) fn on_response(
    route: &Route,
    call: &mut Call,
    picked: Option<&Picked>,
    status: u16,
    facts: Facts,
    local_answer: impl FnOnce() -> bool,
    now: Instant,
) -> Verdict {
    let cluster = call.target.clone().unwrap_or_else(|| route.cluster.clone());
    let failed = is_failure_status(&cluster, status);
    let latency = call
        .attempt_started
        .map_or(Duration::ZERO, |s| now.saturating_duration_since(s));
    call.upstream_time = Some(latency);
    let outcome = if failed {
        Outcome::Failure
    } else {
        Outcome::Success
    };
    cluster.metrics().attempt(outcome, latency);
    if let Some(p) = call.permit.take() {
        p.record(outcome, latency, now);
    }
    if let Some(p) = picked {
        if status >= 500 {
            cluster.endpoint_failed(p, now);
        } else {
            cluster.endpoint_succeeded(p);
        }
    }
    call.answered = true;
    let retry_status = retry_policy(route, &cluster).on.statuses.contains(status);
    if failed || retry_status {
        let failure = Failure::Status(status);
        call.failure = Some(failure);
        if next_after(route, call, failure, facts, now).attempts_again() {
            return Verdict::AttemptAgain;
        }
        let covered = route
            .policy
            .fallback
            .as_ref()
            .is_some_and(|spec| spec.on.covers(failure));
        if covered && local_answer() {
            return Verdict::LocalFallback;
        }
        return Verdict::Relay;
    }
    call.failure = None;
    if call.on_fallback_cluster.is_some() {
        if let Some(b) = route.cluster.breaker() {
            b.record(Event::FallbackSuccess, now);
        }
    }
    Verdict::Relay
}

/// [`next_after`] for the request of `session` in `ctx`: whether pingora attempts again.
pub(super) fn retry_decision(
    session: &Session,
    ctx: &mut RequestCtx,
    failure: Failure,
    sent: bool,
    now: Instant,
) -> bool {
    let runtime = ctx.runtime.clone();
    let Some(route) = ctx.route.and_then(|i| runtime.routes.get(i)) else {
        return false;
    };
    next_after(route, &mut ctx.call, failure, Facts::of(session, sent), now).attempts_again()
}

/// The cache key of the request for `last_good` fallbacks (GET only).
pub(super) fn last_good_key(session: &Session) -> Option<Box<str>> {
    let req = session.req_header();
    (req.method == http::Method::GET).then(|| {
        LastGood::key(
            request_host(&req.uri, &req.headers),
            req.uri.path_and_query().map_or("/", |p| p.as_str()),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    fn runtime(clusters: &str, route_extra: &str) -> Runtime {
        let doc = format!(
            "[[listeners]]\naddress = \"127.0.0.1:18080\"\n{clusters}\n[[routes]]\nname = \"r\"\ncluster = \"a\"\n{route_extra}\n"
        );
        let config = Config::parse(&doc, std::path::Path::new("t.toml")).expect("config");
        Runtime::build(&config)
    }

    const A: &str = "[clusters.a]\nendpoints = [\"127.0.0.1:9\"]\n";

    fn sent(idempotent: bool) -> Facts {
        Facts {
            sent: true,
            idempotent,
            response_started: false,
            body_replayable: true,
        }
    }

    fn call_for(route: &Route) -> Call {
        Call {
            target: Some(route.cluster.clone()),
            ..Call::default()
        }
    }

    #[test]
    fn a_failure_status_is_retried_within_the_policy() {
        let rt = runtime(
            &format!("{A}[clusters.a.retry]\nretries = 2\non = [503]\n"),
            "",
        );
        let route = &rt.routes[0];
        let mut call = call_for(route);
        let now = Instant::now();
        let f = Failure::Status(503);
        assert_eq!(
            next_after(route, &mut call, f, sent(true), now),
            Next::Retry
        );
        assert_eq!(
            next_after(route, &mut call, f, sent(true), now),
            Next::Retry
        );
        assert_eq!(
            next_after(route, &mut call, f, sent(true), now),
            Next::Fail,
            "retries used up"
        );
        let mut fresh = call_for(route);
        assert_eq!(
            next_after(route, &mut fresh, Failure::Status(500), sent(true), now),
            Next::Fail,
            "a status the policy does not name"
        );
    }

    #[test]
    fn a_reset_after_sending_is_retried_only_when_safe() {
        let now = Instant::now();
        let rt = runtime(
            &format!("{A}[clusters.a.retry]\nretries = 1\non = [\"reset\", \"connect_failure\"]\n"),
            "",
        );
        let route = &rt.routes[0];
        let mut post = call_for(route);
        assert_eq!(
            next_after(route, &mut post, Failure::Reset, sent(false), now),
            Next::Fail,
            "POST after sending"
        );
        let mut get = call_for(route);
        assert_eq!(
            next_after(route, &mut get, Failure::Reset, sent(true), now),
            Next::Retry
        );
        let before = Facts {
            sent: false,
            ..sent(false)
        };
        let mut unsent = call_for(route);
        assert_eq!(
            next_after(route, &mut unsent, Failure::Connect, before, now),
            Next::Retry,
            "never sent: any method"
        );
        let allowed = runtime(
            &format!(
                "{A}[clusters.a.retry]\nretries = 1\non = [\"reset\"]\nnon_idempotent = true\n"
            ),
            "",
        );
        let route = &allowed.routes[0];
        let mut post = call_for(route);
        assert_eq!(
            next_after(route, &mut post, Failure::Reset, sent(false), now),
            Next::Retry,
            "the policy allows it"
        );
    }

    #[test]
    fn an_exhausted_budget_stops_retries() {
        let rt = runtime(
            &format!("{A}[clusters.a.retry]\nretries = 3\non = [\"reset\"]\nbudget_percent = 0\nbudget_min_per_second = 0\n"),
            "",
        );
        let route = &rt.routes[0];
        let mut call = call_for(route);
        let before = route.cluster.metrics().budget_exhausted.get();
        assert_eq!(
            next_after(route, &mut call, Failure::Reset, sent(true), Instant::now()),
            Next::Fail
        );
        assert_eq!(route.cluster.metrics().budget_exhausted.get(), before + 1);
        assert_eq!(call.retries, 0);
    }

    #[test]
    fn nothing_is_retried_past_the_deadline_or_once_the_response_started() {
        let rt = runtime(
            &format!("{A}[clusters.a.retry]\nretries = 3\non = [\"reset\"]\n"),
            "",
        );
        let route = &rt.routes[0];
        let now = Instant::now();
        let mut late = Call {
            deadline: Some(now),
            ..call_for(route)
        };
        assert_eq!(
            next_after(route, &mut late, Failure::Reset, sent(true), now),
            Next::Fail
        );
        let later = now + Duration::from_millis(10);
        let mut in_time = Call {
            deadline: Some(later),
            ..call_for(route)
        };
        assert_eq!(
            next_after(route, &mut in_time, Failure::Reset, sent(true), now),
            Next::Retry
        );
        let started = Facts {
            response_started: true,
            ..sent(true)
        };
        let mut call = call_for(route);
        assert_eq!(
            next_after(route, &mut call, Failure::Reset, started, now),
            Next::Fail
        );
        let truncated = Facts {
            body_replayable: false,
            ..sent(true)
        };
        assert_eq!(
            next_after(route, &mut call, Failure::Reset, truncated, now),
            Next::Fail
        );
    }

    #[test]
    fn an_open_breaker_moves_the_request_to_the_fallback_cluster_once() {
        let rt = runtime(
            &format!("{A}[clusters.b]\nendpoints = [\"127.0.0.1:10\"]\n"),
            "[routes.fallback]\ncluster = \"b\"\n",
        );
        let route = &rt.routes[0];
        let mut call = call_for(route);
        let now = Instant::now();
        assert_eq!(
            next_after(route, &mut call, Failure::CircuitOpen, sent(true), now),
            Next::FallbackCluster
        );
        assert_eq!(call.target.as_ref().map(|c| c.name()), Some("b"));
        assert_eq!(call.on_fallback_cluster, Some(Failure::CircuitOpen));
        assert_eq!(
            next_after(route, &mut call, Failure::CircuitOpen, sent(true), now),
            Next::Fail,
            "the fallback cluster is tried once"
        );
    }

    #[tokio::test]
    async fn a_full_bulkhead_rejects_the_attempt() {
        let rt = runtime(
            &format!("{A}[clusters.a.bulkhead]\nmax_concurrent = 1\n"),
            "",
        );
        let route = &rt.routes[0];
        let held = route
            .cluster
            .bulkhead()
            .try_acquire()
            .expect("the only slot");
        let mut call = call_for(route);
        let got = admit(&route.cluster, &mut call, b"", Instant::now()).await;
        assert!(matches!(got, Err(Failure::BulkheadFull)), "{got:?}");
        drop(held);
        let mut call = call_for(route);
        let got = admit(&route.cluster, &mut call, b"", Instant::now()).await;
        assert!(
            !matches!(got, Err(Failure::BulkheadFull)),
            "a slot is free again: {got:?}"
        );
    }

    #[test]
    fn a_response_is_relayed_retried_or_answered_by_the_local_fallback() {
        let now = Instant::now();
        let rt = runtime(
            &format!("{A}[clusters.a.retry]\nretries = 1\non = [503]\n"),
            "[routes.fallback]\n[routes.fallback.response]\nstatus = 200\nbody = \"degraded\"\n",
        );
        let route = &rt.routes[0];
        let mut call = call_for(route);
        let ok = on_response(route, &mut call, None, 200, sent(true), || true, now);
        assert_eq!(ok, Verdict::Relay);
        assert_eq!(call.failure, None);
        assert!(call.answered);

        let mut call = call_for(route);
        let first = on_response(route, &mut call, None, 503, sent(true), || true, now);
        assert_eq!(first, Verdict::AttemptAgain, "503 is in the retry policy");
        let second = on_response(route, &mut call, None, 503, sent(true), || true, now);
        assert_eq!(
            second,
            Verdict::LocalFallback,
            "retries used up: the static fallback answers"
        );
        assert_eq!(call.failure, Some(Failure::Status(503)));

        let mut call = call_for(route);
        let none = on_response(route, &mut call, None, 500, sent(true), || false, now);
        assert_eq!(
            none,
            Verdict::Relay,
            "no local answer: the upstream's 500 is relayed"
        );
        assert_eq!(call.failure, Some(Failure::Status(500)));

        let mut call = call_for(route);
        let client_error = on_response(route, &mut call, None, 404, sent(true), || true, now);
        assert_eq!(client_error, Verdict::Relay, "4xx are not failures");
        assert_eq!(call.failure, None);
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

    #[test]
    fn failed_attempts_are_classified_by_error_type_and_stage() {
        use ErrorType::*;
        assert_eq!(
            classify(&ConnectTimedout, Stage::Connecting),
            (Outcome::Timeout, Failure::Timeout)
        );
        assert_eq!(
            classify(&ConnectRefused, Stage::Connecting),
            (Outcome::Failure, Failure::Connect)
        );
        assert_eq!(
            classify(&TLSHandshakeFailure, Stage::Connecting),
            (Outcome::Failure, Failure::Connect)
        );
        assert_eq!(
            classify(&ReadTimedout, Stage::Exchanging),
            (Outcome::Timeout, Failure::Timeout)
        );
        assert_eq!(
            classify(&WriteTimedout, Stage::Exchanging),
            (Outcome::Timeout, Failure::Timeout)
        );
        assert_eq!(
            classify(&ConnectionClosed, Stage::Exchanging),
            (Outcome::Failure, Failure::Reset)
        );
        assert_eq!(
            classify(&InvalidHTTPHeader, Stage::Exchanging),
            (Outcome::Failure, Failure::Reset)
        );
    }
}
