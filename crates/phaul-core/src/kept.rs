//! What a host's CRIU said about itself (its version, its features, the
//! CPU it dumps, a source CPU it accepted), kept for a while and shared by
//! the clones of the [`crate::criu::Criu`] handle that asked.
//!
//! Each answer is a CRIU run: under emulation the four of a pre-flight took
//! about a second before every freeze. None of them changes between two
//! migrations a minute apart, so a daemon or an embedder that moves one
//! tree after another asks once per [`crate::criu::Criu::checks_valid`]. A
//! failure is never kept: the next caller asks again.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One answer and when it was given, shared by clones.
#[derive(Debug)]
pub(crate) struct Kept<T> {
    slot: Arc<Mutex<Option<(Instant, T)>>>,
}

impl<T> Default for Kept<T> {
    fn default() -> Self {
        Self {
            slot: Arc::default(),
        }
    }
}

impl<T> Clone for Kept<T> {
    fn clone(&self) -> Self {
        Self {
            slot: Arc::clone(&self.slot),
        }
    }
}

impl<T: Clone> Kept<T> {
    /// The answer kept, if it is younger than `valid` and `fits` it; else
    /// what `ask` answers, kept from now if it is an answer.
    pub(crate) async fn get<E, Fut>(
        &self,
        valid: Duration,
        fits: impl Fn(&T) -> bool,
        ask: impl FnOnce() -> Fut,
    ) -> Result<T, E>
    where
        Fut: Future<Output = Result<T, E>>,
    {
        if let Some(v) = self.fresh(valid).filter(|v| fits(v)) {
            return Ok(v);
        }
        let v = ask().await?;
        *self.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), v.clone()));
        Ok(v)
    }

    fn fresh(&self, valid: Duration) -> Option<T> {
        let slot = self.slot.lock().unwrap_or_else(|p| p.into_inner());
        let (at, v) = slot.as_ref()?;
        (at.elapsed() < valid).then(|| v.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test]
    async fn an_answer_is_kept_for_its_time_by_every_clone_and_a_failure_never() {
        let asked = AtomicU32::new(0);
        let ask = |v: u32| {
            asked.fetch_add(1, Ordering::SeqCst);
            async move { if v == 0 { Err("no") } else { Ok(v) } }
        };
        let kept = Kept::default();
        let minute = Duration::from_secs(60);
        let any = |_: &u32| true;
        assert_eq!(kept.get(minute, any, || ask(0)).await, Err("no"));
        assert_eq!(kept.get(minute, any, || ask(7)).await, Ok(7));
        assert_eq!(kept.clone().get(minute, any, || ask(8)).await, Ok(7));
        assert_eq!(asked.load(Ordering::SeqCst), 2);
        // An answer that does not fit the question is asked again.
        assert_eq!(kept.get(minute, |v| *v == 9, || ask(9)).await, Ok(9));
        // Nothing is kept for no time.
        assert_eq!(kept.get(Duration::ZERO, any, || ask(10)).await, Ok(10));
        assert_eq!(asked.load(Ordering::SeqCst), 4);
    }
}
