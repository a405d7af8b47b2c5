//! Benchmark: phaul-fs's native driver against its rsync driver, on the
//! same tree, over the same kind of link.
//!
//! The tree: 10,000 small files (1–8 KiB of pseudo-random bytes each,
//! spread over 100 directories) and 4 large files of 64 MiB; with
//! `PHAUL_BENCH_QUICK=1`, 2,000 small files and 2 large ones of 16 MiB.
//! Each driver runs over a phaul `FS` link on loopback TCP (127.0.0.1, an
//! ephemeral port), TLS on, with its target (`serve_native`,
//! `serve_rsync`) in the same process, as two hosts would run them:
//!
//! 1. **first sync**: `FsDriver::start` into an empty target directory;
//! 2. **incremental sync**: 1% of the small files get new content (same
//!    size, new mtime) and one large file is rewritten with new bytes, then
//!    `FsDriver::next_iteration`.
//!
//! A final sync with nothing changed ends each target; it is not timed.
//! The link's set-up (TLS and the key proof) is not timed; rsync's process
//! start is (it is part of every rsync pass). After each incremental sync
//! the target is checked against the source (every file's size and the
//! rewritten files' bytes), so a fast but wrong run cannot pass.
//!
//! Each round runs both drivers, alternating which goes first; 3 rounds
//! (1 with `PHAUL_BENCH_QUICK=1`; `PHAUL_BENCH_ROUNDS=N` overrides),
//! medians reported with the ratio
//! native/rsync and its goal (native no slower than rsync: ratio <= 1.0).
//! The goal is printed, never asserted: this is a benchmark, not a test.
//!
//! Run it (as root or not; rsync must be installed, see
//! `scripts/setup.sh`):
//!
//! ```text
//! cargo bench --bench fs                      # full tree
//! PHAUL_BENCH_QUICK=1 cargo bench --bench fs  # smaller tree
//! ```
//!
//! The bench binary is its own rsync remote shell (it calls
//! `phaul_fs::rsync::run_as_rsh_if_called` first thing). Trees go to a
//! fresh directory under the default temp dir (`TMPDIR`, else `/tmp`; the
//! header names its file system); `sync` runs before each timed pass so
//! neither driver pays for writing back what came before it.
//!
//! Deletions: every target tree is kept until the end (about 2 GiB for a
//! full run, 0.3 GiB quick), then all are removed at once. On ext4
//! without a journal (as on this project's VMs), creating a file skips
//! every inode freed in the last several seconds, one by one, so creating
//! thousands of files soon after deleting thousands is many times slower
//! for any writer; deleting a round's tree before the next round would
//! measure that, not the drivers. A run started right after another
//! run's clean-up can still see it in its first pass.

#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use phaul_fs::{
    FsDriver, FsLimits, NativeSource, RsyncSource, RsyncTarget, SyncStats, serve_native,
    serve_rsync,
};
use phaul_testkit::noise;
use phaul_transport::{Channel, Endpoint, Identity, Link, LinkConfig, Listener, SharedKey};

/// The goal for native/rsync wall time: at most this.
const GOAL: f64 = 1.0;
/// Any 16 bytes: a direct link pair has no control channel to pick one.
const SESSION: [u8; 16] = *b"phaul-bench-fs-s";
const MIB: f64 = 1024.0 * 1024.0;

/// The tree's shape.
#[derive(Debug, Clone, Copy)]
struct Shape {
    small: usize,
    dirs: usize,
    large: usize,
    large_size: usize,
    rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Which {
    Native,
    Rsync,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Native => "native",
            Which::Rsync => "rsync",
        }
    }
}

/// The two passes' wall times and counts.
#[derive(Debug, Clone, Copy)]
struct Timing {
    first: SyncStats,
    incremental: SyncStats,
    first_wall: Duration,
    incremental_wall: Duration,
}

fn main() -> Result<()> {
    // rsync starts this very binary as its remote shell.
    phaul_fs::rsync::run_as_rsh_if_called();
    let quick = std::env::var("PHAUL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let shape = if quick {
        Shape {
            small: 2_000,
            dirs: 100,
            large: 2,
            large_size: 16 << 20,
            rounds: 1,
        }
    } else {
        Shape {
            small: 10_000,
            dirs: 100,
            large: 4,
            large_size: 64 << 20,
            rounds: 3,
        }
    };
    let mut shape = shape;
    if let Some(n) = std::env::var("PHAUL_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
    {
        shape.rounds = n;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run(shape, quick))
}

async fn run(shape: Shape, quick: bool) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("phaul-bench-fs-")
        .tempdir()?;
    let src = work.path().join("src");
    header(&shape, quick, work.path());
    let t = Instant::now();
    let sizes = make_tree(&src, &shape)?;
    println!(
        "tree: {} small files ({:.1} MiB) in {} dirs + {} x {} MiB, written in {:.1} s",
        shape.small,
        sizes.small_bytes as f64 / MIB,
        shape.dirs,
        shape.large,
        shape.large_size >> 20,
        t.elapsed().as_secs_f64()
    );
    let helper = std::env::current_exe().context("locating this binary (the rsync helper)")?;
    let identity = Identity::self_signed()?;
    let key = SharedKey::new(b"phaul benchmark shared key, 32 b")?;
    let server_cfg = LinkConfig::new(key.clone()).with_identity(identity);
    let client_cfg = LinkConfig::new(key);

    let mut results: BTreeMap<Which, Vec<Timing>> = BTreeMap::new();
    let mut seed = 1000u64;
    for round in 1..=shape.rounds {
        let order = if round % 2 == 1 {
            [Which::Native, Which::Rsync]
        } else {
            [Which::Rsync, Which::Native]
        };
        for which in order {
            seed += 1;
            let dst = work.path().join(format!("dst-{}-{round}", which.name()));
            std::fs::create_dir(&dst)?;
            let (client, server) = link_pair(&server_cfg, &client_cfg).await?;
            let timing = match which {
                Which::Native => {
                    let root = dst.clone();
                    let target = tokio::spawn(async move {
                        serve_native(server, &root, &FsLimits::default()).await
                    });
                    let driver = NativeSource::new(client, src.clone());
                    let t = measure(driver, &src, &dst, &shape, seed).await?;
                    target.await?.context("native target")?;
                    t
                }
                Which::Rsync => {
                    let root = dst.clone();
                    let target = tokio::spawn(async move {
                        serve_rsync(server, &root, &RsyncTarget::default()).await
                    });
                    let driver = RsyncSource::new(client, src.clone(), helper.clone())?;
                    let t = measure(driver, &src, &dst, &shape, seed).await?;
                    target.await?.context("rsync target")?;
                    t
                }
            };
            println!(
                "  round {round}/{} {:<6}  first {:>6.2} s ({} files, {:.1} MiB)   \
                 incremental {:>6.2} s ({} files, {:.1} MiB)",
                shape.rounds,
                which.name(),
                timing.first_wall.as_secs_f64(),
                timing.first.files,
                timing.first.bytes as f64 / MIB,
                timing.incremental_wall.as_secs_f64(),
                timing.incremental.files,
                timing.incremental.bytes as f64 / MIB,
            );
            results.entry(which).or_default().push(timing);
            // The target tree stays until the end: see "Deletions" above.
        }
    }
    report(&results);
    Ok(())
}

/// Runs the three passes with one driver; times the first two.
async fn measure<D: FsDriver>(
    mut driver: D,
    src: &Path,
    dst: &Path,
    shape: &Shape,
    seed: u64,
) -> Result<Timing> {
    // Each timed pass starts with nothing dirty in the page cache, so
    // neither driver pays for writing back what came before it.
    nix::unistd::sync();
    let t = Instant::now();
    let first = driver
        .start()
        .await
        .with_context(|| format!("{} first sync", driver.name()))?;
    let first_wall = t.elapsed();
    let changed = mutate(src, shape, seed)?;
    nix::unistd::sync();
    let t = Instant::now();
    let incremental = driver
        .next_iteration()
        .await
        .with_context(|| format!("{} incremental sync", driver.name()))?;
    let incremental_wall = t.elapsed();
    driver
        .final_sync()
        .await
        .with_context(|| format!("{} final sync", driver.name()))?;
    verify(src, dst, &changed).with_context(|| format!("{} left a wrong tree", driver.name()))?;
    ensure!(
        incremental.files as usize == changed.len(),
        "{}: {} files sent in the incremental sync, {} changed",
        driver.name(),
        incremental.files,
        changed.len()
    );
    Ok(Timing {
        first,
        incremental,
        first_wall,
        incremental_wall,
    })
}

/// A connected FS link over loopback TCP, TLS on: (client, server).
async fn link_pair(server_cfg: &LinkConfig, client_cfg: &LinkConfig) -> Result<(Link, Link)> {
    let listener = Listener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_cfg = server_cfg.clone();
    let server = async {
        let (stream, peer) = listener.accept().await?;
        Link::accept(stream, peer, &server_cfg).await
    };
    let client = Link::connect(Endpoint::Tcp(addr), client_cfg, Channel::Fs, Some(SESSION));
    let (client, server) = tokio::join!(client, server);
    Ok((client.context("connecting")?, server.context("accepting")?))
}

struct Sizes {
    small_bytes: u64,
}

fn small_path(root: &Path, shape: &Shape, i: usize) -> PathBuf {
    root.join(format!("d{:03}", i % shape.dirs))
        .join(format!("f{i:05}"))
}

fn large_path(root: &Path, i: usize) -> PathBuf {
    root.join(format!("large{i}.bin"))
}

/// The size of small file `i`: 1–8 KiB, spread evenly.
fn small_size(i: usize) -> usize {
    1024 + (i * 7919) % (7 * 1024 + 1)
}

fn make_tree(root: &Path, shape: &Shape) -> Result<Sizes> {
    std::fs::create_dir(root)?;
    for d in 0..shape.dirs {
        std::fs::create_dir(root.join(format!("d{d:03}")))?;
    }
    let mut small_bytes = 0;
    for i in 0..shape.small {
        let n = small_size(i);
        std::fs::write(small_path(root, shape, i), noise(n, i as u64))?;
        small_bytes += n as u64;
    }
    for i in 0..shape.large {
        std::fs::write(
            large_path(root, i),
            noise(shape.large_size, 1 << 40 | i as u64),
        )?;
    }
    Ok(Sizes { small_bytes })
}

/// Rewrites 1% of the small files (new bytes, same size) and one large
/// file; returns the paths changed.
fn mutate(root: &Path, shape: &Shape, seed: u64) -> Result<Vec<PathBuf>> {
    let mut changed = Vec::new();
    let step = 100;
    let offset = (seed as usize * 37) % step;
    for i in (offset..shape.small).step_by(step) {
        let p = small_path(root, shape, i);
        std::fs::write(&p, noise(small_size(i), seed << 20 | i as u64))?;
        changed.push(p);
    }
    let p = large_path(root, seed as usize % shape.large);
    std::fs::write(&p, noise(shape.large_size, seed << 40))?;
    changed.push(p);
    Ok(changed)
}

/// Every source file has a target file of the same size, and the changed
/// ones have the same bytes.
fn verify(src: &Path, dst: &Path, changed: &[PathBuf]) -> Result<()> {
    let mut todo = vec![PathBuf::new()];
    let mut files = 0;
    while let Some(rel) = todo.pop() {
        for e in std::fs::read_dir(src.join(&rel))? {
            let e = e?;
            let r = rel.join(e.file_name());
            if e.file_type()?.is_dir() {
                todo.push(r);
                continue;
            }
            let (a, b) = (e.metadata()?, std::fs::symlink_metadata(dst.join(&r))?);
            if a.len() != b.len() {
                bail!(
                    "{}: {} bytes on the source, {} on the target",
                    r.display(),
                    a.len(),
                    b.len()
                );
            }
            files += 1;
        }
    }
    for p in changed {
        let rel = p.strip_prefix(src)?;
        if std::fs::read(p)? != std::fs::read(dst.join(rel))? {
            bail!("{}: content differs", rel.display());
        }
    }
    ensure!(files > 0, "no files compared");
    Ok(())
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn header(shape: &Shape, quick: bool, work: &Path) {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let rsync = std::process::Command::new("rsync")
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_else(|| "rsync not found".into());
    let fs_type = std::process::Command::new("stat")
        .args(["-f", "-c", "%T"])
        .arg(work)
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    println!(
        "phaul-fs benchmark{}: native vs rsync over a phaul FS link (loopback TCP, TLS on)",
        if quick { " (quick)" } else { "" }
    );
    println!(
        "machine: {nproc} CPUs, kernel {}; {rsync}; trees in {} ({fs_type}); {} round(s), medians",
        kernel.trim(),
        work.display(),
        shape.rounds
    );
}

fn report(results: &BTreeMap<Which, Vec<Timing>>) {
    let med = |w: Which, f: fn(&Timing) -> Duration| {
        median(
            &results[&w]
                .iter()
                .map(|t| f(t).as_secs_f64())
                .collect::<Vec<_>>(),
        )
    };
    println!();
    println!("| pass | native | rsync | native/rsync |");
    println!("|---|---|---|---|");
    let mut lines = Vec::new();
    for (label, f) in [
        (
            "first sync",
            (|t: &Timing| t.first_wall) as fn(&Timing) -> Duration,
        ),
        ("incremental sync", |t: &Timing| t.incremental_wall),
    ] {
        let (n, r) = (med(Which::Native, f), med(Which::Rsync, f));
        let ratio = n / r;
        println!("| {label} | {n:.2} s | {r:.2} s | {ratio:.2} |");
        let verdict = if ratio <= GOAL { "PASS" } else { "ABOVE GOAL" };
        lines.push(format!(
            "native/rsync {label}: {ratio:.2} (goal <= {GOAL:.1}) {verdict}"
        ));
    }
    println!();
    for l in lines {
        println!("{l}");
    }
}
