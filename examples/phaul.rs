//! `phaul`: migrate a live process tree to a host running `phaul-service`.
//!
//! ```text
//! cargo run --example phaul -- migrate --to 10.200.0.2:7070 --key-file key \
//!     --mode auto --json report.json pid 4242
//! ```
//! Modes: auto, stop-copy, post-copy, pre-copy, hybrid, restart. Exit
//! status: 0 only when the tree runs on the target; 1 when the migration
//! failed (the source still runs it); 2 when the request was refused before
//! anything started (a bad PID, an unreadable key). `--json` writes the
//! report in every case.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use phaul_core::criu::Criu;
use phaul_core::fs::FsChoice;
use phaul_core::policy::{DowntimeBudget, PhaulRules};
use phaul_core::stats::Ongoing;
use phaul_core::{Migration, Mode, ModeChoice, Progress, Report};
use phaul_htypes::pid::{PidOptions, TcpConnections};
use phaul_transport::{LinkConfig, SharedKey};

#[derive(Parser)]
#[command(about = "Live-migrate processes and containers with CRIU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Migrate something to another host.
    Migrate(Migrate),
}

#[derive(Parser)]
struct Migrate {
    /// The target's phaul-service: HOST:PORT or unix:PATH.
    #[arg(long)]
    to: String,
    /// File holding the secret shared with the target (at least 16 bytes, mode 600).
    #[arg(long)]
    key_file: PathBuf,
    /// auto, stop-copy, post-copy, pre-copy, hybrid or restart.
    #[arg(long, default_value = "auto")]
    mode: Mode,
    /// If the mode is not possible here, use the best one that is.
    #[arg(long)]
    fallback: bool,
    /// Write the final report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write every progress event to this file as a JSON line, with
    /// `elapsed_ms` and `bytes_sent` (bytes update at least every 200 ms
    /// while memory streams).
    #[arg(long)]
    events: Option<PathBuf>,
    /// Pre-copy stops when the predicted downtime fits this many ms
    /// (default: P.Haul's rules).
    #[arg(long)]
    downtime_ms: Option<u64>,
    /// Accept only a target certificate with this SHA-256 fingerprint.
    #[arg(long)]
    pin: Option<String>,
    /// Turn TLS off (only on a link that is already private).
    #[arg(long)]
    plaintext: bool,
    /// The longest the source may stay frozen, in seconds: past it phaul
    /// gives up, rolls back and resumes the source (a target that wakes up
    /// later refuses to run its copy).
    #[arg(long, default_value_t = phaul_core::source::DEFAULT_FREEZE_TIMEOUT.as_secs_f64())]
    freeze_timeout: f64,
    /// Cap the bytes per second this side sends.
    #[arg(long)]
    bandwidth: Option<u64>,
    /// Compress memory pages with lz4.
    #[arg(long)]
    compress: bool,
    /// Where the source keeps its images.
    #[arg(long, default_value = "/var/tmp/phaul")]
    work_dir: PathBuf,
    /// Keep the source's images afterwards.
    #[arg(long)]
    keep_images: bool,
    /// Skip the CPU compatibility check.
    #[arg(long)]
    skip_cpu_check: bool,
    /// Skip the CRIU version check.
    #[arg(long)]
    skip_criu_check: bool,
    /// Run the pre-flight checks but go on when the CRIU version or CPU
    /// check fails (printed as warnings).
    #[arg(long)]
    force: bool,
    /// The criu binary (default: criu on PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// CRIU's log level, 0 to 4 (4 is debug: slower, for diagnosing).
    #[arg(long, default_value_t = 2)]
    criu_log_level: i32,
    /// Where LXC keeps containers on this host.
    #[arg(long, default_value = phaul_htypes::lxc::DEFAULT_LXCPATH)]
    lxcpath: PathBuf,
    /// runc's state directory on this host (`runc --root`).
    #[arg(long, default_value = "/run/runc")]
    runc_root: PathBuf,
    /// How a container's file system travels: native, rsync (over the
    /// phaul link) or shared (the same storage on both hosts).
    #[arg(long, default_value = "native")]
    fs: String,
    #[command(flatten)]
    pid_opts: PidFlags,
    /// What to migrate: KIND ID, e.g. `pid 4242`, `lxc web1`, `runc web1`
    /// or `vz 101`.
    #[arg(num_args = 2, value_names = ["KIND", "ID"], required = true)]
    what: Vec<String>,
}

/// CRIU options of a `pid` tree (containers get their manager's). The
/// defaults suit a server with clients attached.
#[derive(clap::Args)]
#[command(next_help_heading = "Options of the pid kind")]
struct PidFlags {
    /// Restore established TCP connections closed (peers see a reset)
    /// instead of moving them open.
    #[arg(long)]
    tcp_close: bool,
    /// Refuse a tree with connections still in a listening socket's accept
    /// queue instead of skipping them.
    #[arg(long)]
    no_skip_in_flight: bool,
    /// Allow unix sockets whose peer is outside the tree.
    #[arg(long)]
    ext_unix_sk: bool,
    /// Do not move file locks.
    #[arg(long)]
    no_file_locks: bool,
    /// Treat the tree as a shell job (default: when it has a controlling terminal).
    #[arg(long, overrides_with = "no_shell_job")]
    shell_job: bool,
    /// Never treat the tree as a shell job.
    #[arg(long)]
    no_shell_job: bool,
    /// A mount point bound into the tree's mount namespace from outside;
    /// the same path must exist on the target. Repeatable.
    #[arg(long, value_name = "PATH")]
    ext_mount: Vec<String>,
    /// A veth of the tree's network namespace to recreate on the target:
    /// IN=OUT[@BRIDGE]. Repeatable.
    #[arg(long, value_name = "IN=OUT[@BRIDGE]")]
    veth: Vec<String>,
    /// The largest deleted-but-open file copied into the images, in bytes
    /// (CRIU's default: 1 MiB).
    #[arg(long, value_name = "BYTES")]
    ghost_limit: Option<u32>,
    /// Resolve inotify watches by path (needed when inodes change).
    #[arg(long)]
    force_irmap: bool,
    /// Where to look for inotify watches' paths. Repeatable.
    #[arg(long, value_name = "PATH")]
    irmap_scan_path: Vec<String>,
    /// Restore mounts the way CRIU did before 4.0.
    #[arg(long)]
    mntns_compat_mode: bool,
}

impl PidFlags {
    fn options(&self) -> anyhow::Result<PidOptions> {
        let veths = self
            .veth
            .iter()
            .map(|v| {
                v.split_once('=')
                    .map(|(i, o)| (i.to_string(), o.to_string()))
                    .ok_or_else(|| anyhow::anyhow!("--veth {v:?}: expected IN=OUT[@BRIDGE]"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(PidOptions {
            tcp: if self.tcp_close {
                TcpConnections::Close
            } else {
                TcpConnections::Migrate
            },
            skip_in_flight: !self.no_skip_in_flight,
            ext_unix_sk: self.ext_unix_sk,
            file_locks: !self.no_file_locks,
            shell_job: match (self.shell_job, self.no_shell_job) {
                (true, _) => Some(true),
                (_, true) => Some(false),
                _ => None,
            },
            ext_mounts: self.ext_mount.clone(),
            veths,
            ghost_limit: self.ghost_limit,
            force_irmap: self.force_irmap,
            irmap_scan_paths: self.irmap_scan_path.clone(),
            mntns_compat_mode: self.mntns_compat_mode,
        })
    }
}

/// One progress event as a JSON line: when, how many bytes had gone, and
/// the event itself (`event`, `value`).
fn write_event(w: &mut impl std::io::Write, elapsed: Duration, bytes: u64, p: &Progress) {
    let mut line = serde_json::to_value(p).unwrap_or_default();
    if let Some(o) = line.as_object_mut() {
        o.insert("elapsed_ms".into(), (elapsed.as_secs_f64() * 1000.0).into());
        o.insert("bytes_sent".into(), bytes.into());
    }
    // Flushed per line: a reader follows the file as the migration goes.
    if writeln!(w, "{line}").and_then(|()| w.flush()).is_err() {
        eprintln!("phaul: could not write an event line");
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    // rsync runs this same binary as its remote shell (--fs rsync).
    phaul_fs::rsync::run_as_rsh_if_called();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHAUL_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let Cmd::Migrate(m) = Cli::parse().cmd;
    let (json, mode) = (m.json.clone(), m.mode);
    match migrate(m).await {
        Ok(true) => std::process::ExitCode::SUCCESS,
        Ok(false) => std::process::ExitCode::FAILURE,
        Err(e) => {
            eprintln!("phaul: {e:#}");
            // Refused before anything started: the report says so too, so
            // an orchestrator reading --json always finds one.
            if let Some(p) = json {
                let r = Ongoing::start(ModeChoice {
                    mode,
                    requested: mode,
                    reason: "refused before anything started".into(),
                })
                .finalize(Err(format!("{e:#}")));
                write_json(&p, &r);
            }
            std::process::ExitCode::from(2)
        }
    }
}

async fn migrate(m: Migrate) -> anyhow::Result<bool> {
    let fs = match m.fs.as_str() {
        "native" => FsChoice::Native,
        "rsync" => FsChoice::Rsync {
            helper: std::env::current_exe()?,
        },
        "shared" => FsChoice::Shared,
        other => anyhow::bail!("unknown --fs {other:?} (native, rsync, shared)"),
    };
    let paths = phaul_htypes::registry::Paths {
        lxcpath: m.lxcpath.clone(),
        runc_root: m.runc_root.clone(),
        ..Default::default()
    };
    let htype = phaul_htypes::registry::source_with(
        &m.what[0],
        &m.what[1],
        &paths,
        &m.pid_opts.options()?,
    )?;
    let key = SharedKey::from_file(&m.key_file)?;
    let mut cfg = LinkConfig::new(key)
        .bandwidth(m.bandwidth)
        .compress(m.compress);
    if m.plaintext {
        cfg = cfg.plaintext();
    }
    if let Some(p) = &m.pin {
        cfg = cfg.pin(phaul_transport::tls::parse_fingerprint(p)?);
    }
    let rpc = match &m.criu {
        Some(b) => criu_rpc::Criu::with_binary(b),
        None => criu_rpc::Criu::new(),
    }
    .quiet(true);
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut mig = Migration::new(
        Criu::new(rpc).log_level(m.criu_log_level),
        m.to.clone(),
        cfg,
        htype,
    )
    .mode(m.mode)
    .fallback(m.fallback)
    .work_dir(&m.work_dir)
    .keep_images(m.keep_images)
    .skip_cpu_check(m.skip_cpu_check)
    .skip_version_check(m.skip_criu_check)
    .force(m.force)
    .freeze_timeout(
        Duration::try_from_secs_f64(m.freeze_timeout)
            .ok()
            .filter(|d| !d.is_zero())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "--freeze-timeout {}: a positive number of seconds",
                    m.freeze_timeout
                )
            })?,
    )
    .fs(fs)
    .progress(tx);
    mig = match m.downtime_ms {
        Some(ms) => mig.policy(Box::new(DowntimeBudget {
            budget: Duration::from_millis(ms),
            ..Default::default()
        })),
        None => mig.policy(Box::new(PhaulRules::default())),
    };
    let cancel = mig.cancel_handle();
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}")
            .expect("a valid template"),
    );
    bar.enable_steady_tick(Duration::from_millis(100));
    let mut events = match &m.events {
        Some(p) => Some(std::io::BufWriter::new(
            std::fs::File::create(p)
                .map_err(|e| anyhow::anyhow!("--events {}: {e}", p.display()))?,
        )),
        None => None,
    };
    let started = std::time::Instant::now();
    let ui = tokio::spawn(async move {
        let mut phase = String::from("pre-flight");
        let mut bytes = 0u64;
        while let Some(p) = rx.recv().await {
            if let Progress::Bytes(b) = p {
                bytes = b;
            }
            if let Some(w) = events.as_mut() {
                write_event(w, started.elapsed(), bytes, &p);
            }
            match &p {
                Progress::Phase(ph) => phase = ph.describe().to_string(),
                Progress::Bytes(_) => {}
                other => bar.println(other.to_string()),
            }
            bar.set_message(format!("{phase}  {:.1} MiB", bytes as f64 / 1048576.0));
        }
        bar.finish_and_clear();
    });
    let mut run = tokio::spawn(mig.run());
    let joined = tokio::select! {
        r = &mut run => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelling: the source is resumed unless the target already runs it");
            cancel.cancel();
            run.await
        }
    };
    let _ = ui.await;
    // Past this point the migration ran: its outcome decides the exit
    // status, never a failure to report it.
    let report = match joined {
        Ok(r) => r,
        Err(e) => {
            eprintln!("phaul: the migration task failed: {e}");
            return Ok(false);
        }
    };
    println!("{report}");
    if let Some(p) = &m.json {
        write_json(p, &report);
    }
    Ok(report.success)
}

/// Writes the report for `--json`; a failure is said, not fatal.
fn write_json(p: &std::path::Path, r: &Report) {
    if let Err(e) = std::fs::write(p, r.to_json()) {
        eprintln!("phaul: writing {}: {e}", p.display());
    }
}
