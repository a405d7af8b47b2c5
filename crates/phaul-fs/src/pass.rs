//! The passes of a sync, in the one order every driver keeps: numbered from
//! 0, none after the final one, and none after a failure that left the
//! link out of step. The source drivers keep it with a [`PassGate`]; the
//! target drivers serve their passes with [`serve_passes`].

use std::future::Future;
use std::path::Path;
use std::time::Instant;

use phaul_transport::Link;
use tracing::{info, warn};

use crate::error::{Error, Result};
use crate::{SyncStats, describe};

/// Which pass of a migration: the engine calls the first while the
/// workload runs, one more after each pre-dump, and the final one while
/// the workload is frozen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The first pass, while the workload runs.
    First,
    /// Another pass while the workload runs.
    Iteration,
    /// The last pass, while the workload is frozen. Nothing may change in
    /// the tree during it, and the target makes its result durable.
    Final,
}

impl Pass {
    /// Whether this is the final pass.
    pub fn is_final(self) -> bool {
        self == Self::Final
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Ready,
    Broken,
    Finished,
}

/// A source driver's count and state of passes.
#[derive(Debug)]
pub(crate) struct PassGate {
    driver: &'static str,
    next: u32,
    state: State,
}

/// A pass let through the gate, to be handed back with its result.
#[derive(Debug)]
#[must_use = "a pass must be closed with PassGate::close"]
pub(crate) struct Ticket {
    /// The pass's number, from 0.
    pub(crate) number: u32,
    /// Whether it is the final pass.
    pub(crate) last: bool,
    started: Instant,
}

impl PassGate {
    pub(crate) fn new(driver: &'static str) -> Self {
        Self {
            driver,
            next: 0,
            state: State::Ready,
        }
    }

    /// Lets the next pass through, or refuses it: [`Error::Broken`] after
    /// a failure that left the link out of step, [`Error::Protocol`] after
    /// the final pass.
    pub(crate) fn open(&mut self, which: Pass) -> Result<Ticket> {
        match self.state {
            State::Broken => return Err(Error::Broken),
            State::Finished => {
                return Err(Error::Protocol("the final sync has already run".into()));
            }
            State::Ready => {}
        }
        let number = self.next;
        self.next += 1;
        Ok(Ticket {
            number,
            last: which.is_final(),
            started: Instant::now(),
        })
    }

    /// Takes a pass's result: a failure for which `link_in_step` says no
    /// closes the gate for good, a final pass that succeeded closes it
    /// after itself. Stamps the stats with the pass's time and logs them.
    #[expect(
        clippy::needless_pass_by_value,
        reason = "closing a pass uses up its ticket"
    )]
    pub(crate) fn close(
        &mut self,
        t: Ticket,
        res: Result<SyncStats>,
        link_in_step: impl FnOnce(&Error) -> bool,
    ) -> Result<SyncStats> {
        match &res {
            Err(e) if !link_in_step(e) => self.state = State::Broken,
            Err(_) => {}
            Ok(_) if t.last => self.state = State::Finished,
            Ok(_) => {}
        }
        let mut stats = res?;
        stats.duration = t.started.elapsed();
        log_pass(self.driver, "source", t.number, t.last, &stats);
        Ok(stats)
    }
}

/// A target driver's side of one pass.
pub(crate) trait ServePass: Send {
    /// Serves pass `number` (the passes are counted here, from 0) and
    /// says whether it was the final one.
    fn serve_pass(
        &mut self,
        link: &mut Link,
        number: u32,
    ) -> impl Future<Output = Result<(SyncStats, bool)>> + Send;
}

/// Serves a target driver's passes until the final one, then returns the
/// totals; or returns the first error, told to the source first while the
/// link still works.
pub(crate) async fn serve_passes(
    driver: &'static str,
    mut link: Link,
    root: &Path,
    mut server: impl ServePass,
) -> Result<SyncStats> {
    let mut total = SyncStats::default();
    for number in 0.. {
        match server.serve_pass(&mut link, number).await {
            Ok((stats, last)) => {
                log_pass(driver, "target", number, last, &stats);
                total.merge(&stats);
                if last {
                    break;
                }
            }
            Err(e) => {
                warn!(driver, root = %root.display(), error = %describe(&e), "file-system pass failed");
                if e.worth_reporting() {
                    // Best effort: the link is going away either way.
                    link.refuse(e.code(), &describe(&e)).await;
                }
                return Err(e);
            }
        }
    }
    Ok(total)
}

fn log_pass(driver: &'static str, side: &'static str, pass: u32, last: bool, stats: &SyncStats) {
    info!(
        driver,
        side,
        pass,
        last,
        files = stats.files,
        bytes = stats.bytes,
        deleted = stats.deleted,
        scanned = stats.scanned,
        ms = u64::try_from(stats.duration.as_millis()).unwrap_or(u64::MAX),
        "file-system pass done"
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passes_are_numbered_and_none_follows_the_final_one() {
        let mut g = PassGate::new("test");
        for (which, n) in [(Pass::First, 0), (Pass::Iteration, 1), (Pass::Final, 2)] {
            let t = g.open(which).unwrap();
            assert_eq!((t.number, t.last), (n, which.is_final()));
            g.close(t, Ok(SyncStats::default()), |_| true).unwrap();
        }
        assert!(matches!(g.open(Pass::Final), Err(Error::Protocol(_))));
    }

    #[test]
    fn a_failure_out_of_step_breaks_the_gate_and_one_in_step_does_not() {
        let mut g = PassGate::new("test");
        let t = g.open(Pass::First).unwrap();
        let e = g.close(t, Err(Error::Limit("in step".into())), |_| true);
        assert!(matches!(e, Err(Error::Limit(_))));
        let t = g.open(Pass::Iteration).unwrap();
        assert_eq!(t.number, 1);
        let e = g.close(t, Err(Error::Protocol("out of step".into())), |_| false);
        assert!(matches!(e, Err(Error::Protocol(_))));
        assert!(matches!(g.open(Pass::Final), Err(Error::Broken)));
    }
}
