//! The `vz` kind with real CRIU and a real cgroup v1 freezer, but with
//! STAND-INS for Virtuozzo's tools (`crates/phaul-htypes/tests/standins/`:
//! shell scripts that record their argv and answer like vzctl, cgget,
//! cgexec and cgset), since no Virtuozzo kernel exists here. The stand-ins
//! also record the state of the tasks in the container's freezer cgroup
//! when they run, which shows `cgget` ran before the final dump (tasks
//! running) and `cgexec` after it (tasks stopped by CRIU, held at
//! post-dump). CRIU freezes the cgroup only to seize the tasks, then thaws
//! it and holds them in ptrace-stop, so the freezer itself reads THAWED
//! at post-dump.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phaul_core::{Mode, Report};
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::{Hosts, Workload, alive, require_criu, wait_until};

mod common;
use common::{Setup, Target, criu, migrate_from};

fn standin(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../phaul-htypes/tests/standins")
        .join(tool)
}

fn paths(run: &Path) -> Paths {
    Paths {
        ve_run_dir: run.to_path_buf(),
        ve_root: run.join("no-root-mounts"),
        vzctl: standin("vzctl"),
        cgget: standin("cgget"),
        cgexec: standin("cgexec"),
        cgset: standin("cgset"),
        ..Paths::default()
    }
}

/// A freezer cgroup holding `pid`, removed on drop.
struct Freezer(PathBuf);

impl Freezer {
    fn new(ctid: &str, pid: i32) -> Self {
        let dir = Path::new("/sys/fs/cgroup/freezer").join(ctid);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cgroup.procs"), pid.to_string()).unwrap();
        Self(dir)
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = std::fs::write(self.0.join("freezer.state"), "THAWED");
        let _ = wait_until(Duration::from_secs(10), || {
            std::fs::remove_dir(&self.0).ok()
        });
    }
}

/// The task states a stand-in recorded (`tasks=...`).
fn tasks_of(line: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix("tasks="))
        .unwrap_or("")
        .to_string()
}

fn migrate_vz(hosts: &Hosts, bin: &Path, run: &Path, ctid: &str) -> Report {
    let target = Target::start_with(
        hosts,
        criu(bin),
        Setup {
            paths: Some(paths(run)),
            ..Setup::default()
        },
    );
    let (ctid, p) = (ctid.to_string(), paths(run));
    let open = move || source_in("vz", &ctid, &p).unwrap();
    let (report, _work) = migrate_from(&hosts.src, bin, &target.addr, open, |m| {
        m.mode(Mode::StopCopy)
    });
    drop(target);
    report
}

#[test]
fn a_vz_container_in_its_freezer_cgroup_is_dumped_frozen_and_restored() {
    let Some(bin) =
        require_criu("a_vz_container_in_its_freezer_cgroup_is_dumped_frozen_and_restored")
    else {
        return;
    };
    let run = tempfile::tempdir().unwrap();
    let log = run.path().join("standins.log");
    // SAFETY: set before this test starts any thread or process that reads
    // the environment; this file has no other test running alongside.
    unsafe {
        std::env::set_var("PHAUL_STANDIN_LOG", &log);
        std::env::set_var("PHAUL_STANDIN_FREEZER", "/sys/fs/cgroup/freezer");
    }
    let hosts = Hosts::new().unwrap();
    for (round, fail) in [(0, ""), (1, "cgget")] {
        // SAFETY: as above; no other thread runs between rounds.
        unsafe { std::env::set_var("PHAUL_STANDIN_FAIL", fail) };
        let _ = std::fs::remove_file(&log);
        let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
        let ctid = format!("{}", 700_000 + (std::process::id() % 100_000) * 10 + round);
        let _freezer = Freezer::new(&ctid, w.pid);
        std::fs::write(
            run.path().join(format!("{ctid}.init.pid")),
            format!("{}\n", w.pid),
        )
        .unwrap();
        let before = w.counter_passes(2, Duration::from_secs(10)).unwrap();

        let r = migrate_vz(&hosts, &bin, run.path(), &ctid);
        assert!(r.success, "round {round}: {:?}", r.error);
        let pid = r.target_pid.unwrap();
        w.adopt(pid);
        assert!(alive(pid));
        assert_eq!(
            w.memory_intact(pid),
            Some(true),
            "memory after the migration"
        );
        assert!(
            w.counter_passes(before, Duration::from_secs(20)).is_some(),
            "the counter does not continue"
        );
        assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());

        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let gets: Vec<&str> = lines
            .iter()
            .copied()
            .filter(|l| l.starts_with("cgget "))
            .collect();
        let params = [
            "clock_bootbased",
            "clock_monotonic",
            "iptables_mask",
            "os_release",
            "features",
            "aio_max_nr",
        ];
        assert_eq!(gets.len(), 6, "round {round}: {text}");
        for (line, param) in gets.iter().zip(params) {
            assert!(
                line.starts_with(&format!("cgget -n -v -r ve.{param} {ctid}")),
                "{line}"
            );
            // Before the final dump: the tree still ran.
            assert!(line.ends_with("freezer=THAWED"), "{line}");
            assert!(!tasks_of(line).contains('t'), "{line}");
        }
        let core = lines
            .iter()
            .find(|l| {
                l.starts_with(&format!(
                    "cgexec -g ve:{ctid} cat /proc/sys/kernel/core_pattern"
                ))
            })
            .unwrap_or_else(|| panic!("no core_pattern read: {text}"));
        // After the final dump, while held: every task stopped by CRIU.
        let t = tasks_of(core);
        assert!(!t.is_empty() && t.chars().all(|c| c == 't'), "{core}");
        let first_get = lines.iter().position(|l| l.starts_with("cgget ")).unwrap();
        let core_at = lines.iter().position(|l| l == core).unwrap();
        assert!(first_get < core_at);
        // The target applied what arrived: every ve.* value that was made,
        // and the core pattern.
        let sets = lines
            .iter()
            .filter(|l| l.starts_with("cgset -r ve."))
            .count();
        assert_eq!(
            sets,
            if fail.is_empty() { 6 } else { 0 },
            "round {round}: {text}"
        );
        assert!(
            lines.iter().any(|l| l.starts_with(&format!(
                "cgexec -g ve:{ctid} tee /proc/sys/kernel/core_pattern"
            ))),
            "{text}"
        );
        // The restored copy sits in the same freezer cgroup: end it before
        // the cgroup is removed.
        drop(w);
    }
}
