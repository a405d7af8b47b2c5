//! The `vz` htype: a Virtuozzo container, named by its CTID.
//!
//! What it does follows P.Haul's Virtuozzo htype (`p_haul_vz.py`):
//!
//! - The container's init PID is read from `VE_RUN_DIR/CTID.init.pid`
//!   (`/var/run/ve` on a Virtuozzo host), every time it is asked for.
//! - Pre-dumps and the final dump freeze the tree through the container's
//!   freezer cgroup (`FREEZER_ROOT/CTID`), keep deleted-but-open files of up
//!   to 50 MiB in the images, and let CRIU handle cgroups softly.
//! - Just before the final dump, while the tree still runs, six values of
//!   the container's `ve` cgroup are read with `cgget` into extra images
//!   (see [`VE_IMAGES`]); after the final dump, while the tree is frozen,
//!   its core pattern is read with `cgexec -g ve:CTID cat
//!   /proc/sys/kernel/core_pattern` into [`CORE_PATTERN_IMAGE`]. A tool that
//!   fails only costs its image: the failure is logged as a warning.
//! - On the target, before CRIU restores, every such image that arrived is
//!   applied: `cgset -r PARAM=VALUE CTID` for the `ve` values and
//!   `cgexec -g ve:CTID tee /proc/sys/kernel/core_pattern` (the pattern on
//!   its standard input) for the core pattern. Failures are warnings too.
//! - The restore happens in the container's root (`VE_ROOT/CTID`) when that
//!   directory exists.
//!
//! What it does not do: on a real Virtuozzo host the target container must
//! already exist (created and mounted with `vzctl`) before the restore, so
//! that its `ve` cgroup and root exist; phaul does not create it, and it
//! restores through CRIU's RPC rather than `vzctl restore`. Veth pairs are
//! not passed to CRIU either: they would come from the container's `vzctl`
//! config (`NETIF`), which is not read. Its disk (ploop) is not moved.
//!
//! CTIDs are checked strictly ([`validate_ctid`]) and never reach a shell:
//! every tool is run with an argument vector, its standard input empty (or
//! a temporary file holding what it is fed) and its output going to
//! temporary files, not pipes, as for LXC's tools.
//!
//! # Trust
//! The values applied on the target come from the source. They only ever
//! become single arguments of `cgset` or the input of `tee`, after being
//! checked to be one short line of printable text. A core pattern starting
//! with `|` names a program the kernel runs as root on a crash; on a
//! Virtuozzo kernel the pattern written through the `ve` cgroup is the
//! container's own, and on a kernel without the `ve` controller `cgexec -g
//! ve:CTID` fails, so the host's pattern is not changed.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::registry::Paths;
use crate::{CriuOptions, Error, Htype, Result, SourceHooks, TargetHooks, pid};

/// Where Virtuozzo writes each running container's init PID
/// (`CTID.init.pid`).
pub const DEFAULT_VE_RUN_DIR: &str = "/var/run/ve";
/// Where Virtuozzo mounts each container's root (`CTID`).
pub const DEFAULT_VE_ROOT: &str = "/vz/root";
/// The cgroup v1 freezer hierarchy, holding a cgroup per container (`CTID`).
pub const DEFAULT_FREEZER_ROOT: &str = "/sys/fs/cgroup/freezer";

/// The images made with `cgget` just before the final dump: (file name,
/// `ve` cgroup parameter), in the order they are made.
pub const VE_IMAGES: &[(&str, &str)] = &[
    ("vz_clock_bootbased.img", "ve.clock_bootbased"),
    ("vz_clock_monotonic.img", "ve.clock_monotonic"),
    ("vz_iptables_mask.img", "ve.iptables_mask"),
    ("vz_os_release.img", "ve.os_release"),
    ("vz_features.img", "ve.features"),
    ("vz_aio_max_nr.img", "ve.aio_max_nr"),
];

/// The image made with `cgexec` after the final dump: the container's
/// core pattern.
pub const CORE_PATTERN_IMAGE: &str = "vz_core_pattern.img";

/// Where the core pattern is read and written (inside the container's `ve`
/// cgroup).
const CORE_PATTERN: &str = "/proc/sys/kernel/core_pattern";

/// The largest deleted-but-open file kept in the images, as P.Haul set it.
pub const GHOST_LIMIT: u32 = 50 << 20;

/// How long one tool may run before it is killed.
const TOOL_TIMEOUT: Duration = Duration::from_secs(30);

/// The most a tool may print, or an image to apply may hold.
const MAX_VALUE: u64 = 4096;

/// A Virtuozzo container.
#[derive(Debug, Clone)]
pub struct Vz {
    ctid: String,
    paths: Paths,
}

/// Checks a CTID: a legacy numeric one (a decimal number from 1 to
/// 4294967295 without leading zeros) or a UUID in Virtuozzo 7's form (8-4-4-4-12
/// lowercase hexadecimal digits).
pub fn validate_ctid(s: &str) -> Result<()> {
    let bad = |reason: &str| Error::BadParam {
        name: "CTID",
        value: s.to_string(),
        reason: reason.to_string(),
    };
    if s.bytes().all(|b| b.is_ascii_digit()) {
        if s.is_empty() || s.len() > 10 {
            return Err(bad("a numeric CTID has 1 to 10 digits"));
        }
        if s.starts_with('0') {
            return Err(bad("a numeric CTID is not 0 and has no leading zeros"));
        }
        if s.parse::<u32>().is_err() {
            return Err(bad("a numeric CTID is at most 4294967295"));
        }
        return Ok(());
    }
    let groups: Vec<&str> = s.split('-').collect();
    let is_uuid = groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, n)| {
            g.len() == n && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        });
    if !is_uuid {
        return Err(bad(
            "must be a number or a UUID (8-4-4-4-12 lowercase hexadecimal digits)",
        ));
    }
    Ok(())
}

/// Runs `tool` with `args` (no shell), feeding it `input` if given; its
/// standard output on success.
///
/// Output goes to temporary files, not pipes, and the input comes from
/// one: nothing the tool leaves behind can hold phaul up. A tool still
/// running after [`TOOL_TIMEOUT`] is killed.
fn run(tool: &Path, args: &[&OsStr], input: Option<&[u8]>) -> Result<Vec<u8>> {
    let limits = crate::tool::Limits {
        input,
        time: TOOL_TIMEOUT,
        output: MAX_VALUE,
        ..crate::tool::Limits::default()
    };
    crate::tool::exec(tool, args, limits)
}

/// The text of an image to apply, if it is one short line of printable
/// text (after `trim`), else why not.
fn image_value(path: &Path, trim: fn(&str) -> &str) -> std::result::Result<String, String> {
    let meta = std::fs::symlink_metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err("not a regular file".into());
    }
    let mut v = Vec::new();
    File::open(path)
        .and_then(|f| f.take(MAX_VALUE + 1).read_to_end(&mut v))
        .map_err(|e| e.to_string())?;
    if v.len() as u64 > MAX_VALUE {
        return Err(format!("larger than {MAX_VALUE} bytes"));
    }
    let text = String::from_utf8(v).map_err(|_| "not UTF-8 text".to_string())?;
    let value = trim(&text);
    if value.chars().any(char::is_control) {
        return Err("holds control characters (more than one line?)".into());
    }
    Ok(value.to_string())
}

/// `s` without one trailing newline.
fn strip_newline(s: &str) -> &str {
    s.strip_suffix('\n').unwrap_or(s)
}

impl Vz {
    /// The source side: container `ctid`, which must run here (its init
    /// PID file names a live process).
    pub fn source(ctid: &str, paths: &Paths) -> Result<Self> {
        validate_ctid(ctid)?;
        let me = Self {
            ctid: ctid.to_string(),
            paths: paths.clone(),
        };
        me.init_pid()?;
        Ok(me)
    }

    /// The target side, from the source's parameters (`ctid`).
    pub fn target(params: &BTreeMap<String, String>, paths: &Paths) -> Result<Self> {
        let ctid = params.get("ctid").ok_or_else(|| Error::BadParam {
            name: "CTID",
            value: String::new(),
            reason: "missing".into(),
        })?;
        validate_ctid(ctid)?;
        Ok(Self {
            ctid: ctid.clone(),
            paths: paths.clone(),
        })
    }

    /// The container's CTID.
    pub fn ctid(&self) -> &str {
        &self.ctid
    }

    /// The init PID file, `VE_RUN_DIR/CTID.init.pid`.
    fn pid_file(&self) -> PathBuf {
        self.paths
            .ve_run_dir
            .join(format!("{}.init.pid", self.ctid))
    }

    /// The container's init PID, read from its PID file and checked as the
    /// `pid` kind checks a PID (it runs, it is not phaul or the host's
    /// init, ...).
    fn init_pid(&self) -> Result<i32> {
        let file = self.pid_file();
        let bad = |reason: String| Error::BadParam {
            name: "CTID",
            value: self.ctid.clone(),
            reason,
        };
        let text = std::fs::read_to_string(&file).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                bad(format!(
                    "no such container (no init PID file {})",
                    file.display()
                ))
            } else {
                Error::Io {
                    what: file.display().to_string(),
                    source: e,
                }
            }
        })?;
        let pid = pid::parse_pid(text.trim())
            .map_err(|_| bad(format!("{} holds no PID", file.display())))?;
        pid::Pid::source(&pid.to_string())?;
        Ok(pid)
    }

    /// The container's freezer cgroup.
    fn freezer(&self) -> PathBuf {
        self.paths.freezer_root.join(&self.ctid)
    }

    /// The options both sides share.
    fn common_options(&self) -> CriuOptions {
        CriuOptions {
            tcp_established: true,
            file_locks: true,
            link_remap: true,
            ghost_limit: Some(GHOST_LIMIT),
            manage_cgroups: Some("soft".into()),
            ..Default::default()
        }
    }

    /// `ve:CTID`, as `cgexec -g` names the container's `ve` cgroup.
    fn ve_group(&self) -> String {
        format!("ve:{}", self.ctid)
    }
}

impl Htype for Vz {
    fn kind(&self) -> &'static str {
        "vz"
    }

    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("ctid".to_string(), self.ctid.clone())])
    }
}

impl SourceHooks for Vz {
    fn root_pid(&self) -> Result<i32> {
        self.init_pid()
    }

    fn dump_options(&self) -> CriuOptions {
        CriuOptions {
            freeze_cgroup: Some(self.freezer().to_string_lossy().into_owned()),
            ..self.common_options()
        }
    }

    fn files_before_dump(&self) -> Vec<(String, Vec<u8>)> {
        let mut files = Vec::new();
        for &(image, param) in VE_IMAGES {
            let args = ["-n", "-v", "-r", param, &self.ctid].map(OsStr::new);
            match run(&self.paths.cgget, &args, None) {
                Ok(value) => files.push((image.to_string(), value)),
                Err(e) => tracing::warn!(
                    ctid = %self.ctid,
                    image,
                    error = %e,
                    "cgget failed; the image is left out"
                ),
            }
        }
        files
    }

    fn meta_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let group = self.ve_group();
        let args = ["-g", &group, "cat", CORE_PATTERN].map(OsStr::new);
        match run(&self.paths.cgexec, &args, None) {
            Ok(value) => Ok(vec![(CORE_PATTERN_IMAGE.to_string(), value)]),
            Err(e) => {
                tracing::warn!(
                    ctid = %self.ctid,
                    image = CORE_PATTERN_IMAGE,
                    error = %e,
                    "cgexec failed; the image is left out"
                );
                Ok(Vec::new())
            }
        }
    }
}

impl TargetHooks for Vz {
    fn restore_options(&self) -> CriuOptions {
        // The container's root is where Virtuozzo mounts its file system;
        // restoring outside it would give the tree the host's files. A
        // tree without such a mount (the tests' workloads) lives in the
        // host's root, so it is restored into "/".
        let root = self.paths.ve_root.join(&self.ctid);
        CriuOptions {
            root: root.is_dir().then(|| root.to_string_lossy().into_owned()),
            ..self.common_options()
        }
    }

    fn prepare_restore(&self, images_dir: &Path) -> Result<()> {
        let warn = |image: &str, why: &dyn std::fmt::Display| {
            tracing::warn!(ctid = %self.ctid, image, error = %why, "not applied");
        };
        for &(image, param) in VE_IMAGES {
            let path = images_dir.join(image);
            if !path.exists() {
                continue;
            }
            let value = match image_value(&path, str::trim) {
                Ok(v) => v,
                Err(why) => {
                    warn(image, &why);
                    continue;
                }
            };
            let set = format!("{param}={value}");
            let args = ["-r", &set, &self.ctid].map(OsStr::new);
            if let Err(e) = run(&self.paths.cgset, &args, None) {
                warn(image, &e);
            }
        }
        let path = images_dir.join(CORE_PATTERN_IMAGE);
        if path.exists() {
            match image_value(&path, strip_newline) {
                Ok(value) => {
                    let group = self.ve_group();
                    let args = ["-g", &group, "tee", CORE_PATTERN].map(OsStr::new);
                    let input = format!("{value}\n");
                    if let Err(e) = run(&self.paths.cgexec, &args, Some(input.as_bytes())) {
                        warn(CORE_PATTERN_IMAGE, &e);
                    }
                }
                Err(why) => warn(CORE_PATTERN_IMAGE, &why),
            }
        }
        Ok(())
    }
}
