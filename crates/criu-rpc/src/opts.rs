//! [`Opts`]: the options of one CRIU request, as a builder.
//!
//! CRIU takes directories as file descriptors that it opens through
//! `/proc/<client>/fd/<n>`, so `Opts` stores paths and opens them only when
//! the request is sent, keeping the fds open until CRIU has answered. Options
//! that name a descriptor in CRIU's *own* fd table (`ps.fd`, `inherit_fd`)
//! only work on a `criu swrk` connection whose fds were passed at spawn
//! ([`crate::Criu::connect_passing`]); they are checked before sending, since
//! CRIU answers a bad one with a bare `EBADRQC`.

use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::proto::{
    CgroupRoot, CriuCgMode, CriuNetworkLockMethod, CriuOpts, CriuPageServerInfo, CriuPreDumpMode,
    CriuVethPair, ExtMountMap, InheritFd, JoinNamespace,
};

/// How CRIU handles cgroups (`--manage-cgroups=MODE`).
pub type CgroupMode = CriuCgMode;
/// How CRIU locks the network of a dumped tree (`--network-lock`).
pub type NetworkLock = CriuNetworkLockMethod;
/// How pre-dumps read memory (`--pre-dump-mode`).
pub type PreDumpMode = CriuPreDumpMode;

/// The log file CRIU writes when none is named.
pub const DEFAULT_LOG_FILE: &str = "criu.log";

/// Options of one request. Every setter consumes and returns the builder.
///
/// ```
/// use criu_rpc::Opts;
/// let opts = Opts::new()
///     .images_dir("/tmp/img")
///     .pid(4242)
///     .shell_job(true)
///     .log_level(4)
///     .log_file("dump.log");
/// # let _ = opts;
/// ```
#[derive(Debug, Default)]
pub struct Opts {
    raw: CriuOpts,
    images_dir: Option<PathBuf>,
    work_dir: Option<PathBuf>,
    images_fd: Option<OwnedFd>,
    work_fd: Option<OwnedFd>,
    fds: Vec<OwnedFd>,
}

/// Options ready to send: the raw message and the fds it refers to, which
/// must stay open until CRIU answers.
#[derive(Debug)]
pub(crate) struct Prepared {
    pub raw: CriuOpts,
    pub _fds: Vec<OwnedFd>,
    /// Where CRIU writes this request's log, for error excerpts.
    pub log_path: Option<PathBuf>,
}

macro_rules! flags {
    ($($(#[$doc:meta])* $name:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, on: bool) -> Self {
                self.raw.$name = Some(on);
                self
            }
        )*
    };
}

macro_rules! lists {
    ($($(#[$doc:meta])* $name:ident => $field:ident;)*) => {
        $(
            $(#[$doc])*
            pub fn $name(mut self, value: impl Into<String>) -> Self {
                self.raw.$field.push(value.into());
                self
            }
        )*
    };
}

impl Opts {
    /// Empty options: CRIU's defaults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The images directory (`-D`). Required by every request that reads or
    /// writes images; CRIU also logs there unless a work dir is set.
    pub fn images_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.images_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The images directory as an open directory fd (CRIU opens it through
    /// `/proc/<this process>/fd/<n>`). Takes precedence over a path.
    pub fn images_dir_fd(mut self, dir: OwnedFd) -> Self {
        self.images_fd = Some(dir);
        self
    }

    /// The work directory as an open directory fd.
    pub fn work_dir_fd(mut self, dir: OwnedFd) -> Self {
        self.work_fd = Some(dir);
        self
    }

    /// The work directory (`-W`): logs, `stats-*` and `lazy-pages.socket`.
    pub fn work_dir(mut self, dir: impl AsRef<Path>) -> Self {
        self.work_dir = Some(dir.as_ref().to_path_buf());
        self
    }

    /// The root of the tree to dump (`-t`).
    pub fn pid(mut self, pid: i32) -> Self {
        self.raw.pid = Some(pid);
        self
    }

    /// The previous iteration's images, relative to the images dir
    /// (`--prev-images-dir`, e.g. `"../1"`): CRIU links it as `parent`.
    pub fn parent_img(mut self, rel: impl Into<String>) -> Self {
        self.raw.parent_img = Some(rel.into());
        self
    }

    /// Log verbosity, 0 (none) to 4 (debug); CRIU's default is 2.
    pub fn log_level(mut self, level: i32) -> Self {
        self.raw.log_level = Some(level);
        self
    }

    /// The log file's name inside the work dir. CRIU refuses names with `/`.
    pub fn log_file(mut self, name: impl Into<String>) -> Self {
        self.raw.log_file = Some(name.into());
        self
    }

    /// Send pages to a page server at `address:port` (dump and pre-dump); for
    /// a page server request, where to listen (port 0 picks one).
    pub fn page_server(mut self, address: impl Into<String>, port: u16) -> Self {
        let ps = self.raw.ps.get_or_insert_with(CriuPageServerInfo::default);
        ps.address = Some(address.into());
        ps.port = Some(i32::from(port));
        self
    }

    /// Only the page server's port: a lazy dump listens on every interface
    /// of its network namespace on this port (CRIU ignores the address).
    pub fn page_server_port(mut self, port: u16) -> Self {
        self.raw
            .ps
            .get_or_insert_with(CriuPageServerInfo::default)
            .port = Some(i32::from(port));
        self
    }

    /// A connected stream socket for page traffic, as its number in CRIU's
    /// fd table (from [`crate::Criu::connect_passing`]; swrk only). This is
    /// how page traffic is routed through a link of our own.
    pub fn page_server_fd(mut self, fd_in_criu: i32) -> Self {
        self.raw
            .ps
            .get_or_insert_with(CriuPageServerInfo::default)
            .fd = Some(fd_in_criu);
        self
    }

    /// Hands CRIU a file `key` as an fd in its own table on restore
    /// (`--inherit-fd fd[N]:key`; swrk only).
    pub fn inherit_fd(mut self, key: impl Into<String>, fd_in_criu: i32) -> Self {
        self.raw.inherit_fd.push(InheritFd {
            key: key.into(),
            fd: fd_in_criu,
        });
        self
    }

    /// A descriptor CRIU writes one `\0` to when a page server is ready
    /// (deprecated by CRIU in favour of the `status-ready` notification).
    pub fn status_fd(mut self, fd: OwnedFd) -> Self {
        self.raw.status_fd = Some(fd.as_raw_fd());
        self.fds.push(fd);
        self
    }

    /// An unbound `AF_UNIX` datagram socket CRIU keeps pidfds in between
    /// pre-dump iterations, to detect PID reuse.
    pub fn pidfd_store_sk(mut self, sk: OwnedFd) -> Self {
        self.raw.pidfd_store_sk = Some(sk.as_raw_fd());
        self.fds.push(sk);
        self
    }

    /// How cgroups are dumped and restored (`--manage-cgroups=MODE`).
    pub fn manage_cgroups_mode(mut self, mode: CgroupMode) -> Self {
        self.raw.manage_cgroups = Some(true);
        self.raw.manage_cgroups_mode = Some(mode as i32);
        self
    }

    /// Use this directory, with every cgroup hierarchy mounted in it, as
    /// the cgroup yard instead of mounting them (`--cgroup-yard`).
    pub fn cgroup_yard(mut self, path: impl Into<String>) -> Self {
        self.raw.cgroup_yard = Some(path.into());
        self
    }

    /// Freeze the tree through this freezer cgroup instead of ptrace
    /// (`--freeze-cgroup`, e.g. `/sys/fs/cgroup/freezer/CTID`).
    pub fn freeze_cgroup(mut self, path: impl Into<String>) -> Self {
        self.raw.freeze_cgroup = Some(path.into());
        self
    }

    /// Where a cgroup controller's tree is rooted (`--cgroup-root`).
    pub fn cgroup_root(mut self, ctrl: Option<String>, path: impl Into<String>) -> Self {
        self.raw.cg_root.push(CgroupRoot {
            ctrl,
            path: path.into(),
        });
        self
    }

    /// The root directory to restore into (`--root`).
    pub fn root(mut self, dir: impl Into<String>) -> Self {
        self.raw.root = Some(dir.into());
        self
    }

    /// The largest deleted-but-open file CRIU copies into images
    /// (`--ghost-limit`, bytes; CRIU's default is 1 MiB).
    pub fn ghost_limit(mut self, bytes: u32) -> Self {
        self.raw.ghost_limit = Some(bytes);
        self
    }

    /// How pre-dumps read memory (splice is CRIU's default).
    pub fn pre_dump_mode(mut self, mode: PreDumpMode) -> Self {
        self.raw.pre_dump_mode = Some(mode as i32);
        self
    }

    /// How the network of a tree with its own netns is locked.
    pub fn network_lock(mut self, method: NetworkLock) -> Self {
        self.raw.network_lock = Some(method as i32);
        self
    }

    /// Seconds CRIU waits to freeze or seize (`--timeout`; default 10).
    pub fn timeout_secs(mut self, secs: u32) -> Self {
        self.raw.timeout = Some(secs);
        self
    }

    /// A veth pair to restore (`--veth-pair IN=OUT`; deprecated by CRIU in
    /// favour of `external`).
    pub fn veth(mut self, if_in: impl Into<String>, if_out: impl Into<String>) -> Self {
        self.raw.veths.push(CriuVethPair {
            if_in: if_in.into(),
            if_out: if_out.into(),
        });
        self
    }

    /// An external bind mount (`--ext-mount-map KEY:VAL`; deprecated by CRIU
    /// in favour of `external`).
    pub fn ext_mount(mut self, key: impl Into<String>, val: impl Into<String>) -> Self {
        self.raw.ext_mnt.push(ExtMountMap {
            key: key.into(),
            val: val.into(),
        });
        self
    }

    /// Join an existing namespace on restore (`--join-ns NS:FILE[,EXTRA]`).
    pub fn join_ns(mut self, ns: impl Into<String>, file: impl Into<String>) -> Self {
        self.raw.join_ns.push(JoinNamespace {
            ns: ns.into(),
            ns_file: file.into(),
            extra_opt: None,
        });
        self
    }

    /// Restore into a new, empty namespace of these `CLONE_*` flags (CRIU
    /// accepts only `CLONE_NEWNET`).
    pub fn empty_ns(mut self, clone_flags: u32) -> Self {
        self.raw.empty_ns = Some(clone_flags);
        self
    }

    /// A CRIU config file applied after (and over) these options.
    pub fn config_file(mut self, path: impl Into<String>) -> Self {
        self.raw.config_file = Some(path.into());
        self
    }

    flags! {
        /// Leave the tree running after a dump (`-R`).
        leave_running;
        /// Leave the tree stopped after a dump (`-s`).
        leave_stopped;
        /// Track memory changes (soft-dirty) so the next dump can skip clean
        /// pages; needs kernel support (`FEATURE_CHECK` `mem_track`).
        track_mem;
        /// Serve memory lazily: a dump becomes a page server for a
        /// lazy-pages daemon, a restore uses userfaultfd.
        lazy_pages;
        /// Dump and restore established TCP connections.
        tcp_established;
        /// Drop in-flight (not yet accepted) TCP connections.
        tcp_skip_in_flight;
        /// Close established TCP connections on restore.
        tcp_close;
        /// Allow external Unix sockets.
        ext_unix_sk;
        /// The tree is a shell job (it has a controlling tty of the shell).
        shell_job;
        /// Dump and restore file locks.
        file_locks;
        /// Let CRIU manage cgroups (the legacy switch; see
        /// [`Opts::manage_cgroups_mode`]).
        manage_cgroups;
        /// Send notifications ("action scripts") over the RPC socket. Needed
        /// to hold `post-dump`.
        notify_scripts;
        /// Receive the master of an orphaned pty with the
        /// `orphan-pts-master` notification.
        orphan_pts_master;
        /// Allow devices that were replaced since they were opened.
        evasive_devices;
        /// Link unlinked-but-open files back for restore.
        link_remap;
        /// Punch holes in parent images for pages written again.
        auto_dedup;
        /// Resolve inotify paths by scanning (needed when inodes change, as
        /// after copying a file system).
        force_irmap;
        /// Restore the tree as a sibling of `criu swrk`, i.e. as a child of
        /// this process (swrk only).
        rst_sibling;
        /// Let CRIU detect and mount external mounts itself.
        auto_ext_mnt;
        /// Allow external shared mounts.
        ext_sharing;
        /// Allow external slave mounts.
        ext_masters;
        /// Skip sysctls the kernel does not have on restore.
        weak_sysctls;
        /// Write CRIU's log to its stderr instead of a file.
        log_to_stderr;
        /// Print dump and restore statistics into the log.
        display_stats;
        /// Use the mount engine of CRIU 3 (`--mntns-compat-mode`).
        mntns_compat_mode;
    }

    lists! {
        /// An external resource (`--external`, e.g. `mnt[/x]:key`,
        /// `net[ino]:key`, `tty[rdev:dev]`).
        external => external;
        /// A file system type CRIU may dump and restore (`--enable-fs`).
        enable_fs => enable_fs;
        /// A mount point to skip (`--skip-mnt`).
        skip_mnt => skip_mnt;
        /// A path to scan for inotify watches (`--irmap-scan-path`).
        irmap_scan_path => irmap_scan_paths;
    }

    /// The raw message, for an option this builder does not name.
    pub fn raw_mut(&mut self) -> &mut CriuOpts {
        &mut self.raw
    }

    /// The raw message as it stands (fd fields are filled in at send time).
    pub fn raw(&self) -> &CriuOpts {
        &self.raw
    }

    /// The images directory set, if any.
    pub fn images_dir_path(&self) -> Option<&Path> {
        self.images_dir.as_deref()
    }

    /// Checks the options against the connection and opens the directories.
    /// `passed` is the range of fd numbers handed to a swrk CRIU, `None` on
    /// a service or pre-connected socket.
    pub(crate) fn prepare(mut self, passed: Option<&std::ops::Range<i32>>) -> Result<Prepared> {
        if let Some(name) = &self.raw.log_file {
            if name.is_empty() || name.contains('/') {
                return Err(Error::InvalidOption {
                    option: "log_file",
                    reason: format!(
                        "{name:?} must be a plain file name (CRIU logs into the work dir)"
                    ),
                });
            }
        }
        let in_criu_fds: Vec<(&'static str, i32)> = self
            .raw
            .ps
            .as_ref()
            .and_then(|ps| ps.fd)
            .map(|fd| ("page_server_fd", fd))
            .into_iter()
            .chain(self.raw.inherit_fd.iter().map(|i| ("inherit_fd", i.fd)))
            .collect();
        match passed {
            None => {
                if let Some((option, _)) = in_criu_fds.first() {
                    return Err(Error::SwrkOnly { option });
                }
                if self.raw.rst_sibling == Some(true) {
                    return Err(Error::SwrkOnly {
                        option: "rst_sibling",
                    });
                }
            }
            Some(range) => {
                for (option, fd) in in_criu_fds {
                    if !range.contains(&fd) {
                        return Err(Error::InvalidOption {
                            option,
                            reason: format!(
                                "fd {fd} was not passed to CRIU (passed: {}..{})",
                                range.start, range.end
                            ),
                        });
                    }
                }
            }
        }

        let images = match (self.images_fd.take(), &self.images_dir) {
            (Some(fd), _) => Some(fd),
            (None, Some(dir)) => Some(open_dir("images_dir", dir)?),
            (None, None) => None,
        };
        let work = match (self.work_fd.take(), &self.work_dir) {
            (Some(fd), _) => Some(fd),
            (None, Some(dir)) => Some(open_dir("work_dir", dir)?),
            (None, None) => None,
        };
        self.raw.images_dir_fd = images.as_ref().map_or(-1, AsRawFd::as_raw_fd);
        self.raw.work_dir_fd = work.as_ref().map(AsRawFd::as_raw_fd);
        self.fds.extend(images);
        self.fds.extend(work);

        let log_dir = self.work_dir.as_ref().or(self.images_dir.as_ref());
        let log_path = if self.raw.log_to_stderr == Some(true) {
            None
        } else {
            log_dir.map(|d| d.join(self.raw.log_file.as_deref().unwrap_or(DEFAULT_LOG_FILE)))
        };
        Ok(Prepared {
            raw: self.raw,
            _fds: self.fds,
            log_path,
        })
    }
}

fn open_dir(what: &'static str, dir: &Path) -> Result<OwnedFd> {
    let f = std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY)
        .open(dir)
        .map_err(|source| Error::OpenDir {
            what,
            path: dir.to_path_buf(),
            source,
        })?;
    Ok(OwnedFd::from(f))
}

use std::os::unix::fs::OpenOptionsExt as _;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_file_with_a_slash_is_refused_before_criu_sees_it() {
        let err = Opts::new()
            .log_file("x/dump.log")
            .prepare(Some(&(3..4)))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOption {
                    option: "log_file",
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn fds_in_criu_need_swrk_and_must_have_been_passed() {
        let err = Opts::new().page_server_fd(4).prepare(None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SwrkOnly {
                    option: "page_server_fd"
                }
            ),
            "{err}"
        );
        let err = Opts::new()
            .inherit_fd("k", 9)
            .prepare(Some(&(4..5)))
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::InvalidOption {
                    option: "inherit_fd",
                    ..
                }
            ),
            "{err}"
        );
        let err = Opts::new().rst_sibling(true).prepare(None).unwrap_err();
        assert!(
            matches!(
                err,
                Error::SwrkOnly {
                    option: "rst_sibling"
                }
            ),
            "{err}"
        );
        assert!(Opts::new().page_server_fd(4).prepare(Some(&(4..5))).is_ok());
    }

    #[test]
    fn directories_are_opened_and_logs_located() {
        let dir = tempfile::tempdir().unwrap();
        let p = Opts::new()
            .images_dir(dir.path())
            .log_file("d.log")
            .prepare(None)
            .unwrap();
        assert!(p.raw.images_dir_fd >= 0);
        assert_eq!(
            p.log_path.as_deref(),
            Some(dir.path().join("d.log").as_path())
        );
        let err = Opts::new()
            .images_dir("/nonexistent/phaul")
            .prepare(None)
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::OpenDir {
                    what: "images_dir",
                    ..
                }
            ),
            "{err}"
        );
        let p = Opts::new().prepare(None).unwrap();
        assert_eq!(p.raw.images_dir_fd, -1);
    }

    #[test]
    fn setters_fill_the_raw_message() {
        let o = Opts::new()
            .pid(7)
            .leave_running(true)
            .page_server("10.0.0.2", 27000)
            .external("mnt[/a]:a")
            .manage_cgroups_mode(CgroupMode::Soft)
            .pre_dump_mode(PreDumpMode::VmRead);
        let r = o.raw();
        assert_eq!(r.pid, Some(7));
        assert_eq!(r.leave_running, Some(true));
        assert_eq!(r.ps.as_ref().unwrap().port, Some(27000));
        assert_eq!(r.external, ["mnt[/a]:a"]);
        assert_eq!(r.manage_cgroups_mode, Some(CgroupMode::Soft as i32));
        assert_eq!(r.pre_dump_mode, Some(2));
    }
}
