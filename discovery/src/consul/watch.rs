//! The blocking-query loop of one watch, as a stream: it queries only when polled, so a
//! dropped stream stops watching.

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::future::BoxFuture;
use futures_util::stream::{self, StreamExt};
use tokio::sync::watch as channel;
use tokio::time::Instant;

use super::{consul_health, Consul, ConsulConfig};
use crate::{Endpoint, EndpointSet, Query, SourceHealth, Update, Watch};

/// Where the loop gets its answers: Consul, or a scripted source in unit tests.
pub(super) trait Fetch: Send + Sync + 'static {
    /// One query with this index; returns the instances and the answer's index.
    fn fetch(&self, index: u64) -> BoxFuture<'_, Result<(Vec<Endpoint>, u64), String>>;
}

struct ConsulFetch {
    consul: Consul,
    query: Query,
}

impl Fetch for ConsulFetch {
    fn fetch(&self, index: u64) -> BoxFuture<'_, Result<(Vec<Endpoint>, u64), String>> {
        Box::pin(async move {
            self.consul
                .passing_instances(&self.query, index)
                .await
                .map_err(|e| e.to_string())
        })
    }
}

/// Starts a watch of `query` (the work happens when the stream is polled).
pub(super) fn start(consul: Consul, query: Query) -> Watch {
    let config = consul.config().clone();
    let service = query.service.clone();
    looped(ConsulFetch { consul, query }, &config, service)
}

/// The index to send next, after an answer with `answered` to a query with `sent`: an index
/// that went backwards restarts at 0 (a fresh, non-blocking read), and 0 becomes 1 so that a
/// source that reports no index cannot turn the loop into a stream of immediate answers.
pub fn next_index(sent: u64, answered: u64) -> u64 {
    if answered < sent {
        0
    } else {
        answered.max(1)
    }
}

/// Retry delay after `failures` failures in a row: `base * 2^(failures-1)` capped at `max`,
/// with "equal jitter" (between half and all of it) so that many gateways do not retry in
/// step. `random` is in `[0, 1)`.
pub fn backoff(base: Duration, max: Duration, failures: u32, random: f64) -> Duration {
    let exp = base.saturating_mul(1u32 << failures.saturating_sub(1).min(20));
    let d = exp.min(max);
    d / 2 + d.mul_f64(random.clamp(0.0, 1.0) / 2.0)
}

/// A token bucket on tokio's clock (so paused-time tests drive it).
#[derive(Debug)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// A full bucket of `burst` tokens, refilled at `per_second`.
    pub fn new(per_second: f64, burst: u32) -> Self {
        let capacity = f64::from(burst.max(1));
        Self {
            capacity,
            per_second: per_second.max(0.001),
            tokens: capacity,
            last: Instant::now(),
        }
    }

    fn refill(&mut self) {
        let now = Instant::now();
        let earned = now.duration_since(self.last).as_secs_f64() * self.per_second;
        self.tokens = (self.tokens + earned).min(self.capacity);
        self.last = now;
    }

    /// Waits until a token is available and takes it.
    pub async fn take(&mut self) {
        self.refill();
        if self.tokens < 1.0 {
            let wait = (1.0 - self.tokens) / self.per_second;
            tokio::time::sleep(Duration::from_secs_f64(wait)).await;
            self.refill();
        }
        self.tokens = (self.tokens - 1.0).max(0.0);
    }
}

struct Loop<F> {
    fetch: F,
    service: String,
    index: u64,
    current: Option<EndpointSet>,
    pending: VecDeque<Update>,
    limiter: TokenBucket,
    retry_base: Duration,
    retry_max: Duration,
    failures: u32,
    health: channel::Sender<SourceHealth>,
}

impl<F: Fetch> Loop<F> {
    async fn next(&mut self) -> Update {
        loop {
            if let Some(u) = self.pending.pop_front() {
                return u;
            }
            self.limiter.take().await;
            match self.fetch.fetch(self.index).await {
                Ok((endpoints, answered)) => self.answered(endpoints, answered),
                Err(error) => {
                    self.failures = self.failures.saturating_add(1);
                    // Contact was lost: the agent may have restarted with a lower index, and a
                    // blocking query with our (higher) index would wait out the whole `wait`
                    // before showing it. The next query reads afresh; the comparison keeps
                    // an unchanged answer from counting as a change.
                    self.index = 0;
                    let delay = backoff(
                        self.retry_base,
                        self.retry_max,
                        self.failures,
                        fastrand::f64(),
                    );
                    let known = self.current.as_ref().map_or(0, EndpointSet::len);
                    if self.failures == 1 || self.failures.is_power_of_two() {
                        tracing::warn!(
                            service = %self.service,
                            failures = self.failures,
                            keeping_endpoints = known,
                            retry_in_ms = delay.as_millis() as u64,
                            %error,
                            "Consul query failed; serving the last known endpoints"
                        );
                    }
                    self.health.send_modify(|h| h.failed(error));
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    fn answered(&mut self, endpoints: Vec<Endpoint>, answered: u64) {
        if self.failures > 0 {
            tracing::info!(service = %self.service, after_failures = self.failures, "Consul answers again");
            self.failures = 0;
        }
        if answered < self.index {
            tracing::info!(service = %self.service, was = self.index, now = answered, "Consul index went backwards; reading afresh");
        }
        self.index = next_index(self.index, answered);
        let next = EndpointSet::from_endpoints(endpoints);
        let changed = match &self.current {
            None => {
                self.pending
                    .push_back(Update::Reset(next.iter().cloned().collect()));
                true
            }
            Some(current) => {
                let diff = current.diff(&next);
                let changed = !diff.is_empty();
                self.pending.extend(diff);
                changed
            }
        };
        self.current = Some(next);
        self.health.send_modify(|h| h.succeeded(answered, changed));
    }
}

/// The watch loop over any [`Fetch`].
pub(super) fn looped<F: Fetch>(fetch: F, config: &ConsulConfig, service: String) -> Watch {
    let (tx, health) = channel::channel(consul_health());
    let state = Loop {
        fetch,
        service,
        index: 0,
        current: None,
        pending: VecDeque::new(),
        limiter: TokenBucket::new(config.max_queries_per_second, config.burst),
        retry_base: config.retry_base,
        retry_max: config.retry_max,
        failures: 0,
        health: tx,
    };
    let updates = stream::unfold(state, |mut state| async move {
        let update = state.next().await;
        Some((update, state))
    })
    .boxed();
    Watch { updates, health }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::SocketAddr;
    use std::sync::{Arc, Mutex};

    fn ep(port: u16) -> Endpoint {
        Endpoint::new(SocketAddr::from(([127, 0, 0, 1], port)))
    }

    type Answer = Result<(Vec<Endpoint>, u64), String>;

    /// Plays back answers; after the script ends it answers like the last entry forever (an
    /// agent that returns at once every time). Records the index of every query and when.
    #[derive(Clone)]
    struct Script {
        answers: Arc<Mutex<VecDeque<Answer>>>,
        last: Arc<Mutex<Option<Answer>>>,
        sent: Arc<Mutex<Vec<(u64, Instant)>>>,
    }

    impl Script {
        fn new(answers: Vec<Answer>) -> Self {
            Self {
                answers: Arc::new(Mutex::new(answers.into())),
                last: Arc::new(Mutex::new(None)),
                sent: Arc::new(Mutex::new(Vec::new())),
            }
        }
        fn sent(&self) -> Vec<u64> {
            self.sent
                .lock()
                .expect("lock")
                .iter()
                .map(|(i, _)| *i)
                .collect()
        }
    }

    impl Fetch for Script {
        fn fetch(&self, index: u64) -> BoxFuture<'_, Answer> {
            self.sent
                .lock()
                .expect("lock")
                .push((index, Instant::now()));
            let next = self.answers.lock().expect("lock").pop_front();
            let answer = match next {
                Some(a) => {
                    *self.last.lock().expect("lock") = Some(a.clone());
                    a
                }
                None => self
                    .last
                    .lock()
                    .expect("lock")
                    .clone()
                    .unwrap_or(Ok((Vec::new(), 1))),
            };
            Box::pin(async move { answer })
        }
    }

    fn config() -> ConsulConfig {
        ConsulConfig {
            max_queries_per_second: 2.0,
            burst: 3,
            retry_base: Duration::from_millis(100),
            retry_max: Duration::from_secs(2),
            ..ConsulConfig::default()
        }
    }

    #[test]
    fn index_rules() {
        assert_eq!(next_index(0, 0), 1, "0 is sent as 1");
        assert_eq!(next_index(0, 7), 7);
        assert_eq!(next_index(7, 7), 7);
        assert_eq!(next_index(9, 3), 0, "backwards restarts at 0");
        assert_eq!(next_index(3, 0), 0, "backwards to 0 restarts at 0 once");
    }

    #[test]
    fn backoff_doubles_is_capped_and_jittered_in_the_upper_half() {
        let b = Duration::from_millis(100);
        let m = Duration::from_secs(2);
        assert_eq!(backoff(b, m, 1, 0.0), Duration::from_millis(50));
        assert_eq!(backoff(b, m, 1, 0.999_999).as_millis(), 99);
        assert_eq!(backoff(b, m, 3, 0.0), Duration::from_millis(200));
        assert_eq!(backoff(b, m, 30, 0.0), Duration::from_secs(1), "capped");
        assert!(backoff(b, m, 30, 0.99) <= m);
    }

    #[tokio::test(start_paused = true)]
    async fn sends_back_the_index_and_reports_only_changes() {
        let script = Script::new(vec![
            Ok((vec![ep(1)], 10)),
            Ok((vec![ep(1)], 11)), // returned, but nothing changed
            Ok((vec![ep(1), ep(2)], 12)),
            Ok((vec![ep(2)], 5)), // index went backwards (agent restarted)
            Ok((vec![ep(2)], 6)),
            Ok((vec![ep(2), ep(3)], 7)),
        ]);
        let mut w = looped(script.clone(), &config(), "svc".into());
        assert_eq!(w.updates.next().await, Some(Update::Reset(vec![ep(1)])));
        assert_eq!(w.updates.next().await, Some(Update::Upsert(ep(2))));
        assert_eq!(w.updates.next().await, Some(Update::Remove(ep(1).address)));
        assert_eq!(w.updates.next().await, Some(Update::Upsert(ep(3))));
        assert_eq!(script.sent(), vec![0, 10, 11, 12, 0, 6]);
        let h = w.health.borrow().clone();
        assert_eq!((h.index, h.changes, h.is_stale()), (7, 4, false));
    }

    #[tokio::test(start_paused = true)]
    async fn an_agent_that_answers_at_once_cannot_make_the_loop_spin() {
        // Always the same index and set: every query returns at once without a change.
        let script = Script::new(vec![Ok((vec![ep(1)], 3))]);
        let w = looped(script.clone(), &config(), "svc".into());
        let mut updates = w.updates;
        assert_eq!(updates.next().await, Some(Update::Reset(vec![ep(1)])));
        let started = Instant::now();
        let more = tokio::time::timeout(Duration::from_secs(10), updates.next()).await;
        assert!(more.is_err(), "no change, no update");
        let queries = script
            .sent
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, at)| *at >= started)
            .count();
        // The bucket holds 3 and refills 2 per second: at most 2 left + 20 in 10 s.
        assert!(
            (18..=23).contains(&queries),
            "{queries} queries in 10 s at 2/s"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn failures_keep_the_set_back_off_and_mark_the_health_stale() {
        let script = Script::new(vec![
            Ok((vec![ep(1), ep(2)], 10)),
            Err("connection refused".into()),
            Err("connection refused".into()),
            Err("connection refused".into()),
            Err("connection refused".into()),
            Ok((vec![ep(1), ep(2)], 10)),
            Ok((vec![ep(2)], 11)),
        ]);
        // A bucket big enough that only the backoff spaces the queries.
        let roomy = ConsulConfig {
            burst: 20,
            ..config()
        };
        let mut w = looped(script.clone(), &roomy, "svc".into());
        assert_eq!(
            w.updates.next().await,
            Some(Update::Reset(vec![ep(1), ep(2)]))
        );
        let mut health = w.health.clone();
        let updates = tokio::spawn(async move {
            let next = w.updates.next().await;
            (next, w.updates)
        });
        health
            .wait_for(|h| h.consecutive_errors == 4)
            .await
            .expect("health");
        assert!(health.borrow().is_stale());
        assert_eq!(
            health.borrow().last_error.as_deref(),
            Some("connection refused")
        );
        let (next, _) = updates.await.expect("task");
        assert_eq!(
            next,
            Some(Update::Remove(ep(1).address)),
            "no removal while failing"
        );
        assert!(!health.borrow().is_stale());
        let times: Vec<Instant> = script
            .sent
            .lock()
            .expect("lock")
            .iter()
            .map(|(_, t)| *t)
            .collect();
        assert_eq!(
            script.sent(),
            vec![0, 10, 0, 0, 0, 0, 10],
            "after losing contact the watch reads afresh, then blocks again"
        );
        let gaps: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
        // After failure n the loop waits 50..100 ms * 2^(n-1): growing gaps.
        assert!(gaps[1] >= Duration::from_millis(50) && gaps[1] <= Duration::from_millis(100));
        assert!(gaps[2] >= Duration::from_millis(100) && gaps[2] <= Duration::from_millis(200));
        assert!(gaps[3] >= Duration::from_millis(200) && gaps[3] <= Duration::from_millis(400));
        assert!(gaps[4] >= Duration::from_millis(400) && gaps[4] <= Duration::from_millis(800));
    }

    #[tokio::test(start_paused = true)]
    async fn a_source_down_from_the_start_yields_nothing_until_it_answers() {
        let script = Script::new(vec![
            Err("connection refused".into()),
            Err("connection refused".into()),
            Ok((vec![], 4)),
        ]);
        let mut w = looped(script, &config(), "svc".into());
        assert_eq!(w.updates.next().await, Some(Update::Reset(vec![])));
        assert_eq!(w.health.borrow().changes, 1);
    }
}
