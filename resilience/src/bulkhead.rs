//! The bulkhead: a bounded number of concurrent calls, with an optional small wait queue.
//!
//! Runtime-free: waiting is a plain future (async-lock's semaphore), and the caller supplies
//! what "waited too long" means as another future (a timer of its runtime), so the core never
//! depends on tokio. Permits are released when dropped, so a panicking or cancelled call
//! cannot leak one.

use std::fmt;
use std::future::Future;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use async_lock::{Semaphore, SemaphoreGuardArc};

/// Bulkhead settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadConfig {
    /// Calls allowed at once.
    pub max_concurrent: usize,
    /// Calls allowed to wait for a slot when all are taken (0: reject at once).
    pub max_queue: usize,
}

/// Why the bulkhead refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejected {
    /// Every slot was taken and the queue was full (or there is none).
    Full,
    /// The call waited in the queue and gave up.
    QueueTimeout,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rejected::Full => f.write_str("bulkhead full"),
            Rejected::QueueTimeout => f.write_str("timed out waiting for a bulkhead slot"),
        }
    }
}

impl std::error::Error for Rejected {}

/// A concurrency limit shared by every call to one dependency.
#[derive(Debug)]
pub struct Bulkhead {
    config: BulkheadConfig,
    slots: Arc<Semaphore>,
    in_use: Arc<AtomicUsize>,
    queued: AtomicUsize,
    rejected: AtomicU64,
}

/// One slot; released on drop.
#[derive(Debug)]
pub struct BulkheadPermit {
    _guard: SemaphoreGuardArc,
    in_use: Arc<AtomicUsize>,
}

impl Drop for BulkheadPermit {
    fn drop(&mut self) {
        self.in_use.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Counts the caller as queued while it lives.
struct Queued<'a>(&'a AtomicUsize);

impl Drop for Queued<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A view for admin pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkheadSnapshot {
    /// Settings.
    pub config: BulkheadConfig,
    /// Slots taken.
    pub in_use: usize,
    /// Calls waiting.
    pub queued: usize,
    /// Calls refused since start.
    pub rejected: u64,
}

impl Bulkhead {
    /// A bulkhead with `config.max_concurrent` slots (at least one).
    pub fn new(config: BulkheadConfig) -> Self {
        let max = config.max_concurrent.max(1);
        Self {
            config: BulkheadConfig {
                max_concurrent: max,
                ..config
            },
            slots: Arc::new(Semaphore::new(max)),
            in_use: Arc::new(AtomicUsize::new(0)),
            queued: AtomicUsize::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    /// Its settings.
    pub fn config(&self) -> BulkheadConfig {
        self.config
    }

    fn permit(&self, guard: SemaphoreGuardArc) -> BulkheadPermit {
        self.in_use.fetch_add(1, Ordering::Relaxed);
        BulkheadPermit {
            _guard: guard,
            in_use: self.in_use.clone(),
        }
    }

    fn reject(&self, why: Rejected) -> Rejected {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        why
    }

    /// A slot now, or [`Rejected::Full`].
    pub fn try_acquire(&self) -> Result<BulkheadPermit, Rejected> {
        match self.slots.try_acquire_arc() {
            Some(g) => Ok(self.permit(g)),
            None => Err(self.reject(Rejected::Full)),
        }
    }

    /// A slot now, or after waiting in the queue until `give_up` completes. Rejects at once
    /// when the queue is full.
    pub async fn acquire(
        &self,
        give_up: impl Future<Output = ()>,
    ) -> Result<BulkheadPermit, Rejected> {
        if let Some(g) = self.slots.try_acquire_arc() {
            return Ok(self.permit(g));
        }
        let max_queue = self.config.max_queue;
        let entered = self
            .queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q < max_queue).then_some(q + 1)
            });
        if entered.is_err() {
            return Err(self.reject(Rejected::Full));
        }
        let _queued = Queued(&self.queued);
        let mut wait = pin!(self.slots.acquire_arc());
        let mut give_up = pin!(give_up);
        let guard = std::future::poll_fn(|cx| {
            if let std::task::Poll::Ready(g) = wait.as_mut().poll(cx) {
                return std::task::Poll::Ready(Some(g));
            }
            give_up.as_mut().poll(cx).map(|()| None)
        })
        .await;
        match guard {
            Some(g) => Ok(self.permit(g)),
            None => Err(self.reject(Rejected::QueueTimeout)),
        }
    }

    /// Whether a call may wait `wait` for a slot: there is a queue and a wait to spend.
    pub fn queues(&self, wait: std::time::Duration) -> bool {
        self.config.max_queue > 0 && !wait.is_zero()
    }

    /// A slot for a caller willing to wait `wait`: [`try_acquire`](Self::try_acquire) when
    /// it [`queues`](Self::queues) not, else [`acquire`](Self::acquire) giving up when
    /// `timer(wait)` completes (the caller's runtime's sleep).
    pub async fn acquire_within<T: Future<Output = ()>>(
        &self,
        wait: std::time::Duration,
        timer: impl FnOnce(std::time::Duration) -> T,
    ) -> Result<BulkheadPermit, Rejected> {
        if self.queues(wait) {
            self.acquire(timer(wait)).await
        } else {
            self.try_acquire()
        }
    }

    /// Slots taken right now.
    pub fn in_use(&self) -> usize {
        self.in_use.load(Ordering::Relaxed)
    }

    /// A snapshot.
    pub fn snapshot(&self) -> BulkheadSnapshot {
        BulkheadSnapshot {
            config: self.config,
            in_use: self.in_use(),
            queued: self.queued.load(Ordering::Acquire),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::future::{pending, ready};

    use futures_util::FutureExt;

    use super::*;

    fn bulkhead(max_concurrent: usize, max_queue: usize) -> Bulkhead {
        Bulkhead::new(BulkheadConfig {
            max_concurrent,
            max_queue,
        })
    }

    #[test]
    fn full_without_queue_rejects_at_once_and_drop_releases() {
        let b = bulkhead(2, 0);
        let p1 = b.try_acquire().expect("slot 1");
        let _p2 = b.try_acquire().expect("slot 2");
        assert_eq!(b.try_acquire().err(), Some(Rejected::Full));
        let waited = b.acquire(pending()).now_or_never().expect("no waiting");
        assert_eq!(waited.err(), Some(Rejected::Full));
        assert_eq!(b.in_use(), 2);
        drop(p1);
        assert_eq!(b.in_use(), 1);
        b.try_acquire().expect("slot freed");
        assert_eq!(b.snapshot().rejected, 2);
    }

    #[test]
    fn a_panicking_call_releases_its_slot() {
        let b = Arc::new(bulkhead(1, 0));
        let b2 = b.clone();
        let r = std::thread::spawn(move || {
            let _p = b2.try_acquire().expect("slot");
            panic!("call panicked");
        })
        .join();
        assert!(r.is_err());
        assert_eq!(b.in_use(), 0);
        b.try_acquire().expect("slot released by the panic");
    }

    #[tokio::test(start_paused = true)]
    async fn queued_callers_get_a_freed_slot_or_give_up() {
        let b = Arc::new(bulkhead(1, 1));
        let held = b.try_acquire().expect("slot");
        // One waiter fits in the queue; the next is rejected without waiting.
        let b2 = b.clone();
        let waiter = tokio::spawn(async move {
            b2.acquire(tokio::time::sleep(Duration::from_secs(1)))
                .await
                .map(drop)
        });
        tokio::task::yield_now().await;
        assert_eq!(b.snapshot().queued, 1);
        assert_eq!(b.acquire(pending()).await.err(), Some(Rejected::Full));
        drop(held);
        waiter.await.expect("join").expect("got the freed slot");
        assert_eq!(b.snapshot().queued, 0);

        let _held = b.try_acquire().expect("slot");
        let start = tokio::time::Instant::now();
        let r = b
            .acquire(tokio::time::sleep(Duration::from_millis(50)))
            .await;
        assert_eq!(r.err(), Some(Rejected::QueueTimeout));
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        assert_eq!(b.snapshot().queued, 0);
    }

    #[test]
    fn a_cancelled_waiter_leaves_the_queue() {
        let b = bulkhead(1, 1);
        let _held = b.try_acquire().expect("slot");
        {
            let mut fut = Box::pin(b.acquire(pending()));
            assert!((&mut fut).now_or_never().is_none());
            assert_eq!(b.snapshot().queued, 1);
        }
        assert_eq!(b.snapshot().queued, 0);
        assert_eq!(
            b.acquire(ready(())).now_or_never().expect("done").err(),
            Some(Rejected::QueueTimeout)
        );
    }

    use std::time::Duration;
}
