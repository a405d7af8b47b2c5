//! Paths inside a tree, and resolving them without ever following a
//! symlink.
//!
//! A path that crosses the link is a sequence of components joined by `/`,
//! relative to the tree's root; the empty path is the root itself.
//! [`RelPath::parse`] accepts only paths whose every component is a plain
//! name, so a path from the peer can never name anything outside the tree
//! by spelling. The drivers' resolver makes sure it cannot do so through
//! the file system either: every parent directory is opened one component
//! at a time from a descriptor of the root with `O_DIRECTORY | O_NOFOLLOW`,
//! so a symlink anywhere on the way makes the operation fail instead of
//! being followed.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstatat};

use crate::error::{Error, Result};

/// The longest path accepted, in bytes (Linux's `PATH_MAX` less its NUL).
pub const MAX_PATH: usize = 4095;

/// The longest path component, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// A validated path relative to a tree's root: components joined by `/`,
/// each non-empty, not `.` or `..`, without `/` or NUL and at most
/// [`MAX_NAME`] bytes; the whole at most [`MAX_PATH`] bytes. The empty path
/// is the root.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct RelPath(Vec<u8>);

impl std::fmt::Debug for RelPath {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", String::from_utf8_lossy(&self.0))
    }
}

/// Why a single component is not a plain name, if it is not.
fn component_problem(c: &[u8]) -> Option<&'static str> {
    if c.is_empty() {
        Some("empty component")
    } else if c == b"." || c == b".." {
        Some("a directory reference (. or ..)")
    } else if c.contains(&0) {
        Some("contains NUL")
    } else if c.len() > MAX_NAME {
        Some("a component longer than 255 bytes")
    } else {
        None
    }
}

impl RelPath {
    /// The root of the tree.
    pub fn root() -> Self {
        Self(Vec::new())
    }

    /// Checks a path received from the peer (see the type's rules).
    pub fn parse(bytes: &[u8]) -> Result<Self> {
        let bad = |reason| Error::BadPath {
            path: String::from_utf8_lossy(bytes).into_owned(),
            reason,
        };
        if bytes.is_empty() {
            return Ok(Self::root());
        }
        if bytes.len() > MAX_PATH {
            return Err(bad("longer than 4095 bytes"));
        }
        if bytes[0] == b'/' {
            return Err(bad("absolute"));
        }
        for c in bytes.split(|b| *b == b'/') {
            if let Some(reason) = component_problem(c) {
                return Err(bad(reason));
            }
        }
        Ok(Self(bytes.to_vec()))
    }

    /// This path with one more component, which must be a plain name (a
    /// name read from a directory always is, except for its length
    /// against [`MAX_PATH`]).
    pub fn join(&self, name: &[u8]) -> Result<Self> {
        let mut v = Vec::with_capacity(self.0.len() + 1 + name.len());
        v.extend_from_slice(&self.0);
        if !v.is_empty() {
            v.push(b'/');
        }
        v.extend_from_slice(name);
        if let Some(reason) = component_problem(name) {
            return Err(Error::BadPath {
                path: String::from_utf8_lossy(&v).into_owned(),
                reason,
            });
        }
        if v.len() > MAX_PATH {
            return Err(Error::BadPath {
                path: String::from_utf8_lossy(&v).into_owned(),
                reason: "longer than 4095 bytes",
            });
        }
        Ok(Self(v))
    }

    /// Whether this is the root.
    pub fn is_root(&self) -> bool {
        self.0.is_empty()
    }

    /// The raw bytes, as sent on the wire.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// How many components (0 for the root).
    pub fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            1 + self.0.iter().filter(|b| **b == b'/').count()
        }
    }

    /// The parent's path and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(&[u8], &[u8])> {
        if self.0.is_empty() {
            return None;
        }
        Some(match self.0.iter().rposition(|b| *b == b'/') {
            Some(i) => (&self.0[..i], &self.0[i + 1..]),
            None => (&[][..], &self.0[..]),
        })
    }

    /// The parent's path; `None` for the root.
    pub fn parent(&self) -> Option<RelPath> {
        self.split_last().map(|(p, _)| Self(p.to_vec()))
    }

    /// As a relative [`Path`] (for errors and logs; never for opening).
    pub fn to_path(&self) -> PathBuf {
        PathBuf::from(OsStr::from_bytes(&self.0))
    }

    /// For messages.
    pub fn lossy(&self) -> String {
        String::from_utf8_lossy(&self.0).into_owned()
    }
}

/// The flags every directory of a tree is opened with: never through a
/// symlink, never a controlling terminal, never inherited by a child.
pub(crate) const DIR_FLAGS: OFlag = OFlag::O_RDONLY
    .union(OFlag::O_DIRECTORY)
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC);

/// A tree's root, opened once, and the directories under it, opened one
/// component at a time without following symlinks.
///
/// Operations come in walk order, so consecutive ones usually share a
/// parent: the last parent opened is kept (by path) to save the walk from
/// the root. It is forgotten whenever something is deleted, since the
/// directory it names may be the one that went.
#[derive(Debug)]
pub(crate) struct Dirs {
    root: OwnedFd,
    root_path: PathBuf,
    cached: Option<(Vec<u8>, OwnedFd)>,
}

impl Dirs {
    /// Opens `root`, which the operator named, so it may itself be reached
    /// through symlinks; nothing below it will be.
    pub(crate) fn open(root: &Path) -> Result<Self> {
        let fd = openat(
            nix::fcntl::AT_FDCWD,
            root,
            OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| Error::io(root, e))?;
        Ok(Self {
            root: fd,
            root_path: root.to_path_buf(),
            cached: None,
        })
    }

    /// The root's descriptor.
    pub(crate) fn root(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Forgets the cached parent (after a delete).
    pub(crate) fn forget(&mut self) {
        self.cached = None;
    }

    /// The directory that holds `path` and the name of `path` in it.
    /// `path` must not be the root.
    pub(crate) fn parent<'a>(
        &'a mut self,
        path: &'a RelPath,
    ) -> Result<(BorrowedFd<'a>, &'a [u8])> {
        let (parent, name) = path.split_last().ok_or_else(|| Error::Refused {
            path: String::new(),
            reason: "the tree's root itself".into(),
        })?;
        if parent.is_empty() {
            return Ok((self.root.as_fd(), name));
        }
        let hit = matches!(&self.cached, Some((p, _)) if p.as_slice() == parent);
        if !hit {
            let fd = self.open_dir_bytes(parent, path)?;
            self.cached = Some((parent.to_vec(), fd));
        }
        let fd = self
            .cached
            .as_ref()
            .map(|(_, fd)| fd.as_fd())
            .expect("just set");
        Ok((fd, name))
    }

    /// Opens the directory at `dir` (a path of this tree), not cached.
    pub(crate) fn open_dir(&self, dir: &RelPath) -> Result<OwnedFd> {
        if dir.is_root() {
            return self
                .root
                .try_clone()
                .map_err(|e| Error::io(self.root_path.clone(), e));
        }
        self.open_dir_bytes(dir.as_bytes(), dir)
    }

    /// Opens `dir` component by component; `for_path` names the entry the
    /// caller is after, for errors.
    fn open_dir_bytes(&self, dir: &[u8], for_path: &RelPath) -> Result<OwnedFd> {
        let mut cur: Option<OwnedFd> = None;
        let mut done = 0usize;
        for c in dir.split(|b| *b == b'/') {
            let at = cur.as_ref().map_or(self.root.as_fd(), |f| f.as_fd());
            match openat(at, c, DIR_FLAGS, Mode::empty()) {
                Ok(fd) => cur = Some(fd),
                Err(e @ (Errno::ELOOP | Errno::ENOTDIR)) => {
                    let reason = match fstatat(at, c, AtFlags::AT_SYMLINK_NOFOLLOW) {
                        Ok(st)
                            if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT
                                == SFlag::S_IFLNK =>
                        {
                            "a parent component is a symlink (not followed)"
                        }
                        _ => "a parent component is not a directory",
                    };
                    let upto = &dir[..(done + c.len()).min(dir.len())];
                    tracing::debug!(
                        path = %for_path.lossy(),
                        component = %String::from_utf8_lossy(upto),
                        errno = %e,
                        "refused a path through a non-directory"
                    );
                    return Err(Error::Refused {
                        path: for_path.lossy(),
                        reason: format!("{reason}: {:?}", String::from_utf8_lossy(upto)),
                    });
                }
                Err(e) => {
                    let upto = &dir[..(done + c.len()).min(dir.len())];
                    return Err(Error::io(OsStr::from_bytes(upto), e));
                }
            }
            done += c.len() + 1;
        }
        cur.ok_or_else(|| Error::Protocol("empty directory path".into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_paths_parse() {
        for ok in [
            &b""[..],
            b"a",
            b"a/b/c",
            b"...",
            b".hidden/x",
            b"a b/\xff\xfe",
        ] {
            RelPath::parse(ok).unwrap();
        }
        assert!(RelPath::parse(b"").unwrap().is_root());
        assert_eq!(RelPath::parse(b"a/b/c").unwrap().depth(), 3);
    }

    #[test]
    fn escaping_paths_are_refused() {
        for (bad, why) in [
            (&b"/etc/passwd"[..], "absolute"),
            (b"..", "directory reference"),
            (b"a/../../x", "directory reference"),
            (b"a/./b", "directory reference"),
            (b"a//b", "empty"),
            (b"a/", "empty"),
            (b"a\0b", "NUL"),
        ] {
            match RelPath::parse(bad) {
                Err(Error::BadPath { reason, .. }) => assert!(reason.contains(why), "{reason}"),
                other => panic!("{bad:?}: {other:?}"),
            }
        }
        let long = vec![b'x'; 256];
        assert!(RelPath::parse(&long).is_err());
        let deep = [b"ab/".repeat(2000), b"c".to_vec()].concat();
        assert!(RelPath::parse(&deep).is_err());
    }

    #[test]
    fn split_and_join() {
        let p = RelPath::parse(b"a/b/c").unwrap();
        assert_eq!(p.split_last(), Some((&b"a/b"[..], &b"c"[..])));
        let q = RelPath::parse(b"top").unwrap();
        assert_eq!(q.split_last(), Some((&b""[..], &b"top"[..])));
        assert_eq!(RelPath::root().split_last(), None);
        assert_eq!(RelPath::root().join(b"x").unwrap().as_bytes(), b"x");
        assert_eq!(q.join(b"y").unwrap().as_bytes(), b"top/y");
        assert!(q.join(b"..").is_err());
        assert_eq!(p.parent().unwrap().as_bytes(), b"a/b");
    }
}
