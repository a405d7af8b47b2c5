//! Freezing a tree's freezer cgroup before CRIU does.
//!
//! CRIU freezes a `--freeze-cgroup` and then looks at its state every
//! 100 ms (`freeze_processes` in criu/seize.c), so a container that freezes
//! in one millisecond is frozen for a hundred before the dump starts:
//! measured here, 100 ms of an LXC container's downtime in about half the
//! runs. Freezing it first and watching it every millisecond leaves CRIU a
//! frozen cgroup and nothing to wait for.
//!
//! CRIU thaws the cgroup once it holds every task by ptrace when the dump
//! succeeds, but leaves a cgroup it found frozen frozen when the dump fails:
//! [`Prefrozen::thaw`] undoes that, and is harmless after a success.
//!
//! CRIU also records the state it found (`freezer.state` among the
//! freezer cgroup's properties in `cgroup.img`) and restores the cgroup in
//! it, so that a container its user had frozen stays frozen. Found frozen
//! because phaul froze it, the copy would stay frozen on the target:
//! [`Prefrozen::fix_images`] records it as it was, thawed. Only a cgroup
//! that was thawed is frozen here; one its user froze is left to CRIU.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tracing::{debug, warn};

/// How often the state is read while it freezes.
const POLL: Duration = Duration::from_millis(1);
/// After this long CRIU is left to finish the freeze (and to fail the dump
/// by its own timeout if the cgroup never freezes).
const GIVE_UP: Duration = Duration::from_secs(5);

/// A `cgroup_prop_entry` as CRIU writes the freezer's state: field 1
/// (`name`, tag 0x0a) of 13 bytes, field 2 (`value`, tag 0x12) of 6.
const FROZEN_PROP: &[u8] = b"\x0a\x0dfreezer.state\x12\x06FROZEN";

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// The two freezer interfaces: cgroup v1's `freezer.state`, v2's
/// `cgroup.freeze` with `cgroup.events`.
#[derive(Debug, Clone)]
enum Knob {
    V1(PathBuf),
    V2(PathBuf),
}

impl Knob {
    fn of(cgroup: &Path) -> Option<Self> {
        let v1 = cgroup.join("freezer.state");
        let v2 = cgroup.join("cgroup.freeze");
        if v1.is_file() {
            Some(Self::V1(v1))
        } else if v2.is_file() {
            Some(Self::V2(cgroup.to_path_buf()))
        } else {
            None
        }
    }

    fn set(&self, frozen: bool) -> std::io::Result<()> {
        match self {
            Self::V1(state) => std::fs::write(state, if frozen { "FROZEN" } else { "THAWED" }),
            Self::V2(dir) => {
                std::fs::write(dir.join("cgroup.freeze"), if frozen { "1" } else { "0" })
            }
        }
    }

    fn is_frozen(&self) -> bool {
        match self {
            Self::V1(state) => std::fs::read_to_string(state).is_ok_and(|s| s.trim() == "FROZEN"),
            Self::V2(dir) => std::fs::read_to_string(dir.join("cgroup.events"))
                .is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1")),
        }
    }
}

/// A freezer cgroup this module froze (or nothing, when the dump names
/// none or it could not be frozen).
#[derive(Debug, Clone, Default)]
pub(crate) struct Prefrozen(Option<Knob>);

impl Prefrozen {
    /// Freezes `cgroup` and waits until it is frozen, reading its state
    /// every millisecond; `None` does nothing.
    pub(crate) async fn freeze(cgroup: Option<&Path>) -> Self {
        let Some(knob) = cgroup.and_then(Knob::of) else {
            return Self(None);
        };
        if knob.is_frozen() {
            // Its user froze it: CRIU keeps it so, on both hosts.
            return Self(None);
        }
        if let Err(e) = knob.set(true) {
            warn!(error = %e, ?knob, "could not freeze the cgroup; CRIU will");
            return Self(None);
        }
        let t0 = Instant::now();
        while !knob.is_frozen() && t0.elapsed() < GIVE_UP {
            tokio::time::sleep(POLL).await;
        }
        debug!(
            frozen = knob.is_frozen(),
            us = t0.elapsed().as_micros() as u64,
            "cgroup frozen ahead of CRIU"
        );
        Self(Some(knob))
    }

    /// Rewrites the freezer's recorded state in the dump's `cgroup.img` in
    /// `images` from FROZEN (phaul's doing) to THAWED, as it was. Both
    /// words are six bytes, so the protobuf entry keeps its length and the
    /// file its framing.
    pub(crate) fn fix_images(&self, images: &Path) {
        if self.0.is_none() {
            return;
        }
        let path = images.join("cgroup.img");
        let Ok(mut bytes) = std::fs::read(&path) else {
            return;
        };
        let mut fixed = 0;
        let mut at = 0;
        while let Some(i) = find(&bytes[at..], FROZEN_PROP) {
            let value = at + i + FROZEN_PROP.len() - b"FROZEN".len();
            bytes[value..value + 6].copy_from_slice(b"THAWED");
            fixed += 1;
            at = value + 6;
        }
        if fixed > 0 {
            match std::fs::write(&path, &bytes) {
                Ok(()) => debug!(fixed, "recorded the freezer cgroup as thawed"),
                Err(e) => warn!(error = %e, "could not record the freezer cgroup as thawed"),
            }
        }
    }

    /// Thaws the cgroup again (after a failed or abandoned dump).
    pub(crate) fn thaw(&self) {
        if let Some(knob) = &self.0
            && let Err(e) = knob.set(false)
        {
            warn!(error = %e, ?knob, "could not thaw the cgroup");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_cgroup_that_is_not_a_freezer_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let p = Prefrozen::freeze(Some(dir.path())).await;
        assert!(p.0.is_none());
        p.thaw();
        assert!(Prefrozen::freeze(None).await.0.is_none());
    }

    #[tokio::test]
    async fn the_recorded_state_becomes_thawed_only_when_phaul_froze_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("freezer.state"), "THAWED").unwrap();
        // Two entries as CRIU frames them, with another property between.
        let mut img = b"\x54\x45\x00\x00".to_vec();
        img.extend_from_slice(FROZEN_PROP);
        img.extend_from_slice(b"\x0a\x0bcpu.weight\x12\x06FROZEN");
        img.extend_from_slice(FROZEN_PROP);
        std::fs::write(dir.path().join("cgroup.img"), &img).unwrap();
        let read = || std::fs::read(dir.path().join("cgroup.img")).unwrap();
        Prefrozen(None).fix_images(dir.path());
        assert_eq!(read(), img, "nothing phaul froze, nothing changed");
        let p = Prefrozen::freeze(Some(dir.path())).await;
        p.fix_images(dir.path());
        let after = read();
        assert_eq!(after.len(), img.len());
        let text = String::from_utf8_lossy(&after);
        assert_eq!(text.matches("freezer.state\x12\x06THAWED").count(), 2);
        assert!(
            text.contains("cpu.weight\x12\x06FROZEN"),
            "other properties kept"
        );
    }

    #[tokio::test]
    async fn a_cgroup_its_user_froze_is_left_to_criu() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("freezer.state"), "FROZEN").unwrap();
        let p = Prefrozen::freeze(Some(dir.path())).await;
        assert!(p.0.is_none());
        p.thaw();
        let state = std::fs::read_to_string(dir.path().join("freezer.state")).unwrap();
        assert_eq!(state, "FROZEN");
    }

    #[tokio::test]
    async fn a_v1_state_file_is_written_and_read_back() {
        // A plain file stands in for cgroupfs, which applies the state at
        // once: the write is read back as frozen.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("freezer.state"), "THAWED").unwrap();
        let p = Prefrozen::freeze(Some(dir.path())).await;
        let state = || std::fs::read_to_string(dir.path().join("freezer.state")).unwrap();
        assert_eq!(state(), "FROZEN");
        p.thaw();
        assert_eq!(state(), "THAWED");
    }
}
