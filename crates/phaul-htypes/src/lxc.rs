//! The `lxc` htype: an LXC container with its root file system.
//!
//! The source dumps the container's init tree through CRIU with the options
//! LXC itself uses for `lxc-checkpoint` (cgroup roots, external bind mounts,
//! the console as an external tty, the freezer cgroup), while phaul-fs
//! syncs the root file system. The target writes the container's config
//! into its own LXC path and lets LXC restore the images
//! (`lxc-checkpoint -r`), so the container is LXC's own there: `lxc-info`
//! shows it RUNNING, `lxc-stop` stops it. After the commit the source's
//! container is destroyed. The CRIU that liblxc runs reads extra options
//! from the file `CRIU_CONFIG_FILE` names: there phaul names an action
//! script that holds the restored container at `post-restore` until the
//! commit (see `hold.rs`; a rollback has CRIU kill a copy that never ran,
//! so no client ever talks to it), and asks for lazy pages (post-copy),
//! for which liblxc has no option of its own, and names the system's
//! cgroup yard where it is one (see `cgyard.rs`), as phaul's own dump
//! does.
//!
//! LXC lets two containers of the same name exist on one machine (in two
//! LXC paths): it gives the second a fresh cgroup (`lxc.payload.NAME-1`),
//! which is what lets the target restore while the source is still held
//! frozen.
//!
//! Names are checked against a strict subset of LXC's rules (letters,
//! digits, `.`, `_`, `-`, starting with a letter or digit) and never reach a
//! shell: every command is run with an argument vector.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::{Caps, CriuOptions, Error, Htype, RestoreBy, Result, SourceHooks, TargetHooks};

/// Where LXC keeps containers unless told otherwise.
pub const DEFAULT_LXCPATH: &str = "/var/lib/lxc";

/// The images-batch file carrying the container's config.
pub const CONFIG_FILE: &str = "lxc.config";

/// The images-batch file naming the console's tty (read by `lxc-checkpoint -r`).
pub const TTY_INFO: &str = "tty.info";

/// An LXC container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lxc {
    name: String,
    lxcpath: PathBuf,
    /// The directory of the CRIU that `lxc-checkpoint -r` must run, when
    /// the host names one (liblxc runs the first `criu` on `PATH`).
    criu_dir: Option<PathBuf>,
    /// Source only: what the dump needs, worked out when the htype is made.
    source: Option<SourceState>,
    /// Target only, between the restore and the commit: the restore, held
    /// before the container runs (see `hold.rs`).
    held: crate::hold::Slot,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct SourceState {
    rootfs: PathBuf,
    config: String,
    tty: String,
    options: CriuOptions,
}

/// Checks a container name: 1 to 64 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or digit.
pub fn validate_name(name: &str) -> Result<()> {
    crate::check_name("container name", name, 64)
}

fn check_lxcpath(p: &Path) -> Result<()> {
    if !p.is_absolute()
        || p.components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(Error::BadParam {
            name: "lxcpath",
            value: p.display().to_string(),
            reason: "must be an absolute path without '..'".into(),
        });
    }
    Ok(())
}

/// Runs an LXC tool (see [`crate::tool::run`]).
fn lxc(tool: &str, args: &[&std::ffi::OsStr]) -> Result<String> {
    crate::tool::run(Path::new(tool), args)
}

impl Lxc {
    fn args<'a>(&'a self, tail: &[&'a str]) -> Vec<&'a std::ffi::OsStr> {
        let mut v: Vec<&'a std::ffi::OsStr> = vec![
            std::ffi::OsStr::new("-P"),
            self.lxcpath.as_os_str(),
            std::ffi::OsStr::new("-n"),
            std::ffi::OsStr::new(&self.name),
        ];
        v.extend(tail.iter().map(|s| std::ffi::OsStr::new(*s)));
        v
    }

    fn dir(&self) -> PathBuf {
        self.lxcpath.join(&self.name)
    }

    /// LXC's view of the container's state (`RUNNING`, `STOPPED`, ...).
    pub fn state(&self) -> Result<String> {
        Ok(lxc("lxc-info", &self.args(&["-sH"]))?.trim().to_string())
    }

    fn init_pid(&self) -> Result<i32> {
        let out = lxc("lxc-info", &self.args(&["-pH"]))?;
        out.trim().parse().map_err(|_| Error::BadParam {
            name: "container",
            value: self.name.clone(),
            reason: "LXC reports no init PID".into(),
        })
    }

    /// The source side: container `name` in `lxcpath`, which must exist and
    /// run. Works out the dump's options from its config and its init.
    pub fn source(name: &str, lxcpath: &Path) -> Result<Self> {
        validate_name(name)?;
        check_lxcpath(lxcpath)?;
        let mut me = Self {
            name: name.to_string(),
            lxcpath: lxcpath.to_path_buf(),
            criu_dir: None,
            held: crate::hold::Slot::default(),
            source: None,
        };
        let config_path = me.dir().join("config");
        let config = std::fs::read_to_string(&config_path).map_err(|_| Error::BadParam {
            name: "container",
            value: name.to_string(),
            reason: format!("no such container in {}", lxcpath.display()),
        })?;
        let state = me.state()?;
        if state != "RUNNING" {
            return Err(Error::BadParam {
                name: "container",
                value: name.to_string(),
                reason: format!("it is {state}, not RUNNING"),
            });
        }
        let rootfs = config_value(&config, "lxc.rootfs.path")
            .and_then(|v| v.strip_prefix("dir:").map(str::to_string).or_else(|| v.starts_with('/').then_some(v)))
            .ok_or_else(|| Error::BadParam {
                name: "container",
                value: name.to_string(),
                reason: "only directory-backed root file systems (lxc.rootfs.path = dir:...) can be moved".into(),
            })?;
        let pid = me.init_pid()?;
        let tty = console_tty(pid)?;
        let options = dump_options(pid, &config, &tty)?;
        me.source = Some(SourceState {
            rootfs: PathBuf::from(rootfs),
            config,
            tty,
            options,
        });
        Ok(me)
    }

    /// Makes LXC's restore run `criu` (a path: its directory goes first on
    /// the `PATH` of `lxc-checkpoint -r`; a bare name changes nothing), so
    /// the CRIU the host chose is the one LXC uses.
    pub fn with_criu(mut self, criu: &Path) -> Self {
        self.criu_dir = criu
            .parent()
            .filter(|d| !d.as_os_str().is_empty() && criu.file_name() == Some("criu".as_ref()))
            .map(Path::to_path_buf);
        self
    }

    /// The target side, from the source's parameters: the container will be
    /// created in `lxcpath`, where no container of that name may exist.
    pub fn target(params: &BTreeMap<String, String>, lxcpath: &Path) -> Result<Self> {
        let name = params.get("name").ok_or_else(|| Error::BadParam {
            name: "container name",
            value: String::new(),
            reason: "missing".into(),
        })?;
        validate_name(name)?;
        check_lxcpath(lxcpath)?;
        let me = Self {
            name: name.clone(),
            lxcpath: lxcpath.to_path_buf(),
            criu_dir: None,
            held: crate::hold::Slot::default(),
            source: None,
        };
        if me.dir().exists() {
            return Err(Error::BadParam {
                name: "container",
                value: name.clone(),
                reason: format!(
                    "a container of that name already exists in {}",
                    lxcpath.display()
                ),
            });
        }
        Ok(me)
    }

    /// The container's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Writes the container's config (from the meta file in `dir`) into
    /// this LXC path, pointing at the synced root file system here.
    fn install_config(&self, dir: &Path) -> Result<()> {
        let config =
            std::fs::read_to_string(dir.join(CONFIG_FILE)).map_err(|source| Error::Io {
                what: "the container's config from the source".into(),
                source,
            })?;
        let rootfs = self.dir().join("rootfs");
        let rewritten: String = config
            .lines()
            .map(|l| match l.split_once('=') {
                Some((k, _)) if k.trim() == "lxc.rootfs.path" => {
                    format!("lxc.rootfs.path = dir:{}", rootfs.display())
                }
                _ => l.to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n");
        std::fs::create_dir_all(&rootfs).map_err(|source| Error::Io {
            what: format!("creating {}", rootfs.display()),
            source,
        })?;
        std::fs::write(self.dir().join("config"), rewritten + "\n").map_err(|source| Error::Io {
            what: "writing the container's config".into(),
            source,
        })
    }
}

/// The value of the last `key = value` line of an LXC config.
fn config_value(config: &str, key: &str) -> Option<String> {
    config
        .lines()
        .filter_map(|l| l.split_once('='))
        .filter(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_string())
        .next_back()
}

/// The console of a container's init as CRIU names an external tty:
/// `tty[rdev:dev]` of the host pty mounted on its `/dev/console`.
fn console_tty(pid: i32) -> Result<String> {
    let info =
        std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).map_err(|source| Error::Io {
            what: format!("/proc/{pid}/mountinfo"),
            source,
        })?;
    let root = info
        .lines()
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| f.get(4) == Some(&"/dev/console"))
        .and_then(|f| f.get(3).map(|s| s.to_string()))
        .ok_or_else(|| Error::Refused {
            pid,
            reason: "its /dev/console is not a mounted pty".into(),
        })?;
    let pty = format!("/dev/pts{root}");
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(&pty).map_err(|source| Error::Io {
        what: pty.clone(),
        source,
    })?;
    Ok(format!("tty[{:x}:{:x}]", m.rdev(), m.dev()))
}

/// The options LXC's own checkpoint passes to CRIU, worked out from the
/// container's config and its init's cgroups.
fn dump_options(pid: i32, config: &str, tty: &str) -> Result<CriuOptions> {
    let cgroups =
        std::fs::read_to_string(format!("/proc/{pid}/cgroup")).map_err(|source| Error::Io {
            what: format!("/proc/{pid}/cgroup"),
            source,
        })?;
    let mut roots = Vec::new();
    let mut freezer = None;
    for line in cgroups.lines() {
        let mut f = line.splitn(3, ':');
        let (_, ctrls, path) = (f.next(), f.next().unwrap_or(""), f.next().unwrap_or(""));
        if ctrls.is_empty() {
            continue;
        }
        for c in ctrls.split(',') {
            roots.push((Some(c.to_string()), path.to_string()));
            if c == "freezer" {
                freezer = Some(format!("/sys/fs/cgroup/freezer{path}"));
            }
        }
    }
    let mut ext_mounts = Vec::new();
    for line in config.lines() {
        let Some((k, v)) = line.split_once('=') else {
            continue;
        };
        if k.trim() != "lxc.mount.entry" {
            continue;
        }
        let f: Vec<&str> = v.split_whitespace().collect();
        if f.len() >= 4 && f[3].split(',').any(|o| o == "bind" || o == "rbind") {
            ext_mounts.push((
                format!("/{}", f[1].trim_start_matches('/')),
                f[1].trim_start_matches('/').to_string(),
            ));
        }
    }
    ext_mounts.push(("/dev/console".into(), "console".into()));
    Ok(CriuOptions {
        tcp_established: true,
        file_locks: true,
        link_remap: true,
        manage_cgroups: Some("full".into()),
        cgroup_yard: crate::cgyard::system_yard().map(|y| y.display().to_string()),
        auto_ext_mnt: true,
        ext_sharing: true,
        ext_masters: true,
        enable_fs: vec!["hugetlbfs".into(), "tracefs".into()],
        cgroup_roots: roots,
        ext_mounts,
        tcp_skip_in_flight: true,
        freeze_cgroup: freezer,
        external: vec![tty.to_string()],
        // The root file system is copied, so inodes change.
        force_irmap: true,
        ..Default::default()
    })
}

impl Htype for Lxc {
    fn kind(&self) -> &'static str {
        "lxc"
    }

    fn caps(&self) -> Caps {
        // LXC must know the restored container, so lxc-checkpoint restores
        // it, lazily too (see `restore`).
        Caps {
            restore_by: RestoreBy::Manager,
            restart: true,
            ..Caps::PLAIN
        }
    }

    fn params(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("name".to_string(), self.name.clone())])
    }

    fn fs_root(&self) -> Option<PathBuf> {
        match &self.source {
            Some(s) => Some(s.rootfs.clone()),
            None => Some(self.dir().join("rootfs")),
        }
    }
}

impl SourceHooks for Lxc {
    fn root_pid(&self) -> Result<i32> {
        self.init_pid()
    }

    fn check(&self) -> Result<()> {
        match self.state()?.as_str() {
            "RUNNING" => Ok(()),
            s => Err(Error::BadParam {
                name: "container",
                value: self.name.clone(),
                reason: format!("it is {s}, not RUNNING"),
            }),
        }
    }

    fn dump_options(&self) -> CriuOptions {
        self.source
            .as_ref()
            .map(|s| s.options.clone())
            .unwrap_or_default()
    }

    fn meta_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        let s = self.source.as_ref().ok_or_else(|| Error::BadParam {
            name: "container",
            value: self.name.clone(),
            reason: "meta files come from the source".into(),
        })?;
        // No trailing newline: LXC passes tty.info verbatim to CRIU.
        Ok(vec![
            (TTY_INFO.into(), s.tty.clone().into_bytes()),
            (CONFIG_FILE.into(), s.config.clone().into_bytes()),
        ])
    }

    fn stop(&self) -> Result<()> {
        lxc("lxc-stop", &self.args(&["-t", "30"])).map(drop)
    }

    fn start(&self) -> Result<()> {
        lxc("lxc-start", &self.args(&[]))?;
        lxc("lxc-wait", &self.args(&["-s", "RUNNING", "-t", "30"])).map(drop)
    }

    fn cleanup_source(&self) -> Result<()> {
        // CRIU has ended the tasks; wait for LXC to see it, then remove the
        // container here.
        let _ = lxc("lxc-wait", &self.args(&["-s", "STOPPED", "-t", "10"]));
        lxc("lxc-destroy", &self.args(&[])).map(drop)
    }
}

impl TargetHooks for Lxc {
    fn restore(&self, images_dir: &Path, lazy: bool) -> Result<i32> {
        self.install_config(images_dir)?;
        let mut a = self.args(&["-r", "-D"]);
        a.push(images_dir.as_os_str());
        // CRIU reads extra options from the file CRIU_CONFIG_FILE names,
        // also when liblxc runs it: the hold's action script, so that the
        // container runs only at the commit, and lazy pages (liblxc has no
        // option of its own; CRIU's work dir is the images dir, where the
        // engine's lazy-pages daemon put its socket).
        let hold = crate::hold::Hold::prepare(&images_dir.join("hold"))?;
        if lazy {
            hold.also("lazy-pages")?;
        }
        if let Some(y) = crate::cgyard::system_yard() {
            hold.also(&crate::cgyard::config_line(&y))?;
        }
        let conf = hold.criu_config();
        let env = [("CRIU_CONFIG_FILE", conf.as_os_str())];
        let limits = crate::tool::Limits {
            first_on_path: self.criu_dir.as_deref(),
            env: &env,
            ..crate::tool::Limits::default()
        };
        let held = hold.start(Path::new("lxc-checkpoint"), &a, limits)?;
        let pid = held.pid();
        self.held.put(held);
        Ok(pid)
    }

    /// Lets the held restore go on: CRIU resumes the container and
    /// `lxc-checkpoint -r` ends, the container RUNNING for LXC.
    fn commit(&self) -> Result<()> {
        match self.held.take() {
            Some(h) => h.release(),
            None => Ok(()),
        }
    }

    fn start_here(&self, dir: &Path) -> Result<i32> {
        self.install_config(dir)?;
        self.start()?;
        self.init_pid()
    }

    fn abort(&self) -> Result<()> {
        if let Some(h) = self.held.take() {
            // CRIU kills the container it holds, which never ran.
            h.cancel();
        }
        if !self.dir().exists() {
            return Ok(());
        }
        let _ = lxc("lxc-stop", &self.args(&["-k"]));
        std::fs::remove_dir_all(self.dir()).map_err(|source| Error::Io {
            what: format!("removing {}", self.dir().display()),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_with_shell_characters_spaces_or_slashes_are_refused() {
        for bad in [
            "",
            "a;reboot",
            "$(id)",
            "a b",
            "a/b",
            "../x",
            ".hidden",
            "-x",
            "x`y`",
            "é",
            &"x".repeat(65),
        ] {
            assert!(
                matches!(validate_name(bad), Err(Error::BadParam { .. })),
                "{bad:?}"
            );
        }
        for good in ["ct1", "web-01", "a.b_c", "9lives"] {
            validate_name(good).unwrap();
        }
    }

    #[test]
    fn a_missing_container_or_a_relative_lxcpath_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        assert!(matches!(
            Lxc::source("nosuch", dir.path()),
            Err(Error::BadParam { .. })
        ));
        assert!(matches!(
            Lxc::source("ct", Path::new("relative")),
            Err(Error::BadParam { .. })
        ));
        assert!(matches!(
            Lxc::source("ct", Path::new("/a/../b")),
            Err(Error::BadParam { .. })
        ));
        let params = BTreeMap::from([("name".to_string(), "ct;x".to_string())]);
        assert!(Lxc::target(&params, dir.path()).is_err());
        std::fs::create_dir(dir.path().join("taken")).unwrap();
        let params = BTreeMap::from([("name".to_string(), "taken".to_string())]);
        assert!(matches!(
            Lxc::target(&params, dir.path()),
            Err(Error::BadParam { .. })
        ));
    }

    #[test]
    fn config_values_and_bind_mounts_are_read_like_lxc() {
        let cfg = "lxc.rootfs.path = dir:/var/lib/lxc/a/rootfs\nlxc.mount.entry = /usr/lib lib none ro,bind 0 0\nlxc.mount.entry = shm dev/shm tmpfs defaults 0 0\n";
        assert_eq!(
            config_value(cfg, "lxc.rootfs.path").as_deref(),
            Some("dir:/var/lib/lxc/a/rootfs")
        );
        assert_eq!(config_value(cfg, "lxc.nothing"), None);
    }
}
