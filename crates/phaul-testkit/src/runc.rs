//! A runc container set up as an orchestrator (CNI) sets one up: a
//! network namespace at `/run/netns/NAME` with the container's address,
//! which the container's config joins by path, and a bundle that runs
//! Debian's redis-server there.

use std::path::Path;
use std::process::Command;

use crate::lan::ip;

/// A network namespace at `/run/netns/NAME`, removed on drop.
#[derive(Debug)]
pub struct NamedNetns {
    /// Its name under `/run/netns`.
    pub name: String,
}

impl NamedNetns {
    /// Makes namespace `name` with `eth0` holding `addr` (a /24) and `mac`;
    /// the veth's other end is `dev` in host `host`, on `bridge` only when
    /// `online`.
    pub fn new(
        name: &str,
        host: &str,
        dev: &str,
        bridge: &str,
        (addr, mac): (&str, &str),
        online: bool,
    ) -> std::io::Result<Self> {
        ip(&["netns", "add", name])?;
        let me = Self {
            name: name.to_string(),
        };
        ip(&[
            "-n", host, "link", "add", dev, "type", "veth", "peer", "name", "eth0", "netns", name,
        ])?;
        ip(&["-n", name, "link", "set", "lo", "up"])?;
        ip(&["-n", name, "link", "set", "eth0", "address", mac])?;
        let cidr = format!("{addr}/24");
        ip(&["-n", name, "addr", "add", &cidr, "dev", "eth0"])?;
        ip(&["-n", name, "link", "set", "eth0", "up"])?;
        if online {
            ip(&["-n", host, "link", "set", dev, "master", bridge, "up"])?;
        }
        Ok(me)
    }
}

impl Drop for NamedNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}

fn run(cmd: &mut Command) -> std::io::Result<()> {
    let out = cmd.output()?;
    if out.status.success() {
        return Ok(());
    }
    Err(std::io::Error::other(format!(
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Writes a runc bundle in `dir`: busybox, with the host's libraries and
/// `/usr/bin` bound in read-only, running `redis-server --port 6379
/// --protected-mode no --save '' --appendonly no` plus `extra` (plain
/// words) in the network namespace at `netns`. Its stdio is inside the
/// container: CRIU cannot dump a mount of a host file.
pub fn redis_bundle(dir: &Path, netns: &str, extra: &[&str]) -> std::io::Result<()> {
    let rootfs = dir.join("rootfs");
    for d in [
        "bin",
        "tmp",
        "proc",
        "sys",
        "dev",
        "usr/lib",
        "lib",
        "lib64",
        "opt/host-bin",
    ] {
        std::fs::create_dir_all(rootfs.join(d))?;
    }
    std::fs::copy("/bin/busybox", rootfs.join("bin/busybox"))?;
    run(Command::new("chroot")
        .arg(&rootfs)
        .args(["/bin/busybox", "--install", "-s", "/bin"]))?;
    run(Command::new("runc").arg("spec").current_dir(dir))?;
    let path = dir.join("config.json");
    let bad = |what: &str| std::io::Error::other(format!("runc spec wrote no {what}"));
    let mut v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path)?).map_err(std::io::Error::other)?;
    v["process"]["terminal"] = false.into();
    v["root"]["readonly"] = false.into();
    let mut args = crate::lan::redis_argv("/opt/host-bin/redis-server");
    args.extend_from_slice(extra);
    // `sh` only to move stdio inside; the words come as its arguments.
    let mut argv = vec![
        "/bin/sh",
        "-c",
        r#"exec </dev/null >/dev/null 2>&1; exec "$@""#,
        "sh",
    ];
    argv.extend(args);
    v["process"]["args"] = serde_json::json!(argv);
    let mounts = v["mounts"].as_array_mut().ok_or_else(|| bad("mounts"))?;
    for (dst, src) in [
        ("/usr/lib", "/usr/lib"),
        ("/lib", "/usr/lib"),
        ("/lib64", "/usr/lib64"),
        ("/opt/host-bin", "/usr/bin"),
    ] {
        mounts.push(serde_json::json!({
            "destination": dst, "type": "bind", "source": src, "options": ["rbind", "ro"]
        }));
    }
    let spaces = v["linux"]["namespaces"]
        .as_array_mut()
        .ok_or_else(|| bad("namespaces"))?;
    for n in spaces {
        if n["type"] == "network" {
            n["path"] = netns.into();
        }
    }
    std::fs::write(
        &path,
        serde_json::to_vec_pretty(&v).map_err(std::io::Error::other)?,
    )
}
