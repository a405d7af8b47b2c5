//! `phaul-service`: the migration target daemon.
//!
//! It restores what `phaul migrate` sends, as root, so it is remote root for
//! whoever holds the key: it binds loopback unless told otherwise, and
//! refuses peers that do not prove they hold the shared key. It also takes
//! a controller's order (`phaul migrate --from THIS --to OTHER KIND ID`) to
//! move a tree of this host to another service, checked as the CLI checks
//! its arguments. `--metrics ADDR` serves its metrics (Prometheus' text
//! format) at `GET /metrics` over plain HTTP, loopback for a bare port.
//! `--max-migrations N` bounds the migrations it receives at once; the next
//! ones wait in a queue (`--max-queued`, `--queue-wait`) or are refused as
//! busy before their sources freeze anything.
//!
//! ```text
//! head -c 32 /dev/urandom | base64 > key && chmod 600 key
//! cargo run --example phaul-service -- --listen 10.200.0.2:7070 --key-file key --work-dir /var/tmp/phaul
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use phaul::htypes::registry::Paths;
use phaul::{Listener, Service};
use phaul_cli::{CriuArgs, HostArgs, KeyArgs};

#[derive(Parser)]
#[command(about = "Accept live migrations from `phaul migrate` and restore them here")]
struct Args {
    /// Address to listen on: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    #[command(flatten)]
    key: KeyArgs,
    /// Where migrations' images are kept while they run.
    #[arg(long, default_value = "/var/tmp/phaul-service")]
    work_dir: PathBuf,
    /// Keep each migration's images afterwards.
    #[arg(long)]
    keep_images: bool,
    #[command(flatten)]
    criu: CriuArgs,
    #[command(flatten)]
    host: HostArgs,
    /// Where migrated runc bundles are put.
    #[arg(long, default_value = "/var/lib/phaul/runc")]
    runc_bundles: PathBuf,
    /// Serve metrics (Prometheus' text format) at `GET /metrics` over plain
    /// HTTP on this address: PORT (loopback) or HOST:PORT.
    #[arg(long, value_name = "ADDR")]
    metrics: Option<String>,
    /// Migrations received at once [default: two per CPU, at least 4].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_migrations: Option<u32>,
    /// Migrations beyond that which may wait for their turn; the next ones
    /// are refused as busy.
    #[arg(long, value_name = "N", default_value_t = 64)]
    max_queued: u32,
    /// The longest a migration waits in the queue before it is refused as
    /// busy (seconds; keep it under the sources' request timeout, 30 s).
    #[arg(long, value_name = "SECS", default_value_t = 20.0)]
    queue_wait: f64,
    /// Leave the kernel's RCU grace periods alone during restores. By
    /// default they are expedited (`/sys/kernel/rcu_expedited`) from each
    /// restore's start to its commit, which cuts tens of milliseconds of a
    /// container's downtime at the cost of an interrupt on every CPU per
    /// grace period meanwhile.
    #[arg(long)]
    no_expedite_rcu: bool,
    /// Receive a post-copy's images into the work directory, not into RAM
    /// (`/dev/shm`, the default: they hold no memory pages, and the source
    /// waits frozen while they are written).
    #[arg(long)]
    no_images_in_ram: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    phaul_cli::init_tracing("info");
    let args = Args::parse();
    let cfg = args.key.config()?;
    if !args.key.plaintext {
        println!("certificate sha256 {}", cfg.identity()?.fingerprint_hex());
    }
    let criu = args.criu.checked().await?;
    let listener = Listener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let paths = Paths {
        runc_bundles: args.runc_bundles.clone(),
        ..args.host.paths()
    };
    // A controller holding the key may order this host's trees moved
    // (`phaul migrate --from`): it could restore anything here already.
    let service = Service::new(criu.clone(), cfg, &args.work_dir)
        .controllable(criu)
        .keep_images(args.keep_images)
        .expedite_rcu(!args.no_expedite_rcu)
        .images_in_ram(!args.no_images_in_ram)
        .htype_paths(paths)
        .queue(
            args.max_queued as usize,
            std::time::Duration::try_from_secs_f64(args.queue_wait)
                .context("--queue-wait: a number of seconds")?,
        );
    let service = match args.max_migrations {
        Some(n) => service.max_migrations(n as usize),
        None => service,
    };
    if let Some(addr) = &args.metrics {
        let addr = phaul_cli::metrics_addr(addr)?;
        let (bound, server) =
            phaul_cli::serve_metrics(addr, service.metrics(), phaul_cli::shutdown_signal()).await?;
        println!("metrics on http://{bound}/metrics");
        tokio::spawn(server);
    }
    service
        .serve(listener, phaul_cli::shutdown_signal())
        .await?;
    Ok(())
}
