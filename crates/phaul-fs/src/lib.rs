//! File-system drivers for phaul: a container's root file system travels
//! with it, copied iteratively while it runs and a last time while it is
//! frozen, at the same points of a migration as its memory.
//!
//! The migration engine holds one [`FsDriver`] on the source and calls
//! [`FsDriver::pass`] with [`Pass::First`] while the workload runs,
//! [`Pass::Iteration`] after each pre-dump, and [`Pass::Final`] while it
//! is frozen. Each pass returns [`SyncStats`]. Three drivers, found by
//! name in the [`registry`] (a [`Choice`] opens a [`Source`]; the target
//! serves a name with [`registry::serve`]):
//!
//! - [`Shared`]: both hosts see the same storage; nothing is copied and
//!   inodes survive.
//! - [`native`]: an incremental tree sync written here, over the session's
//!   `FS` link: [`NativeSource`] on the source, [`serve_native`] on the
//!   target. The target refuses anything that could reach outside its
//!   root; see the module for the protocol and its guarantees.
//! - [`rsync`]: the real `rsync -aHAX --numeric-ids --delete`, one run per
//!   pass, whose bytes travel on the same authenticated link (a small
//!   remote-shell helper joins rsync to it): [`RsyncSource`] and
//!   [`serve_rsync`]. The target validates the remote command before
//!   running it.
//!
//! Neither copying driver keeps inode numbers, so CRIU must restore with
//! `force_irmap` ([`FsDriver::inodes_survive`]).
//!
//! # Layout
//! - [`FsDriver`], [`SyncStats`], [`FsLimits`], [`Shared`]: here.
//! - [`pass`]: [`Pass`], and the order of passes both copying drivers keep.
//! - [`registry`]: the drivers by name, for the source and the target.
//! - [`native`]: the native driver, its protocol, and how its target makes
//!   what the passes wrote durable (its first pass by one sync, the later
//!   passes' changes entry by entry, after the final pass is answered).
//! - [`rsync`]: the rsync driver, its remote-command validation and the
//!   remote-shell helper's body (`phaul-rsync-rsh`).
//! - [`wire`]: the messages both copying drivers put on the link.
//! - [`path`]: paths inside a tree and their validation.
//! - [`tree`]: walking a tree without following symlinks.
//! - [`error`]: [`Error`], the crate's one error type.

use std::future::Future;
use std::time::Duration;

pub mod error;
pub mod native;
pub mod pass;
pub mod path;
pub mod registry;
pub mod rsync;
pub mod tree;
pub mod wire;

pub use error::{Error, Result};
pub use native::{NativeSource, serve_native};
pub use pass::Pass;
pub use registry::{Choice, Source};
pub use rsync::{RsyncSource, RsyncTarget, serve_rsync};

/// What one pass (or, from a target's service loop, all passes) did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SyncStats {
    /// Regular files whose content was sent (created or updated). Extra
    /// names of a hard-linked file, directories, symlinks and nodes are
    /// not counted, as rsync's "regular files transferred".
    pub files: u64,
    /// Content bytes of those files.
    pub bytes: u64,
    /// Entries removed on the target (a directory's contents included).
    pub deleted: u64,
    /// Entries of the source tree examined, its root included.
    pub scanned: u64,
    /// Wall time of the pass.
    pub duration: Duration,
}

impl SyncStats {
    /// Adds `other`'s counts and time to these.
    pub fn merge(&mut self, other: &SyncStats) {
        self.files += other.files;
        self.bytes += other.bytes;
        self.deleted += other.deleted;
        self.scanned += other.scanned;
        self.duration += other.duration;
    }
}

/// The source side of a file-system driver, driven by the migration
/// engine at the same points as memory.
///
/// Every pass is a complete sync of the tree as it is at that moment; the
/// iterative passes only make the final one (while frozen) short. A driver
/// implements [`FsDriver::pass`]; `start`, `next_iteration` and
/// `final_sync` name its three uses.
pub trait FsDriver: Send {
    /// The driver's name, for logs and reports (one of
    /// [`registry::NAMES`] for the drivers here).
    fn name(&self) -> &'static str;

    /// Whether files keep their inode numbers on the target. CRIU needs
    /// `force_irmap` when they do not (a copy makes new inodes).
    fn inodes_survive(&self) -> bool {
        false
    }

    /// One pass. A pass after the final one, or after a failure that
    /// left the link unusable, is refused.
    fn pass(&mut self, which: Pass) -> impl Future<Output = Result<SyncStats>> + Send;

    /// The first pass, while the workload runs.
    fn start(&mut self) -> impl Future<Output = Result<SyncStats>> + Send {
        self.pass(Pass::First)
    }

    /// Another pass while the workload runs (after each pre-dump
    /// iteration).
    fn next_iteration(&mut self) -> impl Future<Output = Result<SyncStats>> + Send {
        self.pass(Pass::Iteration)
    }

    /// The last pass, while the workload is frozen.
    fn final_sync(&mut self) -> impl Future<Output = Result<SyncStats>> + Send {
        self.pass(Pass::Final)
    }
}

/// Both hosts see the same storage (a network or cluster file system, the
/// same block device): nothing to copy, and inodes survive.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Shared;

impl FsDriver for Shared {
    fn name(&self) -> &'static str {
        "shared"
    }

    fn inodes_survive(&self) -> bool {
        true
    }

    fn pass(&mut self, _: Pass) -> impl Future<Output = Result<SyncStats>> + Send {
        std::future::ready(Ok(SyncStats::default()))
    }
}

/// What a target accepts (and a source walks) in one pass. A target sizes
/// these to its disk, so a hostile or broken source cannot fill it or
/// exhaust its inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsLimits {
    /// The most entries in a tree (the target's manifest, the source's
    /// walk) and the most operations in one pass.
    pub max_entries: u64,
    /// The largest single file, in bytes.
    pub max_file_size: u64,
    /// The most content bytes in one pass, all files together.
    pub max_pass_bytes: u64,
    /// Whether character and block device nodes may be created (fifos and
    /// sockets always may).
    pub allow_devices: bool,
}

impl Default for FsLimits {
    /// 4 million entries, 64 GiB per file, 256 GiB per pass: well above a
    /// large container's root file system, well below what breaks a
    /// target. Devices are allowed when running as root (only root can
    /// make them anyway).
    fn default() -> Self {
        Self {
            max_entries: 4_000_000,
            max_file_size: 64 << 30,
            max_pass_bytes: 256 << 30,
            allow_devices: nix::unistd::Uid::effective().is_root(),
        }
    }
}

/// An error and its causes, on one line (for `Error` frames and logs).
pub(crate) use phaul_transport::error_chain as describe;

/// The result of a blocking task; a panic in it is carried on.
pub(crate) async fn blocking<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    match h.await {
        Ok(r) => r,
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(_) => Err(Error::Protocol("a worker task was cancelled".into())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shared_copies_nothing_and_keeps_inodes() {
        let mut d = Shared;
        assert_eq!(d.name(), "shared");
        assert!(d.inodes_survive());
        assert_eq!(d.start().await.unwrap(), SyncStats::default());
        assert_eq!(d.next_iteration().await.unwrap(), SyncStats::default());
        assert_eq!(d.final_sync().await.unwrap(), SyncStats::default());
    }

    #[test]
    fn stats_merge_and_serialize() {
        let mut a = SyncStats {
            files: 1,
            bytes: 2,
            deleted: 3,
            scanned: 4,
            duration: Duration::from_millis(5),
        };
        a.merge(&a.clone());
        assert_eq!((a.files, a.bytes, a.deleted, a.scanned), (2, 4, 6, 8));
        assert_eq!(a.duration, Duration::from_millis(10));
    }
}
