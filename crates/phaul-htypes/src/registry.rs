//! Making htypes from their names.

use std::collections::BTreeMap;

use std::path::PathBuf;

use crate::{Error, Htype, Result, lxc, pid, runc, vz};

/// The kinds this build knows.
pub const NAMES: &[&str] = &["pid", "lxc", "vz", "runc"];

/// Where each kind keeps its things on this host (the LXC path).
#[derive(Debug, Clone)]
pub struct Paths {
    /// LXC's container directory (`lxc-* -P`).
    pub lxcpath: PathBuf,
    /// Virtuozzo: where containers' init PIDs are kept (`CTID.init.pid`).
    pub ve_run_dir: PathBuf,
    /// Virtuozzo: containers' root mounts (`ROOT/CTID`).
    pub ve_root: PathBuf,
    /// The cgroup v1 freezer hierarchy.
    pub freezer_root: PathBuf,
    /// Virtuozzo's tools, as paths so a test can name stand-ins (bare
    /// names are looked up on `PATH`).
    pub vzctl: PathBuf,
    /// See `vzctl`.
    pub cgget: PathBuf,
    /// See `vzctl`.
    pub cgexec: PathBuf,
    /// See `vzctl`.
    pub cgset: PathBuf,
    /// runc: its binary, its state directory (`runc --root`), and where
    /// the target puts migrated bundles.
    pub runc: PathBuf,
    /// See `runc`.
    pub runc_root: PathBuf,
    /// See `runc`.
    pub runc_bundles: PathBuf,
    /// The CRIU that tools running CRIU themselves (runc) are told to use.
    pub criu: PathBuf,
}

impl Default for Paths {
    fn default() -> Self {
        Self {
            lxcpath: PathBuf::from(lxc::DEFAULT_LXCPATH),
            ve_run_dir: PathBuf::from(vz::DEFAULT_VE_RUN_DIR),
            ve_root: PathBuf::from(vz::DEFAULT_VE_ROOT),
            freezer_root: PathBuf::from(vz::DEFAULT_FREEZER_ROOT),
            vzctl: PathBuf::from("vzctl"),
            cgget: PathBuf::from("cgget"),
            cgexec: PathBuf::from("cgexec"),
            cgset: PathBuf::from("cgset"),
            runc: PathBuf::from("runc"),
            runc_root: PathBuf::from("/run/runc"),
            runc_bundles: PathBuf::from("/var/lib/phaul/runc"),
            criu: PathBuf::from("criu"),
        }
    }
}

/// The source side of kind `kind` for the thing the user named (`id`: a
/// PID for `pid`).
pub fn source(kind: &str, id: &str) -> Result<Box<dyn Htype>> {
    source_in(kind, id, &Paths::default())
}

/// [`source`] with this host's paths.
pub fn source_in(kind: &str, id: &str, paths: &Paths) -> Result<Box<dyn Htype>> {
    match kind {
        "pid" => Ok(Box::new(pid::Pid::source(id)?)),
        "lxc" => Ok(Box::new(lxc::Lxc::source(id, &paths.lxcpath)?)),
        "vz" => Ok(Box::new(vz::Vz::source(id, paths)?)),
        "runc" => Ok(Box::new(runc::Runc::source(id, paths)?)),
        other => Err(Error::UnknownKind(other.to_string())),
    }
}

/// [`source_in`], with a `pid` tree's CRIU options. Options other than the
/// defaults are refused for the other kinds, whose manager or kind decides
/// them.
pub fn source_with(
    kind: &str,
    id: &str,
    paths: &Paths,
    opts: &pid::PidOptions,
) -> Result<Box<dyn Htype>> {
    match kind {
        "pid" => Ok(Box::new(pid::Pid::source_with(id, opts.clone())?)),
        _ if *opts != pid::PidOptions::default() => Err(Error::BadParam {
            name: "options",
            value: kind.to_string(),
            reason: "the CRIU options (--tcp-close, --ext-unix-sk, ...) are for the pid kind; \
                     containers get their manager's"
                .into(),
        }),
        _ => source_in(kind, id, paths),
    }
}

/// The target side of kind `kind`, from the parameters the source sent.
pub fn target(kind: &str, params: &BTreeMap<String, String>) -> Result<Box<dyn Htype>> {
    target_in(kind, params, &Paths::default())
}

/// [`target`] with this host's paths.
pub fn target_in(
    kind: &str,
    params: &BTreeMap<String, String>,
    paths: &Paths,
) -> Result<Box<dyn Htype>> {
    match kind {
        "pid" => Ok(Box::new(pid::Pid::target(params)?)),
        "lxc" => Ok(Box::new(
            lxc::Lxc::target(params, &paths.lxcpath)?.with_criu(&paths.criu),
        )),
        "vz" => Ok(Box::new(vz::Vz::target(params, paths)?)),
        "runc" => Ok(Box::new(runc::Runc::target(params, paths)?)),
        other => Err(Error::UnknownKind(other.to_string())),
    }
}
