//! The `phaul` and `phaul-service` example binaries, as a user runs them:
//! exit status, the `--json` report, and bad input. The migration test
//! needs root and CRIU 4 (skipped locally without them, a failure under CI).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use phaul_testkit::{Hosts, Workload, alive, require_criu, wait_until};

mod common;
use common::{key_file, phaul_migrate as phaul, service};

/// A real test's directory and hosts, the demo key, and a service on the
/// target holding it, with its address.
type Bed = (
    tempfile::TempDir,
    Hosts,
    std::path::PathBuf,
    common::Killed,
    String,
);

/// [`Bed`], or `None` (the test skips, said why) without root and CRIU.
fn bed(test: &str) -> Option<Bed> {
    require_criu(test)?;
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new().unwrap();
    let key = key_file(dir.path(), "the demo key, which is long enough", 0o600);
    let (svc, addr) = service(&hosts, &key, dir.path(), &[]);
    Some((dir, hosts, key, svc, addr))
}

/// An executable `/bin/sh` script `name` in `dir` running `body`.
fn script(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    p
}

fn assert_report_keys(v: &serde_json::Value) {
    for k in [
        "success",
        "mode",
        "downtime_ms",
        "total_ms",
        "iterations",
        "bytes_transferred",
        "error",
    ] {
        assert!(v.get(k).is_some(), "the report lacks {k:?}: {v}");
    }
}

#[test]
fn bad_pids_and_bad_keys_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let key = key_file(dir.path(), "a shared secret of 32 bytes here", 0o600);
    let k = key.to_str().unwrap();
    let missing = (400_000..4_000_000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .unwrap()
        .to_string();
    for (pid, expect) in [
        (missing.as_str(), "no process with PID"),
        ("1", "host's init"),
        ("12; reboot", "not a positive decimal number"),
        ("$(id)", "not a positive decimal number"),
    ] {
        let r = phaul(
            dir.path(),
            None,
            &["--to", "127.0.0.1:1", "--key-file", k, "pid", pid],
        );
        assert_eq!(r.status, 2, "{pid}: {}", r.stderr);
        assert!(r.stderr.contains(expect), "{pid}: {}", r.stderr);
        assert_report_keys(&r.json);
        assert_eq!(r.json["success"], false);
    }
    let mut sleeper = Command::new("sleep").arg("30").spawn().unwrap();
    let pid = sleeper.id().to_string();
    let short = key_file(dir.path(), "short", 0o600);
    let r = phaul(
        dir.path(),
        None,
        &[
            "--to",
            "127.0.0.1:1",
            "--key-file",
            short.to_str().unwrap(),
            "pid",
            &pid,
        ],
    );
    assert_eq!(r.status, 2);
    assert!(r.stderr.contains("at least 16 are needed"), "{}", r.stderr);
    let open = key_file(dir.path(), "a shared secret of 32 bytes here", 0o644);
    let r = phaul(
        dir.path(),
        None,
        &[
            "--to",
            "127.0.0.1:1",
            "--key-file",
            open.to_str().unwrap(),
            "pid",
            &pid,
        ],
    );
    assert_eq!(r.status, 2);
    assert!(r.stderr.contains("chmod 600"), "{}", r.stderr);
    let r = phaul(
        dir.path(),
        None,
        &[
            "--to",
            "127.0.0.1:1",
            "--key-file",
            k,
            "lxc; rm -rf /",
            &pid,
        ],
    );
    assert_eq!(r.status, 2);
    assert!(r.stderr.contains("unknown kind"), "{}", r.stderr);
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();
}

#[test]
fn the_cli_migrates_for_real_and_refuses_a_wrong_key_or_a_missing_service() {
    let Some((dir, hosts, key, mut svc, addr)) =
        bed("the_cli_migrates_for_real_and_refuses_a_wrong_key_or_a_missing_service")
    else {
        return;
    };
    let mut w = Workload::start_in(Some(&hosts.src), 32).unwrap();
    let pid = w.pid.to_string();

    // A wrong key: refused, and the workload is untouched.
    let wrong = key_file(dir.path(), "not the key the service holds!!!", 0o600);
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &[
            "--to",
            &addr,
            "--key-file",
            wrong.to_str().unwrap(),
            "pid",
            &pid,
        ],
    );
    // Refused at the handshake, before anything started: 2, not 1.
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert_report_keys(&r.json);
    assert_eq!(r.json["outcome"], "not-started");
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("authentication failed"),
        "{}",
        r.json
    );
    assert!(alive(w.pid));

    // No service there: a clear error, the workload untouched.
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &[
            "--to",
            &format!("{}:7071", hosts.tgt_ip),
            "--key-file",
            key.to_str().unwrap(),
            "pid",
            &pid,
        ],
    );
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert_eq!(r.json["outcome"], "not-started");
    assert!(
        r.json["error"]
            .as_str()
            .unwrap()
            .contains("link to the other host"),
        "{}",
        r.json
    );
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());

    // The real thing, with its events as JSON lines.
    let before = w.counter().unwrap();
    let events = dir.path().join("events.jsonl");
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &[
            "--to",
            &addr,
            "--key-file",
            key.to_str().unwrap(),
            "--mode",
            "stop-copy",
            "--events",
            events.to_str().unwrap(),
            "pid",
            &pid,
        ],
    );
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let named = |e: &str| lines.iter().filter(|l| l["event"] == e).count();
    assert!(
        named("phase") >= 4 && named("frozen") == 1 && named("resumed") == 1,
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l["event"] == "phase" && l["value"] == "image-transfer")
    );
    let sent: Vec<u64> = lines
        .iter()
        .map(|l| l["bytes_sent"].as_u64().unwrap())
        .collect();
    assert!(
        sent.windows(2).all(|p| p[0] <= p[1]),
        "bytes_sent went back: {sent:?}"
    );
    assert!(*sent.last().unwrap() >= 32 << 20, "{sent:?}");
    // The expected total comes before memory moves, and every line after
    // it carries it: the workload's 32 MiB, give or take the interpreter.
    let first = lines
        .iter()
        .position(|l| l["event"] == "expected")
        .expect("an expected event");
    assert!(
        lines[..first].iter().all(|l| l["event"] != "bytes"),
        "{lines:?}"
    );
    let expected = lines[first]["value"].as_u64().unwrap();
    assert!((32 << 20..256 << 20).contains(&expected), "{expected}");
    assert!(
        lines[first..]
            .iter()
            .all(|l| l["expected_bytes"] == expected),
        "{lines:?}"
    );
    let times: Vec<f64> = lines
        .iter()
        .map(|l| l["elapsed_ms"].as_f64().unwrap())
        .collect();
    assert!(times.windows(2).all(|p| p[0] <= p[1]));
    assert_eq!(r.status, 0, "{}\n{}", r.stderr, r.json);
    assert_report_keys(&r.json);
    assert_eq!(r.json["success"], true);
    assert_eq!(r.json["mode"], "stop-copy");
    assert!(r.json["error"].is_null());
    assert!(r.json["downtime_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(r.json["iterations"], 1);
    let new = i32::try_from(r.json["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(alive(new));
    assert!(
        Hosts::runs_in(&hosts.tgt, new),
        "PID {new} is in the target host"
    );
    assert_eq!(w.memory_intact(new), Some(true));
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
    assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());
    svc.stop();
}

/// `--switchover PROGRAM` runs the program while the target holds the
/// restored tree, with the migration named in its environment; a program
/// that fails rolls the migration back (exit 1), its last error line in
/// the report, and the tree runs on at home.
#[test]
fn a_switchover_program_runs_before_the_commit_and_its_failure_rolls_back() {
    let Some((dir, hosts, key, mut svc, addr)) =
        bed("a_switchover_program_runs_before_the_commit_and_its_failure_rolls_back")
    else {
        return;
    };
    let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let pid = w.pid.to_string();
    let seen = dir.path().join("seen");
    let refuse = script(
        dir.path(),
        "refuse.sh",
        &format!(
            "echo \"$PHAUL_KIND $PHAUL_ID $PHAUL_TARGET\" > {}\necho 'cannot move 10.0.0.5' >&2\nexit 3",
            seen.display()
        ),
    );
    let args = |program: &Path| {
        vec![
            "--to".to_string(),
            addr.clone(),
            "--key-file".into(),
            key.to_str().unwrap().into(),
            "--mode".into(),
            "stop-copy".into(),
            "--switchover".into(),
            program.to_str().unwrap().into(),
            "pid".into(),
            pid.clone(),
        ]
    };
    let before = w.counter().unwrap();
    let a = args(&refuse);
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.status, 1, "{}\n{}", r.stderr, r.json);
    assert_eq!(r.json["outcome"], "rolled-back", "{}", r.json);
    let error = r.json["error"].as_str().unwrap();
    assert!(
        error.contains("switch-over hook failed") && error.contains("cannot move 10.0.0.5"),
        "{error}"
    );
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        format!("pid {pid} {addr}")
    );
    assert!(
        w.counter_passes(before, Duration::from_secs(10)).is_some(),
        "the tree does not run at home"
    );
    assert_eq!(w.memory_intact(w.pid), Some(true));

    let accept = script(
        dir.path(),
        "accept.sh",
        &format!("echo ok > {}", seen.display()),
    );
    let a = args(&accept);
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    assert_eq!(r.status, 0, "{}\n{}", r.stderr, r.json);
    assert_eq!(std::fs::read_to_string(&seen).unwrap().trim(), "ok");
    let new = i32::try_from(r.json["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(Hosts::runs_in(&hosts.tgt, new));
    assert_eq!(w.memory_intact(new), Some(true));
    svc.stop();
}

/// Several KIND ID pairs are one group: a pair that names no process
/// refuses the whole group before anything freezes (exit 2, the other tree
/// untouched); two real trees move together (exit 0, a group report with
/// an entry per member and the group's downtime).
#[test]
fn several_pairs_move_as_one_group_or_not_at_all() {
    let Some((dir, hosts, key, mut svc, addr)) =
        bed("several_pairs_move_as_one_group_or_not_at_all")
    else {
        return;
    };
    let mut a = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let mut b = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let (pa, pb) = (a.pid.to_string(), b.pid.to_string());
    let key = key.to_str().unwrap();

    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &[
            "--to",
            &addr,
            "--key-file",
            key,
            "pid",
            &pa,
            "pid",
            "999999",
        ],
    );
    assert_eq!(r.status, 2, "{}\n{}", r.stderr, r.json);
    assert_eq!(r.json["outcome"], "not-started", "{}", r.json);
    assert!(alive(a.pid));
    let c = a.counter().unwrap();
    assert!(a.counter_passes(c, Duration::from_secs(10)).is_some());

    let events = dir.path().join("group-events.jsonl");
    let ev = events.to_str().unwrap();
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &[
            "--to",
            &addr,
            "--key-file",
            key,
            "--events",
            ev,
            "pid",
            &pa,
            "pid",
            &pb,
        ],
    );
    assert_eq!(r.status, 0, "{}\n{}", r.stderr, r.json);
    assert_eq!(r.json["outcome"], "succeeded", "{}", r.json);
    // Each event line names its member; both members froze once.
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    for m in r.json["members"].as_array().unwrap() {
        let id = &m["migration_id"];
        let frozen = lines
            .iter()
            .filter(|l| &l["migration"] == id && l["event"] == "frozen")
            .count();
        assert_eq!(frozen, 1, "{id}: {lines:?}");
    }
    assert!(r.json["downtime_ms"].as_f64().unwrap() > 0.0, "{}", r.json);
    let members = r.json["members"].as_array().unwrap();
    assert_eq!(members.len(), 2, "{}", r.json);
    for (m, w) in members.iter().zip([&mut a, &mut b]) {
        assert_report_keys(m);
        let before = w.counter().unwrap();
        let new = i32::try_from(m["target_pid"].as_i64().unwrap()).unwrap();
        w.adopt(new);
        assert_eq!(w.memory_intact(new), Some(true));
        assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
        let old = w.pid;
        assert!(wait_until(Duration::from_secs(10), || (!alive(old)).then_some(())).is_some());
    }
    svc.stop();

    // A target that lets one migration in at a time: the member that got
    // in waits for the other, which waits for its place; the queue's wait
    // ends it as busy, and nothing froze.
    let limited = dir.path().join("limited");
    std::fs::create_dir_all(&limited).unwrap();
    let flags = [
        "--max-migrations",
        "1",
        "--max-queued",
        "1",
        "--queue-wait",
        "1",
    ];
    let flags: Vec<&std::ffi::OsStr> = flags.iter().map(std::ffi::OsStr::new).collect();
    let (mut svc, addr) = service(&hosts, Path::new(key), &limited, &flags);
    let c = Workload::start_in(Some(&hosts.src), 8).unwrap();
    let d = Workload::start_in(Some(&hosts.src), 8).unwrap();
    let (pc, pd) = (c.pid.to_string(), d.pid.to_string());
    let r = phaul(
        dir.path(),
        Some(&hosts.src),
        &["--to", &addr, "--key-file", key, "pid", &pc, "pid", &pd],
    );
    assert_eq!(r.status, 2, "{}\n{}", r.stderr, r.json);
    assert_eq!(r.json["outcome"], "not-started", "{}", r.json);
    assert!(r.stderr.contains("busy"), "{}", r.stderr);
    for w in [&c, &d] {
        let n = w.counter().unwrap();
        assert!(w.counter_passes(n, Duration::from_secs(10)).is_some());
    }
    svc.stop();
}

/// A post-copy's images are in RAM on the target (see `ramdir`). A service
/// killed outright (SIGKILL, between the restore and the commit: from the
/// switch-over program) leaves them there, and the source rolls back; the
/// next service started on the same work directory removes them.
#[test]
fn a_killed_services_images_in_ram_go_with_the_next_service() {
    let Some((dir, hosts, key, mut svc, addr)) =
        bed("a_killed_services_images_in_ram_go_with_the_next_service")
    else {
        return;
    };
    let w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let seen = dir.path().join("ram");
    let body = format!(
        "for l in {}/*/0; do readlink \"$l\"; done > {}\nkill -9 {}\nexit 1",
        dir.path().join("target").display(),
        seen.display(),
        svc.0.id()
    );
    let kill = script(dir.path(), "kill.sh", &body);
    let before = w.counter().unwrap();
    let pid = w.pid.to_string();
    let args = [
        "--to",
        &addr,
        "--key-file",
        key.to_str().unwrap(),
        "--mode",
        "post-copy",
        "--switchover",
        kill.to_str().unwrap(),
        "pid",
        &pid,
    ];
    let r = phaul(dir.path(), Some(&hosts.src), &args);
    assert_ne!(r.status, 0, "{}\n{}", r.stderr, r.json);
    assert!(
        w.counter_passes(before, Duration::from_secs(20)).is_some(),
        "the tree does not run at home: {}",
        r.json
    );
    assert_eq!(w.memory_intact(w.pid), Some(true));
    let ram = std::fs::read_to_string(&seen).unwrap();
    let ram = Path::new(ram.trim());
    assert!(ram.starts_with("/dev/shm"), "not in RAM: {ram:?}");
    svc.stop();
    assert!(
        ram.is_dir(),
        "a killed service's images should still be there"
    );
    let (mut next, _) = service(&hosts, &key, dir.path(), &[]);
    assert!(
        wait_until(Duration::from_secs(10), || (!ram.exists()).then_some(())).is_some(),
        "the next service left {} in RAM",
        ram.display()
    );
    next.stop();
}
