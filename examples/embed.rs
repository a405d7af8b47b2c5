//! `embed`: what an orchestrator written in Rust does with phaul, through
//! the facade only: move one process tree to a host running
//! `phaul-service`, print its events and its report as JSON lines, cancel
//! at Ctrl-C, and tell the three ways it can fail apart.
//!
//! ```text
//! cargo run --example embed -- 10.0.0.2:7070 /etc/phaul/key 4242 [JOB-ID]
//! ```
//! Exit status: 0 when the tree runs on the target; 2 when it was refused
//! before anything started; 1 when it failed and rolled back (the source
//! runs it); 3 when it failed at or after the commit (look at both hosts).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use anyhow::Context;
use phaul::{Failure, LinkConfig, Migration, Outcome, Pid, SharedKey};

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [target, key, pid, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: embed TARGET KEY_FILE PID [JOB-ID]");
    };
    let link = LinkConfig::new(SharedKey::from_file(key)?);
    let tree = match pid
        .parse()
        .map_err(anyhow::Error::from)
        .and_then(|p| Ok(Pid::new(p)?))
    {
        Ok(t) => t,
        Err(e) => {
            eprintln!("refused: {e:#}");
            return Ok(ExitCode::from(2));
        }
    };
    let mut migration = Migration::to(target.as_str(), link, Box::new(tree));
    if let Some(job) = rest.first() {
        migration = migration.with_id(job)?;
    }
    let mut run = migration.start();
    loop {
        tokio::select! {
            event = run.next_event() => match event {
                Some(e) => println!("{}", serde_json::to_string(&e)?),
                None => break,
            },
            _ = tokio::signal::ctrl_c() => run.cancel(),
        }
    }
    let (code, report) = match run.await {
        Ok(report) => (0, report),
        Err(Failure {
            outcome,
            error,
            report,
        }) => {
            eprintln!("{outcome:?}: {}", phaul::transport::error_chain(&error));
            let code = match outcome {
                Outcome::NotStarted => 2,
                Outcome::RolledBack => 1,
                Outcome::Diverged | Outcome::Succeeded => 3,
            };
            (code, *report)
        }
    };
    println!("{}", serde_json::to_string(&report).context("the report")?);
    Ok(ExitCode::from(code))
}
