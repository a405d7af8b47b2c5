//! One migration on the target: a typed state machine driven by the
//! source's requests.
//!
//! ```text
//!   Idle --Begin--> Begun --Restore--> Restored --Commit--> Committed
//!   |  ^            |  ^                  |
//!   +--+ Preflight, +--+ StartPageServer, |
//!        ProbeLink       PagemapsOf,      |
//!                        ProbeLink,       |
//!                        Images           |
//!   any state but Committed --Abort, lost link, error--> rolled back
//! ```
//!
//! `Begin` carries the plan ([`Plan`]); the session checks it against its
//! own htype and then follows it: the restore it makes is the one the plan
//! names, and a request out of order or out of plan is refused
//! (`BAD_REQUEST`), changing nothing.
//!
//! Before `Begin` is served, the session takes one of the service's slots
//! (see [`super::admission`]): it may wait for one in the queue, or answer
//! `BUSY`, while the source has not frozen anything yet.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use phaul_htypes::Htype;
use phaul_transport::images::receive_batch_over;
use phaul_transport::proto::{self, request, response};
use phaul_transport::tls::hex;
use phaul_transport::{ControlServer, ErrorCode, Link, SessionId};
use tokio::sync::mpsc;
use tracing::{debug, error, info, warn};

use super::admission::Slot;
use super::metrics::Outcome;
use super::{JOIN_TIMEOUT, Service, ServiceEvent, error_chain, keep_failed_logs, mkdir};
use crate::criu::{HeldRestore, LazyDaemon, RestoreSpec, TargetCriu};
use crate::error::{Error, Result};
use crate::mode::Mode;
use crate::pagestream::{PageRelay, socketpair};
use crate::plan::{Plan, Restorer};

/// A request's answer, or the code and error the source gets instead.
type Reply = std::result::Result<response::Body, (ErrorCode, Error)>;

/// `e` as the answer to a request that failed (not a bad one).
fn failed(e: Error) -> (ErrorCode, Error) {
    (ErrorCode::Failed, e)
}

/// A request that does not fit the session's state or plan.
fn bad(why: impl Into<String>) -> (ErrorCode, Error) {
    (ErrorCode::BadRequest, Error::Protocol(why.into()))
}

/// Where a session is.
enum State {
    /// No migration has begun.
    Idle,
    /// A migration has begun: its plan, kind and directory.
    Begun(Begun),
    /// The tree is restored and waits for the commit.
    Restored(Begun, Box<Restored>),
    /// The tree runs here; nothing is undone any more.
    Committed,
}

/// Serves a migration's file-system passes; ends once the final one is
/// durable here.
type FsTask = tokio::task::JoinHandle<phaul_fs::Result<()>>;

struct Begun {
    plan: Plan,
    htype: Arc<dyn Htype>,
    dir: PathBuf,
    /// The RAM directories its images went to (see `ramdir`).
    ram: Vec<crate::ramdir::RamDir>,
    /// Serving the source's file-system passes, while the migration runs;
    /// it ends once the final pass is durable, which the commit waits for.
    fs_task: Option<FsTask>,
    /// When `Begin` came: the metrics' total time counts from here.
    at: Instant,
    /// Held until the commit, so CRIU's restore finds the kernel's hooks
    /// on (see `schedhooks`).
    _hooks: crate::schedhooks::SchedHooks,
    /// Its place among the service's running migrations, given back when
    /// this is dropped: after its end is counted and told.
    _slot: Slot,
}

struct Restored {
    how: Restoration,
    /// Post-copy: CRIU's lazy-pages daemon, serving the tree's memory from
    /// the source until the last page is here.
    daemon: Option<LazyDaemon>,
    pid: i32,
    /// When the `Restored` answer went out: the commit's lease counts from
    /// here (see [`proto::Commit::valid_for_ms`]).
    at: Instant,
    /// When the restore was asked for: the downtime this target sees
    /// counts from here.
    asked: Instant,
    /// The kernel's RCU knob, held from the restore's start to the commit's
    /// end (see `rcu`).
    rcu: crate::rcu::Expedited,
}

/// How the tree came back, which says how it is committed or undone.
enum Restoration {
    /// CRIU holds it at `post-restore`.
    Held(Box<HeldRestore>),
    /// The kind's manager restored it (held by its CRIU's action script
    /// until [`phaul_htypes::TargetHooks::commit`]), or started it anew
    /// (it runs): only the kind's abort undoes it.
    ByKind,
}

pub(super) struct Session<T: TargetCriu> {
    svc: Arc<Service<T>>,
    sid: SessionId,
    images_rx: mpsc::Receiver<Link>,
    pages_rx: mpsc::Receiver<Link>,
    fs_rx: Option<mpsc::Receiver<Link>>,
    /// The image channel, once it joined.
    images: Option<Link>,
    relays: Vec<tokio::task::JoinHandle<()>>,
    state: State,
    /// A request failed: the session's CRIU logs are kept.
    request_failed: bool,
    /// A committed session's directory, removed once the answer is out.
    after_reply: Option<(PathBuf, Vec<crate::ramdir::RamDir>)>,
    /// The slot `Begin` was let in with, until it begins.
    slot: Option<Slot>,
    /// The protocol version the control channel negotiated.
    version: u16,
}

impl<T: TargetCriu> Session<T> {
    pub(super) fn new(
        svc: Arc<Service<T>>,
        sid: SessionId,
        version: u16,
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
            images: None,
            relays: Vec::new(),
            state: State::Idle,
            request_failed: false,
            after_reply: None,
            slot: None,
            version,
        }
    }

    pub(super) async fn run(
        &mut self,
        mut ctl: ControlServer,
        mut stopping: tokio::sync::watch::Receiver<bool>,
    ) {
        loop {
            let next = tokio::select! {
                n = ctl.next() => n,
                _ = stopping.wait_for(|s| *s) => {
                    info!(session = %hex(&self.sid), "the service stops: undoing the session");
                    break;
                }
            };
            let (id, body) = match next {
                Ok(Some(x)) => x,
                Ok(None) => break,
                Err(e) => {
                    warn!(session = %hex(&self.sid), error = %e, "control channel failed");
                    break;
                }
            };
            if matches!(body, request::Body::Begin(_)) && matches!(self.state, State::Idle) {
                match self.admit(&mut ctl, &mut stopping).await {
                    Some(Ok(slot)) => self.slot = Some(slot),
                    Some(Err(busy)) => {
                        info!(session = %hex(&self.sid), reason = %busy, "refused a migration: busy");
                        if ctl
                            .error(id, ErrorCode::Busy, &busy.to_string())
                            .await
                            .is_err()
                        {
                            break;
                        }
                        continue;
                    }
                    None => break,
                }
            }
            let abort = matches!(body, request::Body::Abort(_));
            // A step under way (a restore) is given up too when the service
            // stops: what it left is undone below, like any failure.
            let res = tokio::select! {
                r = self.handle(body) => r,
                _ = stopping.wait_for(|s| *s) => {
                    info!(session = %hex(&self.sid), "the service stops: a request is abandoned");
                    break;
                }
            };
            let restored = matches!(res, Ok(response::Body::Restored(_)));
            // The commit's lease counts from just before the answer goes
            // out: a service stopped while writing it must not count from
            // when it woke up.
            let answered = Instant::now();
            let sent = match res {
                Ok(r) => ctl.reply(id, r).await,
                Err((code, e)) => {
                    self.request_failed = true;
                    let msg = error_chain(&e);
                    warn!(session = %hex(&self.sid), error = %msg, "request failed");
                    ctl.error(id, code, &msg).await
                }
            };
            if let (true, State::Restored(_, r)) = (restored, &mut self.state) {
                r.at = answered;
            }
            if let Some((d, ram)) = self.after_reply.take() {
                self.remove_dir(&d, ram);
            }
            if abort || sent.is_err() {
                break;
            }
        }
        self.rollback().await;
        for r in self.relays.drain(..) {
            r.abort();
        }
        debug!(session = %hex(&self.sid), "session closed");
    }

    /// A slot for the migration the source asks to begin, maybe after a
    /// wait in the queue; `None` when the source went away meanwhile or
    /// the service stops. The source sends nothing while it waits for the
    /// answer, so anything on the control channel (its end, mostly) means
    /// it has given up; what it sent is not read as a request.
    async fn admit(
        &self,
        ctl: &mut ControlServer,
        stopping: &mut tokio::sync::watch::Receiver<bool>,
    ) -> Option<std::result::Result<Slot, super::admission::Busy>> {
        tokio::select! {
            r = self.svc.admission.admit() => Some(r),
            _ = ctl.next() => {
                info!(session = %hex(&self.sid), "the source left the queue");
                None
            }
            _ = stopping.wait_for(|s| *s) => None,
        }
    }

    /// Answers one request of the source: each has its own method below,
    /// and each checks the state it needs.
    async fn handle(&mut self, body: request::Body) -> Reply {
        match body {
            request::Body::ListProcesses(_) => self.on_list_processes().await,
            request::Body::Ping(p) => Ok(response::Body::Pong(proto::Pong { payload: p.payload })),
            request::Body::Preflight(p) => self.on_preflight(p).await,
            request::Body::Begin(b) => self.on_begin(b).await,
            request::Body::StartPageServer(p) => self.on_start_page_server(p).await,
            request::Body::PagemapsOf(p) => self.on_pagemaps_of(p).await,
            request::Body::ProbeLink(p) => self.on_probe_link(p).await,
            request::Body::Images(i) => self.on_images(i).await,
            request::Body::Restore(r) => self.on_restore(r).await,
            request::Body::Commit(c) => self.on_commit(c).await,
            request::Body::Abort(a) => {
                info!(session = %hex(&self.sid), reason = %a.reason, "source aborted the migration");
                self.rollback().await;
                Ok(response::Body::Aborted(proto::Aborted {}))
            }
            request::Body::Migrate(_) | request::Body::CancelMigration(_) => Err(bad(
                "a controller's request belongs on a MANAGE channel, not a migration's",
            )),
        }
    }

    fn emit(&self, e: impl FnOnce(String) -> ServiceEvent) {
        if let Some(tx) = &self.svc.events {
            let _ = tx.send(e(hex(&self.sid)));
        }
    }

    fn begun(&self) -> std::result::Result<&Begun, (ErrorCode, Error)> {
        match &self.state {
            State::Begun(b) => Ok(b),
            State::Idle => Err(bad("no migration has begun")),
            State::Restored(..) => Err(bad("already restored")),
            State::Committed => Err(bad("already committed")),
        }
    }

    /// Undoes whatever the session made, unless it committed.
    async fn rollback(&mut self) {
        let begun = match std::mem::replace(&mut self.state, State::Idle) {
            State::Idle => return,
            State::Committed => {
                self.state = State::Committed;
                return;
            }
            State::Begun(b) => b,
            State::Restored(b, r) => {
                if let Restoration::Held(held) = r.how {
                    info!(session = %hex(&self.sid), pid = r.pid, "aborting the held restore");
                    held.abort().await;
                }
                if let Some(d) = r.daemon {
                    d.kill().await;
                }
                b
            }
        };
        if let Some(t) = begun.fs_task {
            t.abort();
            let _ = t.await;
        }
        // Also removes a synced file system when nothing was restored.
        if let Err(e) = blocking(&begun.htype, |h| h.abort()).await {
            warn!(session = %hex(&self.sid), error = %e, "undoing the htype's work");
        }
        self.remove_dir(&begun.dir, begun.ram);
        self.emit(|session| ServiceEvent::RolledBack { session });
        let outcome = match self.request_failed {
            true => Outcome::Failed,
            false => Outcome::RolledBack,
        };
        self.svc
            .metrics
            .ended(begun.htype.kind(), begun.plan.mode.as_str(), outcome, None);
    }

    fn remove_dir(&self, d: &std::path::Path, ram: Vec<crate::ramdir::RamDir>) {
        if self.request_failed {
            // The restore's logs are among its images: back to disk first.
            ram.into_iter().for_each(crate::ramdir::RamDir::keep_logs);
        } else {
            drop(ram);
        }
        if self.svc.keep_images {
            info!(dir = %d.display(), "keeping images");
        } else if self.request_failed && keep_failed_logs(d) {
        } else if let Err(e) = std::fs::remove_dir_all(d) {
            warn!(dir = %d.display(), error = %e, "could not remove a session directory");
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
            mkdir(&scratch).map_err(failed)?;
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
            nftables_lock: caps.nftables_lock,
        }))
    }

    async fn on_begin(&mut self, b: proto::Begin) -> Reply {
        if !matches!(self.state, State::Idle) {
            return Err(bad("a migration has already begun on this session"));
        }
        // Taken first: a Begin refused below gives its slot back at once.
        let slot = self
            .slot
            .take()
            .ok_or_else(|| failed(Error::Protocol("a Begin let in without a slot".into())))?;
        let plan = Plan::from_wire(&b).map_err(|e| (ErrorCode::BadRequest, e))?;
        let migration = b.migration_id.clone();
        if migration.len() > 64 || migration.chars().any(char::is_control) {
            return Err(bad("a migration id of at most 64 printable characters"));
        }
        let params = b.params.into_iter().collect();
        let h: Arc<dyn Htype> =
            phaul_htypes::registry::target_in(&b.htype, &params, &self.svc.paths)
                .map_err(|e| (ErrorCode::BadRequest, Error::Htype(e)))?
                .into();
        let root = h.fs_root();
        plan.check_kind(h.kind(), h.caps(), root.is_some())
            .map_err(|e| (ErrorCode::BadRequest, e))?;
        let dir = self.svc.work_dir.join(hex(&self.sid));
        mkdir(&dir).map_err(failed)?;
        info!(session = %hex(&self.sid), %migration, kind = h.kind(), mode = %plan.mode, restorer = ?plan.restorer, "migration begins");
        let fs_task = match (plan.fs_driver(), root) {
            (Some(driver), Some(root)) => {
                mkdir(&root).map_err(failed)?;
                let rx = self
                    .fs_rx
                    .take()
                    .ok_or_else(|| failed(Error::Protocol("a second file system".into())))?;
                Some(self.serve_fs(driver, rx, root))
            }
            _ => None,
        };
        let kind = h.kind().to_owned();
        let overhead = self.svc.overheads.estimate(&kind);
        let beyond_restore = self.svc.overheads.beyond_restore(&kind);
        let page_in = match plan.mode {
            Mode::PreCopy | Mode::Hybrid => self.svc.page_in_rate().await,
            _ => None,
        };
        let hooks = crate::schedhooks::SchedHooks::hold().await;
        self.state = State::Begun(Begun {
            plan,
            htype: h,
            dir: dir.clone(),
            ram: Vec::new(),
            fs_task,
            at: Instant::now(),
            _hooks: hooks,
            _slot: slot,
        });
        self.svc.metrics.began();
        self.emit(|session| ServiceEvent::Began {
            session,
            migration,
            kind,
            mode: plan.mode,
        });
        Ok(response::Body::Begun(proto::Begun {
            work_dir: dir.display().to_string(),
            overhead_us: overhead.map_or(0, micros),
            // At least 1: 0 says "not measured".
            page_in_bytes_per_s: page_in.map_or(0, |r| (r as u64).max(1)),
            overhead_beyond_restore_us: beyond_restore.map_or(0, micros),
        }))
    }

    /// Serves the source's file-system passes into `root`, in the
    /// background, once its channel joins.
    fn serve_fs(
        &self,
        driver: &'static str,
        mut rx: mpsc::Receiver<Link>,
        root: PathBuf,
    ) -> FsTask {
        let limits = self.svc.fs_limits;
        let metrics = self.svc.metrics.clone();
        let sid = hex(&self.sid);
        tokio::spawn(async move {
            let Ok(Some(link)) = tokio::time::timeout(JOIN_TIMEOUT, rx.recv()).await else {
                warn!(session = %sid, "no file-system channel joined the session");
                return Err(phaul_fs::Error::Protocol(
                    "no file-system channel joined the session".into(),
                ));
            };
            match phaul_fs::registry::serve(driver, link, &root, &limits).await {
                Ok(st) => {
                    metrics.fs_received(st.bytes);
                    info!(session = %sid, files = st.files, bytes = st.bytes, "file system received");
                    Ok(())
                }
                Err(e) => {
                    warn!(session = %sid, error = %error_chain(&e), "file-system sync failed");
                    Err(e)
                }
            }
        })
    }

    /// Iteration `i`'s directory (a link to RAM where its images went
    /// there: CRIU and the kinds' managers follow it, and name their logs
    /// by it).
    fn iter_dir(&self, i: u32) -> std::result::Result<PathBuf, (ErrorCode, Error)> {
        Ok(self.begun()?.dir.join(i.to_string()))
    }

    /// Iteration `i`'s directory for an image batch, made: in RAM where
    /// the plan keeps images there, this service lets it and does not
    /// keep them, and RAM can hold them (see `ramdir`), else on disk.
    /// Returns the real directory, which the batch is written into (its
    /// receiver follows no symlink).
    fn images_dir(&mut self, i: u32) -> std::result::Result<PathBuf, (ErrorCode, Error)> {
        let dir = self.iter_dir(i)?;
        let ram = self.svc.images_in_ram && !self.svc.keep_images;
        let State::Begun(b) = &mut self.state else {
            unreachable!("checked by iter_dir")
        };
        let in_ram = ram && b.plan.images_in_memory();
        crate::ramdir::images_dir(&dir, in_ram, &mut b.ram).map_err(|source| {
            failed(Error::Io {
                what: format!("creating {}", dir.display()),
                source,
            })
        })
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
        let metrics = self.svc.metrics.clone();
        self.relays.push(tokio::spawn(async move {
            if let Err(e) = serving.wait().await {
                warn!(error = %e, "page server failed");
            }
            if let Ok((_, received)) = relay.finish(Duration::from_secs(5)).await {
                metrics.pages_received(received);
            }
        }));
        Ok(response::Body::PageServerReady(proto::PageServerReady {
            iteration: p.iteration,
        }))
    }

    /// Drains the next page channel of the probe's bytes (see the wire's
    /// `ProbeLink`): the source times it. Served before `Begin` too (link
    /// version 5), while the source's own pre-flight checks run; after a
    /// restore there is nothing left to weigh it against.
    async fn on_probe_link(&mut self, p: proto::ProbeLink) -> Reply {
        if !matches!(self.state, State::Idle) {
            self.begun()?;
        } else if self.version < phaul_transport::frame::EARLY_PROBE_VERSION {
            // As a version-4 target would: a source that offered no more
            // probes after `Begin`.
            return Err(bad(format!(
                "a link probe before Begin needs protocol version {} (this link: {})",
                phaul_transport::frame::EARLY_PROBE_VERSION,
                self.version
            )));
        }
        if p.bytes > crate::pagestream::PROBE_MAX {
            return Err(bad(format!(
                "a link probe of {} bytes (at most {})",
                p.bytes,
                crate::pagestream::PROBE_MAX
            )));
        }
        let link = self
            .next_pages()
            .await
            .map_err(|e| (ErrorCode::Protocol, e))?;
        let bytes = crate::pagestream::probe_sink(link, p.bytes)
            .await
            .map_err(failed)?;
        Ok(response::Body::LinkProbed(proto::LinkProbed { bytes }))
    }

    /// The pagemaps pre-dump `p.iteration`'s page server wrote (see
    /// [`crate::pagemaps`]), once the page servers so far have ended.
    async fn on_pagemaps_of(&mut self, p: proto::PagemapsOf) -> Reply {
        let dir = self.iter_dir(p.iteration)?;
        if !dir.is_dir() {
            return Err(bad(format!("no pre-dump {}", p.iteration)));
        }
        // The source asks after its pre-dump ended; the page server may
        // still be writing the pagemap it closes last.
        while let Some(mut r) = self.relays.pop() {
            if tokio::time::timeout(JOIN_TIMEOUT, &mut r).await.is_err() {
                // Kept, so that the session's end still stops it.
                self.relays.push(r);
                return Err(failed(Error::Target(
                    "a pre-dump's page server has not ended".into(),
                )));
            }
        }
        let files = tokio::task::spawn_blocking(move || crate::pagemaps::collect(&dir))
            .await
            .map_err(|e| failed(Error::Target(format!("reading pagemaps: {e}"))))?
            .map_err(failed)?;
        Ok(response::Body::Pagemaps(proto::Pagemaps {
            iteration: p.iteration,
            files,
        }))
    }

    async fn on_images(&mut self, i: proto::Images) -> Reply {
        let dir = self.images_dir(i.iteration)?;
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
        self.svc.metrics.images_received(st.bytes);
        Ok(response::Body::ImagesStored(proto::ImagesStored {
            files: st.files,
            bytes: st.bytes,
        }))
    }

    /// The restore the plan names: by CRIU (held until the commit, lazily
    /// where the plan allows), by the kind's manager, or a cold start.
    async fn on_restore(&mut self, r: proto::Restore) -> Reply {
        let begun = self.begun()?;
        begun
            .plan
            .check_restore(r.lazy)
            .map_err(|e| (ErrorCode::BadRequest, e))?;
        let (restorer, h) = (begun.plan.restorer, begun.htype.clone());
        let dir = self.iter_dir(r.iteration)?;
        if restorer != Restorer::ColdStart && !dir.is_dir() {
            return Err(bad(format!("no images for iteration {}", r.iteration)));
        }
        if let Some(parent) = begun.plan.restore_parent(r.iteration, r.lazy) {
            link_parent(&dir, parent).map_err(failed)?;
        }
        let t0 = Instant::now();
        let rcu = match &self.svc.rcu {
            Some(knob) => crate::rcu::Expedited::begin(knob.clone()).await,
            None => crate::rcu::Expedited::none(),
        };
        let daemon = match r.lazy {
            true => Some(self.lazy_daemon(&dir).await?),
            false => None,
        };
        let restored = match restorer {
            Restorer::Criu => self.restore_with_criu(&h, dir, r.lazy).await,
            Restorer::Manager => restore_by_manager(&h, dir, r.lazy).await,
            Restorer::ColdStart => blocking(&h, move |h| h.start_here(&dir))
                .await
                .map(|pid| (Restoration::ByKind, pid)),
        };
        let (how, pid) = match restored {
            Ok(x) => x,
            Err(e) => {
                if let Some(d) = daemon {
                    d.kill().await;
                }
                return Err(failed(e));
            }
        };
        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
        info!(session = %hex(&self.sid), pid, ?restorer, "restored; waiting for the commit");
        let State::Begun(b) = std::mem::replace(&mut self.state, State::Idle) else {
            unreachable!("checked by begun() above, and nothing since changes the state")
        };
        let restored = Restored {
            how,
            daemon,
            pid,
            at: t0,
            asked: t0,
            rcu,
        };
        self.state = State::Restored(b, Box::new(restored));
        self.emit(|session| ServiceEvent::Restored { session, pid });
        Ok(response::Body::Restored(proto::Restored {
            pid,
            restore_time_us: us,
        }))
    }

    async fn restore_with_criu(
        &self,
        h: &Arc<dyn Htype>,
        dir: PathBuf,
        lazy: bool,
    ) -> Result<(Restoration, i32)> {
        let d = dir.clone();
        blocking(h, move |h| h.prepare_restore(&d)).await?;
        let spec = RestoreSpec {
            images_dir: dir.clone(),
            work_dir: dir,
            lazy,
            options: h.restore_options(),
        };
        let held = self.svc.criu.restore(spec).await?;
        let pid = held.pid;
        Ok((Restoration::Held(Box::new(held)), pid))
    }

    /// Post-copy: CRIU's lazy-pages daemon for `dir`, fetching pages over
    /// a socket pair whose other end relays the source's page channel.
    async fn lazy_daemon(
        &mut self,
        dir: &std::path::Path,
    ) -> std::result::Result<LazyDaemon, (ErrorCode, Error)> {
        let link = self
            .next_pages()
            .await
            .map_err(|e| (ErrorCode::Protocol, e))?;
        let (theirs, ours) = crate::pagestream::socketpair().map_err(failed)?;
        let metrics = self.svc.metrics.clone();
        self.relays.push(tokio::spawn(async move {
            let relay = PageRelay::spawn(link, ours);
            if let Ok((_, received)) = relay.finish(Duration::from_secs(24 * 3600)).await {
                metrics.pages_received(received);
            }
        }));
        self.svc
            .criu
            .lazy_pages(dir.to_path_buf(), theirs)
            .await
            .map_err(failed)
    }

    async fn on_commit(&mut self, c: proto::Commit) -> Reply {
        let received = Instant::now();
        let r = match &self.state {
            State::Restored(_, r) => r,
            State::Committed => return Err(bad("already committed")),
            _ => return Err(bad("nothing restored to commit")),
        };
        if let Some(e) = late_commit(&c, r.at) {
            warn!(session = %hex(&self.sid), "a commit came after its lease");
            return Err((ErrorCode::BadRequest, e));
        }
        let State::Restored(mut b, r) = std::mem::replace(&mut self.state, State::Idle) else {
            unreachable!("matched above")
        };
        if let Err(e) = durable_fs(&mut b.fs_task).await {
            self.state = State::Restored(b, r);
            return Err(failed(e));
        }
        let Restored {
            how,
            daemon,
            pid,
            at,
            asked,
            rcu,
        } = *r;
        if let Restoration::Held(held) = how {
            // Connected only now (see TargetHooks::before_commit); a
            // failure leaves the held copy to the rollback.
            let connected = blocking(&b.htype, |h| h.before_commit()).await;
            // The lease again, as late as can be: this service may have
            // been stopped in between.
            let refused = match connected {
                Err(e) => Some(failed(e)),
                Ok(()) => late_commit(&c, at).map(|e| (ErrorCode::BadRequest, e)),
            };
            if let Some(refusal) = refused {
                let how = Restoration::Held(held);
                let r = Restored {
                    how,
                    daemon,
                    rcu,
                    ..*r
                };
                self.state = State::Restored(b, Box::new(r));
                return Err(refusal);
            }
            if let Err(e) = held.commit().await {
                // CRIU is gone with the tree: what is left to undo is the
                // kind's and the directory.
                if let Some(d) = daemon {
                    d.kill().await;
                }
                self.state = State::Begun(b);
                return Err(failed(e));
            }
        } else if let Err(e) = blocking(&b.htype, |h| h.commit()).await {
            // The kind's manager held its copy (runc) and could not let it
            // run: the kind's abort (the session's end) removes it.
            if let Some(d) = daemon {
                d.kill().await;
            }
            self.state = State::Begun(b);
            return Err(failed(e));
        }
        if let Some(e) = late_commit(&c, at) {
            // Stopped between the last check and the commit: the source
            // has given up and runs its own copy, so this one must not run
            // on. It ran for a moment; the source's copy is the one kept.
            warn!(session = %hex(&self.sid), pid, "committed past the lease: ending this copy");
            kill_tree(pid);
            if let Some(d) = daemon {
                d.kill().await;
            }
            self.state = State::Begun(b);
            return Err((ErrorCode::BadRequest, e));
        }
        // The copy runs, its namespace unlocked: what reached the source's
        // while it was locked is delivered now, not at the client's next
        // retransmission (see `replay`).
        if !c.replay.is_empty() {
            let packets = c.replay;
            let _ =
                tokio::task::spawn_blocking(move || crate::replay::deliver(pid, &packets)).await;
        }
        // The switch-over is over: the host's grace periods go back to
        // normal (a failure above gives them back on its return).
        drop(rcu);
        self.state = State::Committed;
        info!(session = %hex(&self.sid), pid, "committed: the tree runs here");
        if c.overhead_us > 0 {
            let overhead = Duration::from_micros(c.overhead_us).saturating_add(received.elapsed());
            let restore = self.svc.restore_of(c.tree_pages);
            self.svc.overheads.record(b.htype.kind(), overhead, restore);
        }
        self.emit(|session| ServiceEvent::Committed { session, pid });
        let times = (asked.elapsed(), b.at.elapsed());
        self.svc.metrics.ended(
            b.htype.kind(),
            b.plan.mode.as_str(),
            Outcome::Committed,
            Some(times),
        );
        match daemon {
            // Memory keeps arriving after the commit: the images stay
            // until the daemon has every page.
            Some(d) => {
                let keep = self.svc.keep_images;
                let (dir, ram) = (b.dir, b.ram);
                let (events, session) = (self.svc.events.clone(), hex(&self.sid));
                tokio::spawn(async move {
                    if let Err(e) = d.wait().await {
                        // Once the daemon's userfaultfd is closed, a page
                        // it never received reads as zeros: a copy with
                        // holes in its memory must not run on. (The
                        // source's CRIU resumes its own copy, if it is
                        // still there.)
                        error!(session = %session, pid, error = %e,
                            "the pull failed after the commit: ending the copy");
                        kill_tree(pid);
                        if let Some(tx) = events {
                            let _ = tx.send(ServiceEvent::PullFailed { session, pid });
                        }
                    }
                    drop(ram);
                    if !keep {
                        let _ = std::fs::remove_dir_all(dir);
                    }
                });
            }
            // After the answer: the source's copy waits for it, frozen.
            None => self.after_reply = Some((b.dir, b.ram)),
        }
        Ok(response::Body::Committed(proto::Committed {}))
    }

    async fn next_pages(&mut self) -> Result<Link> {
        tokio::time::timeout(JOIN_TIMEOUT, self.pages_rx.recv())
            .await
            .ok()
            .flatten()
            .ok_or_else(|| Error::Protocol("no page channel joined the session".into()))
    }
}

/// Waits until the file system the source synced is durable here (what
/// the passes after the first changed, fsynced once the final pass is
/// answered, while the images arrive and the tree is restored): the tree
/// must not run on files a crash of this host could still lose, when the
/// source's copy is gone. Taken once: a refused
/// commit's rollback has nothing more to wait for.
async fn durable_fs(fs_task: &mut Option<FsTask>) -> Result<()> {
    let Some(task) = fs_task.take() else {
        return Ok(());
    };
    match task.await {
        Ok(r) => r.map_err(Error::Fs),
        Err(e) => Err(Error::Protocol(format!(
            "the file-system sync ended before it was durable: {e}"
        ))),
    }
}

/// A commit whose lease ran out: the source gave up its freeze limit
/// before this could be read (this service was stopped, or slow), has
/// resumed its own copy, and this one must not run.
fn late_commit(c: &proto::Commit, restored_at: Instant) -> Option<Error> {
    let since = restored_at.elapsed();
    let lease = Duration::from_millis(c.valid_for_ms);
    (c.valid_for_ms > 0 && since >= lease).then(|| {
        Error::Protocol(format!(
            "the commit came {:.1} s after the restore, past the source's freeze limit \
             ({:.1} s left then): the source has resumed its own copy, so this one does not run",
            since.as_secs_f64(),
            lease.as_secs_f64()
        ))
    })
}

/// The kind's manager restores (so that it knows the tree), lazily when
/// the plan says so; its CRIU's log says why it failed.
async fn restore_by_manager(
    h: &Arc<dyn Htype>,
    dir: PathBuf,
    lazy: bool,
) -> Result<(Restoration, i32)> {
    let logs_in = dir.clone();
    let pid = blocking(h, move |h| h.restore(&dir, lazy))
        .await
        .map_err(|e| match e {
            // LXC writes its CRIU's log beside the images, runc into the
            // work dir it is given there.
            Error::Htype(e) => {
                let logs = ["restore.log", "restore-work/restore.log"].map(|l| logs_in.join(l));
                crate::logs::manager_error(e, &logs)
            }
            other => other,
        })?;
    Ok((Restoration::ByKind, pid))
}

/// Ends a tree that runs here, its descendants first found from /proc.
fn kill_tree(root: i32) {
    for p in crate::sockets::tree(root) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(p),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// Runs a blocking htype hook off the runtime's threads.
async fn blocking<R: Send + 'static>(
    h: &Arc<dyn Htype>,
    f: impl FnOnce(&dyn Htype) -> phaul_htypes::Result<R> + Send + 'static,
) -> Result<R> {
    let h = h.clone();
    tokio::task::spawn_blocking(move || f(h.as_ref()))
        .await
        .map_err(|e| Error::Protocol(format!("an htype task: {e}")))?
        .map_err(Error::Htype)
}

/// Links `dir/parent` to pre-dump `parent`'s images, where CRIU's restore
/// looks for the pages its pagemaps mark as in the parent.
fn link_parent(dir: &std::path::Path, parent: u32) -> crate::error::Result<()> {
    match std::os::unix::fs::symlink(format!("../{parent}"), dir.join("parent")) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(source) => Err(Error::Io {
            what: format!("linking {}/parent", dir.display()),
            source,
        }),
    }
}

/// A learned duration on the wire: µs, at least 1 (0 says "nothing").
fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_commit_waits_for_the_file_system_to_be_durable() {
        // No file system: nothing to wait for.
        assert!(durable_fs(&mut None).await.is_ok());
        // Still syncing when the commit comes: it waits, then goes on.
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let mut task = Some(tokio::spawn(async move {
            let _ = rx.await;
            Ok(())
        }));
        {
            let waiting = durable_fs(&mut task);
            tokio::pin!(waiting);
            let early = tokio::time::timeout(Duration::from_millis(50), &mut waiting).await;
            assert!(early.is_err(), "the commit went on before the sync ended");
            tx.send(()).unwrap();
            assert!(waiting.await.is_ok());
        }
        assert!(
            task.is_none(),
            "taken once: a rollback has nothing to wait for"
        );
    }

    #[tokio::test]
    async fn a_file_system_that_did_not_become_durable_refuses_the_commit() {
        let mut failed = Some(tokio::spawn(async {
            Err(phaul_fs::Error::Protocol("syncfs: EIO".into()))
        }));
        let e = durable_fs(&mut failed).await.unwrap_err();
        assert!(matches!(e, Error::Fs(_)), "{e:?}");
        let mut gone = Some(tokio::spawn(std::future::pending::<phaul_fs::Result<()>>()));
        gone.as_ref().unwrap().abort();
        let e = durable_fs(&mut gone).await.unwrap_err();
        assert!(e.to_string().contains("before it was durable"), "{e}");
    }
}
