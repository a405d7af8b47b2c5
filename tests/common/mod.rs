//! What the tests of the example binaries share: finding a built example,
//! writing a key file, and a `phaul-service` inside the target host that is
//! killed when dropped (also when a test panics).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::Duration;

use phaul_testkit::{Hosts, wait_until};

/// A binary built by `cargo test` from `examples/`.
pub fn example(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/TEST-HASH -> target/<profile>/examples/NAME
    let p = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    assert!(
        p.exists(),
        "{} is not built (cargo test builds examples)",
        p.display()
    );
    p
}

/// A key file in `dir` holding `content`, with permission bits `mode`.
pub fn key_file(dir: &Path, content: &str, mode: u32) -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(format!("key-{mode:o}-{}", content.len()));
    std::fs::write(&p, content).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    p
}

/// A child process killed when dropped (also when a test panics).
pub struct Killed(pub Child);

impl Killed {
    pub fn stop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Killed {
    fn drop(&mut self) {
        self.stop();
    }
}

/// `phaul-service` on port 7070 of the target host, with `extra` options;
/// returns it and its address once it listens.
pub fn service(
    hosts: &Hosts,
    key: &Path,
    work: &Path,
    extra: &[&std::ffi::OsStr],
) -> (Killed, String) {
    let log = work.join("service.log");
    let child = Hosts::command(&hosts.tgt, example("phaul-service"))
        .args(["--listen", &format!("{}:7070", hosts.tgt_ip), "--key-file"])
        .arg(key)
        .arg("--work-dir")
        .arg(work.join("target"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        // Its tracing, kept beside the log for a look after a failure.
        .stderr(std::fs::File::create(work.join("service.err")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&log);
    (Killed(child), format!("{}:7070", hosts.tgt_ip))
}

/// `phaul-service` on `ip`:7070 inside host `ns`, its work directory, log
/// and tracing under `work/name`; returns it and its address once it
/// listens.
pub fn service_on(ns: &str, ip: &str, key: &Path, work: &Path, name: &str) -> (Killed, String) {
    let dir = work.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("service.log");
    let child = Hosts::command(ns, example("phaul-service"))
        .args(["--listen", &format!("{ip}:7070"), "--key-file"])
        .arg(key)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(std::fs::File::create(dir.join("service.err")).unwrap())
        .spawn()
        .unwrap();
    wait_listening(&log);
    (Killed(child), format!("{ip}:7070"))
}

/// Waits until the `phaul-service` writing `log` listens.
pub fn wait_listening(log: &Path) {
    wait_until(Duration::from_secs(20), || {
        std::fs::read_to_string(log)
            .ok()
            .filter(|s| s.contains("listening on"))
            .map(drop)
    })
    .expect("phaul-service did not start");
}

/// What `phaul migrate` did: its exit status, stderr and JSON report
/// (`Null` if it wrote none).
pub struct CliRun {
    pub status: i32,
    pub stderr: String,
    pub json: serde_json::Value,
}

/// `phaul migrate --json FILE --work-dir DIR/source ARGS...`, in host `ns`
/// if given (each call its own report file in `dir`).
pub fn phaul_migrate(dir: &Path, ns: Option<&str>, args: &[&str]) -> CliRun {
    static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let json = dir.join(format!("report-{n}.json"));
    let mut cmd = match ns {
        Some(ns) => Hosts::command(ns, example("phaul")),
        None => std::process::Command::new(example("phaul")),
    };
    let out = cmd
        .arg("migrate")
        .arg("--json")
        .arg(&json)
        .arg("--work-dir")
        .arg(dir.join("source"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let json = std::fs::read_to_string(&json)
        .map(|s| serde_json::from_str(&s).unwrap())
        .unwrap_or(serde_json::Value::Null);
    CliRun {
        status: out.status.code().unwrap_or(-1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        json,
    }
}

/// `phaul migrate --mode stop-copy` of `pid` in the source host, to the
/// service at `addr`: its exit status, stderr and JSON report.
pub fn cli_stop_copy(
    hosts: &Hosts,
    dir: &Path,
    addr: &str,
    key: &Path,
    pid: i32,
) -> (i32, String, serde_json::Value) {
    let key = key.to_str().unwrap();
    let pid = pid.to_string();
    let args = [
        "--to",
        addr,
        "--key-file",
        key,
        "--mode",
        "stop-copy",
        "pid",
        &pid,
    ];
    let r = phaul_migrate(dir, Some(&hosts.src), &args);
    (r.status, r.stderr, r.json)
}

/// The value of the metrics sample named exactly `name` (with its labels)
/// in a Prometheus scrape.
pub fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' '))
        .unwrap_or_else(|| panic!("no sample {name} in\n{text}"))
        .parse()
        .unwrap()
}
