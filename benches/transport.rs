//! Benchmark: what does phaul's link cost next to a plain TCP copy of the
//! same bytes? Every case moves N bytes over loopback TCP (127.0.0.1, an
//! ephemeral port) in one process, and is compared with a plain copy
//! measured in the same run.
//!
//! What it measures (N = 1 GiB, or 256 MiB with `PHAUL_BENCH_QUICK=1`):
//!
//! 1. **plain TCP** (the baseline): a tokio `TcpStream` writes a 256 KiB
//!    buffer again and again (`write_all`) until N bytes, then shuts down;
//!    the other end reads to EOF, counting.
//!    For reference only (no goal), **plain TCP relay**: the page stream's
//!    path without phaul, socketpair -> copy -> TCP -> copy -> socketpair,
//!    to tell the cost of the extra hops from that of framing and TLS.
//! 2. **page stream**: what CRIU's page server traffic takes. Each "CRIU
//!    side" is a Unix socketpair (as the target's `ps.fd`); on each host
//!    [`phaul_transport::relay`] carries its end over an authenticated
//!    `PAGES` link. N bytes written into the source's socket are timed until
//!    they have all come out of the target's socket. Once with TLS (the
//!    default) and once with `LinkConfig::plaintext()`.
//! 3. **image stream**: a directory of 4 files of N/4 pseudo-random bytes
//!    each, sent with `images::send_dir` and received with
//!    `images::receive_batch` (which fsyncs every file and the directory
//!    before its `BatchAck`), into a fresh directory, TLS on and off; timed
//!    until the sender has the ack. Its baseline is **plain TCP files**: the
//!    same files read, written to a plain TCP socket (a name and size before
//!    each), and written to files on the other side, each fsynced, then the
//!    directory, then a one-byte ack; blocking `std` I/O, one thread per
//!    side, 256 KiB at a time: the simplest copy there is.
//! 4. **page-fault round trips**: latency, not throughput. A post-copy's
//!    restored tree waits for each page it touches first: the lazy-pages
//!    daemon asks for it (32 bytes) and the source's page server answers
//!    (32 bytes, then the 4 KiB page), one at a time. 2000 such round trips
//!    over a direct loopback TCP connection (CRIU's own page server,
//!    unrelayed), the plain relay's path, and the page stream with TLS;
//!    the median time per round trip, and its ratio to the direct one. No
//!    goal: it says what phaul's hops add to each fault.
//!
//! Every link and connection is set up before the clock starts (the TLS and
//! key handshakes are not timed). Each side of each case runs in its own
//! task on a multi-thread tokio runtime, as two hosts would. After one
//! uncounted warm-up round, each case runs 3 times, interleaved with the
//! others, and the median is reported (with the slowest and fastest run),
//! with its ratio to the matching plain TCP baseline. The goal (ratio >= 0.8) is
//! printed next to each ratio (PASS / BELOW GOAL) but never asserted: this
//! is a benchmark, not a test.
//!
//! Run it:
//!
//! ```text
//! cargo bench --bench transport                      # N = 1 GiB
//! PHAUL_BENCH_QUICK=1 cargo bench --bench transport  # N = 256 MiB
//! ```
//!
//! Beside each rate, the CPU time the whole process used per GiB (user and
//! system, all threads: both ends): the work a case costs, which decides
//! its rate once the cores are the limit, as on a 2-vCPU machine.
//!
//! `PHAUL_BENCH_CASES="page stream TLS,plain TCP"` runs only the cases so
//! named (ratios to a baseline that did not run print as NaN);
//! `PHAUL_BENCH_CASES="round trips"` only the round trips.
//!
//! The image files (N for the source, N more for each received copy,
//! removed after each run) go to a fresh directory under the default temp
//! dir (`TMPDIR`, else `/tmp`); the header says which file system that is,
//! since the fsyncs make the image cases as fast as that disk, not faster.

#![allow(clippy::print_stdout)]

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use phaul_transport::images::{self, ImageLimits};
use phaul_transport::{Channel, Endpoint, Identity, Link, LinkConfig, Listener, SharedKey, relay};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// The goal for every ratio to its plain TCP baseline: at least this.
const GOAL: f64 = 0.8;
/// Runs per case; the median is reported.
const RUNS: usize = 3;
/// The write size of the plain copies (phaul's own data chunk is the same).
const CHUNK: usize = 256 * 1024;
/// Files in the image directory.
const IMAGE_FILES: u64 = 4;
/// Any 16 bytes: a direct link pair has no control channel to pick one.
const SESSION: [u8; 16] = *b"phaul-bench-sess";
const MIB: f64 = 1024.0 * 1024.0;

/// One measured case.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Case {
    PlainTcp,
    PlainRelay,
    PagesTls,
    PagesPlain,
    FilesTcp,
    ImagesTls,
    ImagesPlain,
}

impl Case {
    const ALL: [Case; 7] = [
        Case::PlainTcp,
        Case::PlainRelay,
        Case::PagesTls,
        Case::PagesPlain,
        Case::FilesTcp,
        Case::ImagesTls,
        Case::ImagesPlain,
    ];

    fn name(self) -> &'static str {
        match self {
            Case::PlainTcp => "plain TCP",
            Case::PlainRelay => "plain TCP relay",
            Case::PagesTls => "page stream TLS",
            Case::PagesPlain => "page stream plaintext",
            Case::FilesTcp => "plain TCP files",
            Case::ImagesTls => "image stream TLS",
            Case::ImagesPlain => "image stream plaintext",
        }
    }

    /// Whether the goal applies: not to the plain copies themselves.
    fn has_goal(self) -> bool {
        !matches!(self, Case::PlainTcp | Case::PlainRelay | Case::FilesTcp)
    }

    /// The case this one is compared with (itself for a baseline).
    fn baseline(self) -> Case {
        match self {
            Case::PlainTcp | Case::PlainRelay | Case::PagesTls | Case::PagesPlain => Case::PlainTcp,
            Case::FilesTcp | Case::ImagesTls | Case::ImagesPlain => Case::FilesTcp,
        }
    }
}

/// The two ends' configurations of one kind of link.
struct Configs {
    server: LinkConfig,
    client: LinkConfig,
}

impl Configs {
    fn new(tls: bool, identity: &Identity) -> Result<Self> {
        let key = SharedKey::new(b"phaul benchmark shared key, 32 b")?;
        let mut server = LinkConfig::new(key.clone()).with_identity(identity.clone());
        let mut client = LinkConfig::new(key);
        if !tls {
            server = server.plaintext();
            client = client.plaintext();
        }
        Ok(Self { server, client })
    }
}

struct Bench {
    bytes: u64,
    work: tempfile::TempDir,
    images: PathBuf,
    tls: Configs,
    plain: Configs,
}

fn main() -> Result<()> {
    let quick = std::env::var("PHAUL_BENCH_QUICK").is_ok_and(|v| !v.is_empty() && v != "0");
    let bytes: u64 = if quick { 256 << 20 } else { 1 << 30 };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    rt.block_on(run(bytes, quick))
}

async fn run(bytes: u64, quick: bool) -> Result<()> {
    let work = tempfile::Builder::new()
        .prefix("phaul-bench-transport-")
        .tempdir()?;
    let identity = Identity::self_signed()?;
    let bench = Bench {
        bytes,
        images: work.path().join("images"),
        tls: Configs::new(true, &identity)?,
        plain: Configs::new(false, &identity)?,
        work,
    };
    header(&bench, quick);
    make_images(&bench.images, bytes).await?;

    // To look into some cases only (a profile, say): their names, comma-separated.
    let only = std::env::var("PHAUL_BENCH_CASES").unwrap_or_default();
    let wanted = |c: &Case| only.is_empty() || only.split(',').any(|n| n.trim() == c.name());
    let mut results: Vec<(Case, Vec<f64>)> = Case::ALL
        .iter()
        .filter(|c| wanted(c))
        .map(|c| (*c, Vec::new()))
        .collect();
    // CPU seconds the whole process spent per run, beside each wall time.
    let mut cpu: Vec<Vec<f64>> = vec![Vec::new(); results.len()];
    // Run 0 warms up (page cache, allocator, TLS code) and is not counted.
    for run in 0..=RUNS {
        for ((case, secs), cpus) in results.iter_mut().zip(cpu.iter_mut()) {
            let c0 = cpu_seconds()?;
            let t = bench.measure(*case).await.with_context(|| case.name())?;
            let used = cpu_seconds()? - c0;
            let label = if run == 0 {
                "warm-up".to_string()
            } else {
                format!("run {run}/{RUNS}")
            };
            println!(
                "  {label:<8} {:<24} {:>8.1} MiB/s  ({:.2} s, {used:.2} CPU s)",
                case.name(),
                bench.bytes as f64 / MIB / t.as_secs_f64(),
                t.as_secs_f64()
            );
            if run > 0 {
                secs.push(t.as_secs_f64());
                cpus.push(used);
            }
        }
    }
    report(&bench, &results, &cpu);
    if only.is_empty() || only.split(',').any(|n| n.trim() == "round trips") {
        round_trips(&bench).await?;
    }
    Ok(())
}

/// Round trips in each run of the round-trip cases.
const TRIPS: usize = 2000;
/// What a lazy-pages daemon asks for one faulting page (a
/// `page_server_iov`), and what the page server answers (the iov again and
/// the page).
const ASK: usize = 32;
const ANSWER: usize = 32 + 4096;

/// A page fault's round trip: after the restore, every page the tree
/// touches first waits for one, and a restored server touches dozens before
/// it answers its first client. The daemon's request goes out, the page
/// comes back, one at a time: latency, not throughput. Three paths:
/// a direct loopback TCP connection (CRIU's own page server, unrelayed),
/// the plain relay's (socketpair, copy, TCP, copy, socketpair, each way),
/// and phaul's page stream with TLS.
async fn round_trips(bench: &Bench) -> Result<()> {
    println!();
    println!("page-fault round trips: {TRIPS} of a {ASK}-byte request and a {ANSWER}-byte answer");
    let mut rows: Vec<(&str, Vec<f64>)> = vec![
        ("direct TCP", Vec::new()),
        ("plain TCP relay", Vec::new()),
        ("page stream TLS", Vec::new()),
    ];
    for run in 0..=RUNS {
        for (name, us) in rows.iter_mut() {
            let (daemon, server) = match *name {
                "direct TCP" => {
                    let (a, b) = tcp_pair().await?;
                    (boxed(a), boxed(b))
                }
                "plain TCP relay" => plain_relay_ends().await?,
                _ => page_stream_ends(&bench.tls).await?,
            };
            let t = ping_pong(daemon, server).await?;
            let per = t.as_secs_f64() * 1e6 / TRIPS as f64;
            if run > 0 {
                us.push(per);
            }
        }
    }
    println!(
        "{:<24} {:>10} {:>17} {:>7}",
        "path", "us/trip", "(slowest-fastest)", "ratio"
    );
    let base = median(&rows[0].1);
    for (name, us) in &rows {
        let (lo, hi) = us
            .iter()
            .fold((f64::MAX, f64::MIN), |(l, h), &x| (l.min(x), h.max(x)));
        println!(
            "{name:<24} {:>10.1} {:>8.1}-{:<8.1} {:>7.2}",
            median(us),
            hi,
            lo,
            median(us) / base
        );
    }
    Ok(())
}

type Stream = Box<dyn AsyncStream>;
trait AsyncStream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> AsyncStream for T {}
fn boxed<T: AsyncStream + 'static>(s: T) -> Stream {
    Box::new(s)
}

/// The daemon's and the page server's ends of a plain relay.
async fn plain_relay_ends() -> Result<(Stream, Stream)> {
    let (tx, rx) = tcp_pair().await?;
    let (daemon, target_local) = UnixStream::pair()?;
    let (server, source_local) = UnixStream::pair()?;
    let (tr, tw) = tokio::io::split(tx);
    let (rr, rw) = tokio::io::split(rx);
    let (tlr, tlw) = tokio::io::split(target_local);
    let (slr, slw) = tokio::io::split(source_local);
    tokio::spawn(copy(tlr, tw));
    tokio::spawn(copy(tr, tlw));
    tokio::spawn(copy(slr, rw));
    tokio::spawn(copy(rr, slw));
    Ok((boxed(daemon), boxed(server)))
}

/// The daemon's and the page server's ends of phaul's page stream.
async fn page_stream_ends(cfg: &Configs) -> Result<(Stream, Stream)> {
    let (source_link, target_link) = link_pair(cfg, Channel::Pages).await?;
    let (daemon, target_local) = UnixStream::pair()?;
    let (server, source_local) = UnixStream::pair()?;
    tokio::spawn(relay(source_link, source_local));
    tokio::spawn(relay(target_link, target_local));
    Ok((boxed(daemon), boxed(server)))
}

/// [`TRIPS`] requests from `daemon`, each answered by `server` before the
/// next goes; the time they took.
async fn ping_pong(mut daemon: Stream, mut server: Stream) -> Result<Duration> {
    let serving = tokio::spawn(async move {
        let (mut ask, answer) = ([0u8; ASK], vec![7u8; ANSWER]);
        for _ in 0..TRIPS {
            server.read_exact(&mut ask).await?;
            // As CRIU's page server writes: the iov, then the page.
            server.write_all(&answer[..32]).await?;
            server.write_all(&answer[32..]).await?;
        }
        anyhow::Ok(())
    });
    let (ask, mut answer) = ([1u8; ASK], vec![0u8; ANSWER]);
    let start = Instant::now();
    for _ in 0..TRIPS {
        daemon.write_all(&ask).await?;
        daemon.read_exact(&mut answer).await?;
    }
    let took = start.elapsed();
    serving.await??;
    Ok(took)
}

/// User and system CPU time of this process so far (all its threads).
fn cpu_seconds() -> Result<f64> {
    use nix::sys::resource::{UsageWho, getrusage};
    let u = getrusage(UsageWho::RUSAGE_SELF)?;
    let secs = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    Ok(secs(u.user_time()) + secs(u.system_time()))
}

fn header(bench: &Bench, quick: bool) {
    let nproc = std::thread::available_parallelism().map_or(0, usize::from);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
            })
        })
        .unwrap_or_else(|| "?".into());
    println!(
        "phaul transport benchmark{}",
        if quick { " (quick)" } else { "" }
    );
    println!("machine: {nproc} CPUs ({cpu}), Linux {}", kernel.trim());
    println!(
        "data: {} MiB per run over loopback TCP, {RUNS} runs per case (median), tokio multi-thread runtime",
        bench.bytes >> 20
    );
    println!(
        "images: {IMAGE_FILES} files of {} MiB in {} ({}), fsynced on receipt",
        (bench.bytes / IMAGE_FILES) >> 20,
        bench.work.path().display(),
        fs_type(bench.work.path())
    );
    println!("compared: page stream (relay over a PAGES link) with a plain TCP copy;");
    println!("          image stream (images::send_dir/receive_batch) with plain TCP file copies");
    println!();
}

/// The file system holding `path`, from `/proc/mounts`.
fn fs_type(path: &Path) -> String {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    mounts
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let (dev, dir, ty) = (f.next()?, f.next()?, f.next()?);
            path.starts_with(dir)
                .then(|| (dir.len(), format!("{ty} on {dev}, mounted at {dir}")))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "?".into(), |(_, s)| s)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    s[s.len() / 2]
}

fn report(bench: &Bench, results: &[(Case, Vec<f64>)], cpu: &[Vec<f64>]) {
    let rate = |case: Case| {
        results
            .iter()
            .find(|(c, _)| *c == case)
            .map_or(f64::NAN, |(_, secs)| {
                bench.bytes as f64 / MIB / median(secs)
            })
    };
    println!();
    let gib = bench.bytes as f64 / (1u64 << 30) as f64;
    println!(
        "{:<24} {:>8} {:>17} {:>7} {:>10}   vs",
        "case", "MiB/s", "(slowest-fastest)", "ratio", "CPU s/GiB"
    );
    for ((case, secs), cpus) in results.iter().zip(cpu) {
        let slowest = secs.iter().copied().fold(f64::MIN, f64::max);
        let fastest = secs.iter().copied().fold(f64::MAX, f64::min);
        let mibs = |t: f64| bench.bytes as f64 / MIB / t;
        println!(
            "{:<24} {:>8.1} {:>17} {:>7.2} {:>10.2}   {}",
            case.name(),
            rate(*case),
            format!("({:.0}-{:.0})", mibs(slowest), mibs(fastest)),
            rate(*case) / rate(case.baseline()),
            median(cpus) / gib,
            case.baseline().name()
        );
    }
    println!();
    for (case, _) in results {
        if !case.has_goal() {
            continue;
        }
        let ratio = rate(*case) / rate(case.baseline());
        println!(
            "ratio {} / {}: {ratio:.2} (goal >= {GOAL}) {}",
            case.name(),
            case.baseline().name(),
            if ratio >= GOAL { "PASS" } else { "BELOW GOAL" }
        );
    }
    println!();
    println!(
        "for reference, the page stream against the same path without phaul's framing and TLS:"
    );
    for case in [Case::PagesTls, Case::PagesPlain] {
        let relay = Case::PlainRelay;
        let ratio = rate(case) / rate(relay);
        println!("ratio {} / {}: {ratio:.2}", case.name(), relay.name());
    }
}

impl Bench {
    async fn measure(&self, case: Case) -> Result<Duration> {
        match case {
            Case::PlainTcp => plain_tcp(self.bytes).await,
            Case::PlainRelay => plain_relay(self.bytes).await,
            Case::PagesTls => page_stream(&self.tls, self.bytes).await,
            Case::PagesPlain => page_stream(&self.plain, self.bytes).await,
            Case::FilesTcp => {
                let dest = self.fresh_dir()?;
                plain_tcp_files(&self.images, dest.path(), self.bytes).await
            }
            Case::ImagesTls => {
                let dest = self.fresh_dir()?;
                image_stream(&self.tls, &self.images, dest.path(), self.bytes).await
            }
            Case::ImagesPlain => {
                let dest = self.fresh_dir()?;
                image_stream(&self.plain, &self.images, dest.path(), self.bytes).await
            }
        }
    }

    /// An empty directory for one run's received files, removed on drop.
    fn fresh_dir(&self) -> Result<tempfile::TempDir> {
        Ok(tempfile::Builder::new()
            .prefix("received-")
            .tempdir_in(self.work.path())?)
    }
}

/// Bytes that do not compress: xorshift64*.
fn pseudo_random(buf: &mut [u8], seed: &mut u64) {
    for chunk in buf.chunks_mut(8) {
        *seed ^= *seed >> 12;
        *seed ^= *seed << 25;
        *seed ^= *seed >> 27;
        let v = seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
}

fn random_chunk() -> Vec<u8> {
    let mut buf = vec![0u8; CHUNK];
    pseudo_random(&mut buf, &mut 0x9e37_79b9_7f4a_7c15);
    buf
}

async fn make_images(dir: &Path, bytes: u64) -> Result<()> {
    tokio::fs::create_dir(dir).await?;
    let mut seed = 0x0123_4567_89ab_cdef_u64;
    let mut buf = vec![0u8; CHUNK];
    for i in 0..IMAGE_FILES {
        let mut f = tokio::fs::File::create(dir.join(format!("pages-{}.img", i + 1))).await?;
        let mut left = bytes / IMAGE_FILES;
        while left > 0 {
            let n = left.min(CHUNK as u64) as usize;
            pseudo_random(&mut buf[..n], &mut seed);
            f.write_all(&buf[..n]).await?;
            left -= n as u64;
        }
        // On disk before anything is timed, so no write-back of these
        // files competes with a measurement.
        f.sync_all().await?;
    }
    Ok(())
}

/// Writes `bytes` bytes of `chunk`, again and again, then shuts down.
async fn write_n<W: AsyncWrite + Unpin>(w: &mut W, chunk: &[u8], bytes: u64) -> Result<()> {
    let mut left = bytes;
    while left > 0 {
        let n = left.min(chunk.len() as u64) as usize;
        w.write_all(&chunk[..n]).await?;
        left -= n as u64;
    }
    w.shutdown().await?;
    Ok(())
}

/// Reads to EOF; the number of bytes.
async fn read_all<R: AsyncRead + Unpin>(r: &mut R) -> Result<u64> {
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// A connected pair of loopback TCP streams, `TCP_NODELAY` as phaul's are.
async fn tcp_pair() -> Result<(TcpStream, TcpStream)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (client, server) = (client?, accepted?.0);
    client.set_nodelay(true)?;
    server.set_nodelay(true)?;
    Ok((client, server))
}

/// An authenticated link of `channel` over loopback TCP, through phaul's
/// own listener and connect: (source/client end, target/server end).
async fn link_pair(cfg: &Configs, channel: Channel) -> Result<(Link, Link)> {
    let listener = Listener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let server_cfg = cfg.server.clone();
    let server = async {
        let (stream, peer) = listener.accept().await?;
        Link::accept(stream, peer, &server_cfg).await
    };
    let client = Link::connect(Endpoint::Tcp(addr), &cfg.client, channel, Some(SESSION));
    let (client, server) = tokio::join!(client, server);
    Ok((client.context("connecting")?, server.context("accepting")?))
}

async fn plain_tcp(bytes: u64) -> Result<Duration> {
    let (mut tx, mut rx) = tcp_pair().await?;
    let chunk = random_chunk();
    let start = Instant::now();
    let reader = tokio::spawn(async move { read_all(&mut rx).await });
    let writer = tokio::spawn(async move { write_n(&mut tx, &chunk, bytes).await });
    let got = reader.await??;
    let took = start.elapsed();
    writer.await??;
    ensure!(got == bytes, "received {got} of {bytes} bytes");
    Ok(took)
}

/// The page stream's path without phaul: socketpair, a copy into plain TCP,
/// a copy out of it, socketpair; one direction only, no framing, no TLS.
async fn plain_relay(bytes: u64) -> Result<Duration> {
    let (tx, rx) = tcp_pair().await?;
    let (mut criu_source, source_local) = UnixStream::pair()?;
    let (mut criu_target, target_local) = UnixStream::pair()?;
    let chunk = random_chunk();
    let start = Instant::now();
    let source_copy = tokio::spawn(copy(source_local, tx));
    let target_copy = tokio::spawn(copy(rx, target_local));
    let reader = tokio::spawn(async move { read_all(&mut criu_target).await });
    let writer = tokio::spawn(async move { write_n(&mut criu_source, &chunk, bytes).await });
    let got = reader.await??;
    let took = start.elapsed();
    writer.await??;
    let (up, down) = (source_copy.await??, target_copy.await??);
    ensure!(
        got == bytes && up == bytes && down == bytes,
        "moved {up}, {down}, {got} of {bytes}"
    );
    Ok(took)
}

/// Copies `from` to `to` in [`CHUNK`]s until EOF, then shuts `to` down.
async fn copy<R, W>(mut from: R, mut to: W) -> Result<u64>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    loop {
        let n = from.read(&mut buf).await?;
        if n == 0 {
            to.shutdown().await?;
            return Ok(total);
        }
        to.write_all(&buf[..n]).await?;
        total += n as u64;
    }
}

async fn page_stream(cfg: &Configs, bytes: u64) -> Result<Duration> {
    let (source_link, target_link) = link_pair(cfg, Channel::Pages).await?;
    // What CRIU would hold on each side, and what phaul relays.
    let (mut criu_source, source_local) = UnixStream::pair()?;
    let (mut criu_target, target_local) = UnixStream::pair()?;
    let chunk = random_chunk();
    let start = Instant::now();
    let source_relay = tokio::spawn(relay(source_link, source_local));
    let target_relay = tokio::spawn(relay(target_link, target_local));
    let reader = tokio::spawn(async move {
        // The target's page server answers nothing here: end that direction.
        criu_target.shutdown().await?;
        read_all(&mut criu_target).await
    });
    let writer = tokio::spawn(async move {
        write_n(&mut criu_source, &chunk, bytes).await?;
        // The relay ends once the way back has ended too.
        read_all(&mut criu_source).await
    });
    let got = reader.await??;
    let took = start.elapsed();
    let back = writer.await??;
    let (s, t) = (source_relay.await??, target_relay.await??);
    ensure!(got == bytes, "received {got} of {bytes} bytes");
    ensure!(
        back == 0 && s.sent == bytes && t.received == bytes,
        "relays moved {s:?} and {t:?}"
    );
    Ok(took)
}

async fn image_stream(cfg: &Configs, src: &Path, dest: &Path, bytes: u64) -> Result<Duration> {
    let (mut source, mut target) = link_pair(cfg, Channel::Images).await?;
    let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
    let start = Instant::now();
    let receiver = tokio::spawn(async move {
        images::receive_batch_over(&mut target, &dest, &ImageLimits::default()).await
    });
    let sender = tokio::spawn(async move { images::send_dir_over(&mut source, &src).await });
    let sent = sender.await??;
    let took = start.elapsed();
    let received = receiver.await??;
    ensure!(
        sent.bytes == bytes && sent.files as u64 == IMAGE_FILES && received == sent,
        "sent {sent:?}, received {received:?}"
    );
    Ok(took)
}

/// The plain counterpart of [`image_stream`], as straightforward as it
/// gets: blocking `std` file and socket I/O, one thread per side. Per file
/// a name (u16 length, bytes) and a size (u64), then the bytes in
/// [`CHUNK`]s; the receiver fsyncs each file and the directory, then
/// answers one byte.
async fn plain_tcp_files(src: &Path, dest: &Path, bytes: u64) -> Result<Duration> {
    let (tx, rx) = tcp_pair().await?;
    let (mut tx, mut rx) = (blocking_std(tx)?, blocking_std(rx)?);
    let mut names = Vec::new();
    for e in std::fs::read_dir(src)? {
        let name = e?.file_name();
        names.push(name.into_string().map_err(|n| anyhow::anyhow!("{n:?}"))?);
    }
    names.sort();
    let count = names.len();
    let (src, dest) = (src.to_path_buf(), dest.to_path_buf());
    let start = Instant::now();
    let receiver = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        let mut total = 0u64;
        for _ in 0..count {
            let mut len = [0u8; 2];
            rx.read_exact(&mut len)?;
            let mut name = vec![0u8; usize::from(u16::from_le_bytes(len))];
            rx.read_exact(&mut name)?;
            let name = String::from_utf8(name)?;
            let mut size = [0u8; 8];
            rx.read_exact(&mut size)?;
            let mut left = u64::from_le_bytes(size);
            let mut f = std::fs::File::create_new(dest.join(&name))?;
            while left > 0 {
                let n = left.min(CHUNK as u64) as usize;
                rx.read_exact(&mut buf[..n])?;
                f.write_all(&buf[..n])?;
                left -= n as u64;
                total += n as u64;
            }
            f.sync_all()?;
        }
        std::fs::File::open(&dest)?.sync_all()?;
        rx.write_all(&[1])?;
        Ok::<u64, anyhow::Error>(total)
    });
    let sender = tokio::task::spawn_blocking(move || {
        let mut buf = vec![0u8; CHUNK];
        for name in &names {
            let mut f = std::fs::File::open(src.join(name))?;
            let size = f.metadata()?.len();
            tx.write_all(&u16::try_from(name.len())?.to_le_bytes())?;
            tx.write_all(name.as_bytes())?;
            tx.write_all(&size.to_le_bytes())?;
            let mut left = size;
            while left > 0 {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    bail!("{name}: shorter than {size} bytes");
                }
                tx.write_all(&buf[..n])?;
                left = left.saturating_sub(n as u64);
            }
        }
        let mut ack = [0u8; 1];
        tx.read_exact(&mut ack)?;
        ensure!(ack == [1], "no ack");
        Ok::<(), anyhow::Error>(())
    });
    sender.await??;
    let took = start.elapsed();
    let got = receiver.await??;
    ensure!(got == bytes, "received {got} of {bytes} bytes");
    Ok(took)
}

/// A tokio TCP stream as a blocking `std` one.
fn blocking_std(s: TcpStream) -> Result<std::net::TcpStream> {
    let s = s.into_std()?;
    s.set_nonblocking(false)?;
    Ok(s)
}
