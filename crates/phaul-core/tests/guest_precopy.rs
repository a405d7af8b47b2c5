//! Real pre-dumps, which this host's kernel cannot do (it has no soft-dirty
//! tracking), inside the guest of `scripts/guest.sh` (Debian 12's kernel
//! under QEMU): CRIU's pre-dump chains, and phaul's pre-copy and hybrid
//! between two network-namespace hosts, of workloads whose dirty set is
//! known (`guest/dirty.py`) and of LXC containers.
//!
//! [`pre_copy_in_the_guest`] boots the guest once, on this test binary (the
//! guest sees the host's files read-only), and runs there the tests named
//! in [`IN_GUEST`], and with `PHAUL_GUEST_ALL=1` those in [`IN_GUEST_MORE`]
//! too (CI runs the first set only, for time). Those are ignored outside
//! the guest; each can also be run alone (`cargo test --test guest_precopy
//! -- --ignored NAME`), which boots a guest for it. Under `CI` a machine
//! that cannot run the guest fails; elsewhere the tests are skipped with
//! the reason.
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
use phaul_core::fs::FsChoice;
use phaul_core::policy::{ConvergencePolicy, Decision, DowntimeBudget, PhaulRules};
use phaul_core::stats::IterationReport;
use phaul_core::{Migration, Mode, Progress, Report};
use phaul_htypes::registry::Paths;
use phaul_testkit::{Hosts, LxcContainer, alive, in_netns, kill_tree, require_criu, wait_until};

mod common;
use common::{Setup, Target, cfg, criu, migrate_from};

/// The workload with a controlled dirty set (see the file).
const DIRTY_PY: &str = include_str!("guest/dirty.py");
/// The tests that run inside the guest, in one boot: by default (and in
/// CI, whose time they fit) these ...
const IN_GUEST: &[&str] = &[
    "predump_chain_writes_only_the_dirty_set",
    "pre_copy_sends_only_the_dirty_set",
    "hybrid_moves_what_never_converges",
    "hybrid_post_copies_at_once_what_outruns_the_link",
    "a_container_moves_by_pre_copy",
];
/// ... and with `PHAUL_GUEST_ALL=1` these too.
const IN_GUEST_MORE: &[&str] = &[
    // Not reliable enough for CI: see its documentation.
    "budget_converges_and_predicts_the_downtime",
    "phaul_rules_stop_a_growing_dirty_set",
    "a_container_moves_by_hybrid",
    "auto_takes_hybrid_and_pre_copies_a_quiet_tree",
    "a_container_moves_by_post_copy",
];
/// The guest's time limit per test, boot included (TCG is slow, and the
/// host's cores are shared).
const GUEST_SECS_PER_TEST: usize = 240;
/// What `scripts/guest.sh` answers when this machine cannot run the guest.
const GUEST_UNSUPPORTED: i32 = 77;

#[test]
fn pre_copy_in_the_guest() {
    let mut names = IN_GUEST.to_vec();
    if std::env::var_os("PHAUL_GUEST_ALL").is_some_and(|v| v == "1") {
        names.extend(IN_GUEST_MORE);
    } else {
        eprintln!("PHAUL_GUEST_ALL=1 would also run {IN_GUEST_MORE:?} in the guest");
    }
    boot_guest(&names);
}

/// Runs `body` when this is the guest; else boots one for this test alone.
fn in_guest(name: &str, body: impl FnOnce()) {
    if std::env::var_os("PHAUL_IN_GUEST").is_none() {
        boot_guest(&[name]);
        return;
    }
    body();
    println!("GUEST-PASSED {name}");
}

/// Boots the guest on this test binary, runs the (ignored) tests `names`
/// there one at a time, and checks that each passed.
fn boot_guest(names: &[&str]) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../scripts/guest.sh");
    let exe = std::env::current_exe().unwrap();
    let started = Instant::now();
    let timeout = GUEST_SECS_PER_TEST * names.len();
    let out = Command::new(&script)
        .args(["--timeout", &timeout.to_string(), "--"])
        .arg(&exe)
        .args(["--ignored", "--exact", "--nocapture", "--test-threads=1"])
        .args(names)
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .expect("cannot run scripts/guest.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    print!("{stdout}");
    if out.status.code() == Some(GUEST_UNSUPPORTED) {
        phaul_testkit::unavailable(
            &format!("{names:?}"),
            "the guest (this machine cannot run scripts/guest.sh; see above)",
            "see scripts/guest.sh --check",
        );
        return;
    }
    assert!(
        out.status.success(),
        "the guest's tests failed ({})",
        out.status
    );
    for name in names {
        assert!(
            stdout.contains(&format!("GUEST-PASSED {name}\n")),
            "{name} did not run in the guest"
        );
    }
    println!(
        "{} guest test(s) in {:.1} s, boot included",
        names.len(),
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
    /// Starts one holding `mib` MiB, `percent` of it hot (growing by
    /// `grow`% a second once told to), inside host `netns` (a name under
    /// `/run/netns`) or in ours.
    fn start(netns: Option<&str>, mib: u32, percent: u32, grow: u32) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("phaul-dirty-")
            .tempdir()
            .unwrap();
        fs::set_permissions(dir.path(), fs::Permissions::from_mode(0o755)).unwrap();
        let script = dir.path().join("dirty.py");
        fs::write(&script, DIRTY_PY).unwrap();
        let out = dir.path().join("out");
        // nsenter execs unshare in place, so the child is still ours.
        let mut cmd = netns.map_or_else(
            || Command::new("unshare"),
            |ns| Hosts::command(ns, "unshare"),
        );
        let args = [mib, percent, grow].map(|n| n.to_string());
        let mut unshare = cmd
            .args(["--pid", "--fork", "setsid", "python3"])
            .arg(&script)
            .arg(&out)
            .args(args)
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
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
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
        // The engine's own guess (whether `auto` probes early) agrees.
        assert!(phaul_core::dirty::tracked_here());
        let mut w = Dirtier::start(None, 64, 5, 0);
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

/// A migration's report, and the decision pre-copy announced.
struct Moved {
    report: Report,
    decision: Option<Decision>,
}

impl Moved {
    /// The reason of the final decision, or "".
    fn why(&self) -> &str {
        self.decision
            .as_ref()
            .and_then(Decision::reason)
            .unwrap_or("")
    }
}

/// A test bed in the guest: two hosts, a target service, and a workload on
/// the source holding 32 MiB.
struct Bed {
    bin: PathBuf,
    hosts: Hosts,
    target: Target,
    w: Dirtier,
}

impl Bed {
    /// `percent` of the workload's memory is hot, growing by `grow`% a
    /// second once told to.
    fn new(test: &str, percent: u32, grow: u32) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_TEST_LOG"))
            .with_test_writer()
            .try_init();
        let bin = guest_criu(test);
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, criu(&bin));
        let w = Dirtier::start(Some(&hosts.src), 32, percent, grow);
        w.sweep_on(1);
        Self {
            bin,
            hosts,
            target,
            w,
        }
    }

    /// Migrates the workload in `mode` under `policy`; `after_first` runs
    /// once the first iteration ended (while the migration goes on). Then
    /// checks that it runs on the target host, sweeping on, with every page
    /// from the right iteration.
    fn migrate(
        &mut self,
        mode: Mode,
        policy: Box<dyn ConvergencePolicy>,
        after_first: impl FnOnce() + Send + 'static,
    ) -> Moved {
        let first = |p: &Progress| matches!(p, Progress::Iteration(_));
        self.migrate_hooked(mode, policy, first, after_first)
    }

    /// [`Bed::migrate`], with `hook` run at the first event `when` picks.
    fn migrate_hooked(
        &mut self,
        mode: Mode,
        policy: Box<dyn ConvergencePolicy>,
        when: fn(&Progress) -> bool,
        hook: impl FnOnce() + Send + 'static,
    ) -> Moved {
        let work = tempfile::Builder::new()
            .prefix("phaul-source-")
            .tempdir()
            .unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let events = std::thread::spawn(move || {
            let (mut hook, mut decision) = (Some(hook), None);
            while let Some(p) = rx.blocking_recv() {
                if when(&p) {
                    if let Some(f) = hook.take() {
                        f();
                    }
                }
                if let Progress::Decision(d) = p {
                    decision = d.is_final().then_some(d).or(decision);
                }
            }
            decision
        });
        let (bin, to) = (self.bin.clone(), self.target.addr.clone());
        let (dir, pid) = (work.path().to_owned(), self.w.pid);
        let report = in_netns(&self.hosts.src, move || async move {
            let htype = phaul_htypes::registry::source("pid", &pid.to_string()).unwrap();
            let m = Migration::new(criu(&bin), to, cfg(), htype)
                .mode(mode)
                .policy(policy)
                .progress(tx)
                .work_dir(&dir);
            tokio::time::timeout(Duration::from_secs(200), m.run())
                .await
                .expect("the migration hung")
        })
        .join()
        .expect("the source thread panicked");
        let decision = events.join().unwrap();
        print_report(&report, decision.as_ref());
        self.assert_moved(&report);
        Moved { report, decision }
    }

    fn assert_moved(&mut self, r: &Report) {
        assert!(r.success, "{} failed: {:?}", r.mode, r.error);
        if r.requested_mode != "auto" {
            assert_eq!(r.requested_mode, r.mode, "{}", r.mode_reason);
        }
        let pid = r.target_pid.expect("a target pid");
        self.w.restored.push(pid);
        assert!(
            Hosts::runs_in(&self.hosts.tgt, pid),
            "not restored in the target host"
        );
        let dumped_at = self.w.sweeps().unwrap_or(0);
        assert!(
            self.w.sweep_on(1) > dumped_at,
            "the moved workload does not sweep on"
        );
        let v = self.w.verdict(pid);
        assert!(v.starts_with("ok "), "moved memory is wrong: {v}");
    }

    /// The first pre-dump sent the whole buffer, each later iteration in
    /// `its` at least the hot set and at most a quarter of the first; the
    /// rest was in the parent images.
    fn assert_only_dirty_sent(&self, its: &[IterationReport]) {
        let (pages, hot) = (self.w.pages, self.w.hot);
        let first = &its[0];
        assert_eq!(first.kind, IterationReport::PRE_DUMP);
        assert!(first.pages_written >= pages, "{first:?}");
        for it in &its[1..] {
            let sent = it.pages_written + it.pages_lazy;
            assert!(sent >= hot, "the hot set was not sent: {it:?}");
            assert!(
                sent * 4 <= first.pages_written,
                "a later iteration sent too much: {it:?}"
            );
            assert!(it.pages_skipped_parent >= pages - hot, "{it:?}");
        }
    }
}

/// Runs `body` on a fresh [`Bed`] in the guest (see [`Bed::new`]).
fn on_bed(test: &str, percent: u32, grow: u32, body: impl FnOnce(&mut Bed)) {
    in_guest(test, || body(&mut Bed::new(test, percent, grow)));
}

fn print_report(r: &Report, decision: Option<&Decision>) {
    println!(
        "{}: {} iterations, downtime {:.0} ms, predicted {:.0} ms, total {:.0} ms; {decision:?}",
        r.mode,
        r.iterations,
        r.downtime_ms.unwrap_or(f64::NAN),
        r.predicted_downtime_ms.unwrap_or(f64::NAN),
        r.total_ms
    );
    println!(
        "restore {:.0} ms, image transfer {:.0} ms",
        r.restore_ms.unwrap_or(f64::NAN),
        r.image_transfer_ms
    );
    if let (Some(d), Some(l)) = (r.dirty_rate_mib_s, r.link_mib_s) {
        println!("before pre-copy: dirty rate {d:.1} MiB/s, link {l:.1} MiB/s");
    }
    println!("iteration  kind        written  skipped(parent)     lazy   frozen     took");
    for it in &r.per_iteration {
        println!(
            "{:>9}  {:<9} {:>9} {:>16} {:>8} {:>6.0} ms {:>6.0} ms",
            it.iteration,
            it.kind,
            it.pages_written,
            it.pages_skipped_parent,
            it.pages_lazy,
            it.frozen_us as f64 / 1000.0,
            it.duration_us as f64 / 1000.0
        );
    }
}

fn phaul_rules(max_iterations: u32) -> Box<dyn ConvergencePolicy> {
    Box::new(PhaulRules {
        max_iterations,
        ..PhaulRules::default()
    })
}

/// phaul's pre-copy, under P.Haul's rules, moves a workload that rewrites
/// 5% of its memory all the time: the pages written never shrink to
/// P.Haul's 64, so the iteration limit ends pre-copy; every iteration after
/// the first sent only the hot set.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn pre_copy_sends_only_the_dirty_set() {
    on_bed("pre_copy_sends_only_the_dirty_set", 5, 0, |bed| {
        let m = bed.migrate(Mode::PreCopy, phaul_rules(2), || {});
        let its = &m.report.per_iteration;
        assert_eq!(
            its.len(),
            4,
            "three pre-dumps (indexes 0 to 2), then the dump"
        );
        assert_eq!(its[3].kind, IterationReport::DUMP);
        bed.assert_only_dirty_sent(its);
        assert!(m.why().contains("too many iterations"), "{:?}", m.decision);
    });
}

/// The downtime budget ends pre-copy as soon as the predicted downtime
/// fits: a workload that does not write its buffer needs at most one
/// pre-dump after the first. The budget is generous because under emulation a
/// pre-dump's fixed costs alone take a second or more (and the first
/// pre-dump, of 32 MiB, over ten). Then two more such workloads move to the
/// same target, which has learned from the ones before what a switch-over
/// costs beyond its pages: the last one's predicted downtime is within a
/// quarter of the one measured. It is in most runs (1.04, 1.05, 0.98, 1.19
/// here) but not in all. Until session 9 the transfer part came from the
/// last pre-dump's time, which for a hundred pages is that pre-dump's fixed
/// costs and varied threefold under emulation (a CI run: 0.32); it now
/// comes from the largest pre-dump's rate and is some 50 ms, so a
/// prediction is what the target learned, and what is left is how much the
/// downtime itself varies from one migration to the next under emulation
/// (2.1 to 3.3 s in one run; 1.3 then 2.7 s in another, which failed).
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn budget_converges_and_predicts_the_downtime() {
    on_bed("budget_converges_and_predicts_the_downtime", 0, 0, |bed| {
        let budget = || {
            Box::new(DowntimeBudget {
                budget: Duration::from_secs(5),
                ..DowntimeBudget::default()
            })
        };
        let m = bed.migrate(Mode::PreCopy, budget(), || {});
        assert!(
            matches!(&m.decision, Some(Decision::Converged(why)) if why.contains("fits the budget")),
            "{:?}",
            m.decision
        );
        // One pre-dump may already predict a fitting downtime (the first
        // sends all 32 MiB: its bandwidth decides), or a second does.
        let its = &m.report.per_iteration;
        assert!(
            (2..=3).contains(&its.len()),
            "one or two pre-dumps, then the dump: {its:?}"
        );
        assert_eq!(
            its.last().map(|i| i.kind.as_str()),
            Some(IterationReport::DUMP)
        );
        bed.assert_only_dirty_sent(its);
        let predicted = m
            .report
            .predicted_downtime_ms
            .expect("a predicted downtime");
        assert!(predicted <= 5_000.0, "{predicted} ms");

        // The first restore in a fresh guest can be slower than the next
        // ones (by up to half a second): the second prediction learned from
        // that one alone, the third from the lower of two.
        let mut seen = Vec::new();
        for _ in 0..2 {
            bed.w = Dirtier::start(Some(&bed.hosts.src), 32, 0, 0);
            bed.w.sweep_on(1);
            let m = bed.migrate(Mode::PreCopy, budget(), || {});
            let r = &m.report;
            let (p, d) = (r.predicted_downtime_ms.unwrap(), r.downtime_ms.unwrap());
            println!(
                "learned: predicted {p:.0} ms, measured {d:.0} ms ({:.2})",
                p / d
            );
            seen.push((p, d));
        }
        let (p, d) = seen[1];
        assert!(
            (p - d).abs() <= d / 4.0,
            "predicted {p:.0} ms, measured {d:.0} ms: not within 25% ({seen:?})"
        );
    });
}

/// P.Haul's growth rule: once the workload's hot part starts growing (after
/// the first pre-dump), a pre-dump writes over 10% more than the one before
/// and pre-copy stops there with its final dump.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn phaul_rules_stop_a_growing_dirty_set() {
    on_bed("phaul_rules_stop_a_growing_dirty_set", 5, 3, |bed| {
        let pid = nix::unistd::Pid::from_raw(bed.w.pid);
        let grow = move || {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2);
        };
        let m = bed.migrate(Mode::PreCopy, phaul_rules(8), grow);
        assert!(m.why().contains("iteration grows"), "{:?}", m.decision);
        let its = &m.report.per_iteration;
        let pre: Vec<u64> = its[..its.len() - 1]
            .iter()
            .map(|i| i.pages_written)
            .collect();
        let (last, prev) = (pre[pre.len() - 1], pre[pre.len() - 2]);
        assert!(
            last * 10 > prev * 11,
            "the last pre-dump did not grow: {pre:?}"
        );
        assert!(
            pre.len() < 9,
            "stopped by the iteration limit instead: {pre:?}"
        );
    });
}

/// Hybrid: pre-copy while it helps, then post-copy for a workload whose
/// dirty set never shrinks: the final phase is a lazy dump, the workload
/// runs on the target at once and only the pages it dirtied since the last
/// pre-dump follow.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn hybrid_moves_what_never_converges() {
    on_bed("hybrid_moves_what_never_converges", 5, 0, |bed| {
        let m = bed.migrate(Mode::Hybrid, phaul_rules(2), || {});
        assert!(
            matches!(m.decision, Some(Decision::NotConverging(_))),
            "{:?}",
            m.decision
        );
        let last = m.report.per_iteration.last().unwrap();
        assert_eq!(last.kind, IterationReport::LAZY_DUMP, "{last:?}");
        assert!(
            last.pages_lazy >= bed.w.hot,
            "the hot set was not left for post-copy: {last:?}"
        );
        // The lazy dump too: with the pre-dumps' pagemaps copied back to
        // the source, it finds the clean pages in its parents, and
        // post-copy sends only what was dirtied since the last pre-dump
        // (the memory check above says each page came from the right image).
        bed.assert_only_dirty_sent(&m.report.per_iteration);
    });
}

/// `auto` on two hosts with memory tracking and lazy pages takes hybrid,
/// which measures the dirty rate first: a workload rewriting 5% of its
/// pages (a hot set) dirties far less than the link carries, so it is
/// pre-dumped, and only what was dirty at the end goes by post-copy.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn auto_takes_hybrid_and_pre_copies_a_quiet_tree() {
    on_bed(
        "auto_takes_hybrid_and_pre_copies_a_quiet_tree",
        5,
        0,
        |bed| {
            let m = bed.migrate(Mode::Auto, phaul_rules(2), || {});
            let r = &m.report;
            assert_eq!(
                (r.requested_mode.as_str(), r.mode.as_str()),
                ("auto", "hybrid")
            );
            assert!(r.mode_reason.contains("dirty rate"), "{}", r.mode_reason);
            // A hot set does not grow, whatever its size.
            let (dirty, link) = (r.dirty_rate_mib_s.unwrap(), r.link_mib_s.unwrap());
            assert!(dirty * 2.0 < link, "{dirty} MiB/s vs {link}");
            assert!(r.per_iteration.len() > 1, "{:?}", r.per_iteration);
            assert_eq!(r.per_iteration[0].kind, IterationReport::PRE_DUMP);
            bed.assert_only_dirty_sent(&r.per_iteration);
        },
    );
}

/// Hybrid on a workload whose dirty set grows faster than the link
/// carries pages (its hot part grows by 40% of its memory a second from
/// when the migration begins, as the probe does, beside the pre-flight
/// checks): the probe says no pre-dump can keep up, and hybrid post-copies
/// at once, with no pre-dump paid for.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn hybrid_post_copies_at_once_what_outruns_the_link() {
    on_bed(
        "hybrid_post_copies_at_once_what_outruns_the_link",
        5,
        40,
        |bed| {
            let pid = nix::unistd::Pid::from_raw(bed.w.pid);
            let grow = move || {
                let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGUSR2);
            };
            let begins = |p: &Progress| matches!(p, Progress::Phase(phaul_core::Phase::Preflight));
            let m = bed.migrate_hooked(Mode::Hybrid, phaul_rules(2), begins, grow);
            let r = &m.report;
            let (dirty, link) = (r.dirty_rate_mib_s.unwrap(), r.link_mib_s.unwrap());
            assert!(dirty * 2.0 >= link, "{dirty} MiB/s vs {link}");
            assert!(
                m.why().starts_with("before the first pre-dump"),
                "{:?}",
                m.decision
            );
            let kinds: Vec<_> = r.per_iteration.iter().map(|i| i.kind.as_str()).collect();
            assert_eq!(kinds, [IterationReport::LAZY_DUMP]);
        },
    );
}

/// An LXC container (phaul's `lxc` kind: phaul's CRIU pre-dumps and dumps
/// it, `lxc-checkpoint -r` restores it on the target) moves in `mode`
/// under P.Haul's rules with an iteration limit of 2, its root file system
/// synced once per iteration. Checks that pre-copy ran at least
/// `pre_dumps` pre-dumps with later ones writing fewer pages than the
/// first, one file system pass per pre-dump besides the first and the
/// final, and that LXC runs the container on the target, its counter going
/// on from where it was (it lives in a shell's memory) and its files there.
fn moves_a_container(test: &str, mode: Mode, pre_dumps: usize, last_kind: &str) {
    let bin = guest_criu(test);
    let hosts = Hosts::new().unwrap();
    let dir = |tag: &str| {
        tempfile::Builder::new()
            .prefix(&format!("phaul-lxc-{tag}-"))
            .tempdir()
            .unwrap()
    };
    let (src_dir, tgt_dir) = (dir("src"), dir("tgt"));
    let (src, tgt) = (src_dir.path().to_owned(), tgt_dir.path().to_owned());
    let name = format!("phg{}", std::process::id() % 100_000);
    let mut ct = LxcContainer::start(Some(&hosts.src), &src, &name).unwrap();
    ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
    let marker = Path::new(&name).join("rootfs/etc/phaul-marker");
    fs::write(src.join(&marker), "written before").unwrap();
    let before = LxcContainer::counter_in(&src, &name).unwrap();
    let setup = Setup {
        paths: Some(Paths {
            lxcpath: tgt.clone(),
            ..Paths::default()
        }),
        ..Setup::default()
    };
    let target = Target::start_with(&hosts, criu(&bin), setup);
    let (n, lxcpath) = (name.clone(), src.clone());
    let open = move || {
        let paths = Paths {
            lxcpath,
            ..Paths::default()
        };
        phaul_htypes::registry::source_in("lxc", &n, &paths).unwrap()
    };
    let (r, _work) = migrate_from(&hosts.src, &bin, &target.addr, open, move |m| {
        m.mode(mode).policy(phaul_rules(2)).fs(FsChoice::Native)
    });
    print_report(&r, None);
    println!("file system: {:?}", r.fs);
    assert!(r.success, "{} failed: {:?}", r.mode, r.error);
    assert_eq!(r.requested_mode, r.mode, "{}", r.mode_reason);
    let (last, pre) = r.per_iteration.split_last().expect("iterations");
    assert_eq!(last.kind, last_kind, "{last:?}");
    assert!(
        pre.len() >= pre_dumps,
        "fewer than {pre_dumps} pre-dumps: {pre:?}"
    );
    assert!(pre.iter().all(|i| i.kind == IterationReport::PRE_DUMP));
    let first = pre.first().map_or(0, |p| p.pages_written);
    for it in pre.iter().skip(1) {
        assert!(
            it.pages_written < first,
            "a later pre-dump wrote as much as the first ({first}): {it:?}"
        );
    }
    // The first pass, one after each pre-dump, the final one.
    assert_eq!(r.fs.driver, "native");
    assert_eq!(r.fs.passes as usize, pre.len() + 2, "{:?}", r.fs);
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.tgt), &tgt, &name).as_deref(),
        Some("RUNNING")
    );
    assert!(!src.join(&name).exists(), "the source kept the container");
    assert_eq!(
        fs::read_to_string(tgt.join(&marker)).unwrap(),
        "written before"
    );
    let c1 = LxcContainer::counter_in(&tgt, &name).unwrap();
    assert!(c1 >= before, "the counter went back: {c1} < {before}");
    assert!(
        wait_until(Duration::from_secs(30), || {
            LxcContainer::counter_in(&tgt, &name).filter(|c| *c > c1)
        })
        .is_some(),
        "the counter does not move on the target"
    );
}

/// A container moves by pre-copy (see [`moves_a_container`]).
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn a_container_moves_by_pre_copy() {
    let test = "a_container_moves_by_pre_copy";
    in_guest(test, || {
        moves_a_container(test, Mode::PreCopy, 2, IterationReport::DUMP);
    });
}

/// A container moves by post-copy on the guest's kernel too (see
/// [`moves_a_container`]): the lazy-pages daemon fetches in the background
/// from the restore on, so it may have every page before the commit (LXC
/// ran the container at once when this was found; now the copy is held
/// until the commit); its close waits for the commit (it used to reach
/// CRIU first, and the lazy dump failed).
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn a_container_moves_by_post_copy() {
    let test = "a_container_moves_by_post_copy";
    in_guest(test, || {
        moves_a_container(test, Mode::PostCopy, 0, IterationReport::LAZY_DUMP);
    });
}

/// A container moves by hybrid (see [`moves_a_container`]): its second
/// pre-dump writes under P.Haul's 64 pages, so pre-copy converges and
/// hybrid ends as pre-copy does, with a plain dump, not a lazy one.
#[test]
#[ignore = "runs in scripts/guest.sh's guest: pre_copy_in_the_guest runs it"]
fn a_container_moves_by_hybrid() {
    let test = "a_container_moves_by_hybrid";
    in_guest(test, || {
        moves_a_container(test, Mode::Hybrid, 2, IterationReport::DUMP);
    });
}
