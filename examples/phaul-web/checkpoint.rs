//! Checkpoint to an archive and restore from one, with criu-rpc.
//!
//! Each checkpoint and each restore gets a fresh directory under the work
//! directory, named by 16 random bytes in hex:
//!
//! ```text
//! WORK/checkpoints/ID/images/     CRIU's images (what the archive holds)
//! WORK/checkpoints/ID/work/       CRIU's log and statistics
//! WORK/checkpoints/ID/archive.tar the download
//! WORK/restores/ID/upload.tar     the upload, size-capped
//! WORK/restores/ID/images/        its files, after the whole archive passed
//! WORK/restores/ID/work/          CRIU's restore log
//! ```
//!
//! A restore's directory is removed once CRIU has answered; a checkpoint's
//! stays for download until phaul-web stops (the next start clears both).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use criu_rpc::Opts;
use phaul_core::criu::opts_from;
use phaul_core::target::error_chain;
use phaul_htypes::CriuOptions;

use crate::archive::{self, ArchiveError};

/// What went wrong, and whose fault it was.
#[derive(Debug)]
pub enum CrError {
    /// The request or its archive is refused (400).
    Refused(String),
    /// The work could not be done (500); the text carries CRIU's message.
    Failed(String),
}

impl From<ArchiveError> for CrError {
    fn from(e: ArchiveError) -> Self {
        match e {
            ArchiveError::Refused(_) => CrError::Refused(e.to_string()),
            ArchiveError::Io(..) => CrError::Failed(e.to_string()),
        }
    }
}

fn failed(what: &str) -> impl FnOnce(std::io::Error) -> CrError + '_ {
    move |e| CrError::Failed(format!("{what}: {e}"))
}

/// Makes `dir` (mode 700); it must not exist.
pub fn fresh_dir(dir: &Path) -> Result<(), CrError> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(failed("creating a work directory"))
}

/// A checkpoint, done.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its id (names its directory).
    pub id: String,
    /// Files in the archive.
    pub files: usize,
    /// The archive's size in bytes.
    pub bytes: u64,
}

/// The checkpoint area of `work`.
pub fn checkpoints(work: &Path) -> PathBuf {
    work.join("checkpoints")
}

/// The restore area of `work`.
pub fn restores(work: &Path) -> PathBuf {
    work.join("restores")
}

/// The archive of checkpoint `id`, if `id` is one (32 lowercase hex digits).
pub fn archive_path(work: &Path, id: &str) -> Option<PathBuf> {
    let ok = id.len() == 32 && id.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'));
    ok.then(|| checkpoints(work).join(id).join("archive.tar"))
}

/// Dumps the tree of `pid` into a fresh directory `id` and archives it.
/// With `leave_running` the tree goes on running; without, CRIU ends it.
pub async fn checkpoint(
    work: &Path,
    id: String,
    pid: i32,
    options: &CriuOptions,
    leave_running: bool,
) -> Result<Checkpoint, CrError> {
    let dir = checkpoints(work).join(&id);
    fresh_dir(&dir)?;
    let res = dump(&dir, pid, options, leave_running).await;
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    let (files, bytes) = res?;
    Ok(Checkpoint { id, files, bytes })
}

async fn dump(
    dir: &Path,
    pid: i32,
    options: &CriuOptions,
    leave_running: bool,
) -> Result<(usize, u64), CrError> {
    let images = dir.join("images");
    let work = dir.join("work");
    fresh_dir(&images)?;
    fresh_dir(&work)?;
    let opts = opts_from(options)
        .images_dir(&images)
        .work_dir(&work)
        .log_file("dump.log")
        .log_level(4)
        .pid(pid)
        .leave_running(leave_running);
    let criu = criu_rpc::Criu::new().quiet(true);
    let session = criu
        .connect()
        .await
        .map_err(|e| CrError::Failed(format!("starting CRIU: {}", error_chain(&e))))?;
    session
        .dump(opts)
        .await
        .map_err(|e| CrError::Failed(format!("CRIU dump: {}", error_chain(&e))))?
        .finish()
        .await
        .map_err(|e| CrError::Failed(format!("CRIU dump: {}", error_chain(&e))))?;
    let out = dir.join("archive.tar");
    tokio::task::spawn_blocking(move || archive::write_dir(&images, &out))
        .await
        .map_err(|e| CrError::Failed(format!("archiving: {e}")))?
        .map_err(CrError::from)
}

/// Extracts the uploaded archive `upload` (inside `dir`, a fresh restore
/// directory) and restores it with CRIU; returns the new root PID. The
/// directory is removed in every case.
pub async fn restore(dir: PathBuf, upload: PathBuf) -> Result<i32, CrError> {
    let res = extract_and_restore(&dir, upload).await;
    let d = dir.clone();
    let _ = tokio::task::spawn_blocking(move || std::fs::remove_dir_all(d)).await;
    res
}

async fn extract_and_restore(dir: &Path, upload: PathBuf) -> Result<i32, CrError> {
    let images = dir.join("images");
    let work = dir.join("work");
    let dest = images.clone();
    let entries = tokio::task::spawn_blocking(move || {
        let r = archive::extract(&upload, &dest);
        let _ = std::fs::remove_file(&upload);
        r
    })
    .await
    .map_err(|e| CrError::Failed(format!("extracting: {e}")))??;
    if !entries.iter().any(|e| e.name == "inventory.img") {
        return Err(CrError::Refused(
            "archive refused: it holds no inventory.img, so it is not a CRIU checkpoint".into(),
        ));
    }
    fresh_dir(&work)?;
    let opts = Opts::new()
        .images_dir(&images)
        .work_dir(&work)
        .log_file("restore.log")
        .log_level(4)
        .file_locks(true)
        .link_remap(true);
    let criu = criu_rpc::Criu::new().quiet(true);
    let session = criu
        .connect()
        .await
        .map_err(|e| CrError::Failed(format!("starting CRIU: {}", error_chain(&e))))?;
    let restored = session
        .restore(opts)
        .await
        .map_err(|e| CrError::Failed(format!("CRIU restore: {}", error_chain(&e))))?
        .finish()
        .await
        .map_err(|e| CrError::Failed(format!("CRIU restore: {}", error_chain(&e))))?;
    Ok(restored.pid)
}
