//! Benchmark: pre-copy's dump iterations against a workload rewriting a
//! known share of its memory per second, and the pause each way of moving
//! it makes the workload feel, side by side in one guest run.
//!
//! This host's kernel has no soft-dirty tracking, so pre-dumps only run in
//! the guest of `scripts/guest.sh` (Debian 12's kernel under QEMU). Run on
//! the host, the bench boots that guest on its own binary (the guest sees
//! the host's files read-only) and runs the cases there; under TCG
//! emulation absolute times mean little, so its results are read as ratios.
//!
//! The workload (`guest/rate.py`) holds N MiB and every 50 ms stamps the
//! next pages of its buffer, so that R% of its pages are rewritten per
//! second, walking round the buffer: what a pre-dump finds dirty grows with
//! the time since the one before. It measures its own **felt downtime**:
//! the longest time between two of its ticks beyond the 50 ms a tick
//! sleeps, from just before the migration until it has ticked on the
//! target for a second.
//!
//! For each rate (1%, 10%, 50% a second) four cases run, each with a fresh
//! workload, between the rate's own two hosts (network namespaces): one
//! target service, which learns from one migration to the next what its
//! switch-overs cost, and on the source one CRIU handle, as a source's
//! daemon keeps one, which believes what its CRIU said of itself for
//! minutes. The cases are phaul **pre-copy** (downtime budget 2 s, at most
//! 4 pre-dumps after the first), **hybrid** (the same, then a lazy dump and
//! post-copy), **stop-copy** and **post-copy**, after one small post-copy
//! that is not counted (the guest's first migration reads its programs
//! over 9p, and that CRIU's answers about itself are asked then). Printed
//! per case: pages written and time per iteration,
//! the policy's decision and the iterations it took, predicted and measured
//! downtime, total time and felt downtime, and when each phase began;
//! then per rate a table of those,
//! and the issue's goals (PASS / ABOVE GOAL, never asserted): pre-copy's
//! felt downtime at most 0.3x stop-copy's at 1%, hybrid's total time at
//! most post-copy's at 50%. After each case the bench checks that the
//! workload ticks on in the target host. A case that fails is reported and
//! makes the bench exit non-zero at the end. Without root, CRIU or a
//! machine that can run the guest it prints why and exits 0.
//!
//! ```text
//! cargo bench --bench iterations                       # 256 MiB
//! PHAUL_BENCH_QUICK=1 cargo bench --bench iterations   # 32 MiB
//! ```
//!
//! Narrowing: `PHAUL_BENCH_MIB=64`, `PHAUL_BENCH_RATES=1,50` (percent a
//! second), `PHAUL_BENCH_CASES=pre-copy,hybrid,stop-copy,post-copy`,
//! `PHAUL_BENCH_BUDGET_MS=2000` (pre-copy's downtime budget).
//! `PHAUL_BENCH_RAM=off` keeps a post-copy's images on disk on both hosts,
//! as hybrid's are (an A/B).
//! `PHAUL_BENCH_LOG=phaul_core=debug` (a `tracing` filter) prints the
//! engine's and the service's log, with timestamps, from the guest.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::Path;
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use phaul_core::criu::Criu;
use phaul_core::policy::{ConvergencePolicy, Decision, DowntimeBudget};
use phaul_core::stats::IterationReport;
use phaul_core::{Migration, Mode, Progress, Report};
use phaul_testkit::{Hosts, kill_tree, wait_until};

mod common;
use common::{Ran, ServiceThread, engine_criu, link_config, migrate_in};

/// The workload (see the file).
const RATE_PY: &str = include_str!("guest/rate.py");
/// The link's key on both ends.
const KEY: &[u8] = b"phaul iterations bench key, 32 b";
/// What `scripts/guest.sh` answers when this machine cannot run the guest.
const GUEST_UNSUPPORTED: i32 = 77;
/// One migration's limit: the first pre-dump of 256 MiB alone takes
/// minutes under emulation on a loaded machine.
const MIGRATION_LIMIT: Duration = Duration::from_secs(1200);
/// The longest the source may stay frozen: stop-copy's one dump of
/// 256 MiB takes over a minute under emulation, past the engine's default.
const FREEZE_LIMIT: Duration = Duration::from_secs(900);
/// The modes compared, in the order run and printed. Hybrid goes first:
/// where it ends with a plain dump, the target learns from it what a
/// switch-over costs beyond its pages, and pre-copy's prediction has that.
const MODES: [Mode; 4] = [Mode::Hybrid, Mode::PreCopy, Mode::StopCopy, Mode::PostCopy];

fn main() -> ExitCode {
    let run = if std::env::var_os("PHAUL_IN_GUEST").is_some() {
        common::log_from_env();
        in_guest()
    } else {
        boot_guest()
    };
    match run {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("iterations bench: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What to run, from the environment.
#[derive(Clone)]
struct Config {
    mib: u32,
    rates: Vec<u32>,
    modes: Vec<Mode>,
    budget: Duration,
}

impl Config {
    fn from_env() -> Result<Self> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let quick = var("PHAUL_BENCH_QUICK").is_some_and(|v| v != "0");
        let mib = match var("PHAUL_BENCH_MIB") {
            Some(v) => v.parse().context("PHAUL_BENCH_MIB")?,
            None if quick => 32,
            None => 256,
        };
        let rates = match var("PHAUL_BENCH_RATES") {
            Some(v) => v
                .split(',')
                .map(|r| r.trim().parse().context("PHAUL_BENCH_RATES"))
                .collect::<Result<_>>()?,
            None => vec![1, 10, 50],
        };
        let modes = common::cases_from_env(&MODES, |m: Mode| m.as_str().to_string())?;
        let budget = match var("PHAUL_BENCH_BUDGET_MS") {
            Some(v) => Duration::from_millis(v.parse().context("PHAUL_BENCH_BUDGET_MS")?),
            None => Duration::from_secs(2),
        };
        Ok(Self {
            mib,
            rates,
            modes,
            budget,
        })
    }

    /// Pre-copy's and hybrid's policy: the budget, at most 4 pre-dumps
    /// after the first (each of 256 MiB's first ones takes minutes here).
    fn policy(&self) -> Box<dyn ConvergencePolicy> {
        Box::new(DowntimeBudget {
            budget: self.budget,
            max_iterations: 4,
            ..DowntimeBudget::default()
        })
    }
}

/// On the host: boots the guest on this binary, with its arguments, and
/// relays its output. `Ok(true)` when the guest's run passed or this
/// machine cannot run the guest (said so).
fn boot_guest() -> Result<bool> {
    if !phaul_testkit::is_root() {
        println!("SKIPPED iterations bench: not running as root (the guest needs root)");
        return Ok(true);
    }
    let cfg = Config::from_env()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/guest.sh");
    // Generous: up to 4 minutes a case per 32 MiB (at most 24 a case) on
    // a loaded machine under emulation, and the boot.
    let cases = cfg.rates.len() * cfg.modes.len();
    let secs = 300 + cases as u64 * 240 * u64::from(cfg.mib.div_ceil(32)).min(6);
    let status = Command::new(&script)
        .args(["--timeout", &secs.to_string(), "--"])
        .arg(std::env::current_exe()?)
        .args(std::env::args_os().skip(1))
        .stdin(Stdio::null())
        .status()
        .with_context(|| format!("cannot run {}", script.display()))?;
    if status.code() == Some(GUEST_UNSUPPORTED) {
        println!("SKIPPED iterations bench: this machine cannot run scripts/guest.sh (see above)");
        return Ok(true);
    }
    Ok(status.success())
}

/// In the guest: every rate, every case; `Ok(false)` if one failed.
fn in_guest() -> Result<bool> {
    let Some(bin) = phaul_testkit::require_criu("iterations bench") else {
        bail!("the guest cannot run the host's CRIU");
    };
    let cfg = Config::from_env()?;
    println!(
        "iterations bench in the guest: {} MiB, rewriting {:?}% a second, cases {:?}, pre-copy budget {} ms",
        cfg.mib,
        cfg.rates,
        cfg.modes.iter().map(|m| m.as_str()).collect::<Vec<_>>(),
        cfg.budget.as_millis()
    );
    let mut done: Vec<Case> = Vec::new();
    let mut failed = Vec::new();
    for (round, &rate) in cfg.rates.iter().enumerate() {
        // One target per rate, as a host that receives one migration after
        // another: it learns what its switch-overs cost beyond their pages
        // (see MODES).
        let (hosts, service, _target_dir) = fresh_hosts(&bin)?;
        // One CRIU handle for the source host's migrations, as its daemon
        // keeps one (phaul-service's orders share it): what that CRIU says
        // of itself is asked by the warm-up, and believed by the cases.
        let criu = engine_criu(&bin);
        warm_up(&criu, &cfg, (&hosts, &service.addr))?;
        for &mode in &cfg.modes {
            match run_case(&criu, &cfg, (&hosts, &service.addr), rate, mode) {
                Ok(c) => {
                    print_case(&c);
                    done.push(Case { round, ..c });
                }
                Err(e) => {
                    println!("{rate}%/s {mode}: FAILED: {e:#}");
                    failed.push(format!("{rate}%/s {mode}"));
                }
            }
        }
        let _ = service.stop();
        print_rate(rate, &done);
    }
    print_goals(&done);
    if !failed.is_empty() {
        println!("failed cases: {}", failed.join(", "));
    }
    Ok(failed.is_empty())
}

/// One small post-copy to each rate's target before its cases, not
/// counted (a post-copy teaches a target nothing of its switch-overs).
/// The guest's first migration reads CRIU, Python and their libraries over
/// 9p: its pre-flight took 3.2–3.5 s against the next ones' 1.2–1.6, and
/// its freeze began half a second later (session 18's timelines). And a
/// target's first migration waited for its CRIU's nftables probe (0.7 s
/// here; session 19's trace), which the service now makes as it starts,
/// but which a case would still share the CPUs with. Both went to
/// whichever case ran first.
fn warm_up(criu: &Criu, cfg: &Config, (hosts, addr): (&Hosts, &str)) -> Result<()> {
    let small = Config {
        mib: 8,
        ..cfg.clone()
    };
    let c = run_case(criu, &small, (hosts, addr), 1, Mode::PostCopy)
        .context("the warm-up migration")?;
    println!(
        "warm-up (not counted): 8 MiB post-copy, total {:.0} ms",
        c.report.total_ms
    );
    Ok(())
}

/// New hosts, and a target service in theirs with its own directory.
fn fresh_hosts(bin: &Path) -> Result<(Hosts, ServiceThread, tempfile::TempDir)> {
    let hosts = Hosts::new()?;
    let target_dir = tempdir("phaul-bench-target-")?;
    let (b, dir) = (bin.to_path_buf(), target_dir.path().to_path_buf());
    let service = ServiceThread::start(&hosts.tgt, &hosts.tgt_ip, move || {
        Ok(common::service(&b, link_config(KEY)?, dir))
    })?;
    Ok((hosts, service, target_dir))
}

/// One migration of one workload, as measured.
struct Case {
    /// Which of the run's rates (`PHAUL_BENCH_RATES` may repeat one).
    round: usize,
    rate: u32,
    mode: Mode,
    report: Report,
    decision: Option<Decision>,
    /// What the workload did rewrite, in percent of its pages a second.
    measured_rate: f64,
    felt_ms: f64,
    /// When each phase began, in ms from the call, and when the run
    /// returned: where a case's total went.
    timeline: String,
}

/// One migration from `on.0`'s source host to the service at `on.1`.
fn run_case(criu: &Criu, cfg: &Config, on: (&Hosts, &str), rate: u32, mode: Mode) -> Result<Case> {
    let (hosts, addr) = on;
    let mut w = Workload::start(&hosts.src, cfg.mib, rate)?;
    let measured_rate = w.measure_rate(Duration::from_secs(3))?;
    w.measure_from_now()?;
    let work = tempdir("phaul-bench-source-")?;
    let (c, addr, dir, pid) = (
        criu.clone(),
        addr.to_owned(),
        work.path().to_path_buf(),
        w.pid,
    );
    let policy = cfg.policy();
    let t0 = Instant::now();
    let Ran {
        report,
        events,
        ended,
    } = migrate_in(&hosts.src, MIGRATION_LIMIT, move || {
        let htype = phaul_htypes::registry::source("pid", &pid.to_string())?;
        Ok(Migration::new(c, addr, link_config(KEY)?, htype)
            .mode(mode)
            .policy(policy)
            .freeze_timeout(FREEZE_LIMIT)
            .images_in_ram(common::images_in_ram())
            .work_dir(&dir))
    })?;
    common::succeeded_as(&report, mode)?;
    let moved = report
        .target_pid
        .ok_or_else(|| anyhow!("the report has no target pid"))?;
    w.restored = Some(moved);
    ensure!(
        Hosts::runs_in(&hosts.tgt, moved),
        "the workload is not in the target host"
    );
    // A second of ticks on the target: post-copy's faults are felt there.
    let felt_ms = w.felt_after(20)?;
    let timeline = timeline(t0, &events, ended);
    let decision = events.into_iter().find_map(|(_, p)| match p {
        Progress::Decision(d) if d.is_final() => Some(d),
        _ => None,
    });
    Ok(Case {
        round: 0,
        rate,
        mode,
        report,
        decision,
        measured_rate,
        felt_ms,
        timeline,
    })
}

/// `phase ms, ...` from `t0`, with the freeze, the resume and the return.
fn timeline(t0: Instant, events: &[(Instant, Progress)], ended: Instant) -> String {
    let at = |t: Instant| t.duration_since(t0).as_millis();
    let mut out: Vec<String> = events
        .iter()
        .filter_map(|(t, p)| {
            let what = match p {
                Progress::Phase(ph) => ph.as_str().to_string(),
                Progress::Frozen => "frozen".into(),
                Progress::Resumed(_) => "resumed".into(),
                Progress::Decision(d) if d.is_final() => "decided".into(),
                _ => return None,
            };
            Some(format!("{what} {}", at(*t)))
        })
        .collect();
    out.push(format!("returned {}", at(ended)));
    out.join(", ")
}

fn tempdir(prefix: &str) -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new().prefix(prefix).tempdir()?)
}

/// `rate.py` as PID 1 of its own PID namespace (so its restore does not
/// need its old PID free), in its own session, inside a host.
struct Workload {
    dir: tempfile::TempDir,
    unshare: Child,
    pid: i32,
    pages: u64,
    /// Its copy on the target, once moved.
    restored: Option<i32>,
}

/// One line of the workload's output file.
#[derive(Debug, Clone, Copy)]
struct Tick {
    ticks: u64,
    longest_ms: f64,
    written: u64,
}

impl Workload {
    fn start(ns: &str, mib: u32, rate: u32) -> Result<Self> {
        let dir = tempdir("phaul-bench-rate-")?;
        let script = dir.path().join("rate.py");
        std::fs::write(&script, RATE_PY)?;
        let out = dir.path().join("out");
        let mut unshare = Hosts::command(ns, "unshare")
            .args(["--pid", "--fork", "setsid", "python3"])
            .arg(&script)
            .arg(&out)
            .args([mib.to_string(), rate.to_string()])
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let uid = i32::try_from(unshare.id())?;
        let ready = out.with_extension("ready");
        let found = wait_until(Duration::from_secs(300), || {
            let pages = std::fs::read_to_string(&ready).ok()?.trim().parse().ok()?;
            let kids = std::fs::read_to_string(format!("/proc/{uid}/task/{uid}/children")).ok()?;
            Some((kids.split_whitespace().next()?.parse::<i32>().ok()?, pages))
        });
        let Some((pid, pages)) = found else {
            let _ = unshare.kill();
            let _ = unshare.wait();
            bail!("rate.py did not become ready");
        };
        Ok(Self {
            dir,
            unshare,
            pid,
            pages,
            restored: None,
        })
    }

    fn tick(&self) -> Option<Tick> {
        let s = std::fs::read_to_string(self.dir.path().join("out")).ok()?;
        let mut n = s.split_whitespace();
        Some(Tick {
            ticks: n.next()?.parse().ok()?,
            longest_ms: n.next()?.parse().ok()?,
            written: n.next()?.parse().ok()?,
        })
    }

    /// Waits until it ticked `n` more times than now; that tick.
    fn ticked(&self, n: u64, limit: Duration) -> Result<Tick> {
        let from = self.tick().map_or(0, |t| t.ticks);
        wait_until(limit, || self.tick().filter(|t| t.ticks >= from + n))
            .ok_or_else(|| anyhow!("the workload stopped ticking"))
    }

    /// The share of its pages it rewrites a second, over `window`.
    fn measure_rate(&self, window: Duration) -> Result<f64> {
        let a = self.ticked(1, Duration::from_secs(60))?;
        let t0 = Instant::now();
        std::thread::sleep(window);
        let b = self.ticked(1, Duration::from_secs(60))?;
        let secs = t0.elapsed().as_secs_f64();
        Ok((b.written - a.written) as f64 * 100.0 / self.pages as f64 / secs)
    }

    /// Makes it measure its longest pause from now on.
    fn measure_from_now(&self) -> Result<()> {
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.pid),
            nix::sys::signal::Signal::SIGUSR1,
        )?;
        // The next tick's line carries the reset.
        self.ticked(2, Duration::from_secs(60))?;
        Ok(())
    }

    /// Its longest pause once it ticked `n` more times (wherever it runs).
    fn felt_after(&self, n: u64) -> Result<f64> {
        Ok(self.ticked(n, Duration::from_secs(300))?.longest_ms)
    }
}

impl Drop for Workload {
    fn drop(&mut self) {
        for pid in self.restored.into_iter().chain([self.pid]) {
            kill_tree(pid);
        }
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
    }
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.0} ms"))
}

fn print_case(c: &Case) {
    let r = &c.report;
    println!(
        "{}%/s (measured {:.1}%/s) {}: {} iterations, downtime {} (predicted {}), total {:.0} ms, felt {:.0} ms; {}",
        c.rate,
        c.measured_rate,
        c.mode,
        r.iterations,
        ms(r.downtime_ms),
        ms(r.predicted_downtime_ms),
        r.total_ms,
        c.felt_ms,
        c.decision
            .as_ref()
            .map_or_else(String::new, |d| format!("{d:?}"))
    );
    println!("    timeline (ms): {}", c.timeline);
    println!(
        "    downtime's parts: restore {}, images {:.0} ms",
        ms(r.restore_ms),
        r.image_transfer_ms
    );
    if let (Some(d), Some(l)) = (r.dirty_rate_mib_s, r.link_mib_s) {
        println!("    before pre-copy: dirty set grew {d:.1} MiB/s, link {l:.1} MiB/s");
    }
    for it in &r.per_iteration {
        println!(
            "    {:>2} {:<9} {:>8} pages written {:>8} lazy {:>8.0} ms, frozen {:.0} ms",
            it.iteration,
            it.kind,
            it.pages_written,
            it.pages_lazy,
            it.duration_us as f64 / 1000.0,
            it.frozen_us as f64 / 1000.0
        );
    }
}

/// A rate's cases side by side; ratios to stop-copy's felt downtime and
/// post-copy's total time.
fn print_rate(rate: u32, done: &[Case]) {
    let cases: Vec<&Case> = done.iter().filter(|c| c.rate == rate).collect();
    let of = |m: Mode| cases.iter().find(|c| c.mode == m);
    let stop_felt = of(Mode::StopCopy).map(|c| c.felt_ms);
    let post_total = of(Mode::PostCopy).map(|c| c.report.total_ms);
    println!("\n{rate}% rewritten a second:");
    println!(
        "| case | iterations | pages per iteration | predicted downtime | downtime | felt | felt / stop-copy's | total / post-copy's |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for c in cases {
        let r = &c.report;
        let pages: Vec<String> = r
            .per_iteration
            .iter()
            .map(|i| (i.pages_written + i.pages_lazy).to_string())
            .collect();
        let ratio = |a: f64, b: Option<f64>| b.map_or("-".to_string(), |b| format!("{:.2}", a / b));
        println!(
            "| {} | {} | {} | {} | {} | {:.0} ms | {} | {} |",
            c.mode,
            r.iterations,
            pages.join(", "),
            ms(r.predicted_downtime_ms),
            ms(r.downtime_ms),
            c.felt_ms,
            ratio(c.felt_ms, stop_felt),
            ratio(r.total_ms, post_total)
        );
    }
    println!();
}

/// The issue's goals, printed, never asserted.
fn print_goals(done: &[Case]) {
    // Per round of the rate, the ratio of `of` between two cases, and the
    // median over the rounds (the lower middle of an even count).
    let goal = |what: &str, rate: u32, (a, b): (Mode, Mode), of: fn(&Case) -> f64, limit: f64| {
        let mut ratios: Vec<f64> = done
            .iter()
            .filter(|c| c.rate == rate && c.mode == a)
            .filter_map(|x| {
                let y = done.iter().find(|c| c.round == x.round && c.mode == b)?;
                (of(y) > 0.0).then(|| of(x) / of(y))
            })
            .collect();
        let each: Vec<String> = ratios.iter().map(|r| format!("{r:.2}")).collect();
        ratios.sort_by(f64::total_cmp);
        match ratios.get(ratios.len().saturating_sub(1) / 2) {
            Some(&r) => {
                let verdict = if r <= limit { "PASS" } else { "ABOVE GOAL" };
                println!(
                    "goal: {what} = {r:.2}, the median of {} (goal <= {limit}) {verdict}",
                    each.join(", ")
                );
            }
            None => println!("goal: {what}: not measured in this run"),
        }
    };
    goal(
        "pre-copy felt downtime / stop-copy's at 1%",
        1,
        (Mode::PreCopy, Mode::StopCopy),
        |c| c.felt_ms,
        0.3,
    );
    // Every case with a plain final dump after pre-dumps predicted one.
    for c in done.iter().filter(|c| c.report.iterations > 1) {
        let (r, last) = (&c.report, c.report.per_iteration.last());
        if last.is_some_and(|i| i.kind == IterationReport::DUMP) {
            if let (Some(p), Some(d)) = (r.predicted_downtime_ms, r.downtime_ms) {
                let ok = if (p - d).abs() <= d / 4.0 {
                    "WITHIN"
                } else {
                    "OUTSIDE"
                };
                println!(
                    "goal: {}%/s {} predicted / measured downtime = {:.2} (goal 0.75 to 1.25) {ok}",
                    c.rate,
                    c.mode,
                    p / d
                );
            }
        }
    }
    goal(
        "hybrid total time / post-copy's at 50%",
        50,
        (Mode::Hybrid, Mode::PostCopy),
        |c| c.report.total_ms,
        1.0,
    );
}
