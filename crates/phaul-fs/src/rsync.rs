//! The rsync driver: each pass is one run of the real
//! `rsync -aHAX --numeric-ids --delete`, whose bytes travel on the phaul
//! link — never on a connection of their own.
//!
//! # How rsync reaches the target
//!
//! rsync talks to its remote end through a "remote shell" it starts with
//! the remote command as arguments. The source driver runs
//!
//! ```text
//! rsync -aHAX --numeric-ids --delete --stats --no-h \
//!       --rsh=<phaul-rsync-rsh> -- SRC/ phaul:.
//! ```
//!
//! (argv only; no shell anywhere), with `PHAUL_RSYNC_SOCKET` naming a Unix
//! socket the driver listens on in a private (0700) directory. rsync starts
//! the helper as `phaul-rsync-rsh phaul rsync --server <options> . .`; the
//! helper connects to the socket, sends its arguments, then copies its
//! stdin to the socket and the socket to its stdout. The driver accepts
//! only a peer of its own uid and carries everything over the link:
//!
//! ```text
//!  source                                                target
//!    | -- RsyncCommand {last, argv} (own DATA frame) ---->|  validates argv
//!    | <- RsyncAccepted (own DATA frame) -----------------|  or Error{BAD_REQUEST}
//!    |                                                    |  spawns rsync --server
//!    | == DATA: helper -> rsync's stdin ... StreamEnd ==> |  in the root, no shell
//!    | <= DATA: rsync's stdout -> helper ... StreamEnd == |
//!    | <- RsyncExit {code, stderr tail} (own DATA frame) -|
//! ```
//!
//! and the target's service loop returns after the pass marked `last`.
//!
//! # What the target runs
//!
//! [`check_remote_command`] accepts only `rsync --server`, then option
//! words from a fixed list (short-option bundles of known letters; a few
//! long options), then `.` and a destination inside the root. Refused:
//! anything else as the program; `--sender` (the target would *send*
//! files); `-s` (secluded args would carry the real options inside the
//! protocol, unchecked); `-K` (keep-dirlinks follows symlinks in the
//! target's tree); options with values (`--log-file=`, `--temp-dir=`,
//! `--link-dest=` ...); a destination that is absolute, holds `..`, or
//! crosses a symlink. The target's rsync runs with its working directory at
//! the root, a clean environment, and no shell.
//!
//! # Statistics
//!
//! Parsed from the source rsync's own `--stats` output ([`parse_stats`]):
//! "Number of regular files transferred", "Total transferred file size",
//! "Number of deleted files", "Number of files". The target's
//! [`serve_rsync`] only knows the time its runs took.
//!
//! # Known limit
//!
//! rsync compares a directory's mtime with the source's to the second
//! only (its generator sets directory attributes without nanoseconds), so
//! a directory whose content changed in the same second as a pass can keep
//! a sub-second difference on the target; files and symlinks are exact.
//! The native driver is exact for directories too.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::AsFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::process::{ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use phaul_transport::{Link, RelayOptions, relay_parts};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};
use tokio::net::UnixListener;
use tracing::debug;

use crate::error::{Error, Result};
use crate::native::durable::sync_tree;
use crate::pass::{PassGate, ServePass, serve_passes};
use crate::path::{Dirs, RelPath};
use crate::wire::{MAX_ARGS, Msg, decode_frame};
use crate::{FsDriver, Pass, SyncStats, describe};

/// The environment variable that tells the helper which socket to
/// connect to.
pub const SOCKET_ENV: &str = "PHAUL_RSYNC_SOCKET";

/// The helper binary's file name.
pub const HELPER_NAME: &str = "phaul-rsync-rsh";

/// The helper's first bytes on the socket, before its arguments.
const HELLO: &[u8; 8] = b"PHRSH\x00\x00\x01";

/// The host name rsync is given; the helper ignores it.
const REMOTE_HOST: &str = "phaul";

/// The longest argument the helper may pass.
const MAX_ARG: usize = 4096;

/// How long rsync may take to start its remote shell.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// How much of rsync's stderr is kept for error messages.
const STDERR_TAIL: usize = 4096;

/// How much of the source rsync's stdout is kept (its `--stats` are last).
const STDOUT_TAIL: usize = 64 * 1024;

/// rsync's "partial transfer due to vanished source files": expected while
/// the workload runs (the next pass catches up), not in the final pass.
const VANISHED: i32 = 24;

/// The `PATH` the target's rsync runs with.
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Long options the target accepts in a remote command.
const LONG_OPTIONS: &[&str] = &[
    "--delete",
    "--delete-before",
    "--delete-during",
    "--delete-delay",
    "--delete-after",
    "--stats",
    "--numeric-ids",
    "--inplace",
    "--partial",
];

/// Letters the target accepts in a short-option bundle, before the `e`
/// that starts rsync's capability string. None takes a value.
const SHORT_OPTIONS: &str = "vqlHogDtpAXrcdWuxSzCmnIOJUNEi";

/// The source side of the rsync driver (see the module).
#[derive(Debug)]
pub struct RsyncSource {
    link: Link,
    root: PathBuf,
    helper: PathBuf,
    rsync: PathBuf,
    sock_dir: tempfile::TempDir,
    gate: PassGate,
    /// Whether the current pass has put anything on the link: until then a
    /// failure leaves the link in step and the next pass can run.
    on_link: bool,
}

impl RsyncSource {
    /// A source for the tree at `root`, sending over `link`, with `helper`
    /// as rsync's remote shell: the `phaul-rsync-rsh` binary (see
    /// [`RsyncSource::helper_next_to_exe`]), or any program that calls
    /// [`run_as_rsh_if_called`] first thing in `main`.
    ///
    /// rsync splits its `--rsh` value on spaces and interprets quotes and
    /// backslashes, so a helper path holding any of those is refused
    /// rather than quoted.
    pub fn new(link: Link, root: PathBuf, helper: PathBuf) -> Result<Self> {
        let bytes = helper.as_os_str().as_bytes();
        if bytes.is_empty()
            || bytes
                .iter()
                .any(|b| b.is_ascii_whitespace() || matches!(b, b'\'' | b'"' | b'\\'))
        {
            return Err(Error::Helper(format!(
                "{helper:?}: rsync would split this path (whitespace, quotes or backslashes)"
            )));
        }
        if !helper.is_file() {
            return Err(Error::Helper(format!("{helper:?} is not a file")));
        }
        let sock_dir = tempfile::Builder::new()
            .prefix("phaul-rsync-")
            .tempdir()
            .map_err(|e| Error::io(std::env::temp_dir(), e))?;
        Ok(Self {
            link,
            root,
            helper,
            rsync: find_rsync(),
            sock_dir,
            gate: PassGate::new("rsync"),
            on_link: false,
        })
    }

    /// Uses this `rsync` binary instead of the one on `PATH`.
    pub fn with_rsync(mut self, rsync: PathBuf) -> Self {
        self.rsync = rsync;
        self
    }

    /// `phaul-rsync-rsh` next to the running executable, or one directory
    /// up (where cargo puts binaries when the executable is a test or
    /// bench under `deps/`).
    pub fn helper_next_to_exe() -> Option<PathBuf> {
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        [dir.join(HELPER_NAME), dir.parent()?.join(HELPER_NAME)]
            .into_iter()
            .find(|p| p.is_file())
    }

    async fn gated_pass(&mut self, which: Pass) -> Result<SyncStats> {
        let t = self.gate.open(which)?;
        self.on_link = false;
        let res = self.run_pass(t.number, t.last).await;
        // The link is in step when nothing went on it, or when rsync
        // failed cleanly (the target reported its exit); any other failure
        // on the link leaves it anywhere.
        let on_link = self.on_link;
        self.gate
            .close(t, res, |e| matches!(e, Error::Rsync { .. }) || !on_link)
    }

    async fn run_pass(&mut self, pass: u32, last: bool) -> Result<SyncStats> {
        // A socket of its own per pass: a helper left over from a failed
        // pass can never be taken for this pass's.
        let sock = self.sock_dir.path().join(format!("rsh-{pass}.sock"));
        let listener = UnixListener::bind(&sock).map_err(|e| Error::io(&sock, e))?;
        let _unlink = Unlink(&sock);

        let mut src = self.root.as_os_str().to_owned();
        if !src.as_bytes().ends_with(b"/") {
            src.push("/");
        }
        let mut rsh = OsString::from("--rsh=");
        rsh.push(&self.helper);
        let mut cmd = tokio::process::Command::new(&self.rsync);
        cmd.args(["-aHAX", "--numeric-ids", "--delete", "--stats", "--no-h"])
            .arg(rsh)
            .arg("--")
            .arg(src)
            .arg(format!("{REMOTE_HOST}:."))
            .env(SOCKET_ENV, &sock)
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| Error::io(&self.rsync, e))?;
        let out = tokio::spawn(read_tail(child.stdout.take(), STDOUT_TAIL));
        let err = tokio::spawn(read_tail(child.stderr.take(), STDERR_TAIL));

        // rsync starts the helper, which connects back; rsync failing
        // first (a bad source path) ends the pass with its message and the
        // link untouched.
        let conn = tokio::select! {
            c = tokio::time::timeout(CONNECT_TIMEOUT, listener.accept()) => c,
            st = child.wait() => {
                let st = st.map_err(|e| Error::io(&self.rsync, e))?;
                let stderr = err.await.unwrap_or_default();
                return Err(rsync_failed(&st, &stderr, None));
            }
        };
        let (conn, _) = conn
            .map_err(|_| Error::Helper("rsync's remote shell did not connect in time".into()))?
            .map_err(|e| Error::io(&sock, e))?;
        let uid = conn.peer_cred().map_err(|e| Error::io(&sock, e))?.uid();
        if uid != nix::unistd::Uid::effective().as_raw() {
            return Err(Error::Helper(format!(
                "a process of uid {uid} connected to the helper socket"
            )));
        }
        let (mut rd, wr) = conn.into_split();
        let argv = tokio::time::timeout(Duration::from_secs(10), read_hello(&mut rd))
            .await
            .map_err(|_| Error::Helper("the helper sent no command".into()))??;
        let argv = match argv.split_first() {
            Some((host, rest)) if host.as_slice() == REMOTE_HOST.as_bytes() => rest.to_vec(),
            _ => {
                return Err(Error::Helper(format!(
                    "unexpected remote-shell arguments {:?}",
                    lossy(&argv)
                )));
            }
        };
        debug!(argv = ?lossy(&argv), "rsync's remote command");

        self.on_link = true;
        let link = &mut self.link;
        link.writer
            .send_data(&Msg::RsyncCommand { last, argv }.to_vec())
            .await?;
        match recv_msg(link).await? {
            Msg::RsyncAccepted => {}
            other => return Err(other.unexpected("RsyncAccepted")),
        }
        relay(link, rd, wr).await?;
        let (code, remote_err) = match recv_msg(link).await? {
            Msg::RsyncExit { code, stderr } => (code, stderr),
            other => return Err(other.unexpected("RsyncExit")),
        };
        let st = child.wait().await.map_err(|e| Error::io(&self.rsync, e))?;
        let stdout = out.await.unwrap_or_default();
        let stderr = err.await.unwrap_or_default();
        let ok = st.code() == Some(0) || (!last && st.code() == Some(VANISHED));
        if !ok {
            return Err(rsync_failed(&st, &stderr, Some((code, &remote_err))));
        }
        if st.code() == Some(VANISHED) {
            debug!("files vanished during the pass; the next pass catches up");
        }
        parse_stats(&String::from_utf8_lossy(&stdout))
    }
}

impl FsDriver for RsyncSource {
    fn name(&self) -> &'static str {
        "rsync"
    }

    fn pass(&mut self, which: Pass) -> impl Future<Output = Result<SyncStats>> + Send {
        self.gated_pass(which)
    }
}

/// Removes a socket file when dropped.
struct Unlink<'a>(&'a Path);

impl Drop for Unlink<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// How the target runs rsync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RsyncTarget {
    /// The `rsync` binary.
    pub rsync: PathBuf,
}

impl Default for RsyncTarget {
    /// The `rsync` on `PATH`.
    fn default() -> Self {
        Self {
            rsync: find_rsync(),
        }
    }
}

/// Serves the rsync driver's passes into the tree at `root`: for each,
/// validates the remote command ([`check_remote_command`]), runs it with
/// its stdin and stdout on the link, and reports its exit. Returns after
/// the source's final pass with the time all runs took (rsync's counts are
/// the source's to parse), or on the first error (reported to the source
/// first when the link still works). Meant to run as one task of a
/// service, with the session's `FS` channel.
pub async fn serve_rsync(link: Link, root: &Path, target: &RsyncTarget) -> Result<SyncStats> {
    serve_passes("rsync", link, root, Server { root, target }).await
}

/// The target's side of the rsync driver's passes.
struct Server<'a> {
    root: &'a Path,
    target: &'a RsyncTarget,
}

impl ServePass for Server<'_> {
    fn serve_pass(
        &mut self,
        link: &mut Link,
        number: u32,
    ) -> impl Future<Output = Result<(SyncStats, bool)>> + Send {
        serve_one(link, self.root, self.target, number)
    }
}

/// One rsync run on the target, pass `number`. What rsync wrote is made
/// durable by syncing the file system: the first pass before it is
/// answered (it carries the bulk, long before any freeze), the last one
/// after (its copy must be durable before the commit lets the workload run,
/// which waits for this; the images and the restore go on meanwhile).
async fn serve_one(
    link: &mut Link,
    root: &Path,
    target: &RsyncTarget,
    number: u32,
) -> Result<(SyncStats, bool)> {
    let (last, argv) = match recv_msg(link).await? {
        Msg::RsyncCommand { last, argv } => (last, argv),
        other => return Err(other.unexpected("RsyncCommand")),
    };
    let started = Instant::now();
    let args = check_remote_command(&argv, root)?;
    debug!(args = ?args, root = %root.display(), "running the remote rsync");
    let mut child = tokio::process::Command::new(&target.rsync)
        .args(&args)
        .current_dir(root)
        .env_clear()
        .env("PATH", SAFE_PATH)
        .env("LC_ALL", "C")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::io(&target.rsync, e))?;
    let err = tokio::spawn(read_tail(child.stderr.take(), STDERR_TAIL));
    let stdin = child.stdin.take().expect("piped");
    let stdout = child.stdout.take().expect("piped");
    link.writer.send_data(&Msg::RsyncAccepted.to_vec()).await?;
    relay(link, stdout, stdin).await?;
    let st = child
        .wait()
        .await
        .map_err(|e| Error::io(&target.rsync, e))?;
    let stderr = err.await.unwrap_or_default();
    let code = st
        .code()
        .or_else(|| std::os::unix::process::ExitStatusExt::signal(&st).map(|s| 128 + s))
        .unwrap_or(-1);
    if code != 0 {
        debug!(code, stderr = %String::from_utf8_lossy(&stderr), "the remote rsync failed");
    } else if number == 0 && !last {
        sync_tree(root).await?;
    }
    link.writer
        .send_data(&Msg::RsyncExit { code, stderr }.to_vec())
        .await?;
    if code == 0 && last {
        sync_tree(root).await?;
    }
    let stats = SyncStats {
        duration: started.elapsed(),
        ..SyncStats::default()
    };
    Ok((stats, last))
}

/// Receives a control message, which has a `DATA` frame of its own.
async fn recv_msg(link: &mut Link) -> Result<Msg> {
    match link.reader.recv_data().await? {
        Some(frame) => decode_frame(&frame),
        None => Err(Error::Protocol(
            "a stream end where a message was due".into(),
        )),
    }
}

/// Carries rsync's bytes: `local` to the link until it ends (then
/// `StreamEnd`), the link to `sink` until the peer's `StreamEnd` (then the
/// sink is closed). A local side that breaks is treated as ended, and the
/// link is still read to its `StreamEnd`, so both ends stay in step for
/// the `RsyncExit` that follows.
async fn relay<R, W>(link: &mut Link, local: R, sink: W) -> Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let opts = RelayOptions {
        lenient_local: true,
        ..RelayOptions::default()
    };
    relay_parts(&mut link.reader, &mut link.writer, local, sink, opts).await?;
    Ok(())
}

/// Reads a stream to its end, keeping the last `cap` bytes.
async fn read_tail<R: AsyncRead + Unpin>(r: Option<R>, cap: usize) -> Vec<u8> {
    let Some(mut r) = r else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                out.extend_from_slice(&buf[..n]);
                if out.len() > 2 * cap {
                    out.drain(..out.len() - cap);
                }
            }
        }
    }
    if out.len() > cap {
        out.drain(..out.len() - cap);
    }
    out
}

/// Reads the helper's greeting: magic, then its arguments.
async fn read_hello<R: AsyncRead + Unpin>(r: &mut R) -> Result<Vec<Vec<u8>>> {
    let bad = |what: String| Error::Helper(what);
    let io = |e: io::Error| Error::Helper(format!("reading its arguments: {e}"));
    let mut magic = [0u8; 8];
    r.read_exact(&mut magic).await.map_err(io)?;
    if &magic != HELLO {
        return Err(bad("a peer that is not phaul-rsync-rsh".into()));
    }
    let n = r.read_u32_le().await.map_err(io)? as usize;
    if n > MAX_ARGS + 1 {
        return Err(bad(format!("{n} arguments")));
    }
    let mut argv = Vec::with_capacity(n);
    for _ in 0..n {
        let len = r.read_u32_le().await.map_err(io)? as usize;
        if len > MAX_ARG {
            return Err(bad(format!("an argument of {len} bytes")));
        }
        let mut a = vec![0u8; len];
        r.read_exact(&mut a).await.map_err(io)?;
        argv.push(a);
    }
    Ok(argv)
}

fn lossy(argv: &[Vec<u8>]) -> Vec<String> {
    argv.iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

fn status_text(st: &ExitStatus) -> String {
    match (st.code(), std::os::unix::process::ExitStatusExt::signal(st)) {
        (Some(c), _) => format!("exit status {c}"),
        (None, Some(s)) => format!("signal {s}"),
        _ => "an unknown status".into(),
    }
}

fn rsync_failed(st: &ExitStatus, stderr: &[u8], remote: Option<(i32, &[u8])>) -> Error {
    let mut text = String::from_utf8_lossy(stderr).trim().to_string();
    if let Some((code, rerr)) = remote {
        let rerr = String::from_utf8_lossy(rerr);
        if code != 0 || !rerr.trim().is_empty() {
            text.push_str(&format!(" [target rsync: exit {code}: {}]", rerr.trim()));
        }
    }
    Error::Rsync {
        status: status_text(st),
        stderr: text,
    }
}

/// The first `rsync` on `PATH`, else `/usr/bin/rsync`.
fn find_rsync() -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("rsync"))
                .find(|c| c.is_file())
        })
        .unwrap_or_else(|| PathBuf::from("/usr/bin/rsync"))
}

/// Checks a remote command (the words rsync gave its remote shell, the
/// host name removed) against what the target runs — `rsync --server`,
/// known options, `.`, a destination inside `root` (see the module) — and
/// returns the arguments to run `rsync` with (everything after the
/// program name).
pub fn check_remote_command(argv: &[Vec<u8>], root: &Path) -> Result<Vec<OsString>> {
    let refuse = |reason: String| Error::RsyncCommand {
        argv: lossy(argv),
        reason,
    };
    if argv.len() < 5 {
        return Err(refuse(
            "too short for `rsync --server OPTIONS . DEST`".into(),
        ));
    }
    if argv.len() > MAX_ARGS {
        return Err(refuse(format!("more than {MAX_ARGS} words")));
    }
    if argv[0] != b"rsync" {
        return Err(refuse("the program is not rsync".into()));
    }
    if argv[1] != b"--server" {
        return Err(refuse("not an rsync server command (--server)".into()));
    }
    let n = argv.len();
    for opt in &argv[2..n - 2] {
        let opt =
            std::str::from_utf8(opt).map_err(|_| refuse("an option that is not UTF-8".into()))?;
        check_option(opt).map_err(|why| refuse(format!("option {opt:?}: {why}")))?;
    }
    if argv[n - 2] != b"." {
        return Err(refuse("the word before the destination is not `.`".into()));
    }
    check_destination(&argv[n - 1], root).map_err(|why| refuse(format!("destination: {why}")))?;
    Ok(argv[1..]
        .iter()
        .map(|a| OsString::from_vec(a.clone()))
        .collect())
}

fn check_option(opt: &str) -> std::result::Result<(), String> {
    if let Some(long) = opt.strip_prefix("--") {
        if long == "sender" {
            return Err("the target never sends files".into());
        }
        if LONG_OPTIONS.contains(&opt) {
            return Ok(());
        }
        return Err("not an accepted long option".into());
    }
    let Some(bundle) = opt.strip_prefix('-') else {
        return Err("not an option".into());
    };
    if bundle.is_empty() {
        return Err("empty".into());
    }
    let (flags, caps) = match bundle.find('e') {
        Some(i) => (&bundle[..i], &bundle[i + 1..]),
        None => (bundle, ""),
    };
    for c in flags.chars() {
        match c {
            's' => return Err("secluded args (-s) would hide the real options".into()),
            'K' => return Err("keep-dirlinks (-K) follows symlinks in the target tree".into()),
            c if SHORT_OPTIONS.contains(c) => {}
            c => return Err(format!("flag {c:?} is not accepted")),
        }
    }
    if !caps.chars().all(|c| c.is_ascii_alphabetic() || c == '.') {
        return Err("a capability string with other than letters and dots".into());
    }
    Ok(())
}

/// The destination must name the root or a directory under it, reached
/// without symlinks; its last component may not exist yet (rsync makes
/// it).
fn check_destination(dest: &[u8], root: &Path) -> std::result::Result<(), String> {
    let mut d = dest;
    while let Some(rest) = d.strip_suffix(b"/") {
        d = rest;
    }
    while let Some(rest) = d.strip_prefix(b"./") {
        d = rest;
    }
    if d.is_empty() && dest.starts_with(b"/") {
        return Err("absolute".into());
    }
    if d == b"." || d.is_empty() {
        return Ok(());
    }
    let rel = RelPath::parse(d).map_err(|e| describe(&e))?;
    let dirs = Dirs::open(root).map_err(|e| describe(&e))?;
    match dirs.open_dir(&rel) {
        Ok(_) => Ok(()),
        Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
            // It may be new, but then its parent must be a real directory.
            let parent = rel.parent().unwrap_or_default();
            dirs.open_dir(&parent).map(drop).map_err(|e| describe(&e))
        }
        Err(e) => Err(describe(&e)),
    }
}

/// Parses the counts out of rsync's `--stats` output (run with `--no-h`
/// and `LC_ALL=C`; thousands separators are tolerated anyway).
pub fn parse_stats(out: &str) -> Result<SyncStats> {
    let field = |name: &str| -> Result<u64> {
        out.lines()
            .find_map(|l| l.trim().strip_prefix(name)?.strip_prefix(':'))
            .and_then(|rest| {
                let digits: String = rest
                    .trim_start()
                    .chars()
                    .take_while(|c| c.is_ascii_digit() || *c == ',')
                    .filter(|c| *c != ',')
                    .collect();
                digits.parse().ok()
            })
            .ok_or_else(|| Error::Protocol(format!("rsync's --stats output has no {name:?} count")))
    };
    Ok(SyncStats {
        files: field("Number of regular files transferred")?,
        bytes: field("Total transferred file size")?,
        deleted: field("Number of deleted files")?,
        scanned: field("Number of files")?,
        duration: Duration::ZERO,
    })
}

// --- the remote-shell helper ---------------------------------------------

/// The body of `phaul-rsync-rsh`: connects to the socket named by
/// [`SOCKET_ENV`], sends its own arguments (the host name and the remote
/// command rsync wants run), then copies stdin to the socket and the
/// socket to stdout until the far side ends. Exits 255 (rsync's code for a
/// failed remote shell) with a message on stderr when it cannot.
pub fn rsh_main() -> ExitCode {
    match run_rsh() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // stderr is rsync's, which shows it to the user: the only
            // place a remote shell can report to.
            #[allow(clippy::print_stderr)]
            {
                eprintln!("{HELPER_NAME}: {e}");
            }
            ExitCode::from(255)
        }
    }
}

/// For a program that serves as its own remote-shell helper (its path
/// passed to [`RsyncSource::new`]): call first thing in `main`. When the
/// process was started by rsync as the remote shell ([`SOCKET_ENV`] is
/// set), runs the helper and exits; otherwise returns at once.
pub fn run_as_rsh_if_called() {
    if std::env::var_os(SOCKET_ENV).is_some() {
        let code = match run_rsh() {
            Ok(()) => 0,
            Err(e) => {
                #[allow(clippy::print_stderr)]
                {
                    eprintln!("{HELPER_NAME}: {e}");
                }
                255
            }
        };
        std::process::exit(code);
    }
}

fn run_rsh() -> io::Result<()> {
    let sock = std::env::var_os(SOCKET_ENV)
        .ok_or_else(|| io::Error::other(format!("{SOCKET_ENV} is not set")))?;
    let args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.len() > MAX_ARGS + 1 || args.iter().any(|a| a.len() > MAX_ARG) {
        return Err(io::Error::other("too many or too long arguments"));
    }
    let mut s = std::os::unix::net::UnixStream::connect(Path::new(&sock))?;
    let mut hello = HELLO.to_vec();
    hello.extend_from_slice(&(args.len() as u32).to_le_bytes());
    for a in &args {
        let b = OsStr::as_bytes(a);
        hello.extend_from_slice(&(b.len() as u32).to_le_bytes());
        hello.extend_from_slice(b);
    }
    s.write_all(&hello)?;
    // Plain files on descriptors 0 and 1: std's stdout is line-buffered,
    // wrong for a binary stream.
    let mut stdin = std::fs::File::from(io::stdin().as_fd().try_clone_to_owned()?);
    let mut stdout = std::fs::File::from(io::stdout().as_fd().try_clone_to_owned()?);
    let mut up = s.try_clone()?;
    std::thread::spawn(move || {
        let _ = io::copy(&mut stdin, &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    // The far side's end is the end: rsync has nothing more to read, and
    // the copy of stdin (blocked or not) ends with the process.
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            return Ok(());
        }
        stdout.write_all(&buf[..n])?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<Vec<u8>> {
        s.split(' ').map(|w| w.as_bytes().to_vec()).collect()
    }

    #[test]
    fn rsyncs_own_commands_pass() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        for cmd in [
            "rsync --server -lHogDtpAXre.iLsfxCIvu --delete --stats --numeric-ids . .",
            "rsync --server -lHogDtpAXre.iLsfxCIvu --delete --numeric-ids . ./",
            "rsync --server -logDtpre.iLsfxCIvu . sub/",
            "rsync --server -logDtpre.iLsfxCIvu . sub/new",
        ] {
            let args = check_remote_command(&words(cmd), root.path()).unwrap();
            assert_eq!(args[0], "--server");
        }
    }

    #[test]
    fn other_commands_are_refused() {
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("sub")).unwrap();
        std::os::unix::fs::symlink("/etc", root.path().join("esc")).unwrap();
        for (cmd, why) in [
            ("sh -c id . .", "not rsync"),
            ("/usr/bin/rsync --server -r . .", "not rsync"),
            ("rsync --daemon -r . .", "--server"),
            ("rsync --server --sender -r . .", "never sends"),
            ("rsync --server -slHogDtpAXre.iLsfxCIvu .", "too short"),
            ("rsync --server -slHogDtpAXre.iLsfxCIvu . .", "secluded"),
            ("rsync --server -Kre.iLsfxCIvu . .", "keep-dirlinks"),
            ("rsync --server --log-file=/etc/x -r . .", "long option"),
            ("rsync --server -r x .", "not `.`"),
            ("rsync --server -r . /etc", "absolute"),
            ("rsync --server -r . ../../etc", "directory reference"),
            ("rsync --server -r . sub/../..", "directory reference"),
            ("rsync --server -r . esc", "symlink"),
            ("rsync --server -r . esc/x", "symlink"),
            ("rsync --server -r . nope/x", "No such file"),
        ] {
            match check_remote_command(&words(cmd), root.path()) {
                Err(Error::RsyncCommand { reason, .. }) => {
                    assert!(reason.contains(why), "{cmd}: {reason}")
                }
                other => panic!("{cmd}: {other:?}"),
            }
        }
    }

    #[test]
    fn stats_are_parsed() {
        let out = "\nNumber of files: 4 (reg: 2, dir: 2)\nNumber of created files: 3 (reg: 2, dir: 1)\n\
                   Number of deleted files: 1 (reg: 1)\nNumber of regular files transferred: 2\n\
                   Total file size: 100,003 bytes\nTotal transferred file size: 100,003 bytes\n\
                   Literal data: 100,003 bytes\n";
        let s = parse_stats(out).unwrap();
        assert_eq!((s.files, s.bytes, s.deleted, s.scanned), (2, 100_003, 1, 4));
        assert!(parse_stats("sent 5 bytes").is_err());
    }
}
