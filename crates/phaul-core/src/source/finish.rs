//! The final step of every mode, as one template.
//!
//! However a mode got here (straight away, after pre-dumps, after file
//! passes), it ends the same way: the source is stopped in one of four
//! ways ([`Final`]), then, bounded by the freeze limit, the last file-system
//! pass, the kind's meta files, the images, the restore and the commit.
//! What differs is only how the source was stopped, and so how it is ended
//! after the commit or resumed after a failure: that lives in [`Stopped`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use phaul_transport::proto;
use tokio::sync::watch;
use tracing::{info, warn};

use super::lazy::{PortGuard, free_port, poison_direct};
use super::progress::BytesTicker;
use super::{Migration, Run, iteration_report, mkdir};
use phaul_htypes::RestoreBy;

use crate::criu::{HeldDump, LazyDump, SourceCriu};
use crate::error::{Error, Result};
use crate::fs::Pass;
use crate::pagestream::{PageRelay, reset_on_close};
use crate::source::Progress;
use crate::stats::{Outcome, Phase};

/// How the source is stopped for the final step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Final {
    /// CRIU dumps it and holds it frozen at `post-dump`; the pages stream
    /// to the target's page server.
    Dump,
    /// CRIU dumps it lazily: the memory stays here and is served after the
    /// target resumes (post-copy).
    Lazy,
    /// Its manager (runc) dumps it and leaves it frozen.
    Manager,
    /// Its manager dumps it lazily: its CRIU serves the memory after the
    /// target resumes (post-copy).
    ManagerLazy,
    /// Its manager stops it (restart mode); it starts anew on the target.
    Stop,
}

/// The source, stopped: what ends it after the commit or resumes it.
enum Stopped {
    Dump {
        held: HeldDump,
        relay: PageRelay,
        /// Pages the relay had sent when the dump returned.
        pages_sent: u64,
    },
    Lazy {
        lazy: LazyDump,
        relay: PageRelay,
        _guard: PortGuard,
        /// Tells the relay the target committed: from then on a broken
        /// link must not roll the source back.
        committed: watch::Sender<bool>,
        _ticker: BytesTicker,
    },
    Manager {
        work: PathBuf,
    },
    ManagerLazy {
        /// The manager's tool, serving the memory until the last page.
        dumping: tokio::task::JoinHandle<phaul_htypes::Result<()>>,
        work: PathBuf,
        relay: PageRelay,
        committed: watch::Sender<bool>,
        _ticker: BytesTicker,
    },
    Stop,
}

impl Stopped {
    fn restore(&self, iteration: u32) -> proto::Restore {
        proto::Restore {
            iteration,
            lazy: matches!(self, Stopped::Lazy { .. } | Stopped::ManagerLazy { .. }),
        }
    }

    fn committed(&self) {
        if let Stopped::Lazy { committed, .. } | Stopped::ManagerLazy { committed, .. } = self {
            let _ = committed.send(true);
        }
    }
}

impl<C: SourceCriu> Migration<C> {
    /// Stops the source `how`, sends the rest, restores and commits; any
    /// failure before the commit resumes the source and aborts the target.
    pub(super) async fn final_step(
        &self,
        run: &mut Run<'_>,
        how: Final,
        i: u32,
        pre_copied: bool,
    ) -> Result<()> {
        self.enter(run.stats, Phase::FinalDump)?;
        if let Err(e) = self.group_ok() {
            self.abort_target(&mut run.ctl, &e).await;
            return Err(e);
        }
        // Before the freeze, so nothing the lock drops is missed; what the
        // tree received before the lock is a duplicate TCP discards.
        if crate::netlock::own_netns(run.pid) {
            run.replay = crate::replay::Capture::start(run.pid)
                .inspect_err(|e| warn!(error = %e, "no replay of what the lock drops"))
                .ok();
        }
        let (stopped, dir, t0) = match self.stop_source(run, how, i, pre_copied).await {
            Ok(x) => x,
            Err(e) => {
                self.group_failed(&e);
                // Nothing holds the source stopped: CRIU or the kind has
                // resumed it (or never stopped it).
                if run.stats.outcome(false) != Outcome::NotStarted {
                    self.enter_anyway(run.stats, Phase::Rollback);
                    self.emit(Progress::RollingBack(e.to_string()));
                }
                self.abort_target(&mut run.ctl, &e).await;
                return Err(e);
            }
        };
        let restore = stopped.restore(i);
        let to_target = async {
            self.fs_pass(run, Pass::Final).await?;
            self.write_files(&dir, true).await?;
            self.transfer_images(run, &dir, i).await?;
            self.restore_and_commit(run, restore).await?;
            stopped.committed();
            Ok(())
        };
        match self.while_frozen(to_target).await {
            Ok(()) => {
                self.end_source(run, stopped, i, t0).await?;
                self.cleanup_source().await;
                Ok(())
            }
            Err(e) => {
                // The others roll back alongside, not after this one.
                self.group_failed(&e);
                self.enter_anyway(run.stats, Phase::Rollback);
                self.emit(Progress::RollingBack(e.to_string()));
                self.resume_source(run, stopped, &e).await;
                Err(e)
            }
        }
    }

    /// The first half of the final step: the source stops. Returns how,
    /// the images' directory and when the freeze began.
    async fn stop_source(
        &self,
        run: &mut Run<'_>,
        how: Final,
        i: u32,
        pre_copied: bool,
    ) -> Result<(Stopped, PathBuf, Instant)> {
        match how {
            Final::Dump => self.dump(run, i, pre_copied).await,
            Final::Lazy => self.lazy_dump(run, i, pre_copied).await,
            Final::Manager => {
                let (dir, work) = (run.dir.join("0"), run.dir.join("0.work"));
                mkdir(&dir)?;
                mkdir(&work)?;
                let t0 = Instant::now();
                self.freezing(run.stats, t0)?;
                let (d, w) = (dir.clone(), work.clone());
                self.hook(move |h| h.dump_self(&d, &w))
                    .await
                    .map_err(|e| match e {
                        // The manager only says "criu failed": its CRIU's
                        // log says why.
                        Error::Htype(h) => crate::logs::manager_error(h, &[work.join("dump.log")]),
                        other => other,
                    })?;
                Ok((Stopped::Manager { work }, dir, t0))
            }
            Final::ManagerLazy => self.manager_lazy_dump(run).await,
            Final::Stop => {
                let t0 = Instant::now();
                // Not a freeze: the kind stops and starts anew, so no freeze
                // limit applies.
                run.stats.source_frozen(t0)?;
                if let Some(g) = &self.group {
                    // Down from here all the same: the group's downtime counts it.
                    g.froze(t0);
                }
                self.emit(Progress::Frozen);
                self.hook(|h| h.stop()).await?;
                let dir = run.dir.join("0");
                mkdir(&dir)?;
                Ok((Stopped::Stop, dir, t0))
            }
        }
    }

    async fn dump(
        &self,
        run: &mut Run<'_>,
        i: u32,
        pre_copied: bool,
    ) -> Result<(Stopped, PathBuf, Instant)> {
        let (criu_end, relay) = self.page_server(run, i, pre_copied && i > 0).await?;
        let ticker = self.ticker(run, &relay);
        let spec = self.spec(run, i, pre_copied, pre_copied)?;
        let dir = spec.images_dir.clone();
        self.write_files(&dir, false).await?;
        let dumped = self
            .freeze_with(run, "the final dump", self.criu.dump(spec, criu_end))
            .await;
        // If CRIU did not get to post-dump, it has resumed the tree.
        let ((held, t0), relay) = super::or_stop(dumped, relay)?;
        drop(ticker);
        let pages_sent = relay.sent();
        run.stats.add_bytes(pages_sent);
        run.transfer = run
            .bandwidth
            .filter(|_| pre_copied)
            .and_then(|bw| Duration::try_from_secs_f64(pages_sent as f64 / bw).ok());
        let stopped = Stopped::Dump {
            held,
            relay,
            pages_sent,
        };
        Ok((stopped, dir, t0))
    }

    /// Freezes the source by `fut` (a final dump), bounded by the freeze
    /// limit from this moment on; returns what it gave and when the freeze
    /// began.
    async fn freeze_with<T>(
        &self,
        run: &mut Run<'_>,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<(T, Instant)> {
        let t0 = Instant::now();
        self.freezing(run.stats, t0)?;
        let r = self
            .while_frozen(self.step(self.timeouts.transfer, what, fut))
            .await?;
        Ok((r, t0))
    }

    async fn lazy_dump(
        &self,
        run: &mut Run<'_>,
        i: u32,
        pre_copied: bool,
    ) -> Result<(Stopped, PathBuf, Instant)> {
        let port = free_port()?;
        // CRIU's lazy page server listens on every interface of this network
        // namespace: only loopback (our relay) may reach it.
        let guard = PortGuard::install(port)?;
        let spec = self.spec(run, i, pre_copied, pre_copied)?;
        let dir = spec.images_dir.clone();
        self.write_files(&dir, false).await?;
        // The page channel's handshake is done before the freeze: the
        // target keeps the link until its lazy-pages daemon asks for it.
        let pages = self
            .connect(phaul_transport::Channel::Pages, Some(run.sid))
            .await?;
        let (lazy, t0) = self
            .freeze_with(run, "the lazy dump", self.criu.lazy_dump(spec, port))
            .await?;
        // Be CRIU's one and only page-server client, at once: whatever
        // happens next, this connection is how the tree is resumed.
        let local = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|source| Error::Io {
                // Without a connection CRIU would wait forever; nothing can
                // resume the tree but ending CRIU's wait, so report loudly.
                what: format!("connecting to CRIU's lazy page server on port {port}"),
                source,
            })?;
        let _ = local.set_nodelay(true);
        if let Err(e) = reset_on_close(&local) {
            poison_direct(local).await;
            let _ = lazy.wait().await;
            self.release_network_lock(run.pid).await;
            return Err(e);
        }
        let (committed, committed_rx) = watch::channel(false);
        let relay = PageRelay::spawn_guarded(pages, local, committed_rx);
        let ticker = self.ticker(run, &relay);
        let stopped = Stopped::Lazy {
            lazy,
            relay,
            _guard: guard,
            committed,
            _ticker: ticker,
        };
        Ok((stopped, dir, t0))
    }

    async fn manager_lazy_dump(&self, run: &mut Run<'_>) -> Result<(Stopped, PathBuf, Instant)> {
        let (dir, work) = (super::images_dir(run, 0)?, run.dir.join("0.work"));
        mkdir(&work)?;
        // The manager's CRIU serves on loopback only (it is told the
        // address), so no port guard is needed.
        let port = free_port()?;
        let pages = self
            .connect(phaul_transport::Channel::Pages, Some(run.sid))
            .await?;
        let t0 = Instant::now();
        self.freezing(run.stats, t0)?;
        let (d, w) = (dir.clone(), work.clone());
        let tool = self
            .hook(move |h| h.dump_self_lazy(&d, &w, port))
            .await
            .map_err(|e| match e {
                Error::Htype(h) => crate::logs::manager_error(h, &[work.join("dump.log")]),
                other => other,
            })?;
        let dumping = tokio::task::spawn_blocking(move || tool.wait());
        let local = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(source) => {
                // The page server never got its client: it waits, so the
                // tool is ended and the kind resumes the tree.
                dumping.abort();
                self.undo_manager_dump().await;
                return Err(Error::Io {
                    what: format!("connecting to the manager's lazy page server on port {port}"),
                    source,
                });
            }
        };
        let _ = local.set_nodelay(true);
        reset_on_close(&local)?;
        let (committed, committed_rx) = watch::channel(false);
        let relay = PageRelay::spawn_guarded(pages, local, committed_rx);
        let ticker = self.ticker(run, &relay);
        let stopped = Stopped::ManagerLazy {
            dumping,
            work,
            relay,
            committed,
            _ticker: ticker,
        };
        Ok((stopped, dir, t0))
    }

    /// A manager's dump failed to start serving: the kind resumes its tree.
    async fn undo_manager_dump(&self) {
        if let Err(re) = self.undo(|h| h.resume_source()).await {
            warn!(error = %re, "resuming the source");
        }
    }

    /// After the commit: the source's copy ends (CRIU's dump finishes, or
    /// serves the rest of the memory first), and the final iteration is
    /// recorded.
    async fn end_source(
        &self,
        run: &mut Run<'_>,
        stopped: Stopped,
        i: u32,
        t0: Instant,
    ) -> Result<()> {
        let report = match stopped {
            Stopped::Dump {
                held,
                relay,
                pages_sent,
            } => {
                let st = held.commit().await?;
                let (sent, _) = relay
                    .finish(Duration::from_secs(5))
                    .await
                    .unwrap_or((pages_sent, 0));
                run.stats.add_bytes(sent.saturating_sub(pages_sent));
                iteration_report(i, "dump", &st.unwrap_or_default(), sent, t0.elapsed())
            }
            Stopped::Lazy {
                lazy,
                relay,
                _guard,
                _ticker,
                ..
            } => {
                self.enter_anyway(run.stats, Phase::LazyTransfer);
                let st = lazy.wait().await;
                let (sent, _) = relay
                    .finish(Duration::from_secs(10))
                    .await
                    .unwrap_or((0, 0));
                run.stats.add_bytes(sent);
                drop(_guard);
                let st = st.map_err(|e| lazy_failed(&e))?;
                let mut report =
                    iteration_report(i, "lazy-dump", &st.unwrap_or_default(), sent, t0.elapsed());
                report.frozen_us = frozen_us(run);
                report
            }
            Stopped::Manager { work } => {
                let st = self.criu.image_stats(&work, &run.dir.join("0"));
                iteration_report(0, "dump", &st, 0, t0.elapsed())
            }
            Stopped::ManagerLazy {
                dumping,
                work,
                relay,
                _ticker,
                ..
            } => {
                self.enter_anyway(run.stats, Phase::LazyTransfer);
                let done = dumping.await;
                let (sent, _) = relay
                    .finish(Duration::from_secs(10))
                    .await
                    .unwrap_or((0, 0));
                run.stats.add_bytes(sent);
                match done {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(lazy_failed(&Error::Htype(e))),
                    Err(e) => return Err(lazy_failed(&Error::Protocol(e.to_string()))),
                }
                let st = self.criu.image_stats(&work, &run.dir.join("0"));
                let mut report = iteration_report(0, "lazy-dump", &st, sent, t0.elapsed());
                report.frozen_us = frozen_us(run);
                report
            }
            Stopped::Stop => return Ok(()),
        };
        self.record(run, report);
        Ok(())
    }

    /// A failure before the commit: the source runs again, and the target
    /// drops its copy.
    async fn resume_source(&self, run: &mut Run<'_>, stopped: Stopped, why: &Error) {
        match stopped {
            Stopped::Dump { held, relay, .. } => {
                // The source first: the freeze limit counts, and the target
                // may be the one that hangs.
                if let Err(re) = held.rollback().await {
                    warn!(error = %re, "rolling the source back");
                }
                relay.stop();
            }
            Stopped::Lazy {
                lazy,
                relay,
                _guard,
                ..
            } => {
                // A manager's restore (LXC) runs the tree at once: it stops
                // there before it runs here again.
                let by_manager = self.htype.caps().restore_by == RestoreBy::Manager;
                if by_manager {
                    self.abort_target(&mut run.ctl, why).await;
                }
                relay.poison().await;
                match tokio::time::timeout(Duration::from_secs(30), lazy.wait()).await {
                    Ok(Ok(_)) => warn!("the lazy dump finished although it was rolled back"),
                    Ok(Err(_)) => info!("the source tree was resumed"),
                    Err(_) => warn!("the lazy dump did not end after the rollback"),
                }
                self.release_network_lock(run.pid).await;
                drop(_guard);
                if by_manager {
                    return;
                }
            }
            // A manager's copy and a restarted one run on their own on the
            // target: it must stop before the source runs again.
            Stopped::Manager { .. } => {
                self.abort_target(&mut run.ctl, why).await;
                self.undo_manager_dump().await;
                return;
            }
            Stopped::ManagerLazy { dumping, relay, .. } => {
                self.abort_target(&mut run.ctl, why).await;
                relay.poison().await;
                match tokio::time::timeout(Duration::from_secs(30), dumping).await {
                    Ok(Ok(Ok(()))) => warn!("the lazy dump finished although it was rolled back"),
                    Ok(_) => info!("the manager's lazy dump ended"),
                    Err(_) => warn!("the manager's lazy dump did not end after the rollback"),
                }
                self.undo_manager_dump().await;
                return;
            }
            Stopped::Stop => {
                self.abort_target(&mut run.ctl, why).await;
                if let Err(se) = self.undo(|h| h.start()).await {
                    warn!(error = %se, "starting it again on the source");
                }
                return;
            }
        }
        self.abort_target(&mut run.ctl, why).await;
    }
}

/// The target ran the tree, but the rest of its memory did not get there.
fn lazy_failed(e: &Error) -> Error {
    Error::Target(format!(
        "after the commit, sending the target the rest of the tree's memory failed ({}); the \
         target ends its copy, whose memory has holes, and CRIU resumes the source's copy if it \
         is still there",
        crate::target::error_chain(e)
    ))
}

/// Our freeze, in µs: CRIU's frozen_time is meaningless after a lazy dump
/// (it counts from an unset start).
fn frozen_us(run: &Run<'_>) -> u64 {
    run.stats
        .downtime_so_far()
        .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}
