//! Running the tools of container managers (lxc-*, runc).
//!
//! Every tool runs with a time limit ([`TOOL_TIMEOUT`]) in a process group
//! of its own: a hung `runc checkpoint` or LXC tool (and the CRIU it runs)
//! is killed, whole, instead of holding the migration, and the caller's
//! error path resumes the container. The engine can end it sooner: a hook
//! run inside [`Interrupt::scope`] has its tools killed by
//! [`Interrupt::fire`] (the migration was cancelled, a step timed out, the
//! freeze limit passed).

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Error, Result};

/// Ends, from another thread, the tools a hook is running: the engine's
/// cancel and its time limits reach into blocking htype code this way.
#[derive(Debug, Clone, Default)]
pub struct Interrupt(Arc<Mutex<Vec<i32>>>);

thread_local! {
    static CURRENT: std::cell::RefCell<Option<Interrupt>> = const { std::cell::RefCell::new(None) };
}

impl Interrupt {
    /// Runs `f` (an htype hook) on this thread, its tools within reach of
    /// [`Interrupt::fire`].
    pub fn scope<R>(&self, f: impl FnOnce() -> R) -> R {
        let before = CURRENT.with(|c| c.replace(Some(self.clone())));
        let r = f();
        CURRENT.with(|c| c.replace(before));
        r
    }

    /// Kills, whole, every tool running in its scope now. Tools started
    /// afterwards run: they are the hook's error path (resuming a container).
    pub fn fire(&self) {
        let groups = std::mem::take(&mut *self.0.lock().unwrap_or_else(|p| p.into_inner()));
        for g in groups {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(g),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }

    fn running(group: i32, on: bool) {
        CURRENT.with(|c| {
            if let Some(i) = c.borrow().as_ref() {
                let mut v = i.0.lock().unwrap_or_else(|p| p.into_inner());
                if on {
                    v.push(group);
                } else {
                    v.retain(|g| *g != group);
                }
            }
        });
    }
}

/// The longest one manager tool may run: far longer than a dump or restore
/// of several GiB takes here, short enough that a hung tool ends.
pub const TOOL_TIMEOUT: Duration = Duration::from_secs(300);

/// How one tool runs, beyond its argument vector.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits<'a> {
    /// Its standard input (else `/dev/null`).
    pub input: Option<&'a [u8]>,
    /// A directory put first on the `PATH` it inherits: a manager that runs
    /// `criu` from `PATH` (liblxc does) then runs ours.
    pub first_on_path: Option<&'a Path>,
    /// Variables added to the environment it inherits (and passes on to
    /// the CRIU it runs).
    pub env: &'a [(&'a str, &'a std::ffi::OsStr)],
    /// The longest it may run.
    pub time: Duration,
    /// The most it may print; more is an error (a hostile or broken tool
    /// cannot fill our memory).
    pub output: u64,
}

impl Default for Limits<'_> {
    fn default() -> Self {
        Self {
            input: None,
            first_on_path: None,
            env: &[],
            time: TOOL_TIMEOUT,
            output: 16 << 20,
        }
    }
}

/// Runs `tool` with `args` (never through a shell); its stdout on success,
/// a [`Error::Command`] with the end of its stderr on failure.
pub(crate) fn run(tool: &Path, args: &[&std::ffi::OsStr]) -> Result<String> {
    exec(tool, args, Limits::default()).map(|v| String::from_utf8_lossy(&v).into_owned())
}

/// The one way a manager's tool runs: argv only, its own process group,
/// `limits` enforced. Output goes to temporary files, not pipes:
/// `lxc-start`, `lxc-checkpoint -r` and `runc restore -d` leave processes
/// behind that inherit them, and a pipe would then never reach end-of-file.
pub(crate) fn exec(tool: &Path, args: &[&std::ffi::OsStr], limits: Limits<'_>) -> Result<Vec<u8>> {
    let name = tool.display().to_string();
    let command = || {
        std::iter::once(name.clone())
            .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
            .collect::<Vec<_>>()
            .join(" ")
    };
    let io = |what: &str, source| Error::Io {
        what: format!("{what} for {name}"),
        source,
    };
    let temp = || tempfile::tempfile().map_err(|e| io("a temporary file", e));
    let (mut out, mut err) = (temp()?, temp()?);
    let stdin = match limits.input {
        None => std::process::Stdio::null(),
        Some(bytes) => {
            let mut f = temp()?;
            f.write_all(bytes)
                .and_then(|()| f.seek(SeekFrom::Start(0)).map(drop))
                .map_err(|e| io("writing the input", e))?;
            std::process::Stdio::from(f)
        }
    };
    let mut cmd = Command::new(tool);
    if let Some(dir) = limits.first_on_path {
        cmd.env("PATH", path_with(dir));
    }
    cmd.envs(limits.env.iter().copied());
    let mut child = cmd
        .args(args)
        .process_group(0)
        .stdin(stdin)
        .stdout(out.try_clone().map_err(|e| io("a temporary file", e))?)
        .stderr(err.try_clone().map_err(|e| io("a temporary file", e))?)
        .spawn()
        .map_err(|source| Error::Io {
            what: format!("running {name} (scripts/setup.sh installs it)"),
            source,
        })?;
    let group = i32::try_from(child.id()).unwrap_or(0);
    Interrupt::running(group, true);
    let waited = wait_limited(&mut child, limits.time);
    Interrupt::running(group, false);
    let Some(status) = waited.map_err(|e| io("waiting", e))? else {
        return Err(Error::Command {
            command: command(),
            status: format!(
                "killed after {} s (its time limit)",
                limits.time.as_secs_f64()
            ),
            stderr: String::new(),
        });
    };
    let read = |f: &mut std::fs::File| -> std::io::Result<Vec<u8>> {
        let mut v = Vec::new();
        f.seek(SeekFrom::Start(0))?;
        f.take(limits.output + 1).read_to_end(&mut v)?;
        Ok(v)
    };
    if !status.success() {
        return Err(failure(&command(), &status.to_string(), &mut err));
    }
    let v = read(&mut out).map_err(|e| io("reading the output", e))?;
    if v.len() as u64 > limits.output {
        return Err(Error::Command {
            command: command(),
            status: format!("printed more than {} bytes", limits.output),
            stderr: String::new(),
        });
    }
    Ok(v)
}

/// A manager tool that goes on after it said it is ready (`runc checkpoint
/// --lazy-pages` serves memory until the target has all of it): its own
/// process group, in reach of the [`Interrupt`] of the hook that started it
/// while it starts, and of [`Running::kill`] after.
#[derive(Debug)]
pub struct Running {
    child: std::process::Child,
    command: String,
    err: std::fs::File,
}

impl Running {
    /// Waits for it to end (at most [`TOOL_TIMEOUT`]); its failure, with the
    /// end of its stderr, is an error.
    pub fn wait(mut self) -> Result<()> {
        let status = wait_limited(&mut self.child, TOOL_TIMEOUT).map_err(|source| Error::Io {
            what: format!("waiting for {}", self.command),
            source,
        })?;
        match status {
            Some(s) if s.success() => Ok(()),
            Some(s) => Err(failure(&self.command, &s.to_string(), &mut self.err)),
            None => Err(failure(
                &self.command,
                "killed at its time limit",
                &mut self.err,
            )),
        }
    }

    /// Kills it and what it started.
    pub fn kill(&self) {
        let group = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// A [`Error::Command`] with the last lines of what `err` holds.
fn failure(command: &str, status: &str, err: &mut std::fs::File) -> Error {
    let mut v = Vec::new();
    let _ = err
        .seek(SeekFrom::Start(0))
        .and_then(|_| err.take(1 << 20).read_to_end(&mut v));
    let text = String::from_utf8_lossy(&v);
    let tail: Vec<&str> = text.lines().rev().take(3).collect();
    Error::Command {
        command: command.to_string(),
        status: status.to_string(),
        stderr: tail.into_iter().rev().collect::<Vec<_>>().join(" / "),
    }
}

/// Starts `tool` with `args`, where `STATUS_FD` among them stands for the
/// descriptor on which it reports readiness with one byte (`--status-fd`),
/// and returns once it has (or fails when it ends first, or after
/// `limits.time`; its `PATH` and environment apply too).
pub(crate) fn spawn_ready(
    tool: &Path,
    args: &[&std::ffi::OsStr],
    limits: Limits<'_>,
) -> Result<Running> {
    // Without close-on-exec, so that the tool inherits the write end at the
    // same number.
    let (rd, wr) = nix::unistd::pipe().map_err(|e| Error::Io {
        what: format!("a status pipe for {}", tool.display()),
        source: e.into(),
    })?;
    let fd = std::os::fd::AsRawFd::as_raw_fd(&wr).to_string();
    let args: Vec<&std::ffi::OsStr> = args
        .iter()
        .map(|a| if *a == STATUS_FD { fd.as_ref() } else { *a })
        .collect();
    // Our copy of the write end goes once the tool has its own: the read
    // then ends when the tool does.
    spawn_until(tool, &args, std::fs::File::from(rd), limits, move || {
        drop(wr)
    })
}

/// Starts `tool` with `args` and returns once one byte came on `ready`
/// (or fails when it ends first, or after `limits.time`); `spawned` runs
/// once it has started. What writes that byte is for the caller to
/// arrange. Of `limits`, its `PATH` and environment apply too (not its
/// input or output).
pub(crate) fn spawn_until(
    tool: &Path,
    args: &[&std::ffi::OsStr],
    ready: std::fs::File,
    limits: Limits<'_>,
    spawned: impl FnOnce(),
) -> Result<Running> {
    let command = std::iter::once(tool.display().to_string())
        .chain(args.iter().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ");
    let name = command.clone();
    let io = |what: &str, source: std::io::Error| Error::Io {
        what: format!("{what} for {name}"),
        source,
    };
    let err = tempfile::tempfile().map_err(|e| io("a temporary file", e))?;
    let mut cmd = Command::new(tool);
    if let Some(dir) = limits.first_on_path {
        cmd.env("PATH", path_with(dir));
    }
    let mut child = cmd
        .envs(limits.env.iter().copied())
        .args(args)
        .process_group(0)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(err.try_clone().map_err(|e| io("a temporary file", e))?)
        .spawn()
        .map_err(|e| io("running it (scripts/setup.sh installs it)", e))?;
    spawned();
    let group = i32::try_from(child.id()).unwrap_or(0);
    Interrupt::running(group, true);
    let waited = wait_ready(&mut child, ready, limits.time);
    Interrupt::running(group, false);
    let mut running = Running {
        child,
        command,
        err,
    };
    match waited {
        Ok(true) => Ok(running),
        Ok(false) => {
            let status = match running.child.wait() {
                Ok(s) if s.success() => ENDED_UNREADY.to_string(),
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            Err(failure(&running.command, &status, &mut running.err))
        }
        Err(e) => {
            running.kill();
            let _ = running.child.wait();
            Err(io("waiting for it to get ready", e))
        }
    }
}

/// `dir` first on the `PATH` this process has.
fn path_with(dir: &Path) -> std::ffi::OsString {
    let mut path = std::ffi::OsString::from(dir);
    if let Some(old) = std::env::var_os("PATH") {
        path.push(":");
        path.push(old);
    }
    path
}

/// How [`spawn_until`] says the tool ended well but never got ready: a
/// caller that knows why can say so.
pub(crate) const ENDED_UNREADY: &str = "ended (exit status 0) without getting ready";

/// Stands for the status descriptor's number in [`spawn_ready`]'s `args`
/// (not a number, so it cannot be mistaken for a real argument).
pub(crate) const STATUS_FD: &str = "{status-fd}";

/// Waits for one byte on `status` (ready: true) or for the child to end
/// first (false), at most `limit`.
fn wait_ready(
    child: &mut std::process::Child,
    mut status: std::fs::File,
    limit: Duration,
) -> std::io::Result<bool> {
    let (tx, rx) = std::sync::mpsc::channel();
    // A blocking read in a thread of its own: the child may end without
    // writing, and then the read ends with it.
    std::thread::spawn(move || {
        let mut b = [0u8; 1];
        let _ = tx.send(matches!(status.read(&mut b), Ok(1)));
    });
    let deadline = std::time::Instant::now() + limit;
    loop {
        match rx.recv_timeout(Duration::from_millis(20)) {
            Ok(true) => return Ok(true),
            Ok(false) => return Ok(false),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => return Ok(false),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if child.try_wait()?.is_some() {
            // It may have written just before it ended.
            return Ok(rx.recv_timeout(Duration::from_millis(50)).unwrap_or(false));
        }
        if std::time::Instant::now() > deadline {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "it did not get ready in time",
            ));
        }
    }
}

/// Waits for `child` until `limit`; past it, kills its whole process group
/// (the tool and what it started, CRIU included) and returns `None`. A
/// watchdog thread keeps the time, so a tool that ends is seen at once (no
/// polling: some of these calls are inside a migration's downtime).
fn wait_limited(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<std::process::ExitStatus>> {
    let group = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap_or(0));
    let (done, ended) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        let expired = matches!(
            ended.recv_timeout(limit),
            Err(std::sync::mpsc::RecvTimeoutError::Timeout)
        );
        if expired {
            let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        }
        expired
    });
    let status = child.wait();
    let _ = done.send(());
    let expired = watchdog.join().unwrap_or(false);
    let status = status?;
    Ok((!expired).then_some(status))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hung_tool_and_what_it_started_are_killed_at_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("grandchild");
        // A tool that starts a helper and hangs, as runc does with CRIU.
        let script = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        let t0 = std::time::Instant::now();
        let limits = Limits {
            time: Duration::from_millis(300),
            ..Limits::default()
        };
        let e = exec(
            Path::new("/bin/sh"),
            &["-c".as_ref(), script.as_ref()],
            limits,
        )
        .unwrap_err();
        assert!(t0.elapsed() < Duration::from_secs(5));
        assert!(e.to_string().contains("killed after 0.3 s"), "{e}");
        let helper: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        std::thread::sleep(Duration::from_millis(100));
        let state = std::fs::read_to_string(format!("/proc/{helper}/stat")).unwrap_or_default();
        assert!(
            state.is_empty() || state.contains(") Z "),
            "the helper lives on: {state}"
        );
    }

    #[test]
    fn an_interrupt_kills_the_running_tool_and_spares_the_next() {
        let interrupt = Interrupt::default();
        let fire = interrupt.clone();
        let t0 = std::time::Instant::now();
        let firing = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(300));
            fire.fire();
        });
        let (hung, after) = interrupt.scope(|| {
            let hung = run(Path::new("/bin/sleep"), &["30".as_ref()]);
            // The hook's error path: it runs although the interrupt fired.
            (hung, run(Path::new("/bin/echo"), &["resumed".as_ref()]))
        });
        firing.join().unwrap();
        assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
        let e = hung.unwrap_err();
        assert!(e.to_string().contains("signal: 9"), "{e}");
        assert_eq!(after.unwrap(), "resumed\n");
    }

    #[test]
    fn a_quick_tool_answers_as_before() {
        let out = run(Path::new("/bin/echo"), &["hello".as_ref()]).unwrap();
        assert_eq!(out, "hello\n");
        let e = run(Path::new("/bin/false"), &[]).unwrap_err();
        assert!(e.to_string().contains("/bin/false"), "{e}");
        let small = Limits {
            output: 4,
            input: Some(b"abcdefgh"),
            ..Limits::default()
        };
        let e = exec(Path::new("/bin/cat"), &[], small).unwrap_err();
        assert!(e.to_string().contains("more than 4 bytes"), "{e}");
    }
}
