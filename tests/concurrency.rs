//! A service's limit on concurrent migrations, for real: sixteen trees of
//! one host ask at once to move to a service that takes two at a time,
//! with real CRIU between network-namespace hosts, stop-copy and post-copy
//! mixed. None fails halfway: each either moved with its memory intact, or
//! was refused as busy before anything froze and runs on at home, intact.
//! The service's own events show that no more than two ran at once. And
//! `phaul migrate` to a `phaul-service --max-migrations 1 --max-queued 0`
//! whose slot is taken is refused as busy: exit 2, not started. Needs root
//! and CRIU 4 (skipped locally without them, a failure under CI).

#![allow(clippy::print_stdout)]

use std::path::Path;
use std::time::Duration;

use phaul::core::criu::Criu;
use phaul::core::target::metrics::Metrics;
use phaul::core::{Error, Migration, Mode, Outcome, Report, Service, ServiceEvent};
use phaul::transport::proto::{self, request, response};
use phaul::transport::{Channel, ControlClient, Endpoint, Link};
use phaul::{LinkConfig, Listener, SharedKey};
use phaul_testkit::{Hosts, Workload, alive, in_netns, require_criu, wait_until};

mod common;
use common::{cli_stop_copy as migrate, key_file, sample, service as phaul_service};

/// Migrations asked for at once, and how many the service takes.
const ASKED: usize = 16;
const LIMIT: usize = 2;
/// How many may wait for their turn: the rest of the sixteen that find
/// the limit reached are refused as busy.
const QUEUED: usize = 4;

fn link() -> LinkConfig {
    LinkConfig::new(SharedKey::new(b"the concurrency test's shared key").unwrap())
}

fn criu(bin: &std::path::Path) -> Criu {
    Criu::new(phaul::criu_rpc::Criu::with_binary(bin).quiet(true))
}

/// Replays the service's events in the order it sent them: the most
/// migrations that had begun and not yet ended at any one time. A session
/// sends `Began` after taking its slot and its end before giving it back,
/// so this is never below what the slots allowed at once.
fn most_at_once(events: &[ServiceEvent]) -> (usize, usize, usize) {
    let (mut now, mut most, mut began, mut committed) = (0usize, 0, 0, 0);
    for e in events {
        match e {
            ServiceEvent::Began { .. } => {
                began += 1;
                now += 1;
                most = most.max(now);
            }
            ServiceEvent::Committed { .. } => {
                committed += 1;
                now -= 1;
            }
            ServiceEvent::RolledBack { .. } => now -= 1,
            _ => {}
        }
    }
    (most, began, committed)
}

#[test]
fn sixteen_migrations_at_once_to_a_service_of_two_never_run_more_than_two_or_fail_halfway() {
    let test =
        "sixteen_migrations_at_once_to_a_service_of_two_never_run_more_than_two_or_fail_halfway";
    let Some(bin) = require_criu(test) else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let work = tempfile::tempdir().unwrap();
    let mut trees: Vec<Workload> = (0..ASKED)
        .map(|_| Workload::start_in(Some(&hosts.src), 8).unwrap())
        .collect();

    // The service, in the target host, on a thread of its own.
    let (events_tx, mut events_rx) = tokio::sync::mpsc::unbounded_channel();
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (metrics_tx, metrics_rx) = std::sync::mpsc::channel::<Metrics>();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let (tgt_ip, tgt_bin, tgt_dir) = (
        hosts.tgt_ip.clone(),
        bin.clone(),
        work.path().join("target"),
    );
    let service = in_netns(&hosts.tgt, move || async move {
        let listener = Listener::bind(&format!("{tgt_ip}:0")).await.unwrap();
        addr_tx.send(listener.local_addr().unwrap()).unwrap();
        let svc = Service::new(criu(&tgt_bin), link(), tgt_dir)
            .max_migrations(LIMIT)
            // A long enough wait that the queued ones get their turn.
            .queue(QUEUED, Duration::from_secs(25))
            .events(events_tx);
        metrics_tx.send(svc.metrics()).unwrap();
        svc.serve(listener, async {
            let _ = stop_rx.await;
        })
        .await
        .unwrap();
    });
    let addr = addr_rx.recv_timeout(Duration::from_secs(10)).unwrap();
    let metrics = metrics_rx.recv_timeout(Duration::from_secs(10)).unwrap();

    // Sixteen migrations from the source host, all started at once.
    let pids: Vec<i32> = trees.iter().map(|w| w.pid).collect();
    let src_dir = work.path().join("source");
    let ends = in_netns(&hosts.src, move || async move {
        let runs: Vec<_> = pids
            .iter()
            .enumerate()
            .map(|(i, pid)| {
                let htype = phaul::htypes::registry::source("pid", &pid.to_string()).unwrap();
                let mode = match i % 2 {
                    0 => Mode::StopCopy,
                    _ => Mode::PostCopy,
                };
                Migration::new(criu(&bin), addr.clone(), link(), htype)
                    .mode(mode)
                    .work_dir(&src_dir)
                    .start()
            })
            .collect();
        let mut ends = Vec::new();
        for r in runs {
            ends.push(r.await);
        }
        ends
    })
    .join()
    .unwrap();

    // Each moved intact, or was refused as busy before anything froze and
    // runs on at home, intact.
    let (mut moved, mut busy) = (Vec::new(), 0);
    for (i, (w, end)) in trees.iter_mut().zip(ends).enumerate() {
        match end {
            Ok(Report {
                target_pid: Some(new),
                ..
            }) => {
                w.adopt(new);
                assert!(Hosts::runs_in(&hosts.tgt, new));
                moved.push((i, new));
            }
            Ok(r) => panic!("succeeded without a target pid: {r}"),
            Err(f) => {
                assert!(
                    matches!(f.error, Error::Busy(_)),
                    "not refused as busy: {f}"
                );
                assert_eq!(f.outcome, Outcome::NotStarted, "{f}");
                assert!(f.report.downtime_ms.is_none(), "{}", f.report);
                assert!(alive(w.pid) && Hosts::runs_in(&hosts.src, w.pid));
                let c = w.counter().unwrap();
                assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
                assert_eq!(w.memory_intact(w.pid), Some(true), "refused, intact");
                busy += 1;
            }
        }
    }
    for &(i, new) in &moved {
        let w = &trees[i];
        let old = w.pid;
        assert!(wait_until(Duration::from_secs(10), || (!alive(old)).then_some(())).is_some());
        // Post-copy's last pages may still be arriving: the check waits.
        assert_eq!(w.memory_intact(new), Some(true), "moved, intact");
    }

    // The service's own account: never more than the limit at once, every
    // one that began committed, and the refusals counted as busy.
    let _ = stop_tx.send(());
    service.join().unwrap();
    let mut events = Vec::new();
    while let Ok(e) = events_rx.try_recv() {
        events.push(e);
    }
    let (most, began, committed) = most_at_once(&events);
    let text = metrics.render();
    assert!(most <= LIMIT, "{most} ran at once: {events:?}");
    assert_eq!((began, committed), (moved.len(), moved.len()), "{events:?}");
    assert_eq!(moved.len() + busy, ASKED);
    let refused = sample(
        &text,
        "phaul_migrations_refused_total{reason=\"queue_full\"}",
    ) + sample(
        &text,
        "phaul_migrations_refused_total{reason=\"queue_wait\"}",
    );
    assert_eq!(refused, busy as f64, "{text}");
    assert_eq!(sample(&text, "phaul_migrations_limit"), LIMIT as f64);
    assert_eq!(sample(&text, "phaul_migrations_running"), 0.0, "{text}");
    assert_eq!(sample(&text, "phaul_migrations_queued"), 0.0, "{text}");
    // The limit was met: some waited or were refused (sixteen at once
    // against two slots), so the above is not a run that never hit it.
    let waited = sample(&text, "phaul_migrations_waited_total");
    assert!(waited + refused > 0.0, "{text}");
    assert!(!text.contains("outcome=\"failed\""), "{text}");
    assert!(!text.contains("outcome=\"rolled_back\""), "{text}");
    println!(
        "{ASKED} asked, limit {LIMIT}, queue {QUEUED}: {} moved ({waited} waited), {busy} refused as busy, at most {most} at once",
        moved.len()
    );
}

/// A session that has begun a migration on the service at `addr` and holds
/// its slot, doing nothing more, until `release` is sent (then it goes
/// away, and the service undoes the session).
fn hold_a_slot(
    ns: &str,
    addr: String,
    key: &Path,
    pid: i32,
) -> (
    std::thread::JoinHandle<()>,
    tokio::sync::oneshot::Sender<()>,
) {
    let cfg = LinkConfig::new(SharedKey::from_file(key).unwrap());
    let (begun_tx, begun_rx) = std::sync::mpsc::channel();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let holder = in_netns(ns, move || async move {
        let ep = Endpoint::parse(&addr).unwrap();
        let link = Link::connect(ep, &cfg, Channel::Control, None)
            .await
            .unwrap();
        let mut ctl = ControlClient::new(link);
        let begin = proto::Begin {
            htype: "pid".into(),
            // As a source would name it; nothing of it is touched.
            params: phaul::htypes::registry::source("pid", &pid.to_string())
                .unwrap()
                .params()
                .into_iter()
                .collect(),
            mode: proto::Mode::StopCopy as i32,
            fs_driver: proto::FsDriver::NoFs as i32,
            restore_by: proto::RestoreBy::Criu as i32,
            migration_id: "slot-holder".into(),
        };
        let answer = ctl.call(request::Body::Begin(begin)).await.unwrap();
        assert!(matches!(answer, response::Body::Begun(_)), "{answer:?}");
        begun_tx.send(()).unwrap();
        let _ = released.await;
        ctl.close().await;
    });
    begun_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the holder's migration began");
    (holder, release)
}

#[test]
fn phaul_migrate_to_a_full_service_is_refused_as_busy_and_exits_2_with_the_tree_at_home() {
    let test =
        "phaul_migrate_to_a_full_service_is_refused_as_busy_and_exits_2_with_the_tree_at_home";
    let Some(_) = require_criu(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new().unwrap();
    let key = key_file(dir.path(), "the busy service's key, long enough", 0o600);
    let (mut svc, addr) = phaul_service(
        &hosts,
        &key,
        dir.path(),
        &[
            "--max-migrations".as_ref(),
            "1".as_ref(),
            "--max-queued".as_ref(),
            "0".as_ref(),
        ],
    );
    let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();

    // The service's one slot is taken: refused at once, nothing started.
    let (holder, release) = hold_a_slot(&hosts.src, addr.clone(), &key, w.pid);
    let (status, stderr, report) = migrate(&hosts, dir.path(), &addr, &key, w.pid);
    assert_eq!(status, 2, "{stderr}");
    assert_eq!(report["outcome"], "not-started", "{report}");
    let error = report["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("the target is busy: busy: 1 migrations are running"),
        "{error}"
    );
    assert!(report["downtime_ms"].is_null(), "{report}");
    assert!(alive(w.pid) && Hosts::runs_in(&hosts.src, w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(w.pid), Some(true));

    // The holder goes away: its slot comes back, and the tree moves.
    release.send(()).unwrap();
    holder.join().unwrap();
    let moved = wait_until(Duration::from_secs(30), || {
        let (status, stderr, report) = migrate(&hosts, dir.path(), &addr, &key, w.pid);
        match status {
            0 => Some(report),
            2 if stderr.contains("busy") => None,
            _ => panic!("{status}: {stderr}"),
        }
    })
    .expect("the slot came back");
    let new = i32::try_from(moved["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(Hosts::runs_in(&hosts.tgt, new));
    assert_eq!(w.memory_intact(new), Some(true));
    svc.stop();
}
