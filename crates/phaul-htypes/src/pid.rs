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
//!
//! [`PidOptions`] are the CRIU options a service needs, chosen by the user.
//! The defaults suit a server with clients attached: established TCP
//! connections move with it, connections still in the accept queue are
//! skipped (their clients retry), file locks move, and a controlling
//! terminal makes it a shell job. The options travel to the target with
//! the kind's parameters, since the restore must agree with the dump.

use std::collections::BTreeMap;
use std::fs;

use crate::{CriuOptions, Error, Htype, Result, SourceHooks, TargetHooks};

/// A process tree by its root's PID.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pid {
    pid: i32,
    shell_job: bool,
    opts: PidOptions,
}

/// What CRIU does with an established TCP connection of the tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TcpConnections {
    /// It moves, open, with its sequence numbers and queues
    /// (`--tcp-established`); the peer notices nothing.
    #[default]
    Migrate,
    /// It is restored closed (`--tcp-close`): the peer sees a reset.
    Close,
}

/// The CRIU options of a `pid` tree that a user chooses (see the module
/// docs for why the defaults are what they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PidOptions {
    /// Established TCP connections.
    pub tcp: TcpConnections,
    /// Skip connections not yet accepted (`--skip-in-flight`); without it
    /// CRIU refuses a tree whose listening socket has any.
    pub skip_in_flight: bool,
    /// Allow unix sockets whose peer is outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Move file locks (`--file-locks`).
    pub file_locks: bool,
    /// Force the shell-job mode on or off; `None`: on when the root has a
    /// controlling terminal.
    pub shell_job: Option<bool>,
    /// Mount points bind-mounted into the tree's mount namespace from
    /// outside; the same path must exist on the target (`--external
    /// mnt[PATH]:PATH`).
    pub ext_mounts: Vec<String>,
    /// Network devices of the tree's network namespace whose peer is
    /// outside it: (name inside, name outside with an optional
    /// `@bridge`), recreated on restore (`--external veth[IN]:OUT`). The
    /// host end joins its bridge only at the commit, so a copy restored on
    /// the target cannot take the tree's MAC and address on the network
    /// while the source's still runs (a failed restore would otherwise let
    /// the switches learn it there, and the tree's clients would be reset).
    pub veths: Vec<(String, String)>,
    /// The largest deleted-but-open file copied into the images, in bytes
    /// (`--ghost-limit`; CRIU's default is 1 MiB).
    pub ghost_limit: Option<u32>,
    /// Resolve inotify watches by path (`--force-irmap`), looking below
    /// these paths (`--irmap-scan-path`).
    pub force_irmap: bool,
    /// See `force_irmap`.
    pub irmap_scan_paths: Vec<String>,
    /// Restore mounts the pre-4.0 way (`--mntns-compat-mode`).
    pub mntns_compat_mode: bool,
}

impl Default for PidOptions {
    fn default() -> Self {
        Self {
            tcp: TcpConnections::Migrate,
            skip_in_flight: true,
            ext_unix_sk: false,
            file_locks: true,
            shell_job: None,
            ext_mounts: Vec::new(),
            veths: Vec::new(),
            ghost_limit: None,
            force_irmap: false,
            irmap_scan_paths: Vec::new(),
            mntns_compat_mode: false,
        }
    }
}

impl PidOptions {
    /// Checks what a user or a peer wrote: mount points are absolute paths
    /// without `:` (CRIU's separator) or control characters, device names
    /// are kernel interface names.
    pub fn validate(&self) -> Result<()> {
        for m in self.ext_mounts.iter().chain(&self.irmap_scan_paths) {
            let ok = m.starts_with('/')
                && !m.contains(':')
                && !m.chars().any(char::is_control)
                && !m.split('/').any(|c| c == "..");
            if !ok {
                return Err(Error::BadParam {
                    name: "ext_mount",
                    value: m.clone(),
                    reason: "an absolute path without ':', '..' or control characters".into(),
                });
            }
        }
        for (inner, outer) in &self.veths {
            let (dev, bridge) = match outer.split_once('@') {
                Some((d, b)) => (d, Some(b)),
                None => (outer.as_str(), None),
            };
            for name in [Some(inner.as_str()), Some(dev), bridge]
                .into_iter()
                .flatten()
            {
                if !is_ifname(name) {
                    return Err(Error::BadParam {
                        name: "veth",
                        value: format!("{inner}={outer}"),
                        reason: "interface names are 1-15 of A-Z a-z 0-9 . _ -".into(),
                    });
                }
            }
        }
        Ok(())
    }

    fn to_params(&self, p: &mut BTreeMap<String, String>) {
        let tcp = match self.tcp {
            TcpConnections::Migrate => "established",
            TcpConnections::Close => "close",
        };
        p.insert("tcp".into(), tcp.into());
        p.insert("skip_in_flight".into(), self.skip_in_flight.to_string());
        p.insert("ext_unix_sk".into(), self.ext_unix_sk.to_string());
        p.insert("file_locks".into(), self.file_locks.to_string());
        if !self.ext_mounts.is_empty() {
            p.insert("ext_mounts".into(), self.ext_mounts.join("\n"));
        }
        if !self.veths.is_empty() {
            let v: Vec<String> = self.veths.iter().map(|(i, o)| format!("{i}={o}")).collect();
            p.insert("veths".into(), v.join("\n"));
        }
        if let Some(g) = self.ghost_limit {
            p.insert("ghost_limit".into(), g.to_string());
        }
        p.insert("force_irmap".into(), self.force_irmap.to_string());
        if !self.irmap_scan_paths.is_empty() {
            p.insert("irmap_scan_paths".into(), self.irmap_scan_paths.join("\n"));
        }
        p.insert(
            "mntns_compat_mode".into(),
            self.mntns_compat_mode.to_string(),
        );
    }

    /// Reads what [`PidOptions::to_params`] wrote; a missing key keeps its
    /// default (a peer of an older version), a malformed one is refused.
    fn from_params(p: &BTreeMap<String, String>) -> Result<Self> {
        let mut o = Self::default();
        let flag = |name: &'static str, default: bool| match p.get(name).map(String::as_str) {
            None => Ok(default),
            Some("true") => Ok(true),
            Some("false") => Ok(false),
            Some(v) => Err(Error::BadParam {
                name,
                value: v.to_string(),
                reason: "true or false".into(),
            }),
        };
        o.tcp = match p.get("tcp").map(String::as_str) {
            None | Some("established") => TcpConnections::Migrate,
            Some("close") => TcpConnections::Close,
            Some(v) => {
                return Err(Error::BadParam {
                    name: "tcp",
                    value: v.to_string(),
                    reason: "established or close".into(),
                });
            }
        };
        o.skip_in_flight = flag("skip_in_flight", o.skip_in_flight)?;
        o.ext_unix_sk = flag("ext_unix_sk", o.ext_unix_sk)?;
        o.file_locks = flag("file_locks", o.file_locks)?;
        if let Some(m) = p.get("ext_mounts") {
            o.ext_mounts = m.split('\n').map(str::to_string).collect();
        }
        o.force_irmap = flag("force_irmap", o.force_irmap)?;
        o.mntns_compat_mode = flag("mntns_compat_mode", o.mntns_compat_mode)?;
        if let Some(m) = p.get("irmap_scan_paths") {
            o.irmap_scan_paths = m.split('\n').map(str::to_string).collect();
        }
        if let Some(g) = p.get("ghost_limit") {
            o.ghost_limit = Some(g.parse().map_err(|_| Error::BadParam {
                name: "ghost_limit",
                value: g.clone(),
                reason: "a number of bytes below 4 GiB".into(),
            })?);
        }
        if let Some(v) = p.get("veths") {
            for pair in v.split('\n') {
                let (i, out) = pair.split_once('=').ok_or_else(|| Error::BadParam {
                    name: "veth",
                    value: pair.to_string(),
                    reason: "IN=OUT[@BRIDGE]".into(),
                })?;
                o.veths.push((i.to_string(), out.to_string()));
            }
        }
        o.validate()?;
        Ok(o)
    }

    fn criu(&self, shell_job: bool, restore: bool) -> CriuOptions {
        let mut external: Vec<String> = self
            .ext_mounts
            .iter()
            .map(|m| format!("mnt[{m}]:{m}"))
            .collect();
        if restore {
            external.extend(self.veths.iter().map(|(i, o)| {
                let dev = o.split_once('@').map_or(o.as_str(), |(d, _)| d);
                format!("veth[{i}]:{dev}")
            }));
        }
        CriuOptions {
            shell_job,
            tcp_established: self.tcp == TcpConnections::Migrate,
            tcp_close: self.tcp == TcpConnections::Close,
            tcp_skip_in_flight: self.skip_in_flight && !restore,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: self.file_locks,
            link_remap: true,
            external,
            ghost_limit: self.ghost_limit,
            force_irmap: self.force_irmap,
            irmap_scan_paths: self.irmap_scan_paths.clone(),
            mntns_compat_mode: self.mntns_compat_mode && restore,
            ..Default::default()
        }
    }
}

/// A kernel network interface name (at most 15 bytes).
fn is_ifname(name: &str) -> bool {
    (1..=15).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
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
    /// The tree rooted at `pid` on this host, for a program that holds the
    /// PID as a number: the same checks as [`Pid::source`].
    pub fn new(pid: i32) -> Result<Self> {
        Self::source(&pid.to_string())
    }

    /// Validates `text` as the root of a tree to migrate from this host,
    /// with the default [`PidOptions`].
    pub fn source(text: &str) -> Result<Self> {
        Self::source_with(text, PidOptions::default())
    }

    /// [`Pid::source`] with the user's options.
    pub fn source_with(text: &str, opts: PidOptions) -> Result<Self> {
        opts.validate()?;
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
            shell_job: opts.shell_job.unwrap_or(tty != 0),
            opts,
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
        let opts = PidOptions::from_params(params)?;
        Ok(Self {
            pid,
            shell_job,
            opts,
        })
    }
}

impl Htype for Pid {
    fn kind(&self) -> &'static str {
        "pid"
    }

    fn params(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::from([
            ("pid".to_string(), self.pid.to_string()),
            ("shell_job".to_string(), self.shell_job.to_string()),
        ]);
        self.opts.to_params(&mut p);
        p
    }
}

impl SourceHooks for Pid {
    fn root_pid(&self) -> Result<i32> {
        Ok(self.pid)
    }

    fn dump_options(&self) -> CriuOptions {
        self.opts.criu(self.shell_job, false)
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

impl TargetHooks for Pid {
    fn before_commit(&self) -> Result<()> {
        for (_, outer) in &self.opts.veths {
            let Some((dev, bridge)) = outer.split_once('@') else {
                continue;
            };
            let args = ["link", "set", dev, "master", bridge, "up"];
            let os: Vec<&std::ffi::OsStr> = args.iter().map(std::ffi::OsStr::new).collect();
            crate::tool::run(std::path::Path::new("ip"), &os)?;
        }
        Ok(())
    }

    fn restore_options(&self) -> CriuOptions {
        self.opts.criu(self.shell_job, true)
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

#[cfg(test)]
mod option_tests {
    use super::*;

    fn opts() -> PidOptions {
        PidOptions {
            tcp: TcpConnections::Close,
            skip_in_flight: false,
            ext_unix_sk: true,
            file_locks: false,
            shell_job: None,
            ext_mounts: vec!["/srv/data".into(), "/etc/app".into()],
            veths: vec![("eth0".into(), "veth9@br0".into())],
            ghost_limit: Some(8 << 20),
            force_irmap: true,
            irmap_scan_paths: vec!["/srv".into()],
            mntns_compat_mode: true,
        }
    }

    #[test]
    fn options_travel_to_the_target_and_both_sides_agree() {
        // Built directly: Pid::source refuses this test's own process.
        let src = Pid {
            pid: 4242,
            shell_job: true,
            opts: opts(),
        };
        let tgt = Pid::target(&src.params()).unwrap();
        assert_eq!(tgt.opts, opts());
        let d = src.dump_options();
        assert!(d.tcp_close && !d.tcp_established && !d.tcp_skip_in_flight);
        assert!(d.ext_unix_sk && !d.file_locks && d.shell_job);
        assert_eq!(
            d.external,
            ["mnt[/srv/data]:/srv/data", "mnt[/etc/app]:/etc/app"]
        );
        let r = tgt.restore_options();
        assert!(r.tcp_close && !r.tcp_established);
        // The bridge is joined at the commit, not by the restore.
        assert_eq!(r.external.last().unwrap(), "veth[eth0]:veth9");
    }

    #[test]
    fn the_defaults_suit_a_server_with_clients() {
        let d = PidOptions::default().criu(false, false);
        assert!(d.tcp_established && d.tcp_skip_in_flight && d.file_locks && !d.ext_unix_sk);
        let r = PidOptions::default().criu(false, true);
        assert!(r.tcp_established && !r.tcp_skip_in_flight);
        // A peer of an older version sent no options: the defaults.
        let old = BTreeMap::from([("pid".to_string(), "42".to_string())]);
        assert_eq!(Pid::target(&old).unwrap().opts, PidOptions::default());
    }

    #[test]
    fn bad_options_are_refused_with_the_value() {
        for m in ["relative/path", "/a:b", "/a/../etc", "/a\nb"] {
            let o = PidOptions {
                ext_mounts: vec![m.into()],
                ..Default::default()
            };
            assert!(
                matches!(
                    o.validate(),
                    Err(Error::BadParam {
                        name: "ext_mount",
                        ..
                    })
                ),
                "{m:?}"
            );
        }
        for (i, out) in [
            ("eth0;rm", "v@br0"),
            ("eth0", "averyveryverylongname"),
            ("eth0", "v@b r"),
        ] {
            let o = PidOptions {
                veths: vec![(i.into(), out.into())],
                ..Default::default()
            };
            assert!(o.validate().is_err(), "{i}={out}");
        }
        let mut p = BTreeMap::from([("pid".to_string(), "42".to_string())]);
        p.insert("tcp".into(), "sometimes".into());
        assert!(Pid::target(&p).is_err());
        p.insert("tcp".into(), "close".into());
        p.insert("file_locks".into(), "yes".into());
        assert!(Pid::target(&p).is_err());
    }
}
