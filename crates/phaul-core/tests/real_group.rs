//! Group migration for real: several trees moved as one between two
//! network-namespace hosts with real CRIU.
//!
//! - Two Debian `redis-server`s, each with its own address and a client on
//!   a third host holding one connection, move as one group: both run on
//!   the target with their data, both clients saw no error, and the
//!   report has an entry per member and the group's downtime.
//! - A group whose target dies midway (killed once both members are
//!   frozen): both members run on the source again, the server's client
//!   connection unbroken, the other tree's memory intact.
//! - A group whose one member's restore fails (a real CRIU failure, on a
//!   second target) rolls the other, already restored on its own target,
//!   back too.
//!
//! Needs root, CRIU and redis-server (`scripts/setup.sh` installs them);
//! under `CI` their absence fails the test.

#![allow(clippy::print_stderr)] // the measured downtimes are the point of the output

use std::path::Path;
use std::sync::mpsc as std_mpsc;
use std::time::Duration;

use phaul_core::criu::Criu;
use phaul_core::{Event, Group, GroupFailure, GroupReport, Migration, Mode, Outcome, Progress};
use phaul_htypes::pid::PidOptions;
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::lan::{
    LanClient, ServiceTree, redis_argv, redis_cli, redis_ready_with, require_criu_and_redis,
};
use phaul_testkit::{Hosts, LxcContainer, Workload, alive, in_netns, wait_until};

mod common;
use common::{Setup, Target, cfg, criu};

/// A `pid` migration of the tree at `pid` to `to`; `veth` is the tree's
/// `OUTER@BRIDGE` when it has an address of its own.
fn member(bin: &Path, to: &str, pid: i32, veth: Option<&str>, mode: Mode) -> Migration<Criu> {
    let opts = PidOptions {
        veths: veth
            .map(|v| ("eth0".into(), v.to_string()))
            .into_iter()
            .collect(),
        ..PidOptions::default()
    };
    let paths = phaul_htypes::registry::Paths::default();
    let htype = phaul_htypes::registry::source_with("pid", &pid.to_string(), &paths, &opts)
        .expect("a migratable tree");
    let work = std::env::temp_dir().join("phaul-group-test");
    Migration::new(criu(bin), to, cfg(), htype)
        .mode(mode)
        .work_dir(work)
}

/// Runs the group built by `build` (called inside host `ns`) there,
/// passing every event to `events` as it comes.
fn run_group(
    ns: &str,
    build: impl FnOnce() -> Group<Criu> + Send + 'static,
    events: std_mpsc::Sender<Event>,
) -> Result<GroupReport, GroupFailure> {
    in_netns(ns, move || async move {
        let mut run = build().start();
        assert_eq!(run.member_ids().len(), 2);
        while let Some(e) = run.next_event().await {
            let _ = events.send(e);
        }
        tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .expect("the group hung")
    })
    .join()
    .expect("the source thread panicked")
}

fn has_device(ns: &str, dev: &str) -> bool {
    std::process::Command::new("ip")
        .args(["-n", ns, "link", "show", dev])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn redis_tree(hosts: &Hosts, redis: &str, ip: &str) -> ServiceTree {
    let lan = hosts.lan();
    let argv = redis_argv(redis);
    let tree = ServiceTree::start(&hosts.src, &lan.bridge, ip, &argv).unwrap();
    redis_ready_with(lan, ip, &format!("phaul:{ip}:"), 500).unwrap();
    tree
}

#[test]
fn two_servers_move_as_one_group_with_their_clients_connected() {
    let test = "two_servers_move_as_one_group_with_their_clients_connected";
    let Some((bin, redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let (ip_a, ip_b) = (lan.ip(61), lan.ip(62));
    let mut a = redis_tree(&hosts, redis, &ip_a);
    let mut b = redis_tree(&hosts, redis, &ip_b);
    let client_a = LanClient::start(lan, &ip_a, 6379, Duration::from_millis(5)).unwrap();
    let client_b = LanClient::start(lan, &ip_b, 6379, Duration::from_millis(5)).unwrap();
    let target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());

    let (tx, rx) = std_mpsc::channel();
    let (to, pids, veths) = (
        target.addr.clone(),
        (a.pid, b.pid),
        (a.outer.clone(), b.outer.clone()),
    );
    let bin2 = bin.clone();
    let end = run_group(
        &hosts.src,
        move || {
            Group::new()
                .member(member(&bin2, &to, pids.0, Some(&veths.0), Mode::Auto))
                .member(member(&bin2, &to, pids.1, Some(&veths.1), Mode::StopCopy))
        },
        tx,
    );
    let report = end.unwrap_or_else(|f| panic!("{f}\n{}", f.report));
    assert!(
        report.success && report.outcome == Outcome::Succeeded,
        "{report}"
    );
    assert_eq!(report.members.len(), 2);
    let events: Vec<Event> = rx.try_iter().collect();
    for (m, (tree, old)) in report
        .members
        .iter()
        .zip([(&mut a, pids.0), (&mut b, pids.1)])
    {
        assert!(m.success, "{m}");
        let new = m.target_pid.expect("a target pid");
        tree.adopt(new);
        // Its address came along: its veth's outer end is on the target.
        let dev = tree.outer.split('@').next().unwrap().to_string();
        assert!(
            alive(new) && has_device(&hosts.tgt, &dev),
            "{new} runs on the target"
        );
        assert!(
            wait_until(Duration::from_secs(10), || (!alive(old)).then_some(())).is_some(),
            "the source copy of {old} is still there"
        );
        // Each member's events came, named by its id.
        let frozen = events
            .iter()
            .filter(|e| e.migration == m.migration_id && e.progress == Progress::Frozen)
            .count();
        assert_eq!(frozen, 1, "{events:?}");
    }
    // The group's downtime spans every member's.
    let group = report.downtime_ms.expect("a group downtime");
    for m in &report.members {
        assert!(group + 1.0 >= m.downtime_ms.unwrap(), "{report}");
    }
    for (client, ip) in [(&client_a, &ip_a), (&client_b, &ip_b)] {
        let s = client
            .answers_after(100, Duration::from_secs(30))
            .unwrap_or_else(|| panic!("{ip}: the client's requests stopped: {:?}", client.stats()));
        assert_eq!(s.errors, 0, "{ip}: client errors: {:?}", s.last_error);
        assert_eq!(
            redis_cli(lan, ip, &["GET", &format!("phaul:{ip}:499")]),
            "v499"
        );
        eprintln!(
            "{test}: {ip}: client longest stall {:.1} ms, 0 errors",
            s.longest_stall_ms
        );
    }
    eprintln!(
        "{test}: group downtime {group:.1} ms; members {:?} ms",
        report
            .members
            .iter()
            .map(|m| m.downtime_ms)
            .collect::<Vec<_>>()
    );
}

#[test]
fn a_group_whose_target_dies_midway_resumes_every_member() {
    let test = "a_group_whose_target_dies_midway_resumes_every_member";
    let Some((bin, redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let ip = lan.ip(63);
    let server = redis_tree(&hosts, redis, &ip);
    let client = LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    // Large enough that its pages still stream when the target dies.
    let w = Workload::start_in(Some(&hosts.src), 512).unwrap();
    let mut target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());

    let (tx, rx) = std_mpsc::channel();
    let (to, srv, veth, big) = (target.addr.clone(), server.pid, server.outer.clone(), w.pid);
    let bin2 = bin.clone();
    let group = std::thread::spawn({
        let ns = hosts.src.clone();
        move || {
            run_group(
                &ns,
                move || {
                    Group::new()
                        .member(member(&bin2, &to, srv, Some(&veth), Mode::StopCopy))
                        .member(member(&bin2, &to, big, None, Mode::StopCopy))
                },
                tx,
            )
        }
    });
    // Both members frozen: the group is midway. The target dies.
    let mut seen = Vec::new();
    let both_frozen = wait_until(Duration::from_secs(60), || {
        seen.extend(rx.try_iter());
        let frozen: std::collections::HashSet<_> = seen
            .iter()
            .filter(|e| e.progress == Progress::Frozen)
            .map(|e| e.migration.clone())
            .collect();
        (frozen.len() == 2).then_some(())
    });
    assert!(both_frozen.is_some(), "both members never froze: {seen:?}");
    target.kill();
    let end = group.join().expect("the group's thread panicked");
    let f = match end {
        Ok(r) => panic!("the group succeeded although its target died: {r}"),
        Err(f) => f,
    };
    assert_eq!(f.outcome, Outcome::RolledBack, "{f}\n{}", f.report);
    assert_eq!(f.report.members.len(), 2);
    for m in &f.report.members {
        assert_eq!(m.outcome, Outcome::RolledBack, "{m}");
    }
    // Both run on the source, intact.
    assert!(alive(server.pid) && alive(w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(w.pid), Some(true));
    let s = client
        .answers_after(100, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the client's requests stopped: {:?}", client.stats()));
    assert_eq!(s.errors, 0, "client errors: {:?}", s.last_error);
    assert_eq!(
        redis_cli(lan, &ip, &["GET", &format!("phaul:{ip}:499")]),
        "v499"
    );
    eprintln!(
        "{test}: rolled back after the target died; client longest stall {:.1} ms, 0 errors",
        s.longest_stall_ms
    );
}

#[test]
fn one_failed_restore_rolls_back_a_member_already_restored_elsewhere() {
    let test = "one_failed_restore_rolls_back_a_member_already_restored_elsewhere";
    let Some((bin, _redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let small = Workload::start_in(Some(&hosts.src), 8).unwrap();
    let other = Workload::start_in(Some(&hosts.src), 64).unwrap();
    let good = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let (_standin, failing) = common::criu_failing_restores(&bin);
    let bad = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&failing), Setup::default());
    let (tx, _rx) = std_mpsc::channel();
    let (g, b, p1, p2) = (good.addr.clone(), bad.addr.clone(), small.pid, other.pid);
    let end = run_group(
        &hosts.src,
        move || {
            Group::new()
                .member(member(&bin, &g, p1, None, Mode::StopCopy))
                .member(member(&bin, &b, p2, None, Mode::StopCopy))
        },
        tx,
    );
    let f = end.expect_err("a member's restore fails, so the group must");
    assert_eq!(f.outcome, Outcome::RolledBack, "{f}\n{}", f.report);
    let [m1, m2] = &f.report.members[..] else {
        panic!("two members: {}", f.report)
    };
    assert_eq!(m2.outcome, Outcome::RolledBack, "{m2}");
    assert!(m2.error.as_deref().unwrap().contains("apparmor"), "{m2}");
    // The first was restored on its own target and held; the second's
    // failure rolled it back.
    assert_eq!(m1.outcome, Outcome::RolledBack, "{m1}");
    assert!(
        m1.error
            .as_deref()
            .unwrap()
            .contains("another member of the group failed"),
        "{m1}"
    );
    assert!(
        m1.restore_ms.is_some(),
        "the first member was restored: {m1}"
    );
    for w in [&small, &other] {
        assert!(alive(w.pid));
        let c = w.counter().unwrap();
        assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
        assert_eq!(w.memory_intact(w.pid), Some(true));
    }
    eprintln!("{test}: {}", f.report);
}

#[test]
fn a_member_refused_before_the_freeze_keeps_every_member_unfrozen() {
    let test = "a_member_refused_before_the_freeze_keeps_every_member_unfrozen";
    let Some((bin, _redis)) = require_criu_and_redis(test) else {
        return;
    };
    let hosts = Hosts::with_lan().unwrap();
    let a = Workload::start_in(Some(&hosts.src), 8).unwrap();
    let b = Workload::start_in(Some(&hosts.src), 8).unwrap();
    let good = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    // Nothing listens there: the second member's pre-flight fails.
    let nowhere = format!("{}:1", hosts.tgt_ip);
    let (tx, rx) = std_mpsc::channel();
    let (g, pa, pb) = (good.addr.clone(), a.pid, b.pid);
    let end = run_group(
        &hosts.src,
        move || {
            Group::new()
                .member(member(&bin, &g, pa, None, Mode::StopCopy))
                .member(member(&bin, &nowhere, pb, None, Mode::StopCopy))
        },
        tx,
    );
    let f = end.expect_err("a member cannot reach its target");
    assert_eq!(f.outcome, Outcome::NotStarted, "{f}\n{}", f.report);
    let events: Vec<Event> = rx.try_iter().collect();
    assert!(
        !events.iter().any(|e| e.progress == Progress::Frozen),
        "a member froze although another was refused: {events:?}"
    );
    for m in &f.report.members {
        assert_eq!(m.outcome, Outcome::NotStarted, "{m}");
    }
    for w in [&a, &b] {
        let c = w.counter().unwrap();
        assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    }
}

/// An LXC container (restored by LXC, so it runs on its target as soon as
/// it is restored) and a process tree, as one group: with a target that
/// restores both, both move; with the tree's restore failing on another
/// target, the container's copy is stopped there and it runs on the
/// source again, its counter going on from where it was.
#[test]
fn a_container_and_a_tree_move_as_one_or_both_stay() {
    let test = "a_container_and_a_tree_move_as_one_or_both_stay";
    let Some(bin) = phaul_testkit::require_criu(test) else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let dir = |tag: &str| {
        tempfile::Builder::new()
            .prefix(&format!("phaul-group-lxc-{tag}-"))
            .tempdir()
            .unwrap()
    };
    let (src, tgt) = (dir("src"), dir("tgt"));
    let name = format!("phgr{}", std::process::id() % 100_000);
    let mut ct = LxcContainer::start(Some(&hosts.src), src.path(), &name).unwrap();
    ct.also
        .push((tgt.path().to_path_buf(), Some(hosts.tgt.clone())));
    let lxc_paths = |p: &Path| Paths {
        lxcpath: p.to_path_buf(),
        ..Paths::default()
    };
    let setup = Setup {
        paths: Some(lxc_paths(tgt.path())),
        ..Setup::default()
    };
    let lxc_target = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), setup);
    let (_standin, failing) = common::criu_failing_restores(&bin);
    let bad = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&failing), Setup::default());
    let group_of = |tree: i32, tree_to: &str| {
        let (b, n, to, t) = (
            bin.clone(),
            name.clone(),
            lxc_target.addr.clone(),
            tree_to.to_string(),
        );
        let paths = lxc_paths(src.path());
        move || {
            let container = source_in("lxc", &n, &paths).expect("the container");
            let m = Migration::new(criu(&b), to, cfg(), container).mode(Mode::StopCopy);
            Group::new()
                .member(m)
                .member(member(&b, &t, tree, None, Mode::StopCopy))
        }
    };

    // The tree's restore fails: the container, restored and held on its
    // target, is dropped there and runs on the source again.
    let w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let before = LxcContainer::counter_in(src.path(), &name).unwrap();
    let (tx, _rx) = std_mpsc::channel();
    let end = run_group(&hosts.src, group_of(w.pid, &bad.addr), tx);
    let f = end.expect_err("the tree's restore fails, so the group must");
    assert_eq!(f.outcome, Outcome::RolledBack, "{f}\n{}", f.report);
    let state = |p: &Path, ns: &str| LxcContainer::state_in(Some(ns), p, &name);
    assert_eq!(state(src.path(), &hosts.src).as_deref(), Some("RUNNING"));
    assert_ne!(state(tgt.path(), &hosts.tgt).as_deref(), Some("RUNNING"));
    let went_on = wait_until(Duration::from_secs(10), || {
        LxcContainer::counter_in(src.path(), &name).filter(|c| *c > before)
    });
    assert!(
        went_on.is_some(),
        "the container's counter stopped on the source"
    );
    assert_eq!(w.memory_intact(w.pid), Some(true));

    // Both to targets that restore them: both move.
    let mut w2 = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let before = LxcContainer::counter_in(src.path(), &name).unwrap();
    let (tx, _rx) = std_mpsc::channel();
    let plain = Target::start_on(&hosts.tgt, &hosts.tgt_ip, criu(&bin), Setup::default());
    let end = run_group(&hosts.src, group_of(w2.pid, &plain.addr), tx);
    let report = end.unwrap_or_else(|f| panic!("{f}\n{}", f.report));
    assert_eq!(
        state(tgt.path(), &hosts.tgt).as_deref(),
        Some("RUNNING"),
        "{report}"
    );
    let c = wait_until(Duration::from_secs(10), || {
        LxcContainer::counter_in(tgt.path(), &name).filter(|c| *c > before)
    });
    assert!(
        c.is_some(),
        "the container's counter does not go on on the target"
    );
    let new = report.members[1].target_pid.expect("the tree's target pid");
    w2.adopt(new);
    assert_eq!(w2.memory_intact(new), Some(true));
    eprintln!("{test}: {report}");
}
