//! Real LXC containers migrated with their root file system between two
//! "hosts" (network namespaces, each with its own LXC path), with real CRIU
//! and LXC. Needs root, CRIU 4 and LXC (scripts/setup.sh); under `CI` their
//! absence fails the tests.

use std::path::{Path, PathBuf};
use std::time::Duration;

use phaul_core::fs::FsChoice;
use phaul_core::{Mode, Report};
use phaul_htypes::registry::{Paths, source_in};
use phaul_testkit::lan::{redis_cli, redis_ready_with};
use phaul_testkit::{Hosts, LxcContainer, require_criu, wait_until};

mod common;
use common::{Setup, Target, criu, migrate_from};

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "phct{}x{}",
        std::process::id() % 100_000,
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// A service in the target host, restoring LXC containers into `lxcpath`.
fn lxc_target(hosts: &Hosts, bin: &Path, lxcpath: &Path) -> Target {
    Target::start_with(
        hosts,
        criu(bin),
        Setup {
            paths: Some(Paths {
                lxcpath: lxcpath.to_path_buf(),
                ..Paths::default()
            }),
            ..Setup::default()
        },
    )
}

fn migrate(
    hosts: &Hosts,
    bin: &Path,
    to: &str,
    name: &str,
    src_lxc: &Path,
    fs: FsChoice,
) -> Report {
    migrate_mode(&hosts.src, bin, to, name, src_lxc, fs, Mode::Auto)
}

#[allow(clippy::too_many_arguments)]
fn migrate_mode(
    from: &str,
    bin: &Path,
    to: &str,
    name: &str,
    src_lxc: &Path,
    fs: FsChoice,
    mode: Mode,
) -> Report {
    let name = name.to_string();
    let lxcpath = src_lxc.to_path_buf();
    let open = move || {
        let paths = Paths {
            lxcpath,
            ..Paths::default()
        };
        source_in("lxc", &name, &paths).unwrap()
    };
    migrate_from(from, bin, to, open, move |m| m.mode(mode).fs(fs)).0
}

/// The first file named `name` below `dir`.
fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir()
            && let Some(found) = find_file(&p, name)
        {
            return Some(found);
        }
    }
    None
}

fn lxcpath(tag: &str) -> (tempfile::TempDir, PathBuf) {
    let d = tempfile::Builder::new()
        .prefix(&format!("phaul-lxc-{tag}-"))
        .tempdir()
        .unwrap();
    let p = d.path().to_path_buf();
    (d, p)
}

/// Moves a counting container in `mode`, which must end up as `expected`.
fn moves_a_container(fs: &FsChoice, mode: Mode, expected: &str) {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("PHAUL_TEST_LOG"))
        .with_test_writer()
        .try_init();
    let Some(bin) = require_criu("an_lxc_container_moves_with_its_files_and_memory") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_s, src) = lxcpath("src");
    let (_t, tgt) = lxcpath("tgt");
    let name = unique_name();
    let mut ct = LxcContainer::start(Some(&hosts.src), &src, &name).unwrap();
    ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
    // A file in its root file system, from before the migration.
    std::fs::write(
        src.join(&name).join("rootfs/etc/phaul-marker"),
        "written before",
    )
    .unwrap();
    let before = LxcContainer::counter_in(&src, &name).unwrap();
    let target = lxc_target(&hosts, &bin, &tgt);
    let (n, lxcpath, f) = (name.clone(), src.clone(), fs.clone());
    let open = move || {
        let paths = Paths {
            lxcpath,
            ..Paths::default()
        };
        source_in("lxc", &n, &paths).unwrap()
    };
    // While the target holds its restored copy (the switch-over hook runs
    // then), the copy does not run: its counter stays put for a second.
    let (held_in, held_name) = (tgt.clone(), name.clone());
    let held = move || {
        let (dir, name) = (held_in.clone(), held_name.clone());
        async move {
            tokio::task::spawn_blocking(move || {
                let before = LxcContainer::counter_in(&dir, &name);
                std::thread::sleep(Duration::from_secs(1));
                match LxcContainer::counter_in(&dir, &name) {
                    now if now == before && now.is_some() => Ok(()),
                    now => Err(format!("the held copy counted: {before:?} -> {now:?}")),
                }
            })
            .await
            .map_err(|e| e.to_string())?
        }
    };
    let (r, work) = migrate_from(&hosts.src, &bin, &target.addr, open, move |m| {
        m.mode(mode).fs(f).keep_images(true).switchover(held)
    });
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, expected, "{}", r.mode_reason);
    // The container has a network namespace of its own, and both hosts'
    // CRIU (the same binary here) lock with nftables where it can: the
    // dump's inventory says which lock its restore had to undo.
    let nft = std::process::Command::new(&bin)
        .args(["check", "--feature", "network_lock_nftables"])
        .output()
        .is_ok_and(|o| o.status.success());
    let inventory = find_file(work.path(), "inventory.img").expect("the dump's inventory, kept");
    let lock = criu_rpc::image::read_inventory(inventory.parent().unwrap())
        .unwrap()
        .network_lock_method
        .map(criu_rpc::summary::network_lock_name);
    let want = if nft { "nftables" } else { "iptables" };
    assert_eq!(lock.as_deref(), Some(want), "the dump's network lock");
    assert_eq!(r.fs.driver, fs.name());
    assert!(r.fs.passes >= 2, "{:?}", r.fs);
    // LXC knows it on the target, runs it, and it is gone from the source.
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.tgt), &tgt, &name).as_deref(),
        Some("RUNNING")
    );
    assert!(
        !src.join(&name).exists(),
        "the source's container was not removed"
    );
    // Its files came along, and its process continues from where it was:
    // the counter lives in the shell's memory; a restart would count from 1.
    assert_eq!(
        std::fs::read_to_string(tgt.join(&name).join("rootfs/etc/phaul-marker")).unwrap(),
        "written before"
    );
    let c1 = LxcContainer::counter_in(&tgt, &name).unwrap();
    assert!(c1 >= before, "the counter went back: {c1} < {before}");
    let c2 = wait_until(Duration::from_secs(10), || {
        LxcContainer::counter_in(&tgt, &name).filter(|c| *c > c1)
    })
    .expect("the counter does not move on the target");
    assert!(c2 > c1);
}

#[test]
fn an_lxc_container_moves_with_its_files_and_memory_native() {
    // auto: both hosts have lazy pages, and LXC restores lazily.
    moves_a_container(&FsChoice::Native, Mode::Auto, "post-copy");
}

#[test]
fn bad_container_requests_are_refused_and_change_nothing() {
    let Some(_) = require_criu("bad_container_requests_are_refused_and_change_nothing") else {
        return;
    };
    let (_s, src) = lxcpath("src");
    let name = unique_name();
    let p = Paths {
        lxcpath: src.clone(),
        ..Paths::default()
    };
    for bad in ["a;reboot", "$(id)", "a b", "a/b", "../x"] {
        let e = source_in("lxc", bad, &p).unwrap_err().to_string();
        assert!(e.contains("container name"), "{bad}: {e}");
    }
    let e = source_in("lxc", "nosuchct", &p).unwrap_err().to_string();
    assert!(e.contains("no such container"), "{e}");
    let ct = LxcContainer::start(None, &src, &name).unwrap();
    let pp = src.as_os_str();
    let out = std::process::Command::new("lxc-stop")
        .args(
            [pp, name.as_ref()]
                .iter()
                .zip(["-P", "-n"])
                .flat_map(|(v, k)| [std::ffi::OsStr::new(k), v])
                .collect::<Vec<_>>(),
        )
        .arg("-k")
        .output()
        .unwrap();
    assert!(out.status.success());
    let e = source_in("lxc", &name, &p).unwrap_err().to_string();
    assert!(e.contains("STOPPED"), "{e}");
    // Nothing was changed: the stopped container is still there, intact.
    assert_eq!(
        LxcContainer::state_in(None, &src, &name).as_deref(),
        Some("STOPPED")
    );
    assert!(src.join(&name).join("rootfs/bin/counter.sh").exists());
    drop(ct);
}

#[test]
fn an_lxc_container_moves_with_its_files_and_memory_rsync() {
    // rsync's remote shell is phaul-fs's helper binary, which
    // `cargo test --workspace` builds next to the test binaries.
    let Some(helper) = phaul_fs::RsyncSource::helper_next_to_exe() else {
        phaul_testkit::unavailable(
            "an_lxc_container_moves_with_its_files_and_memory_rsync",
            "phaul-rsync-rsh (it is not built)",
            "run cargo test --workspace",
        );
        return;
    };
    moves_a_container(&FsChoice::Rsync { helper }, Mode::StopCopy, "stop-copy");
}

#[test]
fn a_restore_failing_on_the_target_leaves_the_container_running_on_the_source() {
    let Some(bin) =
        require_criu("a_restore_failing_on_the_target_leaves_the_container_running_on_the_source")
    else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_s, src) = lxcpath("src");
    let (_t, tgt) = lxcpath("tgt");
    // LXC on the target runs the CRIU the service names (Paths::criu):
    // a stand-in in front of the real one whose restores fail for real.
    let (_standin, wrapper) = common::criu_failing_restores(&bin);
    let name = unique_name();
    let mut ct = LxcContainer::start(Some(&hosts.src), &src, &name).unwrap();
    ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
    std::fs::write(src.join(&name).join("rootfs/etc/phaul-marker"), "as it was").unwrap();
    let snapshot = |root: &Path| -> Vec<(PathBuf, u64)> {
        let mut v = Vec::new();
        let mut stack = vec![root.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap().flatten() {
                let m = e.path().symlink_metadata().unwrap();
                if m.is_dir() {
                    stack.push(e.path());
                } else if !e.path().ends_with("tmp/count") {
                    v.push((e.path(), m.len()));
                }
            }
        }
        v.sort();
        v
    };
    let rootfs = src.join(&name).join("rootfs");
    let before = snapshot(&rootfs);
    let target = Target::start_with(
        &hosts,
        criu(&bin),
        Setup {
            paths: Some(Paths {
                lxcpath: tgt.clone(),
                criu: wrapper.clone(),
                ..Paths::default()
            }),
            ..Setup::default()
        },
    );
    let r = migrate(&hosts, &bin, &target.addr, &name, &src, FsChoice::Native);
    assert!(!r.success, "the restore was expected to fail");
    assert_eq!(
        r.phase_reached,
        phaul_core::Phase::Rollback,
        "{:?}",
        r.error
    );
    let e = r.error.as_deref().unwrap();
    assert!(e.contains("lxc-checkpoint"), "{e}");
    // A post-copy's images were in RAM (see `ramdir`): the restore's log,
    // which was among them, is back on disk where the error says.
    assert_eq!(r.mode, "post-copy");
    let log = e
        .split("CRIU log: ")
        .nth(1)
        .and_then(|t| t.split(')').next())
        .unwrap_or_else(|| panic!("no log path in {e}"));
    assert!(
        Path::new(log).is_file(),
        "the target's log {log} was not kept"
    );
    // Still LXC's and running on the source, counting, with its files as
    // they were; nothing of it left on the target.
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.src), &src, &name).as_deref(),
        Some("RUNNING")
    );
    let c = LxcContainer::counter_in(&src, &name).unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || LxcContainer::counter_in(
            &src, &name
        )
        .filter(|x| *x > c))
        .is_some(),
        "the source container does not run"
    );
    assert_eq!(snapshot(&rootfs), before);
    assert!(
        !tgt.join(&name).exists(),
        "the target kept the container's files"
    );
}

/// A container whose init itself runs the counter, so a cold start on the
/// target counts again (from 1, its memory gone).
fn restartable(hosts: &Hosts, src: &Path, tgt: &Path) -> (LxcContainer, String) {
    let name = unique_name();
    let mut ct = LxcContainer::start(Some(&hosts.src), src, &name).unwrap();
    ct.also.push((tgt.to_path_buf(), Some(hosts.tgt.clone())));
    let inittab = src.join(&name).join("rootfs/etc/inittab");
    let mut t = std::fs::read_to_string(&inittab).unwrap();
    t.push_str("::respawn:/bin/counter.sh\n");
    std::fs::write(&inittab, t).unwrap();
    std::fs::write(src.join(&name).join("rootfs/etc/phaul-marker"), "as it was").unwrap();
    (ct, name)
}

#[test]
fn restart_mode_moves_a_container_cold() {
    let Some(bin) = require_criu("restart_mode_moves_a_container_cold") else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_s, src) = lxcpath("src");
    let (_t, tgt) = lxcpath("tgt");
    let (_ct, name) = restartable(&hosts, &src, &tgt);
    let target = lxc_target(&hosts, &bin, &tgt);
    let r = migrate_mode(
        &hosts.src,
        &bin,
        &target.addr,
        &name,
        &src,
        FsChoice::Native,
        Mode::Restart,
    );
    assert!(r.success, "{:?}", r.error);
    assert_eq!(r.mode, "restart");
    assert_eq!(r.iterations, 0, "no CRIU dump in restart mode");
    assert!(r.fs.passes >= 3, "{:?}", r.fs);
    assert!(r.downtime_ms.is_some());
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.tgt), &tgt, &name).as_deref(),
        Some("RUNNING")
    );
    assert!(
        !src.join(&name).exists(),
        "the source's container was not removed"
    );
    assert_eq!(
        std::fs::read_to_string(tgt.join(&name).join("rootfs/etc/phaul-marker")).unwrap(),
        "as it was"
    );
    // Started anew: its init runs the counter again.
    let c = wait_until(Duration::from_secs(20), || {
        LxcContainer::counter_in(&tgt, &name).filter(|c| *c >= 3)
    })
    .expect("the restarted container does not count");
    assert!(
        wait_until(Duration::from_secs(10), || LxcContainer::counter_in(
            &tgt, &name
        )
        .filter(|x| *x > c))
        .is_some()
    );
}

#[test]
fn restart_mode_starts_the_container_again_on_the_source_when_the_target_cannot() {
    let Some(bin) = require_criu(
        "restart_mode_starts_the_container_again_on_the_source_when_the_target_cannot",
    ) else {
        return;
    };
    let hosts = Hosts::new().unwrap();
    let (_s, src) = lxcpath("src");
    let (_t, tgt) = lxcpath("tgt");
    // A noexec target: the files arrive, but nothing can run from them.
    assert!(
        std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "noexec,size=256m", "phaul-noexec"])
            .arg(&tgt)
            .status()
            .unwrap()
            .success()
    );
    struct Umount(PathBuf);
    impl Drop for Umount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _umount = Umount(tgt.clone());
    let (_ct, name) = restartable(&hosts, &src, &tgt);
    let target = lxc_target(&hosts, &bin, &tgt);
    let r = migrate_mode(
        &hosts.src,
        &bin,
        &target.addr,
        &name,
        &src,
        FsChoice::Native,
        Mode::Restart,
    );
    assert!(
        !r.success,
        "starting on a noexec target was expected to fail"
    );
    assert_eq!(
        r.phase_reached,
        phaul_core::Phase::Rollback,
        "{:?}",
        r.error
    );
    // Started again on the source, with its files; nothing left on the target.
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.src), &src, &name).as_deref(),
        Some("RUNNING")
    );
    assert_eq!(
        std::fs::read_to_string(src.join(&name).join("rootfs/etc/phaul-marker")).unwrap(),
        "as it was"
    );
    let c = LxcContainer::counter_in(&src, &name).unwrap_or(0);
    assert!(
        wait_until(Duration::from_secs(20), || LxcContainer::counter_in(
            &src, &name
        )
        .filter(|x| *x > c))
        .is_some(),
        "the container does not run on the source again"
    );
    assert!(!tgt.join(&name).exists(), "the target kept the container");
}

/// Two hosts on a LAN, each with its LXC path, and on the source a running
/// container whose veth sits on the host's bridge with LAN address `.n`
/// and MAC `02:70:68:61:75:n`, running Debian's redis-server with `keys`
/// keys `ct:k{i}` = `v{i}`.
struct NetworkedCt {
    // Dropped first: the container, then its LXC paths and the hosts.
    _ct: LxcContainer,
    name: String,
    ip: String,
    hwaddr: String,
    src: PathBuf,
    tgt: PathBuf,
    _dirs: (tempfile::TempDir, tempfile::TempDir),
    hosts: Hosts,
}

impl NetworkedCt {
    fn start(n: u8, keys: usize) -> Self {
        let mut hosts = Hosts::with_lan().unwrap();
        hosts.lan.as_mut().unwrap().enable_lxc().unwrap();
        let lan = hosts.lan();
        let (s, src) = lxcpath("src");
        let (t, tgt) = lxcpath("tgt");
        let ip = lan.ip(n);
        let hwaddr = format!("02:70:68:61:75:{n:02x}");
        let net = phaul_testkit::LxcNet {
            link: lan.bridge.clone(),
            hwaddr: hwaddr.clone(),
            ipv4: format!("{ip}/24"),
        };
        let name = unique_name();
        let mut ct = LxcContainer::start_networked(Some(&hosts.src), &src, &name, &net).unwrap();
        ct.also.push((tgt.clone(), Some(hosts.tgt.clone())));
        redis_ready_with(lan, &ip, "ct:k", keys)
            .expect("redis in the container answers on the LAN");
        Self {
            _ct: ct,
            name,
            ip,
            hwaddr,
            src,
            tgt,
            _dirs: (s, t),
            hosts,
        }
    }
}

/// An LXC container whose veth sits on its host's bridge, with its own
/// address and MAC, running Debian's redis-server, moves there and back
/// three times while a client on a third host keeps one connection open
/// and sends a request every 5 ms: LXC runs it on each target, with the
/// same MAC and address, its data intact and no client error.
#[test]
fn an_lxc_container_on_the_bridge_moves_with_its_address_and_its_client() {
    let test = "an_lxc_container_on_the_bridge_moves_with_its_address_and_its_client";
    let Some((bin, _)) = phaul_testkit::lan::require_criu_and_redis(test) else {
        return;
    };
    let nc = NetworkedCt::start(60, 500);
    let hosts = &nc.hosts;
    let lan = hosts.lan();
    let (src, tgt, name, ip) = (
        nc.src.clone(),
        nc.tgt.clone(),
        nc.name.clone(),
        nc.ip.clone(),
    );
    let hwaddr = nc.hwaddr.as_str();
    let client =
        phaul_testkit::lan::LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let service = |ns: &str, addr: &str, lxcpath: &Path| {
        Target::start_on(
            ns,
            addr,
            criu(&bin),
            Setup {
                paths: Some(Paths {
                    lxcpath: lxcpath.to_path_buf(),
                    ..Paths::default()
                }),
                ..Setup::default()
            },
        )
    };
    let at_src = service(&hosts.src, &hosts.src_ip, &src);
    let at_tgt = service(&hosts.tgt, &hosts.tgt_ip, &tgt);
    let moves = [
        (&hosts.src, &src, &hosts.tgt, &tgt, &at_tgt),
        (&hosts.tgt, &tgt, &hosts.src, &src, &at_src),
        (&hosts.src, &src, &hosts.tgt, &tgt, &at_tgt),
    ];
    for (n, (from, from_lxc, to, to_lxc, target)) in moves.into_iter().enumerate() {
        let r = migrate_mode(
            from,
            &bin,
            &target.addr,
            &name,
            from_lxc,
            FsChoice::Native,
            Mode::Auto,
        );
        assert!(r.success, "move {n}: {r}");
        assert_eq!(r.mode, "post-copy", "move {n}: {}", r.mode_reason);
        assert_eq!(
            LxcContainer::state_in(Some(to.as_str()), to_lxc, &name).as_deref(),
            Some("RUNNING"),
            "move {n}: not LXC's on the target"
        );
        let pid = r.target_pid.expect("a target pid");
        let link = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "-br", "addr", "show"])
            .output()
            .unwrap();
        let link = String::from_utf8_lossy(&link.stdout).into_owned();
        assert!(
            link.contains(&format!("{ip}/24")),
            "move {n}: address: {link}"
        );
        let mac = std::process::Command::new("nsenter")
            .arg(format!("--net=/proc/{pid}/ns/net"))
            .args(["ip", "-br", "link", "show"])
            .output()
            .unwrap();
        assert!(
            String::from_utf8_lossy(&mac.stdout).contains(hwaddr),
            "move {n}: MAC"
        );
        let s = client
            .answers_after(100, Duration::from_secs(30))
            .unwrap_or_else(|| {
                panic!(
                    "move {n}: the client's requests stopped: {:?}",
                    client.stats()
                )
            });
        assert_eq!(s.errors, 0, "move {n}: client errors: {:?}", s.last_error);
        assert_eq!(redis_cli(lan, &ip, &["GET", "ct:k499"]), "v499");
        #[allow(clippy::print_stderr)]
        {
            eprintln!(
                "{test}: move {n}: mode {}, downtime {:.1} ms, client longest stall so far {:.1} ms",
                r.mode,
                r.downtime_ms.unwrap_or(f64::NAN),
                s.longest_stall_ms
            );
        }
    }
}

/// The target's restore of a networked container fails for real (its CRIU
/// reads a configuration naming an LSM profile this kernel lacks): the
/// source's container keeps running with its address, LXC's on the source,
/// and its LAN client's connection goes on with no error.
#[test]
fn a_failed_restore_of_a_networked_container_keeps_its_address_and_client() {
    let test = "a_failed_restore_of_a_networked_container_keeps_its_address_and_client";
    let Some((bin, _)) = phaul_testkit::lan::require_criu_and_redis(test) else {
        return;
    };
    let nc = NetworkedCt::start(61, 0);
    let hosts = &nc.hosts;
    let lan = hosts.lan();
    let (src, tgt, name, ip) = (
        nc.src.clone(),
        nc.tgt.clone(),
        nc.name.clone(),
        nc.ip.clone(),
    );
    assert_eq!(redis_cli(lan, &ip, &["SET", "ct:kept", "yes"]), "OK");
    let client =
        phaul_testkit::lan::LanClient::start(lan, &ip, 6379, Duration::from_millis(5)).unwrap();
    let (_standin, failing) = common::criu_failing_restores(&bin);
    let target = Target::start_with(
        hosts,
        criu(&bin),
        Setup {
            paths: Some(Paths {
                lxcpath: tgt.clone(),
                criu: failing,
                ..Paths::default()
            }),
            ..Setup::default()
        },
    );
    let r = migrate(hosts, &bin, &target.addr, &name, &src, FsChoice::Native);
    assert!(!r.success, "the restore was expected to fail");
    assert_eq!(r.phase_reached, phaul_core::Phase::Rollback, "{r}");
    assert_eq!(
        LxcContainer::state_in(Some(&hosts.src), &src, &name).as_deref(),
        Some("RUNNING")
    );
    let s = client
        .answers_after(100, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the client's requests stopped: {:?}", client.stats()));
    assert_eq!(s.errors, 0, "client errors: {:?}", s.last_error);
    assert_eq!(redis_cli(lan, &ip, &["GET", "ct:kept"]), "yes");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{test}: client longest stall {:.1} ms, 0 errors",
            s.longest_stall_ms
        );
    }
}
