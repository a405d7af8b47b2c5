//! The native driver's source side.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, SFlag, fstat};
use phaul_transport::Link;
use phaul_transport::link::{FrameReader, FrameWriter};
use tokio::sync::mpsc;
use tracing::debug;

use super::plan::{Manifest, Op, plan};
use super::{BUFFER, CONTENT_CHUNK};
use crate::error::{Error, Result};
use crate::pass::PassGate;
use crate::path::{Dirs, RelPath};
use crate::tree::{self, Entry, Meta};
use crate::wire::{Msg, MsgReader, put_data_header};
use crate::{FsDriver, FsLimits, Pass, SyncStats, blocking, describe};

/// How long a source whose sending failed waits for the target's `Error`
/// frame, which usually says why better than a broken pipe.
const ERROR_GRACE: Duration = Duration::from_secs(5);

/// The source side of the native driver: walks `root` and sends the
/// difference to the target's [`serve_native`](super::serve_native) over
/// a link (normally of channel [`phaul_transport::Channel::Fs`]).
///
/// Every pass — [`FsDriver::start`], [`FsDriver::next_iteration`],
/// [`FsDriver::final_sync`] — is a full diff against the target's current
/// tree, so a pass after a failed or partial one repairs it. A pass that
/// fails leaves the link unusable ([`Error::Broken`] after that); after
/// `final_sync` the target has returned and no more passes can run.
#[derive(Debug)]
pub struct NativeSource {
    link: Link,
    root: PathBuf,
    limits: FsLimits,
    reader: MsgReader,
    gate: PassGate,
}

/// What the generator sent.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    files: u64,
    bytes: u64,
    ops: u64,
    deleted: u64,
}

impl NativeSource {
    /// A source for the tree at `root`, sending over `link`.
    pub fn new(link: Link, root: PathBuf) -> Self {
        Self {
            link,
            root,
            limits: FsLimits::default(),
            reader: MsgReader::new(),
            gate: PassGate::new("native"),
        }
    }

    /// Bounds what this side accepts and walks: the manifest's and its own
    /// tree's entries (`max_entries`). The other limits are the target's.
    pub fn with_limits(mut self, limits: FsLimits) -> Self {
        self.limits = limits;
        self
    }

    /// One pass through the gate. Any failure leaves the link out of
    /// step: the target may be anywhere in the pass.
    async fn gated_pass(&mut self, which: Pass) -> Result<SyncStats> {
        let t = self.gate.open(which)?;
        let res = self.run_pass(t.number, t.last).await;
        if let Err(e) = &res {
            if e.worth_reporting() {
                // Best effort: the pass has failed either way, and the
                // target aborts (removing its partial file) on it.
                let _ = self.link.writer.send_error(e.code(), &describe(e), 0).await;
            }
        }
        self.gate.close(t, res, |_| false)
    }

    async fn run_pass(&mut self, pass: u32, last: bool) -> Result<SyncStats> {
        let Link { reader, writer, .. } = &mut self.link;
        writer
            .send_data(&Msg::PassBegin { pass, last }.to_vec())
            .await?;

        // Walk our tree while the target scans and sends its own.
        let root = self.root.clone();
        let max = self.limits.max_entries;
        let walk = tokio::task::spawn_blocking(move || tree::scan(&root, max, last));
        let manifest = receive_manifest(reader, &mut self.reader, max).await;
        let src = blocking(walk).await;
        let (src, manifest) = (src?, manifest?);
        let scanned = src.len() as u64;
        let (src, ops) = blocking(tokio::task::spawn_blocking(move || {
            let ops = plan(&src, &manifest);
            Ok((src, ops))
        }))
        .await?;
        debug!(pass, entries = scanned, ops = ops.len(), "planned a pass");

        let (tx, rx) = mpsc::channel::<Vec<u8>>(8);
        let root = self.root.clone();
        let generator = tokio::task::spawn_blocking(move || generate(&root, &src, &ops, last, &tx));
        let counts = send_all(writer, reader, &mut self.reader, rx, generator).await?;

        writer
            .send_data(
                &Msg::PassEnd {
                    files: counts.files,
                    bytes: counts.bytes,
                    ops: counts.ops,
                }
                .to_vec(),
            )
            .await?;
        match self.reader.next(reader).await? {
            Msg::PassDone {
                files,
                bytes,
                deleted,
                scanned: _,
            } => {
                if files != counts.files || bytes != counts.bytes {
                    return Err(Error::Protocol(format!(
                        "sent {} files ({} bytes), the target applied {files} ({bytes} bytes)",
                        counts.files, counts.bytes
                    )));
                }
                Ok(SyncStats {
                    files,
                    bytes,
                    deleted,
                    scanned,
                    duration: Duration::ZERO,
                })
            }
            other => Err(other.unexpected("PassDone")),
        }
    }
}

impl FsDriver for NativeSource {
    fn name(&self) -> &'static str {
        "native"
    }

    fn pass(&mut self, which: Pass) -> impl Future<Output = Result<SyncStats>> + Send {
        self.gated_pass(which)
    }
}

/// Reads the target's manifest, checking every path.
async fn receive_manifest(
    rd: &mut FrameReader,
    mr: &mut MsgReader,
    max_entries: u64,
) -> Result<Manifest> {
    let mut m = Manifest::default();
    loop {
        match mr.next(rd).await? {
            Msg::Entry(e) => {
                if m.len() as u64 >= max_entries {
                    return Err(Error::Limit(format!(
                        "the target's manifest has more than {max_entries} entries"
                    )));
                }
                m.insert(e)?;
            }
            Msg::ManifestEnd { entries } => {
                if entries != m.len() as u64 {
                    return Err(Error::Protocol(format!(
                        "a manifest of {} entries announced as {entries}",
                        m.len()
                    )));
                }
                return Ok(m);
            }
            other => {
                return Err(Error::Protocol(format!(
                    "a message of tag {} inside the manifest",
                    other.tag()
                )));
            }
        }
    }
}

/// Sends the generator's buffers as they come, while watching for the
/// target's answer: the target says nothing before `PassDone` unless it
/// refuses something, and then it stops reading, so its `Error` frame must
/// be seen while sending, not after.
async fn send_all(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    mr: &mut MsgReader,
    mut rx: mpsc::Receiver<Vec<u8>>,
    generator: tokio::task::JoinHandle<Result<Counts>>,
) -> Result<Counts> {
    let sending = async {
        while let Some(buf) = rx.recv().await {
            writer.send_data(&buf).await?;
        }
        Ok::<(), Error>(())
    };
    let sent = {
        let mut answer = std::pin::pin!(mr.next(reader));
        let sent = tokio::select! {
            biased;
            m = &mut answer => {
                generator.abort();
                return Err(match m {
                    Err(e) => e,
                    Ok(m) => Error::Protocol(format!(
                        "a message of tag {} before the pass was sent",
                        m.tag()
                    )),
                });
            }
            r = sending => r,
        };
        if let Err(e) = sent {
            generator.abort();
            // A broken connection is explained by the target's Error
            // frame, when it sent one.
            return Err(match tokio::time::timeout(ERROR_GRACE, answer).await {
                Ok(Err(remote @ Error::Link(phaul_transport::Error::Remote { .. }))) => remote,
                _ => e,
            });
        }
        Ok::<(), Error>(())
    };
    sent?;
    blocking(generator).await
}

/// Reads files and encodes the pass's operations into buffers for
/// [`send_all`]. Runs on a blocking thread.
fn generate(
    root: &std::path::Path,
    src: &[Entry],
    ops: &[Op],
    strict: bool,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<Counts> {
    let mut dirs = Dirs::open(root)?;
    let mut out = Vec::with_capacity(BUFFER + CONTENT_CHUNK + 1024);
    let mut c = Counts::default();
    // Files whose content could not be sent (they vanished), and for a
    // hard-link group whose first name vanished, the name sent instead.
    let mut skipped: HashSet<usize> = HashSet::new();
    let mut replaced: HashMap<usize, usize> = HashMap::new();
    let path_of = |i: usize| src[i].path.as_bytes().to_vec();
    for op in ops {
        let sent = match op {
            Op::Delete(p) => {
                Msg::Delete {
                    path: p.as_bytes().to_vec(),
                }
                .encode(&mut out);
                c.deleted += 1;
                true
            }
            Op::Mkdir(i) => {
                Msg::Mkdir { path: path_of(*i) }.encode(&mut out);
                true
            }
            Op::Write(i) => {
                let ok = send_file(&mut dirs, &src[*i], strict, &mut out, &mut c, tx)?;
                if !ok {
                    skipped.insert(*i);
                }
                ok
            }
            Op::Link { idx, to } => {
                let to = replaced.get(to).copied().unwrap_or(*to);
                if skipped.contains(&to) {
                    let ok = send_file(&mut dirs, &src[*idx], strict, &mut out, &mut c, tx)?;
                    if ok {
                        replaced.insert(to, *idx);
                    } else {
                        skipped.insert(*idx);
                    }
                    ok
                } else {
                    Msg::Link {
                        path: path_of(*idx),
                        to: path_of(to),
                    }
                    .encode(&mut out);
                    true
                }
            }
            Op::Symlink(i) => {
                let e = &src[*i];
                Msg::Symlink {
                    path: path_of(*i),
                    target: e.link.clone().unwrap_or_default(),
                    meta: e.meta,
                }
                .encode(&mut out);
                true
            }
            Op::Node(i) => {
                let e = &src[*i];
                Msg::Node {
                    path: path_of(*i),
                    kind: e.kind,
                    rdev: e.rdev,
                    meta: e.meta,
                }
                .encode(&mut out);
                true
            }
            Op::SetMeta(i) => {
                Msg::SetMeta {
                    path: path_of(*i),
                    meta: src[*i].meta,
                }
                .encode(&mut out);
                true
            }
        };
        if sent {
            c.ops += 1;
        }
        flush(&mut out, tx, BUFFER)?;
    }
    flush(&mut out, tx, 1)?;
    Ok(c)
}

/// Hands `out` to the sender once it holds at least `at` bytes.
fn flush(out: &mut Vec<u8>, tx: &mpsc::Sender<Vec<u8>>, at: usize) -> Result<()> {
    if out.len() >= at {
        debug_assert!(
            out.len() <= phaul_transport::link::DATA_CHUNK,
            "{}",
            out.len()
        );
        let full = std::mem::replace(out, Vec::with_capacity(BUFFER + CONTENT_CHUNK + 1024));
        tx.blocking_send(full)
            .map_err(|_| Error::Protocol("the pass's sender stopped".into()))?;
    }
    Ok(())
}

/// A race with the live tree: `Ok(false)` (skip; the next pass sees the
/// new state), or an error in the final pass.
fn raced(strict: bool, path: &RelPath, what: String) -> Result<bool> {
    if strict {
        return Err(Error::Changed {
            path: path.lossy(),
            what,
        });
    }
    debug!(path = %path.lossy(), %what, "not sending a file that changed under the walk");
    Ok(false)
}

/// Sends one regular file: a `Write` with the metadata of the file as
/// opened, then its content. Returns false if it was skipped.
fn send_file(
    dirs: &mut Dirs,
    e: &Entry,
    strict: bool,
    out: &mut Vec<u8>,
    c: &mut Counts,
    tx: &mpsc::Sender<Vec<u8>>,
) -> Result<bool> {
    let (parent, name) = match dirs.parent(&e.path) {
        Ok(x) => x,
        // A parent that vanished or became a symlink since the walk.
        Err(err @ (Error::Refused { .. } | Error::Io { .. })) => {
            return raced(strict, &e.path, describe(&err));
        }
        Err(err) => return Err(err),
    };
    // O_NONBLOCK: if the name is now a fifo, opening must not hang.
    let fd = match openat(
        parent,
        name,
        OFlag::O_RDONLY
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY
            | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => fd,
        Err(err @ (Errno::ENOENT | Errno::ELOOP | Errno::ENXIO)) => {
            return raced(strict, &e.path, format!("could not be opened: {err}"));
        }
        Err(err) => return Err(Error::io(e.path.to_path(), err)),
    };
    let st = fstat(&fd).map_err(|err| Error::io(e.path.to_path(), err))?;
    if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFREG {
        return raced(strict, &e.path, "is no longer a regular file".into());
    }
    // Size and times as opened: if the file changes while it is read, its
    // mtime moves past these and the next pass sends it again.
    let size = u64::try_from(st.st_size).unwrap_or(0);
    Msg::Write {
        path: e.path.as_bytes().to_vec(),
        size,
        meta: Meta::of(&st),
    }
    .encode(out);
    let mut file = File::from(fd);
    let mut left = size;
    let mut eof = false;
    while left > 0 {
        let n = usize::try_from(left)
            .unwrap_or(usize::MAX)
            .min(CONTENT_CHUNK);
        put_data_header(out, n);
        let start = out.len();
        out.resize(start + n, 0);
        let mut got = 0;
        while !eof && got < n {
            match file.read(&mut out[start + got..start + n]) {
                Ok(0) => eof = true,
                Ok(k) => got += k,
                Err(err) if err.kind() == std::io::ErrorKind::Interrupted => {}
                Err(err) => return Err(Error::io(e.path.to_path(), err)),
            }
        }
        if got < n {
            // The file shrank while being read. The announced size must
            // still arrive, so the rest is zeros (already there from the
            // resize); its changed mtime gets it resent next pass.
            if strict {
                return Err(Error::Changed {
                    path: e.path.lossy(),
                    what: format!(
                        "shrank while being read ({} of {size} bytes)",
                        size - left + got as u64
                    ),
                });
            }
            debug!(path = %e.path.lossy(), "file shrank while being read; padded, resent next pass");
        }
        left -= n as u64;
        flush(out, tx, BUFFER)?;
    }
    c.files += 1;
    c.bytes += size;
    Ok(true)
}
