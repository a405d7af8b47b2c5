//! A stand-in for CRIU, for tests of the engine's logic.
//!
//! This is **not CRIU**. It plays CRIU's part in the engine's seam
//! ([`SourceCriu`], [`TargetCriu`]) from a script: how many pages each dump
//! writes, which features the "kernel" has, whether the restore fails. It
//! moves real bytes over the engine's real page and image streams (a few
//! bytes per page), so everything but CRIU itself runs for real. It exists
//! because this project's machines lack soft-dirty tracking, so pre-copy,
//! hybrid and the convergence policies cannot be exercised with real CRIU
//! here; every call is recorded for tests to check.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use criu_rpc::proto::{DumpStatsEntry, RestoreStatsEntry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::oneshot;

use crate::criu::{
    DumpSpec, HeldDump, HeldRestore, LazyDaemon, LazyDump, PageServing, RestoreSpec, SourceCriu,
    TargetCriu,
};
use crate::dirty::DirtyRate;
use crate::error::{Error, Result};
use crate::mode::HostCaps;
use crate::pagestream::IOV_LEN;

/// Bytes the stand-in sends per "page": enough to measure, small enough to
/// keep tests fast.
pub const BYTES_PER_PAGE: usize = 64;

/// CRIU's page-server commands the stand-in understands.
const PS_IOV_GET: u32 = 7;
const PS_IOV_CLOSE: u32 = 0x1023;

/// The stand-in's script and its record of calls.
#[derive(Debug, Clone, Default)]
pub struct StandIn {
    caps: HostCaps,
    pages: Arc<Mutex<VecDeque<u64>>>,
    fail_restore: bool,
    /// The CRIU version it reports, if not CRIU 4.1.1.
    version: Option<String>,
    /// The CPU it reports (and accepts), if not "stand-in cpu".
    cpu: Option<Vec<u8>>,
    log: Arc<Mutex<Vec<String>>>,
    /// Set when a restore is committed: the lazy "daemon" starts pulling
    /// then, as CRIU's does once the restored tasks run.
    running: Arc<tokio::sync::Notify>,
    /// The dirty rate the "kernel" reports before pre-copy, if any.
    dirty: Option<DirtyRate>,
    /// How long each restore takes.
    restore_takes: std::time::Duration,
    /// How long each pre-dump takes beyond sending its pages.
    pre_dump_takes: std::time::Duration,
    /// The pages each dump reports scanned, if not its own or 1000.
    resident: Option<u64>,
}

impl StandIn {
    /// A stand-in whose "kernel" has these features.
    pub fn new(caps: HostCaps) -> Self {
        Self {
            caps,
            ..Default::default()
        }
    }

    /// Pages each dump writes, in order (pre-dumps, then the final dump);
    /// once the script runs out, dumps write 10 pages.
    pub fn dirty_pages(self, script: impl IntoIterator<Item = u64>) -> Self {
        *self.pages.lock().expect("not poisoned") = script.into_iter().collect();
        self
    }

    /// Report this dirty rate when the engine measures one before
    /// pre-copy (without it, the stand-in cannot tell, as a seam may).
    pub fn dirty_rate(mut self, rate: DirtyRate) -> Self {
        self.dirty = Some(rate);
        self
    }

    /// Make every restore take this long (a switch-over's cost beyond
    /// memory, as a real restore's is), also one scripted to fail.
    pub fn restore_takes(mut self, d: std::time::Duration) -> Self {
        self.restore_takes = d;
        self
    }

    /// Make every pre-dump take this long beyond its pages (a real one's
    /// fixed costs: freezing, the parasite, the images).
    pub fn pre_dump_takes(mut self, d: std::time::Duration) -> Self {
        self.pre_dump_takes = d;
        self
    }

    /// Report this many pages scanned by every dump: the tree's size, which
    /// a target restores whatever the dump wrote.
    pub fn resident(mut self, pages: u64) -> Self {
        self.resident = Some(pages);
        self
    }

    /// Make every restore fail.
    pub fn failing_restore(mut self) -> Self {
        self.fail_restore = true;
        self
    }

    /// Report this CRIU version instead of 4.1.1.
    pub fn criu_version(mut self, v: &str) -> Self {
        self.version = Some(v.to_string());
        self
    }

    /// Be another CPU: send and accept only this CPU description.
    pub fn cpu(mut self, cpu: &[u8]) -> Self {
        self.cpu = Some(cpu.to_vec());
        self
    }

    fn version_string(&self) -> String {
        self.version.clone().unwrap_or_else(|| "4.1.1".into())
    }

    fn cpu_bytes(&self) -> Vec<u8> {
        self.cpu.clone().unwrap_or_else(|| b"stand-in cpu".to_vec())
    }

    /// What was called, in order (`"pre-dump 0 parent=- track_mem"`, ...).
    pub fn calls(&self) -> Vec<String> {
        self.log.lock().expect("not poisoned").clone()
    }

    fn note(&self, s: String) {
        self.log.lock().expect("not poisoned").push(s);
    }

    /// A held step (a final dump, a restore): the engine's decision comes
    /// on the first channel; the outcome (`stats` on a commit) goes back on
    /// the second, noted as `ended` or `undone`.
    #[allow(clippy::type_complexity)]
    fn hold<T: Send + 'static>(
        &self,
        ended: &'static str,
        undone: &'static str,
        stats: impl FnOnce(&Self) -> T + Send + 'static,
    ) -> (oneshot::Sender<bool>, oneshot::Receiver<Result<Option<T>>>) {
        let (decide_tx, decide_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let commit = decide_rx.await.unwrap_or(false);
            this.note(if commit { ended } else { undone }.into());
            let _ = done_tx.send(Ok(commit.then(|| stats(&this))));
        });
        (decide_tx, done_rx)
    }

    fn next_pages(&self) -> u64 {
        self.pages
            .lock()
            .expect("not poisoned")
            .pop_front()
            .unwrap_or(10)
    }

    fn stats(&self, pages: u64) -> DumpStatsEntry {
        DumpStatsEntry {
            pages_scanned: self.resident.unwrap_or(pages.max(1000)),
            pages_written: pages,
            frozen_time: 1000,
            ..Default::default()
        }
    }

    fn describe(kind: &str, spec: &DumpSpec) -> String {
        format!(
            "{kind} {} parent={}{}",
            spec.iteration,
            spec.parent.as_deref().unwrap_or("-"),
            if spec.track_mem { " track_mem" } else { "" }
        )
    }
}

/// Writes `n` bytes to a socket and closes it, off the runtime's threads.
async fn send_bytes(fd: OwnedFd, n: usize) -> Result<()> {
    tokio::task::spawn_blocking(move || {
        let mut s = std::os::unix::net::UnixStream::from(fd);
        let chunk = vec![0x5a_u8; 64 * 1024];
        let mut left = n;
        while left > 0 {
            let k = left.min(chunk.len());
            s.write_all(&chunk[..k])?;
            left -= k;
        }
        s.shutdown(std::net::Shutdown::Write)?;
        // Wait for the far side to finish, as CRIU waits for its page
        // server's answer.
        let mut sink = Vec::new();
        s.read_to_end(&mut sink)?;
        Ok::<(), std::io::Error>(())
    })
    .await
    .map_err(|e| Error::Protocol(format!("stand-in task: {e}")))?
    .map_err(|source| Error::Io {
        what: "stand-in page stream".into(),
        source,
    })
}

fn write_images(dir: &Path, pid: i32) -> Result<()> {
    std::fs::write(dir.join("core-1.img"), format!("stand-in images of {pid}")).map_err(|source| {
        Error::Io {
            what: "stand-in images".into(),
            source,
        }
    })
}

impl SourceCriu for StandIn {
    async fn version(&self) -> Result<String> {
        Ok(self.version_string())
    }

    async fn features(&self) -> Result<HostCaps> {
        Ok(self.caps)
    }

    async fn cpuinfo(&self, _scratch: &Path) -> Result<Vec<u8>> {
        Ok(self.cpu_bytes())
    }

    fn tracks_dirty_pages(&self) -> bool {
        self.caps.mem_track
    }

    fn dirty_rate(
        &self,
        pid: i32,
        over: std::time::Duration,
    ) -> impl std::future::Future<Output = Result<Option<DirtyRate>>> + Send + 'static {
        if self.dirty.is_some() {
            self.note(format!("dirty-rate {pid} over {} ms", over.as_millis()));
        }
        let dirty = self.dirty;
        async move { Ok(dirty) }
    }

    async fn pre_dump(&self, spec: DumpSpec, pages: OwnedFd) -> Result<DumpStatsEntry> {
        if !self.caps.mem_track {
            return Err(Error::Protocol(
                "stand-in: pre-dump without memory tracking".into(),
            ));
        }
        let n = self.next_pages();
        self.note(Self::describe("pre-dump", &spec));
        tokio::time::sleep(self.pre_dump_takes).await;
        send_bytes(pages, n as usize * BYTES_PER_PAGE).await?;
        Ok(self.stats(n))
    }

    async fn dump(&self, spec: DumpSpec, pages: OwnedFd) -> Result<HeldDump> {
        let n = self.next_pages();
        self.note(Self::describe("dump", &spec));
        write_images(&spec.images_dir, spec.pid)?;
        send_bytes(pages, n as usize * BYTES_PER_PAGE).await?;
        let (decide_tx, done_rx) =
            self.hold("source ended", "source resumed", move |this| this.stats(n));
        Ok(HeldDump::new(decide_tx, done_rx))
    }

    async fn lazy_dump(&self, spec: DumpSpec, port: u16) -> Result<LazyDump> {
        let n = self.next_pages();
        self.note(Self::describe("lazy-dump", &spec));
        write_images(&spec.images_dir, spec.pid)?;
        let listener = tokio::net::TcpListener::bind(("0.0.0.0", port))
            .await
            .map_err(|source| Error::Io {
                what: "stand-in lazy page server".into(),
                source,
            })?;
        let (done_tx, done_rx) = oneshot::channel();
        let this = self.clone();
        tokio::spawn(async move {
            let outcome = async {
                let (mut s, _) = listener.accept().await?;
                // Like CRIU's lazy page server: serve "pages" on request;
                // PS_IOV_CLOSE ends the transfer; so does a clean hang-up
                // (which is why the engine must never hang up cleanly
                // before its commit); an unknown command fails it, and the
                // tree resumes.
                let mut buf = [0u8; IOV_LEN];
                loop {
                    match s.read_exact(&mut buf).await {
                        Ok(_) => match u32::from_ne_bytes([buf[0], buf[1], buf[2], buf[3]]) {
                            // One page per request, as the daemon asks.
                            PS_IOV_GET => s.write_all(&[0x5a; BYTES_PER_PAGE]).await?,
                            PS_IOV_CLOSE => {
                                s.write_all(&0i32.to_ne_bytes()).await?;
                                return Ok(true);
                            }
                            _ => return Ok(false),
                        },
                        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(true),
                        Err(e) => return Err(e),
                    }
                }
            }
            .await;
            let r = match outcome {
                Ok(true) => {
                    this.note("source ended".into());
                    Ok(Some(this.stats(n)))
                }
                Ok(false) => {
                    this.note("source resumed".into());
                    Err(Error::Protocol(
                        "stand-in: lazy transfer failed, tree resumed".into(),
                    ))
                }
                Err(e) => Err(Error::Io {
                    what: "stand-in lazy page server".into(),
                    source: e,
                }),
            };
            let _ = done_tx.send(r);
        });
        Ok(LazyDump::new(port, done_rx))
    }
}

impl TargetCriu for StandIn {
    async fn version(&self) -> Result<String> {
        Ok(self.version_string())
    }

    async fn features(&self) -> Result<HostCaps> {
        Ok(self.caps)
    }

    async fn cpuinfo_check(&self, cpuinfo: Vec<u8>, _scratch: &Path) -> Result<()> {
        if cpuinfo == self.cpu_bytes() {
            Ok(())
        } else {
            Err(Error::Target("stand-in: another CPU".into()))
        }
    }

    async fn page_server(
        &self,
        images_dir: PathBuf,
        parent: Option<String>,
        pages: OwnedFd,
    ) -> Result<PageServing> {
        self.note(format!(
            "page-server {} parent={}",
            images_dir.display(),
            parent.as_deref().unwrap_or("-")
        ));
        let (tx, rx) = oneshot::channel();
        tokio::task::spawn_blocking(move || {
            let r = (|| {
                let mut s = std::os::unix::net::UnixStream::from(pages);
                let mut got = Vec::new();
                s.read_to_end(&mut got)?;
                std::fs::write(images_dir.join("pages-standin.img"), got.len().to_string())?;
                s.shutdown(std::net::Shutdown::Write)
            })()
            .map_err(|source| Error::Io {
                what: "stand-in page server".into(),
                source,
            });
            let _ = tx.send(r);
        });
        Ok(PageServing::new(rx))
    }

    async fn lazy_pages(&self, dir: PathBuf, pages: OwnedFd) -> Result<LazyDaemon> {
        self.note(format!("lazy-pages {}", dir.display()));
        let running = self.running.clone();
        let pages = std::os::unix::net::UnixStream::from(pages);
        tokio::spawn(async move {
            running.notified().await;
            // Ask for "pages" once, then close the transfer, as CRIU's
            // daemon does once it has every page.
            let s = pages
                .set_nonblocking(true)
                .and_then(|()| tokio::net::UnixStream::from_std(pages));
            if let Ok(mut s) = s {
                let mut get = [0u8; IOV_LEN];
                get[..4].copy_from_slice(&PS_IOV_GET.to_ne_bytes());
                let _ = s.write_all(&get).await;
                let mut buf = [0u8; BYTES_PER_PAGE];
                let _ = s.read_exact(&mut buf).await;
                let mut close = [0u8; IOV_LEN];
                close[..4].copy_from_slice(&PS_IOV_CLOSE.to_ne_bytes());
                let _ = s.write_all(&close).await;
                let mut status = [0u8; 4];
                let _ = s.read_exact(&mut status).await;
            }
        });
        Ok(LazyDaemon::none())
    }

    async fn restore(&self, spec: RestoreSpec) -> Result<HeldRestore> {
        self.note(format!("restore lazy={}", spec.lazy));
        // A scripted failure comes after the restore's time too, as a real
        // restore fails after working a while.
        tokio::time::sleep(self.restore_takes).await;
        if self.fail_restore {
            return Err(Error::Target("stand-in: restore fails as scripted".into()));
        }
        if !spec.images_dir.join("core-1.img").exists() {
            return Err(Error::Target("stand-in: no images".into()));
        }
        let (decide_tx, done_rx) = self.hold("target runs", "target killed", |this| {
            this.running.notify_one();
            RestoreStatsEntry::default()
        });
        Ok(HeldRestore::new(4242, decide_tx, done_rx))
    }
}
