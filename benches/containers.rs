//! Benchmark: a container serving a client on another host, moved between
//! two hosts, and the longest the client waited for one answer.
//!
//! The hosts are `phaul_testkit::Hosts::with_lan()`: source and target
//! network namespaces, each with a bridge on one LAN, and a third host for
//! the client. The container is an LXC container (`LxcContainer::
//! start_networked`: LXC's busybox template, a veth on its host's bridge with
//! a fixed address and MAC) running Debian's redis-server, filled with N MiB
//! (`DEBUG POPULATE`, 1 MiB values). The client
//! (`phaul_testkit::lan::LanClient`) keeps one TCP connection open and sends
//! `INCR` every 5 ms, checking every answer; its **stall** is the longest
//! time one request waited, the pause a user of the server feels. Every case
//! starts from fresh hosts, container and client.
//!
//! The cases, side by side in one run:
//!
//! 1. **phaul stop-copy** and 2. **phaul post-copy**: `Migration` (kind
//!    `lxc`) on a thread in the source host, against a `Service` on a
//!    thread in the target host; downtime and total from the `Report`.
//! 3. **the seed's method by hand**, as P.Haul's documents describe moving
//!    an LXC container without it (argv, no shell):
//!
//!    ```text
//!    nsenter --net=SRC lxc-checkpoint -P SRC_LXC -n NAME -D S -s
//!    rsync -a SRC_LXC/NAME/ TGT_LXC/NAME/      # the container, its config's paths rewritten
//!    rsync -a S/ T/                            # the images
//!    nsenter --net=TGT lxc-checkpoint -P TGT_LXC -n NAME -D T -r
//!    ```
//!
//!    Downtime and total: from the start of the checkpoint until the
//!    restore returned.
//!
//! 4. **runc, phaul stop-copy** and 5. **runc, phaul post-copy**: the same
//!    server in a runc container whose config joins a network namespace by
//!    path (see `ct/runc.rs`), moved by phaul's `runc` kind to a service on
//!    the target; 6. **runc by hand**: `runc checkpoint`, rsync of the
//!    bundle and the images, `runc restore -d`.
//!
//! After each case the bench checks that the container runs on the target
//! (`lxc-info` RUNNING there, or `runc state` running), that the server kept its data (a key set
//! before the move) and its counter (the client saw no error: every `INCR`
//! answered the previous value plus one), and that the client goes on.
//!
//! Printed: a line per case, a table per size (medians), and the ratios
//! with the issue's goals: phaul's best stall / the seed's method at the
//! smallest size <= 0.25, phaul's stall at the largest size / at the
//! smallest <= 1.3, phaul's total / its stop-copy's <= 1.5. Goals are
//! printed (PASS / ABOVE GOAL), never asserted. A case that fails is
//! reported and makes the bench exit non-zero at the end. Without root, CRIU,
//! LXC or redis it prints why and exits 0.
//!
//! ```text
//! cargo bench --bench containers                       # 128 MiB and 1 GiB, 3 runs each
//! PHAUL_BENCH_QUICK=1 cargo bench --bench containers   # 32 and 128 MiB, 1 run
//! ```
//!
//! Narrowing: `PHAUL_BENCH_SIZES=128` (MiB, comma-separated),
//! `PHAUL_BENCH_RUNS=N`, `PHAUL_BENCH_CASES=lxc-stop,lxc-post,lxc-seed,runc-stop,runc-post,runc-hand`,
//! `PHAUL_BENCH_KEEP=1` (keep phaul's image directories with CRIU's logs,
//! on disk rather than in RAM; runc's scene directory too, its path printed),
//! `PHAUL_BENCH_CRIU_LOG_LEVEL=4` (the engine's CRIU logs with timestamps),
//! `PHAUL_BENCH_LOG=phaul_core=debug` (phaul's own log on stderr),
//! `PHAUL_BENCH_RCU=off` (the target leaves the kernel's RCU knob alone:
//! `Service::expedite_rcu`, for an A/B of it).

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail, ensure};
use phaul_core::{Migration, Mode, Phase, Progress, Report};
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::lan::{ClientStats, LanClient, monotonic_s, redis_cli, redis_ready_with};
use phaul_testkit::{Hosts, LxcContainer, LxcNet};
use phaul_transport::LinkConfig;

mod common;
use common::{ServiceThread, engine_criu, migrate_in};
#[path = "ct/runc.rs"]
mod runc;

/// The link's shared key (both hosts are ours).
const KEY: &[u8] = b"phaul containers bench shared key";
/// The client's request period.
const CLIENT_PERIOD: Duration = Duration::from_millis(5);
/// Limit on one migration or one tool.
const STEP_TIMEOUT: Duration = Duration::from_secs(600);
/// The container's address on the LAN (`.N`).
const CT_HOST: u8 = 70;
/// Goal: phaul's best stall / the seed's method's, at the smallest size.
const GOAL_VS_SEED: f64 = 0.25;
/// Goal: phaul's stall at the largest size / at the smallest.
const GOAL_FLAT: f64 = 1.3;
/// Goal: phaul's total / its stop-copy's total.
const GOAL_TOTAL: f64 = 1.5;

// The names say the container kind as the printed cases do (lxc-stop, ...).
#[allow(clippy::enum_variant_names)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Case {
    LxcStop,
    LxcPost,
    LxcSeed,
    RuncStop,
    RuncPost,
    RuncHand,
}

impl Case {
    const ALL: [Case; 6] = [
        Case::LxcStop,
        Case::LxcPost,
        Case::LxcSeed,
        Case::RuncStop,
        Case::RuncPost,
        Case::RuncHand,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::LxcStop => "lxc-stop",
            Case::LxcPost => "lxc-post",
            Case::LxcSeed => "lxc-seed",
            Case::RuncStop => "runc-stop",
            Case::RuncPost => "runc-post",
            Case::RuncHand => "runc-hand",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Case::LxcStop => "LXC, phaul stop-copy",
            Case::LxcPost => "LXC, phaul post-copy",
            Case::LxcSeed => "LXC, seed's method by hand",
            Case::RuncStop => "runc, phaul stop-copy",
            Case::RuncPost => "runc, phaul post-copy",
            Case::RuncHand => "runc, by hand",
        }
    }

    /// phaul's stop-copy and post-copy cases of a kind, and the by-hand
    /// case they are compared with.
    const KINDS: [(&'static str, [Case; 3]); 2] = [
        ("LXC", [Case::LxcStop, Case::LxcPost, Case::LxcSeed]),
        ("runc", [Case::RuncStop, Case::RuncPost, Case::RuncHand]),
    ];
}

#[derive(Debug, Clone)]
struct Config {
    sizes: Vec<u32>,
    runs: usize,
    cases: Vec<Case>,
    keep: bool,
}

impl Config {
    fn from_env() -> Result<Self> {
        let quick = std::env::var_os("PHAUL_BENCH_QUICK").is_some();
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let sizes = match var("PHAUL_BENCH_SIZES") {
            Some(s) => s
                .split(',')
                .map(|x| x.trim().parse().context("PHAUL_BENCH_SIZES"))
                .collect::<Result<_>>()?,
            None if quick => vec![32, 128],
            None => vec![128, 1024],
        };
        let runs = match var("PHAUL_BENCH_RUNS") {
            Some(r) => r.parse().context("PHAUL_BENCH_RUNS")?,
            None if quick => 1,
            None => 3,
        };
        let cases = common::cases_from_env(&Case::ALL, |c: Case| c.name().to_string())?;
        Ok(Self {
            sizes,
            runs,
            cases,
            keep: var("PHAUL_BENCH_KEEP").is_some(),
        })
    }
}

/// What one case measured.
#[derive(Debug, Clone, Copy)]
struct Sample {
    stall_ms: f64,
    /// When the longest stall began, in ms after the migration began (NaN
    /// when the client did not say).
    stall_after_ms: f64,
    downtime_ms: f64,
    total_ms: f64,
}

impl Sample {
    /// `stall_ms` and when it began, from what the client saw after a
    /// migration that began at `began` (seconds of CLOCK_MONOTONIC).
    fn new(seen: &ClientStats, began: f64, downtime_ms: f64, total_ms: f64) -> Self {
        Self {
            stall_ms: seen.longest_stall_ms,
            stall_after_ms: seen
                .longest_stall_at
                .map_or(f64::NAN, |at| (at - began) * 1000.0),
            downtime_ms,
            total_ms,
        }
    }
}

fn main() -> Result<()> {
    if let Some(ready) = std::env::var_os(runc::SERVE_ENV) {
        return runc::serve(&ready.to_string_lossy());
    }
    let Some(bin) = ready()? else {
        return Ok(());
    };
    let cfg = Config::from_env()?;
    common::log_from_env();
    println!(
        "containers bench: CRIU {}, {} vCPUs, sizes {:?} MiB, {} run(s) each; client INCR every {} ms",
        criu_version(&bin).unwrap_or_else(|_| "?".into()),
        std::thread::available_parallelism().map_or(0, std::num::NonZeroUsize::get),
        cfg.sizes,
        cfg.runs,
        CLIENT_PERIOD.as_millis()
    );
    let mut results: BTreeMap<(u32, Case), Vec<Sample>> = BTreeMap::new();
    let mut failures = Vec::new();
    for &mib in &cfg.sizes {
        for run in 0..cfg.runs {
            let mut order = cfg.cases.clone();
            if run % 2 == 1 {
                order.reverse();
            }
            for case in order {
                let tag = format!("{mib} MiB, run {}/{}", run + 1, cfg.runs);
                match run_case(&bin, case, mib, cfg.keep) {
                    Ok(s) => {
                        println!(
                            "[{tag}] {:<28} stall {:>8.1} ms   downtime {:>8.1} ms   total {:>8.1} ms   (stall began at +{:.0} ms)",
                            case.label(),
                            s.stall_ms,
                            s.downtime_ms,
                            s.total_ms,
                            s.stall_after_ms
                        );
                        results.entry((mib, case)).or_default().push(s);
                    }
                    Err(e) => {
                        println!("[{tag}] {:<28} FAILED: {e:#}", case.label());
                        failures.push(format!("{tag} {}: {e:#}", case.label()));
                    }
                }
            }
        }
    }
    println!();
    print_tables(&cfg, &results);
    print_ratios(&cfg, &results);
    if !failures.is_empty() {
        println!("\nFAILURES ({}):", failures.len());
        for f in &failures {
            println!("  {f}");
        }
        bail!("{} case(s) failed; see above", failures.len());
    }
    Ok(())
}

/// CRIU's binary when everything the bench needs is here; `None` (and why,
/// printed) otherwise.
fn ready() -> Result<Option<PathBuf>> {
    let skip = |why: &str| {
        println!("SKIPPED containers bench: {why}; run it as root after scripts/setup.sh");
        Ok(None)
    };
    if !phaul_testkit::is_root() {
        return skip("not running as root");
    }
    let bin = criu_rpc::default_binary();
    if let Err(e) = criu_version(&bin) {
        return skip(&format!("no working CRIU 4 at {} ({e:#})", bin.display()));
    }
    for tool in ["lxc-checkpoint", "redis-server", "rsync", "runc", "busybox"] {
        if which(tool).is_none() {
            return skip(&format!("{tool} is missing"));
        }
    }
    common::raise_pipe_max_size()?;
    Ok(Some(bin))
}

fn which(tool: &str) -> Option<PathBuf> {
    std::env::var_os("PATH").and_then(|p| {
        std::env::split_paths(&p)
            .map(|d| d.join(tool))
            .find(|f| f.is_file())
    })
}

fn criu_version(bin: &Path) -> Result<String> {
    let out = Command::new(bin).arg("--version").output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let v = text
        .lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .ok_or_else(|| anyhow!("no version in {text:?}"))?;
    ensure!(!v.starts_with(['1', '2', '3']), "CRIU {v}; 4 is needed");
    Ok(v.to_string())
}

// ---------------------------------------------------------------- one case

/// A networked container holding `mib` MiB, its client, and the two LXC
/// paths; everything is removed on drop.
struct Scene {
    // Dropped first: the client, the container, then the paths and hosts.
    client: LanClient,
    _ct: LxcContainer,
    name: String,
    ip: String,
    src: PathBuf,
    tgt: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    hosts: Hosts,
}

impl Scene {
    fn start(mib: u32) -> Result<Self> {
        let mut hosts = Hosts::with_lan()?;
        hosts
            .lan
            .as_mut()
            .ok_or_else(|| anyhow!("no LAN"))?
            .enable_lxc()?;
        let lan = hosts.lan();
        let dir = |tag: &str| -> Result<(tempfile::TempDir, PathBuf)> {
            let d = tempfile::Builder::new()
                .prefix(&format!("phaul-bench-lxc-{tag}-"))
                .tempdir()?;
            let p = d.path().to_path_buf();
            Ok((d, p))
        };
        let ((s, src), (t, tgt)) = (dir("src")?, dir("tgt")?);
        let ip = lan.ip(CT_HOST);
        let net = LxcNet {
            link: lan.bridge.clone(),
            hwaddr: format!("02:70:68:61:75:{CT_HOST:02x}"),
            ipv4: format!("{ip}/24"),
        };
        let name = format!("phbench{}", std::process::id() % 100_000);
        let mut ct = LxcContainer::start_networked(Some(&hosts.src), &src, &name, &net)?;
        ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
        redis_ready_with(lan, &ip, "bench:k", 100)?;
        let populated = redis_cli(
            lan,
            &ip,
            &["DEBUG", "POPULATE", &mib.to_string(), "fill", "1048576"],
        );
        ensure!(populated == "OK", "DEBUG POPULATE answered {populated:?}");
        let client = LanClient::start(lan, &ip, 6379, CLIENT_PERIOD)?;
        Ok(Self {
            client,
            _ct: ct,
            name,
            ip,
            src,
            tgt,
            _dirs: (s, t),
            hosts,
        })
    }

    /// The container runs on the target, with its data, and its client
    /// goes on with no error; what the client saw.
    fn check_moved(&self) -> Result<ClientStats> {
        let state = LxcContainer::state_in(Some(&self.hosts.tgt), &self.tgt, &self.name);
        ensure!(
            state.as_deref() == Some("RUNNING"),
            "on the target LXC says {state:?}"
        );
        client_went_on(&self.client, self.hosts.lan(), &self.ip)
    }
}

/// The client goes on with no error and the server kept its data; what the
/// client saw.
fn client_went_on(
    client: &LanClient,
    lan: &phaul_testkit::lan::Lan,
    ip: &str,
) -> Result<ClientStats> {
    let s = client
        .answers_after(100, Duration::from_secs(60))
        .ok_or_else(|| anyhow!("the client's requests stopped: {:?}", client.stats()))?;
    ensure!(
        s.errors == 0,
        "the client saw {} error(s): {:?}",
        s.errors,
        s.last_error
    );
    let v = redis_cli(lan, ip, &["GET", "bench:k99"]);
    ensure!(v == "v99", "the server's data: bench:k99 = {v:?}");
    Ok(s)
}

fn run_case(bin: &Path, case: Case, mib: u32, keep: bool) -> Result<Sample> {
    let runc_case = |f: &dyn Fn(&mut runc::RuncScene) -> Result<(f64, f64)>| {
        let mut scene = runc::RuncScene::start(mib).context("setting up")?;
        let began = monotonic_s();
        let (downtime_ms, total_ms) = f(&mut scene)?;
        Ok(Sample::new(
            &scene.check_moved()?,
            began,
            downtime_ms,
            total_ms,
        ))
    };
    match case {
        Case::RuncStop => return runc_case(&|s| runc::phaul(bin, s, Mode::StopCopy)),
        Case::RuncPost => return runc_case(&|s| runc::phaul(bin, s, Mode::PostCopy)),
        Case::RuncHand => return runc_case(&|s| runc::by_hand(bin, s)),
        _ => {}
    }
    let scene = Scene::start(mib).context("setting up")?;
    let began = monotonic_s();
    let (downtime_ms, total_ms) = match case {
        Case::LxcStop => phaul(bin, &scene, Mode::StopCopy, keep)?,
        Case::LxcPost => phaul(bin, &scene, Mode::PostCopy, keep)?,
        Case::LxcSeed => seed_by_hand(bin, &scene)?,
        Case::RuncStop | Case::RuncPost | Case::RuncHand => unreachable!("handled above"),
    };
    let moved = scene.check_moved();
    if moved.is_err() && std::env::var_os("PHAUL_BENCH_PAUSE").is_some() {
        println!(
            "  (paused 120 s to look: hosts {} / {})",
            scene.hosts.src, scene.hosts.tgt
        );
        std::thread::sleep(Duration::from_secs(120));
    }
    Ok(Sample::new(&moved?, began, downtime_ms, total_ms))
}

// ---------------------------------------------------------------- phaul

fn link_config() -> Result<LinkConfig> {
    common::link_config(KEY)
}

fn lxc_paths(lxcpath: &Path) -> Paths {
    Paths {
        lxcpath: lxcpath.to_path_buf(),
        ..Paths::default()
    }
}

/// A migration through the engine; its downtime and total, in ms.
fn phaul(bin: &Path, scene: &Scene, mode: Mode, keep: bool) -> Result<(f64, f64)> {
    let work = tempfile::Builder::new()
        .prefix("phaul-bench-ct-")
        .tempdir()?;
    let (tgt_dir, src_dir) = (work.path().join("target"), work.path().join("source"));
    let (b, paths) = (bin.to_path_buf(), lxc_paths(&scene.tgt));
    let service = ServiceThread::start(&scene.hosts.tgt, &scene.hosts.tgt_ip, move || {
        Ok(common::service(&b, link_config()?, tgt_dir)
            .htype_paths(paths)
            .keep_images(keep))
    })?;
    let addr = service.addr.clone();
    let (b, name, paths) = (bin.to_path_buf(), scene.name.clone(), lxc_paths(&scene.src));
    let ran = migrate_in(&scene.hosts.src, STEP_TIMEOUT, move || {
        let htype = source_in("lxc", &name, &paths)?;
        Ok(Migration::new(engine_criu(&b), addr, link_config()?, htype)
            .mode(mode)
            .work_dir(&src_dir)
            .keep_images(keep)
            .images_in_ram(common::images_in_ram()))
    });
    let _ = service.stop();
    if keep {
        println!("  kept: {}", work.keep().display());
    }
    let common::Ran { report, events, .. } = ran?;
    common::succeeded_as(&report, mode)?;
    let downtime = report
        .downtime_ms
        .ok_or_else(|| anyhow!("the report has no downtime"))?;
    print_phases(&report, &events);
    Ok((downtime, report.total_ms))
}

/// Where the downtime went, from the engine's events: the dump (freeze
/// until the images start, so with the final file-system pass), the
/// images, the restore on the target, the commit; CRIU's own freeze and
/// memory times from its stats.
fn print_phases(r: &Report, events: &[(Instant, Progress)]) {
    let at = |f: &dyn Fn(&Progress) -> bool| events.iter().find(|(_, p)| f(p)).map(|(t, _)| *t);
    let phase = |ph: Phase| at(&|p| matches!(p, Progress::Phase(x) if *x == ph));
    let span = |a: Option<Instant>, b: Option<Instant>| match (a, b) {
        (Some(a), Some(b)) if b >= a => (b - a).as_secs_f64() * 1000.0,
        _ => f64::NAN,
    };
    let frozen = at(&|p| matches!(p, Progress::Frozen));
    let resumed = at(&|p| matches!(p, Progress::Resumed(_)));
    let (images, restore, commit) = (
        phase(Phase::ImageTransfer),
        phase(Phase::Restore),
        phase(Phase::Commit),
    );
    let dump = r.per_iteration.last();
    let us = |v: Option<u64>| v.map_or(f64::NAN, |v| v as f64 / 1000.0);
    println!(
        "  phases: dump {:.1} ms (criu freezing {:.1}, memdump {:.1}), images {:.1} ms, restore {:.1} ms (criu {:.1}), commit {:.1} ms",
        span(frozen, images),
        us(dump.map(|d| d.freezing_us)),
        us(dump.map(|d| d.memdump_us)),
        span(images, restore),
        span(restore, commit),
        r.restore_ms.unwrap_or(f64::NAN),
        span(commit, resumed),
    );
}

// ---------------------------------------------------------------- by hand

/// `cmd`, run to its end; its stderr on failure. Output goes to files, not
/// pipes: LXC's tools leave a monitor daemon behind that inherits them, and
/// a pipe would never reach end-of-file.
fn run(mut cmd: Command) -> Result<()> {
    use std::io::{Read, Seek};
    let what = format!("{cmd:?}");
    let mut err = tempfile::tempfile()?;
    let status = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(err.try_clone()?)
        .status()
        .with_context(|| format!("running {what}"))?;
    let mut text = String::new();
    err.seek(std::io::SeekFrom::Start(0))?;
    err.read_to_string(&mut text)?;
    ensure!(status.success(), "{what}: {status}: {}", text.trim());
    Ok(())
}

/// `rsync -a FROM/ TO/`: a directory's contents, as a user copies them.
fn rsync(from: &Path, to: &Path) -> Command {
    let mut c = Command::new("rsync");
    c.arg("-a")
        .arg(format!("{}/", from.display()))
        .arg(format!("{}/", to.display()));
    c
}

/// The seed's method: checkpoint and stop, rsync the container and its
/// images, restore; its downtime and total (the same here), in ms.
fn seed_by_hand(bin: &Path, scene: &Scene) -> Result<(f64, f64)> {
    let work = tempfile::Builder::new()
        .prefix("phaul-bench-seed-")
        .tempdir()?;
    let (s, t) = (work.path().join("s"), work.path().join("t"));
    std::fs::create_dir_all(&s)?;
    // lxc-checkpoint runs the first criu on PATH: make it the bench's.
    let path = format!(
        "{}:{}",
        bin.parent().unwrap_or(Path::new("/")).display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let lxc = |ns: &str, lxcpath: &Path, dir: &Path, op: &str| {
        let mut c = Hosts::command(ns, "lxc-checkpoint");
        c.env("PATH", &path)
            .arg("-P")
            .arg(lxcpath)
            .args(["-n", &scene.name, "-D"])
            .arg(dir)
            .arg(op);
        c
    };
    let start = Instant::now();
    run(lxc(&scene.hosts.src, &scene.src, &s, "-s")).context("checkpoint")?;
    let ct_src = scene.src.join(&scene.name);
    let ct_tgt = scene.tgt.join(&scene.name);
    run(rsync(&ct_src, &ct_tgt)).context("rsync of the container")?;
    let config = ct_tgt.join("config");
    let text = std::fs::read_to_string(&config)?;
    std::fs::write(
        &config,
        text.replace(&*scene.src.to_string_lossy(), &scene.tgt.to_string_lossy()),
    )?;
    run(rsync(&s, &t)).context("rsync of the images")?;
    run(lxc(&scene.hosts.tgt, &scene.tgt, &t, "-r")).context("restore")?;
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    Ok((ms, ms))
}

// ---------------------------------------------------------------- results

fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    s.sort_by(f64::total_cmp);
    match s.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => s[n / 2],
        n => (s[n / 2 - 1] + s[n / 2]) / 2.0,
    }
}

fn med(results: &BTreeMap<(u32, Case), Vec<Sample>>, mib: u32, case: Case) -> Option<Sample> {
    let v = results.get(&(mib, case)).filter(|v| !v.is_empty())?;
    let col = |f: fn(&Sample) -> f64| median(&v.iter().map(f).collect::<Vec<_>>());
    Some(Sample {
        stall_ms: col(|s| s.stall_ms),
        stall_after_ms: col(|s| s.stall_after_ms),
        downtime_ms: col(|s| s.downtime_ms),
        total_ms: col(|s| s.total_ms),
    })
}

fn print_tables(cfg: &Config, results: &BTreeMap<(u32, Case), Vec<Sample>>) {
    for &mib in &cfg.sizes {
        println!("--- {mib} MiB in redis: medians of {} run(s) ---", cfg.runs);
        println!(
            "{:<28} {:>12} {:>14} {:>12}",
            "case", "stall ms", "downtime ms", "total ms"
        );
        for &case in &cfg.cases {
            if let Some(s) = med(results, mib, case) {
                println!(
                    "{:<28} {:>12.1} {:>14.1} {:>12.1}",
                    case.label(),
                    s.stall_ms,
                    s.downtime_ms,
                    s.total_ms
                );
            }
        }
        println!();
    }
}

fn print_ratios(cfg: &Config, results: &BTreeMap<(u32, Case), Vec<Sample>>) {
    let verdict = |r: f64, goal: f64| {
        if r.is_nan() {
            "n/a"
        } else if r <= goal {
            "PASS"
        } else {
            "ABOVE GOAL"
        }
    };
    let line = |what: &str, r: f64, goal: f64| {
        println!(
            "{what:<64} {r:>6.2}  (goal <= {goal:.2})  {}",
            verdict(r, goal)
        );
    };
    let (Some(&small), Some(&large)) = (cfg.sizes.iter().min(), cfg.sizes.iter().max()) else {
        return;
    };
    let get =
        |mib, case, f: fn(&Sample) -> f64| med(results, mib, case).map_or(f64::NAN, |s| f(&s));
    let stall: fn(&Sample) -> f64 = |s| s.stall_ms;
    let total: fn(&Sample) -> f64 = |s| s.total_ms;
    println!("--- ratios (same run) ---");
    for (kind, [stop, post, by_hand]) in Case::KINDS {
        let seed = get(small, by_hand, stall);
        for case in [stop, post] {
            line(
                &format!("{} stall / {}'s, {small} MiB", case.label(), by_hand.name()),
                get(small, case, stall) / seed,
                GOAL_VS_SEED,
            );
            if large != small {
                line(
                    &format!("{} stall, {large} MiB / {small} MiB", case.label()),
                    get(large, case, stall) / get(small, case, stall),
                    GOAL_FLAT,
                );
            }
        }
        for &mib in &cfg.sizes {
            line(
                &format!("{kind} post-copy total / stop-copy total, {mib} MiB"),
                get(mib, post, total) / get(mib, stop, total),
                GOAL_TOTAL,
            );
        }
    }
}
