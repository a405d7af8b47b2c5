//! Benchmark: does the `criu-rpc` layer cost anything next to the plain
//! `criu` command line? Both are run in the same process, interleaved, and
//! the ratios are printed. The claim checked is "our layer adds nothing
//! measurable", i.e. ratio rpc/cli <= 1.05 (for a throughput, >= 1/1.05).
//!
//! What it measures:
//!
//! 1. `VERSION` round trip:
//!    (a) `Criu::with_binary(bin).quiet(true).version()` — spawns a
//!    `criu swrk` and asks over the RPC socket, each time;
//!    (b) `criu --version` via `std::process::Command::output()` — one exec
//!    each time;
//!    (c) `VERSION` repeated on one kept-open `Session` (no spawn), reported
//!    alone as it has no command-line counterpart.
//!    Median and p90 in µs, and the ratio a/b of the medians.
//! 2. One dump iteration of a workload (`phaul_testkit::Workload`, 256 MiB,
//!    a python process in its own PID namespace), dumped again and again
//!    with leave-running into a fresh images dir each time:
//!    (a) `criu-rpc` `DUMP` with `leave_running(true)` and `log_file`;
//!    (b) `criu dump -t PID -D DIR -R -o dump.log` (argv, no shell).
//!    Runs alternate between a and b (in ABBA order). For each run: wall
//!    time, and from `stats-dump` the pages written and the frozen, memdump
//!    and memwrite times. Medians, and the ratios rpc/cli of the median wall
//!    time and of the median pages/s.
//!
//! The goal is printed next to each ratio (PASS / ABOVE GOAL) but never
//! asserted: this is a benchmark, not a test. Without root or without a
//! working `criu` it prints why and exits 0.
//!
//! Run it (as root, after `scripts/setup.sh`):
//!
//! ```text
//! cargo bench --bench criu_rpc                      # full: 50 VERSIONs, 7+7 dumps of 256 MiB (+2+2 warm-up)
//! PHAUL_BENCH_QUICK=1 cargo bench --bench criu_rpc  # smoke run: 10 VERSIONs, 2+2 dumps of 64 MiB (+1+1)
//! ```
//!
//! Images go to a fresh directory under the default temp dir (`TMPDIR`, else
//! `/tmp`) for both sides; the header says which file system that is.

#![allow(clippy::print_stdout)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use criu_rpc::{Criu, Opts};
use phaul_testkit::Workload;

/// The goal for a ratio of costs (time): at most this.
const GOAL: f64 = 1.05;
/// Bytes in one page, for MiB/s.
const PAGE_SIZE: f64 = 4096.0;

/// How much to run.
#[derive(Debug, Clone, Copy)]
struct Config {
    quick: bool,
    version_warmup: usize,
    version_iters: usize,
    dump_warmup: usize,
    dump_runs: usize,
    mib: u32,
}

impl Config {
    fn from_env() -> Self {
        let quick = std::env::var("PHAUL_BENCH_QUICK")
            .map(|v| !v.is_empty() && v != "0")
            .unwrap_or(false);
        if quick {
            Self {
                quick,
                version_warmup: 2,
                version_iters: 10,
                dump_warmup: 1,
                dump_runs: 2,
                mib: 64,
            }
        } else {
            Self {
                quick,
                version_warmup: 5,
                version_iters: 50,
                // The first dumps after start-up are sometimes 2-3x slower
                // inside CRIU (memdump/memwrite), on either side; two pairs
                // absorb that.
                dump_warmup: 2,
                dump_runs: 7,
                mib: 256,
            }
        }
    }
}

fn main() -> Result<()> {
    // `cargo bench` passes `--bench` (and any filter); there is nothing to
    // choose here, so the arguments are ignored.
    if !nix::unistd::Uid::effective().is_root() {
        println!(
            "SKIPPED criu_rpc bench: not running as root (CRIU needs root); run it as root after scripts/setup.sh"
        );
        return Ok(());
    }
    let bin = criu_rpc::default_binary();
    if !bin.is_file() {
        println!(
            "SKIPPED criu_rpc bench: no criu binary at {} (nor on PATH); run scripts/setup.sh",
            bin.display()
        );
        return Ok(());
    }
    let criu_version = match cli_version_text(&bin) {
        Ok(v) => v,
        Err(e) => {
            println!(
                "SKIPPED criu_rpc bench: {} does not work ({e:#}); run scripts/setup.sh",
                bin.display()
            );
            return Ok(());
        }
    };

    let cfg = Config::from_env();
    let scratch = std::env::temp_dir();
    print_header(&cfg, &bin, &criu_version, &scratch);

    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;

    let version = bench_version(&rt, &cfg, &bin)?;
    let dump = bench_dump(&rt, &cfg, &bin, &scratch)?;
    // The runtime goes before the summary so that every `criu swrk` it
    // spawned has been reaped or has at least lost its socket.
    drop(rt);

    print_summary(&cfg, &version, &dump);
    Ok(())
}

// ---------------------------------------------------------------- header

fn print_header(cfg: &Config, bin: &Path, criu_version: &str, scratch: &Path) {
    let nproc = std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "?".to_string(), |s| s.trim().to_string());
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
    let mode = if cfg.quick {
        "QUICK (PHAUL_BENCH_QUICK=1)"
    } else {
        "full"
    };

    println!(
        "=== criu_rpc bench: criu-rpc (RPC over criu swrk) vs the plain criu command line ==="
    );
    println!(
        "claim checked: our layer adds nothing measurable, ratio rpc/cli <= {GOAL:.2} (throughput >= {:.3})",
        1.0 / GOAL
    );
    println!("mode:     {mode}");
    println!("machine:  nproc {nproc}, {cpu}, {mem_gib:.1} GiB RAM, kernel {kernel}");
    println!("criu:     {} ({criu_version})", bin.display());
    println!(
        "images:   fresh dir per run under {} ({})",
        scratch.display(),
        fs_of(scratch)
    );
    println!(
        "cases:    VERSION x{} (+{} warm-up) each; DUMP of a {} MiB workload, leave-running, {} runs each (+{} warm-up each), ABBA order",
        cfg.version_iters, cfg.version_warmup, cfg.mib, cfg.dump_runs, cfg.dump_warmup
    );
    println!();
}

/// `criu --version`'s output on one line.
fn cli_version_text(bin: &Path) -> Result<String> {
    let out = Command::new(bin)
        .arg("--version")
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} --version", bin.display()))?;
    if !out.status.success() {
        bail!("{} --version: {}", bin.display(), out.status);
    }
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    if line.is_empty() {
        bail!("{} --version printed nothing", bin.display());
    }
    Ok(line)
}

/// The file system holding `dir`: its mount point and type, from
/// /proc/mounts (longest matching mount point wins).
fn fs_of(dir: &Path) -> String {
    let dir = dir.canonicalize().unwrap_or_else(|_| dir.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "file system unknown".to_string();
    };
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _dev = f.next()?;
            let at = PathBuf::from(f.next()?.replace("\\040", " "));
            let ty = f.next()?;
            dir.starts_with(&at).then(|| (at, ty.to_string()))
        })
        .max_by_key(|(at, _)| at.components().count())
        .map_or_else(
            || "file system unknown".to_string(),
            |(at, ty)| format!("{ty} mounted at {}", at.display()),
        )
}

// ---------------------------------------------------------------- stats

/// Median (mean of the two middle values for an even count).
fn median(v: &[f64]) -> f64 {
    let s = sorted(v);
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile, `p` in (0, 1].
fn percentile(v: &[f64], p: f64) -> f64 {
    let s = sorted(v);
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = (p * s.len() as f64).ceil() as usize;
    s[rank.clamp(1, s.len()) - 1]
}

fn sorted(v: &[f64]) -> Vec<f64> {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn millis(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// A verdict for a cost ratio (lower is better).
fn verdict_cost(ratio: f64) -> &'static str {
    if ratio <= GOAL { "PASS" } else { "ABOVE GOAL" }
}

/// A verdict for a throughput ratio (higher is better).
fn verdict_rate(ratio: f64) -> &'static str {
    if ratio >= 1.0 / GOAL {
        "PASS"
    } else {
        "BELOW GOAL"
    }
}

// ---------------------------------------------------------------- VERSION

/// Samples of the VERSION case, in µs.
struct VersionResults {
    rpc_spawn: Vec<f64>,
    cli_exec: Vec<f64>,
    rpc_session: Vec<f64>,
}

fn bench_version(rt: &tokio::runtime::Runtime, cfg: &Config, bin: &Path) -> Result<VersionResults> {
    println!("--- case 1: VERSION round trip ---");
    let criu = Criu::with_binary(bin).quiet(true);
    let mut rpc_spawn = Vec::with_capacity(cfg.version_iters);
    let mut cli_exec = Vec::with_capacity(cfg.version_iters);

    // a and b alternate, the order flipping every pair (ABBA), so that a
    // drift in the machine's state hits both the same.
    for i in 0..cfg.version_warmup + cfg.version_iters {
        let (a, b) = if i % 2 == 0 {
            let a = rt.block_on(rpc_version(&criu))?;
            (a, cli_version(bin)?)
        } else {
            let b = cli_version(bin)?;
            (rt.block_on(rpc_version(&criu))?, b)
        };
        if i >= cfg.version_warmup {
            rpc_spawn.push(micros(a));
            cli_exec.push(micros(b));
        }
    }

    let rpc_session = rt.block_on(session_versions(&criu, cfg))?;

    for (name, v) in [
        ("(a) criu-rpc Criu::version (spawns swrk)", &rpc_spawn),
        ("(b) criu --version (one exec)", &cli_exec),
        ("(c) VERSION on one kept-open Session", &rpc_session),
    ] {
        println!(
            "{name:<44} median {:>9.1} µs   p90 {:>9.1} µs",
            median(v),
            percentile(v, 0.9)
        );
    }
    println!();
    Ok(VersionResults {
        rpc_spawn,
        cli_exec,
        rpc_session,
    })
}

async fn rpc_version(criu: &Criu) -> Result<Duration> {
    let t = Instant::now();
    let v = criu.version().await.context("criu-rpc VERSION")?;
    let d = t.elapsed();
    if v.major == 0 {
        bail!("criu-rpc VERSION answered {v:?}");
    }
    Ok(d)
}

fn cli_version(bin: &Path) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .context("running criu --version")?;
    let d = t.elapsed();
    if !out.status.success() || out.stdout.is_empty() {
        bail!("criu --version failed: {}", out.status);
    }
    Ok(d)
}

/// VERSION repeated on one connection; the samples in µs.
async fn session_versions(criu: &Criu, cfg: &Config) -> Result<Vec<f64>> {
    let mut session = criu.connect().await.context("criu-rpc connect")?;
    let mut out = Vec::with_capacity(cfg.version_iters);
    for i in 0..cfg.version_warmup + cfg.version_iters {
        let t = Instant::now();
        session
            .version()
            .await
            .context("VERSION on a kept-open session")?;
        let d = t.elapsed();
        if i >= cfg.version_warmup {
            out.push(micros(d));
        }
    }
    // Dropping the session closes the socket; its criu swrk then exits.
    drop(session);
    Ok(out)
}

// ---------------------------------------------------------------- DUMP

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Rpc,
    Cli,
}

impl Side {
    fn name(self) -> &'static str {
        match self {
            Side::Rpc => "criu-rpc",
            Side::Cli => "criu CLI",
        }
    }
}

/// One dump run.
#[derive(Debug, Clone, Copy)]
struct DumpRun {
    wall_ms: f64,
    freezing_ms: f64,
    frozen_ms: f64,
    memdump_ms: f64,
    memwrite_ms: f64,
    pages_written: u64,
}

impl DumpRun {
    fn pages_per_sec(&self) -> f64 {
        self.pages_written as f64 / (self.wall_ms / 1e3)
    }
}

struct DumpResults {
    rpc: Vec<DumpRun>,
    cli: Vec<DumpRun>,
}

fn bench_dump(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    bin: &Path,
    scratch: &Path,
) -> Result<DumpResults> {
    println!(
        "--- case 2: DUMP of a {} MiB workload, leave-running ---",
        cfg.mib
    );
    let t = Instant::now();
    let workload = Workload::start(cfg.mib).context("starting the workload")?;
    let pid = workload.pid;
    println!(
        "workload: host PID {pid}, {} MiB, ready after {:.1} s",
        cfg.mib,
        t.elapsed().as_secs_f64()
    );
    println!(
        "{:<5} {:<9} {:>9} {:>10} {:>9} {:>10} {:>11} {:>10} {:>9}",
        "run", "side", "wall ms", "freezing", "frozen", "memdump", "memwrite", "pages", "MiB/s"
    );

    let result = run_dumps(rt, cfg, bin, scratch, pid);

    // The workload must end whatever happened above.
    drop(workload);
    let gone = phaul_testkit::wait_until(Duration::from_secs(10), || {
        (!phaul_testkit::alive(pid)).then_some(())
    });
    match gone {
        Some(()) => println!("workload PID {pid} ended after the bench"),
        None => println!("WARNING: workload PID {pid} is still alive after being killed"),
    }
    println!();
    result
}

/// The alternating dump runs on the workload `pid`.
fn run_dumps(
    rt: &tokio::runtime::Runtime,
    cfg: &Config,
    bin: &Path,
    scratch: &Path,
    pid: i32,
) -> Result<DumpResults> {
    let criu = Criu::with_binary(bin).quiet(true);
    let mut rpc = Vec::with_capacity(cfg.dump_runs);
    let mut cli = Vec::with_capacity(cfg.dump_runs);
    for i in 0..cfg.dump_warmup + cfg.dump_runs {
        let warm = i < cfg.dump_warmup;
        let order = if i % 2 == 0 {
            [Side::Rpc, Side::Cli]
        } else {
            [Side::Cli, Side::Rpc]
        };
        for side in order {
            let dir = tempfile::Builder::new()
                .prefix("phaul-bench-dump-")
                .tempdir_in(scratch)
                .context("creating an images dir")?;
            let wall = match side {
                Side::Rpc => rt.block_on(rpc_dump(&criu, dir.path(), pid))?,
                Side::Cli => cli_dump(bin, dir.path(), pid)?,
            };
            let run = read_run(dir.path(), wall, side)?;
            if !phaul_testkit::alive(pid) {
                bail!(
                    "the workload (PID {pid}) is gone after a leave-running dump by {}",
                    side.name()
                );
            }
            let label = if warm {
                "warm".to_string()
            } else {
                format!("{}", i - cfg.dump_warmup + 1)
            };
            println!(
                "{label:<5} {:<9} {:>9.1} {:>10.1} {:>9.1} {:>10.1} {:>11.1} {:>10} {:>9.0}",
                side.name(),
                run.wall_ms,
                run.freezing_ms,
                run.frozen_ms,
                run.memdump_ms,
                run.memwrite_ms,
                run.pages_written,
                run.pages_per_sec() * PAGE_SIZE / (1024.0 * 1024.0)
            );
            if !warm {
                match side {
                    Side::Rpc => rpc.push(run),
                    Side::Cli => cli.push(run),
                }
            }
            // The images dir (and its 256 MiB of pages) goes here.
            drop(dir);
        }
    }
    Ok(DumpResults { rpc, cli })
}

async fn rpc_dump(criu: &Criu, dir: &Path, pid: i32) -> Result<Duration> {
    let t = Instant::now();
    criu.connect()
        .await
        .context("criu-rpc connect")?
        .dump(
            Opts::new()
                .images_dir(dir)
                .pid(pid)
                .leave_running(true)
                .log_file("dump.log"),
        )
        .await
        .context("criu-rpc DUMP: sending")?
        .finish()
        .await
        .context("criu-rpc DUMP")?;
    Ok(t.elapsed())
}

fn cli_dump(bin: &Path, dir: &Path, pid: i32) -> Result<Duration> {
    let t = Instant::now();
    let out = Command::new(bin)
        .arg("dump")
        .arg("-t")
        .arg(pid.to_string())
        .arg("-D")
        .arg(dir)
        .arg("-R")
        .arg("-o")
        .arg("dump.log")
        .stdin(Stdio::null())
        .output()
        .context("running criu dump")?;
    let wall = t.elapsed();
    if !out.status.success() {
        let log = std::fs::read_to_string(dir.join("dump.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        bail!(
            "criu dump failed ({}): {}\n--- end of dump.log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            tail.join("\n")
        );
    }
    Ok(wall)
}

fn read_run(dir: &Path, wall: Duration, side: Side) -> Result<DumpRun> {
    let s = criu_rpc::image::read_dump_stats(dir)
        .with_context(|| format!("reading stats-dump after a {} dump", side.name()))?;
    if s.pages_written == 0 {
        bail!("a {} dump wrote no pages", side.name());
    }
    let ms = |us: u32| f64::from(us) / 1e3;
    Ok(DumpRun {
        wall_ms: millis(wall),
        freezing_ms: ms(s.freezing_time),
        frozen_ms: ms(s.frozen_time),
        memdump_ms: ms(s.memdump_time),
        memwrite_ms: ms(s.memwrite_time),
        pages_written: s.pages_written,
    })
}

// ---------------------------------------------------------------- summary

fn print_summary(cfg: &Config, v: &VersionResults, d: &DumpResults) {
    println!("=== summary ===");
    println!(
        "VERSION round trip ({} iterations each)    median µs      p90 µs",
        cfg.version_iters
    );
    for (name, s) in [
        ("  (a) criu-rpc, spawns criu swrk", &v.rpc_spawn),
        ("  (b) criu --version, one exec", &v.cli_exec),
        ("  (c) criu-rpc, kept-open session", &v.rpc_session),
    ] {
        println!(
            "{name:<42} {:>10.1} {:>11.1}",
            median(s),
            percentile(s, 0.9)
        );
    }
    println!();

    let col = |runs: &[DumpRun], f: fn(&DumpRun) -> f64| -> f64 {
        median(&runs.iter().map(f).collect::<Vec<_>>())
    };
    println!(
        "DUMP {} MiB, leave-running ({} runs each)  wall ms  frozen ms  memdump ms  memwrite ms     pages/s     MiB/s",
        cfg.mib, cfg.dump_runs
    );
    for (side, runs) in [(Side::Rpc, &d.rpc), (Side::Cli, &d.cli)] {
        let pps = col(runs, DumpRun::pages_per_sec);
        println!(
            "  {:<40} {:>8.1} {:>10.1} {:>11.1} {:>12.1} {:>11.0} {:>9.0}",
            side.name(),
            col(runs, |r| r.wall_ms),
            col(runs, |r| r.frozen_ms),
            col(runs, |r| r.memdump_ms),
            col(runs, |r| r.memwrite_ms),
            pps,
            pps * PAGE_SIZE / (1024.0 * 1024.0)
        );
    }
    println!("  (all medians; pages/s = pages_written / wall seconds, per run)");
    println!();

    let version_ratio = median(&v.rpc_spawn) / median(&v.cli_exec);
    let wall_ratio = col(&d.rpc, |r| r.wall_ms) / col(&d.cli, |r| r.wall_ms);
    let pps_ratio = col(&d.rpc, DumpRun::pages_per_sec) / col(&d.cli, DumpRun::pages_per_sec);
    println!(
        "ratio rpc/cli VERSION round trip (median, a/b): {version_ratio:.2} (goal <= {GOAL:.2}) {}",
        verdict_cost(version_ratio)
    );
    println!(
        "ratio rpc/cli dump wall time (median): {wall_ratio:.2} (goal <= {GOAL:.2}) {}",
        verdict_cost(wall_ratio)
    );
    println!(
        "ratio rpc/cli dump pages/s (median): {pps_ratio:.2} (goal >= {:.3} = 1/{GOAL:.2}) {}",
        1.0 / GOAL,
        verdict_rate(pps_ratio)
    );
    if cfg.quick {
        println!(
            "(quick run: too few samples to judge; run without PHAUL_BENCH_QUICK for numbers)"
        );
    }
}
