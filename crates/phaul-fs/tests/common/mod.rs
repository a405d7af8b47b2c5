//! Shared fixtures of the integration tests: the gates and a connected pair
//! of FS links (from phaul-testkit), and a snapshot of a tree that compares
//! everything the drivers preserve.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use phaul_transport::{Channel, Link};

#[allow(unused_imports)]
pub use phaul_testkit::{noise, require_root};

/// [`require_root`], and rsync installed.
pub fn require_root_and_rsync(test: &str) -> bool {
    require_root(test)
        && phaul_testkit::require_program(test, "rsync", "scripts/setup.sh installs it")
}

/// A connected FS channel over a socketpair, TLS on: (source's end,
/// target's end).
pub async fn pair() -> (Link, Link) {
    phaul_testkit::link_pair(&phaul_testkit::link_config(), Channel::Fs).await
}

/// Writes a file with an exact mode (`set_permissions` ignores the umask).
pub fn write_file(p: &Path, data: &[u8], mode: u32) {
    fs::write(p, data).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(mode)).unwrap();
}

/// Sets an entry's mtime (atime left alone) without following symlinks.
pub fn set_mtime(p: &Path, sec: i64, nsec: i64) {
    nix::sys::stat::utimensat(
        nix::fcntl::AT_FDCWD,
        p,
        &nix::sys::time::TimeSpec::UTIME_OMIT,
        &nix::sys::time::TimeSpec::new(sec, nsec),
        nix::sys::stat::UtimensatFlags::NoFollowSymlink,
    )
    .unwrap();
}

/// FNV-1a, to compare contents without printing them.
fn hash(data: &[u8]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in data {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// What a tree's entry looks like, as far as the drivers preserve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Desc {
    pub kind: &'static str,
    /// Permission bits with setuid/setgid/sticky; 0 for symlinks.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub content: u64,
    pub link: Option<PathBuf>,
    pub rdev: u64,
}

/// A tree: every entry by relative path ("" for the root), and the sets
/// of paths that are one inode.
#[derive(Debug, PartialEq, Eq)]
pub struct Snapshot {
    pub entries: BTreeMap<String, Desc>,
    pub hard_links: BTreeSet<Vec<String>>,
}

pub fn snapshot(root: &Path) -> Snapshot {
    let mut entries = BTreeMap::new();
    let mut inodes: BTreeMap<(u64, u64), Vec<String>> = BTreeMap::new();
    let mut todo = vec![(root.to_path_buf(), String::new())];
    while let Some((p, rel)) = todo.pop() {
        let m = fs::symlink_metadata(&p).unwrap();
        let ft = m.file_type();
        let (kind, content, link) = if ft.is_symlink() {
            ("symlink", 0, Some(fs::read_link(&p).unwrap()))
        } else if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                let e = e.unwrap();
                let name = String::from_utf8_lossy(e.file_name().as_bytes()).into_owned();
                let child = if rel.is_empty() {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                todo.push((e.path(), child));
            }
            ("dir", 0, None)
        } else if ft.is_file() {
            ("file", hash(&fs::read(&p).unwrap()), None)
        } else {
            use std::os::unix::fs::FileTypeExt;
            let k = if ft.is_fifo() {
                "fifo"
            } else if ft.is_char_device() {
                "char"
            } else if ft.is_block_device() {
                "block"
            } else {
                "socket"
            };
            (k, 0, None)
        };
        if ft.is_file() && m.nlink() > 1 {
            inodes
                .entry((m.dev(), m.ino()))
                .or_default()
                .push(rel.clone());
        }
        entries.insert(
            rel,
            Desc {
                kind,
                mode: if ft.is_symlink() {
                    0
                } else {
                    m.mode() & 0o7777
                },
                uid: m.uid(),
                gid: m.gid(),
                mtime: (m.mtime(), m.mtime_nsec()),
                size: if ft.is_file() { m.len() } else { 0 },
                content,
                link,
                rdev: m.rdev(),
            },
        );
    }
    let hard_links = inodes
        .into_values()
        .map(|mut v| {
            v.sort();
            v
        })
        .collect();
    Snapshot {
        entries,
        hard_links,
    }
}

/// Asserts two trees are the same, entry by entry (for a readable diff).
pub fn assert_same_tree(src: &Path, dst: &Path) {
    let a = snapshot(src);
    let b = snapshot(dst);
    let missing: Vec<_> = a
        .entries
        .keys()
        .filter(|k| !b.entries.contains_key(*k))
        .collect();
    let extra: Vec<_> = b
        .entries
        .keys()
        .filter(|k| !a.entries.contains_key(*k))
        .collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "missing on the target: {missing:?}; extra on the target: {extra:?}"
    );
    for (k, v) in &a.entries {
        assert_eq!(
            Some(v),
            b.entries.get(k),
            "entry {k:?} differs (left: source)"
        );
    }
    assert_eq!(a.hard_links, b.hard_links, "hard-link groups differ");
}
