//! The `vz` kind against STAND-INS for Virtuozzo's tools
//! (`tests/standins/`: shell scripts that record their argv and answer like
//! cgget, cgexec, cgset and vzctl; no Virtuozzo kernel exists here). Runs
//! without root.
//!
//! The library runs the tools itself, so what steers the stand-ins (their
//! log, the freezer directory, which tool fails) is set in this process's
//! environment. Environment changes race with anything reading it on
//! another thread, so everything that runs a tool happens in ONE test
//! function, in order.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};

use phaul_htypes::registry::{Paths, source_in, target_in};
use phaul_htypes::vz::{self, Vz, validate_ctid};
use phaul_htypes::{Error, Htype, SourceHooks, TargetHooks};

fn standin(tool: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/standins")
        .join(tool)
}

/// Stand-in tools; the container lives under `dir`.
fn paths(dir: &Path) -> Paths {
    Paths {
        ve_run_dir: dir.join("run"),
        ve_root: dir.join("root"),
        freezer_root: dir.join("freezer"),
        vzctl: standin("vzctl"),
        cgget: standin("cgget"),
        cgexec: standin("cgexec"),
        cgset: standin("cgset"),
        ..Paths::default()
    }
}

fn set_env(key: &str, value: impl AsRef<std::ffi::OsStr>) {
    // SAFETY: every test that runs a tool (and so reads the environment on
    // spawning it) is in `vz_with_standins`, which calls this between its
    // steps, on its own thread; the only other test here does not read the
    // environment.
    unsafe { std::env::set_var(key, value) };
}

/// The stand-ins' log lines since the last call, with the log emptied.
fn take_log(log: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let _ = std::fs::remove_file(log);
    text.lines().map(str::to_string).collect()
}

fn set_freezer(dir: &Path, ctid: &str, state: &str) {
    let d = dir.join("freezer").join(ctid);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("freezer.state"), format!("{state}\n")).unwrap();
}

/// A child process, killed and reaped on drop.
struct Sleeper(Child);

impl Drop for Sleeper {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

const CTID: &str = "101";

const VALUES: [(&str, &str, &str); 6] = [
    ("vz_clock_bootbased.img", "ve.clock_bootbased", "123456789"),
    ("vz_clock_monotonic.img", "ve.clock_monotonic", "987654321"),
    ("vz_iptables_mask.img", "ve.iptables_mask", "1023"),
    ("vz_os_release.img", "ve.os_release", "5.14.0"),
    ("vz_features.img", "ve.features", "8192"),
    ("vz_aio_max_nr.img", "ve.aio_max_nr", "65536"),
];

const CORE: &str = "|/usr/libexec/abrt-hook-ccpp %s";

#[test]
fn ctids_are_numbers_or_uuids_and_nothing_else() {
    for good in [
        "1",
        "101",
        "4294967295",
        "0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5b",
    ] {
        validate_ctid(good).unwrap();
    }
    for bad in [
        "",
        "0",
        "007",
        "0101",
        "12345678901",
        "4294967296",
        "-1",
        "101;reboot",
        ";",
        "$(id)",
        "`id`",
        "1 01",
        " 101",
        "101\n",
        "1/2",
        "/101",
        "..",
        "../101",
        "0F7C1B2E-3A4D-4E5F-8A9B-0C1D2E3F4A5B",
        "{0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5b}",
        "0f7c1b2e3a4d4e5f8a9b0c1d2e3f4a5b",
        "0f7c1b2e-3a4d-4e5f-8a9b",
        "0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5",
        "0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5bc",
        "0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5g",
        "0f7c1b2e-3a4d-4e5f-8a9b-0c1d2e3f4a5b/..",
    ] {
        assert!(
            matches!(
                validate_ctid(bad),
                Err(Error::BadParam { name: "CTID", .. })
            ),
            "{bad:?}"
        );
    }
}

#[test]
fn vz_with_standins() {
    let dir = tempfile::tempdir().unwrap();
    let p = paths(dir.path());
    std::fs::create_dir_all(&p.ve_run_dir).unwrap();
    let log = dir.path().join("standins.log");
    set_env("PHAUL_STANDIN_LOG", &log);
    set_env("PHAUL_STANDIN_FREEZER", &p.freezer_root);
    set_env("PHAUL_STANDIN_FAIL", "");

    // The source: its init PID from the PID file, checked to run.
    let sleeper = Sleeper(Command::new("sleep").arg("30").spawn().unwrap());
    let pid = i32::try_from(sleeper.0.id()).unwrap();
    let pid_file = p.ve_run_dir.join(format!("{CTID}.init.pid"));
    assert!(matches!(
        Vz::source(CTID, &p),
        Err(Error::BadParam { name: "CTID", ref reason, .. }) if reason.contains("no init PID file")
    ));
    std::fs::write(&pid_file, "not a pid\n").unwrap();
    assert!(matches!(
        Vz::source(CTID, &p),
        Err(Error::BadParam { name: "CTID", .. })
    ));
    std::fs::write(&pid_file, format!("{pid}\n")).unwrap();
    let src = Vz::source(CTID, &p).unwrap();
    assert_eq!(src.kind(), "vz");
    assert_eq!(src.ctid(), CTID);
    assert_eq!(src.root_pid().unwrap(), pid);
    src.check().unwrap();
    let params = src.params();
    assert_eq!(
        params,
        BTreeMap::from([("ctid".to_string(), CTID.to_string())])
    );
    let boxed = source_in("vz", CTID, &p).unwrap();
    assert_eq!(boxed.root_pid().unwrap(), pid);
    assert!(matches!(
        source_in("vz", "101;reboot", &p),
        Err(Error::BadParam { name: "CTID", .. })
    ));

    // The options: the freezer cgroup, 50 MiB of ghosts, soft cgroups.
    let d = src.dump_options();
    let freezer = dir.path().join("freezer").join(CTID);
    assert_eq!(d.freeze_cgroup.as_deref(), freezer.to_str());
    assert_eq!(d.ghost_limit, Some(50 << 20));
    assert_eq!(d.manage_cgroups.as_deref(), Some("soft"));
    assert!(d.tcp_established && d.file_locks && d.link_remap);
    assert_eq!(d.root, None);

    // Before the final dump, the tree thawed: six cgget calls, in order.
    set_freezer(dir.path(), CTID, "THAWED");
    let _ = take_log(&log);
    let files = src.files_before_dump();
    let want: Vec<(String, Vec<u8>)> = VALUES
        .iter()
        .map(|(img, _, v)| (img.to_string(), format!("{v}\n").into_bytes()))
        .collect();
    assert_eq!(files, want);
    let want_log: Vec<String> = VALUES
        .iter()
        .map(|(_, param, _)| format!("cgget -n -v -r {param} {CTID} freezer=THAWED"))
        .collect();
    assert_eq!(take_log(&log), want_log);

    // A failing cgget costs its image, not the dump.
    set_env("PHAUL_STANDIN_FAIL", "cgget");
    assert!(src.files_before_dump().is_empty());
    assert_eq!(take_log(&log).len(), 6);
    // No cgget at all: the same.
    let no_tools = Paths {
        cgget: dir.path().join("no-cgget"),
        cgexec: dir.path().join("no-cgexec"),
        cgset: dir.path().join("no-cgset"),
        ..p.clone()
    };
    let blind = Vz::source(CTID, &no_tools).unwrap();
    assert!(blind.files_before_dump().is_empty());
    assert_eq!(blind.meta_files().unwrap(), Vec::new());
    set_env("PHAUL_STANDIN_FAIL", "");

    // After the final dump, the tree frozen: the core pattern by cgexec.
    set_freezer(dir.path(), CTID, "FROZEN");
    let meta = src.meta_files().unwrap();
    assert_eq!(
        meta,
        vec![(
            "vz_core_pattern.img".to_string(),
            format!("{CORE}\n").into_bytes()
        )]
    );
    assert_eq!(
        take_log(&log),
        vec![format!(
            "cgexec -g ve:{CTID} cat /proc/sys/kernel/core_pattern freezer=FROZEN"
        )]
    );
    set_env("PHAUL_STANDIN_FAIL", "cgexec");
    assert_eq!(src.meta_files().unwrap(), Vec::new());
    assert_eq!(take_log(&log).len(), 1);
    set_env("PHAUL_STANDIN_FAIL", "");
    drop(sleeper);

    // A PID file naming a process that is gone.
    let mut gone = Command::new("true").spawn().unwrap();
    let gone_pid = i32::try_from(gone.id()).unwrap();
    gone.wait().unwrap();
    std::fs::write(&pid_file, format!("{gone_pid}\n")).unwrap();
    assert!(matches!(
        Vz::source(CTID, &p),
        Err(Error::NoSuchProcess(x)) if x == gone_pid
    ));
    assert!(src.check().is_err());

    // The target: from the source's parameters.
    assert!(matches!(
        Vz::target(&BTreeMap::new(), &p),
        Err(Error::BadParam { name: "CTID", .. })
    ));
    let evil = BTreeMap::from([("ctid".to_string(), "../101".to_string())]);
    assert!(matches!(
        target_in("vz", &evil, &p),
        Err(Error::BadParam { name: "CTID", .. })
    ));
    let dst = target_in("vz", &params, &p).unwrap();
    assert_eq!(dst.kind(), "vz");
    assert_eq!(dst.params(), params);

    // Restore options: the container's root only if it is there.
    let r = dst.restore_options();
    assert_eq!(r.root, None);
    assert_eq!(r.ghost_limit, Some(vz::GHOST_LIMIT));
    assert_eq!(r.manage_cgroups.as_deref(), Some("soft"));
    assert_eq!(r.freeze_cgroup, None);
    let root = dir.path().join("root").join(CTID);
    std::fs::create_dir_all(&root).unwrap();
    assert_eq!(dst.restore_options().root.as_deref(), root.to_str());

    // The target applies what arrived: cgset for each ve value, the core
    // pattern through cgexec's tee.
    let images = dir.path().join("images");
    std::fs::create_dir(&images).unwrap();
    dst.prepare_restore(&images).unwrap();
    assert_eq!(take_log(&log), Vec::<String>::new(), "nothing arrived");
    for (name, content) in files.iter().chain(&meta) {
        std::fs::write(images.join(name), content).unwrap();
    }
    std::fs::write(images.join("vz_unknown.img"), "1\n").unwrap();
    set_freezer(dir.path(), CTID, "THAWED");
    dst.prepare_restore(&images).unwrap();
    let mut want_log: Vec<String> = VALUES
        .iter()
        .map(|(_, param, v)| format!("cgset -r {param}={v} {CTID} freezer=THAWED"))
        .collect();
    want_log.push(format!(
        "cgexec -g ve:{CTID} tee /proc/sys/kernel/core_pattern stdin={CORE} freezer=THAWED"
    ));
    assert_eq!(take_log(&log), want_log);

    // Failing or missing tools, or values that are not one line, are
    // warnings: the restore goes on.
    set_env("PHAUL_STANDIN_FAIL", "cgset,cgexec");
    dst.prepare_restore(&images).unwrap();
    assert_eq!(take_log(&log).len(), 7);
    set_env("PHAUL_STANDIN_FAIL", "");
    let blind_dst = Vz::target(&params, &no_tools).unwrap();
    blind_dst.prepare_restore(&images).unwrap();
    assert_eq!(take_log(&log), Vec::<String>::new());
    std::fs::write(images.join("vz_features.img"), "1\n2\n").unwrap();
    std::fs::write(images.join("vz_core_pattern.img"), "core\n|/bin/evil\n").unwrap();
    dst.prepare_restore(&images).unwrap();
    let applied = take_log(&log);
    assert_eq!(applied.len(), 5, "{applied:?}");
    assert!(!applied.iter().any(|l| l.contains("ve.features")));
    assert!(!applied.iter().any(|l| l.starts_with("cgexec")));
}
