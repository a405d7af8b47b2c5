//! The `pid` htype: a process tree named by the PID of its root.
//!
//! On the target the tree is restored with the same PIDs. When both "hosts"
//! are one machine (tests, the demo), those PIDs are still taken by the
//! source until it ends, so the tree must live in its own PID namespace
//! (`unshare --pid --fork`): CRIU then recreates the namespace and the PIDs
//! inside it are free.
//!
//! What is refused before CRIU is asked anything: a PID that is not a
//! positive number, PID 1 of the host, this process or one of its
//! ancestors (dumping them would freeze phaul itself), kernel threads,
//! zombies, and processes that do not exist.

use std::collections::BTreeMap;
use std::fs;

use crate::{CriuOptions, Error, Htype, Result};

/// A process tree by its root's PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pid {
    pid: i32,
    shell_job: bool,
}

/// The kernel's PF_KTHREAD flag in `/proc/PID/stat`'s flags field.
const PF_KTHREAD: u64 = 0x0020_0000;

/// Parses a PID as a user or a peer wrote it.
pub fn parse_pid(text: &str) -> Result<i32> {
    let bad = |reason: &str| Error::BadParam {
        name: "pid",
        value: text.to_string(),
        reason: reason.to_string(),
    };
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad("not a positive decimal number"));
    }
    let pid: i32 = text.parse().map_err(|_| bad("too large"))?;
    if pid <= 0 {
        return Err(bad("not a positive decimal number"));
    }
    Ok(pid)
}

/// The fields of `/proc/PID/stat` after the command name.
fn stat_fields(pid: i32) -> Result<Vec<String>> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::NoSuchProcess(pid)
        } else {
            Error::Io {
                what: format!("/proc/{pid}/stat"),
                source: e,
            }
        }
    })?;
    // The command name may hold spaces and parentheses; the fields start
    // after the last ')'.
    let rest = stat
        .rfind(')')
        .map(|i| &stat[i + 1..])
        .ok_or_else(|| Error::Io {
            what: format!("/proc/{pid}/stat"),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no command name"),
        })?;
    Ok(rest.split_whitespace().map(str::to_string).collect())
}

impl Pid {
    /// Validates `text` as the root of a tree to migrate from this host.
    pub fn source(text: &str) -> Result<Self> {
        let pid = parse_pid(text)?;
        let refuse = |reason: &str| {
            Err(Error::Refused {
                pid,
                reason: reason.to_string(),
            })
        };
        if pid == 1 {
            return refuse("it is the host's init");
        }
        let f = stat_fields(pid)?;
        // Fields after the name: [0] state, [1] ppid, ... [4] tty_nr,
        // ... [6] flags.
        let state = f.first().map(String::as_str).unwrap_or("");
        if state == "Z" || state == "X" {
            return refuse("it has exited (zombie)");
        }
        let flags: u64 = f.get(6).and_then(|s| s.parse().ok()).unwrap_or(0);
        if flags & PF_KTHREAD != 0 {
            return refuse("it is a kernel thread");
        }
        let me = i32::try_from(std::process::id()).unwrap_or(0);
        let mut p = me;
        // Walk up from ourselves: dumping an ancestor freezes phaul too.
        for _ in 0..4096 {
            if p == pid {
                return refuse("it is phaul itself or one of its parents");
            }
            if p <= 1 {
                break;
            }
            p = match stat_fields(p) {
                Ok(v) => v.get(1).and_then(|s| s.parse().ok()).unwrap_or(0),
                Err(_) => break,
            };
        }
        let tty: i64 = f.get(4).and_then(|s| s.parse().ok()).unwrap_or(0);
        Ok(Self {
            pid,
            shell_job: tty != 0,
        })
    }

    /// The target side, from the source's parameters.
    pub fn target(params: &BTreeMap<String, String>) -> Result<Self> {
        let text = params.get("pid").ok_or_else(|| Error::BadParam {
            name: "pid",
            value: String::new(),
            reason: "missing".into(),
        })?;
        let pid = parse_pid(text)?;
        let shell_job = params.get("shell_job").is_some_and(|v| v == "true");
        Ok(Self { pid, shell_job })
    }
}

impl Htype for Pid {
    fn kind(&self) -> &'static str {
        "pid"
    }

    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("pid".to_string(), self.pid.to_string()),
            ("shell_job".to_string(), self.shell_job.to_string()),
        ])
    }

    fn root_pid(&self) -> Result<i32> {
        Ok(self.pid)
    }

    fn dump_options(&self) -> CriuOptions {
        CriuOptions {
            shell_job: self.shell_job,
            file_locks: true,
            link_remap: true,
            ..Default::default()
        }
    }

    fn restore_options(&self) -> CriuOptions {
        CriuOptions {
            shell_job: self.shell_job,
            file_locks: true,
            link_remap: true,
            ..Default::default()
        }
    }

    fn check(&self) -> Result<()> {
        let f = stat_fields(self.pid)?;
        match f.first().map(String::as_str) {
            Some("Z" | "X") => Err(Error::Refused {
                pid: self.pid,
                reason: "it has exited".into(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn malformed_pids_are_refused() {
        for bad in [
            "",
            "0",
            "-5",
            "12a",
            "1; rm -rf /",
            "$(id)",
            " 5",
            "99999999999",
        ] {
            assert!(
                matches!(Pid::source(bad), Err(Error::BadParam { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn init_kernel_threads_ourselves_and_missing_pids_are_refused() {
        assert!(matches!(
            Pid::source("1"),
            Err(Error::Refused { pid: 1, .. })
        ));
        assert!(matches!(
            Pid::source("2"),
            Err(Error::Refused { pid: 2, .. })
        ));
        let me = std::process::id().to_string();
        assert!(matches!(Pid::source(&me), Err(Error::Refused { .. })));
        let parent = std::os::unix::process::parent_id().to_string();
        assert!(matches!(Pid::source(&parent), Err(Error::Refused { .. })));
        let missing = (400_000..4_000_000)
            .find(|p| !std::path::Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        assert!(matches!(
            Pid::source(&missing.to_string()),
            Err(Error::NoSuchProcess(_))
        ));
    }

    #[test]
    fn a_child_process_is_accepted_and_round_trips_to_the_target() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let src = Pid::source(&child.id().to_string()).unwrap();
        assert_eq!(src.root_pid().unwrap(), child.id() as i32);
        let tgt = Pid::target(&src.params()).unwrap();
        assert_eq!(tgt, src);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(Pid::target(&BTreeMap::new()).is_err());
    }

    #[test]
    fn the_registry_refuses_unknown_kinds() {
        assert!(matches!(
            crate::registry::source("docker", "1"),
            Err(Error::UnknownKind(_))
        ));
        assert!(crate::registry::source("pid", "x").is_err());
    }
}
