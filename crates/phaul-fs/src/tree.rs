//! Walking a tree: every entry under a root, in pre-order (a directory
//! before its children, names sorted bytewise within a directory), with the
//! metadata the sync compares.
//!
//! The walk never follows a symlink: each directory is opened with
//! `O_DIRECTORY | O_NOFOLLOW` relative to its parent's descriptor and each
//! entry is examined with `fstatat(AT_SYMLINK_NOFOLLOW)`, so an entry
//! swapped for a symlink while the walk runs (the workload is running) can
//! neither lead it outside the tree nor make it list anything but the tree.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, readlinkat};
use nix::sys::stat::{FileStat, Mode, SFlag, fstat, fstatat};

use crate::error::{Error, Result};
use crate::path::{DIR_FLAGS, RelPath};

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Kind {
    /// A directory.
    Dir = 1,
    /// A regular file.
    File = 2,
    /// A symbolic link.
    Symlink = 3,
    /// A named pipe.
    Fifo = 4,
    /// A character device.
    Char = 5,
    /// A block device.
    Block = 6,
    /// A Unix socket (recreated as an unbound socket inode, as rsync does).
    Socket = 7,
}

/// Every kind with its `S_IF*` file type, in wire order.
const KINDS: [(Kind, SFlag); 7] = [
    (Kind::Dir, SFlag::S_IFDIR),
    (Kind::File, SFlag::S_IFREG),
    (Kind::Symlink, SFlag::S_IFLNK),
    (Kind::Fifo, SFlag::S_IFIFO),
    (Kind::Char, SFlag::S_IFCHR),
    (Kind::Block, SFlag::S_IFBLK),
    (Kind::Socket, SFlag::S_IFSOCK),
];

impl Kind {
    /// The kind for a wire value.
    pub fn from_u8(v: u8) -> Option<Self> {
        KINDS.iter().map(|(k, _)| *k).find(|k| *k as u8 == v)
    }

    /// The kind of a `st_mode`.
    pub fn of_mode(mode: u32) -> Option<Self> {
        let t = SFlag::from_bits_truncate(mode) & SFlag::S_IFMT;
        KINDS.iter().find(|(_, f)| *f == t).map(|(k, _)| *k)
    }

    /// The `S_IF*` type for `mknod`, for the kinds made with it (not
    /// directories, files or symlinks).
    pub(crate) fn node_flag(self) -> Option<SFlag> {
        if matches!(self, Self::Dir | Self::File | Self::Symlink) {
            return None;
        }
        KINDS.iter().find(|(k, _)| *k == self).map(|(_, f)| *f)
    }

    /// A device node (char or block).
    pub fn is_device(self) -> bool {
        matches!(self, Self::Char | Self::Block)
    }
}

/// The metadata that is preserved: permission bits (with setuid, setgid
/// and sticky), numeric owner and group, modification time to the
/// nanosecond.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Meta {
    /// `mode & 0o7777`.
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Modification time, seconds since the epoch.
    pub mtime_sec: i64,
    /// Modification time, nanoseconds (below 1e9).
    pub mtime_nsec: u32,
}

impl Meta {
    /// From a `stat`.
    pub(crate) fn of(st: &FileStat) -> Self {
        Self {
            mode: st.st_mode & 0o7777,
            uid: st.st_uid,
            gid: st.st_gid,
            mtime_sec: st.st_mtime,
            // Always in 0..1e9 from the kernel.
            mtime_nsec: u32::try_from(st.st_mtime_nsec).unwrap_or(0),
        }
    }

    /// Same modification time.
    pub(crate) fn same_mtime(&self, o: &Meta) -> bool {
        self.mtime_sec == o.mtime_sec && self.mtime_nsec == o.mtime_nsec
    }

    /// Same owner and group.
    pub(crate) fn same_owner(&self, o: &Meta) -> bool {
        self.uid == o.uid && self.gid == o.gid
    }
}

/// One entry of a walked tree.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    pub path: RelPath,
    pub kind: Kind,
    pub size: u64,
    pub meta: Meta,
    pub nlink: u64,
    pub dev: u64,
    pub ino: u64,
    pub rdev: u64,
    /// A symlink's target.
    pub link: Option<Vec<u8>>,
}

impl Entry {
    fn new(path: RelPath, st: &FileStat, kind: Kind, link: Option<Vec<u8>>) -> Self {
        Self {
            path,
            kind,
            size: u64::try_from(st.st_size).unwrap_or(0),
            meta: Meta::of(st),
            nlink: st.st_nlink,
            dev: st.st_dev,
            ino: st.st_ino,
            rdev: st.st_rdev,
            link,
        }
    }
}

/// A directory being walked: its open handle and its entries left to
/// visit, already examined.
struct Frame {
    dir: Dir,
    children: std::vec::IntoIter<Entry>,
}

/// Walks the tree at `root`: every entry, the root first (with the empty
/// path). At most `max_entries` entries, else [`Error::Limit`].
///
/// Entries that vanish or change kind while being examined (the tree is
/// live) are skipped when `strict` is false and are an [`Error::Changed`]
/// when it is true (the final pass, when nothing should move).
pub(crate) fn scan(root: &Path, max_entries: u64, strict: bool) -> Result<Vec<Entry>> {
    let mut rootdir = Dir::open(
        root,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| Error::io(root, e))?;
    let st = fstat(rootdir.as_fd()).map_err(|e| Error::io(root, e))?;
    let mut out = vec![Entry::new(RelPath::root(), &st, Kind::Dir, None)];
    let mut stack = vec![Frame {
        children: list(&mut rootdir, &RelPath::root(), strict)?.into_iter(),
        dir: rootdir,
    }];
    let limit = |n: usize| -> Result<()> {
        if n as u64 > max_entries {
            return Err(Error::Limit(format!(
                "the tree at {} has more than {max_entries} entries",
                root.display()
            )));
        }
        Ok(())
    };
    limit(out.len() + stack[0].children.len())?;
    while let Some(top) = stack.last_mut() {
        let Some(entry) = top.children.next() else {
            stack.pop();
            continue;
        };
        let descend = entry.kind == Kind::Dir;
        let path = entry.path.clone();
        out.push(entry);
        if !descend {
            continue;
        }
        let (_, name) = path.split_last().expect("not the root");
        let mut dir = match Dir::openat(top.dir.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(d) => d,
            Err(e @ (Errno::ENOENT | Errno::ELOOP | Errno::ENOTDIR)) => {
                changed(
                    strict,
                    &path,
                    format!("could not be opened as a directory: {e}"),
                )?;
                continue;
            }
            Err(e) => return Err(Error::io(path.to_path(), e)),
        };
        let children = list(&mut dir, &path, strict)?;
        limit(out.len() + children.len())?;
        stack.push(Frame {
            dir,
            children: children.into_iter(),
        });
    }
    Ok(out)
}

/// A race with the live tree: skipped, or an error in a strict walk.
fn changed(strict: bool, path: &RelPath, what: String) -> Result<()> {
    if strict {
        return Err(Error::Changed {
            path: path.lossy(),
            what,
        });
    }
    tracing::debug!(path = %path.lossy(), %what, "skipped an entry that changed during the walk");
    Ok(())
}

/// The entries of the open directory `dir` (at `path`), sorted by name,
/// each examined without following symlinks.
fn list(dir: &mut Dir, path: &RelPath, strict: bool) -> Result<Vec<Entry>> {
    // Names first, then one `fstatat` each: the listing must be complete
    // before sorting anyway.
    let mut names: Vec<Vec<u8>> = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(|e| Error::io(path.to_path(), e))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        names.push(name.to_vec());
    }
    names.sort_unstable();
    let mut out = Vec::with_capacity(names.len());
    for name in names {
        let child = path.join(&name)?;
        let st = match fstatat(dir.as_fd(), name.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => {
                changed(strict, &child, "vanished".into())?;
                continue;
            }
            Err(e) => return Err(Error::io(child.to_path(), e)),
        };
        let Some(kind) = Kind::of_mode(st.st_mode) else {
            tracing::warn!(path = %child.lossy(), mode = st.st_mode, "skipped an entry of unknown type");
            continue;
        };
        let link = if kind == Kind::Symlink {
            match readlinkat(dir.as_fd(), name.as_slice()) {
                Ok(t) => Some(t.as_bytes().to_vec()),
                Err(e @ (Errno::ENOENT | Errno::EINVAL)) => {
                    changed(strict, &child, format!("symlink could not be read: {e}"))?;
                    continue;
                }
                Err(e) => return Err(Error::io(OsStr::from_bytes(child.as_bytes()), e)),
            }
        } else {
            None
        };
        out.push(Entry::new(child, &st, kind, link));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_map_to_wire_values_and_file_types_and_back() {
        for (k, flag) in KINDS {
            assert_eq!(Kind::from_u8(k as u8), Some(k));
            assert_eq!(Kind::of_mode(flag.bits() | 0o644), Some(k));
        }
        assert_eq!(Kind::from_u8(0), None);
        assert_eq!(Kind::from_u8(8), None);
        assert_eq!(Kind::of_mode(0o644), None);
        assert_eq!(Kind::Fifo.node_flag(), Some(SFlag::S_IFIFO));
        assert_eq!(Kind::Block.node_flag(), Some(SFlag::S_IFBLK));
        assert_eq!(Kind::Dir.node_flag(), None);
        assert_eq!(Kind::Symlink.node_flag(), None);
    }
}
