//! A restore by a container manager, held until the commit.
//!
//! When phaul's engine runs CRIU itself, it holds the restored tree at
//! CRIU's `post-restore` notification until the source commits; the tree
//! never runs before then. A manager (runc) runs CRIU on its own, and
//! would let the restored container run at once: before the commit, so
//! that a rollback then ends a copy that has already answered its clients,
//! and before an orchestrator could move the container's address over to
//! this host. CRIU also runs action scripts from a configuration file the
//! manager passes on; one at `post-restore` holds the restore the same way.
//!
//! The script is a fixed file (nothing of a request is in it): at
//! `post-restore` it writes the restored root's PID beside itself, says so
//! through a FIFO (`held`), then waits for a line on another (`verdict`).
//! `go` lets CRIU go on: it unlocks the network, takes the sockets out of
//! repair mode and resumes the tree. Anything else, or the end of the
//! FIFO because this process died, makes the script fail, and CRIU then
//! kills the restored tree ("Aborting restore due to post-restore script")
//! before it ever ran.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use crate::tool::Running;
use crate::{Error, Result};

/// The script CRIU runs at each action; only `post-restore` does anything.
const SCRIPT: &str = r#"#!/bin/sh
# Written by phaul: holds a restored tree at CRIU's post-restore until the
# migration's commit (see phaul-htypes' hold module).
[ "$CRTOOLS_SCRIPT_ACTION" = post-restore ] || exit 0
# The script's directory ($0 is its full path) by the shell itself: a
# `dirname` process would cost milliseconds inside the downtime.
d=${0%/*}
echo "$CRTOOLS_INIT_PID" > "$d/pid"
printf 1 > "$d/held"
read verdict < "$d/verdict"
[ "$verdict" = go ]
"#;

/// A hold, prepared in its directory: the script, its FIFOs, and the CRIU
/// configuration that names the script.
#[derive(Debug)]
pub(crate) struct Hold {
    dir: PathBuf,
    held: std::fs::File,
    verdict: std::fs::File,
}

/// A restore that CRIU holds at `post-restore`: the manager's tool still
/// runs, waiting for the verdict.
#[derive(Debug)]
pub(crate) struct Held {
    running: Running,
    verdict: std::fs::File,
    pid: i32,
}

impl Hold {
    /// Makes `dir` (it must not exist) with the script, its FIFOs and
    /// `criu.conf`. Both FIFOs are opened here, read and write, so that
    /// neither side's open blocks, and so that the script's wait ends when
    /// this process does.
    pub(crate) fn prepare(dir: &Path) -> Result<Self> {
        let io = |what: &str, source: std::io::Error| Error::Io {
            what: format!("{what} in {}", dir.display()),
            source,
        };
        let script = dir.join("hold.sh");
        // CRIU's configuration splits on white space and knows quotes and
        // comments: a path with any of those could name another file.
        let plain = |c: char| c.is_ascii_graphic() && !matches!(c, '"' | '\'' | '#' | '\\');
        let Some(path) = script.to_str().filter(|p| p.chars().all(plain)) else {
            return Err(Error::BadParam {
                name: "work directory",
                value: dir.display().to_string(),
                reason: "CRIU's configuration file cannot name a script there \
                         (white space, quotes or a comment sign in the path)"
                    .into(),
            });
        };
        std::fs::create_dir(dir).map_err(|e| io("creating the hold", e))?;
        for fifo in ["held", "verdict"] {
            nix::unistd::mkfifo(&dir.join(fifo), nix::sys::stat::Mode::S_IRWXU)
                .map_err(|e| io("a FIFO", e.into()))?;
        }
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o700)
            .open(&script)
            .map_err(|e| io("the hold script", e))?;
        f.write_all(SCRIPT.as_bytes())
            .map_err(|e| io("the hold script", e))?;
        drop(f);
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("the hold script", e))?;
        std::fs::write(dir.join("criu.conf"), format!("action-script {path}\n"))
            .map_err(|e| io("CRIU's configuration", e))?;
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.join(name))
                .map_err(|e| io("opening a FIFO", e))
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            held: open("held")?,
            verdict: open("verdict")?,
        })
    }

    /// The CRIU configuration file to pass on to the manager.
    pub(crate) fn criu_config(&self) -> PathBuf {
        self.dir.join("criu.conf")
    }

    /// Adds `line` (an option CRIU's configuration knows, e.g.
    /// `lazy-pages`) to that file.
    pub(crate) fn also(&self, line: &str) -> Result<()> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(self.criu_config())
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()))
            .map_err(|source| Error::Io {
                what: format!("adding {line} to CRIU's configuration"),
                source,
            })
    }

    /// Runs `tool args` (the manager's restore), and returns once CRIU
    /// holds the restored tree, or fails when the tool ended first or after
    /// `limits.time`. A tool that restored without ever running the script
    /// is an error that says so: its copy runs uncommitted, and the
    /// caller's abort removes it.
    pub(crate) fn start(
        self,
        tool: &Path,
        args: &[&std::ffi::OsStr],
        limits: crate::tool::Limits<'_>,
    ) -> Result<Held> {
        let t0 = std::time::Instant::now();
        let started = crate::tool::spawn_until(tool, args, self.held, limits, || {});
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1000.0,
            held = started.is_ok(),
            "the manager's restore reached post-restore"
        );
        let running = match started {
            Ok(r) => r,
            Err(e) => {
                // The waiting read holds the FIFO open and never ends by
                // itself: one byte ends it.
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(nix::libc::O_NONBLOCK)
                    .open(self.dir.join("held"))
                    .and_then(|mut f| f.write_all(b"x"));
                return Err(never_held(e));
            }
        };
        let text = std::fs::read_to_string(self.dir.join("pid")).unwrap_or_default();
        let pid = text.trim().parse::<i32>().ok().filter(|p| *p > 0);
        let Some(pid) = pid else {
            let held = Held {
                running,
                verdict: self.verdict,
                pid: 0,
            };
            held.cancel();
            return Err(Error::Io {
                what: "reading the held tree's PID".into(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, text),
            });
        };
        Ok(Held {
            running,
            verdict: self.verdict,
            pid,
        })
    }
}

/// A tool that ended well without the script ever holding its restore has
/// restored a copy that runs uncommitted: the error says why.
fn never_held(e: Error) -> Error {
    match e {
        Error::Command {
            command,
            status,
            stderr,
        } if status == crate::tool::ENDED_UNREADY => Error::Command {
            command,
            status: "it restored without stopping at post-restore: the CRIU it ran did \
                     not read phaul's configuration naming the hold script (runc passes \
                     on the file its org.criu.config annotation names; liblxc's CRIU \
                     reads CRIU_CONFIG_FILE)"
                .into(),
            stderr,
        },
        other => other,
    }
}

impl Held {
    /// The restored root's PID (in this host's PID namespace).
    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The commit: the tree runs; the manager's tool ends (its failure is
    /// an error).
    pub(crate) fn release(mut self) -> Result<()> {
        let t0 = std::time::Instant::now();
        self.say("go")?;
        let r = self.running.wait();
        tracing::debug!(
            ms = t0.elapsed().as_secs_f64() * 1000.0,
            ok = r.is_ok(),
            "held restore released: the manager's tool ended"
        );
        r
    }

    /// A rollback: CRIU kills the tree it holds, and the tool ends.
    pub(crate) fn cancel(mut self) {
        if self.say("stop").is_err() {
            self.running.kill();
        }
        let _ = self.running.wait();
    }

    fn say(&mut self, verdict: &str) -> Result<()> {
        self.verdict
            .write_all(format!("{verdict}\n").as_bytes())
            .map_err(|source| Error::Io {
                what: "telling the held restore its verdict".into(),
                source,
            })
    }
}

/// Where a target kind keeps its held restore between `restore` and the
/// commit or `abort`; shared by clones, and no part of a kind's identity
/// (equal whatever it holds).
#[derive(Debug, Clone, Default)]
pub(crate) struct Slot(std::sync::Arc<std::sync::Mutex<Option<Held>>>);

impl PartialEq for Slot {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Slot {}

impl Slot {
    pub(crate) fn put(&self, h: Held) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(h);
    }

    pub(crate) fn take(&self) -> Option<Held> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in for a manager's restore, named as one: it runs the hold
    /// script as CRIU would at post-restore (root PID 4242), and ends as
    /// the script does.
    fn stand_in(dir: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-c".into(),
            "CRTOOLS_SCRIPT_ACTION=post-restore CRTOOLS_INIT_PID=4242 \"$0\"".into(),
            dir.join("hold.sh").into(),
        ]
    }

    fn start(dir: &Path, args: &[std::ffi::OsString]) -> Result<Held> {
        let args: Vec<&std::ffi::OsStr> = args.iter().map(|a| a.as_os_str()).collect();
        Hold::prepare(dir)?.start(Path::new("/bin/sh"), &args, crate::tool::Limits::default())
    }

    #[test]
    fn the_verdict_lets_the_restore_end_or_fail() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("go");
        let held = start(&dir, &stand_in(&dir)).unwrap();
        assert_eq!(held.pid(), 4242);
        held.release().unwrap();
        let dir = base.path().join("stop");
        let held = start(&dir, &stand_in(&dir)).unwrap();
        // The script fails: CRIU would kill the tree; the tool ends.
        held.cancel();
        let conf = std::fs::read_to_string(dir.join("criu.conf")).unwrap();
        assert_eq!(
            conf,
            format!("action-script {}\n", dir.join("hold.sh").display())
        );
    }

    #[test]
    fn a_restore_that_never_stops_there_says_why() {
        let base = tempfile::tempdir().unwrap();
        let dir = base.path().join("h");
        let e = start(&dir, &["-c".into(), "exit 0".into()]).unwrap_err();
        assert!(
            e.to_string().contains("without stopping at post-restore"),
            "{e}"
        );
        let dir = base.path().join("f");
        let e = start(&dir, &["-c".into(), "echo broken >&2; exit 3".into()]).unwrap_err();
        assert!(
            e.to_string().contains("exit status: 3") && e.to_string().contains("broken"),
            "{e}"
        );
    }

    #[test]
    fn a_path_criu_would_split_is_refused() {
        let base = tempfile::tempdir().unwrap();
        let e = Hold::prepare(&base.path().join("a b")).unwrap_err();
        assert!(e.to_string().contains("CRIU's configuration"), "{e}");
        assert!(!base.path().join("a b").exists());
    }
}
