//! Real migrations with real CRIU between two "hosts" (network namespaces
//! joined by a veth pair): the source engine runs on a thread inside one,
//! the target service on a thread inside the other. Each test checks the
//! workload's state afterwards (its memory checksum and its counter) and
//! that nothing is left behind. Needs root and CRIU 4; under `CI` their
//! absence fails the tests (`phaul_testkit::require_criu`).

use std::path::{Path, PathBuf};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use phaul_core::criu::{Criu, HeldRestore, LazyDaemon, PageServing, RestoreSpec, TargetCriu};
use phaul_core::mode::HostCaps;
use phaul_core::{Migration, Mode, Phase, Progress, Report};
use phaul_testkit::{Hosts, Workload, alive, in_netns, require_criu, wait_until};

mod common;
use common::{Setup, Target, cfg, criu, migrate_from};

/// Runs a migration from the source host and returns its report.
fn migrate(
    src_ns: &str,
    bin: &Path,
    to: &str,
    pid: i32,
    mode: Mode,
    tweak: impl FnOnce(Migration<Criu>) -> Migration<Criu> + Send + 'static,
) -> (Report, PathBuf) {
    let open = move || phaul_htypes::registry::source("pid", &pid.to_string()).unwrap();
    let (report, work) = migrate_from(src_ns, bin, to, open, move |m| tweak(m.mode(mode)));
    (report, work.keep())
}

/// The workload now runs as `pid` in the target host, intact, counting on.
fn assert_moved(w: &mut Workload, hosts: &Hosts, r: &Report, dumped_at: u64) -> i32 {
    assert!(r.success, "migration failed: {:?}", r.error);
    let pid = r.target_pid.expect("a target pid");
    w.adopt(pid);
    assert!(alive(pid), "the restored process {pid} is not running");
    assert!(
        Hosts::runs_in(&hosts.tgt, pid),
        "the restored process is not in the target host"
    );
    assert_eq!(
        w.memory_intact(pid),
        Some(true),
        "memory checksum after migration"
    );
    let c = w
        .counter_passes(dumped_at, Duration::from_secs(20))
        .expect("the counter does not continue");
    assert!(c > dumped_at);
    assert!(
        wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some(),
        "the source process is still there"
    );
    pid
}

/// The workload still runs on the source, intact, counting on.
fn assert_stayed(w: &Workload, r: &Report) {
    assert!(!r.success, "the migration was expected to fail");
    assert!(alive(w.pid), "the source process is gone: {:?}", r.error);
    let c = w.counter().unwrap();
    assert!(
        w.counter_passes(c, Duration::from_secs(20)).is_some(),
        "the source is not running (still frozen?)"
    );
    assert_eq!(w.memory_intact(w.pid), Some(true));
}

/// Nothing left but CRIU's logs of a failure: no images, no listening
/// ports in the source host, no process working in either directory.
fn assert_clean(hosts: &Hosts, target_dir: &Path, source_dir: &Path) {
    // The service's lock file is its own, not a migration's; a failed
    // migration keeps CRIU's logs (and the target marks their directory).
    let kept = |n: &str| n.ends_with(".log") || n == ".phaul-failed" || n == ".phaul-service.lock";
    let leftovers = |d: &Path| -> Vec<String> {
        let mut found = Vec::new();
        let mut stack = vec![d.to_path_buf()];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    stack.push(e.path());
                } else if !kept(&name) {
                    found.push(e.path().display().to_string());
                }
            }
        }
        found
    };
    let empty = |d: &Path| leftovers(d).is_empty();
    assert!(
        wait_until(Duration::from_secs(60), || empty(target_dir).then_some(())).is_some(),
        "the target left {:?}",
        leftovers(target_dir)
    );
    assert!(
        empty(source_dir),
        "the source left files in {}",
        source_dir.display()
    );
    assert_eq!(
        Hosts::listening_ports(&hosts.src),
        Vec::<u16>::new(),
        "ports left open in the source host"
    );
    let needle = [
        target_dir.to_string_lossy().into_owned(),
        source_dir.to_string_lossy().into_owned(),
    ];
    let stray: Vec<String> = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| std::fs::read(e.ok()?.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .filter(|c| needle.iter().any(|n| c.contains(n.as_str())))
        .collect();
    assert!(stray.is_empty(), "processes left behind: {stray:?}");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !needle.iter().any(|n| mounts.contains(n.as_str())),
        "mounts left behind"
    );
    let _ = std::fs::remove_dir_all(source_dir);
}

#[test]
fn stop_copy_and_post_copy_move_a_workload_with_its_state() {
    let Some(bin) = require_criu("stop_copy_and_post_copy_move_a_workload_with_its_state") else {
        return;
    };
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, criu(&bin));
        let mut w = Workload::start_in(Some(&hosts.src), 64).unwrap();
        let before = w.counter_passes(3, Duration::from_secs(10)).unwrap();
        let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, mode, |m| m);
        assert_eq!(r.mode, mode.to_string());
        assert_moved(&mut w, &hosts, &r, before);
        assert!(r.downtime_ms.unwrap() > 0.0);
        assert!(
            r.bytes_transferred >= 64 << 20,
            "{mode}: {} bytes",
            r.bytes_transferred
        );
        assert_eq!(r.iterations, 1);
        // The iteration counts the workload's 64 MiB (16384 pages): written
        // during the dump, or left for the lazy page server.
        let it = &r.per_iteration[0];
        let moved = match mode {
            Mode::PostCopy => {
                assert_eq!(it.kind, "lazy-dump");
                it.pages_lazy
            }
            _ => it.pages_written,
        };
        assert!(moved >= 16_384, "{mode}: {it:?}");
        assert!(it.pages_scanned >= moved, "{mode}: {it:?}");
        assert_clean(&hosts, &target.dir(), &src_dir);
    }
}

/// The migration's image directories under `dirs` (two levels down: a
/// run's or session's directory, then an iteration's) that are links into
/// RAM, with where they lead and whether the images were there.
fn links_to_ram(dirs: &[PathBuf]) -> Vec<(PathBuf, PathBuf, bool)> {
    let mut found = Vec::new();
    for d in dirs {
        for run in std::fs::read_dir(d).into_iter().flatten().flatten() {
            for it in std::fs::read_dir(run.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let Ok(to) = std::fs::read_link(it.path()) else {
                    continue;
                };
                if to.starts_with("/dev/shm") {
                    let images = to.join("inventory.img").is_file();
                    found.push((it.path(), to, images));
                }
            }
        }
    }
    found
}

/// A post-copy's images are in RAM on both hosts while it runs (each
/// side's iteration directory links there), and gone from RAM once it has
/// ended; a stop-copy's, which hold the tree's memory, stay on disk.
#[test]
fn a_post_copys_images_are_in_ram_while_it_runs() {
    let Some(bin) = require_criu("a_post_copys_images_are_in_ram_while_it_runs") else {
        return;
    };
    for mode in [Mode::PostCopy, Mode::StopCopy] {
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, criu(&bin));
        let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
        let before = w.counter_passes(2, Duration::from_secs(10)).unwrap();
        let src = tempfile::tempdir().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let dirs = vec![src.path().to_path_buf(), target.dir()];
        let (s, work) = (seen.clone(), src.path().to_path_buf());
        let (r, unused) = migrate(&hosts.src, &bin, &target.addr, w.pid, mode, move |m| {
            // Between the restore and the commit: both sides' images exist.
            m.work_dir(work).switchover(move || {
                s.lock().unwrap().extend(links_to_ram(&dirs));
                std::future::ready(Ok(()))
            })
        });
        let _ = std::fs::remove_dir_all(unused);
        assert_moved(&mut w, &hosts, &r, before);
        let seen = seen.lock().unwrap().clone();
        match mode {
            Mode::PostCopy => {
                assert_eq!(seen.len(), 2, "one link on each side: {seen:?}");
                assert!(seen[0].0.starts_with(src.path()), "{seen:?}");
                assert!(seen[1].0.starts_with(target.dir()), "{seen:?}");
                for (link, ram, images) in &seen {
                    assert!(
                        images,
                        "{} led to {} without images",
                        link.display(),
                        ram.display()
                    );
                }
                let gone = || seen.iter().all(|(_, ram, _)| !ram.exists()).then_some(());
                assert!(
                    wait_until(Duration::from_secs(30), gone).is_some(),
                    "images left in RAM: {seen:?}"
                );
            }
            _ => assert!(seen.is_empty(), "{mode}: {seen:?}"),
        }
        assert_clean(&hosts, &target.dir(), src.path());
    }
}

#[test]
fn auto_chooses_post_copy_here_and_says_why() {
    let Some(bin) = require_criu("auto_chooses_post_copy_here_and_says_why") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let target = Target::start(&hosts, criu(&bin));
    let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, Mode::Auto, |m| m);
    assert_eq!(r.requested_mode, "auto");
    assert_eq!(r.mode, "post-copy", "{}", r.mode_reason);
    assert!(r.mode_reason.contains("lazy pages"), "{}", r.mode_reason);
    assert!(r.mode_reason.contains("soft-dirty"), "{}", r.mode_reason);
    // The engine's own guess agrees with CRIU, so auto starts no probe.
    assert!(!phaul_core::dirty::tracked_here());
    assert_moved(&mut w, &hosts, &r, 0);
    assert_clean(&hosts, &target.dir(), &src_dir);
}

#[test]
fn pre_copy_here_names_the_missing_feature_or_falls_back() {
    let Some(bin) = require_criu("pre_copy_here_names_the_missing_feature_or_falls_back") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let target = Target::start(&hosts, criu(&bin));
    let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, Mode::PreCopy, |m| m);
    let err = r.error.clone().unwrap_or_default();
    assert!(err.contains("soft-dirty"), "{err}");
    assert_stayed(&w, &r);
    assert_clean(&hosts, &target.dir(), &src_dir);
    let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, Mode::PreCopy, |m| {
        m.fallback(true)
    });
    assert_eq!(r.mode, "post-copy");
    assert!(r.mode_reason.contains("falling back"), "{}", r.mode_reason);
    assert_moved(&mut w, &hosts, &r, 0);
    assert_clean(&hosts, &target.dir(), &src_dir);
}

/// Real CRIU on the target, with one fault in its restores.
#[derive(Clone)]
enum Fault {
    /// The restored task's core image is removed first, so CRIU itself
    /// refuses to restore.
    BrokenRestore,
    /// Restores for real, tells the test the PID, then never answers: the
    /// test kills the service while the restored tree is held.
    StallAfterRestore(std::sync::Arc<std::sync::Mutex<Option<std_mpsc::Sender<i32>>>>),
}

#[derive(Clone)]
struct Faulty(Criu, Fault);

impl TargetCriu for Faulty {
    async fn version(&self) -> phaul_core::Result<String> {
        TargetCriu::version(&self.0).await
    }
    async fn features(&self) -> phaul_core::Result<HostCaps> {
        TargetCriu::features(&self.0).await
    }
    async fn cpuinfo_check(&self, c: Vec<u8>, s: &Path) -> phaul_core::Result<()> {
        self.0.cpuinfo_check(c, s).await
    }
    async fn page_server(
        &self,
        d: PathBuf,
        p: Option<String>,
        fd: std::os::fd::OwnedFd,
    ) -> phaul_core::Result<PageServing> {
        self.0.page_server(d, p, fd).await
    }
    async fn lazy_pages(
        &self,
        d: PathBuf,
        pages: std::os::fd::OwnedFd,
    ) -> phaul_core::Result<LazyDaemon> {
        self.0.lazy_pages(d, pages).await
    }
    async fn restore(&self, spec: RestoreSpec) -> phaul_core::Result<HeldRestore> {
        match &self.1 {
            Fault::BrokenRestore => {
                for e in std::fs::read_dir(&spec.images_dir).unwrap().flatten() {
                    if e.file_name().to_string_lossy().starts_with("core-") {
                        std::fs::remove_file(e.path()).unwrap();
                    }
                }
                self.0.restore(spec).await
            }
            Fault::StallAfterRestore(slot) => {
                let held = self.0.restore(spec).await?;
                if let Some(tx) = slot.lock().unwrap().take() {
                    let _ = tx.send(held.pid);
                }
                std::future::pending::<()>().await;
                Ok(held)
            }
        }
    }
}

#[test]
fn a_restore_failing_on_the_target_leaves_the_source_running() {
    let Some(bin) = require_criu("a_restore_failing_on_the_target_leaves_the_source_running")
    else {
        return;
    };
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, Faulty(criu(&bin), Fault::BrokenRestore));
        let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
        w.counter_passes(2, Duration::from_secs(10)).unwrap();
        let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, mode, |m| m);
        assert_stayed(&w, &r);
        assert_eq!(r.phase_reached, Phase::Rollback, "{mode}");
        let e = r.error.as_deref().unwrap();
        assert!(e.contains("CRIU on the target"), "{e}");
        // CRIU's decisive line, not its harmless first one, and where the
        // target kept the whole log; the source kept its own logs too.
        assert!(!e.contains("RLIMIT_NOFILE"), "{e}");
        let log = e
            .split("CRIU log: ")
            .nth(1)
            .and_then(|t| t.split(')').next())
            .unwrap_or_else(|| panic!("no log path in {e}"));
        assert!(
            Path::new(log).is_file(),
            "the target's log {log} was not kept"
        );
        let kept = r.logs.as_deref().expect("the source's logs");
        assert!(Path::new(kept).is_dir(), "{kept}");
        assert_clean(&hosts, &target.dir(), &src_dir);
    }
}

#[test]
fn the_target_service_dying_mid_migration_leaves_the_source_running() {
    let Some(bin) =
        require_criu("the_target_service_dying_mid_migration_leaves_the_source_running")
    else {
        return;
    };
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let hosts = Hosts::new().unwrap();
        let (tx, rx) = std_mpsc::channel();
        let slot = std::sync::Arc::new(std::sync::Mutex::new(Some(tx)));
        let mut target = Target::start(&hosts, Faulty(criu(&bin), Fault::StallAfterRestore(slot)));
        let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
        let (bin2, addr, pid) = (bin.clone(), target.addr.clone(), w.pid);
        let src_ns = hosts.src.clone();
        let (src_tx, src_rx) = std_mpsc::channel();
        let runner = std::thread::spawn(move || {
            src_tx
                .send(migrate(&src_ns, &bin2, &addr, pid, mode, |m| m))
                .unwrap();
        });
        let restored = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the target never restored");
        assert!(alive(restored), "the held restore is not there");
        target.kill();
        let (r, src_dir) = src_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("the source never finished");
        runner.join().unwrap();
        assert_stayed(&w, &r);
        // The target's held copy died with the service's connection to CRIU.
        assert!(
            wait_until(Duration::from_secs(20), || (!alive(restored)).then_some(())).is_some(),
            "{mode}: the target's copy survived"
        );
        // A killed service cannot clean up; the next one on its directory
        // removes what it left.
        let target = target.restart(&hosts, criu(&bin));
        assert_clean(&hosts, &target.dir(), &src_dir);
    }
}

#[test]
fn a_connection_cut_during_the_image_stream_leaves_the_source_running() {
    let Some(bin) =
        require_criu("a_connection_cut_during_the_image_stream_leaves_the_source_running")
    else {
        return;
    };
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let hosts = Hosts::new().unwrap();
        // Connection 1 is the image channel (0 is control); cut it 8 KiB in,
        // which is past its handshake and inside the first batch.
        let target = Target::start_with(
            &hosts,
            criu(&bin),
            Setup {
                cut: Some((1, 8 * 1024)),
                ..Setup::default()
            },
        );
        let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
        let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, mode, |m| m);
        assert_stayed(&w, &r);
        assert_eq!(r.phase_reached, Phase::Rollback, "{mode}: {:?}", r.error);
        assert_clean(&hosts, &target.dir(), &src_dir);
    }
}

#[test]
fn cancelling_during_the_final_phase_leaves_the_source_running() {
    let Some(bin) = require_criu("cancelling_during_the_final_phase_leaves_the_source_running")
    else {
        return;
    };
    for (mode, at) in [
        (Mode::StopCopy, Phase::ImageTransfer),
        (Mode::PostCopy, Phase::Restore),
    ] {
        let hosts = Hosts::new().unwrap();
        let target = Target::start(&hosts, criu(&bin));
        let w = Workload::start_in(Some(&hosts.src), 32).unwrap();
        let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, mode, move |m| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            let cancel = m.cancel_handle();
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if p == Progress::Phase(at) {
                        cancel.cancel();
                    }
                }
            });
            m.progress(tx)
        });
        assert_stayed(&w, &r);
        assert_eq!(r.error.as_deref(), Some("cancelled"), "{mode}");
        assert_clean(&hosts, &target.dir(), &src_dir);
    }
}

/// A post-copy's source tasks hold the pages not yet sent (CRIU's page
/// server reads them there, see scripts/criu-lazy-pages-in-task.patch).
/// Killed during the pull, they fail the migration, which says why, and
/// the target ends its copy, whose memory would otherwise have holes.
#[test]
fn a_source_killed_during_the_pull_fails_it_and_the_target_ends_its_copy() {
    let Some(bin) =
        require_criu("a_source_killed_during_the_pull_fails_it_and_the_target_ends_its_copy")
    else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (ev_tx, mut ev_rx) = tokio::sync::mpsc::unbounded_channel();
    let setup = Setup {
        events: Some(ev_tx),
        ..Setup::default()
    };
    let target = Target::start_with(&hosts, criu(&bin), setup);
    // Large enough that the pull is still running when the kill lands.
    let w = Workload::start_in(Some(&hosts.src), 512).unwrap();
    w.counter_passes(2, Duration::from_secs(10)).unwrap();
    let pid = w.pid;
    let (r, _src_dir) = migrate(
        &hosts.src,
        &bin,
        &target.addr,
        pid,
        Mode::PostCopy,
        move |m| {
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            tokio::spawn(async move {
                while let Some(p) = rx.recv().await {
                    if p == Progress::Phase(Phase::LazyTransfer) {
                        phaul_testkit::kill_tree(pid);
                    }
                }
            });
            m.progress(tx)
        },
    );
    assert!(!r.success, "the pull cannot have finished");
    assert_eq!(r.phase_reached, Phase::LazyTransfer);
    // It failed after the commit: both hosts must be looked at.
    assert_eq!(r.outcome, phaul_core::Outcome::Diverged);
    let e = r.error.as_deref().unwrap();
    assert!(e.contains("the rest of the tree's memory failed"), "{e}");
    // CRIU's own reason: the page server could not read the task.
    assert!(e.contains("from task"), "CRIU's reason is missing: {e}");
    let copy = wait_until(Duration::from_secs(30), || match ev_rx.try_recv() {
        Ok(phaul_core::ServiceEvent::PullFailed { pid, .. }) => Some(pid),
        _ => None,
    })
    .expect("no PullFailed event from the target");
    assert_eq!(Some(copy), r.target_pid);
    assert!(
        wait_until(Duration::from_secs(10), || (!alive(copy)).then_some(())).is_some(),
        "the target's copy {copy} still runs"
    );
    // PID 1 of its namespace: it ends once the namespace's others have.
    assert!(
        wait_until(Duration::from_secs(10), || (!alive(pid)).then_some(())).is_some(),
        "the killed source still runs"
    );
}

#[test]
fn four_migrations_at_once_to_one_service() {
    let Some(bin) = require_criu("four_migrations_at_once_to_one_service") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let target = Target::start(&hosts, criu(&bin));
    let mut ws: Vec<Workload> = (0..4)
        .map(|_| Workload::start_in(Some(&hosts.src), 16).unwrap())
        .collect();
    let runs: Vec<_> = ws
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let (bin, addr, pid, src) =
                (bin.clone(), target.addr.clone(), w.pid, hosts.src.clone());
            let mode = if i % 2 == 0 {
                Mode::PostCopy
            } else {
                Mode::StopCopy
            };
            std::thread::spawn(move || {
                migrate(&src, &bin, &addr, pid, mode, |m| {
                    m.keep_images(std::env::var_os("PHAUL_KEEP").is_some())
                })
            })
        })
        .collect();
    let results: Vec<(Report, PathBuf)> = runs.into_iter().map(|t| t.join().unwrap()).collect();
    let mut pids = Vec::new();
    for (w, (r, _)) in ws.iter_mut().zip(&results) {
        pids.push(assert_moved(w, &hosts, r, 0));
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 4);
    for (_, d) in &results {
        assert_clean(&hosts, &target.dir(), d);
    }
}

/// What the target's service says runs on its host, asked over the link.
fn target_processes(hosts: &Hosts, addr: &str) -> Vec<i32> {
    let addr = addr.to_string();
    in_netns(&hosts.src, move || async move {
        let link = phaul_transport::Link::connect(
            phaul_transport::Endpoint::Tcp(addr),
            &cfg(),
            phaul_transport::Channel::Control,
            None,
        )
        .await
        .unwrap();
        let mut ctl = phaul_transport::ControlClient::new(link);
        match ctl
            .call(phaul_transport::proto::request::Body::ListProcesses(
                Default::default(),
            ))
            .await
            .unwrap()
        {
            phaul_transport::proto::response::Body::ProcessList(l) => {
                l.processes.iter().map(|p| p.pid).collect()
            }
            other => panic!("{other:?}"),
        }
    })
    .join()
    .unwrap()
}

#[test]
fn the_target_lists_the_processes_of_its_own_host() {
    let Some(bin) = require_criu("the_target_lists_the_processes_of_its_own_host") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let target = Target::start(&hosts, criu(&bin));
    let mut w = Workload::start_in(Some(&hosts.src), 8).unwrap();
    assert!(
        !target_processes(&hosts, &target.addr).contains(&w.pid),
        "the source's workload is not on the target host"
    );
    let (r, src_dir) = migrate(&hosts.src, &bin, &target.addr, w.pid, Mode::StopCopy, |m| m);
    let pid = assert_moved(&mut w, &hosts, &r, 0);
    assert!(
        target_processes(&hosts, &target.addr).contains(&pid),
        "the migrated workload is listed on the target host"
    );
    assert_clean(&hosts, &target.dir(), &src_dir);
}

/// A lazy-pages daemon that cannot start (no images to read) is reported
/// with what its log says, and where the log is.
#[test]
fn a_lazy_pages_daemon_that_cannot_start_says_why() {
    let Some(bin) = require_criu("a_lazy_pages_daemon_that_cannot_start_says_why") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let e = rt
        .block_on(criu(&bin).lazy_pages(dir.path().to_path_buf(), theirs.into()))
        .expect_err("no images: the daemon cannot start");
    drop(ours);
    let text = e.to_string();
    assert!(text.contains("before it was ready: "), "no cause: {text}");
    assert!(text.contains("lazy-pages.log"), "no log named: {text}");
}

/// A CRIU in `dir` that runs `bin` and notes the first argument of each
/// run; and what it noted so far.
fn counting_criu(bin: &Path, dir: &Path) -> (PathBuf, impl Fn() -> Vec<String> + use<>) {
    let (runs, wrapper) = (dir.join("runs"), dir.join("criu"));
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\necho \"$1\" >> '{}'\nexec '{}' \"$@\"\n",
            runs.display(),
            bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &wrapper,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let noted = move || {
        std::fs::read_to_string(&runs)
            .map(|s| s.lines().map(str::to_owned).collect())
            .unwrap_or_default()
    };
    (wrapper, noted)
}

/// A service asks its CRIU what it can do as it starts, before any source
/// comes: the first migration's pre-flight finds the answer kept (its
/// nftables probe alone took 0.7 s in the guest).
#[test]
fn a_service_asks_its_criu_before_the_first_migration() {
    let Some(bin) = require_criu("a_service_asks_its_criu_before_the_first_migration") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, runs) = counting_criu(&bin, dir.path());
    let hosts = Hosts::new().unwrap();
    let target = Target::start(&hosts, criu(&wrapper));
    let asked = wait_until(Duration::from_secs(30), || {
        let r = runs();
        (r.iter().any(|a| a == "swrk") && r.iter().any(|a| a == "check")).then_some(r)
    });
    drop(target);
    assert!(
        asked.is_some(),
        "no feature check (RPC) and nftables probe (`criu check`) without a migration: {:?}",
        runs()
    );
}

/// What a host's CRIU says of itself (version, features, CPU; a source CPU
/// it accepts) is asked once and believed by the handle's clones for
/// `checks_valid`: a daemon's second migration runs no CRIU before its
/// freeze for them. A handle told to believe nothing asks every time.
#[tokio::test]
async fn a_handles_clones_ask_criu_about_itself_once_in_a_while() {
    use phaul_core::criu::SourceCriu;
    let Some(bin) = require_criu("a_handles_clones_ask_criu_about_itself_once_in_a_while") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (wrapper, runs) = counting_criu(&bin, dir.path());
    let counted = || runs().len();
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    let ask = |c: Criu| {
        let scratch = scratch.clone();
        async move {
            (
                SourceCriu::version(&c).await.unwrap(),
                SourceCriu::features(&c).await.unwrap(),
                SourceCriu::cpuinfo(&c, &scratch).await.unwrap(),
            )
        }
    };
    let criu = criu(&wrapper);
    let first = ask(criu.clone()).await;
    let asked = counted();
    assert!(asked >= 3, "version, features, cpuinfo: {asked} runs");
    assert!(!first.2.is_empty(), "this CRIU writes cpuinfo.img");
    assert_eq!(ask(criu.clone()).await, first);
    assert_eq!(counted(), asked, "a clone asked again");
    // A target accepts the same source CPU once.
    for _ in 0..2 {
        TargetCriu::cpuinfo_check(&criu, first.2.clone(), &scratch)
            .await
            .unwrap();
    }
    assert_eq!(counted(), asked + 1, "the same CPU checked twice");
    let sceptic = criu.clone().checks_valid(Duration::ZERO);
    assert_eq!(ask(sceptic.clone()).await, first);
    assert_eq!(ask(sceptic).await, first);
    assert!(
        counted() >= asked + 1 + 2 * 3,
        "a handle believing nothing asked only {} times",
        counted()
    );
}
