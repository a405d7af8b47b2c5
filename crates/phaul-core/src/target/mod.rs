//! The target side: a service that accepts migrations, several at once.
//!
//! Each migration is one session: a control channel plus the data channels
//! (images, pages) that join it. The service restores the tree but holds it
//! stopped at CRIU's `post-restore` until the source says `Commit`; if the
//! session ends any other way (`Abort`, a lost connection, an error), the
//! restored tree is killed and the session's directory removed, so the
//! source's resumed copy is the only one.
//!
//! # Layout
//! - this file: [`Service`], which accepts links and routes each to its
//!   session;
//! - [`admission`]: how many migrations it receives at once, and the queue
//!   and `BUSY` refusal beyond that, decided before the source freezes;
//! - `session.rs`: one migration, a typed state machine that follows the
//!   plan the source sent;
//! - [`metrics`]: what the service counts, in Prometheus' text format;
//! - `overheads.rs`: what switch-overs to this host cost beyond their
//!   memory, learned per kind from the sources' commits, for the next
//!   source's downtime prediction;
//! - `pagein.rs`: how fast this host writes image pages into fresh
//!   memory, measured once, for a prediction before anything is learned;
//! - `orders.rs`: a controller's orders (`MANAGE` channel): this service
//!   as the source of a migration to another.

pub mod admission;
pub mod metrics;
mod orders;
mod overheads;
mod pagein;
mod session;

use session::Session;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phaul_transport::images::ImageLimits;
use phaul_transport::tls::hex;
use phaul_transport::{Channel, ControlServer, ErrorCode, Link, LinkConfig, Listener, SessionId};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

use crate::criu::TargetCriu;
use crate::error::{Error, Result};

/// The longest a stopping service waits for its sessions to be undone (a
/// kind's tool that hangs in its abort is killed at its own limit, later).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// How long a data channel may take to arrive after it is expected.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inbox {
    images: mpsc::Sender<Link>,
    pages: mpsc::Sender<Link>,
    fs: mpsc::Sender<Link>,
}

type Sessions = Arc<Mutex<HashMap<SessionId, Inbox>>>;

/// A migration target. `T` is how it reaches CRIU: the real one unless a
/// test puts a stand-in there, so an embedder names just `Service`.
#[derive(Debug)]
pub struct Service<T: TargetCriu = crate::criu::Criu> {
    criu: Arc<T>,
    cfg: LinkConfig,
    work_dir: PathBuf,
    keep_images: bool,
    limits: ImageLimits,
    paths: phaul_htypes::registry::Paths,
    fs_limits: phaul_fs::FsLimits,
    events: Option<mpsc::UnboundedSender<ServiceEvent>>,
    /// Starts what controllers order; `None`: orders are refused.
    launcher: Option<orders::Launcher>,
    metrics: metrics::Metrics,
    admission: admission::Admission,
    /// What switch-overs to this host cost beyond their memory, learned.
    overheads: overheads::Overheads,
    /// How fast this host writes image pages into fresh memory, bytes per
    /// second; measured once, as the service starts on a host with memory
    /// tracking, or at the first `Begin` that pre-dumps (`None`: the
    /// measure failed).
    page_in: tokio::sync::OnceCell<Option<f64>>,
    /// The RCU knob set for each switch-over (see `rcu`); `None`: left alone.
    rcu: Option<crate::rcu::Knob>,
    /// A post-copy's images go to RAM (see `ramdir`).
    images_in_ram: bool,
}

/// What happens on a target, for an embedder that runs the service
/// in-process. Serde both ways; `session` is the link's session id (hex),
/// as the logs show it, and `migration` the source's id for it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "event", rename_all = "kebab-case")]
#[non_exhaustive]
pub enum ServiceEvent {
    /// A migration began: its kind and the plan's mode.
    Began {
        /// The session.
        session: String,
        /// The source's id for the migration.
        migration: String,
        /// The kind (`pid`, `lxc`, ...).
        kind: String,
        /// The mode.
        mode: crate::mode::Mode,
    },
    /// The tree was restored here, and waits for the commit.
    Restored {
        /// The session.
        session: String,
        /// Its root's PID here.
        pid: i32,
    },
    /// The tree runs here.
    Committed {
        /// The session.
        session: String,
        /// Its root's PID here.
        pid: i32,
    },
    /// The session was undone: nothing of it stays here.
    RolledBack {
        /// The session.
        session: String,
    },
    /// After the commit, the rest of the tree's memory stopped coming
    /// (the source or the link failed during a post-copy's pull). The
    /// pages not received are lost, so the tree's processes here were
    /// ended; its files stay.
    PullFailed {
        /// The session.
        session: String,
        /// Its root's PID here, now ended.
        pid: i32,
    },
}

impl Service {
    /// A service restoring with `criu` from `PATH`
    /// ([`Criu::default`](crate::criu::Criu)), accepting links configured
    /// by `link`, keeping each migration's images under `work_dir`.
    /// It takes controllers' orders too ([`Service::controllable`]).
    pub fn with_link(link: LinkConfig, work_dir: impl AsRef<Path>) -> Self {
        Self::new(crate::criu::Criu::default(), link, work_dir)
            .controllable(crate::criu::Criu::default())
    }
}

impl<T: TargetCriu> Service<T> {
    /// A service restoring with `criu`, accepting links configured by `cfg`
    /// (its key, TLS identity), keeping each migration's images under
    /// `work_dir`.
    pub fn new(criu: T, cfg: LinkConfig, work_dir: impl AsRef<Path>) -> Self {
        let metrics = metrics::Metrics::default();
        Self {
            criu: Arc::new(criu),
            cfg,
            work_dir: work_dir.as_ref().to_path_buf(),
            keep_images: false,
            // Not durable: a target that crashes fails the migration and
            // the source still holds the tree, so fsyncs would only add to
            // the downtime.
            limits: ImageLimits {
                durable: false,
                ..ImageLimits::default()
            },
            paths: phaul_htypes::registry::Paths::default(),
            events: None,
            fs_limits: phaul_fs::FsLimits::default(),
            launcher: None,
            metrics: metrics.clone(),
            admission: admission::Admission::new(admission::Limits::default(), metrics),
            overheads: overheads::Overheads::default(),
            page_in: tokio::sync::OnceCell::new(),
            rcu: Some(crate::rcu::Knob::default()),
            images_in_ram: true,
        }
    }

    /// What the first migration would otherwise wait for, done as the
    /// service starts: CRIU's feature check with its nftables probe (0.7 s
    /// in the emulated guest), kept for `Criu::checks_valid`, and where memory
    /// tracking works, the page-in rate. A failure here is only logged:
    /// the pre-flight asks again, and says why.
    async fn warm_up(self: Arc<Self>) {
        match self.criu.features().await {
            Ok(caps) if caps.mem_track => {
                self.page_in_rate().await;
            }
            Ok(_) => {}
            Err(e) => debug!(error = %e, "warming up: CRIU's feature check failed"),
        }
    }

    /// This host's page-in rate (see `pagein`), measured by the first
    /// caller (the others wait for it); a failure is logged once, and
    /// every later migration goes without.
    async fn page_in_rate(&self) -> Option<f64> {
        let dir = self.work_dir.clone();
        *self
            .page_in
            .get_or_init(|| async move {
                let measured = tokio::task::spawn_blocking(move || pagein::measure(&dir))
                    .await
                    .map_err(|e| Error::Protocol(format!("the page-in probe vanished: {e}")))
                    .and_then(|r| r);
                match measured {
                    Ok(rate) => {
                        info!(mib_s = rate / f64::from(1 << 20), "page-in rate measured");
                        Some(rate)
                    }
                    Err(e) => {
                        warn!(error = %e, "no page-in rate: first predictions leave the restore out");
                        None
                    }
                }
            })
            .await
    }

    /// How long restoring `pages` pages' memory takes here, by the page-in
    /// rate measured (if it was, and `pages` is not 0).
    fn restore_of(&self, pages: u64) -> Option<std::time::Duration> {
        let rate = self.page_in.get().copied().flatten()?;
        (pages > 0).then(|| crate::policy::page_in_time(pages, rate))
    }

    /// Receives at most `n` migrations at once (at least 1; by default
    /// [`admission::default_max_running`]: two per CPU, at least 4). The
    /// next ones wait in the queue ([`Service::queue`]) or are refused as
    /// busy, before their sources freeze anything. A controller's orders,
    /// where this service is the source, are not counted.
    pub fn max_migrations(mut self, n: usize) -> Self {
        let limits = admission::Limits {
            max_running: n,
            ..self.admission.limits()
        };
        self.admission = admission::Admission::new(limits, self.metrics.clone());
        self
    }

    /// Beyond [`Service::max_migrations`], up to `max_queued` migrations
    /// wait for a slot, each for at most `wait` (by default 64, for 20 s,
    /// under a source's 30 s request timeout); the next ones, and those
    /// whose wait runs out, are refused as busy. A queued source is not
    /// frozen: its tree runs on where it is.
    pub fn queue(mut self, max_queued: usize, wait: Duration) -> Self {
        let limits = admission::Limits {
            max_queued,
            queue_wait: wait,
            ..self.admission.limits()
        };
        self.admission = admission::Admission::new(limits, self.metrics.clone());
        self
    }

    /// Takes controllers' orders: a peer that proves the key may ask this
    /// service, on a `MANAGE` link, to migrate something of this host to
    /// another service (dumping with `criu`), follow it and cancel it. The
    /// order is checked as `phaul migrate` checks its arguments. Its images
    /// go under `work_dir/controlled`. Without this, orders are refused.
    /// The service is then a source too, so it must run where a source
    /// must: in the mount and network namespaces of the trees it may be
    /// ordered to move (see the `phaul` crate's docs).
    pub fn controllable<C: crate::criu::SourceCriu + Clone>(mut self, criu: C) -> Self {
        self.launcher = Some(orders::Launcher::new(criu));
        self
    }

    /// Receive [`ServiceEvent`]s: each session's beginning, restore,
    /// commit or rollback.
    pub fn events(mut self, tx: mpsc::UnboundedSender<ServiceEvent>) -> Self {
        self.events = Some(tx);
        self
    }

    /// The service's metrics: a handle that stays valid while (and after)
    /// it serves; [`Metrics::render`](metrics::Metrics::render) gives
    /// Prometheus' text format.
    pub fn metrics(&self) -> metrics::Metrics {
        self.metrics.clone()
    }

    /// Limits on what one file-system pass may bring.
    pub fn fs_limits(mut self, limits: phaul_fs::FsLimits) -> Self {
        self.fs_limits = limits;
        self
    }

    /// Where the kinds keep their things on this host (LXC's path).
    pub fn htype_paths(mut self, paths: phaul_htypes::registry::Paths) -> Self {
        self.paths = paths;
        self
    }

    /// Whether the kernel's RCU grace periods are expedited from each
    /// restore's start to its commit (by default they are). Restoring and
    /// committing a container waits for several grace periods (its network
    /// lock, its cgroups, its mounts), about 10 ms each on an idle machine;
    /// expedited, they take well under one, at the cost of an interrupt on
    /// every CPU of this host per grace period while the switch-over runs.
    /// The knob (`/sys/kernel/rcu_expedited`) is given back as it was, also
    /// after a crash (by the next migration), and never touched where an
    /// administrator set it.
    pub fn expedite_rcu(mut self, on: bool) -> Self {
        self.rcu = on.then(crate::rcu::Knob::default);
        self
    }

    /// Keep each migration's images after it ends (for debugging).
    pub fn keep_images(mut self, keep: bool) -> Self {
        self.keep_images = keep;
        self
    }

    /// Whether a post-copy's images are kept in RAM (`/dev/shm`) while it
    /// runs (by default they are, unless kept afterwards). They hold no
    /// memory pages, only the tree's description; on disk, their files'
    /// allocation is inside the downtime. Off, they go to the work
    /// directory as every other mode's do.
    pub fn images_in_ram(mut self, on: bool) -> Self {
        self.images_in_ram = on;
        self
    }

    /// Limits on what one image batch may hold, and whether it is fsynced
    /// (by default it is not: see the field's note in `Service::new`).
    pub fn image_limits(mut self, limits: ImageLimits) -> Self {
        self.limits = limits;
        self
    }

    /// Serves connections from `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: Listener,
        shutdown: impl std::future::Future<Output = ()>,
    ) -> Result<()> {
        std::fs::create_dir_all(&self.work_dir).map_err(|source| Error::Io {
            what: format!("creating {}", self.work_dir.display()),
            source,
        })?;
        let _lock = lock_work_dir(&self.work_dir)?;
        remove_stale_sessions(&self.work_dir);
        crate::ramdir::remove_stale(Path::new(crate::ramdir::BASE));
        let this = Arc::new(self);
        tokio::spawn(Arc::clone(&this).warm_up());
        let sessions: Sessions = Arc::default();
        let (stop, stopping) = watch::channel(false);
        let mut tasks = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        let limits = this.admission.limits();
        info!(
            addr = %listener.local_addr().unwrap_or_default(),
            max_migrations = limits.max_running,
            max_queued = limits.max_queued,
            queue_wait_s = limits.queue_wait.as_secs_f64(),
            "phaul service listening"
        );
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
                r = listener.accept() => {
                    let (stream, peer) = match r {
                        Ok(x) => x,
                        Err(e) => {
                            warn!(error = %e, "accept failed");
                            continue;
                        }
                    };
                    let this = this.clone();
                    let sessions = sessions.clone();
                    let stopping = stopping.clone();
                    tasks.spawn(async move {
                        let Ok(link) = Link::accept(stream, peer, &this.cfg).await else {
                            // Already logged by the handshake.
                            return;
                        };
                        this.route(link, sessions, stopping).await;
                    });
                }
            }
        }
        // Drain: no session outlives the service half-done. Each one not
        // committed rolls back (its restored copy killed, its files
        // removed) before this returns.
        let _ = stop.send(true);
        drop(listener);
        if !tasks.is_empty() {
            info!(
                sessions = tasks.len(),
                "stopping: undoing the sessions under way"
            );
        }
        let drained = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN_TIMEOUT, drained).await.is_err() {
            warn!(
                "sessions still undoing at the drain limit; the next service on this directory removes what they leave"
            );
        }
        Ok(())
    }

    async fn route(
        self: Arc<Self>,
        mut link: Link,
        sessions: Sessions,
        stopping: watch::Receiver<bool>,
    ) {
        let sid = link.session();
        match link.channel() {
            Channel::Manage => self.serve_order(link, stopping).await,
            Channel::Control => {
                let (itx, irx) = mpsc::channel(4);
                let (ptx, prx) = mpsc::channel(4);
                let (ftx, frx) = mpsc::channel(1);
                sessions.lock().expect("not poisoned").insert(
                    sid,
                    Inbox {
                        images: itx,
                        pages: ptx,
                        fs: ftx,
                    },
                );
                info!(session = %hex(&sid), peer = %link.peer(), "migration session opened");
                let version = link.version();
                let mut s = Session::new(self.clone(), sid, version, irx, prx, frx);
                s.run(ControlServer::new(link), stopping).await;
                sessions.lock().expect("not poisoned").remove(&sid);
            }
            ch => {
                let tx = {
                    let map = sessions.lock().expect("not poisoned");
                    map.get(&sid).map(|i| match ch {
                        Channel::Images => i.images.clone(),
                        Channel::Fs => i.fs.clone(),
                        _ => i.pages.clone(),
                    })
                };
                match (tx, ch) {
                    (Some(tx), Channel::Images | Channel::Pages | Channel::Fs) => {
                        let _ = tx.send(link).await;
                    }
                    (None, _) => {
                        warn!(session = %hex(&sid), "a data channel for an unknown session");
                        let _ = link
                            .writer
                            .send_error(ErrorCode::UnknownSession, "no such session", 0)
                            .await;
                    }
                    (Some(_), other) => {
                        let _ = link
                            .writer
                            .send_error(
                                ErrorCode::BadRequest,
                                &format!("{other:?} channels are not served"),
                                0,
                            )
                            .await;
                    }
                }
            }
        }
    }
}

/// Holds the work directory for this service alone: a second service on
/// the same directory would remove the first one's sessions.
fn lock_work_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>> {
    let path = dir.join(".phaul-service.lock");
    let f = std::fs::File::create(&path).map_err(|source| Error::Io {
        what: format!("creating {}", path.display()),
        source,
    })?;
    nix::fcntl::Flock::lock(f, nix::fcntl::FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        Error::Io {
            what: format!("another phaul-service already uses {}", dir.display()),
            source: e.into(),
        }
    })
}

/// Removes what a previous service on this directory left when it died
/// (its sessions' images); a live service removes its own as it goes.
fn remove_stale_sessions(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let id = name.strip_prefix("cpuinfo-").unwrap_or(&name);
        if id.len() == 32
            && id.bytes().all(|b| b.is_ascii_hexdigit())
            && !e.path().join(FAILED_MARK).exists()
        {
            warn!(dir = %e.path().display(), "removing a session left by a previous service");
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// Marks a failed session's directory whose CRIU logs are kept.
const FAILED_MARK: &str = ".phaul-failed";

/// Keeps only the CRIU logs of a failed session, where they are (the error
/// the source reports names them there), marked so that the next service's
/// clean-up leaves them for a person to read. Returns false when nothing was
/// worth keeping.
fn keep_failed_logs(dir: &Path) -> bool {
    match crate::logs::keep_only_logs(dir) {
        Ok(0) => false,
        Ok(_) => {
            let _ = std::fs::write(dir.join(FAILED_MARK), b"");
            info!(dir = %dir.display(), "kept the failed session's CRIU logs");
            true
        }
        Err(e) => {
            warn!(dir = %dir.display(), error = %e, "could not keep the failed session's logs");
            false
        }
    }
}

/// Renders an error with its causes, for the peer and the logs.
pub use phaul_transport::error_chain;

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })
}
