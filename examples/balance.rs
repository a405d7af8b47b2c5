//! `balance`: a controller on the library, not the CLI. It asks two hosts'
//! phaul-services what they run, counts the candidate trees on each, and
//! when one host holds at least two more than the other (a difference of
//! one cannot be made smaller by one move) orders the largest candidate
//! tree of the fuller host moved to the other; then it follows the move.
//!
//! ```text
//! cargo run --example balance -- --key-file KEY [--candidate-comm NAME]... \
//!     [--candidate-pid PID]... [--dry-run] HOST_A:PORT HOST_B:PORT
//! ```
//! A candidate is the root of a tree whose command name (`comm`) or PID the
//! user gave; nothing else is ever moved, nor PID 1 or a container's init.
//! "Largest" is the most processes in the tree: a remote listing carries no
//! memory. Each service is reached at the address given, by this program
//! and by the other service alike. Exit status: 0 when balanced or moved;
//! 1 when the move failed (`Diverged` is said so on stderr).
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::process::ExitCode;

use clap::Parser;
use phaul::{LinkConfig, Order, Outcome, ProcessList, SharedKey};

#[derive(Parser)]
struct Args {
    /// The cluster's shared key.
    #[arg(long)]
    key_file: std::path::PathBuf,
    /// A command name whose trees may be moved (repeatable).
    #[arg(long)]
    candidate_comm: Vec<String>,
    /// A PID whose tree may be moved (repeatable).
    #[arg(long)]
    candidate_pid: Vec<i32>,
    /// Say what would be moved, and move nothing.
    #[arg(long)]
    dry_run: bool,
    /// The two hosts' phaul-services.
    hosts: Vec<String>,
}

/// The roots of the candidate trees on one host, with their sizes, largest
/// first: a candidate under another candidate moves with it, so it is no
/// root of its own.
fn candidates(host: &ProcessList, args: &Args) -> Vec<(i32, usize)> {
    let named = |pid: i32| {
        host.processes.iter().any(|p| {
            p.pid == pid
                && p.pid != 1
                && p.container.is_empty()
                && (args.candidate_pid.contains(&p.pid) || args.candidate_comm.contains(&p.name))
        })
    };
    let mut roots: Vec<(i32, usize)> = host
        .processes
        .iter()
        .filter(|p| named(p.pid) && !named(p.ppid))
        .map(|p| (p.pid, phaul::tree_size(host, p.pid)))
        .collect();
    roots.sort_by_key(|&(pid, size)| (std::cmp::Reverse(size), pid));
    roots
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let args = Args::parse();
    let [a, b] = args.hosts.as_slice() else {
        anyhow::bail!("name two hosts' services: HOST_A:PORT HOST_B:PORT");
    };
    anyhow::ensure!(
        !args.candidate_comm.is_empty() || !args.candidate_pid.is_empty(),
        "name the candidates (--candidate-comm or --candidate-pid): nothing else is moved"
    );
    let link = LinkConfig::new(SharedKey::from_file(&args.key_file)?);
    let (list_a, list_b) = tokio::join!(
        phaul::list_processes(a, &link),
        phaul::list_processes(b, &link)
    );
    let (on_a, on_b) = (candidates(&list_a?, &args), candidates(&list_b?, &args));
    println!("{a}: {} candidate trees {on_a:?}", on_a.len());
    println!("{b}: {} candidate trees {on_b:?}", on_b.len());
    let (from, to, trees) = match on_a.len().abs_diff(on_b.len()) {
        0 | 1 => {
            println!("balanced: nothing to move");
            return Ok(ExitCode::SUCCESS);
        }
        _ if on_a.len() > on_b.len() => (a, b, on_a),
        _ => (b, a, on_b),
    };
    let (pid, size) = trees[0];
    println!("moving PID {pid} ({size} processes) from {from} to {to}");
    if args.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    let order = Order::new(to.as_str(), "pid", pid.to_string()).with_id(format!("balance-{pid}"));
    let mut run = order.send(from, &link).await?;
    while let Some(event) = run.next_event().await {
        println!("{}", serde_json::to_string(&event)?);
    }
    match run.finish().await {
        Ok(report) => {
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(f) => {
            println!("{}", serde_json::to_string(&f.report)?);
            match f.outcome {
                Outcome::Diverged => eprintln!("diverged, look at both hosts: {f}"),
                _ => eprintln!("not moved, PID {pid} runs on {from}: {f}"),
            }
            Ok(ExitCode::FAILURE)
        }
    }
}
