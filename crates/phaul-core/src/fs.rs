//! A migration's file system: which `phaul-fs` driver carries it, and its
//! passes at the same points as memory (before the first dump, after each
//! pre-dump, and while frozen before the restore).

use std::path::{Path, PathBuf};

use phaul_fs::{FsDriver, FsLimits, NativeSource, RsyncSource, RsyncTarget, Shared, SyncStats};
use phaul_transport::Link;

use crate::error::{Error, Result};

/// How an htype's file system travels to the target.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum FsChoice {
    /// phaul's own incremental tree sync over the link.
    #[default]
    Native,
    /// `rsync`, tunnelled over the link; `helper` is the program rsync runs
    /// as its remote shell (a binary that calls
    /// `phaul_fs::rsync::run_as_rsh_if_called` first, or `phaul-rsync-rsh`).
    Rsync {
        /// The remote-shell helper.
        helper: PathBuf,
    },
    /// Both hosts see the same storage: nothing is copied.
    Shared,
}

impl FsChoice {
    /// Its name on the wire and in reports.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Native => "native",
            Self::Rsync { .. } => "rsync",
            Self::Shared => "shared",
        }
    }

    /// Its place in the plan.
    pub fn files(&self) -> crate::plan::Files {
        match self {
            Self::Native => crate::plan::Files::Native,
            Self::Rsync { .. } => crate::plan::Files::Rsync,
            Self::Shared => crate::plan::Files::Shared,
        }
    }
}

/// The source side of one migration's file system.
pub(crate) enum SourceFs {
    None,
    Shared(Shared),
    Native(Box<NativeSource>),
    Rsync(Box<RsyncSource>),
}

/// Which pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pass {
    First,
    Iteration,
    Final,
}

impl SourceFs {
    pub(crate) fn open(choice: &FsChoice, link: Link, root: PathBuf) -> Result<Self> {
        Ok(match choice {
            FsChoice::Native => Self::Native(Box::new(NativeSource::new(link, root))),
            FsChoice::Rsync { helper } => Self::Rsync(Box::new(
                RsyncSource::new(link, root, helper.clone()).map_err(Error::Fs)?,
            )),
            FsChoice::Shared => Self::Shared(Shared),
        })
    }

    pub(crate) fn name(&self) -> &'static str {
        match self {
            Self::None => "",
            Self::Shared(d) => d.name(),
            Self::Native(d) => d.name(),
            Self::Rsync(d) => d.name(),
        }
    }

    /// Whether files keep their inodes on the target (else CRIU needs
    /// `force_irmap`).
    pub(crate) fn inodes_survive(&self) -> bool {
        match self {
            Self::None => true,
            Self::Shared(d) => d.inodes_survive(),
            Self::Native(d) => d.inodes_survive(),
            Self::Rsync(d) => d.inodes_survive(),
        }
    }

    pub(crate) async fn pass(&mut self, which: Pass) -> Result<Option<SyncStats>> {
        macro_rules! run {
            ($d:expr) => {
                match which {
                    Pass::First => $d.start().await,
                    Pass::Iteration => $d.next_iteration().await,
                    Pass::Final => $d.final_sync().await,
                }
            };
        }
        let r = match self {
            Self::None => return Ok(None),
            Self::Shared(d) => run!(d),
            Self::Native(d) => run!(d),
            Self::Rsync(d) => run!(d),
        };
        r.map(Some).map_err(Error::Fs)
    }
}

/// The target side: serves the source's passes into `root` until it ends
/// the stream.
pub(crate) async fn serve(
    driver: &str,
    link: Link,
    root: &Path,
    limits: &FsLimits,
) -> Result<SyncStats> {
    match driver {
        "native" => phaul_fs::serve_native(link, root, limits)
            .await
            .map_err(Error::Fs),
        "rsync" => phaul_fs::serve_rsync(link, root, &RsyncTarget::default())
            .await
            .map_err(Error::Fs),
        other => Err(Error::Protocol(format!(
            "unknown file-system driver {other:?}"
        ))),
    }
}
