//! `examples/balance.rs` for real: two candidate trees on host A, none on
//! B; the controller, on a third host, asks both phaul-services what they
//! run and orders A's larger tree (two processes against one) moved to B,
//! with real CRIU. Its memory survives and its counter goes on; the
//! smaller tree and a process nobody named stay on A. Run again, it finds
//! the hosts balanced and moves nothing. Needs root and CRIU 4 (skipped
//! locally without them, a failure under CI).

use std::process::{Command, Stdio};
use std::time::Duration;

use phaul_testkit::{Hosts, Workload, alive, require_criu, wait_until};

mod common;
use common::{Killed, example, key_file, service_on};

/// `balance --key-file KEY ARGS... A B` on the client host, to its end:
/// its exit status, stdout and stderr.
fn balance(
    hosts: &Hosts,
    key: &std::path::Path,
    args: &[String],
    a: &str,
    b: &str,
) -> (i32, String, String) {
    let out = Hosts::command(&hosts.lan().client, example("balance"))
        .arg("--key-file")
        .arg(key)
        .args(args)
        .args([a, b])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), stdout, stderr)
}

/// The processes whose parent is `pid`.
fn children(pid: i32) -> Vec<i32> {
    let list = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children"));
    list.unwrap_or_default()
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect()
}

#[test]
fn the_controller_moves_the_larger_tree_to_the_emptier_host() {
    let Some(_) = require_criu("the_controller_moves_the_larger_tree_to_the_emptier_host") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::with_lan().unwrap();
    let key = key_file(dir.path(), "the cluster's key, long enough!", 0o600);
    let (mut svc_a, a) = service_on(&hosts.src, &hosts.src_ip, &key, dir.path(), "a");
    let (mut svc_b, b) = service_on(&hosts.tgt, &hosts.tgt_ip, &key, dir.path(), "b");
    let small = Workload::start_in(Some(&hosts.src), 16).unwrap();
    let mut big = Workload::start_in(Some(&hosts.src), 16).unwrap();
    // The big tree gets a second process: a sleep started in its PID
    // namespace whose shell exits at once, so the namespace's init (the
    // workload) adopts it.
    let status = Command::new("nsenter")
        .args(["--target", &big.pid.to_string(), "--pid", "--net", "--"])
        .args(["sh", "-c", "setsid sleep 600 </dev/null >/dev/null 2>&1 &"])
        .status()
        .unwrap();
    assert!(status.success());
    let sleep = wait_until(Duration::from_secs(10), || {
        children(big.pid).first().copied()
    })
    .expect("the workload adopts the sleep");
    // A process of A nobody named as a candidate.
    let mut bystander = Killed(
        Hosts::command(&hosts.src, "setsid")
            .args(["sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let bystander_pid = i32::try_from(bystander.0.id()).unwrap();

    let candidates = |pids: &[i32]| -> Vec<String> {
        pids.iter()
            .flat_map(|p| ["--candidate-pid".to_string(), p.to_string()])
            .collect()
    };
    // Naming nothing is refused: the controller moves only candidates.
    let (code, _, err) = balance(&hosts, &key, &[], &a, &b);
    assert_ne!(code, 0);
    assert!(err.contains("name the candidates"), "{err}");

    let mut args = candidates(&[small.pid, big.pid]);
    args.push("--dry-run".into());
    let (code, out, err) = balance(&hosts, &key, &args, &a, &b);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&format!("{a}: 2 candidate trees")), "{out}");
    assert!(out.contains(&format!("{b}: 0 candidate trees")), "{out}");
    let order = format!("moving PID {} (2 processes) from {a} to {b}", big.pid);
    assert!(out.contains(&order), "{out}");
    assert!(
        Hosts::runs_in(&hosts.src, big.pid),
        "a dry run moves nothing"
    );

    let before = big.counter().unwrap();
    let (code, out, err) = balance(&hosts, &key, &candidates(&[small.pid, big.pid]), &a, &b);
    assert_eq!(code, 0, "{out}\n{err}");
    assert!(out.contains(&order), "{out}");
    // The last line is the migration's report.
    let report: serde_json::Value = serde_json::from_str(out.lines().last().unwrap()).unwrap();
    assert_eq!(report["outcome"], "succeeded", "{report}");
    assert_eq!(report["migration_id"], format!("balance-{}", big.pid));
    let new = i32::try_from(report["target_pid"].as_i64().unwrap()).unwrap();
    big.adopt(new);
    assert!(Hosts::runs_in(&hosts.tgt, new), "PID {new} runs on B");
    assert_eq!(children(new).len(), 1, "its sleep came along");
    assert_eq!(big.memory_intact(new), Some(true));
    assert!(
        big.counter_passes(before, Duration::from_secs(10))
            .is_some()
    );
    assert!(wait_until(Duration::from_secs(10), || (!alive(big.pid)).then_some(())).is_some());
    let gone = wait_until(Duration::from_secs(10), || (!alive(sleep)).then_some(()));
    assert!(gone.is_some(), "the sleep left A with its tree");
    // What was not chosen stays home and runs.
    assert!(Hosts::runs_in(&hosts.src, small.pid));
    let c = small.counter().unwrap();
    assert!(small.counter_passes(c, Duration::from_secs(10)).is_some());
    assert!(Hosts::runs_in(&hosts.src, bystander_pid));

    // One each now: balanced, nothing moves.
    let (code, out, _) = balance(&hosts, &key, &candidates(&[small.pid, new]), &a, &b);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("balanced: nothing to move"), "{out}");
    assert!(Hosts::runs_in(&hosts.src, small.pid));
    assert!(Hosts::runs_in(&hosts.tgt, new));
    bystander.stop();
    svc_a.stop();
    svc_b.stop();
}
