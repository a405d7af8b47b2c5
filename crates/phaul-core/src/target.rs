//! The target side: a service that accepts migrations, several at once.
//!
//! Each migration is one session: a control channel plus the data channels
//! (images, pages) that join it. The service restores the tree but holds it
//! stopped at CRIU's `post-restore` until the source says `Commit`; if the
//! session ends any other way (`Abort`, a lost connection, an error), the
//! restored tree is killed and the session's directory removed, so the
//! source's resumed copy is the only one.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use phaul_htypes::Htype;
use phaul_transport::images::{ImageLimits, receive_batch_over};
use phaul_transport::proto::{self, request, response};
use phaul_transport::tls::hex;
use phaul_transport::{Channel, ControlServer, ErrorCode, Link, LinkConfig, Listener, SessionId};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use crate::criu::{HeldRestore, LazyDaemon, RestoreSpec, TargetCriu};
use crate::error::{Error, Result};
use crate::pagestream::{PageRelay, socketpair};

/// How long a data channel may take to arrive after it is expected.
const JOIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Inbox {
    images: mpsc::Sender<Link>,
    pages: mpsc::Sender<Link>,
    fs: mpsc::Sender<Link>,
}

type Sessions = Arc<Mutex<HashMap<SessionId, Inbox>>>;

/// A migration target.
#[derive(Debug)]
pub struct Service<T: TargetCriu> {
    criu: Arc<T>,
    cfg: LinkConfig,
    work_dir: PathBuf,
    keep_images: bool,
    limits: ImageLimits,
    paths: phaul_htypes::registry::Paths,
    fs_limits: phaul_fs::FsLimits,
}

impl<T: TargetCriu> Service<T> {
    /// A service restoring with `criu`, accepting links configured by `cfg`
    /// (its key, TLS identity), keeping each migration's images under
    /// `work_dir`.
    pub fn new(criu: T, cfg: LinkConfig, work_dir: impl AsRef<Path>) -> Self {
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
            fs_limits: phaul_fs::FsLimits::default(),
        }
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

    /// Keep each migration's images after it ends (for debugging).
    pub fn keep_images(mut self, keep: bool) -> Self {
        self.keep_images = keep;
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
        let this = Arc::new(self);
        let sessions: Sessions = Arc::default();
        tokio::pin!(shutdown);
        info!(addr = %listener.local_addr().unwrap_or_default(), "phaul service listening");
        loop {
            tokio::select! {
                () = &mut shutdown => break,
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
                    tokio::spawn(async move {
                        let Ok(link) = Link::accept(stream, peer, &this.cfg).await else {
                            // Already logged by the handshake.
                            return;
                        };
                        this.route(link, sessions).await;
                    });
                }
            }
        }
        Ok(())
    }

    async fn route(self: Arc<Self>, mut link: Link, sessions: Sessions) {
        let sid = link.session();
        match link.channel() {
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
                let mut s = Session::new(self.clone(), sid, irx, prx, frx);
                s.run(ControlServer::new(link)).await;
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

/// A request's answer, or the code and error the source gets instead.
type Reply = std::result::Result<response::Body, (ErrorCode, Error)>;

/// `e` as the answer to a request that failed (not a bad one).
fn failed(e: Error) -> (ErrorCode, Error) {
    (ErrorCode::Failed, e)
}

struct Session<T: TargetCriu> {
    svc: Arc<Service<T>>,
    sid: SessionId,
    images_rx: mpsc::Receiver<Link>,
    pages_rx: mpsc::Receiver<Link>,
    fs_rx: Option<mpsc::Receiver<Link>>,
    /// Serving the source's file-system passes, while the migration runs.
    fs_task: Option<tokio::task::JoinHandle<()>>,
    images: Option<Link>,
    dir: Option<PathBuf>,
    htype: Option<Arc<dyn Htype>>,
    /// A tree an htype restored by itself (LXC), awaiting the commit.
    custom: Option<i32>,
    held: Option<HeldRestore>,
    daemon: Option<LazyDaemon>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    committed: bool,
    /// A request failed: the session's CRIU logs are kept.
    request_failed: bool,
    /// When the `Restored` answer went out: the commit's lease counts from
    /// here (see [`proto::Commit::valid_for_ms`]).
    restored_at: Option<Instant>,
}

impl<T: TargetCriu> Session<T> {
    fn new(
        svc: Arc<Service<T>>,
        sid: SessionId,
        images_rx: mpsc::Receiver<Link>,
        pages_rx: mpsc::Receiver<Link>,
        fs_rx: mpsc::Receiver<Link>,
    ) -> Self {
        Self {
            svc,
            sid,
            images_rx,
            pages_rx,
            fs_rx: Some(fs_rx),
            fs_task: None,
            images: None,
            dir: None,
            htype: None,
            custom: None,
            held: None,
            daemon: None,
            relays: Vec::new(),
            committed: false,
            request_failed: false,
            restored_at: None,
        }
    }

    async fn run(&mut self, mut ctl: ControlServer) {
        loop {
            let (id, body) = match ctl.next().await {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    warn!(session = %hex(&self.sid), error = %e, "control channel failed");
                    break;
                }
            };
            let abort = matches!(body, request::Body::Abort(_));
            let res = match self.late_commit(&body) {
                Some(e) => Err((ErrorCode::BadRequest, e)),
                None => self.handle(body).await,
            };
            let restored = matches!(res, Ok(response::Body::Restored(_)));
            let sent = match res {
                Ok(r) => ctl.reply(id, r).await,
                Err((code, e)) => {
                    self.request_failed = true;
                    let msg = error_chain(&e);
                    warn!(session = %hex(&self.sid), error = %msg, "request failed");
                    ctl.error(id, code, &msg).await
                }
            };
            if restored {
                self.restored_at = Some(Instant::now());
            }
            if abort || sent.is_err() {
                break;
            }
        }
        if !self.committed {
            self.rollback().await;
        }
        for r in self.relays.drain(..) {
            r.abort();
        }
        debug!(session = %hex(&self.sid), committed = self.committed, "session closed");
    }

    /// A commit whose lease ran out: the source gave up its freeze limit
    /// before this could be read (this service was stopped, or slow), has
    /// resumed its own copy, and this one must not run.
    fn late_commit(&self, body: &request::Body) -> Option<Error> {
        let request::Body::Commit(c) = body else {
            return None;
        };
        let since = self.restored_at?.elapsed();
        let lease = Duration::from_millis(c.valid_for_ms);
        (c.valid_for_ms > 0 && since >= lease).then(|| {
            warn!(session = %hex(&self.sid), ?since, ?lease, "a commit came after its lease");
            Error::Protocol(format!(
                "the commit came {:.1} s after the restore, past the source's freeze limit \
                 ({:.1} s left then): the source has resumed its own copy, so this one does not run",
                since.as_secs_f64(),
                lease.as_secs_f64()
            ))
        })
    }

    async fn rollback(&mut self) {
        if let Some(h) = self.held.take() {
            info!(session = %hex(&self.sid), pid = h.pid, "aborting the held restore");
            h.abort().await;
        }
        if let Some(d) = self.daemon.take() {
            d.kill().await;
        }
        self.custom = None;
        if let Some(t) = self.fs_task.take() {
            t.abort();
            let _ = t.await;
        }
        if let Some(h) = self.htype.clone() {
            // Also removes a synced file system when nothing was restored.
            match tokio::task::spawn_blocking(move || h.abort()).await {
                Ok(Err(e)) => {
                    warn!(session = %hex(&self.sid), error = %e, "undoing the htype's work")
                }
                Err(e) => warn!(error = %e, "the htype's abort task"),
                Ok(Ok(())) => {}
            }
        }
        self.remove_dir();
    }

    fn remove_dir(&mut self) {
        if let Some(d) = self.dir.take() {
            if self.svc.keep_images {
                info!(dir = %d.display(), "keeping images");
            } else if self.request_failed && keep_failed_logs(&d) {
            } else if let Err(e) = std::fs::remove_dir_all(&d) {
                warn!(dir = %d.display(), error = %e, "could not remove a session directory");
            }
        }
    }

    fn iter_dir(&self, i: u32) -> std::result::Result<PathBuf, (ErrorCode, Error)> {
        let base = self.dir.as_ref().ok_or((
            ErrorCode::BadRequest,
            Error::Protocol("no migration has begun".into()),
        ))?;
        Ok(base.join(i.to_string()))
    }

    /// Answers one request of the source: each kind of request has its own
    /// method below.
    async fn handle(&mut self, body: request::Body) -> Reply {
        match body {
            request::Body::ListProcesses(_) => self.on_list_processes().await,
            request::Body::Ping(p) => Ok(response::Body::Pong(proto::Pong { payload: p.payload })),
            request::Body::Preflight(p) => self.on_preflight(p).await,
            request::Body::Begin(b) => self.on_begin(b).await,
            request::Body::StartPageServer(p) => self.on_start_page_server(p).await,
            request::Body::Images(i) => self.on_images(i).await,
            request::Body::Restore(r) if r.cold => self.on_restore_cold(r).await,
            request::Body::Restore(r)
                if !r.lazy && self.htype.as_ref().is_some_and(|h| h.restores_itself()) =>
            {
                self.on_restore_by_kind(r).await
            }
            request::Body::Commit(_) if self.custom.is_some() => self.on_commit_by_kind(),
            request::Body::Restore(r) => self.on_restore(r).await,
            request::Body::Commit(_) => self.on_commit().await,
            request::Body::Abort(a) => self.on_abort(a).await,
        }
    }

    async fn on_list_processes(&mut self) -> Reply {
        let lxcpath = self.svc.paths.lxcpath.clone();
        let list = tokio::task::spawn_blocking(move || crate::hostinfo::list(&lxcpath))
            .await
            .map_err(|e| failed(Error::Protocol(format!("listing processes: {e}"))))?;
        Ok(response::Body::ProcessList(list))
    }

    async fn on_preflight(&mut self, p: proto::Preflight) -> Reply {
        let version = self.svc.criu.version().await.map_err(failed)?;
        let caps = self.svc.criu.features().await.map_err(failed)?;
        let (cpu_compatible, cpu_error) = if p.cpuinfo.is_empty() {
            (true, String::new())
        } else {
            let scratch = self
                .svc
                .work_dir
                .join(format!("cpuinfo-{}", hex(&self.sid)));
            std::fs::create_dir_all(&scratch).map_err(|source| {
                failed(Error::Io {
                    what: "scratch dir".into(),
                    source,
                })
            })?;
            let r = self.svc.criu.cpuinfo_check(p.cpuinfo, &scratch).await;
            let _ = std::fs::remove_dir_all(&scratch);
            match r {
                Ok(()) => (true, String::new()),
                Err(e) => (false, error_chain(&e)),
            }
        };
        Ok(response::Body::Preflight(proto::PreflightReply {
            criu_version: version,
            mem_track: caps.mem_track,
            lazy_pages: caps.lazy_pages,
            cpu_compatible,
            cpu_error,
        }))
    }

    async fn on_begin(&mut self, b: proto::Begin) -> Reply {
        if self.dir.is_some() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol("a migration has already begun on this session".into()),
            ));
        }
        let params = b.params.into_iter().collect();
        let h: Arc<dyn Htype> =
            phaul_htypes::registry::target_in(&b.htype, &params, &self.svc.paths)
                .map_err(|e| (ErrorCode::BadRequest, Error::Htype(e)))?
                .into();
        b.mode
            .parse::<crate::mode::Mode>()
            .map_err(|e| (ErrorCode::BadRequest, e))?;
        let dir = self.svc.work_dir.join(hex(&self.sid));
        std::fs::create_dir_all(&dir).map_err(|source| {
            failed(Error::Io {
                what: format!("creating {}", dir.display()),
                source,
            })
        })?;
        info!(session = %hex(&self.sid), kind = h.kind(), mode = %b.mode, "migration begins");
        if !b.fs_driver.is_empty() && b.fs_driver != "shared" {
            let root = h.fs_root().ok_or_else(|| {
                (
                    ErrorCode::BadRequest,
                    Error::Protocol(format!("the {} kind has no file system to sync", h.kind())),
                )
            })?;
            std::fs::create_dir_all(&root).map_err(|source| {
                failed(Error::Io {
                    what: format!("creating {}", root.display()),
                    source,
                })
            })?;
            let mut rx = self
                .fs_rx
                .take()
                .ok_or_else(|| failed(Error::Protocol("a second file system".into())))?;
            let driver = b.fs_driver.clone();
            let limits = self.svc.fs_limits;
            let sid = hex(&self.sid);
            self.fs_task = Some(tokio::spawn(async move {
                let Ok(Some(link)) = tokio::time::timeout(JOIN_TIMEOUT, rx.recv()).await else {
                    warn!(session = %sid, "no file-system channel joined the session");
                    return;
                };
                match crate::fs::serve(&driver, link, &root, &limits).await {
                    Ok(st) => {
                        info!(session = %sid, files = st.files, bytes = st.bytes, "file system received")
                    }
                    Err(e) => {
                        warn!(session = %sid, error = %error_chain(&e), "file-system sync failed")
                    }
                }
            }));
        }
        self.htype = Some(h);
        self.dir = Some(dir.clone());
        Ok(response::Body::Begun(proto::Begun {
            work_dir: dir.display().to_string(),
        }))
    }

    async fn on_start_page_server(&mut self, p: proto::StartPageServer) -> Reply {
        let dir = self.iter_dir(p.iteration)?;
        mkdir(&dir).map_err(failed)?;
        let parent = (p.has_parent && p.iteration > 0).then(|| format!("../{}", p.iteration - 1));
        let (criu_end, ours) = socketpair().map_err(failed)?;
        let serving = self
            .svc
            .criu
            .page_server(dir, parent, criu_end)
            .await
            .map_err(failed)?;
        let link = self
            .next_pages()
            .await
            .map_err(|e| (ErrorCode::Protocol, e))?;
        let relay = PageRelay::spawn(link, ours);
        self.relays.push(tokio::spawn(async move {
            if let Err(e) = serving.wait().await {
                warn!(error = %e, "page server failed");
            }
            let _ = relay.finish(Duration::from_secs(5)).await;
        }));
        Ok(response::Body::PageServerReady(proto::PageServerReady {
            iteration: p.iteration,
        }))
    }

    async fn on_images(&mut self, i: proto::Images) -> Reply {
        let dir = self.iter_dir(i.iteration)?;
        mkdir(&dir).map_err(failed)?;
        if self.images.is_none() {
            let l = tokio::time::timeout(JOIN_TIMEOUT, self.images_rx.recv())
                .await
                .ok()
                .flatten()
                .ok_or((
                    ErrorCode::Protocol,
                    Error::Protocol("no image channel joined the session".into()),
                ))?;
            self.images = Some(l);
        }
        let link = self.images.as_mut().expect("set above");
        let st = receive_batch_over(link, &dir, &self.svc.limits)
            .await
            .map_err(|e| {
                // The channel's state is unknown after a failed batch.
                self.images = None;
                (ErrorCode::Failed, Error::Link(e))
            })?;
        Ok(response::Body::ImagesStored(proto::ImagesStored {
            files: st.files,
            bytes: st.bytes,
        }))
    }

    async fn on_restore_cold(&mut self, r: proto::Restore) -> Reply {
        // Restart mode: no images, the kind starts anew from its
        // synced files; it runs from here on.
        if self.held.is_some() || self.custom.is_some() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol("already restored".into()),
            ));
        }
        let h = self.htype.clone().ok_or((
            ErrorCode::BadRequest,
            Error::Protocol("no migration has begun".into()),
        ))?;
        if !h.can_restart() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol(format!("the {} kind cannot be restarted", h.kind())),
            ));
        }
        let dir = self.iter_dir(r.iteration)?;
        let t0 = Instant::now();
        let pid = tokio::task::spawn_blocking(move || h.start_here(&dir))
            .await
            .map_err(|e| failed(Error::Protocol(format!("the start task: {e}"))))?
            .map_err(|e| failed(Error::Htype(e)))?;
        self.custom = Some(pid);
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        info!(session = %hex(&self.sid), pid, "started anew (restart mode)");
        Ok(response::Body::Restored(proto::Restored {
            pid,
            restore_time_us: us,
        }))
    }

    async fn on_restore_by_kind(&mut self, r: proto::Restore) -> Reply {
        // The kind restores by itself (so its manager knows the tree);
        // it runs from here on, and the commit only confirms it.
        if self.held.is_some() || self.custom.is_some() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol("already restored".into()),
            ));
        }
        let dir = self.iter_dir(r.iteration)?;
        let h = self.htype.clone().expect("checked above");
        let t0 = Instant::now();
        let logs_in = dir.clone();
        let pid = tokio::task::spawn_blocking(move || h.restore(&dir))
            .await
            .map_err(|e| failed(Error::Protocol(format!("the restore task: {e}"))))?
            .ok_or_else(|| failed(Error::Protocol("the kind has no restore of its own".into())))?
            .map_err(|e| {
                // LXC writes its CRIU's log beside the images, runc
                // into the work dir it is given there.
                let logs = ["restore.log", "restore-work/restore.log"].map(|l| logs_in.join(l));
                failed(crate::logs::manager_error(e, &logs))
            })?;
        self.custom = Some(pid);
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        info!(session = %hex(&self.sid), pid, "restored by the kind itself");
        Ok(response::Body::Restored(proto::Restored {
            pid,
            restore_time_us: us,
        }))
    }

    fn on_commit_by_kind(&mut self) -> Reply {
        let pid = self.custom.take().expect("checked above");
        self.committed = true;
        info!(session = %hex(&self.sid), pid, "committed: the tree runs here");
        self.remove_dir();
        Ok(response::Body::Committed(proto::Committed {}))
    }

    async fn on_restore(&mut self, r: proto::Restore) -> Reply {
        if self.held.is_some() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol("already restored".into()),
            ));
        }
        let dir = self.iter_dir(r.iteration)?;
        if !dir.is_dir() {
            return Err((
                ErrorCode::BadRequest,
                Error::Protocol(format!("no images for iteration {}", r.iteration)),
            ));
        }
        let options = self
            .htype
            .as_ref()
            .map(|h| h.restore_options())
            .unwrap_or_default();
        let t0 = Instant::now();
        if r.lazy {
            let link = self
                .next_pages()
                .await
                .map_err(|e| (ErrorCode::Protocol, e))?;
            let listener =
                tokio::net::TcpListener::bind("127.0.0.1:0")
                    .await
                    .map_err(|source| {
                        failed(Error::Io {
                            what: "a loopback listener for lazy pages".into(),
                            source,
                        })
                    })?;
            let port = listener
                .local_addr()
                .map_err(|source| {
                    failed(Error::Io {
                        what: "listener".into(),
                        source,
                    })
                })?
                .port();
            self.relays.push(tokio::spawn(async move {
                // Only the lazy-pages daemon this session starts
                // connects here, once.
                if let Ok(Ok((conn, _))) =
                    tokio::time::timeout(JOIN_TIMEOUT, listener.accept()).await
                {
                    let _ = conn.set_nodelay(true);
                    let relay = PageRelay::spawn(link, conn);
                    let _ = relay.finish(Duration::from_secs(24 * 3600)).await;
                }
            }));
            self.daemon = Some(
                self.svc
                    .criu
                    .lazy_pages(dir.clone(), port)
                    .await
                    .map_err(failed)?,
            );
        }
        if let Some(h) = self.htype.clone() {
            let d = dir.clone();
            tokio::task::spawn_blocking(move || h.prepare_restore(&d))
                .await
                .map_err(|e| failed(Error::Protocol(format!("the prepare task: {e}"))))?
                .map_err(|e| failed(Error::Htype(e)))?;
        }
        let spec = RestoreSpec {
            images_dir: dir.clone(),
            work_dir: dir,
            lazy: r.lazy,
            options,
        };
        match self.svc.criu.restore(spec).await {
            Ok(held) => {
                let pid = held.pid;
                self.held = Some(held);
                let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                info!(session = %hex(&self.sid), pid, "restored; holding until commit");
                Ok(response::Body::Restored(proto::Restored {
                    pid,
                    restore_time_us: us,
                }))
            }
            Err(e) => {
                if let Some(d) = self.daemon.take() {
                    d.kill().await;
                }
                Err(failed(e))
            }
        }
    }

    async fn on_commit(&mut self) -> Reply {
        let held = self.held.take().ok_or((
            ErrorCode::BadRequest,
            Error::Protocol("nothing restored to commit".into()),
        ))?;
        let pid = held.pid;
        if let Some(h) = self.htype.clone() {
            // Connected only now (see Htype::before_commit); a
            // failure leaves the held copy to the rollback.
            let connected = tokio::task::spawn_blocking(move || h.before_commit())
                .await
                .map_err(|e| failed(Error::Protocol(format!("the htype task: {e}"))));
            if let Err(e) = connected.and_then(|r| r.map_err(|e| failed(Error::Htype(e)))) {
                self.held = Some(held);
                return Err(e);
            }
        }
        held.commit().await.map_err(failed)?;
        self.committed = true;
        info!(session = %hex(&self.sid), pid, "committed: the tree runs here");
        match self.daemon.take() {
            // Memory keeps arriving after the commit: the images
            // stay until the daemon has every page.
            Some(d) => {
                let dir = self.dir.take();
                let keep = self.svc.keep_images;
                tokio::spawn(async move {
                    if let Err(e) = d.wait().await {
                        warn!(error = %e, "lazy pages daemon failed after the commit");
                    }
                    if let (Some(d), false) = (dir, keep) {
                        let _ = std::fs::remove_dir_all(d);
                    }
                });
            }
            None => self.remove_dir(),
        }
        Ok(response::Body::Committed(proto::Committed {}))
    }

    async fn on_abort(&mut self, a: proto::Abort) -> Reply {
        info!(session = %hex(&self.sid), reason = %a.reason, "source aborted the migration");
        self.rollback().await;
        Ok(response::Body::Aborted(proto::Aborted {}))
    }

    async fn next_pages(&mut self) -> Result<Link> {
        tokio::time::timeout(JOIN_TIMEOUT, self.pages_rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Error::Protocol("no page channel joined the session".into()))
    }
}

fn mkdir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|source| Error::Io {
        what: format!("creating {}", dir.display()),
        source,
    })
}
