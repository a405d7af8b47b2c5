//! Expedited RCU grace periods while a target restores and commits.
//!
//! Much of what a restore asks of the kernel waits for an RCU grace period
//! before it returns: deleting the network lock's nftables table (its base
//! chains' hooks), moving tasks between cgroups, unmounting, tearing down
//! a namespace's devices. On an idle machine a normal grace period takes
//! about 10 ms (measured here: `nft delete table` of a two-chain lock
//! 14–20 ms), and a container's restore pays several of them inside its
//! downtime. With `/sys/kernel/rcu_expedited` set, the kernel forces each
//! grace period by interrupting every CPU instead (the same delete: 3.6 ms;
//! an LXC post-copy restore 107–159 ms instead of 144–210, its commit 16–28
//! instead of 25–89, in alternating bench rounds).
//!
//! The knob is the host's, so it is set only for the switch-over: from the
//! restore's start to the commit's end (or the rollback), and back to what
//! it was. Several migrations, in this process or in others, share it
//! through a lock file in `/run/phaul`: each holds the file's shared lock
//! while it needs the knob; the first one in saves the knob's value in the
//! file and sets it, and the last one out (the one that can take the
//! exclusive lock) writes the saved value back. A process that dies inside
//! its window leaves the knob set and the saved value behind; the next one
//! in, finding no one else holding the lock, keeps that saved value as the
//! one to give back at its own end. A knob an administrator
//! already set is left alone. Where the knob or `/run` cannot be written
//! (no privilege), nothing changes.
//!
//! The cost falls on the host's other tasks: an interrupt on each CPU per
//! grace period for a fraction of a second. `Service::expedite_rcu(false)`
//! turns it off.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use nix::fcntl::{Flock, FlockArg};
use tracing::debug;

/// Where the knob and the shared state are.
#[derive(Debug, Clone)]
pub(crate) struct Knob {
    /// The kernel's switch (`1`: expedited).
    pub(crate) sysctl: PathBuf,
    /// The lock file: the saved value while someone holds the knob.
    pub(crate) state: PathBuf,
}

impl Default for Knob {
    fn default() -> Self {
        Self {
            sysctl: "/sys/kernel/rcu_expedited".into(),
            state: "/run/phaul/rcu-expedited".into(),
        }
    }
}

/// The knob held for one switch-over; given back on drop.
#[derive(Debug)]
pub(crate) struct Expedited {
    held: Option<(Flock<File>, Knob)>,
}

impl Expedited {
    /// Nothing held.
    pub(crate) fn none() -> Self {
        Self { held: None }
    }

    /// Holds the knob (on the blocking pool: a file lock may wait for
    /// another migration's first or last step, which take microseconds).
    pub(crate) async fn begin(knob: Knob) -> Self {
        let held = tokio::task::spawn_blocking(move || hold(&knob).map(|l| (l, knob)))
            .await
            .unwrap_or(None);
        Self { held }
    }

    /// Whether this one holds the knob.
    #[cfg(test)]
    pub(crate) fn held(&self) -> bool {
        self.held.is_some()
    }
}

impl Drop for Expedited {
    fn drop(&mut self) {
        if let Some((lock, knob)) = self.held.take() {
            give_back(lock, &knob);
        }
    }
}

/// Holds the knob: the shared lock, the knob set. `None` where nothing
/// was done (an administrator's setting, no privilege).
fn hold(knob: &Knob) -> Option<Flock<File>> {
    for _ in 0..3 {
        let file = open_state(knob)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(mut alone) => {
                // No one else holds the knob: a saved value here is a dead
                // holder's, and the one to restore.
                let baseline = match saved(&mut alone) {
                    Some(v) => v,
                    None => read_knob(knob)?,
                };
                if baseline == "1" {
                    let _ = alone.set_len(0);
                    return None;
                }
                save(&mut alone, &baseline)?;
                if write_knob(knob, "1").is_none() {
                    let _ = alone.set_len(0);
                    return None;
                }
                debug!(was = %baseline, "RCU grace periods expedited for the switch-over");
                // Not atomic (flock drops, then takes): one who slips in
                // between finds the saved value and does the same again.
                return Flock::lock(alone.unlock().ok()?, FlockArg::LockSharedNonblock).ok();
            }
            Err((file, _)) => {
                let shared = Flock::lock(file, FlockArg::LockShared).ok()?;
                // The last holder may have given the knob back between the
                // two locks: then try again as the first.
                if read_knob(knob).as_deref() == Some("1") {
                    return Some(shared);
                }
            }
        }
    }
    None
}

/// Unlocks; the last holder writes the saved value back.
fn give_back(lock: Flock<File>, knob: &Knob) {
    let Ok(file) = lock.unlock() else { return };
    let Ok(mut last) = Flock::lock(file, FlockArg::LockExclusiveNonblock) else {
        return;
    };
    if let Some(v) = saved(&mut last) {
        let _ = write_knob(knob, &v);
        debug!(to = %v, "RCU grace periods back as they were");
        let _ = last.set_len(0);
    }
}

fn open_state(knob: &Knob) -> Option<File> {
    if let Some(dir) = knob.state.parent() {
        std::fs::create_dir_all(dir).ok()?;
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&knob.state)
        .map_err(|e| debug!(error = %e, "no lock file for the RCU knob: left alone"))
        .ok()
}

fn saved(f: &mut File) -> Option<String> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    let v = s.trim();
    matches!(v, "0" | "1").then(|| v.to_string())
}

fn save(f: &mut File, v: &str) -> Option<()> {
    f.set_len(0).ok()?;
    f.rewind().ok()?;
    f.write_all(v.as_bytes()).ok()
}

fn read_knob(knob: &Knob) -> Option<String> {
    let v = std::fs::read_to_string(&knob.sysctl).ok()?;
    Some(v.trim().to_string())
}

fn write_knob(knob: &Knob, v: &str) -> Option<()> {
    std::fs::write(&knob.sysctl, v)
        .map_err(|e| debug!(error = %e, "RCU knob not writable: left alone"))
        .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A knob that is a plain file, in a fresh directory.
    fn stand_in_knob(value: &str) -> (tempfile::TempDir, Knob) {
        let dir = tempfile::tempdir().unwrap();
        let knob = Knob {
            sysctl: dir.path().join("rcu_expedited"),
            state: dir.path().join("run/phaul/rcu-expedited"),
        };
        std::fs::write(&knob.sysctl, value).unwrap();
        (dir, knob)
    }

    fn value(p: &std::path::Path) -> String {
        std::fs::read_to_string(p).unwrap().trim().to_string()
    }

    #[tokio::test]
    async fn the_last_of_two_holders_gives_the_knob_back() {
        let (_d, knob) = stand_in_knob("0\n");
        let first = Expedited::begin(knob.clone()).await;
        assert!(first.held());
        assert_eq!(value(&knob.sysctl), "1");
        assert_eq!(value(&knob.state), "0", "the value to give back is saved");
        let second = Expedited::begin(knob.clone()).await;
        assert!(second.held());
        drop(first);
        assert_eq!(value(&knob.sysctl), "1", "the second still needs it");
        drop(second);
        assert_eq!(value(&knob.sysctl), "0");
        assert_eq!(value(&knob.state), "", "nothing saved once given back");
    }

    #[tokio::test]
    async fn an_administrators_setting_is_left_alone() {
        let (_d, knob) = stand_in_knob("1\n");
        let e = Expedited::begin(knob.clone()).await;
        assert!(!e.held());
        drop(e);
        assert_eq!(value(&knob.sysctl), "1");
    }

    #[tokio::test]
    async fn a_dead_holders_saved_value_is_restored_by_the_next() {
        let (_d, knob) = stand_in_knob("1\n");
        // What a process that died inside its window leaves: the knob set,
        // its saved value, and no lock.
        std::fs::create_dir_all(knob.state.parent().unwrap()).unwrap();
        std::fs::write(&knob.state, "0").unwrap();
        let e = Expedited::begin(knob.clone()).await;
        assert!(e.held());
        drop(e);
        assert_eq!(value(&knob.sysctl), "0");
    }

    #[tokio::test]
    async fn a_knob_that_cannot_be_read_is_left_alone() {
        let (d, mut knob) = stand_in_knob("0\n");
        knob.sysctl = d.path().join("absent/rcu_expedited");
        assert!(!Expedited::begin(knob).await.held());
    }

    #[tokio::test]
    async fn the_kernels_knob_is_set_while_held() {
        const TEST: &str = "the_kernels_knob_is_set_while_held";
        if !phaul_testkit::require_root(TEST) {
            return;
        }
        let knob = Knob::default();
        if nix::unistd::access(&knob.sysctl, nix::unistd::AccessFlags::W_OK).is_err() {
            phaul_testkit::unavailable(
                TEST,
                "a writable /sys/kernel/rcu_expedited",
                "run on a host, as root",
            );
            return;
        }
        if read_knob(&knob).as_deref() != Some("0") {
            // Set by an administrator, or held by another test's service:
            // then there is nothing this test could see change.
            return;
        }
        let e = Expedited::begin(knob.clone()).await;
        assert!(e.held());
        assert_eq!(read_knob(&knob).as_deref(), Some("1"));
        drop(e);
        // Another test's service may hold it still; if no one does, it is
        // back to 0.
        let f = open_state(&knob).unwrap();
        if let Ok(_alone) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            assert_eq!(read_knob(&knob).as_deref(), Some("0"));
        }
    }
}
