//! `phaul-service`: the migration target daemon.
//!
//! It restores what `phaul migrate` sends, as root, so it is remote root for
//! whoever holds the key: it binds loopback unless told otherwise, and
//! refuses peers that do not prove they hold the shared key.
//!
//! ```text
//! head -c 32 /dev/urandom | base64 > key && chmod 600 key
//! cargo run --example phaul-service -- --listen 10.200.0.2:7070 --key-file key --work-dir /var/tmp/phaul
//! ```
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use phaul_core::Service;
use phaul_core::criu::Criu;
use phaul_transport::{LinkConfig, Listener, SharedKey};

#[derive(Parser)]
#[command(about = "Accept live migrations from `phaul migrate` and restore them here")]
struct Args {
    /// Address to listen on: HOST:PORT or unix:PATH.
    #[arg(long, default_value = "127.0.0.1:7070")]
    listen: String,
    /// File holding the secret shared with the source (at least 16 bytes, mode 600).
    #[arg(long)]
    key_file: PathBuf,
    /// Where migrations' images are kept while they run.
    #[arg(long, default_value = "/var/tmp/phaul-service")]
    work_dir: PathBuf,
    /// Keep each migration's images afterwards.
    #[arg(long)]
    keep_images: bool,
    /// The criu binary (default: criu on PATH).
    #[arg(long)]
    criu: Option<PathBuf>,
    /// CRIU's log level, 0 to 4 (4 is debug: slower, for diagnosing).
    #[arg(long, default_value_t = 2)]
    criu_log_level: i32,
    /// Turn TLS off (only on a link that is already private).
    #[arg(long)]
    plaintext: bool,
    /// Where LXC keeps containers on this host.
    #[arg(long, default_value = phaul_htypes::lxc::DEFAULT_LXCPATH)]
    lxcpath: PathBuf,
    /// runc's state directory on this host (`runc --root`).
    #[arg(long, default_value = "/run/runc")]
    runc_root: PathBuf,
    /// Where migrated runc bundles are put.
    #[arg(long, default_value = "/var/lib/phaul/runc")]
    runc_bundles: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PHAUL_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let key = SharedKey::from_file(&args.key_file)?;
    let mut cfg = LinkConfig::new(key);
    if args.plaintext {
        cfg = cfg.plaintext();
    } else {
        let id = cfg.identity()?;
        println!("certificate sha256 {}", id.fingerprint_hex());
    }
    let rpc = match &args.criu {
        Some(b) => criu_rpc::Criu::with_binary(b),
        None => criu_rpc::Criu::new(),
    }
    .quiet(true);
    rpc.ensure_version(&criu_rpc::Version::MINIMUM)
        .await
        .context("checking CRIU")?;
    let listener = Listener::bind(&args.listen)
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!("listening on {}", listener.local_addr()?);
    let shutdown = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    };
    Service::new(
        Criu::new(rpc).log_level(args.criu_log_level),
        cfg,
        &args.work_dir,
    )
    .keep_images(args.keep_images)
    .htype_paths(phaul_htypes::registry::Paths {
        lxcpath: args.lxcpath.clone(),
        runc_root: args.runc_root.clone(),
        runc_bundles: args.runc_bundles.clone(),
        ..Default::default()
    })
    .serve(listener, shutdown)
    .await?;
    Ok(())
}
