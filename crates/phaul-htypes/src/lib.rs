//! What phaul migrates ("htypes", after P.Haul's name for them).
//!
//! An htype says how to find the process tree of one kind of thing, which
//! CRIU options its dump and restore need, and how to validate what a
//! request names before anything is touched. What a kind can do is data
//! ([`Caps`]: who dumps it, who restores it, which modes it allows); what it
//! does is two small sets of hooks, one per side ([`SourceHooks`],
//! [`TargetHooks`]). The engine holds htypes as trait objects made by the
//! [`registry`]; every hook but `root_pid` has a default, so a kind
//! overrides only what it needs.
//!
//! Kinds so far: [`pid::Pid`], a process tree by the PID of its root;
//! [`lxc::Lxc`], an LXC container with its root file system; and
//! [`vz::Vz`], a Virtuozzo container (its ve.* settings and core pattern as
//! extra images, its freezer cgroup); and [`runc::Runc`], a runc container
//! with its bundle.
//!
//! # Layout
//! - [`Htype`], [`Caps`], [`SourceHooks`], [`TargetHooks`]: a kind, what it
//!   can do, and its steps on each side; [`CriuOptions`], the CRIU options
//!   it asks for.
//! - [`registry`]: making an htype from its name and parameters.
//! - [`pid`]: the process-tree htype.
//! - [`lxc`]: the LXC container htype.
//! - [`vz`]: the Virtuozzo container htype.
//! - [`runc`]: the runc container htype.
//! - `hold.rs`: a manager's restore held at CRIU's `post-restore` (by an
//!   action script) until the commit.
//! - [`Error`]: the crate's error type.

use std::collections::BTreeMap;
use std::fmt::Debug;

mod cgyard;
mod hold;
pub mod lxc;
pub mod pid;
pub mod registry;
pub mod runc;
mod tool;

pub use tool::{Interrupt, Running};
pub mod vz;

/// Errors of the htypes: what a request names is not acceptable.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No htype of this name.
    #[error("unknown kind {0:?} (known: {known})", known = registry::NAMES.join(", "))]
    UnknownKind(String),

    /// A parameter is missing or malformed.
    #[error("bad {name} {value:?}: {reason}")]
    BadParam {
        /// The parameter.
        name: &'static str,
        /// Its value as given.
        value: String,
        /// Why it is refused.
        reason: String,
    },

    /// The process does not exist.
    #[error("no process with PID {0}")]
    NoSuchProcess(i32),

    /// The process exists but must not be migrated.
    #[error("PID {pid} cannot be migrated: {reason}")]
    Refused {
        /// The PID.
        pid: i32,
        /// Why.
        reason: String,
    },

    /// An external command (lxc-info, lxc-checkpoint, ...) failed.
    #[error("{command} failed ({status}): {stderr}")]
    Command {
        /// The command line, for the message.
        command: String,
        /// How it ended.
        status: String,
        /// The end of what it wrote to stderr.
        stderr: String,
    },

    /// The kind has no such step (the engine's plan asked it of a kind
    /// whose [`Caps`] say it cannot).
    #[error("this kind has no way of {0}")]
    Unsupported(&'static str),

    /// Reading the process's state failed.
    #[error("reading {what}")]
    Io {
        /// What was read.
        what: String,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
}

/// Checks a name a manager knows a thing by (`what`): 1 to `max`
/// characters of `[A-Za-z0-9._-]`, starting with a letter or a digit, so
/// it can never be read as an option, a path or shell syntax.
pub(crate) fn check_name(what: &'static str, name: &str, max: usize) -> Result<()> {
    let bad = |reason: String| Error::BadParam {
        name: what,
        value: name.to_string(),
        reason,
    };
    if name.is_empty() || name.len() > max {
        return Err(bad(format!("must be 1 to {max} characters")));
    }
    if !name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
    {
        return Err(bad("must start with a letter or a digit".into()));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad("may hold only letters, digits, '.', '_' and '-'".into()));
    }
    Ok(())
}

/// Shorthand for results of this crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The CRIU options an htype needs, in CRIU's own terms. The engine turns
/// them into a request; the htype never talks to CRIU itself.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CriuOptions {
    /// The tree has a controlling terminal of a shell (`--shell-job`).
    pub shell_job: bool,
    /// Migrate established TCP connections (`--tcp-established`).
    pub tcp_established: bool,
    /// Dump established TCP connections but restore them closed
    /// (`--tcp-close`): the peers see a reset, the server goes on.
    pub tcp_close: bool,
    /// Allow Unix sockets connected outside the tree (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// Migrate file locks (`--file-locks`).
    pub file_locks: bool,
    /// Link unlinked open files back for restore (`--link-remap`).
    pub link_remap: bool,
    /// Allow devices replaced since they were opened (`--evasive-devices`).
    pub evasive_devices: bool,
    /// Freeze through this freezer cgroup instead of ptrace.
    pub freeze_cgroup: Option<String>,
    /// External resources (`--external`).
    pub external: Vec<String>,
    /// Restore into this root directory (`--root`).
    pub root: Option<String>,
    /// Largest deleted-but-open file copied into images, in bytes.
    pub ghost_limit: Option<u32>,
    /// Drop in-flight TCP connections (`--skip-in-flight`).
    pub tcp_skip_in_flight: bool,
    /// Resolve inotify watches by path (needed when inodes change, as after
    /// copying a file system).
    pub force_irmap: bool,
    /// How CRIU handles cgroups (`--manage-cgroups=MODE`: "soft", "full", ...).
    pub manage_cgroups: Option<String>,
    /// A directory with every cgroup hierarchy mounted in it, which CRIU
    /// uses instead of mounting them itself (`--cgroup-yard`; see
    /// `cgyard.rs`).
    pub cgroup_yard: Option<String>,
    /// Where each cgroup controller's tree is rooted (`--cgroup-root`):
    /// (controller, path).
    pub cgroup_roots: Vec<(Option<String>, String)>,
    /// External bind mounts (`--ext-mount-map KEY:VAL`).
    pub ext_mounts: Vec<(String, String)>,
    /// Let CRIU map other external mounts itself (`--ext-mount-map auto`).
    pub auto_ext_mnt: bool,
    /// Allow external shared mounts.
    pub ext_sharing: bool,
    /// Allow external slave mounts.
    pub ext_masters: bool,
    /// File systems CRIU may dump and restore (`--enable-fs`).
    pub enable_fs: Vec<String>,
    /// Where CRIU looks for inotify watches' paths (`--irmap-scan-path`).
    pub irmap_scan_paths: Vec<String>,
    /// Restore mounts the pre-4.0 way (`--mntns-compat-mode`).
    pub mntns_compat_mode: bool,
    /// Lock the tree's network with nftables, inside CRIU
    /// (`--network-lock nftables`), not with iptables, which CRIU runs as a
    /// program per rule set. Not a kind's choice: the engine sets it when
    /// both hosts' CRIU can (a restore locks the way the dump did).
    pub network_lock_nftables: bool,
}

/// Who makes a kind's final dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DumpBy {
    /// The engine, through CRIU's RPC (held at `post-dump` until the commit).
    Criu,
    /// The kind's manager runs CRIU itself, as `runc checkpoint` does
    /// ([`SourceHooks::dump_self`], or [`SourceHooks::dump_self_lazy`]).
    Manager,
}

/// Who restores a kind on the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestoreBy {
    /// The engine, through CRIU's RPC (held at `post-restore` until the
    /// commit).
    Criu,
    /// The kind's manager, so that it knows the tree (`lxc-checkpoint -r`,
    /// `runc restore`): [`TargetHooks::restore`]. The tree runs from then on.
    Manager,
}

/// What a kind can do, as data: the engine reads it once and plans with it
/// beside the hosts' features.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Caps {
    /// Iterative pre-dumps make sense for it (pre-copy, hybrid).
    pub pre_dump: bool,
    /// The target can restore it lazily (post-copy, hybrid).
    pub lazy_restore: bool,
    /// Who makes its final dump.
    pub dump_by: DumpBy,
    /// Who restores it.
    pub restore_by: RestoreBy,
    /// It can be migrated cold (restart mode): stopped on the source, its
    /// files synced, started anew on the target.
    pub restart: bool,
}

impl Caps {
    /// A plain tree: CRIU dumps and restores it, in every mode but restart.
    pub const PLAIN: Caps = Caps {
        pre_dump: true,
        lazy_restore: true,
        dump_by: DumpBy::Criu,
        restore_by: RestoreBy::Criu,
        restart: false,
    };
}

/// One kind of thing phaul migrates: what it is and what it can do, with
/// its [`SourceHooks`] and [`TargetHooks`].
///
/// The source side makes it from a user's request ([`registry::source`]),
/// the target side from the name and parameters the source sent
/// ([`registry::target`]); both validate what they are given.
pub trait Htype: SourceHooks + TargetHooks + Send + Sync + Debug {
    /// The kind's name on the wire and the command line (`"pid"`).
    fn kind(&self) -> &'static str;

    /// The parameters the target needs to make its side of this htype.
    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// What it can do.
    fn caps(&self) -> Caps {
        Caps::PLAIN
    }

    /// The directory tree that travels with it (a container's root file
    /// system): on the source, what to send; on the target, where it goes.
    fn fs_root(&self) -> Option<std::path::PathBuf> {
        None
    }
}

/// The source's side of a kind: finding the tree, what its dump needs, and
/// the steps its manager takes. Every method but `root_pid` has a default
/// that does nothing.
pub trait SourceHooks {
    /// The PID of the tree's root on the source.
    fn root_pid(&self) -> Result<i32>;

    /// Checks, on the source, that the tree can still be migrated (it may
    /// have exited since the htype was made).
    fn check(&self) -> Result<()> {
        self.root_pid().map(drop)
    }

    /// Options for CRIU's dumps (pre-dumps and the final dump).
    fn dump_options(&self) -> CriuOptions {
        CriuOptions::default()
    }

    /// Extra files for the final dump's images, made just *before* the
    /// final dump while the tree still runs (name, content; plain file
    /// names). Best effort: a kind that cannot make one logs a warning and
    /// leaves it out.
    fn files_before_dump(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }

    /// Extra files to send with the final dump's images (name, content),
    /// made while the tree is frozen; names are plain file names.
    fn meta_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// [`DumpBy::Manager`]: makes the final dump into `images_dir` (with
    /// `work_dir` for logs), leaving the tree frozen but alive; if it fails,
    /// the tree must be running again when this returns.
    fn dump_self(&self, images_dir: &std::path::Path, work_dir: &std::path::Path) -> Result<()> {
        let _ = (images_dir, work_dir);
        Err(Error::Unsupported("dumping itself"))
    }

    /// [`DumpBy::Manager`] with post-copy ([`Caps::lazy_restore`]): the
    /// manager dumps all but the memory into `images_dir` and returns once
    /// its CRIU serves the memory on `127.0.0.1:port`. The returned tool
    /// ends when every page was served, or when the page-server connection
    /// fails (the tree then runs again, frozen as [`SourceHooks::dump_self`]
    /// leaves it). If it fails to start, the tree must be running again
    /// when this returns.
    fn dump_self_lazy(
        &self,
        images_dir: &std::path::Path,
        work_dir: &std::path::Path,
        port: u16,
    ) -> Result<tool::Running> {
        let _ = (images_dir, work_dir, port);
        Err(Error::Unsupported("dumping itself lazily"))
    }

    /// Resumes the tree [`SourceHooks::dump_self`] left frozen (the
    /// migration failed before its commit).
    fn resume_source(&self) -> Result<()> {
        Ok(())
    }

    /// Restart mode: stops it (its files then stop changing).
    fn stop(&self) -> Result<()> {
        Ok(())
    }

    /// Restart mode: starts it again (the migration failed after
    /// [`SourceHooks::stop`]).
    fn start(&self) -> Result<()> {
        Ok(())
    }

    /// After the commit, removes what remains of the tree here (a
    /// container's definition and files).
    fn cleanup_source(&self) -> Result<()> {
        Ok(())
    }
}

/// The target's side of a kind: what its restore needs, the restore its
/// manager makes, and undoing it. Every method has a default.
pub trait TargetHooks {
    /// Options for CRIU's restore on the target.
    fn restore_options(&self) -> CriuOptions {
        CriuOptions::default()
    }

    /// Prepares for the restore from `images_dir` (applies what the kind's
    /// extra files carry) before CRIU restores.
    fn prepare_restore(&self, images_dir: &std::path::Path) -> Result<()> {
        let _ = images_dir;
        Ok(())
    }

    /// [`RestoreBy::Manager`]: restores from `images_dir`, returning the
    /// root PID. `lazy` (post-copy, only where [`Caps::lazy_restore`]): the
    /// manager's CRIU restores with lazy pages, served by the lazy-pages
    /// daemon the engine started for `images_dir`.
    fn restore(&self, images_dir: &std::path::Path, lazy: bool) -> Result<i32> {
        let _ = (images_dir, lazy);
        Err(Error::Unsupported("restoring itself"))
    }

    /// The restored copy is about to run (the commit). What was held apart
    /// until now is connected here: the `pid` kind puts its veths' host
    /// ends on their bridges, so a copy that never runs never shows its MAC
    /// and address on the network.
    fn before_commit(&self) -> Result<()> {
        Ok(())
    }

    /// The commit, for a copy the kind's manager restored
    /// ([`RestoreBy::Manager`]): a kind that holds it until now (runc and
    /// LXC, at CRIU's `post-restore`) lets it run here. Its error fails the commit,
    /// and [`TargetHooks::abort`] follows.
    fn commit(&self) -> Result<()> {
        Ok(())
    }

    /// Undoes what [`TargetHooks::restore`] and the file-system sync made
    /// (the migration failed before its commit).
    fn abort(&self) -> Result<()> {
        Ok(())
    }

    /// Restart mode: starts it from the synced files and the meta files in
    /// `dir`; returns its root PID.
    fn start_here(&self, dir: &std::path::Path) -> Result<i32> {
        let _ = dir;
        Err(Error::Unsupported("being restarted"))
    }
}
