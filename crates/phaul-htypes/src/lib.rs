//! What phaul migrates ("htypes", after P.Haul's name for them).
//!
//! An htype says how to find the process tree of one kind of thing, which
//! CRIU options its dump and restore need, and how to validate what a
//! request names before anything is touched. The engine holds htypes as
//! trait objects made by the [`registry`]; every trait method but `kind` and
//! `root_pid` has a default, so a kind overrides only what it needs.
//!
//! Kinds so far: [`pid::Pid`], a process tree by the PID of its root;
//! [`lxc::Lxc`], an LXC container with its root file system; and
//! [`vz::Vz`], a Virtuozzo container (its ve.* settings and core pattern as
//! extra images, its freezer cgroup); and [`runc::Runc`], a runc container
//! with its bundle.
//!
//! # Layout
//! - [`Htype`]: the trait, and [`CriuOptions`], the CRIU options an htype asks for.
//! - [`registry`]: making an htype from its name and parameters.
//! - [`pid`]: the process-tree htype.
//! - [`lxc`]: the LXC container htype.
//! - [`vz`]: the Virtuozzo container htype.
//! - [`runc`]: the runc container htype.
//! - [`Error`]: the crate's error type.

use std::collections::BTreeMap;
use std::fmt::Debug;

pub mod lxc;
pub mod pid;
pub mod registry;
pub mod runc;
mod tool;
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
}

/// One kind of thing phaul migrates.
///
/// The source side makes it from a user's request ([`registry::source`]),
/// the target side from the name and parameters the source sent
/// ([`registry::target`]); both validate what they are given.
pub trait Htype: Send + Sync + Debug {
    /// The kind's name on the wire and the command line (`"pid"`).
    fn kind(&self) -> &'static str;

    /// The parameters the target needs to make its side of this htype.
    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }

    /// The PID of the tree's root on the source.
    fn root_pid(&self) -> Result<i32>;

    /// Whether iterative pre-dumps make sense for this kind.
    fn can_pre_dump(&self) -> bool {
        true
    }

    /// Options for CRIU's dumps (pre-dumps and the final dump).
    fn dump_options(&self) -> CriuOptions {
        CriuOptions::default()
    }

    /// Options for CRIU's restore on the target.
    fn restore_options(&self) -> CriuOptions {
        CriuOptions::default()
    }

    /// Checks, on the source, that the tree can still be migrated (it may
    /// have exited since the htype was made).
    fn check(&self) -> Result<()> {
        self.root_pid().map(drop)
    }

    /// The directory tree that travels with it (a container's root file
    /// system): on the source, what to send; on the target, where it goes.
    fn fs_root(&self) -> Option<std::path::PathBuf> {
        None
    }

    /// Extra files for the final dump's images, made just *before* the
    /// final dump while the tree still runs (name, content; plain file
    /// names). Best effort: a kind that cannot make one logs a warning and
    /// leaves it out.
    fn files_before_dump(&self) -> Vec<(String, Vec<u8>)> {
        Vec::new()
    }

    /// Target: prepares for the restore from `images_dir` (applies what the
    /// kind's extra files carry) before CRIU restores.
    fn prepare_restore(&self, images_dir: &std::path::Path) -> Result<()> {
        let _ = images_dir;
        Ok(())
    }

    /// Extra files to send with the final dump's images (name, content),
    /// made while the tree is frozen; names are plain file names.
    fn meta_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Vec::new())
    }

    /// Whether the target can restore this kind lazily (post-copy).
    fn can_restore_lazily(&self) -> bool {
        !self.restores_itself()
    }

    /// Whether [`Htype::restore`] restores by itself (then CRIU's RPC
    /// restore, and its hold until the commit, are not used).
    fn restores_itself(&self) -> bool {
        false
    }

    /// Target: restores from `images_dir` itself instead of through CRIU's
    /// RPC, returning the root PID; `None` means "use CRIU's RPC". A kind
    /// whose manager must know the restored tree (LXC) restores this way.
    fn restore(&self, images_dir: &std::path::Path) -> Option<Result<i32>> {
        let _ = images_dir;
        None
    }

    /// Target: undoes what [`Htype::restore`] and the file-system sync made
    /// (the migration failed before its commit).
    fn abort(&self) -> Result<()> {
        Ok(())
    }

    /// Whether this kind makes its final dump itself (its manager runs
    /// CRIU, as `runc checkpoint` does) instead of through CRIU's RPC.
    fn dumps_itself(&self) -> bool {
        false
    }

    /// Source: makes the final dump into `images_dir` (with `work_dir` for
    /// logs), leaving the tree frozen but alive; if it fails, the tree must
    /// be running again when this returns.
    fn dump_self(&self, images_dir: &std::path::Path, work_dir: &std::path::Path) -> Result<()> {
        let _ = (images_dir, work_dir);
        Err(Error::BadParam {
            name: "kind",
            value: self.kind().into(),
            reason: "it does not dump itself".into(),
        })
    }

    /// Source: resumes the tree [`Htype::dump_self`] left frozen (the
    /// migration failed before its commit).
    fn resume_source(&self) -> Result<()> {
        Ok(())
    }

    /// Target: the restored copy is about to run (the commit). What was
    /// held apart until now is connected here: the `pid` kind puts its
    /// veths' host ends on their bridges, so a copy that never runs never
    /// shows its MAC and address on the network.
    fn before_commit(&self) -> Result<()> {
        Ok(())
    }

    /// Whether this kind can be migrated cold (restart mode): stopped on
    /// the source, its files synced, started anew on the target.
    fn can_restart(&self) -> bool {
        false
    }

    /// Source, restart mode: stops it (its files then stop changing).
    fn stop(&self) -> Result<()> {
        Ok(())
    }

    /// Source, restart mode: starts it again (the migration failed after
    /// [`Htype::stop`]).
    fn start(&self) -> Result<()> {
        Ok(())
    }

    /// Target, restart mode: starts it from the synced files and the meta
    /// files in `dir`; returns its root PID.
    fn start_here(&self, dir: &std::path::Path) -> Result<i32> {
        let _ = dir;
        Err(Error::BadParam {
            name: "kind",
            value: self.kind().into(),
            reason: "it cannot be restarted".into(),
        })
    }

    /// Source: after the commit, removes what remains of the tree here (a
    /// container's definition and files).
    fn cleanup_source(&self) -> Result<()> {
        Ok(())
    }
}
