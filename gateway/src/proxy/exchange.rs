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

/// Whether to make another attempt after `failure`: a retry on another endpoint (policy,
/// method, budget, deadline), else the route's fallback cluster. `sent` says whether the
/// request reached the upstream.
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
    if session.response_written().is_some()
        || (sent && session.as_ref().retry_buffer_truncated())
        || ctx.call.deadline.is_some_and(|d| now >= d)
    {
        return false;
    }
    let idempotent = session.req_header().method.is_idempotent();
    let call = &mut ctx.call;
    let cluster = call.target.clone().unwrap_or_else(|| route.cluster.clone());
    let policy = retry_policy(route, &cluster);
    let wanted = match failure {
        Failure::Connect => policy.on.connect_failure,
        Failure::Timeout if !sent => policy.on.connect_failure || policy.on.timeout,
        Failure::Timeout => policy.on.timeout,
        Failure::Reset => policy.on.reset,
        Failure::Status(s) => policy.on.statuses.contains(s),
        Failure::CircuitOpen | Failure::BulkheadFull | Failure::NoEndpoints => false,
    };
    let safe = !sent || idempotent || policy.non_idempotent;
    if wanted && safe && call.retries < policy.retries {
        if cluster.budget().try_withdraw(now) {
            call.retries += 1;
            route.metrics.retried();
            return true;
        }
        cluster.metrics().budget_exhausted.inc();
    }
    (!sent || idempotent) && switch_to_fallback_cluster(route, call, failure)
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
