//! The bounded freeze, for real: the target's `phaul-service` runs as its
//! own process in the target host and is stopped with SIGSTOP (alive, not
//! answering) as the migration enters each phase in which the source is
//! frozen: the final dump, the image transfer, the restore, the commit.
//! Each time the source must run again within the freeze limit plus a
//! small margin, with its memory and counter intact; once the service is
//! continued, it must not run a copy of its own (it removes what it
//! restored). Needs root and CRIU; under `CI` their absence fails.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use phaul_core::criu::Criu;
use phaul_core::{Migration, Mode, Phase, Progress};
use phaul_testkit::{Hosts, Workload, alive, in_netns, require_criu, wait_until};
use phaul_transport::{LinkConfig, SharedKey};

mod common;
use common::{key_file, service};

const LIMIT: Duration = Duration::from_secs(3);
/// What the resume may take beyond the limit: answering CRIU, a few ms.
const MARGIN: Duration = Duration::from_millis(1500);
const KEY: &str = "a freeze-timeout test key of 32 bytes";

/// Processes in host `ns` whose command line names `dir`.
fn copies_in(ns: &str, dir: &Path) -> Vec<i32> {
    let needle = dir.to_string_lossy().into_owned();
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .is_ok_and(|c| String::from_utf8_lossy(&c).contains(&needle))
        })
        .filter(|p| Hosts::runs_in(ns, *p))
        .collect()
}

/// When the workload's counter (`out`) moves again after the freeze at
/// `frozen`: the first change seen once the freeze has surely taken hold
/// (half a second on; CRIU freezes in well under that), within 20 s.
fn watch_resume(out: PathBuf, frozen: Instant) -> std::thread::JoinHandle<Option<Instant>> {
    std::thread::spawn(move || {
        let read = || {
            std::fs::read_to_string(&out)
                .ok()
                .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        };
        std::thread::sleep(Duration::from_millis(500).saturating_sub(frozen.elapsed()));
        let stuck = read();
        while frozen.elapsed() < Duration::from_secs(20) {
            if read() != stuck {
                return Some(Instant::now());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    })
}

/// One migration whose target is stopped when the source enters `at`:
/// returns whether the stop landed in time (the migration did not commit
/// before it), after checking everything the test promises.
fn stop_target_at(bin: &Path, at: Phase) -> bool {
    let hosts = Hosts::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), KEY, 0o600);
    let (mut svc, addr) = service(&hosts, &key, dir.path(), &[]);
    let svc_pid = nix::unistd::Pid::from_raw(i32::try_from(svc.0.id()).unwrap());
    let mut w = Workload::start_in(Some(&hosts.src), 128).unwrap();
    let before = w.counter_passes(2, Duration::from_secs(10)).unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let (bin2, pid, key2) = (bin.to_path_buf(), w.pid, key.clone());
    let work: PathBuf = dir.path().join("source");
    let source = in_netns(&hosts.src, move || async move {
        let htype = phaul_htypes::registry::source("pid", &pid.to_string()).unwrap();
        let cfg = LinkConfig::new(SharedKey::from_file(&key2).unwrap());
        let criu = Criu::new(criu_rpc::Criu::with_binary(&bin2).quiet(true));
        Migration::new(criu, addr, cfg, htype)
            .mode(Mode::StopCopy)
            .freeze_timeout(LIMIT)
            .work_dir(&work)
            .progress(tx)
            .run()
            .await
    });
    let mut frozen_at = None;
    let mut stopped = false;
    let mut watcher = None;
    while let Some(p) = rx.blocking_recv() {
        // The final dump's phase begins before its page channel is open;
        // the source freezes once it is, so that is when this one stops.
        let now = match &p {
            Progress::Frozen => {
                let t = Instant::now();
                frozen_at = Some(t);
                watcher = Some(watch_resume(w.dir().join("out"), t));
                at == Phase::FinalDump
            }
            Progress::Phase(ph) => *ph == at && at != Phase::FinalDump,
            _ => false,
        };
        if now && !stopped {
            nix::sys::signal::kill(svc_pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
            stopped = true;
        }
    }
    let report = source.join().unwrap();
    if report.success {
        // The commit beat the stop (it is a few ms after the phase's start).
        nix::sys::signal::kill(svc_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
        if let Some(p) = report.target_pid {
            w.adopt(p);
        }
        return false;
    }
    let frozen_at = frozen_at.unwrap_or_else(|| panic!("{at}: the source never froze: {report}"));
    // The source runs again, within the limit and a margin, intact.
    let resumed = watcher
        .and_then(|h| h.join().ok().flatten())
        .unwrap_or_else(|| panic!("{at}: the source never counted again: {report}"));
    assert!(
        resumed.duration_since(frozen_at) <= LIMIT + MARGIN,
        "{at}: frozen {:?} (limit {LIMIT:?}): {report}",
        resumed.duration_since(frozen_at)
    );
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{at}: target stopped; the source ran again {:.0} ms after it froze (limit {} ms)",
            resumed.duration_since(frozen_at).as_secs_f64() * 1000.0,
            LIMIT.as_millis()
        );
    }
    let e = report.error.as_deref().unwrap_or("");
    assert!(
        e.contains("freeze timeout") || e.contains("freeze limit"),
        "{at}: {e}"
    );
    assert!(alive(w.pid), "{at}: the source is gone");
    let c = w.counter().unwrap_or(before);
    assert!(
        w.counter_passes(c, Duration::from_secs(10)).is_some(),
        "{at}: the source is not running (still frozen?)"
    );
    assert_eq!(w.memory_intact(w.pid), Some(true), "{at}: memory");
    assert_eq!(report.freeze_timeout_ms, Some(3000.0));
    // Once continued, the target runs no copy of its own.
    nix::sys::signal::kill(svc_pid, nix::sys::signal::Signal::SIGCONT).unwrap();
    let gone = wait_until(Duration::from_secs(30), || {
        copies_in(&hosts.tgt, w.dir()).is_empty().then_some(())
    });
    let left = copies_in(&hosts.tgt, w.dir());
    for p in &left {
        w.adopt(*p);
    }
    assert!(gone.is_some(), "{at}: the target kept a copy: {left:?}");
    assert!(
        alive(w.pid),
        "{at}: the source died after the target woke up"
    );
    svc.stop();
    true
}

#[test]
fn a_stopped_target_never_holds_the_source_past_its_freeze_limit() {
    let Some(bin) = require_criu("a_stopped_target_never_holds_the_source_past_its_freeze_limit")
    else {
        return;
    };
    for at in [
        Phase::FinalDump,
        Phase::ImageTransfer,
        Phase::Restore,
        Phase::Commit,
    ] {
        // The phase's start is announced a moment before its request goes
        // out; the later phases can win that race and commit: try again.
        let landed = (0..5).any(|_| stop_target_at(&bin, at));
        assert!(landed, "{at}: the stop never landed before the commit");
    }
}
