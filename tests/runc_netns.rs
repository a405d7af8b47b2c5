//! A runc container whose config joins the orchestrator's network
//! namespace by path (what CNI makes) moves with its LAN client attached.
//! Each host has its own namespace at that path, with the container's
//! address and MAC; on the target it waits off the LAN until the move, as an
//! orchestrator would prepare it. Both "hosts" are one machine here, so the
//! target's `phaul-service` runs in a mount namespace of its own in which
//! the target's namespace is bound over the path. runc joins it on restore;
//! the orchestrator (this test) then takes the source's copy off the LAN and
//! puts the target's on it, and the client's one connection goes on with no
//! error. Needs root, CRIU, runc and redis-server; under `CI` their absence
//! fails.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use phaul_testkit::lan::{LanClient, redis_cli, redis_ready_with, require_redis};
use phaul_testkit::runc::{NamedNetns, redis_bundle};
use phaul_testkit::{Hosts, require_criu};

mod common;
use common::{Killed, example, key_file, wait_listening};

const MAC: &str = "02:70:68:61:75:46";

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn ip(args: &[&str]) {
    run(Command::new("ip").args(args));
}

#[test]
fn a_runc_container_in_a_named_network_namespace_keeps_its_client() {
    let test = "a_runc_container_in_a_named_network_namespace_keeps_its_client";
    let Some(criu) = require_criu(test) else {
        return;
    };
    if require_redis(test).is_none() {
        return;
    }
    let hosts = Hosts::with_lan().unwrap();
    let lan = hosts.lan();
    let addr = lan.ip(70);
    let tag = std::process::id() % 100_000;
    let (name, spare) = (format!("phrn{tag}"), format!("phrm{tag}"));
    let (src_dev, tgt_dev) = (format!("phrs{tag}"), format!("phrt{tag}"));
    let ct = (addr.as_str(), MAC);
    let src_ns = NamedNetns::new(&name, &hosts.src, &src_dev, &lan.bridge, ct, true).unwrap();
    // The target's namespace, off the LAN until the move; bound over the
    // same path in the target service's mount namespace.
    let _tgt_ns = NamedNetns::new(&spare, &hosts.tgt, &tgt_dev, &lan.bridge, ct, false).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let base = dir.path();
    let (root_a, root_b, bundles) = (
        base.join("root-a"),
        base.join("root-b"),
        base.join("bundles"),
    );
    for d in [&root_a, &root_b, &bundles] {
        std::fs::create_dir_all(d).unwrap();
    }
    let src_bundle = base.join("bundle");
    let path = format!("/run/netns/{name}");
    redis_bundle(&src_bundle, &path, &[]).unwrap();
    let id = format!("phrn{tag}");
    struct Container(String, Vec<PathBuf>);
    impl Drop for Container {
        fn drop(&mut self) {
            for root in &self.1 {
                let runc = |args: &[&str]| {
                    let _ = Command::new("runc")
                        .arg("--root")
                        .arg(root)
                        .args(args)
                        .output();
                };
                runc(&["kill", &self.0, "KILL"]);
                runc(&["delete", "-f", &self.0]);
            }
        }
    }
    let _container = Container(id.clone(), vec![root_a.clone(), root_b.clone()]);
    run(Command::new("runc")
        .arg("--root")
        .arg(&root_a)
        .args(["run", "-d", &id])
        .current_dir(&src_bundle)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null()));
    redis_ready_with(lan, &addr, "runc:k", 200).expect("redis in the runc container answers");
    let client = LanClient::start(lan, &addr, 6379, Duration::from_millis(5)).unwrap();

    let key = key_file(base, "a runc netns test key, 32 bytes long", 0o600);
    let log = base.join("service.log");
    // The target host: its own mount namespace, where the path names the
    // target's namespace; data travel as arguments, the script is fixed.
    let svc = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "/bin/sh", "-c"])
        .arg(r#"mount --bind "$1" "$2" && shift 2 && exec "$@""#)
        .arg("sh")
        .arg(format!("/run/netns/{spare}"))
        .arg(&path)
        .arg("nsenter")
        .arg(format!("--net=/run/netns/{}", hosts.tgt))
        .arg(example("phaul-service"))
        .args(["--listen", &format!("{}:7070", hosts.tgt_ip), "--key-file"])
        .arg(&key)
        .arg("--work-dir")
        .arg(base.join("target"))
        .arg("--runc-root")
        .arg(&root_b)
        .arg("--runc-bundles")
        .arg(&bundles)
        .arg("--criu")
        .arg(&criu)
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(&log).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let _svc = Killed(svc);
    wait_listening(&log);

    let out = Hosts::command(&hosts.src, example("phaul"))
        .args([
            "migrate",
            "--to",
            &format!("{}:7070", hosts.tgt_ip),
            "--key-file",
        ])
        .arg(&key)
        .arg("--runc-root")
        .arg(&root_a)
        .arg("--work-dir")
        .arg(base.join("source"))
        .args(["runc", &id])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // The orchestrator's part: the source's namespace off the LAN, the
    // target's on it.
    ip(&[
        "-n", &hosts.src, "link", "set", &src_dev, "nomaster", "down",
    ]);
    ip(&[
        "-n",
        &hosts.tgt,
        "link",
        "set",
        &tgt_dev,
        "master",
        &lan.bridge,
        "up",
    ]);
    drop(src_ns);
    let s = client
        .answers_after(100, Duration::from_secs(30))
        .unwrap_or_else(|| panic!("the client's requests stopped: {:?}", client.stats()));
    assert_eq!(s.errors, 0, "client errors: {:?}", s.last_error);
    assert_eq!(redis_cli(lan, &addr, &["GET", "runc:k199"]), "v199");
    #[allow(clippy::print_stderr)]
    {
        eprintln!(
            "{test}: client longest stall {:.1} ms, 0 errors",
            s.longest_stall_ms
        );
    }
}
