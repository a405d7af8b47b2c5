//! Shows which CRIU this machine has and what it can do: its version, the
//! result of CRIU's own `CHECK`, and the features a migration mode depends on
//! (memory tracking for pre-copy, lazy pages for post-copy).
//!
//! ```text
//! cargo run --example criu-check                 # human-readable
//! cargo run --example criu-check -- --json       # one JSON object
//! cargo run --example criu-check -- --criu /usr/local/sbin/criu
//! cargo run --example criu-check -- --service /var/run/criu_service.socket
//! ```
//! Exits 1 when CRIU cannot be reached or is older than 4.0.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use criu_rpc::{Criu, Version};

#[derive(Parser)]
#[command(about = "Report CRIU's version and features through its RPC")]
struct Args {
    /// The criu binary to spawn as `criu swrk` (default: criu on PATH).
    #[arg(long, conflicts_with = "service")]
    criu: Option<PathBuf>,
    /// Talk to a running `criu service` at this socket instead.
    #[arg(long)]
    service: Option<PathBuf>,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let criu = match (&args.service, &args.criu) {
        (Some(sock), _) => Criu::service(sock),
        (None, Some(bin)) => Criu::with_binary(bin),
        (None, None) => Criu::new(),
    }
    .quiet(true);

    let version = criu
        .ensure_version(&Version::MINIMUM)
        .await
        .context("asking CRIU's version")?;
    let features = criu
        .connect()
        .await?
        .feature_check()
        .await
        .context("CRIU's feature check")?;
    let check = criu.connect().await?.check().await;

    if args.json {
        let v = serde_json::json!({
            "binary": criu.binary().map(|b| b.display().to_string()),
            "version": version.to_string(),
            "check_ok": check.is_ok(),
            "check_error": check.as_ref().err().map(ToString::to_string),
            "features": {
                "mem_track": features.mem_track,
                "lazy_pages": features.lazy_pages,
                "pidfd_store": features.pidfd_store,
            },
            "modes": {
                "stop-copy": true,
                "pre-copy": features.mem_track,
                "post-copy": features.lazy_pages,
            },
        });
        println!("{}", serde_json::to_string_pretty(&v)?);
    } else {
        let yes = |b: bool| if b { "yes" } else { "no" };
        if let Some(b) = criu.binary() {
            println!("binary        {}", b.display());
        }
        println!("version       {version}");
        match &check {
            Ok(()) => println!("check         looks good"),
            Err(e) => println!("check         FAILED: {e}"),
        }
        println!(
            "mem_track     {}   (soft-dirty: iterative pre-copy)",
            yes(features.mem_track)
        );
        println!(
            "lazy_pages    {}   (userfaultfd: post-copy)",
            yes(features.lazy_pages)
        );
        println!(
            "pidfd_store   {}   (PID reuse detection between pre-dumps)",
            yes(features.pidfd_store)
        );
    }
    if let Err(e) = check {
        return Err(e).context("CRIU's CHECK failed");
    }
    Ok(())
}
