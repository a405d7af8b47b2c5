//! Shows what CRIU left in an images directory: the dump statistics
//! (`stats-dump`, written after a dump or pre-dump), the restore statistics
//! (`stats-restore`), the inventory (`inventory.img`) and the sum of the
//! tasks' pagemaps (`pagemap-<id>.img`: pages written, left lazy, in the
//! parent — CRIU's stats count none after a lazy dump). Each that exists is
//! printed and each that does not is reported as absent; a file that exists
//! but cannot be read is reported and makes the exit status non-zero.
//!
//! ```text
//! cargo run --example criu-stats -- DIR [--json] [--page-size BYTES]
//! ```
//!
//! Times are shown in milliseconds and page counts also in MiB; `--json`
//! prints CRIU's raw values (times in microseconds) for scripts. Reading
//! and the text are [`criu_rpc::summary::Summary`]'s.
#![allow(clippy::print_stdout)]

use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use criu_rpc::summary::{Found, Summary, lsm_name, network_lock_name, pre_dump_mode_name};
use serde_json::{Value, json};

/// Show the statistics and inventory CRIU wrote into an images directory.
#[derive(Parser)]
struct Args {
    /// The images directory CRIU dumped into or restored from.
    dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
    /// Page size of the host that dumped, for the MiB figures.
    #[arg(long, default_value_t = 4096)]
    page_size: u64,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("cannot open images directory {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }
    let s = Summary::read(&args.dir);
    if args.json {
        println!("{}", serde_json::to_string_pretty(&to_json(&s, &args))?);
    } else {
        println!("images in {}", args.dir.display());
        print!("{}", s.text(args.page_size));
    }
    match s.unreadable() {
        0 => Ok(()),
        n => bail!("{n} image(s) in {} could not be read", args.dir.display()),
    }
}

/// `null` when absent, `{"error": ...}` when unreadable.
fn found<T>(f: &Found<T>, present: impl FnOnce(&T) -> Value) -> Value {
    match f {
        Found::Present(v) => present(v),
        Found::Absent => Value::Null,
        Found::Unreadable(_) => json!({ "error": f.reason() }),
    }
}

/// CRIU's raw values: times in microseconds, pages as counts.
fn to_json(s: &Summary, args: &Args) -> Value {
    json!({
        "dir": args.dir.display().to_string(),
        "page_size": args.page_size,
        "dump": found(&s.dump, |d| json!({
            "freezing_time_us": d.freezing_time,
            "frozen_time_us": d.frozen_time,
            "memdump_time_us": d.memdump_time,
            "memwrite_time_us": d.memwrite_time,
            "irmap_resolve_us": d.irmap_resolve,
            "pages_scanned": d.pages_scanned,
            "pages_skipped_parent": d.pages_skipped_parent,
            "pages_written": d.pages_written,
            "pages_lazy": d.pages_lazy,
            "page_pipes": d.page_pipes,
            "page_pipe_bufs": d.page_pipe_bufs,
            "shpages_scanned": d.shpages_scanned,
            "shpages_skipped_parent": d.shpages_skipped_parent,
            "shpages_written": d.shpages_written,
        })),
        "restore": found(&s.restore, |r| json!({
            "forking_time_us": r.forking_time,
            "restore_time_us": r.restore_time,
            "pages_compared": r.pages_compared,
            "pages_skipped_cow": r.pages_skipped_cow,
            "pages_restored": r.pages_restored,
        })),
        "inventory": found(&s.inventory, |inv| json!({
            "img_version": inv.img_version,
            "dump_criu_run_id": inv.dump_criu_run_id,
            "dump_uptime_us": inv.dump_uptime,
            "lsmtype": inv.lsmtype.map(lsm_name),
            "pre_dump_mode": inv.pre_dump_mode.map(pre_dump_mode_name),
            "network_lock_method": inv.network_lock_method.map(network_lock_name),
            "fdinfo_per_id": inv.fdinfo_per_id,
            "ns_per_id": inv.ns_per_id,
            "root_cg_set": inv.root_cg_set,
            "tcp_close": inv.tcp_close,
        })),
        "pagemaps": found(&s.pagemaps, |t| json!({
            "images": t.images,
            "pages": t.pages,
            "present": t.present,
            "lazy": t.lazy,
            "in_parent": t.in_parent,
        })),
    })
}
