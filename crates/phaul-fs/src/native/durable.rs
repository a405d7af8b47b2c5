//! Making what the passes wrote durable on the target, at a cost that
//! follows what changed.
//!
//! The first pass carries the bulk of a tree and runs long before any
//! freeze: one `syncfs` before it is answered covers it. Later passes
//! (after each pre-dump, and the final one while the workload is frozen)
//! change little, and by then the file system holds other dirty data too
//! (a stop-copy's page images, written by the target's page server on the
//! same disk, were 128 MiB of it in the containers bench): a `syncfs` at
//! the end flushed all of that while the images arrived and the tree was
//! restored. What those passes touch is recorded instead ([`Touched`]) and
//! fsynced entry by entry once the final pass is answered: every regular
//! file or directory whose content or metadata changed, and every
//! directory an entry was made in, renamed into or removed from.
//!
//! Entries are reached as the applier reaches them (component by
//! component from the root, never through a symlink), and only regular
//! files and directories are opened: a device node is never opened (that
//! can act on the device), a symlink, FIFO or socket is covered by its
//! directory's fsync. An entry that is gone or no longer reachable without
//! following a symlink was replaced by something the pass also recorded,
//! and is skipped.

use std::collections::BTreeSet;
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};

use crate::error::{Error, Result};
use crate::path::{Dirs, RelPath};

/// What passes after the first changed, for [`make_durable`].
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Touched {
    /// Entries whose content or metadata changed.
    entries: BTreeSet<RelPath>,
    /// Directories whose entries changed.
    dirs: BTreeSet<RelPath>,
}

impl Touched {
    /// `p`'s content or metadata changed.
    pub(super) fn entry(&mut self, p: &RelPath) {
        self.entries.insert(p.clone());
    }

    /// An entry `p` was made, replaced or removed in its directory.
    pub(super) fn in_dir_of(&mut self, p: &RelPath) {
        if let Some(d) = p.parent() {
            self.dirs.insert(d);
        }
    }

    /// Adds what another pass touched.
    pub(super) fn merge(&mut self, other: Touched) {
        self.entries.extend(other.entries);
        self.dirs.extend(other.dirs);
    }

    /// How many entries and directories are recorded.
    pub(super) fn len(&self) -> usize {
        self.entries.len() + self.dirs.len()
    }
}

/// What to make durable under a tree's root.
#[derive(Debug)]
pub(super) enum Durable {
    /// Everything on the root's file system (the first pass).
    SyncFs,
    /// What later passes touched.
    Touched(Touched),
}

/// `syncfs` of the file system `root` is on, off the runtime's threads:
/// how a driver that cannot say what it changed (rsync) makes its copy
/// durable.
pub(crate) async fn sync_tree(root: &Path) -> Result<()> {
    let root = root.to_path_buf();
    crate::blocking(tokio::task::spawn_blocking(move || {
        make_durable(&root, Durable::SyncFs)
    }))
    .await
}

/// Makes `what` durable under `root`; blocking.
pub(super) fn make_durable(root: &Path, what: Durable) -> Result<()> {
    let mut dirs = Dirs::open(root)?;
    match what {
        Durable::SyncFs => nix::unistd::syncfs(dirs.root()).map_err(|e| Error::io(root, e)),
        Durable::Touched(t) => {
            // Files before the directories that name them, as a journal
            // needs no order but a file system without one might.
            for p in &t.entries {
                fsync_entry(&mut dirs, p)?;
            }
            for d in &t.dirs {
                match dirs.open_dir(d) {
                    Ok(fd) => nix::unistd::fsync(&fd).map_err(|e| Error::io(d.to_path(), e))?,
                    Err(e) if replaced(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Ok(())
        }
    }
}

/// Whether an entry cannot be reached any more because it went or a
/// component on its way is now a symlink or not a directory.
fn replaced(e: &Error) -> bool {
    match e {
        Error::Io { source, .. } => matches!(
            source.raw_os_error(),
            Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP)
        ),
        Error::Refused { .. } => true,
        _ => false,
    }
}

/// Fsyncs `p` if it is a regular file or a directory.
fn fsync_entry(dirs: &mut Dirs, p: &RelPath) -> Result<()> {
    let err = |e: Errno| Error::io(p.to_path(), e);
    if p.is_root() {
        return nix::unistd::fsync(dirs.root()).map_err(err);
    }
    let (parent, name) = match dirs.parent(p) {
        Ok(x) => x,
        Err(e) if replaced(&e) => return Ok(()),
        Err(e) => return Err(e),
    };
    let kind = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
        Ok(st) => SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT,
        Err(Errno::ENOENT) => return Ok(()),
        Err(e) => return Err(err(e)),
    };
    if kind != SFlag::S_IFREG && kind != SFlag::S_IFDIR {
        return Ok(());
    }
    // O_NOFOLLOW and O_NONBLOCK: had it been swapped for a symlink or a
    // FIFO since, the open fails or returns at once.
    let flags = OFlag::O_RDONLY
        | OFlag::O_NOFOLLOW
        | OFlag::O_NONBLOCK
        | OFlag::O_NOCTTY
        | OFlag::O_CLOEXEC;
    match openat(parent, name, flags, Mode::empty()) {
        Ok(fd) => nix::unistd::fsync(&fd).map_err(err),
        Err(Errno::ENOENT | Errno::ELOOP) => Ok(()),
        Err(e) => Err(err(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rel(s: &str) -> RelPath {
        RelPath::parse(s.as_bytes()).unwrap()
    }

    #[test]
    fn records_entries_and_their_directories_once() {
        let mut t = Touched::default();
        t.entry(&rel("etc/hosts"));
        t.in_dir_of(&rel("etc/hosts"));
        t.in_dir_of(&rel("etc/passwd"));
        t.in_dir_of(&rel("top"));
        let mut more = Touched::default();
        more.entry(&rel("etc/hosts"));
        t.merge(more);
        assert_eq!(t.entries, BTreeSet::from([rel("etc/hosts")]));
        assert_eq!(t.dirs, BTreeSet::from([rel("etc"), RelPath::root()]));
        assert_eq!(t.len(), 3);
    }

    #[test]
    fn syncs_what_is_there_and_skips_what_went_or_is_not_a_file() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        std::fs::create_dir(r.join("d")).unwrap();
        std::fs::write(r.join("d/f"), b"x").unwrap();
        std::os::unix::fs::symlink("/etc", r.join("link")).unwrap();
        nix::unistd::mkfifo(&r.join("d/fifo"), Mode::from_bits_truncate(0o600)).unwrap();
        let mut t = Touched::default();
        for p in [
            "d/f",
            "d",
            "",
            "d/fifo",
            "link",
            "gone",
            "link/passwd",
            "d/f/under-a-file",
        ] {
            t.entry(&rel(p));
            t.in_dir_of(&rel(p));
        }
        make_durable(r, Durable::Touched(t)).unwrap();
        make_durable(r, Durable::SyncFs).unwrap();
    }

    #[test]
    fn a_missing_root_is_an_error() {
        let root = tempfile::tempdir().unwrap();
        let missing = root.path().join("missing");
        let e = make_durable(&missing, Durable::SyncFs).unwrap_err();
        assert!(matches!(e, Error::Io { .. }), "{e:?}");
    }
}
