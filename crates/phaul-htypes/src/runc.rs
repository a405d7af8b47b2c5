//! The `runc` htype: a runc container with its bundle.
//!
//! runc runs CRIU itself, so this kind makes its own final dump: the
//! container is paused (its freezer cgroup), then `runc checkpoint
//! --leave-running` dumps it and leaves it alive and paused, which holds
//! the source as a held `post-dump` would; the bundle travels with
//! `phaul-fs`; the target gives the bundle a cgroup path of its own and
//! `runc restore -d` brings the container up there, known to runc, but
//! held: the CRIU configuration the bundle's `org.criu.config` annotation
//! names has an action script that stops the restore at `post-restore`
//! (see `hold.rs`), so the copy runs only at the commit
//! ([`TargetHooks::commit`]) and a rollback's `abort` has CRIU kill a copy
//! that never ran. After the commit the source's container is killed and
//! deleted; before it, a failure resumes it (`runc resume`), and nothing
//! has diverged.
//!
//! Container ids are checked (letters, digits, `.`, `_`, `-`) and every
//! command is an argument vector. CRIU is named to runc explicitly
//! (`--criu`), because a `criu` earlier on `PATH` may be an old one.
//!
//! The container's network, by what its `config.json` says:
//! - a network namespace of its own (no `path`, runc's default): runc has
//!   CRIU recreate it empty, so the restored container's loopback would be
//!   down and CRIU could not restore a connection over it ("Network is
//!   unreachable"). runc runs the bundle's prestart hooks when CRIU has made
//!   the namespaces (its `setup-namespaces` notification), so the target's
//!   copy of `config.json` gets one that brings loopback up then; the
//!   container's connections over loopback move with it
//!   (`--tcp-established`).
//! - a network namespace named by `path` (made by the orchestrator, e.g.
//!   with CNI): runc joins the namespace at that path on the target, which
//!   must exist there with the container's addresses; its TCP connections
//!   move with it. The target refuses a bundle whose path does not exist
//!   before anything is frozen. phaul locks that namespace itself on both
//!   hosts, so runc's CRIU is told to skip its own lock (`network-lock
//!   skip`, through `CRIU_CONFIG_FILE` on the source and the hold's
//!   configuration on the target).
//! - the host's network (no network namespace): connections move as for a
//!   `pid` tree in its host's namespace.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::registry::Paths;
use crate::{Caps, DumpBy, Error, Htype, RestoreBy, Result, SourceHooks, TargetHooks};

/// A runc container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Runc {
    id: String,
    /// runc's state directory (`runc --root`).
    root: PathBuf,
    /// The bundle: on the source, where runc says it is; on the target,
    /// where it is being synced to.
    bundle: PathBuf,
    runc: PathBuf,
    criu: PathBuf,
    /// The network namespace its config joins by path, if any.
    netns_path: Option<String>,
    /// On the target, between the restore and the commit: the restore,
    /// held before the container runs (see `hold.rs`).
    held: crate::hold::Slot,
}

/// Where a container's network comes from (see the module docs).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Network {
    /// A namespace of its own, made by runc.
    Own,
    /// The namespace at this path, made by someone else.
    Path(String),
    /// The host's.
    Host,
}

fn network_of(config: &serde_json::Value) -> Network {
    let spaces = config["linux"]["namespaces"].as_array();
    let net = spaces.and_then(|a| a.iter().find(|n| n["type"] == "network"));
    match net.map(|n| n["path"].as_str().unwrap_or("")) {
        None => Network::Host,
        Some("") => Network::Own,
        Some(p) => Network::Path(p.to_string()),
    }
}

/// Locks (`on`) or unlocks the network namespace at `path`: every packet
/// but loopback's is dropped, both ways (IPv4 and IPv6), by rules marked
/// `phaul-lock`.
///
/// Why: `runc checkpoint --leave-running`, which keeps the source whole
/// until the target runs, has CRIU unlock the network when its dump ends. A
/// namespace that is the container's own dies with it, but a namespace
/// named by path (the orchestrator's) lives on: its kernel would take the
/// clients' packets into the paused source's sockets (data the target never
/// gets) and answer them with resets when the source is killed. So it is
/// locked once paused, before the dump; a rollback unlocks it, and after a
/// migration it stays locked for the orchestrator to remove.
fn lock_netns(path: &str, on: bool) -> Result<()> {
    let verb = if on { "-I" } else { "-D" };
    let rules = format!(
        "*filter\n{verb} INPUT ! -i lo -m comment --comment phaul-lock -j DROP\n\
         {verb} OUTPUT ! -o lo -m comment --comment phaul-lock -j DROP\nCOMMIT\n"
    );
    let ns = format!("--net={path}");
    for tool in ["iptables-restore", "ip6tables-restore"] {
        let args = [
            OsStr::new(&ns),
            OsStr::new(tool),
            OsStr::new("-w"),
            OsStr::new("--noflush"),
        ];
        let limits = crate::tool::Limits {
            input: Some(rules.as_bytes()),
            ..crate::tool::Limits::default()
        };
        crate::tool::exec(Path::new("nsenter"), &args, limits)?;
    }
    tracing::info!(netns = %path, locked = on, "the container's network namespace");
    Ok(())
}

/// CRIU's configuration line that leaves the network unlocked: for a
/// namespace phaul locks itself (see `Runc::criu_lines`).
const NETWORK_LOCK_SKIP: &str = "network-lock skip";

/// The environment that has runc's CRIU read `conf` (CRIU reads the file
/// `CRIU_CONFIG_FILE` names also in runc's `swrk` mode, before runc's
/// options, which set no network lock).
fn config_env(conf: Option<&Path>) -> Vec<(&'static str, &OsStr)> {
    conf.map(|c| ("CRIU_CONFIG_FILE", c.as_os_str()))
        .into_iter()
        .collect()
}

/// The prestart hook that brings loopback up in a restored container's new
/// network namespace. runc hands a hook the container's state (JSON, with
/// its `pid`) on stdin; the script is fixed text, nothing of a user's or a
/// peer's is in it.
const LOOPBACK_HOOK: &str = r#"read -r state; pid=${state#*\"pid\":}; pid=${pid%%[,\}]*}; exec nsenter --net=/proc/$pid/ns/net ip link set lo up"#;

/// Adds [`LOOPBACK_HOOK`] to a bundle's prestart hooks, once.
fn add_loopback_hook(config: &mut serde_json::Value) {
    let hook = serde_json::json!({
        "path": "/bin/sh",
        "args": ["sh", "-c", LOOPBACK_HOOK],
    });
    let hooks = &mut config["hooks"]["prestart"];
    if !hooks.is_array() {
        *hooks = serde_json::Value::Array(Vec::new());
    }
    if let Some(list) = hooks.as_array_mut() {
        if !list.contains(&hook) {
            list.push(hook);
        }
    }
}

/// Checks a container id: 1 to 128 characters of `[A-Za-z0-9._-]`,
/// starting with a letter or a digit.
pub fn validate_id(id: &str) -> Result<()> {
    crate::check_name("container id", id, 128)
}

impl Runc {
    fn run(&self, args: &[&OsStr]) -> Result<String> {
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), self.root.as_os_str()];
        all.extend_from_slice(args);
        crate::tool::run(&self.runc, &all)
    }

    /// `runc state`: the container's status, PID and bundle.
    fn state(&self) -> Result<(String, i32, PathBuf)> {
        let out = self.run(&[OsStr::new("state"), OsStr::new(&self.id)])?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| Error::BadParam {
            name: "container",
            value: self.id.clone(),
            reason: format!("runc state is not JSON: {e}"),
        })?;
        let status = v["status"].as_str().unwrap_or("").to_string();
        let pid = v["pid"]
            .as_i64()
            .and_then(|p| i32::try_from(p).ok())
            .unwrap_or(0);
        let bundle = PathBuf::from(v["bundle"].as_str().unwrap_or(""));
        Ok((status, pid, bundle))
    }

    /// The source side: container `id` in runc's state dir, which must
    /// exist and run.
    pub fn source(id: &str, paths: &Paths) -> Result<Self> {
        validate_id(id)?;
        let mut me = Self {
            id: id.to_string(),
            root: paths.runc_root.clone(),
            bundle: PathBuf::new(),
            runc: paths.runc.clone(),
            criu: paths.criu.clone(),
            netns_path: None,
            held: crate::hold::Slot::default(),
        };
        let (status, _, bundle) = me.state().map_err(|_| Error::BadParam {
            name: "container",
            value: id.to_string(),
            reason: format!(
                "runc knows no such container (state dir {})",
                paths.runc_root.display()
            ),
        })?;
        if status != "running" {
            return Err(Error::BadParam {
                name: "container",
                value: id.to_string(),
                reason: format!("it is {status}, not running"),
            });
        }
        let config = std::fs::read(bundle.join("config.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if let Some(Network::Path(p)) = config.as_ref().map(network_of) {
            me.netns_path = Some(p);
        }
        me.bundle = bundle;
        Ok(me)
    }

    /// The target side: the bundle goes to `runc_bundles/ID`, which must
    /// not exist yet.
    pub fn target(params: &BTreeMap<String, String>, paths: &Paths) -> Result<Self> {
        let id = params.get("id").ok_or_else(|| Error::BadParam {
            name: "container id",
            value: String::new(),
            reason: "missing".into(),
        })?;
        validate_id(id)?;
        let netns_path = params.get("netns_path").cloned();
        if let Some(p) = &netns_path {
            // runc joins it on restore: without it there the restore would
            // fail after the freeze.
            if !p.starts_with('/') || p.split('/').any(|c| c == "..") || !Path::new(p).exists() {
                return Err(Error::BadParam {
                    name: "network namespace",
                    value: p.clone(),
                    reason: "the container's config joins it by path, and this host has none there"
                        .into(),
                });
            }
        }
        let bundle = paths.runc_bundles.join(id);
        if bundle.exists() {
            return Err(Error::BadParam {
                name: "container",
                value: id.clone(),
                reason: format!("{} already exists", bundle.display()),
            });
        }
        Ok(Self {
            id: id.clone(),
            root: paths.runc_root.clone(),
            bundle,
            runc: paths.runc.clone(),
            criu: paths.criu.clone(),
            netns_path,
            held: crate::hold::Slot::default(),
        })
    }

    /// Lets the named namespace's traffic through again (a rollback).
    /// Pauses it and then locks its network, for a checkpoint by runc;
    /// resumed again if the lock fails.
    ///
    /// In that order, as CRIU does: what clients send while it pauses is
    /// still taken into its sockets (and acknowledged), which the dump then
    /// holds, rather than dropped, so a client that sent a request then
    /// has no reason to retransmit into a locked namespace and back off.
    fn pause(&self) -> Result<()> {
        self.run(&[OsStr::new("pause"), OsStr::new(&self.id)])?;
        if let Some(p) = &self.netns_path {
            if let Err(e) = lock_netns(p, true) {
                let _ = self.run(&[OsStr::new("resume"), OsStr::new(&self.id)]);
                return Err(e);
            }
        }
        Ok(())
    }

    /// A runc command that runs CRIU (`checkpoint`, `restore`), with its
    /// own first option: our CRIU, and what both ends need alike
    /// (established TCP connections, file locks).
    fn criu_command<'a>(&'a self, action: &'static str, first: &'a OsStr) -> Vec<&'a OsStr> {
        vec![
            OsStr::new("--criu"),
            self.criu.as_os_str(),
            OsStr::new(action),
            first,
            OsStr::new("--tcp-established"),
            OsStr::new("--file-locks"),
        ]
    }

    /// `runc checkpoint`'s arguments, with `extra` options.
    fn checkpoint_args<'a>(
        &'a self,
        images_dir: &'a Path,
        work_dir: &'a Path,
        extra: &[&'a OsStr],
    ) -> Vec<&'a OsStr> {
        let mut v = self.criu_command("checkpoint", OsStr::new("--leave-running"));
        v.extend_from_slice(extra);
        v.extend([
            OsStr::new("--image-path"),
            images_dir.as_os_str(),
            OsStr::new("--work-path"),
            work_dir.as_os_str(),
            OsStr::new(&self.id),
        ]);
        v
    }

    /// What runc's CRIU is told beyond runc's own options, as lines of a
    /// CRIU configuration (see [`Self::source_config`]):
    /// - for a namespace joined by path, which phaul locks itself (see
    ///   [`lock_netns`]), to skip CRIU's own lock. CRIU would lock each
    ///   connection with iptables rules as it dumps and unlock them when
    ///   `--leave-running` ends the dump; inside phaul's whole-namespace
    ///   lock both are redundant, and measured (a real test's container,
    ///   one connection) the unlock alone took 54 ms of a 303 ms dump, all
    ///   of it downtime.
    /// - the system's cgroup yard, when it is one (see `cgyard.rs`), so
    ///   that CRIU does not mount every hierarchy again.
    fn criu_lines(&self, yard: Option<&Path>) -> Vec<String> {
        let mut lines = Vec::new();
        if self.netns_path.is_some() {
            lines.push(NETWORK_LOCK_SKIP.to_owned());
        }
        lines.extend(yard.map(crate::cgyard::config_line));
        lines
    }

    /// The source's CRIU configuration ([`Self::criu_lines`]) in
    /// `work_dir`, if it has anything to say. runc runs CRIU with the
    /// environment it has, and CRIU reads the file `CRIU_CONFIG_FILE` names
    /// before runc's options (which set neither). (runc reads a
    /// configuration of its own after that, which wins:
    /// `/etc/criu/runc.conf`, or the one the container's `org.criu.config`
    /// annotation names.)
    fn source_config(&self, work_dir: &Path, yard: Option<&Path>) -> Result<Option<PathBuf>> {
        let lines = self.criu_lines(yard);
        if lines.is_empty() {
            return Ok(None);
        }
        let conf = work_dir.join("phaul-criu.conf");
        let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
        std::fs::create_dir_all(work_dir)
            .and_then(|()| std::fs::write(&conf, text))
            .map_err(|source| Error::Io {
                what: format!("writing {}", conf.display()),
                source,
            })?;
        Ok(Some(conf))
    }

    fn unlock(&self) {
        if let Some(p) = &self.netns_path {
            if let Err(e) = lock_netns(p, false) {
                tracing::warn!(netns = %p, error = %e, "could not unlock the container's network");
            }
        }
    }

    fn kill_and_delete(&self) {
        let _ = self.run(&[OsStr::new("kill"), OsStr::new(&self.id), OsStr::new("KILL")]);
        let _ = self.run(&[OsStr::new("delete"), OsStr::new("-f"), OsStr::new(&self.id)]);
    }
}

impl Htype for Runc {
    fn kind(&self) -> &'static str {
        "runc"
    }

    fn caps(&self) -> Caps {
        // runc checkpoints and restores its containers itself: in one
        // stop-and-copy step, or lazily (post-copy).
        Caps {
            pre_dump: false,
            lazy_restore: true,
            dump_by: DumpBy::Manager,
            restore_by: RestoreBy::Manager,
            restart: false,
        }
    }

    fn params(&self) -> BTreeMap<String, String> {
        let mut p = BTreeMap::from([("id".to_string(), self.id.clone())]);
        if let Some(n) = &self.netns_path {
            p.insert("netns_path".into(), n.clone());
        }
        p
    }

    fn fs_root(&self) -> Option<PathBuf> {
        Some(self.bundle.clone())
    }
}

impl SourceHooks for Runc {
    fn root_pid(&self) -> Result<i32> {
        Ok(self.state()?.1)
    }

    fn check(&self) -> Result<()> {
        match self.state()?.0.as_str() {
            "running" => Ok(()),
            s => Err(Error::BadParam {
                name: "container",
                value: self.id.clone(),
                reason: format!("it is {s}, not running"),
            }),
        }
    }

    fn dump_self(&self, images_dir: &Path, work_dir: &Path) -> Result<()> {
        let conf = self.source_config(work_dir, crate::cgyard::system_yard().as_deref())?;
        self.pause()?;
        let mut args = vec![OsStr::new("--root"), self.root.as_os_str()];
        args.extend(self.checkpoint_args(images_dir, work_dir, &[]));
        let env = config_env(conf.as_deref());
        let limits = crate::tool::Limits {
            env: &env,
            ..crate::tool::Limits::default()
        };
        let r = crate::tool::exec(&self.runc, &args, limits);
        if r.is_err() {
            // A failed checkpoint leaves it paused: running again before
            // the error goes up.
            let _ = self.resume_source();
        }
        r.map(drop)
    }

    fn dump_self_lazy(
        &self,
        images_dir: &Path,
        work_dir: &Path,
        port: u16,
    ) -> Result<crate::Running> {
        let conf = self.source_config(work_dir, crate::cgyard::system_yard().as_deref())?;
        self.pause()?;
        let server = format!("127.0.0.1:{port}");
        let lazy = [
            OsStr::new("--lazy-pages"),
            OsStr::new("--page-server"),
            OsStr::new(&server),
            OsStr::new("--status-fd"),
            OsStr::new(crate::tool::STATUS_FD),
        ];
        let mut args = vec![OsStr::new("--root"), self.root.as_os_str()];
        args.extend(self.checkpoint_args(images_dir, work_dir, &lazy));
        let env = config_env(conf.as_deref());
        let limits = crate::tool::Limits {
            env: &env,
            ..crate::tool::Limits::default()
        };
        let r = crate::tool::spawn_ready(&self.runc, &args, limits);
        if r.is_err() {
            let _ = self.resume_source();
        }
        r
    }

    fn resume_source(&self) -> Result<()> {
        let r = self
            .run(&[OsStr::new("resume"), OsStr::new(&self.id)])
            .map(drop);
        self.unlock();
        r
    }

    fn cleanup_source(&self) -> Result<()> {
        self.kill_and_delete();
        Ok(())
    }
}

impl TargetHooks for Runc {
    fn restore(&self, images_dir: &Path, lazy: bool) -> Result<i32> {
        // The source's cgroup may still exist (it is frozen there):
        // this copy gets a path of its own.
        let config = self.bundle.join("config.json");
        let text = std::fs::read_to_string(&config).map_err(|source| Error::Io {
            what: format!("reading {}", config.display()),
            source,
        })?;
        let mut v: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| Error::BadParam {
                name: "config.json",
                value: config.display().to_string(),
                reason: e.to_string(),
            })?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        v["linux"]["cgroupsPath"] =
            serde_json::Value::String(format!("/phaul/{}-{nanos}", self.id));
        if network_of(&v) == Network::Own {
            add_loopback_hook(&mut v);
        }
        // runc passes the CRIU configuration this annotation names on to
        // its CRIU: ours holds the restored container until the commit.
        let hold = crate::hold::Hold::prepare(&images_dir.join("hold"))?;
        // As on the source: no lock of CRIU's own where phaul locks (below),
        // and the system's cgroup yard where it is one.
        for line in self.criu_lines(crate::cgyard::system_yard().as_deref()) {
            hold.also(&line)?;
        }
        v["annotations"]["org.criu.config"] =
            serde_json::Value::String(hold.criu_config().display().to_string());
        std::fs::write(&config, serde_json::to_vec_pretty(&v).unwrap_or_default()).map_err(
            |source| Error::Io {
                what: format!("writing {}", config.display()),
                source,
            },
        )?;
        // Lazily, CRIU finds the engine's lazy-pages daemon by its socket
        // in the work dir, which the daemon shares with the images.
        let work = match lazy {
            true => images_dir.to_path_buf(),
            false => images_dir.join("restore-work"),
        };
        std::fs::create_dir_all(&work).map_err(|source| Error::Io {
            what: "a work dir".into(),
            source,
        })?;
        let mut args = self.criu_command("restore", OsStr::new("-d"));
        if lazy {
            args.push(OsStr::new("--lazy-pages"));
        }
        args.extend([
            OsStr::new("--image-path"),
            images_dir.as_os_str(),
            OsStr::new("--work-path"),
            work.as_os_str(),
            OsStr::new("--bundle"),
            self.bundle.as_os_str(),
            OsStr::new(&self.id),
        ]);
        let mut all: Vec<&OsStr> = vec![OsStr::new("--root"), self.root.as_os_str()];
        all.extend_from_slice(&args);
        // A namespace of the orchestrator's is locked here as on the source
        // until the commit: it may join the LAN while the copy is held (see
        // `Migration::switchover`), and its kernel must not answer the
        // clients for sockets still in repair mode.
        if let Some(p) = &self.netns_path {
            lock_netns(p, true)?;
        }
        let held = match hold.start(&self.runc, &all, crate::tool::Limits::default()) {
            Ok(h) => h,
            Err(e) => {
                self.unlock();
                return Err(e);
            }
        };
        let pid = held.pid();
        self.held.put(held);
        Ok(pid)
    }

    /// Lets the held restore go on: the namespace unlocked first (as CRIU
    /// unlocks before it takes sockets out of repair mode), then CRIU
    /// resumes the container and `runc restore` ends.
    fn commit(&self) -> Result<()> {
        let Some(h) = self.held.take() else {
            return Ok(());
        };
        if let Some(p) = &self.netns_path {
            if let Err(e) = lock_netns(p, false) {
                h.cancel();
                return Err(e);
            }
        }
        h.release()
    }

    fn abort(&self) -> Result<()> {
        if let Some(h) = self.held.take() {
            // CRIU kills what it holds; runc then has no container.
            h.cancel();
            self.unlock();
        }
        self.kill_and_delete();
        if self.bundle.exists() {
            std::fs::remove_dir_all(&self.bundle).map_err(|source| Error::Io {
                what: format!("removing {}", self.bundle.display()),
                source,
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_with_shell_characters_or_slashes_are_refused() {
        for bad in [
            "",
            "a;b",
            "$(id)",
            "a b",
            "a/b",
            "../x",
            "-x",
            ".x",
            &"x".repeat(129),
        ] {
            assert!(validate_id(bad).is_err(), "{bad:?}");
        }
        for good in ["web", "ct-1.a_b", "9"] {
            validate_id(good).unwrap();
        }
    }

    #[test]
    fn the_network_comes_from_the_config() {
        let own =
            serde_json::json!({"linux": {"namespaces": [{"type": "pid"}, {"type": "network"}]}});
        let path = serde_json::json!({"linux": {"namespaces": [{"type": "network", "path": "/run/netns/ct1"}]}});
        let host = serde_json::json!({"linux": {"namespaces": [{"type": "pid"}]}});
        assert_eq!(network_of(&own), Network::Own);
        assert_eq!(network_of(&path), Network::Path("/run/netns/ct1".into()));
        assert_eq!(network_of(&host), Network::Host);
    }

    #[test]
    fn the_loopback_hook_is_added_once_beside_the_bundles_own() {
        let mut v = serde_json::json!({"hooks": {"prestart": [{"path": "/bin/true"}]}});
        add_loopback_hook(&mut v);
        add_loopback_hook(&mut v);
        let list = v["hooks"]["prestart"].as_array().unwrap();
        assert_eq!(list.len(), 2);
        assert_eq!(list[1]["args"][2], LOOPBACK_HOOK);
        let mut bare = serde_json::json!({});
        add_loopback_hook(&mut bare);
        assert_eq!(bare["hooks"]["prestart"].as_array().unwrap().len(), 1);
    }

    #[test]
    fn criu_skips_its_own_lock_only_in_a_namespace_phaul_locks() {
        let paths = Paths {
            runc_bundles: std::env::temp_dir().join("phaul-no-such-bundles"),
            ..Paths::default()
        };
        let work = tempfile::tempdir().unwrap();
        let params = |ns: Option<&str>| {
            let mut p = BTreeMap::from([("id".to_string(), "web".to_string())]);
            if let Some(ns) = ns {
                p.insert("netns_path".to_string(), ns.to_string());
            }
            p
        };
        let yard = Path::new("/sys/fs/cgroup");
        let joined = Runc::target(&params(Some("/proc/self/ns/net")), &paths).unwrap();
        let conf = joined
            .source_config(work.path(), Some(yard))
            .unwrap()
            .unwrap();
        assert_eq!(
            std::fs::read_to_string(&conf).unwrap(),
            "network-lock skip\ncgroup-yard /sys/fs/cgroup\n"
        );
        assert_eq!(
            config_env(Some(&conf)),
            vec![("CRIU_CONFIG_FILE", conf.as_os_str())]
        );
        let own = Runc::target(&params(None), &paths).unwrap();
        assert_eq!(own.criu_lines(Some(yard)), ["cgroup-yard /sys/fs/cgroup"]);
        assert_eq!(own.source_config(work.path(), None).unwrap(), None);
        assert!(config_env(None).is_empty());
    }

    #[test]
    fn a_target_without_the_named_network_namespace_refuses_before_the_freeze() {
        let paths = Paths {
            runc_bundles: std::env::temp_dir().join("phaul-no-such-bundles"),
            ..Paths::default()
        };
        for bad in ["/run/netns/phaul-no-such-ns", "relative", "/run/netns/../x"] {
            let p = BTreeMap::from([
                ("id".to_string(), "web".to_string()),
                ("netns_path".to_string(), bad.to_string()),
            ]);
            let e = Runc::target(&p, &paths).unwrap_err();
            assert!(e.to_string().contains("network namespace"), "{bad}: {e}");
        }
        let p = BTreeMap::from([
            ("id".to_string(), "web".to_string()),
            ("netns_path".to_string(), "/proc/self/ns/net".to_string()),
        ]);
        assert_eq!(
            Runc::target(&p, &paths).unwrap().params()["netns_path"],
            "/proc/self/ns/net"
        );
    }
}
