//! The source side: a migration of one thing to one target.
//!
//! [`Migration`] is built with the target's address, the link's
//! configuration and the htype, then [`Migration::run`] drives it to the end
//! and always returns a [`Report`], successful or not.
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

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use criu_rpc::proto::DumpStatsEntry;
use phaul_htypes::Htype;
use phaul_transport::images::send_dir_over;
use phaul_transport::proto::{self, request, response};
use phaul_transport::{Channel, ControlClient, Endpoint, Link, LinkConfig, SessionId};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::criu::{DumpSpec, SourceCriu};
use crate::error::{Error, Result};
use crate::fs::{FsChoice, Pass, SourceFs};
use crate::mode::{self, HostCaps, Mode, ModeChoice};
use crate::pagestream::{PageRelay, reset_on_close, socketpair};
use crate::policy::{ConvergencePolicy, Decision, IterationSample, PhaulRules};
use crate::stats::{IterationReport, Ongoing, Phase, Report};

/// What a running migration reports as it goes.
///
/// As JSON (serde), each event is an object whose `event` names it
/// (`"phase"`, `"bytes"`, `"resumed"`, ...) and whose `value` carries its
/// data; durations are milliseconds. The names and shapes are a stable
/// interface for scripts and orchestrators.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[serde(tag = "event", content = "value", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Progress {
    /// A new phase began.
    Phase(Phase),
    /// The mode was chosen, and why.
    Mode(ModeChoice),
    /// An iteration (pre-dump or final dump) ended.
    Iteration(IterationReport),
    /// Bytes sent to the target so far (memory and images); while memory
    /// streams, at least every [`BYTES_TICK`].
    Bytes(u64),
    /// Pre-copy decided how to go on, and why.
    Decision(Decision),
    /// The source is frozen (the final dump started).
    Frozen,
    /// The target runs the tree; the downtime was this long (ms in JSON).
    Resumed(#[serde(serialize_with = "millis")] Duration),
    /// Rolling back: the source is being resumed.
    RollingBack(String),
    /// A pre-flight check failed and [`Migration::force`] went on anyway.
    Warning(String),
}

/// One line for people, as the CLI and phaul-web show events (the JSON form
/// is for tools).
impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Phase(p) => write!(f, "{}", p.describe()),
            Progress::Mode(c) => write!(f, "mode {}: {}", c.mode, c.reason),
            Progress::Iteration(it) => write!(
                f,
                "iteration {} ({}): {} pages written, {} lazy, {:.1} MiB sent",
                it.iteration,
                it.kind,
                it.pages_written,
                it.pages_lazy,
                it.bytes_sent as f64 / 1048576.0
            ),
            Progress::Bytes(b) => write!(f, "{:.1} MiB sent", *b as f64 / 1048576.0),
            Progress::Decision(d) => write!(f, "pre-copy: {d:?}"),
            Progress::Frozen => write!(f, "source frozen"),
            Progress::Resumed(d) => write!(
                f,
                "target running; downtime {:.1} ms",
                d.as_secs_f64() * 1e3
            ),
            Progress::RollingBack(why) => write!(f, "rolling back: {why}"),
            Progress::Warning(why) => write!(f, "warning: {why}"),
        }
    }
}

/// How often [`Progress::Bytes`] comes while memory streams to the target.
pub const BYTES_TICK: Duration = Duration::from_millis(200);

fn millis<S: serde::Serializer>(d: &Duration, s: S) -> std::result::Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64() * 1000.0)
}

/// Emits [`Progress::Bytes`] every [`BYTES_TICK`] while a page relay runs:
/// `base` plus what the relay has sent. Stops when dropped.
struct BytesTicker(Option<tokio::task::JoinHandle<()>>);

impl BytesTicker {
    fn start(
        progress: Option<mpsc::UnboundedSender<Progress>>,
        base: u64,
        sent: impl Fn() -> u64 + Send + 'static,
    ) -> Self {
        let Some(tx) = progress else {
            return Self(None);
        };
        Self(Some(tokio::spawn(async move {
            let mut last = None;
            loop {
                tokio::time::sleep(BYTES_TICK).await;
                let now = base + sent();
                if last != Some(now) && tx.send(Progress::Bytes(now)).is_err() {
                    return;
                }
                last = Some(now);
            }
        })))
    }
}

impl Drop for BytesTicker {
    fn drop(&mut self) {
        if let Some(h) = self.0.take() {
            h.abort();
        }
    }
}

/// Cancels a running [`Migration`] from elsewhere.
#[derive(Debug, Clone)]
pub struct CancelHandle(Arc<watch::Sender<bool>>);

impl CancelHandle {
    /// Asks the migration to stop; it rolls back unless it has already
    /// committed.
    pub fn cancel(&self) {
        let _ = self.0.send(true);
    }
}

/// Timeouts of a migration's steps.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// Connecting and one control request.
    pub request: Duration,
    /// A dump, an image transfer or a restore (these scale with memory).
    pub transfer: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(30),
            transfer: Duration::from_secs(600),
        }
    }
}

/// How long the source may stay frozen unless told otherwise: far longer
/// than a healthy migration of a few GiB takes here, far shorter than a
/// production service should hang because a peer is stuck.
pub const DEFAULT_FREEZE_TIMEOUT: Duration = Duration::from_secs(30);

/// A migration of one htype to one target.
pub struct Migration<C: SourceCriu> {
    criu: C,
    target: String,
    link: LinkConfig,
    htype: Arc<dyn Htype>,
    mode: Mode,
    fallback: bool,
    policy: Box<dyn ConvergencePolicy>,
    work_dir: PathBuf,
    keep_images: bool,
    skip_cpu_check: bool,
    skip_version_check: bool,
    force: bool,
    timeouts: Timeouts,
    freeze_timeout: Duration,
    /// When the source froze, plus `freeze_timeout`: set once, at the
    /// freeze (a migration runs once).
    freeze_deadline: std::sync::OnceLock<tokio::time::Instant>,
    progress: Option<mpsc::UnboundedSender<Progress>>,
    fs: FsChoice,
    cancel_tx: Arc<watch::Sender<bool>>,
    cancel_rx: watch::Receiver<bool>,
}

impl<C: SourceCriu> std::fmt::Debug for Migration<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Migration")
            .field("target", &self.target)
            .field("htype", &self.htype)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

impl<C: SourceCriu> Migration<C> {
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
            skip_cpu_check: false,
            skip_version_check: false,
            force: false,
            timeouts: Timeouts::default(),
            freeze_timeout: DEFAULT_FREEZE_TIMEOUT,
            freeze_deadline: std::sync::OnceLock::new(),
            progress: None,
            fs: FsChoice::default(),
            cancel_tx: Arc::new(tx),
            cancel_rx: rx,
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

    fn emit(&self, p: Progress) {
        if let Some(tx) = &self.progress {
            let _ = tx.send(p);
        }
    }

    fn enter(&self, stats: &mut Ongoing, phase: Phase) {
        if let Err(e) = stats.enter(phase) {
            warn!(error = %e, "statistics");
        }
        self.emit(Progress::Phase(phase));
    }

    /// The source freezes now: from here on, [`Migration::while_frozen`]
    /// bounds every step by the freeze limit.
    fn freezing(&self, stats: &mut Ongoing, t0: Instant) {
        stats.source_frozen(t0).ok();
        stats.set_freeze_timeout(self.freeze_timeout);
        let _ = self
            .freeze_deadline
            .set(tokio::time::Instant::from_std(t0) + self.freeze_timeout);
        self.emit(Progress::Frozen);
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

    /// Runs the migration to its end.
    pub async fn run(self) -> Report {
        let provisional = ModeChoice {
            mode: self.mode,
            requested: self.mode,
            reason: "not chosen yet".into(),
        };
        let mut stats = Ongoing::start(provisional);
        // Kinds look their PID up with their tools (lxc-info): off the
        // runtime's threads, like every htype call.
        if let Ok(pid) = self.hook(|h| h.root_pid()).await {
            stats.set_source_pid(pid);
        }
        let dir = self
            .work_dir
            .join(format!("{}-{}", std::process::id(), unique()));
        let res = self.drive(&mut stats, &dir).await;
        self.tidy(&mut stats, &dir, res.is_ok());
        let outcome = res.map_err(|e| crate::target::error_chain(&e));
        if let Err(e) = &outcome {
            warn!(error = %e, "migration failed");
        }
        stats.finalize(outcome)
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
    async fn release_network_lock(&self) {
        if let Ok(pid) = self.hook(|h| h.root_pid()).await {
            let _ = tokio::task::spawn_blocking(move || crate::netlock::release(pid)).await;
        }
    }

    /// Refuses, before anything is frozen, a CRIU that cannot dump the
    /// tree's TCP and UDP sockets on this kernel (see [`crate::sockets`]).
    async fn check_inet_sockets(&self, version: &str, dir: &Path) -> Result<()> {
        let release = crate::sockets::kernel_release();
        if !crate::sockets::inet_dump_doubtful(version, &release) {
            return Ok(());
        }
        let Ok(root) = self.hook(|h| h.root_pid()).await else {
            return Ok(());
        };
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
    /// before anything is frozen; then the plan (the mode and why).
    async fn preflight(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        dir: &Path,
    ) -> Result<ModeChoice> {
        let version = self.criu.version().await?;
        self.check_inet_sockets(&version, dir).await?;
        let caps = self.criu.features().await?;
        let scratch = dir.join("cpuinfo");
        mkdir(&scratch)?;
        let cpuinfo = if self.skip_cpu_check {
            Vec::new()
        } else {
            self.criu.cpuinfo(&scratch).await?
        };
        let reply = match self
            .call(
                ctl,
                request::Body::Preflight(proto::Preflight {
                    criu_version: version.clone(),
                    mem_track: caps.mem_track,
                    lazy_pages: caps.lazy_pages,
                    cpuinfo,
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
        };
        let kind = mode::KindCaps {
            name: self.htype.kind(),
            pre_dump: self.htype.can_pre_dump(),
            lazy_restore: self.htype.can_restore_lazily(),
            own_dump: self.htype.dumps_itself(),
        };
        let choice = mode::plan(self.mode, self.fallback, caps, target_caps, kind)?;
        info!(mode = %choice.mode, reason = %choice.reason, "mode chosen");
        stats.set_mode(choice.clone());
        self.emit(Progress::Mode(choice.clone()));
        Ok(choice)
    }

    async fn drive(&self, stats: &mut Ongoing, dir: &Path) -> Result<()> {
        self.enter(stats, Phase::Preflight);
        self.hook(|h| h.check()).await?;
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
        let endpoint = Endpoint::parse(&self.target)?;
        let link = self
            .step(self.timeouts.request, "connecting to the target", async {
                Link::connect(endpoint, &self.link, Channel::Control, None)
                    .await
                    .map_err(Error::Link)
            })
            .await?;
        let sid = link.session();
        let mut ctl = ControlClient::new(link);

        let choice = self.preflight(stats, &mut ctl, dir).await?;

        let fs_root = self.htype.fs_root();
        let fs_name = if fs_root.is_some() {
            self.fs.name()
        } else {
            ""
        };
        self.call(
            &mut ctl,
            request::Body::Begin(proto::Begin {
                htype: self.htype.kind().to_string(),
                params: self.htype.params().into_iter().collect(),
                mode: choice.mode.to_string(),
                fs_driver: fs_name.to_string(),
            }),
        )
        .await?;

        let mut images = self
            .step(self.timeouts.request, "opening the image channel", async {
                Link::connect(
                    Endpoint::parse(&self.target)?,
                    &self.link,
                    Channel::Images,
                    Some(sid),
                )
                .await
                .map_err(Error::Link)
            })
            .await?;
        let pid = self.hook(|h| h.root_pid()).await?;
        let fs = match (&fs_root, &self.fs) {
            (None, _) => SourceFs::None,
            (Some(root), choice) => {
                let link = match choice {
                    FsChoice::Shared => None,
                    _ => Some(
                        self.step(
                            self.timeouts.request,
                            "opening the file-system channel",
                            async {
                                Link::connect(
                                    Endpoint::parse(&self.target)?,
                                    &self.link,
                                    Channel::Fs,
                                    Some(sid),
                                )
                                .await
                                .map_err(Error::Link)
                            },
                        )
                        .await?,
                    ),
                };
                match link {
                    Some(l) => SourceFs::open(choice, l, root.clone())?,
                    None => SourceFs::Shared(phaul_fs::Shared),
                }
            }
        };
        let ctx = Ctx {
            sid,
            pid,
            dir: dir.to_path_buf(),
            force_irmap: !fs.inodes_survive(),
            fs: tokio::sync::Mutex::new(fs),
        };
        // The first pass, while the tree runs: the bulk of the files.
        self.fs_pass(stats, &ctx, Pass::First).await?;
        let res = self
            .run_mode(stats, &mut ctl, &mut images, &ctx, &choice)
            .await;
        // Close both channels cleanly, so the target sees an orderly end.
        let _ = images.writer.shutdown().await;
        ctl.close().await;
        res
    }

    async fn run_mode(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        ctx: &Ctx,
        choice: &ModeChoice,
    ) -> Result<()> {
        match choice.mode {
            Mode::StopCopy if self.htype.dumps_itself() => {
                self.final_self_dump(stats, ctl, images, ctx).await
            }
            Mode::StopCopy => {
                self.final_stop_copy(stats, ctl, images, ctx, 0, false)
                    .await
            }
            Mode::PreCopy => {
                let (n, _) = self.pre_copy(stats, ctl, ctx).await?;
                self.final_stop_copy(stats, ctl, images, ctx, n, true).await
            }
            Mode::PostCopy => {
                self.final_post_copy(stats, ctl, images, ctx, 0, false)
                    .await
            }
            Mode::Hybrid => {
                let (n, decision) = self.pre_copy(stats, ctl, ctx).await?;
                match decision {
                    Decision::Converged(_) => {
                        self.final_stop_copy(stats, ctl, images, ctx, n, true).await
                    }
                    _ => self.final_post_copy(stats, ctl, images, ctx, n, true).await,
                }
            }
            Mode::Restart if self.htype.can_restart() => {
                self.restart(stats, ctl, images, ctx).await
            }
            Mode::Restart => Err(Error::UnsupportedMode {
                mode: Mode::Restart,
                missing: format!(
                    "a restart (cold) handler for the {} kind; only container kinds have one",
                    self.htype.kind()
                ),
            }),
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

    async fn pages_link(&self, sid: SessionId) -> Result<Link> {
        self.step(self.timeouts.request, "opening a page channel", async {
            Link::connect(
                Endpoint::parse(&self.target)?,
                &self.link,
                Channel::Pages,
                Some(sid),
            )
            .await
            .map_err(Error::Link)
        })
        .await
    }

    fn spec(&self, ctx: &Ctx, i: u32, parent: bool, track_mem: bool) -> Result<DumpSpec> {
        let images_dir = ctx.dir.join(i.to_string());
        let work_dir = ctx.dir.join(format!("{i}.work"));
        mkdir(&images_dir)?;
        mkdir(&work_dir)?;
        Ok(DumpSpec {
            pid: ctx.pid,
            images_dir,
            work_dir,
            parent: (parent && i > 0).then(|| format!("../{}", i - 1)),
            track_mem,
            options: {
                let mut o = self.htype.dump_options();
                o.force_irmap |= ctx.force_irmap;
                o
            },
            iteration: i,
        })
    }

    /// Pre-dumps until the policy says stop; returns the next iteration's
    /// number and the last decision.
    async fn pre_copy(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        ctx: &Ctx,
    ) -> Result<(u32, Decision)> {
        self.enter(stats, Phase::PreCopy);
        let mut history: Vec<IterationSample> = Vec::new();
        for i in 0u32.. {
            let pages = self.pages_link(ctx.sid).await?;
            self.call(
                ctl,
                request::Body::StartPageServer(proto::StartPageServer {
                    iteration: i,
                    has_parent: i > 0,
                }),
            )
            .await?;
            let (criu_end, ours) = socketpair()?;
            let relay = PageRelay::spawn(pages, ours);
            let _ticker =
                BytesTicker::start(self.progress.clone(), stats.bytes(), relay.sent_counter());
            let spec = self.spec(ctx, i, true, true)?;
            let t0 = Instant::now();
            let st = self
                .step(
                    self.timeouts.transfer,
                    "a pre-dump",
                    self.criu.pre_dump(spec, criu_end),
                )
                .await;
            let st = match st {
                Ok(s) => s,
                Err(e) => {
                    relay.stop();
                    return Err(e);
                }
            };
            let (sent, _) = relay.finish(Duration::from_secs(10)).await?;
            stats.add_bytes(sent);
            let report = iteration_report(i, "pre-dump", &st, sent, t0.elapsed());
            stats.record_iteration(report.clone());
            self.emit(Progress::Iteration(report.clone()));
            self.emit(Progress::Bytes(stats.bytes()));
            // The file system follows memory, iteration by iteration.
            self.fs_pass(stats, ctx, Pass::Iteration).await?;
            history.push(IterationSample::from(&report));
            let decision = self.policy.decide(&history);
            stats.set_predicted_downtime(self.policy.predicted_downtime(&history));
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

    async fn final_stop_copy(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        ctx: &Ctx,
        i: u32,
        pre_copied: bool,
    ) -> Result<()> {
        self.enter(stats, Phase::FinalDump);
        let pages = self.pages_link(ctx.sid).await?;
        self.call(
            ctl,
            request::Body::StartPageServer(proto::StartPageServer {
                iteration: i,
                has_parent: pre_copied && i > 0,
            }),
        )
        .await?;
        let (criu_end, ours) = socketpair()?;
        let relay = PageRelay::spawn(pages, ours);
        let ticker = BytesTicker::start(self.progress.clone(), stats.bytes(), relay.sent_counter());
        let spec = self.spec(ctx, i, pre_copied, pre_copied)?;
        let images_dir = spec.images_dir.clone();
        self.write_files_before_dump(&images_dir).await?;
        let t0 = Instant::now();
        self.freezing(stats, t0);
        let held = match self
            .while_frozen(self.step(
                self.timeouts.transfer,
                "the final dump",
                self.criu.dump(spec, criu_end),
            ))
            .await
        {
            Ok(h) => h,
            Err(e) => {
                // CRIU did not get to post-dump: it has resumed the tree.
                relay.stop();
                self.abort_target(ctl, &e).await;
                return Err(e);
            }
        };
        drop(ticker);
        let pages_sent = relay.sent();
        stats.add_bytes(pages_sent);
        let to_target = async {
            self.fs_pass(stats, ctx, Pass::Final).await?;
            self.write_meta_files(&images_dir).await?;
            self.transfer_images(stats, ctl, images, &images_dir, i)
                .await?;
            self.restore_and_commit(stats, ctl, i, false).await
        };
        match self.while_frozen(to_target).await {
            Ok(()) => {
                let st = held.commit().await?;
                let (sent, _) = relay
                    .finish(Duration::from_secs(5))
                    .await
                    .unwrap_or((pages_sent, 0));
                stats.add_bytes(sent.saturating_sub(pages_sent));
                let report =
                    iteration_report(i, "dump", &st.unwrap_or_default(), sent, t0.elapsed());
                stats.record_iteration(report.clone());
                self.emit(Progress::Iteration(report));
                self.cleanup_source().await;
                Ok(())
            }
            Err(e) => {
                self.enter(stats, Phase::Rollback);
                self.emit(Progress::RollingBack(e.to_string()));
                if let Err(re) = held.rollback().await {
                    warn!(error = %re, "rolling the source back");
                }
                relay.stop();
                self.abort_target(ctl, &e).await;
                Err(e)
            }
        }
    }

    async fn final_post_copy(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        ctx: &Ctx,
        i: u32,
        pre_copied: bool,
    ) -> Result<()> {
        self.enter(stats, Phase::FinalDump);
        let port = free_port()?;
        // CRIU's lazy page server listens on every interface of this network
        // namespace: only loopback (our relay) may reach it.
        let guard = PortGuard::install(port)?;
        let spec = self.spec(ctx, i, pre_copied, pre_copied)?;
        let images_dir = spec.images_dir.clone();
        self.write_files_before_dump(&images_dir).await?;
        // The page channel's handshake is done before the freeze: the
        // target keeps the link until its lazy-pages daemon asks for it.
        let pages = self.pages_link(ctx.sid).await?;
        let t0 = Instant::now();
        self.freezing(stats, t0);
        let lazy = match self
            .while_frozen(self.step(
                self.timeouts.transfer,
                "the lazy dump",
                self.criu.lazy_dump(spec, port),
            ))
            .await
        {
            Ok(l) => l,
            Err(e) => {
                self.abort_target(ctl, &e).await;
                return Err(e);
            }
        };
        // Be CRIU's one and only page-server client, at once: whatever
        // happens next, this connection is how the tree is resumed.
        let local = match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
            Ok(s) => s,
            Err(source) => {
                // Without a connection CRIU would wait forever; nothing can
                // resume the tree but ending CRIU's wait, so report loudly.
                return Err(Error::Io {
                    what: format!("connecting to CRIU's lazy page server on port {port}"),
                    source,
                });
            }
        };
        let _ = local.set_nodelay(true);
        if let Err(e) = reset_on_close(&local) {
            poison_direct(local).await;
            let _ = lazy.wait().await;
            self.release_network_lock().await;
            self.abort_target(ctl, &e).await;
            return Err(e);
        }
        let (committed_tx, committed_rx) = watch::channel(false);
        let relay = PageRelay::spawn_guarded(pages, local, committed_rx);
        let _ticker =
            BytesTicker::start(self.progress.clone(), stats.bytes(), relay.sent_counter());
        let to_target = async {
            self.fs_pass(stats, ctx, Pass::Final).await?;
            self.write_meta_files(&images_dir).await?;
            self.transfer_images(stats, ctl, images, &images_dir, i)
                .await?;
            let r = self.restore_and_commit(stats, ctl, i, true).await;
            if r.is_ok() {
                let _ = committed_tx.send(true);
            }
            r
        };
        match self.while_frozen(to_target).await {
            Ok(()) => {
                self.enter(stats, Phase::LazyTransfer);
                let st = lazy.wait().await;
                let (sent, _) = relay
                    .finish(Duration::from_secs(10))
                    .await
                    .unwrap_or((0, 0));
                stats.add_bytes(sent);
                drop(guard);
                let st = st.map_err(|e| {
                    Error::Target(format!(
                        "the target runs the tree, but sending it the rest of its memory failed ({}); \
                         CRIU resumed the source copy",
                        crate::target::error_chain(&e)
                    ))
                })?;
                let mut st = st.unwrap_or_default();
                // CRIU's stats-dump counts no pages after a lazy dump; its
                // pagemaps say what it wrote and what it served later.
                if st.pages_scanned == 0 && st.pages_lazy == 0 {
                    match criu_rpc::image::read_pagemaps(&images_dir) {
                        Ok(t) => {
                            st.pages_scanned = t.pages;
                            st.pages_written = t.present;
                            st.pages_lazy = t.lazy;
                            st.pages_skipped_parent = t.in_parent;
                        }
                        Err(e) => warn!(error = %e, "reading the lazy dump's pagemaps"),
                    }
                }
                let mut report = iteration_report(i, "lazy-dump", &st, sent, t0.elapsed());
                // CRIU's frozen_time is meaningless after a lazy dump (it
                // counts from an unset start); ours is the real freeze.
                report.frozen_us = stats
                    .downtime_so_far()
                    .map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX));
                stats.record_iteration(report.clone());
                self.emit(Progress::Iteration(report));
                self.cleanup_source().await;
                Ok(())
            }
            Err(e) => {
                self.enter(stats, Phase::Rollback);
                self.emit(Progress::RollingBack(e.to_string()));
                relay.poison().await;
                match tokio::time::timeout(Duration::from_secs(30), lazy.wait()).await {
                    Ok(Ok(_)) => warn!("the lazy dump finished although it was rolled back"),
                    Ok(Err(_)) => info!("the source tree was resumed"),
                    Err(_) => warn!("the lazy dump did not end after the rollback"),
                }
                self.release_network_lock().await;
                drop(guard);
                self.abort_target(ctl, &e).await;
                Err(e)
            }
        }
    }

    /// One file-system pass, recorded in the stats.
    async fn fs_pass(
        &self,
        stats: &mut Ongoing,
        ctx: &Ctx,
        which: Pass,
    ) -> Result<Option<phaul_fs::SyncStats>> {
        let mut fs = ctx.fs.lock().await;
        let driver = fs.name();
        let limit = self.timeouts.transfer;
        let st = self
            .step(limit, "syncing the file system", fs.pass(which))
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
            stats.record_fs(driver, st.files, st.bytes, st.deleted, which == Pass::Final);
            self.emit(Progress::Bytes(stats.bytes()));
        }
        Ok(st)
    }

    /// Runs a blocking htype hook off the runtime's threads.
    async fn hook<T: Send + 'static>(
        &self,
        f: impl FnOnce(&dyn Htype) -> phaul_htypes::Result<T> + Send + 'static,
    ) -> Result<T> {
        let h = self.htype.clone();
        tokio::task::spawn_blocking(move || f(h.as_ref()))
            .await
            .map_err(|e| Error::Protocol(format!("an htype task: {e}")))?
            .map_err(Error::Htype)
    }

    /// The final step of a kind that dumps itself (runc): its manager
    /// dumps it and leaves it frozen; the files follow; the target
    /// restores; only after the commit is the source ended, and any failure
    /// before resumes it.
    async fn final_self_dump(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        ctx: &Ctx,
    ) -> Result<()> {
        self.enter(stats, Phase::FinalDump);
        let dir = ctx.dir.join("0");
        let work = ctx.dir.join("0.work");
        mkdir(&dir)?;
        mkdir(&work)?;
        let t0 = Instant::now();
        self.freezing(stats, t0);
        let (d, w) = (dir.clone(), work.clone());
        let dumped = self.hook(move |h| h.dump_self(&d, &w)).await;
        if let Err(e) = dumped.map_err(|e| match e {
            // The manager only says "criu failed": its CRIU's log says why.
            Error::Htype(h) => crate::logs::manager_error(h, &[work.join("dump.log")]),
            other => other,
        }) {
            // The kind has resumed the tree itself.
            self.abort_target(ctl, &e).await;
            return Err(e);
        }
        let to_target = async {
            self.fs_pass(stats, ctx, Pass::Final).await?;
            self.write_meta_files(&dir).await?;
            self.transfer_images(stats, ctl, images, &dir, 0).await?;
            self.restore_and_commit(stats, ctl, 0, false).await
        };
        match self.while_frozen(to_target).await {
            Ok(()) => {
                let report =
                    iteration_report(0, "dump", &DumpStatsEntry::default(), 0, t0.elapsed());
                stats.record_iteration(report.clone());
                self.emit(Progress::Iteration(report));
                self.cleanup_source().await;
                Ok(())
            }
            Err(e) => {
                self.enter(stats, Phase::Rollback);
                self.emit(Progress::RollingBack(e.to_string()));
                self.abort_target(ctl, &e).await;
                if let Err(re) = self.hook(|h| h.resume_source()).await {
                    warn!(error = %re, "resuming the source");
                }
                Err(e)
            }
        }
    }

    /// Restart (cold) mode: the files follow while it runs; then it is
    /// stopped, the last changes synced, and it is started on the target.
    /// If anything fails after the stop, it is started again here.
    async fn restart(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        ctx: &Ctx,
    ) -> Result<()> {
        self.enter(stats, Phase::PreCopy);
        // P.Haul's restart rule: stop iterating once a pass moves at most
        // 1 MiB, grows by more than 10%, or after 8 passes.
        let mut prev: Option<u64> = None;
        for _ in 0..8 {
            let Some(st) = self.fs_pass(stats, ctx, Pass::Iteration).await? else {
                break;
            };
            if st.bytes <= 1 << 20 || prev.is_some_and(|p| st.bytes > p + p / 10) {
                break;
            }
            prev = Some(st.bytes);
        }
        self.enter(stats, Phase::FinalDump);
        stats.source_frozen(Instant::now()).ok();
        self.emit(Progress::Frozen);
        self.hook(|h| h.stop()).await?;
        let dir = ctx.dir.join("0");
        mkdir(&dir)?;
        let to_target = async {
            self.fs_pass(stats, ctx, Pass::Final).await?;
            self.write_meta_files(&dir).await?;
            self.transfer_images(stats, ctl, images, &dir, 0).await?;
            self.enter(stats, Phase::Restore);
            match self
                .call(
                    ctl,
                    request::Body::Restore(proto::Restore {
                        iteration: 0,
                        lazy: false,
                        cold: true,
                    }),
                )
                .await?
            {
                response::Body::Restored(r) => stats.set_target_pid(r.pid),
                other => return Err(unexpected("Restore", &other)),
            }
            self.enter(stats, Phase::Commit);
            match self
                .call(
                    ctl,
                    request::Body::Commit(proto::Commit { valid_for_ms: 0 }),
                )
                .await?
            {
                response::Body::Committed(_) => {
                    stats.target_resumed(Instant::now()).ok();
                    if let Some(d) = stats.downtime_so_far() {
                        self.emit(Progress::Resumed(d));
                    }
                    Ok(())
                }
                other => Err(unexpected("Commit", &other)),
            }
        };
        match to_target.await {
            Ok(()) => {
                self.cleanup_source().await;
                Ok(())
            }
            Err(e) => {
                self.enter(stats, Phase::Rollback);
                self.emit(Progress::RollingBack(e.to_string()));
                self.abort_target(ctl, &e).await;
                if let Err(se) = self.hook(|h| h.start()).await {
                    warn!(error = %se, "starting it again on the source");
                }
                Err(e)
            }
        }
    }

    /// The htype's files made just before the final dump (best effort by
    /// the htype; a bad name is still refused).
    async fn write_files_before_dump(&self, dir: &Path) -> Result<()> {
        for (name, content) in self.hook(|h| Ok(h.files_before_dump())).await? {
            phaul_transport::images::check_name(&name)?;
            std::fs::write(dir.join(&name), content).map_err(|source| Error::Io {
                what: format!("writing {name} into the images"),
                source,
            })?;
        }
        Ok(())
    }

    /// Adds the htype's extra files (a container's config, its console) to
    /// the final images; made while the tree is frozen.
    async fn write_meta_files(&self, dir: &Path) -> Result<()> {
        for (name, content) in self.hook(|h| h.meta_files()).await? {
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
        if let Err(e) = self.hook(|h| h.cleanup_source()).await {
            warn!(error = %e, "removing what remains on the source");
        }
    }

    async fn transfer_images(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        images: &mut Link,
        dir: &Path,
        i: u32,
    ) -> Result<()> {
        self.enter(stats, Phase::ImageTransfer);
        let t = Instant::now();
        let send = async { send_dir_over(images, dir).await.map_err(Error::Link) };
        let ask = self.call(ctl, request::Body::Images(proto::Images { iteration: i }));
        let (sent, _) = self
            .step(self.timeouts.transfer, "sending the images", async {
                tokio::try_join!(send, ask)
            })
            .await?;
        stats.set_image_transfer(t.elapsed());
        stats.add_bytes(sent.bytes);
        self.emit(Progress::Bytes(stats.bytes()));
        Ok(())
    }

    async fn restore_and_commit(
        &self,
        stats: &mut Ongoing,
        ctl: &mut ControlClient,
        i: u32,
        lazy: bool,
    ) -> Result<()> {
        self.enter(stats, Phase::Restore);
        match self
            .call(
                ctl,
                request::Body::Restore(proto::Restore {
                    iteration: i,
                    lazy,
                    cold: false,
                }),
            )
            .await?
        {
            response::Body::Restored(r) => {
                stats.set_target_pid(r.pid);
                stats.set_restore_time(Duration::from_micros(r.restore_time_us));
            }
            other => return Err(unexpected("Restore", &other)),
        }
        self.enter(stats, Phase::Commit);
        let valid_for_ms = self.commit_lease()?;
        match self
            .call(ctl, request::Body::Commit(proto::Commit { valid_for_ms }))
            .await?
        {
            response::Body::Committed(_) => {
                let now = Instant::now();
                stats.target_resumed(now).ok();
                if let Some(d) = stats.downtime_so_far() {
                    self.emit(Progress::Resumed(d));
                }
                Ok(())
            }
            other => Err(unexpected("Commit", &other)),
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

struct Ctx {
    sid: SessionId,
    pid: i32,
    dir: PathBuf,
    /// The file system is copied, so inodes change: CRIU must resolve
    /// inotify watches by path.
    force_irmap: bool,
    fs: tokio::sync::Mutex<SourceFs>,
}

fn remote(e: phaul_transport::Error) -> Error {
    match e {
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

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// A port free on every interface of this network namespace right now.
fn free_port() -> Result<u16> {
    let l = std::net::TcpListener::bind(("0.0.0.0", 0)).map_err(|source| Error::Io {
        what: "finding a free port".into(),
        source,
    })?;
    l.local_addr()
        .map(|a| a.port())
        .map_err(|source| Error::Io {
            what: "finding a free port".into(),
            source,
        })
}

/// Writes the invalid command straight to CRIU's connection (no relay yet).
async fn poison_direct(mut s: tokio::net::TcpStream) {
    use tokio::io::AsyncWriteExt;
    let _ = s.write_all(&crate::pagestream::POISON).await;
    let _ = s.flush().await;
}

/// An iptables rule in this network namespace that drops connections to a
/// port from anywhere but loopback, removed on drop.
struct PortGuard {
    port: u16,
}

impl PortGuard {
    fn rule(port: u16) -> Vec<String> {
        [
            "INPUT",
            "-p",
            "tcp",
            "--dport",
            &port.to_string(),
            "!",
            "-i",
            "lo",
            "-j",
            "DROP",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    }

    fn install(port: u16) -> Result<Self> {
        let out = std::process::Command::new("iptables")
            .arg("-w")
            .arg("-I")
            .args(Self::rule(port))
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|source| Error::Io { what: "running iptables to guard the lazy page server's port (scripts/setup.sh installs it)".into(), source })?;
        if !out.status.success() {
            return Err(Error::Io {
                what: format!(
                    "guarding the lazy page server's port with iptables: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ),
                source: std::io::Error::other("iptables failed"),
            });
        }
        Ok(Self { port })
    }
}

impl Drop for PortGuard {
    fn drop(&mut self) {
        let _ = std::process::Command::new("iptables")
            .arg("-w")
            .arg("-D")
            .args(Self::rule(self.port))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}
