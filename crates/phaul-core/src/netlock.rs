//! Releasing CRIU's network lock after a rolled-back lazy dump.
//!
//! To dump established TCP connections CRIU locks the tree's network: in a
//! network namespace of the tree's own, a `CRIU` chain in the filter table
//! that drops every packet but its own. After a normal dump's failure CRIU
//! removes it, but a lazy dump (post-copy) whose page transfer fails
//! resumes the tree with the lock still in place (CRIU 4.1 and 4.2: the
//! unlock comes before the lazy transfer and only when the dump already
//! failed), and with the tree's TCP sockets still in repair mode, so the
//! resumed server would drop every client packet and then reset its
//! connections. The engine undoes both once the tree runs again: it takes
//! each of the tree's TCP sockets out of repair mode (through a copy of the
//! descriptor, `pidfd_getfd`), then removes the chain.

use std::io::Write;
use std::process::{Command, Stdio};

use tracing::{info, warn};

/// What removes CRIU's chain, for `iptables-restore --noflush`.
const UNLOCK: &str = "*filter\n-D INPUT -j CRIU\n-D OUTPUT -j CRIU\n-F CRIU\n-X CRIU\nCOMMIT\n";

/// The kernel's `TCP_REPAIR` socket option (linux/tcp.h).
const TCP_REPAIR: libc::c_int = 19;

/// Takes the TCP sockets of the tree rooted at `root` out of repair mode;
/// returns how many were in it.
pub fn repair_off(root: i32) -> usize {
    let mut n = 0;
    for pid in crate::sockets::tree(root) {
        let fds = crate::sockets::socket_fds(pid);
        if fds.is_empty() {
            continue;
        }
        // SAFETY: pidfd_open takes a PID and flags and returns a new fd or
        // -1; nothing is borrowed.
        let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        let Ok(pidfd) = libc::c_int::try_from(pidfd) else {
            continue;
        };
        if pidfd < 0 {
            continue;
        }
        n += fds
            .iter()
            .filter(|(fd, _)| repair_off_one(pidfd, *fd))
            .count();
        // SAFETY: pidfd is ours, opened above and closed once.
        unsafe { libc::close(pidfd) };
    }
    n
}

/// Copies the tree's `fd` and, when it is a TCP socket in repair mode,
/// turns repair off (which also sends a window probe to the peer).
fn repair_off_one(pidfd: libc::c_int, fd: libc::c_int) -> bool {
    // SAFETY: pidfd_getfd returns a new descriptor of ours or -1.
    let ours = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fd, 0) };
    let Ok(ours) = libc::c_int::try_from(ours) else {
        return false;
    };
    if ours < 0 {
        return false;
    }
    let mut on: libc::c_int = 0;
    let mut len = libc::socklen_t::try_from(std::mem::size_of::<libc::c_int>()).unwrap_or(4);
    let off: libc::c_int = 0;
    // SAFETY: `ours` is a descriptor we own; the option buffers are live
    // locals of the sizes passed.
    let was_on = unsafe {
        libc::getsockopt(
            ours,
            libc::IPPROTO_TCP,
            TCP_REPAIR,
            (&raw mut on).cast(),
            &raw mut len,
        ) == 0
            && on == 1
            && libc::setsockopt(
                ours,
                libc::IPPROTO_TCP,
                TCP_REPAIR,
                (&raw const off).cast(),
                len,
            ) == 0
    };
    tracing::debug!(fd, on, was_on, "TCP repair state of a resumed socket");
    // SAFETY: our copy, closed once; the tree's descriptor stays open.
    unsafe { libc::close(ours) };
    was_on
}

/// Takes the tree's TCP sockets out of repair mode, then removes CRIU's
/// lock chain from the network namespace of `pid` when the tree has a
/// namespace of its own and the chain is there; a tree in its host's
/// namespace keeps CRIU's per-connection rules (other migrations' rules
/// may sit beside them).
pub fn release(pid: i32) {
    let repaired = repair_off(pid);
    if repaired > 0 {
        info!(
            pid,
            sockets = repaired,
            "took the resumed tree's TCP sockets out of repair mode"
        );
    }
    if !own_netns(pid) {
        return;
    }
    let ns = format!("/proc/{pid}/ns/net");
    for (save, restore) in [
        ("iptables-save", "iptables-restore"),
        ("ip6tables-save", "ip6tables-restore"),
    ] {
        let rules = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .arg(save)
            .output();
        let Ok(rules) = rules else { continue };
        if !String::from_utf8_lossy(&rules.stdout).contains(":CRIU ") {
            continue;
        }
        match run_with_input(&ns, restore, UNLOCK) {
            Ok(()) => info!(pid, tool = restore, "released CRIU's network lock"),
            Err(e) => {
                warn!(pid, tool = restore, error = %e, "could not release CRIU's network lock")
            }
        }
    }
    release_nft(pid, &ns);
}

/// The nftables form of the lock (`--network-lock nftables`): a table
/// `inet CRIU-<run id>` in the tree's namespace, removed whole.
fn release_nft(pid: i32, ns: &str) {
    let Ok(tables) = Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args(["nft", "list", "tables"])
        .output()
    else {
        return;
    };
    for line in String::from_utf8_lossy(&tables.stdout).lines() {
        let Some(name) = line
            .strip_prefix("table inet ")
            .filter(|n| n.starts_with("CRIU-") && !n.contains(char::is_whitespace))
        else {
            continue;
        };
        let gone = Command::new("nsenter")
            .arg(format!("--net={ns}"))
            .args(["nft", "delete", "table", "inet", name])
            .status()
            .is_ok_and(|s| s.success());
        if gone {
            info!(pid, table = name, "released CRIU's nftables network lock");
        } else {
            warn!(
                pid,
                table = name,
                "could not release CRIU's nftables network lock"
            );
        }
    }
}

/// Whether `pid` has a network namespace other than ours (the host's).
/// CRIU locks such a namespace whole, with a program per rule set under
/// iptables; a tree in ours is locked per TCP connection, which costs
/// nothing without connections under iptables but a table under nftables
/// (and an unlock that fails on a table never made: 11 ms of a restore's
/// downtime here).
///
/// "Ours" is the calling thread's namespace, where the CRIU this thread
/// starts runs, not the process's (`/proc/self` is the main thread's): an
/// embedder may run a migration on a thread it moved into another
/// namespace, as phaul's tests and benches do.
pub(crate) fn own_netns(pid: i32) -> bool {
    use std::os::unix::fs::MetadataExt;
    let ino = |p: &str| std::fs::metadata(p).map(|m| (m.dev(), m.ino())).ok();
    let theirs = ino(&format!("/proc/{pid}/ns/net"));
    theirs.is_some() && theirs != ino("/proc/thread-self/ns/net")
}

fn run_with_input(ns: &str, tool: &str, input: &str) -> std::io::Result<()> {
    let mut child = Command::new("nsenter")
        .arg(format!("--net={ns}"))
        .args([tool, "-w", "--noflush"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(std::io::Error::other(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a thread moved into a namespace of its own, a process it
    /// started there shares its namespace, though not the main thread's.
    #[test]
    fn ours_is_the_calling_threads_namespace() {
        if !phaul_testkit::require_root("ours_is_the_calling_threads_namespace") {
            return;
        }
        let seen = std::thread::spawn(|| {
            // SAFETY: unshare takes flags only; it moves this thread alone.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                panic!("unshare: {}", std::io::Error::last_os_error());
            }
            let mut child = Command::new("sleep").arg("5").spawn().unwrap();
            let pid = i32::try_from(child.id()).unwrap();
            let seen = (own_netns(pid), own_netns(std::process::id() as i32));
            let _ = child.kill();
            let _ = child.wait();
            seen
        })
        .join()
        .unwrap();
        assert_eq!(seen, (false, true), "(the child, the main thread)");
    }
}
