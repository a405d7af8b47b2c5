//! `phaul-service`: the migration target daemon.
//!
//! It restores what `phaul migrate` sends, as root, so it is remote root for
//! whoever holds the key: it binds loopback unless told otherwise, and
//! refuses peers that do not prove they hold the shared key. It also takes
//! a controller's order (`phaul migrate --from THIS --to OTHER KIND ID`) to
//! move a tree of this host to another service, checked as the CLI checks
//! its arguments. `--metrics ADDR` serves its metrics (Prometheus' text
//! format) at `GET /metrics` over plain HTTP, loopback for a bare port.
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
        .htype_paths(paths);
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
