//! `phaul`: migrate a live process tree to a host running `phaul-service`.
//!
//! ```text
//! cargo run --example phaul -- migrate --to 10.200.0.2:7070 --key-file key \
//!     --mode auto --json report.json pid 4242
//! cargo run --example phaul -- migrate --from 10.200.0.1:7070 --to 10.200.0.2:7070 \
//!     --key-file key pid 4242     # from a third host: the source's service migrates
//! cargo run --example phaul -- migrate --to 10.200.0.2:7070 --key-file key \
//!     pid 4242 lxc web1           # a group: both move, or neither does
//! ```
//! Modes: auto, stop-copy, post-copy, pre-copy, hybrid, restart. Exit
//! status, from the migration's [`Outcome`]: 0 only when the tree runs on
//! the target; 2 when it was refused before anything started (a bad PID, an
//! unreadable key, a pre-flight check, no service there); 1 when it failed
//! and rolled back (the source runs it again); 3 when it failed at or after
//! the commit (look at both hosts). `--json` writes the report in every
//! case (a group's report with one entry per member for a group). The arguments and the display are [`phaul_cli::MigrateArgs`] and
//! [`phaul_cli::ProgressDisplay`]; the migration is the facade's
//! [`phaul::Migration`], started in the background as an embedder would.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use phaul::{Failure, GroupFailure, GroupReport, Outcome, Report};
use phaul_cli::{MigrateArgs, ProgressDisplay};

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
    if m.is_group() {
        let end = group(&m).await.map(|end| match end {
            Ok(report) => (0, report),
            Err(f) => (exit_status(f.outcome), *f.report),
        });
        return finish(
            &m,
            end,
            |why| m.group_refusal(why).to_json(),
            GroupReport::to_json,
        );
    }
    let started = match &m.from {
        Some(from) => control(&m, from).await,
        None => migrate(&m).await,
    };
    let end = started.map(|end| match end {
        Ok(report) => (0, report),
        Err(f) => (exit_status(f.outcome), *f.report),
    });
    finish(&m, end, |why| m.refusal(why).to_json(), Report::to_json)
}

/// Prints the report and writes `--json`: the refusal's (exit 2) when
/// nothing started, else the run's, with the status its outcome gave.
fn finish<R: std::fmt::Display>(
    m: &MigrateArgs,
    end: phaul_cli::Result<(u8, R)>,
    refusal: impl FnOnce(String) -> String,
    json: fn(&R) -> String,
) -> ExitCode {
    let (status, report) = match end {
        Ok(x) => x,
        Err(e) => {
            let why = phaul::transport::error_chain(&e);
            eprintln!("phaul: {why}");
            if let Some(p) = &m.json {
                write_json(p, &refusal(why));
            }
            return ExitCode::from(2);
        }
    };
    // Past this point the migration ran: its outcome decides the exit
    // status, never a failure to report it.
    println!("{report}");
    if let Some(p) = &m.json {
        write_json(p, &json(&report));
    }
    ExitCode::from(status)
}

fn exit_status(o: Outcome) -> u8 {
    match o {
        Outcome::NotStarted => 2,
        Outcome::RolledBack => 1,
        Outcome::Diverged | Outcome::Succeeded => 3,
    }
}

/// Several KIND ID pairs: one group, all or none, cancelled at ctrl-c.
async fn group(m: &MigrateArgs) -> phaul_cli::Result<Result<GroupReport, GroupFailure>> {
    let group = m.group()?;
    let (display, tx) = ProgressDisplay::start_group(m.events.as_deref())?;
    let mut run = group.start();
    let cancel = run.cancel_handle();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: every source is resumed unless the targets already run them");
            cancel.cancel();
        }
    });
    while let Some(event) = run.next_event().await {
        let _ = tx.send(event);
    }
    drop(tx);
    let end = run.await;
    ctrl_c.abort();
    display.finish().await;
    Ok(end)
}

/// Runs the migration to its typed end, cancelled at ctrl-c.
async fn migrate(m: &MigrateArgs) -> phaul_cli::Result<Result<Report, Failure>> {
    let mig = m.migration()?;
    let (display, tx) = ProgressDisplay::start(m.events.as_deref())?;
    let mut run = mig.progress(tx).start();
    // The display reads the events; this end only waits for the outcome.
    let end = tokio::select! {
        end = &mut run => end,
        _ = tokio::signal::ctrl_c() => {
            eprintln!("cancelling: the source is resumed unless the target already runs it");
            run.cancel();
            run.await
        }
    };
    display.finish().await;
    Ok(end)
}

/// `--from`: orders the source's service to migrate, and follows it from
/// here; ctrl-c cancels it there. A refused order is an `Err`: nothing
/// started.
async fn control(m: &MigrateArgs, from: &str) -> phaul_cli::Result<Result<Report, Failure>> {
    let (order, link) = m.order()?;
    // The display first: once the order is accepted, nothing here may fail
    // (dropping the run would cancel a migration that had started).
    let (display, tx) = ProgressDisplay::start(m.events.as_deref())?;
    let mut run = match order.send(from, &link).await {
        Ok(run) => run,
        Err(e) => {
            drop(tx);
            display.finish().await;
            return Err(phaul_cli::Error::Order(e));
        }
    };
    let cancel = run.cancel_handle();
    let ctrl_c = tokio::spawn(async move {
        if tokio::signal::ctrl_c().await.is_ok() {
            eprintln!("cancelling: the source is resumed unless the target already runs it");
            cancel.cancel();
        }
    });
    while let Some(event) = run.next_event().await {
        let _ = tx.send(event.progress);
    }
    drop(tx);
    let end = run.finish().await;
    ctrl_c.abort();
    display.finish().await;
    Ok(end)
}

/// Writes the report for `--json`; a failure is said, not fatal.
fn write_json(p: &std::path::Path, json: &str) {
    if let Err(e) = std::fs::write(p, json) {
        eprintln!("phaul: writing {}: {e}", p.display());
    }
}
