//! Connections to CRIU and the requests they carry.
//!
//! A [`Criu`] says how to reach CRIU (spawn `criu swrk`, or connect to a
//! `criu service` socket); [`Criu::connect`] gives a [`Session`], one
//! connection. CRIU lets only some requests keep a connection open, and
//! silently closes it if `keep_open` is set on any other, so the types carry
//! the rule:
//!
//! - requests that may keep the connection (`VERSION`, `FEATURE_CHECK`,
//!   `CPUINFO_DUMP`, `CPUINFO_CHECK`, `PAGE_SERVER`, `PAGE_SERVER_CHLD`) take
//!   `&mut Session`;
//! - the ones that end it (`CHECK`, `DUMP`, `RESTORE`, `SINGLE_PRE_DUMP`,
//!   `WAIT_PID`) take the `Session` by value;
//! - `PRE_DUMP` turns it into a [`PreDumpChain`], which allows only more
//!   pre-dumps and then a final `DUMP`, as CRIU's pre-dump loop does.
//!
//! Requests that can notify (`DUMP`, `RESTORE`, pre-dumps) return an
//! [`Exchange`]: step it with [`Exchange::next`] to see each [`Notification`]
//! and answer it — now, or after any amount of other work, which is how a
//! `post-dump` is held — or let [`Exchange::finish`] acknowledge them all.

use std::marker::PhantomData;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use nix::errno::Errno;
use prost::Message;
use tracing::{debug, warn};

use crate::error::{Error, Result};
use crate::log::LogExcerpt;
use crate::notify::Script;
use crate::opts::{Opts, Prepared};
use crate::proto::{CriuFeatures, CriuOpts, CriuReq, CriuReqType, CriuResp};
use crate::socket::{Received, SeqPacket};
use crate::version::Version;

/// The fd number CRIU's end of the socket gets in a spawned `criu swrk`.
pub const SWRK_SOCKET_FD: RawFd = 3;
/// The first fd number of descriptors passed to `criu swrk`
/// ([`Criu::connect_passing`]); the next ones follow in order.
pub const FIRST_PASSED_FD: RawFd = 4;
/// How many fds may be passed to one `criu swrk`.
pub const MAX_PASSED_FDS: usize = 32;

/// Lines of CRIU's log kept in an error.
const LOG_LINES: usize = 20;

/// How to reach CRIU. Cheap to clone; each [`Criu::connect`] makes a new
/// connection.
#[derive(Debug, Clone)]
pub struct Criu {
    mode: Mode,
    quiet: bool,
}

#[derive(Debug, Clone)]
enum Mode {
    Swrk { binary: PathBuf },
    Service { socket: PathBuf },
}

impl Default for Criu {
    fn default() -> Self {
        Self::new()
    }
}

impl Criu {
    /// Spawn `criu swrk` per connection, using the first `criu` on `PATH`
    /// (or `/usr/local/sbin/criu`, where `scripts/setup.sh` installs it).
    pub fn new() -> Self {
        Self::with_binary(default_binary())
    }

    /// Spawn `criu swrk` from this binary.
    pub fn with_binary(binary: impl AsRef<Path>) -> Self {
        Self {
            mode: Mode::Swrk {
                binary: binary.as_ref().to_path_buf(),
            },
            quiet: false,
        }
    }

    /// Connect to a running `criu service --address SOCKET`. Options that
    /// name fds in CRIU's table ([`Opts::page_server_fd`],
    /// [`Opts::inherit_fd`], [`Opts::rst_sibling`]) are refused there.
    pub fn service(socket: impl AsRef<Path>) -> Self {
        Self {
            mode: Mode::Service {
                socket: socket.as_ref().to_path_buf(),
            },
            quiet: false,
        }
    }

    /// Send a spawned CRIU's stdout and stderr to `/dev/null` (by default
    /// its stderr is ours; its log goes to the log file either way).
    pub fn quiet(mut self, quiet: bool) -> Self {
        self.quiet = quiet;
        self
    }

    /// The binary spawned, if this is a swrk connection.
    pub fn binary(&self) -> Option<&Path> {
        match &self.mode {
            Mode::Swrk { binary } => Some(binary),
            Mode::Service { .. } => None,
        }
    }

    /// Opens a connection.
    pub async fn connect(&self) -> Result<Session> {
        self.connect_passing(Vec::new()).await
    }

    /// Opens a swrk connection and hands CRIU these fds: the first lands at
    /// [`FIRST_PASSED_FD`] in CRIU's fd table, the next one after it, and so
    /// on. Name them in [`Opts::page_server_fd`] or [`Opts::inherit_fd`].
    pub async fn connect_passing(&self, fds: Vec<OwnedFd>) -> Result<Session> {
        match &self.mode {
            Mode::Service { socket } => {
                if !fds.is_empty() {
                    return Err(Error::SwrkOnly {
                        option: "passed fds",
                    });
                }
                let sock = SeqPacket::connect(socket).map_err(|source| Error::Connect {
                    path: socket.clone(),
                    source,
                })?;
                debug!(socket = %socket.display(), "connected to criu service");
                Ok(Session::new(sock, None, None))
            }
            Mode::Swrk { binary } => self.spawn(binary, fds),
        }
    }

    fn spawn(&self, binary: &Path, fds: Vec<OwnedFd>) -> Result<Session> {
        if fds.len() > MAX_PASSED_FDS {
            return Err(Error::InvalidOption {
                option: "passed fds",
                reason: format!(
                    "at most {MAX_PASSED_FDS} fds can be passed, not {}",
                    fds.len()
                ),
            });
        }
        let (sock, theirs) = SeqPacket::pair().map_err(Error::Socket)?;
        let mut cmd = tokio::process::Command::new(binary);
        // A process group of its own: a terminal's Ctrl-C, or a service
        // manager's signal to the caller's group, must not reach CRIU in
        // the middle of a dump or a restore; the caller decides how it ends.
        cmd.arg("swrk")
            .arg(SWRK_SOCKET_FD.to_string())
            .process_group(0)
            .stdin(Stdio::null());
        if self.quiet {
            cmd.stdout(Stdio::null()).stderr(Stdio::null());
        } else {
            cmd.stdout(Stdio::null());
        }
        let passed: Vec<BorrowedFd<'_>> = std::iter::once(theirs.as_fd())
            .chain(fds.iter().map(AsFd::as_fd))
            .collect();
        let high = hand_over(&mut cmd, &passed, SWRK_SOCKET_FD).map_err(Error::Socket)?;
        let passed_count = i32::try_from(fds.len()).unwrap_or(0);
        let child = cmd.spawn().map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                Error::CriuNotFound {
                    path: binary.to_path_buf(),
                    source,
                }
            } else {
                Error::Spawn {
                    path: binary.to_path_buf(),
                    source,
                }
            }
        })?;
        drop(high);
        drop(theirs);
        drop(fds);
        debug!(binary = %binary.display(), pid = child.id(), "spawned criu swrk");
        Ok(Session::new(
            sock,
            Some(child),
            Some(FIRST_PASSED_FD..FIRST_PASSED_FD + passed_count),
        ))
    }

    /// Asks CRIU's version on a fresh connection.
    pub async fn version(&self) -> Result<Version> {
        self.connect().await?.version().await
    }

    /// Asks CRIU's version and fails with [`Error::TooOld`] below `min`.
    pub async fn ensure_version(&self, min: &Version) -> Result<Version> {
        let have = self.version().await?;
        if have < *min {
            return Err(Error::TooOld {
                have,
                need: min.clone(),
            });
        }
        Ok(have)
    }
}

/// The `criu` a default [`Criu`] spawns: the first on `PATH`, else where
/// `scripts/setup.sh` installs it.
pub fn default_binary() -> PathBuf {
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let candidate = dir.join("criu");
            if candidate.is_file() {
                return candidate;
            }
        }
    }
    PathBuf::from("/usr/local/sbin/criu")
}

/// What CRIU's feature check found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Features {
    /// Memory change tracking (soft-dirty): needed for pre-dumps.
    pub mem_track: bool,
    /// userfaultfd-based lazy pages: needed for post-copy.
    pub lazy_pages: bool,
    /// Keeping pidfds between pre-dumps to detect PID reuse.
    pub pidfd_store: bool,
}

/// A page server CRIU started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageServer {
    /// Its PID (for `PAGE_SERVER_CHLD`, a child of the CRIU worker, which
    /// [`Session::wait_pid`] can reap).
    pub pid: i32,
    /// The port it listens on (0 for one serving a passed socket).
    pub port: u16,
}

/// One connection to CRIU.
#[derive(Debug)]
pub struct Session {
    conn: Conn,
}

#[derive(Debug)]
struct Conn {
    sock: SeqPacket,
    child: Option<tokio::process::Child>,
    /// fd numbers passed to a swrk CRIU; `None` when not swrk.
    passed: Option<Range<i32>>,
    /// CRIU has closed (or will close) this connection.
    ended: bool,
}

impl Session {
    fn new(
        sock: SeqPacket,
        child: Option<tokio::process::Child>,
        passed: Option<Range<i32>>,
    ) -> Self {
        Self {
            conn: Conn {
                sock,
                child,
                passed,
                ended: false,
            },
        }
    }

    /// Uses a connected `SOCK_SEQPACKET` socket to a CRIU worker that the
    /// caller set up.
    pub fn from_fd(fd: OwnedFd) -> Result<Self> {
        Ok(Self::new(
            SeqPacket::from_fd(fd).map_err(Error::Socket)?,
            None,
            None,
        ))
    }

    /// The PID of the spawned `criu swrk`, if this connection spawned one.
    pub fn criu_pid(&self) -> Option<u32> {
        self.conn.child.as_ref().and_then(tokio::process::Child::id)
    }

    /// Sends a raw request and returns CRIU's checked answer, acknowledging
    /// any notification. This bypasses the typestate: CRIU's rules are the
    /// caller's to keep, though breaking them still ends in a typed error
    /// (such as [`Error::BadRequest`] or [`Error::ConnectionClosed`]), never
    /// a hang. fd fields in `req.opts` must already be valid.
    pub async fn call_raw(&mut self, req: CriuReq) -> Result<CriuResp> {
        let ty = CriuReqType::try_from(req.r#type).unwrap_or(CriuReqType::Empty);
        self.conn.call(req, ty, None).await
    }

    /// `VERSION`.
    pub async fn version(&mut self) -> Result<Version> {
        let req = CriuReq {
            r#type: CriuReqType::Version as i32,
            keep_open: Some(true),
            ..Default::default()
        };
        let resp = self.conn.call(req, CriuReqType::Version, None).await?;
        resp.version
            .as_ref()
            .map(Version::from_proto)
            .ok_or_else(|| unexpected(CriuReqType::Version, "no version in the answer"))
    }

    /// `FEATURE_CHECK` for every feature CRIU knows how to check.
    pub async fn feature_check(&mut self) -> Result<Features> {
        let all = CriuFeatures {
            mem_track: Some(true),
            lazy_pages: Some(true),
            pidfd_store: Some(true),
        };
        let resp = self
            .scratch_call(CriuReqType::FeatureCheck, Some(all))
            .await?;
        let f = resp
            .features
            .ok_or_else(|| unexpected(CriuReqType::FeatureCheck, "no features in the answer"))?;
        Ok(Features {
            mem_track: f.mem_track.unwrap_or(false),
            lazy_pages: f.lazy_pages.unwrap_or(false),
            pidfd_store: f.pidfd_store.unwrap_or(false),
        })
    }

    /// `CPUINFO_DUMP`: writes `cpuinfo.img` into the images dir.
    pub async fn cpuinfo_dump(&mut self, opts: Opts) -> Result<()> {
        self.keep_open_call(CriuReqType::CpuinfoDump, opts)
            .await
            .map(drop)
    }

    /// `CPUINFO_CHECK`: checks this CPU against the `cpuinfo.img` in the
    /// images dir. CRIU answers `ENOTSUP` on architectures without it.
    pub async fn cpuinfo_check(&mut self, opts: Opts) -> Result<()> {
        self.keep_open_call(CriuReqType::CpuinfoCheck, opts)
            .await
            .map(drop)
    }

    /// `PAGE_SERVER`: a daemonized page server receiving pages into the
    /// images dir. It serves one dump or pre-dump, then exits.
    pub async fn page_server(&mut self, opts: Opts) -> Result<PageServer> {
        let resp = self.keep_open_call(CriuReqType::PageServer, opts).await?;
        page_server_of(CriuReqType::PageServer, &resp)
    }

    /// `PAGE_SERVER_CHLD`: like [`Session::page_server`], but the server is
    /// a child of the CRIU worker, to be reaped with [`Session::wait_pid`].
    pub async fn page_server_chld(&mut self, opts: Opts) -> Result<PageServer> {
        let resp = self
            .keep_open_call(CriuReqType::PageServerChld, opts)
            .await?;
        page_server_of(CriuReqType::PageServerChld, &resp)
    }

    async fn keep_open_call(&mut self, ty: CriuReqType, opts: Opts) -> Result<CriuResp> {
        let mut prepared = opts.prepare(self.conn.passed.as_ref())?;
        // A notifying page server would send `status-ready` after the
        // answer on this same socket and block until it is acknowledged,
        // which a kept-open session cannot do between requests.
        prepared.raw.notify_scripts = None;
        let req = CriuReq {
            r#type: ty as i32,
            opts: Some(prepared.raw.clone()),
            keep_open: Some(true),
            ..Default::default()
        };
        self.conn.call(req, ty, prepared.log_path.as_deref()).await
    }

    /// `CHECK`: whether CRIU can work on this kernel. Ends the session.
    pub async fn check(mut self) -> Result<()> {
        self.scratch_call(CriuReqType::Check, None).await.map(drop)
    }

    /// A request whose images dir only holds CRIU's log: a scratch dir,
    /// removed afterwards. The session stays open only for a feature
    /// check (a `CHECK` ends it).
    async fn scratch_call(
        &mut self,
        ty: CriuReqType,
        features: Option<CriuFeatures>,
    ) -> Result<CriuResp> {
        let scratch = scratch()?;
        let prepared = Opts::new()
            .images_dir(scratch.path())
            .prepare(self.conn.passed.as_ref())?;
        let req = CriuReq {
            r#type: ty as i32,
            opts: Some(prepared.raw.clone()),
            keep_open: features.is_some().then_some(true),
            features,
            ..Default::default()
        };
        self.conn.call(req, ty, prepared.log_path.as_deref()).await
    }

    /// `WAIT_PID`: reaps a page server this session started with
    /// [`Session::page_server_chld`]. Returns its raw wait status.
    pub async fn wait_pid(mut self, pid: i32) -> Result<i32> {
        let pid_u = u32::try_from(pid).map_err(|_| Error::InvalidOption {
            option: "pid",
            reason: format!("{pid} is not a PID"),
        })?;
        let req = CriuReq {
            r#type: CriuReqType::WaitPid as i32,
            pid: Some(pid_u),
            ..Default::default()
        };
        let resp = self.conn.call(req, CriuReqType::WaitPid, None).await?;
        Ok(resp.status.unwrap_or(0))
    }

    /// `DUMP`. With [`Opts::notify_scripts`], the exchange delivers
    /// `pre-dump`, `query-ext-files`, `post-dump` and the rest.
    pub async fn dump(self, opts: Opts) -> Result<Exchange<Dumped>> {
        Exchange::start(self.conn, CriuReqType::Dump, opts).await
    }

    /// `RESTORE`. CRIU always restores detached; the answer carries the
    /// root's PID.
    pub async fn restore(self, opts: Opts) -> Result<Exchange<Restored>> {
        Exchange::start(self.conn, CriuReqType::Restore, opts).await
    }

    /// `SINGLE_PRE_DUMP`: one pre-dump, then the session ends.
    pub async fn single_pre_dump(self, opts: Opts) -> Result<Exchange<PreDumped>> {
        Exchange::start(self.conn, CriuReqType::SinglePreDump, opts).await
    }

    /// `PRE_DUMP`, the first of CRIU's pre-dump loop on this connection.
    /// Needs memory tracking in the kernel ([`Features::mem_track`]).
    pub async fn pre_dump(self, opts: Opts) -> Result<PreDumpChain> {
        let ex: Exchange<PreDumped> =
            Exchange::start(self.conn, CriuReqType::PreDump, opts).await?;
        let conn = ex.run_to_end().await?;
        Ok(PreDumpChain {
            conn,
            iterations: 1,
        })
    }
}

fn page_server_of(ty: CriuReqType, resp: &CriuResp) -> Result<PageServer> {
    let ps = resp
        .ps
        .as_ref()
        .ok_or_else(|| unexpected(ty, "no page server in the answer"))?;
    // A page server on a passed socket (`ps.fd`) listens on no port.
    let port = match ps.port {
        None => 0,
        Some(p) => u16::try_from(p).map_err(|_| unexpected(ty, "a port out of range"))?,
    };
    Ok(PageServer {
        pid: ps.pid.unwrap_or(0),
        port,
    })
}

fn unexpected(req: CriuReqType, what: &str) -> Error {
    Error::UnexpectedResponse {
        req,
        got: what.to_string(),
    }
}

/// CRIU's pre-dump loop: more pre-dumps, then the final dump, all on one
/// connection. CRIU refuses any other request in between, so this type
/// offers no other.
#[derive(Debug)]
pub struct PreDumpChain {
    conn: Conn,
    iterations: u32,
}

impl PreDumpChain {
    /// How many pre-dumps have succeeded on this connection.
    pub fn iterations(&self) -> u32 {
        self.iterations
    }

    /// Another `PRE_DUMP` (set [`Opts::parent_img`] to the previous one).
    /// A failed pre-dump ends CRIU's loop; later calls then fail with
    /// [`Error::ConnectionClosed`].
    pub async fn pre_dump(&mut self, opts: Opts) -> Result<()> {
        if self.conn.ended {
            return Err(Error::ConnectionClosed {
                req: CriuReqType::PreDump,
            });
        }
        let conn = std::mem::replace(&mut self.conn, Conn::placeholder()?);
        let ex: Exchange<PreDumped> = Exchange::start(conn, CriuReqType::PreDump, opts).await?;
        let core = ex.core;
        let mut ex = Exchange::<PreDumped> {
            core,
            _t: PhantomData,
        };
        let res = ex.drive_to_end().await;
        self.conn = ex.core.conn;
        if res.is_err() {
            self.conn.ended = true;
        } else {
            self.iterations += 1;
        }
        res.map(drop)
    }

    /// The final `DUMP`, ending the loop.
    pub async fn dump(self, opts: Opts) -> Result<Exchange<Dumped>> {
        if self.conn.ended {
            return Err(Error::ConnectionClosed {
                req: CriuReqType::Dump,
            });
        }
        Exchange::start(self.conn, CriuReqType::Dump, opts).await
    }
}

/// What a successful `DUMP` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dumped {
    /// Set when the answer went to a process that dumped itself and was
    /// then restored.
    pub restored: bool,
}

/// What a successful `RESTORE` reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Restored {
    /// The PID of the restored tree's root, as seen from CRIU.
    pub pid: i32,
}

/// A successful pre-dump (its numbers are in `stats-dump`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PreDumped;

/// The answer types of requests that can notify.
pub trait Outcome: Sized + private::Sealed {
    #[doc(hidden)]
    fn from_resp(req: CriuReqType, resp: &CriuResp) -> Result<Self>;
}

mod private {
    pub trait Sealed {}
    impl Sealed for super::Dumped {}
    impl Sealed for super::Restored {}
    impl Sealed for super::PreDumped {}
}

impl Outcome for Dumped {
    fn from_resp(_: CriuReqType, resp: &CriuResp) -> Result<Self> {
        Ok(Self {
            restored: resp.dump.and_then(|d| d.restored).unwrap_or(false),
        })
    }
}

impl Outcome for Restored {
    fn from_resp(req: CriuReqType, resp: &CriuResp) -> Result<Self> {
        let pid = resp
            .restore
            .map(|r| r.pid)
            .ok_or_else(|| unexpected(req, "no restore section"))?;
        Ok(Self { pid })
    }
}

impl Outcome for PreDumped {
    fn from_resp(_: CriuReqType, _: &CriuResp) -> Result<Self> {
        Ok(Self)
    }
}

/// One step of an [`Exchange`].
#[derive(Debug)]
pub enum Event<'a, T> {
    /// CRIU waits for this notification to be answered.
    Notify(Notification<'a>),
    /// The request's answer: the exchange is over.
    Done(T),
}

/// A request in flight that may send notifications before its answer.
#[derive(Debug)]
pub struct Exchange<T> {
    core: Core,
    _t: PhantomData<T>,
}

#[derive(Debug)]
struct Core {
    conn: Conn,
    req: CriuReqType,
    log_path: Option<PathBuf>,
    /// Descriptors named in the options, open until CRIU answers.
    _fds: Vec<OwnedFd>,
    /// The notification awaiting an answer, if any.
    pending: Option<Script>,
    done: bool,
}

impl<T: Outcome> Exchange<T> {
    async fn start(mut conn: Conn, req: CriuReqType, opts: Opts) -> Result<Self> {
        if conn.ended {
            return Err(Error::ConnectionClosed { req });
        }
        let Prepared {
            raw,
            _fds,
            log_path,
        } = opts.prepare(conn.passed.as_ref())?;
        let msg = CriuReq {
            r#type: req as i32,
            opts: Some(raw),
            ..Default::default()
        };
        conn.send(&msg).await?;
        debug!(req = req.as_str_name(), "sent");
        Ok(Self {
            core: Core {
                conn,
                req,
                log_path,
                _fds,
                pending: None,
                done: false,
            },
            _t: PhantomData,
        })
    }

    /// The request this exchange is for.
    pub fn request(&self) -> CriuReqType {
        self.core.req
    }

    /// Where CRIU writes this request's log, when it writes one.
    pub fn log_path(&self) -> Option<&Path> {
        self.core.log_path.as_deref()
    }

    /// The next notification, or the answer. A notification must be answered
    /// (or dropped, which fails it) before this is called again.
    pub async fn next(&mut self) -> Result<Event<'_, T>> {
        if let Some(script) = &self.core.pending {
            return Err(Error::NotifyUnanswered {
                script: script.name().to_string(),
            });
        }
        if self.core.done {
            return Err(Error::ConnectionClosed { req: self.core.req });
        }
        let req = self.core.req;
        let (resp, fd) = match self.core.conn.recv(req).await {
            Ok(x) => x,
            Err(e) => {
                self.core.done = true;
                return Err(e);
            }
        };
        if resp.r#type == CriuReqType::Notify as i32 {
            let n = resp.notify.unwrap_or_default();
            let script = Script::from_name(n.script.as_deref().unwrap_or(""));
            debug!(
                req = req.as_str_name(),
                script = script.name(),
                pid = n.pid,
                "notification"
            );
            self.core.pending = Some(script.clone());
            return Ok(Event::Notify(Notification {
                core: &mut self.core,
                script,
                pid: n.pid,
                fd,
                answered: false,
            }));
        }
        self.core.done = true;
        check_answer(req, &resp, self.core.log_path.as_deref())?;
        T::from_resp(req, &resp).map(Event::Done)
    }

    /// Acknowledges every notification and returns the answer.
    pub async fn finish(mut self) -> Result<T> {
        self.drive_to_end().await
    }

    async fn drive_to_end(&mut self) -> Result<T> {
        loop {
            match self.next().await? {
                Event::Notify(n) => n.ack().await?,
                Event::Done(t) => return Ok(t),
            }
        }
    }

    /// Like [`Exchange::finish`], keeping the connection (pre-dump loop).
    async fn run_to_end(mut self) -> Result<Conn> {
        self.drive_to_end().await?;
        Ok(self.core.conn)
    }
}

fn check_answer(req: CriuReqType, resp: &CriuResp, log_path: Option<&Path>) -> Result<()> {
    let got = resp.r#type;
    if got == CriuReqType::Empty as i32 && !resp.success {
        return Err(Error::BadRequest { req });
    }
    let matches = got == req as i32
        || (req == CriuReqType::PageServerChld && got == CriuReqType::PageServer as i32);
    if !matches {
        let name = CriuReqType::try_from(got)
            .map_or_else(|_| format!("type {got}"), |t| t.as_str_name().to_string());
        return Err(Error::UnexpectedResponse {
            req,
            got: format!("a {name} answer"),
        });
    }
    if !resp.success {
        let errno = resp.cr_errno.filter(|e| *e != 0).map(Errno::from_raw);
        let log = log_path.and_then(|p| LogExcerpt::read(p, LOG_LINES).ok().map(Box::new));
        return Err(Error::Criu {
            req,
            errno,
            message: resp.cr_errmsg.clone(),
            log,
        });
    }
    Ok(())
}

/// A notification from CRIU, which is blocked until it is answered.
///
/// Holding it (across any `.await`) holds CRIU: for `post-dump`, the tree
/// stays frozen. Dropping it unanswered answers failure.
#[derive(Debug)]
pub struct Notification<'a> {
    core: &'a mut Core,
    script: Script,
    pid: Option<i32>,
    fd: Option<OwnedFd>,
    answered: bool,
}

impl Notification<'_> {
    /// Which notification this is.
    pub fn script(&self) -> &Script {
        &self.script
    }

    /// The PID CRIU sent with it (`setup-namespaces`, `post-restore`).
    pub fn pid(&self) -> Option<i32> {
        self.pid
    }

    /// The fd that came with it (`orphan-pts-master`), taken once.
    pub fn take_fd(&mut self) -> Option<OwnedFd> {
        self.fd.take()
    }

    /// Answers success: CRIU goes on (after `post-dump`, it kills the tree).
    pub async fn ack(self) -> Result<()> {
        self.answer(true, Vec::new()).await
    }

    /// Answers failure: CRIU aborts (after `post-dump`, it resumes the tree).
    pub async fn nack(self) -> Result<()> {
        self.answer(false, Vec::new()).await
    }

    /// Answers `query-ext-files` with external resources to add
    /// (`--external` strings).
    pub async fn ack_with_externals(self, externals: Vec<String>) -> Result<()> {
        self.answer(true, externals).await
    }

    async fn answer(mut self, success: bool, externals: Vec<String>) -> Result<()> {
        self.answered = true;
        let msg = reply(success, externals);
        self.core.pending = None;
        debug!(
            script = self.script.name(),
            success, "answering notification"
        );
        self.core.conn.send(&msg).await
    }
}

fn reply(success: bool, externals: Vec<String>) -> CriuReq {
    let opts = (!externals.is_empty()).then(|| CriuOpts {
        external: externals,
        ..Default::default()
    });
    CriuReq {
        r#type: CriuReqType::Notify as i32,
        notify_success: Some(success),
        opts,
        ..Default::default()
    }
}

impl Drop for Notification<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        self.core.pending = None;
        // CRIU is blocked reading this answer, so the socket has room and a
        // non-blocking send goes through; if it does not, closing the
        // connection fails the notification just the same.
        let bytes = reply(false, Vec::new()).encode_to_vec();
        if let Err(e) = self.core.conn.sock.try_send(&bytes) {
            warn!(script = self.script.name(), error = %e, "could not answer a dropped notification");
            self.core.conn.ended = true;
        }
    }
}

impl Conn {
    fn placeholder() -> Result<Self> {
        // Only ever exists between a take and a put-back in PreDumpChain.
        let (sock, _peer) = SeqPacket::pair().map_err(Error::Socket)?;
        Ok(Self {
            sock,
            child: None,
            passed: None,
            ended: true,
        })
    }

    async fn send(&mut self, msg: &CriuReq) -> Result<()> {
        let req = CriuReqType::try_from(msg.r#type).unwrap_or(CriuReqType::Empty);
        match self.sock.send(&msg.encode_to_vec()).await {
            Ok(()) => Ok(()),
            Err(e) if matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNRESET)) => {
                self.ended = true;
                Err(self.closed_error(req).await)
            }
            Err(e) => Err(Error::Socket(e)),
        }
    }

    async fn recv(&mut self, req: CriuReqType) -> Result<(CriuResp, Option<OwnedFd>)> {
        match self.sock.recv().await.map_err(Error::Socket)? {
            Received::Message(d) => {
                let resp = CriuResp::decode(d.bytes.as_slice()).map_err(Error::Decode)?;
                Ok((resp, d.fd))
            }
            Received::Eof => {
                self.ended = true;
                Err(self.closed_error(req).await)
            }
            Received::TooLarge(len) => Err(Error::MessageTooLarge {
                len,
                max: crate::socket::MAX_MESSAGE,
            }),
        }
    }

    /// One request, notifications (which keep-open requests do not ask for)
    /// acknowledged, one answer checked.
    async fn call(
        &mut self,
        msg: CriuReq,
        req: CriuReqType,
        log: Option<&Path>,
    ) -> Result<CriuResp> {
        if self.ended {
            return Err(Error::ConnectionClosed { req });
        }
        let keep = msg.keep_open == Some(true);
        self.send(&msg).await?;
        loop {
            let (resp, _fd) = self.recv(req).await?;
            if resp.r#type == CriuReqType::Notify as i32 {
                debug!(
                    req = req.as_str_name(),
                    "acknowledging an unrequested notification"
                );
                self.send(&reply(true, Vec::new())).await?;
                continue;
            }
            let res = check_answer(req, &resp, log);
            if res.is_err() || !keep {
                // CRIU ends the session after a failure or a request
                // without keep_open.
                self.ended = true;
            }
            return res.map(|()| resp);
        }
    }

    /// The error for a connection CRIU closed: its exit status when it was
    /// our child and has exited.
    async fn closed_error(&mut self, req: CriuReqType) -> Error {
        if let Some(child) = self.child.as_mut() {
            if let Ok(Ok(status)) = tokio::time::timeout(Duration::from_secs(2), child.wait()).await
            {
                if !status.success() {
                    return Error::CriuExited { req, status };
                }
            }
        }
        Error::ConnectionClosed { req }
    }
}

/// A private directory for requests that need an images dir only for CRIU's
/// log (`CHECK`, `FEATURE_CHECK`); removed when dropped.
fn scratch() -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix("criu-rpc-")
        .tempdir()
        .map_err(|source| Error::OpenDir {
            what: "scratch dir",
            path: std::env::temp_dir(),
            source,
        })
}

/// Makes `fds` the child's descriptors `first`, `first + 1`, ... when `cmd`
/// is spawned, and no other of the caller's (they are close-on-exec):
/// how CRIU is given the sockets it is told to use by number (`swrk N`,
/// `--ps-socket N`). Returns copies of them, which must live until the
/// spawn and may be dropped after it.
pub fn hand_over(
    cmd: &mut tokio::process::Command,
    fds: &[BorrowedFd<'_>],
    first: RawFd,
) -> std::io::Result<Vec<OwnedFd>> {
    // Every fd moves above the numbers it will get first, so no dup2 below
    // overwrites one still to be moved, nor lands on itself (which would
    // leave close-on-exec set).
    let mut high = Vec::with_capacity(fds.len());
    for fd in fds {
        let h = nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(64))?;
        // SAFETY: F_DUPFD_CLOEXEC returned a new descriptor we own.
        high.push(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(h) });
    }
    let moves: Vec<(RawFd, RawFd)> = high
        .iter()
        .zip(first..)
        .map(|(h, to)| (h.as_raw_fd(), to))
        .collect();
    // SAFETY: the closure only calls dup2, which is async-signal-safe,
    // and reads a Vec allocated before the fork.
    unsafe {
        cmd.pre_exec(move || {
            for &(from, to) in &moves {
                // dup2 clears close-on-exec on `to`, so exactly these
                // descriptors survive the exec.
                if libc::dup2(from, to) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    Ok(high)
}
