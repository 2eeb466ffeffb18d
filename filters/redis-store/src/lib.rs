//! The store of cluster-wide rate limits on Redis ([`RedisStore`], a [`filters::LimitStore`]).
//!
//! - One GCRA script ([`SCRIPT`]) that takes the time as an argument, so it runs on managed
//!   Redis that forbids `TIME` in scripts. It is called by SHA (`EVALSHA`); when the server
//!   has forgotten it (a restart, a failover: `NOSCRIPT`) it is loaded again and the call
//!   repeated once.
//! - Keys carry one hash tag each (the filter names them), so Redis Cluster spreads them and
//!   each call touches one slot.
//! - One multiplexed connection per gateway that reconnects by itself (`redis`'s
//!   `ConnectionManager`), opened lazily on first use, so an unreachable Redis never fails a
//!   start or a reload.
//! - Every call has its own timeout and goes through a [`resilience::CircuitBreaker`]: after
//!   a few failures in a row the store reports itself unavailable at once
//!   ([`LimitStore::available`]) and the limits fall back, and a trial call after the sleep
//!   window brings it back.

#![forbid(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use filters::{Checked, GcraOp, LimitObserver, LimitStore, StoreError};
use redis::aio::ConnectionManager;
use resilience::{BreakerConfig, CircuitBreaker, Outcome, Trip};
use tokio::sync::OnceCell;

/// The GCRA script (Lua), as sent to Redis.
pub const SCRIPT: &str = include_str!("gcra.lua");

/// How the store reaches Redis.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]` (or `rediss://` for TLS).
    pub url: String,
    /// Longest wait for one call (connecting included).
    pub timeout: Duration,
    /// Failures in a row that open the store's circuit breaker.
    pub failures_to_open: u32,
    /// How long the breaker stays open before a trial call.
    pub retry_after: Duration,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &redact(&self.url))
            .field("timeout", &self.timeout)
            .field("failures_to_open", &self.failures_to_open)
            .field("retry_after", &self.retry_after)
            .finish()
    }
}

impl RedisSettings {
    /// Settings for `url` with the defaults: 50 ms per call, open after 3 failures, retry
    /// after 1 s.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            timeout: Duration::from_millis(50),
            failures_to_open: 3,
            retry_after: Duration::from_secs(1),
        }
    }
}

/// A [`LimitStore`] on Redis.
pub struct RedisStore {
    settings: RedisSettings,
    client: redis::Client,
    conn: OnceCell<ConnectionManager>,
    sha: String,
    breaker: Arc<CircuitBreaker>,
    /// Until when (ms after `epoch`) the breaker refuses calls.
    open_until_ms: AtomicU64,
    epoch: Instant,
    observer: Option<Arc<dyn LimitObserver>>,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("redis", &self.describe())
            .field("breaker", &self.breaker.state())
            .finish_non_exhaustive()
    }
}

impl RedisStore {
    /// A store for `settings`; nothing connects until the first call. Fails only when the
    /// URL cannot be parsed.
    pub fn new(
        settings: RedisSettings,
        observer: Option<Arc<dyn LimitObserver>>,
    ) -> Result<Self, String> {
        let client = redis::Client::open(settings.url.as_str())
            .map_err(|e| format!("redis address `{}`: {e}", redact(&settings.url)))?;
        let now = Instant::now();
        let breaker = Arc::new(CircuitBreaker::new(
            "redis",
            BreakerConfig {
                trip: Trip::ConsecutiveFailures(settings.failures_to_open.max(1)),
                sleep_window: settings.retry_after,
                ..BreakerConfig::default()
            },
            now,
        ));
        Ok(Self {
            sha: redis::Script::new(SCRIPT).get_hash().to_owned(),
            settings,
            client,
            conn: OnceCell::new(),
            breaker,
            open_until_ms: AtomicU64::new(0),
            epoch: now,
            observer,
        })
    }

    /// The store's circuit breaker (for the admin API).
    pub fn breaker(&self) -> &Arc<CircuitBreaker> {
        &self.breaker
    }

    async fn connection(&self) -> Result<ConnectionManager, redis::RedisError> {
        self.conn
            .get_or_try_init(|| async {
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(self.settings.timeout)
                    .set_response_timeout(self.settings.timeout)
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(self.client.clone(), config).await
            })
            .await
            .cloned()
    }

    /// Runs `ops` as one pipeline of script calls, loading the script once when the server
    /// has forgotten it.
    async fn run(&self, ops: &[GcraOp], check: bool) -> Result<Vec<(i64, i64)>, StoreError> {
        let now = Instant::now();
        let permit = match self.breaker.try_acquire(now) {
            Ok(p) => p,
            Err(refused) => {
                if let Some(wait) = refused.retry_after {
                    let until = (now + wait).saturating_duration_since(self.epoch);
                    self.open_until_ms
                        .store(until.as_millis() as u64, Ordering::Relaxed);
                }
                return Err(StoreError(format!("redis: {refused}")));
            }
        };
        let result = tokio::time::timeout(self.settings.timeout, self.call(ops, check)).await;
        let end = Instant::now();
        let latency = end.saturating_duration_since(now);
        let result = match result {
            Ok(Ok(v)) => {
                permit.record(Outcome::Success, latency, end);
                Ok(v)
            }
            Ok(Err(e)) => {
                permit.record(Outcome::Failure, latency, end);
                Err(StoreError(format!("redis: {e}")))
            }
            Err(_) => {
                permit.record(Outcome::Timeout, latency, end);
                Err(StoreError(format!(
                    "redis: no answer within {} ms",
                    self.settings.timeout.as_millis()
                )))
            }
        };
        if let Some(o) = &self.observer {
            o.store_call(latency, result.is_ok());
        }
        result
    }

    async fn call(
        &self,
        ops: &[GcraOp],
        check: bool,
    ) -> Result<Vec<(i64, i64)>, redis::RedisError> {
        let mut conn = self.connection().await?;
        let pipe = |sha: &str| {
            let mut pipe = redis::pipe();
            for op in ops {
                pipe.cmd("EVALSHA")
                    .arg(sha)
                    .arg(1)
                    .arg(&op.key)
                    .arg(op.now_us)
                    .arg(op.emission_us)
                    .arg(op.tolerance_us)
                    .arg(op.count)
                    .arg(if check { "1" } else { "0" });
            }
            pipe
        };
        match pipe(&self.sha).query_async(&mut conn).await {
            Err(e) if e.kind() == redis::ErrorKind::NoScriptError => {
                tracing::info!("redis forgot the rate-limit script; loading it again");
                let sha: String = redis::cmd("SCRIPT")
                    .arg("LOAD")
                    .arg(SCRIPT)
                    .query_async(&mut conn)
                    .await?;
                pipe(&sha).query_async(&mut conn).await
            }
            other => other,
        }
    }
}

/// `url` without its password.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            format!("{}***{}", &url[..scheme + 3], &url[at..])
        }
        _ => url.to_owned(),
    }
}

#[async_trait]
impl LimitStore for RedisStore {
    async fn sync(&self, ops: &[GcraOp]) -> Result<Vec<u64>, StoreError> {
        let out = self.run(ops, false).await?;
        Ok(out.into_iter().map(|(_, tat)| tat.max(0) as u64).collect())
    }

    async fn check(&self, op: &GcraOp) -> Result<Checked, StoreError> {
        let out = self.run(std::slice::from_ref(op), true).await?;
        let (allowed, tat) = out
            .first()
            .copied()
            .ok_or_else(|| StoreError("redis: empty answer".into()))?;
        Ok(Checked {
            allowed: allowed == 1,
            tat_us: tat.max(0) as u64,
        })
    }

    fn available(&self) -> bool {
        let now_ms = self.epoch.elapsed().as_millis() as u64;
        now_ms >= self.open_until_ms.load(Ordering::Relaxed)
    }

    fn describe(&self) -> String {
        redact(&self.settings.url)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_never_leave_the_store() {
        assert_eq!(
            redact("redis://:s3cret@10.0.0.1:6379/0"),
            "redis://***@10.0.0.1:6379/0"
        );
        assert_eq!(redact("redis://127.0.0.1:6379"), "redis://127.0.0.1:6379");
    }

    #[test]
    fn a_bad_address_is_refused_and_nothing_connects_before_the_first_call() {
        assert!(RedisStore::new(RedisSettings::new("not a url"), None).is_err());
        let store =
            RedisStore::new(RedisSettings::new("redis://127.0.0.1:1"), None).expect("parses");
        assert!(store.available());
        assert_eq!(store.describe(), "redis://127.0.0.1:1");
    }

    #[tokio::test]
    async fn an_unreachable_redis_fails_fast_and_opens_the_breaker() {
        let mut settings = RedisSettings::new("redis://127.0.0.1:1");
        settings.retry_after = Duration::from_secs(60);
        let store = RedisStore::new(settings, None).expect("parses");
        let op = GcraOp {
            key: "gw:rl:{t|k}".into(),
            count: 1,
            emission_us: 1000,
            tolerance_us: 10_000,
            now_us: 1,
        };
        for _ in 0..3 {
            assert!(store.check(&op).await.is_err());
        }
        let refused = store.check(&op).await.expect_err("open");
        assert!(refused.0.contains("circuit"), "{refused}");
        assert!(!store.available(), "the open breaker is reported at once");
    }
}
