//! Checkpoint to an archive and restore from one, with criu-rpc.
//!
//! Each checkpoint and each restore gets a fresh directory under the work
//! directory, named by 16 random bytes in hex:
//!
//! ```text
//! WORK/checkpoints/ID/images/     CRIU's images (what the archive holds)
//! WORK/checkpoints/ID/work/       CRIU's log and statistics
//! WORK/checkpoints/ID/archive.tar the download
//! WORK/restores/ID/upload.tar     the upload, size-capped by the caller
//! WORK/restores/ID/images/        its files, after the whole archive passed
//! WORK/restores/ID/work/          CRIU's restore log
//! ```
//!
//! A restore's directory is removed once CRIU has answered; a checkpoint's
//! stays until the next [`Store::open`] of the same work directory.

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use criu_rpc::Opts;
use phaul_core::criu::opts_from;
use phaul_htypes::CriuOptions;
use tracing::debug;

use crate::error::{Error, Refusal, Result, io};
use crate::tar;

/// A checkpoint, done.
#[derive(Debug)]
pub struct Checkpoint {
    /// Its id (names its directory; see [`Store::archive_path`]).
    pub id: String,
    /// Files in the archive.
    pub files: usize,
    /// The archive's size in bytes.
    pub bytes: u64,
}

/// A fresh restore directory, waiting for its upload.
#[derive(Debug)]
pub struct RestoreDir {
    id: String,
    dir: PathBuf,
}

impl RestoreDir {
    /// Its id.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// Where the caller stores the archive (a new file, not there yet).
    pub fn upload(&self) -> PathBuf {
        self.dir.join("upload.tar")
    }

    /// Removes it and what it holds, when the upload failed.
    pub fn discard(self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Checkpoints and restores under one work directory.
#[derive(Debug, Clone)]
pub struct Store {
    work: PathBuf,
    criu: criu_rpc::Criu,
}

/// Makes `dir` (mode 700); it must not exist.
fn fresh_dir(dir: &Path) -> Result<()> {
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(dir)
        .map_err(io(format!("creating {}", dir.display())))
}

/// 16 random bytes from the kernel, in hex: a directory's name.
fn new_id() -> Result<String> {
    use ring::rand::SecureRandom;
    let mut buf = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut buf)
        .map_err(|_| Error::Random)?;
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

fn is_id(name: &str) -> bool {
    name.len() == 32 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// Removes what an earlier run left in `area`: only entries named like
/// ours, so a mistaken work directory cannot lose anything else.
fn clear_area(area: &Path) -> Result<()> {
    match std::fs::read_dir(area) {
        Ok(entries) => {
            for e in entries.flatten() {
                if e.file_name().to_str().is_some_and(is_id) {
                    let _ = std::fs::remove_dir_all(e.path());
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(area)
            .map_err(io(format!("creating {}", area.display()))),
        Err(e) => Err(io(format!("reading {}", area.display()))(e)),
    }
}

impl Store {
    /// Checkpoints and restores in `work` (made, mode 700, if missing),
    /// with CRIU reached through `criu`. What an earlier run left there is
    /// removed.
    pub fn open(work: &Path, criu: criu_rpc::Criu) -> Result<Self> {
        std::fs::DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(work)
            .map_err(io(format!("creating {}", work.display())))?;
        let store = Self {
            work: work.to_path_buf(),
            criu,
        };
        clear_area(&store.checkpoints())?;
        clear_area(&store.restores())?;
        Ok(store)
    }

    fn checkpoints(&self) -> PathBuf {
        self.work.join("checkpoints")
    }

    fn restores(&self) -> PathBuf {
        self.work.join("restores")
    }

    /// The archive of checkpoint `id`, if `id` is one (32 lowercase hex
    /// digits; whether it exists is not checked).
    pub fn archive_path(&self, id: &str) -> Option<PathBuf> {
        is_id(id).then(|| self.checkpoints().join(id).join("archive.tar"))
    }

    /// Dumps the tree of `pid` into a fresh directory and archives it.
    /// With `leave_running` the tree goes on running; without, CRIU ends it.
    pub async fn checkpoint(
        &self,
        pid: i32,
        options: &CriuOptions,
        leave_running: bool,
    ) -> Result<Checkpoint> {
        let id = new_id()?;
        let dir = self.checkpoints().join(&id);
        fresh_dir(&dir)?;
        let res = self.dump(&dir, pid, options, leave_running).await;
        if res.is_err() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        let (files, bytes) = res?;
        Ok(Checkpoint { id, files, bytes })
    }

    async fn dump(
        &self,
        dir: &Path,
        pid: i32,
        options: &CriuOptions,
        leave_running: bool,
    ) -> Result<(usize, u64)> {
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
        let criu = |what| move |source| Error::Criu { what, source };
        let session = self.criu.connect().await.map_err(criu("starting CRIU"))?;
        session
            .dump(opts)
            .await
            .map_err(criu("CRIU dump"))?
            .finish()
            .await
            .map_err(criu("CRIU dump"))?;
        let out = dir.join("archive.tar");
        tokio::task::spawn_blocking(move || tar::write_dir(&images, &out))
            .await
            .map_err(Error::Task)?
    }

    /// A fresh directory for one restore; store the upload at
    /// [`RestoreDir::upload`], then call [`Store::restore`].
    pub fn new_restore(&self) -> Result<RestoreDir> {
        let id = new_id()?;
        let dir = self.restores().join(&id);
        fresh_dir(&dir)?;
        Ok(RestoreDir { id, dir })
    }

    /// Checks and extracts the uploaded archive and restores it with CRIU;
    /// returns the new root PID. The directory is removed in every case.
    pub async fn restore(&self, dir: RestoreDir) -> Result<i32> {
        let res = self.extract_and_restore(&dir).await;
        let _ = tokio::task::spawn_blocking(move || dir.discard()).await;
        res
    }

    async fn extract_and_restore(&self, dir: &RestoreDir) -> Result<i32> {
        let images = dir.dir.join("images");
        let work = dir.dir.join("work");
        let (upload, dest) = (dir.upload(), images.clone());
        tokio::task::spawn_blocking(move || {
            let r = tar::extract(&upload, &dest);
            let _ = std::fs::remove_file(&upload);
            r.and_then(|entries| {
                if !entries
                    .iter()
                    .any(|e| e.name == criu_rpc::image::INVENTORY_FILE)
                {
                    return Err(Refusal::NoInventory.into());
                }
                // CRIU's own reader first: a garbled inventory is the
                // archive's fault, not a failed restore.
                criu_rpc::image::read_inventory(&dest).map_err(|e| {
                    Error::Refused(Refusal::BadInventory(phaul_transport::error_chain(&e)))
                })
            })
        })
        .await
        .map_err(Error::Task)??;
        debug!(id = dir.id, "archive checked and extracted");
        fresh_dir(&work)?;
        let opts = Opts::new()
            .images_dir(&images)
            .work_dir(&work)
            .log_file("restore.log")
            .log_level(4)
            .file_locks(true)
            .link_remap(true);
        let criu = |what| move |source| Error::Criu { what, source };
        let session = self.criu.connect().await.map_err(criu("starting CRIU"))?;
        let restored = session
            .restore(opts)
            .await
            .map_err(criu("CRIU restore"))?
            .finish()
            .await
            .map_err(criu("CRIU restore"))?;
        Ok(restored.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store(work: &Path) -> Store {
        Store::open(work, criu_rpc::Criu::new().quiet(true)).unwrap()
    }

    /// An archive of `files`, made by this crate's writer.
    fn upload(into: &RestoreDir, files: &[(&str, &[u8])]) {
        let src = tempfile::tempdir().unwrap();
        for (name, data) in files {
            std::fs::write(src.path().join(name), data).unwrap();
        }
        tar::write_dir(src.path(), &into.upload()).unwrap();
    }

    #[test]
    fn opening_clears_only_what_an_earlier_run_left() {
        let work = tempfile::tempdir().unwrap();
        let ours = work
            .path()
            .join("restores")
            .join("0123456789abcdef0123456789abcdef");
        let theirs = work.path().join("restores").join("keep-me");
        std::fs::create_dir_all(&ours).unwrap();
        std::fs::create_dir_all(&theirs).unwrap();
        let s = store(work.path());
        assert!(!ours.exists() && theirs.exists());
        assert!(s.archive_path("../../etc").is_none());
        assert!(s.archive_path("0123456789ABCDEF0123456789abcdef").is_none());
        assert!(s.archive_path("0123456789abcdef0123456789abcdef").is_some());
    }

    #[tokio::test]
    async fn an_archive_without_a_real_inventory_is_refused_before_criu() {
        let work = tempfile::tempdir().unwrap();
        let s = store(work.path());
        let refused = |files: &[(&str, &[u8])]| {
            let dir = s.new_restore().unwrap();
            upload(&dir, files);
            async {
                match s.restore(dir).await {
                    Err(Error::Refused(why)) => why,
                    other => panic!("not refused: {other:?}"),
                }
            }
        };
        let why = refused(&[("hello.txt", b"hello")]).await;
        assert!(matches!(why, Refusal::NoInventory), "{why}");
        let why = refused(&[("inventory.img", b"not really an image")]).await;
        assert!(matches!(why, Refusal::BadInventory(_)), "{why}");
        let left: Vec<_> = std::fs::read_dir(work.path().join("restores"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }

    #[tokio::test]
    async fn a_checkpoint_of_no_process_fails_and_leaves_nothing() {
        let work = tempfile::tempdir().unwrap();
        let s = store(work.path());
        let e = s
            .checkpoint(i32::MAX, &CriuOptions::default(), true)
            .await
            .unwrap_err();
        assert!(!e.is_refusal(), "{e}");
        let left: Vec<_> = std::fs::read_dir(work.path().join("checkpoints"))
            .unwrap()
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
