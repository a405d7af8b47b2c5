//! Real pre-dumps, which this host's kernel cannot do (it has no soft-dirty
//! tracking): each test re-runs itself inside the guest of
//! `scripts/guest.sh` (Debian 12's kernel under QEMU) and checks there what
//! CRIU's images say. Under `CI` a machine that cannot run the guest fails
//! the tests; elsewhere they are skipped with the reason.
//!
//! A test body runs only inside the guest (`PHAUL_IN_GUEST` set); outside,
//! the same test boots the guest with this test binary (the guest sees the
//! host's files read-only) and asks for that one test.
// What each iteration wrote is the point of the output, and the guest's run
// is relayed through stdout.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criu_rpc::image::{PagemapTotals, read_dump_stats, read_pagemaps};
use criu_rpc::proto::DumpStatsEntry;
use phaul_core::stats::IterationReport;
use phaul_core::{Migration, Mode, Report};
use phaul_testkit::{Hosts, alive, in_netns, kill_tree, require_criu, wait_until};

mod common;
use common::{Target, cfg, criu};

/// The workload with a controlled dirty set (see the file).
const DIRTY_PY: &str = include_str!("guest/dirty.py");
/// The guest's time limit for one test, boot included (TCG is slow, and
/// the host's cores are shared).
const GUEST_TIMEOUT_SECS: u32 = 300;
/// What `scripts/guest.sh` answers when this machine cannot run the guest.
const GUEST_UNSUPPORTED: i32 = 77;

/// Runs `body` inside the guest: directly when this already is the guest,
/// else by booting it on this test binary with `name` as the filter.
fn in_guest(name: &str, body: impl FnOnce()) {
    if std::env::var_os("PHAUL_IN_GUEST").is_some() {
        body();
        println!("GUEST-PASSED {name}");
        return;
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let out = Command::new(&script)
        .args(["--timeout", &GUEST_TIMEOUT_SECS.to_string(), "--"])
        .arg(&exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if out.status.code() == Some(GUEST_UNSUPPORTED) {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name}: CI requires the guest, and this machine cannot run it (see above)"
        );
        eprintln!("SKIPPED {name}: this machine cannot run scripts/guest.sh (see above)");
        return;
    }
    assert!(
        out.status.success(),
        "{name} failed in the guest ({})",
        out.status
    );
    assert!(
        stdout.contains(&format!("GUEST-PASSED {name}")),
        "{name} did not run in the guest"
    );
    println!(
        "{name}: the guest run took {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

/// The guest runs the host's CRIU as root, so a missing one is a failure
/// there, never a skip.
fn guest_criu(test: &str) -> PathBuf {
    require_criu(test).expect("the guest cannot run the host's CRIU")
}

/// A `dirty.py` as PID 1 of its own PID namespace (so it can be restored
/// while its old PID is taken), in its own session, stdio on /dev/null.
struct Dirtier {
    dir: tempfile::TempDir,
    unshare: Child,
    pid: i32,
    /// Pages of its buffer, and how many of them each sweep rewrites.
    pages: u64,
    hot: u64,
    /// Restored copies, killed on drop.
    restored: Vec<i32>,
}

impl Dirtier {
    /// Starts one holding `mib` MiB, `percent` of it hot, inside host
    /// `netns` (a name under `/run/netns`) or in ours.
    fn start(netns: Option<&str>, mib: u32, percent: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("phaul-dirty-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.path().join("dirty.py");
        fs::write(&script, DIRTY_PY).unwrap();
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
        let mut unshare = cmd
            .args(["--pid", "--fork", "setsid", "python3"])
            .arg(&script)
            .arg(&out)
            .arg(mib.to_string())
            .arg(percent.to_string())
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let uid = i32::try_from(unshare.id()).unwrap();
        let ready = out.with_extension("ready");
        let found = wait_until(Duration::from_secs(120), || {
            let sizes = fs::read_to_string(&ready).ok()?;
            let kids = fs::read_to_string(format!("/proc/{uid}/task/{uid}/children")).ok()?;
            let pid = kids.split_whitespace().next()?.parse::<i32>().ok()?;
            let mut n = sizes.split_whitespace().map(|s| s.parse::<u64>().ok());
            Some((pid, n.next()??, n.next()??))
        });
        let Some((pid, pages, hot)) = found else {
            let _ = unshare.kill();
            panic!("dirty.py did not become ready");
        };
        Self {
            dir,
            unshare,
            pid,
            pages,
            hot,
            restored: Vec::new(),
        }
    }

    /// Sweeps done so far.
    fn sweeps(&self) -> Option<u64> {
        let s = fs::read_to_string(self.dir.path().join("out")).ok()?;
        s.split_whitespace().next()?.parse().ok()
    }

    /// Waits until `n` more sweeps than now are done.
    fn sweep_on(&self, n: u64) -> u64 {
        let from = self.sweeps().unwrap_or(0);
        wait_until(Duration::from_secs(60), || {
            self.sweeps().filter(|s| *s >= from + n)
        })
        .expect("the workload stopped sweeping")
    }

    /// Asks `pid` (the workload or a restored copy) to check its memory.
    fn verdict(&self, pid: i32) -> String {
        let check = self.dir.path().join("out.check");
        let _ = fs::remove_file(&check);
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGUSR1,
        )
        .unwrap();
        wait_until(Duration::from_secs(60), || fs::read_to_string(&check).ok())
            .expect("no memory verdict")
            .trim()
            .to_string()
    }
}

impl Drop for Dirtier {
    fn drop(&mut self) {
        for pid in self.restored.iter().copied().chain([self.pid]) {
            kill_tree(pid);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

/// One dump or pre-dump of a chain, as CRIU's images describe it.
#[derive(Debug)]
struct Iteration {
    what: &'static str,
    stats: DumpStatsEntry,
    pagemaps: PagemapTotals,
    took: Duration,
}

/// Runs `criu ACTION -t pid -D dir [--prev-images-dir ../parent]
/// --track-mem` and reads what it wrote.
fn criu_iteration(
    criu: &Path,
    what: &'static str,
    pid: i32,
    dir: &Path,
    parent: Option<&Path>,
) -> Iteration {
    fs::create_dir_all(dir).unwrap();
    let mut cmd = Command::new(criu);
    cmd.arg(what)
        .args(["-t", &pid.to_string(), "-D"])
        .arg(dir)
        .args(["--track-mem", "-o", "criu.log", "-v4"]);
    if let Some(p) = parent {
        // Relative to the images directory, as CRIU wants it.
        cmd.arg("--prev-images-dir")
            .arg(Path::new("..").join(p.file_name().unwrap()));
    }
    let started = Instant::now();
    let status = cmd.stdin(Stdio::null()).status().unwrap();
    let took = started.elapsed();
    assert!(
        status.success(),
        "criu {what} failed; its log ends with:\n{}",
        log_tail(&dir.join("criu.log"))
    );
    Iteration {
        what,
        stats: read_dump_stats(dir).unwrap(),
        pagemaps: read_pagemaps(dir).unwrap(),
        took,
    }
}

fn log_tail(path: &Path) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

fn print_chain(chain: &[Iteration]) {
    println!("iteration     written  skipped(parent)  in-parent  present  time");
    for it in chain {
        println!(
            "{:<12} {:>8} {:>16} {:>10} {:>8}  {:.2} s",
            it.what,
            it.stats.pages_written,
            it.stats.pages_skipped_parent,
            it.pagemaps.in_parent,
            it.pagemaps.present,
            it.took.as_secs_f64()
        );
    }
}

/// Two pre-dumps and a final dump of a workload that rewrites 5% of its
/// 64 MiB over and over: the first pre-dump writes everything, the later
/// iterations only about the hot 5% (the rest is in the parent images),
/// and the restore from the chain brings back memory in which every page
/// comes from the right iteration.
#[test]
fn predump_chain_writes_only_the_dirty_set() {
    in_guest("predump_chain_writes_only_the_dirty_set", || {
        let criu = guest_criu("predump_chain_writes_only_the_dirty_set");
        let out = Command::new(&criu)
            .args(["check", "--feature", "mem_dirty_track"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "no soft-dirty tracking in the guest: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut w = Dirtier::start(None, 64, 5);
        let images = tempfile::tempdir().unwrap();
        let d: Vec<PathBuf> = ["pre1", "pre2", "dump"]
            .iter()
            .map(|n| images.path().join(n))
            .collect();
        w.sweep_on(1);
        let pre1 = criu_iteration(&criu, "pre-dump", w.pid, &d[0], None);
        w.sweep_on(2);
        let pre2 = criu_iteration(&criu, "pre-dump", w.pid, &d[1], Some(&d[0]));
        let dumped_at = w.sweep_on(2);
        let dump = criu_iteration(&criu, "dump", w.pid, &d[2], Some(&d[1]));
        let chain = [pre1, pre2, dump];
        print_chain(&chain);
        assert_chain(&chain, w.pages, w.hot);
        let restored = restore(&criu, &d[2]);
        w.restored.push(restored);
        assert!(alive(restored), "the restored workload is not running");
        let after = w.sweep_on(1);
        assert!(after > dumped_at, "the restored workload does not sweep on");
        let v = w.verdict(restored);
        assert!(v.starts_with("ok "), "restored memory is wrong: {v}");
    });
}

/// The first pre-dump wrote the whole buffer; each later iteration wrote
/// the hot set (rewritten since) and found the rest in its parent, so it
/// wrote at most a quarter of the first.
fn assert_chain(chain: &[Iteration], pages: u64, hot: u64) {
    let first = &chain[0];
    assert_eq!(first.pagemaps.in_parent, 0, "{first:?}");
    assert!(first.stats.pages_written >= pages, "{first:?}");
    for it in chain {
        assert_eq!(it.pagemaps.present, it.stats.pages_written, "{it:?}");
    }
    for it in &chain[1..] {
        let s = &it.stats;
        assert!(
            s.pages_written >= hot,
            "the hot set was not written: {it:?}"
        );
        assert!(
            s.pages_written * 4 <= first.stats.pages_written,
            "a later iteration wrote too much: {it:?}"
        );
        assert!(s.pages_skipped_parent >= pages - hot, "{it:?}");
        assert!(it.pagemaps.in_parent >= pages - hot, "{it:?}");
    }
}

/// `criu restore -d` of the chain ending in `dir`; the restored PID.
fn restore(criu: &Path, dir: &Path) -> i32 {
    let pidfile = dir.join("restored.pid");
    let status = Command::new(criu)
        .arg("restore")
        .arg("-D")
        .arg(dir)
        .args(["-d", "-o", "restore.log", "-v4", "--pidfile"])
        .arg(&pidfile)
        .stdin(Stdio::null())
        .status()
        .unwrap();
    assert!(
        status.success(),
        "criu restore failed; its log ends with:\n{}",
        log_tail(&dir.join("restore.log"))
    );
    fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// phaul's own pre-copy (the engine, P.Haul's rules by default) moves a
/// workload that rewrites 5% of its 64 MiB from one network-namespace host
/// to another: the first pre-dump sends everything, the later ones and the
/// final dump only the hot set, and the workload goes on on the target with
/// every page from the right iteration.
#[test]
fn engine_pre_copy_sends_only_the_dirty_set() {
    in_guest("engine_pre_copy_sends_only_the_dirty_set", || {
        let bin = guest_criu("engine_pre_copy_sends_only_the_dirty_set");
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, criu(&bin));
        let mut w = Dirtier::start(Some(&hosts.src), 64, 5);
        let before = w.sweep_on(1);
        let r = migrate(&hosts.src, &bin, &target.addr, w.pid, Mode::PreCopy);
        print_report(&r);
        assert!(r.success, "pre-copy failed: {:?}", r.error);
        assert_eq!(r.mode, "pre-copy", "{}", r.mode_reason);
        let its = &r.per_iteration;
        assert!(its.len() >= 2, "no pre-dump before the dump: {its:?}");
        let (first, last) = (&its[0], &its[its.len() - 1]);
        assert_eq!(first.kind, IterationReport::PRE_DUMP);
        assert_eq!(last.kind, IterationReport::DUMP);
        assert!(first.pages_written >= w.pages, "{first:?}");
        for it in &its[1..] {
            assert!(
                it.pages_written >= w.hot,
                "the hot set was not sent: {it:?}"
            );
            assert!(
                it.pages_written * 4 <= first.pages_written,
                "a later iteration sent too much: {it:?}"
            );
            assert!(it.pages_skipped_parent >= w.pages - w.hot, "{it:?}");
        }
        let pid = r.target_pid.expect("a target pid");
        w.restored.push(pid);
        assert!(
            Hosts::runs_in(&hosts.tgt, pid),
            "not restored in the target host"
        );
        assert!(
            w.sweep_on(1) > before,
            "the moved workload does not sweep on"
        );
        let v = w.verdict(pid);
        assert!(v.starts_with("ok "), "moved memory is wrong: {v}");
    });
}

/// Runs a migration of `pid` from host `src_ns` to the service at `to`.
fn migrate(src_ns: &str, bin: &Path, to: &str, pid: i32, mode: Mode) -> Report {
    let work = tempfile::Builder::new()
        .prefix("phaul-source-")
        .tempdir()
        .unwrap();
    let (bin, to, dir) = (bin.to_path_buf(), to.to_string(), work.path().to_owned());
    in_netns(src_ns, move || async move {
        let htype = phaul_htypes::registry::source("pid", &pid.to_string()).unwrap();
        let m = Migration::new(criu(&bin), to, cfg(), htype)
            .mode(mode)
            .work_dir(&dir);
        tokio::time::timeout(Duration::from_secs(200), m.run())
            .await
            .expect("the migration hung")
    })
    .join()
    .expect("the source thread panicked")
}

fn print_report(r: &Report) {
    println!(
        "{} ({}): {} iterations, downtime {:?} ms (predicted {:?} ms), total {:.0} ms",
        r.mode, r.mode_reason, r.iterations, r.downtime_ms, r.predicted_downtime_ms, r.total_ms
    );
    println!("iteration  kind       written  skipped(parent)  frozen      took");
    for it in &r.per_iteration {
        println!(
            "{:>9}  {:<9} {:>8} {:>16}  {:>6.1} ms {:>6.0} ms",
            it.iteration,
            it.kind,
            it.pages_written,
            it.pages_skipped_parent,
            it.frozen_us as f64 / 1000.0,
            it.duration_us as f64 / 1000.0
        );
    }
}
