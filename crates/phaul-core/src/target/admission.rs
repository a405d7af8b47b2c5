//! How many migrations a service receives at once, and what happens to
//! the one beyond.
//!
//! A migration takes a slot when its `Begin` comes, and gives it back when
//! it has committed or been undone (the points where the metrics count it
//! running and ended). `Begin` is the last request before the source may
//! freeze or dump anything: the pre-flight has run, but the tree has not
//! been touched. So a migration beyond the limit is held or refused there,
//! and never fails halfway:
//!
//! - while the queue has room, its `Begin` waits for a slot (first come,
//!   first served: tokio's semaphore is fair) for at most
//!   [`Limits::queue_wait`]; the source's tree runs on meanwhile;
//! - when the queue is full, or the wait runs out, it is refused with
//!   `BUSY`: the source runs on where it is, its migration ends as not
//!   started, and it may try again later.
//!
//! Not counted: a controller's orders, where this service is the source.
//! Two services ordered to migrate to each other would otherwise each hold
//! their slots for outgoing migrations waiting for the other's, and neither
//! would ever receive one. Nor is post-copy's tail: the slot is given back
//! at the commit, while the tree's last pages may still be arriving.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::metrics::{Metrics, Refusal};

/// The default wait in the queue: under the source's default request
/// timeout (30 s, which bounds its wait for `Begin`'s answer), so a queued
/// source hears `BUSY` rather than giving up on its own.
pub const DEFAULT_QUEUE_WAIT: Duration = Duration::from_secs(20);

/// The default queue: a waiting migration costs a connection and a task,
/// no memory or CPU to speak of, so a queue can be long; its wait is what
/// bounds it.
pub const DEFAULT_MAX_QUEUED: usize = 64;

/// A service's limits on the migrations it receives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Migrations received at once (at least 1).
    pub max_running: usize,
    /// Migrations that may wait for a slot; 0 refuses every one beyond
    /// the limit at once.
    pub max_queued: usize,
    /// The longest one waits for its slot before it is refused.
    pub queue_wait: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_running: default_max_running(),
            max_queued: DEFAULT_MAX_QUEUED,
            queue_wait: DEFAULT_QUEUE_WAIT,
        }
    }
}

/// Two per CPU, and at least 4. A received migration spends most of its
/// time waiting on the network and on the source; its CPU work (CRIU's
/// restore, decompressing, storing images) comes in bursts, so two per
/// CPU keep the CPUs busy. More buys no throughput, only longer freezes:
/// every stop-copy source that is let in freezes, and its downtime
/// stretches while it shares the CPUs with all the others, whereas one
/// that waits in the queue is not frozen yet.
pub fn default_max_running() -> usize {
    let cpus = std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get);
    (2 * cpus).max(4)
}

/// Why a migration was not let in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Busy {
    pub why: Refusal,
    pub limits: Limits,
}

impl std::fmt::Display for Busy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let l = &self.limits;
        match self.why {
            Refusal::QueueFull => write!(
                f,
                "busy: {} migrations are running (its limit) and {} waiting (the queue's limit); \
                 nothing was started, try again later",
                l.max_running, l.max_queued
            ),
            Refusal::QueueWait => write!(
                f,
                "busy: no slot of {} came free in {:.1} s of waiting; nothing was started, \
                 try again later",
                l.max_running,
                l.queue_wait.as_secs_f64()
            ),
        }
    }
}

/// A migration's place among those running: given back when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
}

/// The slots and the queue of one service.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    slots: Arc<Semaphore>,
    queued: AtomicUsize,
    metrics: Metrics,
}

impl Admission {
    pub(crate) fn new(limits: Limits, metrics: Metrics) -> Self {
        let limits = Limits {
            max_running: limits.max_running.max(1),
            ..limits
        };
        metrics.set_limit(limits.max_running);
        Self {
            limits,
            slots: Arc::new(Semaphore::new(limits.max_running)),
            queued: AtomicUsize::new(0),
            metrics,
        }
    }

    pub(crate) fn limits(&self) -> Limits {
        self.limits
    }

    /// A slot now, or after a wait in the queue, or the reason there is
    /// none. Dropping the future leaves the queue (the source went away).
    pub(crate) async fn admit(&self) -> Result<Slot, Busy> {
        if let Ok(p) = self.slots.clone().try_acquire_owned() {
            return Ok(Slot { _permit: p });
        }
        let busy = |why| {
            self.metrics.refused(why);
            Busy {
                why,
                limits: self.limits,
            }
        };
        let _place = match Place::take(&self.queued, self.limits.max_queued) {
            Some(p) => p,
            None => return Err(busy(Refusal::QueueFull)),
        };
        let _waiting = self.metrics.waiting();
        let acquired =
            tokio::time::timeout(self.limits.queue_wait, self.slots.clone().acquire_owned()).await;
        match acquired {
            Ok(Ok(p)) => Ok(Slot { _permit: p }),
            // The semaphore is never closed; a timeout it is.
            _ => Err(busy(Refusal::QueueWait)),
        }
    }
}

/// A place in the queue, left when dropped (the wait ended either way, or
/// was abandoned).
struct Place<'a>(&'a AtomicUsize);

impl<'a> Place<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Option<Self> {
        queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(queued))
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn admission(max_running: usize, max_queued: usize, wait_ms: u64) -> Admission {
        Admission::new(
            Limits {
                max_running,
                max_queued,
                queue_wait: Duration::from_millis(wait_ms),
            },
            Metrics::default(),
        )
    }

    #[tokio::test]
    async fn beyond_the_limit_one_waits_in_the_queue_and_gets_the_first_free_slot() {
        let a = admission(2, 1, 60_000);
        let s1 = a.admit().await.unwrap();
        let _s2 = a.admit().await.unwrap();
        let waiting = a.admit();
        tokio::pin!(waiting);
        // It waits while both slots are taken...
        assert!(
            tokio::time::timeout(Duration::from_millis(200), &mut waiting)
                .await
                .is_err()
        );
        assert_eq!(a.metrics.queued(), 1);
        // ...and is let in as soon as one is given back.
        drop(s1);
        assert!(waiting.await.is_ok());
        assert_eq!(a.metrics.queued(), 0);
    }

    #[tokio::test]
    async fn a_full_queue_refuses_at_once_and_a_long_wait_is_refused_too() {
        let a = admission(1, 1, 300);
        let _s = a.admit().await.unwrap();
        let first = a.admit();
        tokio::pin!(first);
        assert!(
            tokio::time::timeout(Duration::from_millis(10), &mut first)
                .await
                .is_err()
        );
        // The queue's one place is taken: refused without waiting.
        let full = a.admit().await.unwrap_err();
        assert_eq!(full.why, Refusal::QueueFull);
        assert!(full.to_string().starts_with("busy: "), "{full}");
        // The one in the queue gives up at its wait's end.
        let waited = first.await.unwrap_err();
        assert_eq!(waited.why, Refusal::QueueWait);
        let text = a.metrics.render();
        assert!(
            text.contains("phaul_migrations_refused_total{reason=\"queue_full\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("phaul_migrations_refused_total{reason=\"queue_wait\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("phaul_migrations_waited_total 1\n"), "{text}");
        assert!(text.contains("phaul_migrations_limit 1\n"), "{text}");
        assert_eq!(a.metrics.queued(), 0);
    }

    #[tokio::test]
    async fn a_waiter_that_goes_away_leaves_its_place_in_the_queue() {
        let a = admission(1, 1, 60_000);
        let _s = a.admit().await.unwrap();
        let gone = tokio::time::timeout(Duration::from_millis(10), a.admit()).await;
        assert!(gone.is_err());
        assert_eq!(a.metrics.queued(), 0);
        // Its place is free again: the next one waits instead of a refusal.
        let next = tokio::time::timeout(Duration::from_millis(10), a.admit()).await;
        assert!(next.is_err(), "it waited");
    }

    #[test]
    fn a_limit_of_zero_is_one_and_the_default_is_at_least_four() {
        assert_eq!(admission(0, 0, 0).limits().max_running, 1);
        assert!(default_max_running() >= 4);
    }
}
