//! The native driver's target side.

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Instant;

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{
    FchmodatFlags, FileStat, Mode, SFlag, UtimensatFlags, fchmod, fchmodat, fstatat, futimens,
    mkdirat, mknodat, utimensat,
};
use nix::sys::time::TimeSpec;
use nix::unistd::{Gid, Uid, UnlinkatFlags, fchown, fchownat, linkat, symlinkat, unlinkat};
use phaul_transport::Link;
use phaul_transport::link::FrameWriter;
use tokio::sync::mpsc;
use tracing::debug;

use super::BUFFER;
use super::durable::{Durable, Touched, make_durable};
use crate::error::{Error, Result};
use crate::pass::{ServePass, serve_passes};
use crate::path::{DIR_FLAGS, Dirs, MAX_PATH, RelPath};
use crate::tree::{self, Entry, Kind, Meta};
use crate::wire::{ManifestEntry, Msg, MsgReader};
use crate::{FsLimits, SyncStats, blocking};

/// Serves the native driver's passes into the tree at `root` until the
/// source's final pass (then returns the totals of all passes), an error
/// (reported to the source with an `Error` frame first, when the link
/// still works), or the link closing between passes
/// ([`phaul_transport::Error::Closed`] inside [`Error::Link`]: the source
/// went away before its final sync).
///
/// `root` must exist; it is the only place anything is written (see the
/// guarantees in [`crate::native`]). Meant to run as one task of a
/// service, with the session's `FS` channel.
pub async fn serve_native(link: Link, root: &Path, limits: &FsLimits) -> Result<SyncStats> {
    let server = Server {
        mr: MsgReader::new(),
        root,
        limits,
        touched: Touched::default(),
    };
    serve_passes("native", link, root, server).await
}

/// The target's side of the native driver's passes.
struct Server<'a> {
    mr: MsgReader,
    root: &'a Path,
    limits: &'a FsLimits,
    /// What the passes after the first changed, made durable at the end.
    touched: Touched,
}

impl ServePass for Server<'_> {
    async fn serve_pass(&mut self, link: &mut Link, expect: u32) -> Result<(SyncStats, bool)> {
        let (pass, last) = match self.mr.next(&mut link.reader).await? {
            Msg::PassBegin { pass, last } => (pass, last),
            other => return Err(other.unexpected("PassBegin")),
        };
        if pass != expect {
            return Err(Error::Protocol(format!(
                "pass {pass} where {expect} was due"
            )));
        }
        // The first pass is made durable before it is answered, unless it
        // is also the last (see `durable`).
        let sync_first = pass == 0 && !last;
        let (stats, touched) =
            target_pass(link, &mut self.mr, self.root, self.limits, sync_first).await?;
        if !sync_first {
            // The first pass's sync covers all it touched.
            self.touched.merge(touched);
        }
        if last {
            // After `PassDone`: the source sends its images and the target
            // restores meanwhile; the commit waits for this.
            let what = match pass {
                0 => Durable::SyncFs,
                _ => Durable::Touched(std::mem::take(&mut self.touched)),
            };
            let t0 = Instant::now();
            let entries = match &what {
                Durable::Touched(t) => t.len(),
                Durable::SyncFs => 0,
            };
            let root = self.root.to_path_buf();
            blocking(tokio::task::spawn_blocking(move || {
                make_durable(&root, what)
            }))
            .await?;
            debug!(
                ms = t0.elapsed().as_secs_f64() * 1000.0,
                entries, "the passes' changes made durable"
            );
        }
        Ok((stats, last))
    }
}

/// One pass: manifest out, operations in, applied on a blocking thread;
/// the file system synced before the answer when `sync`. Returns what the
/// pass touched.
async fn target_pass(
    link: &mut Link,
    mr: &mut MsgReader,
    root: &Path,
    limits: &FsLimits,
    sync: bool,
) -> Result<(SyncStats, Touched)> {
    let started = Instant::now();
    let owned_root = root.to_path_buf();
    let max = limits.max_entries;
    let entries = blocking(tokio::task::spawn_blocking(move || {
        tree::scan(&owned_root, max, false)
    }))
    .await?;
    let scanned = entries.len() as u64;
    send_manifest(&mut link.writer, entries).await?;

    let applier = Applier::new(root, *limits)?;
    let (tx, rx) = mpsc::channel::<Msg>(64);
    let task = tokio::task::spawn_blocking(move || applier.run(rx));
    let end = loop {
        let msg = match mr.next(&mut link.reader).await {
            Ok(m) => m,
            Err(e) => {
                // The applier sees the channel close and cleans up.
                drop(tx);
                let _ = task.await;
                return Err(e);
            }
        };
        match msg {
            Msg::PassEnd { files, bytes, ops } => break Some((files, bytes, ops)),
            op @ (Msg::Mkdir { .. }
            | Msg::Write { .. }
            | Msg::Data(_)
            | Msg::Symlink { .. }
            | Msg::Link { .. }
            | Msg::Node { .. }
            | Msg::SetMeta { .. }
            | Msg::Delete { .. }) => {
                if tx.send(op).await.is_err() {
                    // The applier stopped: its error says why.
                    break None;
                }
            }
            other => {
                drop(tx);
                let _ = task.await;
                return Err(Error::Protocol(format!(
                    "a message of tag {} inside a pass",
                    other.tag()
                )));
            }
        }
    };
    drop(tx);
    let applied = blocking(task).await?;
    let (files, bytes, ops) =
        end.ok_or_else(|| Error::Protocol("the pass stopped without an error".into()))?;
    if applied.pending {
        return Err(Error::Protocol(
            "the pass ended inside a file's content".into(),
        ));
    }
    if (files, bytes, ops) != (applied.files, applied.bytes, applied.ops) {
        return Err(Error::Protocol(format!(
            "the source counts {files} files, {bytes} bytes, {ops} operations; \
             applied were {}, {}, {}",
            applied.files, applied.bytes, applied.ops
        )));
    }
    if sync {
        let root = root.to_path_buf();
        blocking(tokio::task::spawn_blocking(move || {
            make_durable(&root, Durable::SyncFs)
        }))
        .await?;
    }
    let stats = SyncStats {
        files,
        bytes,
        deleted: applied.deleted,
        scanned,
        duration: started.elapsed(),
    };
    link.writer
        .send_data(
            &Msg::PassDone {
                files,
                bytes,
                deleted: applied.deleted,
                scanned,
            }
            .to_vec(),
        )
        .await?;
    Ok((stats, applied.touched))
}

/// Sends the tree's entries as the manifest; regular files with several
/// links get a group id per inode.
async fn send_manifest(writer: &mut FrameWriter, entries: Vec<Entry>) -> Result<()> {
    let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
    let mut out = Vec::with_capacity(BUFFER + 16 * 1024);
    let n = entries.len() as u64;
    for e in entries {
        let group = if e.kind == Kind::File && e.nlink > 1 {
            let next = groups.len() as u64 + 1;
            *groups.entry((e.dev, e.ino)).or_insert(next)
        } else {
            0
        };
        Msg::Entry(ManifestEntry {
            path: e.path.as_bytes().to_vec(),
            kind: e.kind,
            size: e.size,
            meta: e.meta,
            group,
            rdev: e.rdev,
            link: e.link.unwrap_or_default(),
        })
        .encode(&mut out);
        if out.len() >= BUFFER {
            debug_assert!(
                out.len() <= phaul_transport::link::DATA_CHUNK,
                "{}",
                out.len()
            );
            writer.send_data(&out).await?;
            out.clear();
        }
    }
    Msg::ManifestEnd { entries: n }.encode(&mut out);
    writer.send_data(&out).await?;
    Ok(())
}

/// What a pass applied.
#[derive(Debug, Default)]
struct Applied {
    files: u64,
    bytes: u64,
    deleted: u64,
    ops: u64,
    /// A file's content was still expected when the stream stopped.
    pending: bool,
    /// What the pass changed (see `durable`).
    touched: Touched,
}

/// A file being received: its temporary name in its parent.
#[derive(Debug)]
struct Pending {
    path: RelPath,
    parent: OwnedFd,
    tmp: Vec<u8>,
    file: File,
    size: u64,
    written: u64,
    meta: Meta,
}

/// Applies operations to the tree, one at a time, on a blocking thread.
#[derive(Debug)]
struct Applier {
    dirs: Dirs,
    limits: FsLimits,
    applied: Applied,
    pending: Option<Pending>,
    seq: u64,
}

impl Drop for Applier {
    fn drop(&mut self) {
        if let Some(p) = self.pending.take() {
            // An aborted pass leaves no temporary file behind.
            let _ = unlinkat(&p.parent, p.tmp.as_slice(), UnlinkatFlags::NoRemoveDir);
            debug!(path = %p.path.lossy(), "removed a partly received file");
        }
    }
}

fn time(m: &Meta) -> TimeSpec {
    TimeSpec::new(m.mtime_sec, i64::from(m.mtime_nsec))
}

fn owner(m: &Meta) -> (Option<Uid>, Option<Gid>) {
    (Some(Uid::from_raw(m.uid)), Some(Gid::from_raw(m.gid)))
}

fn mode(m: &Meta) -> Mode {
    Mode::from_bits_truncate(m.mode)
}

fn is_kind(st: &FileStat, t: SFlag) -> bool {
    SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT == t
}

/// Runs `make` with fresh temporary names in a directory until one does
/// not exist yet (`EEXIST` means a leftover or a source file of that name).
fn at_tmp<T>(
    seq: &mut u64,
    mut make: impl FnMut(&[u8]) -> nix::Result<T>,
) -> nix::Result<(T, Vec<u8>)> {
    for _ in 0..64 {
        *seq += 1;
        let name = format!(".phaul-tmp.{}.{}", std::process::id(), seq).into_bytes();
        match make(&name) {
            Ok(v) => return Ok((v, name)),
            Err(Errno::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(Errno::EEXIST)
}

/// Renames a finished temporary entry over its final name; on failure the
/// temporary one is removed.
fn place(parent: BorrowedFd<'_>, tmp: &[u8], name: &[u8], path: &RelPath) -> Result<()> {
    if let Err(e) = renameat(parent, tmp, parent, name) {
        let _ = unlinkat(parent, tmp, UnlinkatFlags::NoRemoveDir);
        return Err(Error::io(path.to_path(), e));
    }
    Ok(())
}

/// Gives a new temporary entry (a symlink or node made under `tmp`) its
/// owner, mode (with `chmod`) and mtime, never following it, and renames
/// it over `name`; on failure the temporary entry is removed.
fn finish_tmp(
    parent: BorrowedFd<'_>,
    tmp: &[u8],
    name: &[u8],
    path: &RelPath,
    meta: &Meta,
    chmod: bool,
) -> Result<()> {
    let (uid, gid) = owner(meta);
    let set = fchownat(parent, tmp, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW)
        .and_then(|()| {
            if chmod {
                fchmodat(parent, tmp, mode(meta), FchmodatFlags::NoFollowSymlink)
            } else {
                Ok(())
            }
        })
        .and_then(|()| {
            utimensat(
                parent,
                tmp,
                &TimeSpec::UTIME_OMIT,
                &time(meta),
                UtimensatFlags::NoFollowSymlink,
            )
        });
    if let Err(e) = set {
        let _ = unlinkat(parent, tmp, UnlinkatFlags::NoRemoveDir);
        return Err(Error::io(path.to_path(), e));
    }
    place(parent, tmp, name, path)
}

impl Applier {
    fn new(root: &Path, limits: FsLimits) -> Result<Self> {
        Ok(Self {
            dirs: Dirs::open(root)?,
            limits,
            applied: Applied::default(),
            pending: None,
            seq: 0,
        })
    }

    fn run(mut self, mut rx: mpsc::Receiver<Msg>) -> Result<Applied> {
        while let Some(msg) = rx.blocking_recv() {
            self.apply(msg)?;
        }
        let mut a = std::mem::take(&mut self.applied);
        a.pending = self.pending.is_some();
        Ok(a)
    }

    fn apply(&mut self, msg: Msg) -> Result<()> {
        if self.pending.is_some() {
            return match msg {
                Msg::Data(b) => self.data(&b),
                other => Err(Error::Protocol(format!(
                    "a message of tag {} before a file's content was complete",
                    other.tag()
                ))),
            };
        }
        self.applied.ops += 1;
        if self.applied.ops > self.limits.max_entries {
            return Err(Error::Limit(format!(
                "more than {} operations in one pass",
                self.limits.max_entries
            )));
        }
        match msg {
            Msg::Mkdir { path } => self.mkdir(&RelPath::parse(&path)?),
            Msg::Write { path, size, meta } => self.write(RelPath::parse(&path)?, size, meta),
            Msg::Data(_) => Err(Error::Protocol("file content without a file".into())),
            Msg::Symlink { path, target, meta } => {
                self.symlink(&RelPath::parse(&path)?, &target, &meta)
            }
            Msg::Link { path, to } => self.link(&RelPath::parse(&path)?, &RelPath::parse(&to)?),
            Msg::Node {
                path,
                kind,
                rdev,
                meta,
            } => self.node(&RelPath::parse(&path)?, kind, rdev, &meta),
            Msg::SetMeta { path, meta } => self.set_meta(&RelPath::parse(&path)?, &meta),
            Msg::Delete { path } => self.delete(&RelPath::parse(&path)?),
            other => Err(Error::Protocol(format!(
                "a message of tag {} inside a pass",
                other.tag()
            ))),
        }
    }

    fn mkdir(&mut self, p: &RelPath) -> Result<()> {
        self.applied.touched.in_dir_of(p);
        let (parent, name) = self.dirs.parent(p)?;
        // Made private; its mode, owner and times come with its SetMeta,
        // after its children.
        match mkdirat(parent, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => Ok(()),
            Err(Errno::EEXIST) => match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(st) if is_kind(&st, SFlag::S_IFDIR) => Ok(()),
                _ => Err(Error::Refused {
                    path: p.lossy(),
                    reason: "exists and is not a directory".into(),
                }),
            },
            Err(e) => Err(Error::io(p.to_path(), e)),
        }
    }

    fn write(&mut self, p: RelPath, size: u64, meta: Meta) -> Result<()> {
        if size > self.limits.max_file_size {
            return Err(Error::Limit(format!(
                "{:?} has {size} bytes; files may have at most {}",
                p.lossy(),
                self.limits.max_file_size
            )));
        }
        if self.applied.bytes.saturating_add(size) > self.limits.max_pass_bytes {
            return Err(Error::Limit(format!(
                "the pass would exceed {} bytes of content",
                self.limits.max_pass_bytes
            )));
        }
        self.applied.touched.entry(&p);
        self.applied.touched.in_dir_of(&p);
        let seq = &mut self.seq;
        let (parent, _) = self.dirs.parent(&p)?;
        let (fd, tmp) = at_tmp(seq, |n| {
            openat(
                parent,
                n,
                OFlag::O_WRONLY
                    | OFlag::O_CREAT
                    | OFlag::O_EXCL
                    | OFlag::O_NOFOLLOW
                    | OFlag::O_CLOEXEC,
                Mode::from_bits_truncate(0o600),
            )
        })
        .map_err(|e| Error::io(p.to_path(), e))?;
        let parent = parent
            .try_clone_to_owned()
            .map_err(|e| Error::io(p.to_path(), e))?;
        self.pending = Some(Pending {
            path: p,
            parent,
            tmp,
            file: File::from(fd),
            size,
            written: 0,
            meta,
        });
        if size == 0 {
            self.finish()?;
        }
        Ok(())
    }

    fn data(&mut self, b: &[u8]) -> Result<()> {
        let p = self.pending.as_mut().expect("checked by the caller");
        if p.written + b.len() as u64 > p.size {
            return Err(Error::Protocol(format!(
                "more content for {:?} than its {} bytes",
                p.path.lossy(),
                p.size
            )));
        }
        p.file
            .write_all(b)
            .map_err(|e| Error::io(p.path.to_path(), e))?;
        p.written += b.len() as u64;
        if p.written == p.size {
            self.finish()?;
        }
        Ok(())
    }

    /// Owner, then mode (a chown clears setuid and setgid), then times
    /// (after the content), then the rename that makes it visible.
    fn finish(&mut self) -> Result<()> {
        let p = self.pending.as_ref().expect("a file is pending");
        let err = |e: Errno| Error::io(p.path.to_path(), e);
        let (uid, gid) = owner(&p.meta);
        let set = fchown(&p.file, uid, gid)
            .and_then(|()| fchmod(&p.file, mode(&p.meta)))
            .and_then(|()| futimens(&p.file, &TimeSpec::UTIME_OMIT, &time(&p.meta)));
        set.map_err(err)?;
        // Leaves `pending` only once placed, so a failure here still
        // removes the temporary file (on drop).
        let p = self.pending.take().expect("a file is pending");
        let (_, name) = p.path.split_last().expect("not the root");
        drop(p.file);
        place(p.parent.as_fd(), &p.tmp, name, &p.path)?;
        self.applied.files += 1;
        self.applied.bytes += p.size;
        Ok(())
    }

    fn symlink(&mut self, p: &RelPath, target: &[u8], meta: &Meta) -> Result<()> {
        if target.is_empty() || target.len() > MAX_PATH || target.contains(&0) {
            return Err(Error::Refused {
                path: p.lossy(),
                reason: "a symlink target that is empty, too long or holds NUL".into(),
            });
        }
        // A symlink's own mode bits mean nothing on Linux.
        self.make_at(p, meta, false, |parent, n| symlinkat(target, parent, n))
    }

    fn link(&mut self, p: &RelPath, to: &RelPath) -> Result<()> {
        if to.is_root() || p == to {
            return Err(Error::Refused {
                path: p.lossy(),
                reason: format!("a hard link to {:?}", to.lossy()),
            });
        }
        let to_dir = self.dirs.open_dir(&to.parent().expect("not the root"))?;
        let (_, to_name) = to.split_last().expect("not the root");
        let st_to = fstatat(&to_dir, to_name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|e| Error::io(to.to_path(), e))?;
        if is_kind(&st_to, SFlag::S_IFDIR) {
            return Err(Error::Refused {
                path: p.lossy(),
                reason: format!("a hard link to the directory {:?}", to.lossy()),
            });
        }
        self.applied.touched.in_dir_of(p);
        let seq = &mut self.seq;
        let (parent, name) = self.dirs.parent(p)?;
        if let Ok(st) = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            // rename() of a name over another name of the same inode does
            // nothing (and would leave the temporary name behind).
            if st.st_dev == st_to.st_dev && st.st_ino == st_to.st_ino {
                return Ok(());
            }
        }
        let ((), tmp) = at_tmp(seq, |n| {
            linkat(&to_dir, to_name, parent, n, AtFlags::empty())
        })
        .map_err(|e| Error::io(p.to_path(), e))?;
        place(parent, &tmp, name, p)
    }

    fn node(&mut self, p: &RelPath, kind: Kind, rdev: u64, meta: &Meta) -> Result<()> {
        let flag = kind.node_flag().ok_or_else(|| {
            Error::Protocol(format!("a node of kind {kind:?} for {:?}", p.lossy()))
        })?;
        if kind.is_device() && !self.limits.allow_devices {
            return Err(Error::Refused {
                path: p.lossy(),
                reason: "device nodes are not allowed on this target".into(),
            });
        }
        let rdev = if kind.is_device() { rdev } else { 0 };
        self.make_at(p, meta, true, |parent, n| {
            mknodat(parent, n, flag, Mode::from_bits_truncate(0o600), rdev)
        })
    }

    /// Makes entry `p` with `make` under a temporary name in its parent,
    /// gives it `meta` (its mode only with `chmod`) and renames it into
    /// place.
    fn make_at(
        &mut self,
        p: &RelPath,
        meta: &Meta,
        chmod: bool,
        mut make: impl FnMut(BorrowedFd<'_>, &[u8]) -> nix::Result<()>,
    ) -> Result<()> {
        self.applied.touched.in_dir_of(p);
        let seq = &mut self.seq;
        let (parent, name) = self.dirs.parent(p)?;
        let ((), tmp) = at_tmp(seq, |n| make(parent, n)).map_err(|e| Error::io(p.to_path(), e))?;
        finish_tmp(parent, &tmp, name, p, meta, chmod)
    }

    fn set_meta(&mut self, p: &RelPath, meta: &Meta) -> Result<()> {
        self.applied.touched.entry(p);
        let err = |e: Errno| Error::io(p.to_path(), e);
        let (uid, gid) = owner(meta);
        if p.is_root() {
            let fd = self.dirs.root();
            return fchown(fd, uid, gid)
                .and_then(|()| fchmod(fd, mode(meta)))
                .and_then(|()| futimens(fd, &TimeSpec::UTIME_OMIT, &time(meta)))
                .map_err(err);
        }
        let (parent, name) = self.dirs.parent(p)?;
        let st = fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(err)?;
        let is_link = is_kind(&st, SFlag::S_IFLNK);
        let chowned = st.st_uid != meta.uid || st.st_gid != meta.gid;
        if chowned {
            fchownat(parent, name, uid, gid, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(err)?;
        }
        // A symlink has no mode of its own on Linux.
        if !is_link && (chowned || st.st_mode & 0o7777 != meta.mode) {
            fchmodat(parent, name, mode(meta), FchmodatFlags::NoFollowSymlink).map_err(err)?;
        }
        utimensat(
            parent,
            name,
            &TimeSpec::UTIME_OMIT,
            &time(meta),
            UtimensatFlags::NoFollowSymlink,
        )
        .map_err(err)
    }

    fn delete(&mut self, p: &RelPath) -> Result<()> {
        if p.is_root() {
            return Err(Error::Refused {
                path: String::new(),
                reason: "deleting the tree's root".into(),
            });
        }
        self.applied.touched.in_dir_of(p);
        let res = self.delete_inner(p);
        // The cached directory may be what just went.
        self.dirs.forget();
        res
    }

    fn delete_inner(&mut self, p: &RelPath) -> Result<()> {
        let (parent, name) = match self.dirs.parent(p) {
            Ok(x) => x,
            // Its parent is already gone: so is it.
            Err(Error::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => {
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let st = match fstatat(parent, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => return Ok(()),
            Err(e) => return Err(Error::io(p.to_path(), e)),
        };
        let n = if is_kind(&st, SFlag::S_IFDIR) {
            remove_tree(parent, name, p)?
        } else {
            unlinkat(parent, name, UnlinkatFlags::NoRemoveDir)
                .map_err(|e| Error::io(p.to_path(), e))?;
            1
        };
        self.applied.deleted += n;
        Ok(())
    }
}

/// Removes the directory `name` in `parent` and everything in it, never
/// following a symlink; returns how many entries went.
fn remove_tree(parent: BorrowedFd<'_>, name: &[u8], path: &RelPath) -> Result<u64> {
    let err = |e: Errno| Error::io(path.to_path(), e);
    let mut dir = Dir::openat(parent, name, DIR_FLAGS, Mode::empty()).map_err(err)?;
    let mut names = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(err)?;
        let n = ent.file_name().to_bytes();
        if n != b"." && n != b".." {
            names.push(n.to_vec());
        }
    }
    let mut count = 0;
    for n in names {
        let child = path.join(&n)?;
        let st = match fstatat(dir.as_fd(), n.as_slice(), AtFlags::AT_SYMLINK_NOFOLLOW) {
            Ok(st) => st,
            Err(Errno::ENOENT) => continue,
            Err(e) => return Err(Error::io(child.to_path(), e)),
        };
        if is_kind(&st, SFlag::S_IFDIR) {
            count += remove_tree(dir.as_fd(), &n, &child)?;
        } else {
            unlinkat(dir.as_fd(), n.as_slice(), UnlinkatFlags::NoRemoveDir)
                .map_err(|e| Error::io(child.to_path(), e))?;
            count += 1;
        }
    }
    drop(dir);
    unlinkat(parent, name, UnlinkatFlags::RemoveDir).map_err(err)?;
    Ok(count + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_applier_records_what_a_pass_changed_for_durability() {
        let rel = |s: &str| RelPath::parse(s.as_bytes()).unwrap();
        let root = tempfile::tempdir().unwrap();
        std::fs::create_dir(root.path().join("old")).unwrap();
        std::fs::write(root.path().join("old/x"), b"x").unwrap();
        let me = Meta {
            mode: 0o644,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime_sec: 1,
            mtime_nsec: 0,
        };
        let mut a = Applier::new(root.path(), FsLimits::default()).unwrap();
        let ops = [
            Msg::Mkdir {
                path: b"etc".to_vec(),
            },
            Msg::Write {
                path: b"etc/hosts".to_vec(),
                size: 2,
                meta: me,
            },
            Msg::Data(bytes::Bytes::from_static(b"ok")),
            Msg::Symlink {
                path: b"etc/l".to_vec(),
                target: b"hosts".to_vec(),
                meta: me,
            },
            Msg::SetMeta {
                path: b"etc".to_vec(),
                meta: Meta { mode: 0o755, ..me },
            },
            Msg::Delete {
                path: b"old/x".to_vec(),
            },
        ];
        for m in ops {
            a.apply(m).unwrap();
        }
        let touched = std::mem::take(&mut a.applied.touched);
        let mut want = Touched::default();
        want.entry(&rel("etc/hosts"));
        want.entry(&rel("etc"));
        for p in ["etc", "etc/hosts", "old/x"] {
            // The root, `etc` and `old`.
            want.in_dir_of(&rel(p));
        }
        assert_eq!(touched, want);
        make_durable(root.path(), Durable::Touched(touched)).unwrap();
        assert_eq!(std::fs::read(root.path().join("etc/hosts")).unwrap(), b"ok");
    }
}
