//! criu-rpc on its own (the migration demo is `scripts/demo.sh`): a real
//! process is checkpointed and restored through `criu-rpc`, with the dumped tree held
//! frozen at `post-dump` the way a live migration holds its source until the
//! target has restored, and its state checked afterwards.
//!
//! ```text
//! sudo ./scripts/setup.sh && sudo cargo run --release --example criu-rpc-demo
//! cargo run --release --example criu-rpc-demo -- --mib 512     # a bigger workload
//! ```
//!
//! The workload is a python process that fills memory with a known pattern
//! and counts; it runs as PID 1 of its own PID namespace so it can be restored
//! on the same host while its old PID is still in use.
#![allow(clippy::print_stdout)]

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use criu_rpc::image::{read_dump_stats, read_restore_stats};
use criu_rpc::{Criu, Event, Opts, Script, Version};
use phaul_testkit::{Workload, alive, process_state};

#[derive(Parser)]
#[command(about = "Checkpoint and restore a real workload through criu-rpc")]
struct Args {
    /// MiB of memory the workload holds.
    #[arg(long, default_value_t = 256)]
    mib: u32,
    /// How long to hold the dumped tree frozen at post-dump, in ms.
    #[arg(long, default_value_t = 1000)]
    hold_ms: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if !nix::unistd::Uid::effective().is_root() {
        bail!("the demo checkpoints and restores a process with CRIU: run it as root");
    }
    let criu = Criu::new().quiet(true);
    let version = criu.ensure_version(&Version::MINIMUM).await?;
    let features = criu.connect().await?.feature_check().await?;
    println!(
        "CRIU {version}: memory tracking (pre-copy) {}, lazy pages (post-copy) {}",
        if features.mem_track { "yes" } else { "no" },
        if features.lazy_pages { "yes" } else { "no" }
    );

    println!("starting a workload holding {} MiB ...", args.mib);
    let mut w = Workload::start(args.mib).context("starting the workload")?;
    let c0 = w
        .counter_passes(2, Duration::from_secs(10))
        .context("workload does not count")?;
    println!(
        "  pid {} (PID 1 of its own PID namespace), counter at {c0}",
        w.pid
    );

    let dir = tempfile::Builder::new().prefix("phaul-demo-").tempdir()?;
    println!(
        "dumping into {} with post-dump held for {} ms ...",
        dir.path().display(),
        args.hold_ms
    );
    let t0 = Instant::now();
    let mut dump = criu
        .connect()
        .await?
        .dump(
            Opts::new()
                .images_dir(dir.path())
                .pid(w.pid)
                .notify_scripts(true)
                .log_file("dump.log"),
        )
        .await?;
    let mut frozen_at = 0;
    loop {
        match dump.next().await? {
            Event::Notify(n) if *n.script() == Script::PostDump => {
                frozen_at = w.counter().unwrap_or(0);
                println!(
                    "  post-dump after {:.0} ms: images written, process state '{}', counter {frozen_at}",
                    t0.elapsed().as_secs_f64() * 1e3,
                    process_state(w.pid).unwrap_or('?')
                );
                tokio::time::sleep(Duration::from_millis(args.hold_ms)).await;
                println!(
                    "  still held: counter {} (frozen), state '{}'; answering success",
                    w.counter().unwrap_or(0),
                    process_state(w.pid).unwrap_or('?')
                );
                n.ack().await?;
            }
            Event::Notify(n) => {
                println!("  notification {}", n.script());
                n.ack().await?;
            }
            Event::Done(_) => break,
        }
    }
    let st = read_dump_stats(dir.path())?;
    println!(
        "  dumped: {} pages written, frozen {:.1} ms (incl. the hold), memdump {:.1} ms, memwrite {:.1} ms; source alive: {}",
        st.pages_written,
        f64::from(st.frozen_time) / 1e3,
        f64::from(st.memdump_time) / 1e3,
        f64::from(st.memwrite_time) / 1e3,
        alive(w.pid)
    );

    println!("restoring ...");
    let t1 = Instant::now();
    let restored = criu
        .connect()
        .await?
        .restore(Opts::new().images_dir(dir.path()).log_file("restore.log"))
        .await?
        .finish()
        .await?;
    w.adopt(restored.pid);
    let rs = read_restore_stats(dir.path())?;
    println!(
        "  restored as pid {} in {:.1} ms (CRIU: restore {:.1} ms)",
        restored.pid,
        t1.elapsed().as_secs_f64() * 1e3,
        f64::from(rs.restore_time) / 1e3
    );
    let c1 = w
        .counter_passes(frozen_at, Duration::from_secs(10))
        .context("restored workload does not count")?;
    let intact = w.memory_intact(restored.pid) == Some(true);
    println!("  counter continues: {frozen_at} -> {c1}; memory checksum intact: {intact}");
    if !intact {
        bail!("the restored workload's memory differs");
    }
    println!("demo OK (the restored workload is stopped on exit)");
    Ok(())
}
