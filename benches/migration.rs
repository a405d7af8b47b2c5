//! Benchmark: a whole live migration through phaul's engine next to the same
//! migration run by hand with the plain `criu` command line, between two
//! "hosts" (network namespaces joined by a veth pair, `phaul_testkit::Hosts`).
//!
//! The workload is `phaul_testkit::Workload`: a python process holding N MiB
//! with a known pattern, PID 1 of its own PID namespace inside the source
//! host, rewriting a counter file every 10 ms. N is 256 MiB and 1 GiB (quick:
//! 64 and 256 MiB). Each case runs 3 times (quick: once) on a fresh pair of
//! hosts and a fresh workload, the cases of one round interleaved (the order
//! reversed every other round); medians are reported. The full run starts
//! with one uncounted warm-up round at 64 MiB.
//!
//! The five cases:
//!
//! 1. **phaul stop-copy**: `Migration::new(..).mode(Mode::StopCopy).run()` on
//!    a thread inside the source host, against a `Service` on a thread inside
//!    the target host (TLS link, pages relayed from CRIU's page server).
//!    Downtime and total are the engine's `Report::downtime_ms` and
//!    `total_ms`.
//! 2. **phaul post-copy**: the same with `Mode::PostCopy`; the total includes
//!    the background pull of the remaining memory.
//! 3. **hand-run stop-copy**, the goal's baseline as the issue names it,
//!    `criu dump` -> copy -> `criu restore` (argv, no shell; `T`, `S` fresh
//!    directories on the same file system, so the copy is the cheapest one
//!    there is: no network):
//!
//!    ```text
//!    nsenter --net=/run/netns/SRC criu dump -t PID -D S -o dump.log
//!    cp S/*.img T/
//!    nsenter --net=/run/netns/TGT criu restore -D T -d -o restore.log --pidfile T/../restored.pid
//!    ```
//!
//!    Downtime: from the start of `criu dump` until `criu restore` returned
//!    (the process then runs); dump, copy and restore are also timed apart.
//! 4. **hand-run stop-copy with CRIU's page server**, a stricter reference
//!    (no goal): the pages go to the target while they are dumped, as
//!    phaul's do.
//!
//!    ```text
//!    nsenter --net=/run/netns/TGT criu page-server -D T --address TGT_IP --port 27000 -o page-server.log &
//!    # wait until 27000 listens in TGT (its /proc/PID/net/tcp, what `ss -ltn` shows)
//!    nsenter --net=/run/netns/SRC criu dump -t PID -D S --page-server --address TGT_IP --port 27000 -o dump.log
//!    cp S/*.img T/
//!    nsenter --net=/run/netns/TGT criu restore -D T -d -o restore.log --pidfile T/../restored.pid
//!    ```
//!
//!    Downtime as in 3; total: from starting the page server to the restore
//!    returned.
//! 5. **hand-run post-copy** (lazy pages):
//!
//!    ```text
//!    nsenter --net=/run/netns/SRC criu dump -t PID -D S --lazy-pages --address SRC_IP --port 27001 -o dump.log &
//!    # wait until 27001 listens in SRC
//!    cp S/*.img T/
//!    nsenter --net=/run/netns/TGT criu lazy-pages --page-server --address SRC_IP --port 27001 -D T -o lazy-pages.log &
//!    # wait for T/lazy-pages.socket
//!    nsenter --net=/run/netns/TGT criu restore --lazy-pages -D T -d -o restore.log --pidfile T/../restored.pid
//!    ```
//!
//!    Downtime: from the start of `criu dump` until `criu restore` returned;
//!    total: until the source's `criu dump` exited (every page pulled).
//!
//! **Felt downtime**, for every case: a thread reads the workload's counter
//! file every 2 ms from before the migration until the restored process has
//! moved it twice more, and reports the longest gap between two counter
//! changes minus the counter's nominal 10 ms period. It is the pause the
//! workload itself sees, whatever any tool says.
//!
//! After each case the bench checks that the workload really moved: the new
//! PID is alive in the target host's network namespace, the source process
//! is gone, and the workload's own checksum of its memory is intact
//! (`Workload::memory_intact`). Then it kills it, checks that no process is
//! left in either namespace (killing, by PID, any it finds, and saying so),
//! and removes the namespaces. At the end it checks that no process started
//! by the bench and none of its namespaces is left.
//!
//! Printed: a header (machine, CRIU, what is compared), a table per size
//! (downtime, felt downtime and total, medians), the median time of each
//! phase, and the ratio lines with their goals: phaul post-copy downtime /
//! hand-run lazy-pages downtime < 1.0, phaul stop-copy downtime / hand-run
//! dump+copy+restore <= 0.75, and post-copy downtime at the largest size /
//! at the smallest close to 1 (<= 1.25). The goals are printed (PASS / ABOVE
//! GOAL), never asserted: this is a benchmark. A migration that fails or
//! does not really move the workload is reported and makes the bench exit
//! non-zero after printing everything. Without root or without a working
//! `criu` it prints why and exits 0.
//!
//! Run it (as root, after `scripts/setup.sh`; post-copy needs
//! `fs.pipe-max-size` >= 4 MiB, which the bench sets if it is lower):
//!
//! ```text
//! cargo bench --bench migration                      # 256 MiB and 1 GiB, 3 runs each (+ a 64 MiB warm-up)
//! PHAUL_BENCH_QUICK=1 cargo bench --bench migration  # 64 and 256 MiB, 1 run each
//! ```
//!
//! To look into one case, these narrow a run (the defaults are the
//! benchmark): `PHAUL_BENCH_SIZES=1024` (MiB, comma-separated),
//! `PHAUL_BENCH_RUNS=N`,
//! `PHAUL_BENCH_CASES=phaul-stop,hand-stop,hand-stop-ps,phaul-post,hand-post` (any of
//! them), and `PHAUL_BENCH_KEEP=1`, which keeps every image directory with
//! its CRIU logs and prints where. Setting the sizes or the cases drops the
//! warm-up round.
//!
//! Images go to fresh directories under the default temp dir (`TMPDIR`,
//! else `/tmp`) for every case, phaul and hand-run alike; the header says
//! which file system that is. Both sides log at CRIU's default level (2);
//! `PHAUL_BENCH_CRIU_LOG_LEVEL=4` makes the engine's CRIU log at debug level
//! (with timestamps) to see where its time goes; `PHAUL_BENCH_LOG` (a
//! `tracing` filter, e.g. `phaul_core=debug`) prints phaul's own log;
//! `PHAUL_BENCH_RCU=off` makes phaul's target leave the kernel's RCU knob
//! alone (`Service::expedite_rcu`), as the hand-run restore does.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use phaul_core::{Migration, Mode, Phase, Progress};
use phaul_testkit::{Hosts, Workload, alive, kill_tree, wait_until};
use phaul_transport::LinkConfig;

mod common;
use common::{Ran, ServiceThread, engine_criu, migrate_in};

/// The link's shared key (both hosts are ours).
const KEY: &[u8] = b"phaul migration bench shared key";
/// The workload rewrites its counter every this many ms.
const NOMINAL_PERIOD_MS: f64 = 10.0;
/// How often the felt-downtime thread reads the counter.
const SAMPLE_EVERY: Duration = Duration::from_millis(2);
/// How often the hand-run cases poll for a port, a socket or an exit.
const POLL_EVERY: Duration = Duration::from_millis(1);
/// What lazy pages need (`F_SETPIPE_SZ` of 4 MiB tee pipes).
const PIPE_MAX_SIZE: u64 = 4 << 20;
/// The hand-run page server's port (each case has fresh namespaces).
const PAGE_SERVER_PORT: u16 = 27000;
/// The hand-run lazy dump's port.
const LAZY_PORT: u16 = 27001;
/// Limit on one migration or one CRIU command.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// Goal: phaul post-copy downtime / hand-run lazy-pages downtime, below.
const GOAL_POST: f64 = 1.0;
/// Goal: phaul stop-copy downtime / hand-run dump+copy+restore, at most.
const GOAL_STOP: f64 = 0.75;
/// Goal: post-copy downtime, largest size / smallest size, at most.
const GOAL_FLAT: f64 = 1.25;

// ---------------------------------------------------------------- config

/// How much to run.
#[derive(Debug, Clone)]
struct Config {
    quick: bool,
    sizes: Vec<u32>,
    runs: usize,
    warmup_mib: Option<u32>,
    /// The cases to run (all unless `PHAUL_BENCH_CASES` narrows them).
    cases: Vec<Case>,
    /// Keep every image directory and CRIU log (`PHAUL_BENCH_KEEP=1`).
    keep: bool,
}

impl Config {
    fn from_env() -> Result<Self> {
        let on = |k: &str| std::env::var(k).is_ok_and(|v| !v.is_empty() && v != "0");
        let quick = on("PHAUL_BENCH_QUICK");
        let mut cfg = if quick {
            Self {
                quick,
                sizes: vec![64, 256],
                runs: 1,
                warmup_mib: None,
                cases: Case::ALL.to_vec(),
                keep: false,
            }
        } else {
            Self {
                quick,
                sizes: vec![256, 1024],
                runs: 3,
                warmup_mib: Some(64),
                cases: Case::ALL.to_vec(),
                keep: false,
            }
        };
        // Knobs for looking into one case; the defaults are the benchmark.
        cfg.keep = on("PHAUL_BENCH_KEEP");
        if let Ok(v) = std::env::var("PHAUL_BENCH_SIZES") {
            cfg.sizes = v
                .split(',')
                .map(|m| m.trim().parse::<u32>())
                .collect::<std::result::Result<_, _>>()
                .context("PHAUL_BENCH_SIZES: MiB, comma-separated")?;
            cfg.warmup_mib = None;
        }
        if let Ok(v) = std::env::var("PHAUL_BENCH_RUNS") {
            cfg.runs = v.trim().parse().context("PHAUL_BENCH_RUNS")?;
        }
        if let Ok(v) = std::env::var("PHAUL_BENCH_CASES") {
            cfg.cases = v
                .split(',')
                .map(|k| {
                    Case::ALL
                        .into_iter()
                        .find(|c| c.key() == k.trim())
                        .ok_or_else(|| anyhow!("PHAUL_BENCH_CASES: unknown case {k:?}"))
                })
                .collect::<Result<_>>()?;
            cfg.warmup_mib = None;
        }
        ensure!(
            !cfg.sizes.is_empty() && cfg.runs > 0 && !cfg.cases.is_empty(),
            "nothing to run"
        );
        Ok(cfg)
    }
}

/// The cases compared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    PhaulStop,
    HandStop,
    HandStopPs,
    PhaulPost,
    HandPost,
}

impl Case {
    const ALL: [Case; 5] = [
        Case::PhaulStop,
        Case::HandStop,
        Case::HandStopPs,
        Case::PhaulPost,
        Case::HandPost,
    ];
    /// Every other round runs in this order, so neither side always goes
    /// first.
    const REVERSED: [Case; 5] = [
        Case::HandStopPs,
        Case::HandStop,
        Case::PhaulStop,
        Case::HandPost,
        Case::PhaulPost,
    ];

    /// The name `PHAUL_BENCH_CASES` takes.
    fn key(self) -> &'static str {
        match self {
            Case::PhaulStop => "phaul-stop",
            Case::HandStop => "hand-stop",
            Case::HandStopPs => "hand-stop-ps",
            Case::PhaulPost => "phaul-post",
            Case::HandPost => "hand-post",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::PhaulStop => "phaul stop-copy",
            Case::HandStop => "hand-run CRIU dump+copy+restore",
            Case::HandStopPs => "hand-run CRIU page server",
            Case::PhaulPost => "phaul post-copy",
            Case::HandPost => "hand-run CRIU lazy-pages",
        }
    }
}

/// One run of one case.
#[derive(Debug, Clone)]
struct Sample {
    downtime_ms: f64,
    felt_ms: f64,
    total_ms: f64,
    /// Named parts, in the order they happen (ms).
    phases: Vec<(&'static str, f64)>,
}

/// What a case's migration did, before the bench's own checks.
#[derive(Debug)]
struct Moved {
    downtime_ms: f64,
    total_ms: f64,
    phases: Vec<(&'static str, f64)>,
    pid: i32,
}

/// What the bench made, to check at the end that none of it is left.
#[derive(Debug, Default)]
struct Made {
    /// Keep image directories and logs.
    keep: bool,
    /// Directories kept.
    kept: Vec<PathBuf>,
    netns: Vec<String>,
    dirs: Vec<String>,
    leaks: Vec<String>,
}

// ---------------------------------------------------------------- main

fn main() -> Result<()> {
    common::log_from_env();
    // `cargo bench` passes `--bench`; there is nothing to choose here.
    if !phaul_testkit::is_root() {
        println!(
            "SKIPPED migration bench: not running as root (CRIU and network namespaces need root); run it as root after scripts/setup.sh"
        );
        return Ok(());
    }
    let bin = criu_rpc::default_binary();
    let version = match criu_version(&bin) {
        Ok(v) => v,
        Err(e) => {
            println!(
                "SKIPPED migration bench: no working CRIU 4 at {} ({e:#}); run scripts/setup.sh",
                bin.display()
            );
            return Ok(());
        }
    };
    let cfg = Config::from_env()?;
    let pipe = ensure_pipe_max_size()?;
    print_header(&cfg, &bin, &version, &pipe);

    let mut made = Made {
        keep: cfg.keep,
        ..Made::default()
    };
    let mut results: BTreeMap<(u32, Case), Vec<Sample>> = BTreeMap::new();
    let mut failures: Vec<String> = Vec::new();

    if let Some(mib) = cfg.warmup_mib {
        for case in cfg.cases.clone() {
            let r = run_case(&bin, case, mib, &mut made);
            report_line(&format!("warm-up, {}", size_label(mib)), case, &r);
            if let Err(e) = r {
                failures.push(format!(
                    "warm-up {} {}: {e:#}",
                    size_label(mib),
                    case.label()
                ));
            }
        }
    }
    for &mib in &cfg.sizes {
        for run in 0..cfg.runs {
            let order = if run % 2 == 0 {
                Case::ALL
            } else {
                Case::REVERSED
            };
            for case in order.into_iter().filter(|c| cfg.cases.contains(c)) {
                let r = run_case(&bin, case, mib, &mut made);
                let tag = format!("{}, run {}/{}", size_label(mib), run + 1, cfg.runs);
                report_line(&tag, case, &r);
                match r {
                    Ok(s) => results.entry((mib, case)).or_default().push(s),
                    Err(e) => failures.push(format!("{tag} {}: {e:#}", case.label())),
                }
            }
        }
    }

    println!();
    for &mib in &cfg.sizes {
        print_table(&cfg, mib, &results);
    }
    print_ratios(&cfg, &results);
    final_check(&mut made);

    if !failures.is_empty() {
        println!();
        println!("FAILURES ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
    }
    if !made.kept.is_empty() {
        println!();
        println!("kept (PHAUL_BENCH_KEEP):");
        for d in &made.kept {
            println!("  {}", d.display());
        }
    }
    if !made.leaks.is_empty() {
        println!("LEFT BEHIND (now removed): {}", made.leaks.join("; "));
    }
    if !failures.is_empty() {
        bail!("{} case(s) failed; see above", failures.len());
    }
    Ok(())
}

fn report_line(tag: &str, case: Case, r: &Result<Sample>) {
    match r {
        Ok(s) => println!(
            "[{tag}] {:<32} downtime {:>9.1} ms   felt {:>9.1} ms   total {:>9.1} ms",
            case.label(),
            s.downtime_ms,
            s.felt_ms,
            s.total_ms
        ),
        Err(e) => println!("[{tag}] {:<32} FAILED: {e:#}", case.label()),
    }
}

// ---------------------------------------------------------------- header

fn criu_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    ensure!(out.status.success(), "--version: {}", out.status);
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .ok_or_else(|| anyhow!("no version in {text:?}"))?
        .to_string();
    let major: u32 = v
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    ensure!(major >= 4, "CRIU {v}; 4 or newer is needed");
    Ok(v)
}

/// Makes sure `fs.pipe-max-size` is at least 4 MiB; says what it did.
fn ensure_pipe_max_size() -> Result<String> {
    let path = "/proc/sys/fs/pipe-max-size";
    let now: u64 = std::fs::read_to_string(path)
        .with_context(|| format!("reading {path}"))?
        .trim()
        .parse()
        .context("parsing fs.pipe-max-size")?;
    if now >= PIPE_MAX_SIZE {
        return Ok(format!("fs.pipe-max-size = {now}"));
    }
    std::fs::write(path, PIPE_MAX_SIZE.to_string())
        .with_context(|| format!("raising {path} to {PIPE_MAX_SIZE} for lazy pages"))?;
    Ok(format!(
        "fs.pipe-max-size raised from {now} to {PIPE_MAX_SIZE} (lazy pages need it)"
    ))
}

fn print_header(cfg: &Config, bin: &Path, version: &str, pipe: &str) {
    let read = |p: &str| {
        std::fs::read_to_string(p).map_or_else(|_| "?".to_string(), |s| s.trim().to_string())
    };
    let cpus = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|l| l.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_else(|| "?".to_string());
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|l| l.split_whitespace().next()?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0 / 1024.0);
    let tmp = std::env::temp_dir();
    println!(
        "=== migration bench: phaul's engine vs the same migration by hand with plain CRIU ==="
    );
    println!(
        "machine:  {} ({cpus} CPUs, {cpu}, {mem_gib:.1} GiB RAM), kernel {}",
        read("/proc/sys/kernel/hostname"),
        read("/proc/sys/kernel/osrelease")
    );
    println!("criu:     {} (CRIU {version}); {pipe}", bin.display());
    println!(
        "images:   fresh dirs per case under {} ({})",
        tmp.display(),
        fs_of(&tmp)
    );
    println!(
        "hosts:    two network namespaces joined by a veth pair, fresh for every case; phaul over its TLS link"
    );
    println!(
        "compared: phaul stop-copy vs hand-run `criu dump` + copy + `criu restore -d` (the goal's baseline),"
    );
    println!(
        "          and, for reference, vs hand-run `criu page-server` + `criu dump --page-server` + copy + `criu restore -d`;"
    );
    println!(
        "          phaul post-copy vs hand-run `criu dump --lazy-pages` + copy + `criu lazy-pages` + `criu restore --lazy-pages -d`"
    );
    println!(
        "measures: downtime (phaul: Report::downtime_ms; hand-run: dump start to restore returned), felt downtime"
    );
    println!(
        "          (longest gap between the workload's counter changes, sampled every 2 ms, minus its 10 ms period),"
    );
    println!(
        "          total (phaul: Report::total_ms; hand-run post-copy: until the source dump exited, all pages pulled)"
    );
    let sizes: Vec<String> = cfg.sizes.iter().map(|&m| size_label(m)).collect();
    println!(
        "mode:     {}: workloads of {}, {} run(s) per case, median{}",
        if cfg.quick {
            "QUICK (PHAUL_BENCH_QUICK=1)"
        } else {
            "full"
        },
        sizes.join(" and "),
        cfg.runs,
        cfg.warmup_mib
            .map(|m| format!(", after an uncounted warm-up round at {}", size_label(m)))
            .unwrap_or_default()
    );
    if cfg.cases.len() < Case::ALL.len() || cfg.keep {
        let keys: Vec<&str> = cfg.cases.iter().map(|c| c.key()).collect();
        println!(
            "narrowed: cases {}{}",
            keys.join(","),
            if cfg.keep { "; keeping images" } else { "" }
        );
    }
    println!();
}

/// The file system holding `dir`: type and mount point, from /proc/mounts
/// (the longest mount point containing it).
fn fs_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    std::fs::read_to_string("/proc/mounts")
        .ok()
        .and_then(|m| {
            m.lines()
                .filter_map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let at = PathBuf::from(f.get(1)?.replace("\\040", " "));
                    let ty = f.get(2)?.to_string();
                    dir.starts_with(&at)
                        .then(|| (at.components().count(), ty, at))
                })
                .max_by_key(|(n, _, _)| *n)
                .map(|(_, ty, at)| format!("{ty} at {}", at.display()))
        })
        .unwrap_or_else(|| "file system unknown".to_string())
}

fn size_label(mib: u32) -> String {
    if mib >= 1024 && mib % 1024 == 0 {
        format!("{} GiB", mib / 1024)
    } else {
        format!("{mib} MiB")
    }
}

// ---------------------------------------------------------------- one case

/// Runs one case on fresh hosts and a fresh workload, checks the workload
/// moved intact, and cleans up.
fn run_case(bin: &Path, case: Case, mib: u32, made: &mut Made) -> Result<Sample> {
    let hosts = Hosts::new().context("making the two hosts (ip netns)")?;
    made.netns.push(hosts.src.clone());
    made.netns.push(hosts.tgt.clone());
    let src_ino = inode(&format!("/run/netns/{}", hosts.src))?;
    let tgt_ino = inode(&format!("/run/netns/{}", hosts.tgt))?;
    let r = measure(bin, case, mib, &hosts, tgt_ino, made);
    // Nothing may be left in either host: wait for the killed processes to
    // go, then kill (by PID) and report whatever is still there.
    let gone = wait_until(Duration::from_secs(15), || {
        procs_in(&[src_ino, tgt_ino]).is_empty().then_some(())
    });
    if gone.is_none() {
        for (pid, cmd) in procs_in(&[src_ino, tgt_ino]) {
            made.leaks.push(format!(
                "pid {pid} ({cmd}) in {} after {}",
                hosts.src,
                case.label()
            ));
            kill_tree(pid);
        }
        let _ = wait_until(Duration::from_secs(10), || {
            procs_in(&[src_ino, tgt_ino]).is_empty().then_some(())
        });
    }
    drop(hosts);
    r
}

fn measure(
    bin: &Path,
    case: Case,
    mib: u32,
    hosts: &Hosts,
    tgt_ino: u64,
    made: &mut Made,
) -> Result<Sample> {
    let mut w = Workload::start_with(
        Some(&hosts.src),
        mib,
        Duration::from_secs_f64(NOMINAL_PERIOD_MS / 1000.0),
    )
    .context("starting the workload")?;
    made.dirs.push(w.dir().display().to_string());
    let source_pid = w.pid;
    let felt = Felt::start(w.dir().join("out"));
    felt.wait_changes(2, Duration::from_secs(10))
        .context("before the migration")?;
    let moved = match case {
        Case::PhaulStop => phaul(hosts, bin, source_pid, Mode::StopCopy, made),
        Case::PhaulPost => phaul(hosts, bin, source_pid, Mode::PostCopy, made),
        Case::HandStop => hand_stop(hosts, bin, source_pid, false, made),
        Case::HandStopPs => hand_stop(hosts, bin, source_pid, true, made),
        Case::HandPost => hand_post(hosts, bin, source_pid, made),
    }?;
    w.adopt(moved.pid);
    ensure!(
        alive(moved.pid),
        "the restored process {} is not running",
        moved.pid
    );
    ensure!(
        inode(&format!("/proc/{}/ns/net", moved.pid))? == tgt_ino,
        "the restored process {} is not in the target host",
        moved.pid
    );
    felt.wait_changes(2, Duration::from_secs(20))
        .context("the restored workload's counter does not move")?;
    // Before the memory check: the workload's checksum blocks its loop.
    let felt_ms = felt.finish();
    ensure!(
        wait_until(Duration::from_secs(20), || (!alive(source_pid))
            .then_some(()))
        .is_some(),
        "the source process {source_pid} is still there"
    );
    ensure!(
        w.memory_intact(moved.pid) == Some(true),
        "the restored process's memory checksum is not intact"
    );
    drop(w);
    Ok(Sample {
        downtime_ms: moved.downtime_ms,
        felt_ms,
        total_ms: moved.total_ms,
        phases: moved.phases,
    })
}

fn inode(path: &str) -> Result<u64> {
    Ok(std::fs::metadata(path)
        .with_context(|| format!("stat {path}"))?
        .ino())
}

/// Processes (PID, command line) whose network namespace is one of `ns`.
fn procs_in(ns: &[u64]) -> Vec<(i32, String)> {
    let me = std::process::id();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            if u32::try_from(pid).ok()? == me {
                return None;
            }
            let ino = std::fs::metadata(e.path().join("ns/net")).ok()?.ino();
            if !ns.contains(&ino) || !alive(pid) {
                return None;
            }
            let cmd = std::fs::read(e.path().join("cmdline")).unwrap_or_default();
            Some((pid, String::from_utf8_lossy(&cmd).replace('\0', " ")))
        })
        .collect()
}

// ---------------------------------------------------------------- felt downtime

/// Reads the workload's counter file every 2 ms on its own thread and keeps
/// the time of every change.
struct Felt {
    changes: Arc<Mutex<Vec<Instant>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Felt {
    fn start(file: PathBuf) -> Self {
        let changes = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, s) = (changes.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let mut last: Option<u64> = None;
            while !s.load(Ordering::Relaxed) {
                let now = std::fs::read_to_string(&file)
                    .ok()
                    .and_then(|t| t.split_whitespace().next()?.parse::<u64>().ok());
                if let Some(v) = now {
                    if last.is_some_and(|l| l != v) {
                        c.lock().expect("not poisoned").push(Instant::now());
                    }
                    last = Some(v);
                }
                std::thread::sleep(SAMPLE_EVERY);
            }
        });
        Self {
            changes,
            stop,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.changes.lock().expect("not poisoned").len()
    }

    /// Waits until the counter has changed `n` more times.
    fn wait_changes(&self, n: usize, timeout: Duration) -> Result<()> {
        let base = self.count();
        wait_until(timeout, || (self.count() >= base + n).then_some(()))
            .ok_or_else(|| anyhow!("the workload's counter did not change {n} times"))
    }

    /// Stops sampling; the longest gap between changes minus the nominal
    /// period, in ms.
    fn finish(mut self) -> f64 {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let c = self.changes.lock().expect("not poisoned");
        let gap = c
            .windows(2)
            .map(|w| ms(w[1] - w[0]))
            .fold(0.0_f64, f64::max);
        (gap - NOMINAL_PERIOD_MS).max(0.0)
    }
}

impl Drop for Felt {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A fresh directory under the temp dir, removed on drop unless the bench
/// keeps what it makes (`PHAUL_BENCH_KEEP`).
struct Scratch {
    path: PathBuf,
    _tmp: Option<tempfile::TempDir>,
}

impl Scratch {
    fn new(prefix: &str, made: &mut Made) -> Result<Self> {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let path = tmp.path().to_path_buf();
        made.dirs.push(path.display().to_string());
        let tmp = if made.keep {
            made.kept.push(tmp.keep());
            None
        } else {
            Some(tmp)
        };
        Ok(Self { path, _tmp: tmp })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

// ---------------------------------------------------------------- phaul

fn link_config() -> Result<LinkConfig> {
    common::link_config(KEY)
}

/// A target service on its own thread inside the target host.
struct Target {
    service: Option<ServiceThread>,
    _work: Scratch,
}

impl Target {
    fn start(hosts: &Hosts, bin: &Path, made: &mut Made) -> Result<Self> {
        let work = Scratch::new("phaul-bench-target-", made)?;
        let keep = made.keep;
        let (dir, bin) = (work.path().to_path_buf(), bin.to_path_buf());
        let service = ServiceThread::start(&hosts.tgt, &hosts.tgt_ip, move || {
            Ok(common::service(&bin, link_config()?, dir).keep_images(keep))
        })?;
        Ok(Self {
            service: Some(service),
            _work: work,
        })
    }

    fn addr(&self) -> String {
        self.service
            .as_ref()
            .map(|s| s.addr.clone())
            .unwrap_or_default()
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        if let Some(Err(e)) = self.service.take().map(ServiceThread::stop) {
            println!("  ({e:#})");
        }
    }
}

/// A migration through the engine, on a thread inside the source host.
fn phaul(hosts: &Hosts, bin: &Path, pid: i32, mode: Mode, made: &mut Made) -> Result<Moved> {
    let target = Target::start(hosts, bin, made)?;
    let work = Scratch::new("phaul-bench-source-", made)?;
    let keep = made.keep;
    let (bin2, addr, dir) = (bin.to_path_buf(), target.addr(), work.path().to_path_buf());
    let Ran {
        report,
        events,
        ended,
    } = migrate_in(&hosts.src, STEP_TIMEOUT, move || {
        let htype = phaul_htypes::registry::source("pid", &pid.to_string())?;
        Ok(
            Migration::new(engine_criu(&bin2), addr, link_config()?, htype)
                .mode(mode)
                .work_dir(&dir)
                .keep_images(keep)
                .images_in_ram(common::images_in_ram()),
        )
    })?;
    drop(target);
    common::succeeded_as(&report, mode)?;
    let pid = report
        .target_pid
        .ok_or_else(|| anyhow!("the report has no target pid"))?;
    let downtime_ms = report
        .downtime_ms
        .ok_or_else(|| anyhow!("the report has no downtime"))?;

    let when = |f: &dyn Fn(&Progress) -> bool| events.iter().find(|(_, p)| f(p)).map(|(t, _)| *t);
    let phase = |ph: Phase| when(&|p| matches!(p, Progress::Phase(x) if *x == ph));
    let frozen = when(&|p| matches!(p, Progress::Frozen));
    let resumed = when(&|p| matches!(p, Progress::Resumed(_)));
    let images = phase(Phase::ImageTransfer);
    let restore = phase(Phase::Restore);
    let commit = phase(Phase::Commit);
    let dump = report.per_iteration.last();
    let us = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / 1000.0);
    let mut phases = vec![
        (
            if mode == Mode::PostCopy {
                "lazy dump until serving"
            } else {
                "freeze + dump, pages streamed"
            },
            span(frozen, images),
        ),
        ("send images", span(images, restore)),
        (
            if mode == Mode::PostCopy {
                "lazy-pages daemon + restore"
            } else {
                "restore (held)"
            },
            span(restore, commit),
        ),
        ("commit", span(commit, resumed)),
    ];
    if mode == Mode::PostCopy {
        phases.push((
            "background pull",
            span(phase(Phase::LazyTransfer), Some(ended)),
        ));
    } else {
        phases.push(("criu memdump", us(dump.map(|d| d.memdump_us))));
        phases.push(("criu memwrite", us(dump.map(|d| d.memwrite_us))));
    }
    phases.push(("criu restore", report.restore_ms.unwrap_or(f64::NAN)));
    Ok(Moved {
        downtime_ms,
        total_ms: report.total_ms,
        phases,
        pid,
    })
}

fn span(a: Option<Instant>, b: Option<Instant>) -> f64 {
    match (a, b) {
        (Some(a), Some(b)) if b >= a => ms(b - a),
        _ => f64::NAN,
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------- hand-run CRIU

/// A `criu` command running inside a host; killed (and reaped) on drop if
/// it is still running.
struct Criu1 {
    child: Child,
    what: String,
    log: PathBuf,
}

impl Criu1 {
    /// Starts `criu ARGS` inside host `ns`, logging to `log` (`-o`; relative
    /// to the command's work dir, its `-D`).
    fn spawn(ns: &str, bin: &Path, args: &[&str], dir: &Path, log: &str) -> Result<Self> {
        let what = format!("criu {}", args.first().copied().unwrap_or(""));
        let child = Hosts::command(ns, bin)
            .args(args)
            .args(["-o", log])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {what}"))?;
        Ok(Self {
            child,
            what,
            log: dir.join(log),
        })
    }

    fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).unwrap_or(0)
    }

    fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits for it to exit successfully.
    fn wait(&mut self) -> Result<()> {
        let end = Instant::now() + STEP_TIMEOUT;
        loop {
            if let Some(st) = self.child.try_wait()? {
                if st.success() {
                    return Ok(());
                }
                bail!("{} exited with {st}{}", self.what, log_errors(&self.log));
            }
            if Instant::now() > end {
                bail!("{} did not finish{}", self.what, log_errors(&self.log));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }

    /// Runs it to the end.
    fn run(ns: &str, bin: &Path, args: &[&str], dir: &Path, log: &str) -> Result<()> {
        Self::spawn(ns, bin, args, dir, log)?.wait()
    }

    /// Polls `ready` until it holds, failing if the command exits first.
    fn wait_for(&mut self, what: &str, mut ready: impl FnMut(&Self) -> bool) -> Result<()> {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            if ready(self) {
                return Ok(());
            }
            if !self.running() {
                bail!(
                    "{} exited before {what}{}",
                    self.what,
                    log_errors(&self.log)
                );
            }
            if Instant::now() > end {
                bail!("{} never got to {what}{}", self.what, log_errors(&self.log));
            }
            std::thread::sleep(POLL_EVERY);
        }
    }
}

impl Drop for Criu1 {
    fn drop(&mut self) {
        if self.running() {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The last error lines of a CRIU log, for a message.
fn log_errors(log: &Path) -> String {
    let Ok(text) = std::fs::read_to_string(log) else {
        return String::new();
    };
    let errs: Vec<&str> = text.lines().filter(|l| l.contains("Error")).collect();
    let tail = &errs[errs.len().saturating_sub(3)..];
    if tail.is_empty() {
        format!(" (see {})", log.display())
    } else {
        format!(": {}", tail.join(" | "))
    }
}

/// Whether TCP `port` listens in the network namespace of `pid` (its
/// /proc/PID/net/tcp, which is what `ss -ltn` shows, read without an exec).
fn listening(pid: i32, port: u16) -> bool {
    let Ok(t) = std::fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return false;
    };
    t.lines().skip(1).any(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let local_port = f
            .get(1)
            .and_then(|a| a.rsplit(':').next())
            .and_then(|p| u16::from_str_radix(p, 16).ok());
        local_port == Some(port) && f.get(3) == Some(&"0A")
    })
}

/// `cp S/*.img T/`.
fn copy_images(from: &Path, to: &Path) -> Result<()> {
    for e in std::fs::read_dir(from)? {
        let e = e?;
        if e.file_name().to_string_lossy().ends_with(".img") {
            std::fs::copy(e.path(), to.join(e.file_name()))
                .with_context(|| format!("copying {}", e.path().display()))?;
        }
    }
    Ok(())
}

fn restored_pid(pidfile: &Path) -> Result<i32> {
    std::fs::read_to_string(pidfile)
        .with_context(|| format!("reading {}", pidfile.display()))?
        .trim()
        .parse()
        .context("parsing the restored pid")
}

/// A fresh directory with `src` and `tgt` image dirs.
fn hand_dirs(made: &mut Made) -> Result<(Scratch, PathBuf, PathBuf)> {
    let d = Scratch::new("phaul-bench-hand-", made)?;
    let (s, t) = (d.path().join("src"), d.path().join("tgt"));
    std::fs::create_dir(&s)?;
    std::fs::create_dir(&t)?;
    Ok((d, s, t))
}

fn arg(p: &Path) -> Result<&str> {
    p.to_str()
        .ok_or_else(|| anyhow!("{} is not UTF-8", p.display()))
}

/// Stop-copy by hand. Without a page server (the goal's baseline): dump
/// every image on the source, copy them all, restore. With one (a stricter
/// reference): page server on the target, dump to it, copy the rest of the
/// images, restore.
fn hand_stop(
    hosts: &Hosts,
    bin: &Path,
    pid: i32,
    page_server: bool,
    made: &mut Made,
) -> Result<Moved> {
    let (dir, s, t) = hand_dirs(made)?;
    let pidfile = dir.path().join("restored.pid");
    let (ss, ts, pf) = (arg(&s)?, arg(&t)?, arg(&pidfile)?);
    let port = PAGE_SERVER_PORT.to_string();
    let pid_s = pid.to_string();
    let tgt_ip = hosts.tgt_ip.as_str();

    let begin = Instant::now();
    let mut ps = if page_server {
        let mut ps = Criu1::spawn(
            &hosts.tgt,
            bin,
            &[
                "page-server",
                "-D",
                ts,
                "--address",
                tgt_ip,
                "--port",
                &port,
            ],
            &t,
            "page-server.log",
        )?;
        ps.wait_for("listening", |c| listening(c.pid(), PAGE_SERVER_PORT))?;
        Some(ps)
    } else {
        None
    };
    let t0 = Instant::now();
    let mut dump = vec!["dump", "-t", &pid_s, "-D", ss];
    if page_server {
        dump.extend(["--page-server", "--address", tgt_ip, "--port", &port]);
    }
    Criu1::run(&hosts.src, bin, &dump, &s, "dump.log")?;
    let dumped = Instant::now();
    copy_images(&s, &t)?;
    let copied = Instant::now();
    Criu1::run(
        &hosts.tgt,
        bin,
        &["restore", "-D", ts, "-d", "--pidfile", pf],
        &t,
        "restore.log",
    )?;
    let restored = Instant::now();
    if let Some(ps) = ps.as_mut() {
        ps.wait()?;
    }
    let new_pid = restored_pid(&pidfile)?;
    let st = criu_rpc::image::read_dump_stats(&s).ok();
    let rst = criu_rpc::image::read_restore_stats(&t).ok();
    let us = |v: Option<u32>| v.map_or(f64::NAN, |v| f64::from(v) / 1000.0);
    Ok(Moved {
        downtime_ms: ms(restored - t0),
        total_ms: ms(restored - begin),
        phases: vec![
            (
                if page_server {
                    "dump, pages to page server"
                } else {
                    "dump"
                },
                ms(dumped - t0),
            ),
            ("copy images", ms(copied - dumped)),
            ("restore", ms(restored - copied)),
            ("criu memdump", us(st.as_ref().map(|s| s.memdump_time))),
            ("criu memwrite", us(st.as_ref().map(|s| s.memwrite_time))),
            ("criu restore", us(rst.as_ref().map(|s| s.restore_time))),
        ],
        pid: new_pid,
    })
}

/// Post-copy by hand: lazy dump serving pages on the source, copy the
/// images, lazy-pages daemon on the target, lazy restore.
fn hand_post(hosts: &Hosts, bin: &Path, pid: i32, made: &mut Made) -> Result<Moved> {
    let (dir, s, t) = hand_dirs(made)?;
    let pidfile = dir.path().join("restored.pid");
    let (ss, ts, pf) = (arg(&s)?, arg(&t)?, arg(&pidfile)?);
    let port = LAZY_PORT.to_string();
    let pid_s = pid.to_string();
    let src_ip = hosts.src_ip.as_str();

    let t0 = Instant::now();
    let mut dump = Criu1::spawn(
        &hosts.src,
        bin,
        &[
            "dump",
            "-t",
            &pid_s,
            "-D",
            ss,
            "--lazy-pages",
            "--address",
            src_ip,
            "--port",
            &port,
        ],
        &s,
        "dump.log",
    )?;
    dump.wait_for("serving pages", |c| listening(c.pid(), LAZY_PORT))?;
    let serving = Instant::now();
    copy_images(&s, &t)?;
    let copied = Instant::now();
    let mut lazy = Criu1::spawn(
        &hosts.tgt,
        bin,
        &[
            "lazy-pages",
            "--page-server",
            "--address",
            src_ip,
            "--port",
            &port,
            "-D",
            ts,
        ],
        &t,
        "lazy-pages.log",
    )?;
    let sock = t.join("lazy-pages.socket");
    lazy.wait_for("its socket", |_| sock.exists())?;
    let daemon = Instant::now();
    Criu1::run(
        &hosts.tgt,
        bin,
        &["restore", "--lazy-pages", "-D", ts, "-d", "--pidfile", pf],
        &t,
        "restore.log",
    )?;
    let restored = Instant::now();
    dump.wait().context("the background pull")?;
    let pulled = Instant::now();
    lazy.wait()?;
    let new_pid = restored_pid(&pidfile)?;
    let rst = criu_rpc::image::read_restore_stats(&t).ok();
    Ok(Moved {
        downtime_ms: ms(restored - t0),
        total_ms: ms(pulled - t0),
        phases: vec![
            ("lazy dump until serving", ms(serving - t0)),
            ("copy images", ms(copied - serving)),
            ("lazy-pages daemon start", ms(daemon - copied)),
            ("restore", ms(restored - daemon)),
            ("background pull", ms(pulled - restored)),
            (
                "criu restore",
                rst.map_or(f64::NAN, |r| f64::from(r.restore_time) / 1000.0),
            ),
        ],
        pid: new_pid,
    })
}

// ---------------------------------------------------------------- summary

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    match n {
        0 => f64::NAN,
        _ if n % 2 == 1 => s[n / 2],
        _ => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn med(results: &BTreeMap<(u32, Case), Vec<Sample>>, mib: u32, case: Case) -> Option<Sample> {
    let v = results.get(&(mib, case)).filter(|v| !v.is_empty())?;
    let col = |f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    let phases = v[0]
        .phases
        .iter()
        .enumerate()
        .map(|(i, (name, _))| {
            let xs: Vec<f64> = v
                .iter()
                .filter_map(|s| s.phases.get(i).map(|p| p.1))
                .collect();
            (*name, median(&xs))
        })
        .collect();
    Some(Sample {
        downtime_ms: col(|s| s.downtime_ms),
        felt_ms: col(|s| s.felt_ms),
        total_ms: col(|s| s.total_ms),
        phases,
    })
}

fn print_table(cfg: &Config, mib: u32, results: &BTreeMap<(u32, Case), Vec<Sample>>) {
    println!(
        "--- {} workload: median of {} run(s) ---",
        size_label(mib),
        cfg.runs
    );
    println!(
        "{:<34} {:>12} {:>12} {:>12}   downtime of each run",
        "case", "downtime ms", "felt ms", "total ms"
    );
    for case in Case::ALL.into_iter().filter(|c| cfg.cases.contains(c)) {
        let runs = results.get(&(mib, case)).map_or(0, Vec::len);
        match med(results, mib, case) {
            Some(m) => {
                let each: Vec<String> = results[&(mib, case)]
                    .iter()
                    .map(|s| format!("{:.0}", s.downtime_ms))
                    .collect();
                println!(
                    "{:<34} {:>12.1} {:>12.1} {:>12.1}   {}{}",
                    case.label(),
                    m.downtime_ms,
                    m.felt_ms,
                    m.total_ms,
                    each.join(" / "),
                    if runs < cfg.runs {
                        format!(" ({runs} of {} ok)", cfg.runs)
                    } else {
                        String::new()
                    }
                );
            }
            None => println!("{:<34} {:>12}", case.label(), "FAILED"),
        }
    }
    println!("phases (median ms):");
    for case in Case::ALL.into_iter().filter(|c| cfg.cases.contains(c)) {
        if let Some(m) = med(results, mib, case) {
            let parts: Vec<String> = m
                .phases
                .iter()
                .map(|(n, v)| format!("{n} {v:.1}"))
                .collect();
            println!("  {:<32} {}", case.label(), parts.join(" | "));
        }
    }
    println!();
}

fn print_ratios(cfg: &Config, results: &BTreeMap<(u32, Case), Vec<Sample>>) {
    let get = |mib: u32, case: Case, f: fn(&Sample) -> f64| {
        med(results, mib, case).map_or(f64::NAN, |m| f(&m))
    };
    let ran = |cases: &[Case]| cases.iter().all(|c| cfg.cases.contains(c));
    let line = |what: String, r: f64, goal: &str, pass: bool| {
        if r.is_nan() {
            println!("{what}: n/a ({goal}) NO DATA");
        } else {
            println!(
                "{what}: {r:.2} ({goal}) {}",
                if pass { "PASS" } else { "ABOVE GOAL" }
            );
        }
    };
    let post = format!("goal < {GOAL_POST:.1}");
    let stop = format!("goal <= {GOAL_STOP:.2}");
    // (what, phaul case, hand-run case, column, goal, pass)
    type Row<'a> = (
        &'a str,
        Case,
        Case,
        fn(&Sample) -> f64,
        &'a str,
        fn(f64) -> bool,
    );
    let rows: [Row<'_>; 4] = [
        (
            "post-copy downtime vs hand-run lazy-pages downtime",
            Case::PhaulPost,
            Case::HandPost,
            |s| s.downtime_ms,
            &post,
            |r| r < GOAL_POST,
        ),
        (
            "stop-copy downtime vs hand-run dump+copy+restore",
            Case::PhaulStop,
            Case::HandStop,
            |s| s.downtime_ms,
            &stop,
            |r| r <= GOAL_STOP,
        ),
        (
            "post-copy felt downtime vs hand-run lazy-pages felt downtime",
            Case::PhaulPost,
            Case::HandPost,
            |s| s.felt_ms,
            &post,
            |r| r < GOAL_POST,
        ),
        (
            "stop-copy felt downtime vs hand-run dump+copy+restore felt downtime",
            Case::PhaulStop,
            Case::HandStop,
            |s| s.felt_ms,
            &stop,
            |r| r <= GOAL_STOP,
        ),
    ];
    for (what, ours, theirs, col, goal, pass) in rows {
        if !ran(&[ours, theirs]) {
            continue;
        }
        for &mib in &cfg.sizes {
            let r = get(mib, ours, col) / get(mib, theirs, col);
            line(format!("{what} ({})", size_label(mib)), r, goal, pass(r));
        }
    }
    if ran(&[Case::PhaulStop, Case::HandStopPs]) {
        for &mib in &cfg.sizes {
            let col = |s: &Sample| s.downtime_ms;
            let felt = |s: &Sample| s.felt_ms;
            println!(
                "  for reference ({}), stop-copy vs hand-run with CRIU's page server: downtime {:.2}, felt {:.2}",
                size_label(mib),
                get(mib, Case::PhaulStop, col) / get(mib, Case::HandStopPs, col),
                get(mib, Case::PhaulStop, felt) / get(mib, Case::HandStopPs, felt),
            );
        }
    }
    if let (Some(&lo), Some(&hi), true) = (
        cfg.sizes.first(),
        cfg.sizes.last(),
        cfg.sizes.len() > 1 && ran(&[Case::PhaulPost]),
    ) {
        let sizes = format!("{} / {}", size_label(hi), size_label(lo));
        let flat = |case: Case, f: fn(&Sample) -> f64| get(hi, case, f) / get(lo, case, f);
        let r = flat(Case::PhaulPost, |s| s.downtime_ms);
        line(
            format!("post-copy downtime flat as memory grows ({sizes})"),
            r,
            &format!("goal close to 1: not growing, <= {GOAL_FLAT:.2}"),
            r <= GOAL_FLAT,
        );
        println!(
            "  for reference, the same ratio ({sizes}): phaul post-copy felt {:.2}, hand-run lazy-pages {:.2}, phaul stop-copy {:.2}, hand-run stop-copy {:.2}",
            flat(Case::PhaulPost, |s| s.felt_ms),
            flat(Case::HandPost, |s| s.downtime_ms),
            flat(Case::PhaulStop, |s| s.downtime_ms),
            flat(Case::HandStop, |s| s.downtime_ms),
        );
    }
}

// ---------------------------------------------------------------- cleanup

/// Checks that none of the bench's namespaces and no process working in
/// one of its directories (criu, python) is left; removes what is.
fn final_check(made: &mut Made) {
    let listed = Command::new("ip")
        .args(["netns", "list"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let names: Vec<&str> = listed
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut netns_left = Vec::new();
    for n in &made.netns {
        if names.contains(&n.as_str()) {
            netns_left.push(n.clone());
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
    let mut procs_left = Vec::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
                continue;
            };
            let cmd = std::fs::read(e.path().join("cmdline"))
                .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
                .unwrap_or_default();
            let cwd = std::fs::read_link(e.path().join("cwd"))
                .map(|p| p.display().to_string())
                .unwrap_or_default();
            let ours = made
                .dirs
                .iter()
                .any(|d| cmd.contains(d.as_str()) || cwd.starts_with(d.as_str()));
            if ours && alive(pid) {
                procs_left.push(format!("pid {pid} ({})", cmd.trim()));
                kill_tree(pid);
            }
        }
    }
    println!();
    if netns_left.is_empty() && procs_left.is_empty() {
        println!(
            "cleanup: no criu or workload process and none of the {} network namespaces left",
            made.netns.len()
        );
    } else {
        made.leaks
            .extend(netns_left.iter().map(|n| format!("netns {n}")));
        made.leaks.extend(procs_left);
    }
}
