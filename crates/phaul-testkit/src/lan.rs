//! A LAN that clients see, for tests that move services with their clients
//! attached.
//!
//! Four network namespaces: the two hosts, a switch and a client. The
//! switch holds bridge `lan0`; each host has its own bridge ([`Lan::bridge`],
//! the same name on both, as a container's config names one), joined to
//! `lan0` by a veth, and holds its host address on it; the client sits on
//! `lan0`. A service tree gets a network namespace of its own with a veth
//! on its host's bridge, a fixed MAC and an address of the LAN, so that
//! after a move it keeps its address and its clients' connections, as a
//! container does.
//!
//! ```text
//!   client (.100) ── lan0 [switch] ── phbN [src host .1] ── eth0 [service .50]
//!                          └──────── phbN [tgt host .2]
//! ```
//!
//! LXC checks a container's bridge in `/sys/class/net`, which under
//! `nsenter --net` is still the machine's sysfs; [`Lan::enable_lxc`] gives
//! the machine's namespace an idle bridge of the same name (no ports, no
//! address, down) so the check passes, while LXC attaches the container's
//! veth to the host namespace's real bridge (netlink works in the namespace
//! LXC runs in). Removed with the LAN.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{Hosts, wait_until};

/// The client host and switch of a [`Hosts::with_lan`] pair.
#[derive(Debug)]
pub struct Lan {
    /// The switch's namespace (bridge `lan0`).
    pub switch: String,
    /// The client host's namespace (device `eth0`).
    pub client: String,
    /// The LAN's first three octets, e.g. `10.240.3`.
    pub prefix: String,
    /// Each host's bridge (the same name on both).
    pub bridge: String,
    /// Whether the machine's namespace holds the bridge's idle twin.
    twin: bool,
}

impl Lan {
    /// The address `.n` of the LAN.
    pub fn ip(&self, n: u8) -> String {
        format!("{}.{n}", self.prefix)
    }

    /// The client host's address.
    pub fn client_ip(&self) -> String {
        self.ip(100)
    }

    /// Lets LXC use the hosts' bridge (see the module docs).
    pub fn enable_lxc(&mut self) -> std::io::Result<()> {
        if !self.twin {
            ip(&["link", "add", &self.bridge, "type", "bridge"])?;
            self.twin = true;
        }
        Ok(())
    }
}

pub(crate) fn ip(args: &[&str]) -> std::io::Result<()> {
    let out = Command::new("ip").args(args).output()?;
    if !out.status.success() {
        return Err(std::io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(())
}

/// Builds the switch, the hosts' bridges and the client for `hosts`, whose
/// namespaces exist without devices; `tag` makes device names unique.
pub(crate) fn build(src: &str, tgt: &str, tag: u32, prefix: &str) -> std::io::Result<Lan> {
    let lan = Lan {
        switch: format!("phw{tag}"),
        client: format!("phc{tag}"),
        prefix: prefix.to_string(),
        bridge: format!("phb{tag}"),
        twin: false,
    };
    let br = lan.bridge.as_str();
    ip(&["netns", "add", &lan.switch])?;
    ip(&["netns", "add", &lan.client])?;
    ip(&["-n", &lan.switch, "link", "add", "lan0", "type", "bridge"])?;
    ip(&["-n", &lan.switch, "link", "set", "lan0", "up"])?;
    for (i, (ns, n)) in [(src, 1u8), (tgt, 2u8)].into_iter().enumerate() {
        let (up, down) = (format!("plu{tag}{i}"), format!("pld{tag}{i}"));
        ip(&["-n", ns, "link", "add", br, "type", "bridge"])?;
        // A bridge without an address of its own takes its ports' lowest
        // MAC, which changes when a service's veth comes or goes; peers'
        // ARP entries for the host would then point nowhere for seconds.
        let mac = format!("02:70:68:ff:{n:02x}:{:02x}", tag % 256);
        ip(&["-n", ns, "link", "set", br, "address", &mac])?;
        ip(&["link", "add", &up, "type", "veth", "peer", "name", &down])?;
        ip(&["link", "set", &up, "netns", ns])?;
        ip(&["link", "set", &down, "netns", &lan.switch])?;
        ip(&["-n", ns, "link", "set", &up, "master", br, "up"])?;
        ip(&[
            "-n",
            &lan.switch,
            "link",
            "set",
            &down,
            "master",
            "lan0",
            "up",
        ])?;
        ip(&[
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/24", lan.ip(n)),
            "dev",
            br,
        ])?;
        ip(&["-n", ns, "link", "set", br, "up"])?;
        ip(&["-n", ns, "link", "set", "lo", "up"])?;
    }
    let (c, d) = (format!("pcu{tag}"), format!("pcd{tag}"));
    ip(&["link", "add", &c, "type", "veth", "peer", "name", &d])?;
    ip(&["link", "set", &c, "netns", &lan.client])?;
    ip(&["link", "set", &d, "netns", &lan.switch])?;
    ip(&["-n", &lan.client, "link", "set", &c, "name", "eth0"])?;
    ip(&[
        "-n",
        &lan.client,
        "addr",
        "add",
        &format!("{}/24", lan.client_ip()),
        "dev",
        "eth0",
    ])?;
    ip(&["-n", &lan.client, "link", "set", "eth0", "up"])?;
    ip(&["-n", &lan.client, "link", "set", "lo", "up"])?;
    ip(&["-n", &lan.switch, "link", "set", &d, "master", "lan0", "up"])?;
    Ok(lan)
}

impl Drop for Lan {
    fn drop(&mut self) {
        if self.twin {
            let _ = ip(&["link", "del", &self.bridge]);
        }
        let _ = ip(&["netns", "del", &self.client]);
        let _ = ip(&["netns", "del", &self.switch]);
    }
}

/// A server started in a network namespace and PID namespace of its own
/// inside a host, wired to the host's bridge as `eth0` with a fixed MAC and
/// a LAN address: what a container's network looks like, for the `pid`
/// kind. Killed on drop, wherever it then runs.
#[derive(Debug)]
pub struct ServiceTree {
    unshare: Child,
    /// The host PID of the tree's root (its PID namespace's init).
    pub pid: i32,
    /// The service's address on the LAN.
    pub ip: String,
    /// The host end of its veth and its bridge, as a restore names them:
    /// `OUTER@BRIDGE` (`--veth eth0=OUTER@BRIDGE`).
    pub outer: String,
    extra: Vec<i32>,
    _dir: tempfile::TempDir,
}

impl ServiceTree {
    /// Starts `argv` in host `ns` with address `ip` (a /24 of the LAN) on
    /// the host's `bridge`, and waits until its init exists and `eth0` is up.
    pub fn start(ns: &str, bridge: &str, ip_addr: &str, argv: &[&str]) -> std::io::Result<Self> {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, Ordering::Relaxed);
        let dev = format!("pvsv{}", (std::process::id() % 10_000) * 10 + n % 10);
        let dir = tempfile::Builder::new()
            .prefix("phaul-service-tree-")
            .tempdir()?;
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{ns}"))
            .args(["unshare", "--net", "--pid", "--fork", "setsid"])
            .args(argv);
        let (unshare, uid) = crate::spawn_in(cmd, dir.path())?;
        let pid = wait_until(Duration::from_secs(10), || crate::first_child(uid))
            .ok_or_else(|| std::io::Error::other("the service tree did not start"))?;
        let mut tree = Self {
            unshare,
            pid,
            ip: ip_addr.to_string(),
            outer: format!("{dev}@{bridge}"),
            extra: Vec::new(),
            _dir: dir,
        };
        let netns = format!("/proc/{pid}/ns/net");
        // The MAC follows from the address, so each service's is stable.
        let last: u8 = ip_addr
            .rsplit('.')
            .next()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1);
        let mac = format!("02:70:68:61:75:{last:02x}");
        ip(&[
            "-n", ns, "link", "add", &dev, "type", "veth", "peer", "name", "eth0", "netns", &netns,
        ])?;
        ip(&["-n", ns, "link", "set", &dev, "master", bridge, "up"])?;
        let inside = |args: &[&str]| -> std::io::Result<()> {
            let out = Command::new("nsenter")
                .arg(format!("--net={netns}"))
                .arg("ip")
                .args(args)
                .output()?;
            if out.status.success() {
                Ok(())
            } else {
                Err(std::io::Error::other(
                    String::from_utf8_lossy(&out.stderr).into_owned(),
                ))
            }
        };
        inside(&["link", "set", "lo", "up"])?;
        inside(&["link", "set", "eth0", "address", &mac])?;
        inside(&["addr", "add", &format!("{ip_addr}/24"), "dev", "eth0"])?;
        inside(&["link", "set", "eth0", "up"])?;
        tree.extra.clear();
        Ok(tree)
    }

    /// Also kill `pid` (a restored copy) when this is dropped.
    pub fn adopt(&mut self, pid: i32) {
        self.extra.push(pid);
    }
}

impl Drop for ServiceTree {
    fn drop(&mut self) {
        crate::end_all(self.pid, &self.extra, &mut self.unshare);
    }
}

/// Debian's `redis-server`, the service the real-service tests move, or
/// `None`: the test is skipped with a message, or fails under `CI`.
pub fn require_redis(test: &str) -> Option<&'static str> {
    let bin = "/usr/bin/redis-server";
    if std::path::Path::new(bin).exists() {
        return Some(bin);
    }
    crate::unavailable(test, bin, "scripts/setup.sh installs redis-server");
    None
}

/// [`crate::require_criu`] and [`require_redis`] both: CRIU's binary and
/// redis-server's, or `None` (the test is skipped, or fails under `CI`).
pub fn require_criu_and_redis(test: &str) -> Option<(std::path::PathBuf, &'static str)> {
    let criu = crate::require_criu(test)?;
    Some((criu, require_redis(test)?))
}

/// `redis` (the server binary) with what every test server takes: port
/// 6379 on every address, no protected mode (its clients are on other
/// hosts), no persistence (the memory is what moves).
pub fn redis_argv(redis: &str) -> Vec<&str> {
    vec![
        redis,
        "--port",
        "6379",
        "--bind",
        "0.0.0.0",
        "--protected-mode",
        "no",
        "--save",
        "",
        "--appendonly",
        "no",
    ]
}

/// `redis-cli -h IP ARGS...` run on the LAN's client host; its output,
/// trimmed (empty when it could not run).
pub fn redis_cli(lan: &Lan, ip: &str, args: &[&str]) -> String {
    Hosts::command(&lan.client, "redis-cli")
        .args(["-h", ip, "--raw"])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// Waits until Redis at `ip` answers the client host, then stores `keys`
/// keys `{prefix}{i}` = `v{i}` in it (data the tests check after a move).
pub fn redis_ready_with(lan: &Lan, ip: &str, prefix: &str, keys: usize) -> std::io::Result<()> {
    wait_until(Duration::from_secs(20), || {
        (redis_cli(lan, ip, &["PING"]) == "PONG").then_some(())
    })
    .ok_or_else(|| std::io::Error::other(format!("redis at {ip} does not answer")))?;
    if keys == 0 {
        return Ok(());
    }
    let mut mset = vec!["MSET".to_string()];
    for i in 0..keys {
        mset.push(format!("{prefix}{i}"));
        mset.push(format!("v{i}"));
    }
    let refs: Vec<&str> = mset.iter().map(String::as_str).collect();
    match redis_cli(lan, ip, &refs).as_str() {
        "OK" => Ok(()),
        other => Err(std::io::Error::other(format!("MSET answered {other:?}"))),
    }
}

/// What a [`LanClient`] saw.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClientStats {
    /// Requests answered correctly.
    pub ok: u64,
    /// Requests that failed: a connection error, a wrong or missing answer.
    pub errors: u64,
    /// The longest time one request waited for its answer, in ms.
    pub longest_stall_ms: f64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// When the longest wait began, in seconds of `CLOCK_MONOTONIC` (see
    /// [`monotonic_s`]).
    pub longest_stall_at: Option<f64>,
    /// When the connection broke, in seconds of `CLOCK_MONOTONIC`.
    pub broken_at: Option<f64>,
}

/// Now, in seconds of `CLOCK_MONOTONIC`: the clock the client stamps its
/// break with, so a test can say where in a migration the break fell.
pub fn monotonic_s() -> f64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(f64::NAN, |ts| Duration::from(ts).as_secs_f64())
}

/// A client on the LAN's client host that keeps one TCP connection to a
/// Redis server open and sends `INCR` on it every few ms, checking that
/// each answer is the previous one plus one (the server's data goes on) and
/// timing each wait. Stopped on drop.
#[derive(Debug)]
pub struct LanClient {
    child: Child,
    stats: PathBuf,
    _dir: tempfile::TempDir,
}

/// The client's program (Python, standard library only).
pub const REDIS_CLIENT_PY: &str = include_str!("redis_client.py");

impl LanClient {
    /// Connects from `lan`'s client host to `ip:port`, one request every
    /// `period`; waits until the first answers came.
    pub fn start(lan: &Lan, ip_addr: &str, port: u16, period: Duration) -> std::io::Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix("phaul-lan-client-")
            .tempdir()?;
        let script = dir.path().join("client.py");
        fs::write(&script, REDIS_CLIENT_PY)?;
        let stats = dir.path().join("stats");
        let child = Hosts::command(&lan.client, "python3")
            .arg(&script)
            .args([
                ip_addr,
                &port.to_string(),
                &period.as_secs_f64().to_string(),
            ])
            .arg(&stats)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let c = Self {
            child,
            stats,
            _dir: dir,
        };
        wait_until(Duration::from_secs(15), || {
            c.stats().filter(|s| s.ok >= 10).map(|_| ())
        })
        .ok_or_else(|| {
            std::io::Error::other(format!("the client got no answers: {:?}", c.stats()))
        })?;
        Ok(c)
    }

    /// What it has seen so far (it rewrites its file every 50 ms).
    pub fn stats(&self) -> Option<ClientStats> {
        read_stats(&self.stats)
    }

    /// Waits until `more` requests beyond what it has now succeeded.
    pub fn answers_after(&self, more: u64, timeout: Duration) -> Option<ClientStats> {
        let now = self.stats()?.ok;
        wait_until(timeout, || self.stats().filter(|s| s.ok >= now + more))
    }
}

fn read_stats(path: &Path) -> Option<ClientStats> {
    let text = fs::read_to_string(path).ok()?;
    let mut s = ClientStats::default();
    for line in text.lines() {
        let (k, v) = line.split_once(' ')?;
        match k {
            "ok" => s.ok = v.parse().ok()?,
            "errors" => s.errors = v.parse().ok()?,
            "stall_ms" => s.longest_stall_ms = v.parse().ok()?,
            "last_error" => s.last_error = Some(v.to_string()),
            "stall_at" => s.longest_stall_at = v.parse().ok(),
            "broken_at" => s.broken_at = v.parse().ok(),
            _ => {}
        }
    }
    Some(s)
}

impl Drop for LanClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
