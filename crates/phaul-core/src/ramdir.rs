//! A post-copy's images in memory.
//!
//! A lazy dump's images hold no memory pages: those stay with the source's
//! CRIU until the target faults them in. What is left describes the tree, a
//! few hundred small files, written inside the freeze on the source and
//! again on the target before its restore. Both sides keep them in RAM, in
//! `/dev/shm` (a tmpfs on every systemd host), so that no disk file
//! system's inode and block allocation is inside the downtime. Measured in
//! the containers bench (`PHAUL_BENCH_RAM=on|off`, 3 alternating rounds of
//! 3 LXC post-copies at 128 MiB, medians of 9): the image batch 8 against
//! 31 ms, the client's stall 350 against 390 ms; on disk the later runs of
//! a bench paid most (see the README on this machine's journal-less ext4).
//!
//! The images directory the engine names stays where it was, now a
//! symlink to the RAM one, so CRIU, the kind's manager, the lazy-pages
//! daemon and a failure's log reader all see the same paths. Where
//! `/dev/shm` is not a tmpfs, cannot be written or has less than 256 MiB
//! of room, the directory is an ordinary one, as before. Images a user
//! asked to keep are never put in RAM.
//!
//! A RAM directory holds an exclusive `flock` on itself for as long as its
//! owner lives. [`remove_stale`] removes those whose owner died (a killed
//! service cannot clean up), whichever process or PID namespace owned them;
//! it is created under a hidden name and locked before it gets its real
//! one, so a scan never sees it unlocked.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{AT_FDCWD, Flock, FlockArg, RenameFlags, renameat2};
use tracing::{debug, info, warn};

/// Where RAM directories go.
pub(crate) const BASE: &str = "/dev/shm";

/// The prefix of their names, which [`remove_stale`] looks for.
const PREFIX: &str = "phaul-images-";

/// The least room RAM must have left for a migration's images to go
/// there. A lazy dump's images are well under a MiB, plus whatever the
/// tree keeps in its own tmpfs mounts (CRIU archives them); a container's
/// `/dev/shm` is often 64 MiB, which this refuses, leaving the images on
/// disk rather than failing the dump for want of room.
const MIN_FREE: u64 = 256 << 20;

/// A directory in RAM that a path on disk links to; removed on drop.
#[derive(Debug)]
pub(crate) struct RamDir {
    path: PathBuf,
    link: PathBuf,
    _lock: Flock<File>,
}

impl RamDir {
    /// Makes `link` (which must not exist) a symlink to a fresh directory
    /// in RAM; `None`, with nothing made, when RAM cannot hold it.
    pub(crate) fn link(link: &Path) -> Option<Self> {
        Self::link_in(Path::new(BASE), link)
    }

    /// [`RamDir::link`] with the RAM directory under `base`, which must be
    /// a tmpfs.
    pub(crate) fn link_in(base: &Path, link: &Path) -> Option<Self> {
        Self::link_with_room(base, link, MIN_FREE)
    }

    /// [`RamDir::link_in`] where `base` must have at least `min_free`
    /// bytes of room.
    fn link_with_room(base: &Path, link: &Path, min_free: u64) -> Option<Self> {
        if !is_tmpfs(base) {
            debug!(base = %base.display(), "not a tmpfs: images stay on disk");
            return None;
        }
        let free = room(base);
        if free < min_free {
            debug!(base = %base.display(), free, "too little room: images stay on disk");
            return None;
        }
        match Self::make(base, link) {
            Ok(d) => Some(d),
            Err(e) => {
                debug!(base = %base.display(), error = %e, "no RAM directory: images stay on disk");
                None
            }
        }
    }

    fn make(base: &Path, link: &Path) -> std::io::Result<Self> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos())
        );
        let hidden = base.join(format!(".{PREFIX}{name}"));
        let path = base.join(format!("{PREFIX}{name}"));
        std::fs::DirBuilder::new().mode(0o700).create(&hidden)?;
        let lock = File::open(&hidden)
            .and_then(|f| {
                Flock::lock(f, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| e.into())
            })
            .and_then(|lock| {
                renameat2(
                    AT_FDCWD,
                    &hidden,
                    AT_FDCWD,
                    &path,
                    RenameFlags::RENAME_NOREPLACE,
                )?;
                Ok(lock)
            });
        let lock = match lock {
            Ok(l) => l,
            Err(e) => {
                let _ = std::fs::remove_dir(&hidden);
                return Err(e);
            }
        };
        let d = Self {
            path,
            link: link.to_path_buf(),
            _lock: lock,
        };
        // On failure `d` is dropped, which removes the RAM directory.
        std::os::unix::fs::symlink(&d.path, link)?;
        debug!(link = %link.display(), ram = %d.path.display(), "images in RAM");
        Ok(d)
    }

    /// Turns the link back into a directory on disk holding the RAM
    /// directory's CRIU logs (`*.log`, a failed session's record), then
    /// removes the RAM directory.
    pub(crate) fn keep_logs(self) {
        let kept = (|| -> std::io::Result<usize> {
            std::fs::remove_file(&self.link)?;
            std::fs::create_dir(&self.link)?;
            let mut n = 0;
            for e in std::fs::read_dir(&self.path)? {
                let e = e?;
                let p = e.path();
                if e.file_type()?.is_file() && p.extension().is_some_and(|x| x == "log") {
                    std::fs::copy(&p, self.link.join(e.file_name()))?;
                    n += 1;
                }
            }
            Ok(n)
        })();
        match kept {
            Ok(n) => debug!(dir = %self.link.display(), logs = n, "logs moved out of RAM"),
            Err(e) => {
                warn!(dir = %self.link.display(), error = %e, "could not move the logs out of RAM")
            }
        }
    }
}

impl Drop for RamDir {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            warn!(dir = %self.path.display(), error = %e, "could not remove images in RAM");
        }
    }
}

/// Iteration directory `dir`, made: a link to a fresh directory in RAM
/// (kept in `held`) when `in_ram` and RAM can hold it, else an ordinary
/// one. Returns the real directory, which phaul's own image reader and
/// writer are given (they follow no symlink); a `dir` already linked to
/// one in `held` gives that one again.
pub(crate) fn images_dir(
    dir: &Path,
    in_ram: bool,
    held: &mut Vec<RamDir>,
) -> std::io::Result<PathBuf> {
    if let Some(r) = held.iter().find(|r| r.link == dir) {
        return Ok(r.path.clone());
    }
    if in_ram && !dir.exists() {
        if let Some(parent) = dir.parent() {
            std::fs::create_dir_all(parent)?;
        }
        if let Some(ram) = RamDir::link(dir) {
            let real = ram.path.clone();
            held.push(ram);
            return Ok(real);
        }
    }
    std::fs::create_dir_all(dir)?;
    Ok(dir.to_path_buf())
}

/// Removes the RAM directories under `base` whose owners died: ours (same
/// user), not locked by anyone. Returns how many.
pub(crate) fn remove_stale(base: &Path) -> usize {
    let Ok(entries) = std::fs::read_dir(base) else {
        return 0;
    };
    let uid = nix::unistd::geteuid().as_raw();
    let mut n = 0;
    for e in entries.flatten() {
        let path = e.path();
        let ours = e.file_name().to_string_lossy().starts_with(PREFIX)
            && std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir() && m.uid() == uid);
        if !ours {
            continue;
        }
        let Ok(f) = File::open(&path) else { continue };
        // Held for the removal, so nothing else takes it meanwhile.
        if let Ok(_dead) = Flock::lock(f, FlockArg::LockExclusiveNonblock) {
            info!(dir = %path.display(), "removing images a dead process left in RAM");
            if std::fs::remove_dir_all(&path).is_ok() {
                n += 1;
            }
        }
    }
    n
}

fn is_tmpfs(p: &Path) -> bool {
    nix::sys::statfs::statfs(p).is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
}

/// Bytes an unprivileged writer could still put under `p` (0 if unknown).
fn room(p: &Path) -> u64 {
    nix::sys::statvfs::statvfs(p).map_or(0, |s| {
        s.blocks_available().saturating_mul(s.fragment_size())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A scratch tmpfs base (a directory of ours in `/dev/shm`), a
    /// directory on disk, and the path in it to link from; `None`, said so,
    /// where `/dev/shm` is not a writable tmpfs (every systemd host's is).
    fn scratch() -> Option<(tempfile::TempDir, tempfile::TempDir, PathBuf)> {
        let base = tempfile::Builder::new()
            .prefix("phaul-ramdir-test-")
            .tempdir_in(BASE)
            .ok()
            .filter(|d| is_tmpfs(d.path()));
        let Some(base) = base else {
            phaul_testkit::unavailable("ramdir", "a writable tmpfs at /dev/shm", "mount one");
            return None;
        };
        let disk = tempfile::tempdir().unwrap();
        let link = disk.path().join("0");
        Some((base, disk, link))
    }

    #[test]
    fn a_link_to_ram_removed_on_drop() {
        let Some((b, _disk, link)) = scratch() else {
            return;
        };
        let d = RamDir::link_in(b.path(), &link).unwrap();
        std::fs::write(link.join("inventory.img"), b"x").unwrap();
        assert!(d.path.join("inventory.img").is_file());
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        let ram = d.path.clone();
        drop(d);
        assert!(!ram.exists());
        assert!(
            !link.exists(),
            "the link dangles, to be removed with its directory"
        );
    }

    #[test]
    fn an_images_dir_in_ram_is_made_once_and_one_on_disk_when_asked() {
        let Some((_b, disk, link)) = scratch() else {
            return;
        };
        let mut held = Vec::new();
        let real = images_dir(&link, true, &mut held).unwrap();
        assert!(real.starts_with(BASE), "{}", real.display());
        assert_eq!(images_dir(&link, true, &mut held).unwrap(), real);
        assert_eq!(held.len(), 1);
        let plain = disk.path().join("1");
        assert_eq!(images_dir(&plain, false, &mut held).unwrap(), plain);
        assert!(std::fs::symlink_metadata(&plain).unwrap().is_dir());
        drop(held);
        assert!(!real.exists());
    }

    #[test]
    fn a_base_that_is_not_a_tmpfs_leaves_the_directory_on_disk() {
        let disk = tempfile::tempdir().unwrap();
        let link = disk.path().join("0");
        assert!(RamDir::link_in(Path::new("/proc"), &link).is_none());
        assert!(!link.exists(), "nothing made");
    }

    #[test]
    fn a_tmpfs_with_too_little_room_leaves_the_directory_on_disk() {
        let Some((b, _disk, link)) = scratch() else {
            return;
        };
        let free = room(b.path());
        assert!(free > 0, "a tmpfs with room reports it");
        assert!(RamDir::link_with_room(b.path(), &link, free + (1 << 30)).is_none());
        assert!(!link.exists(), "nothing made");
        assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);
    }

    #[test]
    fn an_existing_link_is_refused_and_nothing_is_left() {
        let Some((b, _disk, link)) = scratch() else {
            return;
        };
        std::fs::create_dir(&link).unwrap();
        assert!(RamDir::link_in(b.path(), &link).is_none());
        assert_eq!(std::fs::read_dir(b.path()).unwrap().count(), 0);
    }

    #[test]
    fn logs_come_back_to_disk_and_images_go() {
        let Some((b, _disk, link)) = scratch() else {
            return;
        };
        let d = RamDir::link_in(b.path(), &link).unwrap();
        std::fs::write(link.join("restore.log"), b"Error (criu/cr-restore.c): boom").unwrap();
        std::fs::write(link.join("pagemap-1.img"), b"x").unwrap();
        let ram = d.path.clone();
        d.keep_logs();
        assert!(!ram.exists());
        assert!(std::fs::symlink_metadata(&link).unwrap().is_dir());
        assert_eq!(
            std::fs::read_to_string(link.join("restore.log")).unwrap(),
            "Error (criu/cr-restore.c): boom"
        );
        assert!(!link.join("pagemap-1.img").exists());
    }

    #[test]
    fn only_directories_no_one_holds_are_stale() {
        let Some((b, _disk, link)) = scratch() else {
            return;
        };
        let live = RamDir::link_in(b.path(), &link).unwrap();
        // A dead owner's: named as ours, locked by no one.
        let dead = b.path().join(format!("{PREFIX}1-2-3"));
        std::fs::create_dir(&dead).unwrap();
        std::fs::write(dead.join("core-1.img"), b"x").unwrap();
        // Not ours by name.
        let other = b.path().join("someone-else");
        std::fs::create_dir(&other).unwrap();
        assert_eq!(remove_stale(b.path()), 1);
        assert!(!dead.exists());
        assert!(live.path.is_dir());
        assert!(other.is_dir());
    }
}
