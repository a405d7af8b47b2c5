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
//! report in every case. The arguments and the display are
//! [`phaul_cli::MigrateArgs`] and [`phaul_cli::ProgressDisplay`].
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phaul_cli::{MigrateArgs, ProgressDisplay};
use phaul_core::Report;

#[derive(Parser)]
#[command(about = "Live-migrate processes and containers with CRIU")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Migrate something to another host.
    Migrate(MigrateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    // rsync runs this same binary as its remote shell (--fs rsync).
    phaul_fs::rsync::run_as_rsh_if_called();
    phaul_cli::init_tracing("warn");
    let Cmd::Migrate(m) = Cli::parse().cmd;
    let report = match migrate(&m).await {
        Ok(r) => r,
        Err(e) => {
            let why = phaul_transport::error_chain(&e);
            eprintln!("phaul: {why}");
            if let Some(p) = &m.json {
                write_json(p, &m.refusal(why));
            }
            return ExitCode::from(2);
        }
    };
    // Past this point the migration ran: its outcome decides the exit
    // status, never a failure to report it.
    let Some(report) = report else {
        return ExitCode::FAILURE;
    };
    println!("{report}");
    if let Some(p) = &m.json {
        write_json(p, &report);
    }
    if report.success {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs the migration, cancelled at ctrl-c; `None` if its task died.
async fn migrate(m: &MigrateArgs) -> phaul_cli::Result<Option<Report>> {
    let mig = m.migration()?;
    let (display, tx) = ProgressDisplay::start(m.events.as_deref())?;
    let mig = mig.progress(tx);
    let cancel = mig.cancel_handle();
    let mut run = tokio::spawn(mig.run());
    let joined = tokio::select! {
        r = &mut run => r,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelling: the source is resumed unless the target already runs it");
            cancel.cancel();
            run.await
        }
    };
    display.finish().await;
    Ok(joined
        .inspect_err(|e| eprintln!("phaul: the migration task failed: {e}"))
        .ok())
}

/// Writes the report for `--json`; a failure is said, not fatal.
fn write_json(p: &std::path::Path, r: &Report) {
    if let Err(e) = std::fs::write(p, r.to_json()) {
        eprintln!("phaul: writing {}: {e}", p.display());
    }
}
