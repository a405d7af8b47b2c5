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
//! prints CRIU's raw values (times in microseconds) for scripts.
#![allow(clippy::print_stdout)]

use std::fmt::Display;
use std::io::ErrorKind;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Parser;
use criu_rpc::Error;
use criu_rpc::image::{
    INVENTORY_FILE, PagemapTotals, STATS_DUMP_FILE, STATS_RESTORE_FILE, read_dump_stats,
    read_inventory, read_pagemaps, read_restore_stats,
};
use criu_rpc::proto::{DumpStatsEntry, InventoryEntry, Lsmtype, RestoreStatsEntry};
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

/// One image, read or not.
enum Found<T> {
    Present(T),
    Absent,
    Broken(anyhow::Error),
}

impl<T> Found<T> {
    fn from_result(r: criu_rpc::Result<T>) -> Self {
        match r {
            Ok(v) => Self::Present(v),
            Err(Error::ImageIo { source, .. }) if source.kind() == ErrorKind::NotFound => {
                Self::Absent
            }
            Err(e) => Self::Broken(e.into()),
        }
    }

    fn is_broken(&self) -> bool {
        matches!(self, Self::Broken(_))
    }

    /// `null` when absent, `{"error": ...}` when unreadable.
    fn to_json(&self, present: impl FnOnce(&T) -> Value) -> Value {
        match self {
            Self::Present(v) => present(v),
            Self::Absent => Value::Null,
            Self::Broken(e) => json!({ "error": format!("{e:#}") }),
        }
    }

    /// Prints the heading and either the body or why there is none.
    fn print(&self, file: &str, body: impl FnOnce(&T)) {
        match self {
            Self::Present(v) => {
                println!("{file}:");
                body(v);
            }
            Self::Absent => println!("{file}: absent"),
            Self::Broken(e) => println!("{file}: unreadable: {e:#}"),
        }
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let meta = std::fs::metadata(&args.dir)
        .with_context(|| format!("cannot open images directory {}", args.dir.display()))?;
    if !meta.is_dir() {
        bail!("{} is not a directory", args.dir.display());
    }

    let dump = Found::from_result(read_dump_stats(&args.dir));
    let restore = Found::from_result(read_restore_stats(&args.dir));
    let inventory = Found::from_result(read_inventory(&args.dir));
    let pagemaps = match read_pagemaps(&args.dir) {
        Ok(t) if t.images == 0 => Found::Absent,
        r => Found::from_result(r),
    };
    let page_size = args.page_size;

    if args.json {
        let out = json!({
            "dir": args.dir.display().to_string(),
            "page_size": page_size,
            "dump": dump.to_json(dump_json),
            "restore": restore.to_json(restore_json),
            "inventory": inventory.to_json(inventory_json),
            "pagemaps": pagemaps.to_json(|t| json!({
                "images": t.images,
                "pages": t.pages,
                "present": t.present,
                "lazy": t.lazy,
                "in_parent": t.in_parent,
            })),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("images in {}", args.dir.display());
        dump.print(STATS_DUMP_FILE, |d| print_dump(d, page_size));
        restore.print(STATS_RESTORE_FILE, |r| print_restore(r, page_size));
        inventory.print(INVENTORY_FILE, print_inventory);
        pagemaps.print("pagemap-*.img", |t| print_pagemaps(t, page_size));
    }

    let broken = [
        dump.is_broken(),
        restore.is_broken(),
        inventory.is_broken(),
        pagemaps.is_broken(),
    ]
    .into_iter()
    .filter(|&b| b)
    .count();
    if broken > 0 {
        bail!(
            "{broken} image(s) in {} could not be read",
            args.dir.display()
        );
    }
    Ok(())
}

fn row(label: &str, value: impl Display) {
    println!("  {label:<26}{value}");
}

/// CRIU's times are microseconds.
fn ms(us: u32) -> String {
    format!("{:.3} ms", f64::from(us) / 1000.0)
}

fn pages(n: u64, page_size: u64) -> String {
    let mib = n as f64 * page_size as f64 / f64::from(1u32 << 20);
    format!("{n} ({mib:.3} MiB)")
}

fn print_dump(d: &DumpStatsEntry, page_size: u64) {
    row("freezing time", ms(d.freezing_time));
    row("frozen time", ms(d.frozen_time));
    row("memory dump time", ms(d.memdump_time));
    row("memory write time", ms(d.memwrite_time));
    if let Some(t) = d.irmap_resolve {
        row("irmap resolve time", ms(t));
    }
    row("pages scanned", pages(d.pages_scanned, page_size));
    row(
        "pages skipped (in parent)",
        pages(d.pages_skipped_parent, page_size),
    );
    row("pages written", pages(d.pages_written, page_size));
    row("pages lazy", pages(d.pages_lazy, page_size));
    if let Some(n) = d.page_pipes {
        row("page pipes", n);
    }
    if let Some(n) = d.page_pipe_bufs {
        row("page pipe buffers", n);
    }
    if let Some(n) = d.shpages_scanned {
        row("shared pages scanned", pages(n, page_size));
    }
    if let Some(n) = d.shpages_skipped_parent {
        row("shared pages skipped", pages(n, page_size));
    }
    if let Some(n) = d.shpages_written {
        row("shared pages written", pages(n, page_size));
    }
}

fn print_pagemaps(t: &PagemapTotals, page_size: u64) {
    row("task pagemaps", t.images);
    row("pages named", pages(t.pages, page_size));
    row("pages in this dump", pages(t.present, page_size));
    row("pages left lazy", pages(t.lazy, page_size));
    row("pages in the parent", pages(t.in_parent, page_size));
}

fn print_restore(r: &RestoreStatsEntry, page_size: u64) {
    row("forking time", ms(r.forking_time));
    row("restore time", ms(r.restore_time));
    row("pages compared", pages(r.pages_compared, page_size));
    row("pages skipped (COW)", pages(r.pages_skipped_cow, page_size));
    if let Some(n) = r.pages_restored {
        row("pages restored", pages(n, page_size));
    }
}

fn print_inventory(inv: &InventoryEntry) {
    row("image version", inv.img_version);
    if let Some(id) = &inv.dump_criu_run_id {
        row("CRIU run id", id);
    }
    if let Some(us) = inv.dump_uptime {
        // Microseconds since the dumping host booted.
        row(
            "dumped at uptime",
            format!("{:.3} s", us as f64 / 1_000_000.0),
        );
    }
    if let Some(lsm) = inv.lsmtype {
        row("LSM", lsm_name(lsm));
    }
    if let Some(mode) = inv.pre_dump_mode {
        row("pre-dump mode", pre_dump_mode_name(mode));
    }
    if let Some(method) = inv.network_lock_method {
        row("network lock", network_lock_name(method));
    }
    if let Some(v) = inv.fdinfo_per_id {
        row("fdinfo per id", v);
    }
    if let Some(v) = inv.ns_per_id {
        row("namespaces per id", v);
    }
    if let Some(v) = inv.root_cg_set {
        row("root cgroup set", v);
    }
    if let Some(v) = inv.tcp_close {
        row("TCP close", v);
    }
}

fn lsm_name(v: i32) -> String {
    match Lsmtype::try_from(v) {
        Ok(lsm) => lsm.as_str_name().to_owned(),
        Err(_) => format!("unknown ({v})"),
    }
}

fn pre_dump_mode_name(v: u32) -> String {
    match v {
        1 => "splice".to_owned(),
        2 => "vm_read".to_owned(),
        _ => format!("unknown ({v})"),
    }
}

/// The inventory uses CRIU's internal numbering, not the RPC enum's.
fn network_lock_name(v: u32) -> String {
    match v {
        0 => "iptables".to_owned(),
        1 => "nftables".to_owned(),
        2 => "skip".to_owned(),
        _ => format!("unknown ({v})"),
    }
}

fn dump_json(d: &DumpStatsEntry) -> Value {
    json!({
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
    })
}

fn restore_json(r: &RestoreStatsEntry) -> Value {
    json!({
        "forking_time_us": r.forking_time,
        "restore_time_us": r.restore_time,
        "pages_compared": r.pages_compared,
        "pages_skipped_cow": r.pages_skipped_cow,
        "pages_restored": r.pages_restored,
    })
}

fn inventory_json(inv: &InventoryEntry) -> Value {
    json!({
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
    })
}
