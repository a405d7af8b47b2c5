//! A real runc container (Debian's runc, a busybox bundle built by hand)
//! migrated with its bundle between two "hosts" (network namespaces, each
//! with its own runc state directory), and known to runc on the target.
//! Needs root, CRIU 4 and runc (scripts/setup.sh).

use std::path::{Path, PathBuf};
use std::time::Duration;

use phaul_core::{Mode, Phase, Report};
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::{Hosts, require_criu, wait_until};

mod common;
use common::{Setup, Target, criu, migrate_from};

fn run(cmd: &mut std::process::Command) -> String {
    let out = cmd.stdin(std::process::Stdio::null()).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A busybox bundle whose process counts into /tmp/count every 0.2 s, and
/// holds a TCP connection over its own loopback: `nc` listening on port
/// 7000 writes into /tmp/recv what another `nc` sends it, a number every
/// 0.1 s.
fn bundle(dir: &Path, cgroup: &str) {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "tmp", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox")).unwrap();
    // A test forking in another thread may hold the copy's descriptor open
    // for a moment (until its exec): running it then fails with ETXTBSY.
    let mut installed = false;
    for _ in 0..50 {
        let out = std::process::Command::new("chroot")
            .arg(&rootfs)
            .args(["/bin/busybox", "--install", "-s", "/bin"])
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        installed = out.status.success();
        if installed {
            break;
        }
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("Text file busy"), "busybox --install: {err}");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(installed, "busybox --install: the copy stayed busy");
    run(std::process::Command::new("runc")
        .arg("spec")
        .current_dir(dir));
    let path = dir.join("config.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    v["process"]["terminal"] = false.into();
    v["root"]["readonly"] = false.into();
    v["linux"]["cgroupsPath"] = cgroup.into();
    v["process"]["args"] = serde_json::json!([
        "/bin/sh",
        "-c",
        "exec </dev/null >/dev/null 2>&1; sleep 999999 | nc -l -p 7000 > /tmp/recv & sleep 0.3; \
         (j=0; while true; do j=$((j+1)); echo $j; sleep 0.1; done | nc 127.0.0.1 7000) & \
         i=0; while true; do i=$((i+1)); echo $i > /tmp/count; sleep 0.2; done"
    ]);
    std::fs::write(&path, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

fn runc(root: &Path) -> std::process::Command {
    let mut c = std::process::Command::new("runc");
    c.arg("--root").arg(root);
    c
}

fn status(root: &Path, id: &str) -> Option<String> {
    let out = runc(root)
        .args(["state", id])
        .stdin(std::process::Stdio::null())
        .output()
        .ok()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    v["status"].as_str().map(str::to_string)
}

/// The last number the container's loopback connection carried.
fn received(bundle: &Path) -> Option<u64> {
    phaul_testkit::last_number_in(&bundle.join("rootfs/tmp/recv"))
}

fn counter(bundle: &Path) -> Option<u64> {
    std::fs::read_to_string(bundle.join("rootfs/tmp/count"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The counter, waiting out the moment the shell has truncated the file
/// and not yet written the next number (`echo $i > /tmp/count`), when a
/// read finds it empty.
fn counter_now(bundle: &Path) -> u64 {
    wait_until(Duration::from_secs(2), || counter(bundle))
        .unwrap_or_else(|| panic!("no counter in {}", bundle.display()))
}

/// Kills and deletes the container in both state dirs, and removes the
/// cgroups runc leaves behind.
struct Cleanup(String, Vec<PathBuf>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for root in &self.1 {
            let _ = runc(root).args(["kill", &self.0, "KILL"]).output();
            let _ = runc(root).args(["delete", "-f", &self.0]).output();
        }
        for top in ["phaul-test", "phaul"] {
            if let Ok(hs) = std::fs::read_dir("/sys/fs/cgroup") {
                for h in hs.flatten() {
                    let base = h.path().join(top);
                    if let Ok(es) = std::fs::read_dir(&base) {
                        for e in es.flatten() {
                            if e.file_name().to_string_lossy().starts_with(&self.0) {
                                let _ = std::fs::remove_dir(e.path());
                            }
                        }
                    }
                    let _ = std::fs::remove_dir(&base);
                }
            }
        }
    }
}

/// After a failed migration: runc runs the container on the source again,
/// and it counts on.
fn assert_runs_on_source(src: &Paths, id: &str, bundle: &Path) {
    assert_eq!(
        status(&src.runc_root, id).as_deref(),
        Some("running"),
        "not resumed on the source"
    );
    let c = counter_now(bundle);
    assert!(
        wait_until(Duration::from_secs(10), || counter(bundle)
            .filter(|x| *x > c))
        .is_some(),
        "the source does not count"
    );
}

fn migrate(hosts: &Hosts, bin: &Path, id: &str, src: &Paths, tgt: &Paths) -> Report {
    let freeze = phaul_core::source::DEFAULT_FREEZE_TIMEOUT;
    migrate_with(hosts, bin, id, src, tgt, Mode::Auto, freeze, None)
}

/// What the switch-over hook does, while the target holds its copy.
#[derive(Clone)]
enum Switchover {
    /// Checks that the copy does not run: its counter in this (target)
    /// bundle stays put for a second.
    StaysPut(PathBuf),
    /// Fails, as an orchestrator that cannot move the address would.
    Refuses,
}

/// Moves the container in `mode` under a freeze limit, with a switch-over
/// hook if `held` says which.
#[allow(clippy::too_many_arguments)]
fn migrate_with(
    hosts: &Hosts,
    bin: &Path,
    id: &str,
    src: &Paths,
    tgt: &Paths,
    mode: Mode,
    freeze: Duration,
    held: Option<Switchover>,
) -> Report {
    let target = Target::start_with(
        hosts,
        criu(bin),
        Setup {
            paths: Some(tgt.clone()),
            ..Setup::default()
        },
    );
    let (id, p) = (id.to_string(), src.clone());
    let open = move || source_in("runc", &id, &p).unwrap();
    let (report, _work) = migrate_from(&hosts.src, bin, &target.addr, open, move |m| {
        let m = m.mode(mode).freeze_timeout(freeze);
        match held {
            None => m,
            Some(check) => m.switchover(move || {
                let check = check.clone();
                async move {
                    match check {
                        Switchover::StaysPut(bundle) => {
                            tokio::task::spawn_blocking(move || stays_put(&bundle))
                                .await
                                .map_err(|e| e.to_string())?
                        }
                        Switchover::Refuses => Err("the address cannot move".to_string()),
                    }
                }
            }),
        }
    });
    drop(target);
    report
}

/// The counter in `bundle` stays put for a second (it counts five times a
/// second when its container runs).
fn stays_put(bundle: &Path) -> Result<(), String> {
    let before = counter(bundle);
    std::thread::sleep(Duration::from_secs(1));
    match counter(bundle) {
        now if now == before && now.is_some() => Ok(()),
        now => Err(format!("the held copy counted: {before:?} -> {now:?}")),
    }
}

/// A counting container `phrcPIDtag` run by runc on the source, and the
/// hosts' runc paths: the test's directory, the id, the source's and the
/// target's paths, the source's bundle, and what kills and deletes the
/// container in both (last, so that it is dropped first).
fn setup(tag: &str, bin: &Path) -> (tempfile::TempDir, String, Paths, Paths, PathBuf, Cleanup) {
    let base = tempfile::Builder::new()
        .prefix("phaul-runc-")
        .tempdir()
        .unwrap();
    let id = format!("phrc{}{tag}", std::process::id() % 100_000);
    let src_bundle = base.path().join("bundle-src");
    bundle(&src_bundle, &format!("/phaul-test/{id}"));
    let mk = |n: &str| {
        let p = base.path().join(n);
        std::fs::create_dir_all(&p).unwrap();
        p
    };
    let src = Paths {
        runc_root: mk("root-a"),
        criu: bin.to_path_buf(),
        ..Paths::default()
    };
    let tgt = Paths {
        runc_root: mk("root-b"),
        runc_bundles: mk("bundles-b"),
        criu: bin.to_path_buf(),
        ..Paths::default()
    };
    let out = std::fs::File::create(base.path().join("run.out")).unwrap();
    run(runc(&src.runc_root)
        .args(["run", "-d", &id])
        .current_dir(&src_bundle)
        .stdout(out.try_clone().unwrap())
        .stderr(out));
    assert!(
        wait_until(Duration::from_secs(20), || counter(&src_bundle)
            .filter(|c| *c > 2))
        .is_some(),
        "the container does not count"
    );
    let cleanup = Cleanup(
        id.clone(),
        vec![src.runc_root.clone(), tgt.runc_root.clone()],
    );
    (base, id, src, tgt, src_bundle, cleanup)
}

/// `auto` moves it by post-copy: runc checkpoints lazily and its CRIU
/// serves the memory through phaul's page channel to the lazy-pages daemon
/// behind `runc restore --lazy-pages`.
#[test]
fn a_runc_container_moves_with_its_bundle_and_memory() {
    moves_a_container("m", Mode::Auto, "post-copy");
}

#[test]
fn a_runc_container_moves_by_stop_copy() {
    moves_a_container("s", Mode::StopCopy, "stop-copy");
}

fn moves_a_container(tag: &str, mode: Mode, expected: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_TEST_LOG"))
        .with_test_writer()
        .try_init();
    let Some(bin) = require_criu("a_runc_container_moves_with_its_bundle_and_memory") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_base, id, src, tgt, src_bundle, _cleanup) = setup(tag, &bin);
    let before = counter_now(&src_bundle);
    let sent = wait_until(Duration::from_secs(10), || {
        received(&src_bundle).filter(|n| *n > 3)
    })
    .expect("the container's loopback connection carries data");
    let freeze = phaul_core::source::DEFAULT_FREEZE_TIMEOUT;
    // The target's copy does not run before the commit (see stays_put).
    let tb = tgt.runc_bundles.join(&id);
    let held = Some(Switchover::StaysPut(tb));
    let r = migrate_with(&hosts, &bin, &id, &src, &tgt, mode, freeze, held);
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, expected, "{}", r.mode_reason);
    if mode == Mode::Auto {
        // Why not pre-copy: the kind, not the hosts.
        assert!(r.mode_reason.contains("the runc kind"), "{}", r.mode_reason);
    }
    // runc knows it on the target and runs it; it is gone from the source.
    assert_eq!(status(&tgt.runc_root, &id).as_deref(), Some("running"));
    assert_eq!(status(&src.runc_root, &id), None);
    // It counts on from its memory in the migrated bundle.
    let tb = tgt.runc_bundles.join(&id);
    let c1 = counter_now(&tb);
    assert!(c1 >= before, "{c1} < {before}");
    assert!(
        wait_until(Duration::from_secs(10), || counter(&tb).filter(|c| *c > c1)).is_some(),
        "no counting on the target"
    );
    // Its loopback is up again, and the connection over it goes on.
    let pid = r.target_pid.unwrap();
    let lo = std::process::Command::new("nsenter")
        .arg(format!("--net=/proc/{pid}/ns/net"))
        .args(["ip", "-br", "link", "show", "lo"])
        .output()
        .unwrap();
    let lo = String::from_utf8_lossy(&lo.stdout).into_owned();
    assert!(
        lo.contains("UP") || lo.contains("UNKNOWN"),
        "loopback: {lo}"
    );
    let n1 = received(&tb).expect("the loopback connection carried data");
    assert!(n1 >= sent);
    assert!(
        wait_until(Duration::from_secs(10), || received(&tb)
            .filter(|n| *n > n1 + 5))
        .is_some(),
        "the connection over loopback stopped after the move: {:?} {:?}",
        std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ss", "-tanpi"])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
        std::process::Command::new("ps")
            .args(["-o", "pid,stat,args", "--ppid", &pid.to_string()])
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned()),
    );
}

/// A switch-over hook that fails while the target holds its restored copy
/// rolls back: CRIU kills the copy it held (it never ran), runc on the
/// target has no container, and the source's counts on.
#[test]
fn a_held_runc_copy_is_dropped_when_the_switchover_fails() {
    let Some(bin) = require_criu("a_held_runc_copy_is_dropped_when_the_switchover_fails") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_base, id, src, tgt, src_bundle, _cleanup) = setup("w", &bin);
    let freeze = phaul_core::source::DEFAULT_FREEZE_TIMEOUT;
    let held = Some(Switchover::Refuses);
    let r = migrate_with(&hosts, &bin, &id, &src, &tgt, Mode::PostCopy, freeze, held);
    assert!(!r.success, "the hook was expected to fail the migration");
    let error = r.error.clone().unwrap_or_default();
    assert!(error.contains("the address cannot move"), "{error}");
    assert_eq!(r.outcome, phaul_core::Outcome::RolledBack, "{error}");
    assert_runs_on_source(&src, &id, &src_bundle);
    assert_eq!(
        status(&tgt.runc_root, &id),
        None,
        "runc on the target kept it"
    );
    assert!(
        !tgt.runc_bundles.join(&id).exists(),
        "the target kept the bundle"
    );
}

#[test]
fn a_runc_restore_failing_on_the_target_resumes_the_source() {
    let Some(bin) = require_criu("a_runc_restore_failing_on_the_target_resumes_the_source") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_base, id, src, tgt, src_bundle, _cleanup) = setup("f", &bin);
    // runc on the target runs the CRIU the service names (`runc --criu`):
    // a stand-in in front of the real one whose restores fail for real.
    let (_standin, wrapper) = common::criu_failing_restores(&bin);
    let tgt = Paths {
        criu: wrapper,
        ..tgt
    };
    let r = migrate(&hosts, &bin, &id, &src, &tgt);
    assert!(!r.success, "the restore was expected to fail");
    assert_eq!(r.phase_reached, Phase::Rollback, "{:?}", r.error);
    assert_runs_on_source(&src, &id, &src_bundle);
    assert!(
        !tgt.runc_bundles.join(&id).exists(),
        "the target kept the bundle"
    );
}

/// A `runc checkpoint` that hangs (its CRIU never answers) is killed, with
/// the CRIU it started, when the freeze limit passes; the container runs on
/// the source again and nothing of it is left on the target.
#[test]
fn a_hung_runc_checkpoint_is_killed_at_the_freeze_limit_and_the_container_resumed() {
    let Some(bin) = require_criu(
        "a_hung_runc_checkpoint_is_killed_at_the_freeze_limit_and_the_container_resumed",
    ) else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (base, id, src, tgt, src_bundle, _cleanup) = setup("h", &bin);
    // runc on the source runs this as its CRIU: it never answers.
    let hung = base.path().join("hung-criu");
    std::fs::write(&hung, "#!/bin/sh\nexec sleep 600\n").unwrap();
    std::fs::set_permissions(&hung, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let src = Paths {
        criu: hung.clone(),
        ..src
    };
    let limit = Duration::from_secs(3);
    // Both ways runc dumps: whole, and lazily (post-copy).
    for mode in [Mode::StopCopy, Mode::PostCopy] {
        let t0 = std::time::Instant::now();
        let r = migrate_with(&hosts, &bin, &id, &src, &tgt, mode, limit, None);
        let took = t0.elapsed();
        assert!(!r.success, "{mode}: a hung checkpoint cannot succeed");
        let error = r.error.clone().unwrap_or_default();
        assert!(error.contains("freeze timeout"), "{mode}: {error}");
        // Pre-flight and connecting take a second or two; the freeze the rest.
        assert!(
            took < limit + Duration::from_secs(15),
            "{mode}: took {took:?}"
        );
        assert_runs_on_source(&src, &id, &src_bundle);
        assert_eq!(
            status(&tgt.runc_root, &id),
            None,
            "{mode}: the target has a copy"
        );
        let left = std::process::Command::new("pgrep")
            .args(["-f", &hung.display().to_string()])
            .output()
            .unwrap();
        assert!(
            left.stdout.is_empty(),
            "{mode}: the hung CRIU lives on: {}",
            String::from_utf8_lossy(&left.stdout)
        );
    }
}
