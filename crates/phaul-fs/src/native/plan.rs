//! The source's diff: what to send so the target's tree (its manifest)
//! becomes the source's tree (its walk).

use std::collections::{HashMap, HashSet};

use crate::error::{Error, Result};
use crate::path::RelPath;
use crate::tree::{Entry, Kind};
use crate::wire::ManifestEntry;

/// The target's tree as it described it, paths checked.
#[derive(Debug, Default)]
pub(crate) struct Manifest {
    entries: HashMap<RelPath, ManifestEntry>,
    /// Hard-link group id -> the paths in it.
    groups: HashMap<u64, Vec<RelPath>>,
}

impl Manifest {
    /// Adds an entry from the peer: its path must be valid and new.
    pub(crate) fn insert(&mut self, e: ManifestEntry) -> Result<()> {
        let path = RelPath::parse(&e.path)?;
        if path.is_root() && e.kind != Kind::Dir {
            return Err(Error::Protocol(
                "the manifest's root is not a directory".into(),
            ));
        }
        if e.group != 0 {
            self.groups.entry(e.group).or_default().push(path.clone());
        }
        if self.entries.insert(path, e).is_some() {
            return Err(Error::Protocol(
                "a path listed twice in the manifest".into(),
            ));
        }
        Ok(())
    }

    /// How many entries.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn get(&self, p: &RelPath) -> Option<&ManifestEntry> {
        self.entries.get(p)
    }
}

/// One step of a pass, referring to source entries by index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Op {
    /// Remove this target path.
    Delete(RelPath),
    /// Make this directory.
    Mkdir(usize),
    /// Send this regular file's content.
    Write(usize),
    /// Make `idx` another name of `to` (the first name of its inode).
    Link { idx: usize, to: usize },
    /// Make this symlink.
    Symlink(usize),
    /// Make this fifo, socket or device.
    Node(usize),
    /// Set this entry's metadata.
    SetMeta(usize),
}

/// The operations that turn the target's tree (`dst`) into the source's
/// (`src`, a pre-order walk whose first entry is the root): deletions
/// deepest first, then creations and updates parents first, then
/// directory metadata children first (so a directory's time is set after
/// everything that changes it).
pub(crate) fn plan(src: &[Entry], dst: &Manifest) -> Vec<Op> {
    let by_path: HashMap<&RelPath, usize> =
        src.iter().enumerate().map(|(i, e)| (&e.path, i)).collect();
    // Directories whose content changes, so whose mtime must be reset.
    let mut dirty: HashSet<RelPath> = HashSet::new();
    let mut ops = Vec::new();

    // 1. Whatever the target has that the source has not, or has as
    // another kind (a directory may become a file and back).
    let mut deletes: Vec<&RelPath> = dst
        .entries
        .iter()
        .filter(|(p, d)| !p.is_root() && by_path.get(p).is_none_or(|&i| src[i].kind != d.kind))
        .map(|(p, _)| p)
        .collect();
    deletes.sort_by(|a, b| b.depth().cmp(&a.depth()).then_with(|| a.cmp(b)));
    for p in deletes {
        if let Some(parent) = p.parent() {
            dirty.insert(parent);
        }
        ops.push(Op::Delete(p.clone()));
    }

    // The target's entry at a source path, if it survives step 1.
    let present = |i: usize| dst.get(&src[i].path).filter(|d| d.kind == src[i].kind);

    // Hard-link groups of the source: (dev, ino) -> names, in walk order.
    let mut groups: HashMap<(u64, u64), Vec<usize>> = HashMap::new();
    for (i, e) in src.iter().enumerate() {
        if e.kind == Kind::File && e.nlink > 1 {
            groups.entry((e.dev, e.ino)).or_default().push(i);
        }
    }
    // Whether a group's first name is being rewritten (a new inode).
    let mut rewritten: HashMap<(u64, u64), bool> = HashMap::new();
    let mut created = vec![false; src.len()];

    // 2. Creations and updates, parents first.
    for (i, s) in src.iter().enumerate().skip(1) {
        let d = present(i);
        let mut changed_here = false;
        match s.kind {
            Kind::Dir => {
                if d.is_none() {
                    ops.push(Op::Mkdir(i));
                    created[i] = true;
                    changed_here = true;
                }
            }
            Kind::File => {
                let key = (s.dev, s.ino);
                let members = groups.get(&key);
                if let Some(members) = members {
                    let leader = members[0];
                    if leader != i {
                        // Fine as it is only if it already is the same
                        // inode as the first name, and that stays.
                        let same_inode = !rewritten.get(&key).copied().unwrap_or(true)
                            && d.is_some_and(|d| {
                                d.group != 0 && present(leader).is_some_and(|l| l.group == d.group)
                            });
                        if !same_inode {
                            ops.push(Op::Link { idx: i, to: leader });
                            changed_here = true;
                        }
                        if let Some(parent) = s.path.parent().filter(|_| changed_here) {
                            dirty.insert(parent);
                        }
                        continue;
                    }
                }
                let content_same =
                    d.is_some_and(|d| d.size == s.size && d.meta.same_mtime(&s.meta));
                // The target's inode must not be shared with a name that
                // the source keeps apart: writing the metadata or, later,
                // content through one would change the other.
                let linkage_ok = d.is_none_or(|d| {
                    d.group == 0
                        || dst.groups.get(&d.group).is_none_or(|names| {
                            names.iter().all(|n| match members {
                                Some(m) => m.iter().any(|&j| &src[j].path == n),
                                None => n == &s.path,
                            })
                        })
                });
                let rewrite = !content_same || !linkage_ok;
                if members.is_some() {
                    rewritten.insert(key, rewrite);
                }
                if rewrite {
                    ops.push(Op::Write(i));
                    changed_here = true;
                } else if d
                    .is_some_and(|d| d.meta.mode != s.meta.mode || !d.meta.same_owner(&s.meta))
                {
                    ops.push(Op::SetMeta(i));
                }
            }
            Kind::Symlink => {
                if d.is_none_or(|d| Some(&d.link) != s.link.as_ref()) {
                    ops.push(Op::Symlink(i));
                    changed_here = true;
                } else if d
                    .is_some_and(|d| !d.meta.same_owner(&s.meta) || !d.meta.same_mtime(&s.meta))
                {
                    ops.push(Op::SetMeta(i));
                }
            }
            Kind::Fifo | Kind::Socket | Kind::Char | Kind::Block => {
                if d.is_none_or(|d| s.kind.is_device() && d.rdev != s.rdev) {
                    ops.push(Op::Node(i));
                    changed_here = true;
                } else if d.is_some_and(|d| d.meta != s.meta) {
                    ops.push(Op::SetMeta(i));
                }
            }
        }
        if let Some(parent) = s.path.parent().filter(|_| changed_here) {
            dirty.insert(parent);
        }
    }

    // 3. Directory metadata, children before parents (reverse pre-order).
    for (i, s) in src.iter().enumerate().rev() {
        if s.kind != Kind::Dir {
            continue;
        }
        let d = if i == 0 { dst.get(&s.path) } else { present(i) };
        if created[i] || dirty.contains(&s.path) || d.is_none_or(|d| d.meta != s.meta) {
            ops.push(Op::SetMeta(i));
        }
    }
    ops
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tree::Meta;

    fn meta(mtime: i64) -> Meta {
        Meta {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_sec: mtime,
            mtime_nsec: 5,
        }
    }

    fn src(path: &str, kind: Kind, size: u64, mtime: i64, ino: u64, nlink: u64) -> Entry {
        Entry {
            path: RelPath::parse(path.as_bytes()).unwrap(),
            kind,
            size,
            meta: meta(mtime),
            nlink,
            dev: 1,
            ino,
            rdev: 0,
            link: (kind == Kind::Symlink).then(|| b"t".to_vec()),
        }
    }

    fn dst(entries: &[(&str, Kind, u64, i64, u64)]) -> Manifest {
        let mut m = Manifest::default();
        for (p, kind, size, mtime, group) in entries {
            m.insert(ManifestEntry {
                path: p.as_bytes().to_vec(),
                kind: *kind,
                size: *size,
                meta: meta(*mtime),
                group: *group,
                rdev: 0,
                link: if *kind == Kind::Symlink {
                    b"t".to_vec()
                } else {
                    Vec::new()
                },
            })
            .unwrap();
        }
        m
    }

    #[test]
    fn into_an_empty_target_everything_is_made_in_order() {
        let s = vec![
            src("", Kind::Dir, 0, 1, 1, 2),
            src("d", Kind::Dir, 0, 1, 2, 2),
            src("d/f", Kind::File, 3, 1, 3, 1),
            src("d/h1", Kind::File, 3, 1, 4, 2),
            src("d/h2", Kind::File, 3, 1, 4, 2),
            src("s", Kind::Symlink, 1, 1, 5, 1),
        ];
        let ops = plan(&s, &dst(&[("", Kind::Dir, 0, 1, 0)]));
        assert_eq!(
            ops,
            vec![
                Op::Mkdir(1),
                Op::Write(2),
                Op::Write(3),
                Op::Link { idx: 4, to: 3 },
                Op::Symlink(5),
                Op::SetMeta(1),
                Op::SetMeta(0),
            ]
        );
    }

    #[test]
    fn an_identical_target_needs_nothing() {
        let s = vec![
            src("", Kind::Dir, 0, 1, 1, 2),
            src("f", Kind::File, 3, 1, 3, 1),
            src("h1", Kind::File, 3, 1, 4, 2),
            src("h2", Kind::File, 3, 1, 4, 2),
        ];
        let d = dst(&[
            ("", Kind::Dir, 0, 1, 0),
            ("f", Kind::File, 3, 1, 0),
            ("h1", Kind::File, 3, 1, 7),
            ("h2", Kind::File, 3, 1, 7),
        ]);
        assert_eq!(plan(&s, &d), vec![]);
    }

    #[test]
    fn deletes_go_deepest_first_and_kind_changes_replace() {
        let s = vec![
            src("", Kind::Dir, 0, 1, 1, 2),
            src("a", Kind::File, 3, 1, 2, 1),
        ];
        let d = dst(&[
            ("", Kind::Dir, 0, 1, 0),
            ("a", Kind::Dir, 0, 1, 0),
            ("a/b", Kind::Dir, 0, 1, 0),
            ("a/b/c", Kind::File, 1, 1, 0),
            ("z", Kind::File, 1, 1, 0),
        ]);
        let ops = plan(&s, &d);
        let del = |p: &str| Op::Delete(RelPath::parse(p.as_bytes()).unwrap());
        assert_eq!(
            ops,
            vec![
                del("a/b/c"),
                del("a/b"),
                del("a"),
                del("z"),
                Op::Write(1),
                Op::SetMeta(0),
            ]
        );
    }

    #[test]
    fn hard_links_follow_their_first_name() {
        let s = vec![
            src("", Kind::Dir, 0, 1, 1, 2),
            src("h1", Kind::File, 4, 2, 4, 2),
            src("h2", Kind::File, 4, 2, 4, 2),
        ];
        // Content changed: the first name is rewritten, the second relinked.
        let d = dst(&[
            ("", Kind::Dir, 0, 1, 0),
            ("h1", Kind::File, 3, 1, 7),
            ("h2", Kind::File, 3, 1, 7),
        ]);
        assert_eq!(
            plan(&s, &d),
            vec![Op::Write(1), Op::Link { idx: 2, to: 1 }, Op::SetMeta(0)]
        );
        // Two separate files on the target that should be one inode.
        let d = dst(&[
            ("", Kind::Dir, 0, 1, 0),
            ("h1", Kind::File, 4, 2, 0),
            ("h2", Kind::File, 4, 2, 0),
        ]);
        assert_eq!(
            plan(&s, &d),
            vec![Op::Link { idx: 2, to: 1 }, Op::SetMeta(0)]
        );
        // One inode on the target that the source keeps as two files.
        let s2 = vec![
            src("", Kind::Dir, 0, 1, 1, 2),
            src("h1", Kind::File, 4, 2, 4, 1),
            src("h2", Kind::File, 4, 2, 5, 1),
        ];
        let d = dst(&[
            ("", Kind::Dir, 0, 1, 0),
            ("h1", Kind::File, 4, 2, 7),
            ("h2", Kind::File, 4, 2, 7),
        ]);
        assert_eq!(
            plan(&s2, &d),
            vec![Op::Write(1), Op::Write(2), Op::SetMeta(0)]
        );
    }
}
