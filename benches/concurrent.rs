//! Benchmark: many migrations at once, against a service's limit on
//! concurrent migrations.
//!
//! The hosts are `phaul_testkit::Hosts`: two network namespaces, A and B.
//! Each tree is a testkit `Workload` (python holding N MiB, a counter every
//! 100 ms) in its own PID namespace; every other one moves by stop-copy,
//! the others by post-copy. All the migrations of a case are started at
//! once, each a `Migration` on a thread of its own in its host, against
//! `Service`s on threads in the hosts, as `phaul-service` runs.
//!
//! The cases:
//!
//! 1. **one-way**: 16 migrations at once from A to one service in B, once
//!    with the service's default limit (two per CPU, at least 4) and once
//!    with a limit of 16 (every one let in at once), to show what the
//!    limit trades;
//! 2. **both-ways**: 8 from A to B's service and 8 from B to A's, at once,
//!    each service with its default limit.
//!
//! The queue's wait is raised to 110 s (the sources' request timeout to
//! 120 s), above the defaults (20 s, 30 s): on this slow machine the last
//! of sixteen would otherwise be refused as busy, and the cases are there
//! to measure the limit, not the refusals (`tests/concurrency.rs` has
//! those).
//!
//! Per case: how many moved (each checked: its memory intact on the other
//! host, the original gone), were refused as busy or rolled back (a source
//! frozen past its 30 s limit; checked: the tree runs on at home, its
//! memory intact); the most the services
//! ran at once (from their own events); **throughput** (migrations/s and
//! MiB/s of the trees' memory, from the first start to the last end,
//! post-copy's pull included); the **downtime** spread (each report's:
//! min, median, max); the **CPU and memory of phaul's own processes**:
//!
//! - phaul: this process, which holds every source and service (the
//!   engines, TLS, the links); CPU time from `getrusage(RUSAGE_SELF)`, its
//!   peak RSS from `VmHWM` after resetting it (`/proc/self/clear_refs`);
//! - CRIU: the `criu` processes phaul starts (dumps, restores, page
//!   servers, lazy-pages daemons); CPU time from
//!   `getrusage(RUSAGE_CHILDREN)` (those reaped in the case), memory as the
//!   peak of their summed RSS, sampled every 20 ms (children of this
//!   process named `criu`; a restored tree is not counted once it is the
//!   tree).
//!
//! The workloads' own CPU and memory are not counted. Timing on a shared
//! machine is noisy: compare the cases of one run, not runs of different
//! days. A case that fails is reported and makes the bench exit non-zero.
//! Without root or CRIU 4 it prints why and exits 0.
//!
//! ```text
//! cargo bench --bench concurrent                       # 16 x 64 MiB
//! PHAUL_BENCH_QUICK=1 cargo bench --bench concurrent   # 16 x 8 MiB
//! ```
//!
//! Narrowing: `PHAUL_BENCH_MIB=N`, `PHAUL_BENCH_COUNT=N` (migrations per
//! case), `PHAUL_BENCH_CASES=one-way,one-way-unlimited,both-ways`.

#![allow(clippy::print_stdout)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc as std_mpsc};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use nix::sys::resource::{UsageWho, getrusage};
use phaul_core::target::admission::default_max_running;
use phaul_core::target::metrics::Metrics;
use phaul_core::{Migration, Mode, Outcome, Report, ServiceEvent, Timeouts};
use phaul_testkit::{Hosts, Workload, alive, require_criu, wait_until};

mod common;
use common::{ServiceThread, engine_criu, link_config, migrate_in};

/// The link's shared key (both hosts are ours).
const KEY: &[u8] = b"phaul concurrent bench shared key";
/// Limit on one migration.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// How long a migration may wait in a service's queue, and the sources'
/// request timeout above it: longer than the defaults (20 s, 30 s), so
/// that on this slow machine every one of the sixteen gets its turn and
/// the case measures the limit, not refusals.
const QUEUE_WAIT: Duration = Duration::from_secs(110);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    OneWay,
    OneWayUnlimited,
    BothWays,
}

impl Case {
    const ALL: [Case; 3] = [Case::OneWay, Case::OneWayUnlimited, Case::BothWays];

    fn name(self) -> &'static str {
        match self {
            Case::OneWay => "one-way",
            Case::OneWayUnlimited => "one-way-unlimited",
            Case::BothWays => "both-ways",
        }
    }
}

#[derive(Debug, Clone)]
struct Config {
    mib: u32,
    count: usize,
    cases: Vec<Case>,
}

impl Config {
    fn from_env() -> Result<Self> {
        let quick = std::env::var_os("PHAUL_BENCH_QUICK").is_some();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let mib = match var("PHAUL_BENCH_MIB") {
            Some(m) => m.parse().context("PHAUL_BENCH_MIB")?,
            None if quick => 8,
            None => 64,
        };
        let count = match var("PHAUL_BENCH_COUNT") {
            Some(c) => c.parse().context("PHAUL_BENCH_COUNT")?,
            None => 16,
        };
        let cases = common::cases_from_env(&Case::ALL, |c: Case| c.name().to_string())?;
        Ok(Self { mib, count, cases })
    }
}

fn main() -> Result<()> {
    let Some(bin) = require_criu("concurrent bench") else {
        return Ok(());
    };
    common::raise_pipe_max_size()?;
    let cfg = Config::from_env()?;
    println!(
        "concurrent bench: {} vCPUs, {} migrations of {} MiB per case (stop-copy and post-copy alternating); default limit {}",
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        cfg.count,
        cfg.mib,
        default_max_running()
    );
    let mut failures = Vec::new();
    for &case in &cfg.cases {
        match run_case(&bin, case, &cfg) {
            Ok(r) => r.print(case, &cfg),
            Err(e) => {
                println!("{:<18} FAILED: {e:#}", case.name());
                failures.push(format!("{}: {e:#}", case.name()));
            }
        }
    }
    if !failures.is_empty() {
        bail!("{} case(s) failed: {failures:?}", failures.len());
    }
    Ok(())
}

/// One migration to make: the tree, the host it is in, where it goes.
struct Planned {
    from_ns: String,
    to_ns: String,
    addr: String,
    mode: Mode,
}

/// What a case measured.
struct CaseResult {
    limit: usize,
    ends: Ends,
    most_at_once: usize,
    waited: f64,
    wall: Duration,
    phaul_cpu: Duration,
    phaul_peak_rss_kib: u64,
    criu_cpu: Duration,
    criu_peak_rss_kib: u64,
    criu_most: usize,
}

/// A service of the bench, its metrics and its events.
struct Svc {
    thread: ServiceThread,
    metrics: Metrics,
    events: tokio::sync::mpsc::UnboundedReceiver<ServiceEvent>,
}

/// A service in host `ns` with `limit` (the default when `None`).
fn service(bin: &std::path::Path, ns: &str, ip: &str, limit: Option<usize>) -> Result<Svc> {
    let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (tx, rx) = std_mpsc::channel();
    // A work directory per service: a second service on one is refused.
    let (bin, dir) = (bin.to_path_buf(), scratch(&format!("target-{ns}"))?);
    let svc = ServiceThread::start(ns, ip, move || {
        let mut s = common::service(&bin, link_config(KEY)?, dir)
            .events(events)
            .queue(64, QUEUE_WAIT);
        if let Some(n) = limit {
            s = s.max_migrations(n);
        }
        let _ = tx.send(s.metrics());
        Ok(s)
    })?;
    let metrics = rx.recv_timeout(Duration::from_secs(10))?;
    Ok(Svc {
        thread: svc,
        metrics,
        events: events_rx,
    })
}

fn scratch(what: &str) -> Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("phaul-concurrent-{}-{what}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

fn run_case(bin: &std::path::Path, case: Case, cfg: &Config) -> Result<CaseResult> {
    let hosts = Hosts::new()?;
    let limit = (case == Case::OneWayUnlimited).then_some(cfg.count);
    let mut services = vec![service(bin, &hosts.tgt, &hosts.tgt_ip, limit)?];
    if case == Case::BothWays {
        services.push(service(bin, &hosts.src, &hosts.src_ip, limit)?);
    }
    let planned: Vec<Planned> = (0..cfg.count)
        .map(|i| {
            let back = case == Case::BothWays && i % 2 == 1;
            let (from_ns, to_ns, to) = match back {
                false => (&hosts.src, &hosts.tgt, 0),
                true => (&hosts.tgt, &hosts.src, 1),
            };
            Planned {
                from_ns: from_ns.clone(),
                to_ns: to_ns.clone(),
                addr: services[to].thread.addr.clone(),
                mode: match (i / 2) % 2 {
                    0 => Mode::StopCopy,
                    _ => Mode::PostCopy,
                },
            }
        })
        .collect();
    let mut trees = start_trees(&planned, cfg.mib)?;
    let usage = Usage::start();
    let t0 = Instant::now();
    let ends = run_all(bin, &planned, &trees)?;
    let wall = t0.elapsed();
    let (phaul_cpu, phaul_peak_rss_kib, criu_cpu, criu_peak_rss_kib, criu_most) = usage.finish();
    let ends = check(&planned, &mut trees, ends)?;
    let (mut waited, mut most) = (0.0, 0);
    for mut s in services {
        waited += sample(&s.metrics.render(), "phaul_migrations_waited_total");
        s.thread.stop()?;
        let mut events = Vec::new();
        while let Ok(e) = s.events.try_recv() {
            events.push(e);
        }
        most = most.max(most_at_once(&events));
    }
    Ok(CaseResult {
        limit: limit.unwrap_or_else(default_max_running),
        ends,
        most_at_once: most,
        waited,
        wall,
        phaul_cpu,
        phaul_peak_rss_kib,
        criu_cpu,
        criu_peak_rss_kib,
        criu_most,
    })
}

/// The trees, started side by side (each fills its memory first).
fn start_trees(planned: &[Planned], mib: u32) -> Result<Vec<Workload>> {
    std::thread::scope(|s| {
        let started: Vec<_> = planned
            .iter()
            .map(|p| s.spawn(move || Workload::start_in(Some(&p.from_ns), mib)))
            .collect();
        started
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("starting a workload panicked"))?
                    .context("starting a workload")
            })
            .collect()
    })
}

/// Every migration at once, each on a thread in its host; their reports.
fn run_all(bin: &std::path::Path, planned: &[Planned], trees: &[Workload]) -> Result<Vec<Report>> {
    let work = scratch("source")?;
    std::thread::scope(|s| {
        let runs: Vec<_> = planned
            .iter()
            .zip(trees)
            .map(|(p, w)| {
                let (bin, addr, mode, pid, dir) = (
                    bin.to_path_buf(),
                    p.addr.clone(),
                    p.mode,
                    w.pid,
                    work.clone(),
                );
                let ns = p.from_ns.clone();
                s.spawn(move || {
                    migrate_in(&ns, STEP_TIMEOUT, move || {
                        let htype = phaul_htypes::registry::source("pid", &pid.to_string())?;
                        Ok(
                            Migration::new(engine_criu(&bin), addr, link_config(KEY)?, htype)
                                .mode(mode)
                                .work_dir(&dir)
                                .timeouts(Timeouts {
                                    request: REQUEST_TIMEOUT,
                                    ..Timeouts::default()
                                }),
                        )
                    })
                })
            })
            .collect();
        runs.into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| anyhow!("a migration's thread panicked"))?
                    .map(|ran| ran.report)
            })
            .collect()
    })
}

/// How the migrations of a case ended.
#[derive(Debug, Default)]
struct Ends {
    moved: usize,
    /// Refused as busy before anything froze.
    busy: usize,
    /// Frozen, then rolled back (the freeze limit passed, mostly): the
    /// tree runs on at home.
    rolled_back: usize,
    /// Of those that moved.
    downtimes_ms: Vec<f64>,
}

/// Each moved intact (the original gone), or was refused as busy or
/// rolled back and runs on at home, intact; anything else fails the case.
fn check(planned: &[Planned], trees: &mut [Workload], ends: Vec<Report>) -> Result<Ends> {
    let mut e = Ends::default();
    for ((p, w), r) in planned.iter().zip(trees.iter_mut()).zip(ends) {
        if !r.success {
            ensure!(
                alive(w.pid) && Hosts::runs_in(&p.from_ns, w.pid),
                "a failed migration's tree is not at home: {r}"
            );
            let busy = r.error.as_deref().unwrap_or("").contains("busy");
            match r.outcome {
                Outcome::NotStarted if busy => e.busy += 1,
                Outcome::RolledBack => e.rolled_back += 1,
                _ => bail!("a migration failed: {r}"),
            }
            ensure!(w.memory_intact(w.pid) == Some(true), "{}'s memory", w.pid);
            continue;
        }
        let new = r.target_pid.context("no target pid")?;
        w.adopt(new);
        ensure!(Hosts::runs_in(&p.to_ns, new), "{new} is not in {}", p.to_ns);
        let old = w.pid;
        ensure!(
            wait_until(Duration::from_secs(10), || (!alive(old)).then_some(())).is_some(),
            "the original {old} still runs"
        );
        ensure!(w.memory_intact(new) == Some(true), "{new}'s memory");
        e.downtimes_ms.push(r.downtime_ms.unwrap_or(f64::NAN));
        e.moved += 1;
    }
    Ok(e)
}

/// Replays a service's events in order: the most migrations begun and not
/// yet ended at one time.
fn most_at_once(events: &[ServiceEvent]) -> usize {
    let (mut now, mut most) = (0usize, 0);
    for e in events {
        match e {
            ServiceEvent::Began { .. } => {
                now += 1;
                most = most.max(now);
            }
            ServiceEvent::Committed { .. } | ServiceEvent::RolledBack { .. } => {
                now = now.saturating_sub(1);
            }
            _ => {}
        }
    }
    most
}

/// The value of the sample named exactly `name`.
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

/// The resources phaul and its CRIU processes use from `start` to
/// `finish` (see the module's docs for what is counted).
struct Usage {
    self0: Duration,
    children0: Duration,
    stop: Arc<AtomicBool>,
    sampler: std::thread::JoinHandle<(u64, usize)>,
}

impl Usage {
    fn start() -> Self {
        // Resets VmHWM to the RSS now, so the peak read at the end is this
        // case's.
        let _ = std::fs::write("/proc/self/clear_refs", "5");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let sampler = std::thread::spawn(move || {
            let (mut peak, mut most) = (0, 0);
            while !flag.load(Ordering::Relaxed) {
                let (kib, n) = criu_children_rss();
                peak = peak.max(kib);
                most = most.max(n);
                std::thread::sleep(Duration::from_millis(20));
            }
            (peak, most)
        });
        Self {
            self0: cpu(UsageWho::RUSAGE_SELF),
            children0: cpu(UsageWho::RUSAGE_CHILDREN),
            stop,
            sampler,
        }
    }

    /// phaul's CPU and peak RSS; CRIU's CPU, peak summed RSS and the most
    /// CRIU processes at once.
    fn finish(self) -> (Duration, u64, Duration, u64, usize) {
        let self_cpu = cpu(UsageWho::RUSAGE_SELF).saturating_sub(self.self0);
        let criu_cpu = cpu(UsageWho::RUSAGE_CHILDREN).saturating_sub(self.children0);
        self.stop.store(true, Ordering::Relaxed);
        let (criu_rss, most) = self.sampler.join().unwrap_or((0, 0));
        (self_cpu, status_kib("VmHWM:"), criu_cpu, criu_rss, most)
    }
}

fn cpu(who: UsageWho) -> Duration {
    let Ok(ru) = getrusage(who) else {
        return Duration::ZERO;
    };
    let tv = |t: nix::sys::time::TimeVal| {
        Duration::from_secs(t.tv_sec().try_into().unwrap_or(0))
            + Duration::from_micros(t.tv_usec().try_into().unwrap_or(0))
    };
    tv(ru.user_time()) + tv(ru.system_time())
}

/// A `kB` line of /proc/self/status.
fn status_kib(key: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The summed RSS (KiB) of this process's children named `criu`, and how
/// many there are.
fn criu_children_rss() -> (u64, usize) {
    let me = std::process::id().to_string();
    let page_kib = 4;
    let (mut kib, mut n) = (0, 0);
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        // pid (comm) state ppid ... rss is field 24; comm may hold spaces.
        let Some((head, rest)) = stat.rsplit_once(") ") else {
            continue;
        };
        if !head.ends_with("(criu") {
            continue;
        }
        let f: Vec<&str> = rest.split_whitespace().collect();
        if f.get(1) != Some(&me.as_str()) {
            continue;
        }
        if let Some(pages) = f.get(21).and_then(|r| r.parse::<u64>().ok()) {
            kib += pages * page_kib;
            n += 1;
        }
    }
    (kib, n)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let i = ((p * (s.len() - 1) as f64).round() as usize).min(s.len() - 1);
    s[i]
}

impl CaseResult {
    fn print(&self, case: Case, cfg: &Config) {
        let secs = self.wall.as_secs_f64();
        let moved = self.ends.moved;
        let mib = moved as f64 * f64::from(cfg.mib);
        let d = &self.ends.downtimes_ms;
        println!(
            "{}, limit {} per service: {} moved, {} refused as busy, {} rolled back (tree intact at home), {:.0} waited in a queue, at most {} at once on a service",
            case.name(),
            self.limit,
            moved,
            self.ends.busy,
            self.ends.rolled_back,
            self.waited,
            self.most_at_once,
        );
        println!(
            "    throughput  {:.1} s for all: {:.2} migrations/s, {:.1} MiB/s",
            secs,
            moved as f64 / secs,
            mib / secs,
        );
        println!(
            "    downtime    min {:.0} ms, median {:.0} ms, max {:.0} ms (max/median {:.1})",
            percentile(d, 0.0),
            percentile(d, 0.5),
            percentile(d, 1.0),
            percentile(d, 1.0) / percentile(d, 0.5),
        );
        println!(
            "    phaul       CPU {:.1} s ({:.2} s per migration), peak RSS {} MiB",
            self.phaul_cpu.as_secs_f64(),
            self.phaul_cpu.as_secs_f64() / moved.max(1) as f64,
            self.phaul_peak_rss_kib / 1024,
        );
        println!(
            "    CRIU        CPU {:.1} s ({:.2} s per migration), peak RSS {} MiB summed over up to {} processes at once",
            self.criu_cpu.as_secs_f64(),
            self.criu_cpu.as_secs_f64() / moved.max(1) as f64,
            self.criu_peak_rss_kib / 1024,
            self.criu_most,
        );
    }
}
