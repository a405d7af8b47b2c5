//! Real services moved with their clients attached: Debian's `redis-server`
//! with a network namespace and address of its own (as a container has),
//! moved as a `pid` tree between two hosts on a LAN, there and back several
//! times, while a client on a third host keeps ONE connection open and
//! sends a request every 5 ms. Each move must show no client error, the
//! server's data intact and its counter going on; the client's longest
//! stall is printed. Needs root, CRIU and redis-server (`scripts/setup.sh`
//! installs them); under `CI` their absence fails the test.

#![allow(clippy::print_stderr)] // the measured stalls are the point of the output

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use phaul_core::{Mode, Report};
use phaul_htypes::pid::PidOptions;
use phaul_testkit::lan::{
    ClientStats, LanClient, ServiceTree, monotonic_s, redis_argv, redis_cli, redis_ready_with,
    require_criu_and_redis, require_redis,
};
use phaul_testkit::{Hosts, alive, require_criu, wait_until};

mod common;
use common::{Setup, Target, criu, migrate_from};

/// Moves the tree rooted at `pid` from host `from` to the service at `to`.
fn migrate(from: &str, bin: &Path, to: &str, pid: i32, outer: &str) -> Report {
    migrate_keeping(from, bin, to, pid, outer, false).0
}

/// [`migrate`], keeping the source's images in the returned directory
/// when `keep` is set.
fn migrate_keeping(
    from: &str,
    bin: &Path,
    to: &str,
    pid: i32,
    outer: &str,
    keep: bool,
) -> (Report, tempfile::TempDir) {
    migrate_from(from, bin, to, pid_source(pid, outer), move |m| {
        let m = m.mode(Mode::Auto);
        if keep { m.keep_images(true) } else { m }
    })
}

/// The `pid` kind's source for the tree rooted at `pid`, its veth's outer
/// end `outer` (`HOSTEND@BRIDGE`).
fn pid_source(
    pid: i32,
    outer: &str,
) -> impl FnOnce() -> Box<dyn phaul_htypes::Htype> + Send + 'static {
    let outer = outer.to_string();
    move || {
        let opts = PidOptions {
            veths: vec![("eth0".into(), outer)],
            ..PidOptions::default()
        };
        let paths = phaul_htypes::registry::Paths::default();
        phaul_htypes::registry::source_with("pid", &pid.to_string(), &paths, &opts).unwrap()
    }
}

/// Redis in a tree of its own (its own network namespace and address, .50)
/// on the source host of a LAN, holding `keys` keys `{prefix}{i}`.
/// Bind the tree last where a test takes it apart, so that it is dropped
/// (ended) before the hosts it runs in.
struct Served {
    tree: ServiceTree,
    ip: String,
    hosts: Hosts,
    bin: PathBuf,
}

/// [`Served`], or `None` (the test skips) where CRIU or redis is missing.
fn served(test: &str, prefix: &str, keys: usize) -> Option<Served> {
    let (bin, redis) = require_criu_and_redis(test)?;
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let ip = lan.ip(50);
    let tree = ServiceTree::start(&hosts.src, &lan.bridge, &ip, &redis_argv(redis)).unwrap();
    redis_ready_with(lan, &ip, prefix, keys).unwrap();
    Some(Served {
        tree,
        ip,
        hosts,
        bin,
    })
}

/// What the client saw and, if its connection broke, when: in ms after
/// `began` (seconds of `CLOCK_MONOTONIC`, taken as the migration began), so
/// a failure says whether the break fell before the freeze, in it or after.
fn client_seen(client: &LanClient, began: f64) -> String {
    let s = client.stats();
    match s.as_ref().and_then(|s| s.broken_at) {
        Some(at) => format!(
            "{s:?}; the connection broke {:.0} ms after the migration began",
            (at - began) * 1000.0
        ),
        None => format!("{s:?}"),
    }
}

/// Waits for 100 more answers on the client's one connection and checks it
/// never failed; what it saw. A failure names `what` moved, when the
/// connection broke ([`client_seen`]) and the migration's report `r`.
fn client_went_on(what: &str, client: &LanClient, began: f64, r: &Report) -> ClientStats {
    let s = client
        .answers_after(100, Duration::from_secs(30))
        .unwrap_or_else(|| {
            panic!(
                "{what}: the client's requests stopped: {}\n{r}",
                client_seen(client, began)
            )
        });
    assert_eq!(
        s.errors,
        0,
        "{what}: client errors: {}\n{r}",
        client_seen(client, began)
    );
    s
}

/// Gives the network namespace of `pid` an nftables table `table` with an
/// input chain holding `rule`.
fn nft_input_rule(pid: i32, table: &str, rule: &str) {
    in_tree_netns(pid, &["nft", "add", "table", "inet", table]);
    let chain = format!("add chain inet {table} input {{ type filter hook input priority 10; }}");
    in_tree_netns(pid, &["nft", &chain]);
    in_tree_netns(
        pid,
        &["nft", &format!("add rule inet {table} input {rule}")],
    );
}

fn device_gone(ns: &str, dev: &str) -> bool {
    !Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(true)
}

#[test]
fn redis_moves_there_and_back_with_its_client_connected() {
    let test = "redis_moves_there_and_back_with_its_client_connected";
    // Data the server holds: 1000 keys, checked after every move.
    let Some(Served {
        hosts,
        bin,
        ip,
        mut tree,
    }) = served(test, "phaul:k", 1000)
    else {
        return;
    };
    let lan = hosts.lan();
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();

    let at_src = Target::start_on(&hosts.src, &hosts.src_ip, criu(&bin), Setup::default());
    let at_tgt = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let mut pid = tree.pid;
    let moves = [
        (&hosts.src, &hosts.tgt, &at_tgt),
        (&hosts.tgt, &hosts.src, &at_src),
        (&hosts.src, &hosts.tgt, &at_tgt),
    ];
    for (n, (from, to, target)) in moves.into_iter().enumerate() {
        // The last move's veth goes with its namespace, a moment after the
        // tree ended there; the restore recreates it by the same name.
        let dev = tree.outer.split('@').next().unwrap();
        wait_until(Duration::from_secs(10), || {
            device_gone(to, dev).then_some(())
        })
        .expect("the previous host still has the service's veth");
        let began = monotonic_s();
        let r = migrate(from, &bin, &target.addr, pid, &tree.outer);
        assert!(r.success, "move {n} failed: {r}");
        let new = r.target_pid.expect("a target pid");
        tree.adopt(new);
        assert!(Hosts::runs_in(to, new) || !Hosts::runs_in(from, new));
        assert!(
            wait_until(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some(),
            "move {n}: the source tree is still there"
        );
        pid = new;
        let s = client_went_on(&format!("move {n}"), &client, began, &r);
        assert_eq!(redis_cli(lan, &ip, &["DBSIZE"]), "1001", "move {n}: keys");
        assert_eq!(redis_cli(lan, &ip, &["GET", "phaul:k999"]), "v999");
        eprintln!(
            "{test}: move {n} ({} -> {}): mode {}, downtime {:.1} ms, client longest stall so far {:.1} ms, {} answers",
            from,
            to,
            r.mode,
            r.downtime_ms.unwrap_or(f64::NAN),
            s.longest_stall_ms,
            s.ok
        );
    }
    let s = client.stats().unwrap();
    assert_eq!(s.errors, 0, "client errors: {:?}", s.last_error);
    eprintln!(
        "{test}: client longest stall {:.1} ms over {} answers, 0 errors",
        s.longest_stall_ms, s.ok
    );
}

/// The pre-flight probe dumps a small process holding a TCP socket with the
/// real CRIU: with a CRIU that can (setup.sh's), it passes. With the CRIU
/// named by `PHAUL_TEST_OLD_CRIU` (an unpatched 4.1.x, which cannot dump
/// sockets on Linux >= 6.16), moving a socket-holding server is refused in
/// pre-flight, CRIU's decisive line is quoted, and the server never froze.
#[test]
fn a_criu_that_cannot_dump_sockets_is_refused_before_the_freeze() {
    use phaul_core::criu::SourceCriu;
    let test = "a_criu_that_cannot_dump_sockets_is_refused_before_the_freeze";
    let Some(bin) = require_criu(test) else {
        return;
    };
    let scratch = tempfile::tempdir().unwrap();
    let probe = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(criu(&bin).probe_inet_dump(scratch.path()));
    assert!(probe.is_ok(), "setup.sh's CRIU failed the probe: {probe:?}");

    let Some(old) = std::env::var_os("PHAUL_TEST_OLD_CRIU") else {
        eprintln!("{test}: set PHAUL_TEST_OLD_CRIU to an unpatched CRIU 4.1 to see the refusal");
        return;
    };
    let Some(redis) = require_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let ip = hosts.lan().ip(50);
    let tree = ServiceTree::start(
        &hosts.src,
        &hosts.lan().bridge,
        &ip,
        &[redis, "--port", "6379", "--save", ""],
    )
    .unwrap();
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let r = migrate(
        &hosts.src,
        Path::new(&old),
        &target.addr,
        tree.pid,
        &tree.outer,
    );
    assert!(!r.success);
    assert_eq!(r.phase_reached, phaul_core::Phase::Preflight, "{r}");
    assert!(r.downtime_ms.is_none(), "the tree was frozen: {r}");
    let e = r.error.unwrap();
    assert!(
        e.contains("cannot dump TCP or UDP sockets") && e.contains("opt: Operation not supported"),
        "{e}"
    );
    assert!(!e.contains("RLIMIT"), "{e}");
    eprintln!("{test}: {e}");
    assert!(alive(tree.pid));
}

/// The target's restore fails (CRIU's, for real: the target's CRIU reads a
/// configuration naming an LSM profile this kernel lacks) after the server
/// was frozen and dumped: it resumes on the source with its address, and
/// the client's connection goes on with no error.
#[test]
fn a_failed_restore_leaves_the_server_and_its_client_connection_on_the_source() {
    let test = "a_failed_restore_leaves_the_server_and_its_client_connection_on_the_source";
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_TEST_LOG"))
        .with_test_writer()
        .try_init();
    let Some(Served {
        hosts,
        bin,
        ip,
        tree,
    }) = served(test, "", 0)
    else {
        return;
    };
    let lan = hosts.lan();
    assert_eq!(redis_cli(lan, &ip, &["SET", "phaul:kept", "yes"]), "OK");
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let (_standin, failing) = common::criu_failing_restores(&bin);
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&failing), Setup::default());
    let r = migrate(&hosts.src, &bin, &target.addr, tree.pid, &tree.outer);
    assert!(!r.success, "the restore was expected to fail");
    assert_eq!(r.phase_reached, phaul_core::Phase::Rollback, "{r}");
    assert!(r.error.as_deref().unwrap().contains("apparmor"), "{r}");
    assert!(alive(tree.pid), "the server is gone from the source");
    let dev = tree.outer.split('@').next().unwrap();
    assert!(
        !device_gone(&hosts.src, dev),
        "the server's veth is gone from the source"
    );
    let s = client
        .answers_after(100, Duration::from_secs(30))
        .unwrap_or_else(|| {
            let rules = Command::new("nsenter")
                .arg(format!("--net=/proc/{}/ns/net", tree.pid))
                .arg("iptables-save")
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned());
            panic!(
                "the client's requests stopped: {:?}; the server's firewall: {rules:?}",
                client.stats()
            )
        });
    assert_eq!(s.errors, 0, "client errors: {:?}", s.last_error);
    assert_eq!(redis_cli(lan, &ip, &["GET", "phaul:kept"]), "yes");
    eprintln!(
        "{test}: client longest stall {:.1} ms, 0 errors",
        s.longest_stall_ms
    );
}

/// A tree whose members talk to each other over a unix socket and a pipe
/// (`sh` running redis-server, a Python client of it on its unix socket
/// whose output goes through a pipe to `cat`) moves with its LAN client
/// attached; the inner counter goes on and the pipe still carries it.
#[test]
fn a_tree_talking_over_unix_sockets_and_pipes_moves_with_its_client() {
    let test = "a_tree_talking_over_unix_sockets_and_pipes_moves_with_its_client";
    let Some((bin, redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let ip = lan.ip(50);
    let dir = tempfile::Builder::new()
        .prefix("phaul-unix-tree-")
        .tempdir()
        .unwrap();
    let sock = dir.path().join("redis.sock");
    let out = dir.path().join("inner.out");
    let inner = format!(
        "import socket, sys, time\n\
         while True:\n\
         \x20   try:\n\
         \x20       s = socket.socket(socket.AF_UNIX); s.connect({sock:?}); break\n\
         \x20   except OSError: time.sleep(0.05)\n\
         while True:\n\
         \x20   s.sendall(b'INCR phaul:inner\\r\\n'); line = s.recv(64)\n\
         \x20   sys.stdout.write(line.decode().strip(':\\r\\n') + '\\n'); sys.stdout.flush()\n\
         \x20   time.sleep(0.01)\n",
        sock = sock.display().to_string()
    );
    let script = format!(
        "{redis} --port 6379 --protected-mode no --save '' --unixsocket {sock} & \
         python3 -c \"$1\" | cat > {out}",
        sock = sock.display(),
        out = out.display()
    );
    // sh is the tree's root; its children are redis, python3 and cat.
    let mut tree = ServiceTree::start(
        &hosts.src,
        &lan.bridge,
        &ip,
        &["sh", "-c", &script, "sh", &inner],
    )
    .unwrap();
    let last_inner = || phaul_testkit::last_number_in(&out);
    let started = wait_until(Duration::from_secs(20), || last_inner().filter(|n| *n > 20))
        .expect("the inner client counts over the unix socket");
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let began = monotonic_s();
    let r = migrate(&hosts.src, &bin, &target.addr, tree.pid, &tree.outer);
    assert!(r.success, "{r}");
    let new = r.target_pid.unwrap();
    tree.adopt(new);
    let after = last_inner().unwrap();
    assert!(after >= started);
    wait_until(Duration::from_secs(20), || {
        last_inner().filter(|n| *n > after + 20)
    })
    .expect("the inner counter goes on through the pipe after the move");
    let s = client_went_on("the tree", &client, began, &r);
    let inner_now: u64 = redis_cli(lan, &ip, &["GET", "phaul:inner"])
        .parse()
        .unwrap();
    assert!(
        inner_now > after,
        "the server's inner counter {inner_now} <= {after}"
    );
    eprintln!(
        "{test}: downtime {:.1} ms, client longest stall {:.1} ms, 0 errors",
        r.downtime_ms.unwrap_or(f64::NAN),
        s.longest_stall_ms
    );
}

/// Runs `argv` in the network namespace of process `pid` (testkit's
/// `Hosts::command` takes a named one); its stdout.
fn in_tree_netns(pid: i32, argv: &[&str]) -> String {
    let out = Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(argv)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{argv:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A server whose network namespace has firewall rules of both kinds, a
/// legacy (x_tables) one for each family and an nftables table, moves with
/// its client attached and keeps every rule. setup.sh's CRIU looks for the
/// legacy tools only where a namespace has legacy tables
/// (`scripts/criu-iptables-legacy-probe.patch`); this is the case where it
/// must still dump and restore them. The rules only match a port nothing
/// uses, so the client is not affected.
#[test]
fn a_servers_legacy_and_nftables_firewall_rules_move_with_it() {
    let test = "a_servers_legacy_and_nftables_firewall_rules_move_with_it";
    let Some(Served {
        hosts,
        bin,
        ip,
        mut tree,
    }) = served(test, "phaul:fw", 10)
    else {
        return;
    };
    let lan = hosts.lan();
    let rule = ["-p", "tcp", "--dport", "7", "-j", "DROP"];
    for tool in ["iptables-legacy", "ip6tables-legacy"] {
        let mut argv = vec![tool, "-A", "INPUT"];
        argv.extend(rule);
        in_tree_netns(tree.pid, &argv);
    }
    nft_input_rule(tree.pid, "phaulfw", "tcp dport 9 drop");
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let began = monotonic_s();
    let r = migrate(&hosts.src, &bin, &target.addr, tree.pid, &tree.outer);
    assert!(r.success, "{r}");
    let new = r.target_pid.unwrap();
    tree.adopt(new);
    for save in ["iptables-legacy-save", "ip6tables-legacy-save"] {
        let rules = in_tree_netns(new, &[save]);
        assert!(
            rules.contains("-A INPUT -p tcp -m tcp --dport 7 -j DROP"),
            "{save} on the target:\n{rules}"
        );
    }
    let nft = in_tree_netns(new, &["nft", "list", "table", "inet", "phaulfw"]);
    assert!(
        nft.contains("tcp dport 9 drop"),
        "nft on the target:\n{nft}"
    );
    let s = client_went_on("the firewalled server", &client, began, &r);
    assert_eq!(redis_cli(lan, &ip, &["GET", "phaul:fw9"]), "v9");
    eprintln!(
        "{test}: mode {}, downtime {:.1} ms, client longest stall {:.1} ms, rules kept",
        r.mode,
        r.downtime_ms.unwrap_or(f64::NAN),
        s.longest_stall_ms
    );
}

/// Every file under `dir` with its size (directories recursed, links not
/// followed).
fn files_under(dir: &Path) -> Vec<(PathBuf, u64)> {
    let mut all = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let Ok(meta) = std::fs::symlink_metadata(e.path()) else {
            continue;
        };
        if meta.is_dir() {
            all.extend(files_under(&e.path()));
        } else {
            all.push((e.path(), meta.len()));
        }
    }
    all
}

/// A namespace's tracked connections move with it: the guarantee that
/// `scripts/criu-conntrack-count.patch` (a dump skips the walk of the
/// kernel's whole conntrack table where the namespace's own count is 0)
/// must keep. Two servers on one LAN, each with a client attached: the
/// first's namespace has no rule that tracks connections, so it counts
/// none and its dump writes no conntrack entry; the second's accepts `ct
/// state established`, so its client's connection is tracked, dumped (a
/// non-empty image) and restored into the target's namespace.
#[test]
fn tracked_connections_move_with_their_namespace() {
    let test = "tracked_connections_move_with_their_namespace";
    let Some((bin, redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    for (octet, tracked) in [(50, false), (51, true)] {
        let ip = lan.ip(octet);
        let mut tree =
            ServiceTree::start(&hosts.src, &lan.bridge, &ip, &redis_argv(redis)).unwrap();
        if tracked {
            nft_input_rule(tree.pid, "phaulct", "ct state established accept");
        }
        redis_ready_with(lan, &ip, "phaul:ct", 10).unwrap();
        let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
        let count = |pid: i32| -> u64 {
            in_tree_netns(pid, &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"])
                .trim()
                .parse()
                .unwrap_or(0)
        };
        let before = count(tree.pid);
        assert_eq!(before > 0, tracked, "tracked connections at {ip}: {before}");
        let began = monotonic_s();
        let (r, work) =
            migrate_keeping(&hosts.src, &bin, &target.addr, tree.pid, &tree.outer, true);
        assert!(r.success, "{r}");
        let new = r.target_pid.unwrap();
        tree.adopt(new);
        // CRIU writes no image file for what it found nothing of.
        let images = files_under(work.path());
        let ct: Vec<u64> = images
            .iter()
            .filter(|(p, _)| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("netns-ct-"))
            })
            .map(|(_, n)| *n)
            .collect();
        assert_eq!(
            ct.iter().any(|n| *n > 0),
            tracked,
            "conntrack image sizes {ct:?} for a namespace tracking {before}; its images: {images:?}"
        );
        if tracked {
            assert!(count(new) > 0, "the target's namespace tracks nothing");
        }
        let s = client_went_on(&ip, &client, began, &r);
        assert_eq!(redis_cli(lan, &ip, &["GET", "phaul:ct9"]), "v9");
        eprintln!(
            "{test}: tracked {tracked}: {before} tracked, conntrack image {ct:?}, downtime {:.1} ms, stall {:.1} ms",
            r.downtime_ms.unwrap_or(f64::NAN),
            s.longest_stall_ms
        );
    }
}

/// A client connection kept open in the LAN's client host that sends one
/// `INCR` when told to (a line on its stdin) and reports when it sent and
/// when the answer came (seconds of `CLOCK_MONOTONIC`) and the answer.
struct OneRequest {
    child: std::process::Child,
}

impl OneRequest {
    const SCRIPT: &'static str = r#"
import socket, sys, time
s = socket.create_connection((sys.argv[1], 6379))
s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
s.sendall(b"PING\r\n"); s.recv(64)
print("ready", flush=True)
sys.stdin.readline()
sent = time.clock_gettime(time.CLOCK_MONOTONIC)
s.sendall(b"*2\r\n$4\r\nINCR\r\n$5\r\nprobe\r\n")
answer = s.recv(64)
print(sent, time.clock_gettime(time.CLOCK_MONOTONIC), answer.decode().strip(), flush=True)
"#;

    fn connect(client_ns: &str, ip: &str) -> Self {
        use std::io::BufRead;
        use std::process::Stdio;
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                client_ns,
                "python3",
                "-c",
                Self::SCRIPT,
                ip,
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(
            line.trim(),
            "ready",
            "the one-request client did not connect"
        );
        Self { child }
    }

    fn send(&mut self) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().unwrap();
        stdin.write_all(b"go\n").unwrap();
        stdin.flush().unwrap();
    }

    /// When it sent, when the answer came, and the answer.
    fn answered(self) -> (f64, f64, String) {
        let out = self.child.wait_with_output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let words: Vec<&str> = text.split_whitespace().collect();
        let num = |i: usize| words.get(i).and_then(|v| v.parse::<f64>().ok());
        (
            num(0).unwrap_or_else(|| panic!("the one-request client said {text:?}")),
            num(1).unwrap_or(f64::NAN),
            words.get(2).copied().unwrap_or_default().to_string(),
        )
    }
}

/// A request sent while the tree is frozen is dropped by CRIU's network
/// lock, and the client's kernel sends it again only on its own timers:
/// about 205 ms after sending, then about 410, then 820. Here the switch-over
/// hook holds the frozen tree 450 ms after a second client connection sent
/// one `INCR`, so its first two retransmissions fall in the freeze too. The
/// source keeps the segments the lock dropped and the target delivers them
/// once its copy runs: the answer must come within 200 ms of the hook's end,
/// not at the third retransmission (about 370 ms after it). The first
/// client's connection goes on as usual.
#[test]
fn a_request_the_lock_dropped_is_answered_as_soon_as_the_copy_runs() {
    let test = "a_request_the_lock_dropped_is_answered_as_soon_as_the_copy_runs";
    let Some(Served {
        hosts,
        bin,
        ip,
        mut tree,
    }) = served(test, "phaul:r", 10)
    else {
        return;
    };
    let lan = hosts.lan();
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let probe = std::sync::Arc::new(std::sync::Mutex::new(Some(OneRequest::connect(
        &lan.client,
        &ip,
    ))));
    let hook_end = std::sync::Arc::new(std::sync::Mutex::new(f64::NAN));
    let at_tgt = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let open = pid_source(tree.pid, &tree.outer);
    let (p, end) = (probe.clone(), hook_end.clone());
    let began = monotonic_s();
    let (r, _work) = migrate_from(&hosts.src, &bin, &at_tgt.addr, open, move |m| {
        m.mode(Mode::StopCopy).switchover(move || {
            let (p, end) = (p.clone(), end.clone());
            async move {
                if let Some(one) = p.lock().unwrap().as_mut() {
                    one.send();
                }
                tokio::time::sleep(Duration::from_millis(450)).await;
                *end.lock().unwrap() = monotonic_s();
                Ok(())
            }
        })
    });
    assert!(r.success, "the move failed: {r}");
    tree.adopt(r.target_pid.expect("a target pid"));
    let one = probe.lock().unwrap().take().unwrap();
    let (sent, answered, answer) = one.answered();
    let end = *hook_end.lock().unwrap();
    assert_eq!(answer, ":1", "the frozen-time request's answer");
    let after_hook_ms = (answered - end) * 1000.0;
    eprintln!(
        "{test}: sent {:.0} ms into the hook's 450, answered {after_hook_ms:.0} ms after it ended ({:.0} ms after sending); downtime {:.0} ms",
        (sent - (end - 0.45)) * 1000.0,
        (answered - sent) * 1000.0,
        r.downtime_ms.unwrap_or(f64::NAN)
    );
    assert!(
        after_hook_ms < 200.0,
        "the request dropped by the lock was answered {after_hook_ms:.0} ms after the copy could run: not replayed\n{r}"
    );
    client_went_on("the move", &client, began, &r);
}
