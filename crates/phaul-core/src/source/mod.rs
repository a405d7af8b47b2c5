//! The source side: a migration of one thing to one target.
//!
//! [`Migration`] is built with the target's address, the link's
//! configuration and the htype; [`Migration::start`] runs it in the
//! background ([`MigrationRun`]: events, cancel, a typed end), and
//! [`Migration::run_typed`] drives it to its end in place.
//!
//! The source is never lost: until the target has the tree running, every
//! failure — target error, lost connection, timeout, [`CancelHandle`] —
//! resumes it. For a final dump that is CRIU's held `post-dump` answered
//! "failure"; for a lazy (post-copy) dump, whose `post-dump` has to be
//! answered before pages can be served, it is an invalid command written to
//! CRIU's page-server connection (see [`crate::pagestream`]). The commit
//! point is the target's answer to `Commit`: only then is the source's copy
//! ended. If that answer is lost, the source resumes (two copies may then
//! run, which is recoverable; none would not be).
//!
//! # Layout
//! - this file: [`Migration`], its builder, and the steps every mode shares
//!   (pre-flight, connecting, pre-copy's iterations, file-system passes,
//!   images, restore and commit);
//! - `finish.rs`: the final step, one template for every mode: stop the
//!   source, send the rest, restore and commit, or roll back;
//! - `lazy.rs`: post-copy's guard rails (the page server's port, the
//!   command that ends a dump that cannot be relayed);
//! - `progress.rs`: [`Progress`] events, their [`Event`] envelope, and the
//!   bytes ticker;
//! - `group.rs`: [`Group`], several migrations moved as one (a gate the
//!   members pass before any freezes and before any commits);
//! - `handle.rs`: [`MigrationRun`], a migration started in the background,
//!   and [`Failure`], its typed end.

mod finish;
mod group;
mod handle;
mod lazy;
mod progress;

pub use group::{Group, GroupCancel, GroupFailure, GroupReport, GroupRun};
pub use handle::{Failure, MigrationRun};
pub use progress::{BYTES_TICK, Event, Progress};

use finish::Final;
use progress::BytesTicker;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criu_rpc::proto::DumpStatsEntry;
use phaul_htypes::{DumpBy, Htype};
use phaul_transport::images::send_dir_over;
use phaul_transport::proto::{self, request, response};
use phaul_transport::{Channel, ControlClient, Endpoint, Link, LinkConfig, SessionId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::criu::{DumpSpec, SourceCriu};
use crate::error::{Error, Result};
use crate::fs::{FsChoice, Pass, SourceFs};
use crate::mode::{self, HostCaps, Mode, ModeChoice};
use crate::pagestream::{PageRelay, socketpair};
use crate::plan::{Files, Plan};
use crate::policy::{ConvergencePolicy, Decision, IterationSample, PhaulRules, Probe};
use crate::stats::{IterationReport, Ongoing, Phase, Report};
use phaul_fs::FsDriver;
/// Cancels a running [`Migration`] from elsewhere.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<watch::Sender<bool>>);

impl CancelHandle {
    /// Asks the migration to stop; it rolls back unless it has already
    /// committed.
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }

    /// A handle, and what its migration watches.
    pub(crate) fn pair() -> (Self, watch::Receiver<bool>) {
        let (tx, rx) = watch::channel(false);
        (Self(Arc::new(tx)), rx)
    }
}

/// Timeouts of a migration's steps.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting and one control request.
    pub request: Duration,
    /// A dump, an image transfer or a restore (these scale with memory).
    pub transfer: Duration,
    /// How long the probe before pre-copy (the tree's dirty rate, the
    /// link's speed, taken during the pre-flight) stays good: when more
    /// than this passes before the first pre-dump (a wait in a busy
    /// target's queue, at a group's gate, a long first file-system pass),
    /// both are measured again. Default 5 s, five times the dirty rate's
    /// own window.
    pub probe_valid: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            transfer: Duration::from_secs(600),
            probe_valid: Duration::from_secs(5),
        }
    }
}

/// How long the source may stay frozen unless told otherwise: far longer
/// than a healthy migration of a few GiB takes here, far shorter than a
/// production service should hang because a peer is stuck.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// How long the dirty rate is first read before the first pre-dump: short
/// enough to end before the pre-flight's checks do, so that it never holds
/// up a hybrid's decision; read again over [`DIRTY_PROBE`] where a rate so
/// read could be off enough to change that decision
/// ([`crate::policy::remeasure_dirty`]).
const DIRTY_GLANCE: Duration = Duration::from_millis(250);
/// How long the dirty rate is read when the glance could not decide: long
/// enough to see a workload's rhythm, short beside a pre-dump of any size.
const DIRTY_PROBE: Duration = Duration::from_secs(1);
/// What the link's probe sends at most, while the dirty rate is measured:
/// enough to time a fast link.
const LINK_PROBE_BYTES: u64 = 8 << 20;
/// How long the link's probe sends at most: a slow link is timed on what
/// went out meanwhile. At 8 MiB (a second and more on an emulated guest's
/// link) the probe outlasted the pre-flight checks it runs beside.
const LINK_PROBE_TIME: Duration = Duration::from_millis(300);

/// A migration of one htype to one target. `C` is how it reaches CRIU:
/// the real one unless a test puts a stand-in there ([`Migration::criu`]),
/// so an embedder names just `Migration`.
pub struct Migration<C: SourceCriu = crate::criu::Criu> {
    criu: C,
    target: String,
    link: LinkConfig,
    htype: Arc<dyn Htype>,
    mode: Mode,
    fallback: bool,
    policy: Box<dyn ConvergencePolicy>,
    work_dir: PathBuf,
    keep_images: bool,
    images_in_ram: bool,
    skip_cpu_check: bool,
    skip_version_check: bool,
    force: bool,
    timeouts: Timeouts,
    freeze_timeout: Duration,
    /// When the source froze, plus `freeze_timeout`: set once, at the
    /// freeze (a migration runs once).
    freeze_deadline: std::sync::OnceLock<tokio::time::Instant>,
    /// When the first event went out (the run began): events carry the
    /// time since.
    started: std::sync::OnceLock<std::time::Instant>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    events: Option<mpsc::UnboundedSender<Event>>,
    /// Shared with the target (in `Begin`), the report and every event.
    id: String,
    fs: FsChoice,
    cancel_tx: Arc<watch::Sender<bool>>,
    cancel_rx: watch::Receiver<bool>,
    /// The group this migration is a member of, if any.
    group: Option<group::Gate>,
    /// Run between the target's restore and the commit.
    switchover: Option<SwitchoverHook>,
}

/// What [`Migration::switchover`] runs: a future that moves what must move
/// before the restored tree runs, or says why it could not.
pub type SwitchoverHook = Arc<
    dyn Fn() -> std::pin::Pin<
            Box<dyn std::future::Future<Output = std::result::Result<(), String>> + Send>,
        > + Send
        + Sync,
>;

impl<C: SourceCriu> std::fmt::Debug for Migration<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("target", &self.target)
            .field("htype", &self.htype)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl Migration {
    /// Migrates `htype` to the service at `target` with `criu` from `PATH`
    /// ([`Criu::default`](crate::criu::Criu)); otherwise as
    /// [`Migration::new`].
    pub fn to(target: impl Into<String>, link: LinkConfig, htype: Box<dyn Htype>) -> Self {
        Self::new(crate::criu::Criu::default(), target, link, htype)
    }
}

impl<C: SourceCriu> Migration<C> {
    /// The same migration reaching CRIU through `criu` instead (another
    /// binary or log level, or a stand-in in tests).
    pub fn criu<D: SourceCriu>(self, criu: D) -> Migration<D> {
        Migration {
            criu,
            target: self.target,
            link: self.link,
            htype: self.htype,
            mode: self.mode,
            fallback: self.fallback,
            policy: self.policy,
            work_dir: self.work_dir,
            keep_images: self.keep_images,
            images_in_ram: self.images_in_ram,
            skip_cpu_check: self.skip_cpu_check,
            skip_version_check: self.skip_version_check,
            force: self.force,
            timeouts: self.timeouts,
            freeze_timeout: self.freeze_timeout,
            freeze_deadline: self.freeze_deadline,
            started: self.started,
            progress: self.progress,
            events: self.events,
            id: self.id,
            fs: self.fs,
            cancel_tx: self.cancel_tx,
            cancel_rx: self.cancel_rx,
            group: self.group,
            switchover: self.switchover,
        }
    }

    /// Migrates `htype` to the service at `target` (`HOST:PORT` or
    /// `unix:PATH`), mode `auto`, P.Haul's convergence rules. (`fd:N`,
    /// which phaul-transport takes for one link, is refused here: a
    /// migration needs a connection per channel.)
    pub fn new(
        criu: C,
        target: impl Into<String>,
        link: LinkConfig,
        htype: Box<dyn Htype>,
    ) -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            criu,
            target: target.into(),
            link,
            htype: Arc::from(htype),
            mode: Mode::Auto,
            fallback: false,
            policy: Box::new(PhaulRules::default()),
            work_dir: std::env::temp_dir().join("phaul"),
            keep_images: false,
            images_in_ram: true,
            skip_cpu_check: false,
            skip_version_check: false,
            force: false,
            timeouts: Timeouts::default(),
            freeze_timeout: DEFAULT_FREEZE_TIMEOUT,
            freeze_deadline: std::sync::OnceLock::new(),
            started: std::sync::OnceLock::new(),
            progress: None,
            events: None,
            id: new_id(),
            fs: FsChoice::default(),
            cancel_tx: Arc::new(tx),
            cancel_rx: rx,
            group: None,
            switchover: None,
        }
    }

    /// The longest the source may stay frozen ([`DEFAULT_FREEZE_TIMEOUT`]
    /// unless set). When the target has not let the tree run by then, the
    /// migration gives up, rolls back and resumes the source; the target
    /// gets the rest of the limit as a lease on its commit, so a target
    /// that wakes up later does not run a second copy.
    pub fn freeze_timeout(mut self, limit: Duration) -> Self {
        self.freeze_timeout = limit;
        self
    }

    /// Runs `hook` once the target has restored the tree and holds it,
    /// before the commit lets it run: where an orchestrator moves the
    /// tree's address or network over (QEMU's pre-switchover pause), so
    /// that nothing the restored tree sends at once is lost. Every kind's
    /// copy is held there: a `pid` tree by CRIU for the engine, an LXC or
    /// runc container by an action script in the CRIU configuration its
    /// manager passes on (not a restart's, started anew). The hook's time
    /// is part of the downtime and of
    /// the freeze limit; its error rolls the migration back (the hook's
    /// caller then undoes what it moved).
    pub fn switchover<F, Fut>(mut self, hook: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = std::result::Result<(), String>> + Send + 'static,
    {
        self.switchover = Some(Arc::new(move || Box::pin(hook())));
        self
    }

    /// The mode to use (`auto` picks the best both hosts support).
    pub fn mode(mut self, mode: Mode) -> Self {
        self.mode = mode;
        self
    }

    /// When the mode asked for is not possible here, use the best one that
    /// is instead of failing.
    pub fn fallback(mut self, on: bool) -> Self {
        self.fallback = on;
        self
    }

    /// When pre-copy stops iterating.
    pub fn policy(mut self, policy: Box<dyn ConvergencePolicy>) -> Self {
        self.policy = policy;
        self
    }

    /// Where the source keeps its images (a directory per migration is
    /// made inside).
    pub fn work_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.work_dir = dir.as_ref().to_path_buf();
        self
    }

    /// Keep the source's images afterwards.
    pub fn keep_images(mut self, keep: bool) -> Self {
        self.keep_images = keep;
        self
    }

    /// Whether a post-copy's images are written to RAM (`/dev/shm`) (by
    /// default they are, unless kept afterwards): its dump writes them
    /// inside the freeze, and they hold no memory pages. Off, they go to
    /// the work directory as every other mode's do.
    pub fn images_in_ram(mut self, on: bool) -> Self {
        self.images_in_ram = on;
        self
    }

    /// Skip the CPU compatibility check.
    pub fn skip_cpu_check(mut self, skip: bool) -> Self {
        self.skip_cpu_check = skip;
        self
    }

    /// Skip the CRIU version check (source not newer than target).
    pub fn skip_version_check(mut self, skip: bool) -> Self {
        self.skip_version_check = skip;
        self
    }

    /// Run the pre-flight checks, but go on when the CRIU version or CPU
    /// check fails: each failure is logged and reported as a
    /// [`Progress::Warning`] instead of ending the migration. (A restore
    /// that then fails on the target still rolls back.)
    pub fn force(mut self, force: bool) -> Self {
        self.force = force;
        self
    }

    /// Step timeouts.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// How the htype's file system travels (if it has one): `native` by
    /// default.
    pub fn fs(mut self, choice: FsChoice) -> Self {
        self.fs = choice;
        self
    }

    /// Receive [`Progress`] events.
    pub fn progress(mut self, tx: mpsc::UnboundedSender<Progress>) -> Self {
        self.progress = Some(tx);
        self
    }

    /// A handle that cancels this migration.
    pub fn cancel_handle(&self) -> CancelHandle {
        CancelHandle(self.cancel_tx.clone())
    }

    /// The migration's id: in its report, its events and the target's logs.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Gives the migration an id of the caller's (an orchestrator's job
    /// name): at most 64 letters, digits, `.`, `_` or `-`.
    pub fn with_id(mut self, id: &str) -> Result<Self> {
        let ok = !id.is_empty()
            && id.len() <= 64
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
        if !ok {
            return Err(Error::Protocol(format!(
                "bad migration id {id:?}: at most 64 letters, digits, '.', '_' or '-'"
            )));
        }
        id.clone_into(&mut self.id);
        Ok(self)
    }

    fn emit(&self, p: Progress) {
        if let Some(emit) = self.emitter() {
            emit(p);
        }
    }

    /// What sends an event to every listener (the [`Event`] stream of
    /// [`Migration::start`] and the [`Progress`] channel), usable from a
    /// task of its own; it says whether one is still there. `None` when
    /// there are none.
    fn emitter(&self) -> Option<impl Fn(Progress) -> bool + Send + 'static> {
        if self.events.is_none() && self.progress.is_none() {
            return None;
        }
        let (events, progress) = (self.events.clone(), self.progress.clone());
        let id = self.id.clone();
        let started = *self.started.get_or_init(std::time::Instant::now);
        Some(move |p: Progress| {
            let mut heard = false;
            if let Some(tx) = &events {
                heard |= tx
                    .send(Event {
                        schema: Event::SCHEMA,
                        migration: id.clone(),
                        elapsed_ms: started.elapsed().as_secs_f64() * 1000.0,
                        progress: p.clone(),
                    })
                    .is_ok();
            }
            if let Some(tx) = &progress {
                heard |= tx.send(p).is_ok();
            }
            heard
        })
    }

    /// Enters the next phase. The record refuses a phase out of order, and
    /// so does the migration: such a fault fails it (and rolls back) rather
    /// than go on from a state no one planned.
    fn enter(&self, stats: &mut Ongoing, phase: Phase) -> Result<()> {
        stats.enter(phase)?;
        self.emit(Progress::Phase(phase));
        Ok(())
    }

    /// Enters a phase that must run whatever the record says: a rollback,
    /// or memory following after the commit.
    fn enter_anyway(&self, stats: &mut Ongoing, phase: Phase) {
        if let Err(e) = stats.enter(phase) {
            warn!(error = %e, "statistics");
        }
        self.emit(Progress::Phase(phase));
    }

    /// The source freezes now: from here on, [`Migration::while_frozen`]
    /// bounds every step by the freeze limit.
    fn freezing(&self, stats: &mut Ongoing, t0: Instant) -> Result<()> {
        stats.source_frozen(t0)?;
        stats.set_freeze_timeout(self.freeze_timeout);
        if let Some(g) = &self.group {
            g.froze(t0);
        }
        let _ = self
            .freeze_deadline
            .set(tokio::time::Instant::from_std(t0) + self.freeze_timeout);
        self.emit(Progress::Frozen);
        Ok(())
    }

    fn deadline(&self) -> Option<tokio::time::Instant> {
        self.freeze_deadline.get().copied()
    }

    /// Runs `fut`, a step taken while the source is frozen, unless the
    /// freeze limit passes first.
    async fn while_frozen<T>(
        &self,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        match self.deadline() {
            Some(d) => tokio::time::timeout_at(d, fut)
                .await
                .unwrap_or(Err(Error::FreezeTimeout {
                    limit: self.freeze_timeout,
                })),
            None => fut.await,
        }
    }

    /// The lease a commit gets: what is left of the freeze limit, less a
    /// margin for the target's answer to come back; `Err` when too little
    /// is left to commit at all.
    fn commit_lease(&self) -> Result<u64> {
        let Some(d) = self.deadline() else {
            return Ok(0);
        };
        let margin = (self.freeze_timeout / 10).min(Duration::from_secs(1));
        let left = d.saturating_duration_since(tokio::time::Instant::now());
        match left.checked_sub(margin) {
            Some(l) if !l.is_zero() => Ok(u64::try_from(l.as_millis()).unwrap_or(u64::MAX).max(1)),
            _ => Err(Error::FreezeTimeout {
                limit: self.freeze_timeout,
            }),
        }
    }

    /// Runs `fut` unless the migration is cancelled first.
    async fn step<T>(
        &self,
        limit: Duration,
        what: &str,
        fut: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        let mut rx = self.cancel_rx.clone();
        if *rx.borrow() {
            return Err(Error::Cancelled);
        }
        tokio::select! {
            r = tokio::time::timeout(limit, fut) => r.map_err(|_| Error::Timeout(what.to_string()))?,
            _ = rx.wait_for(|c| *c) => Err(Error::Cancelled),
        }
    }

    /// Runs the migration to its end and returns its report, successful or
    /// not (see [`Migration::run_typed`] for the typed end).
    pub async fn run(self) -> Report {
        match self.run_typed().await {
            Ok(r) => r,
            Err(f) => *f.report,
        }
    }

    /// Runs the migration to its end: `Ok` with the report when the tree
    /// runs on the target, else the [`Failure`], which says how it ended
    /// and keeps the typed error.
    pub async fn run_typed(self) -> std::result::Result<Report, Failure> {
        let provisional = ModeChoice {
            mode: self.mode,
            requested: self.mode,
            reason: "not chosen yet".into(),
        };
        let mut stats = Ongoing::start(provisional);
        stats.set_migration_id(&self.id);
        crate::ramdir::remove_stale(Path::new(crate::ramdir::BASE));
        let dir = self
            .work_dir
            .join(format!("{}-{}", std::process::id(), unique()));
        let res = self.drive(&mut stats, &dir).await;
        if let Err(e) = &res {
            self.group_failed(e);
        }
        self.tidy(&mut stats, &dir, res.is_ok());
        let outcome = stats.outcome(res.is_ok());
        self.emit(Progress::Phase(Phase::Done));
        match res {
            Ok(()) => Ok(stats.finalize(Ok(()))),
            Err(error) => {
                let text = crate::target::error_chain(&error);
                warn!(migration = %self.id, error = %text, ?outcome, "migration failed");
                Err(Failure {
                    outcome,
                    error,
                    report: Box::new(stats.finalize(Err(text))),
                })
            }
        }
    }

    /// A dry run: checks both hosts (CRIU versions, features, the CPU, a
    /// CRIU that can dump the tree's sockets) and returns the mode this
    /// migration would use and why, or why it cannot start. Nothing is
    /// frozen or sent but the checks; the target keeps nothing.
    pub async fn dry_run(&self) -> Result<ModeChoice> {
        let provisional = ModeChoice {
            mode: self.mode,
            requested: self.mode,
            reason: "not chosen yet".into(),
        };
        let mut stats = Ongoing::start(provisional);
        self.hook(|h| h.check()).await?;
        let pid = self.hook(|h| h.root_pid()).await?;
        let dir = self
            .work_dir
            .join(format!("{}-{}-dry", std::process::id(), unique()));
        mkdir(&dir)?;
        let checked = async {
            let link = self.connect(Channel::Control, None).await?;
            let mut ctl = ControlClient::new(link);
            // A dry run dumps nothing: no probe.
            let plan = self.preflight(&mut stats, &mut ctl, pid, &dir, false).await;
            ctl.close().await;
            plan.map(|(choice, ..)| choice)
        }
        .await;
        let _ = std::fs::remove_dir_all(&dir);
        checked
    }

    /// Starts the migration in the background (on the current tokio
    /// runtime): its events come from the handle, and awaiting the handle
    /// gives its typed end.
    pub fn start(mut self) -> MigrationRun {
        let (tx, events) = mpsc::unbounded_channel();
        self.events = Some(tx);
        let id = self.id.clone();
        let cancel = self.cancel_handle();
        MigrationRun {
            id,
            events,
            cancel,
            task: tokio::spawn(self.run_typed()),
        }
    }

    /// What stays of the migration's directory: everything with
    /// `keep_images`; after a failure CRIU's logs (the record of why it
    /// failed; the images are the tree's memory and only fill the disk),
    /// named in the report; else nothing.
    fn tidy(&self, stats: &mut Ongoing, dir: &Path, succeeded: bool) {
        let kept = match (succeeded, self.keep_images) {
            (_, true) => dir.exists(),
            (true, false) => false,
            // Refused before anything was written: nothing to keep.
            (false, false) if !dir.exists() => false,
            (false, false) => match crate::logs::keep_only_logs(dir) {
                Ok(n) => n > 0,
                Err(e) => {
                    warn!(dir = %dir.display(), error = %e, "could not trim the failed migration's directory");
                    false
                }
            },
        };
        if !kept {
            let _ = std::fs::remove_dir_all(dir);
        } else if !succeeded {
            stats.set_logs(dir);
        }
    }

    /// After a lazy dump was rolled back and the tree resumed: CRIU left
    /// its network lock in place (see [`crate::netlock`]).
    async fn release_network_lock(&self, pid: i32) {
        let _ = tokio::task::spawn_blocking(move || crate::netlock::release(pid)).await;
    }

    /// Refuses, before anything is frozen, a CRIU that cannot dump the
    /// tree's TCP and UDP sockets on this kernel (see [`crate::sockets`]).
    async fn check_inet_sockets(&self, version: &str, root: i32, dir: &Path) -> Result<()> {
        let release = crate::sockets::kernel_release();
        if !crate::sockets::inet_dump_doubtful(version, &release) {
            return Ok(());
        }
        let held = crate::sockets::inet_sockets(root, 3);
        if held.is_empty() {
            return Ok(());
        }
        let scratch = dir.join("inet-probe");
        mkdir(&scratch)?;
        let Err(why) = self.criu.probe_inet_dump(&scratch).await else {
            return Ok(());
        };
        Err(Error::Preflight(format!(
            "CRIU {version} cannot dump TCP or UDP sockets on Linux {release}, and this tree \
             holds some ({}). Linux 6.16 and later answer SO_PASSCRED/SO_PASSSEC only for unix \
             and netlink sockets, and CRIU before 4.2 asks every socket; install CRIU 4.2 or \
             later (scripts/setup.sh does). A dump of a test socket failed: {}",
            held.join(", "),
            crate::target::error_chain(&why)
        )))
    }

    /// Pre-flight: both hosts' CRIU versions, features and CPUs, checked
    /// before anything is frozen; then the plan (the mode and why), and
    /// whether the dumps lock the network with nftables (both hosts can).
    ///
    /// With `probing` (see [`Self::probes`]), the probe before the first
    /// pre-dump starts here and runs alongside the checks: the tree's
    /// dirty rate from the start, the link's speed while this host's CRIU
    /// is asked (a target of link version 5 serves it before `Begin`).
    /// Measured after `Begin`, it added a second or more to every hybrid.
    async fn preflight(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        pid: i32,
        dir: &Path,
        probing: bool,
    ) -> Result<(ModeChoice, bool, EarlyProbe)> {
        let mut early = EarlyProbe::default();
        if probing {
            early.dirty = Some(tokio::spawn(self.criu.dirty_rate(pid, DIRTY_GLANCE)));
        }
        let sid = ctl.link().session();
        let timing_link =
            probing && ctl.link().version() >= phaul_transport::frame::EARLY_PROBE_VERSION;
        let link = async {
            if timing_link {
                Some(self.link_rate(ctl, sid).await)
            } else {
                None
            }
        };
        let (checks, link) = tokio::join!(self.local_checks(pid, dir), link);
        early.link = link;
        let (version, caps, cpuinfo) = checks?;
        let reply = match self
            .call(
                ctl,
                request::Body::Preflight(proto::Preflight {
                    criu_version: version.clone(),
                    mem_track: caps.mem_track,
                    lazy_pages: caps.lazy_pages,
                    cpuinfo,
                    nftables_lock: caps.nftables_lock,
                }),
            )
            .await?
        {
            response::Body::Preflight(r) => r,
            other => return Err(unexpected("Preflight", &other)),
        };
        let mut failed = Vec::new();
        let parse = |v: &str| {
            v.parse::<criu_rpc::Version>()
                .map_err(|e| Error::Preflight(e.to_string()))
        };
        if !self.skip_version_check
            && parse(&version)?.as_number() > parse(&reply.criu_version)?.as_number()
        {
            failed.push(format!(
                "CRIU {version} here is newer than CRIU {} on the target; images may not restore there",
                reply.criu_version
            ));
        }
        if !self.skip_cpu_check && !reply.cpu_compatible {
            failed.push(format!(
                "the target's CPU cannot run this tree: {}",
                reply.cpu_error
            ));
        }
        if !self.force {
            if let Some(first) = failed.into_iter().next() {
                return Err(Error::Preflight(first));
            }
        } else {
            for why in failed {
                warn!(check = %why, "pre-flight check failed; going on (forced)");
                self.emit(Progress::Warning(why));
            }
        }
        let target_caps = HostCaps {
            mem_track: reply.mem_track,
            lazy_pages: reply.lazy_pages,
            nftables_lock: reply.nftables_lock,
        };
        let kind = mode::KindCaps::of(self.htype.as_ref());
        let choice = mode::plan(self.mode, self.fallback, caps, target_caps, kind)?;
        info!(mode = %choice.mode, reason = %choice.reason, "mode chosen");
        stats.set_mode(choice.clone());
        self.emit(Progress::Mode(choice.clone()));
        let nftables = caps.nftables_lock && target_caps.nftables_lock;
        info!(
            nftables,
            "network lock chosen (nftables when both hosts' CRIU can, else iptables)"
        );
        if probing {
            early.at = Some(Instant::now());
        }
        Ok((choice, nftables, early))
    }

    /// Whether this migration may pre-dump, and so probes first: pre-copy
    /// and hybrid, and `auto`, which may choose them, where this kernel
    /// tracks dirty pages (elsewhere the pre-flight refuses them or falls
    /// back to another mode).
    fn probes(&self) -> bool {
        match self.mode {
            Mode::PreCopy | Mode::Hybrid | Mode::Auto => self.criu.tracks_dirty_pages(),
            Mode::StopCopy | Mode::PostCopy | Mode::Restart => false,
        }
    }

    /// This host's side of the pre-flight: CRIU's version (and whether it
    /// can dump the tree's sockets), its features, and the CPU the tree
    /// runs on.
    async fn local_checks(&self, pid: i32, dir: &Path) -> Result<(String, HostCaps, Vec<u8>)> {
        let version = self.criu.version().await?;
        self.check_inet_sockets(&version, pid, dir).await?;
        let caps = self.criu.features().await?;
        let scratch = dir.join("cpuinfo");
        mkdir(&scratch)?;
        let cpuinfo = if self.skip_cpu_check {
            Vec::new()
        } else {
            self.criu.cpuinfo(&scratch).await?
        };
        Ok((version, caps, cpuinfo))
    }

    async fn drive(&self, stats: &mut Ongoing, dir: &Path) -> Result<()> {
        self.enter(stats, Phase::Preflight)?;
        self.hook(|h| h.check()).await?;
        // Asked once: kinds look it up with their tools (lxc-info).
        let pid = self.hook(|h| h.root_pid()).await?;
        stats.set_source_pid(pid);
        if self.progress.is_some() || self.events.is_some() {
            let expected = tokio::task::spawn_blocking(move || progress::tree_memory(pid))
                .await
                .unwrap_or(0);
            self.emit(Progress::Expected(expected));
        }
        mkdir(dir)?;
        // An inherited descriptor is one connection, and a migration opens
        // one per channel: parsing `fd:N` again for each would wrap the same
        // socket (and close it) several times.
        if self.target.starts_with("fd:") {
            return Err(Error::Link(phaul_transport::Error::Address(format!(
                "{}: a migration opens a connection per channel (control, images, pages, \
                 file system); give the service as HOST:PORT or unix:PATH",
                self.target
            ))));
        }
        let link = self.connect(Channel::Control, None).await?;
        let sid = link.session();
        let mut ctl = ControlClient::new(link);
        let (choice, nftables, early) = self
            .preflight(stats, &mut ctl, pid, dir, self.probes())
            .await?;
        // A tree in its host's namespace is locked per connection: none
        // costs nothing under iptables but a table under nftables, many
        // cost a program each under iptables (see netlock::own_netns).
        let nftables_lock =
            nftables && (crate::netlock::own_netns(pid) || crate::sockets::has_tcp_connection(pid));
        let fs_root = self.htype.fs_root();
        let files = match fs_root {
            Some(_) => crate::fs::files(&self.fs),
            None => Files::None,
        };
        let plan = Plan::new(choice.mode, self.htype.caps(), files);
        let mut begin = proto::Begin {
            htype: self.htype.kind().to_string(),
            params: self.htype.params().into_iter().collect(),
            migration_id: self.id.clone(),
            ..Default::default()
        };
        plan.to_wire(&mut begin);
        let learned = match self.call(&mut ctl, request::Body::Begin(begin)).await? {
            response::Body::Begun(b) => Learned {
                overhead_us: b.overhead_us,
                page_in: b.page_in_bytes_per_s,
                beyond_restore_us: b.overhead_beyond_restore_us,
            },
            other => return Err(unexpected("Begin", &other)),
        };
        if let Err(e) = self.group_pass(group::Stage::Checked).await {
            ctl.close().await;
            return Err(e);
        }
        let images = self.connect(Channel::Images, Some(sid)).await?;
        let fs = match (&fs_root, &self.fs) {
            (None, _) => None,
            (Some(_), FsChoice::Shared) => Some(SourceFs::Shared(phaul_fs::Shared)),
            (Some(root), choice) => {
                let link = self.connect(Channel::Fs, Some(sid)).await?;
                Some(SourceFs::open(choice, link, root.clone()).map_err(Error::Fs)?)
            }
        };
        let mut run = Run {
            stats,
            ctl,
            images,
            sid,
            pid,
            dir: dir.to_path_buf(),
            force_irmap: !fs.as_ref().is_none_or(FsDriver::inodes_survive),
            nftables_lock,
            fs,
            learned,
            tree_pages: 0,
            bandwidth: None,
            transfer: None,
            ram_images: plan.images_in_memory() && self.images_in_ram && !self.keep_images,
            ram: Vec::new(),
            replay: None,
            early,
        };
        // Held until the end, so CRIU's breakpoints find the kernel's hooks
        // on (see `schedhooks`).
        let _hooks = crate::schedhooks::SchedHooks::hold().await;
        // The first pass, while the tree runs: the bulk of the files.
        let mut res = self.fs_pass(&mut run, Pass::First).await.map(|_| ());
        if res.is_ok() {
            res = self.run_mode(&mut run, plan).await;
        }
        // Close both channels cleanly, so the target sees an orderly end.
        let _ = run.images.writer.shutdown().await;
        run.ctl.close().await;
        res
    }

    /// Opens one of the migration's channels to the target.
    async fn connect(&self, channel: Channel, sid: Option<SessionId>) -> Result<Link> {
        let what = match channel {
            Channel::Control => "connecting to the target",
            Channel::Images => "opening the image channel",
            Channel::Pages => "opening a page channel",
            _ => "opening the file-system channel",
        };
        self.step(self.timeouts.request, what, async {
            Link::connect(Endpoint::parse(&self.target)?, &self.link, channel, sid)
                .await
                .map_err(Error::Link)
        })
        .await
    }

    /// Each mode is a way to reach the final step: pre-copy and hybrid
    /// first iterate, restart first syncs files.
    async fn run_mode(&self, run: &mut Run<'_>, plan: Plan) -> Result<()> {
        let (stop_copy, post_copy) = match self.htype.caps().dump_by {
            DumpBy::Manager => (Final::Manager, Final::ManagerLazy),
            DumpBy::Criu => (Final::Dump, Final::Lazy),
        };
        match plan.mode {
            Mode::StopCopy => self.final_step(run, stop_copy, 0, false).await,
            Mode::PostCopy => self.final_step(run, post_copy, 0, false).await,
            // With no pre-dump done (the probe said none would help), the
            // final step has no parent.
            Mode::PreCopy => {
                let (n, _) = self.pre_copy(run).await?;
                self.final_step(run, Final::Dump, n, n > 0).await
            }
            Mode::Hybrid => {
                let (n, decision) = self.pre_copy(run).await?;
                let how = match decision {
                    Decision::Converged(_) => Final::Dump,
                    _ => Final::Lazy,
                };
                if how == Final::Lazy {
                    // A lazy dump's downtime is not the last dirty set's.
                    run.transfer = None;
                    self.keep_pagemaps(run, n).await;
                }
                self.final_step(run, how, n, n > 0).await
            }
            // The plan has checked that the kind can restart.
            Mode::Restart => {
                self.restart_passes(run).await?;
                self.final_step(run, Final::Stop, 0, false).await
            }
            Mode::Auto => Err(Error::Protocol("auto was not resolved to a mode".into())),
        }
    }

    async fn call(&self, ctl: &mut ControlClient, body: request::Body) -> Result<response::Body> {
        let limit = match body {
            request::Body::Restore(_) | request::Body::Images(_) | request::Body::Commit(_) => {
                self.timeouts.transfer
            }
            _ => self.timeouts.request,
        };
        self.step(limit, "a request to the target", async {
            ctl.call(body).await.map_err(remote)
        })
        .await
    }

    /// A page channel, and the target's page server for iteration `i`
    /// behind it; returns our end of the relay CRIU writes into.
    async fn page_server(
        &self,
        run: &mut Run<'_>,
        i: u32,
        has_parent: bool,
    ) -> Result<(std::os::fd::OwnedFd, PageRelay)> {
        let pages = self.connect(Channel::Pages, Some(run.sid)).await?;
        self.call(
            &mut run.ctl,
            request::Body::StartPageServer(proto::StartPageServer {
                iteration: i,
                has_parent,
            }),
        )
        .await?;
        let (criu_end, ours) = socketpair()?;
        Ok((criu_end, PageRelay::spawn(pages, ours)))
    }

    fn spec(&self, run: &mut Run<'_>, i: u32, parent: bool, track_mem: bool) -> Result<DumpSpec> {
        let images_dir = images_dir(run, i)?;
        let work_dir = run.dir.join(format!("{i}.work"));
        mkdir(&work_dir)?;
        Ok(DumpSpec {
            pid: run.pid,
            images_dir,
            work_dir,
            parent: (parent && i > 0).then(|| format!("../{}", i - 1)),
            track_mem,
            options: {
                let mut o = self.htype.dump_options();
                o.force_irmap |= run.force_irmap;
                o.network_lock_nftables = run.nftables_lock;
                o
            },
            iteration: i,
        })
    }

    /// Pre-dumps until the policy says stop; returns the next iteration's
    /// number and the last decision.
    async fn pre_copy(&self, run: &mut Run<'_>) -> Result<(u32, Decision)> {
        self.enter(run.stats, Phase::PreCopy)?;
        if let Some(decision) = self.probe(run).await.filter(Decision::is_final) {
            info!(?decision, "no pre-dump");
            self.emit(Progress::Decision(decision.clone()));
            return Ok((0, decision));
        }
        let mut history: Vec<IterationSample> = Vec::new();
        for i in 0u32.. {
            // A group that has failed needs no more pre-dumps from this member.
            self.group_ok()?;
            let (criu_end, relay) = self.page_server(run, i, i > 0).await?;
            let _ticker = self.ticker(run, &relay);
            let spec = self.spec(run, i, true, true)?;
            let t0 = Instant::now();
            let st = self
                .step(
                    self.timeouts.transfer,
                    "a pre-dump",
                    self.criu.pre_dump(spec, criu_end),
                )
                .await;
            let (st, relay) = or_stop(st, relay)?;
            let (sent, _) = relay.finish(Duration::from_secs(10)).await?;
            run.stats.add_bytes(sent);
            let report = iteration_report(i, "pre-dump", &st, sent, t0.elapsed());
            self.record(run, report.clone());
            self.emit(Progress::Bytes(run.stats.bytes()));
            // The file system follows memory, iteration by iteration.
            self.fs_pass(run, Pass::Iteration).await?;
            run.tree_pages = report.pages_scanned;
            history.push(IterationSample {
                overhead_us: run.learned.overhead_us(report.pages_scanned),
                restore_estimate_us: run.learned.restore_us(report.pages_scanned),
                ..IterationSample::from(&report)
            });
            let decision = self.policy.decide(&history);
            run.stats
                .set_predicted_downtime(self.policy.predicted_downtime(&history));
            run.bandwidth = crate::policy::measured_bandwidth(&history);
            info!(
                iteration = i,
                pages = st.pages_written,
                ?decision,
                "pre-dump done"
            );
            self.emit(Progress::Decision(decision.clone()));
            if decision != Decision::Continue {
                return Ok((i + 1, decision));
            }
        }
        unreachable!("the loop returns")
    }

    /// Before the first pre-dump: the tree's dirty rate against the link's
    /// speed, put to the policy ([`ConvergencePolicy::before_first`]);
    /// `None` when the seam cannot measure it or the measure failed (then
    /// pre-copy goes on as if it could help).
    async fn probe(&self, run: &mut Run<'_>) -> Option<Decision> {
        let pid = run.pid;
        let early = std::mem::take(&mut run.early)
            .fresh(self.timeouts.probe_valid)
            .await;
        let contended = early.link.is_some();
        let dirty = async {
            match early.dirty {
                Some(measuring) => measuring
                    .await
                    .map_err(|e| Error::Protocol(format!("the dirty-rate probe vanished: {e}")))?,
                None => self.criu.dirty_rate(pid, DIRTY_GLANCE).await,
            }
        };
        let link = async {
            match early.link {
                Some(timed) => timed,
                None => self.link_rate(&mut run.ctl, run.sid).await,
            }
        };
        let (dirty, link) = tokio::join!(dirty, link);
        let mut probe = match (dirty, link) {
            (Ok(Some(dirty)), Ok(Some(link_bytes_per_sec))) => Probe {
                dirty,
                link_bytes_per_sec,
            },
            (Ok(None), _) | (_, Ok(None)) => return None,
            (Err(e), _) | (_, Err(e)) => {
                warn!(error = %e, "the dirty-rate probe failed: pre-copy goes on regardless");
                return None;
            }
        };
        if contended && crate::policy::retime_link(self.policy.as_ref(), &probe) {
            self.retime_link(run, &mut probe).await;
        }
        if crate::policy::remeasure_dirty(self.policy.as_ref(), &probe) {
            self.look_longer(pid, &mut probe).await;
        }
        info!(
            pages = probe.dirty.pages,
            dirtied = probe.dirty.dirtied,
            dirty_mib_s = probe.dirty.growth_bytes_per_sec() / f64::from(1 << 20),
            link_mib_s = probe.link_bytes_per_sec / f64::from(1 << 20),
            "dirty rate before pre-copy"
        );
        run.stats
            .set_probe(probe.dirty.growth_bytes_per_sec(), probe.link_bytes_per_sec);
        Some(self.policy.before_first(&probe))
    }

    /// Times the link again, now that the pre-flight's checks no longer
    /// share its CPUs, into `probe` (see [`crate::policy::retime_link`]):
    /// the higher of the two figures; a failure keeps the first.
    async fn retime_link(&self, run: &mut Run<'_>, probe: &mut Probe) {
        let before = probe.link_bytes_per_sec;
        match self.link_rate(&mut run.ctl, run.sid).await {
            Ok(Some(alone)) => {
                info!(
                    beside_checks_mib_s = before / f64::from(1 << 20),
                    alone_mib_s = alone / f64::from(1 << 20),
                    "the link, timed beside the checks, could have decided: timed again alone"
                );
                // Either figure can only fall short of what the link
                // carries, never exceed it: the higher is the nearer.
                probe.link_bytes_per_sec = before.max(alone);
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "timing the link again failed: the first figure stands"),
        }
    }

    /// Reads the tree's dirty rate again, over [`DIRTY_PROBE`], into
    /// `probe` (see [`crate::policy::remeasure_dirty`]); a failure keeps
    /// the glance.
    async fn look_longer(&self, pid: i32, probe: &mut Probe) {
        let glance = probe.dirty.growth_bytes_per_sec();
        match self.criu.dirty_rate(pid, DIRTY_PROBE).await {
            Ok(Some(longer)) => {
                info!(
                    glance_mib_s = glance / f64::from(1 << 20),
                    longer_mib_s = longer.growth_bytes_per_sec() / f64::from(1 << 20),
                    "the dirty rate, read at a glance, was near the decision's border: read \
                     again for longer"
                );
                probe.dirty = longer;
            }
            Ok(None) => {}
            Err(e) => warn!(error = %e, "reading the dirty rate again failed: the glance stands"),
        }
    }

    /// How fast the link carries a pre-dump's pages at best, in bytes per
    /// second: at most [`LINK_PROBE_BYTES`], sent for at most
    /// [`LINK_PROBE_TIME`], timed through a page channel the target drains
    /// (protocol version 4; an older target cannot say, `None`).
    async fn link_rate(&self, ctl: &mut ControlClient, sid: SessionId) -> Result<Option<f64>> {
        if ctl.link().version() < phaul_transport::frame::PAGEMAPS_VERSION {
            return Ok(None);
        }
        let pages = self.connect(Channel::Pages, Some(sid)).await?;
        let t0 = Instant::now();
        let sending = tokio::spawn(crate::pagestream::probe_send(
            pages,
            LINK_PROBE_BYTES,
            LINK_PROBE_TIME,
        ));
        let asked = request::Body::ProbeLink(proto::ProbeLink {
            bytes: LINK_PROBE_BYTES,
        });
        let answer = self.call(ctl, asked).await;
        let elapsed = t0.elapsed();
        let sent = sending
            .await
            .map_err(|e| Error::Protocol(format!("the link probe vanished: {e}")));
        // The target's refusal, if any, says more than the broken stream.
        let answer = answer?;
        let sent = sent??;
        match answer {
            // The sender may stop short of what it announced (the stream
            // ends early); the target says what arrived.
            response::Body::LinkProbed(p) if p.bytes == sent => {}
            other => return Err(unexpected("ProbeLink", &other)),
        }
        Ok(Some(sent as f64 / elapsed.as_secs_f64().max(1e-6)))
    }

    /// Copies the pagemaps of pre-dumps `0..n` from the target into their
    /// image directories here, for the lazy dump on top of them (see
    /// [`crate::pagemaps`]). Without them the lazy dump still works, and
    /// leaves every page for post-copy: so a target too old to answer, or
    /// any failure, is a warning.
    async fn keep_pagemaps(&self, run: &mut Run<'_>, n: u32) {
        if n == 0 {
            return;
        }
        let version = run.ctl.link().version();
        if version < phaul_transport::frame::PAGEMAPS_VERSION {
            warn!(
                version,
                "the target cannot send the pre-dumps' pagemaps: post-copy sends every page"
            );
            return;
        }
        for i in 0..n {
            let asked = request::Body::PagemapsOf(proto::PagemapsOf { iteration: i });
            let kept = match self.call(&mut run.ctl, asked).await {
                Ok(response::Body::Pagemaps(p)) => {
                    crate::pagemaps::keep(&run.dir.join(i.to_string()), &p.files)
                }
                Ok(other) => Err(unexpected("PagemapsOf", &other)),
                Err(e) => Err(e),
            };
            if let Err(e) = kept {
                warn!(iteration = i, error = %e, "the pre-dumps' pagemaps: post-copy sends every page");
                return;
            }
        }
        info!(
            pre_dumps = n,
            "the pre-dumps' pagemaps are here for the lazy dump"
        );
    }

    /// Restart mode's passes while the tree runs. P.Haul's rule: stop once
    /// a pass moves at most 1 MiB, grows by more than 10%, or after 8.
    async fn restart_passes(&self, run: &mut Run<'_>) -> Result<()> {
        self.enter(run.stats, Phase::PreCopy)?;
        let mut prev: Option<u64> = None;
        for _ in 0..8 {
            let Some(st) = self.fs_pass(run, Pass::Iteration).await? else {
                break;
            };
            if st.bytes <= 1 << 20 || prev.is_some_and(|p| st.bytes > p + p / 10) {
                break;
            }
            prev = Some(st.bytes);
        }
        Ok(())
    }

    /// Reports `relay`'s bytes as they go, on top of what was sent before,
    /// to every listener (a started migration's event stream too).
    fn ticker(&self, run: &Run<'_>, relay: &PageRelay) -> BytesTicker {
        BytesTicker::start(self.emitter(), run.stats.bytes(), relay.sent_counter())
    }

    /// An iteration ended: into the stats and out as an event.
    fn record(&self, run: &mut Run<'_>, report: IterationReport) {
        run.stats.record_iteration(report.clone());
        self.emit(Progress::Iteration(report));
    }

    /// One file-system pass, recorded in the stats.
    async fn fs_pass(&self, run: &mut Run<'_>, which: Pass) -> Result<Option<phaul_fs::SyncStats>> {
        let Some(fs) = run.fs.as_mut() else {
            return Ok(None);
        };
        let driver = fs.name();
        let limit = self.timeouts.transfer;
        let st = self
            .step(limit, "syncing the file system", async {
                fs.pass(which).await.map(Some).map_err(Error::Fs)
            })
            .await?;
        if let Some(st) = &st {
            info!(
                driver,
                files = st.files,
                bytes = st.bytes,
                deleted = st.deleted,
                ?which,
                "file-system pass"
            );
            run.stats
                .record_fs(driver, st.files, st.bytes, st.deleted, which == Pass::Final);
            self.emit(Progress::Bytes(run.stats.bytes()));
        }
        Ok(st)
    }

    /// Runs a blocking htype hook off the runtime's threads, as a step:
    /// when the migration is cancelled, the step's time runs out or the
    /// freeze limit passes, the manager tools it runs are killed
    /// ([`phaul_htypes::Interrupt`]), and its own error path (a container
    /// resumed) runs to its end before the error returns.
    async fn hook<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Htype) -> phaul_htypes::Result<T> + Send + 'static,
    ) -> Result<T> {
        let interrupt = phaul_htypes::Interrupt::default();
        let mut task = self.blocking(interrupt.clone(), f);
        let mut cancel = self.cancel_rx.clone();
        let freeze = async {
            match self.deadline() {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        let stopped = tokio::select! {
            r = &mut task => return r,
            _ = cancel.wait_for(|c| *c) => Error::Cancelled,
            () = tokio::time::sleep(self.timeouts.transfer) => {
                Error::Timeout(format!("the {} kind's step", self.htype.kind()))
            }
            () = freeze => Error::FreezeTimeout { limit: self.freeze_timeout },
        };
        warn!(error = %stopped, kind = self.htype.kind(), "stopping the kind's tools");
        interrupt.fire();
        if let Err(e) = task.await {
            warn!(error = %crate::target::error_chain(&e), "the interrupted step");
        }
        Err(stopped)
    }

    /// Runs a hook that undoes or tidies (resuming the source, removing
    /// what remains after the commit): neither cancel nor the freeze limit
    /// stops it, only the tool runner's own time limit.
    async fn undo<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Htype) -> phaul_htypes::Result<T> + Send + 'static,
    ) -> Result<T> {
        self.blocking(phaul_htypes::Interrupt::default(), f).await
    }

    fn blocking<T: Send + 'static>(
        &self,
        interrupt: phaul_htypes::Interrupt,
        f: impl FnOnce(&dyn Htype) -> phaul_htypes::Result<T> + Send + 'static,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<T>> + Send>> {
        let h = self.htype.clone();
        let task = tokio::task::spawn_blocking(move || interrupt.scope(|| f(h.as_ref())));
        Box::pin(async move {
            task.await
                .map_err(|e| Error::Protocol(format!("an htype task: {e}")))?
                .map_err(Error::Htype)
        })
    }

    /// Writes the htype's extra files into the images: those made just
    /// before the final dump, or those made while the tree is frozen (a
    /// container's config, its console). A bad name is refused.
    async fn write_files(&self, dir: &Path, meta: bool) -> Result<()> {
        let files = self
            .hook(move |h| {
                if meta {
                    h.meta_files()
                } else {
                    Ok(h.files_before_dump())
                }
            })
            .await?;
        for (name, content) in files {
            phaul_transport::images::check_name(&name)?;
            std::fs::write(dir.join(&name), content).map_err(|source| Error::Io {
                what: format!("writing {name} into the images"),
                source,
            })?;
        }
        Ok(())
    }

    /// After the commit: what remains of the tree here is removed (a
    /// container's definition). A failure is reported but changes nothing:
    /// the target runs the tree.
    async fn cleanup_source(&self) {
        if let Err(e) = self.undo(|h| h.cleanup_source()).await {
            warn!(error = %e, "removing what remains on the source");
        }
    }

    async fn transfer_images(&self, run: &mut Run<'_>, dir: &Path, i: u32) -> Result<()> {
        self.enter(run.stats, Phase::ImageTransfer)?;
        let t = Instant::now();
        let send = async {
            send_dir_over(&mut run.images, dir)
                .await
                .map_err(Error::Link)
        };
        let ask = self.call(
            &mut run.ctl,
            request::Body::Images(proto::Images { iteration: i }),
        );
        let (sent, _) = self
            .step(self.timeouts.transfer, "sending the images", async {
                tokio::try_join!(send, ask)
            })
            .await?;
        run.stats.set_image_transfer(t.elapsed());
        run.stats.add_bytes(sent.bytes);
        self.emit(Progress::Bytes(run.stats.bytes()));
        Ok(())
    }

    async fn restore_and_commit(&self, run: &mut Run<'_>, restore: proto::Restore) -> Result<()> {
        self.enter(run.stats, Phase::Restore)?;
        match self
            .call(&mut run.ctl, request::Body::Restore(restore))
            .await?
        {
            response::Body::Restored(r) => {
                run.stats.set_target_pid(r.pid);
                run.stats
                    .set_restore_time(Duration::from_micros(r.restore_time_us));
            }
            other => return Err(unexpected("Restore", &other)),
        }
        self.group_pass(group::Stage::Restored).await?;
        if let Some(hook) = &self.switchover {
            self.step(self.timeouts.request, "the switch-over hook", async {
                hook().await.map_err(Error::Switchover)
            })
            .await?;
        }
        self.enter(run.stats, Phase::Commit)?;
        let valid_for_ms = self.commit_lease()?;
        let overhead_us = match (run.transfer, run.stats.downtime_so_far()) {
            (Some(t), Some(d)) => u64::try_from(d.saturating_sub(t).as_micros()).unwrap_or(0),
            _ => 0,
        };
        let replay = run
            .replay
            .take()
            .map(crate::replay::Capture::finish)
            .unwrap_or_default();
        if !replay.is_empty() {
            debug!(
                packets = replay.len(),
                "the lock dropped packets: they go with the commit"
            );
        }
        run.stats.commit_sent(true);
        let answer = self
            .call(
                &mut run.ctl,
                request::Body::Commit(proto::Commit {
                    valid_for_ms,
                    overhead_us,
                    replay,
                    tree_pages: if overhead_us > 0 { run.tree_pages } else { 0 },
                }),
            )
            .await;
        if let Err(Error::Target(_)) = &answer {
            // An answer, if a refusal: the target does not run the tree.
            run.stats.commit_sent(false);
        }
        match answer? {
            response::Body::Committed(_) => {
                let now = Instant::now();
                run.stats.target_resumed(now).ok();
                if let Some(g) = &self.group {
                    g.resumed(now);
                }
                if let Some(d) = run.stats.downtime_so_far() {
                    self.emit(Progress::Resumed(d));
                }
                Ok(())
            }
            other => Err(unexpected("Commit", &other)),
        }
    }

    /// Waits at the group's gate, if this migration is a group's member:
    /// `Err` when another member failed (or this one is cancelled).
    async fn group_pass(&self, stage: group::Stage) -> Result<()> {
        let Some(g) = &self.group else {
            return Ok(());
        };
        // Bounded by the other members' own limits (each fails the gate
        // when it gives up) and, once frozen, by this one's freeze limit.
        self.step(
            Duration::from_secs(24 * 3600),
            "waiting for the group",
            g.pass(stage, &self.id),
        )
        .await
    }

    /// `Err` once another member of this one's group has failed.
    fn group_ok(&self) -> Result<()> {
        self.group.as_ref().map_or(Ok(()), group::Gate::check)
    }

    /// Tells the group, if any, that this member failed: the others give
    /// up at once instead of at their gate's timeout.
    fn group_failed(&self, e: &Error) {
        if let Some(g) = &self.group {
            g.fail(&self.id, e);
        }
    }

    /// Tells the target to give up, if it can still hear us.
    async fn abort_target(&self, ctl: &mut ControlClient, why: &Error) {
        let body = request::Body::Abort(proto::Abort {
            reason: why.to_string(),
        });
        let _ = tokio::time::timeout(Duration::from_secs(5), ctl.call(body)).await;
    }
}

/// What a target says in `Begun` of the switch-overs it received, for the
/// policy's predictions (every field 0: nothing).
#[derive(Debug, Clone, Copy, Default)]
struct Learned {
    /// What one cost beyond its pages' transfer, µs (the median).
    overhead_us: u64,
    /// How fast it writes image pages into fresh memory, bytes a second.
    page_in: u64,
    /// What one cost beyond its transfer and its memory's restore, µs.
    beyond_restore_us: u64,
}

impl Learned {
    /// How long the target should take to write `pages` pages into fresh
    /// memory, in µs (0: it did not say how fast it does).
    fn restore_us(&self, pages: u64) -> u64 {
        if self.page_in == 0 {
            return 0;
        }
        let t = crate::policy::page_in_time(pages, self.page_in as f64);
        u64::try_from(t.as_micros()).unwrap_or(u64::MAX)
    }

    /// What a switch-over of a tree of `pages` pages should cost beyond
    /// its transfer, µs (0: nothing learned): what is learned beyond the
    /// restore plus this tree's own restore, where the target could tell
    /// both, else the plain median, which follows the size of the trees
    /// it came from, not this one's.
    fn overhead_us(&self, pages: u64) -> u64 {
        match self.restore_us(pages) {
            restore if restore > 0 && self.beyond_restore_us > 0 => {
                self.beyond_restore_us.saturating_add(restore)
            }
            _ => self.overhead_us,
        }
    }
}

/// One connected migration: what every step after the handshake works on.
struct Run<'a> {
    stats: &'a mut Ongoing,
    ctl: ControlClient,
    images: Link,
    sid: SessionId,
    pid: i32,
    dir: PathBuf,
    /// The file system is copied, so inodes change: CRIU must resolve
    /// inotify watches by path.
    force_irmap: bool,
    /// Both hosts' CRIU lock networks with nftables: the dumps do.
    nftables_lock: bool,
    /// `None` when the kind has no file system of its own.
    fs: Option<SourceFs>,
    /// What the target said of its switch-overs in `Begun`.
    learned: Learned,
    /// The tree's pages, as the last pre-dump scanned them (0: none yet).
    tree_pages: u64,
    /// The pre-dumps' bandwidth ([`crate::policy::measured_bandwidth`]),
    /// bytes per second, once one measured it.
    bandwidth: Option<f64>,
    /// The transfer of the final dump's pages (what it sent before
    /// `post-dump`) at that bandwidth, when a final dump followed
    /// pre-dumps: what the commit reports the downtime beyond. Measured,
    /// not predicted: a prediction that was off (after the first pre-dump,
    /// whose pages stand for a dirty set they are not) says nothing of
    /// what the switch-over costs.
    transfer: Option<Duration>,
    /// The plan keeps the images in RAM, and the user does not keep them.
    ram_images: bool,
    /// The RAM directories the images went to; removed with the run.
    ram: Vec<crate::ramdir::RamDir>,
    /// The client packets reaching the tree's own network namespace from
    /// just before the final freeze, for the commit (see `replay`).
    replay: Option<crate::replay::Capture>,
    /// The probe before pre-copy, as far as the pre-flight took it.
    early: EarlyProbe,
}

/// The probe before the first pre-dump, started in the pre-flight (see
/// `Migration::preflight`); what it did not start, `Migration::probe`
/// measures itself.
#[derive(Default)]
struct EarlyProbe {
    /// The tree's dirty rate, being measured.
    dirty: Option<tokio::task::JoinHandle<Result<Option<crate::dirty::DirtyRate>>>>,
    /// The link's speed, timed (`None` inside: the target cannot say).
    link: Option<Result<Option<f64>>>,
    /// When the pre-flight that took them ended.
    at: Option<Instant>,
}

impl EarlyProbe {
    /// Itself, or nothing when taken more than `valid` ago (see
    /// [`Timeouts::probe_valid`]): then the engine measures again. A dirty
    /// measure still running is waited for first, so that two never clear
    /// the tree's soft-dirty bits at once.
    async fn fresh(self, valid: Duration) -> Self {
        let Some(at) = self.at.filter(|at| at.elapsed() > valid) else {
            return self;
        };
        info!(
            age_ms = at.elapsed().as_millis() as u64,
            valid_ms = valid.as_millis() as u64,
            "the probe from the pre-flight is old: measuring again"
        );
        if let Some(measuring) = self.dirty {
            let _ = measuring.await;
        }
        Self::default()
    }
}

fn remote(e: phaul_transport::Error) -> Error {
    match e {
        phaul_transport::Error::Remote {
            code: phaul_transport::ErrorCode::Busy,
            message,
        } => Error::Busy(message),
        phaul_transport::Error::Remote { message, .. } => Error::Target(message),
        other => Error::Link(other),
    }
}

fn unexpected(req: &str, got: &response::Body) -> Error {
    Error::Protocol(format!("unexpected answer to {req}: {got:?}"))
}

fn iteration_report(
    i: u32,
    kind: &str,
    st: &DumpStatsEntry,
    bytes: u64,
    wall: Duration,
) -> IterationReport {
    IterationReport {
        iteration: i,
        kind: kind.to_string(),
        pages_scanned: st.pages_scanned,
        pages_written: st.pages_written,
        pages_skipped_parent: st.pages_skipped_parent,
        pages_lazy: st.pages_lazy,
        freezing_us: u64::from(st.freezing_time),
        frozen_us: u64::from(st.frozen_time),
        memdump_us: u64::from(st.memdump_time),
        memwrite_us: u64::from(st.memwrite_time),
        bytes_sent: bytes,
        duration_us: u64::try_from(wall.as_micros()).unwrap_or(u64::MAX),
    }
}

/// Iteration `i`'s images directory, made: in RAM where the run keeps
/// its images there and RAM can hold them (see `ramdir`), else on disk.
/// Returns the real directory (the image batch's sender follows no
/// symlink); the run's directory links to it.
fn images_dir(run: &mut Run<'_>, i: u32) -> Result<PathBuf> {
    let dir = run.dir.join(i.to_string());
    crate::ramdir::images_dir(&dir, run.ram_images, &mut run.ram).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })
}

/// `r` with the relay that carries its pages, or, when it failed, its error
/// with the relay stopped.
fn or_stop<T>(r: Result<T>, relay: PageRelay) -> Result<(T, PageRelay)> {
    match r {
        Ok(x) => Ok((x, relay)),
        Err(e) => {
            relay.stop();
            Err(e)
        }
    }
}

/// A fresh migration id: unique on this host and, with the time in it,
/// practically across hosts (not a secret).
fn new_id() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{nanos:x}-{:x}-{:x}", std::process::id(), unique())
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
