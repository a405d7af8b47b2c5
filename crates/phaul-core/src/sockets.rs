//! Pre-flight for trees with network sockets: a CRIU that cannot dump them
//! on this kernel is refused before anything is frozen.
//!
//! Linux 6.16 made SO_PASSCRED and SO_PASSSEC unix- and netlink-only;
//! CRIU before 4.2 asks every socket for them, so it fails on the first
//! TCP or UDP socket of a tree (after freezing it). Whether a given CRIU
//! has the fix is found by dumping a small process that holds a TCP socket
//! (a patched 4.1 passes), and only where the version and the kernel make
//! it doubtful.

use std::collections::{HashMap, HashSet};
use std::fs;

/// Whether `criu` (as `"4.1.1"`) on kernel `release` (as `uname -r`) may
/// fail on inet sockets, so that a probe must decide.
pub fn inet_dump_doubtful(criu: &str, release: &str) -> bool {
    let criu = criu
        .parse::<criu_rpc::Version>()
        .ok()
        .map(|v| (v.major, v.minor));
    let kernel: Option<(u32, u32)> = {
        let mut it = release.split(['.', '-']);
        it.next()
            .and_then(|a| a.parse().ok())
            .zip(it.next().and_then(|b| b.parse().ok()))
    };
    match (criu, kernel) {
        (Some(c), Some(k)) => c < (4, 2) && k >= (6, 16),
        _ => false,
    }
}

/// This kernel's release (`uname -r`).
pub fn kernel_release() -> String {
    nix::sys::utsname::uname()
        .map(|u| u.release().to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The TCP and UDP sockets the tree rooted at `root` holds, described as
/// `"tcp 0.0.0.0:6379 (pid 42)"`, at most `limit` of them.
pub fn inet_sockets(root: i32, limit: usize) -> Vec<String> {
    let mut found = Vec::new();
    each_socket(root, &["tcp", "tcp6", "udp", "udp6"], |pid, proto, f| {
        if let Some(local) = f.get(1) {
            found.push(format!("{proto} {} (pid {pid})", addr(local)));
        }
        found.len() >= limit
    });
    found
}

/// Whether the tree rooted at `root` holds a TCP socket that is neither
/// listening nor closed: one CRIU locks per connection when the tree
/// shares its host's network namespace.
pub(crate) fn has_tcp_connection(root: i32) -> bool {
    let mut connected = false;
    each_socket(root, &["tcp", "tcp6"], |_, _, f| {
        // Field 3 is the state: 0A listening, 07 closed.
        connected = f.get(3).is_some_and(|st| !matches!(*st, "0A" | "07"));
        connected
    });
    connected
}

/// Calls `found(pid, table, fields)` for each line of a `/proc/PID/net/TABLE`
/// (for each of `tables`) that is a socket of the tree's process PID,
/// until it returns true. Processes in one network namespace see the same
/// tables, which can be long on a busy host, so each namespace's are read
/// once; a socket several processes share is reported once, for the first.
fn each_socket(root: i32, tables: &[&str], mut found: impl FnMut(i32, &str, &[&str]) -> bool) {
    // Per namespace, in the order first met: a process to read its tables
    // through, and which process of the tree holds each socket inode.
    let mut namespaces: Vec<(u64, i32, HashMap<u64, i32>)> = Vec::new();
    for pid in tree(root) {
        let inodes = socket_inodes(pid);
        let Some(ns) = netns_inode(pid).filter(|_| !inodes.is_empty()) else {
            continue;
        };
        let at = match namespaces.iter().position(|(n, ..)| *n == ns) {
            Some(i) => i,
            None => {
                namespaces.push((ns, pid, HashMap::new()));
                namespaces.len() - 1
            }
        };
        for i in inodes {
            namespaces[at].2.entry(i).or_insert(pid);
        }
    }
    for (_, reader, holders) in &namespaces {
        for table in tables {
            let Ok(text) = fs::read_to_string(format!("/proc/{reader}/net/{table}")) else {
                continue;
            };
            for line in text.lines().skip(1) {
                let f: Vec<&str> = line.split_whitespace().collect();
                let holder = f
                    .get(9)
                    .and_then(|i| i.parse::<u64>().ok())
                    .and_then(|i| holders.get(&i));
                if let Some(&pid) = holder
                    && found(pid, table, &f)
                {
                    return;
                }
            }
        }
    }
}

/// The inode of the process `pid`'s network namespace.
fn netns_inode(pid: i32) -> Option<u64> {
    use std::os::unix::fs::MetadataExt;
    fs::metadata(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(|m| m.ino())
}

/// The tree's PIDs, root first.
pub(crate) fn tree(root: i32) -> Vec<i32> {
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() && out.len() < 65_536 {
        let pid = out[i];
        if let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) {
            for t in tasks.flatten() {
                let kids = fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(
                    kids.split_whitespace()
                        .filter_map(|k| k.parse::<i32>().ok()),
                );
            }
        }
        i += 1;
    }
    out
}

/// The socket inodes of the process `pid`'s descriptors.
pub(crate) fn socket_inodes(pid: i32) -> HashSet<u64> {
    socket_fds(pid).into_iter().map(|(_, ino)| ino).collect()
}

/// The descriptors of the process `pid` that are sockets, with their
/// inodes.
pub(crate) fn socket_fds(pid: i32) -> Vec<(i32, u64)> {
    let Ok(fds) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    fds.flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = fs::read_link(e.path()).ok()?;
            let ino = link
                .to_str()?
                .strip_prefix("socket:[")?
                .strip_suffix(']')?
                .parse()
                .ok()?;
            Some((fd, ino))
        })
        .collect()
}

/// `0100007F:1F90` -> `127.0.0.1:8080`: the kernel writes addresses as
/// 32-bit words in host (little-endian) order, IPv6 as four of them.
fn addr(hex: &str) -> String {
    let Some((ip, port)) = hex.split_once(':') else {
        return hex.to_string();
    };
    let port = u16::from_str_radix(port, 16).map_or_else(|_| port.to_string(), |p| p.to_string());
    let words: Option<Vec<[u8; 4]>> = (0..ip.len() / 8)
        .map(|i| {
            ip.get(i * 8..i * 8 + 8)
                .and_then(|w| u32::from_str_radix(w, 16).ok())
        })
        .map(|w| w.map(u32::to_le_bytes))
        .collect();
    match (words, ip.len()) {
        (Some(w), 8) => format!("{}:{port}", std::net::Ipv4Addr::from(w[0])),
        (Some(w), 32) => {
            let bytes: [u8; 16] = w.concat().try_into().unwrap_or([0; 16]);
            format!("[{}]:{port}", std::net::Ipv6Addr::from(bytes))
        }
        _ => format!("{ip}:{port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_old_criu_on_new_kernels_is_doubtful() {
        assert!(inet_dump_doubtful("4.1.1", "6.18.44-fc-v1252"));
        assert!(inet_dump_doubtful("4.0", "6.16.0"));
        assert!(inet_dump_doubtful("3.17.1", "7.0.1"));
        assert!(!inet_dump_doubtful("4.2.1", "6.18.44"));
        assert!(!inet_dump_doubtful("4.1.1", "6.15.9"));
        assert!(!inet_dump_doubtful("4.1.1", "6.1.0-28-amd64"));
        assert!(!inet_dump_doubtful("garbage", "6.18"));
    }

    #[test]
    fn a_listening_socket_of_this_process_is_found_and_named() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let me = i32::try_from(std::process::id()).unwrap();
        let found = inet_sockets(me, 64);
        assert!(
            found
                .iter()
                .any(|s| s.starts_with("tcp 127.0.0.1:") && s.contains(&format!(":{port} "))),
            "{found:?}"
        );
        drop(l);
    }

    /// A child that listens, and connects to itself when `connect`; it
    /// prints a line once its sockets are there.
    fn python_with_sockets(connect: bool) -> std::process::Child {
        let script = format!(
            "import socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',0))\nl.listen()\n\
             c=socket.create_connection(l.getsockname()) if {} else None\n\
             print('ready',flush=True)\ntime.sleep(30)\n",
            if connect { "True" } else { "False" }
        );
        python_ready(&script)
    }

    /// Python running `script`, once it has printed `ready`.
    fn python_ready(script: &str) -> std::process::Child {
        use std::io::BufRead;
        let mut child = std::process::Command::new("python3")
            .args(["-c", script])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.as_mut().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        child
    }

    #[test]
    fn a_connection_counts_and_a_listener_does_not() {
        for (connect, want) in [(false, false), (true, true)] {
            let mut child = python_with_sockets(connect);
            let pid = i32::try_from(child.id()).unwrap();
            let got = has_tcp_connection(pid);
            let _ = child.kill();
            let _ = child.wait();
            assert_eq!(got, want, "connected: {connect}");
        }
    }

    /// The tables are read per namespace, not per process: a socket the
    /// tree's two processes share is one socket.
    #[test]
    fn a_socket_a_parent_and_its_child_share_is_listed_once() {
        let script = "import os,socket,time\nl=socket.socket()\nl.bind(('127.0.0.1',0))\n\
                      l.listen()\nif os.fork()==0:\n    time.sleep(30)\n    os._exit(0)\n\
                      time.sleep(0.2)\nprint('ready',flush=True)\ntime.sleep(30)\n";
        let mut child = python_ready(script);
        let pid = i32::try_from(child.id()).unwrap();
        let (procs, found) = (tree(pid).len(), inet_sockets(pid, 10));
        let _ = std::process::Command::new("pkill")
            .args(["-KILL", "-P", &pid.to_string()])
            .status();
        let _ = child.kill();
        let _ = child.wait();
        assert_eq!(procs, 2, "the parent and its child");
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].contains(&format!("(pid {pid})")), "{found:?}");
    }

    #[test]
    fn kernel_addresses_read_back() {
        assert_eq!(addr("0100007F:1F90"), "127.0.0.1:8080");
        assert_eq!(addr("00000000000000000000000000000000:18EB"), "[::]:6379");
        assert_eq!(addr("00000000000000000000000001000000:0016"), "[::1]:22");
    }
}
