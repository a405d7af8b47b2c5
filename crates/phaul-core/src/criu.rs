//! CRIU behind a seam: the operations the engine needs on each host.
//!
//! [`SourceCriu`] and [`TargetCriu`] are small traits so the engine's logic
//! (modes, iterations, convergence, rollback) can run against a stand-in
//! ([`crate::standin`]) where the kernel lacks a feature, such as the
//! soft-dirty tracking pre-copy needs. [`Criu`] implements both over
//! `criu-rpc` for real.
//!
//! CRIU's "hold" points are modelled as values: [`HeldDump`] is a final dump
//! stopped at `post-dump` (the tree frozen, its images written), and
//! [`HeldRestore`] a restore stopped at `post-restore` (the tree restored but
//! not yet running). Each must be decided: commit or roll back. Dropping one
//! undecided rolls back, so a crashed or cancelled engine never leaves both
//! copies running, nor neither.

use std::future::Future;
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::Duration;

use criu_rpc::image::{read_dump_stats, read_restore_stats};
use criu_rpc::proto::{DumpStatsEntry, RestoreStatsEntry};
use criu_rpc::{Event, FIRST_PASSED_FD, Opts, Script};
use phaul_htypes::CriuOptions;
use tokio::sync::oneshot;
use tracing::{debug, warn};

use crate::dirty::DirtyRate;
use crate::error::{Error, Result};
use crate::freezer::Prefrozen;
use crate::kept::Kept;
use crate::mode::HostCaps;

/// One dump (or pre-dump) to make.
#[derive(Debug, Clone)]
pub struct DumpSpec {
    /// The root of the tree.
    pub pid: i32,
    /// Where the images go.
    pub images_dir: PathBuf,
    /// Where CRIU's log and `stats-dump` go.
    pub work_dir: PathBuf,
    /// The previous iteration, relative to `images_dir` (`"../2"`).
    pub parent: Option<String>,
    /// Track memory changes (pre-copy; needs soft-dirty).
    pub track_mem: bool,
    /// What the htype asks for.
    pub options: CriuOptions,
    /// The iteration number (for logs and stand-ins).
    pub iteration: u32,
}

/// One restore to make.
#[derive(Debug, Clone)]
pub struct RestoreSpec {
    /// The images.
    pub images_dir: PathBuf,
    /// CRIU's log, `stats-restore` and, for lazy restores, the
    /// lazy-pages daemon's socket.
    pub work_dir: PathBuf,
    /// Restore with lazy pages (post-copy).
    pub lazy: bool,
    /// What the htype asks for.
    pub options: CriuOptions,
}

/// A final dump held at `post-dump`: the tree is frozen, its images are
/// written and its memory sent.
#[derive(Debug)]
pub struct HeldDump {
    decide: oneshot::Sender<bool>,
    done: oneshot::Receiver<Result<Option<DumpStatsEntry>>>,
}

impl HeldDump {
    /// Makes a held dump from the two ends a CRIU driver keeps: it reads the
    /// decision and sends the outcome (`Some(stats)` after a commit).
    pub fn new(
        decide: oneshot::Sender<bool>,
        done: oneshot::Receiver<Result<Option<DumpStatsEntry>>>,
    ) -> Self {
        Self { decide, done }
    }

    /// The target has the tree: end the source's copy. Returns CRIU's
    /// statistics of the dump (`frozen_time` includes the hold).
    pub async fn commit(self) -> Result<Option<DumpStatsEntry>> {
        let _ = self.decide.send(true);
        self.done
            .await
            .map_err(|_| Error::Protocol("the dump driver vanished".into()))?
    }

    /// Give up: CRIU resumes the tree on the source.
    pub async fn rollback(self) -> Result<()> {
        let _ = self.decide.send(false);
        match self.done.await {
            // A refused post-dump makes CRIU fail the dump: that is the
            // rollback working.
            Ok(Ok(_)) | Ok(Err(Error::SourceCriu(_))) => Ok(()),
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

/// A lazy (post-copy) dump serving pages: the tree is frozen, its images
/// written but for the memory, which CRIU serves on `port`.
#[derive(Debug)]
pub struct LazyDump {
    /// The port CRIU's page server listens on (on every interface of its
    /// network namespace; the engine guards it).
    pub port: u16,
    done: oneshot::Receiver<Result<Option<DumpStatsEntry>>>,
}

impl LazyDump {
    /// Makes one from the driver's outcome channel.
    pub fn new(port: u16, done: oneshot::Receiver<Result<Option<DumpStatsEntry>>>) -> Self {
        Self { port, done }
    }

    /// Waits for the dump to end: every page pulled (the tree is then ended
    /// by CRIU), or the transfer failed (the tree resumed).
    pub async fn wait(self) -> Result<Option<DumpStatsEntry>> {
        self.done
            .await
            .map_err(|_| Error::Protocol("the dump driver vanished".into()))?
    }
}

/// A page server receiving one iteration's pages.
#[derive(Debug)]
pub struct PageServing {
    done: oneshot::Receiver<Result<()>>,
}

impl PageServing {
    /// Makes one from the driver's outcome channel.
    pub fn new(done: oneshot::Receiver<Result<()>>) -> Self {
        Self { done }
    }

    /// Waits until it has served its one dump and exited.
    pub async fn wait(self) -> Result<()> {
        self.done
            .await
            .map_err(|_| Error::Protocol("the page server driver vanished".into()))?
    }
}

/// A restore held at `post-restore`: the tree exists on the target, stopped.
#[derive(Debug)]
pub struct HeldRestore {
    /// The restored root's PID on the target.
    pub pid: i32,
    decide: oneshot::Sender<bool>,
    done: oneshot::Receiver<Result<Option<RestoreStatsEntry>>>,
}

impl HeldRestore {
    /// Makes one from the driver's channels.
    pub fn new(
        pid: i32,
        decide: oneshot::Sender<bool>,
        done: oneshot::Receiver<Result<Option<RestoreStatsEntry>>>,
    ) -> Self {
        Self { pid, decide, done }
    }

    /// Let the tree run.
    pub async fn commit(self) -> Result<Option<RestoreStatsEntry>> {
        let _ = self.decide.send(true);
        self.done
            .await
            .map_err(|_| Error::Protocol("the restore driver vanished".into()))?
    }

    /// Abort the restore: CRIU kills the restored tree.
    pub async fn abort(self) {
        let _ = self.decide.send(false);
        let _ = self.done.await;
    }
}

/// The descriptor the lazy-pages daemon gets its page connection on.
const LAZY_PS_FD: std::os::fd::RawFd = 3;

/// A lazy-pages daemon on the target (post-copy).
#[derive(Debug)]
pub struct LazyDaemon {
    child: Option<tokio::process::Child>,
}

impl LazyDaemon {
    /// A daemon that is not a process of ours (stand-ins).
    pub fn none() -> Self {
        Self { child: None }
    }

    /// Waits for the daemon to finish pulling every page.
    pub async fn wait(mut self) -> Result<()> {
        if let Some(c) = self.child.as_mut() {
            let st = c.wait().await.map_err(|source| Error::Io {
                what: "waiting for criu lazy-pages".into(),
                source,
            })?;
            if !st.success() {
                return Err(Error::Target(format!("criu lazy-pages exited with {st}")));
            }
        }
        Ok(())
    }

    /// Ends the daemon (the restore it served has failed).
    pub async fn kill(mut self) {
        if let Some(c) = self.child.as_mut() {
            let _ = c.kill().await;
        }
    }
}

/// What the engine needs of CRIU on the source.
pub trait SourceCriu: Send + Sync + 'static {
    /// CRIU's version, as text (`"4.1.1"`).
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
    /// What the kernel and CRIU support here.
    fn features(&self) -> impl Future<Output = Result<HostCaps>> + Send;
    /// This CPU's description (`cpuinfo.img`), made in `scratch`; empty
    /// where CRIU cannot describe CPUs.
    fn cpuinfo(&self, scratch: &Path) -> impl Future<Output = Result<Vec<u8>>> + Send;
    /// A pre-dump whose pages go out on `pages` (a connected stream socket).
    fn pre_dump(
        &self,
        spec: DumpSpec,
        pages: OwnedFd,
    ) -> impl Future<Output = Result<DumpStatsEntry>> + Send;
    /// A final dump whose pages go out on `pages`; returns once the tree is
    /// frozen and everything is written, held at `post-dump`.
    fn dump(&self, spec: DumpSpec, pages: OwnedFd)
    -> impl Future<Output = Result<HeldDump>> + Send;
    /// A lazy final dump serving pages on `port`; returns once it listens.
    fn lazy_dump(&self, spec: DumpSpec, port: u16)
    -> impl Future<Output = Result<LazyDump>> + Send;
    /// Whether this CRIU can dump a process holding a TCP socket here,
    /// found by trying in `scratch` (see [`crate::sockets`]); `Err` says
    /// why not, in CRIU's words. A seam without sockets says yes.
    fn probe_inet_dump(&self, scratch: &Path) -> impl Future<Output = Result<()>> + Send {
        let _ = scratch;
        async { Ok(()) }
    }
    /// Whether this host's kernel keeps soft-dirty bits, by a cheap look
    /// (no CRIU run): where it does not, no probe starts beside the
    /// pre-flight. CRIU's feature check still decides the mode.
    fn tracks_dirty_pages(&self) -> bool {
        false
    }
    /// How fast the tree rooted at `pid` dirties its memory, measured over
    /// `over` before any pre-dump (see [`crate::dirty`]); `None` where this
    /// seam cannot tell. The measure owns what it needs (`'static`): it is
    /// started during the pre-flight and awaited before the first pre-dump.
    fn dirty_rate(
        &self,
        pid: i32,
        over: Duration,
    ) -> impl Future<Output = Result<Option<DirtyRate>>> + Send + 'static {
        let _ = (pid, over);
        async { Ok(None) }
    }
    /// What a dump made by another hand (a container manager's CRIU) holds,
    /// read from its files: its stats-dump in `work_dir`, and after a lazy
    /// dump the page counts of its pagemaps in `images_dir`.
    fn image_stats(&self, work_dir: &Path, images_dir: &Path) -> DumpStatsEntry {
        lazy_dump_stats(work_dir, images_dir).unwrap_or_default()
    }
}

/// What the engine needs of CRIU on the target.
pub trait TargetCriu: Send + Sync + 'static {
    /// CRIU's version, as text.
    fn version(&self) -> impl Future<Output = Result<String>> + Send;
    /// What the kernel and CRIU support here.
    fn features(&self) -> impl Future<Output = Result<HostCaps>> + Send;
    /// Checks the source's `cpuinfo.img` against this CPU; the error says
    /// why they differ.
    fn cpuinfo_check(
        &self,
        cpuinfo: Vec<u8>,
        scratch: &Path,
    ) -> impl Future<Output = Result<()>> + Send;
    /// A page server writing into `images_dir`, reading from `pages`.
    fn page_server(
        &self,
        images_dir: PathBuf,
        parent: Option<String>,
        pages: OwnedFd,
    ) -> impl Future<Output = Result<PageServing>> + Send;
    /// Starts CRIU's lazy-pages daemon for `dir`, fetching pages over
    /// `pages` (a connected stream socket, its page-server connection);
    /// returns once it is ready for a restore.
    fn lazy_pages(
        &self,
        dir: PathBuf,
        pages: OwnedFd,
    ) -> impl Future<Output = Result<LazyDaemon>> + Send;
    /// Restores, and holds the tree at `post-restore`.
    fn restore(&self, spec: RestoreSpec) -> impl Future<Output = Result<HeldRestore>> + Send;
}

/// The real CRIU, through `criu-rpc`.
#[derive(Debug, Clone)]
pub struct Criu {
    rpc: criu_rpc::Criu,
    log_level: i32,
    /// What it said of itself, shared by clones (see [`crate::kept`]).
    known: Known,
    /// How long those answers are believed.
    checks_valid: Duration,
}

/// What a [`Criu`] said of itself, each kept for [`Criu::checks_valid`].
#[derive(Debug, Clone, Default)]
struct Known {
    version: Kept<String>,
    caps: Kept<HostCaps>,
    /// This host's CPU, as its CRIU writes it for a target to check.
    cpuinfo: Kept<Vec<u8>>,
    /// The last source CPU this host's CRIU could run trees from.
    cpu_accepted: Kept<Vec<u8>>,
}

/// How long a [`Criu`]'s answers about itself are believed unless told
/// otherwise: a daemon's migrations a minute apart ask once, and a CRIU
/// upgraded under a running daemon is seen within minutes.
pub const DEFAULT_CHECKS_VALID: Duration = Duration::from_secs(300);

/// `criu` on `PATH` at log level 2, its own output kept off the caller's
/// terminal (its log files say what it did): what [`crate::Migration::to`]
/// and [`crate::Service::with_link`] use.
impl Default for Criu {
    fn default() -> Self {
        Self::new(criu_rpc::Criu::new().quiet(true))
    }
}

impl Criu {
    /// CRIU reached through `rpc`, logging at CRIU's default level (2:
    /// errors and warnings). Debug logs (4) cost measurable time in large
    /// dumps and restores; ask for them with [`Criu::log_level`].
    pub fn new(rpc: criu_rpc::Criu) -> Self {
        Self {
            rpc,
            log_level: 2,
            known: Known::default(),
            checks_valid: DEFAULT_CHECKS_VALID,
        }
    }

    /// How long this handle and its clones believe what this CRIU said
    /// about itself (its version, features and CPU, and a source CPU it
    /// accepted) before asking again: [`DEFAULT_CHECKS_VALID`] unless
    /// told; zero asks before every migration.
    pub fn checks_valid(mut self, valid: Duration) -> Self {
        self.checks_valid = valid;
        self
    }

    /// CRIU's log level, 0 (none) to 4 (debug).
    pub fn log_level(mut self, level: i32) -> Self {
        self.log_level = level.clamp(0, 4);
        self
    }

    fn base(&self, options: &CriuOptions) -> Opts {
        opts_from(options).log_level(self.log_level)
    }

    fn dump_opts(&self, spec: &DumpSpec, log: &str) -> Opts {
        let mut o = self
            .base(&spec.options)
            .pid(spec.pid)
            .images_dir(&spec.images_dir)
            .work_dir(&spec.work_dir)
            .log_file(log)
            .track_mem(spec.track_mem);
        if let Some(p) = &spec.parent {
            o = o.parent_img(p.clone());
        }
        o
    }
}

/// CRIU's `--manage-cgroups` mode names.
fn cgroup_mode(name: &str) -> Option<criu_rpc::opts::CgroupMode> {
    use criu_rpc::opts::CgroupMode as M;
    Some(match name {
        "none" => M::CgNone,
        "props" => M::Props,
        "soft" => M::Soft,
        "full" => M::Full,
        "strict" => M::Strict,
        "ignore" => M::Ignore,
        _ => return None,
    })
}

fn src(e: criu_rpc::Error) -> Error {
    Error::SourceCriu(e)
}

fn tgt(e: criu_rpc::Error) -> Error {
    Error::TargetCriu(e)
}

fn caps(f: criu_rpc::Features) -> HostCaps {
    HostCaps {
        mem_track: f.mem_track,
        lazy_pages: f.lazy_pages,
        // Asked of the binary by `Criu::host_caps`.
        nftables_lock: false,
    }
}

/// Sends a final dump's request, the kind's freezer cgroup frozen first
/// (see [`crate::freezer`]); thawed again if CRIU refuses it.
async fn start_dump(
    s: criu_rpc::Session,
    opts: Opts,
    spec: &DumpSpec,
) -> Result<(criu_rpc::Exchange<criu_rpc::Dumped>, Prefrozen)> {
    let cgroup = spec.options.freeze_cgroup.as_deref().map(Path::new);
    let frozen = Prefrozen::freeze(cgroup).await;
    match s.dump(opts).await {
        Ok(ex) => Ok((ex, frozen)),
        Err(e) => {
            frozen.thaw();
            Err(src(e))
        }
    }
}

/// Reads `stats-dump`, which CRIU writes after its answer; absent is `None`.
fn dump_stats(work: &Path) -> Option<DumpStatsEntry> {
    read_dump_stats(work)
        .map_err(|e| warn!(dir = %work.display(), error = %e, "no dump statistics"))
        .ok()
}

/// A lazy dump's statistics. CRIU's stats-dump counts no pages after a
/// lazy dump; its pagemaps say what it wrote and what it served later.
fn lazy_dump_stats(work: &Path, images: &Path) -> Option<DumpStatsEntry> {
    let mut st = dump_stats(work).unwrap_or_default();
    if st.pages_scanned == 0 && st.pages_lazy == 0 {
        match criu_rpc::image::read_pagemaps(images) {
            Ok(t) => {
                st.pages_scanned = t.pages;
                st.pages_written = t.present;
                st.pages_lazy = t.lazy;
                st.pages_skipped_parent = t.in_parent;
            }
            Err(e) => {
                warn!(dir = %images.display(), error = %e, "reading the lazy dump's pagemaps")
            }
        }
    }
    Some(st)
}

/// Waits for the engine's decision on a held notification and answers it:
/// success to go on, failure (also when the engine is gone) to roll back.
async fn answer_held(
    n: criu_rpc::Notification<'_>,
    decide: &mut Option<oneshot::Receiver<bool>>,
) -> criu_rpc::Result<bool> {
    let go = match decide.take() {
        Some(rx) => rx.await.unwrap_or(false),
        None => false,
    };
    if go {
        n.ack().await?;
    } else {
        n.nack().await?;
    }
    Ok(go)
}

/// Sends a driver's failure to whoever waits for it: the caller still
/// waiting for the hold point, or else the one waiting for the end.
fn route_failure<R, D>(
    e: Error,
    ready: Option<oneshot::Sender<Result<R>>>,
    done: oneshot::Sender<Result<D>>,
) {
    match ready {
        Some(tx) => {
            let _ = tx.send(Err(e));
        }
        None => {
            let _ = done.send(Err(e));
        }
    }
}

/// Where a CRIU driver's end goes: a failure as [`route_failure`] says; an
/// end before the notification someone still waits for, as an error
/// (`early`) to them; else `done()` to the outcome's receiver.
fn route_end<R, D>(
    outcome: Result<()>,
    ready: Option<oneshot::Sender<Result<R>>>,
    done_tx: oneshot::Sender<Result<D>>,
    early: &str,
    done: impl FnOnce() -> D,
) {
    match (outcome, ready) {
        (Err(e), ready) => route_failure(e, ready, done_tx),
        (Ok(()), Some(tx)) => {
            let _ = tx.send(Err(Error::Protocol(early.into())));
        }
        (Ok(()), None) => {
            let _ = done_tx.send(Ok(done()));
        }
    }
}

impl Criu {
    /// CRIU's version, if it is one phaul works with; errors as `side`
    /// (the source's CRIU or the target's) names them.
    async fn checked_version(&self, side: fn(criu_rpc::Error) -> Error) -> Result<String> {
        let ask = || async {
            self.rpc
                .ensure_version(&criu_rpc::Version::MINIMUM)
                .await
                .map(|v| v.to_string())
                .map_err(side)
        };
        self.known
            .version
            .get(self.checks_valid, |_| true, ask)
            .await
    }

    /// What CRIU's feature check says this host can do.
    async fn host_caps(&self, side: fn(criu_rpc::Error) -> Error) -> Result<HostCaps> {
        let ask = || async {
            let mut s = self.rpc.connect().await.map_err(side)?;
            let mut caps = s.feature_check().await.map(caps).map_err(side)?;
            caps.nftables_lock = self.nftables_lock().await;
            Ok(caps)
        };
        self.known.caps.get(self.checks_valid, |_| true, ask).await
    }

    /// This host's CPU as CRIU writes it (`cpuinfo.img`, made in
    /// `scratch`); empty where this CRIU cannot write one.
    async fn dump_cpuinfo(&self, scratch: &Path) -> Result<Vec<u8>> {
        let mut s = self.rpc.connect().await.map_err(src)?;
        match s
            .cpuinfo_dump(Opts::new().images_dir(scratch).log_file("cpuinfo-dump.log"))
            .await
        {
            Ok(()) => std::fs::read(scratch.join("cpuinfo.img")).map_err(|source| Error::Io {
                what: "reading cpuinfo.img".into(),
                source,
            }),
            Err(criu_rpc::Error::Criu {
                errno: Some(nix::errno::Errno::ENOTSUP),
                ..
            }) => Ok(Vec::new()),
            Err(e) => Err(src(e)),
        }
    }

    /// Whether this CRIU can lock a network with nftables. RPC's feature
    /// check does not say, so its binary is asked (`criu check --feature
    /// network_lock_nftables`), as part of the features kept for
    /// [`Criu::checks_valid`]: a CRIU reached through a service socket has
    /// no binary here and keeps iptables.
    async fn nftables_lock(&self) -> bool {
        let Some(bin) = self.rpc.binary().map(Path::to_path_buf) else {
            return false;
        };
        let asked = tokio::process::Command::new(&bin)
            .args(["check", "--feature", "network_lock_nftables"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .status()
            .await
            .is_ok_and(|s| s.success());
        debug!(criu = %bin.display(), nftables = asked, "network lock method probed");
        asked
    }
}

impl SourceCriu for Criu {
    fn tracks_dirty_pages(&self) -> bool {
        crate::dirty::tracked_here()
    }

    fn dirty_rate(
        &self,
        pid: i32,
        over: Duration,
    ) -> impl Future<Output = Result<Option<DirtyRate>>> + Send + 'static {
        // Under way from the call: the clear is not put off to a first poll.
        let measuring = tokio::task::spawn_blocking(move || crate::dirty::measure(pid, over));
        async move {
            measuring
                .await
                .map_err(|e| Error::Protocol(format!("the dirty-rate probe vanished: {e}")))?
                .map(Some)
        }
    }

    async fn probe_inet_dump(&self, scratch: &Path) -> Result<()> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|source| Error::Io {
            what: "a socket for the CRIU probe".into(),
            source,
        })?;
        let fd = std::os::fd::AsRawFd::as_raw_fd(&listener);
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("60")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        // SAFETY: the closure calls only setsid and dup2, both
        // async-signal-safe; `fd` is a plain integer copied before the fork.
        unsafe {
            std::os::unix::process::CommandExt::pre_exec(&mut cmd, move || {
                // A session of its own: no terminal for CRIU to refuse, and
                // the socket as fd 3 (dup2 clears close-on-exec).
                if libc::setsid() < 0 || libc::dup2(fd, 3) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(|source| Error::Io {
            what: "starting the CRIU probe's process".into(),
            source,
        })?;
        drop(listener);
        let pid = i32::try_from(child.id()).unwrap_or(0);
        let res = async {
            let s = self.rpc.connect().await.map_err(src)?;
            let opts = Opts::new()
                .pid(pid)
                .images_dir(scratch)
                .log_file("inet-probe.log")
                .log_level(self.log_level)
                .leave_running(true);
            s.dump(opts)
                .await
                .map_err(src)?
                .finish()
                .await
                .map_err(src)?;
            Ok(())
        }
        .await;
        let _ = child.kill();
        let _ = child.wait();
        res
    }

    async fn version(&self) -> Result<String> {
        self.checked_version(src).await
    }

    async fn features(&self) -> Result<HostCaps> {
        self.host_caps(src).await
    }

    async fn cpuinfo(&self, scratch: &Path) -> Result<Vec<u8>> {
        let ask = || self.dump_cpuinfo(scratch);
        self.known
            .cpuinfo
            .get(self.checks_valid, |_| true, ask)
            .await
    }

    async fn pre_dump(&self, spec: DumpSpec, pages: OwnedFd) -> Result<DumpStatsEntry> {
        let s = self.rpc.connect_passing(vec![pages]).await.map_err(src)?;
        let opts = self
            .dump_opts(&spec, "pre-dump.log")
            .page_server_fd(FIRST_PASSED_FD)
            .track_mem(true);
        s.single_pre_dump(opts)
            .await
            .map_err(src)?
            .finish()
            .await
            .map_err(src)?;
        read_dump_stats(&spec.work_dir).map_err(src)
    }

    async fn dump(&self, spec: DumpSpec, pages: OwnedFd) -> Result<HeldDump> {
        let s = self.rpc.connect_passing(vec![pages]).await.map_err(src)?;
        let opts = self
            .dump_opts(&spec, "dump.log")
            .page_server_fd(FIRST_PASSED_FD)
            .notify_scripts(true);
        let (mut ex, frozen) = start_dump(s, opts, &spec).await?;
        let (frozen_tx, frozen_rx) = oneshot::channel::<Result<()>>();
        let (decide_tx, decide_rx) = oneshot::channel::<bool>();
        let (done_tx, done_rx) = oneshot::channel();
        let work = spec.work_dir.clone();
        let images = spec.images_dir.clone();
        tokio::spawn(async move {
            let mut frozen_tx = Some(frozen_tx);
            let mut decide_rx = Some(decide_rx);
            let mut committed = false;
            let outcome = loop {
                match ex.next().await {
                    Ok(Event::Notify(n)) if *n.script() == Script::PostDump => {
                        // The images are complete; none has been sent.
                        frozen.fix_images(&images);
                        if let Some(tx) = frozen_tx.take() {
                            let _ = tx.send(Ok(()));
                        }
                        // Hold: the tree stays frozen until the engine decides.
                        match answer_held(n, &mut decide_rx).await {
                            Ok(go) => {
                                debug!(commit = go, "answered post-dump");
                                committed = go;
                            }
                            Err(e) => break Err(src(e)),
                        }
                    }
                    Ok(Event::Notify(n)) => {
                        if let Err(e) = n.ack().await {
                            break Err(src(e));
                        }
                    }
                    Ok(Event::Done(_)) => break Ok(()),
                    Err(e) => break Err(src(e)),
                }
            };
            if !committed {
                frozen.thaw();
            }
            match (outcome, frozen_tx.take()) {
                (Err(e), ready) => route_failure(e, ready, done_tx),
                (Ok(()), _) => {
                    let _ = done_tx.send(Ok(if committed { dump_stats(&work) } else { None }));
                }
            }
        });
        frozen_rx
            .await
            .map_err(|_| Error::Protocol("the dump driver vanished".into()))??;
        Ok(HeldDump::new(decide_tx, done_rx))
    }

    async fn lazy_dump(&self, spec: DumpSpec, port: u16) -> Result<LazyDump> {
        let s = self.rpc.connect().await.map_err(src)?;
        let opts = self
            .dump_opts(&spec, "dump.log")
            .lazy_pages(true)
            .page_server_port(port)
            .notify_scripts(true);
        let (mut ex, frozen) = start_dump(s, opts, &spec).await?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<()>>();
        let (done_tx, done_rx) = oneshot::channel();
        let work = spec.work_dir.clone();
        let images = spec.images_dir.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let outcome = loop {
                match ex.next().await {
                    Ok(Event::Notify(n)) => {
                        let ready = *n.script() == Script::StatusReady;
                        if *n.script() == Script::PostDump {
                            // The images are complete; none has been sent.
                            frozen.fix_images(&images);
                        }
                        // post-dump is answered at once: the page server only
                        // starts after it. Rolling back from here on goes
                        // through the page-server connection (see the engine).
                        if let Err(e) = n.ack().await {
                            break Err(src(e));
                        }
                        if ready {
                            if let Some(tx) = ready_tx.take() {
                                let _ = tx.send(Ok(()));
                            }
                        }
                    }
                    Ok(Event::Done(_)) => break Ok(()),
                    Err(e) => break Err(src(e)),
                }
            };
            if outcome.is_err() {
                frozen.thaw();
            }
            route_end(
                outcome,
                ready_tx.take(),
                done_tx,
                "the lazy dump ended before serving pages",
                || lazy_dump_stats(&work, &images),
            );
        });
        ready_rx
            .await
            .map_err(|_| Error::Protocol("the dump driver vanished".into()))??;
        Ok(LazyDump::new(port, done_rx))
    }
}

impl TargetCriu for Criu {
    async fn version(&self) -> Result<String> {
        self.checked_version(tgt).await
    }

    async fn features(&self) -> Result<HostCaps> {
        self.host_caps(tgt).await
    }

    async fn cpuinfo_check(&self, cpuinfo: Vec<u8>, scratch: &Path) -> Result<()> {
        let ask = || async {
            std::fs::write(scratch.join("cpuinfo.img"), &cpuinfo).map_err(|source| Error::Io {
                what: "writing cpuinfo.img".into(),
                source,
            })?;
            let mut s = self.rpc.connect().await.map_err(tgt)?;
            s.cpuinfo_check(
                Opts::new()
                    .images_dir(scratch)
                    .log_file("cpuinfo-check.log"),
            )
            .await
            .map_err(tgt)?;
            Ok(cpuinfo.clone())
        };
        self.known
            .cpu_accepted
            .get(self.checks_valid, |cpu| *cpu == cpuinfo, ask)
            .await
            .map(drop)
    }

    async fn page_server(
        &self,
        images_dir: PathBuf,
        parent: Option<String>,
        pages: OwnedFd,
    ) -> Result<PageServing> {
        let mut s = self.rpc.connect_passing(vec![pages]).await.map_err(tgt)?;
        let mut opts = Opts::new()
            .images_dir(&images_dir)
            .log_file("page-server.log")
            .log_level(self.log_level)
            .page_server_fd(FIRST_PASSED_FD);
        if let Some(p) = parent {
            opts = opts.parent_img(p);
        }
        let ps = s.page_server_chld(opts).await.map_err(tgt)?;
        let (tx, rx) = oneshot::channel();
        tokio::spawn(async move {
            let r = s.wait_pid(ps.pid).await.map_err(tgt).and_then(|status| {
                if status == 0 {
                    Ok(())
                } else {
                    Err(Error::Target(format!(
                        "the page server ended with wait status {status:#x}"
                    )))
                }
            });
            let _ = tx.send(r);
        });
        Ok(PageServing::new(rx))
    }

    async fn lazy_pages(&self, dir: PathBuf, pages: OwnedFd) -> Result<LazyDaemon> {
        let bin = self
            .rpc
            .binary()
            .map(Path::to_path_buf)
            .unwrap_or_else(criu_rpc::default_binary);
        let mut cmd = tokio::process::Command::new(&bin);
        // The connection is handed over (`--ps-socket`), not dialled: CRIU
        // corks a TCP page-server connection and pushes only its page
        // requests, so its closing command would sit in the cork for
        // 200 ms. A Unix socket has no cork: CRIU logs a warning for each
        // TCP option it cannot set on it, and sends everything at once.
        cmd.arg("lazy-pages")
            .arg("--page-server")
            .args(["--ps-socket", &LAZY_PS_FD.to_string()])
            .arg("-D")
            .arg(&dir)
            .arg("-W")
            .arg(&dir)
            .args(["-o", "lazy-pages.log", &format!("-v{}", self.log_level)])
            // Like `criu swrk`: signals to our group are not CRIU's.
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true);
        let io = |what: String| move |source| Error::Io { what, source };
        let passed = criu_rpc::hand_over(&mut cmd, &[pages.as_fd()], LAZY_PS_FD)
            .map_err(io("passing the page connection to criu lazy-pages".into()))?;
        let mut child = cmd
            .spawn()
            .map_err(io(format!("starting {} lazy-pages", bin.display())))?;
        drop((passed, pages));
        let sock = dir.join("lazy-pages.socket");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while !sock.exists() {
            if let Ok(Some(st)) = child.try_wait() {
                // Its log says why; the exit status alone does not.
                let log = dir.join("lazy-pages.log");
                let cause =
                    crate::logs::cause_in(&log).map_or_else(String::new, |c| format!(": {c}"));
                return Err(Error::Target(format!(
                    "criu lazy-pages exited with {st} before it was ready{cause} (its log: {})",
                    log.display()
                )));
            }
            if tokio::time::Instant::now() > deadline {
                let _ = child.kill().await;
                return Err(Error::Timeout("criu lazy-pages did not get ready".into()));
            }
            // Inside the downtime: look often (CRIU needs ~15 ms to get here).
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        Ok(LazyDaemon { child: Some(child) })
    }

    async fn restore(&self, spec: RestoreSpec) -> Result<HeldRestore> {
        let s = self.rpc.connect().await.map_err(tgt)?;
        let opts = self
            .base(&spec.options)
            .images_dir(&spec.images_dir)
            .work_dir(&spec.work_dir)
            .log_file("restore.log")
            .lazy_pages(spec.lazy)
            .notify_scripts(true);
        let mut ex = s.restore(opts).await.map_err(tgt)?;
        let (ready_tx, ready_rx) = oneshot::channel::<Result<i32>>();
        let (decide_tx, decide_rx) = oneshot::channel::<bool>();
        let (done_tx, done_rx) = oneshot::channel();
        let work = spec.work_dir.clone();
        tokio::spawn(async move {
            let mut ready_tx = Some(ready_tx);
            let mut decide_rx = Some(decide_rx);
            let outcome = loop {
                match ex.next().await {
                    Ok(Event::Notify(n)) if *n.script() == Script::PostRestore => {
                        let pid = n.pid().unwrap_or(0);
                        if let Some(tx) = ready_tx.take() {
                            let _ = tx.send(Ok(pid));
                        }
                        // Hold: restored but stopped until the engine decides.
                        if let Err(e) = answer_held(n, &mut decide_rx).await {
                            break Err(tgt(e));
                        }
                    }
                    Ok(Event::Notify(n)) => {
                        if let Err(e) = n.ack().await {
                            break Err(tgt(e));
                        }
                    }
                    Ok(Event::Done(_)) => break Ok(()),
                    Err(e) => break Err(tgt(e)),
                }
            };
            route_end(
                outcome,
                ready_tx.take(),
                done_tx,
                "restore ended without post-restore",
                || read_restore_stats(&work).ok(),
            );
        });
        let pid = ready_rx
            .await
            .map_err(|_| Error::Protocol("the restore driver vanished".into()))??;
        Ok(HeldRestore::new(pid, decide_tx, done_rx))
    }
}

/// CRIU request options for what an htype asks ([`Htype::dump_options`],
/// [`Htype::restore_options`]); the request's own fields (pid, dirs, log)
/// are the caller's.
///
/// [`Htype::dump_options`]: phaul_htypes::SourceHooks::dump_options
/// [`Htype::restore_options`]: phaul_htypes::TargetHooks::restore_options
pub fn opts_from(options: &CriuOptions) -> Opts {
    let mut o = Opts::new()
        .shell_job(options.shell_job)
        .tcp_established(options.tcp_established)
        .tcp_close(options.tcp_close)
        .ext_unix_sk(options.ext_unix_sk)
        .file_locks(options.file_locks)
        .link_remap(options.link_remap)
        .evasive_devices(options.evasive_devices);
    if let Some(c) = &options.freeze_cgroup {
        o = o.freeze_cgroup(c.clone());
    }
    for e in &options.external {
        o = o.external(e.clone());
    }
    if let Some(r) = &options.root {
        o = o.root(r.clone());
    }
    if let Some(g) = options.ghost_limit {
        o = o.ghost_limit(g);
    }
    o = o
        .tcp_skip_in_flight(options.tcp_skip_in_flight)
        .force_irmap(options.force_irmap)
        .auto_ext_mnt(options.auto_ext_mnt)
        .ext_sharing(options.ext_sharing)
        .ext_masters(options.ext_masters);
    if let Some(mode) = options.manage_cgroups.as_deref().and_then(cgroup_mode) {
        o = o.manage_cgroups_mode(mode);
    }
    if let Some(y) = &options.cgroup_yard {
        o = o.cgroup_yard(y.clone());
    }
    if options.network_lock_nftables {
        o = o.network_lock(criu_rpc::opts::NetworkLock::Nftables);
    }
    for (ctrl, path) in &options.cgroup_roots {
        o = o.cgroup_root(ctrl.clone(), path.clone());
    }
    for (key, val) in &options.ext_mounts {
        o = o.ext_mount(key.clone(), val.clone());
    }
    for fs in &options.enable_fs {
        o = o.enable_fs(fs.clone());
    }
    for p in &options.irmap_scan_paths {
        o = o.irmap_scan_path(p.clone());
    }
    if options.mntns_compat_mode {
        o = o.mntns_compat_mode(true);
    }
    o
}
