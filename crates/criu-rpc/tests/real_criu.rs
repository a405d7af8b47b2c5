//! criu-rpc against the real `criu` binary, as root.
//!
//! Each test runs a real workload (python holding memory with a known
//! pattern and a counter, as PID 1 of its own PID namespace) and checks its
//! state after CRIU is done with it. Without root or CRIU 4 the tests skip
//! with a message; under `CI` they fail instead (`phaul_testkit::require_criu`).

use std::path::Path;
use std::time::Duration;

use criu_rpc::image::{read_dump_stats, read_restore_stats};
use criu_rpc::proto::{CriuReq, CriuReqType};
use criu_rpc::{Criu, Error, Event, Opts, Script, Version};
use phaul_testkit::{Workload, alive, process_state, require_criu, wait_until};

/// No test may hang: each body runs under this limit.
const LIMIT: Duration = Duration::from_secs(180);

fn criu(bin: &Path) -> Criu {
    Criu::with_binary(bin).quiet(true)
}

fn imgdir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("criu-rpc-test-")
        .tempdir()
        .unwrap()
}

async fn limited<F: std::future::Future<Output = ()>>(f: F) {
    tokio::time::timeout(LIMIT, f)
        .await
        .expect("test exceeded its time limit");
}

/// Restores from `dir` and checks the copy: memory intact, counter moving on
/// from where the dump left it.
async fn restore_and_check(c: &Criu, w: &mut Workload, dir: &Path, dumped_at: u64) -> i32 {
    let restored = c
        .connect()
        .await
        .unwrap()
        .restore(
            Opts::new()
                .images_dir(dir)
                .log_file("restore.log")
                .log_level(4),
        )
        .await
        .unwrap()
        .finish()
        .await
        .unwrap_or_else(|e| panic!("restore failed: {e}"));
    w.adopt(restored.pid);
    assert!(
        alive(restored.pid),
        "restored pid {} is not running",
        restored.pid
    );
    let next = w
        .counter_passes(dumped_at, Duration::from_secs(20))
        .expect("the restored workload's counter does not move");
    assert!(next > dumped_at);
    assert_eq!(
        w.memory_intact(restored.pid),
        Some(true),
        "memory checksum after restore"
    );
    restored.pid
}

#[tokio::test]
async fn version_is_4_or_newer() {
    let Some(bin) = require_criu("version_is_4_or_newer") else {
        return;
    };
    limited(async {
        let v = criu(&bin).ensure_version(&Version::MINIMUM).await.unwrap();
        assert!(v.major >= 4, "{v}");
        // Cross-check with the command line's own answer.
        let out = std::process::Command::new(&bin)
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(&format!("Version: {v}")), "{text} vs {v}");

        // A demand for a newer CRIU than this one is a typed error.
        let need = Version::new(v.major + 1, 0, 0);
        match criu(&bin).ensure_version(&need).await {
            Err(Error::TooOld { have, need: n }) => {
                assert_eq!(have, v);
                assert_eq!(n, need);
            }
            other => panic!("expected TooOld, got {other:?}"),
        }

        // A session keeps going after keep-open requests.
        let mut s = criu(&bin).connect().await.unwrap();
        assert_eq!(s.version().await.unwrap(), v);
        assert_eq!(s.version().await.unwrap(), v);
        s.check().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn feature_check_agrees_with_the_kernel() {
    let Some(bin) = require_criu("feature_check_agrees_with_the_kernel") else {
        return;
    };
    limited(async {
        let f = criu(&bin)
            .connect()
            .await
            .unwrap()
            .feature_check()
            .await
            .unwrap();
        // The command line's checks are the reference for this kernel.
        let cli = |feature: &str| {
            std::process::Command::new(&bin)
                .args(["check", "--feature", feature])
                .output()
                .unwrap()
                .status
                .success()
        };
        assert_eq!(f.mem_track, cli("mem_dirty_track"), "mem_track");
        assert_eq!(f.lazy_pages, cli("uffd-noncoop"), "lazy_pages");
        // What this project's machines have: no soft-dirty, but userfaultfd.
        if std::env::var_os("CI").is_some() {
            assert!(
                !f.mem_track,
                "this kernel was expected to lack soft-dirty tracking"
            );
            assert!(
                f.lazy_pages,
                "this kernel was expected to support lazy pages"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn dump_then_restore_keeps_memory_and_counter() {
    let Some(bin) = require_criu("dump_then_restore_keeps_memory_and_counter") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let mut w = Workload::start(64).unwrap();
        w.counter_passes(3, Duration::from_secs(10)).unwrap();
        let dir = imgdir();
        // The images dir as an open fd rather than a path.
        let dir_fd: std::os::fd::OwnedFd = std::fs::File::open(dir.path()).unwrap().into();
        c.connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir_fd(dir_fd)
                    .pid(w.pid)
                    .log_file("dump.log")
                    .log_level(4),
            )
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let dumped_at = w.counter().unwrap();
        assert!(wait_until(Duration::from_secs(5), || (!alive(w.pid)).then_some(())).is_some());
        restore_and_check(&c, &mut w, dir.path(), dumped_at).await;
        let rs = read_restore_stats(dir.path()).unwrap();
        assert!(rs.restore_time > 0);
    })
    .await;
}

#[tokio::test]
async fn post_dump_can_be_held_then_failed_or_acknowledged() {
    let Some(bin) = require_criu("post_dump_can_be_held_then_failed_or_acknowledged") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let mib = 32u32;
        let w = Workload::start(mib).unwrap();
        w.counter_passes(3, Duration::from_secs(10)).unwrap();

        // 1. Hold, then answer failure: the tree resumes, intact.
        let dir = imgdir();
        let mut ex = c
            .connect()
            .await
            .unwrap()
            .dump(Opts::new().images_dir(dir.path()).pid(w.pid).notify_scripts(true))
            .await
            .unwrap();
        let mut seen = Vec::new();
        let err = loop {
            match ex.next().await {
                Ok(Event::Notify(n)) => {
                    seen.push(n.script().clone());
                    if *n.script() == Script::PostDump {
                        let held_at = w.counter().unwrap();
                        tokio::time::sleep(Duration::from_millis(700)).await;
                        assert_eq!(w.counter(), Some(held_at), "the workload ran while held");
                        assert_eq!(process_state(w.pid), Some('t'), "not stopped while held");
                        n.nack().await.unwrap();
                    } else {
                        n.ack().await.unwrap();
                    }
                }
                Ok(Event::Done(_)) => panic!("a refused post-dump must fail the dump"),
                Err(e) => break e,
            }
        };
        assert_eq!(seen.first(), Some(&Script::PreDump));
        assert!(seen.contains(&Script::PostDump));
        assert!(matches!(err, Error::Criu { req: CriuReqType::Dump, .. }), "{err}");
        let before = w.counter().unwrap();
        w.counter_passes(before, Duration::from_secs(10)).expect("not resumed after a refusal");
        assert_eq!(w.memory_intact(w.pid), Some(true));
        // CRIU writes no stats for a dump that was rolled back.
        let absent = read_dump_stats(dir.path()).unwrap_err();
        assert!(
            matches!(&absent, Error::ImageIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{absent}"
        );

        // 2. Hold for a measured time, then acknowledge: the tree is ended,
        // and stats-dump accounts for the hold and the memory.
        let dir = imgdir();
        let mut ex = c
            .connect()
            .await
            .unwrap()
            .dump(Opts::new().images_dir(dir.path()).pid(w.pid).notify_scripts(true))
            .await
            .unwrap();
        let hold = Duration::from_millis(1200);
        loop {
            match ex.next().await.unwrap() {
                Event::Notify(n) if *n.script() == Script::PostDump => {
                    tokio::time::sleep(hold).await;
                    assert!(alive(w.pid), "killed before the answer");
                    n.ack().await.unwrap();
                }
                Event::Notify(n) => n.ack().await.unwrap(),
                Event::Done(_) => break,
            }
        }
        assert!(wait_until(Duration::from_secs(5), || (!alive(w.pid)).then_some(())).is_some());
        let st = read_dump_stats(dir.path()).unwrap();
        assert!(
            u128::from(st.frozen_time) >= hold.as_micros(),
            "frozen_time {} µs < hold {:?}",
            st.frozen_time,
            hold
        );
        let pages = u64::from(mib) * 256;
        assert!(
            st.pages_written >= pages && st.pages_written < pages * 2,
            "pages_written {} for a {mib} MiB workload",
            st.pages_written
        );

        // A truncated copy of that real stats file is an error, not a panic.
        let bad = imgdir();
        let bytes = std::fs::read(dir.path().join("stats-dump")).unwrap();
        std::fs::write(bad.path().join("stats-dump"), &bytes[..bytes.len() - 3]).unwrap();
        assert!(matches!(read_dump_stats(bad.path()), Err(Error::Image { .. })));
    })
    .await;
}

#[tokio::test]
async fn dropping_a_held_notification_resumes_the_tree() {
    let Some(bin) = require_criu("dropping_a_held_notification_resumes_the_tree") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let w = Workload::start(8).unwrap();
        let dir = imgdir();
        let mut ex = c
            .connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(dir.path())
                    .pid(w.pid)
                    .notify_scripts(true),
            )
            .await
            .unwrap();
        let res = loop {
            match ex.next().await {
                Ok(Event::Notify(n)) if *n.script() == Script::PostDump => drop(n),
                Ok(Event::Notify(n)) => n.ack().await.unwrap(),
                other => break other.map(|_| ()),
            }
        };
        assert!(res.is_err(), "an unanswered post-dump must fail the dump");
        let before = w.counter().unwrap();
        w.counter_passes(before, Duration::from_secs(10))
            .expect("not resumed");
        assert_eq!(w.memory_intact(w.pid), Some(true));
    })
    .await;
}

#[tokio::test]
async fn page_server_receives_a_dump_and_restore_works_from_there() {
    let Some(bin) = require_criu("page_server_receives_a_dump_and_restore_works_from_there") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let mut w = Workload::start(48).unwrap();
        w.counter_passes(3, Duration::from_secs(10)).unwrap();
        let src = imgdir();
        let tgt = imgdir();

        let mut target = c.connect().await.unwrap();
        let ps = target
            .page_server(
                Opts::new()
                    .images_dir(tgt.path())
                    .page_server("127.0.0.1", 0)
                    .log_file("ps.log"),
            )
            .await
            .unwrap();
        assert!(ps.port > 0);
        c.connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(src.path())
                    .pid(w.pid)
                    .page_server("127.0.0.1", ps.port),
            )
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let dumped_at = w.counter().unwrap();
        // The memory went to the page server, not to the source directory.
        let names = |d: &Path| -> Vec<String> {
            std::fs::read_dir(d)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect()
        };
        assert!(!names(src.path()).iter().any(|n| n.starts_with("pages-")));
        assert!(names(tgt.path()).iter().any(|n| n.starts_with("pages-")));
        let st = read_dump_stats(src.path()).unwrap();
        assert!(st.pages_written >= 48 * 256);

        for n in names(src.path()) {
            if n.ends_with(".img") {
                std::fs::copy(src.path().join(&n), tgt.path().join(&n)).unwrap();
            }
        }
        restore_and_check(&c, &mut w, tgt.path(), dumped_at).await;
    })
    .await;
}

#[tokio::test]
async fn page_server_child_is_reaped_with_wait_pid() {
    let Some(bin) = require_criu("page_server_child_is_reaped_with_wait_pid") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let mut w = Workload::start(8).unwrap();
        let src = imgdir();
        let tgt = imgdir();
        let mut target = c.connect().await.unwrap();
        let ps = target
            .page_server_chld(
                Opts::new()
                    .images_dir(tgt.path())
                    .page_server("127.0.0.1", 0),
            )
            .await
            .unwrap();
        assert!(ps.pid > 0);
        c.connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(src.path())
                    .pid(w.pid)
                    .page_server("127.0.0.1", ps.port),
            )
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let dumped_at = w.counter().unwrap();
        let status = target.wait_pid(ps.pid).await.unwrap();
        assert_eq!(status, 0, "page server's wait status");
        for e in std::fs::read_dir(src.path()).unwrap() {
            let n = e.unwrap().file_name();
            if n.to_string_lossy().ends_with(".img") {
                std::fs::copy(src.path().join(&n), tgt.path().join(&n)).unwrap();
            }
        }
        restore_and_check(&c, &mut w, tgt.path(), dumped_at).await;
    })
    .await;
}

#[tokio::test]
async fn cpuinfo_dump_then_check_on_the_same_host() {
    let Some(bin) = require_criu("cpuinfo_dump_then_check_on_the_same_host") else {
        return;
    };
    limited(async {
        let dir = imgdir();
        let mut s = criu(&bin).connect().await.unwrap();
        s.cpuinfo_dump(Opts::new().images_dir(dir.path()))
            .await
            .unwrap();
        assert!(dir.path().join("cpuinfo.img").exists());
        s.cpuinfo_check(Opts::new().images_dir(dir.path()))
            .await
            .unwrap();
    })
    .await;
}

#[tokio::test]
async fn service_socket_mode_dumps_and_restores() {
    let Some(bin) = require_criu("service_socket_mode_dumps_and_restores") else {
        return;
    };
    limited(async {
        let sdir = imgdir();
        let sock = sdir.path().join("criu.sock");
        let mut service = std::process::Command::new(&bin)
            .arg("service")
            .arg("--address")
            .arg(&sock)
            .current_dir(sdir.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        struct Kill(std::process::Child);
        impl Drop for Kill {
            fn drop(&mut self) {
                let _ = self.0.kill();
                let _ = self.0.wait();
            }
        }
        let _guard = Kill(service_take(&mut service));
        wait_until(Duration::from_secs(10), || sock.exists().then_some(()))
            .expect("no service socket");

        let c = Criu::service(&sock);
        assert!(c.version().await.unwrap() >= Version::MINIMUM);
        let f = c.connect().await.unwrap().feature_check().await.unwrap();
        let swrk = criu(&bin)
            .connect()
            .await
            .unwrap()
            .feature_check()
            .await
            .unwrap();
        assert_eq!(
            f, swrk,
            "the service and a swrk disagree on this kernel's features"
        );

        // fds in CRIU's own table make no sense to a service: refused
        // before anything is sent.
        let err = c
            .connect()
            .await
            .unwrap()
            .dump(Opts::new().page_server_fd(4))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::SwrkOnly {
                    option: "page_server_fd"
                }
            ),
            "{err}"
        );
        assert!(matches!(
            c.connect_passing(vec![dup_stdin()]).await,
            Err(Error::SwrkOnly { .. })
        ));

        let mut w = Workload::start(16).unwrap();
        w.counter_passes(2, Duration::from_secs(10)).unwrap();
        let dir = imgdir();
        c.connect()
            .await
            .unwrap()
            .dump(Opts::new().images_dir(dir.path()).pid(w.pid))
            .await
            .unwrap()
            .finish()
            .await
            .unwrap();
        let dumped_at = w.counter().unwrap();
        restore_and_check(&c, &mut w, dir.path(), dumped_at).await;
    })
    .await;
}

fn service_take(c: &mut std::process::Child) -> std::process::Child {
    // Move the child out of the &mut so the guard owns it.
    std::mem::replace(c, std::process::Command::new("true").spawn().unwrap())
}

fn dup_stdin() -> std::os::fd::OwnedFd {
    std::fs::File::open("/dev/null").unwrap().into()
}

#[tokio::test]
async fn bad_pids_are_typed_errors_with_criu_s_message() {
    let Some(bin) = require_criu("bad_pids_are_typed_errors_with_criu_s_message") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        // A PID that does not exist.
        let missing = (400_000..4_000_000)
            .find(|p| !Path::new(&format!("/proc/{p}")).exists())
            .unwrap();
        let dir = imgdir();
        let err = c
            .connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(dir.path())
                    .pid(missing)
                    .log_file("dump.log"),
            )
            .await
            .unwrap()
            .finish()
            .await
            .unwrap_err();
        match &err {
            Error::Criu {
                req: CriuReqType::Dump,
                log,
                ..
            } => {
                let log = log.as_ref().expect("the log excerpt");
                assert!(!log.tail.is_empty());
                assert!(log.errors.iter().all(|l| !l.contains("RLIMIT_NOFILE")));
            }
            other => panic!("expected a DUMP failure, got {other}"),
        }
        assert!(err.to_string().contains("DUMP"), "{err}");

        // A PID we may not dump: a kernel thread (kthreadd).
        let dir = imgdir();
        let err = c
            .connect()
            .await
            .unwrap()
            .dump(Opts::new().images_dir(dir.path()).pid(2))
            .await
            .unwrap()
            .finish()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::Criu {
                    req: CriuReqType::Dump,
                    ..
                }
            ),
            "{err}"
        );
        assert!(alive(2));
    })
    .await;
}

#[tokio::test]
async fn a_missing_binary_names_the_setup_script() {
    // Needs neither root nor CRIU.
    let err = Criu::with_binary("/nonexistent/criu")
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CriuNotFound { .. }), "{err}");
    assert!(err.to_string().contains("scripts/setup.sh"), "{err}");
}

#[tokio::test]
async fn wrong_sequences_are_typed_errors_not_hangs() {
    let Some(bin) = require_criu("wrong_sequences_are_typed_errors_not_hangs") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        // A notification answer nobody asked for: CRIU calls it invalid.
        let mut s = c.connect().await.unwrap();
        let err = s
            .call_raw(CriuReq {
                r#type: CriuReqType::Notify as i32,
                notify_success: Some(true),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(matches!(err, Error::BadRequest { .. }), "{err}");

        // keep_open on a request that may not keep the connection: CRIU
        // closes without answering, which surfaces as a typed error.
        let mut s = c.connect().await.unwrap();
        let err = s
            .call_raw(CriuReq {
                r#type: CriuReqType::Check as i32,
                keep_open: Some(true),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::ConnectionClosed { .. } | Error::CriuExited { .. }
            ),
            "{err}"
        );
        // And the session knows it is over.
        assert!(matches!(
            s.version().await,
            Err(Error::ConnectionClosed { .. })
        ));

        // Pre-dumps need memory tracking; where the kernel lacks it, CRIU
        // refuses and the chain is not handed out.
        let f = c.connect().await.unwrap().feature_check().await.unwrap();
        if !f.mem_track {
            let w = Workload::start(4).unwrap();
            let dir = imgdir();
            let err = c
                .connect()
                .await
                .unwrap()
                .pre_dump(Opts::new().images_dir(dir.path()).pid(w.pid))
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    Error::Criu {
                        req: CriuReqType::PreDump,
                        ..
                    }
                ),
                "{err}"
            );
            let before = w.counter().unwrap();
            assert!(
                w.counter_passes(before, Duration::from_secs(10)).is_some(),
                "workload harmed"
            );
        }

        // A notification must be answered before the exchange goes on.
        let w = Workload::start(4).unwrap();
        let dir = imgdir();
        let mut ex = c
            .connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(dir.path())
                    .pid(w.pid)
                    .notify_scripts(true)
                    .leave_running(true),
            )
            .await
            .unwrap();
        match ex.next().await.unwrap() {
            Event::Notify(n) => {
                std::mem::forget(n); // neither answered nor dropped
            }
            Event::Done(_) => panic!("expected a notification first"),
        }
        assert!(matches!(
            ex.next().await,
            Err(Error::NotifyUnanswered { .. })
        ));
    })
    .await;
}

/// A task whose terminal's master is outside the dumped tree (as a
/// container's console is): restored with `orphan_pts_master`, CRIU makes a
/// new pty and hands its master to the caller with the notification. The
/// test then types into that master and the restored task gets the line.
#[tokio::test]
async fn an_orphaned_pty_master_reaches_the_caller_on_restore() {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    use std::process::{Command, Stdio};

    let Some(bin) = require_criu("an_orphaned_pty_master_reaches_the_caller_on_restore") else {
        return;
    };
    limited(async {
        let c = criu(&bin);
        let home = imgdir();
        let out = home.path().join("typed");
        let dir = home.path().join("images");
        std::fs::create_dir(&dir).unwrap();
        let pty = nix::pty::openpty(None, None).unwrap();
        // openpty's fds are inheritable: the master must not reach the task,
        // or CRIU finds both ends in the tree and nothing is orphaned.
        for fd in [&pty.master, &pty.slave] {
            nix::fcntl::fcntl(
                fd,
                nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
            )
            .unwrap();
        }
        let slave = std::fs::File::from(pty.slave);
        // PID 1 of its own PID namespace, reading its terminal line by line.
        let mut unshare = Command::new("unshare")
            // `setsid -c`: the pty becomes its controlling terminal, as a
            // console is for a container's init.
            .args(["--pid", "--fork", "setsid", "-c", "sh", "-c"])
            .arg("while read l; do echo \"$l\" >> typed; done")
            .current_dir(home.path())
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave))
            .spawn()
            .unwrap();
        let uid = unshare.id();
        let pid: i32 = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(format!("/proc/{uid}/task/{uid}/children"))
                .ok()?
                .split_whitespace()
                .next()?
                .parse()
                .ok()
        })
        .expect("the reader did not start");
        let mut master = std::fs::File::from(pty.master);
        master.write_all(b"before\n").unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("before")))
            .is_some()
        );

        c.connect()
            .await
            .unwrap()
            .dump(
                Opts::new()
                    .images_dir(&dir)
                    .pid(pid)
                    .shell_job(true)
                    .log_file("dump.log")
                    .log_level(4),
            )
            .await
            .unwrap()
            .finish()
            .await
            .unwrap_or_else(|e| panic!("dump failed: {e}"));
        assert!(wait_until(Duration::from_secs(5), || (!alive(pid)).then_some(())).is_some());
        let _ = unshare.wait();
        // The old master leads nowhere now.
        drop(master);

        let mut restore = c
            .connect()
            .await
            .unwrap()
            .restore(
                Opts::new()
                    .images_dir(&dir)
                    .shell_job(true)
                    .orphan_pts_master(true)
                    .notify_scripts(true)
                    .log_file("restore.log")
                    .log_level(4),
            )
            .await
            .unwrap();
        let mut got = None;
        let restored = loop {
            match restore.next().await.unwrap() {
                Event::Notify(mut n) => {
                    if *n.script() == Script::OrphanPtsMaster {
                        got = n.take_fd();
                    }
                    n.ack().await.unwrap();
                }
                Event::Done(r) => break r,
            }
        };
        let new_pid = restored.pid;
        let master = got.unwrap_or_else(|| {
            panic!(
                "no fd came with orphan-pts-master; restore.log:\n{}",
                std::fs::read_to_string(dir.join("restore.log")).unwrap_or_default()
            )
        });
        // It is the master of a pty: it has a slave number.
        let mut ptn: CUint = 0;
        // SAFETY: TIOCGPTN writes one unsigned int through the pointer.
        let r = unsafe { ioctl_tiocgptn(master.as_raw_fd(), &mut ptn) };
        assert_eq!(r, 0, "TIOCGPTN on the received fd");
        let mut master = std::fs::File::from(master);
        master.write_all(b"after\n").unwrap();
        let typed = wait_until(Duration::from_secs(10), || {
            std::fs::read_to_string(&out)
                .ok()
                .filter(|s| s.contains("after"))
        });
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(new_pid),
            nix::sys::signal::Signal::SIGKILL,
        );
        assert_eq!(typed.as_deref(), Some("before\nafter\n"));
    })
    .await;
}

type CUint = std::ffi::c_uint;

unsafe extern "C" {
    fn ioctl(fd: std::ffi::c_int, request: std::ffi::c_ulong, ...) -> std::ffi::c_int;
}

/// `ioctl(fd, TIOCGPTN, &n)`: the pty number of a master.
unsafe fn ioctl_tiocgptn(fd: std::ffi::c_int, n: &mut CUint) -> std::ffi::c_int {
    const TIOCGPTN: std::ffi::c_ulong = 0x8004_5430;
    // SAFETY: the caller passes a valid fd; n outlives the call.
    unsafe { ioctl(fd, TIOCGPTN, n as *mut CUint) }
}
