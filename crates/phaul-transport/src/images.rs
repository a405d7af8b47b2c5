//! The image stream: the files of a CRIU image directory, sent to the
//! target in batches.
//!
//! CRIU images are restored as root, so the target treats every name, size
//! and byte of the stream as hostile until checked. The receiver
//! guarantees:
//!
//! - **Plain names only.** A name is one path component: not empty, at most
//!   255 bytes, no `/`, not `.` or `..`, no NUL or other control character
//!   ([`check_name`]).
//! - **Sizes capped.** The number of files, each file's size and the batch's
//!   total are checked against [`ImageLimits`] *before* anything is written,
//!   and a file must carry exactly the bytes it announced.
//! - **Only inside the target directory.** The directory is opened once
//!   (`O_DIRECTORY | O_NOFOLLOW`) and every file is created relative to that
//!   descriptor with `O_CREAT | O_EXCL | O_NOFOLLOW`: an existing file or
//!   symlink of the same name is never overwritten nor followed.
//! - **Written before acknowledged.** `BatchAck` is sent only once every
//!   file of the batch has been written and closed. With
//!   [`ImageLimits::durable`] (the default) every file and the directory
//!   itself have also been fsync'ed, so a source that reads the ack may rely
//!   on the images surviving a crash of the target. A migration does not
//!   need that (a target that crashes fails the migration, and the source
//!   still holds the tree), so phaul's service turns it off: on a disk,
//!   those fsyncs are milliseconds inside the downtime.
//!
//! Only permission bits (`mode & 0o777`) cross; file-type, setuid, setgid
//! and sticky bits are refused.
//!
//! # Frames
//!
//! ```text
//!  sender                                            receiver
//!    | -- FileBegin {name, size, mode} ------------->|  checks, creates
//!    | -- DATA / DATA_LZ4 ... (exactly size bytes) ->|  writes
//!    | -- FileEnd ---------------------------------->|  fsyncs the file (durable)
//!    |    ... one FileBegin..FileEnd per file ...    |
//!    | -- BatchEnd {files, bytes} ------------------>|  fsyncs the directory (durable)
//!    | <- BatchAck {files, bytes} -------------------|  or Error
//! ```
//!
//! Any violation makes the receiver answer an `Error` frame (`PROTOCOL`,
//! `LIMIT` or `BAD_REQUEST` as fits; `FAILED` when its own disk fails) and
//! return the typed error; the sender, which watches for that answer while
//! it sends, returns it as [`Error::Remote`]. A sender that fails on its own
//! side in the middle of a batch (a file that changed under it) tells the
//! receiver with an `Error{FAILED}` frame. After an error the link is in an
//! unknown state and should be dropped.
//!
//! On error the receiver removes the file it was writing; files completed
//! earlier in the same batch stay. The target directory belongs to the
//! caller, which removes it when the migration is aborted.

use std::collections::HashSet;
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::{OFlag, openat};
use nix::sys::stat::{Mode, fchmod};
use nix::unistd::{UnlinkatFlags, unlinkat};
use tokio::task::JoinHandle;
use tracing::debug;

use crate::error::{Error, Result, error_chain};
use crate::frame::{Kind, MAX_PAYLOAD};
use crate::link::{DATA_CHUNK, FrameReader, FrameWriter, Link, data_of, expect_msg};
use crate::proto::{BatchAck, BatchEnd, ErrorCode, FileBegin, FileEnd};

/// Data chunks up to this size are written on the receiving task itself;
/// larger ones in the blocking pool, overlapping the next chunk's arrival.
const INLINE_WRITE: usize = 64 * 1024;

/// The longest file name, in bytes (Linux's `NAME_MAX`).
pub const MAX_NAME: usize = 255;

/// How long a sender whose connection broke waits for the receiver's
/// `Error` frame, which usually explains the break better than `EPIPE`.
const ERROR_GRACE: Duration = Duration::from_secs(5);

/// What a receiver accepts in one batch. A target sizes these to its disk
/// and to what a dump can plausibly contain, so a hostile or broken source
/// cannot fill the disk or exhaust inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ImageLimits {
    /// The most files in a batch.
    pub max_files: u32,
    /// The largest single file, in bytes.
    pub max_file_size: u64,
    /// The most bytes in a batch, all files together.
    pub max_total: u64,
    /// fsync every file and the directory before acknowledging a batch.
    pub durable: bool,
}

impl Default for ImageLimits {
    /// 100 000 files, 16 GiB per file, 64 GiB in all: well above what a
    /// large container's images take, well below what breaks a target.
    fn default() -> Self {
        Self {
            max_files: 100_000,
            max_file_size: 16 << 30,
            max_total: 64 << 30,
            durable: true,
        }
    }
}

/// What a batch carried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BatchStats {
    /// Files sent or received.
    pub files: u32,
    /// Their bytes, all together.
    pub bytes: u64,
}

/// Checks that `name` is a plain file name that can only ever mean a file
/// directly inside the target directory: non-empty, at most 255 bytes, no
/// `/`, not `.` or `..`, no NUL and no control characters (which have no
/// business in an image name and could garble logs and terminals).
pub fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > MAX_NAME {
        "longer than 255 bytes"
    } else if name == "." || name == ".." {
        "a directory reference"
    } else if name.contains('/') {
        "contains '/'"
    } else if name.contains('\0') {
        "contains NUL"
    } else if name.chars().any(char::is_control) {
        "contains a control character"
    } else {
        return Ok(());
    };
    Err(Error::BadName {
        name: name.to_string(),
        reason,
    })
}

// --- sending -----------------------------------------------------------------

/// Sends the files `names` of `dir` as one batch and waits for the
/// receiver's acknowledgement, whose counts must match what was sent.
///
/// Every name is checked before the first frame goes out: a name that fails
/// [`check_name`], a name listed twice, or an entry that is not a regular
/// file (a symlink is never followed) is refused with nothing sent, and the
/// link stays usable. A file is read in chunks and must still have exactly
/// the size announced in its `FileBegin` when its end is reached; if it
/// changed, the batch fails and the receiver is told.
pub async fn send_files(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    dir: &Path,
    names: &[String],
) -> Result<BatchStats> {
    let owned_dir = dir.to_path_buf();
    let owned_names = names.to_vec();
    blocking(move || precheck(&owned_dir, &owned_names)).await?;
    send_checked(writer, reader, dir, names).await
}

/// Sends every regular file directly in `dir`, sorted by name, as one
/// batch (see [`send_files`]).
///
/// Symlinks, directories and other special files are skipped, not sent: a
/// pre-copy image directory holds a `parent` symlink to the previous
/// iteration, which the target recreates itself. A regular file whose name
/// cannot be sent (not UTF-8, or failing [`check_name`]) fails the batch
/// before anything is sent rather than being silently left behind.
pub async fn send_dir(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    dir: &Path,
) -> Result<BatchStats> {
    let owned_dir = dir.to_path_buf();
    let names = blocking(move || list_regular(&owned_dir)).await?;
    send_files(writer, reader, dir, &names).await
}

/// [`send_files`] on a link's two halves.
pub async fn send_files_over(link: &mut Link, dir: &Path, names: &[String]) -> Result<BatchStats> {
    send_files(&mut link.writer, &mut link.reader, dir, names).await
}

/// [`send_dir`] on a link's two halves.
pub async fn send_dir_over(link: &mut Link, dir: &Path) -> Result<BatchStats> {
    send_dir(&mut link.writer, &mut link.reader, dir).await
}

/// The regular files of `dir`, sorted; everything else is logged and
/// skipped.
fn list_regular(dir: &Path) -> Result<Vec<String>> {
    let file_err = |source| Error::File {
        path: dir.to_path_buf(),
        source,
    };
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(file_err)? {
        let entry = entry.map_err(file_err)?;
        // `DirEntry::file_type` does not follow symlinks, which is the point.
        let ft = entry.file_type().map_err(|source| Error::File {
            path: entry.path(),
            source,
        })?;
        let name = entry.file_name();
        if !ft.is_file() {
            debug!(
                dir = %dir.display(),
                name = ?name,
                kind = kind_of(&ft),
                "not sending a non-regular entry"
            );
            continue;
        }
        let name = name.into_string().map_err(|n| Error::BadName {
            name: n.to_string_lossy().into_owned(),
            reason: "not UTF-8",
        })?;
        names.push(name);
    }
    names.sort();
    Ok(names)
}

fn kind_of(ft: &std::fs::FileType) -> &'static str {
    if ft.is_symlink() {
        "symlink"
    } else if ft.is_dir() {
        "directory"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_block_device() || ft.is_char_device() {
        "device"
    } else {
        "other"
    }
}

/// Everything that can be checked before the first frame, so that a bad
/// request leaves the link clean.
fn precheck(dir: &Path, names: &[String]) -> Result<()> {
    if u32::try_from(names.len()).is_err() {
        return Err(Error::Limit(format!("{} files in one batch", names.len())));
    }
    let mut seen = HashSet::with_capacity(names.len());
    for name in names {
        check_name(name)?;
        if !seen.insert(name.as_str()) {
            return Err(Error::BadName {
                name: name.clone(),
                reason: "listed twice",
            });
        }
        let path = dir.join(name);
        let meta = std::fs::symlink_metadata(&path).map_err(|source| Error::File {
            path: path.clone(),
            source,
        })?;
        if !meta.file_type().is_file() {
            return Err(not_regular(path, &meta.file_type()));
        }
    }
    Ok(())
}

/// Logs a batch at its end, on either side (`what` it was there).
fn log_batch(dir: &Path, stats: &BatchStats, what: &str) {
    debug!(
        dir = %dir.display(),
        files = stats.files,
        bytes = stats.bytes,
        "image batch {what}"
    );
}

fn not_regular(path: PathBuf, ft: &std::fs::FileType) -> Error {
    let source = io::Error::new(
        io::ErrorKind::InvalidInput,
        format!("not a regular file (a {})", kind_of(ft)),
    );
    Error::File { path, source }
}

/// Sends prechecked files, watching for the receiver's early answer.
async fn send_checked(
    writer: &mut FrameWriter,
    reader: &mut FrameReader,
    dir: &Path,
    names: &[String],
) -> Result<BatchStats> {
    // The receiver says nothing until the ack unless something is wrong, so
    // its first frame is read concurrently with sending: an `Error` stops
    // the sender at once instead of after gigabytes it would refuse (or
    // never, if it stopped reading and the socket filled up).
    let mut answer = std::pin::pin!(reader.recv());
    let mut sending = Box::pin(send_all(writer, dir, names));
    let sent = tokio::select! {
        biased;
        f = &mut answer => return Err(early_answer(f)),
        r = &mut sending => r,
    };
    drop(sending);
    let stats = match sent {
        Ok(s) => s,
        Err(e) => return Err(after_failure(writer, answer, e).await),
    };
    let end = BatchEnd {
        files: stats.files,
        bytes: stats.bytes,
    };
    if let Err(e) = writer.send(Kind::BatchEnd, &end).await {
        return Err(after_failure(writer, answer, e).await);
    }
    let ack: BatchAck = expect_msg(&answer.await?, Kind::BatchAck)?;
    if ack.files != stats.files || ack.bytes != stats.bytes {
        return Err(Error::Protocol(format!(
            "batch of {} files ({} bytes) acknowledged as {} files ({} bytes)",
            stats.files, stats.bytes, ack.files, ack.bytes
        )));
    }
    log_batch(dir, &stats, "acknowledged");
    Ok(stats)
}

/// The error for a receiver that spoke before the batch was complete.
fn early_answer(f: Result<crate::frame::Frame>) -> Error {
    match f {
        Err(e) => e,
        Ok(f) => Error::Protocol(format!("{:?} frame before the batch was sent", f.kind)),
    }
}

/// Makes the best of a failed send: a local failure is reported to the
/// receiver (so it stops waiting and removes its partial file); a broken
/// connection is explained by the receiver's `Error` frame when it sent one.
async fn after_failure<F>(writer: &mut FrameWriter, answer: F, e: Error) -> Error
where
    F: Future<Output = Result<crate::frame::Frame>>,
{
    match e {
        Error::File { .. } | Error::BadName { .. } | Error::Limit(_) => {
            // Best effort: the batch has failed either way.
            let _ = writer
                .send_error(ErrorCode::Failed, &error_chain(&e), 0)
                .await;
            e
        }
        Error::Io(_) | Error::Closed => match tokio::time::timeout(ERROR_GRACE, answer).await {
            Ok(Err(remote @ Error::Remote { .. })) => remote,
            _ => e,
        },
        other => other,
    }
}

/// How many runs of pieces (see [`Pieces`]) the reading thread may be
/// ahead of the sender.
const READ_AHEAD: usize = 8;

/// Up to this many bytes of small frames go out in one write.
const COALESCE: usize = 64 * 1024;

/// What the reading thread hands the sender, in order.
enum Piece {
    Begin(FileBegin),
    Data(Vec<u8>),
    End,
}

/// Sends each file, `FileBegin` to `FileEnd`; not the `BatchEnd`.
///
/// One blocking thread reads the files in order, a few runs ahead, while
/// this task sends: a batch of many small images (a container's dump has
/// dozens) then costs one trip to the blocking pool, not three per file,
/// and a run of small files goes out in one write.
async fn send_all(writer: &mut FrameWriter, dir: &Path, names: &[String]) -> Result<BatchStats> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(READ_AHEAD);
    let (dir, names) = (dir.to_path_buf(), names.to_vec());
    // Ends at its next run once `rx` is gone (this task failed).
    tokio::task::spawn_blocking(move || {
        let mut out = Pieces {
            tx: &tx,
            run: Vec::new(),
            bytes: 0,
        };
        for name in names {
            if read_one(&dir.join(&name), name, &mut out).is_err() {
                return;
            }
        }
        let _ = out.flush();
    });
    let mut stats = BatchStats::default();
    let mut out = Coalesced::default();
    while let Some(run) = rx.recv().await {
        for piece in run? {
            out.add(writer, piece, &mut stats).await?;
        }
        // What the reader has ready goes out in the same write.
        while out.bytes < COALESCE {
            match rx.try_recv() {
                Ok(run) => {
                    for piece in run? {
                        out.add(writer, piece, &mut stats).await?;
                    }
                }
                Err(_) => break,
            }
        }
        out.flush(writer).await?;
    }
    Ok(stats)
}

/// The reading thread's pieces, handed over in runs: small ones together
/// up to [`COALESCE`] bytes, a large chunk alone. `Err(())` once the sender
/// is gone, or after a failure it was told of.
struct Pieces<'a> {
    tx: &'a tokio::sync::mpsc::Sender<Result<Vec<Piece>>>,
    run: Vec<Piece>,
    bytes: usize,
}

impl Pieces<'_> {
    fn push(&mut self, p: Piece) -> std::result::Result<(), ()> {
        let len = match &p {
            Piece::Data(d) => d.len(),
            _ => 0,
        };
        if len > COALESCE {
            self.flush()?;
            return self.tx.blocking_send(Ok(vec![p])).map_err(drop);
        }
        self.run.push(p);
        self.bytes += len;
        if self.bytes >= COALESCE {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> std::result::Result<(), ()> {
        if self.run.is_empty() {
            return Ok(());
        }
        self.bytes = 0;
        let run = std::mem::take(&mut self.run);
        self.tx.blocking_send(Ok(run)).map_err(drop)
    }

    /// Hands over what was read, then the failure; always `Err(())`.
    fn fail(&mut self, e: Error) -> std::result::Result<(), ()> {
        if self.flush().is_ok() {
            let _ = self.tx.blocking_send(Err(e));
        }
        Err(())
    }
}

/// Small frames gathered for one write (see [`FrameWriter::write_frames`]).
#[derive(Default)]
struct Coalesced {
    frames: Vec<(Kind, Vec<u8>)>,
    bytes: usize,
    /// The size of the file being sent (its `FileBegin`'s).
    size: u64,
}

impl Coalesced {
    async fn add(&mut self, w: &mut FrameWriter, p: Piece, stats: &mut BatchStats) -> Result<()> {
        use prost::Message;
        let (kind, payload) = match p {
            Piece::Begin(b) => {
                self.size = b.size;
                (Kind::FileBegin, b.encode_to_vec())
            }
            Piece::Data(d) if d.len() > COALESCE => {
                // Large: written from its own buffer, after what came before.
                self.flush(w).await?;
                return w.send_data(&d).await;
            }
            Piece::Data(d) => {
                let (kind, payload) = w.data_frame(&d);
                (kind, payload.into_owned())
            }
            Piece::End => {
                stats.files += 1;
                stats.bytes += self.size;
                (Kind::FileEnd, FileEnd {}.encode_to_vec())
            }
        };
        self.bytes += payload.len();
        self.frames.push((kind, payload));
        Ok(())
    }

    async fn flush(&mut self, w: &mut FrameWriter) -> Result<()> {
        if self.frames.is_empty() {
            return Ok(());
        }
        let frames: Vec<(Kind, &[u8])> = self.frames.iter().map(|(k, p)| (*k, &p[..])).collect();
        w.write_frames(&frames).await?;
        self.frames.clear();
        self.bytes = 0;
        Ok(())
    }
}

/// Reads one file into pieces for [`send_all`].
fn read_one(path: &Path, name: String, out: &mut Pieces<'_>) -> std::result::Result<(), ()> {
    use std::io::Read;
    let file_err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    let (mut file, size, mode) = match open_regular(path) {
        Ok(x) => x,
        Err(e) => return out.fail(e),
    };
    out.push(Piece::Begin(FileBegin { name, size, mode }))?;
    let mut left = size;
    while left > 0 {
        let want = usize::try_from(left).unwrap_or(usize::MAX).min(DATA_CHUNK);
        let mut buf = vec![0u8; want];
        let n = match file.read(&mut buf) {
            Ok(0) => {
                return out.fail(file_err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("shrank while being sent: {} of {size} bytes", size - left),
                )));
            }
            Ok(n) => n,
            Err(e) => return out.fail(file_err(e)),
        };
        buf.truncate(n);
        left -= n as u64;
        out.push(Piece::Data(buf))?;
    }
    // The receiver takes exactly the announced size, so a file that grew
    // cannot be sent whole: better to fail than to restore a torn image.
    match file.read(&mut [0u8; 1]) {
        Ok(0) => out.push(Piece::End),
        Ok(_) => out.fail(file_err(io::Error::other(format!(
            "grew while being sent (announced {size} bytes)"
        )))),
        Err(e) => out.fail(file_err(e)),
    }
}

/// Opens a regular file without following a symlink (the name may have
/// changed since it was checked) and returns it with its size and
/// permission bits.
fn open_regular(path: &Path) -> Result<(File, u64, u32)> {
    let file_err = |source| Error::File {
        path: path.to_path_buf(),
        source,
    };
    // `O_NONBLOCK` keeps a FIFO swapped in under the name from blocking
    // the open; it means nothing for the regular file we expect.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(file_err)?;
    let meta = file.metadata().map_err(file_err)?;
    if !meta.file_type().is_file() {
        return Err(not_regular(path.to_path_buf(), &meta.file_type()));
    }
    Ok((file, meta.len(), meta.permissions().mode() & 0o777))
}

// --- receiving ---------------------------------------------------------------

/// Receives one batch into `dir`, which must exist, and acknowledges it
/// once every file and the directory are synced.
///
/// Files are created only directly inside `dir`, relative to a descriptor
/// opened once, and never over an existing entry (see the module docs for
/// every check). On any error the peer is sent an `Error` frame (unless the
/// error came from the peer or the connection is gone), the file being
/// written is removed, and the typed error is returned; files completed
/// earlier in the batch stay for the caller to remove with the directory.
pub async fn receive_batch(
    reader: &mut FrameReader,
    writer: &mut FrameWriter,
    dir: &Path,
    limits: &ImageLimits,
) -> Result<BatchStats> {
    match receive_inner(reader, dir, limits).await {
        Ok(stats) => {
            writer
                .send(
                    Kind::BatchAck,
                    &BatchAck {
                        files: stats.files,
                        bytes: stats.bytes,
                    },
                )
                .await?;
            log_batch(dir, &stats, "received");
            Ok(stats)
        }
        Err((code, e)) => {
            if e.worth_reporting() {
                // Best effort: the typed error below is what matters here.
                crate::link::refuse(reader, writer, code, &error_chain(&e)).await;
            }
            Err(e)
        }
    }
}

/// [`receive_batch`] on a link's two halves.
pub async fn receive_batch_over(
    link: &mut Link,
    dir: &Path,
    limits: &ImageLimits,
) -> Result<BatchStats> {
    receive_batch(&mut link.reader, &mut link.writer, dir, limits).await
}

/// An error with the code to report it under.
type Coded = (ErrorCode, Error);

fn protocol(message: String) -> Coded {
    (ErrorCode::Protocol, Error::Protocol(message))
}

/// The code for errors whose kind alone says who is at fault.
fn coded(e: Error) -> Coded {
    let code = match &e {
        Error::BadName { .. } => ErrorCode::BadRequest,
        Error::Limit(_) => ErrorCode::Limit,
        // An existing entry of that name (`O_EXCL`) is the sender's to
        // avoid; anything else on our disk is our failure.
        Error::File { source, .. }
            if matches!(source.raw_os_error(), Some(libc::EEXIST | libc::ELOOP)) =>
        {
            ErrorCode::BadRequest
        }
        Error::File { .. } => ErrorCode::Failed,
        _ => ErrorCode::Protocol,
    };
    (code, e)
}

async fn receive_inner(
    reader: &mut FrameReader,
    dir: &Path,
    limits: &ImageLimits,
) -> Result<BatchStats, Coded> {
    let dir_err = |e: Errno| {
        coded(Error::File {
            path: dir.to_path_buf(),
            source: e.into(),
        })
    };
    let dirfd = nix::fcntl::open(
        dir,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
    .map_err(dir_err)?;
    let dirfd = Arc::new(dirfd);
    let mut stats = BatchStats::default();
    loop {
        let f = reader.recv().await.map_err(coded)?;
        match f.kind {
            Kind::FileBegin => {
                let begin: FileBegin = expect_msg(&f, Kind::FileBegin).map_err(coded)?;
                admit(&begin, &stats, limits)?;
                receive_file(reader, dir, &dirfd, &begin, limits.durable).await?;
                stats.files += 1;
                stats.bytes += begin.size;
            }
            Kind::BatchEnd => {
                let end: BatchEnd = expect_msg(&f, Kind::BatchEnd).map_err(coded)?;
                if end.files != stats.files || end.bytes != stats.bytes {
                    return Err(protocol(format!(
                        "batch ends claiming {} files ({} bytes) after {} files ({} bytes)",
                        end.files, end.bytes, stats.files, stats.bytes
                    )));
                }
                if limits.durable {
                    // The new entries are durable only once the directory is.
                    let fd = Arc::clone(&dirfd);
                    let path = dir.to_path_buf();
                    blocking(move || {
                        nix::unistd::fsync(fd.as_fd()).map_err(|e| Error::File {
                            path,
                            source: e.into(),
                        })
                    })
                    .await
                    .map_err(coded)?;
                }
                return Ok(stats);
            }
            other => {
                return Err(protocol(format!(
                    "{other:?} frame where a file or the batch's end was expected"
                )));
            }
        }
    }
}

/// Checks a `FileBegin` against the names, modes and limits before anything
/// is created.
fn admit(begin: &FileBegin, stats: &BatchStats, limits: &ImageLimits) -> Result<(), Coded> {
    check_name(&begin.name).map_err(coded)?;
    if begin.mode & !0o777 != 0 {
        return Err((
            ErrorCode::BadRequest,
            Error::Protocol(format!(
                "{:?}: mode {:#o} has bits other than permissions",
                begin.name, begin.mode
            )),
        ));
    }
    let limit = |m: String| coded(Error::Limit(m));
    if stats.files >= limits.max_files {
        return Err(limit(format!(
            "more than {} files in a batch",
            limits.max_files
        )));
    }
    if begin.size > limits.max_file_size {
        return Err(limit(format!(
            "{:?} is {} bytes, more than {} per file",
            begin.name, begin.size, limits.max_file_size
        )));
    }
    if stats.bytes.saturating_add(begin.size) > limits.max_total {
        return Err(limit(format!(
            "{:?} ({} bytes) would take the batch beyond {} bytes",
            begin.name, begin.size, limits.max_total
        )));
    }
    Ok(())
}

/// A file being received: removed on drop unless completed, so an error or
/// a cancelled receive leaves no partial file behind.
struct Partial<'a> {
    dirfd: BorrowedFd<'a>,
    name: &'a str,
    done: bool,
}

impl Drop for Partial<'_> {
    fn drop(&mut self) {
        if !self.done {
            // The name is ours: `O_EXCL` created it. Failing to remove it
            // only leaves junk in the caller's directory.
            if let Err(e) = unlinkat(self.dirfd, self.name, UnlinkatFlags::NoRemoveDir) {
                debug!(name = self.name, error = %e, "could not remove a partial image file");
            }
        }
    }
}

/// Receives one file's data after its checked `FileBegin`: creates it,
/// writes exactly `size` bytes, fsyncs it at `FileEnd`.
async fn receive_file(
    reader: &mut FrameReader,
    dir: &Path,
    dirfd: &Arc<OwnedFd>,
    begin: &FileBegin,
    durable: bool,
) -> Result<(), Coded> {
    let path = dir.join(&begin.name);
    let file_err = |source: io::Error| {
        coded(Error::File {
            path: path.clone(),
            source,
        })
    };
    let mode = Mode::from_bits_truncate(begin.mode);
    let fd = openat(
        dirfd.as_fd(),
        begin.name.as_str(),
        OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        mode,
    )
    .map_err(|e| file_err(e.into()))?;
    let mut partial = Partial {
        dirfd: dirfd.as_fd(),
        name: &begin.name,
        done: false,
    };
    // The umask applied at creation; the image's own bits are what count.
    fchmod(&fd, mode).map_err(|e| file_err(e.into()))?;
    let file = Arc::new(File::from(fd));

    // One write runs in the blocking pool while the next chunk arrives, so
    // the disk and the network overlap and the runtime is never blocked.
    let mut pending: Option<JoinHandle<io::Result<()>>> = None;
    let mut left = begin.size;
    loop {
        let f = reader.recv().await.map_err(coded)?;
        match f.kind {
            Kind::Data | Kind::DataLz4 => {
                // `data_of` only gives `None` for `StreamEnd`, not matched here.
                let bytes = data_of(f, MAX_PAYLOAD as usize)
                    .map_err(coded)?
                    .unwrap_or_default();
                let n = bytes.len() as u64;
                if n > left {
                    return Err(protocol(format!(
                        "{:?} is larger than announced ({} bytes)",
                        begin.name, begin.size
                    )));
                }
                left -= n;
                if let Some(p) = pending.take() {
                    joined(p).await.map_err(file_err)?;
                }
                if n > 0 && bytes.len() <= INLINE_WRITE {
                    // A small image (most are) goes to the page cache in
                    // microseconds, like the openat above: a trip to the
                    // blocking pool would cost more than the write.
                    (&*file).write_all(&bytes).map_err(file_err)?;
                } else if n > 0 {
                    let file = Arc::clone(&file);
                    pending = Some(tokio::task::spawn_blocking(move || {
                        (&*file).write_all(&bytes)
                    }));
                }
            }
            Kind::FileEnd => {
                let _: FileEnd = expect_msg(&f, Kind::FileEnd).map_err(coded)?;
                if left > 0 {
                    return Err(protocol(format!(
                        "{:?} is shorter than announced: {} of {} bytes",
                        begin.name,
                        begin.size - left,
                        begin.size
                    )));
                }
                if let Some(p) = pending.take() {
                    joined(p).await.map_err(file_err)?;
                }
                if durable {
                    let file = Arc::clone(&file);
                    joined(tokio::task::spawn_blocking(move || file.sync_all()))
                        .await
                        .map_err(file_err)?;
                }
                partial.done = true;
                return Ok(());
            }
            other => {
                return Err(protocol(format!(
                    "{other:?} frame inside {:?} ({} bytes still due)",
                    begin.name, left
                )));
            }
        }
    }
}

// --- helpers -----------------------------------------------------------------

/// Runs blocking file-system work off the runtime's workers.
async fn blocking<T, F>(f: F) -> Result<T>
where
    F: FnOnce() -> Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Io(io::Error::other(e)))?
}

/// A blocking I/O task's result; a panicked task is an I/O failure too.
async fn joined(h: JoinHandle<io::Result<()>>) -> io::Result<()> {
    h.await.map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_pass() {
        for n in [
            "core-1.img",
            "pages-12.img",
            "a",
            "..a",
            "a..",
            ".hidden",
            "ünïcode.img",
        ] {
            check_name(n).unwrap_or_else(|e| panic!("{n:?}: {e}"));
        }
        check_name(&"x".repeat(255)).unwrap();
    }

    #[test]
    fn anything_but_a_plain_name_is_refused() {
        let long = "x".repeat(256);
        for (n, why) in [
            ("", "empty"),
            (".", "a directory reference"),
            ("..", "a directory reference"),
            ("a/b", "contains '/'"),
            ("/etc/passwd", "contains '/'"),
            ("../x", "contains '/'"),
            ("x\0y", "contains NUL"),
            ("x\ny", "contains a control character"),
            ("x\u{1b}[2J", "contains a control character"),
            ("x\u{7f}", "contains a control character"),
            ("x\u{85}", "contains a control character"),
            (long.as_str(), "longer than 255 bytes"),
        ] {
            match check_name(n) {
                Err(Error::BadName { name, reason }) => {
                    assert_eq!(name, n);
                    assert_eq!(reason, why, "{n:?}");
                }
                other => panic!("{n:?}: {other:?}"),
            }
        }
        // 255 bytes of multi-byte characters is the limit, not 255 chars.
        assert!(check_name(&"é".repeat(128)).is_err());
    }

    #[test]
    fn errors_are_reported_under_the_right_code() {
        let file = |errno| Error::File {
            path: "x".into(),
            source: io::Error::from_raw_os_error(errno),
        };
        assert_eq!(coded(Error::Limit("x".into())).0, ErrorCode::Limit);
        assert_eq!(
            coded(Error::BadName {
                name: "x".into(),
                reason: "r"
            })
            .0,
            ErrorCode::BadRequest
        );
        assert_eq!(coded(file(libc::EEXIST)).0, ErrorCode::BadRequest);
        assert_eq!(coded(file(libc::ENOSPC)).0, ErrorCode::Failed);
        assert_eq!(coded(Error::Protocol("x".into())).0, ErrorCode::Protocol);
    }

    #[test]
    fn the_error_chain_includes_the_cause() {
        let e = Error::File {
            path: "/t/core.img".into(),
            source: io::Error::from_raw_os_error(libc::EEXIST),
        };
        let s = error_chain(&e);
        assert!(s.contains("/t/core.img") && s.contains("exists"), "{s}");
    }

    #[test]
    fn default_limits() {
        let l = ImageLimits::default();
        assert_eq!(l.max_files, 100_000);
        assert_eq!(l.max_file_size, 16 << 30);
        assert_eq!(l.max_total, 64 << 30);
    }
}
