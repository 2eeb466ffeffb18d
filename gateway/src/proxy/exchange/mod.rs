//! One request's upstream exchange, with no pingora types: admission (deadline, breaker,
//! bulkhead, endpoint), each attempt's outcome on the breaker, the endpoint and the metrics,
//! and the decision after it (retry, fallback cluster, local fallback, fail). The Hystrix
//! events of the request are recorded as they happen.
//!
//! The phase adapters in [`super`] read plain [`Facts`] from pingora and hand them in; every
//! decision here takes `now`, so unit tests drive time by hand.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use resilience::{
    BulkheadPermit, Event, Failure, LimitPermit, Outcome, Permit, Priority, RetryDecision,
    RetryPolicy, Sample,
};
use smallvec::SmallVec;

use crate::cluster::{Cluster, Picked};
use crate::config::{HashKey, LoadBalancing};
use crate::fallback::{self, LastGood};
use crate::metrics::RequestEvents;
use crate::runtime::Route;

#[cfg(test)]
mod tests;

/// What the phase adapter reads from pingora for a decision after an attempt. Whether the
/// request reached the upstream follows from the failure ([`Failure::sent`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Facts {
    /// The request's method is idempotent.
    pub(super) idempotent: bool,
    /// A response is already under way to the client.
    pub(super) response_started: bool,
    /// The whole request body is still buffered for a resend.
    pub(super) body_replayable: bool,
}

/// What follows a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Next {
    /// Another endpoint of the same cluster (a retry the budget paid for).
    Retry,
    /// The route's fallback cluster, as one more attempt.
    FallbackCluster,
    /// No more attempts; the route's local fallback (last good, static) covers the failure.
    LocalFallback,
    /// No more attempts, and nothing local answers: an error does.
    Fail,
}

impl Next {
    /// Whether pingora makes another attempt.
    pub(super) fn attempts_again(self) -> bool {
        matches!(self, Self::Retry | Self::FallbackCluster)
    }
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

/// One attempt: the endpoint, when it started, the breaker's permit until its outcome is
/// recorded, and whether its response head was accepted.
#[derive(Debug)]
struct Attempt {
    picked: Picked,
    started: Instant,
    permit: Option<Permit>,
    answered: bool,
}

/// What the request is recorded as: its Hystrix events, the local fallback used, and the
/// last attempt's time to its response head or failure.
#[derive(Debug, Default, Clone, Copy)]
struct Record {
    events: RequestEvents,
    /// The local fallback (`static`, `last_good`) that answered (true) or was wanted and
    /// could not (false).
    local_fallback: Option<(&'static str, bool)>,
    upstream_time: Option<Duration>,
}

/// The request's place at its cluster: a bulkhead slot, or a slot of the adaptive
/// concurrency limit (which learns from each attempt).
#[derive(Debug)]
enum Slot {
    Bulkhead(#[allow(dead_code)] BulkheadPermit),
    Limit(LimitPermit),
}

/// The upstream exchange of one request.
#[derive(Debug)]
pub(super) struct Exchange {
    route: Arc<Route>,
    /// The cluster being called: the route's, or its fallback cluster.
    target: Arc<Cluster>,
    /// Why the request moved to the fallback cluster.
    moved: Option<Failure>,
    deadline: Option<Instant>,
    /// The request's priority at the cluster's concurrency limit.
    priority: Priority,
    /// The bulkhead or limit slot of the target, held until the request ends.
    slot: Option<Slot>,
    /// Endpoints of the target already tried (retries go elsewhere); held inline for the
    /// first two, so a request that is not retried allocates nothing for it.
    tried: SmallVec<[SocketAddr; 2]>,
    attempts: u32,
    retries: u32,
    /// An endpoint admitted ahead of the attempt that will use it.
    admitted: Option<(Picked, Option<Permit>)>,
    attempt: Option<Attempt>,
    /// The last failure; `None` once an answer was accepted.
    failure: Option<Failure>,
    /// The decision already taken on a response head, for the error that drops it.
    decided: Option<Next>,
    record: Record,
}

impl Exchange {
    /// Starts the exchange of a request of `priority` on `route` at `now`: the request counts
    /// toward the cluster's retry budget and its deadline starts.
    pub(super) fn new(route: Arc<Route>, priority: Priority, now: Instant) -> Self {
        let target = route.cluster.clone();
        target.budget().deposit(now);
        let deadline = route
            .policy
            .timeout
            .or(target.spec().policy.timeout)
            .map(|t| now + t);
        Self {
            route,
            target,
            moved: None,
            deadline,
            priority,
            slot: None,
            tried: SmallVec::new(),
            attempts: 0,
            retries: 0,
            admitted: None,
            attempt: None,
            failure: None,
            decided: None,
            record: Record::default(),
        }
    }

    /// The route.
    pub(super) fn route(&self) -> &Arc<Route> {
        &self.route
    }

    /// The cluster being called.
    pub(super) fn target(&self) -> &Arc<Cluster> {
        &self.target
    }

    /// Why the request is on the route's fallback cluster, if it is.
    pub(super) fn moved(&self) -> Option<Failure> {
        self.moved
    }

    /// The last failure, if the exchange has not (yet) succeeded.
    pub(super) fn failure(&self) -> Option<Failure> {
        self.failure
    }

    /// Attempts made.
    pub(super) fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The endpoint of the current (or last) attempt.
    pub(super) fn endpoint(&self) -> Option<&Picked> {
        self.attempt.as_ref().map(|a| &a.picked)
    }

    /// Whether the current attempt's response head was accepted (relaying is under way).
    pub(super) fn answered(&self) -> bool {
        self.attempt.as_ref().is_some_and(|a| a.answered)
    }

    /// The last attempt's time to its response head or its failure.
    pub(super) fn upstream_time(&self) -> Option<Duration> {
        self.record.upstream_time
    }

    /// The local fallback that answered (true) or was wanted and could not (false).
    pub(super) fn local_fallback(&self) -> Option<(&'static str, bool)> {
        self.record.local_fallback
    }

    /// The request's Hystrix events so far.
    pub(super) fn events(&self) -> RequestEvents {
        self.record.events
    }

    /// Admits an attempt ahead of it (pingora's proxy loop asks for the endpoint later):
    /// the deadline, the breaker, the bulkhead (one slot per cluster for the whole
    /// request), then an endpoint not tried yet. A refusal moves the request to the route's
    /// fallback cluster when its fallback covers that; otherwise it is the exchange's
    /// failure. `hash` gives the request's consistent-hash input for a key.
    pub(super) async fn admit(
        &mut self,
        hash: impl Fn(&HashKey) -> Vec<u8>,
        now: Instant,
    ) -> Result<(), Failure> {
        loop {
            let key = match &self.target.spec().load_balancing {
                LoadBalancing::ConsistentHash(key) => hash(key),
                _ => Vec::new(),
            };
            match self.admit_to(&key, now).await {
                Ok(admitted) => {
                    self.admitted = Some(admitted);
                    return Ok(());
                }
                Err(failure) if self.move_to_fallback_cluster(failure) => {}
                Err(failure) => {
                    self.failed(failure);
                    return Err(failure);
                }
            }
        }
    }

    async fn admit_to(
        &mut self,
        hash: &[u8],
        now: Instant,
    ) -> Result<(Picked, Option<Permit>), Failure> {
        // The target, borrowed apart from the fields set below (no reference count taken).
        let cluster = &self.target;
        if self.deadline.is_some_and(|d| now >= d) {
            return Err(Failure::Timeout);
        }
        let permit = match cluster.breaker() {
            Some(b) => Some(b.try_acquire(now).map_err(|_| Failure::CircuitOpen)?),
            None => None,
        };
        if self.slot.is_none() {
            if let Some(limiter) = cluster.limiter() {
                match limiter
                    .acquire_within(self.priority, tokio::time::sleep)
                    .await
                {
                    Ok(slot) => self.slot = Some(Slot::Limit(slot)),
                    Err(shed) => {
                        // The gateway's own refusal: no breaker records it.
                        drop(permit);
                        cluster.metrics().shed[shed.class().index()].inc();
                        return Err(Failure::Shed);
                    }
                }
            }
        }
        if self.slot.is_none() {
            let wait = cluster.spec().policy.bulkhead.queue_timeout;
            match cluster
                .bulkhead()
                .acquire_within(wait, tokio::time::sleep)
                .await
            {
                Ok(slot) => self.slot = Some(Slot::Bulkhead(slot)),
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
            .pick_avoiding(hash, &self.tried, now)
            .ok_or(Failure::NoEndpoints)?;
        Ok((picked, permit))
    }

    /// Starts the attempt admitted last, at `now`: returns its endpoint and its read timeout
    /// (the per-try timeout, cut to what is left of the deadline). `None` when nothing was
    /// admitted.
    pub(super) fn begin_attempt(&mut self, now: Instant) -> Option<(&Picked, Duration)> {
        let (picked, permit) = self.admitted.take()?;
        let per_try = self
            .route
            .policy
            .per_try_timeout
            .unwrap_or(self.target.spec().policy.per_try_timeout);
        let read = match self.deadline {
            Some(d) => per_try.min(d.saturating_duration_since(now)),
            None => per_try,
        };
        self.attempts += 1;
        self.tried.push(picked.endpoint().address);
        let attempt = self.attempt.insert(Attempt {
            picked,
            started: now,
            permit,
            answered: false,
        });
        Some((&attempt.picked, read.max(Duration::from_millis(1))))
    }

    /// Whether an attempt was admitted and not begun yet.
    pub(super) fn has_admitted(&self) -> bool {
        self.admitted.is_some()
    }

    /// The attempt's time so far, and its permit (taken: an outcome is recorded once).
    fn end_attempt(&mut self, now: Instant) -> (Duration, Option<Permit>) {
        let (latency, permit) = match &mut self.attempt {
            Some(a) => (now.saturating_duration_since(a.started), a.permit.take()),
            None => (Duration::ZERO, None),
        };
        self.record.upstream_time = Some(latency);
        (latency, permit)
    }

    /// Feeds the attempt's result to the target's adaptive limit: a drop for timeouts,
    /// resets and the cluster's drop statuses, else the round trip. Connect failures say
    /// nothing about the origin's load and are left out.
    fn sample(&self, result: Result<u16, Failure>, latency: Duration, now: Instant) {
        let Some(Slot::Limit(slot)) = &self.slot else {
            return;
        };
        let drops = self
            .target
            .spec()
            .policy
            .concurrency
            .as_ref()
            .map(|a| a.drop_statuses)
            .unwrap_or_default();
        let sample = match result {
            Ok(status) if drops.contains(status) => Sample::Dropped,
            Ok(_) => Sample::Answered(latency),
            Err(Failure::Status(s)) if drops.contains(s) => Sample::Dropped,
            Err(Failure::Status(_)) => Sample::Answered(latency),
            Err(Failure::Timeout | Failure::ConnectTimeout | Failure::Reset) => Sample::Dropped,
            Err(_) => return,
        };
        slot.record(sample, now);
    }

    /// Feeds the origin's ORCA load report on this attempt's answer to the target's adaptive
    /// limit, when the cluster reads one; call it before [`Exchange::on_response`].
    pub(super) fn on_load_report(&self, headers: &http::HeaderMap) {
        let Some(Slot::Limit(slot)) = &self.slot else {
            return;
        };
        let metric = self.target.spec().policy.concurrency.as_ref();
        let report = metric
            .and_then(|a| a.load_report.as_ref())
            .and_then(|m| super::load_report::read(headers, m));
        if let Some(u) = report {
            slot.report_load(u);
        }
    }

    /// Notes `failure` as the exchange's: the execution's event, or the fallback cluster's
    /// failure once the request moved there.
    fn failed(&mut self, failure: Failure) {
        self.failure = Some(failure);
        if self.moved.is_some() {
            self.record.events.fallback = Some(Event::FallbackFailure);
        } else {
            self.record.events.execution = Some(failure.event());
        }
    }

    /// Records the current attempt's failure on the breaker, the endpoint and the cluster's
    /// metrics.
    fn attempt_failed(&mut self, failure: Failure, now: Instant) {
        let (latency, permit) = self.end_attempt(now);
        self.sample(Err(failure), latency, now);
        let outcome = failure.outcome();
        if let Some(p) = permit {
            p.record(outcome, latency, now);
        }
        self.target.metrics().attempt(outcome, latency);
        if let Some(a) = &self.attempt {
            self.target.endpoint_failed(&a.picked, now);
        }
        self.failed(failure);
    }

    /// The decision a response head already led to (a status retried or answered locally),
    /// for the error that drops the head; taken once.
    pub(super) fn take_decided(&mut self) -> Option<Next> {
        self.decided.take()
    }

    /// The current attempt failed with `failure`: records it and decides what follows.
    pub(super) fn on_error(&mut self, failure: Failure, facts: Facts, now: Instant) -> Next {
        self.attempt_failed(failure, now);
        self.next_after(failure, facts, now)
    }

    /// The upstream broke a response already being relayed: the endpoint's failure, never
    /// retried.
    pub(super) fn on_broken_relay(&mut self, now: Instant) {
        if let Some(a) = &self.attempt {
            self.target.endpoint_failed(&a.picked, now);
        }
    }

    /// A pooled connection turned out closed before the request could use it: pingora's own
    /// retry case, not a sign of a sick endpoint. The attempt's permit is released unrecorded.
    pub(super) fn on_stale_connection(&mut self) {
        if let Some(a) = &mut self.attempt {
            a.permit = None;
        }
    }

    /// The upstream's response head broke a size limit: the upstream's failure, never
    /// relayed, never retried.
    pub(super) fn on_refused_head(&mut self, now: Instant) {
        self.attempt_failed(Failure::BadResponse, now);
        self.decided = Some(self.give_up(Failure::BadResponse));
    }

    /// The decision after `failure`: a retry on another endpoint when the policy wants it,
    /// the request is safe to resend, the retries and the cluster's budget allow it and the
    /// deadline has not passed; else the route's fallback cluster when its fallback covers
    /// the failure; else the local fallback, else fail.
    fn next_after(&mut self, failure: Failure, facts: Facts, now: Instant) -> Next {
        if facts.response_started
            || (failure.sent() && !facts.body_replayable)
            || self.deadline.is_some_and(|d| now >= d)
        {
            return self.give_up(failure);
        }
        let policy = self.retry_policy();
        match policy.decide(
            failure,
            facts.idempotent,
            self.retries,
            self.target.budget(),
            now,
        ) {
            RetryDecision::Retry if !self.limit_admits_retry() => {
                self.target.metrics().retries_shed.inc();
            }
            RetryDecision::Retry => {
                self.retries += 1;
                self.route.metrics.retried();
                return Next::Retry;
            }
            RetryDecision::OverBudget => self.target.metrics().budget_exhausted.inc(),
            _ => {}
        }
        if (!failure.sent() || facts.idempotent) && self.move_to_fallback_cluster(failure) {
            Next::FallbackCluster
        } else {
            self.give_up(failure)
        }
    }

    /// No more attempts: the local fallback when the route's covers `failure` and has a
    /// local answer configured, else fail.
    fn give_up(&self, failure: Failure) -> Next {
        match &self.route.policy.fallback {
            Some(spec)
                if spec.on.contains(failure)
                    && (spec.response.is_some() || self.route.last_good.is_some()) =>
            {
                Next::LocalFallback
            }
            _ => Next::Fail,
        }
    }

    /// Whether the target's concurrency limit has room for a retry, which ranks below the
    /// request's first attempt ([`Priority::retry`]).
    fn limit_admits_retry(&self) -> bool {
        self.target
            .limiter()
            .is_none_or(|l| l.admits_extra(self.priority.retry()))
    }

    /// The retry policy in force: the route's override, else the target cluster's.
    fn retry_policy(&self) -> RetryPolicy {
        self.route
            .policy
            .retry
            .unwrap_or(self.target.spec().policy.retry)
    }

    /// Moves the request to the route's fallback cluster when its fallback covers `failure`
    /// and the request is not there already.
    fn move_to_fallback_cluster(&mut self, failure: Failure) -> bool {
        let (Some(spec), Some(cluster)) =
            (&self.route.policy.fallback, &self.route.fallback_cluster)
        else {
            return false;
        };
        if self.moved.is_some() || !spec.on.contains(failure) {
            return false;
        }
        tracing::debug!(route = %self.route.name, to = cluster.name(), reason = %failure, "sending to the fallback cluster");
        self.record.events.execution = Some(failure.event());
        self.record.events.fallback = Some(Event::FallbackFailure);
        self.failure = Some(failure);
        self.moved = Some(failure);
        self.target = cluster.clone();
        self.slot = None;
        self.tried.clear();
        true
    }

    /// Whether `status` counts as the target's failure: its breaker's failure statuses, or
    /// any 5xx without a breaker.
    pub(super) fn is_failure_status(&self, status: u16) -> bool {
        is_failure_status(&self.target, status)
    }

    /// Records the current attempt's answer, `status`, on the breaker, the endpoint and the
    /// cluster's metrics, and decides what to do with it: a failure status (or one the retry
    /// policy names) is attempted again when the policy allows, else answered by the local
    /// fallback when it covers the failure and `local_answer()` says it has an answer, else
    /// relayed. A good answer on the fallback cluster counts as the fallback's success.
    pub(super) fn on_response(
        &mut self,
        status: u16,
        facts: Facts,
        local_answer: impl FnOnce() -> bool,
        now: Instant,
    ) -> Verdict {
        let failed = self.is_failure_status(status);
        let (latency, permit) = self.end_attempt(now);
        self.sample(Ok(status), latency, now);
        let outcome = if failed {
            Outcome::Failure
        } else {
            Outcome::Success
        };
        self.target.metrics().attempt(outcome, latency);
        if let Some(p) = permit {
            p.record(outcome, latency, now);
        }
        if let Some(a) = &mut self.attempt {
            a.answered = true;
            if status >= 500 {
                self.target.endpoint_failed(&a.picked, now);
            } else {
                self.target.endpoint_succeeded(&a.picked);
            }
        }
        if failed || self.retry_policy().on.statuses().contains(status) {
            let failure = Failure::Status(status);
            self.failed(failure);
            let next = self.next_after(failure, facts, now);
            if next.attempts_again() {
                self.decided = Some(next);
                return Verdict::AttemptAgain;
            }
            if next == Next::LocalFallback && local_answer() {
                self.decided = Some(Next::LocalFallback);
                return Verdict::LocalFallback;
            }
            return Verdict::Relay;
        }
        self.failure = None;
        if self.moved.is_some() {
            self.record.events.fallback = Some(Event::FallbackSuccess);
            if let Some(b) = self.route.cluster.breaker() {
                b.record(Event::FallbackSuccess, now);
            }
        } else {
            self.record.events.execution = Some(Event::Success);
        }
        Verdict::Relay
    }

    /// The route's local answer for the exchange's failure (the last good response under
    /// `key`, then the static one), recorded as the fallback's success or failure on the
    /// route's breaker and in the request's events. `None` when the fallback does not cover
    /// the failure or has nothing to answer with.
    pub(super) fn local_answer(
        &mut self,
        key: Option<&str>,
        now: Instant,
    ) -> Option<(&'static str, Failure, filters::Response)> {
        let failure = self.failure?;
        let route = self.route.clone();
        let spec = route.policy.fallback.as_ref()?;
        if !spec.on.contains(failure) {
            return None;
        }
        let last_good = match (&route.last_good, key) {
            (Some(lg), Some(k)) => Some((&**lg as &LastGood, k)),
            _ => None,
        };
        let answer = fallback::local_answer(spec, last_good, failure, now);
        self.record.local_fallback = Some(match &answer {
            Some((kind, _)) => (*kind, true),
            None if route.last_good.is_some() => ("last_good", false),
            None => ("static", false),
        });
        let event = if answer.is_some() {
            Event::FallbackSuccess
        } else {
            Event::FallbackFailure
        };
        self.record.events.fallback = Some(event);
        if let Some(b) = route.cluster.breaker() {
            b.record(event, now);
        }
        answer.map(|(kind, resp)| (kind, failure, resp))
    }

    /// The request ended on `failure` (`None`: an error inside the gateway) without the
    /// exchange having recorded a result: it counts as the execution's result, and a
    /// failure is what the local fallback answers.
    pub(super) fn ended_on(&mut self, failure: Option<Failure>) {
        if self.failure.is_none() && !self.answered() {
            self.failure = failure;
        }
        if self.record.events.execution.is_none() {
            self.record.events.execution = Some(failure.map_or(Event::Failure, Failure::event));
        }
    }
}

/// Whether `status` counts as `cluster`'s failure: its breaker's failure statuses, or any
/// 5xx without a breaker.
pub(super) fn is_failure_status(cluster: &Cluster, status: u16) -> bool {
    cluster
        .spec()
        .policy
        .breaker
        .as_ref()
        .map_or(status >= 500, |b| {
            b.failures.contains(Failure::Status(status))
        })
}
