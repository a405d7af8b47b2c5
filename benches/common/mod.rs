//! What the benches share: the engine's CRIU and link, and a target
//! service on a thread of its own inside a host (network namespace), as
//! `phaul-service` would run there.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow};
use phaul_core::criu::Criu;
use phaul_core::{Migration, Progress, Report, Service};
use phaul_testkit::in_netns;
use phaul_transport::{LinkConfig, Listener, SharedKey};

/// Raises `fs.pipe-max-size` to the 4 MiB CRIU's lazy pages need.
#[allow(dead_code)] // each bench compiles this module alone
pub fn raise_pipe_max_size() -> Result<()> {
    let path = "/proc/sys/fs/pipe-max-size";
    let now: u64 = std::fs::read_to_string(path)?.trim().parse()?;
    if now < 4 << 20 {
        std::fs::write(path, (4u64 << 20).to_string())?;
    }
    Ok(())
}

/// With `PHAUL_BENCH_LOG` set (a `tracing` filter, e.g.
/// `phaul_core=debug,phaul_htypes=debug`), the engine's and the service's
/// logs go to stderr with microsecond timestamps: where a phase's time goes.
#[allow(dead_code)] // each bench compiles this module alone
pub fn log_from_env() {
    if std::env::var_os("PHAUL_BENCH_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_BENCH_LOG"))
            .with_writer(std::io::stderr)
            .try_init();
    }
}

/// `PHAUL_BENCH_CASES` (comma-separated names) picked from `all`, or all
/// of them when it is unset or empty.
#[allow(dead_code)] // each bench compiles this module alone
pub fn cases_from_env<C: Copy>(all: &[C], name: impl Fn(C) -> String) -> Result<Vec<C>> {
    let Some(v) = std::env::var("PHAUL_BENCH_CASES")
        .ok()
        .filter(|v| !v.is_empty())
    else {
        return Ok(all.to_vec());
    };
    v.split(',')
        .map(|n| {
            all.iter()
                .copied()
                .find(|c| name(*c) == n.trim())
                .ok_or_else(|| anyhow!("PHAUL_BENCH_CASES: no case {n:?}"))
        })
        .collect()
}

/// The migration ran to success in the mode asked for; else why not.
#[allow(dead_code)] // each bench compiles this module alone
pub fn succeeded_as(report: &Report, mode: phaul_core::Mode) -> Result<()> {
    anyhow::ensure!(
        report.success,
        "{mode} failed in phase {}: {}",
        report.phase_reached,
        report.error.as_deref().unwrap_or("?")
    );
    anyhow::ensure!(report.mode == mode.as_str(), "ran as {}", report.mode);
    Ok(())
}

/// The link both hosts of a bench use, keyed by `key`.
pub fn link_config(key: &[u8]) -> Result<LinkConfig> {
    Ok(LinkConfig::new(SharedKey::new(key)?))
}

/// The engine's CRIU: `bin`, logging at `PHAUL_BENCH_CRIU_LOG_LEVEL` (2
/// unless set; 4 gives timestamps to see where the time goes).
pub fn engine_criu(bin: &std::path::Path) -> Criu {
    let level = std::env::var("PHAUL_BENCH_CRIU_LOG_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(2);
    Criu::new(criu_rpc::Criu::with_binary(bin).quiet(true)).log_level(level)
}

/// A target service as the benches run it, restoring with `bin`:
/// `PHAUL_BENCH_RCU=off` leaves the kernel's RCU knob alone (see
/// `Service::expedite_rcu`), `PHAUL_BENCH_RAM=off` keeps a post-copy's
/// images on disk ([`images_in_ram`]), each for an A/B.
pub fn service(
    bin: &std::path::Path,
    link: LinkConfig,
    dir: impl AsRef<std::path::Path>,
) -> Service {
    let on = std::env::var("PHAUL_BENCH_RCU").as_deref() != Ok("off");
    Service::new(engine_criu(bin), link, dir)
        .expedite_rcu(on)
        .images_in_ram(images_in_ram())
}

/// Whether a post-copy's images go to RAM, on both sides (see
/// `Migration::images_in_ram`): unless `PHAUL_BENCH_RAM=off`.
pub fn images_in_ram() -> bool {
    std::env::var("PHAUL_BENCH_RAM").as_deref() != Ok("off")
}

/// What one migration through the engine gave: its report, its progress
/// events each with the moment it came, and when the run returned.
pub struct Ran {
    pub report: Report,
    /// The concurrent bench reads only the reports.
    #[allow(dead_code)]
    pub events: Vec<(Instant, Progress)>,
    /// Each bench compiles this module alone; the containers bench does
    /// not time post-copy's background pull, so it never reads this.
    #[allow(dead_code)]
    pub ended: Instant,
}

/// Runs the migration `make` builds on a thread inside host `ns`, at most
/// `limit`, recording its progress events as they are sent (on a thread of
/// their own, so the timestamps are not the engine's).
pub fn migrate_in(
    ns: &str,
    limit: Duration,
    make: impl FnOnce() -> Result<Migration> + Send + 'static,
) -> Result<Ran> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Progress>();
    let recorder = std::thread::spawn(move || {
        let mut events = Vec::new();
        while let Some(p) = rx.blocking_recv() {
            events.push((Instant::now(), p));
        }
        events
    });
    let report = in_netns(ns, move || async move {
        let m = make()?.progress(tx);
        tokio::time::timeout(limit, m.run())
            .await
            .map_err(|_| anyhow!("the migration hung"))
    })
    .join()
    .map_err(|_| anyhow!("the source thread panicked"))??;
    let ended = Instant::now();
    let events = recorder
        .join()
        .map_err(|_| anyhow!("the progress recorder panicked"))?;
    Ok(Ran {
        report,
        events,
        ended,
    })
}

/// A [`Service`] serving on `IP:0` inside a host until dropped.
pub struct ServiceThread {
    /// Where it listens.
    pub addr: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl ServiceThread {
    /// Starts the service `make` builds, inside host `ns`, on `ip`.
    pub fn start(
        ns: &str,
        ip: &str,
        make: impl FnOnce() -> Result<Service> + Send + 'static,
    ) -> Result<Self> {
        let (addr_tx, addr_rx) = std_mpsc::channel::<Result<String>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ip = ip.to_string();
        let thread = in_netns(ns, move || async move {
            let bound = async {
                let l = Listener::bind(&format!("{ip}:0")).await?;
                let a = l.local_addr()?;
                Ok::<_, anyhow::Error>((l, a))
            }
            .await;
            let listener = match bound {
                Ok((l, a)) => {
                    let _ = addr_tx.send(Ok(a));
                    l
                }
                Err(e) => {
                    let _ = addr_tx.send(Err(e));
                    return Ok(());
                }
            };
            make()?
                .serve(listener, async {
                    let _ = stop_rx.await;
                })
                .await?;
            Ok(())
        });
        let addr = addr_rx
            .recv_timeout(Duration::from_secs(10))
            .context("the target service did not start")??;
        Ok(Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// Stops it; how its thread ended.
    pub fn stop(mut self) -> Result<()> {
        self.halt()
    }

    fn halt(&mut self) -> Result<()> {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        match self.thread.take().map(std::thread::JoinHandle::join) {
            None | Some(Ok(Ok(()))) => Ok(()),
            Some(Ok(Err(e))) => Err(e.context("the target service ended with an error")),
            Some(Err(_)) => Err(anyhow!("the target service's thread panicked")),
        }
    }
}

impl Drop for ServiceThread {
    fn drop(&mut self) {
        let _ = self.halt();
    }
}
