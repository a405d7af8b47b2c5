//! The `embed` example, an orchestrator built on the facade alone, as its
//! user runs it: with real CRIU between two network-namespace hosts, each
//! of its outcomes (refused, rolled back, succeeded) comes out typed, with
//! its exit status, its events and its report, and the tree where the
//! outcome says it is. Needs root and CRIU 4 (skipped locally without them,
//! a failure under CI).

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use phaul_testkit::{Hosts, Workload, alive, process_state, require_criu, wait_until};

mod common;
use common::{Killed, example, key_file, service};

struct Run {
    status: i32,
    stderr: String,
    events: Vec<serde_json::Value>,
    report: serde_json::Value,
}

/// `embed TARGET KEY PID JOB` inside the source host; its stdout is JSON
/// lines, the events and then the report. Its work directory (the
/// default, under the temporary directory) is under `tmp`, where a failed
/// migration's CRIU logs stay.
fn embed(hosts: &Hosts, tmp: &Path, args: &[&str]) -> Run {
    let out = Hosts::command(&hosts.src, example("embed"))
        .env("TMPDIR", tmp)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let mut lines: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let report = lines.pop().unwrap_or_default();
    Run {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        events: lines,
        report,
    }
}

#[test]
fn the_embedding_example_tells_its_three_outcomes_apart() {
    let Some(_) = require_criu("the_embedding_example_tells_its_three_outcomes_apart") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new().unwrap();
    let key = key_file(dir.path(), "the embedder's key, long enough", 0o600);
    let k = key.to_str().unwrap();
    let (mut svc, addr) = service(&hosts, &key, dir.path(), &[]);
    let mut w = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let pid = w.pid.to_string();

    // A wrong key: refused at the handshake, before anything started.
    let wrong = key_file(dir.path(), "not the key the service holds!!!", 0o600);
    let r = embed(
        &hosts,
        dir.path(),
        &[&addr, wrong.to_str().unwrap(), &pid, "job-refused"],
    );
    assert_eq!(r.status, 2, "{}", r.stderr);
    assert_eq!(r.report["outcome"], "not-started", "{}", r.report);
    assert_eq!(r.report["migration_id"], "job-refused");
    assert!(r.stderr.contains("authentication failed"), "{}", r.stderr);
    let c = w.counter().unwrap();
    assert!(w.counter_passes(c, Duration::from_secs(10)).is_some());

    // A tree that shares its PID namespace with the target's: CRIU cannot
    // give it its PID back there (EEXIST) after the source froze, so it
    // rolls back and the source runs it again.
    let mut sleeper = Killed(
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", hosts.src))
            .args(["setsid", "sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let sp = i32::try_from(sleeper.0.id()).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || (process_state(sp) == Some('S'))
            .then_some(()))
        .is_some()
    );
    let r = embed(
        &hosts,
        dir.path(),
        &[&addr, k, &sp.to_string(), "job-rolled-back"],
    );
    assert_eq!(r.status, 1, "{}\n{}", r.stderr, r.report);
    assert_eq!(r.report["outcome"], "rolled-back", "{}", r.report);
    assert!(
        r.events.iter().any(|e| e["event"] == "frozen"),
        "{:?}",
        r.events
    );
    assert!(
        r.events
            .iter()
            .all(|e| e["migration"] == "job-rolled-back" && e["schema"] == 1),
        "{:?}",
        r.events
    );
    assert!(r.stderr.contains("RolledBack"), "{}", r.stderr);
    assert!(
        wait_until(Duration::from_secs(5), || matches!(
            process_state(sp),
            Some('S' | 'R')
        )
        .then_some(()))
        .is_some(),
        "the sleeper runs again: {:?}",
        process_state(sp)
    );
    sleeper.stop();

    // The real thing: the workload runs on the target, its memory intact.
    let before = w.counter().unwrap();
    let r = embed(&hosts, dir.path(), &[&addr, k, &pid, "job-42"]);
    assert_eq!(r.status, 0, "{}\n{}", r.stderr, r.report);
    assert_eq!(r.report["outcome"], "succeeded");
    assert_eq!(r.report["schema"], 1);
    assert_eq!(r.report["migration_id"], "job-42");
    let named = |e: &str| r.events.iter().filter(|l| l["event"] == e).count();
    assert!(
        named("mode") == 1 && named("resumed") == 1,
        "{:?}",
        r.events
    );
    assert!(r.events.iter().all(|e| e["migration"] == "job-42"));
    let new = i32::try_from(r.report["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(
        Hosts::runs_in(&hosts.tgt, new),
        "PID {new} is in the target host"
    );
    assert_eq!(w.memory_intact(new), Some(true));
    assert!(w.counter_passes(before, Duration::from_secs(10)).is_some());
    assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());
    svc.stop();
}
