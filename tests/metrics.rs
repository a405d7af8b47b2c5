//! A service's metrics for real: `phaul-service --metrics` in the target
//! host, one migration whose restore fails (CRIU's, for real) and one that
//! commits, moved by `phaul migrate` between network-namespace hosts; then
//! `GET /metrics` says so. Needs root, CRIU 4 and curl (skipped locally
//! without them, a failure under CI).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use phaul_testkit::{Hosts, Workload, alive, require_criu, require_program, wait_until};

mod common;
use common::{cli_stop_copy as migrate, example, key_file, sample, service, service_on};

/// A stand-in in front of the real CRIU whose restores fail while `flag`
/// exists: it then runs CRIU with a configuration naming an LSM profile
/// this kernel lacks, which only a restore reads.
fn criu_failing_while(dir: &Path, bin: &Path, flag: &Path) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let conf = dir.join("restore-fails.conf");
    std::fs::write(&conf, "lsm-profile apparmor:phaul-test\n").unwrap();
    let path = dir.join("criu-failing-while");
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nif [ -e {flag} ]; then export CRIU_CONFIG_FILE={conf}; fi\nexec {bin} \"$@\"\n",
            flag = flag.display(),
            conf = conf.display(),
            bin = bin.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// `GET /metrics` from inside host `ns`: the status line's code, the
/// content type and the body.
fn scrape(ns: &str, url: &str) -> (String, String, String) {
    let out = Hosts::command(ns, "curl")
        .args([
            "-sS",
            "-o",
            "-",
            "-w",
            "\n%{http_code} %{content_type}",
            url,
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    let (body, tail) = text.rsplit_once('\n').unwrap();
    let (code, ctype) = tail.split_once(' ').unwrap();
    (code.into(), ctype.into(), format!("{body}\n"))
}

#[test]
fn the_service_counts_a_failed_and_a_committed_migration_in_its_metrics() {
    let test = "the_service_counts_a_failed_and_a_committed_migration_in_its_metrics";
    let Some(bin) = require_criu(test) else {
        return;
    };
    if !require_program(test, "curl", "install curl") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hosts = Hosts::new().unwrap();
    let key = key_file(dir.path(), "the demo key, which is long enough", 0o600);
    let flag = dir.path().join("restores-fail");
    let criu = criu_failing_while(dir.path(), &bin, &flag);
    let (mut svc, addr) = service(
        &hosts,
        &key,
        dir.path(),
        &[
            "--criu".as_ref(),
            criu.as_os_str(),
            "--metrics".as_ref(),
            "127.0.0.1:9464".as_ref(),
        ],
    );
    wait_until(Duration::from_secs(10), || {
        std::fs::read_to_string(dir.path().join("service.log"))
            .ok()
            .filter(|s| s.contains("metrics on http://127.0.0.1:9464/metrics"))
            .map(drop)
    })
    .expect("the service serves its metrics");
    let url = "http://127.0.0.1:9464/metrics";
    let (_, _, before) = scrape(&hosts.tgt, url);
    assert_eq!(sample(&before, "phaul_migrations_running"), 0.0);

    let mut w = Workload::start_in(Some(&hosts.src), 32).unwrap();
    // CRIU's restore fails on the target: rolled back, the source runs on.
    std::fs::write(&flag, b"").unwrap();
    let (status, stderr, report) = migrate(&hosts, dir.path(), &addr, &key, w.pid);
    assert_ne!(status, 0, "{stderr}");
    assert_eq!(report["outcome"], "rolled-back", "{report}");
    assert!(alive(w.pid) && Hosts::runs_in(&hosts.src, w.pid));

    // The same tree again, restores working: it moves.
    std::fs::remove_file(&flag).unwrap();
    let before = w.counter().unwrap();
    let (status, stderr, report) = migrate(&hosts, dir.path(), &addr, &key, w.pid);
    assert_eq!(status, 0, "{stderr}");
    let new = i32::try_from(report["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(new);
    assert!(Hosts::runs_in(&hosts.tgt, new));
    assert!(wait_until(Duration::from_secs(10), || (!alive(w.pid)).then_some(())).is_some());

    let (code, ctype, text) = scrape(&hosts.tgt, url);
    assert_eq!(code, "200");
    assert_eq!(ctype, "text/plain; version=0.0.4; charset=utf-8");
    let total = "phaul_migrations_total{kind=\"pid\",mode=\"stop-copy\"";
    assert_eq!(
        sample(&text, &format!("{total},outcome=\"committed\"}}")),
        1.0
    );
    assert_eq!(sample(&text, &format!("{total},outcome=\"failed\"}}")), 1.0);
    assert!(!text.contains("outcome=\"rolled_back\""), "{text}");
    assert_eq!(sample(&text, "phaul_migrations_running"), 0.0);
    // Only the committed one has a downtime and a total time here, and
    // the one includes the other.
    for h in [
        "phaul_migration_downtime_seconds",
        "phaul_migration_duration_seconds",
    ] {
        assert_eq!(sample(&text, &format!("{h}_count")), 1.0, "{text}");
        assert_eq!(sample(&text, &format!("{h}_bucket{{le=\"+Inf\"}}")), 1.0);
        assert!(sample(&text, &format!("{h}_sum")) > 0.0, "{text}");
    }
    assert!(
        sample(&text, "phaul_migration_downtime_seconds_sum")
            <= sample(&text, "phaul_migration_duration_seconds_sum")
    );
    // Both migrations sent the workload's 32 MiB, images or pages.
    let received = sample(&text, "phaul_received_bytes_total{what=\"images\"}")
        + sample(&text, "phaul_received_bytes_total{what=\"pages\"}");
    assert!(received >= f64::from(2 * (32 << 20)), "{text}");
    assert_eq!(
        sample(&text, "phaul_received_bytes_total{what=\"fs\"}"),
        0.0
    );

    // And the tree runs on in the target host.
    let moved = wait_until(Duration::from_secs(10), || {
        w.counter_passes(before, Duration::from_secs(1))
    });
    assert!(moved.is_some(), "the counter goes on");
    assert_eq!(sample(&text, "phaul_sent_bytes_total"), 0.0);

    // Ordered by a controller, the service is a source: it moves the tree
    // back to a service in the source host, and counts what it sent.
    let (mut back, back_addr) = service_on(&hosts.src, &hosts.src_ip, &key, dir.path(), "back");
    let json = dir.path().join("back.json");
    let out = Hosts::command(&hosts.src, example("phaul"))
        .arg("migrate")
        .arg("--json")
        .arg(&json)
        .args(["--from", &addr, "--to", &back_addr, "--key-file"])
        .arg(&key)
        .args(["--mode", "stop-copy", "pid", &new.to_string()])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let home = i32::try_from(report["target_pid"].as_i64().unwrap()).unwrap();
    w.adopt(home);
    assert!(Hosts::runs_in(&hosts.src, home), "{report}");
    let (_, _, text) = scrape(&hosts.tgt, url);
    assert!(
        sample(&text, "phaul_sent_bytes_total") >= f64::from(32 << 20),
        "{text}"
    );
    // Sent, not received: the received counts and outcomes are as before.
    assert_eq!(
        sample(&text, &format!("{total},outcome=\"committed\"}}")),
        1.0
    );
    assert_eq!(sample(&text, "phaul_migrations_running"), 0.0);
    back.stop();
    svc.stop();
}
