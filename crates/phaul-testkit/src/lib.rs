//! Test fixtures for phaul's tests that run real CRIU.
//!
//! Real tests need root and CRIU >= 4. [`require_criu`] decides: when they
//! are missing, a test is skipped with a message — except under `CI`, where
//! a missing dependency is a failure, so CI never goes green by skipping.
//!
//! # Layout
//! - [`require_criu`], [`require_root`], [`require_program`]: the gate,
//!   all saying why through [`unavailable`].
//! - [`Workload`]: a real process in its own PID namespace that holds memory
//!   with a known pattern and keeps a counter, so a test can check that its
//!   state survived a dump and restore.
//! - [`Hosts`]: two "hosts", network namespaces joined by a veth pair, and
//!   [`in_netns`] to run code inside one; [`Hosts::with_lan`] puts them on
//!   a LAN with a client host instead.
//! - [`lan`]: that LAN, a [`lan::ServiceTree`] (a server with a network
//!   namespace and address of its own) and a [`lan::LanClient`] that keeps
//!   one connection to it and measures its stalls.
//! - [`runc`]: a runc container's bundle running redis, in a network
//!   namespace named by path as an orchestrator makes one.
//! - [`link`]: a connected pair of links and incompressible bytes, for
//!   tests of what travels on a link.
//! - [`process_state`], [`kill_tree`], [`wait_until`], [`last_number_in`]:
//!   small /proc and file helpers.

pub mod lan;
pub mod link;
pub mod runc;

pub use link::{link_config, link_pair, noise};

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The workload's source; run with `python3`.
pub const WORKLOAD_PY: &str = include_str!("workload.py");

/// Whether this process is root.
pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn criu_major(binary: &Path) -> Option<u32> {
    let out = Command::new(binary).arg("--version").output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))?
        .trim();
    v.split('.').next()?.parse().ok()
}

/// Returns the CRIU binary when real tests can run here. Otherwise: under
/// `CI` it panics (a missing dependency must fail CI), elsewhere it prints
/// why the test is skipped and returns `None`.
pub fn require_criu(test: &str) -> Option<PathBuf> {
    let why = if !is_root() {
        "not running as root".to_string()
    } else {
        let bin = criu_rpc::default_binary();
        match criu_major(&bin) {
            Some(m) if m >= 4 => return Some(bin),
            Some(m) => format!("{} is CRIU {m}.x; 4 or newer is needed", bin.display()),
            None => format!("no working CRIU at {}", bin.display()),
        }
    };
    unavailable(
        test,
        &format!("root and CRIU >= 4 ({why})"),
        "run scripts/setup.sh as root",
    );
    None
}

/// Whether this test can run as root (to chown, make device nodes, enter
/// namespaces); gated as [`require_criu`].
pub fn require_root(test: &str) -> bool {
    if is_root() {
        return true;
    }
    unavailable(test, "root (not running as root)", "run the tests as root");
    false
}

/// Whether `program` runs here (`program --version` succeeds); gated as
/// [`require_criu`], `hint` saying how to install it.
pub fn require_program(test: &str, program: &str, hint: &str) -> bool {
    let runs = Command::new(program)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !runs {
        unavailable(test, &format!("{program} (it does not run)"), hint);
    }
    runs
}

/// A test cannot run for want of `what`: under `CI` that is a failure;
/// elsewhere the test is skipped with a line saying why and what to do.
pub fn unavailable(test: &str, what: &str, hint: &str) {
    assert!(
        std::env::var_os("CI").is_none(),
        "{test}: CI requires {what}; {hint}"
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!("SKIPPED {test}: needs {what}; {hint}");
    }
}

/// Spawns `cmd` (an `unshare`) with no stdio, in `dir`: CRIU's parasite
/// makes a fixed-name directory in a task's working directory to mount
/// /proc for a task in another PID namespace, so concurrent dumps of tasks
/// sharing a cwd collide. Returns the child and its pid.
pub(crate) fn spawn_in(mut cmd: Command, dir: &Path) -> std::io::Result<(Child, i32)> {
    let child = cmd
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let pid = i32::try_from(child.id()).unwrap_or(0);
    Ok((child, pid))
}

/// The first child of `pid`: for `unshare --fork`, its namespace's init.
pub(crate) fn first_child(pid: i32) -> Option<i32> {
    let kids = fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
    kids.split_whitespace().next()?.parse().ok()
}

/// The number on the last line of `file`: what a workload that logs one
/// number a line (or rewrites one) wrote last. `None` when there is none.
pub fn last_number_in(file: &Path) -> Option<u64> {
    fs::read_to_string(file)
        .ok()?
        .lines()
        .last()?
        .trim()
        .parse()
        .ok()
}

/// Polls `f` every 20 ms until it returns `Some`, or `timeout` passes.
pub fn wait_until<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The one-letter state of a process (`R`, `S`, `t` for a ptrace stop, …),
/// or `None` when it does not exist (or is a zombie, `Z`, which is reported).
pub fn process_state(pid: i32) -> Option<char> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces and parentheses: the state follows
    // the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.trim_start().chars().next()
}

/// Whether `pid` exists and is not a zombie.
pub fn alive(pid: i32) -> bool {
    matches!(process_state(pid), Some(s) if s != 'Z' && s != 'X')
}

/// SIGKILLs `pid` (for the root of a PID namespace, the whole namespace).
pub fn kill_tree(pid: i32) {
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
}

/// A real workload: `python3` running [`WORKLOAD_PY`] as PID 1 of its own
/// PID namespace (so it can be restored on the same host while its old PID
/// is still taken), in its own session, with stdio on `/dev/null` (CRIU
/// cannot dump a process holding our pipes).
#[derive(Debug)]
pub struct Workload {
    dir: tempfile::TempDir,
    unshare: Child,
    /// The host PID of the workload (the PID namespace's init).
    pub pid: i32,
    /// What this run drew at start (see `workload.py`).
    token: String,
    /// PIDs to kill on drop (the original and any restored copies).
    extra: Vec<i32>,
}

impl Workload {
    /// Starts a workload holding `mib` MiB and waits until it is filled.
    pub fn start(mib: u32) -> std::io::Result<Self> {
        Self::start_in(None, mib)
    }

    /// Starts a workload inside network namespace `netns` (a name under
    /// `/run/netns`), or in ours.
    pub fn start_in(netns: Option<&str>, mib: u32) -> std::io::Result<Self> {
        Self::start_with(netns, mib, Duration::from_millis(100))
    }

    /// [`Workload::start_in`], rewriting its counter every `period`
    /// instead of every 100 ms (a benchmark that measures the pause the
    /// workload feels wants a fine tick).
    pub fn start_with(netns: Option<&str>, mib: u32, period: Duration) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("phaul-workload-")
            .tempdir()?;
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755))?;
        let script = dir.path().join("workload.py");
        fs::write(&script, WORKLOAD_PY)?;
        let out = dir.path().join("out");
        let mut cmd = match netns {
            // nsenter execs unshare in place, so the child is still ours.
            Some(ns) => {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("unshare");
                c
            }
            None => Command::new("unshare"),
        };
        cmd.args(["--pid", "--fork", "setsid", "python3"])
            .arg(&script)
            .arg(&out)
            .arg(mib.to_string())
            .arg(period.as_secs_f64().to_string());
        let (mut unshare, uid) = spawn_in(cmd, dir.path())?;
        let ready = out.with_extension("ready");
        let wait = Duration::from_secs(30 + u64::from(mib) / 16);
        let found = wait_until(wait, || {
            if !ready.exists() {
                return None;
            }
            first_child(uid)
        });
        let token = found.and_then(|_| {
            wait_until(wait, || {
                let s = fs::read_to_string(&out).ok()?;
                s.split_whitespace().nth(2).map(str::to_string)
            })
        });
        let (Some(pid), Some(token)) = (found, token) else {
            let _ = unshare.kill();
            let _ = unshare.wait();
            return Err(std::io::Error::other("workload did not become ready"));
        };
        Ok(Self {
            dir,
            unshare,
            pid,
            token,
            extra: Vec::new(),
        })
    }

    /// The directory holding the workload's files.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The counter the workload last wrote; `None` also when it was
    /// written by a process that started afresh rather than this run
    /// carried on (its token differs), so a cold restart never passes for
    /// a migration.
    pub fn counter(&self) -> Option<u64> {
        let s = fs::read_to_string(self.dir.path().join("out")).ok()?;
        let mut f = s.split_whitespace();
        let c = f.next()?.parse().ok()?;
        (f.nth(1)? == self.token).then_some(c)
    }

    /// Waits until the counter moves past `after`.
    pub fn counter_passes(&self, after: u64, timeout: Duration) -> Option<u64> {
        wait_until(timeout, || self.counter().filter(|c| *c > after))
    }

    /// Asks the process `pid` (the workload, or a restored copy) to check
    /// its memory; returns `Some(true)` when the checksum is intact.
    pub fn memory_intact(&self, pid: i32) -> Option<bool> {
        let check = self.dir.path().join("out.check");
        let _ = fs::remove_file(&check);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .ok()?;
        let text = wait_until(Duration::from_secs(60), || fs::read_to_string(&check).ok())?;
        Some(text.starts_with("ok "))
    }

    /// Also kill `pid` (a restored copy) when this is dropped.
    pub fn adopt(&mut self, pid: i32) {
        self.extra.push(pid);
    }

    /// Reaps the `unshare` parent if the workload has ended.
    pub fn reap(&mut self) -> Option<std::process::ExitStatus> {
        self.unshare.try_wait().ok().flatten()
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        end_all(self.pid, &self.extra, &mut self.unshare);
    }
}

/// Kills a tree started under `unshare` (its root `pid`), its restored
/// copies `extra`, and reaps `unshare`.
pub(crate) fn end_all(pid: i32, extra: &[i32], unshare: &mut Child) {
    for p in std::iter::once(pid).chain(extra.iter().copied()) {
        kill_tree(p);
    }
    let _ = unshare.kill();
    let _ = unshare.wait();
}

/// Two "hosts" for migration tests: network namespaces `src` and `tgt`
/// joined by a veth pair, with addresses [`Hosts::src_ip`] and
/// [`Hosts::tgt_ip`]. Removed on drop.
#[derive(Debug)]
pub struct Hosts {
    /// The source's network namespace name.
    pub src: String,
    /// The target's network namespace name.
    pub tgt: String,
    /// The source's address.
    pub src_ip: String,
    /// The target's address.
    pub tgt_ip: String,
    /// The LAN with a client host, for [`Hosts::with_lan`].
    pub lan: Option<lan::Lan>,
}

use lan::ip;

/// Names and a subnet unique to this process and call, so tests can run in
/// parallel: (tag, second octet, third octet).
fn unique_net() -> (u32, u32, u32) {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag = (std::process::id() % 10_000) * 100 + n % 100;
    // 10.(232+k).x.y/24: one subnet per pair.
    (tag, 232 + (tag / 254 / 256) % 20, (tag / 254) % 256)
}

impl Hosts {
    /// Two hosts on a LAN that a client host also sits on (see [`lan`]):
    /// the hosts' addresses are `.1` and `.2` of the LAN, on their bridges.
    pub fn with_lan() -> std::io::Result<Self> {
        let (tag, octet2, octet3) = unique_net();
        let prefix = format!("10.{octet2}.{octet3}");
        let mut hosts = Self {
            src: format!("phs{tag}"),
            tgt: format!("pht{tag}"),
            src_ip: format!("{prefix}.1"),
            tgt_ip: format!("{prefix}.2"),
            lan: None,
        };
        ip(&["netns", "add", &hosts.src])?;
        ip(&["netns", "add", &hosts.tgt])?;
        hosts.lan = Some(lan::build(&hosts.src, &hosts.tgt, tag, &prefix)?);
        Ok(hosts)
    }

    /// The LAN of a [`Hosts::with_lan`] pair.
    pub fn lan(&self) -> &lan::Lan {
        self.lan.as_ref().expect("hosts made with Hosts::with_lan")
    }

    /// Makes a fresh pair joined by one veth; names and subnet are unique
    /// to this process and call, so tests can run in parallel.
    pub fn new() -> std::io::Result<Self> {
        let (tag, octet2, octet3) = unique_net();
        let (src, tgt) = (format!("phs{tag}"), format!("pht{tag}"));
        let (vs, vt) = (format!("pvs{tag}"), format!("pvt{tag}"));
        let (src_ip, tgt_ip) = (
            format!("10.{octet2}.{octet3}.1"),
            format!("10.{octet2}.{octet3}.2"),
        );
        let hosts = Self {
            src: src.clone(),
            tgt: tgt.clone(),
            src_ip: src_ip.clone(),
            tgt_ip: tgt_ip.clone(),
            lan: None,
        };
        ip(&["netns", "add", &src])?;
        ip(&["netns", "add", &tgt])?;
        ip(&["link", "add", &vs, "type", "veth", "peer", "name", &vt])?;
        ip(&["link", "set", &vs, "netns", &src])?;
        ip(&["link", "set", &vt, "netns", &tgt])?;
        ip(&[
            "-n",
            &src,
            "addr",
            "add",
            &format!("{src_ip}/24"),
            "dev",
            &vs,
        ])?;
        ip(&[
            "-n",
            &tgt,
            "addr",
            "add",
            &format!("{tgt_ip}/24"),
            "dev",
            &vt,
        ])?;
        for (ns, dev) in [(&src, &vs), (&tgt, &vt)] {
            ip(&["-n", ns, "link", "set", "lo", "up"])?;
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(hosts)
    }

    /// Whether process `pid` lives in host `ns` (its network namespace).
    pub fn runs_in(ns: &str, pid: i32) -> bool {
        use std::os::unix::fs::MetadataExt;
        let ino = |p: String| fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
        let theirs = ino(format!("/proc/{pid}/ns/net"));
        theirs.is_some() && theirs == ino(format!("/run/netns/{ns}"))
    }

    /// `program` to be run inside host `ns` (argv, no shell).
    pub fn command(ns: &str, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}")).arg(program);
        c
    }

    /// The TCP ports listening inside host `ns`.
    pub fn listening_ports(ns: &str) -> Vec<u16> {
        let out = Self::command(ns, "ss").args(["-Hltn"]).output();
        let Ok(out) = out else { return Vec::new() };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split_whitespace()
                    .nth(3)?
                    .rsplit(':')
                    .next()?
                    .parse()
                    .ok()
            })
            .collect()
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace removes its end of the veth, and with it the
        // other end.
        let _ = ip(&["netns", "del", &self.src]);
        let _ = ip(&["netns", "del", &self.tgt]);
    }
}

/// Runs `f` on a new thread that has entered network namespace `ns`, with
/// its own single-threaded tokio runtime; processes it starts (CRIU) are in
/// that namespace too.
pub fn in_netns<F, Fut, T>(ns: &str, f: F) -> std::thread::JoinHandle<T>
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = T>,
    T: Send + 'static,
{
    let path = format!("/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = fs::File::open(&path).unwrap_or_else(|e| panic!("opening {path}: {e}"));
        nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET)
            .unwrap_or_else(|e| panic!("entering {path}: {e}"));
        let rt = tokio_runtime();
        rt.block_on(f())
    })
}

fn tokio_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// An LXC container for tests, started inside a host (network namespace):
/// LXC's tools reach a container through an abstract Unix socket, which
/// belongs to a network namespace, so every LXC command about it must run
/// in the host that runs it. LXC's busybox template (offline), with the
/// config changes this kind of machine needs (no bridge, no AppArmor, no
/// ttys, `/lib` binds that are not symlinks), running a shell loop that
/// keeps a counter in memory and writes it to `/tmp/count` in its root file
/// system every 0.2 s. Stopped and destroyed on drop, wherever it is then.
#[derive(Debug)]
pub struct LxcContainer {
    /// Its name.
    pub name: String,
    /// The LXC path it was created in.
    pub lxcpath: PathBuf,
    /// The host (network namespace) it runs in, `None` for ours.
    pub netns: Option<String>,
    /// Other (LXC path, host) pairs it may have moved to (cleaned up too).
    pub also: Vec<(PathBuf, Option<String>)>,
}

fn lxc_tool_in(
    netns: Option<&str>,
    tool: &str,
    args: &[&std::ffi::OsStr],
) -> std::io::Result<String> {
    let mut cmd = match netns {
        Some(ns) => Hosts::command(ns, tool),
        None => Command::new(tool),
    };
    // Files, not pipes: LXC's tools leave a monitor daemon behind that
    // inherits them, and a pipe would never reach end-of-file.
    use std::io::{Read, Seek};
    let mut out = tempfile::tempfile()?;
    let mut err = tempfile::tempfile()?;
    let status = cmd
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(err.try_clone()?)
        .status()?;
    let read = |f: &mut fs::File| {
        let mut s = String::new();
        let _ = f.seek(std::io::SeekFrom::Start(0));
        let _ = f.read_to_string(&mut s);
        s
    };
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "{tool}: {}",
            read(&mut err).trim()
        )));
    }
    Ok(read(&mut out))
}

/// A container's network device on its host's bridge, with a fixed MAC and
/// address (LXC's veth type), for [`LxcContainer::start_networked`].
#[derive(Debug, Clone)]
pub struct LxcNet {
    /// The host's bridge.
    pub link: String,
    /// Its MAC.
    pub hwaddr: String,
    /// Its address with prefix length, e.g. `10.1.2.60/24`.
    pub ipv4: String,
}

/// The script the networked container runs its server with: the
/// descriptors lxc-attach hands over are closed first (CRIU cannot dump
/// the host's), then Debian's redis-server (the host's `/usr/bin` is bound
/// in at `/opt/host-bin`) serves
/// on port 6379, as root (see the README on this machine's root), with
/// `DEBUG` allowed so a bench can fill it (`DEBUG POPULATE`).
const REDIS_IN_CONTAINER: &str = "#!/bin/sh\n\
for f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] 2>/dev/null && eval \"exec $n>&-\"; done\n\
exec /opt/host-bin/redis-server --port 6379 --protected-mode no --save '' --appendonly no --enable-debug-command yes\n";

impl LxcContainer {
    /// Creates container `name` in `lxcpath` and starts it, with its
    /// counter, inside host `netns` (or ours).
    pub fn start(netns: Option<&str>, lxcpath: &Path, name: &str) -> std::io::Result<Self> {
        Self::start_with(netns, lxcpath, name, None)
    }

    /// [`LxcContainer::start`] with a network device on the host's bridge
    /// and Debian's redis-server running in it besides the counter.
    pub fn start_networked(
        netns: Option<&str>,
        lxcpath: &Path,
        name: &str,
        net: &LxcNet,
    ) -> std::io::Result<Self> {
        Self::start_with(netns, lxcpath, name, Some(net))
    }

    fn start_with(
        netns: Option<&str>,
        lxcpath: &Path,
        name: &str,
        net: Option<&LxcNet>,
    ) -> std::io::Result<Self> {
        fs::create_dir_all(lxcpath)?;
        let p = lxcpath.as_os_str();
        let me = Self {
            name: name.to_string(),
            lxcpath: lxcpath.to_path_buf(),
            netns: netns.map(str::to_string),
            also: Vec::new(),
        };
        let lxc_tool = |tool: &str, args: &[&std::ffi::OsStr]| lxc_tool_in(netns, tool, args);
        lxc_tool(
            "lxc-create",
            &[
                "-P".as_ref(),
                p,
                "-t".as_ref(),
                "busybox".as_ref(),
                "-n".as_ref(),
                name.as_ref(),
            ],
        )?;
        let dir = lxcpath.join(name);
        let config = fs::read_to_string(dir.join("config"))?;
        let fixed: Vec<String> = config
            .lines()
            .filter(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                !(k == "lxc.net.0.link" || k == "lxc.net.0.flags" || k.starts_with("lxc.apparmor"))
            })
            .map(|l| {
                let k = l.split('=').next().unwrap_or("").trim();
                match k {
                    "lxc.net.0.type" => "lxc.net.0.type = empty".to_string(),
                    "lxc.tty.max" => "lxc.tty.max = 0".to_string(),
                    _ => l
                        .replace(
                            "lxc.mount.entry = /lib lib ",
                            "lxc.mount.entry = /usr/lib lib ",
                        )
                        .replace(
                            "lxc.mount.entry = /lib64 lib64 ",
                            "lxc.mount.entry = /usr/lib64 lib64 ",
                        ),
                }
            })
            .collect();
        let mut fixed = fixed;
        if let Some(n) = net {
            fixed.retain(|l| !l.trim_start().starts_with("lxc.net.0."));
            fixed.extend([
                "lxc.net.0.type = veth".to_string(),
                format!("lxc.net.0.link = {}", n.link),
                "lxc.net.0.flags = up".to_string(),
                format!("lxc.net.0.hwaddr = {}", n.hwaddr),
                format!("lxc.net.0.ipv4.address = {}", n.ipv4),
                // A directory bind, as the template's library binds are
                // (CRIU 4.2.1's mount-v2 fails to restore a file bind here).
                "lxc.mount.entry = /usr/bin opt/host-bin none ro,bind,create=dir 0 0".to_string(),
            ]);
            // The template's rcS asks DHCP for an address and drops the
            // static one.
            let rcs = dir.join("rootfs/etc/init.d/rcS");
            if let Ok(t) = fs::read_to_string(&rcs) {
                let kept: Vec<&str> = t.lines().filter(|l| !l.contains("udhcpc")).collect();
                fs::write(&rcs, kept.join("\n") + "\n")?;
            }
            let script = dir.join("rootfs/bin/redis.sh");
            fs::write(&script, REDIS_IN_CONTAINER)?;
            fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        }
        fs::write(dir.join("config"), fixed.join("\n") + "\n")?;
        let inittab = dir.join("rootfs/etc/inittab");
        if let Ok(t) = fs::read_to_string(&inittab) {
            let kept: Vec<&str> = t.lines().filter(|l| !l.contains("getty")).collect();
            fs::write(&inittab, kept.join("\n") + "\n")?;
        }
        let counter = dir.join("rootfs/bin/counter.sh");
        // lxc-attach hands the attached process descriptors of the host above
        // 2 (a host /dev/null, for one), which CRIU cannot dump: close them.
        fs::write(
            &counter,
            "#!/bin/sh\nfor f in /proc/$$/fd/*; do n=${f##*/}; [ \"$n\" -gt 2 ] 2>/dev/null && eval \"exec $n>&-\"; done\n\
             i=0\nwhile true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done\n",
        )?;
        fs::set_permissions(&counter, fs::Permissions::from_mode(0o755))?;
        lxc_tool(
            "lxc-start",
            &["-P".as_ref(), p, "-n".as_ref(), name.as_ref()],
        )?;
        lxc_tool(
            "lxc-wait",
            &[
                "-P".as_ref(),
                p,
                "-n".as_ref(),
                name.as_ref(),
                "-s".as_ref(),
                "RUNNING".as_ref(),
                "-t".as_ref(),
                "20".as_ref(),
            ],
        )?;
        // stdio inside the container must not be ours (CRIU cannot dump a
        // process holding the harness's files).
        let detach = |script: &str| {
            let cmd = format!("exec </dev/null >/dev/null 2>/dev/null; setsid {script} &");
            let args = [
                "-P".as_ref(),
                p,
                "-n".as_ref(),
                name.as_ref(),
                "--".as_ref(),
            ];
            let tail = [
                "/bin/sh".as_ref(),
                "-c".as_ref(),
                std::ffi::OsStr::new(&cmd),
            ];
            lxc_tool("lxc-attach", &[&args[..], &tail[..]].concat())
        };
        detach("/bin/counter.sh")?;
        if net.is_some() {
            detach("/bin/redis.sh")?;
        }
        let count = me.count_file();
        wait_until(Duration::from_secs(20), || {
            fs::read_to_string(&count).ok().filter(|s| s.trim() != "0")
        })
        .ok_or_else(|| std::io::Error::other("the container's counter did not start"))?;
        Ok(me)
    }

    /// The counter file inside its root file system (in `lxcpath`).
    pub fn count_file(&self) -> PathBuf {
        Self::count_file_in(&self.lxcpath, &self.name)
    }

    /// The counter file of container `name` in `lxcpath`.
    pub fn count_file_in(lxcpath: &Path, name: &str) -> PathBuf {
        lxcpath.join(name).join("rootfs/tmp/count")
    }

    /// The counter's value as written in `lxcpath`'s copy. The shell's
    /// `echo > file` truncates before it writes, so a read can fall in
    /// between and find the file empty: such a read is retried for up to a
    /// second.
    pub fn counter_in(lxcpath: &Path, name: &str) -> Option<u64> {
        let file = Self::count_file_in(lxcpath, name);
        wait_until(Duration::from_secs(1), || last_number_in(&file))
    }

    /// LXC's state for container `name` in `lxcpath`, asked inside host
    /// `netns` (`RUNNING`, ...), or `None` if LXC does not know it.
    pub fn state_in(netns: Option<&str>, lxcpath: &Path, name: &str) -> Option<String> {
        lxc_tool_in(
            netns,
            "lxc-info",
            &[
                "-P".as_ref(),
                lxcpath.as_os_str(),
                "-n".as_ref(),
                name.as_ref(),
                "-sH".as_ref(),
            ],
        )
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
    }
}

/// Removes the empty cgroup directories LXC made for container `name`
/// (`lxc.monitor.NAME*`, `lxc.payload.NAME*`) in every v1 hierarchy.
pub fn remove_lxc_cgroups(name: &str) {
    let Ok(hierarchies) = fs::read_dir("/sys/fs/cgroup") else {
        return;
    };
    for h in hierarchies.flatten() {
        let Ok(entries) = fs::read_dir(h.path()) else {
            continue;
        };
        for e in entries.flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            let mine = ["lxc.monitor.", "lxc.payload."].iter().any(|p| {
                n.strip_prefix(p).is_some_and(|rest| {
                    rest == name || rest.strip_prefix(name).is_some_and(|s| s.starts_with('-'))
                })
            });
            if mine {
                let _ = fs::remove_dir(e.path());
            }
        }
    }
}

impl Drop for LxcContainer {
    fn drop(&mut self) {
        for (p, ns) in std::iter::once((&self.lxcpath, &self.netns))
            .chain(self.also.iter().map(|(p, n)| (p, n)))
        {
            let args: [&std::ffi::OsStr; 5] = [
                "-P".as_ref(),
                p.as_os_str(),
                "-n".as_ref(),
                self.name.as_ref(),
                "-k".as_ref(),
            ];
            let _ = lxc_tool_in(ns.as_deref(), "lxc-stop", &args);
            let _ = lxc_tool_in(ns.as_deref(), "lxc-destroy", &args[..4]);
        }
        // LXC can leave its cgroups behind (the monitor's, a second copy's
        // `-1`): remove the empty ones of this container.
        remove_lxc_cgroups(&self.name);
    }
}
