//! The control API for real: `phaul migrate --from A --to B` run on a third
//! host orders A's phaul-service to move a tree of A to B's, and another
//! the other way, with real CRIU between network-namespace hosts; the
//! trees' memory survives and their counters go on. The services refuse
//! what the CLI refuses (PID 1, the service itself, a bad kind or target,
//! a wrong key), and an outcome other than success travels back typed.
//! Needs root and CRIU 4 (skipped locally without them, a failure under
//! CI).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use phaul_testkit::{Hosts, Workload, alive, process_state, require_criu, wait_until};

mod common;
use common::{Killed, example, key_file, service_on};

struct Run {
    status: i32,
    stderr: String,
    json: serde_json::Value,
}

/// `phaul migrate --from FROM --to TO --json DIR/report-N.json ...` inside
/// host `ns`, started; its report's path.
fn start_controller(
    ns: &str,
    dir: &Path,
    args: &[&str],
    key: &Path,
) -> (std::process::Child, std::path::PathBuf) {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = dir.join(format!("report-{n}.json"));
    let child = Hosts::command(ns, example("phaul"))
        .arg("migrate")
        .arg("--key-file")
        .arg(key)
        .arg("--json")
        .arg(&json)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (child, json)
}

fn finished(child: std::process::Child, json: &Path) -> Run {
    let out = child.wait_with_output().unwrap();
    Run {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json: std::fs::read_to_string(json)
            .map(|s| serde_json::from_str(&s).unwrap())
            .unwrap_or(serde_json::Value::Null),
    }
}

/// `phaul migrate --from FROM --to TO ... WHAT` inside host `ns`, to its end.
fn controller(ns: &str, dir: &Path, from: &str, to: &str, key: &Path, what: &[&str]) -> Run {
    let mut args = vec!["--from", from, "--to", to];
    args.extend_from_slice(what);
    let (child, json) = start_controller(ns, dir, &args, key);
    finished(child, &json)
}

/// Moves workload `w` of host `from_ns` to host `to_ns` by an order from
/// the client host, and checks it runs there with its memory intact.
fn moved(
    hosts: &Hosts,
    dir: &Path,
    key: &Path,
    w: &mut Workload,
    from: &str,
    to: &str,
    to_ns: &str,
) {
    let before = w.counter().unwrap();
    let pid = w.pid.to_string();
    let events = dir.join(format!("events-{pid}.jsonl"));
    let r = controller(
        &hosts.lan().client,
        dir,
        from,
        to,
        key,
        &["--events", events.to_str().unwrap(), "pid", &pid],
    );
    assert_eq!(r.status, 0, "{}\n{}", r.stderr, r.json);
    // The source's service streamed the migration's events back.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named = |e: &str| lines.iter().filter(|l| l["event"] == e).count();
    assert!(
        named("mode") == 1 && named("frozen") == 1 && named("resumed") == 1 && named("phase") >= 3,
        "{lines:?}"
    );
    assert_eq!(r.json["outcome"], "succeeded", "{}", r.json);
    let new = i32::try_from(r.json["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(Hosts::runs_in(to_ns, new), "PID {new} runs in {to_ns}");
    assert_eq!(w.memory_intact(new), Some(true));
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
    assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());
}

#[test]
fn a_controller_on_a_third_host_moves_trees_both_ways() {
    let Some(_) = require_criu("a_controller_on_a_third_host_moves_trees_both_ways") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::with_lan().unwrap();
    let key = key_file(dir.path(), "the cluster's key, long enough!", 0o600);
    let (mut svc_a, a) = service_on(&hosts.src, &hosts.src_ip, &key, dir.path(), "a");
    let (mut svc_b, b) = service_on(&hosts.tgt, &hosts.tgt_ip, &key, dir.path(), "b");
    let mut on_a = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let mut on_b = Workload::start_in(Some(&hosts.tgt), 16).unwrap();

    // What the CLI refuses, A's service refuses: nothing started (2).
    let svc_pid = svc_a.0.id().to_string();
    let client = &hosts.lan().client;
    for (what, expect) in [
        (["pid", "1"], "host's init"),
        (["pid", svc_pid.as_str()], "phaul itself"),
        (["pid", "12; reboot"], "not a positive decimal number"),
        (["lxc; rm -rf /", "1"], "unknown kind"),
    ] {
        let r = controller(client, dir.path(), &a, &b, &key, &what);
        assert_eq!(r.status, 2, "{what:?}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{what:?}: {}", r.stderr);
        assert_eq!(r.json["success"], false);
    }
    let local = on_a.pid.to_string();
    let r = controller(
        client,
        dir.path(),
        &a,
        "unix:/run/x.sock",
        &key,
        &["pid", &local],
    );
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert!(r.stderr.contains("HOST:PORT"), "{}", r.stderr);
    let wrong = key_file(dir.path(), "not the key that the services hold", 0o600);
    let r = controller(client, dir.path(), &a, &b, &wrong, &["pid", &local]);
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);
    assert!(
        svc_a.0.try_wait().unwrap().is_none(),
        "A's service still serves"
    );

    // A tree in the hosts' shared PID namespace cannot get its PID back on
    // B (EEXIST) after the freeze: the order's end says rolled back (1),
    // and the tree runs on A again.
    let mut sleeper = Killed(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", hosts.src))
            .args(["setsid", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sp = i32::try_from(sleeper.0.id()).unwrap();
    let r = controller(client, dir.path(), &a, &b, &key, &["pid", &sp.to_string()]);
    assert_eq!(r.status, 1, "{}\n{}", r.stderr, r.json);
    assert_eq!(r.json["outcome"], "rolled-back", "{}", r.json);
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            process_state(sp),
            Some('S' | 'R')
        )
        .then_some(()))
        .is_some(),
        "the sleeper runs on A again: {:?}",
        process_state(sp)
    );
    sleeper.stop();

    // The real thing, both ways, ordered from the client host.
    moved(&hosts, dir.path(), &key, &mut on_a, &a, &b, &hosts.tgt);
    moved(&hosts, dir.path(), &key, &mut on_b, &b, &a, &hosts.src);
    svc_a.stop();
    svc_b.stop();
}

#[test]
fn a_controller_cancels_and_the_tree_stays_home() {
    let Some(_) = require_criu("a_controller_cancels_and_the_tree_stays_home") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::with_lan().unwrap();
    let key = key_file(dir.path(), "the cluster's key, long enough!", 0o600);
    let (mut svc_a, a) = service_on(&hosts.src, &hosts.src_ip, &key, dir.path(), "a");
    let (mut svc_b, b) = service_on(&hosts.tgt, &hosts.tgt_ip, &key, dir.path(), "b");
    // Large enough that the dump cannot end before the cancel arrives.
    let w = Workload::start_in(Some(&hosts.src), 256).unwrap();
    let pid = w.pid.to_string();
    let args = ["--from", &a, "--to", &b, "--mode", "stop-copy", "pid", &pid];
    let (child, json) = start_controller(&hosts.lan().client, dir.path(), &args, &key);
    // Once A's migration has reached B, ctrl-c the controller: it sends
    // the cancel, and A's service stops the migration.
    let b_log = dir.path().join("b/service.err");
    let reached = wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(&b_log)
            .ok()
            .filter(|s| s.contains("migration session opened"))
            .map(drop)
    });
    assert!(reached.is_some(), "the migration never reached B");
    let controller_pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(controller_pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let r = finished(child, &json);
    assert!(matches!(r.status, 1 | 2), "{}\n{}", r.stderr, r.json);
    assert!(
        matches!(
            r.json["outcome"].as_str(),
            Some("not-started" | "rolled-back")
        ),
        "{}",
        r.json
    );
    assert!(
        r.json["error"].as_str().unwrap().contains("cancelled"),
        "{}",
        r.json
    );
    // The tree runs on A, whole.
    assert!(Hosts::runs_in(&hosts.src, w.pid));
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());
    assert_eq!(w.memory_intact(w.pid), Some(true));
    svc_a.stop();
    svc_b.stop();
}
